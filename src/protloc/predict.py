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
import importlib.util
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc.card import ModelCard
from protloc.catalog import Catalog, index_images, open_dataset
from protloc.errors import ConfigError, DataError
from protloc.inference import Backend, load_onnx, parse_tta, predict_catalog
from protloc.io import split_channel_filename
from protloc.metrics import decide
from protloc.microscope import field_id, field_planes, is_microscope_file, parse_channel_map
from protloc.schemes import ClassScheme, get_scheme
from protloc.utils import atomic_write_json, atomic_write_text, default_workers

BACKENDS = ("auto", "torch", "onnx")
PARTIAL_DIR = ".predict-partial"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def resolve_backend(model: str | Path, backend: str = "auto") -> str:
    """``auto`` -> ``onnx`` for an exported ``.onnx`` file or where PyTorch is not installed (the
    ``protloc[runtime]`` install), else ``torch``. Asking for ``torch`` without PyTorch is a clear error."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnx" if Path(model).suffix.lower() == ".onnx" or not torch_available() else "torch"
    if backend == "torch" and not torch_available():
        raise ConfigError(
            "the torch backend needs PyTorch, which this install lacks (pip install 'protloc[train]'); "
            "with ONNX Runtime alone use --backend onnx on an exported model (protloc export MODEL)"
        )
    return backend


def load_backend(
    model: str | Path, backend: str = "auto", *, device: str = "auto", threads: int | None = None
) -> tuple[ModelCard, Backend]:
    """The card and a callable backend for a package: ``torch`` (PyTorch), ``onnx`` (ONNX Runtime) or
    ``auto`` (see :func:`resolve_backend`)."""
    backend = resolve_backend(model, backend)
    if backend == "onnx":
        return load_onnx(model, threads=threads)
    if backend == "torch":
        from protloc.torch_backend import load_torch_backend

        return load_torch_backend(model, device=device)
    raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")


def model_threads(decode_workers: int) -> int:
    """Threads for the network while ``decode_workers`` processes decode images: the remaining cores.

    Oversubscribing the cores costs ~20% end to end on a 2-core machine (benchmarks/bench_inference.py).
    """
    return max(1, default_workers(limit=256) - decode_workers)


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
    if key.isdigit() and int(key) < len(scheme):
        return int(key)
    found = scheme.index_of_name(key)
    if found is not None:
        return found
    raise ConfigError(f"{where}: {key!r} is not a class name or id of {scheme.describe()}")


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


def probabilities_csv(
    ids: Sequence[str],
    probabilities: np.ndarray,
    truth: np.ndarray | None = None,
    scheme: ClassScheme | None = None,
) -> str:
    """CSV text: ``Id``, one probability column per class name of ``scheme``, and the true ``Target`` when given."""
    scheme = scheme or _scheme_of_width(probabilities.shape[1])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", *scheme.names, *(["Target"] if truth is not None else [])])
    for i, sample_id in enumerate(ids):
        row = [sample_id, *(f"{p:.5f}" for p in probabilities[i])]
        if truth is not None:
            row.append(scheme.format(truth[i]))
        writer.writerow(row)
    return buffer.getvalue()


def _scheme_of_width(width: int) -> ClassScheme:
    from protloc.schemes import BUILTIN_SCHEMES

    for name in BUILTIN_SCHEMES:
        if len(get_scheme(name)) == width:
            return get_scheme(name)
    raise ValueError(f"no built-in class scheme has {width} classes; pass the scheme")


def predictions_csv(ids: Sequence[str], labels: np.ndarray, scheme: ClassScheme | None = None) -> str:
    """CSV text: ``Id``, ``Predicted`` (ids in the scheme's separator) and ``Labels`` (names)."""
    scheme = scheme or _scheme_of_width(labels.shape[1])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted", "Labels"])
    for sample_id, row in zip(ids, labels, strict=True):
        writer.writerow([sample_id, scheme.format(row), "; ".join(scheme.names_of(row))])
    return buffer.getvalue()


def submission_csv(order: Sequence[str], ids: Sequence[str], labels: np.ndarray) -> str:
    """Kaggle 2018's ``Id,Predicted`` in the order of ``order`` (the sample submission's)."""
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted"])
    for sample_id in order:
        writer.writerow([sample_id, " ".join(str(i) for i in np.flatnonzero(labels[position[sample_id]]))])
    return buffer.getvalue()


def field_submission_csv(order_file: Path, ids: Sequence[str], labels: np.ndarray, scheme: ClassScheme) -> str:
    """For a Kaggle 2021 ``sample_submission.csv``: its ``ID,ImageWidth,ImageHeight`` in its order, with the
    field-level labels (``|``-separated ids) in ``Labels``; the competition's per-cell ``PredictionString``
    needs cell masks, which a field-level model does not make."""
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["ID", "ImageWidth", "ImageHeight", "Labels"])
    with order_file.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            sample_id = row["ID"].strip()
            writer.writerow(
                [sample_id, row["ImageWidth"], row["ImageHeight"], scheme.format(labels[position[sample_id]], "|")]
            )
    return buffer.getvalue()


@dataclass
class PredictionRun:
    """What :func:`predict_folder` did."""

    out: Path
    ids: list[str]
    probabilities: np.ndarray
    labels: np.ndarray
    thresholds: list[float]
    seconds: float
    resumed_from: int = 0
    written: dict[str, Path] = field(default_factory=dict)
    scheme: ClassScheme = field(default_factory=lambda: get_scheme(None))
    """the class scheme of ``probabilities`` and ``labels`` (the package's)."""

    @property
    def rate(self) -> float:
        done = len(self.ids) - self.resumed_from
        return done / self.seconds if self.seconds > 0 else 0.0


def _job_key(card: ModelCard, catalog: Catalog, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(
        json.dumps(
            [card.created, card.thresholds, card.architecture.to_dict(), settings],
            sort_keys=True,
            default=str,
        ).encode()
    )
    for sample_id in catalog.ids:
        digest.update(sample_id.encode() + b"\0")
    return digest.hexdigest()[:20]


class _PartialRows:
    """Probabilities appended row by row to ``rows.f32``; ``progress.json`` records how many are durable."""

    def __init__(self, folder: Path, key: str, total: int, width: int) -> None:
        self.folder = folder
        self.total = total
        self.width = width
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
        self.key = key
        with self.rows_path.open("ab") as handle:  # drop anything written after the last durable mark
            handle.truncate(self.completed * self.width * 4)

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
        return np.fromfile(self.rows_path, dtype=np.float32).reshape(-1, self.width)[: self.total]


def predict_folder(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    ids: Sequence[str] | None = None,
    backend: str = "auto",
    device: str = "auto",
    tta: str | Sequence[str] | None = None,
    thresholds: float | str | Path | None = None,
    min_one: bool = True,
    tiles: int = 1,
    batch_size: int = 16,
    workers: int | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
    channel_map: str | None = None,
) -> PredictionRun | None:
    """Predict every sample of ``data`` with the package ``model`` and write the outputs into ``out``.

    Args:
        split, ids: which samples (see :func:`open_for_prediction`).
        backend: ``torch``, ``onnx`` (ONNX Runtime, after ``protloc export``) or ``auto`` (onnx for a
            ``.onnx`` file or without PyTorch installed, else torch).
        tta: test-time augmentation (``none``, ``flips``, ``rot90``, ``d4`` or a list of views).
        thresholds: override the package's: one number for every class, or a JSON file.
        min_one: give an image with no class over its threshold its most likely class.
        tiles: 1 resizes each field to the model input; N predicts N x N tiles and keeps each class's max.
        devices, num_nodes: more than one runs Lightning's DDP over devices/machines (torch backend).

    Returns:
        The run (on the main process; ``None`` on other DDP ranks).
    """
    out = Path(out)
    parse_tta(tta)
    backend = resolve_backend(model, backend)
    started = time.perf_counter()
    if devices > 1 or num_nodes > 1:
        if backend != "torch":
            raise ConfigError("multi-device prediction runs on the torch backend; drop --backend onnx")
        from protloc.torch_backend import predict_distributed

        card, probabilities_or_none = predict_distributed(
            model,
            data,
            out / PARTIAL_DIR,
            split=split,
            ids=ids,
            tta=tta,
            tiles=tiles,
            batch_size=batch_size,
            workers=workers,
            devices=devices,
            num_nodes=num_nodes,
            accelerator=accelerator,
        )
        if probabilities_or_none is None:
            return None
        catalog = open_for_prediction(data, split=split, ids=ids, channels=card.channels, channel_map=channel_map)
        probabilities = probabilities_or_none
        resumed_from = 0
    else:
        workers = default_workers() if workers is None else workers
        threads = model_threads(workers)
        card, run = load_backend(model, backend, device=device, threads=threads)
        catalog = open_for_prediction(data, split=split, ids=ids, channels=card.channels, channel_map=channel_map)
        settings = {"tta": parse_tta(tta), "tiles": tiles, "backend": backend}
        partial = _PartialRows(out / PARTIAL_DIR, _job_key(card, catalog, settings), len(catalog), card.num_classes)
        resumed_from = partial.completed
        if partial.completed < len(catalog):
            with torch_threads(threads if backend == "torch" else None):
                predict_catalog(
                    run,
                    card,
                    catalog,
                    tta=tta,
                    tiles=tiles,
                    batch_size=batch_size,
                    workers=workers,
                    on_batch=partial.append,
                    start=partial.completed,
                    on_progress=on_progress,
                )
        probabilities = partial.read()
    chosen = resolve_thresholds(card, thresholds)
    labels = decide(probabilities, chosen, min_one=min_one)
    seconds = time.perf_counter() - started
    result = PredictionRun(
        out=out,
        ids=list(catalog.ids),
        probabilities=probabilities,
        labels=labels,
        thresholds=chosen,
        seconds=seconds,
        resumed_from=resumed_from,
        scheme=card.scheme,
    )
    result.written["probabilities"] = atomic_write_text(
        out / "probabilities.csv", probabilities_csv(catalog.ids, probabilities, scheme=card.scheme)
    )
    result.written["predictions"] = atomic_write_text(
        out / "predictions.csv", predictions_csv(catalog.ids, labels, card.scheme)
    )
    submission_note = None
    order_file = (
        catalog.labels_file if catalog.labels_file and catalog.labels_file.name == "sample_submission.csv" else None
    )
    if order_file is not None:
        from protloc.catalog import read_id_column

        order = read_id_column(order_file)
        missing = [i for i in order if i not in set(catalog.ids)]
        with order_file.open(newline="", encoding="utf-8-sig") as handle:
            release_2021 = next(csv.reader(handle), [""])[0].strip() == "ID"
        if not missing and release_2021:
            result.written["field_submission"] = atomic_write_text(
                out / "field_submission.csv", field_submission_csv(order_file, catalog.ids, labels, card.scheme)
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
            "backend": backend,
            "tta": list(parse_tta(tta)),
            "tiles": tiles,
            "min_one": min_one,
            "scheme": card.scheme.name,
            "thresholds": dict(zip(card.scheme.names, chosen, strict=True)),
            "resumed_from": resumed_from,
            "seconds": round(seconds, 3),
            "samples_per_second": round(result.rate, 2),
            "label_counts": dict(zip(card.scheme.names, (int(c) for c in labels.sum(axis=0)), strict=True)),
            **({"submission_note": submission_note} if submission_note else {}),
        },
    )
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return result


def read_probabilities(path: str | Path, scheme: ClassScheme | None = None) -> tuple[list[str], np.ndarray]:
    """Read a ``probabilities.csv`` back (ids, ``(N, C)`` in the order of ``scheme``'s classes).

    Without ``scheme`` the columns after ``Id`` (up to ``Target``) are the classes, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = [c for c in (reader.fieldnames or []) if c not in ("Id", "Target")]
    names = list(scheme.names) if scheme is not None else columns
    absent = [n for n in names if n not in columns]
    if absent:
        raise DataError(f"{path}: no probability column {absent[0]!r} (written for another class scheme?)")
    return [r["Id"] for r in rows], np.array([[float(r[name]) for name in names] for r in rows], np.float32)
