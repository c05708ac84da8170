"""Swapping a finished warehouse file in, and writing one beside the gate (warehouse/publish.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from warehouse.publish import building_path, swap_file


def _swap_over(tmp_path: Path) -> Path:
    """Swap a new file over a live one that a reader holds open, and wait for the thread
    that deletes the replaced file."""
    before = set(threading.enumerate())
    live = tmp_path / "warehouse.duckdb"
    live.write_bytes(b"old")
    with live.open("rb") as reader:
        new = building_path(live, "run1")
        new.write_bytes(b"new")
        swap_file(new, live)
        assert reader.read() == b"old"  # a reader keeps its snapshot
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)
    return live


def test_the_replaced_file_is_deleted_and_nothing_is_left_behind(tmp_path):
    live = _swap_over(tmp_path)
    assert live.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warehouse.duckdb"]


def test_without_hard_links_the_swap_still_happens(tmp_path, monkeypatch):
    import warehouse.publish as publish

    def no_links(*args: object) -> None:
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(publish.os, "link", no_links)
    live = _swap_over(tmp_path)
    assert live.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warehouse.duckdb"]


def test_a_retired_file_left_by_a_dead_run_is_cleared_by_the_next(tmp_path):
    live = tmp_path / "warehouse.duckdb"
    live.write_bytes(b"live")
    leftover = tmp_path / ".warehouse.duckdb.run0.retired"
    leftover.write_bytes(b"old")
    building_path(live, "run1")
    assert not leftover.exists()
    assert live.read_bytes() == b"live"


# ---------------------------------------------------------------- FileWriter
def _live_warehouse(tmp_path: Path) -> Path:
    """A published warehouse with one member, written the way every run writes one."""
    import polars as pl

    from flows.engine import SYNC_RUN_SCHEMA
    from warehouse.publish import publish

    live = tmp_path / "warehouse.duckdb"
    members = pl.DataFrame({"member_id": ["m1"], "email": ["a@x.io"], "name": ["A"]})
    publish(live, {"members": members}, pl.DataFrame(schema=SYNC_RUN_SCHEMA), "run0")
    return live


def _member_emails(live: Path) -> list[str]:
    from warehouse.publish import query_readonly

    return [r[0] for r in query_readonly(live, "SELECT email FROM members ORDER BY 1")[1]]


def test_a_file_writer_swaps_in_its_tables_and_the_run_log_only_at_finish(tmp_path):
    import polars as pl

    from flows.engine import SYNC_RUN_SCHEMA
    from warehouse.publish import FileWriter, query_readonly

    live = _live_warehouse(tmp_path)
    members = pl.DataFrame({"member_id": ["m1", "m2"], "email": ["a@x.io", "b@x.io"]})
    writer = FileWriter(live, "run1").start({"members": members})
    assert _member_emails(live) == ["a@x.io"]  # nothing is seen before finish
    at = datetime(2026, 1, 1, tzinfo=UTC)
    run = pl.DataFrame(
        [("run1", at, at, "published", "[]", 0, 2, "[]")], schema=SYNC_RUN_SCHEMA, orient="row"
    )
    assert writer.finish(run) == 3
    assert _member_emails(live) == ["a@x.io", "b@x.io"]
    assert query_readonly(live, "SELECT run_id FROM sync_runs")[1] == [("run1",)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_insert_in_the_writer_is_raised_by_finish_and_nothing_changes(tmp_path):
    import duckdb
    import polars as pl
    import pytest

    from flows.engine import SYNC_RUN_SCHEMA
    from warehouse.publish import FileWriter

    live = _live_warehouse(tmp_path)
    before = live.read_bytes()
    bad = pl.DataFrame({"member_id": ["m2"], "no_such_column": ["x"]})
    writer = FileWriter(live, "run1").start({"members": bad})
    with pytest.raises(duckdb.Error):
        writer.finish(pl.DataFrame(schema=SYNC_RUN_SCHEMA))
    assert live.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["warehouse.duckdb"]


def test_a_discarded_writer_leaves_the_live_file_and_nothing_else(tmp_path):
    import polars as pl

    from warehouse.publish import FileWriter

    live = _live_warehouse(tmp_path)
    before = live.read_bytes()
    members = pl.DataFrame({"member_id": ["m2"], "email": ["b@x.io"]})
    FileWriter(live, "run1").start({"members": members}).discard()
    assert live.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["warehouse.duckdb"]


def test_a_background_writer_inserts_at_low_priority_until_brought_to_the_foreground(tmp_path):
    import os
    import time

    import polars as pl
    import pytest

    from flows.engine import SYNC_RUN_SCHEMA
    from warehouse.publish import BACKGROUND_NICE, FileWriter, may_raise_priority_to

    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base >= BACKGROUND_NICE or not may_raise_priority_to(base):
        pytest.skip("this process may not raise a thread's priority again, so never lowers it")
    live = _live_warehouse(tmp_path)
    members = pl.DataFrame({"member_id": ["m1", "m2"], "email": ["a@x.io", "b@x.io"]})
    writer = FileWriter(live, "run1").open(in_background=True).add({"members": members})
    deadline = time.monotonic() + 10
    while len(writer.lowered.thread_ids) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    lowered = set(writer.lowered.thread_ids)  # the writer's thread and DuckDB's workers
    assert len(lowered) >= 2
    assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in lowered} == {BACKGROUND_NICE}
    with pytest.raises(ValueError, match="members"):
        writer.add({"members": members})
    grants = pl.DataFrame({"account_id": ["acc_1"], "member_email": ["b@x.io"]})
    writer.add({"sharing_grants": grants})  # a second hand-over
    writer.to_foreground()
    assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in lowered} == {base}
    assert writer.finish(pl.DataFrame(schema=SYNC_RUN_SCHEMA)) == 3
    assert _member_emails(live) == ["a@x.io", "b@x.io"]
    assert query_grants(live) == [("acc_1", "b@x.io")]


def query_grants(live: Path) -> list[tuple[str, str]]:
    from warehouse.publish import query_readonly

    return query_readonly(live, "SELECT account_id, member_email FROM sharing_grants")[1]


def test_the_previous_tables_are_read_through_one_connection_none_where_missing(tmp_path):
    import duckdb
    import polars as pl

    from warehouse.publish import read_previous

    missing = tmp_path / "none.duckdb"
    assert read_previous(missing, ("people", "companies")) == {"people": None, "companies": None}
    assert not missing.exists()  # (reading creates no file)

    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE people (person_id VARCHAR, created_at TIMESTAMPTZ)")
    con.execute("INSERT INTO people VALUES ('per_1', '2026-01-02 03:04:05+00')")
    con.close()
    out = read_previous(path, ("people", "person_merges"))
    assert out["person_merges"] is None
    people = out["people"]
    assert people is not None
    assert people["person_id"].to_list() == ["per_1"]
    assert people.schema["created_at"] == pl.Datetime("us", "UTC")
    assert people["created_at"][0] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
