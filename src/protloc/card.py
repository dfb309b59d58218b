"""The model card: the JSON that makes a model package self-describing. Torch-free.

A package is a folder::

    my-model/
      card.json            architecture, channels and order, input size, normalisation, class names,
                           thresholds, validation metrics, training data summary, protloc version
      weights.safetensors  the network's tensors (no pickle: loading never runs code)
      model.onnx           optional, written by `protloc export`; carries the card in its metadata too
      validation.csv       optional: the validation predictions the thresholds were fitted on

An ensemble package has ``"kind": "ensemble"`` and member packages in ``members/<name>/``.
This module reads and checks cards; :mod:`protloc.package` loads the weights.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protloc import __version__
from protloc.classes import CLASS_NAMES
from protloc.errors import ModelError
from protloc.io import CHANNELS

CARD_FORMAT = "protloc-model"
CARD_VERSION = 1
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
ONNX_CARD_KEY = "protloc_card"
VALIDATION_FILE = "validation.csv"
"""the validation predictions (Id, probabilities, Target) the thresholds were fitted on; optional."""


def resolve_package_path(path: str | Path) -> Path:
    """The package folder for ``path`` (the folder itself, or its card.json)."""
    path = Path(path)
    if path.is_file() and path.name == CARD_FILE:
        return path.parent
    if path.is_dir():
        return path
    if not path.exists():
        raise ModelError(f"{path}: model package not found")
    raise ModelError(f"{path}: not a model package (expected a folder with {CARD_FILE}, or an exported .onnx)")


def read_card(path: str | Path) -> dict[str, Any]:
    """Read and check a package's card (from its folder, its card.json, or an exported .onnx file)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx" and path.is_file():
        card = card_from_onnx(path)
    else:
        folder = resolve_package_path(path)
        card_path = folder / CARD_FILE
        if not card_path.is_file():
            raise ModelError(f"{folder}: not a model package (no {CARD_FILE})")
        try:
            card = json.loads(card_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{card_path}: not valid JSON ({exc})") from None
    check_card(card, where=str(path))
    return card


def card_from_onnx(path: Path) -> dict[str, Any]:
    """The card embedded in an exported ONNX file's metadata (read with ONNX Runtime, or the onnx package)."""
    try:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None
        metadata = dict(session.get_modelmeta().custom_metadata_map)
    except ImportError:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None
        metadata = {prop.key: prop.value for prop in model.metadata_props}
    if ONNX_CARD_KEY not in metadata:
        raise ModelError(f"{path}: this ONNX file has no protloc card; export it with `protloc export`")
    card: dict[str, Any] = json.loads(metadata[ONNX_CARD_KEY])
    return card


def check_card(card: Any, *, where: str = "card") -> None:
    """Refuse cards this protloc cannot use, with a message that says why; warn on a version difference."""
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelError(f"{where}: not a protloc model card (format is not {CARD_FORMAT!r})")
    version = card.get("format_version")
    if not isinstance(version, int) or version > CARD_VERSION:
        raise ModelError(
            f"{where}: made by protloc {card.get('protloc_version', '?')} in package format {version}; this "
            f"protloc {__version__} reads format {CARD_VERSION} or older: upgrade protloc"
        )
    missing = [key for key in ("kind", "input", "classes", "thresholds") if key not in card]
    if missing:
        raise ModelError(f"{where}: card lacks {missing[0]!r}; the package is incomplete or damaged")
    classes = card["classes"]
    if list(classes) != list(CLASS_NAMES):
        raise ModelError(
            f"{where}: the package predicts {len(classes)} classes that differ from the 28 HPA classes this protloc "
            "knows (e.g. " + _first_difference(classes) + "); it cannot be used here"
        )
    channels = card["input"].get("channels", [])
    if not channels or any(c not in CHANNELS for c in channels):
        raise ModelError(f"{where}: card names unknown channels {channels}")
    if len(card["thresholds"]) != len(CLASS_NAMES):
        raise ModelError(f"{where}: card has {len(card['thresholds'])} thresholds for {len(CLASS_NAMES)} classes")
    made_by = card.get("protloc_version")
    if made_by and made_by.split(".")[:2] != __version__.split(".")[:2]:
        warnings.warn(
            f"{where}: package made by protloc {made_by}, running {__version__}; format {version} is compatible",
            stacklevel=3,
        )


def _first_difference(classes: Sequence[str]) -> str:
    for i, (ours, theirs) in enumerate(zip(CLASS_NAMES, classes, strict=False)):
        if ours != theirs:
            return f"class {i} is {theirs!r}, expected {ours!r}"
    return f"{len(classes)} classes instead of {len(CLASS_NAMES)}"


def check_channels_available(card: dict[str, Any], available: Sequence[str], *, where: str = "data") -> None:
    """Raise :class:`ModelError` when the data lacks a channel the model needs."""
    needed = card["input"]["channels"]
    missing = [c for c in needed if c not in available]
    if missing:
        raise ModelError(
            f"{where}: the model needs channels {', '.join(needed)} but the data has no {missing[0]} channel"
        )
