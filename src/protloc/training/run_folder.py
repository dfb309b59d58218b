"""The files of a training run folder: config on (re)start, the metrics table, predictions, figures."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np

from protloc.errors import ConfigError, ProtlocError
from protloc.locks import LOCK_NAME
from protloc.metrics import EvaluationReport
from protloc.schemes import ClassScheme
from protloc.training.config import TrainConfig
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
    """Create the run directory; on resume, return the saved config (only engine settings may change).

    With ``overwrite``, a previous run in ``config.out`` is replaced, but only a folder that is recognisably a
    protloc run (see :func:`clear_run_dir`); call this after the inputs have been validated.
    """
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
    if _has_content(run_dir):
        if not overwrite:
            raise ConfigError(
                f"{run_dir}: already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or another --out"
            )
        clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.yaml")
    return config


def _has_content(folder: Path) -> bool:
    """True when ``folder`` holds anything but protloc's lock file."""
    return folder.is_dir() and any(entry.name != LOCK_NAME for entry in folder.iterdir())


def is_run_dir(folder: Path) -> bool:
    """True when ``folder`` is recognisably a protloc training run: its ``config.yaml`` is a training config."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        return False
    try:
        TrainConfig.load(saved)
    except ProtlocError:
        return False
    return True


def clear_run_dir(run_dir: Path) -> None:
    """Empty a previous run's folder for ``--overwrite``; a folder protloc did not make is refused, untouched.

    The lock file stays (the caller holds it), everything else of the old run goes.

    Raises:
        ConfigError: ``run_dir`` is not a folder, or not recognisably a protloc run.
    """
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: is a file, not a run folder; choose another --out")
    if not is_run_dir(run_dir):
        names = sorted(entry.name for entry in run_dir.iterdir() if entry.name != LOCK_NAME)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ConfigError(
            f"{run_dir}: --overwrite replaces only a protloc run folder (with its config.yaml), and this one holds "
            f"other files ({shown}); nothing was removed: choose another --out or empty it yourself"
        )
    for entry in run_dir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
    from protloc.inference.files import probabilities_csv

    return atomic_write_text(path, probabilities_csv(ids, probabilities, truth, scheme))


def write_figures(run_dir: Path, rows: list[dict[str, float]], report: EvaluationReport) -> None:
    from protloc import plots

    if rows:
        plots.save_figure(plots.training_curves(rows), run_dir / "training_curves.png")
    plots.save_figure(plots.per_class_f1(report), run_dir / "per_class_f1.png")
