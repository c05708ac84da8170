"""The pieces the incremental build uses to write only what changed (issue 7)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
from polars.testing import assert_frame_equal

from connectors.lake import (
    ATTENDEE_SCHEMA,
    EVENT_SCHEMA,
    MESSAGE_SCHEMA,
    PARTICIPANT_SCHEMA,
    content_hashes,
)
from transforms.events import EVENTS_SCHEMA, events_table
from transforms.incremental import (
    INTERACTION_KEY,
    RELANDED_MAIL,
    Removed,
    changed_items,
    changed_rows,
    upcoming_change,
)
from transforms.records import address_keys, touched_people
from warehouse.state import STATE_SCHEMAS


def test_changed_rows_are_new_or_changed_rows_and_the_keys_that_went():
    old = pl.DataFrame(
        {
            "k": ["a", "b", "c", None],
            "n": [1, 2, 3, 4],
            "tags": [["x"], ["y"], [], None],
        }
    )
    new = pl.DataFrame(
        {
            "k": ["a", "b", None, "d"],  # a same, b changed list, c gone, null key changed, d new
            "n": [1, 2, 5, 6],
            "tags": [["x"], ["y", "z"], None, ["w"]],
        }
    )
    out = changed_rows(new, old, ["k"])
    assert_frame_equal(out.rows.sort("k", nulls_last=True), new[[1, 3, 2]])
    assert out.gone.to_series().to_list() == ["c"]
    # What the table is after deleting those keys and inserting the rows: `new`.
    deleted = old.join(out.delete_keys(), on="k", how="anti", nulls_equal=True)
    assert_frame_equal(
        pl.concat([deleted, out.rows]).sort("k", nulls_last=True),
        new.sort("k", nulls_last=True),
    )


def test_the_upcoming_change_turns_the_stored_meetings_into_the_runs():
    def meetings(rows: list[tuple[str, str | None, str, int]]) -> pl.DataFrame:
        """Upcoming-meeting rows as the state keeps them (no company here)."""
        names = ["member_id", "person_id", "source_key", "day"]
        by_column = dict(zip(names, zip(*rows, strict=True), strict=True))
        at = [datetime(2026, 1, d, tzinfo=UTC) for d in by_column.pop("day")]
        return pl.DataFrame({**by_column, "at": at, "company_id": [None] * len(rows)}).select(
            [pl.col(c).cast(t) for c, t in STATE_SCHEMAS["_rapport_upcoming_meetings"].items()]
        )

    stored = meetings(
        [
            ("m1", "p1", "ev1", 3),  # passed by the new as_of (the 5th): goes
            ("m1", "p2", "ev2", 8),  # still ahead: stays
            ("m2", None, "ev3", 9),  # still ahead, its event cancelled: goes
            ("m2", "p3", "ev4", 9),  # moved: its event removed and landed again
        ]
    )
    ahead = pl.col("at") > datetime(2026, 1, 5, tzinfo=UTC)
    still = stored.filter(ahead)
    removed = dataclasses.replace(
        Removed.nothing(),
        sources=pl.DataFrame({"member_id": ["m2", "m2"], "source_key": ["ev3", "ev4"]}),
    )
    kept = removed.drop_rows(still)
    new = meetings([("m1", "p4", "ev5", 20), ("m2", "p3", "ev4", 12)])
    change = upcoming_change(stored, still, kept, new, ahead)
    # Applied as the state writer applies an upsert: the run's upcoming meetings, which
    # comparing every row (changed_rows) also leads to.
    after = stored.join(change.delete_keys(), on=INTERACTION_KEY, how="anti", nulls_equal=True)
    expected = pl.concat([kept, new])
    by = ["member_id", "source_key"]
    assert_frame_equal(pl.concat([after, change.rows]).sort(by), expected.sort(by))
    assert sorted(change.gone.rows(), key=str) == sorted(
        [("m1", "p1", "ev1"), ("m2", None, "ev3"), ("m2", "p3", "ev4")], key=str
    )
    assert change.stored.rows() == [("m2", "p3", "ev4")]
    compared = changed_rows(expected, stored, INTERACTION_KEY)
    assert_frame_equal(compared.rows.sort(by), change.rows.sort(by))


def test_address_keys_from_a_cache_equal_keys_computed_afresh():
    addresses = pl.Series(["Ann.Lee@GMAIL.com", "bob+news@acme.io", "not-an-address", None])
    fresh = address_keys(addresses)
    assert dict(fresh.iter_rows()) == {
        "Ann.Lee@GMAIL.com": "annlee@gmail.com",
        "bob+news@acme.io": "bob@acme.io",
        "not-an-address": None,
    }
    cache = fresh.filter(pl.col("address") == "bob+news@acme.io")
    assert_frame_equal(address_keys(addresses, cache), fresh)
    # A cache entry is believed (it is the pipeline's own earlier answer), not re-derived.
    stale = pl.DataFrame({"address": ["bob+news@acme.io"], "canonical_key": ["cached@acme.io"]})
    assert address_keys(addresses, stale).filter(pl.col("address") == "bob+news@acme.io")[
        "canonical_key"
    ].to_list() == ["cached@acme.io"]


def test_touched_people_are_those_with_new_evidence():
    people = pl.DataFrame(
        {
            "person_id": ["p1", "p2", "p3"],
            "email_addresses": [
                ["ann@globex.com", "a.lee@globex.com"],
                ["bo@initech.com"],
                ["cy@x.io"],
            ],
        }
    )
    evidence = pl.Series(["a.lee@globex.com", "new@umbrella.io"])
    out = touched_people(people, evidence, None)
    assert out.person_ids.to_list() == ["p1"]  # p2, p3: no evidence
    assert sorted(out.keys.to_list()) == ["a.lee@globex.com", "ann@globex.com", "new@umbrella.io"]


def test_changed_rows_among_compares_only_the_given_keys():
    old = pl.DataFrame({"k": ["a", "b", "c"], "n": [1, 2, 3]})
    new = pl.DataFrame({"k": ["a", "b", "d"], "n": [9, 2, 4]})
    out = changed_rows(new, old, ["k"], among=pl.DataFrame({"k": ["a", "b"]}))
    assert out.rows.to_dicts() == [{"k": "a", "n": 9}]  # d and c lie outside: not compared
    assert out.gone.is_empty()


def test_a_run_without_event_files_reads_the_same_empty_frames_as_the_pipeline():
    """read_events skips its pipeline when there are no files (most incremental runs);
    the frames it returns must be what the pipeline gives for no rows."""
    from transforms.events import current_events
    from transforms.pipeline import current_participants, read_events, scan_files
    from transforms.rules import with_internal_flag

    raw = current_events(scan_files([], "events")).collect().with_row_index("_mid")
    att = current_participants(
        scan_files([], "attendees").rename({"event_id": "message_id"}),
        raw.lazy().rename({"event_id": "message_id"}),
    )
    att = with_internal_flag(att, ["a@acme.io"], ["acme.io"]).rename({"message_id": "event_id"})
    events, blocked, attendees = read_events([], [], ["a@acme.io"], ["acme.io"])
    assert_frame_equal(events, raw.filter(~pl.col("blocked")))
    assert_frame_equal(blocked, raw.filter(pl.col("blocked")))
    assert_frame_equal(attendees, att.collect())


def test_a_run_without_quarantine_files_reads_the_same_empty_frame_as_the_pipeline():
    from transforms.current import latest_versions
    from transforms.pipeline import read_quarantine, scan_files

    quarantine = scan_files([], "quarantine").with_columns(seq=pl.lit(0, pl.Int32))
    expected = latest_versions(quarantine, ["account_id", "item_id"]).collect()
    assert_frame_equal(read_quarantine([]), expected)


def _landing(labels: list[str], fetched: int, parts: list[tuple[str, str, str | None]]):
    """One landed mail as (message rows, participant rows), raw lake columns."""
    msg = {name: None for name in MESSAGE_SCHEMA.names}
    msg |= {
        "account_id": "a1",
        "message_id": "m1",
        "op": "upsert",
        "blocked": False,
        "subject": "hello",
        "labels": labels,
        "fetched_at": datetime(2026, 6, 1, fetched, tzinfo=UTC),
        "version": fetched,
        "seq": 0,
    }
    key = {"account_id": "a1", "message_id": "m1", "version": fetched}
    rows = [key | {"role": r, "address": a, "name": n} for r, a, n in parts]
    return (
        pl.from_arrow(pa.Table.from_pylist([msg], MESSAGE_SCHEMA)),
        pl.from_arrow(pa.Table.from_pylist(rows, PARTICIPANT_SCHEMA)),
    )


def same(was, now) -> bool:
    return changed_items(RELANDED_MAIL, was, now).is_empty()


def test_a_relanding_is_the_same_mail_when_only_labels_other_than_sent_moved():
    parts = [("from", "ann@globex.com", "Ann"), ("to", "a@acme.io", None), ("to", "b@x.io", None)]
    was = _landing(["INBOX", "UNREAD"], 1, parts)
    assert same(was, _landing(["INBOX", "STARRED"], 2, parts))  # fetched later too
    # SENT decides the direction; the order of `to` is the order of `to_emails`.
    assert not same(was, _landing(["INBOX", "SENT"], 2, parts))
    assert not same(was, _landing(["INBOX"], 2, [parts[0], parts[2], parts[1]]))
    assert not same(was, _landing(["INBOX"], 2, [("from", "ann@globex.com", "A")]))
    renamed = [("from", "ann@globex.com", "Ann Lee"), *parts[1:]]
    assert not same(was, _landing(["INBOX"], 2, renamed))


def same_hash(was, now) -> bool:
    return content_hashes("messages", *was).equals(content_hashes("messages", *now))


def test_the_content_hash_of_a_relanding_agrees_with_the_full_comparison():
    """The incremental build takes equal hashes as the same mail (reading one column of
    the earlier landing): every case of the test above, decided by the hash alone."""
    parts = [("from", "ann@globex.com", "Ann"), ("to", "a@acme.io", None), ("to", "b@x.io", None)]
    was = _landing(["INBOX", "UNREAD"], 1, parts)
    renamed = [("from", "ann@globex.com", "Ann Lee"), *parts[1:]]
    cases = [
        _landing(["INBOX", "STARRED"], 2, parts),
        _landing(["INBOX", "SENT"], 2, parts),
        _landing(["INBOX"], 2, [parts[0], parts[2], parts[1]]),
        _landing(["INBOX"], 2, [("from", "ann@globex.com", "A")]),
        _landing(["INBOX"], 2, renamed),
        _landing(["INBOX"], 2, []),
    ]
    assert [same_hash(was, now) for now in cases] == [same(was, now) for now in cases]
    assert [same_hash(was, now) for now in cases] == [True, False, False, False, False, False]
    subject = (was[0].with_columns(subject=pl.lit("hello again")), was[1])
    assert not same_hash(was, subject)


def test_the_content_hash_of_an_event_moves_with_its_time_and_its_answers():
    def landing(starts: int, fetched: int, answer: str):
        event = {name: None for name in EVENT_SCHEMA.names}
        event |= {
            "account_id": "a1",
            "event_id": "e1",
            "op": "upsert",
            "status": "confirmed",
            "starts_at": datetime(2026, 6, 1, starts, tzinfo=UTC),
            "fetched_at": datetime(2026, 6, 2, fetched, tzinfo=UTC),
            "version": fetched,
            "seq": 0,
        }
        who = {"account_id": "a1", "event_id": "e1", "version": fetched, "role": "attendee"}
        people = [who | {"address": "ann@globex.com", "response_status": answer}]
        return content_hashes(
            "events",
            pl.from_arrow(pa.Table.from_pylist([event], EVENT_SCHEMA)),
            pl.from_arrow(pa.Table.from_pylist(people, ATTENDEE_SCHEMA)),
        ).item()

    was = landing(9, 1, "needsAction")
    assert landing(9, 2, "needsAction") == was  # fetched again: the same event
    assert landing(10, 2, "needsAction") != was  # moved
    assert landing(9, 2, "accepted") != was  # an RSVP


def test_no_events_make_an_empty_events_table_of_the_contract_schema() -> None:
    # (a run without calendar items appends this, full or incremental)
    no_events = pl.DataFrame(schema={"account_id": pl.String, "event_id": pl.String})
    table = events_table(no_events, pl.DataFrame(schema={"event_id": pl.String}))
    assert_frame_equal(table, pl.DataFrame(schema=EVENTS_SCHEMA))
