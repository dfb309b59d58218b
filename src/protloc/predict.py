"""Batch prediction: a model package over a folder of images -> probabilities, labels, Kaggle submission.

:func:`predict_folder` is what ``protloc predict`` runs. It streams the data in batches (decoding in worker
processes, at most a few batches in memory), so a data set of any size goes through in bounded memory, and
it is **resumable**: rows are appended to a hidden partial file as they are computed, a killed run picks up
where it stopped, and the outputs appear only when complete (written atomically):

* ``probabilities.csv``  ``Id`` + one probability column per class name
* ``predictions.csv``    ``Id``, ``Predicted`` (class ids) and ``Labels`` (class names)
* ``submission.csv``     Kaggle's ``Id,Predicted`` in the order of ``sample_submission.csv`` (when one exists)
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

from protloc.catalog import Catalog, index_images, open_dataset
from protloc.classes import CLASS_NAMES, NUM_CLASSES
from protloc.errors import ConfigError, DataError
from protloc.inference import Backend, load_onnx, parse_tta, predict_catalog
from protloc.io import split_channel_filename
from protloc.metrics import decide
from protloc.utils import atomic_write_json, atomic_write_text, default_workers

BACKENDS = ("auto", "torch", "onnx")
PARTIAL_DIR = ".predict-partial"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def resolve_backend(model: str | Path, backend: str = "auto") -> str:
    """``auto`` -> ``onnx`` for an exported ``.onnx`` file, a BioImage.IO package, or where PyTorch is not
    installed (the ``protloc[runtime]`` install), else ``torch``. Asking for ``torch`` without PyTorch is a clear
    error."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    from protloc.bioimageio import is_bioimageio

    if is_bioimageio(model):
        if backend == "torch":
            raise ConfigError(f"{model}: a BioImage.IO package runs on ONNX Runtime; drop --backend torch")
        return "onnx"
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
) -> tuple[dict[str, Any], Backend]:
    """The card and a callable backend for a package: ``torch`` (PyTorch), ``onnx`` (ONNX Runtime) or
    ``auto`` (see :func:`resolve_backend`)."""
    backend = resolve_backend(model, backend)
    from protloc.bioimageio import is_bioimageio, load_bioimageio

    if is_bioimageio(model):
        return load_bioimageio(model, threads=threads)
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


def resolve_thresholds(card: dict[str, Any], override: float | str | Path | None) -> list[float]:
    """The package's thresholds, or one global value, or per-class values from a JSON file.

    The JSON may be a list of 28 numbers, or an object mapping class names (or ids) to numbers; classes it
    does not name keep the package's threshold. A ``thresholds.json`` written by training also works.
    """
    thresholds = [float(t) for t in card["thresholds"]]
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
        updates = {_class_index(str(key), path): value for key, value in data.items()}
    else:
        raise ConfigError(f"{path}: expected a list of {len(thresholds)} numbers or a {{class: threshold}} object")
    for index, value in updates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
            raise ConfigError(f"{path}: threshold for {CLASS_NAMES[index]} is {value!r}; must be between 0 and 1")
        thresholds[index] = float(value)
    return thresholds


def _class_index(key: str, where: Path) -> int:
    if key.isdigit() and int(key) < len(CLASS_NAMES):
        return int(key)
    lowered = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
    if key.lower() in lowered:
        return lowered[key.lower()]
    raise ConfigError(f"{where}: {key!r} is not a class name or id")


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
        catalog = open_dataset(path, split="test", channels=None)
    else:
        catalog = open_dataset(path, split=split or "train", channels=None)
    if ids:
        catalog = catalog.select_ids(list(ids))
    if channels is not None:
        catalog.require_channels(channels)
    return catalog


# ------------------------------------------------------------------------------------------ outputs


def probabilities_csv(ids: Sequence[str], probabilities: np.ndarray, truth: np.ndarray | None = None) -> str:
    """CSV text: ``Id``, one probability column per class name, and the true ``Target`` when given."""
    from protloc.classes import format_labels

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", *CLASS_NAMES, *(["Target"] if truth is not None else [])])
    for i, sample_id in enumerate(ids):
        row = [sample_id, *(f"{p:.5f}" for p in probabilities[i])]
        if truth is not None:
            row.append(format_labels(truth[i]))
        writer.writerow(row)
    return buffer.getvalue()


def predictions_csv(ids: Sequence[str], labels: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted", "Labels"])
    for sample_id, row in zip(ids, labels, strict=True):
        chosen = np.flatnonzero(row)
        writer.writerow([sample_id, " ".join(str(i) for i in chosen), "; ".join(CLASS_NAMES[i] for i in chosen)])
    return buffer.getvalue()


def submission_csv(order: Sequence[str], ids: Sequence[str], labels: np.ndarray) -> str:
    """Kaggle's ``Id,Predicted`` in the order of ``order`` (the sample submission's)."""
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Predicted"])
    for sample_id in order:
        writer.writerow([sample_id, " ".join(str(i) for i in np.flatnonzero(labels[position[sample_id]]))])
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

    @property
    def rate(self) -> float:
        done = len(self.ids) - self.resumed_from
        return done / self.seconds if self.seconds > 0 else 0.0


def _job_key(card: dict[str, Any], catalog: Catalog, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(
        json.dumps(
            [card.get("created"), card.get("thresholds"), card.get("architecture"), settings],
            sort_keys=True,
            default=str,
        ).encode()
    )
    for sample_id in catalog.ids:
        digest.update(sample_id.encode() + b"\0")
    return digest.hexdigest()[:20]


class _PartialRows:
    """Probabilities appended row by row to ``rows.f32``; ``progress.json`` records how many are durable."""

    def __init__(self, folder: Path, key: str, total: int) -> None:
        self.folder = folder
        self.total = total
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
            handle.truncate(self.completed * NUM_CLASSES * 4)

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
        return np.fromfile(self.rows_path, dtype=np.float32).reshape(-1, NUM_CLASSES)[: self.total]


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
        catalog = open_for_prediction(data, split=split, ids=ids, channels=card["input"]["channels"])
        probabilities = probabilities_or_none
        resumed_from = 0
    else:
        workers = default_workers() if workers is None else workers
        threads = model_threads(workers)
        card, run = load_backend(model, backend, device=device, threads=threads)
        catalog = open_for_prediction(data, split=split, ids=ids, channels=card["input"]["channels"])
        settings = {"tta": parse_tta(tta), "tiles": tiles, "backend": backend}
        partial = _PartialRows(out / PARTIAL_DIR, _job_key(card, catalog, settings), len(catalog))
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
    )
    result.written["probabilities"] = atomic_write_text(
        out / "probabilities.csv", probabilities_csv(catalog.ids, probabilities)
    )
    result.written["predictions"] = atomic_write_text(out / "predictions.csv", predictions_csv(catalog.ids, labels))
    order_file = (
        catalog.labels_file if catalog.labels_file and catalog.labels_file.name == "sample_submission.csv" else None
    )
    if order_file is not None:
        from protloc.catalog import read_id_column

        order = read_id_column(order_file)
        missing = [i for i in order if i not in set(catalog.ids)]
        if not missing:
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
            "thresholds": dict(zip(CLASS_NAMES, chosen, strict=True)),
            "resumed_from": resumed_from,
            "seconds": round(seconds, 3),
            "samples_per_second": round(result.rate, 2),
            "label_counts": dict(zip(CLASS_NAMES, (int(c) for c in labels.sum(axis=0)), strict=True)),
        },
    )
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return result


def read_probabilities(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``probabilities.csv`` back (ids, ``(N, 28)``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    return [r["Id"] for r in rows], np.array([[float(r[name]) for name in CLASS_NAMES] for r in rows], np.float32)
