"""Per-cell prediction: segment a field, cut its cells, score each with a cell model, a field model, or both.

Three **methods**, named in every output so a result never hides how it was made:

* ``"cell model"`` - a cell model (a package trained on a cell data set, whose card has a ``"cells"``
  section: crop size, padding, segmentation settings) scores each masked crop;
* ``"baseline: field labels to every cell"`` - with only a field model, every cell of a field gets the
  field's probabilities (the honest baseline of the 2021 challenge);
* ``"cell + field mix"`` - both: ``mix * cell + (1 - mix) * field`` per class.

Backends, TTA views and ensembles are those of field prediction (:func:`protloc.inference.predict.load_backend`,
:func:`protloc.inference.core.run_with_tta`); a cell model exported to ONNX predicts the same way. Embeddings (the
network's pooled features before the classifier) come with the torch backend of a single timm model.

:func:`predict_cells_in_field` is the one-field entry point for callers such as the service;
:mod:`protloc.cells.outputs` writes whole data sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc.cells.masks import FieldCells, cell_properties, cells_of_field
from protloc.cells.segment import ClassicalParams, Segmenter, create_segmenter
from protloc.errors import ConfigError, ModelError
from protloc.inference.core import Backend, Preprocessor, parse_tta, predict_inputs, run_with_tta
from protloc.model.card import ModelCard
from protloc.schemes import ClassScheme

METHOD_CELL = "cell model"
METHOD_BASELINE = "baseline: field labels to every cell"
METHOD_MIX = "cell + field mix"

_NOT_SEGMENTER_SETTINGS = {"segmenter", "channels", "border_margin", "bit_depth", "label_format"}


def is_cell_model(card: ModelCard) -> bool:
    """Whether a package's card describes a cell model (trained on masked cell crops)."""
    return card.cells is not None


def segmenter_from_card(card: ModelCard | None, options: Mapping[str, Any] | None = None) -> Segmenter:
    """The segmenter a cell model was trained with (from its card), with ``options`` over its settings; the
    default classical segmenter without a card."""
    settings: dict[str, Any] = {}
    name = "classical"
    cells = card.cells if card is not None else None
    if cells is not None:
        recorded = dict(cells.get("segmentation") or {})
        name = str(recorded.get("segmenter", "classical"))
        if name == "ground truth":  # trained on true masks: segment with the classical defaults
            name = "classical"
            recorded = {}
        settings = {k: v for k, v in recorded.items() if k not in _NOT_SEGMENTER_SETTINGS}
        if name == "classical":
            settings = {k: v for k, v in settings.items() if k in ClassicalParams.__dataclass_fields__}
    settings.update(options or {})
    return create_segmenter(name, **settings)


@dataclass
class CellPredictor:
    """Everything needed to score the cells of a field (see :func:`open_cell_predictor`)."""

    segmenter: Segmenter
    cell_card: ModelCard | None = None
    cell_backend: Backend | None = None
    field_card: ModelCard | None = None
    field_backend: Backend | None = None
    mix: float = 0.5
    views: tuple[str, ...] = ("id",)
    thresholds: list[float] = field(default_factory=list)

    @property
    def method(self) -> str:
        if self.cell_backend is not None and self.field_backend is not None:
            return METHOD_MIX
        return METHOD_CELL if self.cell_backend is not None else METHOD_BASELINE

    @property
    def channels(self) -> tuple[str, ...]:
        """Channels a field must have: those of the segmenter and of the models, in the canonical order."""
        wanted = set(self.segmenter.channels)
        for card in (self.cell_card, self.field_card):
            if card is not None:
                wanted |= set(card.channels)
        from protloc.data.io import CHANNELS

        return tuple(c for c in CHANNELS if c in wanted)

    @property
    def scheme(self) -> ClassScheme:
        """The classes the probabilities are over: the scheme of the cell model, else of the field model."""
        card = self.cell_card if self.cell_card is not None else self.field_card
        if card is None:
            raise ConfigError("per-cell prediction needs a cell model, a field model, or both")
        return card.scheme

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.scheme.names

    def describe(self) -> dict[str, Any]:
        """What made the predictions, for the outputs' provenance."""
        return {
            "method": self.method,
            "mix": self.mix if self.method == METHOD_MIX else None,
            "tta": list(self.views),
            "segmenter": self.segmenter.settings(),
            "cell_model": self.cell_card.cells if self.cell_card is not None else None,
            "thresholds_from": "cell model" if self.cell_card is not None else "field model",
            "scheme": self.scheme.name,
            "classes": list(self.scheme.names),
        }


def predictor_for(
    model: str | Path,
    field_model: str | Path | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    mix: float = 0.5,
    tta: str | Sequence[str] | None = None,
    segmenter_options: Mapping[str, Any] | None = None,
) -> CellPredictor:
    """The cell predictor for ``model`` as a user names it: a cell model (mixed with ``field_model`` when given),
    or a field model, whose labels every cell then gets (the baseline)."""
    from protloc.model.card import read_card

    cell_model = model if is_cell_model(read_card(model)) else None
    return open_cell_predictor(
        cell_model,
        field_model if cell_model is not None else model,
        backend=backend,
        device=device,
        mix=mix,
        tta=tta,
        segmenter_options=segmenter_options,
    )


def open_cell_predictor(
    cell_model: str | Path | None = None,
    field_model: str | Path | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    mix: float = 0.5,
    tta: str | Sequence[str] | None = None,
    segmenter: str | None = None,
    segmenter_options: Mapping[str, Any] | None = None,
) -> CellPredictor:
    """Load the packages and the segmenter for per-cell prediction.

    Args:
        cell_model: a cell model package (or its ``.onnx``); its card says how to segment and crop.
        field_model: a field model package; alone it gives the baseline, with a cell model the mix.
        mix: weight of the cell model in the mix (0-1).
        tta: test-time augmentation views (``none``, ``flips``, ``d4``...), applied to crops and fields.
        segmenter: a registered segmenter name, overriding the one on the cell model's card.
        segmenter_options: settings over the segmenter's (e.g. ``{"min_cell_area": 19}``).

    Raises:
        ConfigError: neither model given, or ``mix`` outside 0-1.
        ModelError: ``cell_model`` is not a cell model, or ``field_model`` is one.
    """
    from protloc.inference.predict import load_backend

    if cell_model is None and field_model is None:
        raise ConfigError("per-cell prediction needs a cell model, a field model, or both")
    if not 0.0 <= mix <= 1.0:
        raise ConfigError(f"mix must lie between 0 and 1, got {mix}")
    cell_card = cell_backend = field_card = field_backend = None
    if cell_model is not None:
        cell_card, cell_backend = load_backend(cell_model, backend, device=device)
        if not is_cell_model(cell_card):
            raise ModelError(
                f"{cell_model}: not a cell model (its card has no 'cells' section); pass it as the field model"
            )
    if field_model is not None:
        field_card, field_backend = load_backend(field_model, backend, device=device)
        if is_cell_model(field_card):
            raise ModelError(f"{field_model}: is a cell model, not a field model")
    if cell_card is not None and field_card is not None and cell_card.scheme.names != field_card.scheme.names:
        raise ModelError(
            f"{cell_model} predicts {cell_card.scheme.describe()} but {field_model} predicts "
            f"{field_card.scheme.describe()}; the mix needs models of the same classes"
        )
    if segmenter is not None:
        built = create_segmenter(segmenter, **dict(segmenter_options or {}))
    else:
        built = segmenter_from_card(cell_card, segmenter_options)
    thresholds_card = cell_card if cell_card is not None else field_card
    assert thresholds_card is not None
    return CellPredictor(
        segmenter=built,
        cell_card=cell_card,
        cell_backend=cell_backend,
        field_card=field_card,
        field_backend=field_backend,
        mix=mix,
        views=parse_tta(tta),
        thresholds=[float(t) for t in thresholds_card.thresholds],
    )


@dataclass
class FieldCellPrediction:
    """The scored cells of one field.

    Attributes:
        id: the field's Id.
        labels: ``(H, W)`` label image.
        cells: ``(N,)`` cell ids (increasing).
        probabilities: ``(N, K)`` per-cell class probabilities.
        decisions: ``(N, K)`` 0/1 labels (probability >= the class threshold).
        embeddings: ``(N, D)`` pooled features of the cell model (``None`` without one, or off torch).
        method: how the probabilities were made (see the module docstring).
    """

    id: str
    labels: np.ndarray
    cells: np.ndarray
    probabilities: np.ndarray
    decisions: np.ndarray
    embeddings: np.ndarray | None
    method: str

    def field_cells(self) -> FieldCells:
        """As the 2021 encoder and metric take it: cells with per-class confidences."""
        return FieldCells(id=self.id, labels=self.labels, cells=self.cells, values=self.probabilities)

    def as_dicts(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """One dict per cell: id, box, area, centroid, border, probabilities (over ``class_names``, the model's
        scheme), labels, mask and the method."""
        properties = cell_properties(self.labels)
        rows = []
        for row, cell in enumerate(self.cells):
            y0, x0, y1, x1 = (int(properties[k][row]) for k in ("y0", "x0", "y1", "x1"))
            rows.append(
                {
                    "cell": int(cell),
                    "box": [y0, x0, y1, x1],
                    "area": int(properties["area"][row]),
                    "centroid": [float(properties["centroid_y"][row]), float(properties["centroid_x"][row])],
                    "border": bool(properties["border"][row]),
                    "probabilities": {n: float(p) for n, p in zip(class_names, self.probabilities[row], strict=True)},
                    "labels": [class_names[int(k)] for k in np.flatnonzero(self.decisions[row])],
                    "mask": self.labels[y0:y1, x0:x1] == cell,
                    "method": self.method,
                }
            )
        return rows


def _select(image: np.ndarray, channels: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    missing = [c for c in wanted if c not in channels]
    if missing:
        raise ConfigError(f"the field has no {missing[0]} channel (it has {', '.join(channels)})")
    return image[[list(channels).index(c) for c in wanted]]


def embed_crops(backend: Backend, pixels: np.ndarray) -> np.ndarray | None:
    """Pooled features (before the classifier) of 0-1 crops, from a torch backend's single timm network;
    ``None`` for ONNX Runtime, ensembles or networks without ``forward_head``."""
    from importlib.util import find_spec

    if find_spec("torch") is None:
        return None
    from protloc.inference.torch_backend import TorchBackend

    if not isinstance(backend, TorchBackend):
        return None
    network = backend.model
    backbone = getattr(network, "backbone", None)
    if backbone is None or not hasattr(backbone, "forward_head"):
        return None
    import torch

    with torch.inference_mode():
        images = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(backend.device)
        mean, std = network.mean, network.std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        normalised = (images - mean) / std
        features = backbone.forward_head(backbone.forward_features(normalised), pre_logits=True)
    return np.asarray(features.float().cpu().numpy())


def predict_field_cells(
    predictor: CellPredictor,
    image: np.ndarray,
    *,
    channels: Sequence[str],
    field_id: str = "field",
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    embeddings: bool = True,
) -> FieldCellPrediction:
    """Segment (unless ``labels`` are given) and score the cells of one ``(C, H, W)`` ``uint8`` field."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise ConfigError(
            f"field {field_id}: expected ({len(channels)}, H, W) for {', '.join(channels)}, got {image.shape}"
        )
    if labels is None:
        labels = predictor.segmenter(_select(image, channels, predictor.segmenter.channels))
    present = np.unique(labels)
    cells = present[present > 0].astype(np.int64)
    n_classes = len(predictor.thresholds)
    probabilities = np.zeros((len(cells), n_classes), dtype=np.float32)
    features: np.ndarray | None = None
    cell_card = predictor.cell_card
    spec = cell_card.cells if cell_card is not None else None
    if predictor.cell_backend is not None and cell_card is not None and spec is not None and len(cells):
        crops = cells_of_field(
            _select(image, channels, cell_card.channels),
            labels,
            cell_card.size,
            padding=float(spec.get("padding", 0.05)),
        )
        pixels = Preprocessor.to_pixels(crops.images)
        parts, feature_parts = [], []
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size]
            parts.append(run_with_tta(predictor.cell_backend, batch, predictor.views))
            if embeddings:
                feature_parts.append(embed_crops(predictor.cell_backend, batch))
        probabilities = np.concatenate(parts).astype(np.float32)
        if feature_parts and all(part is not None for part in feature_parts):
            features = np.concatenate([p for p in feature_parts if p is not None])
    if predictor.field_backend is not None and predictor.field_card is not None:
        preprocessor = Preprocessor.from_card(predictor.field_card)
        inputs = preprocessor.prepare_uint8(_select(image, channels, preprocessor.channels))[None]
        field_probabilities = predict_inputs(predictor.field_backend, inputs, preprocessor, predictor.views)[0]
        if predictor.cell_backend is None:
            probabilities = np.tile(field_probabilities.astype(np.float32), (len(cells), 1))
        else:
            probabilities = (predictor.mix * probabilities + (1 - predictor.mix) * field_probabilities).astype(
                np.float32
            )
    decisions = (probabilities >= np.asarray(predictor.thresholds, dtype=np.float32)).astype(np.uint8)
    return FieldCellPrediction(
        id=field_id,
        labels=np.asarray(labels, dtype=np.int32),
        cells=cells,
        probabilities=probabilities,
        decisions=decisions,
        embeddings=features,
        method=predictor.method,
    )


def predict_cells_in_field(
    models: CellPredictor | str | Path | Sequence[str | Path],
    image: np.ndarray,
    *,
    channels: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    field_id: str = "field",
) -> list[dict[str, Any]]:
    """Per-cell results of one field, as plain dicts (for the service and notebooks).

    Args:
        models: a :class:`CellPredictor`, or one package path (a cell model, or a field model for the
            baseline), or ``(cell model, field model)`` for the mix.
        image: ``(C, H, W)`` ``uint8`` field in ``channels`` order (default: red, green, blue, yellow).
        labels: the field's label image, if already segmented.

    Returns:
        One dict per cell: ``cell``, ``box`` ``[y0, x0, y1, x1]``, ``area``, ``centroid`` ``[y, x]``,
        ``border``, ``probabilities`` (class name -> value), ``labels`` (class names), ``mask`` (bool array of
        the box) and ``method``.
    """
    from protloc.data.io import CHANNELS

    if isinstance(models, CellPredictor):
        predictor = models
    else:
        paths = [models] if isinstance(models, (str, Path)) else list(models)
        if not 1 <= len(paths) <= 2:
            raise ConfigError("give one package, or a cell model and a field model")
        from protloc.model.card import read_card

        first_is_cell = is_cell_model(read_card(paths[0]))
        if len(paths) == 2:
            predictor = open_cell_predictor(paths[0], paths[1])
        elif first_is_cell:
            predictor = open_cell_predictor(paths[0])
        else:
            predictor = open_cell_predictor(field_model=paths[0])
    result = predict_field_cells(
        predictor, image, channels=tuple(channels or CHANNELS), field_id=field_id, labels=labels, embeddings=False
    )
    return result.as_dicts(predictor.class_names)
