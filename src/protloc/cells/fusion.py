"""Fusion: how a cell's own probabilities and its field's (image-level) probabilities make its final scores.

A cell model sees one masked cell; the field model (or a cell model's image head, see
:mod:`protloc.training.mil`) sees the whole field. HPA's 2021 winners multiplied the two (a cell scores high for
a class only when its field shows the class *and* the cell looks like it) and treated ``Negative`` apart.
:class:`FusionSpec` names one such rule; :func:`fuse` applies it; :func:`fit_fusion` picks the rule that
scores best by the 2021 metric on validation fields with per-cell truth, and the chosen rule is stored on the
cell model's card (:func:`with_fusion`, read back by :func:`fusion_of`: the one place that reads and writes
it), so prediction, evaluation, the service and the watcher all fuse the same way.

Rules (``c`` = the cell model's probability, ``i`` = the image's, per class):

============== =============================== ==========================================================
``cell``        ``c``                           the cell model alone (the default without a fitted rule)
``image``       ``i``                           the field's probabilities copied to every cell (baseline)
``product``     ``c x i``                       the 2021 winners' score
``geometric``   ``c^w x i^(1-w)``               ``w = 0.5`` ranks as the product does
``mean``        ``w c + (1 - w) i``             protloc's old "mix"
============== =============================== ==========================================================

``Negative`` (the scheme's exclusive classes) may follow its own rule: ``same`` (as the others), ``max``
(``max(c, i)``), or ``none-of-others`` (the product over the other classes of ``1 - p``: the chance the cell
shows none of them). Cells cut by the field's border and small cells (under ``small_fraction`` of the
median area of their field's cells) may have all their scores multiplied by ``border`` / ``small``: such
fragments are often not cells of the truth.

The image probabilities come from the field model (``image="field model"``), from the cell model's own
image head (``image="cell model"``, a model trained as in :mod:`protloc.training.mil`, whose card records the
head), from the cell model's own answer for the field (``image="cell maximum"``: each class's highest
probability over the field's cells, the multiple-instance reading of a field's labels as the union of its
cells'; any cell model has it), or from the field model's class activation maps averaged inside each cell
(``image="field model CAM"``, :mod:`protloc.cells.cam`; ``rule="image"`` with it is CAM-in-mask alone).

Why ``cell maximum`` pays: a cell model trained on its field's labels scores each cell alone, so a cell that
merely resembles a class in a field where no cell shows it clearly ranks beside true cells of that class; the
field's highest cell says whether the field shows the class at all. ``cell^0.25 x cell maximum^0.75`` (the
default of a plain cell model without per-cell truth to fit on) ranks the fields first and the cells inside
each field by the cell model (BENCHMARKS.md, "Every cell method side by side"). Torch-free.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protloc.errors import ConfigError, ModelError
from protloc.model.card import CellSpec

RULES = ("cell", "image", "product", "geometric", "mean")
NEGATIVE_RULES = ("same", "max", "none-of-others")
IMAGE_SOURCES = ("field model", "cell model", "cell maximum", "field model CAM")
"""Where the image-level probabilities come from: the field model (one row per field), the cell model's image head
(one row per field), the highest probability of the field's cells per class (one row per field, see
:func:`cell_maximum`), or the field model's class activation maps averaged in each cell (one row per cell, see
:mod:`protloc.cells.cam`)."""
CELL_IMAGES = ("cell model", "cell maximum")
"""The image sources the cell model itself gives (no field model needed)."""

_EPS = 1e-7


@dataclass(frozen=True)
class FusionSpec:
    """One fusion rule (see the module docstring); the default is the cell model alone.

    Attributes:
        rule: one of :data:`RULES`.
        weight: the cell model's weight ``w`` of ``geometric`` and ``mean``.
        image: where the image probabilities come from (:data:`IMAGE_SOURCES`).
        negative: the rule of the scheme's exclusive class (``Negative``), :data:`NEGATIVE_RULES`.
        border: factor on every score of a cell cut by the field's border.
        small: factor on every score of a small cell.
        small_fraction: a cell is small below this fraction of the median area of its field's cells.
        thresholds: per-class thresholds for the fused scores (fitted with the rule); ``None``: the cell
            model's own.
    """

    rule: str = "cell"
    weight: float = 0.5
    image: str = "field model"
    negative: str = "same"
    border: float = 1.0
    small: float = 1.0
    small_fraction: float = 0.25
    thresholds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"fusion rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.negative not in NEGATIVE_RULES:
            raise ConfigError(f"Negative rule must be one of {', '.join(NEGATIVE_RULES)}, got {self.negative!r}")
        if self.image not in IMAGE_SOURCES:
            raise ConfigError(f"image source must be one of {', '.join(IMAGE_SOURCES)}, got {self.image!r}")
        for name in ("weight", "border", "small", "small_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fusion {name} must lie between 0 and 1, got {value}")

    @property
    def needs_image(self) -> bool:
        """Whether the rule reads the image probabilities at all."""
        return self.rule != "cell" or self.negative == "max"

    @property
    def needs_field_model(self) -> bool:
        return self.needs_image and self.image in ("field model", "field model CAM")

    @property
    def needs_cell_model(self) -> bool:
        """Whether the cell model runs: for its own scores, or for its image head."""
        return self.rule != "image" or self.negative == "max" or self.image in CELL_IMAGES

    def describe(self) -> str:
        """A short human name: ``"cell x image (field model), Negative: max, border x0.5"``."""
        image = f"image ({self.image})"
        name = {
            "cell": "cell model alone",
            "image": f"{image} to every cell",
            "product": f"cell x {image}",
            "geometric": f"cell^{self.weight:g} x {image}^{1 - self.weight:g}",
            "mean": f"{self.weight:g} cell + {1 - self.weight:g} {image}",
        }[self.rule]
        if self.negative != "same":
            name += f", Negative: {self.negative}"
        if self.border != 1.0:
            name += f", border x{self.border:g}"
        if self.small != 1.0:
            name += f", small x{self.small:g}"
        return name

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["thresholds"] = None if self.thresholds is None else [float(t) for t in self.thresholds]
        return data

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "card") -> FusionSpec:
        if not isinstance(data, dict):
            raise ModelError(f"{where}: the cell fusion is not an object; the package is damaged")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("thresholds") is not None:
            values["thresholds"] = tuple(float(t) for t in values["thresholds"])
        try:
            return cls(**values)
        except (ConfigError, TypeError) as exc:
            raise ModelError(f"{where}: the cell fusion is damaged ({exc})") from None


@dataclass(frozen=True)
class ImageHead:
    """A cell model's image-level head: a field's class scores pooled from its cells' logits by log-sum-exp,
    ``(1/r) log(mean exp(r z))`` (``r`` -> 0: the mean logit; ``r`` -> inf: the max).

    See :mod:`protloc.training.mil`, which trains through the same pool."""

    sharpness: float = 4.0
    pool: str = "lse"

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "sharpness": self.sharpness}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "card") -> ImageHead:
        if not isinstance(data, dict) or data.get("pool") != "lse":
            raise ModelError(f"{where}: unknown image head {data!r}; this protloc pools cells by 'lse'")
        return cls(sharpness=float(data.get("sharpness", 4.0)))

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """The field's image probabilities ``(K,)`` from its cells' probabilities ``(N, K)`` (zeros if no cell)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if len(probabilities) == 0:
            return np.zeros(probabilities.shape[1], np.float32)
        clipped = np.clip(probabilities, _EPS, 1 - _EPS)
        logits = np.log(clipped) - np.log1p(-clipped)
        r = self.sharpness
        top = logits.max(axis=0)
        pooled = top + np.log(np.mean(np.exp(r * (logits - top)), axis=0)) / r
        return (1.0 / (1.0 + np.exp(-pooled))).astype(np.float32)


# ------------------------------------------------------------------------------------ the card, one place


def fusion_of(cells: CellSpec | None, *, where: str = "card") -> FusionSpec:
    """The fusion recorded on a cell model's card (the cell model alone when none is)."""
    recorded = cells.fusion if cells is not None else None
    return FusionSpec() if recorded is None else FusionSpec.from_dict(recorded, where=where)


def image_head_of(cells: CellSpec | None, *, where: str = "card") -> ImageHead | None:
    """The image head recorded on a cell model's card (``None``: the model has none)."""
    recorded = cells.image_head if cells is not None else None
    return None if recorded is None else ImageHead.from_dict(recorded, where=where)


def field_model_of(cells: CellSpec | None) -> str | None:
    """The field model a cell model package carries: its folder, relative to the package (``None``: none)."""
    return cells.field_model if cells is not None and cells.field_model else None


def cells_section(
    cells: CellSpec | dict[str, Any],
    *,
    fusion: FusionSpec | None = None,
    image_head: ImageHead | None = None,
    field_model: str | None = None,
    fit: dict[str, Any] | None = None,
) -> CellSpec:
    """A cell model's crop settings (a :class:`CellSpec`, or a cell data set's ``cells.json``) with the fusion
    (and how it was fitted), the image head and the carried field model set."""
    spec = cells if isinstance(cells, CellSpec) else CellSpec.from_settings(cells)
    return dataclasses.replace(
        spec,
        fusion=fusion.to_dict() if fusion is not None else spec.fusion,
        fusion_fit=fit if fit is not None else spec.fusion_fit,
        image_head=image_head.to_dict() if image_head is not None else spec.image_head,
        field_model=field_model if field_model is not None else spec.field_model,
    )


# ---------------------------------------------------------------------------------------------- fusing


def cell_maximum(probabilities: np.ndarray) -> np.ndarray:
    """The cell model's answer for a field: ``(K,)`` each class's highest probability over its cells ``(N, K)``
    (zeros for a field without cells)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if len(probabilities) == 0:
        return np.zeros(probabilities.shape[-1], np.float32)
    return probabilities.max(axis=0)


def small_cells(areas: np.ndarray, fraction: float) -> np.ndarray:
    """Which cells of one field are small: area below ``fraction`` of the median area of the field's cells."""
    areas = np.asarray(areas, dtype=np.float64)
    if len(areas) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(areas < fraction * float(np.median(areas)))


def fuse(
    spec: FusionSpec,
    cell: np.ndarray | None,
    image: np.ndarray | None,
    *,
    border: np.ndarray | None = None,
    small: np.ndarray | None = None,
    negative: Sequence[int] = (),
) -> np.ndarray:
    """The fused scores ``(N, K)`` of ``N`` cells.

    Args:
        cell: ``(N, K)`` the cell model's probabilities (``None`` if the rule does not need them).
        image: ``(K,)`` the field's image probabilities, or ``(N, K)`` one row per cell (``None`` if unneeded).
        border: ``(N,)`` cells cut by the field's border.
        small: ``(N,)`` small cells (see :func:`small_cells`).
        negative: the scheme's exclusive class ids (``Negative``).

    Raises:
        ConfigError: the rule needs probabilities that were not given.
    """
    if spec.needs_cell_model and cell is None:
        raise ConfigError(f"fusion {spec.describe()!r} needs the cell model's probabilities")
    if spec.needs_image and image is None:
        raise ConfigError(f"fusion {spec.describe()!r} needs the image probabilities ({spec.image})")
    c = None if cell is None else np.asarray(cell, dtype=np.float64)
    n = len(c) if c is not None else len(border) if border is not None else 1
    i = None
    if image is not None:
        i = np.asarray(image, dtype=np.float64)
        i = np.broadcast_to(i, (n, i.shape[-1])) if i.ndim == 1 else i
    w = spec.weight
    if spec.rule == "cell":
        assert c is not None
        out = c.copy()
    elif spec.rule == "image":
        assert i is not None
        out = np.array(i)
    else:
        assert c is not None and i is not None
        if spec.rule == "product":
            out = c * i
        elif spec.rule == "geometric":
            out = np.power(np.clip(c, _EPS, 1), w) * np.power(np.clip(i, _EPS, 1), 1 - w)
        else:
            out = w * c + (1 - w) * i
    negative = [int(k) for k in negative]
    if negative and spec.negative != "same":
        if spec.negative == "max":
            assert c is not None and i is not None
            out[:, negative] = np.maximum(c[:, negative], i[:, negative])
        else:
            others = np.setdiff1d(np.arange(out.shape[1]), negative)
            out[:, negative] = np.prod(1.0 - out[:, others], axis=1, keepdims=True)
    if border is not None and spec.border != 1.0:
        out[np.asarray(border, dtype=bool)] *= spec.border
    if small is not None and spec.small != 1.0:
        out[np.asarray(small, dtype=bool)] *= spec.small
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------- fitting


@dataclass
class FusionInputs:
    """Every validation cell, field after field (in the order of a :class:`~protloc.cells.metrics.CellMatches`),
    with what the fusion rules combine.

    Attributes:
        cell: ``(N, K)`` the cell model's probabilities.
        images: image source -> ``(N, K)`` its field's probabilities repeated for each cell.
        border: ``(N,)`` cut by the field's border.
        areas: ``(N,)`` areas in pixels.
        offsets: ``(F + 1,)`` the cells of field ``f`` are rows ``offsets[f]:offsets[f + 1]``.
        field_labels: ``(F, K)`` the fields' labels (for the thresholds of the fused scores).
    """

    cell: np.ndarray
    images: dict[str, np.ndarray]
    border: np.ndarray
    areas: np.ndarray
    offsets: np.ndarray
    field_labels: np.ndarray

    def small(self, fraction: float) -> np.ndarray:
        parts = [small_cells(self.areas[a:b], fraction) for a, b in itertools.pairwise(self.offsets)]
        return np.concatenate(parts) if parts else np.zeros(0, bool)

    def fused(self, spec: FusionSpec, negative: Sequence[int]) -> np.ndarray:
        return fuse(
            spec,
            self.cell,
            self.images.get(spec.image),
            border=self.border,
            small=self.small(spec.small_fraction),
            negative=negative,
        )


@dataclass
class FusionFit:
    """The rule :func:`fit_fusion` chose, with the score of every rule it tried."""

    spec: FusionSpec
    map: float
    cell_alone: float
    candidates: list[tuple[FusionSpec, float]] = field(default_factory=list)
    fields: int = 0
    cells: int = 0

    def summary(self) -> dict[str, Any]:
        """For the card: what was chosen, on what, and the best score of each rule family."""
        best: dict[str, float] = {}
        for spec, value in self.candidates:
            key = spec.rule if spec.rule in ("cell", "image") else f"{spec.rule} ({spec.image})"
            best[key] = max(best.get(key, -1.0), value)
        return {
            "chosen": self.spec.describe(),
            "map": round(self.map, 6),
            "cell_model_alone": round(self.cell_alone, 6),
            "best_per_rule": {k: round(v, 6) for k, v in best.items()},
            "validation_fields": self.fields,
            "validation_cells": self.cells,
            "metric": "2021 challenge mAP (mask IoU >= 0.6) against per-cell truth",
        }


def candidate_specs(
    images: Sequence[str],
    *,
    has_negative: bool,
    weights: Sequence[float] = (0.25, 0.5, 0.75),
    factors: Sequence[float] = (1.0, 0.5),
    small_fraction: float = 0.25,
) -> Iterator[FusionSpec]:
    """The rules :func:`fit_fusion` tries, simplest first (the cell model alone is the first)."""
    negatives = NEGATIVE_RULES if has_negative else ("same",)
    for border, small in itertools.product(factors, factors):
        common = {"border": border, "small": small, "small_fraction": small_fraction}
        yield FusionSpec("cell", **common)  # type: ignore[arg-type]
        for image in images:
            for negative in negatives:
                if negative != "same":
                    yield FusionSpec("cell", image=image, negative=negative, **common)  # type: ignore[arg-type]
                yield FusionSpec("image", image=image, negative=negative, **common)  # type: ignore[arg-type]
                yield FusionSpec("product", image=image, negative=negative, **common)  # type: ignore[arg-type]
                for w in weights:
                    for rule in ("geometric", "mean"):
                        if rule == "geometric" and w == 0.5:
                            continue  # ranks exactly as the product does
                        yield FusionSpec(rule, weight=w, image=image, negative=negative, **common)  # type: ignore[arg-type]


def fit_fusion(
    inputs: FusionInputs,
    matches: Any,
    *,
    negative: Sequence[int] = (),
    candidates: Sequence[FusionSpec] | None = None,
    min_gain: float = 0.0,
) -> FusionFit:
    """Pick the fusion rule with the best 2021 mAP on validation fields with per-cell truth.

    The cell model alone is always a candidate and is kept unless another rule beats it by more than
    ``min_gain``, so the chosen rule never scores below the cell model alone on these fields. The chosen
    rule's thresholds are fitted so that each field's labels (the union of its cells' decisions) match its
    labels best (per-class F1).

    Args:
        inputs: the validation cells and what they combine.
        matches: those cells matched to the truth (:func:`protloc.cells.metrics.match_cells`).
        negative: the scheme's exclusive class ids.
        candidates: rules to try (default: :func:`candidate_specs` for the image sources in ``inputs``).

    Raises:
        ConfigError: no validation cells.
    """
    from protloc.cells.metrics import matched_map

    if len(inputs.cell) == 0:
        raise ConfigError("fitting the fusion needs validation cells")
    tried = list(candidates or candidate_specs(list(inputs.images), has_negative=bool(negative)))
    scored: list[tuple[FusionSpec, float]] = []
    for spec in tried:
        if spec.needs_image and spec.image not in inputs.images:
            continue
        value, _ = matched_map(matches, inputs.fused(spec, negative))
        scored.append((spec, value))
    plain = FusionSpec(small_fraction=tried[0].small_fraction)
    alone = next((value for spec, value in scored if spec == plain), None)
    if alone is None:
        alone, _ = matched_map(matches, inputs.fused(plain, negative))
        scored.insert(0, (plain, alone))
    best_spec, best = max(scored, key=lambda item: item[1])  # the first of equals: the simplest
    if best <= alone + min_gain:
        best_spec, best = plain, alone
    thresholds = fused_thresholds(inputs, best_spec, negative)
    return FusionFit(
        spec=dataclasses.replace(best_spec, thresholds=tuple(thresholds)),
        map=best,
        cell_alone=alone,
        candidates=scored,
        fields=len(inputs.offsets) - 1,
        cells=len(inputs.cell),
    )


def field_maxima(scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(F, K)`` each field's highest score per class over its cells (0 for a field without cells)."""
    out = np.zeros((len(offsets) - 1, scores.shape[1]), np.float32)
    for f, (a, b) in enumerate(itertools.pairwise(offsets)):
        if b > a:
            out[f] = scores[a:b].max(axis=0)
    return out


def fused_thresholds(inputs: FusionInputs, spec: FusionSpec, negative: Sequence[int] = ()) -> list[float]:
    """Per-class thresholds for ``spec``'s scores: the field's labels are the union of its cells', so each class's
    threshold is fitted (F1) on the fields' highest cell score against the fields' labels."""
    from protloc.metrics import fit_thresholds

    fields = field_maxima(inputs.fused(spec, negative), inputs.offsets)
    return [float(t) for t in fit_thresholds(inputs.field_labels, fields).values]
