"""The main job end to end, in its one-minute form (what `make demo DEMO_ARGS=--quick` runs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from protloc.cli import main


@pytest.mark.slow
def test_quick_demo_runs_the_whole_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "validation macro F1" in printed and "test macro F1" in printed
    # the figures printed are the run's: validation from its report, test recomputed from the submission's truth
    validation = json.loads((out / "run" / "report.json").read_text())["macro_f1"]
    assert f"validation macro F1 {validation:.3f}" in printed
    from protloc.classes import HPA2018
    from protloc.data.catalog import open_dataset
    from protloc.inference.files import read_probabilities
    from protloc.metrics import evaluate
    from protloc.model.card import read_card

    card = read_card(out / "run" / "model")
    truth = open_dataset(out / "data", split="test", labels=out / "data" / "test_truth.csv")
    ids, probabilities = read_probabilities(out / "predictions" / "probabilities.csv", HPA2018)
    assert truth.labels is not None
    order = [ids.index(i) for i in truth.ids]
    test = evaluate(truth.labels, probabilities[order], card.thresholds, HPA2018.names, min_one=True).macro_f1
    assert f"test macro F1 {test:.3f}" in printed
    for step in ("Synthesizing", "Checking", "statistics", "Training", "Predicting", "ONNX", "HTML report"):
        assert step in printed, step
    for path in (
        "data/train.csv",
        "data/test_truth.csv",
        "stats/class_distribution.png",
        "run/model/card.json",
        "run/model/model.onnx",
        "run/training_curves.png",
        "predictions/submission.csv",
        "cells/cells.csv",
        "cells/submission.csv",
        "cells/cells.h5ad",
        "cells-baseline/cells.csv",
        "cells-run/model/card.json",
        "cells-run/model/field/card.json",
        "data/test_cells_truth/cells.csv",
        "report.html",
    ):
        assert (out / path).is_file(), path
    with (out / "predictions" / "submission.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100 and all(row["Predicted"] for row in rows)
    html = (out / "report.html").read_text()
    for section in (
        "Data set",
        "Training",
        "Validation fold",
        "Thresholds",
        "Test set",
        "Errors",
        "Gallery",
        "Single cells",
        "baseline: field labels to every cell",
        "per-cell mAP (2021, IoU &gt;= 0.6)",
        "Configuration and timings",
    ):
        assert section in html, section
    # a cell model trained in the demo against the baseline, on the same cells, with the figures printed
    from protloc.cells.outputs import evaluate_cells

    scores = {
        folder: evaluate_cells(out / folder, out / "data" / "test_cells_truth").map
        for folder in ("cells", "cells-baseline")
    }
    assert json.loads((out / "cells-baseline" / "cells_prediction.json").read_text())["masks"] == str(
        out / "cells" / "masks"
    )
    assert "cell model: " in printed and f"per-cell mAP {scores['cells']:.3f}" in printed
    assert f"per-cell mAP {scores['cells-baseline']:.3f}" in printed
    for name, value in (
        ("cell model", scores["cells"]),
        ("baseline: field labels to every cell", scores["cells-baseline"]),
    ):
        assert f"<tr><td>{name}</td><td><b>{value:.3f}</b></td>" in html
    assert read_card(out / "cells-run" / "model").cells is not None
    assert "The cell model trained for" in html and "inside this demo&#x27;s budget" in html
    assert html.count("data:image/png;base64,") >= 10  # pictures embedded: one file to share
    # both per-class tables (validation and test) say how each class's threshold was set
    methods = set(json.loads((out / "run" / "thresholds.json").read_text())["methods"].values())
    assert sum(html.count(f"<td>{method}</td></tr>") for method in methods) == 2 * 28
    assert 'src="http' not in html  # nothing fetched from elsewhere


def test_demo_refuses_missing_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 1
    assert "not found" in capsys.readouterr().err


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert main(["demo", "--quick", "--out", str(precious)]) == 1
    assert "holds other files than a previous demo" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"
