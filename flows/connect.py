"""Interactive account connection: `rapport accounts connect google|microsoft`.

Google: the OAuth installed-app flow of google-auth-oauthlib on a loopback redirect
(`InstalledAppFlow.run_local_server`), then the mailbox address from the Gmail
profile. Microsoft: the msal device-code flow, the refresh token taken from msal's
token cache, then the address and aliases from Graph `/me`. Both end in
`flows.cli.add_account`, which writes the secrets to a 0600 credential file.

Each step is separately callable so it can be driven against local servers:
`build_google_flow` / `google_authorization_url` / `exchange_google_code` split the
browser flow, and `microsoft_device_flow` returns the tokens without storing them.

Failures raise WorkspaceError with one line that names the provider's error code
only: server descriptions, codes, tokens and secrets never reach the message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from flows.workspace import Account, Home, WorkspaceError

log = logging.getLogger("rapport.connect")

__all__ = [
    "GOOGLE_AUTH_URI",
    "GOOGLE_REQUIRED_SCOPES",
    "MICROSOFT_SCOPES",
    "DeviceFlowTokens",
    "build_google_flow",
    "connect_google",
    "connect_microsoft",
    "exchange_google_code",
    "google_authorization_url",
    "google_installed_app_flow",
    "google_profile",
    "microsoft_device_flow",
    "microsoft_profile",
]

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/v2/auth"
# Sync reads mail and calendars; gmail.send is requested but a user who unticks it on
# Google's granular consent screen can still sync.
GOOGLE_REQUIRED_SCOPES = (
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/calendar.readonly",
)
# msal adds openid, profile and offline_access itself (and refuses them from callers).
MICROSOFT_SCOPES = ("Mail.Read", "Calendars.Read", "Mail.Send", "User.Read")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HTTP_TIMEOUT_S = 30.0

_PENDING = frozenset({"authorization_pending", "slow_down"})
_DECLINED = frozenset({"authorization_declined", "access_denied"})


# ----------------------------------------------------------------- shared helpers
def _safe_code(value: Any) -> str:
    """An OAuth error code fit for a message: short and plain, else a generic word."""
    text = str(value or "")
    return text if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", text) else "error"


def _is_loopback_http(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "").lower() in LOOPBACK_HOSTS


def _check_endpoint(url: str | None, what: str) -> None:
    """https anywhere, plain http only on loopback (local simulators and tests)."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme == "https" or _is_loopback_http(url):
        return
    raise WorkspaceError(f"{what} {url!r} must be https (http only on 127.0.0.1/localhost)")


def _require(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise WorkspaceError(f"{what} must not be empty")
    return value.strip()


@contextlib.contextmanager
def _oauthlib_env(*urls: str | None) -> Iterator[None]:
    """Environment oauthlib reads at call time, set for the flow only, then restored.

    OAUTHLIB_INSECURE_TRANSPORT: oauthlib refuses any http:// authorization or token
    URL. Local simulators (and tests) serve plain http on loopback, where there is no
    network to protect, so it is set only when one of the flow's URLs is loopback
    http; https endpoints (Google's) never need it and non-loopback http is refused
    before we get here.
    OAUTHLIB_RELAX_TOKEN_SCOPE: Google's granular consent lets users untick scopes, and
    oauthlib would then raise on the changed scope instead of returning the token; we
    check the granted scopes ourselves (GOOGLE_REQUIRED_SCOPES).
    """
    wanted = {"OAUTHLIB_RELAX_TOKEN_SCOPE": "1"}
    if any(_is_loopback_http(u) for u in urls):
        wanted["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _register(h: Home, **kwargs: Any) -> Account:
    # Imported here: flows.cli wires commands to this module (no import cycle).
    from flows.cli import add_account

    return add_account(h, **kwargs)


# ----------------------------------------------------------------- Google
def _google_flow_class() -> type:
    from google_auth_oauthlib.flow import InstalledAppFlow

    class _PromptingInstalledAppFlow(InstalledAppFlow):
        """InstalledAppFlow that hands each authorization URL it builds to a callback,
        so `run_local_server` can show it however the caller likes (it would print)."""

        on_authorization_url: Callable[[str], None] | None = None

        def authorization_url(self, **kwargs: Any) -> tuple[str, str]:
            url, state = super().authorization_url(**kwargs)
            if self.on_authorization_url is not None:
                self.on_authorization_url(url)
            return url, state

    return _PromptingInstalledAppFlow


def build_google_flow(
    client_id: str,
    client_secret: str,
    *,
    auth_uri: str | None = None,
    token_uri: str | None = None,
    scopes: Sequence[str] | None = None,
    redirect_uri: str | None = None,
) -> Any:
    """An `InstalledAppFlow` (PKCE on) for an installed-app OAuth client."""
    from connectors.gmail import GOOGLE_TOKEN_URI, SCOPES

    auth_uri, token_uri = auth_uri or GOOGLE_AUTH_URI, token_uri or GOOGLE_TOKEN_URI
    _check_endpoint(auth_uri, "--auth-uri")
    _check_endpoint(token_uri, "--token-uri")
    config = {
        "installed": {
            "client_id": _require(client_id, "--client-id"),
            "client_secret": _require(client_secret, "--client-secret"),
            "auth_uri": auth_uri,
            "token_uri": token_uri,
            "redirect_uris": ["http://localhost"],
        }
    }
    flow = _google_flow_class().from_client_config(config, scopes=list(scopes or SCOPES))
    if redirect_uri is not None:
        flow.redirect_uri = redirect_uri
    return flow


def _flow_urls(flow: Any) -> tuple[str | None, str | None]:
    cfg = flow.client_config
    return cfg.get("auth_uri"), cfg.get("token_uri")


def google_authorization_url(flow: Any, redirect_uri: str) -> tuple[str, str]:
    """(url, state) for the user's browser. Offline access and a fresh consent screen:
    Google returns a refresh token only when the user consents in this request."""
    flow.redirect_uri = redirect_uri
    with _oauthlib_env(*_flow_urls(flow)):
        return flow.authorization_url(prompt="consent")


def _google_failure(exc: BaseException) -> WorkspaceError:
    from google_auth_oauthlib.flow import WSGITimeoutError
    from oauthlib.oauth2.rfc6749.errors import (
        AccessDeniedError,
        InsecureTransportError,
        MismatchingStateError,
        OAuth2Error,
    )

    if isinstance(exc, WSGITimeoutError):
        return WorkspaceError("timed out waiting for the Google sign-in in the browser")
    if isinstance(exc, AccessDeniedError):
        return WorkspaceError("Google sign-in was denied (access_denied)")
    if isinstance(exc, MismatchingStateError):
        return WorkspaceError("Google sign-in answer did not match this request; start again")
    if isinstance(exc, InsecureTransportError):
        return WorkspaceError("Google sign-in refused: OAuth endpoints must be https")
    if isinstance(exc, OAuth2Error):
        return WorkspaceError(f"Google sign-in failed: {_safe_code(exc.error)}")
    if isinstance(exc, requests.RequestException):
        return WorkspaceError(f"could not reach the Google token endpoint ({type(exc).__name__})")
    return WorkspaceError(f"Google sign-in failed ({type(exc).__name__})")


def _google_errors() -> tuple[type[BaseException], ...]:
    from google_auth_oauthlib.flow import WSGITimeoutError
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error

    return (OAuth2Error, WSGITimeoutError, requests.RequestException, Warning)


def _checked_credentials(flow: Any) -> Any:
    creds = flow.credentials
    granted = creds.granted_scopes
    if isinstance(granted, str):
        granted = granted.split()
    if granted is not None:
        missing = [s for s in GOOGLE_REQUIRED_SCOPES if s in flow.oauth2session.scope]
        missing = [s for s in missing if s not in set(granted)]
        if missing:
            names = ", ".join(s.rsplit("/", 1)[-1] for s in missing)
            raise WorkspaceError(f"Google sign-in did not grant {names}; connect again and allow")
    if not creds.refresh_token:
        raise WorkspaceError("Google returned no refresh token; connect again")
    return creds


def exchange_google_code(flow: Any, code: str) -> Any:
    """Redeem an authorization code at the flow's token_uri; returns Credentials."""
    try:
        with _oauthlib_env(*_flow_urls(flow)):
            flow.fetch_token(code=code)
    except _google_errors() as exc:
        raise _google_failure(exc) from None
    return _checked_credentials(flow)


def google_installed_app_flow(
    client_id: str,
    client_secret: str,
    *,
    auth_uri: str | None = None,
    token_uri: str | None = None,
    scopes: Sequence[str] | None = None,
    open_browser: bool = True,
    port: int = 0,
    host: str = "localhost",
    timeout_s: float | None = 300.0,
    authorization_prompt: Callable[[str], None] | None = None,
) -> Any:
    """The whole browser flow: a one-shot redirect server on http://host:port/ (0 = any
    free port), the consent URL to `authorization_prompt` (and the browser when
    `open_browser`), then the code-for-token exchange. Returns Credentials."""
    if host.lower() not in LOOPBACK_HOSTS:
        raise WorkspaceError(f"redirect host {host!r} must be loopback (localhost/127.0.0.1)")
    flow = build_google_flow(
        client_id, client_secret, auth_uri=auth_uri, token_uri=token_uri, scopes=scopes
    )
    flow.on_authorization_url = authorization_prompt
    try:
        with _oauthlib_env(*_flow_urls(flow)):
            flow.run_local_server(
                host=host,
                port=port,
                open_browser=open_browser,
                authorization_prompt_message=None,  # the callback shows the URL instead
                timeout_seconds=timeout_s,
                prompt="consent",
            )
    except _google_errors() as exc:
        raise _google_failure(exc) from None
    except OSError as exc:  # the redirect port is taken
        raise WorkspaceError(f"could not listen on {host}:{port} ({exc.strerror})") from None
    return _checked_credentials(flow)


def google_profile(creds: Any, api_endpoint: str | None = None) -> tuple[str, list[str]]:
    """(address, aliases) of the signed-in Gmail user: users.getProfile, then the
    sendAs addresses (a nicety: sync learns aliases too, so failures are ignored)."""
    import google.auth.exceptions
    import google_auth_httplib2
    import httplib2
    from googleapiclient.discovery import build
    from googleapiclient.errors import HttpError

    from connectors.gmail import GOOGLE_API_ROOT

    root = api_endpoint or GOOGLE_API_ROOT
    root = root if root.endswith("/") else root + "/"
    http = google_auth_httplib2.AuthorizedHttp(creds, http=httplib2.Http(timeout=HTTP_TIMEOUT_S))
    service = build(
        "gmail",
        "v1",
        http=http,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": root},
    )
    try:
        profile = service.users().getProfile(userId="me").execute(num_retries=2)
    except HttpError as exc:
        status = int(getattr(exc.resp, "status", 0) or 0)
        raise WorkspaceError(f"could not read the Gmail profile (HTTP {status})") from None
    except google.auth.exceptions.RefreshError:
        raise WorkspaceError("could not read the Gmail profile: token refresh failed") from None
    except (OSError, httplib2.HttpLib2Error) as exc:
        raise WorkspaceError(f"could not reach the Gmail API ({type(exc).__name__})") from None
    email = str(profile.get("emailAddress") or "").strip().lower()
    if not email:
        raise WorkspaceError("the Gmail profile carries no address")
    aliases: list[str] = []
    try:
        page = service.users().settings().sendAs().list(userId="me").execute(num_retries=2)
        for item in page.get("sendAs", []):
            addr = str(item.get("sendAsEmail") or "").strip().lower()
            if addr and addr != email and addr not in aliases:
                aliases.append(addr)
    except Exception as exc:  # noqa: BLE001 - optional: sync fills aliases in later
        log.info("gmail sendAs lookup failed (%s); continuing without aliases", type(exc).__name__)
    return email, aliases


def connect_google(
    h: Home,
    *,
    client_id: str,
    client_secret: str,
    email: str | None = None,
    api_endpoint: str | None = None,
    token_uri: str | None = None,
    auth_uri: str | None = None,
    open_browser: bool = True,
    port: int = 0,
    host: str = "localhost",
    timeout_s: float | None = 300.0,
    authorization_prompt: Callable[[str], None] | None = None,
    name: str | None = None,
    member_email: str | None = None,
    sync_bodies: bool = True,
) -> Account:
    """Run the browser flow and register the account (secrets in a 0600 file).

    The address comes from the Gmail profile (with the sendAs aliases) unless only
    `email` is given without `api_endpoint`; when both a profile and `email` exist
    they must agree, so a wrong Google login is caught before anything is stored.
    """
    _require(client_id, "--client-id")
    _require(client_secret, "--client-secret")
    for what, url in (("--api-endpoint", api_endpoint), ("--token-uri", token_uri)):
        _check_endpoint(url, what)
    creds = google_installed_app_flow(
        client_id,
        client_secret,
        auth_uri=auth_uri,
        token_uri=token_uri,
        open_browser=open_browser,
        port=port,
        host=host,
        timeout_s=timeout_s,
        authorization_prompt=authorization_prompt,
    )
    aliases: list[str] = []
    address = email.strip().lower() if email else None
    if api_endpoint is not None or address is None:
        found, aliases = google_profile(creds, api_endpoint)
        if address is not None and address != found and address not in aliases:
            raise WorkspaceError(f"signed in as {found}, not {address}; nothing was stored")
        address = found
    return _register(
        h,
        provider="google",
        email=address,
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=creds.refresh_token,
        api_endpoint=api_endpoint,
        token_uri=token_uri,
        aliases=aliases,
        name=name,
        member_email=member_email,
        sync_bodies=sync_bodies,
    )


# ----------------------------------------------------------------- Microsoft
@dataclass
class DeviceFlowTokens:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    username: str | None = None  # preferred_username of the id_token, when present


def _public_app(client_id: str, authority: str, cache: Any) -> Any:
    """A msal public client (the device-code flow exists only there). Loopback http
    authorities get the https rewrite of connectors.msauth and no instance discovery."""
    import msal

    from connectors.msauth import LoopbackHttpsRewriteSession, msal_authority

    try:
        url, rewritten = msal_authority(authority)
    except ValueError:
        raise WorkspaceError(f"--authority {authority!r} must be https") from None
    kwargs: dict[str, Any] = {}
    if rewritten:
        kwargs["instance_discovery"] = False
        kwargs["http_client"] = LoopbackHttpsRewriteSession()
    try:
        return msal.PublicClientApplication(client_id, authority=url, token_cache=cache, **kwargs)
    except (ValueError, requests.RequestException) as exc:
        # msal fetches the authority's OIDC document here (unknown tenant, no network).
        raise WorkspaceError(
            f"could not load the Microsoft sign-in configuration of {authority} "
            f"({type(exc).__name__})"
        ) from None


def _device_flow_failure(result: dict[str, Any]) -> WorkspaceError:
    code = _safe_code(result.get("error"))
    if code in _PENDING or code == "expired_token":
        return WorkspaceError(
            "the Microsoft device code expired before sign-in finished; run connect again"
        )
    if code in _DECLINED:
        return WorkspaceError(f"Microsoft sign-in was declined ({code})")
    return WorkspaceError(f"Microsoft sign-in failed: {code}")


def microsoft_device_flow(
    client_id: str,
    *,
    authority: str,
    on_prompt: Callable[[dict[str, Any]], None],
    client_secret: str | None = None,
    scopes: Sequence[str] = MICROSOFT_SCOPES,
    timeout_s: float | None = None,
) -> DeviceFlowTokens:
    """Device-code sign-in: start the flow, show it (`on_prompt(flow)`; the CLI prints
    flow["message"], which names flow["verification_uri"] and flow["user_code"]), poll
    until the user approves, and return the tokens. The refresh token comes from
    msal's token cache. `client_secret`, when given, goes with every token poll (an app
    registration that is not a public client needs it); `timeout_s` stops polling
    early, otherwise the code's own lifetime (usually 15 minutes) does."""
    import msal

    cache = msal.SerializableTokenCache()
    app = _public_app(_require(client_id, "--client-id"), authority, cache)
    try:
        flow = app.initiate_device_flow(scopes=list(scopes))
    except requests.RequestException as exc:
        raise WorkspaceError(
            f"could not reach the Microsoft sign-in service ({type(exc).__name__})"
        ) from None
    if "user_code" not in flow:
        code = _safe_code(flow.get("error"))
        raise WorkspaceError(f"Microsoft sign-in could not start: {code}")
    if timeout_s is not None:
        # msal polls until flow["expires_at"]; moving it earlier is its documented stop.
        flow["expires_at"] = min(float(flow["expires_at"]), time.time() + timeout_s)
    on_prompt(flow)
    extra: dict[str, Any] = {"data": {"client_secret": client_secret}} if client_secret else {}
    try:
        result = app.acquire_token_by_device_flow(flow, **extra)
    except requests.RequestException as exc:
        raise WorkspaceError(
            f"could not reach the Microsoft sign-in service ({type(exc).__name__})"
        ) from None
    if not result or "access_token" not in result:
        raise _device_flow_failure(result or {})
    refresh = [
        str(e["secret"])
        for e in cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)
        if e.get("secret")
    ]
    if not refresh:
        raise WorkspaceError("Microsoft returned no refresh token (is offline_access allowed?)")
    claims = result.get("id_token_claims") or {}
    return DeviceFlowTokens(
        access_token=str(result["access_token"]),
        refresh_token=refresh[-1],
        username=claims.get("preferred_username"),
    )


def microsoft_profile(access_token: str, graph_endpoint: str | None = None) -> dict[str, Any]:
    """{"email", "aliases", "display_name"} of the signed-in user from Graph `/me`."""
    from connectors.graph import GRAPH_ENDPOINT

    root = (graph_endpoint or GRAPH_ENDPOINT).rstrip("/")
    try:
        resp = requests.get(
            f"{root}/me",
            params={"$select": "mail,userPrincipalName,proxyAddresses,displayName"},
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
            timeout=HTTP_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        raise WorkspaceError(f"could not reach Microsoft Graph ({type(exc).__name__})") from None
    if resp.status_code != 200:
        try:
            code = _safe_code((resp.json().get("error") or {}).get("code"))
        except (ValueError, AttributeError):
            code = "error"
        raise WorkspaceError(f"could not read the Graph profile (HTTP {resp.status_code} {code})")
    me = resp.json()
    email = str(me.get("mail") or me.get("userPrincipalName") or "").strip().lower()
    if not email:
        raise WorkspaceError("the Graph profile carries no mail address")
    aliases: list[str] = []
    for proxy in me.get("proxyAddresses") or []:
        kind, _, address = str(proxy).partition(":")
        address = address.strip().lower()
        if kind.lower() == "smtp" and address and address != email and address not in aliases:
            aliases.append(address)
    return {"email": email, "aliases": aliases, "display_name": me.get("displayName")}


def connect_microsoft(
    h: Home,
    *,
    client_id: str,
    tenant: str | None = None,
    client_secret: str | None = None,
    authority: str | None = None,
    graph_endpoint: str | None = None,
    on_prompt: Callable[[dict[str, Any]], None],
    timeout_s: float | None = None,
    name: str | None = None,
    member_email: str | None = None,
    sync_bodies: bool = True,
) -> Account:
    """Device-code sign-in, then register the account (secrets in a 0600 file).

    The address and aliases come from Graph `/me` (mail or userPrincipalName,
    proxyAddresses). A client secret is required for now: the Outlook connector
    redeems the stored refresh token as a confidential client, and add_account
    refuses an empty secret, so we stop before the user signs in for nothing.
    """
    _require(client_id, "--client-id")
    if not (tenant or authority):
        raise WorkspaceError("--tenant is required for Microsoft accounts")
    if not client_secret or not client_secret.strip():
        raise WorkspaceError(
            "--client-secret is required: Outlook sync redeems the token as a confidential client"
        )
    _check_endpoint(authority, "--authority")
    _check_endpoint(graph_endpoint, "--graph-endpoint")
    # Same default as flows.engine, so the stored account signs in where it connected.
    effective = authority or f"https://login.microsoftonline.com/{tenant}"
    tokens = microsoft_device_flow(
        client_id,
        authority=effective,
        client_secret=client_secret,
        on_prompt=on_prompt,
        timeout_s=timeout_s,
    )
    me = microsoft_profile(tokens.access_token, graph_endpoint)
    return _register(
        h,
        provider="microsoft",
        email=me["email"],
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=tokens.refresh_token,
        tenant=tenant,
        authority=authority,
        graph_endpoint=graph_endpoint,
        aliases=me["aliases"],
        name=name,
        member_email=member_email,
        sync_bodies=sync_bodies,
    )
