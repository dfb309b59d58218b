"""Folds, samplers and torch datasets over the cache.

* :func:`make_folds` splits multi-label data into K folds that keep every class's share in every fold
  (iterative stratification), reproducibly from a seed; :func:`save_folds`/:func:`load_folds` keep them.
* :class:`ResumableSampler` shuffles per epoch from (seed, epoch), shards across DDP ranks, can oversample
  rare classes, and can skip the batches a killed run already trained on, so resume is exact mid-epoch.
* :class:`CachedDataset` serves ``{"image", "label", "index"}`` dicts from an :class:`~protloc.data.cache.ArrayCache`;
  images stay ``uint8`` until the network being trained normalises a whole batch on its device.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from protloc.data.cache import ArrayCache
from protloc.data.transforms import apply_chw
from protloc.errors import DataError
from protloc.utils import atomic_write_text


def make_folds(labels: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Assign each sample a fold in ``0..n_folds-1`` with multi-label iterative stratification.

    Classes with fewer positives than folds cannot appear in every fold; the split still spreads them.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if len(labels) < n_folds:
        raise DataError(f"{len(labels)} samples cannot be split into {n_folds} folds")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[held_out] = fold
    return folds


def save_folds(path: str | Path, ids: Sequence[str], folds: np.ndarray) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "fold"])
    writer.writerows(zip(ids, (int(f) for f in folds), strict=True))
    return atomic_write_text(path, buffer.getvalue())


def load_folds(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """Read a folds CSV; every id of ``ids`` must be present."""
    path = Path(path)
    with path.open(newline="") as handle:
        table = {row["Id"]: int(row["fold"]) for row in csv.DictReader(handle)}
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{path}: no fold for Id {missing[0]} ({len(missing)} missing); delete it to re-split")
    return np.asarray([table[i] for i in ids], dtype=np.int64)


def oversampling_weights(labels: np.ndarray, strength: float) -> np.ndarray:
    """Per-sample weights ~ (1 / frequency of the sample's rarest class) ** strength, normalised to mean 1."""
    counts = labels.sum(axis=0).astype(np.float64)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    rarest = (labels * inverse[None, :]).max(axis=1)
    rarest = np.where(rarest > 0, rarest, inverse[inverse > 0].min() if (inverse > 0).any() else 1.0)
    weights = rarest**strength
    return weights / weights.mean()


class ResumableSampler(Sampler[int]):
    """Epoch-seeded shuffling, DDP sharding, optional oversampling, and exact mid-epoch resume.

    The order of epoch ``e`` is a pure function of ``(seed, e)``; rank ``r`` of ``w`` takes every ``w``-th
    index of it (padded so every rank has the same number of batches, which DDP needs). After
    :meth:`load_state_dict` the next iteration skips the batches already trained on.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples < 1:
            raise DataError("no samples to train on")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.weights = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.batches_done = 0
        """batches of the current epoch already trained on (set by the training step)."""
        self._skip_batches = 0

    def _per_rank(self) -> int:
        per_rank = math.ceil(self.num_samples / self.world_size)
        if self.drop_last:
            per_rank = (per_rank // self.batch_size) * self.batch_size
        return per_rank

    def __len__(self) -> int:
        return self._per_rank()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip_batches = 0
            self.batches_done = 0
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All ranks' indices of one epoch, before sharding."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is not None:
            return rng.choice(self.num_samples, size=self.num_samples, replace=True, p=self.weights)
        if self.shuffle:
            return rng.permutation(self.num_samples)
        return np.arange(self.num_samples)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order(self.epoch)
        total = self._per_rank() * self.world_size
        if len(order) < total:  # pad by wrapping so every rank gets the same count
            order = np.concatenate([order, order[: total - len(order)]])
        mine = order[self.rank : total : self.world_size][: self._per_rank()]
        skip = self._skip_batches * self.batch_size
        self._skip_batches = 0
        self.batches_done = skip // self.batch_size
        yield from (int(i) for i in mine[skip:])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self._skip_batches = self.batches_done


class ResumableLoader(DataLoader):
    """A DataLoader whose position inside an epoch survives a checkpoint (Lightning's ``_Stateful``)."""

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        return sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        sampler.load_state_dict(state)


class ShardSampler(Sampler[int]):
    """Evaluation order for one DDP rank: indices ``rank, rank + w, ...`` (no padding, no duplicates)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class CachedDataset(Dataset[dict[str, Any]]):
    """Augmented ``uint8`` images from the cache with their multi-hot labels.

    Images leave the workers as ``uint8`` (a quarter of the bytes of ``float32`` through worker queues, pinned
    memory and the host-to-GPU copy; on a GPU machine that copy, not the augmentation, is what starves the
    model) and are normalised on the device by the network being trained
    (:class:`protloc.model.network.PackagedNetwork`).

    Args:
        cache: the array store.
        indices: which cache rows this dataset serves (e.g. one fold's).
        labels: ``(len(cache), classes)`` multi-hot labels of all cache rows, or ``None``.
        transform: an albumentations pipeline (see :mod:`protloc.data.transforms`).
    """

    def __init__(
        self, cache: ArrayCache, indices: Sequence[int] | np.ndarray, labels: np.ndarray | None, transform: Any
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        row = int(self.indices[item])
        image = apply_chw(self.transform, self.cache.read(row))
        sample: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image)), "index": row}
        if self.labels is not None:
            sample["label"] = torch.from_numpy(self.labels[row].astype(np.float32))
        return sample
