"""Old import paths of protloc 0.1, before the modules were grouped into wings: each still imports, as the
module it now is, with a ``DeprecationWarning`` naming the new path. They go in the release after this one.

``protloc.inference.core`` and ``protloc.demo.job`` were modules and are wings now: their old names are answered by the
wing's ``__getattr__`` (see :func:`deprecated_attribute`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, str] = {
    "io": "data.io",
    "decoder": "data.decoder",
    "microscope": "data.microscope",
    "catalog": "data.catalog",
    "check": "data.check",
    "stats": "data.stats",
    "cache": "data.cache",
    "dataset": "data.dataset",
    "transforms": "data.transforms",
    "models": "model.network",
    "package": "model.package",
    "card": "model.card",
    "backends": "inference.backends",
    "torch_backend": "inference.torch_backend",
    "predict": "inference.predict",
    "evaluate": "inference.evaluate",
    "prediction_files": "inference.files",
    "train": "training.train",
    "config": "training.config",
    "budget": "training.budget",
    "callbacks": "training.callbacks",
    "datamodule": "training.datamodule",
    "lightning_module": "training.lightning_module",
    "losses": "training.losses",
    "run_folder": "training.run_folder",
    "ensemble": "training.ensemble",
    "export": "deployment.onnx",
    "quantize": "deployment.quantize",
    "bioimageio": "deployment.bioimageio",
    "bioimageio_compat": "deployment.bioimageio_compat",
    "explain": "explanation.explain",
    "explain_figures": "explanation.figures",
    "report": "demo.report",
}
"""old module (under ``protloc.``) -> its module now (under ``protloc.``)."""


def _warn(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes in the next release", DeprecationWarning, stacklevel)


class _Alias(importlib.abc.Loader):
    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        return None


class MovedFinder(importlib.abc.MetaPathFinder):
    """Answers ``import protloc.<old>`` with the module's new home (the same module object, so patching either
    name patches both)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, rest = fullname.partition(".")
        if prefix != "protloc" or rest not in MOVED:
            return None
        new = "protloc." + MOVED[rest]
        _warn(fullname, new, stacklevel=4)
        module = importlib.import_module(new)
        return importlib.machinery.ModuleSpec(fullname, _Alias(module), origin=module.__file__)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())


def deprecated_attribute(wing: str, old: str, module: str, name: str) -> Any:
    """``name`` from ``protloc.<wing>.<module>``, warning that ``protloc.<old>.<name>`` moved there."""
    new = f"protloc.{wing}.{module}"
    value = getattr(importlib.import_module(new), name)
    _warn(f"protloc.{old}.{name}", f"{new}.{name}")
    return value
