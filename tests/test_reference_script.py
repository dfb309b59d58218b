"""benchmarks/reference_train.py, the plain baseline, runs end to end on a tiny data set and writes what it says."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from protloc import metrics

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_train.py"
CHANNELS = ("red", "green", "blue", "yellow")


def _write_split(root: Path, folder: str, table: str, n: int, rng: np.random.Generator, size: int) -> list[str]:
    (root / folder).mkdir(parents=True)
    ids = [f"{folder}{i:03d}" for i in range(n)]
    rows = []
    for sample_id in ids:
        for channel in CHANNELS:
            cv2.imwrite(str(root / folder / f"{sample_id}_{channel}.png"), rng.integers(0, 256, (size, size), np.uint8))
        classes = sorted(set(rng.integers(0, 4, int(rng.integers(1, 3))).tolist()))
        rows.append((sample_id, " ".join(map(str, classes))))
    with open(root / table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Target"])
        writer.writerows(rows)
    return ids


def test_reference_script_trains_and_writes_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data, out = tmp_path / "data", tmp_path / "out"
    _write_split(data, "train", "train.csv", 40, rng, 32)
    # test images at 48 px: the script resizes them to --size
    test_ids = _write_split(data, "test", "test_truth.csv", 12, rng, 48)
    command = [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out), "--minutes", "0.02"]
    command += ["--size", "32", "--num-classes", "4", "--seed", "1"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("reference:") and "test macro F1" in completed.stdout

    probabilities = np.load(out / "test_probabilities.npy")
    assert probabilities.shape == (12, 4) and probabilities.dtype == np.float32
    assert np.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all()
    assert (out / "test_ids.txt").read_text().split() == test_ids
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert len(thresholds) == 4 and all(0.05 <= t <= 0.95 for t in thresholds)

    result = json.loads((out / "result.json").read_text())
    assert not (out / "result.json.tmp").exists()
    assert result["steps"] >= 1 and result["images_seen"] == 32 * result["steps"]
    assert result["n_fit"] + result["n_val"] == 40 and result["n_test"] == 12
    assert result["epochs"] == result["images_seen"] / result["n_fit"]
    # the budget is 1.2 s; training stops at the first step that starts past it
    assert 1.2 <= result["train_seconds"] < 30 and result["load_seconds"] >= 0
    assert result["images_per_second"] > 0 and np.isfinite(result["final_loss"])
    for key in ("val", "test", "test_at_0_5"):
        for name in ("macro_f1", "micro_f1", "exact_match"):
            assert 0.0 <= result[key][name] <= 1.0
        assert 1 <= result[key]["classes_scored"] <= 4
    # the test scores are those of the saved probabilities at the saved thresholds
    truth = np.zeros((12, 4), bool)
    with open(data / "test_truth.csv", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            truth[i, [int(t) for t in row["Target"].split()]] = True
    predicted = probabilities >= np.asarray(thresholds)
    assert result["test"]["exact_match"] == float((predicted == truth).all(axis=1).mean())
    # ... with protloc's conventions (the script copies them rather than importing protloc)
    assert result["test"]["macro_f1"] == pytest.approx(metrics.macro_f1(truth, predicted), abs=1e-12)
    assert result["test"]["micro_f1"] == pytest.approx(metrics.micro_f1(truth, predicted), abs=1e-12)
    at_half = probabilities >= 0.5
    assert result["test_at_0_5"]["macro_f1"] == pytest.approx(metrics.macro_f1(truth, at_half), abs=1e-12)


def test_reference_script_rejects_a_class_out_of_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    _write_split(data, "train", "train.csv", 4, rng, 16)
    _write_split(data, "test", "test_truth.csv", 2, rng, 16)
    (data / "train.csv").write_text("Id,Target\ntrain000,0 3\ntrain001,1\ntrain002,2\ntrain003,0\n")
    command = [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(tmp_path / "out"), "--minutes", "0.01"]
    completed = subprocess.run([*command, "--num-classes", "3"], capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0 and "outside 0-2" in completed.stderr
