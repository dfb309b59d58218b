"""Microscope files: one multi-channel file per field, its channels mapped to the four HPA roles.

HPA releases store one grayscale file per channel (``<Id>_<red|green|blue|yellow>.png``). A microscope writes
one file per field holding every channel: OME-TIFF (read here with tifffile, channel names from the OME-XML)
or a vendor format (Zeiss ``.czi``, Nikon ``.nd2``, Leica ``.lif``) read through the ``bioio`` readers, an
optional extra (``pip install 'protloc[microscope]'`` plus the reader plugin for the format).

A field's channels are given roles (red = microtubules, green = protein, blue = nucleus, yellow = ER) from
their names (``DAPI`` -> blue, ``Tubulin`` -> red, ``Calreticulin`` -> yellow, ``GFP``/``Alexa 488`` ->
green, ...), or from a channel map the user gives (``"DAPI=blue,Tub=red,Ab=green,ER=yellow"`` or by index
``"0=blue,1=green"``). The catalog records each role as a :class:`PlanePath`: the file's path plus the
plane index, so every reader (cache, prediction, explain) takes it where it takes a channel file. Z stacks
are max-projected; only the first time point is read. Files are read as the one decoder reads every image
(:mod:`protloc.data.decoder`): the header first, each plane checked against the pixel budget (``PROTLOC_MAX_PIXELS``)
before a pixel is decoded, then only the pages of the channel asked for, one page at a time. Torch-free.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc.data.decoder import ImageHeader, check_budget
from protloc.errors import ConfigError, DataError

MICROSCOPE_SUFFIXES: tuple[str, ...] = (".ome.tif", ".ome.tiff", ".czi", ".nd2", ".lif")
"""Names of one-file-per-field microscope files (OME-TIFF through tifffile, the rest through bioio)."""
ROLES: tuple[str, ...] = ("red", "green", "blue", "yellow")

# Words in a channel name that give its role (checked as whole words or name starts, case-insensitive).
_ROLE_WORDS: dict[str, tuple[str, ...]] = {
    "blue": ("dapi", "hoechst", "nucleus", "nuclei", "nuclear", "dna", "blue", "draq5"),
    "red": ("tubulin", "microtubule", "microtubules", "mt", "red"),
    "yellow": ("er", "calreticulin", "calnexin", "reticulum", "endoplasmic", "yellow", "pdi"),
    "green": ("protein", "antibody", "ab", "gfp", "egfp", "green", "488", "target", "poi"),
}

_Base: Any = type(Path())


class PlanePath(_Base):
    """One plane (channel) of a multi-channel microscope file: a path to the file, plus which plane."""

    plane: int

    def __new__(cls, path: str | Path, plane: int = 0) -> PlanePath:
        self = super().__new__(cls, path) if sys.version_info < (3, 12) else super().__new__(cls)
        self.plane = int(plane)
        return self

    def __init__(self, path: str | Path, plane: int = 0) -> None:
        if sys.version_info >= (3, 12):
            super().__init__(path)
        self.plane = int(plane)

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (PlanePath, (str(self), self.plane))

    def __repr__(self) -> str:
        return f"PlanePath({str(self)!r}, plane={self.plane})"


def is_microscope_file(name: str | Path) -> bool:
    return str(name).lower().endswith(MICROSCOPE_SUFFIXES)


def field_id(path: Path) -> str:
    """The sample id of a microscope file: its name without the format suffix (``a1.ome.tif`` -> ``a1``)."""
    lowered = path.name.lower()
    for suffix in MICROSCOPE_SUFFIXES:
        if lowered.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def parse_channel_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"DAPI=blue,Tubulin=red"`` (names or plane indices) -> ``{"dapi": "blue", "tubulin": "red"}``.

    Raises:
        ConfigError: a part without ``=``, an unknown role, or a role given twice.
    """
    if spec is None:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else (part.split("=", 1) for part in spec.split(",") if part)
    mapping: dict[str, str] = {}
    for item in items:
        if len(item) != 2:
            raise ConfigError(f"channel map part {'='.join(item)!r} needs NAME=ROLE (e.g. DAPI=blue)")
        name, role = item[0].strip().lower(), item[1].strip().lower()
        if role not in ROLES:
            raise ConfigError(f"channel map: {role!r} is not a role; roles are {', '.join(ROLES)}")
        if role in mapping.values():
            raise ConfigError(f"channel map: role {role} is given twice")
        mapping[name] = role
    return mapping


def assign_roles(names: Sequence[str], channel_map: Mapping[str, str] | None = None, *, where: str) -> dict[str, int]:
    """Role -> plane index for a file whose planes are called ``names``.

    A user map wins (keys are names or indices); otherwise names are matched to roles by their words; a file
    with exactly four unnamed planes is taken in HPA order (red, green, blue, yellow).

    Raises:
        DataError: a role matched by several planes, or names that say nothing and no map.
    """
    if channel_map:
        roles: dict[str, int] = {}
        for key, role in channel_map.items():
            index = int(key) if key.isdigit() else next((i for i, n in enumerate(names) if n.lower() == key), None)
            if index is None or not 0 <= index < len(names):
                listed = ", ".join(repr(n) for n in names)
                raise DataError(f"{where}: channel map names {key!r}, but the file's channels are {listed}")
            roles[role] = index
        return roles
    roles = {}
    for index, name in enumerate(names):
        words = set(re.split(r"[^a-z0-9]+", name.lower())) - {""}
        matched = [role for role, keys in _ROLE_WORDS.items() if words & set(keys)]
        if len(matched) == 1:
            role = matched[0]
            if role in roles:
                raise DataError(
                    f"{where}: channels {names[roles[role]]!r} and {name!r} both look like {role}; "
                    "give --channel-map (e.g. DAPI=blue,Tubulin=red,Ab=green,ER=yellow)"
                )
            roles[role] = index
    if (
        not roles
        and len(names) == 4
        and all(not n or re.fullmatch(r"(c|channel)?[ :_-]*\d+", n.lower()) for n in names)
    ):
        return {role: i for i, role in enumerate(ROLES)}
    if not roles:
        listed = ", ".join(repr(n) for n in names) or "no names"
        raise DataError(
            f"{where}: cannot tell the roles of its channels ({listed}); give --channel-map "
            "(e.g. DAPI=blue,Tubulin=red,Ab=green,ER=yellow or 0=blue,1=green)"
        )
    return roles


# --------------------------------------------------------------------------- reading
def _ome_channel_names(xml: str | None, count: int) -> list[str]:
    if not xml:
        return [""] * count
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return [""] * count
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    channels = [] if pixels is None else [el for el in pixels if el.tag.endswith("Channel")]
    names = [el.get("Name") or el.get("Fluor") or "" for el in channels]
    return names if len(names) == count else [""] * count


@dataclass(frozen=True)
class FieldHeader:
    """What a microscope file declares, read without decoding a pixel: its channels, their names and the plane
    size and type (already checked against the pixel budget of :mod:`protloc.data.decoder`)."""

    channels: int
    names: tuple[str, ...]
    height: int
    width: int
    dtype: np.dtype


@dataclass(frozen=True)
class _TiffLayout:
    """How the pages of a TIFF series map onto channels: the axes in front of each page, which one holds the
    channels (or ``S``, the samples of a page), and the page's declared size."""

    leading: tuple[tuple[str, int], ...]
    channel_axis: str | None
    samples: int
    header: FieldHeader

    def pages_of(self, plane: int) -> Iterator[int]:
        """The page indices holding ``plane``: every Z (max-projected), the first T and of any other axis."""
        shape = tuple(n for _, n in self.leading)
        choices = []
        for axis, size in self.leading:
            if axis == self.channel_axis:
                choices.append([plane])
            elif axis == "Z":
                choices.append(list(range(size)))
            else:
                choices.append([0])
        for combo in itertools.product(*choices):
            yield int(np.ravel_multi_index(combo, shape)) if shape else 0


_FIRST_ONLY = frozenset("TQI")
"""Axes of which only the first index is read (time points; unnamed sequences that are not the channels)."""


def _tiff_layout(tif: Any, where: str) -> _TiffLayout:
    if not tif.series:
        raise DataError(f"{where}: TIFF file holds no image")
    series = tif.series[0]
    axes = str(series.get_axes(False)).upper()
    shape = tuple(int(n) for n in series.get_shape(False))
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{where}: cannot read axes {axes!r} as channels x height x width")
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    samples = shape[axes.index("S")] if "S" in axes else 1
    leading = tuple((a, n) for a, n in zip(axes, shape, strict=True) if a not in "YXS")
    sizes = dict(leading)
    channel_axis: str | None = None
    if sizes.get("C", 1) > 1 or (samples == 1 and "C" in sizes):
        channel_axis = "C"
    if samples > 1:
        if sizes.get("C", 1) > 1:
            raise DataError(f"{where}: cannot read axes {axes!r}: channels of several samples each")
        channel_axis = "S"
    elif sizes.get("C", 1) == 1:
        unnamed = [a for a in ("Q", "I") if sizes.get(a, 1) > 1]
        if len(unnamed) == 1:
            channel_axis = unnamed[0]
    for axis, size in leading:
        if size > 1 and axis not in ("C", "Z", *_FIRST_ONLY):
            raise DataError(f"{where}: cannot read axes {axes!r} as channels x height x width")
    channels = samples if channel_axis == "S" else sizes.get(channel_axis or "", 1)
    dtype = np.dtype(series.dtype)
    page = ImageHeader("tiff", (height, width) if samples == 1 else (height, width, samples), dtype)
    check_budget(page, where)  # every page read is one plane (or one pixel-interleaved page): refused before decoding
    names = _ome_channel_names(tif.ome_metadata, channels)
    return _TiffLayout(leading, channel_axis, samples, FieldHeader(channels, tuple(names), height, width, dtype))


@contextlib.contextmanager
def _tiff(path: Path) -> Iterator[tuple[Any, _TiffLayout]]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            yield tif, _tiff_layout(tif, str(path))
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for bad files
        raise DataError(f"{path}: not a readable OME-TIFF ({exc.__class__.__name__}: {exc})") from None


def _tiff_plane(path: Path, plane: int) -> np.ndarray:
    """One channel of a TIFF series, page by page: only its pages are decoded, each within the budget."""
    with _tiff(path) as (tif, layout):
        _check_plane(path, plane, layout.header)
        projected: np.ndarray | None = None
        pages = len(tif.series[0].pages)
        for index in layout.pages_of(plane):
            if index >= pages:
                raise DataError(f"{path}: truncated OME-TIFF (its description names more planes than it holds)")
            data = np.asarray(tif.asarray(key=index, series=0))
            if layout.samples > 1:
                data = data[..., plane] if layout.channel_axis == "S" else data.max(axis=-1)
            if data.shape != (layout.header.height, layout.header.width):
                raise DataError(f"{path}: a page of shape {data.shape} differs from its series' planes")
            projected = data if projected is None else np.maximum(projected, data, out=projected)
    assert projected is not None
    return projected


def _bioio_image(path: Path) -> tuple[Any, FieldHeader]:
    try:
        from bioio import BioImage
    except ImportError:
        raise DataError(
            f"{path}: reading {path.suffix} files needs the microscope extra: pip install 'protloc[microscope]' "
            "and the bioio reader for the format (bioio-czi, bioio-nd2, bioio-lif)"
        ) from None
    try:
        image = BioImage(path)
        dims = image.dims
        header = FieldHeader(
            int(dims.C),
            tuple(str(n) for n in image.channel_names),
            int(dims.Y),
            int(dims.X),
            np.dtype(image.dtype),
        )
    except Exception as exc:  # each bioio plugin raises its own types
        raise DataError(f"{path}: not readable with bioio ({exc.__class__.__name__}: {exc})") from None
    check_budget(ImageHeader("other", (header.height, header.width), header.dtype), str(path))
    return image, header


def _bioio_plane(path: Path, plane: int) -> np.ndarray:
    image, header = _bioio_image(path)
    _check_plane(path, plane, header)
    try:
        data = np.asarray(image.get_image_data("ZYX", T=0, C=plane)).max(axis=0)
    except Exception as exc:
        raise DataError(f"{path}: not readable with bioio ({exc.__class__.__name__}: {exc})") from None
    return np.ascontiguousarray(data)


def _check_plane(path: Path, plane: int, header: FieldHeader) -> None:
    if not 0 <= plane < header.channels:
        raise DataError(f"{path}: has {header.channels} channels, no plane {plane}")


def _uses_tifffile(path: Path, reader: str) -> bool:
    if reader not in ("auto", "tifffile", "bioio"):
        raise ConfigError(f"reader {reader!r} is not one of auto, tifffile, bioio")
    return reader == "tifffile" or (reader == "auto" and path.name.lower().endswith((".ome.tif", ".ome.tiff")))


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def read_header(path: str | Path, *, reader: str = "auto") -> FieldHeader:
    """A microscope file's channels, names, plane size and pixel type, from its header (no pixel decoded).

    Raises:
        DataError: unreadable, axes that are not channels x height x width, or planes over the pixel budget
            (:func:`protloc.data.decoder.max_pixels`).
    """
    path = _existing(path)
    if _uses_tifffile(path, reader):
        with _tiff(path) as (_, layout):
            return layout.header
    return _bioio_image(path)[1]


def read_plane(path: PlanePath | str | Path, plane: int | None = None, *, reader: str = "auto") -> np.ndarray:
    """One channel of a microscope file ``(H, W)`` at its native pixel type, max-projected over Z, first time
    point. Only that channel's planes are decoded, after the header was checked against the pixel budget."""
    index = plane if plane is not None else getattr(path, "plane", 0)
    file = _existing(str(path))
    return _tiff_plane(file, index) if _uses_tifffile(file, reader) else _bioio_plane(file, index)


def read_field(path: str | Path, *, reader: str = "auto") -> tuple[np.ndarray, list[str]]:
    """All channels of a microscope file ``(C, H, W)`` at their native type, and the channel names (read channel
    by channel, as :func:`read_plane` reads one).

    ``reader`` is ``auto`` (tifffile for OME-TIFF, bioio for the rest), ``tifffile`` or ``bioio``.
    """
    header = read_header(path, reader=reader)
    planes = [read_plane(path, index, reader=reader) for index in range(header.channels)]
    return np.stack(planes), list(header.names)


def field_planes(path: Path, channel_map: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Role -> :class:`PlanePath` of one microscope file (from its header: channel count and names)."""
    header = read_header(path)
    names = list(header.names) if any(header.names) else [""] * header.channels
    roles = assign_roles(names, channel_map, where=str(path))
    return {role: PlanePath(path, index) for role, index in roles.items()}


def write_ome_tiff(path: str | Path, planes: np.ndarray, channel_names: Sequence[str]) -> Path:
    """Write ``(C, H, W)`` planes as an OME-TIFF with channel names (for tests, benchmarks and conversions)."""
    import tifffile

    path = Path(path)
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.shape[0] != len(channel_names):
        raise ValueError(f"planes {planes.shape} and {len(channel_names)} channel names do not agree")
    tifffile.imwrite(path, planes, ome=True, metadata={"axes": "CYX", "Channel": {"Name": list(channel_names)}})
    return path
