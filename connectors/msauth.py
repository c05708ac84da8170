"""msal plumbing for the Outlook connector.

msal only accepts https authorities. For the local simulator (plain http on
loopback) we hand msal the https form of the authority and an HTTP client that
quietly downgrades https to http for loopback hosts only; real Microsoft
authorities pass through untouched.

Tokens never appear in log lines or exception messages: errors carry only the
AAD error code and description.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msal
import requests

__all__ = [
    "DEFAULT_GRAPH_SCOPES",
    "GraphAuthError",
    "LoopbackHttpsRewriteSession",
    "acquire_graph_token",
    "build_confidential_app",
    "msal_authority",
]

# `.default` = every Graph permission the tenant consented to (Mail.Read,
# Calendars.Read, User.Read). msal adds openid/profile/offline_access itself and
# raises ValueError if the caller passes any of them.
DEFAULT_GRAPH_SCOPES: tuple[str, ...] = ("https://graph.microsoft.com/.default",)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class GraphAuthError(Exception):
    """Token acquisition failed. `reason` is the AAD error code (e.g. invalid_grant);
    `transient` marks network/5xx failures worth retrying later."""

    def __init__(self, reason: str, description: str = "", *, transient: bool = False) -> None:
        self.reason = reason
        self.description = description
        self.transient = transient
        super().__init__(f"{reason}: {description}" if description else reason)

    @property
    def needs_reauth(self) -> bool:
        return self.reason in ("invalid_grant", "interaction_required", "no_account")


def _is_loopback(host: str | None) -> bool:
    return (host or "").lower().strip("[]") in LOOPBACK_HOSTS


def _downgrade(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and _is_loopback(parts.hostname):
        return urlunsplit(("http", *parts[1:]))
    return url


class LoopbackHttpsRewriteSession(requests.Session):
    """A requests session that sends https://127.0.0.1:P/... (and localhost, [::1])
    to http://... so msal can talk to the local simulator. Other hosts are untouched."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, bytes):
            url = url.decode("utf-8")
        return super().request(method, _downgrade(url), *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        # Covers redirects and prepared requests that bypass request().
        if request.url:
            request.url = _downgrade(request.url)
        return super().send(request, **kwargs)


def msal_authority(authority: str) -> tuple[str, bool]:
    """Authority URL msal will accept, and whether it was rewritten from http.

    "http://127.0.0.1:P/T" -> ("https://127.0.0.1:P/T", True); https passes
    through unchanged. Plain http to a non-loopback host is refused.
    """
    parts = urlsplit(authority.rstrip("/"))
    if parts.scheme == "https":
        return authority.rstrip("/"), False
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return urlunsplit(("https", *parts[1:])), True
    raise ValueError(f"authority must be https (or http on loopback): {authority!r}")


def build_confidential_app(
    *,
    client_id: str,
    client_secret: str,
    authority: str,
    token_cache: msal.SerializableTokenCache | None = None,
) -> msal.ConfidentialClientApplication:
    """A confidential client for `authority`; loopback http authorities get the
    https rewrite and no instance discovery (which would call login.microsoftonline.com).
    Construction fetches the OIDC discovery document, so the authority must be up."""
    url, rewritten = msal_authority(authority)
    kwargs: dict[str, Any] = {}
    if rewritten:
        kwargs["instance_discovery"] = False
        kwargs["http_client"] = LoopbackHttpsRewriteSession()
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=client_secret,
        authority=url,
        token_cache=token_cache,
        **kwargs,
    )


def _raise_on_error(result: dict[str, Any] | None) -> dict[str, Any]:
    if not result:
        raise GraphAuthError("no_token", "token endpoint returned nothing")
    if "error" in result or "access_token" not in result:
        reason = str(result.get("error") or "no_access_token")
        description = str(result.get("error_description") or "").split("\r\n")[0]
        raise GraphAuthError(reason, description)
    return result


def acquire_graph_token(
    app: msal.ClientApplication,
    *,
    refresh_token: str | None,
    scopes: Sequence[str] = DEFAULT_GRAPH_SCOPES,
    username: str | None = None,
) -> dict[str, Any]:
    """An msal token result (``access_token``, ``expires_in``, ...) for Graph.

    Tries the cache first (`acquire_token_silent`, which also redeems a cached
    refresh token), then the stored `refresh_token`. Pass `username` when one
    token cache holds several accounts. Raises GraphAuthError with the
    AAD error code when neither works; tokens never reach the message.
    """
    scope_list = list(scopes)
    silent_error: dict[str, Any] | None = None
    try:
        accounts = app.get_accounts(username=username)
        if username is None and len(accounts) > 1:
            accounts = []  # a shared cache: don't guess whose token to return
        for account in accounts:
            result = app.acquire_token_silent(scope_list, account=account)
            if result and "access_token" in result:
                return result
            if result and "error" in result:
                silent_error = result
        if refresh_token is None:
            if silent_error is not None:
                _raise_on_error(silent_error)
            raise GraphAuthError("no_account", "no cached account and no refresh token")
        result = app.acquire_token_by_refresh_token(refresh_token, scopes=scope_list)
    except requests.RequestException as exc:
        # 5xx responses and socket errors: report the class only (URLs are safe,
        # but bodies could carry secrets).
        raise GraphAuthError("transport_error", type(exc).__name__, transient=True) from None
    return _raise_on_error(result)
