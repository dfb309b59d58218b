"""protloc export --bioimageio: a package bioimageio.spec validates, bioimageio.core runs with protloc's numbers,
and protloc itself can predict with."""

from __future__ import annotations

import json
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from protloc.errors import ConfigError, ModelError
from protloc.inference.predict import predict_folder
from tests.helpers import require

require("bioimageio.spec", reason="the bioimageio extra is not installed")


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The package with its model.onnx, and its BioImage.IO zip, written with the network switched off."""
    from protloc.deployment.bioimageio import export_bioimageio
    from protloc.deployment.onnx import export_onnx

    package = tmp_path_factory.mktemp("bioimageio") / "model"
    shutil.copytree(trained_run / "model", package)
    export_onnx(package)
    with pytest.MonkeyPatch.context() as patch:

        def no_network(*args: object, **kwargs: object) -> None:
            raise AssertionError("the BioImage.IO export tried to reach the network")

        patch.setattr(socket.socket, "connect", no_network)
        result = export_bioimageio(package, authors=["Test Author"])
    assert result.path == package / "bioimageio.zip"
    assert result.weights == ("onnx", "torchscript")
    assert all(diff < 1e-4 for diff in result.max_abs_diff.values())
    assert "training images" in result.inputs
    return package, result.path


def rdf_of(archive: Path) -> dict[str, object]:
    with zipfile.ZipFile(archive) as handle:
        return yaml.safe_load(handle.read("rdf.yaml"))


def test_the_description_validates_and_says_everything(exported: tuple[Path, Path]) -> None:
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    from protloc.deployment.bioimageio_compat import ensure_compatible
    from protloc.model.card import read_card

    package, archive = exported
    ensure_compatible()
    description = load_description(archive)
    assert isinstance(description, v0_5.ModelDescr), description.validation_summary.format()
    assert description.validation_summary.status in ("valid-format", "passed")
    card = read_card(package)
    rdf = rdf_of(archive)
    assert str(rdf["format_version"]).startswith("0.5")
    pixels = rdf["inputs"][0]  # type: ignore[index]
    assert pixels["axes"][1]["channel_names"] == list(card.channels)
    assert pixels["axes"][2]["size"] == pixels["axes"][3]["size"] == card.size
    steps = [step for step in pixels["preprocessing"] if step["id"] != "ensure_dtype"]
    assert [step["id"] for step in steps] == ["scale_linear", "fixed_zero_mean_unit_variance"]
    assert steps[0]["kwargs"]["gain"] == pytest.approx(1 / 255)
    assert steps[1]["kwargs"] == {"mean": card.input.mean, "std": card.input.std, "axis": "channel"}
    output = rdf["outputs"][0]  # type: ignore[index]
    assert output["axes"][1]["channel_names"] == card.classes
    assert [s["id"] for s in output["postprocessing"] if s["id"] != "ensure_dtype"] == ["sigmoid"]
    protloc = rdf["config"]["protloc"]  # type: ignore[index]
    assert protloc["thresholds"] == dict(zip(card.classes, card.thresholds, strict=True))
    assert protloc["card"] == card.to_dict()
    assert {c["doi"] for c in rdf["cite"]} >= {"10.1126/science.aal3321"}  # type: ignore[union-attr]
    assert rdf["license"] == "MIT" and rdf["authors"] == [{"name": "Test Author"}]
    with zipfile.ZipFile(archive) as handle:
        names = set(handle.namelist())
        readme = handle.read("README.md").decode()
    assert {"weights.onnx", "weights.torchscript.pt", "cover.png", "test_input.npy", "test_output.npy"} <= names
    assert "## Validation" in readme and card.classes[0] in readme


@pytest.mark.slow
def test_bioimageio_core_runs_it_with_protlocs_numbers(exported: tuple[Path, Path]) -> None:
    require("bioimageio.core", reason="bioimageio.core is not installed")
    from bioimageio.core import predict, test_model

    from protloc.deployment.bioimageio_compat import ensure_compatible
    from protloc.inference.core import OnnxBackend

    package, archive = exported
    ensure_compatible()
    for weights in ("onnx", "torchscript"):
        summary = test_model(archive, weight_format=weights)
        assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(archive) as handle:
        test_input = np.load(handle.open("test_input.npy"))
    rng = np.random.default_rng(0)
    fields = np.concatenate([test_input, rng.integers(0, 256, test_input.shape).astype(np.float32)])
    for field in fields:
        sample = predict(model=archive, inputs=field[None])
        got = np.asarray(next(iter(sample.members.values())).data).reshape(-1)
        expected = OnnxBackend(package / "model.onnx")(field[None] / np.float32(255.0))[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)  # the ONNX export's parity tolerance


def test_protloc_predicts_with_the_package(exported: tuple[Path, Path], synth_data: Path, tmp_path: Path) -> None:
    package, archive = exported
    ids = ["synth_00000", "synth_00001", "synth_00002"]
    ids = [i for i in ids if (synth_data / "train" / f"{i}_green.png").exists()] or None
    reference = predict_folder(package, synth_data, tmp_path / "onnx", backend="onnx", workers=1, ids=ids)
    zipped = predict_folder(archive, synth_data, tmp_path / "zip", workers=1, ids=ids)
    assert reference is not None and zipped is not None
    np.testing.assert_allclose(zipped.probabilities, reference.probabilities, atol=1e-4)
    assert json.loads((tmp_path / "zip" / "run.json").read_text())["backend"] == "onnx"
    # unpacked, the folder works the same
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(folder)
    unpacked = predict_folder(folder, synth_data, tmp_path / "dir", workers=1, ids=ids)
    assert unpacked is not None
    np.testing.assert_allclose(unpacked.probabilities, reference.probabilities, atol=1e-6)


def test_per_cell_prediction_takes_the_package_as_it_takes_the_folder(
    exported: tuple[Path, Path], synth_data: Path
) -> None:
    from protloc.cells.predict import METHOD_BASELINE, predict_cells_in_field, predictor_for
    from protloc.channels import CHANNELS
    from protloc.data.catalog import open_dataset
    from protloc.data.io import read_sample
    from protloc.inference.backends import read_model_card
    from protloc.model.card import read_card

    package, archive = exported
    assert read_model_card(archive).to_dict() == read_card(package).to_dict()  # the card inside the zip
    catalog = open_dataset(synth_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[0]], CHANNELS)  # the default channel order of the call below
    predictor = predictor_for(archive)  # what `protloc predict ZIP DATA --cells` and the napari widget open
    assert predictor.method == METHOD_BASELINE
    zipped = predict_cells_in_field(predictor, image)
    folder = predict_cells_in_field(predictor_for(package, backend="onnx"), image)
    assert [c["cell"] for c in zipped] == [c["cell"] for c in folder] and zipped
    for a, b in zip(zipped, folder, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_foreign_or_damaged_packages_are_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from protloc.inference.bioimageio import load_bioimageio

    _, archive = exported
    rdf = rdf_of(archive)
    foreign = tmp_path / "foreign.zip"
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive) as source:
        members = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(foreign, "w") as target:
        for name, data in members.items():
            other = dict(rdf, config={})
            target.writestr(name, yaml.safe_dump(other) if name == "rdf.yaml" else data)
    with zipfile.ZipFile(damaged, "w") as target:
        for name, data in members.items():
            target.writestr(name, data[:-10] + b"0" * 10 if name == "weights.onnx" else data)
    with pytest.raises(ModelError, match="not one exported by protloc"):
        load_bioimageio(foreign)
    with pytest.raises(ModelError, match="does not match its sha256"):
        load_bioimageio(damaged)
    with pytest.raises(ConfigError, match="runs on ONNX Runtime"):
        predict_folder(archive, tmp_path, tmp_path / "out", backend="torch")


def test_the_watcher_runs_the_package(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from protloc.watch import watch_folder
    from tests.helpers import write_sample

    package, archive = exported
    for i in range(3):
        write_sample(tmp_path / "scope", f"f{i}", size=40, seed=i)
    zipped = watch_folder(tmp_path / "scope", archive, out=tmp_path / "z", settle=0.1, once=True, table="jsonl")
    plain = watch_folder(tmp_path / "scope", package, out=tmp_path / "p", backend="onnx", settle=0.1, once=True)
    assert zipped.classified == plain.classified == 3
    by_zip = {row["field"]: row["probabilities"] for row in map(json.loads, zipped.table.read_text().splitlines())}
    import csv

    with plain.table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for name, value in by_zip[row["field"]].items():
                assert abs(float(row[name]) - value) < 1e-4
