from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protloc.cli import main
from protloc.data.check import check_dataset
from protloc.data.io import write_channel
from tests.helpers import write_csv, write_sample

TRAIN = {f"id-{i}": str(i % 28) for i in range(6)}


def kinds(report) -> dict[str, list[str | None]]:  # type: ignore[no-untyped-def]
    found: dict[str, list[str | None]] = {}
    for problem in report.problems:
        found.setdefault(problem.kind, []).append(problem.sample_id)
    return found


def test_clean_dataset_passes(kaggle_dir: Callable[..., Path]) -> None:
    report = check_dataset(kaggle_dir(TRAIN, test=["t1", "t2"]), workers=1)
    assert report.ok, report.problems
    assert report.samples == {"train": 6, "test": 2}


def test_every_problem_is_found_in_one_pass(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN, test=["t1"])
    train = root / "train"
    (train / "id-0_green.png").unlink()  # missing channel
    (train / "id-1_red.png").write_bytes(b"\x89PNG garbage")  # corrupt
    write_channel(train / "id-2_blue.png", np.zeros((20, 32), np.uint8))  # size mismatch
    for path in train.glob("id-3_*"):  # CSV id without files
        path.unlink()
    write_sample(train, "orphan", size=32)  # files without a CSV row
    (train / "id-4_yellow.png").write_bytes(b"")  # empty file
    rows = [*TRAIN.items(), ("id-5", "3"), ("id-6", "29"), ("id-7", "1 1"), ("id-8", "a")]
    write_csv(root / "train.csv", ["Id", "Target"], rows)  # duplicate id + bad labels
    for sample_id in ("id-6", "id-7", "id-8"):
        write_sample(train, sample_id, size=32)

    report = check_dataset(root, workers=1)
    found = kinds(report)
    assert not report.ok
    assert found["missing-channel"] == ["id-0"]
    assert sorted(found["unreadable"]) == ["id-1", "id-4"]
    assert found["size-mismatch"] == ["id-2"]
    assert found["no-files"] == ["id-3"]
    assert found["no-csv-row"] == ["orphan"]
    assert found["duplicate-id"] == ["id-5"]
    assert sorted(found["bad-label"]) == ["id-6", "id-7", "id-8"]
    messages = " | ".join(p.message for p in report.problems)
    assert "line 8" in messages and "'29'" in messages and "appears twice" in messages


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        ("", "csv-empty"),
        ("Id,Target\n", "csv-empty"),
        ("Name,Labels\na,1\n", "csv-header"),
        (b"\xff\xfe\x00bad", "csv-unreadable"),
    ],
)
def test_csv_level_problems(kaggle_dir: Callable[..., Path], content: str | bytes, kind: str) -> None:
    root = kaggle_dir(TRAIN)
    if isinstance(content, bytes):
        (root / "train.csv").write_bytes(content)
    else:
        (root / "train.csv").write_text(content)
    report = check_dataset(root, workers=1)
    assert kind in kinds(report)
    assert not report.ok


def test_missing_csv_and_missing_folder(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    write_sample(root / "train", "a", size=8)
    assert "csv-missing" in kinds(check_dataset(root, workers=1))
    (root / "train.csv").write_text("Id,Target\na,0\n")
    for path in (root / "train").iterdir():
        path.unlink()
    (root / "train").rmdir()
    assert "folder-missing" in kinds(check_dataset(root, workers=1))


def test_plain_folder_checks_channels_and_decoding(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", size=16)
    write_sample(tmp_path, "b", size=16, channels=["red", "green", "blue"])
    (tmp_path / "stray.png").write_bytes(b"x")
    report = check_dataset(tmp_path, workers=1)
    assert kinds(report)["missing-channel"] == ["b"]
    assert "stray-file" in kinds(report)
    assert check_dataset(tmp_path, channels=["green"], workers=1).ok  # only green needed


def test_quick_mode_reads_headers(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir(TRAIN)
    (root / "train" / "id-1_red.png").write_bytes(b"not an image at all")
    report = check_dataset(root, decode=False, workers=1)
    assert kinds(report)["unreadable"] == ["id-1"]


def test_parallel_check_finds_the_same(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir({f"p{i}": "0" for i in range(70)})
    (root / "train" / "p33_green.png").write_bytes(b"junk")
    serial = check_dataset(root, workers=1)
    parallel = check_dataset(root, workers=2)
    assert [p.message for p in serial.problems] == [p.message for p in parallel.problems]
    assert kinds(parallel)["unreadable"] == ["p33"]


def test_cli_exit_codes_and_one_line_errors(
    kaggle_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = kaggle_dir(TRAIN)
    assert main(["check", str(root)]) == 0
    assert "OK" in capsys.readouterr().out
    (root / "train" / "id-2_green.png").unlink()
    out_csv = tmp_path / "problems.csv"
    assert main(["check", str(root), "--out", str(out_csv)]) == 1
    captured = capsys.readouterr()
    assert "missing-channel" in captured.out and "id-2" in captured.out
    assert "Traceback" not in captured.err
    assert "id-2" in out_csv.read_text()
    assert main(["check", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such file" in err
