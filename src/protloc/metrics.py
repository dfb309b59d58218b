"""Scores over a whole data set (never mini-batch averages) and per-class decision thresholds.

* **Macro F1** is the mean of the per-class F1 over the classes present in the truth (support > 0): a class
  with no positive image has no defined F1, and averaging in a 0 or a 1 for it would say nothing about the
  model. The number of classes averaged is reported beside it. (Kaggle's leaderboard averaged all 28; on a
  set where every class occurs, the two agree.)
* **Thresholds**: one per class, fitted to maximise that class's F1 on validation (or out-of-fold)
  predictions. Classes with fewer than ``min_positives`` positives get a fallback: the single threshold that
  maximises macro F1 over all classes. :func:`threshold_gain` reports the gain over a plain 0.5, both on the
  data the thresholds were fitted on and cross-validated (fitted on one half, scored on the other), so the
  gain quoted is not flattered by fitting and scoring on the same images.

Torch-free: plain numpy on ``(N, classes)`` arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

GRID = np.round(np.arange(0.02, 0.981, 0.01), 4)


def _counts(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = truth.astype(bool)
    predicted = predicted.astype(bool)
    tp = (truth & predicted).sum(axis=0).astype(np.float64)
    fp = (~truth & predicted).sum(axis=0).astype(np.float64)
    fn = (truth & ~predicted).sum(axis=0).astype(np.float64)
    return tp, fp, fn


def f1_per_class(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of each class (0 where a class has positives but no true positive; nan where it has no support)."""
    tp, fp, fn = _counts(truth, predicted)
    support = tp + fn
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return np.where(support > 0, f1, np.nan)


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes with support > 0 (see the module docstring)."""
    scores = f1_per_class(truth, predicted)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else 0.0


def micro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp, fp, fn = (c.sum() for c in _counts(truth, predicted))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator > 0 else 0.0


def binarize(probabilities: np.ndarray, thresholds: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """``probabilities >= thresholds`` (one value, or one per class) as uint8."""
    cut = np.asarray(thresholds, dtype=np.float64)
    return (probabilities >= cut).astype(np.uint8)


def decide(
    probabilities: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray,
    *,
    min_one: bool = True,
    exclusive: Sequence[int] = (),
) -> np.ndarray:
    """Labels from probabilities: each class at its threshold; with ``min_one``, an image where no class
    passes gets the class closest to passing (highest probability / threshold), since every HPA image shows
    at least one localization.

    ``exclusive`` are the scheme's classes that exclude every other (2021's ``Negative``): where one passes with
    others, the side closer to certain wins (its probability / threshold against the others' highest), so a
    decision is always a label the scheme's own files accept.
    """
    cuts = np.broadcast_to(np.asarray(thresholds, np.float64), (probabilities.shape[-1],))
    labels = (probabilities >= cuts).astype(np.uint8)
    if min_one and len(labels):
        empty = labels.sum(axis=1) == 0
        if empty.any():
            closest = np.argmax(probabilities[empty] / np.maximum(cuts, 1e-6), axis=1)
            labels[np.flatnonzero(empty), closest] = 1
    if len(labels):
        ratio = probabilities / np.maximum(cuts, 1e-6)
        for class_id in exclusive:
            clash = np.flatnonzero(labels[:, class_id].astype(bool) & (labels.sum(axis=1) > 1))
            for row in clash:
                others = np.flatnonzero(labels[row])
                others = others[others != class_id]
                if ratio[row, class_id] >= ratio[row, others].max():
                    labels[row] = 0
                    labels[row, class_id] = 1
                else:
                    labels[row, class_id] = 0
    return labels


@dataclass
class ClassScore:
    class_id: int
    name: str
    support: int
    predicted: int
    precision: float
    recall: float
    f1: float | None
    threshold: float


@dataclass
class EvaluationReport:
    """Scores of predictions against the truth at given thresholds."""

    n_samples: int
    macro_f1: float
    classes_scored: int
    micro_f1: float
    exact_match: float
    macro_f1_at_0_5: float
    per_class: list[ClassScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, float]:
        return {
            "macro_f1": round(self.macro_f1, 4),
            "micro_f1": round(self.micro_f1, 4),
            "exact_match": round(self.exact_match, 4),
            "macro_f1_at_0_5": round(self.macro_f1_at_0_5, 4),
            "classes_scored": self.classes_scored,
            "n_samples": self.n_samples,
        }


def evaluate(
    truth: np.ndarray,
    probabilities: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray,
    class_names: Sequence[str],
    *,
    min_one: bool = False,
    exclusive: Sequence[int] = (),
) -> EvaluationReport:
    """Per-class precision/recall/F1/support, macro and micro F1 and exact-match ratio at ``thresholds``
    (with the at-least-one-label rule of :func:`decide` when ``min_one``, and its rule for the scheme's
    ``exclusive`` classes: the decisions scored are the ones protloc makes)."""
    if truth.shape != probabilities.shape:
        raise ValueError(f"truth {truth.shape} and probabilities {probabilities.shape} differ in shape")
    cuts = np.broadcast_to(np.asarray(thresholds, np.float64), (truth.shape[1],))
    predicted = decide(probabilities, cuts, min_one=min_one, exclusive=exclusive)
    tp, fp, fn = _counts(truth, predicted)
    f1 = f1_per_class(truth, predicted)
    rows = []
    for c in range(truth.shape[1]):
        rows.append(
            ClassScore(
                class_id=c,
                name=class_names[c],
                support=int(tp[c] + fn[c]),
                predicted=int(tp[c] + fp[c]),
                precision=round(float(tp[c] / (tp[c] + fp[c])) if tp[c] + fp[c] else 0.0, 4),
                recall=round(float(tp[c] / (tp[c] + fn[c])) if tp[c] + fn[c] else 0.0, 4),
                f1=None if np.isnan(f1[c]) else round(float(f1[c]), 4),
                threshold=round(float(cuts[c]), 4),
            )
        )
    exact = float((predicted == truth.astype(np.uint8)).all(axis=1).mean()) if len(truth) else 0.0
    return EvaluationReport(
        n_samples=len(truth),
        macro_f1=macro_f1(truth, predicted),
        classes_scored=int(np.isfinite(f1).sum()),
        micro_f1=micro_f1(truth, predicted),
        exact_match=exact,
        macro_f1_at_0_5=macro_f1(truth, binarize(probabilities, 0.5)),
        per_class=rows,
    )


def _best_on_grid(scores: np.ndarray) -> float:
    """The middle of the plateau of best scores (robust to ties from few positives)."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(GRID[best[len(best) // 2]])


def best_global_threshold(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """The single threshold that maximises macro F1 over all classes."""
    scores = np.array([macro_f1(truth, probabilities >= t) for t in GRID])
    return _best_on_grid(scores)


@dataclass
class Thresholds:
    """Per-class thresholds and how each was chosen (``"fitted"``, ``"shrunk"`` or ``"fallback"``)."""

    values: list[float]
    methods: list[str]
    fallback: float
    min_positives: int
    shrink: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_thresholds(
    truth: np.ndarray, probabilities: np.ndarray, min_positives: int = 5, shrink: float = 0.0
) -> Thresholds:
    """Per-class thresholds maximising each class's F1, with a global fallback for rare classes.

    A class with fewer than ``min_positives`` validation positives gets the fallback: the one threshold that
    maximises macro F1 over all classes. With ``shrink`` = k > 0, a fitted threshold is pulled towards that
    fallback by the weight of evidence behind it, ``(n * fitted + k * fallback) / (n + k)`` for a class with
    n positives: a threshold fitted on 3 positives (a plateau of ties, mostly chance) moves most of the way
    to the fallback, one fitted on 300 barely moves.
    """
    if truth.shape != probabilities.shape:
        raise ValueError(f"truth {truth.shape} and probabilities {probabilities.shape} differ in shape")
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    fallback = best_global_threshold(truth, probabilities) if len(truth) else 0.5
    values, methods = [], []
    positives = truth.sum(axis=0)
    for c in range(truth.shape[1]):
        n = int(positives[c])
        if n < max(1, min_positives):
            values.append(fallback)
            methods.append("fallback")
            continue
        column_truth = truth[:, c].astype(bool)
        predicted = probabilities[:, c][:, None] >= GRID[None, :]
        tp = (predicted & column_truth[:, None]).sum(axis=0)
        fp = (predicted & ~column_truth[:, None]).sum(axis=0)
        fn = column_truth.sum() - tp
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(GRID)), where=(2 * tp + fp + fn) > 0)
        fitted = _best_on_grid(f1)
        if shrink > 0:
            values.append(round((n * fitted + shrink * fallback) / (n + shrink), 4))
            methods.append("shrunk")
        else:
            values.append(fitted)
            methods.append("fitted")
    return Thresholds(values=values, methods=methods, fallback=fallback, min_positives=min_positives, shrink=shrink)


def fit_thresholds_jointly(
    truth: np.ndarray,
    probabilities: np.ndarray,
    min_positives: int = 5,
    shrink: float = 0.0,
    micro_weight: float = 0.5,
    sweeps: int = 2,
) -> Thresholds:
    """Per-class thresholds fitted together, under the rule they will be used with, for macro F1 and micro F1.

    :func:`fit_thresholds` maximises each class's F1 on its own, which ignores two things: predictions are
    made with the at-least-one-label rule of :func:`decide` (an image where no class passes gets its closest
    class), and a low threshold that buys a rare class a little F1 can cost many false positives, which micro
    F1 and exact match pay for. Here the independent fit is the start, then each class's threshold (classes
    with at least ``min_positives`` positives; the others keep the fallback) is moved along the grid to the
    value that maximises ``macro F1 + micro_weight * micro F1`` of the whole validation set under
    :func:`decide`, class after class, ``sweeps`` times. Each move can only raise the objective.
    """
    start = fit_thresholds(truth, probabilities, min_positives, shrink)
    if micro_weight < 0:
        raise ValueError(f"micro_weight must be >= 0, got {micro_weight}")
    if len(truth) == 0:
        return start
    cuts = np.asarray(start.values, np.float64)
    truth_bool = truth.astype(bool)

    def objective(candidate: np.ndarray) -> float:
        predicted = decide(probabilities, candidate, min_one=True)
        return macro_f1(truth_bool, predicted) + micro_weight * micro_f1(truth_bool, predicted)

    best = objective(cuts)
    movable = [c for c in range(truth.shape[1]) if start.methods[c] != "fallback"]
    for _ in range(sweeps):
        moved = False
        for c in movable:
            for value in GRID[::2]:
                trial = cuts.copy()
                trial[c] = value
                score = objective(trial)
                if score > best + 1e-12:
                    best, cuts, moved = score, trial, True
        if not moved:
            break
    methods = ["joint" if m != "fallback" else m for m in start.methods]
    return Thresholds(
        values=[round(float(v), 4) for v in cuts],
        methods=methods,
        fallback=start.fallback,
        min_positives=min_positives,
        shrink=shrink,
    )


THRESHOLD_METHODS = ("fit", "joint", "fixed")


def fit_decision(
    truth: np.ndarray,
    probabilities: np.ndarray,
    method: str = "joint",
    *,
    min_positives: int = 5,
    shrink: float = 0.0,
    micro_weight: float = 0.5,
) -> Thresholds:
    """The thresholds of a training config's ``threshold_method``: ``fit`` (each class on its own), ``joint``
    (:func:`fit_thresholds_jointly`) or ``fixed`` (0.5 for every class)."""
    if method == "fit":
        return fit_thresholds(truth, probabilities, min_positives, shrink)
    if method == "joint":
        return fit_thresholds_jointly(truth, probabilities, min_positives, shrink, micro_weight)
    if method == "fixed":
        return Thresholds([0.5] * truth.shape[1], ["fixed"] * truth.shape[1], 0.5, min_positives, 0.0)
    raise ValueError(f"unknown threshold method {method!r}; use {', '.join(THRESHOLD_METHODS)}")


def threshold_gain(
    truth: np.ndarray, probabilities: np.ndarray, min_positives: int = 5, seed: int = 0, repeats: int = 5
) -> dict[str, float]:
    """Macro F1 at 0.5 vs fitted thresholds: in-sample, and cross-validated over random half splits."""
    fitted = fit_thresholds(truth, probabilities, min_positives)
    at_half = macro_f1(truth, binarize(probabilities, 0.5))
    in_sample = macro_f1(truth, binarize(probabilities, fitted.values))
    rng = np.random.default_rng(seed)
    cv_half, cv_fitted = [], []
    if len(truth) >= 20:
        for _ in range(repeats):
            order = rng.permutation(len(truth))
            halves = (order[: len(order) // 2], order[len(order) // 2 :])
            for fit_part, score_part in (halves, halves[::-1]):
                thresholds = fit_thresholds(truth[fit_part], probabilities[fit_part], min_positives)
                cv_fitted.append(macro_f1(truth[score_part], binarize(probabilities[score_part], thresholds.values)))
                cv_half.append(macro_f1(truth[score_part], binarize(probabilities[score_part], 0.5)))
    return {
        "macro_f1_at_0_5": round(at_half, 4),
        "macro_f1_fitted_in_sample": round(in_sample, 4),
        "gain_in_sample": round(in_sample - at_half, 4),
        "macro_f1_at_0_5_cv": round(float(np.mean(cv_half)), 4) if cv_half else float("nan"),
        "macro_f1_fitted_cv": round(float(np.mean(cv_fitted)), 4) if cv_fitted else float("nan"),
        "gain_cv": round(float(np.mean(cv_fitted) - np.mean(cv_half)), 4) if cv_half else float("nan"),
    }
