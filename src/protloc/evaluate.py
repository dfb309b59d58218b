"""Scoring a model package on any labelled data set: the same report training writes.

Torch-free unless the torch backend is chosen: ``backend="onnx"`` runs with ONNX Runtime only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc.catalog import open_dataset
from protloc.classes import CLASS_NAMES, format_labels
from protloc.errors import ConfigError, DataError
from protloc.inference import Backend, load_onnx, predict_catalog
from protloc.metrics import EvaluationReport, evaluate, threshold_gain
from protloc.utils import atomic_write_json, atomic_write_text, default_workers

BACKENDS = ("torch", "onnx")


def load_backend(
    model: str | Path, backend: str = "torch", *, device: str = "auto", threads: int | None = None
) -> tuple[dict[str, Any], Backend]:
    """The card and a callable backend for a package: ``torch`` (PyTorch) or ``onnx`` (ONNX Runtime)."""
    if backend == "onnx":
        return load_onnx(model, threads=threads)
    if backend == "torch":
        from protloc.predict import load_torch_backend

        return load_torch_backend(model, device=device)
    raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")


def resolve_thresholds(card: dict[str, Any], override: float | str | Path | None) -> list[float]:
    """The package's thresholds, or one global value, or per-class values from a JSON file.

    The JSON may be a list of 28 numbers, or an object mapping class names (or ids) to numbers; classes it
    does not name keep the package's threshold.
    """
    thresholds = [float(t) for t in card["thresholds"]]
    if override is None:
        return thresholds
    if isinstance(override, (int, float)) or (isinstance(override, str) and _is_number(override)):
        value = float(override)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"threshold {value} must be between 0 and 1")
        return [value] * len(thresholds)
    import json

    path = Path(override)
    if not path.is_file():
        raise ConfigError(f"{path}: thresholds file not found (give a number like 0.4 or a JSON file)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    if isinstance(data, list):
        if len(data) != len(thresholds):
            raise ConfigError(f"{path}: {len(data)} thresholds given, expected {len(thresholds)}")
        updates = dict(enumerate(data))
    elif isinstance(data, dict):
        updates = {}
        for key, value in data.items():
            index = _class_index(str(key), path)
            updates[index] = value
    else:
        raise ConfigError(f"{path}: expected a list of {len(thresholds)} numbers or a {{class: threshold}} object")
    for index, value in updates.items():
        if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
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


def probabilities_csv(ids: Sequence[str], probabilities: np.ndarray, truth: np.ndarray | None = None) -> str:
    """CSV text: ``Id``, one probability column per class name, and the true ``Target`` when given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", *CLASS_NAMES, *(["Target"] if truth is not None else [])])
    for i, sample_id in enumerate(ids):
        row = [sample_id, *(f"{p:.5f}" for p in probabilities[i])]
        if truth is not None:
            row.append(format_labels(truth[i]))
        writer.writerow(row)
    return buffer.getvalue()


@dataclass
class EvaluationResult:
    report: EvaluationReport
    gain: dict[str, float]
    written: dict[str, Path]


def evaluate_model(
    model: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    split: str = "train",
    labels: str | Path | None = None,
    backend: str = "torch",
    device: str = "auto",
    tta: str | None = None,
    thresholds: float | str | Path | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Predict a labelled data set with a package and score it (per class, macro/micro F1, exact match)."""
    card, run = load_backend(model, backend, device=device)
    catalog = open_dataset(data, split=split, labels=labels, channels=card["input"]["channels"])
    if catalog.labels is None:
        raise DataError(f"{data}: evaluation needs labels ({split}.csv, or --labels for a test truth file)")
    chosen = resolve_thresholds(card, thresholds)
    probabilities = predict_catalog(
        run,
        card,
        catalog,
        tta=tta,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        on_progress=on_progress,
    )
    assert probabilities is not None
    report = evaluate(catalog.labels, probabilities, chosen)
    gain = threshold_gain(catalog.labels, probabilities)
    written: dict[str, Path] = {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written["report"] = atomic_write_json(
            out / "report.json",
            {
                "model": str(model),
                "data": str(data),
                "split": catalog.name,
                "backend": backend,
                "tta": tta or "none",
                "summary": report.summary(),
                "threshold_gain_if_refitted": gain,
                "report": report.to_dict(),
            },
        )
        written["per_class"] = atomic_write_text(out / "per_class.csv", per_class_csv(report))
        written["predictions"] = atomic_write_text(
            out / "predictions.csv", probabilities_csv(catalog.ids, probabilities, catalog.labels)
        )
        from protloc import plots

        written["per_class_f1"] = plots.save_figure(
            plots.per_class_f1(report, title=catalog.name), out / "per_class_f1.png"
        )
    return EvaluationResult(report=report, gain=gain, written=written)


def per_class_csv(report: EvaluationReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_id", "class", "support", "predicted", "precision", "recall", "f1", "threshold"])
    for row in report.per_class:
        writer.writerow(
            [
                row.class_id,
                row.name,
                row.support,
                row.predicted,
                row.precision,
                row.recall,
                "" if row.f1 is None else row.f1,
                row.threshold,
            ]
        )
    return buffer.getvalue()
