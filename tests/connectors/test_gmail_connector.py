"""The Gmail connector against the Gmail simulator, through the real client library."""

from __future__ import annotations

import os
import stat

import polars as pl
import pytest

from connectors import lake
from connectors.simulators.google import GoogleSimulator
from flows.engine import extract_stream
from flows.workspace import Home
from tests.mailbox import connect, sim_mail
from transforms.current import current_messages
from transforms.pipeline import scan

ALICE = "alice@acme-team.io"


def _mail(n: int, **kw):
    kw.setdefault("labels", ["SENT"])
    return sim_mail(n, f"Alice <{ALICE}>", [f"Client {n % 5} <client{n % 5}@globex.com>"], **kw)


def live_ids(home: Home, account_id: str) -> list[str]:
    frame = current_messages(scan(home.lake, "messages", [account_id])).collect()
    return sorted(frame["message_id"].to_list())


def landed_rows(home: Home, account_id: str) -> int:
    files = lake.glob(home.lake, "messages", [account_id])
    return pl.scan_parquet(files, hive_partitioning=False).select(pl.len()).collect().item()


@pytest.fixture()
def sim():
    with GoogleSimulator() as s:
        yield s


def test_full_sync_lands_every_message(tmp_path, sim):
    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    sim.mailbox(ALICE).add_messages([_mail(n) for n in range(1, 121)])
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.status == "ok" and res.mode == "full"
    assert res.landed == 120
    assert live_ids(home, acc.account_id) == sorted(f"{n:016x}" for n in range(1, 121))
    # the cursor is the profile's historyId, saved only after landing
    assert home.load_cursor(acc.account_id, "gmail")["history_id"] == str(
        sim.mailbox(ALICE).history_id
    )
    batch_calls = [r for r in sim.requests if r.path.endswith("/batch/gmail/v1")]
    assert len(batch_calls) == 3  # 120 messages in batches of at most 50


def test_incremental_uses_history_and_lands_exactly_the_new_mail(tmp_path, sim):
    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    box = sim.mailbox(ALICE)
    box.add_messages([_mail(n) for n in range(1, 41)])
    extract_stream(home, acc.account_id, "gmail")
    before = landed_rows(home, acc.account_id)
    sim.clear_requests()
    box.add_messages([_mail(n) for n in range(41, 48)])  # M = 7
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.mode == "incremental" and res.landed == 7
    paths = [r.path for r in sim.requests if not r.in_batch]
    assert any(p.endswith("/users/me/history") for p in paths)
    assert not any(p.endswith("/users/me/messages") for p in paths), "no messages.list"
    assert landed_rows(home, acc.account_id) - before == 7
    assert len(live_ids(home, acc.account_id)) == 47


def test_expired_history_resyncs_without_duplicates_and_drops_deleted(tmp_path, sim):
    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    box = sim.mailbox(ALICE)
    box.add_messages([_mail(n) for n in range(1, 31)])
    extract_stream(home, acc.account_id, "gmail")
    box.delete_message(f"{3:016x}")
    box.delete_message(f"{4:016x}")
    box.add_messages([_mail(n) for n in range(31, 36)])
    box.expire_history()
    sim.clear_requests()
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.mode == "resync"
    assert any(r.status == 404 and r.path.endswith("/history") for r in sim.requests)
    ids = live_ids(home, acc.account_id)
    assert len(ids) == len(set(ids)) == 33
    assert f"{3:016x}" not in ids and f"{4:016x}" not in ids
    assert res.deleted == 2


def test_history_deletes_and_label_changes(tmp_path, sim):
    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    box = sim.mailbox(ALICE)
    box.add_messages([_mail(n) for n in range(1, 11)])
    extract_stream(home, acc.account_id, "gmail")
    box.delete_message(f"{2:016x}")
    box.modify_labels(f"{5:016x}", add=["STARRED"])
    res = extract_stream(home, acc.account_id, "gmail")
    assert (res.landed, res.deleted) == (1, 1)
    cur = current_messages(scan(home.lake, "messages", [acc.account_id])).collect()
    labels = cur.filter(pl.col("message_id") == f"{5:016x}")["labels"].to_list()[0]
    assert "STARRED" in labels
    assert f"{2:016x}" not in cur["message_id"].to_list()


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "429"},
        {"kind": "500", "count": 2},
        {"kind": "drop", "count": 3},
        {"kind": "403_rate"},
        {"kind": "429", "in_batch": True, "count": 5},
        {"kind": "503", "in_batch": True, "count": 3},
    ],
)
def test_transient_faults_are_retried(tmp_path, sim, fault):
    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    sim.mailbox(ALICE).add_messages([_mail(n) for n in range(1, 61)])
    sim.inject_fault(**fault)
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.status == "ok", res.error
    assert res.retries >= 1
    assert len(live_ids(home, acc.account_id)) == 60


def test_malformed_mail_goes_to_quarantine_with_a_reason(tmp_path, sim):
    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    box = sim.mailbox(ALICE)
    good = _mail(1)
    bad_charset = _mail(2, body=b"caf\xe9", charset="x-no-such-charset")
    no_from = _mail(3)
    no_from.headers = [(k, v) for k, v in no_from.headers if k != "From"]
    bad_from = _mail(4)
    bad_from.headers = [
        ("From", "not an address") if k == "From" else (k, v) for k, v in bad_from.headers
    ]
    box.add_messages([good, bad_charset, no_from, bad_from])
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.status == "ok" and res.landed == 1 and res.quarantined == 3
    q = scan(home.lake, "quarantine", [acc.account_id]).collect().sort("item_id")
    assert q["item_id"].to_list() == [f"{n:016x}" for n in (2, 3, 4)]
    reasons = q["reason"].to_list()
    assert "charset" in reasons[0]
    assert "From" in reasons[1] and "From" in reasons[2]


def test_blocklisted_mail_lands_only_as_a_marker(tmp_path, sim):
    from flows.cli import parse_blocklist_entry
    from flows.workspace import BlocklistEntry

    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    sim.mailbox(ALICE).add_messages(
        [
            sim_mail(1, "Spammer <deals@promo.spam.example>", [ALICE], subject="secret offer"),
            _mail(2),
        ]
    )
    entry, kind = parse_blocklist_entry("@spam.example")
    with home.editing() as ws:
        ws.blocklist.append(BlocklistEntry(acc.account_id, entry, kind, "2026-01-01T00:00:00"))
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.blocked == 1 and res.landed == 1
    for path in lake.glob(home.lake, "messages") + lake.glob(home.lake, "participants"):
        assert b"promo.spam.example" not in open(path, "rb").read()
        assert b"secret offer" not in open(path, "rb").read()


def test_revoked_refresh_token_marks_account_disconnected_and_keeps_secrets_private(tmp_path, sim):
    from flows.engine import record_stream_results

    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    cred = home.credential_path(acc.account_id)
    assert stat.S_IMODE(os.stat(cred).st_mode) == 0o600
    sim.revoke_refresh_token(ALICE)
    res = extract_stream(home, acc.account_id, "gmail")
    assert res.status == "disconnected"
    assert "rt-alice" not in (res.error or "")
    record_stream_results(home, [res])
    assert home.load().accounts[0].status == "disconnected"


def test_encoded_display_names_with_commas_keep_their_address(tmp_path, sim):
    import email.utils

    home = Home(tmp_path)
    acc = connect(home, sim, ALICE)
    sender = email.utils.formataddr(("Popescu, José", "jose@initech.com"))  # RFC 2047 encoded
    assert "=?" in sender
    sim.mailbox(ALICE).add_messages([sim_mail(1, sender, [ALICE])])
    res = extract_stream(home, acc.account_id, "gmail")
    assert (res.landed, res.quarantined) == (1, 0)
    parts = scan(home.lake, "participants", [acc.account_id]).collect()
    row = parts.filter(pl.col("role") == "from").row(0, named=True)
    assert (row["address"], row["name"]) == ("jose@initech.com", "Popescu, José")
