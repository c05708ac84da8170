"""benchmarks.compare: the pairing arithmetic, and one real comparison at a small size."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import compare


def test_summarise_pairs_each_new_sample_with_its_base() -> None:
    base = [{"wall_s": 5.0}, {"wall_s": 6.0}, {"wall_s": 5.5}]
    new = [{"wall_s": 4.8}, {"wall_s": 6.1}, {"wall_s": 5.2}]
    wall = compare.summarise(base, new)["wall_s"]
    assert wall["base_median"] == 5.5
    assert wall["new_median"] == 5.2
    assert wall["diffs"] == pytest.approx([-0.2, 0.1, -0.3])
    assert wall["median_diff"] == pytest.approx(-0.2)
    assert wall["new_lower"] == 2
    assert wall["base_range"] == [5.0, 6.0]


def test_summarise_refuses_unpaired_samples() -> None:
    with pytest.raises(ValueError):
        compare.summarise([{"wall_s": 1.0}], [])


def test_sides_take_turns_going_first() -> None:
    assert compare.alternate(3) == [("base", "new"), ("new", "base"), ("base", "new")]


def test_unknown_revision_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="not a revision of this repository: no-such-rev"):
        compare.main(["no-such-rev", "--messages", "2k"])


def test_compares_head_with_this_tree(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    compare.main(["HEAD", "--messages", "2k", "--pairs", "1", "--incremental", "--json", str(out)])
    result = json.loads(out.read_text())
    runs = [(r["side"], r["mode"]) for r in result["runs"]]
    assert runs == [
        ("base", "full"),
        ("new", "full"),
        ("base", "incremental"),
        ("new", "incremental"),
    ]
    # Both sides built the same lake: the same rows, and the delta's mail in the increment.
    full = [r for r in result["runs"] if r["mode"] == "full"]
    assert full[0]["rows_published"] == full[1]["rows_published"] > 0
    inc = [r for r in result["runs"] if r["mode"] == "incremental"]
    assert [r["stats"]["delta_messages"] for r in inc] == [1000, 1000]
    # Each side's home was as syncs leave it: the run wrote into the standby.
    assert [r["stats"]["published_from_standby"] for r in inc] == [1, 1]
    assert result["full"]["wall_s"]["pairs"] == 1
    # Each side ran its own code, and the base's checkout is gone.
    assert Path(full[0]["code"]).parent.parent != Path(full[1]["code"]).parent.parent
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=compare.REPO, capture_output=True, text=True
    ).stdout
    assert "base-code" not in worktrees
