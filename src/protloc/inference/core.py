"""Prediction without torch: preprocessing, test-time augmentation, streaming, and the ONNX Runtime backend.

Everything a deployment needs to turn channel files into probabilities lives here and imports neither torch
nor Lightning, so ``pip install 'protloc[runtime]'`` (numpy, image readers, ONNX Runtime) is enough to run
``protloc predict --backend onnx`` and the HTTP service. The torch backend
(:mod:`protloc.inference.torch_backend`) plugs into the same prediction core, :func:`batch_probabilities`;
:mod:`protloc.inference.backends` decides which one runs.

Preprocessing repeats what training did: read the model's channels in the model's order, map 16-bit to
8-bit the same way, resize the whole field to the model's input size (area interpolation when shrinking;
the Kaggle 512 px PNGs are themselves the full 2048/3072 px fields shrunk, so the scale matches), and
normalise with the card's per-channel mean and std. ``tiles=N`` instead cuts the field into N x N tiles,
each resized to the input size, and keeps each class's maximum over tiles (a protein present anywhere in
the field is present): useful for models trained on crops, or fields much larger than the training ones.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protloc.data.catalog import Catalog
from protloc.data.io import read_sample, resize_plane
from protloc.errors import ConfigError, DataError, ModelError
from protloc.inference.budget import PREFETCH_BATCHES
from protloc.model.card import ONNX_FILE, ModelCard, check_channels_available, read_card, resolve_package_path
from protloc.workers import imap, prefetch, thread_map

# The 8 symmetries of the square (dihedral group D4): k quarter turns, then an optional horizontal flip.
TTA_VIEWS: dict[str, tuple[int, bool]] = {
    "id": (0, False),
    "rot90": (1, False),
    "rot180": (2, False),
    "rot270": (3, False),
    "flip": (0, True),
    "flip_rot90": (1, True),
    "flip_rot180": (2, True),
    "flip_rot270": (3, True),
}
TTA_PRESETS: dict[str, tuple[str, ...]] = {
    "none": ("id",),
    "flips": ("id", "flip", "rot180", "flip_rot180"),
    "rot90": ("id", "rot90", "rot180", "rot270"),
    "d4": tuple(TTA_VIEWS),
    "all": tuple(TTA_VIEWS),
}


def parse_tta(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """A TTA preset (``none``, ``flips``, ``rot90``, ``d4``) or comma-separated view names."""
    if spec is None:
        return ("id",)
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in TTA_PRESETS:
            return TTA_PRESETS[text]
        names = [part.strip() for part in text.split(",") if part.strip()]
    else:
        names = list(spec)
    unknown = [n for n in names if n not in TTA_VIEWS]
    if unknown or not names:
        raise ConfigError(
            f"unknown TTA view {unknown[0] if unknown else spec!r}; use a preset ({', '.join(TTA_PRESETS)}) "
            f"or views from {', '.join(TTA_VIEWS)}"
        )
    return tuple(dict.fromkeys(names))


def apply_view(batch: np.ndarray, view: str) -> np.ndarray:
    """One TTA view of a ``(B, C, H, W)`` batch."""
    turns, flip = TTA_VIEWS[view]
    out = np.rot90(batch, k=turns, axes=(-2, -1)) if turns else batch
    if flip:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class Preprocessor:
    """Channel files -> normalised ``float32`` input, exactly as the model card says."""

    channels: tuple[str, ...]
    size: int
    bit_depth: int = 16
    tiles: int = 1

    @classmethod
    def from_card(cls, card: ModelCard, *, tiles: int = 1, bit_depth: int | None = None) -> Preprocessor:
        if tiles < 1 or tiles > 8:
            raise ConfigError(f"tiles must be between 1 and 8, got {tiles}")
        return cls(
            channels=card.channels,
            size=card.size,
            bit_depth=int(bit_depth or card.input.bit_depth),
            tiles=tiles,
        )

    def load(self, files: dict[str, Path], sample_id: str | None = None) -> np.ndarray:
        """Read a sample's files as uint8 ``(T, C, S, S)``: T = tiles², each resized to the input size."""
        image = read_sample(files, self.channels, bit_depth=self.bit_depth, sample_id=sample_id)
        return self.prepare_uint8(image)

    def prepare_uint8(self, image: np.ndarray) -> np.ndarray:
        """A ``(C, H, W)`` uint8 field -> ``(T, C, S, S)`` uint8 inputs (resized; tiled when asked)."""
        if image.ndim != 3 or image.shape[0] != len(self.channels):
            raise ConfigError(f"expected ({len(self.channels)}, H, W) for channels {self.channels}, got {image.shape}")
        height, width = image.shape[1:]
        n = self.tiles
        views = []
        for row, col in itertools.product(range(n), range(n)):
            crop = image[:, row * height // n : (row + 1) * height // n, col * width // n : (col + 1) * width // n]
            views.append(np.stack([resize_plane(plane, self.size) for plane in crop]))
        return np.stack(views)

    @staticmethod
    def to_pixels(batch_uint8: np.ndarray) -> np.ndarray:
        """uint8 -> float32 in 0-1: the network input (per-channel normalisation is inside the network)."""
        return batch_uint8.astype(np.float32) * np.float32(1.0 / 255.0)


class Backend(Protocol):
    """Turns a ``(B, C, S, S)`` float32 batch of 0-1 pixels into sigmoid probabilities ``(B, classes)``."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def run_with_tta(backend: Backend, batch: np.ndarray, views: Sequence[str]) -> np.ndarray:
    """Average the backend's probabilities over TTA views of a batch."""
    total = None
    for view in views:
        probabilities = backend(apply_view(batch, view))
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / len(views)


def batch_probabilities(
    backend: Backend, inputs: np.ndarray, views: Sequence[str] = ("id",), tile_aggregate: str = "max"
) -> np.ndarray:
    """The prediction core: probabilities ``(B, classes)`` for uint8 inputs ``(B, T, C, S, S)`` (T tiles each).

    Every caller computes probabilities here: batch prediction, evaluation, the service, multi-device prediction
    and the calibration at the end of training. Pixels are scaled to 0-1 (the network normalises them itself),
    each TTA view is run and averaged, and the tiles of a sample are combined (``max``: a protein present
    anywhere in the field is present; or ``mean``).
    """
    if inputs.ndim != 5:
        raise ValueError(f"expected uint8 inputs (B, T, C, S, S), got shape {inputs.shape}")
    if tile_aggregate not in ("max", "mean"):
        raise ConfigError(f"tile_aggregate must be max or mean, got {tile_aggregate!r}")
    count, tiles = inputs.shape[:2]
    flat = Preprocessor.to_pixels(inputs.reshape(count * tiles, *inputs.shape[2:]))
    probabilities = run_with_tta(backend, flat, views).reshape(count, tiles, -1)
    if tiles == 1:
        return probabilities[:, 0]
    return probabilities.max(axis=1) if tile_aggregate == "max" else probabilities.mean(axis=1)


# ---------------------------------------------------------------------------------------------- ONNX


class OnnxBackend:
    """ONNX Runtime session for an exported model (CPU by default; CUDA when available and asked)."""

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spin: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the ONNX backend needs onnxruntime: pip install 'protloc[runtime]'") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f"{path}: ONNX file not found; create it with `protloc export MODEL`")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # the threads sleep between operators, leaving the core to a decoding thread
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({exc.__class__.__name__}: {exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), dtype=np.float32)


def onnx_path_for(model: str | Path) -> Path:
    """The ONNX file of a package folder, or the path itself when it is an ``.onnx`` file."""
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return path
    return resolve_package_path(path) / ONNX_FILE


def load_onnx(model: str | Path, *, threads: int | None = None, spin: bool = True) -> tuple[ModelCard, OnnxBackend]:
    """The card and an ONNX Runtime backend for a package (with model.onnx) or an exported .onnx file (``spin``:
    see :class:`protloc.inference.budget.ThreadBudget`)."""
    path = onnx_path_for(model)
    if not path.is_file():
        raise ModelError(f"{model}: no {ONNX_FILE}; run `protloc export {model}` first")
    card = read_card(path if Path(model).suffix.lower() == ".onnx" else Path(model))
    return card, OnnxBackend(path, threads=threads, spin=spin)


# ------------------------------------------------------------------------------------------ streaming


def bounded_map(function: Callable[[Any], Any], items: Iterable[Any], *, workers: int, window: int) -> Iterator[Any]:
    """``map`` over worker processes with at most ``window`` tasks in flight, results in order (bounded memory);
    see :func:`protloc.workers.imap`."""
    return imap(function, items, workers=workers, window=window)


@dataclass(frozen=True)
class _LoadJob:
    preprocessor: Preprocessor
    items: tuple[tuple[str, dict[str, Path]], ...]

    def __call__(self) -> np.ndarray:
        return np.stack([self.preprocessor.load(files, sample_id) for sample_id, files in self.items])


def _run_job(job: _LoadJob) -> np.ndarray:
    return job()


def _load_jobs(
    catalog: Catalog, preprocessor: Preprocessor, *, batch_size: int, start: int
) -> tuple[range, Iterator[_LoadJob]]:
    """The first index of each batch from ``start`` on, and the job that reads that batch."""
    indices = range(start, len(catalog), batch_size)
    jobs = (
        _LoadJob(
            preprocessor,
            tuple(
                (catalog.ids[i], catalog.files[catalog.ids[i]])
                for i in range(first, min(first + batch_size, len(catalog)))
            ),
        )
        for first in indices
    )
    return indices, jobs


def iter_input_batches(
    catalog: Catalog,
    preprocessor: Preprocessor,
    *,
    batch_size: int,
    workers: int,
    start: int = 0,
    ahead: int = 0,
) -> Generator[tuple[int, np.ndarray], None, None]:
    """Yield ``(first index, uint8 inputs (B, T, C, S, S))`` for the catalog from ``start`` on, decoded in
    ``workers`` processes, or in this process (``workers <= 1``) on one thread ``ahead`` batches ahead of the
    caller (:func:`protloc.workers.prefetch`; 0: in the caller's thread)."""
    indices, jobs = _load_jobs(catalog, preprocessor, batch_size=batch_size, start=start)
    if workers <= 1:
        yield from prefetch(zip(indices, map(_run_job, jobs), strict=False), ahead)
        return
    yield from zip(indices, bounded_map(_run_job, jobs, workers=workers, window=max(2, 2 * workers)), strict=False)


def predict_catalog(
    backend: Backend,
    card: ModelCard,
    catalog: Catalog,
    *,
    tta: str | Sequence[str] | None = None,
    tiles: int = 1,
    tile_aggregate: str = "max",
    batch_size: int = 16,
    workers: int = 1,
    ahead: int = PREFETCH_BATCHES,
    lanes: int = 1,
    bit_depth: int | None = None,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    start: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | None:
    """Probabilities ``(N, classes)`` for every sample of ``catalog`` (from ``start``), streamed in batches.

    Args:
        backend: the network (torch or ONNX Runtime) as a batch -> probabilities function.
        card: the model card (channels, size, normalisation).
        tta: test-time augmentation preset or views (see :func:`parse_tta`).
        tiles: 1 resizes the whole field; N cuts N x N tiles (see the module docstring).
        workers: decoding processes; 0 or 1 decodes in this process, on a thread ``ahead`` batches ahead of the
            network (see :mod:`protloc.inference.budget`, which chooses both).
        lanes: more than 1: that many threads each decode a batch and run ``backend`` on it (the backend must
            accept calls from several threads, as ONNX Runtime's does); ``workers`` and ``ahead`` are unused.
        on_batch: when given, called with (first index, probabilities) per batch and nothing is kept in
            memory (returns ``None``): for streaming very large sets to disk.
    """
    check_channels_available(card, _channels_of(catalog), where=str(catalog.image_dir))
    if tile_aggregate not in ("max", "mean"):
        raise ConfigError(f"tile_aggregate must be max or mean, got {tile_aggregate!r}")
    preprocessor = Preprocessor.from_card(card, tiles=tiles, bit_depth=bit_depth)
    views = parse_tta(tta)
    _warn_on_size(catalog, preprocessor, card)
    kept: list[np.ndarray] = []
    done = start
    if on_progress:
        on_progress(done, len(catalog))

    def computed() -> Generator[tuple[int, np.ndarray], None, None]:
        if lanes > 1:
            indices, jobs = _load_jobs(catalog, preprocessor, batch_size=batch_size, start=start)
            lane_results = thread_map(
                lambda job: batch_probabilities(backend, job(), views, tile_aggregate), jobs, threads=lanes
            )
            with contextlib.closing(lane_results):  # a consumer that stops early cancels the batches not started
                yield from zip(indices, lane_results, strict=False)
            return
        batches = iter_input_batches(
            catalog, preprocessor, batch_size=batch_size, workers=workers, start=start, ahead=ahead
        )
        with contextlib.closing(batches):
            for first, inputs in batches:
                yield first, batch_probabilities(backend, inputs, views, tile_aggregate)

    with contextlib.closing(computed()) as results:
        for first, probabilities in results:
            if on_batch is not None:
                on_batch(first, probabilities)
            else:
                kept.append(probabilities)
            done = first + len(probabilities)
            if on_progress:
                on_progress(done, len(catalog))
    if on_batch is not None:
        return None
    return np.concatenate(kept) if kept else np.zeros((0, card.num_classes), np.float32)


def _channels_of(catalog: Catalog) -> list[str]:
    if not catalog.ids:
        return []
    first = catalog.files[catalog.ids[0]]
    return list(first)


def _warn_on_size(catalog: Catalog, preprocessor: Preprocessor, card: ModelCard) -> None:
    """One warning when the data's fields differ in size from the training data's (they are resized)."""
    if not catalog.ids:
        return
    from protloc.data.decoder import probe

    trained_on = card.source_size
    first_id = catalog.ids[0]
    path = catalog.files[first_id][preprocessor.channels[0]]
    try:
        height, width = probe(path).plane_shape
    except (DataError, OSError):  # an unreadable file is reported when it is read
        return
    if trained_on and [height, width] != list(trained_on):
        warnings.warn(
            f"{catalog.image_dir}: images are {width}x{height} px (e.g. {first_id}) but the model was trained on "
            f"{trained_on[1]}x{trained_on[0]} px fields; each is resized to its {preprocessor.size} px input "
            "(right when both cover the same field of view, as HPA's full-size TIFFs and 512 px PNGs do)",
            stacklevel=3,
        )
