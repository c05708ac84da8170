"""DESIGN §4 rules on small handcrafted mailboxes; expected outputs worked out by hand."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

from tests.mailbox import AS_OF, Mail, Sandbox, emails_of
from transforms.records import hash_ids

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"


def person(staged, email: str) -> dict:
    rows = staged.tables["people"].filter(pl.col("email_addresses").list.contains(email))
    assert rows.height == 1, f"expected exactly one person with {email}, got {rows.height}"
    return rows.row(0, named=True)


def company_domains(staged) -> set[str]:
    return set(staged.tables["companies"].select(pl.col("domains").explode()).to_series())


def test_people_come_from_recipients_of_sent_mail_not_from_received_senders(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail("s1", ALICE, ["ceo@initech.com"], cc=["cfo@initech.com"], labels=["SENT"]),
            Mail("r1", "cold@vendor.io", [ALICE]),  # received only
        ],
    )
    staged = sb.build()
    assert emails_of(staged.tables["people"]) == {"ceo@initech.com", "cfo@initech.com"}
    assert company_domains(staged) == {"initech.com"}


def test_sent_is_detected_by_alias_as_well_as_the_sent_label(tmp_path):
    sb = Sandbox(tmp_path, members=[])
    sb.add_member(ALICE, aliases=["a.smith@acme-team.io"])
    sb.land(ALICE, [Mail("s1", "a.smith@acme-team.io", ["buyer@globex.com"])])  # INBOX label
    assert emails_of(sb.build().tables["people"]) == {"buyer@globex.com"}


def test_free_mail_makes_no_company_and_subdomains_link_to_the_registrable_domain(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail("s1", ALICE, ["pat@gmail.com", "ops@mail.sub.acme.co.uk"], labels=["SENT"]),
        ],
    )
    staged = sb.build()
    companies = staged.tables["companies"]
    assert companies["domains"].to_list() == [["acme.co.uk"]]
    assert companies["name"].to_list() == ["Acme"]
    assert person(staged, "pat@gmail.com")["company_id"] is None
    assert person(staged, "ops@mail.sub.acme.co.uk")["company_id"] == companies["company_id"][0]
    assert companies["company_id"][0] == hash_ids("com", pl.Series(["acme.co.uk"]))[0]


def test_company_name_from_hyphenated_domain(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(ALICE, [Mail("s1", ALICE, ["x@acme-corp.co.uk"], labels=["SENT"])])
    assert sb.build().tables["companies"]["name"].to_list() == ["Acme Corp"]


def test_internal_addresses_and_domains_never_become_records(tmp_path):
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    sb.land(
        ALICE,
        [
            Mail("s1", ALICE, [BOB, "intern@acme-team.io", "x@eu.acme-team.io"], labels=["SENT"]),
        ],
    )
    staged = sb.build()
    assert staged.tables["people"].height == 0
    assert staged.tables["companies"].height == 0
    assert staged.tables["interactions"].height == 0


def test_blocklist_hides_messages_in_any_role_and_matches_subdomains(tmp_path):
    sb = Sandbox(tmp_path)
    sb.block(ALICE, "spy@rival.com", "address")
    sb.block(ALICE, "spam.example", "domain")
    sb.land(
        ALICE,
        [
            Mail(
                "s1", ALICE, ["ok@globex.com"], cc=["Spy@Rival.com"], labels=["SENT"], thread="t1"
            ),
            Mail("r1", "deals@news.spam.example", [ALICE], thread="t2"),
            Mail("s2", ALICE, ["fine@globex.com"], labels=["SENT"], thread="t3"),
        ],
    )
    staged = sb.build()
    assert staged.tables["messages"]["message_key"].str.split(":").list.last().to_list() == ["s2"]
    # s1 was blocked (cc), so its thread creates nobody, not even the harmless recipient
    assert emails_of(staged.tables["people"]) == {"fine@globex.com"}


def test_a_thread_with_a_blocked_message_creates_no_records(tmp_path):
    sb = Sandbox(tmp_path)
    sb.block(ALICE, "leak@rival.com", "address")
    sb.land(
        ALICE,
        [
            Mail("a", ALICE, ["buyer@globex.com"], labels=["SENT"], thread="T"),
            Mail("b", "buyer@globex.com", [ALICE], cc=["leak@rival.com"], thread="T"),
            Mail("c", ALICE, ["other@initech.com"], labels=["SENT"], thread="U"),
        ],
    )
    staged = sb.build()
    assert emails_of(staged.tables["people"]) == {"other@initech.com"}
    keys = sorted(staged.tables["messages"]["message_key"].str.split(":").list.last())
    assert keys == ["a", "c"]  # a is shown; only its record creation is suppressed


def test_blocked_marker_from_extraction_hides_the_thread(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail("m0", "x@x.com", [ALICE], thread="T", blocked_marker=True),
            Mail("m1", ALICE, ["buyer@globex.com"], labels=["SENT"], thread="T"),
        ],
    )
    staged = sb.build()
    assert staged.tables["people"].height == 0
    assert staged.stats["messages_blocked"] == 1


def test_each_member_copy_follows_its_own_blocklist(tmp_path):
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    sb.block(BOB, "globex.com", "domain")
    mail = dict(sender=ALICE, to=["buyer@globex.com", BOB], labels=["SENT"], rfc_id="<same@x>")
    sb.land(ALICE, [Mail("a1", **mail)])
    sb.land(BOB, [Mail("b1", **{**mail, "labels": ["INBOX"]})])
    staged = sb.build()
    accounts = staged.tables["messages"]["account_id"].to_list()
    assert accounts == [sb.account(ALICE)]
    assert emails_of(staged.tables["people"]) == {"buyer@globex.com"}


def test_canonical_addresses_merge_case_dots_tags_and_googlemail(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail("s1", ALICE, ["Jane.Doe@Gmail.com"], labels=["SENT"], at="2026-01-01T00:00:00"),
            Mail("s2", ALICE, ["janedoe+crm@googlemail.com"], labels=["SENT"]),
            Mail("s3", ALICE, ["jane.doe@gmail.com"], labels=["SENT"]),
        ],
    )
    staged = sb.build()
    assert staged.tables["people"].height == 1
    p = person(staged, "jane.doe@gmail.com")
    assert p["email_addresses"] == ["jane.doe@gmail.com", "janedoe@googlemail.com"]
    assert p["primary_email"] == "jane.doe@gmail.com"
    assert p["person_id"] == hash_ids("per", pl.Series(["janedoe@gmail.com"]))[0]


def test_names_from_display_names_and_local_parts(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail(
                "s1",
                ALICE,
                ["jd@globex.com", "john.smith@globex.com", "info@globex.com"],
                labels=["SENT"],
                names={"jd@globex.com": "Doe, Jane"},
            ),
            Mail("s2", ALICE, ["jd@globex.com"], labels=["SENT"], names={"jd@globex.com": "J"}),
            Mail(
                "s3",
                ALICE,
                ["jd@globex.com"],
                labels=["SENT"],
                names={"jd@globex.com": "Doe, Jane"},
            ),
        ],
    )
    staged = sb.build()
    jane = person(staged, "jd@globex.com")
    assert (jane["name"], jane["first_name"], jane["last_name"]) == ("Jane Doe", "Jane", "Doe")
    john = person(staged, "john.smith@globex.com")
    assert (john["name"], john["first_name"], john["last_name"]) == ("John Smith", "John", "Smith")
    assert person(staged, "info@globex.com")["name"] is None


def test_automated_senders_and_list_mail_create_no_people(tmp_path):
    sb = Sandbox(tmp_path)
    sb.ws.enhanced_record_creation.append({"enabled": False, "at": "2026-01-01T00:00:00+00:00"})
    sb.land(
        ALICE,
        [
            Mail("r1", "no-reply@shop.com", [ALICE]),
            Mail("r2", "mailer-daemon@mx.globex.com", [ALICE]),
            Mail("r3", "editor@newsletter.io", [ALICE], list_id="<weekly.newsletter.io>"),
            Mail("r4", "bulk@promo.io", [ALICE], precedence="bulk"),
            Mail("r5", "human@initech.com", [ALICE]),
        ],
    )
    staged = sb.build()
    assert emails_of(staged.tables["people"]) == {"human@initech.com"}
    assert staged.tables["messages"].height == 5  # still kept in messages


def test_enhanced_record_creation_off_is_not_retroactive(tmp_path):
    sb = Sandbox(tmp_path)
    sb.ws.enhanced_record_creation += [
        {"enabled": False, "at": "2026-03-01T00:00:00+00:00"},
        {"enabled": True, "at": "2026-04-01T00:00:00+00:00"},
    ]
    sb.land(
        ALICE,
        [
            Mail("r1", "before@initech.com", [ALICE], at="2026-02-15T00:00:00"),
            Mail(
                "r2", "during@initech.com", [ALICE], cc=["cc@globex.com"], at="2026-03-15T00:00:00"
            ),
            Mail("r3", "after@initech.com", [ALICE], at="2026-04-15T00:00:00"),
        ],
    )
    staged = sb.build()
    assert emails_of(staged.tables["people"]) == {"during@initech.com", "cc@globex.com"}


def test_records_are_durable_and_ids_stable(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(ALICE, [Mail("s1", ALICE, ["buyer@globex.com"], labels=["SENT"])])
    first = sb.build()
    sb.delete(ALICE, "s1")
    second = sb.build(previous=first)
    assert second.tables["messages"].height == 0
    assert (
        second.tables["people"]["person_id"].to_list()
        == first.tables["people"]["person_id"].to_list()
    )
    assert (
        second.tables["companies"]["company_id"].to_list()
        == first.tables["companies"]["company_id"].to_list()
    )


def test_linking_uses_the_most_recently_used_address(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail(
                "s1",
                ALICE,
                ["sam@oldco.com"],
                labels=["SENT"],
                at="2025-01-01T00:00:00",
                names={"sam@oldco.com": "Sam Lee"},
            ),
            Mail(
                "s2",
                ALICE,
                ["sam@newco.com"],
                labels=["SENT"],
                at="2026-01-01T00:00:00",
                names={"sam@newco.com": "Sam Lee"},
            ),
        ],
    )
    staged = sb.build()
    companies = dict(
        zip(
            staged.tables["companies"]["name"],
            staged.tables["companies"]["company_id"],
            strict=True,
        )
    )
    # Different canonical addresses: two people, each linked to its own company.
    assert person(staged, "sam@newco.com")["company_id"] == companies["Newco"]
    assert person(staged, "sam@oldco.com")["company_id"] == companies["Oldco"]


def test_a_company_created_later_picks_up_existing_people(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(ALICE, [Mail("s1", ALICE, ["pat@gmail.com"], labels=["SENT"])])
    first = sb.build()
    assert person(first, "pat@gmail.com")["company_id"] is None
    sb.land(ALICE, [Mail("s2", ALICE, ["lee@umbrella.com"], labels=["SENT"])])
    second = sb.build(previous=first)
    assert second.tables["companies"]["domains"].to_list() == [["umbrella.com"]]


def test_interactions_first_and_last(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail("s1", ALICE, ["buyer@globex.com"], labels=["SENT"], at="2026-01-10T00:00:00"),
            Mail("r1", "buyer@globex.com", [ALICE], at="2026-02-20T00:00:00"),
            Mail("s2", ALICE, ["buyer@globex.com"], labels=["SENT"], at="2026-05-20T00:00:00"),
        ],
    )
    staged = sb.build_published()
    m = staged.tables["person_metrics"].row(0, named=True)
    assert str(m["first_interaction_at"].date()) == "2026-01-10"
    assert str(m["last_interaction_at"].date()) == "2026-05-20"
    assert m["last_interaction_kind"] == "email_sent"
    assert m["last_interaction_member"] == ALICE
    assert (m["emails_30d"], m["emails_90d"], m["emails_365d"]) == (1, 1, 3)
    kinds = sorted(staged.tables["interactions"]["kind"].to_list())
    assert kinds == ["email_received", "email_sent", "email_sent"]


def test_meetings_create_people_and_count_once_per_member(tmp_path):
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    for owner, eid in ((ALICE, "ea"), (BOB, "eb")):
        sb.land_event(
            owner,
            eid,
            "2026-05-10T15:00:00",
            ALICE,
            [BOB, "guest@globex.com"],
            ical_uid="shared-uid",
            rooms=("room-1@resource.calendar.google.com",),
        )
    sb.land_event(ALICE, "future", "2026-07-01T09:00:00", "guest@globex.com", [ALICE])
    sb.land_event(
        ALICE, "gone", "2026-05-11T09:00:00", ALICE, ["ghost@globex.com"], status="cancelled"
    )
    staged = sb.build_published()
    assert emails_of(staged.tables["people"]) == {"guest@globex.com"}
    inter = staged.tables["interactions"].sort("member_id", "at")
    assert inter.height == 3  # alice: past + future meeting, bob: the shared meeting once
    m = staged.tables["person_metrics"].row(0, named=True)
    assert str(m["next_meeting_at"]).startswith("2026-07-01")
    assert str(m["last_meeting_at"]).startswith("2026-05-10")
    assert m["meetings_90d"] == 1
    assert staged.tables["events"].height == 3
    assert AS_OF.year == 2026


def test_same_full_name_on_same_company_domain_merges_into_the_older_record(tmp_path):
    sb = Sandbox(tmp_path)
    names = {
        "jane@globex.com": "Jane Doe",
        "j.doe@eu.globex.com": "jane  doe",
        "jane.doe@gmail.com": "Jane Doe",
        "jd@initech.com": "Jane Doe",
        "jo@globex.com": "Jo",
    }
    sb.land(
        ALICE,
        [
            Mail(
                "s1",
                ALICE,
                ["jane@globex.com"],
                labels=["SENT"],
                at="2026-01-01T00:00:00",
                names=names,
            ),
            Mail(
                "s2",
                ALICE,
                ["j.doe@eu.globex.com", "jane.doe@gmail.com", "jd@initech.com", "jo@globex.com"],
                labels=["SENT"],
                at="2026-02-01T00:00:00",
                names=names,
            ),
        ],
    )
    staged = sb.build()
    people = staged.tables["people"]
    survivor = person(staged, "jane@globex.com")
    # merged by name + company domain; survivor is the older record and keeps both addresses
    assert survivor["email_addresses"] == ["j.doe@eu.globex.com", "jane@globex.com"]
    assert survivor["person_id"] == hash_ids("per", pl.Series(["jane@globex.com"]))[0]
    # never by name alone on free mail, nor across different company domains
    assert person(staged, "jane.doe@gmail.com")["person_id"] != survivor["person_id"]
    assert person(staged, "jd@initech.com")["person_id"] != survivor["person_id"]
    assert people.height == 4
    merges = staged.tables["person_merges"]
    assert merges.height == 1
    row = merges.row(0, named=True)
    assert row["survivor_id"] == survivor["person_id"]
    assert row["merged_id"] == hash_ids("per", pl.Series(["j.doe@eu.globex.com"]))[0]
    assert row["rule"] == "same_name_company_domain"
    assert '"domain":"globex.com"' in row["evidence"]
    # a rebuild on top of the previous run keeps ids, merges and addresses
    again = sb.build(previous=staged)
    assert (
        again.tables["people"]["person_id"].sort().to_list() == people["person_id"].sort().to_list()
    )
    assert again.tables["person_merges"].height == 1


def test_a_merged_record_is_settled_in_the_run_that_merges_it(tmp_path):
    """The survivor's primary address is the most used of all its addresses, in the run
    that merges it and in every rebuild after: the record does not change again."""
    sb = Sandbox(tmp_path)
    names = {"jane@globex.com": "Jane Doe", "j.doe@globex.com": "Jane Doe"}
    sent = {"labels": ["SENT"], "names": names}
    older = Mail("s1", ALICE, ["jane@globex.com"], at="2026-01-01T00:00:00", **sent)
    later = [
        Mail(f"s{i}", ALICE, ["j.doe@globex.com"], at=f"2026-02-0{i}T00:00:00", **sent)
        for i in range(2, 5)
    ]
    sb.land(ALICE, [older, *later])
    staged = sb.build()
    survivor = person(staged, "jane@globex.com")
    assert survivor["person_id"] == hash_ids("per", pl.Series(["jane@globex.com"]))[0]  # older
    assert survivor["email_addresses"] == ["j.doe@globex.com", "jane@globex.com"]
    assert survivor["primary_email"] == "j.doe@globex.com"  # 3 uses against 1
    assert (survivor["first_name"], survivor["last_name"]) == ("Jane", "Doe")
    again = sb.build(previous=staged)
    assert_frame_equal(again.tables["people"], staged.tables["people"])


def test_extra_domains_join_a_company_only_through_configuration(tmp_path):
    sb = Sandbox(tmp_path)
    sb.land(ALICE, [Mail("s1", ALICE, ["a@acme.com", "b@acme.io"], labels=["SENT"])])
    plain = sb.build()
    assert sorted(d for ds in plain.tables["companies"]["domains"] for d in ds) == [
        "acme.com",
        "acme.io",
    ]
    assert plain.tables["companies"].height == 2  # never inferred from the name alike
    sb2 = Sandbox(tmp_path / "configured")
    sb2.ws.company_domains = {"acme.io": "acme.com"}
    sb2.land(ALICE, [Mail("s1", ALICE, ["a@acme.com", "b@acme.io"], labels=["SENT"])])
    staged = sb2.build()
    companies = staged.tables["companies"]
    assert companies["domains"].to_list() == [["acme.com", "acme.io"]]
    assert person(staged, "b@acme.io")["company_id"] == companies["company_id"][0]


def test_the_build_hands_its_biggest_tables_to_a_sink_as_soon_as_they_are_final(tmp_path):
    from flows.engine import workspace_frames
    from transforms.pipeline import build

    sb = Sandbox(tmp_path)
    sb.land(
        ALICE,
        [
            Mail("s1", ALICE, ["ceo@initech.com"], labels=["SENT"]),
            Mail("r1", "ceo@initech.com", [ALICE]),
        ],
    )
    handed: list[dict[str, pl.DataFrame]] = []
    staged = build(sb.lake, workspace_frames(sb.ws, AS_OF), sink=handed.append)
    # in the order the build finishes them: events after loading, the messages after the
    # blocklist, the interactions when they are worked out
    assert [sorted(tables) for tables in handed] == [
        ["events"],
        ["message_flags", "messages"],
        ["_rapport_contact_history", "interactions"],
    ]
    for tables in handed:  # the very frames the build returns
        assert all(frame is staged.tables[name] for name, frame in tables.items())
    assert staged.tables["messages"]["message_key"].str.ends_with(":s1").sum() == 1
    assert staged.tables["interactions"].height == 2
