"""One synthetic sample: the landmarks, the green patterns of its labels and the brightness model, as 8-bit planes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protloc.data.io import CHANNELS
from protloc.errors import ConfigError
from protloc.synth.cells import CellTruth, cell_truth, per_cell_sums
from protloc.synth.drawing import _F32, _blur, _lut
from protloc.synth.field import _draw_blue, _draw_red, _draw_yellow, _Field, _make_field
from protloc.synth.labels import SYNTH_SCHEME
from protloc.synth.patterns import _CLASS_SCALE, _PATTERNS, _expression

MIN_SIZE = 32
MAX_SIZE = 4096

# Per-channel pixel statistics of real Kaggle HPA 2018 512 px PNGs (about 100 images per channel), copied from
# ../shared/hpa/real_channel_stats.json (the package never reads that file). The generator's brightness model
# was tuned against them; benchmarks/bench_synth.py prints the comparison.
REAL_CHANNEL_STATS: dict[str, dict[str, float]] = {
    "red": {"fraction_zero": 0.5019, "mean": 17.77, "p75": 19.0, "p95": 92.0, "p99": 177.0, "image_mean_p50": 16.91},
    "green": {"fraction_zero": 0.5532, "mean": 12.15, "p75": 12.0, "p95": 64.0, "p99": 132.0, "image_mean_p50": 8.72},
    "blue": {"fraction_zero": 0.8188, "mean": 12.17, "p75": 0.0, "p95": 100.0, "p99": 186.0, "image_mean_p50": 10.6},
    "yellow": {"fraction_zero": 0.5145, "mean": 16.3, "p75": 17.0, "p95": 84.0, "p99": 168.0, "image_mean_p50": 14.56},
}


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
    # green: blur 0.9 -> 0.5 and shot noise 0.5 -> 1.0 after benchmarks/compare_real.py found synthetic green
    # fields half as textured (|Laplacian| per unit brightness) as the genuine ones
    "green": _Exposure(116.0, 0.5, 6.0, 2.0, 1.0, 0.5),
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
    return _generate(labels, size, rng, with_cells=False)[0]


def generate_sample_with_cells(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], CellTruth]:
    """:func:`generate_sample` plus the field's single-cell truth (see :mod:`protloc.synth.cells`).

    The planes are byte-identical to :func:`generate_sample`'s for the same ``rng`` state: the truth is
    recorded from the drawing, it draws nothing.
    """
    planes, truth = _generate(labels, size, rng, with_cells=True)
    assert truth is not None
    return planes, truth


def _generate(
    labels: np.ndarray, size: int, rng: np.random.Generator, *, with_cells: bool
) -> tuple[dict[str, np.ndarray], CellTruth | None]:
    labels = np.asarray(labels)
    if labels.shape != (SYNTH_SCHEME.num_classes,):
        raise ValueError(
            f"labels must be a multi-hot vector of length {SYNTH_SCHEME.num_classes}, got shape {labels.shape}"
        )
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
    contributions: dict[int, np.ndarray] = {}
    expression: dict[int, np.ndarray] = {}
    for class_id in np.flatnonzero(labels):
        amp = _expression(f, green_rng, int(class_id))
        weight = _CLASS_SCALE[class_id] * green_rng.uniform(0.5, 1.0)
        pattern = _PATTERNS[class_id](f, amp, green_rng) * _F32(weight)
        if with_cells:
            contributions[int(class_id)] = per_cell_sums(f.cell, pattern, f.n)
            expression[int(class_id)] = amp
        green = green + pattern
    planes["green"] = _expose(np.asarray(green, dtype=_F32), "green", f, green_rng, noise)
    ordered = {channel: planes[channel] for channel in CHANNELS}
    if not with_cells:
        return ordered, None
    return ordered, cell_truth(f.cell, labels, contributions, expression)
