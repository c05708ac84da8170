"""Measure what a change does to the rebuild and the incremental run: `make bench-compare`.

    python -m benchmarks.compare BASE [--messages 1m] [--pairs 4] [--incremental]

The bench's ratios move by +-10% between runs of the same code on a noisy 2-core machine
(its floor alone ranged 0.27-0.33 s in one day), so they cannot show a change worth
0.1-0.2 s. This compares two revisions of the code on one landed lake instead:

- BASE (any git revision) is checked out in a temporary worktree; the other side is
  this working tree, uncommitted edits included.
- One lake is generated and landed once, by this tree's code, and a 1,000-message delta
  is landed beside it (`--incremental`), with the 1,000 other messages of the sync each
  side publishes before it (the bench's steady stream of syncs: run.previous_sync).
- Each sample is a fresh process that imports one side's code (its root first on
  `sys.path`; the sample reports the file it imported, and a sample that imported the
  other side's code is an error), copies the lake and runs `build_and_publish`, the
  call a sync makes. Sides alternate A B, B A, ... so a drifting machine weighs on both.
- Reported per side: the median and range of wall time, CPU, peak RSS, page faults and
  the stage timings; per pair, new minus base; and in how many pairs the new side was
  faster. JSON goes to `--json`.

The lake is written by this tree's code: a BASE that cannot read it fails its samples
(the error is shown), as does a BASE older than `flows.engine.build_and_publish`. Both
sides run in this tree's virtualenv, so a BASE that needs other package versions is
measured with these.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREVIOUS_DELTA = "previous-delta"  # the lake files of the sync before the measured one

# One sample: runs in a fresh interpreter whose sys.path starts at the side's root, so it
# uses only build_and_publish and Home, which every revision the tool compares has.
SAMPLE = r"""
import json, os, resource, shutil, sys, time
from datetime import UTC, datetime
from pathlib import Path

source, work, as_of, incremental, delta = sys.argv[1:6]
shutil.rmtree(work, ignore_errors=True)
shutil.copytree(source, work)
if incremental == "0":
    for leftover in Path(work).glob("warehouse.duckdb*"):  # a full rebuild: no warehouse
        leftover.unlink()
else:  # the delta's lake files, as a sync lands them before its build
    shutil.copytree(delta, Path(work) / "lake", dirs_exist_ok=True)
os.sync()  # else the run's fsyncs also flush the copy just made (ext4)

import logging
for name in ("great_expectations", "great_expectations.data_context.types.base"):
    logging.getLogger(name).setLevel(logging.ERROR)
import great_expectations, great_expectations.expectations  # the gate's imports
import expectations.suites, transforms.pipeline, warehouse.publish
from flows.engine import build_and_publish, new_run_id
from flows.workspace import Home

def peak_kib():
    # This process's own peak: ru_maxrss also counts the parent's resident set at fork,
    # which Linux carries across exec; VmHWM belongs to the memory map exec made.
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
res = build_and_publish(
    Home(Path(work)), new_run_id(), datetime.fromisoformat(as_of), [], datetime.now(UTC),
    incremental=incremental == "1",
)
wall = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "status": res.status,
    "mode": res.mode,
    "rows_published": res.rows_published,
    "wall_s": wall,
    "user_s": after.ru_utime - before.ru_utime,
    "sys_s": after.ru_stime - before.ru_stime,
    "peak_rss_gib": peak_kib() / 2**20,
    "minor_faults": after.ru_minflt - before.ru_minflt,
    "timings": res.timings,
    "stats": res.stats,
    "code": transforms.pipeline.__file__,
}))
"""

# Figures summarised per side, in the order shown.
FIGURES = ("wall_s", "user_s", "sys_s", "peak_rss_gib", "minor_faults")
STAGES = ("transform_s", "validate_s", "publish_s")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def resolve(rev: str) -> str:
    """The commit `rev` names (a clear error if git cannot resolve it)."""
    try:
        return run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO).stdout.strip()
    except subprocess.CalledProcessError as exc:
        msg = f"not a revision of this repository: {rev} ({exc.stderr.strip()})"
        raise SystemExit(msg) from None


def add_worktree(commit: str, where: Path) -> Path:
    """A detached checkout of `commit`."""
    run(["git", "worktree", "add", "--detach", str(where), commit], cwd=REPO)
    return where


def remove_worktree(where: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=REPO, check=False)
    shutil.rmtree(where, ignore_errors=True)


def prepare(size: int, workdir: Path, seed: int, incremental: bool) -> dict[str, Any]:
    """Land `size` messages into workdir/home (and the delta's files into workdir/delta)."""
    from benchmarks.land import land_workspace, setup_home
    from benchmarks.run import DELTA_MESSAGES, INCREMENTAL_CLOCK_STEP, _dates
    from connectors.simulators.synthetic import generate_delta, generate_workspace

    end, delta_end, as_of = _dates()
    ws = generate_workspace(size, seed=seed)
    home, accounts = setup_home(ws, workdir / "home", connected_at=end)
    counts = land_workspace(ws, home.lake, accounts, now=end)
    out: dict[str, Any] = {"rows": counts, "as_of": as_of.isoformat()}
    if incremental:

        def delta_files(seed: int, folder: str, now: datetime) -> dict[str, int]:
            """Land a delta into a copy, then keep just the files it added."""
            landed = workdir / "landed-delta"
            shutil.copytree(home.root, landed)
            delta = generate_delta(ws, DELTA_MESSAGES, seed=seed, start=end, end=delta_end)
            rows = land_workspace(delta, landed / "lake", accounts, now=now)
            before = {p.relative_to(home.lake) for p in home.lake.rglob("*") if p.is_file()}
            for path in sorted((landed / "lake").rglob("*")):
                rel = path.relative_to(landed / "lake")
                if path.is_file() and rel not in before:
                    (workdir / folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, workdir / folder / rel)
            shutil.rmtree(landed)
            return rows

        out["delta_rows"] = delta_files(seed + 1, "delta", end + timedelta(days=2))
        # The sync before the measured one, as the bench has it (run.previous_sync).
        out["previous_rows"] = delta_files(seed + 2, PREVIOUS_DELTA, end + timedelta(days=1))
        out["incremental_as_of"] = (as_of + INCREMENTAL_CLOCK_STEP).isoformat()
    return out


def prepare_apart(size: int, workdir: Path, seed: int, incremental: bool) -> dict[str, Any]:
    """`prepare` in a process of its own: the samples are forked from this one, and
    should not start next to the gigabytes that generating the lake took."""
    code = (
        "import json, sys; from pathlib import Path; from benchmarks.compare import prepare; "
        "print(json.dumps(prepare(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), "
        "sys.argv[4] == '1'), default=str))"
    )
    args = [str(size), str(workdir), str(seed), "1" if incremental else "0"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, text=True, capture_output=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"landing the lake failed:\n{proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sample(
    root: Path,
    source: Path,
    work: Path,
    as_of: str,
    incremental: bool,
    delta: Path,
    keep: bool = False,
) -> dict[str, Any]:
    """One build of a copy of `source` at `work`, in a fresh process importing the code
    under `root`; the copy is removed unless `keep`."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"}
    args = [str(source), str(work), as_of, "1" if incremental else "0", str(delta)]
    proc = subprocess.run(
        [sys.executable, "-c", SAMPLE, *args],
        cwd=root,
        env=env,
        text=True,
        capture_output=True,
    )
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the sample of {root} failed:\n{tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(out["code"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the sample of {root} imported {out['code']}: not its own code")
    if out["status"] != "published":
        raise RuntimeError(f"the sample of {root} did not publish: {out['status']}")
    if incremental and out["mode"] != "incremental":
        raise RuntimeError(f"the sample of {root} did not run incrementally")
    return out


def figures(s: dict[str, Any]) -> dict[str, float]:
    """The figures of one sample, stage timings included."""
    return {
        **{k: float(s[k]) for k in FIGURES},
        **{k: float(s["timings"].get(k, 0.0)) for k in STAGES},
    }


def summarise(base: list[dict[str, float]], new: list[dict[str, float]]) -> dict[str, Any]:
    """Per figure: each side's median and range, the pairs' new - base differences,
    their median, and in how many pairs new was lower (faster, smaller)."""
    if len(base) != len(new) or not base:
        raise ValueError("need the same, non-zero number of samples on each side")
    out: dict[str, Any] = {}
    for key in base[0]:
        a, b = [s[key] for s in base], [s[key] for s in new]
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        out[key] = {
            "base_median": statistics.median(a),
            "base_range": [min(a), max(a)],
            "new_median": statistics.median(b),
            "new_range": [min(b), max(b)],
            "diffs": diffs,
            "median_diff": statistics.median(diffs),
            "new_lower": sum(d < 0 for d in diffs),
            "pairs": len(diffs),
        }
    return out


def alternate(pairs: int) -> list[tuple[str, str]]:
    """The order of each pair: base first, then new first, and so on."""
    return [("base", "new") if i % 2 == 0 else ("new", "base") for i in range(pairs)]


def measure(
    roots: dict[str, Path],
    source: Path,
    workdir: Path,
    as_of: str,
    pairs: int,
    incremental: bool,
    delta: Path,
    runs: list[dict[str, Any]] | None = None,
    say: Any = print,
) -> dict[str, list[dict[str, float]]]:
    """`pairs` alternating samples of each side (every sample's output also goes to
    `runs`)."""
    samples: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for i, order in enumerate(alternate(pairs), 1):
        for side in order:
            side_source = source / side if incremental else source
            raw = sample(roots[side], side_source, workdir / "sample", as_of, incremental, delta)
            s = figures(raw)
            samples[side].append(s)
            if runs is not None:
                runs.append({"pair": i, "side": side, **raw})
            say(
                f"  pair {i}/{pairs} {side:4s} wall {s['wall_s']:.3f} s  transform "
                f"{s['transform_s']:.3f}  validate {s['validate_s']:.3f}  publish "
                f"{s['publish_s']:.3f}  peak RSS {s['peak_rss_gib']:.2f} GiB"
            )
    return samples


def publish_each(roots: dict[str, Path], workdir: Path, as_of: str) -> Path:
    """A published home per side, for incremental samples: its own code's full build, a
    sync with nothing new, then one with 1,000 other new messages, so each sample starts
    from the state a steady stream of syncs leaves (with a standby, warehouse/standby.py,
    where the side's code keeps one, whose journal is a 1,000-message run's)."""
    out, full, quiet = workdir / "published", workdir / "published-full", workdir / "quiet"
    nothing = workdir / "no-delta"
    nothing.mkdir(exist_ok=True)
    for side, root in roots.items():
        sample(root, workdir / "home", full / side, as_of, False, nothing, keep=True)
        sample(root, full / side, quiet / side, as_of, True, nothing, keep=True)
        sample(root, quiet / side, out / side, as_of, True, workdir / PREVIOUS_DELTA, keep=True)
        shutil.rmtree(full / side, ignore_errors=True)
        shutil.rmtree(quiet / side, ignore_errors=True)
    return out


def table(summary: dict[str, Any]) -> str:
    rows = [f"{'figure':14s} {'base median':>12s} {'new median':>11s} {'new - base':>11s}  lower"]
    for key, f in summary.items():
        fmt = "{:.0f}" if key == "minor_faults" else "{:.3f}"
        rows.append(
            f"{key:14s} {fmt.format(f['base_median']):>12s} {fmt.format(f['new_median']):>11s} "
            f"{fmt.format(f['median_diff']):>11s}  {f['new_lower']}/{f['pairs']}"
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Alternate fresh-process builds of BASE and this working tree on one lake.",
    )
    ap.add_argument("base", help="the git revision to compare against (e.g. HEAD, main~3)")
    ap.add_argument("--messages", default="1m", help="lake size, e.g. 100k or 1m (default 1m)")
    ap.add_argument("--pairs", type=int, default=4, help="alternating pairs (default 4)")
    ap.add_argument(
        "--incremental",
        action="store_true",
        help="also time the 1,000-message incremental run on each side's published home",
    )
    ap.add_argument(
        "--no-full",
        action="store_true",
        help="with --incremental: time only the incremental run (the sides still publish)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default="bench-results/compare.json", help="where to write JSON")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    return ap


def describe_tree() -> str:
    """This tree's commit, marked when it has uncommitted edits."""
    head = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO).stdout.strip()
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO).stdout
    return f"{head}+edits" if dirty.strip() else head


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import parse_sizes

    args = build_parser().parse_args(argv)
    (size,) = parse_sizes([args.messages])
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    if args.no_full and not args.incremental:
        raise SystemExit("--no-full leaves nothing to time without --incremental")
    commit = resolve(args.base)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rapport-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    roots = {"base": add_worktree(commit, workdir / "base-code"), "new": REPO}
    result: dict[str, Any] = {
        "base": f"{args.base} ({commit[:7]})",
        "new": describe_tree(),
        "messages": size,
        "pairs": args.pairs,
        "runs": [],
    }
    try:
        t0 = time.perf_counter()
        print(f"landing {size:,} messages (this tree's code) ...", flush=True)
        prep = result["prepared"] = prepare_apart(size, workdir, args.seed, args.incremental)
        print(f"  landed in {time.perf_counter() - t0:.0f} s", flush=True)
        delta = workdir / "delta"

        def compare(kind: str, source: Path, as_of: str, incremental: bool) -> None:
            samples = measure(
                roots, source, workdir, as_of, args.pairs, incremental, delta, result["runs"]
            )
            result[kind] = summarise(samples["base"], samples["new"])
            print(table(result[kind]), flush=True)

        if not args.no_full:
            print(f"full rebuild: {args.pairs} pairs, base {result['base']}, new {result['new']}")
            compare("full", workdir / "home", prep["as_of"], False)
        if args.incremental:
            print(
                "incremental (1,000 new messages): each side publishes its own home first,"
                " then syncs once with nothing new and once with 1,000 other new messages"
            )
            published = publish_each(roots, workdir, prep["as_of"])
            compare("incremental", published, prep["incremental_as_of"], True)
    finally:
        remove_worktree(roots["base"])
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["measured_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
