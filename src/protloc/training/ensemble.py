"""Ensembles: several packages (typically the K fold models of one recipe) averaged into one package.

The ensemble's network averages its members' probabilities (:class:`protloc.model.network.EnsembleNetwork`), and
the ensemble is itself a package (``kind: ensemble``, members copied under ``members/``), so predict, export,
explain and the service take it like any model. Thresholds are combined in one of two ways:

* ``oof`` (default when every member carries its ``validation.csv``): refitted per class on the members'
  out-of-fold predictions pooled together, each image predicted by the member that did not train on it;
* ``mean``: the per-class mean of the members' thresholds.

Members are copied, not loaded, so building an ensemble is quick.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protloc.errors import ModelError
from protloc.metrics import evaluate, fit_decision
from protloc.model.card import VALIDATION_FILE, Architecture, Decision, ModelCard, read_card, resolve_package_path
from protloc.schemes import ClassScheme

THRESHOLD_METHODS = ("auto", "oof", "mean")


def _read_validation(folder: Path, scheme: ClassScheme) -> tuple[np.ndarray, np.ndarray] | None:
    """A member's validation predictions and their truth (``None`` when it carries none, or without labels)."""
    path = folder / VALIDATION_FILE
    if not path.is_file():
        return None
    from protloc.inference.files import read_probabilities_table

    _, probabilities, truth = read_probabilities_table(path, scheme)
    if truth is None or len(truth) == 0:
        return None
    return truth, probabilities


def make_ensemble(
    members: Sequence[str | Path], out: str | Path, *, thresholds: str = "auto", min_positives: int = 5
) -> Path:
    """Build an ensemble package from member packages; return its folder.

    Raises:
        ModelError: fewer than two members, members that disagree on channels or input size, nested
            ensembles, or ``oof`` asked for while a member lacks its validation predictions.
    """
    if thresholds not in THRESHOLD_METHODS:
        raise ModelError(f"threshold method {thresholds!r} is not one of {', '.join(THRESHOLD_METHODS)}")
    if len(members) < 2:
        raise ModelError("an ensemble needs at least two member packages")
    folders = [resolve_package_path(m) for m in members]
    cards = [read_card(f) for f in folders]
    first = cards[0]
    for folder, card in zip(folders, cards, strict=True):
        if card.kind != "model":
            raise ModelError(f"{folder}: is itself an ensemble; list its members instead")
        if card.scheme.names != first.scheme.names:
            raise ModelError(
                f"{folder}: predicts {card.scheme.describe()} but {folders[0]} predicts {first.scheme.describe()}; "
                "ensemble members must share a class scheme"
            )
        if card.channels != first.channels or card.size != first.size:
            raise ModelError(
                f"{folder}: takes {list(card.channels)} at {card.size} px but {folders[0]} takes "
                f"{list(first.channels)} at {first.size} px; ensemble members must agree"
            )
        if (card.cells is None) != (first.cells is None) or (
            card.cells is not None and first.cells is not None and card.cells.padding != first.cells.padding
        ):
            raise ModelError(
                f"{folder}: cell models (cut from masked crops) and field models, or cell models cut with other "
                "padding, cannot be averaged; ensemble members must agree"
            )
    pooled = [_read_validation(f, first.scheme) for f in folders]
    method = thresholds
    if method == "auto":
        method = "oof" if all(p is not None for p in pooled) else "mean"
    info: dict[str, Any] = {"method": method}
    metrics: dict[str, Any] = {}
    if method == "oof":
        missing = [str(f) for f, p in zip(folders, pooled, strict=True) if p is None]
        if missing:
            raise ModelError(f"{missing[0]}: has no {VALIDATION_FILE}; use thresholds='mean'")
        truth = np.concatenate([p[0] for p in pooled if p is not None])
        probabilities = np.concatenate([p[1] for p in pooled if p is not None])
        # the members' own rule, refitted on the pooled out-of-fold predictions
        settings = first.training.get("config", {}) if isinstance(first.training, dict) else {}
        fitted = fit_decision(
            truth,
            probabilities,
            "joint" if settings.get("threshold_method") == "joint" else "fit",
            min_positives=min_positives,
            shrink=float(settings.get("threshold_shrink", 0.0)),
            micro_weight=float(settings.get("threshold_micro_weight", 0.5)),
        )
        values = fitted.values
        info.update(methods=fitted.methods, min_positives=min_positives, oof_samples=len(truth))
        scored = evaluate(
            truth, probabilities, values, min_one=True, class_names=first.scheme.names, exclusive=first.scheme.exclusive
        )
        metrics["out_of_fold"] = scored.summary()
    else:
        values = [float(np.mean([c.thresholds[i] for c in cards])) for i in range(first.num_classes)]
    names = [f"m{i}-{Path(f).parent.name or Path(f).name}"[:60] for i, f in enumerate(folders)]
    card = _ensemble_card(cards, names, values, info, metrics)
    from protloc.model.package import save_package

    return save_package(out, None, card, members=dict(zip(names, folders, strict=True)))


def _ensemble_card(
    cards: list[ModelCard],
    names: list[str],
    thresholds: list[float],
    info: dict[str, Any],
    metrics: dict[str, Any],
) -> ModelCard:
    from protloc.model.package import new_card

    first = cards[0]
    return new_card(
        kind="ensemble",
        architecture=Architecture(
            "ensemble",
            in_chans=first.architecture.in_chans,
            num_classes=first.num_classes,
            extra={"members": [c.architecture.name for c in cards]},
        ),
        channels=list(first.channels),
        size=first.size,
        mean=list(first.input.mean),
        std=list(first.input.std),
        bit_depth=first.input.bit_depth,
        thresholds=thresholds,
        members=names,
        threshold_info=info,
        metrics={**metrics, "members": [c.metrics.get("validation") for c in cards]},
        decision=Decision("mean member probability >= per-class threshold", min_one=True),
        training={"members": [c.training for c in cards], "source_size": first.source_size},
        scheme=first.scheme,
        cells=first.cells,
    )
