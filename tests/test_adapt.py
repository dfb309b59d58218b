"""protloc adapt: re-estimating a package's statistics on unlabelled fields, the card's record, the guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.channels import CHANNELS
from protloc.errors import ConfigError, DataError, ModelError
from protloc.model.card import CARD_FILE, VALIDATION_FILE, read_card
from protloc.model.package import load_package, save_package
from protloc.training.adapt import AdaptSettings, adapt_network, adapt_package, folder_fingerprint, read_inputs
from tests.helpers import tiny_package, write_csv, write_sample


def _fields(folder: Path, count: int, *, size: int = 48, scale: float = 1.0, channels=None) -> Path:
    """``count`` random fields, their values multiplied by ``scale`` (a dimmer or brighter microscope)."""
    from protloc.data.io import CHANNELS, write_channel

    for i in range(count):
        planes = write_sample(folder, f"f{i:03d}", size=size, seed=i, channels=channels or CHANNELS)
        for channel, plane in planes.items():
            write_channel(folder / f"f{i:03d}_{channel}.png", (plane * scale).astype(np.uint8))
    return folder


def _state(package: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(package / "weights.safetensors"))


def test_adapt_changes_only_statistics_and_the_card_records_it(tmp_path: Path) -> None:
    source = tiny_package(tmp_path / "model")
    data = _fields(tmp_path / "fields", 12, scale=0.3)
    settings = AdaptSettings(methods=("bn", "norm"), max_fields=10, batch_size=4)
    result = adapt_package(source, data, tmp_path / "adapted", settings)
    before, after = _state(source), _state(result.out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    statistics = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert changed <= statistics | {"mean", "std"}
    assert {"mean", "std"} <= changed and changed & statistics
    card = read_card(result.out)
    assert card.is_adapted and not read_card(source).is_adapted
    record = card.adaptation
    assert record["methods"] == ["norm", "bn"]
    assert record["fields"] == 12 and record["fields_used"] == 10
    assert record["fingerprint"]["files"] == 48
    assert record["fingerprint"]["sha256"] == folder_fingerprint(load_catalog(data))["sha256"]
    assert record["guard"] == {"run": False, "reason": f"the package has no {VALIDATION_FILE}"}
    # the normalisation is the fields' own: a third of the brightness of uniform noise, 0-1 scale
    assert card.input.mean == pytest.approx(after["mean"].flatten().tolist(), abs=1e-6)
    assert all(0.1 < m < 0.2 for m in card.input.mean)
    assert card.thresholds == read_card(source).thresholds


def load_catalog(folder: Path):
    from protloc.inference.predict import open_for_prediction

    return open_for_prediction(folder)


def test_fingerprint_follows_the_files(tmp_path: Path) -> None:
    data = _fields(tmp_path / "fields", 3)
    first = folder_fingerprint(load_catalog(data))["sha256"]
    assert folder_fingerprint(load_catalog(data))["sha256"] == first
    _fields(data, 1, scale=0.5)  # rewrite one field
    assert folder_fingerprint(load_catalog(data))["sha256"] != first


def test_adabn_reestimates_the_statistics_of_the_fields(tmp_path: Path) -> None:
    package = load_package(tiny_package(tmp_path / "model"))
    network = package.build_model()
    inputs = read_inputs(load_catalog(_fields(tmp_path / "fields", 6)), package.card)
    adapted, info = adapt_network(network, inputs, ["bn"], batch_size=3)
    first = next(m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # the first batch-norm follows the stem convolution: its running mean is that convolution's output mean
    stem_outputs = []
    handle = first.register_forward_hook(lambda module, args, output: stem_outputs.append(args[0]))
    with torch.no_grad():
        adapted(torch.from_numpy(inputs))
    handle.remove()
    expected = stem_outputs[0].mean(dim=(0, 2, 3))
    torch.testing.assert_close(first.running_mean, expected, atol=1e-4, rtol=1e-3)
    assert info["batchnorm_layers"] == sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert not first.training and first.momentum == 0.1  # left as it was found
    source = next(m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(source.running_mean, first.running_mean)  # the source network is untouched


def test_predict_takes_the_adapted_package(tmp_path: Path) -> None:
    from protloc.inference.predict import predict_folder

    source = tiny_package(tmp_path / "model")
    data = _fields(tmp_path / "fields", 9, scale=0.5)
    adapted = adapt_package(source, data, tmp_path / "adapted", AdaptSettings(batch_size=4)).out
    run = predict_folder(adapted, data, tmp_path / "pred", backend="torch", workers=1)
    assert run is not None
    table = (tmp_path / "pred" / "probabilities.csv").read_text().splitlines()
    assert len(table) == 10
    plain = predict_folder(source, data, tmp_path / "pred_source", backend="torch", workers=1)
    assert plain is not None
    assert (tmp_path / "pred_source" / "probabilities.csv").read_text() != "\n".join(table) + "\n"


def test_the_cli_adapts_and_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from protloc.cli import app

    source = tiny_package(tmp_path / "model")
    data = _fields(tmp_path / "fields", 8)
    result = CliRunner().invoke(
        app, ["adapt", str(source), str(data), "--out", str(tmp_path / "a"), "--batch-size", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "adapted" in result.output and "guard not run" in result.output
    assert "(norm)" in result.output  # the measured default
    assert json.loads((tmp_path / "a" / CARD_FILE).read_text())["adaptation"]["fields_used"] == 8


def test_refusals_write_nothing(tmp_path: Path) -> None:
    source = tiny_package(tmp_path / "model")
    out = tmp_path / "adapted"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        adapt_package(source, empty, out)
    with pytest.raises(DataError, match="at least 8"):
        adapt_package(source, _fields(tmp_path / "few", 3), out)
    with pytest.raises(ModelError, match="yellow"):
        adapt_package(source, _fields(tmp_path / "rgb", 10, channels=("red", "green", "blue")), out)
    with pytest.raises(ConfigError, match="unknown adaptation method"):
        adapt_package(source, _fields(tmp_path / "ok", 10), out, AdaptSettings(methods=("entropy",)))
    cell = tiny_package(tmp_path / "cell", cells={"crop_size": 32})
    with pytest.raises(DataError, match=r"0 cell\(s\) found in 10 field\(s\)"):  # black fields: no cell to adapt on
        adapt_package(cell, _fields(tmp_path / "black", 10, scale=0.0), out)
    with pytest.raises(ConfigError, match="a field model"):
        adapt_package(source, tmp_path / "ok", out, AdaptSettings(match_nuclei=True))
    assert not out.exists()


def test_a_network_without_batchnorm_says_so(tmp_path: Path) -> None:
    from protloc.model.network import PackagedNetwork, create_model
    from protloc.model.package import new_card

    n = 28
    network = PackagedNetwork(create_model("seed-cnn", 4, n, image_size=64), [0.1] * 4, [0.2] * 4)
    card = new_card(
        architecture={"name": "seed-cnn", "in_chans": 4, "num_classes": n, "image_size": 64},
        channels=["red", "green", "blue", "yellow"],
        size=64,
        mean=[0.1] * 4,
        std=[0.2] * 4,
        thresholds=[0.5] * n,
        scheme="hpa2018",
    )
    source = save_package(tmp_path / "seed", network, card)
    data = _fields(tmp_path / "fields", 8)
    with pytest.raises(ModelError, match="no batch-norm layers.*--method norm"):
        adapt_package(source, data, tmp_path / "a", AdaptSettings(methods=("norm", "bn")))
    assert not (tmp_path / "a").exists()
    done = adapt_package(source, data, tmp_path / "a")
    assert read_card(done.out).adaptation["methods"] == ["norm"]


def _guarded_package(tmp_path: Path) -> tuple[Path, Path]:
    """A package with a validation.csv and its training data: its thresholds are the medians of its own
    probabilities on the validation fields and the truth its own decisions (macro F1 1.0 before adapting), so
    any change of its statistics that moves decisions lowers the validation score."""
    from protloc.inference.files import probabilities_csv
    from protloc.model.card import ModelCard

    root = tmp_path / "train_data"
    ids = [f"v{i:02d}" for i in range(12)]
    for i, sample_id in enumerate(ids):
        write_sample(root / "train", sample_id, size=48, seed=50 + i)
    write_csv(root / "train.csv", ["Id", "Target"], [(i, "0") for i in ids])
    source = tiny_package(tmp_path / "base")
    package = load_package(source)
    inputs = read_inputs(load_catalog(root / "train"), package.card)
    from protloc.training.adapt import probabilities_of

    probabilities = probabilities_of(package.build_model(), inputs)
    thresholds = np.median(probabilities, axis=0)
    truth = (probabilities >= thresholds).astype(np.uint8)
    card = package.card.to_dict()
    card["thresholds"] = [float(t) for t in thresholds]
    card["decision"]["min_one"] = False
    card["training"] = {"data": str(root)}
    validation = tmp_path / "validation.csv"
    validation.write_text(probabilities_csv(ids, probabilities, truth, package.card.scheme))
    guarded = save_package(
        tmp_path / "guarded",
        package.build_model(),
        ModelCard.from_dict(card),
        extra_files={VALIDATION_FILE: validation},
    )
    return guarded, _fields(tmp_path / "target", 10, scale=0.4)


def test_the_guard_refuses_an_adaptation_that_hurts_the_validation_fields(tmp_path: Path) -> None:
    source, target = _guarded_package(tmp_path)
    out = tmp_path / "adapted"
    with pytest.raises(ModelError, match="adaptation refused.*nothing written"):
        adapt_package(source, target, out, AdaptSettings(batch_size=4))
    assert not out.exists()
    allowed = adapt_package(source, target, out, AdaptSettings(batch_size=4, tolerance=1.0))
    guard = read_card(allowed.out).adaptation["guard"]
    assert guard["run"] and guard["passed"] and guard["validation_fields"] == 12
    assert guard["macro_f1_before"] == 1.0 and guard["macro_f1_adapted"] < 0.98
    skipped = adapt_package(source, target, out, AdaptSettings(batch_size=4, guard=False))
    assert read_card(skipped.out).adaptation["guard"] == {"run": False, "reason": "switched off"}


def test_the_service_serves_the_adapted_package_and_says_so(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from protloc.serve import create_app
    from protloc.training.adapt import probabilities_of

    source = tiny_package(tmp_path / "model")
    data = _fields(tmp_path / "fields", 8, scale=0.5)
    adapted = adapt_package(source, data, tmp_path / "adapted", AdaptSettings(batch_size=4)).out
    with TestClient(create_app(adapted, backend="torch"), base_url="http://localhost") as client:
        info = client.get("/model").json()
        assert info["adaptation"]["methods"] == ["norm"] and info["adaptation"]["fields_used"] == 8
        files = {c: (f"f000_{c}.png", (data / f"f000_{c}.png").read_bytes(), "image/png") for c in CHANNELS}
        response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    package = load_package(adapted)
    expected = probabilities_of(package.build_model(), read_inputs(load_catalog(data), package.card)[:1])[0]
    np.testing.assert_allclose(response.json()["probabilities"], expected, atol=1e-4)


def test_watch_classifies_with_the_adapted_package(tmp_path: Path) -> None:
    from protloc.watch.loop import watch_folder

    source = tiny_package(tmp_path / "model")
    adapted = adapt_package(source, _fields(tmp_path / "fields", 8, scale=0.5), tmp_path / "adapted").out
    scope = _fields(tmp_path / "scope", 2, scale=0.5)
    run = watch_folder(scope, adapted, out=tmp_path / "out", backend="torch", settle=0.1, once=True, table="jsonl")
    assert run.classified == 2 and run.rejected == 0
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_the_guard_rescores_a_trained_packages_own_validation_fields(
    trained_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    from protloc.inference.files import read_probabilities_table

    package = trained_run / "model"
    card = read_card(package)
    ids, _, _ = read_probabilities_table(package / VALIDATION_FILE, card.scheme)
    result = adapt_package(package, synth_data / "test", tmp_path / "adapted", AdaptSettings(tolerance=1.0))
    guard = result.guard
    assert guard["run"] and guard["passed"] and guard["validation_fields"] == min(len(ids), 256)
    # before adapting, the guard scores what training scored on the same fields
    assert guard["macro_f1_before"] == pytest.approx(card.metrics["validation"]["macro_f1"], abs=0.01)
    assert read_card(result.out).adaptation["fields"] == 40
