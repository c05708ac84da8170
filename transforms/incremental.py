"""The incremental build: a run whose work follows the delta (issue 7).

A full build re-reads the whole lake. When a run only adds items (new mail, new events)
under the same settings, this module instead reads just the new lake files plus the
build state the last publish kept in the warehouse, and produces:

* rows to append to the big tables (messages, message_flags, events, quarantine);
* interactions to add, replacing any existing row with the same (member, person, source);
* rows to write over the record and state tables by key (`Upsert`): only the people,
  companies, decay sums and activity rows that changed, so what a run writes follows
  the delta, not the size of the workspace.

Per-person and per-company activity is recomputed only for the people the delta (or the
passage of time since the last run's as_of) touches, from their interactions in the
warehouse; everyone else keeps their row. Connection scores are views over decay sums
anchored at a fixed epoch (warehouse/sql/scores.sql), so time alone changes no stored
sum. The result equals a full build of the same lake; the tests check that. Anything
this path does not handle exactly raises `Fallback`, and the caller runs the full build
instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib.metadata import version
from typing import Protocol

import polars as pl

from connectors import lake
from connectors.lake import CONTENT_HASH
from transforms.addresses import may_normalise_into, normalise_addresses
from transforms.current import current_messages, current_participants, latest_versions
from transforms.events import (
    attendee_candidates,
    current_events,
    event_source_key,
    events_table,
)
from transforms.metrics import (
    ACTIVITY_COLUMNS,
    COUNT_COLUMNS,
    INTERACTIONS_SCHEMA,
    SUM_COLUMNS,
    dedupe_interactions,
    member_of_account,
    person_connection_sums,
    source_key,
    utc_instant,
    with_member_email,
)
from transforms.pipeline import (
    LAKE_TABLES,
    NAME_SOURCE,
    PARTICIPANT_ADDRESS_COLUMNS,
    Laps,
    WorkspaceFrames,
    attendees_of,
    domain_info_for,
    finish_records,
    interaction_rows,
    last_used_by_address,
    message_flags_table,
    messages_table,
    normalise_blocklist,
    read_events,
    read_quarantine,
    scan_files,
    sharing_merge_keys,
    upcoming_meetings,
    with_contacts,
)
from transforms.records import (
    address_keys,
    build_people,
    erc_off_intervals,
    name_counts,
    people_addresses,
    person_candidates,
    person_key_map,
    settle_survivors,
    touched_people,
)
from transforms.rules import split_blocked, with_direction

# Bump when the meaning of the kept state changes: older warehouses then rebuild in full.
STATE_VERSION = "10"
# Windows of the metrics (days): time moving past their edges changes a person's row.
WINDOW_DAYS = (0, 30, 90, 365)
INTERACTION_KEY = ["member_id", "person_id", "source_key"]
# The activity tables (person, company): a run writes them last.
ACTIVITY_TABLES = ("_rapport_person_activity", "_rapport_company_activity")
# The state tables a run writes in its metrics step, the last before the gate (after
# its checkpoint).
METRIC_TABLES = ("_rapport_connection_sums", "_rapport_upcoming_meetings", *ACTIVITY_TABLES)


class Fallback(Exception):
    """This run can't be done incrementally; the reason says why (logged, then full build)."""


@dataclass
class Previous:
    """The last published run's state: its build row, and the tables of the generation
    of state files it names (warehouse/state.py), read whole before the build starts."""

    as_of: datetime
    fingerprint: str
    published_messages: int
    tables: dict[str, pl.DataFrame]
    state: str = ""  # the generation of state files it was read from

    people = property(lambda self: self.tables["people"])
    companies = property(lambda self: self.tables["companies"])
    person_merges = property(lambda self: self.tables["person_merges"])
    name_counts = property(lambda self: self.tables["_rapport_name_counts"])
    last_used = property(lambda self: self.tables["_rapport_last_used"])
    blocked_threads = property(lambda self: self.tables["_rapport_blocked_threads"])
    connection_sums = property(lambda self: self.tables["_rapport_connection_sums"])
    name_parts = property(lambda self: self.tables["_rapport_name_parts"])
    address_keys = property(lambda self: self.tables["_rapport_address_keys"])
    person_keys = property(lambda self: self.tables["_rapport_person_keys"])
    domain_info = property(lambda self: self.tables["_rapport_domain_info"])
    upcoming = property(lambda self: self.tables["_rapport_upcoming_meetings"])
    activity = property(  # "person_id" / "company_id" -> activity rows
        lambda self: {
            "person_id": self.tables["_rapport_person_activity"],
            "company_id": self.tables["_rapport_company_activity"],
        }
    )


# The tables of the build state `Previous` reads (each one a generation of state files
# keeps: warehouse/state.py).
PREVIOUS_TABLES = (
    "_rapport_blocked_threads",
    "_rapport_name_counts",
    "people",
    "_rapport_address_keys",
    "person_merges",
    "_rapport_person_keys",
    "_rapport_name_parts",
    "_rapport_last_used",
    "_rapport_domain_info",
    "companies",
    "_rapport_connection_sums",
    "_rapport_person_activity",
    "_rapport_company_activity",
    "_rapport_upcoming_meetings",
)


class RowSink(Protocol):
    """Takes rows for the warehouse as the build finishes them (warehouse.DeltaWriter)."""

    def append(self, tables: dict[str, pl.DataFrame], deletes: dict[str, pl.DataFrame]) -> None:
        """Rows to add to tables, after deleting rows by key (`deletes`)."""

    def upsert(self, upserts: dict[str, Upsert]) -> None:
        """Rows to write over tables by key."""

    def checkpoint(self, later: Collection[str] = ()) -> None:
        """The bulk of the run is handed over: write it out now, while the build ends.
        `later`: the tables still to come."""


class Lookup(Protocol):
    """Questions the incremental build asks the published warehouse."""

    def matching(self, table: str, keys: pl.DataFrame) -> pl.DataFrame: ...

    def published_messages(self, keys: pl.Series) -> pl.Series: ...

    def contact_history(self, keys: pl.Series) -> pl.DataFrame: ...

    def rows_between(self, ranges: list[tuple[datetime, datetime]]) -> pl.DataFrame: ...

    def rows_with_sources(self, sources: pl.Series) -> pl.DataFrame: ...

    def ends_of(
        self,
        key: str,
        ids: pl.Series,
        dropped: pl.DataFrame,
        added: pl.DataFrame,
        as_of: datetime,
    ) -> pl.DataFrame: ...

    def sums_of(
        self, pairs: pl.DataFrame, dropped: pl.DataFrame, added: pl.DataFrame, as_of: datetime
    ) -> pl.DataFrame: ...

    def messages_with_rfc(self, rfc_ids: pl.Series) -> pl.DataFrame: ...


@dataclass
class Upsert:
    """Rows to write over a table by key: the stored rows they replace (and `gone`) go
    first.

    `stored`: the keys among `rows` the table already holds. Only those are deleted: a
    delete scans the table, so new keys are not looked for there.
    """

    key: list[str]
    rows: pl.DataFrame
    stored: pl.DataFrame
    gone: pl.DataFrame | None = None  # keys to delete with no new row

    def delete_keys(self) -> pl.DataFrame:
        return pl.concat([self.stored, self.gone]) if self.gone is not None else self.stored

    @classmethod
    def over(
        cls, key: list[str], rows: pl.DataFrame, old: pl.DataFrame, gone: pl.DataFrame | None = None
    ) -> Upsert:
        """`rows` written over table `old` (its stored keys found here, not by the delete)."""
        # (old's keys among rows': the hash table is built on the few rows, not the table)
        stored = old.select(key).join(rows.select(key), on=key, how="semi", nulls_equal=True)
        return cls(key, rows, stored, gone)


def changed_rows(
    new: pl.DataFrame, old: pl.DataFrame, key: list[str], among: pl.DataFrame | None = None
) -> Upsert:
    """What turns table `old` into `new`: rows that are new or changed, keys that went.

    `among`: values of (some of) the key columns outside which the caller knows that
    nothing changed; only rows with those values are compared.
    """
    # One plan for the three answers: a run's many small queries cost mostly their start.
    now, was = new.lazy(), old.lazy().select(new.columns).cast(new.schema)
    if among is not None:
        cols = among.columns
        now = now.join(among.lazy(), on=cols, how="semi", nulls_equal=True)
        was = was.join(among.lazy(), on=cols, how="semi", nulls_equal=True)
    rows = now.join(was, on=new.columns, how="anti", nulls_equal=True)
    gone = was.select(key).join(now.select(key), on=key, how="anti", nulls_equal=True)
    stored = rows.select(key).join(was.select(key), on=key, how="semi", nulls_equal=True)
    found = pl.collect_all([rows, stored, gone])
    return Upsert(key, *found)


@dataclass
class DeltaStaged:
    """What a run writes. Every row was already handed to the build's `sink`; these are
    kept for the row counts, the gate and the tests."""

    upsert: dict[str, Upsert]
    append: dict[str, pl.DataFrame]
    gate_tables: dict[str, pl.DataFrame]
    stats: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)


def fingerprint(frames: WorkspaceFrames) -> str:
    """A hash of everything besides the lake that decides the build's output."""
    live = frames.accounts.filter(pl.col("status") != "removed")
    parts = {
        "state_version": STATE_VERSION,
        # the kept interactions hold DuckDB's hash(source_key): a new DuckDB rebuilds them
        "duckdb": version("duckdb"),
        "members": sorted(frames.members.rows()),
        "accounts": sorted(live.select("account_id", "member_id", "provider", "email").rows()),
        "addresses": sorted(frames.account_addresses.rows()),
        "blocklist": sorted(frames.blocklist.select("account_id", "entry", "kind").rows()),
        "erc": sorted(frames.erc_toggles.rows(), key=str),
        "free_mail": sorted(frames.extra_free_mail),
        "company_domains": sorted(frames.extra_company_domains.items()),
        "exclude_list_mail": frames.exclude_list_mail,
        "automated": frames.automated_pattern,
    }
    text = json.dumps(parts, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def time_ranges(previous: datetime, now: datetime) -> list[tuple[datetime, datetime]]:
    """(lo, hi] spans in which an interaction changes some metric when as_of moves on."""
    if now <= previous:
        return []
    return [(previous - timedelta(days=d), now - timedelta(days=d)) for d in WINDOW_DAYS]


def _message_keys(frame: pl.DataFrame, id_column: str, name: str) -> pl.DataFrame:
    return frame.select(pl.concat_str(["account_id", id_column], separator=":").alias(name))


@dataclass(frozen=True)
class Landing:
    """One kind of item a connector lands again when it changes at the provider (a label,
    the read state, an RSVP, a field Rapport does not keep): what such a landing may
    change is `lake.RELANDINGS[items]`, the one definition the content hash uses too."""

    items: str  # lake table of the items
    current: Callable[[pl.LazyFrame], pl.LazyFrame]  # the live version of each item
    name: str = "items"  # in fallback reasons
    live_columns: tuple[str, ...] = ("op",)  # what `current` reads besides key and version

    @property
    def people(self) -> str:  # lake table of their participants / attendees
        return lake.RELANDINGS[self.items].people

    @property
    def id_column(self) -> str:
        return lake.RELANDINGS[self.items].id_column

    @property
    def may_change(self) -> tuple[str, ...]:
        return lake.RELANDINGS[self.items].may_change

    @property
    def derived(self) -> dict[str, pl.Expr]:  # read from what may change
        return dict(lake.RELANDINGS[self.items].derived)

    @property
    def key(self) -> list[str]:
        return ["account_id", self.id_column]

    def _scan(self, files: dict[str, list[str]], keys: pl.DataFrame, table: str) -> pl.LazyFrame:
        """The rows of `table` among `files` of the items of `keys`."""
        accounts = keys["account_id"].unique().to_list()
        paths = files_of_accounts(files, table, accounts)  # (the keys' accounts only)
        ids = keys[self.id_column].unique().implode()
        return scan_files(paths, table).filter(pl.col(self.id_column).is_in(ids))

    def landed(
        self, files: dict[str, list[str]], keys: pl.DataFrame, columns: list[str] | None = None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The live landed version of each item of `keys` among `files`, and its people
        in landing order. `columns`: the item columns to read (default: all). A lake
        file is one row group, so a match decodes each column read for the whole file."""
        items = self._scan(files, keys, self.items)
        if columns is not None:
            items = items.select(columns)
        items = self.current(items.join(keys.lazy(), on=self.key, how="semi")).collect()
        version = [*self.key, "version"]
        people = (
            self._scan(files, keys, self.people)
            .join(items.lazy().select(version), on=version, how="semi", maintain_order="left")
            .collect()
        )
        return items, people

    def landed_hashes(self, files: dict[str, list[str]], keys: pl.DataFrame) -> pl.DataFrame:
        """(key, content_hash) of the live landed version of each item of `keys` among
        `files`: a few narrow columns read, not the items' content and people."""
        columns = [*self.key, "version", "seq", *self.live_columns, CONTENT_HASH]
        items = self._scan(files, keys, self.items).select(columns)
        items = self.current(items.join(keys.lazy(), on=self.key, how="semi"))
        return items.select(*self.key, CONTENT_HASH).collect()


def changed_items(
    landing: Landing,
    was: tuple[pl.DataFrame, pl.DataFrame],
    now: tuple[pl.DataFrame, pl.DataFrame],
) -> pl.DataFrame:
    """The keys of the items whose two landings differ: in a column but those that may
    change (or a value derived from them), or in their people, in order (for mail the
    order of `to_emails`). One item at a time: each item's people compared as one text."""
    key = landing.key

    def content(items: pl.DataFrame, people: pl.DataFrame) -> pl.DataFrame:
        items = items.select(pl.exclude(landing.may_change), **landing.derived)
        cols = [c for c in people.columns if c not in (*key, "version")]
        text = pl.concat_str(
            [pl.col(c).cast(pl.String).fill_null("\x00") for c in cols], separator="\x1f"
        )
        listed = people.group_by(key, maintain_order=True).agg(_people=text.str.join("\x1e"))
        return items.select(sorted(items.columns)).join(listed, on=key, how="left")

    before, after = content(*was), content(*now)
    same = after.join(before, on=after.columns, how="semi", nulls_equal=True)
    return after.join(same.select(key), on=key, how="anti").select(key)


def files_of_accounts(files: dict[str, list[str]], table: str, accounts: list[str]) -> list[str]:
    """The lake files of `table` among `files` that belong to one of `accounts` (a file's
    account is its folder: …/account_id=<id>/<batch>.parquet)."""
    wanted = set(accounts)
    return [
        p
        for p in files.get(table, [])
        if os.path.basename(os.path.dirname(p)).removeprefix("account_id=") in wanted
    ]


RELANDED_MAIL = Landing(
    "messages", current_messages, name="mail", live_columns=("op", "rfc_message_id")
)
RELANDED_EVENTS = Landing("events", current_events, name="events", live_columns=("op", "status"))


def sort_landings(
    landing: Landing,
    live: pl.DataFrame,
    deleted: pl.DataFrame,
    published: pl.Series,
    known_files: dict[str, list[str]],
    new_files: dict[str, list[str]],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """-> (unchanged, changed, gone), keys of: the delta's `live` items landed again with
    nothing Rapport keeps changed (dropped from the delta), those landed again changed
    (their published version goes, the new one comes in as new), and the `deleted` ones
    that are published (they go). `published`: the "<account>:<id>" keys the warehouse
    holds among them. A delete of an item never landed (added and deleted between syncs)
    changes nothing; one of an item landed but hidden (a blocklist marker) may unblock
    a thread, which is left to the full build."""
    key = landing.key
    is_published = pl.concat_str(key, separator=":").is_in(published.implode())
    relanded = live.filter(is_published)
    changed, unsure = relanded.clear(), relanded.clear()
    if relanded.height:
        # Equal content hashes: the same content (lake.content_hashes), read from one
        # narrow column. The rest (hashes unequal or missing) is compared in full.
        was, now = (landing.landed_hashes(f, relanded) for f in (known_files, new_files))
        same = now.join(was, on=[*key, CONTENT_HASH], how="semi")  # (nulls never equal)
        unsure = relanded.join(same, on=key, how="anti")
        if unsure.height:
            was, now = landing.landed(known_files, unsure), landing.landed(new_files, unsure)
            changed = changed_items(landing, was, now)
    gone = deleted.filter(is_published)
    hidden = deleted.join(gone, on=key, how="anti")
    if hidden.height and landing.landed(known_files, hidden)[0].height:
        raise Fallback(f"the delta deletes hidden {landing.name}")
    return relanded.join(changed, on=key, how="anti"), changed, gone, unsure.height


MAIL_KEY = ["account_id", "message_id"]
SOURCE = ["member_id", "source_key"]


def _mail_keys(frame: pl.DataFrame) -> pl.Series:
    return _message_keys(frame, "message_id", "message_key").to_series()


def _all_files(*sets: dict[str, list[str]]) -> dict[str, list[str]]:
    return {t: [f for files in sets for f in files.get(t, [])] for t in LAKE_TABLES}


def mail_sources(msgs: pl.DataFrame, accounts: pl.DataFrame) -> pl.DataFrame:
    """(member_id, source_key) of each mail: whose interactions and contact rows it feeds."""
    return msgs.select(member_id=member_of_account(accounts), source_key=source_key())


@dataclass
class Removed:
    """Published mail and events the delta deletes (or changes: the version the last run
    read goes), and what they fed, to take back out."""

    message_keys: pl.Series
    parts: pl.DataFrame  # NAME_SOURCE of their participants and attendees
    sources: pl.DataFrame  # (member_id, source_key): their interactions and contact rows
    last_uses: pl.DataFrame  # (email, last_used_at) over the mail, as last_used_by_address
    event_keys: pl.Series = field(default_factory=lambda: pl.Series("event_key", [], pl.String))

    @classmethod
    def nothing(cls) -> Removed:
        uses = {"email": pl.String, "last_used_at": pl.Datetime("us", "UTC")}
        return cls(
            pl.Series("message_key", [], pl.String),
            _no_parts(),
            pl.DataFrame(schema={"member_id": pl.String, "source_key": pl.String}),
            pl.DataFrame(schema=uses),
        )

    def __add__(self, other: Removed) -> Removed:
        return Removed(
            pl.concat([self.message_keys, other.message_keys]),
            pl.concat([self.parts, other.parts]),
            pl.concat([self.sources, other.sources]).unique(),
            pl.concat([self.last_uses, other.last_uses]),
            pl.concat([self.event_keys, other.event_keys]),
        )

    def drop_rows(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Interaction or contact rows without those of the removed mail and events."""
        if self.sources.is_empty():
            return rows
        # The few rows of those sources first (a set lookup), then the exact match on
        # them only: an anti join on two strings over a big company's rows cost 0.35 s.
        of_sources = pl.col("source_key").is_in(self.sources["source_key"].implode())
        matched = rows.filter(of_sources)
        if matched.is_empty():
            return rows
        kept = matched.join(self.sources, on=SOURCE, how="anti", nulls_equal=True)
        return pl.concat([rows.filter(~of_sources), kept.select(rows.columns)])


def _no_parts() -> pl.DataFrame:
    schema = {"canonical_key": pl.String, "email": pl.String, "name": pl.String}
    return pl.DataFrame(schema={**schema, "valid": pl.Boolean})


def removed_mail(
    gone: pl.DataFrame, known_files: dict[str, list[str]], frames: WorkspaceFrames, lookup: Lookup
) -> Removed:
    """What the published mail `gone` (account_id, message_id) fed: read back from the
    lake files the published run read.

    Interactions and contact rows are one per (member, person, source): deleting one copy
    of a mail whose member holds another copy (a second mailbox) would change the kept
    row, so that is left to the full build.
    """
    if gone.is_empty():
        return Removed.nothing()
    # (not the subjects and bodies: at 1M messages, reading them cost 0.12 s of 0.15 s)
    read = [*MAIL_KEY, "op", "version", "seq", "rfc_message_id", "sent_at"]
    msgs, raw_parts = RELANDED_MAIL.landed(known_files, gone, read)
    if msgs.height != gone.height:
        raise Fallback("deleted mail is missing from the lake")
    msgs = msgs.with_row_index("_mid")
    parts = current_participants(
        raw_parts.lazy(), msgs.lazy(), frames.internal, PARTICIPANT_ADDRESS_COLUMNS
    ).collect()
    sources = mail_sources(msgs, frames.accounts)
    rfc_ids = msgs["rfc_message_id"].drop_nulls().unique()
    if rfc_ids.len():
        copies = (
            lookup.messages_with_rfc(rfc_ids)
            .filter(~pl.col("message_key").is_in(_mail_keys(msgs).implode()))
            .with_columns(  # message_key is "<account_id>:<message_id>"
                message_id=pl.col("message_key").str.slice(pl.col("account_id").str.len_chars() + 1)
            )
        )
        if mail_sources(copies, frames.accounts).join(sources, on=SOURCE, how="semi").height:
            raise Fallback("deleted mail has another copy for its member")
    uses = last_used_by_address(msgs.lazy(), parts.lazy()).collect()
    return Removed(_mail_keys(msgs), parts.select(NAME_SOURCE), sources.unique(), uses)


def removed_events(
    gone: pl.DataFrame, known_files: dict[str, list[str]], frames: WorkspaceFrames
) -> Removed:
    """What the published events `gone` (account_id, event_id) fed, read back from the
    lake files the published run read. A meeting's interactions are one per (member,
    person, iCalUID and start): when another live event of the member could hold the same
    meeting (a second calendar, a duplicate), that is left to the full build."""
    if gone.is_empty():
        return Removed.nothing()
    events, raw_att = RELANDED_EVENTS.landed(known_files, gone)
    if events.height != gone.height:
        raise Fallback("a deleted or changed event is missing from the lake")
    live = frames.accounts.filter(pl.col("status") != "removed")
    members = events.join(live, on="account_id").select("member_id").unique()
    if live.join(members, on="member_id").height > members.height:
        raise Fallback("an event changes for a member with two calendars")
    sources = events.select(member_id=member_of_account(live), source_key=event_source_key())
    accounts = events["account_id"].unique().to_list()
    # Only events with one of their iCalUIDs can share their meetings (an event without
    # one is its own source). Filtered before the latest version is picked: an event
    # whose uid changed could only look like a match, and then the full build runs.
    uid = pl.col("ical_uid").str.strip_chars()
    uids = events.select(uid.filter(uid != "").unique())["ical_uid"]
    others = (
        current_events(
            scan_files(files_of_accounts(known_files, "events", accounts), "events").filter(
                uid.is_in(uids.implode())
            )
        )
        .collect()
        .join(gone, on=RELANDED_EVENTS.key, how="anti")
    )
    # (The same meeting on another member's calendar is that member's: it stays.)
    if (
        others.select(member_id=member_of_account(live), source_key=event_source_key())
        .join(sources, on=["member_id", "source_key"], how="semi")
        .height
    ):
        raise Fallback("a deleted or changed event shares its meeting with another event")
    att = attendees_of(raw_att.lazy(), events.lazy(), *frames.internal).collect()
    return replace(
        Removed.nothing(),
        parts=att.select(NAME_SOURCE),
        sources=sources.unique(),
        event_keys=_message_keys(events, "event_id", "event_key").to_series(),
    )


def last_use_of(
    emails: pl.Series,
    files: dict[str, list[str]],
    removed: Removed,
    delta_visible: pl.DataFrame,
    lookup: Lookup,
) -> pl.DataFrame:
    """When each of `emails` last appeared on visible mail, once `removed` is deleted:
    found again in the lake (the addresses as landed that normalise to them, on the live
    version of each mail), kept to published mail and the delta's."""
    # Only the addresses that can normalise to one of them are normalised: normalising
    # every distinct address of the lake cost more than reading them all (0.2 s at 1M).
    domains = emails.str.split("@").list.last().unique().to_list()
    parts = (
        scan_files(files["participants"], "participants")
        .select(*MAIL_KEY, "version", "address")
        .filter(may_normalise_into(domains))
        .collect()
    )
    spelled = normalise_addresses(
        parts.select(pl.col("address").unique().drop_nulls()).lazy(), "address"
    ).filter(pl.col("email").is_in(emails.implode()))
    rows = parts.join(spelled.select("address", "email").collect(), on="address")
    live = latest_versions(
        scan_files(files["messages"], "messages")
        .select(*MAIL_KEY, "op", "blocked", "sent_at", "version", "seq")
        .filter(pl.col("message_id").is_in(rows["message_id"].unique().implode())),
        MAIL_KEY,
    ).filter((pl.col("op") == "upsert") & ~pl.col("blocked"))
    rows = rows.join(live.collect(), on=[*MAIL_KEY, "version"]).with_columns(
        message_key=pl.concat_str(MAIL_KEY, separator=":")
    )
    published = lookup.published_messages(rows["message_key"].unique())
    published = published.filter(~published.is_in(removed.message_keys.implode()))
    visible = pl.concat([published, _mail_keys(delta_visible)])
    return (
        rows.filter(pl.col("message_key").is_in(visible.implode()))
        .group_by("email")
        .agg(last_used_at=pl.max("sent_at"))
    )


def build_delta(
    frames: WorkspaceFrames,
    previous: Previous,
    new_files: dict[str, list[str]],
    lookup: Lookup,
    sink: RowSink,
    known_files: dict[str, list[str]] | None = None,
    max_share: float = 0.2,
) -> DeltaStaged:
    """Stage the changes a run over `new_files` makes to the published warehouse.

    `sink` gets every row to append and upsert as soon as it is final, so a writer can
    start on them while the build goes on. `known_files`: the lake files the published
    run read, where the published versions of mail and events landed again are found.
    """
    lap = Laps()
    # The slowest questions (scans of the big tables) run in threads meanwhile.
    background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lookups")
    try:
        return _build_delta(
            frames, previous, new_files, known_files or {}, lookup, max_share, lap, background, sink
        )
    finally:
        background.shutdown(wait=True, cancel_futures=True)


def _build_delta(
    frames: WorkspaceFrames,
    previous: Previous,
    new_files: dict[str, list[str]],
    known_files: dict[str, list[str]],
    lookup: Lookup,
    max_share: float,
    lap: Laps,
    background: ThreadPoolExecutor,
    sink: RowSink,
) -> DeltaStaged:
    around_rows = background.submit(lookup.rows_between, time_ranges(previous.as_of, frames.as_of))
    as_of = frames.as_of
    if as_of < previous.as_of:
        raise Fallback("as_of is earlier than the published run's")
    internal_addresses, internal_domains = frames.internal

    # --- the delta: new items only
    raw_msgs = scan_files(new_files["messages"], "messages").collect()
    if raw_msgs.height > max(10_000, max_share * previous.published_messages):
        raise Fallback(f"large delta ({raw_msgs.height:,} message rows): a full build is cheaper")
    # Mail deleted at the provider: the delta's last row of its key is a delete.
    deleted = (
        latest_versions(raw_msgs.lazy(), MAIL_KEY)
        .filter(pl.col("op") == "delete")
        .select(MAIL_KEY)
        .collect()
    )
    # (Blocklist markers stay: each blocks its thread's records, below. A marker of mail
    # that is published is mail landed again, and changed: see the re-landings.)
    msgs = current_messages(raw_msgs.lazy()).collect()
    published = background.submit(
        lookup.published_messages,
        pl.concat([_mail_keys(msgs), _mail_keys(deleted)]).unique(),
    )

    def with_participants(msgs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        msgs = msgs.with_row_index("_mid")
        parts = scan_files(new_files["participants"], "participants")
        parts = current_participants(
            parts, msgs.lazy(), (internal_addresses, internal_domains), PARTICIPANT_ADDRESS_COLUMNS
        )
        return msgs, parts.collect()

    msgs, parts = with_participants(msgs)

    # Events deleted or cancelled at the provider: the delta's last row of their key.
    event_key = RELANDED_EVENTS.key
    deleted_events = (
        latest_versions(scan_files(new_files["events"], "events"), event_key)
        .filter((pl.col("op") == "delete") | (pl.col("status") == "cancelled"))
        .select(event_key)
        .collect()
    )
    events, blocked_events, att = read_events(
        new_files["events"], new_files["attendees"], internal_addresses, internal_domains
    )
    # A blocked event's marker changes nothing, unless it hides a published event.
    if lookup.matching("events", _message_keys(blocked_events, "event_id", "event_key")).height:
        raise Fallback("the delta blocks published events")
    # Events landed again: unchanged in what Rapport keeps (a description edit) they are
    # dropped; changed (moved, an RSVP) or deleted, their published version goes.
    published_events = lookup.matching(
        "events",
        pl.concat(
            [
                _message_keys(events, "event_id", "event_key"),
                _message_keys(deleted_events, "event_id", "event_key"),
            ]
        ),
    ).to_series()
    relanded_events, changed_events, gone_events, compared_events = sort_landings(
        RELANDED_EVENTS,
        events.select(event_key),
        deleted_events,
        published_events,
        known_files,
        new_files,
    )
    if relanded_events.height:
        events, att = (
            frame.join(relanded_events, on=event_key, how="anti", maintain_order="left")
            for frame in (events, att)
        )
    removed_calendar = removed_events(pl.concat([gone_events, changed_events]), known_files, frames)
    quarantine = read_quarantine(new_files["quarantine"])
    if lookup.matching("quarantine", quarantine.select("account_id", "item_id")).height:
        raise Fallback("the delta changes quarantined items")
    # Mail landed again (a label or read-state change re-fetches it) or deleted: as events.
    relanded, changed_mail, gone, compared_mail = sort_landings(
        RELANDED_MAIL,
        msgs.select(MAIL_KEY),
        deleted,
        published.result(),
        known_files,
        new_files,
    )
    if relanded.height:
        msgs, parts = with_participants(
            msgs.drop("_mid").join(relanded, on=MAIL_KEY, how="anti", maintain_order="left")
        )
    removed = removed_mail(pl.concat([gone, changed_mail]), known_files, frames, lookup)
    removed += removed_calendar
    lap("load_delta")

    # --- 1. blocklist: a marker (blocked mail, landed without content) hides itself and
    # keeps its thread from creating records. Records are durable and their creation
    # time is the earliest evidence ever seen, so a newly blocked thread changes no
    # published row: it only joins the blocked threads. Delta mail that the blocklist
    # matches although landed in full (not a connector's way) is left to the full build.
    blocklist = normalise_blocklist(frames.blocklist)
    visible, vparts, blocked_threads = split_blocked(msgs.lazy(), parts.lazy(), blocklist)
    visible = with_direction(visible, vparts, frames.account_addresses).collect()
    if visible.height + int(msgs["blocked"].sum()) < msgs.height:
        raise Fallback("delta mail matches the blocklist")
    vparts = vparts.collect()
    if removed.sources.height and (  # (a changed mail's new version is no copy)
        mail_sources(visible.join(changed_mail, on=MAIL_KEY, how="anti"), frames.accounts)
        .join(removed.sources, on=SOURCE, how="semi")
        .height
    ):
        raise Fallback("the delta adds a copy of mail it deletes")
    thread = ["account_id", "thread_id"]
    new_blocked_threads = blocked_threads.collect().join(
        previous.blocked_threads, on=thread, how="anti"
    )

    # --- 2-4. records from the delta's evidence plus the kept counts
    candidates = pl.concat(
        [
            person_candidates(
                visible.lazy(),
                vparts.lazy(),
                # new mail in a blocked thread stays out
                pl.concat([previous.blocked_threads, new_blocked_threads]).lazy(),
                erc_off_intervals(frames.erc_toggles),
                exclude_list_mail=frames.exclude_list_mail,
                automated_pattern=frames.automated_pattern,
            ),
            attendee_candidates(events.lazy(), att.lazy(), as_of),
        ]
    )
    delta_counts = name_counts(
        pl.concat([vparts.lazy().select(NAME_SOURCE), att.lazy().select(NAME_SOURCE)])
    ).collect()  # read several times below: computed once
    if removed.parts.height:  # deleted mail's uses count down
        taken = name_counts(removed.parts.lazy().select(NAME_SOURCE)).with_columns(n=-pl.col("n"))
        delta_counts = name_counts(pl.concat([delta_counts.lazy(), taken])).collect()
    delta_keys = delta_counts.select("canonical_key")

    def counts_for(keys: pl.Series) -> pl.DataFrame:
        """Name counts, kept plus the delta's, of just these canonical keys."""
        of = pl.col("canonical_key").is_in(keys.implode())
        kept = previous.name_counts.lazy().filter(of).with_columns(valid=pl.lit(True))
        new = delta_counts.lazy().filter(of).select("canonical_key", "email", "name", "n", "valid")
        return name_counts(pl.concat([kept, new])).filter(pl.col("n") > 0).collect()

    # Only people the delta brings evidence for are rebuilt here; the rest keep their
    # row. (Merge survivors too: settled when merged. Rebuilding all 164 of them every
    # run took the 1M new-mail run from 585 to 734 people refinished.)
    candidates = candidates.collect()
    evidence_keys = pl.concat([candidates["canonical_key"], delta_keys.to_series()])
    redo = touched_people(
        previous.people, evidence_keys, previous.address_keys, previous.person_keys
    )
    counts = counts_for(redo.keys)  # (the delta's keys are among them)
    redone, parts = build_people(
        candidates.lazy(),
        counts.lazy(),
        previous.people.filter(pl.col("person_id").is_in(redo.person_ids.implode())),
        previous.name_parts,
        previous.address_keys,
    )
    kept_people = previous.people.filter(~pl.col("person_id").is_in(redo.person_ids.implode()))
    people = pl.concat([kept_people.select(redone.columns).cast(redone.schema), redone]).sort(
        "person_id"
    )
    # A cache of parsed display names: it keeps names no record uses any more.
    name_parts = pl.concat([previous.name_parts.cast(parts.schema), parts]).unique(
        "display_name", keep="last"
    )
    new_people = people.join(previous.people.select("person_id"), on="person_id", how="anti")
    delta_last_used = last_used_by_address(visible.lazy(), vparts.lazy()).collect()
    # Last use changes only for the delta's addresses: the latest of kept and new.
    in_delta = pl.col("email").is_in(delta_last_used["email"].implode())
    last_used = pl.concat(
        [
            previous.last_used.filter(~in_delta),
            pl.concat([previous.last_used.filter(in_delta), delta_last_used])
            .group_by("email")
            .agg(last_used_at=pl.max("last_used_at")),
        ]
    )
    # Addresses whose last use was deleted mail: found again (ties included).
    now = pl.col("last_used_at_right")
    relast = (
        removed.last_uses.drop_nulls("email")
        .join(last_used, on="email", how="left")
        .filter(now.is_null() | (pl.col("last_used_at") >= now))["email"]
    )
    if relast.len():
        last_used = pl.concat(
            [
                last_used.filter(~pl.col("email").is_in(relast.implode())),
                last_use_of(relast, _all_files(known_files, new_files), removed, visible, lookup),
            ]
        )
    # Companies, merges and links can change only for the rebuilt people and those who
    # share a merge key with them (sharing_merge_keys says why); everyone else keeps
    # their row, link included.
    # (the domains earlier runs looked up are kept, those of every earlier record: only
    # the rebuilt people's addresses can be new)
    new_domains = domain_info_for(redone, frames.extra_free_mail, previous.domain_info)
    domain_info = pl.concat([previous.domain_info.cast(new_domains.schema), new_domains])
    near = sharing_merge_keys(people, redone["person_id"], domain_info)
    in_near = pl.col("person_id").is_in(near.implode())
    near_people, companies, person_merges = finish_records(
        people.filter(in_near),
        frames,
        internal_domains,
        previous.companies,
        previous.person_merges,
        last_used,
        domain_info,
    )
    people = pl.concat([people.filter(~in_near), near_people]).sort("person_id")
    # A record created by this delta may fold into an existing one (its rows below map
    # to the survivor); folding records that already had rows would move history.
    folded = person_merges.join(previous.person_merges, on="merged_id", how="anti")
    if folded.join(new_people, left_on="merged_id", right_on="person_id", how="anti").height:
        raise Fallback("existing records to merge")
    if folded.height:
        kept = previous.person_merges.join(person_merges, on=list(person_merges.columns))
        if kept.height != previous.person_merges.height:
            raise Fallback("earlier merges moved to a new survivor")
    moved = near_people.join(
        previous.people.select("person_id", "company_id"), on="person_id"
    ).filter(pl.col("company_id").ne_missing(pl.col("company_id_right")))
    if moved.height:
        raise Fallback("a person moved to another company")
    survivors = folded["survivor_id"]
    survivor_keys = previous.person_keys.filter(pl.col("person_id").is_in(survivors.implode()))
    people = settle_survivors(
        people,
        survivors,
        counts_for(pl.concat([redo.keys, survivor_keys["canonical_key"]]))
        if len(survivors)
        else counts,
        name_parts,
        previous.address_keys,
    )
    lap("records")

    # --- 5. interactions: new rows, merged with existing rows of the same source, plus
    # the kept history of addresses that became people in this run
    # Only people in `near` can differ from their previous row: the key map is the
    # previous one with theirs redone, and only their new addresses get keys.
    changed = people.filter(in_near)
    keys = address_keys(people_addresses(changed), previous.address_keys)
    people_keys = (
        pl.concat([redo.key_map.filter(~in_near), person_key_map(changed, keys)])
        .sort("person_id", maintain_order=True)
        .unique("canonical_key", keep="first", maintain_order=True)
    )
    # Keys of the new records, mapped to whoever holds them after merges: their kept
    # contact history is looked up meanwhile (a scan of the history table).
    promoted = (
        person_key_map(new_people, keys)
        .select("canonical_key")
        .join(people_keys, on="canonical_key")
    )
    promoted_history = background.submit(lookup.contact_history, promoted["canonical_key"])
    counts = counts.select("canonical_key", "email", "name", "n")
    # Rows whose key is new or whose values changed; the rest of each table stays. The
    # writer starts on them while the interactions are worked out.
    upsert = {
        "people": changed_rows(changed, previous.people.filter(in_near), ["person_id"]),
        "companies": changed_rows(companies, previous.companies, ["company_id"]),
        # every count of each key the delta has rows for, written over by key (a plain
        # IN on one column; the (key, address, name) match had to handle NULL names)
        "_rapport_name_counts": Upsert.over(
            ["canonical_key"],
            counts.join(delta_keys.unique(), on="canonical_key", how="semi"),
            previous.name_counts,
            # keys whose every use was deleted
            delta_keys.unique()
            .join(counts, on="canonical_key", how="anti")
            .join(previous.name_counts, on="canonical_key", how="semi")
            .unique(),
        ),
        # last use changes only where the delta has rows
        "_rapport_last_used": changed_rows(
            last_used,
            previous.last_used,
            ["email"],
            pl.concat([delta_last_used["email"], relast]).unique().to_frame("email"),
        ),
        "_rapport_person_keys": changed_rows(
            people_keys,
            previous.person_keys,
            ["canonical_key"],
            pl.concat([people_keys.filter(in_near), previous.person_keys.filter(in_near)]).select(
                "canonical_key"
            ),
        ),
        # addresses only join records (merges add, nothing removes): new ones only
        "_rapport_address_keys": Upsert(
            ["address"],
            keys.join(previous.address_keys, on="address", how="anti"),
            stored=pl.DataFrame(schema={"address": pl.String}),
        ),
        "person_merges": changed_rows(person_merges, previous.person_merges, ["merged_id"]),
        # a cache, as the name parts: domains only join it
        "_rapport_domain_info": Upsert(
            ["domain"],
            new_domains,
            stored=pl.DataFrame(schema={"domain": pl.String}),
        ),
        "_rapport_name_parts": changed_rows(
            name_parts, previous.name_parts, [name_parts.columns[0]]
        ),
    }
    if removed.sources.height or removed.message_keys.len() or removed.event_keys.len():
        # deleted mail and events, and every row they fed
        message_keys = removed.message_keys.to_frame()
        for table, gone_keys in (
            ("messages", message_keys),
            ("message_flags", message_keys),
            ("events", removed.event_keys.to_frame()),
            ("interactions", removed.sources),
            ("_rapport_contact_history", removed.sources),
        ):
            upsert[table] = Upsert(
                gone_keys.columns, gone_keys.clear(), gone_keys.clear(), gone_keys
            )
    sink.upsert(dict(upsert))
    rows, contact_rows = interaction_rows(
        visible,
        vparts,
        events,
        att,
        with_contacts(people_keys, delta_keys),
        people,
        frames,
    )
    history_rows = removed.drop_rows(
        promoted_history.result().join(promoted, on="canonical_key").drop("canonical_key")
    )
    merged = (
        dedupe_interactions(
            pl.concat([history_rows.lazy(), rows.drop("company_id").lazy()], how="diagonal_relaxed")
        )
        .join(people.lazy().select("person_id", "company_id"), on="person_id", how="left")
        .select(list(INTERACTIONS_SCHEMA))
        .cast(INTERACTIONS_SCHEMA)
        .collect()
    )
    # The same source again for the same member and person (a second mailbox of one
    # member): a no-op unless it would change the kept row.
    # Every stored row of each source the delta or the clock touches: one scan serves
    # the repeat check below and the window counts of people and companies.
    around = around_rows.result().cast(INTERACTIONS_SCHEMA)
    sources = pl.concat(
        [merged["source_key"], around["source_key"], removed.sources["source_key"]]
    ).unique()
    around = removed.drop_rows(around)
    by_source_rows = background.submit(lookup.rows_with_sources, sources)
    # Meanwhile: the rows to append, and the record tables' changes.
    messages_out = messages_table(visible, vparts)
    append = {
        "messages": messages_out,
        "message_flags": message_flags_table(visible, vparts),
        "events": events_table(events, att),
        "quarantine": quarantine.select(
            "account_id", "stream", "item_id", "reason", "detail", "fetched_at"
        ),
        "_rapport_contact_history": contact_rows,
        "_rapport_blocked_threads": new_blocked_threads,
    }
    deletes = {"_rapport_contact_history": promoted.select("canonical_key")}
    sink.append(dict(append), deletes)
    by_source = by_source_rows.result().cast(INTERACTIONS_SCHEMA)
    # The stored rows of deleted mail; the rest is what stays.
    removed_rows = by_source.join(removed.sources, on=SOURCE, how="semi")
    by_source = removed.drop_rows(by_source)
    existing = by_source.join(merged.select(INTERACTION_KEY), on=INTERACTION_KEY, how="semi")
    if existing.height:
        cols = list(INTERACTIONS_SCHEMA)
        again = merged.join(existing.select(INTERACTION_KEY), on=INTERACTION_KEY, how="semi")
        redone = dedupe_interactions(
            pl.concat([existing.select(cols), again]).drop("company_id").lazy()
        ).collect()
        same = redone.join(
            existing.drop("company_id"), on=redone.columns, how="semi", nulls_equal=True
        )
        if same.height != redone.height:
            raise Fallback("a source seen again changes an existing interaction")
    delta_interactions = merged.join(
        existing.select(INTERACTION_KEY), on=INTERACTION_KEY, how="anti"
    )
    append["interactions"] = delta_interactions
    sink.append({"interactions": delta_interactions}, {})
    # The bulk of the run's rows is handed over: the writer compresses them while the
    # metrics are worked out (checkpointing after the metrics instead left more of it
    # after the gate: 1M, 25 alternating pairs, -7 and -10 ms, 17 of 25 faster).
    sink.checkpoint(later=METRIC_TABLES)
    # Rows of deleted mail and events: what their people and companies lose is worked out
    # again in DuckDB, next to the rows (random deletes hit the busiest contacts: at 1M,
    # 100 deletes touched people with 1.3M rows). The three questions are asked at once,
    # in threads, while the rest of the metrics is worked out.
    pair = ["member_id", "person_id"]
    hit_pairs = removed_rows.select(pair).unique()
    redone_sums = (
        background.submit(lookup.sums_of, hit_pairs, removed.sources, delta_interactions, as_of)
        if hit_pairs.height
        else None
    )
    lost_rows: dict[str, pl.DataFrame] = {}  # (of people and companies that remain)
    ends_lost: dict[str, pl.DataFrame] = {}
    redone_ends: dict[str, Future[pl.DataFrame]] = {}
    for key, ids in (("person_id", people), ("company_id", companies)):
        lost_rows[key] = removed_rows.join(ids.select(key), on=key, how="semi")
        ends_lost[key] = held_an_end(key, lost_rows[key], previous.activity[key])
        if ends_lost[key].height:
            redone_ends[key] = background.submit(
                lookup.ends_of, key, ends_lost[key][key], removed.sources, delta_interactions, as_of
            )
    lap("interactions")

    # --- metrics: update who the delta or the clock touched from a few rows; everyone
    # else keeps their row. Decay sums are anchored at a fixed epoch (scores are views),
    # so only the pairs with interactions entering the past change.
    became_past = (pl.col("at") > utc_instant(previous.as_of)) & (
        pl.col("at") <= utc_instant(as_of)
    )
    entering = pl.concat([delta_interactions, around.filter(became_past)])
    entering_sums = person_connection_sums(entering.lazy(), as_of).collect()
    sums = (
        pl.concat(
            [
                previous.connection_sums.join(entering_sums.select(pair), on=pair, how="semi"),
                entering_sums.select(*pair, *SUM_COLUMNS),
            ],
            how="vertical_relaxed",
        )
        .group_by(pair)
        .agg(pl.col(SUM_COLUMNS).sum())
    )
    # Pairs that had rows of deleted mail: redone from all their rows that stay (decay
    # sums can't be taken back out exactly in floating point).
    gone_pairs = hit_pairs.clear()
    if redone_sums is not None:
        hit_sums = redone_sums.result()
        sums = pl.concat(
            [
                sums.join(hit_pairs, on=pair, how="anti"),
                hit_sums.select(sums.columns).cast(sums.schema),
            ]
        )
        gone_pairs = hit_pairs.join(hit_sums, on=pair, how="anti")
    upsert["_rapport_connection_sums"] = Upsert.over(
        pair, sums, previous.connection_sums, gone_pairs
    )
    sink.upsert({"_rapport_connection_sums": upsert["_rapport_connection_sums"]})
    # The meetings still ahead: the stored ones that stay, and the delta's. The next
    # state, and where each touched key's next meeting is found (updated, below).
    ahead = pl.col("at") > utc_instant(as_of)
    still = previous.upcoming.filter(ahead)
    kept_upcoming = removed.drop_rows(still)
    new_upcoming = upcoming_meetings(delta_interactions, as_of)
    upcoming = pl.concat([kept_upcoming, new_upcoming])
    # (from how they changed: comparing all 12,860 rows at 1M took 10.5 ms, this 3.5)
    upsert["_rapport_upcoming_meetings"] = upcoming_change(
        previous.upcoming, still, kept_upcoming, new_upcoming, ahead
    )
    sink.upsert({"_rapport_upcoming_meetings": upsert["_rapport_upcoming_meetings"]})
    members = frames.members
    new_companies = companies.join(previous.companies, on="company_id", how="anti")

    updated_keys: dict[str, int] = {}
    redone_keys: dict[str, int] = {}

    def updated(key: str, extra: pl.Series, ids: pl.DataFrame) -> pl.DataFrame:
        """New activity rows of the keys the delta or the clock touched (of `ids`)."""
        # Those that lost rows (deleted mail and events) are updated like the rest, the
        # lost rows taken out of the counts; where a lost row held a first or last time,
        # the times are found again among all the rows that stay.
        lost = lost_rows[key]
        held = ends_lost[key]  # (their times are being found again: redone_ends)
        touched = (
            pl.concat([entering[key], around[key], lost[key], extra])
            .drop_nulls()
            .unique()
            .to_frame(key)
            .join(ids.select(key), on=key, how="semi")  # not records merged away
        )
        updated_keys[key] = touched.height
        redone_keys[key] = held.height
        pairs = (
            pl.concat([frame.select(key, "source_key") for frame in (entering, around, lost)])
            .drop_nulls()
            .unique()
        )

        def of_pairs(rows: pl.DataFrame, is_new: bool, is_removed: bool) -> pl.DataFrame:
            return rows.join(pairs, on=[key, "source_key"], how="semi").with_columns(
                is_new=pl.lit(is_new), is_removed=pl.lit(is_removed)
            )

        source_rows = pl.concat(
            [
                of_pairs(by_source, False, False),
                of_pairs(lost, False, True),
                of_pairs(delta_interactions, True, False),
            ]
        )
        future = upcoming.join(touched, on=key, how="semi").select(key, "at")
        prev_activity = previous.activity[key].join(touched, on=key, how="semi")
        rows = activity_update(
            key,
            touched,
            prev_activity,
            entering,
            source_rows,
            future,
            previous.as_of,
            as_of,
            members,
        )
        if held.is_empty():
            return rows
        ends = with_member_email(redone_ends[key].result().lazy(), members).collect()
        found = (  # (no row left up to as_of: every time null)
            rows.join(held, on=key, how="semi")
            .drop(END_COLUMNS)
            .join(ends, on=key, how="left")
            .select(rows.columns)
            .cast(rows.schema)
        )
        return pl.concat([rows.join(held, on=key, how="anti"), found])

    person_rows = updated("person_id", new_people["person_id"], people)
    company_rows = updated("company_id", new_companies["company_id"], companies)
    lap("metrics")

    person_table, company_table = ACTIVITY_TABLES
    activity = {
        person_table: Upsert.over(["person_id"], person_rows, previous.activity["person_id"]),
        company_table: Upsert.over(["company_id"], company_rows, previous.activity["company_id"]),
    }
    upsert |= activity
    sink.upsert(activity)
    # Written out while the gate runs and the run is logged: the commit before the swap
    # is then left only the run log (1M, with the log fsynced meanwhile: two batches of
    # 12 alternating pairs, -25 and -35 ms, 8 of 11 faster each; CPU -36 and -42 ms).
    sink.checkpoint()
    stats = {
        "delta_messages": visible.height,
        "relanded_unchanged": relanded.height + relanded_events.height,
        # (of the mail and events landed again: those whose content hashes did not tell)
        "relanded_compared_in_full": compared_mail + compared_events,
        "messages_deleted": removed.message_keys.len() - changed_mail.height,
        "messages_changed": changed_mail.height,
        "events_removed": removed.event_keys.len(),
        "threads_blocked": new_blocked_threads.height,
        "delta_events": events.height,
        "delta_interactions": delta_interactions.height,
        "interactions_seen_again": existing.height,
        "contact_history_promoted": history_rows.height,
        "rows_around_time_edges": around.height,
        "people_updated": updated_keys["person_id"],
        "companies_updated": updated_keys["company_id"],
        # (of those updated: first and last times found again, a lost row having held one)
        "activity_redone": redone_keys["person_id"] + redone_keys["company_id"],
        "people_created": new_people.height,
        # (whose company, merges and link were worked out again: sharing_merge_keys)
        "people_refinished": near.len(),
        "quarantined": quarantine.height,
    }
    gate_tables = {
        "people": people,
        "companies": companies,
        "interactions": delta_interactions,
        "messages": messages_out,
        "_rapport_connection_sums": sums,
    }
    lap("tables")
    return DeltaStaged(upsert, append, gate_tables, stats, lap.times)


def upcoming_change(
    stored: pl.DataFrame,
    still: pl.DataFrame,
    kept: pl.DataFrame,
    new: pl.DataFrame,
    ahead: pl.Expr,
) -> Upsert:
    """The upcoming meetings' change, from how the run made them (not by comparing every
    row, as `changed_rows` does): `stored` rows not `ahead` any more go, as do those of
    `still` (the rows ahead) that removed mail or events took out (not in `kept`); the
    `new` rows come in. Interaction keys are unique, and a new row's key is stored only
    if its source was removed and landed again (then its old row goes first)."""
    gone = [stored.filter(~ahead).select(INTERACTION_KEY)]
    if kept.height < still.height:
        gone.append(
            still.select(INTERACTION_KEY).join(
                kept.select(INTERACTION_KEY), on=INTERACTION_KEY, how="anti", nulls_equal=True
            )
        )
    keys = new.select(INTERACTION_KEY)
    if new.height:
        stored_keys = keys.join(
            stored.select(INTERACTION_KEY), on=INTERACTION_KEY, how="semi", nulls_equal=True
        )
    else:
        stored_keys = keys
    return Upsert(INTERACTION_KEY, new, stored_keys, pl.concat(gone))


# The activity columns a lost row can hold: its time may be a first or last one (the
# next meeting is found from the upcoming rows anyway, the counts are updated).
END_COLUMNS = [c for c in ACTIVITY_COLUMNS if c not in (*COUNT_COLUMNS, "next_meeting_at")]


def held_an_end(key: str, lost: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """Keys one of whose `lost` rows is at one of their previous first or last times
    (of any kind: a cheap, safe superset). Without that row those times must be found
    again among all the rows that stay; otherwise taking the row out leaves them be."""
    if lost.is_empty():  # (a run that removes nothing: most runs)
        return lost.select(key)
    times = [c for c in END_COLUMNS if c.endswith("_at")]
    at_ends = (
        previous.join(lost.select(key).unique(), on=key, how="semi")
        .select(key, at=pl.concat_list(times))
        .explode("at")
        .drop_nulls()
    )
    return lost.select(key, "at").join(at_ends, on=[key, "at"], how="semi").select(key).unique()


EMAIL_KINDS = ["email_sent", "email_received"]
# (column, window in days, counts mail rather than meetings) as in metrics.activity_metrics
WINDOW_COUNTS = [
    ("emails_30d", 30, True),
    ("emails_90d", 90, True),
    ("emails_365d", 365, True),
    ("meetings_90d", 90, False),
]


def activity_update(
    key: str,
    touched: pl.DataFrame,
    previous: pl.DataFrame,
    entering: pl.DataFrame,
    source_rows: pl.DataFrame,
    future: pl.DataFrame,
    previous_as_of: datetime,
    as_of: datetime,
    members: pl.DataFrame,
) -> pl.DataFrame:
    """New activity rows for `touched` keys from their previous rows plus a few rows.

    * first/last times: min/max of the previous value and the rows entering the past
      (new interactions, and old ones whose time came between the two as_of);
    * last interaction kind/member: the greatest (at, kind, member) of the same;
    * windowed counts: previous count plus, per source whose window status can have
      changed (`source_rows`: every row of each such key and source, flagged `is_new`
      if the run adds it and `is_removed` if it takes it out), in-window now minus
      in-window then;
    * next meeting: the earliest meeting after as_of (`future`).
    Equal to `metrics.activity_metrics` over all rows (tests/flows/test_incremental.py).
    """
    at, kind = pl.col("at"), pl.col("kind")
    is_email, is_meeting = kind.is_in(EMAIL_KINDS), kind == "meeting"
    now_at, then_at = utc_instant(as_of), utc_instant(previous_as_of)
    # One lazy plan, collected once (a run's many small queries cost mostly their start).
    touched, previous, source_rows = touched.lazy(), previous.lazy(), source_rows.lazy()
    past = entering.lazy().filter(at <= now_at)
    times = past.group_by(key).agg(
        e_first=at.min(),
        e_last=at.max(),
        e_first_email=at.filter(is_email).min(),
        e_last_email=at.filter(is_email).max(),
        e_first_meeting=at.filter(is_meeting).min(),
        e_last_meeting=at.filter(is_meeting).max(),
    )
    ids = members.lazy().select("member_id", "email")
    previous_last = (
        previous.join(
            ids.rename({"email": "last_interaction_member"}),
            on="last_interaction_member",
            how="left",
        )
        .select(key, at="last_interaction_at", kind="last_interaction_kind", member_id="member_id")
        .drop_nulls("at")
    )
    latest = ["at", "kind", "member_id"]
    last = (
        pl.concat([previous_last, past.select(key, *latest)])
        .group_by(key)
        .agg(
            last_kind=kind.sort_by(latest).last(),
            last_member_id=pl.col("member_id").sort_by(latest).last(),
        )
        .join(
            ids.rename({"member_id": "last_member_id", "email": "last_member"}),
            on="last_member_id",
            how="left",
        )
    )
    day = timedelta(days=1)
    was, now = [], []
    for column, days, mail in WINDOW_COUNTS:
        then_lo, now_lo = previous_as_of - day * days, as_of - day * days
        of_kind = is_email if mail else is_meeting
        was.append(
            (of_kind & ~pl.col("is_new") & (at > utc_instant(then_lo)) & (at <= then_at))
            .any()
            .alias(f"{column}_was")
        )
        now.append(
            (of_kind & ~pl.col("is_removed") & (at > utc_instant(now_lo)) & (at <= now_at))
            .any()
            .alias(f"{column}_now")
        )
    # Per source: in each window then and now; per key: how many sources came in minus out.
    changes = (
        source_rows.group_by(key, "source_key")
        .agg(*was, *now)
        .group_by(key)
        .agg(
            (pl.col(f"{c}_now").cast(pl.Int64) - pl.col(f"{c}_was").cast(pl.Int64))
            .sum()
            .alias(f"{c}_change")
            for c, _, _ in WINDOW_COUNTS
        )
    )
    next_meeting = future.lazy().filter(at > now_at).group_by(key).agg(next_meeting_at=at.min())
    out = (
        touched.join(previous, on=key, how="left")
        .join(times, on=key, how="left")
        .join(last, on=key, how="left")
        .join(next_meeting.rename({"next_meeting_at": "next_new"}), on=key, how="left")
        .join(changes, on=key, how="left")
    )
    return out.select(
        key,
        first_interaction_at=pl.min_horizontal("first_interaction_at", "e_first"),
        last_interaction_at=pl.max_horizontal("last_interaction_at", "e_last"),
        last_interaction_kind="last_kind",
        last_interaction_member="last_member",
        first_email_at=pl.min_horizontal("first_email_at", "e_first_email"),
        last_email_at=pl.max_horizontal("last_email_at", "e_last_email"),
        first_meeting_at=pl.min_horizontal("first_meeting_at", "e_first_meeting"),
        last_meeting_at=pl.max_horizontal("last_meeting_at", "e_last_meeting"),
        next_meeting_at="next_new",
        **{
            column: pl.col(column).fill_null(0) + pl.col(f"{column}_change").fill_null(0)
            for column, _, _ in WINDOW_COUNTS
        },
    ).collect()
