"""GPU training throughput, and whether protloc's data pipeline keeps the GPU fed.

    bash benchmarks/gpu.sh                      # on a machine with an NVIDIA GPU: < 8 minutes, one table
    python benchmarks/bench_gpu.py --smoke      # the same code path on CPU at toy sizes (used by the tests)

Measures, at 512 px with 4 input channels and batch 32:

* model images/s for densenet121 and resnet50: bf16 autocast, channels_last, AdamW + focal loss, with and
  without ``torch.compile`` (data already on the GPU, so this is the model's ceiling);
* loader images/s: protloc's cache -> CachedDataset (standard augmentation) -> DataLoader with N workers ->
  pinned memory -> the GPU, normalised there (``uint8`` crosses the queues and the copy, as in training); and,
  for comparison, the same with ``float32`` normalised in the workers (protloc before it moved normalisation);
* the verdict: the pipeline keeps the GPU fed when loader images/s >= model images/s.

Every measurement has a time limit, so the whole script ends well inside its budget; what was skipped for
lack of time is said in the table.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.cache import build_cache
from protloc.catalog import open_dataset
from protloc.dataset import CachedDataset
from protloc.losses import create_loss
from protloc.models import PackagedNetwork, create_model
from protloc.synth import make_dataset
from protloc.transforms import train_transform


def model_rate(
    name: str, *, size: int, batch: int, device: torch.device, compiled: bool, bf16: bool, seconds: float
) -> float:
    """Training images/s of one model on synthetic tensors already on the device."""
    torch.manual_seed(0)
    network = create_model(name, 4, 28).to(device).to(memory_format=torch.channels_last)
    step_network: Any = torch.compile(network) if compiled else network
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, fused=device.type == "cuda")
    loss_fn = create_loss("focal").to(device)
    x = torch.rand(batch, 4, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 28, device=device) > 0.9).float()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(step_network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up (and compilation)
        step()
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        step()
        count += 1
    _sync(device)
    return count * batch / (time.perf_counter() - start)


class NormalisedInWorkers(torch.utils.data.Dataset):
    """The earlier pipeline, for comparison: float32 normalised in the workers (4x the bytes of uint8)."""

    def __init__(self, dataset: CachedDataset, mean: list[float], std: list[float]) -> None:
        self.dataset = dataset
        self.normalise = PackagedNetwork(torch.nn.Identity(), mean, std)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> dict[str, Any]:
        sample = self.dataset[item]
        sample["image"] = self.normalise(sample["image"][None])[0]
        return sample


def loader_rate(
    cache: Any,
    labels: np.ndarray,
    *,
    size: int,
    batch: int,
    workers: int,
    seconds: float,
    device: torch.device,
    transport: str = "uint8",
) -> float:
    """Images/s that the DataLoader delivers to ``device``, augmented and normalised, with ``workers``
    processes; ``transport`` is what crosses the queues and the copy (``uint8`` or ``float32``)."""
    mean, std = [0.07] * 4, [0.15] * 4
    normalise = PackagedNetwork(torch.nn.Identity(), mean, std).to(device)  # as training: uint8 in, on the device
    dataset: Any = CachedDataset(cache, np.arange(len(cache)), labels, train_transform("standard", size, size))
    if transport == "float32":
        dataset = NormalisedInWorkers(dataset, mean, std)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=True,
    )
    images, start = 0, None
    while True:
        for batch_data in loader:
            x = batch_data["image"].to(device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = normalise(x)
            if start is None:  # the first batch pays for starting the workers
                _sync(device)
                start = time.perf_counter()
                continue
            images += len(x)
            if time.perf_counter() - start > seconds:
                _sync(device)
                return images / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the code path only")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--models", default="densenet121,resnet50")
    parser.add_argument("--workers", default="")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.smoke:
        args.size, args.batch, args.samples, args.models = 64, 4, 16, "resnet18"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke to check the code path on CPU", file=sys.stderr)
        sys.exit(2)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cpus = len(os.sched_getaffinity(0))
    worker_counts = [int(w) for w in args.workers.split(",") if w] or sorted({0, 2, min(8, cpus), cpus})
    if args.smoke:
        worker_counts = [0, 1]
    per = 1.0 if args.smoke else 12.0
    rows: list[list[Any]] = []
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "size": args.size,
        "batch": args.batch,
        "cpus": cpus,
    }

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, n_train=args.samples, n_test=0, size=args.size, seed=0, workers=min(cpus, 16))
        catalog = open_dataset(data)
        assert catalog.labels is not None
        cache = build_cache(
            catalog, ("red", "green", "blue", "yellow"), args.size, cache_dir=Path(tmp) / "cache", workers=min(cpus, 16)
        )
        measure = functools.partial(
            loader_rate, cache, catalog.labels, size=args.size, batch=args.batch, seconds=per / 2, device=device
        )
        loader_rates: dict[int, float] = {}
        for workers in worker_counts:
            rate = loader_rates[workers] = measure(workers=workers)
            rows.append([f"loader, {workers} workers", f"{rate:.0f}", "cache -> augment -> uint8 batch -> device"])
        results["loader"] = loader_rates
        most = max(worker_counts)
        before = measure(workers=most, transport="float32")
        results["loader_float32"] = {most: before}
        rows.append(
            [
                f"loader, {most} workers, float32 transport",
                f"{before:.0f}",
                f"normalised in the workers (before): uint8 is {loader_rates[most] / before:.2f}x",
            ]
        )
        best_loader = max(loader_rates.values())
        model_rates: dict[str, float] = {}
        for name in args.models.split(","):
            for compiled in (False, True) if not args.smoke else (False,):
                label = f"{name}, {'compiled' if compiled else 'eager'}, bf16, channels_last"
                remaining = args.budget - (time.perf_counter() - started)
                if remaining < (90 if compiled else 30) and not args.smoke:
                    rows.append([label, "skipped", f"{remaining:.0f} s left of the budget"])
                    continue
                try:
                    rate = model_rate(
                        name,
                        size=args.size,
                        batch=args.batch,
                        device=device,
                        compiled=compiled,
                        bf16=device.type == "cuda",
                        seconds=per,
                    )
                except Exception as exc:  # report, do not stop the run
                    rows.append([label, "failed", f"{exc.__class__.__name__}: {str(exc)[:80]}"])
                    continue
                model_rates[label] = rate
                fed = "yes" if best_loader >= rate else f"no: loader gives {best_loader / rate:.0%}"
                rows.append([label, f"{rate:.0f}", f"GPU fed by the loader: {fed}"])
        results["model"] = model_rates
    results["seconds"] = round(time.perf_counter() - started, 1)
    markdown = table(["what (512 px, batch 32)" if not args.smoke else "what (smoke)", "images/s", "notes"], rows)
    markdown += f"\n\n{results['device']}, {cpus} CPUs, {results['seconds']} s in all."
    save("gpu" if not args.smoke else "gpu_smoke", results, markdown)


if __name__ == "__main__":
    main()
