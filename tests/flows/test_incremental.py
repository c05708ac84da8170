"""The incremental build equals a full build of the same lake (issue 7).

Each test publishes once in full, lands a delta, publishes incrementally, then rebuilds
the same lake in full at the same as_of and compares every published table.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.engine import build_and_publish, new_run_id
from flows.workspace import Home
from tests.mailbox import AS_OF, Mail, Sandbox, assert_same_warehouse, snapshot

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"


def sandbox_home(root: Path) -> tuple[Sandbox, Home]:
    home = Home(root)
    home.ensure()
    box = Sandbox(root, members=[ALICE, BOB])
    assert box.lake == home.lake
    home.save(box.ws)
    return box, home


def publish(home: Home, as_of: datetime, incremental: bool = True):
    out = build_and_publish(
        home, new_run_id(), as_of, [], datetime.now(UTC), incremental=incremental
    )
    assert out.status == "published", out.failures
    return out


def assert_equals_full_rebuild(home: Home, as_of: datetime) -> None:
    after_delta = snapshot(home.warehouse)
    publish(home, as_of, incremental=False)
    assert_same_warehouse(after_delta, snapshot(home.warehouse))


HISTORY = [
    Mail("h1", ALICE, ["ann@globex.com", "ben@globex.com"], at="2025-06-01T09:00:00"),
    Mail(
        "h2",
        "ann@globex.com",
        [ALICE],
        at="2026-04-20T09:00:00",
        names={"ann@globex.com": "Ann Lee"},
    ),
    Mail("h3", ALICE, ["cat@initech.co.uk"], cc=[BOB], at="2026-05-05T09:00:00"),
    Mail("h4", "dan@initech.co.uk", [ALICE], at="2026-03-01T09:00:00"),  # received: no record
]


def test_new_mail_is_published_incrementally_and_equals_a_full_build(tmp_path):
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    box.land_event(BOB, "ev1", "2026-06-03T10:00:00", BOB, ["ann@globex.com"])  # ahead of as_of
    first = publish(home, AS_OF)
    assert first.mode == "full" and first.fallback_reason == "no published warehouse yet"

    # A day later: a reply from Ann, mail to a brand-new contact, Bob's copy of h3.
    box.land(
        ALICE,
        [
            Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00"),
            Mail(
                "d2",
                ALICE,
                ["zoe@umbrella.io"],
                at="2026-06-01T13:00:00",
                names={"zoe@umbrella.io": "Zoe Park"},
            ),
        ],
    )
    box.land(BOB, [Mail("h3", ALICE, ["cat@initech.co.uk"], cc=[BOB], at="2026-05-05T09:00:00")])
    later = AS_OF + timedelta(days=1)
    second = publish(home, later)
    assert second.mode == "incremental", second.fallback_reason
    assert second.stats["delta_messages"] == 3
    assert second.stats["people_created"] == 1  # zoe; Bob's copy of h3 adds no one
    assert_equals_full_rebuild(home, later)


def test_time_alone_moves_metrics_exactly_as_a_full_build(tmp_path):
    """No new mail, as_of 40 days on: windows, next meeting and scores all move."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    box.land_event(BOB, "ev1", "2026-06-03T10:00:00", BOB, ["ann@globex.com"])
    publish(home, AS_OF)
    later = AS_OF + timedelta(days=40)  # ev1 is now past; h3 left the 30-day window
    out = publish(home, later)
    assert out.mode == "incremental", out.fallback_reason
    assert out.stats["people_updated"] >= 2
    assert_equals_full_rebuild(home, later)


def test_an_address_with_history_that_becomes_a_person_brings_its_past(tmp_path):
    """Dan only ever wrote in (no record); when Alice writes to him he becomes a person,
    and his earlier mail counts, found in the kept contact history, not the lake."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    box.land(ALICE, [Mail("d3", ALICE, ["dan@initech.co.uk"], at="2026-05-31T09:00:00")])
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert out.stats["people_created"] == 1
    assert out.stats["contact_history_promoted"] == 1  # h4
    assert_equals_full_rebuild(home, AS_OF)


def test_a_new_record_that_duplicates_an_existing_one_folds_into_it(tmp_path):
    """A second address for "Ann Lee" at globex.com: the new record merges into Ann's,
    her metrics take its mail, and the merge is logged, as in a full build."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    box.land(
        ALICE,
        [
            Mail(
                "d3",
                ALICE,
                ["a.lee@globex.com"],
                at="2026-05-31T09:00:00",
                names={"a.lee@globex.com": "Ann Lee"},
            )
        ],
    )
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    merges = snapshot(home.warehouse)["person_merges"]
    assert merges.height == 1
    assert_equals_full_rebuild(home, AS_OF)

    # A later run without evidence for Ann leaves her record (settled when merged) alone:
    # only Cat's is rebuilt, and the warehouse still equals a full build.
    box.land(ALICE, [Mail("d4", "cat@initech.co.uk", [ALICE], at="2026-05-31T10:00:00")])
    later = publish(home, AS_OF)
    assert later.mode == "incremental", later.fallback_reason
    assert later.stats["people_refinished"] == 1
    assert_equals_full_rebuild(home, AS_OF)


def drop_content_hashes(lake_dir: Path) -> int:
    """Rewrite the lake's mail and event files without their content hash, as files
    landed before the column are."""
    import pyarrow.parquet as pq

    files = [*lake_dir.glob("raw/messages/*/*.parquet"), *lake_dir.glob("raw/events/*/*.parquet")]
    for path in files:
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["content_hash"]), path)
    return len(files)


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "older-lake"])
def test_mail_landed_again_with_new_labels_changes_nothing_and_stays_incremental(tmp_path, hashed):
    """Starring h2 and marking h3 read re-fetch them (DESIGN §3): the same mail landed
    again; ev1 comes back unchanged in what Rapport keeps (an edited description). The
    run is incremental, adds one new mail, counts Ann's name once (not twice), and
    equals a full build of the lake. The same from an older lake, whose files have no
    content hash: the landings are then compared in full."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    box.land_event(BOB, "ev1", "2026-06-03T10:00:00", BOB, ["ann@globex.com"])
    if not hashed:
        assert drop_content_hashes(home.lake) == 2
    publish(home, AS_OF)
    box.land_event(BOB, "ev1", "2026-06-03T10:00:00", BOB, ["ann@globex.com"])
    box.land(
        ALICE,
        [
            replace(HISTORY[1], labels=["INBOX", "STARRED"]),
            replace(HISTORY[2], labels=["INBOX"]),  # (no UNREAD to drop in the sandbox)
            Mail("d1", "ann@globex.com", [ALICE], at="2026-05-31T12:00:00"),
        ],
    )
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert (out.stats["delta_messages"], out.stats["delta_events"]) == (1, 0)
    assert out.stats["relanded_unchanged"] == 3
    assert out.stats["relanded_compared_in_full"] == (0 if hashed else 3)
    tables = snapshot(home.warehouse)
    assert tables["messages"].height == len(HISTORY) + 1
    ann = tables["_rapport_name_counts"].filter(pl.col("email") == "ann@globex.com")
    # h2 names her once; h1, d1 and ev1 name no one. Counting the re-landed h2 or ev1
    # again would make 2 or 4.
    assert ann.sort("name", nulls_last=True).select("name", "n").rows() == [
        ("Ann Lee", 1),
        (None, 3),
    ]
    assert_equals_full_rebuild(home, AS_OF)


@pytest.mark.parametrize("change", ["sent", "renamed"])
def test_mail_landed_again_changed_is_redone_incrementally(tmp_path, change):
    """h4 landed again with SENT (it becomes Alice's sent mail: Dan gets a sent-mail
    interaction instead of a received one), or h2 with another name for Ann (her name
    count moves from "Ann Lee" to "Ann B. Lee"). The version the last run read goes, as
    if deleted; the new one comes in as new."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    if change == "sent":
        box.land(ALICE, [replace(HISTORY[3], labels=["SENT"])])
    else:
        box.land(ALICE, [replace(HISTORY[1], names={"ann@globex.com": "Ann B. Lee"})])
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert (out.stats["messages_changed"], out.stats["messages_deleted"]) == (1, 0)
    assert out.stats["relanded_compared_in_full"] == 1  # (its hash moved: confirmed)
    tables = snapshot(home.warehouse)
    assert tables["messages"].height == len(HISTORY)
    if change == "sent":
        h4 = tables["messages"].filter(pl.col("message_key").str.ends_with(":h4"))
        assert h4["direction"].to_list() == ["sent"]
    else:
        ann = tables["_rapport_name_counts"].filter(pl.col("name").is_not_null())
        assert ann.filter(pl.col("email") == "ann@globex.com")["name"].to_list() == ["Ann B. Lee"]
    assert_equals_full_rebuild(home, AS_OF)


def test_blocked_mail_blocks_its_thread_and_stays_incremental(tmp_path):
    """A blocklisted sender writes again: the connector lands a marker (no content) in
    thread t9, Alice's reply in t9 to a new address creates no person (its thread is
    blocked, DESIGN §4.2), a blocked meeting adds nothing, other new mail counts as
    usual. All incremental, and equal to a full build."""
    box, home = sandbox_home(tmp_path)
    box.block(ALICE, "spam@junk.io", "address")
    home.save(box.ws)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    box.land(
        ALICE,
        [
            Mail("b1", "spam@junk.io", [ALICE], thread="t9", blocked_marker=True),
            Mail("b2", ALICE, ["new@hooli.com"], thread="t9", at="2026-05-31T10:00:00"),
            Mail("d1", ALICE, ["zoe@umbrella.io"], at="2026-05-31T11:00:00"),
        ],
    )
    box.land_event(BOB, "evb", "2026-05-30T10:00:00", BOB, ["x@junk.io"], status="blocked")
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert (out.stats["delta_messages"], out.stats["delta_events"]) == (2, 0)  # b2, d1
    assert (out.stats["threads_blocked"], out.stats["people_created"]) == (1, 1)  # zoe only
    tables = snapshot(home.warehouse)
    assert "new@hooli.com" not in tables["people"]["primary_email"].to_list()
    assert tables["_rapport_blocked_threads"].rows() == [(box.account(ALICE), "t9")]
    assert_equals_full_rebuild(home, AS_OF)


def test_calendar_changes_are_published_incrementally(tmp_path):
    """Bob moves ev1 (ahead: Ann's next meeting) two days on, cancels ev2 (past, with
    Cat), Ann declines ev3, and ev4 is new. Moved, answered and cancelled meetings leave
    with the version the last run read; the new versions come in as new. Worked by hand:
    Ann's next meeting is ev1 on June 5, Cat has no meeting left, Dan (ev3) has none
    counted (he declined), and the events table holds ev1 (moved), ev3 and ev4."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    box.land_event(BOB, "ev1", "2026-06-03T10:00:00", BOB, ["ann@globex.com"])
    box.land_event(BOB, "ev2", "2026-05-20T10:00:00", BOB, ["cat@initech.co.uk"])
    box.land_event(BOB, "ev3", "2026-05-25T10:00:00", BOB, ["dan@initech.co.uk"])
    publish(home, AS_OF)
    box.land_event(BOB, "ev1", "2026-06-05T10:00:00", BOB, ["ann@globex.com"])
    box.land_event(
        BOB, "ev2", "2026-05-20T10:00:00", BOB, ["cat@initech.co.uk"], status="cancelled"
    )
    box.land_event(
        BOB,
        "ev3",
        "2026-05-25T10:00:00",
        BOB,
        ["dan@initech.co.uk"],
        declined=("dan@initech.co.uk",),
    )
    box.land_event(BOB, "ev4", "2026-05-28T10:00:00", BOB, ["ann@globex.com"])
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert (out.stats["events_removed"], out.stats["delta_events"]) == (3, 3)  # ev1-3 / 1,3,4
    tables = snapshot(home.warehouse)
    events = dict(tables["events"].select("event_key", "starts_at").rows())
    assert sorted(k.split(":")[1] for k in events) == ["ev1", "ev3", "ev4"]
    assert events[f"{box.account(BOB)}:ev1"].day == 5
    meetings = tables["interactions"].filter(pl.col("kind") == "meeting")
    assert sorted(meetings["at"].dt.day().to_list()) == [5, 28]  # ev1 (moved), ev4; no ev2/ev3
    assert_equals_full_rebuild(home, AS_OF)


@pytest.mark.parametrize("case", ["other_member", "duplicate"])
def test_a_meeting_on_two_calendars_changes_in_one(tmp_path, case):
    """The same meeting (one iCalUID) on Alice's and Bob's calendars, or twice on Bob's.
    Bob cancels his copy: Alice's stays (incremental); a duplicate on Bob's own calendar
    holds the same meeting, which the full build works out."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    owner = ALICE if case == "other_member" else BOB
    box.land_event(owner, "evA", "2026-05-20T10:00:00", BOB, ["ann@globex.com"], ical_uid="m@x")
    box.land_event(BOB, "evB", "2026-05-20T10:00:00", BOB, ["ann@globex.com"], ical_uid="m@x")
    publish(home, AS_OF)
    box.land_event(
        BOB,
        "evB",
        "2026-05-20T10:00:00",
        BOB,
        ["ann@globex.com"],
        ical_uid="m@x",
        status="cancelled",
    )
    out = publish(home, AS_OF)
    if case == "other_member":
        assert out.mode == "incremental", out.fallback_reason
        meetings = snapshot(home.warehouse)["interactions"].filter(pl.col("kind") == "meeting")
        assert meetings["account_id"].to_list() == [box.account(ALICE)]
    else:
        reason = "a deleted or changed event shares its meeting with another event"
        assert (out.mode, out.fallback_reason) == ("full", reason)
    assert_equals_full_rebuild(home, AS_OF)


def test_changes_on_two_calendars_leave_the_other_copies_alone(tmp_path):
    """Meeting m@x with Ann is on Alice's and Bob's calendars. In one delta Alice's copy
    is cancelled and Bob moves another meeting, with Cat, from the 22nd to the 23rd.
    Bob's copy of m@x is his (meeting rows are one per member, person and meeting), so
    the run stays incremental. Worked by hand: Ann keeps one meeting row, Bob's, on the
    20th; Cat's row is on the 23rd. (The check used to match Bob's copy to Alice's
    cancelled one, ignoring whose each was, and hand the run to the full build.)"""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    for owner, eid in ((ALICE, "evA"), (BOB, "evB")):
        box.land_event(owner, eid, "2026-05-20T10:00:00", BOB, ["ann@globex.com"], ical_uid="m@x")
    box.land_event(BOB, "evC", "2026-05-22T10:00:00", BOB, ["cat@initech.co.uk"])
    publish(home, AS_OF)
    box.land_event(
        ALICE,
        "evA",
        "2026-05-20T10:00:00",
        BOB,
        ["ann@globex.com"],
        ical_uid="m@x",
        status="cancelled",
    )
    box.land_event(BOB, "evC", "2026-05-23T10:00:00", BOB, ["cat@initech.co.uk"])
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert out.stats["events_removed"] == 2  # evA, and evC's old version
    tables = snapshot(home.warehouse)
    emails = dict(tables["people"].select("person_id", "primary_email").rows())
    meetings = tables["interactions"].filter(pl.col("kind") == "meeting")
    rows = sorted(
        (emails[p], a, at.day)
        for p, a, at in meetings.select("person_id", "account_id", "at").rows()
    )
    assert rows == [
        ("ann@globex.com", box.account(BOB), 20),
        ("cat@initech.co.uk", box.account(BOB), 23),
    ]
    assert_equals_full_rebuild(home, AS_OF)


def test_deleted_mail_is_taken_back_out_incrementally(tmp_path):
    """Ann's only named mail (h2) and the mail to Ben (h1) are deleted at the provider,
    one new mail to Ann arrives. Worked by hand: messages h3, h4, d1; Ann keeps her
    record and name (records are durable) but her name is counted by no mail now; her
    last use is d1; Ben's is gone with h1; Ben keeps his record with no interactions."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    box.land(BOB, [HISTORY[2]])  # Bob's copy of h3: another member's copy stays
    publish(home, AS_OF)
    box.delete(ALICE, "h1")
    box.delete(ALICE, "h2")
    box.delete(ALICE, "never-landed")  # added and deleted between two syncs: no-op
    box.land(ALICE, [Mail("d1", ALICE, ["ann@globex.com"], at="2026-05-30T09:00:00")])
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert (out.stats["messages_deleted"], out.stats["delta_messages"]) == (2, 1)
    tables = snapshot(home.warehouse)
    keys = sorted(k.split(":")[1] for k in tables["messages"]["message_key"])
    assert keys == ["d1", "h3", "h3", "h4"]
    counts = tables["_rapport_name_counts"].filter(pl.col("email") == "ann@globex.com")
    assert counts.select("name", "n").rows() == [(None, 1)]  # d1 only
    last = dict(tables["_rapport_last_used"].rows())
    assert "ben@globex.com" not in last and last["ann@globex.com"].day == 30
    people = dict(tables["people"].select("primary_email", "name").rows())
    assert people["ann@globex.com"] == "Ann Lee" and "ben@globex.com" in people
    ben = tables["people"].filter(pl.col("primary_email") == "ben@globex.com")["person_id"]
    assert tables["interactions"].filter(pl.col("person_id").is_in(ben.implode())).is_empty()
    assert_equals_full_rebuild(home, AS_OF)


@pytest.mark.parametrize(
    ("deleted", "last_day", "redone"),
    [("z2", 28, 0), ("z3", 20, 2)],
    ids=["between", "last"],
)
def test_a_deleted_mail_is_counted_out(tmp_path, deleted, last_day, redone):
    """Alice wrote to Zed on May 10, 20 and 28 (as_of June 1); one mail is deleted.
    Worked by hand: mail in the last 30 days goes from 3 to 2, for Zed and his company.
    The mail of the 20th held neither his first nor his last time: both are kept and
    nothing is redone from all rows. The mail of the 28th held the last: it is found
    again (the 20th) among the rows that stay, for Zed and for his company."""
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    days = {"z1": 10, "z2": 20, "z3": 28}
    box.land(
        ALICE,
        [Mail(m, ALICE, ["zed@zenith.io"], at=f"2026-05-{d}T09:00:00") for m, d in days.items()],
    )
    publish(home, AS_OF)
    box.delete(ALICE, deleted)
    out = publish(home, AS_OF)
    assert out.mode == "incremental", out.fallback_reason
    assert (out.stats["messages_deleted"], out.stats["activity_redone"]) == (1, redone)
    tables = snapshot(home.warehouse)
    zed = tables["people"].filter(pl.col("primary_email") == "zed@zenith.io")
    person = tables["_rapport_person_activity"].join(zed.select("person_id"), on="person_id")
    company = tables["_rapport_company_activity"].join(zed.select("company_id"), on="company_id")
    for activity in (person, company):
        row = activity.row(0, named=True)
        assert (row["first_email_at"].day, row["last_email_at"].day) == (10, last_day)
        assert row["last_interaction_at"].day == last_day
        assert (row["emails_30d"], row["emails_365d"]) == (2, 2)
    assert_equals_full_rebuild(home, AS_OF)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("second_copy", "deleted mail has another copy for its member"),
        ("marker", "the delta deletes hidden mail"),
    ],
)
def test_deletes_the_delta_path_leaves_to_the_full_build(tmp_path, case, reason):
    """Alice holds h3 in two mailboxes (one interaction row per source): deleting one
    copy would change the kept row. A deleted blocklist marker may unblock its thread."""
    from flows.workspace import Account, account_id_for

    box, home = sandbox_home(tmp_path)
    home_mail = "alice@home-mail.io"
    alice = box.ws.members[0].member_id
    box.ws.accounts.append(Account(account_id_for("google", home_mail), alice, "google", home_mail))
    home.save(box.ws)
    box.land(ALICE, HISTORY)
    box.land(home_mail, [HISTORY[2]])
    box.land(ALICE, [Mail("b1", "spam@junk.io", [ALICE], thread="h1", blocked_marker=True)])
    publish(home, AS_OF)
    box.delete(ALICE, "h3" if case == "second_copy" else "b1")
    out = publish(home, AS_OF)
    assert (out.mode, out.fallback_reason) == ("full", reason)
    assert_equals_full_rebuild(home, AS_OF)


def test_a_source_hash_shared_with_a_deleted_source_falls_back_to_the_full_build(tmp_path):
    """Deleted mail's rows are taken out of the redone sums and times by (member, hash of
    the source key) alone, which is exact only if no other stored source has that hash.
    A collision is made here by hand: h3's rows get the hash of h1's key. Deleting h1
    must then not take h3's rows out: the run leaves it to the full build."""
    import duckdb

    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    with duckdb.connect(str(home.warehouse)) as con:
        # (a mail's source key: its Message-ID, else its message key; metrics.source_key)
        sources = dict(
            con.execute(
                "SELECT split_part(message_key, ':', 2),"
                " coalesce(nullif(trim(rfc_message_id), ''), message_key) FROM messages"
            ).fetchall()
        )
        h1, h3 = sources["h1"], sources["h3"]
        assert con.execute(
            "SELECT count(*) FROM interactions WHERE source_key = ?", [h3]
        ).fetchall()[0][0]
        con.execute("UPDATE interactions SET source_hash = hash(?) WHERE source_key = ?", [h1, h3])
    box.delete(ALICE, "h1")
    out = publish(home, AS_OF)
    assert (out.mode, out.fallback_reason) == ("full", "two sources' keys have the same hash")
    assert_equals_full_rebuild(home, AS_OF)


@pytest.mark.parametrize(
    "change, reason",
    [
        ("settings", "settings, accounts or blocklist changed"),
        ("earlier", "as_of is earlier than the published run's"),
    ],
)
def test_what_the_delta_path_cannot_do_exactly_falls_back_to_a_full_build(tmp_path, change, reason):
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    box.land_event(BOB, "ev1", "2026-06-03T10:00:00", BOB, ["ann@globex.com"])
    publish(home, AS_OF)
    as_of = AS_OF
    if change == "settings":
        with home.editing() as ws:
            ws.extra_free_mail_domains.append("globex.com")
    else:
        as_of = AS_OF - timedelta(days=1)
    out = publish(home, as_of)
    assert (out.mode, out.fallback_reason) == ("full", reason)
    assert_equals_full_rebuild(home, as_of)


addresses = [
    "ann@globex.com",
    "ben@globex.com",
    "cat@initech.co.uk",
    "new1@hooli.com",
    "new2@hooli.com",
    "eve@gmail.com",
    "ann.lee@globex.com",  # same name as ann@globex.com on the same domain: one person
    "ann.lee@hooli.com",  # ... and her address at another company
]
# Display names: the same full name on one company domain makes a dedup merge (§4.5).
display_names = {
    "ann@globex.com": "Ann Lee",
    "ann.lee@globex.com": "Ann Lee",
    "ann.lee@hooli.com": "Ann Lee",
    "new1@hooli.com": "Dan Ho",
}


@settings(
    max_examples=int(os.environ.get("RAPPORT_SEQUENCE_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    deltas=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from([ALICE, BOB]),  # mailbox
                st.booleans(),  # sent by the owner?
                st.lists(st.sampled_from(addresses), min_size=1, max_size=3),
                st.integers(0, 72),  # hours after the previous as_of
                # or land one again, a blocklist marker in its thread, or delete it
                st.sampled_from(
                    ["new", "starred", "sent", "marker", "delete", "meet", "move", "cancel"]
                ),
            ),
            max_size=4,
        ),
        min_size=1,
        max_size=3,
    ),
    step_days=st.lists(st.sampled_from([0, 1, 31, 200]), min_size=3, max_size=3),
)
def test_any_sequence_of_deltas_equals_a_full_build(deltas, step_days):
    with tempfile.TemporaryDirectory() as d:
        box, home = sandbox_home(Path(d))
        box.land(ALICE, HISTORY)
        # each calendar's last meeting, to move or cancel
        meetings: dict[str, tuple[str, datetime, list[str]]] = {
            ALICE: ("ea", AS_OF - timedelta(days=3), ["ann@globex.com", "cat@initech.co.uk"]),
            BOB: ("eb", AS_OF + timedelta(days=2), ["ben@globex.com"]),
        }
        for owner, (event_id, start, guests) in meetings.items():
            box.land_event(owner, event_id, f"{start:%Y-%m-%dT%H:%M:%S}", owner, guests)
        as_of = AS_OF
        publish(home, as_of)
        n = 0
        landed = {ALICE: HISTORY[1]}  # each mailbox's last mail, to land again
        for delta, days in zip(deltas, step_days, strict=False):
            for owner, sent, others, hours, what in delta:
                start = as_of + timedelta(hours=hours - 48)
                if what == "meet" or (what in ("move", "cancel") and owner not in meetings):
                    n += 1
                    meetings[owner] = (f"e{n}", start, others)
                    box.land_event(owner, f"e{n}", f"{start:%Y-%m-%dT%H:%M:%S}", owner, others)
                    continue
                if what in ("move", "cancel"):  # moved a day on, or cancelled
                    event_id, was, guests = meetings[owner]
                    moved = was + timedelta(days=1)
                    status = "cancelled" if what == "cancel" else "confirmed"
                    when = f"{moved:%Y-%m-%dT%H:%M:%S}"
                    box.land_event(owner, event_id, when, owner, guests, status=status)
                    if what == "cancel":
                        del meetings[owner]
                    else:
                        meetings[owner] = (event_id, moved, guests)
                    continue
                if what == "delete" and owner in landed:  # deleted at the provider
                    box.delete(owner, landed.pop(owner).id)
                    continue
                if what == "marker" and owner in landed:  # blocked mail in that thread
                    n += 1
                    thread = landed[owner].thread or landed[owner].id
                    blocked = Mail(f"x{n}", "spam@junk.io", [owner], blocked_marker=True)
                    box.land(owner, [replace(blocked, thread=thread)])
                    continue
                if what != "new" and owner in landed:  # a label change re-fetches it
                    label = "STARRED" if what == "starred" else "SENT"
                    again = replace(landed[owner], labels=[*landed[owner].labels, label])
                    box.land(owner, [again])
                    continue
                n += 1
                at = (as_of + timedelta(hours=hours - 48)).strftime("%Y-%m-%dT%H:%M:%S")
                mail = (
                    Mail(f"x{n}", owner, others, at=at, names=display_names)
                    if sent
                    else Mail(f"x{n}", others[0], [owner, *others[1:]], at=at, names=display_names)
                )
                box.land(owner, [mail])
                landed[owner] = mail
            as_of = as_of + timedelta(days=days)
            publish(home, as_of)
        assert_equals_full_rebuild(home, as_of)


class Crash(BaseException):
    """A process death: nothing in the pipeline may catch it."""


@pytest.mark.parametrize("crash_in", ["apply", "swap"])
def test_a_crash_in_an_incremental_publish_then_a_rerun_equals_a_clean_run(
    tmp_path, monkeypatch, crash_in
):
    import warehouse.delta as delta_mod
    import warehouse.publish as publish_mod

    delta = [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")]
    snaps = []
    for crash in (False, True):
        box, home = sandbox_home(tmp_path / str(crash))
        box.land(ALICE, HISTORY)
        publish(home, AS_OF)
        box.land(ALICE, delta)
        if crash:
            before = snapshot(home.warehouse)
            target, name = (
                (delta_mod, "insert_frame") if crash_in == "apply" else (publish_mod.os, "replace")
            )
            with monkeypatch.context() as m:
                m.setattr(target, name, lambda *a, **k: (_ for _ in ()).throw(Crash(crash_in)))
                with pytest.raises(Crash):
                    publish(home, AS_OF + timedelta(hours=1))
            assert_same_warehouse(before, snapshot(home.warehouse))  # live file untouched
        out = publish(home, AS_OF + timedelta(hours=1))
        assert out.mode == "incremental", out.fallback_reason
        assert not list(home.root.glob(".*.building*"))  # no half-built copy left behind
        snaps.append(snapshot(home.warehouse))
    assert_same_warehouse(*snaps)


def test_the_gate_checks_an_incremental_run_and_a_failure_publishes_nothing(tmp_path, monkeypatch):
    import hashlib

    import polars as pl

    import transforms.incremental as incremental

    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    before = hashlib.sha256(home.warehouse.read_bytes()).hexdigest()
    box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])
    real = incremental.build_delta

    def orphaned(*args, **kwargs):
        staged = real(*args, **kwargs)
        rows = staged.gate_tables["interactions"].with_columns(person_id=pl.lit("per_ghost"))
        staged.gate_tables["interactions"] = rows
        staged.append["interactions"] = rows
        return staged

    monkeypatch.setattr(incremental, "build_delta", orphaned)
    out = build_and_publish(home, new_run_id(), AS_OF, [], datetime.now(UTC))
    assert (out.mode, out.status) == ("incremental", "failed_expectations")
    assert {f["table"] for f in out.failures} == {"interactions_person_missing"}
    assert hashlib.sha256(home.warehouse.read_bytes()).hexdigest() == before
    assert not list(home.root.glob(".*.building*"))


def test_an_error_in_the_incremental_path_falls_back_to_a_full_build(tmp_path, monkeypatch):
    import transforms.incremental as incremental

    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(incremental, "build_delta", broken)
    out = publish(home, AS_OF)
    assert out.mode == "full"
    assert out.fallback_reason == "incremental build failed (ValueError: a bug)"
    assert not list(home.root.glob(".*.building*"))
    assert_equals_full_rebuild(home, AS_OF)


@pytest.mark.parametrize(
    "dropped",
    ["_rapport_build", "_rapport_last_used", "people"],
    ids=["no-build-row", "a-state-file-missing", "a-mirrored-file-missing"],
)
def test_a_warehouse_without_its_build_state_is_rebuilt_in_full(tmp_path, dropped):
    """The state's tables are not listed before they are read: a warehouse from before
    the build state, or one missing a file of its state, still ends in a full build."""
    import duckdb

    from warehouse.state import KEPT_TABLES, state_root

    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    if dropped in KEPT_TABLES:
        [generation] = state_root(home.warehouse).iterdir()
        (generation / f"{dropped}.arrow").unlink()
    else:
        with duckdb.connect(str(home.warehouse)) as con:
            con.execute(f"DROP TABLE {dropped}")
    box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])
    out = publish(home, AS_OF)
    assert out.mode == "full"
    assert out.fallback_reason == "the warehouse holds no build state"
    assert not list(home.root.glob(".*.building*"))
    assert_equals_full_rebuild(home, AS_OF)


def test_a_warehouse_missing_a_table_fails_the_run_and_a_full_build_repairs_it(tmp_path):
    """A table dropped from the published file by hand: the incremental run's write to it
    fails, so nothing is published (the live file stays as it is) and the error names
    the table; a full build (`RAPPORT_INCREMENTAL=0 rapport sync`) writes a whole file
    again."""
    import duckdb

    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    with duckdb.connect(str(home.warehouse)) as con:
        con.execute("DROP TABLE _rapport_person_activity")
    before = home.warehouse.read_bytes()
    box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])
    with pytest.raises(duckdb.CatalogException, match="_rapport_person_activity"):
        publish(home, AS_OF)
    assert home.warehouse.read_bytes() == before
    assert not list(home.root.glob(".*.building*"))
    publish(home, AS_OF, incremental=False)
    tables = snapshot(home.warehouse)
    assert tables["person_metrics"].height == tables["people"].height > 0
    assert_equals_full_rebuild(home, AS_OF)


def test_a_later_run_without_new_mail_writes_no_record_rows(tmp_path):
    """What an incremental run writes follows the delta: with no new mail and no stored
    interaction crossing a window edge, no person, company, sum or activity row is
    rewritten, although every score has decayed (scores are views over fixed sums)."""
    from flows.engine import _stage_delta, workspace_frames
    from transforms.incremental import fingerprint

    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    before = snapshot(home.warehouse)["connections"]
    later = AS_OF + timedelta(minutes=15)  # no HISTORY mail is within 15 min of an edge
    frames = workspace_frames(home.load(), later)
    run = _stage_delta(home, frames, fingerprint(frames), new_run_id())
    assert not isinstance(run, str), run
    try:
        written = {name: u.rows.height for name, u in run.staged.upsert.items()}
        gone = {
            name: 0 if u.gone is None else u.gone.height for name, u in run.staged.upsert.items()
        }
        assert set(written.values()) == {0}, written
        assert set(gone.values()) == {0}, gone
        assert all(f.is_empty() for f in run.staged.append.values())
    finally:
        run.discard()
    publish(home, later)
    after = snapshot(home.warehouse)["connections"]
    assert after.height == before.height > 0
    assert (after["score"] < before["score"]).all()  # 15 minutes of decay, nothing stored
    assert_equals_full_rebuild(home, later)


def test_a_gmail_label_change_synced_from_the_simulator_is_published_incrementally(tmp_path):
    """End to end: starring a mail and marking another read in Gmail (history records
    labelsAdded / labelsRemoved) re-fetch both through the real client; the publish stays
    incremental, adds no message, and equals a full build."""
    from connectors.simulators.google import GoogleSimulator
    from tests.mailbox import connect, run_pipeline, sim_mail

    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        connect(home, sim, ALICE)
        box = sim.mailbox(ALICE)
        box.add_messages(
            [
                sim_mail(1, f"<{ALICE}>", ["ann@globex.com"], labels=["SENT"]),
                sim_mail(2, "Ann Lee <ann@globex.com>", [ALICE], labels=["INBOX", "UNREAD"]),
            ]
        )
        run_pipeline(home)
        box.modify_labels(f"{1:016x}", add=["STARRED"])
        box.modify_labels(f"{2:016x}", remove=["UNREAD"])
        results, out = run_pipeline(home)
        gmail = [r for r in results if r.stream == "gmail"][0]
        assert (gmail.mode, gmail.landed) == ("incremental", 2)
        assert out.mode == "incremental", out.fallback_reason
        assert (out.stats["relanded_unchanged"], out.stats["delta_messages"]) == (2, 0)
        # the client's two fetches of each mail hash alike: told apart by hash alone
        assert out.stats["relanded_compared_in_full"] == 0
        assert snapshot(home.warehouse)["messages"].height == 2
        assert_equals_full_rebuild(home, AS_OF)


def test_an_outlook_read_state_change_and_a_removal_are_published_incrementally(tmp_path):
    """End to end through msal and Graph delta: reading a mail in Outlook makes the next
    delta return it as updated, so the connector lands it again; the publish stays
    incremental and equals a full build."""
    from dataclasses import replace as with_fields

    from connectors.simulators.microsoft import MicrosoftSimulator
    from tests.mailbox import connect_microsoft, run_pipeline, sim_mail

    carol = "carol@acme-team.io"
    with MicrosoftSimulator() as sim:
        home = Home(tmp_path / "data")
        box = connect_microsoft(home, sim, carol)
        unread = sim_mail(1, "Ann Lee <ann@globex.com>", [carol], labels=["INBOX", "UNREAD"])
        box.add_message(unread)
        box.add_message(sim_mail(2, f"<{carol}>", ["ben@globex.com"], labels=["SENT"]))
        run_pipeline(home)
        box.add_message(with_fields(unread, label_ids=["INBOX"]))  # isRead: true
        results, out = run_pipeline(home)
        mail = [r for r in results if r.stream == "outlook_mail"][0]
        assert (mail.mode, mail.landed) == ("incremental", 1)
        assert out.mode == "incremental", out.fallback_reason
        assert (out.stats["relanded_unchanged"], out.stats["delta_messages"]) == (1, 0)
        assert out.stats["relanded_compared_in_full"] == 0
        assert_equals_full_rebuild(home, AS_OF)
        # Then she files it away (out of the Inbox: '@removed' in the delta): the mail
        # leaves the warehouse, still incrementally.
        box.delete_message(unread.id)
        results, out = run_pipeline(home)
        assert [r.deleted for r in results if r.stream == "outlook_mail"] == [1]
        assert out.mode == "incremental", out.fallback_reason
        assert out.stats["messages_deleted"] == 1
        assert snapshot(home.warehouse)["messages"].height == 1
        assert_equals_full_rebuild(home, AS_OF)


def test_calendar_changes_synced_from_the_simulator_are_published_incrementally(tmp_path):
    """End to end through the Calendar API (syncToken deltas): Alice moves a meeting a
    day on, cancels another, and cancels one week of a weekly series; the publish stays
    incremental and equals a full build."""
    from dataclasses import replace as with_fields

    from connectors.simulators.gcalendar import calendar_store
    from connectors.simulators.google import GoogleSimulator
    from connectors.simulators.model import SimAttendee, SimEvent
    from tests.mailbox import connect, run_pipeline

    hour, day = 3_600_000, 86_400_000
    t0 = int(datetime(2026, 5, 18, 10, tzinfo=UTC).timestamp() * 1000)

    def meeting(eid: str, start: int, guest: str, **kw) -> SimEvent:
        guests = [SimAttendee(ALICE, "Alice", "accepted", organizer=True), SimAttendee(guest)]
        return SimEvent(
            eid, f"{eid}@cal", f"Meeting {eid}", start, start + hour, ALICE, attendees=guests, **kw
        )

    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        connect(home, sim, ALICE)
        cal = calendar_store(sim, ALICE)
        moved = meeting("m1", t0 + 15 * day, "ann@globex.com")  # ahead of as_of
        cal.add_event(moved)
        cal.add_event(meeting("m2", t0, "cat@initech.co.uk"))
        cal.add_event(meeting("s1", t0 + day, "ben@globex.com", rrule="FREQ=WEEKLY;COUNT=3"))
        run_pipeline(home)
        cal.update_event(
            with_fields(moved, start_ms=moved.start_ms + day, end_ms=moved.end_ms + day)
        )
        cal.cancel_event("m2")
        cal.cancel_occurrence("s1", t0 + 8 * day)
        results, out = run_pipeline(home)
        assert [r.mode for r in results if r.stream == "gcalendar"] == ["incremental"]
        assert out.mode == "incremental", out.fallback_reason
        assert out.stats["events_removed"] == 3  # m1 as it was, m2, the second week of s1
        events = snapshot(home.warehouse)["events"]
        assert events.height == 3  # m1 (moved), s1 weeks one and three
        assert_equals_full_rebuild(home, AS_OF)
