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

from protloc.data.catalog import Catalog, open_dataset
from protloc.errors import DataError
from protloc.inference.backends import load_backend, read_model_card, resolve_backend
from protloc.inference.budget import plan_for_catalog
from protloc.inference.core import predict_catalog
from protloc.inference.files import probabilities_csv
from protloc.inference.predict import resolve_thresholds, torch_threads
from protloc.metrics import EvaluationReport, evaluate, threshold_gain
from protloc.schemes import ClassScheme, require_same_scheme
from protloc.utils import atomic_write_json, atomic_write_text


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
    backend: str = "auto",
    device: str = "auto",
    tta: str | None = None,
    thresholds: float | str | Path | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    threads: int | None = None,
    min_one: bool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    map_from: str | Path | None = None,
    channel_map: str | None = None,
) -> EvaluationResult:
    """Predict a labelled data set with a package and score it (per class, macro/micro F1, exact match).

    The labels are read in the package's class scheme; labels of another scheme are refused, unless
    ``map_from`` names their scheme and a documented mapping into the package's exists (hpa2018 -> hpa2021).
    """
    backend = resolve_backend(model, backend, device=device)
    card = read_model_card(model)
    catalog = _labelled_catalog(data, split, labels, card.channels, card.scheme, map_from, channel_map)
    budget = plan_for_catalog(backend, card.size, catalog, device=device, workers=workers, threads=threads)
    card, run = load_backend(model, backend, device=device, threads=budget.threads, spin=budget.spin)
    if catalog.labels is None:
        raise DataError(f"{data}: evaluation needs labels ({split}.csv, or --labels for a test truth file)")
    chosen = resolve_thresholds(card, thresholds)
    with torch_threads(budget.threads if backend == "torch" else None):
        probabilities = predict_catalog(
            run,
            card,
            catalog,
            tta=tta,
            batch_size=batch_size,
            workers=budget.workers,
            ahead=budget.prefetch,
            lanes=budget.lanes,
            on_progress=on_progress,
        )
    assert probabilities is not None
    if min_one is None:
        min_one = bool(card.decision.min_one)
    report = evaluate(
        catalog.labels,
        probabilities,
        chosen,
        min_one=min_one,
        class_names=card.scheme.names,
        exclusive=card.scheme.exclusive,
    )
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
                "scheme": card.scheme.name,
                "backend": backend,
                "tta": tta or "none",
                "summary": report.summary(),
                "threshold_gain_if_refitted": gain,
                "report": report.to_dict(),
            },
        )
        written["per_class"] = atomic_write_text(out / "per_class.csv", per_class_csv(report))
        written["predictions"] = atomic_write_text(
            out / "predictions.csv", probabilities_csv(catalog.ids, probabilities, catalog.labels, card.scheme)
        )
        from protloc import plots

        written["per_class_f1"] = plots.save_figure(
            plots.per_class_f1(report, title=catalog.name), out / "per_class_f1.png"
        )
    return EvaluationResult(report=report, gain=gain, written=written)


def _labelled_catalog(
    data: str | Path,
    split: str,
    labels: str | Path | None,
    channels: Sequence[str],
    scheme: ClassScheme,
    map_from: str | Path | None,
    channel_map: str | None = None,
) -> Catalog:
    """The labelled samples, in the model's scheme: detected and compared, or mapped when asked."""
    where: dict[str, Any] = {"split": split, "labels": labels, "channels": channels, "channel_map": channel_map}
    if map_from is not None:
        return open_dataset(data, scheme=scheme, map_from=map_from, **where)
    if scheme.name not in ("hpa2018", "hpa2021"):  # detection tells only the two Kaggle releases apart
        return open_dataset(data, scheme=scheme, **where)
    found = open_dataset(data, **where)
    require_same_scheme(scheme, found.scheme, what=f"{data}", where="evaluate")
    return found


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
