"""protloc watch over thousands of fields: fields/s, and whether its memory stays flat.

    python benchmarks/bench_watch.py [--fields 3000] [--size 64] [--model test_resnet] [--quick]

A real ``protloc watch`` process (ONNX Runtime backend, CSV table, default settle of 2 s cut to 0.5 s) watches
an empty folder while this process plays the microscope: it writes ``--fields`` fields of four ``--size`` px
8-bit PNGs, in bursts of 50 every 0.1 s (faster than the watcher takes them, so the figure is the watcher's
throughput). The watcher's resident memory is sampled every 0.25 s together with the number of rows in its
results table, once with filesystem events and once with ``--poll``. Reported: fields/s from the first row to
the last, RSS after a third of the fields (warmed up) and at the end, and the growth per 1,000 fields between.
The model is tiny (``test_resnet`` at 64 px, untrained weights) so that the figure is the watcher's own cost,
not a network's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import make_package
from common import save, table
from protloc.data.io import CHANNELS

ROOT = Path(__file__).resolve().parent.parent


def count_rows(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


def run(model: Path, fields: int, size: int, poll: bool, work: Path) -> dict[str, Any]:
    import psutil

    folder, out = work / f"scope-{'poll' if poll else 'events'}", work / f"out-{'poll' if poll else 'events'}"
    folder.mkdir()
    command = [sys.executable, "-m", "protloc", "watch", str(folder), "--model", str(model), "--backend", "onnx"]
    command += ["--out", str(out), "--settle", "0.5", "--max-fields", str(fields), *(["--poll"] if poll else [])]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    watcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    handle = psutil.Process(watcher.pid)
    rng = np.random.default_rng(0)
    planes = [cv2.imencode(".png", rng.integers(0, 256, (size, size), dtype=np.uint8))[1].tobytes() for _ in range(8)]
    samples: list[tuple[float, int, int]] = []
    written = 0
    first_row = last_row = None
    table_path = out / "results.csv"
    next_sample = 0.0
    while watcher.poll() is None:
        if written < fields:
            for n in range(written, min(fields, written + 50)):
                for i, channel in enumerate(CHANNELS):
                    (folder / f"f{n:06d}_{channel}.png").write_bytes(planes[(n + i) % len(planes)])
            written = min(fields, written + 50)
        now = time.perf_counter()
        if now >= next_sample:
            rows = count_rows(table_path)
            try:
                rss = handle.memory_info().rss
            except psutil.Error:
                break
            samples.append((now, rows, rss))
            if rows and first_row is None:
                first_row = (now, rows)
            if rows:
                last_row = (now, rows)
            next_sample = now + 0.25
        time.sleep(0.1)
    if watcher.returncode != 0:
        raise RuntimeError(f"watcher failed: {watcher.stderr.read().decode()[-2000:] if watcher.stderr else ''}")
    rows = count_rows(table_path)
    end = time.perf_counter()
    assert first_row is not None
    seconds = (end if last_row is None or last_row[1] < rows else last_row[0]) - first_row[0]
    # after a third of the fields the allocator and ONNX Runtime's arenas have warmed up: growth from there on
    # is what days of fields would add
    early = [rss for _, done, rss in samples if done >= fields // 3]
    late = [rss for _, done, rss in samples if done >= fields * 9 // 10] or [samples[-1][2]]
    rss_early, rss_end = early[0] if early else samples[0][2], max(late)
    return {
        "mode": "polling" if poll else "events",
        "fields": rows,
        "seconds": round(seconds, 2),
        "fields_per_second": round((rows - first_row[1]) / max(seconds, 1e-9), 1),
        "rss_mb_at_third": round(rss_early / 2**20, 1),
        "rss_mb_at_end": round(rss_end / 2**20, 1),
        "rss_mb_peak": round(max(r for _, _, r in samples) / 2**20, 1),
        "growth_kb_per_1000_fields": round((rss_end - rss_early) / 1024 / max(1e-9, rows * (1 - 1 / 3) / 1000), 1),
        "samples": [(round(t - samples[0][0], 2), done, rss) for t, done, rss in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="test_resnet", help="architecture of the untrained package")
    parser.add_argument("--quick", action="store_true", help="300 fields, events only (the test suite's check)")
    args = parser.parse_args()
    fields = 300 if args.quick else args.fields
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as temp:
        work = Path(temp)
        model = make_package(work / "model", args.model, 64)
        results = [run(model, fields, args.size, poll, work) for poll in ((False,) if args.quick else (False, True))]
    header = ["mode", "fields", "fields/s", "RSS MB at 1/3", "RSS MB at end", "peak MB", "growth KB / 1000 fields"]
    rows = [
        [
            r["mode"],
            r["fields"],
            r["fields_per_second"],
            r["rss_mb_at_third"],
            r["rss_mb_at_end"],
            r["rss_mb_peak"],
            r["growth_kb_per_1000_fields"],
        ]
        for r in results
    ]
    markdown = (
        f"protloc watch, {fields} fields of 4 x {args.size} px PNG, {args.model} (64 px) on ONNX Runtime\n\n"
        + table(header, rows)
    )
    save("watch_quick" if args.quick else "watch", {"fields": fields, "results": results}, markdown)


if __name__ == "__main__":
    main()
