"""An HPA-like field generator that shares no code with ``protloc.synth``: the benchmark's foreign data.

    python benchmarks/hpa_like.py OUT --family sparse|dense [--n-train 3000] [--n-test 1000] [--size 128]

protloc is judged on data it has never seen, so the quality benchmark (``bench_cpu_minute.py``) does not train
and test on protloc's own generator. This one was written separately, with other cell shapes (Voronoi cells
around jittered nuclei, not protloc's ellipses), other landmark channels and another rendering of each of the
28 patterns (see ``_PATTERNS``). Only the label sets are shared: they are drawn with the real frequencies and
co-occurrences of the 31,072 Kaggle 2018 training images (the statistics protloc ships), since the issue asks
for "real label frequencies".

Two families, so that nothing is tuned to one look:

* ``sparse``: 3-8 large cells, bright, a sharp optical blur, little noise;
* ``dense``: 10-28 small cells, dim (a third of the brightness) on a background offset, a wider blur, shot
  and read noise, a per-field gain, cells that do not express the protein, and other pattern renderings
  (square puncta, thicker and straighter filaments, double membranes).

Fields are drawn at twice the size and area-averaged down, written as 8-bit PNGs in the Kaggle 2018 layout
(``train.csv``/``test_truth.csv`` with ``Id,Target``, ``train/`` and ``test/`` with ``<Id>_<colour>.png``).
The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

COLOURS = ("red", "green", "blue", "yellow")


@dataclass(frozen=True)
class Family:
    name: str
    cells: tuple[int, int]
    gain: float
    background: float
    blur: float
    noise: float
    square_puncta: bool
    thick: int
    expressing: float
    """share of cells that show the protein."""


FAMILIES = {
    "sparse": Family("sparse", (3, 8), 1.0, 2.0, 1.0, 2.0, False, 1, 1.0),
    "dense": Family("dense", (10, 28), 0.35, 9.0, 1.8, 5.0, True, 2, 0.75),
}


@dataclass
class Cell:
    centre: np.ndarray
    axes: tuple[float, float]
    angle: float
    body: np.ndarray
    """bool mask of the whole cell (nucleus included)."""
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    radius: float


# ------------------------------------------------------------------------------------------------ geometry


def _cells(rng: np.random.Generator, side: int, family: Family) -> tuple[list[Cell], np.ndarray]:
    n = int(rng.integers(family.cells[0], family.cells[1] + 1))
    spacing = side / np.sqrt(n) * 0.55
    centres: list[np.ndarray] = []
    for _ in range(n * 40):
        if len(centres) == n:
            break
        point = rng.uniform(0.04 * side, 0.96 * side, 2)
        if all(np.hypot(*(point - c)) > spacing for c in centres):
            centres.append(point)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    distances = np.stack([np.hypot(yy - c[0], xx - c[1]) for c in centres])
    owner = distances.argmin(axis=0)
    nearest = distances.min(axis=0)
    max_radius = spacing * rng.uniform(0.95, 1.2)
    wobble = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), side / 24)
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    inside = nearest < max_radius * (1 + 0.25 * wobble)
    label = np.where(inside, owner + 1, 0).astype(np.int32)
    cells = []
    for i, centre in enumerate(centres):
        body = label == i + 1
        if body.sum() < 30:
            continue
        a = spacing * rng.uniform(0.32, 0.45)
        axes = (a, a * rng.uniform(0.65, 0.95))
        angle = float(rng.uniform(0, 180))
        nucleus = np.zeros((side, side), np.uint8)
        cv2.ellipse(
            nucleus,
            (int(centre[1]), int(centre[0])),
            (int(axes[0]), int(axes[1])),
            angle,
            0,
            360,
            1,
            -1,
        )
        nuc = nucleus.astype(bool) & body
        cells.append(Cell(centre, axes, angle, body, nuc, body & ~nuc, max_radius))
    return cells, label


def _points_in(mask: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0 or count <= 0:
        return np.zeros((0, 2), int)
    pick = rng.integers(0, len(ys), count)
    return np.stack([ys[pick], xs[pick]], axis=1)


def _dots(canvas: np.ndarray, points: np.ndarray, radius: float, value: float, square: bool) -> None:
    r = max(1, round(radius))
    for y, x in points:
        if square:
            cv2.rectangle(canvas, (int(x) - r, int(y) - r), (int(x) + r, int(y) + r), value, -1)
        else:
            cv2.circle(canvas, (int(x), int(y)), r, value, -1)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, kernel) - cv2.erode(m, kernel)).astype(bool) & mask


def _filaments(
    canvas: np.ndarray,
    cell: Cell,
    rng: np.random.Generator,
    count: int,
    value: float,
    width: int,
    curvy: float,
    parallel: bool,
) -> None:
    side = canvas.shape[0]
    base = rng.uniform(0, np.pi)
    for _ in range(count):
        start = _points_in(cell.cytoplasm, rng, 1)
        if len(start) == 0:
            return
        y, x = start[0].astype(float)
        heading = base + rng.normal(0, 0.08) if parallel else rng.uniform(0, 2 * np.pi)
        points = [(x, y)]
        for _ in range(int(cell.radius / 3)):
            heading += rng.normal(0, curvy)
            x, y = x + 3 * np.cos(heading), y + 3 * np.sin(heading)
            if not (0 <= x < side and 0 <= y < side) or not cell.body[int(y), int(x)]:
                break
            points.append((x, y))
        if len(points) > 1:
            cv2.polylines(canvas, [np.array(points, np.int32)], False, value, width)


# ------------------------------------------------------------------------------------------------ patterns


def _draw_pattern(c: int, canvas: np.ndarray, cells: list[Cell], label: np.ndarray, rng, family: Family) -> None:
    for cell in cells:
        draw_in_cell(c, canvas, cell, label, rng, family)
    _draw_field_event(c, canvas, cells, rng, family)


def draw_in_cell(
    c: int, canvas: np.ndarray, cell: Cell, label: np.ndarray, rng, family: Family, scale: float | None = None
) -> None:
    """Draw rendering ``c`` (a Kaggle 2018 class id) of one cell onto ``canvas`` (not clipped to the cell);
    ``scale``: lengths per 256 px of field (default: the canvas is the whole field, ``side / 256``)."""
    sq, thick = family.square_puncta, family.thick
    side = canvas.shape[0]
    s = side / 256 if scale is None else scale
    cx, cy = int(cell.centre[1]), int(cell.centre[0])
    v = rng.uniform(0.6, 1.0)
    if c == 0:  # nucleoplasm: the nucleus filled, a little grain
        canvas[cell.nucleus] += v * 0.55 * (0.8 + 0.2 * rng.random(int(cell.nucleus.sum())))
    elif c == 1:  # nuclear membrane: the nucleus rim
        canvas[_outline(cell.nucleus, thick)] += v
    elif c in (2, 3):  # nucleoli: 1-4 round bodies; fibrillar centre: tiny dots inside them
        spots = _points_in(cell.nucleus, rng, int(rng.integers(1, 5)))
        if c == 2:
            _dots(canvas, spots, 4 * s * rng.uniform(0.8, 1.3), v * 0.8, False)
        else:
            for y, x in spots:
                _dots(canvas, np.array([[y, x]]) + rng.integers(-3, 4, (4, 2)), 1.2 * s, v, sq)
    elif c == 4:  # speckles: many irregular small dots in the nucleus
        _dots(canvas, _points_in(cell.nucleus, rng, 25), 2.0 * s, v * 0.7, sq)
    elif c == 5:  # nuclear bodies: a few bright dots
        _dots(canvas, _points_in(cell.nucleus, rng, int(rng.integers(2, 6))), 2.2 * s, v, sq)
    elif c == 6:  # ER: a dense mesh in the cytoplasm, strongest near the nucleus
        mesh = _mesh(rng, side) * np.exp(-_dist(cell, side) / (cell.radius * 0.6))
        canvas[cell.cytoplasm] += v * mesh[cell.cytoplasm]
    elif c == 7:  # Golgi: a compact crescent on one side of the nucleus
        ang = rng.uniform(0, 360)
        cv2.ellipse(
            canvas,
            (cx, cy),
            (int(cell.axes[0] * 1.25), int(cell.axes[1] * 1.25)),
            ang,
            0,
            70,
            v,
            int(5 * s) + 1,
        )
    elif c == 8:  # peroxisomes: many tiny dots over the cytoplasm
        _dots(canvas, _points_in(cell.cytoplasm, rng, 40), 1.0 * s, v, sq)
    elif c == 9:  # endosomes: medium dots, near the nucleus
        near = cell.cytoplasm & (_dist(cell, side) < cell.radius * 0.7)
        _dots(canvas, _points_in(near, rng, 12), 2.5 * s, v * 0.8, sq)
    elif c == 10:  # lysosomes: larger dots towards the periphery
        far = cell.cytoplasm & (_dist(cell, side) > cell.radius * 0.55)
        _dots(canvas, _points_in(far, rng, 8), 3.5 * s, v * 0.8, sq)
    elif c == 11:  # intermediate filaments: long wavy lines
        _filaments(canvas, cell, rng, 10, v * 0.7, thick, 0.25, False)
    elif c == 12:  # actin: straight, parallel stress fibres
        _filaments(canvas, cell, rng, 9, v * 0.8, thick, 0.01, True)
    elif c == 13:  # focal adhesions: short dashes at the cell edge
        edge = _outline(cell.body, 3) & ~cell.nucleus
        for y, x in _points_in(edge, rng, 12):
            d = rng.uniform(0, np.pi)
            cv2.line(
                canvas,
                (int(x), int(y)),
                (int(x + 6 * s * np.cos(d)), int(y + 6 * s * np.sin(d))),
                v,
                thick + 1,
            )
    elif c == 14:  # microtubules: radial fibres from the centre
        _radial(canvas, cell, rng, 18, v * 0.6, thick)
    elif c == 15:  # microtubule ends: dots at the cell rim
        _dots(canvas, _points_in(_outline(cell.body, 2), rng, 15), 1.3 * s, v, sq)
    elif c == 18:  # MTOC: one bright dot beside the nucleus
        _dots(canvas, _beside(cell, rng, 1), 2.5 * s, v, sq)
    elif c == 19:  # centrosome: a bright pair beside the nucleus
        p = _beside(cell, rng, 1)
        _dots(canvas, np.concatenate([p, p + int(4 * s) + 1]), 1.8 * s, v, sq)
    elif c == 20:  # lipid droplets: hollow rings
        for y, x in _points_in(cell.cytoplasm, rng, 6):
            cv2.circle(canvas, (int(x), int(y)), int(3.5 * s) + 1, v, 1)
    elif c == 21:  # plasma membrane: the whole cell outline
        canvas[_outline(cell.body, thick)] += v * 0.8
        if sq:  # the dense family draws it doubled
            canvas[_outline(cell.body & ~_outline(cell.body, 3 * thick), thick)] += v * 0.4
    elif c == 22:  # cell junctions: outline only where two cells touch
        grown = cv2.dilate(cell.body.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        touching = grown & (label > 0) & ~cell.body
        contact = cv2.dilate(touching.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & cell.body
        canvas[contact] += v
    elif c == 23:  # mitochondria: short worms through the cytoplasm
        _filaments(canvas, cell, rng, 30, v * 0.7, thick, 0.6, False)
    elif c == 24:  # aggresome: one big bright blob by the nucleus
        _dots(canvas, _beside(cell, rng, 1), 6 * s, v, False)
    elif c == 25:  # cytosol: the cytoplasm filled
        canvas[cell.cytoplasm] += v * 0.4
    elif c == 26:  # cytoplasmic bodies: a few medium bright dots
        _dots(canvas, _points_in(cell.cytoplasm, rng, int(rng.integers(1, 4))), 3 * s, v, sq)
    elif c == 27:  # rods and rings: short thick rods and small rings
        for y, x in _points_in(cell.cytoplasm, rng, 3):
            d = rng.uniform(0, np.pi)
            cv2.line(
                canvas,
                (int(x), int(y)),
                (int(x + 9 * s * np.cos(d)), int(y + 9 * s * np.sin(d))),
                v,
                2 * thick,
            )
        for y, x in _points_in(cell.cytoplasm, rng, 2):
            cv2.circle(canvas, (int(x), int(y)), int(4 * s) + 1, v, thick)


def _draw_field_event(c: int, canvas: np.ndarray, cells: list[Cell], rng, family: Family) -> None:
    sq, thick = family.square_puncta, family.thick
    s = canvas.shape[0] / 256
    if c in (16, 17) and cells:  # field-level events drawn once: a bridge, a spindle
        if c == 16 and len(cells) >= 2:
            a, b = cells[0], min(cells[1:], key=lambda k: np.hypot(*(k.centre - cells[0].centre)))
            cv2.line(
                canvas,
                (int(a.centre[1]), int(a.centre[0])),
                (int(b.centre[1]), int(b.centre[0])),
                1.0,
                thick + 1,
            )
            mid = ((a.centre + b.centre) / 2).astype(int)
            _dots(canvas, mid[None], 3 * s, 1.0, sq)
        else:
            cell = cells[int(rng.integers(len(cells)))]
            cy, cx = cell.centre
            d = rng.uniform(0, np.pi)
            r = cell.axes[0] * 1.1
            poles = [(cx + r * np.cos(d), cy + r * np.sin(d)), (cx - r * np.cos(d), cy - r * np.sin(d))]
            for k in range(-4, 5):
                bend = (k * r / 10) * np.array([-np.sin(d), np.cos(d)])
                mid = (cx + bend[0], cy + bend[1])
                cv2.polylines(canvas, [np.array([poles[0], mid, poles[1]], np.int32)], False, 1.0, thick)


def _dist(cell: Cell, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    return np.hypot(yy - cell.centre[0], xx - cell.centre[1])


def _beside(cell: Cell, rng: np.random.Generator, n: int) -> np.ndarray:
    d = rng.uniform(0, 2 * np.pi, n)
    r = cell.axes[0] * 1.2
    return np.stack([cell.centre[0] + r * np.sin(d), cell.centre[1] + r * np.cos(d)], axis=1).astype(int)


def _radial(canvas: np.ndarray, cell: Cell, rng: np.random.Generator, count: int, value: float, width: int) -> None:
    cy, cx = cell.centre
    for d in rng.uniform(0, 2 * np.pi, count):
        r = cell.radius * rng.uniform(0.7, 1.1)
        end = (int(cx + r * np.cos(d)), int(cy + r * np.sin(d)))
        cv2.line(canvas, (int(cx), int(cy)), end, value, width)


def _mesh(rng: np.random.Generator, side: int) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 2.0)
    return np.clip(1.0 - np.abs(noise) * 6, 0, 1)


# ------------------------------------------------------------------------------------------------ fields


def render(labels: np.ndarray, rng: np.random.Generator, family: Family, size: int) -> list[np.ndarray]:
    """The four 8-bit channels (red, green, blue, yellow) of one field showing ``labels`` (class ids)."""
    side = 2 * size
    cells, label = _cells(rng, side, family)
    green = np.zeros((side, side), np.float32)
    expressing = [cell for cell in cells if rng.random() < family.expressing] or cells[:1]
    for c in labels:
        _draw_pattern(int(c), green, expressing, label, rng, family)
    blue = np.zeros_like(green)
    red = np.zeros_like(green)
    yellow = np.zeros_like(green)
    for cell in cells:
        texture = _mesh(rng, side)
        blue[cell.nucleus] += 0.6 + 0.3 * texture[cell.nucleus]
        _radial(red, cell, rng, 14, 0.35, 1)
        red[cell.cytoplasm] += 0.12
        er = _mesh(rng, side) * np.exp(-_dist(cell, side) / (cell.radius * 0.7))
        yellow[cell.cytoplasm] += 0.25 + 0.5 * er[cell.cytoplasm]
    field_gain = family.gain * rng.uniform(0.7, 1.3)
    out = []
    for channel, level in ((red, 150), (green, 200), (blue, 170), (yellow, 140)):
        image = cv2.GaussianBlur(np.clip(channel, 0, 1.5), (0, 0), family.blur) * level * field_gain
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) + family.background
        image = rng.poisson(np.maximum(image, 0) / 2.0) * 2.0 + rng.normal(0, family.noise, image.shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


def _label_sets(n: int, rng: np.random.Generator) -> np.ndarray:
    from protloc.synth.labels import sample_label_sets  # the real label statistics only

    return sample_label_sets(n, rng)


def _write_one(job: tuple[Path, str, list[int], int, str, int]) -> None:
    folder, sample_id, classes, seed, family, size = job
    rng = np.random.default_rng(seed)
    for colour, image in zip(COLOURS, render(np.array(classes), rng, FAMILIES[family], size), strict=True):
        cv2.imwrite(str(folder / f"{sample_id}_{colour}.png"), image)


@contextmanager
def replacing(out: Path) -> Iterator[Path]:
    """A fresh ``OUT.partial`` folder to write a data set into; it replaces ``out`` when the block ends (a failed
    write leaves ``out`` as it was)."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}; choose {', '.join(FAMILIES)}")


def make(
    out: Path,
    family: str,
    n_train: int,
    n_test: int,
    size: int = 128,
    seed: int = 0,
    workers: int = 2,
) -> None:
    """Write a data set of ``family`` into ``out`` (replaced if it exists), in the Kaggle 2018 layout (the 2021
    layout with per-cell truth: ``hpa_like_cells.make``)."""
    check_family(family)
    rng = np.random.default_rng([seed, 1 if family == "sparse" else 2])
    with replacing(out) as tmp:
        jobs = []
        for split, n, table in (("train", n_train, "train.csv"), ("test", n_test, "test_truth.csv")):
            (tmp / split).mkdir(parents=True)
            hot = _label_sets(n, rng)
            rows = []
            for i in range(n):
                sample_id = f"{family}-{split}-{i:05d}"
                classes = [int(c) for c in np.flatnonzero(hot[i])]
                rows.append((sample_id, " ".join(map(str, classes))))
                jobs.append((tmp / split, sample_id, classes, int(rng.integers(2**31)), family, size))
            with open(tmp / table, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["Id", "Target"])
                writer.writerows(rows)
        if workers <= 1:  # in this process: a forkserver started before this module was importable could not run it
            for job in jobs:
                _write_one(job)
        else:
            with multiprocessing.get_context("forkserver").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                    pass


def command_line(
    write: Callable[..., None], description: str | None, *, family: str, n_train: int, n_test: int, size: int
) -> None:
    """The command line of a generator whose ``write(out, family, n_train, n_test, size, seed, workers)`` makes a data
    set (this module's :func:`make`, ``hpa_like_cells.make``), with its defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", choices=sorted(FAMILIES), default=family)
    parser.add_argument("--n-train", type=int, default=n_train)
    parser.add_argument("--n-test", type=int, default=n_test)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    write(args.out, args.family, args.n_train, args.n_test, args.size, args.seed, args.workers)


def main() -> None:
    command_line(make, __doc__, family="sparse", n_train=3000, n_test=1000, size=128)


if __name__ == "__main__":
    main()
