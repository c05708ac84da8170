"""A standby warehouse file, one incremental run behind the live one (issue 7).

An incremental publish writes its run into a copy of the live file and swaps the copy
in: DuckDB admits no writer beside other processes' readers, and analysts read the live
file while syncs run. Copying and fsyncing the whole file costs ~0.55 s at a million
messages (236 MiB), whatever the delta.

So the file an incremental publish replaces is not deleted: it becomes the standby, and
the run's writes are kept beside it as a journal (its inserts and deletes, in order, as
Arrow IPC files). The next incremental run takes the standby instead of a copy, replays
the journal into it (the standby is then the live file again, row for row), and writes
its own run after it; only the blocks it changes are flushed.

The manifest names the journal and the exact files it joins: the live file it leads to
and the standby it starts from, each by size, mtime and a hash of DuckDB's headers. It
is removed before a swap and written after it, so a crash at any point leaves either a
manifest that matches both files or none, and then the run copies the live file as
before. A standby that an analyst still holds open (DuckDB's lock refuses the writer),
a journal that does not read back whole, or a full build (which removes the standby:
it may hold mail since purged) also mean a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

MANIFEST_VERSION = 1


class StandbyUnusable(Exception):
    """The standby or its journal can't bring the live file's rows back; copy instead."""


def standby_path(warehouse: Path) -> Path:
    return warehouse.with_name(f".{warehouse.name}.standby")


def manifest_path(warehouse: Path) -> Path:
    return warehouse.with_name(f".{warehouse.name}.standby.json")


def journal_path(building: Path) -> Path:
    """The journal of the run building file `building` (publish.building_path)."""
    return building.with_name(building.name.removesuffix(".building") + ".journal")


# DuckDB's file header and its two database headers: a checkpoint rewrites one of them.
HEADER_BYTES = 3 * 4096


def file_identity(path: Path) -> list[Any]:
    """(size, mtime in ns, a hash of DuckDB's headers): any write to the file changes
    it. A copy that keeps the mtime (`cp -p`, `shutil.copytree`) keeps it too, and is as
    good a standby as the original."""
    st = os.stat(path)
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(HEADER_BYTES)).hexdigest()
    return [st.st_size, st.st_mtime_ns, head]


class Journal:
    """One run's writes to the warehouse, in order, as files in `folder`.

    Steps: ("clear", table) deletes every row; ("delete", table, keys) the rows matching
    the keys (as `warehouse.delta.delete_keys`); ("insert", table, rows) appends rows.
    """

    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # (a dead run's, of the same id)
        folder.mkdir()
        self.folder = folder
        self.steps: list[dict[str, Any]] = []

    def record(self, kind: str, table: str, frame: pl.DataFrame | None = None) -> None:
        step: dict[str, Any] = {"kind": kind, "table": table}
        if frame is not None:
            name = f"{len(self.steps):04d}.arrow"
            frame.write_ipc(self.folder / name, compression="uncompressed")
            step.update(file=name, rows=frame.height)
        self.steps.append(step)

    def close(self) -> None:
        (self.folder / "steps.json").write_text(json.dumps(self.steps))

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_journal(
    folder: Path, skip: Collection[str] = ()
) -> list[tuple[str, str, pl.DataFrame | None]]:
    """A journal's steps with their frames, each checked to read back whole; the steps
    on tables in `skip` are left out, their files unread."""
    try:
        steps = json.loads((folder / "steps.json").read_text())
        out = []
        for step in steps:
            if step["table"] in skip:
                continue
            frame = None
            if "file" in step:
                frame = pl.read_ipc(folder / step["file"])
                if frame.height != step["rows"]:
                    raise StandbyUnusable(f"{step['file']}: {frame.height} rows of {step['rows']}")
            out.append((step["kind"], step["table"], frame))
        return out
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as exc:
        raise StandbyUnusable(f"the journal does not read back: {exc}") from exc


def usable_journal(warehouse: Path) -> Path | None:
    """The journal that brings the standby to the live file's rows, if the manifest
    matches both files as they are now; else None."""
    try:
        manifest = json.loads(manifest_path(warehouse).read_text())
        if manifest.get("version") != MANIFEST_VERSION:
            return None
        if file_identity(warehouse) != manifest["live"]:
            return None
        if file_identity(standby_path(warehouse)) != manifest["standby"]:
            return None
        journal = warehouse.with_name(manifest["journal"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return journal if journal.is_dir() else None


def take_standby(warehouse: Path, tmp: Path) -> Path | None:
    """Move a usable standby to `tmp` (the run's building file) and return the journal
    to replay into it, or None (then nothing was moved)."""
    journal = usable_journal(warehouse)
    if journal is None:
        return None
    # Removed first: from here the standby is the run's, and a crash leaves no manifest.
    manifest_path(warehouse).unlink()
    os.replace(standby_path(warehouse), tmp)
    return journal


def replay(con: duckdb.DuckDBPyConnection, journal: Path) -> int:
    """Apply every step of a journal to the connection's file: the standby then holds
    the live file's rows. Returns the steps applied. (The writer applies them itself,
    skipping and folding some: DeltaWriter.)"""
    steps = read_journal(journal)
    apply_steps(con, steps)
    return len(steps)


def apply_steps(
    con: duckdb.DuckDBPyConnection, steps: list[tuple[str, str, pl.DataFrame | None]]
) -> None:
    """Apply journal steps (kind, table, frame) in order."""
    from warehouse.delta import delete_keys
    from warehouse.publish import insert_frame

    for kind, table, frame in steps:
        if kind == "clear":
            con.execute(f'DELETE FROM "{table}"')  # (our own table names)
        elif kind == "delete" and frame is not None:
            delete_keys(con, table, frame)
        elif kind == "insert" and frame is not None:
            insert_frame(con, table, frame)
        else:
            raise StandbyUnusable(f"unknown journal step {kind!r}")


# A journal larger than this share of the warehouse file is not kept: replaying it
# (a large delta, say a backfill) would cost more than copying the file.
MAX_JOURNAL_SHARE = 0.2
# Nor is a standby of a smaller file than this (RAPPORT_STANDBY_MIN_BYTES): copying a
# small file costs less than the replay. Measured (runs alternating in one process):
# 10k messages, 8 MiB, a run with nothing new 0.50 s copying against 0.59 s with the
# standby; 100k, 33 MiB, 10 new messages 0.745 against 0.709 s; 1M, 237 MiB, 1,000 new
# messages 1.23 against 1.00 s.
STANDBY_MIN_BYTES = 32 * 2**20


def standby_min_bytes() -> int:
    return int(os.environ.get("RAPPORT_STANDBY_MIN_BYTES", STANDBY_MIN_BYTES))


def swap_keeping_standby(tmp: Path, warehouse: Path, journal: Journal) -> bool:
    """Swap `tmp` in (publish.swap_file), keeping the replaced file as the standby with
    `journal` (this run's writes) to bring it up to date. Returns whether a standby was
    kept: not without hard links, nor for a file under `standby_min_bytes()`, nor with a
    journal over MAX_JOURNAL_SHARE of the file's size; then the replaced file is simply
    deleted."""
    from warehouse.publish import swap_file

    journal.close()
    journal_bytes = sum(f.stat().st_size for f in journal.folder.iterdir())
    size = tmp.stat().st_size
    worth = size >= standby_min_bytes() and journal_bytes <= MAX_JOURNAL_SHARE * size
    manifest = manifest_path(warehouse)
    manifest.unlink(missing_ok=True)
    standby = standby_path(warehouse)
    # An older standby that was not taken keeps a second name until a thread deletes it:
    # freeing a large file's blocks happens in the call that drops its last name.
    old_standby = tmp.with_name(tmp.name.removesuffix(".building") + ".standby.retired")
    if standby.exists():
        os.replace(standby, old_standby)
    replaced = file_identity(warehouse)
    kept = worth and _linked(warehouse, standby)
    swap_file(tmp, warehouse)  # (drops the replaced file's other name; a standby stays)
    if kept:
        body = {
            "version": MANIFEST_VERSION,
            "live": file_identity(warehouse),
            "standby": replaced,
            "journal": journal.folder.name,
        }
        written = manifest.with_name(manifest.name + ".tmp")
        written.write_text(json.dumps(body))
        os.replace(written, manifest)
    # (renamed only: removing them frees their pages, after the run: remove_retired_journals)
    _remove_journals(warehouse, keep=journal.folder if kept else None, retire=True)
    threading.Thread(target=old_standby.unlink, kwargs={"missing_ok": True}).start()
    return kept


def _linked(path: Path, name: Path) -> bool:
    """Give `path` a second name; False where there are no hard links."""
    try:
        os.link(path, name)
    except OSError:
        return False
    return True


def drop_standby(warehouse: Path) -> None:
    """Remove the standby, its manifest and every journal (a full build publishes: the
    standby may hold mail the new file no longer has)."""
    manifest_path(warehouse).unlink(missing_ok=True)
    standby_path(warehouse).unlink(missing_ok=True)
    _remove_journals(warehouse, keep=None)


def _remove_journals(warehouse: Path, keep: Path | None, retire: bool = False) -> None:
    """Remove every journal but `keep`, or with `retire` rename them for
    `remove_retired_journals`."""
    for folder in warehouse.parent.glob(f".{warehouse.name}.*.journal"):
        if folder != keep:
            if retire:
                with suppress(OSError):  # (the swap is done: a journal left over is harmless)
                    os.replace(folder, folder.with_name(folder.name + RETIRED_SUFFIX))
            else:
                shutil.rmtree(folder, ignore_errors=True)
    if not retire:
        remove_retired_journals(warehouse)


RETIRED_SUFFIX = ".retired"


def remove_retired_journals(warehouse: Path) -> None:
    """Remove the journals a publish retired."""
    for folder in warehouse.parent.glob(f".{warehouse.name}.*.journal{RETIRED_SUFFIX}"):
        shutil.rmtree(folder, ignore_errors=True)
