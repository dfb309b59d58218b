"""Single-cell truth of the synthetic generator: same pixels, one label image format, heterogeneous cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protloc.cells.masks import labels_path, read_labels
from protloc.cells.truth import read_cell_truth, truth_folder
from protloc.classes import HPA2018
from protloc.data.catalog import open_dataset
from protloc.data.io import read_sample
from protloc.errors import DataError
from protloc.synth import generate_sample, generate_sample_with_cells, make_dataset
from protloc.synth.labels import sample_label_sets


def _label_sets(n: int, seed: int = 3) -> np.ndarray:
    return sample_label_sets(n, np.random.default_rng(seed))


def test_cell_truth_leaves_the_pixels_unchanged() -> None:
    for index, labels in enumerate(_label_sets(6)):
        plain = generate_sample(labels, 96, np.random.default_rng(index))
        planes, _ = generate_sample_with_cells(labels, 96, np.random.default_rng(index))
        for channel, plane in plain.items():
            np.testing.assert_array_equal(plane, planes[channel])


def test_field_labels_are_the_union_over_cells_and_cells_differ() -> None:
    no_protein = differing = 0
    cells_total = 0
    for index, labels in enumerate(_label_sets(30)):
        _, truth = generate_sample_with_cells(labels, 128, np.random.default_rng(100 + index))
        assert truth.labels.shape == (128, 128)
        assert truth.labels.dtype == np.int32
        n = len(truth.classes)
        present = np.unique(truth.labels)
        np.testing.assert_array_equal(present[present > 0], np.arange(1, n + 1))
        # field labels are exactly the union over cells
        np.testing.assert_array_equal(truth.classes.max(axis=0), labels)
        cells_total += n
        no_protein += int((truth.classes.sum(axis=1) == 0).sum())
        rows = {tuple(row) for row in truth.classes}
        differing += int(len(rows) > 1)
    # a share of cells shows none of the field's classes, and cells of one field differ
    assert 0.03 < no_protein / cells_total < 0.5
    assert differing >= 10


def test_dividing_cells_carry_the_mitotic_classes_only_where_they_are() -> None:
    labels = np.zeros(HPA2018.num_classes, dtype=np.uint8)
    labels[[0, 17]] = 1  # nucleoplasm + mitotic spindle
    for seed in range(4):
        _, truth = generate_sample_with_cells(labels, 128, np.random.default_rng(seed))
        spindle = truth.classes[:, 17].astype(bool)
        assert 1 <= spindle.sum() < len(truth.classes)


def test_make_dataset_writes_truth_in_the_segmentation_format(tmp_path: Path) -> None:
    summary = make_dataset(tmp_path / "d", n_train=4, n_test=3, size=64, seed=1, workers=1, cells=True)
    plain = make_dataset(tmp_path / "p", n_train=4, n_test=3, size=64, seed=1, workers=1)
    assert summary.cells > 0 and plain.cells == 0
    assert not (tmp_path / "p" / "train_cells_truth").exists()
    catalog = open_dataset(tmp_path / "d")
    same = open_dataset(tmp_path / "p")
    for sample_id in catalog.ids:  # the images are the same with and without truth
        np.testing.assert_array_equal(
            read_sample(catalog.files[sample_id], ("green",)), read_sample(same.files[sample_id], ("green",))
        )
    folder = truth_folder(tmp_path / "d", "train")
    assert folder == tmp_path / "d" / "train_cells_truth"
    fields = read_cell_truth(folder, HPA2018.num_classes, catalog.ids)
    test_fields = read_cell_truth(truth_folder(tmp_path / "d", "test"), HPA2018.num_classes)
    assert len(test_fields) == 3
    assert sum(len(f.cells) for f in fields + test_fields) == summary.cells
    for field, labels in zip(fields, catalog.labels, strict=True):
        assert read_labels(labels_path(folder, field.id)).shape == (64, 64)
        np.testing.assert_array_equal(field.values.max(axis=0), labels)
    # a data set can be overwritten with its truth folders
    make_dataset(tmp_path / "d", n_train=4, n_test=3, size=64, seed=2, workers=1, cells=True, overwrite=True)


def test_truth_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no per-cell truth"):
        truth_folder(tmp_path)
    (tmp_path / "cells.csv").write_text("id,cell,labels\nA,1,0|99\n")
    from protloc.cells.masks import write_labels

    write_labels(tmp_path / "A_cells.png", np.ones((4, 4), np.int32))
    with pytest.raises(DataError, match="not a class id"):
        read_cell_truth(tmp_path, HPA2018.num_classes)
