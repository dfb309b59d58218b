"""Training: from a data folder to a calibrated, self-describing model package.

The story of :func:`train`, top to bottom:

1. Resolve the config, open the data set, and make (or reuse) the stratified K-fold split.
2. Build (or reuse) the on-disk cache at the stored size; compute per-channel normalisation on training images.
3. Fit a :class:`LocalizationModule` (timm backbone + focal/BCE loss) with Lightning's Trainer: mixed precision
   where the hardware has it, ``channels_last``, checkpoints (best by validation macro F1, and the last every
   N steps, written atomically), exact resume after a kill, early stopping, CSV logs, a Rich progress bar,
   and DDP over devices and nodes.
4. Reload the best weights, predict the validation fold, fit per-class thresholds, score everything.
5. Write the run directory: config, folds, metrics, curves, per-class chart, thresholds, report and the
   model package (safetensors + card).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from protloc import __version__
from protloc.cells.dataset import cell_dataset_scheme, read_cell_settings
from protloc.classes import is_integer_text
from protloc.data.cache import ArrayCache, build_cache
from protloc.data.catalog import Catalog, open_dataset
from protloc.data.dataset import (
    CachedDataset,
    load_folds,
    make_folds,
    save_folds,
)
from protloc.errors import DataError
from protloc.locks import hold
from protloc.metrics import EvaluationReport, evaluate, fit_decision, threshold_gain
from protloc.model.card import VALIDATION_FILE, Architecture, CellSpec, Decision, ModelCard
from protloc.model.network import PackagedNetwork, count_parameters, create_model
from protloc.model.package import new_card, save_package
from protloc.schemes import ClassScheme
from protloc.training.budget import BudgetSchedule, TimeBudget
from protloc.training.callbacks import (
    AtomicCheckpointIO,
    RankConsistency,
    ResumePosition,
    StepProgress,
    ThroughputLog,
    last_checkpoints,
    load_checkpoint_safely,
)
from protloc.training.config import TrainConfig, parse_max_time
from protloc.training.datamodule import HPADataModule
from protloc.training.lightning_module import LocalizationModule
from protloc.training.losses import positive_weights
from protloc.training.run_folder import (
    last_checkpoint_path,
    prepare_run_dir,
    read_metrics,
    write_figures,
    write_predictions,
)
from protloc.utils import Stopwatch, atomic_write_json, default_workers, usable_cpus

log = logging.getLogger("protloc")


# ----------------------------------------------------------------------------------------------- run


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    package_dir: Path
    report: EvaluationReport
    thresholds: list[float]
    threshold_gain: dict[str, float]
    best_epoch: int
    epochs_run: int
    global_step: int
    seconds: dict[str, float] = field(default_factory=dict)
    ddp_consistent: bool | None = None
    budget: dict[str, Any] | None = None
    """with ``max_time``: the budget, the time training used and how it ended (see :mod:`protloc.training.budget`)."""


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where bf16 autocast trains resnet18
    about twice as fast as float32 (BENCHMARKS.md); elsewhere it would be emulated, and slower."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if callable(probe))


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def _workers(config: TrainConfig) -> int:
    if config.workers is not None:
        return max(0, config.workers)
    if torch.cuda.is_available():
        # GPU: augmentation is the bottleneck (BENCHMARKS.md: 423 img/s with 8 workers, 664 with 16 on a
        # 16-core H200 node), so give each GPU's process its share of the node's cores
        return max(1, default_workers(limit=256) // max(1, torch.cuda.device_count()))
    # CPU: the model needs the cores; one worker overlaps augmentation with compute.
    return 1 if default_workers() > 1 else 0


def _devices(value: str) -> Any:
    text = str(value).strip()
    if text == "auto":
        return "auto"
    if is_integer_text(text):
        return int(text)
    return [int(v) for v in text.split(",") if v.strip()]


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = chatter.level
    chatter.setLevel(logging.WARNING)  # "GPU available: False", tips about cloud loggers
    try:
        with _quiet_warnings():
            yield
    finally:
        chatter.setLevel(level)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*LeafSpec.*",
            ".*treespec.*",
            ".*`isinstance\\(treespec, LeafSpec\\)`.*",
            ".*The number of training batches.*",
            ".*GPU available but not used.*",
            ".*srun.*",
            ".*tensorboard.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _make_trainer(
    config: TrainConfig,
    devices: Any,
    callbacks: list[Callback],
    loggers: list[Any],
    batches_per_epoch: int,
) -> L.Trainer:
    return L.Trainer(
        accelerator=config.accelerator,
        devices=devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=_precision(config),  # type: ignore[arg-type]
        max_epochs=config.epochs,
        max_time=None,  # max_time is a budget that drives the learning rate: protloc.training.budget.TimeBudget
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, batches_per_epoch // 2)),
        enable_progress_bar=False,  # library code never draws: callers pass on_progress
        enable_model_summary=False,
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        deterministic=False,
        benchmark=torch.cuda.is_available(),
    )


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_cache_progress: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TrainResult | None:
    """Run one training job as described by ``config``.

    The run folder is held (:func:`protloc.locks.hold`) for the whole run: a second ``train`` into it is
    refused. The data is opened and its labels checked before ``overwrite`` removes anything.

    Args:
        config: the settings (see :class:`protloc.training.config.TrainConfig`).
        resume: continue the run in ``config.out`` from its last checkpoint.
        overwrite: replace a finished or abandoned run in ``config.out``.
        on_cache_progress: ``on_cache_progress(samples done, total)`` while the cache is built.
        on_progress: ``on_progress(steps done, steps planned)`` after each training step (main process).

    Returns:
        The result on the main process; ``None`` on other DDP ranks.

    Raises:
        ConfigError, DataError, ModelError: anything wrong with settings, data or model choice.
        BusyError: another process holds the run folder.
    """
    config = config.validate()
    with hold(config.out, "protloc train"):
        return _train(config, resume, overwrite, on_cache_progress, on_progress)


def _open_training_data(config: TrainConfig) -> tuple[Catalog, np.ndarray]:
    # a cell data set (protloc.cells.dataset) may hold cells without a class, and records its class scheme
    catalog = open_dataset(
        config.data,
        split=config.split,
        labels=config.labels,
        channels=config.channels,
        scheme=config.classes if config.classes is not None or config.map_from else cell_dataset_scheme(config.data),
        map_from=config.map_from,
        channel_map=config.channel_map,
        allow_empty_labels=read_cell_settings(config.data) is not None,
    )
    if catalog.labels is None:
        raise DataError(f"{config.data}: training needs labels (train.csv or --labels)")
    return catalog, catalog.labels


def _is_main_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


@dataclass
class _Fold:
    """The data of one run: the catalog, its labels, the fold's rows, the cache and the channel statistics."""

    catalog: Catalog
    labels: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    cache: ArrayCache
    mean: list[float]
    std: list[float]
    cell_settings: dict[str, Any] | None

    @property
    def scheme(self) -> ClassScheme:
        return self.catalog.scheme


@dataclass
class _Fitted:
    """What fitting left: the trainer, the callbacks read afterwards, and the step a resumed run started at."""

    trainer: L.Trainer
    best_checkpoint: ModelCheckpoint
    consistency: RankConsistency
    time_budget: TimeBudget | None
    resumed_from: int | None


@dataclass
class _Calibrated:
    network: PackagedNetwork
    probabilities: np.ndarray
    fitted: Any
    min_one: bool
    report: EvaluationReport
    gain: dict[str, float]
    best_epoch: int


def _train(
    config: TrainConfig,
    resume: bool,
    overwrite: bool,
    on_cache_progress: Callable[[int, int], None] | None,
    on_progress: Callable[[int, int], None] | None,
) -> TrainResult | None:
    """The story: prepare the run folder, open the fold's data, fit, calibrate, write."""
    watch = Stopwatch()
    opened: tuple[Catalog, np.ndarray] | None = None
    if _is_main_process():
        if not resume:  # validate the inputs before anything in the run folder is replaced
            with watch("data"):
                opened = _open_training_data(config)
        config = prepare_run_dir(config, resume, overwrite)
    else:  # DDP child processes: the main process has prepared the run directory already
        config = TrainConfig.load(Path(config.out) / "config.yaml") if resume else config
    L.seed_everything(config.seed, workers=True, verbose=False)
    if not torch.cuda.is_available() and "WORLD_SIZE" not in os.environ:
        torch.set_num_threads(usable_cpus())
    fold = _open_fold(config, opened, watch, on_cache_progress)
    workers = _workers(config)
    datamodule = HPADataModule(config, fold.cache, fold.labels, fold.train_rows, fold.val_rows, workers)
    fitted = _fit(config, fold, datamodule, resume, watch, on_progress)
    if not fitted.trainer.is_global_zero:
        return None
    with watch("calibrate"):
        calibrated = _calibrate(config, fold, datamodule, fitted, workers)
    with watch("write"):
        return _write_run(config, fold, fitted, calibrated, watch)


def _open_fold(
    config: TrainConfig,
    opened: tuple[Catalog, np.ndarray] | None,
    watch: Stopwatch,
    on_cache_progress: Callable[[int, int], None] | None,
) -> _Fold:
    """The catalog, the folds (the run's, the data set's own, or new stratified ones) and the cache."""
    run_dir = Path(config.out)
    with watch("data"):
        # A cell data set (protloc.cells.dataset) may hold cells without a class, and brings folds by field.
        cell_settings = read_cell_settings(config.data)
        catalog, labels = opened or _open_training_data(config)
        folds_path = run_dir / "folds.csv"
        data_folds = _data_folds(config, cell_settings)
        if folds_path.is_file():
            folds = load_folds(folds_path, catalog.ids)
        else:
            folds = load_folds(data_folds, catalog.ids) if data_folds else make_folds(labels, config.folds, config.seed)
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                save_folds(folds_path, catalog.ids, folds)
    with watch("cache"):
        cache = build_cache(
            catalog,
            config.channels,
            config.stored_size,
            cache_dir=config.cache_dir,
            bit_depth=config.bit_depth,
            workers=config.workers,
            on_progress=on_cache_progress,
        )
    train_rows = np.flatnonzero(folds != config.fold)
    val_rows = np.flatnonzero(folds == config.fold)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise DataError(f"fold {config.fold} leaves no training or no validation samples")
    mean, std = cache.channel_statistics(train_rows, seed=config.seed)
    return _Fold(catalog, labels, train_rows, val_rows, cache, mean, std, cell_settings)


def _callbacks(
    config: TrainConfig, on_progress: Callable[[int, int], None] | None
) -> tuple[list[Callback], ModelCheckpoint, RankConsistency, TimeBudget | None]:
    """Checkpoints ("best" by validation macro F1, "last" for resuming), throughput, DDP consistency, the time
    budget (which drives the learning rate and ends training by the deadline; epochs become a ceiling), early
    stopping and step progress."""
    checkpoints = Path(config.out) / "checkpoints"
    best_checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor="val_macro_f1",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    consistency = RankConsistency()
    callbacks: list[Callback] = [
        ResumePosition(),
        best_checkpoint,
        *last_checkpoints(checkpoints, config),
        ThroughputLog(),
        consistency,
    ]
    time_budget = None
    if config.max_time:
        time_budget = TimeBudget(
            dt.timedelta(**parse_max_time(config.max_time)).total_seconds(),
            BudgetSchedule(config.scheduler, peak=config.lr),
        )
        callbacks.append(time_budget)
    if config.patience > 0:
        callbacks.append(EarlyStopping(monitor="val_macro_f1", mode="max", patience=config.patience))
    if on_progress is not None:
        callbacks.append(StepProgress(on_progress))
    return callbacks, best_checkpoint, consistency, time_budget


def _fit(
    config: TrainConfig,
    fold: _Fold,
    datamodule: HPADataModule,
    resume: bool,
    watch: Stopwatch,
    on_progress: Callable[[int, int], None] | None,
) -> _Fitted:
    """Build the module and the trainer, and fit (from the last checkpoint when resuming)."""
    run_dir = Path(config.out)
    batches_per_epoch = max(1, len(fold.train_rows) // config.batch_size)
    if config.limit_train_batches is not None:
        limit = config.limit_train_batches
        batches_per_epoch = int(limit) if limit >= 1 else max(1, int(batches_per_epoch * limit))
    devices = _devices(config.devices)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * config.num_nodes
    pos_weight = positive_weights(fold.labels[fold.train_rows], config.pos_weight)
    module = LocalizationModule(
        config,
        pos_weight=None if pos_weight is None else pos_weight.tolist(),
        total_steps=config.epochs * max(1, batches_per_epoch // max(world, 1)) + 10,
        num_classes=fold.scheme.num_classes,
        mean=fold.mean,
        std=fold.std,
    )
    callbacks, best_checkpoint, consistency, time_budget = _callbacks(config, on_progress)
    loggers: list[Any] = [L.pytorch.loggers.CSVLogger(run_dir, name="logs")]
    if config.tensorboard:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard"))
    with _quiet_lightning():
        trainer = _make_trainer(config, devices, callbacks, loggers, batches_per_epoch)
    if trainer.world_size > 1 and not torch.cuda.is_available():
        # CPU DDP: the processes share the cores; more threads than cores collapses throughput.
        torch.set_num_threads(max(1, usable_cpus() // max(1, trainer.num_devices)))
    if config.compile:
        module.model = torch.compile(module.model)  # type: ignore[assignment]
    ckpt_path = last_checkpoint_path(run_dir) if resume else None
    resumed_from = None
    if resume and ckpt_path is None:
        log.warning("no checkpoint in %s yet; starting from the beginning", run_dir / "checkpoints")
    elif ckpt_path is not None:
        resumed_from = int(load_checkpoint_safely(ckpt_path)["global_step"])
    with watch("fit"), _quiet_lightning():
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return _Fitted(trainer, best_checkpoint, consistency, time_budget, resumed_from)


def _calibrate(
    config: TrainConfig, fold: _Fold, datamodule: HPADataModule, fitted: _Fitted, workers: int
) -> _Calibrated:
    """The best weights in the network as it is packaged, its validation probabilities, the fitted decision
    rule and its scores."""
    from protloc.model.package import state_dict_from_lightning

    run_dir = Path(config.out)
    best = fitted.best_checkpoint.best_model_path
    best_path = Path(best) if best else None
    backbone = create_model(config.model, len(config.channels), fold.scheme.num_classes, image_size=config.image_size)
    network = PackagedNetwork(backbone, fold.mean, fold.std)  # the network trained, as it is packaged
    source = best_path if best_path and best_path.is_file() else last_checkpoint_path(run_dir)
    if source is None:
        raise DataError(f"{run_dir}: training produced no checkpoint (did it run a single step?)")
    network.load_state_dict(state_dict_from_lightning(source))
    best_epoch = int(load_checkpoint_safely(source)["epoch"])
    probabilities = predict_cached(
        network,
        datamodule.val_set,
        batch_size=config.batch_size * 2,
        workers=workers,
        channels_last=config.channels_last,
    )
    truth = fold.labels[fold.val_rows]
    decision = fit_decision(
        truth,
        probabilities,
        config.threshold_method,
        min_positives=config.threshold_min_positives,
        shrink=config.threshold_shrink,
        micro_weight=config.threshold_micro_weight,
    )
    # the seed recipe keeps the seed notebook's plain 0.5 rule; protloc's recipes add "at least one label"
    min_one = config.threshold_method != "fixed"
    report = evaluate(
        truth,
        probabilities,
        decision.values,
        min_one=min_one,
        class_names=fold.scheme.names,
        exclusive=fold.scheme.exclusive,
    )
    gain = threshold_gain(truth, probabilities, config.threshold_min_positives, seed=config.seed)
    return _Calibrated(network, probabilities, decision, min_one, report, gain, best_epoch)


def _write_run(
    config: TrainConfig, fold: _Fold, fitted: _Fitted, calibrated: _Calibrated, watch: Stopwatch
) -> TrainResult:
    """Validation predictions, thresholds, report, the model package, figures and the run's summary."""
    run_dir, scheme, trainer = Path(config.out), fold.scheme, fitted.trainer
    thresholds, methods = calibrated.fitted.values, calibrated.fitted.methods
    val_ids = [fold.catalog.ids[i] for i in fold.val_rows]
    write_predictions(
        run_dir / "val_predictions.csv", val_ids, calibrated.probabilities, fold.labels[fold.val_rows], scheme
    )
    atomic_write_json(
        run_dir / "thresholds.json",
        {
            "thresholds": dict(zip(scheme.names, thresholds, strict=True)),
            "methods": dict(zip(scheme.names, methods, strict=True)),
            "min_positives": config.threshold_min_positives,
            "gain": calibrated.gain,
        },
    )
    atomic_write_json(run_dir / "report.json", calibrated.report.to_dict())
    metrics_rows = read_metrics(run_dir / "metrics.csv")
    card = training_card(
        config,
        calibrated.network,
        mean=fold.mean,
        std=fold.std,
        thresholds=thresholds,
        methods=methods,
        gain=calibrated.gain,
        min_one=calibrated.min_one,
        report=calibrated.report,
        scheme=scheme,
        training={
            "data": str(Path(config.data).resolve()),
            "n_samples": len(fold.catalog),
            "source_size": _native_size(fold.catalog, config.channels[0]),
            "n_train": len(fold.train_rows),
            "n_val": len(fold.val_rows),
            "fold": config.fold,
            "folds": config.folds,
            "class_counts": [int(c) for c in fold.labels[fold.train_rows].sum(axis=0)],
            "epochs_run": len(metrics_rows),
            "best_epoch": calibrated.best_epoch,
            "global_step": int(trainer.global_step),
            "fit_seconds": round(watch.seconds.get("fit", 0.0), 1),
            "config": config.to_dict(),
        },
        cells=fold.cell_settings,
    )
    package_dir = save_package(
        run_dir / "model", calibrated.network, card, extra_files={VALIDATION_FILE: run_dir / "val_predictions.csv"}
    )
    write_figures(run_dir, metrics_rows, calibrated.report)
    result = TrainResult(
        run_dir=run_dir,
        package_dir=package_dir,
        report=calibrated.report,
        thresholds=thresholds,
        threshold_gain=calibrated.gain,
        best_epoch=calibrated.best_epoch,
        epochs_run=len(metrics_rows),
        global_step=int(trainer.global_step),
        seconds=dict(watch.seconds),
        ddp_consistent=fitted.consistency.consistent,
        budget=fitted.time_budget.summary() if fitted.time_budget is not None else None,
    )
    atomic_write_json(
        run_dir / "summary.json",
        {
            "protloc_version": __version__,
            "validation": calibrated.report.summary(),
            "threshold_gain": calibrated.gain,
            "best_epoch": calibrated.best_epoch,
            "epochs_run": len(metrics_rows),
            "global_step": int(trainer.global_step),
            "seconds": {k: round(v, 2) for k, v in watch.seconds.items()},
            "world_size": trainer.world_size,
            "ddp_ranks_consistent": result.ddp_consistent,
            "resumed_from_step": fitted.resumed_from,
            "budget": result.budget,
            "package": str(package_dir),
        },
    )
    return result


def training_card(
    config: TrainConfig,
    network: torch.nn.Module,
    *,
    mean: list[float],
    std: list[float],
    thresholds: list[float],
    methods: list[str],
    gain: dict[str, float],
    min_one: bool,
    report: EvaluationReport,
    training: dict[str, Any],
    scheme: ClassScheme,
    cells: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of a trained package: architecture, input, calibrated thresholds, validation scores, run facts
    (and, for a cell model, how its crops were cut: ``cells`` is the cell data set's ``cells.json``)."""
    spec = CellSpec.from_settings(cells) if cells is not None else None
    return new_card(
        architecture=Architecture(
            config.model,
            in_chans=len(config.channels),
            num_classes=scheme.num_classes,
            image_size=config.image_size,
            extra={
                "parameters": count_parameters(network),
                "source": "protloc" if config.model == "seed-cnn" else "timm",
                "timm_version": _timm_version(),
            },
        ),
        channels=list(config.channels),
        size=config.image_size,
        mean=mean,
        std=std,
        thresholds=thresholds,
        bit_depth=config.bit_depth,
        threshold_info={"methods": methods, "min_positives": config.threshold_min_positives, "gain": gain},
        decision=Decision("probability >= per-class threshold", min_one=min_one),
        metrics={
            "validation": report.summary(),
            "per_class": [
                {"class": r.name, "support": r.support, "f1": r.f1, "precision": r.precision, "recall": r.recall}
                for r in report.per_class
            ],
        },
        training=training,
        scheme=scheme,
        cells=spec,
    )


def _data_folds(config: TrainConfig, cell_settings: dict[str, Any] | None) -> Path | None:
    """A cell data set's own ``folds.csv`` (grouped by field), when it has the folds the config asks for."""
    if cell_settings is None:
        return None
    folder = Path(config.data) if Path(config.data).is_dir() else Path(config.data).parent
    path = folder / "folds.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        folds = {int(row["fold"]) for row in csv.DictReader(handle)}
    return path if folds == set(range(config.folds)) else None


def _native_size(catalog: Catalog, channel: str) -> list[int] | None:
    """Height and width of the first sample's files (the fields the model learnt from, before resizing)."""
    from protloc.data.decoder import probe

    try:
        height, width = probe(catalog.files[catalog.ids[0]][channel]).plane_shape
    except (DataError, OSError):  # the card then records no source size
        return None
    return [height, width]


def _timm_version() -> str:
    import timm

    return str(timm.__version__)


def predict_cached(
    network: torch.nn.Module,
    dataset: CachedDataset,
    *,
    batch_size: int,
    workers: int,
    channels_last: bool = True,
    device: str = "auto",
) -> np.ndarray:
    """Sigmoid probabilities ``(N, classes)`` of a packaged network over a cached dataset, in dataset order,
    through the prediction core (:func:`protloc.inference.core.batch_probabilities`) that every prediction uses."""
    from protloc.inference.core import batch_probabilities
    from protloc.inference.torch_backend import TorchBackend

    backend = TorchBackend(network, device=device, channels_last=channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    outputs = [batch_probabilities(backend, batch["image"].numpy()[:, None]) for batch in loader]
    width = dataset.labels.shape[1] if dataset.labels is not None else 0
    return np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)
