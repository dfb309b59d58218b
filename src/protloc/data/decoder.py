"""The one image decoder, for files on disk and uploaded bytes alike: header probe -> pixel budget -> decode.

Every reader in protloc (``check``, full and quick; ``predict``, ``train``, ``explain``, the cache, the HTTP
service) goes through :func:`probe` before a pixel is decoded, so a small file that declares a gigantic image
(an 11000x11000 16-bit PNG compresses to under 1 MB) is refused from its header, in microseconds, instead of
costing gigabytes; and a file the quick check passes is one the full decode accepts, because both apply the
same checks:

* the format, recognised from the first bytes (PNG, JPEG, TIFF/BigTIFF, NumPy ``.npy``; other formats that
  Pillow can identify and OpenCV decode are accepted as channel images too);
* the structure that can be verified without decoding: a PNG's chunks lie inside the file and end with
  ``IEND``; a JPEG ends with its end-of-image marker; a TIFF's strips or tiles lie inside the file; a ``.npy``
  holds as many bytes as its header promises (so a truncated file fails the quick check too);
* the pixel type: 8/16/32-bit integers, floats and booleans; anything else (``int8``, ``int64``, complex) is
  refused here rather than after decoding;
* the **pixel budget**: at most :func:`max_pixels` pixels per plane (default :data:`DEFAULT_MAX_PIXELS`,
  33.5 million, e.g. 5792x5792; HPA's largest fields are 3072x3072), and at most four 16-bit planes' worth of
  decoded bytes in all (a four-channel stack, an RGBA image). Set ``PROTLOC_MAX_PIXELS`` to change it.

Nothing here imports torch or the web framework.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from protloc.errors import ConfigError, DataError

DEFAULT_MAX_PIXELS = 1 << 25
"""Default budget: pixels per decoded plane (33,554,432, e.g. 5792x5792)."""

BUDGET_ENV = "PROTLOC_MAX_PIXELS"
"""Environment variable that overrides :data:`DEFAULT_MAX_PIXELS` (a positive integer)."""

PLANES_PER_FILE = 4
"""A file may decode to at most this many 16-bit planes' worth of bytes (a four-channel stack)."""

SUPPORTED_DTYPES = frozenset(
    np.dtype(name) for name in ("bool", "uint8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64")
)
"""Pixel types every reader can map onto uint8 (see :func:`protloc.data.io.to_uint8`)."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
)
# PNG colour type -> planes OpenCV decodes (palette -> BGR, gray+alpha -> BGRA)
_PNG_PLANES = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def max_pixels() -> int:
    """The pixel budget per plane: ``PROTLOC_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ConfigError: the environment variable is not a positive integer.
    """
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ConfigError(f"{BUDGET_ENV}={text!r}: expected a positive whole number of pixels")
    return int(text)


@dataclass(frozen=True)
class ImageHeader:
    """What a file declares before decoding: format, size, planes and pixel type."""

    kind: str
    """``png``, ``jpeg``, ``tiff``, ``npy`` or ``other``."""
    shape: tuple[int, ...]
    """The decoded array's shape as declared (``(H, W)``, ``(H, W, C)``, or a TIFF/``.npy`` series' shape)."""
    dtype: np.dtype

    @property
    def height(self) -> int:
        return self.plane_shape[0]

    @property
    def width(self) -> int:
        return self.plane_shape[1]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """Height and width of one plane: the two largest axes, in order (channels are the small axis)."""
        if len(self.shape) < 2:
            return (int(self.shape[0]) if self.shape else 0, 1)
        if len(self.shape) == 2:
            return int(self.shape[0]), int(self.shape[1])
        axes = sorted(range(len(self.shape)), key=lambda i: self.shape[i], reverse=True)[:2]
        first, second = sorted(axes)
        return int(self.shape[first]), int(self.shape[second])

    @property
    def decoded_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize


def sniff(data: bytes) -> str | None:
    """The format of a file from its first bytes: ``png``, ``jpeg``, ``tiff``, ``npy``, or ``None``."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def check_budget(header: ImageHeader, where: str, budget: int | None = None) -> None:
    """Refuse a declared image over the pixel budget, of an unsupported pixel type, or without pixels.

    Raises:
        DataError: naming ``where``, the declared size and the budget.
    """
    budget = max_pixels() if budget is None else budget
    if any(int(side) <= 0 for side in header.shape):
        raise DataError(f"{where}: image has no pixels (declared shape {header.shape})")
    if header.dtype not in SUPPORTED_DTYPES:
        raise DataError(
            f"{where}: unsupported pixel type {header.dtype}; convert it to 8- or 16-bit unsigned (or float)"
        )
    height, width = header.plane_shape
    if height * width > budget:
        raise DataError(
            f"{where}: image of {width}x{height} px ({height * width / 1e6:.1f} Mpx) exceeds the decoding budget of "
            f"{budget / 1e6:.1f} Mpx per plane; tile or downscale it, or raise {BUDGET_ENV}"
        )
    limit = budget * 2 * PLANES_PER_FILE
    if header.decoded_bytes > limit:
        raise DataError(
            f"{where}: image of shape {header.shape} {header.dtype} would decode to "
            f"{header.decoded_bytes / 2**20:.0f} MiB, over the budget of {limit / 2**20:.0f} MiB "
            f"(four 16-bit planes of {budget / 1e6:.1f} Mpx); raise {BUDGET_ENV} if this is intended"
        )


def probe(source: bytes | str | Path, where: str | None = None, *, budget: int | None = None) -> ImageHeader:
    """Read a file's header, verify its structure and check it against the budget, without decoding pixels.

    Args:
        source: the file's bytes, or its path.
        where: what to call it in messages (default: the path, or ``"upload"``).
        budget: pixels per plane (default :func:`max_pixels`).

    Raises:
        DataError: empty, truncated, unknown format, unsupported pixel type, or over the budget.
    """
    where = where or (str(source) if not isinstance(source, bytes) else "upload")
    with _open(source, where) as (handle, size):
        header = _read_header(handle, size, where)
    check_budget(header, where, budget)
    return header


def decode(source: bytes | str | Path, where: str | None = None, *, budget: int | None = None) -> np.ndarray:
    """Probe, then decode a file at its native pixel type (colour in RGB order, as the readers expect).

    Raises:
        DataError: everything :func:`probe` refuses, and pixel data that fails to decode.
    """
    where = where or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        header, data = probe(source, where, budget=budget), source
    else:
        header, data = _probe_and_read(Path(source), where, budget)
    image: np.ndarray | None
    try:
        if header.kind == "tiff":
            image = _decode_tiff(data, where)
        elif header.kind == "npy":
            image = np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
        else:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except DataError:
        raise
    except Exception as exc:  # decoders raise many types on hostile files
        problem = f"{exc.__class__.__name__}: {exc}"
        raise DataError(f"{where}: not a readable {header.kind.upper()} file ({problem})") from None
    if image is None:
        raise DataError(f"{where}: not a readable {header.kind.upper()} image (corrupt or truncated?)")
    image = np.asarray(image)
    if image.ndim == 3 and header.kind not in ("tiff", "npy"):  # OpenCV decodes colour as BGR(A)
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if image.size * image.dtype.itemsize > header.decoded_bytes * 2:  # the header lied (never seen; be safe)
        raise DataError(f"{where}: decoded image of shape {image.shape} differs from its header {header.shape}")
    return image


@contextlib.contextmanager
def _open(source: bytes | str | Path, where: str) -> Iterator[tuple[BinaryIO, int]]:
    """A seekable binary handle on a path or on bytes, and its size in bytes."""
    if isinstance(source, bytes):
        yield io.BytesIO(source), len(source)
        return
    try:
        handle = Path(source).open("rb")  # noqa: SIM115 (closed by the with below)
        size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: is a folder, not an image file") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    with handle:
        yield handle, size


READ_FIRST_BYTES = 256 * 2**20
"""Files up to this size are read whole before their header is checked (one open, the header walked in memory);
larger ones are checked on disk first, so an over-budget file is refused before it is read."""


def _probe_and_read(path: Path, where: str, budget: int | None) -> tuple[ImageHeader, bytes]:
    """A file's checked header and its bytes, from one open."""
    with _open(path, where) as (handle, size):
        try:
            if size <= READ_FIRST_BYTES:
                data = handle.read()
                header = _read_header(io.BytesIO(data), len(data), where)
                check_budget(header, where, budget)
            else:
                header = _read_header(handle, size, where)
                check_budget(header, where, budget)  # before a large file is read
                handle.seek(0)
                data = handle.read()
        except OSError as exc:
            raise DataError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    return header, data


def _read_header(handle: BinaryIO, size: int, where: str) -> ImageHeader:
    if size == 0:
        raise DataError(f"{where}: file is empty")
    kind = sniff(handle.read(16))
    handle.seek(0)
    if kind == "png":
        return _png_header(handle, size, where)
    if kind == "jpeg":
        return _jpeg_header(handle, size, where)
    if kind == "tiff":
        return _tiff_header(handle, size, where)
    if kind == "npy":
        return _npy_header(handle, size, where)
    return _other_header(handle, where)


def _truncated(where: str, kind: str) -> DataError:
    return DataError(f"{where}: truncated or corrupt {kind} file (the data ends before the image does)")


def _png_header(handle: BinaryIO, size: int, where: str) -> ImageHeader:
    head = handle.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise _truncated(where, "PNG")
    width, height, bit_depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_PLANES:
        raise DataError(f"{where}: not a readable PNG image (unknown colour type {colour})")
    # Walk the chunks (lengths only, no data read): every chunk must lie inside the file, ending with IEND.
    offset, seen_data = 8, False
    while True:
        if offset + 12 > size:
            raise _truncated(where, "PNG")
        handle.seek(offset)
        length, chunk = struct.unpack(">I4s", handle.read(8))
        offset += 12 + length
        if offset > size:
            raise _truncated(where, "PNG")
        seen_data = seen_data or chunk == b"IDAT"
        if chunk == b"IEND":
            break
    if not seen_data:
        raise DataError(f"{where}: PNG file holds no image data")
    planes = _PNG_PLANES[colour]
    dtype = np.dtype(np.uint16 if bit_depth == 16 else np.uint8)
    return ImageHeader("png", (height, width) if planes == 1 else (height, width, planes), dtype)


def _jpeg_header(handle: BinaryIO, size: int, where: str) -> ImageHeader:
    handle.seek(max(0, size - 1024))
    if b"\xff\xd9" not in handle.read():
        raise _truncated(where, "JPEG")
    handle.seek(2)
    while True:
        marker = handle.read(2)
        while len(marker) == 2 and marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + handle.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise _truncated(where, "JPEG")
        code = marker[1]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
            continue
        raw = handle.read(2)
        if len(raw) < 2:
            raise _truncated(where, "JPEG")
        (length,) = struct.unpack(">H", raw)
        if code in _JPEG_SOF:
            body = handle.read(6)
            if len(body) < 6:
                raise _truncated(where, "JPEG")
            precision, height, width, components = struct.unpack(">BHHB", body)
            dtype = np.dtype(np.uint16 if precision > 8 else np.uint8)
            shape = (height, width) if components == 1 else (height, width, 3)
            return ImageHeader("jpeg", shape, dtype)
        if code == 0xD9 or length < 2:
            raise DataError(f"{where}: not a readable JPEG image (no frame header)")
        handle.seek(length - 2, io.SEEK_CUR)


def _tiff_header(handle: BinaryIO, size: int, where: str) -> ImageHeader:
    import tifffile

    try:
        with tifffile.TiffFile(handle) as tiff:
            if not tiff.series:
                raise DataError(f"{where}: TIFF file holds no image")
            series = tiff.series[0]
            shape = tuple(int(s) for s in series.shape)
            dtype = np.dtype(series.dtype)
            for page in series.pages[: 4 * PLANES_PER_FILE]:
                if page is None:
                    continue
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                    if count and offset + count > size:
                        raise _truncated(where, "TIFF")
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for bad files
        raise DataError(f"{where}: not a readable TIFF ({exc.__class__.__name__}: {exc})") from None
    if int(np.prod(shape, dtype=np.float64)) == 0:
        raise DataError(f"{where}: TIFF image has no pixels (shape {shape})")
    return ImageHeader("tiff", shape, dtype)


def _npy_header(handle: BinaryIO, size: int, where: str) -> ImageHeader:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except Exception as exc:
        raise DataError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: .npy arrays of Python objects are refused; save a numeric array")
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if size - handle.tell() < expected:
        raise DataError(f"{where}: truncated .npy file (header says {tuple(shape)} {dtype}, data is shorter)")
    return ImageHeader("npy", tuple(int(s) for s in shape), dtype)


def _other_header(handle: BinaryIO, where: str) -> ImageHeader:
    from PIL import Image

    not_image = DataError(
        f"{where}: not an image; send PNG, TIFF or JPG channel files (8 or 16 bit), or a .npy/.tif stack"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the budget is checked here
            with Image.open(handle) as image:
                width, height = image.size
                bands = len(image.getbands())
                wide = image.mode.startswith("I;16") or image.mode in ("I", "F")
    except Image.DecompressionBombError:
        raise DataError(f"{where}: image exceeds the decoding budget (a decompression bomb to Pillow)") from None
    except Exception:
        raise not_image from None
    dtype = np.dtype(np.uint16 if wide else np.uint8)
    return ImageHeader("other", (height, width) if bands == 1 else (height, width, max(bands, 3)), dtype)


def _decode_tiff(data: bytes, where: str) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        return np.asarray(tiff.series[0].asarray())
