"""Single-cell ground truth of a synthetic field: its instance masks and the classes each cell shows.

The generator already draws the heterogeneity of real fields; this module only *records* it, so the pixels
are the same with or without cell truth:

* **cells without the protein**: each class's pattern is switched on in 60-100 % of the cells of a field
  (:func:`protloc.synth.patterns._expression`), so a share of cells shows nothing of it;
* **cells that differ from their neighbours**: in a multi-label field every class is switched on and off per
  cell independently, and expression levels vary log-normally from cell to cell, so neighbours often show
  different class sets;
* **dividing cells**: mitotic cells (a quarter of fields) and pairs of daughter cells (a fifth) carry the
  mitotic-spindle (17) and cytokinetic-bridge (16) classes only where they occur, and patterns that a mitotic
  cell cannot show (filaments, centrosome, ...) are absent from it.

**Which cells show a class.** For each class of the field the generator's green contribution of that class
is summed over each cell's pixels. A cell shows the class when the class is switched on in it (its
expression is positive) and its density (sum / visible area) is at least :data:`PRESENCE_FRACTION` of the
median density of the cells that express it: a cell whose visible part holds none of the pattern (a
border fragment without its nucleus, a mitotic cell for an interphase-only pattern) does not count.

**Which cells exist.** Cells are the generator's own cell map, cut by the field border; fragments smaller
than :data:`MIN_AREA_FRACTION` of the field's median cell area are dropped (set to background), and the
remaining ones renumbered ``1..N`` in the generator's order.

**Field labels = union over cells.** Every field class is shown by at least one cell: should the rule above
leave a class without a cell, the cell with the largest contribution of it gets it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRESENCE_FRACTION = 0.15
"""A cell shows a class when its pattern density reaches this share of the median over expressing cells."""

MIN_AREA_FRACTION = 0.1
"""Cell fragments (cut by the border) smaller than this share of the median cell area are not cells."""


@dataclass(frozen=True)
class CellTruth:
    """The cells of one synthetic field.

    Attributes:
        labels: ``(H, W)`` ``int32`` label image, cells ``1..N``, 0 = background.
        classes: ``(N, K)`` ``uint8`` multi-hot classes of cells ``1..N``.
    """

    labels: np.ndarray
    classes: np.ndarray


def cell_truth(
    cell_map: np.ndarray,
    field_labels: np.ndarray,
    contributions: dict[int, np.ndarray],
    expression: dict[int, np.ndarray],
) -> CellTruth:
    """Per-cell truth from the generator's cell map and the per-cell sums of each class's green pattern.

    Args:
        cell_map: ``(H, W)`` generator cell ids ``k + 1`` for its cell ``k``, 0 = background.
        field_labels: ``(K,)`` multi-hot labels of the field.
        contributions: class -> ``(n + 1,)`` sum of that class's green contribution over each generator cell
            (index 0 = background).
        expression: class -> ``(n,)`` expression amplitude of each generator cell (0 = switched off).
    """
    n_classes = len(field_labels)
    n_drawn = max((len(amp) for amp in expression.values()), default=0)
    areas = np.bincount(cell_map.ravel(), minlength=n_drawn + 1).astype(np.float64)
    n_cells = len(areas) - 1
    present = np.flatnonzero(areas[1:] > 0) + 1
    if present.size == 0:
        return CellTruth(np.zeros(cell_map.shape, np.int32), np.zeros((0, n_classes), np.uint8))
    median_area = float(np.median(areas[present]))
    kept = present[areas[present] >= MIN_AREA_FRACTION * median_area]
    lookup = np.zeros(n_cells + 1, dtype=np.int32)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    labels = lookup[cell_map]
    classes = np.zeros((len(kept), n_classes), dtype=np.uint8)
    for class_id in np.flatnonzero(field_labels):
        sums = np.zeros(n_cells + 1)
        given = np.asarray(contributions[int(class_id)], dtype=np.float64)
        sums[: len(given)] = given
        amp = np.zeros(n_cells + 1)
        amp[1 : len(expression[int(class_id)]) + 1] = expression[int(class_id)]
        density = sums[kept] / areas[kept]
        expressing = (amp[kept] > 0) & (density > 0)
        if expressing.any():
            reference = float(np.median(density[expressing]))
            classes[:, class_id] = expressing & (density >= PRESENCE_FRACTION * reference)
        if not classes[:, class_id].any():
            classes[int(np.argmax(sums[kept])), class_id] = 1
    return CellTruth(labels=labels, classes=classes)


def per_cell_sums(cell_map: np.ndarray, image: np.ndarray, n_cells: int) -> np.ndarray:
    """``(n_cells + 1,)`` sums of ``image`` over each generator cell (index 0 = background)."""
    return np.bincount(cell_map.ravel(), weights=image.ravel().astype(np.float64), minlength=n_cells + 1)
