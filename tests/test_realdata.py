"""Every command on genuine HPA fields: ``../shared/realdata`` (62 fields of the 2018 and 2021 releases).

The folder sits beside the repository (never inside it: the images are the Human Protein Atlas's, CC BY-SA 3.0).
``PROTLOC_REALDATA`` points elsewhere. The module skips only when the folder is absent (a user's clone); with
``PROTLOC_REQUIRE_REALDATA`` set (``.ci/run`` sets it) the absence is a failure, as for the browser tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protloc.cli import main
from protloc.data.catalog import open_dataset
from protloc.data.check import check_dataset
from tests.helpers import realdata

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real() -> Path:
    realdata("kaggle2018_akashpalrecha/labels.csv")
    return realdata()


def test_every_release_folder_reads_with_its_scheme(real: Path) -> None:
    r2018 = open_dataset(real / "kaggle2018_akashpalrecha")
    assert len(r2018) == 50 and r2018.scheme.name == "hpa2018" and r2018.labels is not None
    r2021 = open_dataset(real / "hpa2021_trainandgain")
    assert len(r2021) == 7 and r2021.scheme.name == "hpa2021" and r2021.labels is not None
    assert r2021.scheme.names_of(r2021.labels[r2021.ids.index("a34d8680-bb99-11e8-b2b9-ac1f6b6435d0")]) == ["Negative"]
    assert open_dataset(real / "kaggle2018_dungmn").scheme.name == "hpa2018"


@pytest.mark.parametrize("folder", ["kaggle2018_akashpalrecha", "kaggle2018_dungmn", "hpa2021_trainandgain"])
def test_check_passes_on_genuine_fields(real: Path, folder: str) -> None:
    report = check_dataset(real / folder, workers=1)
    assert report.ok, [p.message for p in report.errors][:3]
    assert sum(report.samples.values()) == {"kaggle2018_akashpalrecha": 50, "kaggle2018_dungmn": 1}.get(folder, 7)


def test_check_cli_names_the_2021_scheme_and_refuses_the_wrong_one(
    real: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(real / "hpa2021_trainandgain"), "--quick"]) == 0
    assert "hpa2021 (19 classes)" in capsys.readouterr().out
    assert main(["check", str(real / "hpa2021_trainandgain"), "--quick", "--classes", "hpa2018"]) == 1
    assert "is the hpa2021 (19 classes) layout" in capsys.readouterr().out


def test_stats_and_show_on_genuine_fields(real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(real / "hpa2021_trainandgain"), "--out", str(tmp_path / "s"), "--pixel-images", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Vesicles and punctate cytosolic patterns" in printed and "hpa2021" in printed
    saved = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert saved["scheme"] == "hpa2021" and len(saved["class_counts"]) == 19 and saved["class_counts"][18] == 1
    # genuine fields are mostly dark: the blue (nucleus) channel is black over most of a field
    assert 0.3 < saved["channels"]["blue"]["fraction_zero"] < 0.99
    sample = open_dataset(real / "kaggle2018_akashpalrecha").ids[0]
    assert main(["show", str(real / "kaggle2018_akashpalrecha"), sample, "--out", str(tmp_path / "one.png")]) == 0
    with Image.open(tmp_path / "one.png") as image:
        assert image.size[0] > 3 * image.size[1]
    negative = "a34d8680-bb99-11e8-b2b9-ac1f6b6435d0"  # a 2048 px 2021 field labelled Negative
    assert main(["show", str(real / "hpa2021_trainandgain"), negative, "--out", str(tmp_path / "two.png")]) == 0
    assert "(Negative)" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_explain_evaluate_on_genuine_fields(
    real: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = trained_run / "model"
    r2018 = real / "kaggle2018_akashpalrecha"
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(r2018), "--out", str(out), "--workers", "1"]) == 0
    rows = (out / "probabilities.csv").read_text().splitlines()
    assert len(rows) == 51 and rows[0].split(",")[1] == "Nucleoplasm"
    # the 2021 fields are 2048-3072 px: prediction resizes them like any other field
    out21 = tmp_path / "pred21"
    assert main(["predict", str(model), str(real / "hpa2021_trainandgain"), "--out", str(out21), "--workers", "1"]) == 0
    assert len((out21 / "predictions.csv").read_text().splitlines()) == 8
    sample = open_dataset(r2018).ids[0]
    assert main(["explain", str(model), str(r2018), sample, "--out", str(tmp_path / "x.png")]) == 0
    with Image.open(tmp_path / "x.png") as image:
        assert image.size[0] > 200
    assert main(["evaluate", str(model), str(r2018), "--out", str(tmp_path / "ev"), "--workers", "1"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["scheme"] == "hpa2018"
    # the report's macro F1 is the one of the probabilities `predict` wrote for the same fields, at the card's rule
    from protloc.inference.files import read_probabilities
    from protloc.metrics import evaluate
    from protloc.model.card import read_card

    card = read_card(model)
    ids, probabilities = read_probabilities(out / "probabilities.csv", card.scheme)
    truth_catalog = open_dataset(r2018)
    assert truth_catalog.labels is not None
    truth = truth_catalog.labels[[truth_catalog.ids.index(i) for i in ids]]
    expected = evaluate(truth, probabilities, card.thresholds, card.scheme.names, min_one=card.decision.min_one)
    assert report["summary"]["macro_f1"] == pytest.approx(expected.macro_f1, abs=6e-5)  # the summary rounds to 4 places
    assert report["summary"]["n_samples"] == 50
    capsys.readouterr()
    # a 2018 model on 2021 labels is refused, with the scheme in the message
    assert main(["evaluate", str(model), str(real / "hpa2021_trainandgain"), "--workers", "1"]) == 1
    assert "labelled in hpa2021 (19 classes) but the model predicts hpa2018" in capsys.readouterr().err


@pytest.mark.slow
def test_service_predicts_a_genuine_field(real: Path, trained_run: Path) -> None:
    from fastapi.testclient import TestClient

    from protloc.serve import create_app

    folder = real / "kaggle2018_dungmn"
    catalog = open_dataset(folder)
    paths = catalog.paths(0)
    files = {c: (p.name, p.read_bytes(), "image/png") for c, p in paths.items()}
    with TestClient(create_app(trained_run / "model", backend="torch"), base_url="http://localhost") as client:
        response = client.get("/model")
        assert response.status_code == 200, response.text
        info = response.json()
        assert info["scheme"]["name"] == "hpa2018" and len(info["classes"]) == 28
        response = client.post("/predict", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image"]["width"] == 512 and len(body["probabilities"]) == 28
    # the service answers what the library computes for the same files
    from protloc.inference.core import Preprocessor, batch_probabilities
    from protloc.inference.predict import load_backend

    card, backend = load_backend(trained_run / "model", "torch")
    inputs = Preprocessor.from_card(card).load(paths)[None]
    np.testing.assert_allclose(body["probabilities"], batch_probabilities(backend, inputs)[0], atol=1e-4)
