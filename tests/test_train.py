from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.classes import HPA2018
from protloc.cli import main
from protloc.errors import ConfigError, ModelError
from protloc.model.card import read_card
from protloc.model.network import SeedCNN, create_model
from protloc.model.package import load_package
from protloc.training.config import resolve_config
from protloc.training.train import read_metrics, train


def test_run_directory_has_everything(trained_run: Path) -> None:
    for name in (
        "config.yaml",
        "folds.csv",
        "metrics.csv",
        "training_curves.png",
        "per_class_f1.png",
        "thresholds.json",
        "report.json",
        "summary.json",
        "val_predictions.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "model/card.json",
        "model/weights.safetensors",
        "model/validation.csv",
    ):
        assert (trained_run / name).is_file(), name
    rows = read_metrics(trained_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[1]["step"] > rows[0]["step"] > 0
    # training learns: both losses fall from the first epoch to the second (a broken gradient, label or input
    # pipeline leaves them flat or rising); 0.63 -> 0.51 validation loss on this run
    assert rows[1]["train_loss"] < 0.95 * rows[0]["train_loss"]
    assert rows[1]["val_loss"] < 0.95 * rows[0]["val_loss"]


def test_package_card_describes_the_model(trained_run: Path) -> None:
    card = read_card(trained_run / "model")
    assert card.architecture.name == "test_resnet"
    assert list(card.channels) == ["red", "green", "blue", "yellow"]
    assert card.size == 64
    assert len(card.input.mean) == 4 and all(s > 0 for s in card.input.std)
    assert card.classes == list(HPA2018.names)
    assert len(card.thresholds) == 28
    report = json.loads((trained_run / "report.json").read_text())
    assert card.metrics["validation"]["macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-4)
    assert report["macro_f1"] > 0.0
    assert card.training["n_train"] + card.training["n_val"] == 160
    assert card.training["config"]["model"] == "test_resnet"
    assert card.protloc_version


def test_package_loads_without_pickle_and_predicts_like_training(trained_run: Path) -> None:
    package = load_package(trained_run / "model")
    network = package.build_model()
    pixels = torch.rand(2, 4, 64, 64)
    with torch.no_grad():
        logits = network(pixels)
    assert logits.shape == (2, 28)
    # the package reproduces the validation probabilities written during training
    with (trained_run / "val_predictions.csv").open() as handle:
        first = next(csv.DictReader(handle))
    from protloc.data.catalog import open_dataset
    from protloc.inference.core import Preprocessor

    catalog = open_dataset(read_card(trained_run / "model").training_data)
    index = catalog.ids.index(first["Id"])
    inputs = Preprocessor.from_card(package.card).load(catalog.paths(index))
    with torch.no_grad():
        probabilities = torch.sigmoid(network(torch.from_numpy(inputs.astype(np.float32) / 255.0)))[0].numpy()
    expected = np.array([float(first[name]) for name in HPA2018.names])
    np.testing.assert_allclose(probabilities, expected, atol=2e-3)


def test_thresholds_and_report_are_consistent(trained_run: Path) -> None:
    thresholds = json.loads((trained_run / "thresholds.json").read_text())
    card = read_card(trained_run / "model")
    assert list(thresholds["thresholds"].values()) == card.thresholds
    assert set(thresholds["methods"].values()) <= {"joint", "fallback"}  # the cpu recipe fits them jointly
    report = json.loads((trained_run / "report.json").read_text())
    assert report["macro_f1"] == pytest.approx(card.metrics["validation"]["macro_f1"], abs=1e-4)
    assert "gain_cv" in thresholds["gain"]


def test_existing_run_is_not_overwritten(trained_run: Path, synth_data: Path) -> None:
    config = resolve_config("cpu", overrides={"data": str(synth_data), "out": str(trained_run), "epochs": 1})
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(config)
    assert (trained_run / "model" / "card.json").is_file()


def test_resume_refuses_changed_settings(trained_run: Path, synth_data: Path) -> None:
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(synth_data),
            "out": str(trained_run),
            "lr": 0.5,
            "model": "test_resnet",
            "image_size": 64,
        },
    )
    with pytest.raises(ConfigError, match="cannot change .*lr.* when resuming"):
        train(config, resume=True)


def test_evaluate_cli_scores_the_test_truth(
    trained_run: Path, synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            str(trained_run / "model"),
            str(synth_data),
            "--split",
            "test",
            "--labels",
            str(synth_data / "test_truth.csv"),
            "--out",
            str(out),
            "--workers",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "macro F1" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["n_samples"] == 40
    assert (out / "per_class_f1.png").stat().st_size > 10_000
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and "Target" in rows[0]


def test_unknown_model_and_seed_cnn() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet1800'.*did you mean"):
        create_model("resnet1800", 4, 28)
    seed = create_model("seed-cnn", 3, 28, image_size=128)
    assert isinstance(seed, SeedCNN)
    assert seed(torch.rand(2, 3, 128, 128)).shape == (2, 28)
    widths = [m.out_channels for m in seed.features if isinstance(m, torch.nn.Conv2d)]
    assert widths == [32, 64, 128, 256, 512, 512]


def test_pretrained_offline_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import protloc.model.network as models

    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
    started = time.monotonic()
    with pytest.raises(ModelError, match="unreachable from this machine"):
        create_model("resnet18", 4, 28, pretrained=True)
    assert time.monotonic() - started < 20


def _train_command(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "protloc",
        "train",
        str(data),
        "--out",
        str(out),
        "--model",
        "test_resnet",
        "--image-size",
        "64",
        "--batch-size",
        "8",
        "--cache-dir",
        str(cache),
        "--workers",
        "0",
        *extra,
    ]


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(str(path), map_location="cpu", weights_only=False)["global_step"])
    except Exception:
        return -1


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
    synth_data: Path, tmp_path: Path
) -> None:
    """README: after a kill -9, --resume continues at the same epoch, step and optimizer state. Without random
    augmentation or dropout, the resumed run must then end with exactly the weights of an uninterrupted one."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    settings = tmp_path / "deterministic.yaml"
    settings.write_text("augment: none\ndrop_rate: 0.0\n")
    reference = tmp_path / "uninterrupted"
    finished = subprocess.run(
        _train_command(synth_data, reference, tmp_path / "cache", "--epochs", "3", "--config", str(settings)),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    run = tmp_path / "killed"
    command = _train_command(
        synth_data, run, tmp_path / "cache", "--epochs", "3", "--checkpoint-every", "2", "--config", str(settings)
    )
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    steps_per_epoch = 128 // 8  # 160 samples, 5 folds: 128 train rows, batch 8
    deadline = time.monotonic() + 240
    killed_at = -1
    while time.monotonic() < deadline and process.poll() is None:
        step = _checkpoint_step(last) if last.is_file() else -1
        if step > steps_per_epoch and step % steps_per_epoch != 0:
            process.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.05)
    process.wait()
    assert killed_at > 0, "training finished or stalled before a mid-epoch checkpoint"
    assert not (run / "model").exists()

    resumed = subprocess.run(
        _train_command(synth_data, run, tmp_path / "cache", "--epochs", "3", "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 * steps_per_epoch
    assert summary["resumed_from_step"] >= killed_at  # continued from the checkpoint, not from scratch
    assert [int(r["epoch"]) for r in read_metrics(run / "metrics.csv")] == [0, 1, 2]
    from protloc.model.package import state_dict_from_lightning

    resumed_weights = state_dict_from_lightning(run / "checkpoints" / "last.ckpt")
    reference_weights = state_dict_from_lightning(reference / "checkpoints" / "last.ckpt")
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        np.testing.assert_allclose(resumed_weights[name].numpy(), tensor.numpy(), rtol=0, atol=1e-5, err_msg=name)
    from protloc.inference.files import read_probabilities_table

    _, resumed_probabilities, _ = read_probabilities_table(run / "val_predictions.csv")
    _, reference_probabilities, _ = read_probabilities_table(reference / "val_predictions.csv")
    np.testing.assert_allclose(resumed_probabilities, reference_probabilities, atol=1e-4)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_train_the_same_model(synth_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    command = _train_command(
        synth_data,
        run,
        tmp_path / "cache",
        "--epochs",
        "1",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--strategy",
        "ddp",
    )
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ddp_ranks_consistent"] is True
    digests = [(run / "ddp" / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert summary["global_step"] == 128 // 2 // 8  # each rank takes half of the 128 training rows
