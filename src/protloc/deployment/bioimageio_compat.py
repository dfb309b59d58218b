"""Make bioimageio.spec 0.5.12 work under pydantic >= 2.14 (the one thing this module owns).

bioimageio.core 0.11 (the newest release) pins bioimageio.spec 0.5.12, whose wrap serialisers call pydantic's
handler as ``handler(value, info)``; pydantic 2.14 takes the second argument as an index key and refuses it,
so no model description with weights can be validated, saved or tested. bioimageio.spec 0.5.14 fixed it by
calling ``handler(value)``. :func:`ensure_compatible` detects the failure by trying it and, only then, gives
the three affected functions that same fix: their source with the call rewritten, compiled in their own
module, put in place of their code (the functions are referenced by schemas built at import time, so they
cannot simply be replaced). Remove this module once bioimageio.core accepts bioimageio.spec >= 0.5.14.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

from protloc.errors import DependencyError

_CALL = re.compile(r"handler\(\s*(\w+),\s*info,[^\n]*\n\s*\)")


def _broken() -> bool:
    from bioimageio.spec.model import v0_5

    probe = v0_5.OnnxWeightsDescr.model_construct(source=Path("probe.onnx"), opset_version=18)
    try:
        probe.model_dump(mode="json")
    except Exception as exc:
        if "index_key" in str(exc):
            return True
        raise
    return False


def _fix(function: Any) -> None:
    source = textwrap.dedent(inspect.getsource(function))
    source = source[source.index("def ") :]  # without its decorators
    fixed = _CALL.sub(r"handler(\1)", source)
    if fixed == source:
        raise DependencyError(
            f"bioimageio.spec's {function.__qualname__} does not fit this pydantic; install bioimageio.spec>=0.5.14"
        )
    namespace: dict[str, Any] = {}
    exec(compile(fixed, inspect.getsourcefile(function) or "<bioimageio>", "exec"), function.__globals__, namespace)
    function.__code__ = namespace[function.__name__].__code__


def ensure_compatible() -> None:
    """Import bioimageio.spec (the ``bioimageio`` extra) and mend it where pydantic refuses its serialisers."""
    try:
        from bioimageio.spec._internal import io_packaging, validated_string_with_inner_node
        from bioimageio.spec.model import v0_4
    except ImportError:
        raise DependencyError("BioImage.IO needs bioimageio.spec: pip install 'protloc[bioimageio]'") from None
    if not _broken():
        return
    inner = validated_string_with_inner_node.ValidatedStringWithInnerNode
    serializer = vars(inner)["_serialize"]
    serializer = getattr(serializer, "wrapped", serializer)  # under pydantic's decorator
    for function in (io_packaging.package_file_descr_serializer, v0_4.package_weights, serializer):
        _fix(function)
    if _broken():  # pragma: no cover - a bioimageio.spec this fix does not know
        raise DependencyError("bioimageio.spec does not work with this pydantic; install bioimageio.spec>=0.5.14")
