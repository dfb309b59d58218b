"""Single cells on foreign data: every method side by side on the same segmented test cells, the 2021 metric.

    python benchmarks/bench_cells.py [--budget 20] [--n-train 1200] [--n-test 100] [--size 256] [--quick]

**Data** protloc never made: ``benchmarks/hpa_like.py --scheme hpa2021`` (its own generator, not
``protloc.synth``), the *dense* family at ``--size`` px in the Kaggle 2021 layout (``train.csv`` ``ID,Label``
with ``|``, 19 classes with an exclusive Negative), with per-cell truth that protloc sees only when scoring.
Training uses **field labels only**, as the 2021 competitors had.

**The pipeline under a stated CPU budget** (``--budget`` minutes of this machine's cores for the whole
pipeline, 20 by default for ~1,200 fields of 256 px): segment every field with the classical segmenter's
defaults, a field model, masked crops with the field's labels, a cell model on them, one round of pseudo-labels
and a cell model on those. The training stages share the budget (``STAGE_SHARES``); what segmentation and
crop cutting took is recorded beside it.

**Methods** (``METHODS``, a table: a row names what it needs and how it scores the cells; add a row to add a
method), all scored on the same test fields and the same cells, segmented once:

* the field model's probabilities copied to every cell (``predict FIELD_MODEL --cells``: the baseline);
* the TRUE field labels copied onto protloc's own masks (what perfect field labels give when copied);
* the cell model from weak labels, its mixes with the field model, the cell model after a pseudo-label round;
* true per-cell labels on protloc's own masks (the ceiling its segmentation allows).

**Scores** (``protloc.cells.metrics``): the 2021 mAP (mask IoU >= 0.6) with a 5-95 % percentile interval over
``--resamples`` bootstrap resamples of the test fields, the same resamples for every method, so differences
(to the copied true field labels) and ratios (to the baseline) get intervals too; AP per class; segmentation F1
at IoU 0.5 / 0.6 / 0.75. Results: ``benchmarks/results/cells.{json,md}`` (``cells_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.cells.masks import FieldCells, labels_path, read_labels
from protloc.cells.metrics import (
    bootstrap_maps,
    field_detections,
    percentile_interval,
    pooled_map,
    segmentation_scores,
)
from protloc.cells.truth import field_labels_on_cells, read_cell_truth, truth_on_cells

FAMILY = "dense"
STAGE_SHARES = {"field model": 0.25, "cell model": 0.35, "pseudo-label round": 0.25}
"""Shares of ``--budget`` for the training stages; the rest (~15 %) is segmentation and crop cutting."""
REFERENCE = "true field labels copied onto protloc's masks"
BASELINE = "field model copied to every cell"


# ------------------------------------------------------------------------------------------------ context


@dataclass
class Bench:
    """What the stages made and the methods read: data, segmented test cells, truth, models, probabilities."""

    args: argparse.Namespace
    data: Path
    work: Path
    masks: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    _cells: list[FieldCells] | None = None
    _truths: list[FieldCells] | None = None
    _probabilities: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def scheme(self) -> Any:
        from protloc.data.catalog import open_dataset

        return open_dataset(self.data, channels=None).scheme

    @property
    def test_ids(self) -> list[str]:
        return [t.id for t in self.truths]

    @property
    def truths(self) -> list[FieldCells]:
        if self._truths is None:
            from protloc.cells.truth import truth_folder

            folder = truth_folder(self.data, "test")
            ids = [line.split(",")[0] for line in (self.data / "test_truth.csv").read_text().splitlines()[1:]]
            self._truths = read_cell_truth(folder, len(self.scheme), ids)
        return self._truths

    @property
    def cells(self) -> list[FieldCells]:
        """protloc's segmentation of the test fields (the cells every method scores), values empty."""
        if self._cells is None:
            k = len(self.scheme)
            self._cells = []
            for sample_id in self.test_ids:
                labels = read_labels(labels_path(self.masks["test"], sample_id))
                ids = np.unique(labels)
                ids = ids[ids > 0].astype(np.int64)
                self._cells.append(FieldCells(sample_id, labels, ids, np.zeros((len(ids), k), np.float32)))
        return self._cells

    def with_values(self, values: list[np.ndarray]) -> list[FieldCells]:
        return [FieldCells(c.id, c.labels, c.cells, v) for c, v in zip(self.cells, values, strict=True)]

    def probabilities(self, model: str) -> list[np.ndarray]:
        """Per test field, ``(cells, K)`` probabilities of ``model`` (a stage's package) on the segmented cells:
        a cell model scores each masked crop, a field model gives every cell its field's probabilities."""
        if model not in self._probabilities:
            self._probabilities[model] = _score_cells(self, self.models[model])
        return self._probabilities[model]


def _score_cells(bench: Bench, package: Path) -> list[np.ndarray]:
    from protloc.cells.predict import predict_field_cells, predictor_for
    from protloc.data.io import read_sample
    from protloc.inference.predict import open_for_prediction

    predictor = predictor_for(package)  # a cell model alone, or a field model's labels to every cell
    catalog = open_for_prediction(bench.data, split="test", channels=predictor.channels)
    out = []
    for cells in bench.cells:
        image = read_sample(catalog.files[cells.id], predictor.channels, sample_id=cells.id)
        result = predict_field_cells(
            predictor, image, channels=predictor.channels, field_id=cells.id, labels=cells.labels, embeddings=False
        )
        assert np.array_equal(result.cells, cells.cells)
        out.append(result.probabilities)
    return out


# ------------------------------------------------------------------------------------------------ stages


def _timed(bench: Bench, name: str, step: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    bench.seconds[name] = round(time.perf_counter() - wall, 1)
    bench.cpu_seconds[name] = round(time.process_time() - cpu, 1)
    print(f"{name}: {bench.seconds[name]} s ({bench.cpu_seconds[name]} CPU s)", flush=True)
    return result


def _train(bench: Bench, data: Path, name: str, image_size: int, minutes: float) -> Path:
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    out = bench.work / "runs" / name
    if bench.args.reuse and (out / "model").is_dir():
        return out / "model"
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(data),
            "out": str(out),
            "cache_dir": str(bench.work / "cache"),
            "image_size": image_size,
            "epochs": bench.args.epochs,  # a ceiling: the budget ends training
            "max_time": f"{minutes:.3f}",
            "seed": 0,
        },
    )
    result = train(config, overwrite=True)
    assert result is not None
    bench.notes[name] = {"epochs": result.epochs_run, "minutes": round(minutes, 2)}
    return Path(result.package_dir)


def stage_data(bench: Bench) -> None:
    import hpa_like

    a = bench.args
    stamp = {"family": FAMILY, "n_train": a.n_train, "n_test": a.n_test, "size": a.size, "seed": a.seed}
    stamp_file = bench.data / "hpa_like.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return
    hpa_like.make(bench.data, FAMILY, a.n_train, a.n_test, a.size, a.seed, workers=2, scheme="hpa2021")
    stamp_file.write_text(json.dumps(stamp))


def stage_segment(bench: Bench) -> None:
    from protloc.cells.runner import segment_dataset

    for split in ("train", "test"):
        out = bench.work / f"{split}_cells"
        bench.masks[split] = segment_dataset(bench.data, out, split=split, workers=2).out


def stage_field_model(bench: Bench) -> None:
    minutes = bench.args.budget * STAGE_SHARES["field model"]
    bench.models["field"] = _train(bench, bench.data, "field", bench.args.size, minutes)


def stage_cell_model(bench: Bench) -> None:
    from protloc.cells.dataset import make_cell_dataset

    weak = make_cell_dataset(
        bench.data, bench.work / "cells_weak", masks=bench.masks["train"], labels="field", size=bench.args.crop,
        overwrite=True,
    )  # fmt: skip
    bench.notes["weak cells"] = weak.cells
    bench.models["weak"] = _train(
        bench, weak.out, "cell_weak", bench.args.crop, bench.args.budget * STAGE_SHARES["cell model"]
    )


def stage_pseudo(bench: Bench) -> None:
    from protloc.cells.dataset import make_cell_dataset
    from protloc.cells.pseudo import refine_labels

    refined, stats = refine_labels(bench.models["weak"], bench.work / "cells_weak", threshold=0.1)
    bench.notes["pseudo labels"] = stats
    pseudo = make_cell_dataset(
        bench.data, bench.work / "cells_pseudo", masks=bench.masks["train"], labels=refined, size=bench.args.crop,
        overwrite=True,
    )  # fmt: skip
    bench.models["pseudo"] = _train(
        bench, pseudo.out, "cell_pseudo", bench.args.crop, bench.args.budget * STAGE_SHARES["pseudo-label round"]
    )


STAGES: list[tuple[str, Callable[[Bench], None], bool]] = [
    # (name, step, part of the pipeline's budget)
    ("make data (hpa_like, hpa2021)", stage_data, False),
    ("segment train + test", stage_segment, True),
    ("field model", stage_field_model, True),
    ("weak crops + cell model", stage_cell_model, True),
    ("pseudo-labels + cell model", stage_pseudo, True),
]


# ------------------------------------------------------------------------------------------------ methods


def _mix(weight: float) -> Callable[[Bench], list[FieldCells]]:
    def scores(bench: Bench) -> list[FieldCells]:
        cell, image = bench.probabilities("weak"), bench.probabilities("field")
        return bench.with_values([weight * c + (1 - weight) * i for c, i in zip(cell, image, strict=True)])

    return scores


def _true_field_labels(bench: Bench) -> list[FieldCells]:
    from protloc.data.catalog import open_dataset

    catalog = open_dataset(bench.data, split="test", labels=bench.data / "test_truth.csv", channels=None)
    assert catalog.labels is not None
    return field_labels_on_cells(bench.cells, dict(zip(catalog.ids, catalog.labels, strict=True)))


@dataclass(frozen=True)
class Method:
    name: str
    short: str
    """column name in the per-class table."""
    scores: Callable[[Bench], list[FieldCells]]
    needs: tuple[str, ...] = ()
    """the models (stage outputs) it reads."""


METHODS: list[Method] = [
    Method(BASELINE, "field copied", lambda b: b.with_values(b.probabilities("field")), ("field",)),
    Method(REFERENCE, "true field labels", _true_field_labels),
    Method("cell model from weak labels", "cell", lambda b: b.with_values(b.probabilities("weak")), ("weak",)),
    Method("0.5 cell model + 0.5 field model", "mix 0.5", _mix(0.5), ("weak", "field")),
    Method("0.3 cell model + 0.7 field model", "mix 0.3", _mix(0.3), ("weak", "field")),
    Method(
        "cell model after one pseudo-label round",
        "pseudo",
        lambda b: b.with_values(b.probabilities("pseudo")),
        ("pseudo",),
    ),
    Method("true per-cell labels on protloc's masks (ceiling)", "ceiling", lambda b: truth_on_cells(b.cells, b.truths)),
]


# ------------------------------------------------------------------------------------------------ scoring


def score(bench: Bench) -> dict[str, Any]:
    names = bench.scheme.names
    runnable = [m for m in METHODS if all(n in bench.models for n in m.needs)]
    detections = {}
    for method in runnable:
        detections[method.name] = _timed(
            bench, f"score: {method.name}", lambda m=method: field_detections(m.scores(bench), bench.truths)
        )
    maps = bootstrap_maps(detections, resamples=bench.args.resamples, seed=0)
    results: dict[str, Any] = {}
    for name, fields in detections.items():
        report = pooled_map(fields)
        entry: dict[str, Any] = {
            "map": round(report.map, 4),
            "interval_5_95": [round(v, 4) for v in percentile_interval(maps[name])],
            "per_class": report.as_dict(names)["per_class"],
        }
        if REFERENCE in maps and name != REFERENCE:
            entry["minus_true_field_labels"] = round(report.map - pooled_map(detections[REFERENCE]).map, 4)
            entry["minus_true_field_labels_5_95"] = [
                round(v, 4) for v in percentile_interval(maps[name] - maps[REFERENCE])
            ]
        if BASELINE in maps and name != BASELINE:
            entry["times_baseline"] = round(report.map / pooled_map(detections[BASELINE]).map, 3)
            entry["times_baseline_5_95"] = [round(v, 3) for v in percentile_interval(maps[name] / maps[BASELINE])]
        results[name] = entry
    segmentation = segmentation_scores([c.labels for c in bench.cells], [t.labels for t in bench.truths])
    return {
        "methods": results,
        "segmentation": [s.as_dict() for s in segmentation],
        "test_fields": len(bench.truths),
        "true_cells": int(sum(len(t.cells) for t in bench.truths)),
        "segmented_cells": int(sum(len(c.cells) for c in bench.cells)),
        "true_cells_per_class": dict(
            zip(names, np.sum([t.values.sum(0) for t in bench.truths], axis=0).tolist(), strict=True)
        ),
    }


def markdown(bench: Bench, scored: dict[str, Any]) -> str:
    a = bench.args
    pipeline = sum(bench.seconds[name] for name, _, counted in STAGES if counted and name in bench.seconds)
    methods = scored["methods"]

    def interval(values: list[float] | None, digits: int = 3) -> str:
        return f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]" if values else ""

    rows = [
        [
            name,
            f"**{m['map']:.3f}** {interval(m['interval_5_95'])}",
            f"{m['minus_true_field_labels']:+.3f} {interval(m['minus_true_field_labels_5_95'])}"
            if "minus_true_field_labels" in m
            else "",
            f"{m['times_baseline']:.2f}x {interval(m.get('times_baseline_5_95'), 2)}" if "times_baseline" in m else "",
        ]
        for name, m in methods.items()
    ]
    seg_rows = [
        [f"{s['iou']}", f"{s['f1']:.3f}", f"{s['ap']:.3f}", f"{s['mean_matched_iou']:.3f}"]
        for s in scored["segmentation"]
    ]
    names = list(next(iter(methods.values()))["per_class"])
    short = {m.name: m.short for m in METHODS if m.name in methods}
    class_rows = [
        [cls, str(scored["true_cells_per_class"][cls])] + [_ap(methods[m]["per_class"][cls]["ap"]) for m in short]
        for cls in names
    ]
    stages = [
        [name, f"{bench.seconds.get(name, 0):.0f}", f"{bench.cpu_seconds.get(name, 0):.0f}"] for name, _, _ in STAGES
    ]
    return "\n\n".join(
        [
            f"{scored['test_fields']} test fields of {a.size} px ({FAMILY} family, hpa2021), "
            f"{scored['true_cells']} true cells, {scored['segmented_cells']} segmented by protloc's defaults; "
            f"{a.n_train} training fields with field labels only; crops {a.crop} px; budget {a.budget:g} min "
            f"(pipeline took {pipeline / 60:.1f} min wall on {os.cpu_count()} cores, load average at the end "
            f"{os.getloadavg()[0]:.1f}); intervals: 5-95 % over {a.resamples} bootstrap resamples of the test fields.",
            table(
                ["method", "mAP (IoU >= 0.6) [5-95 %]", "minus true field labels copied", "x field model copied"], rows
            ),
            table(["segmentation IoU", "F1", "AP (TP/(TP+FP+FN))", "mean matched IoU"], seg_rows),
            table(["class (AP)", "true cells", *short.values()], class_rows),
            table(["stage", "wall s", "CPU s (this process; segmentation runs in 2 worker processes)"], stages),
        ]
    )


def _ap(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=20.0, help="minutes for the whole pipeline")
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100, help="a ceiling: the budget ends training")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cells-work"))
    parser.add_argument("--reuse", action="store_true", help="reuse finished models in --work (for rescoring)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: the code path in a couple of minutes")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.n_train, args.n_test, args.size, args.crop = 1.5, 24, 6, 128, 32
        args.epochs, args.resamples = 2, 50
    bench = Bench(args, args.work / "data", args.work)
    for name, step, _ in STAGES:
        _timed(bench, name, lambda s=step: s(bench))
    scored = score(bench)
    save(
        "cells_quick" if args.quick else "cells",
        {
            "settings": vars(args) | {"work": str(args.work)},
            "budget_shares": STAGE_SHARES,
            "seconds": bench.seconds,
            "cpu_seconds": bench.cpu_seconds,
            "notes": bench.notes,
            **scored,
        },
        markdown(bench, scored),
    )


if __name__ == "__main__":
    main()
