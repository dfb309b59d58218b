"""Uploaded bytes -> a ``(C, H, W)`` ``uint8`` sample, refusing anything that is not a sane image.

The HTTP service receives files, not paths, so this is the bytes-based twin of :mod:`protloc.data.io`'s readers,
and it reuses that module's conversions (``to_uint8``, ``stack_to_chw``, the colour-to-plane rule) so that a
file gives the same pixels whether ``protloc predict`` reads it from disk or the service receives it.

Decoding is :mod:`protloc.data.decoder`'s, the one decoder for files and uploads alike: the format is recognised
from the first bytes, never from the file name, and the header is checked against the pixel budget before any
pixel is decoded. Every failure is a :class:`~protloc.errors.DataError` whose message names the upload and says
what was expected.

Nothing here imports torch or the web framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protloc.data.decoder import decode, sniff
from protloc.data.io import CHANNELS, MIN_SIDE, stack_to_chw, to_plane, to_uint8
from protloc.errors import DataError

__all__ = ["Upload", "decode_array", "decode_channel", "decode_stack", "read_upload_sample", "sniff"]


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes and the name the client gave it (for messages; may be empty)."""

    data: bytes
    filename: str = ""

    def describe(self, field: str) -> str:
        """``"red (cell_red.png)"``: the form field and the file name, for error messages."""
        return f"{field} ({self.filename})" if self.filename else field


def decode_array(data: bytes, where: str = "upload") -> np.ndarray:
    """Decode an uploaded file at its native pixel type, after :func:`protloc.data.decoder.probe` checked its header.

    Raises:
        DataError: the file is empty, truncated, of an unknown format, or over the pixel budget.
    """
    return decode(data, where)


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
    if min(height, width) < MIN_SIDE:
        raise DataError(f"{where}: image of {width}x{height} px is too small (at least {MIN_SIDE} px a side)")
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
