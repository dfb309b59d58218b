"""The FastAPI application: JSON API, the web page at ``/`` and the API reference at ``/docs``.

Endpoints (all JSON errors are ``{"detail": "one line"}``):

* ``GET /health``: liveness and counters (never needs the token).
* ``GET /model``: the package card: classes, channels, input size, thresholds, metrics, versions.
* ``POST /predict``: one sample as multipart form data: one image per channel in the fields ``red``,
  ``green``, ``blue``, ``yellow`` (PNG/TIFF/JPG, 8 or 16 bit), or one multi-channel TIFF or ``.npy`` in the
  field ``stack``. Answers the predicted labels (id, name, probability, threshold), all 28 probabilities and
  the time taken; ``?previews=true`` adds PNG pictures of the composite and each channel.
* ``POST /predict/batch``: several samples in the repeated field ``files``: channel images named
  ``<Id>_<channel>.<ext>`` (the Kaggle layout) and/or stacks named ``<Id>.tif`` / ``<Id>.npy``.
* ``POST /explain``: the same inputs as ``/predict`` and ``?class_id=`` (id or name; default the most probable
  class): a PNG of the class activation map over the composite. Needs PyTorch; 501 without it.

Bad input is a 4xx, never a 500: 400 malformed body, 401 missing/wrong token, 413 upload over the limit,
422 unusable data (missing channel, corrupt file, wrong shape...), 501 explanations unavailable, 503 busy.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from protloc import __version__
from protloc.classes import CLASS_NAMES, NUM_CLASSES, SHORT_NAMES
from protloc.errors import ConfigError, DataError, DependencyError, ProtlocError
from protloc.io import CHANNELS, parse_channels, resize_plane, split_channel_filename
from protloc.serve.decode import Upload, read_upload_sample, sniff
from protloc.serve.engine import InferenceEngine, NotAvailableError, ServiceBusyError
from protloc.serve.schemas import BatchResponse, ErrorResponse, Health, ModelInfo, PredictionResponse
from protloc.serve.settings import ServiceSettings

log = logging.getLogger("protloc.serve")

STATIC = Path(__file__).resolve().parent / "static"
STACK_SUFFIXES = (".tif", ".tiff", ".npy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("malformed request body (not valid multipart form data)"),
    413: _error("the request body exceeds the upload limit"),
    422: _error("the data cannot be used: a missing channel, a corrupt or non-image file, a wrong shape..."),
    503: _error("too many requests in progress; retry after the Retry-After seconds"),
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: _error("missing or wrong bearer token")}


# ---------------------------------------------------------------------------------------------- the gate

PROTECTED_PATHS = frozenset(("/model", "/predict", "/predict/batch", "/explain"))
"""Paths that need the token when one is set (the page, /docs, /openapi.json and /health stay open)."""

HEAVY_PATHS = frozenset(("/predict", "/predict/batch", "/explain"))
"""Paths whose requests count against ``max_pending`` (they carry uploads and run the network)."""


class _BodyTooLargeError(Exception):
    pass


class RequestGate:
    """ASGI middleware that refuses a request before its body is read: wrong token (401), body over the upload
    limit (413), or too many requests in progress (503).

    A declared ``Content-Length`` over the limit is refused at once; a body without one (chunked) is counted as it
    streams in and cut off when it passes the limit, whatever the route was doing with it. So neither a client
    without the token nor one over the limit can make the service spool a large upload, and memory stays bounded
    by ``max_pending`` x the upload limit. The routes check the token again (for the OpenAPI schema).
    """

    def __init__(self, app: ASGIApp, engine: InferenceEngine, max_bytes: int, token: str | None) -> None:
        self.app = app
        self.engine = engine
        self.max_bytes = max_bytes
        self.token = token.encode() if token else None

    def _too_large(self, size: int | None) -> str:
        limit = f"{self.max_bytes / 1e6:g} MB"
        told = f"an upload of {size / 1e6:.1f} MB" if size is not None else "the upload"
        return (
            f"{told} exceeds this service's limit of {limit}; send smaller files (e.g. 8-bit PNG) or "
            "fewer samples per request, or restart the service with a larger --max-upload-mb"
        )

    def _authorised(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self.token is None:
            return True
        value = next((v for k, v in headers if k == b"authorization"), b"")
        scheme, _, given = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = scope.get("headers", [])
        if path in PROTECTED_PATHS and not self._authorised(headers):
            given = any(k == b"authorization" for k, _ in headers)
            detail = "wrong bearer token" if given else "this service needs a token: send 'Authorization: Bearer TOKEN'"
            await _send_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])
            return
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length header")
                return
            if declared > self.max_bytes:
                await _send_error(send, 413, self._too_large(declared), [(b"connection", b"close")])
                return
        if path in HEAVY_PATHS and scope.get("method") == "POST":
            if not self.engine.try_admit():
                await _send_error(send, 503, self.engine.busy_message(), [(b"retry-after", b"1")])
                return
            try:
                await self._limited(scope, receive, send)
            finally:
                self.engine.release()
            return
        await self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"received": 0, "exceeded": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                return  # whatever the route makes of a cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _send_error(send, 413, self._too_large(None), [(b"connection", b"close")])


async def _send_error(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = ErrorResponse(detail=detail).model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# ---------------------------------------------------------------------------------------------- helpers


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    """A ``(C, H, W)`` field resized so that its longer side is at most ``side`` px."""
    height, width = image.shape[1:]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return np.stack([resize_plane(plane, size) for plane in image])


def _png_data_url(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def make_previews(image: np.ndarray, channels: tuple[str, ...], side: int) -> dict[str, Any]:
    """PNG data URLs of the composite and of each channel in its colour, at most ``side`` px."""
    from protloc.plots import composite_rgb, tint

    small = _shrink(image, side)
    return {
        "composite": _png_data_url(composite_rgb(small, channels)),
        "channels": {c: _png_data_url(tint(small[i], c)) for i, c in enumerate(channels)},
    }


def resolve_class_id(value: str) -> int:
    """A class id from ``"7"``, a class name or short name (any case), or an unambiguous name prefix.

    Raises:
        ConfigError: no class or several classes match.
    """
    text = " ".join(value.split()).lower()
    if text.isdigit():
        if int(text) < NUM_CLASSES:
            return int(text)
        raise ConfigError(f"class_id {value!r} is out of range; class ids are 0-{NUM_CLASSES - 1}")
    for names in (CLASS_NAMES, SHORT_NAMES):
        for class_id, name in enumerate(names):
            if name.lower() == text:
                return class_id
    matches = [i for i, name in enumerate(CLASS_NAMES) if text and name.lower().startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        options = ", ".join(f"{CLASS_NAMES[i]} ({i})" for i in matches)
        raise ConfigError(f"class_id {value!r} is ambiguous: {options}")
    raise ConfigError(f"unknown class {value!r}: give a class id 0-{NUM_CLASSES - 1} or a class name (GET /model)")


async def _read(upload: UploadFile | None) -> Upload | None:
    if upload is None:
        return None
    return Upload(data=await upload.read(), filename=PurePath(upload.filename or "").name)


async def _read_channels(uploads: dict[str, UploadFile | None]) -> dict[str, Upload]:
    files = {}
    for channel, upload in uploads.items():
        read = await _read(upload)
        if read is not None:
            files[channel] = read
    return files


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body", "query")]
        where = ".".join(location) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------------------------------- the app


def create_app(
    model: str | Path | ServiceSettings, *, engine: InferenceEngine | None = None, **options: Any
) -> FastAPI:
    """The service as an ASGI app (run it with uvicorn, or test it with ``fastapi.testclient.TestClient``).

    Args:
        model: the model package folder, or complete :class:`ServiceSettings`.
        engine: an already loaded engine to share (the app then leaves closing it to the caller).
        **options: :class:`ServiceSettings` fields when ``model`` is a path (``backend="onnx"``, ``token=...``).

    Raises:
        ModelError: the package cannot be loaded with the chosen backend.
        ConfigError: a setting is out of range.
    """
    settings = model if isinstance(model, ServiceSettings) else ServiceSettings(model=str(model), **options)
    owns_engine = engine is None
    engine = engine or InferenceEngine(
        settings.model,
        backend=settings.backend,
        device=settings.device,
        threads=settings.threads,
        max_batch=settings.max_batch,
        max_pending=settings.max_pending,
        decode_threads=settings.decode_threads,
        inference_threads=settings.inference_threads,
    )
    service = _Service(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_engine:
            engine.close()

    app = FastAPI(
        title="protloc",
        version=__version__,
        summary="Where in a human cell does a protein live? Multi-label localization from 4-channel microscopy.",
        description=(
            "Upload one field of cells (one image per channel, or one stacked TIFF/.npy) and get the predicted "
            "subcellular localizations among the 28 Human Protein Atlas classes. Errors are JSON "
            '`{"detail": "..."}` with a 4xx status.'
            + (" Every endpoint except /health needs `Authorization: Bearer TOKEN`." if settings.token else "")
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.add_middleware(RequestGate, engine=engine, max_bytes=settings.max_upload_bytes, token=settings.token)
    _add_error_handlers(app)

    auth: list[Any] = []
    errors = dict(UPLOAD_ERRORS)
    if settings.token:
        auth = [Depends(_token_checker(settings.token))]
        errors.update(AUTH_ERRORS)
    info_errors: dict[int | str, dict[str, Any]] = {k: v for k, v in errors.items() if k == 401}

    # ---------------------------------------------------------------------------------- pages

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    # ---------------------------------------------------------------------------------- API

    @app.get("/health", response_model=Health, tags=["service"], summary="Liveness and counters")
    async def health() -> dict[str, Any]:
        stats = engine.stats
        return {
            "status": "ok",
            "version": __version__,
            "backend": engine.backend_name,
            "model": service.model_name,
            "uptime_seconds": round(time.monotonic() - stats.started, 3),
            "requests": stats.requests,
            "in_flight": engine.in_flight,
            "samples": stats.samples,
            "batches": stats.batches,
            "mean_batch": round(stats.mean_batch, 3),
        }

    @app.get(
        "/model",
        response_model=ModelInfo,
        dependencies=auth,
        responses=info_errors,
        tags=["model"],
        summary="The model package's card",
    )
    async def model_info() -> dict[str, Any]:
        return service.model_info()

    channel_help = "{} channel ({}): PNG, TIFF or JPG, 8 or 16 bit, single plane (a tinted colour file is reduced)"
    stack_help = (
        "all channels in one file instead: a multi-channel/multi-page TIFF or a .npy array, (C, H, W) or (H, W, C), "
        "channels in the order given by stack_channels"
    )
    order_help = "channel order inside a stacked file, comma-separated"

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        response_model_exclude_none=False,
        dependencies=auth,
        responses=errors,
        tags=["prediction"],
        summary="Predict the localizations of one sample",
    )
    async def predict(
        request: Request,
        red: UploadFile | None = File(None, description=channel_help.format("red", "microtubules")),
        green: UploadFile | None = File(None, description=channel_help.format("green", "protein of interest")),
        blue: UploadFile | None = File(None, description=channel_help.format("blue", "nucleus")),
        yellow: UploadFile | None = File(None, description=channel_help.format("yellow", "endoplasmic reticulum")),
        stack: UploadFile | None = File(None, description=stack_help),
        stack_channels: str = Query("red,green,blue,yellow", max_length=64, description=order_help),
        previews: bool = Query(False, description="add PNG pictures of the composite and channels (data URLs)"),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        uploads = {"red": red, "green": green, "blue": blue, "yellow": yellow}
        files = await _read_channels(uploads)
        stacked = await _read(stack)
        await service.reject_unknown_fields(request)
        result = await service.predict_one(files, stacked, stack_channels, previews=previews)
        result["seconds"] = result["timing"]["total"] = round(time.perf_counter() - started, 5)
        return result

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        dependencies=auth,
        responses=errors,
        tags=["prediction"],
        summary="Predict several samples in one request",
    )
    async def predict_batch(
        files: list[UploadFile] = File(
            description="the samples' files: channel images named <Id>_<channel>.<ext> (e.g. A1_red.png: the "
            "Kaggle layout) and/or stacked files named <Id>.tif or <Id>.npy"
        ),
        stack_channels: str = Query("red,green,blue,yellow", max_length=64, description=order_help),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        uploads = [Upload(await f.read(), PurePath(f.filename or "").name) for f in files]
        results = await service.predict_batch(uploads, stack_channels)
        return {"results": results, "count": len(results), "seconds": round(time.perf_counter() - started, 5)}

    @app.post(
        "/explain",
        response_class=Response,
        dependencies=auth,
        responses={
            200: {
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                "description": "the class activation map over the composite, as PNG; the headers X-Class-Id, "
                "X-Class-Name, X-Probability and X-Threshold say what it shows",
            },
            **errors,
            501: _error("explanations are not available here (PyTorch/grad-cam missing, or a bare .onnx model)"),
        },
        tags=["prediction"],
        summary="Class activation map (Grad-CAM) of one sample for one class",
    )
    async def explain(
        request: Request,
        red: UploadFile | None = File(None, description=channel_help.format("red", "microtubules")),
        green: UploadFile | None = File(None, description=channel_help.format("green", "protein of interest")),
        blue: UploadFile | None = File(None, description=channel_help.format("blue", "nucleus")),
        yellow: UploadFile | None = File(None, description=channel_help.format("yellow", "endoplasmic reticulum")),
        stack: UploadFile | None = File(None, description=stack_help),
        class_id: str | None = Query(
            None, max_length=64, description="class id (0-27) or name; default: the most probable class"
        ),
        stack_channels: str = Query("red,green,blue,yellow", max_length=64, description=order_help),
        max_side: int | None = Query(None, ge=64, le=4096, description="shrink the picture to at most this side"),
    ) -> Response:
        uploads = {"red": red, "green": green, "blue": blue, "yellow": yellow}
        files = await _read_channels(uploads)
        stacked = await _read(stack)
        await service.reject_unknown_fields(request)
        chosen = resolve_class_id(class_id) if class_id is not None and class_id.strip() else None
        png, headers = await service.explain(files, stacked, stack_channels, chosen, max_side)
        return Response(content=png, media_type="image/png", headers=headers)

    return app


def _token_checker(token: str) -> Callable[..., Awaitable[None]]:
    bearer = HTTPBearer(auto_error=False, description="the token the service was started with (--token)")
    expected = token.encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not given or not hmac.compare_digest(given, expected):
            detail = "wrong bearer token" if given else "this service needs a token: send 'Authorization: Bearer TOKEN'"
            raise HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProtlocError)
    async def protloc_error(request: Request, exc: ProtlocError) -> JSONResponse:
        headers = None
        if isinstance(exc, ServiceBusyError):
            status, headers = 503, {"Retry-After": "1"}
        elif isinstance(exc, (NotAvailableError, DependencyError)):
            status = 501
        else:
            status = 422
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe_validation(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({exc.__class__.__name__}); this is a bug, see the service log"},
            status_code=500,
        )


class _Service:
    """The endpoints' work, kept apart from the routing."""

    KNOWN_FIELDS = frozenset((*CHANNELS, "stack"))

    def __init__(self, settings: ServiceSettings, engine: InferenceEngine) -> None:
        self.settings = settings
        self.engine = engine
        card = engine.card
        if card.get("kind") == "ensemble":
            self.model_name = f"ensemble of {len(card.get('members', []))}"
        else:
            self.model_name = str(card.get("architecture", {}).get("name", "model"))

    def model_info(self) -> dict[str, Any]:
        import importlib.util

        card = self.engine.card
        thresholds = [float(t) for t in card["thresholds"]]
        training = {
            k: v for k, v in card.get("training", {}).items() if k not in ("data", "config") and not isinstance(v, dict)
        }
        explainable = (
            importlib.util.find_spec("torch") is not None
            and importlib.util.find_spec("pytorch_grad_cam") is not None
            and Path(self.settings.model).suffix.lower() != ".onnx"
        )
        return {
            "name": self.model_name,
            "kind": card.get("kind", "model"),
            "backend": self.engine.backend_name,
            "channels": list(self.engine.channels),
            "size": int(card["input"]["size"]),
            "bit_depth": self.engine.bit_depth,
            "classes": [
                {"id": i, "name": name, "short": SHORT_NAMES[i], "threshold": thresholds[i]}
                for i, name in enumerate(CLASS_NAMES)
            ],
            "thresholds": thresholds,
            "decision": card.get("decision", {"rule": "probability >= per-class threshold", "min_one": True}),
            "metrics": card.get("metrics", {}),
            "architecture": card.get("architecture", {}),
            "training": training,
            "protloc_version": card.get("protloc_version"),
            "created": card.get("created"),
            "service_version": __version__,
            "explanations": explainable,
        }

    async def reject_unknown_fields(self, request: Request) -> None:
        """A clear 422 for form fields the endpoint does not know (``image``, ``Red``...): a likely typo."""
        form = await request.form()
        unknown = sorted({key for key in form if key not in self.KNOWN_FIELDS})
        if unknown:
            raise DataError(
                f"unknown form field {unknown[0]!r}; send the channel images as the fields "
                f"{', '.join(CHANNELS)} or one stacked file as 'stack'"
            )

    def _decode(
        self, files: dict[str, Upload], stack: Upload | None, stack_channels: str, label: str = ""
    ) -> np.ndarray:
        order = parse_channels(stack_channels) if stack is not None else CHANNELS
        return read_upload_sample(
            files,
            self.engine.channels,
            stack=stack,
            stack_channels=order,
            bit_depth=self.engine.bit_depth,
            label=label,
        )

    def _decode_and_prepare(
        self, files: dict[str, Upload], stack: Upload | None, stack_channels: str, previews: bool, label: str = ""
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        image = self._decode(files, stack, stack_channels, label)
        inputs = self.engine.prepare(image)
        shown = make_previews(image, self.engine.channels, self.settings.preview_side) if previews else None
        return image, inputs, shown

    def _result(
        self,
        image: np.ndarray,
        probabilities: np.ndarray,
        source: str,
        decode_seconds: float,
        inference_seconds: float,
        sample_id: str | None = None,
        previews: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        labels = self.engine.decide(probabilities[None])[0]
        chosen = sorted(np.flatnonzero(labels).tolist(), key=lambda i: -float(probabilities[i]))
        thresholds = self.engine.thresholds
        return {
            "id": sample_id,
            "labels": [
                {
                    "id": int(i),
                    "name": CLASS_NAMES[i],
                    "probability": round(float(probabilities[i]), 6),
                    "threshold": float(thresholds[i]),
                }
                for i in chosen
            ],
            "target": " ".join(str(i) for i in sorted(chosen)),
            "probabilities": [round(float(p), 6) for p in probabilities],
            "image": {
                "width": int(image.shape[2]),
                "height": int(image.shape[1]),
                "channels": list(self.engine.channels),
                "source": source,
            },
            "seconds": round(decode_seconds + inference_seconds, 5),
            "timing": {
                "decode": round(decode_seconds, 5),
                "inference": round(inference_seconds, 5),
                "total": round(decode_seconds + inference_seconds, 5),
            },
            "previews": previews,
        }

    async def predict_one(
        self, files: dict[str, Upload], stack: Upload | None, stack_channels: str, *, previews: bool
    ) -> dict[str, Any]:
        started = time.perf_counter()
        image, inputs, shown = await self.engine.in_decode_pool(
            self._decode_and_prepare, files, stack, stack_channels, previews
        )
        decoded = time.perf_counter()
        probabilities = await self.engine.infer(inputs)
        finished = time.perf_counter()
        source = "stack" if stack is not None else "channels"
        return self._result(image, probabilities, source, decoded - started, finished - decoded, previews=shown)

    def group_batch(self, uploads: list[Upload]) -> dict[str, tuple[dict[str, Upload], Upload | None]]:
        """Sample Id -> (channel files, stacked file) from the uploads' file names.

        Raises:
            DataError: a file name that names no sample, a file given twice, or too many samples.
        """
        samples: dict[str, tuple[dict[str, Upload], Upload | None]] = {}
        for upload in uploads:
            name = upload.filename
            parsed = split_channel_filename(name)
            if parsed is not None:
                sample_id, channel = parsed
                files, stack = samples.setdefault(sample_id, ({}, None))
                if channel in files:
                    raise DataError(f"{name}: sample {sample_id} has two {channel} files")
                files[channel] = upload
                continue
            suffix = PurePath(name).suffix.lower()
            if suffix in STACK_SUFFIXES or (not suffix and sniff(upload.data) in ("tiff", "npy") and name):
                sample_id = PurePath(name).stem if suffix else name
                files, stack = samples.setdefault(sample_id, ({}, None))
                if stack is not None:
                    raise DataError(f"{name}: sample {sample_id} has two stacked files")
                samples[sample_id] = (files, upload)
                continue
            shown = repr(name) if name else "a file without a name"
            raise DataError(
                f"{shown}: cannot tell which sample it belongs to; name channel images <Id>_<channel>.<ext> "
                "(e.g. A1_red.png, channel red, green, blue or yellow) and stacked files <Id>.tif or <Id>.npy"
            )
        if not samples:
            raise DataError("no files received; send the samples' files in the repeated form field 'files'")
        limit = self.settings.max_batch_samples
        if len(samples) > limit:
            raise DataError(f"{len(samples)} samples in one request; this service takes at most {limit} per request")
        return samples

    async def predict_batch(self, uploads: list[Upload], stack_channels: str) -> list[dict[str, Any]]:
        import asyncio

        samples = self.group_batch(uploads)

        async def one(sample_id: str, files: dict[str, Upload], stack: Upload | None) -> dict[str, Any]:
            started = time.perf_counter()
            image, inputs, _ = await self.engine.in_decode_pool(
                self._decode_and_prepare, files, stack, stack_channels, False, f"sample {sample_id}"
            )
            decoded = time.perf_counter()
            probabilities = await self.engine.infer(inputs)
            source = "stack" if stack is not None else "channels"
            return self._result(
                image, probabilities, source, decoded - started, time.perf_counter() - decoded, sample_id
            )

        return list(await asyncio.gather(*(one(i, f, s) for i, (f, s) in samples.items())))

    async def explain(
        self,
        files: dict[str, Upload],
        stack: Upload | None,
        stack_channels: str,
        class_id: int | None,
        max_side: int | None,
    ) -> tuple[bytes, dict[str, str]]:
        import asyncio

        engine = self.engine
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(engine.inference_pool, engine.explainer)  # 501 before decoding, if unavailable
        image = await engine.in_decode_pool(self._decode, files, stack, stack_channels)
        explanation, chosen = await loop.run_in_executor(engine.inference_pool, engine.explain, image, class_id)
        png = await engine.in_decode_pool(_overlay_png, explanation, chosen, max_side)
        probability = float(explanation.probabilities[chosen])
        headers = {
            "X-Class-Id": str(chosen),
            "X-Class-Name": CLASS_NAMES[chosen],
            "X-Probability": f"{probability:.6f}",
            "X-Threshold": f"{float(explanation.thresholds[chosen]):.6f}",
            "Cache-Control": "no-store",
        }
        return png, headers


def _overlay_png(explanation: Any, class_id: int, max_side: int | None) -> bytes:
    """The class's map over the composite as PNG, shrunk to ``max_side`` when given."""
    from protloc.explain import overlay_rgb
    from protloc.plots import composite_rgb

    image = explanation.image
    heat = explanation.maps[class_id]
    if max_side is not None and max(image.shape[1:]) > max_side:
        image = _shrink(image, max_side)
        heat = cv2.resize(heat, (image.shape[2], image.shape[1]), interpolation=cv2.INTER_AREA)
    picture = overlay_rgb(composite_rgb(image, explanation.channels), heat)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def app_from_environment() -> FastAPI:
    """The app for uvicorn's multi-process mode (``factory=True``): settings from the environment."""
    return create_app(ServiceSettings.from_environment())
