"""Scores for single cells: the 2021 HPA challenge metric and segmentation quality.

**The 2021 challenge metric** (:func:`cell_map`). The competition scored "mAP, with the mean taken over the
19 segmentable classes ... identical to the OpenImages Instance Segmentation Challenge evaluation ...
Segmentation is calculated using IoU with a threshold of 0.6" (Kaggle, *Human Protein Atlas - Single Cell
Classification*, Evaluation). This module computes it as the Open Images evaluator does
(``tensorflow/models``, ``object_detection/utils/per_image_evaluation.py`` and ``metrics.py``):

* A *detection* is one (predicted cell, class, confidence): every predicted cell is a detection for every
  class whose confidence is at least ``min_confidence`` (a cell with several classes is several detections
  with the same mask). A *true instance* of class ``k`` is a true cell labelled ``k``.
* Per field and class, detections are taken by decreasing confidence; each is compared with the true
  instances of that class by **mask IoU** and points to the one it overlaps most (the first on ties). It is
  a true positive when that IoU is **>= 0.6** and that instance is not yet taken by a more confident
  detection; otherwise it is a false positive (including a second detection of an already-found cell, even
  if it overlaps another true cell less).
* Per class, the detections of all fields are pooled and sorted by confidence (descending); precision and
  recall (true positives / true instances of the class) are accumulated; precision is made non-increasing
  from the right and **AP** is the area under that curve summed at each change of recall (Pascal VOC
  "all points"; no 11-point interpolation). A class with true instances but no detections has AP 0.
* **mAP** is the mean of AP over the classes that have at least one true instance in the evaluated fields
  (a class without any has no AP and is left out, as ``np.nanmean`` does in the reference).
* Open Images only counts a detection of class ``k`` in a field whose image-level labels were *verified*
  for ``k``. Pass ``verified`` (fields x classes) to apply that rule; by default every class is verified in
  every field, so a detection of a class in a field without it is a false positive. Group-of and difficult
  boxes do not occur in the HPA data and are not modelled.

**Segmentation quality** (:func:`segmentation_scores`): predicted and true cells are matched one to one
(Hungarian assignment on IoU, a pair counting when IoU >= the threshold); over all fields, F1 =
2 TP / (2 TP + FP + FN) and "AP" in the cell-segmentation sense (cellpose, StarDist) = TP / (TP + FP + FN),
reported at IoU 0.5, 0.6 (the 2021 cut) and 0.75, with the mean IoU of matched pairs; and, for intervals, the
mAP of bootstrap resamples of the fields (:func:`field_detections` once, :func:`bootstrap_maps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protloc.cells.masks import FieldCells
from protloc.errors import DataError

CHALLENGE_IOU = 0.6
"""The 2021 challenge's mask IoU threshold for a true positive."""


def iou_matrix(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask IoU between every predicted and every true cell of one field.

    Returns:
        ``(iou, predicted_ids, true_ids)``: ``iou[i, j]`` is the IoU of predicted cell ``predicted_ids[i]``
        and true cell ``true_ids[j]`` (ids in increasing order).
    """
    if predicted.shape != truth.shape:
        raise DataError(f"predicted labels {predicted.shape} and true labels {truth.shape} differ in size")
    pred_ids = np.unique(predicted)
    pred_ids = pred_ids[pred_ids > 0]
    true_ids = np.unique(truth)
    true_ids = true_ids[true_ids > 0]
    # Dense indices 0..n (0 = background) so one bincount gives every intersection.
    n_pred, n_true = len(pred_ids) + 1, len(true_ids) + 1
    pred_index = _dense(predicted, pred_ids).astype(np.int64)
    true_index = _dense(truth, true_ids)
    joint = np.bincount(pred_index * n_true + true_index, minlength=n_pred * n_true).reshape(n_pred, n_true)
    pred_area = joint.sum(axis=1)[1:, None]
    true_area = joint.sum(axis=0)[None, 1:]
    intersection = joint[1:, 1:].astype(np.float64)
    union = pred_area + true_area - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return iou, pred_ids, true_ids


def _dense(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``labels`` renumbered so that ``ids[i]`` becomes ``i + 1`` (background stays 0), flattened."""
    lookup = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lookup[labels.ravel()]


def average_precision(scores: np.ndarray, is_true: np.ndarray, n_true: int) -> float:
    """Open Images / Pascal VOC all-points AP of detections with ``scores`` and true-positive flags.

    Returns ``nan`` when ``n_true`` is 0 (the class has no AP), ``0.0`` when there are no detections.
    """
    if n_true == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores, kind="stable")[::-1]
    hits = np.asarray(is_true, dtype=np.float64)[order]
    true_positives = np.cumsum(hits)
    false_positives = np.cumsum(1.0 - hits)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / n_true
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def match_detections(scores: np.ndarray, iou: np.ndarray, threshold: float = CHALLENGE_IOU) -> np.ndarray:
    """True-positive flags of one field's detections of one class, by the Open Images greedy rule.

    Args:
        scores: ``(D,)`` detection confidences.
        iou: ``(D, T)`` IoU of each detection with each true instance of the class.
    """
    flags = np.zeros(len(scores), dtype=bool)
    if iou.shape[1] == 0 or len(scores) == 0:
        return flags
    best = np.argmax(iou, axis=1)
    taken = np.zeros(iou.shape[1], dtype=bool)
    for i in np.argsort(scores, kind="stable")[::-1]:
        j = best[i]
        if iou[i, j] >= threshold and not taken[j]:
            flags[i] = True
            taken[j] = True
    return flags


@dataclass
class CellMapReport:
    """The 2021 challenge metric over a set of fields.

    Attributes:
        map: mean AP over the classes with true instances (``nan`` if none has any).
        ap: ``(K,)`` AP per class (``nan`` where the class has no true instance).
        n_true: ``(K,)`` true instances per class.
        n_detections: ``(K,)`` detections counted per class.
        iou_threshold: the mask IoU a true positive needs.
    """

    map: float
    ap: np.ndarray
    n_true: np.ndarray
    n_detections: np.ndarray
    iou_threshold: float = CHALLENGE_IOU

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        names = list(class_names) if class_names is not None else [str(k) for k in range(len(self.ap))]
        return {
            "map": None if np.isnan(self.map) else round(float(self.map), 6),
            "iou_threshold": self.iou_threshold,
            "per_class": {
                name: {
                    "ap": None if np.isnan(ap) else round(float(ap), 6),
                    "true_cells": int(n),
                    "detections": int(d),
                }
                for name, ap, n, d in zip(names, self.ap, self.n_true, self.n_detections, strict=True)
            },
        }


def cell_map(
    predictions: Sequence[FieldCells],
    truths: Sequence[FieldCells],
    *,
    iou_threshold: float = CHALLENGE_IOU,
    min_confidence: float = 0.0,
    verified: np.ndarray | None = None,
) -> CellMapReport:
    """The 2021 challenge mAP of per-cell predictions against per-cell truth (see the module docstring).

    Args:
        predictions: per field, predicted labels and ``(N, K)`` per-class confidences.
        truths: per field (same Ids, any order), true labels and ``(M, K)`` multi-hot classes.
        iou_threshold: mask IoU for a true positive (0.6 in the challenge).
        min_confidence: detections below this confidence are not submitted.
        verified: optional ``(fields, K)`` bool in the order of ``truths``: classes whose detections count in
            each field (a field's true classes always count).

    Raises:
        DataError: Ids differ between predictions and truth, or the class counts disagree.
    """
    detections = field_detections(
        predictions, truths, iou_threshold=iou_threshold, min_confidence=min_confidence, verified=verified
    )
    return pooled_map(detections, iou_threshold=iou_threshold)


@dataclass(frozen=True)
class FieldDetections:
    """One field's detections of every class, each flagged true or false positive by the field's own greedy
    matching: what the 2021 metric pools over fields, so any resample of fields is scored without matching again.

    Attributes:
        id: the field.
        scores: per class, the confidences of the field's detections of that class.
        flags: per class, whether each of those detections is a true positive.
        n_true: ``(K,)`` true instances of each class in the field.
    """

    id: str
    scores: tuple[np.ndarray, ...]
    flags: tuple[np.ndarray, ...]
    n_true: np.ndarray


def field_detections(
    predictions: Sequence[FieldCells],
    truths: Sequence[FieldCells],
    *,
    iou_threshold: float = CHALLENGE_IOU,
    min_confidence: float = 0.0,
    verified: np.ndarray | None = None,
) -> list[FieldDetections]:
    """Every field's matched detections, in the order of ``truths`` (arguments as :func:`cell_map`'s).

    Raises:
        DataError: Ids differ between predictions and truth, or the class counts disagree.
    """
    by_id = {p.id: p for p in predictions}
    missing = [t.id for t in truths if t.id not in by_id]
    if missing or len(by_id) != len(truths):
        extra = sorted(set(by_id) - {t.id for t in truths})
        what = f"field {missing[0]} has no prediction" if missing else f"field {extra[0]} is not in the truth"
        raise DataError(f"cell mAP: {what}")
    if not truths:
        raise DataError("cell mAP: no fields to score")
    n_classes = np.asarray(truths[0].values).shape[1]
    if verified is not None and np.asarray(verified).shape != (len(truths), n_classes):
        raise DataError(f"cell mAP: verified must be ({len(truths)}, {n_classes}), got {np.asarray(verified).shape}")
    empty_scores, empty_flags = np.zeros(0), np.zeros(0, dtype=bool)
    fields = []
    for index, truth in enumerate(truths):
        prediction = by_id[truth.id]
        confidence = np.asarray(prediction.values, dtype=np.float64).reshape(len(prediction.cells), -1)
        classes = np.asarray(truth.values).astype(bool).reshape(len(truth.cells), -1)
        if confidence.shape[1] != n_classes or classes.shape[1] != n_classes:
            raise DataError(f"field {truth.id}: predictions have {confidence.shape[1]} classes, truth {n_classes}")
        iou, pred_ids, true_ids = iou_matrix(prediction.labels, truth.labels)
        pred_rows = np.searchsorted(pred_ids, prediction.cells)
        true_rows = np.searchsorted(true_ids, truth.cells)
        if not (np.isin(prediction.cells, pred_ids).all() and np.isin(truth.cells, true_ids).all()):
            raise DataError(f"field {truth.id}: a listed cell id is not in its label image")
        scores: list[np.ndarray] = []
        flags: list[np.ndarray] = []
        for k in range(n_classes):
            positives = true_rows[classes[:, k]]
            submitted = confidence[:, k] >= min_confidence
            if (verified is not None and not verified[index, k] and len(positives) == 0) or not submitted.any():
                scores.append(empty_scores)
                flags.append(empty_flags)
                continue
            class_iou = iou[np.ix_(pred_rows[submitted], positives)]
            scores.append(confidence[submitted, k])
            flags.append(match_detections(scores[-1], class_iou, iou_threshold))
        fields.append(FieldDetections(truth.id, tuple(scores), tuple(flags), classes.sum(axis=0).astype(np.int64)))
    return fields


def pooled_map(
    detections: Sequence[FieldDetections], fields: np.ndarray | None = None, *, iou_threshold: float = CHALLENGE_IOU
) -> CellMapReport:
    """The 2021 mAP of the detections of ``fields`` (indices into ``detections``, repeats allowed: a bootstrap
    resample; default: every field), pooled per class as :func:`cell_map` pools them."""
    chosen = [detections[int(f)] for f in fields] if fields is not None else list(detections)
    if not chosen:
        raise DataError("cell mAP: no fields to score")
    n_classes = len(chosen[0].n_true)
    n_true = np.sum([d.n_true for d in chosen], axis=0)
    ap = np.full(n_classes, np.nan)
    n_detections = np.zeros(n_classes, dtype=np.int64)
    for k in range(n_classes):
        class_scores = np.concatenate([d.scores[k] for d in chosen])
        class_flags = np.concatenate([d.flags[k] for d in chosen])
        n_detections[k] = len(class_scores)
        ap[k] = average_precision(class_scores, class_flags, int(n_true[k]))
    scored = ap[~np.isnan(ap)]
    mean = float(scored.mean()) if scored.size else float("nan")
    return CellMapReport(map=mean, ap=ap, n_true=n_true, n_detections=n_detections, iou_threshold=iou_threshold)


def bootstrap_maps(
    detections: Mapping[str, Sequence[FieldDetections]], *, resamples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """The mAP of each method over the same ``resamples`` bootstrap resamples of the fields (drawn with
    replacement), so that intervals and paired differences come from one set of resamples.

    Args:
        detections: method -> its :func:`field_detections`, every method over the same fields in the same order.

    Returns:
        method -> ``(resamples,)`` mAPs (a resample in which no class has a true instance gives ``nan``).

    Raises:
        DataError: the methods cover different fields.
    """
    if not detections:
        return {}
    ids = [[d.id for d in fields] for fields in detections.values()]
    if any(i != ids[0] for i in ids):
        raise DataError("bootstrap: every method must be scored on the same fields in the same order")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids[0]), size=(resamples, len(ids[0])))
    return {
        method: np.asarray([pooled_map(fields, draw).map for draw in draws]) for method, fields in detections.items()
    }


def percentile_interval(values: np.ndarray, low: float = 5.0, high: float = 95.0) -> tuple[float, float]:
    """The ``low``-``high`` percentile interval of bootstrap values (``nan`` ignored)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if not finite.size:
        return float("nan"), float("nan")
    return float(np.percentile(finite, low)), float(np.percentile(finite, high))


@dataclass
class SegmentationScores:
    """Matched-cell segmentation quality at one IoU threshold, summed over fields."""

    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    mean_matched_iou: float

    @property
    def f1(self) -> float:
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else 1.0

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN), the "average precision" of cell-segmentation papers at this threshold."""
        denominator = self.true_positives + self.false_positives + self.false_negatives
        return self.true_positives / denominator if denominator else 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "iou": self.threshold,
            "f1": round(self.f1, 6),
            "ap": round(self.ap, 6),
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "mean_matched_iou": round(self.mean_matched_iou, 6),
        }


@dataclass
class _Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    ious: list[np.ndarray] = field(default_factory=list)


SEGMENTATION_IOUS = (0.5, CHALLENGE_IOU, 0.75)
"""IoU thresholds segmentation quality is reported at: the usual 0.5, the 2021 metric's cut, and a strict 0.75."""


def segmentation_scores(
    predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], thresholds: Sequence[float] = SEGMENTATION_IOUS
) -> list[SegmentationScores]:
    """Matched-cell F1 and AP of predicted label images against true ones, one entry per IoU threshold."""
    from scipy.optimize import linear_sum_assignment

    if len(predicted) != len(truth):
        raise DataError(f"{len(predicted)} predicted label images but {len(truth)} true ones")
    tallies = {t: _Tally() for t in thresholds}
    for pred_labels, true_labels in zip(predicted, truth, strict=True):
        iou, pred_ids, true_ids = iou_matrix(pred_labels, true_labels)
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
        pair_iou = iou[rows, cols]
        for threshold, tally in tallies.items():
            good = pair_iou >= threshold
            matched = int(good.sum())
            tally.tp += matched
            tally.fp += len(pred_ids) - matched
            tally.fn += len(true_ids) - matched
            tally.ious.append(pair_iou[good])
    results = []
    for threshold, tally in tallies.items():
        ious = np.concatenate(tally.ious) if tally.ious else np.zeros(0)
        results.append(
            SegmentationScores(
                threshold=threshold,
                true_positives=tally.tp,
                false_positives=tally.fp,
                false_negatives=tally.fn,
                mean_matched_iou=float(ious.mean()) if ious.size else 0.0,
            )
        )
    return results


# --------------------------------------------------------------------------- many scorings of the same cells


@dataclass(frozen=True)
class CellMatches:
    """Predicted cells of a set of fields matched once to the true cells, so that many sets of confidences for
    the same cells (fusion rules, bootstrap resamples) are scored by the 2021 metric without matching again.

    At an IoU threshold above 0.5 a predicted cell overlaps at most one true cell that much, and a true cell at
    most one predicted cell (cells of a label image are disjoint), so whether a detection is a true positive
    does not depend on the confidences: it is one exactly when its cell's match carries the class.
    :func:`matched_map` then equals :func:`cell_map` on the same cells (the tests check it).

    Attributes:
        ids: the fields, in the order of ``truths``.
        offsets: ``(F + 1,)`` the rows of field ``f`` are ``offsets[f]:offsets[f + 1]``.
        cells: ``(N,)`` the predicted cell ids, field after field.
        hits: ``(N, K)`` whether the cell is a true positive of each class.
        n_true: ``(F, K)`` true instances of each class in each field.
    """

    ids: tuple[str, ...]
    offsets: np.ndarray
    cells: np.ndarray
    hits: np.ndarray
    n_true: np.ndarray

    def rows(self, fields: np.ndarray | None = None) -> np.ndarray:
        """The rows of ``fields`` (field indices, repeats allowed: a bootstrap resample), in that order."""
        if fields is None:
            return np.arange(len(self.cells))
        parts = [np.arange(self.offsets[f], self.offsets[f + 1]) for f in np.asarray(fields, dtype=np.int64)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def match_cells(
    predicted: Sequence[FieldCells], truths: Sequence[FieldCells], *, iou_threshold: float = CHALLENGE_IOU
) -> CellMatches:
    """Match the predicted cells of every field (their ``values`` are ignored) to the true cells once.

    Raises:
        DataError: fields differ between ``predicted`` and ``truths``, or ``iou_threshold`` is 0.5 or less
            (matches would no longer be unique: use :func:`cell_map`).
    """
    if iou_threshold <= 0.5:
        raise DataError(f"matched scoring needs an IoU threshold above 0.5, got {iou_threshold}; use cell_map")
    by_id = {p.id: p for p in predicted}
    missing = [t.id for t in truths if t.id not in by_id]
    if missing or len(by_id) != len(truths):
        raise DataError(f"cell matches: field {missing[0] if missing else '?'} differs between predictions and truth")
    offsets = [0]
    cells: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    n_true = []
    for truth in truths:
        prediction = by_id[truth.id]
        classes = np.asarray(truth.values).astype(bool)
        iou, pred_ids, true_ids = iou_matrix(prediction.labels, truth.labels)
        rows = np.searchsorted(pred_ids, prediction.cells)
        true_rows = np.searchsorted(true_ids, truth.cells)
        # classes of each true cell in iou column order
        true_classes = np.zeros((len(true_ids), classes.shape[1]), dtype=bool)
        true_classes[true_rows] = classes
        field_hits = np.zeros((len(prediction.cells), classes.shape[1]), dtype=bool)
        if iou.size:
            best = np.argmax(iou[rows], axis=1)
            good = iou[rows, best] >= iou_threshold
            field_hits[good] = true_classes[best[good]]
        cells.append(np.asarray(prediction.cells, dtype=np.int64))
        hits.append(field_hits)
        n_true.append(classes.sum(axis=0))
        offsets.append(offsets[-1] + len(prediction.cells))
    width = np.asarray(truths[0].values).shape[1] if truths else 0
    return CellMatches(
        ids=tuple(t.id for t in truths),
        offsets=np.asarray(offsets, dtype=np.int64),
        cells=np.concatenate(cells) if cells else np.zeros(0, np.int64),
        hits=np.concatenate(hits) if hits else np.zeros((0, width), bool),
        n_true=np.asarray(n_true, dtype=np.int64).reshape(len(truths), width),
    )


def matched_map(matches: CellMatches, scores: np.ndarray, fields: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The 2021 mAP (and AP per class) of ``scores`` ``(N, K)``, the confidences of ``matches``' cells, over
    ``fields`` (field indices, repeats allowed; default: all)."""
    rows = matches.rows(fields)
    n_true = matches.n_true[np.arange(len(matches.ids)) if fields is None else np.asarray(fields, np.int64)].sum(0)
    values = np.asarray(scores, dtype=np.float64)[rows]
    hits = matches.hits[rows]
    ap = np.asarray([average_precision(values[:, k], hits[:, k], int(n_true[k])) for k in range(len(n_true))])
    scored = ap[~np.isnan(ap)]
    return (float(scored.mean()) if scored.size else float("nan")), ap
