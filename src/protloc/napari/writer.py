"""The napari writers: a cells labels layer saved as protloc's own files (``File > Save Selected Layers``).

* ``<name>.csv``: the per-cell table, the rows of ``protloc predict --cells``'s ``cells.csv`` (field ``id``, cell,
  box, area, centroid, border flag, ``p_<class>`` and ``labels`` as class ids when protloc scored the cells), and
  beside it ``masks/<Id>_cells.png``, the label image, where ``protloc predict --cells --masks`` and
  ``protloc evaluate --cells`` look for it. Saved as ``cells.csv``, the folder reads back with
  :func:`protloc.cells.outputs.read_cell_predictions`.
* ``<name>.png``: the label image alone, a 16-bit PNG (:func:`protloc.cells.masks.write_labels`).

The table is made from the label image as it is now (:func:`protloc.cells.table.field_table`), so boxes and
areas are true even after the masks were touched up; probabilities and labels come from the layer's features,
and a layer whose cells no longer match its features (cells painted or erased after scoring) is refused rather
than written with numbers of other cells. A labels layer protloc did not make (no probabilities) is written
with the geometry columns only. Files are written atomically; errors are one-line notifications.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protloc.errors import DataError, ProtlocError
from protloc.napari.layers import protloc_metadata

MASKS_FOLDER = "masks"
"""Where the label image goes beside a saved table (as in ``protloc predict --cells``'s output)."""


def write_cells_table(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: the per-cell table at ``path`` and the masks in ``masks/`` beside it."""
    return _notifying(lambda: [str(p) for p in save_cells(path, data, attributes)])


def write_cell_masks(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: the label image as a 16-bit PNG at ``path``."""
    from protloc.cells.masks import write_labels

    return _notifying(lambda: [str(write_labels(path, _label_image(data, path)))])


def _notifying(write: Any) -> list[str]:
    from napari.utils.notifications import show_error

    try:
        return list(write())
    except ProtlocError as exc:
        show_error(str(exc))
        return []


def _label_image(data: Any, where: str | Path) -> np.ndarray:
    labels = np.asarray(data)
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise DataError(f"{where}: protloc writes 2-D label images of cells, not {labels.dtype} {labels.shape}")
    return labels


def save_cells(path: str | Path, data: Any, attributes: Mapping[str, Any]) -> list[Path]:
    """Write a labels layer's per-cell table at ``path`` and its label image as ``masks/<Id>_cells.png`` beside it.

    Args:
        path: the CSV file.
        data: the layer's label image.
        attributes: the layer's state (``name``, ``metadata``, ``features``), as napari hands it to writers.

    Returns:
        The files written: the table, then the label image.

    Raises:
        DataError: not a 2-D label image, or features of other cells than the label image holds.
    """
    from protloc.cells.masks import labels_path, write_labels
    from protloc.cells.table import field_table, write_table

    path = Path(path)
    labels = _label_image(data, path)
    meta = protloc_metadata(attributes.get("metadata"))
    field_id = str(meta.get("field") or attributes.get("name") or path.stem)
    classes = [str(c) for c in meta.get("classes") or []]
    scored = _scores(attributes.get("features"), labels, classes, path)
    if scored is None:
        table = field_table(field_id, labels)
    else:
        probabilities, decisions = scored
        table = field_table(field_id, labels, probabilities=probabilities, predicted=decisions, class_names=classes)
    written = [write_table(path, table)]
    mask = labels_path(path.parent / MASKS_FOLDER, field_id)
    mask.parent.mkdir(parents=True, exist_ok=True)
    written.append(write_labels(mask, labels))
    return written


def _scores(features: Any, labels: np.ndarray, classes: list[str], where: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Probabilities and 0/1 labels of the label image's cells, in increasing cell id, from the layer's features;
    ``None`` when the layer has no protloc scores."""
    columns = [f"p_{name}" for name in classes]
    if features is None or not classes or any(c not in features for c in (*columns, "index", "labels")):
        return None
    present = np.unique(labels)
    cells = present[present > 0]
    index = np.asarray(features["index"], dtype=np.int64)
    if len(index) != len(cells) or not np.array_equal(np.sort(index), cells):
        raise DataError(
            f"{where}: the masks hold {len(cells)} cells but the scores are of {len(index)} other ones (cells were "
            "painted or erased after scoring); save the masks as .png, or run the widget again to score them"
        )
    order = np.argsort(index)
    probabilities = np.stack([np.asarray(features[c], dtype=np.float64)[order] for c in columns], axis=1)
    decisions = np.zeros(probabilities.shape, dtype=np.uint8)
    for row, text in enumerate(np.asarray(features["labels"], dtype=object)[order]):
        ids = [int(k) for k in str(text).split("|") if k.strip() and str(k).strip().lower() != "nan"]
        decisions[row, ids] = 1
    return probabilities, decisions
