"""A model trained only on synthetic fields, scored on the 50 labelled real HPA 2018 fields.

    python benchmarks/bench_synth_on_real.py [--n-train 1500] [--size 256] [--max-time 12]

Trains the ``cpu`` recipe (resnet18, 128 px input, ImageNet-free) on ``--n-train`` synthetic fields for at most
``--max-time`` minutes, then predicts ``realdata/kaggle2018_akashpalrecha`` (50 genuine 512 px fields, Human
Protein Atlas, CC BY-SA 3.0) with the package's own thresholds and scores it: macro F1 over the classes present
in those 50, micro F1. Beside it, the trivial baselines that give every field the commonest labels of the full
2018 training set (31,072 images, from ``protloc/data/hpa_label_stats.json``, not from these 50):
``Nucleoplasm`` alone, and ``Nucleoplasm + Cytosol``. The 50 fields are for measuring only: nothing is tuned on
them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(os.environ.get("PROTLOC_REALDATA", REPO.parent / "shared" / "realdata"))
    parser.add_argument("--realdata", type=Path, default=default)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-time", type=float, default=12.0, help="training budget in minutes")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    from protloc.data.catalog import open_dataset
    from protloc.inference.evaluate import evaluate_model
    from protloc.metrics import evaluate
    from protloc.synth import make_dataset
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    real = args.realdata / "kaggle2018_akashpalrecha"
    catalog = open_dataset(real)
    assert catalog.labels is not None
    truth = catalog.labels
    stats = json.loads(resources.files("protloc").joinpath("data/hpa_label_stats.json").read_text("utf-8"))
    commonest = list(np.argsort(stats["class_counts"])[::-1][:2])
    results: dict[str, object] = {"real_fields": len(catalog), "classes_present": int((truth.sum(0) > 0).sum())}
    rows = []
    for name, chosen in (
        ("baseline: Nucleoplasm on every field", commonest[:1]),
        ("baseline: Nucleoplasm + Cytosol on every field", commonest),
    ):
        probabilities = np.zeros(truth.shape, np.float32)
        probabilities[:, chosen] = 1.0
        report = evaluate(truth, probabilities, 0.5, catalog.scheme.names, min_one=False)
        rows.append([name, f"{report.macro_f1:.3f}", f"{report.micro_f1:.3f}", f"{report.classes_scored}"])
        results[name] = report.summary()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synth"
        make_dataset(data, n_train=args.n_train, size=args.size, seed=args.seed, min_per_class=10, workers=2)
        config = resolve_config(
            "cpu",
            overrides={
                "data": str(data),
                "out": str(Path(tmp) / "run"),
                "epochs": args.epochs,
                "max_time": f"{int(args.max_time)}",
                "cache_dir": str(Path(tmp) / "cache"),
                "workers": 1,
                "seed": args.seed,
            },
        )
        result = train(config)
        assert result is not None
        scored = evaluate_model(result.package_dir, real, workers=1)
        report = scored.report
        label = f"resnet18 @ 128 px, {args.n_train} synthetic fields, {result.epochs_run} epochs"
        rows.insert(0, [label, f"{report.macro_f1:.3f}", f"{report.micro_f1:.3f}", f"{report.classes_scored}"])
        results["synthetic_model"] = {
            **report.summary(),
            "epochs_run": result.epochs_run,
            "validation_on_synthetic": result.report.summary(),
            "train_seconds": round(sum(result.seconds.values()), 1),
        }
        results["per_class"] = [
            {"class": r.name, "support": r.support, "f1": r.f1} for r in report.per_class if r.support > 0
        ]
    save(
        "synth_on_real",
        results,
        table(["model", "macro F1 (classes present)", "micro F1", "classes scored"], rows),
    )


if __name__ == "__main__":
    main()
