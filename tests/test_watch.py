"""protloc watch: fields taken only when complete and settled, exactly once across restarts, corrupt ones set
aside, Ctrl-C finishing cleanly, one watcher per folder."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from protloc.errors import ConfigError
from protloc.inference.predict import predict_folder
from protloc.watch import WatchEvent, watch_folder
from protloc.watch.fields import FieldTracker
from protloc.watch.state import Journal
from tests.helpers import write_sample

REPO = Path(__file__).resolve().parents[1]
WRITER = REPO / "tests" / "watch_writer.py"


@pytest.fixture(scope="module")
def onnx_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protloc.deployment.onnx import export_onnx

    package = tmp_path_factory.mktemp("watch-model") / "model"
    shutil.copytree(trained_run / "model", package)
    export_onnx(package)
    return package


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def journal_lines(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


def run_in_thread(**kwargs: object) -> tuple[threading.Thread, threading.Event, dict[str, object]]:
    stop = threading.Event()
    box: dict[str, object] = {"events": []}

    def target() -> None:
        try:
            box["summary"] = watch_folder(stop=stop, on_event=box["events"].append, **kwargs)  # type: ignore[arg-type,attr-defined]
        except Exception as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, box


def test_tracker_waits_until_a_growing_file_settles(tmp_path: Path) -> None:
    now = [100.0]
    tracker = FieldTracker(tmp_path, ("red", "green"), settle=2.0, incomplete_after=30.0, clock=lambda: now[0])
    red, green = tmp_path / "a_red.png", tmp_path / "a_green.png"
    red.write_bytes(b"x" * 10)
    green.write_bytes(b"x" * 10)
    for path in (red, green):
        assert tracker.seen(path, skip=lambda key: False)
    assert tracker.due() == ([], [])  # just seen: not quiet yet
    now[0] += 1.5
    with green.open("ab") as handle:  # still being written
        handle.write(b"more")
    assert tracker.due() == ([], [])
    now[0] += 1.9
    assert tracker.due() == ([], [])  # quiet for 1.9 s since the last change: not enough
    now[0] += 0.2
    ready, incomplete = tracker.due()
    assert [p.key for p in ready] == ["a"] and not incomplete
    # temporary names, hidden files and other extensions are never fields
    for name in (".b_red.png", "b_red.png.part", "~b_red.png", "b_red.txt", "notes.csv"):
        assert tracker.field_of(tmp_path / name) is None


def test_tracker_gives_up_on_a_field_missing_a_channel(tmp_path: Path) -> None:
    now = [0.0]
    tracker = FieldTracker(tmp_path, ("red", "green"), settle=1.0, incomplete_after=10.0, clock=lambda: now[0])
    (tmp_path / "a_red.png").write_bytes(b"x")
    tracker.seen(tmp_path / "a_red.png", skip=lambda key: False)
    now[0] = 9.0
    assert tracker.due() == ([], [])
    now[0] = 10.5
    ready, incomplete = tracker.due()
    assert not ready and [p.key for p in incomplete] == ["a"]
    assert tracker.missing(incomplete[0]) == "no green channel file after 10 s"


def test_writer_process_slow_partial_corrupt_and_burst(onnx_model: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scope", tmp_path / "out"
    folder.mkdir()
    thread, stop, box = run_in_thread(
        folder=folder, model=onnx_model, out=out, backend="onnx", settle=0.6, incomplete_after=4.0, max_fields=19
    )
    writer = subprocess.run([sys.executable, str(WRITER), str(folder)], capture_output=True, text=True, timeout=60)
    assert writer.returncode == 0, writer.stderr
    thread.join(timeout=60)
    stop.set()
    assert not thread.is_alive() and "error" not in box, box.get("error")
    good = {f"burst_{n:02d}" for n in range(12)} | {"slow_0", "slow_1", "renamed", "late"}
    table = rows(out / "results.csv")
    assert sorted(r["field"] for r in table) == sorted(good)  # each good field once, nothing read half-way
    rejected = {r["field"]: r["reason"] for r in rows(out / "rejected.csv")}
    assert set(rejected) == {"corrupt", "truncated", "never"}
    assert "truncated_blue.png" in rejected["truncated"]
    assert "no blue, yellow channel file" in rejected["never"]
    # every file is still there: nothing the microscope wrote is moved or deleted
    assert len(list(folder.glob("*.png"))) == 4 * len(good) + 4 + 4 + 2
    # the watcher's numbers are protloc predict's numbers (one prediction core)
    batch = predict_folder(onnx_model, folder, tmp_path / "pred", ids=sorted(good), backend="onnx", workers=1)
    assert batch is not None
    watched = {r["field"]: [float(r[name]) for name in batch_classes(onnx_model)] for r in table}
    expected = np.array([watched[i] for i in batch.ids])
    np.testing.assert_allclose(expected, batch.probabilities, atol=1e-4)


def batch_classes(model: Path) -> list[str]:
    from protloc.model.card import read_card

    return list(read_card(model).classes)


def test_restart_never_twice_never_skipped(onnx_model: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scope", tmp_path / "out"
    for i in range(4):
        write_sample(folder, f"a{i}", size=40, seed=i)
    first = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True, table="jsonl")
    assert first.classified == 4
    for i in range(3):  # arrive while no watcher runs
        write_sample(folder, f"b{i}", size=40, seed=10 + i)
    second = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True, table="jsonl")
    assert (second.classified, second.already_done) == (3, 4)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["field"] for line in lines) == [*(f"a{i}" for i in range(4)), "b0", "b1", "b2"]
    # killed after a row was written but before its journal line, and in the middle of a journal line
    journal = (out / "journal.jsonl").read_text().splitlines()
    (out / "journal.jsonl").write_text("\n".join(journal[:-1]) + '\n{"field": "b', encoding="utf-8")
    third = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True, table="jsonl")
    assert third.classified == 0 and len((out / "results.jsonl").read_text().splitlines()) == 7
    assert Journal.open(out / "journal.jsonl").done == {json.loads(line)["field"] for line in lines}
    # a torn results row is cut off and its field classified again
    with (out / "results.jsonl").open("a") as handle:
        handle.write('{"field": "c0", "ti')
    write_sample(folder, "c0", size=40, seed=30)
    fourth = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True, table="jsonl")
    assert fourth.classified == 1
    assert [json.loads(line)["field"] for line in (out / "results.jsonl").read_text().splitlines()][-1] == "c0"


def test_a_rejected_field_is_retried_only_when_its_files_change(onnx_model: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scope", tmp_path / "out"
    write_sample(folder, "x", size=40, seed=0)
    (folder / "x_green.png").write_bytes(b"broken")
    run = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True)
    assert (run.classified, run.rejected) == (0, 1)
    again = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True)
    assert (again.classified, again.rejected) == (0, 0)
    write_sample(folder, "x", size=40, seed=0)  # the acquisition program wrote it again, whole this time
    fixed = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True)
    assert (fixed.classified, fixed.rejected) == (1, 0)


def test_subfolders_pictures_and_own_output_ignored(onnx_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scope"
    write_sample(folder / "plate1" / "A1", "f1", size=40, seed=0)
    write_sample(folder, "top", size=40, seed=1)
    events: list[WatchEvent] = []
    run = watch_folder(
        folder, onnx_model, backend="onnx", settle=0.1, once=True, recursive=True, pictures=True, on_event=events.append
    )
    table = rows(run.table)
    assert sorted(r["field"] for r in table) == ["plate1/A1/f1", "top"]
    assert run.table.parent == folder / "protloc-watch"
    for row in table:
        picture = run.out / row["picture"]
        assert picture.is_file() and picture.stat().st_size > 1000
        assert row["labels"] and all(name in batch_classes(onnx_model) for name in row["labels"].split("; "))
    assert events[0].kind == "started" and events[-1].kind == "stopped"


def test_two_watchers_on_one_folder_are_refused(onnx_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scope"
    folder.mkdir()
    thread, stop, box = run_in_thread(folder=folder, model=onnx_model, backend="onnx", settle=0.1)
    deadline = time.monotonic() + 30
    while not box["events"] and time.monotonic() < deadline:  # type: ignore[truthy-function]
        time.sleep(0.05)
    try:
        with pytest.raises(ConfigError, match="already being watched by process"):
            watch_folder(folder, onnx_model, out=tmp_path / "elsewhere", backend="onnx", once=True)
        from protloc.cli import main

        assert main(["watch", str(folder), "--model", str(onnx_model), "--backend", "onnx", "--once"]) == 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in box
    # once the first has stopped, the folder is free again
    assert watch_folder(folder, onnx_model, backend="onnx", settle=0.1, once=True).classified == 0


def test_ctrl_c_finishes_cleanly(onnx_model: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scope", tmp_path / "out"
    for i in range(30):
        write_sample(folder, f"f{i:02d}", size=40, seed=i)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "protloc", "watch", str(folder), "--model", str(onnx_model), "--backend", "onnx"]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--settle", "0.2", "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the first classified field
        assert first.startswith("f"), first + process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "finishing the field in hand" in stderr and "fields classified" in stdout
    table = [r["field"] for r in rows(out / "results.csv")]
    done = [e["field"] for e in journal_lines(out) if e["status"] == "done"]
    assert table == done and len(set(table)) == len(table)  # every row journalled, nothing half-recorded
    assert 1 <= len(table) < 30  # it stopped before the end
    assert (out / "watch.lock").read_text() == ""  # lock released
    rest = watch_folder(folder, onnx_model, out=out, backend="onnx", settle=0.1, once=True)
    assert rest.classified == 30 - len(table)


def test_fields_landing_while_the_watcher_starts_are_not_missed(onnx_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scope"
    folder.mkdir()
    count = 300
    # another process writes without pause while the watcher loads, scans and starts listening
    writer = subprocess.Popen([sys.executable, str(WRITER), str(folder), "--stream", str(count)])
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)  # a missed field would leave the watcher waiting: fail, not hang
    timer.start()
    try:
        # only the first scan and the events can find the fields in time (no rescan for an hour)
        run = watch_folder(
            folder, onnx_model, backend="onnx", settle=0.3, rescan_every=3600, max_fields=count, stop=stop
        )
    finally:
        timer.cancel()
        writer.wait(timeout=60)
    assert run.classified == count, f"missed {sorted({f's{i:04d}' for i in range(count)} - set(rows_of(run)))}"


def rows_of(run: object) -> list[str]:
    return [r["field"] for r in rows(run.table)]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- seams (issue 20)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained package with model.onnx: what the watcher does with its tables does not depend on training."""
    from protloc.deployment.onnx import export_onnx
    from tests.helpers import tiny_package

    package = tiny_package(tmp_path_factory.mktemp("watch-tiny") / "model", size=32)
    export_onnx(package)
    return package


def test_an_append_only_file_removed_is_made_again_and_one_replaced_stops(tmp_path: Path) -> None:
    from protloc.errors import DataError
    from protloc.watch.state import AppendOnlyFile

    notices: list[str] = []
    path = tmp_path / "results.csv"
    table = AppendOnlyFile(path, notices.append)
    table.append("field,p")
    table.append("a,0.5")
    path.unlink()  # someone deletes it while the watcher runs
    table.append("b,0.25")
    assert path.read_text().splitlines() == ["field,p", "a,0.5", "b,0.25"]
    assert notices == [f"{path} was removed while watching; made it again with the 2 lines written so far"]
    assert not list(tmp_path.glob(".*restoring"))
    (tmp_path / "edited.csv").write_text("field,p\na,0.9\n")
    (tmp_path / "edited.csv").replace(path)  # a spreadsheet saves its edit over it
    with pytest.raises(DataError) as caught:
        table.append("c,0.75")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path} was replaced by another file while the watcher ran")
    saved = next(tmp_path.glob("results.watcher-*.csv"))
    assert saved.name in message and saved.read_text().splitlines() == ["field,p", "a,0.5", "b,0.25"]
    assert path.read_text() == "field,p\na,0.9\n"  # the other file is left as it is
    table.close()


def _wait_for(box: dict[str, object], kind: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(e.kind == kind for e in box["events"]) >= count or "error" in box:  # type: ignore[attr-defined]
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} {kind} events in {timeout} s: {box}")


def test_the_results_table_deleted_while_watching_loses_no_row(tiny_onnx: Path, tmp_path: Path) -> None:
    """Rows went to the deleted file, the journal marked them done and a restart did not redo them (issue 20)."""
    folder, out = tmp_path / "scope", tmp_path / "out"
    for i in range(3):
        write_sample(folder, f"a{i}", size=40, seed=i)
    thread, stop, box = run_in_thread(folder=folder, model=tiny_onnx, out=out, backend="onnx", settle=0.1)
    try:
        _wait_for(box, "classified", 3)
        (out / "results.csv").unlink()
        for i in range(2):
            write_sample(folder, f"b{i}", size=40, seed=10 + i)
        _wait_for(box, "classified", 5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert "error" not in box, box.get("error")
    table = [r["field"] for r in rows(out / "results.csv")]
    assert sorted(table) == ["a0", "a1", "a2", "b0", "b1"]
    notices = [e.message for e in box["events"] if e.kind == "notice"]  # type: ignore[attr-defined]
    assert len(notices) == 1 and "results.csv was removed while watching; made it again" in notices[0]
    done = [e["field"] for e in journal_lines(out) if e["status"] == "done"]
    assert sorted(done) == sorted(table)
    again = watch_folder(folder, tiny_onnx, out=out, backend="onnx", settle=0.1, once=True)
    assert (again.classified, again.already_done) == (0, 5)


def test_a_table_replaced_while_watching_stops_the_watcher_with_one_line(tiny_onnx: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scope", tmp_path / "out"
    write_sample(folder, "a0", size=40, seed=0)
    thread, stop, box = run_in_thread(folder=folder, model=tiny_onnx, out=out, backend="onnx", settle=0.1)
    try:
        _wait_for(box, "classified", 1)
        edited = out / "edited.csv"
        shutil.copy(out / "results.csv", edited)
        edited.replace(out / "results.csv")
        write_sample(folder, "a1", size=40, seed=1)
        thread.join(timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    error = box.get("error")
    assert error is not None and "results.csv was replaced by another file" in str(error), box
    assert "a1" not in [e["field"] for e in journal_lines(out)]  # never journalled without its row


def test_fields_journalled_without_a_row_are_classified_again_at_start(tiny_onnx: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scope", tmp_path / "out"
    for i in range(3):
        write_sample(folder, f"a{i}", size=40, seed=i)
    assert watch_folder(folder, tiny_onnx, out=out, backend="onnx", settle=0.1, once=True).classified == 3
    (out / "results.csv").unlink()  # while no watcher runs
    events: list[WatchEvent] = []
    again = watch_folder(folder, tiny_onnx, out=out, backend="onnx", settle=0.1, once=True, on_event=events.append)
    assert again.classified == 3 and sorted(r["field"] for r in rows(out / "results.csv")) == ["a0", "a1", "a2"]
    assert any("3 fields journalled as classified have no row in results.csv" in e.message for e in events)


def test_links_leading_out_of_the_watched_folder_are_refused_unless_followed(tiny_onnx: Path, tmp_path: Path) -> None:
    folder, outside = tmp_path / "scope", tmp_path / "secrets"
    write_sample(outside, "s", size=40, seed=1)
    write_sample(folder, "inside", size=40, seed=2)
    write_sample(folder / "real", "r", size=40, seed=3)
    for channel in ("red", "green", "blue", "yellow"):
        (folder / f"linked_{channel}.png").symlink_to(outside / f"s_{channel}.png")  # leads out
        (folder / f"alias_{channel}.png").symlink_to(folder / f"inside_{channel}.png")  # stays inside
    (folder / "plate").symlink_to(outside, target_is_directory=True)  # a linked folder leading out
    (folder / "same").symlink_to(folder / "real", target_is_directory=True)  # a linked folder inside
    events: list[WatchEvent] = []
    run = watch_folder(
        folder, tiny_onnx, out=tmp_path / "o1", backend="onnx", settle=0.1, once=True, recursive=True,
        on_event=events.append,
    )  # fmt: skip
    assert sorted(r["field"] for r in rows(run.table)) == ["alias", "inside", "real/r"]
    rejected = {r["field"]: r["reason"] for r in rows(tmp_path / "o1" / "rejected.csv")}
    assert list(rejected) == ["linked"]
    assert "linked_red.png leads outside the watched folder" in rejected["linked"]
    assert "--follow-links" in rejected["linked"]
    notices = [e.message for e in events if e.kind == "notice"]
    assert len(notices) == 1 and "plate: a link to" in notices[0] and "--follow-links" in notices[0]
    followed = watch_folder(
        folder, tiny_onnx, out=tmp_path / "o2", backend="onnx", settle=0.1, once=True, recursive=True,
        follow_links=True,
    )  # fmt: skip
    assert sorted(r["field"] for r in rows(followed.table)) == ["alias", "inside", "linked", "plate/s", "real/r"]


def test_an_unreadable_sub_folder_is_named_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "locked").mkdir()
    write_sample(tmp_path / "open", "f", size=16, channels=("red",))
    notices: list[str] = []
    tracker = FieldTracker(tmp_path, ("red",), recursive=True, on_notice=notices.append)
    scandir = os.scandir

    def refusing(path: object) -> object:
        if Path(str(path)).name == "locked":
            raise PermissionError(13, "Permission denied")
        return scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refusing)
    for _ in range(3):  # every rescan
        assert [p.name for p in tracker.walk()] == ["f_red.png"]
    assert notices == [f"{tmp_path / 'locked'}: cannot be read (Permission denied); its fields are not watched"]
