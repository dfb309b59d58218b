"""The cache: build rate, and peak memory of a training run at 2,000 vs 20,000 samples.

    python benchmarks/bench_cache.py [--small 2000] [--large 20000]

Build rate: 4x512^2 PNG samples decoded, resized to 128 px and stored, with 1 and 2 worker processes.
Peak memory: `protloc train` for one full epoch (resnet18 at 64 px from 128 px sources, so that 20,000
samples finish in minutes), resident memory of the process and its loader workers summed, polled every 50 ms.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_of, save, table
from protloc.data.cache import build_cache
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS
from protloc.synth import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build-samples", type=int, default=400)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    args = parser.parse_args()
    results: dict[str, object] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root / "png512", n_train=args.build_samples, n_test=0, size=512, seed=1)
        catalog = open_dataset(root / "png512")
        for workers in (1, 2):
            cache_dir = root / f"cache-w{workers}"
            start = time.perf_counter()
            build_cache(catalog, CHANNELS, 128, cache_dir=cache_dir, workers=workers)
            rate = len(catalog) / (time.perf_counter() - start)
            results[f"build_samples_per_second_workers_{workers}"] = rate
            rows.append([f"cache build, {workers} worker(s)", f"{rate:.0f} samples/s", "4x512^2 PNG -> 128 px"])
            shutil.rmtree(cache_dir)
        shutil.rmtree(root / "png512")

        for count in (args.small, args.large):
            data = root / f"d{count}"
            make_dataset(data, n_train=count, n_test=0, size=128, seed=2)
            command = [
                sys.executable,
                "-m",
                "protloc",
                "train",
                str(data),
                "--out",
                str(root / f"run{count}"),
                "--model",
                "resnet18",
                "--image-size",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--cache-dir",
                str(root / "cache"),
                "--workers",
                "1",
            ]
            peak, seconds = peak_rss_of(command)
            results[f"peak_rss_mb_{count}"] = peak / 2**20
            results[f"train_seconds_{count}"] = seconds
            rows.append(
                [
                    f"peak RSS, train 1 epoch on {count} samples",
                    f"{peak / 2**20:.0f} MiB",
                    f"{seconds:.0f} s incl. cache build",
                ]
            )
            shutil.rmtree(data)
        growth = results[f"peak_rss_mb_{args.large}"] / results[f"peak_rss_mb_{args.small}"]  # type: ignore[operator]
        results["rss_ratio_large_over_small"] = growth
        rows.append([f"peak RSS ratio {args.large} / {args.small}", f"{growth:.2f}x", "10x the data"])
    save("cache", results, table(["what", "result", "notes"], rows))


if __name__ == "__main__":
    main()
