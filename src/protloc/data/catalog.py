"""Finding samples on disk: the Kaggle layout, a labels CSV, or a bare folder of channel images.

A :class:`Catalog` is the ordered list of sample ids of one split, the channel files of each, and their
multi-hot labels under a class scheme (:mod:`protloc.schemes`) when a labels CSV exists. Everything
downstream (cache, training, prediction) takes a Catalog, so a data set is found and checked in exactly one
place. Torch-free.

Layouts understood by :func:`open_dataset`:

* a Kaggle root: ``train.csv`` + ``train/<Id>_<channel>.png``, and ``test/`` ordered by
  ``sample_submission.csv`` (``split="test"``);
* the Kaggle 2021 root: the same, with ``train.csv`` as ``ID,Label`` (ids separated by ``|``, 19 classes) and
  ``sample_submission.csv`` as ``ID,ImageWidth,ImageHeight,PredictionString``;
* a labels CSV (``Id,Target`` or ``ID,Label``) whose images lie in the folder of the same stem beside it
  (``train.csv`` -> ``train/``), in ``images/`` beside it, or in the CSV's own folder; a folder holding
  ``labels.csv`` and ``images/``;
* a folder of channel images with no CSV: ids come from the file names, and there are no labels.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np

from protloc.data.io import CHANNELS, IMAGE_EXTENSIONS, split_channel_filename
from protloc.data.microscope import field_id, field_planes, is_microscope_file, parse_channel_map
from protloc.errors import DataError, LabelError
from protloc.schemes import BUILTIN_SCHEMES, LABEL_HEADERS, ClassScheme, detect_scheme, get_mapping, get_scheme

LABEL_HEADER = ("Id", "Target")
"""The 2018 labels header; 2021's ``ID,Label`` is read too (see :data:`protloc.schemes.LABEL_HEADERS`)."""
SUBMISSION_HEADER = ("Id", "Predicted")
SUBMISSION_HEADER_2021 = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
"""The 2021 release's ``sample_submission.csv``: the field size and one string of per-cell predictions."""


@dataclass
class ImageIndex:
    """The channel files found in one folder, grouped by sample id."""

    folder: Path
    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    duplicates: list[tuple[str, str, list[Path]]] = field(default_factory=list)
    """(id, channel, files) where one channel of one sample has several files (e.g. .png and .tif)."""
    stray: list[Path] = field(default_factory=list)
    """Image files whose names are not ``<Id>_<channel>.<ext>``."""


def index_images(folder: str | Path, channel_map: str | Mapping[str, str] | None = None) -> ImageIndex:
    """Group the channel files in ``folder`` (not recursive) by sample id.

    When one channel of a sample has several files, the extension that comes first in
    :data:`~protloc.data.io.IMAGE_EXTENSIONS` wins and the clash is recorded in ``duplicates``. A microscope file
    (OME-TIFF, CZI, ND2, LIF: one file per field) is one sample: its channels get their roles from their names
    or ``channel_map`` (see :mod:`protloc.data.microscope`).
    """
    roles = parse_channel_map(channel_map) if not isinstance(channel_map, Mapping) else dict(channel_map)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    found: dict[str, dict[str, list[Path]]] = {}
    stray: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            if is_microscope_file(entry.name):
                path = Path(entry.path)
                for role, plane in field_planes(path, roles).items():
                    found.setdefault(field_id(path), {}).setdefault(role, []).append(plane)
                continue
            parsed = split_channel_filename(entry.name)
            if parsed is None:
                if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    stray.append(Path(entry.path))
                continue
            sample_id, channel = parsed
            found.setdefault(sample_id, {}).setdefault(channel, []).append(Path(entry.path))
    index = ImageIndex(folder=folder, stray=sorted(stray))
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    for sample_id in sorted(found):
        channels = {}
        for channel, paths in found[sample_id].items():
            paths.sort(key=lambda p: (rank.get(p.suffix.lower(), 99), p.name))
            channels[channel] = paths[0]
            if len(paths) > 1:
                index.duplicates.append((sample_id, channel, paths))
        index.files[sample_id] = channels
    return index


def sample_files(path: str | Path) -> tuple[str, dict[str, Path]]:
    """One sample from one of its files: its Id and channel -> file, the way :func:`index_images` groups them.

    ``path`` is a microscope file (OME-TIFF, CZI, ND2, LIF: every channel in it, roles from the channel names)
    or one channel file ``<Id>_<channel>.<ext>``, whose siblings in the same folder are the other channels
    (where a channel has several files, the extension first in :data:`~protloc.data.io.IMAGE_EXTENSIONS` wins). Only
    that sample's files are looked at, never the whole folder.

    Raises:
        DataError: the file is missing, or is neither a microscope file nor named as a channel file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if is_microscope_file(path.name):
        return field_id(path), dict(field_planes(path))
    parsed = split_channel_filename(path.name)
    if parsed is None:
        raise DataError(
            f"{path}: not a channel file <Id>_<red|green|blue|yellow>.<png|tif|jpg> nor a microscope file "
            "(OME-TIFF, CZI, ND2, LIF)"
        )
    sample_id = parsed[0]
    files: dict[str, Path] = {}
    for channel in CHANNELS:
        for extension in IMAGE_EXTENSIONS:
            found = [path.parent / f"{sample_id}_{channel}{e}" for e in dict.fromkeys((extension, extension.upper()))]
            hit = next((candidate for candidate in found if candidate.is_file()), None)
            if hit is not None:
                files[channel] = hit
                break
    return sample_id, files


@dataclass(frozen=True)
class CsvProblem:
    """One problem found in a labels CSV: the line (1-based, header = 1), the id if known, and what."""

    kind: str
    line: int
    sample_id: str | None
    message: str


def scan_labels(
    path: str | Path,
    *,
    scheme: str | Path | ClassScheme | None = None,
    header: Sequence[str] | None = None,
    allow_empty: bool = False,
) -> tuple[list[str], np.ndarray, list[CsvProblem], ClassScheme]:
    """Read a labels CSV of either release, collecting every problem instead of stopping at the first.

    The header may be ``Id,Target`` (2018, user files) or ``ID,Label`` (2021), or ``header`` when given; ids
    may be separated by spaces or ``|``. Without ``scheme`` the scheme is detected from the header,
    separators and id range (:func:`protloc.schemes.detect_scheme`); a named scheme whose release header
    differs from the file's (``--classes hpa2018`` on an ``ID,Label`` file) is a problem.

    Returns:
        The ids of the good rows, their multi-hot labels ``(N, C)``, the problems (bad header, empty file, bad
        labels, duplicate ids, rows with the wrong number of fields) and the scheme the labels are in.
    """
    path = Path(path)
    named = get_scheme(scheme) if scheme is not None else None
    fallback = named or get_scheme(None)
    problems: list[CsvProblem] = []
    read = _read_labels_file(path, [tuple(header)] if header is not None else list(LABEL_HEADERS), problems)
    if read is None:
        return [], fallback.zeros(), problems, fallback
    got, rows = read
    if named is None:
        chosen = detect_scheme(got, [row[1] for _, row in rows if len(row) >= 2])
    else:
        chosen = named
        release = next((get_scheme(n) for n in BUILTIN_SCHEMES if get_scheme(n).header == got[:2]), None)
        if release is not None and got[:2] != ("Id", "Target") and release.names != chosen.names:
            problems.append(
                CsvProblem(
                    "scheme",
                    1,
                    None,
                    f"{path} line 1: header {','.join(got[:2])!r} is the {release.describe()} layout, but the "
                    f"labels were named {chosen.describe()}; name {release.name} (or a mapping) instead",
                )
            )
            return [], chosen.zeros(), problems, chosen
    ids, vectors = _parse_label_rows(
        path, got, rows, chosen, detected=named is None, allow_empty=allow_empty, problems=problems
    )
    if not ids and not problems:
        problems.append(CsvProblem("csv-empty", 2, None, f"{path}: has a header but no rows"))
    labels = np.stack(vectors) if vectors else chosen.zeros()
    return ids, labels, problems, chosen


def _read_labels_file(
    path: Path, accepted: list[tuple[str, ...]], problems: list[CsvProblem]
) -> tuple[tuple[str, ...], list[tuple[int, list[str]]]] | None:
    """The header and the numbered rows of a labels CSV; ``None`` (with the problem added) when the file is
    missing, empty, not UTF-8 text or has a header of neither release."""
    if not path.is_file():
        problems.append(CsvProblem("csv-missing", 0, None, f"{path}: not found"))
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            first = next(reader, None)
            expected = " or ".join(repr(",".join(h)) for h in accepted)
            if first is None or not any(cell.strip() for cell in first):
                problems.append(
                    CsvProblem("csv-empty", 1, None, f"{path}: file is empty (expected a header {expected})")
                )
                return None
            got = tuple(cell.strip() for cell in first)
            if not any(got[:2] == h[:2] for h in accepted):
                problems.append(
                    CsvProblem(
                        "csv-header", 1, None, f"{path} line 1: header is {','.join(got)!r}, expected {expected}"
                    )
                )
                return None
            return got, list(enumerate(reader, start=2))
    except UnicodeDecodeError:
        problems.append(CsvProblem("csv-unreadable", 0, None, f"{path}: not a UTF-8 text CSV file"))
        return None


def _parse_label_rows(
    path: Path,
    got: tuple[str, ...],
    rows: list[tuple[int, list[str]]],
    chosen: ClassScheme,
    *,
    detected: bool,
    allow_empty: bool,
    problems: list[CsvProblem],
) -> tuple[list[str], list[np.ndarray]]:
    """The ids and multi-hot labels of the good rows; every bad row becomes a problem with its line."""
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    seen: dict[str, int] = {}
    column = got[1] if len(got) > 1 else "Target"
    for line_number, row in rows:
        if not row or not any(cell.strip() for cell in row):
            continue
        first = row[0].strip() or None
        if len(row) < 2:
            message = f"{path.name} line {line_number}: expected 2 fields ({got[0]},{column}), got {len(row)}"
            problems.append(CsvProblem("bad-row", line_number, first, message))
            continue
        if len(row) > len(got) and any(cell.strip() for cell in row[len(got) :]):
            message = (
                f"{path.name} line {line_number}: {len(row)} fields but the header {','.join(got)!r} has "
                f'{len(got)}; separate labels with spaces ("1 2 3") or "|", not commas'
            )
            problems.append(CsvProblem("bad-row", line_number, first, message))
            continue
        sample_id = row[0].strip()
        if not sample_id:
            problems.append(CsvProblem("bad-row", line_number, None, f"{path.name} line {line_number}: empty Id"))
            continue
        where = f"{path.name} line {line_number} (Id {sample_id})"
        if sample_id in seen:
            message = f"{where}: duplicate Id, first seen on line {seen[sample_id]}"
            problems.append(CsvProblem("duplicate-id", line_number, sample_id, message))
            continue
        seen[sample_id] = line_number
        try:
            label = chosen.parse(row[1], where=where, allow_empty=allow_empty)
        except LabelError as exc:
            message = str(exc)
            if detected and "is not a class id" in message:
                message += f" (scheme {chosen.name} found from the header and separators; name another with --classes)"
            problems.append(CsvProblem("bad-label", line_number, sample_id, message))
            continue
        ids.append(sample_id)
        vectors.append(label)
    return ids, vectors


def read_labels(
    path: str | Path,
    *,
    scheme: str | Path | ClassScheme | None = None,
    allow_empty: bool = False,
) -> tuple[list[str], np.ndarray, ClassScheme]:
    """Read a labels CSV of either release into ids, multi-hot labels and their scheme.

    Raises:
        DataError: the first problem found (use ``protloc check`` to list them all).
    """
    ids, labels, problems, chosen = scan_labels(path, scheme=scheme, allow_empty=allow_empty)
    if problems:
        more = (
            f" (and {len(problems) - 1} more problems; run `protloc check` to list them)" if len(problems) > 1 else ""
        )
        raise DataError(problems[0].message + more)
    return ids, labels, chosen


def read_labels_csv(
    path: str | Path, *, allow_empty: bool = False, scheme: str | Path | ClassScheme | None = None
) -> tuple[list[str], np.ndarray]:
    """Read a labels CSV into ids and multi-hot labels (see :func:`read_labels`)."""
    ids, labels, _ = read_labels(path, scheme=scheme, allow_empty=allow_empty)
    return ids, labels


def read_id_column(path: str | Path, header: Sequence[str] | None = None) -> list[str]:
    """The ids of a ``sample_submission.csv``-like file, in order (labels are ignored).

    Both releases' files are read: 2018's ``Id,Predicted`` and 2021's ``ID,ImageWidth,ImageHeight,
    PredictionString``; ``header`` narrows that to one.
    """
    accepted = [tuple(header)] if header is not None else [SUBMISSION_HEADER, SUBMISSION_HEADER_2021]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        first = next(reader, None)
        expected = " or ".join(repr(",".join(h)) for h in accepted)
        if first is None:
            raise DataError(f"{path}: file is empty (expected a header {expected})")
        if not first or all(first[0].strip() != h[0] for h in accepted):
            raise DataError(f"{path} line 1: header is {','.join(first)!r}, expected {expected}")
        ids = [row[0].strip() for row in reader if row and row[0].strip()]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: contains duplicate Ids")
    return ids


@dataclass
class Catalog:
    """The samples of one split, in order: ids, channel files, and labels when known.

    Attributes:
        ids: sample ids, in the order of the labels CSV (or sorted, without one).
        files: id -> channel -> file.
        labels: ``(N, C)`` multi-hot ``uint8`` over ``scheme``, aligned with ``ids``, or ``None`` when unlabelled.
        image_dir: the folder holding the channel files.
        labels_file: the CSV the labels (or the order) came from, if any.
        name: a short name for reports (``"train"``, ``"test"``, the folder name).
        scheme: the class scheme of ``labels`` (detected from the labels file, or named; ``hpa2018`` when
            nothing says otherwise).
    """

    ids: list[str]
    files: dict[str, dict[str, Path]]
    labels: np.ndarray | None
    image_dir: Path
    labels_file: Path | None = None
    name: str = "data"
    scheme: ClassScheme = field(default_factory=lambda: get_scheme(None))

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.ids):
            raise ValueError(f"{len(self.ids)} ids but {len(self.labels)} label rows")
        if self.labels is not None and self.labels.shape[1:] != (len(self.scheme),):
            raise ValueError(
                f"labels have shape {self.labels.shape}; {self.scheme.describe()} needs (N, {len(self.scheme)})"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def paths(self, index: int) -> dict[str, Path]:
        """Channel -> file of the sample at ``index``."""
        return self.files[self.ids[index]]

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> Catalog:
        """A new Catalog with the samples at ``indices``, in that order."""
        picked = [self.ids[int(i)] for i in indices]
        return Catalog(
            ids=picked,
            files={i: self.files[i] for i in picked},
            labels=None if self.labels is None else self.labels[np.asarray(indices, dtype=np.int64)],
            image_dir=self.image_dir,
            labels_file=self.labels_file,
            name=name or self.name,
            scheme=self.scheme,
        )

    def select_ids(self, ids: Sequence[str]) -> Catalog:
        """A new Catalog with only ``ids``, in that order; unknown ids are an error."""
        position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise DataError(
                f"Id {unknown[0]!r} is not in {self.image_dir}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        return self.subset([position[i] for i in ids])

    def require_channels(self, channels: Sequence[str]) -> None:
        """Raise a :class:`DataError` naming the first sample that lacks one of ``channels``."""
        for sample_id in self.ids:
            files = self.files[sample_id]
            for channel in channels:
                if channel not in files:
                    raise DataError(
                        f"sample {sample_id}: missing {channel} channel file in {self.image_dir} "
                        f"(expected {sample_id}_{channel}.png/.tif/.jpg); run `protloc check` to list all problems"
                    )


def _catalog_from_csv(
    labels_file: Path,
    image_dir: Path,
    name: str,
    allow_empty: bool,
    *,
    scheme: str | Path | ClassScheme | None,
    map_from: str | Path | ClassScheme | None,
    channel_map: str | Mapping[str, str] | None = None,
) -> Catalog:
    if map_from is not None:
        mapping = get_mapping(map_from, scheme if scheme is not None else "hpa2021")
        ids, source_labels, _ = read_labels(labels_file, scheme=mapping.source, allow_empty=allow_empty)
        mapped = mapping.apply(source_labels)
        keep = [i for i in range(len(ids)) if mapped[i].any() or allow_empty]
        ids, labels, chosen = [ids[i] for i in keep], mapped[keep], mapping.target
    else:
        ids, labels, chosen = read_labels(labels_file, scheme=scheme, allow_empty=allow_empty)
    index = index_images(image_dir, channel_map)
    missing = [i for i in ids if i not in index.files]
    if missing:
        raise DataError(
            f"{labels_file}: {len(missing)} Id(s) have no image files in {image_dir}, e.g. {missing[0]}; "
            "run `protloc check` to list all problems"
        )
    return Catalog(
        ids=ids,
        files={i: index.files[i] for i in ids},
        labels=labels,
        image_dir=image_dir,
        labels_file=labels_file,
        name=name,
        scheme=chosen,
    )


def images_beside(labels_file: Path) -> Path:
    """Where a labels CSV's images lie: the folder of its stem (``train.csv`` -> ``train/``), else ``images/``
    beside it, else the CSV's own folder."""
    for candidate in (labels_file.with_suffix(""), labels_file.parent / "images"):
        if candidate.is_dir():
            return candidate
    return labels_file.parent


def _scheme_of_root(root: Path, order_file: Path) -> ClassScheme:
    """The scheme of an unlabelled split: the release its sample_submission.csv or train.csv belongs to."""
    for candidate in (order_file, root / "train.csv"):
        if candidate.is_file():
            with candidate.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
                first = next(csv.reader(handle), [])
            if first and first[0].strip() == "ID":
                return get_scheme("hpa2021")
    return get_scheme(None)


def _has_channel_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(
            entry.is_file() and (split_channel_filename(entry.name) or is_microscope_file(entry.name))
            for entry in entries
        )


def open_dataset(
    path: str | Path,
    *,
    split: str = "train",
    labels: str | Path | None = None,
    channels: Sequence[str] | None = CHANNELS,
    allow_empty_labels: bool = False,
    scheme: str | Path | ClassScheme | None = None,
    map_from: str | Path | ClassScheme | None = None,
    channel_map: str | Mapping[str, str] | None = None,
) -> Catalog:
    """Find the samples of one split of a data set (see the module docstring for the layouts).

    Args:
        path: a Kaggle root, a labels CSV, or a folder of channel images.
        split: ``"train"`` or ``"test"`` (any name ``X`` with ``X.csv`` + ``X/`` works) in a Kaggle root.
        labels: an ``Id,Target`` CSV that overrides the layout's labels (e.g. the synthetic test truth).
        channels: channels every sample must have (``None`` skips the check).
        allow_empty_labels: accept rows with an empty ``Target``.
        scheme: the class scheme of the labels (a built-in name, a scheme file); detected from the labels
            file when ``None`` (``ID,Label`` or ``|``: hpa2021; else hpa2018).
        map_from: read the labels in this scheme and fold them into ``scheme`` through the documented
            mapping (``map_from="hpa2018", scheme="hpa2021"``); fields left with no label are left out.
        channel_map: roles of a microscope file's channels (``"DAPI=blue,Tub=red"``); found from the
            channel names when ``None``.

    Raises:
        DataError: the path does not exist, holds no recognisable layout, or its CSV is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    labels_file = Path(labels) if labels is not None else None
    if labels_file is not None and not labels_file.is_file():
        raise DataError(f"{labels_file}: labels file not found")

    reading: dict[str, Any] = {"scheme": scheme, "map_from": map_from, "channel_map": channel_map}
    catalog: Catalog
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: expected a data folder or a labels CSV, got a {path.suffix or 'plain'} file")
        image_dir = images_beside(path)
        catalog = _catalog_from_csv(labels_file or path, image_dir, path.stem, allow_empty_labels, **reading)
    elif (path / split).is_dir() and ((path / f"{split}.csv").is_file() or labels_file is not None):
        catalog = _catalog_from_csv(
            labels_file or path / f"{split}.csv", path / split, split, allow_empty_labels, **reading
        )
    elif split == "train" and (path / "labels.csv").is_file() and (path / "images").is_dir():
        # a labelled folder: labels.csv + images/ (how ../shared/realdata and many exports hold fields)
        catalog = _catalog_from_csv(
            labels_file or path / "labels.csv",
            path / "images",
            path.name,
            allow_empty_labels,
            **reading,
        )
    elif (path / split).is_dir():  # a split without labels, e.g. test/ ordered by sample_submission.csv
        image_dir = path / split
        index = index_images(image_dir, channel_map)
        order_file = path / "sample_submission.csv"
        if order_file.is_file():
            ids = read_id_column(order_file)
            missing = [i for i in ids if i not in index.files]
            if missing:
                raise DataError(
                    f"{order_file}: {len(missing)} Id(s) have no image files in {image_dir}, e.g. {missing[0]}"
                )
        else:
            ids = sorted(index.files)
        catalog = Catalog(
            ids=ids,
            files={i: index.files[i] for i in ids},
            labels=None,
            image_dir=image_dir,
            labels_file=order_file if order_file.is_file() else None,
            name=split,
            scheme=get_scheme(scheme) if scheme is not None else _scheme_of_root(path, order_file),
        )
    elif path.is_dir() and _has_channel_images(path):
        if labels_file is not None:
            catalog = _catalog_from_csv(labels_file, path, path.name, allow_empty_labels, **reading)
        else:
            index = index_images(path, channel_map)
            catalog = Catalog(
                ids=list(index.files),
                files=index.files,
                labels=None,
                image_dir=path,
                name=path.name,
                scheme=get_scheme(scheme),
            )
    else:
        raise DataError(
            f"{path}: found neither {split}.csv with a {split}/ folder (the Kaggle 2018/2021 layouts), nor "
            "labels.csv with an images/ folder, nor channel images "
            "named <Id>_<red|green|blue|yellow>.png|tif|jpg"
        )
    if not catalog.ids:
        raise DataError(f"{path}: no samples found")
    if channels is not None:
        catalog.require_channels(channels)
    return catalog


def locate_sample(data: str | Path, sample_id: str, *, split: str | None = None) -> tuple[Catalog, int]:
    """Find a sample: in ``split`` when given, else in train then test of a Kaggle root (or the labels CSV or
    folder of channel images that ``data`` is).

    Returns:
        The catalog holding it (labels included when known) and the sample's index in it.

    Raises:
        DataError: the data cannot be opened, or holds no sample with that Id.
    """
    sample_id = sample_id.strip()
    if not sample_id:
        raise DataError("empty sample Id; give the Id of a sample in the data")
    splits = [split] if split else ["train", "test"]
    opened: list[Catalog] = []
    failure: DataError | None = None
    for name in splits:
        try:
            catalog = open_dataset(data, split=name, channels=None)
        except DataError as exc:
            failure = failure or exc
            continue
        if sample_id in catalog.files:
            return catalog, catalog.ids.index(sample_id)
        opened.append(catalog)
    if not opened and failure is not None:
        raise failure
    known = [i for catalog in opened for i in catalog.ids]
    close = get_close_matches(sample_id, known, n=1, cutoff=0.8)
    where = ", ".join(dict.fromkeys(str(catalog.image_dir) for catalog in opened))
    hint = f"; did you mean {close[0]}?" if close else ""
    raise DataError(f"Id {sample_id!r} not found in {where}{hint}")
