"""Synthetic HPA-like data: fields of cells in four fluorescence channels, written in the Kaggle layout.

protloc's embedded data set. :func:`make_dataset` writes exactly what the Kaggle "Human Protein Atlas Image
Classification" (2018) competition shipped, plus the test truth::

    OUT/train.csv                  Id,Target   (Target = space-separated class ids, ascending)
    OUT/train/<Id>_<channel>.png   red, green, blue, yellow
    OUT/test/<Id>_<channel>.png
    OUT/sample_submission.csv      Id,Predicted (Predicted = 0 on every row, as Kaggle's)
    OUT/test_truth.csv             Id,Target   (the labels of test/, which Kaggle kept secret)

What is drawn (see ``docs/synthetic-data.md`` for pictures): a field of cells of varying number, size, shape
and brightness, from sparse to dense and touching; each cell has a nucleus (blue) with nucleoli, a
microtubule network radiating from a centrosome next to the nucleus (red) and a reticular endoplasmic
reticulum that is densest around the nucleus (yellow). Some fields hold rounded mitotic cells (condensed
chromosomes, a spindle) or pairs of daughter cells. The green channel draws, relative to those landmarks, a
distinct pattern for each of the 28 classes; the patterns of a multi-label image add up, and not every cell
expresses them. Landmark channels are drawn from their own random stream, so they never depend on the labels,
except that label 16 (cytokinetic bridge) and 17 (mitotic spindle) guarantee a dividing pair or a mitotic
cell in the field (which also occur, less often, without them).

Everything derives from ``seed``: one :class:`numpy.random.SeedSequence` per sample, keyed by (seed, split,
index), so the same seed gives byte-identical files whatever the number of worker processes. Geometry is
specified for a 512 px field and scaled, so a 128 px image looks like a downscaled 512 px one.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.resources
import json
import math
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from protloc.classes import NUM_CLASSES, format_labels
from protloc.errors import ConfigError, DataError
from protloc.io import CHANNELS, write_channel

__all__ = [
    "IMAGE_FORMATS",
    "MAX_SIZE",
    "MIN_SIZE",
    "REAL_CHANNEL_STATS",
    "SynthSummary",
    "generate_sample",
    "make_dataset",
    "sample_label_sets",
    "synth_id",
]

MIN_SIZE = 32
MAX_SIZE = 4096
IMAGE_FORMATS: tuple[str, ...] = ("png", "tif", "jpg")
SPLITS: tuple[str, ...] = ("train", "test")

# Per-channel pixel statistics of real Kaggle HPA 2018 512 px PNGs (about 100 images per channel), copied from
# ../shared/hpa/real_channel_stats.json (the package never reads that file). The generator's brightness model
# was tuned against them; benchmarks/bench_synth.py prints the comparison.
REAL_CHANNEL_STATS: dict[str, dict[str, float]] = {
    "red": {"fraction_zero": 0.5019, "mean": 17.77, "p75": 19.0, "p95": 92.0, "p99": 177.0, "image_mean_p50": 16.91},
    "green": {"fraction_zero": 0.5532, "mean": 12.15, "p75": 12.0, "p95": 64.0, "p99": 132.0, "image_mean_p50": 8.72},
    "blue": {"fraction_zero": 0.8188, "mean": 12.17, "p75": 0.0, "p95": 100.0, "p99": 186.0, "image_mean_p50": 10.6},
    "yellow": {"fraction_zero": 0.5145, "mean": 16.3, "p75": 17.0, "p95": 84.0, "p99": 168.0, "image_mean_p50": 14.56},
}

_REF = 512.0  # geometry below is in pixels of a 512 px field
_KEY_LABELS, _KEY_ID, _KEY_IMAGE = 0, 1, 2  # SeedSequence spawn keys: (purpose, split, index)
_SPLIT_CODE = {"train": 0, "test": 1}
_TRAIN_CSV, _TEST_TRUTH_CSV, _SUBMISSION_CSV = "train.csv", "test_truth.csv", "sample_submission.csv"
_LAYOUT_NAMES = frozenset({_TRAIN_CSV, _TEST_TRUTH_CSV, _SUBMISSION_CSV, "train", "test"})
_F32 = np.float32


# --------------------------------------------------------------------------------------------------------------
# Labels and ids
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _label_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped real label sets: (multi-hot (S, 28) uint8, frequency (S,), per-class image counts (28,))."""
    text = importlib.resources.files("protloc").joinpath("data/hpa_label_stats.json").read_text("utf-8")
    data = json.loads(text)
    sets = data["label_sets"]
    hot = np.zeros((len(sets), NUM_CLASSES), dtype=np.uint8)
    for row, (ids, _count) in enumerate(sets):
        hot[row, [int(i) for i in ids]] = 1
    weights = np.array([count for _ids, count in sets], dtype=np.float64)
    return hot, weights, np.asarray(data["class_counts"], dtype=np.int64)


def sample_label_sets(n: int, rng: np.random.Generator, min_per_class: int = 0) -> np.ndarray:
    """Draw ``n`` label sets with the frequencies of the real Kaggle HPA 2018 training set.

    Every row is one of the 577 distinct label sets of the 31,072 real images, drawn with its real frequency,
    so class imbalance and co-occurrence are the real ones.

    Args:
        n: how many label sets.
        rng: the random stream (the result is a pure function of its state).
        min_per_class: guarantee at least this many rows holding every class. Rows are swapped, rarest class
            first, for real label sets that hold the short class; a row is only given up when none of its
            classes would fall below the minimum, so the guarantee holds for all classes at the end.

    Returns:
        ``(n, 28)`` multi-hot ``uint8`` array.

    Raises:
        ConfigError: ``n < 0``, ``min_per_class < 0``, or ``min_per_class * 28 > n``.
    """
    if n < 0:
        raise ConfigError(f"number of label sets must be >= 0, got {n}")
    if min_per_class < 0:
        raise ConfigError(f"min_per_class must be >= 0, got {min_per_class}")
    if min_per_class * NUM_CLASSES > n:
        raise ConfigError(
            f"min_per_class={min_per_class} needs at least {min_per_class * NUM_CLASSES} samples "
            f"({NUM_CLASSES} classes x {min_per_class}), but only {n} were asked for"
        )
    hot, weights, class_counts = _label_table()
    choice = rng.choice(len(weights), size=n, p=weights / weights.sum())
    if min_per_class > 0:
        _top_up(choice, hot, weights, class_counts, min_per_class, rng)
    return hot[choice].copy()


def _top_up(
    choice: np.ndarray,
    hot: np.ndarray,
    weights: np.ndarray,
    class_counts: np.ndarray,
    minimum: int,
    rng: np.random.Generator,
) -> None:
    """Swap rows of ``choice`` (in place) until every class is held by at least ``minimum`` rows."""
    counts = hot[choice].sum(axis=0).astype(np.int64)
    for c in np.argsort(class_counts, kind="stable"):  # rarest first
        if counts[c] >= minimum:
            continue
        holders = np.flatnonzero(hot[:, c])
        holder_p = weights[holders] / weights[holders].sum()
        candidates: list[int] = []
        while counts[c] < minimum:
            if not candidates:
                # A row may go when it lacks c and none of its classes would drop below the minimum.
                rows = hot[choice]
                ok = (rows[:, c] == 0) & np.all((rows == 0) | (counts > minimum)[None, :], axis=1)
                candidates = list(rng.permutation(np.flatnonzero(ok)))
                if not candidates:  # impossible while n >= 28 * minimum; kept as a guard
                    raise ConfigError(f"cannot give every class {minimum} samples with {len(choice)} samples")
            victim = int(candidates.pop())
            old = hot[choice[victim]]
            if old[c] or np.any(old.astype(bool) & (counts <= minimum)):
                continue  # no longer eligible after earlier swaps
            new = int(holders[rng.choice(len(holders), p=holder_p)])
            counts += hot[new].astype(np.int64) - old
            choice[victim] = new


# UUID version-1 timestamps (100 ns ticks since 1582-10-15) between 2018-08-15 and 2018-11-15, when the real
# ids were minted: their third group reads 11e8, as in 00070df0-bbc3-11e8-b2bc-ac1f6b6435d0.
_UUID_T0 = (1534291200 + 12219292800) * 10**7
_UUID_T1 = (1542240000 + 12219292800) * 10**7


def synth_id(rng: np.random.Generator) -> str:
    """A sample id shaped like the real ones: a version-1 UUID string minted in late 2018, drawn from ``rng``."""
    ticks = int(rng.integers(_UUID_T0, _UUID_T1))
    clock_seq = int(rng.integers(0, 1 << 14))
    node = int(rng.integers(0, 1 << 48))
    fields = (
        ticks & 0xFFFFFFFF,
        (ticks >> 32) & 0xFFFF,
        ((ticks >> 48) & 0x0FFF) | 0x1000,
        ((clock_seq >> 8) & 0x3F) | 0x80,
        clock_seq & 0xFF,
        node,
    )
    return str(uuid.UUID(fields=fields))


# --------------------------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------------------------


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return image
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


def _smooth_noise(rng: np.random.Generator, size: int, scale: float, u: float) -> np.ndarray:
    """A zero-mean random field of about unit variance with features ``scale`` 512-field px across.

    The random draws do not depend on ``size`` (``u`` = output px per 512-field px), so one seed gives the
    same field at every size; features smaller than a pixel average out, as they would on downscaling.
    """
    n = math.ceil(_REF / scale) + 4
    low = _blur(rng.standard_normal((n, n), dtype=_F32), 0.6)
    low *= _F32(1.0 / (float(low.std()) + 1e-6))
    side = max(round(n * scale * u), size + 1)
    interpolation = cv2.INTER_CUBIC if side >= n else cv2.INTER_AREA
    big = cv2.resize(low, (side, side), interpolation=interpolation)
    off = (rng.random(2) * (side - size)).astype(int)
    return np.ascontiguousarray(big[off[0] : off[0] + size, off[1] : off[1] + size])


def _ridges(rng: np.random.Generator, size: int, scale: float, u: float, width: float) -> np.ndarray:
    """Thin tubules along the zero lines of a smooth random field (a network), anti-aliased at small sizes."""
    factor = max(1, math.ceil(3.5 / (scale * u)))  # draw with >= 3.5 px per feature, then average down
    noise = _smooth_noise(rng, size * factor, scale, u * factor)
    ridge = np.exp(-((noise * _F32(1.0 / width)) ** 2))
    if factor > 1:
        ridge = cv2.resize(ridge, (size, size), interpolation=cv2.INTER_AREA)
    return np.asarray(ridge, dtype=_F32)


def _splat(size: int, x: np.ndarray, y: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """Accumulate point masses at sub-pixel positions (bilinear) into a float image."""
    image = np.zeros(size * size, dtype=_F32)
    w = np.broadcast_to(np.asarray(weight, dtype=_F32), x.shape)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0).astype(_F32)
    fy = (y - y0).astype(_F32)
    for dx, dy, share in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = x0 + dx
        yi = y0 + dy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        np.add.at(image, yi[ok] * size + xi[ok], (w * share)[ok])
    return image.reshape(size, size)


def _dots(size: int, x: np.ndarray, y: np.ndarray, peak: np.ndarray | float, sigma: float) -> np.ndarray:
    """Gaussian dots of standard deviation ``sigma`` px whose peaks are about ``peak``."""
    # the mass of a dot scales with the image area, so a small image holds what downscaling would leave
    image = _splat(size, x, y, np.asarray(peak, dtype=_F32) * _F32(2 * math.pi * sigma**2))
    return _blur(image, sigma)


def _to_fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> int32 with 4 fractional bits, for cv2 drawing with ``shift=4``."""
    return np.round(np.asarray(points) * 16.0).astype(np.int32)


def _canvas_polylines(
    size: int,
    paths: np.ndarray | list[np.ndarray],
    values: np.ndarray,
    thickness: int = 1,
    closed: bool = False,
    groups: int = 3,
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Anti-aliased polylines (one value per path, quantised to ``groups`` levels) as a float image.

    ``paths`` is an (M, P, 2) array of float pixel coordinates, or a list of (P_i, 2) arrays. With an array,
    ``lengths`` (points used per path; the rest repeat the last point) lets drawing skip the repeated tails.
    """
    canvas = np.zeros((size, size), dtype=np.uint8)
    if len(paths) == 0:
        return canvas.astype(_F32)
    fixed: np.ndarray | list[np.ndarray]
    fixed = _to_fixed(paths) if isinstance(paths, np.ndarray) else [_to_fixed(p) for p in paths]
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    level = np.minimum((values * groups).astype(np.int64), groups - 1)
    if isinstance(fixed, np.ndarray) and lengths is not None:
        bucket = np.minimum((lengths + 7) // 8 * 8, fixed.shape[1])  # draw at most 8 repeated points per path
    else:
        bucket = np.zeros(len(level), dtype=np.int64)
    for g in range(groups):
        value = round(255 * (g + 0.5) / groups)
        for b in np.unique(bucket[level == g]):
            idx = np.flatnonzero((level == g) & (bucket == b))
            chosen: np.ndarray | list[np.ndarray]
            if isinstance(fixed, list):
                chosen = [fixed[i] for i in idx]
            elif b:
                chosen = fixed[idx, :b]
            else:
                chosen = fixed[idx]
            cv2.polylines(canvas, chosen, closed, value, thickness, cv2.LINE_AA, 4)  # type: ignore[arg-type]
    return canvas.astype(_F32) * _F32(1 / 255)


def _canvas_circles(
    size: int, x: np.ndarray, y: np.ndarray, radius: np.ndarray, value: np.ndarray, thickness: np.ndarray
) -> np.ndarray:
    """Anti-aliased circles (``thickness`` -1 fills) as a float image."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    for cx, cy, r, v, t in zip(
        _to_fixed(x).tolist(),
        _to_fixed(y).tolist(),
        _to_fixed(radius).tolist(),
        np.round(255 * np.clip(value, 0, 1)).astype(int).tolist(),
        np.asarray(thickness).astype(int).tolist(),
        strict=True,
    ):
        cv2.circle(canvas, (cx, cy), max(r, 8), v, t, cv2.LINE_AA, 4)
    return canvas.astype(_F32) * _F32(1 / 255)


def _lut(values: np.ndarray) -> np.ndarray:
    """Per-cell values -> a lookup table indexed by cell id (0 = background -> 0)."""
    return np.concatenate([[0.0], np.asarray(values, dtype=np.float64)]).astype(_F32)


# --------------------------------------------------------------------------------------------------------------
# The field of cells (landmarks)
# --------------------------------------------------------------------------------------------------------------

_INTERPHASE, _MITOTIC, _DAUGHTER = 0, 1, 2


@dataclass
class _Field:
    """Geometry and landmark maps of one field of cells, in pixels of the output size."""

    size: int
    u: float  # output pixels per 512-field pixel
    cx: np.ndarray
    cy: np.ndarray
    kind: np.ndarray
    axis: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    wobble: np.ndarray  # (n, 2, 2): amplitude and phase of harmonics 2 and 3
    ext: np.ndarray
    mtoc: np.ndarray  # (n, 2)
    mtoc_angle: np.ndarray
    partner: np.ndarray
    visible: np.ndarray  # centre inside the image
    reach: np.ndarray  # how far a cell may extend from its nucleus centre (bounded by its nearest neighbour)
    cell: np.ndarray = field(default_factory=lambda: np.zeros(0))  # cell id map, 0 = background
    nuc: np.ndarray = field(default_factory=lambda: np.zeros(0))  # nucleus id map (interphase/daughter)
    nuc_soft: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nuc_ring: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nucleoli: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nucleoli_geom: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # x, y, radius, owner
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # to own nucleus
    edge: np.ndarray = field(default_factory=lambda: np.zeros(0))  # to the cell boundary
    t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # 0 at the nucleus .. 1 at the cell edge
    cyto: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cellmask: np.ndarray = field(default_factory=lambda: np.zeros(0))
    thick: np.ndarray = field(default_factory=lambda: np.zeros(0))  # relative cytoplasm thickness
    cyto_thick: np.ndarray = field(default_factory=lambda: np.zeros(0))  # thick, outside the nucleus
    filaments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 2)))  # red microtubules (M, L, 2)
    filament_len: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    filament_owner: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    microtubules: np.ndarray = field(default_factory=lambda: np.zeros(0))  # drawn red filaments
    er: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ER structure (yellow before brightness)
    spindles: list[tuple[int, list[np.ndarray], np.ndarray]] = field(default_factory=list)  # cell, fibres, poles
    bridges: list[tuple[int, int, np.ndarray, np.ndarray]] = field(default_factory=list)  # a, b, p0, p1
    _junction: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.cx)

    def noise(self, rng: np.random.Generator, scale: float) -> np.ndarray:
        """A smooth random field with features ``scale`` 512-field px across (see :func:`_smooth_noise`)."""
        return _smooth_noise(rng, self.size, scale, self.u)

    def px(self, length: float) -> float:
        """A length in 512-field pixels -> output pixels."""
        return length * self.u

    def nucleus_radius(self, k: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Radius of nucleus ``k`` in direction ``theta`` (vectorised)."""
        phi = theta - self.axis[k]
        a, b = self.ra[k], self.rb[k]
        r = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
        w = self.wobble[k]
        r = r * (1 + w[..., 0, 0] * np.cos(2 * phi + w[..., 0, 1]) + w[..., 1, 0] * np.cos(3 * phi + w[..., 1, 1]))
        return np.asarray(r)

    def lookup(self, image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``image`` at the nearest pixel of each point (points outside the image are clamped)."""
        xi = np.clip(np.round(x).astype(np.int64), 0, self.size - 1)
        yi = np.clip(np.round(y).astype(np.int64), 0, self.size - 1)
        return np.asarray(image[yi, xi])

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray((x >= -0.5) & (x < self.size - 0.5) & (y >= -0.5) & (y < self.size - 0.5))

    def junction(self) -> np.ndarray:
        """Distance to the nearest boundary between two cells (not to background); computed on demand."""
        if self._junction is None:
            c = self.cell
            dx = (c[:, 1:] != c[:, :-1]) & (c[:, 1:] > 0) & (c[:, :-1] > 0)
            dy = (c[1:, :] != c[:-1, :]) & (c[1:, :] > 0) & (c[:-1, :] > 0)
            bound = np.zeros(c.shape, dtype=bool)
            bound[:, 1:] |= dx
            bound[:, :-1] |= dx
            bound[1:, :] |= dy
            bound[:-1, :] |= dy
            dist = cv2.distanceTransform(np.logical_not(bound).astype(np.uint8), cv2.DIST_L2, 3)
            self._junction = np.minimum(dist, _F32(self.size)).astype(_F32)  # no junction at all: far away
        return self._junction

    def points_in_cells(
        self,
        rng: np.random.Generator,
        counts: np.ndarray,
        where: str = "cyto",
        bias: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """About ``counts[k]`` random points in cell ``k``'s cytoplasm (``where="cyto"``) or nucleus.

        ``bias`` maps the radial position t (0 at the nucleus, 1 at the cell edge) to an acceptance
        probability. Returns x, y and the owning cell of each point.
        """
        counts = np.asarray(counts)
        oversample = 4 if where == "cyto" else 2
        owner = np.repeat(np.arange(self.n), counts * oversample)
        if owner.size == 0:
            empty = np.zeros(0)
            return empty, empty, owner
        reach = self.reach if where == "cyto" else np.maximum(self.ra, self.rb) * 1.25
        radius = reach[owner] * np.sqrt(rng.random(owner.size))
        angle = rng.uniform(0, 2 * np.pi, owner.size)
        x = self.cx[owner] + radius * np.cos(angle)
        y = self.cy[owner] + radius * np.sin(angle)
        ok = self.inside(x, y)
        if where == "cyto":
            ok &= (self.lookup(self.cell, x, y) == owner + 1) & (self.lookup(self.nuc, x, y) == 0)
        else:
            ok &= self.lookup(self.nuc, x, y) == owner + 1
        if bias is not None:
            ok &= rng.random(owner.size) < bias(self.lookup(self.t, x, y))
        # keep at most counts[k] per cell: rank each accepted point within its cell
        x, y, owner = x[ok], y[ok], owner[ok]
        starts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=self.n))[:-1]])
        rank = np.arange(owner.size) - starts[owner]
        keep = rank < counts[owner]
        return x[keep], y[keep], owner[keep]

    def walk(
        self,
        rng: np.random.Generator,
        owner: np.ndarray,
        x0: np.ndarray,
        y0: np.ndarray,
        theta0: np.ndarray,
        steps: int,
        step: float,
        turn: float,
        wave: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random-walk filaments from (x0, y0), cut where they leave their cell: paths (M, steps+1, 2), lengths."""
        m = owner.size
        dtheta = rng.standard_normal((m, steps), dtype=_F32) * _F32(turn)
        if wave:
            j = np.arange(steps, dtype=_F32)[None, :]
            freq = rng.uniform(0.25, 0.6, (m, 1)).astype(_F32)
            dtheta += _F32(wave) * np.sin(freq * j + rng.uniform(0, 2 * np.pi, (m, 1)).astype(_F32))
        theta = theta0.astype(_F32)[:, None] + np.cumsum(dtheta, axis=1)
        xs = np.empty((m, steps + 1), dtype=_F32)
        ys = np.empty((m, steps + 1), dtype=_F32)
        xs[:, 0], ys[:, 0] = x0, y0
        np.cumsum(np.cos(theta) * _F32(step), axis=1, out=xs[:, 1:])
        np.cumsum(np.sin(theta) * _F32(step), axis=1, out=ys[:, 1:])
        xs[:, 1:] += xs[:, :1]
        ys[:, 1:] += ys[:, :1]
        return self.cut(owner, xs, ys)

    def cut(self, owner: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut paths (M, P) where they first leave their cell; the tail collapses onto the last point inside."""
        points = xs.shape[1]
        xi = np.floor(xs + 0.5).astype(np.int32)
        yi = np.floor(ys + 0.5).astype(np.int32)
        ok = (xi >= 0) & (xi < self.size) & (yi >= 0) & (yi < self.size)
        np.clip(xi, 0, self.size - 1, out=xi)
        np.clip(yi, 0, self.size - 1, out=yi)
        ok &= self.cell[yi, xi] == (owner[:, None] + 1)
        ok[:, 0] = True
        length = np.where(ok.all(axis=1), points, np.argmin(ok, axis=1))
        rows = np.arange(len(owner))
        tail = np.arange(points)[None, :] >= length[:, None]
        xs = np.where(tail, xs[rows, length - 1][:, None], xs)
        ys = np.where(tail, ys[rows, length - 1][:, None], ys)
        return np.stack([xs, ys], axis=-1), length


def _place_centres(rng: np.random.Generator, n_target: int, spacing: float, lo: float, hi: float) -> np.ndarray:
    """Greedy dart throwing: up to ``n_target`` points at least ``spacing`` apart in [lo, hi)^2."""
    m = max(8, n_target * 5)
    cand = rng.uniform(lo, hi, (m, 2))
    d2 = ((cand[:, None, :] - cand[None, :, :]) ** 2).sum(-1)
    close = d2 < spacing**2
    alive = np.ones(m, dtype=bool)
    chosen: list[int] = []
    i = 0
    while len(chosen) < n_target:
        chosen.append(i)
        alive &= ~close[i]
        rest = np.flatnonzero(alive[i + 1 :])  # jump to the next candidate still far enough from all chosen
        if rest.size == 0:
            break
        i += 1 + int(rest[0])
    return cand[chosen]


def _make_field(size: int, rng: np.random.Generator, n_mitotic_min: int, n_pairs_min: int) -> _Field:
    """Lay out the cells and compute the landmark maps."""
    u = size / _REF
    # Cell line: nucleus size; field density: number of cells (dense fields are the most common).
    rn = rng.uniform(19.0, 34.0)
    n_target = round(math.exp(rng.uniform(math.log(6), math.log(60))))
    spacing = max(2.35 * rn, math.sqrt(_REF * _REF / n_target) * rng.uniform(0.7, 0.9))
    margin = 0.3 * spacing
    centres = _place_centres(rng, n_target, spacing, -margin, _REF + margin)
    n = len(centres)
    cx, cy = centres[:, 0].copy(), centres[:, 1].copy()
    r = rn * np.exp(rng.normal(0, 0.13, n))
    r = np.minimum(r, 0.42 * spacing)
    elong = rng.uniform(1.0, 1.45, n)
    ra, rb = r * np.sqrt(elong), r / np.sqrt(elong)
    axis = rng.uniform(0, np.pi, n)
    wobble = np.stack(
        [
            np.stack([rng.uniform(0, 0.06, n), rng.uniform(0, 2 * np.pi, n)], -1),
            np.stack([rng.uniform(0, 0.04, n), rng.uniform(0, 2 * np.pi, n)], -1),
        ],
        1,
    )
    ext = rn * rng.uniform(0.8, 2.4, n) * (1.0 + 0.6 * (n_target < 10))
    kind = np.zeros(n, dtype=np.int64)
    partner = np.full(n, -1, dtype=np.int64)
    visible = (cx > 0.12 * _REF) & (cx < 0.88 * _REF) & (cy > 0.12 * _REF) & (cy < 0.88 * _REF)
    pool = list(rng.permutation(np.flatnonzero(visible))) if visible.any() else list(rng.permutation(n))

    # Mitotic cells and dividing pairs occur in any field; labels 16/17 guarantee at least one.
    n_mitotic = max(n_mitotic_min, int(rng.random() < 0.25))
    n_pairs = max(n_pairs_min, int(rng.random() < 0.2))
    for _ in range(n_mitotic):
        if not pool:
            break
        k = pool.pop()
        kind[k] = _MITOTIC
        ra[k] = rb[k] = rn * rng.uniform(0.85, 1.0)
        ext[k] = rn * rng.uniform(0.35, 0.6)
        wobble[k, :, 0] = 0.0
    new_rows: list[tuple[float, float, float, int]] = []  # x, y, radius, partner
    for _ in range(n_pairs):
        if not pool:
            break
        k = pool.pop()
        rd = rn * rng.uniform(0.55, 0.7)
        de = rn * rng.uniform(0.45, 0.7)
        half = rd + 0.92 * de
        ang = rng.uniform(0, np.pi)
        dx, dy = half * math.cos(ang), half * math.sin(ang)
        x0, y0 = cx[k], cy[k]
        cx[k], cy[k] = x0 - dx, y0 - dy
        ra[k] = rb[k] = rd
        ext[k] = de
        kind[k] = _DAUGHTER
        axis[k] = ang
        new_rows.append((x0 + dx, y0 + dy, rd, k))
        # neighbours whose nuclei would overlap the daughters make room
        for j in range(n):
            if j == k or kind[j] != _INTERPHASE:
                continue
            if math.hypot(cx[j] - x0, cy[j] - y0) < half + rd + max(ra[j], rb[j]) + 2:
                kind[j] = -1  # removed below
        pool = [j for j in pool if kind[j] == _INTERPHASE]
    if new_rows:
        extra = len(new_rows)
        cx = np.concatenate([cx, [row[0] for row in new_rows]])
        cy = np.concatenate([cy, [row[1] for row in new_rows]])
        ra = np.concatenate([ra, [row[2] for row in new_rows]])
        rb = np.concatenate([rb, [row[2] for row in new_rows]])
        axis = np.concatenate([axis, [axis[row[3]] + np.pi for row in new_rows]])
        wobble = np.concatenate([wobble, np.zeros((extra, 2, 2))])
        ext = np.concatenate([ext, [ext[row[3]] for row in new_rows]])
        kind = np.concatenate([kind, np.full(extra, _DAUGHTER)])
        partner = np.concatenate([partner, [row[3] for row in new_rows]])
        for i, row in enumerate(new_rows):
            partner[row[3]] = n + i
        visible = np.concatenate([visible, np.ones(extra, dtype=bool)])
    keep = kind >= 0
    if not keep.all():
        remap = np.cumsum(keep) - 1
        partner = np.where(partner >= 0, remap[np.maximum(partner, 0)], -1)
        cx, cy, ra, rb, axis, wobble = cx[keep], cy[keep], ra[keep], rb[keep], axis[keep], wobble[keep]
        ext, kind, partner, visible = ext[keep], kind[keep], partner[keep], visible[keep]
    n = len(cx)

    mtoc_angle = rng.uniform(0, 2 * np.pi, n)
    gaps = np.hypot(cx[:, None] - cx[None, :], cy[:, None] - cy[None, :]) + np.diag(np.full(n, np.inf))
    reach = np.minimum(np.maximum(ra, rb) + 1.6 * ext, 0.85 * gaps.min(axis=1, initial=np.inf))
    f = _Field(
        size=size,
        u=u,
        cx=cx * u,
        cy=cy * u,
        kind=kind,
        axis=axis,
        ra=ra * u,
        rb=rb * u,
        wobble=wobble,
        ext=ext * u,
        mtoc=np.zeros((n, 2)),
        mtoc_angle=mtoc_angle,
        partner=partner,
        visible=visible,
        reach=reach * u,
    )
    gap = f.nucleus_radius(np.arange(n), mtoc_angle) + f.px(1.0) + f.u * rng.uniform(1.0, 4.0, n)
    f.mtoc = np.stack([f.cx + gap * np.cos(mtoc_angle), f.cy + gap * np.sin(mtoc_angle)], -1)
    _compute_maps(f, rng)
    return f


def _compute_maps(f: _Field, rng: np.random.Generator) -> None:
    size, n = f.size, f.n
    theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    ks = np.arange(n)
    radius = f.nucleus_radius(ks[:, None], theta[None, :])
    polys = np.stack([f.cx[:, None] + radius * np.cos(theta), f.cy[:, None] + radius * np.sin(theta)], -1)
    nuc = np.zeros((size, size), dtype=np.uint16)
    seed = np.zeros((size, size), dtype=np.uint16)
    for k in range(n):
        target = seed if f.kind[k] == _MITOTIC else nuc
        cv2.fillPoly(target, [_to_fixed(polys[k])], k + 1, cv2.LINE_8, 4)
    seed = np.maximum(seed, nuc)
    if not seed.any():  # degenerate tiny image: make sure distance transforms have a seed
        seed[size // 2, size // 2] = 1
    dist_raw, labels = cv2.distanceTransformWithLabels(
        (seed == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP
    )
    dist = np.minimum(dist_raw, _F32(size))
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    has = seed > 0
    lut[labels[has]] = seed[has]
    vor = lut[labels]
    # Cell outline: within ext of the nucleus, wobbling with a smooth field; Voronoi against neighbours.
    # coarse lobes plus a fine ruffle; gentle enough that a cell never breaks into islands
    shape = np.clip(f.noise(rng, 60.0), -1.8, 1.8) + 0.2 * f.noise(rng, 12.0)
    wob = np.where(f.kind == _INTERPHASE, rng.uniform(0.2, 0.4, n), 0.05)
    threshold = _lut(f.ext)[vor] * (1 + _lut(wob)[vor] * shape)
    cell = np.where((dist <= threshold) & (vor > 0), vor, 0).astype(np.uint16)
    f.cell = cell
    f.nuc = nuc
    f.dist = np.asarray(dist, dtype=_F32)

    bound = np.zeros(cell.shape, dtype=bool)
    dx = cell[:, 1:] != cell[:, :-1]
    dy = cell[1:, :] != cell[:-1, :]
    bound[:, 1:] |= dx
    bound[:, :-1] |= dx
    bound[1:, :] |= dy
    bound[:-1, :] |= dy
    edge = cv2.distanceTransform(np.logical_not(bound).astype(np.uint8), cv2.DIST_L2, 3)
    f.edge = np.minimum(edge, _F32(size)).astype(_F32)
    f.cellmask = (cell > 0).astype(_F32)
    f.cyto = ((cell > 0) & (nuc == 0)).astype(_F32)
    f.t = np.where(cell > 0, f.dist / (f.dist + f.edge + 1e-3), 1.0).astype(_F32)
    # cytoplasm is thick around the nucleus and thins out to the cell edge, so it is brighter there
    # (thin towards the free edge, with only a slight dip where two cells touch)
    to_background = cv2.distanceTransform((cell > 0).astype(np.uint8), cv2.DIST_L2, 3)
    rim_free = np.clip(to_background * _F32(1.0 / max(f.px(6.0), 0.6)), 0, 1)
    rim_any = np.clip(f.edge * _F32(1.0 / max(f.px(2.5), 0.6)), 0, 1)
    tex = f.noise(rng, 10.0)
    profile = (0.3 + 0.7 * rim_free * rim_free) * (0.8 + 0.2 * rim_any) * (0.4 + 0.6 * np.exp(-2.2 * f.t))
    f.thick = (f.cellmask * profile * (0.85 + 0.15 * tex)).astype(_F32)
    f.cyto_thick = (f.thick * f.cyto).astype(_F32)

    nucmask = (nuc > 0).astype(np.uint8)
    d_in = cv2.distanceTransform(nucmask, cv2.DIST_L2, 3)
    d_out = np.minimum(cv2.distanceTransform(1 - nucmask, cv2.DIST_L2, 3), _F32(size))
    f.nuc_soft = np.clip(d_in * _F32(1.0 / max(f.px(2.5), 0.7)), 0, 1).astype(_F32)
    f.nuc_ring = np.exp(-(((d_in + d_out) * _F32(1.0 / max(f.px(1.6), 0.45))) ** 2)).astype(_F32)

    # Nucleoli: 1-4 irregular blobs inside each interphase nucleus (not in daughters: condensed chromatin).
    owners = np.flatnonzero(f.kind == _INTERPHASE)
    count = rng.integers(1, 5, owners.size)
    own = np.repeat(owners, count)
    rad = np.minimum(f.ra[own], f.rb[own])
    pos_r = rad * 0.55 * np.sqrt(rng.random(own.size))
    pos_a = rng.uniform(0, 2 * np.pi, own.size)
    nx = f.cx[own] + pos_r * np.cos(pos_a)
    ny = f.cy[own] + pos_r * np.sin(pos_a)
    nr = rad * rng.uniform(0.12, 0.24, own.size)
    f.nucleoli_geom = np.stack([nx, ny, nr, own], -1)
    canvas = np.zeros((size, size), dtype=np.uint8)
    for x, y, rr, a1, a2 in zip(
        _to_fixed(nx).tolist(),
        _to_fixed(ny).tolist(),
        nr.tolist(),
        rng.uniform(1.0, 1.5, own.size).tolist(),
        rng.uniform(0, 180, own.size).tolist(),
        strict=True,
    ):
        axes = (max(int(rr * a1 * 16), 8), max(int(rr / a1 * 16), 8))
        cv2.ellipse(canvas, (x, y), axes, a2, 0, 360, 255, -1, cv2.LINE_AA, 4)
    f.nucleoli = (_blur(canvas.astype(_F32), f.px(1.0)) * _F32(1 / 255) * (nuc > 0)).astype(_F32)


# --------------------------------------------------------------------------------------------------------------
# Landmark channels
# --------------------------------------------------------------------------------------------------------------


def _draw_blue(f: _Field, rng: np.random.Generator) -> np.ndarray:
    n = f.n
    bright = np.exp(rng.normal(0, 0.25, n)) * np.where(f.kind == _DAUGHTER, 1.5, 1.0)
    chromatin = f.noise(rng, 5.0)
    blue = f.nuc_soft * _lut(bright)[f.nuc] * (0.8 + 0.14 * chromatin) * (1 - 0.5 * f.nucleoli)
    # mitotic cells: condensed chromosomes in a metaphase plate across the spindle axis
    for k in np.flatnonzero(f.kind == _MITOTIC):
        m = 40
        along = rng.uniform(-0.8, 0.8, m) * f.ra[k]
        across = rng.normal(0, 0.14, m) * f.ra[k]
        c, s = math.cos(f.axis[k]), math.sin(f.axis[k])
        x = f.cx[k] + across * c - along * s
        y = f.cy[k] + across * s + along * c
        blue = blue + _dots(f.size, x, y, rng.uniform(0.5, 1.1, m), f.px(2.2)) * _F32(bright[k])
    return np.asarray(blue, dtype=_F32)


def _draw_red(f: _Field, rng: np.random.Generator) -> np.ndarray:
    n = f.n
    # Microtubules: a mesh of filaments from the centrosome, from around the nucleus and through the
    # cytoplasm, each cut where it leaves its cell.
    cells = np.flatnonzero(f.kind != _MITOTIC)
    area = np.pi * (f.reach[cells] / f.u) ** 2  # in 512-field pixels, so the draws do not depend on the size
    per_cell = np.clip(area / 260 * rng.uniform(0.8, 1.2, cells.size), 15, 80).astype(np.int64)
    per_cell = np.where(f.kind[cells] == _DAUGHTER, np.minimum(per_cell, 14), per_cell)
    owner = np.repeat(cells, per_cell)
    origin = rng.choice(3, owner.size, p=[0.35, 0.35, 0.3])  # centrosome, nuclear rim, anywhere
    start_angle = rng.uniform(0, 2 * np.pi, owner.size)
    rim = f.nucleus_radius(owner, start_angle) + f.px(1.0)
    x0 = np.where(origin == 0, f.mtoc[owner, 0], f.cx[owner] + rim * np.cos(start_angle))
    y0 = np.where(origin == 0, f.mtoc[owner, 1], f.cy[owner] + rim * np.sin(start_angle))
    theta0 = np.where(
        origin == 0,
        f.mtoc_angle[owner] + rng.uniform(-2.0, 2.0, owner.size),
        start_angle + rng.normal(0, 0.45, owner.size),
    )
    anywhere = np.flatnonzero(origin == 2)
    if anywhere.size:
        reach_r = f.reach[owner[anywhere]] * np.sqrt(rng.uniform(0.15, 1.0, anywhere.size))
        x0[anywhere] = f.cx[owner[anywhere]] + reach_r * np.cos(start_angle[anywhere])
        y0[anywhere] = f.cy[owner[anywhere]] + reach_r * np.sin(start_angle[anywhere])
        theta0[anywhere] = start_angle[anywhere] + rng.uniform(-1.2, 1.2, anywhere.size)
    x0 = x0 + rng.normal(0, f.px(1.5), owner.size)
    y0 = y0 + rng.normal(0, f.px(1.5), owner.size)
    reach = float(np.max(f.reach, initial=0.0) * 1.6)
    step = f.px(6.0)
    steps = int(min(50, max(4, math.ceil(reach / max(step, 1e-6)))))
    paths, length = f.walk(rng, owner, x0, y0, theta0, steps, step, turn=0.19)
    f.filaments, f.filament_len, f.filament_owner = paths, length, owner
    line_gain = min(1.0, f.u)
    values = rng.uniform(0.2, 0.75, owner.size)
    fil = _canvas_polylines(f.size, paths, values, lengths=length) * _F32(line_gain)

    # Mitotic spindles: fibres from two poles to the chromosome plate, plus short astral rays.
    extra_paths: list[np.ndarray] = []
    for k in np.flatnonzero(f.kind == _MITOTIC):
        c, s = math.cos(f.axis[k]), math.sin(f.axis[k])
        half = f.ra[k] * rng.uniform(0.85, 1.0)
        poles = np.array([[f.cx[k] - half * c, f.cy[k] - half * s], [f.cx[k] + half * c, f.cy[k] + half * s]])
        fibres: list[np.ndarray] = []
        for sign, pole in zip((-1, 1), poles, strict=True):
            for w in np.linspace(-0.75, 0.75, 9) + rng.normal(0, 0.05, 9):
                end = np.array([f.cx[k] - w * f.ra[k] * s, f.cy[k] + w * f.ra[k] * c])
                mid = (pole + end) / 2 + np.array([-s, c]) * w * f.ra[k] * 0.35
                q = np.linspace(0, 1, 6)[:, None]
                fibres.append((1 - q) ** 2 * pole + 2 * (1 - q) * q * mid + q**2 * end)
            for a in rng.uniform(-1.2, 1.2, 6):
                ang = f.axis[k] + (0 if sign > 0 else np.pi) + a
                ray = f.px(float(rng.uniform(5, 10)))
                extra_paths.append(np.array([pole, pole + ray * np.array([math.cos(ang), math.sin(ang)])]))
        f.spindles.append((int(k), fibres, poles))
        extra_paths.extend(fibres)
    for a in np.flatnonzero((f.kind == _DAUGHTER) & (f.partner > np.arange(n))):
        b = int(f.partner[a])
        pa, pb = np.array([f.cx[a], f.cy[a]]), np.array([f.cx[b], f.cy[b]])
        d = (pb - pa) / (np.linalg.norm(pb - pa) + 1e-9)
        p0 = pa + d * f.ra[a] * 1.05
        p1 = pb - d * f.rb[b] * 1.05
        f.bridges.append((int(a), b, p0, p1))
        extra_paths.append(np.stack([p0, p1]))
    if extra_paths:
        extra = _canvas_polylines(f.size, extra_paths, rng.uniform(0.6, 1.0, len(extra_paths)))
        fil = np.asarray(fil + extra * _F32(line_gain), dtype=_F32)
    f.microtubules = np.asarray(_blur(fil, f.px(0.6)), dtype=_F32)
    bright = np.exp(rng.normal(0, 0.3, n)) * np.where(f.kind == _INTERPHASE, 1.0, 1.1)
    diffuse = 0.35 * f.thick * (1 - 0.6 * (f.nuc > 0))
    centrosome = _dots(f.size, f.mtoc[:, 0], f.mtoc[:, 1], 0.8 * (f.kind != _MITOTIC), f.px(2.0))
    red = _lut(bright)[f.cell] * (1.8 * f.microtubules + diffuse) + centrosome
    return np.asarray(red, dtype=_F32)


def _er_network(f: _Field, rng: np.random.Generator) -> np.ndarray:
    """A reticular network: the ridges of two random fields of different scales, overlaid."""
    a = _ridges(rng, f.size, 9.0, f.u, 0.22)
    b = _ridges(rng, f.size, 14.0, f.u, 0.22)
    return np.maximum(a, 0.8 * b)


def _draw_yellow(f: _Field, rng: np.random.Generator) -> np.ndarray:
    net = _er_network(f, rng)
    density = 0.3 + 0.7 * np.exp(-2.8 * f.t)
    f.er = (f.cyto * (0.2 + 0.8 * net) * density + 0.45 * f.nuc_ring).astype(_F32)
    bright = np.exp(rng.normal(0, 0.3, f.n))
    yellow = _lut(bright)[f.cell] * (f.er + 0.05 * (f.nuc > 0))
    return np.asarray(yellow, dtype=_F32)


# --------------------------------------------------------------------------------------------------------------
# Green: one pattern per class
# --------------------------------------------------------------------------------------------------------------

_Pattern = Callable[[_Field, np.ndarray, np.random.Generator], np.ndarray]


def _diffuse_cyto(f: _Field, amp: np.ndarray, level: float) -> np.ndarray:
    return np.asarray(_lut(amp * level)[f.cell] * f.cyto_thick, dtype=_F32)


def _nucleoplasm_base(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 6.0)
    return np.asarray(_lut(amp)[f.nuc] * f.nuc_soft * (0.75 + 0.2 * tex) * (1 - 0.9 * f.nucleoli), dtype=_F32)


def _p_nucleoplasm(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _nucleoplasm_base(f, amp, rng)


def _p_nuclear_membrane(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 8.0)
    ring = f.nuc_ring * (0.8 + 0.25 * tex) * _lut(amp)[f.cell]
    return np.asarray(ring + 0.1 * _nucleoplasm_base(f, amp, rng), dtype=_F32)


def _p_nucleoli(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(f.nucleoli * _lut(amp)[f.nuc] * 1.1 + 0.06 * _nucleoplasm_base(f, amp, rng), dtype=_F32)


def _p_fibrillar_center(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = f.nucleoli_geom
    if g.size == 0:
        return np.zeros((f.size, f.size), _F32)
    per = rng.integers(2, 7, len(g))
    idx = np.repeat(np.arange(len(g)), per)
    rr = g[idx, 2] * 0.75 * np.sqrt(rng.random(idx.size))
    aa = rng.uniform(0, 2 * np.pi, idx.size)
    x = g[idx, 0] + rr * np.cos(aa)
    y = g[idx, 1] + rr * np.sin(aa)
    peak = amp[g[idx, 3].astype(np.int64)] * rng.uniform(0.6, 1.0, idx.size)
    return _dots(f.size, x, y, peak, f.px(1.0)) + 0.04 * _nucleoplasm_base(f, amp, rng)


def _p_speckles(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(12, 30, f.n), where="nuc")
    # each speckle is a few nearby points: irregular after the blur
    parts = rng.integers(1, 4, x.size)
    idx = np.repeat(np.arange(x.size), parts)
    px = x[idx] + rng.normal(0, f.px(1.3), idx.size)
    py = y[idx] + rng.normal(0, f.px(1.3), idx.size)
    peak = amp[own[idx]] * rng.uniform(0.4, 0.9, idx.size)
    return _dots(f.size, px, py, peak, f.px(1.4)) + 0.15 * _nucleoplasm_base(f, amp, rng)


def _p_nuclear_bodies(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(1, 7, f.n), where="nuc")
    peak = amp[own] * rng.uniform(0.7, 1.3, x.size)
    return _dots(f.size, x, y, peak, f.px(float(rng.uniform(1.4, 2.2)))) + 0.05 * _nucleoplasm_base(f, amp, rng)


def _p_er(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 10.0)
    return np.asarray(f.er * _lut(amp)[f.cell] * (0.85 + 0.15 * tex), dtype=_F32)


def _p_golgi(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = np.flatnonzero((amp > 0) & (f.kind == _INTERPHASE))
    per = rng.integers(14, 34, cells.size)
    own = np.repeat(cells, per)
    centre = f.mtoc_angle[own] + rng.normal(0, 0.25, cells.size).repeat(per)
    spread = np.repeat(rng.uniform(0.3, 0.7, cells.size), per)
    ang = centre + rng.normal(0, 1, own.size) * spread
    rad = f.nucleus_radius(own, ang) + f.px(1.5) + np.abs(rng.normal(0, f.px(4.0), own.size))
    x = f.cx[own] + rad * np.cos(ang)
    y = f.cy[own] + rad * np.sin(ang)
    return _dots(f.size, x, y, amp[own] * rng.uniform(0.4, 0.9, own.size), f.px(1.6))


def _puncta(
    f: _Field,
    amp: np.ndarray,
    rng: np.random.Generator,
    count: tuple[int, int],
    sigma: float,
    bias: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(count[0], count[1], f.n) * (amp > 0), bias=bias)
    return _dots(f.size, x, y, amp[own] * rng.uniform(0.45, 1.0, x.size), f.px(sigma))


def _p_peroxisomes(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _puncta(f, amp, rng, (50, 120), 0.9, None) + _diffuse_cyto(f, amp, 0.04)


def _p_endosomes(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _puncta(f, amp, rng, (20, 50), 1.6, lambda t: np.exp(-2.5 * t)) + _diffuse_cyto(f, amp, 0.05)


def _p_lysosomes(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(8, 22, f.n) * (amp > 0), bias=lambda t: np.exp(-1.2 * t))
    radius = f.px(1.0) * rng.uniform(2.2, 4.0, x.size)
    value = amp[own] * rng.uniform(0.5, 1.0, x.size) / max(amp.max(initial=0), 1e-6)
    rings = _canvas_circles(f.size, x, y, radius, value, np.ones(x.size)) * _F32(max(amp.max(initial=0), 0))
    return _blur(rings, f.px(0.7)) * _F32(min(1.0, f.u) * 1.4) + _diffuse_cyto(f, amp, 0.05)


def _p_intermediate_filaments(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = np.flatnonzero((amp > 0) & (f.kind != _MITOTIC))
    owner = np.repeat(cells, rng.integers(10, 20, cells.size))
    steps = 40
    a0 = rng.uniform(0, 2 * np.pi, owner.size)
    # a cage of wavy arcs around the nucleus ...
    rho = f.nucleus_radius(owner, a0) + f.px(3.0) + f.ext[owner] * rng.uniform(0.0, 0.8, owner.size)
    j = np.arange(steps + 1)[None, :]
    turn = rng.choice([-1.0, 1.0], owner.size)[:, None] * f.px(4.0) / rho[:, None]
    wave = 1 + 0.1 * np.sin(rng.uniform(0.2, 0.5, (owner.size, 1)) * j + rng.uniform(0, 2 * np.pi, (owner.size, 1)))
    drift = np.cumsum(rng.normal(0, 0.015, (owner.size, steps + 1)), axis=1)
    ang = a0[:, None] + turn * j
    radius = rho[:, None] * (wave + drift)
    xs = f.cx[owner][:, None] + radius * np.cos(ang)
    ys = f.cy[owner][:, None] + radius * np.sin(ang)
    arcs, _ = f.cut(owner, xs, ys)
    # ... and long wavy filaments across the cytoplasm
    rim = f.nucleus_radius(owner, a0) + f.u * rng.uniform(2, 8, owner.size)
    x0 = f.cx[owner] + rim * np.cos(a0)
    y0 = f.cy[owner] + rim * np.sin(a0)
    theta0 = a0 + rng.uniform(-0.9, 0.9, owner.size)
    walks, _ = f.walk(rng, owner, x0, y0, theta0, steps, f.px(4.0), turn=0.04, wave=0.12)
    use_arc = rng.random(owner.size) < 0.5
    paths = np.where(use_arc[:, None, None], arcs, walks)
    top = max(amp.max(initial=0), 1e-6)
    lines = _canvas_polylines(f.size, paths, amp[owner] / top * rng.uniform(0.4, 1.0, owner.size))
    return _blur(lines, f.px(0.6)) * _F32(top * min(1.0, f.u)) + _diffuse_cyto(f, amp, 0.06)


def _p_actin(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = np.flatnonzero(amp > 0)
    nc, lines, points = cells.size, 24, 24
    ang = rng.uniform(0, np.pi) + rng.normal(0, 0.4, nc)[:, None] + rng.normal(0, 0.05, (nc, lines))
    reach = f.reach[cells]
    offset = np.linspace(-1, 1, lines)[None, :] * reach[:, None]
    offset = offset + rng.normal(0, 0.25, (nc, lines)) * (2 * reach[:, None] / lines)
    along = np.linspace(-1, 1, points)[None, None, :] * reach[:, None, None]
    cos, sin = np.cos(ang)[..., None], np.sin(ang)[..., None]
    xs = f.cx[cells][:, None, None] - offset[..., None] * sin + along * cos
    ys = f.cy[cells][:, None, None] + offset[..., None] * cos + along * sin
    owner = np.broadcast_to(cells[:, None, None], xs.shape)
    ok = f.inside(xs, ys) & (f.lookup(f.cell, xs, ys) == owner + 1)
    first = np.argmax(ok, axis=2)
    last = points - 1 - np.argmax(ok[..., ::-1], axis=2)
    keep = (ok.sum(axis=2) >= 3) & (rng.random((nc, lines)) < 0.7)
    span = (last - first).astype(float)
    u0 = (first + span * rng.uniform(0, 0.25, span.shape)) / (points - 1) * 2 - 1
    u1 = (last - span * rng.uniform(0, 0.25, span.shape)) / (points - 1) * 2 - 1
    ends = []
    for u in (u0, u1):
        d = u * reach[:, None]
        ex = f.cx[cells][:, None] - offset * np.sin(ang) + d * np.cos(ang)
        ey = f.cy[cells][:, None] + offset * np.cos(ang) + d * np.sin(ang)
        ends.append(np.stack([ex, ey], -1)[keep])
    paths = np.stack(ends, 1)
    top = max(amp.max(initial=0), 1e-6)
    values = (amp[cells][:, None] / top * rng.uniform(0.25, 1.0, (nc, lines)))[keep]
    fibres = _canvas_polylines(f.size, paths, values) * _F32(top * min(1.0, f.u))
    tex = f.noise(rng, 8.0)
    cortex = np.exp(-f.edge * _F32(1 / max(f.px(2.5), 0.5))) * f.cellmask * _lut(amp)[f.cell] * (0.7 + 0.3 * tex)
    return np.asarray(_blur(fibres, f.px(0.7)) + 0.35 * cortex + _diffuse_cyto(f, amp, 0.05), dtype=_F32)


def _p_focal_adhesions(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    near_edge = f.px(6.0)

    def periphery(t: np.ndarray) -> np.ndarray:
        return (t > 0.6).astype(float)

    x, y, own = f.points_in_cells(rng, rng.integers(12, 32, f.n) * (amp > 0), bias=periphery)
    sel = f.lookup(f.edge, x, y) < near_edge
    x, y, own = x[sel], y[sel], own[sel]
    ang = np.arctan2(f.cy[own] - y, f.cx[own] - x) + rng.normal(0, 0.2, x.size)
    length = f.px(1.0) * rng.uniform(3.0, 8.0, x.size)
    paths = np.stack([np.stack([x, y], -1), np.stack([x + length * np.cos(ang), y + length * np.sin(ang)], -1)], 1)
    top = max(amp.max(initial=0), 1e-6)
    thick = max(1, round(f.px(2.0)))
    lines = _canvas_polylines(f.size, paths, amp[own] / top * rng.uniform(0.5, 1.0, x.size), thickness=thick)
    return _blur(lines, f.px(0.7)) * _F32(top * min(1.0, f.u * 1.5)) + _diffuse_cyto(f, amp, 0.08)


def _p_microtubules(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 12.0)
    return np.asarray(
        (1.3 * f.microtubules * (0.8 + 0.2 * tex) + 0.06 * f.cyto) * _lut(amp)[f.cell],
        dtype=_F32,
    )


def _p_microtubule_ends(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    paths, length, owner = f.filaments, f.filament_len, f.filament_owner
    sel = (length >= 4) & (amp[owner] > 0) & (rng.random(owner.size) < 0.85)
    paths, length, owner = paths[sel], length[sel], owner[sel]
    # a comet near the plus end: a short dash along the filament in its outer part
    pos = np.floor(length * rng.uniform(0.6, 1.0, length.size)).astype(np.int64)
    pos = np.clip(pos, 1, length - 1)
    head = paths[np.arange(pos.size), pos]
    tail = paths[np.arange(pos.size), pos - 1]
    tail = head + (tail - head) * rng.uniform(0.6, 1.0, pos.size)[:, None]
    top = max(amp.max(initial=0), 1e-6)
    value = amp[owner] / top * rng.uniform(0.5, 1.0, pos.size)
    lines = _canvas_polylines(f.size, np.stack([tail, head], 1), value)
    heads = _dots(f.size, head[:, 0], head[:, 1], value * top, f.px(1.0))
    comet = _blur(lines, f.px(0.6)) * _F32(top * min(1.0, f.u)) + heads
    return np.asarray(comet + _diffuse_cyto(f, amp, 0.06), dtype=_F32)


def _p_cytokinetic_bridge(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = _diffuse_cyto(f, amp, 0.04)
    paths: list[np.ndarray] = []
    values: list[float] = []
    mids: list[tuple[float, float, float]] = []
    for a, b, p0, p1 in f.bridges:
        level = max(amp[a], amp[b])
        if level <= 0:
            continue
        paths.append(np.stack([p0, p1]))
        values.append(0.85)
        mid = (p0 + p1) / 2 + rng.normal(0, f.px(1.0), 2)
        mids.append((float(mid[0]), float(mid[1]), float(level)))
    if paths:
        thick = max(1, round(f.px(1.5)))
        lines = _canvas_polylines(f.size, paths, np.asarray(values), thickness=thick) * _F32(min(1.0, f.u * 1.5))
        lines *= _F32(max(m[2] for m in mids) * 1.2)
        mid_arr = np.asarray(mids)
        image = image + _blur(lines, f.px(0.6)) + _dots(f.size, mid_arr[:, 0], mid_arr[:, 1], mid_arr[:, 2], f.px(2.0))
    return np.asarray(image, dtype=_F32)


def _p_mitotic_spindle(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = _diffuse_cyto(f, amp, 0.04)
    paths: list[np.ndarray] = []
    values: list[float] = []
    poles: list[np.ndarray] = []
    for k, fibres, pole in f.spindles:
        if amp[k] <= 0:
            continue
        for fibre in fibres:
            paths.append(fibre + rng.normal(0, f.px(0.4), fibre.shape))
            values.append(float(rng.uniform(0.6, 1.0)))
        poles.extend(pole)
    if paths:
        lines = _canvas_polylines(f.size, paths, np.asarray(values)) * _F32(min(1.0, f.u) * 1.3 * amp.max())
        pole_arr = np.asarray(poles)
        image = image + _blur(lines, f.px(0.8)) + _dots(f.size, pole_arr[:, 0], pole_arr[:, 1], amp.max(), f.px(2.2))
    # the spindle region glows: tubulin-rich cytoplasm of the mitotic cell
    return np.asarray(image, dtype=_F32)


def _p_mtoc(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = np.flatnonzero((amp > 0) & (f.kind != _MITOTIC))
    dot = _dots(f.size, f.mtoc[cells, 0], f.mtoc[cells, 1], amp[cells] * 1.2, f.px(2.2))
    rays = np.repeat(cells, rng.integers(8, 16, cells.size))
    ang = rng.uniform(0, 2 * np.pi, rays.size)
    length = f.px(1.0) * rng.uniform(8, 20, rays.size)
    start = f.mtoc[rays]
    end = start + length[:, None] * np.stack([np.cos(ang), np.sin(ang)], -1)
    top = max(amp.max(initial=0), 1e-6)
    star = _canvas_polylines(f.size, np.stack([start, end], 1), amp[rays] / top * rng.uniform(0.5, 1.0, rays.size))
    star = _blur(star, f.px(0.8)) * _F32(0.35 * top * min(1.0, f.u))
    return np.asarray(dot + star + _diffuse_cyto(f, amp, 0.07), dtype=_F32)


def _p_centrosome(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = np.flatnonzero((amp > 0) & (f.kind != _MITOTIC))
    pair = rng.random(cells.size) < 0.5
    ang = rng.uniform(0, 2 * np.pi, cells.size)
    sep = f.u * rng.uniform(2.5, 4.5, cells.size)
    x = np.concatenate([f.mtoc[cells, 0], (f.mtoc[cells, 0] + sep * np.cos(ang))[pair]])
    y = np.concatenate([f.mtoc[cells, 1], (f.mtoc[cells, 1] + sep * np.sin(ang))[pair]])
    peak = np.concatenate([amp[cells], amp[cells][pair] * 0.8]) * 1.3
    return _dots(f.size, x, y, peak, f.px(1.3)) + _diffuse_cyto(f, amp, 0.03)


def _p_lipid_droplets(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(2, 12, f.n) * (amp > 0))
    radius = f.px(1.0) * rng.uniform(2.0, 6.0, x.size)
    hollow = rng.random(x.size) < 0.7
    top = max(amp.max(initial=0), 1e-6)
    value = amp[own] / top * rng.uniform(0.6, 1.0, x.size)
    thick = np.where(hollow, max(1, round(f.px(1.3))), -1)
    rings = _canvas_circles(f.size, x, y, radius, np.where(hollow, value, value * 0.55), thick)
    return _blur(rings, f.px(0.8)) * _F32(top * min(1.0, f.u * 1.3)) + _diffuse_cyto(f, amp, 0.04)


def _p_plasma_membrane(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 10.0)
    rim = np.exp(-((f.edge * _F32(1 / max(f.px(1.6), 0.5))) ** 2)) * f.cellmask * (0.8 + 0.25 * tex)
    return np.asarray(rim * _lut(amp)[f.cell] + _diffuse_cyto(f, amp, 0.08), dtype=_F32)


def _p_cell_junctions(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 8.0)
    rim = np.exp(-((f.junction() * _F32(1 / max(f.px(1.6), 0.5))) ** 2)) * f.cellmask * (0.75 + 0.3 * tex)
    return np.asarray(rim * _lut(amp)[f.cell] + _diffuse_cyto(f, amp, 0.05), dtype=_F32)


def _p_mitochondria(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tubes = _ridges(rng, f.size, 6.0, f.u, 0.3)
    gate = np.clip(f.noise(rng, 7.0) + 0.4, 0, 1)
    density = 0.35 + 0.65 * np.exp(-1.8 * f.t)
    return np.asarray(tubes * gate * density * f.cyto * _lut(amp)[f.cell], dtype=_F32)


def _p_aggresome(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = np.flatnonzero((amp > 0) & (f.kind == _INTERPHASE))
    ang = f.mtoc_angle[cells] + rng.normal(0, 0.4, cells.size)
    rad = f.nucleus_radius(cells, ang) + f.u * rng.uniform(4, 8, cells.size)
    parts = 4
    x = np.repeat(f.cx[cells] + rad * np.cos(ang), parts) + rng.normal(0, f.px(2.0), cells.size * parts)
    y = np.repeat(f.cy[cells] + rad * np.sin(ang), parts) + rng.normal(0, f.px(2.0), cells.size * parts)
    blob = _dots(f.size, x, y, np.repeat(amp[cells], parts) * 0.6, f.px(3.5))
    return np.asarray(blob + _diffuse_cyto(f, amp, 0.1), dtype=_F32)


def _p_cytosol(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tex = f.noise(rng, 5.0)
    base = f.cyto * (0.65 + 0.1 * tex) * (0.75 + 0.25 * (1 - f.t)) + 0.05 * f.nuc_soft
    return np.asarray(base * _lut(amp)[f.cell] * 0.9, dtype=_F32)


def _p_cytoplasmic_bodies(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(1, 5, f.n) * (amp > 0))
    return _dots(f.size, x, y, amp[own] * rng.uniform(0.8, 1.3, x.size), f.px(1.9)) + _diffuse_cyto(f, amp, 0.04)


def _p_rods_rings(f: _Field, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, own = f.points_in_cells(rng, rng.integers(1, 4, f.n) * (amp > 0))
    if rng.random() < 0.5:  # rods and rings also form in the nucleus
        xn, yn, on = f.points_in_cells(rng, rng.integers(0, 2, f.n) * (amp > 0), where="nuc")
        x, y, own = np.concatenate([x, xn]), np.concatenate([y, yn]), np.concatenate([own, on])
    top = max(amp.max(initial=0), 1e-6)
    value = amp[own] / top * rng.uniform(0.7, 1.0, x.size)
    is_ring = rng.random(x.size) < 0.45
    ang = rng.uniform(0, np.pi, x.size)
    half = f.px(1.0) * rng.uniform(3.0, 7.0, x.size)
    rod_paths = np.stack(
        [
            np.stack([x - half * np.cos(ang), y - half * np.sin(ang)], -1),
            np.stack([x + half * np.cos(ang), y + half * np.sin(ang)], -1),
        ],
        1,
    )[~is_ring]
    thick = max(1, round(f.px(2.0)))
    rods = _canvas_polylines(f.size, rod_paths, value[~is_ring], thickness=thick)
    rings = _canvas_circles(
        f.size,
        x[is_ring],
        y[is_ring],
        f.px(1.0) * rng.uniform(2.5, 4.0, is_ring.sum()),
        value[is_ring],
        np.ones(is_ring.sum()),
    )
    shapes = _blur(rods + rings, f.px(0.6)) * _F32(top * min(1.0, f.u * 1.5) * 1.2)
    return np.asarray(shapes + _diffuse_cyto(f, amp, 0.03), dtype=_F32)


_PATTERNS: tuple[_Pattern, ...] = (
    _p_nucleoplasm,
    _p_nuclear_membrane,
    _p_nucleoli,
    _p_fibrillar_center,
    _p_speckles,
    _p_nuclear_bodies,
    _p_er,
    _p_golgi,
    _p_peroxisomes,
    _p_endosomes,
    _p_lysosomes,
    _p_intermediate_filaments,
    _p_actin,
    _p_focal_adhesions,
    _p_microtubules,
    _p_microtubule_ends,
    _p_cytokinetic_bridge,
    _p_mitotic_spindle,
    _p_mtoc,
    _p_centrosome,
    _p_lipid_droplets,
    _p_plasma_membrane,
    _p_cell_junctions,
    _p_mitochondria,
    _p_aggresome,
    _p_cytosol,
    _p_cytoplasmic_bodies,
    _p_rods_rings,
)


# Brings the brightest structures of each class's pattern to about 1 (the 99th percentile of the pattern's
# bright pixels, median over 512 px single-label fields), so the classes differ in where they draw, not in how
# bright they are. Calibrated with `python benchmarks/bench_synth.py --calibrate`.
_CLASS_SCALE: tuple[float, ...] = (
    0.62, 1.09, 0.62, 0.53, 0.54, 0.9, 1.23, 0.42, 1.31, 0.99, 1.13, 1.32, 1.66, 0.79,
    1.21, 0.9, 0.59, 0.67, 0.59, 0.8, 1.48, 0.9, 0.85, 1.29, 0.41, 0.96, 0.87, 0.75,
)  # fmt: skip


def _expression(f: _Field, rng: np.random.Generator, class_id: int) -> np.ndarray:
    """Per-cell amplitude of one class's pattern: 60-100 % of cells express it, at varying levels."""
    on = rng.random(f.n) < rng.uniform(0.6, 1.0)
    if class_id == 16:  # the bridge belongs to the dividing pairs
        on = np.zeros(f.n, dtype=bool)
        on[f.kind == _DAUGHTER] = rng.random(int((f.kind == _DAUGHTER).sum())) < 0.9
        if not on.any():
            on[f.kind == _DAUGHTER] = True
    elif class_id == 17:
        on = (f.kind == _MITOTIC) & (rng.random(f.n) < 0.9)
        if not on.any():
            on = f.kind == _MITOTIC
    if not on[f.visible].any() and f.visible.any():
        on[rng.choice(np.flatnonzero(f.visible))] = True
    return np.asarray(np.exp(rng.normal(0, 0.3, f.n)) * on)


# --------------------------------------------------------------------------------------------------------------
# Brightness: from drawn structure to 8-bit, background-subtracted pixels
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exposure:
    """Per-channel brightness model (values in 8-bit grey levels), tuned against REAL_CHANNEL_STATS."""

    gain_median: float  # grey level of a structure of drawn intensity 1
    gain_sigma: float  # log-normal spread of the gain between images
    offset: float  # background subtraction: subtracted before clipping at 0
    read_noise: float
    shot_noise: float  # noise standard deviation per sqrt(grey level)
    blur: float  # optical blur, in 512-field pixels


_EXPOSURE: dict[str, _Exposure] = {
    "red": _Exposure(101.0, 0.55, 10.0, 2.0, 0.5, 0.9),
    "green": _Exposure(116.0, 0.5, 6.0, 2.0, 0.5, 0.9),
    "blue": _Exposure(118.0, 0.4, 4.0, 2.0, 0.5, 1.0),
    "yellow": _Exposure(172.0, 0.5, 12.0, 2.0, 0.5, 1.0),
}


def _expose(raw: np.ndarray, channel: str, f: _Field, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """Blur, scale by a random exposure, add noise, subtract the background and clip to 8 bits."""
    e = _EXPOSURE[channel]
    gain = e.gain_median * math.exp(rng.normal(0, e.gain_sigma))
    signal = _blur(raw, f.px(e.blur)) * _F32(gain)
    np.maximum(signal, 0, out=signal)
    sd = _F32(e.read_noise) + _F32(e.shot_noise) * np.sqrt(signal)
    shift = (1 + rng.random(2) * (f.size - 1)).astype(int)  # draws independent of size
    value = signal + np.roll(noise, (int(shift[0]), int(shift[1])), axis=(0, 1)) * sd - _F32(e.offset)
    return np.clip(value + 0.5, 0, 255).astype(np.uint8)


def generate_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One field of cells: channel name -> ``(size, size)`` ``uint8`` plane, green drawn for ``labels``.

    The red, blue and yellow landmarks come from a random stream of their own, so for a given ``rng`` state
    they are the same whatever the labels, unless the labels hold 16 (cytokinetic bridge) or 17 (mitotic
    spindle), which guarantee a dividing pair or a mitotic cell.

    Args:
        labels: multi-hot vector of the 28 classes (at least one set for a meaningful green channel).
        size: side of the square field in pixels; shapes scale with it (a 128 px field looks like a downscaled
            512 px one).
        rng: the random stream; the result is a pure function of its state.
    """
    labels = np.asarray(labels)
    if labels.shape != (NUM_CLASSES,):
        raise ValueError(f"labels must be a multi-hot vector of length {NUM_CLASSES}, got shape {labels.shape}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} px, got {size}")
    seeds = rng.integers(0, 2**63 - 1, size=3)
    landmark_rng, green_rng, noise_rng = (np.random.default_rng(int(s)) for s in seeds)
    f = _make_field(size, landmark_rng, n_mitotic_min=int(labels[17] > 0), n_pairs_min=int(labels[16] > 0))
    noise = noise_rng.standard_normal((size, size), dtype=_F32)
    planes = {
        "red": _expose(_draw_red(f, landmark_rng), "red", f, landmark_rng, noise),
        "blue": _expose(_draw_blue(f, landmark_rng), "blue", f, landmark_rng, noise),
        "yellow": _expose(_draw_yellow(f, landmark_rng), "yellow", f, landmark_rng, noise),
    }
    green = _F32(green_rng.uniform(0.04, 0.2)) * f.thick * (1 - 0.4 * (f.nuc > 0))  # unspecific background
    green = green * _lut(np.exp(green_rng.normal(0, 0.3, f.n)))[f.cell]
    for class_id in np.flatnonzero(labels):
        amp = _expression(f, green_rng, int(class_id))
        weight = _CLASS_SCALE[class_id] * green_rng.uniform(0.5, 1.0)
        green = green + _PATTERNS[class_id](f, amp, green_rng) * _F32(weight)
    planes["green"] = _expose(np.asarray(green, dtype=_F32), "green", f, green_rng, noise)
    return {channel: planes[channel] for channel in CHANNELS}


# --------------------------------------------------------------------------------------------------------------
# Writing a data set
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SynthSummary:
    """What :func:`make_dataset` wrote.

    Attributes:
        out: the data set folder.
        n_train: training samples (``train.csv``, ``train/``).
        n_test: test samples (``test/``, ``sample_submission.csv``, ``test_truth.csv``).
        size: image side in pixels.
        seed: the seed everything derives from.
        seconds: wall time of the whole run.
        class_counts: training samples holding each class (28 ints).
        test_class_counts: test samples holding each class (28 ints).
        image_format: ``"png"``, ``"tif"`` or ``"jpg"``.
        bit_depth: 8 or 16.
        workers: worker processes used.
        files: image files written (4 per sample).
    """

    out: Path
    n_train: int
    n_test: int
    size: int
    seed: int
    seconds: float
    class_counts: list[int]
    test_class_counts: list[int] = field(default_factory=list)
    image_format: str = "png"
    bit_depth: int = 8
    workers: int = 1
    files: int = 0

    @property
    def samples_per_second(self) -> float:
        total = self.n_train + self.n_test
        return total / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class _Task:
    folder: str
    sample_id: str
    labels: np.ndarray
    seed: int
    split: int
    index: int
    size: int
    image_format: str
    bit_depth: int


def _sample_rng(seed: int, purpose: int, split: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose, split, index)))


def _write_task(task: _Task) -> int:
    rng = _sample_rng(task.seed, _KEY_IMAGE, task.split, task.index)
    planes = generate_sample(task.labels, task.size, rng)
    folder = Path(task.folder)
    for channel, plane in planes.items():
        data = plane.astype(np.uint16) * np.uint16(257) if task.bit_depth == 16 else plane
        write_channel(folder / f"{task.sample_id}_{channel}.{task.image_format}", data)
    return task.index


def _write_tasks(tasks: list[_Task]) -> int:
    for task in tasks:
        _write_task(task)
    return len(tasks)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _run_tasks(tasks: list[_Task], workers: int) -> Iterator[int]:
    """Write the samples, yielding how many finished at each step (in this process when ``workers == 1``)."""
    if workers == 1:
        for task in tasks:
            _write_task(task)
            yield 1
        return
    per_chunk = max(1, min(16, len(tasks) // (workers * 8)))
    chunks = [tasks[i : i + per_chunk] for i in range(0, len(tasks), per_chunk)]
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker)
    try:
        futures = [pool.submit(_write_tasks, chunk) for chunk in chunks]
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool:
        raise ConfigError(
            "a worker process died before it finished (out of memory?). Workers re-import the calling script: "
            'call make_dataset under `if __name__ == "__main__":`, or pass workers=1 to write in this process'
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _default_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


def _validate(
    n_train: int, n_test: int, size: int, seed: int, min_per_class: int, image_format: str, bit_depth: int, workers: int
) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    for name, value in (("n_train", n_train), ("n_test", n_test), ("size", size), ("seed", seed)):
        if not is_int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if n_train < 1:
        raise ConfigError(f"n_train must be at least 1, got {n_train}")
    if n_test < 0:
        raise ConfigError(f"n_test must be 0 or more, got {n_test}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} px, got {size}")
    if seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {seed}")
    if not is_int(min_per_class) or min_per_class < 0:
        raise ConfigError(f"min_per_class must be a whole number >= 0, got {min_per_class!r}")
    if min_per_class * NUM_CLASSES > n_train:
        raise ConfigError(
            f"min_per_class={min_per_class} needs n_train >= {min_per_class * NUM_CLASSES} "
            f"({NUM_CLASSES} classes x {min_per_class}); got n_train={n_train}"
        )
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if bit_depth not in (8, 16):
        raise ConfigError(f"bit depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and image_format == "jpg":
        raise ConfigError("16-bit images need png or tif; jpg is 8-bit only")
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already exists and is not empty; choose another folder or pass overwrite=True (--overwrite)"
            )
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _LAYOUT_NAMES)
        if foreign:
            raise ConfigError(
                f"{out} holds files a synthetic data set does not (e.g. {foreign[0]!r}); "
                "refusing to overwrite it, remove them or choose another folder"
            )


def _write_labels_csv(path: Path, header: tuple[str, str], rows: Iterable[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _make_ids(seed: int, split: int, n: int, taken: set[str]) -> list[str]:
    ids: list[str] = []
    for index in range(n):
        attempt = 0
        while True:  # a collision has odds of about 2**-100; resolved deterministically all the same
            sample_id = synth_id(_sample_rng(seed, _KEY_ID, split, index * 1000 + attempt))
            if sample_id not in taken:
                break
            attempt += 1
        taken.add(sample_id)
        ids.append(sample_id)
    return ids


def _pool_context() -> multiprocessing.context.BaseContext:
    """Worker processes that start clean.

    Plain fork is unsafe here: once OpenCV has run a parallel operation in the parent, a forked child that
    calls OpenCV can hang on the copied thread pool. A fork server (POSIX) forks workers from a fresh process
    that has only imported this module; elsewhere, spawn.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # imported once by the server, inherited by every worker
        return context
    return multiprocessing.get_context("spawn")


def make_dataset(
    out: str | Path,
    *,
    n_train: int,
    n_test: int = 0,
    size: int = 512,
    seed: int = 0,
    min_per_class: int = 0,
    image_format: str = "png",
    bit_depth: int = 8,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write a synthetic data set in the Kaggle HPA 2018 layout (see the module docstring).

    The data set is written into a hidden sibling folder and renamed into place at the end, so an
    interrupted run never leaves a half-written folder that looks complete.

    Args:
        out: the data set folder; must not exist, or be empty (or hold a previous data set and ``overwrite``).
        n_train: training samples (>= 1).
        n_test: test samples (>= 0).
        size: side of the square images, 32-4096 px.
        seed: everything derives from it; the same seed gives byte-identical files.
        min_per_class: at least this many training samples hold each class (0 = real frequencies). The test
            split gets the proportional minimum, ``ceil(min_per_class * n_test / n_train)``, as far as
            ``n_test`` allows.
        image_format: ``"png"``, ``"tif"`` or ``"jpg"``.
        bit_depth: 8, or 16 (png/tif only): 8-bit values times 257, which protloc reads back unchanged.
        workers: worker processes (default: the usable CPUs, at most 8, and one per 16 samples). The files do
            not depend on it. Workers start from a fork server (spawn where there is none) and re-import the
            calling script, so a script must call this under ``if __name__ == "__main__":``.
        overwrite: replace ``out`` if it already holds a data set. A folder holding anything the generator
            does not write is never replaced.
        progress: show a Rich progress bar.
        on_progress: called as ``on_progress(done, total)`` after each sample is written (for a caller's own
            progress display).

    Raises:
        ConfigError: an invalid argument, or an output folder that cannot be used.
    """
    image_format = image_format.lower().lstrip(".") if isinstance(image_format, str) else image_format
    if image_format == "tiff":
        image_format = "tif"
    _validate(n_train, n_test, size, seed, min_per_class, image_format, bit_depth, 1 if workers is None else workers)
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # This is a worker process re-importing a calling script that has no __main__ guard: stop before
        # touching the disk (the parent then reports the broken pool).
        raise ConfigError(
            'make_dataset ran while a worker process was starting: call it under `if __name__ == "__main__":`'
        )
    if workers is None:  # a worker needs ~16 samples to pay for its start
        workers = max(1, min(_default_workers(), (n_train + n_test) // 16))
    out = Path(out)
    target = out.absolute()
    _check_target(target, overwrite)
    started = time.perf_counter()

    train_labels = sample_label_sets(n_train, _sample_rng(seed, _KEY_LABELS, 0), min_per_class)
    test_min = min(math.ceil(min_per_class * n_test / n_train), n_test // NUM_CLASSES)
    test_labels = sample_label_sets(n_test, _sample_rng(seed, _KEY_LABELS, 1), test_min)
    taken: set[str] = set()
    train_ids = _make_ids(seed, 0, n_train, taken)
    test_ids = _make_ids(seed, 1, n_test, taken)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        (staging / "train").mkdir()
        (staging / "test").mkdir()
        tasks = [
            _Task(str(staging / "train"), i, lab, seed, 0, k, size, image_format, bit_depth)
            for k, (i, lab) in enumerate(zip(train_ids, train_labels, strict=True))
        ] + [
            _Task(str(staging / "test"), i, lab, seed, 1, k, size, image_format, bit_depth)
            for k, (i, lab) in enumerate(zip(test_ids, test_labels, strict=True))
        ]
        workers = max(1, min(workers, len(tasks)))
        with contextlib.ExitStack() as stack:
            if progress:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                bar = stack.enter_context(
                    Progress(
                        TextColumn(f"synth {out.name}"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TextColumn("samples"),
                        TimeRemainingColumn(),
                    )
                )
                handle = bar.add_task("synth", total=len(tasks))
            count = 0
            for finished in _run_tasks(tasks, workers):
                count += finished
                if progress:
                    bar.advance(handle, finished)
                if on_progress is not None:
                    on_progress(count, len(tasks))

        train_rows = sorted(zip(train_ids, (format_labels(v) for v in train_labels), strict=True))
        test_rows = sorted(zip(test_ids, (format_labels(v) for v in test_labels), strict=True))
        _write_labels_csv(staging / _TRAIN_CSV, ("Id", "Target"), train_rows)
        _write_labels_csv(staging / _TEST_TRUTH_CSV, ("Id", "Target"), test_rows)
        _write_labels_csv(staging / _SUBMISSION_CSV, ("Id", "Predicted"), ((i, "0") for i, _ in test_rows))
        _swap_into_place(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SynthSummary(
        out=out,
        n_train=n_train,
        n_test=n_test,
        size=size,
        seed=seed,
        seconds=time.perf_counter() - started,
        class_counts=[int(c) for c in train_labels.sum(axis=0)],
        test_class_counts=[int(c) for c in test_labels.sum(axis=0)] if n_test else [0] * NUM_CLASSES,
        image_format=image_format,
        bit_depth=bit_depth,
        workers=workers,
        files=4 * (n_train + n_test),
    )


def _swap_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to ``out`` (replacing an old data set only with ``overwrite``)."""
    if out.is_dir() and any(out.iterdir()):
        _check_target(out, overwrite)  # it may have changed while we were writing
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(trash)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
        return
    if out.is_dir():
        out.rmdir()
    try:
        staging.rename(out)
    except OSError as exc:
        raise DataError(f"could not move the finished data set into {out}: {exc}") from None
