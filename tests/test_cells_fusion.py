"""Fusing cell and field probabilities (issue 19): the rules, their fit by the 2021 mAP, the card, pseudo-labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protloc.cells.fusion import (
    FusionInputs,
    FusionSpec,
    ImageHead,
    cells_section,
    field_model_of,
    fit_fusion,
    fuse,
    fusion_of,
    image_head_of,
    small_cells,
)
from protloc.cells.masks import FieldCells
from protloc.cells.metrics import CellMatches, cell_map, match_cells, matched_map
from protloc.cells.pseudo import refine
from protloc.errors import ConfigError, DataError, ModelError
from tests.helpers import require


def _grid_truth(seed: int, n_fields: int = 6, k: int = 4) -> tuple[list[FieldCells], list[FieldCells]]:
    """Fields of 3 x 3 square cells with random classes, and a segmentation of them that shrinks some cells (IoU
    below 0.6: false positives), merges two, leaves one out and adds a fragment."""
    rng = np.random.default_rng(seed)
    truths, predicted = [], []
    for f in range(n_fields):
        true = np.zeros((60, 60), np.int32)
        for i in range(9):
            y, x = divmod(i, 3)
            true[y * 20 + 1 : y * 20 + 19, x * 20 + 1 : x * 20 + 19] = i + 1
        pred = true.copy()
        pred[pred == 1] = 0
        pred[2:8, 2:8] = 1  # cell 1 shrunk: IoU 36/324
        pred[pred == 3] = 2  # cells 2 and 3 merged into one
        pred[pred == 5] = 0  # cell 5 missed
        pred[45:47, 45:47] = 10  # a fragment inside cell 9
        classes = (rng.random((9, k)) < 0.4).astype(np.uint8)
        truths.append(FieldCells(f"f{f}", true, np.arange(1, 10), classes))
        cells = np.unique(pred)[1:]
        predicted.append(FieldCells(f"f{f}", pred, cells, rng.random((len(cells), k))))
    return predicted, truths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matched_scoring_equals_the_challenge_metric(seed: int) -> None:
    predicted, truths = _grid_truth(seed)
    matches = match_cells(predicted, truths)
    rng = np.random.default_rng(seed + 10)
    for _ in range(4):
        scores = rng.random((len(matches.cells), 4))
        fields, start = [], 0
        for p in predicted:
            fields.append(FieldCells(p.id, p.labels, p.cells, scores[start : start + len(p.cells)]))
            start += len(p.cells)
        fast, per_class = matched_map(matches, scores)
        slow = cell_map(fields, truths)
        assert fast == pytest.approx(slow.map, abs=1e-12)
        np.testing.assert_allclose(per_class, slow.ap, equal_nan=True)
    # a bootstrap resample of fields (repeats allowed) is the metric on those fields
    draw = np.asarray([0, 0, 3, 5])
    resampled = [dataclasses.replace(t, id=f"r{i}") for i, t in enumerate(truths[j] for j in draw)]
    fields = []
    for i, j in enumerate(draw):
        rows = matches.rows(np.asarray([j]))
        fields.append(FieldCells(f"r{i}", predicted[j].labels, predicted[j].cells, scores[rows]))
    assert matched_map(matches, scores, draw)[0] == pytest.approx(cell_map(fields, resampled).map, abs=1e-12)
    with pytest.raises(DataError):
        match_cells(predicted, truths, iou_threshold=0.5)


def test_each_rule_computes_what_its_name_says() -> None:
    c = np.asarray([[0.8, 0.1, 0.2], [0.3, 0.6, 0.9]])
    i = np.asarray([0.5, 0.4, 0.1])
    np.testing.assert_allclose(fuse(FusionSpec(), c, None), c, rtol=1e-6)
    baseline = fuse(FusionSpec("image"), None, i, border=np.zeros(2, bool))  # N from the per-cell flags
    np.testing.assert_allclose(baseline, np.tile(i, (2, 1)), rtol=1e-6)
    np.testing.assert_allclose(fuse(FusionSpec("product"), c, i), c * i, rtol=1e-6)
    np.testing.assert_allclose(fuse(FusionSpec("mean", weight=0.3), c, i), 0.3 * c + 0.7 * i, rtol=1e-6)
    np.testing.assert_allclose(fuse(FusionSpec("geometric", weight=0.75), c, i), c**0.75 * i**0.25, rtol=1e-5)
    # Negative (class 2): the larger of the two, or the chance the cell shows none of the others
    by_max = fuse(FusionSpec("product", negative="max"), c, i, negative=[2])
    np.testing.assert_allclose(by_max[:, 2], np.maximum(c[:, 2], i[2]), rtol=1e-6)
    np.testing.assert_allclose(by_max[:, :2], (c * i)[:, :2], rtol=1e-6)
    none = fuse(FusionSpec("cell", negative="none-of-others"), c, i, negative=[2])
    np.testing.assert_allclose(none[:, 2], (1 - c[:, 0]) * (1 - c[:, 1]), rtol=1e-6)
    # border and small cells weigh less
    damped = fuse(FusionSpec(border=0.5, small=0.25), c, None, border=np.asarray([True, False]), small=[True, True])
    np.testing.assert_allclose(damped, c * np.asarray([[0.125], [0.25]]), rtol=1e-6)
    assert small_cells(np.asarray([100, 110, 20, 90]), 0.25).tolist() == [False, False, True, False]
    with pytest.raises(ConfigError, match="needs the image"):
        fuse(FusionSpec("product"), c, None)
    with pytest.raises(ConfigError):
        FusionSpec("sum")


def _constructed(
    rng: np.random.Generator, *, n_fields: int = 40, cells: int = 8, image: str = "informative", negative: bool = False
) -> tuple[FusionInputs, CellMatches]:
    """Fields whose classes show in some of their cells only. The cell model separates the cells that show a
    class from those that do not within a field that has it, but scores cells of fields without it at random;
    the image probabilities say which fields have which class (``informative``) or nothing (``noise``).
    With ``negative``, class 2 is Negative (a cell that shows neither class 0 nor 1) and the cell model's
    Negative score is noise."""
    k = 3
    field_has = rng.random((n_fields, k)) < 0.5
    if negative:
        field_has[:, 2] = False
    shows = (rng.random((n_fields, cells, k)) < 0.5) & field_has[:, None, :]
    if negative:
        shows[..., 2] = ~shows[..., 0] & ~shows[..., 1]
    cell = np.where(shows, rng.uniform(0.6, 1.0, shows.shape), rng.uniform(0.0, 0.4, shows.shape))
    cell = np.where(field_has[:, None, :] | negative, cell, rng.uniform(0, 1, shows.shape))
    if negative:
        cell[..., 2] = rng.uniform(0, 1, (n_fields, cells))
    if image == "informative":
        field = np.where(field_has, rng.uniform(0.8, 1.0, field_has.shape), rng.uniform(0.0, 0.2, field_has.shape))
    else:
        field = rng.uniform(0, 1, field_has.shape)
    n = n_fields * cells
    inputs = FusionInputs(
        cell=cell.reshape(n, k),
        images={"field model": np.repeat(field, cells, axis=0)},
        border=np.zeros(n, bool),
        areas=np.full(n, 100),
        offsets=np.arange(0, n + 1, cells),
        field_labels=shows.any(axis=1).astype(np.uint8),
    )
    matches = CellMatches(
        ids=tuple(f"f{i}" for i in range(n_fields)),
        offsets=inputs.offsets,
        cells=np.tile(np.arange(1, cells + 1), n_fields),
        hits=shows.reshape(n, k),
        n_true=shows.sum(axis=1),
    )
    return inputs, matches


def test_the_fit_picks_the_product_where_only_the_product_ranks_every_cell_right() -> None:
    inputs, matches = _constructed(np.random.default_rng(0))
    fit = fit_fusion(inputs, matches)
    assert fit.spec.rule == "product" and fit.spec.image == "field model"
    assert fit.map == pytest.approx(1.0) and fit.cell_alone < 0.9
    assert fit.spec.thresholds is not None and len(fit.spec.thresholds) == 3
    summary = fit.summary()
    assert summary["chosen"].startswith("cell x image") and summary["best_per_rule"]["product (field model)"] == 1.0


def test_the_fit_keeps_the_cell_model_alone_when_the_image_says_nothing() -> None:
    inputs, matches = _constructed(np.random.default_rng(1), image="noise")
    inputs.cell = np.where(matches.hits, 0.7 + 0.3 * inputs.cell, 0.3 * inputs.cell)  # a perfect cell model
    fit = fit_fusion(inputs, matches)
    assert fit.spec.rule == "cell" and fit.map == pytest.approx(1.0) == fit.cell_alone
    assert all(value <= fit.cell_alone for _, value in fit.candidates)  # nothing beats it


def test_the_fit_chooses_a_negative_rule_where_the_cell_models_own_negative_is_noise() -> None:
    inputs, matches = _constructed(np.random.default_rng(2), negative=True, image="noise")
    fit = fit_fusion(inputs, matches, negative=[2])
    assert fit.spec.negative == "none-of-others" and fit.spec.rule == "cell"
    assert fit.map > fit.cell_alone


def test_min_gain_keeps_the_simple_rule_unless_another_beats_it_clearly() -> None:
    inputs, matches = _constructed(np.random.default_rng(0))
    assert fit_fusion(inputs, matches, min_gain=0.5).spec.rule == "cell"


def test_the_cell_maximum_ranks_the_fields_first_and_the_cells_inside_them() -> None:
    """A cell model trained on field labels scores a cell that merely resembles a class (in a field without it) as
    high as a faint true one; the field's best cell tells the fields apart: the default rule of a plain cell
    model, ``cell^0.25 x cell maximum^0.75``, ranks every cell right where the cell model alone does not."""
    from protloc.cells.outputs import fusion_inputs
    from protloc.cells.predict import FieldScores

    rng = np.random.default_rng(3)
    n_fields, n, k = 40, 8, 3
    field_has = rng.random((n_fields, k)) < 0.5
    shows = (rng.random((n_fields, n, k)) < 0.5) & field_has[:, None, :]
    shows[:, 0, :] |= field_has  # a field with the class shows it in at least one cell
    cell = np.where(shows, rng.uniform(0.6, 1.0, shows.shape), rng.uniform(0.0, 0.3, shows.shape))
    cell[:, 0, :] = np.where(field_has, rng.uniform(0.95, 1.0, field_has.shape), cell[:, 0, :])  # one clear cell
    cell = np.where(field_has[:, None, :], cell, rng.uniform(0.0, 0.8, shows.shape))  # look-alikes elsewhere
    scores = [
        FieldScores(
            f"f{f}",
            np.zeros((4, 4), np.int32),
            np.arange(1, n + 1),
            cell[f],
            None,
            None,
            np.zeros(n, bool),
            np.full(n, 100),
        )
        for f in range(n_fields)
    ]
    assert np.allclose(scores[0].images()["cell maximum"], cell[0].max(axis=0))
    inputs = fusion_inputs(scores, shows.any(axis=1).astype(np.uint8))
    assert set(inputs.images) == {"cell maximum"}  # no field model, no image head: the cells' own answer only
    matches = CellMatches(
        ids=tuple(s.id for s in scores),
        offsets=inputs.offsets,
        cells=np.tile(np.arange(1, n + 1), n_fields),
        hits=shows.reshape(-1, k),
        n_true=shows.sum(axis=1),
    )
    default = FusionSpec("geometric", weight=0.25, image="cell maximum")
    assert default.needs_cell_model and not default.needs_field_model and default.needs_image
    alone, _ = matched_map(matches, inputs.fused(FusionSpec(), []))
    fused, _ = matched_map(matches, inputs.fused(default, []))
    assert alone < 0.95 and fused == pytest.approx(1.0)
    fit = fit_fusion(inputs, matches)
    assert fit.spec.image == "cell maximum" and fit.spec.rule in ("product", "geometric") and fit.map == 1.0
    assert np.array_equal(fuse(default, cell[0], scores[0].images()["cell maximum"]), scores[0].fused(default))
    empty = FieldScores(
        "e",
        np.zeros((4, 4), np.int32),
        np.zeros(0, np.int64),
        np.zeros((0, k)),
        None,
        None,
        np.zeros(0, bool),
        np.zeros(0),
    )
    assert empty.fused(default).shape == (0, k)


def test_the_fusion_and_image_head_travel_on_the_card() -> None:
    spec = FusionSpec("geometric", weight=0.25, negative="max", border=0.5, thresholds=(0.1, 0.2))
    from protloc.model.card import CellSpec

    section = cells_section({"crop_size": 64}, fusion=spec, image_head=ImageHead(3.0), field_model="field")
    assert isinstance(section, CellSpec) and section.crop_size == 64
    assert fusion_of(section) == spec and image_head_of(section) == ImageHead(3.0)
    assert field_model_of(section) == "field"
    # the card's JSON carries them and reads them back
    again = CellSpec.from_dict(section.to_dict())
    assert fusion_of(again) == spec and image_head_of(again) == ImageHead(3.0) and field_model_of(again) == "field"
    plain = CellSpec(crop_size=64)
    assert fusion_of(plain) == FusionSpec() and image_head_of(plain) is None and fusion_of(None) == FusionSpec()
    with pytest.raises(ModelError, match="damaged"):
        fusion_of(CellSpec(crop_size=64, fusion={"rule": "nonsense"}))
    with pytest.raises(ModelError):
        image_head_of(CellSpec(crop_size=64, image_head={"pool": "attention"}))
    assert spec.describe() == "cell^0.25 x image (field model)^0.75, Negative: max, border x0.5"


def test_the_image_head_pools_as_training_does() -> None:
    torch = require("torch")
    from protloc.training.mil import lse_pool

    rng = np.random.default_rng(3)
    probabilities = rng.uniform(0.01, 0.99, (7, 5))
    logits = torch.from_numpy(np.log(probabilities / (1 - probabilities)))
    expected = torch.sigmoid(lse_pool(logits, 4.0)).numpy()
    np.testing.assert_allclose(ImageHead(4.0)(probabilities), expected, rtol=1e-5)
    # between the mean and the max of the cells' scores
    assert (ImageHead(4.0)(probabilities) <= probabilities.max(0) + 1e-6).all()
    assert ImageHead(50.0)(probabilities) == pytest.approx(probabilities.max(0), abs=0.02)


def test_pseudo_labels_only_remove_classes_and_the_relative_rule_follows_the_fields_best_cell() -> None:
    weak = np.asarray([[1, 1], [1, 1], [1, 0], [0, 1]])
    scores = np.asarray([[0.9, 0.05], [0.3, 0.5], [0.2, 0.9], [0.9, 0.15]])
    groups = np.asarray(["a", "a", "b", "b"])
    assert refine(weak, scores, groups, threshold=0.1).tolist() == [[1, 0], [1, 1], [1, 0], [0, 1]]
    # relative 0.5: class 0 of cell 1 (0.3 < 0.5 x 0.9) goes; class 0 of cell 2 stays (best of field b's class-0
    # cells); scores of classes a cell does not carry do not count (cell 3's 0.9 for class 0)
    assert refine(weak, scores, groups, threshold=0.0, relative=0.5).tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]
    with pytest.raises(ConfigError):
        refine(weak, scores, groups, relative=1.5)


def test_cam_in_mask_over_the_whole_field_is_the_field_models_own_probability() -> None:
    torch = require("torch")
    from protloc.cells.cam import cam_in_cells
    from protloc.model.network import PackagedNetwork, create_model

    torch.manual_seed(0)
    network = PackagedNetwork(create_model("test_resnet", 4, 5, image_size=64), [0.1] * 4, [0.2] * 4).eval()
    pixels = np.random.default_rng(0).random((1, 4, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(pixels))).numpy()[0]
    whole = np.ones((96, 96), np.int32)  # one cell covering the field: the average of the map is the pooled logit
    np.testing.assert_allclose(cam_in_cells(network, pixels, whole, np.asarray([1]))[0], expected, atol=2e-3)
    halves = np.ones((96, 96), np.int32)
    halves[:, 48:] = 2
    both = cam_in_cells(network, pixels, halves, np.asarray([1, 2]))
    assert both.shape == (2, 5) and not np.allclose(both[0], both[1])  # the two halves differ
    logits = np.log(both / (1 - both))
    np.testing.assert_allclose(logits.mean(axis=0), np.log(expected / (1 - expected)), atol=2e-2)
