"""The microscope-facing HTTP service: JSON API, a web page at ``/`` and the API reference at ``/docs``.

Start it with ``protloc serve MODEL`` (:func:`run`), or build the ASGI app yourself::

    from protloc.serve import create_app

    app = create_app("runs/cpu-fold0/model", backend="onnx")   # then: uvicorn.run(app)

Importing this package is light: the web framework is imported by :func:`create_app` and :func:`run`, and
torch only for the torch backend and explanations. See ``docs/service.md``.

May import: the top level, ``data``, ``model``, ``inference``, ``explanation`` and ``cells``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protloc.serve.server import run
from protloc.serve.settings import ServiceSettings, check_bind, is_loopback

if TYPE_CHECKING:
    from protloc.serve.app import create_app

__all__ = ["ServiceSettings", "check_bind", "create_app", "is_loopback", "run"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from protloc.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
