"""The service's settings and the checks made before it listens. Imports neither the web framework nor torch."""

from __future__ import annotations

import dataclasses
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
        threads: ONNX Runtime intra-op threads per network call (default 1 per lane up to 8 CPUs; see
            :func:`protloc.inference.budget.plan_service`).
        max_batch: most samples per network call when concurrent requests are micro-batched (1: off).
        max_pending: most requests in progress at once; more are answered 503 with ``Retry-After``.
        decode_threads: threads decoding uploads (default: the CPUs the network leaves, 1-4).
        inference_threads: network calls at the same time (default: one per CPU with ONNX Runtime, the
            budget's lanes; 1 with PyTorch).
        max_upload_mb: largest request body in MB (10^6 bytes); larger ones are answered 413.
        max_batch_samples: most samples in one ``/predict/batch`` request.
        preview_side: side in px of the pictures returned with ``?previews=true``.
        token: bearer token every API request must carry (``Authorization: Bearer TOKEN``); ``None``: open.
        allowed_hosts: ``Host`` header names accepted besides the loopback names (``localhost``, ``127.0.0.1``,
            ``[::1]``, always accepted); a request naming any other host is refused (400), which stops
            DNS-rebinding pages. ``"*"`` accepts any host.
        cors_origins: web origins (``https://lab.example.org``) whose pages may call the API from a browser;
            empty (the default): no CORS headers, and a cross-site POST (one whose ``Origin`` is not this
            service) is refused (403).
        header_timeout: seconds a client may take to send a request's headers before the connection is closed.
        body_timeout: seconds a client may take to send a request body (and at most a third of it between two
            chunks) before it is answered 408; bodies are received before a request is admitted to the queue.
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
    inference_threads: int | None = None
    max_upload_mb: float = 64.0
    max_batch_samples: int = 64
    preview_side: int = 512
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    cell_model: str | None = None
    cell_mix: float = 0.5
    cell_threads: int = 1
    max_cell_pixels: int = 4096 * 4096

    def with_cell_package(self) -> ServiceSettings:
        """These settings with a cell model package served as it is: a package made by ``protloc train DATA
        --cells`` carries its field model, which then answers the fields while the package answers
        ``?cells=true``. Other models are returned unchanged.

        Raises:
            ConfigError: the served package is a cell model and ``cell_model`` names another one.
        """
        from protloc.cells.predict import carried_field_model, is_cell_model
        from protloc.model.card import read_card

        if Path(self.model).suffix.lower() == ".onnx" or not Path(self.model).is_dir():
            return self
        card = read_card(self.model)
        field_model = carried_field_model(self.model, card) if is_cell_model(card) else None
        if field_model is None:
            return self
        if self.cell_model is not None and Path(self.cell_model).resolve() != Path(self.model).resolve():
            raise ConfigError(f"{self.model} is a cell model package; serve it alone, or a field model with --cells")
        return dataclasses.replace(self, model=str(field_model), cell_model=self.model)

    def __post_init__(self) -> None:
        self.allowed_hosts = tuple(str(h).strip().lower() for h in self.allowed_hosts if str(h).strip())
        self.cors_origins = tuple(check_origin(o) for o in self.cors_origins if str(o).strip())
        if not 0 < self.header_timeout <= 3600 or not 0 < self.body_timeout <= 3600:
            raise ConfigError(
                f"header_timeout and body_timeout must be between 0 and 3600 s, got "
                f"{self.header_timeout} and {self.body_timeout}"
            )
        if self.max_pending < 1:
            raise ConfigError(f"max_pending must be at least 1, got {self.max_pending}")
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


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
"""``Host`` names every service accepts (it listens on loopback by default)."""


def resolve_token(token: str | None, token_file: str | Path | None = None) -> str | None:
    """The token: ``token``, else the first line of ``token_file``, else :data:`TOKEN_ENV`, else ``None``.

    A file (or the environment) keeps the token out of the process list, where ``--token VALUE`` shows.

    Raises:
        ConfigError: both a token and a token file, or a token file that is missing, unreadable or empty.
    """
    if token is not None and token_file is not None:
        raise ConfigError("give the token either with --token or with --token-file, not both")
    if token_file is not None:
        path = Path(token_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the token file ({exc.__class__.__name__})") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise ConfigError(f"{path}: the token file is empty; put the token on its first line")
        return value
    given = token if token is not None else os.environ.get(TOKEN_ENV)
    return given.strip() if given and given.strip() else None


def check_origin(origin: str) -> str:
    """A CORS origin as browsers send it: ``scheme://host[:port]``, no path (``*`` is refused: name them).

    Raises:
        ConfigError: not of that form.
    """
    from urllib.parse import urlsplit

    text = str(origin).strip().rstrip("/")
    parts = urlsplit(text)
    if text == "*" or parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ConfigError(
            f"CORS origin {origin!r} must be scheme://host[:port] (e.g. https://lab.example.org), one per "
            "--cors-origin; '*' is refused, since any web page could then use the service"
        )
    return text.lower()


def host_allow_list(host: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The ``Host`` names a service listening on ``host`` accepts: loopback, a specific bind address, ``extra``.

    A wildcard bind (``0.0.0.0``, ``::``) adds this machine's name; other names must be given (``--allowed-host``).
    """
    names = [*LOOPBACK_HOSTS, *extra]
    bind = host.strip().lower()
    if bind in ("0.0.0.0", "::", ""):
        import socket

        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
    elif not is_loopback(bind):
        names.append(f"[{bind}]" if ":" in bind else bind)
    return tuple(dict.fromkeys(names))


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
