"""Per-cell ground truth on disk: a folder of label images with a per-cell table that has a ``labels`` column.

The synthetic generator writes one per split (``make_dataset(..., cells=True)``: ``<root>/train_cells_truth/``
and ``<root>/test_cells_truth/``); a real data set with per-cell annotations can be laid out the same way:
``<Id>_cells.png`` (see :mod:`protloc.cells.masks`) and ``cells.csv`` (see :mod:`protloc.cells.table`) whose
``labels`` column holds each cell's class ids, ``|``-separated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protloc.cells.masks import FieldCells, labels_path, read_labels
from protloc.cells.table import read_table
from protloc.errors import DataError

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
