"""Handcrafted mailboxes for rule tests: land messages as a connector would."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from connectors import lake
from flows.engine import workspace_frames
from flows.workspace import Account, BlocklistEntry, Workspace, account_id_for, new_member
from transforms.pipeline import Staged, build

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def ts(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@dataclass
class Mail:
    id: str
    sender: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    at: str = "2026-05-01T10:00:00"
    thread: str | None = None
    subject: str = "hello"
    names: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: ["INBOX"])
    list_id: str | None = None
    precedence: str | None = None
    rfc_id: str | None = None
    blocked_marker: bool = False


class Sandbox:
    """A workspace + lake in a temp folder, with members on acme-team.io by default."""

    def __init__(self, root: Path, members: list[str] | None = None):
        self.root = root
        self.lake = root / "lake"
        self.ws = Workspace()
        for email in members or ["alice@acme-team.io"]:
            self.add_member(email)

    def add_member(self, email: str, aliases: list[str] | None = None) -> str:
        m = new_member(email)
        self.ws.members.append(m)
        acc = Account(account_id=account_id_for("google", email), member_id=m.member_id,
                      provider="google", email=email, aliases=aliases or [])
        self.ws.accounts.append(acc)
        return acc.account_id

    def account(self, email: str) -> str:
        return account_id_for("google", email)

    def block(self, owner: str, entry: str, kind: str) -> None:
        self.ws.blocklist.append(BlocklistEntry(self.account(owner), entry, kind, "2026-01-01"))

    def land(self, owner: str, mails: list[Mail]) -> None:
        batch = lake.Batch(self.account(owner))
        for m in mails:
            if m.blocked_marker:
                batch.add("messages", {"provider": "google", "stream": "gmail",
                                       "message_id": m.id, "thread_id": m.thread or m.id,
                                       "op": "upsert", "blocked": True, "labels": []})
                continue
            batch.add("messages", {
                "provider": "google", "stream": "gmail", "message_id": m.id,
                "thread_id": m.thread or m.id, "rfc_message_id": m.rfc_id or f"<{m.id}@test>",
                "op": "upsert", "blocked": False, "sent_at": ts(m.at), "subject": m.subject,
                "snippet": "snip", "body_text": "body", "labels": m.labels,
                "list_id": m.list_id, "precedence": m.precedence,
            })
            roles = [("from", m.sender)] + [("to", a) for a in m.to] + [("cc", a) for a in m.cc]
            for role, addr in roles:
                batch.add("participants", {"message_id": m.id, "role": role, "address": addr,
                                           "name": m.names.get(addr)})
        lake.flush(self.lake, batch)

    def delete(self, owner: str, message_id: str) -> None:
        batch = lake.Batch(self.account(owner))
        batch.add("messages", {"provider": "google", "stream": "gmail", "message_id": message_id,
                               "op": "delete", "blocked": False, "labels": []})
        lake.flush(self.lake, batch)

    def build(self, previous: Staged | None = None, as_of: datetime = AS_OF) -> Staged:
        frames = workspace_frames(self.ws, as_of)
        return build(
            self.lake, frames,
            previous_people=previous.tables["people"] if previous else None,
            previous_companies=previous.tables["companies"] if previous else None,
        )


def emails_of(people: pl.DataFrame) -> set[str]:
    return set(people.select(pl.col("email_addresses").explode()).to_series().to_list())
