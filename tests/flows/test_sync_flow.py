"""The Prefect flow end to end: simulator -> real client -> lake -> warehouse."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from connectors.simulators.google import GoogleSimulator
from flows.workspace import Home
from tests.mailbox import AS_OF, assert_same_warehouse, connect, sim_mail, snapshot

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"
AS_OF_ISO = AS_OF.isoformat()


def seed_mailboxes(sim: GoogleSimulator) -> None:
    alice, bob = sim.mailbox(ALICE), sim.mailbox(BOB)
    mails_a, mails_b = [], []
    for n in range(1, 61):
        day = f"2026-0{1 + n % 5}-{10 + n % 18:02d}T09:00:00"
        client = f"Client {n % 9} <client{n % 9}@mail.eu.globex.co.uk>"
        if n % 3 == 0:
            mails_a.append(sim_mail(n, client, [ALICE], at=day))
        else:
            mails_a.append(
                sim_mail(
                    n,
                    f"Alice <{ALICE}>",
                    [client],
                    labels=["SENT"],
                    at=day,
                    cc=["friend@gmail.com"] if n % 4 == 0 else None,
                )
            )
    for n in range(100, 130):
        mails_b.append(
            sim_mail(
                n,
                f"Bob <{BOB}>",
                [f"buyer{n % 4}@initech.com"],
                labels=["SENT"],
                at="2026-04-02T12:00:00",
            )
        )
    # the same internal mail in both mailboxes
    shared = sim_mail(500, f"Alice <{ALICE}>", [BOB], labels=["SENT"], at="2026-03-01T08:00:00")
    mails_a.append(shared)
    shared_b = sim_mail(500, f"Alice <{ALICE}>", [BOB], at="2026-03-01T08:00:00")
    shared_b.id = f"{501:016x}"
    mails_b.append(shared_b)
    alice.add_messages(mails_a)
    bob.add_messages(mails_b)


@pytest.fixture()
def workspace(tmp_path):
    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        connect(home, sim, ALICE, name="Alice Smith")
        connect(home, sim, BOB, name="Bob Jones")
        seed_mailboxes(sim)
        yield home, sim


def test_flow_syncs_and_a_second_run_changes_nothing(workspace, prefect_harness):
    from flows.sync import sync_workspace

    home, sim = workspace
    out = sync_workspace(home=str(home.root), as_of=AS_OF_ISO)
    assert {s["status"] for s in out["streams"]} == {"ok"}
    assert out["publish"]["status"] == "published"
    first = snapshot(home.warehouse)
    assert first["messages"].height == 60 + 1 + 30 + 1
    emails = set(first["people"]["primary_email"].to_list())
    assert "client1@mail.eu.globex.co.uk" in emails and "friend@gmail.com" in emails
    assert first["companies"]["domains"].to_list() == [["globex.co.uk"], ["initech.com"]] or sorted(
        d[0] for d in first["companies"]["domains"].to_list()
    ) == ["globex.co.uk", "initech.com"]

    sim.clear_requests()
    again = sync_workspace(home=str(home.root), as_of=AS_OF_ISO)
    assert {s["mode"] for s in again["streams"]} == {"incremental"}
    assert all(s["landed"] == 0 for s in again["streams"])
    assert_same_warehouse(first, snapshot(home.warehouse))
    con = duckdb.connect(str(home.warehouse), read_only=True)
    assert con.execute("SELECT count(*) FROM sync_runs").fetchone()[0] == 2
    con.close()


def test_faults_during_sync_give_the_same_warehouse(tmp_path, prefect_harness):
    from flows.sync import sync_workspace

    snaps = []
    for faulty in (False, True):
        with GoogleSimulator() as sim:
            home = Home(tmp_path / f"run-{faulty}")
            connect(home, sim, ALICE, name="Alice Smith")
            connect(home, sim, BOB, name="Bob Jones")
            seed_mailboxes(sim)
            if faulty:
                sim.inject_fault("429", count=2)
                sim.inject_fault("500", count=2)
                sim.inject_fault("drop", count=3)
                sim.inject_fault("429", in_batch=True, count=10)
            out = sync_workspace(home=str(home.root), as_of=AS_OF_ISO)
            assert {s["status"] for s in out["streams"]} == {"ok"}
            if faulty:
                assert sum(s["retries"] for s in out["streams"]) >= 3
            snaps.append(snapshot(home.warehouse))
    assert_same_warehouse(*snaps)


def test_readers_can_query_while_a_sync_publishes(workspace, prefect_harness):
    from flows.sync import sync_workspace

    home, sim = workspace
    sync_workspace(home=str(home.root), as_of=AS_OF_ISO)
    sim.mailbox(ALICE).add_messages(
        [
            sim_mail(n, f"Alice <{ALICE}>", ["new@initech.com"], labels=["SENT"])
            for n in range(900, 960)
        ]
    )
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                con = duckdb.connect(str(home.warehouse), read_only=True)
                seen.append(con.execute("SELECT count(*) FROM messages").fetchone()[0])
                con.close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            time.sleep(0.005)

    t = threading.Thread(target=reader)
    t.start()
    try:
        sync_workspace(home=str(home.root), as_of=AS_OF_ISO)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:1]
    assert seen, "the reader ran"
    # Readers only ever saw a whole run: the old count or the new one.
    assert set(seen) <= {92, 152}
    con = duckdb.connect(str(home.warehouse), read_only=True)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 152
    con.close()


def test_a_second_writer_waits_then_exits_clearly(workspace, prefect_harness):
    from flows.sync import sync_workspace
    from flows.workspace import WorkspaceError

    home, _ = workspace
    with home.lock("writer"):
        with pytest.raises(WorkspaceError, match="another Rapport process"):
            sync_workspace.fn(home=str(home.root), as_of=AS_OF_ISO, lock_timeout_s=0.3)
