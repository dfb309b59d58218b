"""A plain reference: resnet18 trained for a wall-clock budget on the Kaggle HPA 2018 layout, in plain PyTorch.

    python benchmarks/reference_train.py --data DIR --out OUT --minutes 12 [--threads 1] [--size 128]
        [--seed 0] [--num-classes 28]

It is the baseline protloc's default recipe is measured against, so it imports nothing from protloc.
Recipe: timm resnet18 (random init, 4 input channels red/green/blue/yellow), AdamW (peak lr 2e-3, weight
decay 1e-4), BCEWithLogits, batch 32, random flips and 90-degree rotations, channels_last, images /255 then
normalised by per-channel mean/std of the training split. The learning rate is a one-cycle over wall-clock
time (progress = elapsed / budget; cosine warm-up from peak/20 over 20%, cosine decay to peak/4000, the shape
of OneCycleLR with div_factor 20, final_div_factor 200); training stops at the first step that starts past
the budget. The FINAL weights (no checkpoint selection) predict a stratified 20% validation split, on which
one threshold per class is fitted (grid 0.05-0.95, the middle of the plateau of best F1; 0.5 for a class
with no validation positive), then the test set. Loading the images (all into RAM first) and the final
predictions are timed apart from the training budget.

Reads DIR/train.csv and DIR/test_truth.csv (``Id,Target``, Target = space-separated class ids) with images
DIR/{train,test}/<Id>_{red,green,blue,yellow}.png. Writes to OUT: test_probabilities.npy (float32, rows in
test_truth.csv order), val_probabilities.npy and val_truth.npy (the validation split, for rescoring other
decision rules), test_ids.txt, thresholds.json and, last, result.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

CHANNELS = ("red", "green", "blue", "yellow")
GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def read_table(path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.zeros((len(rows), num_classes), np.float32)
    for i, row in enumerate(rows):
        targets = [int(t) for t in row["Target"].split()]
        if any(not 0 <= t < num_classes for t in targets):
            raise SystemExit(f"{path}: {row['Id']} has a class outside 0-{num_classes - 1}: {row['Target']}")
        labels[i, targets] = 1
    return [row["Id"] for row in rows], labels


def load_image(folder: Path, sample_id: str, size: int) -> np.ndarray:
    planes = []
    for channel in CHANNELS:
        path = folder / f"{sample_id}_{channel}.png"
        plane = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if plane is None:
            raise SystemExit(f"cannot read {path}")
        if plane.shape != (size, size):
            plane = cv2.resize(plane, (size, size), interpolation=cv2.INTER_AREA)
        planes.append(plane)
    return np.stack(planes)


def load_all(folder: Path, ids: list[str], size: int, threads: int) -> np.ndarray:
    images = np.empty((len(ids), len(CHANNELS), size, size), np.uint8)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i, image in enumerate(pool.map(lambda s: load_image(folder, s, size), ids)):
            images[i] = image
    return images


def onecycle(
    progress: float, peak: float = 2e-3, warmup: float = 0.2, div: float = 20.0, final_div: float = 200.0
) -> float:
    p = min(max(progress, 0.0), 1.0)
    start, end = peak / div, peak / (div * final_div)
    if p < warmup:
        return peak + (start - peak) * 0.5 * (1 + math.cos(math.pi * p / warmup))
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (p - warmup) / (1 - warmup)))


def to_tensor(batch: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image turned by a random multiple of 90 degrees and flipped or not (the 8 symmetries of a square)."""
    out = np.empty_like(batch)
    for i, image in enumerate(batch):
        image = np.rot90(image, int(rng.integers(4)), axes=(1, 2))
        out[i] = image[:, :, ::-1] if rng.random() < 0.5 else image
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    model.eval()
    parts = [torch.sigmoid(model(to_tensor(images[i : i + 64], mean, std))) for i in range(0, len(images), 64)]
    return torch.cat(parts).numpy().astype(np.float32)


def f1_per_class(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """As protloc.metrics: 0 where a class has positives but no true positive; nan where it has no support."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    tp = (truth & predicted).sum(axis=0).astype(np.float64)
    fp = (~truth & predicted).sum(axis=0).astype(np.float64)
    fn = (truth & ~predicted).sum(axis=0).astype(np.float64)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return np.where(tp + fn > 0, f1, np.nan)


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Macro F1 over the classes with a positive in the truth (as protloc.metrics), micro F1, exact match."""
    per_class = f1_per_class(truth, predicted)
    t, p = truth.astype(bool), predicted.astype(bool)
    tp, wrong = (t & p).sum(), (t ^ p).sum()
    return {
        "macro_f1": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0,
        "classes_scored": int(np.isfinite(per_class).sum()),
        "micro_f1": float(2 * tp / (2 * tp + wrong)) if 2 * tp + wrong > 0 else 0.0,
        "exact_match": float((t == p).all(axis=1).mean()) if len(t) else 0.0,
    }


def fit_thresholds(truth: np.ndarray, probabilities: np.ndarray) -> list[float]:
    thresholds = []
    for c in range(truth.shape[1]):
        positive = truth[:, c].astype(bool)
        if not positive.any():
            thresholds.append(0.5)
            continue
        predicted = probabilities[:, c][:, None] >= GRID[None, :]
        tp = (predicted & positive[:, None]).sum(axis=0)
        f1 = 2 * tp / (predicted.sum(axis=0) + positive.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        thresholds.append(float(GRID[best[len(best) // 2]]))
    return thresholds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True, help="training budget (wall clock)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    train_ids, labels = read_table(args.data / "train.csv", args.num_classes)
    test_ids, test_truth = read_table(args.data / "test_truth.csv", args.num_classes)
    images = load_all(args.data / "train", train_ids, args.size, args.threads)
    test_images = load_all(args.data / "test", test_ids, args.size, args.threads)
    load_seconds = time.monotonic() - started

    split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=args.seed)
    fit_index, val_index = next(split.split(np.zeros(len(labels)), labels))
    x_fit, y_fit, x_val, y_val = images[fit_index], labels[fit_index], images[val_index], labels[val_index]
    planes = [x_fit[:, c].astype(np.float32) / 255 for c in range(len(CHANNELS))]
    mean = torch.tensor([p.mean(dtype=np.float64) for p in planes], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor([p.std(dtype=np.float64) for p in planes], dtype=torch.float32).view(1, -1, 1, 1)
    del planes

    model = timm.create_model("resnet18", pretrained=False, in_chans=len(CHANNELS), num_classes=args.num_classes)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=onecycle(0.0), weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    budget = args.minutes * 60
    order, steps, seen, batch_size = np.empty(0, np.int64), 0, 0, 32
    model.train()
    train_started = time.monotonic()
    while (elapsed := time.monotonic() - train_started) < budget:
        if len(order) < batch_size:  # the next epoch's permutation, after what is left of this one
            order = np.concatenate([order, rng.permutation(len(x_fit))])
        index, order = order[:batch_size], order[batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = onecycle(elapsed / budget)
        x = to_tensor(augment(x_fit[index], rng), mean, std)
        loss = loss_fn(model(x), torch.from_numpy(y_fit[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, seen = steps + 1, seen + len(index)
    train_seconds = time.monotonic() - train_started

    eval_started = time.monotonic()
    val_probabilities = predict(model, x_val, mean, std)
    thresholds = fit_thresholds(y_val, val_probabilities)
    test_probabilities = predict(model, test_images, mean, std)
    eval_seconds = time.monotonic() - eval_started
    cut = np.asarray(thresholds)
    result = {
        "recipe": "reference resnet18, AdamW 2e-3/1e-4, batch 32, flips+rot90, one-cycle over wall clock",
        "minutes": args.minutes,
        "threads": args.threads,
        "size": args.size,
        "seed": args.seed,
        "n_fit": len(x_fit),
        "n_val": len(x_val),
        "n_test": len(test_ids),
        "epochs": seen / len(x_fit),
        "steps": steps,
        "images_seen": seen,
        "train_seconds": train_seconds,
        "load_seconds": load_seconds,
        "eval_seconds": eval_seconds,
        "images_per_second": seen / train_seconds if train_seconds > 0 else 0.0,
        "final_loss": float(loss.item()) if steps else None,
        "val": scores(y_val, val_probabilities >= cut),
        "test": scores(test_truth, test_probabilities >= cut),
        "test_at_0_5": scores(test_truth, test_probabilities >= 0.5),
    }
    np.save(args.out / "test_probabilities.npy", test_probabilities)
    np.save(args.out / "val_probabilities.npy", val_probabilities.astype(np.float32))
    np.save(args.out / "val_truth.npy", y_val.astype(np.uint8))
    (args.out / "test_ids.txt").write_text("".join(f"{i}\n" for i in test_ids))
    (args.out / "thresholds.json").write_text(json.dumps(thresholds))
    (args.out / "result.json.tmp").write_text(json.dumps(result, indent=2))
    (args.out / "result.json.tmp").replace(args.out / "result.json")  # last, and whole: its presence means done
    test, half = result["test"], result["test_at_0_5"]
    print(
        f"reference: {steps} steps, {result['epochs']:.2f} epochs, {result['images_per_second']:.1f} img/s in "
        f"{train_seconds:.1f} s (load {load_seconds:.1f} s) | val macro F1 {result['val']['macro_f1']:.4f} | "
        f"test macro F1 {test['macro_f1']:.4f} micro {test['micro_f1']:.4f} exact {test['exact_match']:.4f} | "
        f"at 0.5: macro {half['macro_f1']:.4f} micro {half['micro_f1']:.4f} exact {half['exact_match']:.4f}"
    )


if __name__ == "__main__":
    main()
