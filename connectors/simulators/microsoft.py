"""Local Microsoft identity platform + Graph v1.0 simulator.

Serves, over plain HTTP on loopback, the subset of login.microsoftonline.com and
graph.microsoft.com that the Outlook connector uses: OIDC discovery, the token
endpoint (refresh-token and device-code grants), `/me`, mail folders, per-folder
message delta and calendarView delta. Delta tokens are real change cursors over a
per-mailbox change log, so incremental syncs see exactly the adds and deletes made
since the link was issued. Faults (410, syncStateNotFound, 429, 5xx, dropped
sockets, replayed pages) can be injected to exercise connector recovery paths.

Tokens are opaque random strings; nothing here logs them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import pickle
import re
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_plus, urlencode, urlsplit

from connectors.simulators.model import SimAttendee, SimEvent, SimMessage

__all__ = ["GraphMailbox", "MicrosoftSimulator", "RequestRecord"]

ACCESS_TOKEN_LIFETIME_S = 3599  # msal treats < 5 min left as expired, so keep it long
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
FOLDERS = {"inbox": "Inbox", "sentitems": "Sent Items"}
FAULT_KINDS = frozenset(
    {"410", "syncStateNotFound", "resyncRequired", "429", "500", "503", "drop", "replay"}
)
_DELTA_FAULTS = frozenset({"410", "syncStateNotFound", "resyncRequired", "replay"})
_EXPIRED_ANSWERS = frozenset({"410", "syncStateNotFound", "resyncRequired"})
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_JSON_CT = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"
_RESPONSE_MAP = {
    "needsAction": "none",
    "accepted": "accepted",
    "declined": "declined",
    "tentative": "tentativelyAccepted",
}


# ---------------------------------------------------------------- public value types


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    user: str | None
    status: int  # 0 = socket dropped without an answer
    at: float


@dataclass
class _Fault:
    kind: str
    remaining: int
    path_contains: str | None
    retry_after: str


@dataclass
class _User:
    email: str
    tenant: str
    tid: str
    oid: str
    client_id: str
    client_secret: str
    display_name: str


@dataclass
class _RefreshToken:
    email: str
    client_id: str
    scope: str
    confidential: bool
    revoked: bool = False


@dataclass
class _AccessToken:
    email: str
    client_id: str
    expires_at: float


@dataclass
class _DeviceCode:
    user_code: str
    client_id: str
    scope: str
    tenant: str
    expires_at: float
    email: str | None = None  # set once approved
    used: bool = False


@dataclass
class _MailChange:
    seq: int
    msg_id: str
    folder: str
    msg: SimMessage | None  # None = deleted


@dataclass
class _EventChange:
    seq: int
    event_id: str
    event: SimEvent | None  # None = deleted
    changed_ms: int


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False


def _json(status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _Response(status, body, [("Content-Type", _JSON_CT), *headers])


def _graph_error(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> _Response:
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4()),
    }
    return _json(
        status, {"error": {"code": code, "message": message, "innerError": inner}}, headers
    )


def _aad_error(status: int, error: str, description: str, code: int) -> _Response:
    now = datetime.now(UTC)
    return _json(
        status,
        {
            "error": error,
            "error_description": f"{description}\r\nTrace ID: {uuid.uuid4()}\r\n"
            f"Timestamp: {now:%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [code],
            "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
    )


# ---------------------------------------------------------------- time helpers


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _iso_z(ms: int) -> str:
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_7z(ms: int) -> str:
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}0000Z"


def _graph_local(ms: int) -> str:
    # Graph dateTimeTimeZone: no offset, seven fractional digits, zone given separately.
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%S.0000000")


def _parse_iso(value: str) -> int:
    """ISO 8601 (Z, offset, naive = UTC, date only, up to 7 fractional digits) -> ms."""
    text = value.strip().strip("'\"")
    m = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?", text
    )
    if not m:
        raise ValueError(f"bad datetime {value!r}")
    day, clock, frac, zone = m.groups()
    frac = (frac or "")[:7]
    base = f"{day}T{clock or '00:00:00'}"
    if len(base) == 16:
        base += ":00"
    dt = datetime.fromisoformat(base).replace(tzinfo=UTC)
    if frac:
        dt += timedelta(microseconds=int(round(float(frac) * 1_000_000)))
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        dt -= sign * timedelta(hours=hh, minutes=mm)
    return _ms(dt)


# ---------------------------------------------------------------- message rendering


def _decode_words(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # malformed encoded-words: serve the raw text like Exchange does
        return value


def _addresses(values: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for name, addr in getaddresses([v for v in values if v]):
        if not addr or "@" not in addr:
            continue
        name = _decode_words(name).strip() if name else ""
        out.append({"emailAddress": {"name": name or addr, "address": addr}})
    return out


def _message_parts(msg: SimMessage) -> tuple[list[tuple[str, str]], str]:
    """Headers and decoded text body, from `raw` when the message carries one."""
    if msg.raw is not None:
        parsed = message_from_bytes(msg.raw)
        headers = [(k, str(v)) for k, v in parsed.items()]
        text = ""
        for part in parsed.walk():
            if part.get_content_maintype() == "multipart":
                continue
            if part.get_content_type() == "text/plain":
                payload = part.get_payload(decode=True) or b""
                text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
                break
        return headers, text
    ctype = Message()
    ctype["Content-Type"] = msg.header("Content-Type") or "text/plain; charset=utf-8"
    charset = ctype.get_content_charset() or "utf-8"
    try:
        text = msg.body.decode(charset, errors="replace")
    except LookupError:
        text = msg.body.decode("utf-8", errors="replace")
    return list(msg.headers), text


def _header(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def _message_json(msg: SimMessage, folder_id: str) -> dict[str, Any]:
    """Full Graph message resource (internetMessageHeaders included; callers trim)."""
    headers, text = _message_parts(msg)
    subject = _decode_words(" ".join(_header(headers, "Subject")))
    sent_ms = msg.internal_date_ms
    for value in _header(headers, "Date")[:1]:
        try:
            parsed = parsedate_to_datetime(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            sent_ms = _ms(parsed)
        except (TypeError, ValueError, IndexError):
            pass
    from_ = _addresses(_header(headers, "From"))
    sender = _addresses(_header(headers, "Sender")) or from_
    msgid = (_header(headers, "Message-ID") or [f"<{msg.id}@simulator.invalid>"])[0].strip()
    preview = msg.snippet or " ".join(text.split())[:255]
    change_key = base64.b64encode(
        hashlib.sha1(repr((msg.id, msg.label_ids, headers, text)).encode()).digest()[:12]
    ).decode()
    item: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": f'W/"{change_key}"',
        "id": msg.id,
        "createdDateTime": _iso_z(msg.internal_date_ms),
        "lastModifiedDateTime": _iso_z(msg.internal_date_ms),
        "changeKey": change_key,
        "categories": [],
        "receivedDateTime": _iso_z(msg.internal_date_ms),
        "sentDateTime": _iso_z(sent_ms),
        "hasAttachments": False,
        "internetMessageId": msgid,
        "subject": subject,
        "bodyPreview": preview,
        "importance": "normal",
        "parentFolderId": folder_id,
        "conversationId": msg.thread_id,
        "isRead": "UNREAD" not in msg.label_ids,
        "isDraft": False,
        "inferenceClassification": "focused",
        "body": {"contentType": "text", "content": text},
        "sender": sender[0] if sender else None,
        "from": from_[0] if from_ else None,
        "toRecipients": _addresses(_header(headers, "To")),
        "ccRecipients": _addresses(_header(headers, "Cc")),
        "bccRecipients": _addresses(_header(headers, "Bcc")),
        "replyTo": _addresses(_header(headers, "Reply-To")),
        "internetMessageHeaders": [{"name": k, "value": v} for k, v in headers],
    }
    return item


_MESSAGE_PROPS = {
    name.lower(): name
    for name in _message_json(
        SimMessage(id="x", thread_id="x", internal_date_ms=0, label_ids=[], headers=[]), "f"
    )
    if not name.startswith("@")
}


def _select(item: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if select is None:
        # Graph only returns internetMessageHeaders when asked for by name.
        return {k: v for k, v in item.items() if k != "internetMessageHeaders"}
    keep = {"@odata.type", "@odata.etag", "id", *select}
    return {k: v for k, v in item.items() if k in keep}


# ---------------------------------------------------------------- recurrence


_WEEKDAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}


def _parse_until(value: str) -> tuple[int, bool]:
    """UNTIL -> (ms, date_only)."""
    value = value.strip()
    if re.fullmatch(r"\d{8}", value):
        d = datetime.strptime(value, "%Y%m%d").replace(tzinfo=UTC)
        return _ms(d), True
    d = datetime.strptime(value.rstrip("Z"), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return _ms(d), False


def _add_months(dt: datetime, months: int) -> datetime | None:
    total = dt.month - 1 + months
    year, month = dt.year + total // 12, total % 12 + 1
    try:
        return dt.replace(year=year, month=month)
    except ValueError:  # e.g. the 31st in a short month: RFC 5545 skips it
        return None


def _occurrence_starts(ev: SimEvent, horizon_ms: int) -> Iterator[int]:
    """Start times (ms) of every occurrence up to `horizon_ms` (exclusive), in order."""
    if not ev.rrule:
        if ev.start_ms < horizon_ms:
            yield ev.start_ms
        return
    rule = {}
    for part in ev.rrule.removeprefix("RRULE:").split(";"):
        if "=" in part:
            key, _, val = part.partition("=")
            rule[key.strip().upper()] = val.strip()
    freq = rule.get("FREQ", "").upper()
    interval = max(1, int(rule.get("INTERVAL", "1") or 1))
    count = int(rule["COUNT"]) if "COUNT" in rule else None
    until: tuple[int, bool] | None = _parse_until(rule["UNTIL"]) if "UNTIL" in rule else None
    byday = sorted(
        {
            _WEEKDAYS[d[-2:].upper()]
            for d in rule.get("BYDAY", "").split(",")
            if d[-2:].upper() in _WEEKDAYS
        }
    )
    start = _dt(ev.start_ms)

    def candidates() -> Iterator[datetime]:
        if freq == "DAILY":
            for n in range(1_000_000):
                yield start + timedelta(days=n * interval)
        elif freq == "WEEKLY" and byday:
            week0 = start - timedelta(days=start.weekday())
            for n in range(1_000_000):
                week = week0 + timedelta(weeks=n * interval)
                for wd in byday:
                    cand = week + timedelta(days=wd)
                    if cand >= start:
                        yield cand
        elif freq == "WEEKLY":
            for n in range(1_000_000):
                yield start + timedelta(weeks=n * interval)
        elif freq in ("MONTHLY", "YEARLY"):
            step = interval * (12 if freq == "YEARLY" else 1)
            for n in range(100_000):
                cand = _add_months(start, n * step)
                if cand is not None:
                    yield cand
        else:  # unsupported frequency: serve the first instance only
            yield start

    emitted = 0
    for cand in candidates():
        cand_ms = _ms(cand)
        if count is not None and emitted >= count:
            return
        if until is not None:
            limit, date_only = until
            if (cand.date() > _dt(limit).date()) if date_only else cand_ms > limit:
                return
        if cand_ms >= horizon_ms:
            return
        emitted += 1
        yield cand_ms


def _occurrence_suffix(ms: int) -> str:
    return _dt(ms).strftime("%Y%m%dT%H%M%SZ")


# ---------------------------------------------------------------- mailbox


class GraphMailbox:
    """One Exchange mailbox: inbox, sent items and a calendar, with a change log."""

    def __init__(
        self, email: str, aliases: Sequence[str], display_name: str, lock: threading.RLock
    ) -> None:
        self.email = email
        self.aliases = list(aliases)
        self.display_name = display_name or email.split("@")[0]
        self._lock = lock
        self._seq = 0
        self._epoch = 0  # bumped by expire_delta_tokens; tokens carry the epoch they saw
        self._expired_answer = "syncStateNotFound"
        self._messages: dict[str, tuple[str, SimMessage]] = {}
        self._mail_log: list[_MailChange] = []
        self._events: dict[str, SimEvent] = {}
        self._event_log: list[_EventChange] = []
        self._cache: OrderedDict[tuple[Any, ...], list[tuple[str, str, Any]]] = OrderedDict()
        self._bucket: tuple[float, float] | None = None
        # Stored messages never change (updates append a new copy), so their JSON can
        # be memoised by object identity; the log keeps every object alive.
        self._rendered: dict[int, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state["_cache"] = OrderedDict()
        state["_bucket"] = None
        state["_rendered"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()  # replaced by the owning simulator on load

    def __repr__(self) -> str:
        counts = f"messages={len(self._messages)}, events={len(self._events)}"
        return f"GraphMailbox({self.email!r}, {counts})"

    # -- mutation (the test/generator side)

    def _next_seq(self) -> int:
        self._seq += 1
        self._cache.clear()
        return self._seq

    def add_message(self, msg: SimMessage) -> None:
        folder = "sentitems" if "SENT" in msg.label_ids else "inbox"
        stored = copy.deepcopy(msg)
        with self._lock:
            seq = self._next_seq()
            self._messages[msg.id] = (folder, stored)
            self._mail_log.append(_MailChange(seq, msg.id, folder, stored))

    def delete_message(self, message_id: str) -> None:
        with self._lock:
            folder, _ = self._messages.pop(message_id)  # KeyError for unknown ids
            self._mail_log.append(_MailChange(self._next_seq(), message_id, folder, None))

    def add_event(self, ev: SimEvent) -> None:
        with self._lock:
            self._put_event(copy.deepcopy(ev))

    def cancel_event(self, event_id: str) -> None:
        with self._lock:
            ev = copy.deepcopy(self._events[event_id])
            ev.status = "cancelled"
            self._put_event(ev)

    def cancel_occurrence(self, event_id: str, occurrence_start_ms: int) -> None:
        with self._lock:
            ev = copy.deepcopy(self._events[event_id])
            if occurrence_start_ms not in ev.cancelled_occurrences:
                ev.cancelled_occurrences.append(occurrence_start_ms)
            self._put_event(ev)

    def delete_event(self, event_id: str) -> None:
        with self._lock:
            del self._events[event_id]
            self._event_log.append(
                _EventChange(self._next_seq(), event_id, None, int(time.time() * 1000))
            )

    def _put_event(self, ev: SimEvent) -> None:
        self._events[ev.id] = ev
        self._event_log.append(_EventChange(self._next_seq(), ev.id, ev, int(time.time() * 1000)))

    # -- read helpers

    def render_message(self, msg: SimMessage, folder: str) -> dict[str, Any]:
        item = self._rendered.get(id(msg))
        if item is None:
            item = _message_json(msg, self.folder_id(folder))
            self._rendered[id(msg)] = item
        return item

    @property
    def message_ids(self) -> list[str]:
        with self._lock:
            return list(self._messages)

    def folder_id(self, folder: str) -> str:
        digest = hashlib.sha256(f"{self.email.lower()}|{folder}".encode()).digest()[:30]
        return "AQMk" + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def resolve_folder(self, name_or_id: str) -> str | None:
        lowered = name_or_id.lower()
        if lowered in FOLDERS:
            return lowered
        for folder in FOLDERS:
            if name_or_id == self.folder_id(folder):
                return folder
        return None

    def _owner_addresses(self) -> set[str]:
        return {a.lower() for a in (self.email, *self.aliases)}

    def folder_counts(self, folder: str) -> tuple[int, int]:
        msgs = [m for f, m in self._messages.values() if f == folder]
        return len(msgs), sum(1 for m in msgs if "UNREAD" in m.label_ids)

    # -- delta computation

    def _memo(self, key: tuple[Any, ...], build: Any) -> list[tuple[str, str, Any]]:
        hit = self._cache.get(key)
        if hit is None:
            hit = build()
            self._cache[key] = hit
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return hit

    def mail_entries(
        self,
        folder: str,
        since: int | None,
        upto: int,
        flt: tuple[str, int] | None,
        change_type: str | None,
    ) -> list[tuple[str, str, Any]]:
        """("item"|"removed", id, SimMessage|None) for the window (since, upto]."""

        def passes(msg: SimMessage) -> bool:
            if flt is None:
                return True
            op, bound = flt
            return msg.internal_date_ms >= bound if op == "ge" else msg.internal_date_ms > bound

        def build() -> list[tuple[str, str, Any]]:
            before: dict[str, tuple[str, SimMessage] | None] = {}
            after: dict[str, tuple[str, SimMessage] | None] = {}
            touched: dict[str, int] = {}
            for ch in self._mail_log:
                if ch.seq > upto:
                    break
                val = (ch.folder, ch.msg) if ch.msg is not None else None
                if since is not None and ch.seq <= since:
                    before[ch.msg_id] = val
                else:
                    touched[ch.msg_id] = ch.seq
                after[ch.msg_id] = val
            if since is None:
                if change_type in ("updated", "deleted"):
                    return []
                live = [v[1] for v in after.values() if v is not None and v[0] == folder]
                live = [m for m in live if passes(m)]
                live.sort(key=lambda m: (-m.internal_date_ms, m.id))
                return [("item", m.id, m) for m in live]
            out: list[tuple[str, str, Any]] = []
            for mid in sorted(touched, key=lambda i: (touched[i], i)):
                now, then = after.get(mid), before.get(mid)
                in_now = now is not None and now[0] == folder
                in_then = then is not None and then[0] == folder
                if in_now and now is not None:
                    kind = "updated" if in_then else "created"
                    if change_type in (None, kind) and passes(now[1]):
                        out.append(("item", mid, now[1]))
                elif in_then and change_type in (None, "deleted"):
                    out.append(("removed", mid, None))
            return out

        return self._memo(("mail", folder, since, upto, flt, change_type), build)

    def _instances(
        self, ev: SimEvent, changed_ms: int, range_start: int, range_end: int
    ) -> dict[str, dict[str, Any]]:
        if ev.status == "cancelled":
            return {}
        duration = ev.end_ms - ev.start_ms
        owner = self._owner_addresses()
        cancelled = set(ev.cancelled_occurrences)
        out: dict[str, dict[str, Any]] = {}
        for start in _occurrence_starts(ev, range_end):
            end = start + duration
            # calendarView semantics: anything overlapping [range_start, range_end).
            overlaps = end > range_start or (start == end and start >= range_start)
            if start in cancelled or not overlaps:
                continue
            if ev.rrule:
                inst_id = f"{ev.id}_{_occurrence_suffix(start)}"
                ical = f"{ev.ical_uid}_{_occurrence_suffix(start)}"
            else:
                inst_id, ical = ev.id, ev.ical_uid
            out[inst_id] = _event_json(ev, inst_id, ical, start, end, changed_ms, owner)
        return out

    def calendar_entries(
        self, since: int | None, upto: int, range_start: int, range_end: int
    ) -> list[tuple[str, str, Any]]:
        def build() -> list[tuple[str, str, Any]]:
            before: dict[str, tuple[SimEvent, int] | None] = {}
            after: dict[str, tuple[SimEvent, int] | None] = {}
            touched: dict[str, int] = {}
            for ch in self._event_log:
                if ch.seq > upto:
                    break
                val = (ch.event, ch.changed_ms) if ch.event is not None else None
                if since is not None and ch.seq <= since:
                    before[ch.event_id] = val
                else:
                    touched[ch.event_id] = ch.seq
                after[ch.event_id] = val

            def expand(val: tuple[SimEvent, int] | None) -> dict[str, dict[str, Any]]:
                return (
                    {} if val is None else self._instances(val[0], val[1], range_start, range_end)
                )

            if since is None:
                items = [inst for val in after.values() for inst in expand(val).values()]
                items.sort(key=lambda i: (i["start"]["dateTime"], i["id"]))
                return [("item", i["id"], i) for i in items]
            out: list[tuple[str, str, Any]] = []
            for eid in sorted(touched, key=lambda i: (touched[i], i)):
                old, new = expand(before.get(eid)), expand(after.get(eid))
                for inst_id, inst in sorted(new.items(), key=lambda kv: kv[1]["start"]["dateTime"]):
                    prev = old.get(inst_id)
                    if prev is None or _strip_modified(prev) != _strip_modified(inst):
                        out.append(("item", inst_id, inst))
                for inst_id in sorted(old.keys() - new.keys()):
                    out.append(("removed", inst_id, None))
            return out

        return self._memo(("cal", since, upto, range_start, range_end), build)


def _strip_modified(inst: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inst.items() if k not in ("lastModifiedDateTime", "changeKey")}


def _attendee_json(att: SimAttendee) -> dict[str, Any]:
    kind = "resource" if att.resource else "optional" if att.optional else "required"
    return {
        "type": kind,
        "status": {
            "response": _RESPONSE_MAP.get(att.response_status, "none"),
            "time": "0001-01-01T00:00:00Z",
        },
        "emailAddress": {"name": att.name or att.email, "address": att.email},
    }


def _event_json(
    ev: SimEvent, inst_id: str, ical: str, start: int, end: int, changed_ms: int, owner: set[str]
) -> dict[str, Any]:
    is_organizer = ev.organizer_email.lower() in owner
    own_response = "organizer" if is_organizer else "none"
    for att in ev.attendees:
        if att.email.lower() in owner and not is_organizer:
            own_response = _RESPONSE_MAP.get(att.response_status, "none")
    modified = ev.updated_ms or changed_ms
    item: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.event",
        "id": inst_id,
        "iCalUId": ical,
        "type": "occurrence" if ev.rrule else "singleInstance",
        "isCancelled": False,
        "isAllDay": ev.all_day,
        "isOrganizer": is_organizer,
        "subject": ev.summary,
        "showAs": "tentative" if ev.status == "tentative" else "busy",
        "start": {"dateTime": _graph_local(start), "timeZone": "UTC"},
        "end": {"dateTime": _graph_local(end), "timeZone": "UTC"},
        "organizer": {
            "emailAddress": {
                "name": ev.organizer_name or ev.organizer_email,
                "address": ev.organizer_email,
            }
        },
        # Graph leaves the organizer out of attendees.
        "attendees": [
            _attendee_json(a)
            for a in ev.attendees
            if not (a.organizer and a.email.lower() == ev.organizer_email.lower())
        ],
        "responseStatus": {"response": own_response, "time": "0001-01-01T00:00:00Z"},
        "lastModifiedDateTime": _iso_7z(modified),
    }
    if ev.rrule:
        item["seriesMasterId"] = ev.id
        item["originalStart"] = _iso_z(start)
    return item


# ---------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections give up eventually
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: paths carry emails, bodies carry tokens

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        resp = self.server.sim._handle(self, body)
        if resp.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(resp.status)
        for name, value in resp.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        self.wfile.write(resp.body)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: MicrosoftSimulator) -> None:
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        # Pooled keep-alive clients notice a stop immediately instead of hanging.
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---------------------------------------------------------------- routes

_R_DISCOVERY = re.compile(r"/(?P<t>[^/]+)/v2\.0/\.well-known/openid-configuration/?")
_R_DEVICECODE = re.compile(r"/(?P<t>[^/]+)/oauth2/v2\.0/devicecode/?")
_R_TOKEN = re.compile(r"/(?P<t>[^/]+)/oauth2/v2\.0/token/?")
_DELTA_FN = r"(?:microsoft\.graph\.)?delta(?:\(\))?/?"
_R_MAIL_DELTA = re.compile(
    r"/v1\.0/me/mailfolders(?:/(?P<f1>[^/()']+)|\('(?P<f2>[^']+)'\))/messages/" + _DELTA_FN, re.I
)
_R_ME_MSG_DELTA = re.compile(r"/v1\.0/me/messages/" + _DELTA_FN, re.I)
_R_CAL_DELTA = re.compile(r"/v1\.0/me/calendarview/" + _DELTA_FN, re.I)
_R_ME = re.compile(r"/v1\.0/me/?", re.I)
_R_FOLDERS = re.compile(r"/v1\.0/me/mailfolders/?", re.I)
_R_FOLDER = re.compile(r"/v1\.0/me/mailfolders(?:/(?P<f1>[^/()']+)|\('(?P<f2>[^']+)'\))/?", re.I)
_R_MESSAGE = re.compile(r"/v1\.0/me/messages/(?P<id>[^/]+)/?", re.I)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _prefer(headers: Any) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for raw in headers.get_all("Prefer") or []:
        for part in raw.split(","):
            key, _, val = part.strip().partition("=")
            if key:
                prefs[key.strip().lower()] = val.strip().strip('"')
    return prefs


class MicrosoftSimulator:
    """Microsoft identity platform + Graph simulator on a loopback port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        page_rate_limit: float | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.latency_s = latency_s
        self.page_rate_limit = page_rate_limit
        self.rotate_refresh_tokens = True
        self.device_code_interval = 1
        self.requests: list[RequestRecord] = []
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(32)  # signs delta tokens; persisted by save_state
        self._users: dict[str, _User] = {}
        self._mailboxes: dict[str, GraphMailbox] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._device_codes: dict[str, _DeviceCode] = {}
        self._faults: list[_Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> MicrosoftSimulator:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self._requested_port), self)
        self._requested_port = self.port  # a restart keeps the port so stored links stay valid
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"MicrosoftSimulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MicrosoftSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def graph_url(self) -> str:
        return self.base_url + "/v1.0"

    def authority_url(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}"

    # -- scenario setup

    def add_user(
        self,
        email: str,
        *,
        tenant: str = "contoso",
        aliases: Sequence[str] = (),
        refresh_token: str,
        client_id: str = "rapport-app",
        client_secret: str = "secret",
        display_name: str = "",
    ) -> GraphMailbox:
        """Register a user (or update one) and return the mailbox. The given refresh
        token is valid for `client_id` until revoked."""
        key = email.lower()
        with self._lock:
            user = _User(
                email=email,
                tenant=tenant,
                tid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{tenant.lower()}.tenant.invalid")),
                oid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{key}")),
                client_id=client_id,
                client_secret=client_secret,
                display_name=display_name or email.split("@")[0],
            )
            self._users[key] = user
            mb = self._mailboxes.get(key)
            if mb is None:
                mb = GraphMailbox(email, aliases, user.display_name, self._lock)
                self._mailboxes[key] = mb
            else:
                mb.aliases = list(aliases) or mb.aliases
                mb.display_name = user.display_name
            self._refresh_tokens[refresh_token] = _RefreshToken(
                email=key, client_id=client_id, scope="", confidential=bool(client_secret)
            )
            return mb

    def mailbox(self, email: str) -> GraphMailbox:
        key = email.lower()
        with self._lock:
            if key in self._mailboxes:
                return self._mailboxes[key]
            for mb in self._mailboxes.values():
                if key in {a.lower() for a in mb.aliases}:
                    return mb
        raise KeyError(email)

    def inject_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        path_contains: str | None = None,
        retry_after: str = "0.2",
    ) -> None:
        """Make the next `count` matching requests fail. Delta-only kinds (410,
        syncStateNotFound, resyncRequired, replay) match delta requests; the others
        match any Graph request, or any request whose path+query contains
        `path_contains` (use "/oauth2/" to hit the token endpoint)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self._faults.append(_Fault(kind, count, path_contains, retry_after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_delta_tokens(self, email: str, *, answer: str = "syncStateNotFound") -> None:
        """Invalidate every outstanding nextLink/deltaLink of the mailbox. Old links
        then answer `answer`: "syncStateNotFound" (400), "resyncRequired" (400) or
        "410" (Gone + Location)."""
        if answer not in _EXPIRED_ANSWERS:
            raise ValueError(f"answer must be one of {sorted(_EXPIRED_ANSWERS)}")
        with self._lock:
            mb = self.mailbox(email)
            mb._epoch += 1
            mb._expired_answer = answer

    def revoke_refresh_token(self, email: str) -> None:
        key = email.lower()
        with self._lock:
            for rt in self._refresh_tokens.values():
                if rt.email == key:
                    rt.revoked = True

    def expire_access_tokens(self, email: str) -> None:
        key = email.lower()
        with self._lock:
            for at in self._access_tokens.values():
                if at.email == key:
                    at.expires_at = 0.0

    def approve_device_code(self, user_code: str, email: str) -> None:
        with self._lock:
            for dc in self._device_codes.values():
                if dc.user_code == user_code:
                    if email.lower() not in self._users:
                        raise KeyError(email)
                    dc.email = email.lower()
                    return
        raise KeyError(user_code)

    # -- persistence

    def save_state(self, path: str) -> None:
        with self._lock:
            state = {
                "version": 1,
                "secret": self._secret,
                "users": self._users,
                "mailboxes": self._mailboxes,
                "refresh_tokens": self._refresh_tokens,
                "access_tokens": self._access_tokens,
                "device_codes": self._device_codes,
            }
            data = pickle.dumps(state)
        with open(path, "wb") as fh:
            fh.write(data)

    @classmethod
    def load_state(cls, path: str, **kw: Any) -> MicrosoftSimulator:
        """A new (not started) simulator with the saved users, mail, calendars and
        tokens; `kw` goes to the constructor (pass port= to keep stored links valid)."""
        with open(path, "rb") as fh:
            state = pickle.load(fh)  # noqa: S301 - our own demo state file
        sim = cls(**kw)
        sim._secret = state["secret"]
        sim._users = state["users"]
        sim._mailboxes = state["mailboxes"]
        sim._refresh_tokens = state["refresh_tokens"]
        sim._access_tokens = state["access_tokens"]
        sim._device_codes = state["device_codes"]
        for mb in sim._mailboxes.values():
            mb._lock = sim._lock
        return sim

    # -- request handling

    def _handle(self, handler: _Handler, body: bytes) -> _Response:
        parts = urlsplit(handler.path)
        path = unquote(parts.path) or "/"
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        host = handler.headers.get("Host") or f"{self.host}:{self.port}"
        record = RequestRecord(handler.command, path, query, None, 0, time.time())
        try:
            resp = self._route(handler, path, query, parts.query, host, body, record)
        except Exception as exc:  # a simulator bug must surface as a 500, not a hang
            resp = _graph_error(500, "SimulatorError", f"{type(exc).__name__}: {exc}")
        record.status = 0 if resp.drop else resp.status
        with self._lock:
            self.requests.append(record)
        if self.latency_s:
            time.sleep(self.latency_s)
        resp.headers.append(("request-id", str(uuid.uuid4())))
        return resp

    def _take_fault(self, kinds: frozenset[str], target: str, default_scope: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind not in kinds or fault.remaining <= 0:
                    continue
                if fault.path_contains is not None:
                    if fault.path_contains not in target:
                        continue
                elif not default_scope:
                    continue
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                return fault
        return None

    def _generic_fault(self, fault: _Fault) -> _Response:
        if fault.kind == "drop":
            return _Response(0, drop=True)
        if fault.kind == "429":
            return _graph_error(
                429,
                "TooManyRequests",
                "Application is over its MailboxConcurrency limit.",
                [("Retry-After", fault.retry_after)],
            )
        if fault.kind == "503":
            return _graph_error(
                503,
                "ServiceUnavailable",
                "Service unavailable.",
                [("Retry-After", fault.retry_after)],
            )
        return _graph_error(500, "InternalServerError", "Internal server error.")

    def _route(
        self,
        handler: _Handler,
        path: str,
        query: dict[str, str],
        raw_query: str,
        host: str,
        body: bytes,
        record: RequestRecord,
    ) -> _Response:
        target = path + ("?" + unquote(raw_query) if raw_query else "")
        is_graph = path.lower().startswith("/v1.0/")
        fault = self._take_fault(FAULT_KINDS - _DELTA_FAULTS, target, is_graph)
        if fault is not None:
            return self._generic_fault(fault)
        method = handler.command
        if not is_graph:
            m = _R_DISCOVERY.fullmatch(path)
            if m and method == "GET":
                return self._discovery(m["t"], host)
            m = _R_DEVICECODE.fullmatch(path)
            if m and method == "POST":
                return self._devicecode(m["t"], host, body)
            m = _R_TOKEN.fullmatch(path)
            if m and method == "POST":
                return self._token(m["t"], handler, body, record)
            return _json(404, {"error": "not_found", "error_description": f"No route {path}"})

        user = self._authenticate(handler.headers.get("Authorization"))
        if isinstance(user, _Response):
            return user
        record.user = user.email
        mb = self._mailboxes[user.email.lower()]
        base = f"http://{host}"
        if method != "GET":
            return _graph_error(405, "ErrorInvalidRequest", f"{method} is not supported here.")
        if _R_ME_MSG_DELTA.fullmatch(path):
            return _graph_error(
                400,
                "ErrorInvalidUrlQuery",
                "Change tracking is not supported against 'microsoft.graph.message'; "
                "use /me/mailFolders/{id}/messages/delta.",
            )
        m = _R_MAIL_DELTA.fullmatch(path)
        if m:
            return self._mail_delta(handler, mb, m["f1"] or m["f2"], query, base)
        if _R_CAL_DELTA.fullmatch(path):
            return self._calendar_delta(handler, mb, query, base)
        if _R_ME.fullmatch(path):
            return self._me(user, mb, base)
        if _R_FOLDERS.fullmatch(path):
            with self._lock:
                folders = [self._folder_json(mb, f) for f in FOLDERS]
            return _json(
                200,
                {
                    "@odata.context": f"{base}/v1.0/$metadata#users('{user.oid}')/mailFolders",
                    "value": folders,
                },
            )
        m = _R_FOLDER.fullmatch(path)
        if m:
            folder = mb.resolve_folder(m["f1"] or m["f2"])
            if folder is None:
                return _graph_error(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            with self._lock:
                return _json(200, self._folder_json(mb, folder))
        m = _R_MESSAGE.fullmatch(path)
        if m:
            return self._get_message(mb, m["id"], query)
        return _graph_error(400, "BadRequest", f"Resource not found for the segment '{path}'.")

    # -- identity platform

    def _tenant_known(self, tenant: str) -> bool:
        t = tenant.lower()
        if t in ("common", "organizations"):
            return True
        return any(t in (u.tenant.lower(), u.tid) for u in self._users.values())

    def _discovery(self, tenant: str, host: str) -> _Response:
        with self._lock:
            if not self._tenant_known(tenant):
                return _aad_error(
                    400,
                    "invalid_tenant",
                    f"AADSTS90002: Tenant '{tenant}' not found.",
                    90002,
                )
            tid = next(
                (
                    u.tid
                    for u in self._users.values()
                    if tenant.lower() in (u.tenant.lower(), u.tid)
                ),
                "{tenantid}",
            )
        # https on purpose: msal only accepts https endpoints; clients rewrite to http.
        root = f"https://{host}/{tenant}"
        return _json(
            200,
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"https://{host}/{tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"https://{host}/{tid}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"https://{host}/oidc/userinfo",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nbf",
                    "name",
                    "oid",
                    "tid",
                    "preferred_username",
                    "email",
                ],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            },
        )

    def _devicecode(self, tenant: str, host: str, body: bytes) -> _Response:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8")).items()}
        client_id = form.get("client_id", "")
        with self._lock:
            if not any(u.client_id == client_id for u in self._users.values()):
                return _aad_error(
                    400,
                    "unauthorized_client",
                    f"AADSTS700016: Application '{client_id}' was not found.",
                    700016,
                )
            user_code = "".join(
                secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9)
            )
            device_code = "simDC." + secrets.token_urlsafe(32)
            self._device_codes[device_code] = _DeviceCode(
                user_code=user_code,
                client_id=client_id,
                scope=form.get("scope", ""),
                tenant=tenant,
                expires_at=time.time() + 900,
            )
        verification = f"https://{host}/devicelogin"
        return _json(
            200,
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification,
                "expires_in": 900,
                "interval": self.device_code_interval,
                "message": f"To sign in, use a web browser to open the page {verification} "
                f"and enter the code {user_code} to authenticate.",
            },
        )

    def _client_credentials(
        self, handler: _Handler, form: dict[str, str]
    ) -> tuple[str, str | None]:
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        auth = handler.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth[6:].strip()).decode("utf-8")
                cid, _, sec = raw.partition(":")
                client_id, secret = unquote_plus(cid) or client_id, unquote_plus(sec)
            except (binascii.Error, UnicodeDecodeError):
                pass
        return client_id, secret

    def _token(
        self, tenant: str, handler: _Handler, body: bytes, record: RequestRecord
    ) -> _Response:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8")).items()}
        grant = form.get("grant_type", "")
        client_id, secret = self._client_credentials(handler, form)
        host = handler.headers.get("Host") or f"{self.host}:{self.port}"
        with self._lock:
            if not self._tenant_known(tenant):
                return _aad_error(
                    400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.", 90002
                )
            if grant == "refresh_token":
                rt = self._refresh_tokens.get(form.get("refresh_token", ""))
                if rt is None or rt.revoked:
                    return _aad_error(
                        400,
                        "invalid_grant",
                        "AADSTS70008: The provided authorization code or refresh token has "
                        "expired due to inactivity. Send a new interactive authorization request "
                        "for this user and resource.",
                        70008,
                    )
                user = self._users[rt.email]
                if rt.client_id != client_id:
                    return _aad_error(
                        400,
                        "invalid_grant",
                        "AADSTS70000: Provided grant is invalid or malformed.",
                        70000,
                    )
                bad = self._check_secret(user, secret, required=rt.confidential)
                if bad is not None:
                    return bad
                if not self._tenant_matches(tenant, user):
                    return _aad_error(
                        400,
                        "invalid_grant",
                        "AADSTS50020: User account from identity provider does not "
                        "exist in tenant.",
                        50020,
                    )
                scope = form.get("scope") or rt.scope or "openid profile offline_access"
                record.user = user.email
                return _json(200, self._issue(user, client_id, scope, host, bool(secret)))
            if grant == _DEVICE_GRANT:
                dc = self._device_codes.get(form.get("device_code", ""))
                if dc is None or dc.used:
                    return _aad_error(
                        400,
                        "invalid_grant",
                        "AADSTS70000: Provided grant is invalid or malformed.",
                        70000,
                    )
                if time.time() > dc.expires_at:
                    return _aad_error(
                        400,
                        "expired_token",
                        "AADSTS70020: The provided value for the input parameter "
                        "'device_code' is not valid. This device code has expired.",
                        70020,
                    )
                if dc.email is None:
                    return _aad_error(
                        400,
                        "authorization_pending",
                        "AADSTS70016: OAuth 2.0 device flow error. Authorization is "
                        "pending. Continue polling.",
                        70016,
                    )
                user = self._users[dc.email]
                if dc.client_id != client_id:
                    return _aad_error(
                        400,
                        "invalid_grant",
                        "AADSTS70000: Provided grant is invalid or malformed.",
                        70000,
                    )
                if secret:
                    bad = self._check_secret(user, secret, required=False)
                    if bad is not None:
                        return bad
                dc.used = True
                record.user = user.email
                return _json(
                    200,
                    self._issue(user, client_id, form.get("scope") or dc.scope, host, bool(secret)),
                )
        return _aad_error(
            400,
            "unsupported_grant_type",
            f"AADSTS70003: The app requested an unsupported grant type '{grant}'.",
            70003,
        )

    @staticmethod
    def _tenant_matches(tenant: str, user: _User) -> bool:
        return tenant.lower() in ("common", "organizations", user.tenant.lower(), user.tid)

    @staticmethod
    def _check_secret(user: _User, secret: str | None, *, required: bool) -> _Response | None:
        if secret is None or secret == "":
            if required and user.client_secret:
                return _aad_error(
                    401,
                    "invalid_client",
                    "AADSTS7000218: The request body must contain the following "
                    "parameter: 'client_assertion' or 'client_secret'.",
                    7000218,
                )
            return None
        if not hmac.compare_digest(secret, user.client_secret):
            return _aad_error(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                "being sent in the request is the client secret value, not the "
                "client secret ID.",
                7000215,
            )
        return None

    def _issue(
        self, user: _User, client_id: str, scope: str, host: str, confidential: bool
    ) -> dict[str, Any]:
        requested = scope.split()
        now = int(time.time())
        access_token = "simAT." + secrets.token_urlsafe(32)
        self._access_tokens[access_token] = _AccessToken(
            user.email.lower(), client_id, time.time() + ACCESS_TOKEN_LIFETIME_S
        )
        granted = [s for s in requested if s != "offline_access"]
        resp: dict[str, Any] = {
            "token_type": "Bearer",
            # Echo the request (minus offline_access) so msal's cache finds the AT again.
            "scope": " ".join(granted),
            "expires_in": ACCESS_TOKEN_LIFETIME_S,
            "ext_expires_in": ACCESS_TOKEN_LIFETIME_S,
            "access_token": access_token,
        }
        if "offline_access" in requested:
            refresh = "simRT." + secrets.token_urlsafe(40)
            self._refresh_tokens[refresh] = _RefreshToken(
                user.email.lower(), client_id, scope, confidential
            )
            resp["refresh_token"] = refresh
        if "openid" in requested:
            claims = {
                "aud": client_id,
                "iss": f"https://{host}/{user.tid}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + ACCESS_TOKEN_LIFETIME_S,
                "name": user.display_name,
                "oid": user.oid,
                "preferred_username": user.email,
                "sub": _b64url(hashlib.sha256(f"{user.oid}|{client_id}".encode()).digest()[:32]),
                "tid": user.tid,
                "ver": "2.0",
            }
            header = _b64url(json.dumps({"typ": "JWT", "alg": "none"}).encode())
            resp["id_token"] = f"{header}.{_b64url(json.dumps(claims).encode())}."
        resp["client_info"] = _b64url(json.dumps({"uid": user.oid, "utid": user.tid}).encode())
        return resp

    def _authenticate(self, header: str | None) -> _User | _Response:
        challenge = [
            (
                "WWW-Authenticate",
                'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
                'oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"',
            )
        ]
        if not header or not header.lower().startswith("bearer ") or not header[7:].strip():
            return _graph_error(
                401, "InvalidAuthenticationToken", "Access token is empty.", challenge
            )
        with self._lock:
            at = self._access_tokens.get(header[7:].strip())
            if at is None:
                return _graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "IDX14100: JWT is not well formed.",
                    challenge,
                )
            if at.expires_at < time.time():
                return _graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                    challenge,
                )
            return self._users[at.email]

    # -- Graph resources

    def _me(self, user: _User, mb: GraphMailbox, base: str) -> _Response:
        proxies = [f"SMTP:{mb.email}"] + [f"smtp:{a}" for a in mb.aliases]
        return _json(
            200,
            {
                "@odata.context": f"{base}/v1.0/$metadata#users/$entity",
                "businessPhones": [],
                "displayName": mb.display_name,
                "givenName": None,
                "jobTitle": None,
                "mail": mb.email,
                "mobilePhone": None,
                "officeLocation": None,
                "preferredLanguage": "en-US",
                "surname": None,
                "userPrincipalName": mb.email,
                "id": user.oid,
                "proxyAddresses": proxies,
            },
        )

    @staticmethod
    def _folder_json(mb: GraphMailbox, folder: str) -> dict[str, Any]:
        total, unread = mb.folder_counts(folder)
        return {
            "id": mb.folder_id(folder),
            "displayName": FOLDERS[folder],
            "parentFolderId": mb.folder_id("msgfolderroot"),
            "childFolderCount": 0,
            "unreadItemCount": unread,
            "totalItemCount": total,
            "isHidden": False,
        }

    def _get_message(self, mb: GraphMailbox, message_id: str, query: dict[str, str]) -> _Response:
        select, err = self._parse_select(query)
        if err is not None:
            return err
        with self._lock:
            found = mb._messages.get(message_id)
            if found is None:
                return _graph_error(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            folder, msg = found
            item = mb.render_message(msg, folder)
        return _json(200, _select(item, select))

    @staticmethod
    def _parse_select(query: dict[str, str]) -> tuple[list[str] | None, _Response | None]:
        raw = query.get("$select", query.get("select"))
        if raw is None:
            return None, None
        out = []
        for name in (s.strip() for s in raw.split(",")):
            if not name:
                continue
            canonical = _MESSAGE_PROPS.get(name.lower())
            if canonical is None:
                return None, _graph_error(
                    400,
                    "RequestBroker--ParseUri",
                    f"Could not find a property named '{name}' on type 'microsoft.graph.message'.",
                )
            out.append(canonical)
        return out, None

    # -- delta tokens

    def _encode_token(self, state: dict[str, Any]) -> str:
        data = _b64url(json.dumps(state, separators=(",", ":"), sort_keys=True).encode())
        sig = _b64url(hmac.new(self._secret, data.encode(), hashlib.sha256).digest()[:12])
        return f"{data}.{sig}"

    def _decode_token(self, token: str) -> dict[str, Any] | None:
        data, _, sig = token.partition(".")
        want = _b64url(hmac.new(self._secret, data.encode(), hashlib.sha256).digest()[:12])
        if not sig or not hmac.compare_digest(sig, want):
            return None
        try:
            state = json.loads(_unb64url(data))
        except (ValueError, binascii.Error):
            return None
        return state if isinstance(state, dict) else None

    def _page_size(
        self, handler: _Handler, state: dict[str, Any]
    ) -> tuple[int, list[tuple[str, str]]]:
        prefs = _prefer(handler.headers)
        applied = []
        size = state.get("top") or DEFAULT_PAGE_SIZE
        raw = prefs.get("odata.maxpagesize")
        if raw and raw.isdigit() and int(raw) > 0:
            size = int(raw)
            state["top"] = size  # later pages keep it even if the client drops the header
            applied.append(f"odata.maxpagesize={min(size, MAX_PAGE_SIZE)}")
        if prefs.get("idtype", "").lower() == "immutableid":
            applied.append('IdType="ImmutableId"')  # ids are immutable here anyway
        headers = [("Preference-Applied", ", ".join(applied))] if applied else []
        return min(int(size), MAX_PAGE_SIZE), headers

    def _rate_limited(self, mb: GraphMailbox) -> _Response | None:
        rate = self.page_rate_limit
        if not rate or rate <= 0:
            return None
        capacity = max(1.0, float(rate))
        now = time.monotonic()
        with self._lock:
            tokens, last = mb._bucket or (capacity, now)
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1.0:
                mb._bucket = (tokens - 1.0, now)
                return None
            mb._bucket = (tokens, now)
            wait = (1.0 - tokens) / rate
        return _graph_error(
            429,
            "TooManyRequests",
            "Application is over its MailboxConcurrency limit.",
            [("Retry-After", f"{max(wait, 0.01):.2f}")],
        )

    def _expired(self, mb: GraphMailbox, kind: str, location: str) -> _Response:
        if kind == "410":
            return _graph_error(
                410,
                "SyncStateInvalid",
                "The sync state is no longer valid. Restart from the Location URL.",
                [("Location", location)],
            )
        if kind == "resyncRequired":
            return _graph_error(
                400,
                "resyncRequired",
                "Resync required. Replace any local cached copies with a full sync.",
            )
        return _graph_error(400, "SyncStateNotFound", "The sync state generation was not found.")

    def _delta_common(
        self,
        handler: _Handler,
        mb: GraphMailbox,
        state: dict[str, Any],
        initial_url: str,
    ) -> _Response | bool:
        """Expiry, delta faults and throttling; returns a response or the replay flag."""
        if state["e"] != mb._epoch:
            return self._expired(mb, mb._expired_answer, initial_url)
        target = urlsplit(handler.path)
        target_text = unquote(target.path) + ("?" + unquote(target.query) if target.query else "")
        fault = self._take_fault(_DELTA_FAULTS - {"replay"}, target_text, True)
        if fault is not None:
            return self._expired(mb, fault.kind, initial_url)
        limited = self._rate_limited(mb)
        if limited is not None:
            return limited
        return False

    def _page(
        self,
        handler: _Handler,
        mb: GraphMailbox,
        state: dict[str, Any],
        entries: list[tuple[str, str, Any]],
        render: Any,
        link_base: str,
        context: str,
    ) -> _Response:
        size, headers = self._page_size(handler, state)
        offset = state["o"]
        chunk = entries[offset : offset + size]
        values: list[dict[str, Any]] = []
        for kind, item_id, payload in chunk:
            if kind == "removed":
                values.append({"id": item_id, "@removed": {"reason": "deleted"}})
            else:
                values.append(render(payload))
        if values:
            target = urlsplit(handler.path)
            text = unquote(target.path) + ("?" + unquote(target.query) if target.query else "")
            if self._take_fault(frozenset({"replay"}), text, True) is not None:
                values = values + copy.deepcopy(values)
        out: dict[str, Any] = {"@odata.context": context, "value": values}
        if offset + size < len(entries):
            nxt = dict(state, o=offset + size)
            out["@odata.nextLink"] = f"{link_base}?$skiptoken={self._encode_token(nxt)}"
        else:
            done = dict(state, s=state["t"], t=None, o=0)
            out["@odata.deltaLink"] = f"{link_base}?$deltatoken={self._encode_token(done)}"
        return _json(200, out, headers)

    def _token_from_query(
        self, query: dict[str, str], mb: GraphMailbox, kind: str
    ) -> tuple[dict[str, Any] | None, _Response | None]:
        raw = query.get("$skiptoken") or query.get("$deltatoken")
        if raw is None:
            return None, None
        state = self._decode_token(raw)
        if state is None or state.get("k") != kind or state.get("u") != mb.email.lower():
            return None, _graph_error(
                400, "SyncStateNotFound", "The sync state token is malformed or belongs elsewhere."
            )
        return state, None

    def _mail_delta(
        self,
        handler: _Handler,
        mb: GraphMailbox,
        folder_ref: str,
        query: dict[str, str],
        base: str,
    ) -> _Response:
        folder = mb.resolve_folder(folder_ref)
        if folder is None:
            return _graph_error(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        state, err = self._token_from_query(query, mb, "mail")
        if err is not None:
            return err
        if state is None:
            select, err = self._parse_select(query)
            if err is not None:
                return err
            flt = None
            raw_filter = query.get("$filter", query.get("filter"))
            if raw_filter:
                fm = re.fullmatch(r"\s*receivedDateTime\s+(ge|gt)\s+(\S+)\s*", raw_filter, re.I)
                if not fm:
                    return _graph_error(
                        400,
                        "ErrorInvalidUrlQueryFilter",
                        "The query filter contains one or more invalid nodes.",
                    )
                try:
                    flt = [fm[1].lower(), _parse_iso(fm[2])]
                except ValueError:
                    return _graph_error(
                        400, "ErrorInvalidUrlQueryFilter", f"Invalid datetime in filter: {fm[2]}"
                    )
            change_type = query.get("changeType")
            if change_type is not None and change_type not in ("created", "updated", "deleted"):
                return _graph_error(
                    400, "ErrorInvalidUrlQuery", f"Invalid changeType '{change_type}'."
                )
            top = query.get("$top", query.get("top"))
            options = {
                k: v
                for k, v in query.items()
                if k.lstrip("$").lower() in ("select", "filter", "changetype", "top")
            }
            state = {
                "k": "mail",
                "u": mb.email.lower(),
                "e": mb._epoch,
                "f": folder,
                "s": None,
                "t": None,
                "o": 0,
                "sel": select,
                "flt": flt,
                "ct": change_type,
                "top": int(top) if top and top.isdigit() else None,
                "q": options,
            }
        if state["f"] != folder:
            return _graph_error(
                400, "SyncStateNotFound", "The sync state token belongs to another folder."
            )
        initial = f"{base}/v1.0/me/mailFolders/{folder}/messages/delta"
        if state.get("q"):
            initial += "?" + urlencode(state["q"])
        common = self._delta_common(handler, mb, state, initial)
        if isinstance(common, _Response):
            return common
        with self._lock:
            if state["t"] is None:
                state["t"] = mb._seq  # snapshot: pages of this round all read this point
            flt = tuple(state["flt"]) if state["flt"] else None
            entries = mb.mail_entries(folder, state["s"], state["t"], flt, state["ct"])
            folder_id = mb.folder_id(folder)
            select = state["sel"]

            def render(msg: SimMessage) -> dict[str, Any]:
                return _select(mb.render_message(msg, folder), select)

            link = f"{base}/v1.0/me/mailFolders('{folder_id}')/messages/microsoft.graph.delta()"
            return self._page(
                handler,
                mb,
                state,
                entries,
                render,
                link,
                f"{base}/v1.0/$metadata#Collection(message)",
            )

    def _calendar_delta(
        self, handler: _Handler, mb: GraphMailbox, query: dict[str, str], base: str
    ) -> _Response:
        state, err = self._token_from_query(query, mb, "cal")
        if err is not None:
            return err
        if state is None:
            lowered = {k.lower(): v for k, v in query.items()}
            start, end = lowered.get("startdatetime"), lowered.get("enddatetime")
            if not start or not end:
                return _graph_error(
                    400,
                    "ErrorInvalidParameter",
                    "This request requires a time window specified by the query string "
                    "parameters StartDateTime and EndDateTime.",
                )
            try:
                rs, re_ = _parse_iso(start), _parse_iso(end)
            except ValueError as exc:
                return _graph_error(400, "ErrorInvalidParameter", str(exc))
            if re_ <= rs:
                return _graph_error(
                    400, "ErrorInvalidParameter", "EndDateTime must be after StartDateTime."
                )
            state = {
                "k": "cal",
                "u": mb.email.lower(),
                "e": mb._epoch,
                "s": None,
                "t": None,
                "o": 0,
                "rs": rs,
                "re": re_,
                "top": None,
                "q": {"startDateTime": start, "endDateTime": end},
            }
        initial = f"{base}/v1.0/me/calendarView/delta?" + urlencode(state["q"])
        common = self._delta_common(handler, mb, state, initial)
        if isinstance(common, _Response):
            return common
        with self._lock:
            if state["t"] is None:
                state["t"] = mb._seq
            entries = mb.calendar_entries(state["s"], state["t"], state["rs"], state["re"])
            return self._page(
                handler,
                mb,
                state,
                entries,
                dict,
                f"{base}/v1.0/me/calendarView/delta",
                f"{base}/v1.0/$metadata#Collection(event)",
            )
