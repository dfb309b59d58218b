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
are max-projected; only the first time point is read. Torch-free.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

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


def _reduce_axes(data: np.ndarray, axes: str, where: str) -> np.ndarray:
    """Any tifffile/bioio axes string -> ``(C, Y, X)``: first T, max over Z, S (samples) taken as C."""
    axes = axes.upper()
    for axis in ("T", "Q", "I"):
        while axis in axes and data.ndim > 3:
            data = np.take(data, 0, axis=axes.index(axis))
            axes = axes.replace(axis, "", 1)
    if "Z" in axes:
        data = data.max(axis=axes.index("Z"))
        axes = axes.replace("Z", "")
    if "C" not in axes and "S" in axes:
        axes = axes.replace("S", "C")
    if "C" not in axes:
        data, axes = data[None], "C" + axes
    if set(axes) != {"C", "Y", "X"}:
        raise DataError(f"{where}: cannot read axes {axes!r} as channels x height x width")
    return np.ascontiguousarray(np.transpose(data, [axes.index(a) for a in "CYX"]))


def _read_ome_tiff(path: Path) -> tuple[np.ndarray, list[str]]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = _reduce_axes(np.asarray(series.asarray()), series.axes, str(path))
            names = _ome_channel_names(tif.ome_metadata, data.shape[0])
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for bad files
        raise DataError(f"{path}: not a readable OME-TIFF ({exc.__class__.__name__}: {exc})") from None
    return data, names


def _read_bioio(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        from bioio import BioImage
    except ImportError:
        raise DataError(
            f"{path}: reading {path.suffix} files needs the microscope extra: pip install 'protloc[microscope]' "
            "and the bioio reader for the format (bioio-czi, bioio-nd2, bioio-lif)"
        ) from None
    try:
        image = BioImage(path)
        data = np.asarray(image.get_image_data("ZCYX", T=0)).max(axis=0)
        names = [str(n) for n in image.channel_names]
    except Exception as exc:  # each bioio plugin raises its own types
        raise DataError(f"{path}: not readable with bioio ({exc.__class__.__name__}: {exc})") from None
    return np.ascontiguousarray(data), names


@lru_cache(maxsize=2)
def _read_cached(path: str, mtime_ns: int, reader: str) -> tuple[np.ndarray, tuple[str, ...]]:
    file = Path(path)
    use_tifffile = reader == "tifffile" or (reader == "auto" and file.name.lower().endswith((".ome.tif", ".ome.tiff")))
    data, names = _read_ome_tiff(file) if use_tifffile else _read_bioio(file)
    return data, tuple(names)


def read_field(path: str | Path, *, reader: str = "auto") -> tuple[np.ndarray, list[str]]:
    """A microscope file's planes ``(C, H, W)`` at their native type, and the channel names.

    ``reader`` is ``auto`` (tifffile for OME-TIFF, bioio for the rest), ``tifffile`` or ``bioio``. The last two
    fields read stay cached per process, so reading the four roles of one field decodes it once.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data, names = _read_cached(str(path), path.stat().st_mtime_ns, reader)
    return data, list(names)


def read_plane(path: PlanePath) -> np.ndarray:
    """One plane of a microscope file, at its native pixel type."""
    data, _ = read_field(Path(str(path)))
    if not 0 <= path.plane < data.shape[0]:
        raise DataError(f"{path}: has {data.shape[0]} channels, no plane {path.plane}")
    return np.asarray(data[path.plane])


def field_planes(path: Path, channel_map: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Role -> :class:`PlanePath` of one microscope file (reads the file's channel names)."""
    data, names = read_field(path)
    roles = assign_roles(names if any(names) else [""] * data.shape[0], channel_map, where=str(path))
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
