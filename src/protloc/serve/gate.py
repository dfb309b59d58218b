"""The request gate: ASGI middleware that checks the token, the upload size and the load before a body is read."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from protloc.serve.engine import InferenceEngine
from protloc.serve.schemas import ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
