"""The 2021 challenge's mask encoding and metric, and segmentation quality, on hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools")
pytest.importorskip("skimage")

from protloc.cells.encode import (
    decode_mask,
    encode_mask,
    parse_prediction_string,
    read_submission,
    write_submission,
)
from protloc.cells.masks import FieldCells
from protloc.cells.metrics import (
    average_precision,
    bootstrap_maps,
    cell_map,
    field_detections,
    match_detections,
    percentile_interval,
    pooled_map,
    segmentation_scores,
)
from protloc.errors import DataError

# The two rows of the competition's sample submission (Kaggle, HPA Single Cell Classification, Evaluation).
KAGGLE_SAMPLES = [
    ("eNqLi8xJM7BOTjS08DT2NfI38DfyM/Q3NMAJgJJ+RkBs7JecF5tnAADw+Q9I", 1118, 1600),
    ("eNqLiYrLN7DNCjDMMIj0N/Iz9DcwBEIDfyN/QyA2AAsBRfxMPcKTA1MMADVADIo=", 1600, 1066),
]


@pytest.mark.parametrize(("text", "width", "height"), KAGGLE_SAMPLES)
def test_the_competitions_own_masks_decode_and_encode_back_to_the_same_text(text: str, width: int, height: int) -> None:
    mask = decode_mask(text, height, width)
    assert mask.shape == (height, width)
    assert 100 < mask.sum() < 2000  # one small cell
    assert encode_mask(mask) == text


def test_masks_round_trip_and_keep_their_orientation() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), bool)
    mask[3:9, 40:50] = True  # wide, near the right edge: a transposed decode would not fit
    mask |= rng.random(mask.shape) > 0.97
    assert np.array_equal(decode_mask(encode_mask(mask), 37, 53), mask)
    assert np.array_equal(decode_mask(encode_mask(mask.astype(np.uint8)), 37, 53), mask)
    with pytest.raises(DataError, match="do not cover"):
        decode_mask(encode_mask(mask), 53, 30)
    with pytest.raises(DataError, match="base64"):
        decode_mask("not base64!", 37, 53)
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 3, 4), bool))


def _square_cells(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for cell, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        labels[y0:y1, x0:x1] = cell
    return labels


def test_submission_rows_repeat_a_cells_mask_per_class_and_read_back(tmp_path: Path) -> None:
    labels = _square_cells((20, 30), [(0, 0, 10, 10), (10, 15, 20, 30)])
    probabilities = np.array([[0.9, 0.05, 0.7], [0.1, 0.8, 0.0]])
    field = FieldCells("f1", labels, np.array([1, 2]), probabilities)
    path = write_submission(tmp_path / "submission.csv", [field], min_confidence=0.5)
    rows = read_submission(path)
    width, height, text = rows["f1"]
    assert (width, height) == (30, 20)
    detections = parse_prediction_string("f1", text, height, width)
    assert [(d.cls, d.confidence) for d in detections] == [(0, 0.9), (2, 0.7), (1, 0.8)]
    assert np.array_equal(detections[0].mask, labels == 1) and np.array_equal(detections[1].mask, labels == 1)
    assert np.array_equal(detections[2].mask, labels == 2)
    assert path.read_text().splitlines()[0] == "ID,ImageWidth,ImageHeight,PredictionString"


def test_average_precision_by_hand() -> None:
    # 2 true cells; detections 0.9 TP, 0.8 FP, 0.7 TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Non-increasing precision: 1, 2/3, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert average_precision(np.array([0.8, 0.9, 0.7]), np.array([False, True, True]), 2) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.9]), np.array([True]), 4) == pytest.approx(0.25)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert np.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_a_second_detection_of_a_found_cell_is_a_false_positive_even_if_it_overlaps_another() -> None:
    # Open Images rule: each detection points to the true cell it overlaps most.
    iou = np.array([[0.8, 0.0], [0.7, 0.65]])
    assert match_detections(np.array([0.9, 0.8]), iou, 0.6).tolist() == [True, False]
    # Taken in order of confidence, not of listing.
    assert match_detections(np.array([0.8, 0.9]), iou, 0.6).tolist() == [False, True]


def test_the_iou_threshold_is_0_6_inclusive() -> None:
    truth_labels = _square_cells((10, 20), [(0, 0, 10, 10)])
    exact = np.zeros_like(truth_labels)
    exact[0:10, 0:6] = 1  # 60 of 100 px: IoU 0.6
    short = np.zeros_like(truth_labels)
    short[0:10, 0:6] = 1
    short[9, 5] = 0  # 59 px: IoU 0.59
    truth = [FieldCells("a", truth_labels, np.array([1]), np.array([[1]]))]
    assert cell_map([FieldCells("a", exact, np.array([1]), np.array([[0.9]]))], truth).map == pytest.approx(1.0)
    assert cell_map([FieldCells("a", short, np.array([1]), np.array([[0.9]]))], truth).map == 0.0


def test_cell_map_pools_fields_per_class_and_averages_classes_with_truth() -> None:
    shape = (20, 40)
    boxes = [(0, 0, 10, 10), (0, 20, 10, 30), (10, 0, 20, 10)]
    labels = _square_cells(shape, boxes)
    # Field a: cells 1, 2 are class 0, cell 3 class 1. Field b: cell 1 class 1. Class 2 never occurs.
    truth = [
        FieldCells("a", labels, np.array([1, 2, 3]), np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])),
        FieldCells("b", labels[:, :15], np.array([1, 3]), np.array([[0, 1, 0], [0, 0, 0]])),
    ]
    perfect = [
        FieldCells("b", labels[:, :15], np.array([1, 3]), np.array([[0.1, 0.9, 0.2], [0.0, 0.0, 0.0]])),
        FieldCells("a", labels, np.array([1, 2, 3]), np.array([[0.9, 0.1, 0.0], [0.8, 0.0, 0.0], [0.2, 0.7, 0.0]])),
    ]
    report = cell_map(perfect, truth)
    assert report.map == pytest.approx(1.0)
    assert report.n_true.tolist() == [2, 2, 0]
    assert np.isnan(report.ap[2])  # no true cell: no AP, left out of the mean
    assert report.as_dict(["x", "y", "z"])["per_class"]["z"]["ap"] is None

    # Class 1's most confident detection is on a cell without it (b/1 is class 1, a/1 is not):
    # 0.95 FP, 0.9 TP, 0.7 TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP = 1/2*2/3 + 1/2*2/3 = 2/3.
    worse = [
        FieldCells("b", labels[:, :15], np.array([1, 3]), np.array([[0.1, 0.9, 0.0], [0.0, 0.0, 0.0]])),
        FieldCells("a", labels, np.array([1, 2, 3]), np.array([[0.9, 0.95, 0.0], [0.8, 0.0, 0.0], [0.2, 0.7, 0.0]])),
    ]
    report = cell_map(worse, truth)
    assert report.ap[0] == pytest.approx(1.0)
    assert report.ap[1] == pytest.approx(2 / 3)
    assert report.map == pytest.approx((1 + 2 / 3) / 2)

    # Under the Open Images rule, class 2 detections in fields not verified for class 2 are ignored.
    verified = np.array([[True, True, False], [True, True, False]])
    assert cell_map(worse, truth, verified=verified).n_detections[2] == 0
    assert cell_map(worse, truth).n_detections[2] == 5


def test_resamples_of_fields_are_scored_from_detections_matched_once() -> None:
    """Bootstrap intervals over fields: each field is matched once; any resample pools the chosen fields."""
    shape = (20, 40)
    labels = _square_cells(shape, [(0, 0, 10, 10), (0, 20, 10, 30), (10, 0, 20, 10)])
    rng = np.random.default_rng(0)
    truth, perfect, noisy = [], [], []
    for index in range(12):
        classes = rng.integers(0, 2, (3, 3))
        classes[0, 0] = 1  # every field holds class 0, so every resample has an AP for it
        truth.append(FieldCells(f"f{index}", labels, np.array([1, 2, 3]), classes))
        perfect.append(FieldCells(f"f{index}", labels, np.array([1, 2, 3]), 0.2 + 0.6 * classes))
        noisy.append(FieldCells(f"f{index}", labels, np.array([1, 2, 3]), rng.random((3, 3))))
    detections = {"perfect": field_detections(perfect, truth), "noisy": field_detections(noisy, truth)}
    assert pooled_map(detections["noisy"]).map == pytest.approx(cell_map(noisy, truth).map)
    pair = pooled_map(detections["noisy"], np.array([3, 5]))
    assert pair.map == pytest.approx(cell_map([noisy[3], noisy[5]], [truth[3], truth[5]]).map)
    twice = pooled_map(detections["noisy"], np.array([3, 3, 5]))  # a resample may draw a field twice
    assert np.array_equal(twice.n_true, 2 * truth[3].values.sum(0) + truth[5].values.sum(0))
    maps = bootstrap_maps(detections, resamples=200, seed=1)
    assert maps["perfect"].shape == (200,) and np.allclose(maps["perfect"], 1.0)
    assert (maps["noisy"] < 1.0).all() and maps["noisy"].std() > 0.01
    low, high = percentile_interval(maps["noisy"])
    assert low < pooled_map(detections["noisy"]).map < high
    assert np.array_equal(bootstrap_maps(detections, resamples=200, seed=1)["noisy"], maps["noisy"])
    with pytest.raises(DataError, match="same fields"):
        bootstrap_maps({"a": detections["noisy"], "b": detections["noisy"][1:]})


def test_the_ceilings_of_a_segmentation_take_the_truth_of_matched_cells_or_the_field_labels() -> None:
    from protloc.cells.truth import field_labels_on_cells, truth_on_cells

    truth_labels = _square_cells((20, 40), [(0, 0, 10, 10), (0, 20, 10, 30)])
    truth = [FieldCells("a", truth_labels, np.array([1, 2]), np.array([[1, 0], [0, 1]]))]
    segmented = _square_cells((20, 40), [(0, 0, 10, 8), (0, 24, 10, 30), (12, 0, 20, 10)])  # IoU 0.8, 0.6, none
    cells = [FieldCells("a", segmented, np.array([1, 2, 3]), np.zeros((3, 2)))]
    (ceiling,) = truth_on_cells(cells, truth)
    assert ceiling.values.tolist() == [[1, 0], [0, 1], [0, 0]]
    assert cell_map([ceiling], truth).map == pytest.approx(1.0)  # both matched cells pass IoU 0.6
    (copied,) = field_labels_on_cells(cells, {"a": np.array([1, 1])})
    assert copied.values.tolist() == [[1, 1]] * 3
    assert cell_map([copied], truth).map < 1.0  # every cell claims both classes
    with pytest.raises(DataError, match="no per-cell truth"):
        truth_on_cells([FieldCells("b", segmented, np.array([1, 2, 3]), np.zeros((3, 2)))], truth)


def test_cell_map_refuses_mismatched_fields() -> None:
    labels = _square_cells((10, 10), [(0, 0, 5, 5)])
    truth = [FieldCells("a", labels, np.array([1]), np.array([[1]]))]
    with pytest.raises(DataError, match="has no prediction"):
        cell_map([FieldCells("b", labels, np.array([1]), np.array([[1.0]]))], truth)
    with pytest.raises(DataError, match="cells but per-cell values"):
        FieldCells("a", labels, np.array([1, 2]), np.array([[1.0]]))


def test_segmentation_scores_by_hand() -> None:
    truth = _square_cells((30, 30), [(0, 0, 10, 10), (15, 15, 25, 25)])
    predicted = np.zeros_like(truth)
    predicted[0:10, 0:10] = 1  # exact
    predicted[15:25, 17:27] = 2  # shifted by 2: IoU 80 / 120 = 0.667
    predicted[27:30, 0:3] = 3  # a spurious cell
    at_half, at_cut, at_three_quarters = segmentation_scores([predicted], [truth])
    assert (at_half.true_positives, at_half.false_positives, at_half.false_negatives) == (2, 1, 0)
    assert at_half.f1 == pytest.approx(0.8) and at_half.ap == pytest.approx(2 / 3)
    assert at_half.mean_matched_iou == pytest.approx((1 + 80 / 120) / 2)
    assert (at_three_quarters.true_positives, at_three_quarters.false_negatives) == (1, 1)
    assert at_cut.threshold == 0.6 and at_cut.true_positives == 2  # the shifted cell's 0.667 passes the 2021 cut
    assert at_three_quarters.f1 == pytest.approx(2 / 5)


def test_iou_matrix_with_sparse_cell_ids() -> None:
    from protloc.cells.metrics import iou_matrix

    truth = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4] = 7  # 16 px
    truth[6:10, 6:10] = 3
    predicted = np.zeros_like(truth)
    predicted[0:4, 0:2] = 40  # 8 px inside cell 7: IoU 0.5
    predicted[6:10, 6:10] = 2
    iou, pred_ids, true_ids = iou_matrix(predicted, truth)
    assert pred_ids.tolist() == [2, 40] and true_ids.tolist() == [3, 7]
    assert np.allclose(iou, [[1.0, 0.0], [0.0, 0.5]])


def test_a_submission_refuses_a_cell_missing_from_its_labels(tmp_path: Path) -> None:
    labels = _square_cells((10, 10), [(0, 0, 5, 5)])
    with pytest.raises(DataError, match="cell 4 is not in"):
        write_submission(tmp_path / "s.csv", [FieldCells("f", labels, np.array([4]), np.array([[0.9]]))])
    assert not (tmp_path / "s.csv").exists()
