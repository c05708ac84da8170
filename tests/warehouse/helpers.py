"""Build and publish a real warehouse file from a handcrafted Sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connectors import lake
from tests.mailbox import AS_OF, Mail, Sandbox, publish_staged, ts
from transforms.pipeline import Staged
from warehouse.publish import query_readonly


def land_mail(
    sb: Sandbox, owner: str, mail: Mail, *, body: str = "body", snippet: str = "snip"
) -> None:
    """Like Sandbox.land for one message, with its own body and snippet.

    Unlike Sandbox.land, an empty `rfc_id` is landed as it is (only None gets a default).
    """
    batch = lake.Batch(sb.account(owner))
    batch.add(
        "messages",
        {
            "provider": "google",
            "stream": "gmail",
            "message_id": mail.id,
            "thread_id": mail.thread or mail.id,
            "rfc_message_id": f"<{mail.id}@test>" if mail.rfc_id is None else mail.rfc_id,
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


def publish_sandbox(
    sb: Sandbox, warehouse: Path, previous: Staged | None = None, run_id: str = "run"
) -> Staged:
    """Pipeline build + workspace tables (members, accounts, grants), published for real."""
    staged = sb.build(previous)
    publish_staged(sb.ws, staged, warehouse, AS_OF)
    return staged


def rows(warehouse: Path, sql: str, params: dict[str, Any] | None = None) -> list[dict]:
    """Query the published file read-only, as analysts do; rows as dicts."""
    cols, data = query_readonly(warehouse, sql, params)
    return [dict(zip(cols, r, strict=True)) for r in data]
