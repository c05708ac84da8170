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

A third says where the CPU went: `thread_cpu` splits the process's CPU time by thread
group (the build's own thread, Polars' workers, each DuckDB file's workers, the writer,
the lookups), which a profile of the calling thread alone cannot show.
"""

from __future__ import annotations

import ctypes
import functools
import re
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEDSTAT = Path("/proc/thread-self/schedstat")
CPUINFO = Path("/proc/cpuinfo")
TASKS = Path("/proc/self/task")
PR_SET_NAME = 15  # prctl: the calling thread's name in the kernel (15 bytes)
MAIN_GROUP = "main"
SAMPLER = "cpu-sampler"


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


def thread_group(name: str) -> str:
    """The group of a thread's kernel name: the name without its pool and worker numbers
    ("delta-writer_0" -> "delta-writer", "polars-1" -> "polars")."""
    return re.sub(r"[-_]\d+", "", name).strip() or name


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # (the loaded C library: no lookup, no ldconfig)


def _set_kernel_name(name: str) -> None:
    _libc().prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _kernel_name() -> str:
    return Path("/proc/thread-self/comm").read_text().strip()


def _start_time(stat: str) -> str:
    return stat[stat.rindex(")") + 2 :].split()[19]  # (field 22 of stat)


def read_tasks() -> dict[tuple[int, str], tuple[str, float]]:
    """Every thread of this process now: (tid, start time) -> (kernel name, seconds on a
    core). A thread that ends meanwhile is skipped."""
    out = {}
    for task in TASKS.iterdir():
        try:
            stat = (task / "stat").read_text()
            run_s, _ = parse_schedstat((task / "schedstat").read_text())
        except (OSError, ValueError):
            continue
        out[(int(task.name), _start_time(stat))] = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            run_s,
        )
    return out


class _EndedThreads:
    """Python threads that ended in a `thread_cpu` block: their CPU seconds by group, and
    their keys (tid, start time), which the readings of /proc must not count again."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.keys: set[tuple[int, str]] = set()
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        key = (threading.get_native_id(), _start_time(Path("/proc/thread-self/stat").read_text()))
        with self._lock:
            group = thread_group(name[:15])
            self.cpu[group] = self.cpu.get(group, 0.0) + time.thread_time()
            self.keys.add(key)


def _name_python_threads(ended: _EndedThreads) -> Callable[[], None]:
    """Make each Python thread started from now on take its name in the kernel and hand
    its CPU time to `ended` as it ends; returns the undo."""
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap_inner(self: threading.Thread) -> None:
        _set_kernel_name(self.name)
        try:
            original(self)
        finally:
            if self.name != SAMPLER:
                ended.add(self.name)

    threading.Thread._bootstrap_inner = bootstrap_inner  # type: ignore[attr-defined]

    def restore() -> None:
        threading.Thread._bootstrap_inner = original  # type: ignore[attr-defined]

    return restore


@contextmanager
def thread_cpu(interval_s: float = 0.01) -> Iterator[dict[str, float]]:
    """CPU seconds per thread group over the block, the largest first (Linux; empty
    elsewhere).

    Python threads started in the block take their names in the kernel too, and their
    CPU is taken as they end; threads started by native code (DuckDB's workers, Polars'
    pool) are read every `interval_s` from /proc. DuckDB's workers carry the name of the
    thread that opened their database ("open-live": the published file's, "delta-writer":
    the run's copy). The thread that enters the block is "main". What native threads
    that ended between two readings did last is "(ended, unread)".
    """
    out: dict[str, float] = {}
    if not TASKS.is_dir():
        yield out
        return
    ended = _EndedThreads()
    restore = _name_python_threads(ended)
    main_name = _kernel_name()
    _set_kernel_name(MAIN_GROUP)
    first = read_tasks()
    latest = dict(first)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            latest.update(read_tasks())

    cpu0 = process_cpu_s()
    sampler = threading.Thread(target=sample, name=SAMPLER, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()  # (then the last reading is this thread's alone)
        latest.update(read_tasks())
        cpu = process_cpu_s() - cpu0
        restore()
        _set_kernel_name(main_name)
        groups = dict(ended.cpu)
        for key, (name, run_s) in latest.items():
            if key not in ended.keys and name != SAMPLER:
                group = thread_group(name)
                groups[group] = groups.get(group, 0.0) + run_s - first.get(key, (name, 0.0))[1]
        sampler_s = sum(run_s for name, run_s in latest.values() if name == SAMPLER)
        out.update(sorted(((g, t) for g, t in groups.items() if t > 0), key=lambda x: -x[1]))
        out["(ended, unread)"] = max(cpu - sum(groups.values()) - sampler_s, 0.0)
