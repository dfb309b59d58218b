"""Starting the service: :func:`run` is what ``protloc serve MODEL`` calls."""

from __future__ import annotations

import os
from pathlib import Path

from protloc.errors import ConfigError, require
from protloc.inference.budget import plan_service
from protloc.serve.protocol import HEADER_TIMEOUT_ENV, HeaderTimeoutH11Protocol
from protloc.serve.settings import (
    SETTINGS_ENV,
    TOKEN_ENV,
    ServiceSettings,
    check_bind,
    check_model_path,
    host_allow_list,
    resolve_token,
)
from protloc.utils import usable_cpus


def run(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    token: str | None = None,
    token_file: str | Path | None = None,
    allow_remote: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    cors_origins: tuple[str, ...] = (),
    header_timeout: float = 10.0,
    body_timeout: float = 60.0,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    inference_threads: int | None = None,
    max_upload_mb: float = 64.0,
    max_batch: int = 8,
    max_pending: int = 64,
    log_level: str = "info",
    cells: str | Path | None = None,
    cell_mix: float = 0.5,
    max_cell_mpx: float = 16.0,
) -> None:
    """Serve a model package over HTTP until interrupted (Ctrl-C).

    The web page is at ``http://HOST:PORT/``, the API reference at ``/docs``. The model is loaded once per
    worker process, before the port is opened, so a bad package fails here with one clear error.

    Args:
        model: the model package folder (or an exported ``.onnx`` file: predictions only).
        host: the address to listen on; loopback (127.0.0.1) by default. Any other address needs a token or
            ``allow_remote``.
        port: the TCP port.
        workers: server processes, each with its own copy of the model (1 is right for most machines: the
            network already uses every core).
        token: bearer token clients must send (``Authorization: Bearer TOKEN``); default ``$PROTLOC_TOKEN``.
        token_file: read the token from the first line of this file instead (it then shows in no process list).
        allow_remote: listen on a non-loopback address without a token (anyone who reaches it can use it).
        allowed_hosts: ``Host`` names to accept besides loopback (and a specific ``host``); ``"*"``: any.
        cors_origins: web origins whose pages may call the API (CORS); none by default.
        header_timeout: seconds for a request's headers to arrive before the connection is closed.
        body_timeout: seconds for a request body to arrive (408 after); only then is a request queued.
        backend: ``auto`` (ONNX Runtime when the package has model.onnx, else PyTorch), ``onnx`` or ``torch``.
        device: torch device for the torch backend and explanations.
        threads: ONNX Runtime intra-op threads per network call (default 1 up to 8 CPUs: a lane per CPU;
            PyTorch: half the CPUs), the CPUs divided among ``workers``.
        inference_threads: network calls at the same time (default: the budget's lanes, one per CPU over
            ``threads`` with ONNX Runtime; 1 with PyTorch).
        max_upload_mb: largest request body in MB; larger ones get 413.
        max_batch: most concurrent requests run through the network together (1 turns micro-batching off).
        max_pending: most requests in progress; more get 503 with Retry-After.
        log_level: uvicorn's log level.
        cells: a cell model package: ``/predict?cells=true`` then scores each cell with it (without one, cells
            get the field model's probabilities: the baseline).
        cell_mix: the cell model's weight when a request asks for ``cell_method=mix``.
        max_cell_mpx: largest field, in megapixels, that ``?cells=true`` segments (one at a time).

    Raises:
        ConfigError: a non-loopback host without a token or ``allow_remote``, or a bad setting.
        ModelError: the package is missing or cannot be loaded.
        DependencyError: the web server packages are not installed.
    """
    for module in ("fastapi", "uvicorn", "multipart"):
        require(module, "runtime")

    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {port}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    chosen_token = resolve_token(token, token_file)
    check_bind(host, chosen_token, allow_remote)
    check_model_path(model)
    if cells is not None:
        check_model_path(cells)
    decode_threads: int | None = None
    lanes = inference_threads
    if workers > 1:  # each server process gets its share of the CPUs, split by the one budget
        from protloc.serve.engine import resolve_backend

        chosen = resolve_backend(model, backend)
        share = plan_service(chosen, threads=threads, cpus=max(1, usable_cpus() // workers))
        threads, decode_threads, lanes = share.threads, share.workers, inference_threads or share.lanes
    settings = ServiceSettings(
        model=str(model),
        backend=backend,
        device=device,
        threads=threads,
        decode_threads=decode_threads,
        inference_threads=lanes,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        max_pending=max_pending,
        token=chosen_token,
        allowed_hosts=host_allow_list(host, tuple(allowed_hosts)),
        cors_origins=tuple(cors_origins),
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        cell_model=None if cells is None else str(cells),
        cell_mix=cell_mix,
        max_cell_pixels=int(max_cell_mpx * 1_000_000),
    )
    _launch(settings, host=host, port=port, workers=workers, log_level=log_level)


def _launch(settings: ServiceSettings, *, host: str, port: int, workers: int, log_level: str) -> None:
    """Start uvicorn on checked ``settings``: the app in this process for one worker; otherwise ``workers``
    processes that each rebuild the settings from the environment (the token travels there, never in argv)."""
    import uvicorn

    common = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "timeout_graceful_shutdown": 10,
        "http": HeaderTimeoutH11Protocol,
    }
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_timeout)
    if workers == 1:
        from protloc.serve.app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    from protloc.model.card import read_card

    if Path(settings.model).suffix.lower() != ".onnx":
        read_card(settings.model)  # fail fast, before forking workers that would each fail
    os.environ[SETTINGS_ENV] = settings.to_environment()
    if settings.token:
        os.environ[TOKEN_ENV] = settings.token
    uvicorn.run(
        "protloc.serve.app:app_from_environment",
        factory=True,
        workers=workers,
        **common,  # type: ignore[arg-type]
    )
