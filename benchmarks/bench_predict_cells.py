"""``protloc predict --cells`` on full-size 16-bit fields: fields per second and peak memory on the 2 cores.

    python benchmarks/bench_predict_cells.py [--quick]

**Fields**: the seven genuine Kaggle 2021 fields of ``$PROTLOC_REALDATA/hpa2021_trainandgain`` (six 2048 px, one
3072 px, shipped as 8-bit PNG), written back as **16-bit** PNGs (x257, as the originals were) at 2048 px and at
3072 px (each field resized to the other size too), so each size has seven fields; synthetic fields when the
folder is absent.

**Model**: a package made by ``protloc train DATA --cells`` with its **default networks** (the field model:
resnet18 at 128 px; the cell model: resnet18 with its image head on 64 px crops; classical segmenter), trained for
one epoch on a few synthetic fields: a network's cost does not depend on how well it is trained.

**Measure**: each ``protloc predict MODEL FOLDER --cells`` runs in its own process (:func:`common.peak_rss_of`:
resident memory of the process and its workers, summed, polled every 50 ms), once on one field and once on all
seven: the steady rate is ``6 / (t7 - t1)`` (start-up, imports and model loading cancel out), also given as the
plain rate ``7 / t7``. Defaults otherwise (decoding workers and threads fitted to the CPUs by the budget).
Results: ``benchmarks/results/predict_cells.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_of, save, table

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ("red", "green", "blue", "yellow")


def cell_package(work: Path) -> Path:
    """A cell package with the pipeline's default networks, barely trained."""
    from protloc.synth import make_dataset
    from protloc.training.cells import CellPipelineSettings, train_cells

    data = work / "synth"
    make_dataset(data, n_train=24, n_test=1, size=256, seed=0, workers=1)
    settings = CellPipelineSettings(
        data=str(data), out=str(work / "run"), field_epochs=1, cell_epochs=1, folds=3, workers=1
    )
    return train_cells(settings).package_dir


def genuine_fields(quick: bool) -> tuple[Path | None, list[str]]:
    real = Path(os.environ.get("PROTLOC_REALDATA") or ROOT.parent / "shared" / "realdata")
    folder = real / "hpa2021_trainandgain" / "images"
    if not folder.is_dir():
        return None, []
    ids = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*_red.png")})
    return folder, ids[:2] if quick else ids


def write_16bit(source: Path | None, ids: list[str], side: int, out: Path) -> list[str]:
    """Each field as 16-bit PNGs of ``side`` px in ``out`` (synthetic 8-bit fields scaled when no genuine ones)."""
    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        from protloc.synth import make_dataset

        make_dataset(out.parent / f"synth-{side}", n_train=1, n_test=7, size=side, seed=1, workers=1)
        source = out.parent / f"synth-{side}" / "test"
        ids = sorted({p.name.rsplit("_", 1)[0] for p in source.glob("*_red.png")})
    for sample in ids:
        for channel in CHANNELS:
            plane = cv2.imread(str(source / f"{sample}_{channel}.png"), cv2.IMREAD_UNCHANGED)
            if plane.ndim == 3:
                plane = plane.max(axis=2)
            if plane.shape != (side, side):
                plane = cv2.resize(plane, (side, side), interpolation=cv2.INTER_LINEAR)
            wide = plane.astype(np.uint16) * 257 if plane.dtype == np.uint8 else plane.astype(np.uint16)
            cv2.imwrite(str(out / f"{sample}_{channel}.png"), wide)
    return ids


def run_predict(model: Path, folder: Path, ids: list[str], out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "protloc", "predict", str(model), str(folder), "--cells", "--out", str(out)]
    command += ["--ids", ",".join(ids)]
    started = time.perf_counter()
    peak, _ = peak_rss_of(command)
    seconds = time.perf_counter() - started
    rows = (out / "cells.csv").read_text().count("\n") - 1
    return {"fields": len(ids), "seconds": round(seconds, 2), "peak_mib": round(peak / 2**20), "cells": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two fields per size")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-predict-cells-"))
    model = cell_package(work)
    source, ids = genuine_fields(args.quick)
    records, rows = [], []
    for side in (2048, 3072):
        folder = work / f"fields-{side}"
        names = write_16bit(source, ids, side, folder)
        one = run_predict(model, folder, names[:1], work / f"out-{side}-1")
        every = run_predict(model, folder, names, work / f"out-{side}-all")
        steady = (len(names) - 1) / max(1e-9, every["seconds"] - one["seconds"])
        record = {"side": side, "one": one, "all": every, "steady_fields_per_s": round(steady, 2)}
        records.append(record)
        rows.append(
            [
                f"{side} px, 16-bit",
                len(names),
                every["cells"],
                f"{one['seconds']:.1f}",
                f"{every['seconds']:.1f}",
                f"**{steady:.2f}**",
                f"{len(names) / every['seconds']:.2f}",
                f"{every['peak_mib']} MiB",
            ]
        )
        print(record, flush=True)
    header = ["fields", "n", "cells", "1 field s", "all s", "fields/s (steady)", "fields/s (with start-up)", "peak RSS"]
    source_name = "genuine Kaggle 2021 fields" if source is not None else "synthetic fields"
    markdown = f"## predict --cells on full-size 16-bit fields ({source_name})\n\n" + table(header, rows)
    save("predict_cells_quick" if args.quick else "predict_cells", {"sizes": records}, markdown)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
