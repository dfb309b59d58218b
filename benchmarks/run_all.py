"""Run the whole CPU benchmark suite and collect the results into one Markdown summary.

    python benchmarks/run_all.py                 # everything (about two hours on a 2-core machine)
    python benchmarks/run_all.py --only io,cache # some of it
    python benchmarks/run_all.py --quick         # every script at its smallest size (checks they run)

Each benchmark is its own script (run alone for details); each writes ``results/<name>.json`` (with the
machine, command and date) and ``results/<name>.md``. This runner runs them one after the other, never two
at once (they would share the cores), then writes ``results/SUMMARY.md`` with every table. The GPU script,
``benchmarks/gpu.sh``, is separate: it needs an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine

HERE = Path(__file__).resolve().parent
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (title, full arguments, quick arguments)
    "io": (
        "Reading and stacking a 4x512^2 sample",
        ["bench_io.py"],
        ["bench_io.py", "--samples", "8", "--repeats", "1"],
    ),
    "synth": (
        "Synthetic data generator",
        ["bench_synth.py", "--json", str(RESULTS / "synth.json")],
        [
            "bench_synth.py",
            "--n-stats",
            "20",
            "--repeats",
            "1",
            "--n512",
            "4",
            "--n128",
            "8",
            "--json",
            str(RESULTS / "synth.json"),
        ],
    ),
    "cache": (
        "Cache build and training memory at 2k vs 20k samples",
        ["bench_cache.py"],
        ["bench_cache.py", "--build-samples", "40", "--small", "100", "--large", "300"],
    ),
    "train_speed": (
        "Training throughput: protloc vs a bare PyTorch loop",
        ["bench_train.py"],
        ["bench_train.py", "--samples", "200", "--rounds", "1"],
    ),
    "inference": (
        "Inference: PyTorch eager vs ONNX Runtime fp32 and int8, and end to end",
        ["bench_inference.py"],
        ["bench_inference.py", "--samples", "40", "--repeats", "2", "--train-minutes", "0.3"],
    ),
    "budget": (
        "Time budgets: --max-time use and overshoot, quiet and with a competing process",
        ["bench_budget.py"],
        ["bench_budget.py", "--minutes", "0.3", "--n-train", "200", "--work", str(RESULTS / "budget-quick")],
    ),
    "throughput": (
        "predict and the service against the model alone (the thread budget, issue 24)",
        ["bench_throughput.py"],
        ["bench_throughput.py", "--samples", "16", "--rounds", "1", "--sizes", "128"],
    ),
    "serve": ("HTTP service latency and throughput", ["bench_serve.py"], ["bench_serve.py", "--quick"]),
    "attacks": (
        "Attacks and faults: what each got, and its peak memory",
        ["bench_attacks.py"],
        ["bench_attacks.py", "--quick"],
    ),
    "watch": ("Watch folder: fields/s and memory over 3,000 fields", ["bench_watch.py"], ["bench_watch.py", "--quick"]),
    "segment": (
        "Cell segmentation on 2048 and 3072 px fields",
        ["bench_segment.py"],
        ["bench_segment.py", "--quick"],
    ),
    "boundaries": (
        "Cell boundaries: what each segmenter step buys at IoU 0.5 / 0.6 / 0.75",
        ["bench_cell_boundaries.py"],
        ["bench_cell_boundaries.py", "--quick", "--work", str(RESULTS / "cell-boundaries-quick")],
    ),
    "cells": (
        "Single cells on foreign 2021 fields: every method, the 2021 mAP with intervals",
        ["bench_cells.py"],
        ["bench_cells.py", "--quick", "--work", str(RESULTS / "cells-quick")],
    ),
    "adapt_cells": (
        "A cell package adapted to shifted fields (gain, magnification): mAP before and after, with intervals",
        ["bench_adapt_cells.py"],
        ["bench_adapt_cells.py", "--quick", "--work", str(RESULTS / "cells-quick")],
    ),
    "predict_cells": (
        "predict --cells on full-size 16-bit genuine fields: fields/s and peak memory",
        ["bench_predict_cells.py"],
        ["bench_predict_cells.py", "--quick"],
    ),
    "segment_scale": (
        "The classical segmenter at another magnification: working side alone vs match_nuclei",
        ["bench_segment_scale.py"],
        ["bench_segment_scale.py", "--quick", "--work", str(RESULTS / "cell-boundaries-quick")],
    ),
    "quality": (
        "Quality: default recipe vs the seed recipe, TTA, 5-fold ensemble",
        ["bench_quality.py"],
        [
            "bench_quality.py",
            "--n-train",
            "300",
            "--n-test",
            "80",
            "--size",
            "128",
            "--minutes",
            "0.5",
            "--skip-folds",
            "--work",
            str(RESULTS / "quality-quick"),
        ],
    ),
    "recipes": (
        "Recipe ablation (how the CPU default was chosen)",
        ["bench_recipes.py"],
        ["bench_recipes.py", "--minutes", "0.3", "--only", "D,S", "--work", str(RESULTS / "quality-quick")],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SUITE))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SUITE]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(SUITE)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    failed: list[str] = []
    for name in chosen:
        title, full, quick = SUITE[name]
        command = [sys.executable, str(HERE / (quick if args.quick else full)[0]), *(quick if args.quick else full)[1:]]
        print(f"== {name}: {title}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(command, cwd=HERE.parent)
        timings[name] = time.perf_counter() - start
        if result.returncode != 0:
            failed.append(name)
            print(f"!! {name} failed with exit status {result.returncode}", flush=True)
    lines = [
        f"# Benchmark results ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}",
        "",
        "Generated by `python benchmarks/run_all.py`"
        + (" --quick" if args.quick else "")
        + "; each section's own script gives its details.",
        "",
    ]
    # every section with results, this run's and earlier runs' (``--only`` reruns a part of the suite)
    for name, (title, _, _) in SUITE.items():
        table_file = RESULTS / f"{name}{'_quick' if args.quick and name in ('serve', 'watch') else ''}.md"
        if name in failed:
            lines += [f"## {title}", "", "(failed: see the console output)", ""]
        elif table_file.is_file():
            when = f"_{timings[name]:.0f} s in this run_" if name in timings else "_from an earlier run_"
            lines += [f"## {title}", "", table_file.read_text().strip(), "", when, ""]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'SUMMARY.md'}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
