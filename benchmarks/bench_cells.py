"""Single cells on foreign data: every method side by side on the same segmented test cells, the 2021 metric.

    python benchmarks/bench_cells.py [--budget 20] [--n-train 1200] [--n-test 100] [--size 256] [--quick]

**Data** protloc never made: ``benchmarks/hpa_like_cells.py`` (its own generator, not
``protloc.synth``), the *dense* family at ``--size`` px in the Kaggle 2021 layout (``train.csv`` ``ID,Label``
with ``|``, 19 classes with an exclusive Negative), with per-cell truth that protloc sees only when scoring.
Training uses **field labels only**, as the 2021 competitors had (one method, marked, fits its fusion on the
per-cell truth of held-out training fields, to show what that lever is worth).

**The default pipeline under a stated CPU budget**: ``protloc train DATA --cells --max-time BUDGET``
(:func:`protloc.training.cells.train_cells` with its defaults; ``--budget`` minutes, 20 by default for ~1,200
fields of 256 px on the 2-core machine): segment, crops, field model, plain cell model, fusion, package. The
image-head (``mil``) pipeline runs first; the other runs start from a copy of its finished stages (same
settings, same digests), so each differs from a fresh run by one lever under the same budget: the default (plain
cell model), one out-of-fold pseudo-label round (the cell model and the round share the budget the default gives
the cell model alone), border and small cells at half weight in the cell model's loss, the cell model started
from the field model's weights (``cell_init``), the default as it was before (each training stage given 80 % of
its share, the cell model's ceiling 12 epochs, 64 px crops; a fresh run cannot give 80 %, so with ``--reuse``
it is kept from the earlier measurement), the default with 64 px crops, the former default (a cell's box is
resized to the crop: 96 px gives more pixels per structure at 2.25x the compute per crop; crops and field
model are remade, as a fresh run would), the default with context around each cell (``padding=0.25``: a
window 1.5x the box; ``context=0.5``: the other cells and background kept at half intensity instead of
masked), and the fusion fitted on per-cell truth. Differences are paired (the
same resamples), so a lever's effect gets an interval; the JSON has each method's paired difference from the
default too (``minus_default``).

**Methods** (``METHODS``, a table: a row names the runs it needs and how it scores the cells; add a row to add
a method), all scored on the same test fields and the same cells, segmented once with the defaults; the models
run once per field (:func:`protloc.cells.outputs.score_fields`) and every fusion rule is arithmetic on those
scores: the field model copied to every cell (the baseline), the TRUE field labels copied onto protloc's masks,
the cell model alone, the package as it is, fusion rules, CAM-in-mask, the pseudo-label round, the plain cell
model, and true per-cell labels on protloc's masks (the ceiling its segmentation allows).

**Scores** (``protloc.cells.metrics``): the 2021 mAP (mask IoU >= 0.6) with a 5-95 % percentile interval over
``--resamples`` bootstrap resamples of the test fields, the same resamples for every method, so differences
(to the copied true field labels) and ratios (to the baseline) get intervals too; AP per class; segmentation F1
at IoU 0.5 / 0.6 / 0.75. Results: ``benchmarks/results/cells.{json,md}`` (``cells_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
REFERENCE = "true field labels copied onto protloc's masks"
BASELINE = "field model copied to every cell"
DEFAULT = "default pipeline: protloc train --cells (plain cell model^0.25 x cell maximum^0.75), its package as it is"
FITTED = "fusion fitted on per-cell truth of held-out training fields (not field labels only)"
CELL_ALONE = "image-head cell model alone"
DEFAULT_CELL_ALONE = "default's cell model alone (the former default rule)"


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
    _scores: dict[str, tuple[Any, list[Any]]] = field(default_factory=dict)

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

    def field_scores(self, run: str) -> tuple[Any, list[Any]]:
        """``run``'s package (as ``predict --cells`` opens it) and what its models say about every test cell,
        computed once (cell model, image head, carried field model, CAM in each cell)."""
        if run not in self._scores:
            from protloc.cells.outputs import score_fields
            from protloc.cells.predict import open_cell_predictor

            predictor = open_cell_predictor(self.models[run])
            fields = score_fields(
                predictor, self.data, split="test", ids=self.test_ids, masks=self.masks["test"], cam=run == "mil"
            )
            for cells, scored in zip(self.cells, fields, strict=True):
                assert cells.id == scored.id and np.array_equal(cells.cells, scored.cells)
            self._scores[run] = (predictor, fields)
        return self._scores[run]


# ------------------------------------------------------------------------------------------------ stages


def _timed(bench: Bench, name: str, step: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    bench.seconds[name] = round(time.perf_counter() - wall, 1)
    bench.cpu_seconds[name] = round(time.process_time() - cpu, 1)
    print(f"{name}: {bench.seconds[name]} s ({bench.cpu_seconds[name]} CPU s)", flush=True)
    return result


def stage_data(bench: Bench) -> None:
    import hpa_like_cells

    a = bench.args
    stamp = {"family": FAMILY, "n_train": a.n_train, "n_test": a.n_test, "size": a.size, "seed": a.seed}
    stamp_file = bench.data / "hpa_like.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return
    hpa_like_cells.make(bench.data, FAMILY, a.n_train, a.n_test, a.size, a.seed, workers=2)
    stamp_file.write_text(json.dumps(stamp))


def stage_segment_test(bench: Bench) -> None:
    """The test fields segmented once with the defaults: the cells every method scores."""
    from protloc.cells.runner import segment_dataset

    bench.masks["test"] = segment_dataset(bench.data, bench.work / "test_cells", split="test", workers=2).out


STAGE_FOLDERS = {"segment": "segmented", "crops": "crops", "field": "field", "cell": "cell", "package": "model"}


def _pipeline(bench: Bench, name: str, base: str | None = None, keep: tuple[str, ...] = (), **changes: Any) -> None:
    """``protloc train DATA --cells`` with its defaults and ``changes``. A variant starts from a copy (hard
    links) of the ``base`` run's folder holding only the stages in ``keep`` (those its change does not touch:
    the journal forgets the others, so the budget they leave is what a fresh run with the change would have)."""
    from protloc.training.cells import PIPELINE_FILE, CellPipelineSettings, train_cells

    out = bench.work / "runs" / name
    if not (bench.args.reuse and (out / "model").is_dir()):
        shutil.rmtree(out, ignore_errors=True)
        if base is not None:
            shutil.copytree(bench.work / "runs" / base, out, copy_function=os.link)
            journal = json.loads((out / PIPELINE_FILE).read_text())
            for stage in list(journal["stages"]):
                if stage not in keep:
                    del journal["stages"][stage]
                    shutil.rmtree(out / STAGE_FOLDERS.get(stage, stage), ignore_errors=True)
            (out / PIPELINE_FILE).unlink()
            (out / PIPELINE_FILE).write_text(json.dumps(journal))
        settings = CellPipelineSettings(
            data=str(bench.data), out=str(out), max_time=f"{bench.args.budget:g}", workers=2, **changes
        )
        train_cells(settings)
    journal = json.loads((out / PIPELINE_FILE).read_text())["stages"]
    bench.notes[name] = {
        "seconds": round(sum(r["seconds"] for r in journal.values()), 1),
        "stages": {k: {"seconds": r["seconds"], **_small(r.get("summary", {}))} for k, r in journal.items()},
    }
    bench.models[name] = out / "model"


def _small(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "package"}


def _half_weights() -> Any:
    from protloc.training.mil import MilSettings

    return MilSettings(border_weight=0.5, small_weight=0.5)


STAGES: list[tuple[str, Callable[[Bench], None], bool]] = [
    # (name, step, counted in the default pipeline's budget)
    ("make data (hpa_like, hpa2021)", stage_data, False),
    ("segment the test fields", stage_segment_test, False),
    (
        "image-head pipeline: protloc train --cells --cell-head mil",
        lambda b: _pipeline(b, "mil", cell_head="mil"),
        False,
    ),
    ("+ one pseudo-label round", lambda b: _pipeline(b, "round", "mil", PREPARED, cell_head="mil", rounds=1), False),
    (
        "default: protloc train --cells (plain cell model)",
        lambda b: _pipeline(b, "default", "mil", PREPARED, cell_head="plain"),
        True,
    ),
    (
        "default as before: 64 px crops, 80 % of the cell share, 12-epoch ceiling",
        lambda b: _pipeline(b, "ceiling12", "mil", ("segment",), cell_head="plain", crop_size=64, cell_epochs=12),
        False,
    ),
    (
        "default with 64 px crops (the former default)",
        lambda b: _pipeline(b, "crop64", "mil", ("segment",), cell_head="plain", crop_size=64),
        False,
    ),
    (
        "context: a window 1.5x the cell's box, other cells and background at half intensity",
        lambda b: _pipeline(b, "context", "mil", ("segment",), cell_head="plain", padding=0.25, context=0.5),
        False,
    ),
    (
        "fusion fitted on per-cell truth",
        lambda b: _pipeline(b, "fitted", "mil", TRAINED, cell_head="mil", cell_truth=str(b.data / "train_cells_truth")),
        False,
    ),
    (
        "border and small cells at half weight in training",
        lambda b: _pipeline(b, "weighted", "mil", PREPARED, cell_head="mil", mil=_half_weights()),
        False,
    ),
    (
        "cell model started from the field model's weights",
        lambda b: _pipeline(b, "init", "mil", PREPARED, cell_head="mil", cell_init=True),
        False,
    ),
]


PREPARED = ("segment", "crops", "field")
TRAINED = (*PREPARED, "cell")


# ------------------------------------------------------------------------------------------------ methods


def _fused(run: str, spec: Any = None) -> Callable[[Bench], list[FieldCells]]:
    """The cells scored by ``run``'s package under ``spec`` (default: the package's own fusion)."""

    def scores(bench: Bench) -> list[FieldCells]:
        predictor, fields = bench.field_scores(run)
        rule = spec if spec is not None else predictor.applied_fusion
        negative = predictor.scheme.exclusive
        return bench.with_values([f.fused(rule, negative) for f in fields])

    return scores


def _fitted(bench: Bench) -> list[FieldCells]:
    """The default run's scores under the fusion the ``fitted`` run chose (only the fusion stage differs)."""
    from protloc.cells.fusion import fusion_of
    from protloc.model.card import read_card

    spec = fusion_of(read_card(bench.models["fitted"]).cells)
    bench.notes["fitted fusion"] = spec.describe()
    return _fused("mil", spec)(bench)


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
    """the runs (pipeline variants) it reads."""


def _default_rule() -> Any:
    """The rule the pipeline packages a plain cell model with, without per-cell truth (its thresholds aside)."""
    from protloc.training.cells import DEFAULT_FUSION

    return DEFAULT_FUSION["plain"]


def _spec(rule: str = "cell", **settings: Any) -> Any:
    from protloc.cells.fusion import FusionSpec

    return FusionSpec(rule, **settings)


METHODS: list[Method] = [
    Method(BASELINE, "field copied", _fused("mil", _spec("image")), ("mil",)),
    Method(REFERENCE, "true field labels", _true_field_labels),
    Method(
        "image head copied to every cell",
        "head copied",
        _fused("mil", _spec("image", image="cell model")),
        ("mil",),
    ),
    Method(
        "field model's CAM in each cell",
        "CAM",
        _fused("mil", _spec("image", image="field model CAM")),
        ("mil",),
    ),
    Method(DEFAULT, "default", _fused("default"), ("default",)),
    Method(DEFAULT_CELL_ALONE, "default cell", _fused("default", _spec()), ("default",)),
    Method(
        "default's cell model x cell maximum (product)",
        "default x max",
        _fused("default", _spec("product", image="cell maximum")),
        ("default",),
    ),
    Method("default's cell model x field model", "default x field", _fused("default", _spec("product")), ("default",)),
    Method(
        "default's cell model, 0.5 cell + 0.5 field",
        "default mean",
        _fused("default", _spec("mean")),
        ("default",),
    ),
    Method(
        "default as before (64 px crops; cell model: 80 % of its share, 12-epoch ceiling; cell model alone)",
        "before",
        _fused("ceiling12", _spec()),
        ("ceiling12",),
    ),
    Method("default with 64 px crops", "crop 64", lambda b: _fused("crop64", _default_rule())(b), ("crop64",)),
    Method(
        "default with context (a window 1.5x the box, surroundings at half intensity), its package as it is",
        "context",
        _fused("context"),
        ("context",),
    ),
    Method("image-head pipeline (--cell-head mil), its package as it is", "mil", _fused("mil"), ("mil",)),
    Method(CELL_ALONE, "cell", _fused("mil", _spec()), ("mil",)),
    Method("image-head cell x field model", "c x field", _fused("mil", _spec("product")), ("mil",)),
    Method(
        "image-head cell x image head (2021 winners)",
        "c x head",
        _fused("mil", _spec("product", image="cell model")),
        ("mil",),
    ),
    Method(
        "image-head cell x field model, Negative = max",
        "c x f, neg max",
        _fused("mil", _spec("product", negative="max")),
        ("mil",),
    ),
    Method(
        "image-head cell x CAM in mask", "c x CAM", _fused("mil", _spec("product", image="field model CAM")), ("mil",)
    ),
    Method("image-head cell, 0.5 cell + 0.5 field model", "mean 0.5", _fused("mil", _spec("mean")), ("mil",)),
    Method(
        "image-head cell x image head, Negative = none of the others",
        "c x h, neg none",
        _fused("mil", _spec("product", image="cell model", negative="none-of-others")),
        ("mil",),
    ),
    Method(
        "image-head cell^0.25 x image head^0.75",
        "geo 0.25",
        _fused("mil", _spec("geometric", weight=0.25, image="cell model")),
        ("mil",),
    ),
    Method(
        "image-head cell alone, border and small cells' scores x0.5",
        "c, edge x0.5",
        _fused("mil", _spec(border=0.5, small=0.5)),
        ("mil",),
    ),
    Method(
        "image-head cell model trained with border and small cells at half weight",
        "weighted",
        _fused("weighted", _spec()),
        ("weighted",),
    ),
    Method("image-head cell model started from the field model", "init", _fused("init", _spec()), ("init",)),
    Method(
        "image-head cell model started from the field model, x field model",
        "init x field",
        _fused("init", _spec("product")),
        ("init",),
    ),
    Method(
        "image-head cell model started from the field model, x image head",
        "init x head",
        _fused("init", _spec("product", image="cell model")),
        ("init",),
    ),
    Method("image-head model + one out-of-fold pseudo-label round", "round", _fused("round"), ("round",)),
    Method(FITTED, "fitted", _fitted, ("mil", "fitted")),
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
        if CELL_ALONE in maps and name != CELL_ALONE:  # a lever's own effect: paired, the same resamples
            entry["minus_cell_alone"] = round(report.map - pooled_map(detections[CELL_ALONE]).map, 4)
            entry["minus_cell_alone_5_95"] = [round(v, 4) for v in percentile_interval(maps[name] - maps[CELL_ALONE])]
        if DEFAULT in maps and name != DEFAULT:
            entry["minus_default"] = round(report.map - pooled_map(detections[DEFAULT]).map, 4)
            entry["minus_default_5_95"] = [round(v, 4) for v in percentile_interval(maps[name] - maps[DEFAULT])]
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
    pipeline = bench.notes.get("default", {}).get("seconds", 0.0)  # its stages, from its journal
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
            f"{m['minus_default']:+.3f} {interval(m['minus_default_5_95'])}" if "minus_default" in m else "",
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
            f"{a.n_train} training fields with field labels only; `protloc train --cells --max-time {a.budget:g}` with "
            f"its defaults took {pipeline / 60:.1f} min wall on {os.cpu_count()} cores (load average at the end "
            f"{os.getloadavg()[0]:.1f}); intervals: 5-95 % over {a.resamples} bootstrap resamples of the test fields.",
            table(
                [
                    "method",
                    "mAP (IoU >= 0.6) [5-95 %]",
                    "minus true field labels copied",
                    "x field model copied",
                    "minus the default (paired)",
                ],
                rows,
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
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cells-work"))
    parser.add_argument("--reuse", action="store_true", help="reuse finished models in --work (for rescoring)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: the code path in a few minutes")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.n_train, args.n_test, args.size, args.resamples = 1.0, 30, 6, 128, 50
    bench = Bench(args, args.work / "data", args.work)
    for name, step, _ in STAGES:
        _timed(bench, name, lambda s=step: s(bench))
    scored = score(bench)
    save(
        "cells_quick" if args.quick else "cells",
        {
            "settings": vars(args) | {"work": str(args.work)},
            "seconds": bench.seconds,
            "cpu_seconds": bench.cpu_seconds,
            "notes": bench.notes,
            **scored,
        },
        markdown(bench, scored),
    )


if __name__ == "__main__":
    main()
