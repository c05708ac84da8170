"""How busy a timed run kept the machine, and what its calling thread did meanwhile.

Two figures say whether a run can get faster by overlapping more or only by doing
less work:
- the process's CPU time (every thread's, DuckDB's and Polars' workers included)
  over the wall time: "cores busy". Near the core count, the run is CPU-bound;
- how the calling thread (the one that runs the build and waits for the publish)
  spent the wall time, from the kernel's per-thread scheduler statistics: running,
  runnable but waiting for a core, or blocked (waiting for Polars' thread pool, a
  DuckDB query in another thread, the writer, or I/O).

The thread figures come from /proc/thread-self/schedstat (Linux); elsewhere they are
left out and only the process figures are reported.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEDSTAT = Path("/proc/thread-self/schedstat")
CPUINFO = Path("/proc/cpuinfo")


def parse_schedstat(text: str) -> tuple[float, float]:
    """(seconds on a core, seconds runnable but waiting for one) from a schedstat line:
    "<run ns> <wait ns> <timeslices>"."""
    run_ns, wait_ns, _slices = text.split()
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def thread_times() -> tuple[float, float] | None:
    """This thread's (running, waiting for a core) seconds so far, or None off Linux."""
    try:
        return parse_schedstat(SCHEDSTAT.read_text())
    except (OSError, ValueError):
        return None


def process_cpu_s() -> float:
    """User plus system CPU seconds of every thread of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_figures(
    wall_s: float,
    cpu_s: float,
    before: tuple[float, float] | None,
    after: tuple[float, float] | None,
) -> dict[str, float]:
    """The figures of one run from its wall time, its process CPU time and the calling
    thread's (running, waiting) before and after it."""
    out = {"wall_s": wall_s, "cpu_s": cpu_s, "cores_busy": cpu_s / wall_s if wall_s else 0.0}
    if before is not None and after is not None:
        running, waiting = after[0] - before[0], after[1] - before[1]
        out["main_running_s"] = running
        out["main_waiting_for_core_s"] = waiting
        # (the clocks are read a few microseconds apart: never below zero)
        out["main_blocked_s"] = max(wall_s - running - waiting, 0.0)
    return out


@contextmanager
def cpu_use() -> Iterator[dict[str, Any]]:
    """Measure the block: the yielded dict gets `cpu_figures` when the block ends."""
    out: dict[str, Any] = {}
    before, cpu0, t0 = thread_times(), process_cpu_s(), time.perf_counter()
    yield out
    wall, cpu = time.perf_counter() - t0, process_cpu_s() - cpu0
    out.update(cpu_figures(wall, cpu, before, thread_times()))


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The processor's model and its clock (MHz, the mean over the cores listed) from
    /proc/cpuinfo: machines of one size differ in speed (benches of the same code on two
    2-core machines took 4.75 and 9.30 s), so each bench names its processor."""
    models, clocks = [], []
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name == "model name":
            models.append(value)
        elif name == "cpu MHz":
            try:
                clocks.append(float(value))
            except ValueError:
                pass
    out: dict[str, Any] = {"cpu_model": models[0] if models else None}
    out["cpu_mhz"] = round(sum(clocks) / len(clocks)) if clocks else None
    return out


def machine() -> dict[str, Any]:
    """`parse_cpuinfo` of this machine (None for both off Linux)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        return {"cpu_model": None, "cpu_mhz": None}
