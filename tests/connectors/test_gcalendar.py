"""Google Calendar: the connector through the real client library against the simulator."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from connectors import gcalendar, lake
from connectors.gcalendar import CalendarSync
from connectors.gmail import GmailSettings
from connectors.mailparse import Blocklist
from connectors.retry import AuthFailure, RetryPolicy
from connectors.simulators.gcalendar import CalendarStore, calendar_store, install_calendar
from connectors.simulators.google import GoogleSimulator
from connectors.simulators.model import SimAttendee, SimEvent

ALICE = "alice@acme-team.io"
ACCOUNT = "g-alice"
SECRETS = {"refresh_token": "rt-alice", "client_id": "rapport-test", "client_secret": "secret"}
HOUR = 3_600_000
DAY = 24 * HOUR
# A week ahead of today, 10:00 UTC: inside the default window whatever the clock says.
T0 = (int(time.time() * 1000) // DAY + 7) * DAY + 10 * HOUR
EVENTS_PATH = "/calendar/v3/calendars/primary/events"


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def suffix(ms: int) -> str:
    return utc(ms).strftime("%Y%m%dT%H%M%SZ")


def single(eid: str, start: int, **kw) -> SimEvent:
    kw.setdefault("organizer_email", ALICE)
    kw.setdefault("summary", f"Meeting {eid}")
    kw.setdefault("attendees", [SimAttendee("carol@globex.com", "Carol", "accepted")])
    return SimEvent(
        id=eid, ical_uid=f"uid-{eid}@google.com", start_ms=start, end_ms=start + HOUR, **kw
    )


def weekly(eid: str = "series1", count: int = 4) -> SimEvent:
    return SimEvent(
        id=eid,
        ical_uid=f"uid-{eid}@google.com",
        summary="Weekly sync",
        start_ms=T0 + DAY,
        end_ms=T0 + DAY + HOUR,
        organizer_email="bob@globex.com",
        organizer_name="Bob",
        attendees=[
            SimAttendee("bob@globex.com", "Bob", "accepted", organizer=True),
            SimAttendee(ALICE, "Alice", "tentative"),
            SimAttendee("room-1@resource.calendar.google.com", "Room 1", "accepted", resource=True),
        ],
        rrule=f"FREQ=WEEKLY;COUNT={count}",
    )


@pytest.fixture()
def sim():
    with GoogleSimulator() as s:
        install_calendar(s)
        s.add_user(ALICE, refresh_token="rt-alice", display_name="Alice")
        yield s


@pytest.fixture()
def cal(sim) -> CalendarStore:
    return calendar_store(sim, ALICE)


def make_sync(sim: GoogleSimulator, tmp_path: Path, *, blocked=(), **kw) -> CalendarSync:
    settings = GmailSettings(
        api_endpoint=sim.root_url,
        token_uri=sim.token_uri,
        quota_units_per_second=None,
        timeout_s=10,
        retry=RetryPolicy(attempts=6, base_s=0.01, cap_s=0.05),
    )
    return CalendarSync(
        lake_dir=tmp_path / "lake",
        account_id=ACCOUNT,
        secrets=SECRETS,
        settings=settings,
        blocklist=Blocklist(blocked),
        **kw,
    )


def rows(tmp_path: Path, table: str) -> pl.DataFrame:
    files = lake.glob(tmp_path / "lake", table, [ACCOUNT])
    if not files:
        return pl.from_arrow(lake.TABLES[table].empty_table())
    return pl.read_parquet(files, hive_partitioning=False)


def current(tmp_path: Path) -> pl.DataFrame:
    """The latest version of each event id (what the transforms see)."""
    return (
        rows(tmp_path, "events")
        .sort("version", "seq")
        .unique(subset="event_id", keep="last", maintain_order=True)
    )


def live(tmp_path: Path) -> pl.DataFrame:
    return current(tmp_path).filter(pl.col("op") == "upsert").sort("starts_at", "event_id")


def calendar_requests(sim: GoogleSimulator):
    return [r for r in sim.requests if r.path.startswith("/calendar/")]


# ---------------------------------------------------------------- full sync


def test_full_sync_lands_singles_and_each_occurrence(tmp_path, sim, cal):
    cal.add_event(single("lunch", T0))
    cal.add_event(single("past", T0 - 400 * DAY))
    cal.add_event(weekly())
    cal.add_event(single("far", T0 + 500 * DAY))  # beyond the 365-day future window
    cal.add_event(single("gone", T0 + 2 * HOUR, status="cancelled"))
    res = make_sync(sim, tmp_path).run(None)

    assert res.mode == "full" and (res.landed, res.deleted, res.blocked) == (6, 0, 0)
    assert res.cursor == {"sync_token": cal.sync_token()}
    cur = live(tmp_path)
    assert len(cur) == 6 and cur["event_id"].n_unique() == 6
    series = cur.filter(pl.col("recurring_event_id") == "series1")
    assert series["event_id"].to_list() == [
        f"series1_{suffix(T0 + DAY + k * 7 * DAY)}" for k in range(4)
    ]
    assert series["ical_uid"].unique().to_list() == ["uid-series1@google.com"]
    assert series["starts_at"].to_list() == [utc(T0 + DAY + k * 7 * DAY) for k in range(4)]
    assert series["ends_at"].to_list() == [utc(T0 + DAY + HOUR + k * 7 * DAY) for k in range(4)]
    assert set(series["status"]) == {"confirmed"} and set(series["all_day"]) == {False}
    lunch = cur.filter(pl.col("event_id") == "lunch").row(0, named=True)
    assert lunch["title"] == "Meeting lunch" and lunch["recurring_event_id"] is None
    assert (lunch["provider"], lunch["stream"]) == ("google", "gcalendar")
    assert "far" not in cur["event_id"].to_list() and "gone" not in cur["event_id"].to_list()

    # The organizer appears once, as organizer, though also listed as an attendee.
    att = rows(tmp_path, "attendees").filter(pl.col("event_id") == series["event_id"][0])
    got = sorted(att.select("role", "address", "name", "response_status", "resource").rows())
    assert got == [
        ("attendee", ALICE, "Alice", "tentative", False),
        ("attendee", "room-1@resource.calendar.google.com", "Room 1", "accepted", True),
        ("organizer", "bob@globex.com", "Bob", "accepted", False),
    ]
    first = calendar_requests(sim)[0].query
    assert first["singleEvents"] == ["true"] and first["showDeleted"] == ["false"]
    assert first["maxResults"] == ["2500"]
    lo, hi = (datetime.fromisoformat(first[k][0]) for k in ("timeMin", "timeMax"))
    assert timedelta(days=3649) < datetime.now(UTC) - lo < timedelta(days=3651)
    assert timedelta(days=364) < hi - datetime.now(UTC) < timedelta(days=366)


def test_all_day_events(tmp_path, sim, cal):
    midnight = T0 - 10 * HOUR
    cal.add_event(single("offsite", midnight, all_day=True))
    cal.update_event(
        SimEvent(
            id="offsite",
            ical_uid="uid-offsite@google.com",
            summary="Offsite",
            start_ms=midnight,
            end_ms=midnight + 2 * DAY,
            organizer_email=ALICE,
            all_day=True,
        )
    )
    cal.add_event(
        SimEvent(
            id="holiday",
            ical_uid="uid-holiday",
            summary="Holiday",
            start_ms=midnight + 10 * DAY,
            end_ms=midnight + 11 * DAY,
            organizer_email=ALICE,
            all_day=True,
            rrule="FREQ=DAILY;COUNT=2",
        )
    )
    res = make_sync(sim, tmp_path).run(None)
    assert res.landed == 3
    cur = live(tmp_path)
    assert set(cur["all_day"]) == {True}
    off = cur.filter(pl.col("event_id") == "offsite").row(0, named=True)
    assert (off["starts_at"], off["ends_at"]) == (utc(midnight), utc(midnight + 2 * DAY))
    assert off["title"] == "Offsite"
    day = utc(midnight + 10 * DAY).strftime("%Y%m%d")
    next_day = utc(midnight + 11 * DAY).strftime("%Y%m%d")
    holidays = cur.filter(pl.col("recurring_event_id") == "holiday")
    assert holidays["event_id"].to_list() == [f"holiday_{day}", f"holiday_{next_day}"]
    assert holidays["starts_at"].to_list() == [utc(midnight + 10 * DAY), utc(midnight + 11 * DAY)]


# ---------------------------------------------------------------- deltas


def test_incremental_after_cancelled_occurrence_lands_exactly_one_delete(tmp_path, sim, cal):
    cal.add_event(weekly())
    cal.add_event(single("lunch", T0))
    sync = make_sync(sim, tmp_path)
    cursor = sync.run(None).cursor
    before = len(rows(tmp_path, "events"))
    sim.clear_requests()

    second = T0 + DAY + 7 * DAY
    cal.cancel_occurrence("series1", second)
    res = make_sync(sim, tmp_path).run(cursor)
    assert res.mode == "incremental" and (res.landed, res.deleted) == (0, 1)
    new = rows(tmp_path, "events").sort("version", "seq")[before:]
    assert new.select("event_id", "op", "recurring_event_id").rows() == [
        (f"series1_{suffix(second)}", "delete", "series1")
    ]
    assert rows(tmp_path, "attendees").height == 4 * 3 + 2  # no attendee rows for a delete
    (req,) = calendar_requests(sim)
    assert req.query["syncToken"] == [cursor["sync_token"]]
    assert req.query["singleEvents"] == ["true"]
    assert not {"timeMin", "timeMax", "orderBy", "showDeleted"} & set(req.query)
    assert len(live(tmp_path)) == 4  # 3 occurrences left + lunch

    # Cancelling the whole series deletes the remaining occurrences (and the series id).
    cal.cancel_event("series1")
    res = make_sync(sim, tmp_path).run(res.cursor)
    assert res.mode == "incremental" and (res.landed, res.deleted) == (0, 1 + 3)
    assert live(tmp_path)["event_id"].to_list() == ["lunch"]


def test_new_event_arrives_through_the_sync_token(tmp_path, sim, cal):
    cal.add_event(single("a", T0))
    cursor = make_sync(sim, tmp_path).run(None).cursor
    cal.add_event(single("b", T0 + DAY, summary="Kick-off"))
    cal.update_event(single("a", T0, summary="Renamed"))
    sim.clear_requests()
    res = make_sync(sim, tmp_path).run(cursor)
    assert res.mode == "incremental" and (res.landed, res.deleted) == (2, 0)
    assert res.cursor != cursor and res.cursor == {"sync_token": cal.sync_token()}
    titles = dict(live(tmp_path).select("event_id", "title").rows())
    assert titles == {"a": "Renamed", "b": "Kick-off"}
    assert all("syncToken" in r.query for r in calendar_requests(sim))
    # Nothing changed: an empty delta lands nothing and still moves the cursor along.
    again = make_sync(sim, tmp_path).run(res.cursor)
    assert (again.landed, again.deleted) == (0, 0) and again.cursor == res.cursor


def test_next_sync_token_only_on_the_last_page(tmp_path, sim, cal):
    for n in range(7):
        cal.add_event(single(f"e{n}", T0 + n * HOUR))
    creds = Credentials(
        None,
        refresh_token="rt-alice",
        token_uri=sim.token_uri,
        client_id="rapport-test",
        client_secret="secret",
    )
    service = build(
        "calendar",
        "v3",
        credentials=creds,
        static_discovery=True,
        client_options={"api_endpoint": sim.root_url + "calendar/v3/"},
    )
    pages, token = [], None
    while True:
        kw = {"pageToken": token} if token else {}
        page = service.events().list(calendarId="primary", maxResults=3, **kw).execute()
        pages.append(page)
        token = page.get("nextPageToken")
        if not token:
            break
    assert [len(p["items"]) for p in pages] == [3, 3, 1]
    assert all("nextPageToken" in p and "nextSyncToken" not in p for p in pages[:-1])
    assert "nextSyncToken" in pages[-1] and "nextPageToken" not in pages[-1]

    # The connector pages the same way. An event added mid-listing is not in this
    # listing (it is pinned to where it began) and arrives with the next delta.
    sim.clear_requests()

    def add_midway(done: int, total: int | None) -> None:
        if done == 2 and "late" not in cal.events:
            cal.add_event(single("late", T0 + 30 * DAY))

    res = make_sync(sim, tmp_path, page_size=2, progress=add_midway).run(None)
    reqs = calendar_requests(sim)
    assert len(reqs) == 4 and res.landed == 7
    assert ["pageToken" in r.query for r in reqs] == [False, True, True, True]
    assert "late" not in live(tmp_path)["event_id"].to_list()
    res = make_sync(sim, tmp_path, page_size=2).run(res.cursor)
    assert res.mode == "incremental" and res.landed == 1
    assert "late" in live(tmp_path)["event_id"].to_list()


def test_expired_token_resyncs_and_reconciles(tmp_path, sim, cal):
    cal.add_event(single("keep", T0))
    cal.add_event(single("doomed", T0 + HOUR))
    cal.add_event(weekly())
    cursor = make_sync(sim, tmp_path).run(None).cursor
    cal.add_event(single("distant", T0 + 400 * DAY))  # outside the full-listing window
    cursor = make_sync(sim, tmp_path).run(cursor).cursor
    assert "distant" in live(tmp_path)["event_id"].to_list()

    # The gap: a delete, a cancelled occurrence and a new event, then the token dies.
    cal.delete_event("doomed")
    third = T0 + DAY + 14 * DAY
    cal.cancel_occurrence("series1", third)
    cal.add_event(single("fresh", T0 + 2 * DAY))
    cal.expire_sync_tokens()
    sim.clear_requests()
    res = make_sync(sim, tmp_path).run(cursor)

    assert res.mode == "resync"
    statuses = [(("syncToken" in r.query), ("timeMin" in r.query), r.status) for r in sim.requests]
    assert (True, False, 410) in statuses and (False, True, 200) in statuses
    assert res.deleted == 2
    cur = current(tmp_path)
    latest = dict(cur.select("event_id", "op").rows())
    assert latest["doomed"] == "delete"
    assert latest[f"series1_{suffix(third)}"] == "delete"
    assert latest["distant"] == "upsert"  # slid out of the window, not deleted
    alive = live(tmp_path)
    assert sorted(alive["event_id"].to_list()) == sorted(
        ["keep", "fresh", "distant"]
        + [f"series1_{suffix(T0 + DAY + k * 7 * DAY)}" for k in (0, 1, 3)]
    )
    # Nothing duplicated: one live row per (iCalUID, start).
    assert alive.select("ical_uid", "starts_at").n_unique() == alive.height
    assert res.cursor == {"sync_token": cal.sync_token()}
    # A second resync-free run is an empty delta.
    again = make_sync(sim, tmp_path).run(res.cursor)
    assert again.mode == "incremental" and (again.landed, again.deleted) == (0, 0)


# ---------------------------------------------------------------- faults, auth, privacy


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "429", "count": 2},
        {"kind": "500", "count": 2},
        {"kind": "503"},
        {"kind": "403_rate"},
        {"kind": "drop", "count": 3},
    ],
)
def test_transient_faults_are_retried(tmp_path, sim, cal, fault):
    for n in range(5):
        cal.add_event(single(f"e{n}", T0 + n * HOUR))
    sim.inject_fault(path_contains="/calendar/v3/", **fault)
    sync = make_sync(sim, tmp_path, page_size=2)
    res = sync.run(None)
    assert res.retries >= 1 and sim.pending_faults() == 0
    assert res.landed == 5 and len(live(tmp_path)) == 5
    assert len(rows(tmp_path, "events")) == 5


def test_revoked_refresh_token_raises_auth_failure(tmp_path, sim, cal):
    cal.add_event(single("a", T0))
    sim.revoke_refresh_token(ALICE)
    with pytest.raises(AuthFailure) as err:
        make_sync(sim, tmp_path).run(None)
    assert "rt-alice" not in str(err.value)
    assert lake.glob(tmp_path / "lake", "events") == []


def test_blocklisted_attendee_lands_only_a_marker(tmp_path, sim, cal):
    cal.add_event(
        single(
            "secret",
            T0,
            summary="Acquisition talks",
            attendees=[SimAttendee("mole@rival.example", "The Mole", "accepted")],
        )
    )
    cal.add_event(single("vendor", T0 + DAY, organizer_email="sales@sub.blocked-vendor.example"))
    cal.add_event(single("ok", T0 + 2 * DAY))
    blocked = [("mole@rival.example", "address"), ("blocked-vendor.example", "domain")]
    res = make_sync(sim, tmp_path, blocked=blocked).run(None)
    assert (res.landed, res.blocked) == (1, 2)
    cur = current(tmp_path)
    marker = cur.filter(pl.col("event_id") == "secret").row(0, named=True)
    assert (marker["op"], marker["status"]) == ("upsert", "blocked")
    for col in ("ical_uid", "title", "starts_at", "ends_at", "all_day", "recurring_event_id"):
        assert marker[col] is None, col
    att = rows(tmp_path, "attendees")
    assert set(att["event_id"]) == {"ok"}
    for path in (tmp_path / "lake").rglob("*.parquet"):
        data = path.read_bytes()
        for needle in (b"mole@rival.example", b"The Mole", b"Acquisition", b"blocked-vendor"):
            assert needle not in data, (needle, path)
    every_value = json.dumps(
        [rows(tmp_path, t).to_dicts() for t in ("events", "attendees", "quarantine")],
        default=str,
    )
    assert "mole@rival.example" not in every_value and "blocked-vendor" not in every_value


def test_malformed_events_go_to_quarantine_and_the_sync_goes_on(tmp_path, sim, cal):
    cal.add_event(single("good", T0))
    cal.add_event(single("nostart", T0 + HOUR), wire_patch={"start": None})
    cal.add_event(
        single("baddate", T0 + 2 * HOUR), wire_patch={"end": {"dateTime": "next tuesday"}}
    )
    res = make_sync(sim, tmp_path).run(None)
    assert (res.landed, res.quarantined) == (1, 2) and res.cursor is not None
    q = rows(tmp_path, "quarantine").sort("item_id")
    assert q.select("stream", "item_id").rows() == [
        ("gcalendar", "baddate"),
        ("gcalendar", "nostart"),
    ]
    assert q["reason"].to_list() == ["unparseable end", "event has no start"]
    assert live(tmp_path)["event_id"].to_list() == ["good"]


def test_batches_are_flushed_every_few_thousand_events(tmp_path, sim, cal, monkeypatch):
    monkeypatch.setattr(gcalendar, "FLUSH_EVERY", 3)
    for n in range(8):
        cal.add_event(single(f"e{n}", T0 + n * HOUR))
    res = make_sync(sim, tmp_path).run(None)
    assert res.landed == 8
    assert len(lake.glob(tmp_path / "lake", "events", [ACCOUNT])) == 3  # 3 + 3 + 2
    assert len(live(tmp_path)) == 8


# ---------------------------------------------------------------- simulator protocol


def _service(sim: GoogleSimulator):
    creds = Credentials(
        None,
        refresh_token="rt-alice",
        token_uri=sim.token_uri,
        client_id="rapport-test",
        client_secret="secret",
    )
    return build(
        "calendar",
        "v3",
        credentials=creds,
        static_discovery=True,
        client_options={"api_endpoint": sim.root_url + "calendar/v3/"},
    )


def test_simulator_rejects_window_with_sync_token_and_answers_410_exactly(sim, cal):
    cal.add_event(single("a", T0))
    events = _service(sim).events()
    token = events.list(calendarId=ALICE).execute()["nextSyncToken"]
    with pytest.raises(HttpError) as err:
        events.list(calendarId="primary", syncToken=token, timeMin="2026-01-01T00:00:00Z").execute()
    assert err.value.resp.status == 400
    cal.expire_sync_tokens()
    with pytest.raises(HttpError) as err:
        events.list(calendarId="primary", syncToken=token).execute()
    assert err.value.resp.status == 410
    msg = "Sync token is no longer valid, a full sync is required."
    assert json.loads(err.value.content) == {
        "error": {
            "errors": [{"domain": "calendar", "reason": "fullSyncRequired", "message": msg}],
            "code": 410,
            "message": msg,
        }
    }
    with pytest.raises(HttpError) as err:
        events.list(calendarId="someone-else@example.com").execute()
    assert err.value.resp.status == 404


def test_simulator_state_survives_save_and_load(tmp_path, sim, cal):
    cal.add_event(weekly())
    token = _service(sim).events().list(calendarId="primary", singleEvents=True).execute()
    token = token["nextSyncToken"]
    cal.cancel_occurrence("series1", T0 + DAY)
    sim.save_state(tmp_path / "sim.pickle")
    with GoogleSimulator.load_state(tmp_path / "sim.pickle") as again:
        install_calendar(again)
        page = (
            _service(again)
            .events()
            .list(calendarId="primary", singleEvents=True, syncToken=token)
            .execute()
        )
    assert [(i["id"], i["status"]) for i in page["items"]] == [
        (f"series1_{suffix(T0 + DAY)}", "cancelled")
    ]
