"""The build state only the pipeline reads, kept beside the warehouse as Arrow IPC files.

A run leaves state for the next one (which lake files it read, the name counts, the keys
of every address...). Tables no analyst queries do not go into the DuckDB file: there,
each run paid to read them whole (~0.05 s of CPU at a million messages) and to write its
changes twice, once into its file and once into the standby (warehouse/standby.py).
Here a run reads them memory-mapped, applies its changes to them in memory, and writes
the tables it changed as a new generation; unchanged ones are hard links to the last.

Each generation is a folder named by an id that the DuckDB file's `_rapport_build` row
records (column `state`): the swap that publishes the file is also the commit of its
state. A generation is written in full before that swap; after it, the others are
removed. A crash leaves at worst a generation that no file names (removed by the next
publish), and a missing or unreadable one means a full build.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.ipc as pa_ipc

log = logging.getLogger(__name__)

UTC_US = pl.Datetime("us", "UTC")

# Each state table and its columns (the types the full build and a run write).
STATE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    # the lake files the published run read (paths relative to the lake)
    "_rapport_lake_files": {"path": pl.String()},
    "_rapport_name_counts": {
        "canonical_key": pl.String(),
        "email": pl.String(),
        "name": pl.String(),
        "n": pl.Int64(),
    },
    "_rapport_last_used": {"email": pl.String(), "last_used_at": UTC_US},
    "_rapport_blocked_threads": {"account_id": pl.String(), "thread_id": pl.String()},
    # every address of every person with its canonical key (null: not a valid address),
    # so a run normalises only addresses it has not seen
    "_rapport_address_keys": {"address": pl.String(), "canonical_key": pl.String()},
    # canonical key -> the person holding it (a later run starts from it)
    "_rapport_person_keys": {"canonical_key": pl.String(), "person_id": pl.String()},
    # each domain of a person's address: its registrable domain and whether it is free
    # mail (a public-suffix lookup per domain: ~65 ms for the 4,700 of 1M messages)
    "_rapport_domain_info": {
        "domain": pl.String(),
        "registrable_domain": pl.String(),
        "is_free_mail": pl.Boolean(),
    },
    # the meetings after the run's as_of: the next run finds each key's next one here
    "_rapport_upcoming_meetings": {
        "person_id": pl.String(),
        "company_id": pl.String(),
        "at": UTC_US,
        "member_id": pl.String(),
        "source_key": pl.String(),
    },
    # how each display name in use was split (nameparser is slow; parse a name once)
    "_rapport_name_parts": {
        "display_name": pl.String(),
        "name": pl.String(),
        "first_name": pl.String(),
        "last_name": pl.String(),
    },
}
STATE_TABLES = frozenset(STATE_SCHEMAS)

# Tables analysts query too (or views over them): they stay in the warehouse, and a copy
# is kept here as well, for the next run to read at once instead of from the file
# (~0.05 s of CPU at 1M). Their columns are the warehouse's (`mirrored_schemas`).
MIRRORED_TABLES = frozenset(
    {
        "people",
        "companies",
        "person_merges",
        "_rapport_connection_sums",
        "_rapport_person_activity",
        "_rapport_company_activity",
    }
)
KEPT_TABLES = STATE_TABLES | MIRRORED_TABLES  # (every table a generation holds)


class StateUnreadable(Exception):
    """A generation is missing or does not read back whole: the run builds in full."""


def state_root(warehouse: Path) -> Path:
    return warehouse.with_name(f".{warehouse.name}.state")


def _file(folder: Path, table: str) -> Path:
    return folder / f"{table}.arrow"


@functools.cache
def mirrored_schemas() -> dict[str, dict[str, pl.DataType]]:
    """The columns of the mirrored tables as a query of the warehouse returns them (times
    in UTC): an empty in-memory warehouse is asked once per process."""
    from warehouse.publish import sql_text

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(sql_text("schema.sql"))
        return {
            table: {
                name: pl.Datetime(t.time_unit, "UTC") if isinstance(t, pl.Datetime) else t
                for name, t in con.sql(f'SELECT * FROM "{table}" LIMIT 0').pl().schema.items()
            }
            for table in sorted(MIRRORED_TABLES)
        }
    finally:
        con.close()


def schema_of(table: str) -> dict[str, pl.DataType]:
    return STATE_SCHEMAS[table] if table in STATE_SCHEMAS else mirrored_schemas()[table]


def conform(
    table: str, frame: pl.DataFrame, schema: dict[str, pl.DataType] | None = None
) -> pl.DataFrame:
    """`frame` with exactly the kept table's columns and types (`schema`, else its own)."""
    schema = schema or schema_of(table)
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])


def read_generation(warehouse: Path, generation: str | None) -> dict[str, pl.DataFrame]:
    """Every table of a generation (memory-mapped: reading costs next to nothing)."""
    if not generation:
        raise StateUnreadable("the warehouse names no state files")
    folder = state_root(warehouse) / generation
    try:
        return {table: _read(_file(folder, table)) for table in KEPT_TABLES}
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise StateUnreadable(f"state files of {generation} unreadable: {exc}") from exc


def read_sole_generation(warehouse: Path) -> tuple[str, dict[str, pl.DataFrame]] | None:
    """The only generation there is, read before the file that names it is open (after a
    publish only the live one is left); None if there are none, several, or it does not
    read. The caller checks it against the file's build row before using it."""
    try:
        [folder] = [f for f in _generations(warehouse) if not f.name.startswith(RETIRED)]
        return folder.name, read_generation(warehouse, folder.name)
    except (OSError, ValueError, StateUnreadable):
        return None


def _read(path: Path) -> pl.DataFrame:
    # Memory-mapped, the frame's buffers are the file's pages: at 1M, 5 ms for every table
    # against 33 ms read into memory (pl.read_ipc). Files are never written in place (a
    # new generation is a new folder), so the mapping stays valid while the frame lives.
    with pa.memory_map(str(path)) as source:
        frame = pl.from_arrow(pa_ipc.open_file(source).read_all())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _generations(warehouse: Path) -> list[Path]:
    """Every generation folder beside the warehouse, retired ones included."""
    root = state_root(warehouse)
    return list(root.iterdir()) if root.is_dir() else []


def remove_other_generations(warehouse: Path, keep: str) -> None:
    """Remove every generation but `keep` (after the swap that made `keep` live)."""
    for folder in _generations(warehouse):
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


# A replaced generation is first renamed with this prefix, and removed once the run's
# frames no longer map its files: removing a mapped file leaves freeing its pages to the
# unmapping, on the run's path (~20 ms for the tables a 1M new-mail run rewrites).
RETIRED = "retired-"


def retire_other_generations(warehouse: Path, keep: str) -> None:
    """Rename every generation but `keep` as retired (removed by `remove_retired`)."""
    for folder in _generations(warehouse):
        if folder.name != keep and not folder.name.startswith(RETIRED):
            # (the file is live already: a generation that can't be renamed stays, and the
            # next run reads the one its build row names)
            with suppress(OSError):
                os.replace(folder, folder.with_name(RETIRED + folder.name))


def remove_retired(warehouse: Path) -> None:
    """Remove the retired generations (call once no frame maps their files)."""
    for folder in _generations(warehouse):
        if folder.name.startswith(RETIRED):
            shutil.rmtree(folder, ignore_errors=True)


class StateWriter:
    """A run's new generation of the state, written in a thread of its own.

    A full build hands over whole tables (`replace`); an incremental run starts from the
    published generation (`start_from`) and hands over its changes (`upsert`, `append`),
    each applied in memory and the table written again. `finish` links the tables the
    run did not touch and returns once the generation is complete; `discard` drops it.
    """

    def __init__(self, warehouse: Path) -> None:
        self.warehouse = warehouse
        self.generation = uuid.uuid4().hex
        self.folder = state_root(warehouse) / self.generation
        self.base: Path | None = None
        self.tables: dict[str, pl.DataFrame] = {}
        self.written: set[str] = set()
        self.named = False  # (a build row names this generation)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")
        self._steps: list[Future[None]] = []

    def start_from(self, tables: dict[str, pl.DataFrame], generation: str) -> None:
        """The published generation's tables, which this run changes."""
        self.tables.update(tables)
        self.base = state_root(self.warehouse) / generation

    def stamp(self, build: pl.DataFrame) -> pl.DataFrame:
        """The run's `_rapport_build` row, naming this generation."""
        self.named = True
        return build.with_columns(state=pl.lit(self.generation, pl.String))

    def replace(self, table: str, frame: pl.DataFrame) -> None:
        self._submit(table, lambda current: conform(table, frame, self._schema(table)))

    def upsert(self, table: str, gone: pl.DataFrame | None, rows: pl.DataFrame | None) -> None:
        """Delete the rows whose key columns (those of `gone`) match a row of `gone` (a
        null matching a null, as the warehouse's deletes), then append `rows`."""

        def apply(current: pl.DataFrame) -> pl.DataFrame:
            if gone is not None and gone.height:
                current = current.join(
                    gone.unique(),
                    on=gone.columns,
                    how="anti",
                    nulls_equal=True,
                    maintain_order="left",
                )
            if rows is None or not rows.height:
                return current
            return pl.concat([current, conform(table, rows, dict(current.schema))])

        self._submit(table, apply)

    def _submit(self, table: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        self._steps.append(self._pool.submit(self._apply, table, change))

    def _schema(self, table: str) -> dict[str, pl.DataType]:
        # (a run's base generation has the columns already: no need to work them out)
        base = self.tables.get(table)
        return dict(base.schema) if base is not None else schema_of(table)

    def _apply(self, table: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        current = self.tables.get(table)
        if current is None:
            current = pl.DataFrame(schema=schema_of(table))
        frame = change(current)
        self.tables[table] = frame
        self._make_folder()
        # (uncompressed: read back memory-mapped, no decoding)
        frame.write_ipc(_file(self.folder, table), compression="uncompressed")
        self.written.add(table)

    def _make_folder(self) -> None:
        # (owner only: names and addresses, as private as the warehouse's)
        self.folder.parent.mkdir(exist_ok=True, mode=0o700)
        self.folder.mkdir(exist_ok=True, mode=0o700)

    def finish(self) -> None:
        """Wait for the writes; link the tables not written from the base generation.
        Raises what failed."""
        for step in self._steps:
            step.result()
        self._pool.shutdown()
        if not (self.written or self.named or self.base):
            return  # (a file with no build state: nothing to keep)
        self._make_folder()
        for table in KEPT_TABLES - self.written:
            target = _file(self.folder, table)
            source = _file(self.base, table) if self.base is not None else None
            if source is not None and source.exists():
                try:
                    os.link(source, target)
                except OSError:  # no hard links here
                    shutil.copyfile(source, target)
            else:  # (a full build that had no rows for it)
                pl.DataFrame(schema=schema_of(table)).write_ipc(target)

    def published(self, retire: bool = False) -> None:
        """The file naming this generation is live: the others go, or with `retire` are
        renamed for `remove_retired` (a run whose frames still map them)."""
        if retire:
            retire_other_generations(self.warehouse, keep=self.generation)
        else:
            remove_other_generations(self.warehouse, keep=self.generation)

    def discard(self) -> None:
        for step in self._steps:
            step.cancel()
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.folder, ignore_errors=True)
