"""`rapport accounts connect`: the real google-auth-oauthlib and msal flows end to end.

Google: `InstalledAppFlow.run_local_server` runs for real on a loopback port; the test
plays the browser (reads the consent URL, GETs the redirect with a code) and a small
local OAuth token server redeems the code (with PKCE and redirect_uri checks). That
server forwards refresh grants to the GoogleSimulator, which also serves the Gmail
profile, so the stored refresh token is proven by a real Gmail sync.

Microsoft: msal's device-code flow against the MicrosoftSimulator (approval happens in
the prompt callback), then a real Outlook sync with the stored refresh token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from connectors.gmail import SCOPES
from connectors.simulators.google import GoogleSimulator
from connectors.simulators.microsoft import MicrosoftSimulator
from connectors.simulators.model import SimMessage
from flows import engine
from flows.connect import (
    build_google_flow,
    connect_google,
    connect_microsoft,
    exchange_google_code,
    google_authorization_url,
    google_installed_app_flow,
    microsoft_device_flow,
)
from flows.workspace import Home, WorkspaceError, account_id_for

G_CLIENT, G_SECRET = "rapport-desktop.apps.googleusercontent.com", "g-client-secret-XYZ"
G_EMAIL, G_ALIAS = "gina@example.com", "gina.alias@example.com"
G_RT = "1//g-refresh-" + "x" * 20
M_CLIENT, M_SECRET = "rapport-app", "m-client-secret-XYZ"
M_EMAIL, M_ALIASES = "alice@contoso.com", ["a.smith@contoso.com"]
JAN5 = int(datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def message(i: int, owner: str) -> SimMessage:
    return SimMessage(
        id=f"m{i:04d}",
        thread_id=f"t{i}",
        internal_date_ms=JAN5 + i * 60_000,
        label_ids=["INBOX"],
        headers=[
            ("From", f"Contact {i} <contact{i}@fabrikam.com>"),
            ("To", owner),
            ("Subject", f"Hello {i}"),
            ("Date", "Mon, 05 Jan 2026 10:00:00 +0000"),
            ("Message-ID", f"<m{i}@fabrikam.com>"),
        ],
        body=f"Body {i}".encode(),
    )


# ----------------------------------------------------------------- local token server
class CodeGrantTokenServer:
    """A loopback OAuth 2.0 token endpoint: redeems authorization codes it was told
    about (client auth, redirect_uri and PKCE S256 checked, codes single-use) and
    forwards refresh grants to an upstream token endpoint (the GoogleSimulator),
    whose access tokens it also hands out with each redeemed code."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.codes: dict[str, dict[str, Any]] = {}
        self.grants: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = outer.token(self.headers.get("Authorization"), body)
                data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def issue_code(self, code: str, *, challenge: str, redirect_uri: str, scope: str) -> None:
        self.codes[code] = {"challenge": challenge, "redirect_uri": redirect_uri, "scope": scope}

    def _upstream(self, form: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(
            self.upstream, data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        try:
            with NO_PROXY.open(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def token(self, authorization: str | None, body: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            raw = base64.b64decode(authorization[6:]).decode()
            cid, _, sec = raw.partition(":")
            client_id, secret = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(sec)
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        if grant == "refresh_token":
            return self._upstream(form)
        if grant != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        if (client_id, secret) != (G_CLIENT, G_SECRET):
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        issued = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "").encode()
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if (
            issued is None
            or issued["redirect_uri"] != form.get("redirect_uri")
            or issued["challenge"].encode() != expected
        ):
            return 400, {"error": "invalid_grant", "error_description": f"Bad code {G_SECRET}"}
        status, raw = self._upstream(
            {
                "grant_type": "refresh_token",
                "refresh_token": G_RT,
                "client_id": G_CLIENT,
                "client_secret": G_SECRET,
            }
        )
        assert status == 200, raw
        access = json.loads(raw)
        return 200, {
            "access_token": access["access_token"],
            "expires_in": 3599,
            "refresh_token": G_RT,
            "scope": issued["scope"],
            "token_type": "Bearer",
        }

    def __enter__(self) -> CodeGrantTokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Browser:
    """Plays the user's browser: takes the consent URL from the prompt callback, checks
    it, and follows Google's redirect back to the flow's loopback server."""

    def __init__(self, tokens: CodeGrantTokenServer) -> None:
        self.tokens = tokens
        self.urls: queue.Queue[str] = queue.Queue()

    def prompt(self, url: str) -> None:
        self.urls.put(url)

    def consent(
        self, *, grant: str | None = None, deny: bool = False, state: str | None = None
    ) -> dict[str, str]:
        url = self.urls.get(timeout=10)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}
        assert q["client_id"] == G_CLIENT and q["response_type"] == "code"
        assert q["access_type"] == "offline" and q["prompt"] == "consent"
        assert q["code_challenge_method"] == "S256"
        assert set(q["scope"].split()) == set(SCOPES)
        redirect = q["redirect_uri"]
        assert urllib.parse.urlsplit(redirect).hostname in ("localhost", "127.0.0.1")
        if deny:
            answer = {"error": "access_denied", "state": q["state"]}
        else:
            code = "4/code-" + secrets.token_urlsafe(8)
            self.tokens.issue_code(
                code,
                challenge=q["code_challenge"],
                redirect_uri=redirect,
                scope=grant or q["scope"],
            )
            answer = {"code": code, "state": state or q["state"], "scope": q["scope"]}
        with NO_PROXY.open(redirect + "?" + urllib.parse.urlencode(answer), timeout=10) as resp:
            assert resp.status == 200
        return q


def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run `fn` in a thread; the returned callable joins it and returns or re-raises."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join() -> Any:
        t.join(timeout=20)
        assert not t.is_alive(), "flow did not finish"
        if "error" in out:
            raise out["error"]
        return out["value"]

    return join


@pytest.fixture
def gsim() -> Iterator[GoogleSimulator]:
    with GoogleSimulator() as sim:
        box = sim.add_user(
            G_EMAIL,
            aliases=[G_ALIAS],
            refresh_token=G_RT,
            client_id=G_CLIENT,
            client_secret=G_SECRET,
        )
        box.add_messages(message(i, G_EMAIL) for i in range(3))
        yield sim


@pytest.fixture
def tokens(gsim: GoogleSimulator) -> Iterator[CodeGrantTokenServer]:
    with CodeGrantTokenServer(gsim.token_uri) as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "data")


def assert_private_credentials(home: Home, account_id: str, refresh_token: str) -> None:
    path = home.credential_path(account_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["refresh_token"] == refresh_token
    assert refresh_token not in home.workspace_file.read_text()


# ----------------------------------------------------------------- Google
def test_installed_app_flow_over_loopback(tokens: CodeGrantTokenServer) -> None:
    browser = Browser(tokens)
    before = os.environ.get("OAUTHLIB_INSECURE_TRANSPORT")
    join = in_thread(
        lambda: google_installed_app_flow(
            G_CLIENT,
            G_SECRET,
            token_uri=tokens.url,
            scopes=SCOPES,
            open_browser=False,
            authorization_prompt=browser.prompt,
        )
    )
    browser.consent()
    creds = join()
    assert creds.refresh_token == G_RT and creds.token.startswith("ya29.")
    assert creds.token_uri == tokens.url and creds.client_id == G_CLIENT
    assert tokens.grants == ["authorization_code"]
    assert os.environ.get("OAUTHLIB_INSECURE_TRANSPORT") == before  # restored


def test_connect_google_registers_account_that_syncs(
    home: Home, gsim: GoogleSimulator, tokens: CodeGrantTokenServer
) -> None:
    browser = Browser(tokens)
    join = in_thread(
        lambda: connect_google(
            home,
            client_id=G_CLIENT,
            client_secret=G_SECRET,
            api_endpoint=gsim.root_url,
            token_uri=tokens.url,
            open_browser=False,
            authorization_prompt=browser.prompt,
        )
    )
    # Fewer scopes than asked (gmail.send unticked): still fine, sync needs only reads.
    browser.consent(grant=" ".join(SCOPES[:2]))
    acc = join()
    assert (acc.provider, acc.email, acc.aliases) == ("google", G_EMAIL, [G_ALIAS])
    assert acc.account_id == account_id_for("google", G_EMAIL)
    assert acc.token_uri == tokens.url and acc.api_endpoint == gsim.root_url
    ws = home.load()
    assert [a.email for a in ws.accounts] == [G_EMAIL]
    assert [m.email for m in ws.members] == [G_EMAIL]
    assert_private_credentials(home, acc.account_id, G_RT)
    creds = home.load_credentials(acc.account_id)
    assert (creds["client_id"], creds["client_secret"]) == (G_CLIENT, G_SECRET)

    result = engine.extract_stream(home, acc.account_id, "gmail")
    assert (result.status, result.error, result.landed) == ("ok", None, 3)
    assert "refresh_token" in tokens.grants  # the stored token was redeemed


def test_google_denied_consent_is_one_clear_line(tokens: CodeGrantTokenServer) -> None:
    browser = Browser(tokens)
    join = in_thread(
        lambda: google_installed_app_flow(
            G_CLIENT,
            G_SECRET,
            token_uri=tokens.url,
            open_browser=False,
            authorization_prompt=browser.prompt,
        )
    )
    browser.consent(deny=True)
    with pytest.raises(WorkspaceError, match=r"^Google sign-in was denied \(access_denied\)$"):
        join()
    assert tokens.grants == []  # nothing was exchanged


def test_google_failed_exchange_hides_secrets(tokens: CodeGrantTokenServer) -> None:
    flow = build_google_flow(G_CLIENT, G_SECRET, token_uri=tokens.url)
    url, state = google_authorization_url(flow, "http://127.0.0.1:9/")
    assert f"state={state}" in url
    with pytest.raises(WorkspaceError) as info:
        exchange_google_code(flow, "4/not-a-code-we-issued")
    msg = str(info.value)
    assert msg == "Google sign-in failed: invalid_grant"
    assert G_SECRET not in msg and "\n" not in msg


def test_google_missing_read_scope_is_refused(
    home: Home, gsim: GoogleSimulator, tokens: CodeGrantTokenServer
) -> None:
    browser = Browser(tokens)
    join = in_thread(
        lambda: connect_google(
            home,
            client_id=G_CLIENT,
            client_secret=G_SECRET,
            api_endpoint=gsim.root_url,
            token_uri=tokens.url,
            open_browser=False,
            authorization_prompt=browser.prompt,
        )
    )
    browser.consent(grant=SCOPES[0])  # calendar.readonly unticked
    with pytest.raises(WorkspaceError, match="did not grant calendar.readonly"):
        join()
    assert home.load().accounts == []


def test_google_state_mismatch_and_email_mismatch(
    home: Home, gsim: GoogleSimulator, tokens: CodeGrantTokenServer
) -> None:
    browser = Browser(tokens)
    join = in_thread(
        lambda: google_installed_app_flow(
            G_CLIENT,
            G_SECRET,
            token_uri=tokens.url,
            open_browser=False,
            authorization_prompt=browser.prompt,
        )
    )
    browser.consent(state="forged-state")
    with pytest.raises(WorkspaceError, match="did not match this request"):
        join()

    join = in_thread(
        lambda: connect_google(
            home,
            client_id=G_CLIENT,
            client_secret=G_SECRET,
            email="someone.else@example.com",
            api_endpoint=gsim.root_url,
            token_uri=tokens.url,
            open_browser=False,
            authorization_prompt=browser.prompt,
        )
    )
    browser.consent()
    with pytest.raises(WorkspaceError, match=f"signed in as {G_EMAIL}, not someone.else"):
        join()
    assert home.load().accounts == []


# ----------------------------------------------------------------- Microsoft
@pytest.fixture
def msim() -> Iterator[MicrosoftSimulator]:
    with MicrosoftSimulator() as sim:
        box = sim.add_user(
            M_EMAIL,
            tenant="contoso",
            aliases=M_ALIASES,
            refresh_token="rt-seed-unused",
            client_id=M_CLIENT,
            client_secret=M_SECRET,
            display_name="Alice Smith",
        )
        for i in range(2):
            box.add_message(message(i, M_EMAIL))
        yield sim


def approve_as(sim: MicrosoftSimulator, email: str, seen: list[dict[str, Any]]) -> Any:
    def on_prompt(flow: dict[str, Any]) -> None:
        seen.append(dict(flow))
        sim.approve_device_code(flow["user_code"], email)  # the user signs in elsewhere

    return on_prompt


def test_connect_microsoft_device_flow_registers_account_that_syncs(
    home: Home, msim: MicrosoftSimulator
) -> None:
    seen: list[dict[str, Any]] = []
    acc = connect_microsoft(
        home,
        client_id=M_CLIENT,
        tenant="contoso",
        client_secret=M_SECRET,
        authority=msim.authority_url("contoso"),
        graph_endpoint=msim.graph_url,
        on_prompt=approve_as(msim, M_EMAIL, seen),
    )
    [flow] = seen
    assert flow["user_code"] in flow["message"] and flow["verification_uri"] in flow["message"]
    assert (acc.provider, acc.email, acc.aliases) == ("microsoft", M_EMAIL, M_ALIASES)
    assert (acc.tenant, acc.authority) == ("contoso", msim.authority_url("contoso"))
    stored = home.load_credentials(acc.account_id)
    assert stored["refresh_token"].startswith("simRT.")
    assert (stored["client_id"], stored["client_secret"]) == (M_CLIENT, M_SECRET)
    assert_private_credentials(home, acc.account_id, stored["refresh_token"])
    grants = [r.path for r in msim.requests if "/oauth2/" in r.path]
    assert any(p.endswith("/devicecode") for p in grants)

    result = engine.extract_stream(home, acc.account_id, "outlook_mail")
    assert (result.status, result.error, result.landed) == ("ok", None, 2)


def test_microsoft_public_client_device_flow(msim: MicrosoftSimulator) -> None:
    seen: list[dict[str, Any]] = []
    tokens = microsoft_device_flow(
        M_CLIENT,
        authority=msim.authority_url("contoso"),
        on_prompt=approve_as(msim, M_EMAIL, seen),
    )
    assert tokens.refresh_token.startswith("simRT.") and tokens.username == M_EMAIL
    assert tokens.refresh_token not in repr(tokens)


def test_microsoft_unapproved_code_expires(home: Home, msim: MicrosoftSimulator) -> None:
    seen: list[dict[str, Any]] = []
    with pytest.raises(WorkspaceError, match=r"device code expired .*run connect again$"):
        connect_microsoft(
            home,
            client_id=M_CLIENT,
            tenant="contoso",
            client_secret=M_SECRET,
            authority=msim.authority_url("contoso"),
            graph_endpoint=msim.graph_url,
            on_prompt=seen.append,  # shown, never approved
            timeout_s=1,
        )
    assert len(seen) == 1 and home.load().accounts == []


def test_microsoft_bad_secret_and_missing_secret(home: Home, msim: MicrosoftSimulator) -> None:
    with pytest.raises(WorkspaceError) as info:
        connect_microsoft(
            home,
            client_id=M_CLIENT,
            tenant="contoso",
            client_secret="wrong-secret-value",
            authority=msim.authority_url("contoso"),
            graph_endpoint=msim.graph_url,
            on_prompt=approve_as(msim, M_EMAIL, []),
        )
    assert str(info.value) == "Microsoft sign-in failed: invalid_client"
    assert "wrong-secret-value" not in str(info.value)

    before = len(msim.requests)
    with pytest.raises(WorkspaceError, match="--client-secret is required"):
        connect_microsoft(
            home,
            client_id=M_CLIENT,
            tenant="contoso",
            authority=msim.authority_url("contoso"),
            on_prompt=approve_as(msim, M_EMAIL, []),
        )
    assert len(msim.requests) == before  # refused before the user is asked to sign in
    assert home.load().accounts == []
