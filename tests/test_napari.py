"""The napari plugin (issue 22): the reader, the cells widget against ``protloc predict --cells``, the writer, and
one-line notifications for user errors; headless (``QT_QPA_PLATFORM=offscreen``) with napari's own
``make_napari_viewer`` fixture.

napari's canvas needs OpenGL, which Qt's offscreen platform takes from an X display: pytest-xvfb starts an Xvfb
for the run where one is installed (``.ci/run`` installs it). The tests skip when napari, pytest-qt or a display
is missing (a user's clone without the extra), unless ``PROTLOC_REQUIRE_NAPARI`` is set (``.ci/run`` sets it),
when the absence is a failure. The genuine 2021 field comes from ``../shared/realdata`` as in
``tests/test_realdata.py``. ``PROTLOC_SCREENSHOTS=DIR`` keeps the widget's screenshot (docs/images/ holds one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from protloc.cells.masks import read_labels
from protloc.cells.predict import METHOD_FUSION
from protloc.cells.table import read_table
from protloc.channels import CHANNEL_ROLES, CHANNELS
from protloc.classes import HPA2018
from protloc.data.io import IMAGE_EXTENSIONS, read_channel_raw
from protloc.data.microscope import MICROSCOPE_SUFFIXES, write_ome_tiff
from protloc.errors import ConfigError, ModelError
from protloc.napari.analysis import (
    FIELD_LABELS_FROM_CELLS,
    FIELD_LABELS_FROM_FIELD_MODEL,
    AnalysisSettings,
    analyse_field,
)
from protloc.schemes import get_scheme
from tests.test_cells_predict import SEGMENTATION, _package

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "src" / "protloc" / "napari" / "napari.yaml"
REAL_FIELD = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
"""A 2048 px field of the 2021 release in ../shared/realdata (labels 8|5|0 of the 2021 scheme)."""
WAIT_MS = 180_000


def _napari_ready(display: bool = True) -> None:
    """Skip (fail under ``PROTLOC_REQUIRE_NAPARI``) when napari, its test fixtures or (for a viewer) a display are
    missing."""
    missing = [name for name in ("napari", "npe2", "magicgui", "pytestqt") if find_spec(name) is None]
    problem = ""
    if missing:
        problem = f"the napari tests need {', '.join(missing)}: pip install 'protloc[napari,dev]'"
    elif (
        display
        and sys.platform.startswith("linux")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        problem = (
            "napari's canvas needs an X display with OpenGL and there is none: install Xvfb (apt-get install xvfb), "
            "which pytest-xvfb then starts"
        )
    if problem:
        if os.environ.get("PROTLOC_REQUIRE_NAPARI"):
            pytest.fail(problem + " (PROTLOC_REQUIRE_NAPARI is set)", pytrace=False)
        pytest.skip(problem)


def _register_plugin() -> None:
    """The plugin as napari finds it installed (its entry point), or from the source tree when the installed
    protloc predates the entry point."""
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    manager.discover()
    if "protloc" not in {manifest.name for manifest in manager.iter_manifests()}:
        manager.register(PluginManifest.from_file(MANIFEST))


def _make_viewer(request: pytest.FixtureRequest, **kwargs: Any) -> Any:
    """A napari viewer from napari's ``make_napari_viewer``, with protloc's plugin registered."""
    _napari_ready()
    _register_plugin()
    _load_llvm_users_in_a_safe_order()
    return request.getfixturevalue("make_napari_viewer")(**kwargs)


def _load_llvm_users_in_a_safe_order() -> None:
    """Import torch's compiler stack (Triton) before the first OpenGL context.

    Without a GPU, the canvas's OpenGL is Mesa's llvmpipe, which loads LLVM; Triton brings its own LLVM, and
    loaded *after* llvmpipe it crashes the process (a segmentation fault in ``import torch._dynamo``, which an
    ONNX export performs). Loaded before, both work. Only a process that draws with llvmpipe and later compiles or
    exports a network is concerned: the test suite, which exports ONNX after these tests."""
    if find_spec("torch") is not None:
        import torch._dynamo  # noqa: F401


@pytest.fixture
def viewer(request: pytest.FixtureRequest) -> Any:
    return _make_viewer(request)


@pytest.fixture(scope="module")
def synth_field(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One synthetic 128 px field (Kaggle 2018 style) with per-cell truth: its Id and its folder."""
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("napari-synth") / "data"
    make_dataset(root, n_train=2, n_test=1, size=128, seed=3, workers=1, cells=True)
    field_id = next((root / "test").glob("*_red.png")).name[: -len("_red.png")]
    return field_id, root / "test"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small untrained packages (the plumbing, not quality): 2018 cell and field models for the synthetic field,
    and a 2021 cell model segmenting with the classical defaults for the genuine field."""
    root = tmp_path_factory.mktemp("napari-models")
    crops = {"crop_size": 32, "padding": 0.05}
    return {
        "cell": _package(root / "cell", size=32, cells={**crops, "segmentation": SEGMENTATION}),
        "field": _package(root / "field", size=64, cells=None, seed=1),
        "cell2021": _package(
            root / "cell2021", size=32, cells={**crops, "segmentation": {"segmenter": "classical"}},
            scheme=get_scheme("hpa2021"), seed=2,
        ),
    }  # fmt: skip


def _planes(folder: Path, field_id: str) -> dict[str, np.ndarray]:
    return {c: read_channel_raw(folder / f"{field_id}_{c}.png") for c in CHANNELS}


def _errors() -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def _cli_cells(model: Path, folder: Path, field_id: str, out: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``protloc predict MODEL FOLDER --cells --ids FIELD``: its table and the field's label image."""
    from protloc.cli import main

    assert main(["predict", str(model), str(folder), "--cells", "--ids", field_id, "--out", str(out)]) == 0
    return read_table(out / "cells.csv"), read_labels(out / "masks" / f"{field_id}_cells.png")


def _run(widget: Any, qtbot: Any) -> None:
    """Press the widget's button and wait (the viewer's event loop running) until its worker is done."""
    widget.run_button.clicked.emit()  # runs the widget's run(): the button stays disabled while its worker runs
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=WAIT_MS)


def _kind(viewer: Any, kind: str) -> list[Any]:
    from protloc.napari.layers import protloc_metadata

    return [layer for layer in viewer.layers if protloc_metadata(layer.metadata).get("kind") == kind]


def _check_against_cli(cells: Any, table: dict[str, np.ndarray], masks: np.ndarray, names: tuple[str, ...]) -> None:
    """The labels layer holds the command's cells, and its features the command's table within 1e-4."""
    from protloc.cells.draw import class_colours

    np.testing.assert_array_equal(np.asarray(cells.data), masks)
    features = cells.features
    assert len(table["cell"]) > 0
    np.testing.assert_array_equal(features["index"].to_numpy(), table["cell"])
    for column in ("cell", "y0", "x0", "y1", "x1", "area", "border"):
        np.testing.assert_array_equal(features[column].to_numpy(), table[column], err_msg=column)
    probabilities = np.stack([table[f"p_{name}"] for name in names], axis=1)
    shown = np.stack([features[f"p_{name}"].to_numpy(dtype=np.float64) for name in names], axis=1)
    np.testing.assert_allclose(shown, probabilities, atol=1e-4, rtol=0)
    assert list(features["labels"]) == [str(v) for v in table["labels"]]
    top = probabilities.argmax(axis=1)
    assert list(features["top class"]) == [names[k] for k in top]
    palette = class_colours(len(names)) / 255.0
    for cell, k in zip(table["cell"], top, strict=True):  # each cell in the colour of its top class
        np.testing.assert_allclose(cells.colormap.map(int(cell))[:3], palette[k], atol=1e-6)
    assert cells.colormap.map(0)[3] == 0  # background transparent


# ------------------------------------------------------------------------------------------ the plugin


def test_the_manifest_declares_reader_writers_and_widget_and_pyproject_installs_it() -> None:
    _napari_ready(display=False)
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name imports
    contributions = manifest.contributions
    assert contributions.readers is not None and contributions.writers is not None
    assert contributions.widgets is not None
    (reader,) = contributions.readers
    expected = {f"*_{c}{e}" for c in CHANNELS for e in IMAGE_EXTENSIONS} | {f"*{s}" for s in MICROSCOPE_SUFFIXES}
    assert set(reader.filename_patterns) == expected and reader.accepts_directories
    assert {tuple(w.filename_extensions) for w in contributions.writers} == {(".csv",), (".png",)}
    assert all(w.layer_types == ["labels"] for w in contributions.writers)
    assert [w.display_name for w in contributions.widgets] == ["Cells and classes"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["napari.manifest"] == {"protloc": "protloc.napari:napari.yaml"}
    assert "napari/napari.yaml" in project["tool"]["setuptools"]["package-data"]["protloc"]
    extras = project["project"]["optional-dependencies"]
    assert any(r.startswith("napari[") for r in extras["napari"]) and "napari" in extras["all"][0]
    assert {"pytest-qt", "pytest-xvfb"} <= {r.split(">")[0] for r in extras["dev"]}


def test_the_reader_opens_fields_as_channel_layers_at_their_pixel_type(
    viewer: Any, synth_field: tuple[str, Path], tmp_path: Path
) -> None:
    from protloc.napari.reader import field_layers
    from protloc.plots import CHANNEL_COLOURS

    field_id, folder = synth_field
    layers = viewer.open(str(folder / f"{field_id}_green.png"), plugin="protloc")
    assert [layer.name for layer in layers] == [f"{c} ({CHANNEL_ROLES[c]}) {field_id}" for c in CHANNELS]
    for layer, channel in zip(layers, CHANNELS, strict=True):
        np.testing.assert_array_equal(layer.data, read_channel_raw(folder / f"{field_id}_{channel}.png"))
        np.testing.assert_allclose(layer.colormap.colors[-1][:3], CHANNEL_COLOURS[channel])
        assert layer.blending == "additive"
        assert layer.metadata["protloc"] == {
            "kind": "channel", "field": field_id, "channel": channel,
            "source": str(folder / f"{field_id}_{channel}.png"),
        }  # fmt: skip
    # four files of one field handed over together open it once
    assert len(field_layers([str(folder / f"{field_id}_{c}.png") for c in CHANNELS])) == 4
    # an OME-TIFF: channels by their names' roles, 16-bit kept; a folder of one field opens it
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 65535, size=(4, 40, 48)).astype(np.uint16)
    scope = tmp_path / "scope"
    scope.mkdir()
    write_ome_tiff(scope / "well1.ome.tif", planes, ["Hoechst", "Alexa 488", "Tubulin", "Calreticulin"])
    opened = viewer.open(str(scope), plugin="protloc")
    assert [layer.metadata["protloc"]["channel"] for layer in opened] == list(CHANNELS)
    for layer, index in zip(opened, (2, 1, 0, 3), strict=True):  # red = Tubulin, green = Alexa, blue = Hoechst
        assert layer.data.dtype == np.uint16
        np.testing.assert_array_equal(layer.data, planes[index])


def test_files_protloc_refuses_are_one_line_notifications(
    viewer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    planes = np.zeros((4, 40, 48), np.uint16)
    path = write_ome_tiff(tmp_path / "big.ome.tif", planes, ["DAPI", "GFP", "Tubulin", "ER"])
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", "1000")
    before = len(_errors())
    assert viewer.open(str(path), plugin="protloc") == []
    (message,) = _errors()[before:]
    assert "big.ome.tif: image of 48x40 px" in message and "decoding budget" in message and "\n" not in message
    broken = tmp_path / "x_red.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert viewer.open(str(broken), plugin="protloc") == []
    assert "x_red.png: truncated or corrupt PNG" in _errors()[-1]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_analysis_gives_field_labels_from_the_field_model_or_the_cells(
    synth_field: tuple[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    from protloc.deployment.onnx import export_onnx
    from protloc.metrics import decide

    field_id, folder = synth_field
    planes = _planes(folder, field_id)
    baseline = analyse_field(AnalysisSettings(model=models["field"]), planes, field_id=field_id)
    probabilities = baseline.prediction.probabilities
    assert len(probabilities) > 1 and np.allclose(probabilities, baseline.field_probabilities)
    assert baseline.field_labels_from == FIELD_LABELS_FROM_FIELD_MODEL
    expected = decide(baseline.field_probabilities[None], [0.5] * HPA2018.num_classes, min_one=True)[0]
    assert baseline.field_labels == [HPA2018.names[k] for k in np.flatnonzero(expected)]
    cells = analyse_field(AnalysisSettings(model=models["cell"]), planes, field_id=field_id)
    assert cells.field_labels_from == FIELD_LABELS_FROM_CELLS
    union = np.flatnonzero(cells.prediction.decisions.max(axis=0))
    assert cells.field_labels == [HPA2018.names[k] for k in union]
    mixed = analyse_field(
        AnalysisSettings(model=models["cell"], field_model=models["field"], mix=0.25), planes, field_id=field_id
    )
    np.testing.assert_allclose(
        mixed.prediction.probabilities,
        0.25 * cells.prediction.probabilities + 0.75 * baseline.prediction.probabilities,
        atol=1e-6,
    )
    assert mixed.field_labels == baseline.field_labels and mixed.method == METHOD_FUSION
    # the loaded models are reused while the settings stay, reloaded when they change
    again = analyse_field(AnalysisSettings(model=models["cell"]), planes, field_id=field_id, models=cells.models)
    assert again.models is cells.models
    # an exported cell model scores the same cells; it has no gradients for an activation map
    exported = export_onnx(models["cell"], tmp_path / "cell.onnx").path
    onnx = analyse_field(AnalysisSettings(model=exported), planes, field_id=field_id)
    np.testing.assert_allclose(onnx.prediction.probabilities, cells.prediction.probabilities, atol=1e-4)
    with pytest.raises(ModelError, match="explanations need the model package folder"):
        analyse_field(AnalysisSettings(model=exported, explain="Nucleoplasm"), planes, field_id=field_id)
    with pytest.raises(ConfigError, match="no model chosen"):
        analyse_field(AnalysisSettings(model=None), planes)
    with pytest.raises(ConfigError, match="needs the yellow channel"):
        analyse_field(AnalysisSettings(model=models["cell"]), {c: planes[c] for c in ("red", "green", "blue")})


@pytest.mark.slow
def test_the_widget_shows_what_predict_cells_writes_and_the_writer_saves_protlocs_files(
    viewer: Any, qtbot: Any, synth_field: tuple[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    from protloc.cells.outputs import read_cell_predictions
    from protloc.napari.widget import NO_MAP, CellsWidget

    field_id, folder = synth_field
    layers = viewer.open(str(folder / f"{field_id}_red.png"), plugin="protloc")
    widget = CellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert [widget.channels[c].value for c in CHANNELS] == layers  # the field just opened is the one to run
    widget.model.value = models["cell"]
    assert list(widget.explain.choices) == [NO_MAP, *HPA2018.names]
    widget.explain.value = "Golgi apparatus"
    moves: list[tuple[int, int]] = []
    widget._signals.moved.connect(lambda done, total: moves.append((done, total)))
    _run(widget, qtbot)
    assert moves == [(1, 4), (2, 4), (3, 4), (4, 4)]
    (cells,) = _kind(viewer, "cells")
    table, masks = _cli_cells(models["cell"], folder, field_id, tmp_path / "cli")
    _check_against_cli(cells, table, masks, HPA2018.names)
    meta = cells.metadata["protloc"]
    union = sorted({int(k) for text in table["labels"] for k in str(text).split("|") if k})
    assert meta["field_labels"] == [HPA2018.names[k] for k in union]
    assert f"{len(table['cell'])} cells (cell model); field: " in widget.status.value
    # hovering a cell shows its properties
    row = int(np.argmax(table["area"]))
    centre = (float(table["centroid_y"][row]), float(table["centroid_x"][row]))
    assert f"top class: {cells.features['top class'][row]}" in str(cells.get_status(centre)["coordinates"])
    # the activation map: over the cells only, in 0-1, brightest where a cell is likely Golgi apparatus
    (activation,) = _kind(viewer, "activation")
    heat = np.asarray(activation.data)
    assert heat.shape == masks.shape and heat[masks == 0].max() == 0 and 0 < heat.max() <= 1
    golgi = table["p_Golgi apparatus"]
    for cell, p in zip(table["cell"], golgi, strict=True):
        assert heat[masks == cell].max() <= p + 1e-6
    # running again replaces the field's results; no map chosen, none drawn
    widget.explain.value = NO_MAP
    _run(widget, qtbot)
    assert len(_kind(viewer, "cells")) == 1 and not _kind(viewer, "activation")
    (cells,) = _kind(viewer, "cells")
    # the writers: protloc's table (+ masks beside it, as predict --cells lays them out) and a 16-bit label PNG
    out = tmp_path / "saved"
    out.mkdir()
    viewer.layers.selection = {cells}
    paths = viewer.layers.save(str(out / "cells.csv"), selected=True, plugin="protloc")
    assert sorted(paths) == sorted([str(out / "cells.csv"), str(out / "masks" / f"{field_id}_cells.png")])
    saved = read_table(out / "cells.csv")
    assert list(saved) == list(table)
    for column in table:
        if column.startswith("p_"):
            np.testing.assert_allclose(saved[column], table[column], atol=1e-6)
        else:
            np.testing.assert_array_equal(saved[column], table[column])
    (predictions,) = read_cell_predictions(out)
    np.testing.assert_array_equal(predictions.labels, masks)
    png = viewer.layers.save(str(tmp_path / "masks.png"), selected=True, plugin="protloc")
    assert png == [str(tmp_path / "masks.png")] and np.array_equal(read_labels(tmp_path / "masks.png"), masks)
    # masks painted after scoring no longer match their scores: refused, in one line
    cells.data = np.where(masks == table["cell"][0], 0, masks)
    assert viewer.layers.save(str(out / "again.csv"), selected=True, plugin="protloc") == []
    assert "cells were painted or erased after scoring" in _errors()[-1] and not (out / "again.csv").exists()


@pytest.mark.slow
def test_user_errors_are_one_line_notifications(
    viewer: Any,
    qtbot: Any,
    synth_field: tuple[str, Path],
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from protloc.deployment.onnx import export_onnx
    from protloc.napari.widget import CellsWidget

    field_id, folder = synth_field
    viewer.open(str(folder / f"{field_id}_blue.png"), plugin="protloc")
    widget = CellsWidget(viewer)
    viewer.window.add_dock_widget(widget)

    def refused(setup: Callable[[], None], expected: str) -> None:
        setup()
        before = len(_errors())
        _run(widget, qtbot)
        (message,) = _errors()[before:]
        assert expected in message and "\n" not in message and widget.status.value == message
        assert not _kind(viewer, "cells")

    refused(lambda: None, "no model chosen")
    widget.model.value = models["cell"]
    refused(lambda: setattr(widget.channels["yellow"], "value", None), "needs the yellow channel")
    widget.channels["yellow"].reset_choices()
    widget._layers_changed()
    assert widget.channels["yellow"].value is not None
    refused(lambda: monkeypatch.setenv("PROTLOC_MAX_PIXELS", "4000"), "exceeds the decoding budget")
    monkeypatch.delenv("PROTLOC_MAX_PIXELS")
    exported = export_onnx(models["cell"], tmp_path / "cell.onnx").path

    def onnx_with_map() -> None:
        widget.model.value = exported
        widget.explain.value = "Nucleoplasm"

    refused(onnx_with_map, "explanations need the model package folder")
    widget.model.value = tmp_path / "nowhere"
    refused(lambda: None, "model package not found")
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_widget_on_a_genuine_2021_field_matches_predict_cells(
    request: pytest.FixtureRequest, qtbot: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    from protloc.napari.widget import CellsWidget
    from tests.helpers import realdata

    images = realdata("hpa2021_trainandgain/images")
    viewer = _make_viewer(request, show=True)  # shown: the screenshot has the window's real layout
    scheme = get_scheme("hpa2021")
    layers = viewer.open(str(images / f"{REAL_FIELD}_green.png"), plugin="protloc")
    assert len(layers) == 4 and layers[0].data.shape == (2048, 2048)
    widget = CellsWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="protloc: cells and classes", area="right")
    widget.model.value = models["cell2021"]
    widget.explain.value = "Nucleoplasm"
    _run(widget, qtbot)
    (cells,) = _kind(viewer, "cells")
    table, masks = _cli_cells(models["cell2021"], images, REAL_FIELD, tmp_path / "cli")
    assert len(table["cell"]) >= 5  # a genuine field has cells, and the classical segmenter finds them
    _check_against_cli(cells, table, masks, scheme.names)
    assert cells.metadata["protloc"]["classes"] == list(scheme.names)
    # the screenshot in docs/napari.md: the field, its cells by top class, the widget with its result
    from qtpy.QtCore import Qt

    viewer.layers.selection = {cells}
    for layer in _kind(viewer, "activation"):  # shown in the layer list; the picture shows the cells' classes
        layer.visible = False
    window = viewer.window._qt_window
    window.resize(1400, 860)
    dock.setMaximumWidth(460)  # room for the canvas: a dock keeps the width it had when it was added
    qtbot.wait(100)
    window.resizeDocks([dock], [460], Qt.Orientation.Horizontal)
    qtbot.wait(100)
    viewer.reset_view()
    shot = _window_picture(viewer)
    keep = os.environ.get("PROTLOC_SCREENSHOTS")
    target = Path(keep) if keep else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shot).save(target / "napari_widget.png", optimize=True)
    canvas = _canvas_picture(viewer)
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000 and canvas.std() > 10  # the field is drawn


def _canvas_picture(viewer: Any) -> np.ndarray:
    """The canvas as vispy draws it, ``(H, W, 3)``."""
    return np.asarray(viewer.window._qt_viewer.canvas._scene_canvas.render())[..., :3]


def _window_picture(viewer: Any) -> np.ndarray:
    """The window as a user sees it, ``(H, W, 3)``: Qt's picture of the widgets, with the canvas drawn by vispy in
    its place (under ``QT_QPA_PLATFORM=offscreen`` Qt's picture of an OpenGL widget stays black)."""
    from napari._qt.utils import QImg2array
    from qtpy.QtCore import QPoint

    window = viewer.window._qt_window
    picture = np.array(QImg2array(window.grab().toImage()))[..., :3]
    canvas = _canvas_picture(viewer)
    native = viewer.window._qt_viewer.canvas._scene_canvas.native
    corner = native.mapTo(window, QPoint(0, 0))
    top, left = corner.y(), corner.x()
    height = min(canvas.shape[0], picture.shape[0] - top)
    width = min(canvas.shape[1], picture.shape[1] - left)
    picture[top : top + height, left : left + width] = canvas[:height, :width]
    return picture
