"""Where a rebuild spends its time, by line of project code.

The transforms build Polars LazyFrames and collect them; DuckDB and Great Expectations
do their work inside single calls. A sampling profiler charges all of that native
time to whichever Python function called `collect()`, which for a lazy pipeline is
mostly `build` itself. `SiteTimer` instead wraps the few entry points that run native
work (LazyFrame collect, eager DataFrame ops that collect, `to_pandas`, DuckDB
`execute`, GX `Batch.validate`) and charges each call's wall time to the line of
project code that made it (file:line function), counting nested calls once.
"""

from __future__ import annotations

import ast
import functools
import linecache
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("transforms", "expectations", "warehouse", "flows", "connectors")


def prime_sources() -> None:
    """Cache the source of every imported project module now.

    Line numbers come from the code that was imported; reading the files later could
    label them with someone's newer edits.
    """
    roots = tuple(str(REPO / p) + "/" for p in PROJECT)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(roots) and path.endswith(".py"):
            _source(path)
            _statements(path)


@functools.cache
def _source(path: str) -> tuple[str, ...]:
    return tuple(linecache.getlines(path))


def _line(path: str, line: int) -> str:
    lines = _source(path)
    return lines[line - 1] if 0 < line <= len(lines) else ""


_PARSING = threading.Lock()


@functools.cache
def _statements(path: str) -> list[tuple[int, int]]:
    """(first line, last line) of every statement in a source file."""
    try:
        with _PARSING:  # (CPython 3.11's parser is not safe in two threads at once)
            tree = ast.parse("".join(_source(path)))
    except (OSError, SyntaxError, ValueError):
        return []
    return [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.stmt)
    ]


def _statement_start(path: str, line: int) -> int:
    """First line of the innermost statement around `line` (a chained `.collect()` call
    is charged to the assignment that starts it)."""
    spans = [(a, b) for a, b in _statements(path) if a <= line <= b]
    return min(spans, key=lambda ab: ab[1] - ab[0])[0] if spans else line


class SiteTimer:
    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}  # site -> [seconds, calls]
        self._local = threading.local()
        self._roots = tuple(str(REPO / p) + "/" for p in PROJECT)

    def _site(self, kind: str) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(self._roots):
                rel = Path(path).relative_to(REPO)
                line = _statement_start(path, frame.f_lineno)
                code = _line(path, line).strip()[:48]
                return f"{rel}:{line} {frame.f_code.co_name} [{kind}] {code}"
            frame = frame.f_back
        return f"(outside project code) [{kind}]"

    def wrap(self, fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        timer = self

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(timer._local, "depth", 0)
            if depth:
                return fn(*args, **kwargs)
            site = timer._site(kind)
            timer._local.depth = 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timer._local.depth = 0
                entry = timer.totals.setdefault(site, [0.0, 0])
                entry[0] += time.perf_counter() - t0
                entry[1] += 1

        return timed

    def by_engine(self) -> dict[str, float]:
        """Calls and seconds per engine ("polars_calls", "polars_s", "duckdb_calls", ...):
        each site's label ends its first part with the "[engine]" `_site` gave it."""
        out: dict[str, float] = {}
        for site, (seconds, calls) in self.totals.items():
            engine = site.partition("[")[2].partition("]")[0] or "other"
            out[f"{engine}_calls"] = out.get(f"{engine}_calls", 0) + calls
            out[f"{engine}_s"] = out.get(f"{engine}_s", 0.0) + seconds
        return out

    def ranked(self, wall: float, top: int = 25) -> list[dict[str, Any]]:
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1][0])[:top]
        out = [
            {
                "site": site,
                "seconds": round(secs, 3),
                "calls": calls,
                "share": round(secs / wall, 3) if wall else None,
            }
            for site, (secs, calls) in rows
        ]
        covered = sum(v[0] for v in self.totals.values())
        out.append(
            {
                "site": "(python between native calls)",
                "seconds": round(max(wall - covered, 0.0), 3),
                "calls": None,
                "share": round(max(wall - covered, 0.0) / wall, 3) if wall else None,
            }
        )
        return out


class _Connection:
    """A DuckDB connection whose execute/sql calls are timed."""

    def __init__(self, con: Any, timer: SiteTimer) -> None:
        self._con = con
        self.execute = timer.wrap(con.execute, "duckdb")
        self.sql = timer.wrap(con.sql, "duckdb")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()


@contextmanager
def timed_sites() -> Iterator[SiteTimer]:
    """Patch the native entry points for the duration of the block."""
    import duckdb
    import polars as pl

    timer = SiteTimer()
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, kind: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        patches.append((owner, name, original))
        setattr(owner, name, timer.wrap(original, kind))

    patch(pl.LazyFrame, "collect", "polars")
    patch(pl.LazyFrame, "_collect_eager", "polars")
    patch(pl.DataFrame, "to_pandas", "to_pandas")
    try:
        from great_expectations.datasource.fluent.interfaces import Batch

        patch(Batch, "validate", "gx")
    except ImportError:
        pass
    original_connect = duckdb.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        return _Connection(original_connect(*args, **kwargs), timer)

    duckdb.connect = connect
    try:
        yield timer
    finally:
        duckdb.connect = original_connect
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
