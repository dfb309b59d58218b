"""Per-cell prediction: segment a field, cut its cells, score each with a cell model, a field model, or both.

Three **methods**, named in every output so a result never hides how it was made:

* ``"cell model"`` - a cell model (a package trained on a cell data set, whose card has a ``"cells"``
  section: crop size, padding, segmentation settings) scores each masked crop, fused as its card says with
  its own image head when it has one (see :mod:`protloc.cells.fusion`);
* ``"baseline: field labels to every cell"`` - with only a field model, every cell of a field gets the
  field's probabilities (the honest baseline of the 2021 challenge);
* ``"cell + field fusion"`` - both, combined by the fusion rule fitted on validation fields and stored on the
  cell model's card (e.g. ``cell x field``), or by a weighted mean the caller asks for (``mix=``).

Scoring a field is two steps: :func:`score_field` runs the models once (cell probabilities, the field's
probabilities, border flags and areas: :class:`FieldScores`), and :func:`protloc.cells.fusion.fuse` combines
them; evaluation scores every rule from the same :class:`FieldScores`.

A cell model package made by ``protloc train DATA --cells`` (:mod:`protloc.training.cells`) carries its field
model in ``field/`` (named on its card): :func:`predictor_for` and the service load it from there, so the
package is used as it is.

Backends, TTA views and ensembles are those of field prediction (:func:`protloc.inference.predict.load_backend`,
:func:`protloc.inference.core.batch_probabilities`, the one prediction core); a cell model exported to ONNX
predicts the same way. Embeddings (the network's pooled features before the classifier) come with the torch
backend of a single timm model.

:func:`predict_cells_in_field` is the one-field entry point for callers such as the service;
:mod:`protloc.cells.outputs` writes whole data sets.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc.cells.fusion import (
    FusionSpec,
    ImageHead,
    cell_maximum,
    field_model_of,
    fuse,
    fusion_of,
    image_head_of,
    small_cells,
)
from protloc.cells.masks import FieldCells, border_cells, cell_properties, cells_of_field, check_labels_fit
from protloc.cells.segment import ClassicalParams, Segmenter, create_segmenter
from protloc.errors import ConfigError, ModelError
from protloc.inference.core import Backend, Preprocessor, batch_probabilities, parse_tta
from protloc.metrics import decide
from protloc.model.card import ModelCard, resolve_package_path
from protloc.schemes import ClassScheme

METHOD_CELL = "cell model"
METHOD_BASELINE = "baseline: field labels to every cell"
METHOD_FUSION = "cell + field fusion"
METHOD_MIX = METHOD_FUSION
"""The name of protloc 0.2, kept for callers."""

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
        recorded = dict(cells.segmentation)
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
    fusion: FusionSpec = field(default_factory=FusionSpec)
    """how the cell model's and the image's probabilities combine (see :mod:`protloc.cells.fusion`)."""
    views: tuple[str, ...] = ("id",)
    thresholds: list[float] = field(default_factory=list)
    image_head: ImageHead | None = None
    """the cell model's image head, when it has one (from its card)."""

    @property
    def method(self) -> str:
        if self.cell_backend is None:
            return METHOD_BASELINE
        if self.field_backend is not None and self.fusion.needs_field_model:
            return METHOD_FUSION
        return METHOD_CELL

    @property
    def mix(self) -> float | None:
        """The cell model's weight when the fusion is a weighted mean with the field model (protloc 0.2's mix)."""
        if self.method == METHOD_FUSION and self.fusion.rule == "mean":
            return self.fusion.weight
        return None

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

    @property
    def applied_fusion(self) -> FusionSpec:
        """The rule actually applied: the baseline copies the image; a cell model alone ignores a fusion that
        needs the field model it was not given."""
        if self.method == METHOD_BASELINE:
            return FusionSpec("image")
        if self.method == METHOD_CELL and self.fusion.needs_field_model:
            return FusionSpec()
        return self.fusion

    def describe(self) -> dict[str, Any]:
        """What made the predictions, for the outputs' provenance."""
        return {
            "method": self.method,
            "fusion": self.applied_fusion.describe(),
            "fusion_rule": self.applied_fusion.to_dict(),
            "mix": self.mix,
            "tta": list(self.views),
            "segmenter": self.segmenter.settings(),
            "cell_model": self.cell_card.cells.to_dict() if self.cell_card and self.cell_card.cells else None,
            "thresholds_from": self._thresholds_from(),
            "scheme": self.scheme.name,
            "classes": list(self.scheme.names),
        }

    def _thresholds_from(self) -> str:
        if self.cell_card is None:
            return "field model"
        return "fitted with the fusion" if self.applied_fusion.thresholds is not None else "cell model"


def predictor_for(
    model: str | Path,
    field_model: str | Path | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    mix: float | None = None,
    fusion: FusionSpec | None = None,
    tta: str | Sequence[str] | None = None,
    segmenter_options: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> CellPredictor:
    """The cell predictor for ``model`` as a user names it (a package folder, an ``.onnx`` file or a BioImage.IO
    package): a cell model (with ``field_model``, else the field model its package carries), or a field model,
    whose labels every cell then gets (the baseline)."""
    from protloc.inference.backends import read_model_card

    cell_model = model if is_cell_model(read_model_card(model)) else None
    return open_cell_predictor(
        cell_model,
        field_model if cell_model is not None else model,
        backend=backend,
        device=device,
        mix=mix,
        fusion=fusion,
        tta=tta,
        segmenter_options=segmenter_options,
        threads=threads,
    )


def carried_field_model(cell_model: str | Path, card: ModelCard) -> Path | None:
    """The field model a cell model package carries (``protloc train DATA --cells`` puts it in ``field/``)."""
    relative = field_model_of(card.cells)
    if relative is None or Path(cell_model).suffix.lower() == ".onnx":
        return None
    path = resolve_package_path(cell_model) / relative
    if not path.is_dir():
        raise ModelError(f"{cell_model}: its card names the field model {relative!r}, which the package lacks")
    return path


def open_cell_predictor(
    cell_model: str | Path | None = None,
    field_model: str | Path | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    mix: float | None = None,
    fusion: FusionSpec | None = None,
    tta: str | Sequence[str] | None = None,
    segmenter: str | None = None,
    segmenter_options: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> CellPredictor:
    """Load the packages and the segmenter for per-cell prediction.

    Args:
        cell_model: a cell model package (or its ``.onnx``); its card says how to segment, crop and fuse.
        field_model: a field model package; alone it gives the baseline; with a cell model, the image
            probabilities of the fusion (default: the field model the cell model's package carries, if any).
        mix: instead of the card's fusion, ``mix x cell + (1 - mix) x field`` (0-1).
        fusion: instead of the card's fusion, this rule.
        tta: test-time augmentation views (``none``, ``flips``, ``d4``...), applied to crops and fields.
        segmenter: a registered segmenter name, overriding the one on the cell model's card.
        segmenter_options: settings over the segmenter's (e.g. ``{"min_cell_area": 19}``).
        threads: the networks' threads (default: :func:`protloc.inference.budget.plan_cells`).

    Raises:
        ConfigError: neither model given, or ``mix`` outside 0-1.
        ModelError: ``cell_model`` is not a cell model, ``field_model`` is one, or the fusion needs a field
            model and none is given or carried.
    """
    from protloc.inference.budget import plan_cells
    from protloc.inference.predict import load_backend

    budget = plan_cells(threads=threads)
    if cell_model is None and field_model is None:
        raise ConfigError("per-cell prediction needs a cell model, a field model, or both")
    if mix is not None:
        if not 0.0 <= mix <= 1.0:
            raise ConfigError(f"mix must lie between 0 and 1, got {mix}")
        fusion = FusionSpec("mean", weight=float(mix))
    cell_card = cell_backend = field_card = field_backend = None
    head = None
    if cell_model is not None:
        cell_card, cell_backend = load_backend(
            cell_model, backend, device=device, threads=budget.threads, spin=budget.spin
        )
        if not is_cell_model(cell_card):
            raise ModelError(
                f"{cell_model}: not a cell model (its card has no 'cells' section); pass it as the field model"
            )
        fusion = fusion if fusion is not None else fusion_of(cell_card.cells, where=str(cell_model))
        head = image_head_of(cell_card.cells, where=str(cell_model))
        if field_model is None:  # loaded when carried (the baseline side by side), run only when the fusion asks
            field_model = carried_field_model(cell_model, cell_card)
            if field_model is None and fusion.needs_field_model:
                raise ModelError(
                    f"{cell_model}: its fusion ({fusion.describe()}) needs a field model; pass --field-model"
                )
        if fusion.image == "cell model" and fusion.needs_image and head is None:
            raise ModelError(f"{cell_model}: the fusion {fusion.describe()!r} needs an image head it does not have")
    if field_model is not None:
        field_card, field_backend = load_backend(
            field_model, backend, device=device, threads=budget.threads, spin=budget.spin
        )
        if is_cell_model(field_card):
            raise ModelError(f"{field_model}: is a cell model, not a field model")
    if cell_card is not None and field_card is not None and cell_card.scheme.names != field_card.scheme.names:
        raise ModelError(
            f"{cell_model} predicts {cell_card.scheme.describe()} but {field_model} predicts "
            f"{field_card.scheme.describe()}; the fusion needs models of the same classes"
        )
    if segmenter is not None:
        built = create_segmenter(segmenter, **dict(segmenter_options or {}))
    else:
        built = segmenter_from_card(cell_card, segmenter_options)
    predictor = CellPredictor(
        segmenter=built,
        cell_card=cell_card,
        cell_backend=cell_backend,
        field_card=field_card,
        field_backend=field_backend,
        fusion=fusion or FusionSpec(),
        views=parse_tta(tta),
        image_head=head,
    )
    predictor.thresholds = predictor_thresholds(predictor)
    return predictor


def predictor_thresholds(predictor: CellPredictor) -> list[float]:
    """The per-class thresholds of a predictor's scores: those fitted with its fusion, else its cell model's,
    else (the baseline) its field model's."""
    applied = predictor.applied_fusion
    if predictor.cell_card is not None and applied.thresholds is not None:
        return [float(t) for t in applied.thresholds]
    card = predictor.cell_card if predictor.cell_card is not None else predictor.field_card
    assert card is not None
    return [float(t) for t in card.thresholds]


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
        field_probabilities: ``(K,)`` the field model's probabilities for the whole field, when the fusion ran it.
    """

    id: str
    labels: np.ndarray
    cells: np.ndarray
    probabilities: np.ndarray
    decisions: np.ndarray
    embeddings: np.ndarray | None
    method: str
    field_probabilities: np.ndarray | None = None

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


def select_channels(image: np.ndarray, channels: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """The planes ``wanted`` of a ``(C, H, W)`` field whose planes are ``channels``; a missing one is a ConfigError."""
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


@dataclass
class FieldScores:
    """What the models say about the cells of one field, before fusion (see :func:`score_field`).

    Attributes:
        id: the field's Id.
        labels: ``(H, W)`` label image.
        cells: ``(N,)`` cell ids (increasing).
        cell: ``(N, K)`` the cell model's probabilities (``None`` without a cell model).
        field: ``(K,)`` the field model's probabilities (``None`` without a field model).
        head: ``(K,)`` the cell model's image head over the field's cells (``None`` without one).
        cam: ``(N, K)`` the field model's class activation maps averaged in each cell (when asked for).
        border: ``(N,)`` cells cut by the field's border.
        areas: ``(N,)`` cell areas in pixels.
        embeddings: ``(N, D)`` pooled features of the cell model (``None`` without one, or off torch).
    """

    id: str
    labels: np.ndarray
    cells: np.ndarray
    cell: np.ndarray | None
    field: np.ndarray | None
    head: np.ndarray | None
    border: np.ndarray
    areas: np.ndarray
    embeddings: np.ndarray | None = None
    cam: np.ndarray | None = None

    def images(self) -> dict[str, np.ndarray]:
        """The image probabilities this field has, by source (see :data:`protloc.cells.fusion.IMAGE_SOURCES`)."""
        maximum = cell_maximum(self.cell) if self.cell is not None else None
        found = {
            "field model": self.field,
            "cell model": self.head,
            "cell maximum": maximum,
            "field model CAM": self.cam,
        }
        return {name: value for name, value in found.items() if value is not None}

    def field_cells(self, values: np.ndarray | None = None) -> FieldCells:
        """The cells as the metric takes them, with ``values`` (default: none, for matching them to the truth)."""
        chosen = np.zeros((len(self.cells), 0)) if values is None else values
        return FieldCells(id=self.id, labels=self.labels, cells=self.cells, values=chosen)

    def fused(self, spec: FusionSpec, negative: Sequence[int] = ()) -> np.ndarray:
        """``(N, K)`` scores of the cells under ``spec``."""
        if len(self.cells) == 0:
            width = next(v.shape[-1] for v in (self.cell, self.field, self.head) if v is not None)
            return np.zeros((0, width), np.float32)
        return fuse(
            spec,
            self.cell,
            self.images().get(spec.image),
            border=self.border,
            small=small_cells(self.areas, spec.small_fraction),
            negative=negative,
        )


def cell_geometry(labels: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(border flags, areas)`` of ``cells`` (increasing ids) of a label image."""
    areas = np.bincount(labels.ravel(), minlength=int(cells.max(initial=0)) + 1)[cells]
    return np.isin(cells, border_cells(labels)), areas.astype(np.int64)


def segment_field(predictor: CellPredictor, image: np.ndarray, *, channels: Sequence[str]) -> np.ndarray:
    """The ``(H, W)`` label image of one ``(C, H, W)`` ``uint8`` field by the predictor's segmenter, as
    :func:`score_field` segments a field it is given without labels.

    Raises:
        ConfigError: the field lacks a channel the segmenter reads.
    """
    return np.asarray(predictor.segmenter(select_channels(image, channels, predictor.segmenter.channels)))


def score_field(
    predictor: CellPredictor,
    image: np.ndarray,
    *,
    channels: Sequence[str],
    field_id: str = "field",
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    embeddings: bool = True,
    field_probabilities: np.ndarray | None = None,
    sources: Collection[str] | None = None,
) -> FieldScores:
    """Segment (unless ``labels`` are given) one ``(C, H, W)`` ``uint8`` field and run the models on it once.

    Args:
        field_probabilities: the field model's probabilities of this field when the caller has them already
            (the service, which answers the field's labels too): the field network then does not run again.
        sources: what to compute, of ``"cell"`` (the cell model), ``"field"`` (the field model) and ``"cam"``
            (the field model's maps in each cell); default: what the predictor's fusion needs.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise ConfigError(
            f"field {field_id}: expected ({len(channels)}, H, W) for {', '.join(channels)}, got {image.shape}"
        )
    if labels is None:
        labels = segment_field(predictor, image, channels=channels)
    check_labels_fit(np.shape(labels), image.shape[1:], field_id=field_id)
    labels = np.asarray(labels, dtype=np.int32)
    present = np.unique(labels)
    cells = present[present > 0].astype(np.int64)
    applied = predictor.applied_fusion
    if sources is None:
        sources = {"cell"} if applied.needs_cell_model else set()
        if applied.needs_field_model:
            sources |= {"cam" if applied.image == "field model CAM" else "field"}
    run_cell, run_field = "cell" in sources, "field" in sources
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    cell_card = predictor.cell_card
    if run_cell and predictor.cell_backend is not None and cell_card is not None:
        probabilities, features = _score_crops(predictor, image, channels, labels, batch_size, embeddings)
    field_values = None
    if run_field and predictor.field_backend is not None and predictor.field_card is not None:
        if field_probabilities is not None:
            field_values = np.asarray(field_probabilities, dtype=np.float32)
        else:
            preprocessor = Preprocessor.from_card(predictor.field_card)
            inputs = preprocessor.prepare_uint8(select_channels(image, channels, preprocessor.channels))[None]
            field_values = batch_probabilities(predictor.field_backend, inputs, predictor.views)[0]
            field_values = field_values.astype(np.float32)
    head = predictor.image_head(probabilities) if predictor.image_head and probabilities is not None else None
    cam = _cam(predictor, image, channels, labels, cells) if "cam" in sources else None
    border, areas = cell_geometry(labels, cells)
    return FieldScores(
        id=field_id,
        labels=labels,
        cells=cells,
        cell=probabilities,
        field=field_values,
        head=head,
        border=border,
        areas=areas,
        embeddings=features,
        cam=cam,
    )


def _cam(
    predictor: CellPredictor, image: np.ndarray, channels: Sequence[str], labels: np.ndarray, cells: np.ndarray
) -> np.ndarray | None:
    """The field model's class activation maps averaged in each cell (:mod:`protloc.cells.cam`); ``None``
    without a field model.

    Raises:
        ModelError: the field model does not run on the torch backend, or has no linear head.
    """
    card, backend = predictor.field_card, predictor.field_backend
    if card is None or backend is None:
        return None
    network = getattr(backend, "model", None)
    if network is None or not hasattr(network, "backbone"):
        raise ModelError("CAM-in-mask scores need the field model on the torch backend (--backend torch)")
    from protloc.cells.cam import cam_in_cells

    preprocessor = Preprocessor.from_card(card)
    inputs = preprocessor.prepare_uint8(select_channels(image, channels, preprocessor.channels))
    return cam_in_cells(network, Preprocessor.to_pixels(inputs), labels, cells)


def _score_crops(
    predictor: CellPredictor,
    image: np.ndarray,
    channels: Sequence[str],
    labels: np.ndarray,
    batch_size: int,
    embeddings: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The cell model's probabilities ``(N, K)`` of every cell's crop, and their pooled features."""
    cell_card = predictor.cell_card
    assert cell_card is not None and predictor.cell_backend is not None
    spec = cell_card.cells
    padding, context = (spec.padding, spec.context) if spec is not None else (0.05, 0.0)
    pixels = select_channels(image, channels, cell_card.channels)
    crops = cells_of_field(pixels, labels, cell_card.size, padding=padding, context=context)
    if len(crops.cells) == 0:
        return np.zeros((0, cell_card.num_classes), np.float32), None
    parts, feature_parts = [], []
    for start in range(0, len(crops.images), batch_size):
        batch = crops.images[start : start + batch_size]  # uint8 (B, C, S, S): one tile per cell
        parts.append(batch_probabilities(predictor.cell_backend, batch[:, None], predictor.views))
        if embeddings:
            feature_parts.append(embed_crops(predictor.cell_backend, Preprocessor.to_pixels(batch)))
    features = None
    if feature_parts and all(part is not None for part in feature_parts):
        features = np.concatenate([p for p in feature_parts if p is not None])
    return np.concatenate(parts).astype(np.float32), features


def predict_field_cells(
    predictor: CellPredictor,
    image: np.ndarray,
    *,
    channels: Sequence[str],
    field_id: str = "field",
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    embeddings: bool = True,
    field_probabilities: np.ndarray | None = None,
) -> FieldCellPrediction:
    """Segment (unless ``labels`` are given) and score the cells of one ``(C, H, W)`` ``uint8`` field: the models
    (:func:`score_field`), then the predictor's fusion and thresholds."""
    scores = score_field(
        predictor,
        image,
        channels=channels,
        field_id=field_id,
        labels=labels,
        batch_size=batch_size,
        embeddings=embeddings,
        field_probabilities=field_probabilities,
    )
    return fused_prediction(predictor, scores)


def fused_prediction(predictor: CellPredictor, scores: FieldScores) -> FieldCellPrediction:
    """A field's cells scored by the predictor's fusion, with its thresholds' decisions."""
    probabilities = scores.fused(predictor.applied_fusion, predictor.scheme.exclusive)
    decisions = decide(probabilities, predictor.thresholds, min_one=False, exclusive=predictor.scheme.exclusive)
    return FieldCellPrediction(
        id=scores.id,
        labels=scores.labels,
        cells=scores.cells,
        probabilities=probabilities,
        decisions=decisions,
        embeddings=scores.embeddings,
        method=predictor.method,
        field_probabilities=scores.field,
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
        models: a :class:`CellPredictor`, or one package path (a cell model, with the field model its package
            carries; or a field model for the baseline), or ``(cell model, field model)``.
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
