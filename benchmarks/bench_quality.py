"""Quality: protloc's default CPU recipe vs the seed recipe, then the gains from TTA and a 5-fold ensemble.

    python benchmarks/bench_quality.py [--n-train 3000] [--n-test 600] [--minutes 8] [--folds-minutes 8]

Both recipes train on the same synthetic data (fold 0 of the same 5-fold split) for the same wall-clock
budget (epochs planned from each model's measured speed, ``max_time`` as the hard stop) and are scored on the
same held-out synthetic test set with its truth:

* default: ``--recipe cpu`` (resnet18, 4 channels, 128 px, BCE, flips/rotations, per-class thresholds);
* seed: ``--recipe seed`` (the seed notebook's CNN, RGB, BCE, no augmentation, one 0.5 threshold).

Then, for the default model: test-time augmentation (all 8 flips/rotations) and a 5-fold ensemble (folds 1-4
trained with the same recipe and budget, thresholds refitted out of fold), each with its cost in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.classes import HPA2018
from protloc.inference.evaluate import evaluate_model
from protloc.synth import make_dataset
from protloc.training.budget import measure_training_rate
from protloc.training.config import resolve_config
from protloc.training.ensemble import make_ensemble
from protloc.training.train import epochs_for_budget, train


def train_recipe(recipe: str, data: Path, out: Path, minutes: float, fold: int, cache: Path, n_train: int) -> Path:
    base = resolve_config(recipe, overrides={"data": str(data)})
    rate = measure_training_rate(base.model, len(base.channels), base.image_size, HPA2018.num_classes)
    epochs = epochs_for_budget(rate, int(n_train * 0.8), minutes * 60)
    config = resolve_config(
        recipe,
        overrides={
            "data": str(data),
            "out": str(out),
            "fold": fold,
            "epochs": epochs,
            "max_time": f"{minutes * 1.1:.2f}",
            "cache_dir": str(cache),
        },
    )
    start = time.perf_counter()
    result = train(config, overwrite=True)
    assert result is not None
    print(
        f"{recipe} fold {fold}: {epochs} epochs planned, {result.epochs_run} run, "
        f"{time.perf_counter() - start:.0f} s, val macro F1 {result.report.macro_f1:.3f}",
        flush=True,
    )
    return result.package_dir


def score(model: Path, data: Path, tta: str = "none") -> tuple[dict[str, float], list[float | None], float]:
    start = time.perf_counter()
    result = evaluate_model(model, data, split="test", labels=data / "test_truth.csv", tta=tta)
    seconds = time.perf_counter() - start
    return result.report.summary(), [row.f1 for row in result.report.per_class], seconds


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--folds-minutes", type=float, default=8.0)
    parser.add_argument("--skip-folds", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/quality-work"))
    args = parser.parse_args()
    work = args.work
    data = work / "data"
    if not (data / "train.csv").is_file():
        make_dataset(
            data, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=7, min_per_class=10, overwrite=True
        )
    cache = work / "cache"
    results: dict[str, object] = {"n_train": args.n_train, "n_test": args.n_test, "minutes": args.minutes}
    default = train_recipe("cpu", data, work / "cpu-fold0", args.minutes, 0, cache, args.n_train)
    seed = train_recipe("seed", data, work / "seed-fold0", args.minutes, 0, cache, args.n_train)
    default_summary, default_f1, default_seconds = score(default, data)
    seed_summary, seed_f1, _ = score(seed, data)
    results.update(default=default_summary, seed=seed_summary, default_per_class=default_f1, seed_per_class=seed_f1)
    rows = [
        [
            "protloc default (resnet18, 4 ch, BCE, flips/rotations, per-class thresholds)",
            f"{default_summary['macro_f1']:.3f}",
            f"{default_summary['micro_f1']:.3f}",
            f"{default_summary['exact_match']:.3f}",
        ],
        [
            "seed recipe (seed-cnn, RGB, BCE, no aug, 0.5)",
            f"{seed_summary['macro_f1']:.3f}",
            f"{seed_summary['micro_f1']:.3f}",
            f"{seed_summary['exact_match']:.3f}",
        ],
    ]
    tta_summary, _, tta_seconds = score(default, data, tta="d4")
    results["tta_d4"] = tta_summary
    results["seconds_plain_vs_tta"] = [default_seconds, tta_seconds]
    rows.append(
        [
            "default + TTA (8 flips/rotations)",
            f"{tta_summary['macro_f1']:.3f}",
            f"{tta_summary['micro_f1']:.3f}",
            f"{tta_summary['exact_match']:.3f}",
        ]
    )
    if not args.skip_folds:
        members = [default]
        for fold in range(1, 5):
            members.append(
                train_recipe("cpu", data, work / f"cpu-fold{fold}", args.folds_minutes, fold, cache, args.n_train)
            )
        ensemble = make_ensemble(members, work / "ensemble5")
        ens_summary, ens_f1, ens_seconds = score(ensemble, data)
        results.update(ensemble5=ens_summary, ensemble_per_class=ens_f1, seconds_ensemble=ens_seconds)
        rows.append(
            [
                "default, 5-fold ensemble (out-of-fold thresholds)",
                f"{ens_summary['macro_f1']:.3f}",
                f"{ens_summary['micro_f1']:.3f}",
                f"{ens_summary['exact_match']:.3f}",
            ]
        )
    markdown = table(["recipe (same data, same budget)", "test macro F1", "micro F1", "exact match"], rows)
    markdown += (
        f"\n\nTraining budget {args.minutes:g} min per model on {args.n_train} synthetic training images "
        f"(fold 0 of 5); {args.n_test} test images. Prediction time for the test set: "
        f"{default_seconds:.1f} s plain, {tta_seconds:.1f} s with TTA"
    )
    if "seconds_ensemble" in results:
        markdown += f", {results['seconds_ensemble']:.1f} s for the 5-fold ensemble"
    markdown += ".\n\n"
    ensemble_f1 = results.get("ensemble_per_class")
    per_class_rows = []
    for i, name in enumerate(HPA2018.names):
        columns = [default_f1, seed_f1] + ([ensemble_f1] if isinstance(ensemble_f1, list) else [])
        per_class_rows.append([str(i), name] + [_cell(values[i]) for values in columns])
    header = ["id", "class", "default F1", "seed F1"] + (["5-fold F1"] if "ensemble_per_class" in results else [])
    markdown += table(header, per_class_rows)
    save("quality", results, markdown)
    (work / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
