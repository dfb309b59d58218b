"""Adapting a model package to a new microscope without labels: ``protloc adapt MODEL DATA --out PACKAGE``.

A model trained where labels exist (HPA releases, synthetic fields) is used where they do not: another camera,
staining batch, cell line or gain. Two cheap re-estimations often pay there, and neither touches a learned
weight:

* ``norm``: the per-channel intensity normalisation (the card's ``input.mean`` / ``input.std``, applied inside
  the packaged network) re-estimated on the target fields, as training estimated it on its own fields;
* ``bn``: AdaBN, the batch-norm layers' running means and variances re-estimated on the target fields (forward
  passes with only the batch-norm layers in training mode, no gradient, a cumulative average over batches).

A cell model package is adapted on the cells it would cut from the new fields (segmented as its card says,
optionally at each field's nucleus scale, ``match_nuclei``, which the new card keeps for prediction), and the
field model it carries on the fields, into one new package.

What cannot be adapted this way: classes the source never showed, and patterns the network never learnt to
tell apart; see docs/adaptation.md.

The guard. Re-estimated statistics are those of the target, so the adapted package scored on the source's own
validation fields measures the shift, not the adaptation. What the guard checks instead is the procedure:
the same adaptation run on the source validation fields themselves (as if they were the new microscope's,
with as many fields as the target gave) must not lower the validation macro F1 at the card's thresholds by
more than ``tolerance``. A model whose statistics cannot be re-estimated from that many fields without harm is
refused, and nothing is written. It needs the package's ``validation.csv`` and its training data at hand;
without them the card says the guard did not run, and why.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protloc import __version__
from protloc.data.catalog import Catalog, open_dataset
from protloc.errors import ConfigError, DataError, ModelError
from protloc.inference.core import Preprocessor, iter_input_batches
from protloc.inference.predict import open_for_prediction
from protloc.metrics import evaluate
from protloc.model.card import VALIDATION_FILE, ModelCard, check_channels_available
from protloc.model.network import PackagedNetwork
from protloc.model.package import ModelPackage, load_package, save_package

ADAPT_METHODS = ("norm", "bn")
"""``norm``: per-channel intensity statistics; ``bn``: batch-norm statistics (AdaBN)."""


@dataclass
class AdaptSettings:
    """How ``protloc adapt`` adapts a package; travels whole from the CLI to :func:`adapt_package`.

    ``methods`` are applied in the order of :data:`ADAPT_METHODS` (the normalisation first, so the batch-norm
    statistics are those of the inputs the adapted network sees); the default, ``norm`` alone, is the one that
    measured best on synthetic shifts (BENCHMARKS.md, "Adapting to a new microscope"; ``bn`` lost there).
    ``max_fields`` target fields at most are read (a random choice, ``seed``); fewer than ``min_fields`` is
    refused (statistics from a handful of fields are noise). ``guard``: run the guard (see the module docstring)
    when the source validation data is at hand.
    """

    methods: tuple[str, ...] = ("norm",)
    max_fields: int = 256
    min_fields: int = 8
    batch_size: int = 32
    guard: bool = True
    tolerance: float = 0.02
    guard_fields: int = 256
    seed: int = 0
    workers: int = 1
    bit_depth: int | None = None
    channel_map: str | None = None
    max_cells: int = 4096
    """cell models: crops the statistics are estimated on, at most (a random choice among the fields' cells)."""
    min_cells: int = 64
    """cell models: refuse fewer cells than this in the fields read."""
    match_nuclei: bool = False
    """cell models: segment each field at the scale of its nuclei (the segmenter's ``match_nuclei``), for the
    crops adapted on and, recorded on the new card, for every prediction with the adapted package."""

    def validate(self) -> AdaptSettings:
        """Check every field; raise :class:`ConfigError` naming the first bad one. Returns self."""
        methods = tuple(dict.fromkeys(m.strip().lower() for m in self.methods if m.strip()))
        unknown = [m for m in methods if m not in ADAPT_METHODS]
        if unknown or not methods:
            raise ConfigError(
                f"unknown adaptation method {unknown[0] if unknown else '(none)'!r}; use {', '.join(ADAPT_METHODS)}"
            )
        self.methods = tuple(m for m in ADAPT_METHODS if m in methods)
        if self.min_fields < 2 or self.max_fields < self.min_fields:
            raise ConfigError(f"need 2 <= min_fields <= max_fields, got {self.min_fields} and {self.max_fields}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (batch statistics), got {self.batch_size}")
        if self.min_cells < 2 or self.max_cells < self.min_cells:
            raise ConfigError(f"need 2 <= min_cells <= max_cells, got {self.min_cells} and {self.max_cells}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ConfigError(f"tolerance must be between 0 and 1 (macro F1), got {self.tolerance}")
        return self

    def describe(self) -> dict[str, Any]:
        """The settings as the card records them."""
        out = dataclasses.asdict(self)
        out["methods"] = list(self.methods)
        return out


class AdaptationRefusedError(ModelError):
    """The guard refused an adaptation (see the module docstring); ``guard`` holds its scores."""

    def __init__(self, message: str, guard: dict[str, Any]) -> None:
        super().__init__(message)
        self.guard = guard


@dataclass
class AdaptResult:
    """What :func:`adapt_package` did; ``record`` is what the new card's ``adaptation`` holds."""

    out: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def guard(self) -> dict[str, Any]:
        return dict(self.record.get("guard", {}))


def folder_fingerprint(catalog: Catalog) -> dict[str, Any]:
    """A fingerprint of the fields' files: SHA-256 of every file's name, size and modification time, sorted."""
    digest = hashlib.sha256()
    count = total = 0
    paths = sorted({path for sample in catalog.ids for path in catalog.files[sample].values()}, key=str)
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        count += 1
        total += stat.st_size
    return {"sha256": digest.hexdigest(), "files": count, "bytes": total, "folder": str(catalog.image_dir)}


def batchnorm_layers(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The network's batch-norm layers (1-, 2- and 3-d, synchronised ones too)."""
    return [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def read_inputs(
    catalog: Catalog,
    card: ModelCard,
    *,
    batch_size: int = 32,
    workers: int = 1,
    bit_depth: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Every field of ``catalog`` as the network's uint8 input ``(N, C, S, S)``, read as prediction reads it."""
    preprocessor = Preprocessor.from_card(card, bit_depth=bit_depth)
    parts = []
    for first, batch in iter_input_batches(catalog, preprocessor, batch_size=batch_size, workers=workers):
        parts.append(batch[:, 0])
        if on_progress:
            on_progress(first + len(batch), len(catalog))
    return np.concatenate(parts) if parts else np.zeros((0, len(card.channels), card.size, card.size), np.uint8)


def input_statistics(inputs: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 inputs on the 0-1 scale, estimated as training estimates them."""
    values = inputs.reshape(len(inputs), inputs.shape[1], -1).astype(np.float64) / 255.0
    mean = values.mean(axis=2).mean(axis=0)
    squares = (values**2).mean(axis=2).mean(axis=0)
    std = np.sqrt(np.maximum(squares - mean**2, 1e-12))
    return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-3)), 6) for s in std]


def _batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch bounds covering ``count``; a last batch of one joins the one before (batch-norm needs two)."""
    bounds = [(first, min(first + batch_size, count)) for first in range(0, count, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def adapt_network(
    network: PackagedNetwork, inputs: np.ndarray, methods: Sequence[str], *, batch_size: int = 32
) -> tuple[PackagedNetwork, dict[str, Any]]:
    """A copy of ``network`` with the statistics of ``methods`` re-estimated on ``inputs`` (uint8 ``(N, C, S, S)``).

    Raises:
        ModelError: ``bn`` asked of a network without batch-norm layers.
    """
    adapted = copy.deepcopy(network).eval()
    info: dict[str, Any] = {}
    if "norm" in methods:
        mean, std = input_statistics(inputs)
        info["mean"] = {"before": [round(float(v), 6) for v in network.mean.flatten()], "after": mean}
        info["std"] = {"before": [round(float(v), 6) for v in network.std.flatten()], "after": std}
        adapted.mean.copy_(torch.tensor(mean, dtype=torch.float32).view_as(adapted.mean))
        adapted.std.copy_(torch.tensor(std, dtype=torch.float32).view_as(adapted.std))
    if "bn" in methods:
        layers = batchnorm_layers(adapted)
        if not layers:
            raise ModelError(
                "this network has no batch-norm layers, so AdaBN has nothing to re-estimate; adapt with --method norm"
            )
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over every batch, not a moving one
            layer.train()
        with torch.no_grad():
            for first, last in _batches(len(inputs), batch_size):
                adapted(torch.from_numpy(np.ascontiguousarray(inputs[first:last])))
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
            layer.eval()
        info["batchnorm_layers"] = len(layers)
    return adapted, info


def probabilities_of(network: nn.Module, inputs: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Sigmoid probabilities ``(N, classes)`` of a packaged network on uint8 inputs."""
    network.eval()
    parts = []
    with torch.no_grad():
        for first in range(0, len(inputs), batch_size):
            logits = network(torch.from_numpy(np.ascontiguousarray(inputs[first : first + batch_size])))
            parts.append(torch.sigmoid(logits.float()).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _pick(catalog: Catalog, count: int, seed: int) -> Catalog:
    """``count`` fields of ``catalog`` chosen at random (all of them, in order, when it has no more)."""
    if len(catalog) <= count:
        return catalog
    rng = np.random.default_rng(seed)
    return catalog.subset(np.sort(rng.choice(len(catalog), size=count, replace=False)))


def adapt_package(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    settings: AdaptSettings | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> AdaptResult:
    """Adapt the model package ``model`` (a field model, or a cell model with the field model it carries) to the
    unlabelled fields of ``data``; write it to ``out``.

    ``data`` is any layout the catalog reads (a Kaggle root's ``test/``, a folder of channel images, a labelled
    folder whose labels are not used). The new package has the same weights but the re-estimated statistics, the
    card's thresholds unchanged, and a card whose ``adaptation`` records what, on what and how. It is written
    atomically, and only when the guard passes. A cell model's statistics are those of the cells it would cut
    from the new fields (segmented as its card says, per-field nucleus scale with ``match_nuclei``, which the
    new card then keeps); its field model is adapted on the fields.

    Raises:
        ConfigError: ``match_nuclei`` for a field model.
        DataError: no fields, fewer than ``settings.min_fields``, or too few cells in them.
        ModelError: an ensemble, channels the data lacks, ``bn`` without batch-norm layers, or an adaptation the
            guard refuses.
    """
    settings = (settings or AdaptSettings()).validate()
    package = load_package(model)
    if package.is_ensemble:
        raise ModelError(f"{package.path}: an ensemble; adapt each member package, then `protloc ensemble` them")
    catalog = open_for_prediction(data, channel_map=settings.channel_map)
    if len(catalog) < settings.min_fields:
        raise DataError(
            f"{data}: {len(catalog)} field(s); adaptation needs at least {settings.min_fields} to estimate statistics"
        )
    used = _pick(catalog, settings.max_fields, settings.seed)
    source = {"data": str(Path(data).resolve()), "fields": len(catalog), "fingerprint": folder_fingerprint(catalog)}
    if package.card.cells is None and settings.match_nuclei:
        raise ConfigError(f"{model}: a field model; match_nuclei sets the segmenter of a cell model's package")
    try:
        if package.card.cells is not None:
            return _adapt_cell_package(package, used, Path(out), settings, source, on_progress)
        adapted, record = _adapt_field(package, used, settings, source, on_progress)
    except AdaptationRefusedError as refused:
        raise AdaptationRefusedError(f"{refused}; nothing written", refused.guard) from None
    return AdaptResult(out=save_package(out, adapted, _adapted_card(package.card, adapted, record)), record=record)


def _adapt_field(
    package: ModelPackage,
    used: Catalog,
    settings: AdaptSettings,
    source: dict[str, Any],
    on_progress: Callable[[int, int], None] | None,
) -> tuple[PackagedNetwork, dict[str, Any]]:
    """A field model's network adapted on the fields ``used``, and its record (the guard has passed)."""
    card = package.card
    check_channels_available(card, list(used.files[used.ids[0]]), where=str(used.image_dir))
    used.require_channels(card.channels)
    network = _network(package, settings)
    inputs = read_inputs(
        used,
        card,
        batch_size=settings.batch_size,
        workers=settings.workers,
        bit_depth=settings.bit_depth,
        on_progress=on_progress,
    )
    adapted, info = adapt_network(network, inputs, settings.methods, batch_size=settings.batch_size)
    guard = _checked_guard(package, network, adapted, settings, len(inputs))
    return adapted, _record(package, settings, source, {"fields_used": len(inputs), **info}, guard)


def _network(package: ModelPackage, settings: AdaptSettings) -> PackagedNetwork:
    network = package.build_model()
    if not isinstance(network, PackagedNetwork):  # pragma: no cover - single packages build one
        raise ModelError(f"{package.path}: not a single packaged network")
    if "bn" in settings.methods and not batchnorm_layers(network):
        raise ModelError(
            f"{package.path}: {package.card.model_name} has no batch-norm layers, so AdaBN has nothing to "
            "re-estimate; adapt with --method norm"
        )
    return network


def _checked_guard(
    package: ModelPackage, network: PackagedNetwork, adapted: PackagedNetwork, settings: AdaptSettings, count: int
) -> dict[str, Any]:
    """The guard's record (``{"run": False, ...}`` when off or impossible); raises when it refuses."""
    guard: dict[str, Any] = {"run": False, "reason": "switched off"}
    if settings.guard:
        guard = _run_guard(package, network, adapted, settings, count)
    if guard.get("passed") is False:
        raise AdaptationRefusedError(
            f"{package.path}: adaptation refused: on the source validation data the same adaptation moves macro F1 "
            f"from {guard['macro_f1_before']:.3f} to {guard['macro_f1_adapted']:.3f} (tolerance "
            f"{settings.tolerance})",
            guard,
        )
    return guard


def _record(
    package: ModelPackage,
    settings: AdaptSettings,
    source: dict[str, Any],
    info: dict[str, Any],
    guard: dict[str, Any],
) -> dict[str, Any]:
    """What the adapted card's ``adaptation`` holds: what was adapted, on what, how, when and from which
    package (and the package's previous adaptation, if any)."""
    card = package.card
    record = {
        "methods": list(settings.methods),
        "source_package": str(package.path.resolve()),
        "source_created": card.created,
        **source,
        "settings": settings.describe(),
        **info,
        "guard": guard,
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "protloc_version": __version__,
    }
    if card.adaptation:
        record["previous"] = card.adaptation
    return record


def _adapted_card(card: ModelCard, adapted: PackagedNetwork, record: dict[str, Any]) -> ModelCard:
    return dataclasses.replace(
        card,
        input=dataclasses.replace(
            card.input, mean=[float(v) for v in adapted.mean.flatten()], std=[float(v) for v in adapted.std.flatten()]
        ),
        adaptation=record,
        protloc_version=__version__,
        created=record["when"],
    )


# ------------------------------------------------------------------------------------------------ cell models


def cell_inputs(
    catalog: Catalog,
    card: ModelCard,
    segmenter: Any,
    *,
    max_cells: int,
    seed: int = 0,
    bit_depth: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """The cells of ``catalog``'s fields as the cell model ``card`` sees them: each field segmented by
    ``segmenter``, every cell cut as its masked crop (the card's crop size and padding), at most ``max_cells``
    of them chosen uniformly at random (a reservoir: memory stays ``max_cells`` crops however many fields);
    and the number of cells in each field."""
    from protloc.cells.masks import cells_of_field
    from protloc.cells.predict import select_channels
    from protloc.data.io import CHANNELS, read_sample

    assert card.cells is not None
    channels = [c for c in CHANNELS if c in set(segmenter.channels) | set(card.channels)]
    catalog.require_channels(channels)
    rng = np.random.default_rng(seed)
    kept = np.zeros((max_cells, len(card.channels), card.size, card.size), np.uint8)
    seen, counts = 0, []
    for index, field_id in enumerate(catalog.ids):
        image = read_sample(catalog.files[field_id], channels, bit_depth=bit_depth, sample_id=field_id)
        labels = np.asarray(segmenter(select_channels(image, channels, segmenter.channels)))
        crops = cells_of_field(
            select_channels(image, channels, card.channels),
            labels,
            card.size,
            padding=card.cells.padding,
            context=card.cells.context,
        )
        for crop in crops.images:
            slot = seen if seen < max_cells else int(rng.integers(0, seen + 1))
            if slot < max_cells:
                kept[slot] = crop
            seen += 1
        counts.append(len(crops.cells))
        if on_progress:
            on_progress(index + 1, len(catalog))
    return kept[: min(seen, max_cells)], counts


def _adapt_cell_package(
    package: ModelPackage,
    used: Catalog,
    out: Path,
    settings: AdaptSettings,
    source: dict[str, Any],
    on_progress: Callable[[int, int], None] | None,
) -> AdaptResult:
    """A cell model package adapted on the cells of ``used`` (and the field model it carries on the fields),
    written to ``out`` as one package."""
    from protloc.cells.predict import carried_field_model, segmenter_from_card
    from protloc.model.package import write_package
    from protloc.utils import atomic_folder

    card = package.card
    assert card.cells is not None
    segmenter = segmenter_from_card(card, {"match_nuclei": True} if settings.match_nuclei else None)
    check_channels_available(card, list(used.files[used.ids[0]]), where=str(used.image_dir))
    network = _network(package, settings)
    inputs, counts = cell_inputs(
        used,
        card,
        segmenter,
        max_cells=settings.max_cells,
        seed=settings.seed,
        bit_depth=settings.bit_depth or 16,
        on_progress=on_progress,
    )
    if len(inputs) < settings.min_cells:
        raise DataError(
            f"{used.image_dir}: {len(inputs)} cell(s) found in {len(used)} field(s) by the model's segmenter; "
            f"adapting a cell model needs at least {settings.min_cells} (check the channels, or --match-nuclei)"
        )
    adapted, info = adapt_network(network, inputs, settings.methods, batch_size=settings.batch_size)
    guard = _checked_guard(package, network, adapted, settings, len(inputs))
    census = {
        "fields_used": len(used),
        "cells_used": len(inputs),
        "cells_per_field": {"median": float(np.median(counts)), "min": int(min(counts)), "max": int(max(counts))},
        "segmentation": segmenter.settings(),
    }
    record = _record(package, settings, source, {**census, **info}, guard)
    carried = carried_field_model(package.path, card)
    field_part = None
    if carried is not None:
        field_package = load_package(carried)
        try:
            field_part = (*_adapt_field(field_package, used, settings, source, None), field_package.card)
            record["field_model"] = {k: v for k, v in field_part[1].items() if k not in source}
        except AdaptationRefusedError as refused:  # the cell model's adaptation stands; the field model stays as it was
            record["field_model"] = {"adapted": False, "reason": str(refused), "guard": refused.guard}
    new_card = _adapted_card(card, adapted, record)
    segmentation = dict(card.cells.segmentation, match_nuclei=True) if settings.match_nuclei else None
    new_card.cells = dataclasses.replace(card.cells, segmentation=segmentation or card.cells.segmentation)
    with atomic_folder(out) as staging:
        write_package(staging, adapted, new_card)
        folder = staging / str(card.cells.field_model)
        if field_part is not None:
            field_network, field_record, field_card = field_part
            folder.mkdir(parents=True)
            write_package(folder, field_network, _adapted_card(field_card, field_network, field_record))
        elif carried is not None:
            shutil.copytree(carried, folder)
    return AdaptResult(out=out, record=record)


def _source_validation(package: ModelPackage, settings: AdaptSettings) -> tuple[Catalog, np.ndarray] | str:
    """The source validation fields and their truth, or why they are not at hand."""
    from protloc.inference.files import read_probabilities_table

    card = package.card
    path = package.path / VALIDATION_FILE
    if not path.is_file():
        return f"the package has no {VALIDATION_FILE}"
    source = card.training_data
    if not source or not Path(source).exists():
        return f"its training data {source or '(not recorded)'} is not at hand"
    config = card.training.get("config") or {}
    try:
        ids, _, truth = read_probabilities_table(path, card.scheme)
        catalog = open_dataset(
            source,
            split=str(config.get("split") or "train"),
            labels=config.get("labels"),
            channels=None,
            allow_empty_labels=True,
            scheme=card.scheme,
            channel_map=config.get("channel_map"),
        ).select_ids(ids)
    except (DataError, ModelError) as exc:
        return f"its validation fields cannot be read ({exc})"
    if truth is None or not len(ids):
        return f"{VALIDATION_FILE} holds no truth"
    rng = np.random.default_rng(settings.seed)
    picks = np.sort(rng.choice(len(ids), size=min(settings.guard_fields, len(ids)), replace=False))
    return catalog.subset(picks), truth[picks]


def _run_guard(
    package: ModelPackage, network: PackagedNetwork, adapted: PackagedNetwork, settings: AdaptSettings, count: int
) -> dict[str, Any]:
    """The guard of the module docstring: scores before and after the same adaptation on the validation fields."""
    found = _source_validation(package, settings)
    if isinstance(found, str):
        return {"run": False, "reason": found}
    catalog, truth = found
    card = package.card
    inputs = read_inputs(
        catalog, card, batch_size=settings.batch_size, workers=settings.workers, bit_depth=settings.bit_depth
    )
    own, _ = adapt_network(network, inputs[: max(2, count)], settings.methods, batch_size=settings.batch_size)

    def score(net: nn.Module) -> float:
        probabilities = probabilities_of(net, inputs, batch_size=settings.batch_size)
        report = evaluate(
            truth,
            probabilities,
            card.thresholds,
            card.classes,
            min_one=card.decision.min_one,
            exclusive=card.scheme.exclusive,
        )
        return round(report.macro_f1, 4)

    before, after = score(network), score(own)
    return {
        "run": True,
        "validation_fields": len(inputs),
        "macro_f1_before": before,
        "macro_f1_adapted": after,
        "macro_f1_target_package_on_source": score(adapted),
        "tolerance": settings.tolerance,
        "passed": bool(after >= before - settings.tolerance),
    }
