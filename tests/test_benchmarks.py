"""The benchmark scripts must keep working: each runs here in its smallest form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import needs_realdata

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str, results: Path) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script>`` from this checkout with its results written under ``results``."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PROTLOC_BENCH_RESULTS": str(results), "PYTHONPATH": str(ROOT / "src")},
    )


@pytest.mark.slow
def test_gpu_benchmark_code_path_runs_on_cpu(tmp_path: Path) -> None:
    result = run_benchmark("bench_gpu.py", "--smoke", results=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert payload["loader"] and payload["model"]
    (run,) = payload["e2e"]  # protloc train itself, with the gpu recipe's settings
    assert run["epochs"] == 2 and run["n_train"] + run["n_val"] == 40
    assert run["train_images_per_second"] > 0 and run["kaggle_epoch_seconds"] > 31_000 * 0.8 / 1e4
    assert "| loader, 0 workers, batch 4 |" in result.stdout
    assert "| end to end: protloc train --recipe gpu" in result.stdout


@pytest.mark.slow
def test_watch_benchmark_keeps_up_with_a_streaming_writer(tmp_path: Path) -> None:
    """300 fields written while the watcher starts: all classified, none left for the hourly rescan.

    Before the first scan waited for the watcher to listen, fields landing between the two were found only by
    the rescan a minute later (4.5 fields/s here instead of ~90)."""
    result = run_benchmark("bench_watch.py", "--quick", results=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = json.loads((tmp_path / "watch_quick.json").read_text())["results"]
    assert run["fields"] == 300
    assert run["seconds"] < 40, run  # the minute-long stall of a missed field would exceed this


@pytest.mark.slow
@needs_realdata("hpa2021_trainandgain")  # CI: run, and fail when the folder is missing
def test_segmentation_benchmark_runs_in_its_quick_form(tmp_path: Path) -> None:
    result = run_benchmark("bench_segment.py", "--quick", results=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((tmp_path / "segment_quick.json").read_text())
    for side in ("2048", "3072"):
        assert payload[side]["in_process"]["cells"] > 0
        assert payload[side]["cli"][0]["peak_rss_mb"] > 0


def test_the_foreign_generator_writes_a_data_set_protloc_reads(tmp_path: Path) -> None:
    """benchmarks/hpa_like.py (no code shared with protloc.synth): both families, the Kaggle 2018 layout."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import hpa_like
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from protloc.data.catalog import open_dataset
    from protloc.data.check import check_dataset

    for family in ("sparse", "dense"):
        data = tmp_path / family
        hpa_like.make(data, family, n_train=12, n_test=4, size=64, seed=3, workers=1)
        report = check_dataset(data, workers=1)
        assert report.ok, report.errors[:1]
        catalog = open_dataset(data)
        assert len(catalog) == 12 and catalog.labels is not None and catalog.labels.sum(axis=1).min() >= 1
        test = open_dataset(data, split="test", labels=data / "test_truth.csv")
        assert len(test) == 4
    # the two families differ in what they show: the dense one is dimmer and holds more nuclei
    import cv2

    blue = {
        f: np.mean([cv2.imread(str(p), 0).mean() for p in (tmp_path / f / "train").glob("*_blue.png")])
        for f in ("sparse", "dense")
    }
    assert blue["dense"] < blue["sparse"]
    # the same seed gives the same files
    hpa_like.make(tmp_path / "again", "dense", n_train=12, n_test=4, size=64, seed=3, workers=1)
    first = sorted((tmp_path / "dense" / "train").glob("*.png"))
    assert all(p.read_bytes() == (tmp_path / "again" / "train" / p.name).read_bytes() for p in first)


@pytest.mark.slow
def test_cpu_minute_benchmark_runs_a_pinned_pair_and_scores_every_rule(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = run_benchmark(
        "bench_cpu_minute.py",
        "--work",
        str(work),
        "--families",
        "dense",
        "--variants",
        "reference",
        "default",
        "--n-train",
        "60",
        "--n-test",
        "20",
        "--minutes",
        "0.25",
        "--size",
        "64",
        "--results-name",
        "cpu_minute_smoke",
        results=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    payload = json.loads((tmp_path / "cpu_minute_smoke.json").read_text())
    jobs = payload["jobs"]
    assert set(jobs) == {"dense/reference", "dense/default"}
    assert "its own thresholds" in jobs["dense/reference"]["rules"] and "joint 0.5" in jobs["dense/default"]["rules"]
    for job in jobs.values():
        fit = job["rules"]["fit"]
        scored = [f for f in fit["per_class_f1"] if f is not None]
        assert len(scored) == fit["classes_scored"] and fit["macro_f1"] == pytest.approx(np.mean(scored), abs=1e-4)
    assert "reference + protloc's rule" in payload["bootstrap_vs_reference"]["dense"]


def test_the_cpu_recipe_is_the_measured_configuration_without_the_weight_average() -> None:
    """BENCHMARKS.md quotes the ``levers-no-ema`` runs as the shipped recipe: a change to either must show."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_cpu_minute import VARIANTS
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from protloc.training.config import resolve_config

    base = {"data": "d", "out": "o"}
    assert resolve_config("cpu", overrides=base) == resolve_config(
        "cpu", overrides={**base, **VARIANTS["levers-no-ema"]}
    )
    assert resolve_config("cpu", overrides=base) != resolve_config("cpu", overrides={**base, **VARIANTS["levers"]})


def test_the_foreign_generator_draws_2021_fields_with_per_cell_truth(tmp_path: Path) -> None:
    """hpa_like_cells: the Kaggle 2021 layout protloc reads, per-cell truth that agrees with the pixels,
    field labels that are the union of the cells', silent cells, neighbours that differ, dividing cells."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import hpa_like
        import hpa_like_cells
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from protloc.cells.metrics import segmentation_scores
    from protloc.cells.segment import ClassicalSegmenter
    from protloc.cells.truth import read_cell_truth
    from protloc.data.catalog import open_dataset
    from protloc.data.check import check_dataset
    from protloc.data.io import read_sample

    data = tmp_path / "dense21"
    hpa_like_cells.make(data, "dense", n_train=16, n_test=6, size=192, seed=3, workers=1)
    assert (data / "train.csv").read_text().splitlines()[0] == "ID,Label"
    assert (data / "sample_submission.csv").read_text().startswith("ID,ImageWidth,ImageHeight,PredictionString")
    report = check_dataset(data, workers=1)
    assert report.ok, report.errors[:1]
    catalog = open_dataset(data, channels=None)
    scheme = catalog.scheme
    assert scheme.name == "hpa2021" and catalog.labels is not None
    assert open_dataset(data, split="test", channels=None).scheme.name == "hpa2021"
    negative = scheme.exclusive[0]
    truths = read_cell_truth(data / "train_cells_truth", len(scheme), catalog.ids)
    silent_in_positive = differing_neighbours = 0
    for truth, field in zip(truths, catalog.labels, strict=True):
        assert len(truth.cells) >= 5
        assert np.array_equal(hpa_like_cells.field_labels(truth.values), field)  # union of the cells' classes
        assert (truth.values.sum(axis=1) >= 1).all()  # every cell has a class, Negative where it shows nothing
        assert not (truth.values[:, negative].astype(bool) & (truth.values.sum(axis=1) > 1)).any()
        if not field[negative]:
            silent_in_positive += int(truth.values[:, negative].sum())
            expressing = {tuple(row) for row in truth.values if not row[negative]}
            differing_neighbours += len(expressing) > 1
    assert silent_in_positive > 0 and differing_neighbours > 0
    # the truth lies where the pixels are: protloc's default segmentation finds most true cells
    images = [read_sample(catalog.files[i], ("blue", "red", "yellow")) for i in catalog.ids[:6]]
    found = [ClassicalSegmenter()(image) for image in images]
    assert segmentation_scores(found, [t.labels for t in truths[:6]], [0.5])[0].f1 > 0.8
    # dividing cells: a spindle field holds mitotic cells that carry it, and other cells that do not
    spindle = scheme.names.index("Mitotic spindle")
    field = np.zeros(len(scheme), np.uint8)
    field[[spindle, scheme.names.index("Cytosol")]] = 1
    drawn = hpa_like_cells.render_cells(field, np.random.default_rng(1), hpa_like.FAMILIES["dense"], 192)
    carriers = drawn.classes[:, spindle].astype(bool)
    assert 1 <= carriers.sum() <= 2 < len(carriers)
    # the same seed gives the same files
    hpa_like_cells.make(tmp_path / "again", "dense", n_train=16, n_test=6, size=192, seed=3, workers=1)
    first = sorted((data / "test").glob("*.png")) + sorted((data / "test_cells_truth").glob("*.png"))
    assert all(p.read_bytes() == (tmp_path / "again" / p.parent.name / p.name).read_bytes() for p in first)


@pytest.mark.slow
def test_the_single_cell_benchmark_scores_every_method_on_the_same_cells(tmp_path: Path) -> None:
    """bench_cells --quick: foreign 2021 fields, field labels only, every method side by side with intervals."""
    result = run_benchmark("bench_cells.py", "--quick", "--work", str(tmp_path / "work"), results=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    payload = json.loads((tmp_path / "cells_quick.json").read_text())
    methods = payload["methods"]
    assert {
        "field model copied to every cell",
        "true field labels copied onto protloc's masks",
        "default pipeline: protloc train --cells (plain cell model^0.25 x cell maximum^0.75), its package as it is",
        "default's cell model alone (the former default rule)",
        "image-head cell model alone",
        "image-head model + one out-of-fold pseudo-label round",
        "image-head cell model started from the field model",
        "true per-cell labels on protloc's masks (ceiling)",
    } <= set(methods)
    for name, method in methods.items():
        assert 0.0 <= method["map"] <= 1.0, name
        low, high = method["interval_5_95"]
        assert 0.0 <= low <= high <= 1.0, name
        assert len(method["per_class"]) == 19  # the 2021 scheme, Negative included
    ceiling = methods["true per-cell labels on protloc's masks (ceiling)"]["map"]
    assert ceiling > methods["true field labels copied onto protloc's masks"]["map"]
    assert ceiling >= max(m["map"] for m in methods.values())
    assert [s["iou"] for s in payload["segmentation"]] == [0.5, 0.6, 0.75]
    assert payload["segmentation"][0]["f1"] > 0.8  # the defaults, scaled once
    assert "| true per-cell labels on protloc's masks (ceiling) |" in (tmp_path / "cells_quick.md").read_text()
    # its default package adapted to shifted copies of the test fields, scored before and after
    result = run_benchmark("bench_adapt_cells.py", "--quick", "--work", str(tmp_path / "work"), results=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    shifts = json.loads((tmp_path / "adapt_cells_quick.json").read_text())["results"]
    assert list(shifts) == ["as they are", "gain 0.35", "half magnification"]
    assert set(shifts["half magnification"]["rows"]) == {
        "as trained",
        "adapted (norm)",
        "as trained, match_nuclei",
        "adapted (norm) with match_nuclei",
    }
    for shift in shifts.values():
        assert shift["rows"]["as trained"]["minus_as_trained"] == 0.0
        assert all(0.0 <= row["map"] <= 1.0 for row in shift["rows"].values())
