"""Analyst views (warehouse/views/*.sql) on a handcrafted workspace; answers worked out by hand.

AS_OF is 2026-06-01T00:00Z. The workspace:
  alice <-> jane.doe@acme.com   sent 2026-05-22, reply 2026-05-25 (two-way, recent)
  bob    -> jane.doe@acme.com   sent 2025-12-01 (one-way, old)
  bob    -> raj@acme.com        sent 2026-02-01 (one-way)
  carol <-> kim@acme.co         three each way in May: the strongest tie, but acme.co is
                                another company (also named "Acme")
  alice  -> ann@globex.com      2026-01-15 (137 days ago)
  bob    -> uma@umbrella.com    2026-03-01 (92 days ago)
  carol  -> hal@hooli.com       2026-03-05 (88 days ago)
  bob meets ivy@initech.com     2026-06-15 (future only)
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flows.engine import SYNC_RUN_SCHEMA, workspace_tables
from tests.mailbox import AS_OF, Mail, Sandbox, ts
from tests.warehouse.helpers import publish_sandbox, rows
from transforms.metrics import METRIC_COLUMNS
from warehouse.publish import publish, query_readonly

ALICE, BOB, CAROL = "alice@acme-team.io", "bob@acme-team.io", "carol@acme-team.io"
JANE, RAJ, KIM = "jane.doe@acme.com", "raj@acme.com", "kim@acme.co"
NAMES = {JANE: "Jane Doe", RAJ: "Raj Patel", KIM: "Kim Lee"}

# The README's two example questions, as an analyst would type them.
WHO_KNOWS_ACME_BEST = """
SELECT member_email, person_name, person_email, strength, score
FROM connections_overview
WHERE person_id IS NOT NULL AND list_contains(company_domains, 'acme.com')
ORDER BY score DESC
"""
QUIET_ACCOUNTS = """
SELECT name, domains, last_interaction_at, next_meeting_at
FROM companies_overview
WHERE last_interaction_at IS NULL OR last_interaction_at < $as_of - INTERVAL 90 DAY
ORDER BY name
"""


def sent(mid: str, sender: str, to: str, at: str) -> Mail:
    return Mail(mid, sender, [to], labels=["SENT"], at=at, names=NAMES)


def received(mid: str, sender: str, to: str, at: str) -> Mail:
    return Mail(mid, sender, [to], at=at, names=NAMES)


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("views")
    sb = Sandbox(root, members=[ALICE, BOB, CAROL])
    sb.land(
        ALICE,
        [
            sent("a1", ALICE, JANE, "2026-05-22T00:00:00"),
            received("a2", JANE, ALICE, "2026-05-25T00:00:00"),
            sent("a3", ALICE, "ann@globex.com", "2026-01-15T00:00:00"),
        ],
    )
    sb.land(
        BOB,
        [
            sent("b1", BOB, JANE, "2025-12-01T00:00:00"),
            sent("b2", BOB, RAJ, "2026-02-01T00:00:00"),
            sent("b3", BOB, "uma@umbrella.com", "2026-03-01T00:00:00"),
        ],
    )
    sb.land(
        CAROL,
        [sent(f"c{d}", CAROL, KIM, f"2026-05-{d:02d}T00:00:00") for d in (10, 12, 14)]
        + [received(f"k{d}", KIM, CAROL, f"2026-05-{d:02d}T00:00:00") for d in (11, 13, 15)]
        + [sent("c9", CAROL, "hal@hooli.com", "2026-03-05T00:00:00")],
    )
    sb.land_event(BOB, "e1", "2026-06-15T10:00:00", BOB, ["ivy@initech.com"])
    warehouse = root / "warehouse.duckdb"
    publish_sandbox(sb, warehouse)
    return warehouse


def test_views_exist_with_their_columns(wh):
    def columns(view: str) -> list[str]:
        return query_readonly(wh, f"SELECT * FROM {view} LIMIT 0")[0]

    assert columns("people_overview") == [
        "person_id",
        "name",
        "first_name",
        "last_name",
        "email_addresses",
        "primary_email",
        "company_id",
        "company_name",
        "created_at",
        "created_from_account",
        *METRIC_COLUMNS,
    ]
    assert columns("companies_overview") == [
        "company_id",
        "name",
        "domains",
        "created_at",
        "people_count",
        *METRIC_COLUMNS,
    ]
    assert columns("connections_overview") == [
        "member_id",
        "member_email",
        "member_name",
        "person_id",
        "person_name",
        "person_email",
        "company_id",
        "company_name",
        "company_domains",
        "score",
        "strength",
    ]
    assert columns("person_ids") == ["any_id", "person_id"]
    # one row per person, company and connection: the joins add nothing
    for view, table in [
        ("people_overview", "people"),
        ("companies_overview", "companies"),
        ("connections_overview", "connections"),
        ("person_ids", "people"),  # no merges here
    ]:
        n = f"SELECT (SELECT count(*) FROM {view}) AS v, (SELECT count(*) FROM {table}) AS t"
        [counts] = rows(wh, n)
        assert counts["v"] == counts["t"] > 0, view


def test_overviews_carry_names_counts_and_metrics(wh):
    [jane] = rows(wh, "SELECT * FROM people_overview WHERE primary_email = $e", {"e": JANE})
    assert (jane["name"], jane["company_name"]) == ("Jane Doe", "Acme")
    assert jane["last_interaction_at"] == ts("2026-05-25T00:00:00")
    assert jane["last_interaction_kind"] == "email_received"
    assert jane["strongest_connection_member"] == ALICE
    [metrics] = rows(
        wh, "SELECT * FROM person_metrics WHERE person_id = $p", {"p": jane["person_id"]}
    )
    assert {k: jane[k] for k in metrics} == metrics

    by_domain = {
        r["domains"][0]: r for r in rows(wh, "SELECT * FROM companies_overview ORDER BY name")
    }
    assert {d: r["people_count"] for d, r in by_domain.items()} == {
        "acme.co": 1,
        "acme.com": 2,
        "globex.com": 1,
        "hooli.com": 1,
        "initech.com": 1,
        "umbrella.com": 1,
    }
    assert by_domain["acme.com"]["emails_365d"] == 4  # a1, a2, b1, b2
    assert by_domain["initech.com"]["next_meeting_at"] == ts("2026-06-15T10:00:00")

    company_rows = rows(
        wh,
        "SELECT member_email, company_name, score FROM connections_overview "
        "WHERE person_id IS NULL AND list_contains(company_domains, 'acme.com') ORDER BY 1",
    )
    assert [(r["member_email"], r["company_name"]) for r in company_rows] == [
        (ALICE, "Acme"),
        (BOB, "Acme"),
    ]


def test_who_on_the_team_knows_someone_at_acme_com_best(wh):
    # By hand (decay(a) = 0.8*2^(-a/45) + 0.2*2^(-a/365), a in days before AS_OF):
    #   alice-jane: 0.3*d(10) + 0.6*d(7) + 1.5*min(d(10), d(7)) = 1.8*0.8819 + 0.6*0.9155 ~ 2.14
    #   bob-raj:    0.3*d(120) ~ 0.3*0.2853 ~ 0.086
    #   bob-jane:   0.3*d(182) ~ 0.3*0.1902 ~ 0.057
    # carol-kim (~5.6) is higher than all of them, but Kim is at acme.co, not acme.com.
    answer = rows(wh, WHO_KNOWS_ACME_BEST)
    assert [(r["member_email"], r["person_email"], r["strength"]) for r in answer] == [
        (ALICE, JANE, "good"),
        (BOB, RAJ, "very_weak"),
        (BOB, JANE, "very_weak"),
    ]
    assert answer[0]["person_name"] == "Jane Doe"
    assert answer[0]["score"] == pytest.approx(2.137, abs=0.01)
    [kim] = rows(wh, "SELECT * FROM connections_overview WHERE person_email = $e", {"e": KIM})
    assert kim["company_name"] == "Acme" and kim["score"] > answer[0]["score"]


def test_companies_we_have_not_talked_to_in_90_days(wh):
    quiet = rows(wh, QUIET_ACCOUNTS, {"as_of": AS_OF})
    assert [(r["name"], r["last_interaction_at"], r["next_meeting_at"]) for r in quiet] == [
        ("Globex", ts("2026-01-15T00:00:00"), None),  # 137 days
        ("Initech", None, ts("2026-06-15T10:00:00")),  # never yet: the meeting is ahead
        ("Umbrella", ts("2026-03-01T00:00:00"), None),  # 92 days
    ]
    # Hooli (88 days) and both Acmes (May) are not on the list.


def test_person_ids_resolve_a_merged_id_to_its_survivor(tmp_path):
    sb = Sandbox(tmp_path, members=[ALICE])
    wh = tmp_path / "warehouse.duckdb"
    names = {"jdoe@initech.com": "Jane Doe", "jane.doe@initech.com": "Jane Doe"}
    sb.land(ALICE, [Mail("m1", ALICE, ["jdoe@initech.com"], labels=["SENT"],
                         at="2026-03-01T00:00:00", names=names)])  # fmt: skip
    first = publish_sandbox(sb, wh)
    [held] = rows(wh, "SELECT person_id FROM people")  # an analyst saves this id
    held_id = held["person_id"]

    # An older record with the same full name on the same company domain turns up:
    # the two are one person, and the older one survives (transforms/merges.py).
    sb.land(ALICE, [Mail("m0", ALICE, ["jane.doe@initech.com"], labels=["SENT"],
                         at="2026-01-10T00:00:00", names=names)])  # fmt: skip
    second = publish_sandbox(sb, wh, previous=first, run_id="run-2")
    [survivor] = rows(wh, "SELECT person_id, email_addresses FROM people")
    survivor_id = survivor["person_id"]
    assert survivor_id != held_id
    assert sorted(survivor["email_addresses"]) == ["jane.doe@initech.com", "jdoe@initech.com"]
    assert rows(wh, "SELECT survivor_id, merged_id FROM person_merges") == [
        {"survivor_id": survivor_id, "merged_id": held_id}
    ]
    assert rows(wh, "SELECT * FROM person_ids ORDER BY any_id") == sorted(
        [
            {"any_id": survivor_id, "person_id": survivor_id},
            {"any_id": held_id, "person_id": survivor_id},
        ],
        key=lambda r: r["any_id"],
    )

    # Chains, dangling and cyclic log rows (hand-made): a chain resolves to the live end,
    # the others are left out, and the view still answers.
    extra = pl.DataFrame(
        {
            "survivor_id": [held_id, "per_nowhere", "per_c2", "per_c1"],
            "merged_id": ["per_older", "per_ghost", "per_c1", "per_c2"],
            "rule": ["handmade"] * 4,
        }
    )
    tables = {**second.tables, **workspace_tables(sb.ws)}
    tables["person_merges"] = pl.concat([tables["person_merges"], extra], how="diagonal_relaxed")
    publish(wh, tables, pl.DataFrame(schema=SYNC_RUN_SCHEMA), "run-3")
    resolved = {r["any_id"]: r["person_id"] for r in rows(wh, "SELECT * FROM person_ids")}
    assert resolved == {survivor_id: survivor_id, held_id: survivor_id, "per_older": survivor_id}
