from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protloc.data.cache import build_cache, open_cache
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample
from protloc.errors import DataError
from tests.helpers import write_csv, write_sample


def _dataset(root: Path, n: int, size: int = 32) -> Path:
    for i in range(n):
        write_sample(root / "train", f"s{i:04d}", size=size, seed=i)
    write_csv(root / "train.csv", ["Id", "Target"], [(f"s{i:04d}", str(i % 28)) for i in range(n)])
    return root


def test_cache_holds_resized_samples_and_is_reused(tmp_path: Path) -> None:
    catalog = open_dataset(_dataset(tmp_path / "d", 10))
    seen: list[tuple[int, int]] = []
    cache = build_cache(
        catalog, CHANNELS, 16, cache_dir=tmp_path / "c", workers=1, on_progress=lambda d, t: seen.append((d, t))
    )
    assert cache.shape == (10, 4, 16, 16)
    assert seen[-1] == (10, 10)
    for index in (0, 7):
        expected = read_sample(catalog.paths(index), CHANNELS, size=16)
        np.testing.assert_array_equal(cache.read(index), expected)
    assert cache.ids == catalog.ids
    again = build_cache(catalog, CHANNELS, 16, cache_dir=tmp_path / "c", workers=1)
    assert again.folder == cache.folder
    assert not list((tmp_path / "c").glob("*.partial"))
    # a different channel choice or size is another cache
    green = build_cache(catalog, ["green"], 16, cache_dir=tmp_path / "c", workers=1)
    assert green.folder != cache.folder and green.shape == (10, 1, 16, 16)
    np.testing.assert_array_equal(green.read(3)[0], cache.read(3)[1])


def test_changed_file_gives_a_new_cache(tmp_path: Path) -> None:
    catalog = open_dataset(_dataset(tmp_path / "d", 4))
    before = build_cache(catalog, CHANNELS, 16, cache_dir=tmp_path / "c", bit_depth=16, workers=1)
    assert build_cache(catalog, CHANNELS, 16, cache_dir=tmp_path / "c", bit_depth=16, workers=1).folder == before.folder
    time.sleep(0.01)
    write_sample(tmp_path / "d" / "train", "s0002", size=32, seed=99)
    catalog = open_dataset(tmp_path / "d")
    after = build_cache(catalog, CHANNELS, 16, cache_dir=tmp_path / "c", bit_depth=16, workers=1)
    assert after.folder != before.folder
    assert not np.array_equal(after.read(2), before.read(2)), "the changed sample is read again"
    other = build_cache(catalog, CHANNELS, 16, cache_dir=tmp_path / "c", bit_depth=12, workers=1)
    assert other.folder != after.folder


def test_failed_build_keeps_finished_samples_and_resumes(tmp_path: Path) -> None:
    catalog = open_dataset(_dataset(tmp_path / "d", 6))
    good = (tmp_path / "d" / "train" / "s0004_blue.png").read_bytes()
    (tmp_path / "d" / "train" / "s0004_blue.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="s0004.*finished samples are kept"):
        build_cache(catalog, CHANNELS, 16, cache_dir=tmp_path / "c", workers=1)
    partial = list((tmp_path / "c").glob("*.partial"))
    assert len(partial) == 1 and not (partial[0] / "meta.json").exists()
    (tmp_path / "d" / "train" / "s0004_blue.png").write_bytes(good)  # the user fixes the file
    progress: list[int] = []
    cache = build_cache(
        catalog, CHANNELS, 16, cache_dir=tmp_path / "c", workers=1, on_progress=lambda d, t: progress.append(d)
    )
    assert progress[0] == 5  # five samples were already done
    np.testing.assert_array_equal(cache.read(4), read_sample(catalog.paths(4), CHANNELS, size=16))


@pytest.mark.slow
def test_killed_build_resumes_and_matches_a_clean_build(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "d", 400, size=256)
    script = (
        "import sys; from protloc.data.catalog import open_dataset; from protloc.data.cache import build_cache; "
        "from protloc.data.io import CHANNELS; "
        f"build_cache(open_dataset({str(data)!r}), CHANNELS, 64, cache_dir={str(tmp_path / 'c')!r}, workers=1)"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    done_file = None
    while time.monotonic() < deadline:
        found = list((tmp_path / "c").glob("*.partial/done.u8"))
        if found and np.fromfile(found[0], np.uint8).sum() >= 20:
            done_file = found[0]
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert done_file is not None, "the build never got going"
    finished_before = int(np.fromfile(done_file, np.uint8).sum())
    assert 0 < finished_before < 400
    catalog = open_dataset(data)
    progress: list[int] = []
    resumed = build_cache(
        catalog, CHANNELS, 64, cache_dir=tmp_path / "c", workers=2, on_progress=lambda d, t: progress.append(d)
    )
    assert progress[0] >= finished_before
    clean = build_cache(catalog, CHANNELS, 64, cache_dir=tmp_path / "clean", workers=2)
    np.testing.assert_array_equal(resumed.memmap(), clean.memmap())


def test_open_cache_refuses_unfinished(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="not a finished protloc cache"):
        open_cache(tmp_path / "x")


def test_cache_reads_without_mapping_and_after_fork(kaggle_dir: Callable[..., Path], tmp_path: Path) -> None:
    catalog = open_dataset(kaggle_dir({f"k{i}": "0" for i in range(3)}))
    cache = build_cache(catalog, CHANNELS, 8, cache_dir=tmp_path / "c", workers=1)
    first = cache.read(1)
    pid = os.fork()
    if pid == 0:  # the child must reopen its own descriptor and read the same bytes
        os._exit(0 if np.array_equal(cache.read(1), first) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(IndexError):
        cache.read(3)
    mean, std = cache.channel_statistics()
    assert len(mean) == 4 and all(0 <= m <= 1 for m in mean) and all(s > 0 for s in std)
