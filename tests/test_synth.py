"""The synthetic data generator: layout, reproducibility, labels, formats, safety, statistics, class signatures."""

from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from protloc.classes import HPA2018, parse_labels
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_channel_raw, read_sample
from protloc.errors import ConfigError
from protloc.synth import (
    REAL_CHANNEL_STATS,
    SynthSummary,
    generate_sample,
    make_dataset,
    sample_label_sets,
    synth_id,
)
from protloc.synth import labels as synth_labels
from protloc.synth import writer as synth_writer

UUID1 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-11e8-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_hot(*classes: int) -> np.ndarray:
    labels = np.zeros(HPA2018.num_classes, dtype=np.uint8)
    labels[list(classes)] = 1
    return labels


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = make_dataset(out, n_train=30, n_test=8, size=64, seed=11, workers=1)
    return out, summary


# ------------------------------------------------------------------------------------------------ layout


def test_writes_the_kaggle_layout_with_exact_counts(small_dataset: tuple[Path, SynthSummary]) -> None:
    out, summary = small_dataset
    assert sorted(p.name for p in out.iterdir()) == [
        "sample_submission.csv",
        "test",
        "test_truth.csv",
        "train",
        "train.csv",
    ]
    train = read_rows(out / "train.csv")
    truth = read_rows(out / "test_truth.csv")
    submission = read_rows(out / "sample_submission.csv")
    assert train[0] == ["Id", "Target"]
    assert truth[0] == ["Id", "Target"]
    assert submission[0] == ["Id", "Predicted"]
    assert len(train) == 31 and len(truth) == 9 and len(submission) == 9
    assert all(row[1] == "0" for row in submission[1:])
    assert [row[0] for row in submission[1:]] == [row[0] for row in truth[1:]]
    for row in train[1:] + truth[1:]:
        ids = [int(t) for t in row[1].split()]
        assert ids == sorted(ids) and ids, row
        parse_labels(row[1], scheme=HPA2018)
    train_files = sorted(p.name for p in (out / "train").iterdir())
    assert train_files == sorted(f"{row[0]}_{c}.png" for row in train[1:] for c in CHANNELS)
    test_files = sorted(p.name for p in (out / "test").iterdir())
    assert test_files == sorted(f"{row[0]}_{c}.png" for row in truth[1:] for c in CHANNELS)
    assert (summary.n_train, summary.n_test, summary.size, summary.seed, summary.files) == (30, 8, 64, 11, 152)
    counts = np.stack([parse_labels(r[1], scheme=HPA2018) for r in train[1:]]).sum(axis=0)
    assert summary.class_counts == [int(c) for c in counts]
    assert not list(out.parent.glob(".data.*")), "staging folder left behind"


def test_ids_are_unique_uuid1_strings(small_dataset: tuple[Path, SynthSummary]) -> None:
    out, _ = small_dataset
    ids = [row[0] for row in read_rows(out / "train.csv")[1:] + read_rows(out / "test_truth.csv")[1:]]
    assert len(set(ids)) == len(ids) == 38
    for sample_id in ids:
        assert UUID1.match(sample_id), sample_id
        assert uuid.UUID(sample_id).version == 1
    assert ids[:30] == sorted(ids[:30]), "train.csv is sorted by Id, as Kaggle's"


def test_synth_id_is_reproducible() -> None:
    a = synth_id(np.random.default_rng(5))
    assert a == synth_id(np.random.default_rng(5))
    assert a != synth_id(np.random.default_rng(6))
    assert UUID1.match(a)


def test_opens_through_the_catalog(small_dataset: tuple[Path, SynthSummary]) -> None:
    out, _ = small_dataset
    train = open_dataset(out)
    assert len(train) == 30 and train.labels is not None
    truth_rows = read_rows(out / "test_truth.csv")[1:]
    test = open_dataset(out, split="test")
    assert test.ids == [row[0] for row in truth_rows] and test.labels is None
    scored = open_dataset(out, split="test", labels=out / "test_truth.csv")
    assert scored.labels is not None
    np.testing.assert_array_equal(scored.labels, np.stack([parse_labels(r[1], scheme=HPA2018) for r in truth_rows]))
    image = read_sample(train.paths(0), sample_id=train.ids[0])
    assert image.shape == (4, 64, 64) and image.dtype == np.uint8


# ------------------------------------------------------------------------------------------------ reproducibility


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", n_train=10, n_test=4, size=64, seed=3, workers=1)
    b = make_dataset(tmp_path / "b", n_train=10, n_test=4, size=64, seed=3, workers=2)
    assert b.workers == 2
    digest_a, digest_b = tree_digest(a.out), tree_digest(b.out)
    assert len(digest_a) == 3 + 4 * 14
    assert digest_a == digest_b


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", n_train=6, size=64, seed=1, workers=1)
    b = make_dataset(tmp_path / "b", n_train=6, size=64, seed=2, workers=1)
    ids_a = {row[0] for row in read_rows(a.out / "train.csv")[1:]}
    ids_b = {row[0] for row in read_rows(b.out / "train.csv")[1:]}
    assert not ids_a & ids_b
    blue_a = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (a.out / "train").glob("*_blue.png"))
    blue_b = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (b.out / "train").glob("*_blue.png"))
    assert not set(blue_a) & set(blue_b)


def test_generate_sample_is_a_pure_function_of_the_rng_state() -> None:
    labels = one_hot(0, 25)
    a = generate_sample(labels, 96, np.random.default_rng(4))
    b = generate_sample(labels, 96, np.random.default_rng(4))
    c = generate_sample(labels, 96, np.random.default_rng(5))
    assert list(a) == list(CHANNELS)
    for channel in CHANNELS:
        assert a[channel].shape == (96, 96) and a[channel].dtype == np.uint8
        np.testing.assert_array_equal(a[channel], b[channel])
        assert not np.array_equal(a[channel], c[channel])


def test_landmark_channels_do_not_depend_on_the_labels() -> None:
    base = generate_sample(one_hot(0), 96, np.random.default_rng(8))
    for other in (one_hot(25), one_hot(6, 14, 21), one_hot(27)):
        planes = generate_sample(other, 96, np.random.default_rng(8))
        for channel in ("red", "blue", "yellow"):
            np.testing.assert_array_equal(planes[channel], base[channel])
        assert not np.array_equal(planes["green"], base["green"])


def test_a_small_image_looks_like_a_downscaled_large_one() -> None:
    labels = one_hot(0)
    large = generate_sample(labels, 512, np.random.default_rng(12))
    small = generate_sample(labels, 128, np.random.default_rng(12))
    for channel in CHANNELS:
        down = cv2.resize(large[channel], (128, 128), interpolation=cv2.INTER_AREA).astype(float)
        # compare the images, not their pixel noise
        a, b = cv2.GaussianBlur(down, (0, 0), 1.0), cv2.GaussianBlur(small[channel].astype(float), (0, 0), 1.0)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.85, channel
        assert 0.7 < (b.mean() + 1) / (a.mean() + 1) < 1.4, channel


# ------------------------------------------------------------------------------------------------ labels


def _real_sets() -> set[tuple[int, ...]]:
    hot, _, _ = synth_labels._label_table()
    return {tuple(np.flatnonzero(row)) for row in hot}


def test_label_sets_are_real_sets_with_real_frequencies() -> None:
    labels = sample_label_sets(4000, np.random.default_rng(0))
    assert labels.shape == (4000, HPA2018.num_classes) and labels.dtype == np.uint8
    real = _real_sets()
    assert all(tuple(np.flatnonzero(row)) in real for row in labels)
    _, _, class_counts = synth_labels._label_table()
    frequency = class_counts / 31072
    np.testing.assert_allclose(labels.mean(axis=0), frequency, atol=0.025)
    assert labels[:, 0].mean() > 0.35 and labels[:, 27].sum() <= 8  # nucleoplasm common, rods & rings rare


def test_min_per_class_is_honoured_with_real_sets() -> None:
    for n, minimum in ((28, 1), (100, 3), (300, 10)):
        labels = sample_label_sets(n, np.random.default_rng(n), min_per_class=minimum)
        assert labels.shape == (n, HPA2018.num_classes)
        assert labels.sum(axis=0).min() >= minimum, (n, minimum)
        assert all(tuple(np.flatnonzero(row)) in _real_sets() for row in labels)
    a = sample_label_sets(100, np.random.default_rng(1), min_per_class=3)
    np.testing.assert_array_equal(a, sample_label_sets(100, np.random.default_rng(1), min_per_class=3))


def test_make_dataset_min_per_class_covers_train_and_test(tmp_path: Path) -> None:
    summary = make_dataset(tmp_path / "d", n_train=56, n_test=28, size=32, seed=0, min_per_class=2, workers=1)
    assert min(summary.class_counts) >= 2
    truth = np.stack([parse_labels(r[1], scheme=HPA2018) for r in read_rows(summary.out / "test_truth.csv")[1:]])
    assert truth.sum(axis=0).min() >= 1  # ceil(2 * 28 / 56) = 1 of every class in the test truth
    assert summary.test_class_counts == [int(c) for c in truth.sum(axis=0)]


def test_impossible_min_per_class_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_per_class"):
        sample_label_sets(27, np.random.default_rng(0), min_per_class=1)


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(("image_format", "bit_depth"), [("png", 16), ("tif", 8), ("tif", 16), ("jpg", 8)])
def test_every_format_reads_back(tmp_path: Path, image_format: str, bit_depth: int) -> None:
    reference = make_dataset(tmp_path / "png8", n_train=3, size=48, seed=5, workers=1)
    other = make_dataset(
        tmp_path / "other", n_train=3, size=48, seed=5, image_format=image_format, bit_depth=bit_depth, workers=1
    )
    ref_catalog, catalog = open_dataset(reference.out), open_dataset(other.out)
    assert catalog.ids == ref_catalog.ids
    for index, sample_id in enumerate(catalog.ids):
        paths = catalog.paths(index)
        assert all(p.suffix == f".{image_format}" for p in paths.values())
        got = read_sample(paths)
        want = read_sample(ref_catalog.paths(index))
        assert got.shape == (4, 48, 48) and got.dtype == np.uint8
        if image_format == "jpg":
            assert np.abs(got.astype(int) - want.astype(int)).mean() < 3.0, sample_id
        else:
            np.testing.assert_array_equal(got, want)
        if bit_depth == 16:
            raw = read_channel_raw(paths["green"])
            assert raw.dtype == np.uint16
            np.testing.assert_array_equal(raw, want[1].astype(np.uint16) * 257)


# ------------------------------------------------------------------------------------------------ safety


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = make_dataset(out, n_train=2, size=32, seed=0, workers=1)
    before = tree_digest(out)
    with pytest.raises(ConfigError, match="not empty"):
        make_dataset(out, n_train=2, size=32, seed=1, workers=1)
    assert tree_digest(out) == before
    make_dataset(out, n_train=3, size=32, seed=1, workers=1, overwrite=True)
    assert len(read_rows(out / "train.csv")) == 4 and tree_digest(out) != before
    assert first.out == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "staging or old folder left behind"


def test_overwrite_never_deletes_a_folder_that_is_not_a_data_set(tmp_path: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="thesis.tex"):
        make_dataset(out, n_train=2, size=32, workers=1, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_writes_into_an_existing_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    make_dataset(out, n_train=2, size=32, workers=1)
    assert (out / "train.csv").is_file()


def test_a_failed_run_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write = synth_writer._write_task
    written: list[object] = []

    def fail_on_the_third(task: synth_writer._Task) -> int:
        if len(written) == 2:
            raise RuntimeError("killed")
        written.append(task)
        return write(task)

    monkeypatch.setattr(synth_writer, "_write_task", fail_on_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        make_dataset(tmp_path / "d", n_train=5, size=32, workers=1)
    assert len(written) == 2, "two samples were written before the failure"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": -1}, "n_test"),
        ({"size": 8}, "size"),
        ({"size": 100_000}, "size"),
        ({"seed": -1}, "seed"),
        ({"min_per_class": 1}, "min_per_class"),
        ({"image_format": "bmp"}, "format"),
        ({"bit_depth": 12}, "bit depth"),
        ({"image_format": "jpg", "bit_depth": 16}, "jpg"),
        ({"workers": 0}, "workers"),
        ({"n_train": 2.5}, "n_train"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"n_train": 4, "size": 32, "workers": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_dataset(tmp_path / "d", **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make_dataset(tmp_path / "f", n_train=1, size=32, workers=1)


def test_an_unguarded_script_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    # Worker processes re-import the calling script; without a __main__ guard they cannot start. That must end
    # in one clear error, not an endless respawn of dying workers.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from protloc.synth import make_dataset\n"
        f"make_dataset({str(tmp_path / 'd')!r}, n_train=8, size=32, workers=2)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "__main__" in result.stderr and "workers=1" in result.stderr
    assert not (tmp_path / "d").exists()
    assert not list(tmp_path.glob(".d.partial-*"))


def test_progress_reporting(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    make_dataset(tmp_path / "d", n_train=3, n_test=1, size=32, workers=1, on_progress=lambda *a: seen.append(a))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(TypeError):  # library functions never draw; the CLI does, from on_progress
        make_dataset(tmp_path / "e", n_train=1, size=32, workers=1, progress=True)  # type: ignore[call-arg]


# ------------------------------------------------------------------------------------------------ realism


def test_channel_statistics_are_near_the_real_ones() -> None:
    # 48 fields of 256 px; the bands allow for the sampling spread of so few images (the green channel's
    # brightness has the heaviest tail). benchmarks/bench_synth.py compares 200 fields of 512 px.
    n = 48
    labels = sample_label_sets(n, np.random.default_rng(1))
    planes = [generate_sample(labels[i], 256, np.random.default_rng([2, i])) for i in range(n)]
    for channel in CHANNELS:
        stack = np.stack([p[channel] for p in planes])
        real = REAL_CHANNEL_STATS[channel]
        zero = float((stack == 0).mean())
        assert abs(zero - real["fraction_zero"]) < 0.1, (channel, zero)
        assert 0.6 < float(stack.mean()) / real["mean"] < 1.7, (channel, float(stack.mean()))
        p99 = float(np.percentile(stack, 99))
        assert 0.6 < p99 / real["p99"] < 2.0, (channel, p99)
        image_means = stack.reshape(n, -1).mean(axis=1)
        assert np.percentile(image_means, 90) > 4 * np.percentile(image_means, 10), "brightness varies by image"


def _nuclear_fraction(planes: dict[str, np.ndarray]) -> float:
    green = planes["green"].astype(float)
    return float(green[planes["blue"] > 30].sum() / (green.sum() + 1e-9))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


def _fine_corr(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """Correlation of the fine structure (minus a local mean), which cell-to-cell brightness does not drive."""
    fine_a = a.astype(float) - cv2.GaussianBlur(a.astype(float), (0, 0), sigma)
    fine_b = b.astype(float) - cv2.GaussianBlur(b.astype(float), (0, 0), sigma)
    return _corr(fine_a, fine_b)


def test_green_signatures_sit_where_their_class_lives() -> None:
    # The same rng state gives the same field of cells whatever the labels, so classes compare pairwise.
    def field(c: int, i: int) -> dict[str, np.ndarray]:
        return generate_sample(one_hot(c), 128, np.random.default_rng([3, i]))

    def bright_area(p: dict[str, np.ndarray]) -> float:
        green = p["green"].astype(float)
        return float((green > 0.5 * np.percentile(green, 99.9)).mean())

    for i in range(5):
        nucleoplasm, cytosol, er, microtubules, bodies = (field(c, i) for c in (0, 25, 6, 14, 5))
        # nucleoplasm lies inside the nuclei, cytosol outside
        assert _nuclear_fraction(nucleoplasm) > 0.4 > 0.2 > _nuclear_fraction(cytosol), i
        # ER follows the yellow channel's network, microtubules the red one's filaments
        assert (
            _fine_corr(er["green"], er["yellow"], 2)
            > _fine_corr(microtubules["green"], microtubules["yellow"], 2) + 0.2
        )
        assert _fine_corr(microtubules["green"], microtubules["red"], 2) > _fine_corr(er["green"], er["red"], 2) + 0.1
        # nuclear bodies are a few bright dots: their bright area is tiny, unlike the cytosol's
        assert 5 * bright_area(bodies) < bright_area(cytosol), i


def _features(planes: dict[str, np.ndarray]) -> np.ndarray:
    green = planes["green"].astype(float)
    total = green.sum() + 1e-9
    return np.array(
        [
            _nuclear_fraction(planes),
            _corr(green, planes["red"]) if green.std() > 0 else 0.0,
            _corr(green, planes["yellow"]) if green.std() > 0 else 0.0,
            float((green > 0).mean()),
            float(green[green >= np.percentile(green, 99)].sum() / total),
            float(np.log1p(green.std()) - np.log1p(green.mean())),
        ]
    )


def _nearest_centroid_accuracy(x: np.ndarray, fit: int) -> float:
    """x: (classes, samples, features); fit centroids on the first ``fit`` samples, test on the rest."""
    scale = x[:, :fit].reshape(-1, x.shape[-1]).std(axis=0) + 1e-9
    centroids = x[:, :fit].mean(axis=1) / scale
    held = x[:, fit:] / scale
    distance = ((held[:, :, None, :] - centroids[None, None, :, :]) ** 2).sum(-1)
    return float((distance.argmin(-1) == np.arange(x.shape[0])[:, None]).mean())


def test_classes_are_told_apart_by_pattern_not_by_brightness() -> None:
    per_class = 8
    features = np.zeros((HPA2018.num_classes, per_class, 6))
    brightness = np.zeros((HPA2018.num_classes, per_class, 1))
    for c in range(HPA2018.num_classes):
        for i in range(per_class):
            planes = generate_sample(one_hot(c), 96, np.random.default_rng([4, c, i]))
            features[c, i] = _features(planes)
            brightness[c, i, 0] = np.log(planes["green"].mean() + 0.1)
    chance = 1 / HPA2018.num_classes
    assert _nearest_centroid_accuracy(features, per_class // 2) > 3 * chance
    assert _nearest_centroid_accuracy(brightness, per_class // 2) < 2.5 * chance


def test_the_pattern_table_draws_class_i_in_row_i() -> None:
    from protloc.classes import HPA2018
    from protloc.synth.patterns import PATTERNS

    assert [row.name for row in PATTERNS] == list(HPA2018.names)
    assert all(row.scale > 0 and callable(row.draw) for row in PATTERNS)
