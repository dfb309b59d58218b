"""The files of a training run folder: config on (re)start, the metrics table, predictions, figures."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np

from protloc.config import TrainConfig
from protloc.errors import ConfigError
from protloc.metrics import EvaluationReport
from protloc.schemes import ClassScheme
from protloc.utils import atomic_write_text

RESUME_ALLOWED = {"devices", "num_nodes", "strategy", "accelerator", "workers", "max_time", "cache_dir", "precision"}


METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_macro_f1",
    "val_loss",
    "val_macro_f1",
    "lr",
    "seconds",
    "images_per_second",
)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The per-epoch metrics table of a run (empty when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def append_metrics_row(path: Path, row: dict[str, float]) -> None:
    """Add (or, after a resume, replace) one epoch's row; the file is rewritten atomically."""
    rows = [r for r in read_metrics(path) if int(r["epoch"]) != int(row["epoch"])]
    rows.append({k: float(row[k]) for k in METRIC_COLUMNS})
    rows.sort(key=lambda r: r["epoch"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (int(r[k]) if k in ("epoch", "step") else f"{r[k]:.6g}") for k in METRIC_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def prepare_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> TrainConfig:
    """Create the run directory; on resume, return the saved config (only engine settings may change)."""
    run_dir = Path(config.out)
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.yaml); start a run without --resume")
        previous = TrainConfig.load(saved)
        changed = {k for k, v in config.to_dict().items() if previous.to_dict().get(k) != v}
        forbidden = sorted(changed - RESUME_ALLOWED - {"recipe", "out", "notes", "data"})
        if forbidden:
            raise ConfigError(
                f"{run_dir}: cannot change {', '.join(forbidden)} when resuming (saved in config.yaml); "
                f"only {', '.join(sorted(RESUME_ALLOWED))} may change"
            )
        for key in changed & RESUME_ALLOWED:
            setattr(previous, key, getattr(config, key))
        previous.out = str(run_dir)
        return previous.validate()
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{run_dir}: already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or another --out"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.yaml")
    return config


def last_checkpoint_path(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def write_predictions(
    path: Path,
    ids: list[str],
    probabilities: np.ndarray,
    truth: np.ndarray | None = None,
    scheme: ClassScheme | None = None,
) -> Path:
    """A CSV of ``Id``, one probability column per class name, and (when given) the true ``Target``."""
    from protloc.predict import probabilities_csv

    return atomic_write_text(path, probabilities_csv(ids, probabilities, truth, scheme))


def write_figures(run_dir: Path, rows: list[dict[str, float]], report: EvaluationReport) -> None:
    from protloc import plots

    if rows:
        plots.save_figure(plots.training_curves(rows), run_dir / "training_curves.png")
    plots.save_figure(plots.per_class_f1(report), run_dir / "per_class_f1.png")
