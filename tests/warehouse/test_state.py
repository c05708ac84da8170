"""The build state kept beside the warehouse as generations of Arrow files (issue 7)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from warehouse.state import (
    KEPT_TABLES,
    RETIRED,
    STATE_SCHEMAS,
    STATE_TABLES,
    StateUnreadable,
    StateWriter,
    read_generation,
    read_sole_generation,
    remove_retired,
    schema_of,
    state_root,
)

COUNTS = "_rapport_name_counts"


def counts(rows: list[tuple[str | None, str | None, str | None, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=STATE_SCHEMAS[COUNTS], orient="row")


def full_generation(warehouse: Path, tables: dict[str, pl.DataFrame]) -> StateWriter:
    writer = StateWriter(warehouse)
    for name, frame in tables.items():
        writer.replace(name, frame)
    writer.stamp(pl.DataFrame({"as_of": [1]}))
    writer.finish()
    return writer


def test_a_full_generation_has_every_table_with_its_columns(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    # (extra columns are dropped, types made the state's; tables not handed over: empty)
    rows = counts([("k1", "ann@x.io", "Ann", 2)]).with_columns(extra=pl.lit(1))
    writer = full_generation(warehouse, {COUNTS: rows.with_columns(pl.col("n").cast(pl.UInt32))})
    tables = read_generation(warehouse, writer.generation)
    assert tables.keys() == KEPT_TABLES
    assert_frame_equal(tables[COUNTS], counts([("k1", "ann@x.io", "Ann", 2)]))
    for name in KEPT_TABLES - {COUNTS}:
        assert tables[name].is_empty()
        assert dict(tables[name].schema) == schema_of(name)
    assert os.stat(state_root(warehouse)).st_mode & 0o777 == 0o700


def test_a_run_rewrites_the_tables_it_changes_and_links_the_rest(tmp_path):
    """Deletes match whole key rows, a null matching a null (as the warehouse's deletes
    do); the rows that stay keep their order, the new ones follow."""
    warehouse = tmp_path / "w.duckdb"
    before = counts([("k1", "a@x.io", "A", 1), (None, "b@x.io", None, 2), ("k3", "c@x.io", "C", 3)])
    used = pl.DataFrame(
        {"email": ["a@x.io"], "last_used_at": [0]}, schema=STATE_SCHEMAS["_rapport_last_used"]
    )
    first = full_generation(warehouse, {COUNTS: before, "_rapport_last_used": used})
    base = read_generation(warehouse, first.generation)

    run = StateWriter(warehouse)
    run.start_from(base, first.generation)
    gone = pl.DataFrame({"canonical_key": [None, "k1"]}, schema={"canonical_key": pl.String})
    run.upsert(COUNTS, gone, counts([("k1", "a@x.io", "A", 5)]))
    run.upsert(
        "_rapport_blocked_threads",
        None,
        pl.DataFrame({"account_id": ["acc"], "thread_id": ["t1"]}),
    )
    run.finish()
    after = read_generation(warehouse, run.generation)
    assert after[COUNTS].rows() == [("k3", "c@x.io", "C", 3), ("k1", "a@x.io", "A", 5)]
    assert after["_rapport_blocked_threads"].rows() == [("acc", "t1")]
    # an unchanged table is the same file as the base generation's (a hard link)
    same = [
        state_root(warehouse) / g / "_rapport_last_used.arrow"
        for g in (first.generation, run.generation)
    ]
    assert os.path.samefile(*same)
    run.published()
    assert [f.name for f in state_root(warehouse).iterdir()] == [run.generation]


def test_a_replaced_generation_is_retired_first_and_removed_once_unmapped(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    first = full_generation(warehouse, {COUNTS: counts([("k1", "a@x.io", "A", 1)])})
    base = read_generation(warehouse, first.generation)
    run = StateWriter(warehouse)
    run.start_from(base, first.generation)
    run.upsert(COUNTS, None, counts([("k2", "b@x.io", "B", 1)]))
    run.finish()
    run.published(retire=True)
    # the run's frames still map the old files: renamed, not removed
    assert sorted(f.name for f in state_root(warehouse).iterdir()) == sorted(
        [run.generation, RETIRED + first.generation]
    )
    assert base[COUNTS].rows() == [("k1", "a@x.io", "A", 1)]
    # the next run's read-ahead takes the live generation, not the retired one
    ahead = read_sole_generation(warehouse)
    assert ahead is not None and ahead[0] == run.generation
    assert sorted(ahead[1][COUNTS]["canonical_key"].to_list()) == ["k1", "k2"]
    del base, ahead
    remove_retired(warehouse)
    assert [f.name for f in state_root(warehouse).iterdir()] == [run.generation]


def test_a_discarded_run_leaves_the_published_generation_alone(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    first = full_generation(warehouse, {COUNTS: counts([("k1", "a@x.io", "A", 1)])})
    run = StateWriter(warehouse)
    run.start_from(read_generation(warehouse, first.generation), first.generation)
    run.upsert(COUNTS, None, counts([("k2", "b@x.io", "B", 1)]))
    run.discard()
    assert [f.name for f in state_root(warehouse).iterdir()] == [first.generation]
    assert read_generation(warehouse, first.generation)[COUNTS].height == 1


def test_a_missing_or_broken_generation_is_unreadable(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    first = full_generation(warehouse, {COUNTS: counts([("k1", "a@x.io", "A", 1)])})
    with pytest.raises(StateUnreadable):
        read_generation(warehouse, None)
    with pytest.raises(StateUnreadable):
        read_generation(warehouse, "no-such-generation")
    (state_root(warehouse) / first.generation / f"{COUNTS}.arrow").write_bytes(b"not arrow")
    with pytest.raises(StateUnreadable):
        read_generation(warehouse, first.generation)


def test_every_table_a_run_reads_back_is_kept_with_the_warehouse_s_columns():
    """The state a run starts from is read from its generation alone; a mirrored table
    has the columns a query of the warehouse returns."""
    import duckdb

    from transforms.incremental import PREVIOUS_TABLES
    from warehouse.publish import sql_text
    from warehouse.state import MIRRORED_TABLES, mirrored_schemas

    assert set(PREVIOUS_TABLES) <= KEPT_TABLES
    con = duckdb.connect()
    con.execute(sql_text("schema.sql"))
    in_file = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert MIRRORED_TABLES <= in_file and not STATE_TABLES & in_file
    people = mirrored_schemas()["people"]
    assert people["email_addresses"] == pl.List(pl.String)
    assert people["created_at"] == pl.Datetime("us", "UTC")


def test_the_state_read_ahead_is_used_only_if_the_file_names_it(tmp_path):
    """A run reads the only generation there is while the published file opens; the
    file's build row decides which generation the run starts from."""
    import duckdb

    from warehouse.delta import read_state
    from warehouse.publish import sql_text
    from warehouse.state import read_sole_generation

    warehouse = tmp_path / "w.duckdb"
    assert read_sole_generation(warehouse) is None  # (no state yet)
    first = full_generation(warehouse, {COUNTS: counts([("k1", "a@x.io", "A", 1)])})
    ahead = read_sole_generation(warehouse)
    assert ahead is not None and ahead[0] == first.generation
    second = full_generation(warehouse, {COUNTS: counts([("k2", "b@x.io", "B", 2)])})
    assert read_sole_generation(warehouse) is None  # (two: which one is live is the file's)
    con = duckdb.connect(str(warehouse))
    con.execute(sql_text("schema.sql"))
    con.execute(
        "INSERT INTO _rapport_build VALUES (TIMESTAMPTZ '2026-06-01 00:00:00+00', 'fp', 'full', ?)",
        [second.generation],
    )
    state = read_state(con, warehouse, read_ahead=ahead)  # (ahead is the other one)
    assert state is not None
    previous, _ = state
    assert previous.state == second.generation
    assert previous.name_counts.rows() == [("k2", "b@x.io", "B", 2)]
    con.close()
