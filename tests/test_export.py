from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.deployment.onnx import export_onnx
from protloc.errors import ModelError
from protloc.inference.core import OnnxBackend, Preprocessor
from protloc.inference.predict import predict_folder, read_probabilities
from protloc.model.card import read_card
from protloc.model.package import load_package, new_card, save_package
from protloc.training.ensemble import make_ensemble


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    package = tmp_path_factory.mktemp("export") / "model"
    import shutil

    shutil.copytree(trained_run / "model", package)
    result = export_onnx(package)
    assert result.max_abs_diff < 1e-4
    assert "training images" in result.inputs
    return package


def test_onnx_matches_torch_with_dynamic_batch(exported: Path) -> None:
    package = load_package(exported)
    network = package.build_model()
    backend = OnnxBackend(exported / "model.onnx")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 7):
        pixels = rng.random((batch, 4, 64, 64), dtype=np.float32)
        with torch.no_grad():
            expected = torch.sigmoid(network(torch.from_numpy(pixels))).numpy()
        np.testing.assert_allclose(backend(pixels), expected, atol=1e-5)


def test_onnx_file_carries_the_card(exported: Path) -> None:
    card = read_card(exported / "model.onnx")
    assert card == read_card(exported)


def test_onnx_and_torch_predictions_agree(exported: Path, synth_data: Path, tmp_path: Path) -> None:
    torch_run = predict_folder(exported, synth_data, tmp_path / "t", backend="torch", workers=1)
    onnx_run = predict_folder(exported / "model.onnx", synth_data, tmp_path / "o", backend="onnx", workers=1)
    assert torch_run is not None and onnx_run is not None
    np.testing.assert_allclose(onnx_run.probabilities, torch_run.probabilities, atol=1e-4)


def test_onnx_runtime_path_never_imports_torch(exported: Path, synth_data: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("torch", "lightning", "timm", "torchvision", "albumentations"):
            sys.modules[blocked] = None  # any import of these now fails
        from protloc.cli import main
        code = main(["predict", {str(exported)!r}, {str(synth_data)!r}, "--backend", "onnx", "--out",
                     {str(tmp_path / "p")!r}, "--workers", "1", "--tta", "flips"])
        assert code == 0, code
        # a protloc[runtime] install: the default backend finds ONNX Runtime, torch is a clear error
        code = main(["predict", {str(exported)!r}, {str(synth_data)!r}, "--out", {str(tmp_path / "auto")!r},
                     "--workers", "1"])
        assert code == 0, code
        code = main(["predict", {str(exported)!r}, {str(synth_data)!r}, "--backend", "torch", "--out",
                     {str(tmp_path / "t")!r}, "--workers", "1"])
        assert code == 1, code
        assert not any(name.startswith("torch") for name in sys.modules if sys.modules[name] is not None)
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
    assert "the torch backend needs PyTorch" in result.stdout + result.stderr
    assert not (tmp_path / "t").exists()
    ids, probabilities = read_probabilities(tmp_path / "p" / "probabilities.csv")
    assert len(ids) == 40 and probabilities.shape == (40, 28)
    auto_run = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert auto_run["backend"] == "onnx"


def test_export_refuses_bad_output_name(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="must end in .onnx"):
        export_onnx(exported, tmp_path / "model.bin")


def _untrained_package(folder: Path, mean: float, seed: int) -> Path:
    from protloc.model.network import PackagedNetwork, create_model

    torch.manual_seed(seed)
    backbone = create_model("test_resnet", 4, 28)
    card = new_card(
        architecture={"name": "test_resnet", "in_chans": 4, "num_classes": 28, "image_size": 64},
        channels=["red", "green", "blue", "yellow"],
        size=64,
        mean=[mean] * 4,
        std=[0.2] * 4,
        thresholds=[0.5] * 28,
        scheme="hpa2018",
    )
    return save_package(folder, PackagedNetwork(backbone, [mean] * 4, [0.2] * 4).eval(), card)


def test_ensemble_averages_members_and_combines_thresholds(trained_run: Path, tmp_path: Path, synth_data: Path) -> None:
    a = trained_run / "model"
    b = _untrained_package(tmp_path / "b", 0.1, seed=1)
    ensemble = make_ensemble([a, b], tmp_path / "ens", thresholds="mean")
    card = read_card(ensemble)
    assert card.kind == "ensemble" and len(card.members) == 2
    expected_thresholds = [(x + 0.5) / 2 for x in read_card(a).thresholds]
    np.testing.assert_allclose(card.thresholds, expected_thresholds)
    network = load_package(ensemble).build_model()
    pixels = torch.rand(2, 4, 64, 64)
    with torch.no_grad():
        mean = (
            torch.sigmoid(load_package(a).build_model()(pixels)) + torch.sigmoid(load_package(b).build_model()(pixels))
        ) / 2
        got = torch.sigmoid(network(pixels))
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=1e-4)
    # the ensemble is a package like any other: export and predict it
    result = export_onnx(ensemble)
    assert result.max_abs_diff < 1e-4
    run = predict_folder(ensemble, synth_data, tmp_path / "pred", backend="onnx", workers=1)
    assert run is not None and run.probabilities.shape == (40, 28)


def test_ensemble_oof_thresholds_and_refusals(trained_run: Path, tmp_path: Path) -> None:
    a = trained_run / "model"
    ensemble = make_ensemble([a, a], tmp_path / "oof")
    card = read_card(ensemble)
    assert card.threshold_info["method"] == "oof"
    assert card.threshold_info["oof_samples"] == 2 * read_card(a).training["n_val"]
    assert "out_of_fold" in card.metrics
    b = _untrained_package(tmp_path / "b", 0.1, seed=2)
    with pytest.raises(ModelError, match="validation.csv"):
        make_ensemble([a, b], tmp_path / "x", thresholds="oof")
    card_b = json.loads((b / "card.json").read_text())
    card_b["input"]["size"] = 96
    (b / "card.json").write_text(json.dumps(card_b))
    with pytest.raises(ModelError, match="ensemble members must agree"):
        make_ensemble([a, b], tmp_path / "y")
    with pytest.raises(ModelError, match="at least two"):
        make_ensemble([a], tmp_path / "z")


def test_foreign_packages_are_refused_with_reasons(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    for change, fragment in [
        (lambda c: c.update(format_version=99), "reads format 1 or older: upgrade protloc"),
        (lambda c: c.update(classes=c["classes"][:27]), "classes differ from its scheme hpa2018"),
        (lambda c: c["input"].update(channels=["red", "uv"]), "unknown channels"),
        (lambda c: c.update(format="something-else"), "not a protloc model card"),
    ]:
        folder = tmp_path / f"p{abs(hash(fragment))}"
        shutil.copytree(trained_run / "model", folder)
        card = json.loads((folder / "card.json").read_text())
        change(card)
        (folder / "card.json").write_text(json.dumps(card))
        with pytest.raises(ModelError, match=fragment):
            load_package(folder)
    folder = tmp_path / "newer"
    shutil.copytree(trained_run / "model", folder)
    card = json.loads((folder / "card.json").read_text())
    card["protloc_version"] = "9.1.0"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.warns(UserWarning, match="made by protloc 9.1.0"):
        package = load_package(folder)
    (folder / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot be read"):
        package.build_model()


def test_preprocessor_resizes_any_field_size() -> None:
    card = new_card(
        architecture={"name": "seed-cnn"},
        channels=["green", "blue"],
        size=32,
        mean=[0, 0],
        std=[1, 1],
        thresholds=[0.5] * 28,
        scheme="hpa2018",
    )
    field = np.zeros((2, 300, 300), np.uint8)
    field[0, :150, :150] = 200
    inputs = Preprocessor.from_card(card).prepare_uint8(field)
    assert inputs.shape == (1, 2, 32, 32) and inputs[0, 0, 0, 0] == 200 and inputs[0, 0, -1, -1] == 0
    tiles = Preprocessor.from_card(card, tiles=2).prepare_uint8(field)
    assert tiles.shape == (4, 2, 32, 32) and tiles[0, 0].min() == 200 and tiles[3, 0].max() == 0


def test_the_parity_check_says_when_it_ran_on_synthetic_fields_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It fell back to synthetic fields without a word, even when the training data existed but failed to read
    (issue 20); now the result says so and why, the CLI says it, and named images never fall back."""
    from protloc.cli import main
    from protloc.errors import DataError
    from tests.helpers import tiny_package, write_sample

    package = tiny_package(tmp_path / "model", size=32)
    result = export_onnx(package, tmp_path / "a.onnx")
    assert result.synthetic and result.inputs == "4 synthetic fields (the model card names no training data)"
    broken = tmp_path / "broken"
    write_sample(broken, "x", size=32)
    (broken / "x_green.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    card = json.loads((package / "card.json").read_text())
    card["training"] = {**card.get("training", {}), "data": str(broken)}
    (package / "card.json").write_text(json.dumps(card))
    result = export_onnx(package, tmp_path / "b.onnx")
    assert result.synthetic and f"the training data {broken} could not be read: " in result.inputs
    assert "x_green.png" in result.inputs
    with pytest.raises(DataError, match="x_green.png"):
        export_onnx(package, tmp_path / "c.onnx", parity_data=broken)
    good = tmp_path / "good"
    for i in range(3):
        write_sample(good, f"g{i}", size=40, seed=i)
    result = export_onnx(package, tmp_path / "d.onnx", parity_data=good)
    assert not result.synthetic and result.inputs == f"3 images from {good}"
    assert main(["export", str(package), "--onnx", str(tmp_path / "e.onnx")]) == 0
    said = capsys.readouterr()
    assert "could not be read" in said.out and "checked on synthetic fields" in said.err
    assert main(["export", str(package), "--onnx", str(tmp_path / "f.onnx"), "--parity-data", str(good)]) == 0
    assert "synthetic" not in capsys.readouterr().err
