"""What protloc's fields and results look like in napari: layer data tuples ``(data, kwargs, layer type)``.

* a **channel** is an image layer at the file's own pixel type (16-bit stays 16-bit), in its HPA colour
  (:data:`protloc.plots.CHANNEL_COLOURS`, the colours of protloc's composites), blended additively so the four
  layers make the composite; contrast from 0 to the plane's 99.5th percentile (display only, as
  :func:`protloc.plots.stretch_for_display`);
* the **cells** are a labels layer, each cell coloured by its most probable class (the palette of protloc's
  outline pictures and web page, :func:`protloc.cells.draw.class_colours`), with the per-cell table as the
  layer's ``features`` (``index`` is the cell id, which napari's hover and features table use), and the field's
  labels in its metadata;
* a **class activation map** is an image layer in 0-1 over the field.

Every layer protloc makes carries ``metadata["protloc"]``: the field's Id and what the layer is (``channel``,
``cells`` or ``activation``), so the widget finds a field's channels and the writer the field's Id.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from protloc.napari.analysis import FieldAnalysis

LayerData = tuple[Any, dict[str, Any], str]

META = "protloc"
"""The key of protloc's entry in a layer's metadata."""

DISPLAY_PERCENTILE = 99.5
"""Top of a channel's contrast range: this percentile of its pixels (a few bright pixels do not set it)."""

TOP_CLASS = "top class"
LABEL_NAMES = "label names"


def channel_layer(plane: np.ndarray, channel: str, field_id: str, source: str | Path) -> LayerData:
    """One channel of a field as an image layer (see the module docstring)."""
    from protloc.channels import CHANNEL_ROLES

    top = float(np.percentile(plane, DISPLAY_PERCENTILE)) if plane.size else 0.0
    peak = float(plane.max()) if plane.size else 0.0
    upper = top if top > 0 else max(peak, 1.0)
    kwargs = {
        "name": f"{channel} ({CHANNEL_ROLES[channel]}) {field_id}",
        "colormap": channel_colormap(channel),
        "blending": "additive",
        "contrast_limits": [0.0, upper],
        "metadata": {META: {"kind": "channel", "field": field_id, "channel": channel, "source": str(source)}},
    }
    return plane, kwargs, "image"


def channel_colormap(channel: str) -> Any:
    """The napari colormap of a channel: black to its HPA colour."""
    from napari.utils.colormaps import Colormap

    from protloc.plots import CHANNEL_COLOURS

    red, green, blue = CHANNEL_COLOURS[channel]
    return Colormap(colors=[[0.0, 0.0, 0.0, 1.0], [red, green, blue, 1.0]], name=f"protloc {channel}")


def features(result: FieldAnalysis) -> dict[str, np.ndarray]:
    """The cells layer's features: ``index`` (the cell id), the top class and the labels by name, then the columns
    of ``cells.csv`` (:func:`protloc.cells.table.field_table`: box, area, centroid, border, ``p_<class>``,
    ``labels`` as class ids)."""
    names = result.class_names
    decisions = result.prediction.decisions
    columns: dict[str, np.ndarray] = {
        "index": np.asarray(result.prediction.cells, dtype=np.int64),
        TOP_CLASS: np.array([names[k] for k in result.top], dtype=object),
        LABEL_NAMES: np.array(["; ".join(names[k] for k in np.flatnonzero(row)) for row in decisions], dtype=object),
    }
    columns.update(result.table)
    return columns


def cell_colours(cells: np.ndarray, classes: np.ndarray, n_classes: int) -> dict[int | None, tuple[float, ...]]:
    """Label -> RGBA of a labels layer: each cell the colour of its class, background and others transparent."""
    from protloc.cells.draw import class_colours

    palette = class_colours(n_classes).astype(np.float64) / 255.0
    colours: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for cell, k in zip(cells, classes, strict=True):
        colours[int(cell)] = (*(float(v) for v in palette[int(k)]), 1.0)
    return colours


def cells_layer(result: FieldAnalysis) -> LayerData:
    """The cells of an analysis as a labels layer coloured by top class, with features and the field's labels."""
    from napari.utils.colormaps import DirectLabelColormap

    names = result.class_names
    colours = cell_colours(result.prediction.cells, result.top, len(names))
    metadata = {
        "kind": "cells",
        "field": result.field_id,
        "classes": list(names),
        "method": result.method,
        "field_labels": list(result.field_labels),
        "field_labels_from": result.field_labels_from,
        "field_probabilities": {n: float(p) for n, p in zip(names, result.field_probabilities, strict=True)},
    }
    kwargs = {
        "name": f"cells {result.field_id}",
        "features": features(result),
        "colormap": DirectLabelColormap(color_dict=colours),
        "opacity": 0.45,
        "metadata": {META: metadata},
    }
    return result.labels, kwargs, "labels"


def activation_layer(result: FieldAnalysis) -> LayerData | None:
    """The class activation map of an analysis as an image layer (``None`` when none was asked for)."""
    if result.activation is None:
        return None
    kwargs = {
        "name": f"activation {result.activation_class} {result.field_id}",
        "colormap": "inferno",
        "blending": "additive",
        "opacity": 0.6,
        "contrast_limits": [0.0, 1.0],
        "metadata": {META: {"kind": "activation", "field": result.field_id, "class": result.activation_class}},
    }
    return result.activation, kwargs, "image"


def protloc_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """protloc's entry in a layer's metadata (empty for layers protloc did not make)."""
    entry = (metadata or {}).get(META)
    return dict(entry) if isinstance(entry, Mapping) else {}
