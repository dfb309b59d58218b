"""GPU training throughput, and whether protloc's data pipeline keeps the GPU fed.

    bash benchmarks/gpu.sh                      # on a machine with an NVIDIA GPU: < 8 minutes, one table
    python benchmarks/bench_gpu.py --smoke      # the same code path on CPU at toy sizes (used by the tests)

Measures, at 512 px with 4 input channels (``--parts`` chooses which and in what order; batches per item):

* model images/s for densenet121 and resnet50: bf16 autocast, channels_last, AdamW + focal loss, with and
  without ``torch.compile`` (data already on the GPU, so this is the model's ceiling);
* loader images/s: protloc's cache -> CachedDataset (standard augmentation) -> DataLoader with N workers ->
  pinned memory -> the GPU, normalised there (``uint8`` crosses the queues and the copy, as in training);
* the verdict: the pipeline keeps the GPU fed when loader images/s >= model images/s (the model rows give the
  loader's share when the loader part ran before them);
* end to end: ``protloc.training.train.train`` itself with the ``gpu`` recipe (cache, loader workers, augmentation,
  the GPU, validation, checkpoints) on synthetic fields at 512 px: training images/s of the last full epoch
  (``metrics.csv``), the validation rate, and from both the time of one epoch over 31,000 fields (the 2018
  Kaggle training set: 24,800 trained, 6,200 validated with the default five folds).

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
from protloc.data.cache import build_cache
from protloc.data.catalog import open_dataset
from protloc.data.dataset import CachedDataset
from protloc.data.transforms import train_transform
from protloc.model.network import PackagedNetwork, create_model
from protloc.synth import make_dataset
from protloc.training.config import resolve_config
from protloc.training.losses import create_loss
from protloc.training.run_folder import read_metrics
from protloc.training.train import train

KAGGLE_FIELDS = 31_000


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


def loader_rate(
    cache: Any,
    labels: np.ndarray,
    *,
    size: int,
    batch: int,
    workers: int,
    seconds: float,
    device: torch.device,
) -> float:
    """Images/s that the DataLoader delivers to ``device``, augmented and normalised, with ``workers``
    processes; uint8 crosses the queues and the copy, as in training."""
    mean, std = [0.07] * 4, [0.15] * 4
    normalise = PackagedNetwork(torch.nn.Identity(), mean, std).to(device)  # as training: uint8 in, on the device
    dataset: Any = CachedDataset(cache, np.arange(len(cache)), labels, train_transform("standard", size, size))
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


def end_to_end(
    data: Path, work: Path, *, model: str, batch: int, epochs: int, size: int, workers: int | None
) -> dict[str, Any]:
    """``protloc train --recipe gpu`` on ``data``: the rates of its last full epoch, and one epoch over
    31,000 fields extrapolated from them."""
    overrides: dict[str, Any] = {
        "data": str(data),
        "out": str(work / f"run-{model}-{batch}"),
        "cache_dir": str(work / "cache"),
        "model": model,
        "batch_size": batch,
        "epochs": epochs,
        "image_size": size,
        "workers": workers,
        "seed": 0,
    }
    config = resolve_config("gpu", overrides=overrides)
    started = time.perf_counter()
    result = train(config, overwrite=True)
    assert result is not None
    rows = read_metrics(result.run_dir / "metrics.csv")
    last = rows[-1]  # the first epoch pays for cuDNN's autotuning and the workers' start
    n_val = result.report.n_samples  # the validation fold the report scored
    n_train = len(open_dataset(data)) - n_val
    train_rate = float(last["images_per_second"])
    val_seconds = max(float(last["seconds"]) - n_train / train_rate, 1e-6)
    val_rate = n_val / val_seconds if n_val else float("nan")
    kaggle_val = KAGGLE_FIELDS // config.folds
    epoch_seconds = (KAGGLE_FIELDS - kaggle_val) / train_rate + kaggle_val / val_rate
    return {
        "model": model,
        "batch": batch,
        "precision": config.precision,
        "workers": workers,
        "epochs": len(rows),
        "n_train": n_train,
        "n_val": n_val,
        "train_images_per_second": round(train_rate, 1),
        "val_images_per_second": round(val_rate, 1),
        "epoch_rates": [round(float(r["images_per_second"]), 1) for r in rows],
        "kaggle_epoch_seconds": round(epoch_seconds, 1),
        "all_fields_trained_seconds": round(KAGGLE_FIELDS / train_rate, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "phases": {k: round(v, 1) for k, v in result.seconds.items()},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _specs(text: str) -> list[tuple[str, int, bool, int | None]]:
    """``name:batch[:compiled][:wN]`` items, comma-separated (``wN``: N loader workers)."""
    specs = []
    for item in filter(None, text.split(",")):
        name, batch, *rest = item.split(":")
        workers = next((int(r[1:]) for r in rest if r.startswith("w")), None)
        specs.append((name, int(batch), "compiled" in rest, workers))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the code path only")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--parts", default="e2e,model,loader", help="which measurements, in this order")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="the loader's batch")
    parser.add_argument("--fields", type=int, default=4000, help="synthetic fields (the e2e run trains on them)")
    parser.add_argument(
        "--e2e",
        default="densenet121:32,resnet50:64",
        help="model:batch[:wN] runs of protloc train --recipe gpu (wN: N loader workers)",
    )
    parser.add_argument("--e2e-epochs", type=int, default=3, help="epochs of each end-to-end run (last one counts)")
    parser.add_argument(
        "--models",
        default="densenet121:32,densenet121:128,resnet50:64,resnet50:64:compiled",
        help="model:batch[:compiled] training steps on data already on the device",
    )
    parser.add_argument("--workers", default="", help="loader worker counts to try (default 8 and all)")
    parser.add_argument("--work", type=Path, default=None, help="keep the data here (default: a temporary folder)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.smoke:
        args.size, args.batch, args.fields = 64, 4, 40
        args.e2e, args.e2e_epochs, args.models = "resnet18:8", 2, "resnet18:4"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke to check the code path on CPU", file=sys.stderr)
        sys.exit(2)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cpus = len(os.sched_getaffinity(0))
    worker_counts = [int(w) for w in args.workers.split(",") if w] or sorted({min(8, cpus), cpus})
    if args.smoke:
        worker_counts = [0, 1]
    per = 1.0 if args.smoke else 12.0
    rows: list[list[Any]] = []
    name = "gpu" if not args.smoke else "gpu_smoke"
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "size": args.size,
        "cpus": cpus,
        "e2e": [],
        "model": {},
        "loader": {},
    }

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    def report() -> None:  # after every measurement: a run cut short keeps what it measured
        results["seconds"] = round(time.perf_counter() - started, 1)
        markdown = table([f"what ({args.size} px)", "images/s", "notes"], rows)
        markdown += f"\n\n{results['device']}, {cpus} CPUs, {results['seconds']} s in all."
        save(name, results, markdown, echo=False)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = work / "data"
        if not (data / "train.csv").is_file():
            t0 = time.perf_counter()
            make_dataset(data, n_train=args.fields, n_test=0, size=args.size, seed=0, workers=min(cpus, 16))
            print(f"{args.fields} synthetic fields in {time.perf_counter() - t0:.0f} s", flush=True)
        for part in args.parts.split(","):
            if part == "e2e":
                for model, batch, _, e2e_workers in _specs(args.e2e):
                    label = f"end to end: protloc train --recipe gpu --model {model} --batch-size {batch}"
                    label += f" --workers {e2e_workers}" if e2e_workers is not None else ""
                    if left() < 60 and not args.smoke:
                        rows.append([label, "skipped", f"{left():.0f} s left of the budget"])
                        continue
                    try:
                        run = end_to_end(
                            data,
                            work,
                            model=model,
                            batch=batch,
                            epochs=args.e2e_epochs,
                            size=args.size,
                            workers=1 if args.smoke else e2e_workers,
                        )
                    except Exception as exc:  # report, do not stop the run
                        rows.append([label, "failed", f"{exc.__class__.__name__}: {str(exc)[:120]}"])
                        report()
                        continue
                    results["e2e"].append(run)
                    verdict = "meets" if run["train_images_per_second"] >= 1000 else "below"
                    rows.append(
                        [
                            label,
                            f"**{run['train_images_per_second']:.0f}**",
                            f"{run['precision']}, last of {run['epochs']} epochs over {run['n_train']} fields "
                            f"(epochs: {', '.join(f'{r:.0f}' for r in run['epoch_rates'])}); validation "
                            f"{run['val_images_per_second']:.0f} img/s; one epoch over {KAGGLE_FIELDS:,} fields "
                            f"(4/5 trained, 1/5 validated): **{run['kaggle_epoch_seconds']:.0f} s**; "
                            f"{verdict} the 1,000 img/s target",
                        ]
                    )
                    print(rows[-1], flush=True)
                    report()
            elif part == "model":
                for model, batch, compiled, _ in _specs(args.models):
                    label = f"{model}, batch {batch}, {'compiled' if compiled else 'eager'}, bf16, channels_last"
                    if left() < (90 if compiled else 30) and not args.smoke:
                        rows.append([label, "skipped", f"{left():.0f} s left of the budget"])
                        continue
                    try:
                        rate = model_rate(
                            model,
                            size=args.size,
                            batch=batch,
                            device=device,
                            compiled=compiled,
                            bf16=device.type == "cuda",
                            seconds=per,
                        )
                    except Exception as exc:  # report, do not stop the run
                        rows.append([label, "failed", f"{exc.__class__.__name__}: {str(exc)[:80]}"])
                        continue
                    results["model"][label] = rate
                    best_loader = max(results["loader"].values(), default=None)
                    fed = "" if best_loader is None else f"; loader gives {best_loader / rate:.0%} of it"
                    rows.append([label, f"{rate:.0f}", f"training steps on data already on the device{fed}"])
                    print(rows[-1], flush=True)
                    report()
            elif part == "loader":
                catalog = open_dataset(data)
                assert catalog.labels is not None
                cache = build_cache(
                    catalog,
                    ("red", "green", "blue", "yellow"),
                    args.size,
                    cache_dir=work / "cache",
                    workers=min(cpus, 16),
                )
                measure = functools.partial(
                    loader_rate, cache, catalog.labels, size=args.size, batch=args.batch, seconds=per / 2, device=device
                )
                for workers in worker_counts:
                    if left() < 20 and not args.smoke:
                        break
                    rate = results["loader"][workers] = measure(workers=workers)
                    rows.append(
                        [
                            f"loader, {workers} workers, batch {args.batch}",
                            f"{rate:.0f}",
                            "cache -> augment -> uint8 -> device",
                        ]
                    )
                    print(rows[-1], flush=True)
                    report()
            else:
                raise SystemExit(f"unknown part {part!r}: choose from e2e, model, loader")
    report()
    print(table([f"what ({args.size} px)", "images/s", "notes"], rows))


if __name__ == "__main__":
    main()
