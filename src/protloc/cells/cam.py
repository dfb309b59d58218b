"""CAM-in-mask: a field model's class activation maps averaged inside each cell's mask.

A field model that ends in global average pooling and a linear classifier (ResNets, DenseNets, EfficientNets
in timm) computes its logit for class ``k`` as the mean over the last feature map of ``w_k . f(x, y) + b_k``:
the class activation map (CAM). Averaged over the whole field it *is* the field's logit; averaged inside one
cell's mask it is the logit the field model would give that cell alone. HPA 2021 competitors scored cells this
way (0.531 mAP alone, against 0.46 for copying the field's labels), with no cell model at all.

:func:`cam_in_cells` runs the field model once on the field (at its input size, as it was trained), takes the
map, enlarges it bilinearly to a working grid of at most ``grid`` px on the longer side, averages it inside each
cell (the label image shrunk to the same grid) and returns the sigmoid: a probability per cell and class. A cell
too small to keep a pixel on the grid gets the field's logit. Needs the torch backend (the feature map is not an
output of an exported ONNX model); :mod:`protloc.explanation.explain` draws the same kind of map for people (Grad-CAM).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from protloc.errors import ModelError


def linear_head(backbone: Any) -> tuple[Any, Any]:
    """The weight ``(K, C)`` and bias ``(K,)`` of a network whose head is global average pooling + a linear layer.

    Raises:
        ModelError: the network has another head (attention pooling, a multi-layer head, no timm classifier).
    """
    import torch

    get_classifier = getattr(backbone, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    pool = getattr(getattr(backbone, "global_pool", None), "pool_type", "avg")
    if not isinstance(classifier, torch.nn.Linear) or pool != "avg" or not hasattr(backbone, "forward_features"):
        raise ModelError(
            f"{type(backbone).__name__}: CAM-in-mask needs a network that ends in average pooling and one linear "
            "layer (a timm ResNet, DenseNet or EfficientNet)"
        )
    bias = classifier.bias if classifier.bias is not None else torch.zeros(classifier.out_features)
    return classifier.weight, bias


def activation_maps(network: Any, pixels: np.ndarray) -> np.ndarray:
    """``(K, h, w)`` class logit maps of one ``(1, C, S, S)`` 0-1 input of a packaged network."""
    import torch

    backbone = network.backbone
    weight, bias = linear_head(backbone)
    parameter = next(network.parameters())
    with torch.inference_mode():
        images = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(parameter.device)
        features = backbone.forward_features((images - network.mean) / network.std)[0].float()
        maps = torch.einsum("kc,chw->khw", weight.float(), features) + bias.float()[:, None, None]
    return np.asarray(maps.cpu().numpy(), dtype=np.float32)


def cam_in_cells(
    network: Any, pixels: np.ndarray, labels: np.ndarray, cells: np.ndarray, *, grid: int = 256
) -> np.ndarray:
    """Per-cell probabilities ``(N, K)``: the field model's class activation maps averaged inside each cell.

    Args:
        network: the field model's packaged torch network (:class:`protloc.model.network.PackagedNetwork`).
        pixels: ``(1, C, S, S)`` the field as the field model takes it (0-1, resized to its input size).
        labels: ``(H, W)`` the field's label image.
        cells: ``(N,)`` the cell ids to score.
        grid: the longer side of the grid the maps are averaged on.
    """
    maps = activation_maps(network, pixels)
    height, width = labels.shape
    scale = min(1.0, grid / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST).ravel()
    top = int(max(labels.max(initial=0), 1)) + 1
    counts = np.bincount(small, minlength=top)
    field_logit = maps.reshape(len(maps), -1).mean(axis=1)
    out = np.empty((len(cells), len(maps)), np.float64)
    present = counts[cells] > 0
    for k, plane in enumerate(maps):
        enlarged = cv2.resize(plane, size, interpolation=cv2.INTER_LINEAR).ravel()
        sums = np.bincount(small, weights=enlarged, minlength=top)
        out[:, k] = np.where(present, sums[cells] / np.maximum(counts[cells], 1), field_logit[k])
    return (1.0 / (1.0 + np.exp(-out))).astype(np.float32)
