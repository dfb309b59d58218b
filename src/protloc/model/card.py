"""The model card: the JSON that makes a model package self-describing. Torch-free.

A package is a folder::

    my-model/
      card.json            architecture, channels and order, input size, normalisation, class names,
                           thresholds, validation metrics, training data summary, protloc version
      weights.safetensors  the network's tensors (no pickle: loading never runs code)
      model.onnx           optional, written by `protloc export`; carries the card in its metadata too
      validation.csv       optional: the validation predictions the thresholds were fitted on

An ensemble package has ``"kind": "ensemble"`` and member packages in ``members/<name>/``.
This module reads and checks cards; :mod:`protloc.model.package` loads the weights.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protloc import __version__
from protloc.channels import CHANNELS
from protloc.errors import ConfigError, ModelError
from protloc.schemes import ClassScheme, get_scheme, scheme_for_names

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


def read_card(path: str | Path) -> ModelCard:
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
    return ModelCard.from_dict(card, where=str(path))


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
    try:
        card: dict[str, Any] = json.loads(metadata[ONNX_CARD_KEY])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: the embedded protloc card is not valid JSON ({exc})") from None
    return card


# ---------------------------------------------------------------------------------------------- the card


def _known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``data`` into the fields ``cls`` declares and the rest (kept in ``extra``, never lost)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def _optional_section(data: Any, name: str, where: str) -> dict[str, Any] | None:
    return None if data is None else dict(_section(data, name, where))


def _section(data: Any, name: str, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelError(f"{where}: card field {name!r} is not an object; the package is damaged")
    return data


@dataclass
class CellSpec:
    """How a cell model's inputs are cut from a field (card key ``cells``; ``None`` for a field model).

    Each cell becomes a square crop around its box (``padding`` of the box side added on each side), the other
    cells and the background multiplied by ``context`` (0, masked, for every card before it was recorded;
    ``input`` says it in words), resized to the card's input size. ``labels`` says how the
    training crops were labelled (``cells``: per-cell truth, ``field``: the field's labels, weak;
    ``given per cell``), ``segmentation`` the segmenter settings that cut them, ``source`` the field folder.
    A cell model may also record how its probabilities are fused with a field model's (``fusion``, and how that
    rule was fitted, ``fusion_fit``), an image-level head over a field's cells (``image_head``) and the field
    model its package carries (``field_model``, a folder inside the package); their meaning is
    :mod:`protloc.cells.fusion`'s, which reads and writes them. Keys this protloc does not know (from a newer
    one) are kept in ``extra`` and written back.
    """

    crop_size: int
    padding: float = 0.05
    context: float = 0.0
    input: str = "masked crop"
    labels: str = "field"
    segmentation: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    fusion: dict[str, Any] | None = None
    fusion_fit: dict[str, Any] | None = None
    image_head: dict[str, Any] | None = None
    field_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CellSpec:
        """The spec of a model trained on a cell data set, from the data set's ``cells.json``."""
        return cls(
            crop_size=int(settings["crop_size"]),
            padding=float(settings.get("padding", 0.05)),
            context=float(settings.get("context", 0.0)),
            input=str(settings.get("input", "masked crop")),
            labels=str(settings.get("labels", "field")),
            segmentation=dict(settings.get("segmentation") or {}),
            source=None if settings.get("source") is None else str(settings["source"]),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> CellSpec:
        known, extra = _known(cls, data)
        try:
            padding = float(known.get("padding", 0.05))
            spec = cls(
                crop_size=int(known["crop_size"]),
                padding=padding,
                context=float(known.get("context", 0.0)),
                input=str(known.get("input", "masked crop")),
                labels=str(known.get("labels", "field")),
                segmentation=dict(known.get("segmentation") or {}),
                source=None if known.get("source") is None else str(known["source"]),
                fusion=_optional_section(known.get("fusion"), "cells.fusion", where),
                fusion_fit=_optional_section(known.get("fusion_fit"), "cells.fusion_fit", where),
                image_head=_optional_section(known.get("image_head"), "cells.image_head", where),
                field_model=None if not known.get("field_model") else str(known["field_model"]),
                extra=extra,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: card field 'cells' is damaged ({exc.__class__.__name__}: {exc})") from None
        if not 0.0 <= spec.padding <= 1.0 or spec.crop_size < 8 or not 0.0 <= spec.context <= 1.0:
            raise ModelError(
                f"{where}: card field 'cells' has crop size {spec.crop_size} / padding {spec.padding} / context "
                f"{spec.context}"
            )
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "crop_size": self.crop_size,
            "padding": self.padding,
            **({"context": self.context} if self.context else {}),
            "input": self.input,
            "labels": self.labels,
            "segmentation": dict(self.segmentation),
        }
        if self.source is not None:
            out["source"] = self.source
        for key in ("fusion", "fusion_fit", "image_head", "field_model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra}


@dataclass
class InputSpec:
    """What the network takes: channels in order, square input size, bit-depth rule and normalisation.

    ``mean`` and ``std`` are per channel on the 0-1 scale; the packaged network applies them itself, so every
    consumer feeds ``uint8 / 255`` (or ``uint8`` to the torch network).
    """

    channels: tuple[str, ...]
    size: int
    mean: list[float]
    std: list[float]
    bit_depth: int = 16
    resize: str = "area (shrink) / linear (enlarge) to size x size"
    scale: float = 255.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> InputSpec:
        known, extra = _known(cls, data)
        try:
            return cls(
                channels=tuple(str(c) for c in known.get("channels", ())),
                size=int(known["size"]),
                mean=[float(m) for m in known.get("mean", [])],
                std=[float(s) for s in known.get("std", [])],
                bit_depth=int(known.get("bit_depth", 16)),
                resize=str(known.get("resize", cls.resize)),
                scale=float(known.get("scale", 255.0)),
                extra=extra,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: card field 'input' is incomplete ({exc.__class__.__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "size": self.size,
            "bit_depth": self.bit_depth,
            "resize": self.resize,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            **self.extra,
        }


@dataclass
class Architecture:
    """The network: a timm or protloc architecture name and how it was built (``ensemble`` for ensembles)."""

    name: str
    in_chans: int | None = None
    num_classes: int | None = None
    image_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """parameters, source, timm_version, members (ensembles) and anything a newer protloc adds."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> Architecture:
        known, extra = _known(cls, data)

        def number(key: str) -> int | None:
            value = known.get(key)
            return None if value is None else int(value)

        return cls(
            name=str(known.get("name", "model")),
            in_chans=number("in_chans"),
            num_classes=number("num_classes"),
            image_size=number("image_size"),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in ("in_chans", "num_classes", "image_size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra}


@dataclass
class Decision:
    """How probabilities become labels: per-class thresholds, and whether every image gets at least one."""

    rule: str = "probability >= per-class threshold"
    min_one: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> Decision:
        known, extra = _known(cls, data)
        return cls(rule=str(known.get("rule", cls.rule)), min_one=bool(known.get("min_one", True)), extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "min_one": self.min_one, **self.extra}


@dataclass
class ModelCard:
    """The card of a model package: everything needed to use the weights, and what they were fitted on.

    One reader (:meth:`from_dict`) and one writer (:meth:`to_dict`). Fields a newer protloc adds, and any this
    protloc does not know, are kept in ``extra`` and written back unchanged. To add a field: declare it here
    with a default (so old cards still load), read it in :meth:`from_dict`, write it in :meth:`to_dict`; when
    old cards need converting, bump :data:`CARD_VERSION` and convert in :func:`_upgrade`.

    ``metrics``, ``threshold_info`` and ``training`` are reports for people (summaries, per-class tables), kept
    as JSON objects.
    """

    kind: str
    input: InputSpec
    classes: list[str]
    thresholds: list[float]
    architecture: Architecture = field(default_factory=lambda: Architecture("model"))
    decision: Decision = field(default_factory=Decision)
    members: list[str] = field(default_factory=list)
    threshold_info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    protloc_version: str | None = None
    created: str | None = None
    format: str = CARD_FORMAT
    format_version: int = CARD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    cells: CellSpec | None = None
    """A cell model's crop settings; ``None`` for a field model."""
    adaptation: dict[str, Any] = field(default_factory=dict)
    """How the package was adapted to unlabelled fields (``protloc adapt``): methods, the fields' fingerprint
    and counts, the statistics before and after, the guard's scores, when; empty for a package as trained."""
    class_scheme: ClassScheme | None = None
    """The class scheme (``card.json`` key ``scheme``); cards written before schemes existed name only
    ``classes`` and get the built-in scheme of those names (``hpa2018``) or a custom one. Read it as
    :attr:`scheme`."""

    def __post_init__(self) -> None:
        if self.class_scheme is None:
            self.class_scheme = scheme_for_names(self.classes)

    @property
    def scheme(self) -> ClassScheme:
        """The class scheme the model predicts: names, short names, exclusive classes, label format."""
        if self.class_scheme is None:  # pragma: no cover - set in __post_init__
            self.class_scheme = scheme_for_names(self.classes)
        return self.class_scheme

    # -- reading and writing

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "card") -> ModelCard:
        """Check and read a card's JSON object (any format version up to :data:`CARD_VERSION`).

        Raises:
            ModelError: not a protloc card, a newer format, a missing or damaged field, classes or channels
                this protloc does not know, or a threshold count that does not match the classes.
        """
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise ModelError(f"{where}: not a protloc model card (format is not {CARD_FORMAT!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > CARD_VERSION:
            raise ModelError(
                f"{where}: made by protloc {data.get('protloc_version', '?')} in package format {version}; this "
                f"protloc {__version__} reads format {CARD_VERSION} or older: upgrade protloc"
            )
        missing = [key for key in ("kind", "input", "classes", "thresholds") if key not in data]
        if missing:
            raise ModelError(f"{where}: card lacks {missing[0]!r}; the package is incomplete or damaged")
        data = _upgrade(dict(data), version)
        known, extra = _known(cls, data)
        try:
            thresholds = [float(t) for t in known["thresholds"]]
        except (TypeError, ValueError):
            raise ModelError(f"{where}: card thresholds are not numbers") from None
        scheme_data = extra.pop("scheme", None)
        try:
            scheme = get_scheme(scheme_data) if scheme_data is not None else None
        except ConfigError as exc:
            raise ModelError(f"{where}: card scheme is damaged ({exc})") from None
        card = cls(
            kind=str(known["kind"]),
            input=InputSpec.from_dict(_section(known["input"], "input", where), where),
            classes=[str(c) for c in known["classes"]],
            thresholds=thresholds,
            architecture=Architecture.from_dict(_section(known.get("architecture"), "architecture", where), where),
            decision=Decision.from_dict(_section(known.get("decision"), "decision", where), where),
            members=[str(m) for m in known.get("members", [])],
            threshold_info=_section(known.get("threshold_info"), "threshold_info", where),
            metrics=_section(known.get("metrics"), "metrics", where),
            training=_section(known.get("training"), "training", where),
            adaptation=_section(known.get("adaptation"), "adaptation", where),
            protloc_version=known.get("protloc_version"),
            created=known.get("created"),
            format=CARD_FORMAT,
            format_version=CARD_VERSION,
            extra=extra,
            cells=CellSpec.from_dict(_section(known["cells"], "cells", where), where) if known.get("cells") else None,
            class_scheme=scheme,
        )
        card.check(where=where)
        return card

    def to_dict(self) -> dict[str, Any]:
        """The card as the JSON object written to ``card.json`` (and embedded in exported ONNX files)."""
        out: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "protloc_version": self.protloc_version,
            "created": self.created,
            "kind": self.kind,
            "architecture": self.architecture.to_dict(),
            "input": self.input.to_dict(),
            "classes": list(self.classes),
            "scheme": self.scheme.to_dict(),
            "thresholds": [float(t) for t in self.thresholds],
            "decision": self.decision.to_dict(),
        }
        for key in ("members", "threshold_info", "metrics", "training", "adaptation"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.cells is not None:
            out["cells"] = self.cells.to_dict()
        return {**out, **self.extra}

    def check(self, *, where: str = "card") -> None:
        """Refuse a card this protloc cannot use, with a message that says why; warn on a version difference."""
        if list(self.classes) != list(self.scheme.names):
            raise ModelError(
                f"{where}: the card's classes differ from its scheme {self.scheme.describe()} "
                f"(e.g. {_first_difference(self.scheme.names, self.classes)}); the package is damaged"
            )
        channels = list(self.input.channels)
        if not channels or any(c not in CHANNELS for c in channels):
            raise ModelError(f"{where}: card names unknown channels {channels}")
        if len(self.thresholds) != len(self.classes):
            raise ModelError(f"{where}: card has {len(self.thresholds)} thresholds for {len(self.classes)} classes")
        made_by = self.protloc_version
        if made_by and str(made_by).split(".")[:2] != __version__.split(".")[:2]:
            warnings.warn(
                f"{where}: package made by protloc {made_by}, running {__version__}; format "
                f"{self.format_version} is compatible",
                stacklevel=4,
            )

    # -- what readers ask

    @property
    def is_ensemble(self) -> bool:
        return self.kind == "ensemble"

    @property
    def is_adapted(self) -> bool:
        """Whether ``protloc adapt`` re-estimated this package's statistics on unlabelled fields."""
        return bool(self.adaptation)

    def adaptation_summary(self) -> dict[str, Any]:
        """What a client is shown of the ``protloc adapt`` record: methods, fields and cells used, when, the
        fingerprint's digest (empty: as trained)."""
        record = self.adaptation
        keys = ("methods", "fields", "fields_used", "cells_used", "when")
        summary: dict[str, Any] = {k: record[k] for k in keys if k in record}
        if isinstance(record.get("fingerprint"), dict):
            summary["fingerprint"] = record["fingerprint"].get("sha256")
        return summary

    @property
    def channels(self) -> tuple[str, ...]:
        return self.input.channels

    @property
    def size(self) -> int:
        return self.input.size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def model_name(self) -> str:
        """The architecture, or ``"ensemble of N"``."""
        return f"ensemble of {len(self.members)}" if self.is_ensemble else self.architecture.name

    @property
    def source_size(self) -> list[int] | None:
        """Height and width of the fields the model was trained on (before resizing), when recorded."""
        size = self.training.get("source_size")
        return [int(v) for v in size] if isinstance(size, (list, tuple)) and len(size) == 2 else None

    @property
    def training_data(self) -> str | None:
        """The data folder the model was trained on, when recorded."""
        data = self.training.get("data")
        return str(data) if data else None


def _upgrade(data: dict[str, Any], version: int) -> dict[str, Any]:
    """Bring a card of an older format version to the current one (version 1 is the current format)."""
    return data


def check_card(card: Any, *, where: str = "card") -> ModelCard:
    """Refuse cards this protloc cannot use (see :meth:`ModelCard.from_dict`); return the typed card."""
    if isinstance(card, ModelCard):
        card.check(where=where)
        return card
    return ModelCard.from_dict(card, where=where)


def _first_difference(expected: Sequence[str], classes: Sequence[str]) -> str:
    for i, (ours, theirs) in enumerate(zip(expected, classes, strict=False)):
        if ours != theirs:
            return f"class {i} is {theirs!r}, expected {ours!r}"
    return f"{len(classes)} classes instead of {len(expected)}"


def check_channels_available(card: ModelCard, available: Sequence[str], *, where: str = "data") -> None:
    """Raise :class:`ModelError` when the data lacks a channel the model needs."""
    needed = card.input.channels
    missing = [c for c in needed if c not in available]
    if missing:
        raise ModelError(
            f"{where}: the model needs channels {', '.join(needed)} but the data has no {missing[0]} channel"
        )
