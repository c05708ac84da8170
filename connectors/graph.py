"""Microsoft 365 streams over Graph v1.0: Outlook mail (Inbox + Sent Items) and calendar.

Auth: msal confidential client (connectors.msauth) redeeming the account's stored
refresh token; the Graph calls themselves are plain `requests`.

Mail cursor:     {"inbox": "<@odata.deltaLink>", "sentitems": "<@odata.deltaLink>"}
Calendar cursor: {"calendar": "<@odata.deltaLink>"}

Links are absolute URLs and are followed verbatim. A missing link means a first (full)
sync of that folder; an expired one (410, or a 4xx `syncStateNotFound` /
`resyncRequired` / `SyncStateInvalid`) restarts the initial query and reconciles:
ids still live in the lake for that folder but absent from the fresh listing get a
delete row, because Graph sends no tombstones across an expired cursor.

The cursor is only returned (SyncResult.cursor); the caller saves it once the landed
files are durable. Requests are sequential, well inside Outlook's limit of four
concurrent requests per mailbox.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msal
import requests

from connectors import lake
from connectors.base import ProgressFn, SyncResult
from connectors.mailparse import Blocklist, Malformed
from connectors.msauth import GraphAuthError, acquire_graph_token, build_confidential_app
from connectors.retry import (
    RETRYABLE_STATUS,
    AuthFailure,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
)
from transforms.addresses import normalise_address

__all__ = [
    "GRAPH_ENDPOINT",
    "GraphCalendarSync",
    "GraphClient",
    "GraphError",
    "GraphMailSync",
    "GraphSettings",
    "strip_html",
]

log = logging.getLogger("rapport.graph")

GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com/common"
MAIL_FOLDERS = ("inbox", "sentitems")
FOLDER_LABEL = {"inbox": "INBOX", "sentitems": "SENT"}
LABEL_FOLDER = {v: k for k, v in FOLDER_LABEL.items()}
MAIL_STREAM = "outlook_mail"
CALENDAR_STREAM = "outlook_calendar"
FLUSH_EVERY = 2000
MAX_RESTARTS = 3  # expired-cursor restarts per folder before giving up
TOKEN_SLACK_S = 300  # renew access tokens this long before they expire
EXPIRED_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
MAIL_SELECT = (
    "id,subject,conversationId,internetMessageId,sentDateTime,receivedDateTime,from,sender,"
    "toRecipients,ccRecipients,bccRecipients,replyTo,bodyPreview,body,"
    "internetMessageHeaders,parentFolderId"
)
_BODY_FIELDS = frozenset({"body", "bodyPreview"})
_REMOVED = object()  # pending-map value for an `@removed` entry


@dataclass
class GraphSettings:
    authority: str = DEFAULT_AUTHORITY
    graph_endpoint: str = GRAPH_ENDPOINT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 30.0
    page_size: int = 200  # Prefer: odata.maxpagesize for mail
    calendar_page_size: int = 100
    sync_bodies: bool = True
    calendar_past_days: int = 3650
    calendar_future_days: int = 365
    max_concurrency: int = 4  # Outlook's per-mailbox limit; this client stays sequential


class GraphError(Exception):
    """A Graph answer that is not a success. Carries no tokens or query strings."""

    def __init__(
        self, status: int, code: str, message: str, path: str, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.retry_after = retry_after
        super().__init__(f"Graph {status} {code} on {path}: {message}"[:400])

    @property
    def cursor_expired(self) -> bool:
        if self.status == 410:
            return True
        return 400 <= self.status < 500 and self.code.lower() in EXPIRED_CODES


class _BadBody(Exception):
    """A 200 whose body is not JSON (a truncated answer): worth a retry."""


def _classify(exc: BaseException) -> tuple[bool, float | None]:
    if isinstance(exc, GraphError):
        return exc.status in RETRYABLE_STATUS, exc.retry_after
    if isinstance(exc, GraphAuthError):
        return exc.transient, None
    if isinstance(exc, _BadBody | requests.ConnectionError | requests.Timeout):
        return True, None
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return True, None
    return False, None


# ----------------------------------------------------------------- client
class GraphClient:
    """Token handling (msal) plus GET with retries against the Graph endpoint."""

    def __init__(self, secrets: dict[str, str], settings: GraphSettings) -> None:
        self.settings = settings
        self._client_id = secrets["client_id"]
        self._client_secret = secrets["client_secret"]
        self._refresh_token = secrets["refresh_token"]
        self.cache = msal.SerializableTokenCache()
        self._app: msal.ConfidentialClientApplication | None = None
        self._access_token: str | None = None
        self._expires_at = 0.0
        self.new_refresh_token: str | None = None  # set when msal got a rotated one
        self.retries = 0
        self.root = settings.graph_endpoint.rstrip("/")
        self.session = requests.Session()

    def _on_retry(self, exc: BaseException, pause: float) -> None:
        self.retries += 1
        log.info("graph transient failure (%s); retrying in %.2fs", type(exc).__name__, pause)

    # -- tokens
    def _app_instance(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            # Construction fetches the authority's OIDC document (retried by the caller).
            self._app = build_confidential_app(
                client_id=self._client_id,
                client_secret=self._client_secret,
                authority=self.settings.authority,
                token_cache=self.cache,
            )
        return self._app

    def _acquire(self) -> None:
        def attempt() -> dict[str, Any]:
            return acquire_graph_token(self._app_instance(), refresh_token=self._refresh_token)

        try:
            result = call_with_retries(
                attempt, policy=self.settings.retry, classify=_classify, on_retry=self._on_retry
            )
        except GraphAuthError as exc:
            # Only the AAD error code: descriptions and tokens stay out of messages.
            raise AuthFailure(f"microsoft sign-in failed: {exc.reason}") from None
        self._access_token = str(result["access_token"])
        now = datetime.now(UTC).timestamp()
        self._expires_at = now + float(result.get("expires_in") or 0)
        self._note_rotation()

    def _note_rotation(self) -> None:
        for entry in self.cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN):
            secret = entry.get("secret")
            if secret and secret != self._refresh_token:
                self.new_refresh_token = secret

    def _drop_access_tokens(self) -> None:
        """Forget cached access tokens so the next acquire redeems the refresh token."""
        self._access_token = None
        for entry in list(self.cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            self.cache.remove_at(entry)

    def ensure_token(self) -> str:
        if self._access_token is None or datetime.now(UTC).timestamp() > (
            self._expires_at - TOKEN_SLACK_S
        ):
            self._acquire()
        assert self._access_token is not None
        return self._access_token

    # -- requests
    def url(self, url_or_path: str) -> str:
        if url_or_path.startswith(("http://", "https://")):
            return url_or_path  # @odata links: verbatim
        return f"{self.root}/{url_or_path.lstrip('/')}"

    def get(
        self,
        url_or_path: str,
        params: dict[str, str] | None = None,
        *,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        """GET one Graph resource as JSON, retrying throttling, 5xx and socket errors.

        A 401 gets one token refresh; a second 401 is an AuthFailure."""
        url = self.url(url_or_path)
        path = urlsplit(url).path
        prefer = 'IdType="ImmutableId"'
        if page_size:
            prefer = f"odata.maxpagesize={page_size}, {prefer}"
        refreshed = False

        def once() -> dict[str, Any]:
            nonlocal refreshed
            while True:
                token = self.ensure_token()
                resp = self.session.get(
                    url,
                    params=params,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Prefer": prefer,
                        "Accept": "application/json",
                    },
                    timeout=self.settings.timeout_s,
                )
                if resp.status_code == 401:
                    if refreshed:
                        raise AuthFailure("graph rejected a freshly refreshed access token (401)")
                    refreshed = True
                    self._drop_access_tokens()
                    continue
                if resp.status_code >= 400:
                    raise _error_from(resp, path)
                try:
                    body = resp.json()
                except ValueError:
                    raise _BadBody(f"non-JSON answer on {path}") from None
                if not isinstance(body, dict):
                    raise _BadBody(f"unexpected JSON on {path}")
                return body

        return call_with_retries(
            once, policy=self.settings.retry, classify=_classify, on_retry=self._on_retry
        )

    def me(self) -> dict[str, Any]:
        return self.get("me")

    def close(self) -> None:
        self.session.close()


def _error_from(resp: requests.Response, path: str) -> GraphError:
    code, message = "", ""
    try:
        err = resp.json().get("error") or {}
        if isinstance(err, dict):
            code = str(err.get("code") or "")
            message = str(err.get("message") or "")
    except (ValueError, AttributeError):
        pass
    return GraphError(
        resp.status_code,
        code or resp.reason or "error",
        message,
        path,
        parse_retry_after(resp.headers.get("Retry-After")),
    )


# ----------------------------------------------------------------- parsing helpers
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_BREAKS = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.I)
_TAGS = re.compile(r"<[^>]*>")
_COMMENTS = re.compile(r"<!--.*?-->", re.S)


def strip_html(text: str) -> str:
    """Crude HTML -> text: drop scripts/styles/comments/tags, keep line breaks, unescape."""
    text = _COMMENTS.sub("", _SCRIPT_STYLE.sub(" ", text))
    text = _TAGS.sub("", _BREAKS.sub("\n", text))
    text = html.unescape(text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line).strip()


def _parse_utc(value: Any) -> datetime | None:
    """Graph's ISO timestamps ("...Z", offsets, naive = UTC) -> aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        dt = datetime.fromisoformat(_trim_fraction(value.strip()))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _trim_fraction(value: str) -> str:
    # Graph uses seven fractional digits; keep at most six for older parsers.
    return re.sub(r"(\.\d{6})\d+", r"\1", value)


def _parse_zoned(value: Any) -> datetime | None:
    """A Graph dateTimeTimeZone {dateTime (no offset), timeZone} -> UTC datetime."""
    if not isinstance(value, dict):
        return None
    raw = value.get("dateTime")
    zone = (value.get("timeZone") or "UTC").strip()
    if not isinstance(raw, str):
        return None
    try:
        dt = datetime.fromisoformat(_trim_fraction(raw.strip()))
    except ValueError:
        return None
    if dt.tzinfo is None:
        if zone.upper() in ("UTC", "Z", "GMT", "ETC/UTC", "COORDINATED UNIVERSAL TIME"):
            dt = dt.replace(tzinfo=UTC)
        else:
            try:
                dt = dt.replace(tzinfo=ZoneInfo(zone))
            except (ZoneInfoNotFoundError, ValueError):
                raise Malformed("unknown time zone", zone[:60]) from None
    return dt.astimezone(UTC)


def _email(obj: Any) -> tuple[str, str | None] | None:
    """{"emailAddress": {"address", "name"}} -> (address, name) or None."""
    if not isinstance(obj, dict):
        return None
    inner = obj.get("emailAddress")
    if not isinstance(inner, dict):
        return None
    address = (inner.get("address") or "").strip()
    if not address:
        return None
    name = " ".join(str(inner.get("name") or "").split()) or None
    return address, name


def _recipients(values: Any) -> Iterable[tuple[str, str | None]]:
    for obj in values or []:
        found = _email(obj)
        if found is not None:
            yield found


def _headers(item: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in item.get("internetMessageHeaders") or []:
        name = str(h.get("name") or "").lower()
        if name and name not in out:
            out[name] = str(h.get("value") or "").strip()
    return out


# ----------------------------------------------------------------- mail landing
def land_graph_message(
    batch: lake.Batch, item: dict[str, Any], folder: str, blocklist: Blocklist, with_body: bool
) -> str:
    """Add one Graph message to the batch: 'landed', 'blocked' or 'quarantined'."""
    mid = str(item["id"])
    thread_id = item.get("conversationId")
    label = FOLDER_LABEL[folder]
    sender = _email(item.get("from")) or _email(item.get("sender"))
    if sender is None or normalise_address(sender[0]) is None:
        batch.add("quarantine", _quarantine(MAIL_STREAM, mid, "missing or invalid from address"))
        return "quarantined"
    participants: list[tuple[str, str, str | None]] = [("from", *sender)]
    for key, role in (
        ("toRecipients", "to"),
        ("ccRecipients", "cc"),
        ("bccRecipients", "bcc"),
        ("replyTo", "reply_to"),
    ):
        participants.extend((role, a, n) for a, n in _recipients(item.get(key)))
    addresses = [a for _, a, _ in participants]
    other_sender = _email(item.get("sender"))
    if other_sender is not None:
        addresses.append(other_sender[0])
    if blocklist and blocklist.matches(addresses):
        # Marker only: no participants, no content. The folder label stays so a resync
        # can still reconcile (delete) the marker.
        batch.add(
            "messages",
            {
                "provider": "microsoft",
                "stream": MAIL_STREAM,
                "message_id": mid,
                "thread_id": thread_id,
                "op": "upsert",
                "blocked": True,
                "labels": [label],
            },
        )
        return "blocked"
    sent_at = _parse_utc(item.get("sentDateTime")) or _parse_utc(item.get("receivedDateTime"))
    if sent_at is None:
        batch.add("quarantine", _quarantine(MAIL_STREAM, mid, "no usable sent/received date"))
        return "quarantined"
    if sent_at.year < 1971 or sent_at.year > 2200:
        batch.add("quarantine", _quarantine(MAIL_STREAM, mid, "date out of range"))
        return "quarantined"
    headers = _headers(item)
    body_text = None
    if with_body:
        body = item.get("body") or {}
        content = body.get("content") if isinstance(body, dict) else None
        if isinstance(content, str):
            is_html = str(body.get("contentType") or "").lower() == "html"
            body_text = strip_html(content) if is_html else content
    batch.add(
        "messages",
        {
            "provider": "microsoft",
            "stream": MAIL_STREAM,
            "message_id": mid,
            "thread_id": thread_id,
            "rfc_message_id": item.get("internetMessageId"),
            "op": "upsert",
            "blocked": False,
            "sent_at": sent_at,
            "subject": item.get("subject"),
            "snippet": item.get("bodyPreview") if with_body else None,
            "body_text": body_text,
            "labels": [label],
            "list_id": headers.get("list-id") or None,
            "list_unsubscribe": headers.get("list-unsubscribe") or None,
            "precedence": headers.get("precedence") or None,
            "auto_submitted": headers.get("auto-submitted") or None,
            "in_reply_to": headers.get("in-reply-to") or None,
        },
    )
    for role, address, name in participants:
        batch.add(
            "participants", {"message_id": mid, "role": role, "address": address, "name": name}
        )
    return "landed"


def _mail_delete(mid: str) -> dict[str, Any]:
    return {
        "provider": "microsoft",
        "stream": MAIL_STREAM,
        "message_id": mid,
        "op": "delete",
        "blocked": False,
        "labels": [],
    }


def _quarantine(stream: str, item_id: str, reason: str, detail: str = "") -> dict[str, Any]:
    return {"stream": stream, "item_id": item_id, "reason": reason, "detail": detail}


def live_message_folders(lake_dir: Path, account_id: str) -> dict[str, str | None]:
    """message_id -> folder of its latest landed version, for ids whose latest is live."""
    current = lake.live_rows(lake_dir, "messages", account_id, ["labels"], MAIL_STREAM)
    out: dict[str, str | None] = {}
    ids, labels_col = current["message_id"].to_list(), current["labels"].to_list()
    for mid, labels in zip(ids, labels_col, strict=True):
        out[mid] = next((LABEL_FOLDER[x] for x in labels or [] if x in LABEL_FOLDER), None)
    return out


def live_event_ids(lake_dir: Path, account_id: str) -> set[str]:
    current = lake.live_rows(lake_dir, "events", account_id, [], CALENDAR_STREAM)
    return set(current["event_id"].to_list())


def _mode(modes: Iterable[str]) -> str:
    seen = set(modes)
    if "resync" in seen:
        return "resync"
    if "full" in seen:
        return "full"
    return "incremental"


def _count(result: SyncResult, outcome: str) -> None:
    if outcome == "landed":
        result.landed += 1
    elif outcome == "blocked":
        result.blocked += 1
    else:
        result.quarantined += 1


class _GraphStream:
    """What every Graph stream holds: the lake, the account, its client and blocklist."""

    def __init__(
        self,
        *,
        lake_dir: Path,
        account_id: str,
        secrets: dict[str, str],
        settings: GraphSettings,
        blocklist: Blocklist,
        progress: ProgressFn | None = None,
    ) -> None:
        self.lake_dir = Path(lake_dir)
        self.account_id = account_id
        self.settings = settings
        self.blocklist = blocklist
        self.progress = progress or (lambda done, total: None)
        self.client = GraphClient(secrets, settings)


# ----------------------------------------------------------------- mail stream
class GraphMailSync(_GraphStream):
    """One account's Outlook mail: per-folder message delta for Inbox and Sent Items."""

    def run(self, cursor: dict[str, Any] | None) -> SyncResult:
        self.client.ensure_token()  # an unfixable auth problem surfaces before any work
        cursor = cursor or {}
        result = SyncResult(mode="full", provider_total=self._provider_total())
        result.aliases = self._aliases()
        self._done = 0
        # Deletes wait until every folder is walked: a move shows up as @removed in
        # one folder and as an item in the other, in whichever order we read them.
        self._deferred: dict[str, str] = {}  # message_id -> folder it was removed from
        listings: dict[str, set[str]] = {}  # folders that were resynced -> listed ids
        links: dict[str, str] = {}
        modes: list[str] = []
        try:
            for folder in MAIL_FOLDERS:
                link = cursor.get(folder)
                mode = "incremental" if isinstance(link, str) and link else "full"
                links[folder], mode, listed = self._sync_folder(folder, link, mode, result)
                modes.append(mode)
                if mode == "resync":
                    listings[folder] = listed
            self._settle_deletes(listings, result)
        finally:
            self.client.close()
        result.mode = _mode(modes)
        result.cursor = links
        result.retries = self.client.retries
        return result

    # -- provider facts
    def _provider_total(self) -> int | None:
        total = 0
        for folder in MAIL_FOLDERS:
            try:
                info = self.client.get(f"me/mailFolders/{folder}")
            except GraphError:
                return None  # a nicety: never fail a sync over the count
            total += int(info.get("totalItemCount") or 0)
        return total

    def _aliases(self) -> list[str] | None:
        try:
            me = self.client.me()
        except GraphError:
            return None
        out: list[str] = []
        for proxy in me.get("proxyAddresses") or []:
            kind, _, address = str(proxy).partition(":")
            if kind.lower() == "smtp" and address and address.lower() not in out:
                out.append(address.lower())
        mail = str(me.get("mail") or "").lower()
        if mail and mail not in out:
            out.insert(0, mail)
        return out

    # -- folders
    def _initial(self, folder: str) -> tuple[str, dict[str, str]]:
        fields = MAIL_SELECT.split(",")
        if not self.settings.sync_bodies:
            fields = [f for f in fields if f not in _BODY_FIELDS]
        return f"me/mailFolders/{folder}/messages/delta", {"$select": ",".join(fields)}

    def _sync_folder(
        self, folder: str, link: str | None, mode: str, result: SyncResult
    ) -> tuple[str, str, set[str]]:
        """Walk one folder to its deltaLink; returns (deltaLink, mode, listed ids)."""
        for restart in range(MAX_RESTARTS + 1):
            if mode == "incremental" and link:
                url, params = link, None
            else:
                url, params = self._initial(folder)
            try:
                delta, listed = self._walk(folder, url, params, result)
                return delta, mode, listed
            except GraphError as exc:
                if not exc.cursor_expired or restart == MAX_RESTARTS:
                    raise
                log.warning(
                    "outlook %s delta for %s expired (%s); resyncing the folder",
                    folder,
                    self.account_id,
                    exc.code,
                )
                mode = "resync"
        raise AssertionError("unreachable")

    def _walk(
        self, folder: str, url: str, params: dict[str, str] | None, result: SyncResult
    ) -> tuple[str, set[str]]:
        listed: set[str] = set()
        # Last occurrence per id wins (Graph may replay items); flushed every FLUSH_EVERY.
        pending: dict[str, Any] = {}
        while True:
            page = self.client.get(url, params, page_size=self.settings.page_size)
            params = None  # options go on the first request only; links carry them
            for item in page.get("value") or []:
                mid = item.get("id")
                if not mid:
                    continue
                pending.pop(mid, None)
                if "@removed" in item:
                    pending[mid] = _REMOVED
                    listed.discard(mid)
                else:
                    pending[mid] = item
                    listed.add(mid)
            if len(pending) >= FLUSH_EVERY:
                self._land(folder, pending, result)
                pending = {}
            nxt = page.get("@odata.nextLink")
            if nxt:
                url = nxt
                continue
            delta = page.get("@odata.deltaLink")
            if not delta:
                raise GraphError(200, "NoDeltaLink", "page had neither link", urlsplit(url).path)
            self._land(folder, pending, result)
            return delta, listed

    def _land(self, folder: str, pending: dict[str, Any], result: SyncResult) -> None:
        if not pending:
            return
        batch = lake.Batch(self.account_id)
        for mid, item in pending.items():
            if item is _REMOVED:
                self._deferred[mid] = folder
                continue
            self._deferred.pop(mid, None)  # re-added or moved here: the removal is moot
            outcome = land_graph_message(
                batch, item, folder, self.blocklist, self.settings.sync_bodies
            )
            _count(result, outcome)
        lake.flush(self.lake_dir, batch)
        self._done += len(pending)
        self.progress(self._done, result.provider_total)

    def _settle_deletes(self, listings: dict[str, set[str]], result: SyncResult) -> None:
        """Land removals and resync reconciliation against the lake's current state."""
        if not self._deferred and not listings:
            return
        # Everything this run fetched is flushed, so the lake says where each id lives now.
        where = live_message_folders(self.lake_dir, self.account_id)
        doomed: list[str] = []
        for mid, folder in self._deferred.items():
            if where.get(mid) == folder:  # still live there: a real delete, not a move
                doomed.append(mid)
        for folder, listed in listings.items():
            doomed.extend(mid for mid, f in where.items() if f == folder and mid not in listed)
        doomed = list(dict.fromkeys(doomed))
        if not doomed:
            return
        batch = lake.Batch(self.account_id)
        for mid in doomed:
            batch.add("messages", _mail_delete(mid))
        lake.flush(self.lake_dir, batch)
        result.deleted += len(doomed)


# ----------------------------------------------------------------- calendar stream
def land_graph_event(batch: lake.Batch, item: dict[str, Any], blocklist: Blocklist) -> str:
    """Add one Graph event (one occurrence) to the batch: 'landed'|'blocked'|'quarantined'."""
    eid = str(item["id"])
    organizer = _email(item.get("organizer"))
    attendees: list[tuple[str, str | None, str | None, bool]] = []
    org_addr = organizer[0].lower() if organizer else None
    for att in item.get("attendees") or []:
        found = _email(att)
        if found is None or found[0].lower() == org_addr:
            continue  # the organizer is listed once, as organizer
        status = att.get("status") if isinstance(att.get("status"), dict) else {}
        attendees.append(
            (found[0], found[1], status.get("response"), att.get("type") == "resource")
        )
    addresses = [a for a, *_ in attendees] + ([organizer[0]] if organizer else [])
    if blocklist and blocklist.matches(addresses):
        batch.add(
            "events",
            {
                "provider": "microsoft",
                "stream": CALENDAR_STREAM,
                "event_id": eid,
                "op": "upsert",
                "status": "blocked",
            },
        )
        return "blocked"
    try:
        starts_at = _parse_zoned(item.get("start"))
        ends_at = _parse_zoned(item.get("end"))
    except Malformed as bad:
        batch.add("quarantine", _quarantine(CALENDAR_STREAM, eid, bad.reason, bad.detail))
        return "quarantined"
    if starts_at is None or ends_at is None:
        batch.add("quarantine", _quarantine(CALENDAR_STREAM, eid, "unparseable start or end"))
        return "quarantined"
    batch.add(
        "events",
        {
            "provider": "microsoft",
            "stream": CALENDAR_STREAM,
            "event_id": eid,
            "ical_uid": item.get("iCalUId"),
            "op": "upsert",
            "status": "confirmed",
            "title": item.get("subject"),
            "starts_at": starts_at,
            "ends_at": ends_at,
            "all_day": bool(item.get("isAllDay")),
            "recurring_event_id": item.get("seriesMasterId"),
        },
    )
    if organizer is not None:
        batch.add(
            "attendees",
            {
                "event_id": eid,
                "role": "organizer",
                "address": organizer[0],
                "name": organizer[1],
                "response_status": None,
                "resource": False,
            },
        )
    for address, name, response, resource in attendees:
        batch.add(
            "attendees",
            {
                "event_id": eid,
                "role": "attendee",
                "address": address,
                "name": name,
                "response_status": response,
                "resource": resource,
            },
        )
    return "landed"


def _event_delete(eid: str) -> dict[str, Any]:
    return {
        "provider": "microsoft",
        "stream": CALENDAR_STREAM,
        "event_id": eid,
        "op": "delete",
        "status": "cancelled",
    }


def _iso_utc(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GraphCalendarSync(_GraphStream):
    """One account's Outlook calendar via calendarView delta (one row per occurrence).

    The calendarView window is fixed inside the delta token when the first sync runs."""

    def _initial(self) -> tuple[str, dict[str, str]]:
        now = datetime.now(UTC).replace(microsecond=0)
        return "me/calendarView/delta", {
            "startDateTime": _iso_utc(now - timedelta(days=self.settings.calendar_past_days)),
            "endDateTime": _iso_utc(now + timedelta(days=self.settings.calendar_future_days)),
        }

    def run(self, cursor: dict[str, Any] | None) -> SyncResult:
        self.client.ensure_token()
        link = (cursor or {}).get("calendar")
        mode = "incremental" if isinstance(link, str) and link else "full"
        result = SyncResult(mode=mode)
        self._done = 0
        try:
            for restart in range(MAX_RESTARTS + 1):
                if mode == "incremental":
                    url, params = str(link), None
                else:
                    url, params = self._initial()
                try:
                    delta, listed = self._walk(url, params, result)
                    break
                except GraphError as exc:
                    if not exc.cursor_expired or restart == MAX_RESTARTS:
                        raise
                    log.warning(
                        "outlook calendar delta for %s expired (%s); resyncing",
                        self.account_id,
                        exc.code,
                    )
                    mode = "resync"
            if mode == "resync":
                self._reconcile(listed, result)
        finally:
            self.client.close()
        result.mode = mode
        result.cursor = {"calendar": delta}
        result.retries = self.client.retries
        return result

    def _walk(
        self, url: str, params: dict[str, str] | None, result: SyncResult
    ) -> tuple[str, set[str]]:
        listed: set[str] = set()
        pending: dict[str, Any] = {}
        while True:
            page = self.client.get(url, params, page_size=self.settings.calendar_page_size)
            params = None
            for item in page.get("value") or []:
                eid = item.get("id")
                if not eid:
                    continue
                pending.pop(eid, None)
                if "@removed" in item or item.get("isCancelled") is True:
                    pending[eid] = _REMOVED
                    listed.discard(eid)
                else:
                    pending[eid] = item
                    listed.add(eid)
            if len(pending) >= FLUSH_EVERY:
                self._land(pending, result)
                pending = {}
            nxt = page.get("@odata.nextLink")
            if nxt:
                url = nxt
                continue
            delta = page.get("@odata.deltaLink")
            if not delta:
                raise GraphError(200, "NoDeltaLink", "page had neither link", urlsplit(url).path)
            self._land(pending, result)
            return delta, listed

    def _land(self, pending: dict[str, Any], result: SyncResult) -> None:
        if not pending:
            return
        batch = lake.Batch(self.account_id)
        for eid, item in pending.items():
            if item is _REMOVED:
                batch.add("events", _event_delete(eid))
                result.deleted += 1
                continue
            _count(result, land_graph_event(batch, item, self.blocklist))
        lake.flush(self.lake_dir, batch)
        self._done += len(pending)
        self.progress(self._done, None)

    def _reconcile(self, listed: set[str], result: SyncResult) -> None:
        vanished = sorted(live_event_ids(self.lake_dir, self.account_id) - listed)
        if not vanished:
            return
        batch = lake.Batch(self.account_id)
        for eid in vanished:
            batch.add("events", _event_delete(eid))
        lake.flush(self.lake_dir, batch)
        result.deleted += len(vanished)
