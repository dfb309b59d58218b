"""Helpers for tests that write tiny data sets by hand."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protloc.io import CHANNELS, write_channel


def write_sample(
    folder: Path,
    sample_id: str,
    size: int = 32,
    seed: int = 0,
    ext: str = ".png",
    channels: Sequence[str] = CHANNELS,
    dtype: type = np.uint8,
) -> dict[str, np.ndarray]:
    """Write one sample's channel files with random content; return the planes written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    planes = {}
    for channel in channels:
        top = 65535 if dtype == np.uint16 else 255
        plane = rng.integers(0, top + 1, size=(size, size), dtype=np.int64).astype(dtype)
        write_channel(folder / f"{sample_id}_{channel}{ext}", plane)
        planes[channel] = plane
    return planes


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
