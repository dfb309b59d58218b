"""Per-cell results in the service: segment the uploaded field, score every cell, shape cells for JSON.

The work itself is :mod:`protloc.cells` (the segmenter, :func:`~protloc.cells.predict.predict_field_cells`, the
2021 mask encoding); this module only decides *where* it runs and what the answer looks like:

* **segmentation** (and shaping the answer: masks, outlines) runs on the ``cells`` pool of the engine, with
  ``cell_threads`` threads (default 1), so however many requests are admitted (``max_pending``), at most that
  many fields are segmented at a time and the memory a segmentation takes is bounded by it. Fields over
  ``max_cell_pixels`` are refused (422) before segmenting;
* **scoring** (the cell model on the crops, the field model for the baseline and the mix) runs on the
  engine's inference pool, in turn with the field predictions, on the backends the service already holds:
  the field model is never loaded twice.

Each cell in the answer carries its mask twice: in the **2021 competition encoding** (``mask.counts``: COCO
RLE of the full-field mask, zlib-compressed, base64; :func:`protloc.cells.encode.decode_mask` reads it back,
``size`` is ``[height, width]``), which tools that score or store masks take as it is, and as an **outline
polygon** in field pixel coordinates (``[[x, y], ...]``, a pixel ``(row, col)`` covering ``[col, col + 1) x
[row, row + 1)``), simplified to within ``OUTLINE_TOLERANCE`` px, which a web page draws without decoding.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from protloc.errors import ConfigError, DataError, ModelError, require
from protloc.model.card import ModelCard
from protloc.serve.engine import InferenceEngine
from protloc.serve.settings import ServiceSettings

MASK_ENCODING = "hpa2021-rle"
"""Name of the mask encoding in the answers: the 2021 challenge's (see :mod:`protloc.cells.encode`)."""

OUTLINE_TOLERANCE = 0.5
"""Largest distance, in field pixels, between a cell's true boundary and the outline polygon returned."""

CellMethod = Literal["auto", "cell", "baseline", "mix", "fusion"]

CELL_METHODS: tuple[str, ...] = get_args(CellMethod)
"""What ``?cell_method=`` takes: ``auto`` is the cell model when one is loaded, else the baseline."""


@dataclass(frozen=True)
class CellRequest:
    """What a request asked of the cells: which method (one of :data:`CELL_METHODS`)."""

    method: str = "auto"


def outline_polygon(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """The boundary of a binary mask's largest part as a closed polygon ``[[x, y], ...]`` in pixel-edge coordinates.

    ``offset`` ``(y0, x0)`` is where ``mask`` sits in the field (a cell's box). The polygon is simplified with
    Douglas-Peucker to within :data:`OUTLINE_TOLERANCE` px; the first point is not repeated at the end.
    """
    import cv2
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return []
    longest = max(contours, key=len)
    if len(longest) > 1 and np.array_equal(longest[0], longest[-1]):
        longest = longest[:-1]
    # Douglas-Peucker: OpenCV's, ~50x faster than scikit-image's approximate_polygon on long boundaries.
    simple = cv2.approxPolyDP(longest.astype(np.float32)[:, None, :], OUTLINE_TOLERANCE, True)[:, 0, :]
    # find_contours works on pixel centres (row r, col c); a pixel covers [c, c + 1) on the page: +0.5, and
    # -1 for the padding.
    ys = simple[:, 0] - 0.5 + offset[0]
    xs = simple[:, 1] - 0.5 + offset[1]
    return [[round(float(x), 2), round(float(y), 2)] for x, y in zip(xs, ys, strict=True)]


def palette(n_classes: int) -> list[str]:
    """``#rrggbb`` colour of every class, the palette of :func:`protloc.cells.draw.class_colours`."""
    from protloc.cells.draw import class_colours

    return ["#{:02x}{:02x}{:02x}".format(*(int(v) for v in row)) for row in class_colours(n_classes)]


class CellService:
    """The service's per-cell prediction: the cell model (if any), the segmenter and the limits.

    Args:
        settings: the service's settings (``cell_model``, ``cell_mix``, ``cell_threads``, ``max_cell_pixels``).
        engine: the loaded field model; its backend serves the baseline and the mix.

    Raises:
        ModelError: the served model is a cell model, or ``cell_model`` is not one.
    """

    def __init__(self, settings: ServiceSettings, engine: InferenceEngine) -> None:
        from protloc.cells.predict import is_cell_model

        self.settings = settings
        self.engine = engine
        if is_cell_model(engine.card):
            raise ModelError(
                f"{settings.model}: is a cell model (trained on cell crops); serve a field model and give this one "
                "as the cell model (protloc serve FIELD_MODEL --cells CELL_MODEL)"
            )
        self.cell_card: ModelCard | None = None
        self.cell_backend: Any = None
        if settings.cell_model is not None:
            from protloc.inference.predict import load_backend
            from protloc.serve.engine import resolve_backend

            chosen = resolve_backend(settings.cell_model, settings.backend)
            self.cell_card, self.cell_backend = load_backend(
                settings.cell_model, chosen, device=settings.device, threads=engine.threads
            )
            if not is_cell_model(self.cell_card):
                raise ModelError(
                    f"{settings.cell_model}: not a cell model (its card has no 'cells' section); serve it as the "
                    "model instead"
                )
            if self.cell_card.scheme.names != engine.card.scheme.names:
                raise ModelError(
                    f"{settings.cell_model}: the cell model predicts {self.cell_card.scheme.describe()} but the "
                    f"served model {engine.card.scheme.describe()}; serve models of the same classes"
                )
            for module in ("skimage", "pycocotools"):  # a service started for cells fails now, not per request
                require(module, "cells")
            import pycocotools.mask  # noqa: F401
            import skimage.measure  # noqa: F401 - loaded at start rather than by the first request
        self._segmenter: Any = None

    # ------------------------------------------------------------------------------------------ info

    @property
    def segmenter(self) -> Any:
        """The segmenter the cell model was trained with (from its card), else the classical default."""
        if self._segmenter is None:
            from protloc.cells.predict import segmenter_from_card

            self._segmenter = segmenter_from_card(self.cell_card)
        return self._segmenter

    def methods(self) -> list[str]:
        """The values of ``?cell_method=`` this service can answer (``auto``: the cell model's fitted fusion)."""
        return list(CELL_METHODS) if self.cell_card is not None else ["auto", "baseline"]

    def describe(self) -> dict[str, Any]:
        """For ``GET /model``: what per-cell prediction this service offers."""
        auto = self.predictor("auto")
        cell = self.cell_card
        return {
            "cell_model": None if cell is None else cell.model_name,
            "crop_size": None if cell is None else cell.size,
            "methods": self.methods(),
            "default_method": auto.method,
            "default_fusion": auto.applied_fusion.describe(),
            "mix": self.settings.cell_mix,
            "mask_encoding": MASK_ENCODING,
            "max_pixels": self.settings.max_cell_pixels,
            "adaptation": {} if cell is None else cell.adaptation_summary(),
        }

    def channels(self) -> tuple[str, ...]:
        """Channels a field must have for cells: the field model's, then those the segmenter and cell model add."""
        from protloc.data.io import CHANNELS

        wanted = set(self.engine.channels) | set(self.segmenter.channels)
        if self.cell_card is not None:
            wanted |= set(self.cell_card.channels)
        extra = [c for c in CHANNELS if c in wanted and c not in self.engine.channels]
        return (*self.engine.channels, *extra)

    # ------------------------------------------------------------------------------------------ running

    def predictor(self, method: str) -> Any:
        """The :class:`~protloc.cells.predict.CellPredictor` for one request's method, on the loaded backends.

        Raises:
            ConfigError: an unknown method, or one that needs the cell model this service does not have.
        """
        from protloc.cells.predict import CellPredictor

        if method not in CELL_METHODS:
            raise ConfigError(f"cell_method {method!r} is not one of {', '.join(CELL_METHODS)}")
        if method == "auto":
            method = "fusion" if self.cell_card is not None else "baseline"
        if method in ("cell", "mix", "fusion") and self.cell_card is None:
            raise ConfigError(
                f"cell_method {method!r} needs a cell model, and this service has none (start it with --cells "
                "CELL_MODEL); cell_method=baseline gives every cell the field's probabilities"
            )
        from protloc.cells.fusion import FusionSpec
        from protloc.cells.predict import fusion_of, image_head_of, predictor_thresholds

        use_cell = method in ("cell", "mix", "fusion")
        if method == "cell":
            fusion = FusionSpec()
        elif method == "mix":
            fusion = FusionSpec("mean", weight=self.settings.cell_mix)
        elif method == "fusion":
            assert self.cell_card is not None
            fusion = fusion_of(self.cell_card.cells, where=str(self.settings.cell_model))
        else:
            fusion = FusionSpec("image")
        use_field = fusion.needs_field_model
        predictor = CellPredictor(
            segmenter=self.segmenter,
            cell_card=self.cell_card if use_cell else None,
            cell_backend=self.cell_backend if use_cell else None,
            field_card=self.engine.card if use_field else None,
            field_backend=self.engine.backend if use_field else None,
            fusion=fusion,
            image_head=image_head_of(self.cell_card.cells) if use_cell and self.cell_card is not None else None,
        )
        predictor.thresholds = predictor_thresholds(predictor)
        return predictor

    def _segment(self, image: np.ndarray, channels: tuple[str, ...], label: str) -> np.ndarray:
        height, width = image.shape[1:]
        limit = self.settings.max_cell_pixels
        if height * width > limit:
            prefix = f"{label}: " if label else ""
            raise DataError(
                f"{prefix}a {width}x{height} px field ({height * width / 1e6:.1f} Mpx) is over this service's limit "
                f"for cell segmentation ({limit / 1e6:.1f} Mpx); send a smaller field, or restart the service with "
                "a larger --max-cell-mpx"
            )
        segmenter = self.segmenter
        return np.asarray(segmenter(image[[channels.index(c) for c in segmenter.channels]]), dtype=np.int32)

    async def predict(
        self,
        image: np.ndarray,
        channels: tuple[str, ...],
        request: CellRequest,
        label: str = "",
        field_probabilities: np.ndarray | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The cells of one decoded field and a summary of how they were made (see the module docstring).
        ``field_probabilities``: the service's answer for the whole field, reused so that the field network runs
        once per request.

        Raises:
            DependencyError: scikit-image or pycocotools is missing (HTTP 501).
            ConfigError: a method this service cannot answer (422).
            DataError: the field is over ``max_cell_pixels`` (422).
        """
        from protloc.cells.predict import predict_field_cells

        for module in ("skimage", "pycocotools"):
            require(module, "cells")
        predictor = self.predictor(request.method)
        loop = asyncio.get_running_loop()
        pool = self.engine.worker_pool("cells", self.settings.cell_threads)
        started = time.perf_counter()
        labels = await loop.run_in_executor(pool, self._segment, image, channels, label)
        segmented = time.perf_counter()
        result = await loop.run_in_executor(
            self.engine.inference_pool,
            lambda: predict_field_cells(
                predictor,
                image,
                channels=channels,
                labels=labels,
                embeddings=False,
                field_probabilities=field_probabilities,
            ),
        )
        scored = time.perf_counter()
        cells = await loop.run_in_executor(pool, self._shape, result, predictor.thresholds, predictor.class_names)
        summary = {
            "method": result.method,
            "mix": predictor.mix,
            "fusion": predictor.applied_fusion.describe(),
            "count": len(cells),
            "segmenter": predictor.segmenter.settings(),
            "mask_encoding": MASK_ENCODING,
            "palette": palette(len(predictor.thresholds)),
            "thresholds": [float(t) for t in predictor.thresholds],
            "timing": {
                "segment": round(segmented - started, 5),
                "score": round(scored - segmented, 5),
                "encode": round(time.perf_counter() - scored, 5),
            },
        }
        return cells, summary

    def _shape(self, result: Any, thresholds: list[float], names: tuple[str, ...]) -> list[dict[str, Any]]:
        """One JSON-ready dict per cell of a :class:`~protloc.cells.predict.FieldCellPrediction`, its classes
        named by ``names`` (the scheme of the model that scored the cells)."""
        from protloc.cells.encode import encode_mask

        height, width = result.labels.shape
        rows = result.as_dicts(names)
        cells = []
        for row, cell in enumerate(rows):
            y0, x0, y1, x1 = cell["box"]
            full = np.zeros((height, width), dtype=bool, order="F")  # the encoder's order: no copy of the field
            full[y0:y1, x0:x1] = cell["mask"]
            probabilities = result.probabilities[row]
            chosen = sorted(np.flatnonzero(result.decisions[row]).tolist(), key=lambda k: -float(probabilities[k]))
            cells.append(
                {
                    "cell": cell["cell"],
                    "box": cell["box"],
                    "area": cell["area"],
                    "centroid": [round(v, 3) for v in cell["centroid"]],
                    "border": cell["border"],
                    "top": int(np.argmax(probabilities)),
                    "labels": [
                        {
                            "id": int(k),
                            "name": names[k],
                            "probability": round(float(probabilities[k]), 6),
                            "threshold": thresholds[k],
                        }
                        for k in chosen
                    ],
                    "probabilities": [round(float(p), 6) for p in probabilities],
                    "mask": {"encoding": MASK_ENCODING, "size": [height, width], "counts": encode_mask(full)},
                    "outline": outline_polygon(cell["mask"], (y0, x0)),
                }
            )
        return cells
