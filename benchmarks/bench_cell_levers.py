"""The levers of the single-cell pipeline, each measured on foreign data with bootstrap intervals (issue 19, item 2).

    python benchmarks/hpa_like.py DATA --family dense --scheme hpa2021 --n-train 600 --n-test 60 --size 256
    python benchmarks/bench_cell_levers.py DATA --work WORK --minutes 16 [--variants mil,plain,mil-rounds]

``DATA`` is a weakly labelled 2021-layout root with per-cell truth beside it (``hpa_like.py --scheme hpa2021``
writes ``train_cells_truth/`` and ``test_cells_truth/``). The pipeline (``protloc train DATA --cells``,
:func:`protloc.training.cells.train_cells`) sees the field labels only. One variant per way of training the
cell model, each a whole pipeline under the same ``--minutes`` (the segmentation, crops and field model of
the first are reused by the others: same settings, same stages, so the comparison is of the cell model alone):

* ``mil`` - the cell model with an image head over each field's cells (1 x image loss + 0.1 x cell loss);
* ``plain`` - the cell model trained crop by crop on its field's labels (protloc 0.2's weak cell model);
* ``mil-rounds`` - ``mil`` and one out-of-fold pseudo-label round;
* ``mil-weighted`` - ``mil`` with border and small cells weighing half in the cell loss.

Then every **rule** of combining what the models say is scored on the same test cells (segmented once), by
the 2021 mAP with 1,000 bootstrap resamples of the test fields: the 90 % interval of each, and of its
difference from the ``mil`` cell model alone (paired: the same resamples). Rules: the cell model alone, the
field model's probabilities to every cell (the baseline), the image head to every cell, cell x field,
cell x image head (the 2021 winners' score), the old 0.5 mix, CAM-in-mask alone and times the cell, the
Negative rules, border and small cells at half confidence, the pipeline's default, and the rule fitted on
the held-out training fields' per-cell truth (what ``--cell-truth`` does); for reference the true field
labels copied to every cell and the true per-cell labels on protloc's own masks (the segmentation's ceiling).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.cells.fusion import FusionSpec, fit_fusion
from protloc.cells.masks import FieldCells
from protloc.cells.metrics import CellMatches, match_cells, matched_map
from protloc.cells.outputs import fusion_inputs, score_fields
from protloc.cells.predict import FieldScores, open_cell_predictor
from protloc.cells.runner import segment_dataset
from protloc.cells.truth import read_cell_truth
from protloc.data.catalog import open_dataset
from protloc.training.cells import CellPipelineSettings, train_cells
from protloc.training.mil import MilSettings

VARIANTS: dict[str, dict[str, Any]] = {
    "mil": {},
    "plain": {"cell_head": "plain"},
    "mil-rounds": {"rounds": 1},
    "mil-weighted": {"mil": MilSettings(border_weight=0.5, small_weight=0.5)},
}

RULES: dict[str, FusionSpec] = {
    "cell model alone": FusionSpec(),
    "baseline: field model to every cell": FusionSpec("image"),
    "image head to every cell": FusionSpec("image", image="cell model"),
    "cell x field model": FusionSpec("product"),
    "cell x image head (2021 winners)": FusionSpec("product", image="cell model"),
    "cell^0.25 x image head^0.75": FusionSpec("geometric", weight=0.25, image="cell model"),
    "0.5 cell + 0.5 field (old default mix)": FusionSpec("mean", weight=0.5),
    "CAM-in-mask alone": FusionSpec("image", image="field model CAM"),
    "cell x CAM-in-mask": FusionSpec("product", image="field model CAM"),
    "cell x image head, Negative max": FusionSpec("product", image="cell model", negative="max"),
    "cell x image head, Negative none-of-others": FusionSpec("product", image="cell model", negative="none-of-others"),
    "cell alone, border and small x0.5": FusionSpec(border=0.5, small=0.5),
    "cell x image head, border and small x0.5": FusionSpec("product", image="cell model", border=0.5, small=0.5),
}


def run_variant(data: Path, work: Path, name: str, args: argparse.Namespace, base: Path | None) -> Path:
    out = work / name
    if base is not None and not out.exists():
        shutil.copytree(base, out)  # its segmentation, crops and field model are this variant's too
    settings = CellPipelineSettings(
        data=str(data),
        out=str(out),
        max_time=f"{args.minutes:g}",
        cache_dir=str(work / "cache"),
        field_model=args.model,
        cell_model=args.model,
        **VARIANTS[name],
    )
    started = time.perf_counter()
    result = train_cells(settings, on_progress=None)
    print(f"{name}: {time.perf_counter() - started:.0f} s, stages {list(result.stages)}", flush=True)
    return out


def scored(package: Path, data: Path, split: str, masks: Path, ids: list[str] | None = None) -> list[FieldScores]:
    predictor = open_cell_predictor(package, fusion=FusionSpec(), backend="torch")
    return score_fields(predictor, data, split=split, ids=ids, masks=masks, cam=True)


def fitted_rule(package: Path, data: Path, run: Path, negative: tuple[int, ...]) -> FusionSpec:
    """The rule fitted on the held-out training fields' per-cell truth (what --cell-truth does)."""
    import csv

    with (run / "field" / "folds.csv").open(newline="") as handle:
        held_out = [row["Id"] for row in csv.DictReader(handle) if row["fold"] == "0"]
    fields = scored(package, data, "train", run / "segmented", held_out)
    catalog = open_dataset(data, split="train", channels=None)
    labels = {i: catalog.labels[k] for k, i in enumerate(catalog.ids)}  # type: ignore[index]
    inputs = fusion_inputs(fields, np.stack([labels[f.id] for f in fields]))
    truths = read_cell_truth(data / "train_cells_truth", inputs.cell.shape[1], [f.id for f in fields])
    matches = match_cells([f.field_cells() for f in fields], truths)
    return fit_fusion(inputs, matches, negative=negative).spec


def references(matches: CellMatches, truths: list[FieldCells], field_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of the references: the true field labels copied to every cell, and the truth of the true cell each
    segmented cell matches (the best any classifier can do on these masks)."""
    copied = [
        np.tile(labels.astype(np.float64), (int(b - a), 1))
        for labels, a, b in zip(field_labels, matches.offsets[:-1], matches.offsets[1:], strict=True)
    ]
    return {
        "reference: true field labels to every cell": np.concatenate(copied),
        "reference: true per-cell labels on protloc's masks": matches.hits.astype(np.float64),
    }


def bootstrap(matches: CellMatches, scores: dict[str, np.ndarray], anchor: str, resamples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(matches.ids), size=(resamples, len(matches.ids)))
    out: dict[str, dict[str, float]] = {}
    anchor_maps = np.asarray([matched_map(matches, scores[anchor], d)[0] for d in draws])
    for name, values in scores.items():
        full = matched_map(matches, values)[0]
        maps = anchor_maps if name == anchor else np.asarray([matched_map(matches, values, d)[0] for d in draws])
        difference = maps - anchor_maps
        out[name] = {
            "map": round(full, 4),
            "low": round(float(np.nanpercentile(maps, 5)), 4),
            "high": round(float(np.nanpercentile(maps, 95)), 4),
            "vs_anchor": round(full - matched_map(matches, scores[anchor])[0], 4),
            "vs_anchor_low": round(float(np.nanpercentile(difference, 5)), 4),
            "vs_anchor_high": round(float(np.nanpercentile(difference, 95)), 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cell-levers-work"))
    parser.add_argument("--minutes", type=float, default=16.0, help="budget of each pipeline run")
    parser.add_argument("--variants", default="mil,plain,mil-rounds")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--model", default="resnet18", help="field and cell network (test_resnet for a smoke run)")
    args = parser.parse_args()
    started = time.perf_counter()
    work, data = args.work, args.data
    work.mkdir(parents=True, exist_ok=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    runs: dict[str, Path] = {}
    for name in variants:
        runs[name] = run_variant(data, work, name, args, runs.get(variants[0]))
    masks = work / "test_segmented"
    segment_dataset(data, masks, split="test", workers=2)
    catalog = open_dataset(data, split="test", labels=data / "test_truth.csv", channels=None)
    labels = {i: catalog.labels[k] for k, i in enumerate(catalog.ids)}  # type: ignore[index]
    all_scores: dict[str, np.ndarray] = {}
    matches: CellMatches | None = None
    fitted: dict[str, str] = {}
    for name, run in runs.items():
        package = run / "model"
        fields = scored(package, data, "test", masks)
        names = open_cell_predictor(package, fusion=FusionSpec()).scheme
        truths = read_cell_truth(data / "test_cells_truth", names.num_classes, [f.id for f in fields])
        if matches is None:
            matches = match_cells(
                [FieldCells(f.id, f.labels, f.cells, np.zeros((len(f.cells), 0))) for f in fields], truths
            )
            field_labels = np.stack([labels[f.id] for f in fields])
            all_scores.update(references(matches, truths, field_labels))
        negative = names.exclusive
        rules = dict(RULES)
        from protloc.training.cells import DEFAULT_FUSION

        rules["pipeline default (no per-cell truth)"] = DEFAULT_FUSION
        spec = fitted_rule(package, data, run, negative)
        fitted[name] = spec.describe()
        rules["fitted on held-out training fields' per-cell truth"] = spec
        for rule, value in rules.items():
            if value.image == "cell model" and (value.needs_image) and fields[0].head is None:
                continue
            all_scores[f"{name}: {rule}"] = np.concatenate([f.fused(value, negative) for f in fields])
    assert matches is not None
    anchor = f"{variants[0]}: cell model alone"
    results = bootstrap(matches, all_scores, anchor, args.resamples, seed=0)
    rows = [
        [
            name,
            f"{r['map']:.3f}",
            f"{r['low']:.3f}-{r['high']:.3f}",
            f"{r['vs_anchor']:+.3f}",
            f"{r['vs_anchor_low']:+.3f} to {r['vs_anchor_high']:+.3f}",
        ]
        for name, r in sorted(results.items(), key=lambda item: -item[1]["map"])
    ]
    markdown = "\n\n".join(
        [
            f"{len(matches.ids)} test fields, {len(matches.cells)} segmented cells; each pipeline `protloc train "
            f"DATA --cells --max-time {args.minutes:g}`; {round(time.perf_counter() - started)} s in all.",
            table(["method", "mAP", "90% interval", f"vs {anchor}", "90% interval"], rows),
            "fitted rules: " + "; ".join(f"{k}: {v}" for k, v in fitted.items()),
        ]
    )
    stages = {name: _stages(run) for name, run in runs.items()}
    save(
        "cell_levers",
        {
            "settings": vars(args) | {"work": str(work), "data": str(data)},
            "stages": stages,
            "fitted": fitted,
            "results": results,
        },
        markdown,
    )


def _stages(run: Path) -> dict[str, Any]:
    import json

    return {k: v["seconds"] for k, v in json.loads((run / "pipeline.json").read_text())["stages"].items()}


if __name__ == "__main__":
    main()
