"""Single cells on synthetic data with per-cell truth: segmentation quality and the 2021 challenge mAP.

    python benchmarks/bench_cells.py [--train 300] [--test 60] [--size 128] [--minutes 1.5]

One run, side by side on the same test fields and the same segmented cells (each test field is segmented once):

* segmentation F1 / AP at IoU 0.5 and 0.75 of the classical segmenter against the true cells;
* per-cell mAP (mask IoU >= 0.6, the 2021 metric) of
  (a) the baseline: a field model's probabilities given to every cell of the field,
  (b) a cell model trained from weak labels (every cell takes its field's labels),
  (b') the same after one round of pseudo-labels (field classes dropped where (b) scores a cell < 0.1),
  (c) a cell model trained from per-cell labels (segmented cells matched to true cells, IoU >= 0.5),
  (d) the mix of (b) or (c) with the field model (0.5 / 0.5).

The classical segmenter runs with its defaults: it scales its lengths to its working plane itself (scaling
them again by ``size / 512``, as this script did before issue 19, applied them twice).
Each model trains for ``--minutes`` at most (resnet18, the cpu recipe).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.cells.dataset import make_cell_dataset
from protloc.cells.outputs import compare_cell_methods
from protloc.cells.predict import open_cell_predictor
from protloc.cells.pseudo import refine_labels
from protloc.cells.runner import segment_dataset
from protloc.synth import make_dataset
from protloc.training.config import resolve_config
from protloc.training.train import train


def train_model(data: Path, out: Path, cache: Path, image_size: int, minutes: float, epochs: int) -> Path:
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(data),
            "out": str(out),
            "cache_dir": str(cache),
            "image_size": image_size,
            "epochs": epochs,
            "max_time": f"{minutes:.2f}",
            "batch_size": 64,
        },
    )
    result = train(config, overwrite=True)
    assert result is not None
    return result.package_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--minutes", type=float, default=1.5, help="training budget of each model")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cells-work"))
    args = parser.parse_args()
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        seconds[name] = round(time.perf_counter() - since, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
        return time.perf_counter()

    work = args.work
    data = work / "data"
    cache = work / "cache"
    now = time.perf_counter()
    make_dataset(
        data, n_train=args.train, n_test=args.test, size=args.size, seed=13, cells=True, overwrite=True, workers=2
    )
    now = lap("synth", now)
    options: dict[str, Any] = {}  # the segmenter scales its settings itself (issue 19: never again)
    segmented = {
        split: segment_dataset(data, work / f"{split}_segmented", split=split, options=options, overwrite=True).out
        for split in ("train", "test")
    }
    now = lap("segment train and test", now)

    field_model = train_model(data, work / "field", cache, args.size, args.minutes, args.epochs)
    now = lap("train field model", now)
    weak = make_cell_dataset(
        data, work / "cells_weak", masks=segmented["train"], labels="field", size=args.crop, overwrite=True
    )
    truth = make_cell_dataset(
        data,
        work / "cells_truth",
        masks=segmented["train"],
        labels="cells",
        truth=data / "train_cells_truth",
        size=args.crop,
        overwrite=True,
    )
    now = lap("cut crops", now)
    weak_model = train_model(weak.out, work / "cell_weak", cache, args.crop, args.minutes, args.epochs)
    now = lap("train cell model (weak labels)", now)
    refined, pseudo_stats = refine_labels(weak_model, weak.out, threshold=0.1)
    pseudo = make_cell_dataset(
        data, work / "cells_pseudo", masks=segmented["train"], labels=refined, size=args.crop, overwrite=True
    )
    pseudo_model = train_model(pseudo.out, work / "cell_pseudo", cache, args.crop, args.minutes, args.epochs)
    now = lap("pseudo-labels + train cell model", now)
    truth_model = train_model(truth.out, work / "cell_truth", cache, args.crop, args.minutes, args.epochs)
    now = lap("train cell model (per-cell labels)", now)

    results: dict[str, Any] = {}
    runs = [
        ("weak", weak_model, "(b) cell model, weak labels", "(d) mix: weak cell model + field model"),
        ("pseudo", pseudo_model, "(b') cell model, weak labels + 1 pseudo-label round", None),
        ("truth", truth_model, "(c) cell model, per-cell labels", "(d) mix: per-cell cell model + field model"),
    ]
    for key, model, cell_name, mix_name in runs:
        predictor = open_cell_predictor(model, field_model, segmenter_options=options)
        compared = compare_cell_methods(predictor, data, split="test", mixes=(0.5,), masks=segmented["test"])
        for method, evaluation in compared.items():
            if method.startswith("baseline"):
                name = "(a) baseline: field model's labels to every cell"
            elif method.startswith("cell model"):
                name = cell_name
            elif mix_name is not None:
                name = mix_name
            else:
                continue
            results.setdefault(name, evaluation.as_dict())
        now = lap(f"predict + score test ({key})", now)

    first = next(iter(results.values()))
    segmentation = first["segmentation"]
    order = sorted(results, key=lambda name: name.replace("'", "z"))
    rows = [[name, f"{results[name]['map_iou_0_6']:.4f}"] for name in order]
    seg_rows = [
        [f"{s['iou']}", f"{s['f1']:.3f}", f"{s['ap']:.3f}", f"{s['mean_matched_iou']:.3f}"] for s in segmentation
    ]
    total = round(time.perf_counter() - started)
    markdown = "\n\n".join(
        [
            f"{args.test} test fields, {first['true_cells']} true cells, {first['predicted_cells']} segmented; "
            f"{args.train} training fields of {args.size} px; crops {args.crop} px; {total} s in all.",
            table(["method", "per-cell mAP (IoU >= 0.6)"], rows),
            table(["segmentation IoU", "F1", "AP (TP/(TP+FP+FN))", "mean matched IoU"], seg_rows),
        ]
    )
    save(
        "cells",
        {
            "settings": vars(args) | {"work": str(args.work)},
            "segmenter_options": options,
            "cells": {"weak": weak.cells, "per_cell_labels": truth.cells, "unmatched": truth.skipped},
            "pseudo_labels": pseudo_stats,
            "seconds": seconds,
            "results": results,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
