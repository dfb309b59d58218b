"""The field of cells: cell placement, shapes and the landmark channels (red microtubules, blue nuclei, yellow ER)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from protloc.synth.drawing import _F32, _REF, _blur, _canvas_polylines, _dots, _lut, _ridges, _smooth_noise, _to_fixed

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


@dataclass
class _Layout:
    """The cells of a field before drawing, in reference (512 px) units: centres, nucleus radii and axes, outline
    wobble, cytoplasm extent, kind (interphase, mitotic, daughter; -1 = removed), partner of a daughter."""

    cx: np.ndarray
    cy: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    axis: np.ndarray
    wobble: np.ndarray
    ext: np.ndarray
    kind: np.ndarray
    partner: np.ndarray
    visible: np.ndarray

    def keep(self, keep: np.ndarray) -> None:
        """Drop the cells not in ``keep`` (partners renumbered)."""
        remap = np.cumsum(keep) - 1
        partner = np.where(self.partner >= 0, remap[np.maximum(self.partner, 0)], -1)
        for name in ("cx", "cy", "ra", "rb", "axis", "wobble", "ext", "kind", "visible"):
            setattr(self, name, getattr(self, name)[keep])
        self.partner = partner[keep]


def _make_field(size: int, rng: np.random.Generator, n_mitotic_min: int, n_pairs_min: int) -> _Field:
    """Lay out the cells and compute the landmark maps (every draw from ``rng`` in a fixed order)."""
    rn = rng.uniform(19.0, 34.0)  # cell line: nucleus size
    n_target = round(math.exp(rng.uniform(math.log(6), math.log(60))))  # field density (dense fields are common)
    cells = _place_cells(rng, rn, n_target)
    _divide(cells, rng, rn, n_mitotic_min, n_pairs_min)
    if not (cells.kind >= 0).all():
        cells.keep(cells.kind >= 0)
    return _field_of(cells, size, rng)


def _place_cells(rng: np.random.Generator, rn: float, n_target: int) -> _Layout:
    """Interphase cells at spaced centres, with nuclei of the cell line's size."""
    spacing = max(2.35 * rn, math.sqrt(_REF * _REF / n_target) * rng.uniform(0.7, 0.9))
    margin = 0.3 * spacing
    centres = _place_centres(rng, n_target, spacing, -margin, _REF + margin)
    n = len(centres)
    cx, cy = centres[:, 0].copy(), centres[:, 1].copy()
    r = rn * np.exp(rng.normal(0, 0.13, n))
    r = np.minimum(r, 0.42 * spacing)
    elong = rng.uniform(1.0, 1.45, n)
    axis = rng.uniform(0, np.pi, n)
    wobble = np.stack(
        [
            np.stack([rng.uniform(0, 0.06, n), rng.uniform(0, 2 * np.pi, n)], -1),
            np.stack([rng.uniform(0, 0.04, n), rng.uniform(0, 2 * np.pi, n)], -1),
        ],
        1,
    )
    ext = rn * rng.uniform(0.8, 2.4, n) * (1.0 + 0.6 * (n_target < 10))
    visible = (cx > 0.12 * _REF) & (cx < 0.88 * _REF) & (cy > 0.12 * _REF) & (cy < 0.88 * _REF)
    return _Layout(
        cx=cx,
        cy=cy,
        ra=r * np.sqrt(elong),
        rb=r / np.sqrt(elong),
        axis=axis,
        wobble=wobble,
        ext=ext,
        kind=np.zeros(n, dtype=np.int64),
        partner=np.full(n, -1, dtype=np.int64),
        visible=visible,
    )


def _divide(cells: _Layout, rng: np.random.Generator, rn: float, n_mitotic_min: int, n_pairs_min: int) -> None:
    """Mitotic cells and dividing pairs occur in any field; labels 16/17 guarantee at least one. A pair's
    daughters are appended; interphase neighbours in their way are marked removed (kind -1)."""
    n = len(cells.cx)
    visible = cells.visible
    pool = list(rng.permutation(np.flatnonzero(visible))) if visible.any() else list(rng.permutation(n))
    n_mitotic = max(n_mitotic_min, int(rng.random() < 0.25))
    n_pairs = max(n_pairs_min, int(rng.random() < 0.2))
    for _ in range(n_mitotic):
        if not pool:
            break
        k = pool.pop()
        cells.kind[k] = _MITOTIC
        cells.ra[k] = cells.rb[k] = rn * rng.uniform(0.85, 1.0)
        cells.ext[k] = rn * rng.uniform(0.35, 0.6)
        cells.wobble[k, :, 0] = 0.0
    new_rows: list[tuple[float, float, float, int]] = []  # x, y, radius, partner
    for _ in range(n_pairs):
        if not pool:
            break
        k = pool.pop()
        new_rows.append(_split_cell(cells, k, rng, rn))
        pool = [j for j in pool if cells.kind[j] == _INTERPHASE]
    if new_rows:
        _append_daughters(cells, new_rows)


def _split_cell(cells: _Layout, k: int, rng: np.random.Generator, rn: float) -> tuple[float, float, float, int]:
    """Turn cell ``k`` into the first of two daughters; return the second's (x, y, radius, partner)."""
    rd = rn * rng.uniform(0.55, 0.7)
    de = rn * rng.uniform(0.45, 0.7)
    half = rd + 0.92 * de
    ang = rng.uniform(0, np.pi)
    dx, dy = half * math.cos(ang), half * math.sin(ang)
    x0, y0 = cells.cx[k], cells.cy[k]
    cells.cx[k], cells.cy[k] = x0 - dx, y0 - dy
    cells.ra[k] = cells.rb[k] = rd
    cells.ext[k] = de
    cells.kind[k] = _DAUGHTER
    cells.axis[k] = ang
    # neighbours whose nuclei would overlap the daughters make room
    for j in range(len(cells.cx)):
        if j == k or cells.kind[j] != _INTERPHASE:
            continue
        if math.hypot(cells.cx[j] - x0, cells.cy[j] - y0) < half + rd + max(cells.ra[j], cells.rb[j]) + 2:
            cells.kind[j] = -1  # removed below
    return (x0 + dx, y0 + dy, rd, k)


def _append_daughters(cells: _Layout, new_rows: list[tuple[float, float, float, int]]) -> None:
    n, extra = len(cells.cx), len(new_rows)
    cells.cx = np.concatenate([cells.cx, [row[0] for row in new_rows]])
    cells.cy = np.concatenate([cells.cy, [row[1] for row in new_rows]])
    cells.ra = np.concatenate([cells.ra, [row[2] for row in new_rows]])
    cells.rb = np.concatenate([cells.rb, [row[2] for row in new_rows]])
    cells.axis = np.concatenate([cells.axis, [cells.axis[row[3]] + np.pi for row in new_rows]])
    cells.wobble = np.concatenate([cells.wobble, np.zeros((extra, 2, 2))])
    cells.ext = np.concatenate([cells.ext, [cells.ext[row[3]] for row in new_rows]])
    cells.kind = np.concatenate([cells.kind, np.full(extra, _DAUGHTER)])
    cells.partner = np.concatenate([cells.partner, [row[3] for row in new_rows]])
    for i, row in enumerate(new_rows):
        cells.partner[row[3]] = n + i
    cells.visible = np.concatenate([cells.visible, np.ones(extra, dtype=bool)])


def _field_of(cells: _Layout, size: int, rng: np.random.Generator) -> _Field:
    """The layout scaled to ``size`` px, with centrosomes placed and the maps computed."""
    u = size / _REF
    n = len(cells.cx)
    mtoc_angle = rng.uniform(0, 2 * np.pi, n)
    gaps = np.hypot(cells.cx[:, None] - cells.cx[None, :], cells.cy[:, None] - cells.cy[None, :])
    gaps = gaps + np.diag(np.full(n, np.inf))
    reach = np.minimum(np.maximum(cells.ra, cells.rb) + 1.6 * cells.ext, 0.85 * gaps.min(axis=1, initial=np.inf))
    f = _Field(
        size=size,
        u=u,
        cx=cells.cx * u,
        cy=cells.cy * u,
        kind=cells.kind,
        axis=cells.axis,
        ra=cells.ra * u,
        rb=cells.rb * u,
        wobble=cells.wobble,
        ext=cells.ext * u,
        mtoc=np.zeros((n, 2)),
        mtoc_angle=mtoc_angle,
        partner=cells.partner,
        visible=cells.visible,
        reach=reach * u,
    )
    gap = f.nucleus_radius(np.arange(n), mtoc_angle) + f.px(1.0) + f.u * rng.uniform(1.0, 4.0, n)
    f.mtoc = np.stack([f.cx + gap * np.cos(mtoc_angle), f.cy + gap * np.sin(mtoc_angle)], -1)
    _compute_maps(f, rng)
    return f


def _compute_maps(f: _Field, rng: np.random.Generator) -> None:
    """The field's maps, drawn from ``rng`` in a fixed order (the same seed gives the same field): nuclei and cell
    territories, the cytoplasm's thickness, the nuclear envelope and the nucleoli."""
    _cells_and_nuclei(f, rng)
    _cytoplasm(f, rng)
    _nuclear_envelope(f)
    _nucleoli(f, rng)


def _cells_and_nuclei(f: _Field, rng: np.random.Generator) -> None:
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


def _cytoplasm(f: _Field, rng: np.random.Generator) -> None:
    cell, nuc, size = f.cell, f.nuc, f.size
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


def _nuclear_envelope(f: _Field) -> None:
    nuc, size = f.nuc, f.size
    nucmask = (nuc > 0).astype(np.uint8)
    d_in = cv2.distanceTransform(nucmask, cv2.DIST_L2, 3)
    d_out = np.minimum(cv2.distanceTransform(1 - nucmask, cv2.DIST_L2, 3), _F32(size))
    f.nuc_soft = np.clip(d_in * _F32(1.0 / max(f.px(2.5), 0.7)), 0, 1).astype(_F32)
    f.nuc_ring = np.exp(-(((d_in + d_out) * _F32(1.0 / max(f.px(1.6), 0.45))) ** 2)).astype(_F32)


def _nucleoli(f: _Field, rng: np.random.Generator) -> None:
    nuc, size = f.nuc, f.size
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
