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
        acc = Account(
            account_id=account_id_for("google", email),
            member_id=m.member_id,
            provider="google",
            email=email,
            aliases=aliases or [],
        )
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
                batch.add(
                    "messages",
                    {
                        "provider": "google",
                        "stream": "gmail",
                        "message_id": m.id,
                        "thread_id": m.thread or m.id,
                        "op": "upsert",
                        "blocked": True,
                        "labels": [],
                    },
                )
                continue
            batch.add(
                "messages",
                {
                    "provider": "google",
                    "stream": "gmail",
                    "message_id": m.id,
                    "thread_id": m.thread or m.id,
                    "rfc_message_id": m.rfc_id or f"<{m.id}@test>",
                    "op": "upsert",
                    "blocked": False,
                    "sent_at": ts(m.at),
                    "subject": m.subject,
                    "snippet": "snip",
                    "body_text": "body",
                    "labels": m.labels,
                    "list_id": m.list_id,
                    "precedence": m.precedence,
                },
            )
            roles = [("from", m.sender)] + [("to", a) for a in m.to] + [("cc", a) for a in m.cc]
            for role, addr in roles:
                batch.add(
                    "participants",
                    {"message_id": m.id, "role": role, "address": addr, "name": m.names.get(addr)},
                )
        lake.flush(self.lake, batch)

    def land_event(
        self,
        owner: str,
        event_id: str,
        start: str,
        organizer: str,
        attendees: list[str],
        *,
        ical_uid: str | None = None,
        status: str = "confirmed",
        hours: int = 1,
        declined: tuple[str, ...] = (),
        rooms: tuple[str, ...] = (),
    ) -> None:
        from datetime import timedelta

        batch = lake.Batch(self.account(owner))
        begin = ts(start)
        batch.add(
            "events",
            {
                "provider": "google",
                "stream": "gcalendar",
                "event_id": event_id,
                "ical_uid": ical_uid or f"{event_id}@cal",
                "op": "upsert",
                "status": status,
                "title": f"Meeting {event_id}",
                "starts_at": begin,
                "ends_at": begin + timedelta(hours=hours),
                "all_day": False,
            },
        )
        batch.add(
            "attendees",
            {
                "event_id": event_id,
                "role": "organizer",
                "address": organizer,
                "name": None,
                "response_status": "accepted",
                "resource": False,
            },
        )
        for addr in attendees + list(rooms):
            batch.add(
                "attendees",
                {
                    "event_id": event_id,
                    "role": "attendee",
                    "address": addr,
                    "name": None,
                    "response_status": "declined" if addr in declined else "accepted",
                    "resource": addr in rooms,
                },
            )
        lake.flush(self.lake, batch)

    def delete(self, owner: str, message_id: str) -> None:
        batch = lake.Batch(self.account(owner))
        batch.add(
            "messages",
            {
                "provider": "google",
                "stream": "gmail",
                "message_id": message_id,
                "op": "delete",
                "blocked": False,
                "labels": [],
            },
        )
        lake.flush(self.lake, batch)

    def build_published(self, as_of: datetime = AS_OF) -> Staged:
        """build(), published to a real DuckDB file, plus what the score views show.

        connections, person_metrics and company_metrics are views over the stored decay
        sums and activity rows (warehouse/sql/scores.sql); their rows are added to the
        returned tables as analysts would read them.
        """
        staged = self.build(as_of=as_of)
        warehouse = self.root / f"published-{len(list(self.root.glob('published-*')))}.duckdb"
        publish_staged(self.ws, staged, warehouse, as_of)
        views = read_tables(warehouse, ["connections", "person_metrics", "company_metrics"])
        return Staged({**staged.tables, **views}, staged.stats, staged.timings)

    def build(self, previous: Staged | None = None, as_of: datetime = AS_OF) -> Staged:
        frames = workspace_frames(self.ws, as_of)
        return build(
            self.lake,
            frames,
            previous_people=previous.tables["people"] if previous else None,
            previous_companies=previous.tables["companies"] if previous else None,
            previous_merges=previous.tables["person_merges"] if previous else None,
        )


def publish_staged(ws: Workspace, staged: Staged, warehouse: Path, as_of: datetime) -> None:
    """Publish a build with the workspace tables and the run's as_of, as the engine does."""
    from flows.engine import SYNC_RUN_SCHEMA, workspace_tables
    from warehouse.publish import publish

    tables = {**staged.tables, **workspace_tables(ws)}
    tables["_rapport_build"] = pl.DataFrame(
        {"as_of": [as_of], "fingerprint": ["test"], "mode": ["full"]},
        schema={"as_of": pl.Datetime("us", "UTC"), "fingerprint": pl.String, "mode": pl.String},
    )
    publish(warehouse, tables, pl.DataFrame(schema=SYNC_RUN_SCHEMA), "test")


def read_tables(warehouse: Path, names: list[str]) -> dict[str, pl.DataFrame]:
    """Tables or views of a published file, with times in UTC as the builds have them."""
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {
            name: con.sql(f'SELECT * FROM "{name}"')
            .pl()
            .with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))
            for name in names
        }
    finally:
        con.close()


def emails_of(people: pl.DataFrame) -> set[str]:
    return set(people.select(pl.col("email_addresses").explode()).to_series().to_list())


# ---------------------------------------------------------------- simulator mail
def sim_mail(
    n: int,
    sender: str,
    to: list[str],
    *,
    cc: list[str] | None = None,
    labels: list[str] | None = None,
    at: str = "2026-05-01T10:00:00",
    subject: str | None = None,
    thread: int | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"Hello there,\nshall we meet next week?\n",
    charset: str = "utf-8",
):
    """A SimMessage for the Gmail simulator with RFC 822 headers."""
    import email.utils

    from connectors.simulators.model import SimMessage

    when = ts(at)
    headers = [("From", sender), ("To", ", ".join(to))]
    if cc:
        headers.append(("Cc", ", ".join(cc)))
    headers += [
        ("Subject", subject or f"Message {n}"),
        ("Date", email.utils.format_datetime(when)),
        ("Message-ID", f"<msg-{n}@test.example>"),
        *(extra or []),
        ("Content-Type", f'text/plain; charset="{charset}"'),
    ]
    return SimMessage(
        id=f"{n:016x}",
        thread_id=f"{(thread or n):016x}",
        internal_date_ms=int(when.timestamp() * 1000),
        label_ids=labels or ["INBOX"],
        headers=headers,
        body=body,
        snippet=body[:60].decode("utf-8", "replace"),
    )


# ---------------------------------------------------------------- whole-pipeline helpers
CLIENT_ID, CLIENT_SECRET = "rapport-test", "secret"


def refresh_token(email: str) -> str:
    return "rt-" + email.split("@")[0]


def connect(home, sim, email: str, *, aliases: list[str] | None = None, name: str | None = None):
    """Create a simulator user (if new) and register it as an account, as a user would."""
    from flows.cli import add_account

    try:
        sim.mailbox(email)
    except KeyError:
        sim.add_user(
            email,
            aliases=aliases or [],
            refresh_token=refresh_token(email),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
    return add_account(
        home,
        provider="google",
        email=email,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=refresh_token(email),
        api_endpoint=sim.root_url,
        token_uri=sim.token_uri,
        aliases=aliases or [],
        name=name,
    )


def connect_microsoft(home, sim, email: str, *, tenant: str = "acme"):
    """A Microsoft simulator user, registered as an account (as `connect` does for
    Google). Returns the user's mailbox."""
    from flows.cli import add_account

    token = f"rt-{email.split('@')[0]}"
    box = sim.add_user(
        email, tenant=tenant, refresh_token=token, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    add_account(
        home,
        provider="microsoft",
        email=email,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=token,
        tenant=tenant,
        authority=sim.authority_url(tenant),
        graph_endpoint=sim.graph_url,
    )
    return box


def run_pipeline(home, as_of: datetime = AS_OF, validate: bool = True):
    """Everything sync_workspace does, without the Prefect wrapper (for fast property tests)."""
    from flows.engine import (
        STREAMS_BY_PROVIDER,
        apply_blocklist_changes,
        build_and_publish,
        extract_stream,
        new_run_id,
        record_stream_results,
    )

    apply_blocklist_changes(home)
    ws = home.load()
    results = [
        extract_stream(home, a.account_id, s)
        for a in ws.active_accounts()
        for s in STREAMS_BY_PROVIDER[a.provider]
    ]
    record_stream_results(home, results)
    out = build_and_publish(home, new_run_id(), as_of, results, datetime.now(UTC), validate)
    return results, out


SNAPSHOT_SKIP = {
    "sync_runs": None,
    "accounts": ["last_synced_at", "connected_at"],
    # Build bookkeeping: which lake files (compaction renames them) and which path ran.
    "_rapport_lake_files": None,
    "_rapport_build": ["mode", "state"],  # (state: an id per run)
    # A cache of parsed display names: an incremental run keeps names no record uses
    # any more, a full build has only the names in use. No output depends on the extras.
    "_rapport_name_parts": None,
    # Likewise the domains looked up: an incremental run keeps those no address uses.
    "_rapport_domain_info": None,
}


def snapshot(warehouse: Path) -> dict[str, pl.DataFrame]:
    """Every published table, sorted, minus run bookkeeping (times of the run itself);
    with the state tables of the file's generation of state files. The generation's
    copies of the mirrored tables must equal the file's (they are what the next run
    starts from)."""
    import duckdb

    from warehouse.state import MIRRORED_TABLES, STATE_TABLES, read_generation

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables ORDER BY 1"
            ).fetchall()
        ]
        [(generation,)] = con.execute("SELECT state FROM _rapport_build").fetchall()
        tables = {name: con.sql(f'SELECT * FROM "{name}"').pl() for name in names}
        kept = read_generation(warehouse, generation)
        tables |= {name: kept[name] for name in STATE_TABLES}
        out = {
            name: _comparable(name, df)
            for name, df in sorted(tables.items())
            if not (name in SNAPSHOT_SKIP and SNAPSHOT_SKIP[name] is None)
        }
        assert_same_warehouse(
            {name: out[name] for name in sorted(MIRRORED_TABLES)},
            {name: _comparable(name, kept[name]) for name in sorted(MIRRORED_TABLES)},
        )
        return out
    finally:
        con.close()


def _comparable(name: str, df: pl.DataFrame) -> pl.DataFrame:
    """A table sorted, in UTC, without the columns SNAPSHOT_SKIP leaves out."""
    df = df.drop([c for c in SNAPSHOT_SKIP.get(name) or [] if c in df.columns])
    # Recipient lists carry no order (see transforms.pipeline.messages_table).
    df = df.with_columns(
        pl.col(c).list.sort() for c, t in df.schema.items() if t == pl.List(pl.String)
    )
    df = df.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))
    sortable = [c for c, t in df.schema.items() if not isinstance(t, pl.List)]
    return df.sort(sortable, nulls_last=True) if sortable else df


def assert_same_warehouse(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    from polars.testing import assert_frame_equal

    assert a.keys() == b.keys()
    for name in a:
        try:
            assert_frame_equal(a[name], b[name], check_exact=False, rtol=1e-9)
        except AssertionError as exc:
            raise AssertionError(f"table {name} differs:\n{a[name]}\n{b[name]}\n{exc}") from None
