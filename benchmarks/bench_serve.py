"""The HTTP service under load: latency and throughput of POST /predict, ONNX Runtime vs PyTorch, and whether
micro-batching concurrent requests pays.

    python benchmarks/bench_serve.py [--model PACKAGE] [--repeats 3] [--quick]

For each backend (ONNX Runtime, PyTorch) and each micro-batching setting (``max_batch`` 8, the default, and 1,
off) a fresh ``protloc serve`` process (:func:`protloc.serve.run`, one worker, loopback) is started and sent one
synthetic 4 x 512 x 512 sample (four 8-bit PNGs, as the Kaggle images) at concurrency 1, 4 and 16. The client is
an ``httpx`` async client in this process with the multipart body encoded once, so it costs little CPU, but it
shares the machine's cores with the server: on a 2-core machine the figures are the service and its client
together. Every setting is measured ``--repeats`` times, interleaved; the tables give the medians of p50 and p99
latency and requests/s. Any non-200 answer fails the run.

The model is the CPU recipe's (resnet18 at 128 px, untrained weights: they time the same as trained ones) unless
``--model`` names a package.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, table
from protloc.data.io import CHANNELS, write_channel

CONCURRENCY = (1, 4, 16)
CPUS = os.cpu_count() or 1
SETTINGS: tuple[tuple[str, int, int | None, int | None], ...] = (
    ("onnx", 8, None, None),  # the service's defaults: ONNX Runtime in lanes (a call per CPU), micro-batching to 8
    ("onnx", 1, None, None),
    ("onnx", 8, 1, 1),  # the default before lanes on 2 CPUs: one call at a time on one thread
    ("onnx", 8, CPUS, None),  # ONNX Runtime's own default: one call at a time on a thread per CPU
    ("torch", 8, None, None),
    ("torch", 1, None, None),
)
"""(backend, max_batch, ONNX Runtime intra-op threads, network calls at a time; None: the service's default)."""


def make_package(folder: Path, model: str = "resnet18", size: int = 128, scheme: str = "hpa2018") -> Path:
    """A package of ``model`` at ``size`` px predicting ``scheme``, with untrained weights, and its ONNX export."""
    import torch

    from protloc.deployment.onnx import export_onnx
    from protloc.model.network import PackagedNetwork, create_model
    from protloc.model.package import new_card, save_package
    from protloc.schemes import get_scheme

    classes = get_scheme(scheme).num_classes
    torch.manual_seed(0)
    backbone = create_model(model, 4, classes, image_size=size)
    card = new_card(
        architecture={"name": model, "in_chans": 4, "num_classes": classes, "image_size": size},
        channels=list(CHANNELS),
        size=size,
        mean=[0.07] * 4,
        std=[0.15] * 4,
        thresholds=[0.5] * classes,
        scheme=scheme,
    )
    save_package(folder, PackagedNetwork(backbone, [0.07] * 4, [0.15] * 4).eval(), card)
    export_onnx(folder)
    return folder


def make_sample(folder: Path, size: int = 512) -> dict[str, Path]:
    """One synthetic HPA-like field as four 8-bit PNG channel files."""
    from protloc.classes import HPA2018
    from protloc.synth import generate_sample

    labels = np.zeros(HPA2018.num_classes, np.uint8)
    labels[[0, 25]] = 1  # nucleoplasm + cytosol, the commonest pair
    planes = generate_sample(labels, size, np.random.default_rng(0))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for channel in CHANNELS:
        paths[channel] = folder / f"bench_{channel}.png"
        write_channel(paths[channel], planes[channel])
    return paths


def encoded_body(paths: dict[str, Path]) -> tuple[bytes, str]:
    """The multipart body and its content type, built once (so the client does little work per request)."""
    import httpx

    files = {c: (p.name, p.read_bytes(), "image/png") for c, p in paths.items()}
    request = httpx.Request("POST", "http://x/predict", files=files)
    return request.read(), request.headers["content-type"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``protloc.serve.run`` in a subprocess on a free loopback port."""

    def __init__(
        self, model: Path, backend: str, max_batch: int, threads: int | None, calls: int | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        arguments = (
            f"{str(model)!r}, port={self.port}, backend={backend!r}, max_batch={max_batch}, threads={threads}, "
            f"inference_threads={calls}"
        )
        script = f"from protloc.serve import run; run({arguments}, log_level='warning')"
        env = {k: v for k, v in os.environ.items() if k != "PROTLOC_TOKEN"}
        self.process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.communicate()[1][-2000:]}")
            try:
                httpx.get(f"{self.url}/health", timeout=2).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def health(self) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(f"{self.url}/health", timeout=10).json())


async def load(url: str, body: bytes, content_type: str, requests: int, concurrency: int) -> dict[str, float]:
    """Send ``requests`` POST /predict with ``concurrency`` in flight; latency percentiles (ms) and requests/s."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    remaining = iter(range(requests))
    headers = {"content-type": content_type}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                start = time.perf_counter()
                response = await client.post("/predict", content=body, headers=headers)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    values = np.asarray(latencies) * 1000
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "requests_per_s": requests / seconds,
    }


def measure(
    model: Path, body: bytes, content_type: str, repeats: int, counts: dict[int, int]
) -> dict[str, dict[int, list[dict[str, float]]]]:
    """Every (backend, max_batch) setting at every concurrency, ``repeats`` rounds interleaved."""
    runs: dict[str, dict[int, list[dict[str, float]]]] = {}
    for round_number in range(repeats):
        for backend, max_batch, threads, calls in SETTINGS:
            key = f"{backend}/max_batch={max_batch}" + (f"/threads={threads}" if threads else "")
            key += f"/calls={calls}" if calls else ""
            with Server(model, backend, max_batch, threads, calls) as server:
                asyncio.run(load(server.url, body, content_type, 20, 4))  # warm-up
                for concurrency in CONCURRENCY:
                    before = server.health()
                    result = asyncio.run(load(server.url, body, content_type, counts[concurrency], concurrency))
                    after = server.health()
                    batches = after["batches"] - before["batches"]
                    result["mean_batch"] = (after["samples"] - before["samples"]) / batches if batches else 0.0
                    runs.setdefault(key, {}).setdefault(concurrency, []).append(result)
                    print(
                        f"round {round_number + 1}/{repeats} {key:27s} c={concurrency:2d}: "
                        f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                        f"{result['requests_per_s']:6.1f} req/s  batch {result['mean_batch']:.2f}  "
                        f"(load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    return runs


def _label(key: str) -> str:
    """A settings key as the table's first column."""
    backend = "ONNX Runtime" if key.startswith("onnx") else "PyTorch"
    if "/calls=1" in key:
        return f"{backend}, one call at a time on 1 thread (the default before lanes)"
    if f"threads={CPUS}" in key:
        return f"{backend}, one call at a time on {CPUS} threads"
    return f"{backend} (lanes: a call per CPU)" if backend == "ONNX Runtime" else backend


def summarise(runs: dict[str, dict[int, list[dict[str, float]]]]) -> dict[str, dict[int, dict[str, float]]]:
    return {
        key: {c: {m: round(median([r[m] for r in rounds]), 2) for m in rounds[0]} for c, rounds in by_c.items()}
        for key, by_c in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a package folder with model.onnx (default: resnet18 at 128 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round with few requests (checks the script)")
    args = parser.parse_args()
    counts = {1: 12, 4: 24, 16: 48} if args.quick else {1: 60, 4: 120, 16: 240}
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model is not None:
            model = root / "model"
            shutil.copytree(args.model, model)
            if not (model / "model.onnx").is_file():
                from protloc.deployment.onnx import export_onnx

                export_onnx(model)
        else:
            model = make_package(root / "model")
        from protloc.model.card import read_card

        card = read_card(model)
        body, content_type = encoded_body(make_sample(root / "sample"))
        runs = measure(model, body, content_type, repeats, counts)
    summary = summarise(runs)
    name = f"{card.architecture.name} at {card.size} px"
    rows = []
    for key, by_c in summary.items():
        for concurrency, values in by_c.items():
            rows.append(
                [
                    _label(key),
                    "on (8)" if "max_batch=8" in key else "off",
                    concurrency,
                    f"{values['p50_ms']:.1f}",
                    f"{values['p99_ms']:.1f}",
                    f"{values['requests_per_s']:.1f}",
                    f"{values['mean_batch']:.2f}",
                ]
            )
    verdicts = []
    for backend in ("onnx", "torch"):
        on, off = summary[f"{backend}/max_batch=8"][16], summary[f"{backend}/max_batch=1"][16]
        gain = on["requests_per_s"] / off["requests_per_s"] - 1
        verdicts.append(
            f"- {backend}: at concurrency 16, micro-batching gives {on['requests_per_s']:.1f} vs "
            f"{off['requests_per_s']:.1f} req/s ({gain:+.0%}), p99 {on['p99_ms']:.0f} vs {off['p99_ms']:.0f} ms "
            f"(mean batch {on['mean_batch']:.1f})."
        )
    lanes, before = summary["onnx/max_batch=8"][16], summary["onnx/max_batch=8/threads=1/calls=1"][16]
    verdicts.append(
        f"- lanes: at concurrency 16, ONNX Runtime in lanes answers {lanes['requests_per_s']:.1f} req/s against "
        f"{before['requests_per_s']:.1f} for one call at a time on one thread "
        f"({lanes['requests_per_s'] / before['requests_per_s']:.2f}x), p99 {lanes['p99_ms']:.0f} vs "
        f"{before['p99_ms']:.0f} ms."
    )
    markdown = "\n".join(
        [
            f"### HTTP service: POST /predict, one 4x512² sample (four 8-bit PNGs), {name}",
            "",
            f"`python benchmarks/bench_serve.py{' --quick' if args.quick else ''}`: one `protloc serve` worker on "
            f"loopback, httpx async client on the same {os.cpu_count()}-core machine; medians of {repeats} "
            f"round(s) of {counts[1]}/{counts[4]}/{counts[16]} requests at concurrency 1/4/16.",
            "",
            table(["backend", "micro-batching", "concurrency", "p50 ms", "p99 ms", "requests/s", "mean batch"], rows),
            "",
            *verdicts,
        ]
    )
    save(
        "serve_quick" if args.quick else "serve",
        {"model": name, "repeats": repeats, "requests": counts, "summary": summary, "runs": runs},
        markdown,
    )


if __name__ == "__main__":
    main()
