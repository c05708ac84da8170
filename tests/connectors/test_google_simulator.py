"""The Gmail simulator driven by the real google-api-python-client (no mocks)."""

from __future__ import annotations

import base64
import json
import threading
import time
from email.mime.text import MIMEText

import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from connectors.simulators.google import GoogleSimulator
from connectors.simulators.model import SimMessage

EMAIL = "ada@example.com"
ALIAS = "ada.lovelace@example.org"
RT = "1//refresh-ada"
CLIENT_ID = "rapport-test"
CLIENT_SECRET = "secret"
BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z

NOT_FOUND_BODY = {
    "error": {
        "code": 404,
        "message": "Requested entity was not found.",
        "errors": [
            {"message": "Requested entity was not found.", "domain": "global", "reason": "notFound"}
        ],
        "status": "NOT_FOUND",
    }
}


def make_msg(i: int, *, labels: list[str] | None = None, minutes: int | None = None) -> SimMessage:
    return SimMessage(
        id=f"m{i:05d}",
        thread_id=f"t{i // 2:05d}",
        internal_date_ms=BASE_MS + (i if minutes is None else minutes) * 60_000,
        label_ids=labels if labels is not None else ["INBOX", "UNREAD"],
        headers=[
            ("From", f"Sender {i} <s{i}@example.net>"),
            ("To", EMAIL),
            ("Subject", f"Message {i}"),
            ("Message-ID", f"<m{i}@example.net>"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ],
        body=f"Hello number {i} — ünïcode\r\n".encode(),
    )


def gmail(sim: GoogleSimulator, refresh_token: str = RT):
    creds = Credentials(
        None,
        refresh_token=refresh_token,
        token_uri=sim.token_uri,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    service = build(
        "gmail",
        "v1",
        static_discovery=True,
        credentials=creds,
        client_options={"api_endpoint": sim.root_url},
    )
    return service, creds


def new_batch(sim: GoogleSimulator, callback) -> BatchHttpRequest:
    return BatchHttpRequest(callback=callback, batch_uri=sim.root_url + "batch/gmail/v1")


@pytest.fixture
def sim():
    with GoogleSimulator() as s:
        yield s


@pytest.fixture
def box(sim):
    return sim.add_user(EMAIL, aliases=[ALIAS], refresh_token=RT, display_name="Ada")


@pytest.fixture
def svc(sim, box):
    service, _ = gmail(sim)
    return service


def list_all(service, **kwargs) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        resp = service.users().messages().list(userId="me", pageToken=token, **kwargs).execute()
        ids += [m["id"] for m in resp.get("messages", [])]
        token = resp.get("nextPageToken")
        if not token:
            return ids


# ---------------------------------------------------------------- auth


def test_token_refresh_and_invalid_grant(sim, box):
    service, creds = gmail(sim)
    assert creds.token is None
    profile = service.users().getProfile(userId="me").execute()
    assert profile["emailAddress"] == EMAIL
    assert creds.token and creds.token.startswith("ya29.")
    token_calls = [r for r in sim.requests if r.path == "/token"]
    assert len(token_calls) == 1 and token_calls[0].status == 200 and token_calls[0].user == EMAIL

    bad_service, _ = gmail(sim, refresh_token="1//nobody")
    with pytest.raises(RefreshError, match="invalid_grant"):
        bad_service.users().getProfile(userId="me").execute()

    # Revocation kills the refresh token and the access tokens already issued.
    sim.revoke_refresh_token(EMAIL)
    with pytest.raises(RefreshError, match="invalid_grant"):
        service.users().getProfile(userId="me").execute()
    assert [r.status for r in sim.requests if r.path.endswith("/profile")][-1] == 401


def test_expired_access_token_is_refreshed_transparently(sim, svc):
    svc.users().getProfile(userId="me").execute()
    sim.expire_access_tokens()
    sim.clear_requests()
    assert svc.users().getProfile(userId="me").execute()["emailAddress"] == EMAIL
    assert [(r.path, r.status) for r in sim.requests] == [
        ("/gmail/v1/users/me/profile", 401),
        ("/token", 200),
        ("/gmail/v1/users/me/profile", 200),
    ]


def test_missing_bearer_gets_google_401_shape(sim, box):
    import httplib2

    resp, content = httplib2.Http().request(sim.root_url + "gmail/v1/users/me/profile")
    assert resp.status == 401
    err = json.loads(content)["error"]
    assert err["code"] == 401 and err["status"] == "UNAUTHENTICATED"
    resp, content = httplib2.Http().request(sim.root_url + "nope/v9/thing")
    assert resp.status == 404 and json.loads(content)["error"]["code"] == 404


# ---------------------------------------------------------------- profile, list, get


def test_profile_and_send_as(svc, box):
    box.add_messages(make_msg(i) for i in range(5))
    profile = svc.users().getProfile(userId=EMAIL).execute()
    assert profile == {
        "emailAddress": EMAIL,
        "messagesTotal": 5,
        "threadsTotal": 3,
        "historyId": str(box.history_id),
    }
    send_as = svc.users().settings().sendAs().list(userId="me").execute()["sendAs"]
    assert [(s["sendAsEmail"], s["isPrimary"]) for s in send_as] == [(EMAIL, True), (ALIAS, False)]
    assert all(s["verificationStatus"] == "accepted" for s in send_as)
    with pytest.raises(HttpError) as err:
        svc.users().getProfile(userId="someone.else@example.com").execute()
    assert err.value.resp.status == 403


def test_list_paging_returns_every_id_once_newest_first(svc, box):
    assert svc.users().messages().list(userId="me").execute() == {"resultSizeEstimate": 0}
    box.add_messages(make_msg(i) for i in range(230))
    first = svc.users().messages().list(userId="me", maxResults=100).execute()
    assert len(first["messages"]) == 100 and first["resultSizeEstimate"] == 230
    ids = list_all(svc, maxResults=100)
    assert len(ids) == 230 and set(ids) == set(box.messages)
    assert ids[0] == "m00229" and ids[-1] == "m00000"  # newest first
    assert len(list_all(svc)) == 230  # default page size 100


def test_list_filters(svc, box):
    box.add_messages(make_msg(i, minutes=i * 24 * 60) for i in range(10))  # one per day
    box.add_message(make_msg(10, labels=["SPAM"]))
    box.add_message(make_msg(11, labels=["SENT"]))
    assert len(list_all(svc)) == 11  # spam hidden by default
    assert len(list_all(svc, includeSpamTrash=True)) == 12
    assert list_all(svc, labelIds=["SENT"]) == ["m00011"]
    assert len(list_all(svc, labelIds=["INBOX", "UNREAD"])) == 10

    after_s = (BASE_MS + 5 * 86_400_000) // 1000
    before_s = (BASE_MS + 8 * 86_400_000) // 1000
    got = list_all(svc, q=f"after:{after_s} before:{before_s}", labelIds=["INBOX"])
    assert got == ["m00007", "m00006", "m00005"]
    # 2023/11/20 00:00 Pacific is 2023-11-20T08:00Z; message 6 is at 2023-11-20T22:13Z.
    assert list_all(svc, q="after:2023/11/20", labelIds=["INBOX"]) == [
        "m00009",
        "m00008",
        "m00007",
        "m00006",
    ]
    assert list_all(svc, q="from:s3@example.net") == ["m00003"]
    with pytest.raises(HttpError) as err:
        svc.users().messages().list(userId="me", pageToken="garbage!").execute()
    assert err.value.resp.status == 400


def test_get_formats_round_trip(svc, box):
    msg = make_msg(1)
    box.add_message(msg)
    messages = svc.users().messages()

    meta = messages.get(
        userId="me", id=msg.id, format="metadata", metadataHeaders=["subject", "From"]
    ).execute()
    assert meta["payload"]["headers"] == [
        {"name": "From", "value": "Sender 1 <s1@example.net>"},
        {"name": "Subject", "value": "Message 1"},
    ]
    assert "data" not in meta["payload"]["body"]
    assert meta["internalDate"] == str(msg.internal_date_ms)
    assert meta["historyId"] == str(box.history_id)
    assert meta["labelIds"] == ["INBOX", "UNREAD"]
    assert meta["snippet"].startswith("Hello number 1")

    full = messages.get(userId="me", id=msg.id).execute()
    assert full["payload"]["mimeType"] == "text/plain"
    assert len(full["payload"]["headers"]) == 5
    assert base64.urlsafe_b64decode(full["payload"]["body"]["data"]) == msg.body
    assert full["payload"]["body"]["size"] == len(msg.body)

    raw = messages.get(userId="me", id=msg.id, format="raw").execute()
    raw_bytes = base64.urlsafe_b64decode(raw["raw"])
    assert raw_bytes.endswith(b"\r\n\r\n" + msg.body)
    assert b"Subject: Message 1\r\n" in raw_bytes
    assert raw["sizeEstimate"] == len(raw_bytes)

    minimal = messages.get(userId="me", id=msg.id, format="minimal").execute()
    assert "payload" not in minimal and minimal["threadId"] == msg.thread_id

    with pytest.raises(HttpError) as err:
        messages.get(userId="me", id="does-not-exist").execute()
    assert err.value.resp.status == 404
    assert json.loads(err.value.content) == NOT_FOUND_BODY


def test_raw_message_is_parsed_for_headers_and_body(svc, box):
    raw = (
        b"From: =?UTF-8?B?SsO2cmc=?= <jorg@example.de>\r\n"
        b"To: ada@example.com\r\n"
        b"Subject: a folded\r\n subject line\r\n"
        b"X-Broken: caf\xe9\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + base64.encodebytes("Grüße aus Köln".encode())
    )
    box.add_message(
        SimMessage(
            id="r1",
            thread_id="r1",
            internal_date_ms=BASE_MS,
            label_ids=["INBOX"],
            headers=[],
            raw=raw,
        )
    )
    full = svc.users().messages().get(userId="me", id="r1").execute()
    headers = {h["name"]: h["value"] for h in full["payload"]["headers"]}
    assert headers["From"] == "=?UTF-8?B?SsO2cmc=?= <jorg@example.de>"  # not decoded
    assert headers["Subject"] == "a folded subject line"
    assert headers["X-Broken"] == "caf\ufffd"
    assert base64.urlsafe_b64decode(full["payload"]["body"]["data"]).decode() == "Grüße aus Köln"
    assert full["snippet"] == "Grüße aus Köln"
    got_raw = svc.users().messages().get(userId="me", id="r1", format="raw").execute()["raw"]
    assert base64.urlsafe_b64decode(got_raw) == raw


# ---------------------------------------------------------------- batch and faults


def test_batch_of_50_gets(sim, svc, box):
    box.add_messages(make_msg(i) for i in range(60))
    ids = list_all(svc)[:50]
    results: dict[str, dict] = {}
    errors: list[Exception] = []

    def callback(request_id, response, exception):
        if exception is not None:
            errors.append(exception)
        else:
            results[request_id] = response

    batch = new_batch(sim, callback)
    messages = svc.users().messages()
    for mid in ids:
        batch.add(messages.get(userId="me", id=mid, format="metadata"), request_id=mid)
    sim.clear_requests()
    batch.execute()
    assert not errors
    assert set(results) == set(ids)
    assert all(results[mid]["id"] == mid for mid in ids)
    assert results[ids[0]]["payload"]["headers"][2]["value"].startswith("Message ")

    inner = [r for r in sim.requests if r.in_batch]
    outer = [r for r in sim.requests if not r.in_batch]
    assert len(inner) == 50 and all(r.status == 200 and r.user == EMAIL for r in inner)
    assert {r.path for r in inner} == {f"/gmail/v1/users/me/messages/{mid}" for mid in ids}
    assert inner[0].query["format"] == ["metadata"]
    assert [r.path for r in outer] == ["/batch/gmail/v1"]


def test_batch_inner_429_reaches_callback(sim, svc, box):
    box.add_messages(make_msg(i) for i in range(10))
    outcomes: dict[str, object] = {}
    batch = new_batch(sim, lambda rid, resp, exc: outcomes.__setitem__(rid, exc or resp))
    for i in range(10):
        batch.add(svc.users().messages().get(userId="me", id=f"m{i:05d}"), request_id=str(i))
    svc.users().getProfile(userId="me").execute()  # token first, so only the batch is faulted
    sim.inject_fault("429", count=3, in_batch=True, path_contains="/messages/")
    batch.execute()
    failed = {rid: exc for rid, exc in outcomes.items() if isinstance(exc, HttpError)}
    assert len(failed) == 3
    for exc in failed.values():
        assert exc.resp.status == 429
        assert json.loads(exc.content)["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    assert sum(1 for o in outcomes.values() if isinstance(o, dict)) == 7
    assert sorted(r.status for r in sim.requests if r.in_batch) == [200] * 7 + [429] * 3


def test_batch_inner_401_is_refreshed_by_the_client(sim, svc, box):
    box.add_messages(make_msg(i) for i in range(3))
    svc.users().getProfile(userId="me").execute()
    sim.expire_access_tokens()
    results: dict[str, object] = {}
    batch = new_batch(sim, lambda rid, resp, exc: results.__setitem__(rid, exc or resp))
    for i in range(3):
        batch.add(svc.users().messages().get(userId="me", id=f"m{i:05d}"), request_id=str(i))
    sim.clear_requests()
    batch.execute()
    assert all(isinstance(r, dict) for r in results.values()) and len(results) == 3
    inner = [r.status for r in sim.requests if r.in_batch]
    assert inner == [401] * 3 + [200] * 3


def test_batch_accepts_crlf_and_absolute_inner_urls(sim, box):
    import httplib2

    box.add_message(make_msg(7))
    service, creds = gmail(sim)
    service.users().getProfile(userId="me").execute()
    token = creds.token
    parts = []
    for n, target in enumerate(
        [sim.root_url + "gmail/v1/users/me/messages/m00007?format=minimal", "/gmail/v1/nope"]
    ):
        parts.append(
            f"--XyZ\r\nContent-Type: application/http\r\nContent-ID: item{n}\r\n\r\n"
            f"GET {target} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    body = "preamble\r\n" + "\r\n".join(parts) + "\r\n--XyZ--\r\nepilogue"
    resp, content = httplib2.Http().request(
        sim.root_url + "batch/gmail/v1",
        "POST",
        body=body,
        headers={"Content-Type": 'multipart/mixed; boundary="XyZ"'},
    )
    assert resp.status == 200 and resp["content-type"].startswith("multipart/mixed; boundary=")
    text = content.decode()
    assert text.count("Content-Type: application/http") == 2
    assert "Content-ID: <response-item0>" in text and "Content-ID: <response-item1>" in text
    assert "HTTP/1.1 200 OK" in text and "HTTP/1.1 404 Not Found" in text
    assert '"id":"m00007"' in text


def test_batch_over_100_parts_is_rejected(sim, svc, box):
    box.add_message(make_msg(0))
    batch = new_batch(sim, lambda *a: None)
    for i in range(101):
        batch.add(svc.users().messages().get(userId="me", id="m00000"), request_id=str(i))
    with pytest.raises(HttpError) as err:
        batch.execute()
    assert err.value.resp.status == 400


def test_outer_500_recovers_with_num_retries(sim, svc, box):
    svc.users().getProfile(userId="me").execute()
    sim.inject_fault("500", count=1, path_contains="/profile")
    profile = svc.users().getProfile(userId="me").execute(num_retries=2)
    assert profile["emailAddress"] == EMAIL
    statuses = [r.status for r in sim.requests if r.path.endswith("/profile")]
    assert statuses[-2:] == [500, 200]

    sim.inject_fault("403_rate", count=1)
    with pytest.raises(HttpError) as err:
        svc.users().getProfile(userId="me").execute()  # no retries by default
    assert err.value.resp.status == 403
    assert json.loads(err.value.content)["error"]["errors"][0]["reason"] == "userRateLimitExceeded"


def test_drop_fault_raises_connection_error(sim, svc, box):
    svc.users().getProfile(userId="me").execute()
    # httplib2 silently resends once after a dropped connection...
    sim.inject_fault("drop", count=1, path_contains="/profile")
    assert svc.users().getProfile(userId="me").execute()["emailAddress"] == EMAIL
    # ...so two drops in a row surface as an error on a single execute().
    sim.inject_fault("drop", count=2, path_contains="/profile")
    with pytest.raises(ConnectionError):
        svc.users().getProfile(userId="me").execute()
    assert svc.users().getProfile(userId="me").execute()["emailAddress"] == EMAIL
    assert [r.status for r in sim.requests if r.path.endswith("/profile")][1:] == [
        0,
        200,
        0,
        0,
        200,
    ]


def test_slow_fault_and_latency(sim, svc, box):
    svc.users().getProfile(userId="me").execute()
    sim.inject_fault("slow", delay_s=0.3)
    t0 = time.monotonic()
    svc.users().getProfile(userId="me").execute()
    assert time.monotonic() - t0 >= 0.3


def test_concurrent_requests_are_served_in_parallel():
    with GoogleSimulator(latency_s=0.25) as slow_sim:
        slow_sim.add_user(EMAIL, refresh_token=RT)
        services = [gmail(slow_sim)[0] for _ in range(4)]
        errors: list[Exception] = []

        def call(service):
            try:  # token refresh + getProfile: two outer requests of 0.25 s each
                service.users().getProfile(userId="me").execute()
            except Exception as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(s,)) for s in services]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        assert not errors
        assert 0.5 <= elapsed < 1.5  # sequential would take 2 s


def test_quota_token_bucket(sim, svc, box):
    box.add_messages(make_msg(i) for i in range(3))
    svc.users().getProfile(userId="me").execute()
    sim.set_quota(50)  # capacity 50 units = 10 messages.get
    ok = limited = 0
    for _ in range(30):
        try:
            svc.users().messages().get(userId="me", id="m00001").execute()
            ok += 1
        except HttpError as exc:
            assert exc.resp.status == 429
            assert json.loads(exc.content)["error"]["errors"][0]["domain"] == "usageLimits"
            limited += 1
    assert ok >= 10 and limited >= 5

    time.sleep(1.0)  # bucket refills; batch parts each pay their own units
    outcomes: list[int] = []
    batch = new_batch(sim, lambda rid, resp, exc: outcomes.append(exc.resp.status if exc else 200))
    for i in range(20):
        batch.add(svc.users().messages().get(userId="me", id="m00002"), request_id=str(i))
    batch.execute()
    assert outcomes.count(200) >= 10 and outcomes.count(429) >= 5

    sim.set_quota(None)
    for _ in range(20):
        svc.users().messages().get(userId="me", id="m00001").execute()


# ---------------------------------------------------------------- history


def test_history_lists_exactly_the_changes(svc, box):
    box.add_messages(make_msg(i) for i in range(3))
    start = int(svc.users().getProfile(userId="me").execute()["historyId"])
    h_add = box.add_message(make_msg(3))
    h_del = box.delete_message("m00000")
    h_lab = box.modify_labels("m00001", add=["STARRED"], remove=["UNREAD"])
    assert start < h_add < h_del < h_lab == box.history_id
    assert box.modify_labels("m00001", add=["STARRED"]) == h_lab  # no-op records nothing

    history = svc.users().history()
    resp = history.list(userId="me", startHistoryId=start).execute()
    assert resp["historyId"] == str(h_lab)
    records = resp["history"]
    assert [r["id"] for r in records] == [str(h_add), str(h_del), str(h_lab)]
    assert records[0]["messagesAdded"] == [
        {"message": {"id": "m00003", "threadId": "t00001", "labelIds": ["INBOX", "UNREAD"]}}
    ]
    assert records[0]["messages"] == [{"id": "m00003", "threadId": "t00001"}]
    assert records[1]["messagesDeleted"][0]["message"]["id"] == "m00000"
    assert records[2]["labelsAdded"] == [
        {
            "message": {"id": "m00001", "threadId": "t00000", "labelIds": ["INBOX", "STARRED"]},
            "labelIds": ["STARRED"],
        }
    ]
    assert records[2]["labelsRemoved"][0]["labelIds"] == ["UNREAD"]

    added_only = history.list(
        userId="me", startHistoryId=start, historyTypes=["messageAdded"]
    ).execute()
    assert [r["id"] for r in added_only["history"]] == [str(h_add)]
    starred = history.list(userId="me", startHistoryId=start, labelId="STARRED").execute()
    assert [r["id"] for r in starred["history"]] == [str(h_lab)]

    assert history.list(userId="me", startHistoryId=h_lab).execute() == {"historyId": str(h_lab)}
    got = svc.users().messages().get(userId="me", id="m00001", format="minimal").execute()
    assert got["historyId"] == str(h_lab)

    # Paging: every record exactly once, in order.
    box.add_messages(make_msg(i) for i in range(10, 17))
    seen: list[int] = []
    token = None
    while True:
        page = history.list(
            userId="me", startHistoryId=start, maxResults=3, pageToken=token
        ).execute()
        seen += [int(r["id"]) for r in page.get("history", [])]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == list(range(start + 1, box.history_id + 1))
    assert page["historyId"] == str(box.history_id)

    with pytest.raises(HttpError) as err:
        history.list(userId="me", startHistoryId="not-a-number").execute()
    assert err.value.resp.status == 400


def test_expire_history_gives_exact_404(svc, box):
    box.add_messages(make_msg(i) for i in range(3))
    old = box.history_id
    box.add_message(make_msg(3))
    box.expire_history()
    with pytest.raises(HttpError) as err:
        svc.users().history().list(userId="me", startHistoryId=old).execute()
    assert err.value.resp.status == 404
    assert json.loads(err.value.content) == NOT_FOUND_BODY
    current = svc.users().getProfile(userId="me").execute()["historyId"]
    assert svc.users().history().list(userId="me", startHistoryId=current).execute() == {
        "historyId": current
    }


def test_send_stores_sent_message_in_thread(svc, box):
    box.add_message(make_msg(1))
    reply = MIMEText("Thanks!", "plain", "utf-8")
    reply["From"] = EMAIL
    reply["To"] = "s1@example.net"
    reply["Subject"] = "Re: Message 1"
    reply["In-Reply-To"] = "<m1@example.net>"
    raw = base64.urlsafe_b64encode(reply.as_bytes()).decode().rstrip("=")
    sent = svc.users().messages().send(userId="me", body={"raw": raw}).execute()
    assert sent["labelIds"] == ["SENT"] and sent["threadId"] == "t00000"
    stored = box.messages[sent["id"]]
    assert stored.header("Subject") == "Re: Message 1" and stored.body == b"Thanks!"
    assert list_all(svc, labelIds=["SENT"]) == [sent["id"]]


# ---------------------------------------------------------------- persistence


def test_save_and_load_state_keeps_history_valid(tmp_path, sim, svc, box):
    box.add_messages(make_msg(i) for i in range(20))
    cursor = svc.users().getProfile(userId="me").execute()["historyId"]
    state = tmp_path / "google.pkl"
    sim.save_state(state)
    sim.stop()

    with GoogleSimulator.load_state(state) as again:
        again_box = again.mailbox(EMAIL)
        assert again_box.history_id == int(cursor) and len(again_box.messages) == 20
        service, _ = gmail(again)  # same refresh token still valid
        assert service.users().history().list(userId="me", startHistoryId=cursor).execute() == {
            "historyId": cursor
        }
        new_hid = again_box.add_message(make_msg(99))
        resp = service.users().history().list(userId="me", startHistoryId=cursor).execute()
        assert [r["id"] for r in resp["history"]] == [str(new_hid)]
        assert len(list_all(service)) == 21
