"""Swapping a finished warehouse file in (warehouse/publish.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from warehouse.publish import building_path, swap_file


def _swap_over(tmp_path: Path) -> Path:
    """Swap a new file over a live one that a reader holds open, and wait for the thread
    that deletes the replaced file."""
    before = set(threading.enumerate())
    live = tmp_path / "warehouse.duckdb"
    live.write_bytes(b"old")
    with live.open("rb") as reader:
        new = building_path(live, "run1")
        new.write_bytes(b"new")
        swap_file(new, live)
        assert reader.read() == b"old"  # a reader keeps its snapshot
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)
    return live


def test_the_replaced_file_is_deleted_and_nothing_is_left_behind(tmp_path):
    live = _swap_over(tmp_path)
    assert live.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warehouse.duckdb"]


def test_without_hard_links_the_swap_still_happens(tmp_path, monkeypatch):
    import warehouse.publish as publish

    def no_links(*args: object) -> None:
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(publish.os, "link", no_links)
    live = _swap_over(tmp_path)
    assert live.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warehouse.duckdb"]


def test_a_retired_file_left_by_a_dead_run_is_cleared_by_the_next(tmp_path):
    live = tmp_path / "warehouse.duckdb"
    live.write_bytes(b"live")
    leftover = tmp_path / ".warehouse.duckdb.run0.retired"
    leftover.write_bytes(b"old")
    building_path(live, "run1")
    assert not leftover.exists()
    assert live.read_bytes() == b"live"
