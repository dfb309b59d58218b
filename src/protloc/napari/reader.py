"""The napari reader: an HPA field opens as its channel layers (red, green, blue, yellow), pixels as stored.

What opens (``File > Open``, drag and drop, ``viewer.open(path, plugin="protloc")``):

* one channel file ``<Id>_<red|green|blue|yellow>.<png|tif|jpg>`` of any HPA generation: its whole field, the
  sibling files of the same Id (:func:`protloc.data.catalog.sample_files`); several files of one field open it once;
* a microscope file (OME-TIFF; CZI, ND2, LIF with ``protloc[microscope]``): its channels, given their roles
  from their names as ``protloc predict`` gives them (:mod:`protloc.data.microscope`);
* a folder holding one field.

Pixels come through protloc's one decoder (:func:`protloc.data.io.read_channel_raw`): the header is checked against
the pixel budget before anything is decoded, and 8- or 16-bit data stays as stored (the widget maps it to 8 bits
the way ``protloc predict`` does). A file protloc refuses (over the budget, corrupt, roles it cannot tell) is a
one-line error notification, not a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protloc.errors import DataError, ProtlocError
from protloc.napari.layers import LayerData, channel_layer

PathOrPaths = str | Sequence[str]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[Any]] | None:
    """The reader for ``path`` if it names HPA fields (see the module docstring), else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_field_path(Path(p)) for p in paths):
        return None
    return read_fields


def _is_field_path(path: Path) -> bool:
    from protloc.data.io import split_channel_filename
    from protloc.data.microscope import is_microscope_file

    if path.is_dir():
        return any(split_channel_filename(p.name) or is_microscope_file(p.name) for p in path.iterdir())
    return is_microscope_file(path.name) or split_channel_filename(path.name) is not None


NOTHING: list[Any] = [(None,)]
"""What a reader returns to tell napari that it read the path and there is nothing to add."""


def read_fields(path: PathOrPaths) -> list[Any]:
    """The channel layers of every field ``path`` names, each field once; a protloc error is shown as a
    notification and nothing is opened."""
    from napari.utils.notifications import show_error

    try:
        return list(field_layers(path))
    except ProtlocError as exc:
        show_error(str(exc))
        return NOTHING


def field_layers(path: PathOrPaths) -> list[LayerData]:
    """The channel layers of the fields ``path`` names (napari-free apart from the colormaps).

    Raises:
        DataError: a file that cannot be read, or a folder with no field or several.
    """
    from protloc.data.catalog import sample_files

    layers: list[LayerData] = []
    opened: set[tuple[str, ...]] = set()
    for item in [path] if isinstance(path, str) else list(path):
        field_id, files = sample_files(_field_file(Path(item)))
        key = tuple(sorted(str(f) for f in files.values()))
        if key in opened:
            continue
        opened.add(key)
        layers.extend(read_field_layers(field_id, files))
    return layers


def _field_file(path: Path) -> Path:
    """A folder's one field (one of its files); any other path as it is."""
    if not path.is_dir():
        return path
    from protloc.data.catalog import index_images

    index = index_images(path)
    if len(index.files) != 1:
        found = f"{len(index.files)} fields" if index.files else "no field"
        raise DataError(f"{path}: a folder opens when it holds one field, and it holds {found}; open one of its files")
    return next(iter(next(iter(index.files.values())).values()))


def read_field_layers(field_id: str, files: dict[str, Path]) -> list[LayerData]:
    """One image layer per channel file of a field, in HPA order, at the files' own pixel type.

    Raises:
        DataError: no channel file, or a file the decoder refuses.
    """
    from protloc.data.io import CHANNELS, read_channel_raw

    if not files:
        raise DataError(f"field {field_id}: no channel files")
    planes = {c: np.asarray(read_channel_raw(files[c])) for c in CHANNELS if c in files}
    return [channel_layer(plane, channel, field_id, files[channel]) for channel, plane in planes.items()]
