"""Invariants under random input (hypothesis):

* a blocklisted address or domain never appears in `messages` of that account;
* re-running a sync changes nothing;
* a crash at any point, then a re-run, gives the same warehouse as a clean run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import lake
from connectors.simulators.google import GoogleSimulator
from flows.workspace import BlocklistEntry, Home
from tests.mailbox import (
    Mail,
    Sandbox,
    assert_same_warehouse,
    connect,
    run_pipeline,
    sim_mail,
    snapshot,
)

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"
EXTERNAL = [
    "ann@globex.com",
    "Ben@Globex.com",
    "cat@eu.initech.co.uk",
    "dan@initech.co.uk",
    "eve@gmail.com",
    "e.v.e@googlemail.com",
    "fay+x@umbrella.io",
    "gus@mail.umbrella.io",
]
DOMAINS = ["globex.com", "initech.co.uk", "umbrella.io", "eu.initech.co.uk", "gmail.com"]

mail_strategy = st.lists(
    st.tuples(
        st.booleans(),  # sent by alice?
        st.lists(st.sampled_from(EXTERNAL), min_size=1, max_size=3),
        st.lists(st.sampled_from(EXTERNAL), max_size=2),
        st.integers(0, 4),  # thread
    ),
    min_size=1,
    max_size=12,
)
block_strategy = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(EXTERNAL), st.just("address")),
        st.tuples(st.sampled_from(DOMAINS), st.just("domain")),
    ),
    max_size=3,
)


def _matches(address: str, entries: list[tuple[str, str]]) -> bool:
    from transforms.addresses import normalise_address

    norm = normalise_address(address)
    domain = norm.split("@")[1]
    for entry, kind in entries:
        if kind == "address" and normalise_address(entry) == norm:
            return True
        if kind == "domain" and (domain == entry or domain.endswith("." + entry)):
            return True
    return False


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mails=mail_strategy, blocks=block_strategy)
def test_blocklisted_addresses_never_reach_messages(mails, blocks):
    with tempfile.TemporaryDirectory() as d:
        sb = Sandbox(Path(d))
        for entry, kind in blocks:
            sb.block(ALICE, entry, kind)
        shapes = []  # (sender, recipients, cc, thread, sent) exactly as landed
        for sent, to, cc, thread in mails:
            shapes.append(
                (ALICE, to, cc, thread, True) if sent else (to[0], [ALICE], cc, thread, False)
            )
        sb.land(
            ALICE,
            [
                Mail(
                    f"m{i}",
                    sender,
                    rcpt,
                    cc=cc,
                    thread=f"t{thread}",
                    labels=["SENT"] if sent else ["INBOX"],
                )
                for i, (sender, rcpt, cc, thread, sent) in enumerate(shapes)
            ],
        )
        staged = sb.build()
        msgs = staged.tables["messages"]
        seen = (
            msgs.select(pl.concat_list(pl.col("from_email"), "to_emails", "cc_emails").alias("a"))
            .explode("a")["a"]
            .to_list()
        )
        assert not [a for a in seen if _matches(a, blocks)]
        # and by hand: a message is shown iff none of its addresses is blocked
        hit = [
            any(_matches(a, blocks) for a in [sender, *rcpt, *cc])
            for sender, rcpt, cc, _, _ in shapes
        ]
        assert msgs.height == hit.count(False)
        # the thread rule: no person from a thread holding a blocked message
        blocked_threads = {shape[3] for shape, h in zip(shapes, hit, strict=True) if h}
        creators = {
            a
            for sender, rcpt, cc, thread, sent in shapes
            if sent and thread not in blocked_threads
            for a in rcpt + cc
        }
        from transforms.addresses import canonical_key

        got = {
            canonical_key(a)
            for a in staged.tables["people"].select(pl.col("email_addresses").explode()).to_series()
        }
        assert got == {canonical_key(a) for a in creators}


@pytest.fixture(scope="module")
def sim():
    with GoogleSimulator() as s:
        yield s


def _seed(sim: GoogleSimulator, tag: str, n: int) -> tuple[str, str]:
    """Two fresh mailboxes (unique per example) with n messages each."""
    a, b = f"alice.{tag}@acme-team.io", f"bob.{tag}@acme-team.io"
    for owner in (a, b):
        sim.add_user(
            owner,
            refresh_token="rt-" + owner.split("@")[0],
            client_id="rapport-test",
            client_secret="secret",
        )
    sim.mailbox(a).add_messages(
        [
            sim_mail(
                k,
                f"Alice <{a}>",
                [EXTERNAL[k % len(EXTERNAL)]],
                labels=["SENT"],
                at=f"2026-0{1 + k % 5}-1{k % 9}T10:00:00",
                thread=k % 7 + 1,
            )
            for k in range(1, n + 1)
        ]
    )
    sim.mailbox(b).add_messages(
        [
            sim_mail(1000 + k, EXTERNAL[k % len(EXTERNAL)], [b], at="2026-04-01T10:00:00")
            for k in range(1, n + 1)
        ]
    )
    return a, b


class Crash(BaseException):
    """A process death: nothing in the pipeline may catch it (unlike a network error)."""


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(crash_at=st.integers(0, 12), block=st.booleans())
def test_crash_at_any_point_then_rerun_equals_a_clean_run(sim, monkeypatch, crash_at, block):
    import uuid

    import connectors.gmail as gmail
    import warehouse.publish as publish_mod

    monkeypatch.setattr(gmail, "FLUSH_EVERY", 10)  # more landing points to crash between
    tag = uuid.uuid4().hex[:8]
    a, b = _seed(sim, tag, 25)
    snaps = []
    for crash in (False, True):
        with tempfile.TemporaryDirectory() as d:
            home = Home(d)
            connect(home, sim, a)
            connect(home, sim, b)
            if block:
                with home.editing() as ws:
                    ws.blocklist.append(
                        BlocklistEntry(
                            ws.accounts[0].account_id, "globex.com", "domain", "2026-01-01"
                        )
                    )
            if crash:
                calls = {"n": 0}
                real_flush, real_replace = lake.flush, publish_mod.os.replace

                def flaky_flush(*args, calls=calls, real_flush=real_flush, **kw):
                    calls["n"] += 1
                    if calls["n"] == crash_at + 1:
                        raise Crash("power cut while landing")
                    return real_flush(*args, **kw)

                monkeypatch.setattr(lake, "flush", flaky_flush)
                if crash_at == 12:  # crash at the very end: during the publish swap
                    monkeypatch.setattr(
                        publish_mod.os, "replace", lambda *x: (_ for _ in ()).throw(Crash("swap"))
                    )
                try:
                    run_pipeline(home)
                except Crash:
                    pass
                monkeypatch.setattr(lake, "flush", real_flush)
                monkeypatch.setattr(publish_mod.os, "replace", real_replace)
            run_pipeline(home)
            snaps.append(snapshot(home.warehouse))
    assert_same_warehouse(*snaps)


def test_rerunning_a_sync_changes_nothing(sim):
    with tempfile.TemporaryDirectory() as d:
        home = Home(d)
        a, b = _seed(sim, "rerun", 30)
        connect(home, sim, a)
        connect(home, sim, b)
        run_pipeline(home)
        first = snapshot(home.warehouse)
        results, _ = run_pipeline(home)
        assert all(r.landed == 0 and r.mode == "incremental" for r in results)
        assert_same_warehouse(first, snapshot(home.warehouse))
