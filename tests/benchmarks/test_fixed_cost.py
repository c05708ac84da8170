"""The bench's figures for what a run costs whatever its delta: a delta of a few
messages, and the copy of the published file every incremental publish makes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest

from benchmarks.run import copy_floor, derive, first_messages
from connectors.simulators.synthetic import generate_workspace


def test_a_few_messages_are_cut_from_a_delta_with_their_participants_only() -> None:
    ws = generate_workspace(300, seed=3)
    assert ws.events.height  # (else the test could not see events dropped)
    ids = ws.messages["message_id"].unique(maintain_order=True).head(4)

    few = first_messages(ws, 4)

    assert set(few.messages["message_id"]) == set(ids)
    assert few.messages.height == ws.messages.filter(pl.col("message_id").is_in(ids)).height
    expected_parts = ws.participants.filter(pl.col("message_id").is_in(ids))
    assert few.participants.sort(pl.all()).equals(expected_parts.sort(pl.all()))
    assert few.events.is_empty() and few.events.schema == ws.events.schema
    assert few.attendees.is_empty() and few.attendees.schema == ws.attendees.schema


def test_the_copy_floor_copies_and_fsyncs_the_published_file_and_leaves_no_copy(
    tmp_path: Path,
) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS x FROM range(100000)")
    work = tmp_path / "work"
    work.mkdir()

    floor = copy_floor(SimpleNamespace(warehouse=warehouse), work, full_s=2.0, runs=3)

    assert floor["bytes"] == warehouse.stat().st_size > 0
    assert len(floor["runs_s"]) == 3 and all(t > 0 for t in floor["runs_s"])
    assert floor["ratio"] == pytest.approx(floor["copy_s"] / 2.0)
    assert list(work.iterdir()) == []


def test_the_few_messages_run_and_the_copy_floor_are_reported_without_a_target() -> None:
    few = {
        "delta_messages": 10,
        "delta_events": 0,
        "mode": "incremental",
        "fallback_reason": None,
        "stats": {},
        "total_s": 0.5,
        "full_rebuild_s": 10.0,
        "ratio": 0.05,
        "runs_total_s": [0.5, 0.4, 0.6],
    }
    size = {
        "messages": 1_000_000,
        "rebuild_s": 10.0,
        "land_s": 1.0,
        "floor_s": 1.0,
        "rebuild_over_floor": 10.0,
        "peak_rss_gib": 2.0,
        "few": few,
        "copy_floor": {
            "copy_s": 0.7,
            "runs_s": [0.7, 0.6, 0.8],
            "bytes": 250 * 2**20,
            "ratio": 0.07,
        },
    }
    results = {"sizes": [size]}

    derive(results)

    rows = {t["target"]: t for t in results["targets"]}
    assert rows["10 new messages over 1,000,000 (x full)"]["value"] == 0.05
    copy = rows["copy + fsync of the published file, 1,000,000 msgs (x full)"]
    assert copy["value"] == 0.07 and copy["status"] == "n/a"
    assert "0.70s for 250 MiB" in copy["note"]
    assert "a sync with nothing new over 1,000,000 (x full)" not in rows  # (not measured)
