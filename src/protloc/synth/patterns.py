"""The green channel: one pattern per class, as a table indexed by class id, with its brightness scale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protloc.synth.drawing import _F32, _blur, _canvas_circles, _canvas_polylines, _dots, _lut, _ridges
from protloc.synth.field import _DAUGHTER, _INTERPHASE, _MITOTIC, _Field

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


@dataclass(frozen=True)
class PatternRow:
    """How the green channel draws one class: the class it stands for, the drawing, and its brightness scale."""

    name: str
    draw: _Pattern
    scale: float


# Brings the brightest structures of each class's pattern to about 1 (the 99th percentile of the pattern's
# bright pixels, median over 512 px single-label fields), so the classes differ in where they draw, not in how
# bright they are. Calibrated with `python benchmarks/bench_synth.py --calibrate`.
PATTERNS: tuple[PatternRow, ...] = (
    PatternRow("Nucleoplasm", _p_nucleoplasm, 0.62),
    PatternRow("Nuclear membrane", _p_nuclear_membrane, 1.09),
    PatternRow("Nucleoli", _p_nucleoli, 0.62),
    PatternRow("Nucleoli fibrillar center", _p_fibrillar_center, 0.53),
    PatternRow("Nuclear speckles", _p_speckles, 0.54),
    PatternRow("Nuclear bodies", _p_nuclear_bodies, 0.9),
    PatternRow("Endoplasmic reticulum", _p_er, 1.23),
    PatternRow("Golgi apparatus", _p_golgi, 0.42),
    PatternRow("Peroxisomes", _p_peroxisomes, 1.31),
    PatternRow("Endosomes", _p_endosomes, 0.99),
    PatternRow("Lysosomes", _p_lysosomes, 1.13),
    PatternRow("Intermediate filaments", _p_intermediate_filaments, 1.32),
    PatternRow("Actin filaments", _p_actin, 1.66),
    PatternRow("Focal adhesion sites", _p_focal_adhesions, 0.79),
    PatternRow("Microtubules", _p_microtubules, 1.21),
    PatternRow("Microtubule ends", _p_microtubule_ends, 0.9),
    PatternRow("Cytokinetic bridge", _p_cytokinetic_bridge, 0.59),
    PatternRow("Mitotic spindle", _p_mitotic_spindle, 0.67),
    PatternRow("Microtubule organizing center", _p_mtoc, 0.59),
    PatternRow("Centrosome", _p_centrosome, 0.8),
    PatternRow("Lipid droplets", _p_lipid_droplets, 1.48),
    PatternRow("Plasma membrane", _p_plasma_membrane, 0.9),
    PatternRow("Cell junctions", _p_cell_junctions, 0.85),
    PatternRow("Mitochondria", _p_mitochondria, 1.29),
    PatternRow("Aggresome", _p_aggresome, 0.41),
    PatternRow("Cytosol", _p_cytosol, 0.96),
    PatternRow("Cytoplasmic bodies", _p_cytoplasmic_bodies, 0.87),
    PatternRow("Rods & rings", _p_rods_rings, 0.75),
)
"""The 28 patterns, indexed by class id (row ``i`` draws class ``i``; a test checks the names)."""

_PATTERNS: tuple[_Pattern, ...] = tuple(row.draw for row in PATTERNS)
_CLASS_SCALE: tuple[float, ...] = tuple(row.scale for row in PATTERNS)


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
