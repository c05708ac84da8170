"""The Outlook mail and calendar connectors against the Microsoft simulator.

Real msal (token refresh through the simulator's authority) and real requests over
loopback HTTP; what lands is read back from the lake's Parquet files.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from connectors import lake
from connectors.graph import GraphCalendarSync, GraphMailSync, GraphSettings
from connectors.mailparse import Blocklist
from connectors.retry import AuthFailure, RetryPolicy
from connectors.simulators.microsoft import GraphMailbox, MicrosoftSimulator
from connectors.simulators.model import SimAttendee, SimEvent, SimMessage
from transforms.current import latest_versions

ALICE = "alice@contoso.com"
ALIASES = ["a.smith@contoso.com", "alice@contoso.onmicrosoft.com"]
RT = "rt-alice-initial"
CLIENT_SECRET = "s3cret-value"
SECRETS = {"client_id": "rapport-app", "client_secret": CLIENT_SECRET, "refresh_token": RT}
ACCOUNT = "ms-alice"
JAN5 = int(datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
DAY = 24 * HOUR
WEEK = 7 * DAY
FAST = RetryPolicy(attempts=5, base_s=0.01, cap_s=0.05)


def make_msg(i: int, *, sent: bool = False, other: str | None = None) -> SimMessage:
    other = other or f"contact{i}@fabrikam.com"
    frm, to = (f"Alice Smith <{ALICE}>", f"Contact {i} <{other}>")
    if not sent:
        frm, to = to, f"Alice Smith <{ALICE}>"
    headers = [
        ("From", frm),
        ("To", to),
        ("Cc", "Carol <carol@example.org>"),
        ("Subject", f"Message {i}"),
        ("Date", "Mon, 05 Jan 2026 10:00:00 +0100"),
        ("Message-ID", f"<{'s' if sent else 'm'}{i}@fabrikam.com>"),
    ]
    if i == 4:
        headers.append(("List-Id", "<news.fabrikam.com>"))
    return SimMessage(
        id=f"{'s' if sent else 'm'}{i:04d}",
        thread_id=f"conv{i}",
        internal_date_ms=JAN5 + i * 60_000,
        label_ids=["SENT"] if sent else ["INBOX"],
        headers=headers,
        body=f"Body of message {i}".encode(),
    )


def moved_to_sent(msg: SimMessage) -> SimMessage:
    moved = copy.deepcopy(msg)
    moved.label_ids = ["SENT"]
    return moved


@pytest.fixture
def sim() -> Iterator[MicrosoftSimulator]:
    with MicrosoftSimulator() as s:
        yield s


@pytest.fixture
def box(sim: MicrosoftSimulator) -> GraphMailbox:
    return sim.add_user(
        ALICE,
        tenant="contoso",
        aliases=ALIASES,
        refresh_token=RT,
        client_secret=CLIENT_SECRET,
        display_name="Alice Smith",
    )


def settings(sim: MicrosoftSimulator) -> GraphSettings:
    # A small page size so every sync follows several nextLinks.
    return GraphSettings(
        authority=sim.authority_url("contoso"),
        graph_endpoint=sim.graph_url,
        retry=FAST,
        timeout_s=10,
        page_size=3,
        calendar_page_size=3,
    )


def mail_sync(
    root: Path, sim: MicrosoftSimulator, blocklist: Blocklist | None = None, **kw
) -> GraphMailSync:
    return GraphMailSync(
        lake_dir=root / "lake",
        account_id=ACCOUNT,
        secrets=SECRETS,
        settings=settings(sim),
        blocklist=blocklist or Blocklist([]),
        **kw,
    )


def cal_sync(
    root: Path, sim: MicrosoftSimulator, blocklist: Blocklist | None = None
) -> GraphCalendarSync:
    return GraphCalendarSync(
        lake_dir=root / "lake",
        account_id=ACCOUNT,
        secrets=SECRETS,
        settings=settings(sim),
        blocklist=blocklist or Blocklist([]),
    )


def raw(root: Path, table: str) -> pl.DataFrame:
    files = lake.glob(root / "lake", table, [ACCOUNT])
    assert files, f"nothing landed in {table}"
    return pl.read_parquet(files, hive_partitioning=False)


def current(root: Path, table: str = "messages", key: str = "message_id") -> pl.DataFrame:
    """Downstream dedup: latest version per id, deletes dropped."""
    latest = latest_versions(raw(root, table).lazy(), ["account_id", key]).collect()
    return latest.filter(pl.col("op") == "upsert")


def labels_by_id(frame: pl.DataFrame) -> dict[str, list[str]]:
    return {r["message_id"]: list(r["labels"]) for r in frame.iter_rows(named=True)}


def changes_since(root: Path, version: int) -> set[tuple[str, str, tuple[str, ...]]]:
    rows = raw(root, "messages").filter(pl.col("version") > version)
    out = {(r["message_id"], r["op"], tuple(r["labels"])) for r in rows.iter_rows(named=True)}
    assert len(out) == rows.height, "a change landed twice"
    return out


def max_version(root: Path, table: str = "messages") -> int:
    return int(raw(root, table)["version"].max())


def delta_requests(sim: MicrosoftSimulator, since: int = 0) -> list:
    return [r for r in sim.requests[since:] if "delta" in r.path]


# ---------------------------------------------------------------- mail
def test_full_sync_then_delta_lands_exactly_the_changes(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    inbox = [make_msg(i) for i in range(1, 7)]
    for m in [*inbox, *(make_msg(i, sent=True) for i in range(1, 5))]:
        box.add_message(m)

    res = mail_sync(tmp_path, sim).run(None)
    assert (res.mode, res.landed, res.deleted, res.quarantined) == ("full", 10, 0, 0)
    assert res.provider_total == 10
    assert res.aliases == [ALICE, *ALIASES]
    assert set(res.cursor) == {"inbox", "sentitems"}
    for link in res.cursor.values():
        assert link.startswith(sim.graph_url + "/me/mailFolders(") and "$deltatoken=" in link

    cur = current(tmp_path)
    assert labels_by_id(cur) == {
        **{f"m{i:04d}": ["INBOX"] for i in range(1, 7)},
        **{f"s{i:04d}": ["SENT"] for i in range(1, 5)},
    }
    m1 = cur.filter(pl.col("message_id") == "m0001").row(0, named=True)
    assert m1["provider"] == "microsoft" and m1["stream"] == "outlook_mail"
    assert m1["thread_id"] == "conv1" and m1["rfc_message_id"] == "<m1@fabrikam.com>"
    assert m1["sent_at"] == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert m1["subject"] == "Message 1" and m1["body_text"] == "Body of message 1"
    assert m1["snippet"] == "Body of message 1"
    m4 = cur.filter(pl.col("message_id") == "m0004").row(0, named=True)
    assert m4["list_id"] == "<news.fabrikam.com>"

    parts = raw(tmp_path, "participants").join(
        cur.select("account_id", "message_id", "version"),
        on=["account_id", "message_id", "version"],
        how="semi",
    )
    assert parts["message_id"].n_unique() == 10
    got = {
        (r["role"], r["address"], r["name"])
        for r in parts.filter(pl.col("message_id") == "s0002").iter_rows(named=True)
    }
    assert got == {
        ("from", ALICE, "Alice Smith"),
        ("to", "contact2@fabrikam.com", "Contact 2"),
        ("cc", "carol@example.org", "Carol"),
    }

    # Delta: two new inbox mails, one new sent mail, a move inbox -> sent, two deletes.
    v0 = max_version(tmp_path)
    seen = len(sim.requests)
    box.add_message(make_msg(7))
    box.add_message(make_msg(8))
    box.add_message(make_msg(5, sent=True))
    box.add_message(moved_to_sent(inbox[0]))
    box.delete_message("m0002")
    box.delete_message("s0001")

    res2 = mail_sync(tmp_path, sim).run(res.cursor)
    assert (res2.mode, res2.landed, res2.deleted) == ("incremental", 4, 2)
    assert changes_since(tmp_path, v0) == {
        ("m0007", "upsert", ("INBOX",)),
        ("m0008", "upsert", ("INBOX",)),
        ("s0005", "upsert", ("SENT",)),
        ("m0001", "upsert", ("SENT",)),  # the move: no delete row for it
        ("m0002", "delete", ()),
        ("s0001", "delete", ()),
    }
    assert labels_by_id(current(tmp_path))["m0001"] == ["SENT"]
    assert sorted(current(tmp_path)["message_id"]) == sorted(box.message_ids)
    # The stored links were followed verbatim: no initial query options were re-sent.
    first = [r for r in delta_requests(sim, seen) if "$deltatoken" in r.query]
    assert len(first) == 2 and all("$select" not in r.query for r in first)


def test_replayed_items_do_not_duplicate(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    for i in range(1, 7):
        box.add_message(make_msg(i))
    sim.inject_fault("replay", count=2)  # the first two delta pages repeat their items
    res = mail_sync(tmp_path, sim).run(None)
    assert res.landed == 6
    assert not sim._faults  # both replays were served
    rows = raw(tmp_path, "messages")
    assert rows.height == 6 and rows["message_id"].n_unique() == 6
    assert raw(tmp_path, "participants").height == 6 * 3  # from, to, cc once each

    v0 = max_version(tmp_path)
    box.add_message(make_msg(7))
    box.delete_message("m0003")
    sim.inject_fault("replay", count=1)
    res2 = mail_sync(tmp_path, sim).run(res.cursor)
    assert not sim._faults
    assert (res2.landed, res2.deleted) == (1, 1)
    assert changes_since(tmp_path, v0) == {
        ("m0007", "upsert", ("INBOX",)),
        ("m0003", "delete", ()),
    }
    cur = current(tmp_path)
    assert cur.height == cur["message_id"].n_unique() == 6
    assert sorted(cur["message_id"]) == sorted(box.message_ids)


@pytest.mark.parametrize("answer", ["410", "syncStateNotFound"])
def test_expired_delta_resyncs_and_reconciles(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox, answer: str
) -> None:
    inbox = [make_msg(i) for i in range(1, 7)]
    for m in [*inbox, *(make_msg(i, sent=True) for i in range(1, 4))]:
        box.add_message(m)
    res = mail_sync(tmp_path, sim).run(None)
    assert res.landed == 9

    # The gap: deletes, an add and a move happen, then every stored link expires.
    box.delete_message("m0003")
    box.delete_message("s0002")
    box.add_message(make_msg(9))
    box.add_message(moved_to_sent(inbox[0]))
    sim.expire_delta_tokens(ALICE, answer=answer)
    v0 = max_version(tmp_path)
    seen = len(sim.requests)

    res2 = mail_sync(tmp_path, sim).run(res.cursor)
    expired_status = 410 if answer == "410" else 400
    assert [r.status for r in delta_requests(sim, seen)].count(expired_status) == 2
    assert res2.mode == "resync" and res2.deleted == 2
    cur = current(tmp_path)
    assert sorted(cur["message_id"]) == sorted(box.message_ids)
    assert cur.height == cur["message_id"].n_unique()
    assert labels_by_id(cur)["m0001"] == ["SENT"]
    new = raw(tmp_path, "messages").filter(pl.col("version") > v0)
    deletes = new.filter(pl.col("op") == "delete")
    assert sorted(deletes["message_id"]) == ["m0003", "s0002"]
    upserts = new.filter(pl.col("op") == "upsert")
    assert sorted(upserts["message_id"]) == sorted(box.message_ids)  # each listed id once

    # The fresh links work: a follow-up run is a quiet incremental.
    res3 = mail_sync(tmp_path, sim).run(res2.cursor)
    assert (res3.mode, res3.landed, res3.deleted) == ("incremental", 0, 0)


def test_429_waits_at_least_retry_after(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    for i in range(1, 4):
        box.add_message(make_msg(i))
    sim.inject_fault("429", retry_after="0.3", path_contains="/messages/delta")
    res = mail_sync(tmp_path, sim).run(None)
    assert res.landed == 3 and res.retries == 1
    reqs = sim.requests
    i = next(n for n, r in enumerate(reqs) if r.status == 429)
    retry = reqs[i + 1]
    assert retry.path == reqs[i].path and retry.status == 200
    assert retry.at - reqs[i].at >= 0.3


def test_token_refresh_goes_through_the_simulator_authority(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    for i in range(1, 8):
        box.add_message(make_msg(i))

    def expire_once(done: int, total: int | None) -> None:
        if done and not any(r.status == 401 for r in sim.requests):
            sim.expire_access_tokens(ALICE)  # the next Graph call gets a 401

    sync = mail_sync(tmp_path, sim, progress=expire_once)
    res = sync.run(None)
    assert res.landed == 7
    assert any(
        r.method == "GET" and r.path == "/contoso/v2.0/.well-known/openid-configuration"
        for r in sim.requests
    )
    posts = [r for r in sim.requests if r.path == "/contoso/oauth2/v2.0/token"]
    # One redemption of the stored refresh token, one more after the 401.
    assert [(r.method, r.status, r.user) for r in posts] == [("POST", 200, ALICE)] * 2
    assert [r.status for r in sim.requests].count(401) == 1
    graph = [r for r in sim.requests if r.path.startswith("/v1.0/")]
    assert graph and all(r.user == ALICE for r in graph if r.status != 401)
    # The simulator rotates refresh tokens; the caller can persist the new one.
    assert sync.client.new_refresh_token and sync.client.new_refresh_token != RT


def test_revoked_refresh_token_is_auth_failure(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    box.add_message(make_msg(1))
    sim.revoke_refresh_token(ALICE)
    with pytest.raises(AuthFailure) as failure:
        mail_sync(tmp_path, sim).run(None)
    text = str(failure.value)
    assert "invalid_grant" in text
    assert RT not in text and CLIENT_SECRET not in text
    assert not any(r.path.startswith("/v1.0/") for r in sim.requests)
    assert not lake.glob(tmp_path / "lake", "messages", [ACCOUNT])


# ---------------------------------------------------------------- calendar
def _hour(dt: datetime) -> int:
    return int(dt.replace(minute=0, second=0, microsecond=0).timestamp() * 1000)


def test_calendar_series_occurrences_then_cancel_one(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    start = _hour(datetime.now(UTC) + timedelta(days=1))
    box.add_event(
        SimEvent(
            id="series1",
            ical_uid="uid-series1@contoso.com",
            summary="Weekly sync",
            start_ms=start,
            end_ms=start + HOUR // 2,
            organizer_email=ALICE,
            organizer_name="Alice Smith",
            attendees=[
                SimAttendee("bob@fabrikam.com", "Bob", "accepted"),
                SimAttendee("room1@contoso.com", "Room 1", "accepted", resource=True),
            ],
            rrule="FREQ=WEEKLY;COUNT=5",
        )
    )
    box.add_event(
        SimEvent(
            id="single1",
            ical_uid="uid-single1@fabrikam.com",
            summary="Intro call",
            start_ms=start - 2 * DAY,
            end_ms=start - 2 * DAY + HOUR,
            organizer_email="carol@fabrikam.com",
            organizer_name="Carol",
            attendees=[
                SimAttendee("carol@fabrikam.com", "Carol", "accepted", organizer=True),
                SimAttendee(ALICE, "Alice Smith", "tentative"),
            ],
        )
    )
    res = cal_sync(tmp_path, sim).run(None)
    assert (res.mode, res.landed, res.deleted) == ("full", 6, 0)
    assert set(res.cursor) == {"calendar"} and "$deltatoken=" in res.cursor["calendar"]

    events = current(tmp_path, "events", "event_id")
    series = events.filter(pl.col("recurring_event_id") == "series1").sort("starts_at")
    assert series.height == series["event_id"].n_unique() == 5
    assert series["starts_at"].to_list() == [
        datetime.fromtimestamp((start + k * WEEK) / 1000, UTC) for k in range(5)
    ]
    assert set(series["status"]) == {"confirmed"} and set(series["title"]) == {"Weekly sync"}
    assert set(series["provider"]) == {"microsoft"} and set(series["stream"]) == {
        "outlook_calendar"
    }
    single = events.filter(pl.col("event_id") == "single1").row(0, named=True)
    assert single["ical_uid"] == "uid-single1@fabrikam.com" and single["recurring_event_id"] is None
    assert single["ends_at"] - single["starts_at"] == timedelta(hours=1)

    att = raw(tmp_path, "attendees")
    first = series.row(0, named=True)["event_id"]
    assert {
        (r["role"], r["address"], r["response_status"], r["resource"])
        for r in att.filter(pl.col("event_id") == first).iter_rows(named=True)
    } == {
        ("organizer", ALICE, None, False),
        ("attendee", "bob@fabrikam.com", "accepted", False),
        ("attendee", "room1@contoso.com", "accepted", True),
    }
    single_att = att.filter(pl.col("event_id") == "single1")
    assert sorted(zip(single_att["role"], single_att["address"], strict=True)) == [
        ("attendee", ALICE),
        ("organizer", "carol@fabrikam.com"),  # the organizer once
    ]

    v0 = max_version(tmp_path, "events")
    third = start + 2 * WEEK
    box.cancel_occurrence("series1", third)
    res2 = cal_sync(tmp_path, sim).run(res.cursor)
    assert (res2.mode, res2.landed, res2.deleted) == ("incremental", 0, 1)
    new = raw(tmp_path, "events").filter(pl.col("version") > v0)
    cancelled = series.row(2, named=True)["event_id"]
    assert new.select("event_id", "op").rows() == [(cancelled, "delete")]
    assert cancelled.startswith("series1_")
    assert current(tmp_path, "events", "event_id").height == 5


# ---------------------------------------------------------------- privacy
def test_blocklisted_sender_lands_marker_only(
    tmp_path: Path, sim: MicrosoftSimulator, box: GraphMailbox
) -> None:
    bad = "pushy.vendor@spam-corp.example"
    box.add_message(make_msg(1))
    box.add_message(make_msg(2, other=bad))  # from the blocked address
    box.add_message(make_msg(3, sent=True, other=bad))  # to it
    start = _hour(datetime.now(UTC) + timedelta(days=3))
    box.add_event(
        SimEvent(
            id="pitch1",
            ical_uid="uid-pitch1@spam-corp.example",
            summary="Exclusive offer",
            start_ms=start,
            end_ms=start + HOUR,
            organizer_email=bad,
            organizer_name="Pushy Vendor",
            attendees=[SimAttendee(ALICE, "Alice Smith")],
        )
    )
    blocklist = Blocklist([(bad, "address")])

    res = mail_sync(tmp_path, sim, blocklist).run(None)
    assert (res.landed, res.blocked) == (1, 2)
    cal = cal_sync(tmp_path, sim, blocklist).run(None)
    assert (cal.landed, cal.blocked) == (0, 1)

    msgs = raw(tmp_path, "messages")
    markers = msgs.filter(pl.col("blocked"))
    assert sorted(markers["message_id"]) == ["m0002", "s0003"]
    for col in ("subject", "snippet", "body_text", "sent_at", "rfc_message_id"):
        assert markers[col].null_count() == 2
    parts = raw(tmp_path, "participants")
    assert set(parts["message_id"]) == {"m0001"}

    events = raw(tmp_path, "events")
    assert events.select("event_id", "op", "status", "title").rows() == [
        ("pitch1", "upsert", "blocked", None)
    ]
    assert not lake.glob(tmp_path / "lake", "attendees", [ACCOUNT])

    files = sorted((tmp_path / "lake").rglob("*.parquet"))
    assert files
    for path in files:
        assert bad.encode() not in path.read_bytes()
        text = repr(pq.read_table(path).to_pylist())
        for secret in (bad, "Pushy Vendor", "Exclusive offer", "Message 2", "Body of message 3"):
            assert secret not in text, (path.name, secret)
