"""A cell data set: every cell of a field data set cut once into a masked, centred, square crop, with labels.

A cell data set is an ordinary protloc data set in the Kaggle layout whose samples are cells, so the whole
training engine (folds, the uint8 cache, the Lightning module and data module, thresholds, packaging, ONNX,
ensembles) works on it unchanged::

    OUT/train.csv               Id,Target    Id = <field Id>--c<cell id>, Target = the cell's class ids
                                             (empty for a cell that shows none: a negative example), in
                                             the field labels' scheme and release layout (a 2021 source
                                             writes ID,Label with |-separated ids over its 19 classes)
    OUT/train/<Id>_<channel>.png             the crop (see protloc.cells.masks.cells_of_field), lossless
    OUT/folds.csv               Id,fold      folds by field: the cells of one field never straddle folds
    OUT/geometry.csv            Id,area,border   each cell's area (field px) and whether the border cuts it
    OUT/cells.json              how the crops were made: source data, masks, crop size, padding, context, labels,
                                and the class scheme (read back by training, see cell_dataset_scheme)

``protloc train OUT`` then trains a **cell model**; its card carries ``cells.json`` under ``"cells"``
(input = masked crop, crop size, padding, context, the segmentation settings), which is how prediction knows to cut
crops the same way. Crops are cut once; the training cache then stores them as any other samples.

**Labels** (``labels=``):

* ``"cells"`` - per-cell truth (a folder with ``<Id>_cells.png`` and a ``cells.csv`` with a ``labels``
  column, see :mod:`protloc.cells.truth`). When the crops come from other masks (a segmentation), each cell
  takes the classes of the true cell it overlaps with IoU >= ``match_iou``; cells without one are left out.
* ``"field"`` - weak labels, as the 2021 competitors had: every cell takes its field's labels.
* a mapping ``(field Id, cell id) -> multi-hot`` (e.g. pseudo-labels refined by a cell model).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc import __version__
from protloc.cells.masks import border_cells, cells_of_field, check_labels_fit, labels_path, read_labels
from protloc.cells.truth import match_truth, read_cell_truth
from protloc.data.catalog import Catalog, open_dataset
from protloc.data.io import CHANNELS, read_sample, write_channel
from protloc.errors import ConfigError, DataError
from protloc.schemes import ClassScheme, get_scheme
from protloc.utils import atomic_write_json, atomic_write_text

CELL_SETTINGS_FILE = "cells.json"
GEOMETRY_FILE = "geometry.csv"
CELL_ID_SEPARATOR = "--c"
LABEL_SOURCES = ("cells", "field")
DEFAULT_CROP_SIZE = 96
"""Crop side in px: each cell's box is resized to it. 96 beat 64 on foreign fields at the same 20-minute budget
(+0.018 mAP paired, 5-95 % [-0.001, +0.038]; BENCHMARKS.md, "Single cells"): small structures survive the
network's stem, and cells of full-size HPA fields (150-400 px across) are shrunk less."""


def cell_sample_id(field_id: str, cell: int) -> str:
    """The sample Id of a cell crop: ``<field Id>--c<cell>``."""
    return f"{field_id}{CELL_ID_SEPARATOR}{int(cell)}"


def split_cell_sample_id(sample_id: str) -> tuple[str, int]:
    """``<field Id>--c<cell>`` -> ``(field Id, cell)``."""
    field_id, _, cell = sample_id.rpartition(CELL_ID_SEPARATOR)
    if not field_id or not cell.isdigit():
        raise DataError(f"{sample_id!r} is not a cell sample Id (<field Id>{CELL_ID_SEPARATOR}<cell>)")
    return field_id, int(cell)


@dataclass
class CellDatasetSummary:
    """What :func:`make_cell_dataset` wrote."""

    out: Path
    fields: int
    cells: int
    """cells written (with labels)."""
    skipped: int
    """cells left out: no matching true cell (``labels="cells"`` on other masks), or below ``min_area``."""
    size: int
    seconds: float
    class_counts: list[int]


def _read_settings(folder: Path) -> dict[str, Any]:
    path = folder / "segmentation.json"
    if path.is_file():
        settings: dict[str, Any] = json.loads(path.read_text()).get("settings", {})
        return settings
    return {"segmenter": "ground truth"}


def crop_input(context: float) -> str:
    """How a cell data set's crops show their cell, in words (``cells.json`` and the card's ``cells.input``)."""
    if context == 0.0:
        return "masked crop: the cell's pixels, others and background 0, centred square around its box"
    return f"crop with context: the cell's pixels, others and background x{context:g}, centred square around its box"


def make_cell_dataset(
    data: str | Path | Catalog,
    out: str | Path,
    *,
    masks: str | Path,
    labels: str | Mapping[tuple[str, int], np.ndarray] = "field",
    truth: str | Path | None = None,
    split: str = "train",
    size: int = DEFAULT_CROP_SIZE,
    padding: float = 0.05,
    context: float = 0.0,
    channels: tuple[str, ...] = CHANNELS,
    bit_depth: int = 16,
    match_iou: float = 0.5,
    min_area: int = 0,
    n_folds: int = 5,
    seed: int = 0,
    folds: Mapping[str, int] | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> CellDatasetSummary:
    """Cut every cell of ``data`` into a crop data set at ``out`` (see the module docstring).

    Args:
        data: the field data set (Kaggle root, labels CSV, image folder) or a :class:`Catalog` with labels.
        masks: folder of label images ``<Id>_cells.png`` (``protloc segment`` output, or a truth folder).
        labels: ``"cells"`` (per-cell truth), ``"field"`` (weak: the field's labels) or a mapping
            ``(field Id, cell) -> multi-hot`` (cells absent from it are left out).
        truth: the per-cell truth folder for ``labels="cells"`` (default: ``masks``).
        size: crop side in px.
        padding: margin around each cell's box, as a fraction of its longer side.
        context: how much of the surroundings the crops keep (0: masked, the default; 1: as they are).
        match_iou: IoU a cell needs with a true cell to take its classes (``labels="cells"``).
        min_area: cells smaller than this many field px are left out.
        n_folds: folds written to ``folds.csv``, stratified over the fields' labels, grouped by field.
        folds: field Id -> fold, to use instead (so that a field model and a cell model hold out the same
            fields).
        overwrite: replace ``out`` if it holds a cell data set.

    Raises:
        ConfigError: a bad argument or an output folder that cannot be used.
        DataError: a field or label image cannot be read, or the truth is missing.
    """
    started = time.perf_counter()
    if isinstance(labels, str) and labels not in LABEL_SOURCES:
        raise ConfigError(f"cell labels must be one of {', '.join(LABEL_SOURCES)} or a mapping, got {labels!r}")
    if size < 16:
        raise ConfigError(f"crop size must be at least 16 px, got {size}")
    catalog = data if isinstance(data, Catalog) else open_dataset(data, split=split, channels=channels)
    if catalog.labels is None:
        raise DataError(f"{catalog.image_dir}: a cell data set needs the fields' labels (train.csv or --labels)")
    masks = Path(masks)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (overwrite and (out / CELL_SETTINGS_FILE).is_file()):
        raise ConfigError(f"{out}: exists and is not empty; choose another folder (overwrite replaces cell data sets)")
    scheme = catalog.scheme
    truth_classes: dict[str, tuple[np.ndarray, dict[int, np.ndarray]]] = {}
    if labels == "cells":
        for cells in read_cell_truth(Path(truth) if truth else masks, len(scheme), catalog.ids):
            truth_classes[cells.id] = (cells.labels, dict(zip(cells.cells.tolist(), cells.values, strict=True)))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    cut = _Cutter(
        catalog, masks, labels, truth, truth_classes, staging / "train", size, padding, context, channels, bit_depth
    )
    cut.images.mkdir(parents=True)
    try:
        for index, field_id in enumerate(catalog.ids):
            cut.cut_field(index, field_id, match_iou, min_area)
            if on_progress:
                on_progress(index + 1, len(catalog))
        if not cut.rows:
            raise DataError(f"{masks}: no labelled cells to cut (are the label images empty?)")
        settings = {
            "protloc_version": __version__,
            "kind": "cell crops",
            "input": crop_input(context),
            "crop_size": size,
            "padding": padding,
            "context": context,
            "channels": list(channels),
            "labels": labels if isinstance(labels, str) else "given per cell",
            "source": str(catalog.image_dir),
            "masks": str(masks),
            "segmentation": _read_settings(masks),
            "scheme": scheme.to_dict(),
        }
        _write_tables(staging, cut, folds, n_folds, seed, settings)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rows = cut.rows
    hot = scheme.zeros(len(rows)).astype(np.int64)
    for row, (_, target) in enumerate(rows):
        hot[row] = scheme.parse(target, allow_empty=True)
    return CellDatasetSummary(
        out=out,
        fields=len(catalog),
        cells=len(rows),
        skipped=cut.skipped,
        size=size,
        seconds=time.perf_counter() - started,
        class_counts=[int(c) for c in hot.sum(axis=0)],
    )


@dataclass
class _Cutter:
    """Cuts the cells of one field after another into masked crops, collecting the labels rows, each crop's field
    (for folds grouped by field) and its area and border flag."""

    catalog: Catalog
    masks: Path
    labels: str | Mapping[tuple[str, int], np.ndarray]
    truth: str | Path | None
    truth_classes: dict[str, tuple[np.ndarray, dict[int, np.ndarray]]]
    images: Path
    size: int
    padding: float
    context: float
    channels: tuple[str, ...]
    bit_depth: int
    rows: list[tuple[str, str]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    geometry: list[tuple[str, int, int]] = field(default_factory=list)
    skipped: int = 0

    def per_cell(self, index: int, field_id: str, field_labels: np.ndarray, match_iou: float) -> dict[int, Any]:
        """cell -> multi-hot labels of the cells of a field that have labels."""
        if not isinstance(self.labels, str):
            return {cell: np.asarray(v) for (fid, cell), v in self.labels.items() if fid == field_id}
        if self.labels == "cells":
            true_labels, classes = self.truth_classes[field_id]
            same_masks = self.truth is None or Path(self.truth) == self.masks
            return classes if same_masks else match_truth(field_labels, true_labels, classes, match_iou)
        assert self.catalog.labels is not None
        field_hot = self.catalog.labels[index]
        return {int(c): field_hot for c in np.unique(field_labels) if c > 0}

    def cut_field(self, index: int, field_id: str, match_iou: float, min_area: int) -> None:
        field_labels = read_labels(labels_path(self.masks, field_id))
        per_cell = self.per_cell(index, field_id, field_labels, match_iou)
        present = np.unique(field_labels)
        present = present[present > 0]
        areas = np.bincount(field_labels.ravel())
        cut = set(border_cells(field_labels).tolist())
        if min_area:
            present = present[areas[present] >= min_area]
        wanted = np.asarray([c for c in present if int(c) in per_cell], dtype=np.int64)
        self.skipped += len(present) - len(wanted)
        if not len(wanted):
            return
        image = read_sample(self.catalog.files[field_id], self.channels, bit_depth=self.bit_depth, sample_id=field_id)
        check_labels_fit(field_labels.shape, image.shape[1:], labels_path(self.masks, field_id), field_id)
        crops = cells_of_field(image, field_labels, self.size, padding=self.padding, context=self.context, cells=wanted)
        scheme = self.catalog.scheme
        for cell, crop in zip(crops.cells, crops.images, strict=True):
            sample_id = cell_sample_id(field_id, int(cell))
            for channel, plane in zip(self.channels, crop, strict=True):
                write_channel(self.images / f"{sample_id}_{channel}.png", plane)
            self.rows.append((sample_id, scheme.format(np.asarray(per_cell[int(cell)]))))
            self.groups.append(index)
            self.geometry.append((sample_id, int(areas[int(cell)]), int(int(cell) in cut)))


def _write_tables(
    staging: Path,
    cut: _Cutter,
    folds: Mapping[str, int] | None,
    n_folds: int,
    seed: int,
    settings: dict[str, Any],
) -> None:
    """train.csv, folds.csv (given, or stratified and grouped by field), the crops' geometry and cells.json."""
    catalog = cut.catalog
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(catalog.scheme.header)
    writer.writerows(cut.rows)
    atomic_write_text(staging / "train.csv", buffer.getvalue())
    ids = [row[0] for row in cut.rows]
    if folds is not None:
        missing = [i for i in catalog.ids if i not in folds]
        if missing:
            raise ConfigError(f"no fold given for field {missing[0]}")
        from protloc.data.dataset import save_folds

        save_folds(staging / "folds.csv", ids, np.asarray([folds[catalog.ids[g]] for g in cut.groups]))
    else:
        assert catalog.labels is not None
        _write_group_folds(staging / "folds.csv", ids, np.asarray(cut.groups), catalog.labels, n_folds, seed)
    _write_geometry(staging / GEOMETRY_FILE, cut.geometry)
    atomic_write_json(staging / CELL_SETTINGS_FILE, settings)


def _write_geometry(path: Path, rows: list[tuple[str, int, int]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Id", "area", "border"])
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_geometry(folder: str | Path, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(areas, border flags)`` of the cells ``ids`` of a cell data set (from its ``geometry.csv``).

    Raises:
        DataError: the data set has no geometry (made by protloc 0.2 or older) or lacks a cell.
    """
    path = Path(folder) / GEOMETRY_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; cut the cell data set again with this protloc")
    with path.open(newline="") as handle:
        table = {row["Id"]: (int(row["area"]), int(row["border"])) for row in csv.DictReader(handle)}
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{path}: no cell {missing[0]}")
    values = np.asarray([table[i] for i in ids], dtype=np.int64).reshape(len(ids), 2)
    return values[:, 0], values[:, 1].astype(bool)


def _write_group_folds(
    path: Path, ids: list[str], groups: np.ndarray, field_labels: np.ndarray, n_folds: int, seed: int
) -> None:
    """Folds stratified over the fields' labels; every cell of a field shares its field's fold."""
    from protloc.data.dataset import make_folds, save_folds

    used = np.unique(groups)
    if len(used) < n_folds:
        raise DataError(f"{len(used)} fields with cells cannot be split into {n_folds} folds")
    field_folds = np.full(len(field_labels), -1, dtype=np.int64)
    field_folds[used] = make_folds(field_labels[used], n_folds, seed)
    save_folds(path, ids, field_folds[groups])


def read_cell_settings(folder: str | Path) -> dict[str, Any] | None:
    """The ``cells.json`` of a cell data set at ``folder`` (or beside a labels CSV in it); ``None`` if none."""
    path = Path(folder)
    path = path if path.is_dir() else path.parent
    settings = path / CELL_SETTINGS_FILE
    if not settings.is_file():
        return None
    data: dict[str, Any] = json.loads(settings.read_text())
    return data


def cell_dataset_scheme(folder: str | Path) -> ClassScheme | None:
    """The class scheme a cell data set's labels are in (recorded in its ``cells.json``); ``None`` for a
    folder that is not a cell data set, or one made before schemes were recorded (its labels file says).

    Raises:
        DataError: the recorded scheme is damaged.
    """
    settings = read_cell_settings(folder)
    recorded = settings.get("scheme") if settings else None
    if recorded is None:
        return None
    try:
        return get_scheme(recorded)
    except ConfigError as exc:
        raise DataError(f"{folder}: the class scheme in {CELL_SETTINGS_FILE} is damaged ({exc})") from None
