"""Validating a whole data set in one pass: every problem, with the sample Id it concerns.

:func:`check_dataset` looks at a Kaggle root of either release (``train.csv`` + ``train/``,
``sample_submission.csv`` + ``test/``), a folder with ``labels.csv`` + ``images/``, a labels CSV or a bare
folder of channel images, and reports all of these at once rather than stopping at the first. The class
scheme of each split's labels is detected (``ID,Label`` or ``|``: hpa2021) or named, and reported:

========================  ===================================================================
kind                      meaning
========================  ===================================================================
``csv-missing``           the split's CSV does not exist
``csv-empty``             the CSV has no header or no rows
``csv-header``            the header is not ``Id,Target`` or ``ID,Label`` (a submission: ``Id,Predicted`` or
                          ``ID,ImageWidth,ImageHeight,PredictionString``)
``scheme``                the labels file's release header contradicts the class scheme named
``csv-unreadable``        the CSV is not UTF-8 text
``bad-row``               a row has too few fields, more fields than the header, or an empty Id
``bad-label``             a label is not a number, not a class id of the scheme, repeated, empty, or
                          combines an exclusive class (``Negative``) with others
``duplicate-id``          an Id appears twice in the CSV
``folder-missing``        the CSV exists but its image folder does not
``no-files``              an Id of the CSV has no image file at all
``missing-channel``       an Id lacks one of the required channel files
``no-csv-row``            image files whose Id is not in the CSV
``unreadable``            a file that cannot be decoded (corrupt, truncated, empty, not an image)
``size-mismatch``         the channels of one sample differ in size
``duplicate-file``        (warning) one channel of one sample has several files (``.png`` and ``.tif``)
``stray-file``            (warning) an image file not named ``<Id>_<channel>.<ext>``
========================  ===================================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protloc.data.catalog import images_beside, index_images, read_id_column, scan_labels
from protloc.data.decoder import probe
from protloc.data.io import CHANNELS, read_channel_raw
from protloc.errors import DataError
from protloc.schemes import ClassScheme
from protloc.utils import atomic_write_text, default_workers
from protloc.workers import imap

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One problem: its kind (see the module docstring), the sample it concerns, and what is wrong."""

    kind: str
    sample_id: str | None
    message: str
    severity: str = ERROR
    split: str = ""


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: how many samples each split has, and every problem."""

    root: Path
    samples: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    schemes: dict[str, ClassScheme] = field(default_factory=dict)
    """split -> the class scheme its labels were read in (labelled splits only)."""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when no errors were found (warnings are allowed)."""
        return not self.errors

    def counts(self) -> Counter[str]:
        """Number of problems of each kind."""
        return Counter(p.kind for p in self.problems)


Job = tuple[str, str, dict[str, Path], bool]
"""(split, sample id, channel -> file, decode?)"""


def _probe_sample(job: Job) -> list[Problem]:
    """Decode (or probe the header of) every channel of one sample; return its problems.

    The quick probe applies the same header, structure, pixel-type and budget checks as the decoder, so a
    file the quick check passes is one the full check (and ``predict``) accepts, short of corrupt pixel data.
    """
    split, sample_id, files, decode = job
    found: list[Problem] = []
    shapes: dict[str, tuple[int, int]] = {}
    for channel, path in sorted(files.items(), key=lambda kv: CHANNELS.index(kv[0])):
        try:
            shape = probe(path).plane_shape if not decode else read_channel_raw(path).shape[:2]
        except DataError as exc:
            found.append(Problem("unreadable", sample_id, str(exc), ERROR, split))
            continue
        except Exception as exc:  # a decoder may raise anything on a hostile file
            message = f"{path}: cannot be read ({exc.__class__.__name__}: {exc})"
            found.append(Problem("unreadable", sample_id, message, ERROR, split))
            continue
        shapes[channel] = (int(shape[0]), int(shape[1]))
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{c} {w}x{h}" for c, (h, w) in shapes.items())
        message = f"sample {sample_id}: channel sizes differ ({described})"
        found.append(Problem("size-mismatch", sample_id, message, ERROR, split))
    return found


def _check_split(
    report: CheckReport,
    split: str,
    folder: Path,
    csv_path: Path | None,
    labelled: bool,
    channels: Sequence[str],
    jobs: list[Job],
    decode: bool,
    scheme: str | Path | ClassScheme | None = None,
    channel_map: str | None = None,
) -> None:
    def add(kind: str, sample_id: str | None, message: str, severity: str = ERROR) -> None:
        report.problems.append(Problem(kind, sample_id, message, severity, split))

    ids: list[str] | None = None
    if csv_path is not None and labelled:
        scanned_ids, _, csv_problems, found = scan_labels(csv_path, scheme=scheme)
        report.schemes[split] = found
        for csv_problem in csv_problems:
            add(csv_problem.kind, csv_problem.sample_id, csv_problem.message)
        # Ids whose labels were bad still name files: keep them for the file checks. A file that could not be
        # read at all names no ids: its folder's files are then checked without "no row" noise.
        unread = any(p.kind in ("csv-header", "csv-empty", "csv-unreadable", "scheme") for p in csv_problems)
        ids = (
            None
            if unread
            else scanned_ids + [p.sample_id for p in csv_problems if p.kind in ("bad-label", "bad-row") and p.sample_id]
        )
    elif csv_path is not None:  # a sample_submission.csv of either release: only its ids matter
        if not csv_path.is_file():
            add("csv-missing", None, f"{csv_path}: not found")
            ids = []
        else:
            try:
                ids = read_id_column(csv_path)
            except DataError as exc:
                add("csv-header" if "header" in str(exc) else "csv-empty", None, str(exc))
                ids = []
    if not folder.is_dir():
        add("folder-missing", None, f"{folder}: image folder not found (expected next to {csv_path})")
        report.samples[split] = len(ids or [])
        return
    try:
        index = index_images(folder, channel_map)
    except DataError as exc:  # a microscope file whose channels have no roles, or that cannot be read
        add("unreadable", None, str(exc))
        report.samples[split] = len(ids or [])
        return
    for sample_id, channel, paths in index.duplicates:
        names = ", ".join(p.name for p in paths)
        add(
            "duplicate-file",
            sample_id,
            f"sample {sample_id}: several {channel} files ({names}); using {paths[0].name}",
            WARNING,
        )
    for path in index.stray:
        add("stray-file", None, f"{path}: image file not named <Id>_<red|green|blue|yellow>.<ext>; ignored", WARNING)
    if ids is None:
        ids = list(index.files)
    else:
        listed = set(ids)
        orphans = [i for i in index.files if i not in listed]
        for sample_id in orphans:
            names = ", ".join(p.name for p in index.files[sample_id].values())
            add(
                "no-csv-row",
                sample_id,
                f"sample {sample_id}: files without a row in {csv_path.name if csv_path else 'the CSV'} ({names})",
            )
    report.samples[split] = len(ids)
    for sample_id in ids:
        files = index.files.get(sample_id)
        if not files:
            add("no-files", sample_id, f"sample {sample_id}: no image files in {folder}")
            continue
        for channel in channels:
            if channel not in files:
                add(
                    "missing-channel",
                    sample_id,
                    f"sample {sample_id}: missing {channel} channel file "
                    f"({sample_id}_{channel}.png/.tif/.jpg in {folder})",
                )
        jobs.append((split, sample_id, {c: p for c, p in files.items() if c in channels}, decode))


def check_dataset(
    path: str | Path,
    *,
    channels: Sequence[str] = CHANNELS,
    decode: bool = True,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    scheme: str | Path | ClassScheme | None = None,
    channel_map: str | None = None,
) -> CheckReport:
    """Validate a data set and return every problem found (see the module docstring for the kinds).

    Args:
        path: a Kaggle root, a labels CSV, or a folder of channel images.
        channels: the channels every sample must have.
        decode: decode every image (finds corrupt and truncated files); ``False`` reads only the headers.
        workers: processes used to decode (default: the number of CPUs, at most 8).
        on_progress: called with (samples done, samples total) as images are read.
        scheme: the class scheme of the labels (built-in name or scheme file); detected when ``None``.
        channel_map: roles of microscope files' channels (``DAPI=blue,...``); from their names when ``None``.

    Raises:
        DataError: ``path`` does not exist (every other problem is reported, not raised).
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    report = CheckReport(root=root)
    jobs: list[Job] = []
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: expected a data folder or a labels CSV")
        _check_split(report, root.stem, images_beside(root), root, True, channels, jobs, decode, scheme, channel_map)
    elif (root / "train.csv").exists() or (root / "train").is_dir() or (root / "test").is_dir():
        if (root / "train.csv").exists() or (root / "train").is_dir():
            _check_split(
                report, "train", root / "train", root / "train.csv", True, channels, jobs, decode, scheme, channel_map
            )
        if (root / "test").is_dir() or (root / "sample_submission.csv").exists():
            submission = root / "sample_submission.csv"
            _check_split(
                report,
                "test",
                root / "test",
                submission if submission.exists() else None,
                False,
                channels,
                jobs,
                decode,
                None,
                channel_map,
            )
    elif (root / "labels.csv").is_file() and (root / "images").is_dir():
        _check_split(
            report, root.name, root / "images", root / "labels.csv", True, channels, jobs, decode, scheme, channel_map
        )
    else:
        _check_split(report, root.name, root, None, True, channels, jobs, decode, None, channel_map)
        if not jobs and not report.problems:
            report.problems.append(
                Problem(
                    "no-files",
                    None,
                    f"{root}: no channel images named <Id>_<red|green|blue|yellow>.png|tif|jpg",
                    ERROR,
                    root.name,
                )
            )

    report.problems.extend(_run_probes(jobs, workers, on_progress))
    return report


def _run_probes(jobs: list[Job], workers: int | None, on_progress: Callable[[int, int], None] | None) -> list[Problem]:
    total = len(jobs)
    workers = workers or default_workers()
    found: list[Problem] = []
    if workers <= 1 or total < 64:
        for done, job in enumerate(jobs, start=1):
            found.extend(_probe_sample(job))
            if on_progress:
                on_progress(done, total)
        return found
    for done, result in enumerate(
        imap(_probe_sample, jobs, workers=workers, chunksize=16, preload=[__name__]), start=1
    ):
        found.extend(result)
        if on_progress:
            on_progress(done, total)
    return found


def write_problems(report: CheckReport, path: str | Path) -> Path:
    """Write every problem as a CSV (split, severity, kind, id, message), atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "severity", "kind", "id", "message"])
    for problem in report.problems:
        writer.writerow([problem.split, problem.severity, problem.kind, problem.sample_id or "", problem.message])
    return atomic_write_text(path, buffer.getvalue())
