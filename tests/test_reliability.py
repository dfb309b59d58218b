"""The reliability suite: every attack and fault a hostile or careless user tried (issue 10), replayed.

Each test names the attack it replays and asserts the answer that must hold: a one-line error, nothing lost,
nothing let in, memory bounded. Slow ones (a real service, training) are marked ``slow``; all run in CI.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from protloc.data.catalog import read_labels_csv
from protloc.data.check import check_dataset
from protloc.data.decoder import DEFAULT_MAX_PIXELS, probe
from protloc.data.io import read_channel, to_uint8, write_channel
from protloc.errors import BusyError, ConfigError, DataError, ModelError, StorageError
from protloc.locks import hold, holder
from protloc.model.package import load_checkpoint_safely
from protloc.serve.decode import Upload, decode_channel
from protloc.training.config import TrainConfig
from protloc.utils import atomic_write_text
from tests.helpers import require, write_sample, zero_png

# --- 6. one decoded-pixel budget, from the header, on every path --------------------------------------------


def test_a_huge_png_is_refused_from_its_header_in_every_reader(tmp_path: Path) -> None:
    # 11000x11000 16-bit zeros: ~0.2 MB on disk, 242 MB decoded (and 4x that as float): refused unread.
    data = zero_png(11000, 11000)
    assert len(data) < 1 << 20
    path = tmp_path / "a_green.png"
    path.write_bytes(data)
    start = time.perf_counter()
    for read in (lambda: probe(path), lambda: read_channel(path), lambda: decode_channel(Upload(data), "green")):
        with pytest.raises(DataError, match=r"11000x11000 px \(121.0 Mpx\) exceeds the decoding budget"):
            read()
    assert time.perf_counter() - start < 1.0  # three refusals without decoding a pixel


def test_check_full_and_quick_agree_on_the_budget(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_sample(folder, "ok", size=16)
    write_sample(folder, "big", size=16)
    (folder / "big_green.png").write_bytes(zero_png(8000, 8000))
    for decode in (True, False):
        report = check_dataset(folder, decode=decode, workers=1)
        assert [(p.kind, p.sample_id) for p in report.errors] == [("unreadable", "big")], decode
        assert "exceeds the decoding budget" in report.errors[0].message


def test_the_budget_message_says_what_the_limit_is(tmp_path: Path) -> None:
    # A 16384 px image used to be refused as "exceeds 16384 px per side": the message must be true.
    path = tmp_path / "a_green.png"
    path.write_bytes(zero_png(16384, 16, bit_depth=8))
    assert probe(path).plane_shape == (16, 16384)  # within the budget: any side is fine
    path.write_bytes(zero_png(16384, 16384, bit_depth=8))
    with pytest.raises(DataError) as caught:
        probe(path)
    message = str(caught.value)
    assert "16384x16384 px (268.4 Mpx) exceeds the decoding budget of 33.6 Mpx" in message
    assert "per side" not in message


def test_the_budget_can_be_raised_by_the_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a_green.png"
    path.write_bytes(zero_png(64, 64, bit_depth=8))
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", str(32 * 32))
    with pytest.raises(DataError, match="64x64 px"):
        read_channel(path)
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", str(DEFAULT_MAX_PIXELS))
    assert read_channel(path).shape == (64, 64)


def test_int8_tiff_is_refused_by_check_as_by_predict(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_sample(folder, "s", size=16)
    (folder / "s_green.png").unlink()
    tifffile.imwrite(folder / "s_green.tif", np.zeros((16, 16), np.int8))
    with pytest.raises(DataError, match="unsupported pixel type int8"):
        read_channel(folder / "s_green.tif")
    for decode in (True, False):
        report = check_dataset(folder, decode=decode, workers=1)
        assert [p.kind for p in report.errors] == ["unreadable"], decode
        assert "unsupported pixel type int8" in report.errors[0].message


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_a_truncated_file_fails_the_quick_check_too(tmp_path: Path, ext: str) -> None:
    folder = tmp_path / "data"
    write_sample(folder, "s", size=64, ext=ext)
    path = folder / f"s_blue{ext}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    for decode in (True, False):
        report = check_dataset(folder, decode=decode, workers=1)
        assert [p.kind for p in report.errors] == ["unreadable"], (decode, report.problems)
        assert str(path) in report.errors[0].message
    with pytest.raises(DataError, match=str(path)):
        read_channel(path)


def test_uint16_lookup_matches_the_float_rule() -> None:
    values = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    for bit_depth in (12, 14, 16):
        expected = ((values.astype(np.float32) * (255.0 / (2**bit_depth - 1)) + 0.5).clip(0, 255)).astype(np.uint8)
        np.testing.assert_array_equal(to_uint8(values, bit_depth=bit_depth), expected)


def test_a_normal_16bit_png_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "a_green.png"
    write_channel(path, np.full((20, 30), 65535, np.uint16))
    header = probe(path)
    assert (header.kind, header.plane_shape, header.dtype) == ("png", (20, 30), np.dtype(np.uint16))
    assert read_channel(path).max() == 255


# --- 4. label rows with more fields than the header ---------------------------------------------------------


def test_label_rows_with_extra_fields_are_errors_with_their_line(kaggle_dir: Callable[..., Path]) -> None:
    root = kaggle_dir({"A": "0", "B": "1", "C": "2"})
    (root / "train.csv").write_text("Id,Target\nA,0\nB,1 2\nC,1,2,3\n")
    report = check_dataset(root, decode=False, workers=1)
    assert [(p.kind, p.sample_id) for p in report.errors] == [("bad-row", "C")]
    assert "train.csv line 4: 4 fields but the header 'Id,Target' has 2" in report.errors[0].message
    with pytest.raises(DataError, match="line 4: 4 fields"):
        read_labels_csv(root / "train.csv")
    (root / "train.csv").write_text('Id,Target\nA,0\nB,1 2\nC,"1,2,3"\n')  # quoted: one field, then a bad label
    assert [p.kind for p in check_dataset(root, decode=False, workers=1).errors] == ["bad-label"]


# --- 5. disk full and permission errors: one line naming the path, nothing half-written ----------------------


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "the file system is read-only"),
    ],
)
def test_a_refused_write_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    target = tmp_path / "out" / "submission.csv"
    atomic_write_text(target, "old\n")

    def refuse(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(StorageError) as caught:
        atomic_write_text(target, "new\n" * 1000)
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: {says}") and "\n" not in message
    assert target.read_text() == "old\n"  # the old file stands, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["submission.csv"]  # no temporary left


def test_the_cli_turns_a_storage_error_from_any_library_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import protloc.data.check
    from protloc.cli import main

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.csv"))

    monkeypatch.setattr(protloc.data.check, "check_dataset", full)
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {tmp_path / 'x.csv'}: no space left") and "\n" not in err
    assert "Traceback" not in err


# --- 2. one process per output folder; a resume key that covers what the rows depend on ---------------------


def test_a_second_process_on_the_same_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    from protloc.inference.predict import predict_folder

    out = tmp_path / "out"
    with hold(out, "protloc predict"):
        # the lock is per open file: a second holder, even in this process, is refused before any work
        with pytest.raises(BusyError) as caught:
            predict_folder(tmp_path / "no-model", tmp_path / "no-data", out)
        message = str(caught.value)
        assert message.startswith(f"{out}: in use by protloc predict (pid {os.getpid()}, since ")
        assert "\n" not in message
    with hold(out, "again"):  # released on exit
        assert holder(out) is not None and holder(out)["command"] == "again"  # type: ignore[index]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    code = f"from protloc.locks import hold\nwith hold({str(out)!r}, 'sleeper'):\n    print('held', flush=True)\n"
    code += "    import time; time.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match=f"in use by sleeper \\(pid {child.pid}, since "), hold(out):
            pass
    finally:
        child.kill()
        child.wait()
    with hold(out, "after"):
        pass


def test_a_forked_worker_of_a_killed_holder_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A data-loader worker forked while the folder is held outlives its kill -9'd parent for a few seconds;
    a rerun at once is not refused for the dead process (CI saw exactly that)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    code = (
        "import multiprocessing, os, time\n"
        "from protloc.locks import hold\n"
        f"with hold({str(out)!r}, 'parent'):\n"
        "    worker = multiprocessing.get_context('fork').Process(target=time.sleep, args=(60,))\n"
        "    worker.start()\n"
        "    print(worker.pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    try:
        with pytest.raises(BusyError, match="in use by parent"), hold(out):
            pass
        parent.kill()
        parent.wait()
        os.kill(worker, 0)  # the orphaned worker still runs...
        with hold(out, "rerun"):  # ...and the folder is free
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_resume_key_covers_inputs_package_and_settings(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    import shutil

    from protloc.inference.predict import _job_key, load_backend, open_for_prediction

    data = tmp_path / "data"
    shutil.copytree(synth_data / "test", data)
    model = trained_run / "model"
    card, _ = load_backend(model, "onnx" if (model / "model.onnx").exists() else "torch")
    settings = {"tta": ("none",), "tiles": 1, "backend": "torch", "device": "auto"}

    def key(**changed: object) -> str:
        catalog = open_for_prediction(data, channels=list(card.channels))
        return _job_key(model, card, catalog, {**settings, **changed})

    first = key()
    assert key() == first
    assert key(tiles=2) != first and key(backend="onnx") != first
    some = sorted(data.iterdir())[5]
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 1_000_000))
    assert key() != first  # the same names, other pixels: never reuse their rows


def test_a_subset_run_leaves_no_stale_full_run_beside_it(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    from protloc.data.catalog import read_id_column
    from protloc.inference.predict import predict_folder

    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    full = predict_folder(trained_run / "model", synth_data, out, workers=1)
    assert full is not None and (out / "submission.csv").is_file()
    order = read_id_column(synth_data / "sample_submission.csv")
    subset = predict_folder(trained_run / "model", synth_data, out, ids=order[:3], workers=1)
    assert subset is not None
    assert not (out / "submission.csv").exists()  # the full run's 40-row submission is gone
    assert len((out / "probabilities.csv").read_text().splitlines()) == 4
    assert (out / "notes.txt").read_text() == "mine"  # what protloc did not write stays


# --- 1. train --overwrite replaces only a protloc run, and only after the inputs are validated --------------


def _train_config(data: Path, out: Path, cache: Path) -> TrainConfig:
    from protloc.training.config import resolve_config

    overrides = {
        "data": str(data),
        "out": str(out),
        "model": "test_resnet",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 16,
        "cache_dir": str(cache),
        "workers": 0,
    }
    return resolve_config("cpu", overrides=overrides)


def test_overwrite_refuses_a_folder_protloc_did_not_make(kaggle_dir: Callable[..., Path], tmp_path: Path) -> None:
    from protloc.training.train import train

    data = kaggle_dir({f"s{i}": str(i % 3) for i in range(8)})
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter3.tex").write_text("two years of work")
    with pytest.raises(ConfigError, match=r"--overwrite replaces only a protloc run folder .* \(chapter3.tex\)"):
        train(_train_config(data, thesis, tmp_path / "cache"), overwrite=True)
    assert (thesis / "chapter3.tex").read_text() == "two years of work"


def test_overwrite_validates_the_data_before_removing_anything(kaggle_dir: Callable[..., Path], tmp_path: Path) -> None:
    from protloc.training.train import train

    data = kaggle_dir({f"s{i}": str(i % 3) for i in range(8)})
    run = tmp_path / "run"
    run.mkdir()
    _train_config(data, run, tmp_path / "cache").save(run / "config.yaml")  # a protloc run folder
    (run / "metrics.csv").write_text("the previous run's\n")
    (data / "train.csv").write_text("Id,Target\ns0,0\ns1,banana\n")
    with pytest.raises(DataError, match="banana"):
        train(_train_config(data, run, tmp_path / "cache"), overwrite=True)
    assert (run / "metrics.csv").read_text() == "the previous run's\n"  # the bad label stopped it first


def test_clear_run_dir_replaces_a_recognised_run_but_keeps_the_lock(tmp_path: Path) -> None:
    from protloc.training.run_folder import clear_run_dir

    run = tmp_path / "run"
    with hold(run, "protloc train"):
        _train_config(tmp_path, run, tmp_path / "cache").save(run / "config.yaml")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        clear_run_dir(run)
        assert [p.name for p in run.iterdir()] == [".protloc.lock"]


# --- 9. nothing received from someone else runs code: checkpoints, member names ----------------------------


class _Payload:
    """Unpickling this runs ``exec``: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    import torch

    from protloc.training.callbacks import AtomicCheckpointIO

    marker = tmp_path / "pwned"
    hostile = tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 3, "state_dict": {}, "x": _Payload(marker)}, hostile)
    for load in (lambda: AtomicCheckpointIO().load_checkpoint(hostile), lambda: load_checkpoint_safely(hostile)):
        with pytest.raises(ModelError, match="refusing to load this checkpoint"):
            load()
    assert not marker.exists()
    plain = tmp_path / "plain.ckpt"
    torch.save({"epoch": 1, "global_step": 3, "state_dict": {"model.w": torch.ones(2)}, "loops": {"a": [1]}}, plain)
    assert AtomicCheckpointIO().load_checkpoint(plain)["global_step"] == 3


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "", "/abs", "c:evil", ".hidden", 3])
def test_ensemble_member_names_cannot_leave_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: object
) -> None:
    import protloc.model.package

    folder = tmp_path / "ens"
    (folder / "members").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    # the card passes its schema check; only the member name is hostile
    card = SimpleNamespace(is_ensemble=True, members=[name])  # what a hostile card.json decodes to
    monkeypatch.setattr(protloc.model.package, "read_card", lambda path: card)
    monkeypatch.setattr(protloc.model.package, "resolve_package_path", lambda path: Path(path))
    with pytest.raises(ModelError, match="is not a plain folder name under members/"):
        protloc.model.package.load_package(folder)
    assert protloc.model.package.member_name("fold0", folder) == "fold0"


# --- 8. bad input answered rightly: class ids, cut and doubled uploads ------------------------------------


def test_class_ids_are_ascii_digits_only() -> None:
    from protloc.classes import HPA2018, resolve_class
    from protloc.serve.app import resolve_class_id

    for text in ("²", "٣", "1.5", "-1"):
        with pytest.raises(ConfigError):
            resolve_class_id(text)
        with pytest.raises(ConfigError):
            resolve_class(text, HPA2018)
    assert resolve_class_id("7") == resolve_class(" 7 ", HPA2018) == 7


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def service(trained_run: Path) -> Iterator[TestClient]:
    from fastapi.testclient import TestClient

    from protloc.serve import create_app

    app = create_app(trained_run / "model", backend="torch", cors_origins=("https://lab.example.org",))
    with TestClient(app, base_url="http://localhost") as client:
        yield client


def _planes(size: int = 64) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    parts = []
    for channel in ("red", "green", "blue", "yellow"):
        plane = rng.integers(0, 256, (size, size), dtype=np.int64).astype(np.uint8)
        parts.append((channel, cv2.imencode(".png", plane)[1].tobytes()))
    return parts


def test_a_multipart_body_cut_mid_file_is_a_400_and_a_doubled_channel_a_422(service: TestClient) -> None:
    body, headers = _multipart(_planes())
    assert service.post("/predict", content=body, headers=headers).status_code == 200
    cut = body[: len(body) * 3 // 4]  # the client died mid-upload; its Content-Length matches what was sent
    response = service.post("/predict", content=cut, headers=headers)
    assert response.status_code == 400 and "ends before its closing boundary" in response.json()["detail"]
    doubled, headers = _multipart([*_planes(), ("red", _planes()[0][1])])
    response = service.post("/predict", content=doubled, headers=headers)
    assert response.status_code == 422 and "'red' was sent 2 times" in response.json()["detail"]


def test_the_service_refuses_a_huge_upload_from_its_header(service: TestClient) -> None:
    parts = [(name, zero_png(11000, 11000)) for name, _ in _planes()]
    body, headers = _multipart(parts)
    started = time.perf_counter()
    response = service.post("/predict", content=body, headers=headers)
    assert response.status_code == 422 and "exceeds the decoding budget" in response.json()["detail"]
    assert time.perf_counter() - started < 5


def test_explain_class_id_superscript_is_a_422(service: TestClient) -> None:
    body, headers = _multipart(_planes())
    response = service.post("/explain?class_id=%C2%B2", content=body, headers=headers)
    assert response.status_code == 422 and "²" in response.json()["detail"]


@pytest.mark.slow
def test_explain_renders_a_bounded_picture_by_default(service: TestClient) -> None:
    require("pytorch_grad_cam")
    body, headers = _multipart(_planes(1200))
    response = service.post("/explain", content=body, headers=headers)
    assert response.status_code == 200, response.text
    picture = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert max(picture.shape[:2]) == 512  # the preview side, not the upload's 1200 px


# --- 10. let no one in: Host allow-list, no cross-site posts, CORS only when asked, token off the ps line ---


def test_a_foreign_host_header_is_refused(service: TestClient) -> None:
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil:80"):
        response = service.get("/health", headers={"host": host})
        assert response.status_code == 400 and "is not served here" in response.json()["detail"], host
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert service.get("/health", headers={"host": host}).status_code == 200, host


def test_cross_site_posts_are_refused_and_cors_is_only_for_named_origins(service: TestClient) -> None:
    body, headers = _multipart(_planes())
    evil = service.post("/predict", content=body, headers={**headers, "origin": "https://evil.example"})
    assert evil.status_code == 403 and "cross-site request" in evil.json()["detail"]
    assert "access-control-allow-origin" not in evil.headers
    fetch = service.post("/predict", content=body, headers={**headers, "sec-fetch-site": "cross-site"})
    assert fetch.status_code == 403
    same = service.post("/predict", content=body, headers={**headers, "origin": "http://localhost"})
    assert same.status_code == 200
    lab = service.post("/predict", content=body, headers={**headers, "origin": "https://lab.example.org"})
    assert lab.status_code == 200 and lab.headers["access-control-allow-origin"] == "https://lab.example.org"


def test_no_cors_headers_unless_an_origin_is_configured(trained_run: Path) -> None:
    from fastapi.testclient import TestClient

    from protloc.serve import create_app

    with TestClient(create_app(trained_run / "model", backend="torch"), base_url="http://localhost") as client:
        response = client.options(
            "/predict", headers={"origin": "https://lab.example.org", "access-control-request-method": "POST"}
        )
        assert "access-control-allow-origin" not in response.headers


def test_the_token_can_come_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from protloc.serve.settings import TOKEN_ENV, check_origin, resolve_token

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None, token_file) == "s3cret"
    assert resolve_token(None) == "from-env"
    with pytest.raises(ConfigError, match="not both"):
        resolve_token("x", token_file)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        resolve_token(None, tmp_path / "empty")
    with pytest.raises(ConfigError, match="'\\*' is refused"):
        check_origin("*")


# --- 7. slow clients hold connections, never the queue; headers and bodies have deadlines ------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def live_service(trained_run: Path) -> Iterator[str]:
    """``protloc serve`` in its own process on loopback, with short read deadlines and a small queue."""
    import subprocess
    import sys

    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "protloc", "serve", str(trained_run / "model"), "--port", str(port)]
    command += ["--backend", "torch", "--max-pending", "4", "--header-timeout", "2", "--body-timeout", "3"]
    server = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("the service did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def _slow_client(port: int, body_bytes: int, headers_done: bool = True) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: 100000\r\n"
    )
    conn.sendall(head.encode() + (b"\r\n" + b"x" * body_bytes if headers_done else b""))
    return conn


@pytest.mark.slow
def test_slow_clients_do_not_lock_out_a_good_request(live_service: str) -> None:
    import httpx

    port = int(live_service.rsplit(":", 1)[1])
    slow = [_slow_client(port, 5) for _ in range(64)]  # 64 clients: headers and 5 body bytes, then nothing
    try:
        body, headers = _multipart(_planes())
        started = time.perf_counter()
        response = httpx.post(f"{live_service}/predict", content=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text  # max-pending is 4: the slow ones hold no place
        assert time.perf_counter() - started < 10
        # their bodies never come: each gets a 408 after the 3 s body deadline, and its connection closes
        slow[0].settimeout(10)
        received = b""
        while chunk := slow[0].recv(4096):  # until the server closes the connection
            received += chunk
        answer = received.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408") and "did not arrive in time" in answer
    finally:
        for conn in slow:
            conn.close()


@pytest.mark.slow
def test_a_client_that_never_finishes_its_headers_is_disconnected(live_service: str) -> None:
    port = int(live_service.rsplit(":", 1)[1])
    conn = _slow_client(port, 0, headers_done=False)
    conn.settimeout(10)
    started = time.perf_counter()
    try:
        assert conn.recv(4096) == b""  # closed by the server, without an answer
    finally:
        conn.close()
    assert 1.5 < time.perf_counter() - started < 8  # the 2 s header deadline


@pytest.mark.parametrize(
    "argv",
    [["train", "data", "--bogus-flag"], ["predict"], ["train", "data", "--recipe"], ["no-such-command"]],
)
def test_a_wrong_flag_is_a_one_line_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Typer 0.20+ raises its vendored click's exceptions: they must still end as usage errors (exit 2)."""
    from protloc.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Error" in err


def test_the_gate_logs_a_body_over_the_limit_once_the_answer_has_started(caplog: pytest.LogCaptureFixture) -> None:
    """It was dropped without a word (issue 20): a route that starts answering before it has read the whole body
    cannot be given the 413 any more, so the gate says in the log what it withheld."""
    import asyncio
    import logging

    from protloc.serve.gate import RequestGate

    async def eager(scope: dict[str, object], receive: Callable[..., object], send: Callable[..., object]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        while (await receive())["more_body"]:  # type: ignore[operator,index]
            pass
        await send({"type": "http.response.body", "body": b"done"})  # type: ignore[operator]

    engine = SimpleNamespace(try_admit=lambda: True, release=lambda: None)
    gate = RequestGate(eager, engine=engine, max_bytes=10, token=None)  # type: ignore[arg-type]
    chunks = iter([b"x" * 8, b"x" * 8, b"x" * 8])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/model", "headers": [(b"host", b"localhost")]}
    with caplog.at_level(logging.WARNING, logger="protloc.serve"):
        asyncio.run(gate(scope, receive, send))  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["http.response.start"]  # the rest withheld, no second start
    assert len(caplog.records) == 1
    assert "POST /model: the request body passed the upload limit (10 bytes) after the answer had started" in (
        caplog.records[0].getMessage()
    )
