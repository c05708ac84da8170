"""Land a synthetic workspace into the lake exactly as the Google connectors would.

The connectors (connectors/gmail.py, connectors/gcalendar.py) turn each message into one
MESSAGE_SCHEMA row plus one PARTICIPANT_SCHEMA row per address header entry, and each
calendar item into one EVENT_SCHEMA row plus organizer/attendee rows. Going through the
simulator and the HTTP client costs minutes per million messages, so this module produces
the same rows column-wise with Polars, from the generator's frames:

- messages: provider google, stream gmail, op upsert, blocked false; `sent_at` at the
  second (the Date header has no fractions); `snippet` is the first 100 characters of the
  body (what the simulator serves); `labels` are the Gmail label ids.
- participants: header order (From, To, Cc, Bcc, Reply-To, each in written order), the
  address exactly as written and the display name; Bcc only on mail in SENT (Gmail
  keeps a Bcc header only in the sender's copy, and `to_sim_messages` does the same).
- events: `singleEvents=True` expansion of the weekly series (instance ids
  `<id>_<YYYYMMDDTHHMMSSZ>`, `recurring_event_id`), cancelled occurrences and cancelled
  events left out (a first sync lists with showDeleted=False), the same time window as
  CalendarSync; attendees as `event_people` builds them (organizer first, then each other
  address once).

Each batch (one file per table, ~`chunk_rows` messages per account) gets its own
`version` from `lake.new_version()` and `seq` numbers the message rows inside it, as
`lake.Batch` does. Files are written with `lake.write_parquet_atomic`, participants
before messages.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa

from connectors import lake
from connectors.simulators.synthetic import SyntheticWorkspace
from flows.workspace import Account, Home, Workspace, account_id_for, iso, new_member

TS = pl.Datetime("us", "UTC")
ROLE_RANK = {"from": 0, "to": 1, "cc": 2, "bcc": 3, "reply_to": 4}
SNIPPET_CHARS = 100  # to_sim_messages: snippet = body[:100]
CALENDAR_PAST_DAYS = 3650  # CalendarSync defaults
CALENDAR_FUTURE_DAYS = 365


# ---------------------------------------------------------------- workspace state
def workspace_state(ws: SyntheticWorkspace, connected_at: datetime) -> tuple[Workspace, dict]:
    """Members and one Google account each (with aliases); mailbox -> account_id."""
    state = Workspace()
    accounts: dict[str, str] = {}
    for m in ws.members:
        member = new_member(m.email, m.name)
        state.members.append(member)
        acc = Account(
            account_id=account_id_for("google", m.email),
            member_id=member.member_id,
            provider="google",
            email=m.email.lower(),
            aliases=[a.lower() for a in m.aliases],
            connected_at=iso(connected_at),
        )
        state.accounts.append(acc)
        accounts[m.email] = acc.account_id
    return state, accounts


def setup_home(ws: SyntheticWorkspace, root: Path, connected_at: datetime) -> tuple[Home, dict]:
    """A Home whose workspace.json has the synthetic members and accounts."""
    home = Home(root)
    home.ensure()
    state, accounts = workspace_state(ws, connected_at)
    home.save(state)
    return home, accounts


# ---------------------------------------------------------------- landing
def _arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    return frame.select(schema.names).to_arrow().cast(schema)


def _file_name(version: int) -> str:
    return f"{version:020d}-{uuid.uuid4().hex[:8]}.parquet"


def _message_rows(ws: SyntheticWorkspace, amap: pl.DataFrame, chunk_rows: int) -> pl.DataFrame:
    return (
        ws.messages.join(amap, on="mailbox", how="inner", maintain_order="left")
        .with_columns(pos=pl.int_range(pl.len(), dtype=pl.Int64).over("acc"))
        .with_columns(chunk=pl.col("pos") // chunk_rows)
        .select(
            "acc",
            "chunk",
            "pos",
            "mailbox",
            "account_id",
            provider=pl.lit("google"),
            stream=pl.lit("gmail"),
            message_id="message_id",
            thread_id="thread_id",
            rfc_message_id="rfc_message_id",
            op=pl.lit("upsert"),
            blocked=pl.lit(False),
            sent_at=pl.col("sent_at").dt.truncate("1s"),
            subject="subject",
            snippet=pl.col("body_text").str.slice(0, SNIPPET_CHARS),
            body_text="body_text",
            labels="label_ids",
            list_id="list_id",
            list_unsubscribe="list_unsubscribe",
            precedence="precedence",
            auto_submitted="auto_submitted",
            in_reply_to="in_reply_to",
        )
    )


def _participant_rows(ws: SyntheticWorkspace, msgs: pl.DataFrame) -> pl.DataFrame:
    keys = msgs.select(
        "mailbox",
        "message_id",
        "acc",
        "chunk",
        "pos",
        "account_id",
        sent=pl.col("labels").list.contains("SENT"),
    )
    rows = (
        ws.participants.with_columns(i=pl.int_range(pl.len(), dtype=pl.Int64))
        .join(keys, on=["mailbox", "message_id"], how="inner")
        .filter((pl.col("role") != "bcc") | pl.col("sent"))
        .select(
            "acc",
            "chunk",
            "account_id",
            "message_id",
            "role",
            address="email",
            name="name",
            # Header order: message by message, roles in header order, then as written.
            key=pl.col("acc").cast(pl.Int64) * (1 << 40)
            + pl.col("pos") * 8
            + pl.col("role").replace_strict(ROLE_RANK, return_dtype=pl.Int64),
            i="i",
        )
    )
    order = rows.select(pl.arg_sort_by("key", "i")).to_series()
    return rows.drop("key", "i")[order]


def _event_rows(ws: SyntheticWorkspace, amap: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """singleEvents=True expansion, as the Calendar API lists a first sync."""
    ev = ws.events.join(amap, on="mailbox", how="inner", maintain_order="left").filter(
        pl.col("status") != "cancelled"
    )
    count = pl.col("rrule").str.extract(r"COUNT=(\d+)").cast(pl.Int64)
    interval = pl.col("rrule").str.extract(r"INTERVAL=(\d+)").cast(pl.Int64).fill_null(1)
    week_us = 7 * 86_400 * 1_000_000
    ev = (
        ev.with_columns(
            recurring=pl.col("rrule").is_not_null(),
            k=pl.int_ranges(0, pl.when(pl.col("rrule").is_null()).then(1).otherwise(count)),
            step=interval * week_us,
            duration=pl.col("end_at") - pl.col("start_at"),
        )
        .explode("k")
        .with_columns(
            starts_at=(pl.col("start_at").dt.epoch("us") + pl.col("k") * pl.col("step")).cast(TS)
        )
        .filter(~pl.col("cancelled_occurrences").list.contains(pl.col("starts_at")))
        .with_columns(ends_at=pl.col("starts_at") + pl.col("duration"))
        .with_columns(
            # Google's all-day end date is exclusive and after the start.
            ends_at=pl.when(pl.col("all_day") & (pl.col("ends_at") <= pl.col("starts_at")))
            .then(pl.col("starts_at") + pl.duration(days=1))
            .otherwise("ends_at")
        )
    )
    lo = now - timedelta(days=CALENDAR_PAST_DAYS)
    hi = now + timedelta(days=CALENDAR_FUTURE_DAYS)
    ev = ev.filter((pl.col("starts_at") < hi) & (pl.col("ends_at") > lo))
    suffix = (
        pl.when(pl.col("all_day"))
        .then(pl.col("starts_at").dt.strftime("%Y%m%d"))
        .otherwise(pl.col("starts_at").dt.strftime("%Y%m%dT%H%M%SZ"))
    )
    return ev.with_columns(pos=pl.int_range(pl.len(), dtype=pl.Int64).over("acc")).select(
        "acc",
        "pos",
        "mailbox",
        "account_id",
        src_id="event_id",
        organizer_email="organizer_email",
        organizer_name="organizer_name",
        provider=pl.lit("google"),
        stream=pl.lit("gcalendar"),
        event_id=pl.when("recurring")
        .then(pl.concat_str("event_id", pl.lit("_"), suffix))
        .otherwise("event_id"),
        ical_uid="ical_uid",
        op=pl.lit("upsert"),
        status=pl.lit("confirmed"),
        title="summary",
        starts_at="starts_at",
        ends_at="ends_at",
        all_day="all_day",
        recurring_event_id=pl.when("recurring").then("event_id"),
    )


def _attendee_rows(ws: SyntheticWorkspace, events: pl.DataFrame) -> pl.DataFrame:
    """connectors.gcalendar.event_people: the organizer once, then every other address once."""
    att = ws.attendees.with_columns(
        idx=pl.int_range(pl.len(), dtype=pl.Int64), low=pl.col("email").str.to_lowercase()
    )
    keys = events.select(
        "acc",
        "pos",
        "mailbox",
        "account_id",
        "event_id",
        src_id="src_id",
        org=pl.col("organizer_email"),
        org_low=pl.col("organizer_email").str.to_lowercase(),
        org_name="organizer_name",
    )
    src = keys.select("mailbox", "src_id", "org_low").unique(["mailbox", "src_id"])
    entry = (
        att.join(src, left_on=["mailbox", "event_id"], right_on=["mailbox", "src_id"])
        .filter(pl.col("low") == pl.col("org_low"))
        .sort("idx")
        .unique(["mailbox", "event_id"], keep="first")
        .select("mailbox", src_id="event_id", entry_name="name", entry_status="response_status")
    )
    organizers = (
        keys.join(entry, on=["mailbox", "src_id"], how="left")
        .filter(pl.col("org").is_not_null())
        .select(
            "acc",
            "pos",
            "account_id",
            "event_id",
            k=pl.lit(-1, dtype=pl.Int64),
            role=pl.lit("organizer"),
            address="org",
            name=pl.coalesce(
                pl.when(pl.col("org_name") != "").then("org_name"),
                pl.when(pl.col("entry_name") != "").then("entry_name"),
            ),
            response_status="entry_status",
        )
    )
    others = (
        att.filter(pl.col("email").str.strip_chars() != "")
        .join(src, left_on=["mailbox", "event_id"], right_on=["mailbox", "src_id"])
        .filter(pl.col("low") != pl.col("org_low").fill_null(""))
        .sort("idx")
        .unique(["mailbox", "event_id", "low"], keep="first", maintain_order=True)
        .select(
            "mailbox",
            "idx",
            src_id="event_id",
            address=pl.col("email").str.strip_chars(),
            name=pl.when(pl.col("name") != "").then("name"),
            response_status="response_status",
        )
    )
    attendees = keys.join(others, on=["mailbox", "src_id"]).select(
        "acc",
        "pos",
        "account_id",
        "event_id",
        k="idx",
        role=pl.lit("attendee"),
        address="address",
        name="name",
        response_status="response_status",
    )
    return (
        pl.concat([organizers, attendees])
        .sort(["acc", "pos", "k"])
        .with_columns(resource=pl.lit(False))
    )


def land_workspace(
    ws: SyntheticWorkspace,
    lake_dir: Path,
    accounts: dict[str, str],
    *,
    chunk_rows: int = 200_000,
    now: datetime | None = None,
    calendars: bool = True,
    threads: int = 2,
) -> dict[str, int]:
    """Write the workspace's mail (and calendars) into the lake; returns rows per table.

    `accounts` maps a mailbox (the member's address) to its account id. Messages of one
    account are cut into batches of `chunk_rows`; every batch is a (participants,
    messages) pair of files with one version, like a connector flush.
    """
    now = now or datetime.now(UTC)
    amap = pl.DataFrame(
        {"mailbox": list(accounts), "account_id": list(accounts.values())},
        schema={"mailbox": pl.String, "account_id": pl.String},
    ).with_columns(acc=pl.int_range(pl.len(), dtype=pl.Int32))
    msgs = _message_rows(ws, amap, chunk_rows)
    parts = _participant_rows(ws, msgs)
    jobs: list[tuple[str, pl.DataFrame, pl.DataFrame, str]] = []
    part_groups = parts.partition_by(["acc", "chunk"], as_dict=True)
    for key, frame in msgs.partition_by(["acc", "chunk"], as_dict=True).items():
        jobs.append(("messages", frame, part_groups.get(key, parts.clear()), "participants"))
    if calendars and ws.events.height:
        events = _event_rows(ws, amap, now)
        attendees = _attendee_rows(ws, events)
        events = events.with_columns(chunk=pl.col("pos") // chunk_rows)
        attendees = attendees.join(
            events.select("acc", "event_id", "chunk"), on=["acc", "event_id"]
        )
        att_groups = attendees.partition_by(["acc", "chunk"], as_dict=True)
        for key, frame in events.partition_by(["acc", "chunk"], as_dict=True).items():
            jobs.append(("events", frame, att_groups.get(key, attendees.clear()), "attendees"))

    fetched_at = pl.lit(now, dtype=TS)
    counts = {"messages": 0, "participants": 0, "events": 0, "attendees": 0}

    def write(job: tuple[str, pl.DataFrame, pl.DataFrame, str], version: int) -> None:
        main, frame, children, child_table = job
        account_id = frame["account_id"][0]
        name = _file_name(version)
        child = children.with_columns(version=pl.lit(version, dtype=pl.Int64))
        if child.height:
            lake.write_parquet_atomic(
                _arrow(child, lake.TABLES[child_table]),
                lake.account_dir(lake_dir, child_table, account_id) / name,
            )
        rows = frame.with_columns(
            version=pl.lit(version, dtype=pl.Int64),
            seq=pl.int_range(pl.len(), dtype=pl.Int32),
            fetched_at=fetched_at,
        )
        rows = rows.with_columns(lake.content_hashes(main, rows, child))  # (as lake.flush)
        # Messages (and events) last: readers pick children by (id, version).
        lake.write_parquet_atomic(
            _arrow(rows, lake.TABLES[main]), lake.account_dir(lake_dir, main, account_id) / name
        )

    versions = [lake.new_version() for _ in jobs]  # in landing order, like successive flushes
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(write, jobs, versions))
    for main, frame, children, child_table in jobs:
        counts[main] += frame.height
        counts[child_table] += children.height
    return counts


def _shares(accounts: dict[str, str], n: int) -> list[tuple[str, int]]:
    """(account_id, how many of `n`) for each account with a share: `n` spread evenly."""
    ids = list(accounts.values())
    shares = [(a, n // len(ids) + (i < n % len(ids))) for i, a in enumerate(ids)]
    return [(a, k) for a, k in shares if k]


def reland_messages(
    lake_dir: Path, accounts: dict[str, str], n: int, *, label: str, now: datetime, seed: int = 7
) -> dict[str, int]:
    """Land `n` already landed messages again with `label` added, as a connector does when
    a label or the read state changes at the provider: same content and participants, a
    new version and fetch time. Returns rows per table."""
    counts = {"messages": 0, "participants": 0}
    for account_id, share in _shares(accounts, n):
        msgs = pl.read_parquet(lake.glob(lake_dir, "messages", [account_id]))
        if msgs.is_empty():
            continue
        msgs = msgs.sample(min(share, msgs.height), seed=seed)
        version = lake.new_version()
        key = ["account_id", "message_id", "version"]
        parts = pl.read_parquet(lake.glob(lake_dir, "participants", [account_id])).join(
            msgs.select(key), on=key, how="semi", maintain_order="left"
        )
        parts = parts.with_columns(version=pl.lit(version, pl.Int64))
        name = _file_name(version)
        lake.write_parquet_atomic(
            _arrow(parts, lake.PARTICIPANT_SCHEMA),
            lake.account_dir(lake_dir, "participants", account_id) / name,
        )
        rows = msgs.with_columns(
            labels=pl.col("labels").list.concat(pl.lit([label])),
            version=pl.lit(version, pl.Int64),
            seq=pl.int_range(pl.len(), dtype=pl.Int32),
            fetched_at=pl.lit(now, dtype=TS),
        )
        rows = rows.with_columns(lake.content_hashes("messages", rows, parts))
        lake.write_parquet_atomic(
            _arrow(rows, lake.MESSAGE_SCHEMA),
            lake.account_dir(lake_dir, "messages", account_id) / name,
        )
        counts["messages"] += rows.height
        counts["participants"] += parts.height
    return counts


def land_deletes(
    lake_dir: Path, accounts: dict[str, str], n: int, *, seed: int = 11
) -> dict[str, int]:
    """Deletes of `n` landed messages (spread over the accounts), one batch per account,
    as a connector lands a provider's deletes. Returns rows per table."""
    count = 0
    for account_id, share in _shares(accounts, n):
        files = lake.glob(lake_dir, "messages", [account_id])
        if not files:
            continue
        ids = pl.read_parquet(files, columns=["message_id"])["message_id"].unique()
        batch = lake.Batch(account_id)
        for message_id in ids.sample(min(share, ids.len()), seed=seed).sort():
            row = {"provider": "google", "stream": "gmail", "message_id": message_id}
            batch.add("messages", {**row, "op": "delete", "blocked": False, "labels": []})
        lake.flush(lake_dir, batch)
        count += batch.count("messages")
    return {"messages": count, "participants": 0}


def change_events(
    lake_dir: Path, accounts: dict[str, str], n: int, *, now: datetime, seed: int = 13
) -> dict[str, int]:
    """Change `n` landed meetings (spread over the accounts), as a calendar sync lands
    them: every other one moved a day later (landed again, attendees included), the
    rest cancelled (a delete). Returns rows per table."""
    counts = {"events": 0, "attendees": 0}
    key = ["account_id", "event_id", "version"]
    for account_id, share in _shares(accounts, n):
        files = lake.glob(lake_dir, "events", [account_id])
        if not files:
            continue
        events = (
            pl.read_parquet(files)
            .sort("version", "seq")
            .unique(["event_id"], keep="last")
            .filter((pl.col("op") == "upsert") & (pl.col("status") == "confirmed"))
        )
        events = events.sample(min(share, events.height), seed=seed).sort("event_id")
        attendees = pl.read_parquet(lake.glob(lake_dir, "attendees", [account_id])).join(
            events.select(key), on=key, how="semi", maintain_order="left"
        )
        batch = lake.Batch(account_id, fetched_at=now)
        day = timedelta(days=1)
        for i, event in enumerate(events.iter_rows(named=True)):
            ids = ("provider", "stream", "event_id", "ical_uid", "recurring_event_id")
            row = {c: event[c] for c in ids}
            if i % 2:
                batch.add("events", {**row, "op": "delete", "status": "cancelled"})
                continue
            kept = {c: event[c] for c in ("op", "status", "title", "all_day")}
            moved = {"starts_at": event["starts_at"] + day, "ends_at": event["ends_at"] + day}
            batch.add("events", {**row, **kept, **moved})
            of_event = attendees.filter(
                (pl.col("event_id") == event["event_id"]) & (pl.col("version") == event["version"])
            )
            for person in of_event.drop("account_id", "event_id", "version").iter_rows(named=True):
                batch.add("attendees", {"event_id": event["event_id"], **person})
        written = lake.flush(lake_dir, batch)
        for table in counts:
            counts[table] += written.get(table, 0)
    return counts
