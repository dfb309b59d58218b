"""Time budgets: how much of `protloc train --max-time` a run uses, and by how much it overshoots.

    python benchmarks/bench_budget.py [--minutes 2 4] [--n-train 1200] [--size 64]

For each budget, one run on a quiet machine and one with a competing process (busy loops on every core,
started a quarter into the budget, as when a neighbour arrives mid-run). ``--max-time`` drives the learning
rate (:mod:`protloc.training.budget`): training should end by the deadline, with the rate annealed, the final
validation done and the best checkpoint kept; the epoch count (40) is only a ceiling. Reported per run:
the training time used (``on_train_start`` to the end of the final validation) as a share of the budget,
the overshoot, epochs run, the learning rate at the last step as a share of the peak, and the validation
macro F1. Targets (issue 14): >= 90% used, overshoot no more than one validation pass.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.synth import make_dataset
from protloc.training.config import resolve_config
from protloc.training.train import train


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    a = np.random.default_rng(0).random((300, 300))
    while time.monotonic() < end:
        a = a @ a
        a /= np.abs(a).max() + 1e-9


def _neighbour(delay: float, seconds: float) -> None:
    time.sleep(delay)
    _spin(seconds)


def competitor(delay: float, seconds: float, processes: int) -> list[mp.Process]:
    """``processes`` busy loops that start after ``delay`` seconds and run for ``seconds``."""
    workers = [mp.Process(target=_neighbour, args=(delay, seconds), daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/budget-work"))
    parser.add_argument("--results-name", default="budget", help="results/<name>.md and .json")
    args = parser.parse_args()
    data = args.work / "data"
    if not (data / "train.csv").is_file():
        make_dataset(data, n_train=args.n_train, n_test=300, size=args.size, seed=3, min_per_class=5, overwrite=True)
    rows, runs = [], []
    cores = mp.cpu_count()
    for minutes in args.minutes:
        for busy in (False, True):
            config = resolve_config(
                "cpu",
                overrides={
                    "data": str(data),
                    "out": str(args.work / f"run-{minutes:g}-{'busy' if busy else 'quiet'}"),
                    "image_size": args.size,
                    "epochs": 40,
                    "max_time": f"{minutes:g}",
                    "cache_dir": str(args.work / "cache"),
                },
            )
            budget = minutes * 60
            # the cache is built before the budget starts (as Lightning's max_time); start the neighbour a
            # quarter into training, measured from now plus a generous setup allowance is not needed: the
            # cache is already built after the first run, and the first run is quiet
            neighbours = competitor(0.25 * budget, budget, cores) if busy else []
            result = train(config, overwrite=True)
            for worker in neighbours:
                worker.terminate()
                worker.join()
            assert result is not None and result.budget is not None
            used = result.budget["used_seconds"]
            run = {
                "minutes": minutes,
                "competing_process": busy,
                "used_seconds": used,
                "used_share": used / budget,
                "overshoot_seconds": max(0.0, used - budget),
                "last_validation_seconds": result.budget["validation_seconds"],
                "epochs_run": result.epochs_run,
                "final_lr_share": result.budget["final_lr"] / config.lr,
                "val_macro_f1": result.report.macro_f1,
            }
            runs.append(run)
            print(run, flush=True)
            rows.append(
                [
                    f"{minutes:g} min, {'competing process from 25%' if busy else 'no competing process'}",
                    f"{run['used_share']:.1%}",
                    f"{run['overshoot_seconds']:.1f} s (val pass {run['last_validation_seconds']:.1f} s)",
                    str(result.epochs_run),
                    f"{run['final_lr_share']:.1e}",
                    f"{run['val_macro_f1']:.3f}",
                ]
            )
    markdown = table(
        ["budget (--max-time)", "budget used", "overshoot", "epochs", "last lr / peak", "val macro F1"], rows
    )
    markdown += (
        f"\n\nresnet18 at {args.size} px, {args.n_train} synthetic training images (fold 0 of 5), epochs ceiling 40; "
        f"competing process: {cores} busy numpy loops started 25% into the budget."
    )
    save(args.results_name, {"runs": runs}, markdown)


if __name__ == "__main__":
    main()
