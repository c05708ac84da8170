"""The whole transform, lake -> staged CRM tables, in DESIGN order:

blocklist -> record creation -> domain linking -> dedup merges -> interactions -> metrics.

Everything is a LazyFrame until a table is finished; per-row Python never runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import polars as pl
import pyarrow as pa

from connectors import lake
from transforms import addresses as address_rules
from transforms.addresses import domain_table, normalise_addresses, repeated, shown_addresses
from transforms.current import current_messages, current_participants, latest_versions
from transforms.events import (
    attendee_candidates,
    current_events,
    events_table,
    meeting_interactions,
)
from transforms.merges import apply_merges, merge_keys, name_key
from transforms.metrics import (
    INTERACTIONS_SCHEMA,
    SUM_COLUMNS,
    company_activity,
    dedupe_interactions,
    email_interactions,
    interaction_key_hash,
    mail_rows,
    merged_repeats,
    person_activity,
    person_connection_sums,
    utc_instant,
    with_message_columns,
)
from transforms.records import (
    address_keys,
    build_companies,
    build_people,
    erc_off_intervals,
    link_people,
    name_counts,
    name_counts_by_address,
    people_addresses,
    person_candidates,
    person_key_map,
    settle_survivors,
)
from transforms.rules import message_key, split_blocked, with_direction

TS = pl.Datetime("us", "UTC")
# Lake columns of mail no table or rule reads: not decoded (in_reply_to alone is ~35 MB
# of strings at a million messages).
MESSAGE_LAKE_COLUMNS_UNUSED = ["provider", "stream", "fetched_at", "in_reply_to", lake.CONTENT_HASH]
# What mail participants keep of normalise_addresses: at a million messages each column
# copied onto the 3.9M rows is ~60 MB (registrable domain and free-mail are per domain).
PARTICIPANT_ADDRESS_COLUMNS = ["email", "domain", "canonical_key", "valid", "internal"]
PARTICIPANT_COLUMNS_AFTER_RECORDS = [
    "_mid",
    "role",
    "address",
    "email",
    "canonical_key",
    "valid",
    "internal",
]
MESSAGE_COLUMNS_AFTER_RECORDS = [
    "_mid",
    "account_id",
    "message_id",
    "thread_id",
    "rfc_message_id",
    "sent_at",
    "direction",
    "subject",
    "snippet",
    "body_text",
]
# Columns of participant-like rows (mail participants, event attendees) used for names.
NAME_SOURCE = ["canonical_key", "email", "name", "valid"]


@dataclass
class WorkspaceFrames:
    """The workspace state the transforms need, as small frames."""

    members: pl.DataFrame  # member_id, email, name
    accounts: pl.DataFrame  # account_id, member_id, provider, email, aliases, status, ...
    account_addresses: pl.DataFrame  # account_id, member_id, address (all member addresses)
    blocklist: pl.DataFrame  # account_id, entry, kind, added_at
    erc_toggles: pl.DataFrame  # enabled, at
    as_of: datetime
    extra_free_mail: list[str] = field(default_factory=list)
    extra_company_domains: dict[str, str] = field(default_factory=dict)
    exclude_list_mail: bool = True
    automated_pattern: str | None = None

    @cached_property
    def internal(self) -> tuple[list[str], list[str]]:
        """`internal_sets`, computed once per run (the build and the gate both ask)."""
        return internal_sets(self)


@dataclass
class Staged:
    tables: dict[str, pl.DataFrame]
    stats: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)


class Laps:
    """Wall time per transform step (reported by `make bench` and sync_runs)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self.last, 4)
        self.last = now


LAKE_TABLES = ("messages", "participants", "events", "attendees", "quarantine")


def scan(lake_dir: Path, table: str, account_ids: list[str]) -> pl.LazyFrame:
    return scan_files(lake.glob(lake_dir, table, account_ids), table)


def lake_files(lake_dir: Path, frames: WorkspaceFrames) -> dict[str, list[str]]:
    """The Parquet files of every lake table, for the accounts not removed."""
    live = frames.accounts.filter(pl.col("status") != "removed")["account_id"].to_list()
    return {t: lake.glob(lake_dir, t, live) for t in LAKE_TABLES}


def lake_file_id(lake_dir: Path, path: str) -> str:
    """A lake file as the build state records it: relative to the lake."""
    return os.path.relpath(path, lake_dir)


def scan_files(files: list[str], table: str) -> pl.LazyFrame:
    return lake.scan(files, table)


# The stored interactions a run needs to find each key's next meeting: every meeting
# after the run's as_of (few: at 1M messages 12,860 of 2.67M rows). Kept as state, so
# the next run reads them instead of scanning every interaction.
UPCOMING_COLUMNS = ["person_id", "company_id", "at", "member_id", "source_key"]


def upcoming_meetings(interactions: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """The meeting rows of `interactions` after `as_of`."""
    after = (pl.col("kind") == "meeting") & (pl.col("at") > utc_instant(as_of))
    return interactions.filter(after).select(UPCOMING_COLUMNS)


def state_tables(
    *,
    counts: pl.DataFrame,
    last_used: pl.DataFrame,
    blocked_threads: pl.DataFrame,
    connection_sums: pl.DataFrame,
    contact_history: pl.DataFrame,
    name_parts: pl.DataFrame,
    address_keys: pl.DataFrame,
    person_keys: pl.DataFrame,
    domain_info: pl.DataFrame,
    upcoming: pl.DataFrame,
    files: dict[str, list[str]],
    lake_dir: Path,
) -> dict[str, pl.DataFrame]:
    """What a later run needs to extend this one instead of re-reading the lake.

    Kept inside the warehouse file, so state and tables are swapped in together.
    """
    return {
        "_rapport_name_counts": counts.select("canonical_key", "email", "name", "n"),
        "_rapport_last_used": last_used.select("email", "last_used_at"),
        "_rapport_blocked_threads": blocked_threads.select("account_id", "thread_id"),
        "_rapport_connection_sums": connection_sums.select("member_id", "person_id", *SUM_COLUMNS),
        "_rapport_contact_history": contact_history,
        "_rapport_name_parts": name_parts,
        "_rapport_address_keys": address_keys,
        "_rapport_person_keys": person_keys.select("canonical_key", "person_id"),
        "_rapport_domain_info": domain_info,
        "_rapport_upcoming_meetings": upcoming.select(UPCOMING_COLUMNS),
        "_rapport_lake_files": pl.DataFrame(
            {"path": [lake_file_id(lake_dir, f) for fs in files.values() for f in fs]},
            schema={"path": pl.String},
        ),
    }


# Attendees as read_events returns them: the lake's columns, normalised, flagged.
ATTENDEES_SCHEMA = pl.Schema(
    {
        **pl.from_arrow(lake.TABLES["attendees"].empty_table()).schema,
        "_mid": pl.UInt32,  # the row of its event among the events read
        "email": pl.String,
        "domain": pl.String,
        "registrable_domain": pl.String,
        "is_free_mail": pl.Boolean,
        "canonical_key": pl.String,
        "valid": pl.Boolean,
        "internal": pl.Boolean,
    }
)


def events_from_lake(
    files: dict[str, list[str]], frames: WorkspaceFrames
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """-> read_events' three frames, and the events table."""
    internal_addresses, internal_domains = frames.internal
    events, blocked_events, att = read_events(
        files["events"], files["attendees"], internal_addresses, internal_domains
    )
    return events, blocked_events, att, events_table(events, att)


def read_events(
    event_files: list[str],
    attendee_files: list[str],
    internal_addresses: list[str],
    internal_domains: list[str],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """-> (visible current events, blocked markers, attendees of the visible ones)."""
    if not event_files and not attendee_files:  # most incremental runs: skip the pipeline
        events = current_events(scan_files([], "events")).collect().with_row_index("_mid")
        return events, events, pl.DataFrame(schema=ATTENDEES_SCHEMA)
    # `_mid` (a row number) lets attendees find their event by a hash of the key, and the
    # meetings group and join on it, not on two strings.
    raw_events = current_events(scan_files(event_files, "events")).collect().with_row_index("_mid")
    att = attendees_of(
        scan_files(attendee_files, "attendees"),
        raw_events.lazy(),
        internal_addresses,
        internal_domains,
    ).collect()
    blocked_events = raw_events.filter(pl.col("blocked"))
    events = raw_events.filter(~pl.col("blocked"))
    if blocked_events.height:  # (an anti-join copies every attendee row even when empty)
        att = att.join(blocked_events.select("_mid"), on="_mid", how="anti")
    return events, blocked_events, att


def attendees_of(
    attendees: pl.LazyFrame,
    events: pl.LazyFrame,
    internal_addresses: list[str],
    internal_domains: list[str],
) -> pl.LazyFrame:
    """The attendees of exactly these versions of the events, normalised and flagged
    (participants of mail are read the same way)."""
    att = current_participants(
        attendees.rename({"event_id": "message_id"}),
        events.rename({"event_id": "message_id"}),
        (internal_addresses, internal_domains),
    )
    return att.rename({"message_id": "event_id"})


def read_quarantine(files: list[str]) -> pl.DataFrame:
    if not files:  # most runs
        return scan_files([], "quarantine").with_columns(seq=pl.lit(0, pl.Int32)).collect()
    return latest_versions(
        scan_files(files, "quarantine").with_columns(seq=pl.lit(0, pl.Int32)),
        ["account_id", "item_id"],
    ).collect()


def internal_sets(frames: WorkspaceFrames) -> tuple[list[str], list[str]]:
    """Member addresses, and the workspace's own (non-free) registrable domains."""
    addresses = (
        normalise_addresses(frames.account_addresses.lazy(), "address")
        .select("email")
        .drop_nulls()
        .unique()
        .collect()["email"]
        .to_list()
    )
    member_emails = frames.members["email"].to_list()
    all_addresses = sorted(set(addresses) | set(member_emails))
    domains = domain_table([a.split("@")[1] for a in all_addresses], frames.extra_free_mail)
    internal_domains = (
        domains.filter(~pl.col("is_free_mail") & pl.col("registrable_domain").is_not_null())[
            "registrable_domain"
        ]
        .unique()
        .sort()
        .to_list()
    )
    return all_addresses, internal_domains


def build(
    lake_dir: Path,
    frames: WorkspaceFrames,
    previous_people: pl.DataFrame | None = None,
    previous_companies: pl.DataFrame | None = None,
    previous_merges: pl.DataFrame | None = None,
    sink: Callable[[dict[str, pl.DataFrame]], object] | None = None,
) -> Staged:
    """Every table of a full build, from the lake.

    `sink` is handed the biggest tables as soon as they are final (they are in the
    result too), so a writer can insert them while the build goes on.
    """
    lap = Laps()

    def hand_over(tables: dict[str, pl.DataFrame]) -> None:
        if sink is not None:
            sink(tables)

    # --- current state of the lake
    files = lake_files(lake_dir, frames)
    # The calendar is independent of the mail, and reading the mail leaves a core partly
    # idle: the events are read in a thread meanwhile.
    reading_events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-events")
    events_read = reading_events.submit(events_from_lake, files, frames)
    reading_events.shutdown(wait=False)
    raw_msgs = scan_files(files["messages"], "messages").drop(MESSAGE_LAKE_COLUMNS_UNUSED)
    msgs = current_messages(raw_msgs).collect().with_row_index("_mid")
    internal_addresses, internal_domains = frames.internal  # (a sync computes it meanwhile)
    parts = current_participants(
        scan_files(files["participants"], "participants"),
        msgs.lazy(),
        (internal_addresses, internal_domains),
        [*PARTICIPANT_ADDRESS_COLUMNS, "_aid"],  # (the address's number: name counts)
        by_row_only=True,
    ).collect()
    quarantine = read_quarantine(files["quarantine"])
    events, blocked_events, att, events_out = events_read.result()
    hand_over({"events": events_out})

    lap("load_current")
    # --- 1. blocklist (message and thread level)
    blocklist = normalise_blocklist(frames.blocklist)
    visible, vparts, blocked_threads = split_blocked(msgs.lazy(), parts.lazy(), blocklist)
    visible = with_direction(visible, vparts, frames.account_addresses).collect()
    vparts = vparts.collect()
    blocked_threads = blocked_threads.collect()
    # Keep the counts, drop the pre-blocklist copies: a million wide rows less in memory.
    n_current, n_invalid = msgs.height, int((~parts["valid"]).sum())
    del msgs, parts

    lap("blocklist_direction")
    messages_out = messages_table(visible, vparts)
    message_flags = message_flags_table(visible, vparts, messages_out["message_key"])
    hand_over({"messages": messages_out, "message_flags": message_flags})
    lap("messages_table")
    # --- 2. automatic record creation (+ canonical-address dedup by construction)
    erc_off = erc_off_intervals(frames.erc_toggles)
    candidates = person_candidates(
        visible.lazy(),
        vparts.lazy(),
        blocked_threads.lazy(),
        erc_off,
        exclude_list_mail=frames.exclude_list_mail,
        automated_pattern=frames.automated_pattern,
    )
    candidates = pl.concat(
        [candidates, attendee_candidates(events.lazy(), att.lazy(), frames.as_of)]
    )
    counts = name_counts(
        pl.concat(
            [name_counts_by_address(vparts).lazy(), name_counts(att.lazy().select(NAME_SOURCE))]
        )
    ).collect()
    people, name_parts = build_people(candidates, counts.lazy(), previous_people)

    lap("people")
    last_used = last_used_by_address(visible.lazy(), vparts.lazy()).collect()
    # Records are built: keep only what interactions and the messages table read. At a
    # million messages this frees ~0.4 GiB before the steps with the highest peaks.
    vparts = vparts.select(PARTICIPANT_COLUMNS_AFTER_RECORDS)
    visible = visible.select(MESSAGE_COLUMNS_AFTER_RECORDS)
    # (merges and survivors only move addresses between people: the same domains)
    domain_info = domain_info_for(people, frames.extra_free_mail)
    people, companies, person_merges = finish_records(
        people,
        frames,
        internal_domains,
        previous_companies,
        previous_merges,
        last_used,
        domain_info,
    )
    people = settle_survivors(
        people, new_survivors(person_merges, previous_merges), counts, name_parts
    )

    lap("merges_linking")
    # --- 5. interactions and metrics
    address_key_map = address_keys(people_addresses(people))
    person_keys = person_key_map(people, address_key_map)
    interactions, contact_history = interaction_rows(
        visible, vparts, events, att, with_contacts(person_keys, counts), people, frames
    )
    hand_over({"interactions": interactions, "_rapport_contact_history": contact_history})
    lap("interactions")
    sums = person_connection_sums(interactions.lazy(), frames.as_of).collect()
    lap("connections")
    p_activity = person_activity(interactions.lazy(), people, frames.as_of, frames.members)
    p_activity = p_activity.collect()
    lap("person_metrics")
    c_activity = company_activity(
        interactions.lazy(), companies, frames.as_of, frames.members
    ).collect()

    lap("company_metrics")
    tables = {
        "people": people,
        "companies": companies,
        "person_merges": person_merges,
        "messages": messages_out,
        "message_flags": message_flags,
        "events": events_out,
        "interactions": interactions,
        "_rapport_person_activity": p_activity,
        "_rapport_company_activity": c_activity,
        "quarantine": quarantine.select(
            "account_id", "stream", "item_id", "reason", "detail", "fetched_at"
        ),
    }
    tables.update(
        state_tables(
            counts=counts,
            last_used=last_used,
            blocked_threads=blocked_threads,
            connection_sums=sums,
            contact_history=contact_history,
            name_parts=name_parts,
            address_keys=address_key_map,
            person_keys=person_keys,
            domain_info=domain_info,
            upcoming=upcoming_meetings(interactions, frames.as_of),
            files=files,
            lake_dir=lake_dir,
        )
    )
    stats = {
        "messages_current": n_current,
        "messages_blocked": n_current - visible.height,
        "events_current": events.height,
        "events_blocked": blocked_events.height,
        "participants_invalid": n_invalid,
        "quarantined": quarantine.height,
    }
    lap("finish")
    return Staged(tables=tables, stats=stats, timings=lap.times)


def last_used_by_address(visible: pl.LazyFrame, vparts: pl.LazyFrame) -> pl.LazyFrame:
    """When each outside address last appeared on visible mail (linking prefers the
    latest). Internal addresses are no one's record address, so they are not kept: a
    member's own address is on most mail, and deleting mail would mean finding its last
    use again among all of it."""
    key = message_key(visible, vparts)
    rows = vparts.filter(~pl.col("internal")).select(*key, "email")
    if key == ["_mid"]:  # the send time found by position (with_message_columns)
        sent = visible.select("_mid", "sent_at").collect()
        rows = with_message_columns(rows.collect(), sent).lazy()
    else:
        rows = rows.join(visible.select(*key, "sent_at"), on=key)
    return rows.group_by("email").agg(last_used_at=pl.max("sent_at"))


def domain_info_for(
    people: pl.DataFrame, extra_free_mail: list[str], known: pl.DataFrame | None = None
) -> pl.DataFrame:
    """domain -> registrable domain and free-mail flag, for every address of every person
    but those whose domain is in `known` (an earlier result, kept in the warehouse under
    the same settings: not looked up again)."""
    domains = (
        pl.concat([people["primary_email"], people["email_addresses"].explode()])
        .drop_nulls()
        .str.split("@")
        .list.get(1)
        .unique()
    )
    if known is not None:
        domains = domains.filter(~domains.is_in(known["domain"].implode()))
    return (
        domain_table(domains.to_list(), extra_free_mail)
        .select(
            domain="raw_domain",
            registrable_domain="registrable_domain",
            is_free_mail="is_free_mail",
        )
        .unique("domain")
    )


def sharing_merge_keys(
    people: pl.DataFrame, ids: pl.Series, domain_info: pl.DataFrame
) -> pl.Series:
    """`ids` plus every person who shares a merge key (a full name on a company-able
    domain) with one of them: the people whose row a change to `ids` can reach, so
    finish_records of just them equals it over all.

    Companies and links need no one else: a carried-forward company's creation time only
    moves earlier (the minimum with these people's), a domain no company has yet is held
    by none but `ids` (every earlier person's domains have their companies), and a link
    is each person's own, from their addresses and last use (which changes only for
    addresses of the delta, whose people are among `ids`)."""
    if ids.is_empty():  # (a run with no new evidence: most of a quiet day's)
        return ids
    # Only people with the name of one of `ids` can share a key: only their addresses
    # are split and looked up (1M new-mail run, 585 ids: 3,791 of 22,853 people; 14.3 ->
    # 12.3 ms, medians of 40 alternating calls).
    names = people.lazy().select("person_id", name_key=name_key())
    wanted = names.filter(pl.col("person_id").is_in(ids.implode())).select("name_key").unique()
    namesake_ids = names.join(wanted, on="name_key", how="semi").select("person_id")
    namesakes = people.lazy().join(namesake_ids, on="person_id", how="semi")
    keys = merge_keys(namesakes, domain_info).select("person_id", "name_key", "registrable_domain")
    of_ids = keys.filter(pl.col("person_id").is_in(ids.implode())).drop("person_id")
    sharing = keys.join(of_ids.unique(), on=["name_key", "registrable_domain"], how="semi")
    return pl.concat([ids, sharing.select("person_id").collect().to_series()]).unique()


def new_survivors(person_merges: pl.DataFrame, previous: pl.DataFrame | None) -> pl.Series:
    """Records that absorbed a merge in this run (a merge the previous log lacks)."""
    new = person_merges
    if previous is not None:
        new = new.join(previous.select("merged_id"), on="merged_id", how="anti")
    return new["survivor_id"]


def finish_records(
    people: pl.DataFrame,
    frames: WorkspaceFrames,
    internal_domains: list[str],
    previous_companies: pl.DataFrame | None,
    previous_merges: pl.DataFrame | None,
    last_used: pl.DataFrame,
    domain_info: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Companies (§4.4), dedup merges (§4.5), then domain linking -> (people, companies, merges).

    `domain_info`: domain_info_for() of (at least) these people.
    """
    created_lookup = (
        people.lazy()
        .select("created_at", email="email_addresses")
        .explode("email")
        .with_columns(raw=pl.col("email").str.split("@").list.last())
        .join(domain_info.lazy(), left_on="raw", right_on="domain")
        .group_by(domain="registrable_domain")
        .agg(created_at=pl.min("created_at"))
        .collect()
    )
    companies = build_companies(
        people,
        domain_info,
        internal_domains,
        previous_companies,
        created_lookup,
        frames.extra_company_domains or None,
    )
    # Merges before linking, so a survivor links by all its addresses.
    people, person_merges = apply_merges(people, domain_info, previous_merges)
    people = link_people(people, companies, domain_info, last_used)
    return people, companies, person_merges


CONTACT_HISTORY_COLUMNS = [
    "canonical_key",
    "member_id",
    "account_id",
    "kind",
    "at",
    "source_key",
    "weight",
]


def with_contacts(person_keys: pl.DataFrame, counts: pl.DataFrame) -> pl.DataFrame:
    """person_keys plus every other seen address, standing in as its own person_id.

    Interactions with addresses that are not (yet) people are kept as contact history,
    so when one becomes a person a later run finds its past without re-reading the lake.
    """
    others = (
        counts.select("canonical_key")
        .drop_nulls()
        .unique()
        .join(person_keys, on="canonical_key", how="anti")
        .with_columns(person_id=pl.col("canonical_key"))
    )
    return pl.concat([person_keys, others.select(person_keys.columns)])


def interaction_rows(
    visible: pl.DataFrame,
    vparts: pl.DataFrame,
    events: pl.DataFrame,
    att: pl.DataFrame,
    person_keys: pl.DataFrame,
    people: pl.DataFrame,
    frames: WorkspaceFrames,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deduplicated mail and meeting interactions -> (interactions of people, with each
    person's company; contact history of every other seen address).

    A stand-in id is an address (it has an '@'); a person id never does.
    """
    # The company rides along with the key (28k rows), not joined onto millions of rows.
    keys = person_keys.join(
        people.select("person_id", "company_id"), on="person_id", how="left"
    ).with_columns(_contact=pl.col("person_id").str.contains("@", literal=True))
    meetings = meeting_interactions(events.lazy(), att.lazy(), keys.lazy(), frames.accounts)
    # (by position below: for the millions of rows of a full build; a few thousand rows
    # take fewer queries as one plan of plain joins)
    few_rows = vparts.height <= address_rules.SMALL_INPUT_ROWS
    if few_rows or message_key(visible.lazy(), vparts.lazy()) != ["_mid"]:
        rows = dedupe_interactions(
            pl.concat(
                [
                    email_interactions(visible.lazy(), vparts.lazy(), keys.lazy(), frames.accounts),
                    meetings,
                ]
            )
        ).collect()
        is_contact = pl.col("person_id").str.contains("@", literal=True)
        return finish_interactions(rows.filter(~is_contact), rows.filter(is_contact))

    mail, per_message = mail_rows(visible, vparts, keys, frames.accounts)
    meet = meetings.with_columns(_key_hash=interaction_key_hash()).collect()
    repeat = repeated(pl.concat([mail["_key_hash"], meet["_key_hash"]]))
    # Mail rows ordered as [people | contacts | repeated keys], so the per-message strings
    # are gathered once, in that order, and each part is a zero-copy slice.
    contact, mail_repeat = mail["_contact"], repeat.head(mail.height)
    parts = [~mail_repeat & ~contact, ~mail_repeat & contact, mail_repeat]
    positions = [pl.arg_where(part, eager=True) for part in parts]
    sizes = [p.len() for p in positions]
    ordered = mail.select(pl.all().gather(pl.concat(positions)))
    wide = pl.concat(
        [
            ordered.drop("_at", "_k"),
            keys.select(*PERSON_KEY_COLUMNS).rechunk().select(pl.all().gather(ordered["_k"])),
            per_message.select(pl.all().gather(ordered["_at"])),
        ],
        how="horizontal",
    )
    meet_repeat = repeat.tail(meet.height)
    repeated_rows = pl.concat(
        [wide.slice(sizes[0] + sizes[1]), meet.filter(meet_repeat)], how="diagonal_relaxed"
    )
    cols = list(INTERACTIONS_SCHEMA)
    merged = merged_repeats(repeated_rows.lazy(), [*cols, "_contact"]).collect()
    small = pl.concat([meet.filter(~meet_repeat), merged], how="diagonal_relaxed")
    halves = []
    for is_contact, mail_part in (
        (False, wide.slice(0, sizes[0])),
        (True, wide.slice(sizes[0], sizes[1])),
    ):
        halves.append(
            pl.concat(
                [
                    mail_part.select(cols).cast(INTERACTIONS_SCHEMA),
                    small.filter(pl.col("_contact") == is_contact)
                    .select(cols)
                    .cast(INTERACTIONS_SCHEMA),
                ]
            )
        )
    return finish_interactions(halves[0], halves[1])


# What interaction rows take from their person key (mail rows carry the key's row).
PERSON_KEY_COLUMNS = ["person_id", "company_id"]


def finish_interactions(
    interactions: pl.DataFrame, contacts: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (
        interactions.select(list(INTERACTIONS_SCHEMA)).cast(INTERACTIONS_SCHEMA),
        contacts.rename({"person_id": "canonical_key"})
        .select(CONTACT_HISTORY_COLUMNS)
        .cast({"weight": pl.Float64, "at": TS}),
    )


def normalise_blocklist(blocklist: pl.DataFrame) -> pl.DataFrame:
    """Lower-case entries; address entries go through the same normalisation as mail."""
    if blocklist.is_empty():
        return pl.DataFrame(schema={"account_id": pl.String, "entry": pl.String, "kind": pl.String})
    addr = normalise_addresses(blocklist.filter(pl.col("kind") == "address").lazy(), "entry")
    addr = addr.select("account_id", entry="email", kind="kind").collect()
    dom = blocklist.filter(pl.col("kind") == "domain").select(
        "account_id",
        entry=pl.col("entry")
        .str.to_lowercase()
        .str.strip_chars()
        .str.strip_chars_start("@")
        .str.strip_chars("."),
        kind="kind",
    )
    return pl.concat([addr.drop_nulls("entry"), dom])


def message_flags_table(
    visible: pl.DataFrame, vparts: pl.DataFrame, message_keys: pl.Series | None = None
) -> pl.DataFrame:
    """The visible messages with participants that are internal_only (what messages_for()
    hides from other members); mail that left the team has no row. (At a million
    messages 8% are internal: a table of all of them cost 0.14 s more to publish.)

    Marks indexed by `_mid` (small dense integers) rather than a group-by over every
    participant, or membership tests against millions of ids (0.22 s at 1M).
    `message_keys`, when given, are the keys of `visible` in its order (already built
    for the messages table).
    """
    mids = visible["_mid"]
    n = int(max(mids.max() or 0, vparts["_mid"].max() or 0)) + 1  # type: ignore[arg-type]

    def marked(rows: pl.Series) -> pl.Series:
        """True at each `_mid` that has a row."""
        return pl.repeat(False, n, eager=True).scatter(rows, True).gather(mids)

    # An unparseable address can't prove the mail left the team: treat it as internal.
    external = vparts.select(pl.col("_mid").filter(pl.col("valid") & ~pl.col("internal")))
    internal_only = marked(vparts["_mid"]) & ~marked(external["_mid"])
    keys = (
        visible.select(pl.concat_str(["account_id", "message_id"], separator=":")).to_series()
        if message_keys is None
        else message_keys
    )
    return pl.DataFrame(
        {
            "message_key": keys.filter(internal_only),
            "internal_only": internal_only.filter(internal_only),
        }
    )


def messages_table(visible: pl.DataFrame, vparts: pl.DataFrame) -> pl.DataFrame:
    """The contract `messages` table (no blocked mail, ever)."""
    parts = vparts.select("_mid", "role", _addr=shown_addresses(vparts))
    n = int(visible["_mid"].max()) + 1 if visible.height else 0
    lists = {
        f"{role}_emails": lists_by_row(parts.filter(pl.col("role") == role), pl.col("_addr"), n)
        for role in ("from", "to", "cc")
    }
    if not visible["_mid"].equals(pl.int_range(n, dtype=pl.UInt32, eager=True), check_names=False):
        lists = {name: values.gather(visible["_mid"]) for name, values in lists.items()}
    return visible.select(
        message_key=pl.concat_str(["account_id", "message_id"], separator=":"),
        account_id="account_id",
        thread_id="thread_id",
        rfc_message_id="rfc_message_id",
        sent_at="sent_at",
        direction="direction",
        subject="subject",
        snippet="snippet",
        body_text="body_text",
        from_email=lists["from_emails"].list.first(),
        # In participant order, which is not guaranteed: sorting would triple the step.
        to_emails=lists["to_emails"],
        cc_emails=lists["cc_emails"],
    )


def lists_by_row(rows: pl.DataFrame, value: pl.Expr, n: int) -> pl.Series:
    """The values of `rows` as one list per `_mid` 0..n-1 (empty where none).

    Built from offsets over rows ordered by `_mid` (landing order already is), not by a
    group-by plus join: 1.5 s -> 0.5 s for the messages table at a million messages.
    """
    narrow = rows.select("_mid", _value=value)
    if not narrow["_mid"].is_sorted():
        narrow = narrow.sort("_mid")
    offsets = row_offsets(narrow["_mid"], n)
    values = narrow["_value"].to_arrow(compat_level=pl.CompatLevel.newest())
    return pl.Series(pa.LargeListArray.from_arrays(offsets.to_arrow(), values))


def row_offsets(mids: pl.Series, n: int) -> pl.Series:
    """Where each `_mid` 0..n starts among sorted `mids` (n: their end), as list offsets.

    The first row of each run of equal values gives its start; values with no rows take
    the next start. (One pass, where searching the sorted rows for every 0..n was 3x
    slower at a million messages.)
    """
    first = (mids != mids.shift(1)).fill_null(True)
    starts = pl.arg_where(first, eager=True).cast(pl.Int64)
    offsets = pl.repeat(None, n + 1, dtype=pl.Int64, eager=True)
    offsets = offsets.scatter(mids.filter(first).cast(pl.Int64), starts)
    return offsets.scatter([n], [mids.len()]).fill_null(strategy="backward")
