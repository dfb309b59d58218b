"""The napari widget: pick a model and the field's channel layers, segment and classify the cells in a worker
thread, and see the results as layers.

The work is :func:`protloc.napari.analysis.analyse_field` (what ``protloc predict --cells`` does, for the field
on screen); this module only reads the choices, runs that function in a napari ``thread_worker`` (the viewer
stays responsive; the widget's bar and napari's activity dock show progress), and turns its result into layers
(:mod:`protloc.napari.layers`):

* ``cells <Id>``: labels coloured by each cell's top class; the per-cell table in the layer's ``features``
  (napari shows it on hover and in its features table); the field's labels in the widget and the metadata;
* ``activation <class> <Id>``: the class activation map of the chosen class, when one is chosen.

Running again replaces the results of the same field. A user error (no model, a channel the model needs not
picked, a field over the pixel budget, an ``.onnx`` asked for an activation map) is a one-line error
notification; anything else is a bug and reaches napari's error handler with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QComboBox, QSizePolicy

from protloc.channels import CHANNELS
from protloc.errors import DataError, ProtlocError
from protloc.napari.analysis import STAGES, AnalysisSettings, FieldAnalysis, LoadedModels, analyse_field
from protloc.napari.layers import activation_layer, cells_layer, protloc_metadata

if TYPE_CHECKING:
    import napari

NO_MAP = "(none)"
"""The activation-map choice that draws no map."""

TTA_CHOICES = ("none", "flips", "d4")
MODEL_FILTER = "protloc models (card.json *.onnx *.zip)"
OPEN_FILE = FileDialogMode.EXISTING_FILE


class _Progress(QObject):
    """Carries ``on_progress(done, total)`` from the worker thread to the widget (a queued Qt signal)."""

    moved = Signal(int, int)


class CellsWidget(Container):
    """Segment and classify the cells of the field shown in the viewer (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.model = FileEdit(label="model", mode=OPEN_FILE, filter=MODEL_FILTER, nullable=True)
        self.model.tooltip = "A cell or field model: its package folder (or card.json), an .onnx or a BioImage.IO zip"
        self.field_model = FileEdit(label="field model", mode=OPEN_FILE, filter=MODEL_FILTER, nullable=True)
        self.field_model.tooltip = (
            "Optional, with a cell model: the field model of its fusion (predict --field-model; default: the one "
            "its package carries)"
        )
        self.tta = ComboBox(label="TTA", choices=TTA_CHOICES, value="none")
        self.channels = {c: ComboBox(label=c, choices=self._image_layers, nullable=True, value=None) for c in CHANNELS}
        self._classes: list[str] = []
        self.explain = ComboBox(label="activation map", choices=self._map_choices, value=NO_MAP)
        self.explain.tooltip = "Class whose activation map to draw (needs the package folder, not .onnx or .zip)"
        self.run_button = PushButton(text="Segment and classify")
        self.progress = ProgressBar(label="progress", value=0, min=0, max=len(STAGES) - 1)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        # the widget's spare height goes to the result line, so a wrapped line is never cut when the dock narrows
        self.status.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.MinimumExpanding)
        self.status.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        for box in self.channels.values():  # long layer names must not widen the dock over the canvas
            box.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.native.setMinimumContentsLength(18)
        choices = [self.model, self.field_model, self.tta, *self.channels.values(), self.explain]
        self.extend([*choices, self.run_button, self.progress])
        # the result line spans the widget's width (outside the labelled rows, so its wrapped lines all show)
        self.native.layout().addWidget(self.status.native)
        self._models: LoadedModels | None = None
        self._worker: Any = None
        self._signals = _Progress()
        self._signals.moved.connect(self._moved)
        self.model.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        events = self.viewer.layers.events
        events.inserted.connect(self._layer_inserted)
        events.removed.connect(self._layers_changed)
        events.moved.connect(self._layers_changed)
        self.native.destroyed.connect(self._disconnect)  # a closed dock stops following the viewer's layers
        for layer in self.viewer.layers:
            self._follow(layer)
        self._layers_changed()

    def _disconnect(self, *_: Any) -> None:
        events = self.viewer.layers.events
        events.inserted.disconnect(self._layer_inserted)
        events.removed.disconnect(self._layers_changed)
        events.moved.disconnect(self._layers_changed)

    # ------------------------------------------------------------------------------------------ choices

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _layers_changed(self, _event: Any = None) -> None:
        for channel, box in self.channels.items():
            chosen = box.value
            box.reset_choices()
            if chosen is None or chosen not in self.viewer.layers:
                box.value = _guess_layer(self._image_layers(), channel)

    def _layer_inserted(self, event: Any) -> None:
        self._layers_changed()
        self._follow(event.value)

    def _follow(self, layer: Any) -> None:
        """A channel layer protloc opened becomes that channel's choice (the last field opened is the one run)."""
        meta = protloc_metadata(getattr(layer, "metadata", None))
        channel = meta.get("channel")
        if meta.get("kind") == "channel" and channel in self.channels:
            self.channels[channel].reset_choices()
            self.channels[channel].value = layer

    def _map_choices(self, _widget: Any = None) -> list[str]:
        return [NO_MAP, *self._classes]

    def _model_changed(self, _value: Any = None) -> None:
        """The activation-map choices: the model's classes (none while the path is not a model)."""
        from protloc.inference.backends import read_model_card

        self._classes = []
        path = _path(self.model)
        if path is not None and path.exists():
            try:
                self._classes = list(read_model_card(path).scheme.names)
            except ProtlocError as exc:
                self.status.value = str(exc)
        previous = self.explain.value
        self.explain.reset_choices()
        self.explain.value = previous if previous in self._map_choices() else NO_MAP

    # ------------------------------------------------------------------------------------------ running

    def settings(self) -> AnalysisSettings:
        """The analysis the widget's choices describe."""
        chosen = self.explain.value
        return AnalysisSettings(
            model=_path(self.model),
            field_model=_path(self.field_model),
            tta=str(self.tta.value),
            explain=None if chosen in (None, NO_MAP) else str(chosen),
        )

    def field(self) -> tuple[str, dict[str, np.ndarray]]:
        """The chosen layers' field: its Id (from protloc's metadata, else the layer name) and its planes.

        Raises:
            DataError: no layer chosen, or a layer that is not one 2-D plane.
        """
        planes: dict[str, np.ndarray] = {}
        field_id = ""
        for channel, box in self.channels.items():
            layer = box.value
            if layer is None:
                continue
            if getattr(layer, "multiscale", False):
                raise DataError(f"layer {layer.name}: a multiscale image; open the field at one resolution")
            planes[channel] = np.asarray(layer.data)
            field_id = field_id or str(protloc_metadata(layer.metadata).get("field") or _field_name(layer.name))
        if not planes:
            raise DataError("no channel layers chosen; open a field (File > Open) or pick its layers")
        return field_id, planes

    def run(self, _value: Any = None) -> Any:
        """Start the analysis in a worker thread; returns the worker (``None`` when the choices are refused)."""
        from napari.qt.threading import create_worker

        try:
            settings = self.settings()
            field_id, planes = self.field()
        except ProtlocError as exc:
            self._failed(exc)
            return None
        self.run_button.enabled = False
        self.progress.value = 0
        self.progress.max = 4 if settings.explain else 3
        self.status.value = f"{STAGES[0]}..."
        worker = create_worker(
            _analyse,
            settings,
            planes,
            field_id,
            self._models,
            self._signals.moved.emit,
            _progress={"desc": f"protloc: cells of {field_id}"},
        )
        worker.returned.connect(self._finished)
        worker.finished.connect(self._idle)
        self._worker = worker
        worker.start()
        return worker

    def _moved(self, done: int, total: int) -> None:
        self.progress.max = total
        self.progress.value = done
        self.status.value = f"{STAGES[done]}..." if done < total else "adding layers..."

    def _idle(self) -> None:
        self.run_button.enabled = True
        self._worker = None

    def _failed(self, exc: ProtlocError) -> None:
        from napari.utils.notifications import show_error

        self.status.value = str(exc)
        show_error(str(exc))

    def _finished(self, outcome: FieldAnalysis | _Refused) -> None:
        if isinstance(outcome, _Refused):
            self._failed(outcome.error)
            return
        self._models = outcome.models
        self.show_result(outcome)

    def show_result(self, result: FieldAnalysis) -> list[Any]:
        """Add (or replace) the layers of a result; returns them."""
        stale = [
            layer
            for layer in self.viewer.layers
            if protloc_metadata(layer.metadata).get("field") == result.field_id
            and protloc_metadata(layer.metadata).get("kind") in ("cells", "activation")
        ]
        for layer in stale:
            self.viewer.layers.remove(layer)
        added = []
        for layer_data in (activation_layer(result), cells_layer(result)):
            if layer_data is not None:
                data, kwargs, kind = layer_data
                added.append(getattr(self.viewer, f"add_{kind}")(data, **kwargs))
        labels = ", ".join(result.field_labels) or "none"
        self.status.value = (
            f"{len(result.prediction.cells)} cells ({result.method}); field: {labels} ({result.field_labels_from})"
        )
        self.progress.value = self.progress.max
        return added


@dataclass(frozen=True)
class _Refused:
    """A user error, returned by the worker rather than raised (a worker that returns an exception raises it)."""

    error: ProtlocError


def _analyse(
    settings: AnalysisSettings,
    planes: dict[str, np.ndarray],
    field_id: str,
    models: LoadedModels | None,
    on_progress: Any,
) -> FieldAnalysis | _Refused:
    """The worker's function: a user error comes back as a value, shown as one line, never raised."""
    try:
        return analyse_field(settings, planes, field_id=field_id, models=models, on_progress=on_progress)
    except ProtlocError as exc:
        return _Refused(exc)


def _path(edit: FileEdit) -> Path | None:
    value = edit.value
    return None if value is None or isinstance(value, tuple) or not str(value).strip() else Path(value)


def _guess_layer(layers: list[tuple[str, Any]], channel: str) -> Any:
    """The image layer that is most likely ``channel``: protloc's metadata says so, or its name ends in
    ``_<channel>`` (napari's own reader names layers by file stem) or is the channel; the last opened wins."""
    for _, layer in reversed(layers):
        if protloc_metadata(layer.metadata).get("channel") == channel:
            return layer
    for name, layer in reversed(layers):
        lowered = name.lower()
        if lowered == channel or lowered.endswith(f"_{channel}"):
            return layer
    return None


def _field_name(layer_name: str) -> str:
    """A field Id from a layer name such as ``<Id>_green``."""
    from protloc.data.io import split_channel_filename

    parsed = split_channel_filename(f"{layer_name}.png")
    return parsed[0] if parsed else layer_name
