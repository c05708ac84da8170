"""Gmail messages stream: full listing first, then history.list deltas.

Cursor: {"history_id": "<uint64 string>"} saved only after the data it covers is durable.
First sync: record getProfile.historyId, list every id, batch-get them 50 at a time
(BatchHttpRequest with our own batch_uri; the library's default still points at Google),
land, then save the cursor. Later syncs read history.list from the cursor; a 404 means
the cursor expired, so we run a full sync that also lands deletes for ids that vanished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import google_auth_httplib2
import httplib2
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from connectors import lake
from connectors.base import ProgressFn, SyncResult
from connectors.mailparse import (
    Blocklist,
    Malformed,
    b64url_decode,
    decode_body,
    parse_mail_headers,
)
from connectors.retry import (
    RETRYABLE_STATUS,
    TRANSIENT_NETWORK_ERRORS,
    AuthFailure,
    RetryPolicy,
    TokenBucket,
    call_with_retries,
    parse_retry_after,
)

log = logging.getLogger("rapport.gmail")

GOOGLE_API_ROOT = "https://www.googleapis.com/"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPES = [
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/gmail.send",
]
BATCH_SIZE = 50  # Gmail allows 100 per batch and recommends 50
LIST_PAGE = 500
FLUSH_EVERY = 2000  # messages per landed Parquet file
UNITS = {"get": 5, "list": 5, "history": 2, "profile": 1}
HISTORY_TYPES = ["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]


@dataclass
class GmailSettings:
    api_endpoint: str = GOOGLE_API_ROOT
    token_uri: str = GOOGLE_TOKEN_URI
    quota_units_per_second: float | None = 250.0
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sync_bodies: bool = True
    after: datetime | None = None  # backfill window (first sync only)


def _http_error_status(exc: HttpError) -> int:
    return int(getattr(exc.resp, "status", 0) or 0)


def _is_rate_limit_403(exc: HttpError) -> bool:
    text = exc.content.decode("utf-8", "replace") if exc.content else ""
    return "RateLimitExceeded" in text or "rateLimitExceeded" in text


def classify(exc: BaseException) -> tuple[bool, float | None]:
    if isinstance(exc, HttpError):
        status = _http_error_status(exc)
        retry_after = parse_retry_after(exc.resp.get("retry-after"))
        if status in RETRYABLE_STATUS or (status == 403 and _is_rate_limit_403(exc)):
            return True, retry_after
        return False, None
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return False, None
    if isinstance(exc, google.auth.exceptions.TransportError):
        return True, None
    return isinstance(exc, TRANSIENT_NETWORK_ERRORS), None


class GoogleClient:
    """A real google-api-python-client service behind one account's credentials.

    Shared by Gmail and Calendar: OAuth refresh against `token_uri`, an endpoint, a
    quota token bucket, and retries of transient failures (AuthFailure when refresh fails).
    """

    label = "google"

    def __init__(
        self,
        secrets: dict[str, str],
        settings: GmailSettings,
        *,
        api: str,
        version: str,
        service_path: str = "",
        units_per_second: float | None = None,
    ):
        self.settings = settings
        self.creds = Credentials(
            None,
            refresh_token=secrets["refresh_token"],
            token_uri=settings.token_uri,
            client_id=secrets["client_id"],
            client_secret=secrets["client_secret"],
            scopes=SCOPES,
        )
        endpoint = settings.api_endpoint
        self.root = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.http = google_auth_httplib2.AuthorizedHttp(
            self.creds, http=httplib2.Http(timeout=settings.timeout_s)
        )
        self.service = build(
            api,
            version,
            http=self.http,
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": self.root + service_path},
        )
        self.bucket = TokenBucket(units_per_second)
        self.retries = 0

    def _on_retry(self, exc: BaseException, pause: float) -> None:
        self.retries += 1
        log.info(
            "%s transient failure (%s); retrying in %.2fs", self.label, type(exc).__name__, pause
        )

    def execute(self, request: Any, units: int = 1) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            self.bucket.acquire(units)
            try:
                return request.execute()
            except google.auth.exceptions.RefreshError as exc:
                raise AuthFailure(_auth_reason(exc)) from None
            except HttpError as exc:
                if _http_error_status(exc) == 401:
                    raise AuthFailure("access rejected after refresh (401)") from None
                raise

        return call_with_retries(
            run, policy=self.settings.retry, classify=classify, on_retry=self._on_retry
        )

    def ensure_token(self) -> None:
        """Refresh up front so an unfixable auth failure surfaces as AuthFailure."""
        if self.creds.valid:
            return
        try:
            call_with_retries(
                lambda: self.creds.refresh(google.auth.transport.requests.Request()),
                policy=self.settings.retry,
                classify=classify,
                on_retry=self._on_retry,
            )
        except google.auth.exceptions.RefreshError as exc:
            raise AuthFailure(_auth_reason(exc)) from None


class GmailClient(GoogleClient):
    """Gmail v1: quota counted in Gmail's units per call."""

    label = "gmail"

    def __init__(self, secrets: dict[str, str], settings: GmailSettings):
        super().__init__(
            secrets,
            settings,
            api="gmail",
            version="v1",
            units_per_second=settings.quota_units_per_second,
        )

    # ----------------------------------------------------------------- calls
    def profile(self) -> dict[str, Any]:
        users = self.service.users()
        return self.execute(users.getProfile(userId="me"), UNITS["profile"])

    def list_ids(self, query: str | None = None) -> list[tuple[str, str]]:
        ids: list[tuple[str, str]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"userId": "me", "maxResults": LIST_PAGE}
            if token:
                kwargs["pageToken"] = token
            if query:
                kwargs["q"] = query
            page = self.execute(self.service.users().messages().list(**kwargs), UNITS["list"])
            ids.extend((m["id"], m["threadId"]) for m in page.get("messages", []))
            token = page.get("nextPageToken")
            if not token:
                return ids

    def history(self, start_history_id: str) -> tuple[list[dict[str, Any]], str]:
        records: list[dict[str, Any]] = []
        token: str | None = None
        latest = start_history_id
        while True:
            kwargs: dict[str, Any] = {
                "userId": "me",
                "startHistoryId": start_history_id,
                "historyTypes": HISTORY_TYPES,
                "maxResults": 500,
            }
            if token:
                kwargs["pageToken"] = token
            req = self.service.users().history().list(**kwargs)
            page = self.execute(req, UNITS["history"])
            records.extend(page.get("history", []))
            latest = page.get("historyId", latest)
            token = page.get("nextPageToken")
            if not token:
                return records, latest

    def send_as(self) -> list[str]:
        req = self.service.users().settings().sendAs().list(userId="me")
        page = self.execute(req, 1)
        return [s["sendAsEmail"].lower() for s in page.get("sendAs", []) if s.get("sendAsEmail")]

    def get_many(self, ids: list[str], fmt: str) -> dict[str, dict[str, Any] | None]:
        """Batch-get messages; None for ids that no longer exist (404)."""
        out: dict[str, dict[str, Any] | None] = {}
        messages_api = self.service.users().messages()  # built once: costly per request
        pending = list(ids)
        attempt = 0
        policy = self.settings.retry
        while pending:
            chunk, pending = pending[:BATCH_SIZE], pending[BATCH_SIZE:]
            failed: list[str] = []
            retry_after: list[float] = []

            def callback(
                request_id: str,
                response: Any,
                exception: Exception | None,
                failed: list[str] = failed,
                retry_after: list[float] = retry_after,
            ) -> None:
                if exception is None:
                    out[request_id] = response
                    return
                if isinstance(exception, HttpError):
                    status = _http_error_status(exception)
                    if status == 404:
                        out[request_id] = None
                        return
                    retryable, ra = classify(exception)
                    if retryable:
                        failed.append(request_id)
                        if ra is not None:
                            retry_after.append(ra)
                        return
                raise exception

            batch = BatchHttpRequest(callback=callback, batch_uri=self.root + "batch/gmail/v1")
            for mid in chunk:
                batch.add(
                    messages_api.get(userId="me", id=mid, format=fmt),
                    request_id=mid,
                )
            self.execute(batch, UNITS["get"] * len(chunk))
            if failed:
                # The library does not retry inner failures: re-queue them ourselves.
                if attempt >= policy.attempts:
                    raise RuntimeError(f"{len(failed)} messages kept failing inside batches")
                self.retries += 1
                pause = policy.delay(attempt, max(retry_after) if retry_after else None)
                attempt += 1
                time.sleep(pause)
                pending = failed + pending
            else:
                attempt = 0
        return out


def _auth_reason(exc: Exception) -> str:
    # RefreshError args carry the provider's error code, never the token itself.
    args = getattr(exc, "args", ())
    text = str(args[0]) if args else type(exc).__name__
    return text.split(":")[0][:120] or "refresh failed"


# ----------------------------------------------------------------- landing
def _header_pairs(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h.get("name", ""), h.get("value", "")) for h in payload.get("headers", [])]


def _find_text_part(payload: dict[str, Any]) -> dict[str, Any] | None:
    if payload.get("mimeType", "").startswith("text/plain") and "data" in payload.get("body", {}):
        return payload
    for part in payload.get("parts", []) or []:
        found = _find_text_part(part)
        if found is not None:
            return found
    return None


def _content_type(part: dict[str, Any]) -> str | None:
    for name, value in _header_pairs(part):
        if name.lower() == "content-type":
            return value
    return None


def land_message(
    batch: lake.Batch, msg: dict[str, Any], blocklist: Blocklist, with_body: bool
) -> str:
    """Add one Gmail message to the batch. Returns 'landed', 'blocked' or 'quarantined'."""
    mid = msg["id"]
    thread_id = msg.get("threadId")
    try:
        internal = datetime.fromtimestamp(int(msg.get("internalDate", "0")) / 1000, UTC)
    except (TypeError, ValueError):
        internal = None
    payload = msg.get("payload") or {}
    try:
        parsed = parse_mail_headers(_header_pairs(payload), fallback_time=internal)
    except Malformed as bad:
        batch.add("quarantine", _quarantine_row(mid, bad))
        return "quarantined"
    if blocklist and blocklist.matches(parsed.addresses()):
        # Marker only: no participants, no content ever reach disk.
        batch.add("messages", _marker_row(mid, thread_id))
        return "blocked"
    body_text = None
    if with_body:
        part = _find_text_part(payload)
        if part is not None:
            try:
                body_text = decode_body(b64url_decode(part["body"]["data"]), _content_type(part))
            except Malformed as bad:
                batch.add("quarantine", _quarantine_row(mid, bad))
                return "quarantined"
            except (ValueError, KeyError):
                batch.add("quarantine", _quarantine_row(mid, Malformed("body is not base64url")))
                return "quarantined"
    batch.add(
        "messages",
        {
            "provider": "google",
            "stream": "gmail",
            "message_id": mid,
            "thread_id": thread_id,
            "rfc_message_id": parsed.rfc_message_id,
            "op": "upsert",
            "blocked": False,
            "sent_at": parsed.sent_at,
            "subject": parsed.subject,
            "snippet": msg.get("snippet") if with_body else None,
            "body_text": body_text,
            "labels": list(msg.get("labelIds", [])),
            "list_id": parsed.list_id,
            "list_unsubscribe": parsed.list_unsubscribe,
            "precedence": parsed.precedence,
            "auto_submitted": parsed.auto_submitted,
            "in_reply_to": parsed.in_reply_to,
        },
    )
    for role, address, name in parsed.participants:
        batch.add(
            "participants", {"message_id": mid, "role": role, "address": address, "name": name}
        )
    return "landed"


def _marker_row(mid: str, thread_id: str | None) -> dict[str, Any]:
    return {
        "provider": "google",
        "stream": "gmail",
        "message_id": mid,
        "thread_id": thread_id,
        "op": "upsert",
        "blocked": True,
        "labels": [],
    }


def _delete_row(mid: str) -> dict[str, Any]:
    return {
        "provider": "google",
        "stream": "gmail",
        "message_id": mid,
        "op": "delete",
        "blocked": False,
        "labels": [],
    }


def _quarantine_row(mid: str, bad: Malformed) -> dict[str, Any]:
    return {"stream": "gmail", "item_id": mid, "reason": bad.reason, "detail": bad.detail}


def live_message_ids(lake_dir: Path, account_id: str) -> set[str]:
    """Ids whose latest landed version is not a delete (for resync reconciliation)."""
    return set(lake.live_rows(lake_dir, "messages", account_id, [])["message_id"].to_list())


class GmailSync:
    """One account's Gmail stream: decides full vs incremental and lands the result."""

    def __init__(
        self,
        *,
        lake_dir: Path,
        account_id: str,
        secrets: dict[str, str],
        settings: GmailSettings,
        blocklist: Blocklist,
        progress: ProgressFn | None = None,
    ):
        self.lake_dir = lake_dir
        self.account_id = account_id
        self.settings = settings
        self.blocklist = blocklist
        self.progress = progress or (lambda done, total: None)
        self.client = GmailClient(secrets, settings)

    def run(self, cursor: dict[str, Any] | None, refetch: list[str] | None = None) -> SyncResult:
        """Full or incremental sync; `refetch` re-gets ids purged by a since-removed block."""
        self.client.ensure_token()
        if cursor and cursor.get("history_id"):
            try:
                result = self.incremental(str(cursor["history_id"]))
            except HttpError as exc:
                if _http_error_status(exc) != 404:
                    raise
                log.warning("history expired for %s; running a full resync", self.account_id)
                result = self.full(mode="resync")
        else:
            result = self.full(mode="full")
        if refetch:
            self._fetch_and_land(list(refetch), result)
        try:
            result.aliases = self.client.send_as()
        except HttpError:
            result.aliases = None  # aliases are a nicety; never fail a sync over them
        result.retries = self.client.retries
        return result

    # ----------------------------------------------------------------- full
    def full(self, mode: str) -> SyncResult:
        profile = self.client.profile()
        history_id = str(profile["historyId"])  # recorded before listing: nothing slips by
        query = None
        if self.settings.after is not None:
            query = f"after:{int(self.settings.after.timestamp())}"
        listing = self.client.list_ids(query)
        result = SyncResult(mode=mode, provider_total=profile.get("messagesTotal"))
        listed = {mid for mid, _ in listing}
        if mode == "resync" and query is None:
            # No tombstones survive an expired cursor: diff stored ids against the listing.
            vanished = sorted(live_message_ids(self.lake_dir, self.account_id) - listed)
            if vanished:
                batch = lake.Batch(self.account_id)
                for mid in vanished:
                    batch.add("messages", _delete_row(mid))
                lake.flush(self.lake_dir, batch)
                result.deleted += len(vanished)
        self._fetch_and_land([mid for mid, _ in listing], result)
        result.cursor = {"history_id": history_id}
        return result

    # ----------------------------------------------------------------- backfill
    def backfill(
        self, since: datetime | None, until: datetime | None, refetch_all: bool = False
    ) -> SyncResult:
        """Re-fetch a date range. Never returns a cursor: the incremental one stays put.

        Ids already landed are skipped unless refetch_all, so an interrupted backfill
        resumes where it stopped (every 2,000 messages are durable on their own).
        """
        self.client.ensure_token()
        terms = []
        if since is not None:
            terms.append(f"after:{int(since.timestamp())}")
        if until is not None:
            terms.append(f"before:{int(until.timestamp())}")
        listing = [mid for mid, _ in self.client.list_ids(" ".join(terms) or None)]
        result = SyncResult(mode="backfill", provider_total=len(listing))
        if not refetch_all:
            landed = live_message_ids(self.lake_dir, self.account_id)
            listing = [mid for mid in listing if mid not in landed]
        self._fetch_and_land(listing, result)
        result.retries = self.client.retries
        return result

    # ----------------------------------------------------------------- delta
    def incremental(self, start: str) -> SyncResult:
        records, latest = self.client.history(start)
        # Final state per id, in history order: a later delete beats an earlier add.
        state: dict[str, str] = {}
        for rec in records:
            for item in rec.get("messagesAdded", []):
                state[item["message"]["id"]] = "fetch"
            for key in ("labelsAdded", "labelsRemoved"):
                for item in rec.get(key, []):
                    mid = item["message"]["id"]
                    if state.get(mid) != "delete":
                        state[mid] = "fetch"
            for item in rec.get("messagesDeleted", []):
                state[item["message"]["id"]] = "delete"
        result = SyncResult(mode="incremental")
        deletes = [mid for mid, what in state.items() if what == "delete"]
        if deletes:
            batch = lake.Batch(self.account_id)
            for mid in deletes:
                batch.add("messages", _delete_row(mid))
            lake.flush(self.lake_dir, batch)
            result.deleted += len(deletes)
        self._fetch_and_land([mid for mid, what in state.items() if what == "fetch"], result)
        result.cursor = {"history_id": str(latest)}
        return result

    def _fetch_and_land(self, ids: list[str], result: SyncResult) -> None:
        fmt = "full" if self.settings.sync_bodies else "metadata"
        total = len(ids)
        done = 0
        self.progress(0, total)
        for start in range(0, total, FLUSH_EVERY):
            chunk = ids[start : start + FLUSH_EVERY]
            fetched = self.client.get_many(chunk, fmt)
            batch = lake.Batch(self.account_id)
            for mid in chunk:
                msg = fetched.get(mid)
                if msg is None:  # deleted between listing and fetching
                    batch.add("messages", _delete_row(mid))
                    result.deleted += 1
                    continue
                outcome = land_message(batch, msg, self.blocklist, self.settings.sync_bodies)
                if outcome == "landed":
                    result.landed += 1
                elif outcome == "blocked":
                    result.blocked += 1
                else:
                    result.quarantined += 1
            lake.flush(self.lake_dir, batch)
            done += len(chunk)
            self.progress(done, total)
