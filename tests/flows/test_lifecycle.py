"""Blocklist lifecycle, file import through the CLI, and mixed-provider disconnects."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
from typer.testing import CliRunner

from connectors import lake
from connectors.simulators.google import GoogleSimulator
from connectors.simulators.microsoft import MicrosoftSimulator
from flows.cli import app
from flows.workspace import Home
from tests.mailbox import connect, connect_microsoft, run_pipeline, sim_mail

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"
DATA = Path(__file__).parents[1] / "data"


def cli(home: Home, *args: str):
    return CliRunner().invoke(app, ["--home", str(home.root), *args])


def rows(home: Home, sql: str) -> list[tuple]:
    con = duckdb.connect(str(home.warehouse), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def lake_bytes(home: Home) -> bytes:
    out = b""
    for table in ("messages", "participants"):
        for path in lake.glob(home.lake, table):
            out += Path(path).read_bytes()
    return out


def test_blocklist_add_is_retroactive_and_remove_refetches(tmp_path):
    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        connect(home, sim, ALICE)
        sim.mailbox(ALICE).add_messages(
            [
                sim_mail(
                    1, f"<{ALICE}>", ["vip@rival.com"], labels=["SENT"], subject="secret-plan"
                ),
                sim_mail(2, f"<{ALICE}>", ["buyer@globex.com"], labels=["SENT"]),
            ]
        )
        run_pipeline(home)
        people_before = rows(home, "SELECT person_id FROM people ORDER BY 1")
        assert len(people_before) == 2

        out = cli(home, "blocklist", "add", "--account", ALICE, "rival.com")
        assert out.exit_code == 0, out.output
        run_pipeline(home)
        assert rows(home, "SELECT count(*) FROM messages")[0][0] == 1
        # purged from the lake, not just hidden; the person record stays
        assert b"vip@rival.com" not in lake_bytes(home)
        assert b"secret-plan" not in lake_bytes(home)
        assert rows(home, "SELECT person_id FROM people ORDER BY 1") == people_before

        # rival.com writes again: only a marker lands, and the publish stays incremental
        sim.mailbox(ALICE).add_messages(
            [sim_mail(3, "<ceo@rival.com>", [ALICE], subject="secret-offer")]
        )
        _, again = run_pipeline(home)
        assert again.mode == "incremental", again.fallback_reason
        assert again.stats["threads_blocked"] == 1
        assert rows(home, "SELECT count(*) FROM messages")[0][0] == 1
        assert b"secret-offer" not in lake_bytes(home)

        out = cli(home, "blocklist", "remove", "--account", ALICE, "rival.com")
        assert out.exit_code == 0 and "re-fetches" in out.output
        sim.clear_requests()
        run_pipeline(home)
        assert rows(home, "SELECT count(*) FROM messages")[0][0] == 3  # 1 and 3 come back
        assert any(r.in_batch for r in sim.requests), "the purged mail was fetched again"
        assert rows(home, "SELECT subject FROM messages WHERE subject = 'secret-plan'")


def test_blocking_your_own_domain_warns_and_proceeds(tmp_path):
    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        connect(home, sim, ALICE)
        connect(home, sim, BOB)
        out = CliRunner().invoke(
            app, ["--home", str(home.root), "blocklist", "add", "--account", ALICE, BOB]
        )
        assert out.exit_code == 0
        assert "warning" in out.output and "blocking it anyway" in out.output
        assert [b.entry for b in home.load().blocklist] == [BOB]
        bad = cli(home, "blocklist", "add", "--account", ALICE, "")
        assert bad.exit_code == 2 and "must not be empty" in bad.output
        unknown = cli(home, "blocklist", "add", "--account", "nobody@x.com", "a.com")
        assert unknown.exit_code == 2 and "no account" in unknown.output


def test_import_through_the_cli_publishes_and_is_idempotent(tmp_path):
    home = Home(tmp_path / "data")
    args = [
        "import",
        "--account",
        "owner@example.com",
        "--name",
        "Owner",
        "--as-of",
        "2026-06-01T00:00:00+00:00",
        str(DATA / "import.mbox"),
        str(DATA / "eml"),
        str(DATA / "calendar.ics"),
    ]
    first = cli(home, *args)
    assert first.exit_code == 0, first.output
    n_messages = rows(home, "SELECT count(*) FROM messages")[0][0]
    n_events = rows(home, "SELECT count(*) FROM events")[0][0]
    assert n_messages > 0 and n_events > 0
    assert rows(home, "SELECT provider FROM accounts") == [("file",)]
    files_before = sorted(lake.glob(home.lake, "messages"))
    second = cli(home, *args)
    assert second.exit_code == 0, second.output
    assert sorted(lake.glob(home.lake, "messages")) == files_before  # nothing new landed
    assert rows(home, "SELECT count(*) FROM messages")[0][0] == n_messages
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    bad = cli(home, "import", "--account", "owner@example.com", str(bogus))
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_bad_cli_input_gets_one_line_and_a_nonzero_exit(tmp_path):
    home = Home(tmp_path / "data")
    cases = [
        ["sync", "--as-of", "yesterday"],
        [
            "accounts",
            "add",
            "--provider",
            "yahoo",
            "--email",
            "a@b.com",
            "--client-id",
            "x",
            "--client-secret",
            "y",
            "--refresh-token",
            "z",
        ],
        [
            "accounts",
            "add",
            "--provider",
            "google",
            "--email",
            "not-an-email",
            "--client-id",
            "x",
            "--client-secret",
            "y",
            "--refresh-token",
            "z",
        ],
        ["sql", "SELECT 1"],
        ["settings", "set", "enhanced-record-creation", "maybe"],
        ["sharing", "set", "--account", "a@b.com", "everything"],
    ]
    for args in cases:
        out = cli(home, *args)
        assert out.exit_code != 0, args
        assert "Traceback" not in out.output
        assert len([line for line in out.output.splitlines() if line.strip()]) <= 3, out.output


def test_microsoft_disconnect_while_google_keeps_syncing(tmp_path):
    carol = "carol@acme-team.io"
    with GoogleSimulator() as gsim, MicrosoftSimulator() as msim:
        home = Home(tmp_path / "data")
        connect(home, gsim, ALICE)
        gsim.mailbox(ALICE).add_messages(
            [sim_mail(1, f"<{ALICE}>", ["x@globex.com"], labels=["SENT"])]
        )
        box = connect_microsoft(home, msim, carol)
        box.add_message(sim_mail(2, f"<{carol}>", ["y@initech.com"], labels=["SENT"]))
        results, _ = run_pipeline(home)
        assert {(r.stream, r.status) for r in results} == {
            ("gmail", "ok"),
            ("gcalendar", "ok"),
            ("outlook_mail", "ok"),
            ("outlook_calendar", "ok"),
        }
        msim.revoke_refresh_token(carol)
        gsim.mailbox(ALICE).add_messages(
            [sim_mail(3, f"<{ALICE}>", ["z@globex.com"], labels=["SENT"])]
        )
        results, _ = run_pipeline(home)
        status = {r.stream: r.status for r in results}
        assert status["outlook_mail"] == "disconnected"
        assert status["gmail"] == "ok"
        assert home.load().account_by_email(carol).status == "disconnected"
        assert rows(home, "SELECT count(*) FROM messages")[0][0] == 3
        people = pl.DataFrame(
            rows(home, "SELECT primary_email FROM people"), schema=["e"], orient="row"
        )["e"].to_list()
        assert sorted(people) == ["x@globex.com", "y@initech.com", "z@globex.com"]
