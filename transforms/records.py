"""Automatic record creation (§4.3), companies and domain linking (§4.4), canonical merge (§4.5).

Records are durable: the previous run's people and companies are carried forward and
only ever gain addresses; ids are stable hashes of the key that created them.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import polars as pl
from nameparser import HumanName

from transforms.rules import is_automated_address, is_list_mail, message_key

PERSON_ROLES_SENT = ("to", "cc")
PERSON_ROLES_RECEIVED = ("from", "to", "cc")
ROLE_LOCAL_PARTS = (
    "info",
    "sales",
    "support",
    "hello",
    "team",
    "contact",
    "admin",
    "office",
    "help",
    "billing",
    "accounts",
    "careers",
    "jobs",
    "press",
    "marketing",
    "hr",
    "legal",
    "partners",
)

PEOPLE_SCHEMA = {
    "person_id": pl.String,
    "name": pl.String,
    "first_name": pl.String,
    "last_name": pl.String,
    "email_addresses": pl.List(pl.String),
    "primary_email": pl.String,
    "company_id": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
    "created_from_account": pl.String,
}
COMPANIES_SCHEMA = {
    "company_id": pl.String,
    "name": pl.String,
    "domains": pl.List(pl.String),
    "created_at": pl.Datetime("us", "UTC"),
}


def hash_ids(prefix: str, keys: pl.Series) -> pl.Series:
    """Stable ids from keys (sha1), computed once per distinct key."""
    return pl.Series(
        [f"{prefix}_{hashlib.sha1(k.encode()).hexdigest()[:16]}" for k in keys.to_list()],
        dtype=pl.String,
    )


def erc_off_intervals(toggles: pl.DataFrame) -> pl.DataFrame:
    """Intervals [off_from, off_until) during which enhanced record creation was off."""
    if toggles.is_empty():
        return pl.DataFrame(
            schema={"off_from": pl.Datetime("us", "UTC"), "off_until": pl.Datetime("us", "UTC")}
        )
    t = toggles.sort("at").with_columns(next_at=pl.col("at").shift(-1))
    return t.filter(~pl.col("enabled")).select(off_from="at", off_until="next_at")


def person_candidates(
    messages: pl.LazyFrame,
    participants: pl.LazyFrame,
    blocked_threads: pl.LazyFrame,
    erc_off: pl.DataFrame,
    *,
    exclude_list_mail: bool = True,
    automated_pattern: str | None = None,
) -> pl.LazyFrame:
    """Participant rows that create people: one row per (address, message) of evidence.

    Sent mail: To/Cc. Received mail: From/To/Cc only when dated inside an interval where
    enhanced record creation was off (the switch is not retroactive).
    """
    msgs = messages.join(blocked_threads, on=["account_id", "thread_id"], how="anti")
    if exclude_list_mail:
        msgs = msgs.filter(~is_list_mail())
    key = message_key(msgs, participants)
    msgs = msgs.select(*key, "direction", "sent_at")
    automated = (
        is_automated_address(automated_pattern) if automated_pattern else (is_automated_address())
    )
    in_off = _in_off_intervals(erc_off)
    if key == ["_mid"]:  # found by position, not by hashing
        off = in_off if erc_off.height else None
        return _candidates_by_position(participants, msgs.collect(), off, automated)
    # The pattern is matched once per distinct address, not once per participant row.
    machines = (
        participants.select(pl.col("email").drop_nulls().unique()).filter(automated).collect()
    )
    rows = participants.filter(
        pl.col("valid") & ~pl.col("internal") & ~pl.col("email").is_in(machines["email"].implode())
    ).join(msgs, on=key, how="inner")
    sent = rows.filter((pl.col("direction") == "sent") & pl.col("role").is_in(PERSON_ROLES_SENT))
    received = rows.filter(
        (pl.col("direction") == "received") & pl.col("role").is_in(PERSON_ROLES_RECEIVED) & in_off
    )
    return pl.concat([sent.select(CANDIDATE_COLUMNS), received.select(CANDIDATE_COLUMNS)])


CANDIDATE_COLUMNS = ["canonical_key", "email", "name", "account_id", "sent_at"]


def _in_off_intervals(erc_off: pl.DataFrame) -> pl.Expr:
    """True where `sent_at` falls in an interval with enhanced record creation off."""
    in_off = pl.lit(False)
    for row in erc_off.iter_rows(named=True):  # a handful of toggles, not rows of data
        cond = pl.col("sent_at") >= row["off_from"]
        if row["off_until"] is not None:
            cond = cond & (pl.col("sent_at") < row["off_until"])
        in_off = in_off | cond
    return in_off


def _candidates_by_position(
    participants: pl.LazyFrame, msgs: pl.DataFrame, in_off: pl.Expr | None, automated: pl.Expr
) -> pl.LazyFrame:
    """person_candidates when both sides carry `_mid`: each participant row finds its
    message's direction and time by position (arrays indexed by `_mid`), so only the
    rows that can create a person are copied: outside, valid, a recipient of sent mail
    or, with enhanced record creation off (`in_off` not None), on received mail then.
    Machines are looked for among those only."""
    highest = participants.select(pl.col("_mid").max()).collect().item()
    n = max(int(msgs["_mid"].max() or 0), int(highest or 0)) + 1  # type: ignore[arg-type]

    def by_mid(values: pl.Series, empty: object) -> pl.Expr:
        """`values` (one per message) at each row's `_mid` (`empty` where no message)."""
        array = pl.repeat(empty, n, dtype=values.dtype, eager=True).scatter(msgs["_mid"], values)
        return pl.lit(array).gather(pl.col("_mid"))

    sent_at = by_mid(msgs["sent_at"], None)
    outside = pl.col("valid") & ~pl.col("internal")
    kinds = [("sent", PERSON_ROLES_SENT, None)]
    if in_off is not None:
        kinds.append(("received", PERSON_ROLES_RECEIVED, in_off))
    parts = []
    for value, roles, when in kinds:
        on_mail = by_mid(msgs["direction"] == value, False).fill_null(False)
        rows = participants.filter(outside & on_mail & pl.col("role").is_in(roles)).select(
            "canonical_key", "email", "name", "account_id", sent_at=sent_at
        )
        parts.append(rows if when is None else rows.filter(when))
    rows = pl.concat(parts).collect()
    # The pattern is matched once per distinct address, not once per row.
    machines = rows.select(pl.col("email").drop_nulls().unique()).filter(automated)
    return rows.filter(~pl.col("email").is_in(machines["email"].implode())).lazy()


def _is_real_name() -> pl.Expr:
    name = pl.col("name")
    return name.is_not_null() & (name.str.strip_chars() != "") & ~name.str.contains("@")


def best_names(participants: pl.LazyFrame) -> pl.LazyFrame:
    """Most frequent real display name per canonical key (ties: alphabetical).

    Takes participant rows, or pre-counted rows carrying their count in `n`.
    """
    counted = "n" in participants.collect_schema().names()
    return (
        participants.filter(pl.col("valid") & _is_real_name())
        .with_columns(name=pl.col("name").str.strip_chars().str.strip_chars("'\""))
        .group_by("canonical_key", "name")
        .agg(n=pl.sum("n") if counted else pl.len())
        .sort(["canonical_key", "n", "name"], descending=[False, True, False])
        .unique(subset="canonical_key", keep="first", maintain_order=True)
        .select("canonical_key", display_name="name")
    )


SCHEMA_NAMES = {
    "display_name": pl.String,
    "name": pl.String,
    "first_name": pl.String,
    "last_name": pl.String,
}


# nameparser's own pattern (config/regexes.py), on lower-cased words
_ROMAN_NUMERAL = r"^(x|ix|iv|v?i{0,3})$"


@functools.cache
def _special_words() -> list[str]:
    """Words nameparser reads as more than a name: titles, suffixes, conjunctions, prefixes."""
    from nameparser.config import CONSTANTS

    return sorted(
        set(CONSTANTS.titles)
        | set(CONSTANTS.suffix_acronyms)
        | set(CONSTANTS.suffix_not_acronyms)
        | set(CONSTANTS.conjunctions)
        | set(CONSTANTS.prefixes)
    )


def _special_word(word: pl.Expr) -> pl.Expr:
    """True for a word nameparser may treat specially: it matches words without their
    periods ('Ph.D.' is the suffix 'phd'), and may take a Roman numeral for a suffix."""
    bare = word.str.to_lowercase().str.replace_all(".", "", literal=True)
    return bare.is_in(_special_words()) | bare.str.contains(_ROMAN_NUMERAL)


def _plain_two_word_names(names: pl.Series) -> pl.Series:
    """True where nameparser would just split 'First Last' (no comma, title or suffix)."""
    parts = names.str.split(" ")
    return (
        (parts.list.len() == 2)
        & ~names.str.contains(r"[,()\[\]\"]")
        & ~parts.list.eval(_special_word(pl.element())).list.any()
    ).fill_null(False)


def _plain_comma_names(names: pl.Series) -> pl.DataFrame:
    """(display_name, name, first_name, last_name) of the names that nameparser would just
    read as 'Last, First': one plain word each side of the comma."""
    words = names.str.extract_groups(r"^([^\s,()\[\]\"]+)\s*,\s*([^\s,()\[\]\"]+)$")
    frame = pl.DataFrame(
        {
            "display_name": names,
            "first_name": words.struct.field("2"),
            "last_name": words.struct.field("1"),
        }
    )
    plain = ~_special_word(pl.col("first_name")) & ~_special_word(pl.col("last_name"))
    return frame.filter(plain.fill_null(False)).select(
        "display_name",
        name=pl.concat_str("first_name", pl.lit(" "), "last_name"),
        first_name="first_name",
        last_name="last_name",
    )


def split_names(names: pl.Series, known: pl.DataFrame | None = None) -> pl.DataFrame:
    """(name, first_name, last_name) for distinct names; nameparser handles the rest.

    Plain 'First Last' names (the vast majority) and plain 'Last, First' ones split in
    Polars (tests/transforms/test_split_names.py holds them to nameparser's answers);
    only the rest go through nameparser, one call per distinct name (~0.3 ms each: the
    'Last, First' ones were 0.25 s of a million-message rebuild), unless `known` (an
    earlier run's result) already holds it.
    """
    distinct = names.unique().drop_nulls().str.strip_chars()
    distinct = distinct.filter(distinct != "").unique()
    reused = pl.DataFrame(schema=SCHEMA_NAMES)
    if known is not None and known.height:
        reused = known.cast(SCHEMA_NAMES).filter(pl.col("display_name").is_in(distinct.implode()))
        distinct = distinct.filter(~distinct.is_in(reused["display_name"].implode()))
    if distinct.is_empty():  # (every name parsed by an earlier run: most incremental runs)
        return reused
    plain = _plain_two_word_names(distinct)
    simple = pl.DataFrame({"display_name": distinct.filter(plain)}).with_columns(
        name=pl.col("display_name"),
        first_name=pl.col("display_name").str.split(" ").list.first(),
        last_name=pl.col("display_name").str.split(" ").list.last(),
    )
    rest = distinct.filter(~plain)
    comma = _plain_comma_names(rest)
    rows = []
    for full in rest.filter(~rest.is_in(comma["display_name"].implode())).to_list():
        parsed = HumanName(full)
        first = parsed.first or None
        last = parsed.last or None
        tidy = " ".join(p for p in (first, parsed.middle or None, last) if p) or full
        rows.append((full, tidy, first, last))
    hard = pl.DataFrame(rows, schema=SCHEMA_NAMES, orient="row")
    return pl.concat([simple.cast(SCHEMA_NAMES), comma.cast(SCHEMA_NAMES), hard, reused])


def names_from_local_part(lf: pl.LazyFrame) -> pl.LazyFrame:
    """jane.doe@ -> Jane / Doe. Role addresses (info@, sales@) get no invented name."""
    local = pl.col("primary_email").str.split("@").list.first()
    tokens = (
        local.str.replace_all(r"[0-9]+", "")
        .str.split(".")
        .list.eval(pl.element().filter(pl.element().str.len_chars() > 1))
    )
    usable = (tokens.list.len() == 2) & ~local.is_in(ROLE_LOCAL_PARTS)
    first = tokens.list.first().str.to_titlecase()
    last = tokens.list.last().str.to_titlecase()
    return lf.with_columns(
        first_name=pl.coalesce("first_name", pl.when(usable).then(first)),
        last_name=pl.coalesce("last_name", pl.when(usable).then(last)),
    ).with_columns(
        name=pl.coalesce(
            "name",
            pl.when(usable).then(pl.concat_str([first, pl.lit(" "), last])),
        )
    )


NAME_COUNT_COLUMNS = ["canonical_key", "email", "name", "n"]


def name_counts(participants: pl.LazyFrame) -> pl.LazyFrame:
    """Uses per (canonical key, address, display name) over valid rows.

    Takes participant rows, or rows already counted in `n` (an earlier run's counts
    plus new rows), so the counts can be kept and extended instead of recomputed.
    """
    counted = "n" in participants.collect_schema().names()
    # The canonical key follows from the address: grouping by two strings, not three, is
    # 30% faster over the 3.9M participant rows of a million messages.
    return (
        participants.filter(pl.col("valid"))
        .group_by("email", "name")
        .agg(
            canonical_key=pl.col("canonical_key").first(),
            n=pl.sum("n").cast(pl.Int64) if counted else pl.len().cast(pl.Int64),
        )
        .select(*NAME_COUNT_COLUMNS, valid=pl.lit(True))
    )


def name_counts_by_address(participants: pl.DataFrame) -> pl.DataFrame:
    """name_counts of participant rows that carry `_aid`, the number of their address
    (normalise_addresses): grouped by that integer and the name rather than by two
    strings, and the address's strings taken from one row of each group (at a million
    messages 0.090 -> 0.067 s with the summing). Counted rows in name_counts' columns:
    name_counts of them sums addresses that normalise alike."""
    groups = (
        participants.lazy()
        .with_row_index("_row")
        .group_by("_aid", "name")
        .agg(n=pl.len().cast(pl.Int64), _row=pl.col("_row").first())
        .collect()
    )
    firsts = participants.select("canonical_key", "email", "valid").gather(groups["_row"])
    return (
        pl.concat([firsts, groups.select("name", "n")], how="horizontal")
        .filter("valid")
        .select(*NAME_COUNT_COLUMNS, "valid")
    )


def build_people(
    candidates: pl.LazyFrame,
    participants: pl.LazyFrame,
    previous: pl.DataFrame | None,
    known_name_parts: pl.DataFrame | None = None,
    known_keys: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """People keyed by canonical address, merged with the previous run's records.

    Also returns the split of each display name used (kept, so a later run parses only
    names it has not seen). `known_keys` (address -> canonical_key, see `address_keys`)
    spares normalising addresses an earlier run already did.
    """
    created = (
        candidates.group_by("canonical_key")
        .agg(
            created_at=pl.col("sent_at").min(),
            created_from_account=pl.col("account_id").sort_by("sent_at", "account_id").first(),
        )
        .sort("canonical_key")
        .collect()
    )
    prev_keys = _previous_key_map(previous, known_keys)
    new_keys = created.join(prev_keys, on="canonical_key", how="anti")
    new_people = new_keys.with_columns(person_id=hash_ids("per", new_keys["canonical_key"]))
    key_map = pl.concat(
        [
            prev_keys.select("canonical_key", "person_id"),
            new_people.select("canonical_key", "person_id"),
        ]
    )
    # Every address seen for each person's canonical key, with use counts.
    # One pass over the (millions of) participant rows; everything after is per address.
    counts = name_counts(participants).collect().lazy()
    seen = (
        counts.join(key_map.lazy(), on="canonical_key", how="inner")
        .group_by("person_id", "email")
        .agg(n=pl.sum("n"))
    )
    if previous is not None and previous.height:
        prev_addr = (
            previous.select("person_id", email="email_addresses")
            .explode("email")
            .with_columns(n=pl.lit(0, pl.Int64))
        )
        seen = pl.concat([seen, prev_addr.lazy()]).group_by("person_id", "email").agg(n=pl.sum("n"))
    addresses = (
        seen.sort(["person_id", "n", "email"], descending=[False, True, False])
        .group_by("person_id", maintain_order=True)
        .agg(primary_email=pl.col("email").first(), email_addresses=pl.col("email").sort())
        .collect()
    )
    names = best_names(counts).join(key_map.lazy(), on="canonical_key").collect()
    # One display name per person: the key with the most recent creation wins ties.
    names = names.sort("person_id", "display_name").unique("person_id", keep="first")
    parsed = split_names(names["display_name"], known_name_parts)
    named = names.join(parsed, on="display_name", how="left").select(
        "person_id", "name", "first_name", "last_name"
    )
    base = pl.concat(
        [
            new_people.select("person_id", "created_at", "created_from_account"),
            _carried_forward(previous, created, key_map),
        ]
    )
    prev_names = (
        previous.select("person_id", p_name="name", p_first="first_name", p_last="last_name")
        if previous is not None
        else pl.DataFrame(
            schema={
                "person_id": pl.String,
                "p_name": pl.String,
                "p_first": pl.String,
                "p_last": pl.String,
            }
        )
    )
    people = (
        base.lazy()
        .join(addresses.lazy(), on="person_id", how="left")
        .join(named.lazy(), on="person_id", how="left")
        .join(prev_names.lazy(), on="person_id", how="left")
        .with_columns(
            name=pl.coalesce("name", "p_name"),
            first_name=pl.when(pl.col("name").is_not_null())
            .then("first_name")
            .otherwise("p_first"),
            last_name=pl.when(pl.col("name").is_not_null()).then("last_name").otherwise("p_last"),
        )
        .pipe(names_from_local_part)
        .with_columns(company_id=pl.lit(None, pl.String))
        .select(list(PEOPLE_SCHEMA))
        .sort("person_id")
        .collect()
    )
    return people.cast(PEOPLE_SCHEMA), parsed


def _carried_forward(
    previous: pl.DataFrame | None, created: pl.DataFrame, key_map: pl.DataFrame
) -> pl.DataFrame:
    """Previous records keep their id; created_at is the earliest evidence ever seen.

    min(previous, current) makes a record's creation time independent of how many runs
    (or crashed runs) it took to land the evidence.
    """
    schema = {
        "person_id": pl.String,
        "created_at": pl.Datetime("us", "UTC"),
        "created_from_account": pl.String,
    }
    if previous is None or previous.is_empty():
        return pl.DataFrame(schema=schema)
    evidence = (
        created.join(key_map, on="canonical_key", how="inner")
        .sort("created_at", "created_from_account")
        .unique("person_id", keep="first", maintain_order=True)
        .select("person_id", e_at="created_at", e_acc="created_from_account")
    )
    earlier = pl.col("e_at").is_not_null() & (
        pl.col("created_at").is_null() | (pl.col("e_at") < pl.col("created_at"))
    )
    return (
        previous.select("person_id", "created_at", "created_from_account")
        .cast(schema)
        .join(evidence, on="person_id", how="left")
        .select(
            "person_id",
            created_at=pl.when(earlier).then("e_at").otherwise("created_at"),
            created_from_account=pl.when(earlier).then("e_acc").otherwise("created_from_account"),
        )
    )


def _previous_key_map(
    previous: pl.DataFrame | None, known_keys: pl.DataFrame | None = None
) -> pl.DataFrame:
    """canonical key -> person id for every address of every previous person (a key two
    people hold goes to the smaller id)."""
    if previous is None or previous.is_empty():
        return pl.DataFrame(schema={"canonical_key": pl.String, "person_id": pl.String})
    keys = address_keys(people_addresses(previous), known_keys)
    return person_key_map(previous.sort("person_id", maintain_order=True), keys)


def people_addresses(people: pl.DataFrame) -> pl.Series:
    return people["email_addresses"].explode()


def person_key_map(people: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """canonical_key -> person_id over every address a person holds (a key two people
    hold goes to the first of them).

    `keys` maps each of those addresses to its canonical key (`address_keys`).
    """
    exploded = people.select("person_id", address="email_addresses").explode("address")
    return (
        exploded.join(keys, on="address", how="left", maintain_order="left")
        .select("canonical_key", "person_id")
        .drop_nulls()
        .unique("canonical_key", keep="first", maintain_order=True)
    )


def settle_survivors(
    people: pl.DataFrame,
    survivors: pl.Series,
    counts: pl.DataFrame,
    known_name_parts: pl.DataFrame | None = None,
    known_keys: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """`people` with each of `survivors` (records that absorbed a merge this run) rebuilt
    from all the addresses they now hold, as the next run's build_people will.

    A merge keeps the survivor's own primary address and name; built from every address,
    the most used address (and the best name) of the union can differ. Settling now
    makes a run's records what any later run (or a full rebuild) keeps. Creation times
    stay: a merge already keeps the older record's.
    """
    survivors = survivors.unique()
    if survivors.is_empty():
        return people
    held = people.filter(pl.col("person_id").is_in(survivors.implode()))
    keys = _previous_key_map(held, known_keys)["canonical_key"].implode()
    no_candidates = pl.LazyFrame(
        schema={
            "canonical_key": pl.String,
            "sent_at": pl.Datetime("us", "UTC"),
            "account_id": pl.String,
        }
    )
    rebuilt, _ = build_people(
        no_candidates,
        counts.lazy().filter(pl.col("canonical_key").is_in(keys)),
        held,
        known_name_parts,
        known_keys,
    )
    settled = ["name", "first_name", "last_name", "primary_email", "email_addresses"]
    return (
        people.join(rebuilt.select("person_id", *settled), on="person_id", how="left")
        .with_columns(
            pl.when(pl.col("person_id").is_in(survivors.implode()))
            .then(pl.col(f"{c}_right"))
            .otherwise(pl.col(c))
            .alias(c)
            for c in settled
        )
        .select(people.columns)
    )


@dataclass
class Touched:
    person_ids: pl.Series  # previous people whose record must be rebuilt
    keys: pl.Series  # their canonical keys plus the evidence keys (new people's too)
    key_map: pl.DataFrame  # canonical_key -> person_id of every previous person


def touched_people(
    previous: pl.DataFrame,
    evidence_keys: pl.Series,
    known_keys: pl.DataFrame | None,
    key_map: pl.DataFrame | None = None,
) -> Touched:
    """The previous people whose record new evidence (canonical keys) can change.

    build_people gives every other previous person the row they already have, so an
    incremental run rebuilds just these. Survivors of merges are no exception: each was
    settled from all its addresses in the run that merged it (settle_survivors), so
    without new evidence its row is already what build_people makes of it. `key_map`:
    the previous people's key map when kept (else worked out from their addresses).
    """
    if key_map is None:
        key_map = _previous_key_map(previous, known_keys)
    ids = key_map.filter(pl.col("canonical_key").is_in(evidence_keys.implode()))[
        "person_id"
    ].unique()
    keys = key_map.filter(pl.col("person_id").is_in(ids.implode()))["canonical_key"]
    return Touched(ids, keys.append(evidence_keys).unique(), key_map)


ADDRESS_KEYS_SCHEMA = {"address": pl.String, "canonical_key": pl.String}


def address_keys(addresses: pl.Series, known: pl.DataFrame | None = None) -> pl.DataFrame:
    """(address, canonical_key) for each distinct address (the key is null if invalid).

    `known` (an earlier result, kept in the warehouse) answers the addresses it holds;
    only the others are normalised.
    """
    from transforms.addresses import normalise_addresses  # vectorised, per distinct address

    distinct = addresses.drop_nulls().unique().to_frame("address")
    hits = pl.DataFrame(schema=ADDRESS_KEYS_SCHEMA)
    if known is not None and known.height:
        hits = distinct.join(known.cast(ADDRESS_KEYS_SCHEMA), on="address")
        distinct = distinct.join(hits, on="address", how="anti")
        if distinct.is_empty():  # (every address known: most incremental runs)
            return hits.sort("address")
    fresh = (
        normalise_addresses(distinct.lazy(), "address")
        .select("address", "canonical_key")
        .collect()
        .cast(ADDRESS_KEYS_SCHEMA)
    )
    return pl.concat([hits, fresh]).sort("address")


def company_name_from_domain(domain: pl.Expr) -> pl.Expr:
    """acme-corp.co.uk -> 'Acme Corp': the label left of the public suffix, title-cased."""
    label = domain.str.split(".").list.first()
    return label.str.replace_all(r"[-_]+", " ").str.strip_chars().str.to_titlecase()


def addresses_with_domains(people: pl.DataFrame, domain_info: pl.DataFrame) -> pl.LazyFrame:
    """(person_id, email, raw_domain, and `domain_info`'s columns) for every address of
    every person; null info where the domain is not in `domain_info`."""
    return (
        people.lazy()
        .select("person_id", email="email_addresses")
        .explode("email")
        .drop_nulls()
        .with_columns(raw_domain=pl.col("email").str.split("@").list.last())
        .join(domain_info.lazy(), left_on="raw_domain", right_on="domain", how="left")
    )


def build_companies(
    people: pl.DataFrame,
    domain_info: pl.DataFrame,
    internal_domains: list[str],
    previous: pl.DataFrame | None,
    created_lookup: pl.DataFrame,
    extra_domains: dict[str, str] | None = None,
) -> pl.DataFrame:
    """One company per registrable (non-free, non-internal) domain of a person's address.

    `extra_domains` maps an extra domain to the primary domain it joins (configuration only).
    """
    # Lazy plans, collected twice (an incremental run's small frames cost mostly per query).
    addr = addresses_with_domains(people, domain_info)
    fresh = (
        addr.filter(
            pl.col("registrable_domain").is_not_null()
            & ~pl.col("is_free_mail").fill_null(False)
            & ~pl.col("registrable_domain").is_in(internal_domains)
        )
        .select(domain="registrable_domain")
        .unique()
    )
    if extra_domains:
        fresh = fresh.filter(~pl.col("domain").is_in(list(extra_domains)))
    prev = (previous if previous is not None else pl.DataFrame(schema=COMPANIES_SCHEMA)).lazy()
    prev_domains = prev.select("company_id", domain="domains").explode("domain")
    created = created_lookup.lazy()
    new = (
        fresh.join(prev_domains, on="domain", how="anti")
        .sort("domain")
        .join(created, on="domain", how="left", maintain_order="left")
        .collect()
    )
    new = new.with_columns(
        company_id=hash_ids("com", new["domain"]),
        name=company_name_from_domain(pl.col("domain")),
        domains=pl.concat_list("domain"),
    )
    # Earliest evidence wins for carried-forward companies too (see _carried_forward).
    prev_first = (
        prev.select("company_id", "created_at", domain="domains")
        .explode("domain")
        .join(created.rename({"created_at": "e_at"}), on="domain", how="left")
        .group_by("company_id")
        .agg(e_at=pl.min("e_at"))
    )
    prev = (
        prev.join(prev_first, on="company_id", how="left")
        .with_columns(created_at=pl.min_horizontal("created_at", "e_at"))
        .drop("e_at")
    )
    companies = pl.concat(
        [prev.select(list(COMPANIES_SCHEMA)), new.lazy().select(list(COMPANIES_SCHEMA))]
    )
    if extra_domains:
        extra = pl.LazyFrame(
            {"domain": list(extra_domains), "primary": list(extra_domains.values())}
        )
        add = (
            companies.select("company_id", primary="domains")
            .explode("primary")
            .join(extra, on="primary")
            .group_by("company_id")
            .agg(extra=pl.col("domain"))
        )
        companies = (
            companies.join(add, on="company_id", how="left")
            .with_columns(
                domains=pl.concat_list("domains", pl.col("extra").fill_null([]))
                .list.unique()
                .list.sort()
            )
            .drop("extra")
        )
    return companies.cast(COMPANIES_SCHEMA).sort("company_id").collect()


def link_people(
    people: pl.DataFrame,
    companies: pl.DataFrame,
    domain_info: pl.DataFrame,
    last_used: pl.DataFrame,
) -> pl.DataFrame:
    """company_id = the company of the person's most recently used linked address."""
    # One plan, collected once (an incremental run's small frames cost mostly per query).
    company_domains = (
        companies.lazy()
        .select("company_id", registrable_domain="domains")
        .explode("registrable_domain")
    )
    addr = addresses_with_domains(people, domain_info.select("domain", "registrable_domain"))
    # Subdomains of a configured extra domain also count (mail.extra.com -> extra.com).
    links = (
        addr.join(company_domains, on="registrable_domain", how="inner")
        .join(last_used.lazy(), on="email", how="left")
        .sort(
            ["person_id", "last_used_at", "email"], descending=[False, True, False], nulls_last=True
        )
        .unique("person_id", keep="first", maintain_order=True)
        .select("person_id", linked="company_id")
    )
    return (
        people.lazy()
        .join(links, on="person_id", how="left")
        .with_columns(company_id=pl.col("linked"))
        .drop("linked")
        .select(list(PEOPLE_SCHEMA))
        .collect()
    )
