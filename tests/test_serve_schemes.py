"""The service serves a model of any class scheme (issue 20, row 1): 2018, 2021, SubCell 31 and a user's scheme,
through /predict, /predict/batch, ?cells=true, /explain and the page, with responses checked against an OpenAPI
schema sized to the model's scheme."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import require

require("fastapi")
require("multipart")
require("skimage")
require("pycocotools")

from fastapi.testclient import TestClient

from protloc.cells.predict import METHOD_BASELINE, METHOD_CELL
from protloc.data.io import CHANNELS
from protloc.schemes import ClassScheme, get_scheme
from protloc.serve import create_app
from tests.helpers import tiny_package

SEGMENTATION = {"segmenter": "classical", "channels": ["blue", "red", "yellow"], "smooth_sigma": 0.5}
USER_CLASSES = ("Nucleus", "Cytosol & ER", "Golgi / TGN", "Speckles (nuclear)", "None")


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic 128 px fields with several cells each (the segmenter needs that many pixels)."""
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("scheme-fields") / "data"
    make_dataset(root, n_train=2, n_test=2, size=128, seed=4, workers=1, cells=True)
    return root


@pytest.fixture(scope="module", params=["hpa2018", "hpa2021", "subcell31", "user"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``(client, scheme)``: a field model of the scheme, served with a cell model of the same scheme."""
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    if request.param == "user":
        (root / "mine.txt").write_text("\n".join(USER_CLASSES) + "\n")
        scheme: ClassScheme = get_scheme(root / "mine.txt")
    else:
        scheme = get_scheme(request.param)
    field = tiny_package(root / "field", size=64, scheme=scheme, seed=1)
    cells = {"crop_size": 32, "padding": 0.05, "segmentation": SEGMENTATION}
    cell = tiny_package(root / "cell", size=32, scheme=scheme, cells=cells)
    app = create_app(field, backend="torch", cell_model=cell)
    with TestClient(app, base_url="http://localhost") as client:
        yield client, scheme


def _files(root: Path, index: int = 0, prefix: str = "") -> list[tuple[str, tuple[str, bytes, str]]]:
    ids = sorted({p.name.rsplit("_", 1)[0] for p in (root / "test").glob("*_red.png")})
    parts = []
    for channel in CHANNELS:
        path = root / "test" / f"{ids[index]}_{channel}.png"
        name = f"{prefix}_{channel}.png" if prefix else path.name
        parts.append(("files" if prefix else channel, (name, path.read_bytes(), "image/png")))
    return parts


def _check_prediction(body: dict[str, Any], scheme: ClassScheme) -> None:
    n = scheme.num_classes
    assert len(body["probabilities"]) == n
    assert body["labels"], "min-one: at least one label"
    for label in body["labels"]:
        assert 0 <= label["id"] < n and label["name"] == scheme.names[label["id"]]
    ids = sorted(label["id"] for label in body["labels"])
    assert scheme.ids_of(scheme.parse(body["target"])) == ids  # the target reads back in the scheme


def test_predict_answers_every_class_of_the_scheme(served: Any, fields: Path) -> None:
    client, scheme = served
    response = client.post("/predict", files=_files(fields))
    assert response.status_code == 200, response.text
    _check_prediction(response.json(), scheme)


def test_batch_answers_every_sample_in_the_scheme(served: Any, fields: Path) -> None:
    client, scheme = served
    response = client.post("/predict/batch", files=_files(fields, 0, "A") + _files(fields, 1, "B"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["id"] for r in results) == ["A", "B"]
    for result in results:
        _check_prediction(result, scheme)


def test_cells_carry_the_schemes_classes(served: Any, fields: Path) -> None:
    client, scheme = served
    n = scheme.num_classes
    for method, expected in (("cell", METHOD_CELL), ("baseline", METHOD_BASELINE)):
        response = client.post(f"/predict?cells=true&cell_method={method}", files=_files(fields, 1))
        assert response.status_code == 200, response.text
        body = response.json()
        info, cells = body["cell_info"], body["cells"]
        assert info["method"] == expected and len(info["palette"]) == len(info["thresholds"]) == n
        assert cells, "the field should hold cells"
        for cell in cells:
            assert len(cell["probabilities"]) == n and 0 <= cell["top"] < n
            assert all(label["name"] == scheme.names[label["id"]] for label in cell["labels"])
    batch = client.post("/predict/batch?cells=true", files=_files(fields, 0, "C"))
    assert batch.status_code == 200, batch.text
    assert all(len(c["probabilities"]) == n for c in batch.json()["results"][0]["cells"])


def test_explain_resolves_classes_in_the_scheme(served: Any, fields: Path) -> None:
    client, scheme = served
    last = scheme.num_classes - 1
    name = scheme.names[last]
    response = client.post("/explain", params={"class_id": name}, files=_files(fields))
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG")
    assert response.headers["X-Class-Id"] == str(last) and response.headers["X-Class-Name"] == name
    beyond = client.post("/explain", params={"class_id": str(last + 1)}, files=_files(fields))
    assert beyond.status_code == 422 and f"{scheme.name} class ids are {scheme.id_range}" in beyond.json()["detail"]


def test_the_page_and_the_api_schema_are_built_from_the_scheme(served: Any) -> None:
    client, scheme = served
    n = scheme.num_classes
    model = client.get("/model").json()
    assert [c["name"] for c in model["classes"]] == list(scheme.names) and len(model["thresholds"]) == n
    assert model["scheme"]["name"] == scheme.name
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["PredictionResponse"]["properties"]["probabilities"]["minItems"] == n
    assert components["PredictionResponse"]["properties"]["probabilities"]["maxItems"] == n
    assert components["Label"]["properties"]["id"]["maximum"] == n - 1
    assert f"among the {n} classes" in schema["info"]["description"]
    # The page: its HTML loads app.js, which takes every class (chart, explain menu, scheme pill) from GET /model
    # and holds no class name or count of its own.
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    script = client.get("/static/app.js").text
    assert "model.classes.map" in script and "model.scheme.name" in script
    everything = page.text + script
    for builtin in ("hpa2018", "hpa2021", "subcell31"):
        for class_name in get_scheme(builtin).names:
            if len(class_name) > 6:  # short words such as "Golgi" could appear in prose
                assert class_name not in everything, class_name
    assert not re.search(r"\b(19|27|28|31)\b", script)


def test_the_response_model_refuses_another_class_count(served: Any) -> None:
    """The per-scheme schema is what the service checks its answers against: the wrong count cannot pass."""
    _client, scheme = served
    from protloc.serve.schemas import scheme_models

    models = scheme_models(scheme)
    wrong = scheme.num_classes + 1
    body = {
        "labels": [],
        "target": "",
        "probabilities": [0.5] * wrong,
        "image": {"width": 8, "height": 8, "channels": list(CHANNELS), "source": "channels"},
        "seconds": 0.0,
        "timing": {"decode": 0.0, "inference": 0.0, "total": 0.0},
    }
    with pytest.raises(ValueError, match="probabilities"):
        models.prediction.model_validate(body)
    body["probabilities"] = list(np.full(scheme.num_classes, 0.5))
    assert len(models.prediction.model_validate(body).probabilities) == scheme.num_classes
