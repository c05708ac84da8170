"""Google Calendar API v3 (`events.list`) served by the Google simulator.

Plugs into `GoogleSimulator.router`, so OAuth, faults, quota, the request log and
`save_state`/`load_state` apply as they do to Gmail:

    sim = GoogleSimulator().start()
    install_calendar(sim)                       # once per simulator (also after load_state)
    sim.add_user(ALICE, refresh_token="rt")
    cal = calendar_store(sim, ALICE)            # kept in GoogleAccount.extra["calendar"]
    cal.add_event(SimEvent(...))
    service = build("calendar", "v3", static_discovery=True, credentials=creds,
                    client_options={"api_endpoint": sim.root_url + "calendar/v3/"})

Model: every change appends a snapshot of the event to a per-calendar log and bumps
its sequence number. A listing is computed "as of" one sequence number, which the
page tokens carry, so paging stays consistent while tests mutate the calendar; the
last page's `nextSyncToken` carries that same number. A delta diffs each touched
event's rendered items before and after, so cancelling one occurrence yields just
that instance. `expire_sync_tokens()` bumps an epoch: older tokens answer 410.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dateutil.rrule import rrulestr

from connectors.simulators.google import ApiCall, ApiError, GoogleAccount, google_error
from connectors.simulators.httpbase import HTTPResponse, json_response
from connectors.simulators.model import SimAttendee, SimEvent

if TYPE_CHECKING:
    from connectors.simulators.google import GoogleSimulator

__all__ = ["CalendarStore", "calendar_store", "install_calendar", "ROUTE_NAME"]

ROUTE_NAME = "calendar.events.list"
EVENTS_PATH = r"/calendar/v3/calendars/(?P<calendarId>[^/]+)/events"
DEFAULT_PAGE = 250
MAX_PAGE = 2500
HORIZON_DAYS = 730  # open-ended series are expanded this far past "now"
MAX_INSTANCES = 5000  # per series, a guard against runaway rules
# Not allowed together with syncToken (the token fixes the query).
SYNC_FORBIDDEN = (
    "timeMin",
    "timeMax",
    "orderBy",
    "q",
    "updatedMin",
    "iCalUID",
    "privateExtendedProperty",
    "sharedExtendedProperty",
)
_VOLATILE = ("updated", "etag")  # ignored when diffing: a touch alone is no change
_MEMO_SIZE = 16


# ---------------------------------------------------------------- time helpers


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _rfc3339(ms: int) -> str:
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_millis(ms: int) -> str:
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _date(ms: int) -> str:
    return _dt(ms).strftime("%Y-%m-%d")


def _when(ms: int, all_day: bool) -> dict[str, str]:
    return {"date": _date(ms)} if all_day else {"dateTime": _rfc3339(ms), "timeZone": "UTC"}


def _instance_suffix(ms: int, all_day: bool) -> str:
    # Google names all-day instances by date only, timed ones by UTC date-time.
    return _dt(ms).strftime("%Y%m%d" if all_day else "%Y%m%dT%H%M%SZ")


def _normalise_rrule(rule: str) -> str:
    """An RRULE body dateutil accepts with an aware DTSTART (UNTIL must be UTC)."""
    parts = []
    for part in rule.strip().removeprefix("RRULE:").split(";"):
        key, _, value = part.partition("=")
        if key.strip().upper() == "UNTIL":
            value = value.strip()
            if re.fullmatch(r"\d{8}", value):
                value += "T235959Z"  # a date-only UNTIL includes that whole day
            elif re.fullmatch(r"\d{8}T\d{6}", value):
                value += "Z"
            part = f"UNTIL={value}"
        parts.append(part)
    return "RRULE:" + ";".join(parts)


def occurrence_starts(ev: SimEvent, horizon_ms: int) -> list[int]:
    """Start times (ms) of an event's occurrences that begin before `horizon_ms`."""
    if not ev.rrule:
        return [ev.start_ms] if ev.start_ms < horizon_ms else []
    rule = rrulestr(_normalise_rrule(ev.rrule), dtstart=_dt(ev.start_ms))
    out: list[int] = []
    for occ in rule:
        start = _ms(occ)
        if start >= horizon_ms or len(out) >= MAX_INSTANCES:
            break
        out.append(start)
    return out


def _parse_rfc3339(req_value: str, name: str) -> int:
    try:
        value = datetime.fromisoformat(req_value.strip())
    except ValueError:
        raise _bad_request(f"Invalid value for {name}: {req_value}") from None
    if value.tzinfo is None:  # Google insists on an offset
        raise _bad_request(f"{name} must be an RFC3339 timestamp with a time zone offset")
    return _ms(value)


# ---------------------------------------------------------------- errors


def _bad_request(message: str) -> ApiError:
    return ApiError(google_error(400, message, "invalid", "INVALID_ARGUMENT"))


def _not_found() -> ApiError:
    return ApiError(google_error(404, "Not Found", "notFound", "NOT_FOUND"))


def _full_sync_required() -> ApiError:
    # Exactly Google's body: no "status" member, unlike most of its errors.
    msg = "Sync token is no longer valid, a full sync is required."
    item = {"domain": "calendar", "reason": "fullSyncRequired", "message": msg}
    return ApiError(json_response(410, {"error": {"errors": [item], "code": 410, "message": msg}}))


# ---------------------------------------------------------------- tokens


def _encode_token(obj: dict[str, Any]) -> str:
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_token(token: str, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(obj, dict) or obj.get("k") != kind:
            raise ValueError(kind)
        return obj
    except (ValueError, binascii.Error, UnicodeDecodeError):
        what = "sync token" if kind == "s" else "page token"
        raise _bad_request(f"Invalid {what} value.") from None


# ---------------------------------------------------------------- store


@dataclass(frozen=True)
class _Change:
    seq: int
    event_id: str
    event: SimEvent  # a private snapshot; never mutated after logging
    deleted: bool  # hard delete: gone from listings, still reported in deltas
    updated_ms: int
    wire_patch: dict[str, Any] | None = None


@dataclass
class _Item:
    body: dict[str, Any]
    start_ms: int
    end_ms: int


@dataclass
class _Query:
    since: int | None  # sync token seq; None for a full listing
    upto: int
    single: bool
    show_deleted: bool
    tmin: int | None
    tmax: int | None
    horizon: int
    by_start: bool = False

    def key(self) -> tuple[Any, ...]:
        return (
            self.since,
            self.upto,
            self.single,
            self.show_deleted,
            self.tmin,
            self.tmax,
            self.horizon,
            self.by_start,
        )


class CalendarStore:
    """One user's primary calendar: current events, a change log and a sequence number.

    Mutators and readers take the store lock, so tests may change the calendar while
    the server answers requests.
    """

    def __init__(self, email: str) -> None:
        self.email = email
        self.seq = 0  # bumped by every change; sync tokens carry it
        self.epoch = 0  # bumped by expire_sync_tokens; tokens of older epochs answer 410
        self._log: list[_Change] = []
        self._latest: dict[str, _Change] = {}  # per event, deletes included
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.RLock()
        self._memo: OrderedDict[tuple[Any, ...], list[_Item]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = self.__dict__.copy()
        state.pop("_lock", None)
        state.pop("_memo", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- mutators (each bumps the sequence number and returns it)

    def _put(
        self,
        ev: SimEvent,
        *,
        deleted: bool = False,
        updated_ms: int | None = None,
        wire_patch: dict[str, Any] | None = None,
    ) -> int:
        prev = self._latest.get(ev.id)
        now = int(time.time() * 1000)
        if updated_ms is None:
            updated_ms = now if prev is None else max(now, prev.updated_ms + 1)
        self.seq += 1
        change = _Change(self.seq, ev.id, copy.deepcopy(ev), deleted, updated_ms, wire_patch)
        self._log.append(change)
        self._latest[ev.id] = change
        return self.seq

    def _live(self, event_id: str) -> _Change:
        change = self._latest.get(event_id)
        if change is None or change.deleted:
            raise KeyError(event_id)
        return change

    def add_event(self, ev: SimEvent, *, wire_patch: dict[str, Any] | None = None) -> int:
        """Add an event. `wire_patch` overrides keys of the served JSON (None removes
        the key) for every item of the event, so tests can serve malformed events."""
        occurrence_starts(ev, ev.start_ms + 1)  # a bad RRULE fails here, not in a request
        with self._lock:
            prev = self._latest.get(ev.id)
            if prev is not None and not prev.deleted:
                raise ValueError(f"event {ev.id!r} already in {self.email}")
            return self._put(ev, updated_ms=ev.updated_ms or None, wire_patch=wire_patch)

    def update_event(self, ev: SimEvent, *, wire_patch: dict[str, Any] | None = None) -> int:
        occurrence_starts(ev, ev.start_ms + 1)
        with self._lock:
            prev = self._live(ev.id)
            return self._put(ev, wire_patch=wire_patch or prev.wire_patch)

    def cancel_event(self, event_id: str) -> int:
        with self._lock:
            prev = self._live(event_id)
            ev = copy.deepcopy(prev.event)
            ev.status = "cancelled"
            return self._put(ev, wire_patch=prev.wire_patch)

    def cancel_occurrence(self, event_id: str, occurrence_start_ms: int) -> int:
        with self._lock:
            prev = self._live(event_id)
            ev = copy.deepcopy(prev.event)
            if not ev.rrule:
                raise ValueError(f"event {event_id!r} is not recurring")
            if occurrence_start_ms not in occurrence_starts(ev, occurrence_start_ms + 1):
                raise ValueError(f"{occurrence_start_ms} is not an occurrence of {event_id!r}")
            if occurrence_start_ms not in ev.cancelled_occurrences:
                ev.cancelled_occurrences.append(occurrence_start_ms)
            return self._put(ev, wire_patch=prev.wire_patch)

    def delete_event(self, event_id: str) -> int:
        """Remove an event for good: absent from listings, reported cancelled in deltas."""
        with self._lock:
            prev = self._live(event_id)
            ev = copy.deepcopy(prev.event)
            ev.status = "cancelled"
            return self._put(ev, deleted=True, wire_patch=prev.wire_patch)

    def expire_sync_tokens(self) -> None:
        """Every sync (and page) token issued so far answers 410 from now on."""
        with self._lock:
            self.epoch += 1
            # Old tokens are dead, so only each event's latest change is still needed.
            self._log = sorted(self._latest.values(), key=lambda c: c.seq)
            self._memo.clear()

    # -- readers

    @property
    def events(self) -> dict[str, SimEvent]:
        """Current (not deleted) events, as copies."""
        with self._lock:
            return {eid: copy.deepcopy(c.event) for eid, c in self._latest.items() if not c.deleted}

    def position(self) -> tuple[int, int]:
        """(epoch, seq): the point a new listing is pinned to."""
        with self._lock:
            return self.epoch, self.seq

    def sync_token(self) -> str:
        with self._lock:
            return _encode_token({"k": "s", "e": self.epoch, "s": self.seq})

    def _state_at(self, seq: int) -> dict[str, _Change]:
        out: dict[str, _Change] = {}
        for change in self._log:
            if change.seq > seq:
                break
            out[change.event_id] = change
        return out

    def items(self, q: _Query) -> list[_Item]:
        with self._lock:
            key = q.key()
            cached = self._memo.get(key)
            if cached is not None:
                self._memo.move_to_end(key)
                return cached
            result = self._delta(q) if q.since is not None else self._full(q)
            self._memo[key] = result
            if len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
            return result

    def _full(self, q: _Query) -> list[_Item]:
        horizon = q.horizon if q.tmax is None else q.tmax
        out: list[_Item] = []
        for change in self._state_at(q.upto).values():
            if change.deleted:
                continue
            for item in _view(change, self.email, q.single, horizon).values():
                if item.body.get("status") == "cancelled" and not q.show_deleted:
                    continue
                if q.tmax is not None and item.start_ms >= q.tmax:
                    continue
                if q.tmin is not None and not (
                    item.end_ms > q.tmin or (item.start_ms == item.end_ms >= q.tmin)
                ):
                    continue
                out.append(item)
        out.sort(key=lambda i: (i.start_ms, i.body["id"]))
        return out

    def _delta(self, q: _Query) -> list[_Item]:
        assert q.since is not None
        before = self._state_at(q.since)
        after = self._state_at(q.upto)
        touched: dict[str, int] = {}
        for change in self._log:
            if q.since < change.seq <= q.upto:
                touched[change.event_id] = change.seq
        out: list[_Item] = []
        for eid in sorted(touched, key=lambda e: (touched[e], e)):
            old_change, new_change = before.get(eid), after.get(eid)
            old = _view(old_change, self.email, q.single, q.horizon) if old_change else {}
            new = _view(new_change, self.email, q.single, q.horizon) if new_change else {}
            changed = [
                item
                for item_id, item in new.items()
                if item_id not in old or _stable(old[item_id].body) != _stable(item.body)
            ]
            for item_id, item in old.items():
                if item_id not in new:  # e.g. a shortened series: the instance is gone
                    changed.append(_Item(_stub(item.body), item.start_ms, item.end_ms))
            changed.sort(key=lambda i: (i.start_ms, i.body["id"]))
            out.extend(changed)
        if q.by_start:
            out.sort(key=lambda i: (i.start_ms, i.body["id"]))
        return out


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _VOLATILE}


def _stub(body: dict[str, Any]) -> dict[str, Any]:
    """What Google sends for a cancelled item: id and status, plus the series link."""
    out: dict[str, Any] = {"id": body["id"], "status": "cancelled"}
    for key in ("recurringEventId", "originalStartTime"):
        if key in body:
            out[key] = body[key]
    return out


# ---------------------------------------------------------------- rendering


def _attendee_json(att: SimAttendee, owner: str) -> dict[str, Any]:
    item: dict[str, Any] = {"email": att.email}
    if att.name:
        item["displayName"] = att.name
    if att.organizer:
        item["organizer"] = True
    if att.email.lower() == owner:
        item["self"] = True
    if att.resource:
        item["resource"] = True
    if att.optional:
        item["optional"] = True
    item["responseStatus"] = att.response_status
    return item


def _event_json(change: _Change, owner: str, item_id: str, start: int, end: int) -> dict[str, Any]:
    ev = change.event
    owner = owner.lower()
    organizer: dict[str, Any] = {"email": ev.organizer_email}
    if ev.organizer_name:
        organizer["displayName"] = ev.organizer_name
    if ev.organizer_email.lower() == owner:
        organizer["self"] = True
    if ev.all_day and end <= start:
        end = start + 86_400_000  # Google's all-day end date is exclusive and > start
    body: dict[str, Any] = {
        "kind": "calendar#event",
        "etag": f'"{change.updated_ms}"',
        "id": item_id,
        "status": ev.status,
        "htmlLink": f"https://www.google.com/calendar/event?eid={item_id}",
        "updated": _rfc3339_millis(change.updated_ms),
        "summary": ev.summary,
        "creator": {k: v for k, v in organizer.items() if k != "displayName"},
        "organizer": organizer,
        "start": _when(start, ev.all_day),
        "end": _when(end, ev.all_day),
        "iCalUID": ev.ical_uid,
        "sequence": 0,
        "eventType": "default",
    }
    if ev.attendees:
        body["attendees"] = [_attendee_json(a, owner) for a in ev.attendees]
    if change.wire_patch:
        for key, value in change.wire_patch.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = copy.deepcopy(value)
    return body


def _view(change: _Change, owner: str, single: bool, horizon: int) -> dict[str, _Item]:
    """Every item an event contributes to a listing, cancelled ones included."""
    ev = change.event
    duration = ev.end_ms - ev.start_ms
    out: dict[str, _Item] = {}
    master = _event_json(change, owner, ev.id, ev.start_ms, ev.end_ms)
    cancelled = ev.status == "cancelled"
    if not ev.rrule:
        out[ev.id] = _Item(_stub(master) if cancelled else master, ev.start_ms, ev.end_ms)
        return out
    starts = occurrence_starts(ev, horizon)
    if cancelled or not single:
        if cancelled:
            master = _stub(master)
        else:
            master["recurrence"] = ["RRULE:" + ev.rrule.removeprefix("RRULE:")]
        # A series spans from its first to its last occurrence (within the horizon).
        last_end = (starts[-1] if starts else ev.start_ms) + duration
        out[ev.id] = _Item(master, ev.start_ms, max(ev.end_ms, last_end))
    skipped = set(ev.cancelled_occurrences)
    for start in starts:
        is_cancelled = cancelled or start in skipped
        if not single and not is_cancelled:
            continue  # without singleEvents only exceptions travel as instances
        inst_id = f"{ev.id}_{_instance_suffix(start, ev.all_day)}"
        body = _event_json(change, owner, inst_id, start, start + duration)
        body["recurringEventId"] = ev.id
        body["originalStartTime"] = _when(start, ev.all_day)
        out[inst_id] = _Item(_stub(body) if is_cancelled else body, start, start + duration)
    return out


# ---------------------------------------------------------------- HTTP


def calendar_for(account: GoogleAccount) -> CalendarStore:
    store = account.extra.get("calendar")
    if store is None:
        store = account.extra.setdefault("calendar", CalendarStore(account.email))
    return store


def calendar_store(sim: GoogleSimulator, email: str) -> CalendarStore:
    """The user's primary calendar (created empty on first use)."""
    return calendar_for(sim.account(email))


def install_calendar(sim: GoogleSimulator) -> None:
    """Register the Calendar v3 routes on a simulator (idempotent)."""
    if any(route.name == ROUTE_NAME for route in sim.router.routes):
        return
    sim.router.add("GET", EVENTS_PATH, _h_events_list, name=ROUTE_NAME, cost=1)


def _bool(call: ApiCall, name: str) -> bool:
    raw = (call.request.param(name) or "").lower()
    if raw not in ("", "true", "false", "1", "0"):
        raise _bad_request(f"Invalid boolean value for {name}: {raw}")
    return raw in ("true", "1")


def _max_results(call: ApiCall) -> int:
    raw = call.request.param("maxResults")
    if raw in (None, ""):
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"Invalid value for maxResults: {raw}") from None
    if value < 1:
        raise _bad_request(f"Invalid value for maxResults: {raw}")
    return min(value, MAX_PAGE)


def _time_param(call: ApiCall, name: str) -> int | None:
    raw = call.request.param(name)
    return _parse_rfc3339(raw, name) if raw else None


def _token_seq(sync_token: str, epoch: int, current: int) -> int:
    tok = _decode_token(sync_token, "s")
    seq, tok_epoch = tok.get("s"), tok.get("e")
    if not isinstance(seq, int) or not isinstance(tok_epoch, int):
        raise _bad_request("Invalid sync token value.")
    if tok_epoch != epoch or not 0 <= seq <= current:
        raise _full_sync_required()
    return seq


def _h_events_list(call: ApiCall) -> HTTPResponse:
    acct = call.account
    assert acct is not None  # route.auth guarantees it
    cal_id = call.params.get("calendarId", "")
    if cal_id != "primary" and cal_id.lower() != acct.email.lower():
        raise _not_found()
    store = calendar_for(acct)
    req = call.request
    page_size = _max_results(call)
    page_token = req.param("pageToken")
    sync_token = req.param("syncToken")
    if sync_token:
        bad = [name for name in SYNC_FORBIDDEN if req.param(name) not in (None, "")]
        if bad:
            raise _bad_request(f"{', '.join(bad)} cannot be used together with syncToken.")
    epoch, current = store.position()
    if page_token:
        # The page token carries the whole query, pinned to one sequence number.
        state = _decode_token(page_token, "p")
        if state["e"] != epoch:
            raise _full_sync_required()
        q = _Query(
            since=state["f"],
            upto=state["u"],
            single=state["si"],
            show_deleted=state["sd"],
            tmin=state["tn"],
            tmax=state["tx"],
            horizon=state["h"],
            by_start=state["o"],
        )
        offset = int(state["n"])
    else:
        since = _token_seq(sync_token, epoch, current) if sync_token else None
        single = _bool(call, "singleEvents")
        order = req.param("orderBy") or ""
        if order not in ("", "startTime", "updated"):
            raise _bad_request(f"Invalid value for orderBy: {order}")
        if order == "startTime" and not single:
            raise _bad_request("The requested ordering is not available for the particular query.")
        tmin, tmax = _time_param(call, "timeMin"), _time_param(call, "timeMax")
        if tmin is not None and tmax is not None and tmax <= tmin:
            raise _bad_request("The specified time range is empty.")
        day = 86_400_000
        q = _Query(
            since=since,
            upto=current,
            single=single,
            show_deleted=_bool(call, "showDeleted"),
            tmin=tmin,
            tmax=tmax,
            # Whole days so repeated requests share the memo.
            horizon=(int(time.time() * 1000) // day + HORIZON_DAYS) * day,
            by_start=order == "startTime",
        )
        offset = 0
    items = store.items(q)
    page = items[offset : offset + page_size]
    body: dict[str, Any] = {
        "kind": "calendar#events",
        "etag": f'"{q.upto}"',
        "summary": acct.email,
        "updated": _rfc3339_millis(int(time.time() * 1000)),
        "timeZone": "UTC",
        "accessRole": "owner",
        "defaultReminders": [],
        "items": [item.body for item in page],
    }
    if offset + page_size < len(items):
        body["nextPageToken"] = _encode_token(
            {
                "k": "p",
                "e": epoch,
                "f": q.since,
                "u": q.upto,
                "si": q.single,
                "sd": q.show_deleted,
                "tn": q.tmin,
                "tx": q.tmax,
                "h": q.horizon,
                "o": q.by_start,
                "n": offset + page_size,
            }
        )
    else:
        # Only the last page carries it, and it points at the listing's own snapshot.
        body["nextSyncToken"] = _encode_token({"k": "s", "e": epoch, "s": q.upto})
    return json_response(200, body)
