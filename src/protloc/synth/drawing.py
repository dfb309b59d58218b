"""Drawing primitives of the synthetic generator: blur, smooth noise, ridges, dots, anti-aliased lines and circles.

Geometry is specified for a 512 px field (``_REF``) and scaled to the output size."""

from __future__ import annotations

import math

import cv2
import numpy as np

_REF = 512.0  # geometry below is in pixels of a 512 px field
_F32 = np.float32


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
