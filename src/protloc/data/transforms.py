"""Augmentation (albumentations on ``(H, W, C)`` uint8 arrays).

Fluorescence fields have no up, down, left or right, so the 8 flips/rotations are free augmentation; small
shifts, scales and rotations, and per-channel brightness/contrast changes (stainings and exposures differ
per channel) add the rest. When the cache stores a larger image than the network's input, training takes a
random crop and evaluation the centre crop. Normalisation (per-channel mean and std on the 0-1 scale) is
computed from the training images, applied per batch on the device by the packaged network
(:class:`protloc.model.network.PackagedNetwork`) and stored in the model card, so prediction normalises the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# albumentations asks its web server for a newer version on every import (every DataLoader worker too): on an
# offline cluster node or microscope PC that is a warning per process and a wait for the network to fail.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np


class PerChannelBrightnessContrast(A.ImageOnlyTransform):
    """Scale and shift each channel independently: ``x * (1 + c) + b * 255`` with c, b drawn per channel."""

    def __init__(self, brightness_limit: float = 0.1, contrast_limit: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.brightness_limit = brightness_limit
        self.contrast_limit = contrast_limit

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        channels = data["image"].shape[-1] if data["image"].ndim == 3 else 1
        rng = self.py_random
        gains = [1.0 + rng.uniform(-self.contrast_limit, self.contrast_limit) for _ in range(channels)]
        shifts = [rng.uniform(-self.brightness_limit, self.brightness_limit) * 255.0 for _ in range(channels)]
        return {"gains": gains, "shifts": shifts}

    def apply(
        self, img: np.ndarray, gains: Sequence[float] = (), shifts: Sequence[float] = (), **params: Any
    ) -> np.ndarray:
        out = img.astype(np.float32) * np.asarray(gains, np.float32) + np.asarray(shifts, np.float32)
        # Background-subtracted images are 0 outside cells: keep them 0 rather than lifting the floor.
        out = np.where(img > 0, out, 0.0)
        return np.clip(out, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit")


def train_transform(kind: str, stored_size: int, input_size: int) -> A.Compose:
    """The training augmentation: ``"standard"``, ``"light"`` (flips/rotations only) or ``"none"``."""
    steps: list[Any] = []
    if stored_size > input_size:
        steps.append(A.RandomCrop(input_size, input_size))
    if kind in ("standard", "light"):
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    if kind == "standard":
        steps += [
            A.Affine(
                translate_percent=(-0.0625, 0.0625),
                scale=(0.9, 1.1),
                rotate=(-20, 20),
                border_mode=0,
                fill=0,
                p=0.5,
            ),
            PerChannelBrightnessContrast(brightness_limit=0.05, contrast_limit=0.2, p=0.5),
        ]
    return A.Compose(steps)


def eval_transform(stored_size: int, input_size: int) -> A.Compose:
    """Evaluation: the centre crop when the stored image is larger than the input, else nothing."""
    steps: list[Any] = []
    if stored_size > input_size:
        steps.append(A.CenterCrop(input_size, input_size))
    return A.Compose(steps)


def apply_chw(transform: A.Compose, image_chw: np.ndarray) -> np.ndarray:
    """Run an albumentations pipeline on a ``(C, H, W)`` array and return ``(C, H, W)``."""
    if not transform.transforms:
        return image_chw
    result = transform(image=np.ascontiguousarray(image_chw.transpose(1, 2, 0)))["image"]
    return np.ascontiguousarray(result.transpose(2, 0, 1))
