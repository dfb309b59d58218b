"""The HTTP service: endpoints, input formats, errors that are always 4xx JSON, auth, batching, fuzzing, load."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers import require

require("fastapi")
require("multipart")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from protloc.classes import HPA2018
from protloc.data.io import CHANNELS, read_sample
from protloc.errors import ConfigError
from protloc.inference.core import Preprocessor, batch_probabilities
from protloc.inference.predict import load_backend
from protloc.metrics import decide
from protloc.model.card import read_card
from protloc.serve import check_bind, create_app, is_loopback, run
from protloc.serve.engine import InferenceEngine, ServiceBusyError
from protloc.serve.settings import TOKEN_ENV, resolve_token

Files = dict[str, tuple[str, bytes, str]]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def package(trained_run: Path) -> Path:
    return trained_run / "model"


@pytest.fixture(scope="module")
def onnx_package(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained package with model.onnx (the original stays torch-only for other tests)."""
    from protloc.deployment.onnx import export_onnx

    folder = tmp_path_factory.mktemp("serve-onnx") / "model"
    shutil.copytree(trained_run / "model", folder)
    export_onnx(folder)
    return folder


@pytest.fixture(scope="module")
def torch_app(package: Path) -> FastAPI:
    return create_app(package, backend="torch")


@pytest.fixture(scope="module")
def client(torch_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(torch_app, base_url="http://localhost") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def onnx_app(onnx_package: Path) -> FastAPI:
    return create_app(
        onnx_package, backend="onnx", allowed_hosts=("localhost", "testserver")
    )  # schemathesis: testserver


@pytest.fixture(scope="module")
def onnx_client(onnx_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(onnx_app, base_url="http://localhost") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sample_ids(synth_data: Path) -> list[str]:
    return sorted({p.name.rsplit("_", 1)[0] for p in (synth_data / "test").glob("*_red.png")})


def channel_paths(synth_data: Path, sample_id: str) -> dict[str, Path]:
    return {c: synth_data / "test" / f"{sample_id}_{c}.png" for c in CHANNELS}


def channel_files(synth_data: Path, sample_id: str) -> Files:
    return {c: (p.name, p.read_bytes(), "image/png") for c, p in channel_paths(synth_data, sample_id).items()}


def png_bytes(plane: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", plane)
    assert ok
    return encoded.tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def expected_probabilities(package: Path, image: np.ndarray) -> np.ndarray:
    card, backend = load_backend(package, "torch", device="cpu")
    preprocessor = Preprocessor.from_card(card)
    return batch_probabilities(backend, preprocessor.prepare_uint8(image)[None], ("id",))[0]


def assert_error(response: Any, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    for fragment in fragments:
        assert fragment.lower() in body["detail"].lower(), body["detail"]
    return str(body["detail"])


# ---------------------------------------------------------------------------------------------- basics


def test_health_and_model_describe_the_package(client: TestClient, package: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "torch" and health["model"] == "test_resnet"
    card = read_card(package)
    info = client.get("/model").json()
    assert info["channels"] == list(CHANNELS) and info["size"] == 64 and info["backend"] == "torch"
    assert [c["name"] for c in info["classes"]] == list(HPA2018.names)
    assert info["thresholds"] == pytest.approx(card.thresholds)
    assert [c["threshold"] for c in info["classes"]] == pytest.approx(card.thresholds)
    assert info["metrics"]["validation"]["macro_f1"] == card.metrics["validation"]["macro_f1"]
    assert info["explanations"] is True
    assert "data" not in info["training"] and "config" not in info["training"]  # no local paths leak out
    assert info["adaptation"] == {}  # as trained; protloc adapt fills it (tests/test_adapt.py)


def test_predict_channel_files_matches_the_library(
    client: TestClient, synth_data: Path, sample_ids: list[str], package: Path
) -> None:
    sample_id = sample_ids[0]
    paths = channel_paths(synth_data, sample_id)
    response = client.post("/predict", files=channel_files(synth_data, sample_id))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = expected_probabilities(package, read_sample(paths))
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-5)
    card = read_card(package)
    labels = decide(expected[None], card.thresholds, min_one=True)[0]
    assert sorted(label["id"] for label in body["labels"]) == np.flatnonzero(labels).tolist()
    assert body["target"] == " ".join(str(i) for i in np.flatnonzero(labels))
    shown = [label["probability"] for label in body["labels"]]
    assert shown == sorted(shown, reverse=True)  # most probable first
    assert all(label["name"] == HPA2018.names[label["id"]] for label in body["labels"])
    assert body["image"] == {"width": 64, "height": 64, "channels": list(CHANNELS), "source": "channels"}
    assert 0 < body["timing"]["decode"] <= body["seconds"] and body["previews"] is None


def test_onnx_and_torch_services_agree(
    client: TestClient, onnx_client: TestClient, synth_data: Path, sample_ids: list[str]
) -> None:
    assert onnx_client.get("/health").json()["backend"] == "onnx"
    for sample_id in sample_ids[:3]:
        files = channel_files(synth_data, sample_id)
        via_torch = client.post("/predict", files=files).json()
        via_onnx = onnx_client.post("/predict", files=files).json()
        np.testing.assert_allclose(via_onnx["probabilities"], via_torch["probabilities"], atol=1e-4)


def test_previews_are_png_pictures_of_the_field(client: TestClient, synth_data: Path, sample_ids: list[str]) -> None:
    body = client.post("/predict?previews=true", files=channel_files(synth_data, sample_ids[0])).json()
    previews = body["previews"]
    assert set(previews["channels"]) == set(CHANNELS)
    import base64

    for url in [previews["composite"], *previews["channels"].values()]:
        assert url.startswith("data:image/png;base64,")
        picture = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (64, 64, 3)


def test_every_input_format_gives_the_same_prediction(
    client: TestClient, synth_data: Path, sample_ids: list[str]
) -> None:
    paths = channel_paths(synth_data, sample_ids[1])
    image = read_sample(paths)  # (4, 64, 64) uint8
    reference = client.post("/predict", files=channel_files(synth_data, sample_ids[1])).json()["probabilities"]

    def predict(files: Files, query: str = "") -> list[float]:
        response = client.post("/predict" + query, files=files)
        assert response.status_code == 200, response.text
        return list(response.json()["probabilities"])

    sixteen = {
        c: (f"x_{c}.png", png_bytes(image[i].astype(np.uint16) * 257), "image/png") for i, c in enumerate(CHANNELS)
    }
    tinted = np.zeros((64, 64, 3), np.uint8)
    variants = {
        "16-bit PNG": predict(sixteen),
        "TIFF (C,H,W)": predict({"stack": ("s.tif", tiff_bytes(image), "image/tiff")}),
        "TIFF 16-bit (H,W,C)": predict(
            {"stack": ("s.tiff", tiff_bytes(np.moveaxis(image, 0, -1).astype(np.uint16) * 257), "image/tiff")}
        ),
        "npy (C,H,W)": predict({"stack": ("s.npy", npy_bytes(image), "application/octet-stream")}),
        "npy float (H,W,C)": predict(
            {"stack": ("s.npy", npy_bytes(np.moveaxis(image, 0, -1) / 255.0), "application/octet-stream")}
        ),
        "npy reordered": predict(
            {"stack": ("s.npy", npy_bytes(image[[2, 1, 0, 3]]), "application/octet-stream")},
            "?stack_channels=blue,green,red,yellow",
        ),
    }
    for name, probabilities in variants.items():
        np.testing.assert_allclose(probabilities, reference, atol=2e-3, err_msg=name)
    # A tinted colour file is reduced to one plane by the per-pixel max, as protloc.data.io does for files.
    tinted[..., 1] = image[1]
    files = channel_files(synth_data, sample_ids[1])
    files["green"] = ("x_green.png", png_bytes(tinted[..., ::-1]), "image/png")  # OpenCV writes BGR
    np.testing.assert_allclose(predict(files), reference, atol=1e-5)


def test_float_npy_in_hwc_layout_decodes_to_the_same_pixels() -> None:
    from protloc.serve.decode import Upload, read_upload_sample

    image = np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    upload = Upload(npy_bytes(np.moveaxis(image, 0, -1) / 255.0), "x.npy")
    np.testing.assert_array_equal(read_upload_sample({}, CHANNELS, stack=upload), image)


# ---------------------------------------------------------------------------------------------- bad input


def _crafted_png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1000)  # a tiny body that claims a gigantic image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_bad_uploads_are_clear_422s(client: TestClient, synth_data: Path, sample_ids: list[str]) -> None:
    good = channel_files(synth_data, sample_ids[0])
    small = {c: (n, png_bytes(np.zeros((32, 32), np.uint8)), t) for c, (n, _, t) in good.items()}

    def post(files: Files, query: str = "", endpoint: str = "/predict") -> Any:
        return client.post(endpoint + query, files=files)

    without_yellow = {c: f for c, f in good.items() if c != "yellow"}
    assert_error(post(without_yellow), 422, "missing the yellow channel", "stack")
    assert_error(post({**good, "red": ("r.png", b"\x89PNG\r\n\x1a\ngarbage", "image/png")}), 422, "red", "png")
    assert_error(post({**good, "red": ("r.png", b"hello, I am text", "text/plain")}), 422, "red", "not an image")
    assert_error(post({**good, "blue": ("b.png", b"", "image/png")}), 422, "blue", "empty")
    assert_error(post({**good, "green": small["green"]}), 422, "differ in size", "green 32x32")
    assert_error(post({**good, "red": ("r.png", png_bytes(np.zeros((4, 4), np.uint8)), "image/png")}), 422, "4x4")
    assert_error(post({**good, "red": ("r.png", _crafted_png_header(100_000, 100_000), "image/png")}), 422, "exceeds")
    rgb_stack = {"stack": ("s.tif", tiff_bytes(np.zeros((64, 64, 3), np.uint8)), "image/tiff")}
    assert_error(post(rgb_stack), 422, "expected 4 channels")
    assert_error(post({"stack": ("s.png", good["red"][1], "image/png")}), 422, "stack", "not a png")
    assert_error(post({"stack": ("s.npy", npy_bytes(np.zeros((64, 64))), "x")}), 422, "3-d")
    assert_error(post({"stack": ("s.npy", npy_bytes(np.zeros((4, 64, 64), np.complex64)), "x")}), 422, "pixel type")
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_error(post({"stack": ("s.npy", pickled.getvalue(), "x")}), 422, "objects")
    truncated = npy_bytes(np.zeros((4, 64, 64), np.uint8))[:-100]
    assert_error(post({"stack": ("s.npy", truncated, "x")}), 422, "truncated")
    assert_error(post({**good, "stack": ("s.npy", npy_bytes(np.zeros((4, 64, 64), np.uint8)), "x")}), 422, "not both")
    assert_error(post({"image": good["red"]}), 422, "unknown form field 'image'")
    assert_error(
        post({"stack": ("s.npy", npy_bytes(np.zeros((4, 64, 64), np.uint8)), "x")}, "?stack_channels=rgbx"), 422
    )
    assert_error(client.post("/predict", json={"red": "x"}), 422, "missing the red channel")
    assert_error(client.post("/predict"), 422, "missing the red channel")
    assert_error(post(good, "?previews=maybe"), 422, "previews")
    malformed = client.post(
        "/predict", content=b"--xyz\r\nnot really", headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert malformed.status_code in (400, 422) and "detail" in malformed.json()
    assert_error(post(good, "?class_id=Golgi%20apparatuses", "/explain"), 422, "unknown class")
    assert_error(post(good, "?class_id=99", "/explain"), 422, "out of range")
    assert_error(post(good, "?max_side=10", "/explain"), 422, "max_side")
    assert_error(client.get("/nowhere"), 404)
    assert_error(client.get("/predict"), 405)


def test_oversized_uploads_get_413_before_being_read(package: Path, synth_data: Path, sample_ids: list[str]) -> None:
    app = create_app(package, backend="torch", max_upload_mb=0.05)  # 50 kB
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8))
    assert len(big) > 60_000
    with TestClient(app, base_url="http://localhost") as small_client:
        assert small_client.post("/predict", files=channel_files(synth_data, sample_ids[0])).status_code == 200
        files = {**channel_files(synth_data, sample_ids[0]), "red": ("r.png", big, "image/png")}
        assert_error(small_client.post("/predict", files=files), 413, "exceeds", "0.05 MB", "--max-upload-mb")

        import httpx

        request = httpx.Request("POST", "http://x/predict", files=files)
        body = request.read()

        def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it streams in
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        streamed = small_client.post(
            "/predict", content=chunks(), headers={"content-type": request.headers["content-type"]}
        )
        assert_error(streamed, 413, "exceeds")
        assert small_client.get("/health").json()["in_flight"] == 0


def test_busy_service_answers_503_with_retry_after(package: Path, synth_data: Path, sample_ids: list[str]) -> None:
    engine = InferenceEngine(package, backend="torch", max_pending=1)
    with engine.admit(), pytest.raises(ServiceBusyError), engine.admit():
        pass
    app = create_app(package, engine=engine)
    with TestClient(app, base_url="http://localhost") as busy_client, engine.admit():  # one request is "in progress"
        response = busy_client.post("/predict", files=channel_files(synth_data, sample_ids[0]))
        assert_error(response, 503, "busy", "retry")
        assert response.headers["retry-after"] == "1"
    engine.close()


# ---------------------------------------------------------------------------------------------- batch, explain


def test_batch_predicts_every_sample_like_single_requests(
    client: TestClient, synth_data: Path, sample_ids: list[str], package: Path
) -> None:
    chosen = sample_ids[:3]
    uploads = [
        ("files", (f"{sample_id}_{c}.png", (synth_data / "test" / f"{sample_id}_{c}.png").read_bytes(), "image/png"))
        for sample_id in chosen
        for c in CHANNELS
    ]
    stacked = read_sample(channel_paths(synth_data, sample_ids[3]))
    uploads.append(("files", ("folder/stacked-one.npy", npy_bytes(stacked), "application/octet-stream")))
    response = client.post("/predict/batch", files=uploads)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 4 and [r["id"] for r in body["results"]] == [*chosen, "stacked-one"]
    assert body["results"][3]["image"]["source"] == "stack"
    for sample_id, result in zip([*chosen, sample_ids[3]], body["results"], strict=True):
        single = client.post("/predict", files=channel_files(synth_data, sample_id)).json()
        np.testing.assert_allclose(result["probabilities"], single["probabilities"], atol=1e-5)
        assert result["target"] == single["target"]

    assert_error(
        client.post("/predict/batch", files=[("files", ("notes.txt", b"hello", "text/plain"))]), 422, "notes.txt"
    )
    assert_error(client.post("/predict/batch", files=uploads[:3]), 422, f"sample {chosen[0]}", "missing the yellow")
    twice = [uploads[0], uploads[0], *uploads[1:4]]
    assert_error(client.post("/predict/batch", files=twice), 422, "two red files")
    assert_error(client.post("/predict/batch"), 422)

    limited = create_app(package, engine=client.app.state.engine, max_batch_samples=2)
    with TestClient(limited, base_url="http://localhost") as limited_client:
        assert_error(limited_client.post("/predict/batch", files=uploads), 422, "at most 2")


def test_explain_returns_an_overlay_png_of_the_field(
    client: TestClient, synth_data: Path, sample_ids: list[str]
) -> None:
    files = channel_files(synth_data, sample_ids[0])
    response = client.post("/explain?class_id=Golgi apparatus", files=files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-class-id"] == "7" and response.headers["x-class-name"] == "Golgi apparatus"
    picture = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (64, 64, 3)
    probabilities = client.post("/predict", files=files).json()["probabilities"]
    assert float(response.headers["x-probability"]) == pytest.approx(probabilities[7], abs=1e-4)
    default = client.post("/explain", files=files)
    assert default.status_code == 200 and int(default.headers["x-class-id"]) == int(np.argmax(probabilities))
    assert client.post("/explain?class_id=7", files=files).headers["x-class-name"] == "Golgi apparatus"
    assert_error(client.post("/explain", files={c: f for c, f in files.items() if c != "red"}), 422, "missing the red")


def test_onnx_service_runs_without_torch(onnx_package: Path, synth_data: Path, sample_ids: list[str]) -> None:
    files = {c: str(p) for c, p in channel_paths(synth_data, sample_ids[0]).items()}
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("torch", "lightning", "timm", "torchvision", "pytorch_grad_cam"):
            sys.modules[blocked] = None  # any import of these now fails, as if not installed
        from fastapi.testclient import TestClient
        from protloc.serve import create_app

        app = create_app({str(onnx_package)!r})  # backend auto -> onnx
        files = {{c: (p, open(p, "rb").read(), "image/png") for c, p in {files!r}.items()}}
        with TestClient(app, base_url="http://localhost") as client:
            assert client.get("/model").json()["explanations"] is False
            predicted = client.post("/predict", files=files)
            assert predicted.status_code == 200, predicted.text
            explained = client.post("/explain", files=files)
            assert explained.status_code == 501, explained.text
            print("EXPLAIN:", explained.json()["detail"])
        assert not [m for m in sys.modules if m.startswith(("torch", "lightning", "timm")) and sys.modules[m]]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout and "pip install" in result.stdout


# ---------------------------------------------------------------------------------------------- engine


def test_concurrent_requests_are_micro_batched(package: Path, synth_data: Path, sample_ids: list[str]) -> None:
    engine = InferenceEngine(package, backend="torch", max_batch=8)
    inputs = [engine.prepare(read_sample(channel_paths(synth_data, i))) for i in sample_ids[:16]]

    async def all_at_once() -> list[np.ndarray]:
        return list(await asyncio.gather(*(engine.infer(x) for x in inputs)))

    together = asyncio.run(all_at_once())
    alone = [engine.run_batch([x])[0] for x in inputs]
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-5)
    assert engine.stats.samples == 16 and engine.stats.batches < 16  # shared network calls
    assert engine.stats.mean_batch > 1.5
    engine.close()


# ---------------------------------------------------------------------------------------------- security


def test_token_protects_everything_but_health_and_the_page(package: Path, client: TestClient) -> None:
    app = create_app(package, engine=client.app.state.engine, token="s3cret")
    with TestClient(app, base_url="http://localhost") as secured:
        assert secured.get("/health").status_code == 200
        assert secured.get("/").status_code == 200
        assert_error(secured.get("/model"), 401, "token")
        assert_error(secured.get("/model", headers={"Authorization": "Bearer wrong"}), 401, "wrong")
        assert_error(secured.post("/predict", files={}), 401)
        assert secured.get("/model").headers["www-authenticate"] == "Bearer"
        assert secured.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        schema = secured.get("/openapi.json").json()
        assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_non_loopback_binds_need_a_token_or_allow_remote(monkeypatch: pytest.MonkeyPatch, package: Path) -> None:
    for host in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
        check_bind(host, None, False)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match="--token"):
            check_bind(host, None, False)
        check_bind(host, "tok", False)
        check_bind(host, None, True)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None) is None
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        run(package, host="0.0.0.0", port=1)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == "from-env" and resolve_token("given") == "given"


# ---------------------------------------------------------------------------------------------- pages, docs


def test_page_docs_and_static_files_are_served_without_external_resources(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file-input"' in page.text and "/static/app.js" in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    schema = client.get("/openapi.json").json()
    assert {"/health", "/model", "/predict", "/predict/batch", "/explain"} <= set(schema["paths"])
    assert "422" in schema["paths"]["/predict"]["post"]["responses"]
    static = Path(__file__).resolve().parents[1] / "src" / "protloc" / "serve" / "static"
    for path in static.iterdir():
        response = client.get(f"/static/{path.name}")
        assert response.status_code == 200, path.name
        # No CDN, no web fonts, no analytics: the microscope PC may have no internet.
        assert not re.search(r"(src|href)=[\"']https?://|url\(https?://|import .*https?://", response.text), path.name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_health(port: int, process: subprocess.Popen[str], timeout: float = 90) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()[1][-2000:]}")
        try:
            return dict(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json())
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not answer /health in time")


@pytest.mark.parametrize("workers", [1, 2])
def test_run_serves_over_http(onnx_package: Path, synth_data: Path, sample_ids: list[str], workers: int) -> None:
    import httpx

    port = _free_port()
    arguments = f"{str(onnx_package)!r}, port={port}, workers={workers}, log_level='warning'"
    script = f"from protloc.serve import run; run({arguments})"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert _wait_for_health(port, process)["backend"] == "onnx"
        files = channel_files(synth_data, sample_ids[0])
        response = httpx.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=30)
        assert response.status_code == 200 and len(response.json()["probabilities"]) == 28
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- fuzz, load

FUZZED = [("GET", "/health"), ("GET", "/model"), ("POST", "/predict"), ("POST", "/predict/batch"), ("POST", "/explain")]


@pytest.fixture(scope="module")
def api_schema(onnx_app: FastAPI) -> Any:
    # skips the fuzz tests alone when the fuzzer is missing (a module-level importorskip skipped the whole file)
    schemathesis = require("schemathesis")
    return schemathesis.openapi.from_asgi("/openapi.json", onnx_app)


@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{m} {p}" for m, p in FUZZED])
def test_fuzzed_requests_never_give_5xx_and_match_the_schema(api_schema: Any, method: str, path: str) -> None:
    """Schemathesis: valid and invalid requests from the OpenAPI schema; no 5xx, responses as documented.

    (Driven through Hypothesis directly: schemathesis' lazy pytest fixture loader does not run on pytest 9.)
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    documented = {(m.upper(), p) for p, methods in api_schema.raw_schema["paths"].items() for m in methods}
    assert documented == set(FUZZED), "fuzz every documented operation"
    operation = api_schema[path][method]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
        negative_data_rejection,
    ]

    @given(case=st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes)))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=checks)

    # The torch backend sets flush-to-zero for speed (TorchBackend), which is per thread and makes Hypothesis
    # refuse to draw floats; the fuzzing needs IEEE behaviour back on this thread while it runs.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)
    fuzz()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def live_onnx_server(onnx_app: FastAPI) -> Iterator[str]:
    """The ONNX service on a free loopback port, served by uvicorn in a thread of this process."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(onnx_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_load_500_requests_at_concurrency_16(live_onnx_server: str, synth_data: Path, sample_ids: list[str]) -> None:
    """Zero errors, bounded time, and memory that does not grow with the number of requests served."""
    import httpx

    payloads = [channel_files(synth_data, i) for i in sample_ids[:8]]

    async def hammer(count: int, concurrency: int) -> list[int]:
        statuses: list[int] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=live_onnx_server, timeout=30, limits=limits) as http:

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    response = await http.post("/predict", files=payloads[i % len(payloads)])
                    statuses.append(response.status_code)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses

    asyncio.run(hammer(100, 16))  # warm-up: thread pools, allocator arenas
    before = _rss_mb()
    started = time.monotonic()
    statuses = asyncio.run(hammer(500, 16))
    seconds = time.monotonic() - started
    after = _rss_mb()
    assert statuses.count(200) == 500, {s: statuses.count(s) for s in set(statuses)}
    assert seconds < 120, f"500 requests took {seconds:.0f} s"
    assert after - before < 20, f"RSS grew from {before:.0f} MB to {after:.0f} MB over 500 requests"
    health = httpx.get(f"{live_onnx_server}/health").json()
    assert health["in_flight"] == 0 and health["mean_batch"] >= 1.0
