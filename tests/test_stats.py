from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protloc.classes import HPA2018
from protloc.cli import main
from protloc.data.catalog import open_dataset
from protloc.data.stats import dataset_statistics, label_statistics, read_class_counts, write_statistics
from protloc.plots import composite_rgb, stretch_for_display


def test_label_statistics_counts() -> None:
    labels = np.zeros((4, 28), np.uint8)
    labels[0, [0, 25]] = 1
    labels[1, [0]] = 1
    labels[2, [0, 2, 25]] = 1
    labels[3, [27]] = 1
    stats = label_statistics(labels, HPA2018)
    assert stats.n_images == 4
    assert stats.class_counts[0] == 3 and stats.class_counts[25] == 2 and stats.class_counts[27] == 1
    assert stats.labels_per_image == {1: 2, 2: 1, 3: 1}
    matrix = np.asarray(stats.cooccurrence)
    assert matrix[0, 25] == 2 and matrix[25, 0] == 2 and matrix[0, 0] == 3 and matrix[2, 27] == 0


def test_stats_of_synthetic_data_and_files(synth_data: Path, tmp_path: Path) -> None:
    catalog = open_dataset(synth_data)
    stats = dataset_statistics(catalog, pixel_images=20)
    assert stats.n_images == 160
    assert catalog.labels is not None
    assert stats.class_counts == catalog.labels.sum(axis=0).tolist()
    assert min(stats.class_counts) >= 3  # the fixture asks for at least 3 per class
    assert set(stats.channels) == {"red", "green", "blue", "yellow"}
    assert 0.3 < stats.channels["blue"].fraction_zero <= 1.0
    written = write_statistics(stats, tmp_path / "stats", title="t")
    for name in ("class_distribution", "labels_per_image", "cooccurrence", "channel_intensity"):
        with Image.open(written[name]) as image:
            assert image.size[0] > 400 and image.size[1] > 250
    assert read_class_counts(written["class_counts"]) == stats.class_counts
    saved = json.loads(written["json"].read_text())
    assert saved["class_names"][0] == "Nucleoplasm" and saved["n_images"] == 160


def test_stats_and_show_cli(synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(synth_data), "--out", str(tmp_path / "s"), "--pixel-images", "10"]) == 0
    printed = capsys.readouterr().out
    assert "Nucleoplasm" in printed and "labels per image" in printed and "green" in printed
    assert (tmp_path / "s" / "class_distribution.png").is_file()
    sample_id = open_dataset(synth_data).ids[0]
    assert main(["show", str(synth_data), sample_id, "--out", str(tmp_path / "one.png")]) == 0
    assert sample_id in capsys.readouterr().out
    with Image.open(tmp_path / "one.png") as image:
        assert image.size[0] > 3 * image.size[1]  # composite + four channels side by side
    test_id = open_dataset(synth_data, split="test").ids[0]
    assert main(["show", str(synth_data), test_id, "--out", str(tmp_path / "two.png"), "--channels", "green"]) == 0
    assert main(["show", str(synth_data), "nope", "--out", str(tmp_path / "x.png")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["stats", str(synth_data / "test")]) == 1  # no labels there
    assert "needs a labels CSV" in capsys.readouterr().err


def test_composite_mixes_yellow_into_red_and_green() -> None:
    image = np.zeros((4, 2, 2), np.uint8)
    image[3] = 200  # yellow only
    rgb = composite_rgb(image, ("red", "green", "blue", "yellow"))
    assert rgb[0, 0].tolist() == [100, 100, 0]
    image[1, 0, 0] = 255
    assert composite_rgb(image, ("red", "green", "blue", "yellow"))[0, 0].tolist() == [100, 255, 0]


def test_display_stretch_brightens_dim_channels_only_for_display() -> None:
    image = np.zeros((2, 10, 10), np.uint8)
    image[0, :5] = 40
    image[1, :5] = 250
    stretched = stretch_for_display(image)
    assert stretched[0].max() == 255 and stretched[1].max() >= 250
    assert image[0].max() == 40  # the input is untouched
