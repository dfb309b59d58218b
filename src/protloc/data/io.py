"""Reading channel images and stacking them into samples.

A sample is one field of cells imaged in up to four channels, each stored as its own grayscale file
``<Id>_<channel>.<ext>``. This module turns those files into a ``(C, H, W)`` ``uint8`` array with an explicit
channel order, whatever the file format and bit depth:

* 8-bit and 16-bit PNG, TIFF (including full-size 2048/3072 px HPA images) and JPG (HPA v18).
* **16-bit** images are mapped linearly onto 0-255: ``round(v * 255 / (2**bit_depth - 1))``, clipped, with
  ``bit_depth=16`` by default, so ``65535 -> 255`` and an 8-bit image stored as 16-bit (``v * 257``) comes
  back exactly. Cameras that fill only 12 or 14 bits of a 16-bit file should pass ``bit_depth=12``/``14``;
  the mapping is fixed, never per image, so brightness means the same in every image (it carries signal).
* **Colour** channel files (HPA v18 JPGs are tinted RGB: the yellow channel is red+green) are reduced to one
  plane by the per-pixel maximum over the colour planes, which recovers the signal of a pure tint.
* Float images are taken as 0-1 when their maximum is <= 1, else as 0-255, and clipped.

Nothing here imports torch: the ONNX runtime and the HTTP service use it too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from protloc.channels import CHANNELS
from protloc.data.decoder import decode
from protloc.data.microscope import PlanePath, read_plane
from protloc.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
"""Extensions recognised as channel images, in order of preference when one channel has several files."""

CHANNEL_PRESETS: dict[str, tuple[str, ...]] = {
    "rgby": CHANNELS,
    "all": CHANNELS,
    "rgb": ("red", "green", "blue"),
    "green": ("green",),
    "g": ("green",),
}
_LETTERS = {"r": "red", "g": "green", "b": "blue", "y": "yellow"}
_FILE_PATTERN = re.compile(r"^(?P<id>.+)_(?P<channel>red|green|blue|yellow)\.(?P<ext>[A-Za-z]+)$")

MIN_SIDE = 8
"""Smallest side, in pixels, of a sample's fields (smaller stacks and uploads are refused)."""


def parse_channels(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a channel choice into an ordered tuple of channel names.

    Accepts a preset (``"rgby"``, ``"rgb"``, ``"green"``), a string of letters (``"gb"``), a
    comma-separated list (``"green,blue"``) or a sequence of names. Order is kept: it is the order of the
    stacked array's first axis.

    Raises:
        ConfigError: an unknown channel name, a repeated channel or an empty choice.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in CHANNEL_PRESETS:
            return CHANNEL_PRESETS[text]
        if "," in text or text in CHANNELS:
            names = [part.strip() for part in text.split(",") if part.strip()]
        elif text and all(letter in _LETTERS for letter in text):
            names = [_LETTERS[letter] for letter in text]
        else:
            raise ConfigError(
                f"unknown channel choice {spec!r}; use names from {', '.join(CHANNELS)} "
                "(comma-separated), letters like 'rgby', or a preset: rgby, rgb, green"
            )
    else:
        names = [str(name).strip().lower() for name in spec]
    if not names:
        raise ConfigError("no channels chosen; pick at least one of red, green, blue, yellow")
    unknown = [name for name in names if name not in CHANNELS]
    if unknown:
        raise ConfigError(f"unknown channel {unknown[0]!r}; channels are {', '.join(CHANNELS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"channel listed twice in {spec!r}")
    return tuple(names)


def split_channel_filename(name: str) -> tuple[str, str] | None:
    """Split ``"<Id>_<channel>.<ext>"`` into ``(Id, channel)``; ``None`` if the name is not a channel file."""
    match = _FILE_PATTERN.match(name)
    if match is None or "." + match["ext"].lower() not in IMAGE_EXTENSIONS:
        return None
    return match["id"], match["channel"]


def to_plane(image: np.ndarray, where: str | Path) -> np.ndarray:
    """Reduce a decoded image to a single 2-D plane: colour (tinted) images by the per-pixel max over planes.

    Raises:
        DataError: the array is not an image plane or a colour image (``where`` names its origin).
    """
    if image.ndim == 2:
        return image
    if image.ndim == 3:
        # (H, W, C) colour, or (C, H, W) from a TIFF with samples first.
        if image.shape[-1] in (3, 4) and image.shape[0] > 4:
            planes = image[..., :3]
            return np.asarray(planes.max(axis=-1))
        if image.shape[0] in (1, 3, 4) and image.shape[-1] > 4:
            return np.asarray(image[:3].max(axis=0))
        if image.shape[-1] == 1:
            return image[..., 0]
    raise DataError(
        f"{where}: expected a single-channel image, got an array of shape {image.shape}; "
        "each channel must be its own grayscale (or tinted colour) file"
    )


def to_uint8(image: np.ndarray, *, bit_depth: int = 16, where: str = "image") -> np.ndarray:
    """Map an image of any supported pixel type onto ``uint8`` (see the module docstring for the rules).

    Args:
        image: a decoded image.
        bit_depth: significant bits of 16-bit images (8-16); ``16`` maps 65535 to 255.
        where: the file the image came from, for error messages.
    """
    if not 8 <= bit_depth <= 16:
        raise ConfigError(f"bit_depth must be between 8 and 16, got {bit_depth}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:  # a lookup table: 1 byte per pixel instead of a float32 copy (4 bytes)
        return _uint16_table(bit_depth)[image]
    if image.dtype in (np.int16, np.uint32, np.int32):
        scale = 255.0 / (2**bit_depth - 1)
        scaled = (image.astype(np.float32) * scale + 0.5).clip(0.0, 255.0)
        return scaled.astype(np.uint8)
    if image.dtype.kind == "f":
        return _float_to_uint8(image)
    raise DataError(f"{where}: unsupported pixel type {image.dtype}; convert it to 8- or 16-bit")


@functools.lru_cache(maxsize=16)
def _uint16_table(bit_depth: int) -> np.ndarray:
    """uint16 -> uint8 for every value, computed exactly as the float path computes one pixel."""
    values = np.arange(1 << 16, dtype=np.float32)
    return ((values * (255.0 / (2**bit_depth - 1)) + 0.5).clip(0.0, 255.0)).astype(np.uint8)


def _float_to_uint8(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float32)
    values[~np.isfinite(values)] = 0.0
    peak = float(values.max()) if values.size else 0.0
    values *= 255.0 if peak <= 1.0 else 1.0
    values += 0.5
    np.clip(values, 0.0, 255.0, out=values)
    return values.astype(np.uint8)


def read_channel(path: str | Path, *, bit_depth: int = 16) -> np.ndarray:
    """Read one channel file as a 2-D ``uint8`` array.

    Raises:
        DataError: the file is missing, empty, corrupt, not single-channel, or of an unsupported type.
    """
    image = read_channel_raw(path)
    if image.size == 0:
        raise DataError(f"{path}: image has no pixels")
    return to_uint8(image, bit_depth=bit_depth, where=str(path))


def read_channel_raw(path: str | Path) -> np.ndarray:
    """Read one channel file at its native pixel type (uint8, uint16, float), reduced to one plane.

    A :class:`protloc.data.microscope.PlanePath` (one channel of a multi-channel microscope file, as the catalog
    records OME-TIFF and vendor files) reads that plane of its file.
    """
    if isinstance(path, PlanePath):
        return read_plane(path)
    path = Path(path)
    return to_plane(decode(path), path)


def resize_plane(plane: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a 2-D plane to ``size`` (square side or ``(height, width)``): area when shrinking."""
    height, width = (size, size) if isinstance(size, int) else size
    if plane.shape == (height, width):
        return plane
    shrinking = height < plane.shape[0] or width < plane.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(plane, (width, height), interpolation=interpolation))


def read_sample(
    paths: Mapping[str, str | Path],
    channels: Sequence[str] = CHANNELS,
    *,
    size: int | tuple[int, int] | None = None,
    bit_depth: int = 16,
    sample_id: str | None = None,
) -> np.ndarray:
    """Read and stack one sample's channel files into a ``(C, H, W)`` ``uint8`` array.

    Args:
        paths: channel name -> file path (extra channels are ignored).
        channels: which channels to stack, in this order.
        size: resize every channel to this side (or ``(height, width)``); ``None`` keeps the native size,
            which must then agree across channels.
        bit_depth: significant bits of 16-bit files (see :func:`to_uint8`).
        sample_id: the sample's Id, named in error messages.

    Raises:
        DataError: a channel file is missing, unreadable, or its size differs from the others'.
    """
    label = f"sample {sample_id}" if sample_id else "sample"
    planes = []
    for channel in channels:
        if channel not in paths:
            raise DataError(f"{label}: missing {channel} channel file")
        planes.append(read_channel(paths[channel], bit_depth=bit_depth))
    if size is not None:
        planes = [resize_plane(plane, size) for plane in planes]
    else:
        shapes = {plane.shape for plane in planes}
        if len(shapes) > 1:
            described = ", ".join(f"{c} {p.shape[1]}x{p.shape[0]}" for c, p in zip(channels, planes, strict=True))
            raise DataError(f"{label}: channel sizes differ ({described})")
    return np.stack(planes)


def read_stack(
    path: str | Path,
    channels: Sequence[str] = CHANNELS,
    *,
    stack_channels: Sequence[str] = CHANNELS,
    bit_depth: int = 16,
) -> np.ndarray:
    """Read a multi-channel file (a ``.npy`` array or a multi-page/multi-sample TIFF) as ``(C, H, W)`` uint8.

    Args:
        path: the file; its channels are in the order ``stack_channels``.
        channels: which channels to return, in this order.
        stack_channels: the channel order inside the file (default red, green, blue, yellow).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".tif", ".tiff"):
        array = decode(path)
    else:
        raise DataError(f"{path}: a stacked sample must be a .npy or .tif file, not {suffix or 'no extension'}")
    return stack_to_chw(array, channels, stack_channels=stack_channels, bit_depth=bit_depth, where=str(path))


def stack_to_chw(
    array: np.ndarray,
    channels: Sequence[str] = CHANNELS,
    *,
    stack_channels: Sequence[str] = CHANNELS,
    bit_depth: int = 16,
    where: str = "stack",
) -> np.ndarray:
    """Select ``channels`` from a multi-channel array in ``(C, H, W)`` or ``(H, W, C)`` layout."""
    if array.ndim != 3:
        raise DataError(f"{where}: expected a 3-D (channels, height, width) array, got shape {array.shape}")
    n = len(stack_channels)
    if array.shape[0] == n and array.shape[-1] != n:
        chw = array
    elif array.shape[-1] == n and array.shape[0] != n:
        chw = np.moveaxis(array, -1, 0)
    elif array.shape[0] == n:
        chw = array
    else:
        raise DataError(
            f"{where}: expected {n} channels ({', '.join(stack_channels)}) on the first or last axis, "
            f"got shape {array.shape}"
        )
    index = {name: i for i, name in enumerate(stack_channels)}
    missing = [c for c in channels if c not in index]
    if missing:
        raise DataError(f"{where}: the stack has no {missing[0]} channel (it holds {', '.join(stack_channels)})")
    if min(chw.shape[1:]) < MIN_SIDE:
        size = f"{chw.shape[2]}x{chw.shape[1]} px"
        raise DataError(f"{where}: image of {size} is too small (at least {MIN_SIDE} px a side)")
    selected = np.stack([to_uint8(chw[index[c]], bit_depth=bit_depth, where=where) for c in channels])
    return np.ascontiguousarray(selected)


def write_channel(path: str | Path, plane: np.ndarray) -> None:
    """Write one 2-D plane (uint8 or uint16) as PNG, TIFF or JPG, chosen by the extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if plane.ndim != 2:
        raise ValueError(f"write_channel takes a 2-D plane, got shape {plane.shape}")
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, plane, compression="zlib" if plane.size > 1 << 20 else None)
        return
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, encoded = cv2.imencode(suffix, plane, params)
    if not ok:
        raise DataError(f"{path}: could not encode image as {suffix}")
    encoded.tofile(path)
