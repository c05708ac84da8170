"""benchmarks.profiling: `make bench --profile` times a real incremental run by call site."""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks.profiling import timed_sites
from flows.engine import build_and_publish, new_run_id
from tests.flows.test_incremental import ALICE, HISTORY, publish, sandbox_home
from tests.mailbox import AS_OF, Mail


def test_an_incremental_run_publishes_through_wrapped_connections_and_is_timed_by_site(
    tmp_path,
) -> None:
    # The timer wraps every DuckDB connection and Polars' collect: the run must work the
    # same through the wrappers (a frame that DuckDB looked up by the caller's variable
    # name once failed there), and each call is counted where project code made it.
    box, home = sandbox_home(tmp_path)
    box.land(ALICE, HISTORY)
    publish(home, AS_OF)
    box.land(ALICE, [Mail("d1", "ann@globex.com", [ALICE], at="2026-06-01T12:00:00")])
    with timed_sites() as timer:
        out = build_and_publish(home, new_run_id(), AS_OF, [], datetime.now(UTC))
    assert (out.mode, out.status) == ("incremental", "published"), out.failures
    sites = timer.totals
    assert any(s.startswith("warehouse/publish.py") and "[duckdb]" in s for s in sites)
    assert any(s.startswith("transforms/incremental.py") and "[polars]" in s for s in sites)
    counts = timer.by_engine()
    assert counts["duckdb_calls"] > 0 and counts["polars_calls"] > 0
