"""Inference: the one prediction core and everything that runs it on files.

The prediction core every caller runs batches through, preprocessing, TTA, ONNX Runtime (``core``); the
backend policy (``backends``); the one thread budget, decoding workers and the network's threads within the
usable CPUs (``budget``); the PyTorch backend (``torch_backend``); reading and running BioImage.IO
packages (``bioimageio``); resumable batch prediction (``predict``); scoring a labelled set (``evaluate``);
the probabilities, predictions and submission files (``files``).

May import: the top level, ``data`` and ``model``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # protloc 0.1 had a module protloc.inference: its names still resolve, with a DeprecationWarning
    from protloc._moved import deprecated_attribute

    if name.startswith("__"):
        raise AttributeError(name)
    return deprecated_attribute("inference", "inference", "core", name)
