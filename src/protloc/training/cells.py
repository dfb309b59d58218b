"""From a weakly labelled folder to a cell model package, in one call: ``protloc train DATA --cells``.

The story of :func:`train_cells`, each chapter a **stage** whose output is written atomically and recorded in
``OUT/pipeline.json`` with a digest of the settings it depends on; a stage already finished with the same digest
is skipped, so a run killed at any point (``kill -9`` included) continues where it stopped, and changing a
setting redoes the stage it touches and those after it:

1. ``segment`` - every field into cells (``OUT/segmented/``, :func:`protloc.cells.runner.segment_dataset`).
2. ``crops`` - folds of the fields (stratified over their labels) and every cell cut into a masked crop with
   its field's labels (``OUT/crops/``, :func:`protloc.cells.dataset.make_cell_dataset`); the cells of a field
   share its fold.
3. ``field`` - a field model (``OUT/field/model``, the ordinary training engine, the cpu recipe) holding out
   the same fold; or, with ``field_run``, a finished ``protloc train`` run's model, taken as it is (it must
   have held out the same fields).
4. ``cell`` - a cell model (``OUT/cell/model``): crop by crop on its field's labels (``cell_head="plain"``, the
   default, which measured best), or with an image head trained on each field's cells
   (:mod:`protloc.training.mil`, ``cell_head="mil"``).
5. ``round<r>`` - pseudo-label rounds (``rounds``): two models each trained on half of the training fields score
   the other half's cells (out of fold), the weak labels lose the classes a cell scores low for
   (:func:`protloc.cells.pseudo.refine`), and the cell model is trained again on them.
6. ``fusion`` - the rule that combines the cell model with an image-level answer (its own answer for the field,
   or the field model's; :mod:`protloc.cells.fusion`), fitted by the 2021 mAP on the held-out fields when
   per-cell truth for some of them is given (``cell_truth``), else the measured default
   (:data:`DEFAULT_FUSION`); and thresholds for the fused scores (``OUT/fusion.json``).
7. ``package`` - ``OUT/model``: the cell model with the fusion on its card and the field model inside it
   (``field/``), which ``predict``, ``evaluate``, ``serve`` and ``watch --cells`` take as it is.

``max_time`` is one budget for the whole run: the stages before training take what they take, a reserve is
kept for the fusion, and each training stage gets its share (``shares``) of what is left for it and the
training stages after it. A resumed run counts the time its finished stages took.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from protloc.cells.dataset import DEFAULT_CROP_SIZE
from protloc.cells.fusion import FusionSpec, cells_section
from protloc.errors import ConfigError, DataError, ModelError
from protloc.training.mil import MilSettings

PIPELINE_FILE = "pipeline.json"
MODEL_DIR = "model"
FIELD_DIR = "field"
CELL_HEADS = ("mil", "plain")

DEFAULT_FUSION = {
    "plain": FusionSpec("geometric", weight=0.25, image="cell maximum"),
    "mil": FusionSpec("geometric", weight=0.25, image="cell model"),
}
"""The rule used without per-cell truth to fit one on, per cell head: ``cell^0.25 x image^0.75``, the image being the
cell model's own answer for the field (its highest cell per class; for the image-head model, its image head).
Chosen on 236 held-out training fields with per-cell truth (the benchmark's validation fold, not its test fields)
among the weights :func:`protloc.cells.fusion.fit_fusion` tries: plain cell model 0.799 alone, 0.835 x cell maximum,
0.854 as chosen; image-head model 0.553 alone, 0.623 x its head, 0.646 as chosen. On the benchmark's test fields,
which took no part in the choice: plain 0.803 -> 0.868 (+0.065 [0.046, 0.087] paired), image-head 0.556 -> 0.667
(BENCHMARKS.md, "Every cell method side by side"). The field model does not pay (x field 0.782)."""


@dataclass
class CellPipelineSettings:
    """Everything :func:`train_cells` does (see the module docstring); ``data`` is a Kaggle 2018 or 2021 root
    (or a labels CSV) with field labels only."""

    data: str
    out: str = "runs/cells"
    split: str = "train"
    labels: str | None = None
    classes: str | None = None
    map_from: str | None = None
    channel_map: str | None = None
    bit_depth: int = 16
    max_time: str | None = None
    """one budget for every stage: minutes, or HH:MM:SS."""
    segmenter: str = "classical"
    segmenter_options: dict[str, Any] = field(default_factory=dict)
    crop_size: int = DEFAULT_CROP_SIZE
    padding: float = 0.05
    context: float = 0.0
    """how much of a crop's surroundings (other cells, background) the cell model sees: 0 masks them (the
    default), 1 keeps them as they are (:func:`protloc.cells.masks.cells_of_field`)."""
    field_model: str = "resnet18"
    field_run: str | None = None
    """a finished ``protloc train`` run folder (``model/`` and ``folds.csv``) whose model is the field model, instead
    of training one; it must have held out the same fields (the same data, ``folds``, ``fold`` and ``seed``)."""
    field_size: int = 128
    field_epochs: int = 12
    """a ceiling that binds before the budget on small sets: the time it leaves goes to the cell model, which is
    what the default package answers with (BENCHMARKS.md, "Single cells")."""
    cell_head: str = "plain"
    """``plain``: crops trained on their field's labels (the default: 0.868 mAP on foreign fields as packaged, 0.803
    alone, against 0.667 and 0.556 for the image-head model, BENCHMARKS.md); ``mil``: the image-head model
    (:mod:`protloc.training.mil`)."""
    cell_model: str = "resnet18"
    cell_init: bool = False
    """start the cell model (image head) from the field model's weights (same architecture) instead of random ones."""
    cell_epochs: int = 30
    """a ceiling for the cell model(s); under ``max_time`` the budget ends training first (at 12, the ceiling
    stopped the benchmark's cell model at 62 % of its budget)."""
    mil: MilSettings = field(default_factory=MilSettings)
    rounds: int = 0
    pseudo_threshold: float = 0.1
    pseudo_relative: float = 0.0
    round_cell_weight: float = 1.0
    """the cell term's weight when training on pseudo-labels (image-head models)."""
    cell_truth: str | None = None
    """per-cell truth (label images + cells.csv) for some fields: the fusion is fitted on the held-out ones."""
    cam: bool = False
    """let the fusion fit try the field model's class activation maps in each cell (torch)."""
    threshold_fields: int = 100
    """without per-cell truth, the held-out fields scored to fit the fused scores' thresholds (at most)."""
    folds: int = 5
    fold: int = 0
    seed: int = 0
    shares: tuple[float, float, float] = (0.3, 0.45, 0.25)
    """budget weights of the field model, the cell model and all pseudo-label rounds together."""
    cache_dir: str | None = None
    workers: int | None = None

    def validate(self) -> CellPipelineSettings:
        from protloc.training.config import parse_max_time

        if self.cell_head not in CELL_HEADS:
            raise ConfigError(f"cell_head must be one of {', '.join(CELL_HEADS)}, got {self.cell_head!r}")
        if self.rounds < 0 or self.rounds > 5:
            raise ConfigError(f"rounds must be between 0 and 5, got {self.rounds}")
        if not 0.0 <= self.context <= 1.0:
            raise ConfigError(
                f"context must lie between 0 (masked crops) and 1 (surroundings kept), got {self.context}"
            )
        if not 16 <= self.crop_size <= 512 or not 32 <= self.field_size <= 4096:
            raise ConfigError("crop_size must be 16-512 px and field_size 32-4096 px")
        if self.folds < 3 or not 0 <= self.fold < self.folds:
            raise ConfigError(f"need at least 3 folds and 0 <= fold < folds, got {self.folds} and {self.fold}")
        if self.threshold_fields < 1:
            raise ConfigError(f"threshold_fields must be at least 1, got {self.threshold_fields}")
        if len(self.shares) != 3 or min(self.shares) < 0 or sum(self.shares) <= 0:
            raise ConfigError(f"shares must be three non-negative weights, got {self.shares}")
        if self.max_time is not None:
            parse_max_time(self.max_time)
        if not self.data:
            raise ConfigError("no data set given: pass DATA (a Kaggle root or a labels CSV)")
        return self

    @property
    def budget_seconds(self) -> float | None:
        from protloc.training.config import parse_max_time

        return None if self.max_time is None else dt.timedelta(**parse_max_time(self.max_time)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shares"] = list(self.shares)
        return data


@dataclass
class PipelineProgress:
    """One progress report: stage ``number`` of ``stages`` (``name``) is ``done`` of ``total`` through."""

    name: str
    number: int
    stages: int
    done: float
    total: float
    note: str = ""


@dataclass
class CellPipelineResult:
    """What :func:`train_cells` made."""

    package_dir: Path
    fusion: FusionSpec
    stages: dict[str, dict[str, Any]]
    seconds: float
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ stages


class _Journal:
    """``OUT/pipeline.json``: each finished stage with its digest, seconds and summary, written atomically."""

    def __init__(self, out: Path, order: list[str]) -> None:
        self.path = out / PIPELINE_FILE
        self.order = order
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.stages = dict(json.loads(self.path.read_text()).get("stages", {}))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.stages = {}  # written atomically, so only a foreign file is unreadable: start over

    def finished(self, name: str, digest: str) -> dict[str, Any] | None:
        record = self.stages.get(name)
        return record if record is not None and record.get("digest") == digest else None

    def record(self, name: str, digest: str, seconds: float, summary: dict[str, Any]) -> None:
        from protloc.utils import atomic_write_json

        self.stages[name] = {"digest": digest, "seconds": round(seconds, 1), "summary": summary}
        # in this run's order; stages this run does not have (a round of an earlier run with more) are dropped
        self.stages = {stage: self.stages[stage] for stage in self.order if stage in self.stages}
        atomic_write_json(self.path, {"format": "protloc-cell-pipeline", "stages": self.stages})


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Run:
    """One run of the pipeline: settings, folders, journal, budget and progress."""

    s: CellPipelineSettings
    out: Path
    journal: _Journal
    on_progress: Callable[[PipelineProgress], None] | None
    stage_names: list[str]
    started: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)
    current: str = ""

    def report(self, done: float, total: float, note: str = "") -> None:
        if self.on_progress is not None:
            number = self.stage_names.index(self.current) + 1
            self.on_progress(PipelineProgress(self.current, number, len(self.stage_names), done, total, note))

    def stage(self, name: str, digest: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` unless stage ``name`` finished with ``digest``; record its summary."""
        self.current = name
        done = self.journal.finished(name, digest)
        if done is not None:
            self.skipped.append(name)
            self.report(1, 1, "done before")
            return dict(done["summary"])
        self.report(0, 1)
        began = time.perf_counter()
        summary = work()
        self.journal.record(name, digest, time.perf_counter() - began, summary)
        self.report(1, 1)
        return summary

    held_out: int = 0
    """fields the fusion stage scores (for its reserve)."""

    def training_seconds(self, weight: float, later: float) -> float | None:
        """This training stage's share of what is left of the budget, keeping a reserve for the fusion stage
        (which scores the held-out fields: 0.075 s each on two cores measured, 0.3 s with class activation
        maps; the reserve allows about 1.3x that, and at least 3 % of the budget)."""
        total = self.s.budget_seconds
        if total is None:
            return None
        reserve = max(0.03 * total, (0.4 if self.s.cam else 0.1) * self.held_out)
        before = self.stage_names[: self.stage_names.index(self.current)]  # passed in this run: done or skipped
        spent = sum(float(self.journal.stages.get(name, {}).get("seconds", 0.0)) for name in before)
        left = total - spent - reserve
        return max(30.0, left * weight / max(weight + later, 1e-9))


# ------------------------------------------------------------------------------------------------ the story


def train_cells(
    settings: CellPipelineSettings, *, on_progress: Callable[[PipelineProgress], None] | None = None
) -> CellPipelineResult:
    """Run the pipeline of the module docstring; resumes a run stopped in ``settings.out``.

    Raises:
        ConfigError: bad settings.
        DataError: the data cannot be read, has no labels, or yields no cells.
        BusyError: another process holds ``settings.out``.
    """
    from protloc.locks import hold

    s = settings.validate()
    out = Path(s.out)
    with hold(out, "protloc train --cells"):
        names = list(stage_names(s))
        run = _Run(s, out, _Journal(out, names), on_progress, names)
        catalog = _field_catalog(s)
        held_out = len(catalog) // s.folds
        run.held_out = held_out if s.cell_truth else min(held_out, s.threshold_fields)
        w_field, w_cell, w_rounds = s.shares
        w_rounds = w_rounds if s.rounds else 0.0  # without rounds, their share goes to the models
        digest = _digest("segment", s.data, s.split, s.labels, s.segmenter, s.segmenter_options, s.bit_depth)
        run.stage("segment", digest, partial(_segment, run, catalog))
        context = [s.context] if s.context else []  # absent at 0, so runs from before it resume as they were
        crops = digest = _digest(digest, s.crop_size, s.padding, s.folds, s.seed, s.classes, s.map_from, *context)
        run.stage("crops", digest, partial(_crops, run, catalog))
        field = _digest(crops, s.field_model, s.field_size, s.field_epochs, s.fold, s.max_time)
        if s.field_run is not None:  # a given field model: what it is, not how one would be trained
            field = _digest(crops, _run_stamp(s.field_run))
        # under a budget, the cell model's time depends on the shares and on whether rounds follow it (a finished
        # field model is kept when rounds are added: the rest of the budget is shared by what is left)
        budget = (s.max_time, list(s.shares), bool(s.rounds)) if s.max_time else None
        run.stage("field", field, lambda: _field_model(run, catalog, run.training_seconds(w_field, w_cell + w_rounds)))
        digest = _digest(crops, s.cell_head, s.cell_model, s.cell_epochs, s.mil.to_dict(), s.fold, budget)
        if s.cell_init:  # a cell model started from the field model depends on it
            digest = _digest(digest, field)
        run.stage("cell", digest, lambda: _cell_model(run, catalog, run.training_seconds(w_cell, w_rounds)))
        model = out / "cell" / MODEL_DIR
        for r in range(1, s.rounds + 1):
            digest = _digest(digest, r, s.pseudo_threshold, s.pseudo_relative, s.round_cell_weight)
            share = w_rounds / s.rounds
            seconds = partial(run.training_seconds, share, share * (s.rounds - r))
            run.stage(f"round{r}", digest, partial(_round, run, catalog, r, model, seconds))
            model = out / f"round{r}" / MODEL_DIR
        digest = _digest(digest, field, s.cell_truth, s.cam, s.threshold_fields, DEFAULT_FUSION[s.cell_head].to_dict())
        fusion = run.stage("fusion", digest, partial(_fusion, run, catalog, model))
        run.stage("package", _digest(digest), partial(_package, run, model, fusion))
        return CellPipelineResult(
            package_dir=out / MODEL_DIR,
            fusion=FusionSpec.from_dict(fusion["spec"]),
            stages=dict(run.journal.stages),
            seconds=time.perf_counter() - run.started,
            skipped=run.skipped,
        )


def _field_catalog(s: CellPipelineSettings) -> Any:
    from protloc.data.catalog import open_dataset

    catalog = open_dataset(
        s.data,
        split=s.split,
        labels=s.labels,
        scheme=s.classes,
        map_from=s.map_from,
        channel_map=s.channel_map,
        channels=None,
    )
    if catalog.labels is None:
        raise DataError(f"{s.data}: training needs the fields' labels (train.csv or --labels)")
    return catalog


def _segment(run: _Run, catalog: Any) -> dict[str, Any]:
    from protloc.cells.runner import segment_dataset

    folder = run.out / "segmented"
    segment = partial(
        segment_dataset,
        catalog,
        folder,
        segmenter=run.s.segmenter,
        options=run.s.segmenter_options,
        workers=run.s.workers,
        bit_depth=run.s.bit_depth,
        on_progress=run.report,
    )
    try:
        summary = segment()  # an interrupted segmentation with these settings continues where it stopped
    except ConfigError:
        if not folder.is_dir():
            raise
        shutil.rmtree(folder)  # this pipeline's own folder, segmented with other settings
        summary = segment()
    return {"fields": summary.fields, "cells": summary.cells, "border_cells": summary.border_cells}


def _field_folds(run: _Run, catalog: Any) -> dict[str, int]:
    """Folds of the fields, as the training engine makes them (the same function, labels and seed), so the
    field model and the cell model hold out the same fields."""
    from protloc.data.dataset import make_folds

    folds = make_folds(catalog.labels, run.s.folds, run.s.seed)
    return dict(zip(catalog.ids, (int(f) for f in folds), strict=True))


def _crops(run: _Run, catalog: Any) -> dict[str, Any]:
    from protloc.cells.dataset import make_cell_dataset

    made = make_cell_dataset(
        catalog,
        run.out / "crops",
        masks=run.out / "segmented",
        labels="field",
        size=run.s.crop_size,
        padding=run.s.padding,
        context=run.s.context,
        bit_depth=run.s.bit_depth,
        folds=_field_folds(run, catalog),
        overwrite=True,
        on_progress=run.report,
    )
    return {"cells": made.cells, "fields": made.fields, "skipped": made.skipped}


def _train_config(run: _Run, data: Path, out: Path, model: str, size: int, epochs: int, seconds: float | None) -> Any:
    from protloc.training.config import resolve_config

    s = run.s
    return resolve_config(
        "cpu",
        overrides={
            "data": str(data),
            "out": str(out),
            "model": model,
            "image_size": size,
            "epochs": epochs,
            "max_time": None if seconds is None else f"{_training_time(seconds) / 60:.3f}",
            "folds": s.folds,
            "fold": s.fold,
            "seed": s.seed,
            "cache_dir": s.cache_dir,
            "workers": s.workers,
            "bit_depth": s.bit_depth,
        },
    )


def _training_time(seconds: float) -> float:
    """The ``max_time`` a training stage given ``seconds`` passes to the engine: what follows its deadline
    (export, thresholds, plots: 12-16 s measured for a resnet18 at 64 and 128 px) fits in the rest."""
    return max(seconds - max(20.0, 0.04 * seconds), 20.0)


def _engine(run: _Run, config: Any) -> Path:
    """Train with the ordinary engine (restarting an interrupted run), reporting its steps."""
    from protloc.training.train import train

    result = train(config, overwrite=True, on_progress=lambda done, of: run.report(done, of, "steps"))
    assert result is not None
    return result.package_dir


def _fresh(folder: Path) -> Path:
    """A stage's own output folder, emptied: what an interrupted or outdated run of the stage left is redone."""
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _run_stamp(folder: str | None) -> str | None:
    """What identifies a given field run: its path and its card's content (a retrained run is a new stamp)."""
    if folder is None:
        return None
    card = Path(folder) / MODEL_DIR / "card.json"
    if not card.is_file() or not (Path(folder) / "folds.csv").is_file():
        raise ConfigError(f"{folder}: not a finished protloc train run (needs model/card.json and folds.csv)")
    return f"{Path(folder).resolve()}:{hashlib.sha256(card.read_bytes()).hexdigest()[:16]}"


def _field_model(run: _Run, catalog: Any, seconds: float | None) -> dict[str, Any]:
    s = run.s
    _fresh(run.out / "field")
    if s.field_run is not None:  # a trained field model: copied in, so the package never depends on it
        from protloc.utils import atomic_folder

        with atomic_folder(run.out / "field") as staging:
            shutil.copytree(Path(s.field_run) / MODEL_DIR, staging / MODEL_DIR)
            shutil.copy2(Path(s.field_run) / "folds.csv", staging / "folds.csv")
        if _read_folds(run.out / "field" / "folds.csv") != _field_folds(run, catalog):
            raise DataError(
                f"{s.field_run}: its model held out other fields than this pipeline would; train it on the same "
                f"data with --folds {s.folds} --fold {s.fold} --seed {s.seed}, or leave the field model to the pipeline"
            )
        return {"package": str(run.out / "field" / MODEL_DIR), "given": str(s.field_run)}
    config = _train_config(run, Path(s.data), run.out / "field", s.field_model, s.field_size, s.field_epochs, seconds)
    config.split, config.labels, config.classes, config.map_from = s.split, s.labels, s.classes, s.map_from
    config.channel_map = s.channel_map
    package = _engine(run, config)
    if _read_folds(run.out / "field" / "folds.csv") != _field_folds(run, catalog):
        raise DataError(f"{run.out / 'field'}: the field model held out other fields than the cell model")
    return {"package": str(package), "budget_seconds": seconds}


def _read_folds(path: Path) -> dict[str, int]:
    import csv

    with path.open(newline="") as handle:
        return {row["Id"]: int(row["fold"]) for row in csv.DictReader(handle)}


def _labels_by_field(catalog: Any) -> dict[str, np.ndarray]:
    return {i: catalog.labels[k] for k, i in enumerate(catalog.ids)}


def _fit_cell_model(
    run: _Run,
    catalog: Any,
    out: Path,
    seconds: float | None,
    *,
    cell_labels: dict[str, np.ndarray] | None = None,
    fields: set[str] | None = None,
    cell_weight: float | None = None,
) -> Path:
    """Train a cell model on the crops (their weak labels, or ``cell_labels``; every training field, or
    ``fields``) into ``out/model``."""
    s = run.s
    crops = run.out / "crops"
    if s.cell_head == "mil":
        from protloc.training.mil import train_mil

        mil = dataclasses.replace(
            s.mil,
            model=s.cell_model,
            epochs=s.cell_epochs,
            seconds=seconds,
            validation_fold=s.fold,
            seed=s.seed,
            cell_weight=s.mil.cell_weight if cell_weight is None else cell_weight,
            init=str(run.out / "field" / MODEL_DIR) if s.cell_init else s.mil.init,
        )
        result = train_mil(
            crops,
            out / MODEL_DIR,
            mil,
            field_labels=_labels_by_field(catalog),
            cell_labels=cell_labels,
            train_fields=fields,
            cache_dir=s.cache_dir,
            workers=s.workers,
            on_progress=lambda done, of: run.report(done, of, "training"),
        )
        return result.package_dir
    config = _train_config(run, crops, out, s.cell_model, s.crop_size, s.cell_epochs, seconds)
    config.batch_size = 64
    if cell_labels is not None or fields is not None:
        from protloc.cells.dataset import split_cell_sample_id
        from protloc.cells.pseudo import write_cell_labels

        folds = _read_folds(crops / "folds.csv")
        chosen = {
            i: (cell_labels[i] if cell_labels is not None else None)
            for i in folds
            if fields is None or split_cell_sample_id(i)[0] in fields or folds[i] == s.fold
        }
        weak = _weak_cell_labels(crops) if cell_labels is None else {}
        rows = {i: (v if v is not None else weak[i]) for i, v in chosen.items()}
        config.labels = str(write_cell_labels(out.parent / f".{out.name}-labels.csv", crops, rows))
    return _engine(run, config)


def _weak_cell_labels(crops: Path) -> dict[str, np.ndarray]:
    from protloc.cells.dataset import cell_dataset_scheme
    from protloc.data.catalog import open_dataset

    catalog = open_dataset(crops, scheme=cell_dataset_scheme(crops), allow_empty_labels=True, channels=None)
    assert catalog.labels is not None
    return {i: catalog.labels[k] for k, i in enumerate(catalog.ids)}


def _cell_model(run: _Run, catalog: Any, seconds: float | None) -> dict[str, Any]:
    package = _fit_cell_model(run, catalog, _fresh(run.out / "cell"), seconds)
    return {"package": str(package), "head": run.s.cell_head, "budget_seconds": seconds}


def _round(run: _Run, catalog: Any, r: int, previous: Path, budget: Callable[[], float | None]) -> dict[str, Any]:
    """One out-of-fold pseudo-label round (see the module docstring); ``budget()`` gives its seconds."""
    from protloc.cells.dataset import split_cell_sample_id
    from protloc.cells.pseudo import refine, score_cell_data, write_cell_labels

    s = run.s
    folder = _fresh(run.out / f"round{r}")
    crops = run.out / "crops"
    folds = _read_folds(crops / "folds.csv")
    field_fold = {split_cell_sample_id(i)[0]: f for i, f in folds.items()}
    others = sorted({f for f in field_fold.values() if f != s.fold})
    halves = [{k for k, f in field_fold.items() if f in part} for part in (others[::2], others[1::2])]
    current = _current_labels(previous, crops)
    seconds = budget()
    half_seconds = None if seconds is None else seconds / 4
    scores: dict[str, np.ndarray] = {}
    for index, half in enumerate(halves):
        model = _fit_cell_model(run, catalog, folder / f"half{index}", half_seconds, cell_labels=current, fields=half)
        other = halves[1 - index]
        ids, probabilities, _ = score_cell_data(model, crops, fields=other, cache_dir=s.cache_dir, workers=s.workers)
        scores.update(zip(ids, probabilities, strict=True))
    ids = [i for i in current if i in scores]
    refined = refine(
        np.stack([current[i] for i in ids]),
        np.stack([scores[i] for i in ids]),
        np.asarray([split_cell_sample_id(i)[0] for i in ids]),
        threshold=s.pseudo_threshold,
        relative=s.pseudo_relative,
    )
    labels = {**current, **dict(zip(ids, refined, strict=True))}
    write_cell_labels(folder / "labels.csv", crops, labels)
    before = int(sum(np.asarray(current[i]).sum() for i in ids))
    package = _fit_cell_model(
        run,
        catalog,
        folder,
        None if seconds is None else seconds / 2,
        cell_labels=labels,
        cell_weight=s.round_cell_weight,
    )
    return {"package": str(package), "labels_before": before, "labels_after": int(refined.sum()), "cells": len(ids)}


def _current_labels(previous: Path, crops: Path) -> dict[str, np.ndarray]:
    """The cell labels the model ``previous`` was trained on: a round's refined labels, else the weak ones."""
    labels_file = previous.parent / "labels.csv"
    if not labels_file.is_file():
        return _weak_cell_labels(crops)
    from protloc.cells.dataset import cell_dataset_scheme
    from protloc.data.catalog import open_dataset

    catalog = open_dataset(
        crops, labels=labels_file, scheme=cell_dataset_scheme(crops), allow_empty_labels=True, channels=None
    )
    assert catalog.labels is not None
    return {i: catalog.labels[k] for k, i in enumerate(catalog.ids)}


def _fusion(run: _Run, catalog: Any, model: Path) -> dict[str, Any]:
    """Score the held-out fields with the cell and field models; fit the fusion on those with per-cell truth."""
    from protloc.cells.fusion import fit_fusion, fused_thresholds
    from protloc.cells.masks import labels_path
    from protloc.cells.metrics import match_cells
    from protloc.cells.outputs import fusion_inputs, score_fields
    from protloc.cells.predict import open_cell_predictor
    from protloc.cells.truth import read_cell_truth

    s = run.s
    folds = _field_folds(run, catalog)
    held_out = [i for i in catalog.ids if folds[i] == s.fold]
    predictor = open_cell_predictor(model, run.out / "field" / MODEL_DIR, fusion=FusionSpec())
    truth = Path(s.cell_truth) if s.cell_truth else None
    if truth is not None:
        held_out = [i for i in held_out if labels_path(truth, i).is_file()]
        if not held_out:
            raise DataError(f"{truth}: no per-cell truth for any held-out field (fold {s.fold})")
    else:  # thresholds only (the 2021 mAP ranks scores and does not use them): a sample spread over the fold
        held_out = held_out[:: max(1, -(-len(held_out) // max(1, s.threshold_fields)))]
    scores = score_fields(
        predictor,
        s.data,
        split=s.split,
        ids=held_out,
        masks=run.out / "segmented",
        bit_depth=s.bit_depth,
        cam=s.cam,
        on_progress=run.report,
    )
    labels = _labels_by_field(catalog)
    inputs = fusion_inputs(scores, np.stack([labels[f.id] for f in scores]))
    negative = predictor.scheme.exclusive
    if truth is None:
        spec = DEFAULT_FUSION[s.cell_head]
        spec = dataclasses.replace(spec, thresholds=tuple(fused_thresholds(inputs, spec, negative)))
        return {"spec": spec.to_dict(), "fit": {"chosen": spec.describe(), "fitted": False, "fields": len(scores)}}
    truths = read_cell_truth(truth, len(predictor.class_names), held_out)
    matches = match_cells([f.field_cells() for f in scores], truths)
    fit = fit_fusion(inputs, matches, negative=negative)
    return {"spec": fit.spec.to_dict(), "fit": {**fit.summary(), "fitted": True}}


def _package(run: _Run, model: Path, fusion: Mapping[str, Any]) -> dict[str, Any]:
    """``OUT/model``: the cell model with its fusion and pipeline record on the card, the field model inside."""
    from protloc.model.card import CARD_FILE, read_card
    from protloc.utils import atomic_folder, atomic_write_json

    card = read_card(model)
    spec = FusionSpec.from_dict(fusion["spec"])
    if card.cells is None:
        raise ModelError(f"{model}: not a cell model (its card has no cells section)")
    card.cells = cells_section(card.cells, fusion=spec, field_model=FIELD_DIR, fit=fusion["fit"])
    card.training = {
        **card.training,
        "pipeline": {
            "settings": run.s.to_dict(),
            "stages": {k: {"seconds": v["seconds"]} for k, v in run.journal.stages.items()},
        },
    }
    with atomic_folder(run.out / MODEL_DIR) as staging:
        shutil.copytree(model, staging, dirs_exist_ok=True)
        shutil.copytree(run.out / "field" / MODEL_DIR, staging / FIELD_DIR)
        atomic_write_json(staging / CARD_FILE, card.to_dict())
    return {"package": str(run.out / MODEL_DIR), "fusion": spec.describe()}


def stage_names(settings: CellPipelineSettings) -> Iterator[str]:
    """The stages a run with ``settings`` goes through, in order."""
    yield from ("segment", "crops", "field", "cell")
    yield from (f"round{r}" for r in range(1, settings.rounds + 1))
    yield from ("fusion", "package")
