"""Saving and loading model packages: safetensors weights plus the JSON card (see :mod:`protloc.model.card`).

Loading reads JSON and safetensors only, so it never unpickles anything: a package from a stranger cannot
run code on your machine.
"""

from __future__ import annotations

import datetime as dt
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protloc import __version__
from protloc.errors import ModelError
from protloc.model.card import (
    CARD_FILE,
    CARD_FORMAT,
    WEIGHTS_FILE,
    Architecture,
    CellSpec,
    Decision,
    InputSpec,
    ModelCard,
    read_card,
    resolve_package_path,
)
from protloc.model.network import EnsembleNetwork, PackagedNetwork, create_model
from protloc.schemes import ClassScheme, get_scheme
from protloc.utils import atomic_folder, atomic_write_json


def new_card(
    *,
    architecture: dict[str, Any] | Architecture,
    channels: list[str] | tuple[str, ...],
    size: int,
    mean: list[float],
    std: list[float],
    thresholds: list[float],
    bit_depth: int = 16,
    kind: str = "model",
    decision: dict[str, Any] | Decision | None = None,
    members: list[str] | None = None,
    threshold_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    scheme: ClassScheme | str,
    cells: CellSpec | dict[str, Any] | None = None,
    **extra: Any,
) -> ModelCard:
    """A card for the current protloc with the required fields filled; the rest are reports for people.

    ``scheme`` is the class scheme the model predicts; ``thresholds`` has one per class; ``cells`` the crop
    settings of a cell model.
    """
    chosen = get_scheme(scheme)
    return ModelCard(
        kind=kind,
        input=InputSpec(
            channels=tuple(channels),
            size=int(size),
            mean=[float(m) for m in mean],
            std=[float(s) for s in std],
            bit_depth=int(bit_depth),
        ),
        classes=list(chosen.names),
        class_scheme=chosen,
        thresholds=[float(t) for t in thresholds],
        architecture=architecture if isinstance(architecture, Architecture) else Architecture.from_dict(architecture),
        decision=decision if isinstance(decision, Decision) else Decision.from_dict(decision or {}),
        members=list(members or []),
        threshold_info=dict(threshold_info or {}),
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        protloc_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra),
        cells=CellSpec.from_dict(cells) if isinstance(cells, dict) else cells,
    )


def save_package(
    folder: str | Path,
    model: nn.Module | None,
    card: ModelCard | dict[str, Any],
    members: dict[str, Path] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a package folder atomically: built beside ``folder`` and renamed into place.

    Args:
        folder: the package folder to create (replaced if it exists).
        model: the network whose ``state_dict`` becomes ``weights.safetensors`` (``None`` for an ensemble).
        card: the card (see :func:`new_card`).
        members: for an ensemble, member name -> existing package folder to copy in under ``members/``.
        extra_files: name in the package -> file to copy in (e.g. ``validation.csv``, the validation
            predictions that thresholds were fitted on, which ensembles use to refit theirs).
    """
    folder = Path(folder)
    with atomic_folder(folder) as staging:
        write_package(staging, model, card, members, extra_files)
    return folder


def write_package(
    folder: Path,
    model: nn.Module | None,
    card: ModelCard | dict[str, Any],
    members: dict[str, Path] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> None:
    """Write a package's files into the existing folder ``folder`` (a staging folder the caller makes atomic;
    see :func:`save_package`, which is this inside :func:`protloc.utils.atomic_folder`)."""
    from safetensors.torch import save_file

    if model is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": CARD_FORMAT})
    for name, source in (members or {}).items():
        shutil.copytree(resolve_package_path(source), folder / "members" / name)
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, folder / name)
    typed = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
    atomic_write_json(folder / CARD_FILE, typed.to_dict())


@dataclass
class ModelPackage:
    """A loaded package: its card, and for single models a ready network; for ensembles, its members."""

    path: Path
    card: ModelCard
    members: list[ModelPackage] = field(default_factory=list)

    @property
    def is_ensemble(self) -> bool:
        return self.card.is_ensemble

    # the accessors of protloc <= 0.1, kept for callers; the card has them all
    @property
    def channels(self) -> tuple[str, ...]:
        return self.card.channels

    @property
    def size(self) -> int:
        return self.card.size

    @property
    def thresholds(self) -> list[float]:
        return list(self.card.thresholds)

    def build_model(self) -> nn.Module:
        """The network with its weights, in eval mode: 0-1 pixels in, logits out (ensembles average members)."""
        if self.is_ensemble:
            return EnsembleNetwork([member.build_model() for member in self.members]).eval()
        arch = self.card.architecture
        spec = self.card.input
        backbone = create_model(
            arch.name,
            arch.in_chans if arch.in_chans is not None else len(spec.channels),
            arch.num_classes if arch.num_classes is not None else self.card.num_classes,
            image_size=arch.image_size or spec.size,
        )
        model = PackagedNetwork(backbone, list(spec.mean), list(spec.std))
        weights = self.path / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelError(f"{self.path}: {WEIGHTS_FILE} is missing")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{weights}: cannot be read ({exc})") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{weights}: weights do not fit {arch.name} ({str(exc).splitlines()[0]})") from None
        return model.eval()


def member_name(name: object, folder: Path) -> str:
    """An ensemble member's folder name from a card, checked: one plain name under ``members/``, nothing else.

    A card is data someone may have sent: a name with a path separator, ``..``, a drive or a NUL byte would
    reach files outside the package.

    Raises:
        ModelError: the name is not a plain folder name.
    """
    text = name if isinstance(name, str) else ""
    if (
        not text
        or text in (".", "..")
        or any(bad in text for bad in ("/", "\\", "\0", ":"))
        or text != text.strip()
        or text.startswith(".")
    ):
        raise ModelError(
            f"{folder}: ensemble member name {name!r} in card.json is not a plain folder name under members/; "
            "refusing it (it could reach files outside the package)"
        )
    return text


def load_package(path: str | Path) -> ModelPackage:
    """Load a package folder (or its card.json); for ensembles, every member too."""
    folder = resolve_package_path(path)
    card = read_card(folder)
    package = ModelPackage(path=folder, card=card)
    if package.is_ensemble:
        names = card.members
        if not names:
            raise ModelError(f"{folder}: ensemble card lists no members")
        if not isinstance(names, list):
            raise ModelError(f"{folder}: the ensemble card's members must be a list of folder names")
        for name in names:
            member = load_package(folder / "members" / member_name(name, folder))
            if member.is_ensemble:
                raise ModelError(f"{folder}: nested ensembles are not supported ({name})")
            package.members.append(member)
    return package


def state_dict_from_lightning(checkpoint_path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights inside a Lightning checkpoint (loaded without unpickling arbitrary objects): the
    weight average when the run kept one, else the trained weights."""
    checkpoint = load_checkpoint_safely(checkpoint_path)
    averaged = any(k.startswith("ema_model.") for k in checkpoint["state_dict"])
    prefix = "ema_model." if averaged else "model."
    return {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def load_checkpoint_safely(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists
    and dicts; a file that needs anything else is refused instead of unpickled.

    Raises:
        ModelError: the file is missing, not a checkpoint, or holds objects that loading would have to run.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(
            f"{path}: refusing to load this checkpoint: it holds objects other than tensors and plain values{what}, "
            "and unpickling them could run code; resume only runs protloc wrote"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {str(exc)[:160]})") from None
    if not isinstance(checkpoint, dict):
        raise ModelError(f"{path}: not a Lightning checkpoint (holds a {type(checkpoint).__name__})")
    return checkpoint
