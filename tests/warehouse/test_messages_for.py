"""messages_for(viewer_email), the privacy contract (DESIGN §4.7), on a real warehouse file.

Alice, Bob and Carol are members on acme-team.io. Their handcrafted mailboxes go through
the real pipeline and publish; every expectation below is worked out by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flows.engine import SYNC_RUN_SCHEMA, build_and_publish, new_run_id, workspace_tables
from flows.workspace import Account, Home, account_id_for
from tests.mailbox import AS_OF, Mail, Sandbox, ts
from tests.warehouse.helpers import land_mail, publish_sandbox, rows
from warehouse.publish import publish

ALICE, BOB, CAROL = "alice@acme-team.io", "bob@acme-team.io", "carol@acme-team.io"
A1_RFC = "<a1@test>"
B1_RFC = "<b1@test>"
DUP_RFC = "<renewal-1@initech.com>"  # synced by Alice and by Bob
INT_RFC = "<standup-1@acme-team.io>"  # Alice -> Bob only: internal
PAT = "pat@initech.com"


def key(owner: str, message_id: str) -> str:
    return f"{account_id_for('google', owner)}:{message_id}"


def account(sb: Sandbox, email: str) -> Account:
    return next(a for a in sb.ws.accounts if a.email == email)


def team(root: Path) -> Sandbox:
    sb = Sandbox(root, members=[ALICE, BOB, CAROL])
    land_mail(
        sb,
        ALICE,
        Mail("a1", ALICE, ["buyer@globex.com"], labels=["SENT"], subject="Globex pricing",
             at="2026-05-01T09:00:00"),
        body="alice body a1",
        snippet="alice snip a1",
    )  # fmt: skip
    for owner, mid in ((ALICE, "dup-a"), (BOB, "dup-b")):
        who = owner.split("@")[0]
        land_mail(
            sb,
            owner,
            Mail(mid, "pat@initech.com", [ALICE, BOB], subject="Renewal", rfc_id=DUP_RFC,
                 at="2026-05-02T09:00:00"),
            body=f"{who} copy of renewal",
            snippet=f"{who} copy snip",
        )  # fmt: skip
    land_mail(
        sb,
        ALICE,
        Mail("int-a", ALICE, [BOB], labels=["SENT"], subject="Standup", rfc_id=INT_RFC,
             at="2026-05-03T09:00:00"),
        body="internal body",
    )  # fmt: skip
    land_mail(
        sb,
        BOB,
        Mail("int-b", ALICE, [BOB], subject="Standup", rfc_id=INT_RFC, at="2026-05-03T09:00:00"),
        body="internal body",
    )
    land_mail(
        sb,
        BOB,
        Mail("b1", BOB, ["lee@globex.com"], labels=["SENT"], subject="Intro",
             at="2026-05-04T09:00:00"),
        body="bob body b1",
        snippet="bob snip b1",
    )  # fmt: skip
    return sb


def seen(warehouse: Path, viewer: str | None) -> dict[str, dict]:
    """RFC Message-ID -> the row `viewer` sees, checking there is one row per RFC id."""
    out = rows(warehouse, "SELECT * FROM messages_for($viewer)", {"viewer": viewer})
    by_rfc = {r["rfc_message_id"]: r for r in out}
    assert len(by_rfc) == len(out), f"duplicate RFC ids for {viewer}: {out}"
    return by_rfc


def content(row: dict) -> tuple[str | None, str | None, str | None]:
    return row["subject"], row["snippet"], row["body_text"]


@pytest.fixture
def sb(tmp_path: Path) -> Sandbox:
    return team(tmp_path)


@pytest.fixture
def wh(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


def test_same_columns_as_messages_and_owner_sees_all_own_mail_in_full(sb, wh):
    publish_sandbox(sb, wh)
    describe = "SELECT column_name, column_type FROM (DESCRIBE {})"
    assert rows(wh, describe.format("SELECT * FROM messages_for('alice@acme-team.io')")) == rows(
        wh, describe.format("messages")
    )
    alice = seen(wh, ALICE)
    assert set(alice) == {A1_RFC, B1_RFC, DUP_RFC, INT_RFC}
    assert alice[B1_RFC]["message_key"] == key(BOB, "b1")
    assert content(alice[B1_RFC]) == (None, None, None)  # Bob's, at his default (metadata)
    assert alice[A1_RFC]["message_key"] == key(ALICE, "a1")
    assert content(alice[A1_RFC]) == ("Globex pricing", "alice snip a1", "alice body a1")
    assert alice[DUP_RFC]["message_key"] == key(ALICE, "dup-a")
    assert content(alice[DUP_RFC]) == ("Renewal", "alice copy snip", "alice copy of renewal")
    assert alice[INT_RFC]["message_key"] == key(ALICE, "int-a")
    assert alice[INT_RFC]["body_text"] == "internal body"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("metadata", (None, None, None)),
        ("subject", ("Globex pricing", None, None)),
        ("full", ("Globex pricing", "alice snip a1", "alice body a1")),
    ],
)
def test_default_sharing_levels_as_bob_sees_alices_mail(sb, wh, level, expected):
    account(sb, ALICE).default_sharing = level
    publish_sandbox(sb, wh)
    for viewer in (BOB, CAROL):
        row = seen(wh, viewer)[A1_RFC]
        assert content(row) == expected
        # metadata is always there: participants and times
        assert row["message_key"] == key(ALICE, "a1")
        assert row["from_email"] == ALICE
        assert row["to_emails"] == ["buyer@globex.com"]
        assert row["cc_emails"] == []
        assert row["sent_at"] == ts("2026-05-01T09:00:00")
        assert row["direction"] == "sent"
    # the owner is unaffected by their own sharing level
    assert content(seen(wh, ALICE)[A1_RFC]) == ("Globex pricing", "alice snip a1", "alice body a1")


def rapport(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process (its own environment; a wide table, no wrapping)."""
    env = {**os.environ, "COLUMNS": "4000", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_grant_gives_full_access_and_revoke_takes_it_away(sb, tmp_path):
    home = Home(tmp_path)
    home.save(sb.ws)
    out = rapport(tmp_path, "sharing", "grant", "--account", ALICE, "--to", BOB)
    assert out.returncode == 0, out.stderr
    sb.ws = home.load()
    assert account(sb, ALICE).grants == [BOB]
    publish_sandbox(sb, home.warehouse)
    full = ("Globex pricing", "alice snip a1", "alice body a1")
    assert content(seen(home.warehouse, BOB)[A1_RFC]) == full
    assert content(seen(home.warehouse, CAROL)[A1_RFC]) == (None, None, None)  # default
    # the grant is on Alice's account only: Bob's mail stays at Bob's default for Alice
    assert content(seen(home.warehouse, ALICE)[B1_RFC]) == (None, None, None)

    out = rapport(tmp_path, "sharing", "revoke", "--account", ALICE, "--to", BOB)
    assert out.returncode == 0, out.stderr
    sb.ws = home.load()
    publish_sandbox(sb, home.warehouse, run_id="run-2")
    assert content(seen(home.warehouse, BOB)[A1_RFC]) == (None, None, None)


def test_mail_synced_by_two_members_appears_once_with_the_most_permissive_copy(sb, wh):
    account(sb, ALICE).default_sharing = "full"  # Bob stays at metadata
    publish_sandbox(sb, wh)
    # Carol holds no copy: Alice's copy gives her full, Bob's only metadata
    carol = seen(wh, CAROL)[DUP_RFC]
    assert carol["message_key"] == key(ALICE, "dup-a")
    assert content(carol) == ("Renewal", "alice copy snip", "alice copy of renewal")
    # Bob owns a copy: one row, his own, in full (Alice's is full too; his own wins the tie)
    bob = seen(wh, BOB)[DUP_RFC]
    assert bob["message_key"] == key(BOB, "dup-b")
    assert content(bob) == ("Renewal", "bob copy snip", "bob copy of renewal")
    # Alice owns a copy: her own, in full, although Bob's copy is metadata-only
    alice = seen(wh, ALICE)[DUP_RFC]
    assert alice["message_key"] == key(ALICE, "dup-a")
    assert content(alice) == ("Renewal", "alice copy snip", "alice copy of renewal")

    # the other way round, Carol gets Bob's copy
    account(sb, ALICE).default_sharing = "metadata"
    account(sb, BOB).default_sharing = "subject"
    publish_sandbox(sb, wh, run_id="run-2")
    carol = seen(wh, CAROL)[DUP_RFC]
    assert carol["message_key"] == key(BOB, "dup-b")
    assert content(carol) == ("Renewal", None, None)
    # and the owner still sees their own copy in full whatever the other copy gives
    assert content(seen(wh, ALICE)[DUP_RFC]) == (
        "Renewal",
        "alice copy snip",
        "alice copy of renewal",
    )

    # both full: each owner still gets exactly their own copy (Bob's key sorts first)
    account(sb, BOB).default_sharing = "full"
    account(sb, ALICE).default_sharing = "full"
    publish_sandbox(sb, wh, run_id="run-3")
    assert key(BOB, "dup-b") < key(ALICE, "dup-a")
    assert seen(wh, ALICE)[DUP_RFC]["message_key"] == key(ALICE, "dup-a")
    assert seen(wh, BOB)[DUP_RFC]["message_key"] == key(BOB, "dup-b")
    assert seen(wh, CAROL)[DUP_RFC]["message_key"] == key(BOB, "dup-b")  # tie: lowest key


def test_internal_only_mail_is_visible_only_to_members_holding_a_copy(sb, wh):
    for email in (ALICE, BOB):
        account(sb, email).default_sharing = "full"
    account(sb, ALICE).grants = [CAROL]  # not even a grant opens internal mail
    publish_sandbox(sb, wh)
    assert rows(wh, "SELECT message_key, internal_only FROM message_flags ORDER BY 1") == [
        {"message_key": key(BOB, "int-b"), "internal_only": True},
        {"message_key": key(ALICE, "int-a"), "internal_only": True},
    ]
    assert set(seen(wh, CAROL)) == {A1_RFC, B1_RFC, DUP_RFC}
    bob = seen(wh, BOB)[INT_RFC]
    assert bob["message_key"] == key(BOB, "int-b")
    assert bob["body_text"] == "internal body"
    assert seen(wh, ALICE)[INT_RFC]["message_key"] == key(ALICE, "int-a")


def test_internal_mail_stays_private_when_alice_is_its_only_holder(tmp_path, wh):
    sb = Sandbox(tmp_path, members=[ALICE, BOB, CAROL])
    account(sb, ALICE).default_sharing = "full"
    land_mail(sb, ALICE, Mail("i1", ALICE, [BOB], labels=["SENT"]), body="salary talk")
    publish_sandbox(sb, wh)
    assert seen(wh, ALICE)["<i1@test>"]["body_text"] == "salary talk"
    assert seen(wh, BOB) == {}  # on the mail, but holds no copy
    assert seen(wh, CAROL) == {}


def test_an_unparseable_address_does_not_expose_internal_mail(tmp_path, wh):
    """An address that does not parse cannot prove the mail left the team (was a leak)."""
    sb = Sandbox(tmp_path, members=[ALICE, BOB, CAROL])
    account(sb, ALICE).default_sharing = "full"
    mail = Mail("i1", ALICE, [BOB], cc=["no-at-sign"], labels=["SENT"])
    land_mail(sb, ALICE, mail, body="salary talk")
    publish_sandbox(sb, wh)
    assert seen(wh, ALICE)["<i1@test>"]["body_text"] == "salary talk"
    assert seen(wh, CAROL) == {}


def test_mail_without_a_message_id_is_never_collapsed(tmp_path, wh):
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    account(sb, ALICE).default_sharing = "full"
    for mid, rfc in [("n1", ""), ("n2", ""), ("n3", "  ")]:  # blank Message-ID headers
        land_mail(sb, ALICE, Mail(mid, ALICE, [PAT], labels=["SENT"], rfc_id=rfc), body=mid)
    publish_sandbox(sb, wh)
    for viewer in (ALICE, BOB):
        out = rows(
            wh, "SELECT message_key, body_text FROM messages_for($v) ORDER BY 1", {"v": viewer}
        )
        assert out == [{"message_key": key(ALICE, m), "body_text": m} for m in ("n1", "n2", "n3")]


@pytest.mark.parametrize(
    "viewer", ["stranger@acme-team.io", "pat@initech.com", "buyer@globex.com", "alice", "", None]
)
def test_non_members_see_nothing(sb, wh, viewer):
    for acc in sb.ws.accounts:
        acc.default_sharing = "full"
    publish_sandbox(sb, wh)
    assert seen(wh, viewer) == {}


def test_viewer_email_is_case_and_space_insensitive(sb, wh):
    account(sb, ALICE).default_sharing = "subject"
    publish_sandbox(sb, wh)
    bob = seen(wh, BOB)
    assert set(bob) == {A1_RFC, B1_RFC, DUP_RFC, INT_RFC}
    assert seen(wh, "  Bob@ACME-Team.IO ") == bob


def test_removed_accounts_mail_never_appears(sb, wh):
    for acc in sb.ws.accounts:
        acc.default_sharing = "full"
    bob = account(sb, BOB)
    bob.status, bob.removed_at = "removed", "2026-05-20T00:00:00+00:00"
    publish_sandbox(sb, wh)
    # Bob's copies are gone; the mail he shared with Alice is still there through hers
    assert set(seen(wh, CAROL)) == {A1_RFC, DUP_RFC}
    assert seen(wh, CAROL)[DUP_RFC]["message_key"] == key(ALICE, "dup-a")
    bob_sees = seen(wh, BOB)
    assert set(bob_sees) == {A1_RFC, DUP_RFC}
    assert bob_sees[DUP_RFC]["message_key"] == key(ALICE, "dup-a")

    # The macro enforces it on its own too: rows of a removed account, if any reached
    # the messages table, are dropped for every viewer, their owner included.
    bob.status, bob.removed_at = "active", None
    staged = sb.build()
    bob.status, bob.removed_at = "removed", "2026-05-20T00:00:00+00:00"
    tables = {**staged.tables, **workspace_tables(sb.ws)}
    publish(wh, tables, pl.DataFrame(schema=SYNC_RUN_SCHEMA), "run-2")
    assert rows(
        wh, "SELECT count(*) AS n FROM messages WHERE message_key = $k", {"k": key(BOB, "b1")}
    ) == [{"n": 1}]
    for viewer in (ALICE, BOB, CAROL):
        assert all(
            not r["message_key"].startswith(bob.account_id) for r in seen(wh, viewer).values()
        )
    assert B1_RFC not in seen(wh, BOB)


def test_private_body_never_leaves_through_the_cli(tmp_path):
    """End to end: lake -> build_and_publish (quality gate on) -> `rapport sql`."""
    marker, subject_marker = "MARKER-7f3a", "SUBJ-MARKER-c41e"
    sb = Sandbox(tmp_path, members=[ALICE, BOB, CAROL])
    mail = Mail("m1", ALICE, ["buyer@globex.com"], labels=["SENT"], subject=subject_marker)
    land_mail(sb, ALICE, mail, body=f"the secret is {marker}", snippet=f"snip {marker}")
    assert account(sb, ALICE).default_sharing == "metadata"
    home = Home(tmp_path)
    home.save(sb.ws)
    result = build_and_publish(home, new_run_id(), AS_OF, [], datetime.now(UTC))
    assert result.status == "published", result.failures

    def query(viewer: str) -> str:
        out = rapport(tmp_path, "sql", f"SELECT * FROM messages_for('{viewer}')")
        assert out.returncode == 0, out.stderr
        return out.stdout

    as_bob = query(BOB)
    assert "buyer@globex.com" in as_bob  # the row is there, as metadata
    assert marker not in as_bob
    assert subject_marker not in as_bob
    as_alice = query(ALICE)
    assert marker in as_alice
    assert subject_marker in as_alice
