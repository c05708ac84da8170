"""Check that benchmarks.land writes what the real connectors write.

`python -m benchmarks.verify [--messages N]` serves a small synthetic workspace from the
Google simulator, syncs it with GmailSync and CalendarSync into one lake, lands the same
workspace with `land_workspace` into another, and compares every table row for row
(ignoring version, seq, fetched_at and file layout). Exit status 0 when they agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from benchmarks.land import land_workspace, workspace_state
from connectors import lake

SKIP = {"version", "seq", "fetched_at"}
KEYS = {
    "messages": ["account_id", "message_id"],
    "participants": ["account_id", "message_id"],
    "events": ["account_id", "event_id"],
    "attendees": ["account_id", "event_id"],
}


def read_lake(lake_dir: Path, table: str) -> pl.DataFrame:
    files = lake.glob(lake_dir, table)
    if not files:
        return pl.from_arrow(lake.TABLES[table].empty_table())
    frame = pl.read_parquet(files, hive_partitioning=False)
    return frame.drop([c for c in frame.columns if c in SKIP])


def sync_through_simulator(ws, lake_dir: Path, accounts: dict[str, str]) -> None:  # noqa: ANN001
    from connectors.gcalendar import CalendarSync
    from connectors.gmail import GmailSettings, GmailSync
    from connectors.mailparse import Blocklist
    from connectors.simulators.gcalendar import calendar_store
    from connectors.simulators.google import GoogleSimulator
    from connectors.simulators.synthetic import to_sim_events, to_sim_messages

    sim = GoogleSimulator()
    for m in ws.members:
        token = f"rt-{m.email}"
        box = sim.add_user(m.email, aliases=list(m.aliases), refresh_token=token)
        box.add_messages(to_sim_messages(ws, m.email))
        cal = calendar_store(sim, m.email)
        for ev in to_sim_events(ws, m.email):
            cal.add_event(ev)
    with sim:
        for m in ws.members:
            secrets = {
                "refresh_token": f"rt-{m.email}",
                "client_id": "rapport-test",
                "client_secret": "secret",
            }
            settings = GmailSettings(
                api_endpoint=sim.root_url, token_uri=sim.token_uri, quota_units_per_second=None
            )
            common = dict(
                lake_dir=lake_dir,
                account_id=accounts[m.email],
                secrets=secrets,
                settings=settings,
                blocklist=Blocklist([]),
            )
            GmailSync(**common).run(None)
            CalendarSync(**common).run(None)


def compare(a: pl.DataFrame, b: pl.DataFrame, table: str) -> list[str]:
    problems: list[str] = []
    if a.height != b.height:
        problems.append(f"{table}: {a.height} rows from the connector, {b.height} landed")
    cols = [c for c in a.columns if c in b.columns]
    sortable = [c for c in cols if not isinstance(a.schema[c], pl.List)]
    a = a.select(cols).sort(sortable, nulls_last=True)
    b = b.select(cols).sort(sortable, nulls_last=True)
    if a.height == b.height:
        for c in cols:
            if not a[c].equals(b[c]):
                bad = (a[c].cast(pl.String) != b[c].cast(pl.String)).fill_null(True)
                sample = pl.concat(
                    [
                        a.filter(bad).select(KEYS[table] + [c]).head(3),
                        b.filter(bad).select(KEYS[table] + [c]).head(3),
                    ]
                )
                problems.append(f"{table}.{c} differs:\n{sample}")
    return problems


def order_check(a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    """Participants of a message must come in header order (From, To, Cc, Bcc, Reply-To)."""

    def seq(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.group_by("account_id", "message_id", maintain_order=True).agg(
            order=pl.concat_str("role", pl.lit(":"), "address")
        )

    joined = seq(a).join(seq(b), on=["account_id", "message_id"], suffix="_landed")
    bad = joined.filter(pl.col("order") != pl.col("order_landed"))
    return [f"participant order differs for {bad.height} messages"] if bad.height else []


def main(argv: list[str] | None = None) -> int:
    from connectors.simulators.synthetic import generate_workspace

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=600)
    args = ap.parse_args(argv)
    ws = generate_workspace(args.messages, n_events=max(60, args.messages // 25))
    now = datetime.now(UTC)
    _, accounts = workspace_state(ws, now)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rapport-verify-") as tmp:
        real, fast = Path(tmp) / "real", Path(tmp) / "fast"
        sync_through_simulator(ws, real, accounts)
        land_workspace(ws, fast, accounts, now=now, chunk_rows=max(1, args.messages // 7))
        for table in KEYS:
            a, b = read_lake(real, table), read_lake(fast, table)
            problems += compare(a, b, table)
            print(f"{table}: connector {a.height} rows, land_workspace {b.height} rows")
        problems += order_check(read_lake(real, "participants"), read_lake(fast, "participants"))
    for p in problems:
        print("MISMATCH", p)
    print("OK: land_workspace matches the connectors" if not problems else "DIFFERENT")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
