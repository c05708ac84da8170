"""Lake compaction changes no published table, and survives a crash half-way."""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq
import pytest

import connectors.compact as compact
from connectors import lake
from connectors.simulators.google import GoogleSimulator
from flows.engine import compact_lake
from flows.workspace import Home
from tests.mailbox import assert_same_warehouse, connect, run_pipeline, sim_mail, snapshot

ALICE = "alice@acme-team.io"


class Crash(BaseException):
    """A process death mid-compaction."""


def grow(sim: GoogleSimulator, home: Home, rounds: int) -> None:
    """Several syncs with adds, deletes and label changes: many small delta files."""
    box = sim.mailbox(ALICE)
    for r in range(rounds):
        box.add_messages(
            [
                sim_mail(
                    100 * r + k,
                    f"<{ALICE}>",
                    [f"c{k}@globex.com"],
                    labels=["SENT"],
                    at=f"2026-0{1 + r % 5}-1{k}T10:00:00",
                )
                for k in range(1, 6)
            ]
        )
        if r:
            box.delete_message(f"{100 * (r - 1) + 1:016x}")
            box.modify_labels(f"{100 * (r - 1) + 2:016x}", add=["STARRED"])
        run_pipeline(home)


@pytest.mark.parametrize("crash", [False, True])
def test_compaction_keeps_the_warehouse_and_shrinks_the_lake(tmp_path, monkeypatch, crash):
    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        acc = connect(home, sim, ALICE).account_id
        grow(sim, home, 4)
        before = snapshot(home.warehouse)
        files_before = compact.file_count(home.lake, acc)
        assert files_before > 6
        if crash:
            real = compact.finish_pending
            calls = {"n": 0}

            def dying(lake_dir, real=real, calls=calls):
                calls["n"] += 1
                if calls["n"] == 2:  # the manifest is written, nothing applied yet
                    raise Crash("power cut")
                return real(lake_dir)

            monkeypatch.setattr(compact, "finish_pending", dying)
            with pytest.raises(Crash):
                compact_lake(home, min_files=0)
            monkeypatch.setattr(compact, "finish_pending", real)
            assert list((home.lake / ".compaction").glob("*.json")), "a manifest was left"
        else:
            compact_lake(home, min_files=0)
        run_pipeline(home)  # finishes any pending compaction first, then rebuilds
        assert_same_warehouse(before, snapshot(home.warehouse))
        assert compact.file_count(home.lake, acc) < files_before
        assert len(lake.glob(home.lake, "messages", [acc])) == 1
        assert not list((home.lake / ".compaction").glob("*.json"))
        # and the cursor still works: new mail after compaction lands incrementally
        sim.mailbox(ALICE).add_messages(
            [sim_mail(999, f"<{ALICE}>", ["new@globex.com"], labels=["SENT"])]
        )
        results, _ = run_pipeline(home)
        gmail = [r for r in results if r.stream == "gmail"][0]
        assert (gmail.mode, gmail.landed) == ("incremental", 1)


def test_compaction_hashes_the_content_of_files_landed_before_the_hash(tmp_path):
    """A lake landed before the content hash (its files without the column) comes out of
    compaction with the hashes the connectors would have landed: later re-landings of
    its mail are then told unchanged by hash."""
    with GoogleSimulator() as sim:
        home = Home(tmp_path / "data")
        acc = connect(home, sim, ALICE).account_id
        grow(sim, home, 3)
        files = lake.glob(home.lake, "messages", [acc])

        def live_hashes() -> pl.DataFrame:
            rows = lake.scan(lake.glob(home.lake, "messages", [acc]), "messages")
            return (
                rows.sort("version", "seq")
                .unique("message_id", keep="last")
                .filter(pl.col("op") == "upsert")
                .select("message_id", "content_hash")
                .sort("message_id")
                .collect()
            )

        landed = live_hashes()
        assert landed.height > 5 and landed["content_hash"].null_count() == 0
        for path in files:  # as an older Rapport landed them
            pq.write_table(pq.read_table(path).drop_columns(["content_hash"]), path)
        assert live_hashes()["content_hash"].null_count() == landed.height
        compact_lake(home, min_files=0)
        assert len(lake.glob(home.lake, "messages", [acc])) == 1
        assert live_hashes().equals(landed)
