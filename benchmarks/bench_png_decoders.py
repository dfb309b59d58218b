"""PNG decoders for the one decoder (protloc.data.decoder): OpenCV against libspng (pyspng) and imagecodecs.

    python benchmarks/bench_png_decoders.py FOLDER [FOLDER ...] [--files 200] [--rounds 5]

For each folder of PNG planes (e.g. ``protloc synth`` output's ``test/``, 8- or 16-bit, and the genuine Kaggle
PNGs in ../shared/realdata), every decoder that is installed decodes the same bytes (read into memory first,
so the disk is out of it) on one thread: correctness is bit-exact equality with OpenCV (same shape, dtype and
pixels), speed is milliseconds per 4-plane sample, medians of interleaved rounds. pyspng and imagecodecs are
not protloc dependencies: install them to compare (``pip install pyspng imagecodecs``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, table


def decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    found: dict[str, Callable[[bytes], np.ndarray]] = {
        "opencv": lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    }
    for name, function in (("pyspng", "load"), ("imagecodecs", "png_decode")):
        try:
            found[name] = getattr(importlib.import_module(name), function)
        except ImportError:
            print(f"{name} is not installed: skipped")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results-name", default="png_decoders")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    found = decoders()
    load_before = os.getloadavg()
    rows, results = [], {}
    for folder in args.folders:
        blobs = [path.read_bytes() for path in sorted(folder.glob("*.png"))[: args.files]]
        reference = [found["opencv"](blob) for blob in blobs]
        label = f"{folder.parent.name}/{folder.name} ({len(blobs)} planes, {reference[0].dtype}, {reference[0].shape})"
        times: dict[str, list[float]] = {name: [] for name in found}
        for _ in range(args.rounds):
            for name, decode in found.items():
                start = time.perf_counter()
                for blob in blobs:
                    decode(blob)
                times[name].append((time.perf_counter() - start) / len(blobs) * 4 * 1000)
        for name, decode in found.items():
            exact = sum(
                np.asarray(got).shape == want.shape
                and np.asarray(got).dtype == want.dtype
                and np.array_equal(got, want)
                for got, want in zip((decode(blob) for blob in blobs), reference, strict=True)
            )
            ms = median(times[name])
            rows.append([label, name, f"{exact}/{len(blobs)}", f"{ms:.2f}", f"{median(times['opencv']) / ms:.2f}x"])
            results[f"{label}/{name}"] = {"bit_exact": exact, "files": len(blobs), "ms_per_sample": times[name]}
    markdown = table(["planes", "decoder", "bit-exact with OpenCV", "ms per 4-plane sample", "speed vs OpenCV"], rows)
    markdown += (
        f"\n\none thread; load average before {tuple(round(x, 1) for x in load_before)}, "
        f"after {tuple(round(x, 1) for x in os.getloadavg())}"
    )
    save(args.results_name, results, markdown)


if __name__ == "__main__":
    main()
