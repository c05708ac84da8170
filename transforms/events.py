"""Calendar events: current state, people from attendees, meeting interactions (§4.3, §4.6).

The same meeting on two members' calendars shares an iCalUID; each copy stays with
its account (privacy, blocklists), and interactions use (iCalUID, start) as the source
so a member counts a meeting once however many of their calendars hold it.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from transforms.addresses import shown_addresses
from transforms.current import latest_versions
from transforms.rules import is_automated_address, message_key

EVENTS_SCHEMA = {
    "event_key": pl.String,
    "account_id": pl.String,
    "starts_at": pl.Datetime("us", "UTC"),
    "ends_at": pl.Datetime("us", "UTC"),
    "title": pl.String,
    "organizer_email": pl.String,
    "attendee_emails": pl.List(pl.String),
    "status": pl.String,
}


def current_events(raw_events: pl.LazyFrame) -> pl.LazyFrame:
    """Live, non-cancelled events; blocked markers are kept (flagged) for the caller."""
    return (
        latest_versions(raw_events, ["account_id", "event_id"])
        .filter((pl.col("op") == "upsert") & (pl.col("status") != "cancelled"))
        .with_columns(blocked=(pl.col("status") == "blocked"))
    )


def event_source_key() -> pl.Expr:
    start = pl.col("starts_at").dt.strftime("%Y%m%dT%H%M%SZ")
    uid = pl.col("ical_uid").str.strip_chars()
    return pl.coalesce(
        pl.when(uid != "").then(pl.concat_str([uid, pl.lit("@"), start])),
        pl.concat_str(["account_id", "event_id"], separator=":"),
    )


def events_table(events: pl.DataFrame, attendees: pl.DataFrame) -> pl.DataFrame:
    """The contract `events` table: visible copies, one row per account and occurrence
    (no events: an empty table of EVENTS_SCHEMA)."""
    if events.is_empty():
        return pl.DataFrame(schema=EVENTS_SCHEMA)
    key = message_key(events.lazy(), attendees.lazy(), "event_id")  # (`_mid`: read_events)
    people = attendees.with_columns(addr=shown_addresses(attendees))
    organizer = (
        people.filter(pl.col("role") == "organizer")
        .group_by(key)
        .agg(organizer_email=pl.col("addr").first())
    )
    # Sorted once, not group by group: a group keeps its rows' order.
    guests = (
        people.filter(pl.col("role") == "attendee")
        .select(*key, "addr")
        .sort("addr")
        .group_by(key)
        .agg(attendee_emails="addr")
    )
    return (
        events.join(organizer, on=key, how="left")
        .join(guests, on=key, how="left")
        .select(
            event_key=pl.concat_str(["account_id", "event_id"], separator=":"),
            account_id="account_id",
            starts_at="starts_at",
            ends_at="ends_at",
            title="title",
            organizer_email="organizer_email",
            attendee_emails=pl.col("attendee_emails").fill_null([]),
            status="status",
        )
        .sort("event_key")
        .cast(EVENTS_SCHEMA)
    )


def attendee_candidates(
    events: pl.LazyFrame, attendees: pl.LazyFrame, as_of: datetime
) -> pl.LazyFrame:
    """External organizers and attendees create people (never rooms or machines)."""
    ev = events.select(
        "account_id", "event_id", sent_at=pl.min_horizontal(pl.col("starts_at"), pl.lit(as_of))
    )
    return (
        attendees.filter(pl.col("valid") & ~pl.col("internal") & ~pl.col("resource"))
        .filter(~is_automated_address())
        .join(ev, on=["account_id", "event_id"], how="inner")
        .select("canonical_key", "email", "name", "account_id", "sent_at")
    )


def meeting_interactions(
    events: pl.LazyFrame,
    attendees: pl.LazyFrame,
    person_keys: pl.LazyFrame,
    accounts: pl.DataFrame,
) -> pl.LazyFrame:
    """One row per (member, person, meeting); weight 1/sqrt(other attendees)."""
    key = message_key(events, attendees, "event_id")
    size = (
        attendees.filter(~pl.col("resource"))
        .group_by(key)
        .agg(n_people=pl.col("address").n_unique())
    )
    ev = events.join(size, on=key, how="left").select(
        *key,
        at="starts_at",
        source_key=event_source_key(),
        weight=1.0 / (pl.col("n_people").fill_null(2).cast(pl.Float64) - 1.0).clip(1.0).sqrt(),
    )
    return (
        attendees.filter(
            pl.col("valid")
            & ~pl.col("internal")
            & ~pl.col("resource")
            & (pl.col("response_status").fill_null("") != "declined")
        )
        .select(*dict.fromkeys(["account_id", *key]), "canonical_key")
        .join(ev, on=key, how="inner")
        .join(person_keys, on="canonical_key", how="inner")
        .join(accounts.lazy().select("account_id", "member_id"), on="account_id", how="inner")
        .select(
            "member_id",
            *[c for c in person_keys.collect_schema().names() if c != "canonical_key"],
            "account_id",
            kind=pl.lit("meeting"),
            at="at",
            source_key="source_key",
            weight="weight",
        )
    )
