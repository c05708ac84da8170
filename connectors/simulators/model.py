"""Provider-neutral mailbox items that every simulator serves.

A simulator turns these into its provider's wire format (Gmail JSON/RFC 822,
Graph JSON, Calendar JSON). Generators and handcrafted tests build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimMessage:
    """One message as stored in one mailbox.

    `headers` keeps RFC 822 order and raw values (already-encoded words allowed).
    `body` holds the bytes of a single text/plain part in the charset named by the
    Content-Type header (default utf-8). `raw`, when set, is served verbatim for
    `format=raw` and parsed for metadata/full, which lets tests feed malformed mail.
    """

    id: str
    thread_id: str
    internal_date_ms: int
    label_ids: list[str]
    headers: list[tuple[str, str]]
    body: bytes = b""
    snippet: str = ""
    raw: bytes | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass
class SimAttendee:
    email: str
    name: str = ""
    response_status: str = "needsAction"  # needsAction|declined|tentative|accepted
    organizer: bool = False
    resource: bool = False
    optional: bool = False


@dataclass
class SimEvent:
    """One calendar event (a single event or a recurring series master).

    Times are epoch milliseconds, UTC. `all_day` events use whole days.
    `rrule` is an RFC 5545 RRULE body such as "FREQ=WEEKLY;COUNT=10".
    `cancelled_occurrences` lists start times (ms) of cancelled instances.
    """

    id: str
    ical_uid: str
    summary: str
    start_ms: int
    end_ms: int
    organizer_email: str
    organizer_name: str = ""
    attendees: list[SimAttendee] = field(default_factory=list)
    status: str = "confirmed"  # confirmed|tentative|cancelled
    all_day: bool = False
    rrule: str | None = None
    cancelled_occurrences: list[int] = field(default_factory=list)
    updated_ms: int = 0
