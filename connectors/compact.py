"""Lake compaction: fold an account's many small delta files into current-state files.

Every sync appends small Parquet files; reading thousands of them gets slow. Compaction
keeps only the winning version of each item (deletes and superseded versions go), with
the original `version`/`seq` values, so every reader computes exactly what it did before.

Crash safety: new files are written to a staging folder, then a manifest naming the
files to add and remove is written atomically, then the manifest is applied. A crash
before the manifest leaves only ignorable staging files; a crash after it is finished by
`finish_pending` on the next run. Run it under the writer lock.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl

from connectors import lake
from transforms.current import latest_versions

PAIRS = (("messages", "participants", "message_id"), ("events", "attendees", "event_id"))


def _staging(lake_dir: Path, account_id: str) -> Path:
    return lake_dir / ".compaction" / account_id


def _manifest(lake_dir: Path, account_id: str) -> Path:
    return lake_dir / ".compaction" / f"{account_id}.json"


def file_count(lake_dir: Path, account_id: str) -> int:
    return sum(len(lake.glob(lake_dir, t, [account_id])) for t in lake.TABLES)


def finish_pending(lake_dir: Path) -> int:
    """Apply any manifest a crash left behind; drop orphaned staging folders."""
    root = lake_dir / ".compaction"
    if not root.exists():
        return 0
    done = 0
    for manifest in sorted(root.glob("*.json")):
        plan = json.loads(manifest.read_text())
        for staged, final in plan["add"]:
            if Path(staged).exists():
                Path(final).parent.mkdir(parents=True, exist_ok=True)
                Path(staged).replace(final)
        for old in plan["remove"]:
            Path(old).unlink(missing_ok=True)
        for folder in {Path(final).parent for _, final in plan["add"]}:
            lake.fsync_dir(folder)
        manifest.unlink()
        done += 1
    for leftover in root.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
    return done


def compact_account(lake_dir: Path, account_id: str) -> dict[str, int]:
    """Rewrite one account's lake as one current-state file per table."""
    finish_pending(lake_dir)
    staging = _staging(lake_dir, account_id)
    staging.mkdir(parents=True, exist_ok=True)
    add: list[tuple[str, str]] = []
    remove: list[str] = []
    kept: dict[str, int] = {}
    for main, child, key in PAIRS:
        files = lake.glob(lake_dir, main, [account_id])
        child_files = lake.glob(lake_dir, child, [account_id])
        if len(files) + len(child_files) <= 2:
            continue
        current = (
            latest_versions(lake.scan(files, main), ["account_id", key])
            .filter(pl.col("op") == "upsert")
            .collect()
        )
        children = pl.DataFrame(schema=pl.from_arrow(lake.TABLES[child].empty_table()).schema)
        if child_files:
            children = (
                lake.scan(child_files, child)
                .join(
                    current.lazy().select("account_id", key, "version"),
                    on=["account_id", key, "version"],
                    how="semi",
                )
                .collect()
            )
        # Hashed again, as landing does: files landed before the content hash (or with
        # another Polars, whose hash may differ) come out with hashes that compare.
        current = current.with_columns(lake.content_hashes(main, current, children))
        top = int(current["version"].max() or 0) if current.height else 0
        name = f"{top:020d}-compact.parquet"
        for table, frame in ((main, current), (child, children)):
            staged = staging / f"{table}-{name}"
            lake.write_parquet_atomic(lake.conform(frame, table), staged)
            add.append((str(staged), str(lake.account_dir(lake_dir, table, account_id) / name)))
            kept[table] = frame.height
        remove += files + child_files
    if add:
        plan = {"add": add, "remove": [r for r in remove if r not in {f for _, f in add}]}
        lake.write_json_atomic(_manifest(lake_dir, account_id), plan)
    finish_pending(lake_dir)
    return kept
