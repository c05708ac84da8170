"""Local Google API simulator (Gmail API v1, OAuth token endpoint, batch).

The real google-api-python-client talks to it unmodified:

    creds = Credentials(None, refresh_token=rt, token_uri=sim.token_uri,
                        client_id="rapport-test", client_secret="secret")
    gmail = build("gmail", "v1", static_discovery=True, credentials=creds,
                  client_options={"api_endpoint": sim.root_url})
    batch = BatchHttpRequest(callback=cb, batch_uri=sim.root_url + "batch/gmail/v1")

Routing is a regex table (`sim.router`): another API (Calendar v3) plugs in by
adding routes whose handlers take an `ApiCall` and return an `HTTPResponse`
(or raise `ApiError`). Auth, faults, quota, batch and the request log apply to
every route alike.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import datetime as dt
import email
import email.policy
import http
import itertools
import pickle
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from connectors.simulators.httpbase import (
    HTTPRequest,
    HTTPResponse,
    Route,
    Router,
    SimServerBase,
    build_multipart,
    drop_response,
    header_param,
    json_response,
    parse_http_message,
    parse_multipart,
    serialize_http_response,
)
from connectors.simulators.model import SimMessage

__all__ = [
    "ApiCall",
    "ApiError",
    "GmailMailbox",
    "GoogleAccount",
    "GoogleSimulator",
    "RequestRecord",
    "google_error",
]

SYSTEM_LABELS = (
    "INBOX",
    "SENT",
    "DRAFT",
    "SPAM",
    "TRASH",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "CHAT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
FAULT_KINDS = ("429", "403_rate", "500", "503", "slow", "drop")
DEFAULT_SCOPE = (
    "https://www.googleapis.com/auth/gmail.readonly "
    "https://www.googleapis.com/auth/gmail.send "
    "https://www.googleapis.com/auth/calendar.readonly"
)
MAX_BATCH_PARTS = 100
STATE_VERSION = 1

try:  # Gmail reads dates in q= as Pacific time
    from zoneinfo import ZoneInfo

    _QUERY_TZ: dt.tzinfo = ZoneInfo("America/Los_Angeles")
except Exception:  # pragma: no cover - no tz database
    _QUERY_TZ = dt.timezone(dt.timedelta(hours=-8))


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """Raised by handlers; carries the response to send."""

    def __init__(self, response: HTTPResponse) -> None:
        super().__init__(response.status)
        self.response = response


def google_error(
    code: int,
    message: str,
    reason: str,
    status: str,
    *,
    domain: str = "global",
    extra: dict[str, str] | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> HTTPResponse:
    """Google's JSON error envelope (`{"error": {"code", "message", "errors", "status"}}`)."""
    item = {"message": message, "domain": domain, "reason": reason, **(extra or {})}
    body = {"error": {"code": code, "message": message, "errors": [item], "status": status}}
    return json_response(code, body, headers)


def _bad_request(message: str) -> ApiError:
    return ApiError(google_error(400, message, "invalidArgument", "INVALID_ARGUMENT"))


def _not_found() -> ApiError:
    msg = "Requested entity was not found."
    return ApiError(google_error(404, msg, "notFound", "NOT_FOUND"))


def _unauthenticated() -> HTTPResponse:
    return google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "authError",
        "UNAUTHENTICATED",
        extra={"location": "Authorization", "locationType": "header"},
        headers=[("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')],
    )


def _rate_limited() -> HTTPResponse:
    return google_error(
        429,
        "Resource has been exhausted (e.g. check quota).",
        "rateLimitExceeded",
        "RESOURCE_EXHAUSTED",
        domain="usageLimits",
    )


def _fault_response(kind: str) -> HTTPResponse:
    if kind == "429":
        return _rate_limited()
    if kind == "403_rate":
        return google_error(
            403,
            "User-rate limit exceeded.  Retry after 2030-01-01T00:00:00.000Z",
            "userRateLimitExceeded",
            "PERMISSION_DENIED",
            domain="usageLimits",
        )
    if kind == "500":
        return google_error(500, "Internal error encountered.", "backendError", "INTERNAL")
    if kind == "503":
        return google_error(
            503, "The service is currently unavailable.", "backendError", "UNAVAILABLE"
        )
    raise ValueError(kind)


# ---------------------------------------------------------------- records


@dataclass
class RequestRecord:
    method: str
    path: str  # decoded, without query
    query: dict[str, list[str]]
    user: str | None
    status: int  # 0 when the connection was dropped
    in_batch: bool
    at: float  # time.monotonic()


@dataclass
class _Fault:
    kind: str
    remaining: int
    path_contains: str | None
    in_batch: bool
    delay_s: float


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = rate  # one second of units
        self.tokens = rate
        self.stamp = time.monotonic()

    def take(self, cost: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


# ---------------------------------------------------------------- mailbox


class _HistRec(NamedTuple):
    id: int
    kind: str  # "added" | "deleted" | "labels"
    msg_id: str
    thread_id: str
    labels: tuple[str, ...]  # message labels after the change
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def _sort_key(msg: SimMessage) -> tuple[int, str]:
    return (-msg.internal_date_ms, msg.id)


class GmailMailbox:
    """One user's Gmail state: messages, per-message history ids, history log.

    All mutators and readers take the mailbox lock, so tests may change the mailbox
    while the server answers requests.
    """

    def __init__(self, email: str, aliases: Sequence[str] = (), *, start_history_id: int = 1000):
        self.email = email
        self.aliases: list[str] = list(aliases)
        self.history_id: int = start_history_id
        self.messages: dict[str, SimMessage] = {}
        self._msg_hid: dict[str, int] = {}
        self._history: list[_HistRec] = []
        self._history_ids: list[int] = []
        self._min_valid_history = start_history_id  # older startHistoryIds -> 404
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.RLock()
        self._sorted: tuple[int, list[SimMessage]] | None = None
        self._filter_cache: dict[tuple[Any, ...], list[tuple[str, str]]] = {}
        self._filter_cache_hid = -1

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = self.__dict__.copy()
        for key in ("_lock", "_sorted", "_filter_cache", "_filter_cache_hid"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- mutators (each returns the history id of the change)

    def _record(self, rec: _HistRec) -> None:
        self._history.append(rec)
        self._history_ids.append(rec.id)

    def _add_locked(self, msg: SimMessage) -> int:
        if msg.id in self.messages:
            raise ValueError(f"message {msg.id!r} already in {self.email}")
        stored = dataclasses.replace(msg, label_ids=list(msg.label_ids))
        self.history_id += 1
        hid = self.history_id
        self.messages[stored.id] = stored
        self._msg_hid[stored.id] = hid
        self._record(_HistRec(hid, "added", stored.id, stored.thread_id, tuple(stored.label_ids)))
        return hid

    def add_message(self, msg: SimMessage) -> int:
        with self._lock:
            return self._add_locked(msg)

    def add_messages(self, msgs: Iterable[SimMessage]) -> int:
        with self._lock:
            for msg in msgs:
                self._add_locked(msg)
            return self.history_id

    def delete_message(self, message_id: str) -> int:
        with self._lock:
            msg = self.messages.pop(message_id)  # KeyError for unknown ids
            self._msg_hid.pop(message_id, None)
            self.history_id += 1
            self._record(
                _HistRec(self.history_id, "deleted", msg.id, msg.thread_id, tuple(msg.label_ids))
            )
            return self.history_id

    def modify_labels(
        self, message_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> int:
        with self._lock:
            msg = self.messages[message_id]
            current = list(msg.label_ids)
            added = tuple(lab for lab in dict.fromkeys(add) if lab not in current)
            removed = tuple(
                lab for lab in dict.fromkeys(remove) if lab in current and lab not in added
            )
            if not added and not removed:
                return self.history_id  # Gmail records no history for a no-op
            new_labels = [lab for lab in current if lab not in removed] + list(added)
            msg.label_ids = new_labels
            self.history_id += 1
            self._msg_hid[message_id] = self.history_id
            self._record(
                _HistRec(
                    self.history_id,
                    "labels",
                    msg.id,
                    msg.thread_id,
                    tuple(new_labels),
                    added,
                    removed,
                )
            )
            return self.history_id

    def hide_from_listing(self, message_ids: Iterable[str]) -> None:
        """Make messages.list skip these ids while profile still counts them (a silent gap)."""
        with self._lock:
            self.hidden_from_listing = set(getattr(self, "hidden_from_listing", set())) | set(
                message_ids
            )
            self._filter_cache.clear()

    def expire_history(self) -> None:
        with self._lock:
            self._min_valid_history = self.history_id
            self._history.clear()
            self._history_ids.clear()

    # -- readers used by the simulator

    def message_history_id(self, message_id: str) -> int:
        with self._lock:
            return self._msg_hid[message_id]

    def get(self, message_id: str) -> tuple[SimMessage, int] | None:
        with self._lock:
            msg = self.messages.get(message_id)
            if msg is None:
                return None
            # Snapshot the mutable label list so rendering needs no lock.
            return dataclasses.replace(msg, label_ids=list(msg.label_ids)), self._msg_hid[msg.id]

    def profile(self) -> dict[str, Any]:
        with self._lock:
            threads = {m.thread_id for m in self.messages.values()}
            return {
                "emailAddress": self.email,
                "messagesTotal": len(self.messages),
                "threadsTotal": len(threads),
                "historyId": str(self.history_id),
            }

    def all_labels(self) -> list[str]:
        with self._lock:
            seen = dict.fromkeys(SYSTEM_LABELS)
            for msg in self.messages.values():
                seen.update(dict.fromkeys(msg.label_ids))
            return list(seen)

    def _sorted_messages(self) -> list[SimMessage]:
        if self._sorted is None or self._sorted[0] != self.history_id:
            self._sorted = (self.history_id, sorted(self.messages.values(), key=_sort_key))
        return self._sorted[1]

    def query(
        self, label_ids: Sequence[str], q: str, include_spam_trash: bool
    ) -> list[tuple[str, str]]:
        """Ids and thread ids matching a messages.list request, newest first."""
        predicate, cacheable, mentions_spam_trash = _compile_query(q)
        wanted = set(label_ids)
        hide = set()
        if not (include_spam_trash or mentions_spam_trash):
            hide = {"SPAM", "TRASH"} - wanted
        key = (tuple(sorted(wanted)), q, include_spam_trash)
        with self._lock:
            if self._filter_cache_hid != self.history_id:
                self._filter_cache.clear()
                self._filter_cache_hid = self.history_id
            if (
                cacheable
                and key in self._filter_cache
                and not getattr(self, "hidden_from_listing", None)
            ):
                return self._filter_cache[key]
            out = []
            # Test control: ids a provider "forgets" to list (for gap detection).
            hidden = getattr(self, "hidden_from_listing", set())
            for msg in self._sorted_messages():
                if msg.id in hidden:
                    continue
                labels = msg.label_ids
                if hide and not hide.isdisjoint(labels):
                    continue
                if wanted and not wanted.issubset(labels):
                    continue
                if predicate is not None and not predicate(msg):
                    continue
                out.append((msg.id, msg.thread_id))
            if cacheable:
                if len(self._filter_cache) > 64:
                    self._filter_cache.clear()
                self._filter_cache[key] = out
            return out

    def history_page(
        self,
        start: int,
        after: int,
        types: set[str],
        label_id: str | None,
        max_results: int,
    ) -> tuple[list[dict[str, Any]], int | None, int]:
        """Records with id > max(start, after); returns (records, next_after, current)."""
        with self._lock:
            if start < self._min_valid_history or (after and after < self._min_valid_history):
                raise _not_found()
            idx = bisect.bisect_right(self._history_ids, max(start, after))
            out: list[dict[str, Any]] = []
            last = None
            for rec in itertools.islice(self._history, idx, None):
                if len(out) >= max_results:
                    return out, last, self.history_id
                item = _render_history(rec, types, label_id)
                if item is not None:
                    out.append(item)
                    last = rec.id
            return out, None, self.history_id


def _render_history(rec: _HistRec, types: set[str], label_id: str | None) -> dict[str, Any] | None:
    if label_id is not None and label_id not in rec.labels + rec.added + rec.removed:
        return None
    ref = {"id": rec.msg_id, "threadId": rec.thread_id}
    full = {**ref, "labelIds": list(rec.labels)}
    item: dict[str, Any] = {"id": str(rec.id), "messages": [ref]}
    if rec.kind == "added":
        if types and "messageAdded" not in types:
            return None
        item["messagesAdded"] = [{"message": full}]
    elif rec.kind == "deleted":
        if types and "messageDeleted" not in types:
            return None
        item["messagesDeleted"] = [{"message": full}]
    else:
        if rec.added and (not types or "labelAdded" in types):
            item["labelsAdded"] = [{"message": full, "labelIds": list(rec.added)}]
        if rec.removed and (not types or "labelRemoved" in types):
            item["labelsRemoved"] = [{"message": full, "labelIds": list(rec.removed)}]
        if len(item) == 2:
            return None
    return item


# ---------------------------------------------------------------- q= search


_TOKEN_RE = re.compile(r'-?[A-Za-z_]+:"[^"]*"|-?"[^"]*"|\S+')


def _parse_date(value: str, *, term: str) -> int:
    """Epoch ms from `after:`/`before:` values: epoch seconds or YYYY/MM/DD."""
    if value.isdigit():
        return int(value) * 1000
    m = re.fullmatch(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", value)
    if not m:
        raise _bad_request(f"Invalid {term}: value {value!r}")
    day = dt.datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=_QUERY_TZ)
    return int(day.timestamp() * 1000)


def _relative_ms(value: str) -> int:
    m = re.fullmatch(r"(\d+)([dmy])", value.lower())
    if not m:
        raise _bad_request(f"Invalid relative date {value!r}")
    days = int(m[1]) * {"d": 1, "m": 30, "y": 365}[m[2]]
    return int((time.time() - days * 86400) * 1000)


def _label_for(value: str) -> str:
    v = value.strip('"')
    if v.upper() in SYSTEM_LABELS:
        return v.upper()
    if v.upper() in {"PERSONAL", "SOCIAL", "PROMOTIONS", "UPDATES", "FORUMS"}:
        return "CATEGORY_" + v.upper()
    return v


def _compile_query(
    q: str,
) -> tuple[Callable[[SimMessage], bool] | None, bool, bool]:
    """Compile a Gmail search string: (predicate, cacheable, mentions spam/trash).

    Supported: after:/before: (epoch seconds or YYYY/MM/DD, Pacific time),
    newer_than:/older_than: (Nd, Nm, Ny), in:/label:/is:, category:, from:/to:/cc:/
    bcc:/subject:, rfc822msgid:, free words (header values and snippet), and a
    leading "-" to negate. OR, braces and parentheses answer 400 rather than
    being silently misread.
    """
    q = (q or "").strip()
    if not q:
        return None, True, False
    preds: list[Callable[[SimMessage], bool]] = []
    cacheable = True
    spam_trash = False
    for token in _TOKEN_RE.findall(q):
        if token in ("OR", "AND") or token[:1] in "{(" or token[-1:] in "})":
            raise _bad_request(f"simulator does not support query syntax {token!r}")
        neg = token.startswith("-") and len(token) > 1
        if neg:
            token = token[1:]
        name, sep, value = token.partition(":")
        name = name.lower() if sep else ""
        value = value.strip('"')
        pred: Callable[[SimMessage], bool]
        if name in ("after", "before"):
            bound = _parse_date(value, term=name)
            if name == "after":
                pred = lambda m, b=bound: m.internal_date_ms >= b  # noqa: E731
            else:
                pred = lambda m, b=bound: m.internal_date_ms < b  # noqa: E731
        elif name in ("newer_than", "older_than"):
            cacheable = False
            bound = _relative_ms(value)
            if name == "newer_than":
                pred = lambda m, b=bound: m.internal_date_ms >= b  # noqa: E731
            else:
                pred = lambda m, b=bound: m.internal_date_ms < b  # noqa: E731
        elif name in ("in", "label", "is", "category"):
            if value.lower() == "anywhere":
                spam_trash = True
                continue
            label = _label_for(("category_" + value) if name == "category" else value)
            if label in ("SPAM", "TRASH"):
                spam_trash = True
            pred = lambda m, lab=label: lab in m.label_ids  # noqa: E731
        elif name in ("from", "to", "cc", "bcc", "subject"):
            hdr, needle = name, value.lower()
            pred = lambda m, h=hdr, n=needle: n in (_msg_header(m, h) or "").lower()  # noqa: E731
        elif name == "rfc822msgid":
            needle = value.strip("<>")
            pred = lambda m, n=needle: (  # noqa: E731
                (_msg_header(m, "message-id") or "").strip().strip("<>") == n
            )
        else:
            needle = token.strip('"').lower()
            pred = lambda m, n=needle: n in _search_text(m)  # noqa: E731
        preds.append((lambda m, p=pred: not p(m)) if neg else pred)

    def predicate(msg: SimMessage) -> bool:
        return all(p(msg) for p in preds)

    return predicate, cacheable, spam_trash


def _msg_header(msg: SimMessage, name: str) -> str | None:
    if msg.raw is not None and not msg.headers:
        for key, value in _parsed_raw(msg.raw).items():
            if key.lower() == name:
                return _header_text(value)
        return None
    return msg.header(name)


def _search_text(msg: SimMessage) -> str:
    headers = msg.headers or [(k, _header_text(v)) for k, v in _parsed_raw(msg.raw or b"").items()]
    return " ".join([v for _, v in headers] + [msg.snippet]).lower()


# ---------------------------------------------------------------- message rendering


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")  # padded, like Gmail


def _b64url_decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _header_text(value: Any) -> str:
    """A header value as Gmail shows it: unfolded, still MIME-encoded, valid UTF-8."""
    text = str(value)
    text = re.sub(r"\r?\n(?=[ \t])", "", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # raw 8-bit bytes smuggled in as surrogates
        text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return text


def _parsed_raw(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _raw_bytes(msg: SimMessage) -> bytes:
    if msg.raw is not None:
        return msg.raw
    head = "".join(f"{k}: {v}\r\n" for k, v in msg.headers).encode("utf-8", "surrogateescape")
    return head + b"\r\n" + msg.body


def _snippet_from(body: bytes, content_type: str | None) -> str:
    charset = (header_param(content_type, "charset") if content_type else None) or "utf-8"
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    return " ".join(text.split())[:200]


def _mime_part(part: Message, part_id: str, with_data: bool) -> dict[str, Any]:
    node: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": [{"name": k, "value": _header_text(v)} for k, v in part.items()],
    }
    if part.is_multipart():
        node["body"] = {"size": 0}
        children = part.get_payload()
        assert isinstance(children, list)
        node["parts"] = [
            _mime_part(child, f"{part_id}.{i}" if part_id else str(i), with_data)
            for i, child in enumerate(children)
        ]
    else:
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        node["body"] = {"size": len(data)}
        if with_data and data:
            node["body"]["data"] = _b64url(data)
    return node


def _first_text(part: Message) -> tuple[bytes, str | None]:
    for sub in part.walk():
        if sub.get_content_type() == "text/plain":
            data = sub.get_payload(decode=True)
            return (data if isinstance(data, bytes) else b""), sub.get("content-type")
    return b"", None


def render_message(
    msg: SimMessage, history_id: int, fmt: str, metadata_headers: Sequence[str] = ()
) -> dict[str, Any]:
    """A Gmail `Message` resource in format minimal|metadata|full|raw."""
    raw = _raw_bytes(msg)
    parsed = _parsed_raw(msg.raw) if msg.raw is not None else None
    snippet = msg.snippet
    if not snippet:
        if parsed is not None:
            snippet = _snippet_from(*_first_text(parsed))
        else:
            snippet = _snippet_from(msg.body, msg.header("content-type"))
    res: dict[str, Any] = {
        "id": msg.id,
        "threadId": msg.thread_id,
        "labelIds": list(msg.label_ids),
        "snippet": snippet,
        "sizeEstimate": len(raw),
        "historyId": str(history_id),
        "internalDate": str(msg.internal_date_ms),
    }
    if fmt == "minimal":
        return res
    if fmt == "raw":
        res["raw"] = _b64url(raw)
        return res
    if parsed is not None:
        payload = _mime_part(parsed, "", with_data=(fmt == "full"))
        if fmt == "metadata":
            payload.pop("parts", None)
    else:
        ctype = msg.header("content-type")
        mime = (ctype or "text/plain").split(";", 1)[0].strip().lower() or "text/plain"
        body: dict[str, Any] = {"size": len(msg.body)}
        if fmt == "full" and msg.body:
            body["data"] = _b64url(msg.body)
        payload = {
            "partId": "",
            "mimeType": mime,
            "filename": "",
            "headers": [{"name": k, "value": _header_text(v)} for k, v in msg.headers],
            "body": body,
        }
    if fmt == "metadata" and metadata_headers:
        wanted = {h.lower() for h in metadata_headers}
        payload["headers"] = [h for h in payload["headers"] if h["name"].lower() in wanted]
    res["payload"] = payload
    return res


# ---------------------------------------------------------------- accounts


@dataclass
class GoogleAccount:
    """One simulated Google user: OAuth client binding plus per-API state."""

    email: str
    refresh_token: str
    client_id: str
    client_secret: str
    mailbox: GmailMailbox
    display_name: str = ""
    revoked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # room for other APIs' state


@dataclass
class ApiCall:
    """What a route handler receives."""

    request: HTTPRequest
    params: dict[str, str]  # named regex groups, percent-decoded
    account: GoogleAccount | None
    in_batch: bool
    route: Route | None
    log_user: str | None = None  # set by handlers that know the user without a bearer

    @property
    def user(self) -> str | None:
        return self.account.email if self.account else None


def _int_param(req: HTTPRequest, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"Invalid value for {name}: {raw!r}") from None
    if value < lo:
        raise _bad_request(f"Invalid value for {name}: {raw!r}")
    return min(value, hi)


def _bool_param(req: HTTPRequest, name: str) -> bool:
    return (req.param(name) or "").lower() in ("true", "1")


def _encode_page_token(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode("ascii").rstrip("=")


def _decode_page_token(token: str | None, kind: str) -> int:
    if not token:
        return 0
    try:
        got_kind, _, value = _b64url_decode(token).decode("ascii").partition(":")
        if got_kind != kind:
            raise ValueError(got_kind)
        return int(value)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise _bad_request("Invalid pageToken") from None


# ---------------------------------------------------------------- simulator


class GoogleSimulator(SimServerBase):
    """Gmail API v1 + OAuth token endpoint + batch endpoint on 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0) -> None:
        super().__init__(host, port)
        self.latency_s = latency_s
        self.requests: list[RequestRecord] = []
        self._lock = threading.RLock()  # accounts, tokens, faults, buckets, request log
        self._accounts: dict[str, GoogleAccount] = {}
        self._by_refresh: dict[str, str] = {}
        self._access_tokens: dict[str, str] = {}
        self._faults: list[_Fault] = []
        self._quota_rate: float | None = None
        self._buckets: dict[str, _TokenBucket] = {}
        self._id_counter = itertools.count(1)
        self.router = Router()
        self._register_core_routes()
        self._register_gmail_routes()
        # Calendar v3 shares this server, its auth and its faults (`<root>calendar/v3/…`).
        from connectors.simulators.gcalendar import install_calendar

        install_calendar(self)

    # -- lifecycle sugar

    def start(self) -> GoogleSimulator:
        super().start()
        return self

    def __enter__(self) -> GoogleSimulator:
        return self.start()

    @property
    def token_uri(self) -> str:
        return self.root_url + "token"

    @property
    def gmail_batch_uri(self) -> str:
        return self.root_url + "batch/gmail/v1"

    # -- accounts

    def add_user(
        self,
        email: str,
        *,
        aliases: Sequence[str] = (),
        refresh_token: str,
        client_id: str = "rapport-test",
        client_secret: str = "secret",
        display_name: str = "",
    ) -> GmailMailbox:
        key = email.lower()
        with self._lock:
            if key in self._accounts:
                raise ValueError(f"user {email} already exists")
            if refresh_token in self._by_refresh:
                raise ValueError("refresh token already assigned to another user")
            box = GmailMailbox(email, aliases)
            self._accounts[key] = GoogleAccount(
                email=email,
                refresh_token=refresh_token,
                client_id=client_id,
                client_secret=client_secret,
                mailbox=box,
                display_name=display_name,
            )
            self._by_refresh[refresh_token] = key
            return box

    def account(self, email: str) -> GoogleAccount:
        with self._lock:
            return self._accounts[email.lower()]

    def mailbox(self, email: str) -> GmailMailbox:
        return self.account(email).mailbox

    def revoke_refresh_token(self, email: str) -> None:
        """The token endpoint answers invalid_grant and issued access tokens die."""
        with self._lock:
            acct = self._accounts[email.lower()]
            acct.revoked = True
            self._drop_access_tokens(acct.email)

    def issue_refresh_token(self, email: str, refresh_token: str) -> None:
        """A user re-authorises: a new refresh token replaces the revoked one."""
        with self._lock:
            acct = self._accounts[email.lower()]
            self._by_refresh.pop(acct.refresh_token, None)
            acct.refresh_token, acct.revoked = refresh_token, False
            self._by_refresh[refresh_token] = email.lower()

    def expire_access_tokens(self, email: str | None = None) -> None:
        """Forget issued access tokens (all, or one user's): next call gets 401."""
        with self._lock:
            self._drop_access_tokens(email)

    def _drop_access_tokens(self, email: str | None) -> None:
        for token, owner in list(self._access_tokens.items()):
            if email is None or owner == email.lower():
                del self._access_tokens[token]

    # -- faults and quota

    def inject_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        path_contains: str | None = None,
        in_batch: bool = False,
        delay_s: float = 2.0,
    ) -> None:
        """Make the next `count` matching requests fail.

        Matching is by `path_contains` (substring of the decoded path) and by
        `in_batch` (inner batch parts vs outer HTTP requests). With no
        `path_contains` the OAuth token endpoint is never hit. Note that httplib2
        silently resends a request once when the connection drops, so a "drop"
        surfaces as a client error only with count >= 2.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if kind == "drop" and in_batch:
            raise ValueError("an inner batch part cannot drop a connection")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_Fault(kind, count, path_contains, in_batch, delay_s))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _take_fault(self, path: str, in_batch: bool, is_token: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.in_batch != in_batch:
                    continue
                if fault.path_contains is None:
                    if is_token:
                        continue
                elif fault.path_contains not in path:
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def set_quota(self, units_per_second: float | None) -> None:
        """Per-user token bucket (capacity = one second of units); None disables."""
        if units_per_second is not None and units_per_second <= 0:
            raise ValueError("units_per_second must be positive")
        with self._lock:
            self._quota_rate = units_per_second
            self._buckets.clear()

    def _take_quota(self, email: str, cost: int) -> bool:
        with self._lock:
            if self._quota_rate is None or cost <= 0:
                return True
            bucket = self._buckets.get(email)
            if bucket is None:
                bucket = self._buckets[email] = _TokenBucket(self._quota_rate)
            return bucket.take(cost)

    # -- request log

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def _log(self, req: HTTPRequest, user: str | None, status: int, in_batch: bool) -> None:
        record = RequestRecord(
            method=req.method,
            path=req.path,
            query={k: list(v) for k, v in req.query.items()},
            user=user,
            status=status,
            in_batch=in_batch,
            at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(record)

    # -- persistence

    def save_state(self, path: str | Path) -> None:
        """Pickle accounts (mailboxes, history, tokens) so a restart keeps history ids valid."""
        with self._lock:
            state = {
                "version": STATE_VERSION,
                "accounts": self._accounts,
                "access_tokens": dict(self._access_tokens),
                "quota": self._quota_rate,
            }
            data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        Path(path).write_bytes(data)

    @classmethod
    def load_state(cls, path: str | Path, **server_kwargs: Any) -> GoogleSimulator:
        """A new (not yet started) simulator holding the saved accounts."""
        state = pickle.loads(Path(path).read_bytes())
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported simulator state version {state.get('version')!r}")
        sim = cls(**server_kwargs)
        sim._accounts = state["accounts"]
        sim._by_refresh = {a.refresh_token: key for key, a in sim._accounts.items()}
        sim._access_tokens = state["access_tokens"]
        sim._quota_rate = state["quota"]
        return sim

    # -- request pipeline

    def handle(self, request: HTTPRequest) -> HTTPResponse:
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        return self._process(request, in_batch=False, fallback_auth=None)

    def _account_for(self, authorization: str | None) -> GoogleAccount | None:
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        with self._lock:
            key = self._access_tokens.get(token.strip())
            acct = self._accounts.get(key) if key else None
            return acct if acct is not None and not acct.revoked else None

    def _process(
        self, req: HTTPRequest, *, in_batch: bool, fallback_auth: str | None
    ) -> HTTPResponse:
        matched = self.router.match(req.method, req.raw_path or req.path)
        route = matched[0] if matched else None
        account = self._account_for(req.header("authorization") or fallback_auth)
        call = ApiCall(req, matched[1] if matched else {}, account, in_batch, route)
        try:
            resp = self._run(call, route, in_batch)
        except Exception as exc:  # a simulator bug answers 500 instead of killing a batch
            resp = google_error(500, f"simulator error: {exc!r}", "backendError", "INTERNAL")
        self._log(req, call.log_user or call.user, resp.status, in_batch)
        return resp

    def _run(self, call: ApiCall, route: Route | None, in_batch: bool) -> HTTPResponse:
        is_token = route is not None and route.name == "oauth_token"
        fault = self._take_fault(call.request.path, in_batch, is_token)
        if fault is not None:
            if fault.kind == "drop":
                return drop_response()
            if fault.kind == "slow":
                time.sleep(fault.delay_s)
            else:
                return _fault_response(fault.kind)
        if route is None:
            return google_error(
                404,
                f"Not Found: {call.request.method} {call.request.path}",
                "notFound",
                "NOT_FOUND",
            )
        if route.auth and call.account is None:
            return _unauthenticated()
        if route.cost and call.account is not None:
            if not self._take_quota(call.account.email.lower(), route.cost):
                return _rate_limited()
        try:
            return route.handler(call)
        except ApiError as err:
            return err.response

    # -- routes

    def _register_core_routes(self) -> None:
        self.router.add("POST", r"/token", self._h_token, name="oauth_token", auth=False)
        self.router.add(
            "POST",
            r"/batch(?:/(?P<api>[^/]+)/(?P<version>[^/]+))?",
            self._h_batch,
            name="batch",
            auth=False,  # each inner part is authenticated on its own
        )

    def _register_gmail_routes(self) -> None:
        u = r"/gmail/v1/users/(?P<userId>[^/]+)"
        add = self.router.add
        add("GET", u + r"/profile", self._h_profile, name="gmail.getProfile", cost=1)
        add("GET", u + r"/messages", self._h_list, name="gmail.messages.list", cost=5)
        add("POST", u + r"/messages/send", self._h_send, name="gmail.messages.send", cost=100)
        add("GET", u + r"/messages/(?P<id>[^/]+)", self._h_get, name="gmail.messages.get", cost=5)
        add("GET", u + r"/history", self._h_history, name="gmail.history.list", cost=2)
        add("GET", u + r"/settings/sendAs", self._h_send_as, name="gmail.sendAs.list", cost=1)
        add("GET", u + r"/labels", self._h_labels, name="gmail.labels.list", cost=1)

    # -- OAuth

    def _h_token(self, call: ApiCall) -> HTTPResponse:
        form = parse_qs(call.request.body.decode("utf-8", "replace"), keep_blank_values=True)

        def first(name: str) -> str:
            return form.get(name, [""])[0]

        no_store = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        grant = first("grant_type")
        if grant != "refresh_token":
            return json_response(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Invalid grant_type: {grant}",
                },
                no_store,
            )
        with self._lock:
            key = self._by_refresh.get(first("refresh_token"))
            acct = self._accounts.get(key) if key else None
            ok = (
                acct is not None
                and not acct.revoked
                and acct.client_id == first("client_id")
                and acct.client_secret == first("client_secret")
            )
            if acct is not None:
                call.log_user = acct.email
            if not ok or acct is None:
                return json_response(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    },
                    no_store,
                )
            token = "ya29.sim-" + secrets.token_urlsafe(32)
            self._access_tokens[token] = acct.email.lower()
        body = {
            "access_token": token,
            "expires_in": 3599,
            "token_type": "Bearer",
            "scope": first("scope") or DEFAULT_SCOPE,
        }
        return json_response(200, body, no_store)

    # -- batch

    def _h_batch(self, call: ApiCall) -> HTTPResponse:
        req = call.request
        ctype = req.header("content-type") or ""
        boundary = header_param(ctype, "boundary")
        if not ctype.lower().startswith("multipart/mixed") or not boundary:
            raise _bad_request("Batch requests need Content-Type multipart/mixed with a boundary")
        parts = parse_multipart(req.body, boundary)
        if not parts:
            raise _bad_request("Batch request contains no parts")
        if len(parts) > MAX_BATCH_PARTS:
            raise _bad_request(f"Too many requests in batch: {len(parts)} > {MAX_BATCH_PARTS}")
        fallback = req.header("authorization")
        out: list[tuple[list[tuple[str, str]], bytes]] = []
        for headers, payload in parts:
            try:
                inner = parse_http_message(payload)
            except ValueError as exc:
                resp = _bad_request(f"Malformed batch part: {exc}").response
            else:
                resp = self._process(inner, in_batch=True, fallback_auth=fallback)
            cid = headers.get("content-id", "").strip()
            if cid.startswith("<") and cid.endswith(">"):
                cid = cid[1:-1]
            try:
                reason = http.HTTPStatus(resp.status).phrase
            except ValueError:
                reason = "Unknown"
            out.append(
                (
                    [("Content-Type", "application/http"), ("Content-ID", f"<response-{cid}>")],
                    serialize_http_response(resp, reason),
                )
            )
        out_boundary = "batch_" + secrets.token_hex(12)
        return HTTPResponse(
            status=200,
            body=build_multipart(out, out_boundary),
            content_type=f"multipart/mixed; boundary={out_boundary}",
        )

    # -- Gmail

    def _gmail_box(self, call: ApiCall) -> GmailMailbox:
        acct = call.account
        assert acct is not None  # route.auth guarantees it
        user_id = call.params.get("userId", "me")
        if user_id != "me" and user_id.lower() != acct.email.lower():
            raise ApiError(
                google_error(
                    403, f"Delegation denied for {acct.email}", "forbidden", "PERMISSION_DENIED"
                )
            )
        return acct.mailbox

    def _h_profile(self, call: ApiCall) -> HTTPResponse:
        return json_response(200, self._gmail_box(call).profile())

    def _h_list(self, call: ApiCall) -> HTTPResponse:
        box = self._gmail_box(call)
        req = call.request
        max_results = _int_param(req, "maxResults", 100, 1, 500)
        offset = _decode_page_token(req.param("pageToken"), "m")
        ids = box.query(
            req.params("labelIds"), req.param("q") or "", _bool_param(req, "includeSpamTrash")
        )
        page = ids[offset : offset + max_results]
        body: dict[str, Any] = {}
        if page:
            body["messages"] = [{"id": i, "threadId": t} for i, t in page]
        if offset + max_results < len(ids):
            body["nextPageToken"] = _encode_page_token("m", offset + max_results)
        body["resultSizeEstimate"] = len(ids)
        return json_response(200, body)

    def _h_get(self, call: ApiCall) -> HTTPResponse:
        box = self._gmail_box(call)
        fmt = (call.request.param("format") or "full").lower()
        if fmt not in ("full", "metadata", "minimal", "raw"):
            raise _bad_request(f"Invalid value at 'format' ({fmt})")
        found = box.get(call.params["id"])
        if found is None:
            raise _not_found()
        msg, hid = found
        return json_response(
            200, render_message(msg, hid, fmt, call.request.params("metadataHeaders"))
        )

    def _h_history(self, call: ApiCall) -> HTTPResponse:
        box = self._gmail_box(call)
        req = call.request
        raw_start = req.param("startHistoryId")
        if not raw_start:
            raise _bad_request("Missing required parameter: startHistoryId")
        try:
            start = int(raw_start)
        except ValueError:
            raise _bad_request(f"Invalid startHistoryId: {raw_start!r}") from None
        types = set(req.params("historyTypes"))
        unknown = types - set(HISTORY_TYPES)
        if unknown:
            raise _bad_request(f"Invalid historyTypes: {sorted(unknown)}")
        max_results = _int_param(req, "maxResults", 100, 1, 500)
        after = _decode_page_token(req.param("pageToken"), "h")
        records, next_after, current = box.history_page(
            start, after, types, req.param("labelId"), max_results
        )
        body: dict[str, Any] = {}
        if records:
            body["history"] = records
        if next_after is not None:
            body["nextPageToken"] = _encode_page_token("h", next_after)
        body["historyId"] = str(current)
        return json_response(200, body)

    def _h_send_as(self, call: ApiCall) -> HTTPResponse:
        box = self._gmail_box(call)
        acct = call.account
        assert acct is not None
        items = [
            {
                "sendAsEmail": box.email,
                "displayName": acct.display_name,
                "replyToAddress": "",
                "signature": "",
                "isPrimary": True,
                "isDefault": True,
                "verificationStatus": "accepted",
            }
        ]
        for alias in box.aliases:
            items.append(
                {
                    "sendAsEmail": alias,
                    "displayName": acct.display_name,
                    "replyToAddress": "",
                    "signature": "",
                    "isPrimary": False,
                    "treatAsAlias": True,
                    "verificationStatus": "accepted",
                }
            )
        return json_response(200, {"sendAs": items})

    def _h_labels(self, call: ApiCall) -> HTTPResponse:
        box = self._gmail_box(call)
        labels = [
            {"id": lab, "name": lab, "type": "system" if lab in SYSTEM_LABELS else "user"}
            for lab in box.all_labels()
        ]
        return json_response(200, {"labels": labels})

    def _h_send(self, call: ApiCall) -> HTTPResponse:
        box = self._gmail_box(call)
        try:
            payload = call.request.json() or {}
        except ValueError:
            raise _bad_request("Request body is not valid JSON") from None
        raw_text = payload.get("raw") if isinstance(payload, dict) else None
        if not raw_text:
            raise _bad_request(
                "'raw' RFC822 payload message string or uploading message via /upload/* URL "
                "required"
            )
        try:
            raw = _b64url_decode(raw_text)
        except (binascii.Error, ValueError):
            raise _bad_request("Invalid value for ByteString: raw") from None
        parsed = _parsed_raw(raw)
        headers = [(k, _header_text(v)) for k, v in parsed.items()]
        body = parsed.get_payload(decode=True)
        msg_id = self._new_message_id(box)
        thread_id = payload.get("threadId") or self._thread_for(box, parsed) or msg_id
        msg = SimMessage(
            id=msg_id,
            thread_id=thread_id,
            internal_date_ms=int(time.time() * 1000),
            label_ids=["SENT"],
            headers=headers,
            body=body if isinstance(body, bytes) else b"",
            raw=raw,
        )
        box.add_message(msg)
        return json_response(200, {"id": msg.id, "threadId": msg.thread_id, "labelIds": ["SENT"]})

    def _new_message_id(self, box: GmailMailbox) -> str:
        while True:
            candidate = f"{int(time.time() * 1000):x}{next(self._id_counter):05x}"
            if candidate not in box.messages:
                return candidate

    @staticmethod
    def _thread_for(box: GmailMailbox, parsed: Message) -> str | None:
        refs = " ".join(str(parsed.get(h, "")) for h in ("In-Reply-To", "References"))
        wanted = set(re.findall(r"<[^>]+>", refs))
        if not wanted:
            return None
        with box._lock:
            for msg in box.messages.values():
                mid = (msg.header("message-id") or "").strip()
                if mid in wanted:
                    return msg.thread_id
        return None
