"""Cell segmentation speed and memory on 2048 and 3072 px fields (classical segmenter).

    python benchmarks/bench_segment.py [--quick]

Fields: the seven genuine HPA 2021 fields of ../shared/realdata/hpa2021_trainandgain (six 2048 px, one
3072 px) and, to have as many of each size, each of them resized to the other size (linear). Two
measurements:

* in one process, one core: reading a field's three channels (PNG decode), segmenting it, both per field;
* ``protloc segment`` as a subprocess with 1 and 2 workers: wall time (interpreter start included) and peak
  resident memory of the process and its workers together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, peak_rss_of, save, table
from protloc.cells.segment import ClassicalSegmenter
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("PROTLOC_REALDATA", ROOT.parent / "shared" / "realdata"))
SOURCE = REALDATA / "hpa2021_trainandgain" / "images"


def build_fields(work: Path, side: int, limit: int) -> Path:
    """Folder of the real 2021 fields at ``side`` px (resized where they are another size)."""
    folder = work / f"fields{side}"
    folder.mkdir(parents=True)
    catalog = open_dataset(SOURCE, channels=None)
    for sample_id in catalog.ids[:limit]:
        for channel in ("blue", "red", "yellow", "green"):
            source = catalog.files[sample_id][channel]
            plane = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
            if plane.shape[0] != side:
                plane = cv2.resize(plane, (side, side), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(folder / f"{sample_id}_{channel}.png"), plane, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return folder


def in_process(folder: Path) -> dict[str, float]:
    catalog = open_dataset(folder, channels=None)
    segmenter = ClassicalSegmenter()
    read_s, segment_s, cpu_s, cells = [], [], [], 0
    for sample_id in catalog.ids:
        start, cpu_start = time.perf_counter(), time.process_time()
        image = read_sample(catalog.files[sample_id], segmenter.channels)
        middle = time.perf_counter()
        labels = segmenter(image)
        end = time.perf_counter()
        cpu_s.append(time.process_time() - cpu_start)
        read_s.append(middle - start)
        segment_s.append(end - middle)
        cells += int(labels.max())
    total = sum(read_s) + sum(segment_s)
    return {
        "fields": len(catalog),
        "cells": cells,
        "read_s_per_field": round(median(read_s), 3),
        "segment_s_per_field": round(median(segment_s), 3),
        "cells_per_s_one_core": round(cells / total, 1),
        # CPU time does not grow when other processes share the cores (wall time does)
        "cpu_s_per_field": round(median(cpu_s), 3),
        "cells_per_cpu_s": round(cells / sum(cpu_s), 1),
    }


def working_resolution(folder: Path, sides: tuple[int, ...] = (384, 512, 768, 1024)) -> list[list[object]]:
    """Time per field and agreement with the finest working resolution (matched-cell F1 at IoU 0.5 / 0.75)."""
    from protloc.cells.metrics import segmentation_scores

    catalog = open_dataset(folder, channels=None)
    images = [read_sample(catalog.files[i], ClassicalSegmenter().channels) for i in catalog.ids]
    results = {}
    for side in sides:
        segmenter = ClassicalSegmenter(work_side=side)
        start = time.process_time()
        labels = [segmenter(image) for image in images]
        results[side] = (labels, (time.process_time() - start) / len(images))
    reference = results[sides[-1]][0]
    rows: list[list[object]] = []
    for side in sides:
        labels, seconds = results[side]
        half, three_quarters = segmentation_scores(labels, reference)
        cells = sum(int(x.max()) for x in labels)
        rows.append([side, cells, round(seconds, 3), round(half.f1, 3), round(three_quarters.f1, 3)])
    return rows


def subprocess_run(folder: Path, out: Path, workers: int) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "protloc", "segment", str(folder), "--out", str(out), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    peak, seconds = peak_rss_of(command, env=env)
    cells = sum(1 for _ in (out / "cells.csv").open()) - 1
    return {"workers": workers, "wall_s": round(seconds, 2), "cells": cells, "peak_rss_mb": round(peak / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two fields per size, one worker count")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        sys.exit(f"bench_segment: real fields not found at {SOURCE} (set PROTLOC_REALDATA)")
    limit = 2 if args.quick else 7
    results: dict[str, object] = {"channels": list(CHANNELS), "fields_source": str(SOURCE)}
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        for side in (2048, 3072):
            folder = build_fields(work, side, limit)
            one = in_process(folder)
            runs = [subprocess_run(folder, work / f"out{side}", w) for w in ((1,) if args.quick else (1, 2))]
            results[str(side)] = {"in_process": one, "cli": runs}
            for run in runs:
                rows.append(
                    [
                        f"{side} px",
                        one["fields"],
                        one["cells"],
                        one["read_s_per_field"],
                        one["segment_s_per_field"],
                        one["cells_per_s_one_core"],
                        one["cpu_s_per_field"],
                        one["cells_per_cpu_s"],
                        run["workers"],
                        run["wall_s"],
                        round(run["cells"] / run["wall_s"], 1),
                        run["peak_rss_mb"],
                    ]
                )
    markdown = table(
        [
            "field",
            "fields",
            "cells",
            "read s/field",
            "segment s/field",
            "cells/s (1 core, in process)",
            "CPU s/field (read + segment)",
            "cells per CPU s",
            "CLI workers",
            "CLI wall s",
            "CLI cells/s",
            "CLI peak RSS MB",
        ],
        rows,
    )
    if not args.quick:
        with tempfile.TemporaryDirectory() as temp:
            folder = build_fields(Path(temp), 2048, limit)
            resolution = working_resolution(folder)
        results["working_resolution_2048"] = resolution
        markdown += "\n\nWorking resolution on the 2048 px fields (agreement with work_side 1024):\n\n" + table(
            ["work_side", "cells", "segment CPU s/field", "F1 @ IoU 0.5", "F1 @ IoU 0.75"], resolution
        )
    save("segment_quick" if args.quick else "segment", results, markdown)


if __name__ == "__main__":
    main()
