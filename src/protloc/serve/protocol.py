"""The HTTP connection: uvicorn's h11 protocol with a deadline for each request's headers.

uvicorn closes an idle keep-alive connection, but waits forever for the headers of a request that has begun:
a client that sends a few header bytes and stops keeps its connection (and a file descriptor) open for good.
:class:`HeaderTimeoutH11Protocol` closes a connection whose next request's headers have not all arrived
:data:`HEADER_TIMEOUT_ENV` seconds (default 10) after the connection opened or its previous response ended. The
setting travels in the environment because uvicorn's worker processes import this class afresh. Bodies have
their own limits, in :class:`protloc.serve.gate.RequestGate`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "PROTLOC_HEADER_TIMEOUT"
"""Environment variable with the header deadline in seconds (set by :func:`protloc.serve.run`)."""


class HeaderTimeoutH11Protocol(H11Protocol):
    """h11 protocol that closes connections whose request headers are late (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        try:
            self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV) or 10.0)
        except ValueError:
            self.header_timeout = 10.0
        self._arm_header_deadline()

    _header_deadline: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        self._waiting_since_cycle: Any = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.cycle is self._waiting_since_cycle and not self.transport.is_closing():
            self.transport.close()  # no new request's headers arrived in time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cancel_header_deadline()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)
