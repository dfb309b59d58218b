"""CPU inference: PyTorch eager vs ONNX Runtime, and the end-to-end `protloc predict` rate.

    python benchmarks/bench_inference.py [--model PACKAGE] [--samples 1000] [--repeats 5]

1. Model only: images/s of the default model (resnet18, 4 channels) at its input size (128 px) and at 512 px,
   batch 1 and batch 16, PyTorch eager (channels_last, inference mode) vs ONNX Runtime, interleaved,
   medians of ``--repeats`` timings.
2. End to end: `protloc predict` (ONNX Runtime and torch backends) on ``--samples`` synthetic 4x512^2 PNG
   samples, decoding and resizing included, compared with the model-only rate at the input size.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, table
from protloc.export import export_onnx
from protloc.inference import OnnxBackend
from protloc.models import PackagedNetwork, create_model
from protloc.package import load_package, new_card, save_package
from protloc.predict import predict_folder
from protloc.synth import make_dataset
from protloc.torch_backend import TorchBackend


def make_package(folder: Path, model: str, size: int) -> Path:
    """A package of the given architecture (untrained weights time the same as trained ones)."""
    torch.manual_seed(0)
    backbone = create_model(model, 4, 28, image_size=size)
    card = new_card(
        architecture={"name": model, "in_chans": 4, "num_classes": 28, "image_size": size},
        channels=["red", "green", "blue", "yellow"],
        size=size,
        mean=[0.07] * 4,
        std=[0.15] * 4,
        thresholds=[0.5] * 28,
    )
    return save_package(folder, PackagedNetwork(backbone, [0.07] * 4, [0.15] * 4).eval(), card)


def rate(backend: object, batch: np.ndarray, repeats: int) -> float:
    seconds = []
    backend(batch)  # type: ignore[operator]
    for _ in range(repeats):
        start = time.perf_counter()
        backend(batch)  # type: ignore[operator]
        seconds.append(time.perf_counter() - start)
    return len(batch) / median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a trained package (default: a fresh resnet18 at 128 px)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    results: dict[str, object] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model is not None:
            base = root / "given"
            shutil.copytree(args.model, base)
        else:
            base = make_package(root / "resnet18-128", "resnet18", 128)
        card = load_package(base).card
        name, size = card.architecture.name, int(card.size)
        packages = {size: base}
        if size != 512:
            packages[512] = make_package(root / f"{name}-512", name, 512)
        model_only: dict[str, float] = {}
        for input_size, package in packages.items():
            export_onnx(package)
            eager = TorchBackend(load_package(package), device="cpu")
            onnx = OnnxBackend(package / "model.onnx")
            for batch_size in (1, 16):
                batch = np.random.default_rng(0).random((batch_size, 4, input_size, input_size), dtype=np.float32)
                eager_rates, onnx_rates = [], []
                for _ in range(3):  # interleave the two backends
                    eager_rates.append(rate(eager, batch, args.repeats))
                    onnx_rates.append(rate(onnx, batch, args.repeats))
                e, o = median(eager_rates), median(onnx_rates)
                model_only[f"eager_{input_size}_b{batch_size}"] = e
                model_only[f"onnx_{input_size}_b{batch_size}"] = o
                rows.append([f"{name} {input_size} px, batch {batch_size}", f"{e:.1f}", f"{o:.1f}", f"{o / e:.2f}x"])
        results["model_only"] = model_only
        markdown = table(["model only (images/s)", "PyTorch eager", "ONNX Runtime", "ORT / eager"], rows)

        data = root / "data"
        make_dataset(data, n_train=1, n_test=args.samples, size=512, seed=3)
        e2e_rows = []
        for backend in ("onnx", "torch"):
            start = time.perf_counter()
            result = predict_folder(base, data, root / f"pred-{backend}", backend=backend, batch_size=16)
            assert result is not None
            seconds = time.perf_counter() - start
            speed = args.samples / seconds
            reference = model_only[f"{'onnx' if backend == 'onnx' else 'eager'}_{size}_b16"]
            results[f"end_to_end_{backend}"] = speed
            e2e_rows.append(
                [f"protloc predict, {backend}", f"{speed:.1f}", f"{reference:.1f}", f"{reference / speed:.2f}x"]
            )
        markdown += "\n\n" + table(
            [
                f"end to end, {args.samples} x 4x512^2 PNG (samples/s)",
                "with decoding",
                "model only (b16)",
                "model-only / end-to-end",
            ],
            e2e_rows,
        )
    save("inference", results, markdown)


if __name__ == "__main__":
    main()
