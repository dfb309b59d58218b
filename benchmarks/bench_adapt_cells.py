"""Adapting a cell model package (``protloc adapt`` on a cell package) on synthetic shifts with per-cell truth.

    python benchmarks/bench_adapt_cells.py [--work benchmarks/results/cells-work] [--run default]

The package is ``bench_cells.py``'s default pipeline (``WORK/runs/RUN/model``, trained on ``hpa_like`` dense
fields of 256 px with field labels only); its 100 test fields, with their per-cell truth, are shifted as a new
microscope would shift them:

* **as they are**: no shift (an adaptation must not hurt here);
* **gain 0.35**: every channel at 0.35 of its brightness (another camera gain, exposure or bit depth);
* **half magnification**: each field shrunk to half its side and four of them tiled into one field of the same
  side (cells half as wide in a field of the same pixel count; truth label images shrunk by nearest neighbour).

Each shifted set is scored as trained, adapted (``norm``: the cell model's and its field model's input statistics
re-estimated on 64 of the shifted fields, unlabelled, with ``adapt_package``, the command's library function),
and, for the half-magnification set, with the segmenter at each field's nucleus scale (``match_nuclei``, alone
and with ``norm``). The 2021 metric (mAP at mask IoU >= 0.6, each package segmenting the fields itself) with
5-95 % intervals over 1,000 bootstrap resamples of the fields (the same for every row of a shift) and the paired
difference to "as trained"; segmentation F1 at IoU 0.6. Results: ``benchmarks/results/adapt_cells.{json,md}``.
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

SHIFTS = ("as they are", "gain 0.35", "half magnification")


def _truths(data: Path) -> list[Any]:
    from protloc.cells.truth import read_cell_truth, truth_folder
    from protloc.data.catalog import open_dataset

    k = len(open_dataset(data, channels=None).scheme)
    ids = [line.split(",")[0] for line in (data / "test_truth.csv").read_text().splitlines()[1:]]
    return read_cell_truth(truth_folder(data, "test"), k, ids)


def _tile(parts: list[np.ndarray], labels: bool) -> np.ndarray:
    """Four planes shrunk to half their side, tiled 2 x 2 (labels: nearest neighbour, ids kept)."""
    import cv2

    shrunk = [
        cv2.resize(p, (p.shape[1] // 2, p.shape[0] // 2), interpolation=cv2.INTER_NEAREST if labels else cv2.INTER_AREA)
        for p in parts
    ]
    return np.block([[shrunk[0], shrunk[1]], [shrunk[2], shrunk[3]]])


def shifted_fields(data: Path, truths: list[Any], shift: str, out: Path) -> list[Any]:
    """The test fields under ``shift`` written to ``out`` (``<Id>_<channel>.png``), and their per-cell truth."""
    from protloc.cells.masks import FieldCells
    from protloc.data.catalog import open_dataset
    from protloc.data.io import CHANNELS, read_sample, write_channel

    catalog = open_dataset(data, split="test", channels=None)
    out.mkdir(parents=True)
    images = {t.id: read_sample(catalog.files[t.id], CHANNELS) for t in truths}
    if shift != "half magnification":
        gain = 0.35 if shift == "gain 0.35" else 1.0
        for t in truths:
            for channel, plane in zip(CHANNELS, images[t.id], strict=True):
                write_channel(out / f"{t.id}_{channel}.png", np.clip(plane * gain, 0, 255).astype(np.uint8))
        return truths
    tiled = []
    for first in range(0, len(truths), 4):  # fewer than a multiple of 4 fields: the last tile wraps round
        group = [truths[(first + k) % len(truths)] for k in range(4)]
        field_id = f"tile{first // 4:03d}"
        for c, channel in enumerate(CHANNELS):
            write_channel(out / f"{field_id}_{channel}.png", _tile([images[t.id][c] for t in group], False))
        offsets = np.cumsum([0] + [int(t.labels.max()) for t in group[:-1]])
        labels = _tile([np.where(t.labels > 0, t.labels + o, 0) for t, o in zip(group, offsets, strict=True)], True)
        present = set(np.unique(labels).tolist())
        cells = np.concatenate([t.cells + o for t, o in zip(group, offsets, strict=True)])
        values = np.concatenate([t.values for t in group])
        keep = np.asarray([int(c) in present for c in cells])  # a cell lost to shrinking is no longer truth
        tiled.append(FieldCells(field_id, labels.astype(np.int32), cells[keep], values[keep]))
    return tiled


def score(package: Path, folder: Path, truths: list[Any], options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The package's detections on the fields of ``folder`` (it segments them itself) and its segmentation."""
    from protloc.cells.masks import FieldCells
    from protloc.cells.metrics import field_detections
    from protloc.cells.outputs import score_fields
    from protloc.cells.predict import open_cell_predictor

    predictor = open_cell_predictor(package, segmenter_options=options)
    ids = [t.id for t in truths]
    fields = score_fields(predictor, folder, split=None, ids=ids)
    rule, negative = predictor.applied_fusion, predictor.scheme.exclusive
    predicted = [FieldCells(f.id, f.labels, f.cells, f.fused(rule, negative)) for f in fields]
    return field_detections(predicted, truths), [f.labels for f in fields]


def run_shift(args: argparse.Namespace, package: Path, truths: list[Any], shift: str) -> dict[str, Any]:
    from protloc.cells.metrics import bootstrap_maps, percentile_interval, pooled_map, segmentation_scores
    from protloc.training.adapt import AdaptationRefusedError, AdaptSettings, adapt_package

    work = args.work / "adapt-cells" / shift.replace(" ", "-")
    shutil.rmtree(work, ignore_errors=True)
    truths = shifted_fields(args.work / "data", truths, shift, work / "fields")
    variants: dict[str, tuple[Path, dict[str, Any] | None]] = {"as trained": (package, None)}
    began = time.perf_counter()
    least = {"min_fields": 2 if args.quick else 8, "min_cells": 8 if args.quick else 64}
    common = {"max_fields": 64, "seed": args.seed, "tolerance": args.tolerance, **least}
    refused: dict[str, str] = {}

    def adapted(name: str, out: Path, settings: AdaptSettings) -> None:
        try:
            variants[name] = (adapt_package(package, work / "fields", out, settings).out, None)
        except AdaptationRefusedError as refusal:  # the guard's answer is a result too: recorded, not a crash
            refused[name] = str(refusal).split(": adaptation refused: ", 1)[-1]

    adapted("adapted (norm)", work / "norm", AdaptSettings(**common))
    adapt_seconds = time.perf_counter() - began
    if shift == "half magnification":
        variants["as trained, match_nuclei"] = (package, {"match_nuclei": True})
        adapted("adapted (norm) with match_nuclei", work / "norm-nuclei", AdaptSettings(match_nuclei=True, **common))
    detections, segmentation = {}, {}
    for name, (model, options) in variants.items():
        detections[name], labels = score(model, work / "fields", truths, options)
        segmentation[name] = segmentation_scores(labels, [t.labels for t in truths], thresholds=(0.6,))[0].f1
    maps = bootstrap_maps(detections, resamples=args.resamples, seed=0)
    rows = {}
    for name, fields in detections.items():
        rows[name] = {
            "map": round(pooled_map(fields).map, 4),
            "interval_5_95": [round(v, 4) for v in percentile_interval(maps[name])],
            "minus_as_trained": round(pooled_map(fields).map - pooled_map(detections["as trained"]).map, 4),
            "minus_as_trained_5_95": [round(v, 4) for v in percentile_interval(maps[name] - maps["as trained"])],
            "segmentation_f1_iou_0.6": round(float(segmentation[name]), 3),
        }
    rows.update({name: {"refused": why} for name, why in refused.items()})
    return {
        "fields": len(truths),
        "true_cells": int(sum(len(t.cells) for t in truths)),
        "adapt_seconds": round(adapt_seconds, 1),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cells-work"))
    parser.add_argument("--run", default="default", help="the bench_cells run whose package is adapted")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=None, help="the guard's tolerance (default: adapt's own)")
    parser.add_argument("--quick", action="store_true", help="bench_cells --quick's work folder: the code path")
    args = parser.parse_args()
    from protloc.training.adapt import AdaptSettings

    if args.quick:
        args.resamples = 50
    if args.tolerance is None:
        # --quick's package is a minutes-long model whose source validation F1 moves by noise on any change: its
        # guard still runs, but only a collapse refuses, so the adapted code path is exercised every time
        args.tolerance = 0.5 if args.quick else AdaptSettings.tolerance
    package = args.work / "runs" / args.run / "model"
    truths = _truths(args.work / "data")
    results = {shift: run_shift(args, package, truths, shift) for shift in SHIFTS}
    lines = []
    for shift, result in results.items():
        for name, row in result["rows"].items():
            if "refused" in row:
                lines.append(
                    [
                        f"{shift} ({result['fields']} fields, {result['true_cells']} cells)",
                        name,
                        f"refused by the guard: {row['refused']}",
                        "",
                        "",
                    ]
                )
                continue
            lo, hi = row["interval_5_95"]
            dlo, dhi = row["minus_as_trained_5_95"]
            lines.append(
                [
                    f"{shift} ({result['fields']} fields, {result['true_cells']} cells)",
                    name,
                    f"**{row['map']:.3f}** [{lo:.3f}, {hi:.3f}]",
                    f"{row['minus_as_trained']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]" if name != "as trained" else "",
                    f"{row['segmentation_f1_iou_0.6']:.3f}",
                ]
            )
    text = table(["shift", "package", "mAP (IoU >= 0.6) [5-95 %]", "minus as trained [5-95 %]", "seg. F1 @0.6"], lines)
    save("adapt_cells_quick" if args.quick else "adapt_cells", {"package": str(package), "results": results}, text)


if __name__ == "__main__":
    main()
