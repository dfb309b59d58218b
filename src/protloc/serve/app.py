"""The FastAPI application: JSON API, the web page at ``/`` and the API reference at ``/docs``.

Endpoints (all JSON errors are ``{"detail": "one line"}``):

* ``GET /health``: liveness and counters (never needs the token).
* ``GET /model``: the package card: classes, channels, input size, thresholds, metrics, versions.
* ``POST /predict``: one sample as multipart form data: one image per channel in the fields ``red``,
  ``green``, ``blue``, ``yellow`` (PNG/TIFF/JPG, 8 or 16 bit), or one multi-channel TIFF or ``.npy`` in the
  field ``stack``. Answers the predicted labels (id, name, probability, threshold), all 28 probabilities and
  the time taken; ``?previews=true`` adds PNG pictures of the composite and each channel.
  ``?cells=true`` adds the field's cells (segmented on the service): box, area, centroid, border flag,
  per-class probabilities, labels, the mask (2021 challenge RLE) and an outline polygon, and says whether a cell
  model, the field baseline or their fusion made them (``?cell_method=``; see :mod:`protloc.serve.cells`).
* ``POST /predict/batch``: several samples in the repeated field ``files``: channel images named
  ``<Id>_<channel>.<ext>`` (the Kaggle layout) and/or stacks named ``<Id>.tif`` / ``<Id>.npy``.
* ``POST /explain``: the same inputs as ``/predict`` and ``?class_id=`` (id or name; default the most probable
  class): a PNG of the class activation map over the composite. Needs PyTorch; 501 without it.

Bad input is a 4xx, never a 500: 400 malformed body, 401 missing/wrong token, 413 upload over the limit,
422 unusable data (missing channel, corrupt file, wrong shape...), 501 explanations unavailable, 503 busy.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path, PurePath
from typing import Any

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from protloc import __version__
from protloc.classes import HPA2018
from protloc.errors import DependencyError, ProtlocError
from protloc.schemes import ClassScheme
from protloc.serve.cells import CellMethod, CellRequest
from protloc.serve.decode import Upload
from protloc.serve.engine import InferenceEngine, NotAvailableError, ServiceBusyError
from protloc.serve.gate import RequestGate
from protloc.serve.schemas import BatchResponse, ErrorResponse, Health, ModelInfo, PredictionResponse
from protloc.serve.service import PredictionService
from protloc.serve.settings import LOOPBACK_HOSTS, ServiceSettings

log = logging.getLogger("protloc.serve")

STATIC = Path(__file__).resolve().parent / "static"


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("malformed request body (not valid multipart form data)"),
    413: _error("the request body exceeds the upload limit"),
    422: _error("the data cannot be used: a missing channel, a corrupt or non-image file, a wrong shape..."),
    503: _error("too many requests in progress; retry after the Retry-After seconds"),
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: _error("missing or wrong bearer token")}


def resolve_class_id(value: str, scheme: ClassScheme | None = None) -> int:
    """A class id of the model's scheme from ``"7"``, a class name or short name (any case), or an unambiguous
    name prefix.

    Raises:
        ConfigError: no class or several classes match (the message names the scheme's id range).
    """
    return (scheme or HPA2018).resolve(value)


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
    settings = settings.with_cell_package()
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
    service = PredictionService(settings, engine)

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
    app.state.service = service
    app.add_middleware(
        RequestGate,
        engine=engine,
        max_bytes=settings.max_upload_bytes,
        token=settings.token,
        allowed_hosts=(*LOOPBACK_HOSTS, *settings.allowed_hosts),
        cors_origins=settings.cors_origins,
        body_timeout=settings.body_timeout,
    )
    if settings.cors_origins:  # off unless asked: only the named origins' pages may call the API from a browser
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Class-Id", "X-Class-Name", "X-Probability", "X-Threshold"],
        )
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
    cells_help = (
        "add the field's cells: segmented here, each with its box, area, centroid, border flag, probabilities, "
        "labels, mask (2021 challenge RLE) and outline polygon"
    )
    method_help = (
        "how cells get probabilities: auto (the cell model's fitted fusion if the service has a cell model, else "
        "the baseline), fusion (the cell model's fitted fusion), cell (the cell model alone), baseline (the "
        "field's probabilities to every cell), mix (cell_mix x cell + (1 - cell_mix) x field)"
    )
    cell_errors = {
        **errors,
        501: _error("cells need scikit-image and pycocotools, which are not installed here"),
    }

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        response_model_exclude_none=False,
        dependencies=auth,
        responses=cell_errors,
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
        cells: bool = Query(False, description=cells_help),
        cell_method: CellMethod = Query("auto", description=method_help),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        uploads = {"red": red, "green": green, "blue": blue, "yellow": yellow}
        files = await _read_channels(uploads)
        stacked = await _read(stack)
        await service.reject_unknown_fields(request)
        wanted = CellRequest(cell_method) if cells else None
        result = await service.predict_one(files, stacked, stack_channels, previews=previews, cells=wanted)
        result["seconds"] = result["timing"]["total"] = round(time.perf_counter() - started, 5)
        return result

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        dependencies=auth,
        responses=cell_errors,
        tags=["prediction"],
        summary="Predict several samples in one request",
    )
    async def predict_batch(
        files: list[UploadFile] = File(
            description="the samples' files: channel images named <Id>_<channel>.<ext> (e.g. A1_red.png: the "
            "Kaggle layout) and/or stacked files named <Id>.tif or <Id>.npy"
        ),
        stack_channels: str = Query("red,green,blue,yellow", max_length=64, description=order_help),
        cells: bool = Query(False, description=cells_help),
        cell_method: CellMethod = Query("auto", description=method_help),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        uploads = [Upload(await f.read(), PurePath(f.filename or "").name) for f in files]
        results = await service.predict_batch(uploads, stack_channels, CellRequest(cell_method) if cells else None)
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
        max_side: int | None = Query(
            None, ge=64, le=4096, description="the picture's longest side in px (default: the preview side, 512)"
        ),
    ) -> Response:
        uploads = {"red": red, "green": green, "blue": blue, "yellow": yellow}
        files = await _read_channels(uploads)
        stacked = await _read(stack)
        await service.reject_unknown_fields(request)
        chosen = (
            resolve_class_id(class_id, service.engine.card.scheme)
            if class_id is not None and class_id.strip()
            else None
        )
        side = max_side or settings.preview_side  # always a bounded picture, whatever the upload's size
        png, headers = await service.explain(files, stacked, stack_channels, chosen, side)
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


def app_from_environment() -> FastAPI:
    """The app for uvicorn's multi-process mode (``factory=True``): settings from the environment."""
    return create_app(ServiceSettings.from_environment())
