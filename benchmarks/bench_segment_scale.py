"""The classical segmenter at another magnification: the working side alone, or matched to the field's nuclei.

    python benchmarks/bench_segment_scale.py [--n-test 30] [--quick]

The classical segmenter's lengths and areas assume an HPA field of view on its working plane; a microscope at
another magnification or pixel size (or a crop of a field) shows cells larger or smaller than that
(issue 23). ``match_nuclei=true`` measures the field's nuclei first and scales the settings to them.

**Fields**: test fields with per-cell truth of both generators (``benchmarks/hpa_like_cells.py``,
dense, 256 px, and ``protloc.synth``, 256 px; made by ``bench_cell_boundaries.py``'s ``make_sets``), each
shown at three magnifications: as made (1x), its central half enlarged 2x (cells 2x larger, 4x the area),
and four fields tiled 2x2 and shrunk to 256 px (cells 2x smaller). Label images go through the same
transformation (nearest neighbour). Scores: cells found against true, matched-cell F1 at IoU 0.5 and 0.75.
On the seven genuine 2021 fields of ``../shared/realdata`` (no masks): cells found against a person's count,
as they are and with ``match_nuclei`` (it must not spoil an HPA field). Results:
``benchmarks/results/segment_scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cell_boundaries import EYE_COUNTS, make_sets, real_counts
from common import save, table
from protloc.cells.metrics import segmentation_scores
from protloc.cells.segment import ClassicalSegmenter
from protloc.cells.truth import read_cell_truth

MODES: list[tuple[str, dict[str, Any]]] = [
    ("working side only (default)", {}),
    ("match_nuclei", {"match_nuclei": True}),
]


def _resize(plane: np.ndarray, side: int, labels: bool) -> np.ndarray:
    method = cv2.INTER_NEAREST if labels else cv2.INTER_AREA if plane.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(plane, (side, side), interpolation=method)


def magnified(images: list[np.ndarray], truths: list[np.ndarray], zoom: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(field (C, H, W), label image) pairs at ``zoom`` (1, 2: central half enlarged, 0.5: 2x2 tiles shrunk)."""
    out = []
    if zoom == 1:
        return list(zip(images, truths, strict=True))
    if zoom == 2:
        for image, truth in zip(images, truths, strict=True):
            side = image.shape[1]
            a, b = side // 4, side // 4 + side // 2
            field = np.stack([_resize(p[a:b, a:b], side, False) for p in image])
            out.append((field, _resize(truth[a:b, a:b], side, True)))
        return out
    for first in range(0, len(images) - 3, 4):  # zoom 0.5: four fields in a 2x2 mosaic, shrunk to one side
        group = range(first, first + 4)
        side = images[first].shape[1]
        planes = [np.block([[images[i][c] for i in group[:2]], [images[i][c] for i in group[2:]]]) for c in range(4)]
        offsets = np.cumsum([0] + [int(truths[i].max()) for i in group])
        shifted = [np.where(truths[i] > 0, truths[i] + offsets[k], 0) for k, i in enumerate(group)]
        mosaic = np.block([[shifted[0], shifted[1]], [shifted[2], shifted[3]]]).astype(np.int32)
        out.append((np.stack([_resize(p, side, False) for p in planes]), _resize(mosaic, side, True)))
    return out


def score(pairs: list[tuple[np.ndarray, np.ndarray]], settings: dict[str, Any]) -> dict[str, Any]:
    segmenter = ClassicalSegmenter(channels=("red", "green", "blue", "yellow"), **settings)
    found = [segmenter(image) for image, _ in pairs]
    truth = [_renumbered(t) for _, t in pairs]
    seg = {str(s.threshold): round(s.f1, 3) for s in segmentation_scores(found, truth)}
    return {
        "cells": int(sum(len(np.unique(f)) - 1 for f in found)),
        "true_cells": int(sum(len(np.unique(t)) - 1 for t in truth)),
        "f1": seg,
    }


def _renumbered(labels: np.ndarray) -> np.ndarray:
    """Cells consecutively numbered (nearest-neighbour resizing may drop a tiny one)."""
    ids = np.unique(labels)
    lookup = np.zeros(int(ids.max()) + 1, np.int32)
    lookup[ids] = np.arange(len(ids), dtype=np.int32)
    return lookup[labels]


def load(root: Path, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from protloc.cells.truth import truth_folder
    from protloc.data.catalog import open_dataset
    from protloc.data.io import CHANNELS, read_sample

    catalog = open_dataset(root, split="test", channels=None)
    ids = list(catalog.ids)[:count]
    truths = read_cell_truth(truth_folder(root, "test"), len(catalog.scheme), ids)
    return [read_sample(catalog.files[i], CHANNELS) for i in ids], [t.labels for t in truths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cell-boundaries-work"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n_test = 8
    sets = {k: v for k, v in make_sets(args.work, max(args.n_test, 8)).items() if "256" in k and "sparse" not in k}
    results: dict[str, Any] = {}
    rows = []
    for name, root in sets.items():
        images, truths = load(root, args.n_test)
        for zoom in (1, 2, 0.5):
            pairs = magnified(images, truths, zoom)
            for mode, settings in MODES:
                scored = score(pairs, settings)
                results[f"{name} | {zoom}x | {mode}"] = scored
                f1 = scored["f1"]
                rows.append(
                    [
                        name,
                        f"{zoom:g}x",
                        mode,
                        f"{scored['cells']} / {scored['true_cells']}",
                        f"{f1['0.5']:.3f}",
                        f"**{f1['0.75']:.3f}**",
                    ]
                )
                print(rows[-1], flush=True)
    real_rows = []
    for mode, settings in MODES:
        counts = real_counts(settings)
        results[f"genuine 2021 | {mode}"] = counts
        if counts is not None:
            error = sum(abs(counts[k] - EYE_COUNTS[k]) for k in EYE_COUNTS)
            real_rows.append([mode, *(f"{counts[k]}" for k in EYE_COUNTS), str(error)])
    markdown = "\n\n".join(
        [
            f"{args.n_test} test fields per set (the 0.5x rows: {args.n_test // 4} mosaics of four).",
            table(["fields", "magnification", "segmenter", "cells found / true", "F1 @0.5", "F1 @0.75"], rows),
            table(["segmenter", *(f"{k} ({v})" for k, v in EYE_COUNTS.items()), "total miscount"], real_rows)
            if real_rows
            else "genuine 2021 fields not found",
        ]
    )
    save("segment_scale_quick" if args.quick else "segment_scale", {"results": results}, markdown)


if __name__ == "__main__":
    main()
