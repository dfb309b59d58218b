"""Pseudo-labels for cells: refine weak (field-level) cell labels with a cell model, one round at a time.

A cell of a weakly labelled cell data set carries all of its field's classes, though a share of the cells
shows none of them and neighbours differ. One round, as 2021 competitors did: score every training crop with
the cell model trained on the weak labels and **drop a field class from a cell whose probability for it is
below** ``threshold`` (a cell may end with no class: a negative example). Classes are only ever removed,
never added, so the labels stay inside the field's. Then build a new cell data set with
``make_cell_dataset(..., labels=refined)`` and train again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from protloc.cells.dataset import split_cell_sample_id
from protloc.data.catalog import open_dataset
from protloc.data.io import read_sample
from protloc.errors import ConfigError
from protloc.inference.core import batch_probabilities


def refine_labels(
    cell_model: str | Path,
    cell_data: str | Path,
    *,
    threshold: float = 0.1,
    backend: str = "auto",
    batch_size: int = 128,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, float]]:
    """Refined labels of every cell of a (weakly labelled) cell data set.

    Returns:
        ``(field Id, cell) -> multi-hot`` for every cell, and statistics: labels before and after, cells left
        without a class.

    Raises:
        ConfigError: ``threshold`` outside 0-1.
    """
    from protloc.inference.predict import load_backend

    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"pseudo-label threshold must lie between 0 and 1, got {threshold}")
    card, run = load_backend(cell_model, backend)
    channels = card.channels
    size = card.size
    catalog = open_dataset(cell_data, channels=channels, scheme=card.scheme, allow_empty_labels=True)
    assert catalog.labels is not None
    refined: dict[tuple[str, int], np.ndarray] = {}
    before = after = emptied = 0
    for start in range(0, len(catalog), batch_size):
        ids = catalog.ids[start : start + batch_size]
        batch = np.stack([read_sample(catalog.files[i], channels, size=size, sample_id=i) for i in ids])
        probabilities = batch_probabilities(run, batch[:, None])  # the one prediction core, one tile per crop
        for offset, sample_id in enumerate(ids):
            weak = catalog.labels[start + offset].astype(bool)
            kept = weak & (probabilities[offset] >= threshold)
            refined[split_cell_sample_id(sample_id)] = kept.astype(np.uint8)
            before += int(weak.sum())
            after += int(kept.sum())
            emptied += int(weak.any() and not kept.any())
        if on_progress:
            on_progress(min(start + batch_size, len(catalog)), len(catalog))
    stats = {"labels_before": before, "labels_after": after, "cells_without_class": emptied, "cells": len(catalog)}
    return refined, {k: float(v) for k, v in stats.items()}
