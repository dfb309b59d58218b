"""Pseudo-labels for cells: refine weak (field-level) cell labels with a cell model, one round at a time.

A cell of a weakly labelled cell data set carries all of its field's classes, though a share of the cells
shows none of them and neighbours differ. One round, as 2021 competitors did: score every training crop with
a cell model and **drop a field class from a cell that scores low for it**: below ``threshold`` (absolute),
or below ``relative`` x the highest score of that class among its field's cells (relative: a field shows the
class in its best cell, so the cells far below it probably do not show it). A cell may end with no class (a
negative example). Classes are only ever removed, never added, so the labels stay inside the field's.

A model that scores the crops it was trained on has seen their weak labels, so scores are best made **out of
fold**: ``protloc train DATA --cells --rounds 1`` (:mod:`protloc.training.cells`) trains one model per half
of the training fields and scores each half with the model that did not see it. ``protloc pseudo-label``
(:func:`pseudo_label`) is one round with a model you have; it writes a labels CSV that ``protloc train
CELL_DATA --labels FILE`` trains on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.cells.dataset import cell_dataset_scheme, read_cell_settings, split_cell_sample_id
from protloc.errors import ConfigError, DataError
from protloc.utils import atomic_write_text


def refine(
    weak: np.ndarray, scores: np.ndarray, groups: np.ndarray, *, threshold: float = 0.1, relative: float = 0.0
) -> np.ndarray:
    """Refined multi-hot labels ``(N, K)``: ``weak`` without the classes a cell scores low for.

    Args:
        weak: ``(N, K)`` the cells' weak labels.
        scores: ``(N, K)`` a cell model's probabilities of the same cells.
        groups: ``(N,)`` the field of each cell (any hashable id per field, e.g. its index).
        threshold: a class is dropped where the cell scores below it.
        relative: a class is also dropped where the cell scores below this fraction of the highest score of the
            class among the cells of its field (0: off).

    Raises:
        ConfigError: a threshold outside 0-1.
    """
    if not 0.0 <= threshold <= 1.0 or not 0.0 <= relative <= 1.0:
        raise ConfigError(f"pseudo-label thresholds must lie between 0 and 1, got {threshold} and {relative}")
    weak = np.asarray(weak).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    keep = scores >= threshold
    if relative > 0:
        _, field_index = np.unique(np.asarray(groups), return_inverse=True)
        best = np.zeros((int(field_index.max(initial=-1)) + 1, scores.shape[1]))
        np.maximum.at(best, field_index, np.where(weak, scores, 0.0))
        keep &= scores >= relative * best[field_index]
    return (weak & keep).astype(np.uint8)


def score_cell_data(
    cell_model: str | Path,
    cell_data: str | Path,
    *,
    fields: Collection[str] | None = None,
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    batch_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A cell model's probabilities of the crops of a cell data set (of ``fields`` only, when given).

    Crops are read from their files, or from the training cache when ``cache_dir`` is given.

    Returns:
        ``(cell sample Ids, probabilities (N, K), the data set's labels (N, K))``.

    Raises:
        DataError: ``cell_data`` is not a cell data set.
    """
    from protloc.data.cache import build_cache
    from protloc.data.catalog import open_dataset
    from protloc.data.io import read_sample
    from protloc.inference.core import Preprocessor, run_with_tta
    from protloc.inference.predict import load_backend

    settings = read_cell_settings(cell_data)
    if settings is None:
        raise DataError(f"{cell_data}: not a cell data set (no cells.json)")
    card, run = load_backend(cell_model, backend)
    channels = tuple(settings["channels"])
    catalog = open_dataset(cell_data, channels=channels, scheme=card.scheme, allow_empty_labels=True)
    assert catalog.labels is not None
    rows = np.arange(len(catalog))
    if fields is not None:
        wanted = set(fields)
        rows = np.asarray([i for i, s in enumerate(catalog.ids) if split_cell_sample_id(s)[0] in wanted], np.int64)
    if cache_dir is not None:  # crops decoded once into the training cache (the pipeline has it already)
        crops = build_cache(catalog, card.channels, card.size, cache_dir=cache_dir, workers=workers).memmap()
    parts = []
    for start in range(0, len(rows), batch_size):
        chosen = rows[start : start + batch_size]
        if cache_dir is not None:
            batch = np.asarray(crops[chosen])
        else:
            files = catalog.files
            batch = np.stack([read_sample(files[catalog.ids[i]], card.channels, size=card.size) for i in chosen])
        parts.append(run_with_tta(run, Preprocessor.to_pixels(batch), ("id",)))
        if on_progress:
            on_progress(min(start + batch_size, len(rows)), len(rows))
    width = card.num_classes
    probabilities = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, width), np.float32)
    return [catalog.ids[i] for i in rows], probabilities, catalog.labels[rows]


@dataclass
class PseudoLabels:
    """What :func:`pseudo_label` wrote."""

    out: Path
    cells: int
    labels_before: int
    labels_after: int
    cells_without_class: int


def write_cell_labels(path: str | Path, cell_data: str | Path, labels: dict[str, np.ndarray]) -> Path:
    """Write cell labels as a labels CSV in the cell data set's scheme and layout (``Id,Target`` or
    ``ID,Label``), for ``protloc train CELL_DATA --labels FILE``."""
    scheme = cell_dataset_scheme(cell_data)
    if scheme is None:
        raise DataError(f"{cell_data}: not a cell data set with a recorded class scheme")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(scheme.header)
    for sample_id, row in labels.items():
        writer.writerow([sample_id, scheme.format(np.asarray(row))])
    return atomic_write_text(path, buffer.getvalue())


def pseudo_label(
    cell_model: str | Path,
    cell_data: str | Path,
    out: str | Path,
    *,
    threshold: float = 0.1,
    relative: float = 0.0,
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PseudoLabels:
    """One round of pseudo-labels for a cell data set with a cell model you have: a labels CSV at ``out``.

    Raises:
        ConfigError: a threshold outside 0-1.
        DataError: ``cell_data`` is not a cell data set.
    """
    ids, scores, weak = score_cell_data(
        cell_model, cell_data, backend=backend, cache_dir=cache_dir, on_progress=on_progress
    )
    groups = np.asarray([split_cell_sample_id(i)[0] for i in ids])
    refined = refine(weak, scores, groups, threshold=threshold, relative=relative)
    path = write_cell_labels(out, cell_data, dict(zip(ids, refined, strict=True)))
    return PseudoLabels(
        out=path,
        cells=len(ids),
        labels_before=int(np.asarray(weak).astype(bool).sum()),
        labels_after=int(refined.sum()),
        cells_without_class=int((weak.any(axis=1) & ~refined.any(axis=1)).sum()),
    )


def refine_labels(
    cell_model: str | Path,
    cell_data: str | Path,
    *,
    threshold: float = 0.1,
    relative: float = 0.0,
    backend: str = "auto",
    batch_size: int = 128,
    cache_dir: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, float]]:
    """Refined labels of every cell of a (weakly labelled) cell data set, in memory (see :func:`pseudo_label`).

    Returns:
        ``(field Id, cell) -> multi-hot`` for every cell, and statistics: labels before and after, cells left
        without a class.

    Raises:
        ConfigError: a threshold outside 0-1.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"pseudo-label threshold must lie between 0 and 1, got {threshold}")
    ids, scores, weak = score_cell_data(
        cell_model, cell_data, backend=backend, batch_size=batch_size, cache_dir=cache_dir, on_progress=on_progress
    )
    groups = np.asarray([split_cell_sample_id(i)[0] for i in ids])
    kept = refine(weak, scores, groups, threshold=threshold, relative=relative)
    refined = {split_cell_sample_id(i): row for i, row in zip(ids, kept, strict=True)}
    weak_bool = np.asarray(weak).astype(bool)
    stats = {
        "labels_before": int(weak_bool.sum()),
        "labels_after": int(kept.sum()),
        "cells_without_class": int((weak_bool.any(axis=1) & ~kept.any(axis=1)).sum()),
        "cells": len(ids),
    }
    return refined, {k: float(v) for k, v in stats.items()}
