"""Cell label images: files on disk, border flags, region properties and cell crops.

A **label image** is a 2-D integer array the size of the field: ``0`` is background and every cell is one
positive integer (its *cell id*). On disk it is a lossless **16-bit PNG** ``<Id>_cells.png`` (up to 65,535
cells per field; any image viewer opens it, nothing is unpickled), read back as ``int32``.

Everything here works on label images from any segmenter, classical or learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from protloc.errors import DataError
from protloc.utils import atomic_path

LABELS_SUFFIX = "_cells.png"
"""A field's label image is stored as ``<Id>_cells.png`` (16-bit PNG)."""

MAX_CELLS = 65535
"""Most cells one 16-bit label image can hold."""

PROPERTY_COLUMNS: tuple[str, ...] = (
    "cell",
    "y0",
    "x0",
    "y1",
    "x1",
    "area",
    "centroid_y",
    "centroid_x",
    "border",
)
"""Columns of :func:`cell_properties`: box is ``[y0, y1) x [x0, x1)`` in field pixels."""


def labels_path(folder: str | Path, sample_id: str) -> Path:
    """Where the label image of field ``sample_id`` lives in ``folder``."""
    return Path(folder) / f"{sample_id}{LABELS_SUFFIX}"


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label image as a 16-bit PNG, atomically.

    Raises:
        DataError: the array is not 2-D, has negative ids or more than :data:`MAX_CELLS` cells.
    """
    path = Path(path)
    if labels.ndim != 2:
        raise DataError(f"{path}: a label image must be 2-D, got shape {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if top > MAX_CELLS or (labels.size and int(labels.min()) < 0):
        raise DataError(f"{path}: cell ids must lie in 0..{MAX_CELLS} to fit a 16-bit PNG (max id {top})")
    ok, encoded = cv2.imencode(".png", labels.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise DataError(f"{path}: could not encode the label image as PNG")
    with atomic_path(path) as temp:
        encoded.tofile(temp)
    return path


def read_labels(path: str | Path, *, shape: tuple[int, int] | None = None, field: str | None = None) -> np.ndarray:
    """Read a label image written by :func:`write_labels` (or any 8/16-bit single-plane PNG/TIFF) as ``int32``.

    It is read as every image is (:mod:`protloc.data.decoder`): its header is checked against the pixel budget and,
    when ``shape`` (the field's ``(height, width)``) is given, against the field's size, before a pixel is decoded.

    Raises:
        DataError: the file is missing, over the pixel budget, not a single-plane integer image, or of another
            size than its field (the message names the file and both sizes).
    """
    from protloc.data.decoder import decode, probe

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label image not found; run `protloc segment` first")
    header = probe(path)
    if len(header.shape) != 2 or header.dtype.kind not in "ui":
        raise DataError(
            f"{path}: a label image must be one plane of integers, got {header.dtype} of shape {header.shape}"
        )
    if shape is not None:
        check_labels_fit(header.plane_shape, shape, path, field)
    image = decode(path)
    if image.ndim != 2 or image.dtype.kind not in "ui":
        raise DataError(f"{path}: a label image must be one plane of integers, got {image.dtype} {image.shape}")
    return image.astype(np.int32)


def check_labels_fit(
    labels: tuple[int, ...], field: tuple[int, ...], path: str | Path | None = None, field_id: str | None = None
) -> None:
    """Refuse a label image whose ``(height, width)`` differs from its field's: its cells would be placed on
    pixels the field does not have (or miss those it has).

    Raises:
        DataError: naming the label image (or the field) and both sizes.
    """
    if tuple(labels[:2]) == tuple(field[:2]):
        return
    what = str(path) if path is not None else f"label image of field {field_id or '?'}"
    which = f"field {field_id}" if field_id else "its field"
    raise DataError(
        f"{what}: label image is {labels[1]}x{labels[0]} px but {which} is {field[1]}x{field[0]} px; "
        "give the masks made for these fields"
    )


def border_cells(labels: np.ndarray, margin: int = 1) -> np.ndarray:
    """Sorted ids of the cells that reach within ``margin`` pixels of the field border (cut by it)."""
    if margin < 1:
        raise ValueError("margin must be at least 1 pixel")
    edge = np.concatenate(
        [labels[:margin].ravel(), labels[-margin:].ravel(), labels[:, :margin].ravel(), labels[:, -margin:].ravel()]
    )
    ids = np.unique(edge)
    return ids[ids > 0]


def cell_properties(labels: np.ndarray, *, border_margin: int = 1) -> dict[str, np.ndarray]:
    """One row per cell: id, bounding box, area, centroid and the border flag (see :data:`PROPERTY_COLUMNS`).

    Computed by :func:`skimage.measure.regionprops_table`; rows are in increasing cell id.
    """
    from skimage.measure import regionprops_table

    table = regionprops_table(labels, properties=("label", "bbox", "area", "centroid"))
    cells = np.asarray(table["label"], dtype=np.int64)
    return {
        "cell": cells,
        "y0": np.asarray(table["bbox-0"], dtype=np.int64),
        "x0": np.asarray(table["bbox-1"], dtype=np.int64),
        "y1": np.asarray(table["bbox-2"], dtype=np.int64),
        "x1": np.asarray(table["bbox-3"], dtype=np.int64),
        "area": np.asarray(table["area"], dtype=np.int64),
        "centroid_y": np.asarray(table["centroid-0"], dtype=np.float64),
        "centroid_x": np.asarray(table["centroid-1"], dtype=np.float64),
        "border": np.isin(cells, border_cells(labels, border_margin)),
    }


@dataclass(frozen=True)
class FieldCells:
    """The cells of one field with one row of values per cell: per-class probabilities of a prediction, or the
    multi-hot classes of a ground truth.

    Attributes:
        id: the field's Id.
        labels: ``(H, W)`` label image (cell ids > 0).
        cells: ``(N,)`` cell ids, aligned with ``values``.
        values: ``(N, K)`` one row per cell over the class scheme.
    """

    id: str
    labels: np.ndarray
    cells: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 2 or len(values) != len(self.cells):
            raise DataError(f"field {self.id}: {len(self.cells)} cells but per-cell values of shape {values.shape}")


@dataclass(frozen=True)
class CellCrops:
    """Crops of the cells of one field, ready for a network.

    Attributes:
        images: ``(N, C, S, S)`` ``uint8``: each cell centred in a square around its box, resized to ``S`` px,
            the pixels of other cells and background multiplied by the crop's ``context`` (0: masked).
        cells: ``(N,)`` the cell id of each crop, in increasing order.
        boxes: ``(N, 4)`` the square window cut from the field, ``(y0, x0, y1, x1)`` in field pixels (it may
            reach past the border; that part is 0).
    """

    images: np.ndarray
    cells: np.ndarray
    boxes: np.ndarray


def cells_of_field(
    image: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    padding: float = 0.05,
    context: float = 0.0,
    cells: np.ndarray | None = None,
) -> CellCrops:
    """Cut one centred, resized crop per cell from a field, masked by default.

    Each cell's window is the square of side ``max(box height, box width) * (1 + 2 * padding)`` centred on its
    bounding box, so the aspect ratio is kept; pixels outside the cell (other cells, background) are multiplied
    by ``context`` (0, the default: set to 0, a masked crop; 1: kept as they are), beyond the field's border
    they are 0, before the window is resized to ``size`` (area interpolation when shrinking).

    Args:
        image: ``(C, H, W)`` ``uint8`` field.
        labels: ``(H, W)`` label image of the same field.
        size: side of the crops.
        padding: margin around the box, as a fraction of its longer side.
        context: how much of the surroundings is kept, 0 to 1 (see above).
        cells: which cell ids to cut (default: every cell, in increasing id).

    Raises:
        DataError: image and labels differ in size, or a requested cell is not in the labels.
    """
    if image.ndim != 3:
        raise DataError(f"expected a (C, H, W) field, got shape {image.shape}")
    check_labels_fit(labels.shape, image.shape[1:])
    if size < 1:
        raise DataError(f"crop size must be positive, got {size}")
    if not 0.0 <= context <= 1.0:
        raise DataError(f"crop context must lie between 0 (masked) and 1 (the surroundings as they are), got {context}")
    from scipy import ndimage

    present = np.unique(labels)
    present = present[present > 0]
    wanted = present if cells is None else np.asarray(cells, dtype=np.int64)
    missing = np.setdiff1d(wanted, present)
    if missing.size:
        raise DataError(f"cell {int(missing[0])} is not in the label image")
    n_channels = image.shape[0]
    crops = np.zeros((len(wanted), n_channels, size, size), dtype=np.uint8)
    windows = np.zeros((len(wanted), 4), dtype=np.int64)
    slices = ndimage.find_objects(labels)
    height, width = labels.shape
    for row, cell in enumerate(wanted):
        box = slices[int(cell) - 1]
        assert box is not None  # the cell is present
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        side = max(1, round(max(y1 - y0, x1 - x0) * (1 + 2 * padding)))
        top = (y0 + y1 - side) // 2
        left = (x0 + x1 - side) // 2
        windows[row] = (top, left, top + side, left + side)
        # The part of the window inside the field, and where it lands in the window.
        fy0, fx0 = max(top, 0), max(left, 0)
        fy1, fx1 = min(top + side, height), min(left + side, width)
        window = np.zeros((side, side, n_channels), dtype=np.uint8)
        inside = labels[fy0:fy1, fx0:fx1] == cell
        pixels = np.moveaxis(image[:, fy0:fy1, fx0:fx1], 0, -1)
        if context == 0.0:
            patch = pixels * inside[..., None]
        else:
            patch = np.where(inside[..., None], pixels, np.rint(pixels * context).astype(np.uint8))
        window[fy0 - top : fy1 - top, fx0 - left : fx1 - left] = patch
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        resized = cv2.resize(window, (size, size), interpolation=interpolation)
        crops[row] = resized.reshape(size, size, n_channels).transpose(2, 0, 1)
    return CellCrops(images=crops, cells=wanted.astype(np.int64), boxes=windows)
