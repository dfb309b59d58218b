"""Fields of ``benchmarks/hpa_like.py`` in the Kaggle 2021 classes, with per-cell truth recorded from the drawing.

The 2021 single-cell challenge scored each cell, though its training fields carried image labels only. This
module draws such fields, cell by cell, so a benchmark can train on field labels and score per cell
(``python benchmarks/hpa_like_cells.py OUT --family dense``). It shares no code with ``protloc.synth``; it reuses
only hpa_like's own cells (Voronoi bodies around jittered nuclei) and pattern renderings, and protloc's class
scheme and label statistics.

* **Classes**: the 2021 scheme (``protloc.schemes``, ``hpa2021``: 18 patterns + an exclusive Negative). Field
  label sets are the real Kaggle 2018 sets (real frequencies and co-occurrences) folded into 2021 by protloc's
  documented mapping, plus a share of all-negative fields. Each 2021 class has one or more of hpa_like's
  renderings (``RENDERINGS``: e.g. vesicles are drawn as peroxisomes, endosomes, lysosomes, lipid droplets or
  cytoplasmic bodies), one chosen per field, so a class does not always look the same.
* **Heterogeneity**: a share of the cells shows no protein (``1 - family.expressing`` on average, varying by
  field); in a multi-label field each class is switched on per cell with probability ``CLASS_ON``, so
  neighbours differ; expression varies log-normally from cell to cell.
* **Dividing cells**: a field with the mitotic spindle has 1-2 mitotic cells (rounded, a condensed metaphase
  plate instead of a nucleus, brighter microtubules) that carry the spindle, and other fields sometimes hold
  one without it. A mitotic cell shows no nuclear pattern.
* **Per-cell truth**: every pattern is drawn clipped to its cell's body; a cell shows a class when it is on in
  the cell and its drawn signal reaches ``MIN_SIGNAL``; a cell that shows nothing is **Negative**. Fragments cut
  by the border smaller than ``MIN_AREA_FRACTION`` of the median cell are dropped from the truth.
  **Field labels = the union of its cells' classes**, Negative only when every cell is negative (it is
  exclusive in the 2021 scheme).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import hpa_like
from hpa_like import Cell, Family

SCHEME = "hpa2021"

# 2021 class -> the hpa_like renderings (Kaggle 2018 pattern ids of hpa_like.draw_in_cell) that show it.
RENDERINGS: dict[str, tuple[int, ...]] = {
    "Nucleoplasm": (0,),
    "Nuclear membrane": (1,),
    "Nucleoli": (2,),
    "Nucleoli fibrillar center": (3,),
    "Nuclear speckles": (4,),
    "Nuclear bodies": (5,),
    "Endoplasmic reticulum": (6,),
    "Golgi apparatus": (7,),
    "Intermediate filaments": (11,),
    "Actin filaments": (12, 13),
    "Microtubules": (14, 15),
    "Mitotic spindle": (),  # drawn by _spindle in mitotic cells only
    "Centrosome": (18, 19),
    "Plasma membrane": (21, 22),
    "Mitochondria": (23,),
    "Aggresome": (24,),
    "Cytosol": (25,),
    "Vesicles and punctate cytosolic patterns": (8, 9, 10, 20, 26),
}
NUCLEAR = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
)
"""Patterns a mitotic cell (no nuclear envelope) cannot show."""
SPINDLE = "Mitotic spindle"

NEGATIVE_FIELDS = 0.03
"""Share of fields drawn all-negative (besides 2018 label sets that fold into no 2021 class)."""
CLASS_ON = 0.7
"""In a multi-label field, the chance a class is on in an expressing cell."""
MIN_SIGNAL = 3.0
"""A cell shows a class when the class's drawn signal summed over the cell reaches this (canvas units)."""
MIN_AREA_FRACTION = 0.15
"""Cells cut by the border smaller than this share of the median cell area are not cells of the truth."""
MITOTIC_WITHOUT_SPINDLE = 0.15
"""Chance that a field without the spindle class still holds one mitotic cell."""
NUCLEUS_OFFSET = 0.2
"""A nucleus sits up to this share of the cell spacing off its cell's Voronoi seed."""
TEST_MINIMUM = 4
"""Every class is drawn in at least this many test fields (training fields keep the real frequencies)."""
LANDMARK_GAIN = 0.7
"""The reference stains (microtubules, nuclei, ER) are at least this bright, relative to the sparse family,
even where the protein is dim: the segmenter sees cells that a person would."""
"""Chance that a field without the spindle class still holds one mitotic cell."""


@functools.lru_cache(maxsize=1)
def scheme():
    from protloc.schemes import get_scheme

    return get_scheme(SCHEME)


def label_sets(n: int, rng: np.random.Generator, minimum: int = 0) -> np.ndarray:
    """``(n, K)`` field label sets in the 2021 scheme: real 2018 sets folded by protloc's mapping; a field left
    with no class (only 2018 classes 2021 dropped), and a share ``NEGATIVE_FIELDS`` of all fields, is Negative.

    ``minimum``: every class is drawn in at least this many fields (rarest first, a row is replaced by a real
    set that holds the short class, only where its own classes stay above the minimum), so that a test split
    of a hundred fields scores every class; training splits keep the real frequencies (``minimum=0``)."""
    pool = _folded(n + 200 * max(minimum, 0) * len(scheme()), rng)
    hot = pool[:n].copy()
    pool = pool[n:]
    for k in np.argsort(hot.sum(axis=0), kind="stable"):
        holding = np.flatnonzero(pool[:, k])
        while hot[:, k].sum() < min(minimum, n) and holding.size:
            counts = hot.sum(axis=0)
            free = np.flatnonzero(~hot[:, k].astype(bool) & ~(hot[:, counts <= minimum].any(axis=1)))
            if not free.size:
                break
            hot[free[int(rng.integers(free.size))]] = pool[holding[0]]
            holding = holding[1:]
    return hot


def _folded(n: int, rng: np.random.Generator) -> np.ndarray:
    from protloc.schemes import get_mapping

    hot = get_mapping("hpa2018", SCHEME).apply(hpa_like._label_sets(n, rng))
    negative = scheme().exclusive[0]
    empty = (hot.sum(axis=1) == 0) | (rng.random(n) < NEGATIVE_FIELDS)
    hot[empty] = 0
    hot[empty, negative] = 1
    return hot


@dataclass
class FieldTruth:
    """One drawn field: its four 8-bit channels (red, green, blue, yellow), the true cells at the field's size
    (``labels``, ``1..N``) and their classes (``classes``, ``(N, K)`` multi-hot, Negative set where none)."""

    channels: list[np.ndarray]
    labels: np.ndarray
    classes: np.ndarray


# ------------------------------------------------------------------------------------------------ cells


@dataclass
class Window:
    """A square window of the field around one cell (it may reach past the field's edge: zeros there)."""

    y0: int
    x0: int
    side: int

    def take(self, plane: np.ndarray) -> np.ndarray:
        out = np.zeros((self.side, self.side), plane.dtype)
        ys, xs, ly, lx = self._overlap(plane.shape[0])
        out[ly, lx] = plane[ys, xs]
        return out

    def add(self, plane: np.ndarray, local: np.ndarray) -> None:
        ys, xs, ly, lx = self._overlap(plane.shape[0])
        plane[ys, xs] += local[ly, lx]

    def _overlap(self, size: int) -> tuple[slice, slice, slice, slice]:
        gy0, gx0 = max(self.y0, 0), max(self.x0, 0)
        gy1, gx1 = min(self.y0 + self.side, size), min(self.x0 + self.side, size)
        return (
            slice(gy0, gy1),
            slice(gx0, gx1),
            slice(gy0 - self.y0, gy1 - self.y0),
            slice(gx0 - self.x0, gx1 - self.x0),
        )


def _geometry(rng: np.random.Generator, side: int, family: Family) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell bodies (a label image ``1..n``), their nuclei (a label image) and the nuclei's centres.

    Cells are Voronoi regions around jittered seeds, each reaching a radius of its own (a wobbly edge); nuclei
    are irregular polygons (an ellipse with a bumpy radius, not hpa_like's 2018 ellipses) set off their seed by
    up to ``NUCLEUS_OFFSET`` of the cell spacing, so the boundary between two touching cells is not midway
    between their nuclei (a segmenter that assumes it is pays for it)."""
    n = int(rng.integers(family.cells[0], family.cells[1] + 1))
    spacing = side / np.sqrt(n) * 0.55
    centres: list[np.ndarray] = []
    for _ in range(n * 40):
        if len(centres) == n:
            break
        point = rng.uniform(0.03 * side, 0.97 * side, 2)
        if all(np.hypot(*(point - c)) > spacing for c in centres):
            centres.append(point)
    seeds = np.full((side, side), 255, np.uint8)
    for y, x in centres:
        seeds[int(y), int(x)] = 0
    distance, nearest = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    owner_of = np.zeros(int(nearest.max()) + 1, np.int32)
    for i, (y, x) in enumerate(centres):
        owner_of[nearest[int(y), int(x)]] = i + 1
    owner = owner_of[nearest]
    reach = np.concatenate([[0.0], spacing * rng.uniform(0.85, 1.25, len(centres))])
    wobble = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), side / 30)
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    bodies = np.where(distance < reach[owner] * (1 + 0.3 * wobble), owner, 0).astype(np.int32)
    nuclei = np.zeros((side, side), np.int32)
    middles = []
    for i, (y0, x0) in enumerate(centres):  # a nucleus sits off its cell's seed: boundaries are not midway
        turn = rng.uniform(0, 2 * np.pi)
        shift = spacing * rng.uniform(0.0, NUCLEUS_OFFSET)
        y, x = y0 + shift * np.sin(turn), x0 + shift * np.cos(turn)
        middles.append((y, x))
        a = spacing * rng.uniform(0.3, 0.42)
        b = a * rng.uniform(0.6, 0.95)
        turn = rng.uniform(0, np.pi)
        theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        bumps = 1 + sum(rng.normal(0, 0.06) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
        px, py = a * np.cos(theta) * bumps, b * np.sin(theta) * bumps
        polygon = np.stack([x + px * np.cos(turn) - py * np.sin(turn), y + px * np.sin(turn) + py * np.cos(turn)], 1)
        cv2.fillPoly(nuclei, [np.round(polygon).astype(np.int32)], i + 1)
    nuclei = np.where(nuclei == bodies, nuclei, 0)
    return bodies, nuclei, np.array(middles).reshape(-1, 2)


def _local_cells(
    bodies: np.ndarray, nuclei: np.ndarray, centres: np.ndarray
) -> tuple[list[Cell], list[Window], list[np.ndarray]]:
    """Each cell as hpa_like's :class:`Cell` in a square window of its own, with the window's label image."""
    from scipy import ndimage

    cells, windows, labels = [], [], []
    boxes = ndimage.find_objects(bodies)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        (y0, y1), (x0, x1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
        half = max(y1 - y0, x1 - x0) // 2 + 8
        window = Window(int((y0 + y1) // 2 - half), int((x0 + x1) // 2 - half), 2 * half)
        label = window.take(bodies)
        body = label == i + 1
        if body.sum() < 30:
            continue
        nucleus = window.take(nuclei) == i + 1
        cy, cx = centres[i]
        ys, xs = np.nonzero(nucleus) if nucleus.any() else np.nonzero(body)
        extent = float(max(np.ptp(ys), np.ptp(xs), 4)) / 2
        axes = (extent, extent * 0.8)
        radius = float(np.sqrt(body.sum() / np.pi)) * 1.2
        centre = np.array([cy - window.y0, cx - window.x0])
        cells.append(Cell(centre, axes, 0.0, body, nucleus, body & ~nucleus, radius))
        windows.append(window)
        labels.append(label)
    return cells, windows, labels


def _mitotic(cell: Cell, rng: np.random.Generator) -> None:
    """Make ``cell`` a rounded mitotic cell in place: a disc of a body, a condensed metaphase plate for a nucleus."""
    side = cell.body.shape[0]
    cy, cx = cell.centre
    disc = np.zeros((side, side), np.uint8)
    cv2.circle(disc, (int(cx), int(cy)), int(max(cell.axes[0] * 1.7, 4.0)), 1, -1)
    plate = np.zeros((side, side), np.uint8)
    angle = float(rng.uniform(0, 180))
    axes = (int(cell.axes[0] * 0.9), max(2, int(cell.axes[1] * 0.22)))
    cv2.ellipse(plate, (int(cx), int(cy)), axes, angle, 0, 360, 1, -1)
    cell.body &= disc.astype(bool)
    cell.nucleus = plate.astype(bool) & cell.body
    cell.cytoplasm = cell.body & ~cell.nucleus
    cell.angle = angle


def _spindle(canvas: np.ndarray, cell: Cell, value: float, width: int) -> None:
    """Spindle fibres from two poles, across the plate, in a mitotic cell."""
    cy, cx = cell.centre
    normal = np.deg2rad(cell.angle + 90)
    reach = cell.axes[0] * 1.2
    poles = [(cx + s * reach * np.cos(normal), cy + s * reach * np.sin(normal)) for s in (1, -1)]
    along = np.deg2rad(cell.angle)
    for k in np.linspace(-0.8, 0.8, 7):
        mid = (cx + k * cell.axes[0] * np.cos(along), cy + k * cell.axes[0] * np.sin(along))
        for pole in poles:
            cv2.line(canvas, (int(pole[0]), int(pole[1])), (int(mid[0]), int(mid[1])), value, width)
    for pole in poles:
        cv2.circle(canvas, (int(pole[0]), int(pole[1])), width + 1, value * 1.3, -1)


def _cell_states(
    field: np.ndarray, n_cells: int, mitotic: set[int], rng: np.random.Generator, family: Family
) -> list[list[int]]:
    """The classes switched on in each cell (before visibility), so that every field class is on somewhere."""
    names = scheme().names
    negative = scheme().exclusive[0]
    spindle = names.index(SPINDLE)
    nuclear = {names.index(n) for n in NUCLEAR}
    wanted = [int(k) for k in np.flatnonzero(field) if k != negative]
    states: list[list[int]] = [[] for _ in range(n_cells)]
    if not wanted:
        return states
    silent_share = float(np.clip(rng.normal(1 - family.expressing, 0.1), 0.0, 0.6))
    patterns = [k for k in wanted if k != spindle]
    for i in range(n_cells):
        if i in mitotic:
            states[i] = [k for k in patterns if k not in nuclear and rng.random() < CLASS_ON]
            if spindle in wanted:
                states[i].append(spindle)
            continue
        if rng.random() < silent_share or not patterns:
            continue
        on = [k for k in patterns if len(patterns) == 1 or rng.random() < CLASS_ON]
        states[i] = on or [patterns[int(rng.integers(len(patterns)))]]
    interphase = [i for i in range(n_cells) if i not in mitotic]
    for k in patterns:  # every field class is on in at least one cell that can show it
        if not any(k in s for s in states):
            able = interphase if k in nuclear else list(range(n_cells))
            if able:
                states[able[int(rng.integers(len(able)))]].append(k)
    return states


def render_cells(field: np.ndarray, rng: np.random.Generator, family: Family, size: int) -> FieldTruth:
    """Draw one field whose label set is ``field`` (``(K,)`` multi-hot, 2021 scheme), cell by cell."""
    side = 2 * size
    scale = side / 256
    names = scheme().names
    spindle = names.index(SPINDLE)
    bodies, nuclei, centres = _geometry(rng, side, family)
    cells, windows, local_labels = _local_cells(bodies, nuclei, centres)
    n_mitotic = int(rng.integers(1, 3)) if field[spindle] else int(rng.random() < MITOTIC_WITHOUT_SPINDLE)
    inner = [i for i, w in enumerate(windows) if not _touches_border(w, side)] or list(range(len(cells)))
    mitotic = {int(i) for i in rng.permutation(inner)[:n_mitotic]}
    label = np.zeros((side, side), np.int32)
    for i, (cell, window) in enumerate(zip(cells, windows, strict=True)):
        if i in mitotic:
            _mitotic(cell, rng)
        window.add(label, (cell.body * (i + 1)).astype(np.int32))
    states = _cell_states(field, len(cells), mitotic, rng, family)
    renderings = {k: rng.choice(r) for k, r in ((names.index(n), r) for n, r in RENDERINGS.items()) if r}
    green = np.zeros((side, side), np.float32)
    signal = np.zeros((len(cells), len(names)))
    for i, (cell, window, local) in enumerate(zip(cells, windows, local_labels, strict=True)):
        level = float(rng.lognormal(0.0, 0.35))
        for k in states[i]:
            canvas = np.zeros(cell.body.shape, np.float32)
            if k == spindle:
                _spindle(canvas, cell, 0.9, family.thick)
            else:
                hpa_like.draw_in_cell(int(renderings[k]), canvas, cell, local, rng, family, scale)
            canvas *= cell.body
            canvas *= level
            signal[i, k] = float(canvas.sum())
            window.add(green, canvas)
    channels = _landmarks_and_noise(green, cells, windows, mitotic, rng, family, size)
    labels, keep = _truth_labels(label, size, len(cells))
    classes = (signal[keep] >= MIN_SIGNAL).astype(np.uint8)
    classes[classes.sum(axis=1) == 0, scheme().exclusive[0]] = 1
    return FieldTruth(channels, labels, classes)


def _touches_border(window: Window, side: int) -> bool:
    return window.y0 < 0 or window.x0 < 0 or window.y0 + window.side > side or window.x0 + window.side > side


def _truth_labels(label: np.ndarray, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells at the field's size (each output pixel takes the drawn cell under its centre), fragments
    dropped, renumbered ``1..M`` in drawing order; and the drawn indices kept."""
    step = label.shape[0] // size
    small = label[step // 2 :: step, step // 2 :: step][:size, :size]
    areas = np.bincount(small.ravel(), minlength=n + 1)[1:]
    present = areas > 0
    if not present.any():
        return np.zeros((size, size), np.int32), np.zeros(0, np.int64)
    median = float(np.median(areas[present]))
    keep = np.flatnonzero(present & (areas >= MIN_AREA_FRACTION * median))
    lookup = np.zeros(n + 1, np.int32)
    lookup[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lookup[small], keep


def _landmarks_and_noise(
    green: np.ndarray,
    cells: list[Cell],
    windows: list[Window],
    mitotic: set[int],
    rng: np.random.Generator,
    family: Family,
    size: int,
) -> list[np.ndarray]:
    """Red microtubules, blue nuclei, yellow ER for every cell; then blur, shrink, offset, noise, 8 bits."""
    side = green.shape[0]
    blue = np.zeros_like(green)
    red = np.zeros_like(green)
    yellow = np.zeros_like(green)
    grain = hpa_like._mesh(rng, side)
    er = hpa_like._mesh(rng, side)
    for i, (cell, window) in enumerate(zip(cells, windows, strict=True)):
        bright = 1.5 if i in mitotic else 1.0
        w = window.side
        yy, xx = np.mgrid[0:w, 0:w].astype(np.float32)
        near = np.exp(-np.hypot(yy - cell.centre[0], xx - cell.centre[1]) / (cell.radius * 0.8))
        nucleus = cell.nucleus * bright * (0.55 + 0.35 * window.take(grain))
        fibres = np.zeros((w, w), np.float32)
        hpa_like._radial(fibres, cell, rng, 10, 0.3 * bright, 1)
        # microtubules and ER lie over the nucleus too (dimmer there), as in a widefield or confocal projection
        over = np.where(cell.nucleus, 0.7, 1.0) * cell.body
        window.add(blue, nucleus.astype(np.float32))
        window.add(red, ((fibres + 0.2 * bright) * over).astype(np.float32))
        window.add(yellow, ((0.25 + 0.55 * window.take(er) * near) * over).astype(np.float32))
    protein_gain = family.gain * rng.uniform(0.6, 1.4)
    landmark_gain = max(family.gain, LANDMARK_GAIN) * rng.uniform(0.7, 1.3)  # stains other than the protein's
    out = []
    for channel, level, gain, background in (
        (red, 140, landmark_gain, family.background / 2),
        (green, 210, protein_gain, family.background),
        (blue, 180, landmark_gain, family.background / 2),
        (yellow, 130, landmark_gain, family.background / 2),
    ):
        image = cv2.GaussianBlur(np.clip(channel, 0, 1.5), (0, 0), family.blur) * level * gain
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) + background
        image = rng.poisson(np.maximum(image, 0) / 2.0) * 2.0 + rng.normal(0, family.noise, image.shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


# ------------------------------------------------------------------------------------------------ writing


def _write_field(job: tuple[str, str, str, list[int], int, str, int]) -> tuple[str, str, dict, np.ndarray]:
    """Draw and write one field's four channels and its true label image; return its per-cell table rows and
    its field labels (the union of its cells' classes)."""
    from protloc.cells.masks import labels_path, write_labels
    from protloc.cells.table import field_table

    root, split, sample_id, field, seed, family, size = job
    rng = np.random.default_rng(seed)
    hot = np.zeros(len(scheme()), np.uint8)
    hot[field] = 1
    drawn = render_cells(hot, rng, hpa_like.FAMILIES[family], size)
    for colour, image in zip(hpa_like.COLOURS, drawn.channels, strict=True):
        cv2.imwrite(f"{root}/{split}/{sample_id}_{colour}.png", image)
    write_labels(labels_path(f"{root}/{split}_cells_truth", sample_id), drawn.labels)
    return split, sample_id, field_table(sample_id, drawn.labels, predicted=drawn.classes), field_labels(drawn.classes)


def field_labels(classes: np.ndarray) -> np.ndarray:
    """A field's labels from its cells': the union, Negative only when no cell shows anything else."""
    negative = scheme().exclusive[0]
    union = classes.max(axis=0) if len(classes) else np.zeros(len(scheme()), np.uint8)
    union = union.astype(np.uint8)
    union[negative] = 0
    if not union.any():
        union[negative] = 1
    return union


def make(out: Path, family: str, n_train: int, n_test: int, size: int = 256, seed: int = 0, workers: int = 2) -> None:
    """Write a data set of ``family`` into ``out`` (replaced if it exists) in the Kaggle 2021 layout, with per-cell
    truth (``<split>_cells_truth/``)."""
    hpa_like.check_family(family)
    rng = np.random.default_rng([seed, 21, 1 if family == "sparse" else 2])
    with hpa_like.replacing(out) as tmp:
        write(tmp, family, n_train, n_test, size, rng, workers)


def main() -> None:
    hpa_like.command_line(make, __doc__, family="dense", n_train=1200, n_test=100, size=256)


def write(tmp: Path, family: str, n_train: int, n_test: int, size: int, rng: np.random.Generator, workers: int) -> None:
    """Write the 2021 layout into the folder ``tmp`` (see :func:`make`)."""
    import csv
    import multiprocessing

    from protloc.cells.table import concat_tables, write_table

    jobs = []
    for split, n in (("train", n_train), ("test", n_test)):
        (tmp / split).mkdir(parents=True)
        (tmp / f"{split}_cells_truth").mkdir()
        hot = label_sets(n, rng, minimum=0 if split == "train" else TEST_MINIMUM)
        for i in range(n):
            field = [int(k) for k in np.flatnonzero(hot[i])]
            jobs.append((str(tmp), split, f"{family}21-{split}-{i:05d}", field, int(rng.integers(2**31)), family, size))
    if workers <= 1:
        results = [_write_field(job) for job in jobs]
    else:
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            results = list(pool.imap(_write_field, jobs, chunksize=8))
    for split in ("train", "test"):
        mine = [r for r in results if r[0] == split]
        rows = [(sample_id, scheme().format(labels, "|")) for _, sample_id, _, labels in mine]
        for name, header, body in (
            ("train.csv" if split == "train" else "test_truth.csv", ["ID", "Label"], rows),
            *(
                [
                    (
                        "sample_submission.csv",
                        ["ID", "ImageWidth", "ImageHeight", "PredictionString"],
                        [(i, size, size, "") for i, _ in rows],
                    )
                ]
                if split == "test"
                else []
            ),
        ):
            with open(tmp / name, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(body)
        write_table(tmp / f"{split}_cells_truth" / "cells.csv", concat_tables([r[2] for r in mine]))


if __name__ == "__main__":
    main()
