"""Shared helpers: the worker pool starts clean (never a plain fork) and folders are replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protloc.utils import atomic_folder
from protloc.workers import imap


def _parent_and_square(value: int) -> tuple[int, int]:
    return os.getppid(), value * value  # the process that forked this one


def test_imap_keeps_order_and_never_forks_this_process() -> None:
    results = list(imap(_parent_and_square, range(20), workers=2, chunksize=3, window=2))
    assert [square for _, square in results] == [v * v for v in range(20)]
    # a fork server (or spawn) starts the workers: none is a fork of this process, whose OpenCV and BLAS
    # thread pools could hang a forked child
    assert all(parent != os.getpid() for parent, _ in results)
    assert list(imap(_parent_and_square, [3], workers=1)) == [(os.getppid(), 9)]  # one worker: this process


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        (staging / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError, match="killed"), atomic_folder(target) as staging:
        (staging / "a.txt").write_text("second, half written")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first", "a failed write leaves the old folder as it was"
    with atomic_folder(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging or old folder is left behind"
