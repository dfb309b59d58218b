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
import hashlib
import io
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from torchmetrics.classification import MultilabelStatScores

from protloc import __version__
from protloc.cache import ArrayCache, build_cache
from protloc.card import VALIDATION_FILE
from protloc.catalog import Catalog, open_dataset
from protloc.classes import CLASS_NAMES, NUM_CLASSES
from protloc.config import TrainConfig, parse_max_time
from protloc.dataset import (
    BatchNormaliser,
    CachedDataset,
    ResumableLoader,
    ResumableSampler,
    ShardSampler,
    load_folds,
    make_folds,
    oversampling_weights,
    save_folds,
)
from protloc.errors import ConfigError, DataError
from protloc.losses import create_loss, positive_weights
from protloc.metrics import EvaluationReport, evaluate, fit_thresholds, threshold_gain
from protloc.models import PackagedNetwork, count_parameters, create_model
from protloc.package import new_card, save_package
from protloc.transforms import eval_transform, train_transform
from protloc.utils import Stopwatch, atomic_path, atomic_write_json, atomic_write_text, default_workers

log = logging.getLogger("protloc")

RESUME_ALLOWED = {"devices", "num_nodes", "strategy", "accelerator", "workers", "max_time", "cache_dir", "precision"}


# --------------------------------------------------------------------------------------------- engine


def macro_f1_from_stats(stats: torch.Tensor) -> float:
    """Macro F1 over classes with support > 0 from torchmetrics stat scores ``(C, 5) = tp, fp, tn, fn, sup``."""
    tp, fp, _, fn, support = (stats[:, i].double() for i in range(5))
    denominator = 2 * tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    present = support > 0
    return float(f1[present].mean()) if bool(present.any()) else 0.0


class LocalizationModule(L.LightningModule):
    """A multi-label classifier: backbone -> 28 logits; loss on logits; macro F1 over each whole epoch."""

    def __init__(self, config: TrainConfig, pos_weight: list[float] | None = None, total_steps: int = 1) -> None:
        super().__init__()
        self.config = config
        self.total_steps = max(1, total_steps)
        self.model = create_model(
            config.model,
            len(config.channels),
            NUM_CLASSES,
            pretrained=config.pretrained,
            image_size=config.image_size,
            drop_rate=config.drop_rate,
        )
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        weight = torch.tensor(pos_weight) if pos_weight is not None else None
        self.loss = create_loss(config.loss, gamma=config.focal_gamma, pos_weight=weight)
        # Epoch metrics are torchmetrics states: exact over the whole epoch and synced across DDP ranks, in
        # the module's own hooks, which every rank runs in the same order (logging never syncs).
        self.train_stats = MultilabelStatScores(num_labels=NUM_CLASSES, average=None, validate_args=False)
        self.val_stats = MultilabelStatScores(num_labels=NUM_CLASSES, average=None, validate_args=False)
        self.train_loss_mean = MeanMetric()
        self.val_loss_mean = MeanMetric()
        self.epoch_metrics: dict[str, float] = {}
        self.train_sampler: ResumableSampler | None = None
        self._epoch_started = time.perf_counter()
        self._last_batch_end = self._epoch_started
        self._epoch_images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.train_sampler is not None:
            self.train_sampler.batches_done = batch_idx + 1  # saved by the next checkpoint: exact resume
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"])
        self.train_stats.update(torch.sigmoid(logits.detach().float()), batch["label"].int())
        self.train_loss_mean.update(loss.detach(), weight=len(logits))
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(logits))
        self._epoch_images += len(logits)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"])
        self.val_stats.update(torch.sigmoid(logits.float()), batch["label"].int())
        self.val_loss_mean.update(loss, weight=len(logits))

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._last_batch_end = self._epoch_started
        self._epoch_images = 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._last_batch_end = time.perf_counter()

    def train_images_per_second(self) -> float:
        """Training throughput of the current epoch: data loading and steps, validation excluded."""
        seconds = self._last_batch_end - self._epoch_started
        return self._epoch_images * self.trainer.world_size / max(seconds, 1e-9)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_stats.reset()
            return
        f1 = macro_f1_from_stats(self.val_stats.compute())
        val_loss = float(self.val_loss_mean.compute())
        self.val_stats.reset()
        self.val_loss_mean.reset()
        self.log("val_macro_f1", f1, prog_bar=True)
        self.log("val_loss", val_loss)
        self.epoch_metrics.update(val_macro_f1=f1, val_loss=val_loss)

    def on_train_epoch_end(self) -> None:
        train_f1 = macro_f1_from_stats(self.train_stats.compute())
        train_loss = float(self.train_loss_mean.compute())
        self.train_stats.reset()
        self.train_loss_mean.reset()
        self.log("train_macro_f1", train_f1)
        seconds = time.perf_counter() - self._epoch_started
        row = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "train_loss": train_loss,
            "train_macro_f1": train_f1,
            "val_loss": self.epoch_metrics.get("val_loss", float("nan")),
            "val_macro_f1": self.epoch_metrics.get("val_macro_f1", float("nan")),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_second": self.train_images_per_second(),
        }
        if self.trainer.is_global_zero:
            append_metrics_row(Path(self.config.out) / "metrics.csv", row)

    def configure_optimizers(self) -> Any:
        config = self.config
        params = self.model.parameters()
        optimizer: torch.optim.Optimizer
        if config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        elif config.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=config.lr)
        else:
            optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
            )
        if config.scheduler == "none":
            return optimizer
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if config.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=config.lr,
                total_steps=self.total_steps,
                pct_start=0.2,
                div_factor=20.0,
                final_div_factor=200.0,
            )
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _scalar(value: Any) -> float:
    if value is None:
        return float("nan")
    return float(value.item() if hasattr(value, "item") else value)


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, synced and renamed: a kill never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        with atomic_path(target) as temp, temp.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())


class HPADataModule(L.LightningDataModule):
    """Loaders over the cache for one fold; the training loader is resumable and DDP-sharded by protloc."""

    def __init__(
        self,
        module: LocalizationModule,
        cache: ArrayCache,
        labels: np.ndarray,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        mean: list[float],
        std: list[float],
        workers: int,
    ) -> None:
        super().__init__()
        config = module.config
        self.module = module
        self.config = config
        self.workers = workers
        self.normalise = BatchNormaliser(mean, std)
        self.train_set = CachedDataset(
            cache, train_rows, labels, train_transform(config.augment, config.stored_size, config.image_size)
        )
        self.val_set = CachedDataset(cache, val_rows, labels, eval_transform(config.stored_size, config.image_size))
        self.weights = oversampling_weights(labels[train_rows], config.oversample) if config.oversample > 0 else None

    def _loader_options(self) -> dict[str, Any]:
        workers = self.workers
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "prefetch_factor": 4 if workers > 0 else None,
        }

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # uint8 crosses the worker queues and the host-to-device copy; normalise where the model runs
        batch["image"] = self.normalise(batch["image"])
        return batch

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        sampler = ResumableSampler(
            len(self.train_set),
            batch_size=self.config.batch_size,
            seed=self.config.seed,
            weights=self.weights,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            drop_last=len(self.train_set) // max(trainer.world_size, 1) > self.config.batch_size,
        )
        self.module.train_sampler = sampler
        return ResumableLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=sampler,
            drop_last=sampler.drop_last,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        sampler = ShardSampler(len(self.val_set), trainer.global_rank, trainer.world_size)
        return DataLoader(
            self.val_set, batch_size=self.config.batch_size * 2, sampler=sampler, **self._loader_options()
        )


class RankConsistency(Callback):
    """At the end of DDP training, checks that every rank holds bit-identical weights (they must)."""

    def __init__(self) -> None:
        self.consistent: bool | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            assert isinstance(pl_module, LocalizationModule)
            self.consistent = _check_ranks_agree(trainer, pl_module)


class ThroughputLog(Callback):
    """Logs images/s of each training epoch to the progress bar."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, LocalizationModule)
        pl_module.log("img_per_s", pl_module.train_images_per_second(), prog_bar=True, rank_zero_only=True)


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


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


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
    if text.lstrip("-").isdigit():
        return int(text)
    return [int(v) for v in text.split(",") if v.strip()]


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


def _last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def _progress_bar() -> Callback:
    """Lightning's Rich progress bar without the logger's version number."""
    from lightning.pytorch.callbacks import RichProgressBar

    class Bar(RichProgressBar):
        def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return {k: (round(float(v), 3) if isinstance(v, float) else v) for k, v in metrics.items()}

    return Bar(leave=True)


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
    progress_bar: bool,
) -> L.Trainer:
    return L.Trainer(
        accelerator=config.accelerator,
        devices=devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=_precision(config),  # type: ignore[arg-type]
        max_epochs=config.epochs,
        max_time=parse_max_time(config.max_time) if config.max_time else None,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, batches_per_epoch // 2)),
        enable_progress_bar=progress_bar,
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
    progress_bar: bool = True,
) -> TrainResult | None:
    """Run one training job as described by ``config``.

    Returns:
        The result on the main process; ``None`` on other DDP ranks.

    Raises:
        ConfigError, DataError, ModelError: anything wrong with settings, data or model choice.
    """
    watch = Stopwatch()
    config = config.validate()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        config = prepare_run_dir(config, resume, overwrite)
    else:  # DDP child processes: the main process has prepared the run directory already
        config = TrainConfig.load(Path(config.out) / "config.yaml") if resume else config
    run_dir = Path(config.out)
    L.seed_everything(config.seed, workers=True, verbose=False)
    if not torch.cuda.is_available() and "WORLD_SIZE" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1)))

    with watch("data"):
        catalog = open_dataset(config.data, split=config.split, labels=config.labels, channels=config.channels)
        if catalog.labels is None:
            raise DataError(f"{config.data}: training needs labels (train.csv or --labels)")
        folds_path = run_dir / "folds.csv"
        if folds_path.is_file():
            folds = load_folds(folds_path, catalog.ids)
        else:
            folds = make_folds(catalog.labels, config.folds, config.seed)
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
    labels = catalog.labels

    workers = _workers(config)
    batches_per_epoch = max(1, len(train_rows) // config.batch_size)
    if config.limit_train_batches is not None:
        limit = config.limit_train_batches
        batches_per_epoch = int(limit) if limit >= 1 else max(1, int(batches_per_epoch * limit))
    devices = _devices(config.devices)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * config.num_nodes
    total_steps = config.epochs * max(1, batches_per_epoch // max(world, 1)) + 10
    pos_weight = positive_weights(labels[train_rows], config.pos_weight)
    module = LocalizationModule(
        config, pos_weight=None if pos_weight is None else pos_weight.tolist(), total_steps=total_steps
    )
    datamodule = HPADataModule(module, cache, labels, train_rows, val_rows, mean, std, workers)

    checkpoints = run_dir / "checkpoints"
    # "best" by validation macro F1 (plus "last" at each epoch end); "last" also every N steps, for resume.
    best_checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor="val_macro_f1",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    # Mid-epoch "last" checkpoints for resuming after a kill: every N steps when asked (tests, tiny epochs),
    # else on a timer, which bounds their cost (a resnet18 checkpoint with optimizer state is ~135 MB, fsynced).
    timing: dict[str, Any] = (
        {"every_n_train_steps": config.checkpoint_every_n_steps}
        if config.checkpoint_every_n_steps
        else {"train_time_interval": dt.timedelta(minutes=config.checkpoint_minutes)}
    )
    last_checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="last",
        save_top_k=1,
        monitor="step",
        mode="max",
        enable_version_counter=False,
        save_on_train_epoch_end=True,
        **timing,
    )
    consistency = RankConsistency()
    callbacks: list[Callback] = [best_checkpoint, last_checkpoint, ThroughputLog(), consistency]
    if config.patience > 0:
        callbacks.append(EarlyStopping(monitor="val_macro_f1", mode="max", patience=config.patience))
    if progress_bar:
        callbacks.append(_progress_bar())
    loggers: list[Any] = [L.pytorch.loggers.CSVLogger(run_dir, name="logs")]
    if config.tensorboard:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard"))

    with _quiet_lightning():
        trainer = _make_trainer(config, devices, callbacks, loggers, batches_per_epoch, progress_bar)
    if trainer.world_size > 1 and not torch.cuda.is_available():
        # CPU DDP: the processes share the cores; more threads than cores collapses throughput.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, trainer.num_devices)))
    if config.compile:
        module.model = torch.compile(module.model)  # type: ignore[assignment]
    ckpt_path = _last_checkpoint(run_dir) if resume else None
    resumed_from = None
    if resume and ckpt_path is None:
        log.warning("no checkpoint in %s yet; starting from the beginning", checkpoints)
    elif ckpt_path is not None:
        resumed_from = int(torch.load(str(ckpt_path), map_location="cpu", weights_only=False)["global_step"])
    with watch("fit"), _quiet_lightning():
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)

    consistent = consistency.consistent
    if not trainer.is_global_zero:
        return None

    # -- calibrate and score on the validation fold with the best weights
    with watch("calibrate"):
        best_path = Path(best_checkpoint.best_model_path) if best_checkpoint.best_model_path else None
        network = create_model(config.model, len(config.channels), NUM_CLASSES, image_size=config.image_size)
        source = best_path if best_path and best_path.is_file() else _last_checkpoint(run_dir)
        if source is None:
            raise DataError(f"{run_dir}: training produced no checkpoint (did it run a single step?)")
        from protloc.package import state_dict_from_lightning

        network.load_state_dict(state_dict_from_lightning(source))
        best_epoch = int(torch.load(str(source), map_location="cpu", weights_only=False)["epoch"])
        probabilities = predict_cached(
            PackagedNetwork(network, mean, std),
            datamodule.val_set,
            batch_size=config.batch_size * 2,
            workers=workers,
            channels_last=config.channels_last,
        )
        truth = labels[val_rows]
        if config.threshold_method == "fit":
            fitted = fit_thresholds(truth, probabilities, config.threshold_min_positives)
            thresholds, methods = fitted.values, fitted.methods
        else:
            thresholds, methods = [0.5] * NUM_CLASSES, ["fixed"] * NUM_CLASSES
        # the seed recipe keeps the seed notebook's plain 0.5 rule; protloc's recipes add "at least one label"
        min_one = config.threshold_method == "fit"
        report = evaluate(truth, probabilities, thresholds, min_one=min_one)
        gain = threshold_gain(truth, probabilities, config.threshold_min_positives, seed=config.seed)

    with watch("write"):
        write_predictions(run_dir / "val_predictions.csv", [catalog.ids[i] for i in val_rows], probabilities, truth)
        atomic_write_json(
            run_dir / "thresholds.json",
            {
                "thresholds": dict(zip(CLASS_NAMES, thresholds, strict=True)),
                "methods": dict(zip(CLASS_NAMES, methods, strict=True)),
                "min_positives": config.threshold_min_positives,
                "gain": gain,
            },
        )
        atomic_write_json(run_dir / "report.json", report.to_dict())
        metrics_rows = read_metrics(run_dir / "metrics.csv")
        card = new_card(
            architecture={
                "name": config.model,
                "in_chans": len(config.channels),
                "num_classes": NUM_CLASSES,
                "image_size": config.image_size,
                "parameters": count_parameters(network),
                "source": "protloc" if config.model == "seed-cnn" else "timm",
                "timm_version": _timm_version(),
            },
            channels=list(config.channels),
            size=config.image_size,
            mean=mean,
            std=std,
            thresholds=thresholds,
            bit_depth=config.bit_depth,
            threshold_info={"methods": methods, "min_positives": config.threshold_min_positives, "gain": gain},
            decision={"rule": "probability >= per-class threshold", "min_one": min_one},
            metrics={
                "validation": report.summary(),
                "per_class": [
                    {"class": r.name, "support": r.support, "f1": r.f1, "precision": r.precision, "recall": r.recall}
                    for r in report.per_class
                ],
            },
            training={
                "data": str(Path(config.data).resolve()),
                "n_samples": len(catalog),
                "source_size": _native_size(catalog, config.channels[0]),
                "n_train": len(train_rows),
                "n_val": len(val_rows),
                "fold": config.fold,
                "folds": config.folds,
                "class_counts": [int(c) for c in labels[train_rows].sum(axis=0)],
                "epochs_run": len(metrics_rows),
                "best_epoch": best_epoch,
                "global_step": int(trainer.global_step),
                "fit_seconds": round(watch.seconds.get("fit", 0.0), 1),
                "config": config.to_dict(),
            },
        )
        package_dir = save_package(
            run_dir / "model",
            PackagedNetwork(network, mean, std),
            card,
            extra_files={VALIDATION_FILE: run_dir / "val_predictions.csv"},
        )
        _write_figures(run_dir, metrics_rows, report)
        result = TrainResult(
            run_dir=run_dir,
            package_dir=package_dir,
            report=report,
            thresholds=thresholds,
            threshold_gain=gain,
            best_epoch=best_epoch,
            epochs_run=len(metrics_rows),
            global_step=int(trainer.global_step),
            seconds=dict(watch.seconds),
            ddp_consistent=consistent,
        )
        atomic_write_json(
            run_dir / "summary.json",
            {
                "protloc_version": __version__,
                "validation": report.summary(),
                "threshold_gain": gain,
                "best_epoch": best_epoch,
                "epochs_run": len(metrics_rows),
                "global_step": int(trainer.global_step),
                "seconds": {k: round(v, 2) for k, v in watch.seconds.items()},
                "world_size": trainer.world_size,
                "ddp_ranks_consistent": consistent,
                "resumed_from_step": resumed_from,
                "package": str(package_dir),
            },
        )
    return result


def _native_size(catalog: Catalog, channel: str) -> list[int] | None:
    """Height and width of the first sample's files (the fields the model learnt from, before resizing)."""
    from protloc.check import _image_shape

    try:
        height, width = _image_shape(catalog.files[catalog.ids[0]][channel])
    except Exception:
        return None
    return [height, width]


def measure_training_rate(model: str, channels: int, image_size: int, batch_size: int = 32, steps: int = 4) -> float:
    """Images/s of forward+backward+step for ``model`` on this machine (a few steps on random data, CPU/GPU)."""
    from protloc.models import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = create_model(model, channels, NUM_CLASSES, image_size=image_size).to(device)
    network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    x = torch.rand(batch_size, channels, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch_size, NUM_CLASSES, device=device) > 0.9).float()
    timings = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            timings.append(time.perf_counter() - start)
    return batch_size / float(np.median(timings))


def epochs_for_budget(
    images_per_second: float, train_images: int, seconds: float, *, low: int = 2, high: int = 40
) -> int:
    """Epochs that fit ``seconds`` of training at a measured model rate.

    The measured rate is the model alone; loading, augmentation and validation cost about 15-20% more on a
    CPU, so the plan uses 80% of it. ``max_time`` stays the hard stop.
    """
    return int(np.clip(seconds * images_per_second * 0.8 / max(train_images, 1), low, high))


def _timm_version() -> str:
    import timm

    return str(timm.__version__)


def _check_ranks_agree(trainer: L.Trainer, module: LocalizationModule) -> bool:
    """After DDP training, whether every rank holds bit-identical weights (they must)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    mine = torch.tensor(list(digest.digest()[:8]), dtype=torch.int64, device=module.device)
    gathered = trainer.strategy.all_gather(mine)
    run_dir = Path(module.config.out)
    (run_dir / "ddp").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "ddp" / f"rank{trainer.global_rank}.sha256", digest.hexdigest() + "\n")
    rows = gathered.reshape(-1, 8)
    return bool((rows == rows[0]).all())


@torch.no_grad()
def predict_cached(
    network: torch.nn.Module, dataset: CachedDataset, *, batch_size: int, workers: int, channels_last: bool = True
) -> np.ndarray:
    """Sigmoid probabilities ``(N, 28)`` of a packaged network (input ``uint8 / 255``, normalisation inside)
    over a cached dataset, in dataset order."""
    network = network.eval()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    outputs = []
    for batch in loader:
        images = batch["image"].float() / 255.0
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs.append(torch.sigmoid(network(images).float()).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), np.float32)


def write_predictions(path: Path, ids: list[str], probabilities: np.ndarray, truth: np.ndarray | None = None) -> Path:
    """A CSV of ``Id``, one probability column per class name, and (when given) the true ``Target``."""
    from protloc.predict import probabilities_csv

    return atomic_write_text(path, probabilities_csv(ids, probabilities, truth))


def _write_figures(run_dir: Path, rows: list[dict[str, float]], report: EvaluationReport) -> None:
    from protloc import plots

    if rows:
        plots.save_figure(plots.training_curves(rows), run_dir / "training_curves.png")
    plots.save_figure(plots.per_class_f1(report), run_dir / "per_class_f1.png")


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{run_dir}: no summary.json (the run has not finished)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
