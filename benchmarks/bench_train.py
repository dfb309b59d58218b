"""Training throughput: `protloc train` (Lightning) vs a bare PyTorch loop over the same model, batch, data.

    python benchmarks/bench_train.py [--samples 3000] [--model resnet18] [--image-size 128] [--rounds 3]

Both read the same on-disk cache through the same Dataset, augmentation and DataLoader settings; both use
channels_last, float32, AdamW + focal loss, the full image size and every field once an epoch (the ``cpu``
recipe's bf16, progressive resolution and oversampling are switched off for the engine here: they change the
work per image, not the loop; with them the engine ran 1.98x the bare loop's images/s on 2026-12-06).
Throughput counts training steps only (validation excluded) and skips
the first epoch (warm-up). The two run alternately, ``--rounds`` times, and the medians are compared.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, table
from protloc.data.cache import build_cache
from protloc.data.catalog import open_dataset
from protloc.data.dataset import CachedDataset, make_folds
from protloc.data.transforms import train_transform
from protloc.model.network import PackagedNetwork, create_model
from protloc.synth import make_dataset
from protloc.training.config import resolve_config
from protloc.training.losses import create_loss
from protloc.training.train import _workers, read_metrics, train


def bare_loop(config, cache, labels, rows, mean, std, epochs: int = 2) -> float:  # type: ignore[no-untyped-def]
    """Images/s of a plain PyTorch loop (second epoch onwards)."""
    torch.manual_seed(0)
    dataset = CachedDataset(cache, rows, labels, train_transform(config.augment, config.stored_size, config.image_size))
    workers = _workers(config)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    backbone = create_model(config.model, len(config.channels), 28)
    model = PackagedNetwork(backbone, mean, std).to(memory_format=torch.channels_last)  # as training: uint8 in
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = create_loss("focal")
    rate = 0.0
    for epoch in range(epochs):
        model.train()
        images, start = 0, time.perf_counter()
        for batch in loader:
            x = batch["image"].contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(x)
        if epoch >= 1:
            rate = images / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, help="an existing Kaggle-layout data set to use instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data"
        if args.data is None:
            make_dataset(data, n_train=args.samples, n_test=0, size=256, seed=0, min_per_class=5)
        base = resolve_config(
            "cpu",
            overrides={
                "data": str(data),
                "model": args.model,
                "image_size": args.image_size,
                "epochs": 2,
                "cache_dir": str(Path(tmp) / "cache"),
                # the loop's overhead, like for like: the bare loop's float32 at full size, every field once
                # (the cpu recipe's bf16, progressive resolution and oversampling change the work, not the loop)
                "precision": "32-true",
                "resolution_schedule": "none",
                "oversample": 0.0,
            },
        )
        catalog = open_dataset(data)
        assert catalog.labels is not None
        start = time.perf_counter()
        cache = build_cache(catalog, base.channels, base.stored_size, cache_dir=base.cache_dir)
        cache_seconds = time.perf_counter() - start
        folds = make_folds(catalog.labels, base.folds, base.seed)
        rows = np.flatnonzero(folds != base.fold)
        mean, std = cache.channel_statistics(rows)
        bare, engine = [], []
        for round_index in range(args.rounds):
            bare.append(bare_loop(base, cache, catalog.labels, rows, mean, std))
            config = resolve_config("cpu", overrides={**base.to_dict(), "out": str(Path(tmp) / f"run{round_index}")})
            train(config)
            engine.append(read_metrics(Path(config.out) / "metrics.csv")[-1]["images_per_second"])
            print(f"round {round_index}: bare {bare[-1]:.1f} img/s, protloc {engine[-1]:.1f} img/s", flush=True)
        ratio = median(engine) / median(bare)
        markdown = table(
            ["loop", "images/s (median)", "runs"],
            [
                ["bare PyTorch loop", f"{median(bare):.1f}", ", ".join(f"{r:.1f}" for r in bare)],
                ["protloc train (Lightning)", f"{median(engine):.1f}", ", ".join(f"{r:.1f}" for r in engine)],
                ["ratio protloc / bare", f"{ratio:.2f}x", ""],
            ],
        )
        markdown += (
            f"\n\n{args.model} at {args.image_size} px, batch {base.batch_size}, "
            f"{len(rows)} training images, {_workers(base)} loader worker(s), "
            f"{torch.get_num_threads()} torch threads, augmentation '{base.augment}'."
        )
        save(
            "train_speed",
            {
                "model": args.model,
                "image_size": args.image_size,
                "batch_size": base.batch_size,
                "train_images": len(rows),
                "bare": bare,
                "protloc": engine,
                "ratio": ratio,
                "cache_build_seconds": cache_seconds,
            },
            markdown,
        )


if __name__ == "__main__":
    main()
