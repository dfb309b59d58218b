"""The web page in a real headless Chromium: upload a sample, see the API's labels, the chart and the overlay.

Needs Debian's ``chromium`` at /usr/bin/chromium and Playwright's Python client (no downloaded browser). The
tests skip when the browser is missing, unless ``PROTLOC_REQUIRE_BROWSER`` is set (CI sets it), in which case a
missing browser fails loudly. Set ``PROTLOC_SCREENSHOTS=DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protloc.data.io import CHANNELS, read_sample

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]


def _require_browser() -> None:
    """Skip (or, with PROTLOC_REQUIRE_BROWSER set, fail) when the browser or Playwright is missing."""
    required = bool(os.environ.get("PROTLOC_REQUIRE_BROWSER"))
    problems = []
    if not CHROMIUM.exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright Python package is missing (pip install playwright)")
    if not problems:
        return
    message = "browser tests need Chromium and Playwright: " + "; ".join(problems)
    if required:
        pytest.fail(message + " (PROTLOC_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A protloc app served by uvicorn in a background thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[LiveServer]:
    from protloc.serve import create_app

    app = create_app(trained_run / "model", backend="torch")  # torch: the page shows explanations too
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-info .pill")
    yield page
    context.close()
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    keep = os.environ.get("PROTLOC_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _sample(synth_data: Path, index: int = 0) -> dict[str, Path]:
    ids = sorted({p.name.rsplit("_", 1)[0] for p in (synth_data / "test").glob("*_red.png")})
    return {c: synth_data / "test" / f"{ids[index]}_{c}.png" for c in CHANNELS}


def _api_labels(server: LiveServer, files: dict[str, Any]) -> list[int]:
    import httpx

    response = httpx.post(f"{server.url}/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    return [label["id"] for label in response.json()["labels"]]


def _shown_labels(page: Any) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#labels li", "items => items.map(i => i.dataset.classId)")]


def test_uploading_four_channels_shows_the_apis_labels(
    page: Any, server: LiveServer, synth_data: Path, tmp_path: Path
) -> None:
    paths = _sample(synth_data)
    page.set_input_files("#file-input", [str(p) for p in paths.values()])
    page.wait_for_selector("#result[data-state=done]", timeout=30_000)
    expected = _api_labels(server, {c: (p.name, p.read_bytes(), "image/png") for c, p in paths.items()})
    assert _shown_labels(page) == expected
    assert page.locator(".bar-row").count() == 28 and page.locator(".bar-tick").count() == 28
    assert page.locator(".bar-row.predicted").count() == len(expected)
    assert page.locator("#channel-images img").count() == 4
    assert page.eval_on_selector("#composite", "img => img.complete && img.naturalWidth") == 64
    # The activation map of the most probable label follows on its own.
    page.wait_for_selector("#overlay-panel:not([hidden])", timeout=30_000)
    assert page.get_attribute("#overlay", "data-class-id") == str(expected[0])
    page.select_option("#explain-class", "7")
    page.click("#explain-button")
    page.wait_for_selector('#overlay[data-class-id="7"]', timeout=30_000)
    assert "Golgi apparatus" in page.inner_text("#overlay-caption")
    _screenshot(page, tmp_path, "service_result")


def test_a_stacked_tiff_gives_the_same_labels(page: Any, server: LiveServer, synth_data: Path, tmp_path: Path) -> None:
    import tifffile

    paths = _sample(synth_data, 1)
    stack = tmp_path / "field.tif"
    tifffile.imwrite(stack, read_sample(paths), photometric="minisblack")
    page.set_input_files("#file-input", [str(stack)])
    page.wait_for_selector("#result[data-state=done]", timeout=30_000)
    expected = _api_labels(server, {c: (p.name, p.read_bytes(), "image/png") for c, p in paths.items()})
    assert _shown_labels(page) == expected
    assert "stacked file" in page.inner_text("#result-meta")


def test_a_corrupt_channel_shows_the_services_message(
    page: Any, server: LiveServer, synth_data: Path, tmp_path: Path
) -> None:
    paths = _sample(synth_data, 2)
    broken = tmp_path / "broken_red.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    files = [str(broken), *(str(p) for c, p in paths.items() if c != "red")]
    page.set_input_files("#file-input", files)
    page.wait_for_selector(".status.error", timeout=30_000)
    message = page.inner_text("#status")
    assert "red (broken_red.png)" in message and "PNG" in message
    assert page.get_attribute("#result", "data-state") == "error"
    _screenshot(page, tmp_path, "service_error")


def test_page_asks_for_the_token_when_the_service_has_one(
    browser: Any, server: LiveServer, synth_data: Path, tmp_path: Path
) -> None:
    from protloc.serve import create_app

    engine = server.server.config.app.state.engine
    secured = create_app(engine.model_path, engine=engine, token="letmein")
    with LiveServer(secured) as live:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.goto(live.url + "/")
        page.wait_for_selector("#token-bar:not([hidden])")
        page.fill("#token-input", "letmein")
        page.click("#token-form button")
        page.wait_for_selector("#model-info .pill")
        assert page.is_hidden("#token-bar")
        page.set_input_files("#file-input", [str(p) for p in _sample(synth_data).values()])
        page.wait_for_selector("#result[data-state=done]", timeout=30_000)
        assert _shown_labels(page)
        context.close()


# ---------------------------------------------------------------------------------------------- cells


@pytest.fixture(scope="module")
def cell_fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic 128 px fields with several cells each."""
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("browser-cells") / "data"
    make_dataset(root, n_train=2, n_test=2, size=128, seed=4, workers=1, cells=True)
    return root


@pytest.fixture(scope="module")
def cells_server(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The trained field model with an (untrained) cell model: `protloc serve MODEL --cells CELL_MODEL`."""
    from protloc.serve import create_app
    from tests.test_cells_predict import SEGMENTATION, _package

    settings = {"crop_size": 32, "padding": 0.05, "segmentation": SEGMENTATION}
    cell = _package(tmp_path_factory.mktemp("browser-cell-model") / "cell", size=32, cells=settings)
    with LiveServer(create_app(trained_run / "model", backend="torch", cell_model=cell)) as live:
        yield live


def test_cells_are_outlined_and_a_clicked_cell_shows_its_probabilities(
    browser: Any, cells_server: LiveServer, cell_fields: Path, tmp_path: Path
) -> None:
    import httpx

    from protloc.cells.encode import decode_mask

    paths = _sample(cell_fields, 1)
    files = {c: (p.name, p.read_bytes(), "image/png") for c, p in paths.items()}
    api = httpx.post(f"{cells_server.url}/predict?cells=true", files=files, timeout=60)
    assert api.status_code == 200, api.text
    answer = api.json()
    cells, info = answer["cells"], answer["cell_info"]
    assert len(cells) >= 4
    classes = [c["name"] for c in httpx.get(f"{cells_server.url}/model", timeout=30).json()["classes"]]

    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(cells_server.url + "/")
    page.wait_for_selector("#model-info .pill")
    assert page.is_visible("#cells-controls")
    page.check("#cells-toggle")
    page.set_input_files("#file-input", [str(p) for p in paths.values()])
    page.wait_for_selector("#result[data-state=done]", timeout=60_000)
    page.wait_for_selector("#cell-layer polygon")

    shown = page.eval_on_selector_all(
        "#cell-layer polygon", "items => items.map(p => [Number(p.dataset.cell), p.getAttribute('stroke')])"
    )
    assert [cell for cell, _ in shown] == [c["cell"] for c in cells]
    assert [colour for _, colour in shown] == [info["palette"][c["top"]] for c in cells]
    assert str(len(cells)) in page.inner_text("#cells-summary") and info["method"] in page.inner_text("#cells-summary")

    # A mouse click inside a cell (its centroid, when that pixel is the cell's) opens its panel.
    height, width = answer["image"]["height"], answer["image"]["width"]
    chosen = next(
        c
        for c in cells
        if decode_mask(c["mask"]["counts"], height, width)[round(c["centroid"][0]), round(c["centroid"][1])]
    )
    point = page.eval_on_selector(
        "#cell-layer",
        """(layer, [x, y]) => { const p = layer.createSVGPoint(); p.x = x; p.y = y;
             const s = p.matrixTransform(layer.getScreenCTM()); return [s.x, s.y]; }""",
        [chosen["centroid"][1] + 0.5, chosen["centroid"][0] + 0.5],
    )
    page.mouse.click(point[0], point[1])
    page.wait_for_selector("#cell-panel:not([hidden])")
    assert page.inner_text("#cell-title") == f"Cell {chosen['cell']}"
    assert page.get_attribute(f'#cell-layer polygon[data-cell="{chosen["cell"]}"]', "aria-pressed") == "true"
    rows = page.eval_on_selector_all(
        "#cell-chart li",
        "items => items.map(i => [Number(i.dataset.classId), Number(i.dataset.probability), i.innerText])",
    )
    assert len(rows) == len(classes)
    assert sorted(r[0] for r in rows) == list(range(len(classes)))
    for class_id, probability, text in rows:
        assert probability == pytest.approx(chosen["probabilities"][class_id], abs=1e-6)
        assert classes[class_id] in text  # names from GET /model
    assert rows[0][0] == chosen["top"]
    predicted = [int(x) for x in page.eval_on_selector_all("#cell-labels li", "i => i.map(x => x.dataset.classId)")]
    assert predicted == [label["id"] for label in chosen["labels"]]

    # The keyboard reaches every cell: focus another outline and press Enter.
    other = next(c for c in cells if c["cell"] != chosen["cell"])
    page.focus(f'#cell-layer polygon[data-cell="{other["cell"]}"]')
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.getElementById('cell-title').textContent === 'Cell {other['cell']}'")
    _screenshot(page, tmp_path, "service_cells")

    # Switching cells off removes the outlines.
    page.uncheck("#cells-toggle")
    page.wait_for_selector("#cell-layer", state="hidden", timeout=60_000)
    assert page.is_hidden("#cells-box")
    context.close()
    assert not errors, errors


# ---------------------------------------------------------------------------------------------- every scheme


@pytest.mark.parametrize("scheme_name", ["hpa2021", "subcell31", "user"])
def test_the_page_shows_the_classes_of_the_served_models_scheme(
    browser: Any, synth_data: Path, tmp_path: Path, scheme_name: str
) -> None:
    """A 19-class, 31-class or user-scheme model: the chart, the explain menu and the labels follow its scheme."""
    import httpx

    from protloc.schemes import get_scheme
    from protloc.serve import create_app
    from tests.helpers import tiny_package

    if scheme_name == "user":
        (tmp_path / "mine.txt").write_text("Nucleus\nCytosol & ER\nGolgi / TGN\nNone\n")
        scheme = get_scheme(tmp_path / "mine.txt")
    else:
        scheme = get_scheme(scheme_name)
    package = tiny_package(tmp_path / "model", size=64, scheme=scheme)
    with LiveServer(create_app(package, backend="torch")) as live:
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(live.url + "/")
        page.wait_for_selector("#model-info .pill")
        assert page.inner_text("#scheme-pill") == f"{scheme.name} · {scheme.num_classes} classes"
        options = page.eval_on_selector_all("#explain-class option", "o => o.map(x => x.textContent)")
        assert options == [f"{i} · {name}" for i, name in enumerate(scheme.names)]
        paths = _sample(synth_data)
        page.set_input_files("#file-input", [str(p) for p in paths.values()])
        page.wait_for_selector("#result[data-state=done]", timeout=30_000)
        assert page.locator(".bar-row").count() == scheme.num_classes
        files = {c: (p.name, p.read_bytes(), "image/png") for c, p in paths.items()}
        expected = httpx.post(f"{live.url}/predict", files=files, timeout=30).json()["labels"]
        assert _shown_labels(page) == [label["id"] for label in expected]
        assert [page.inner_text(f'#labels li[data-class-id="{label["id"]}"] .n') for label in expected] == [
            label["name"] for label in expected
        ]
        context.close()
        assert not errors, errors
