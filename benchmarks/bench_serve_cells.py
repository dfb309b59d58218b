"""The service's cells: what ``POST /predict?cells=true`` costs over ``/predict`` on real fields, and where the time
goes (segmentation, scoring the cells, encoding masks and outlines), with the size of the answer.

    python benchmarks/bench_serve_cells.py [--fields 3] [--quick]

Real HPA fields from ``$PROTLOC_REALDATA`` (default ``<repo>/../shared/realdata``): the Kaggle 2021 fields
(2048 px) and the Kaggle 2018 ones (512 px); synthetic 512 px fields when that folder is absent. Models: a field
model (test_resnet at 256 px) and a cell model (test_resnet at 64 px crops, classical segmenter), untrained: they
time the same as trained ones. One request at a time through ``fastapi.testclient`` (in process, no socket), after
one warm-up request.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ("red", "green", "blue", "yellow")


def package(folder: Path, size: int, cells: dict[str, Any] | None) -> Path:
    import torch

    from protloc.classes import HPA2018
    from protloc.model.network import PackagedNetwork, create_model
    from protloc.model.package import new_card, save_package

    torch.manual_seed(0)
    network = create_model("test_resnet", 4, HPA2018.num_classes, image_size=size)
    card = new_card(
        architecture={"name": "test_resnet", "in_chans": 4, "num_classes": HPA2018.num_classes, "image_size": size},
        channels=list(CHANNELS),
        size=size,
        mean=[0.1] * 4,
        std=[0.2] * 4,
        thresholds=[0.5] * HPA2018.num_classes,
        **({"cells": cells} if cells is not None else {}),
        scheme="hpa2018",
    )
    return save_package(folder, PackagedNetwork(network, [0.1] * 4, [0.2] * 4), card)


def field_sets(count: int, work: Path) -> list[tuple[str, Path, list[str]]]:
    """(name, images folder, ids) for each set of fields measured."""
    real = Path(os.environ.get("PROTLOC_REALDATA") or ROOT.parent / "shared" / "realdata")
    sets = []
    for name, sub in (
        ("Kaggle 2021, 2048 px", "hpa2021_trainandgain"),
        ("Kaggle 2018, 512 px", "kaggle2018_akashpalrecha"),
    ):
        folder = real / sub / "images"
        if folder.is_dir():
            ids = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*_red.png")})
            sets.append((name, folder, ids[:count]))
    if not sets:
        from protloc.synth import make_dataset

        make_dataset(work / "synth", n_train=1, n_test=count, size=512, seed=0, workers=1, cells=True)
        folder = work / "synth" / "test"
        ids = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*_red.png")})
        sets.append(("synthetic, 512 px", folder, ids))
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, default=3, help="fields per set")
    parser.add_argument("--quick", action="store_true", help="one field per set")
    args = parser.parse_args()
    count = 1 if args.quick else args.fields

    from fastapi.testclient import TestClient

    from protloc.serve import create_app

    work = Path(tempfile.mkdtemp(prefix="bench-serve-cells-"))
    cell = package(work / "cell", 64, {"crop_size": 64, "padding": 0.05, "segmentation": {"segmenter": "classical"}})
    field = package(work / "field", 256, None)
    app = create_app(field, backend="torch", cell_model=cell)
    rows, records = [], []
    with TestClient(app) as client:
        sets = field_sets(count, work)

        def files(folder: Path, sample: str) -> dict[str, tuple[str, bytes, str]]:
            return {
                c: (f"{sample}_{c}.png", (folder / f"{sample}_{c}.png").read_bytes(), "image/png") for c in CHANNELS
            }

        client.post("/predict?cells=true", files=files(sets[0][1], sets[0][2][0]))  # warm-up
        for name, folder, ids in sets:
            for sample in ids:
                sent = files(folder, sample)
                started = time.perf_counter()
                plain = client.post("/predict", files=sent)
                plain_seconds = time.perf_counter() - started
                started = time.perf_counter()
                answer = client.post("/predict?cells=true", files=sent)
                cells_seconds = time.perf_counter() - started
                if plain.status_code != 200 or answer.status_code != 200:
                    raise SystemExit(f"{sample}: HTTP {plain.status_code} / {answer.status_code}: {answer.text[:300]}")
                info = answer.json()["cell_info"]
                timing = info["timing"]
                record = {
                    "set": name,
                    "id": sample,
                    "cells": info["count"],
                    "predict_s": round(plain_seconds, 3),
                    "cells_s": round(cells_seconds, 3),
                    **{f"{k}_s": round(v, 3) for k, v in timing.items()},
                    "answer_kb": round(len(answer.content) / 1e3, 1),
                    "plain_kb": round(len(plain.content) / 1e3, 1),
                }
                records.append(record)
                rows.append(
                    [
                        name,
                        info["count"],
                        f"{plain_seconds:.2f}",
                        f"{cells_seconds:.2f}",
                        f"{timing['segment']:.2f}",
                        f"{timing['score']:.2f}",
                        f"{timing['encode']:.2f}",
                        f"{record['answer_kb']:.0f} kB",
                    ]
                )
    header = ["fields", "cells", "/predict s", "?cells=true s", "segment s", "score s", "encode s", "answer"]
    markdown = "## Service: /predict?cells=true\n\n" + table(header, rows)
    save("serve_cells", {"fields": records}, markdown)


if __name__ == "__main__":
    main()
