"""Ensembles: several packages (typically the K fold models of one recipe) averaged into one package.

The ensemble's network averages its members' probabilities (:class:`protloc.models.EnsembleNetwork`), and
the ensemble is itself a package (``kind: ensemble``, members copied under ``members/``), so predict, export,
explain and the service take it like any model. Thresholds are combined in one of two ways:

* ``oof`` (default when every member carries its ``validation.csv``): refitted per class on the members'
  out-of-fold predictions pooled together, each image predicted by the member that did not train on it;
* ``mean``: the per-class mean of the members' thresholds.

Members are copied, not loaded, so building an ensemble is quick.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protloc.card import VALIDATION_FILE, read_card, resolve_package_path
from protloc.classes import CLASS_NAMES
from protloc.errors import ModelError
from protloc.metrics import evaluate, fit_thresholds

THRESHOLD_METHODS = ("auto", "oof", "mean")


def _read_validation(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = folder / VALIDATION_FILE
    if not path.is_file():
        return None
    from protloc.classes import parse_labels

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "Target" not in rows[0]:
        return None
    probabilities = np.array([[float(r[name]) for name in CLASS_NAMES] for r in rows], np.float32)
    truth = np.stack([parse_labels(r["Target"], allow_empty=True) for r in rows])
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
        if card["kind"] != "model":
            raise ModelError(f"{folder}: is itself an ensemble; list its members instead")
        if card["input"]["channels"] != first["input"]["channels"] or card["input"]["size"] != first["input"]["size"]:
            raise ModelError(
                f"{folder}: takes {card['input']['channels']} at {card['input']['size']} px but {folders[0]} takes "
                f"{first['input']['channels']} at {first['input']['size']} px; ensemble members must agree"
            )
        crops = (card.get("cells") or {}).get("padding"), "cells" in card
        if crops != ((first.get("cells") or {}).get("padding"), "cells" in first):
            raise ModelError(
                f"{folder}: cell models (cut from masked crops) and field models, or cell models cut with other "
                "padding, cannot be averaged; ensemble members must agree"
            )
    pooled = [_read_validation(f) for f in folders]
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
        fitted = fit_thresholds(truth, probabilities, min_positives)
        values = fitted.values
        info.update(methods=fitted.methods, min_positives=min_positives, oof_samples=len(truth))
        metrics["out_of_fold"] = evaluate(truth, probabilities, values, min_one=True).summary()
    else:
        values = [float(np.mean([c["thresholds"][i] for c in cards])) for i in range(len(CLASS_NAMES))]
    names = [f"m{i}-{Path(f).parent.name or Path(f).name}"[:60] for i, f in enumerate(folders)]
    card = _ensemble_card(cards, names, values, info, metrics)
    from protloc.package import save_package

    return save_package(out, None, card, members=dict(zip(names, folders, strict=True)))


def _ensemble_card(
    cards: list[dict[str, Any]],
    names: list[str],
    thresholds: list[float],
    info: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    from protloc.package import new_card

    first = cards[0]
    return new_card(
        kind="ensemble",
        architecture={
            "name": "ensemble",
            "members": [c["architecture"]["name"] for c in cards],
            "in_chans": first["architecture"]["in_chans"],
            "num_classes": len(CLASS_NAMES),
        },
        channels=list(first["input"]["channels"]),
        size=int(first["input"]["size"]),
        mean=list(first["input"]["mean"]),
        std=list(first["input"]["std"]),
        bit_depth=int(first["input"].get("bit_depth", 16)),
        thresholds=thresholds,
        members=names,
        threshold_info=info,
        metrics={**metrics, "members": [c.get("metrics", {}).get("validation") for c in cards]},
        decision={"rule": "mean member probability >= per-class threshold", "min_one": True},
        training={
            "members": [c.get("training", {}) for c in cards],
            "source_size": first.get("training", {}).get("source_size"),
        },
        **({"cells": first["cells"]} if "cells" in first else {}),
    )
