"""File import (mbox, .eml folder, .ics) against handwritten exports in tests/data/.

Expected values are read off the fixtures by hand; ids follow the documented scheme
(sha1(RFC Message-ID)[:24], sha1(UID + occurrence start in UTC ISO)[:24]).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from connectors import files, lake
from connectors.files import detect_kind, import_paths
from connectors.mailparse import Blocklist

DATA = Path(__file__).resolve().parents[1] / "data"
MBOX = DATA / "import.mbox"
EML = DATA / "eml"
ICS = DATA / "calendar.ics"
ACCOUNT = "acc-owner"
OWN = ["owner@rapport.test", "owen@alias.rapport.test"]  # the account and its alias
BLOCKED = Blocklist([("blocked.example", "domain")])
WINDOW = {
    "window_start": datetime(2024, 1, 1, tzinfo=UTC),
    "window_end": datetime(2026, 1, 1, tzinfo=UTC),
}


def sha24(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def run(lake_dir: Path, paths=(MBOX, EML, ICS), blocklist=BLOCKED, **kw):
    return import_paths(
        lake_dir=lake_dir,
        account_id=ACCOUNT,
        paths=list(paths),
        account_addresses=OWN,
        blocklist=blocklist,
        **{**WINDOW, **kw},
    )


def table(lake_dir: Path, name: str) -> pl.DataFrame:
    found = lake.glob(lake_dir, name, [ACCOUNT])
    if not found:
        return pl.DataFrame(schema=pl.Schema(lake.TABLES[name]))
    return pl.read_parquet(found, hive_partitioning=False)


def message(lake_dir: Path, rfc_id: str) -> dict:
    rows = table(lake_dir, "messages").filter(pl.col("message_id") == sha24(rfc_id))
    assert rows.height == 1
    return rows.row(0, named=True)


def people(lake_dir: Path, rfc_id: str) -> list[tuple[str, str, str | None]]:
    parts = table(lake_dir, "participants").filter(pl.col("message_id") == sha24(rfc_id))
    return [(r["role"], r["address"], r["name"]) for r in parts.iter_rows(named=True)]


@pytest.fixture()
def imported(tmp_path):
    lake_dir = tmp_path / "lake"
    return lake_dir, run(lake_dir)


# ----------------------------------------------------------------- detect_kind
def test_detect_kind_on_each_fixture():
    assert detect_kind(MBOX) == "mbox"
    assert detect_kind(EML) == "eml_dir"
    assert detect_kind(EML / "01-question.eml") == "eml"  # CRLF line endings
    assert detect_kind(EML / "02-reply.eml") == "eml"
    assert detect_kind(ICS) == "ics"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"From: a@b.com\n\nhi\n", "unsupported file type '.txt'"),
        ("fake.mbox", b"hello world\n", "does not start with a 'From ' separator"),
        ("fake.ics", b"BEGIN:VCARD\nEND:VCARD\n", "does not contain BEGIN:VCALENDAR"),
        ("fake.eml", b"just some prose, no headers\n", "does not start with RFC 822"),
        ("empty.mbox", b"", "file is empty"),
        ("Inbox", b"\x00\x01binary junk", "not an mbox, .eml or .ics file"),
    ],
)
def test_detect_kind_rejects_bogus_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        detect_kind(path)
    assert "\n" not in str(info.value)


def test_detect_kind_rejects_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        detect_kind(tmp_path / "nope.mbox")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder holds no .eml files"):
        detect_kind(tmp_path / "empty")


def test_a_bogus_path_fails_before_anything_lands(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        run(tmp_path / "lake", paths=[MBOX, bogus])
    assert not (tmp_path / "lake").exists()


# ----------------------------------------------------------------- mail
def test_counts(imported):
    _, res = imported
    # mbox 10: 7 land, 1 blocked, 2 quarantined; eml 3 land;
    # ics: 6 occurrences land (1 + 3 + all-day + floating), 1 blocked, 1 broken VEVENT.
    assert (res.mode, res.landed, res.blocked, res.quarantined, res.deleted) == (
        "import",
        16,
        2,
        3,
        0,
    )
    assert (res.skipped, res.provider_total) == (0, 21)


def test_rfc2047_subject_and_display_names(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<enc-1@example.de>")
    assert row["subject"] == "Grüße aus Köln und Café"  # utf-8 B-word + iso-8859-1 Q-word
    assert row["sent_at"] == utc(2025, 3, 3, 9, 0)  # 10:00 +0100
    assert row["rfc_message_id"] == "<enc-1@example.de>"
    assert row["provider"] == "file" and row["stream"] == "mail_import"
    assert row["op"] == "upsert" and row["blocked"] is False
    assert row["labels"] == ["INBOX"]
    assert row["body_text"] == "Hallo Owen,\ndie Unterlagen für nächste Woche sind fertig.\n"
    assert row["snippet"] == "Hallo Owen, die Unterlagen für nächste Woche sind fertig."
    assert people(lake_dir, "<enc-1@example.de>") == [
        ("from", "juergen.mueller@example.de", "Jürgen Müller"),
        ("to", "renee@example.fr", "Renée François"),
        ("to", "owner@rapport.test", None),
    ]


def test_undisclosed_recipients_gives_no_participant(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<undisclosed-2@rapport.test>")
    assert row["labels"] == ["SENT"]  # From is the account itself
    assert row["thread_id"] == sha24("<undisclosed-2@rapport.test>")  # a thread root
    assert people(lake_dir, "<undisclosed-2@rapport.test>") == [
        ("from", "owner@rapport.test", "Owen Owner"),
        ("bcc", "client@globex.com", None),
    ]


def test_address_group_and_last_first_names(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<group-3@acme.co.uk>")
    assert people(lake_dir, "<group-3@acme.co.uk>") == [
        ("from", "jane.doe@acme.co.uk", "Doe, Jane"),  # kept as written
        ("to", "a@x.com", None),  # the group "Team:" is flattened
        ("to", "b@y.com", None),
        ("to", "owner@rapport.test", None),
        ("cc", "bob.smith@acme.co.uk", "Smith, Bob"),
        ("reply_to", "proposals@acme.co.uk", "Proposals"),
    ]
    assert row["sent_at"] == utc(2025, 3, 5, 19, 15)  # 14:15 -0500
    assert row["in_reply_to"] == "<undisclosed-2@rapport.test>"
    assert row["thread_id"] == sha24("<undisclosed-2@rapport.test>")  # root of References
    # multipart/alternative: the text/plain part wins over the HTML one
    assert row["body_text"] == "Thanks,   looks\ngood."
    assert row["snippet"] == "Thanks, looks good."


def test_missing_date_uses_the_mbox_from_line(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<nodate-4@acme.co.uk>")
    # From line "Thu Mar  6 11:22:33 2025" beats the Received date (8 March)
    assert row["sent_at"] == utc(2025, 3, 6, 11, 22, 33)
    # HTML only: tags and <style> stripped, entities unescaped
    assert row["body_text"] == "Fish & chips\nat 5 pm?"
    assert row["snippet"] == "Fish & chips at 5 pm?"


def test_garbage_date_uses_the_newest_received_header(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<digest-6@lists.example.org>")
    # The From line carries no date, so the newest Received hop decides (09:00:05, not 08:59:59)
    assert row["sent_at"] == utc(2025, 3, 7, 9, 0, 5)
    assert row["list_id"] == "Example News <news.lists.example.org>"
    assert row["list_unsubscribe"] == "<mailto:unsubscribe@lists.example.org>"
    assert row["precedence"] == "bulk"
    assert row["auto_submitted"] is None


def test_latin1_body_and_takeout_headers(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<latin-7@example.fr>")
    assert row["body_text"] == "Voilà le devis détaillé. À bientôt.\n"
    assert row["thread_id"] == "195741534fdd0001"  # X-GM-THRID 1826000000000000001 in hex
    assert row["labels"] == ["INBOX", "Important", "Opened", "Category Personal"]
    assert people(lake_dir, "<latin-7@example.fr>")[0] == (
        "from",
        "francois@example.fr",
        "François Pérez",
    )


def test_invalid_bytes_in_a_known_charset_land_with_replacement(imported):
    lake_dir, _ = imported
    row = message(lake_dir, "<badbytes-10@example.com>")
    assert row["body_text"] == "café \ufffd ok\n"


def test_broken_messages_are_quarantined_and_neighbours_land(imported):
    lake_dir, _ = imported
    q = table(lake_dir, "quarantine").filter(pl.col("stream") == "mail_import")
    assert sorted(q.select("item_id", "reason", "detail").iter_rows()) == sorted(
        [
            (
                sha24("<broken-5@nowhere.example>"),
                "missing or unparseable From header",
                "import.mbox#5",
            ),
            (sha24("<klingon-9@example.com>"), "undecodable charset", "import.mbox#9"),
        ]
    )
    ids = set(table(lake_dir, "messages")["message_id"])
    assert sha24("<broken-5@nowhere.example>") not in ids
    assert sha24("<klingon-9@example.com>") not in ids
    # both neighbours of each broken message are there
    for rfc in (
        "<nodate-4@acme.co.uk>",
        "<digest-6@lists.example.org>",
        "<offer-8@blocked.example>",
    ):
        assert sha24(rfc) in ids
    assert sha24("<badbytes-10@example.com>") in ids
    # a quarantine row never carries message content
    assert not q.filter(pl.col("detail").str.contains("sender|Nobody|nuqneH")).height


def test_eml_reply_thread_shares_one_thread_id(imported):
    lake_dir, _ = imported
    root = sha24("<q-1@acme.co.uk>")
    rows = {
        r: message(lake_dir, r)
        for r in ("<q-1@acme.co.uk>", "<r-2@rapport.test>", "<f-3@acme.co.uk>")
    }
    assert {row["thread_id"] for row in rows.values()} == {root}
    assert rows["<q-1@acme.co.uk>"]["message_id"] == root
    assert rows["<q-1@acme.co.uk>"]["labels"] == ["INBOX"]
    assert rows["<r-2@rapport.test>"]["labels"] == ["SENT"]  # from the alias, any case
    assert rows["<f-3@acme.co.uk>"]["labels"] == ["INBOX"]  # sent *to* the alias
    assert rows["<q-1@acme.co.uk>"]["body_text"] == "What would 50 seats cost?\n"  # CRLF file
    assert rows["<r-2@rapport.test>"]["body_text"] == "Quote attached."  # not the attachment
    assert rows["<q-1@acme.co.uk>"]["sent_at"] == utc(2025, 3, 10, 9, 0)
    assert people(lake_dir, "<r-2@rapport.test>")[0] == (
        "from",
        "Owen@Alias.Rapport.test",
        "Owen Owner",
    )


# ----------------------------------------------------------------- calendars
def test_ics_yields_exactly_the_expected_occurrences(imported):
    lake_dir, _ = imported
    events = table(lake_dir, "events").filter(pl.col("status") != "blocked")
    got = sorted(
        events.select(
            "event_id",
            "ical_uid",
            "status",
            "title",
            "starts_at",
            "ends_at",
            "all_day",
            "recurring_event_id",
        ).iter_rows()
    )
    wk, sync = "weekly-1@rapport.test", "Weekly sync"
    expected = [
        ("kickoff-1@rapport.test", "confirmed", "Kickoff with Acme",
         utc(2025, 3, 10, 14), utc(2025, 3, 10, 15), False, None),
        # 10:00 Europe/Berlin weekly, COUNT=4, EXDATE 24 March; DST starts 30 March
        (wk, "tentative", sync, utc(2025, 3, 17, 9), utc(2025, 3, 17, 9, 30), False, wk),
        (wk, "tentative", sync, utc(2025, 3, 31, 8), utc(2025, 3, 31, 8, 30), False, wk),
        (wk, "tentative", sync, utc(2025, 4, 7, 8), utc(2025, 4, 7, 8, 30), False, wk),
        ("offsite-1@rapport.test", "confirmed", "Team offsite",
         utc(2025, 4, 1), utc(2025, 4, 3), True, None),
        # floating 12:00 read as UTC; DURATION PT45M
        ("floating-1@rapport.test", "confirmed", "Floating lunch",
         utc(2025, 3, 15, 12), utc(2025, 3, 15, 12, 45), False, None),
    ]  # fmt: skip
    assert got == sorted((sha24(e[0] + e[3].isoformat()), *e) for e in expected)
    assert set(events["provider"]) == {"file"} and set(events["stream"]) == {"ics_import"}
    assert "cancelled-1@rapport.test" not in set(events["ical_uid"])


def test_ics_attendees(imported):
    lake_dir, _ = imported
    att = table(lake_dir, "attendees")
    kickoff = sha24("kickoff-1@rapport.test2025-03-10T14:00:00+00:00")
    rows = att.filter(pl.col("event_id") == kickoff)
    assert list(
        rows.select("role", "address", "name", "response_status", "resource").iter_rows()
    ) == [
        ("organizer", "owner@rapport.test", "Owen Owner", None, False),
        ("attendee", "jane.doe@acme.co.uk", "Doe, Jane", "accepted", False),
        ("attendee", "Bob@Builder.example", "Bob Builder", "needs-action", False),  # MAILTO:
        ("attendee", "boardroom@rapport.test", "Board Room", "accepted", True),  # CUTYPE=ROOM
    ]
    weekly = sha24("weekly-1@rapport.test2025-03-31T08:00:00+00:00")
    rows = att.filter(pl.col("event_id") == weekly)
    assert list(rows.select("role", "address", "response_status", "resource").iter_rows()) == [
        ("organizer", "jane.doe@acme.co.uk", None, False),
        ("attendee", "owner@rapport.test", "tentative", False),
        ("attendee", "projector@rapport.test", None, True),  # CUTYPE=RESOURCE
    ]


def test_broken_vevent_is_quarantined(imported):
    lake_dir, _ = imported
    q = table(lake_dir, "quarantine").filter(pl.col("stream") == "ics_import")
    assert list(q.select("item_id", "reason", "detail").iter_rows()) == [
        (sha24("broken-1@rapport.test"), "missing or invalid DTSTART", "calendar.ics#VEVENT7")
    ]


# ----------------------------------------------------------------- blocklist
def test_blocklisted_sender_lands_as_a_marker_only(imported):
    lake_dir, _ = imported
    marker = message(lake_dir, "<offer-8@blocked.example>")
    assert marker["blocked"] is True and marker["op"] == "upsert"
    assert marker["thread_id"] == sha24("<offer-8@blocked.example>")
    for col in ("subject", "snippet", "body_text", "sent_at", "rfc_message_id", "in_reply_to"):
        assert marker[col] is None
    assert people(lake_dir, "<offer-8@blocked.example>") == []

    event_id = sha24("blocked-1@rapport.test2025-03-18T09:00:00+00:00")
    ev = table(lake_dir, "events").filter(pl.col("event_id") == event_id).row(0, named=True)
    assert ev["status"] == "blocked" and ev["title"] is None and ev["ical_uid"] is None
    assert table(lake_dir, "attendees").filter(pl.col("event_id") == event_id).height == 0


def test_blocked_addresses_never_reach_the_lake_files(imported):
    lake_dir, _ = imported
    parquet = sorted(lake_dir.rglob("*.parquet"))
    assert parquet
    for path in parquet:
        assert b"blocked.example" not in path.read_bytes()
        for row in pq.read_table(path).to_pylist():
            text = repr(row).lower()
            assert "blocked.example" not in text and "mallory" not in text, path


# ----------------------------------------------------------------- idempotence
def test_second_import_adds_nothing(imported):
    lake_dir, _ = imported
    before = sorted(p.relative_to(lake_dir) for p in lake_dir.rglob("*") if p.is_file())
    res = run(lake_dir)
    after = sorted(p.relative_to(lake_dir) for p in lake_dir.rglob("*") if p.is_file())
    assert after == before
    assert (res.landed, res.blocked, res.quarantined, res.skipped) == (0, 0, 0, 21)


def test_removing_a_blocklist_entry_brings_the_mail_back(imported):
    lake_dir, _ = imported
    res = run(lake_dir, blocklist=Blocklist([]))
    assert (res.landed, res.blocked, res.quarantined, res.skipped) == (2, 0, 0, 19)
    latest = (
        table(lake_dir, "messages")
        .filter(pl.col("message_id") == sha24("<offer-8@blocked.example>"))
        .sort("version")
        .row(-1, named=True)
    )
    assert latest["blocked"] is False and latest["subject"] == "Totally legit offer"


def test_flushes_in_batches_and_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "FLUSH_EVERY", 4)
    seen: list[tuple[int, int | None]] = []
    lake_dir = tmp_path / "lake"
    # default calendar window (10 years back, 1 year ahead) covers the 2025 fixtures
    res = import_paths(
        lake_dir=lake_dir,
        account_id=ACCOUNT,
        paths=[MBOX, EML, ICS],
        account_addresses=OWN,
        blocklist=BLOCKED,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert (res.landed, res.blocked, res.quarantined) == (16, 2, 3)
    assert seen == [(0, 21), (4, 21), (8, 21), (12, 21), (16, 21), (20, 21), (21, 21)]
    assert len(lake.glob(lake_dir, "messages", [ACCOUNT])) == 4  # mail spans the first 4 batches


def test_mail_window_and_metadata_only(tmp_path):
    lake_dir = tmp_path / "lake"
    res = run(
        lake_dir,
        paths=[MBOX],
        window_start=utc(2025, 3, 8),
        window_end=utc(2025, 3, 10),
        with_body=False,
    )
    # in window: latin-7 (8 Mar) and badbytes-10 (9 Mar); offer-8 is a marker regardless;
    # broken-5 and klingon-9 are quarantined (no From; the charset is checked only with bodies)
    landed = table(lake_dir, "messages").filter(~pl.col("blocked"))
    assert sorted(landed["rfc_message_id"]) == [
        "<badbytes-10@example.com>",
        "<klingon-9@example.com>",
        "<latin-7@example.fr>",
    ]
    assert (res.landed, res.blocked, res.quarantined, res.skipped) == (3, 1, 1, 5)
    assert landed["body_text"].null_count() == 3 and landed["snippet"].null_count() == 3
