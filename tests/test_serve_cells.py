"""The service's cells (issue 13.6): /predict?cells=true segments the field and answers every cell with its
probabilities, labels, the 2021 RLE mask and an outline, made by a cell model, the field baseline or the mix."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("skimage")
pytest.importorskip("pycocotools")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from protloc.cells.encode import decode_mask
from protloc.cells.masks import border_cells
from protloc.cells.predict import METHOD_BASELINE, METHOD_CELL, METHOD_FUSION, open_cell_predictor, predict_field_cells
from protloc.data.io import CHANNELS, read_sample
from protloc.errors import ModelError
from protloc.serve import create_app
from protloc.serve.cells import outline_polygon
from tests.test_cells_predict import SEGMENTATION, _package

Files = dict[str, tuple[str, bytes, str]]


@pytest.fixture(scope="module")
def cell_fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic 128 px fields with 5-15 cells each (64 px fields hold too few for the segmenter)."""
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("serve-cells") / "data"
    make_dataset(root, n_train=2, n_test=3, size=128, seed=4, workers=1, cells=True)
    return root


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained cell model (32 px crops) and field model (64 px): the plumbing, not the quality."""
    root = tmp_path_factory.mktemp("serve-cell-packages")
    cell = _package(root / "cell", size=32, cells={"crop_size": 32, "padding": 0.05, "segmentation": SEGMENTATION})
    return cell, _package(root / "field", size=64, cells=None, seed=1)


@pytest.fixture(scope="module")
def app(packages: tuple[Path, Path]) -> FastAPI:
    cell, field = packages
    return create_app(
        field, backend="torch", cell_model=cell, allowed_hosts=("localhost", "testserver")
    )  # schemathesis: testserver


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


def field_paths(root: Path, index: int = 0) -> dict[str, Path]:
    ids = sorted({p.name.rsplit("_", 1)[0] for p in (root / "test").glob("*_red.png")})
    return {c: root / "test" / f"{ids[index]}_{c}.png" for c in CHANNELS}


def field_files(root: Path, index: int = 0) -> Files:
    return {c: (p.name, p.read_bytes(), "image/png") for c, p in field_paths(root, index).items()}


def polygon_area(points: list[list[float]]) -> float:
    xy = np.asarray(points)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def test_cells_match_the_segmentation_and_their_masks_decode(
    client: TestClient, packages: tuple[Path, Path], cell_fields: Path
) -> None:
    response = client.post("/predict?cells=true", files=field_files(cell_fields, 1))
    assert response.status_code == 200, response.text
    body = response.json()
    info, cells = body["cell_info"], body["cells"]
    assert info["method"] == METHOD_CELL and info["mix"] is None and info["mask_encoding"] == "hpa2021-rle"
    assert len(info["palette"]) == len(body["probabilities"])

    # The same cells, with the same probabilities, as the library gives for the same field and cell model.
    image = read_sample(field_paths(cell_fields, 1))
    predictor = open_cell_predictor(packages[0], backend="torch", device="cpu")
    expected = predict_field_cells(predictor, image, channels=CHANNELS, embeddings=False)
    assert info["count"] == len(cells) == len(expected.cells) >= 4
    assert [c["cell"] for c in cells] == expected.cells.tolist()
    np.testing.assert_allclose([c["probabilities"] for c in cells], expected.probabilities, atol=2e-6)

    height, width = expected.labels.shape
    on_border = set(border_cells(expected.labels).tolist())
    assert on_border and on_border != {c["cell"] for c in cells}, "the field should have inner and border cells"
    for cell in cells:
        truth = expected.labels == cell["cell"]
        assert cell["mask"]["size"] == [height, width]
        mask = decode_mask(cell["mask"]["counts"], height, width)
        assert np.array_equal(mask, truth)
        assert cell["area"] == int(mask.sum())
        rows, cols = np.nonzero(mask)
        assert cell["box"] == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
        assert cell["centroid"] == pytest.approx([rows.mean(), cols.mean()], abs=1e-3)
        assert cell["border"] == (cell["cell"] in on_border)
        assert cell["top"] == int(np.argmax(cell["probabilities"]))
        shown = [label["id"] for label in cell["labels"]]  # the test packages' thresholds are all 0.5
        assert sorted(shown) == [k for k, p in enumerate(cell["probabilities"]) if p >= 0.5]
        assert all(label["threshold"] == 0.5 for label in cell["labels"])
        # The outline is the cell's boundary: inside its box, enclosing about its area.
        xs, ys = np.asarray(cell["outline"]).T
        y0, x0, y1, x1 = cell["box"]
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        assert polygon_area(cell["outline"]) == pytest.approx(cell["area"], rel=0.25)


def test_baseline_and_mix_are_named_and_built_from_the_field_prediction(client: TestClient, cell_fields: Path) -> None:
    files = field_files(cell_fields, 1)
    field = client.post("/predict", files=files).json()
    assert field["cells"] is None and field["cell_info"] is None  # only when asked

    baseline = client.post("/predict?cells=true&cell_method=baseline", files=files).json()
    assert baseline["cell_info"]["method"] == METHOD_BASELINE
    assert baseline["cells"], "the field should hold cells"
    for cell in baseline["cells"]:
        assert cell["probabilities"] == pytest.approx(baseline["probabilities"], abs=2e-6)

    alone = client.post("/predict?cells=true&cell_method=cell", files=files).json()
    mix = client.post("/predict?cells=true&cell_method=mix", files=files).json()
    assert mix["cell_info"]["method"] == METHOD_FUSION and mix["cell_info"]["mix"] == 0.5
    by_cell = np.asarray([c["probabilities"] for c in alone["cells"]])
    expected = 0.5 * by_cell + 0.5 * np.asarray(field["probabilities"])
    np.testing.assert_allclose([c["probabilities"] for c in mix["cells"]], expected, atol=5e-6)


def test_model_info_says_what_cells_can_do(client: TestClient) -> None:
    cells = client.get("/model").json()["cells"]
    assert cells["cell_model"] == "test_resnet" and cells["crop_size"] == 32
    assert cells["methods"] == ["auto", "cell", "baseline", "mix", "fusion"] and cells["default_method"] == METHOD_CELL
    assert cells["default_fusion"] == "cell model alone"  # the test package has no fitted fusion


def test_batch_returns_cells_for_every_sample(client: TestClient, cell_fields: Path) -> None:
    files = []
    for index in (0, 2):
        for channel, path in field_paths(cell_fields, index).items():
            files.append(("files", (f"S{index}_{channel}.png", path.read_bytes(), "image/png")))
    response = client.post("/predict/batch?cells=true", files=files)
    assert response.status_code == 200, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    single = client.post("/predict?cells=true", files=field_files(cell_fields, 2)).json()
    assert set(results) == {"S0", "S2"}
    assert [c["mask"]["counts"] for c in results["S2"]["cells"]] == [c["mask"]["counts"] for c in single["cells"]]
    assert results["S0"]["cell_info"]["count"] == len(results["S0"]["cells"]) > 0


def test_a_service_without_a_cell_model_gives_the_baseline_and_says_why_not_more(
    packages: tuple[Path, Path], cell_fields: Path
) -> None:
    with TestClient(create_app(packages[1], backend="torch"), base_url="http://localhost") as client:
        auto = client.post("/predict?cells=true", files=field_files(cell_fields))
        assert auto.status_code == 200 and auto.json()["cell_info"]["method"] == METHOD_BASELINE
        refused = client.post("/predict?cells=true&cell_method=cell", files=field_files(cell_fields))
        assert refused.status_code == 422 and "--cells" in refused.json()["detail"]
        unknown = client.post("/predict?cells=true&cell_method=magic", files=field_files(cell_fields))
        assert unknown.status_code == 422
        assert client.get("/model").json()["cells"]["methods"] == ["auto", "baseline"]


def test_fields_over_the_pixel_limit_are_refused_before_segmenting(
    packages: tuple[Path, Path], cell_fields: Path
) -> None:
    app = create_app(packages[1], backend="torch", max_cell_pixels=100 * 100)
    with TestClient(app, base_url="http://localhost") as client:
        response = client.post("/predict?cells=true", files=field_files(cell_fields))
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "128x128" in detail and "--max-cell-mpx" in detail
        assert client.post("/predict", files=field_files(cell_fields)).status_code == 200  # fields still work


def test_wrong_kinds_of_package_are_refused_at_start(packages: tuple[Path, Path], tmp_path: Path) -> None:
    cell, field = packages
    with pytest.raises(ModelError, match="is a cell model"):
        create_app(cell, backend="torch")
    with pytest.raises(ModelError, match="not a cell model"):
        create_app(field, backend="torch", cell_model=field)
    from protloc.schemes import get_scheme

    cell_2021 = _package(
        tmp_path / "cell21",
        size=32,
        cells={"crop_size": 32, "padding": 0.05, "segmentation": SEGMENTATION},
        scheme=get_scheme("hpa2021"),
    )
    with pytest.raises(ModelError, match="same classes"):
        create_app(field, backend="torch", cell_model=cell_2021)


def test_segmentation_runs_at_most_cell_threads_at_a_time(app: FastAPI, cell_fields: Path) -> None:
    """However many requests are admitted, at most ``cell_threads`` (1) fields are segmented at once."""
    import httpx

    cell_service = app.state.service.cells
    segmenter = cell_service.segmenter
    active, peak, lock = [0], [0], threading.Lock()

    class Counting:
        name, channels = segmenter.name, segmenter.channels

        def settings(self) -> dict[str, Any]:
            return dict(segmenter.settings())

        def __call__(self, image: np.ndarray) -> np.ndarray:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            try:
                return np.asarray(segmenter(image))
            finally:
                with lock:
                    active[0] -= 1

    async def together() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            files = field_files(cell_fields)
            replies = await asyncio.gather(*(http.post("/predict?cells=true", files=files) for _ in range(4)))
        return [r.status_code for r in replies]

    cell_service._segmenter = Counting()
    try:
        assert asyncio.run(together()) == [200] * 4
    finally:
        cell_service._segmenter = segmenter
    assert peak[0] == 1


def test_outline_of_a_rectangle_follows_its_pixel_edges() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:25, 10:40] = True  # 20 rows x 30 columns: pixel edges x 10-40, y 5-25
    points = outline_polygon(mask[4:26, 9:41], offset=(4, 9))
    xs, ys = np.asarray(points).T
    assert xs.min() >= 10 and xs.max() <= 40 and ys.min() >= 5 and ys.max() <= 25  # on the pixel edges...
    assert xs.min() <= 10.5 and xs.max() >= 39.5 and ys.min() <= 5.5 and ys.max() >= 24.5  # ...within half a pixel
    assert abs(polygon_area(points) - 600) <= 0.5 * 100  # half a pixel along the perimeter at most
    assert len(points) <= 8  # simplified: corners, not every boundary pixel
    assert outline_polygon(np.zeros((4, 4), bool)) == []


def test_run_refuses_a_missing_cell_model_before_listening(packages: tuple[Path, Path], tmp_path: Path) -> None:
    from protloc.serve import run

    with pytest.raises(ModelError, match="model package not found"):
        run(packages[1], port=0, cells=tmp_path / "nowhere")


def test_fuzzed_cell_requests_never_give_5xx_and_match_the_schema(app: FastAPI) -> None:
    """Schemathesis on POST /predict of a service with a cell model: ?cells and ?cell_method included."""
    schemathesis = pytest.importorskip("schemathesis")
    import sys

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    parameters = {p["name"] for p in schema.raw_schema["paths"]["/predict"]["post"]["parameters"]}
    assert {"cells", "cell_method"} <= parameters
    operation = schema["/predict"]["POST"]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance, negative_data_rejection]

    @given(case=st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes)))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=checks)

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)  # see tests/test_serve.py: Hypothesis needs IEEE floats on this thread
    fuzz()
