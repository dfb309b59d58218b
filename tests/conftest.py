"""Shared fixtures: tiny data sets written by the tests themselves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.helpers import write_csv, write_sample


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a tiny Kaggle layout with given train labels and test ids (random 32 px images)."""

    def make(train: dict[str, str], test: Sequence[str] = (), size: int = 32) -> Path:
        root = tmp_path / "data"
        root.mkdir(exist_ok=True)
        for i, sample_id in enumerate(train):
            write_sample(root / "train", sample_id, size=size, seed=i)
        write_csv(root / "train.csv", ["Id", "Target"], list(train.items()))
        if test:
            for i, sample_id in enumerate(test):
                write_sample(root / "test", sample_id, size=size, seed=100 + i)
            write_csv(root / "sample_submission.csv", ["Id", "Predicted"], [(t, "0") for t in test])
        return root

    return make


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic HPA-like data set in the Kaggle layout, made once per test session."""
    from protloc.synth import make_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    make_dataset(root, n_train=160, n_test=40, size=64, seed=0, min_per_class=3, workers=2)
    return root


@pytest.fixture(scope="session")
def trained_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run (test_resnet, 64 px, 2 epochs) shared by the tests that need a model."""
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(synth_data),
            "out": str(run_dir),
            "model": "test_resnet",
            "image_size": 64,
            "epochs": 2,
            "batch_size": 16,
            "cache_dir": str(tmp_path_factory.mktemp("cache")),
            "workers": 0,
            "checkpoint_every_n_steps": 3,
        },
    )
    train(config)
    return run_dir
