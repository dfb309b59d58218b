"""Read + stack one 4x512^2 sample: OpenCV (protloc's choice) vs PIL vs imagecodecs, and 16-bit TIFF.

    python benchmarks/bench_io.py [--samples 64] [--repeats 5]

Files are synthetic HPA-like fields written by protloc's generator (real PNG compression statistics matter
more than content). All readers run in one process, one core, side by side, interleaved per repeat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, table
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample
from protloc.synth import make_dataset


def readers() -> dict[str, object]:
    return {
        "protloc.data.io.read_sample (OpenCV)": lambda files: read_sample(files, CHANNELS),
        "PIL": lambda files: np.stack([np.asarray(Image.open(files[c])) for c in CHANNELS]),
        "OpenCV imread": lambda files: np.stack([cv2.imread(str(files[c]), cv2.IMREAD_UNCHANGED) for c in CHANNELS]),
        "imagecodecs png_decode": lambda files: np.stack(
            [imagecodecs.png_decode(Path(files[c]).read_bytes()) for c in CHANNELS]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import cv2 as _cv2

    _cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "png"
        make_dataset(root, n_train=args.samples, n_test=0, size=512, seed=0)
        catalog = open_dataset(root)
        files = [catalog.paths(i) for i in range(len(catalog))]
        tif_root = Path(tmp) / "tif16"
        make_dataset(tif_root, n_train=args.samples, n_test=0, size=512, seed=0, image_format="tif", bit_depth=16)
        tif_files = [open_dataset(tif_root).paths(i) for i in range(args.samples)]
        candidates = dict(readers())
        candidates["protloc.data.io.read_sample, 16-bit TIFF"] = lambda f: read_sample(f, CHANNELS)
        rates: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, reader in candidates.items():
                chosen = tif_files if "TIFF" in name else files
                start = time.perf_counter()
                for sample in chosen:
                    reader(sample)  # type: ignore[operator]
                rates[name].append(len(chosen) / (time.perf_counter() - start))
        reference = median(rates["protloc.data.io.read_sample (OpenCV)"])
        rows = [[name, f"{median(r):.0f}", f"{median(r) / reference:.2f}x"] for name, r in rates.items()]
        markdown = table(["reader (one core)", "samples/s (4x512^2, median)", "vs protloc"], rows)
        save(
            "io",
            {
                "samples": args.samples,
                "repeats": args.repeats,
                "samples_per_second": {k: median(v) for k, v in rates.items()},
                "all": rates,
            },
            markdown,
        )


if __name__ == "__main__":
    main()
