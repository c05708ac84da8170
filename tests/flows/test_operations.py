"""Running unattended: disconnects, removal, backfills, the quality gate, locking, status."""

from __future__ import annotations

import hashlib
import os
import threading

import duckdb
import polars as pl
import pytest
import yaml

from connectors import lake
from connectors.simulators.google import GoogleSimulator
from flows.engine import build_and_publish, load_runs, new_run_id
from flows.workspace import Home
from tests.mailbox import AS_OF, connect, run_pipeline, sim_mail, snapshot

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"


def seed(sim: GoogleSimulator, n: int = 30) -> None:
    sim.mailbox(ALICE).add_messages(
        [
            sim_mail(
                k,
                f"Alice <{ALICE}>",
                [f"client{k % 6}@globex.com"],
                labels=["SENT"],
                at=f"2026-0{1 + k % 5}-1{k % 9}T10:00:00",
            )
            for k in range(1, n + 1)
        ]
    )
    sim.mailbox(BOB).add_messages(
        [
            sim_mail(
                500 + k,
                f"Bob <{BOB}>",
                [f"buyer{k % 3}@initech.com", "client1@globex.com"],
                labels=["SENT"],
                at="2026-04-02T12:00:00",
            )
            for k in range(1, n + 1)
        ]
    )


@pytest.fixture()
def env(tmp_path):
    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        connect(home, sim, ALICE)
        connect(home, sim, BOB)
        seed(sim)
        yield home, sim


def count(home: Home, sql: str) -> int:
    con = duckdb.connect(str(home.warehouse), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_disconnect_then_reconnect_loses_nothing(env):
    from typer.testing import CliRunner

    from flows.cli import app

    home, sim = env
    run_pipeline(home)
    sim.revoke_refresh_token(ALICE)
    sim.mailbox(ALICE).add_messages(
        [
            sim_mail(k, f"Alice <{ALICE}>", ["late@globex.com"], labels=["SENT"])
            for k in range(100, 110)
        ]
    )
    sim.mailbox(BOB).add_messages(
        [sim_mail(900, f"Bob <{BOB}>", ["x@initech.com"], labels=["SENT"])]
    )
    results, _ = run_pipeline(home)
    by_email = {a.account_id: a for a in home.load().accounts}
    status = {by_email[r.account_id].email: r.status for r in results if r.stream == "gmail"}
    assert status == {ALICE: "disconnected", BOB: "ok"}  # bob carried on
    assert home.load().account_by_email(ALICE).status == "disconnected"
    assert count(home, "SELECT count(*) FROM messages") == 30 + 31
    cursor_before = home.load_cursor(home.load().account_by_email(ALICE).account_id, "gmail")

    sim.issue_refresh_token(ALICE, "rt-alice-2")
    out = CliRunner().invoke(
        app,
        ["--home", str(home.root), "accounts", "reconnect", ALICE, "--refresh-token", "rt-alice-2"],
    )
    assert out.exit_code == 0, out.output
    results, _ = run_pipeline(home)
    alice = [
        r
        for r in results
        if r.account_id == home.load().account_by_email(ALICE).account_id and r.stream == "gmail"
    ][0]
    assert (alice.status, alice.mode, alice.landed) == ("ok", "incremental", 10)
    assert cursor_before is not None
    assert count(home, "SELECT count(*) FROM messages") == 40 + 31
    assert home.load().account_by_email(ALICE).status == "active"


def test_remove_account_purges_mail_keeps_records_and_metrics_follow(env, prefect_harness):
    from flows.sync import remove_account

    home, _ = env
    run_pipeline(home)
    people_before = snapshot(home.warehouse)["people"]
    acc = home.load().account_by_email(BOB).account_id
    assert count(home, f"SELECT count(*) FROM interactions WHERE account_id='{acc}'") > 0
    remove_account(home=str(home.root), email=BOB, as_of=AS_OF.isoformat())
    after = snapshot(home.warehouse)
    assert count(home, f"SELECT count(*) FROM messages WHERE account_id='{acc}'") == 0
    assert count(home, f"SELECT count(*) FROM interactions WHERE account_id='{acc}'") == 0
    assert lake.glob(home.lake, "messages", [acc]) == []
    assert not home.credential_path(acc).exists()
    # every person and company stays, ids unchanged
    assert after["people"]["person_id"].to_list() == people_before["person_id"].to_list()
    initech = count(
        home, "SELECT count(*) FROM companies WHERE list_contains(domains, 'initech.com')"
    )
    assert initech == 1
    # buyers were only ever bob's contacts: no interactions, no metrics any more
    assert (
        count(
            home,
            """SELECT count(*) FROM person_metrics m JOIN people p USING (person_id)
        WHERE p.primary_email LIKE 'buyer%' AND m.last_interaction_at IS NOT NULL""",
        )
        == 0
    )
    assert count(home, "SELECT count(*) FROM accounts WHERE status = 'removed'") == 1


def _lake_state(home: Home) -> pl.DataFrame:
    from transforms.current import current_messages
    from transforms.pipeline import scan

    ids = [a.account_id for a in home.load().accounts]
    return (
        current_messages(scan(home.lake, "messages", ids))
        .select("account_id", "message_id", "subject", "sent_at")
        .collect()
        .sort("account_id", "message_id")
    )


def test_interrupted_backfill_resumes_to_the_same_result(tmp_path, monkeypatch, prefect_harness):
    import connectors.gmail as gmail
    from flows.sync import backfill

    monkeypatch.setattr(gmail, "FLUSH_EVERY", 7)
    states = []
    for interrupted in (False, True):
        with GoogleSimulator() as sim:
            home = Home(tmp_path / f"bf-{interrupted}")
            connect(home, sim, ALICE)
            connect(home, sim, BOB)
            seed(sim, 40)
            alice_id = home.load().account_by_email(ALICE).account_id
            home.save_cursor(alice_id, "gmail", {"history_id": "1001"})
            cursor = home.cursor_path(alice_id, "gmail").read_bytes()
            if interrupted:
                real, calls = lake.flush, {"n": 0}

                def dying_flush(*a, calls=calls, real=real, **k):
                    calls["n"] += 1
                    if calls["n"] == 3:
                        raise KeyboardInterrupt("stopped by the user")
                    return real(*a, **k)

                monkeypatch.setattr(lake, "flush", dying_flush)
                with pytest.raises(BaseException):  # noqa: B017 - the stop itself
                    backfill(
                        home=str(home.root),
                        accounts=[ALICE],
                        since="2026-01-01",
                        as_of=AS_OF.isoformat(),
                    )
                monkeypatch.setattr(lake, "flush", real)
                partial = _lake_state(home).height
                assert 0 < partial < 40
                sim.clear_requests()
            out = backfill(
                home=str(home.root), accounts=[ALICE], since="2026-01-01", as_of=AS_OF.isoformat()
            )
            if interrupted:
                fetched = [r for r in sim.requests if r.in_batch]
                assert len(fetched) == 40 - partial, "nothing already landed is re-fetched"
            assert out["streams"][0]["status"] == "ok"
            assert home.cursor_path(alice_id, "gmail").read_bytes() == cursor  # never moved
            states.append(_lake_state(home))
    from polars.testing import assert_frame_equal

    assert_frame_equal(states[0], states[1])


@pytest.mark.parametrize(
    "violation",
    [
        "duplicate_person",
        "null_person",
        "missing_company",
        "internal_person",
        "blocklisted_message",
        "bad_timestamp",
        "person_without_address",
        "bad_connection_sums",
        "interaction_orphan",
    ],
)
def test_each_expectation_blocks_the_publish(env, monkeypatch, violation):
    import transforms.pipeline as pipeline

    home, _ = env
    run_pipeline(home)
    before = hashlib.sha256(home.warehouse.read_bytes()).hexdigest()
    alice_acc = home.load().account_by_email(ALICE).account_id
    real_build = pipeline.build

    def corrupt(*args, **kwargs):
        staged = real_build(*args, **kwargs)
        t = staged.tables
        p = t["people"]
        if violation == "duplicate_person":
            t["people"] = pl.concat([p, p.head(1)])
        elif violation == "null_person":
            t["people"] = p.with_columns(
                person_id=pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise("person_id")
            )
        elif violation == "missing_company":
            t["people"] = p.with_columns(company_id=pl.lit("com_nowhere"))
        elif violation == "internal_person":
            t["people"] = p.with_columns(
                email_addresses=pl.concat_list("email_addresses", pl.lit(ALICE))
            )
        elif violation == "person_without_address":
            t["people"] = p.with_columns(email_addresses=pl.lit([], pl.List(pl.String)))
        elif violation == "blocklisted_message":
            m = t["messages"]
            leak = m.head(1).with_columns(
                message_key=pl.lit(f"{alice_acc}:leak"),
                account_id=pl.lit(alice_acc),
                from_email=pl.lit("deals@mail.spam.example"),
            )
            t["messages"] = pl.concat([m, leak])
        elif violation == "bad_timestamp":
            m = t["messages"]
            t["messages"] = m.with_columns(sent_at=pl.datetime(1900, 1, 1, time_zone="UTC"))
        elif violation == "bad_connection_sums":
            sums = t["_rapport_connection_sums"]
            t["_rapport_connection_sums"] = sums.with_columns(f_sent=pl.lit(float("inf")))
        elif violation == "interaction_orphan":
            t["interactions"] = t["interactions"].with_columns(person_id=pl.lit("per_ghost"))
        return staged

    import flows.engine as engine
    from flows.workspace import BlocklistEntry

    with home.editing() as ws:
        ws.blocklist.append(
            BlocklistEntry(alice_acc, "spam.example", "domain", "2026-01-01T00:00:00+00:00")
        )
    monkeypatch.setattr(engine, "build", corrupt)
    out = build_and_publish(home, new_run_id(), AS_OF, [], AS_OF)
    assert out.status == "failed_expectations"
    assert out.failures
    # the published warehouse is byte-for-byte the old one, and still readable
    assert hashlib.sha256(home.warehouse.read_bytes()).hexdigest() == before
    assert out.mode == "full"
    # the new file, written while the gate ran, is gone with it, and so is its state:
    # only the live file's generation of state files is left
    from warehouse.state import state_root

    state = state_root(home.warehouse)
    assert list(home.warehouse.parent.glob(f".{home.warehouse.name}.*")) == [state]
    live_state = count(home, "SELECT state FROM _rapport_build")
    assert [folder.name for folder in state.iterdir()] == [live_state]
    assert count(home, "SELECT count(*) FROM messages") == 60
    runs = load_runs(home)
    assert runs["status"].to_list()[-1] == "failed_expectations"


def test_two_concurrent_syncs_serialise_and_agree(env, prefect_harness):
    from flows.sync import sync_workspace

    home, _ = env
    outcomes: list[object] = []

    def go() -> None:
        try:
            outcomes.append(
                sync_workspace(home=str(home.root), as_of=AS_OF.isoformat(), lock_timeout_s=120)
            )
        except BaseException as exc:  # noqa: BLE001
            outcomes.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    modes = sorted(s["mode"] for o in outcomes for s in o["streams"] if s["stream"] == "gmail")
    assert modes == ["full", "full", "incremental", "incremental"]  # one after the other
    assert count(home, "SELECT count(*) FROM messages") == 60
    snap = snapshot(home.warehouse)
    assert snap["people"].height == 9  # client0-5 at globex, buyer0-2 at initech


def test_status_flags_a_gap_the_provider_hides(env):
    from flows.status import account_status

    home, sim = env
    hidden = [f"{k:016x}" for k in (3, 4, 5)]
    sim.mailbox(ALICE).hide_from_listing(hidden)
    run_pipeline(home)
    rows = {r["email"]: r for r in account_status(home)}
    assert rows[ALICE]["provider_total"] == 30
    assert rows[ALICE]["gap"] == "UNEXPLAINED +3"
    assert rows[BOB]["gap"] == "none"


def test_status_explains_gaps_from_blocklists_and_quarantine(env):
    from flows.status import account_status
    from flows.workspace import BlocklistEntry

    home, sim = env
    bad = sim_mail(77, "not an address", [ALICE])
    sim.mailbox(ALICE).add_messages([bad])
    with home.editing() as ws:
        ws.blocklist.append(
            BlocklistEntry(
                ws.account_by_email(ALICE).account_id,
                "client1@globex.com",
                "address",
                "2026-01-01T00:00:00+00:00",
            )
        )
    run_pipeline(home)
    rows = {r["email"]: r for r in account_status(home)}
    assert rows[ALICE]["provider_total"] == 31
    assert rows[ALICE]["gap"] == "none"
    assert "1 quarantined" in rows[ALICE]["landed"] and "5 blocked" in rows[ALICE]["landed"]


def test_prefect_yaml_entrypoints_import_and_parameters_validate():
    import importlib
    from pathlib import Path

    from prefect import Flow

    spec = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"sync-workspace", "backfill", "remove-account"} <= names
    for dep in spec["deployments"]:
        module, func = dep["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        assert isinstance(flow, Flow)
        params = {
            k: ("/tmp/x" if isinstance(v, str) and "{{" in v else v)
            for k, v in (dep.get("parameters") or {}).items()
        }
        flow.validate_parameters(params)
        assert dep["work_pool"]["name"] == "rapport"
        assert dep.get("concurrency_limit") == 1
    sync = next(d for d in spec["deployments"] if d["name"] == "sync-workspace")
    assert sync["schedules"][0]["cron"] == "*/10 * * * *"


def test_prefect_deploy_all_accepts_the_file(prefect_harness, tmp_path):
    """`prefect deploy --all` against a real (temporary) Prefect API registers all three."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    repo = Path(__file__).parents[2]
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "RAPPORT_REPO": str(repo),
        "RAPPORT_HOME": str(tmp_path / "data"),
    }

    # Only the deploy goes through the CLI (a `prefect` process takes ~4 s to start): the
    # pool it needs and the checks use the API client.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="rapport", type="process"))
    deployed = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    with get_client(sync_client=True) as client:
        sync = client.read_deployment_by_name("sync-workspace/sync-workspace")
        assert [s.schedule.cron for s in sync.schedules] == ["*/10 * * * *"]
        flows = {f.id: f.name for f in client.read_flows()}
        names = {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}
    assert names >= {
        "sync-workspace/sync-workspace",
        "backfill/backfill",
        "remove-account/remove-account",
    }


def test_the_cli_gives_prefect_s_temporary_api_time_to_create_its_database(tmp_path, monkeypatch):
    from flows.cli import EPHEMERAL_STARTUP_TIMEOUT, configure_prefect

    # (set, then deleted: so each is put back as it was after the test)
    touched = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "PREFECT_LOGGING_LEVEL")
    for name in (EPHEMERAL_STARTUP_TIMEOUT, "PREFECT_HOME", "PREFECT_LOGGING_TO_API_ENABLED"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name in touched:
        monkeypatch.setenv(name, os.environ.get(name, ""))
    configure_prefect(Home(tmp_path))
    # (Prefect's own 20 s default was seen to fail a first run on a slow 2-core machine)
    assert float(os.environ[EPHEMERAL_STARTUP_TIMEOUT]) >= 60
    # a user's own setting is kept
    monkeypatch.setenv(EPHEMERAL_STARTUP_TIMEOUT, "7")
    configure_prefect(Home(tmp_path))
    assert os.environ[EPHEMERAL_STARTUP_TIMEOUT] == "7"
