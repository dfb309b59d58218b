"""Per-cell ground truth on disk: a folder of label images with a per-cell table that has a ``labels`` column.

The synthetic generator writes one per split (``make_dataset(..., cells=True)``: ``<root>/train_cells_truth/``
and ``<root>/test_cells_truth/``); a real data set with per-cell annotations can be laid out the same way:
``<Id>_cells.png`` (see :mod:`protloc.cells.masks`) and ``cells.csv`` (see :mod:`protloc.cells.table`) whose
``labels`` column holds each cell's class ids, ``|``-separated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from protloc.cells.masks import FieldCells, labels_path, read_labels
from protloc.cells.metrics import iou_matrix
from protloc.cells.table import read_table
from protloc.errors import DataError

MATCH_IOU = 0.5
"""IoU a segmented cell needs with a true cell to take its classes (above 0.5 the match is unique)."""
TRUTH_TABLE = "cells.csv"
TRUTH_FOLDER_SUFFIX = "_cells_truth"
"""``<root>/<split>_cells_truth/`` beside a Kaggle-layout split (what the synthetic generator writes)."""


def truth_folder(data: str | Path, split: str = "test") -> Path:
    """The per-cell truth folder of a data set: ``data`` itself when it holds ``cells.csv``, else
    ``<data>/<split>_cells_truth`` (or ``<parent>/<name>_cells_truth`` for an image folder ``data``).

    Raises:
        DataError: no truth folder is there.
    """
    data = Path(data)
    if data.is_file():
        data = data.parent
    candidates = [data, data / f"{split}{TRUTH_FOLDER_SUFFIX}", data.parent / f"{data.name}{TRUTH_FOLDER_SUFFIX}"]
    for folder in candidates:
        if (folder / TRUTH_TABLE).is_file():
            return folder
    raise DataError(
        f"{data}: no per-cell truth ({TRUTH_TABLE} with label images) in {candidates[1]}; "
        "make synthetic data with `protloc synth --cells`"
    )


def parse_cell_labels(text: str, n_classes: int, *, where: str = "cells.csv") -> np.ndarray:
    """``"0|5"`` -> a multi-hot ``(n_classes,)`` ``uint8`` row (``""``: no class)."""
    row = np.zeros(n_classes, dtype=np.uint8)
    for part in str(text).split("|"):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) >= n_classes:
            raise DataError(f"{where}: cell label {part!r} is not a class id below {n_classes}")
        row[int(part)] = 1
    return row


def read_cell_truth(folder: str | Path, n_classes: int, ids: Sequence[str] | None = None) -> list[FieldCells]:
    """The true cells of every field in ``folder`` (or of ``ids``, in that order) with their classes.

    Raises:
        DataError: the table lacks a ``labels`` column, a field has no label image, or the table and the
            label image disagree on the cells.
    """
    folder = Path(folder)
    table = read_table(folder / TRUTH_TABLE)
    if "labels" not in table:
        raise DataError(f"{folder / TRUTH_TABLE}: no 'labels' column, so it holds no per-cell truth")
    rows: dict[str, list[int]] = {}
    for index, field_id in enumerate(table["id"]):
        rows.setdefault(str(field_id), []).append(index)
    wanted = list(ids) if ids is not None else list(rows)
    fields = []
    for field_id in wanted:
        labels = read_labels(labels_path(folder, field_id))
        picked = rows.get(field_id, [])
        cells = np.asarray(table["cell"][picked], dtype=np.int64)
        present = np.unique(labels)
        if not np.array_equal(np.sort(cells), present[present > 0]):
            raise DataError(f"{folder}: field {field_id}: {TRUTH_TABLE} and its label image list different cells")
        where = f"{folder / TRUTH_TABLE} (field {field_id})"
        values = np.zeros((len(picked), n_classes), dtype=np.uint8)
        for row, i in enumerate(picked):
            values[row] = parse_cell_labels(table["labels"][i], n_classes, where=where)
        fields.append(FieldCells(id=field_id, labels=labels, cells=cells, values=values))
    return fields


def match_truth(
    labels: np.ndarray, truth_labels: np.ndarray, truth_classes: Mapping[int, np.ndarray], iou: float = MATCH_IOU
) -> dict[int, np.ndarray]:
    """Cell id of ``labels`` -> the classes of the true cell it overlaps best, where that IoU is >= ``iou``."""
    overlap, pred_ids, true_ids = iou_matrix(labels, truth_labels)
    matched: dict[int, np.ndarray] = {}
    if overlap.size == 0:
        return matched
    best = np.argmax(overlap, axis=1)
    for row, cell in enumerate(pred_ids):
        if overlap[row, best[row]] >= iou:
            matched[int(cell)] = truth_classes[int(true_ids[best[row]])]
    return matched


def truth_on_cells(
    cells: Sequence[FieldCells], truths: Sequence[FieldCells], *, iou: float = MATCH_IOU
) -> list[FieldCells]:
    """Upper bounds of a segmentation: every cell of ``cells`` (a segmentation; its values are ignored) scored
    1 for the classes of the true cell it matches (IoU >= ``iou``) and 0 elsewhere, a cell without a match 0
    everywhere. Scored by the 2021 metric it is the best any classifier can do on those masks.

    Raises:
        DataError: a field of ``cells`` has no truth.
    """
    by_id = {t.id: t for t in truths}
    out = []
    for field in cells:
        if field.id not in by_id:
            raise DataError(f"field {field.id}: no per-cell truth")
        truth = by_id[field.id]
        classes = {int(c): np.asarray(v) for c, v in zip(truth.cells, truth.values, strict=True)}
        matched = match_truth(field.labels, truth.labels, classes, iou)
        width = np.asarray(truth.values).reshape(len(truth.cells), -1).shape[1]
        values = np.zeros((len(field.cells), width), np.float32)
        for row, cell in enumerate(field.cells):
            if int(cell) in matched:
                values[row] = matched[int(cell)]
        out.append(FieldCells(id=field.id, labels=field.labels, cells=field.cells, values=values))
    return out


def field_labels_on_cells(cells: Sequence[FieldCells], field_labels: Mapping[str, np.ndarray]) -> list[FieldCells]:
    """Every cell of ``cells`` scored with its field's labels (``Id -> (K,)`` multi-hot): the weak labels a
    field-level annotation gives, copied onto the cells (what a perfect field model copied to every cell scores)."""
    out = []
    for field in cells:
        if field.id not in field_labels:
            raise DataError(f"field {field.id}: no field labels")
        hot = np.asarray(field_labels[field.id], dtype=np.float32)
        values = np.repeat(hot[None], len(field.cells), axis=0)
        out.append(FieldCells(id=field.id, labels=field.labels, cells=field.cells, values=values))
    return out
