"""The per-cell table (CSV) and per-cell embeddings with probabilities as AnnData (``.h5ad``).

The table has one row per cell: ``id`` (the field), the :data:`~protloc.cells.masks.PROPERTY_COLUMNS`
(cell id, box, area, centroid, border flag) and, when a model scored the cells, one ``p_<class>`` column per
class of its scheme and ``labels`` (the predicted class indices, ``|``-separated as in the 2021 labels).
Class names come from the caller (the model card or the catalog), never from a constant here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protloc.cells.masks import PROPERTY_COLUMNS, cell_properties
from protloc.errors import DataError
from protloc.utils import atomic_path, atomic_write_text

Columns = dict[str, np.ndarray]


def field_table(
    field_id: str,
    labels: np.ndarray,
    *,
    probabilities: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    border_margin: int = 1,
) -> Columns:
    """The rows of one field: properties of every cell, plus probabilities and labels when given.

    Args:
        probabilities: ``(N, K)`` per-cell class probabilities in increasing cell id (the order of
            :func:`~protloc.cells.masks.cell_properties`).
        predicted: ``(N, K)`` 0/1 decisions; the ``labels`` column lists their class indices.
        class_names: the ``K`` class names (column ``p_<name>``).
    """
    properties = cell_properties(labels, border_margin=border_margin)
    columns: Columns = {"id": np.full(len(properties["cell"]), field_id, dtype=object)}
    columns.update(properties)
    n = len(properties["cell"])
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (n, len(class_names)):
            raise DataError(
                f"field {field_id}: {n} cells and {len(class_names)} classes, but probabilities of shape "
                f"{probabilities.shape}"
            )
        for k, name in enumerate(class_names):
            columns[f"p_{name}"] = probabilities[:, k]
    if predicted is not None:
        decisions = np.asarray(predicted).astype(bool)
        if decisions.shape[0] != n:
            raise DataError(f"field {field_id}: {n} cells but {decisions.shape[0]} rows of predicted labels")
        columns["labels"] = np.array(["|".join(str(k) for k in np.flatnonzero(row)) for row in decisions], object)
    return columns


def concat_tables(tables: Sequence[Mapping[str, np.ndarray]]) -> Columns:
    """Stack the tables of several fields (they must have the same columns)."""
    if not tables:
        return {name: np.zeros(0) for name in ("id", *PROPERTY_COLUMNS)}
    names = list(tables[0])
    for table in tables[1:]:
        if list(table) != names:
            raise DataError("per-cell tables of different fields have different columns")
    return {name: np.concatenate([np.asarray(t[name]) for t in tables]) for name in names}


def _cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def write_table(path: str | Path, columns: Mapping[str, np.ndarray]) -> Path:
    """Write a per-cell table as CSV, atomically (booleans as 0/1, floats with 6 significant digits)."""
    names = list(columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    n = len(next(iter(columns.values()))) if names else 0
    for i in range(n):
        writer.writerow([_cell(columns[name][i]) for name in names])
    return atomic_write_text(path, buffer.getvalue())


def read_table(path: str | Path) -> Columns:
    """Read a per-cell table written by :func:`write_table` (numbers parsed, ``id``/``labels`` kept as text)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: per-cell table not found")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0] != "id":
            raise DataError(f"{path}: not a per-cell table (first column must be 'id')")
        rows = list(reader)
    columns: Columns = {}
    for index, name in enumerate(header):
        values = [row[index] for row in rows]
        if name in ("id", "labels"):
            columns[name] = np.array(values, dtype=object)
        elif name == "border":
            columns[name] = np.array([v == "1" for v in values], dtype=bool)
        elif name in ("centroid_y", "centroid_x") or name.startswith("p_"):
            columns[name] = np.array(values, dtype=np.float64)
        else:
            columns[name] = np.array(values, dtype=np.int64)
    return columns


def write_anndata(
    path: str | Path,
    table: Mapping[str, np.ndarray],
    *,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    embeddings: np.ndarray | None = None,
    uns: Mapping[str, Any] | None = None,
) -> Path:
    """Write cells as an AnnData ``.h5ad`` file that scanpy opens.

    Layout: one observation per cell (``obs_names`` ``<field>/<cell>``); ``X`` holds the embeddings
    (``float32``, variables ``emb_0..``) or, without embeddings, the probabilities (variables = class names);
    ``obsm["probabilities"]`` the ``(N, K)`` probabilities; ``obsm["spatial"]`` the centroid ``(x, y)`` in
    field px; ``obs`` the table's other columns (``id`` as ``field``, box, area, border, ``labels``);
    ``uns["class_names"]`` the scheme; plus any ``uns`` given.
    """
    import anndata
    import pandas as pd

    probabilities = np.asarray(probabilities, dtype=np.float32)
    n = len(table["cell"])
    if probabilities.shape != (n, len(class_names)):
        raise DataError(f"{n} cells and {len(class_names)} classes, but probabilities of shape {probabilities.shape}")
    if embeddings is not None and len(embeddings) != n:
        raise DataError(f"{n} cells but {len(embeddings)} embeddings")
    obs = pd.DataFrame(
        {
            ("field" if name == "id" else name): np.asarray(values)
            for name, values in table.items()
            if not name.startswith("p_")
        }
    )
    obs["field"] = obs["field"].astype(str)
    if "labels" in obs:
        obs["labels"] = obs["labels"].astype(str)
    obs.index = pd.Index([f"{f}/{c}" for f, c in zip(obs["field"], table["cell"], strict=True)], dtype=str)
    if embeddings is not None:
        x = np.asarray(embeddings, dtype=np.float32)
        var = pd.DataFrame(index=pd.Index([f"emb_{i}" for i in range(x.shape[1])], dtype=str))
    else:
        x = probabilities
        var = pd.DataFrame(index=pd.Index(list(class_names), dtype=str))
    adata = anndata.AnnData(X=x, obs=obs, var=var)
    adata.obsm["probabilities"] = probabilities
    adata.obsm["spatial"] = np.stack([table["centroid_x"], table["centroid_y"]], axis=1).astype(np.float32)
    adata.uns["class_names"] = list(class_names)
    for key, value in (uns or {}).items():
        adata.uns[key] = value
    path = Path(path)
    with atomic_path(path) as temp:
        adata.write_h5ad(temp)
    return path
