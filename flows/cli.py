"""The `rapport` command line. Every bad input gets one clear line and a non-zero exit."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.workspace import (
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
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Rapport: mailbox and calendar sync into queryable CRM tables.",
)
accounts_app = typer.Typer(no_args_is_help=True, help="Connect and manage mail accounts.")
blocklist_app = typer.Typer(no_args_is_help=True, help="Per-account blocklists.")
app.add_typer(accounts_app, name="accounts")
app.add_typer(blocklist_app, name="blocklist")

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


def configure_prefect(h: Home) -> None:
    """Local, quiet, telemetry-free Prefect; a temporary local API unless one is configured."""
    os.environ.setdefault("PREFECT_HOME", str(h.state / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")


# ------------------------------------------------------------------ sync
@app.command()
def sync(
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO 8601 time for metrics.")] = None,
    account: Annotated[list[str] | None, typer.Option("--account", help="Only these.")] = None,
) -> None:
    """Extract every account, transform, validate and publish."""
    from flows.sync import parse_as_of

    parse_as_of(as_of)  # validate before starting anything
    h = home()
    if not h.load().active_accounts():
        raise WorkspaceError("no accounts yet: add one with `rapport accounts add`")
    run_sync(h, as_of, account)


def run_sync(h: Home, as_of: str | None, accounts: list[str] | None = None) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flows import engine
    from flows.sync import sync_workspace

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
            out = sync_workspace(home=str(h.root), as_of=as_of, accounts=accounts)
        finally:
            engine.PROGRESS_HOOK = None
    print_run(out)
    return out


def print_run(out: dict[str, Any]) -> None:
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
            r["account_id"],
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
    console.print(f"published {pub['rows_published']:,} rows; timings {pub['timings']}")


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
    console.print(f"unblocked {value} for {acc.email}")


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


@app.command()
def demo(
    messages: Annotated[int, typer.Option(help="Messages in the synthetic workspace.")] = 5000,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Generate a workspace, serve it from the simulators, sync it, show what was built."""
    from flows.demo import run_demo

    if messages < 100:
        raise WorkspaceError("--messages must be at least 100")
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
