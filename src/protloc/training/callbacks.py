"""Lightning callbacks and plugins of training: atomic checkpoints, resume position, DDP weight check, progress."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from protloc.data.dataset import (
    ResumableSampler,
)
from protloc.model.package import load_checkpoint_safely
from protloc.training.config import TrainConfig
from protloc.training.lightning_module import LocalizationModule
from protloc.utils import atomic_path, atomic_write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, synced and renamed: a kill never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        with atomic_path(target) as temp, temp.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def load_checkpoint(
        self, path: Any, map_location: Any | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Resume loads tensors and plain values only, never arbitrary pickled objects (a run folder received
        from someone else must not run their code): see :func:`load_checkpoint_safely`."""
        return load_checkpoint_safely(path, map_location=map_location)


class ResumePosition(Callback):
    """Counts, in the data module's training sampler, the batches of the epoch already trained on.

    The next checkpoint saves that position, so a resumed run continues after the last trained batch. Lightning
    runs :class:`~lightning.pytorch.callbacks.ModelCheckpoint` after every other callback, so a checkpoint
    written at the end of a step already counts that step's batch.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        if isinstance(sampler, ResumableSampler):
            sampler.batches_done = batch_idx + 1


class RankConsistency(Callback):
    """At the end of DDP training, checks that every rank holds bit-identical weights (they must)."""

    def __init__(self) -> None:
        self.consistent: bool | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            assert isinstance(pl_module, LocalizationModule)
            self.consistent = check_ranks_agree(trainer, pl_module)


class ThroughputLog(Callback):
    """Logs images/s of each training epoch to the progress bar."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, LocalizationModule)
        pl_module.log("img_per_s", pl_module.train_images_per_second(), prog_bar=True, rank_zero_only=True)


class StepProgress(Callback):
    """Reports training progress to the caller: ``on_progress(steps done, steps planned)`` after each step, on the
    main process (the CLI draws its bar from it; the library draws nothing)."""

    def __init__(self, on_progress: Callable[[int, int], None]) -> None:
        self.on_progress = on_progress

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.is_global_zero:
            planned = trainer.estimated_stepping_batches
            done = int(trainer.global_step)
            self.on_progress(done, int(planned) if math.isfinite(planned) else done)


def check_ranks_agree(trainer: L.Trainer, module: LocalizationModule) -> bool:
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


def last_checkpoints(checkpoints: Path, config: TrainConfig) -> list[Callback]:
    """The callbacks that keep ``last.ckpt`` current, for resuming after a kill.

    Mid-epoch: every N steps when asked (tests, tiny epochs), else on a timer, which bounds their cost (a resnet18
    checkpoint with optimizer state is ~135 MB, fsynced). A timer does not save at epoch ends (and "best" refreshes
    last.ckpt only when it improves), so then a second callback saves at every epoch end; without it last.ckpt
    could be epochs old and --resume would repeat them (found by the kill -9 resume test).
    """

    def last(**timing: Any) -> ModelCheckpoint:
        return ModelCheckpoint(
            dirpath=checkpoints,
            filename="last",
            save_top_k=1,
            monitor="step",
            mode="max",
            enable_version_counter=False,
            save_on_train_epoch_end=True,
            **timing,
        )

    if config.checkpoint_every_n_steps:
        return [last(every_n_train_steps=config.checkpoint_every_n_steps)]
    return [last(train_time_interval=dt.timedelta(minutes=config.checkpoint_minutes)), last(every_n_epochs=1)]
