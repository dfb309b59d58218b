from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protloc.data.catalog import index_images, open_dataset, read_labels_csv
from protloc.errors import DataError
from tests.helpers import write_csv, write_sample

TRAIN = {"id-a": "0", "id-b": "7 1 2 0", "id-c": "25 0"}


def test_kaggle_train_split_keeps_csv_order_and_labels(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN, test=["t-2", "t-1"])
    catalog = open_dataset(root)
    assert catalog.ids == ["id-a", "id-b", "id-c"]
    assert catalog.name == "train"
    assert catalog.labels is not None
    assert catalog.labels.shape == (3, 28)
    assert np.flatnonzero(catalog.labels[1]).tolist() == [0, 1, 2, 7]
    assert set(catalog.paths(0)) == {"red", "green", "blue", "yellow"}


def test_kaggle_test_split_follows_sample_submission_order(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN, test=["t-2", "t-1"])
    catalog = open_dataset(root, split="test")
    assert catalog.ids == ["t-2", "t-1"]
    assert catalog.labels is None


def test_labels_override_for_the_test_truth(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN, test=["t-2", "t-1"])
    truth = write_csv(root / "test_truth.csv", ["Id", "Target"], [("t-1", "3"), ("t-2", "4 5")])
    catalog = open_dataset(root, split="test", labels=truth)
    assert catalog.ids == ["t-1", "t-2"]
    assert catalog.labels is not None and catalog.labels.sum() == 3


def test_csv_path_finds_the_sibling_image_folder(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN)
    catalog = open_dataset(root / "train.csv")
    assert catalog.image_dir == root / "train"
    assert len(catalog) == 3


def test_plain_folder_without_csv_finds_ids_from_names(tmp_path: Path) -> None:
    for sample_id in ["b", "a", "c"]:
        write_sample(tmp_path, sample_id, size=8)
    (tmp_path / "notes.txt").write_text("ignored")
    catalog = open_dataset(tmp_path)
    assert catalog.ids == ["a", "b", "c"]
    assert catalog.labels is None


def test_subset_and_select_ids(kaggle_dir: Callable[..., Path]) -> None:
    catalog = open_dataset(kaggle_dir(TRAIN))
    sub = catalog.subset([2, 0])
    assert sub.ids == ["id-c", "id-a"]
    assert sub.labels is not None and sub.labels[1].tolist() == catalog.labels[0].tolist()  # type: ignore[index]
    assert catalog.select_ids(["id-b"]).ids == ["id-b"]
    with pytest.raises(DataError, match="'nope' is not in"):
        catalog.select_ids(["nope"])


def test_missing_files_for_csv_ids_is_an_error(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN)
    for path in (root / "train").glob("id-b_*"):
        path.unlink()
    with pytest.raises(DataError, match="1 Id.*no image files.*id-b.*protloc check"):
        open_dataset(root)


def test_missing_channel_named_with_id(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN)
    (root / "train" / "id-c_yellow.png").unlink()
    with pytest.raises(DataError, match="sample id-c: missing yellow channel"):
        open_dataset(root)
    # ...but fine when only green is needed
    assert len(open_dataset(root, channels=["green"])) == 3


def test_unrecognised_layout_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="found neither train.csv"):
        open_dataset(tmp_path / "empty")


def test_read_labels_csv_reports_first_problem_and_count(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "l.csv", ["Id", "Target"], [("a", "1"), ("b", "99"), ("c", "x")])
    with pytest.raises(DataError, match=r"l.csv line 3 \(Id b\): label '99'.*and 1 more problems"):
        read_labels_csv(path)


def test_index_prefers_png_and_records_duplicates(tmp_path: Path) -> None:
    write_sample(tmp_path, "s", size=8)
    write_sample(tmp_path, "s", size=8, ext=".tif", channels=["green"])
    index = index_images(tmp_path)
    assert index.files["s"]["green"].suffix == ".png"
    assert [(d[0], d[1]) for d in index.duplicates] == [("s", "green")]
