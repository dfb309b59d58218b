"""Pictures of class activation maps: overlays on the composite, PNG bytes, and the explanation figure.

Torch-free: drawing needs numpy, OpenCV and (for colours and figures) matplotlib.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from protloc.classes import resolve_class
from protloc.errors import ConfigError
from protloc.schemes import scheme_for_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Explanation(Protocol):
    """What the pictures need of an explanation (:class:`protloc.explanation.explain.Explanation` has it)."""

    sample_id: str | None
    channels: tuple[str, ...]
    probabilities: np.ndarray
    thresholds: np.ndarray
    predicted: list[int]
    maps: dict[int, np.ndarray]
    layers: list[str]
    model_name: str
    true_labels: list[int] | None
    class_names: tuple[str, ...]

    @property
    def classes(self) -> list[int]: ...

    def composite(self) -> np.ndarray: ...


HEATMAP_CMAP = "jet"
"""Colour map of the overlays: blue (weak) to red (strong)."""


# The figure's panels are drawn from fields shrunk to at most this many pixels per side (legible, light).
_PANEL_SIDE = 768


def overlay_rgb(composite: np.ndarray, heat: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """A class activation map drawn over a composite, as ``(H, W, 3)`` uint8.

    The composite is shown in grey (its brightness, stretched so faint cells show), so the map's colours (blue
    to red) are never confused with the channels' colours; each pixel mixes in the colour of its map value with
    weight ``alpha * value``, so where the map is cold the cells show as they are.
    """
    from matplotlib import colormaps

    if composite.shape[:2] != heat.shape:
        raise ValueError(f"composite {composite.shape[:2]} and map {heat.shape} differ in size")
    grey = composite.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    bright = float(np.percentile(grey, 99.5)) if grey.size else 0.0
    grey *= float(np.clip(200.0 / max(bright, 1.0), 1.0, 4.0))
    values = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    colours = colormaps[HEATMAP_CMAP](values)[..., :3].astype(np.float32) * 255.0
    weight = (alpha * values)[..., None]
    blended = np.minimum(grey, 255.0)[..., None] * (1.0 - weight) + colours * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _explained_class(explanation: Explanation, class_id: int | str) -> int:
    chosen = resolve_class(class_id, scheme_for_names(explanation.class_names))
    if chosen not in explanation.maps:
        names = explanation.class_names
        listed = ", ".join(f"{names[c]} ({c})" for c in explanation.maps) or "none"
        raise ConfigError(f"class {names[chosen]} ({chosen}) was not explained; explained: {listed}")
    return chosen


def overlay_png(
    explanation: Explanation, class_id: int | str, *, alpha: float = 0.6, max_side: int | None = None
) -> bytes:
    """One class's overlay on the composite as PNG bytes (for the HTTP service).

    Args:
        explanation: from :meth:`Explainer.explain`.
        class_id: an explained class, by id or name.
        alpha: the map's strongest weight in the blend (see :func:`overlay_rgb`).
        max_side: shrink the picture to at most this many pixels per side; ``None``: the field's full size.

    Raises:
        ConfigError: the class is unknown or was not among the explained ones.
    """
    chosen = _explained_class(explanation, class_id)
    picture = overlay_rgb(explanation.composite(), explanation.maps[chosen], alpha=alpha)
    if max_side is not None:
        picture = _shrink(picture, max(1, int(max_side)))
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def _shrink(picture: np.ndarray, side: int = _PANEL_SIDE) -> np.ndarray:
    height, width = picture.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(picture, size, interpolation=cv2.INTER_AREA))


def _panel_title(explanation: Explanation, class_id: int, truth: set[int] | None) -> tuple[str, str]:
    probability = float(explanation.probabilities[class_id])
    threshold = float(explanation.thresholds[class_id])
    relation = ">=" if probability >= threshold else "<"
    lines = [f"{explanation.class_names[class_id]} ({class_id})", f"p={probability:.2f} {relation} t={threshold:.2f}"]
    colour = "black"
    if truth is not None:
        labelled = class_id in truth
        predicted = probability >= threshold
        lines[1] += "  true label" if labelled else "  not labelled"
        colour = "#1a7f37" if labelled == predicted else "#b42318"
    return "\n".join(lines), colour


def _name_list(class_ids: Sequence[int], class_names: Sequence[str], limit: int = 12) -> str:
    names = [class_names[c] for c in class_ids]
    if len(names) > limit:
        return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
    return ", ".join(names)


def explanation_figure(
    explanation: Explanation, *, true_labels: Sequence[int] | None = None, title: str | None = None
) -> Figure:
    """The composite and one overlay per explained class, titled with the class, its probability and threshold.

    Panel titles are green where prediction and label agree and red where they do not, when the labels are
    known (``true_labels``, else ``explanation.true_labels``); a caption lists the predicted and true classes.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from protloc.plots import _figure

    labels = list(true_labels) if true_labels is not None else explanation.true_labels
    truth = set(labels) if labels is not None else None
    classes = explanation.classes
    panels = 1 + len(classes)
    columns = min(panels, 4)
    rows = math.ceil(panels / columns)
    figure = _figure(3.3 * columns + 0.6, 3.55 * rows + 0.9)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    composite = explanation.composite()
    shown = _shrink(composite)
    axes[0].imshow(shown)
    shorts = {"red": "red MT", "green": "green protein", "blue": "blue nucleus", "yellow": "yellow ER"}
    legend = [shorts[c] for c in explanation.channels if c in shorts]
    axes[0].set_title(
        "composite\n" + ", ".join(legend[:2]) + (",\n" + ", ".join(legend[2:]) if legend[2:] else ""), fontsize=9
    )
    for axis, class_id in zip(axes[1:], classes, strict=False):
        overlay = overlay_rgb(composite, explanation.maps[class_id])
        axis.imshow(_shrink(overlay))
        text, colour = _panel_title(explanation, class_id, truth)
        axis.set_title(text, fontsize=9, color=colour)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[panels:]:
        axis.set_axis_off()
    if classes:
        scale = ScalarMappable(norm=Normalize(0, 1), cmap=colormaps[HEATMAP_CMAP])
        bar = figure.colorbar(scale, ax=list(axes[1:panels]), shrink=0.8, aspect=30, pad=0.01)
        bar.set_label("class activation (0-1, per class)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    name = explanation.sample_id or "field"
    layers = ", ".join(dict.fromkeys(explanation.layers))
    heading = title or f"{name}: Grad-CAM, {explanation.model_name} at {layers}"
    predicted = _name_list(explanation.predicted, explanation.class_names) or "none over threshold"
    lines = [f"predicted: {predicted}"]
    if labels is not None:
        lines.append("true: " + (_name_list(sorted(labels), explanation.class_names) or "none"))
    width = int(figure.get_figwidth() * 12)
    caption = "\n".join(textwrap.fill(line, width, subsequent_indent="    ") for line in lines)
    figure.suptitle(heading + "\n" + caption, fontsize=10)
    return figure
