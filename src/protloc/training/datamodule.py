"""The Lightning data module of training: resumable, DDP-sharded loaders over the cache for one fold."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from protloc.data.cache import ArrayCache
from protloc.data.dataset import (
    CachedDataset,
    ResumableLoader,
    ResumableSampler,
    ShardSampler,
    oversampling_weights,
)
from protloc.data.transforms import eval_transform, train_transform
from protloc.training.config import TrainConfig


class HPADataModule(L.LightningDataModule):
    """Loaders over the cache for one fold; the training loader is resumable and DDP-sharded by protloc.

    Batches stay ``uint8`` through the workers, pinned memory and the host-to-device copy; the network being
    trained (the packaged one) normalises them on the device.
    """

    def __init__(
        self,
        config: TrainConfig,
        cache: ArrayCache,
        labels: np.ndarray,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        workers: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.workers = workers
        self.train_set = CachedDataset(
            cache, train_rows, labels, train_transform(config.augment, config.stored_size, config.image_size)
        )
        self.val_set = CachedDataset(cache, val_rows, labels, eval_transform(config.stored_size, config.image_size))
        self.weights = oversampling_weights(labels[train_rows], config.oversample) if config.oversample > 0 else None
        self.train_sampler: ResumableSampler | None = None
        """the sampler of the current training loader (its position is saved in checkpoints)."""

    def _loader_options(self) -> dict[str, Any]:
        workers = self.workers
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "prefetch_factor": 4 if workers > 0 else None,
        }

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
        self.train_sampler = sampler
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
