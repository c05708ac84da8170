"""Tokens never reach logs, Parquet or DuckDB; credentials are 0600; `sql` is read-only."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from connectors.simulators.google import GoogleSimulator
from flows.cli import add_account, app
from flows.workspace import Home
from tests.mailbox import run_pipeline, sim_mail

EMAIL = "dana@acme-team.io"
REFRESH = "rt-Zq8-unique-refresh-token-4471"
SECRET = "cs-unique-client-secret-9921"


def test_no_secret_or_token_outside_the_credential_file(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with GoogleSimulator() as sim:
        sim.add_user(EMAIL, refresh_token=REFRESH, client_id="cid", client_secret=SECRET)
        sim.mailbox(EMAIL).add_messages(
            [sim_mail(k, f"<{EMAIL}>", ["x@globex.com"], labels=["SENT"]) for k in range(1, 6)]
        )
        home = Home(tmp_path / "data")
        add_account(
            home,
            provider="google",
            email=EMAIL,
            client_id="cid",
            client_secret=SECRET,
            refresh_token=REFRESH,
            api_endpoint=sim.root_url,
            token_uri=sim.token_uri,
        )
        sim.inject_fault("500", count=1)  # error paths log too
        run_pipeline(home)
        access_tokens = list(sim._access_tokens)  # what the provider handed out
    assert access_tokens
    cred = home.credential_path(home.load().accounts[0].account_id)
    assert stat.S_IMODE(os.stat(cred).st_mode) == 0o600
    assert REFRESH in cred.read_text()
    needles = [REFRESH, SECRET, *access_tokens]
    for path in Path(home.root).rglob("*"):
        if path.is_file() and path != cred and "prefect" not in path.parts:
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle[:6]}… leaked into {path}"
    for needle in needles:
        assert needle not in caplog.text


def test_sql_is_read_only(tmp_path):
    home = Home(tmp_path / "data")
    with GoogleSimulator() as sim:
        sim.add_user(EMAIL, refresh_token=REFRESH, client_id="cid", client_secret=SECRET)
        add_account(
            home,
            provider="google",
            email=EMAIL,
            client_id="cid",
            client_secret=SECRET,
            refresh_token=REFRESH,
            api_endpoint=sim.root_url,
            token_uri=sim.token_uri,
        )
        run_pipeline(home)
    runner = CliRunner()
    ok = runner.invoke(app, ["--home", str(home.root), "sql", "SELECT count(*) AS n FROM members"])
    assert ok.exit_code == 0 and "1" in ok.output
    bad = runner.invoke(app, ["--home", str(home.root), "sql", "DELETE FROM members"])
    assert bad.exit_code == 2 and "read-only" in bad.output.lower()
    again = runner.invoke(app, ["--home", str(home.root), "sql", "SELECT count(*) FROM members"])
    assert "1" in again.output
