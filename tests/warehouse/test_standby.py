"""The standby file: the second incremental run in a row writes into the file the first
one replaced, brought up to date from the first run's journal, instead of copying the
live file (warehouse/standby.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb

from flows.engine import wait_for_removals
from flows.workspace import Home
from tests.flows.test_incremental import (
    ALICE,
    HISTORY,
    assert_equals_full_rebuild,
    publish,
    sandbox_home,
)
from tests.mailbox import AS_OF, Mail, Sandbox
from warehouse.standby import manifest_path, standby_path

DAY = timedelta(days=1)


def _two_incremental_runs(tmp_path: Path) -> tuple[Sandbox, Home, list]:
    """A full build, then two days of new mail, each published incrementally."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    outs = [publish(home, AS_OF)]
    box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])
    outs.append(publish(home, AS_OF + DAY))
    box.land(ALICE, [Mail("d2", ALICE, ["eve@hooli.com"], at="2026-06-02T12:00:00")])
    outs.append(publish(home, AS_OF + 2 * DAY))
    return box, home, outs


def _journals(home: Home) -> list[Path]:
    return sorted(home.warehouse.parent.glob(f".{home.warehouse.name}.*.journal"))


def test_the_second_incremental_run_writes_into_the_standby_and_equals_a_full_build(tmp_path):
    _, home, (full, first, second) = _two_incremental_runs(tmp_path)

    assert full.mode == "full"
    assert (first.mode, first.stats["published_from_standby"]) == ("incremental", 0)
    assert (second.mode, second.stats["published_from_standby"]) == ("incremental", 1)
    # The file the second run replaced is the next standby, with the second run's journal.
    assert standby_path(home.warehouse).exists() and manifest_path(home.warehouse).exists()
    assert len(_journals(home)) == 1
    assert second.stats["delta_messages"] == 1
    # A full build removes the standby and its journal (they may hold purged mail).
    assert_equals_full_rebuild(home, AS_OF + 2 * DAY)
    assert not standby_path(home.warehouse).exists()
    assert not manifest_path(home.warehouse).exists()
    assert _journals(home) == []


def _tables(con: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1", [schema]
    ).fetchall()
    return [r[0] for r in rows]


def test_the_journal_brings_the_standby_to_every_row_of_the_live_file(tmp_path):
    from warehouse.standby import replay, usable_journal

    _, home, _ = _two_incremental_runs(tmp_path)
    journal = usable_journal(home.warehouse)
    assert journal is not None
    scratch = tmp_path / "scratch.duckdb"
    shutil.copyfile(standby_path(home.warehouse), scratch)

    con = duckdb.connect(str(scratch))
    try:
        con.execute(f"ATTACH '{home.warehouse}' AS live (READ_ONLY)")
        before = {
            t: con.execute(f'SELECT count(*) FROM scratch."{t}"').fetchall()[0][0]
            for t in _tables(con, "scratch")
        }
        assert replay(con, journal) > 0
        names = _tables(con, "scratch")
        assert names == _tables(con, "live")
        differing = [
            name
            for name in names
            if con.execute(
                f'SELECT count(*) FROM ((FROM scratch."{name}" EXCEPT ALL FROM live."{name}")'
                f' UNION ALL (FROM live."{name}" EXCEPT ALL FROM scratch."{name}"))'
            ).fetchall()[0][0]
        ]
        after = {
            t: con.execute(f'SELECT count(*) FROM scratch."{t}"').fetchall()[0][0] for t in names
        }
    finally:
        con.close()
    assert differing == []
    assert after["messages"] == before["messages"] + 1  # (the standby was a run behind)


def test_the_replay_skips_the_tables_the_run_rewrites_whole_without_reading_them(tmp_path):
    """What a run replaces whole (the small tables, the run log) is not replayed: its
    journal files are not even read, and every other table still comes back row for row."""
    import json

    from warehouse.standby import apply_steps, read_journal, usable_journal

    _, home, _ = _two_incremental_runs(tmp_path)
    journal = usable_journal(home.warehouse)
    assert journal is not None
    rewritten = {"members", "accounts", "blocklist", "sharing_grants", "_rapport_build"}
    rewritten.add("sync_runs")
    steps = json.loads((journal / "steps.json").read_text())
    skipped = [s for s in steps if s["table"] in rewritten]
    assert skipped and len(skipped) < len(steps)
    for step in skipped:  # unread: a missing file would make the journal unusable
        if "file" in step:
            (journal / step["file"]).unlink()
    scratch = tmp_path / "scratch.duckdb"
    shutil.copyfile(standby_path(home.warehouse), scratch)
    con = duckdb.connect(str(scratch))
    try:
        con.execute(f"ATTACH '{home.warehouse}' AS live (READ_ONLY)")
        kept = read_journal(journal, skip=rewritten)  # (as DeltaWriter reads it)
        assert len(kept) == len(steps) - len(skipped)
        apply_steps(con, kept)
        differing = [
            name
            for name in _tables(con, "scratch")
            if con.execute(
                f'SELECT count(*) FROM ((FROM scratch."{name}" EXCEPT ALL FROM live."{name}")'
                f' UNION ALL (FROM live."{name}" EXCEPT ALL FROM scratch."{name}"))'
            ).fetchall()[0][0]
        ]
    finally:
        con.close()
    # Only skipped tables can differ: the last run's build row and log line are missing,
    # as the next run writes its own over them.
    assert set(differing) == {"_rapport_build", "sync_runs"}


def test_a_standby_an_analyst_holds_open_is_left_to_them_and_the_run_copies(tmp_path):
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    # An analyst opens the live file; the next run makes that file the standby.
    analyst = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            f"con = duckdb.connect({str(home.warehouse)!r}, read_only=True)\n"
            "print(con.execute('SELECT count(*) FROM messages').fetchall()[0][0], flush=True)\n"
            "sys.stdin.readline()\n"
            "print(con.execute('SELECT count(*) FROM messages').fetchall()[0][0], flush=True)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert analyst.stdout is not None and analyst.stdin is not None
        seen = analyst.stdout.readline().strip()
        box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])
        publish(home, AS_OF + DAY)
        box.land(ALICE, [Mail("d2", ALICE, ["eve@hooli.com"], at="2026-06-02T12:00:00")])
        out = publish(home, AS_OF + 2 * DAY)
        assert (out.mode, out.stats["published_from_standby"]) == ("incremental", 0)
        analyst.stdin.write("\n")
        analyst.stdin.flush()
        assert analyst.stdout.readline().strip() == seen  # their snapshot, unchanged
    finally:
        analyst.kill()
        analyst.wait()
    assert not list(home.root.glob(".*.building*"))
    assert_equals_full_rebuild(home, AS_OF + 2 * DAY)


def _third_run(box: Sandbox, home: Home):
    box.land(ALICE, [Mail("d3", "ben@globex.com", [ALICE], at="2026-06-03T08:00:00")])
    return publish(home, AS_OF + 3 * DAY)


def test_a_standby_written_since_its_run_is_not_used(tmp_path):
    box, home, _ = _two_incremental_runs(tmp_path)
    with open(standby_path(home.warehouse), "ab") as fh:  # (any write, e.g. a crash's)
        fh.write(b"\0")

    out = _third_run(box, home)

    assert (out.mode, out.stats["published_from_standby"]) == ("incremental", 0)
    assert_equals_full_rebuild(home, AS_OF + 3 * DAY)


def test_a_journal_that_does_not_read_back_whole_is_not_used(tmp_path):
    import json

    box, home, _ = _two_incremental_runs(tmp_path)
    [journal] = _journals(home)
    steps = json.loads((journal / "steps.json").read_text())
    # (a step the replay applies: those on tables the run rewrites whole are not read)
    [new_mail] = [s for s in steps if s["table"] == "messages"]
    part = journal / new_mail["file"]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])

    out = _third_run(box, home)

    assert (out.mode, out.stats["published_from_standby"]) == ("incremental", 0)
    assert_equals_full_rebuild(home, AS_OF + 3 * DAY)


def test_a_copy_of_the_whole_folder_keeps_its_standby(tmp_path):
    box, home, _ = _two_incremental_runs(tmp_path / "a")
    moved = tmp_path / "b"
    wait_for_removals()  # (what the last publish retired is removed in a thread)
    shutil.copytree(home.root, moved)  # (keeps mtimes, as the bench's copies do)
    box.root, box.lake = moved, moved / "lake"  # (it lands into the copy from here)

    out = _third_run(box, Home(moved))

    assert (out.mode, out.stats["published_from_standby"]) == ("incremental", 1)


def test_a_journal_too_large_to_be_worth_replaying_is_not_kept(tmp_path, monkeypatch):
    import warehouse.standby as standby

    monkeypatch.setattr(standby, "MAX_JOURNAL_SHARE", 0.0)  # (every journal is too large)
    _, home, (_, first, second) = _two_incremental_runs(tmp_path)

    assert first.stats["published_from_standby"] == second.stats["published_from_standby"] == 0
    assert not standby_path(home.warehouse).exists()
    assert not manifest_path(home.warehouse).exists()
    assert _journals(home) == []
    assert_equals_full_rebuild(home, AS_OF + 2 * DAY)


def test_a_file_too_small_to_be_worth_a_standby_is_copied_each_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPPORT_STANDBY_MIN_BYTES", str(2**40))
    _, home, (_, first, second) = _two_incremental_runs(tmp_path)

    assert first.stats["published_from_standby"] == second.stats["published_from_standby"] == 0
    assert not standby_path(home.warehouse).exists()
    assert _journals(home) == []


def test_the_last_runs_writes_fold_into_this_runs_and_leave_what_replaying_them_first_does(
    tmp_path,
):
    """A table both runs write: the last run's delete and this run's happen as one, its
    rows minus this run's keys go in, then this run's rows. A table only the last run
    wrote is replayed as it was before the commit."""
    import polars as pl

    from transforms.incremental import Upsert
    from warehouse.delta import DeltaWriter

    warehouse = tmp_path / "w.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE t (k VARCHAR, v INTEGER)")
        con.execute("INSERT INTO t VALUES ('a', 1), ('b', 2), ('c', 3)")
        con.execute("CREATE TABLE u (k VARCHAR)")
        con.execute("INSERT INTO u VALUES ('x'), ('y')")
    writer = DeltaWriter(warehouse, tmp_path / ".w.duckdb.run.building")
    last_run = {  # (as a standby's journal would hold them)
        "t": [
            ("delete", pl.DataFrame({"k": ["a", "b"]})),
            ("insert", pl.DataFrame({"k": ["a", "b", "d"], "v": [10, 20, 40]})),
        ],
        "u": [("delete", pl.DataFrame({"k": ["x"]})), ("insert", pl.DataFrame({"k": ["z"]}))],
    }
    writer._submit(lambda: writer.pending.update(last_run))
    writer.upsert(
        {
            "t": Upsert(
                ["k"],
                pl.DataFrame({"k": ["b", "e"], "v": [200, 5]}),
                stored=pl.DataFrame({"k": ["b"]}),
                gone=pl.DataFrame({"k": ["d"]}),
            )
        }
    )
    writer.finish()
    assert writer.pending == {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        t = sorted(con.execute("SELECT k, v FROM t").fetchall())
        u = sorted(r[0] for r in con.execute("SELECT k FROM u").fetchall())
    # replayed first: {c3, a10, b20, d40}; then b and d deleted, b200 and e5 added
    assert t == [("a", 10), ("b", 200), ("c", 3), ("e", 5)]
    assert u == ["y", "z"]
