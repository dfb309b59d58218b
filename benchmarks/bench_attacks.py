"""Every attack and fault of the reliability issue (10) and of the seams issue (20), replayed side by side in one
run: what each got, how long it took, and the peak memory it cost.

    python benchmarks/bench_attacks.py [--quick]

The service runs as ``protloc serve`` (ONNX Runtime, one worker, loopback, ``--max-pending 4``, 3 s body and
2 s header deadlines) in its own process; its resident memory is sampled every 10 ms by ``psutil`` while each
attack runs, and the table gives the peak above the idle level measured just before that attack. The command
line attacks (``predict``, ``check``, ``train``) run as their own processes and report their own peak RSS. The
model is the benchmark package of :mod:`bench_serve` (resnet18 at 128 px, untrained weights, exported to ONNX).
Hostile images are made the way the attacker made them: small files that declare huge images (a PNG of
11000x11000 16-bit zeros is 0.2 MB). ``--quick`` uses 32 slow clients instead of 64.

The seams' attacks (:mod:`attacks_seams`) add a second service, the same package predicting the 19 classes of
``hpa2021``, and commands on the newest surfaces: a BioImage.IO zip bomb and packages naming paths outside
themselves, label images over the budget or of the wrong size, huge OME-TIFFs, the watcher's table deleted under
it and links out of its folder, hostile class names and 2021 label ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from tests.helpers import write_csv, zero_png  # noqa: E402

import attacks_seams  # noqa: E402
from bench_serve import free_port, make_package  # noqa: E402
from common import save, table  # noqa: E402
from protloc.data.io import CHANNELS, write_channel  # noqa: E402

MiB = 2**20


def measured(command: list[str]) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """Run ``command``; its result (with stderr), its peak RSS (bytes, with children) and its seconds."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    handle, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, sum(p.memory_info().rss for p in (handle, *handle.children(recursive=True))))
        time.sleep(0.01)
    _, err = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, "", err), peak, time.perf_counter() - started


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def multipart(parts: list[tuple[str, bytes]], boundary: str = "bench0boundary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    return body + f"--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def png(plane: np.ndarray) -> bytes:
    import cv2

    return bytes(cv2.imencode(".png", plane)[1].tobytes())


class Service:
    """``protloc serve`` in a subprocess, with an RSS sampler."""

    def __init__(self, model: Path) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "protloc", "serve", str(model), "--port", str(self.port), "--backend", "onnx"]
        command += ["--max-pending", "4", "--header-timeout", "2", "--body-timeout", "3", "--max-upload-mb", "64"]
        self.process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("the service did not start")

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.process.pid).memory_info().rss)

    @contextlib.contextmanager
    def peak(self) -> Iterator[dict[str, int]]:
        """Yields a dict that holds ``idle`` and, after the block, ``peak`` (bytes)."""
        time.sleep(0.3)
        found = {"idle": self.rss(), "peak": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                found["peak"] = max(found["peak"], self.rss())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield found
        finally:
            time.sleep(0.2)
            stop.set()
            sampler.join()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    import httpx

    try:
        response = httpx.post(url, content=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        return 0, f"{exc.__class__.__name__}"
    detail = response.json().get("detail", "") if "json" in response.headers.get("content-type", "") else ""
    return response.status_code, detail or f"{len(response.content)} bytes {response.headers.get('content-type')}"


def concurrent(url: str, body: bytes, headers: dict[str, str], count: int) -> tuple[int, str]:
    import httpx

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            responses = await asyncio.gather(*(client.post(url, content=body, headers=headers) for _ in range(count)))
        return [r.status_code for r in responses]

    statuses = asyncio.run(run())
    return statuses[0], f"{count} requests: " + ", ".join(f"{statuses.count(s)} x {s}" for s in sorted(set(statuses)))


def service_attacks(service: Service, slow_clients: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    good_body, good_headers = multipart([(c, png(rng.integers(0, 256, (512, 512), dtype=np.uint8))) for c in CHANNELS])
    huge = zero_png(11000, 11000)
    huge_body, huge_headers = multipart([(c, huge) for c in CHANNELS])
    zero8k = zero_png(8192, 8192, bit_depth=8)
    explain_body, explain_headers = multipart([(c, zero8k) for c in CHANNELS])
    at_budget = png(np.zeros((4096, 4096), np.uint8))
    budget_body, budget_headers = multipart([(c, at_budget) for c in CHANNELS])
    small = png(np.zeros((512, 512), np.uint8))
    one_huge, one_headers = multipart([("red", zero_png(16000, 16000)), *((c, small) for c in CHANNELS[1:])])
    doubled, doubled_headers = multipart([(c, png(np.zeros((64, 64), np.uint8))) for c in (*CHANNELS, "red")])

    def attack(name: str, what: Callable[[], tuple[int, str]]) -> None:
        with service.peak() as memory:
            started = time.perf_counter()
            status, detail = what()
            seconds = time.perf_counter() - started
        rows.append(
            {
                "attack": name,
                "status": status,
                "answer": detail[:110],
                "seconds": round(seconds, 2),
                "peak_above_idle_mib": round(max(0, memory["peak"] - memory["idle"]) / MiB, 1),
            }
        )
        print(rows[-1], flush=True)

    predict = f"{service.url}/predict"
    attack("good request (4 x 512 px PNG), baseline", lambda: post(predict, good_body, good_headers))
    attack(
        "good /explain (the first loads PyTorch and Grad-CAM)",
        lambda: post(f"{service.url}/explain", good_body, good_headers),
    )
    attack(
        f"/predict: 4 x 11000x11000 16-bit PNG ({len(huge_body) / MiB:.1f} MiB)",
        lambda: post(predict, huge_body, huge_headers),
    )
    attack(
        f"/predict: red a 16000x16000 16-bit PNG ({len(one_huge) / MiB:.1f} MiB)",
        lambda: post(predict, one_huge, one_headers),
    )
    attack("4 such /predict requests at once", lambda: concurrent(predict, huge_body, huge_headers, 4))
    attack(
        f"/explain: 4 x 8192x8192 zero PNG ({len(explain_body) / MiB:.1f} MiB)",
        lambda: post(f"{service.url}/explain", explain_body, explain_headers),
    )
    attack(
        "/explain: 4 x 4096x4096 PNG (within the budget), no max_side",
        lambda: post(f"{service.url}/explain", budget_body, budget_headers),
    )
    attack(
        "/predict: 4 x 4096x4096 PNG (within the budget), 4 at once",
        lambda: concurrent(predict, budget_body, budget_headers, 4),
    )
    attack(
        "/explain?class_id=²",
        lambda: post(f"{service.url}/explain?class_id=%C2%B2", good_body, good_headers),
    )
    attack("multipart body cut mid-file", lambda: post(predict, good_body[: len(good_body) // 2], good_headers))
    attack("the red channel sent twice", lambda: post(predict, doubled, doubled_headers))
    attack(
        "Host: evil.example (DNS rebinding)",
        lambda: post(predict, good_body, {**good_headers, "host": "evil.example"}),
    )
    attack(
        "Origin: https://evil.example (cross-site form post)",
        lambda: post(predict, good_body, {**good_headers, "origin": "https://evil.example"}),
    )

    def slow_then_good() -> tuple[int, str]:
        sockets = []
        for _ in range(slow_clients):
            conn = socket.create_connection(("127.0.0.1", service.port))
            conn.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 100000\r\n\r\nxxxxx"
            )
            sockets.append(conn)
        try:
            started = time.perf_counter()
            status, _ = post(predict, good_body, good_headers)
            good_seconds = time.perf_counter() - started
            sockets[0].settimeout(10)
            answer = sockets[0].recv(200).decode("latin-1").split("\r\n", 1)[0]
        finally:
            for conn in sockets:
                conn.close()
        return status, f"good request {status} in {good_seconds:.2f} s; the slow ones: {answer}"

    attack(f"{slow_clients} slow clients (headers + 5 body bytes), then a good request", slow_then_good)

    def late_headers() -> tuple[int, str]:
        conn = socket.create_connection(("127.0.0.1", service.port))
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        conn.settimeout(15)
        started = time.perf_counter()
        closed = conn.recv(100) == b""
        conn.close()
        return 0, f"connection {'closed' if closed else 'answered'} after {time.perf_counter() - started:.1f} s"

    attack("headers never finished", late_headers)
    return rows


def cli_attacks(model: Path, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    python = [sys.executable, "-m", "protloc"]

    def run(name: str, command: list[str], expect: Callable[[subprocess.CompletedProcess[str]], str]) -> None:
        result, peak, seconds = measured(command)
        rows.append(
            {
                "attack": name,
                "status": f"exit {result.returncode}",
                "answer": expect(result)[:110],
                "seconds": round(seconds, 2),
                "peak_rss_mib": round(peak / MiB, 1),
            }
        )
        print(rows[-1], flush=True)

    def last_line(result: subprocess.CompletedProcess[str]) -> str:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        return lines[-1].strip() if lines else "(no output)"

    huge = work / "huge"
    huge.mkdir()
    for channel in CHANNELS:
        (huge / f"big_{channel}.png").write_bytes(zero_png(11000, 11000))
    fine = work / "fine"
    fine.mkdir()
    for channel in CHANNELS:
        write_channel(fine / f"ok_{channel}.png", np.zeros((512, 512), np.uint8))
    run(
        "predict: one good 4 x 512 px sample, baseline",
        [*python, "predict", str(model), str(fine), "--out", str(work / "p0"), "--backend", "onnx"],
        last_line,
    )
    run(
        "predict: 4 x 11000x11000 16-bit PNG",
        [*python, "predict", str(model), str(huge), "--out", str(work / "p1"), "--backend", "onnx"],
        last_line,
    )
    run("check (full): the same files", [*python, "check", str(huge)], last_line)
    run("check --quick: the same files", [*python, "check", str(huge), "--quick"], last_line)

    data = work / "data"
    rng = np.random.default_rng(0)
    (data / "train").mkdir(parents=True)
    for i in range(8):
        for channel in CHANNELS:
            write_channel(data / "train" / f"s{i}_{channel}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    write_csv(data / "train.csv", ["Id", "Target"], [(f"s{i}", str(i % 3)) for i in range(7)] + [("s7", "1,2,3")])
    (data / "train.csv").write_text((data / "train.csv").read_text().replace('"1,2,3"', "1,2,3"))
    run("label row X,1,2,3 (unquoted)", [*python, "check", str(data), "--quick"], last_line)
    good = work / "good"
    shutil.copytree(data, good)
    rows_text = (good / "train.csv").read_text().replace("s7,1,2,3", "s7,1 2 3")
    (good / "train.csv").write_text(rows_text)
    thesis_good = work / "thesis-good"
    thesis_good.mkdir()
    (thesis_good / "chapter3.tex").write_text("two years of work")
    run(
        "train --out THESIS --overwrite, good data",
        [*python, "train", str(good), "--out", str(thesis_good), "--overwrite", "--epochs", "1"],
        lambda r: ("chapter3.tex intact; " if (thesis_good / "chapter3.tex").is_file() else "DELETED; ") + last_line(r),
    )
    thesis = work / "thesis"
    thesis.mkdir()
    (thesis / "chapter3.tex").write_text("two years of work")
    run(
        "train --out THESIS --overwrite, a bad label in the data",
        [*python, "train", str(data), "--out", str(thesis), "--overwrite", "--epochs", "1"],
        lambda r: ("chapter3.tex intact; " if (thesis / "chapter3.tex").is_file() else "DELETED; ") + last_line(r),
    )

    # two predictions into one folder at once: started together, so whichever takes the folder first is still
    # predicting when the other reaches it (a fixed delay let a fast first run finish before the second began)
    folder = work / "many"
    folder.mkdir()
    for i in range(120):
        for channel in CHANNELS:
            write_channel(folder / f"m{i:03d}_{channel}.png", rng.integers(0, 256, (256, 256), dtype=np.uint8))
    out = work / "shared-out"
    command = [*python, "predict", str(model), str(folder), "--out", str(out), "--backend", "onnx"]
    started = time.perf_counter()
    both = [
        subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for process in both:
        out_text, err_text = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(command, process.returncode, out_text, err_text))
    from protloc.inference.predict import read_probabilities

    ids, _ = read_probabilities(out / "probabilities.csv") if (out / "probabilities.csv").is_file() else ([], None)
    refused = [r for r in results if r.returncode != 0]
    said = last_line(refused[0]) if refused else "NOT REFUSED: " + last_line(results[1])
    rows.append(
        {
            "attack": "two predict runs into one --out at once",
            "status": " / ".join(f"exit {r.returncode}" for r in results),
            "answer": (f"{len(ids)} rows, ids in order: {ids == sorted(ids)}; the other: " + said)[:110],
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mib": "",
        }
    )
    print(rows[-1], flush=True)
    return rows


def hostile_checkpoint(work: Path) -> dict[str, Any]:
    import torch

    from protloc.errors import ModelError
    from protloc.training.callbacks import AtomicCheckpointIO

    marker = work / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    path = work / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {}, "x": Payload()}, path)
    started = time.perf_counter()
    try:
        AtomicCheckpointIO().load_checkpoint(path)
        answer = "loaded"
    except ModelError as exc:
        answer = str(exc).split(": ", 1)[1].split("; resume")[0]
    return {
        "attack": "resume from a checkpoint that runs code",
        "status": "refused" if not marker.exists() else "RAN CODE",
        "answer": answer,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mib": "",
    }


def render(
    idle: int, served: list[dict[str, Any]], commands: list[dict[str, Any]], seams: list[dict[str, Any]],
    seams_commands: list[dict[str, Any]],
) -> str:  # fmt: skip
    """The Markdown of a run: the service's and the commands' tables of issue 10, then those of issue 20."""
    return (
        f"Service idle RSS: {idle / MiB:.0f} MiB (ONNX Runtime, one worker).\n\n"
        + table(
            ["attack on the service", "status", "answer", "s", "peak RSS above idle (MiB)"],
            [[r["attack"], r["status"], r["answer"], r["seconds"], r["peak_above_idle_mib"]] for r in served],
        )
        + "\n\n"
        + table(
            ["attack on the command line / library", "status", "answer", "s", "peak RSS (MiB)"],
            [[r["attack"], r["status"], r["answer"], r["seconds"], r["peak_rss_mib"]] for r in commands],
        )
        + "\n\n"
        + table(
            ["issue 20: the service on a 19-class model", "status", "answer", "s", "peak RSS above idle (MiB)"],
            [[r["attack"], r["status"], r["answer"], r["seconds"], r["peak_above_idle_mib"]] for r in seams],
        )
        + "\n\n"
        + table(
            ["issue 20: commands on the newest surfaces", "status", "answer", "s", "peak RSS (MiB)"],
            [[r["attack"], r["status"], r["answer"], r["seconds"], r["peak_rss_mib"]] for r in seams_commands],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="protloc-attacks-"))
    try:
        model = make_package(work / "model")
        service = Service(model)
        try:
            idle = service.rss()
            served = service_attacks(service, 32 if args.quick else 64)
        finally:
            service.close()
        commands = cli_attacks(model, work)
        commands.append(hostile_checkpoint(work))
        seams_service = Service(make_package(work / "model2021", scheme="hpa2021"))
        try:
            seams = attacks_seams.service_rows(seams_service, post, work)
        finally:
            seams_service.close()
        seams_commands = attacks_seams.command_rows(model, work, env())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    markdown = render(idle, served, commands, seams, seams_commands)
    payload = {"idle_rss": idle, "service": served, "commands": commands}
    save("attacks", {**payload, "seams_service": seams, "seams_commands": seams_commands}, markdown)


if __name__ == "__main__":
    main()
