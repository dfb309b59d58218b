"""One resolved configuration drives a training run.

:class:`TrainConfig` is a flat dataclass: every field has a default, a recipe (``cpu``, ``gpu``, ``seed``)
overrides some, a YAML file overrides those, and command-line flags override everything. The resolved
config is saved as ``config.yaml`` in the run directory and inside the model card, so a run can always be
repeated or resumed exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from protloc.data.io import CHANNELS, parse_channels
from protloc.errors import ConfigError
from protloc.metrics import THRESHOLD_METHODS

LOSSES = ("focal", "bce")
POS_WEIGHTS = ("none", "sqrt-inverse", "inverse")
SCHEDULERS = ("onecycle", "cosine", "none")
OPTIMIZERS = ("adamw", "adam", "sgd")
AUGMENTATIONS = ("standard", "light", "none")
RESOLUTION_SCHEDULES: dict[str, tuple[tuple[float, float], ...]] = {
    "none": (),
    # (until this share of training, this fraction of image_size): a quarter of the pixels first, full size last
    "progressive": ((0.35, 0.5), (0.65, 0.75)),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run. See ``protloc train --help`` for each field's flag."""

    # data
    data: str = ""
    split: str = "train"
    labels: str | None = None
    classes: str | None = None
    """class scheme of the labels: hpa2018, hpa2021, subcell31 or a scheme file (default: found from the file)."""
    map_from: str | None = None
    """fold labels written in this scheme into ``classes`` through a documented mapping (hpa2018 -> hpa2021)."""
    channel_map: str | None = None
    """roles of a microscope file's channels (``DAPI=blue,Tubulin=red``); found from their names when unset."""
    channels: tuple[str, ...] = CHANNELS
    bit_depth: int = 16
    cache_dir: str | None = None
    cache_size: int | None = None
    """side stored in the cache; larger than ``image_size`` enables random crops (default: image_size)."""
    workers: int | None = None
    """DataLoader worker processes (default: chosen from the CPU count)."""

    # model
    model: str = "resnet18"
    pretrained: bool = False
    image_size: int = 128
    drop_rate: float = 0.2

    # optimisation
    loss: str = "focal"
    focal_gamma: float = 2.0
    pos_weight: str = "none"
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"
    batch_size: int = 32
    epochs: int = 12
    max_time: str | None = None
    """wall-clock budget for fitting, ``"HH:MM:SS"`` or minutes as a number (``"10"``)."""
    patience: int = 0
    """early stopping after this many epochs without a better validation macro F1 (0 = off)."""
    augment: str = "standard"
    oversample: float = 0.0
    """0 = plain shuffling; 0.5 = sample images ~ (1/frequency of their rarest class)^0.5; 1 = fully balanced."""
    ema: float = 0.0
    """decay of an exponential moving average of the weights, which validation, checkpoints and the package
    use (0 = off; 0.99-0.999 typical)."""
    resolution_schedule: str = "none"
    """``progressive``: train at half the image size for the first 35% of the budget, three quarters until 65%,
    then full size (more images per minute early on); ``none``: full size throughout."""

    # folds
    folds: int = 5
    fold: int = 0
    seed: int = 0

    # thresholds
    threshold_method: str = "fit"
    threshold_min_positives: int = 5
    """classes with fewer validation positives get the global fallback threshold."""
    threshold_shrink: float = 0.0
    """pull each fitted threshold towards the fallback by ``k / (positives + k)`` (0 = off)."""
    threshold_micro_weight: float = 0.5
    """``joint`` thresholds maximise validation macro F1 + this weight x micro F1 under the at-least-one rule."""

    # hardware and engine
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    checkpoint_every_n_steps: int | None = None
    """write last.ckpt every N training steps (for tests and tiny epochs); else every checkpoint_minutes."""
    checkpoint_minutes: float = 10.0
    """write last.ckpt at least this often during an epoch (it is also written at every epoch end)."""
    tensorboard: bool = False
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None

    # output
    out: str = "runs/latest"
    recipe: str = "cpu"
    notes: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`ConfigError` naming the first bad one. Returns self."""
        self.channels = parse_channels(self.channels)
        _choice("loss", self.loss, LOSSES)
        _choice("pos_weight", self.pos_weight, POS_WEIGHTS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("threshold_method", self.threshold_method, THRESHOLD_METHODS)
        _choice("resolution_schedule", self.resolution_schedule, tuple(RESOLUTION_SCHEDULES))
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be a decay between 0 (off) and 1 (exclusive), got {self.ema}")
        if self.threshold_micro_weight < 0:
            raise ConfigError(f"threshold_micro_weight must be >= 0, got {self.threshold_micro_weight}")
        if self.threshold_shrink < 0:
            raise ConfigError(f"threshold_shrink must be >= 0, got {self.threshold_shrink}")
        if not self.data:
            raise ConfigError("no data set given: pass DATA (a Kaggle root or a labels CSV)")
        if not 16 <= self.image_size <= 4096:
            raise ConfigError(f"image_size must be between 16 and 4096 px, got {self.image_size}")
        if self.cache_size is not None and self.cache_size < self.image_size:
            raise ConfigError(f"cache_size ({self.cache_size}) must be at least image_size ({self.image_size})")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.folds < 2:
            raise ConfigError(f"folds must be at least 2 (one is held out for validation), got {self.folds}")
        if not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold must be between 0 and {self.folds - 1}, got {self.fold}")
        if not 0.0 <= self.oversample <= 1.0:
            raise ConfigError(f"oversample must be between 0 and 1, got {self.oversample}")
        if self.focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if not 8 <= self.bit_depth <= 16:
            raise ConfigError(f"bit_depth must be between 8 and 16, got {self.bit_depth}")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise ConfigError("checkpoint_every_n_steps must be at least 1")
        if self.checkpoint_minutes <= 0:
            raise ConfigError(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes}")
        if self.num_nodes < 1:
            raise ConfigError("num_nodes must be at least 1")
        if self.max_time is not None:
            parse_max_time(self.max_time)
        if self.tensorboard:
            import importlib.util

            if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
                raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")
        return self

    @property
    def stored_size(self) -> int:
        return self.cache_size or self.image_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    def save(self, path: str | Path) -> Path:
        from protloc.utils import atomic_write_text

        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}")
        values = dict(data)
        if "channels" in values and values["channels"] is not None:
            values["channels"] = parse_channels(values["channels"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML config file (any subset of the fields)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        return cls.from_dict(data, where=str(path))


RECIPES: dict[str, dict[str, Any]] = {
    # Two cores, no GPU: a small ResNet at 128 px trains in minutes. For budgets of a few epochs, BCE and
    # flips/rotations only beat focal loss and the full augmentation (benchmarks/bench_recipes.py). The
    # levers of a fixed CPU budget that paid on foreign data (benchmarks/bench_cpu_minute.py, BENCHMARKS.md
    # "Quality per CPU-minute"): bf16 compute where the CPU has it natively, smaller images early on, rare
    # classes drawn more often, thresholds fitted jointly for macro and micro F1. A moving average of the
    # weights (--ema) added nothing measurable there and is left off.
    "cpu": {
        "model": "resnet18",
        "image_size": 128,
        "batch_size": 32,
        "epochs": 12,
        "lr": 2e-3,
        "loss": "bce",
        "augment": "light",
        "precision": "auto",
        "scheduler": "onecycle",
        "resolution_schedule": "progressive",
        "oversample": 0.5,
        "threshold_method": "joint",
    },
    # One or more GPUs: DenseNet-121 at 512 px, as the 2018 competition's winner used, with bf16.
    "gpu": {
        "model": "densenet121",
        "image_size": 512,
        "batch_size": 32,
        "epochs": 20,
        "lr": 1e-3,
        "loss": "focal",
        "augment": "standard",
        "precision": "bf16-mixed",
        "scheduler": "onecycle",
    },
    # The seed notebook's recipe, kept as a baseline: its CNN, RGB stack, BCE, no augmentation, 0.5 cut-off.
    "seed": {
        "model": "seed-cnn",
        "channels": ("red", "green", "blue"),
        "loss": "bce",
        "augment": "none",
        "optimizer": "adam",
        "lr": 1e-3,
        "scheduler": "none",
        "threshold_method": "fixed",
        "image_size": 128,
        "batch_size": 32,
        "epochs": 12,
        "precision": "32-true",
    },
}


def default_recipe() -> str:
    """``gpu`` when a CUDA device is visible, else ``cpu``."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve_config(
    recipe: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < recipe < YAML file < explicit overrides (``None`` values in overrides are ignored)."""
    values: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    if yaml_path is not None:
        from_file = TrainConfig.load(yaml_path).to_dict()
        explicit_file = yaml.safe_load(Path(yaml_path).read_text()) or {}
        from_file = {k: from_file[k] for k in explicit_file}
    chosen = recipe or from_file.get("recipe") or default_recipe()
    if chosen not in RECIPES:
        raise ConfigError(f"unknown recipe {chosen!r}; choose one of {', '.join(RECIPES)}")
    values.update(RECIPES[chosen])
    values["recipe"] = chosen
    values.update(from_file)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(values).validate()


def parse_max_time(value: str) -> dict[str, int]:
    """``"HH:MM:SS"``, ``"DD:HH:MM:SS"`` or a number of minutes -> Lightning's ``max_time`` dict."""
    text = str(value).strip()
    try:
        if ":" not in text:
            minutes = float(text)
            if minutes <= 0:
                raise ValueError
            return {"seconds": round(minutes * 60)}
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise ConfigError(f"max_time {value!r}: use minutes (10) or HH:MM:SS (00:10:00)") from None
    if len(parts) == 3:
        parts = [0, *parts]
    if len(parts) != 4 or any(p < 0 for p in parts):
        raise ConfigError(f"max_time {value!r}: use minutes (10) or HH:MM:SS (00:10:00)")
    return {"days": parts[0], "hours": parts[1], "minutes": parts[2], "seconds": parts[3]}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(allowed)}")


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy of ``config`` with ``changes``."""
    return dataclasses.replace(config, **changes).validate()
