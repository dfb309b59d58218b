"""Which network runs a prediction, and loading it: the one backend policy of protloc. Torch-free.

Two backends turn a batch of ``(B, C, S, S)`` float32 pixels in 0-1 into sigmoid probabilities: ``torch``
(PyTorch, :mod:`protloc.inference.torch_backend`) and ``onnx`` (ONNX Runtime on an exported model,
:class:`protloc.inference.core.OnnxBackend`). ``auto`` chooses by what the caller values:

* ``throughput`` (batch prediction, evaluation, the watcher): on the CPU, ONNX Runtime when the package has
  ``model.onnx`` and ONNX Runtime is installed (1.2-1.6x PyTorch eager, both float32, and it runs in lanes:
  BENCHMARKS.md "Inference" and "Thread budget"; an int8 file from ``export --int8`` runs when named);
  PyTorch on a GPU (``device`` ``auto`` with CUDA available, or a device named) and over several devices, and
  wherever the package has no ``model.onnx``; ONNX Runtime for an exported ``.onnx`` file or where PyTorch is
  missing (the ``protloc[runtime]`` install).
* ``latency`` (the HTTP service): ONNX Runtime when the package has ``model.onnx`` and ONNX Runtime is
  installed (a single CPU request is faster there, benchmarks/bench_serve.py), else PyTorch.

Either way an exported ``.onnx`` file can only run on ONNX Runtime, and a missing runtime is a one-line
:class:`~protloc.errors.ConfigError` or :class:`~protloc.errors.ModelError` saying what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from protloc.errors import ConfigError, ModelError
from protloc.model.card import ONNX_FILE, ModelCard, resolve_package_path

if TYPE_CHECKING:
    from protloc.inference.core import Backend

BACKENDS = ("auto", "torch", "onnx")
Preference = Literal["throughput", "latency"]


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _has_onnx(model: str | Path) -> bool:
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return True
    try:
        return (resolve_package_path(path) / ONNX_FILE).is_file()
    except ModelError:
        return False


def resolve_backend(
    model: str | Path, backend: str = "auto", *, prefer: Preference = "throughput", device: str = "auto"
) -> str:
    """The backend that runs ``model``: ``backend`` itself when named, else the choice of ``auto`` (see the
    module docstring; ``device``: where the caller would run PyTorch, ``auto`` for a GPU when one is there).

    Raises:
        ConfigError: an unknown backend name, or ``torch`` asked for without PyTorch (or for an ``.onnx`` file).
        ModelError: ``auto`` finds nothing installed that can run this model.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    from protloc.inference.bioimageio import is_bioimageio

    is_onnx_file = Path(model).suffix.lower() == ".onnx" or is_bioimageio(model)
    if backend == "torch":
        if is_bioimageio(model):
            raise ConfigError(f"{model}: a BioImage.IO package runs on ONNX Runtime; drop --backend torch")
        if is_onnx_file:
            raise ConfigError(f"{model}: an exported ONNX file runs on the onnx backend; drop --backend torch")
        if not torch_available():
            raise ConfigError(
                "the torch backend needs PyTorch, which this install lacks (pip install 'protloc[train]'); "
                "with ONNX Runtime alone use --backend onnx on an exported model (protloc export MODEL)"
            )
        return "torch"
    if backend == "onnx":
        return "onnx"
    has_onnx = _has_onnx(model)
    if is_onnx_file or (has_onnx and onnxruntime_available() and (prefer == "latency" or not on_gpu(device))):
        return "onnx"
    if torch_available():
        return "torch"
    if has_onnx:
        return "onnx"
    raise ModelError(
        f"{model}: no {ONNX_FILE} and PyTorch is not installed; run `protloc export {model}` where PyTorch is "
        "installed, or install it: pip install 'protloc[train]'"
    )


def on_gpu(device: str) -> bool:
    """Whether PyTorch would run on an accelerator for ``device``: ``cpu`` never, ``auto`` when CUDA is there
    (PyTorch is imported only to ask), any other name (``cuda``, ``cuda:1``, ``mps``) always."""
    if device == "cpu":
        return False
    if device != "auto":
        return True
    if not torch_available():
        return False
    import torch

    return bool(torch.cuda.is_available())


def read_model_card(model: str | Path) -> ModelCard:
    """The card of any model protloc runs: a package folder (or its card.json), an exported ``.onnx`` file, or
    a BioImage.IO package protloc exported; nothing is loaded but the card.

    Raises:
        ModelError: not a model protloc can run, or its card is invalid.
    """
    from protloc.inference.bioimageio import is_bioimageio, read_bioimageio_card
    from protloc.model.card import read_card

    if is_bioimageio(model):
        return read_bioimageio_card(model)
    return read_card(model)


def load_backend(
    model: str | Path,
    backend: str = "auto",
    *,
    device: str = "auto",
    threads: int | None = None,
    prefer: Preference = "throughput",
    spin: bool = True,
) -> tuple[ModelCard, Backend]:
    """The card and a callable backend for a package (or an exported ``.onnx`` file); see :func:`resolve_backend`.
    ``threads`` and ``spin`` (ONNX Runtime) come from :mod:`protloc.inference.budget`."""
    chosen = resolve_backend(model, backend, prefer=prefer, device=device)
    from protloc.inference.bioimageio import is_bioimageio, load_bioimageio

    if is_bioimageio(model):
        return load_bioimageio(model, threads=threads)
    if chosen == "onnx":
        from protloc.inference.core import load_onnx

        return load_onnx(model, threads=threads, spin=spin)
    from protloc.inference.torch_backend import load_torch_backend

    return load_torch_backend(model, device=device)
