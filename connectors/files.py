"""File import: backfill an account from mbox, a folder of .eml, or .ics exports (DESIGN §3).

Google Takeout and Outlook exports carry no provider ids, so ids are derived from
content and re-importing the same files lands nothing new:

  message_id = sha1(RFC Message-ID, else the raw message bytes)[:24]
  thread_id  = hex(X-GM-THRID) when Takeout gives it (the Gmail API's thread id),
               else sha1(root of References / In-Reply-To / own Message-ID)[:24]
  event_id   = sha1(UID + occurrence start, UTC ISO)[:24]

Rows have exactly the shapes of the Gmail/Calendar connectors (provider "file",
streams "mail_import" and "ics_import"), so the transforms need no special case.
"""

from __future__ import annotations

import codecs
import email.policy
import email.utils
import hashlib
import html
import logging
import mailbox
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import icalendar
import polars as pl
import recurring_ical_events

from connectors import lake
from connectors.base import ProgressFn, SyncResult
from connectors.mailparse import (
    ADDRESS_ROLES,
    Blocklist,
    Malformed,
    parse_address_headers,
    parse_date,
)
from transforms.addresses import canonical_key, normalise_address

log = logging.getLogger("rapport.files")

PROVIDER = "file"
MAIL_STREAM = "mail_import"
ICS_STREAM = "ics_import"
FLUSH_EVERY = 2000  # items per landed Parquet file, as the Gmail connector
SNIPPET_CHARS = 200
HEAD_BYTES = 64 * 1024  # enough of a file to recognise its kind

MBOX_EXTS = {".mbox", ".mbx"}
EML_EXTS = {".eml"}
ICS_EXTS = {".ics", ".ical", ".icalendar"}

_PARSER = BytesParser(policy=email.policy.default)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")  # RFC 5322 field name, then a colon
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*]+)(?:\*[^?]*)?\?[bBqQ]\?")
_MSGID = re.compile(r"<[^<>\s]+>")
_TAG = re.compile(r"<[^>]*>")
_DROP_BLOCKS = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAKS = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h[1-6])\b[^>]*>", re.IGNORECASE)


@dataclass
class ImportResult(SyncResult):
    """SyncResult plus what was already in the lake (re-imports add nothing)."""

    skipped: int = 0


# ----------------------------------------------------------------- detection
def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(HEAD_BYTES).removeprefix(b"\xef\xbb\xbf")


def _looks_like_mbox(head: bytes) -> bool:
    return head.startswith(b"From ")


def _looks_like_ics(head: bytes) -> bool:
    return b"BEGIN:VCALENDAR" in head.upper()


def _looks_like_eml(head: bytes) -> bool:
    lines = head.lstrip(b"\r\n").splitlines()
    if lines and lines[0].startswith(b"From "):  # some tools keep the mbox separator
        lines = lines[1:]
    if not lines or not _HEADER_LINE.match(lines[0]):
        return False
    names = set()
    for line in lines:
        if not line.strip():
            break
        if _HEADER_LINE.match(line):
            names.add(line.split(b":", 1)[0].strip().lower())
    return bool(names & {b"from", b"date", b"message-id", b"received", b"subject"})


def detect_kind(path: Path) -> str:
    """-> "mbox" | "eml" | "eml_dir" | "ics", checked by extension and by content."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        if any(_eml_files(path)):
            return "eml_dir"
        raise ValueError(f"{path}: folder holds no .eml files")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    head = _head(path)
    if not head.strip():
        raise ValueError(f"{path}: file is empty")
    ext = path.suffix.lower()
    if ext in MBOX_EXTS:
        if _looks_like_mbox(head):
            return "mbox"
        raise ValueError(f"{path}: .mbox file does not start with a 'From ' separator line")
    if ext in EML_EXTS:
        if _looks_like_eml(head):
            return "eml"
        raise ValueError(f"{path}: .eml file does not start with RFC 822 mail headers")
    if ext in ICS_EXTS:
        if _looks_like_ics(head):
            return "ics"
        raise ValueError(f"{path}: .ics file does not contain BEGIN:VCALENDAR")
    if ext == "":
        # Thunderbird and Apple Mail keep mbox files without an extension.
        if _looks_like_mbox(head):
            return "mbox"
        if _looks_like_ics(head):
            return "ics"
        if _looks_like_eml(head):
            return "eml"
        raise ValueError(f"{path}: not an mbox, .eml or .ics file")
    raise ValueError(
        f"{path}: unsupported file type {ext!r} (expected .mbox, .eml, .ics or a folder of .eml)"
    )


def _eml_files(folder: Path) -> list[Path]:
    # Exports often nest folders (one per mail folder): take every .eml below, in a stable order.
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EML_EXTS),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


# ----------------------------------------------------------------- helpers
def _sha24(data: str | bytes) -> str:
    return hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()[:24]


def _clean(text: str | None) -> str | None:
    """Undo surrogate escapes (raw 8-bit headers): Parquet needs valid UTF-8."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(_clean(text).split())  # type: ignore[union-attr]
    return text or None


def _msgid(value: str | None) -> str | None:
    """The canonical <id> form, so Message-ID, In-Reply-To and References agree."""
    if not value:
        return None
    found = _MSGID.search(value)
    if found:
        return found.group(0)
    value = "".join(value.split())
    return f"<{value.strip('<>')}>" if value.strip("<>") else None


def _known_charset(name: str) -> bool:
    try:
        # Some codecs (base64, zip, rot13) are not text encodings: not charsets either.
        return codecs.lookup(name)._is_text_encoding
    except (LookupError, ValueError, TypeError):
        return False


def _utc(dt: datetime | date) -> datetime:
    """DATE -> midnight UTC; floating time -> read as UTC; aware -> converted to UTC."""
    if not isinstance(dt, datetime):
        return datetime(dt.year, dt.month, dt.day, tzinfo=UTC)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _sane(dt: datetime | None) -> datetime | None:
    # Epoch-zero and far-future dates are client bugs, not dates: fall back instead.
    if dt is None or dt.year < 1971 or dt.year > 2200:
        return None
    return dt


# ----------------------------------------------------------------- mail
def _raw_header_values(msg: EmailMessage, name: str) -> list[str]:
    name = name.lower()
    return [_clean(str(v)) or "" for n, v in msg.raw_items() if n.lower() == name]


def _raw_first(msg: EmailMessage, name: str) -> str | None:
    """First value as written (unfolded): ids and list headers need no decoding."""
    values = _raw_header_values(msg, name)
    return _one_line(values[0]) if values else None


def _decoded(msg: EmailMessage, name: str) -> str | None:
    """RFC 2047-decoded text of an unstructured header (Subject, X-Gmail-Labels)."""
    try:
        value = msg.get(name)
    except Exception:  # fall back to the raw text rather than lose the mail
        return _raw_first(msg, name)
    return None if value is None else _one_line(str(value))


def _check_header_charsets(msg: EmailMessage) -> None:
    """An encoded word in an unknown charset cannot be decoded faithfully: quarantine."""
    for name in ("subject", *ADDRESS_ROLES):
        for value in _raw_header_values(msg, name):
            for charset in _ENCODED_WORD_CHARSET.findall(value):
                if not _known_charset(charset):
                    raise Malformed("undecodable charset in header", charset[:40])


def _participants(msg: EmailMessage) -> list[tuple[str, str, str | None]]:
    """(role, address, display name). Groups are flattened; empty groups give nothing."""
    out: list[tuple[str, str, str | None]] = []
    try:
        for header, role in ADDRESS_ROLES.items():
            for value in msg.get_all(header) or []:
                for addr in value.addresses:
                    spec = _clean(addr.addr_spec or "").strip()
                    if spec and spec != "<>":
                        out.append((role, spec, _one_line(addr.display_name)))
        return out
    except Exception:  # the stdlib parser has edge-case crashes
        raw = {h: _raw_header_values(msg, h) for h in ADDRESS_ROLES}
        return parse_address_headers({h: v for h, v in raw.items() if v})


def _sent_at(msg: EmailMessage, from_line_date: datetime | None) -> datetime:
    sent = _sane(parse_date(_raw_first(msg, "date")))
    if sent is not None:
        return sent
    if from_line_date is not None:
        return from_line_date
    # A Received header ends with "; <date>"; the newest hop is closest to delivery.
    received = [v.rsplit(";", 1) for v in _raw_header_values(msg, "received")]
    dates = [d for v in received if len(v) == 2 and (d := _sane(parse_date(v[1]))) is not None]
    if dates:
        return max(dates)
    raise Malformed("no usable date")


def _thread_id(msg: EmailMessage, rfc_id: str | None, message_id: str) -> str:
    thrid = _raw_first(msg, "x-gm-thrid")
    if thrid:
        # Takeout writes the Gmail thread id in decimal; the API uses hex.
        return format(int(thrid), "x") if thrid.isascii() and thrid.isdigit() else _sha24(thrid)
    refs = _MSGID.findall(" ".join(_raw_header_values(msg, "references")))
    root = refs[0] if refs else _msgid(_raw_first(msg, "in-reply-to")) or rfc_id
    return _sha24(root) if root else message_id


def _html_to_text(markup: str) -> str:
    # Crude on purpose: a snippet and a searchable body, not a rendering.
    text = _DROP_BLOCKS.sub(" ", markup)
    text = html.unescape(_TAG.sub(" ", _BREAKS.sub("\n", text)))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _body_text(msg: EmailMessage) -> str | None:
    part = msg.get_body(preferencelist=("plain",))
    is_html = False
    if part is None:
        part = msg.get_body(preferencelist=("html",))
        is_html = part is not None
    if part is None:
        return None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    charset = (_clean(part.get_content_charset()) or "utf-8").strip().lower()
    if charset in ("us-ascii", "ascii"):
        charset = "utf-8"  # undeclared 8-bit text is mostly UTF-8; ASCII is a subset
    if not _known_charset(charset):
        raise Malformed("undecodable charset", charset[:40])
    # Known charset but invalid bytes: keep the mail, mark the bad bytes (U+FFFD).
    text = data.decode(charset, errors="replace").replace("\r\n", "\n")
    return _html_to_text(text) if is_html else text


def _labels(msg: EmailMessage, sender: str | None, own: set[str]) -> list[str]:
    sent = sender is not None and (normalise_address(sender) in own or canonical_key(sender) in own)
    labels = ["SENT" if sent else "INBOX"]
    gmail = _decoded(msg, "x-gmail-labels") or ""
    for label in (part.strip() for part in gmail.split(",")):
        # Our SENT/INBOX is authoritative: drop Takeout's own versions of those two.
        if label and label.upper() not in ("SENT", "INBOX") and label not in labels:
            labels.append(label)
    return labels


def _from_line_date(line: bytes) -> datetime | None:
    # "From sender@host Mon Jan  6 10:00:00 2025" (Takeout adds "+0000" before the year)
    parts = line.decode("ascii", "replace").split(None, 2)
    return _sane(parse_date(parts[2])) if len(parts) == 3 else None


@dataclass
class _Mail:
    raw: bytes
    label: str  # file name and position, for quarantine detail (never content)
    from_line_date: datetime | None = None


def _mbox_items(path: Path) -> tuple[int, Callable[[], Iterator[_Mail]]]:
    box = mailbox.mbox(path, create=False)
    keys = box.keys()

    def items() -> Iterator[_Mail]:
        try:
            for index, key in enumerate(keys, start=1):
                # get_bytes(from_=True) keeps the separator line: its date is a fallback.
                data = box.get_bytes(key, from_=True)
                first, _, rest = data.partition(b"\n")
                yield _Mail(rest, f"{path.name}#{index}", _from_line_date(first))
        finally:
            box.close()

    return len(keys), items


def _eml_item(path: Path, label: str) -> _Mail:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if data.startswith(b"From "):
        first, _, data = data.partition(b"\n")
        return _Mail(data, label, _from_line_date(first))
    return _Mail(data, label)


# ----------------------------------------------------------------- calendars
@dataclass
class _Occurrence:
    event_id: str
    uid: str
    status: str
    title: str | None
    starts_at: datetime
    ends_at: datetime
    all_day: bool
    recurring: bool
    attendees: list[dict[str, Any]]


@dataclass
class _BadEvent:
    item_id: str
    reason: str
    detail: str


def _prop_ok(component: icalendar.Component, name: str) -> bool:
    return name not in {prop for prop, _ in getattr(component, "errors", [])}


def _validate_event(ev: icalendar.Component) -> str | None:
    """The quarantine reason for a VEVENT we cannot expand, else None."""
    if not str(ev.get("UID", "")).strip():
        return "missing UID"
    start = ev.get("DTSTART")
    if not _prop_ok(ev, "DTSTART") or not isinstance(getattr(start, "dt", None), date):
        return "missing or invalid DTSTART"
    for name in ("DTEND", "DURATION", "RECURRENCE-ID", "RRULE", "RDATE", "EXDATE"):
        if name in ev and not _prop_ok(ev, name):
            return f"invalid {name}"
    return None


def _address(value: Any) -> str | None:
    text = _clean(str(value)).strip()  # type: ignore[union-attr]
    if text.lower().startswith("mailto:"):
        text = text[7:].strip()
    # Rooms without mail ("invalid:nomail", urn:uuid:…) are not people or addresses.
    return text if "@" in text and ":" not in text else None


def _attendees(ev: icalendar.Component) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    organizer = ev.get("ORGANIZER")
    values = ev.get("ATTENDEE", [])
    if not isinstance(values, list):
        values = [values]
    for role, value in ([("organizer", organizer)] if organizer is not None else []) + [
        ("attendee", v) for v in values
    ]:
        address = _address(value)
        if address is None:
            continue
        params = getattr(value, "params", {})
        partstat = params.get("PARTSTAT")
        cutype = str(params.get("CUTYPE", "")).upper()
        out.append(
            {
                "role": role,
                "address": address,
                "name": _one_line(str(params["CN"])) if params.get("CN") else None,
                "response_status": str(partstat).lower() if partstat else None,
                "resource": cutype in ("RESOURCE", "ROOM"),
            }
        )
    return out


def _occurrence_row(occ: icalendar.Component, uid: str, recurring: bool) -> _Occurrence:
    start_value = occ["DTSTART"].dt
    all_day = not isinstance(start_value, datetime)
    starts_at = _utc(start_value)
    if "DTEND" in occ:
        ends_at = _utc(occ["DTEND"].dt)
    elif "DURATION" in occ:
        ends_at = starts_at + occ["DURATION"].dt
    else:
        ends_at = starts_at + (timedelta(days=1) if all_day else timedelta(0))
    # The original slot names the occurrence, so a moved instance keeps its id.
    slot = occ.get("RECURRENCE-ID")
    slot_start = _utc(slot.dt) if slot is not None else starts_at
    status = str(occ.get("STATUS", "CONFIRMED")).strip().lower() or "confirmed"
    return _Occurrence(
        event_id=_sha24(uid + slot_start.isoformat()),
        uid=uid,
        status=status,
        title=_one_line(str(occ["SUMMARY"])) if "SUMMARY" in occ else None,
        starts_at=starts_at,
        ends_at=ends_at,
        all_day=all_day,
        recurring=recurring,
        attendees=_attendees(occ),
    )


def _ics_items(
    path: Path, window_start: datetime, window_end: datetime
) -> list[_Occurrence | _BadEvent]:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        calendars = icalendar.Calendar.from_ical(data, multiple=True)
    except Exception as exc:  # any parse failure is a quarantine, not a crash
        # Only the exception type: its text may quote calendar content.
        detail = f"{path.name}: {type(exc).__name__}"
        return [_BadEvent(_sha24(data), "unparseable calendar file", detail)]
    items: list[_Occurrence | _BadEvent] = []
    index = 0
    for cal in calendars:
        timezones = [c for c in cal.subcomponents if c.name == "VTIMEZONE"]
        groups: dict[str, list[icalendar.Component]] = {}
        for ev in (c for c in cal.subcomponents if c.name == "VEVENT"):
            index += 1
            reason = _validate_event(ev)
            if reason is not None:
                uid = str(ev.get("UID", "")).strip()
                item_id = _sha24(uid or ev.to_ical())
                items.append(_BadEvent(item_id, reason, f"{path.name}#VEVENT{index}"))
                continue
            groups.setdefault(str(ev["UID"]).strip(), []).append(ev)
        for uid, events in groups.items():
            # Expand one UID at a time so a bad series cannot sink the whole file.
            recurring = any(k in ev for ev in events for k in ("RRULE", "RDATE", "RECURRENCE-ID"))
            mini = icalendar.Calendar()
            for component in [*timezones, *events]:
                mini.add_component(component)
            try:
                occurrences = recurring_ical_events.of(mini).between(window_start, window_end)
                rows = [_occurrence_row(o, uid, recurring) for o in occurrences]
            except Exception as exc:
                reason = "recurrence expansion failed"
                items.append(_BadEvent(_sha24(uid), reason, f"{path.name}: {type(exc).__name__}"))
                continue
            # Cancelled occurrences and EXDATEs simply do not appear.
            items.extend(r for r in rows if r.status != "cancelled")
    return items


# ----------------------------------------------------------------- lake state
def _live_messages(lake_dir: Path, account_id: str) -> dict[str, bool]:
    """message_id -> landed only as a blocked marker (as gmail.live_message_ids, plus why)."""
    df = lake.live_rows(lake_dir, "messages", account_id, ["blocked"])
    if df.is_empty():
        return {}
    return dict(zip(df["message_id"], df["blocked"].fill_null(False), strict=True))


def _live_events(lake_dir: Path, account_id: str) -> dict[str, bool]:
    df = lake.live_rows(lake_dir, "events", account_id, ["status"])
    if df.is_empty():
        return {}
    return dict(zip(df["event_id"], df["status"] == "blocked", strict=True))


def _quarantined(lake_dir: Path, account_id: str) -> set[tuple[str, str, str]]:
    files = lake.glob(lake_dir, "quarantine", [account_id])
    if not files:
        return set()
    df = (
        pl.scan_parquet(files, hive_partitioning=False)
        .filter(pl.col("stream").is_in([MAIL_STREAM, ICS_STREAM]))
        .select("stream", "item_id", "reason")
        .unique()
        .collect()
    )
    return set(df.iter_rows())


# ----------------------------------------------------------------- landing
@dataclass
class _Importer:
    lake_dir: Path
    account_id: str
    own: set[str]
    blocklist: Blocklist
    window: tuple[datetime | None, datetime | None]  # mail: only when given explicitly
    with_body: bool
    progress: ProgressFn
    total: int
    live_messages: dict[str, bool]
    live_events: dict[str, bool]
    quarantined: set[tuple[str, str, str]]
    result: ImportResult = field(default_factory=lambda: ImportResult(mode="import"))
    done: int = 0
    pending: int = 0
    batch: lake.Batch | None = None

    def _batch(self) -> lake.Batch:
        if self.batch is None:
            self.batch = lake.Batch(self.account_id)
        return self.batch

    def tick(self) -> None:
        self.done += 1
        self.pending += 1
        if self.pending >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.batch is not None and len(self.batch):
            lake.flush(self.lake_dir, self.batch)
        self.batch = None
        self.pending = 0
        self.progress(self.done, self.total)

    def quarantine(self, stream: str, item_id: str, reason: str, detail: str) -> None:
        if (stream, item_id, reason) in self.quarantined:
            self.result.skipped += 1  # already quarantined by an earlier import
            return
        self.quarantined.add((stream, item_id, reason))
        row = {"stream": stream, "item_id": item_id, "reason": reason, "detail": detail}
        self._batch().add("quarantine", row)
        self.result.quarantined += 1

    @staticmethod
    def _already(live: dict[str, bool], item_id: str, blocked_now: bool) -> bool:
        """True when the lake already holds this item in the state we would land.

        A blocked marker whose blocklist entry has since been removed lands again in
        full (DESIGN §4.2: removing an entry brings the mail back).
        """
        if item_id not in live:
            return False
        was_marker = live[item_id]
        return not was_marker or blocked_now

    # ------------------------------------------------------------- mail
    def mail(self, item: _Mail) -> None:
        try:
            msg = _PARSER.parsebytes(item.raw)
        except Exception:  # the parser is lenient; belt and braces
            self.quarantine(MAIL_STREAM, _sha24(item.raw), "unparseable message", item.label)
        else:
            assert isinstance(msg, EmailMessage)
            rfc_id = _msgid(_raw_first(msg, "message-id"))
            mid = _sha24(rfc_id) if rfc_id else _sha24(item.raw)
            try:
                self._mail(msg, mid, rfc_id, item)
            except Malformed as bad:
                self.quarantine(MAIL_STREAM, mid, bad.reason, item.label)
            except Exception as exc:
                # One pathological message must not abort a backfill of thousands.
                log.warning("unparseable message %s (%s)", item.label, type(exc).__name__)
                self.quarantine(MAIL_STREAM, mid, "unparseable message", item.label)
        self.tick()

    def _mail(self, msg: EmailMessage, mid: str, rfc_id: str | None, item: _Mail) -> None:
        if self.live_messages.get(mid) is False:  # landed in full before: nothing to do
            self.result.skipped += 1
            return
        thread_id = _thread_id(msg, rfc_id, mid)
        participants = _participants(msg)
        # The blocklist is checked before anything else can fail: blocked content never lands.
        blocked = bool(self.blocklist) and self.blocklist.matches(a for _, a, _ in participants)
        if self._already(self.live_messages, mid, blocked):
            self.result.skipped += 1
            return
        if blocked:
            self._batch().add("messages", _marker_row(mid, thread_id))
            self.live_messages[mid] = True
            self.result.blocked += 1
            return
        _check_header_charsets(msg)
        senders = [a for role, a, _ in participants if role == "from"]
        if not senders:
            raise Malformed("missing or unparseable From header")
        if normalise_address(senders[0]) is None:
            raise Malformed("invalid From address")
        sent_at = _sent_at(msg, item.from_line_date)
        start, end = self.window
        if (start and sent_at < start) or (end and sent_at >= end):
            self.result.skipped += 1
            return
        body = _body_text(msg) if self.with_body else None
        snippet = " ".join(body.split())[:SNIPPET_CHARS] if body else ""
        batch = self._batch()
        batch.add(
            "messages",
            {
                "provider": PROVIDER,
                "stream": MAIL_STREAM,
                "message_id": mid,
                "thread_id": thread_id,
                "rfc_message_id": rfc_id,
                "op": "upsert",
                "blocked": False,
                "sent_at": sent_at,
                "subject": _decoded(msg, "subject"),
                "snippet": snippet or None,
                "body_text": body,
                "labels": _labels(msg, senders[0], self.own),
                "list_id": _raw_first(msg, "list-id"),
                "list_unsubscribe": _raw_first(msg, "list-unsubscribe"),
                "precedence": _raw_first(msg, "precedence"),
                "auto_submitted": _raw_first(msg, "auto-submitted"),
                "in_reply_to": _raw_first(msg, "in-reply-to"),
            },
        )
        for role, address, name in participants:
            batch.add(
                "participants", {"message_id": mid, "role": role, "address": address, "name": name}
            )
        self.live_messages[mid] = False
        self.result.landed += 1

    # ------------------------------------------------------------- events
    def event(self, item: _Occurrence | _BadEvent) -> None:
        if isinstance(item, _BadEvent):
            self.quarantine(ICS_STREAM, item.item_id, item.reason, item.detail)
            self.tick()
            return
        blocked = bool(self.blocklist) and self.blocklist.matches(
            a["address"] for a in item.attendees
        )
        if self._already(self.live_events, item.event_id, blocked):
            self.result.skipped += 1
        elif blocked:
            marker = {
                "provider": PROVIDER,
                "stream": ICS_STREAM,
                "event_id": item.event_id,
                "op": "upsert",
                "status": "blocked",
            }
            self._batch().add("events", marker)
            self.live_events[item.event_id] = True
            self.result.blocked += 1
        else:
            batch = self._batch()
            batch.add(
                "events",
                {
                    "provider": PROVIDER,
                    "stream": ICS_STREAM,
                    "event_id": item.event_id,
                    "ical_uid": item.uid,
                    "op": "upsert",
                    "status": item.status,
                    "title": item.title,
                    "starts_at": item.starts_at,
                    "ends_at": item.ends_at,
                    "all_day": item.all_day,
                    "recurring_event_id": item.uid if item.recurring else None,
                },
            )
            for attendee in item.attendees:
                batch.add("attendees", {"event_id": item.event_id, **attendee})
            self.live_events[item.event_id] = False
            self.result.landed += 1
        self.tick()


def _marker_row(mid: str, thread_id: str | None) -> dict[str, Any]:
    return {
        "provider": PROVIDER,
        "stream": MAIL_STREAM,
        "message_id": mid,
        "thread_id": thread_id,
        "op": "upsert",
        "blocked": True,
        "labels": [],
    }


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def import_paths(
    *,
    lake_dir: Path,
    account_id: str,
    paths: list[Path],
    account_addresses: list[str],
    blocklist: Blocklist,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    progress: ProgressFn | None = None,
    with_body: bool = True,
) -> ImportResult:
    """Land mbox / .eml / .ics files into the account's lake; idempotent across re-runs.

    The window bounds mail only when given; calendars always expand within it
    (default 10 years back to 1 year ahead). with_body=False is metadata-only sync.
    """
    progress = progress or (lambda done, total: None)
    kinds = [(Path(p), detect_kind(Path(p))) for p in paths]  # fail fast, before landing
    now = datetime.now(UTC)
    mail_window = (_aware(window_start), _aware(window_end))
    ics_start = mail_window[0] or now - timedelta(days=3653)
    ics_end = mail_window[1] or now + timedelta(days=366)

    # Plan first so progress has a total; mbox bodies are read lazily, one at a time.
    work: list[tuple[str, int, Callable[[], Iterator[Any]]]] = []
    for path, kind in kinds:
        if kind == "mbox":
            count, items = _mbox_items(path)
            work.append(("mail", count, items))
        elif kind == "eml":
            work.append(("mail", 1, lambda p=path: iter([_eml_item(p, p.name)])))
        elif kind == "eml_dir":
            files = _eml_files(path)
            work.append(
                (
                    "mail",
                    len(files),
                    lambda f=files, root=path: (
                        _eml_item(p, p.relative_to(root).as_posix()) for p in f
                    ),
                )
            )
        else:
            events = _ics_items(path, ics_start, ics_end)
            work.append(("event", len(events), lambda e=events: iter(e)))

    own = {k for a in account_addresses for k in (normalise_address(a), canonical_key(a)) if k}
    importer = _Importer(
        lake_dir=lake_dir,
        account_id=account_id,
        own=own,
        blocklist=blocklist,
        window=mail_window,
        with_body=with_body,
        progress=progress,
        total=sum(count for _, count, _ in work),
        live_messages=_live_messages(lake_dir, account_id),
        live_events=_live_events(lake_dir, account_id),
        quarantined=_quarantined(lake_dir, account_id),
    )
    progress(0, importer.total)
    for what, _, items in work:
        for item in items():
            if what == "mail":
                importer.mail(item)
            else:
                importer.event(item)
    importer.flush()
    result = importer.result
    result.provider_total = importer.total
    log.info(
        "import %s: landed=%d blocked=%d quarantined=%d skipped=%d",
        account_id,
        result.landed,
        result.blocked,
        result.quarantined,
        result.skipped,
    )
    return result
