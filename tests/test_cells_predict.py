"""Cell data sets, cell models, per-cell prediction and its scores (issue 13, parts 2-5)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protloc.cells.dataset import make_cell_dataset, read_cell_settings, split_cell_sample_id
from protloc.cells.encode import decode_mask, read_submission
from protloc.cells.masks import labels_path, read_labels, write_labels
from protloc.cells.outputs import (
    compare_cell_methods,
    evaluate_cells,
    predict_cells,
    read_cell_predictions,
    score_cells,
)
from protloc.cells.predict import (
    METHOD_BASELINE,
    METHOD_CELL,
    METHOD_MIX,
    is_cell_model,
    open_cell_predictor,
    predict_cells_in_field,
    predict_field_cells,
)
from protloc.cells.pseudo import refine_labels
from protloc.cells.table import read_table
from protloc.cells.truth import read_cell_truth
from protloc.classes import HPA2018
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample
from protloc.errors import ConfigError, DataError, ModelError
from protloc.model.card import read_card
from protloc.schemes import ClassScheme
from tests.helpers import tiny_package

SCHEME = HPA2018
"""The synthetic fields and their per-cell truth are 2018-style data."""
NUM_CLASSES = SCHEME.num_classes
SEGMENTATION = {"segmenter": "classical", "channels": ["blue", "red", "yellow"], "smooth_sigma": 0.5}


@pytest.fixture(scope="module")
def cell_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("cells") / "data"
    make_dataset(root, n_train=10, n_test=3, size=64, seed=4, workers=1, cells=True)
    return root


def _package(
    folder: Path, *, size: int, cells: dict[str, object] | None, seed: int = 0, scheme: ClassScheme = SCHEME
) -> Path:
    return tiny_package(folder, size=size, scheme=scheme, cells=cells, seed=seed)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained cell model (32 px crops) and an untrained field model (64 px): the plumbing, not quality."""
    root = tmp_path_factory.mktemp("packages")
    cell = _package(root / "cell", size=32, cells={"crop_size": 32, "padding": 0.05, "segmentation": SEGMENTATION})
    field = _package(root / "field", size=64, cells=None, seed=1)
    return cell, field


def test_cell_data_set_weak_and_per_cell_labels_with_folds_by_field(cell_data: Path, tmp_path: Path) -> None:
    truth = cell_data / "train_cells_truth"
    weak = make_cell_dataset(cell_data, tmp_path / "weak", masks=truth, labels="field", size=32, n_folds=2)
    per_cell = make_cell_dataset(cell_data, tmp_path / "cells", masks=truth, labels="cells", size=32, n_folds=2)
    fields = open_dataset(cell_data)
    assert fields.labels is not None
    field_labels = dict(zip(fields.ids, fields.labels, strict=True))
    true_cells = {f.id: dict(zip(f.cells.tolist(), f.values, strict=True)) for f in read_cell_truth(truth, NUM_CLASSES)}
    assert weak.cells == per_cell.cells == sum(len(c) for c in true_cells.values())
    weak_catalog = open_dataset(weak.out)
    cell_catalog = open_dataset(weak.out.parent / "cells", allow_empty_labels=True)
    assert weak_catalog.labels is not None and cell_catalog.labels is not None
    for sample_id, labels in zip(weak_catalog.ids, weak_catalog.labels, strict=True):
        field_id, _ = split_cell_sample_id(sample_id)
        np.testing.assert_array_equal(labels, field_labels[field_id])
    for sample_id, labels in zip(cell_catalog.ids, cell_catalog.labels, strict=True):
        field_id, cell = split_cell_sample_id(sample_id)
        np.testing.assert_array_equal(labels, true_cells[field_id][cell])
    assert (cell_catalog.labels.sum(axis=1) == 0).any()  # cells without the protein are negative examples
    # crops are 32 px, masked: the corner of a crop of a small cell is background
    crop = read_sample(weak_catalog.files[weak_catalog.ids[0]], CHANNELS)
    assert crop.shape == (4, 32, 32)
    # folds: every cell of a field in its field's fold
    with (weak.out / "folds.csv").open() as handle:
        folds = {row["Id"]: int(row["fold"]) for row in csv.DictReader(handle)}
    by_field: dict[str, set[int]] = {}
    for sample_id, fold in folds.items():
        by_field.setdefault(split_cell_sample_id(sample_id)[0], set()).add(fold)
    assert all(len(v) == 1 for v in by_field.values()) and {f for v in by_field.values() for f in v} == {0, 1}
    settings = read_cell_settings(weak.out)
    assert settings is not None and settings["crop_size"] == 32 and settings["labels"] == "field"


def test_per_cell_labels_follow_the_matching_true_cell(cell_data: Path, tmp_path: Path) -> None:
    truth = cell_data / "train_cells_truth"
    masks = tmp_path / "masks"
    masks.mkdir()
    fields = read_cell_truth(truth, NUM_CLASSES)
    for field in fields:  # a "segmentation" that numbers the same cells in reverse
        top = int(field.labels.max())
        write_labels(labels_path(masks, field.id), np.where(field.labels > 0, top + 1 - field.labels, 0))
    made = make_cell_dataset(cell_data, tmp_path / "c", masks=masks, truth=truth, labels="cells", size=32, n_folds=2)
    catalog = open_dataset(made.out, allow_empty_labels=True)
    assert catalog.labels is not None
    by_id = {f.id: f for f in fields}
    for sample_id, labels in zip(catalog.ids, catalog.labels, strict=True):
        field_id, cell = split_cell_sample_id(sample_id)
        field = by_id[field_id]
        original = int(field.labels.max()) + 1 - cell
        np.testing.assert_array_equal(labels, field.values[list(field.cells).index(original)])


def _release_2021(cell_data: Path, folder: Path) -> Path:
    """The synthetic fields' labels as the 2021 release writes them (``ID,Label``, ``|``, 19 classes), mapped
    through the documented 2018 -> 2021 mapping; a field left without a class is ``Negative``."""
    from protloc.schemes import get_mapping

    fields = open_dataset(cell_data)
    assert fields.labels is not None
    mapping = get_mapping("hpa2018", "hpa2021")
    labels = mapping.apply(fields.labels)
    negative = mapping.target.resolve("Negative")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels2021.csv"
    rows = ["ID,Label"]
    for field_id, hot in zip(fields.ids, labels, strict=True):
        rows.append(f"{field_id},{mapping.target.format(hot) if hot.any() else negative}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_2021_release_makes_a_cell_data_set_of_the_2021_scheme(cell_data: Path, tmp_path: Path) -> None:
    from protloc.cells.dataset import cell_dataset_scheme

    labels = _release_2021(cell_data, tmp_path)
    fields = open_dataset(cell_data, labels=labels)
    assert fields.scheme.name == "hpa2021" and fields.labels is not None
    made = make_cell_dataset(fields, tmp_path / "c", masks=cell_data / "train_cells_truth", size=32, n_folds=2)
    assert len(made.class_counts) == 19 == fields.scheme.num_classes
    text = (made.out / "train.csv").read_text().splitlines()
    assert text[0] == "ID,Label"
    cells = open_dataset(made.out, allow_empty_labels=True)
    assert cells.scheme.name == "hpa2021" and cells.labels is not None and cells.labels.shape[1] == 19
    field_labels = dict(zip(fields.ids, fields.labels, strict=True))
    for sample_id, hot in zip(cells.ids, cells.labels, strict=True):
        np.testing.assert_array_equal(hot, field_labels[split_cell_sample_id(sample_id)[0]])
    scheme = cell_dataset_scheme(made.out)
    assert scheme is not None and scheme.name == "hpa2021"
    assert made.class_counts == [int(c) for c in cells.labels.sum(axis=0)]


def test_a_mix_of_models_of_different_schemes_is_refused(packages: tuple[Path, Path], tmp_path: Path) -> None:
    from protloc.schemes import get_scheme

    cell_model, _ = packages
    field_2021 = _package(tmp_path / "f21", size=64, cells=None, scheme=get_scheme("hpa2021"))
    assert open_cell_predictor(field_model=field_2021).class_names == read_card(field_2021).scheme.names
    with pytest.raises(ModelError, match="same classes"):
        open_cell_predictor(cell_model, field_2021)


def test_cell_data_set_refuses_a_foreign_folder(cell_data: Path, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_cell_dataset(cell_data, tmp_path / "x", masks=cell_data / "train_cells_truth", overwrite=True)
    assert (tmp_path / "x" / "keep.txt").is_file()


def test_predict_cells_writes_table_submission_anndata_and_pictures(
    cell_data: Path, packages: tuple[Path, Path], tmp_path: Path
) -> None:
    cell_model, _ = packages
    predictor = open_cell_predictor(cell_model)
    assert predictor.method == METHOD_CELL
    masks = cell_data / "test_cells_truth"
    summary = predict_cells(predictor, cell_data, tmp_path / "out", masks=masks, pictures=1)
    table = read_table(tmp_path / "out" / "cells.csv")
    assert summary.cells == len(table["cell"]) > 0
    assert {"id", "cell", "y0", "area", "border", "labels", f"p_{SCHEME.names[0]}"} <= set(table)
    # the 2021 submission: one row per field, each mask decodes back to its cell
    submission = read_submission(tmp_path / "out" / "submission.csv")
    predictions = read_cell_predictions(tmp_path / "out")
    assert set(submission) == {p.id for p in predictions}
    field = predictions[0]
    width, height, text = submission[field.id]
    parts = text.split()
    cls, confidence, encoded = int(parts[0]), float(parts[1]), parts[2]
    mask = decode_mask(encoded, height, width)
    assert any(np.array_equal(mask, field.labels == c) for c in field.cells)
    assert 0 <= cls < NUM_CLASSES and 0 <= confidence <= 1
    import anndata

    adata = anndata.read_h5ad(tmp_path / "out" / "cells.h5ad")
    assert adata.n_obs == summary.cells
    assert adata.obsm["probabilities"].shape == (summary.cells, NUM_CLASSES)
    assert adata.X.shape[1] != NUM_CLASSES or adata.var_names[0].startswith("emb_")  # embeddings in X
    assert adata.uns["method"] == METHOD_CELL
    provenance = json.loads((tmp_path / "out" / "cells_prediction.json").read_text())
    assert provenance["method"] == METHOD_CELL
    assert len(list((tmp_path / "out" / "pictures").glob("*_outlines.png"))) == 1


def test_baseline_gives_every_cell_its_field_probabilities_and_the_mix_averages(
    cell_data: Path, packages: tuple[Path, Path]
) -> None:
    cell_model, field_model = packages
    catalog = open_dataset(cell_data, split="test", channels=None)
    field_id = catalog.ids[0]
    image = read_sample(catalog.files[field_id], CHANNELS)
    labels = read_labels(labels_path(cell_data / "test_cells_truth", field_id))
    baseline = predict_field_cells(
        open_cell_predictor(field_model=field_model), image, channels=CHANNELS, labels=labels
    )
    assert baseline.method == METHOD_BASELINE and baseline.embeddings is None
    assert np.allclose(baseline.probabilities, baseline.probabilities[0])
    cell = predict_field_cells(open_cell_predictor(cell_model), image, channels=CHANNELS, labels=labels)
    assert not np.allclose(cell.probabilities, cell.probabilities[0])  # cells differ
    assert cell.embeddings is not None and len(cell.embeddings) == len(cell.cells)
    mixed = predict_field_cells(
        open_cell_predictor(cell_model, field_model, mix=0.25), image, channels=CHANNELS, labels=labels
    )
    assert mixed.method == METHOD_MIX
    np.testing.assert_allclose(
        mixed.probabilities, 0.25 * cell.probabilities + 0.75 * baseline.probabilities, rtol=1e-5, atol=1e-6
    )


def test_a_cell_model_exported_to_onnx_predicts_the_same_cells(
    cell_data: Path, packages: tuple[Path, Path], tmp_path: Path
) -> None:
    from protloc.deployment.onnx import export_onnx

    cell_model, _ = packages
    copy = shutil.copytree(cell_model, tmp_path / "cell")
    exported = export_onnx(copy)
    catalog = open_dataset(cell_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[0]], CHANNELS)
    labels = read_labels(labels_path(cell_data / "test_cells_truth", catalog.ids[0]))
    with_torch = predict_field_cells(open_cell_predictor(copy), image, channels=CHANNELS, labels=labels)
    onnx = open_cell_predictor(exported.path, backend="onnx", tta="flips")
    assert onnx.method == METHOD_CELL  # the card travels inside the .onnx file
    with_onnx = predict_field_cells(onnx, image, channels=CHANNELS, labels=labels)
    assert with_onnx.embeddings is None
    flipped = predict_field_cells(open_cell_predictor(copy, tta="flips"), image, channels=CHANNELS, labels=labels)
    np.testing.assert_allclose(with_onnx.probabilities, flipped.probabilities, atol=1e-4)
    assert not np.allclose(with_torch.probabilities, flipped.probabilities, atol=1e-6)  # TTA changed something


def test_a_cell_models_activation_map_lies_on_its_cells_scaled_by_their_weights(
    cell_data: Path, packages: tuple[Path, Path]
) -> None:
    from protloc.cells.activation import cell_activation_map
    from protloc.explanation.explain import Explainer

    cell_model, field_model = packages
    catalog = open_dataset(cell_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[0]], CHANNELS)
    labels = read_labels(labels_path(cell_data / "test_cells_truth", catalog.ids[0]))
    cells = [int(c) for c in np.unique(labels) if c > 0]
    explainer = Explainer(cell_model)
    plain = cell_activation_map(explainer, image, labels, 2)
    assert plain.shape == labels.shape and plain[labels == 0].max() == 0
    assert all(0 < plain[labels == c].max() <= 1 for c in cells)
    weights = {cells[0]: 0.0, cells[-1]: 0.25}
    weighted = cell_activation_map(explainer, image, labels, 2, weights=weights)
    assert weighted[labels == cells[0]].max() == 0
    np.testing.assert_allclose(weighted[labels == cells[-1]], 0.25 * plain[labels == cells[-1]], rtol=1e-5)
    with pytest.raises(ModelError, match="not a cell model"):
        cell_activation_map(Explainer(field_model), image, labels, 2)


def test_predict_cells_in_field_returns_plain_dicts(cell_data: Path, packages: tuple[Path, Path]) -> None:
    cell_model, _ = packages
    catalog = open_dataset(cell_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[0]], CHANNELS)
    labels = read_labels(labels_path(cell_data / "test_cells_truth", catalog.ids[0]))
    rows = predict_cells_in_field(cell_model, image, labels=labels)
    assert [r["cell"] for r in rows] == sorted(int(c) for c in np.unique(labels) if c > 0)
    first = rows[0]
    y0, x0, y1, x1 = first["box"]
    assert first["mask"].shape == (y1 - y0, x1 - x0) and first["mask"].sum() == first["area"]
    assert set(first["probabilities"]) == set(SCHEME.names) and first["method"] == METHOD_CELL


def test_a_cell_model_cut_with_context_is_fed_crops_cut_the_same_way(
    cell_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``context`` travels from the cell data set to the card and from the card to every crop prediction cuts."""
    from protloc.cells import predict as cells_predict
    from protloc.model.card import CellSpec

    made = make_cell_dataset(
        cell_data, tmp_path / "crops", masks=cell_data / "train_cells_truth", size=32, context=0.25
    )
    settings = read_cell_settings(made.out)
    assert settings is not None
    assert settings["context"] == 0.25 and settings["input"].startswith("crop with context")
    spec = CellSpec.from_settings(settings)
    assert spec.context == 0.25 and CellSpec.from_dict(spec.to_dict()).context == 0.25
    assert CellSpec.from_dict({"crop_size": 32}).context == 0.0  # cards from before: masked crops
    with pytest.raises(ModelError, match="context"):
        CellSpec.from_dict({"crop_size": 32, "context": 2})
    model = _package(tmp_path / "model", size=32, cells={**settings, "segmentation": SEGMENTATION})
    seen: list[float] = []
    real = cells_predict.cells_of_field

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["context"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cells_predict, "cells_of_field", spy)
    catalog = open_dataset(cell_data, split="test", channels=None)
    image = read_sample(catalog.files[catalog.ids[0]], CHANNELS)
    labels = read_labels(labels_path(cell_data / "test_cells_truth", catalog.ids[0]))
    assert predict_cells_in_field(model, image, labels=labels) and seen == [0.25]


def test_cell_models_ensemble_and_stay_cell_models(packages: tuple[Path, Path], tmp_path: Path) -> None:
    from protloc.training.ensemble import make_ensemble

    cell_model, _ = packages
    other = _package(
        tmp_path / "other", size=32, cells={"crop_size": 32, "padding": 0.05, "segmentation": SEGMENTATION}, seed=3
    )
    ensemble = make_ensemble([cell_model, other], tmp_path / "ens", thresholds="mean")
    predictor = open_cell_predictor(ensemble)
    assert predictor.method == METHOD_CELL and predictor.cell_card is not None
    assert predictor.cell_card.cells is not None and predictor.cell_card.cells.crop_size == 32
    with pytest.raises(ModelError, match="must agree"):
        make_ensemble([cell_model, _package(tmp_path / "f32", size=32, cells=None)], tmp_path / "bad")


def test_wrong_model_kinds_are_refused(packages: tuple[Path, Path]) -> None:
    cell_model, field_model = packages
    with pytest.raises(ConfigError, match="needs a cell model"):
        open_cell_predictor()
    with pytest.raises(ModelError, match="not a cell model"):
        open_cell_predictor(field_model)
    with pytest.raises(ModelError, match="is a cell model"):
        open_cell_predictor(field_model=cell_model)
    with pytest.raises(ConfigError, match="mix"):
        open_cell_predictor(cell_model, field_model, mix=1.5)


def test_truth_scored_against_itself_is_perfect_and_a_baseline_is_worse(
    cell_data: Path, packages: tuple[Path, Path], tmp_path: Path
) -> None:
    truths = read_cell_truth(cell_data / "test_cells_truth", NUM_CLASSES)
    perfect = score_cells(truths, truths)
    assert perfect.map == pytest.approx(1.0)
    assert perfect.segmentation[0]["f1"] == pytest.approx(1.0)
    _, field_model = packages
    predictor = open_cell_predictor(field_model=field_model)
    results = compare_cell_methods(predictor, cell_data, masks=cell_data / "test_cells_truth")
    assert list(results) == [METHOD_BASELINE]
    assert results[METHOD_BASELINE].map < 1.0
    assert results[METHOD_BASELINE].segmentation[0]["f1"] == pytest.approx(1.0)  # the true masks were given
    predict_cells(predictor, cell_data, tmp_path / "p", masks=cell_data / "test_cells_truth")
    evaluation = evaluate_cells(tmp_path / "p", cell_data)
    assert evaluation.map == pytest.approx(results[METHOD_BASELINE].map)
    assert evaluation.method == METHOD_BASELINE
    assert json.loads((tmp_path / "p" / "cells_evaluation.json").read_text())["method"] == METHOD_BASELINE
    from protloc.cells.report import cells_section_html

    html = cells_section_html(tmp_path / "p", evaluation=evaluation, rows=5)
    assert "every cell is given its field" in html and f"{evaluation.map:.3f}" in html
    assert html.count("<tr>") == 1 + 5


def test_pseudo_labels_only_remove_field_classes(cell_data: Path, packages: tuple[Path, Path], tmp_path: Path) -> None:
    cell_model, _ = packages
    weak = make_cell_dataset(
        cell_data, tmp_path / "weak", masks=cell_data / "train_cells_truth", labels="field", size=32, n_folds=2
    )
    refined, stats = refine_labels(cell_model, weak.out, threshold=0.5)
    catalog = open_dataset(weak.out)
    assert catalog.labels is not None
    for sample_id, labels in zip(catalog.ids, catalog.labels, strict=True):
        new = refined[split_cell_sample_id(sample_id)]
        assert not (new & ~labels.astype(bool)).any()
    assert stats["labels_after"] <= stats["labels_before"] == catalog.labels.sum()
    again = make_cell_dataset(
        cell_data, tmp_path / "pseudo", masks=cell_data / "train_cells_truth", labels=refined, size=32, n_folds=2
    )
    assert again.cells == weak.cells
    with pytest.raises(ConfigError):
        refine_labels(cell_model, weak.out, threshold=2.0)


@pytest.mark.slow
def test_cli_predict_and_evaluate_cells(cell_data: Path, packages: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from protloc.cli import app

    cell_model, field_model = packages
    masks = str(cell_data / "test_cells_truth")
    runner = CliRunner()
    result = runner.invoke(
        app, ["predict", str(field_model), str(cell_data), "--cells", "--masks", masks, "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and (tmp_path / "b" / "submission.csv").is_file()
    result = runner.invoke(
        app,
        [
            "evaluate", str(cell_model), str(cell_data), "--cells", "--split", "test", "--field-model",
            str(field_model), "--masks", masks, "--out", str(tmp_path / "e"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "e" / "cells_evaluation.json").read_text())
    assert set(scores) == {METHOD_CELL, METHOD_BASELINE}  # a mix only when asked (--mix)
    # the baseline evaluate scores is the one predict wrote for the same masks, scored on its own
    from protloc.cells.outputs import evaluate_cells

    alone = evaluate_cells(tmp_path / "b", cell_data)
    assert scores[METHOD_BASELINE]["map_iou_0_6"] == pytest.approx(alone.map, abs=1e-6)
    result = runner.invoke(
        app,
        [
            "evaluate", str(cell_model), str(cell_data), "--cells", "--split", "test", "--field-model",
            str(field_model), "--masks", masks, "--mix", "0.5", "--out", str(tmp_path / "m"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mixed = json.loads((tmp_path / "m" / "cells_evaluation.json").read_text())
    assert set(mixed) == {METHOD_CELL, METHOD_BASELINE, "cell + field mix 0.5"}
    assert mixed[METHOD_CELL] == scores[METHOD_CELL]  # the same cells scored the same way in both runs
    shutil.rmtree(tmp_path / "b")


@pytest.mark.slow
def test_a_cell_model_trains_with_the_ordinary_engine(cell_data: Path, tmp_path: Path) -> None:
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    # weak labels from a 2021 release: the cell model predicts the 2021 scheme
    fields = open_dataset(cell_data, labels=_release_2021(cell_data, tmp_path))
    made = make_cell_dataset(
        fields, tmp_path / "cells", masks=cell_data / "train_cells_truth", labels="field", size=32, n_folds=2
    )
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(made.out),
            "out": str(tmp_path / "run"),
            "model": "test_resnet",
            "image_size": 32,
            "epochs": 1,
            "folds": 2,
            "batch_size": 32,
            "cache_dir": str(tmp_path / "cache"),
            "workers": 0,
        },
    )
    result = train(config)
    assert result is not None
    card = read_card(result.package_dir)
    assert is_cell_model(card) and card.cells is not None and card.cells.crop_size == 32 and card.size == 32
    assert card.scheme.name == "hpa2021" and len(card.thresholds) == 19
    # the run used the data set's folds by field
    assert (tmp_path / "run" / "folds.csv").read_text() == (made.out / "folds.csv").read_text()
    predictor = open_cell_predictor(result.package_dir)
    assert predictor.method == METHOD_CELL and predictor.class_names == card.scheme.names


# ---------------------------------------------------------------------------------- masks from a user (issue 20)


def _masks_of_another_size(cell_data: Path, tmp_path: Path, side: int) -> Path:
    """The test fields' true label images, scaled to ``side`` px (nearest: still label images)."""
    import cv2

    folder = tmp_path / f"masks{side}"
    folder.mkdir()
    for path in (cell_data / "test_cells_truth").glob("*_cells.png"):
        labels = read_labels(path)
        scaled = cv2.resize(labels.astype(np.uint16), (side, side), interpolation=cv2.INTER_NEAREST)
        write_labels(folder / path.name, scaled.astype(np.int32))
    return folder


def test_masks_of_another_size_than_their_fields_are_refused_naming_the_file(
    cell_data: Path, packages: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from protloc.cli import main

    _, field_model = packages
    big = _masks_of_another_size(cell_data, tmp_path, 128)  # the fields are 64 px
    command = [
        "predict",
        str(field_model),
        str(cell_data),
        "--cells",
        "--masks",
        str(big),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(command) == 1
    message = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"error: \S+/masks128/\S+_cells\.png: label image is 128x128 px but field \S+ is 64x64 px; .*", message
    )
    assert not (tmp_path / "o" / "submission.csv").exists()
    predictor = open_cell_predictor(field_model=field_model)
    with pytest.raises(DataError, match="label image is 32x32 px but field .* is 64x64 px"):
        compare_cell_methods(predictor, cell_data, masks=_masks_of_another_size(cell_data, tmp_path, 32))
    image = read_sample(open_dataset(cell_data, split="test").paths(0), CHANNELS)
    with pytest.raises(DataError, match="label image of field f: label image is 16x16 px"):  # the library's check too
        predict_field_cells(predictor, image, channels=CHANNELS, field_id="f", labels=np.ones((16, 16), np.int32))


def test_a_label_image_is_decoded_within_the_pixel_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A label PNG declaring 11000x11000 px is refused from its header (it was decoded: 12.5 s, 2.26 GB)."""
    import time

    from tests.helpers import zero_png

    huge = tmp_path / "f_cells.png"
    huge.write_bytes(zero_png(11000, 11000))
    started = time.perf_counter()
    with pytest.raises(DataError, match="f_cells.png: image of 11000x11000 px .* exceeds the decoding budget"):
        read_labels(huge)
    assert time.perf_counter() - started < 1.0
    small = write_labels(tmp_path / "g_cells.png", np.arange(64 * 64, dtype=np.int32).reshape(64, 64) % 50)
    with pytest.raises(DataError, match="g_cells.png: label image is 64x64 px but field x is 32x48 px"):
        read_labels(small, shape=(48, 32), field="x")  # refused from the header, before decoding
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", str(63 * 64))
    with pytest.raises(DataError, match="exceeds the decoding budget"):
        read_labels(small)
    monkeypatch.delenv("PROTLOC_MAX_PIXELS")
    assert read_labels(small, shape=(64, 64)).max() == 49
