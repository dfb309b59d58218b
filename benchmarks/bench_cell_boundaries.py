"""Where cell boundaries go wrong at the 2021 metric's cut, and what each change to the classical segmenter buys.

    python benchmarks/bench_cell_boundaries.py [--n-test 60] [--quick]

Issue 19: matched-cell F1 at IoU 0.75 of 0.76 left many masks near the metric's 0.6. The classical segmenter's
body watershed followed the cytoplasm signal alone, so (1) a nucleus darker than its cytoplasm in the
microtubule and ER channels was a barrier around its own seed that a neighbour's body flowed around, leaving
the cell its nucleus only, and (2) between touching cells without a dim valley the boundary wandered with the
noise. Each step below is a setting of :class:`protloc.cells.segment.ClassicalParams`, applied in turn:

* ``before``: the signal alone (``fill_nuclei=False``, ``distance_weight=0``), the segmenter before issue 19;
* ``+ nuclei filled``: the signal raised inside nuclei (``fill_nuclei``);
* ``+ distance 0.3`` (the default): the elevation rises with distance from the nearest nucleus.

Scored on the test fields of **both** generators with per-cell truth (``benchmarks/hpa_like_cells.py``,
dense and sparse, 256 px; ``protloc.synth`` at 128 and 256 px), segmented with the defaults (no
setting scaled by hand): segmentation F1 at IoU 0.5 / 0.6 / 0.75 and the 2021 mAP two classifiers independent
of any model get on those masks: the TRUE field labels copied onto every cell, and true per-cell labels (the
ceiling). On the seven genuine 2021 fields of ``../shared/realdata`` (no masks), the cells found against a
person's count (docs/cells.md). Results: ``benchmarks/results/cell_boundaries.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.cells.masks import FieldCells
from protloc.cells.metrics import cell_map, segmentation_scores
from protloc.cells.segment import ClassicalSegmenter
from protloc.cells.truth import field_labels_on_cells, read_cell_truth, truth_on_cells

STEPS: list[tuple[str, dict[str, Any]]] = [
    ("before (signal only)", {"fill_nuclei": False, "distance_weight": 0.0}),
    ("+ nuclei filled", {"distance_weight": 0.0}),
    ("+ distance 0.3 (default)", {}),
]
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "hpa2021_trainandgain" / "images"
EYE_COUNTS = {
    "000a6c98": 20,
    "5c27f04c": 8,
    "94e33c64": 17,
    "a34d8680": 16,
    "a7faf0b4": 11,
    "b6a469d8": 11,
    "f0ac7116": 48,
}
"""A person's count of the seven genuine fields (docs/cells.md, tests/test_cells_segment.py)."""


def make_sets(work: Path, n_test: int) -> dict[str, Path]:
    import hpa_like_cells
    from protloc.synth import make_dataset

    sets = {}
    for family in ("dense", "sparse"):
        root = work / f"hpa_like-{family}"
        if not (root / "test_cells_truth" / "cells.csv").is_file():
            hpa_like_cells.make(root, family, 1, n_test, size=256, seed=11, workers=2)
        sets[f"hpa_like 2021 {family}, 256 px"] = root
    for size in (128, 256):
        root = work / f"synth-{size}"
        if not (root / "test_cells_truth" / "cells.csv").is_file():
            make_dataset(root, n_train=1, n_test=n_test, size=size, seed=11, cells=True, overwrite=True, workers=2)
        sets[f"protloc.synth, {size} px"] = root
    return sets


def score_set(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from protloc.data.catalog import open_dataset
    from protloc.data.io import read_sample

    catalog = open_dataset(root, split="test", labels=root / "test_truth.csv", channels=None)
    assert catalog.labels is not None
    truths = read_cell_truth(root / "test_cells_truth", len(catalog.scheme), catalog.ids)
    segmenter = ClassicalSegmenter(**settings)
    cells = []
    for sample_id in catalog.ids:
        labels = segmenter(read_sample(catalog.files[sample_id], segmenter.channels))
        ids = np.unique(labels)
        ids = ids[ids > 0].astype(np.int64)
        cells.append(FieldCells(sample_id, labels, ids, np.zeros((len(ids), len(catalog.scheme)))))
    seg = segmentation_scores([c.labels for c in cells], [t.labels for t in truths])
    copied = field_labels_on_cells(cells, dict(zip(catalog.ids, catalog.labels, strict=True)))
    return {
        "cells": int(sum(len(c.cells) for c in cells)),
        "true_cells": int(sum(len(t.cells) for t in truths)),
        "f1": {str(s.threshold): round(s.f1, 3) for s in seg},
        "map_true_field_labels": round(cell_map(copied, truths).map, 4),
        "map_true_cell_labels": round(cell_map(truth_on_cells(cells, truths), truths).map, 4),
    }


def real_counts(settings: dict[str, Any]) -> dict[str, int] | None:
    if not REALDATA.is_dir():
        return None
    from protloc.data.catalog import open_dataset
    from protloc.data.io import read_sample

    catalog = open_dataset(REALDATA, channels=None)
    segmenter = ClassicalSegmenter(**settings)
    return {
        i[:8]: int(segmenter(read_sample(catalog.files[i], segmenter.channels)).max())
        for i in catalog.ids
        if i[:8] in EYE_COUNTS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cell-boundaries-work"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n_test = 6
    sets = make_sets(args.work, args.n_test)
    results: dict[str, Any] = {}
    rows = []
    for step, settings in STEPS:
        results[step] = {"settings": settings, "sets": {}, "real": real_counts(settings)}
        for name, root in sets.items():
            scored = score_set(root, settings)
            results[step]["sets"][name] = scored
            f1 = scored["f1"]
            rows.append(
                [
                    step,
                    name,
                    f"{scored['cells']} / {scored['true_cells']}",
                    f"{f1['0.5']:.3f}",
                    f"{f1['0.6']:.3f}",
                    f"**{f1['0.75']:.3f}**",
                    f"{scored['map_true_field_labels']:.3f}",
                    f"{scored['map_true_cell_labels']:.3f}",
                ]
            )
        print(step, results[step]["real"], flush=True)
    real_rows = []
    for step, _ in STEPS:
        counts = results[step]["real"]
        if counts is not None:
            error = sum(abs(counts[k] - EYE_COUNTS[k]) for k in EYE_COUNTS)
            real_rows.append([step, *(f"{counts[k]}" for k in EYE_COUNTS), str(error)])
    markdown = "\n\n".join(
        [
            f"{args.n_test} test fields per set; classical segmenter, defaults otherwise.",
            table(
                [
                    "step",
                    "fields",
                    "cells found / true",
                    "F1 @0.5",
                    "F1 @0.6",
                    "F1 @0.75",
                    "mAP, true field labels copied",
                    "mAP, true per-cell labels (ceiling)",
                ],
                rows,
            ),
            table(["step", *(f"{k} ({v})" for k, v in EYE_COUNTS.items()), "total miscount"], real_rows)
            if real_rows
            else "genuine 2021 fields not found",
        ]
    )
    save(
        "cell_boundaries_quick" if args.quick else "cell_boundaries",
        {"n_test": args.n_test, "results": results},
        markdown,
    )


if __name__ == "__main__":
    main()
