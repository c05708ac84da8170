"""The `rapport` command line. Every bad input gets one clear line and a non-zero exit."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.workspace import (
    SHARING_LEVELS,
    Account,
    BlocklistEntry,
    Home,
    WorkspaceError,
    account_id_for,
    iso,
    new_member,
    utcnow,
)

console = Console()
err = Console(stderr=True)


class RapportTyper(typer.Typer):
    """Every command turns a WorkspaceError into one red line and exit code 2."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        register = super().command(*args, **kwargs)

        def wrap(fn: Any) -> Any:
            @functools.wraps(fn)
            def guarded(*a: Any, **k: Any) -> Any:
                try:
                    return fn(*a, **k)
                except WorkspaceError as exc:
                    err.print(f"[red]error:[/] {exc}")
                    raise typer.Exit(2) from None

            return register(guarded)

        return wrap


app = RapportTyper(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Rapport: mailbox and calendar sync into queryable CRM tables.",
)
accounts_app = RapportTyper(no_args_is_help=True, help="Connect and manage mail accounts.")
settings_app = RapportTyper(no_args_is_help=True, help="Workspace settings.")
settings_set_app = RapportTyper(no_args_is_help=True, help="Change a setting.")
sharing_app = RapportTyper(no_args_is_help=True, help="Who sees what of an account's mail.")
blocklist_app = RapportTyper(no_args_is_help=True, help="Per-account blocklists.")
app.add_typer(accounts_app, name="accounts")
app.add_typer(blocklist_app, name="blocklist")
app.add_typer(settings_app, name="settings")
settings_app.add_typer(settings_set_app, name="set")
app.add_typer(sharing_app, name="sharing")

STATE: dict[str, Any] = {}


def home() -> Home:
    return STATE["home"]


@app.callback()
def main_options(
    home_dir: Annotated[
        Path | None,
        typer.Option("--home", envvar="RAPPORT_HOME", help="Data folder (default ./data)."),
    ] = None,
) -> None:
    h = Home(home_dir or Path("data"))
    STATE["home"] = h
    configure_prefect(h)


EPHEMERAL_STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
EPHEMERAL_STARTUP_TIMEOUT_S = "120"


def configure_prefect(h: Home) -> None:
    """Local, quiet, telemetry-free Prefect; a temporary local API unless one is configured."""
    if "PREFECT_HOME" not in os.environ:
        (h.state / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(h.state / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    # A first run starts the temporary API and creates its database: 29 s on a slow 2-core
    # machine, past Prefect's 20 s default, after which the run failed.
    os.environ.setdefault(EPHEMERAL_STARTUP_TIMEOUT, EPHEMERAL_STARTUP_TIMEOUT_S)


# ------------------------------------------------------------------ sync
@app.command()
def sync(
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO 8601 time for metrics.")] = None,
    account: Annotated[list[str] | None, typer.Option("--account", help="Only these.")] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Run per-account extraction on this Dask cluster (tcp://host:port)."),
    ] = None,
) -> None:
    """Extract every account, transform, validate and publish."""
    from flows.sync import parse_as_of, prewarm_quality_gate

    parse_as_of(as_of)  # validate before starting anything
    h = home()
    if not h.load().active_accounts():
        raise WorkspaceError("no accounts yet: add one with `rapport accounts add`")
    prewarm_quality_gate()  # (while Prefect starts its API: the flow would start it later)
    run_sync(h, as_of, account, dask_address)


def run_sync(
    h: Home, as_of: str | None, accounts: list[str] | None = None, dask_address: str | None = None
) -> dict[str, Any]:
    from flows.sync import sync_workspace

    flow_fn = sync_workspace
    if dask_address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise WorkspaceError(
                "--dask-address needs the dask extra: pip install -e '.[dask]'"
            ) from None
        flow_fn = sync_workspace.with_options(task_runner=DaskTaskRunner(address=dask_address))
    out = _with_progress(h, lambda: flow_fn(home=str(h.root), as_of=as_of, accounts=accounts))
    print_run(out)
    return out


def _with_progress(h: Home, work: Any) -> dict[str, Any]:
    """Run a flow while a rich progress bar shows each account's stream."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flows import engine

    ws = h.load()
    names = {a.account_id: a.email for a in ws.accounts}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def hook(account_id: str, stream: str, done: int, total: int | None) -> None:
            key = f"{account_id}/{stream}"
            if key not in tasks:
                tasks[key] = bar.add_task(
                    f"{names.get(account_id, account_id)} {stream}", total=total or None
                )
            bar.update(tasks[key], completed=done, total=total or None)

        engine.PROGRESS_HOOK = hook
        try:
            return work()
        finally:
            engine.PROGRESS_HOOK = None


def print_run(out: dict[str, Any]) -> None:
    emails = {a.account_id: a.email for a in home().load().accounts} if "home" in STATE else {}
    table = Table(title=f"sync run {out['run_id']}")
    for col in (
        "account",
        "stream",
        "status",
        "mode",
        "landed",
        "deleted",
        "blocked",
        "quarantined",
        "seconds",
    ):
        table.add_column(col)
    for r in out["streams"]:
        table.add_row(
            emails.get(r["account_id"], r["account_id"]),
            r["stream"],
            r["status"] + (f" ({r['error']})" if r.get("error") else ""),
            str(r["mode"]),
            str(r["landed"]),
            str(r["deleted"]),
            str(r["blocked"]),
            str(r["quarantined"]),
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    pub = out["publish"]
    how = pub.get("mode", "full")
    if pub.get("fallback_reason") and how == "full":
        how += f" ({pub['fallback_reason']})"
    steps = {k: v for k, v in pub["timings"].items() if not k.startswith("transform.")}
    console.print(f"published {pub['rows_published']:,} rows, {how} build; seconds {steps}")


# ------------------------------------------------------------------ accounts
@accounts_app.command("add")
def accounts_add(
    provider: Annotated[str, typer.Option(help="google | microsoft")],
    email: Annotated[str, typer.Option(help="Mailbox address.")],
    client_id: Annotated[str, typer.Option()],
    client_secret: Annotated[str, typer.Option()],
    refresh_token: Annotated[str, typer.Option()],
    api_endpoint: Annotated[str | None, typer.Option(help="Google API root URL.")] = None,
    token_uri: Annotated[str | None, typer.Option(help="Google OAuth token URL.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Microsoft tenant.")] = None,
    authority: Annotated[str | None, typer.Option(help="Microsoft authority URL.")] = None,
    graph_endpoint: Annotated[str | None, typer.Option(help="Graph root URL.")] = None,
    alias: Annotated[list[str] | None, typer.Option(help="Extra addresses of this member.")] = None,
    name: Annotated[str | None, typer.Option(help="Member's display name.")] = None,
    member: Annotated[str | None, typer.Option(help="Member email (default: --email).")] = None,
    metadata_only: Annotated[bool, typer.Option(help="Do not store bodies.")] = False,
) -> None:
    """Register an account non-interactively (services, tests). Secrets go to 0600 files."""
    add_account(
        home(),
        provider=provider,
        email=email,
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        api_endpoint=api_endpoint,
        token_uri=token_uri,
        tenant=tenant,
        authority=authority,
        graph_endpoint=graph_endpoint,
        aliases=alias or [],
        name=name,
        member_email=member,
        sync_bodies=not metadata_only,
    )
    console.print(f"account {email.lower()} ({provider}) registered")


def _check_email(value: str, what: str = "address") -> str:
    from transforms.addresses import normalise_address

    norm = value.strip().lower()
    if normalise_address(norm) is None:
        raise WorkspaceError(f"{value!r} is not a valid email {what}")
    return norm


def _check_url(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise WorkspaceError(f"{what} {value!r} must be an http(s) URL")
    return value


def add_account(
    h: Home,
    *,
    provider: str,
    email: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    api_endpoint: str | None = None,
    token_uri: str | None = None,
    tenant: str | None = None,
    authority: str | None = None,
    graph_endpoint: str | None = None,
    aliases: list[str] | None = None,
    name: str | None = None,
    member_email: str | None = None,
    sync_bodies: bool = True,
) -> Account:
    if provider not in ("google", "microsoft"):
        raise WorkspaceError(f"--provider must be google or microsoft, not {provider!r}")
    email = _check_email(email)
    aliases = [_check_email(a, "alias") for a in aliases or []]
    member_email = _check_email(member_email) if member_email else email
    for what, value in (
        ("--client-id", client_id),
        ("--client-secret", client_secret),
        ("--refresh-token", refresh_token),
    ):
        if not value.strip():
            raise WorkspaceError(f"{what} must not be empty")
    _check_url(api_endpoint, "--api-endpoint")
    _check_url(token_uri, "--token-uri")
    _check_url(authority, "--authority")
    _check_url(graph_endpoint, "--graph-endpoint")
    if provider == "microsoft" and not (tenant or authority):
        raise WorkspaceError("--tenant is required for Microsoft accounts")
    account_id = account_id_for(provider, email)
    h.save_credentials(
        account_id,
        {"client_id": client_id, "client_secret": client_secret, "refresh_token": refresh_token},
    )
    with h.editing() as ws:
        mem = next((m for m in ws.members if m.email == member_email), None)
        if mem is None:
            mem = new_member(member_email, name)
            ws.members.append(mem)
        elif name:
            mem.name = name
        existing = next((a for a in ws.accounts if a.account_id == account_id), None)
        if existing is None or existing.status == "removed":
            if existing is not None:
                ws.accounts.remove(existing)
                h.delete_cursors(account_id)  # a re-added account starts a fresh full sync
            existing = Account(
                account_id=account_id,
                member_id=mem.member_id,
                provider=provider,
                email=email,
                connected_at=iso(utcnow()),
            )
            ws.accounts.append(existing)
        existing.aliases = sorted(set(existing.aliases) | set(aliases))
        existing.api_endpoint, existing.token_uri = api_endpoint, token_uri
        existing.tenant, existing.authority = tenant, authority
        existing.graph_endpoint = graph_endpoint
        existing.sync_bodies = sync_bodies
        if existing.status == "disconnected":
            existing.status, existing.status_reason = "active", None
    return existing


connect_app = RapportTyper(no_args_is_help=True, help="Authorise a real account interactively.")
accounts_app.add_typer(connect_app, name="connect")


@connect_app.command("google")
def connect_google_cmd(
    client_id: Annotated[str, typer.Option(help="OAuth client id (Desktop app).")],
    client_secret: Annotated[str, typer.Option(help="OAuth client secret.")],
    email: Annotated[str | None, typer.Option(help="Expected mailbox (checked).")] = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL.")] = False,
    port: Annotated[int, typer.Option(help="Loopback port for the redirect (0 = any).")] = 0,
    api_endpoint: Annotated[str | None, typer.Option()] = None,
    token_uri: Annotated[str | None, typer.Option()] = None,
    auth_uri: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    metadata_only: Annotated[bool, typer.Option(help="Do not store bodies.")] = False,
) -> None:
    """Google OAuth installed-app flow on a loopback redirect; stores the refresh token."""
    from flows.connect import connect_google

    acc = connect_google(
        home(),
        client_id=client_id,
        client_secret=client_secret,
        email=email,
        api_endpoint=api_endpoint,
        token_uri=token_uri,
        auth_uri=auth_uri,
        open_browser=not no_browser,
        port=port,
        name=name,
        sync_bodies=not metadata_only,
        authorization_prompt=lambda url: console.print(f"Open this URL to sign in:\n{url}"),
    )
    console.print(f"connected {acc.email} (google); run `rapport sync`")


@connect_app.command("microsoft")
def connect_microsoft_cmd(
    client_id: Annotated[str, typer.Option(help="App registration (client) id.")],
    client_secret: Annotated[str, typer.Option(help="Client secret of the app.")],
    tenant: Annotated[str | None, typer.Option(help="Tenant id or domain.")] = None,
    authority: Annotated[str | None, typer.Option()] = None,
    graph_endpoint: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    metadata_only: Annotated[bool, typer.Option(help="Do not store bodies.")] = False,
) -> None:
    """msal device-code flow; prints the code to enter, stores the refresh token."""
    from flows.connect import connect_microsoft

    acc = connect_microsoft(
        home(),
        client_id=client_id,
        client_secret=client_secret,
        tenant=tenant,
        authority=authority,
        graph_endpoint=graph_endpoint,
        name=name,
        sync_bodies=not metadata_only,
        on_prompt=lambda flow: console.print(flow["message"]),
    )
    console.print(f"connected {acc.email} (microsoft); run `rapport sync`")


@accounts_app.command("remove")
def accounts_remove(
    email: Annotated[str, typer.Argument(help="Account to remove.")],
    as_of: Annotated[str | None, typer.Option("--as-of")] = None,
) -> None:
    """Purge the account's mail and events, keep its people and companies, recompute."""
    from flows.sync import parse_as_of, remove_account

    parse_as_of(as_of)
    h = home()
    h.load().account_by_email(email)  # a clear error before anything starts
    out = remove_account(home=str(h.root), email=email.strip().lower(), as_of=as_of)
    console.print(
        f"removed {email}: its mail and events are gone, records kept; "
        f"published {out['publish']['rows_published']:,} rows"
    )


@accounts_app.command("reconnect")
def accounts_reconnect(
    email: Annotated[str, typer.Argument(help="Disconnected account.")],
    refresh_token: Annotated[str | None, typer.Option(help="A new refresh token.")] = None,
    client_secret: Annotated[str | None, typer.Option(help="A new client secret.")] = None,
) -> None:
    """Store new credentials and mark the account active; the next sync resumes."""
    h = home()
    with h.editing() as ws:
        acc = ws.account_by_email(email)
        secrets = h.load_credentials(acc.account_id)
        if refresh_token is None and client_secret is None:
            raise WorkspaceError(
                "give --refresh-token (or --client-secret), or re-authorise with "
                f"`rapport accounts connect {acc.provider}`"
            )
        if refresh_token is not None:
            secrets["refresh_token"] = refresh_token
        if client_secret is not None:
            secrets["client_secret"] = client_secret
        h.save_credentials(acc.account_id, secrets)
        acc.status, acc.status_reason, acc.last_error = "active", None, None
    console.print(
        f"{acc.email} reconnected; the next sync resumes from its stored cursor "
        "(or resyncs fully if the cursor expired meanwhile)"
    )


@accounts_app.command("list")
def accounts_list() -> None:
    """Accounts, their status and last sync."""
    ws = home().load()
    table = Table()
    for col in ("email", "provider", "member", "status", "sharing", "last sync", "last error"):
        table.add_column(col)
    for a in ws.accounts:
        table.add_row(
            a.email,
            a.provider,
            ws.member(a.member_id).email,
            a.status,
            a.default_sharing,
            a.last_synced_at or "-",
            a.last_error or "",
        )
    console.print(table)


# ------------------------------------------------------------------ blocklist
def parse_blocklist_entry(entry: str) -> tuple[str, str]:
    """An entry with a local part is an address; `spam.example` or `@spam.example` a domain."""
    raw = entry.strip().lower()
    if not raw:
        raise WorkspaceError("a blocklist entry must not be empty")
    if "@" in raw and not raw.startswith("@"):
        return _check_email(raw, "blocklist address"), "address"
    domain = raw.lstrip("@").strip(".")
    from transforms.addresses import ascii_domain, registrable_domain

    asc = ascii_domain(domain)
    if not asc or registrable_domain(asc) is None and "." not in asc:
        raise WorkspaceError(f"{entry!r} is neither an address nor a domain")
    return asc, "domain"


@blocklist_app.command("add")
def blocklist_add(
    entry: Annotated[str, typer.Argument(help="address or domain")],
    account: Annotated[str, typer.Option(help="Account email.")],
) -> None:
    """Hide mail with this address or domain (any role) from the account."""
    value, kind = parse_blocklist_entry(entry)
    with home().editing() as ws:
        acc = ws.account_by_email(account)
        if any(b.account_id == acc.account_id and b.entry == value for b in ws.blocklist):
            console.print(f"{value} is already blocked for {acc.email}")
            return
        own = {a for m_addrs in ws.member_addresses().values() for a in m_addrs}
        own_domains = {a.split("@")[1] for a in own}
        if (kind == "address" and value in own) or (kind == "domain" and value in own_domains):
            err.print(
                f"[yellow]warning:[/] {value} is the workspace's own "
                f"{'address' if kind == 'address' else 'domain'}; blocking it anyway"
            )
        ws.blocklist.append(BlocklistEntry(acc.account_id, value, kind, iso(utcnow()) or ""))
    console.print(f"blocked {kind} {value} for {acc.email}; applies from the next sync")


@blocklist_app.command("remove")
def blocklist_remove(
    entry: Annotated[str, typer.Argument()],
    account: Annotated[str, typer.Option()],
) -> None:
    """Stop blocking an entry."""
    value, _ = parse_blocklist_entry(entry)
    with home().editing() as ws:
        acc = ws.account_by_email(account)
        before = len(ws.blocklist)
        ws.blocklist = [
            b for b in ws.blocklist if not (b.account_id == acc.account_id and b.entry == value)
        ]
        if len(ws.blocklist) == before:
            raise WorkspaceError(f"{value} is not on the blocklist of {acc.email}")
        if acc.provider == "file":
            note = "re-import the files to bring that mail back (nothing is re-fetched for files)"
        else:
            if acc.account_id not in ws.refetch_blocked:
                ws.refetch_blocked.append(acc.account_id)
            note = "the next sync re-fetches mail that was hidden by it"
    console.print(f"unblocked {value} for {acc.email}; {note}")


@blocklist_app.command("list")
def blocklist_list(account: Annotated[str, typer.Option()]) -> None:
    """Entries of one account's blocklist."""
    ws = home().load()
    acc = ws.account_by_email(account)
    table = Table()
    for col in ("entry", "kind", "added"):
        table.add_column(col)
    for b in ws.blocklist_for(acc.account_id):
        table.add_row(b.entry, b.kind, b.added_at)
    console.print(table)


# ------------------------------------------------------------------ status / sql
@app.command()
def status() -> None:
    """Per-account health: status, last sync, cursor age, last error, counts."""
    from flows.status import account_status

    h = home()
    rows = account_status(h)
    table = Table(title=f"Rapport at {h.root}")
    for col in (
        "account",
        "status",
        "last sync",
        "cursor age",
        "provider total",
        "landed",
        "published",
        "gap",
        "last error",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            *[
                str(r[k]) if r[k] is not None else "-"
                for k in (
                    "email",
                    "status",
                    "last_synced_at",
                    "cursor_age",
                    "provider_total",
                    "landed",
                    "published",
                    "gap",
                    "last_error",
                )
            ]
        )
    console.print(table)


@app.command()
def sql(query: Annotated[str, typer.Argument(help="SQL to run read-only.")]) -> None:
    """Run a read-only query on the published warehouse."""
    import duckdb

    from warehouse.publish import query_readonly

    h = home()
    if not h.warehouse.exists():
        raise WorkspaceError(f"no warehouse at {h.warehouse} yet: run `rapport sync` first")
    try:
        cols, rows = query_readonly(h.warehouse, query)
    except duckdb.Error as exc:
        raise WorkspaceError(f"query failed: {str(exc).splitlines()[0]}") from None
    table = Table()
    for c in cols:
        table.add_column(c)
    for r in rows[:1000]:
        table.add_row(*["" if v is None else str(v) for v in r])
    console.print(table)
    if len(rows) > 1000:
        console.print(f"… {len(rows) - 1000} more rows")


# ------------------------------------------------------------------ backfill
@app.command()
def backfill(
    account: Annotated[list[str] | None, typer.Option("--account", help="Only these.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date: from.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date: until.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Re-fetch even what landed.")] = False,
    as_of: Annotated[str | None, typer.Option("--as-of")] = None,
) -> None:
    """Re-fetch history without moving the incremental cursors; resumable."""
    from flows.sync import backfill as backfill_flow
    from flows.sync import parse_as_of

    for what, value in (("--since", since), ("--until", until), ("--as-of", as_of)):
        if value:
            try:
                parse_as_of(value)
            except WorkspaceError:
                raise WorkspaceError(f"{what} {value!r} is not an ISO 8601 date") from None
    h = home()
    ws = h.load()
    for email in account or []:
        ws.account_by_email(email)
    out = _with_progress(
        h,
        lambda: backfill_flow(
            home=str(h.root), accounts=account, since=since, until=until, full=full, as_of=as_of
        ),
    )
    print_run(out)


# ------------------------------------------------------------------ import
@app.command("import")
def import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="mbox, .eml, folder of .eml, or .ics")],
    account: Annotated[str, typer.Option(help="Mailbox the files belong to.")],
    alias: Annotated[list[str] | None, typer.Option(help="Other addresses of this member.")] = None,
    name: Annotated[str | None, typer.Option(help="Member's display name.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO 8601 time for metrics.")] = None,
) -> None:
    """Backfill from Google Takeout / Outlook exports; lands and publishes like a sync."""
    from connectors.files import detect_kind
    from flows.sync import import_files, parse_as_of

    parse_as_of(as_of)
    for p in paths:
        try:
            detect_kind(p)
        except ValueError as exc:
            raise WorkspaceError(str(exc)) from None
    h = home()
    email = _check_email(account)
    aliases = [_check_email(a, "alias") for a in alias or []]
    with h.editing() as ws:
        existing = next(
            (a for a in ws.accounts if a.email == email and a.status != "removed"), None
        )
        if existing is None:
            mem = next((m for m in ws.members if m.email == email), None)
            if mem is None:
                mem = new_member(email, name)
                ws.members.append(mem)
            existing = Account(
                account_id=account_id_for("file", email),
                member_id=mem.member_id,
                provider="file",
                email=email,
                connected_at=iso(utcnow()),
            )
            ws.accounts = [a for a in ws.accounts if a.account_id != existing.account_id]
            ws.accounts.append(existing)
        existing.aliases = sorted(set(existing.aliases) | set(aliases))
        if name:
            ws.member(existing.member_id).name = name
    out = _with_progress(
        h,
        lambda: import_files(
            home=str(h.root), account=email, paths=[str(p) for p in paths], as_of=as_of
        ),
    )
    print_run(out)
    if out.get("skipped"):
        console.print(f"{out['skipped']} items were already imported and were skipped")


# ------------------------------------------------------------------ settings
def parse_time(value: str | None, what: str = "--at") -> str:
    from flows.sync import parse_as_of

    try:
        return iso(parse_as_of(value)) or ""
    except WorkspaceError:
        raise WorkspaceError(f"{what} {value!r} is not an ISO 8601 timestamp") from None


@settings_set_app.command("enhanced-record-creation")
def settings_erc(
    state: Annotated[str, typer.Argument(help="on | off")],
    at: Annotated[str | None, typer.Option("--at", help="ISO 8601 time of the switch.")] = None,
) -> None:
    """Enhanced record creation: when off, received mail from then on creates people too."""
    if state not in ("on", "off"):
        raise WorkspaceError(f"enhanced-record-creation takes on or off, not {state!r}")
    when = parse_time(at)
    with home().editing() as ws:
        if ws.enhanced_record_creation and when < ws.enhanced_record_creation[-1]["at"]:
            raise WorkspaceError("--at is earlier than the previous toggle; toggles only move on")
        ws.enhanced_record_creation.append({"enabled": state == "on", "at": when})
    console.print(f"enhanced record creation {state} from {when} (not retroactive)")


@settings_set_app.command("company-domain")
def settings_company_domain(
    extra: Annotated[str, typer.Argument(help="Extra domain, e.g. acme.io")],
    company: Annotated[str, typer.Argument(help="The company's domain, e.g. acme.com")],
) -> None:
    """Make an extra domain part of an existing company (never inferred)."""
    from transforms.addresses import ascii_domain, registrable_domain

    extra_d, company_d = (registrable_domain(ascii_domain(d.strip("@ "))) for d in (extra, company))
    if not extra_d or not company_d:
        raise WorkspaceError("both arguments must be registrable domains such as acme.com")
    with home().editing() as ws:
        ws.company_domains[extra_d] = company_d
    console.print(f"{extra_d} now joins the company of {company_d} from the next sync")


@settings_set_app.command("list-mail-creates-people")
def settings_list_mail(state: Annotated[str, typer.Argument(help="on | off")]) -> None:
    """Whether mailing-list traffic may create people (default off)."""
    if state not in ("on", "off"):
        raise WorkspaceError(f"takes on or off, not {state!r}")
    with home().editing() as ws:
        ws.exclude_list_mail = state == "off"
    console.print(f"list mail creates people: {state}")


@settings_set_app.command("extra-free-mail")
def settings_free_mail(domains: Annotated[list[str], typer.Argument()]) -> None:
    """Add domains to treat as free mail (never a company)."""
    with home().editing() as ws:
        ws.extra_free_mail_domains = sorted(
            set(ws.extra_free_mail_domains) | {d.strip("@ ").lower() for d in domains}
        )
    console.print(f"extra free-mail domains: {', '.join(home().load().extra_free_mail_domains)}")


@settings_app.command("show")
def settings_show() -> None:
    """Print every workspace setting."""
    ws = home().load()
    console.print(
        f"enhanced record creation: {'on' if ws.erc_enabled() else 'off'} "
        f"(toggles: {ws.enhanced_record_creation or 'none'})"
    )
    console.print(f"list mail creates people: {'off' if ws.exclude_list_mail else 'on'}")
    console.print(f"company domains: {ws.company_domains or 'none'}")
    console.print(f"extra free-mail domains: {ws.extra_free_mail_domains or 'none'}")


# ------------------------------------------------------------------ sharing
@sharing_app.command("set")
def sharing_set(
    level: Annotated[str, typer.Argument(help="metadata | subject | full")],
    account: Annotated[str, typer.Option(help="Account email.")],
) -> None:
    """What teammates see of this account's mail by default."""
    if level not in SHARING_LEVELS:
        raise WorkspaceError(f"sharing level must be one of {', '.join(SHARING_LEVELS)}")
    with home().editing() as ws:
        acc = ws.account_by_email(account)
        acc.default_sharing = level
    console.print(f"{acc.email}: teammates see {level}; applies at the next publish")


@sharing_app.command("grant")
def sharing_grant(
    account: Annotated[str, typer.Option(help="Account email.")],
    to: Annotated[str, typer.Option("--to", help="Member who gets full access.")],
) -> None:
    """Give one teammate full access to this account's mail."""
    with home().editing() as ws:
        acc = ws.account_by_email(account)
        member = to.strip().lower()
        if member not in {m.email for m in ws.members}:
            raise WorkspaceError(f"{to!r} is not a member of this workspace")
        if member not in acc.grants:
            acc.grants.append(member)
    console.print(f"{member} has full access to {acc.email}")


@sharing_app.command("revoke")
def sharing_revoke(
    account: Annotated[str, typer.Option(help="Account email.")],
    to: Annotated[str, typer.Option("--to", help="Member to revoke.")],
) -> None:
    """Take a teammate's individual full access away."""
    with home().editing() as ws:
        acc = ws.account_by_email(account)
        member = to.strip().lower()
        if member not in acc.grants:
            raise WorkspaceError(f"{member} has no grant on {acc.email}")
        acc.grants.remove(member)
    console.print(f"{member} no longer has full access to {acc.email}")


@app.command()
def compact() -> None:
    """Fold every account's delta files into current-state files (syncs do this at 200)."""
    from flows.engine import compact_lake

    h = home()
    with h.lock("writer", timeout_s=600):
        done = compact_lake(h, min_files=0)
    console.print(f"compacted {len(done)} accounts ({sum(done.values()):,} current rows kept)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (same as `make bench`); options pass through, e.g. --messages 100k."""
    try:
        from benchmarks.run import main as bench_main
    except ImportError as exc:
        raise WorkspaceError(
            f"benchmarks need the bench extra: pip install -e '.[bench]' ({exc})"
        ) from None
    raise typer.Exit(bench_main(list(ctx.args)))


@app.command()
def demo(
    messages: Annotated[int, typer.Option(help="Messages in the synthetic workspace.")] = 5000,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Generate a workspace, serve it from the simulators, sync it, show what was built."""
    from flows.demo import run_demo
    from flows.sync import prewarm_quality_gate

    if messages < 100:
        raise WorkspaceError("--messages must be at least 100")
    # Great Expectations takes ~2 s to import; the simulators' set-up and a local sync
    # are quicker than that, so the import starts before them, not with the flow.
    prewarm_quality_gate()
    run_demo(home(), messages=messages, seed=seed, console=console)


def main() -> None:
    try:
        app()
    except WorkspaceError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-published (run again to resume)")
        sys.exit(130)


if __name__ == "__main__":
    main()
