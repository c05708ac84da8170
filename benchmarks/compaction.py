"""What compaction buys: the transform on a lake of many small delta files, before and after.

.venv/bin/python -m benchmarks.compaction [--messages 100000] [--chunk 100]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.land import land_workspace, setup_home
from connectors.compact import file_count
from connectors.simulators.synthetic import generate_workspace
from flows.engine import compact_lake, workspace_frames
from transforms.pipeline import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=100, help="messages per landed file")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="rapport-compaction-"))
    try:
        when = datetime(2026, 12, 1, tzinfo=UTC)
        ws = generate_workspace(args.messages, seed=7)
        home, accounts = setup_home(ws, root, connected_at=when)
        land_workspace(ws, home.lake, accounts, now=when, chunk_rows=args.chunk, calendars=False)
        frames = workspace_frames(home.load(), when)
        files = sum(file_count(home.lake, a) for a in accounts.values())
        t0 = time.perf_counter()
        before = build(home.lake, frames)
        small = time.perf_counter() - t0
        t0 = time.perf_counter()
        compact_lake(home, min_files=0)
        took = time.perf_counter() - t0
        after_files = sum(file_count(home.lake, a) for a in accounts.values())
        t0 = time.perf_counter()
        after = build(home.lake, frames)
        big = time.perf_counter() - t0
        print(
            f"{args.messages:,} messages in {files:,} files -> {after_files} files "
            f"(compaction {took:.2f} s)"
        )
        print(
            f"transform {small:.2f} s -> {big:.2f} s; reading current state "
            f"{before.timings['load_current']:.2f} s -> {after.timings['load_current']:.2f} s"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
