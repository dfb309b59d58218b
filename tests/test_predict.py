from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protloc.classes import HPA2018
from protloc.cli import main
from protloc.data.catalog import read_id_column
from protloc.errors import ConfigError, DataError
from protloc.inference.core import TTA_VIEWS, apply_view, parse_tta
from protloc.inference.predict import (
    PARTIAL_DIR,
    PredictionRun,
    _PartialRows,
    predict_folder,
    read_probabilities,
    resolve_thresholds,
)
from protloc.metrics import decide
from protloc.model.card import read_card


@pytest.fixture(scope="module")
def prediction(trained_run: Path, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PredictionRun:
    out = tmp_path_factory.mktemp("pred") / "out"
    result = predict_folder(trained_run / "model", synth_data, out, workers=1, batch_size=8)
    assert result is not None
    return result


@pytest.fixture(scope="module")
def predicted(prediction: PredictionRun) -> Path:
    return prediction.out


def test_outputs_cover_the_test_split_in_submission_order(predicted: Path, synth_data: Path) -> None:
    order = read_id_column(synth_data / "sample_submission.csv")
    with (predicted / "submission.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Id"] for r in rows] == order
    assert all(r["Predicted"].strip() for r in rows)  # at least one label each (default)
    ids, probabilities = read_probabilities(predicted / "probabilities.csv")
    assert sorted(ids) == sorted(order) and probabilities.shape == (40, 28)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    run = json.loads((predicted / "run.json").read_text())
    assert run["samples"] == 40 and run["backend"] == "torch"
    assert not (predicted / PARTIAL_DIR).exists()


def test_labels_follow_thresholds_and_the_min_one_rule(prediction: PredictionRun, trained_run: Path) -> None:
    predicted = prediction.out
    card = read_card(trained_run / "model")
    ids, probabilities = prediction.ids, prediction.probabilities
    expected = decide(probabilities, card.thresholds, min_one=True)
    with (predicted / "predictions.csv").open() as handle:
        rows = {r["Id"]: r for r in csv.DictReader(handle)}
    for sample_id, row in zip(ids, expected, strict=True):
        assert rows[sample_id]["Predicted"] == " ".join(str(i) for i in np.flatnonzero(row))
        names = rows[sample_id]["Labels"].split("; ")
        assert names == [HPA2018.names[i] for i in np.flatnonzero(row)]


def test_decide_min_one_picks_the_closest_class() -> None:
    probabilities = np.full((2, 28), 0.1)
    probabilities[0, 5] = 0.3  # 0.3 / 0.4 is the best ratio
    probabilities[0, 6] = 0.35  # 0.35 / 0.9 is worse
    probabilities[1, 2] = 0.95
    thresholds = np.full(28, 0.5)
    thresholds[5], thresholds[6] = 0.4, 0.9
    labels = decide(probabilities, thresholds)
    assert np.flatnonzero(labels[0]).tolist() == [5]
    assert np.flatnonzero(labels[1]).tolist() == [2]
    assert decide(probabilities, thresholds, min_one=False)[0].sum() == 0


def test_threshold_overrides(trained_run: Path, tmp_path: Path) -> None:
    card = read_card(trained_run / "model")
    assert resolve_thresholds(card, None) == card.thresholds
    assert resolve_thresholds(card, "0.3") == [0.3] * 28
    by_name = tmp_path / "t.json"
    by_name.write_text(json.dumps({"Nucleoplasm": 0.7, "3": 0.2}))
    values = resolve_thresholds(card, by_name)
    assert values[0] == 0.7 and values[3] == 0.2 and values[1] == card.thresholds[1]
    by_name.write_text(json.dumps({"thresholds": [0.4] * 28}))
    assert resolve_thresholds(card, by_name) == [0.4] * 28
    for bad, fragment in [
        ({"Nucleus": 0.5}, "t.json: unknown class 'Nucleus'"),
        ([0.5] * 3, "expected 28"),
        ({"0": 1.5}, "between 0 and 1"),
    ]:
        by_name.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=fragment):
            resolve_thresholds(card, by_name)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        resolve_thresholds(card, "2")


def test_single_sample_and_id_list(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    order = read_id_column(synth_data / "sample_submission.csv")
    one = predict_folder(
        trained_run / "model", synth_data / "test" / f"{order[3]}_green.png", tmp_path / "one", workers=1
    )
    assert one is not None and one.ids == [order[3]]
    picked = predict_folder(trained_run / "model", synth_data, tmp_path / "ids", ids=order[:2], workers=1)
    assert picked is not None and picked.ids == order[:2]
    assert not (tmp_path / "ids" / "submission.csv").exists()  # not every sample_submission Id was predicted
    with pytest.raises(DataError, match="'nope' is not in"):
        predict_folder(trained_run / "model", synth_data, tmp_path / "bad", ids=["nope"], workers=1)


def test_resume_after_a_kill_continues_from_the_durable_rows(
    trained_run: Path, synth_data: Path, predicted: Path, tmp_path: Path
) -> None:
    from protloc.inference.predict import _job_key, load_backend, open_for_prediction

    out = tmp_path / "resumed"
    card, _ = load_backend(trained_run / "model", "torch")
    catalog = open_for_prediction(synth_data, channels=list(card.channels))
    settings = {"tta": parse_tta(None), "tiles": 1, "backend": "torch", "device": "auto"}
    key = _job_key(trained_run / "model", card, catalog, settings)
    # a run that was killed after 16 durable rows (plus half a row of garbage past the mark)
    _, reference = read_probabilities(predicted / "probabilities.csv")
    partial = _PartialRows(out / PARTIAL_DIR, key, len(catalog), card.num_classes)
    partial.append(0, reference[:16])
    with (out / PARTIAL_DIR / "rows.f32").open("ab") as handle:
        handle.write(b"\x00" * 50)
    result = predict_folder(trained_run / "model", synth_data, out, workers=1, batch_size=8)
    assert result is not None and result.resumed_from == 16
    _, probabilities = read_probabilities(out / "probabilities.csv")
    np.testing.assert_allclose(probabilities, reference, atol=1e-4)


def test_tta_views_and_presets() -> None:
    assert parse_tta("none") == ("id",)
    assert len(parse_tta("d4")) == 8
    assert parse_tta("id,flip") == ("id", "flip")
    with pytest.raises(ConfigError, match="unknown TTA view"):
        parse_tta("spin")
    batch = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    outputs = {tuple(apply_view(batch, v).ravel()) for v in TTA_VIEWS}
    assert len(outputs) == 8  # eight distinct symmetries
    np.testing.assert_array_equal(apply_view(batch, "rot180"), batch[..., ::-1, ::-1])


def test_tta_and_tiles_change_inputs_not_outputs_shape(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    result = predict_folder(trained_run / "model", synth_data, tmp_path / "tta", tta="flips", tiles=2, workers=1)
    assert result is not None and result.probabilities.shape == (40, 28)
    run = json.loads((tmp_path / "tta" / "run.json").read_text())
    assert run["tta"] == ["id", "flip", "rot180", "flip_rot180"] and run["tiles"] == 2


def test_cli_predict_and_clear_errors(
    trained_run: Path, synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["predict", str(trained_run / "model"), str(synth_data), "--out", str(tmp_path / "p"), "--workers", "1"])
        == 0
    )
    assert "predicted 40 samples" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "nothing"), str(synth_data), "--out", str(tmp_path / "q")]) == 1
    assert "model package not found" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(trained_run / "model"),
                str(synth_data),
                "--backend",
                "tensorflow",
                "--out",
                str(tmp_path / "q"),
            ]
        )
        == 1
    )
    assert "backend 'tensorflow'" in capsys.readouterr().err


def test_missing_channel_is_named(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    folder.mkdir()
    order = read_id_column(synth_data / "sample_submission.csv")
    for channel in ("red", "green", "blue"):
        name = f"{order[0]}_{channel}.png"
        (folder / name).write_bytes((synth_data / "test" / name).read_bytes())
    with pytest.raises(DataError, match=f"sample {order[0]}: missing yellow channel"):
        predict_folder(trained_run / "model", folder, tmp_path / "o", workers=1)


@pytest.mark.slow
def test_ddp_prediction_on_two_cpu_processes_matches_single_process(
    trained_run: Path, synth_data: Path, predicted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "protloc",
        "predict",
        str(trained_run / "model"),
        str(synth_data),
        "--out",
        str(out),
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--workers",
        "0",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ids, merged = read_probabilities(out / "probabilities.csv")
    reference_ids, reference = read_probabilities(predicted / "probabilities.csv")
    assert ids == reference_ids
    np.testing.assert_allclose(merged, reference, atol=1e-4)
    assert (out / "submission.csv").read_text() == (predicted / "submission.csv").read_text()


def test_cli_messages_keep_brackets_in_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rich markup must not eat user text: a folder named like a markup tag is printed as it is."""
    folder = tmp_path / "plate[b]"
    folder.mkdir()
    assert main(["check", str(folder)]) == 1
    assert f"{folder}: no channel images" in capsys.readouterr().out.replace("\n", "")


def test_train_without_the_train_extra_names_the_install(synth_data: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"  # as in a `protloc[runtime]` install
        "from protloc.cli import main\n"
        f"sys.exit(main(['train', {str(synth_data)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "protloc train needs the lightning package" in result.stderr
    assert "pip install 'protloc[train]'" in result.stderr and "Traceback" not in result.stderr


def test_one_backend_policy_for_batch_prediction_and_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protloc.errors import ModelError
    from protloc.inference import backends
    from protloc.serve.engine import resolve_backend as service_backend

    package = tmp_path / "pkg"
    package.mkdir()
    exported = tmp_path / "model.onnx"
    monkeypatch.setattr(backends, "torch_available", lambda: True)
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: True)
    # without model.onnx both run PyTorch; an exported file only runs on ONNX Runtime
    assert backends.resolve_backend(package) == "torch" == service_backend(package, "auto")
    assert backends.resolve_backend(exported) == "onnx" == service_backend(exported, "auto")
    with pytest.raises(ConfigError, match="runs on the onnx backend"):
        backends.resolve_backend(exported, "torch")
    # with model.onnx the service prefers latency (ONNX Runtime); batch prediction the faster runtime where it
    # runs: ONNX Runtime on the CPU, PyTorch on a GPU (named, or found by auto) and over several devices
    (package / "model.onnx").write_bytes(b"")
    assert service_backend(package, "auto") == "onnx"
    assert backends.resolve_backend(package, device="cpu") == "onnx"
    assert backends.resolve_backend(package, device="cuda") == "torch"
    assert backends.resolve_backend(package, device="cuda:1") == "torch"
    import torch

    assert not backends.on_gpu("cpu") and backends.on_gpu("mps") and backends.on_gpu("cuda:0")
    assert backends.on_gpu("auto") == torch.cuda.is_available()
    monkeypatch.setattr(backends, "on_gpu", lambda device: device != "cpu")  # auto on a machine with CUDA
    assert backends.resolve_backend(package) == "torch"
    monkeypatch.setattr(backends, "on_gpu", lambda device: device not in ("cpu", "auto"))  # auto without CUDA
    assert backends.resolve_backend(package) == "onnx"
    assert backends.resolve_backend(package, "torch", device="cpu") == "torch"  # a named backend is kept
    # without PyTorch both fall back to ONNX Runtime, or say what to do
    monkeypatch.setattr(backends, "torch_available", lambda: False)
    assert backends.resolve_backend(package) == "onnx" == service_backend(package, "auto")
    (package / "model.onnx").unlink()
    with pytest.raises(ModelError, match="no model.onnx and PyTorch is not installed"):
        backends.resolve_backend(package)
    with pytest.raises(ConfigError, match="needs PyTorch"):
        backends.resolve_backend(package, "torch")
    with pytest.raises(ConfigError, match="not one of"):
        backends.resolve_backend(package, "tensorrt")


def test_training_calibrated_on_the_probabilities_the_package_predicts(trained_run: Path) -> None:
    """val_predictions.csv (training's calibration) and the package predicting the same images agree."""
    from protloc.data.catalog import open_dataset
    from protloc.inference.core import Preprocessor, batch_probabilities
    from protloc.inference.files import read_probabilities_table
    from protloc.inference.torch_backend import load_torch_backend
    from protloc.model.card import read_card

    ids, saved, truth = read_probabilities_table(trained_run / "val_predictions.csv")
    assert truth is not None and len(ids) == len(truth)
    card, backend = load_torch_backend(trained_run / "model", device="cpu")
    catalog = open_dataset(read_card(trained_run / "model").training_data)
    preprocessor = Preprocessor.from_card(card)
    picks = ids[:4]
    inputs = np.stack([preprocessor.load(catalog.files[i], i) for i in picks])
    np.testing.assert_allclose(batch_probabilities(backend, inputs), saved[:4], atol=2e-3)
