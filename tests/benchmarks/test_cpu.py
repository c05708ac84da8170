"""benchmarks.cpu: the CPU-use arithmetic, and one real measurement."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from benchmarks.cpu import (
    cpu_figures,
    cpu_use,
    parse_cpuinfo,
    parse_schedstat,
    thread_cpu,
    thread_group,
)
from benchmarks.profiling import SiteTimer
from benchmarks.run import errors_in, first_ever, machine_line


def test_schedstat_is_read_as_seconds_running_and_waiting() -> None:
    assert parse_schedstat("123000000 45000000 7\n") == pytest.approx((0.123, 0.045))


def test_the_thread_blocked_for_what_it_neither_ran_nor_waited() -> None:
    figures = cpu_figures(1.0, 1.6, before=(2.0, 0.5), after=(2.3, 0.6))
    assert figures["cores_busy"] == pytest.approx(1.6)
    assert figures["main_running_s"] == pytest.approx(0.3)
    assert figures["main_waiting_for_core_s"] == pytest.approx(0.1)
    assert figures["main_blocked_s"] == pytest.approx(0.6)


def test_blocked_time_is_never_negative() -> None:
    # (the clocks are read microseconds apart: running can exceed the wall time a little)
    assert cpu_figures(0.1, 0.1, (0.0, 0.0), (0.1001, 0.0))["main_blocked_s"] == 0.0


def test_without_thread_statistics_only_the_process_figures_are_given() -> None:
    assert set(cpu_figures(2.0, 3.0, None, None)) == {"wall_s", "cpu_s", "cores_busy"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_a_thread_that_waits_for_another_is_counted_blocked_and_the_other_thread_s_cpu_counts() -> (
    None
):
    def spin(seconds: float) -> None:
        import time

        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    with cpu_use() as cpu:
        spin(0.05)  # this thread runs ...
        worker = threading.Thread(target=spin, args=(0.1,))
        worker.start()
        worker.join()  # ... then blocks while another thread runs
    assert cpu["cpu_s"] >= 0.14  # both threads' CPU
    assert cpu["main_running_s"] >= 0.04
    assert cpu["main_running_s"] < 0.1  # (it did not run during the join)
    assert cpu["main_blocked_s"] >= 0.05
    total = cpu["main_running_s"] + cpu["main_waiting_for_core_s"] + cpu["main_blocked_s"]
    assert total == pytest.approx(cpu["wall_s"], abs=0.01)


CPUINFO = """processor\t: 0
model name\t: AMD EPYC
cpu MHz\t\t: 1996.249

processor\t: 1
model name\t: AMD EPYC
cpu MHz\t\t: 2003.751
"""


def test_the_processor_and_its_mean_clock_are_read_from_cpuinfo() -> None:
    assert parse_cpuinfo(CPUINFO) == {"cpu_model": "AMD EPYC", "cpu_mhz": 2000}
    # (an ARM machine's cpuinfo names no model and gives no clock)
    assert parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n") == {
        "cpu_model": None,
        "cpu_mhz": None,
    }


def test_the_bench_names_the_machine_it_ran_on() -> None:
    meta = {"cpu_model": "AMD EPYC", "cpu_mhz": 2000, "cpus": 2, "python": "3.11.7"}
    line = machine_line({**meta, "platform": "Linux-6.18-x86_64"})
    assert line == "machine: AMD EPYC at 2000 MHz, 2 cores, Python 3.11.7, Linux-6.18-x86_64"
    assert machine_line({}).startswith("machine: processor unknown, ? cores")


def test_a_bench_finds_every_part_that_failed() -> None:
    # (make bench exits 1 when any is found: a size whose worker died is no figure)
    results = {
        "sizes": [{"messages": 10, "rebuild_s": 0.5}, {"error": "worker rebuild exited with 1"}],
        "extraction": {"gmail": {"error": "quota"}, "graph": {"ratio": 0.98}},
        "prefect": {"error": None},
    }
    assert errors_in(results) == ["worker rebuild exited with 1", "quota"]
    assert errors_in({"sizes": [{"messages": 10}], "prefect": {}}) == []


def test_a_first_prefect_run_that_failed_says_why_instead_of_a_number() -> None:
    assert first_ever({"first_ever_flow_s": 28.71}) == "28.7s"
    failed = {"first_ever_error": "worker prefect-init exited with 1"}
    assert first_ever(failed) == "failed (worker prefect-init exited with 1)"
    assert first_ever({}) == "?"


def test_native_calls_are_summed_per_engine() -> None:
    timer = SiteTimer()
    timer.totals = {
        "transforms/a.py:10 f [polars] x.collect()": [0.5, 3],
        "transforms/b.py:20 g [polars] y.join(z)": [0.25, 2],
        "warehouse/delta.py:5 h [duckdb] cur.sql(q)": [0.125, 1],
        "(outside project code) [polars]": [0.0625, 1],
    }
    assert timer.by_engine() == {
        "polars_calls": 6,
        "polars_s": 0.8125,
        "duckdb_calls": 1,
        "duckdb_s": 0.125,
    }


def test_threads_are_grouped_by_name_without_their_pool_and_worker_numbers() -> None:
    assert thread_group("delta-writer_0") == "delta-writer"
    assert thread_group("polars-1") == "polars"
    assert thread_group("lookups_1") == "lookups"
    assert thread_group("main") == "main"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_cpu_is_split_by_thread_python_threads_by_name_native_ones_as_read() -> None:
    import numpy as np
    import polars as pl

    def spin(seconds: float) -> None:
        import time

        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    name_before = Path("/proc/thread-self/comm").read_text()
    frame = pl.DataFrame({"x": np.random.default_rng(1).random(4_000_000)})
    with thread_cpu(interval_s=0.005) as cpu:
        spin(0.05)
        worker = threading.Thread(target=spin, args=(0.1,), name="spinner_0")
        worker.start()
        worker.join()
    assert cpu["spinner"] == pytest.approx(0.1, abs=0.02)  # taken as the thread ended
    assert 0.04 <= cpu["main"] < 0.1  # (it did not run while it waited)
    assert "cpu-sampler" not in cpu
    if pl.thread_pool_size() > 1:  # (on one core Polars may sort on the calling thread)
        with thread_cpu(interval_s=0.005) as native:
            for _ in range(3):  # Polars' pool: native threads, named polars-N by Polars
                frame.sort("x")
        assert native["polars"] > 0.02
    groups = [seconds for group, seconds in cpu.items() if group != "(ended, unread)"]
    assert groups == sorted(groups, reverse=True)
    # undone: new threads are plain again, and this thread has its name back
    assert threading.Thread._bootstrap_inner is bootstrap  # type: ignore[attr-defined]
    assert Path("/proc/thread-self/comm").read_text() == name_before
