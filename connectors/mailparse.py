"""Turn RFC 822 headers and a text body into landing rows, or say why not.

Shared by every mail connector (Gmail JSON payloads, Graph, mbox/.eml files).
"""

from __future__ import annotations

import base64
import email.header
import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from transforms.addresses import normalise_address

ADDRESS_ROLES = {"from": "from", "to": "to", "cc": "cc", "bcc": "bcc", "reply-to": "reply_to"}


class Malformed(Exception):
    """The item cannot be landed as mail; the message is the quarantine reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class ParsedMail:
    sent_at: datetime | None
    subject: str | None
    rfc_message_id: str | None
    in_reply_to: str | None
    list_id: str | None
    list_unsubscribe: str | None
    precedence: str | None
    auto_submitted: str | None
    participants: list[tuple[str, str, str | None]] = field(default_factory=list)
    # (role, address, display name)

    def addresses(self) -> list[str]:
        return [a for _, a, _ in self.participants]


def decode_header_value(value: str) -> str:
    """RFC 2047 decode. Unknown charsets raise Malformed (quarantine, not crash)."""
    if "=?" not in value:
        return " ".join(value.split())
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeDecodeError) as exc:
        raise Malformed("undecodable charset in header", type(exc).__name__) from exc
    except email.errors.HeaderParseError as exc:
        raise Malformed("unparseable header", type(exc).__name__) from exc


def _header_map(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value if isinstance(value, str) else str(value))
    return out


def _first(h: dict[str, list[str]], name: str) -> str | None:
    values = h.get(name)
    return values[0].strip() if values else None


def parse_address_headers(h: dict[str, list[str]]) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for header, role in ADDRESS_ROLES.items():
        values = h.get(header)
        if not values:
            continue
        # Split addresses first, decode names after: a decoded "Doe, José" would
        # otherwise be split at its comma.
        for name, addr in email.utils.getaddresses(values):
            addr = addr.strip()
            if not addr:
                continue
            if "=?" in name:
                name = decode_header_value(name)
            name = " ".join(name.split()) or None
            out.append((role, addr, name))
    return out


def parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_mail_headers(
    headers: Sequence[tuple[str, str]], fallback_time: datetime | None = None
) -> ParsedMail:
    """Parse the headers that matter. Raises Malformed for mail we cannot trust."""
    h = _header_map(headers)
    participants = parse_address_headers(h)
    senders = [p for p in participants if p[0] == "from"]
    if not senders:
        raise Malformed("missing or unparseable From header")
    if normalise_address(senders[0][1]) is None:
        raise Malformed("invalid From address")
    subject = _first(h, "subject")
    sent_at = parse_date(_first(h, "date")) or fallback_time
    if sent_at is None:
        raise Malformed("no usable Date header or internal date")
    if sent_at.year < 1971 or sent_at.year > 2200:
        raise Malformed("date out of range", str(sent_at.year))
    return ParsedMail(
        sent_at=sent_at,
        subject=decode_header_value(subject) if subject is not None else None,
        rfc_message_id=_first(h, "message-id"),
        in_reply_to=_first(h, "in-reply-to"),
        list_id=_first(h, "list-id"),
        list_unsubscribe=_first(h, "list-unsubscribe"),
        precedence=(_first(h, "precedence") or None),
        auto_submitted=(_first(h, "auto-submitted") or None),
        participants=participants,
    )


def charset_of(content_type: str | None) -> str:
    if not content_type:
        return "utf-8"
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip().strip('"').lower()
    return "utf-8"


def decode_body(data: bytes, content_type: str | None) -> str:
    charset = charset_of(content_type)
    try:
        return data.decode(charset)
    except LookupError as exc:
        raise Malformed("undecodable charset", charset[:40]) from exc
    except UnicodeDecodeError as exc:
        raise Malformed("body does not decode in its declared charset", charset[:40]) from exc


def b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


class Blocklist:
    """An account's blocklist, checked at extraction time (scalar twin of the transform)."""

    def __init__(self, entries: Iterable[tuple[str, str]]):
        self.addresses: set[str] = set()
        self.domains: set[str] = set()
        for entry, kind in entries:
            if kind == "address":
                norm = normalise_address(entry)
                if norm:
                    self.addresses.add(norm)
            else:
                self.domains.add(entry.lower().lstrip("@").strip("."))

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains)

    def matches(self, addresses: Iterable[str]) -> bool:
        for addr in addresses:
            norm = normalise_address(addr)
            if norm is None:
                continue
            if norm in self.addresses:
                return True
            parts = norm.split("@", 1)[1].split(".")
            if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
                return True
        return False
