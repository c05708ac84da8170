"""Metrics and connection strength (DESIGN §4.6) on handcrafted mailboxes, plus properties.

AS_OF is 2026-06-01T00:00Z. Expected values are worked out by hand; scores come from the
documented formula (transforms/metrics.py docstring), restated here with its constants:

    decay(a) = 0.8 * 2^(-a/45) + 0.2 * 2^(-a/365)          a = age in days
    score    = 0.3*S_sent + 0.6*S_received + 1.5*min(S_sent, S_received) + 2.0*S_meeting
    S_meeting sums decay(a) / sqrt(other attendees); bands < 0.5 < 2 < 6 < 15.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tests.mailbox import AS_OF, Mail, Sandbox, ts
from tests.warehouse.helpers import land_mail
from transforms.metrics import (
    INTERACTIONS_SCHEMA,
    SCORE_EPOCH,
    person_connection_sums,
    utc_instant,
)

ALICE, BOB = "alice@acme-team.io", "bob@acme-team.io"
PAT, LEE, QUINN = "pat@initech.com", "lee@initech.com", "quinn@globex.com"
BANDS = ["very_weak", "weak", "good", "strong", "very_strong"]


def decay(days: float) -> float:
    return 0.8 * 2 ** (-days / 45) + 0.2 * 2 ** (-days / 365)


def expected_score(
    sent: list[float], received: list[float], meetings: list[tuple[float, float]] = ()
) -> float:
    """The documented formula; meetings are (age in days, weight)."""
    s = sum(decay(a) for a in sent)
    r = sum(decay(a) for a in received)
    m = sum(decay(a) * w for a, w in meetings)
    return 0.3 * s + 0.6 * r + 1.5 * min(s, r) + 2.0 * m


def band(score: float) -> str:
    for limit, label in zip((0.5, 2, 6, 15), BANDS, strict=False):
        if score < limit:
            return label
    return "very_strong"


def age(at: str) -> float:
    return (AS_OF - ts(at)).total_seconds() / 86400


def person_id(staged, email: str) -> str:
    rows = staged.tables["people"].filter(pl.col("email_addresses").list.contains(email))
    assert rows.height == 1
    return rows["person_id"][0]


def member_id(sb: Sandbox, email: str) -> str:
    return next(m.member_id for m in sb.ws.members if m.email == email)


def metrics_row(frame: pl.DataFrame, key: str, value: str) -> pl.DataFrame:
    return frame.filter(pl.col(key) == value).drop(key)


def expected_metrics(frame: pl.DataFrame, key: str, **values) -> pl.DataFrame:
    schema = {k: v for k, v in frame.schema.items() if k != key}
    assert set(values) == set(schema)
    return pl.DataFrame([values], schema=schema)


# ------------------------------------------------------------------ handcrafted scenarios
@pytest.fixture
def timeline(tmp_path) -> Sandbox:
    """Alice and Bob with Pat (and Lee, cc'd once) at initech.com.

    alice -> pat  s0 2025-05-01 (396 d)   s1 2025-07-01 (335 d)   s2 2026-05-02 (30 d, exactly)
                  s3 2026-05-20 (12 d, cc lee)
    pat -> alice  r1 2026-04-01 (61 d)
    bob -> pat    b1 2026-05-28 (4 d)
    alice meets pat (1:1) e0 2026-01-01T10 (150 d 14 h), e1 2026-05-25T10 (6 d 14 h),
                          e2 2026-06-10T10 and e3 2026-07-01T10 (future)
    """
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    sb.land(
        ALICE,
        [
            Mail("s0", ALICE, [PAT], labels=["SENT"], at="2025-05-01T00:00:00"),
            Mail("s1", ALICE, [PAT], labels=["SENT"], at="2025-07-01T00:00:00"),
            Mail("r1", PAT, [ALICE], at="2026-04-01T00:00:00"),
            Mail("s2", ALICE, [PAT], labels=["SENT"], at="2026-05-02T00:00:00"),
            Mail("s3", ALICE, [PAT], cc=[LEE], labels=["SENT"], at="2026-05-20T00:00:00"),
        ],
    )
    sb.land(BOB, [Mail("b1", BOB, [PAT], labels=["SENT"], at="2026-05-28T00:00:00")])
    for eid, start in [
        ("e0", "2026-01-01T10:00:00"),
        ("e1", "2026-05-25T10:00:00"),
        ("e2", "2026-06-10T10:00:00"),
        ("e3", "2026-07-01T10:00:00"),
    ]:
        sb.land_event(ALICE, eid, start, ALICE, [PAT])
    return sb


def alice_pat_score() -> float:
    return expected_score(
        sent=[396, 335, 30, 12],
        received=[61],
        meetings=[(age("2026-01-01T10:00:00"), 1.0), (age("2026-05-25T10:00:00"), 1.0)],
    )


def test_person_metrics_timeline_counts_and_strongest_connection(timeline):
    staged = timeline.build_published()
    pm = staged.tables["person_metrics"]
    assert age("2025-05-01T00:00:00") == 396 and age("2026-05-02T00:00:00") == 30
    score = alice_pat_score()
    assert band(score) == "good"  # ~3.86
    expected = expected_metrics(
        pm,
        "person_id",
        first_interaction_at=ts("2025-05-01T00:00:00"),
        last_interaction_at=ts("2026-05-28T00:00:00"),  # Bob's mail beats Alice's meeting
        last_interaction_kind="email_sent",
        last_interaction_member=BOB,
        first_email_at=ts("2025-05-01T00:00:00"),
        last_email_at=ts("2026-05-28T00:00:00"),
        first_meeting_at=ts("2026-01-01T10:00:00"),
        last_meeting_at=ts("2026-05-25T10:00:00"),
        next_meeting_at=ts("2026-06-10T10:00:00"),  # the earliest future one, not e3
        emails_30d=2,  # s3, b1 (s2 is exactly 30 days old: outside)
        emails_90d=4,  # + r1, s2
        emails_365d=5,  # + s1 (s0 is 396 days old)
        meetings_90d=1,  # e1 (e0 is older, e2/e3 are ahead)
        strongest_connection_member=ALICE,
        strongest_connection_strength="good",
        strongest_connection_score=score,
    )
    assert_frame_equal(metrics_row(pm, "person_id", person_id(staged, PAT)), expected)

    lee = metrics_row(pm, "person_id", person_id(staged, LEE)).row(0, named=True)
    assert (lee["last_interaction_at"], lee["last_interaction_member"]) == (
        ts("2026-05-20T00:00:00"),
        ALICE,
    )
    assert (lee["emails_30d"], lee["emails_90d"], lee["meetings_90d"]) == (1, 1, 0)


def test_company_metrics_count_each_mail_once_and_sum_person_scores(timeline):
    staged = timeline.build_published()
    cm = staged.tables["company_metrics"]
    [company_id] = staged.tables["companies"]["company_id"].to_list()
    alice_company = alice_pat_score() + expected_score(sent=[12], received=[])  # pat + lee
    expected = expected_metrics(
        cm,
        "company_id",
        first_interaction_at=ts("2025-05-01T00:00:00"),
        last_interaction_at=ts("2026-05-28T00:00:00"),
        last_interaction_kind="email_sent",
        last_interaction_member=BOB,
        first_email_at=ts("2025-05-01T00:00:00"),
        last_email_at=ts("2026-05-28T00:00:00"),
        first_meeting_at=ts("2026-01-01T10:00:00"),
        last_meeting_at=ts("2026-05-25T10:00:00"),
        next_meeting_at=ts("2026-06-10T10:00:00"),
        emails_30d=2,  # s3 reached two initech people but is one mail
        emails_90d=4,
        emails_365d=5,
        meetings_90d=1,
        strongest_connection_member=ALICE,
        strongest_connection_strength=band(alice_company),
        strongest_connection_score=alice_company,
    )
    assert_frame_equal(metrics_row(cm, "company_id", company_id), expected)
    company_rows = staged.tables["connections"].filter(pl.col("person_id").is_null())
    assert_frame_equal(
        company_rows.sort("member_id").select("member_id", "company_id", "score"),
        pl.DataFrame(
            {
                "member_id": [member_id(timeline, ALICE), member_id(timeline, BOB)],
                "company_id": [company_id, company_id],
                "score": [alice_company, expected_score(sent=[4], received=[])],
            }
        ).sort("member_id"),
    )


def test_a_removed_account_contributes_nothing(timeline):
    bob = next(a for a in timeline.ws.accounts if a.email == BOB)
    bob.status = "removed"
    staged = timeline.build_published()
    pat = metrics_row(staged.tables["person_metrics"], "person_id", person_id(staged, PAT))
    row = pat.row(0, named=True)
    # without b1, the last interaction is Alice's meeting e1
    assert (row["last_interaction_at"], row["last_interaction_kind"]) == (
        ts("2026-05-25T10:00:00"),
        "meeting",
    )
    assert row["last_interaction_member"] == ALICE
    assert (row["emails_30d"], row["emails_90d"], row["emails_365d"]) == (1, 3, 4)
    assert row["strongest_connection_score"] == pytest.approx(alice_pat_score(), rel=1e-12)
    assert set(staged.tables["connections"]["member_id"]) == {member_id(timeline, ALICE)}
    assert set(staged.tables["interactions"]["member_id"]) == {member_id(timeline, ALICE)}


def test_two_way_mail_beats_one_way_mail_for_the_strongest_connection(tmp_path):
    """Alice: sent 30 days ago, answered 15 days ago. Bob: sent 5 days ago, no answer."""
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    sb.land(
        ALICE,
        [
            Mail("q1", ALICE, [QUINN], labels=["SENT"], at="2026-05-02T00:00:00"),
            Mail("q2", QUINN, [ALICE], at="2026-05-17T00:00:00"),
        ],
    )
    sb.land(BOB, [Mail("q3", BOB, [QUINN], labels=["SENT"], at="2026-05-27T00:00:00")])
    staged = sb.build_published()
    d30, d15, d5 = decay(30), decay(15), decay(5)
    # Alice: S_sent = d30, S_received = d15 > d30, so min = d30
    alice = 0.3 * d30 + 0.6 * d15 + 1.5 * d30  # = 1.8*0.69288 + 0.6*0.82934 ~ 1.7448
    bob = 0.3 * d5  # one-way: ~ 0.2816, although Bob's mail is the most recent
    assert alice == pytest.approx(1.7448, abs=1e-4) and bob == pytest.approx(0.2816, abs=1e-4)
    quinn, [globex] = person_id(staged, QUINN), staged.tables["companies"]["company_id"]
    a_id, b_id = member_id(sb, ALICE), member_id(sb, BOB)
    expected = pl.DataFrame(
        {
            "member_id": [a_id, a_id, b_id, b_id],
            "person_id": [quinn, None, quinn, None],
            "company_id": [globex] * 4,
            "score": [alice, alice, bob, bob],
            "strength": ["weak", "weak", "very_weak", "very_weak"],
        }
    )
    order = ["member_id", "person_id"]
    assert_frame_equal(
        staged.tables["connections"].sort(order, nulls_last=True),
        expected.sort(order, nulls_last=True),
    )
    row = staged.tables["person_metrics"].row(0, named=True)
    assert row["strongest_connection_member"] == ALICE
    assert row["strongest_connection_strength"] == "weak"
    assert row["strongest_connection_score"] == pytest.approx(alice, rel=1e-12)
    assert row["last_interaction_member"] == BOB


def test_large_meetings_count_less_per_attendee(tmp_path):
    sb = Sandbox(tmp_path, members=[ALICE])
    sb.land_event(ALICE, "one", "2026-05-22T00:00:00", ALICE, ["one@initech.com"])
    crowd = [f"{n}@globex.com" for n in ("a", "b", "c", "d")]
    sb.land_event(ALICE, "big", "2026-05-22T00:00:00", ALICE, crowd)
    staged = sb.build_published()
    scores = dict(
        staged.tables["connections"]
        .filter(pl.col("person_id").is_not_null())
        .join(staged.tables["people"], on="person_id")
        .select("primary_email", "score")
        .iter_rows()
    )
    assert scores["one@initech.com"] == pytest.approx(2.0 * decay(10), rel=1e-12)
    for email in crowd:  # four other attendees: weight 1/sqrt(4)
        assert scores[email] == pytest.approx(2.0 * decay(10) / math.sqrt(4), rel=1e-12)


def test_mail_synced_by_two_members_counts_once_but_is_an_interaction_for_each(tmp_path):
    sb = Sandbox(tmp_path, members=[ALICE, BOB])
    shared = {"rfc_id": "<kickoff@initech.com>", "at": "2026-05-20T00:00:00"}
    sb.land(ALICE, [Mail("s1", ALICE, [PAT], labels=["SENT"], at="2026-05-10T00:00:00")])
    sb.land(ALICE, [Mail("k-a", PAT, [ALICE, BOB], **shared)])
    sb.land(BOB, [Mail("k-b", PAT, [ALICE, BOB], **shared)])
    staged = sb.build_published()
    inter = staged.tables["interactions"].filter(pl.col("source_key") == "<kickoff@initech.com>")
    assert sorted(inter["member_id"]) == sorted([member_id(sb, ALICE), member_id(sb, BOB)])
    row = staged.tables["person_metrics"].row(0, named=True)
    assert (row["emails_30d"], row["emails_90d"]) == (2, 2)  # s1 and the kickoff, once


def test_mail_without_a_message_id_is_never_merged_with_other_mail(tmp_path):
    """Regression: a blank Message-ID made every such message one source (one interaction)."""
    sb = Sandbox(tmp_path, members=[ALICE])
    for mid, rfc, day in [("m1", "", 18), ("m2", "", 19), ("m3", "  ", 20)]:
        mail = Mail(mid, ALICE, [PAT], labels=["SENT"], rfc_id=rfc, at=f"2026-05-{day}T00:00:00")
        land_mail(sb, ALICE, mail)
    staged = sb.build_published()
    assert staged.tables["interactions"].height == 3
    row = staged.tables["person_metrics"].row(0, named=True)
    assert row["emails_30d"] == 3
    assert row["last_email_at"] == ts("2026-05-20T00:00:00")
    assert row["strongest_connection_score"] == pytest.approx(
        expected_score(sent=[14, 13, 12], received=[]), rel=1e-12
    )


_SCORES_DB: list = []  # one in-memory warehouse for every call: a schema per call is slow


def person_connections(interactions: pl.LazyFrame, as_of: datetime) -> pl.DataFrame:
    """Scores as the published `connections` view computes them from the stored sums."""
    import duckdb

    from warehouse.publish import insert_frame, scores_sql, sql_text

    if not _SCORES_DB:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute(sql_text("schema.sql"))
        con.execute(scores_sql())
        _SCORES_DB.append(con)
    con = _SCORES_DB[0]
    con.execute("DELETE FROM _rapport_connection_sums")
    con.execute("DELETE FROM _rapport_build")
    insert_frame(
        con, "_rapport_connection_sums", person_connection_sums(interactions, as_of).collect()
    )
    con.execute(
        "INSERT INTO _rapport_build (as_of, fingerprint, mode) VALUES (?, 'test', 'full')",
        [as_of],
    )
    return con.sql(
        "SELECT member_id, person_id, score, strength FROM connections WHERE person_id IS NOT NULL"
    ).pl()


def test_strength_bands_at_their_limits():
    scores = [0.0, 0.4999, 0.5, 1.9999, 2.0, 5.9999, 6.0, 14.9999, 15.0, 1e6]
    labels = [band(s) for s in scores]
    assert labels == [
        "very_weak",
        "very_weak",
        "weak",
        "weak",
        "good",
        "good",
        "strong",
        "strong",
        "very_strong",
        "very_strong",
    ]
    frame = pl.DataFrame(
        {
            "member_id": ["m"] * len(scores),
            "person_id": [f"p{i}" for i in range(len(scores))],
            "company_id": [None] * len(scores),
            "account_id": ["a"] * len(scores),
            "kind": ["meeting"] * len(scores),
            # at the sums' epoch, with as_of there too, every decay factor is exactly 1:
            # score = 2.0 * weight
            "at": [SCORE_EPOCH] * len(scores),
            "source_key": [f"s{i}" for i in range(len(scores))],
            "weight": [s / 2.0 for s in scores],
        },
        schema=INTERACTIONS_SCHEMA,
    )
    out = person_connections(frame.lazy(), SCORE_EPOCH).sort("score")
    assert out["strength"].to_list() == labels


# ------------------------------------------------------------------ monotonicity properties
KINDS = ("email_sent", "email_received", "meeting")
MAX_AGE_MIN = 3 * 365 * 24 * 60
# (kind, age in minutes before AS_OF, meeting weight)
Item = tuple[str, int, float]
weights = st.sampled_from([1.0, 1 / math.sqrt(2), 0.5, 1 / math.sqrt(8)])
# Days from a sampled range (spread evenly over three years; st.integers favours small
# values, which would leave the old, slow-decay end untested), plus minutes.
ages = st.builds(
    lambda day, minute: day * 1440 + minute,
    st.sampled_from(range(3 * 365)),
    st.integers(min_value=0, max_value=1439),
)
fractions = st.sampled_from(range(1001))  # an even share of [0, x]: x * f // 1000


def at_most(data: st.DataObject, limit: int, label: str) -> int:
    return limit * data.draw(fractions, label=label) // 1000


items = st.lists(st.tuples(st.sampled_from(KINDS), ages, weights), max_size=8)
# Another relationship in the same frame, which no change to the first may touch.
BYSTANDER: list[Item] = [("email_sent", 600, 1.0), ("email_received", 90_000, 1.0)]


def frame(subject: list[Item]) -> pl.LazyFrame:
    rows = [("mem_a", "per_p", *item) for item in subject]
    rows += [("mem_b", "per_q", *item) for item in BYSTANDER]
    return pl.DataFrame(
        {
            "member_id": [r[0] for r in rows],
            "person_id": [r[1] for r in rows],
            "company_id": ["com_x"] * len(rows),
            "account_id": ["acc"] * len(rows),
            "kind": [r[2] for r in rows],
            "at": [AS_OF - timedelta(minutes=r[3]) for r in rows],
            "source_key": [f"src{i}" for i in range(len(rows))],
            "weight": [r[4] if r[2] == "meeting" else 1.0 for r in rows],
        },
        schema=INTERACTIONS_SCHEMA,
    ).lazy()


def scored(subject: list[Item], as_of: datetime = AS_OF) -> tuple[float, int, pl.DataFrame]:
    """(score, band rank) of mem_a/per_p, and the bystander's row."""
    out = person_connections(frame(subject), as_of)
    mine = out.filter(pl.col("person_id") == "per_p")
    other = out.filter(pl.col("person_id") == "per_q")
    if mine.is_empty():
        return 0.0, 0, other
    return mine["score"][0], BANDS.index(mine["strength"][0]), other


def assert_not_lower(before: list[Item], after: list[Item]) -> None:
    s0, b0, other0 = scored(before)
    s1, b1, other1 = scored(after)
    assert s1 >= s0 - 1e-12 * max(1.0, s0), (before, after, s0, s1)
    assert b1 >= b0, (before, after, s0, s1)
    assert_frame_equal(other0, other1)


PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(
    sent=st.lists(ages, min_size=1, max_size=6),
    meetings=st.lists(st.tuples(ages, weights), max_size=2),
    reply=ages,
)
def test_a_reply_to_one_way_mail_never_lowers_the_score(sent, meetings, reply):
    before = [("email_sent", a, 1.0) for a in sent] + [("meeting", a, w) for a, w in meetings]
    assert_not_lower(before, [*before, ("email_received", reply, 1.0)])


@PROPERTY
@given(base=items, kind=st.sampled_from(["email_sent", "email_received"]), data=st.data())
def test_a_later_email_never_lowers_the_score(base, kind, data):
    newest = min((a for _, a, _ in base), default=MAX_AGE_MIN)
    later = at_most(data, newest, "later")
    assert_not_lower(base, [*base, (kind, later, 1.0)])


@PROPERTY
@given(base=items, at=ages, weight=weights)
def test_a_meeting_never_lowers_the_score(base, at, weight):
    assert_not_lower(base, [*base, ("meeting", at, weight)])


@PROPERTY
@given(base=items.filter(bool), data=st.data())
def test_moving_an_interaction_closer_to_as_of_never_lowers_the_score(base, data):
    i = data.draw(st.integers(min_value=0, max_value=len(base) - 1), label="index")
    kind, old, weight = base[i]
    new = at_most(data, old, "new age")
    moved = [*base[:i], (kind, new, weight), *base[i + 1 :]]
    assert_not_lower(base, moved)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 6, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch
        datetime(2026, 6, 1, 2, 30, 0, 7, tzinfo=timezone(timedelta(hours=2))),  # = 00:30Z
    ],
)
def test_a_utc_instant_literal_is_the_same_instant_as_polars_own(moment: datetime) -> None:
    frame = pl.select(ours=utc_instant(moment), polars=pl.lit(moment))
    assert frame.schema["ours"] == pl.Datetime("us", "UTC")
    assert frame["ours"].dt.epoch("us").item() == frame["polars"].dt.epoch("us").item()
    assert frame["ours"].item() == moment
    # and it compares as an instant against a column of that type
    at = pl.DataFrame({"at": [moment - timedelta(microseconds=1), moment]}).cast(
        {"at": pl.Datetime("us", "UTC")}
    )
    assert at.filter(pl.col("at") < utc_instant(moment)).height == 1


def test_a_naive_datetime_is_refused_as_an_instant() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_instant(datetime(2026, 6, 1))
