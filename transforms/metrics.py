"""Interactions, per-person/company metrics and connection strength (§4.6).

Connection strength, per (member, person):

    decay(a)  = 0.8 * 2^(-a / 45d) + 0.2 * 2^(-a / 365d)     a = age of the interaction
    S_kind    = sum of decay(a) over that member's interactions of that kind
    score     = 0.3 * S_sent + 0.6 * S_received + 1.5 * min(S_sent, S_received) + 2.0 * S_meeting

  * recency and frequency: every interaction adds a positive, age-decayed amount;
  * reciprocity: the min() term only pays when mail flows both ways, so a member's
    unanswered outreach (S_received = 0) is worth 0.3 per message and no more;
  * meetings: weight 2.0, divided by sqrt(number of other attendees) so a large
    meeting is worth less per attendee;
  * long relationships decay more slowly: the 365-day component keeps a long
    history alive after the 45-day component has faded.
  Every term is non-decreasing in each interaction's recency and count, so the score
  is monotone. Company score for a member = sum of the member's person scores there.

Bands: < 0.5 very_weak, < 2 weak, < 6 good, < 15 strong, else very_strong.

The score changes with as_of alone, so it is not stored: each (member, person) keeps
its decay sums anchored at SCORE_EPOCH, which change only when interactions are added,
and the views in warehouse/sql/scores.sql scale them to the run's as_of and apply the
formula above (with these constants) when queried.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import polars as pl

from transforms.rules import message_key

HALF_LIFE_FAST_DAYS = 45.0
HALF_LIFE_SLOW_DAYS = 365.0
FAST_SHARE = 0.8
W_SENT = 0.3
W_RECEIVED = 0.6
W_RECIPROCAL = 1.5
W_MEETING = 2.0
BANDS = [(0.5, "very_weak"), (2.0, "weak"), (6.0, "good"), (15.0, "strong")]
STRENGTHS = ("very_weak", "weak", "good", "strong", "very_strong")

INTERACTIONS_SCHEMA = {
    "member_id": pl.String,
    "person_id": pl.String,
    "company_id": pl.String,
    "account_id": pl.String,
    "kind": pl.String,
    "at": pl.Datetime("us", "UTC"),
    "source_key": pl.String,
    "weight": pl.Float64,
}


def source_key() -> pl.Expr:
    """Same mail in two mailboxes is one source: the RFC Message-ID when present.

    A blank Message-ID (an empty header) is no id: such mail stands alone, as it does in
    messages_for(), or every blank-id message to a person would collapse into one.
    """
    rfc = pl.col("rfc_message_id").str.strip_chars()
    return pl.coalesce(
        pl.when(rfc != "").then(rfc), pl.concat_str(["account_id", "message_id"], separator=":")
    )


def email_interactions(
    messages: pl.LazyFrame,
    participants: pl.LazyFrame,
    person_keys: pl.LazyFrame,
    accounts: pl.DataFrame,
) -> pl.LazyFrame:
    """One row per (member, person, message): sent mail to the person or received mail.

    `person_keys` maps canonical_key -> person_id, plus any other per-person columns
    (company_id), which the rows carry. Plain joins: `mail_rows` is the fast path the
    build takes when messages carry `_mid`.
    """
    key = message_key(messages, participants)
    parts = _mail_participants(
        participants.select(*key, "role", "canonical_key", "valid", "internal"), person_keys
    )
    extra = [c for c in person_keys.collect_schema().names() if c != "canonical_key"]
    sent = pl.col("kind") == "email_sent"
    return (
        parts.join(message_facts(messages, accounts, key), on=key, how="inner")
        .filter(mail_row_kept(sent))
        .select(
            "member_id",
            *extra,
            "account_id",
            "kind",
            "at",
            "source_key",
            weight=mail_weight(sent),
        )
    )


def message_facts(messages: pl.LazyFrame, accounts: pl.DataFrame, key: list[str]) -> pl.LazyFrame:
    """What a mail interaction takes from its message: member, account, kind, time and
    source, worked out once per message (not per row); mail of an account no member
    holds drops out."""
    return messages.select(
        *dict.fromkeys([*key, "account_id"]),
        member_id=member_of_account(accounts),
        kind=pl.when(pl.col("direction") == "sent")
        .then(pl.lit("email_sent"))
        .otherwise(pl.lit("email_received")),
        at="sent_at",
        source_key=source_key(),
    ).filter(pl.col("member_id").is_not_null())


def member_of_account(accounts: pl.DataFrame) -> pl.Expr:
    """The member holding each row's `account_id` (null for an account not in `accounts`)."""
    members = dict(zip(accounts["account_id"], accounts["member_id"], strict=True))
    return pl.col("account_id").replace_strict(members, default=None)


def _mail_participants(participants: pl.LazyFrame, person_keys: pl.LazyFrame) -> pl.LazyFrame:
    """Valid outside participants that are people (or kept contacts), with their keys."""
    return (
        participants.filter(pl.col("valid") & ~pl.col("internal"))
        .drop("valid", "internal")
        .join(person_keys, on="canonical_key", how="inner")
        .drop("canonical_key")
    )


def mail_row_kept(sent: pl.Expr) -> pl.Expr:
    """The member's own From on sent mail is no interaction with anyone."""
    return ~sent | (pl.col("role") != "from")


def mail_weight(sent: pl.Expr) -> pl.Expr:
    """On received mail only the sender wrote to the member: co-recipients count as
    contact (first/last, counts) but add nothing to the strength score."""
    return pl.when(~sent & (pl.col("role") != "from")).then(pl.lit(0.0)).otherwise(pl.lit(1.0))


def mail_rows(
    messages: pl.DataFrame,
    participants: pl.DataFrame,
    person_keys: pl.DataFrame,
    accounts: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """email_interactions, kept narrow -> (rows, per-message columns).

    Each row holds `_k` (its row of `person_keys`), `_contact`, its weight, `_at` (its
    message's row in the per-message frame) and `_key_hash` (interaction_key_hash). The
    strings of the person (id, company) and of the message (member, account, kind, time,
    source) are gathered once, by whoever knows the final order of the rows: at a
    million messages, one copy of the wide rows instead of four.
    Needs `_mid` on both messages and participants.
    """
    # (one chunk: its columns are gathered for every row, see with_message_columns)
    per_message = message_facts(messages.lazy(), accounts, ["_mid"]).collect().rechunk()
    hashes = per_message.select(
        "_mid",
        _sent=pl.col("kind") == "email_sent",
        _member_hash=pl.col("member_id").hash(11),
        _source_hash=pl.col("source_key").hash(13),
    )
    keys = person_keys.select(
        "canonical_key",
        "_contact",
        _k=pl.int_range(pl.len(), dtype=pl.UInt32),
        _person_hash=pl.col("person_id").hash(12),
    )
    rows = _mail_participants(
        participants.lazy().select("_mid", "role", "canonical_key", "valid", "internal"),
        keys.lazy(),
    ).collect()
    rows = with_message_columns(rows, hashes)
    sent = pl.col("_sent")
    rows = (
        rows.with_columns(_at=message_positions(rows["_mid"], per_message["_mid"]))
        .filter(mail_row_kept(sent))
        .with_columns(
            weight=mail_weight(sent),
            _key_hash=interaction_key_hash(
                pl.col("_member_hash"), pl.col("_person_hash"), pl.col("_source_hash")
            ),
        )
        .drop("_mid", "role", "_sent", "_member_hash", "_person_hash", "_source_hash")
    )
    return rows, per_message.drop("_mid")


def message_positions(row_mids: pl.Series, message_mids: pl.Series) -> pl.Series:
    """The row of each `_mid` among `message_mids` (null where absent).

    `_mid` is the row number messages were read with (dense, small integers), so a
    lookup array replaces a hash join.
    """
    if message_mids.is_empty() or row_mids.is_empty():
        return pl.Series(row_mids.name, [None] * row_mids.len(), dtype=pl.UInt32)
    missing = 2**32 - 1
    size = int(max(message_mids.max(), row_mids.max())) + 1  # type: ignore[arg-type]
    position = pl.repeat(missing, size, dtype=pl.UInt32, eager=True).scatter(
        message_mids.cast(pl.UInt32),
        pl.int_range(message_mids.len(), dtype=pl.UInt32, eager=True),
    )
    at = position.gather(row_mids)
    return pl.select(pl.when(at != missing).then(at)).to_series().alias(row_mids.name)


def with_message_columns(
    rows: pl.DataFrame, messages: pl.DataFrame, how: str = "inner"
) -> pl.DataFrame:
    """Join (inner or left) of rows to messages on `_mid`, by position rather than by
    hashing: the 2.7M mail interaction rows of a million messages in ~0.1 s, not 0.4-1 s.
    A left join leaves rows in place (nulls where no message), for a caller that filters
    anyway: one copy of the rows instead of two."""
    if messages.is_empty() or rows.is_empty():
        return rows.join(messages, on="_mid", how=how)  # type: ignore[arg-type]
    at = message_positions(rows["_mid"], messages["_mid"])
    found = at.is_not_null()
    if how == "inner" and not found.all():
        rows, at = rows.filter(found), at.filter(found)
    # One chunk first: a gather from the ten chunks the lake was read in took 4x longer.
    others = messages.drop("_mid").rechunk()
    return pl.concat([rows, others.select(pl.all().gather(at))], how="horizontal")


KIND_RANK = {"email_sent": 0, "meeting": 1, "email_received": 2}
PER_PERSON_COLUMNS = ("company_id",)


def dedupe_interactions(rows: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (member, person, source); a sent copy beats a received copy.

    A hash group-by with order-free aggregates: deterministic without a global sort.
    Nearly every key occurs once: repeats are found on a 64-bit hash of the key (a
    collision only sends a row down the exact path) and only those rows are grouped.
    """
    # Columns that follow from the person (company_id) ride along.
    extra = [c for c in rows.collect_schema().names() if c in PER_PERSON_COLUMNS]
    cols = ["member_id", "person_id", *extra, "source_key", "account_id", "at", "weight", "kind"]
    marked = rows.with_columns(_repeat=interaction_key_hash().is_duplicated())
    single = marked.filter(~pl.col("_repeat")).select(cols)
    return pl.concat([single, merged_repeats(marked.filter(pl.col("_repeat")), cols)])


def interaction_key_hash(
    member: pl.Expr | None = None, person: pl.Expr | None = None, source: pl.Expr | None = None
) -> pl.Expr:
    """A 64-bit hash of (member_id, person_id, source_key); each part can be given
    already hashed (worked out once per message or per person rather than per row).
    Three column hashes xor-ed cost half of one hash of the struct."""
    return (
        (pl.col("member_id").hash(11) if member is None else member)
        ^ (pl.col("person_id").hash(12) if person is None else person)
        ^ (pl.col("source_key").hash(13) if source is None else source)
    )


def merged_repeats(ranked: pl.LazyFrame, cols: list[str]) -> pl.LazyFrame:
    """One row per key of repeated rows: the best kind, first account and time, largest
    weight."""
    keys = ["member_id", "person_id", "source_key"]
    follow = [c for c in cols if c not in (*keys, "account_id", "at", "weight", "kind")]
    return (
        ranked.with_columns(_rank=pl.col("kind").replace_strict(KIND_RANK, return_dtype=pl.Int8))
        .group_by(keys)
        .agg(
            *[pl.first(c) for c in follow],
            _rank=pl.min("_rank"),
            account_id=pl.min("account_id"),
            at=pl.min("at"),
            weight=pl.max("weight"),
        )
        .with_columns(
            kind=pl.col("_rank").replace_strict(
                {v: k for k, v in KIND_RANK.items()}, return_dtype=pl.String
            )
        )
        .select(cols)
    )


# Each (member, person) keeps its decay sums split by half-life, anchored at a fixed
# epoch: 2^((at - epoch) / half-life) * weight. At any as_of the sum times
# 2^(-(as_of - epoch) / half-life) is the decayed sum, so the stored sums change only
# when interactions are added. Interactions from 1971 to 2070 stay within a float64.
SCORE_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
SUM_COLUMNS = ["f_sent", "l_sent", "f_recv", "l_recv", "f_meet", "l_meet"]
SUM_KINDS = {"sent": "email_sent", "recv": "email_received", "meet": "meeting"}


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_instant(moment: datetime) -> pl.Expr:
    """A timezone-aware datetime as a literal of the interactions' type, Datetime("us",
    "UTC"). `pl.lit` of an aware datetime runs two small queries to convert its zone
    (0.4 ms each; ~40 literals in an incremental run); this casts its epoch microseconds."""
    if moment.tzinfo is None:
        raise ValueError(f"a naive datetime has no instant: {moment!r}")
    micros = (moment - _UNIX_EPOCH) // _MICROSECOND
    return pl.lit(micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))


def person_connection_sums(interactions: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Fast (45 d) and long (365 d) anchored decay sums per (member, person) and kind,
    over the interactions up to as_of.

    One group-by per (member, person, kind), then a column per kind: half the time of
    six filtered sums per (member, person) at a million messages.
    """
    days = (pl.col("at") - pl.lit(SCORE_EPOCH)).dt.total_microseconds() / 86_400e6
    pair = ["member_id", "person_id"]
    by_kind = (
        interactions.filter(pl.col("at") <= utc_instant(as_of))
        .select(
            *pair,
            "kind",
            f=(2.0 ** (days / HALF_LIFE_FAST_DAYS)) * pl.col("weight"),
            l=(2.0 ** (days / HALF_LIFE_SLOW_DAYS)) * pl.col("weight"),
        )
        .group_by(*pair, "kind")
        .agg(pl.sum("f"), pl.sum("l"))
    )
    out = by_kind.select(pair).unique()
    for short, kind in SUM_KINDS.items():
        part = by_kind.filter(pl.col("kind") == kind).select(
            *pair, pl.col("f").alias(f"f_{short}"), pl.col("l").alias(f"l_{short}")
        )
        out = out.join(part, on=pair, how="left")
    return out.with_columns(pl.col(SUM_COLUMNS).fill_null(0.0))


def activity_metrics(
    interactions: pl.LazyFrame, key: str, as_of: datetime, member_emails: pl.DataFrame
) -> pl.LazyFrame:
    """Per key: first/last/next interaction and windowed counts (no scores).

    Conditions select values with when/then (null elsewhere, which min, max and the
    counts skip), not with `filter` inside the aggregation: Polars runs a filtered
    aggregation group by group, the when/then on whole columns (at a million messages
    0.46 s -> 0.3 s for people).
    """
    at = pl.col("at")
    past = at <= as_of
    is_email = pl.col("kind").is_in(["email_sent", "email_received"])
    is_meeting = pl.col("kind") == "meeting"
    day = pl.duration(days=1)

    def within(days: int) -> pl.Expr:
        return past & (at > pl.lit(as_of) - day * days)

    def at_if(condition: pl.Expr) -> pl.Expr:
        return pl.when(condition).then(at)

    # Distinct counts on a 64-bit hash of the source key, not on the strings themselves.
    src = pl.col("_src")

    def sources_if(condition: pl.Expr) -> pl.Expr:
        return pl.when(condition).then(src).drop_nulls().n_unique().cast(pl.Int64)

    last_row, with_last_row = last_kind_and_member(interactions, past)
    base = (
        interactions.with_columns(_src=pl.col("source_key").hash(seed=7))
        .group_by(key)
        .agg(
            *last_row,
            first_interaction_at=at_if(past).min(),
            last_interaction_at=at_if(past).max(),
            first_email_at=at_if(is_email & past).min(),
            last_email_at=at_if(is_email & past).max(),
            first_meeting_at=at_if(is_meeting & past).min(),
            last_meeting_at=at_if(is_meeting & past).max(),
            next_meeting_at=at_if(is_meeting & (at > as_of)).min(),
            # Distinct sources: mail to two members, or a shared meeting, counts once.
            emails_30d=sources_if(is_email & within(30)),
            emails_90d=sources_if(is_email & within(90)),
            emails_365d=sources_if(is_email & within(365)),
            meetings_90d=sources_if(is_meeting & within(90)),
        )
    )
    return with_member_email(with_last_row(base), member_emails).select(key, *ACTIVITY_COLUMNS)


def with_member_email(activity: pl.LazyFrame, member_emails: pl.DataFrame) -> pl.LazyFrame:
    """last_interaction_member_id replaced by the member's address."""
    emails = member_emails.lazy().select(
        last_interaction_member_id="member_id", last_interaction_member="email"
    )
    return activity.join(emails, on="last_interaction_member_id", how="left").drop(
        "last_interaction_member_id"
    )


def last_kind_and_member(
    interactions: pl.LazyFrame, past: pl.Expr
) -> tuple[list[pl.Expr], Callable[[pl.LazyFrame], pl.LazyFrame]]:
    """The kind and member of the greatest (at, kind, member_id) among each group's past
    rows (ties broken by the strings, as a sort would): aggregations for the group-by,
    and the step after it that names them last_interaction_kind and
    last_interaction_member_id.

    The three are packed into one integer (time in microseconds, then the rank of the
    kind and of the member id), so a max per group finds the row, and only the groups'
    maxima are unpacked: a sort per group cost more than half of the metrics step. If
    the times or the number of members do not fit, the sort runs.
    """
    facts = interactions.select(
        first=pl.col("at").dt.epoch("us").min(),
        last=pl.col("at").dt.epoch("us").max(),
        members=pl.col("member_id").unique().sort().implode(),
    ).collect()
    member_ids = facts["members"][0].to_list() if facts.height else []
    first, last = (facts["first"][0], facts["last"][0]) if facts.height else (None, None)
    bits = max(len(member_ids), 1).bit_length()
    kinds = sorted(KIND_RANK)  # lexicographic order, as a sort of the strings has
    if first is None or first < 0 or last >= 1 << (62 - bits - 2):
        latest = [pl.col(c).filter(past) for c in ("at", "kind", "member_id")]
        by_sort = [
            pl.col("kind").filter(past).sort_by(latest).last().alias("last_interaction_kind"),
            pl.col("member_id")
            .filter(past)
            .sort_by(latest)
            .last()
            .alias("last_interaction_member_id"),
        ]
        return by_sort, lambda grouped: grouped

    def rank(column: str, values: list[str]) -> pl.Expr:  # (a value not listed fails)
        return pl.col(column).cast(pl.Enum(values)).to_physical().cast(pl.Int64)

    # Non-negative microseconds small enough to leave the low bits free.
    packed = (
        pl.col("at").dt.epoch("us") * (1 << (bits + 2))
        + rank("kind", kinds) * (1 << bits)
        + rank("member_id", member_ids)
    )
    best = pl.col("_last_row")

    def unpacked(grouped: pl.LazyFrame) -> pl.LazyFrame:
        return grouped.with_columns(
            last_interaction_kind=(best // (1 << bits) % 4).replace_strict(
                range(len(kinds)), kinds, return_dtype=pl.String
            ),
            last_interaction_member_id=(best % (1 << bits)).replace_strict(
                range(len(member_ids)), member_ids, return_dtype=pl.String
            ),
        ).drop("_last_row")

    return [pl.when(past).then(packed).max().alias("_last_row")], unpacked


def activity_table(ids: pl.LazyFrame, key: str, activity: pl.LazyFrame) -> pl.LazyFrame:
    """One activity row per id (zero counts where it has no interactions)."""
    return (
        ids.select(key)
        .join(activity, on=key, how="left")
        .with_columns(pl.col(COUNT_COLUMNS).fill_null(0))
        .select(key, *ACTIVITY_COLUMNS)
        .sort(key)
    )


COUNT_COLUMNS = ["emails_30d", "emails_90d", "emails_365d", "meetings_90d"]
# Columns of the person_metrics and company_metrics views, after the id.
METRIC_COLUMNS = [
    "first_interaction_at",
    "last_interaction_at",
    "last_interaction_kind",
    "last_interaction_member",
    "first_email_at",
    "last_email_at",
    "first_meeting_at",
    "last_meeting_at",
    "next_meeting_at",
    "emails_30d",
    "emails_90d",
    "emails_365d",
    "meetings_90d",
    "strongest_connection_member",
    "strongest_connection_strength",
    "strongest_connection_score",
]


# The stored part; the strongest_connection_* columns are added by the views (scores.sql).
ACTIVITY_COLUMNS = METRIC_COLUMNS[:13]


def person_activity(
    interactions: pl.LazyFrame, people: pl.DataFrame, as_of: datetime, members: pl.DataFrame
) -> pl.LazyFrame:
    return activity_table(
        people.lazy(), "person_id", activity_metrics(interactions, "person_id", as_of, members)
    )


def company_interactions(interactions: pl.LazyFrame) -> pl.LazyFrame:
    """The interactions of people linked to a company.

    A mail to three people of one company is one company interaction: the counts are
    distinct sources and the rest are min/max, so the repeats need no dedup pass.
    """
    return interactions.filter(pl.col("company_id").is_not_null())


def company_activity(
    interactions: pl.LazyFrame, companies: pl.DataFrame, as_of: datetime, members: pl.DataFrame
) -> pl.LazyFrame:
    return activity_table(
        companies.lazy(),
        "company_id",
        activity_metrics(company_interactions(interactions), "company_id", as_of, members),
    )
