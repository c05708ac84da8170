"""The hash- and position-based joins of the full build give exactly the plain joins' answer.

Each fast path is checked against the straightforward Polars join (or the scalar address
twins) on random small frames, and the collision fallbacks are forced by a hash that
makes every key collide.
"""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from transforms import addresses
from transforms.addresses import (
    canonical_key,
    may_normalise_into,
    normalise_address,
    normalise_addresses,
)
from transforms.current import _message_rows_in_order, with_message_row
from transforms.metrics import with_message_columns
from transforms.pipeline import NAME_SOURCE, lists_by_row, row_offsets
from transforms.records import name_counts, name_counts_by_address
from transforms.rules import with_internal_flag


@pytest.fixture(scope="module", params=["hash joins", "string joins"])
def input_size_path(request):
    """A test twice: small inputs take the string joins (an incremental run's), so the
    hash joins of a full build's millions of rows are forced by a threshold of 0."""
    kept = addresses.SMALL_INPUT_ROWS
    addresses.SMALL_INPUT_ROWS = 0 if request.param == "hash joins" else kept
    yield request.param
    addresses.SMALL_INPUT_ROWS = kept


ADDRESS_POOL = [
    "Ann@Example.com",
    "ann+news@example.com",
    "a.n.n@gmail.com",
    "ann@googlemail.com",
    "bob@sub.example.co.uk",
    "not-an-address",
    "two@@ats.com",
    " bob@sub.example.co.uk ",
    "",
]

participant_rows = st.lists(
    st.tuples(
        st.sampled_from(["acc_a", "acc_b"]),
        st.sampled_from([f"m{i}" for i in range(6)]),
        st.integers(1, 3),
        st.sampled_from(["from", "to", "cc"]),
        st.one_of(st.none(), st.sampled_from(ADDRESS_POOL)),
    ),
    max_size=40,
)
message_versions = st.dictionaries(
    st.tuples(st.sampled_from(["acc_a", "acc_b"]), st.sampled_from([f"m{i}" for i in range(6)])),
    st.integers(1, 3),
    max_size=12,
)


def participants_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "account_id": pl.String,
            "message_id": pl.String,
            "version": pl.Int64,
            "role": pl.String,
            "address": pl.String,
        },
        orient="row",
    )


def messages_frame(versions: dict[tuple[str, str], int]) -> pl.DataFrame:
    rows = [(acc, mid, v) for (acc, mid), v in sorted(versions.items())]
    return pl.DataFrame(
        rows,
        schema={"account_id": pl.String, "message_id": pl.String, "version": pl.Int64},
        orient="row",
    ).with_row_index("_mid")


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(sorted(frame.columns)).sort(pl.all(), nulls_last=True)


def exact_message_rows(parts: pl.DataFrame, msgs: pl.DataFrame) -> pl.DataFrame:
    cols = ["account_id", "message_id", "version"]
    return parts.join(msgs.select(*cols, "_mid"), on=cols, how="inner")


@pytest.mark.usefixtures("input_size_path")
@settings(max_examples=60, deadline=None)
@given(rows=participant_rows, versions=message_versions)
def test_participants_get_their_current_messages_row_exactly(rows, versions):
    parts, msgs = participants_frame(rows), messages_frame(versions)
    got = with_message_row(parts, msgs)
    assert canonical(got).equals(canonical(exact_message_rows(parts, msgs)))


@pytest.mark.usefixtures("input_size_path")
@settings(max_examples=60, deadline=None)
@given(
    versions=message_versions,
    per_message=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    stale=st.booleans(),
)
def test_participants_landed_in_message_order_get_the_same_rows(versions, per_message, stale):
    """A lake batch lands each message's participants together, in message order: the
    in-order path must give the join's answer, and fall back when the order breaks (a
    message without participants, a superseded version's rows)."""
    msgs = messages_frame(versions)
    rows = [
        (acc, mid, v, "to", f"{mid}.{i}@x.com")
        for (acc, mid, v), n in zip(
            msgs.select("account_id", "message_id", "version").rows(), per_message, strict=False
        )
        for i in range(n)
    ]
    if stale and rows:
        rows.append((rows[0][0], rows[0][1], rows[0][2] + 7, "to", "old@x.com"))
    parts = participants_frame(rows)
    got = with_message_row(parts, msgs)
    assert canonical(got).equals(canonical(exact_message_rows(parts, msgs)))
    in_order = all(per_message[: msgs.height]) and not (stale and rows)
    cols = ["account_id", "message_id", "version"]
    assert (_message_rows_in_order(parts, msgs, cols) is not None) == in_order


def always_colliding(real):
    """A hash under which every key collides for the first seed of each pair."""

    def key_hash(columns, seed):
        return pl.lit(7, pl.UInt64) if seed in (31, 101) else real(columns, seed)

    return key_hash


@pytest.mark.usefixtures("input_size_path")
def test_a_colliding_message_key_takes_the_exact_join(monkeypatch):
    parts = participants_frame(
        [("acc_a", "m1", 1, "to", "x@y.com"), ("acc_a", "m2", 2, "to", "z@y.com")]
        + [("acc_a", "m2", 1, "to", "old@y.com")]  # a superseded version: must drop out
    )
    msgs = messages_frame({("acc_a", "m1"): 1, ("acc_a", "m2"): 2})
    monkeypatch.setattr(addresses, "key_hash", always_colliding(addresses.key_hash))
    got = with_message_row(parts, msgs)
    assert sorted(got["address"].to_list()) == ["x@y.com", "z@y.com"]
    assert canonical(got).equals(canonical(exact_message_rows(parts, msgs)))


@pytest.mark.usefixtures("input_size_path")
@settings(max_examples=60, deadline=None)
@given(rows=participant_rows)
def test_address_normalisation_matches_the_scalar_rules_row_by_row(rows):
    parts = participants_frame(rows)
    got = normalise_addresses(parts.lazy(), "address").collect()
    assert got.height == parts.height
    for row in got.iter_rows(named=True):
        expected = normalise_address(row["address"])
        assert row["email"] == expected
        assert row["valid"] == (expected is not None)
        assert row["canonical_key"] == canonical_key(row["address"])


raw_addresses = st.builds(
    lambda pad, local, tag, at, domain, dot: f"{pad}{local}{tag}{at}{domain}{dot}{pad}",
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["ann", "A.Nn", "bob", "Zoë", "x"]),
    st.sampled_from(["", "+news", "+A+b"]),
    st.sampled_from(["@", "@@", ""]),
    st.sampled_from(
        ["Example.COM", "example.com", ".example.com", "gmail.com", "bücher.de", "xn--bcher-kva.de"]
        + ["Sub.Example.co.uk", "exämple.com", "ex", ""]
    ),
    st.sampled_from(["", "."]),
)


@settings(max_examples=200, deadline=None)
@given(address=raw_addresses, others=st.lists(st.sampled_from(["acme.io", "b.org"]), max_size=2))
def test_the_domain_prefilter_keeps_every_address_that_normalises_into_a_domain(address, others):
    """`may_normalise_into` may keep too much, never too little: an address whose
    normalised form is at one of the domains always passes."""
    norm = normalise_address(address)
    assume(norm is not None)  # (invalid addresses never match an email: either way)
    frame = pl.DataFrame({"address": [address]})
    domains = [norm.split("@")[1], *others]
    assert frame.filter(may_normalise_into(domains)).height == 1, (address, norm)


def test_the_domain_prefilter_drops_other_ascii_addresses():
    frame = pl.DataFrame({"address": ["ann@Acme.io", "bob@other.org", "zoë@x.de", None]})
    kept = frame.filter(may_normalise_into(["acme.io"]))["address"].to_list()
    assert kept == ["ann@Acme.io", "zoë@x.de"]  # (non-ASCII: its IDNA form may differ)


@pytest.mark.usefixtures("input_size_path")
@pytest.mark.parametrize("collide", [False, True])
def test_address_normalisation_survives_a_hash_collision(monkeypatch, collide):
    parts = participants_frame(
        [("acc_a", "m1", 1, "to", a) for a in ["Ann@Example.com", "bob@b.io", None, "junk"]]
    )
    if collide:
        monkeypatch.setattr(addresses, "key_hash", always_colliding(addresses.key_hash))
    got = normalise_addresses(parts.lazy(), "address").collect()
    by_address = {row["address"]: row for row in got.iter_rows(named=True)}
    assert by_address["Ann@Example.com"]["email"] == "ann@example.com"
    assert by_address["bob@b.io"]["email"] == "bob@b.io"
    assert by_address["junk"]["email"] is None and by_address[None]["email"] is None
    assert [by_address[a]["valid"] for a in ["Ann@Example.com", "bob@b.io", "junk", None]] == [
        True,
        True,
        False,
        False,
    ]


@settings(max_examples=60, deadline=None)
@given(
    mids=st.lists(st.integers(0, 9), max_size=30),
    kept=st.sets(st.integers(0, 9)),
    shuffled=st.booleans(),
    how=st.sampled_from(["inner", "left"]),
)
def test_rows_find_their_messages_by_position_as_a_join_would(mids, kept, shuffled, how):
    rows = pl.DataFrame(
        {"_mid": mids, "n": list(range(len(mids)))}, schema_overrides={"_mid": pl.UInt32}
    )
    msgs = pl.DataFrame(
        {"_mid": sorted(kept), "sent": [f"s{m}" for m in sorted(kept)]},
        schema_overrides={"_mid": pl.UInt32},
    )
    if shuffled:
        msgs = msgs.sample(fraction=1.0, shuffle=True, seed=1)
    got = with_message_columns(rows, msgs, how)
    expected = rows.join(msgs, on="_mid", how=how)
    assert canonical(got).equals(canonical(expected))


@settings(max_examples=60, deadline=None)
@given(mids=st.lists(st.integers(0, 7), max_size=30), n=st.integers(8, 10))
def test_lists_by_row_equal_a_group_by_in_any_row_order(mids, n):
    rows = pl.DataFrame(
        {"_mid": mids, "v": [f"a{i}" for i in range(len(mids))]},
        schema_overrides={"_mid": pl.UInt32},
    )
    got = lists_by_row(rows, pl.col("v"), n)
    assert got.len() == n
    expected = {m: sorted(rows.filter(pl.col("_mid") == m)["v"].to_list()) for m in range(n)}
    assert {m: sorted(values) for m, values in enumerate(got.to_list())} == expected


@settings(max_examples=60, deadline=None)
@given(mids=st.lists(st.integers(0, 12), max_size=40), extra=st.integers(0, 3))
def test_row_offsets_equal_searching_the_sorted_rows(mids, extra):
    sorted_mids = pl.Series(sorted(mids), dtype=pl.UInt32)
    n = (max(mids) + 1 if mids else 0) + extra
    bounds = pl.int_range(n + 1, dtype=pl.UInt32, eager=True)
    expected = sorted_mids.search_sorted(bounds, side="left").cast(pl.Int64)
    assert row_offsets(sorted_mids, n).to_list() == expected.to_list()


@pytest.mark.usefixtures("input_size_path")
def test_interactions_by_position_equal_the_plain_joins(tmp_path, monkeypatch):
    """Repeats inside a message (To and Cc), across two mailboxes of one member, a
    contact who is no person, and received mail: both ways give the same rows."""
    from tests.mailbox import Mail, Sandbox
    from transforms import pipeline

    sb = Sandbox(tmp_path, members=["alice@acme-team.io", "bob@acme-team.io"])
    alice = "alice@acme-team.io"
    sb.land(
        alice,
        [
            Mail("s1", alice, ["ceo@initech.com"], cc=["ceo@initech.com"], labels=["SENT"]),
            Mail("s2", alice, ["cfo@initech.com", "bob@acme-team.io"], labels=["SENT"]),
            Mail("r1", "ceo@initech.com", [alice], cc=["cto@initech.com"], rfc_id="<x@i>"),
            Mail("r2", "stranger@else.org", [alice]),
        ],
    )
    sb.land("bob@acme-team.io", [Mail("r1b", "ceo@initech.com", [alice], rfc_id="<x@i>")])
    fast = sb.build()
    monkeypatch.setattr(pipeline, "message_key", lambda m, p: ["account_id", "message_id"])
    # (the plain joins need the message ids the build drops once rows have `_mid`)
    with_ids = pipeline.current_participants
    monkeypatch.setattr(
        pipeline,
        "current_participants",
        lambda *a, **k: with_ids(*a, **{**k, "by_row_only": False}),
    )
    plain = sb.build()
    for table in ("interactions", "_rapport_contact_history"):
        got, expected = fast.tables[table], plain.tables[table]
        assert got.height > 0
        assert canonical(got).equals(canonical(expected)), table
    interactions = fast.tables["interactions"]
    # <x@i> is one interaction per member who received it (the cc'd cto is no person).
    assert interactions.filter(pl.col("source_key") == "<x@i>").height == 2
    # The ceo in both To and Cc of s1 is one sent interaction.
    assert interactions.filter(pl.col("kind") == "email_sent").height == 2  # s1 ceo, s2 cfo
    assert (
        fast.tables["_rapport_contact_history"]["canonical_key"]
        .to_list()
        .count("stranger@else.org")
        == 1
    )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["p1", "p2"]),
            st.sampled_from(["m_b", "m_a", "m_c"]),
            st.sampled_from(["email_sent", "email_received", "meeting"]),
            st.sampled_from([-2, 0, 1, 3]),  # days from the run; repeats force ties
        ),
        max_size=25,
    )
)
def test_last_kind_and_member_equal_a_sort_of_the_past_rows(rows):
    from datetime import UTC, datetime, timedelta

    from transforms.metrics import last_kind_and_member

    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        [(p, m, k, as_of - timedelta(days=d)) for p, m, k, d in rows],
        schema={
            "person_id": pl.String,
            "member_id": pl.String,
            "kind": pl.String,
            "at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )
    past = pl.col("at") <= as_of
    last_row, with_last_row = last_kind_and_member(frame.lazy(), past)
    got = (
        with_last_row(frame.lazy().group_by("person_id").agg(*last_row))
        .select("person_id", kind="last_interaction_kind", member="last_interaction_member_id")
        .collect()
    )
    latest = [pl.col(c).filter(past) for c in ("at", "kind", "member_id")]
    expected = frame.group_by("person_id").agg(
        kind=pl.col("kind").filter(past).sort_by(latest).last(),
        member=pl.col("member_id").filter(past).sort_by(latest).last(),
    )
    assert canonical(got).equals(canonical(expected))


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.integers(0, 6), st.just(2**64 - 1)), max_size=30))
def test_repeated_marks_exactly_what_is_duplicated_marks(values):
    series = pl.Series("h", values, dtype=pl.UInt64)
    assert addresses.repeated(series).to_list() == series.is_duplicated().to_list()


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.sampled_from(["a:1", "a:2", "b:1", "", "A:1"]))))
def test_the_gate_finds_every_null_or_repeated_id_and_nothing_else(keys):
    from expectations.suites import null_or_repeated

    frame = pl.DataFrame({"message_key": keys}, schema={"message_key": pl.String})
    key = pl.col("message_key")
    expected = frame.filter(key.is_null() | key.is_duplicated())
    got = null_or_repeated(frame.lazy(), "message_key").collect()
    assert sorted(got["message_key"].to_list(), key=str) == sorted(
        expected["message_key"].to_list(), key=str
    )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["ann@example.com", "bob@x.org"])),
            st.one_of(st.none(), st.sampled_from(ADDRESS_POOL)),
        ),
        max_size=20,
    )
)
def test_shown_addresses_are_the_email_else_the_address_lower_cased(rows):
    from transforms.addresses import shown_addresses

    parts = pl.DataFrame(rows, schema={"email": pl.String, "address": pl.String}, orient="row")
    expected = parts.select(pl.coalesce("email", pl.col("address").str.to_lowercase()))
    assert shown_addresses(parts).to_list() == expected.to_series().to_list()


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.booleans()), max_size=25),
    visible=st.sets(st.integers(0, 6)),
)
def test_message_flags_mark_the_mail_whose_every_participant_is_internal(parts, visible):
    from transforms.pipeline import message_flags_table

    vparts = pl.DataFrame(
        parts, schema={"_mid": pl.UInt32, "valid": pl.Boolean, "internal": pl.Boolean}, orient="row"
    )
    msgs = pl.DataFrame({"_mid": sorted(visible)}, schema={"_mid": pl.UInt32}).with_columns(
        account_id=pl.lit("acc"), message_id=pl.col("_mid").cast(pl.String)
    )
    expected = {
        f"acc:{m}"
        for m in visible
        if any(p[0] == m for p in parts)
        and all(not valid or internal for mid, valid, internal in parts if mid == m)
    }
    flags = message_flags_table(msgs, vparts)
    assert set(flags["message_key"]) == expected
    assert flags["internal_only"].all()


@pytest.mark.usefixtures("input_size_path")
@pytest.mark.parametrize("collide", [False, True])
def test_the_internal_flag_per_distinct_address_equals_the_flag_per_row(monkeypatch, collide):
    """normalise_addresses(internal=..., columns=...) flags each distinct address once;
    the rows must get what with_internal_flag over every normalised row gives, and only
    the columns asked for (also when the hash join falls back to the exact one)."""
    addresses_in = [
        "Ann@Acme.io",  # a member
        "ann@acme.io",
        "bob@sales.acme.io",  # the workspace's own domain, a subdomain
        "carol@example.com",
        "dave@gmail.com",
        None,
        "junk",
        "eve@acme.io.evil.com",
    ]
    parts = participants_frame([("acc_a", "m1", 1, "to", a) for a in addresses_in])
    if collide:
        monkeypatch.setattr(addresses, "key_hash", always_colliding(addresses.key_hash))
    internal = (["ann@acme.io"], ["acme.io"])
    columns = ["email", "canonical_key", "valid", "internal"]
    got = normalise_addresses(parts.lazy(), "address", internal, columns).collect()
    assert got.columns == [*parts.columns, *columns]
    by_address = dict(zip(got["address"], got["internal"], strict=True))
    assert by_address == {
        "Ann@Acme.io": True,
        "ann@acme.io": True,
        "bob@sales.acme.io": True,
        "carol@example.com": False,
        "dave@gmail.com": False,
        None: False,
        "junk": False,
        "eve@acme.io.evil.com": False,
    }
    per_row = with_internal_flag(normalise_addresses(parts.lazy(), "address"), *internal)
    assert_frame_equal(got, per_row.select(got.columns).collect(), check_row_order=not collide)


name_rows = st.lists(
    st.tuples(
        st.sampled_from(["Ann@Acme.io", "ann@acme.io", " ann@acme.io", "a.nn@gmail.com"])
        | st.sampled_from(["ann@gmail.com", "bob@b.org", "junk", ""])
        | st.none(),
        st.sampled_from(["Ann", "Ann Lee", "  ", "bob@b.org"]) | st.none(),
    ),
    max_size=30,
)


@pytest.mark.usefixtures("input_size_path")
@settings(max_examples=80, deadline=None)
@given(rows=name_rows)
def test_name_counts_by_address_number_equal_name_counts_by_the_strings(rows):
    """Grouping by the address's number, then summing addresses that normalise alike,
    counts exactly what grouping by (address, name) strings does."""
    parts = participants_frame([("acc_a", "m1", 1, "to", a) for a, _ in rows]).with_columns(
        name=pl.Series([n for _, n in rows], dtype=pl.String)
    )
    columns = ["email", "canonical_key", "valid", "_aid"]
    flagged = normalise_addresses(parts.lazy(), "address", columns=columns).collect()
    by_strings = name_counts(flagged.lazy().select(NAME_SOURCE)).collect()
    by_number = name_counts(name_counts_by_address(flagged).lazy()).collect()
    assert_frame_equal(by_number, by_strings, check_row_order=False)


candidate_mail = st.lists(
    st.tuples(
        st.sampled_from(["sent", "received"]),
        st.integers(0, 3),  # month of 2026
        st.booleans(),  # list mail
        st.sampled_from(["t1", "t2"]),  # thread (t2 is blocked)
        st.lists(
            st.tuples(
                st.sampled_from(["from", "to", "cc", "bcc"]),
                st.sampled_from(["ann@x.com", "noreply@x.com", "bob@y.org", "me@team.io"]),
                st.booleans(),  # valid
            ),
            max_size=4,
        ),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(mail=candidate_mail, erc_off=st.booleans(), gap=st.booleans())
@example(  # received mail while enhanced record creation was off: From and Cc count
    mail=[
        ("received", 1, False, "t1", [("from", "ann@x.com", True), ("cc", "bob@y.org", True)]),
        ("sent", 0, False, "t1", [("to", "bob@y.org", True), ("from", "me@team.io", True)]),
    ],
    erc_off=True,
    gap=False,
)
def test_person_candidates_by_position_equal_the_plain_joins(mail, erc_off, gap):
    """The rows that can create people, found by `_mid` positions, are those the joins
    on (account, message) find: sent and received mail, list mail, a blocked thread,
    machines, invalid and internal addresses, enhanced record creation off for a while.
    `gap`: a message without participants and participants of a message not taken."""
    from datetime import UTC, datetime

    from transforms.records import erc_off_intervals, person_candidates

    msgs = pl.DataFrame(
        {
            "_mid": pl.Series(range(len(mail)), dtype=pl.UInt32),
            "account_id": ["acc_a"] * len(mail),
            "message_id": [f"m{i}" for i in range(len(mail))],
            "thread_id": [m[3] for m in mail],
            "direction": [m[0] for m in mail],
            "sent_at": [datetime(2026, 1 + m[1], 15, tzinfo=UTC) for m in mail],
            "list_id": ["<l>" if m[2] else None for m in mail],
            "list_unsubscribe": [None] * len(mail),
            "precedence": [None] * len(mail),
            "auto_submitted": [None] * len(mail),
        },
        schema={
            "_mid": pl.UInt32,
            **dict.fromkeys(["account_id", "message_id", "thread_id", "direction"], pl.String),
            "sent_at": pl.Datetime("us", "UTC"),
            **dict.fromkeys(["list_id", "list_unsubscribe", "precedence"], pl.String),
            "auto_submitted": pl.String,
        },
    )
    rows = [
        (i, f"m{i}", role, email, email, "Name", valid, email.endswith("@team.io"))
        for i, m in enumerate(mail)
        for role, email, valid in m[4]
    ]
    parts = pl.DataFrame(
        rows,
        schema={
            "_mid": pl.UInt32,
            "message_id": pl.String,
            "role": pl.String,
            "canonical_key": pl.String,
            "email": pl.String,
            "name": pl.String,
            "valid": pl.Boolean,
            "internal": pl.Boolean,
        },
        orient="row",
    ).with_columns(account_id=pl.lit("acc_a"))
    if gap and msgs.height:  # the last message was not taken (blocked, say)
        msgs = msgs.head(-1)
    blocked = pl.DataFrame({"account_id": ["acc_a"], "thread_id": ["t2"]})
    toggles = pl.DataFrame(
        {
            "enabled": [False, True] if erc_off else [],
            "at": [datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)]
            if erc_off
            else [],
        },
        schema={"enabled": pl.Boolean, "at": pl.Datetime("us", "UTC")},
    )

    def candidates(with_mid: bool) -> pl.DataFrame:
        m, p = (msgs, parts) if with_mid else (msgs.drop("_mid"), parts.drop("_mid"))
        return person_candidates(
            m.lazy(), p.lazy(), blocked.lazy(), erc_off_intervals(toggles)
        ).collect()

    fast, plain = candidates(True), candidates(False)
    assert_frame_equal(fast, plain, check_row_order=False)
    assert "noreply@x.com" not in fast["email"].to_list()
