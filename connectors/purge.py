"""Retroactive blocklists: rewrite an account's landed files so blocked mail leaves disk.

Adding an entry must purge matching content that already landed (DESIGN §4.2). Every
Parquet file holding a matching message is rewritten atomically: the message row
becomes a marker (ids, thread, blocked) and its participants are dropped. Events are
treated the same way. Cost follows the account's lake, once per blocklist change.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from connectors import lake
from transforms.addresses import normalise_addresses
from transforms.rules import blocklist_matches

CONTENT_COLUMNS = {
    "messages": [
        "rfc_message_id",
        "sent_at",
        "subject",
        "snippet",
        "body_text",
        "list_id",
        "list_unsubscribe",
        "precedence",
        "auto_submitted",
        "in_reply_to",
    ],
    "events": ["ical_uid", "title", "starts_at", "ends_at", "recurring_event_id"],
}
CHILD = {"messages": "participants", "events": "attendees"}
ID = {"messages": "message_id", "events": "event_id"}


def _matching_ids(lake_dir: Path, account_id: str, table: str, blocklist: pl.DataFrame) -> set[str]:
    files = lake.glob(lake_dir, CHILD[table], [account_id])
    if not files or blocklist.is_empty():
        return set()
    parts = pl.scan_parquet(files, hive_partitioning=False).rename({ID[table]: "message_id"})
    parts = normalise_addresses(parts.select("account_id", "message_id", "address"), "address")
    hits = blocklist_matches(parts, blocklist).collect()
    return set(hits["message_id"].to_list())


def _rewrite(path: str, frame: pl.DataFrame, table: str) -> None:
    lake.write_parquet_atomic(lake.conform(frame, table), Path(path))


def purge_blocklisted(lake_dir: Path, account_id: str, blocklist: pl.DataFrame) -> int:
    """Turn every landed item of the account that the blocklist matches into a marker."""
    purged = 0
    for table in ("messages", "events"):
        ids = _matching_ids(lake_dir, account_id, table, blocklist)
        if not ids:
            continue
        id_col = ID[table]
        for path in lake.glob(lake_dir, table, [account_id]):
            frame = pl.from_arrow(pq.read_table(path))
            hit = pl.col(id_col).is_in(list(ids)) & (pl.col("op") == "upsert")
            if not frame.select(hit.any()).item():
                continue
            changes = [
                pl.when(hit).then(None).otherwise(pl.col(c)).alias(c)
                for c in CONTENT_COLUMNS[table]
            ]
            if table == "messages":
                changes.append(
                    pl.when(hit).then(True).otherwise(pl.col("blocked")).alias("blocked")
                )
            else:
                changes.append(
                    pl.when(hit).then(pl.lit("blocked")).otherwise(pl.col("status")).alias("status")
                )
            purged += frame.select(hit.sum()).item()
            if lake.CONTENT_HASH in frame.columns:  # (a marker's content is gone)
                changes.append(
                    pl.when(hit)
                    .then(None)
                    .otherwise(pl.col(lake.CONTENT_HASH))
                    .alias(lake.CONTENT_HASH)
                )
            _rewrite(path, frame.with_columns(changes), table)
        for path in lake.glob(lake_dir, CHILD[table], [account_id]):
            frame = pl.from_arrow(pq.read_table(path))
            keep = frame.filter(~pl.col(id_col).is_in(list(ids)))
            if keep.height != frame.height:
                if keep.is_empty():
                    Path(path).unlink()
                else:
                    _rewrite(path, keep, CHILD[table])
    return purged


def blocked_marker_ids(lake_dir: Path, account_id: str) -> list[str]:
    """Ids currently landed only as blocked markers (to re-fetch after an unblock)."""
    from transforms.current import current_messages
    from transforms.pipeline import scan

    cur = current_messages(scan(lake_dir, "messages", [account_id])).filter(pl.col("blocked"))
    return sorted(cur.select("message_id").collect()["message_id"].to_list())
