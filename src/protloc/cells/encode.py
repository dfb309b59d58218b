"""The 2021 HPA single-cell challenge's mask encoding and its submission format.

**Mask encoding**, exactly as the competition specified it (Kaggle, *Human Protein Atlas - Single Cell
Classification*, 2021, "Evaluation" page, whose example function ``encode_binary_mask`` comes from the Open
Images Challenge, gist.github.com/pculliton/209398a2a52867580c6103e25e55d93c):

1. the binary mask, ``(H, W)``, as ``uint8`` in Fortran (column-major) order, shaped ``(H, W, 1)``;
2. COCO run-length encoding by pycocotools (``pycocotools.mask.encode``), of which the ``counts`` bytes
   (COCO's compressed RLE string) are kept;
3. compressed by zlib at level 9 (``zlib.Z_BEST_COMPRESSION``, RFC 1950);
4. base64 (standard alphabet, with padding), as ASCII text.

:func:`decode_mask` reverses it; it needs the field's height and width, which the submission carries.

**Submission**: one CSV row per field, ``ID,ImageWidth,ImageHeight,PredictionString``, where the prediction
string lists, for every cell and every class predicted for it, ``<class> <confidence> <encoded mask>``
separated by spaces. A cell with several classes repeats its mask once per class, as the competition asked.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.cells.masks import FieldCells
from protloc.errors import DataError
from protloc.utils import atomic_write_text

SUBMISSION_COLUMNS: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")


def encode_mask(mask: np.ndarray) -> str:
    """Encode one binary ``(H, W)`` mask as the 2021 challenge did (see the module docstring).

    Raises:
        ValueError: the mask is not 2-D (after squeezing) or not boolean/0-1.
    """
    from pycocotools import mask as coco_mask

    mask = np.squeeze(np.asarray(mask))
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects a 2-D mask, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError("encode_mask expects a binary mask (bool or 0/1)")
        mask = mask.astype(bool)
    fortran = np.asfortranarray(mask.reshape(mask.shape[0], mask.shape[1], 1).astype(np.uint8))
    counts = coco_mask.encode(fortran)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def decode_mask(text: str, height: int, width: int) -> np.ndarray:
    """Decode an :func:`encode_mask` string back to a boolean ``(height, width)`` mask.

    Raises:
        DataError: the text is not base64 of zlib-compressed COCO RLE, or its runs do not fill the size.
    """
    from pycocotools import mask as coco_mask

    try:
        counts = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, zlib.error, UnicodeEncodeError) as exc:
        raise DataError(f"mask {text[:24]!r}...: not base64 of zlib-compressed RLE ({exc})") from None
    if sum(_rle_runs(counts)) != height * width:
        raise DataError(f"mask {text[:24]!r}...: its runs do not cover a {width}x{height} field")
    decoded = coco_mask.decode({"size": [int(height), int(width)], "counts": counts})
    return np.asarray(decoded, dtype=bool)


def _rle_runs(counts: bytes) -> list[int]:
    """The run lengths in COCO's compressed RLE string (the inverse of pycocotools' ``rleToString``)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise DataError("truncated RLE string")
            char = counts[position] - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    if any(run < 0 for run in runs):
        raise DataError("negative run in RLE string")
    return runs


def prediction_string(prediction: FieldCells, *, min_confidence: float = 0.0) -> str:
    """``<class> <confidence> <mask>`` for every cell and every class with confidence >= ``min_confidence``.

    Each cell's mask is encoded once and repeated for each of its classes; confidences are written with 6
    significant digits.
    """
    probabilities = np.asarray(prediction.values, dtype=np.float64)
    parts: list[str] = []
    for cell, row in zip(prediction.cells, probabilities, strict=True):
        classes = np.flatnonzero(row >= min_confidence)
        if classes.size == 0:
            continue
        encoded = encode_mask(prediction.labels == cell)
        parts.extend(f"{k} {row[k]:.6g} {encoded}" for k in classes)
    return " ".join(parts)


def submission_rows(
    predictions: Iterable[FieldCells], *, min_confidence: float = 0.0
) -> Iterable[tuple[str, int, int, str]]:
    """``(ID, ImageWidth, ImageHeight, PredictionString)`` per field, one field at a time (bounded memory)."""
    for prediction in predictions:
        height, width = prediction.labels.shape
        yield prediction.id, width, height, prediction_string(prediction, min_confidence=min_confidence)


def write_submission(path: str | Path, predictions: Iterable[FieldCells], *, min_confidence: float = 0.0) -> Path:
    """Write the 2021 submission CSV atomically (header ``ID,ImageWidth,ImageHeight,PredictionString``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUBMISSION_COLUMNS)
    for row in submission_rows(predictions, min_confidence=min_confidence):
        writer.writerow(row)
    return atomic_write_text(path, buffer.getvalue())


@dataclass(frozen=True)
class Detection:
    """One ``<class> <confidence> <mask>`` triple of a submission, decoded."""

    field: str
    cls: int
    confidence: float
    mask: np.ndarray


def parse_prediction_string(field: str, text: str, height: int, width: int) -> list[Detection]:
    """The detections in one field's prediction string.

    Raises:
        DataError: the string is not a sequence of ``class confidence mask`` triples.
    """
    tokens = text.split()
    if len(tokens) % 3:
        raise DataError(f"field {field}: prediction string has {len(tokens)} tokens, not a multiple of 3")
    detections: list[Detection] = []
    masks: dict[str, np.ndarray] = {}
    for start in range(0, len(tokens), 3):
        cls, confidence, encoded = tokens[start : start + 3]
        try:
            number, score = int(cls), float(confidence)
        except ValueError:
            raise DataError(f"field {field}: {cls!r} {confidence!r} is not a class and a confidence") from None
        if encoded not in masks:
            masks[encoded] = decode_mask(encoded, height, width)
        detections.append(Detection(field=field, cls=number, confidence=score, mask=masks[encoded]))
    return detections


def read_submission(path: str | Path) -> dict[str, tuple[int, int, str]]:
    """Field Id -> ``(width, height, prediction string)`` from a submission CSV.

    Raises:
        DataError: the file is missing or its header is not the 2021 format's.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: submission not found")
    rows: dict[str, tuple[int, int, str]] = {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) not in (
            SUBMISSION_COLUMNS,
            ("ImageID", *SUBMISSION_COLUMNS[1:]),
        ):
            raise DataError(f"{path}: header must be {','.join(SUBMISSION_COLUMNS)}")
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 4:
                raise DataError(f"{path} line {number}: expected 4 columns, got {len(row)}")
            try:
                rows[row[0]] = (int(row[1]), int(row[2]), row[3])
            except ValueError:
                raise DataError(f"{path} line {number}: width and height must be integers") from None
    return rows
