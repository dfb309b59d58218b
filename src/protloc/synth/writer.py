"""Writing a synthetic data set in the Kaggle layout: ids, labels, worker processes, atomic swap into place."""

from __future__ import annotations

import csv
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from protloc.cells.masks import labels_path, write_labels
from protloc.cells.table import Columns, concat_tables, field_table, write_table
from protloc.data.io import write_channel
from protloc.errors import ConfigError
from protloc.synth.labels import SYNTH_SCHEME, sample_label_sets, synth_id
from protloc.synth.sample import MAX_SIZE, MIN_SIZE, generate_sample, generate_sample_with_cells
from protloc.utils import atomic_folder, default_workers
from protloc.workers import imap

IMAGE_FORMATS: tuple[str, ...] = ("png", "tif", "jpg")
_KEY_LABELS, _KEY_ID, _KEY_IMAGE = 0, 1, 2  # SeedSequence spawn keys: (purpose, split, index)
_TRAIN_CSV, _TEST_TRUTH_CSV, _SUBMISSION_CSV = "train.csv", "test_truth.csv", "sample_submission.csv"
CELL_TRUTH_FOLDERS = {"train": "train_cells_truth", "test": "test_cells_truth"}
"""Single-cell truth of each split (``cells=True``): ``<Id>_cells.png`` label images and ``cells.csv``."""
CELL_TRUTH_TABLE = "cells.csv"
_LAYOUT_NAMES = frozenset({_TRAIN_CSV, _TEST_TRUTH_CSV, _SUBMISSION_CSV, "train", "test", *CELL_TRUTH_FOLDERS.values()})


# --------------------------------------------------------------------------------------------------------------
# Writing a data set
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SynthSummary:
    """What :func:`make_dataset` wrote.

    Attributes:
        out: the data set folder.
        n_train: training samples (``train.csv``, ``train/``).
        n_test: test samples (``test/``, ``sample_submission.csv``, ``test_truth.csv``).
        size: image side in pixels.
        seed: the seed everything derives from.
        seconds: wall time of the whole run.
        class_counts: training samples holding each class (28 ints).
        test_class_counts: test samples holding each class (28 ints).
        image_format: ``"png"``, ``"tif"`` or ``"jpg"``.
        bit_depth: 8 or 16.
        workers: worker processes used.
        files: image files written (4 per sample).
        cells: single cells in the written truth (``cells=True``).
    """

    out: Path
    n_train: int
    n_test: int
    size: int
    seed: int
    seconds: float
    class_counts: list[int]
    test_class_counts: list[int] = field(default_factory=list)
    image_format: str = "png"
    bit_depth: int = 8
    workers: int = 1
    files: int = 0
    cells: int = 0
    """single cells in the written truth (0 without ``cells=True``)."""

    @property
    def samples_per_second(self) -> float:
        total = self.n_train + self.n_test
        return total / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class _Task:
    folder: str
    sample_id: str
    labels: np.ndarray
    seed: int
    split: int
    index: int
    size: int
    image_format: str
    bit_depth: int
    cells_folder: str | None = None
    """where the field's label image goes (``None``: no single-cell truth)."""


def _sample_rng(seed: int, purpose: int, split: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose, split, index)))


def _write_task(task: _Task) -> tuple[str, Columns | None]:
    """Write one sample's channel files (and its label image); return its per-cell truth rows, if asked."""
    rng = _sample_rng(task.seed, _KEY_IMAGE, task.split, task.index)
    rows: Columns | None = None
    if task.cells_folder is None:
        planes = generate_sample(task.labels, task.size, rng)
    else:
        planes, truth = generate_sample_with_cells(task.labels, task.size, rng)
        write_labels(labels_path(task.cells_folder, task.sample_id), truth.labels)
        rows = field_table(task.sample_id, truth.labels, predicted=truth.classes)
    folder = Path(task.folder)
    for channel, plane in planes.items():
        data = plane.astype(np.uint16) * np.uint16(257) if task.bit_depth == 16 else plane
        write_channel(folder / f"{task.sample_id}_{channel}.{task.image_format}", data)
    return task.sample_id, rows


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _run_tasks(tasks: list[_Task], workers: int) -> Iterator[tuple[str, Columns | None]]:
    """Write the samples, yielding each one's id and cell truth as it is written (in this process when
    ``workers == 1``)."""
    per_chunk = max(1, min(16, len(tasks) // (workers * 8)))
    chunks = -(-len(tasks) // per_chunk)
    yield from imap(
        _write_task,
        tasks,
        workers=workers,
        chunksize=per_chunk,
        window=max(2 * workers, chunks),  # every chunk queued at once: no worker waits for a slow one
        initializer=_init_worker if workers > 1 else None,
        preload=[__name__],
    )


def _validate(
    n_train: int, n_test: int, size: int, seed: int, min_per_class: int, image_format: str, bit_depth: int, workers: int
) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    for name, value in (("n_train", n_train), ("n_test", n_test), ("size", size), ("seed", seed)):
        if not is_int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if n_train < 1:
        raise ConfigError(f"n_train must be at least 1, got {n_train}")
    if n_test < 0:
        raise ConfigError(f"n_test must be 0 or more, got {n_test}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} px, got {size}")
    if seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {seed}")
    if not is_int(min_per_class) or min_per_class < 0:
        raise ConfigError(f"min_per_class must be a whole number >= 0, got {min_per_class!r}")
    if min_per_class * SYNTH_SCHEME.num_classes > n_train:
        raise ConfigError(
            f"min_per_class={min_per_class} needs n_train >= {min_per_class * SYNTH_SCHEME.num_classes} "
            f"({SYNTH_SCHEME.num_classes} classes x {min_per_class}); got n_train={n_train}"
        )
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if bit_depth not in (8, 16):
        raise ConfigError(f"bit depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and image_format == "jpg":
        raise ConfigError("16-bit images need png or tif; jpg is 8-bit only")
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already exists and is not empty; choose another folder or pass overwrite=True (--overwrite)"
            )
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _LAYOUT_NAMES)
        if foreign:
            raise ConfigError(
                f"{out} holds files a synthetic data set does not (e.g. {foreign[0]!r}); "
                "refusing to overwrite it, remove them or choose another folder"
            )


def _write_labels_csv(path: Path, header: tuple[str, str], rows: Iterable[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _make_ids(seed: int, split: int, n: int, taken: set[str]) -> list[str]:
    ids: list[str] = []
    for index in range(n):
        attempt = 0
        while True:  # a collision has odds of about 2**-100; resolved deterministically all the same
            sample_id = synth_id(_sample_rng(seed, _KEY_ID, split, index * 1000 + attempt))
            if sample_id not in taken:
                break
            attempt += 1
        taken.add(sample_id)
        ids.append(sample_id)
    return ids


def make_dataset(
    out: str | Path,
    *,
    n_train: int,
    n_test: int = 0,
    size: int = 512,
    seed: int = 0,
    min_per_class: int = 0,
    image_format: str = "png",
    bit_depth: int = 8,
    workers: int | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    cells: bool = False,
) -> SynthSummary:
    """Write a synthetic data set in the Kaggle HPA 2018 layout (see the module docstring).

    The data set is written into a hidden sibling folder and renamed into place at the end, so an
    interrupted run never leaves a half-written folder that looks complete.

    Args:
        out: the data set folder; must not exist, or be empty (or hold a previous data set and ``overwrite``).
        n_train: training samples (>= 1).
        n_test: test samples (>= 0).
        size: side of the square images, 32-4096 px.
        seed: everything derives from it; the same seed gives byte-identical files.
        min_per_class: at least this many training samples hold each class (0 = real frequencies). The test
            split gets the proportional minimum, ``ceil(min_per_class * n_test / n_train)``, as far as
            ``n_test`` allows.
        image_format: ``"png"``, ``"tif"`` or ``"jpg"``.
        bit_depth: 8, or 16 (png/tif only): 8-bit values times 257, which protloc reads back unchanged.
        workers: worker processes (default: the usable CPUs, at most 8, and one per 16 samples). The files do
            not depend on it. Workers start from a fork server (spawn where there is none) and re-import the
            calling script, so a script must call this under ``if __name__ == "__main__":``.
        overwrite: replace ``out`` if it already holds a data set. A folder holding anything the generator
            does not write is never replaced.
        on_progress: called as ``on_progress(done, total)`` after each sample is written (for a caller's own
            progress display).
        cells: also write each split's single-cell truth (see :mod:`protloc.synth.cells`) into
            ``train_cells_truth/`` and ``test_cells_truth/``: a 16-bit label image ``<Id>_cells.png`` per field
            (the format of ``protloc segment``) and ``cells.csv`` (field ``id``, ``cell``, box, area, centroid,
            border flag, ``labels`` = the cell's class ids ``|``-separated). The images do not change.

    Raises:
        ConfigError: an invalid argument, or an output folder that cannot be used.
    """
    image_format = image_format.lower().lstrip(".") if isinstance(image_format, str) else image_format
    if image_format == "tiff":
        image_format = "tif"
    _validate(n_train, n_test, size, seed, min_per_class, image_format, bit_depth, 1 if workers is None else workers)
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # This is a worker process re-importing a calling script that has no __main__ guard: stop before
        # touching the disk (the parent then reports the broken pool).
        raise ConfigError(
            'make_dataset ran while a worker process was starting: call it under `if __name__ == "__main__":`'
        )
    if workers is None:  # a worker needs ~16 samples to pay for its start
        workers = max(1, min(default_workers(), (n_train + n_test) // 16))
    out = Path(out)
    target = out.absolute()
    _check_target(target, overwrite)
    started = time.perf_counter()

    train_labels = sample_label_sets(n_train, _sample_rng(seed, _KEY_LABELS, 0), min_per_class)
    test_min = min(math.ceil(min_per_class * n_test / n_train), n_test // SYNTH_SCHEME.num_classes)
    test_labels = sample_label_sets(n_test, _sample_rng(seed, _KEY_LABELS, 1), test_min)
    taken: set[str] = set()
    train_ids = _make_ids(seed, 0, n_train, taken)
    test_ids = _make_ids(seed, 1, n_test, taken)

    with atomic_folder(target, before_replace=lambda old: _check_target(old, overwrite)) as staging:
        (staging / "train").mkdir()
        (staging / "test").mkdir()
        truth_dirs = {split: staging / name for split, name in CELL_TRUTH_FOLDERS.items()}
        if cells:
            for folder in truth_dirs.values():
                folder.mkdir()

        def cells_dir(split: str) -> str | None:
            return str(truth_dirs[split]) if cells else None

        tasks = [
            _Task(str(staging / "train"), i, lab, seed, 0, k, size, image_format, bit_depth, cells_dir("train"))
            for k, (i, lab) in enumerate(zip(train_ids, train_labels, strict=True))
        ] + [
            _Task(str(staging / "test"), i, lab, seed, 1, k, size, image_format, bit_depth, cells_dir("test"))
            for k, (i, lab) in enumerate(zip(test_ids, test_labels, strict=True))
        ]
        cell_rows: dict[str, Columns] = {}
        workers = max(1, min(workers, len(tasks)))
        for count, (sample_id, truth_rows) in enumerate(_run_tasks(tasks, workers), start=1):
            if truth_rows is not None:
                cell_rows[sample_id] = truth_rows
            if on_progress is not None:
                on_progress(count, len(tasks))

        train_rows = sorted(zip(train_ids, (SYNTH_SCHEME.format(v) for v in train_labels), strict=True))
        test_rows = sorted(zip(test_ids, (SYNTH_SCHEME.format(v) for v in test_labels), strict=True))
        _write_labels_csv(staging / _TRAIN_CSV, ("Id", "Target"), train_rows)
        _write_labels_csv(staging / _TEST_TRUTH_CSV, ("Id", "Target"), test_rows)
        _write_labels_csv(staging / _SUBMISSION_CSV, ("Id", "Predicted"), ((i, "0") for i, _ in test_rows))
        if cells:
            for split, rows in (("train", train_rows), ("test", test_rows)):
                table = concat_tables([cell_rows[sample_id] for sample_id, _ in rows])
                write_table(truth_dirs[split] / CELL_TRUTH_TABLE, table)
    return SynthSummary(
        out=out,
        n_train=n_train,
        n_test=n_test,
        size=size,
        seed=seed,
        seconds=time.perf_counter() - started,
        class_counts=[int(c) for c in train_labels.sum(axis=0)],
        test_class_counts=[int(c) for c in test_labels.sum(axis=0)] if n_test else [0] * SYNTH_SCHEME.num_classes,
        image_format=image_format,
        bit_depth=bit_depth,
        workers=workers,
        files=4 * (n_train + n_test),
        cells=sum(len(rows["cell"]) for rows in cell_rows.values()),
    )
