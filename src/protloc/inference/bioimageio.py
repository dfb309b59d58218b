"""Reading a BioImage.IO model package that protloc exported (a zip or an unpacked folder), and running it as
its description says, for ``protloc predict`` / ``protloc watch`` / the service (the export side is
:mod:`protloc.deployment.bioimageio`).

The package's ``config.protloc.model.card`` is protloc's model card; its ONNX weights run on ONNX Runtime with the
preprocessing and postprocessing ops of the description (:class:`SpecPipelineBackend`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protloc.errors import ModelError
from protloc.inference.core import OnnxBackend
from protloc.model.card import ModelCard, check_card

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
"""The file names of a package's description, in order of preference."""


def is_bioimageio(path: str | Path) -> bool:
    """A BioImage.IO package: a ``.zip`` holding ``rdf.yaml``/``bioimageio.yaml``, or a folder with one."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in RDF_NAMES)
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name in archive.namelist() for name in RDF_NAMES)
    return False


class SpecPipelineBackend:
    """Runs a protloc BioImage.IO package as its description says: 0-1 pixels -> (x 255, the preprocessing
    ops) -> ONNX Runtime -> postprocessing ops -> probabilities. Implements :class:`protloc.inference.core.Backend`.
    """

    def __init__(self, onnx_path: Path, pre: Sequence[dict[str, Any]], post: Sequence[dict[str, Any]], **kw: Any):
        self.network = OnnxBackend(onnx_path, **kw)
        self.pre = [spec_operation(op, "preprocessing") for op in pre]
        self.post = [spec_operation(op, "postprocessing") for op in post]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, np.float32) * np.float32(255.0)
        for op in self.pre:
            x = op(x)
        return np.asarray(
            self.network.session.run(None, {self.network.input_name: np.ascontiguousarray(x, np.float32)})[0]
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        y = self.logits(batch).astype(np.float64)
        for op in self.post:
            y = op(y)
        return np.asarray(y, np.float32)


def _along_channels(values: Any) -> Any:
    if isinstance(values, list):
        return np.asarray(values, np.float32).reshape(1, -1, 1, 1)
    return np.float32(values)


def spec_operation(op: dict[str, Any], where: str) -> Callable[[np.ndarray], np.ndarray]:
    name, kwargs = op.get("id"), op.get("kwargs") or {}
    axis = kwargs.get("axis")
    if axis not in (None, "channel"):
        raise ModelError(f"{where} {name} along axis {axis!r}: protloc runs only per-channel or whole-tensor ops")
    if name == "scale_linear":
        gain, offset = _along_channels(kwargs.get("gain", 1.0)), _along_channels(kwargs.get("offset", 0.0))
        return lambda x: x * gain + offset
    if name == "fixed_zero_mean_unit_variance":
        mean, std = _along_channels(kwargs["mean"]), _along_channels(kwargs["std"])
        return lambda x: (x - mean) / std
    if name == "sigmoid":
        return lambda y: 1.0 / (1.0 + np.exp(-y))
    if name == "ensure_dtype":
        return lambda x: x
    raise ModelError(f"this BioImage.IO package uses {where} {name!r}, which protloc does not run")


def read_description(path: str | Path) -> dict[str, Any]:
    """The parsed ``rdf.yaml`` of a package (zip or folder)."""
    import yaml

    path = Path(path)
    try:
        if path.is_dir():
            text = next((path / n).read_text("utf-8") for n in RDF_NAMES if (path / n).is_file())
        else:
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in RDF_NAMES if n in archive.namelist())
                text = archive.read(name).decode("utf-8")
        rdf = yaml.safe_load(text)
    except (StopIteration, OSError, zipfile.BadZipFile, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable BioImage.IO package ({exc.__class__.__name__})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ModelError(f"{path}: its description is not a BioImage.IO model")
    return rdf


def load_bioimageio(path: str | Path, *, threads: int | None = None) -> tuple[ModelCard, SpecPipelineBackend]:
    """The card and a backend for a BioImage.IO package that protloc exported (zip or unpacked folder).

    Raises:
        ModelError: not a protloc package, no ONNX weights, a weights file that does not match its checksum,
            or processing protloc does not run.
    """
    path = Path(path)
    rdf = read_description(path)
    card = ((rdf.get("config") or {}).get("protloc") or {}).get("card")
    if card is None:
        raise ModelError(f"{path}: a BioImage.IO model, but not one exported by protloc (no config.protloc.model.card)")
    typed = check_card(card, where=str(path))
    onnx = (rdf.get("weights") or {}).get("onnx")
    if not onnx:
        raise ModelError(f"{path}: this BioImage.IO package has no ONNX weights, which protloc runs")
    inputs, outputs = rdf["inputs"][0], rdf["outputs"][0]
    folder = Path(tempfile.mkdtemp(prefix="protloc-bioimageio-"))
    weights = folder / Path(onnx["source"]).name
    try:
        if path.is_dir():
            shutil.copyfile(path / onnx["source"], weights)
        else:
            with zipfile.ZipFile(path) as archive:
                weights.write_bytes(archive.read(onnx["source"]))
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if onnx.get("sha256") and digest != onnx["sha256"]:
            raise ModelError(f"{path}: {onnx['source']} does not match its sha256 in the description (damaged?)")
        backend = SpecPipelineBackend(
            weights, inputs.get("preprocessing") or [], outputs.get("postprocessing") or [], threads=threads
        )
    except (OSError, KeyError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ModelError(f"{path}: cannot read its ONNX weights ({exc.__class__.__name__}: {exc})") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(backend, shutil.rmtree, folder, True)
    return typed, backend
