"""A cell model's class activation map over its field: where in each cell the model found a class.

A cell model scores masked crops, one per cell; its Grad-CAM maps live in those crops. Drawn over the field,
each cell's map goes back to the window its crop was cut from, on the cell's own pixels only. The maps are the
explanation wing's (:meth:`protloc.explanation.explain.Explainer.class_maps`, all crops of a field in one batch);
the crops are the very ones the model scored (:func:`protloc.cells.masks.cells_of_field`, padding from the card).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from protloc.cells.masks import cells_of_field
from protloc.errors import ModelError
from protloc.explanation.explain import Explainer, upsample_map


def cell_activation_map(
    explainer: Explainer,
    image: np.ndarray,
    labels: np.ndarray,
    class_id: int,
    *,
    weights: Mapping[int, float] | None = None,
) -> np.ndarray:
    """The class activation map of a cell model over a whole field.

    Each cell is cut as the cell model saw it when it scored the cell (see the module docstring), explained, and
    its map, resized back to the crop's window, is put over the cell's own pixels. A cell's map is scaled to 0-1
    like any explanation, then multiplied by its weight (the cell's probability of the class, say), so cells
    unlikely to show the class stay dark; without ``weights`` every cell's map peaks at 1.

    Args:
        explainer: a loaded cell model (its card has a ``cells`` section).
        image: ``(C, H, W)`` uint8 field in the model's channel order (:attr:`Explainer.channels`).
        labels: ``(H, W)`` label image of the same field.
        class_id: the class to explain.
        weights: cell id -> factor for its map (cells not listed get 1).

    Returns:
        ``(H, W)`` float32 map, 0 outside the cells.

    Raises:
        ModelError: the package is not a cell model.
        DataError: the image is not ``(C, H, W)`` in the model's channels, or the labels do not match it.
        ConfigError: a class id outside the model's scheme.
    """
    card = explainer.package.card
    if card.cells is None:
        raise ModelError(f"{card.model_name}: not a cell model (its card has no 'cells' section)")
    class_id = card.scheme.resolve(class_id)
    field_image = explainer.check_image(image)
    labels = np.asarray(labels)
    crops = cells_of_field(field_image, labels, card.size, padding=card.cells.padding, context=card.cells.context)
    height, width = labels.shape
    heat = np.zeros((height, width), np.float32)
    maps = explainer.class_maps(crops.images, class_id)
    for cell_map, cell, (top, left, bottom, right) in zip(maps, crops.cells, crops.boxes, strict=True):
        side = int(bottom - top)
        window = upsample_map(cell_map, side, side) * float((weights or {}).get(int(cell), 1.0))
        y0, x0, y1, x1 = max(int(top), 0), max(int(left), 0), min(int(bottom), height), min(int(right), width)
        inside = labels[y0:y1, x0:x1] == cell
        part = window[y0 - top : y1 - top, x0 - left : x1 - left]
        heat[y0:y1, x0:x1][inside] = part[inside]
    return heat
