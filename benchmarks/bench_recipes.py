"""Recipe ablation on CPU: which loss, augmentation and model make the best default for a short budget.

    python benchmarks/bench_recipes.py [--minutes 6] [--only A,C,D]

Every variant trains on the same synthetic data (3,000 training images, fold 0 of 5, 256 px files, 128 px
input) for the same wall-clock budget (epochs planned from the model's measured speed) and is scored on the
same 600 test images with per-class thresholds fitted on its validation fold. This is how the ``cpu`` recipe
was chosen; rerun it after changing the recipe or the synthetic generator.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.classes import HPA2018
from protloc.inference.evaluate import evaluate_model
from protloc.synth import make_dataset
from protloc.training.budget import measure_training_rate
from protloc.training.config import resolve_config
from protloc.training.train import epochs_for_budget, train

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "A": ("resnet18, focal, standard augmentation", {"loss": "focal", "augment": "standard"}),
    "C": ("resnet18, BCE, standard augmentation", {"loss": "bce", "augment": "standard"}),
    "D": ("resnet18, BCE, flips/rotations only (the cpu recipe)", {"loss": "bce", "augment": "light"}),
    "E": ("resnet18, BCE, standard augmentation, lr 4e-3", {"loss": "bce", "augment": "standard", "lr": 4e-3}),
    "B": (
        "seed-cnn, 4 channels, focal, standard augmentation, AdamW 1e-3",
        {"model": "seed-cnn", "loss": "focal", "augment": "standard", "lr": 1e-3},
    ),
    "S": (
        "seed recipe: seed-cnn, RGB, BCE, no augmentation, Adam (thresholds fitted)",
        {"recipe": "seed", "threshold_method": "fit"},
    ),
}


def run_variant(key: str, data: Path, work: Path, minutes: float) -> dict[str, Any]:
    label, overrides = VARIANTS[key]
    overrides = dict(overrides)
    recipe = overrides.pop("recipe", "cpu")
    base = resolve_config(recipe, overrides={"data": str(data), **overrides})
    rate = measure_training_rate(base.model, len(base.channels), base.image_size, HPA2018.num_classes)
    epochs = epochs_for_budget(rate, 2400, minutes * 60)
    config = resolve_config(
        recipe,
        overrides={
            "data": str(data),
            "out": str(work / key),
            "epochs": epochs,
            "max_time": f"{minutes * 1.1:.2f}",
            "cache_dir": str(work / "cache"),
            **overrides,
        },
    )
    start = time.perf_counter()
    result = train(config, overwrite=True)
    assert result is not None
    seconds = time.perf_counter() - start
    test = evaluate_model(result.package_dir, data, split="test", labels=data / "test_truth.csv").report
    return {
        "variant": key,
        "label": label,
        "epochs": result.epochs_run,
        "seconds": round(seconds),
        "val_macro_f1_cv": result.threshold_gain["macro_f1_fitted_cv"],
        "test": test.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/quality-work"))
    args = parser.parse_args()
    data = args.work / "data"
    if not (data / "train.csv").is_file():
        make_dataset(data, n_train=3000, n_test=600, size=256, seed=7, min_per_class=10, overwrite=True)
    results = []
    for key in args.only.split(","):
        results.append(run_variant(key.strip(), data, args.work / "recipes", args.minutes))
        print(results[-1], flush=True)
    rows = [
        [
            r["variant"],
            r["label"],
            r["epochs"],
            f"{r['val_macro_f1_cv']:.3f}",
            f"{r['test']['macro_f1']:.3f}",
            f"{r['test']['micro_f1']:.3f}",
        ]
        for r in results
    ]
    markdown = table(["", "variant", "epochs", "val macro F1 (cv thresholds)", "test macro F1", "test micro F1"], rows)
    save("recipes", {"minutes": args.minutes, "variants": results}, markdown)


if __name__ == "__main__":
    main()
