"""A cell model with an image-level head: trained on the cells of each field against the field's labels.

Weak labels say what a *field* shows, not what each of its cells shows. The 2021 challenge's winners trained
cell models on whole fields' worth of cells at once (multiple-instance learning): a network scores every
cell's crop, an **image head** pools the cells' scores into the field's, and the loss is

    image_weight x BCE(pooled, field labels)  +  cell_weight x BCE(each cell, its labels)

with ``1`` and ``0.1`` as the winners used. The pooled score only needs *some* cell of a field to show a
class, so cells that do not show it are free to score low, which copying the field's labels to every cell
never allows; the small cell term keeps each cell's own score meaningful. The score of a cell is then
``cell x image`` (see :mod:`protloc.cells.fusion`).

The pool is log-sum-exp over the cells' logits, ``(1/r) log(mean exp(r z))`` (between the mean, ``r`` -> 0,
and the max, ``r`` -> inf); the same pool runs at prediction from the card
(:class:`protloc.cells.fusion.ImageHead`), so the package is an ordinary cell model (one logit per class per
crop) that exports to ONNX unchanged.

The story of :func:`train_mil`: open the cell data set and cache its crops (the same bounded uint8 cache as
any training), group the cells by field, then for a time budget draw batches of fields (up to ``max_cells``
cells each), augment each crop by a random symmetry of the square, and step AdamW under a warm-up + cosine
schedule of the elapsed share of the budget; finally fit thresholds on the held-out fields and write the
package. Cells cut by the border, and small ones, can weigh less in the cell term (``border_weight``,
``small_weight``). A killed run starts again from the beginning (:mod:`protloc.training.cells` skips it once
finished).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc.cells.fusion import ImageHead, cells_section, field_maxima, small_cells
from protloc.errors import ConfigError, DataError


@dataclass(frozen=True)
class MilSettings:
    """How :func:`train_mil` trains (a model's crop size comes from the cell data set)."""

    model: str = "resnet18"
    fields_per_step: int = 8
    max_cells: int = 16
    """cells drawn from a field per step (all when it has fewer)."""
    image_weight: float = 1.0
    cell_weight: float = 0.1
    sharpness: float = 4.0
    """``r`` of the log-sum-exp pool."""
    lr: float = 2e-3
    weight_decay: float = 1e-4
    epochs: int = 40
    """a ceiling; the time budget ends training first when given."""
    seconds: float | None = None
    """a budget for the whole of :func:`train_mil` (opening the data, training, validation)."""
    border_weight: float = 1.0
    small_weight: float = 1.0
    small_fraction: float = 0.25
    validation_fold: int = 0
    """fields of this fold are held out (thresholds, fusion); -1: train on every field."""
    seed: int = 0
    bf16: bool | None = None
    """bfloat16 autocast on the CPU (default: where the CPU computes it natively)."""
    init: str | None = None
    """a package (same architecture, channels and classes) whose network starts the cell model instead of random
    weights: the pipeline passes its field model, which learned the classes from the same fields."""

    def __post_init__(self) -> None:
        if self.fields_per_step < 1 or self.max_cells < 1:
            raise ConfigError("fields_per_step and max_cells must be at least 1")
        if self.image_weight < 0 or self.cell_weight < 0 or self.image_weight + self.cell_weight == 0:
            raise ConfigError("image_weight and cell_weight must be >= 0, and not both 0")
        if self.sharpness <= 0:
            raise ConfigError(f"sharpness must be positive, got {self.sharpness}")
        if self.seconds is not None and self.seconds <= 0:
            raise ConfigError(f"the time budget must be positive, got {self.seconds} s")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["init"] is None:  # as before there was a choice (digests of finished runs stay valid)
            del data["init"]
        return data


@dataclass
class MilResult:
    """What :func:`train_mil` made."""

    package_dir: Path
    steps: int
    epochs: float
    seconds: float
    validation: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Bags:
    """The cells of a cell data set, grouped by field, in the cache's row order."""

    fields: list[str]
    rows: list[np.ndarray]
    """per field, the cache rows of its cells."""
    field_labels: np.ndarray
    """``(F, K)``."""
    cell_labels: np.ndarray
    """``(N, K)``."""
    weights: np.ndarray
    """``(N,)`` cell-term weight of each cell."""
    folds: np.ndarray
    """``(F,)``."""


def _bags(
    cell_data: Path, ids: list[str], labels: np.ndarray, field_labels: Mapping[str, np.ndarray] | None, s: MilSettings
) -> _Bags:
    from protloc.cells.dataset import read_geometry, split_cell_sample_id
    from protloc.data.dataset import load_folds

    by_field: dict[str, list[int]] = {}
    for row, sample_id in enumerate(ids):
        by_field.setdefault(split_cell_sample_id(sample_id)[0], []).append(row)
    fields = list(by_field)
    rows = [np.asarray(by_field[f], dtype=np.int64) for f in fields]
    if field_labels is not None:
        missing = [f for f in fields if f not in field_labels]
        if missing:
            raise DataError(f"{cell_data}: no field labels for field {missing[0]}")
        image = np.stack([np.asarray(field_labels[f], dtype=np.float32) for f in fields])
    else:  # the union of the cells' labels: the field's labels for weak cell labels
        image = np.stack([labels[r].max(axis=0) for r in rows]).astype(np.float32)
    areas, border = read_geometry(cell_data, ids)
    weights = np.ones(len(ids), np.float32)
    weights[border] *= s.border_weight
    for r in rows:
        weights[r[small_cells(areas[r], s.small_fraction)]] *= s.small_weight
    cell_folds = load_folds(cell_data / "folds.csv", ids)
    folds = np.asarray([cell_folds[r[0]] for r in rows], dtype=np.int64)
    return _Bags(fields, rows, image, labels.astype(np.float32), weights, folds)


def lse_pool(logits: Any, sharpness: float) -> Any:
    """The image head in torch: ``(N, K)`` cell logits -> ``(K,)`` (as :class:`~protloc.cells.fusion.ImageHead`)."""
    import torch

    return (torch.logsumexp(sharpness * logits, dim=0) - math.log(logits.shape[0])) / sharpness


def _augment(batch: Any, generator: Any) -> Any:
    """A random symmetry of the square per crop (quarter turns and a flip)."""
    import torch

    turns = torch.randint(0, 4, (batch.shape[0],), generator=generator)
    flips = torch.randint(0, 2, (batch.shape[0],), generator=generator).bool()
    out = batch.clone()
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], k, dims=(-2, -1))
    out[flips] = out[flips].flip(-1)
    return out


def _learning_rate(peak: float, progress: float) -> float:
    """Warm up for the first 5% of training, then a cosine to 2% of ``peak``."""
    if progress < 0.05:
        return peak * (0.1 + 0.9 * progress / 0.05)
    share = min(1.0, (progress - 0.05) / 0.95)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * share)))


def train_mil(
    cell_data: str | Path,
    out: str | Path,
    settings: MilSettings | None = None,
    *,
    field_labels: Mapping[str, np.ndarray] | None = None,
    cell_labels: Mapping[str, np.ndarray] | None = None,
    train_fields: Collection[str] | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    on_progress: Callable[[float, float], None] | None = None,
) -> MilResult:
    """Train a cell model with an image head on a cell data set and write its package to ``out``.

    Args:
        cell_data: a cell data set (:func:`protloc.cells.dataset.make_cell_dataset`); its per-cell labels are
            the targets of the cell term (the field's for weak labels; refined ones after pseudo-labelling).
        out: the package folder (written atomically).
        field_labels: field Id -> multi-hot, the targets of the image term (default: the union of its cells').
        cell_labels: cell sample Id -> multi-hot, the targets of the cell term instead of the data set's (e.g.
            pseudo-labels, :mod:`protloc.cells.pseudo`).
        train_fields: train on these fields only (default: every field outside ``validation_fold``).
        workers: processes that fill the crop cache (default: from the CPU count).
        on_progress: ``on_progress(seconds or steps done, planned)``.

    Raises:
        ConfigError, DataError: bad settings, or a data set without cells or geometry.
    """
    import torch

    from protloc.cells.dataset import cell_dataset_scheme, read_cell_settings
    from protloc.data.cache import build_cache
    from protloc.data.catalog import open_dataset
    from protloc.utils import usable_cpus

    began = time.perf_counter()
    s = settings or MilSettings()
    cell_data = Path(cell_data)
    spec = read_cell_settings(cell_data)
    if spec is None:
        raise DataError(f"{cell_data}: not a cell data set (no cells.json)")
    catalog = open_dataset(
        cell_data, channels=tuple(spec["channels"]), scheme=cell_dataset_scheme(cell_data), allow_empty_labels=True
    )
    assert catalog.labels is not None
    scheme = catalog.scheme
    size = int(spec["crop_size"])
    cache = build_cache(catalog, tuple(spec["channels"]), size, cache_dir=cache_dir, workers=workers)
    crops = cache.memmap()
    labels = catalog.labels
    if cell_labels is not None:
        missing = [i for i in catalog.ids if i not in cell_labels]
        if missing:
            raise DataError(f"no cell labels given for {missing[0]}")
        labels = np.stack([np.asarray(cell_labels[i]) for i in catalog.ids])
    bags = _bags(cell_data, list(catalog.ids), labels, field_labels, s)
    val_fields = np.flatnonzero(bags.folds == s.validation_fold)
    if train_fields is None:
        chosen = np.flatnonzero(bags.folds != s.validation_fold)
    else:
        wanted = set(train_fields)
        chosen = np.asarray([f for f, name in enumerate(bags.fields) if name in wanted], dtype=np.int64)
    if len(chosen) == 0:
        raise DataError(f"{cell_data}: no fields to train on")
    torch.manual_seed(s.seed)
    torch.set_num_threads(usable_cpus())
    channels = tuple(spec["channels"])
    mean, std = cache.channel_statistics(np.concatenate([bags.rows[f] for f in chosen]), seed=s.seed)
    network = _network(s, channels, scheme.names, mean, std)
    optimizer = torch.optim.AdamW(network.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    bf16 = s.bf16 if s.bf16 is not None else _fast_bf16()
    rng = np.random.default_rng(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    steps_per_epoch = max(1, math.ceil(len(chosen) / s.fields_per_step))
    planned = s.epochs * steps_per_epoch
    started = time.perf_counter()
    # the budget covers the whole call: what opening the data took, and a tenth kept for validation
    train_seconds = max(1.0, 0.9 * s.seconds - (started - began)) if s.seconds else None
    step = 0
    network.train()
    for fields in _batches(chosen, s.fields_per_step, s.epochs, rng):
        elapsed = time.perf_counter() - started
        progress = elapsed / train_seconds if train_seconds else step / planned
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(s.lr, progress)
        picked = [_draw(bags.rows[f], s.max_cells, rng) for f in fields]
        loss = _step_loss(network, crops, bags, fields, picked, s, bf16, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if on_progress:
            if train_seconds:
                on_progress(min(time.perf_counter() - started, train_seconds), train_seconds)
            else:
                on_progress(step, planned)
    seconds = time.perf_counter() - started
    network.eval()
    validation, thresholds = _validate(network, crops, bags, val_fields, s, scheme.names)
    package = _package(
        Path(out), network, spec, scheme, s, thresholds, validation, catalog, mean, std, step, seconds, steps_per_epoch
    )
    return MilResult(package, step, step / steps_per_epoch, seconds, validation)


def _network(s: MilSettings, channels: tuple[str, ...], names: Any, mean: list[float], std: list[float]) -> Any:
    """The cell model to train: random weights, or the ``init`` package's; channels-last for the CPU."""
    import torch

    from protloc.model.network import PackagedNetwork, create_model

    backbone = create_model(s.model, len(channels), len(names), drop_rate=0.2)
    if s.init is not None:
        _start_from(backbone, s.init, s.model, channels, names)
    return PackagedNetwork(backbone, mean, std).to(memory_format=torch.channels_last)


def _start_from(backbone: Any, package_path: str, model: str, channels: tuple[str, ...], names: Any) -> None:
    """Load a package's backbone weights into ``backbone`` (its own input normalisation is not taken: the crops
    get theirs)."""
    from protloc.model.package import load_package

    package = load_package(package_path)
    card = package.card
    if package.is_ensemble or card.architecture.name != model:
        raise ConfigError(f"{package_path}: a {card.architecture.name} model cannot start a {model} cell model")
    if tuple(card.channels) != channels or tuple(card.classes) != tuple(names):
        raise ConfigError(f"{package_path}: its channels or classes differ from the cell data set's")
    try:
        source: Any = package.build_model().backbone  # a PackagedNetwork's backbone (single models only)
        backbone.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise ConfigError(
            f"{package_path}: its weights do not fit the cell model ({str(exc).splitlines()[0]})"
        ) from None


def _fast_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return False
    from protloc.training.train import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


def _batches(fields: np.ndarray, size: int, epochs: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``epochs`` passes over ``fields`` in a new random order each, ``size`` fields at a time."""
    for _ in range(epochs):
        order = rng.permutation(fields)
        for first in range(0, len(order), size):
            yield order[first : first + size]


def _draw(rows: np.ndarray, most: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= most else np.sort(rng.choice(rows, size=most, replace=False))


def _step_loss(
    network: Any,
    crops: np.ndarray,
    bags: _Bags,
    fields: np.ndarray,
    picked: list[np.ndarray],
    s: MilSettings,
    bf16: bool,
    generator: Any,
) -> Any:
    """The loss of one batch of fields (see the module docstring)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    rows = np.concatenate(picked)
    batch = _augment(torch.from_numpy(np.ascontiguousarray(crops[rows])), generator)
    batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        logits = network(batch).float()
    cell_targets = torch.from_numpy(bags.cell_labels[rows])
    weights = torch.from_numpy(bags.weights[rows])
    cell_loss = (F.binary_cross_entropy_with_logits(logits, cell_targets, reduction="none").mean(1) * weights).sum()
    cell_loss = cell_loss / weights.sum().clamp_min(1e-6)
    pooled, start = [], 0
    for chosen in picked:
        pooled.append(lse_pool(logits[start : start + len(chosen)], s.sharpness))
        start += len(chosen)
    image_targets = torch.from_numpy(bags.field_labels[fields])
    image_loss = F.binary_cross_entropy_with_logits(torch.stack(pooled), image_targets)
    return s.image_weight * image_loss + s.cell_weight * cell_loss


def predict_crops(network: Any, crops: np.ndarray, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Sigmoid probabilities ``(len(rows), K)`` of cached crops, through the prediction core."""
    from protloc.inference.core import Preprocessor, run_with_tta
    from protloc.inference.torch_backend import TorchBackend

    backend = TorchBackend(network, device="cpu")
    parts = [
        run_with_tta(backend, Preprocessor.to_pixels(np.asarray(crops[rows[i : i + batch_size]])), ("id",))
        for i in range(0, len(rows), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def _validate(
    network: Any, crops: np.ndarray, bags: _Bags, val_fields: np.ndarray, s: MilSettings, names: tuple[str, ...]
) -> tuple[dict[str, Any], list[float]]:
    """Field-level scores of the image head on held-out fields (a sample of training fields when none is held
    out), and per-class thresholds for the cells, fitted on each field's highest cell score against its labels
    (a field shows what its cells show)."""
    from protloc.metrics import evaluate, fit_thresholds

    fields = val_fields if len(val_fields) else np.arange(min(len(bags.fields), 200))
    rows = [bags.rows[f] for f in fields]
    order = np.concatenate(rows)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    probabilities = predict_crops(network, crops, order)
    maxima = field_maxima(probabilities, offsets)
    truth = bags.field_labels[fields].astype(np.int64)
    thresholds = [float(t) for t in fit_thresholds(truth, maxima).values]
    head = ImageHead(s.sharpness)
    pooled = np.stack([head(probabilities[a:b]) for a, b in itertools.pairwise(offsets)])
    report = evaluate(truth, pooled, fit_thresholds(truth, pooled).values, min_one=False, class_names=names)
    return {"fields": len(fields), "image_head": report.summary(), "held_out": bool(len(val_fields))}, thresholds


def _package(
    out: Path,
    network: Any,
    spec: dict[str, Any],
    scheme: Any,
    s: MilSettings,
    thresholds: list[float],
    validation: dict[str, Any],
    catalog: Any,
    mean: list[float],
    std: list[float],
    steps: int,
    seconds: float,
    steps_per_epoch: int,
) -> Path:
    from protloc.model.card import Architecture, Decision
    from protloc.model.network import count_parameters
    from protloc.model.package import new_card, save_package

    size = int(spec["crop_size"])
    card = new_card(
        architecture=Architecture(
            s.model,
            in_chans=len(spec["channels"]),
            num_classes=scheme.num_classes,
            image_size=size,
            extra={"parameters": count_parameters(network), "source": "timm"},
        ),
        channels=list(spec["channels"]),
        size=size,
        mean=mean,
        std=std,
        thresholds=thresholds,
        threshold_info={"methods": ["fitted on held-out fields' highest cell score"] * scheme.num_classes},
        decision=Decision("probability >= per-class threshold", min_one=False),
        metrics={"validation": validation},
        training={
            "data": str(Path(catalog.image_dir).parent.resolve()),
            "n_samples": len(catalog),
            "kind": "multiple-instance: cells of each field against its labels",
            "mil": s.to_dict(),
            "global_step": steps,
            "epochs_run": round(steps / steps_per_epoch, 2),
            "fit_seconds": round(seconds, 1),
        },
        scheme=scheme,
        cells=cells_section(spec, image_head=ImageHead(s.sharpness)),
    )
    return save_package(out, network, card)
