"""Helpers for tests that write tiny data sets by hand."""

from __future__ import annotations

import csv
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protloc.data.io import CHANNELS, write_channel
from protloc.schemes import ClassScheme

REALDATA = Path(os.environ.get("PROTLOC_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
"""The genuine HPA fields (``../shared/realdata`` beside the repository, or ``PROTLOC_REALDATA``): never copied
into the repository (the images are the Human Protein Atlas's, CC BY-SA 3.0)."""
REALDATA_REQUIRED = bool(os.environ.get("PROTLOC_REQUIRE_REALDATA"))
"""Set by ``.ci/run``: a missing folder fails the tests that read it instead of skipping them."""


def _realdata_missing(folder: Path) -> str:
    return f"genuine HPA fields not found at {folder} (set PROTLOC_REALDATA)"


def realdata(part: str = "") -> Path:
    """``REALDATA / part``; skips the calling test where it is absent (a user's clone), fails it in CI."""
    folder = REALDATA / part
    if not folder.exists():
        if REALDATA_REQUIRED:
            pytest.fail(_realdata_missing(folder) + " (PROTLOC_REQUIRE_REALDATA is set)", pytrace=False)
        pytest.skip(_realdata_missing(folder))
    return folder


def needs_realdata(part: str) -> pytest.MarkDecorator:
    """A mark skipping a test where ``REALDATA / part`` is absent, unless CI requires it (then the test runs and
    fails on the missing folder)."""
    folder = REALDATA / part
    return pytest.mark.skipif(not folder.exists() and not REALDATA_REQUIRED, reason=_realdata_missing(folder))


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


def zero_png(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` zeros, compressed row by row (an 11000 px one is ~0.2 MB).

    Hostile inputs are made this way: a small file whose decoded pixels would cost gigabytes.
    """
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = bytes(1 + width * bit_depth // 8)  # filter byte 0, then zeros
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


REQUIRE_OPTIONAL = "PROTLOC_REQUIRE_OPTIONAL"
"""Set (CI sets it) to make a missing optional package a failure instead of a skip."""


def require(module: str, reason: str | None = None) -> Any:
    """``pytest.importorskip(module)``, except that with ``PROTLOC_REQUIRE_OPTIONAL`` set a missing optional package
    fails the test (or the module's collection) instead of hiding it as a skip."""
    if os.environ.get(REQUIRE_OPTIONAL):
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} is not importable ({exc}) and {REQUIRE_OPTIONAL} is set", pytrace=False)
    return pytest.importorskip(module, reason=reason)


def tiny_package(
    folder: Path,
    *,
    size: int = 64,
    scheme: ClassScheme | str | None = None,
    cells: dict[str, object] | None = None,
    seed: int = 0,
) -> Path:
    """An untrained ``test_resnet`` package of ``scheme`` (default hpa2018): the plumbing, not the quality.

    Made in well under a second, so a test can make one per class scheme. ``cells`` makes it a cell model.
    """
    import torch

    from protloc.model.network import PackagedNetwork, create_model
    from protloc.model.package import new_card, save_package
    from protloc.schemes import get_scheme

    chosen = get_scheme(scheme)
    torch.manual_seed(seed)
    n = chosen.num_classes
    network = create_model("test_resnet", 4, n, image_size=size)
    card = new_card(
        architecture={"name": "test_resnet", "in_chans": 4, "num_classes": n, "image_size": size},
        channels=list(CHANNELS),
        size=size,
        mean=[0.1] * 4,
        std=[0.2] * 4,
        thresholds=[0.5] * n,
        scheme=chosen,
        **({"cells": cells} if cells is not None else {}),
    )
    return save_package(folder, PackagedNetwork(network, [0.1] * 4, [0.2] * 4), card)
