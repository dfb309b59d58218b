"""The widget's work, without napari: one field as the viewer shows it -> its cells, their classes, the field's
labels and a class activation map.

It is ``protloc predict --cells`` for one field held in memory: the planes are mapped to 8 bits by the reader's
rule (:func:`protloc.data.io.to_uint8`, 16-bit ``v * 255 / 65535``), segmented by the segmenter of the model's card
(:func:`protloc.cells.predict.segment_field`) and scored by :func:`protloc.cells.predict.predict_field_cells`, the
very functions :func:`protloc.cells.outputs.predict_cells` runs, so the cells and their probabilities are those
of the command. The per-cell table is :func:`protloc.cells.table.field_table`, the rows of ``cells.csv``.

The **field labels** come from the field model when one scored the field (its thresholds, at least one label, as
``protloc predict`` decides); with a cell model alone they are the union of the cells' labels, the 2021
challenge's relation between a field and its cells. The **class activation map** is
:func:`protloc.cells.activation.cell_activation_map` for a cell model (each cell's map, scaled by its probability of the
class) and the field's Grad-CAM map (:meth:`protloc.explanation.explain.Explainer.explain`) for a field model.

Typical use (a notebook, a script, the tests)::

    from protloc.napari.analysis import AnalysisSettings, analyse_field

    result = analyse_field(AnalysisSettings(model="runs/cell/model", explain="Nucleoplasm"), planes)
    result.table["p_Nucleoplasm"], result.field_labels, result.activation
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protloc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from protloc.cells.predict import CellPredictor, FieldCellPrediction
    from protloc.explanation.explain import Explainer

STAGES: tuple[str, ...] = ("loading the model", "segmenting", "scoring the cells", "class activation map")
"""What :func:`analyse_field` reports through ``on_progress(done, total)``: stage ``done`` has just finished
(the map only when one is asked for, so ``total`` is 3 or 4)."""

FIELD_LABELS_FROM_FIELD_MODEL = "field model"
FIELD_LABELS_FROM_CELLS = "union of the cells' labels"


@dataclass(frozen=True)
class AnalysisSettings:
    """What the widget asks for, whole (the options of ``protloc predict --cells`` that apply to one field).

    Attributes:
        model: a cell model or a field model: package folder (or its card.json), ``.onnx``, or BioImage.IO zip
            (``None``: none chosen yet, which :func:`load_models` refuses).
        field_model: with a cell model, the field model of its fusion (``--field-model``; default: the one its
            package carries, if any).
        mix: instead of the card's fusion, ``mix x cell + (1 - mix) x field`` (``--mix``); ``None``: the card's.
        tta: test-time augmentation views (``none``, ``flips``, ``d4``...).
        device: ``auto``, ``cpu``, ``cuda``... (the torch backend).
        explain: a class (name, short name or id of the model's scheme) whose activation map to draw; ``None``:
            no map. Needs the model's package folder (weights and gradients).
        segmenter_options: settings over the card's segmenter (``--seg-option``).
        bit_depth: significant bits of 16-bit planes (``--bit-depth``; 16 maps 65535 to 255).
    """

    model: Path | None
    field_model: Path | None = None
    mix: float | None = None
    tta: str = "none"
    device: str = "auto"
    explain: str | None = None
    segmenter_options: Mapping[str, Any] = field(default_factory=dict)
    bit_depth: int = 16

    def models_key(self) -> tuple[Any, ...]:
        """Changes when the loaded models would: the paths, their files' times and the loading settings."""
        return (
            _stamp(self.model),
            _stamp(self.field_model),
            self.mix,
            self.tta,
            self.device,
            tuple(sorted((str(k), str(v)) for k, v in self.segmenter_options.items())),
        )


def _stamp(path: Path | None) -> tuple[str, int] | None:
    if path is None:
        return None
    path = Path(path)
    card = path / "card.json"
    target = card if card.is_file() else path
    return str(path.resolve()), target.stat().st_mtime_ns if target.exists() else 0


@dataclass
class LoadedModels:
    """The predictor (and, once asked for, the explainer) of some settings; keep it to run the next field
    without loading the packages again (:func:`load_models`)."""

    key: tuple[Any, ...]
    predictor: CellPredictor
    model: Path
    explainer: Explainer | None = None

    def explainer_for_map(self) -> Explainer:
        """The model as an explainer (loaded on first use).

        Raises:
            ModelError: the model is an exported ``.onnx`` file or a BioImage.IO package (no gradients).
        """
        if self.explainer is None:
            from protloc.explanation.explain import Explainer

            self.explainer = Explainer(self.model)
        return self.explainer


def load_models(settings: AnalysisSettings) -> LoadedModels:
    """Load the packages of ``settings`` (as ``protloc predict MODEL --cells --field-model ...`` does).

    Raises:
        ModelError: a path that is no model protloc runs, a field model given as the cell model, or models of
            different classes.
        ConfigError: no model chosen, ``mix`` outside 0-1, an unknown TTA view or segmenter setting.
    """
    from protloc.cells.predict import predictor_for

    if settings.model is None:
        raise ConfigError("no model chosen; pick a model package folder (or its card.json), an .onnx or a .zip")
    predictor = predictor_for(
        settings.model,
        settings.field_model,
        device=settings.device,
        mix=settings.mix,
        tta=settings.tta,
        segmenter_options=dict(settings.segmenter_options),
    )
    return LoadedModels(key=settings.models_key(), predictor=predictor, model=Path(settings.model))


def field_image(
    planes: Mapping[str, np.ndarray], *, bit_depth: int = 16, where: str = "field"
) -> tuple[tuple[str, ...], np.ndarray]:
    """The ``(C, H, W)`` ``uint8`` field of channel planes at their native type, channels in HPA order.

    Each plane is reduced to one 2-D plane (a colour plane by its per-pixel maximum) and mapped to 8 bits as the
    readers do; a plane over the decoder's pixel budget is refused, as its file would be.

    Raises:
        DataError: no plane, a plane that is not an image, planes of different sizes, or over the budget.
        ConfigError: an unknown channel name.
    """
    from protloc.data.decoder import ImageHeader, check_budget
    from protloc.data.io import CHANNELS, to_plane, to_uint8

    unknown = [name for name in planes if name not in CHANNELS]
    if unknown:
        raise ConfigError(f"unknown channel {unknown[0]!r}; channels are {', '.join(CHANNELS)}")
    channels = tuple(c for c in CHANNELS if c in planes)
    if not channels:
        raise DataError(f"{where}: no channel planes; open a field or pick its channel layers")
    reduced = {}
    for channel in channels:
        plane = to_plane(np.asarray(planes[channel]), f"{where} {channel}")
        check_budget(ImageHeader("other", plane.shape, plane.dtype), f"{where} {channel}")
        reduced[channel] = plane
    sizes = {plane.shape for plane in reduced.values()}
    if len(sizes) > 1:
        described = ", ".join(f"{c} {p.shape[1]}x{p.shape[0]}" for c, p in reduced.items())
        raise DataError(f"{where}: channel sizes differ ({described})")
    image = np.stack([to_uint8(reduced[c], bit_depth=bit_depth, where=f"{where} {c}") for c in channels])
    return channels, image


@dataclass
class FieldAnalysis:
    """The cells of one field and what the models say about them.

    Attributes:
        field_id: the field's Id.
        channels: the channels of ``image``.
        image: the ``(C, H, W)`` uint8 field that was segmented and scored.
        prediction: labels (the label image), cell ids, probabilities, decisions and method.
        class_names: the model's classes (its card's scheme).
        table: the per-cell table, columns as in ``cells.csv`` (:func:`protloc.cells.table.field_table`).
        field_probabilities: ``(K,)`` the field's probabilities (the field model's, else the cells' maximum).
        field_labels: the field's labels, as class names.
        field_labels_from: :data:`FIELD_LABELS_FROM_FIELD_MODEL` or :data:`FIELD_LABELS_FROM_CELLS`.
        activation: ``(H, W)`` float32 class activation map in 0-1, or ``None``.
        activation_class: the class it explains, or ``None``.
        models: the loaded models, to pass to the next :func:`analyse_field`.
    """

    field_id: str
    channels: tuple[str, ...]
    image: np.ndarray
    prediction: FieldCellPrediction
    class_names: tuple[str, ...]
    table: dict[str, np.ndarray]
    field_probabilities: np.ndarray
    field_labels: list[str]
    field_labels_from: str
    activation: np.ndarray | None
    activation_class: str | None
    models: LoadedModels

    @property
    def labels(self) -> np.ndarray:
        """The ``(H, W)`` label image (0 = background, cell ids)."""
        return self.prediction.labels

    @property
    def top(self) -> np.ndarray:
        """``(N,)`` each cell's most probable class id."""
        probabilities = self.prediction.probabilities
        return np.argmax(probabilities, axis=1) if len(probabilities) else np.zeros(0, np.int64)

    @property
    def method(self) -> str:
        return self.prediction.method


def analyse_field(
    settings: AnalysisSettings,
    planes: Mapping[str, np.ndarray],
    *,
    field_id: str = "field",
    models: LoadedModels | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> FieldAnalysis:
    """Segment and score the cells of one field given as channel planes (see the module docstring).

    Args:
        settings: the model(s) and options.
        planes: channel name -> 2-D plane at its native type (``uint8``, ``uint16``, float...).
        field_id: the field's Id, in the table and in messages.
        models: models loaded for these settings by an earlier call (reused when their key still matches).
        on_progress: called with ``(done, total)`` after each of :data:`STAGES`.

    Raises:
        ConfigError: the model needs a channel that is not among ``planes``, or an unknown class to explain.
        DataError: planes that are not one field's, or over the pixel budget.
        ModelError: the model cannot be loaded, or explained (an ``.onnx`` file or BioImage.IO package).
    """
    from protloc.cells.predict import predict_field_cells, segment_field
    from protloc.cells.table import field_table

    total = 4 if settings.explain else 3

    def done(stage: int) -> None:
        if on_progress is not None:
            on_progress(stage, total)

    channels, image = field_image(planes, bit_depth=settings.bit_depth, where=f"field {field_id}")
    if models is None or models.key != settings.models_key():
        models = load_models(settings)
    predictor = models.predictor
    scheme = predictor.scheme
    explain_class = scheme.resolve(settings.explain) if settings.explain else None
    missing = [c for c in predictor.channels if c not in channels]
    if missing:
        raise ConfigError(
            f"{models.model.name} needs the {missing[0]} channel and the field has only {', '.join(channels)}; "
            f"pick the {missing[0]} layer"
        )
    done(1)
    labels = segment_field(predictor, image, channels=channels)
    done(2)
    prediction = predict_field_cells(predictor, image, channels=channels, field_id=field_id, labels=labels)
    done(3)
    names = scheme.names
    table = field_table(
        field_id,
        prediction.labels,
        probabilities=prediction.probabilities,
        predicted=prediction.decisions,
        class_names=names,
    )
    field_probabilities, field_labels, labels_from = _field_labels(predictor, prediction)
    activation = None
    if explain_class is not None:
        activation = _activation_map(models, predictor, image, channels, prediction, explain_class)
        done(4)
    return FieldAnalysis(
        field_id=field_id,
        channels=channels,
        image=image,
        prediction=prediction,
        class_names=names,
        table=table,
        field_probabilities=field_probabilities,
        field_labels=[names[k] for k in field_labels],
        field_labels_from=labels_from,
        activation=activation,
        activation_class=None if explain_class is None else names[explain_class],
        models=models,
    )


def _field_labels(predictor: CellPredictor, prediction: FieldCellPrediction) -> tuple[np.ndarray, list[int], str]:
    """The field's probabilities, label ids and where they come from (see the module docstring)."""
    from protloc.metrics import decide

    if prediction.field_probabilities is not None and predictor.field_card is not None:
        probabilities = prediction.field_probabilities
        decided = decide(probabilities[None], predictor.field_card.thresholds, min_one=True)[0]
        return probabilities, [int(k) for k in np.flatnonzero(decided)], FIELD_LABELS_FROM_FIELD_MODEL
    n_classes = len(predictor.thresholds)
    if len(prediction.cells) == 0:
        return np.zeros(n_classes, np.float32), [], FIELD_LABELS_FROM_CELLS
    union = prediction.decisions.max(axis=0)
    return prediction.probabilities.max(axis=0), [int(k) for k in np.flatnonzero(union)], FIELD_LABELS_FROM_CELLS


def _activation_map(
    models: LoadedModels,
    predictor: CellPredictor,
    image: np.ndarray,
    channels: tuple[str, ...],
    prediction: FieldCellPrediction,
    class_id: int,
) -> np.ndarray:
    from protloc.cells.activation import cell_activation_map

    explainer = models.explainer_for_map()
    selected = image[[channels.index(c) for c in explainer.channels]]
    if explainer.package.card.cells is None:
        return explainer.explain(selected, [class_id]).maps[class_id]
    weights = {int(c): float(p) for c, p in zip(prediction.cells, prediction.probabilities[:, class_id], strict=True)}
    return cell_activation_map(explainer, selected, prediction.labels, class_id, weights=weights)
