"""The service object: what the endpoints do (decode, predict, batch, explain, model info), apart from routing."""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
from fastapi import Request

from protloc import __version__
from protloc.data.io import CHANNELS, parse_channels, resize_plane, split_channel_filename
from protloc.errors import DataError
from protloc.serve.cells import CellRequest, CellService
from protloc.serve.decode import Upload, read_upload_sample, sniff
from protloc.serve.engine import InferenceEngine
from protloc.serve.settings import ServiceSettings

log = logging.getLogger("protloc.serve")

STACK_SUFFIXES = (".tif", ".tiff", ".npy")


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    """A ``(C, H, W)`` field resized so that its longer side is at most ``side`` px."""
    height, width = image.shape[1:]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return np.stack([resize_plane(plane, size) for plane in image])


def _png_data_url(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def make_previews(image: np.ndarray, channels: tuple[str, ...], side: int) -> dict[str, Any]:
    """PNG data URLs of the composite and of each channel in its colour, at most ``side`` px."""
    from protloc.plots import composite_rgb, tint

    small = _shrink(image, side)
    return {
        "composite": _png_data_url(composite_rgb(small, channels)),
        "channels": {c: _png_data_url(tint(small[i], c)) for i, c in enumerate(channels)},
    }


class PredictionService:
    """The endpoints' work, kept apart from the routing."""

    KNOWN_FIELDS = frozenset((*CHANNELS, "stack"))

    def __init__(self, settings: ServiceSettings, engine: InferenceEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.model_name = engine.card.model_name
        self.cells = CellService(settings, engine)

    def model_info(self) -> dict[str, Any]:
        import importlib.util

        card = self.engine.card
        thresholds = [float(t) for t in card.thresholds]
        training = {k: v for k, v in card.training.items() if k not in ("data", "config") and not isinstance(v, dict)}
        explainable = (
            importlib.util.find_spec("torch") is not None
            and importlib.util.find_spec("pytorch_grad_cam") is not None
            and Path(self.settings.model).suffix.lower() != ".onnx"
        )
        return {
            "name": self.model_name,
            "kind": card.kind,
            "scheme": {
                "name": card.scheme.name,
                "title": card.scheme.title,
                "exclusive": [card.scheme.names[i] for i in card.scheme.exclusive],
            },
            "backend": self.engine.backend_name,
            "channels": list(self.engine.channels),
            "size": card.size,
            "bit_depth": self.engine.bit_depth,
            "classes": [
                {"id": c.id, "name": c.name, "short": c.short, "threshold": thresholds[c.id]}
                for c in card.scheme.classes
            ],
            "thresholds": thresholds,
            "decision": card.decision.to_dict(),
            "metrics": card.metrics,
            "architecture": card.architecture.to_dict(),
            "training": training,
            "adaptation": card.adaptation_summary(),
            "protloc_version": card.protloc_version,
            "created": card.created,
            "service_version": __version__,
            "explanations": explainable,
            "cells": self.cells.describe(),
        }

    async def reject_unknown_fields(self, request: Request) -> None:
        """A clear 422 for form fields the endpoint does not know (``image``, ``Red``...): a likely typo."""
        form = await request.form()
        unknown = sorted({key for key in form if key not in self.KNOWN_FIELDS})
        if unknown:
            raise DataError(
                f"unknown form field {unknown[0]!r}; send the channel images as the fields "
                f"{', '.join(CHANNELS)} or one stacked file as 'stack'"
            )
        counts = Counter(key for key, _ in form.multi_items())
        repeated = [key for key in (*CHANNELS, "stack") if counts[key] > 1]
        if repeated:
            raise DataError(
                f"the field {repeated[0]!r} was sent {counts[repeated[0]]} times; send each channel (or the stack) "
                "once per request, or use /predict/batch for several samples"
            )

    def _decode(
        self,
        files: dict[str, Upload],
        stack: Upload | None,
        stack_channels: str,
        label: str = "",
        channels: tuple[str, ...] | None = None,
    ) -> np.ndarray:
        order = parse_channels(stack_channels) if stack is not None else CHANNELS
        return read_upload_sample(
            files,
            channels or self.engine.channels,
            stack=stack,
            stack_channels=order,
            bit_depth=self.engine.bit_depth,
            label=label,
        )

    def _decode_and_prepare(
        self,
        files: dict[str, Upload],
        stack: Upload | None,
        stack_channels: str,
        previews: bool,
        label: str = "",
        channels: tuple[str, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """Decode in ``channels`` (default: the model's; for cells, the model's then those cells add)."""
        image = self._decode(files, stack, stack_channels, label, channels)
        field = image[: len(self.engine.channels)]
        inputs = self.engine.prepare(field)
        shown = make_previews(field, self.engine.channels, self.settings.preview_side) if previews else None
        return image, inputs, shown

    def _result(
        self,
        image: np.ndarray,
        probabilities: np.ndarray,
        source: str,
        decode_seconds: float,
        inference_seconds: float,
        sample_id: str | None = None,
        previews: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        labels = self.engine.decide(probabilities[None])[0]
        chosen = sorted(np.flatnonzero(labels).tolist(), key=lambda i: -float(probabilities[i]))
        thresholds = self.engine.thresholds
        return {
            "id": sample_id,
            "labels": [
                {
                    "id": int(i),
                    "name": self.engine.card.scheme.names[i],
                    "probability": round(float(probabilities[i]), 6),
                    "threshold": float(thresholds[i]),
                }
                for i in chosen
            ],
            "target": self.engine.card.scheme.format(labels),
            "probabilities": [round(float(p), 6) for p in probabilities],
            "image": {
                "width": int(image.shape[2]),
                "height": int(image.shape[1]),
                "channels": list(self.engine.channels),
                "source": source,
            },
            "seconds": round(decode_seconds + inference_seconds, 5),
            "timing": {
                "decode": round(decode_seconds, 5),
                "inference": round(inference_seconds, 5),
                "total": round(decode_seconds + inference_seconds, 5),
            },
            "previews": previews,
        }

    async def predict_one(
        self,
        files: dict[str, Upload],
        stack: Upload | None,
        stack_channels: str,
        *,
        previews: bool,
        cells: CellRequest | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        channels = self.cells.channels() if cells is not None else None
        if cells is not None:
            self.cells.predictor(cells.method)  # an impossible method is refused before decoding
        image, inputs, shown = await self.engine.in_decode_pool(
            self._decode_and_prepare, files, stack, stack_channels, previews, "", channels
        )
        decoded = time.perf_counter()
        probabilities = await self.engine.infer(inputs)
        finished = time.perf_counter()
        source = "stack" if stack is not None else "channels"
        result = self._result(image, probabilities, source, decoded - started, finished - decoded, previews=shown)
        if cells is not None and channels is not None:
            result["cells"], result["cell_info"] = await self.cells.predict(
                image, channels, cells, field_probabilities=probabilities
            )
        return result

    def group_batch(self, uploads: list[Upload]) -> dict[str, tuple[dict[str, Upload], Upload | None]]:
        """Sample Id -> (channel files, stacked file) from the uploads' file names.

        Raises:
            DataError: a file name that names no sample, a file given twice, or too many samples.
        """
        samples: dict[str, tuple[dict[str, Upload], Upload | None]] = {}
        for upload in uploads:
            name = upload.filename
            parsed = split_channel_filename(name)
            if parsed is not None:
                sample_id, channel = parsed
                files, stack = samples.setdefault(sample_id, ({}, None))
                if channel in files:
                    raise DataError(f"{name}: sample {sample_id} has two {channel} files")
                files[channel] = upload
                continue
            suffix = PurePath(name).suffix.lower()
            if suffix in STACK_SUFFIXES or (not suffix and sniff(upload.data) in ("tiff", "npy") and name):
                sample_id = PurePath(name).stem if suffix else name
                files, stack = samples.setdefault(sample_id, ({}, None))
                if stack is not None:
                    raise DataError(f"{name}: sample {sample_id} has two stacked files")
                samples[sample_id] = (files, upload)
                continue
            shown = repr(name) if name else "a file without a name"
            raise DataError(
                f"{shown}: cannot tell which sample it belongs to; name channel images <Id>_<channel>.<ext> "
                "(e.g. A1_red.png, channel red, green, blue or yellow) and stacked files <Id>.tif or <Id>.npy"
            )
        if not samples:
            raise DataError("no files received; send the samples' files in the repeated form field 'files'")
        limit = self.settings.max_batch_samples
        if len(samples) > limit:
            raise DataError(f"{len(samples)} samples in one request; this service takes at most {limit} per request")
        return samples

    async def predict_batch(
        self, uploads: list[Upload], stack_channels: str, cells: CellRequest | None = None
    ) -> list[dict[str, Any]]:
        import asyncio

        samples = self.group_batch(uploads)
        channels = self.cells.channels() if cells is not None else None
        if cells is not None:
            self.cells.predictor(cells.method)

        async def one(sample_id: str, files: dict[str, Upload], stack: Upload | None) -> dict[str, Any]:
            started = time.perf_counter()
            label = f"sample {sample_id}"
            image, inputs, _ = await self.engine.in_decode_pool(
                self._decode_and_prepare, files, stack, stack_channels, False, label, channels
            )
            decoded = time.perf_counter()
            probabilities = await self.engine.infer(inputs)
            source = "stack" if stack is not None else "channels"
            result = self._result(
                image, probabilities, source, decoded - started, time.perf_counter() - decoded, sample_id
            )
            if cells is not None and channels is not None:
                result["cells"], result["cell_info"] = await self.cells.predict(
                    image, channels, cells, label, field_probabilities=probabilities
                )
            return result

        return list(await asyncio.gather(*(one(i, f, s) for i, (f, s) in samples.items())))

    async def explain(
        self,
        files: dict[str, Upload],
        stack: Upload | None,
        stack_channels: str,
        class_id: int | None,
        max_side: int | None,
    ) -> tuple[bytes, dict[str, str]]:
        import asyncio

        engine = self.engine
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(engine.inference_pool, engine.explainer)  # 501 before decoding, if unavailable
        image = await engine.in_decode_pool(self._decode, files, stack, stack_channels)
        # Explain a copy no larger than the picture asked for (never below the model's input, which every field
        # is resized to anyway): the maps are computed at the field's size, and a full-size field costs GBs.
        if max_side is not None:
            image = await engine.in_decode_pool(_shrink, image, max(max_side, engine.preprocessor.size))
        explanation, chosen = await loop.run_in_executor(engine.inference_pool, engine.explain, image, class_id)
        png = await engine.in_decode_pool(_overlay_png, explanation, chosen, max_side)
        probability = float(explanation.probabilities[chosen])
        headers = {
            "X-Class-Id": str(chosen),
            "X-Class-Name": engine.card.scheme.names[chosen],
            "X-Probability": f"{probability:.6f}",
            "X-Threshold": f"{float(explanation.thresholds[chosen]):.6f}",
            "Cache-Control": "no-store",
        }
        return png, headers


def _overlay_png(explanation: Any, class_id: int, max_side: int | None) -> bytes:
    """The class's map over the composite as PNG, shrunk to ``max_side`` when given."""
    from protloc.explanation.explain import overlay_rgb
    from protloc.plots import composite_rgb

    image = explanation.image
    heat = explanation.maps[class_id]
    if max_side is not None and max(image.shape[1:]) > max_side:
        image = _shrink(image, max_side)
        heat = cv2.resize(heat, (image.shape[2], image.shape[1]), interpolation=cv2.INTER_AREA)
    picture = overlay_rgb(composite_rgb(image, explanation.channels), heat)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()
