"""Networks: any timm backbone with C input channels, plus the seed notebook's CNN as a baseline.

:func:`create_model` is the one entry point. ``in_chans`` is the number of channels, so timm adapts a
pretrained RGB stem to 4 channels by itself. ``--pretrained`` downloads weights from the Hugging Face Hub:
where the hub is unreachable it fails at once with a clear message instead of stalling.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from difflib import get_close_matches

import torch
from torch import nn

from protloc.errors import ModelError

SEED_CNN = "seed-cnn"


class SeedCNN(nn.Module):
    """The seed notebook's network: six 3x3 conv + max-pool blocks (32-64-128-256-512-512), dropout 0.5,
    a dense layer of 512 and one output per class (sigmoid applied by the loss / at prediction)."""

    def __init__(self, in_chans: int, num_classes: int, image_size: int, drop_rate: float = 0.5) -> None:
        super().__init__()
        widths = (32, 64, 128, 256, 512, 512)
        if image_size < 2 ** len(widths):
            raise ModelError(f"seed-cnn needs images of at least {2 ** len(widths)} px, got {image_size}")
        blocks: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks)
        side = image_size // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(drop_rate),
            nn.Linear(channels * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(512, num_classes),
        )
        self.num_classes = num_classes
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face Hub can be opened within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub use only its local cache (it reads the setting at import, so patch it too)."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub_constants

    before_env, before_constant = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before_constant
        if before_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before_env


def create_model(
    name: str,
    in_chans: int,
    num_classes: int,
    *,
    pretrained: bool = False,
    image_size: int = 128,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build a network that maps ``(B, in_chans, H, W)`` to ``(B, num_classes)`` logits.

    Args:
        name: a timm model name (``resnet18``, ``densenet121``, ``efficientnet_b0``...) or ``seed-cnn``.
        in_chans: number of input channels (4 for red, green, blue, yellow).
        num_classes: number of outputs (the class scheme's size).
        pretrained: start from timm's ImageNet weights (downloaded once; needs the network or a warm cache).
        image_size: input side; only the seed CNN's dense layer depends on it.
        drop_rate: dropout before the classifier (timm models).

    Raises:
        ModelError: unknown model name, or pretrained weights that cannot be fetched.
    """
    if name == SEED_CNN:
        if pretrained:
            raise ModelError("seed-cnn has no pretrained weights; drop --pretrained")
        return SeedCNN(in_chans, num_classes, image_size, drop_rate=0.5)
    import timm

    if not timm.is_model(name):
        candidates = get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(candidates)}?" if candidates else "; see timm.list_models()"
        raise ModelError(f"unknown model {name!r}{hint} (or use {SEED_CNN})")
    if pretrained:
        if not timm.models.is_model_pretrained(name):
            raise ModelError(f"timm has no pretrained weights for {name!r}; drop --pretrained or pick another model")
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()
        try:
            with _hub_offline(offline):
                return timm.create_model(
                    name, pretrained=True, in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate
                )
        except Exception as exc:
            reason = (
                "the Hugging Face Hub is unreachable from this machine and the weights are not in the local cache"
                if offline
                else f"{exc.__class__.__name__}: {exc}"
            )
            raise ModelError(
                f"cannot load pretrained weights for {name!r}: {reason}; train without --pretrained, or run once "
                "where the network is reachable (weights are cached in ~/.cache/huggingface)"
            ) from None
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)


class PackagedNetwork(nn.Module):
    """A backbone with its input normalisation built in: takes pixels (``uint8``, or scaled to 0-1), returns logits.

    This is protloc's one implementation of the input normalisation, ``(x / 255 - mean) / std`` per channel:
    training trains this very network (``uint8`` batches cross the loader and the host-to-device copy at a
    quarter of the bytes of ``float32`` and are scaled here, on the device), and every consumer of a package
    (torch, ONNX Runtime, ensembles of folds with slightly different statistics) feeds ``uint8 / 255``.
    """

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype == torch.uint8:
            pixels = pixels.float().mul_(1.0 / 255.0)
        return self.backbone((pixels - self.mean) / self.std)


class EnsembleNetwork(nn.Module):
    """Averages the sigmoid probabilities of member networks; returns the logit of the average."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.sigmoid(m(pixels).float()) for m in self.members]).mean(dim=0)
        probabilities = probabilities.clamp(1e-7, 1 - 1e-7)
        return torch.log(probabilities) - torch.log1p(-probabilities)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
