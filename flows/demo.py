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


def refresh_token_for(email: str) -> str:
    return f"demo-refresh-{email.split('@')[0]}"


def run_demo(h: Home, *, messages: int, seed: int, console: Console) -> dict[str, Any]:
    from connectors.simulators.google import GoogleSimulator
    from connectors.simulators.synthetic import (
        generate_delta,
        generate_workspace,
        to_sim_messages,
    )
    from flows.cli import add_account, run_sync

    h.ensure()
    demo_dir = h.root / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    sim_state = demo_dir / "google-simulator.pkl"
    meta_path = demo_dir / "demo.json"
    started = time.perf_counter()

    base = generate_workspace(messages, seed=seed, end=DEMO_END)
    if sim_state.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        generation = meta["generation"] + 1
        since = datetime.fromisoformat(meta["data_until"])
        until = since + timedelta(days=2)
        new_mail = max(50, messages // 50)
        delta = generate_delta(base, new_mail, seed=seed + generation, start=since, end=until)
        sim = GoogleSimulator.load_state(sim_state)
        for member in base.members:
            sim.mailbox(member.email).add_messages(to_sim_messages(delta, member.email))
        console.print(
            f"[bold]demo run {generation}[/]: {delta.messages.height} new messages "
            "added to the simulator; syncing incrementally (history.list)"
        )
        data_until = until
    else:
        generation = 1
        sim = GoogleSimulator()
        for member in base.members:
            box = sim.add_user(
                member.email,
                aliases=list(member.aliases),
                refresh_token=refresh_token_for(member.email),
                client_id=DEMO_CLIENT_ID,
                client_secret=DEMO_CLIENT_SECRET,
            )
            box.add_messages(to_sim_messages(base, member.email))
        console.print(
            f"[bold]demo run 1[/]: {base.messages.height:,} messages for "
            f"{len(base.members)} members generated (seed {seed}); full sync"
        )
        data_until = DEMO_END

    sim.start()
    try:
        console.print(f"Gmail simulator listening on {sim.root_url}")
        for member in base.members:
            add_account(
                h,
                provider="google",
                email=member.email,
                client_id=DEMO_CLIENT_ID,
                client_secret=DEMO_CLIENT_SECRET,
                refresh_token=refresh_token_for(member.email),
                api_endpoint=sim.root_url,
                token_uri=sim.token_uri,
                aliases=list(member.aliases),
                name=member.name,
            )
        out = run_sync(h, as_of=None)
        sim.save_state(sim_state)
    finally:
        sim.stop()
    atomic_write_json(
        meta_path,
        {
            "generation": generation,
            "data_until": data_until.isoformat(),
            "seed": seed,
            "messages": messages,
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
