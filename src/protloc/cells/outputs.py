"""Per-cell prediction of a whole data set into files, and its scores against per-cell truth.

:func:`predict_cells` is what ``protloc predict --cells`` runs. The output folder holds:

* ``cells.csv`` - one row per cell: field ``id``, cell id, box, area, centroid, border flag, one ``p_<class>``
  column per class and ``labels`` (class ids ``|``-separated), see :mod:`protloc.cells.table`;
* ``submission.csv`` - the 2021 challenge format (``ID,ImageWidth,ImageHeight,PredictionString`` with
  ``class confidence mask`` triples), see :mod:`protloc.cells.encode`;
* ``cells.h5ad`` - AnnData: embeddings in ``X`` (probabilities when there are none), probabilities in
  ``obsm["probabilities"]``, the table in ``obs``, the method and models in ``uns``;
* ``masks/<Id>_cells.png`` - the label images the cells come from;
* ``cells_prediction.json`` - how the predictions were made (method: cell model, baseline or mix; models;
  segmenter; TTA), so a baseline is never mistaken for a cell model;
* ``pictures/<Id>_outlines.png`` - on request, the field with cell outlines coloured by their first label.

:func:`evaluate_cells` scores such a folder against per-cell truth: the 2021 mAP (mask IoU >= 0.6) and the
segmentation F1/AP at IoU 0.5, 0.6 and 0.75 (see :mod:`protloc.cells.metrics`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc.cells.draw import draw_outlines, write_picture
from protloc.cells.encode import write_submission
from protloc.cells.fusion import FusionInputs, FusionSpec
from protloc.cells.masks import FieldCells, labels_path, read_labels, write_labels
from protloc.cells.metrics import cell_map, segmentation_scores
from protloc.cells.predict import (
    METHOD_BASELINE,
    METHOD_CELL,
    CellPredictor,
    FieldCellPrediction,
    FieldScores,
    predict_field_cells,
    score_field,
)
from protloc.cells.table import concat_tables, field_table, read_table, write_anndata, write_table
from protloc.cells.truth import read_cell_truth, truth_folder
from protloc.data.io import read_sample
from protloc.errors import DataError
from protloc.utils import atomic_write_json

TABLE_FILE = "cells.csv"
SUBMISSION_FILE = "submission.csv"
ANNDATA_FILE = "cells.h5ad"
PROVENANCE_FILE = "cells_prediction.json"
MASKS_DIR = "masks"
PICTURES_DIR = "pictures"


@dataclass
class CellPredictionSummary:
    """What :func:`predict_cells` wrote."""

    out: Path
    method: str
    fields: int
    cells: int
    seconds: float
    written: dict[str, Path]


def predict_cells(
    predictor: CellPredictor,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    ids: Sequence[str] | None = None,
    masks: str | Path | None = None,
    pictures: int = 0,
    bit_depth: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> CellPredictionSummary:
    """Score every cell of every field of ``data`` and write the outputs listed in the module docstring.

    Args:
        predictor: from :func:`~protloc.cells.predict.open_cell_predictor`.
        data: a Kaggle root (its ``test/`` by default), a folder of channel images, or one channel file.
        masks: a folder of label images to use instead of segmenting (``protloc segment`` output or truth).
        pictures: draw the outlines of the first this many fields.
        bit_depth: significant bits of 16-bit files.

    Raises:
        DataError: a field or label image cannot be read.
    """
    from protloc.inference.predict import open_for_prediction

    started = time.perf_counter()
    out = Path(out)
    catalog = open_for_prediction(data, split=split, ids=ids, channels=predictor.channels)
    channels = predictor.channels
    names = predictor.class_names
    (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    tables = []
    probabilities = []
    features: list[np.ndarray] = []
    has_features = True
    drawn: list[Path] = []
    for index, field_id in enumerate(catalog.ids):
        image = read_sample(catalog.files[field_id], channels, bit_depth=bit_depth, sample_id=field_id)
        given = read_labels(labels_path(masks, field_id)) if masks is not None else None
        result = predict_field_cells(predictor, image, channels=channels, field_id=field_id, labels=given)
        write_labels(labels_path(out / MASKS_DIR, field_id), result.labels)
        tables.append(
            field_table(
                field_id,
                result.labels,
                probabilities=result.probabilities,
                predicted=result.decisions,
                class_names=names,
            )
        )
        probabilities.append(result.probabilities)
        if result.embeddings is None:
            has_features = False
        else:
            features.append(result.embeddings)
        if index < pictures:
            drawn.append(_draw(out, result, image, channels, len(names)))
        if on_progress:
            on_progress(index + 1, len(catalog))
    table = concat_tables(tables)
    stacked = np.concatenate(probabilities) if probabilities else np.zeros((0, len(names)), np.float32)
    provenance = {**predictor.describe(), "data": str(catalog.image_dir), "fields": len(catalog), "masks": str(masks)}
    written = {
        "table": write_table(out / TABLE_FILE, table),
        "submission": write_submission(out / SUBMISSION_FILE, _read_back(out, catalog.ids, table, names)),
        "anndata": write_anndata(
            out / ANNDATA_FILE,
            table,
            probabilities=stacked,
            class_names=names,
            embeddings=np.concatenate(features) if has_features and features else None,
            uns={"method": predictor.method, "provenance": _jsonable(provenance)},
        ),
        "provenance": atomic_write_json(out / PROVENANCE_FILE, provenance),
    }
    if drawn:
        written["pictures"] = out / PICTURES_DIR
    return CellPredictionSummary(
        out=out,
        method=predictor.method,
        fields=len(catalog),
        cells=len(table["cell"]),
        seconds=time.perf_counter() - started,
        written=written,
    )


def _jsonable(value: Any) -> Any:
    """Provenance for AnnData's ``uns`` (no ``None``: h5py cannot store it)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _draw(out: Path, result: FieldCellPrediction, image: np.ndarray, channels: Sequence[str], n_classes: int) -> Path:
    classes = {
        int(c): [int(k) for k in np.flatnonzero(row)] for c, row in zip(result.cells, result.decisions, strict=True)
    }
    picture = draw_outlines(image, channels, result.labels, cell_classes=classes, n_classes=n_classes)
    return write_picture(out / PICTURES_DIR / f"{result.id}_outlines.png", picture)


def _field_rows(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rows: dict[str, list[int]] = {}
    for index, field_id in enumerate(table["id"]):
        rows.setdefault(str(field_id), []).append(index)
    return {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}


def _read_back(
    out: Path, ids: Sequence[str], table: dict[str, np.ndarray], class_names: Sequence[str]
) -> Iterator[FieldCells]:
    """The predictions field by field, label images read back from disk (one field in memory at a time)."""
    columns = [f"p_{name}" for name in class_names]
    rows = _field_rows(table)
    for field_id in ids:
        picked = rows.get(field_id, np.zeros(0, np.int64))
        values = np.stack([np.asarray(table[c], dtype=np.float64)[picked] for c in columns], axis=1)
        yield FieldCells(
            id=field_id,
            labels=read_labels(labels_path(out / MASKS_DIR, field_id)),
            cells=np.asarray(table["cell"], dtype=np.int64)[picked],
            values=values,
        )


def prediction_classes(folder: str | Path) -> tuple[str, ...]:
    """The class names a :func:`predict_cells` folder's probabilities are over: the ``classes`` its
    provenance records (the predicting model's scheme), else its table's ``p_<class>`` columns in order."""
    import json

    folder = Path(folder)
    provenance = folder / PROVENANCE_FILE
    if provenance.is_file():
        classes = json.loads(provenance.read_text()).get("classes")
        if isinstance(classes, list) and classes:
            return tuple(str(c) for c in classes)
    columns = read_table(folder / TABLE_FILE)
    names = tuple(name[2:] for name in columns if name.startswith("p_"))
    if not names:
        raise DataError(
            f"{folder / TABLE_FILE}: no p_<class> columns; is it a prediction of `protloc predict --cells`?"
        )
    return names


def read_cell_predictions(folder: str | Path) -> list[FieldCells]:
    """The per-cell predictions of a :func:`predict_cells` folder, one :class:`FieldCells` per field, with
    values over the classes of :func:`prediction_classes`."""
    folder = Path(folder)
    names = prediction_classes(folder)
    table = read_table(folder / TABLE_FILE)
    missing = [f"p_{name}" for name in names if f"p_{name}" not in table]
    if missing:
        raise DataError(
            f"{folder / TABLE_FILE}: no {missing[0]} column; is it a prediction of `protloc predict --cells`?"
        )
    ids = list(dict.fromkeys(str(i) for i in table["id"]))
    return list(_read_back(folder, ids, table, names))


@dataclass
class CellEvaluation:
    """Scores of per-cell predictions against per-cell truth."""

    map: float
    per_class: dict[str, Any]
    segmentation: list[dict[str, float | int]]
    fields: int
    true_cells: int
    predicted_cells: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "map_iou_0_6": None if np.isnan(self.map) else round(float(self.map), 6),
            "fields": self.fields,
            "true_cells": self.true_cells,
            "predicted_cells": self.predicted_cells,
            "segmentation": self.segmentation,
            "per_class": self.per_class,
        }


def score_cells(
    predictions: Sequence[FieldCells],
    truths: Sequence[FieldCells],
    *,
    method: str = "",
    class_names: Sequence[str] | None = None,
) -> CellEvaluation:
    """The 2021 mAP and segmentation F1/AP of per-cell predictions against truth (same fields); per-class
    scores are keyed by ``class_names`` (the predicting model's scheme), else by class index."""
    report = cell_map(predictions, truths)
    by_id = {p.id: p for p in predictions}
    segmentation = segmentation_scores([by_id[t.id].labels for t in truths], [t.labels for t in truths])
    return CellEvaluation(
        map=report.map,
        per_class=report.as_dict(class_names)["per_class"],  # type: ignore[arg-type]
        segmentation=[s.as_dict() for s in segmentation],
        fields=len(truths),
        true_cells=int(sum(len(t.cells) for t in truths)),
        predicted_cells=int(sum(len(p.cells) for p in predictions)),
        method=method,
    )


def evaluate_cells(
    predictions: str | Path, truth: str | Path, *, split: str = "test", out: str | Path | None = None
) -> CellEvaluation:
    """Score a :func:`predict_cells` folder against per-cell truth and write ``cells_evaluation.json``.

    Args:
        predictions: the output folder of :func:`predict_cells`.
        truth: a per-cell truth folder, or a data set root whose ``<split>_cells_truth/`` holds it.
        out: where ``cells_evaluation.json`` goes (default: ``predictions``).

    Raises:
        DataError: no truth, or the predictions cover other fields than the truth.
    """
    import json

    folder = Path(predictions)
    names = prediction_classes(folder)
    predicted = read_cell_predictions(folder)
    truths = read_cell_truth(truth_folder(truth, split), len(names), [p.id for p in predicted])
    provenance = folder / PROVENANCE_FILE
    method = json.loads(provenance.read_text()).get("method", "") if provenance.is_file() else ""
    evaluation = score_cells(predicted, truths, method=method, class_names=names)
    atomic_write_json(Path(out or folder) / "cells_evaluation.json", evaluation.as_dict())
    return evaluation


def score_fields(
    predictor: CellPredictor,
    data: str | Path,
    *,
    split: str | None = "test",
    ids: Sequence[str] | None = None,
    masks: str | Path | None = None,
    bit_depth: int = 16,
    cam: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[FieldScores]:
    """Run every model the predictor has on every field of ``data`` once (segmenting each field once, or reading
    its label image from ``masks``): the inputs every fusion rule is scored from. ``cam``: also the field
    model's class activation maps in each cell (:mod:`protloc.cells.cam`, torch backend)."""
    from protloc.inference.predict import open_for_prediction

    catalog = open_for_prediction(data, split=split, ids=ids, channels=predictor.channels)
    sources = {"cell"} if predictor.cell_backend is not None else set()
    if predictor.field_backend is not None:
        sources |= {"field", "cam"} if cam else {"field"}
    scored = []
    for index, field_id in enumerate(catalog.ids):
        image = read_sample(catalog.files[field_id], predictor.channels, bit_depth=bit_depth, sample_id=field_id)
        labels = read_labels(labels_path(masks, field_id)) if masks is not None else None
        scored.append(
            score_field(
                predictor,
                image,
                channels=predictor.channels,
                field_id=field_id,
                labels=labels,
                embeddings=False,
                sources=sources,
            )
        )
        if on_progress:
            on_progress(index + 1, len(catalog))
    return scored


def fusion_inputs(scores: Sequence[FieldScores], field_labels: np.ndarray) -> FusionInputs:
    """The cells of scored fields, concatenated for :func:`protloc.cells.fusion.fit_fusion`; ``field_labels``
    ``(F, K)`` in the order of ``scores``."""
    sources: dict[str, list[np.ndarray]] = {}
    for scored in scores:
        for name, values in scored.images().items():
            sources.setdefault(name, []).append(np.broadcast_to(values, (len(scored.cells), values.shape[-1])))
    images = {name: np.concatenate(parts) for name, parts in sources.items() if len(parts) == len(scores)}
    cell = [s.cell for s in scores]
    if any(c is None for c in cell):
        raise DataError("fitting a fusion needs the cell model's probabilities of every field")
    return FusionInputs(
        cell=np.concatenate([c for c in cell if c is not None]),
        images=images,
        border=np.concatenate([s.border for s in scores]),
        areas=np.concatenate([s.areas for s in scores]),
        offsets=np.concatenate([[0], np.cumsum([len(s.cells) for s in scores])]).astype(np.int64),
        field_labels=np.asarray(field_labels),
    )


def method_rules(predictor: CellPredictor, mixes: Sequence[float] = ()) -> dict[str, FusionSpec]:
    """The methods evaluation compares, each a fusion rule, named: the baseline, the cell model alone, the
    cell model's fitted fusion (when it has one) and a weighted mean with the field model per weight of
    ``mixes``."""
    rules: dict[str, FusionSpec] = {}
    if predictor.field_backend is not None:
        rules[METHOD_BASELINE] = FusionSpec("image")
    if predictor.cell_backend is not None:
        rules[METHOD_CELL] = FusionSpec()
        fitted = predictor.fusion
        usable = predictor.field_backend is not None or not fitted.needs_field_model
        plain = dataclasses.replace(fitted, thresholds=None) == FusionSpec()
        if not plain and usable and (predictor.image_head is not None or fitted.image != "cell model"):
            rules[f"{FUSED_PREFIX}{fitted.describe()}"] = fitted
        if predictor.field_backend is not None:
            for weight in mixes:
                rules[f"{MIX_PREFIX}{weight:g}"] = FusionSpec("mean", weight=float(weight))
    return rules


FUSED_PREFIX = "the package's fusion: "
MIX_PREFIX = "cell + field mix "


def compare_cell_methods(
    predictor: CellPredictor,
    data: str | Path,
    *,
    truth: str | Path | None = None,
    split: str = "test",
    mixes: Sequence[float] = (),
    rules: Mapping[str, FusionSpec] | None = None,
    masks: str | Path | None = None,
    bit_depth: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, CellEvaluation]:
    """Score, side by side on the same cells, every method the predictor's models allow.

    Each field is segmented once (or its label image read from ``masks``) and each model scores it once
    (:func:`score_fields`); every method is a fusion rule over those scores (:func:`method_rules`: the baseline
    ``"baseline: field labels to every cell"``, ``"cell model"`` alone, the package's fitted fusion, and
    ``"cell + field mix <w>"`` for each weight of ``mixes``), plus the named ``rules``.

    Args:
        predictor: with a cell model, a field model, or both.
        data: a Kaggle root whose ``<split>/`` fields have per-cell truth in ``<split>_cells_truth/``.
        truth: the per-cell truth folder (default: found from ``data`` and ``split``).

    Raises:
        DataError: no per-cell truth for the fields.
    """
    chosen = {**method_rules(predictor, mixes), **dict(rules or {})}
    cam = any(spec.needs_image and spec.image == "field model CAM" for spec in chosen.values())
    scored = score_fields(
        predictor, data, split=split, masks=masks, bit_depth=bit_depth, cam=cam, on_progress=on_progress
    )
    names = predictor.class_names
    truths = read_cell_truth(truth_folder(truth or data, split), len(names), [s.id for s in scored])
    negative = predictor.scheme.exclusive
    results = {}
    for method, spec in chosen.items():
        fields = [FieldCells(s.id, s.labels, s.cells, s.fused(spec, negative)) for s in scored]
        results[method] = score_cells(fields, truths, method=method, class_names=names)
    return results
