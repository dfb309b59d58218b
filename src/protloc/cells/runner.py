"""Segment every field of a data set into a folder of label images, with a per-cell table.

:func:`segment_dataset` is what ``protloc segment`` runs. The output folder (by default beside the images:
``<image folder>_cells/``) holds:

* ``<Id>_cells.png`` - each field's label image, 16-bit PNG (see :mod:`protloc.cells.masks`);
* ``cells.csv`` - one row per cell: field Id, cell id, box, area, centroid, border flag;
* ``segmentation.json`` - the segmenter and its settings, the protloc version, the source folder.

Every file is written atomically; fields whose label image exists are not segmented again (a run that was
stopped resumes), unless ``overwrite``. A second process on the same folder is refused. Worker processes
segment one field each at a time, so memory stays bounded by ``workers`` fields whatever the data set size.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from protloc import __version__
from protloc.cells.masks import labels_path, read_labels, write_labels
from protloc.cells.segment import Segmenter, create_segmenter
from protloc.cells.table import Columns, concat_tables, field_table, write_table
from protloc.data.catalog import Catalog, open_dataset
from protloc.data.io import read_sample
from protloc.errors import ConfigError
from protloc.utils import atomic_write_json, default_workers
from protloc.workers import imap

SETTINGS_FILE = "segmentation.json"
TABLE_FILE = "cells.csv"


@dataclass
class SegmentationSummary:
    """What :func:`segment_dataset` did."""

    out: Path
    fields: int
    cells: int
    border_cells: int
    segmented: int
    """Fields segmented in this run (the others were found done)."""
    seconds: float
    segment_seconds: float
    """Time spent segmenting (all workers together, reading included)."""
    cells_per_field: dict[str, int] = field(default_factory=dict)

    @property
    def table(self) -> Path:
        return self.out / TABLE_FILE


def default_output(catalog: Catalog) -> Path:
    """``<image folder>_cells`` beside the image folder."""
    return catalog.image_dir.parent / f"{catalog.image_dir.name}_cells"


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder / ".segment.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{folder}: another protloc process is segmenting into this folder") from None
        yield
    finally:
        os.close(handle)


# Per-process state of the workers (and of the parent when it segments in-process).
_STATE: dict[str, Any] = {}


def _init_worker(name: str, options: Mapping[str, Any], bit_depth: int, border_margin: int) -> None:
    cv2.setNumThreads(1)  # one process per core already
    _STATE.update(segmenter=create_segmenter(name, **options), bit_depth=bit_depth, border_margin=border_margin)


def _segment_one(job: tuple[str, dict[str, Path], str, bool]) -> tuple[str, Columns, float]:
    sample_id, paths, out, reuse = job
    segmenter: Segmenter = _STATE["segmenter"]
    target = labels_path(out, sample_id)
    started = time.perf_counter()
    if reuse:
        labels = read_labels(target)
    else:
        image = read_sample(paths, segmenter.channels, bit_depth=_STATE["bit_depth"], sample_id=sample_id)
        labels = segmenter(image)
        write_labels(target, labels)
    return (
        sample_id,
        field_table(sample_id, labels, border_margin=_STATE["border_margin"]),
        (time.perf_counter() - started),
    )


def segment_dataset(
    data: str | Path | Catalog,
    out: str | Path | None = None,
    *,
    split: str = "train",
    segmenter: str = "classical",
    options: Mapping[str, Any] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    bit_depth: int = 16,
    border_margin: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> SegmentationSummary:
    """Segment every field of ``data`` and write label images, ``cells.csv`` and ``segmentation.json``.

    Args:
        data: a data set (Kaggle root, labels CSV, folder of channel images) or a :class:`Catalog`.
        out: output folder (default: :func:`default_output`).
        split: split of a Kaggle root.
        segmenter: a registered segmenter name (see :func:`~protloc.cells.segment.segmenter_names`).
        options: keyword options of that segmenter (e.g. ``{"weights": "cyto3"}`` for cellpose).
        workers: processes (default: CPUs, at most 8); each holds one field at a time.
        overwrite: segment fields again even when their label image exists.
        bit_depth: significant bits of 16-bit files (see :func:`protloc.data.io.to_uint8`).
        border_margin: a cell within this many px of the field's edge is flagged as cut by the border.
        on_progress: called with ``(fields done, fields)``.

    Raises:
        ConfigError: the folder is in use, or was segmented with other settings (pass ``overwrite``).
        DataError: a field cannot be read.
    """
    started = time.perf_counter()
    options = dict(options or {})
    catalog = data if isinstance(data, Catalog) else open_dataset(data, split=split, channels=None)
    built = create_segmenter(segmenter, **options)  # fails here, once, on a missing package or weights
    catalog.require_channels(built.channels)
    folder = Path(out) if out is not None else default_output(catalog)
    settings = {
        **built.settings(),
        "border_margin": border_margin,
        "bit_depth": bit_depth,
        "label_format": "16-bit PNG <Id>_cells.png, 0 = background",
    }
    with _exclusive(folder):
        settings_path = folder / SETTINGS_FILE
        if settings_path.is_file() and not overwrite:
            previous = json.loads(settings_path.read_text()).get("settings")
            if previous != json.loads(json.dumps(settings)):
                raise ConfigError(
                    f"{folder}: was segmented with other settings ({settings_path}); pass --overwrite to redo it"
                )
        atomic_write_json(
            settings_path, {"protloc_version": __version__, "source": str(catalog.image_dir), "settings": settings}
        )
        jobs = [
            (
                sample_id,
                catalog.files[sample_id],
                str(folder),
                not overwrite and labels_path(folder, sample_id).is_file(),
            )
            for sample_id in catalog.ids
        ]
        tables: dict[str, Columns] = {}
        segment_seconds = 0.0
        total = len(jobs)
        if on_progress:
            on_progress(0, total)
        for sample_id, table, seconds in _run(jobs, built, segmenter, options, bit_depth, border_margin, workers):
            tables[sample_id] = table
            segment_seconds += seconds
            if on_progress:
                on_progress(len(tables), total)
        ordered = [tables[sample_id] for sample_id in catalog.ids]
        table = concat_tables(ordered)
        write_table(folder / TABLE_FILE, table)
    counts = {sample_id: len(tables[sample_id]["cell"]) for sample_id in catalog.ids}
    return SegmentationSummary(
        out=folder,
        fields=len(catalog),
        cells=int(sum(counts.values())),
        border_cells=int(table["border"].sum()) if len(table["cell"]) else 0,
        segmented=sum(1 for job in jobs if not job[3]),
        seconds=time.perf_counter() - started,
        segment_seconds=segment_seconds,
        cells_per_field=counts,
    )


def _run(
    jobs: list[tuple[str, dict[str, Path], str, bool]],
    built: Segmenter,
    segmenter: str,
    options: Mapping[str, Any],
    bit_depth: int,
    border_margin: int,
    workers: int | None,
) -> Iterator[tuple[str, Columns, float]]:
    workers = min(workers or default_workers(), max(1, sum(1 for job in jobs if not job[3])))
    init = (segmenter, options, bit_depth, border_margin)
    if workers <= 1:
        _STATE.update(segmenter=built, bit_depth=bit_depth, border_margin=border_margin)
        try:
            yield from map(_segment_one, jobs)
        finally:
            _STATE.clear()
        return
    # a fork server starts the workers clean (a plain fork can hang a child on OpenCV's copied thread pool)
    yield from imap(_segment_one, jobs, workers=workers, initializer=_init_worker, initargs=init)
