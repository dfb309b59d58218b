"""The CSV files of predictions, written and read in one place. Torch-free.

* probabilities: ``Id``, one probability column per class name, and the true ``Target`` when known
  (``probabilities.csv`` of ``protloc predict``, ``val_predictions.csv`` of training, a package's
  ``validation.csv``, ``predictions.csv`` of ``protloc evaluate``);
* predictions: ``Id``, ``Predicted`` (class ids) and ``Labels`` (class names);
* submission: Kaggle's ``Id,Predicted`` in the order of ``sample_submission.csv``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protloc.classes import CLASS_NAMES, format_labels, parse_labels
from protloc.errors import DataError


def probabilities_csv(ids: Sequence[str], probabilities: np.ndarray, truth: np.ndarray | None = None) -> str:
    """CSV text: ``Id``, one probability column per class name, and the true ``Target`` when given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", *CLASS_NAMES, *(["Target"] if truth is not None else [])])
    for i, sample_id in enumerate(ids):
        row = [sample_id, *(f"{p:.5f}" for p in probabilities[i])]
        if truth is not None:
            row.append(format_labels(truth[i]))
        writer.writerow(row)
    return buffer.getvalue()


def predictions_csv(ids: Sequence[str], labels: np.ndarray) -> str:
    """CSV text: ``Id``, ``Predicted`` (class ids, space-separated) and ``Labels`` (class names)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted", "Labels"])
    for sample_id, row in zip(ids, labels, strict=True):
        chosen = np.flatnonzero(row)
        writer.writerow([sample_id, " ".join(str(i) for i in chosen), "; ".join(CLASS_NAMES[i] for i in chosen)])
    return buffer.getvalue()


def submission_csv(order: Sequence[str], ids: Sequence[str], labels: np.ndarray) -> str:
    """Kaggle's ``Id,Predicted`` in the order of ``order`` (the sample submission's)."""
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted"])
    for sample_id in order:
        writer.writerow([sample_id, " ".join(str(i) for i in np.flatnonzero(labels[position[sample_id]]))])
    return buffer.getvalue()


def read_probabilities_table(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Read a probabilities CSV back: ids, ``(N, classes)`` probabilities, and the multi-hot truth when the
    file has a ``Target`` column (else ``None``).

    Raises:
        DataError: the file is missing, or lacks a class column or a value is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [name for name in ("Id", *CLASS_NAMES) if name not in columns]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r}; not a protloc probabilities file")
        rows = list(reader)
    try:
        probabilities = np.array([[float(r[name]) for name in CLASS_NAMES] for r in rows], np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{path}: a probability is not a number") from None
    probabilities = probabilities.reshape(len(rows), len(CLASS_NAMES))
    truth = None
    if "Target" in columns:
        truth = np.zeros((len(rows), len(CLASS_NAMES)), np.uint8)
        for i, row in enumerate(rows):
            truth[i] = parse_labels(row["Target"] or "", allow_empty=True, where=f"{path} line {i + 2}")
    return [r["Id"] for r in rows], probabilities, truth


def read_probabilities(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``probabilities.csv`` back (ids, ``(N, classes)``)."""
    ids, probabilities, _ = read_probabilities_table(path)
    return ids, probabilities
