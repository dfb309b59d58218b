"""Segment fields into cells: a classical seeded watershed by default, learned segmenters where installed.

**The classical segmenter** (:class:`ClassicalSegmenter`, scikit-image, no weights) works at a fixed working
resolution: the field is shrunk (area interpolation) so its longer side is ``work_side`` px (512 by default:
a 2048 px HPA field by 4, a 3072 px one by 6; Kaggle 2018's 512 px fields are the same field of view and
are used as they are). Cost and memory are therefore nearly independent of the field size, and a nucleus
has about the same size in working pixels whatever the camera. The lengths and areas of
:class:`ClassicalParams` are given for a 512 px working plane and scaled to the actual one
(:meth:`ClassicalParams.at`), so a finer ``work_side`` finds the same cells with smoother edges. Then:

1. *Nuclei* (blue): Gaussian smoothing, Otsu threshold, holes filled, small specks removed; touching nuclei
   are split by a watershed on the distance transform, seeded at its maxima that stand ``split_depth`` px
   above the saddle between them (an elongated nucleus keeps one seed).
2. *Cell bodies* (red microtubules and yellow ER, each scaled by its 99.5th percentile, then averaged and
   smoothed): foreground is the pixels above ``cell_threshold`` x Otsu, plus the nuclei, at most
   ``max_cell_radius`` working px from a nucleus; a watershed of the inverted signal seeded by the nuclei
   grows one body per nucleus, so boundaries fall in the dim valleys between cells. Nuclei are filled in that
   signal (``fill_nuclei``) and distance from the nearest nucleus raises the elevation (``distance_weight``),
   so where touching cells show no valley the boundary falls between their nuclei (issue 19: on both
   synthetic generators this lifted matched-cell F1 at IoU 0.75 by 0.1-0.4, see BENCHMARKS.md).
3. Cells smaller than ``min_cell_area`` are dropped, ids renumbered ``1..N`` in raster order, and the label
   image is enlarged to the field's size by nearest neighbour (edges are therefore stepped by the shrink
   factor: 4 px on a 2048 px field, under 1 % of a cell's width).

A field without a blue channel cannot be segmented; one without red and yellow gets nuclei grown by
``max_cell_radius`` / 3 as cell bodies.

**Learned segmenters** plug in through the :class:`Segmenter` protocol: an object with a ``name``, the
``channels`` it reads and a ``__call__(image) -> labels``. :func:`register_segmenter` adds a factory under a
name; :func:`create_segmenter` builds one. Adapters for cellpose and HPA's cell segmentation networks are
registered; each imports its package only when built, needs weights the user already has on disk (never
downloaded by protloc) and raises a one-line :class:`~protloc.errors.ProtlocError` when either is missing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from protloc.data.io import parse_channels, resize_plane
from protloc.errors import ConfigError, DataError, DependencyError, ModelError


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns a field into a label image.

    Attributes:
        name: short name stored with the results (``"classical"``, ``"cellpose"``).
        channels: the channels it reads, in the order of ``image``'s first axis.
    """

    name: str
    channels: tuple[str, ...]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Segment ``(C, H, W)`` ``uint8`` (``C = len(channels)``) into an ``(H, W)`` ``int32`` label image."""
        ...

    def settings(self) -> dict[str, Any]:
        """The settings that produced the labels, stored beside them (JSON-serialisable)."""
        ...


# ------------------------------------------------------------------------------------------ classical


REFERENCE_SIDE = 512
"""Working side for which :class:`ClassicalParams` lengths and areas are given."""

REFERENCE_NUCLEUS_AREA = 1600.0
"""Median nucleus area, px, of an HPA field of view on a 512 px plane: measured with the default settings on
genuine fields (seven Kaggle 2021 fields: median of their medians 1,493 px; twenty Kaggle 2018 fields: 1,664 px).
``match_nuclei`` brings a field's nuclei to it."""


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of the classical segmenter; lengths and areas are in pixels of a 512 px working plane
    (see :meth:`at`)."""

    work_side: int = 512
    """The field is shrunk so that its longer side is this many px (never enlarged)."""
    smooth_sigma: float = 2.0
    """Gaussian smoothing before thresholding."""
    min_nucleus_area: int = 120
    """Nuclei smaller than this are specks, not nuclei (a typical HPA nucleus covers ~1,500-2,500 px)."""
    split_depth: float = 3.0
    """Touching nuclei are split where the distance to their edge dips at least this much between them."""
    cell_threshold: float = 0.5
    """Cell-body foreground: the smoothed cytoplasm signal above this fraction of its Otsu threshold."""
    max_cell_radius: int = 90
    """A cell body reaches at most this far from its nucleus."""
    min_cell_area: int = 300
    """Cells smaller than this are dropped."""
    distance_weight: float = 0.3
    """The body watershed's elevation rises by this much (the signal spans 0-1) per ``max_cell_radius`` of
    distance from the nearest nucleus, so where touching cells show no dim valley between them the boundary
    falls about midway between their nuclei instead of wandering with the noise (0: the signal alone)."""
    match_nuclei: bool = False
    """Scale the lengths and areas to the field's own nuclei instead of assuming HPA's field of view, where they
    are smaller than an HPA field's: their median area (a first, unsplit thresholding of the blue plane) is
    brought to ``REFERENCE_NUCLEUS_AREA`` of a 512 px HPA plane (lengths by the square root of the ratio, down
    to 1/4). For fields at a lower magnification or a larger pixel size; larger nuclei than HPA's are left to the
    reference settings, which segmented them better than scaled ones (BENCHMARKS.md, "Segmentation at another
    magnification"). Off by default: HPA fields need nothing."""
    fill_nuclei: bool = True
    """Inside nuclei the cytoplasm signal is raised to its 90th percentile over the foreground: a nucleus that is
    darker than its cytoplasm in the microtubule and ER channels is then no barrier around its own seed, which a
    neighbour's body would otherwise flow around."""

    def at(self, side: int) -> ClassicalParams:
        """These settings for a working plane whose longer side is ``side`` px.

        Lengths and areas above are given for a 512 px working side (a whole HPA field of view); a finer
        working resolution scales them (lengths by ``side / 512``, areas by its square), so the same
        physical cell is found whatever ``work_side`` is chosen.
        """
        k = side / REFERENCE_SIDE
        return replace(
            self,
            smooth_sigma=self.smooth_sigma * k,
            min_nucleus_area=max(1, round(self.min_nucleus_area * k * k)),
            split_depth=self.split_depth * k,
            max_cell_radius=max(1, round(self.max_cell_radius * k)),
            min_cell_area=max(1, round(self.min_cell_area * k * k)),
        )

    def __post_init__(self) -> None:
        if self.work_side < 64:
            raise ConfigError(f"work_side must be at least 64 px, got {self.work_side}")
        for name in ("smooth_sigma", "min_nucleus_area", "split_depth", "max_cell_radius", "min_cell_area"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.cell_threshold <= 2:
            raise ConfigError(f"cell_threshold must lie in (0, 2], got {self.cell_threshold}")
        if not isinstance(self.match_nuclei, bool) or not isinstance(self.fill_nuclei, bool):
            raise ConfigError("match_nuclei and fill_nuclei must be true or false")
        if not 0 <= self.distance_weight <= 10:
            raise ConfigError(f"distance_weight must lie in [0, 10], got {self.distance_weight}")


def _scaled(plane: np.ndarray) -> np.ndarray:
    """A plane as float32 in 0-1 by its 99.5th percentile (a few saturated pixels do not set the scale)."""
    values = plane.astype(np.float32)
    top = float(np.percentile(values, 99.5))
    if top <= 0:
        return np.zeros_like(values)
    return np.clip(values / top, 0.0, 1.0)


def _drop_small_objects(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` without its connected components smaller than ``min_area`` px."""
    from scipy import ndimage

    components, _ = ndimage.label(mask)
    areas = np.bincount(components.ravel())
    keep = areas >= min_area
    keep[0] = False
    return np.asarray(keep[components])


def _nucleus_foreground(blue: np.ndarray, sigma: float) -> np.ndarray | None:
    """The blue plane smoothed and thresholded (Otsu), holes filled: nuclei, touching ones unsplit; ``None`` for
    a flat, empty plane, where Otsu would split noise."""
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    smooth = gaussian(blue.astype(np.float32), sigma=sigma, preserve_range=True)
    if float(smooth.max()) - float(smooth.min()) < 4.0:
        return None
    return np.asarray(ndimage.binary_fill_holes(smooth > threshold_otsu(smooth)))


def segment_nuclei(blue: np.ndarray, params: ClassicalParams) -> np.ndarray:
    """Nuclei of one working-resolution blue plane (``uint8``) as an ``int32`` label image."""
    from scipy import ndimage
    from skimage.filters import gaussian
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    foreground = _nucleus_foreground(blue, params.smooth_sigma)
    if foreground is None:
        return np.zeros(blue.shape, dtype=np.int32)
    mask = _drop_small_objects(foreground, params.min_nucleus_area)
    if not mask.any():
        return np.zeros(blue.shape, dtype=np.int32)
    distance = ndimage.distance_transform_edt(mask)
    distance = gaussian(distance, sigma=1.0, preserve_range=True)
    # Seeds: maxima of the distance that stand at least split_depth above the saddle to the next one, so an
    # elongated nucleus keeps one seed and two touching round ones get two.
    # (computed per nucleus clump, inside its box: the same seeds, several times faster than on the whole plane)
    components, _ = ndimage.label(mask)
    peaks = np.zeros(mask.shape, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == index
        peaks[box] |= h_maxima(np.where(inside, distance[box], 0.0), params.split_depth).astype(bool) & inside
    markers, _ = ndimage.label(peaks)
    nuclei = watershed(-distance, markers, mask=mask)
    areas = np.bincount(nuclei.ravel())
    small = np.flatnonzero(areas < params.min_nucleus_area)
    nuclei[np.isin(nuclei, small[small > 0])] = 0
    return nuclei.astype(np.int32)


def nucleus_scale(blue: np.ndarray, params: ClassicalParams) -> float:
    """How much larger (> 1) or smaller this working plane's nuclei are than an HPA field's at the same side:
    the square root of their median area over ``REFERENCE_NUCLEUS_AREA`` scaled to the plane, from a plain
    thresholding of the blue plane (touching nuclei unsplit; the median is robust to a few clumps), clamped to
    1/4-4; 1 when no nucleus is found."""
    from scipy import ndimage

    foreground = _nucleus_foreground(blue, params.smooth_sigma)
    if foreground is None:
        return 1.0
    components, count = ndimage.label(foreground)
    areas = np.bincount(components.ravel())[1:]
    areas = areas[areas >= max(4, params.min_nucleus_area // 16)]  # specks of any plausible scale are not nuclei
    if count == 0 or areas.size == 0:
        return 1.0
    expected = REFERENCE_NUCLEUS_AREA * (max(blue.shape) / REFERENCE_SIDE) ** 2
    return float(np.clip(np.sqrt(np.median(areas) / expected), 0.25, 4.0))


def grow_cells(nuclei: np.ndarray, cytoplasm: np.ndarray | None, params: ClassicalParams) -> np.ndarray:
    """Grow one cell body per nucleus over the cytoplasm signal (0-1 float) by a seeded watershed."""
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    if not nuclei.any():
        return nuclei
    near = ndimage.distance_transform_edt(nuclei == 0)
    if cytoplasm is None:
        reach = near <= params.max_cell_radius / 3
        return watershed(near, nuclei, mask=reach | (nuclei > 0)).astype(np.int32)
    smooth = gaussian(cytoplasm, sigma=params.smooth_sigma, preserve_range=True)
    spread = float(smooth.max()) - float(smooth.min())
    threshold = threshold_otsu(smooth) * params.cell_threshold if spread > 1e-3 else np.inf
    foreground = ((smooth > threshold) & (near <= params.max_cell_radius)) | (nuclei > 0)
    foreground = ndimage.binary_fill_holes(foreground)
    if params.fill_nuclei:
        smooth = np.where(nuclei > 0, np.percentile(smooth[foreground], 90), smooth)
    # Distance to the nearest nucleus raises the elevation (see ClassicalParams.distance_weight); its tiny
    # floor breaks ties in the signal, so a body does not leak around another.
    elevation = -smooth + (1e-3 + params.distance_weight / params.max_cell_radius) * near
    return watershed(elevation, nuclei, mask=foreground).astype(np.int32)


def upsample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Enlarge a label image to ``shape`` by nearest neighbour (ids are never blended)."""
    if labels.shape == shape:
        return labels
    rows = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1).astype(np.intp)
    return labels[rows[:, None], cols[None, :]]


class ClassicalSegmenter:
    """Nuclei from the blue channel, cell bodies grown over red and yellow (see the module docstring)."""

    name = "classical"

    def __init__(
        self,
        params: ClassicalParams | None = None,
        channels: str | Sequence[str] = ("blue", "red", "yellow"),
        **settings: Any,
    ):
        """``settings`` are :class:`ClassicalParams` fields (``work_side=768``), applied over ``params``."""
        known = set(ClassicalParams.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"unknown classical segmenter setting {unknown[0]!r}; settings are {', '.join(sorted(known))}"
            )
        base = asdict(params or ClassicalParams())
        self.params = ClassicalParams(**{**base, **settings})
        self.channels = parse_channels(channels)  # also "blue,red" from the command line
        if "blue" not in self.channels:
            raise ConfigError("the classical segmenter needs the blue (nucleus) channel")

    def settings(self) -> dict[str, Any]:
        values = asdict(self.params)
        if not values["match_nuclei"]:  # as before the option existed: folders segmented then stay valid
            del values["match_nuclei"]
        return {"segmenter": self.name, "channels": list(self.channels), **values}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[0] != len(self.channels):
            raise DataError(f"expected a ({len(self.channels)}, H, W) field, got shape {image.shape}")
        height, width = image.shape[1:]
        scale = min(1.0, self.params.work_side / max(height, width))
        work = (max(1, round(height * scale)), max(1, round(width * scale)))
        planes = {name: resize_plane(image[i], work) for i, name in enumerate(self.channels)}
        params = self.params.at(max(work))
        if self.params.match_nuclei:
            params = self.params.at(max(work) * min(1.0, nucleus_scale(planes["blue"], params)))
        nuclei = segment_nuclei(planes["blue"], params)
        bodies = [_scaled(planes[name]) for name in ("red", "yellow") if name in planes]
        cytoplasm = np.mean(bodies, axis=0) if bodies else None
        cells = grow_cells(nuclei, cytoplasm, params)
        cells = _drop_small(cells, params.min_cell_area)
        return upsample_labels(_raster_order(cells), (height, width))


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    small = np.flatnonzero(areas < min_area)
    small = small[small > 0]
    if small.size:
        labels = np.where(np.isin(labels, small), 0, labels)
    return labels


def _raster_order(labels: np.ndarray) -> np.ndarray:
    """Renumber cells 1..N in the order their first pixel appears scanning rows (stable across runs)."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first)]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lookup[labels]


# -------------------------------------------------------------------------------------------- learned


def _import(module: str, extra_hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DependencyError(
            f"this segmenter needs the Python package {module.split('.')[0]!r}, which is not installed; "
            f"install it with: {extra_hint}"
        ) from None


def _weights(path: str | Path | None, what: str) -> Path:
    if path is None:
        raise ModelError(f"the {what} segmenter needs its weights file: pass weights=<path> (protloc never downloads)")
    weights = Path(path).expanduser()
    if not weights.is_file():
        raise ModelError(f"{weights}: {what} weights not found (download them once yourself; protloc never downloads)")
    return weights


class CellposeSegmenter:
    """Cellpose (``pip install cellpose``) with a weights file the user has: cytoplasm from red + yellow, nuclei
    from blue, as cellpose's two-channel models expect.

    Args:
        weights: path to a cellpose model file (e.g. ``~/.cellpose/models/cyto3``); required.
        diameter: expected cell diameter in field px (``None``: cellpose estimates it).
        gpu: let cellpose use a GPU.
    """

    name = "cellpose"
    channels: tuple[str, ...] = ("red", "yellow", "blue")

    def __init__(self, weights: str | Path | None = None, diameter: float | None = None, gpu: bool = False):
        models = _import("cellpose.models", "pip install cellpose")
        self.weights = _weights(weights, "cellpose")
        self.diameter = diameter
        self.model = models.CellposeModel(gpu=gpu, pretrained_model=str(self.weights))

    def settings(self) -> dict[str, Any]:
        return {"segmenter": self.name, "weights": str(self.weights), "diameter": self.diameter}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        cytoplasm = np.maximum(image[0], image[1])
        stacked = np.stack([cytoplasm, image[2]], axis=-1)  # (H, W, 2): cytoplasm, nucleus
        result = self.model.eval(stacked, diameter=self.diameter, channels=[1, 2])
        return np.asarray(result[0], dtype=np.int32)


class HpaCellSegmenter:
    """HPA's cell segmentation networks (``pip install hpacellseg``; github.com/CellProfiling/HPA-Cell-Segmentation)
    with both weights files on disk (``nuclei-model.pth``, ``cell-model.pth``).

    Caution: hpacellseg loads those files with ``torch.load``, which unpickles whole models; use only the
    files HPA publishes. protloc itself never unpickles anything (recent torch refuses such files by default,
    so this adapter also needs a torch and hpacellseg that still load them).

    Args:
        nuclei_weights, cell_weights: the two weights files; required (hpacellseg would otherwise download them).
        scale_factor: hpacellseg's working scale (0.25 for 2048 px fields, as HPA uses).
        device: ``"cpu"`` or ``"cuda"``.
    """

    name = "hpacellseg"
    channels: tuple[str, ...] = ("red", "yellow", "blue")

    def __init__(
        self,
        nuclei_weights: str | Path | None = None,
        cell_weights: str | Path | None = None,
        scale_factor: float = 0.25,
        device: str = "cpu",
    ):
        module = _import("hpacellseg.cellsegmentator", "pip install hpacellseg")
        self._utils = _import("hpacellseg.utils", "pip install hpacellseg")
        self.nuclei_weights = _weights(nuclei_weights, "HPA nuclei")
        self.cell_weights = _weights(cell_weights, "HPA cell")
        self.scale_factor = scale_factor
        self.model = module.CellSegmentator(
            str(self.nuclei_weights),
            str(self.cell_weights),
            scale_factor=scale_factor,
            device=device,
            padding=True,
            multi_channel_model=True,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "segmenter": self.name,
            "nuclei_weights": str(self.nuclei_weights),
            "cell_weights": str(self.cell_weights),
            "scale_factor": self.scale_factor,
        }

    def __call__(self, image: np.ndarray) -> np.ndarray:
        red, yellow, blue = ([plane] for plane in image)
        nuclei = self.model.pred_nuclei(blue)
        cells = self.model.pred_cells([red, yellow, blue])
        _, cell_mask = self._utils.label_cell(nuclei[0], cells[0])
        return np.asarray(cell_mask, dtype=np.int32)


SegmenterFactory = Callable[..., Segmenter]
_REGISTRY: dict[str, SegmenterFactory] = {
    "classical": ClassicalSegmenter,
    "cellpose": CellposeSegmenter,
    "hpacellseg": HpaCellSegmenter,
}


def register_segmenter(name: str, factory: SegmenterFactory) -> None:
    """Make ``factory(**options)`` available as ``create_segmenter(name, **options)`` and ``--segmenter name``."""
    _REGISTRY[name] = factory


def segmenter_names() -> list[str]:
    """Names of the registered segmenters."""
    return sorted(_REGISTRY)


def create_segmenter(name: str = "classical", **options: Any) -> Segmenter:
    """Build the segmenter registered under ``name`` with ``options``.

    Raises:
        ConfigError: no segmenter has that name, or an option is unknown.
        DependencyError: its package is not installed.
        ModelError: its weights are not given or not found.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown segmenter {name!r}; choose one of {', '.join(segmenter_names())}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"segmenter {name!r}: {exc}") from None
    return factory(**options)
