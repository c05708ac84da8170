"""Random sequences of imports, blocklist adds/removes, setting toggles and re-syncs.

After every step: no blocklisted address is in `messages` of that account, the set of
person ids only grows, and re-running the step changes nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from connectors.purge import purge_blocklisted
from flows.engine import workspace_frames
from tests.mailbox import AS_OF, Mail, Sandbox
from transforms.addresses import normalise_address
from transforms.pipeline import normalise_blocklist

ALICE = "alice@acme-team.io"
POOL = [
    "ann@globex.com",
    "bo@globex.com",
    "cy@eu.initech.co.uk",
    "di@gmail.com",
    "ed@umbrella.io",
    "Fay@Umbrella.io",
]
ENTRIES = [
    ("ann@globex.com", "address"),
    ("globex.com", "domain"),
    ("initech.co.uk", "domain"),
    ("di@gmail.com", "address"),
]

mail = st.tuples(
    st.booleans(),
    st.sampled_from(POOL),
    st.sampled_from(POOL),
    st.integers(1, 12),
    st.integers(0, 3),
)
step = st.one_of(
    st.tuples(st.just("import"), st.lists(mail, min_size=1, max_size=4)),
    st.tuples(st.just("block"), st.sampled_from(ENTRIES)),
    st.tuples(st.just("unblock"), st.sampled_from(ENTRIES)),
    st.tuples(st.just("erc"), st.booleans()),
    st.tuples(st.just("resync"), st.none()),
)


def blocked(addr: str, entries: set[tuple[str, str]]) -> bool:
    norm = normalise_address(addr)
    domain = norm.split("@")[1]
    return any(
        (k == "address" and normalise_address(e) == norm)
        or (k == "domain" and (domain == e or domain.endswith("." + e)))
        for e, k in entries
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_sequences_keep_the_record_invariants(steps):
    with tempfile.TemporaryDirectory() as d:
        sb = Sandbox(Path(d))
        acc = sb.account(ALICE)
        landed: list[Mail] = []
        entries: set[tuple[str, str]] = set()
        previous = None
        counter = 0
        for kind, arg in steps:
            if kind == "import":
                batch = []
                for sent, a, b, month, thread in arg:
                    counter += 1
                    at = f"2026-{month:02d}-01T09:00:00" if month <= 5 else "2026-05-20T09:00:00"
                    m = (
                        Mail(
                            f"m{counter}",
                            ALICE,
                            [a],
                            cc=[b],
                            labels=["SENT"],
                            at=at,
                            thread=f"t{thread}",
                        )
                        if sent
                        else Mail(f"m{counter}", a, [ALICE], cc=[b], at=at, thread=f"t{thread}")
                    )
                    batch.append(m)
                sb.land(ALICE, batch)
                landed += batch
            elif kind == "block" and arg not in entries:
                entries.add(arg)
                sb.block(ALICE, *arg)
                frames = workspace_frames(sb.ws, AS_OF)
                purge_blocklisted(sb.lake, acc, normalise_blocklist(frames.blocklist))
            elif kind == "unblock" and arg in entries:
                entries.discard(arg)
                sb.ws.blocklist = [b for b in sb.ws.blocklist if (b.entry, b.kind) != arg]
                sb.land(ALICE, landed)  # the re-fetch of what was purged
            elif kind == "erc":
                sb.ws.enhanced_record_creation.append(
                    {
                        "enabled": arg,
                        "at": f"2026-0{1 + len(sb.ws.enhanced_record_creation) % 5}"
                        "-15T00:00:00+00:00",
                    }
                )
                sb.ws.enhanced_record_creation.sort(key=lambda t: t["at"])
            staged = sb.build(previous=previous)
            # 1. no blocklisted address in messages
            msgs = staged.tables["messages"]
            shown = (
                msgs.select(pl.concat_list("from_email", "to_emails", "cc_emails").alias("a"))
                .explode("a")["a"]
                .drop_nulls()
                .to_list()
            )
            assert not [a for a in shown if blocked(a, entries)]
            # 2. person ids only grow
            ids = set(staged.tables["people"]["person_id"].to_list())
            if previous is not None:
                assert set(previous.tables["people"]["person_id"].to_list()) <= ids
            # 3. re-running the step changes nothing
            again = sb.build(previous=staged)
            for name in ("people", "companies", "messages", "interactions", "person_merges"):
                a, b = again.tables[name], staged.tables[name]
                cols = [c for c, t in a.schema.items() if not isinstance(t, pl.List)]
                assert_frame_equal(a.sort(cols, nulls_last=True), b.sort(cols, nulls_last=True))
            previous = staged
