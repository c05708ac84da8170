"""Build and publish a real warehouse file from a handcrafted Sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from connectors import lake
from flows.engine import SYNC_RUN_SCHEMA, workspace_tables
from tests.mailbox import Mail, Sandbox, ts
from warehouse.publish import publish, query_readonly


def land_with_body(
    sb: Sandbox, owner: str, mail: Mail, *, body: str = "body", snippet: str = "snip"
) -> None:
    """Like Sandbox.land for one message, with its own body and snippet."""
    batch = lake.Batch(sb.account(owner))
    batch.add(
        "messages",
        {
            "provider": "google",
            "stream": "gmail",
            "message_id": mail.id,
            "thread_id": mail.thread or mail.id,
            "rfc_message_id": mail.rfc_id or f"<{mail.id}@test>",
            "op": "upsert",
            "blocked": False,
            "sent_at": ts(mail.at),
            "subject": mail.subject,
            "snippet": snippet,
            "body_text": body,
            "labels": mail.labels,
        },
    )
    roles = [("from", mail.sender)] + [("to", a) for a in mail.to] + [("cc", a) for a in mail.cc]
    for role, addr in roles:
        batch.add(
            "participants",
            {"message_id": mail.id, "role": role, "address": addr, "name": mail.names.get(addr)},
        )
    lake.flush(sb.lake, batch)


def publish_sandbox(sb: Sandbox, warehouse: Path, run_id: str = "run-1") -> Path:
    """Pipeline build + workspace tables (members, accounts, grants), published for real."""
    tables = dict(sb.build().tables)
    tables.update(workspace_tables(sb.ws))
    publish(warehouse, tables, pl.DataFrame(schema=SYNC_RUN_SCHEMA), run_id)
    return warehouse


def rows(warehouse: Path, sql: str, params: dict[str, Any] | None = None) -> list[dict]:
    cols, data = query_readonly(warehouse, sql, params)
    return [dict(zip(cols, r, strict=True)) for r in data]
