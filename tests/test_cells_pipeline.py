"""`protloc train DATA --cells` (issue 19): weak labels to a cell model package, resumable stage by stage, taken as
it is by predict, evaluate, serve and watch."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import require

require("skimage")
require("torch")

from protloc.cells.fusion import FusionSpec, fusion_of
from protloc.cells.predict import (
    METHOD_CELL,
    METHOD_FUSION,
    is_cell_model,
    open_cell_predictor,
    predict_cells_in_field,
    predict_field_cells,
)
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample
from protloc.errors import ConfigError, DataError
from protloc.model.card import read_card
from protloc.training.cells import (
    DEFAULT_FUSION,
    PIPELINE_FILE,
    CellPipelineSettings,
    PipelineProgress,
    train_cells,
)
from protloc.training.mil import MilSettings


@pytest.fixture(scope="module")
def weak_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic fields with their labels (and per-cell truth, which the pipeline only reads when told)."""
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("weak") / "data"
    make_dataset(root, n_train=24, n_test=3, size=128, seed=5, workers=1, cells=True)
    return root


def _settings(data: Path, out: Path, cache: Path, **changes: object) -> CellPipelineSettings:
    values: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "field_model": "test_resnet",
        "cell_model": "test_resnet",
        "field_size": 64,
        "crop_size": 32,
        "field_epochs": 1,
        "cell_epochs": 2,
        "folds": 3,
        "workers": 1,
        "cache_dir": str(cache),
        "mil": MilSettings(fields_per_step=4, max_cells=8),
        "cell_head": "mil",  # the image-head path, with its rounds and fusions; the plain default: the kill test
    }
    values.update(changes)
    return CellPipelineSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def finished(weak_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[PipelineProgress]]:
    """One finished run with a pseudo-label round and a fusion fitted on per-cell truth of the held-out fields."""
    root = tmp_path_factory.mktemp("pipeline")
    reports: list[PipelineProgress] = []
    settings = _settings(
        weak_data, root / "run", root / "cache", rounds=1, cell_truth=str(weak_data / "train_cells_truth")
    )
    return root, train_cells(settings, on_progress=reports.append), reports


def test_weak_labels_become_a_cell_package_that_carries_its_field_model(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]]
) -> None:
    root, result, reports = finished
    names = ["segment", "crops", "field", "cell", "round1", "fusion", "package"]
    assert list(result.stages) == names and not result.skipped
    assert list(dict.fromkeys(r.name for r in reports)) == names  # one display: each stage reports in turn
    assert all(r.stages == len(names) and r.number == names.index(r.name) + 1 for r in reports)

    package = result.package_dir
    card = read_card(package)
    assert is_cell_model(card) and card.cells is not None
    assert card.cells.field_model == "field" and is_cell_model(read_card(package / "field")) is False
    assert card.cells.image_head is not None and card.cells.image_head["pool"] == "lse"  # the image head asked for
    fit = card.cells.fusion_fit
    assert fit is not None
    assert fit["fitted"] and fit["map"] >= fit["cell_model_alone"]  # never below the cell model alone
    assert fusion_of(card.cells) == result.fusion and result.fusion.thresholds is not None
    assert card.training["pipeline"]["settings"]["rounds"] == 1
    round_summary = result.stages["round1"]["summary"]
    assert round_summary["labels_after"] <= round_summary["labels_before"]  # pseudo-labels only remove classes
    # the field model held out the fields the cell model held out
    field_folds = (root / "run" / "field" / "folds.csv").read_text().splitlines()[1:]
    cell_folds = (root / "run" / "crops" / "folds.csv").read_text().splitlines()[1:]
    by_field = {row.split(",")[0]: row.split(",")[1] for row in field_folds}
    assert all(by_field[row.split(",")[0].rsplit("--c", 1)[0]] == row.split(",")[1] for row in cell_folds)

    # the package as it is: one field, its cells, fused as the card says
    catalog = open_dataset(weak_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[0]], CHANNELS)
    cells = predict_cells_in_field(package, image)
    assert cells and set(cells[0]["probabilities"]) == set(card.classes)
    predictor = open_cell_predictor(package)
    assert predictor.field_backend is not None  # the carried field model, loaded from inside the package
    assert predictor.method == (METHOD_FUSION if result.fusion.needs_field_model else METHOD_CELL)


def test_a_finished_run_is_skipped_and_a_changed_setting_redoes_only_what_follows(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    root, result, _ = finished
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    truth = str(weak_data / "train_cells_truth")
    again = train_cells(_settings(weak_data, run, root / "cache", rounds=1, cell_truth=truth))
    assert again.skipped == list(result.stages)
    before = (run / "round1" / "model" / "weights.safetensors").stat().st_mtime_ns
    default = train_cells(_settings(weak_data, run, root / "cache", rounds=1))
    assert default.skipped == ["segment", "crops", "field", "cell", "round1"]
    assert (run / "round1" / "model" / "weights.safetensors").stat().st_mtime_ns == before
    spec = read_card(default.package_dir).cells
    assert spec is not None
    fit = spec.fusion_fit
    assert fit is not None
    # no per-cell truth: the measured default of the image-head model, cell^0.25 x its image head^0.75
    assert not fit["fitted"] and default.fusion == dataclasses.replace(
        DEFAULT_FUSION["mil"], thresholds=default.fusion.thresholds
    )
    assert (default.fusion.rule, default.fusion.weight, default.fusion.image) == ("geometric", 0.25, "cell model")
    # the plain cell model's default reads no field model: its own answer for the field
    plain = DEFAULT_FUSION["plain"]
    assert CellPipelineSettings(data="d").cell_head == "plain" and (plain.rule, plain.image) == (
        "geometric",
        "cell maximum",
    )
    assert plain.needs_cell_model and not plain.needs_field_model
    shorter = train_cells(_settings(weak_data, run, root / "cache", rounds=0, cell_epochs=1))
    assert shorter.skipped == ["segment", "crops", "field"]
    assert list(shorter.stages)[-2:] == ["fusion", "package"]


def test_a_fusion_that_needs_the_field_model_uses_the_carried_one(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    import dataclasses

    from protloc.cells.fusion import cells_section
    from protloc.model.card import CARD_FILE

    package = tmp_path / "model"
    shutil.copytree(finished[1].package_dir, package)
    card = read_card(package)
    product = FusionSpec("product", negative="max")
    assert card.cells is not None
    card.cells = cells_section(card.cells, fusion=product)
    (package / CARD_FILE).write_text(json.dumps(card.to_dict()))

    catalog = open_dataset(weak_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[1]], CHANNELS)
    fused = predict_field_cells(open_cell_predictor(package), image, channels=CHANNELS)
    assert fused.method == METHOD_FUSION
    alone = open_cell_predictor(package, fusion=FusionSpec())
    field = open_cell_predictor(field_model=package / "field")
    cell_p = predict_field_cells(alone, image, channels=CHANNELS, labels=fused.labels).probabilities
    field_p = predict_field_cells(field, image, channels=CHANNELS, labels=fused.labels).probabilities
    np.testing.assert_allclose(fused.probabilities, cell_p * field_p, rtol=1e-5, atol=1e-6)
    assert dataclasses.replace(fusion_of(read_card(package).cells), thresholds=None) == product


def test_serve_and_watch_take_the_package_as_it_is(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    require("fastapi")
    require("watchfiles")
    from fastapi.testclient import TestClient

    from protloc.serve import create_app
    from protloc.watch import watch_folder

    result = finished[1]
    package = result.package_dir
    with TestClient(create_app(package, backend="torch"), base_url="http://localhost") as client:
        info = client.get("/model").json()
        assert info["cells"]["cell_model"] == "test_resnet" and info["cells"]["default_fusion"]
        first = sorted(path.name.rsplit("_", 1)[0] for path in (weak_data / "test").glob("*_red.png"))[0]
        files = {
            c: (f"{first}_{c}.png", (weak_data / "test" / f"{first}_{c}.png").read_bytes(), "image/png")
            for c in CHANNELS
        }
        answer = client.post("/predict?cells=true", files=files).json()
        assert answer["cells"] and answer["cell_info"]["fusion"] == result.fusion.describe()
        assert len(answer["probabilities"]) == len(read_card(package).classes)  # fields: the carried field model

    folder = tmp_path / "microscope"
    shutil.copytree(weak_data / "test", folder)
    summary = watch_folder(folder, package, cells=True, once=True, settle=0)
    assert summary.classified == 3
    rows = (summary.table).read_text().splitlines()
    header = rows[0].split(",")
    assert header[:5] == ["field", "cell", "box", "area", "border"]
    fields = {row.split(",")[0] for row in rows[1:]}
    assert len(fields) == 3 and len(rows) - 1 > 3  # one row per cell


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_run_killed_at_any_stage_resumes_and_finishes(weak_data: Path, tmp_path: Path) -> None:
    """kill -9 the command once the crops are cut (while it trains the field model) and again once the field model
    is done (while it trains the cell model): each rerun skips exactly the finished stages, and the last one ends
    with the package."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "protloc",
        "train",
        str(weak_data),
        "--cells",
        "--out",
        str(out),
        "--model",
        "test_resnet",
        "--image-size",
        "64",
        "--crop-size",
        "32",
        "--epochs",
        "3",
        "--folds",
        "3",
        "--workers",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    journal = out / PIPELINE_FILE
    names = ["segment", "crops", "field", "cell", "fusion", "package"]

    def finished_stages() -> list[str]:
        return list(json.loads(journal.read_text())["stages"]) if journal.is_file() else []

    def kill_after(stage: str) -> list[str]:
        """Run the command, kill -9 it just after ``stage`` is recorded; the stages finished by then."""
        errors = tmp_path / f"stderr-{stage}.txt"
        with errors.open("wb") as stderr:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and process.poll() is None and stage not in finished_stages():
                time.sleep(0.1)
            time.sleep(0.3)
            assert process.poll() is None, f"the run ended before it could be killed: {errors.read_text()[-2000:]}"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        done = finished_stages()
        assert stage in done and done == names[: len(done)]  # a prefix of the stages, in order
        assert not (out / "model").exists()
        return done

    kill_after("crops")
    done = kill_after("field")
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert finished.returncode == 0, finished.stderr[-2000:]
    skipped = [line.split(":")[0] for line in finished.stdout.splitlines() if "(done before)" in line]
    assert skipped == done
    assert finished_stages() == names
    assert is_cell_model(read_card(out / "model")) and (out / "model" / "field" / "card.json").is_file()


def test_pseudo_label_command_writes_labels_the_engine_trains_on(
    finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from protloc.cells.dataset import cell_dataset_scheme
    from protloc.cli import app

    root, result, _ = finished
    crops = root / "run" / "crops"
    out = tmp_path / "pseudo.csv"
    answer = CliRunner().invoke(
        app, ["pseudo-label", str(result.package_dir), str(crops), "--out", str(out), "--threshold", "0.6"]
    )
    assert answer.exit_code == 0, answer.output
    scheme = cell_dataset_scheme(crops)
    weak = open_dataset(crops, scheme=scheme, allow_empty_labels=True, channels=None)
    refined = open_dataset(crops, labels=out, scheme=scheme, allow_empty_labels=True, channels=None)
    assert refined.ids == weak.ids and weak.labels is not None and refined.labels is not None
    assert not (refined.labels & ~weak.labels.astype(bool)).any()  # classes only removed
    assert refined.labels.sum() < weak.labels.sum()  # a barely trained model scores many cells below 0.6


def test_a_given_field_run_is_the_field_stage_and_must_hold_out_the_same_fields(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    """--field-run: a finished `protloc train` run becomes the field stage (copied, not trained again) when it
    held out the fields the pipeline holds out; one trained on other folds is refused with one line."""
    root, _, _ = finished
    field_run = root / "run" / "field"  # a `protloc train` run folder (model/ + folds.csv)
    base = {"cell_epochs": 1, "threshold_fields": 3}
    given = train_cells(_settings(weak_data, tmp_path / "given", tmp_path / "cache", field_run=str(field_run), **base))
    assert given.stages["field"]["summary"]["given"] == str(field_run)
    assert given.stages["field"]["seconds"] < 5  # copied, not trained
    copied = given.package_dir / "field" / "card.json"
    assert copied.read_bytes() == (field_run / "model" / "card.json").read_bytes()
    assert given.stages["fusion"]["summary"]["fit"]["fields"] <= 3  # thresholds on a sample of the held-out fields
    with pytest.raises(DataError, match=r"held out other fields than this pipeline would; .*--folds 4"):
        train_cells(_settings(weak_data, tmp_path / "other", tmp_path / "cache", field_run=str(field_run), folds=4))
    with pytest.raises(ConfigError, match="not a finished protloc train run"):
        train_cells(_settings(weak_data, tmp_path / "none", tmp_path / "cache", field_run=str(tmp_path)))


def test_a_cell_model_can_start_from_the_field_models_weights(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    """cell_init: the image-head model starts from the field model (same architecture) instead of random weights;
    its digest depends on the field model; a field model of another architecture is refused in one line."""
    import torch
    from safetensors.torch import load_file

    from protloc.training.mil import MilSettings, train_mil

    root, _, _ = finished
    field = root / "run" / "field" / "model"
    crops = root / "run" / "crops"
    started = train_mil(crops, tmp_path / "init", MilSettings(model="test_resnet", epochs=0, init=str(field)))
    cold = train_mil(crops, tmp_path / "cold", MilSettings(model="test_resnet", epochs=0))
    assert started.steps == cold.steps == 0  # no training: the weights are where each started
    weights = {p.name: load_file(str(p / "weights.safetensors")) for p in (started.package_dir, cold.package_dir)}
    source = load_file(str(field / "weights.safetensors"))
    backbone = [k for k in source if k.startswith("backbone.")]
    assert all(torch.equal(weights["init"][k], source[k]) for k in backbone)
    assert not all(torch.equal(weights["cold"][k], source[k]) for k in backbone)
    with pytest.raises(ConfigError, match="cannot start a resnet18 cell model"):
        train_mil(crops, tmp_path / "bad", MilSettings(model="resnet18", epochs=0, init=str(field)))


def test_cell_options_without_cells_are_refused(weak_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protloc.cli import main

    assert main(["train", str(weak_data), "--crop-size", "32", "--field-run", "runs/x", "--seg-option", "a=1"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == "error: --crop-size, --field-run, --seg-option only apply with --cells (a cell model pipeline)"


def _dimmer(data: Path, out: Path, scale: float) -> Path:
    """The training fields of ``data`` as a dimmer microscope would see them: a folder of channel images."""
    from protloc.data.io import write_channel

    catalog = open_dataset(data, channels=None)
    out.mkdir()
    for field_id in catalog.ids:
        image = read_sample(catalog.files[field_id], CHANNELS)
        for channel, plane in zip(CHANNELS, image, strict=True):
            write_channel(out / f"{field_id}_{channel}.png", (plane * scale).astype(np.uint8))
    return out


def test_adapt_takes_a_cell_package_with_its_field_model_and_segmenter_scale(
    weak_data: Path, finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    from protloc.cli import main
    from protloc.training.adapt import AdaptSettings, adapt_package

    package = finished[1].package_dir
    dim = _dimmer(weak_data, tmp_path / "dim", 0.4)
    settings = AdaptSettings(max_fields=12, min_cells=8, match_nuclei=True)
    result = adapt_package(package, dim, tmp_path / "adapted", settings)
    source, card = read_card(package), read_card(result.out)
    record = card.adaptation
    assert record["fields_used"] == 12 and record["cells_used"] >= 8 and record["cells_per_field"]["median"] > 0
    assert record["segmentation"]["match_nuclei"] is True
    # the cells a 0.4x dimmer microscope shows: each channel's mean well below the source crops' (12 of the 24
    # fields, whose green differs by class: not exactly 0.4x)
    assert all(a < 0.85 * b for a, b in zip(card.input.mean, source.input.mean, strict=True))
    assert card.thresholds == source.thresholds and card.cells is not None and source.cells is not None
    assert card.cells.segmentation["match_nuclei"] is True and "match_nuclei" not in source.cells.segmentation
    assert card.cells.fusion == source.cells.fusion and card.cells.image_head == source.cells.image_head
    # the carried field model adapted on the fields, inside the one package
    field_card = read_card(result.out / "field")
    assert field_card.adaptation["fields_used"] == 12 and record["field_model"]["fields_used"] == 12
    before = read_card(package / "field").input.mean
    assert all(a < 0.85 * b for a, b in zip(field_card.input.mean, before, strict=True))
    # predict --cells takes it as it is, segmenting each field at its nuclei's scale
    predictor = open_cell_predictor(result.out)
    assert predictor.segmenter.settings()["match_nuclei"] is True and predictor.field_backend is not None
    fields = open_dataset(dim, channels=None)
    image = read_sample(fields.files[fields.ids[0]], CHANNELS)
    assert len(predict_field_cells(predictor, image, channels=CHANNELS).cells) > 0
    # the crops adapted on: a uniform choice of at most max_cells of every cell, without holding them all
    from protloc.training.adapt import cell_inputs

    two = fields.subset(np.arange(2))
    every, counts = cell_inputs(two, source, predictor.segmenter, max_cells=100_000)
    few, _ = cell_inputs(two, source, predictor.segmenter, max_cells=5, seed=1)
    assert len(every) == sum(counts) > 5 and len(few) == 5
    assert {c.tobytes() for c in few} <= {c.tobytes() for c in every}
    # ... and so do the watcher and the service
    require("fastapi")
    require("watchfiles")
    from fastapi.testclient import TestClient

    from protloc.serve import create_app
    from protloc.watch import watch_folder

    folder = tmp_path / "microscope"
    shutil.copytree(weak_data / "test", folder)
    assert watch_folder(folder, result.out, cells=True, once=True, settle=0).classified == 3
    with TestClient(create_app(result.out, backend="torch"), base_url="http://localhost") as client:
        # /model describes the field network it serves (the carried field model, adapted on the 12 fields) and,
        # under cells, the cell model's own adaptation
        info = client.get("/model").json()
        assert info["adaptation"]["fields_used"] == 12 and "cells_used" not in info["adaptation"]
        assert info["cells"]["adaptation"]["cells_used"] == record["cells_used"] > 0
    # too few cells, and match_nuclei for a field model: refused, nothing written
    with pytest.raises(DataError, match="cell\\(s\\) found"):
        adapt_package(package, dim, tmp_path / "no", AdaptSettings(max_fields=8, min_cells=100000, max_cells=100000))
    with pytest.raises(ConfigError, match="a field model"):
        adapt_package(package / "field", dim, tmp_path / "no", AdaptSettings(match_nuclei=True))
    assert not (tmp_path / "no").exists()
    assert main(["adapt", str(package), str(dim), "--out", str(tmp_path / "cli"), "--max-fields", "8"]) == 0
    assert read_card(tmp_path / "cli").adaptation["cells_used"] > 0


def test_a_refused_field_model_stays_as_it_was_in_an_adapted_cell_package(
    weak_data: Path,
    finished: tuple[Path, Any, list[PipelineProgress]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import protloc.training.adapt as adapt
    from protloc.cli import main

    package = finished[1].package_dir
    refusal = {"run": True, "passed": False, "macro_f1_before": 0.5, "macro_f1_adapted": 0.4}
    monkeypatch.setattr(
        adapt, "_run_guard", lambda source, *a: refusal if source.path.name == "field" else {"run": False}
    )
    dim = _dimmer(weak_data, tmp_path / "dim", 0.4)
    assert main(["adapt", str(package), str(dim), "--out", str(tmp_path / "a"), "--min-fields", "8"]) == 0
    said = capsys.readouterr().out
    assert "its field model kept as it was" in " ".join(said.split()) and "0.500 to 0.400" in said
    record = read_card(tmp_path / "a").adaptation
    assert record["field_model"]["adapted"] is False and record["field_model"]["guard"] == refusal
    for name in ("card.json", "weights.safetensors"):  # the carried field model, byte for byte
        assert (tmp_path / "a" / "field" / name).read_bytes() == (package / "field" / name).read_bytes()
    # the same refusal of a field model package alone writes nothing
    with pytest.raises(adapt.AdaptationRefusedError, match="nothing written"):
        adapt.adapt_package(package / "field", dim, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_adapt_segments_genuine_2021_fields_as_a_person_counts_them(
    finished: tuple[Path, Any, list[PipelineProgress]], tmp_path: Path
) -> None:
    from tests.helpers import realdata
    from tests.test_cells_segment import EYE_COUNTS

    hpa2021 = realdata("hpa2021_trainandgain/images")
    from protloc.training.adapt import AdaptSettings, adapt_package

    settings = AdaptSettings(min_fields=7, min_cells=8)
    record = adapt_package(finished[1].package_dir, hpa2021, tmp_path / "a", settings).record
    assert record["fields_used"] == 7 and record["field_model"]["fields_used"] == 7
    counted = sorted(EYE_COUNTS.values())
    found = record["cells_per_field"]
    assert 0.7 * counted[0] <= found["min"] and found["max"] <= 1.4 * counted[-1]
    assert 0.7 * counted[3] <= found["median"] <= 1.4 * counted[3]
    assert 0.8 * sum(counted) <= record["cells_used"] <= 1.25 * sum(counted)  # every cell, under max_cells
