"""Microsoft simulator + msauth, driven by real msal and requests over loopback HTTP."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msal
import pytest
import requests

from connectors.msauth import (
    GraphAuthError,
    LoopbackHttpsRewriteSession,
    acquire_graph_token,
    build_confidential_app,
    msal_authority,
)
from connectors.simulators.microsoft import GraphMailbox, MicrosoftSimulator
from connectors.simulators.model import SimAttendee, SimEvent, SimMessage

ALICE = "alice@contoso.com"
RT = "rt-alice-initial"
JAN5_10H = int(datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
DAY = 24 * HOUR


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def make_msg(i: int, *, sent: bool = False) -> SimMessage:
    me, other = "alice@contoso.com", f"contact{i % 7}@fabrikam.com"
    frm, to = (me, other) if sent else (other, me)
    headers = [
        ("From", f"Contact {i % 7} <{frm}>"),
        ("To", f"{to}, =?utf-8?q?J=C3=B6rg?= <jorg@example.org>"),
        ("Cc", "carol@example.org"),
        ("Subject", f"Message {i}"),
        ("Date", "Mon, 05 Jan 2026 10:00:00 +0100"),
        ("Message-ID", f"<msg{i}@fabrikam.com>"),
    ]
    if i % 10 == 0:
        headers.append(("List-Id", "<news.fabrikam.com>"))
    return SimMessage(
        id=f"{'s' if sent else 'm'}{i:04d}",
        thread_id=f"conv{i // 3}",
        internal_date_ms=JAN5_10H + i * 60_000,
        label_ids=["SENT"] if sent else ["INBOX", "UNREAD"],
        headers=headers,
        body=f"Body of message {i}".encode(),
    )


@pytest.fixture
def sim() -> Iterator[MicrosoftSimulator]:
    with MicrosoftSimulator() as s:
        yield s


@pytest.fixture
def mailbox(sim: MicrosoftSimulator) -> GraphMailbox:
    return sim.add_user(
        ALICE,
        aliases=["a.smith@contoso.com", "alice@contoso.onmicrosoft.com"],
        refresh_token=RT,
        display_name="Alice Smith",
    )


def new_app(
    sim: MicrosoftSimulator,
    cache: msal.SerializableTokenCache | None = None,
    secret: str = "secret",
) -> msal.ConfidentialClientApplication:
    return build_confidential_app(
        client_id="rapport-app",
        client_secret=secret,
        authority=sim.authority_url("contoso"),
        token_cache=cache,
    )


@pytest.fixture
def graph(sim: MicrosoftSimulator, mailbox: GraphMailbox) -> requests.Session:
    token = acquire_graph_token(new_app(sim), refresh_token=RT)["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def token_posts(sim: MicrosoftSimulator) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("/oauth2/v2.0/token"))


def full_sync(
    graph: requests.Session, url: str, page: int = 25, params: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], str, int]:
    """Follow nextLinks to the deltaLink; returns (items, deltaLink, pages)."""
    headers = {"Prefer": f'odata.maxpagesize={page}, IdType="ImmutableId"'}
    resp = graph.get(url, params=params, headers=headers)
    items: list[dict[str, Any]] = []
    pages = 0
    while True:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        assert len(body["value"]) <= page
        items.extend(body["value"])
        if "@odata.deltaLink" in body:
            assert "@odata.nextLink" not in body
            return items, body["@odata.deltaLink"], pages
        resp = graph.get(body["@odata.nextLink"], headers=headers)


# ---------------------------------------------------------------- auth


def test_msal_authority_rewrite() -> None:
    assert msal_authority("http://127.0.0.1:8080/contoso") == (
        "https://127.0.0.1:8080/contoso",
        True,
    )
    assert msal_authority("http://localhost:9/t/") == ("https://localhost:9/t", True)
    real = "https://login.microsoftonline.com/contoso"
    assert msal_authority(real) == (real, False)
    with pytest.raises(ValueError):
        msal_authority("http://login.example.com/contoso")


def test_rewrite_session_only_touches_loopback(
    sim: MicrosoftSimulator, mailbox: GraphMailbox
) -> None:
    session = LoopbackHttpsRewriteSession()
    root = sim.base_url.replace("http://", "https://")
    url = root + "/contoso/v2.0/.well-known/openid-configuration"
    config = session.get(url).json()
    # Advertised endpoints are https at the Host we used, so msal accepts them.
    assert config["token_endpoint"] == url.split("/v2.0/")[0] + "/oauth2/v2.0/token"
    assert config["device_authorization_endpoint"].startswith("https://127.0.0.1:")


def test_refresh_token_then_silent_from_serialized_cache(
    sim: MicrosoftSimulator, mailbox: GraphMailbox
) -> None:
    cache = msal.SerializableTokenCache()
    first = acquire_graph_token(new_app(sim, cache), refresh_token=RT)
    assert first["token_type"] == "Bearer" and first["access_token"]
    assert first["id_token_claims"]["preferred_username"] == ALICE
    assert first["refresh_token"] != RT  # rotated
    me = requests.get(
        f"{sim.graph_url}/me", headers={"Authorization": f"Bearer {first['access_token']}"}
    )
    assert me.status_code == 200 and me.json()["mail"] == ALICE

    posts = token_posts(sim)
    restored = msal.SerializableTokenCache()
    restored.deserialize(cache.serialize())
    app2 = new_app(sim, restored)
    assert [a["username"] for a in app2.get_accounts()] == [ALICE]
    second = acquire_graph_token(app2, refresh_token=None)
    assert second["access_token"] == first["access_token"]
    assert second["token_source"] == "cache"
    assert token_posts(sim) == posts  # no network call for a cached token

    # Forcing a refresh redeems the cached (rotated) refresh token, not the original.
    account = app2.get_accounts()[0]
    forced = app2.acquire_token_silent(
        ["https://graph.microsoft.com/.default"], account=account, force_refresh=True
    )
    assert forced and forced["token_source"] == "identity_provider"
    assert forced["access_token"] != first["access_token"]


def test_revoked_refresh_token_raises_without_leaking(
    sim: MicrosoftSimulator, mailbox: GraphMailbox
) -> None:
    sim.revoke_refresh_token(ALICE)
    with pytest.raises(GraphAuthError) as info:
        acquire_graph_token(new_app(sim), refresh_token=RT)
    assert info.value.reason == "invalid_grant"
    assert info.value.needs_reauth
    assert "AADSTS70008" in str(info.value)
    assert RT not in str(info.value)


def test_wrong_client_secret_is_invalid_client(
    sim: MicrosoftSimulator, mailbox: GraphMailbox
) -> None:
    with pytest.raises(GraphAuthError) as info:
        acquire_graph_token(new_app(sim, secret="not-it"), refresh_token=RT)
    assert info.value.reason == "invalid_client"
    assert "not-it" not in str(info.value)


def test_no_account_and_no_refresh_token(sim: MicrosoftSimulator, mailbox: GraphMailbox) -> None:
    with pytest.raises(GraphAuthError) as info:
        acquire_graph_token(new_app(sim), refresh_token=None)
    assert info.value.reason == "no_account"


def test_device_code_flow_with_public_client(
    sim: MicrosoftSimulator, mailbox: GraphMailbox
) -> None:
    authority, _ = msal_authority(sim.authority_url("contoso"))
    app = msal.PublicClientApplication(
        "rapport-app",
        authority=authority,
        instance_discovery=False,
        http_client=LoopbackHttpsRewriteSession(),
    )
    flow = app.initiate_device_flow(scopes=["https://graph.microsoft.com/.default"])
    assert flow["user_code"] in flow["message"]
    sim.approve_device_code(flow["user_code"], ALICE)
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result.get("error")
    assert app.get_accounts()[0]["username"] == ALICE


# ---------------------------------------------------------------- Graph basics


def test_graph_requires_bearer(sim: MicrosoftSimulator, mailbox: GraphMailbox) -> None:
    for headers in ({}, {"Authorization": "Bearer bogus"}):
        resp = requests.get(f"{sim.graph_url}/me", headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_expired_access_token_is_401(sim: MicrosoftSimulator, graph: requests.Session) -> None:
    sim.expire_access_tokens(ALICE)
    resp = graph.get(f"{sim.graph_url}/me")
    assert resp.status_code == 401
    assert "expired" in resp.json()["error"]["message"]


def test_me_proxy_addresses(sim: MicrosoftSimulator, graph: requests.Session) -> None:
    me = graph.get(f"{sim.graph_url}/me").json()
    assert me["displayName"] == "Alice Smith"
    assert me["userPrincipalName"] == ALICE
    assert me["proxyAddresses"] == [
        "SMTP:alice@contoso.com",
        "smtp:a.smith@contoso.com",
        "smtp:alice@contoso.onmicrosoft.com",
    ]
    assert sim.requests[-1].user == ALICE


def test_mail_folders(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(3):
        mailbox.add_message(make_msg(i))
    mailbox.add_message(make_msg(9, sent=True))
    inbox = graph.get(f"{sim.graph_url}/me/mailFolders/inbox").json()
    assert (inbox["displayName"], inbox["totalItemCount"], inbox["unreadItemCount"]) == (
        "Inbox",
        3,
        3,
    )
    by_id = graph.get(f"{sim.graph_url}/me/mailFolders/{inbox['id']}").json()
    assert by_id == inbox
    sent = graph.get(f"{sim.graph_url}/me/mailFolders/SentItems").json()
    assert sent["totalItemCount"] == 1 and sent["id"] != inbox["id"]


def test_me_messages_delta_is_rejected(sim: MicrosoftSimulator, graph: requests.Session) -> None:
    resp = graph.get(f"{sim.graph_url}/me/messages/delta")
    assert resp.status_code == 400
    assert "error" in resp.json()


# ---------------------------------------------------------------- mail delta


def test_mail_delta_paging_and_incremental(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(80):
        mailbox.add_message(make_msg(i))
    for i in range(40):
        mailbox.add_message(make_msg(i, sent=True))

    inbox_url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    items, inbox_delta, pages = full_sync(graph, inbox_url)
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids)) == 80 and pages == 4
    assert set(ids) == {f"m{i:04d}" for i in range(80)}
    assert inbox_delta.startswith(sim.base_url + "/v1.0/") and "$deltatoken=" in inbox_delta

    sent_items, sent_delta, _ = full_sync(
        graph, f"{sim.graph_url}/me/mailFolders/sentitems/messages/delta"
    )
    assert sorted(it["id"] for it in sent_items) == [f"s{i:04d}" for i in range(40)]

    one = next(it for it in items if it["id"] == "m0010")
    assert one["subject"] == "Message 10"
    assert one["from"] == {
        "emailAddress": {"name": "Contact 3", "address": "contact3@fabrikam.com"}
    }
    assert {"emailAddress": {"name": "Jörg", "address": "jorg@example.org"}} in one["toRecipients"]
    assert one["ccRecipients"][0]["emailAddress"]["address"] == "carol@example.org"
    assert one["internetMessageId"] == "<msg10@fabrikam.com>"
    assert one["sentDateTime"] == "2026-01-05T09:00:00Z"
    assert one["receivedDateTime"] == "2026-01-05T10:10:00Z"
    assert one["conversationId"] == "conv3" and one["isDraft"] is False
    assert one["body"] == {"contentType": "text", "content": "Body of message 10"}
    assert "internetMessageHeaders" not in one  # only when $select names it

    # Changes since the deltaLink: 3 adds + 1 delete in the inbox, 1 add in sent items.
    for i in range(100, 103):
        mailbox.add_message(make_msg(i))
    mailbox.delete_message("m0005")
    mailbox.add_message(make_msg(200, sent=True))
    body = graph.get(inbox_delta).json()
    added = [v for v in body["value"] if "@removed" not in v]
    removed = [v for v in body["value"] if "@removed" in v]
    assert sorted(v["id"] for v in added) == ["m0100", "m0101", "m0102"]
    assert removed == [{"id": "m0005", "@removed": {"reason": "deleted"}}]
    assert len(body["value"]) == 4 and "@odata.deltaLink" in body

    # Nothing new: an empty page and a fresh deltaLink.
    again = graph.get(body["@odata.deltaLink"]).json()
    assert again["value"] == [] and "@odata.deltaLink" in again

    # The sent-items cursor is independent.
    sent_changes = graph.get(sent_delta).json()["value"]
    assert [v["id"] for v in sent_changes] == ["s0200"]


def test_mail_delta_select_headers_and_filter(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(30):
        mailbox.add_message(make_msg(i))
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    params = {
        "$select": "subject,from,internetMessageHeaders",
        "$filter": "receivedDateTime ge 2026-01-05T10:20:00Z",
    }
    items, delta, _ = full_sync(graph, url, page=4, params=params)
    assert sorted(it["id"] for it in items) == [f"m{i:04d}" for i in range(20, 30)]
    assert set(items[0]) <= {
        "@odata.type",
        "@odata.etag",
        "id",
        "subject",
        "from",
        "internetMessageHeaders",
    }
    listed = {it["id"]: it for it in items}
    names = {h["name"]: h["value"] for h in listed["m0020"]["internetMessageHeaders"]}
    assert names["List-Id"] == "<news.fabrikam.com>"

    # Options stick to the cursor: an old message added later is still filtered out.
    old = make_msg(1)
    old.id = "m-old"
    mailbox.add_message(old)
    mailbox.add_message(make_msg(40))
    changes = graph.get(delta).json()["value"]
    assert [c["id"] for c in changes] == ["m0040"] and "internetMessageHeaders" in changes[0]

    bad = graph.get(url, params={"$select": "nope"})
    assert bad.status_code == 400


def test_snapshot_is_stable_while_paging(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(10):
        mailbox.add_message(make_msg(i))
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    headers = {"Prefer": "odata.maxpagesize=4"}
    first = graph.get(url, headers=headers).json()
    mailbox.add_message(make_msg(50))  # lands in the next round, not this one
    mailbox.delete_message(first["value"][0]["id"])
    seen = [v["id"] for v in first["value"]]
    body = first
    while "@odata.nextLink" in body:
        body = graph.get(body["@odata.nextLink"], headers=headers).json()
        seen += [v["id"] for v in body["value"]]
    assert sorted(seen) == [f"m{i:04d}" for i in range(10)]
    changes = graph.get(body["@odata.deltaLink"]).json()["value"]
    assert {c["id"] for c in changes} == {"m0050", first["value"][0]["id"]}


def test_410_fault_points_at_initial_query(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(5):
        mailbox.add_message(make_msg(i))
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    _, delta, _ = full_sync(graph, url, params={"$select": "subject"})
    sim.inject_fault("410")
    gone = graph.get(delta)
    assert gone.status_code == 410
    location = gone.headers["Location"]
    assert location.startswith(url) and "select=subject" in location
    items, _, _ = full_sync(graph, location)
    assert len(items) == 5 and set(items[0]) <= {"@odata.type", "@odata.etag", "id", "subject"}


def test_expired_tokens_answer_sync_state_not_found(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(8):
        mailbox.add_message(make_msg(i))
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    _, delta, _ = full_sync(graph, url)
    first_page = graph.get(url, headers={"Prefer": "odata.maxpagesize=3"}).json()
    sim.expire_delta_tokens(ALICE)
    for link in (delta, first_page["@odata.nextLink"]):
        resp = graph.get(link)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"].lower() == "syncstatenotfound"
    # A fresh initial query works and its links are valid again.
    items, fresh_delta, _ = full_sync(graph, url)
    assert len(items) == 8 and graph.get(fresh_delta).status_code == 200

    sim.expire_delta_tokens(ALICE, answer="410")
    gone = graph.get(fresh_delta)
    assert gone.status_code == 410 and gone.headers["Location"].startswith(url)


def test_sync_state_and_resync_faults(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    _, delta, _ = full_sync(graph, url)
    sim.inject_fault("syncStateNotFound")
    sim.inject_fault("resyncRequired")
    assert graph.get(delta).json()["error"]["code"] == "SyncStateNotFound"
    assert graph.get(delta).json()["error"]["code"] == "resyncRequired"
    assert graph.get(delta).status_code == 200  # faults are used up


def test_429_fault_has_fractional_retry_after(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    sim.inject_fault("429", retry_after="0.35", path_contains="/messages/delta")
    assert graph.get(f"{sim.graph_url}/me").status_code == 200  # not matched
    resp = graph.get(url)
    assert resp.status_code == 429
    assert float(resp.headers["Retry-After"]) == pytest.approx(0.35)
    assert resp.json()["error"]["code"] == "TooManyRequests"
    assert graph.get(url).status_code == 200


def test_5xx_and_drop_faults(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    sim.inject_fault("503")
    sim.inject_fault("500")
    assert graph.get(f"{sim.graph_url}/me").status_code == 503
    assert graph.get(f"{sim.graph_url}/me").status_code == 500
    sim.inject_fault("drop")
    with pytest.raises(requests.ConnectionError):
        graph.get(f"{sim.graph_url}/me")
    assert graph.get(f"{sim.graph_url}/me").status_code == 200
    assert [r.status for r in sim.requests[-4:]] == [503, 500, 0, 200]


def test_page_rate_limit(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    sim.page_rate_limit = 2.0
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    statuses = [graph.get(url) for _ in range(4)]
    limited = [r for r in statuses if r.status_code == 429]
    assert [r.status_code for r in statuses[:2]] == [200, 200] and limited
    assert 0 < float(limited[0].headers["Retry-After"]) <= 0.5


def test_replay_fault_repeats_items(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(6):
        mailbox.add_message(make_msg(i))
    sim.inject_fault("replay")
    url = f"{sim.graph_url}/me/mailFolders/inbox/messages/delta"
    body = graph.get(url, headers={"Prefer": "odata.maxpagesize=4"}).json()
    ids = [v["id"] for v in body["value"]]
    assert len(ids) == 8 and len(set(ids)) == 4 and ids[:4] == ids[4:]
    rest = graph.get(body["@odata.nextLink"]).json()
    assert len(rest["value"]) == 2  # replay used up


def test_state_survives_restart(
    tmp_path: Path, sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    for i in range(3):
        mailbox.add_message(make_msg(i))
    _, delta, _ = full_sync(graph, f"{sim.graph_url}/me/mailFolders/inbox/messages/delta")
    state = tmp_path / "ms.pickle"
    sim.save_state(str(state))
    port = sim.port
    sim.stop()
    with MicrosoftSimulator.load_state(str(state), port=port) as again:
        again.mailbox(ALICE).add_message(make_msg(7))
        graph.close()  # old keep-alive sockets died with the first server
        changes = graph.get(delta).json()["value"]
        assert [c["id"] for c in changes] == ["m0007"]
    assert isinstance(pickle.loads(state.read_bytes()), dict)


# ---------------------------------------------------------------- calendar delta


def weekly_series() -> SimEvent:
    return SimEvent(
        id="evt-weekly",
        ical_uid="uid-weekly@fabrikam.com",
        summary="Weekly sync",
        start_ms=JAN5_10H,
        end_ms=JAN5_10H + HOUR,
        organizer_email="bob@fabrikam.com",
        organizer_name="Bob",
        attendees=[
            SimAttendee("bob@fabrikam.com", "Bob", "accepted", organizer=True),
            SimAttendee(ALICE, "Alice", "tentative"),
            SimAttendee("room1@contoso.com", "Room 1", "accepted", resource=True),
            SimAttendee("dan@example.org", "", "needsAction", optional=True),
        ],
        rrule="FREQ=WEEKLY;COUNT=4",
    )


def test_calendar_view_delta_expands_and_tracks_cancellations(
    sim: MicrosoftSimulator, mailbox: GraphMailbox, graph: requests.Session
) -> None:
    mailbox.add_event(weekly_series())
    mailbox.add_event(
        SimEvent(
            id="evt-single",
            ical_uid="uid-single",
            summary="Lunch",
            start_ms=ms(2026, 1, 7, 12),
            end_ms=ms(2026, 1, 7, 13),
            organizer_email=ALICE,
        )
    )
    mailbox.add_event(
        SimEvent(
            id="evt-daily",
            ical_uid="uid-daily",
            summary="Standup",
            start_ms=ms(2026, 1, 26, 9),
            end_ms=ms(2026, 1, 26, 9, 15),
            organizer_email=ALICE,
            rrule="FREQ=DAILY;INTERVAL=2;UNTIL=20260203T235959Z",
        )
    )
    mailbox.add_event(
        SimEvent(
            id="evt-outside",
            ical_uid="uid-outside",
            summary="Later",
            start_ms=ms(2026, 6, 1, 9),
            end_ms=ms(2026, 6, 1, 10),
            organizer_email=ALICE,
        )
    )
    mailbox.add_event(
        SimEvent(
            id="evt-cancelled",
            ical_uid="uid-c",
            summary="Gone",
            start_ms=ms(2026, 1, 8, 9),
            end_ms=ms(2026, 1, 8, 10),
            organizer_email=ALICE,
            status="cancelled",
        )
    )
    url = f"{sim.graph_url}/me/calendarView/delta"
    params = {"startDateTime": "2026-01-01T00:00:00Z", "endDateTime": "2026-02-28T00:00:00Z"}
    items, delta, _ = full_sync(graph, url, page=3, params=params)

    weekly = [it for it in items if it.get("seriesMasterId") == "evt-weekly"]
    assert [it["start"]["dateTime"] for it in weekly] == [
        "2026-01-05T10:00:00.0000000",
        "2026-01-12T10:00:00.0000000",
        "2026-01-19T10:00:00.0000000",
        "2026-01-26T10:00:00.0000000",
    ]
    assert all(it["type"] == "occurrence" and it["start"]["timeZone"] == "UTC" for it in weekly)
    assert weekly[0]["end"]["dateTime"] == "2026-01-05T11:00:00.0000000"
    assert len({it["id"] for it in weekly}) == 4
    attendees = {a["emailAddress"]["address"]: a for a in weekly[0]["attendees"]}
    assert "bob@fabrikam.com" not in attendees  # the organizer is not an attendee
    assert attendees[ALICE]["status"]["response"] == "tentativelyAccepted"
    assert attendees[ALICE]["type"] == "required"
    assert attendees["room1@contoso.com"]["type"] == "resource"
    assert attendees["dan@example.org"]["type"] == "optional"
    assert attendees["dan@example.org"]["status"]["response"] == "none"
    assert weekly[0]["organizer"]["emailAddress"]["address"] == "bob@fabrikam.com"
    assert weekly[0]["isCancelled"] is False and weekly[0]["isAllDay"] is False

    single = [it for it in items if it["id"] == "evt-single"]
    assert single and single[0]["type"] == "singleInstance" and single[0]["isOrganizer"]
    daily = [
        it["start"]["dateTime"][:10] for it in items if it.get("seriesMasterId") == "evt-daily"
    ]
    assert daily == ["2026-01-26", "2026-01-28", "2026-01-30", "2026-02-01", "2026-02-03"]
    assert not {"evt-outside", "evt-cancelled"} & {it["id"] for it in items}
    assert len(items) == 4 + 1 + 5

    # Cancel the second weekly occurrence: the next round reports just that removal.
    mailbox.cancel_occurrence("evt-weekly", JAN5_10H + 7 * DAY)
    body = graph.get(delta).json()
    assert body["value"] == [{"id": weekly[1]["id"], "@removed": {"reason": "deleted"}}]

    # Cancelling the whole event removes the remaining occurrences.
    mailbox.cancel_event("evt-weekly")
    body = graph.get(body["@odata.deltaLink"]).json()
    removed = {v["id"] for v in body["value"] if "@removed" in v}
    assert removed == {weekly[0]["id"], weekly[2]["id"], weekly[3]["id"]}


def test_calendar_view_delta_requires_range(
    sim: MicrosoftSimulator, graph: requests.Session
) -> None:
    resp = graph.get(f"{sim.graph_url}/me/calendarView/delta")
    assert resp.status_code == 400
