"""The CSV files of predictions, written and read in one place. Torch-free.

* probabilities: ``Id``, one probability column per class name of the scheme, and the true ``Target`` when
  known (``probabilities.csv`` of ``protloc predict``, ``val_predictions.csv`` of training, a package's
  ``validation.csv``, ``predictions.csv`` of ``protloc evaluate``);
* predictions: ``Id``, ``Predicted`` (class ids in the scheme's separator) and ``Labels`` (class names);
* submission: Kaggle 2018's ``Id,Predicted`` in the order of ``sample_submission.csv``; for a Kaggle 2021
  ``sample_submission.csv``, its ``ID,ImageWidth,ImageHeight`` with the field-level labels.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protloc.errors import DataError, LabelError
from protloc.schemes import BUILTIN_SCHEMES, ClassScheme, get_scheme


def scheme_of_width(width: int) -> ClassScheme:
    """The built-in scheme with ``width`` classes (for callers of protloc <= 0.1 that pass no scheme)."""
    for name in BUILTIN_SCHEMES:
        if len(get_scheme(name)) == width:
            return get_scheme(name)
    raise ValueError(f"no built-in class scheme has {width} classes; pass the scheme")


def probabilities_csv(
    ids: Sequence[str],
    probabilities: np.ndarray,
    truth: np.ndarray | None = None,
    scheme: ClassScheme | None = None,
) -> str:
    """CSV text: ``Id``, one probability column per class name of ``scheme``, and the true ``Target`` when given."""
    scheme = scheme or scheme_of_width(probabilities.shape[1])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", *scheme.names, *(["Target"] if truth is not None else [])])
    for i, sample_id in enumerate(ids):
        row = [sample_id, *(f"{p:.5f}" for p in probabilities[i])]
        if truth is not None:
            row.append(scheme.format(truth[i]))
        writer.writerow(row)
    return buffer.getvalue()


def predictions_csv(ids: Sequence[str], labels: np.ndarray, scheme: ClassScheme | None = None) -> str:
    """CSV text: ``Id``, ``Predicted`` (ids in the scheme's separator) and ``Labels`` (names)."""
    scheme = scheme or scheme_of_width(labels.shape[1])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted", "Labels"])
    for sample_id, row in zip(ids, labels, strict=True):
        writer.writerow([sample_id, scheme.format(row), "; ".join(scheme.names_of(row))])
    return buffer.getvalue()


def submission_csv(order: Sequence[str], ids: Sequence[str], labels: np.ndarray) -> str:
    """Kaggle 2018's ``Id,Predicted`` in the order of ``order`` (the sample submission's)."""
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted"])
    for sample_id in order:
        writer.writerow([sample_id, " ".join(str(i) for i in np.flatnonzero(labels[position[sample_id]]))])
    return buffer.getvalue()


def field_submission_csv(order_file: Path, ids: Sequence[str], labels: np.ndarray, scheme: ClassScheme) -> str:
    """For a Kaggle 2021 ``sample_submission.csv``: its ``ID,ImageWidth,ImageHeight`` in its order, with the
    field-level labels (``|``-separated ids) in ``Labels``; the competition's per-cell ``PredictionString``
    needs cell masks (``protloc predict --cells``), which a field-level model does not make."""
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["ID", "ImageWidth", "ImageHeight", "Labels"])
    with order_file.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            sample_id = row["ID"].strip()
            writer.writerow(
                [sample_id, row["ImageWidth"], row["ImageHeight"], scheme.format(labels[position[sample_id]], "|")]
            )
    return buffer.getvalue()


def read_probabilities_table(
    path: str | Path, scheme: ClassScheme | None = None
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Read a probabilities CSV back: ids, ``(N, classes)`` probabilities in the order of ``scheme``'s classes
    (without a scheme: the columns between ``Id`` and ``Target``, in file order), and the multi-hot truth when
    the file has a ``Target`` column (else ``None``).

    Raises:
        DataError: the file is missing, lacks a class column (written for another scheme?), or a value is not a
            number or a label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if "Id" not in columns:
        raise DataError(f"{path}: no column 'Id'; not a protloc probabilities file")
    present = [c for c in columns if c not in ("Id", "Target")]
    names = list(scheme.names) if scheme is not None else present
    absent = [n for n in names if n not in present]
    if absent or not names:
        what = repr(absent[0]) if absent else "of class probabilities"
        raise DataError(f"{path}: no column {what} (not a protloc probabilities file, or another class scheme?)")
    try:
        probabilities = np.array([[float(r[name]) for name in names] for r in rows], np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{path}: a probability is not a number") from None
    probabilities = probabilities.reshape(len(rows), len(names))
    truth = None
    if "Target" in columns:
        try:
            parser = scheme or scheme_of_width(len(names))
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
        truth = np.zeros((len(rows), len(names)), np.uint8)
        for i, row in enumerate(rows):
            try:
                truth[i] = parser.parse(row["Target"] or "", allow_empty=True, where=f"{path} line {i + 2}")
            except LabelError as exc:
                raise DataError(str(exc)) from None
    return [r["Id"] for r in rows], probabilities, truth


def read_probabilities(path: str | Path, scheme: ClassScheme | None = None) -> tuple[list[str], np.ndarray]:
    """Read a ``probabilities.csv`` back (ids, ``(N, classes)``)."""
    ids, probabilities, _ = read_probabilities_table(path, scheme)
    return ids, probabilities
