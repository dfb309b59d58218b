"""Full-size 2021-release fields: peak memory of check, cache build, training and prediction on 16-bit 3072 px PNGs.

    python benchmarks/bench_fullsize.py [--fields 10] [--side 3072]

A 3072 px 16-bit channel is 18 MiB decoded, a 4-channel field 72 MiB. This writes ``--fields`` such fields in
the Kaggle 2021 layout (``train.csv`` as ``ID,Label`` with ``|``, ``test/`` ordered by a 2021
``sample_submission.csv``; smooth synthetic content, so the PNGs stay small on disk), then measures each
command in its own process with :func:`common.peak_rss_of` (resident memory of the process and its workers,
summed, polled every 50 ms): ``protloc check``, the cache build (512 px store) with 1 and 2 workers, a one-epoch
``protloc train`` (test_resnet at 64 px) and ``protloc predict`` with 1 and 2 decode workers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_of, save, table
from protloc.data.io import CHANNELS, write_channel

LABELS = ["0|16", "18", "2", "16|17", "14", "0", "6|7", "13", "0|4", "10"]


def write_fields(folder: Path, ids: list[str], side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for sample_id in ids:
        for channel in CHANNELS:
            small = rng.integers(0, 40000, size=(48, 48)).astype(np.float32)
            plane = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
            write_channel(folder / f"{sample_id}_{channel}.png", np.clip(plane, 0, 65535).astype(np.uint16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--side", type=int, default=3072)
    args = parser.parse_args()
    protloc = [sys.executable, "-m", "protloc"]
    rows: list[list[str]] = []
    results: dict[str, object] = {"fields": args.fields, "side": args.side}
    decoded = 4 * args.side * args.side * 2 / 2**20
    results["decoded_field_mib"] = decoded
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "hpa2021"
        train_ids = [f"f{i:03d}" for i in range(args.fields)]
        test_ids = [f"t{i:03d}" for i in range(max(2, args.fields // 2))]
        write_fields(root / "train", train_ids, args.side, 0)
        write_fields(root / "test", test_ids, args.side, 1)
        (root / "train.csv").write_text(
            "ID,Label\n" + "".join(f"{i},{LABELS[n % len(LABELS)]}\n" for n, i in enumerate(train_ids))
        )
        (root / "sample_submission.csv").write_text(
            "ID,ImageWidth,ImageHeight,PredictionString\n"
            + "".join(f"{i},{args.side},{args.side},0 1 eNoLCAgIMAEABJkBdQ==\n" for i in test_ids)
        )

        def measure(name: str, command: list[str], note: str) -> None:
            peak, seconds = peak_rss_of(command)
            results[f"{name}_peak_mib"] = round(peak / 2**20)
            results[f"{name}_seconds"] = round(seconds, 1)
            rows.append([name, f"{peak / 2**20:.0f} MiB", f"{seconds:.1f} s", note])

        measure("check", [*protloc, "check", str(root), "--workers", "1"], f"decodes all {args.fields} + test fields")
        for workers in (1, 2):
            code = (
                "from protloc.data.cache import build_cache; from protloc.data.catalog import open_dataset; "
                "from protloc.data.io import CHANNELS; "
                f"build_cache(open_dataset({str(root)!r}), CHANNELS, 512, "
                f"cache_dir={str(Path(tmp) / f'c{workers}')!r}, workers={workers})"
            )
            measure(f"cache build, {workers} worker(s)", [sys.executable, "-c", code], "store: 4x512^2 uint8 per field")
        run = Path(tmp) / "run"
        measure(
            "train 1 epoch",
            [
                *protloc,
                "train",
                str(root),
                "--out",
                str(run),
                "--model",
                "test_resnet",
                "--image-size",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--workers",
                "1",
                "--cache-dir",
                str(Path(tmp) / "ctrain"),
            ],
            "cache build (64 px) + fit + package; scheme hpa2021 from train.csv",
        )
        for workers in (1, 2):
            out = Path(tmp) / f"pred{workers}"
            measure(
                f"predict, {workers} decode worker(s)",
                [*protloc, "predict", str(run / "model"), str(root), "--out", str(out), "--workers", str(workers)],
                "test/ in sample_submission order -> field_submission.csv",
            )
        results["field_submission_written"] = (Path(tmp) / "pred1" / "field_submission.csv").is_file()
    header = f"{args.fields} training + {max(2, args.fields // 2)} test fields, 4 x {args.side}^2 16-bit PNG "
    header += f"({decoded:.0f} MiB decoded per field)"
    save("fullsize", results, header + "\n\n" + table(["command", "peak RSS", "time", "notes"], rows))


if __name__ == "__main__":
    main()
