"""Prediction at the model's pace: `protloc predict` against the model alone, side by side in one run (issue 24).

    python benchmarks/bench_throughput.py [--samples 160] [--rounds 3] [--sizes 128 512] [--model PACKAGE]

For each field size (synthetic 4-channel 8-bit PNG fields written by ``protloc synth``, resized to the model's
128 px input), one round times, in turn:

* the model alone: ONNX Runtime, batch 16, all usable threads, random input (samples/s);
* ``predict`` with the default thread budget (:mod:`protloc.inference.budget`: ONNX Runtime in lanes, a
  thread per CPU each decoding a batch and running the network on it with one thread);
* ``predict --workers 0`` (decoding in this process on a prefetch thread, the network on the CPUs it leaves:
  the budget's default before lanes), and the same with the network on 2 threads (the prefetch thread then
  shares a core with it);
* ``predict --workers 2 --threads 1``: the split the budget replaced (two decoding processes, the network on the
  CPUs they left), for the before/after ratio;
* the watcher classifying the same fields already in its folder (``watch_folder(once=True)``: its default
  budget, a durable journalled row per field);
* the service's engine in this process (no HTTP, no client): as many one-sample requests as ``--samples``, 16 at
  a time, decoded on its decoding threads and micro-batched into the network, with the budget's split (ONNX
  Runtime in lanes: one network call per CPU at a time, one thread each) and with the split before lanes (one
  call at a time on half the CPUs, decoding on the other half).

Rounds are interleaved, so every configuration sees the same neighbours on a shared machine, and the order of
the ``predict`` configurations turns by one each round (the first run after the model alone measured up to 7 %
slower than the same configuration later in the round); the table gives
medians, each configuration's ratio to the model alone (model samples/s over end-to-end samples/s, so 1.0 is
the model's pace) and the load average before and after. ``predict`` runs in this process (``predict_folder``,
backend load and output files included, no interpreter start).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, table
from protloc.inference.budget import plan_for_catalog
from protloc.inference.core import OnnxBackend
from protloc.inference.predict import open_for_prediction, predict_folder
from protloc.model.card import read_card
from protloc.synth import make_dataset
from protloc.utils import usable_cpus

CONFIGS: dict[str, dict[str, int | None]] = {
    "predict (default budget)": {},
    "predict --workers 0 (prefetch thread, the default before lanes)": {"workers": 0},
    "predict --workers 0 --threads 2": {"workers": 0, "threads": 2},
    "predict --workers 2 --threads 1 (old default)": {"workers": 2, "threads": 1},
}

SERVICE: dict[str, dict[str, int]] = {
    "service engine (default budget), requests/s": {},
    "service engine, one network call at a time (the default before lanes), requests/s": {
        "threads": 1,
        "decode_threads": 1,
        "inference_threads": 1,
    },
}


def model_alone(onnx: Path, size: int, samples: int) -> float:
    """Samples/s of ONNX Runtime alone: batch 16, all usable threads, random input, as many samples as a
    ``predict`` run (so both last about as long and see the same neighbours)."""
    backend = OnnxBackend(onnx, threads=usable_cpus())
    batch = np.random.default_rng(0).random((16, 4, size, size), dtype=np.float32)
    backend(batch)
    count, start = 0, time.perf_counter()
    while count < samples:
        backend(batch)
        count += 16
    return count / (time.perf_counter() - start)


def service_rate(package: Path, planes: list[bytes], options: dict[str, int], requests: int) -> float:
    """Requests/s of the service's engine in this process (no HTTP): ``requests`` one-sample predictions of the
    given PNG planes, 16 at a time, each decoded on the engine's decoding threads and micro-batched into the
    network (ONNX Runtime; ``options``: the engine's threads, default its budget), as ``POST /predict`` does
    after parsing the upload."""
    import asyncio

    from protloc.serve.decode import decode_array
    from protloc.serve.engine import InferenceEngine

    engine = InferenceEngine(package, backend="onnx", **options)  # type: ignore[arg-type]

    def decode() -> np.ndarray:
        return engine.prepare(np.stack([decode_array(data) for data in planes]))

    async def run_all() -> None:
        gate = asyncio.Semaphore(16)

        async def one() -> None:
            async with gate:
                await engine.infer(await engine.in_decode_pool(decode))

        await asyncio.gather(*(one() for _ in range(requests)))

    start = time.perf_counter()
    asyncio.run(run_all())
    seconds = time.perf_counter() - start
    engine.close()
    return requests / seconds


def watch_rate(package: Path, folder: Path, out: Path, count: int) -> float:
    """Fields/s of the watcher (``protloc watch --once``, its default budget) classifying the ``count`` fields
    already in ``folder``: the same decoding and network as ``predict``, one journalled, durable row per field."""
    from protloc.watch import watch_folder

    start = time.perf_counter()
    summary = watch_folder(folder, package, out=out, backend="onnx", settle=0.0, once=True)
    assert summary.classified == count, summary
    return count / (time.perf_counter() - start)


def make_model(folder: Path) -> Path:
    """A fresh resnet18 package at 128 px with its model.onnx (untrained weights time as trained ones do)."""
    from bench_inference import make_package
    from protloc.deployment.onnx import export_onnx

    package = make_package(folder, "resnet18", 128)
    export_onnx(package)
    return package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--model", type=Path, help="a package with model.onnx (default: a fresh resnet18, 128 px)")
    parser.add_argument("--work", type=Path, help="keep the synthetic fields here (fields-<size>/), made when missing")
    parser.add_argument("--results-name", default="throughput")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = args.model or make_model(root / "model")
        card = read_card(package)
        data, ids = {}, {}
        for side in args.sizes:
            data[side] = (args.work or root) / f"fields-{side}"
            if not data[side].exists():
                make_dataset(data[side], n_train=1, n_test=args.samples, size=side, seed=side)
            ids[side] = tuple(open_for_prediction(data[side]).ids[: args.samples])
        rates: dict[tuple[int, str], list[float]] = {}
        for round_ in range(args.rounds):
            for side in args.sizes:
                key = (side, "model alone (ONNX Runtime, batch 16)")
                rates.setdefault(key, []).append(model_alone(package / "model.onnx", card.size, args.samples))
                names = list(CONFIGS)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]  # each first in some round
                for name, options in ((n, CONFIGS[n]) for n in names):
                    out = root / f"out-{side}-{round_}-{len(rates)}"
                    start = time.perf_counter()
                    result = predict_folder(package, data[side], out, backend="onnx", ids=ids[side], **options)  # type: ignore[arg-type]
                    assert result is not None
                    rates.setdefault((side, name), []).append(args.samples / (time.perf_counter() - start))
                out = root / f"watch-{side}-{round_}"
                watched = watch_rate(package, data[side] / "test", out, len(ids[side]))
                rates.setdefault((side, "watch --once (default budget), fields/s"), []).append(watched)
                planes = [path.read_bytes() for path in sorted((data[side] / "test").glob(f"{ids[side][0]}_*.png"))]
                for name, engine_options in SERVICE.items():
                    rates.setdefault((side, name), []).append(
                        service_rate(package, planes, engine_options, args.samples)
                    )
                latest = ", ".join(
                    f"{name}: {values[-1]:.1f}" for (size, name), values in rates.items() if size == side
                )
                print(f"round {round_ + 1}, {side} px: {latest}", flush=True)
        budgets = {
            side: plan_for_catalog("onnx", card.size, open_for_prediction(data[side]), device="cpu").describe()
            for side in args.sizes
        }
    load_after = os.getloadavg()
    rows = []
    for side in args.sizes:
        reference = median(rates[(side, "model alone (ONNX Runtime, batch 16)")])
        for (size, name), values in rates.items():
            if size == side:
                rows.append(
                    [f"{side} px", name, f"{median(values):.1f}", f"{reference / median(values):.2f}x", len(values)]
                )
    markdown = table(["fields", "path", "samples/s (median)", "model alone / this", "rounds"], rows)
    markdown += (
        f"\n\n{usable_cpus()} usable CPUs; default budget per size: {budgets}; load average (1, 5, 15 min) "
        f"before {tuple(round(x, 1) for x in load_before)}, after {tuple(round(x, 1) for x in load_after)}; "
        f"{args.samples} samples per run, {args.rounds} interleaved rounds."
    )
    results = {
        "rates": {f"{size}px/{name}": values for (size, name), values in rates.items()},
        "budgets": {str(k): v for k, v in budgets.items()},
        "load_before": load_before,
        "load_after": load_after,
    }
    save(args.results_name, results, markdown)


if __name__ == "__main__":
    main()
