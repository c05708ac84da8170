"""`rapport status`: per-account health, with no silent loss.

The provider's own count is compared with what landed (including blocked markers and
quarantined items) so that an unexplained gap is flagged instead of hidden.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import polars as pl

from connectors import lake
from flows.engine import load_runs
from flows.workspace import Home
from transforms.current import current_messages
from transforms.pipeline import scan

MAIL_STREAMS = ("gmail", "outlook_mail")


def _age(ts: str | None) -> str | None:
    if not ts:
        return None
    delta = datetime.now(UTC) - datetime.fromisoformat(ts)
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def account_status(h: Home) -> list[dict[str, Any]]:
    ws = h.load()
    runs = load_runs(h)
    last_stream: dict[str, dict[str, Any]] = {}
    for accounts_json in runs["accounts"].to_list():
        for r in json.loads(accounts_json or "[]"):
            if r.get("stream") in MAIL_STREAMS and r.get("provider_total") is not None:
                last_stream[r["account_id"]] = r
    published: dict[str, int] = {}
    if h.warehouse.exists():
        from warehouse.publish import query_readonly

        _, rows = query_readonly(
            h.warehouse, "SELECT account_id, count(*) FROM messages GROUP BY account_id"
        )
        published = dict(rows)  # type: ignore[arg-type]
    out = []
    for acc in ws.accounts:
        files = lake.glob(h.lake, "messages", [acc.account_id])
        landed = blocked = 0
        if files:
            cur = (
                current_messages(scan(h.lake, "messages", [acc.account_id]))
                .select(n=pl.len(), blocked=pl.col("blocked").sum())
                .collect()
            )
            landed, blocked = int(cur["n"][0]), int(cur["blocked"][0] or 0)
        quarantined = len(
            scan(h.lake, "quarantine", [acc.account_id]).select("item_id").unique().collect()
        )
        stream = {"google": "gmail", "microsoft": "outlook_mail"}.get(acc.provider)
        cursor = h.load_cursor(acc.account_id, stream) if stream else None
        last = last_stream.get(acc.account_id, {})
        total = last.get("provider_total")
        gap = None
        if total is not None:
            missing = total - landed - quarantined
            gap = "none" if missing == 0 else f"UNEXPLAINED {missing:+d}"
        out.append(
            {
                "email": acc.email,
                "status": acc.status + (f" ({acc.status_reason})" if acc.status_reason else ""),
                "last_synced_at": acc.last_synced_at,
                "cursor_age": _age(cursor.get("saved_at")) if cursor else None,
                "provider_total": total,
                "landed": f"{landed} ({blocked} blocked, {quarantined} quarantined)",
                "published": published.get(acc.account_id, 0),
                "gap": gap,
                "last_error": acc.last_error,
            }
        )
    return out
