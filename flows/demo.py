"""`rapport demo`: a synthetic workspace served by the local simulators, synced for real.

First run: generate ~5,000 messages for three members, serve them from the Gmail
simulator on 127.0.0.1, register the accounts, run the sync flow, print a summary.
Later runs: reload the simulator's saved mailboxes (same history ids), add new mail,
and run an incremental sync through history.list.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from flows.workspace import Home, atomic_write_json

DEMO_CLIENT_ID = "rapport-demo"
DEMO_CLIENT_SECRET = "demo-client-secret"
DEMO_END = datetime(2026, 12, 1, tzinfo=UTC)

EXAMPLE_QUERIES = {
    "Companies you are closest to": """
SELECT c.name, m.strongest_connection_member AS who, m.strongest_connection_strength AS strength,
       m.last_interaction_at::DATE AS last_contact, m.emails_90d
FROM companies c JOIN company_metrics m USING (company_id)
WHERE m.strongest_connection_strength IS NOT NULL
ORDER BY m.strongest_connection_score DESC LIMIT 5""",
    "People nobody has written to in 90 days": """
SELECT p.name, p.primary_email, c.name AS company, m.last_interaction_at::DATE AS last_contact
FROM people p JOIN person_metrics m USING (person_id) LEFT JOIN companies c USING (company_id)
WHERE m.last_interaction_at < now() - INTERVAL 90 DAY AND p.name IS NOT NULL
ORDER BY m.emails_365d DESC, m.last_interaction_at DESC LIMIT 5""",
}


# Each later demo run stars this many of every Gmail member's latest messages.
DEMO_STARRED = 5


def refresh_token_for(email: str) -> str:
    return f"demo-refresh-{email.split('@')[0]}"


DEMO_TENANT = "rapport-demo"


def _start_microsoft(state: Any, port: int | None) -> Any:
    """Reload the Graph simulator on its old port so stored deltaLinks stay valid."""
    from connectors.simulators.microsoft import MicrosoftSimulator

    if state is None:
        return MicrosoftSimulator().start()
    try:
        return MicrosoftSimulator.load_state(str(state), port=port or 0).start()
    except OSError:
        return MicrosoftSimulator.load_state(str(state)).start()


def run_demo(h: Home, *, messages: int, seed: int, console: Console) -> dict[str, Any]:
    """Generate (or grow) the demo workspace, serve it, sync it, print what was built."""
    from connectors.simulators.gcalendar import calendar_store
    from connectors.simulators.google import GoogleSimulator
    from connectors.simulators.synthetic import (
        generate_delta,
        generate_workspace,
        to_sim_events,
        to_sim_messages,
    )
    from flows.cli import add_account, run_sync

    h.ensure()
    demo_dir = h.root / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    google_state = demo_dir / "google-simulator.pkl"
    ms_state = demo_dir / "microsoft-simulator.pkl"
    meta_path = demo_dir / "demo.json"
    started = time.perf_counter()

    base = generate_workspace(messages, seed=seed, end=DEMO_END)
    google_members, ms_member = base.members[:-1], base.members[-1]
    resumed = google_state.exists() and ms_state.exists() and meta_path.exists()
    meta = json.loads(meta_path.read_text()) if resumed else {}
    if resumed:
        generation = meta["generation"] + 1
        since = datetime.fromisoformat(meta["data_until"])
        until = since + timedelta(days=2)
        delta = generate_delta(
            base, max(50, messages // 50), seed=seed + generation, start=since, end=until
        )
        google = GoogleSimulator.load_state(google_state)
        microsoft = _start_microsoft(ms_state, meta.get("microsoft_port"))
        starred = deleted = 0
        for member in google_members:
            gmail = google.mailbox(member.email)
            # What users do between syncs besides receiving mail: star the latest few
            # (Gmail re-sends them, unchanged but for a label) and delete an old one.
            by_date = sorted(gmail.messages.values(), key=lambda m: (m.internal_date_ms, m.id))
            for msg in by_date[-DEMO_STARRED:]:
                if "STARRED" not in msg.label_ids:
                    gmail.modify_labels(msg.id, add=["STARRED"])
                    starred += 1
            if len(by_date) > DEMO_STARRED:
                gmail.delete_message(by_date[generation % (len(by_date) - DEMO_STARRED)].id)
                deleted += 1
            gmail.add_messages(to_sim_messages(delta, member.email))
        box = microsoft.mailbox(ms_member.email)
        for msg in to_sim_messages(delta, ms_member.email):
            box.add_message(msg)
        console.print(
            f"[bold]demo run {generation}[/]: {delta.messages.height} new messages "
            f"added to the simulators, {starred} starred and {deleted} deleted in Gmail; "
            "syncing incrementally (Gmail history.list, Graph deltaLinks, Calendar syncTokens)"
        )
        data_until = until
    else:
        generation = 1
        google = GoogleSimulator()
        microsoft = _start_microsoft(None, None)
        for member in google_members:
            box = google.add_user(
                member.email,
                aliases=list(member.aliases),
                refresh_token=refresh_token_for(member.email),
                client_id=DEMO_CLIENT_ID,
                client_secret=DEMO_CLIENT_SECRET,
            )
            box.add_messages(to_sim_messages(base, member.email))
            cal = calendar_store(google, member.email)
            for ev in to_sim_events(base, member.email):
                cal.add_event(ev)
        mbox = microsoft.add_user(
            ms_member.email,
            tenant=DEMO_TENANT,
            aliases=list(ms_member.aliases),
            refresh_token=refresh_token_for(ms_member.email),
            client_id=DEMO_CLIENT_ID,
            client_secret=DEMO_CLIENT_SECRET,
            display_name=ms_member.name,
        )
        for msg in to_sim_messages(base, ms_member.email):
            mbox.add_message(msg)
        for ev in to_sim_events(base, ms_member.email):
            mbox.add_event(ev)
        console.print(
            f"[bold]demo run 1[/]: {base.messages.height:,} messages and "
            f"{base.events.height:,} calendar entries for {len(base.members)} members "
            f"generated (seed {seed}); {len(google_members)} on Google, "
            f"{ms_member.email} on Microsoft 365; full sync"
        )
        data_until = DEMO_END

    google.start()
    try:
        console.print(
            f"Google simulator (Gmail + Calendar) on {google.root_url}; "
            f"Microsoft simulator (login + Graph) on {microsoft.base_url}"
        )
        for member in google_members:
            add_account(
                h,
                provider="google",
                email=member.email,
                client_id=DEMO_CLIENT_ID,
                client_secret=DEMO_CLIENT_SECRET,
                refresh_token=refresh_token_for(member.email),
                api_endpoint=google.root_url,
                token_uri=google.token_uri,
                aliases=list(member.aliases),
                name=member.name,
            )
        add_account(
            h,
            provider="microsoft",
            email=ms_member.email,
            client_id=DEMO_CLIENT_ID,
            client_secret=DEMO_CLIENT_SECRET,
            refresh_token=refresh_token_for(ms_member.email),
            tenant=DEMO_TENANT,
            authority=microsoft.authority_url(DEMO_TENANT),
            graph_endpoint=microsoft.graph_url,
            aliases=list(ms_member.aliases),
            name=ms_member.name,
        )
        if resumed and microsoft.port != meta.get("microsoft_port"):
            # Its old deltaLinks point at a port we could not get back: resync it.
            from flows.workspace import account_id_for

            h.delete_cursors(account_id_for("microsoft", ms_member.email))
        out = run_sync(h, as_of=None)
        google.save_state(google_state)
        microsoft.save_state(str(ms_state))
        port = microsoft.port
    finally:
        google.stop()
        microsoft.stop()
    atomic_write_json(
        meta_path,
        {
            "generation": generation,
            "data_until": data_until.isoformat(),
            "seed": seed,
            "messages": messages,
            "microsoft_port": port,
        },
    )
    print_summary(h, console)
    console.print(
        f"demo wall time {time.perf_counter() - started:.1f}s. "
        "Run `make demo` again to add new mail and sync incrementally."
    )
    return out


def print_summary(h: Home, console: Console) -> None:
    from warehouse.publish import query_readonly

    wh = h.warehouse
    _, counts = query_readonly(
        wh,
        """
        SELECT 'members', count(*) FROM members UNION ALL
        SELECT 'accounts', count(*) FROM accounts UNION ALL
        SELECT 'messages', count(*) FROM messages UNION ALL
        SELECT 'people', count(*) FROM people UNION ALL
        SELECT 'companies', count(*) FROM companies UNION ALL
        SELECT 'interactions', count(*) FROM interactions UNION ALL
        SELECT 'connections', count(*) FROM connections UNION ALL
        SELECT 'quarantined', count(*) FROM quarantine""",
    )
    table = Table(title=f"What was built ({wh})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts:
        table.add_row(name, f"{n:,}")
    console.print(table)
    show(
        console,
        "Top companies by last interaction",
        *query_readonly(
            wh,
            """
        SELECT c.name, list_first(c.domains) AS domain, m.last_interaction_at::DATE AS last,
               m.last_interaction_member AS by_member, m.strongest_connection_strength AS strength
        FROM companies c JOIN company_metrics m USING (company_id)
        ORDER BY m.last_interaction_at DESC NULLS LAST, c.name LIMIT 8""",
        ),
    )
    show(
        console,
        "Top people by last interaction",
        *query_readonly(
            wh,
            """
        SELECT p.name, p.primary_email, c.name AS company, m.last_interaction_at::DATE AS last,
               m.last_interaction_kind AS kind, m.emails_90d
        FROM people p JOIN person_metrics m USING (person_id)
        LEFT JOIN companies c USING (company_id)
        ORDER BY m.last_interaction_at DESC NULLS LAST, p.primary_email LIMIT 8""",
        ),
    )
    for title, sql in EXAMPLE_QUERIES.items():
        one_line = " ".join(sql.split())
        console.print(f'\n[bold]Example query — {title}[/]\n[dim]rapport sql "{one_line}"[/]')
        show(console, title, *query_readonly(wh, sql))


def show(console: Console, title: str, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*["" if v is None else str(v) for v in r])
    console.print(table)
