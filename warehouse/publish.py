"""Publish staged tables into DuckDB atomically.

Each publish builds a complete new database file next to the live one, checkpoints
and fsyncs it, then renames it over `warehouse.duckdb`. Analysts holding the old file
open read-only keep a consistent snapshot; new connections see the new run. A failed
run never touches the live file.

Every new file gets the contract tables (sql/schema.sql), the score views
(sql/scores.sql, with the constants of transforms.metrics filled in), the privacy macro
messages_for (sql/messages_for.sql) and the analyst views (views/*.sql, by file name).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from connectors.lake import fsync_dir, fsync_path
from warehouse.standby import drop_standby
from warehouse.state import KEPT_TABLES, STATE_TABLES, StateWriter


def sql_text(name: str) -> str:
    return resources.files("warehouse").joinpath("sql", name).read_text()


def score_constants() -> dict[str, str]:
    """The score formula's constants of transforms.metrics, as SQL literals."""
    from transforms import metrics as m

    values = {
        "HALF_LIFE_FAST_DAYS": m.HALF_LIFE_FAST_DAYS,
        "HALF_LIFE_SLOW_DAYS": m.HALF_LIFE_SLOW_DAYS,
        "FAST_SHARE": m.FAST_SHARE,
        "W_SENT": m.W_SENT,
        "W_RECEIVED": m.W_RECEIVED,
        "W_RECIPROCAL": m.W_RECIPROCAL,
        "W_MEETING": m.W_MEETING,
        "EPOCH_US": int(m.SCORE_EPOCH.timestamp()) * 1_000_000,
    }
    return {k: repr(float(v)) if isinstance(v, float) else str(v) for k, v in values.items()}


def scores_sql() -> str:
    """sql/scores.sql with the score formula's constants taken from transforms.metrics."""
    from string import Template

    from transforms import metrics as m

    band = "CASE " + " ".join(f"WHEN score < {limit!r} THEN '{label}'" for limit, label in m.BANDS)
    return Template(sql_text("scores.sql")).substitute(
        score_constants(), BAND=f"{band} ELSE '{m.STRENGTHS[-1]}' END"
    )


def view_sql() -> list[str]:
    """The analyst views (warehouse/views/*.sql), in file-name order."""
    folder = resources.files("warehouse").joinpath("views")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [f.read_text() for f in files]


def read_previous(warehouse: Path, tables: Sequence[str]) -> dict[str, pl.DataFrame | None]:
    """Tables of the published warehouse, each None if it lacks it (all None if there is
    no warehouse yet). One connection for all: opening the file is most of the cost
    (three tables one connection each 0.065-0.09 s at 1M messages, together 0.022 s)."""
    if not warehouse.exists():
        return dict.fromkeys(tables)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        present = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        out: dict[str, pl.DataFrame | None] = {}
        for table in tables:
            if table not in present:
                out[table] = None
                continue
            frame = con.sql(f'SELECT * FROM "{table}"').pl()  # table is ours, not user input
            # DuckDB reports 'Etc/UTC'; staged frames use 'UTC'. Same instant, same zone.
            out[table] = frame.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))
        return out
    finally:
        con.close()


def arrow_view(frame: pl.DataFrame) -> Any:
    """The frame as an Arrow table over Polars' own buffers (no copy).

    Polars' default `to_arrow()` targets the oldest Arrow layout and copies every string
    column into `large_string` buffers: at 1M messages that was ~0.8 s of CPU and
    +1.1 GiB of RSS during the publish (pyarrow's pool kept most of it afterwards). The
    newest layout hands over `string_view` columns as they are, and DuckDB reads them
    natively into the same VARCHAR / VARCHAR[] columns (same rows, types and file).
    """
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


# Columns the warehouse derives from a staged frame's columns as it inserts them.
DERIVED_COLUMNS = {
    "interactions": ", hash(source_key) AS source_hash",
    "messages": ", hash(message_key) AS key_hash",
}


def insert_frame(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> int:
    """Append a frame to a table by column name. Returns rows inserted."""
    if frame.is_empty():
        return 0
    con.register("staged_frame", arrow_view(frame))
    derived = DERIVED_COLUMNS.get(name, "")
    con.execute(f'INSERT INTO "{name}" BY NAME SELECT *{derived} FROM staged_frame')
    con.unregister("staged_frame")
    return frame.height


class BuildingFile:
    """A run's new warehouse file (`tmp`), written by a DuckDB connection in a thread of
    its own (a FileWriter adds a second); nothing reaches the live file until the subclass
    swaps it in."""

    def __init__(self, warehouse: Path, tmp: Path, thread_name: str) -> None:
        self.warehouse, self.tmp = warehouse, tmp
        self.con: duckdb.DuckDBPyConnection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        # The state tables go to files of their own (warehouse/state.py).
        self.state = StateWriter(warehouse)

    def _to_file(self, tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
        """The tables that go into the DuckDB file (the build row naming the run's
        state); the state tables, and copies of the mirrored ones, are handed to the
        state's writer."""
        out = {}
        for name, frame in tables.items():
            if name in KEPT_TABLES:  # (a mirrored table goes to both)
                self.state.replace(name, frame)
            if name not in STATE_TABLES:
                out[name] = self.state.stamp(frame) if name == "_rapport_build" else frame
        return out

    def _commit_and_close(self) -> None:
        """(In the thread.) Commit, checkpoint and close: the file is ready to swap in."""
        assert self.con is not None
        self.con.execute("COMMIT")
        self.con.execute("CHECKPOINT")
        self.con.close()
        self.con = None

    def discard(self) -> None:
        """Drop the file (waits for the thread's work; the live file is untouched)."""
        self._pool.submit(self._close).result()
        self._pool.shutdown()
        discard_file(self.tmp)
        self.state.discard()

    def _close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


# The tables a full run writes on its main connection: millions of rows each, appended by
# DuckDB on both cores. Every other table goes through a second connection in a thread of
# its own (`FileWriter`).
BIG_TABLES = ("messages", "interactions")


class FileWriter(BuildingFile):
    """Builds a full run's new warehouse file in threads of its own.

    Tables are handed over with `add` as the build finishes them. The big ones (BIG_TABLES)
    are appended in one transaction on the main connection. The rest (a single thread
    appends each of them, and DuckDB compresses them only at a checkpoint) go through a
    second connection in a second thread, which commits and checkpoints after each
    hand-over: that work overlaps the big appends instead of following them.

    Opened `in_background`, both threads and DuckDB's workers run at the lowest priority
    (`LoweredThreads`) until `to_foreground`: their inserts take mostly the CPU time the
    build leaves unused, not the build's own. `finish` adds the run log (it records the
    gate's results), commits, checkpoints and swaps the file in. `discard` drops it:
    nothing reaches the live file before `finish`. DuckDB's inserts release the GIL, so
    the build's and the gate's work runs alongside them.
    """

    def __init__(self, warehouse: Path, run_id: str) -> None:
        super().__init__(warehouse, building_path(warehouse, run_id), "file-writer")
        self.rows = 0
        self._side_rows = 0  # (counted apart: the two threads add up at once)
        self.added: set[str] = set()
        self.lowered = LoweredThreads()
        self.side: duckdb.DuckDBPyConnection | None = None
        self._side_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-writer-side")
        self._opening: list[Future[None]] = []  # (creating the file, opening the second cursor)
        self._steps: list[Future[None]] = []

    def open(self, in_background: bool = False) -> FileWriter:
        """Create the file (in the writer's threads), at low priority if `in_background`."""
        created = self._pool.submit(self._create, in_background)
        self._opening = [created, self._side_pool.submit(self._open_side, created, in_background)]
        self._steps += self._opening
        return self

    def start(self, tables: dict[str, pl.DataFrame]) -> FileWriter:
        """Create the file and insert `tables`."""
        return self.open().add(tables)

    def add(self, tables: dict[str, pl.DataFrame]) -> FileWriter:
        """Queue `tables` for insertion, after those added before (each name once)."""
        if again := self.added & tables.keys():
            raise ValueError(f"tables added twice: {sorted(again)}")
        self.added |= tables.keys()
        tables = self._to_file(tables)
        side = {name: frame for name, frame in tables.items() if name not in BIG_TABLES}
        for name in (name for name in tables if name in BIG_TABLES):
            self._steps.append(self._pool.submit(self._insert, name, tables[name]))
        if side:
            self._steps.append(self._side_pool.submit(self._insert_side, side))
        return self

    def to_foreground(self) -> None:
        """The writer's threads back at their normal priority (the build is done)."""
        wait(self._opening)  # (the file is created: DuckDB's threads are started)
        self.lowered.restore()

    def discard(self) -> None:
        """Drop the file; inserts not yet started are skipped."""
        for step in self._steps:
            step.cancel()
        self._side_pool.submit(self._close_side).result()
        self._side_pool.shutdown()
        super().discard()

    def _create(self, in_background: bool) -> None:
        if in_background:
            self.lowered.lower_this_thread()  # (before connecting: DuckDB's workers inherit it)
        con = duckdb.connect(str(self.tmp))
        self.lowered.adopt_new_threads()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")  # lets inserts run in parallel
        # The frames are already in memory; DuckDB's own buffers can stay small.
        con.execute("SET memory_limit = '1GB'")
        # Each row group is flushed to the file as soon as it is full (the default holds
        # five): less memory in flight, so fewer pages the kernel must hand out first.
        con.execute("SET write_buffer_row_group_count = 1")
        # (committed: the second connection works in its own transactions)
        con.execute(sql_text("schema.sql"))
        con.execute(scores_sql())
        con.execute("BEGIN")
        self.con = con

    def _open_side(self, created: Future[None], in_background: bool) -> None:
        created.result()
        if in_background:
            self.lowered.lower_this_thread()
        assert self.con is not None
        self.side = self.con.cursor()
        self.side.execute("BEGIN")

    def _insert(self, name: str, frame: pl.DataFrame) -> None:
        # What remains is DuckDB's own append + compression, already on both cores. Measured
        # at 1M without gain: threads/memory_limit changes, WAL settings, CHECKPOINT vs close.
        if self.con is not None:  # (None: creating the file failed; `finish` raises that)
            self.rows += insert_frame(self.con, name, frame)

    def _insert_side(self, tables: dict[str, pl.DataFrame]) -> None:
        if self.side is None:  # (creating the file failed; `finish` raises that)
            return
        for name, frame in tables.items():
            self._side_rows += insert_frame(self.side, name, frame)
        # Compressed and written now, while the big tables are still being appended; the
        # main connection's open transaction does not hold a checkpoint up.
        self.side.execute("COMMIT")
        self.side.execute("CHECKPOINT")
        self.side.execute("BEGIN")

    def finish(self, sync_runs: pl.DataFrame) -> int:
        """Insert the run log, commit and swap the file in. Returns rows published."""
        try:
            self._pool.submit(self._commit, sync_runs).result()
        except BaseException:
            self.discard()
            raise
        self._pool.shutdown()
        self._side_pool.shutdown()
        try:
            self.state.finish()
        except BaseException:  # (the threads are done: drop both by hand)
            discard_file(self.tmp)
            self.state.discard()
            raise
        drop_standby(self.warehouse)  # (before the swap: it may hold mail this file drops)
        swap_file(self.tmp, self.warehouse)
        self.state.published()
        return self.rows

    def _commit(self, sync_runs: pl.DataFrame) -> None:
        for step in self._steps:
            step.result()  # (done by now: raises what failed while writing)
        assert self.side is not None
        self.rows += self._side_rows + insert_frame(self.side, "sync_runs", sync_runs)
        self.side.execute(sql_text("messages_for.sql"))
        for view in view_sql():
            self.side.execute(view)
        self.side.execute("COMMIT")
        self._close_side()
        self._commit_and_close()

    def _close_side(self) -> None:
        if self.side is not None:
            self.side.close()
            self.side = None


# A writer in the background: the lowest nice value. At 1M, as fast as SCHED_IDLE (a
# thread run only on an otherwise idle CPU; bench-compare, 5 pairs: -0.02 s, 3 of 5), but
# on a busy machine it still gets a share of the CPU, and it is undone thread by thread.
BACKGROUND_NICE = 19


class LoweredThreads:
    """Threads run at nice BACKGROUND_NICE until `restore` puts them back: the thread that
    calls `lower_this_thread` and those it starts (they inherit it) until
    `adopt_new_threads`. Where the process could not undo it (no root, RLIMIT_NICE too
    low), nothing is lowered: a writer left at nice 19 would crawl on a busy machine.
    """

    def __init__(self) -> None:
        self.thread_ids: set[int] = set()
        self._base = 0
        self._before: set[int] = set()

    def lower_this_thread(self) -> None:
        tid = threading.get_native_id()
        try:
            self._base = os.getpriority(os.PRIO_PROCESS, tid)
            if self._base >= BACKGROUND_NICE or not may_raise_priority_to(self._base):
                return
            self._before = process_thread_ids()
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
        except (AttributeError, OSError):  # (no per-thread nice here)
            return
        self.thread_ids.add(tid)

    def adopt_new_threads(self) -> None:
        """Count the threads started since `lower_this_thread` that run at its nice value
        (those it started; others started meanwhile are not counted)."""
        if self.thread_ids:
            self.thread_ids |= {t for t in process_thread_ids() - self._before if _lowered(t)}

    def restore(self) -> None:
        for tid in self.thread_ids:
            if _lowered(tid):
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, self._base)
                except OSError:  # (a thread that ended meanwhile)
                    pass
        self.thread_ids.clear()


def _lowered(tid: int) -> bool:
    """Whether thread `tid` runs at BACKGROUND_NICE (False once it has ended)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, tid) == BACKGROUND_NICE
    except OSError:
        return False


def process_thread_ids() -> set[int]:
    """The kernel's ids of this process's threads (Linux; empty elsewhere)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def may_raise_priority_to(nice: int) -> bool:
    """Whether this process may set a thread's nice value back down to `nice`."""
    import resource

    # Lowering a nice value takes root, or an RLIMIT_NICE of at least 20 - nice.
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice


def publish(
    warehouse: Path,
    tables: dict[str, pl.DataFrame],
    sync_runs: pl.DataFrame,
    run_id: str,
) -> int:
    """Write every table into a fresh file and swap it in. Returns rows published."""
    return FileWriter(warehouse, run_id).start(tables).finish(sync_runs)


def building_path(warehouse: Path, run_id: str) -> Path:
    """Where a run builds its new file; half-built files of runs that died, and retired
    files a run did not get to delete, are removed (the writer lock is held, so none is
    in use)."""
    for pattern in (".{}.*.building*", ".{}.*.retired"):
        for leftover in warehouse.parent.glob(pattern.format(warehouse.name)):
            leftover.unlink(missing_ok=True)
    return warehouse.with_name(f".{warehouse.name}.{run_id}.building")


def discard_file(tmp: Path) -> None:
    """Remove a file a run was building (and its write-ahead log): it never went live."""
    for path in (tmp, tmp.with_name(tmp.name + ".wal")):
        path.unlink(missing_ok=True)


def swap_file(tmp: Path, warehouse: Path) -> None:
    """fsync the finished file, rename it over the live one, fsync the folder.

    The replaced file keeps a second name until a thread deletes it: freeing a large
    file's blocks happens in the call that drops its last name, and that would hold up
    the publish (0.015 s for 180 MB). Analysts reading it keep it open either way.
    """
    fsync_path(tmp)
    retired: Path | None = None
    if warehouse.exists():
        retired = tmp.with_name(tmp.name.removesuffix(".building") + ".retired")
        try:
            os.link(warehouse, retired)
        except OSError:  # no hard links here (some network or FAT mounts): free it inline
            retired = None
    os.replace(tmp, warehouse)
    fsync_dir(warehouse.parent)
    if retired is not None:
        threading.Thread(target=retired.unlink, kwargs={"missing_ok": True}).start()


def query_readonly(
    warehouse: Path, sql: str, params: dict[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query on a read-only connection (what analysts and `rapport sql` use)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        cur = con.execute(sql, params or {})
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    finally:
        con.close()


def to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
