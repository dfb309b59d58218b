"""Pictures of segmented fields: the composite with each cell's outline coloured by its labels.

:func:`draw_outlines` is plain numpy + scikit-image and returns an ``(H, W, 3)`` ``uint8`` picture (for the
report, the service and the docs); :func:`outlines_figure` adds a legend of the classes with matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from protloc.plots import composite_rgb, stretch_for_display
from protloc.utils import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UNLABELLED = (255, 255, 255)
"""Outline colour of a cell with no class (or when no labels are given)."""


def class_colours(n_classes: int) -> np.ndarray:
    """``(n_classes, 3)`` ``uint8`` distinct colours (matplotlib's tab20, then hsv beyond 20 classes)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if n_classes <= 20 else colormaps["hsv"]
    steps = np.arange(n_classes) / (20 if n_classes <= 20 else n_classes)
    return (np.asarray(cmap(steps))[:, :3] * 255).round().astype(np.uint8)


def _shrink(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if labels.shape == shape:
        return labels
    return np.asarray(cv2.resize(labels.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST))


def draw_outlines(
    image: np.ndarray,
    channels: Sequence[str],
    labels: np.ndarray,
    *,
    cell_classes: Mapping[int, Sequence[int]] | None = None,
    n_classes: int = 0,
    side: int | None = 768,
    thickness: int = 2,
    stretch: bool = True,
) -> np.ndarray:
    """The field's composite with every cell outlined; a cell's outline takes the colour of its first class.

    Args:
        image: ``(C, H, W)`` ``uint8`` field in ``channels`` order.
        labels: ``(H, W)`` label image of the field.
        cell_classes: cell id -> class indices (the first one colours the outline); cells absent or with no
            class are outlined in white. Needs ``n_classes``.
        n_classes: size of the class scheme (sets the palette, see :func:`class_colours`).
        side: longer side of the picture in px (``None``: the field's size).
        thickness: outline width in picture px.
        stretch: brighten dim channels for display (percentile stretch).
    """
    if image.shape[1:] != labels.shape:
        raise ValueError(f"field {image.shape} and labels {labels.shape} differ in size")
    shown = stretch_for_display(image) if stretch else image
    rgb = composite_rgb(shown, channels)
    if side is not None and max(rgb.shape[:2]) != side:
        scale = side / max(rgb.shape[:2])
        shape = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
        rgb = np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA))
    small = _shrink(labels, rgb.shape[:2])
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(small, mode="inner")
    if thickness > 1:
        kernel = np.ones((thickness, thickness), np.uint8)
        grown = cv2.dilate(edges.astype(np.uint8), kernel) > 0
        edges = grown & (small > 0)
    palette = class_colours(n_classes) if n_classes else np.zeros((0, 3), np.uint8)
    lookup = np.tile(np.asarray(UNLABELLED, np.uint8), (int(small.max(initial=0)) + 1, 1))
    for cell, classes in (cell_classes or {}).items():
        if 0 < cell < len(lookup) and len(classes):
            lookup[cell] = palette[int(classes[0])]
    out = rgb.copy()
    out[edges] = lookup[small[edges]]
    return out


def write_picture(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` ``uint8`` RGB picture as PNG, atomically."""
    path = Path(path)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"{path}: could not encode the picture")
    with atomic_path(path) as temp:
        encoded.tofile(temp)
    return path


def outlines_figure(
    picture: np.ndarray,
    *,
    class_names: Sequence[str] = (),
    shown_classes: Sequence[int] = (),
    title: str = "",
) -> Figure:
    """A figure of a :func:`draw_outlines` picture with a legend of ``shown_classes`` (indices into names)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    figure = Figure(figsize=(7, 7.4 if shown_classes else 7), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(picture)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=10)
    if shown_classes:
        colours = class_colours(len(class_names)) / 255.0
        handles = [Patch(color=tuple(colours[k]), label=class_names[k]) for k in shown_classes]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    return figure
