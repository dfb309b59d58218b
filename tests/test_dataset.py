from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from protloc.data.dataset import (
    ResumableSampler,
    ShardSampler,
    load_folds,
    make_folds,
    oversampling_weights,
    save_folds,
)


@pytest.fixture
def labels() -> np.ndarray:
    """Label sets drawn with the real HPA label-set frequencies (as the shipped table gives them)."""
    table = json.loads((files("protloc") / "data" / "hpa_label_stats.json").read_text())
    sets = [s for s, _ in table["label_sets"]]
    weights = np.asarray([c for _, c in table["label_sets"]], float)
    picks = np.random.default_rng(3).choice(len(sets), size=1500, p=weights / weights.sum())
    matrix = np.zeros((1500, 28), np.uint8)
    for row, pick in enumerate(picks):
        matrix[row, sets[pick]] = 1
    return matrix


def _worst_share_error(labels: np.ndarray, folds: np.ndarray) -> float:
    overall = labels.mean(axis=0)
    return float(np.mean([np.abs(labels[folds == k].mean(axis=0) - overall).max() for k in range(5)]))


def test_folds_are_stratified_reproducible_and_saved(labels: np.ndarray, tmp_path: Path) -> None:
    folds = make_folds(labels, 5, seed=1)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    assert np.bincount(folds).min() >= 0.9 * len(labels) / 5
    np.testing.assert_array_equal(folds, make_folds(labels, 5, seed=1))
    assert not np.array_equal(folds, make_folds(labels, 5, seed=2))
    random_folds = np.random.default_rng(0).permutation(len(labels)) % 5
    # class shares per fold stay much closer to the overall shares than a random split's
    assert _worst_share_error(labels, folds) < 0.6 * _worst_share_error(labels, random_folds)
    # every class with at least 5 images appears in every fold
    enough = labels.sum(axis=0) >= 5
    for fold in range(5):
        assert (labels[folds == fold][:, enough].sum(axis=0) > 0).all()
    ids = [f"id{i}" for i in range(len(labels))]
    save_folds(tmp_path / "folds.csv", ids, folds)
    np.testing.assert_array_equal(load_folds(tmp_path / "folds.csv", ids), folds)


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    sampler = ResumableSampler(50, batch_size=8, seed=4)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_sampler_shards_cover_everything_once_per_rank() -> None:
    shards = [list(ResumableSampler(50, batch_size=4, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # equal lengths, as DDP needs
    assert set().union(*map(set, shards)) == set(range(50))
    evaluation = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for shard in evaluation for i in shard) == list(range(10))


def test_sampler_resumes_exactly_mid_epoch() -> None:
    sampler = ResumableSampler(40, batch_size=4, seed=9)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.batches_done = 3  # as the training step records it
    state = sampler.state_dict()
    fresh = ResumableSampler(40, batch_size=4, seed=9)
    fresh.load_state_dict(state)
    assert list(fresh) == full[12:]
    # the next epoch is whole again
    fresh.set_epoch(3)
    assert len(list(fresh)) == 40


def test_oversampling_favours_rare_classes(labels: np.ndarray) -> None:
    weights = oversampling_weights(labels, 1.0)
    assert weights.mean() == pytest.approx(1.0)
    counts = labels.sum(axis=0)
    rarest = int(np.argmin(np.where(counts >= 3, counts, 10**9)))
    rare = labels[:, rarest] == 1
    common_only = (labels[:, 0] == 1) & (labels.sum(axis=1) == 1)
    assert weights[rare].mean() > 5 * weights[common_only].mean()
    sampler = ResumableSampler(len(labels), batch_size=8, weights=weights)
    drawn = np.asarray(list(sampler))
    assert labels[drawn, rarest].mean() > 3 * labels[:, rarest].mean()


def test_the_packaged_network_normalises_uint8_batches_on_their_device() -> None:
    """Training feeds uint8 (a quarter of the bytes) to the packaged network, prediction feeds uint8 / 255: the
    backbone sees the same normalised input either way, from the one implementation."""
    import torch

    from protloc.model.network import PackagedNetwork

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 4, 8, 8), dtype=np.uint8))
    mean, std = [0.1, 0.2, 0.05, 0.3], [0.2, 0.1, 0.15, 0.25]
    packaged = PackagedNetwork(torch.nn.Identity(), mean, std)
    from_uint8 = packaged(images)
    assert from_uint8.dtype == torch.float32 and images.dtype == torch.uint8  # the batch itself is untouched
    expected = (images.numpy().astype(np.float64) / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(from_uint8.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(packaged(images.float() / 255).numpy(), from_uint8.numpy(), atol=1e-5)


def test_training_trains_the_packaged_network() -> None:
    from protloc.model.network import PackagedNetwork
    from protloc.training.config import TrainConfig
    from protloc.training.lightning_module import LocalizationModule

    config = TrainConfig(model="seed-cnn", image_size=64)
    module = LocalizationModule(config, num_classes=28, mean=[0.1] * 4, std=[0.2] * 4)
    assert isinstance(module.model, PackagedNetwork)
    assert module.model.mean.flatten().tolist() == pytest.approx([0.1] * 4)


def test_cached_dataset_serves_uint8_images(tmp_path: Path) -> None:
    import torch

    from protloc.data.cache import build_cache
    from protloc.data.catalog import open_dataset
    from protloc.data.dataset import CachedDataset
    from protloc.data.transforms import train_transform
    from protloc.synth import make_dataset

    make_dataset(tmp_path / "data", n_train=4, n_test=0, size=64, seed=0)
    catalog = open_dataset(tmp_path / "data")
    assert catalog.labels is not None
    cache = build_cache(catalog, ("red", "green", "blue", "yellow"), 64, cache_dir=tmp_path / "cache")
    dataset = CachedDataset(cache, [2, 0], catalog.labels, train_transform("standard", 64, 48))
    sample = dataset[0]
    assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (4, 48, 48)
    assert sample["index"] == 2 and sample["label"].tolist() == catalog.labels[2].astype(np.float32).tolist()
