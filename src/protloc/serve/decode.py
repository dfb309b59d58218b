"""Uploaded bytes -> a ``(C, H, W)`` ``uint8`` sample, refusing anything that is not a sane image.

The HTTP service receives files, not paths, so this is the bytes-based twin of :mod:`protloc.io`'s readers,
and it reuses that module's conversions (``to_uint8``, ``stack_to_chw``, the colour-to-plane rule) so that a
file gives the same pixels whether ``protloc predict`` reads it from disk or the service receives it.

The format is recognised from the first bytes, never from the file name: PNG, JPEG, TIFF (including
multi-page and BigTIFF), NumPy ``.npy``; other formats OpenCV can decode (BMP, WebP...) are accepted as
channel images too. Every failure is a :class:`~protloc.errors.DataError` whose message names the upload and
says what was expected. Before any pixel is decoded, the declared size is checked (image header, TIFF pages,
``.npy`` header), so a small file that claims a gigantic image is refused instead of exhausting memory.

Nothing here imports torch or the web framework.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from protloc.errors import DataError
from protloc.io import CHANNELS, MAX_SIDE, stack_to_chw, to_plane, to_uint8

MIN_SIDE = 8
"""Smallest accepted side in pixels (as :func:`protloc.io.stack_to_chw`)."""

MAX_DECODED_BYTES = 1 << 30
"""Largest decoded array accepted, in bytes (a 4 x 16384 x 16384 16-bit stack is 2 GiB: refused)."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes and the name the client gave it (for messages; may be empty)."""

    data: bytes
    filename: str = ""

    def describe(self, field: str) -> str:
        """``"red (cell_red.png)"``: the form field and the file name, for error messages."""
        return f"{field} ({self.filename})" if self.filename else field


def sniff(data: bytes) -> str | None:
    """The format of a file from its first bytes: ``png``, ``jpeg``, ``tiff``, ``npy``, or ``None``."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def _check_shape(shape: Sequence[int], itemsize: int, where: str) -> None:
    """Refuse declared shapes with a side outside 8..MAX_SIDE px or more than MAX_DECODED_BYTES in all."""
    spatial = [int(s) for s in shape if int(s) > 4] or [int(s) for s in shape]
    if any(side > MAX_SIDE for side in spatial):
        raise DataError(f"{where}: image of shape {tuple(shape)} exceeds {MAX_SIDE} px per side")
    total = int(np.prod([max(int(s), 0) for s in shape], dtype=np.float64)) * itemsize
    if total > MAX_DECODED_BYTES:
        raise DataError(f"{where}: image of shape {tuple(shape)} is too large to decode ({total / 2**20:.0f} MiB)")


def _decode_npy(data: bytes, where: str) -> np.ndarray:
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
    except Exception as exc:
        raise DataError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: .npy arrays of Python objects are refused; save a numeric array")
    _check_shape(shape, dtype.itemsize, where)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - buffer.tell() < expected:
        raise DataError(f"{where}: truncated .npy file (header says {shape} {dtype}, data is shorter)")
    try:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    except Exception as exc:
        raise DataError(f"{where}: not a readable .npy array ({exc})") from None


def _decode_tiff(data: bytes, where: str) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            if not tiff.series:
                raise DataError(f"{where}: TIFF file holds no image")
            series = tiff.series[0]
            _check_shape(series.shape, np.dtype(series.dtype).itemsize, where)
            return np.asarray(series.asarray())
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for bad files
        raise DataError(f"{where}: not a readable TIFF ({exc.__class__.__name__}: {exc})") from None


def _decode_raster(data: bytes, where: str, kind: str | None) -> np.ndarray:
    """PNG, JPEG and the other formats OpenCV reads, after checking the header's size with Pillow."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we check the size ourselves
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError:
        raise DataError(f"{where}: image exceeds {MAX_SIDE} px per side (or {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except Exception:
        if kind is not None:
            raise DataError(f"{where}: not a readable {kind.upper()} image (corrupt or truncated?)") from None
        raise DataError(
            f"{where}: not an image; send PNG, TIFF or JPG channel files (8 or 16 bit), or a .npy/.tif stack"
        ) from None
    _check_shape((height, width, 4), 2, where)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{where}: not a readable {(kind or 'image').upper()} file (corrupt or truncated?)")
    if image.ndim == 3:  # OpenCV decodes colour as BGR(A); callers expect RGB order, as protloc.io gives
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return np.asarray(image)


def decode_array(data: bytes, where: str = "upload") -> np.ndarray:
    """Decode an uploaded file at its native pixel type (uint8, uint16, float...).

    Args:
        data: the file's bytes.
        where: what to call the upload in error messages (``"red (cell_red.png)"``).

    Raises:
        DataError: the file is empty, corrupt, of an unknown format, or declares an absurd size.
    """
    if not data:
        raise DataError(f"{where}: file is empty")
    kind = sniff(data)
    if kind == "npy":
        return _decode_npy(data, where)
    if kind == "tiff":
        return _decode_tiff(data, where)
    return _decode_raster(data, where, kind)


def decode_channel(upload: Upload, where: str, *, bit_depth: int = 16) -> np.ndarray:
    """One channel file -> a 2-D ``uint8`` plane (colour files reduced by the per-pixel maximum, as on disk).

    Raises:
        DataError: unreadable, not a single plane, too small or too large, or of an unsupported pixel type.
    """
    image = decode_array(upload.data, where)
    plane = to_plane(image, where)
    if plane.ndim != 2:
        raise DataError(f"{where}: expected a single-channel image, got an array of shape {plane.shape}")
    height, width = plane.shape
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise DataError(f"{where}: image of {width}x{height} px is out of range ({MIN_SIDE}-{MAX_SIDE} px per side)")
    return to_uint8(plane, bit_depth=bit_depth, where=where)


def decode_stack(
    upload: Upload,
    where: str,
    channels: Sequence[str],
    *,
    stack_channels: Sequence[str] = CHANNELS,
    bit_depth: int = 16,
) -> np.ndarray:
    """A multi-channel TIFF or ``.npy`` (``(C, H, W)`` or ``(H, W, C)``) -> ``(len(channels), H, W)`` uint8.

    Args:
        upload: the file.
        where: what to call it in messages.
        channels: the channels to return, in this order (the model's).
        stack_channels: the order of the channels inside the file.
        bit_depth: significant bits of 16-bit pixels.

    Raises:
        DataError: unreadable, not 3-D, the wrong number of channels, or a side out of range.
    """
    kind = sniff(upload.data) if upload.data else None
    if upload.data and kind not in ("tiff", "npy"):
        raise DataError(
            f"{where}: a stacked sample must be a multi-channel TIFF or a .npy array"
            + (f", not a {kind.upper()} file" if kind else "")
            + "; send single-channel images as the fields red, green, blue, yellow instead"
        )
    array = decode_array(upload.data, where)
    return stack_to_chw(array, channels, stack_channels=stack_channels, bit_depth=bit_depth, where=where)


def read_upload_sample(
    files: Mapping[str, Upload],
    channels: Sequence[str],
    *,
    stack: Upload | None = None,
    stack_channels: Sequence[str] = CHANNELS,
    bit_depth: int = 16,
    label: str = "",
) -> np.ndarray:
    """Uploaded channel files (or one stacked file) -> the ``(C, H, W)`` uint8 sample in ``channels`` order.

    Args:
        files: channel name -> upload; channels the model does not use are ignored.
        channels: the model's channels, in its order.
        stack: one multi-channel file instead of ``files``.
        stack_channels: channel order inside ``stack``.
        bit_depth: significant bits of 16-bit pixels.
        label: the sample's name for messages (``"sample A12"``); empty for a single upload.

    Raises:
        DataError: both or neither kind of input, a missing channel, a bad file, or channels whose sizes differ.
    """
    prefix = f"{label}: " if label else ""
    if stack is not None and files:
        raise DataError(
            f"{prefix}send either one file per channel ({', '.join(channels)}) or one stacked file, not both"
        )
    if stack is not None:
        return decode_stack(
            stack,
            prefix + stack.describe("stack"),
            channels,
            stack_channels=stack_channels,
            bit_depth=bit_depth,
        )
    missing = [c for c in channels if c not in files]
    if missing:
        given = ", ".join(files) if files else "no channel file"
        raise DataError(
            f"{prefix}missing the {missing[0]} channel: this model needs {', '.join(channels)} "
            f"(got {given}); send one image per channel as the form fields {', '.join(channels)}, "
            "or one multi-channel TIFF/.npy as the field 'stack'"
        )
    planes = [decode_channel(files[c], prefix + files[c].describe(c), bit_depth=bit_depth) for c in channels]
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1:
        described = ", ".join(f"{c} {p.shape[1]}x{p.shape[0]}" for c, p in zip(channels, planes, strict=True))
        raise DataError(f"{prefix}channel images differ in size ({described}); all channels must be the same size")
    return np.stack(planes)
