"""From append-only deltas to the current state of each message (dedup by id + version)."""

from __future__ import annotations

import polars as pl

from transforms.addresses import normalise_addresses

MEMBER_ROLES = ("from", "to", "cc", "bcc", "reply_to")


def latest_versions(raw: pl.LazyFrame, key: list[str]) -> pl.LazyFrame:
    """Keep the last landed version of each key (landing order: version, then seq).

    Only the narrow key columns are sorted (by the two integers) to pick a winning row
    per key; the wide rows (bodies) are then kept by row number, never moved by a sort.
    """
    narrow = raw.select(*key).collect()
    if narrow.height == narrow.n_unique():
        return raw  # one version per key (a first sync, a rebuild after compaction)
    rows = raw.with_row_index("_row")
    winners = (
        rows.select("_row", *key, "version", "seq")
        .sort(["version", "seq"])
        .unique(subset=key, keep="last")
        .select("_row")
    )
    return rows.join(winners, on="_row", how="semi").drop("_row")


def current_messages(raw_messages: pl.LazyFrame) -> pl.LazyFrame:
    """Live messages (including blocked markers); deletes drop out.

    RFC Message-IDs are normalised to `<id>` (providers differ on brackets and spaces)
    so copies of one mail from Gmail, Graph and files are recognised as one.
    """
    mid = pl.col("rfc_message_id").str.strip_chars().str.strip_chars("<>").str.strip_chars()
    return (
        latest_versions(raw_messages, ["account_id", "message_id"])
        .filter(pl.col("op") == "upsert")
        .with_columns(
            rfc_message_id=pl.when(mid != "").then(pl.concat_str([pl.lit("<"), mid, pl.lit(">")]))
        )
    )


def current_participants(raw_participants: pl.LazyFrame, messages: pl.LazyFrame) -> pl.LazyFrame:
    """Participants of exactly the surviving version of each message, normalised.

    When `messages` carries a `_mid` row number it is attached to each participant, so
    later group-bys and joins can use one integer instead of two strings.
    """
    cols = ["account_id", "message_id", "version"]
    has_mid = "_mid" in messages.collect_schema().names()
    keys = messages.select(*cols, *(["_mid"] if has_mid else []))
    parts = raw_participants.join(keys, on=cols, how="inner" if has_mid else "semi")
    return normalise_addresses(parts, "address")
