"""CPU inference: PyTorch eager vs ONNX Runtime float32 vs ONNX Runtime int8, and `protloc predict` end to end.

    python benchmarks/bench_inference.py [--model PACKAGE] [--samples 1000] [--repeats 5] [--train-minutes 4]

1. Model only: images/s of the default model (resnet18, 4 channels) at its input size (128 px) and at 512 px,
   batch 1 and batch 16, PyTorch eager (channels_last, inference mode) vs ONNX Runtime float32 vs ONNX
   Runtime int8 (`protloc export --int8`: static QDQ quantisation calibrated on 128 images), interleaved,
   medians of ``--repeats`` timings.
2. int8 accuracy: a default-recipe model trained for ``--train-minutes`` on synthetic data (or ``--model``
   when it names its training data), exported float32 and int8, both scored on a held-out synthetic test set
   with its truth (macro F1, micro F1, exact match under the card's thresholds). ``--train-minutes 0`` skips.
3. End to end: `protloc predict` (ONNX Runtime and torch backends) on ``--samples`` synthetic 4x512^2 PNG
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
from protloc.deployment.onnx import export_onnx
from protloc.deployment.quantize import INT8_ONNX_FILE, quantize_onnx
from protloc.errors import ModelError
from protloc.inference.core import OnnxBackend
from protloc.inference.evaluate import evaluate_model
from protloc.inference.predict import predict_folder
from protloc.inference.torch_backend import TorchBackend
from protloc.model.network import PackagedNetwork, create_model
from protloc.model.package import load_package, new_card, save_package
from protloc.synth import make_dataset
from protloc.training.config import resolve_config
from protloc.training.train import train


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
        scheme="hpa2018",
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


def int8_quality(root: Path, args: argparse.Namespace, results: dict[str, object]) -> str:
    """Train a default-recipe model briefly, export float32 and int8, score both on held-out synthetic data."""
    if args.quality_model is not None:
        data = args.quality_data
        package = root / "quality-model"
        shutil.copytree(args.quality_model, package)
        epochs, what = load_package(package).card.training.get("epochs_run", "?"), f"given {args.quality_model.name}"
    else:
        data = root / "quality"
        make_dataset(data, n_train=1200, n_test=400, size=128, seed=5, min_per_class=10)
        config = resolve_config(
            "cpu",
            overrides={
                "data": str(data),
                "out": str(root / "quality-run"),
                "epochs": 30,
                "max_time": f"{args.train_minutes:.2f}",
                "cache_dir": str(root / "cache"),
            },
        )
        trained = train(config, overwrite=True)
        assert trained is not None
        package, epochs = trained.package_dir, trained.epochs_run
        what = f"trained {args.train_minutes:g} min"
    export_onnx(package)
    try:
        quantized = quantize_onnx(package, data=data, method=args.calibration_method)
    except ModelError as refused:  # the export's own check refused it: that is the result
        results["int8_quality"] = {"model": what, "epochs_run": epochs, "refused": str(refused)}
        return f"int8 of the {what} model ({epochs} epochs), {args.calibration_method} ranges: refused: {refused}"
    scores = {}
    for label, model in (("float32", package / "model.onnx"), ("int8", package / INT8_ONNX_FILE)):
        evaluation = evaluate_model(model, data, split="test", labels=data / "test_truth.csv", backend="onnx")
        scores[label] = evaluation.report.summary()
    results["int8_quality"] = {
        "model": what,
        "epochs_run": epochs,
        "scores": scores,
        "check": {
            "max_prob_diff": quantized.max_prob_diff,
            "mean_prob_diff": quantized.mean_prob_diff,
            "decision_agreement": quantized.decision_agreement,
        },
    }
    rows = [
        [label, f"{s['macro_f1']:.4f}", f"{s['micro_f1']:.4f}", f"{s['exact_match']:.4f}"]
        for label, s in scores.items()
    ]
    rows.append(
        [
            "int8 - float32",
            f"{scores['int8']['macro_f1'] - scores['float32']['macro_f1']:+.4f}",
            f"{scores['int8']['micro_f1'] - scores['float32']['micro_f1']:+.4f}",
            f"{scores['int8']['exact_match'] - scores['float32']['exact_match']:+.4f}",
        ]
    )
    return table(
        [
            f"{load_package(package).card.architecture.name} {load_package(package).card.size} px, {what} "
            f"({epochs} epochs); held-out synthetic test set",
            "macro F1",
            "micro F1",
            "exact match",
        ],
        rows,
    ) + (
        f"\n\nint8 check on 64 training images not used for calibration: max |int8 - fp32| probability "
        f"{quantized.max_prob_diff:.3f}, mean {quantized.mean_prob_diff:.4f}, "
        f"{quantized.decision_agreement:.2%} of decisions unchanged."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a trained package (default: a fresh resnet18 at 128 px)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--calibration-method", default="percentile", help="as protloc export's default")
    parser.add_argument("--quality-model", type=Path, help="score this trained package float32 vs int8 instead")
    parser.add_argument("--quality-data", type=Path, help="its data set (a test split with test_truth.csv)")
    parser.add_argument("--skip-speed", action="store_true", help="only the int8 accuracy part")
    parser.add_argument("--results-name", default="inference", help="results/<name>.md and .json")
    args = parser.parse_args()
    rows = []
    results: dict[str, object] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.skip_speed:
            save(args.results_name, results, int8_quality(root, args, results))
            return
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
        calibration = root / "calibration"
        make_dataset(calibration, n_train=192, n_test=1, size=128, seed=11)
        model_only: dict[str, float] = {}
        for input_size, package in packages.items():
            export_onnx(package)
            quantize_onnx(package, data=calibration, count=128, method=args.calibration_method)
            backends = {
                "eager": TorchBackend(load_package(package), device="cpu"),
                "onnx": OnnxBackend(package / "model.onnx"),
                "int8": OnnxBackend(package / INT8_ONNX_FILE),
            }
            for batch_size in (1, 16):
                batch = np.random.default_rng(0).random((batch_size, 4, input_size, input_size), dtype=np.float32)
                rates: dict[str, list[float]] = {key: [] for key in backends}
                for _ in range(3):  # interleave the backends
                    for key, backend in backends.items():
                        rates[key].append(rate(backend, batch, args.repeats))
                e, o, q = (median(rates[key]) for key in backends)
                for key in backends:
                    model_only[f"{key}_{input_size}_b{batch_size}"] = median(rates[key])
                rows.append(
                    [
                        f"{name} {input_size} px, batch {batch_size}",
                        f"{e:.1f}",
                        f"{o:.1f}",
                        f"{q:.1f}",
                        f"{o / e:.2f}x",
                        f"{q / e:.2f}x",
                    ]
                )
        results["model_only"] = model_only
        markdown = table(
            [
                "model only (images/s)",
                "PyTorch eager",
                "ONNX Runtime fp32",
                "ONNX Runtime int8",
                "fp32 / eager",
                "int8 / eager",
            ],
            rows,
        )
        if args.train_minutes > 0 or args.quality_model is not None:
            markdown += "\n\n" + int8_quality(root, args, results)

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
    save(args.results_name, results, markdown)


if __name__ == "__main__":
    main()
