"""Multi-label losses: binary cross-entropy and focal loss, with optional positive-class weights.

Both take raw logits ``(B, classes)`` and multi-hot targets. Focal loss (Lin et al. 2017) scales each term by
``(1 - p_t) ** gamma`` so the many easy negatives of rare classes stop drowning the few positives; with
``gamma = 0`` it is BCE. Positive weights (``pos_weight``) multiply the positive term per class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ConfigError


class FocalLoss(nn.Module):
    """Sigmoid focal loss, averaged over batch and classes."""

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.pos_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=self.pos_weight)
        probability = torch.sigmoid(logits)
        p_t = probability * targets + (1 - probability) * (1 - targets)
        return ((1 - p_t).pow(self.gamma) * bce).mean()


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over batch and classes."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pos_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=self.pos_weight)


def positive_weights(labels: np.ndarray, kind: str, cap: float = 50.0) -> torch.Tensor | None:
    """Per-class weights for the positive term: ``none``, ``inverse`` (neg/pos) or ``sqrt-inverse``, capped."""
    if kind == "none":
        return None
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = len(labels) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1.0), 1.0)
    if kind == "sqrt-inverse":
        ratio = np.sqrt(ratio)
    elif kind != "inverse":
        raise ConfigError(f"pos_weight {kind!r} is not one of none, inverse, sqrt-inverse")
    return torch.tensor(np.clip(ratio, 1.0, cap), dtype=torch.float32)


def create_loss(name: str, *, gamma: float = 2.0, pos_weight: torch.Tensor | None = None) -> nn.Module:
    """``"focal"`` or ``"bce"``."""
    if name == "focal":
        return FocalLoss(gamma=gamma, pos_weight=pos_weight)
    if name == "bce":
        return BCELoss(pos_weight=pos_weight)
    raise ConfigError(f"loss {name!r} is not one of focal, bce")
