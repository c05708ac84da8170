"""Google Calendar events stream: a windowed full listing first, then syncToken deltas.

Cursor: {"sync_token": "<opaque>"}, returned in SyncResult.cursor and saved by the caller
only after the rows it covers are durable.
First sync: `events.list(singleEvents=True, showDeleted=False, timeMin, timeMax)` paged to
the end; the last page's `nextSyncToken` becomes the cursor. Later syncs list with only
`syncToken` (+ singleEvents): upserts and cancellations (landed as op "delete").
A 410 (fullSyncRequired) means the token expired: a full listing that also lands deletes
for events we hold as live, inside the window, that the listing no longer has (Google
sends no tombstones across an expired token).

One row per single event or occurrence in lake table "events", participants in
"attendees"; blocklisted events land as a marker only; unparseable ones go to
"quarantine" and the sync carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
from googleapiclient.errors import HttpError

from connectors import lake
from connectors.base import ProgressFn, SyncResult
from connectors.gmail import GmailSettings, GoogleClient, _http_error_status
from connectors.mailparse import Blocklist, Malformed

log = logging.getLogger("rapport.gcalendar")

# A Google account has one settings shape for every stream (api_endpoint root, token_uri,
# retry policy, timeout); Calendar ignores the Gmail-only fields.
CalendarSettings = GmailSettings

STREAM = "gcalendar"
PAGE_SIZE = 2500  # Calendar's maximum maxResults
FLUSH_EVERY = 2000  # events per landed Parquet file
CALENDAR_QPS = 10.0  # Calendar's per-user default is 600 queries a minute
FULL_LIST_ATTEMPTS = 3  # a page token may also expire mid-listing (410): start over


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_sync_expired(exc: BaseException) -> bool:
    return isinstance(exc, HttpError) and _http_error_status(exc) == 410


class CalendarClient(GoogleClient):
    """Calendar v3 on the same Google account and endpoint root as Gmail."""

    label = "calendar"

    def __init__(self, secrets: dict[str, str], settings: GmailSettings):
        qps = settings.quota_units_per_second
        # Calendar's servicePath is calendar/v3/, so the endpoint names it under the root.
        super().__init__(
            secrets,
            settings,
            api="calendar",
            version="v3",
            service_path="calendar/v3/",
            units_per_second=min(qps, CALENDAR_QPS) if qps else None,
        )

    def pages(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """events.list pages, following nextPageToken with the same parameters."""
        events = self.service.events()
        token: str | None = None
        while True:
            kwargs = dict(params, pageToken=token) if token else dict(params)
            page = self.execute(events.list(**kwargs))
            yield page
            token = page.get("nextPageToken")
            if not token:
                return


# ----------------------------------------------------------------- landing
def parse_when(obj: Any, what: str) -> tuple[datetime, bool]:
    """(UTC instant, all_day) of an event start/end; all-day dates are 00:00 UTC."""
    if not isinstance(obj, dict):
        raise Malformed(f"event has no {what}")
    if obj.get("dateTime"):
        raw = str(obj["dateTime"])
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise Malformed(f"unparseable {what}", raw[:80]) from None
        if value.tzinfo is None:  # no offset: Google then names the zone separately
            try:
                value = value.replace(tzinfo=ZoneInfo(str(obj.get("timeZone") or "")))
            except (ZoneInfoNotFoundError, ValueError):
                raise Malformed(f"{what} has no time zone", raw[:80]) from None
        return value.astimezone(UTC), False
    if obj.get("date"):
        raw = str(obj["date"])
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise Malformed(f"unparseable {what}", raw[:80]) from None
        return datetime(day.year, day.month, day.day, tzinfo=UTC), True
    raise Malformed(f"event has no {what}")


def _email(value: Any) -> str | None:
    text = value.strip() if isinstance(value, str) else ""
    return text or None


def event_people(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Attendee rows: the organizer once (role organizer), then each other attendee."""
    attendees = [a for a in item.get("attendees") or [] if isinstance(a, dict)]
    organizer = item.get("organizer") if isinstance(item.get("organizer"), dict) else {}
    org_email = _email(organizer.get("email"))
    org_entry = next(
        (
            a
            for a in attendees
            if a.get("organizer")
            or (org_email and (_email(a.get("email")) or "").lower() == org_email.lower())
        ),
        None,
    )
    if org_email is None and org_entry is not None:
        org_email = _email(org_entry.get("email"))
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    if org_email:
        entry = org_entry or {}
        rows.append(
            {
                "role": "organizer",
                "address": org_email,
                "name": organizer.get("displayName") or entry.get("displayName"),
                "response_status": entry.get("responseStatus"),
                "resource": bool(entry.get("resource", False)),
            }
        )
        seen.add(org_email.lower())
    for att in attendees:
        address = _email(att.get("email"))
        if address is None or address.lower() in seen:
            continue
        seen.add(address.lower())
        rows.append(
            {
                "role": "attendee",
                "address": address,
                "name": att.get("displayName"),
                "response_status": att.get("responseStatus"),
                # Rooms land flagged; the transforms drop them.
                "resource": bool(att.get("resource", False)),
            }
        )
    return rows


def land_event(batch: lake.Batch, item: dict[str, Any], blocklist: Blocklist) -> str:
    """Add one Calendar item to the batch.

    Returns 'landed', 'deleted', 'blocked' or 'quarantined'.
    """
    eid = item.get("id")
    if not isinstance(eid, str) or not eid:
        batch.add("quarantine", _quarantine_row(None, Malformed("event has no id")))
        return "quarantined"
    if item.get("status") == "cancelled":
        # Cancelled items may carry only an id: a delete of this event or occurrence.
        batch.add("events", _delete_row(eid, item))
        return "deleted"
    people = event_people(item)
    if blocklist and blocklist.matches([p["address"] for p in people]):
        # Marker only: no title, times or attendees ever reach disk.
        batch.add("events", _marker_row(eid))
        return "blocked"
    try:
        starts_at, all_day = parse_when(item.get("start"), "start")
        ends_at, _ = parse_when(item.get("end"), "end")
        if ends_at < starts_at:
            raise Malformed("event ends before it starts")
    except Malformed as bad:
        batch.add("quarantine", _quarantine_row(eid, bad))
        return "quarantined"
    batch.add(
        "events",
        {
            "provider": "google",
            "stream": STREAM,
            "event_id": eid,
            # Instances keep their series' iCalUID; transforms dedup on (ical_uid, starts_at).
            "ical_uid": item.get("iCalUID"),
            "op": "upsert",
            "status": item.get("status") or "confirmed",
            "title": item.get("summary"),
            "starts_at": starts_at,
            "ends_at": ends_at,
            "all_day": all_day,
            "recurring_event_id": item.get("recurringEventId"),
        },
    )
    for person in people:
        batch.add("attendees", {"event_id": eid, **person})
    return "landed"


def _delete_row(eid: str, item: dict[str, Any] | None = None) -> dict[str, Any]:
    item = item or {}
    return {
        "provider": "google",
        "stream": STREAM,
        "event_id": eid,
        "ical_uid": item.get("iCalUID"),
        "op": "delete",
        "status": "cancelled",
        "recurring_event_id": item.get("recurringEventId"),
    }


def _marker_row(eid: str) -> dict[str, Any]:
    return {
        "provider": "google",
        "stream": STREAM,
        "event_id": eid,
        "op": "upsert",
        "status": "blocked",
    }


def _quarantine_row(eid: str | None, bad: Malformed) -> dict[str, Any]:
    return {"stream": STREAM, "item_id": eid, "reason": bad.reason, "detail": bad.detail}


def live_event_ids(
    lake_dir: Path, account_id: str, window: tuple[datetime, datetime] | None = None
) -> set[str]:
    """Event ids whose latest landed version is not a delete.

    With a window, only those that overlap it (or whose times are unknown, as for
    blocked markers): an event that merely slid out of the window is not deleted.
    """
    current = lake.live_rows(lake_dir, "events", account_id, ["starts_at", "ends_at"], STREAM)
    if window is not None:
        lo, hi = window
        current = current.filter(
            pl.col("starts_at").is_null() | ((pl.col("ends_at") > lo) & (pl.col("starts_at") < hi))
        )
    return set(current["event_id"].to_list())


class CalendarSync:
    """One account's primary calendar: decides full vs incremental and lands the result."""

    def __init__(
        self,
        *,
        lake_dir: Path,
        account_id: str,
        secrets: dict[str, str],
        settings: GmailSettings,
        blocklist: Blocklist,
        progress: ProgressFn | None = None,
        window_days_past: int = 3650,
        window_days_future: int = 365,
        page_size: int = PAGE_SIZE,
    ):
        self.lake_dir = lake_dir
        self.account_id = account_id
        self.settings = settings
        self.blocklist = blocklist
        self.progress = progress or (lambda done, total: None)
        self.window_days_past = window_days_past
        self.window_days_future = window_days_future
        self.page_size = max(1, min(page_size, PAGE_SIZE))
        self.client = CalendarClient(secrets, settings)

    def run(self, cursor: dict[str, Any] | None) -> SyncResult:
        self.client.ensure_token()
        token = (cursor or {}).get("sync_token")
        if token:
            try:
                result = self.incremental(str(token))
            except HttpError as exc:
                if not is_sync_expired(exc):
                    raise
                log.warning("calendar sync token expired for %s; full resync", self.account_id)
                result = self.full(mode="resync")
        else:
            result = self.full(mode="full")
        result.retries = self.client.retries
        return result

    # ----------------------------------------------------------------- full
    def full(self, mode: str) -> SyncResult:
        for attempt in range(FULL_LIST_ATTEMPTS):
            try:
                return self._full_once(mode)
            except HttpError as exc:
                # Rows landed so far are true; a fresh listing supersedes them.
                if not is_sync_expired(exc) or attempt == FULL_LIST_ATTEMPTS - 1:
                    raise
                log.warning("calendar listing expired mid-way for %s; again", self.account_id)
        raise AssertionError("unreachable")

    def _full_once(self, mode: str) -> SyncResult:
        now = datetime.now(UTC)
        lo = now - timedelta(days=self.window_days_past)
        hi = now + timedelta(days=self.window_days_future)
        params = {
            "calendarId": "primary",
            "singleEvents": True,
            "showDeleted": False,
            "timeMin": _rfc3339(lo),
            "timeMax": _rfc3339(hi),
            "maxResults": self.page_size,
        }
        result = SyncResult(mode=mode)
        seen: set[str] = set()
        token = self._land_pages(params, result, seen)
        # No tombstones survive an expired token (or a lost cursor): diff what we hold
        # as live inside the window against the listing. Empty on a true first sync.
        vanished = sorted(live_event_ids(self.lake_dir, self.account_id, (lo, hi)) - seen)
        if vanished:
            batch = lake.Batch(self.account_id)
            for eid in vanished:
                batch.add("events", _delete_row(eid))
            lake.flush(self.lake_dir, batch)
            result.deleted += len(vanished)
        result.cursor = self._cursor(token)
        return result

    # ----------------------------------------------------------------- delta
    def incremental(self, sync_token: str) -> SyncResult:
        # With syncToken, Google forbids timeMin/timeMax/orderBy/q/updatedMin.
        params = {
            "calendarId": "primary",
            "syncToken": sync_token,
            "singleEvents": True,
            "maxResults": self.page_size,
        }
        result = SyncResult(mode="incremental")
        token = self._land_pages(params, result, set())
        result.cursor = self._cursor(token)
        return result

    def _cursor(self, token: str | None) -> dict[str, Any] | None:
        if not token:
            # Keep the old cursor (the caller saves nothing) rather than invent one.
            log.warning("calendar listing for %s ended without nextSyncToken", self.account_id)
            return None
        return {"sync_token": token}

    def _land_pages(self, params: dict[str, Any], result: SyncResult, seen: set[str]) -> str | None:
        """Land every page; returns the last page's nextSyncToken."""
        batch = lake.Batch(self.account_id)
        sync_token: str | None = None
        done = 0
        self.progress(0, None)
        for page in self.client.pages(params):
            for item in page.get("items") or []:
                if not isinstance(item, dict):
                    continue
                if isinstance(item.get("id"), str):
                    seen.add(item["id"])
                outcome = land_event(batch, item, self.blocklist)
                if outcome == "landed":
                    result.landed += 1
                elif outcome == "deleted":
                    result.deleted += 1
                elif outcome == "blocked":
                    result.blocked += 1
                else:
                    result.quarantined += 1
                done += 1
                if batch.count("events") + batch.count("quarantine") >= FLUSH_EVERY:
                    lake.flush(self.lake_dir, batch)
                    batch = lake.Batch(self.account_id)
            sync_token = page.get("nextSyncToken") or sync_token
            self.progress(done, None)
        if len(batch):
            lake.flush(self.lake_dir, batch)
        return sync_token
