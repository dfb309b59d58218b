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
