"""The PyTorch backend for prediction, and choosing a backend by name.

:class:`TorchBackend` wraps a loaded package's network (single model or ensemble) as the batch ->
probabilities function that :func:`protloc.inference.predict_catalog` streams data through. The ONNX
Runtime backend lives in :mod:`protloc.inference` and never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from protloc.package import ModelPackage, load_package


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchBackend:
    """A package's network on a device, in eval mode, as ``batch (B, C, S, S) 0-1 floats -> probabilities``."""

    def __init__(self, package: ModelPackage, *, device: str = "auto", channels_last: bool = True) -> None:
        self.package = package
        self.device = pick_device(device)
        self.channels_last = channels_last
        model = package.build_model().to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.model(images).float()).cpu().numpy()


def load_torch_backend(model: str | Path, *, device: str = "auto") -> tuple[dict[str, Any], TorchBackend]:
    package = load_package(model)
    return package.card, TorchBackend(package, device=device)
