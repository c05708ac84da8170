"""Incremental publish: apply a staged delta to a copy of the live warehouse, then swap.

A writer thread (`DeltaWriter`) takes the standby (the file the last incremental run
replaced, brought up to date from that run's journal: warehouse/standby.py) or else
copies the live file (a page-cache copy of ~250 MB at a million messages), writes the
run into it as the build hands rows over, and checkpoints it; once the gate passes,
the file is fsynced and renamed over the live file. Nobody sees it before that
rename, so the run's two transactions (the bulk, checkpointed while the build ends,
then the last rows) are as atomic as one. Analysts keep their snapshot exactly as
with a full publish, and a failed run leaves the live file untouched. The live file,
opened read-only, answers the incremental build's questions (`DuckLookup`) meanwhile.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from string import Template

import duckdb
import polars as pl

from connectors.lake import fsync_path
from transforms.incremental import Fallback, Previous, Upsert
from warehouse.publish import (
    BuildingFile,
    arrow_view,
    discard_file,
    insert_frame,
    score_constants,
    sql_text,
)
from warehouse.standby import (
    Journal,
    apply_steps,
    journal_path,
    read_journal,
    swap_keeping_standby,
    take_standby,
)
from warehouse.state import (
    KEPT_TABLES,
    MIRRORED_TABLES,
    STATE_TABLES,
    StateUnreadable,
    read_generation,
)

log = logging.getLogger(__name__)


def _sql(name: str, **names: str) -> str:
    """A query of sql/ with the score constants (and `names`) filled in; its $parameters
    are left for DuckDB."""
    return Template(sql_text(name)).safe_substitute(score_constants(), **names)


def _utc(frame: pl.DataFrame) -> pl.DataFrame:
    # DuckDB reports 'Etc/UTC'; staged frames use 'UTC'. Same instant, same zone.
    # (Only frames that need it: a query each, of a run's many small ones.)
    zones = {t.time_zone for t in frame.schema.values() if isinstance(t, pl.Datetime)}
    if zones <= {"UTC"}:
        return frame
    return frame.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))


def open_live(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """The published file, read-only: it answers the build's questions while it is copied."""
    con = duckdb.connect(str(warehouse), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    return con


def copy_live(warehouse: Path, tmp: Path) -> Path:
    """A copy of the live file to write the run into (a page-cache copy, off the GIL).

    It is fsynced here, in the copying thread: otherwise the checkpoint before the swap
    pays for flushing the whole copy (measured 0.05 s of its 0.07 s at 1M).
    """
    shutil.copyfile(warehouse, tmp)
    fsync_path(tmp)
    return tmp


def open_copy(tmp: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET memory_limit = '1GB'")
    # Each COMMIT checkpoints at once and skips the write-ahead log: the file is private
    # until `swap_file` fsyncs and renames it, so logging the rows first (and fsyncing
    # the log) bought nothing. New-mail run at 1M: -13 and -25 ms (medians of 10 pairs,
    # faster in 8 of 10 both times), -21 ms CPU.
    con.execute("SET checkpoint_threshold = '0b'")
    con.execute("SET auto_checkpoint_skip_wal_threshold = 0")
    # Nor do its checkpoints fsync, for the same reason: `swap_file` fsyncs the file once
    # before the rename makes it the warehouse (a crash before that leaves a file no one
    # reads). New-mail run at 1M: checkpoints 103 -> 47 ms and 44 -> 25 ms; 15
    # alternating pairs, wall -40 ms (10 of 14 faster), CPU -71 ms (11 of 14).
    con.execute("SET fsync_mode = 'NONE'")
    return con


def read_state(
    con: duckdb.DuckDBPyConnection,
    warehouse: Path,
    read_ahead: tuple[str, dict[str, pl.DataFrame]] | None = None,
) -> tuple[Previous, set[str]] | None:
    """The last run's state and the lake files it read, or None (an older warehouse, or
    its state files gone): the generation of state files (warehouse/state.py) that the
    file's build row names, read at once (~2-9 ms at 1M; from the file, 0.1 s of CPU).
    `read_ahead`: a generation read before `con` was open, used if it is that one."""
    # No listing of the tables first: duckdb_tables() loads every table's metadata (9-14
    # ms at 1M, on the run's path).
    try:
        build = con.execute("SELECT as_of, fingerprint, state FROM _rapport_build").fetchall()
    except (duckdb.CatalogException, duckdb.BinderException):  # from before this state
        return None
    if len(build) != 1:
        return None
    as_of, fp, generation = build[0]
    try:
        if read_ahead is not None and read_ahead[0] == generation:
            state = read_ahead[1]  # (read while the file opened: `read_sole_generation`)
        else:
            state = read_generation(warehouse, generation)
    except StateUnreadable as exc:
        log.warning("%s", exc)
        return None
    files = set(state["_rapport_lake_files"]["path"].to_list())
    published = con.execute("SELECT count(*) FROM messages").fetchall()[0][0]
    return Previous(as_of, fp, published, state, generation), files


# The few interactions matching `where`: their row ids first, from the filter columns
# alone, then the rows. Selecting every column in one pass decodes all of them for the
# whole table (0.05 s at 1M messages); this decodes only the blocks holding a match.
_INTERACTIONS_WHERE = (
    "SELECT * EXCLUDE (source_hash) FROM interactions"
    " WHERE rowid IN (SELECT rowid FROM interactions WHERE {where})"
)


class DuckLookup:
    """The incremental build's questions, answered by the published file.

    Each question runs on its own cursor, so the build can ask some in threads while it
    works on others (DuckDB releases the GIL).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def matching(self, table: str, keys: pl.DataFrame) -> pl.DataFrame:
        """The distinct `keys` rows the table holds (matched on all their columns)."""
        if keys.is_empty():
            return keys.clear()
        with self._cursor() as cur:
            cur.register("lookup_keys", arrow_view(keys))
            cols = ", ".join(f'"{c}"' for c in keys.columns)
            return cur.sql(
                f"SELECT DISTINCT {cols} FROM {table} JOIN (SELECT DISTINCT {cols} FROM"
                f" lookup_keys) USING ({cols})"
            ).pl()

    def published_messages(self, keys: pl.Series) -> pl.Series:
        """Which of these message keys are published: the row ids whose hash matches
        first, then only those rows' keys, checked exactly (hashes can collide).

        Two queries: in one, DuckDB compared the strings on a scan of every message's key
        before the row ids narrowed it (0.04 s at 1M messages, even with no match)."""
        keys = keys.unique().drop_nulls()
        with self._cursor() as cur:
            cur.register("lookup_keys", arrow_view(pl.DataFrame({"k": keys})))
            hits = cur.execute(
                "SELECT rowid FROM messages WHERE key_hash IN (SELECT hash(k) FROM lookup_keys)"
            ).fetchall()
            if not hits:  # (new mail: the usual case)
                return pl.Series("message_key", [], pl.String)
            cur.register("hit_rows", arrow_view(pl.DataFrame({"r": [r[0] for r in hits]})))
            found = cur.sql(
                "SELECT message_key FROM messages WHERE rowid IN (SELECT r FROM hit_rows)"
            )
            candidates = found.pl().to_series()
        return candidates.filter(candidates.is_in(keys.implode()))

    def contact_history(self, keys: pl.Series) -> pl.DataFrame:
        return self._where_in("SELECT * FROM _rapport_contact_history", "canonical_key", keys)

    def rows_between(self, ranges: list[tuple[datetime, datetime]]) -> pl.DataFrame:
        """Interactions with `at` in any (lo, hi] range."""
        where = " OR ".join('("at" > ? AND "at" <= ?)' for _ in ranges) or "false"
        params = [t for lo_hi in ranges for t in lo_hi]
        with self._cursor() as cur:
            return _utc(cur.sql(_INTERACTIONS_WHERE.format(where=where), params=params).pl())

    def rows_with_sources(self, sources: pl.Series) -> pl.DataFrame:
        """Every interaction of each source (all members, people and companies).

        Raises Fallback if another source's key has the hash of one of these: `ends_of`
        and `sums_of` take out the rows of removed sources by hash alone, which is exact
        only when every stored row with such a hash is one of these sources'."""
        with self._cursor() as cur:
            cur.register("lookup_ids", arrow_view(pl.DataFrame({"id": sources})))
            where = "source_hash IN (SELECT hash(id) FROM lookup_ids)"
            rows = _utc(cur.sql(_INTERACTIONS_WHERE.format(where=where)).pl())
        exact = rows.filter(pl.col("source_key").is_in(sources.implode()))
        if exact.height < rows.height:
            raise Fallback("two sources' keys have the same hash")
        return exact

    def ends_of(
        self,
        key: str,
        ids: pl.Series,
        dropped: pl.DataFrame,
        added: pl.DataFrame,
        as_of: datetime,
    ) -> pl.DataFrame:
        """First and last times of `ids` (people or companies), and the kind and member id
        of their last interaction, over their stored interactions without the rows of
        `dropped` (member_id, source_key), plus `added` rows (sql/ends_of.sql). Computed
        here, next to the rows: a busy contact has many."""
        assert key in ("person_id", "company_id")
        frames = {"redo_ids": pl.DataFrame({"id": ids}), "dropped_frame": dropped}
        return self._redo(_sql("ends_of.sql", KEY=key), frames, added, {"as_of": as_of})

    def sums_of(
        self, pairs: pl.DataFrame, dropped: pl.DataFrame, added: pl.DataFrame, as_of: datetime
    ) -> pl.DataFrame:
        """Decay sums of (member_id, person_id) `pairs` over the rows ends_of reads
        (sql/sums_of.sql); pairs with no row up to as_of are left out."""
        frames = {"redo_pairs": pairs, "dropped_frame": dropped}
        return self._redo(_sql("sums_of.sql"), frames, added, {"as_of": as_of})

    def _redo(
        self,
        sql: str,
        frames: dict[str, pl.DataFrame],
        added: pl.DataFrame,
        params: dict[str, object],
    ) -> pl.DataFrame:
        with self._cursor() as cur:
            for name, frame in {**frames, "added_rows": added}.items():
                cur.register(name, arrow_view(frame))
            return _utc(cur.sql(sql, params=params).pl())

    def messages_with_rfc(self, rfc_ids: pl.Series) -> pl.DataFrame:
        """(message_key, account_id, rfc_message_id) of published mail with these ids."""
        columns = "SELECT message_key, account_id, rfc_message_id FROM messages"
        return self._where_in(columns, "rfc_message_id", rfc_ids)

    def _where_in(
        self, select: str, column: str, ids: pl.Series, params: list[object] | None = None
    ) -> pl.DataFrame:
        """Rows of `select` whose `column` is one of `ids` (handed over as Arrow, not SQL)."""
        joiner = " AND " if " WHERE " in select else " WHERE "
        with self._cursor() as cur:
            cur.register("lookup_ids", arrow_view(pl.DataFrame({"id": ids})))
            sql = f"{select}{joiner}{column} IN (SELECT id FROM lookup_ids)"
            return _utc(cur.sql(sql, params=params or []).pl())


class DeltaWriter(BuildingFile):
    """Writes an incremental run into a copy of the live file, in a thread of its own.

    The thread first takes the standby and replays the last run's journal into it, or
    else copies the live file (a page-cache copy, off the GIL), and opens the file in one
    transaction; then it runs the writes in the order they are handed over, keeping each
    in this run's journal (the next run's standby is brought up to date from it). The
    journal's deletes on tables this run also deletes from early on are folded into
    this run's (`_replay_before`): one scan of the table's keys instead of two.
    The build hands over rows as soon as they are final, so writing overlaps with the
    rest of the build and with the gate. `finish` commits, checkpoints and swaps the copy
    in; `discard` drops it. A failed write is raised by `finish`, and nothing after it
    runs.
    """

    def __init__(
        self,
        warehouse: Path,
        tmp: Path,
        rewritten: Collection[str] = (),
        late: Collection[str] = (),
    ) -> None:
        """`rewritten`: the tables this run replaces whole (`replace`), whose journal
        steps are not replayed: the run rewrites them before its file can go live (a run
        that stops first is discarded), so their replayed rows would be deleted unread
        (10 of a 1,000-new-message run's 33 steps). `late`: the tables it writes last,
        whose steps are replayed at open rather than folded."""
        super().__init__(warehouse, tmp, "delta-writer")
        self.rewritten = frozenset(rewritten)
        self.late = frozenset(late)
        self.error: BaseException | None = None
        self.journal: Journal | None = None
        self.source = ""  # "standby" or "copy": where the run's file came from
        # The standby's journal steps not applied yet, per table (see _replay_before).
        self.pending: dict[str, list[tuple[str, pl.DataFrame | None]]] = {}
        self._pool.submit(self._run, self._open)

    def _open(self) -> None:
        """The run's file: the standby brought up to date (warehouse/standby.py), else a
        copy of the live file; then this run's journal, for the next run's standby."""
        journal = take_standby(self.warehouse, self.tmp)
        if journal is not None:
            try:
                self.con = open_copy(self.tmp)
                self.con.execute("BEGIN")
                for kind, table, frame in read_journal(journal, skip=self.rewritten):
                    self.pending.setdefault(table, []).append((kind, frame))
                # Replayed now, while the build has nothing to write yet: every table but
                # those whose delete can fold into one this run makes before its `late`
                # tables (folded, the late tables' replay fell after the gate: 1M, 19
                # alternating pairs, +20 ms; this way -4 and -15 ms, 23 of 38 faster).
                self._replay_rest(later=self._foldable_early())
                self.source = "standby"
            except Exception as exc:  # e.g. an analyst holds it open: DuckDB's lock
                log.warning("standby not used, copying the live file: %s", exc)
                self.pending.clear()
                self._close()
                self.con = None
                discard_file(self.tmp)
        if self.con is None:
            self.con = open_copy(copy_live(self.warehouse, self.tmp))
            self.con.execute("BEGIN")
            self.source = "copy"
        self.journal = Journal(journal_path(self.tmp))

    def _record(self, kind: str, table: str, frame: pl.DataFrame | None = None) -> None:
        assert self.journal is not None
        if frame is None or frame.height:
            self.journal.record(kind, table, frame)

    def _run(self, job: Callable[[], object]) -> None:
        if self.error is None:
            try:
                job()
            except BaseException as exc:  # kept for finish(); later jobs are skipped
                self.error = exc

    def _submit(self, job: Callable[[], object]) -> Future[None]:
        return self._pool.submit(self._run, job)

    def replace(self, tables: dict[str, pl.DataFrame]) -> None:
        """Tables written whole: their rows replace every row."""
        tables = self._to_file(tables)
        self._submit(lambda: self._replace(tables))

    def _replay_before(self, table: str, keys: pl.DataFrame | None = None) -> bool:
        """Apply the standby's journal steps on `table` (the last run's writes) before this
        run writes to it. Given `keys`, this run's delete on it, the last run's delete
        folds into it (returns True: `keys` are deleted here): deleting A's keys, adding
        A's rows, then deleting B's leaves what deleting A's and B's keys at once, then
        adding A's rows without B's keys, does. A delete scans the table's key column
        (6-11 ms each at 1M), and most tables get one from each run."""
        steps = self.pending.pop(table, None)
        if not steps:
            return False
        assert self.con is not None
        kinds = [kind for kind, _ in steps]
        gone = [f for kind, f in steps if kind == "delete" and f is not None]
        rows = [f for kind, f in steps if kind == "insert" and f is not None]
        cols = None if keys is None else set(keys.columns)
        if (
            cols
            and kinds in (["delete", "insert"], ["delete"], ["insert"])
            and all(set(f.columns) == cols for f in gone)
            and all(cols <= set(f.columns) for f in rows)
            # (the same key types, so the rows compare as the deletes would match them)
            and all(f.schema[c] == keys.schema[c] for f in [*gone, *rows] for c in cols)
        ):
            assert keys is not None
            both = pl.concat(
                [f.select(keys.columns) for f in [*gone, keys]], how="vertical_relaxed"
            )
            delete_keys(self.con, table, both)
            for frame in rows:
                kept = frame.join(keys, on=keys.columns, how="anti", nulls_equal=True)
                insert_frame(self.con, table, kept)
            return True
        apply_steps(self.con, [(kind, table, frame) for kind, frame in steps])
        return False

    def _foldable_early(self) -> list[str]:
        """The pending tables whose steps start with a delete, but for the `late` ones."""
        return [
            t for t, steps in self.pending.items() if t not in self.late and steps[0][0] == "delete"
        ]

    def _replay_rest(self, later: Collection[str] = ()) -> None:
        """Apply the journal steps of every table not in `later` (none of this run's
        writes left to fold them into)."""
        for table in [t for t in self.pending if t not in later]:
            self._replay_before(table)

    def _replace(self, tables: dict[str, pl.DataFrame]) -> None:
        assert self.con is not None
        for name, frame in tables.items():
            self.pending.pop(name, None)  # (replaced whole: the last run's rows go anyway)
            self.con.execute(f'DELETE FROM "{name}"')
            self._record("clear", name)
            insert_frame(self.con, name, frame)
            self._record("insert", name, frame)

    def append(self, tables: dict[str, pl.DataFrame], deletes: dict[str, pl.DataFrame]) -> None:
        """Rows added to tables, after deleting rows by key (`deletes`: the keys per table)."""
        tables, deletes = dict(tables), dict(deletes)
        for name in KEPT_TABLES & (tables.keys() | deletes.keys()):
            self.state.upsert(name, deletes.get(name), tables.get(name))
            if name in STATE_TABLES:  # (not in the file)
                deletes.pop(name, None)
                tables.pop(name, None)
        self._submit(lambda: self._append(tables, deletes))

    def _append(self, tables: dict[str, pl.DataFrame], deletes: dict[str, pl.DataFrame]) -> None:
        assert self.con is not None
        for name, keys in deletes.items():
            if not self._replay_before(name, keys):
                delete_keys(self.con, name, keys)
            self._record("delete", name, keys)
        for name, frame in tables.items():
            self._replay_before(name)
            insert_frame(self.con, name, frame)
            self._record("insert", name, frame)

    def upsert(self, upserts: dict[str, Upsert]) -> None:
        """Rows written over tables by key."""
        upserts = dict(upserts)
        for name in KEPT_TABLES & upserts.keys():
            upsert = upserts[name] if name in MIRRORED_TABLES else upserts.pop(name)
            self.state.upsert(name, upsert.delete_keys(), upsert.rows)
        self._submit(lambda: self._upsert(upserts))

    def _upsert(self, upserts: dict[str, Upsert]) -> None:
        assert self.con is not None
        for name, upsert in upserts.items():
            keys = upsert.delete_keys()
            if not self._replay_before(name, keys):
                delete_keys(self.con, name, keys)
            self._record("delete", name, keys)
            insert_frame(self.con, name, upsert.rows)
            self._record("insert", name, upsert.rows)

    def checkpoint(self, later: Collection[str] = ()) -> None:
        """Commit and checkpoint what was handed over so far (compressing the appended
        rows is most of a checkpoint), then go on in a new transaction. The copy is
        private until `finish` swaps it in, so several transactions are as atomic as one.
        `later`: the tables the run still writes, whose journal steps wait to fold."""
        self._submit(lambda: self._checkpoint(later))

    def _checkpoint(self, later: Collection[str] = ()) -> None:
        assert self.con is not None
        self._replay_rest(later)
        self.con.execute("COMMIT")
        self.con.execute("CHECKPOINT")
        self.con.execute("BEGIN")
        if later:
            # Mid-run: the written blocks go to disk meanwhile (DuckDB fsyncs nothing here,
            # open_copy), not all at the fsyncs before the swap. 1M, two batches of 12
            # alternating pairs: -32 and -8 ms, 16 of 22 faster. (After the last
            # checkpoint too: no gain, 5 of 11.)
            threading.Thread(target=_flush, args=(self.tmp,), name="flush").start()

    def wait(self) -> None:
        """Wait for the writes handed over so far; raise the first that failed."""
        self._submit(lambda: None).result()
        if self.error is not None:
            raise self.error

    def _commit_and_close(self) -> None:
        self._replay_rest()
        super()._commit_and_close()

    def finish(self, meanwhile: Callable[[], object] | None = None) -> None:
        """Commit, checkpoint and swap the copy in (after every write handed over).
        `meanwhile` runs while the writer commits, before the swap."""
        self._submit(self._commit_and_close)
        if meanwhile is not None:
            meanwhile()
        self.wait()
        self.state.finish()
        assert self.journal is not None
        swap_keeping_standby(self.tmp, self.warehouse, self.journal)
        self._pool.shutdown()
        # (the run's frames map the replaced generation's files: removed after the run,
        # flows.engine.build_and_publish; 1M, 12 alternating pairs: -10 and -45 ms)
        self.state.published(retire=True)

    def discard(self) -> None:
        super().discard()  # (waits for the thread: the journal is made by then)
        if self.journal is not None:
            self.journal.discard()


def _flush(path: Path) -> None:
    """fsync a run's file ahead of the swap (which fsyncs it again); a discarded run's
    file may be gone already."""
    with suppress(OSError):
        fsync_path(path)


def delete_keys(con: duckdb.DuckDBPyConnection, name: str, keys: pl.DataFrame) -> None:
    """Delete the rows of table `name` whose key columns (those of `keys`) match a row of
    `keys`; a NULL key matches a NULL."""
    if keys.is_empty():
        return
    con.register("delete_keys", arrow_view(keys.unique()))
    try:
        [first, *more] = keys.columns
        if not more and not keys[first].has_nulls():  # the common case: a plain IN
            con.execute(
                f'DELETE FROM "{name}" WHERE "{first}" IN (SELECT "{first}" FROM delete_keys)'
            )
        else:
            match = " AND ".join(f't."{c}" IS NOT DISTINCT FROM k."{c}"' for c in keys.columns)
            con.execute(f'DELETE FROM "{name}" t USING delete_keys k WHERE {match}')
    except BaseException:
        # (in an aborted transaction unregistering fails too: the first error is the one)
        with suppress(duckdb.Error):
            con.unregister("delete_keys")
        raise
    con.unregister("delete_keys")
