"""The service's settings and the checks made before it listens. Imports neither the web framework nor torch."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from protloc.errors import ConfigError

TOKEN_ENV = "PROTLOC_TOKEN"
"""Environment variable holding the bearer token when ``--token`` is not given."""

SETTINGS_ENV = "PROTLOC_SERVE_SETTINGS"
"""How :func:`protloc.serve.run` hands the settings (without the token) to worker processes."""


@dataclass
class ServiceSettings:
    """Everything that shapes one running service.

    Attributes:
        model: the model package folder (or an exported ``.onnx`` file, without explanations).
        backend: ``auto`` (ONNX Runtime when the package has ``model.onnx``, else PyTorch), ``onnx`` or ``torch``.
        device: torch device for the torch backend and explanations (``cpu``, ``cuda``, ``auto``).
        threads: ONNX Runtime intra-op threads (default: half the CPUs, leaving the rest to decoding).
        max_batch: most samples per network call when concurrent requests are micro-batched (1: off).
        max_pending: most requests in progress at once; more are answered 503 with ``Retry-After``.
        decode_threads: threads decoding uploads (default: the CPUs, at most 4).
        inference_threads: network calls at the same time (default 1).
        max_upload_mb: largest request body in MB (10^6 bytes); larger ones are answered 413.
        max_batch_samples: most samples in one ``/predict/batch`` request.
        preview_side: side in px of the pictures returned with ``?previews=true``.
        token: bearer token every API request must carry (``Authorization: Bearer TOKEN``); ``None``: open.
        cell_model: a cell model package for ``?cells=true`` (``None``: cells get the field baseline).
        cell_mix: weight of the cell model in ``cell_method=mix`` (0-1).
        cell_threads: fields segmented at the same time (each takes memory in proportion to its pixels).
        max_cell_pixels: largest field (height x width) that ``?cells=true`` segments; larger ones get 422.
    """

    model: str
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    max_batch: int = 8
    max_pending: int = 64
    decode_threads: int | None = None
    inference_threads: int = 1
    max_upload_mb: float = 64.0
    max_batch_samples: int = 64
    preview_side: int = 512
    token: str | None = None
    cell_model: str | None = None
    cell_mix: float = 0.5
    cell_threads: int = 1
    max_cell_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        self.model = str(self.model)
        if self.cell_model is not None:
            self.cell_model = str(self.cell_model)
        if not 0.0 <= self.cell_mix <= 1.0:
            raise ConfigError(f"cell_mix must lie between 0 and 1, got {self.cell_mix}")
        if self.cell_threads < 1:
            raise ConfigError(f"cell_threads must be at least 1, got {self.cell_threads}")
        if self.max_cell_pixels < 64 * 64:
            raise ConfigError(f"max_cell_pixels must be at least 4096 (64 x 64), got {self.max_cell_pixels}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_batch_samples < 1:
            raise ConfigError(f"max_batch_samples must be at least 1, got {self.max_batch_samples}")
        if not 64 <= self.preview_side <= 4096:
            raise ConfigError(f"preview_side must be between 64 and 4096 px, got {self.preview_side}")
        if self.token is not None and not self.token.strip():
            self.token = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    def to_environment(self) -> str:
        """JSON for :data:`SETTINGS_ENV` (the token travels separately, in :data:`TOKEN_ENV`)."""
        values = asdict(self)
        values.pop("token")
        return json.dumps(values)

    @classmethod
    def from_environment(cls) -> ServiceSettings:
        """The settings a parent process put in :data:`SETTINGS_ENV` and :data:`TOKEN_ENV`."""
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise ConfigError(f"{SETTINGS_ENV} is not set; start the service with `protloc serve MODEL`")
        values: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known}, token=os.environ.get(TOKEN_ENV) or None)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None) -> str | None:
    """The token given, else :data:`TOKEN_ENV` from the environment, else ``None``."""
    value = token if token is not None else os.environ.get(TOKEN_ENV)
    return value.strip() if value and value.strip() else None


def check_bind(host: str, token: str | None, allow_remote: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless explicitly allowed.

    Raises:
        ConfigError: ``host`` is not a loopback address, no token is set, and ``allow_remote`` is false.
    """
    if is_loopback(host) or token or allow_remote:
        return
    raise ConfigError(
        f"refusing to listen on {host} without a token: anyone who can reach this machine could use the service. "
        f"Set a token with --token or the {TOKEN_ENV} environment variable (clients then send "
        "'Authorization: Bearer TOKEN'), or pass --allow-remote to serve openly"
    )


def check_model_path(model: str | Path) -> Path:
    """The model path, if it exists (a clear error before anything loads)."""
    from protloc.errors import ModelError

    path = Path(model)
    if not path.exists():
        raise ModelError(f"{path}: model package not found (give the folder that holds card.json)")
    return path
