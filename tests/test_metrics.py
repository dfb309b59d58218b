from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from protloc.classes import HPA2018
from protloc.metrics import (
    GRID,
    binarize,
    decide,
    evaluate,
    f1_per_class,
    fit_thresholds,
    macro_f1,
    micro_f1,
    threshold_gain,
)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = (rng.random((400, 28)) < np.linspace(0.4, 0.02, 28)).astype(np.uint8)
    truth[:, 27] = 0  # one class absent from the truth
    # informative but imperfect probabilities, shifted low so 0.5 is a poor cut for most classes
    probabilities = np.clip(0.25 * truth + rng.normal(0.15, 0.1, truth.shape), 0, 1)
    return truth, probabilities


def test_macro_f1_matches_sklearn_on_present_classes(data: tuple[np.ndarray, np.ndarray]) -> None:
    truth, probabilities = data
    predicted = binarize(probabilities, 0.3)
    present = truth.sum(axis=0) > 0
    expected = f1_score(truth[:, present], predicted[:, present], average="macro", zero_division=0)
    assert macro_f1(truth, predicted) == pytest.approx(expected)
    assert np.isnan(f1_per_class(truth, predicted)[27])
    assert micro_f1(truth, predicted) == pytest.approx(f1_score(truth, predicted, average="micro"))


def test_evaluate_report_fields(data: tuple[np.ndarray, np.ndarray]) -> None:
    truth, probabilities = data
    report = evaluate(truth, probabilities, 0.3, HPA2018.names)
    assert report.n_samples == 400
    assert report.classes_scored == 27
    assert report.per_class[27].f1 is None and report.per_class[27].support == 0
    assert report.per_class[0].support == int(truth[:, 0].sum())
    exact = (binarize(probabilities, 0.3) == truth).all(axis=1).mean()
    assert report.exact_match == pytest.approx(exact)
    assert report.macro_f1_at_0_5 == pytest.approx(macro_f1(truth, binarize(probabilities, 0.5)))


def test_fitted_thresholds_beat_one_half_and_fallback_for_rare(data: tuple[np.ndarray, np.ndarray]) -> None:
    truth, probabilities = data
    fitted = fit_thresholds(truth, probabilities, min_positives=10)
    assert len(fitted.values) == 28
    rare = truth.sum(axis=0) < 10
    assert all(m == "fallback" for m, r in zip(fitted.methods, rare, strict=True) if r)
    assert all(v == fitted.fallback for v, r in zip(fitted.values, rare, strict=True) if r)
    assert all(GRID[0] <= v <= GRID[-1] for v in fitted.values)
    assert macro_f1(truth, binarize(probabilities, fitted.values)) > macro_f1(truth, binarize(probabilities, 0.5)) + 0.1


def test_threshold_fit_finds_the_separating_cut() -> None:
    truth = np.zeros((100, 28), np.uint8)
    truth[:30, 3] = 1
    probabilities = np.full((100, 28), 0.05)
    probabilities[:30, 3] = 0.42
    probabilities[30:, 3] = 0.2
    fitted = fit_thresholds(truth, probabilities, min_positives=5)
    assert 0.2 < fitted.values[3] <= 0.42
    assert fitted.methods[3] == "fitted"
    assert f1_per_class(truth, binarize(probabilities, fitted.values))[3] == 1.0


def test_threshold_gain_reports_in_sample_and_cross_validated(data: tuple[np.ndarray, np.ndarray]) -> None:
    truth, probabilities = data
    gain = threshold_gain(truth, probabilities)
    assert gain["gain_in_sample"] > 0
    assert gain["gain_cv"] > 0
    assert gain["macro_f1_fitted_in_sample"] >= gain["macro_f1_fitted_cv"] - 0.05


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(np.zeros((3, 28)), np.zeros((4, 28)), 0.5, HPA2018.names)


def test_an_exclusive_class_never_shares_a_decision_and_the_surer_side_wins() -> None:
    """2021's Negative with other classes over their thresholds: whichever is further over its threshold stays,
    so every decision is a label the scheme's files accept (issue 20: the service answered '2|5|18')."""
    from protloc.schemes import get_scheme

    h21 = get_scheme("hpa2021")
    negative = h21.exclusive[0]
    probabilities = np.full((3, h21.num_classes), 0.1)
    probabilities[0, [2, 5, negative]] = [0.6, 0.7, 0.9]  # Negative surest: alone
    probabilities[1, [2, negative]] = [0.95, 0.6]  # a class surer than Negative: Negative dropped
    probabilities[2, negative] = 0.3  # nothing passes: min-one gives the closest, Negative alone
    labels = decide(probabilities, 0.5, min_one=True, exclusive=h21.exclusive)
    assert [h21.format(row) for row in labels] == ["18", "2", "18"]
    for row in labels:
        h21.parse(h21.format(row))  # every decision parses in its own scheme
    assert decide(probabilities, 0.5, min_one=True)[0].sum() == 3  # without the scheme's rule: all three


def test_evaluate_scores_the_decisions_protloc_makes_for_exclusive_classes() -> None:
    from protloc.schemes import get_scheme

    h21 = get_scheme("hpa2021")
    truth = np.stack([h21.multi_hot([18]), h21.multi_hot([2])])
    probabilities = np.full((2, 19), 0.1)
    probabilities[0, [2, 18]] = [0.6, 0.9]  # decided: Negative alone, as the truth says
    probabilities[1, [2, 18]] = [0.95, 0.55]  # decided: class 2 alone
    scored = evaluate(truth, probabilities, 0.5, h21.names, min_one=True, exclusive=h21.exclusive)
    plain = evaluate(truth, probabilities, 0.5, h21.names, min_one=True)
    assert scored.exact_match == 1.0 and plain.exact_match == 0.0
