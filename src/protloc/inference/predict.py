"""Batch prediction: a model package over a folder of images -> probabilities, labels, Kaggle submission.

:func:`predict_folder` is what ``protloc predict`` runs. It streams the data in batches (decoding in worker
processes, at most a few batches in memory), so a data set of any size goes through in bounded memory, and
it is **resumable**: rows are appended to a hidden partial file as they are computed, a killed run picks up
where it stopped, and the outputs appear only when complete (written atomically):

* ``probabilities.csv``  ``Id`` + one probability column per class name
* ``predictions.csv``    ``Id``, ``Predicted`` (class ids) and ``Labels`` (class names)
* ``submission.csv``     Kaggle 2018's ``Id,Predicted`` in the order of ``sample_submission.csv`` (when one exists)
* ``field_submission.csv`` for a Kaggle 2021 ``sample_submission.csv`` (``ID,ImageWidth,ImageHeight,
  PredictionString``): that competition scores per-cell masks, which a field-level model does not make, so
  protloc writes the field-level labels in its order (``ID,ImageWidth,ImageHeight,Labels``) instead of
  pretending; per-cell submissions come from the single-cell path

Class columns, ids and names follow the package's class scheme (``card.scheme``).
* ``run.json``           model, backend, TTA, thresholds, counts and timing

Torch is imported only for the torch backend; ``backend="onnx"`` runs on ONNX Runtime alone.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from protloc.data.catalog import Catalog, index_images, open_dataset
from protloc.data.io import split_channel_filename
from protloc.data.microscope import field_id, field_planes, is_microscope_file, parse_channel_map
from protloc.errors import ConfigError
from protloc.inference.backends import BACKENDS, load_backend, read_model_card, resolve_backend, torch_available
from protloc.inference.budget import plan_budget, plan_for_catalog
from protloc.inference.core import parse_tta, predict_catalog
from protloc.inference.files import (
    field_submission_csv,
    predictions_csv,
    probabilities_csv,
    read_probabilities,
    submission_csv,
)
from protloc.locks import locked_output
from protloc.metrics import decide
from protloc.model.card import ModelCard
from protloc.schemes import ClassScheme
from protloc.utils import atomic_write_json, atomic_write_text

__all__ = [  # the backend policy and the CSV files have homes of their own; these names stay importable here
    "BACKENDS",
    "PredictionRun",
    "load_backend",
    "model_threads",
    "open_for_prediction",
    "predict_folder",
    "predictions_csv",
    "probabilities_csv",
    "read_probabilities",
    "resolve_backend",
    "resolve_thresholds",
    "submission_csv",
    "torch_available",
    "torch_threads",
]

PARTIAL_DIR = ".predict-partial"


def model_threads(decode_workers: int) -> int:
    """Threads for the network while ``decode_workers`` processes decode images: the CPUs they leave (see
    :func:`protloc.inference.budget.plan_budget`, which every prediction path uses)."""
    return plan_budget("onnx", 1, workers=decode_workers).threads


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (restored afterwards); ``None`` changes nothing."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_thresholds(card: ModelCard, override: float | str | Path | None) -> list[float]:
    """The package's thresholds, or one global value, or per-class values from a JSON file.

    The JSON may be a list of one number per class, or an object mapping class names (or ids) to numbers; classes it
    does not name keep the package's threshold. A ``thresholds.json`` written by training also works.
    """
    thresholds = [float(t) for t in card.thresholds]
    if override is None:
        return thresholds
    if isinstance(override, (int, float)) or (isinstance(override, str) and _is_number(override)):
        value = float(override)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"threshold {value} must be between 0 and 1")
        return [value] * len(thresholds)
    path = Path(override)
    if not path.is_file():
        raise ConfigError(f"{path}: thresholds file not found (give a number like 0.4 or a JSON file)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    updates: dict[int, Any]
    if isinstance(data, list):
        if len(data) != len(thresholds):
            raise ConfigError(f"{path}: {len(data)} thresholds given, expected {len(thresholds)}")
        updates = dict(enumerate(data))
    elif isinstance(data, dict):
        updates = {_class_index(str(key), path, card.scheme): value for key, value in data.items()}
    else:
        raise ConfigError(f"{path}: expected a list of {len(thresholds)} numbers or a {{class: threshold}} object")
    for index, value in updates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
            name = card.scheme.names[index]
            raise ConfigError(f"{path}: threshold for {name} is {value!r}; must be between 0 and 1")
        thresholds[index] = float(value)
    return thresholds


def _class_index(key: str, where: Path, scheme: ClassScheme) -> int:
    try:
        return scheme.resolve(key)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------- inputs


def open_for_prediction(
    data: str | Path,
    *,
    split: str | None = None,
    ids: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    channel_map: str | None = None,
) -> Catalog:
    """The samples to predict: a Kaggle root (its ``test/`` by default), a folder of channel images,
    one channel file (that sample alone), optionally narrowed to ``ids``."""
    path = Path(data)
    if path.is_file() and split_channel_filename(path.name) is not None:
        sample_id, _ = split_channel_filename(path.name)  # type: ignore[misc]
        index = index_images(path.parent)
        catalog = Catalog(
            ids=[sample_id],
            files={sample_id: index.files[sample_id]},
            labels=None,
            image_dir=path.parent,
            name=sample_id,
        )
    elif split is None and path.is_dir() and (path / "test").is_dir():
        catalog = open_dataset(path, split="test", channels=None, channel_map=channel_map)
    elif path.is_file() and is_microscope_file(path.name):
        catalog = Catalog(
            ids=[field_id(path)],
            files={field_id(path): field_planes(path, parse_channel_map(channel_map))},
            labels=None,
            image_dir=path.parent,
            name=field_id(path),
        )
    else:
        catalog = open_dataset(path, split=split or "train", channels=None, channel_map=channel_map)
    if ids:
        catalog = catalog.select_ids(list(ids))
    if channels is not None:
        catalog.require_channels(channels)
    return catalog


# ------------------------------------------------------------------------------------------ outputs


@dataclass
class PredictionRun:
    """What :func:`predict_folder` did."""

    out: Path
    ids: list[str]
    probabilities: np.ndarray
    labels: np.ndarray
    thresholds: list[float]
    seconds: float
    scheme: ClassScheme
    """the class scheme of ``probabilities`` and ``labels`` (the package's)."""
    resumed_from: int = 0
    written: dict[str, Path] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        done = len(self.ids) - self.resumed_from
        return done / self.seconds if self.seconds > 0 else 0.0


def _job_key(model: str | Path, card: ModelCard, catalog: Catalog, settings: dict[str, Any]) -> str:
    """What the probability rows depend on: the package's files, the inputs' files, the settings.

    Every input file enters with its path, size and modification time, and every file of the package (or the
    ``.onnx`` file) likewise, so rows computed for other images, another model or other settings are never
    reused by a resumed run.
    """
    digest = hashlib.sha256(
        json.dumps(
            [card.created, card.thresholds, card.architecture.to_dict(), card.input.to_dict(), settings],
            sort_keys=True,
            default=str,
        ).encode()
    )
    model_path = Path(model).resolve()
    model_files = sorted(model_path.iterdir()) if model_path.is_dir() else [model_path]
    for path in model_files:
        digest.update(_file_stamp(path))
    folders: dict[Path, Path] = {}
    for sample_id in catalog.ids:
        digest.update(sample_id.encode() + b"\0")
        for channel, path in sorted(catalog.files.get(sample_id, {}).items()):
            digest.update(channel.encode() + b"\0" + _file_stamp(path, folders))
    return digest.hexdigest()[:32]


def _file_stamp(path: Path, folders: dict[Path, Path] | None = None) -> bytes:
    """A file's absolute path (links resolved), size and modification time (ns), as bytes for a digest.

    ``folders`` caches the resolution of folders across the calls of one digest: a field's files share a few
    folders, and resolving each of thousands of files whole cost 3 % of a 128 px prediction run."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return str(path).encode() + b"\0missing\0"
    if path.is_symlink():
        real = path.resolve()
    else:
        folders = {} if folders is None else folders
        folder = path.absolute().parent
        if folder not in folders:
            folders[folder] = folder.resolve()
        real = folders[folder] / path.name
    return f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()


OUTPUT_FILES = ("probabilities.csv", "predictions.csv", "submission.csv", "run.json")
"""Every file a prediction run writes into ``--out`` (a run removes the previous run's before it starts)."""


def _clear_previous_outputs(out: Path) -> list[str]:
    """Remove the outputs a previous run left in ``out``, so that none sits beside this run's.

    Only protloc's own output names are touched, and only in a folder whose ``run.json`` says a prediction
    run wrote it; anything else in the folder stays.
    """
    run_file = out / "run.json"
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(previous, dict) or "samples_per_second" not in previous:
        return []
    removed = []
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
            removed.append(name)
    return removed


class _PartialRows:
    """Probabilities appended row by row to ``rows.f32``; ``progress.json`` records how many are durable."""

    def __init__(self, folder: Path, key: str, total: int, columns: int) -> None:
        self.folder = folder
        self.total = total
        self.columns = columns
        folder.mkdir(parents=True, exist_ok=True)
        progress = folder / "progress.json"
        self.rows_path = folder / "rows.f32"
        self.completed = 0
        if progress.is_file():
            try:
                state = json.loads(progress.read_text())
            except json.JSONDecodeError:
                state = {}
            if state.get("key") == key and self.rows_path.is_file():
                self.completed = min(int(state.get("completed", 0)), total)
        if self.completed == 0:
            self.rows_path.unlink(missing_ok=True)
        if self.rows_path.is_file():  # never extend a short file with zeros: resume only what is there
            self.completed = min(self.completed, self.rows_path.stat().st_size // (self.columns * 4))
        self.key = key
        with self.rows_path.open("ab") as handle:  # drop anything written after the last durable mark
            handle.truncate(self.completed * self.columns * 4)

    def append(self, first: int, probabilities: np.ndarray) -> None:
        if first != self.completed:
            raise RuntimeError(f"rows out of order: expected {self.completed}, got {first}")
        with self.rows_path.open("ab") as handle:
            handle.write(np.ascontiguousarray(probabilities, dtype=np.float32).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        self.completed += len(probabilities)
        atomic_write_json(self.folder / "progress.json", {"key": self.key, "completed": self.completed})

    def read(self) -> np.ndarray:
        return np.fromfile(self.rows_path, dtype=np.float32).reshape(-1, self.columns)[: self.total]


@dataclass(frozen=True)
class PredictSettings:
    """How ``protloc predict`` runs: which samples, on which backend, with which decision rule, on how many
    processes or devices. Built once (by the CLI, or by a notebook) and passed whole."""

    split: str | None = None
    """split of a Kaggle root (default: test)."""
    ids: tuple[str, ...] | None = None
    """only these samples."""
    backend: str = "auto"
    """``torch``, ``onnx`` (ONNX Runtime, after ``protloc export``) or ``auto`` (onnx for a ``.onnx`` file or
    without PyTorch installed, else torch)."""
    device: str = "auto"
    tta: str | tuple[str, ...] | None = None
    """test-time augmentation: ``none``, ``flips``, ``rot90``, ``d4`` or views."""
    thresholds: float | str | Path | None = None
    """override the package's: one number for every class, or a JSON file."""
    min_one: bool = True
    """give an image with no class over its threshold its most likely class."""
    tiles: int = 1
    """1 resizes each field to the model input; N predicts N x N tiles and keeps each class's max."""
    batch_size: int = 16
    workers: int | None = None
    """decoding processes; 0 decodes in this process on a prefetch thread (default: chosen with ``threads`` by
    :func:`protloc.inference.budget.plan_budget` so that both fit the CPUs this process may use)."""
    threads: int | None = None
    """the network's threads (default: the CPUs decoding leaves)."""
    devices: int = 1
    """more than one (or ``num_nodes`` > 1) runs Lightning's DDP over devices/machines (torch backend)."""
    num_nodes: int = 1
    accelerator: str = "auto"
    channel_map: str | None = None
    """roles of a microscope file's channels (``"DAPI=blue,..."``)."""

    def describe(self) -> dict[str, Any]:
        """What the run's ``run.json`` records of these settings."""
        return {"backend": self.backend, "tta": list(parse_tta(self.tta)), "tiles": self.tiles, "min_one": self.min_one}


@locked_output("out", "protloc predict")
def predict_folder(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    settings: PredictSettings | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> PredictionRun | None:
    """Predict every sample of ``data`` with the package ``model`` and write the outputs into ``out``:
    ``probabilities.csv``, ``predictions.csv``, the release's submission and ``run.json``. A run killed half way
    resumes from its last durable batch.

    Args:
        settings: see :class:`PredictSettings`; ``options`` (its field names, e.g. ``tta="d4"``) change it.
        on_progress: ``on_progress(samples done, total)``.

    Returns:
        The run (on the main process; ``None`` on other DDP ranks).

    Raises:
        BusyError: another process is writing into ``out`` (the call holds an exclusive lock on it).
    """
    settings = replace(settings or PredictSettings(), **options)
    if settings.ids is not None and not isinstance(settings.ids, tuple):
        settings = replace(settings, ids=tuple(settings.ids))
    out = Path(out)
    parse_tta(settings.tta)
    several = settings.devices > 1 or settings.num_nodes > 1  # Lightning's DDP: PyTorch
    device = "cuda" if several else settings.device
    settings = replace(settings, backend=resolve_backend(model, settings.backend, device=device))
    started = time.perf_counter()
    computed = _probabilities(model, data, out, settings, on_progress)
    if computed is None:
        return None
    card, catalog, probabilities, resumed_from = computed
    chosen = resolve_thresholds(card, settings.thresholds)
    result = PredictionRun(
        out=out,
        ids=list(catalog.ids),
        probabilities=probabilities,
        labels=decide(probabilities, chosen, min_one=settings.min_one, exclusive=card.scheme.exclusive),
        thresholds=chosen,
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
        scheme=card.scheme,
    )
    _write_outputs(result, model, data, catalog, settings)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return result


def _probabilities(
    model: str | Path,
    data: str | Path,
    out: Path,
    settings: PredictSettings,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[ModelCard, Catalog, np.ndarray, int] | None:
    """The card, the catalog and every sample's probabilities, over DDP or in this process (resuming the rows
    a killed run made durable); ``None`` on DDP ranks other than the main one."""
    if settings.devices > 1 or settings.num_nodes > 1:
        if settings.backend != "torch":
            raise ConfigError("multi-device prediction runs on the torch backend; drop --backend onnx")
        from protloc.inference.torch_backend import predict_distributed
        from protloc.model.card import read_card

        card = read_card(model)
        catalog = open_for_prediction(
            data, split=settings.split, ids=settings.ids, channels=card.channels, channel_map=settings.channel_map
        )
        probabilities_or_none = predict_distributed(
            model,
            catalog,
            out / PARTIAL_DIR,
            tta=settings.tta,
            tiles=settings.tiles,
            batch_size=settings.batch_size,
            workers=settings.workers,
            devices=settings.devices,
            num_nodes=settings.num_nodes,
            accelerator=settings.accelerator,
        )
        if probabilities_or_none is None:
            return None
        _clear_previous_outputs(out)
        return card, catalog, probabilities_or_none, 0
    card = read_model_card(model)
    catalog = open_for_prediction(
        data, split=settings.split, ids=settings.ids, channels=card.channels, channel_map=settings.channel_map
    )
    budget = plan_for_catalog(
        settings.backend,
        card.size,
        catalog,
        device=settings.device,
        workers=settings.workers,
        threads=settings.threads,
    )
    card, run = load_backend(model, settings.backend, device=settings.device, threads=budget.threads, spin=budget.spin)
    key_settings = {
        "tta": parse_tta(settings.tta),
        "tiles": settings.tiles,
        "backend": settings.backend,
        "device": settings.device,
    }
    _clear_previous_outputs(out)
    partial = _PartialRows(
        out / PARTIAL_DIR, _job_key(model, card, catalog, key_settings), len(catalog), card.num_classes
    )
    resumed_from = partial.completed
    if partial.completed < len(catalog):
        with torch_threads(budget.threads if settings.backend == "torch" else None):
            predict_catalog(
                run,
                card,
                catalog,
                tta=settings.tta,
                tiles=settings.tiles,
                batch_size=settings.batch_size,
                workers=budget.workers,
                ahead=budget.prefetch,
                lanes=budget.lanes,
                on_batch=partial.append,
                start=partial.completed,
                on_progress=on_progress,
            )
    return card, catalog, partial.read(), resumed_from


def _write_outputs(
    result: PredictionRun, model: str | Path, data: str | Path, catalog: Catalog, settings: PredictSettings
) -> None:
    """probabilities.csv, predictions.csv, the submission of the data's release and run.json."""
    out, scheme, labels = result.out, result.scheme, result.labels
    result.written["probabilities"] = atomic_write_text(
        out / "probabilities.csv", probabilities_csv(catalog.ids, result.probabilities, scheme=scheme)
    )
    result.written["predictions"] = atomic_write_text(
        out / "predictions.csv", predictions_csv(catalog.ids, labels, scheme)
    )
    submission_note = None
    order_file = (
        catalog.labels_file if catalog.labels_file and catalog.labels_file.name == "sample_submission.csv" else None
    )
    if order_file is not None:
        from protloc.data.catalog import read_id_column

        order = read_id_column(order_file)
        missing = [i for i in order if i not in set(catalog.ids)]
        with order_file.open(newline="", encoding="utf-8-sig") as handle:
            release_2021 = next(csv.reader(handle), [""])[0].strip() == "ID"
        if not missing and release_2021:
            result.written["field_submission"] = atomic_write_text(
                out / "field_submission.csv", field_submission_csv(order_file, catalog.ids, labels, scheme)
            )
            submission_note = (
                "the 2021 competition scores per-cell masks (PredictionString); this field-level model wrote "
                "field_submission.csv with one label set per field instead"
            )
        elif not missing:
            result.written["submission"] = atomic_write_text(
                out / "submission.csv", submission_csv(order, catalog.ids, labels)
            )
    result.written["run"] = atomic_write_json(
        out / "run.json",
        {
            "model": str(model),
            "data": str(data),
            "split": catalog.name,
            "samples": len(catalog),
            **settings.describe(),
            "scheme": scheme.name,
            "thresholds": dict(zip(scheme.names, result.thresholds, strict=True)),
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 3),
            "samples_per_second": round(result.rate, 2),
            "label_counts": dict(zip(scheme.names, (int(c) for c in labels.sum(axis=0)), strict=True)),
            **({"submission_note": submission_note} if submission_note else {}),
        },
    )
