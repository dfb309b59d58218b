"""The request gate: ASGI middleware checking host, origin, token, upload size, body arrival and load first."""

from __future__ import annotations

import asyncio
import hmac
import logging
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from typing import IO, Any

from protloc.serve.engine import InferenceEngine
from protloc.serve.schemas import ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("protloc.serve")


PROTECTED_PATHS = frozenset(("/model", "/predict", "/predict/batch", "/explain"))
"""Paths that need the token when one is set (the page, /docs, /openapi.json and /health stay open)."""

HEAVY_PATHS = frozenset(("/predict", "/predict/batch", "/explain"))
"""Paths whose requests count against ``max_pending`` (they carry uploads and run the network)."""


SPOOL_MEMORY = 1 << 18
"""Bytes of a request body kept in memory while it arrives (256 KiB); the rest goes to a temporary file."""

MAX_RECEIVING = 1024
"""Request bodies arriving at once (at most 256 MiB in memory); more are answered 503."""

CHUNK = 1 << 16


class RequestGate:
    """ASGI middleware in front of every route: it refuses what should never reach the service, and admits a
    heavy request to the inference queue only once its whole body has arrived.

    In order, before any route runs:

    1. ``Host`` must be an allowed name (loopback by default): a page served from elsewhere that rebinds its DNS
       name to 127.0.0.1 sends its own name, and is refused (400).
    2. A cross-site ``POST`` (an ``Origin`` other than this service's and not a configured CORS origin, or
       ``Sec-Fetch-Site: cross-site``) is refused (403): a web page the user visits cannot post to the service.
    3. The token (401), and a declared ``Content-Length`` over the upload limit (413).
    4. For the heavy routes, the body is received (to disk past 256 KiB) with a total ``body_timeout`` and an idle
       limit between chunks (408 when exceeded), cut off past the upload limit (413), and checked to be a
       complete multipart body (400 when its closing boundary is missing: an upload cut off mid-file). Only
       then is the request admitted (503 beyond ``max_pending``): a client that sends headers and a few body
       bytes holds a connection, never a place in the queue. At most ``max_receiving`` (1024) bodies arrive at once.

    The routes check the token again (for the OpenAPI schema).
    """

    def __init__(
        self,
        app: ASGIApp,
        engine: InferenceEngine,
        max_bytes: int,
        token: str | None,
        allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]"),
        cors_origins: tuple[str, ...] = (),
        body_timeout: float = 60.0,
        max_receiving: int | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.max_bytes = max_bytes
        self.token = token.encode() if token else None
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.cors_origins = frozenset(cors_origins)
        self.body_timeout = body_timeout
        self.max_receiving = max_receiving or MAX_RECEIVING
        self.receiving = 0

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

    def _host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = host.strip().lower()
        if name.startswith("["):  # [::1]:8000
            name = name[: name.find("]") + 1] if "]" in name else name
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        return name in self.allowed_hosts

    def _cross_site(self, host: str, headers: list[tuple[bytes, bytes]]) -> str | None:
        origin = _header(headers, b"origin")
        if origin is not None and origin != "null":
            origin = origin.strip().rstrip("/").lower()
            if origin in self.cors_origins:
                return None
            netloc = origin.split("://", 1)[-1]
            if netloc == host.strip().lower():
                return None
            return origin
        if origin == "null" or _header(headers, b"sec-fetch-site") == "cross-site":
            return origin or "another site"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = scope.get("headers", [])
        host = _header(headers, b"host") or ""
        if not self._host_allowed(host):
            await _send_error(
                send,
                400,
                f"Host {host[:80]!r} is not served here; this service answers to "
                f"{', '.join(sorted(self.allowed_hosts))} (start it with --allowed-host NAME to add a name)",
                [(b"connection", b"close")],
            )
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS"):
            refused = self._cross_site(host, headers)
            if refused is not None:
                await _send_error(
                    send,
                    403,
                    f"cross-site request from {refused[:80]} refused; a web page may call this service only "
                    "when it was started with --cors-origin for that page's origin",
                )
                return
        if path in PROTECTED_PATHS and not self._authorised(headers):
            given = any(k == b"authorization" for k, _ in headers)
            detail = "wrong bearer token" if given else "this service needs a token: send 'Authorization: Bearer TOKEN'"
            await _send_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])
            return
        length = _header(headers, b"content-length")
        declared: int | None = None
        if length is not None:
            if not (length.isascii() and length.isdecimal()):
                await _send_error(send, 400, "invalid Content-Length header")
                return
            declared = int(length)
            if declared > self.max_bytes:
                await _send_error(send, 413, self._too_large(declared), [(b"connection", b"close")])
                return
        if path in HEAVY_PATHS and method == "POST":
            await self._receive_then_admit(scope, receive, send, headers)
            return
        await self._limited(scope, receive, send)

    async def _receive_then_admit(
        self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if self.receiving >= self.max_receiving:
            detail = f"{self.receiving} uploads are arriving at once (limit {self.max_receiving}); retry in a moment"
            await _send_error(send, 503, detail, [(b"retry-after", b"1")])
            return
        self.receiving += 1
        try:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as body:
                problem = await self._spool(receive, body)
                if problem is None:
                    problem = _incomplete_multipart(headers, body)
                if problem is not None:
                    status, detail = problem
                    await _send_error(send, status, detail, [(b"connection", b"close")])
                    return
                if not self.engine.try_admit():
                    await _send_error(send, 503, self.engine.busy_message(), [(b"retry-after", b"1")])
                    return
                try:
                    body.seek(0)
                    await self.app(scope, _replay(body, receive), send)
                finally:
                    self.engine.release()
        finally:
            self.receiving -= 1

    async def _spool(self, receive: Receive, body: IO[bytes]) -> tuple[int, str] | None:
        """Receive the whole body into ``body``; ``(status, detail)`` when it is too slow, too large or cut."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        idle = max(1.0, self.body_timeout / 3)
        received = 0
        while True:
            left = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, min(idle, left)))
            except TimeoutError:
                return 408, (
                    f"the request body did not arrive in time ({received} bytes received; this service waits "
                    f"{self.body_timeout:g} s for a body, {idle:g} s between its parts); send it at once"
                )
            if message["type"] == "http.disconnect":
                return 400, "the client disconnected before the request body was complete"
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                return 413, self._too_large(None)
            body.write(chunk)
            if not message.get("more_body", False):
                return None

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
        if not state["exceeded"]:
            return
        if not state["started"]:
            await _send_error(send, 413, self._too_large(None), [(b"connection", b"close")])
            return
        # The answer had begun when the body passed the limit: its rest was withheld and no 413 can follow.
        log.warning(
            "%s %s: the request body passed the upload limit (%d bytes) after the answer had started; "
            "the rest of the answer was withheld and the connection is closed",
            scope.get("method", "?"),
            scope.get("path", "?"),
            self.max_bytes,
        )


class _BodyTooLargeError(Exception):
    pass


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    value = next((v for k, v in headers if k == name), None)
    return value.decode("latin-1") if value is not None else None


def _incomplete_multipart(headers: list[tuple[bytes, bytes]], body: IO[bytes]) -> tuple[int, str] | None:
    """400 when a multipart body lacks its closing boundary (the upload was cut off mid-file)."""
    content_type = _header(headers, b"content-type") or ""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    boundary = ""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return 400, "multipart/form-data without a boundary; let your HTTP client build the form"
    closing = b"--" + boundary.encode("latin-1") + b"--"
    size = body.seek(0, 2)
    body.seek(max(0, size - len(closing) - 1024))
    if closing not in body.read():
        return 400, (
            "the multipart body ends before its closing boundary: the upload was cut off (or malformed); "
            "send the whole request again"
        )
    return None


def _replay(body: IO[bytes], receive: Receive) -> Receive:
    """A ``receive`` that hands the spooled body to the route in chunks, then waits on the client as usual."""
    total = body.seek(0, 2)
    body.seek(0)
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        chunk = body.read(CHUNK)
        done = body.tell() >= total
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return replay


async def _send_error(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = ErrorResponse(detail=detail).model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
