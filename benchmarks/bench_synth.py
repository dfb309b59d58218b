"""Benchmark and check the synthetic data generator (protloc.synth).

Measures, on this machine:

* **pixel statistics** of synthetic 512 px fields (labels drawn with the real frequencies) against the real
  Kaggle HPA 2018 statistics in ``real_channel_stats.json``;
* **speed**: samples written per second by :func:`protloc.synth.make_dataset` at 512 and 128 px, one worker
  process (per core) and all cores, median of several runs;
* **brightness leak**: how well the class of a single-label image can be guessed from its mean green
  brightness alone (nearest class centroid of log mean), against a guess from a few spatial features;

and renders the figures of ``docs/synthetic-data.md``. Usage::

    python benchmarks/bench_synth.py                       # everything; prints Markdown + JSON
    python benchmarks/bench_synth.py --write-docs          # also refresh the tables in docs/synthetic-data.md
    python benchmarks/bench_synth.py --figures-only        # only docs/images/synth_*.png
    python benchmarks/bench_synth.py --calibrate           # per-class scales for synth/patterns.py

The real statistics file is reference data outside the project (``../shared/hpa``); pass another path with
``--real``. Without it, the comparison lists the constants embedded in ``protloc.synth``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save
from protloc.classes import HPA2018
from protloc.data.io import CHANNELS
from protloc.synth import REAL_CHANNEL_STATS, generate_sample, make_dataset, sample_label_sets

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "synthetic-data.md"
IMAGES = ROOT / "docs" / "images"
PERCENTILES = ("50", "75", "95", "99", "99.9")
IMAGE_MEAN_PERCENTILES = ("5", "25", "50", "75", "95")


# ---------------------------------------------------------------------------------------------------- statistics


def synthetic_stats(n: int, size: int = 512, seed: int = 0) -> dict[str, dict[str, object]]:
    """Pooled pixel statistics of ``n`` synthetic fields, in the layout of real_channel_stats.json."""
    labels = sample_label_sets(n, np.random.default_rng(seed))
    hist = {c: np.zeros(256, dtype=np.int64) for c in CHANNELS}
    means: dict[str, list[float]] = {c: [] for c in CHANNELS}
    for i in range(n):
        planes = generate_sample(labels[i], size, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))))
        for channel, plane in planes.items():
            hist[channel] += np.bincount(plane.ravel(), minlength=256)
            means[channel].append(float(plane.mean()))
    out: dict[str, dict[str, object]] = {}
    values = np.arange(256)
    for channel in CHANNELS:
        h = hist[channel]
        total = h.sum()
        mean = float((h * values).sum() / total)
        cdf = np.cumsum(h) / total
        out[channel] = {
            "n_images": n,
            "pixel_mean": round(mean, 2),
            "pixel_std": round(float(np.sqrt((h * (values - mean) ** 2).sum() / total)), 2),
            "pixel_percentiles": {q: float(np.searchsorted(cdf, float(q) / 100)) for q in PERCENTILES},
            "fraction_zero": round(float(h[0] / total), 4),
            "fraction_255": round(float(h[255] / total), 5),
            "per_image_mean_percentiles": {
                q: round(float(np.percentile(means[channel], float(q))), 2) for q in IMAGE_MEAN_PERCENTILES
            },
        }
    return out


def real_stats(path: Path | None) -> tuple[dict[str, dict[str, object]], str]:
    if path is not None and path.is_file():
        shown = os.path.relpath(path.resolve(), ROOT) if path.resolve().is_relative_to(ROOT.parent) else str(path)
        return json.loads(path.read_text()), shown
    # Fall back to the constants embedded in protloc.synth (a subset of the file).
    fallback: dict[str, dict[str, object]] = {}
    for channel, row in REAL_CHANNEL_STATS.items():
        fallback[channel] = {
            "pixel_mean": row["mean"],
            "fraction_zero": row["fraction_zero"],
            "pixel_percentiles": {"75": row["p75"], "95": row["p95"], "99": row["p99"]},
            "per_image_mean_percentiles": {"50": row["image_mean_p50"]},
        }
    return fallback, "protloc.synth.REAL_CHANNEL_STATS"


def _get(stats: dict[str, object], *keys: str) -> float | None:
    value: object = stats
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def stats_table(synthetic: dict[str, dict[str, object]], real: dict[str, dict[str, object]]) -> str:
    """Markdown: one row per statistic, real | synthetic for each channel."""
    rows: list[tuple[str, tuple[str, ...], str]] = [
        ("fraction of pixels = 0", ("fraction_zero",), "{:.3f}"),
        ("fraction of pixels = 255", ("fraction_255",), "{:.4f}"),
        ("pixel mean", ("pixel_mean",), "{:.1f}"),
        ("pixel std", ("pixel_std",), "{:.1f}"),
    ]
    rows += [(f"pixel {q}th percentile", ("pixel_percentiles", q), "{:.0f}") for q in PERCENTILES]
    rows += [
        (f"per-image mean, {q}th percentile", ("per_image_mean_percentiles", q), "{:.1f}")
        for q in IMAGE_MEAN_PERCENTILES
    ]
    header = "| statistic | " + " | ".join(f"{c} real | {c} synth" for c in CHANNELS) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(CHANNELS))]
    for name, keys, fmt in rows:
        cells = []
        for channel in CHANNELS:
            for source in (real, synthetic):
                value = _get(source.get(channel, {}), *keys)
                cells.append("" if value is None else fmt.format(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- speed


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_generation(size: int, n: int, repeats: int) -> dict[str, object]:
    """Samples per second of generate_sample alone (in memory, one process), median over ``repeats`` runs.

    Also samples per CPU-second, which other load on a shared machine does not change much.
    """
    labels = sample_label_sets(n, np.random.default_rng(0))
    rates, cpu_rates = [], []
    for r in range(repeats):
        started, cpu = time.perf_counter(), _cpu_seconds()
        for i in range(n):
            generate_sample(labels[i], size, np.random.default_rng([r, i]))
        rates.append(n / (time.perf_counter() - started))
        cpu_rates.append(n / (_cpu_seconds() - cpu))
    return {
        "size": size,
        "samples": n,
        "repeats": repeats,
        "samples_per_second": round(statistics.median(rates), 1),
        "samples_per_cpu_second": round(statistics.median(cpu_rates), 1),
    }


def measure_speed(size: int, n: int, workers: int, repeats: int, tmp_root: Path | None = None) -> dict[str, object]:
    """Samples per second of make_dataset (PNG, 8-bit, train split only), median over ``repeats`` runs."""
    rates, cpu_rates = [], []
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        for r in range(repeats):
            out = Path(tmp) / f"run{r}"
            started, cpu = time.perf_counter(), _cpu_seconds()
            make_dataset(out, n_train=n, size=size, seed=r, workers=workers)
            rates.append(n / (time.perf_counter() - started))
            cpu_rates.append(n / (_cpu_seconds() - cpu))
    return {
        "size": size,
        "samples": n,
        "workers": workers,
        "repeats": repeats,
        "samples_per_second": round(statistics.median(rates), 1),
        "per_core": round(statistics.median(rates) / workers, 1),
        # forkserver workers are not our children, so their CPU time is only known in one process
        "samples_per_cpu_second": round(statistics.median(cpu_rates), 1) if workers == 1 else None,
        "runs": [round(x, 1) for x in rates],
    }


# ---------------------------------------------------------------------------------------------------- leak check


def _features(planes: dict[str, np.ndarray]) -> np.ndarray:
    """A few spatial features of the green channel relative to the landmarks (for the leak check)."""
    green = planes["green"].astype(np.float64)
    total = green.sum() + 1e-9
    nucleus = planes["blue"] > 30
    red = planes["red"].astype(np.float64)
    yellow = planes["yellow"].astype(np.float64)
    top = green > np.percentile(green, 99)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-9))

    return np.array(
        [
            green[nucleus].sum() / total,
            corr(green, red),
            corr(green, yellow),
            float((green > 0).mean()),
            green[top].sum() / total,
            float(np.log1p(green.std()) - np.log1p(green.mean())),
        ]
    )


def leak_check(per_class: int = 12, size: int = 128, seed: int = 7) -> dict[str, float]:
    """Nearest-centroid accuracy of guessing a single-label image's class (half fit, half held out)."""
    mean_green = np.zeros((HPA2018.num_classes, per_class))
    feats = np.zeros((HPA2018.num_classes, per_class, 6))
    for c in range(HPA2018.num_classes):
        labels = np.zeros(HPA2018.num_classes, dtype=np.uint8)
        labels[c] = 1
        for i in range(per_class):
            planes = generate_sample(labels, size, np.random.default_rng([seed, c, i]))
            mean_green[c, i] = np.log(planes["green"].mean() + 0.1)
            feats[c, i] = _features(planes)
    half = per_class // 2

    def accuracy(x: np.ndarray) -> float:
        x = x.reshape(HPA2018.num_classes, per_class, -1)
        scale = x[:, :half].reshape(-1, x.shape[-1]).std(axis=0) + 1e-9
        centroids = x[:, :half].mean(axis=1) / scale
        held = x[:, half:] / scale
        d = ((held[:, :, None, :] - centroids[None, None, :, :]) ** 2).sum(-1)
        return float((d.argmin(-1) == np.arange(HPA2018.num_classes)[:, None]).mean())

    return {
        "chance": round(1 / HPA2018.num_classes, 3),
        "from_mean_green": round(accuracy(mean_green), 3),
        "from_spatial_features": round(accuracy(feats), 3),
        "images_per_class": per_class,
        "size": size,
    }


# ---------------------------------------------------------------------------------------------------- figures


def _stretch(plane: np.ndarray, q: float = 99.9) -> np.ndarray:
    hi = max(float(np.percentile(plane, q)), 1.0)
    return np.clip(plane.astype(np.float64) * (255.0 / hi), 0, 255).astype(np.uint8)


def composite(planes: dict[str, np.ndarray]) -> np.ndarray:
    """RGB view: red = microtubules (+ half the ER), green = protein, blue = nucleus (as HPA shows them)."""
    red = planes["red"].astype(np.float64) * 0.8 + planes["yellow"].astype(np.float64) * 0.4
    green = _stretch(planes["green"]).astype(np.float64)
    blue = planes["blue"].astype(np.float64)
    return np.clip(np.stack([red, green, blue], -1), 0, 255).astype(np.uint8)


def render_figures(out_dir: Path, size: int = 512) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    # One single-label field per class: green (contrast-stretched) and a composite.
    cols = 4
    rows = HPA2018.num_classes // cols
    fig, axes = plt.subplots(rows, cols * 2, figsize=(cols * 2 * 2.6, rows * 2.85))
    for c in range(HPA2018.num_classes):
        labels = np.zeros(HPA2018.num_classes, dtype=np.uint8)
        labels[c] = 1
        planes = generate_sample(labels, size, np.random.default_rng([2018, c]))
        ax_green, ax_rgb = axes[c // cols, (c % cols) * 2], axes[c // cols, (c % cols) * 2 + 1]
        ax_green.imshow(_stretch(planes["green"]), cmap="gray", vmin=0, vmax=255)
        ax_green.set_title(f"{c} {HPA2018.names[c]}", fontsize=8, loc="left")
        ax_rgb.imshow(composite(planes))
        ax_rgb.set_title("composite", fontsize=7, color="0.4", loc="left")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"protloc synth: one single-label {size} px field per class (left: green, contrast-stretched; "
        "right: red+yellow/2, green, blue)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path = out_dir / "synth_classes.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    written.append(path)

    # The four channels of one multi-label field.
    labels = np.zeros(HPA2018.num_classes, dtype=np.uint8)
    labels[[0, 25]] = 1
    for attempt in range(100, 200):  # the first reasonably dense field that is not saturated
        planes = generate_sample(labels, size, np.random.default_rng([2018, attempt]))
        if (planes["blue"] > 0).mean() > 0.2 and np.percentile(planes["green"], 99.5) < 250:
            break
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
    titles = {
        "red": "red: microtubules",
        "green": "green: protein (0 Nucleoplasm + 25 Cytosol)",
        "blue": "blue: nucleus",
        "yellow": "yellow: endoplasmic reticulum",
    }
    for ax, channel in zip(axes, CHANNELS, strict=False):
        ax.imshow(planes[channel], cmap="gray", vmin=0, vmax=255)
        ax.set_title(titles[channel], fontsize=9)
    axes[4].imshow(composite(planes))
    axes[4].set_title("composite", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = out_dir / "synth_channels.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)

    # The same seed at three sizes: small images look like downscaled large ones.
    labels = np.zeros(HPA2018.num_classes, dtype=np.uint8)
    labels[[4, 14]] = 1
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    for ax, side in zip(axes, (512, 128, 64), strict=True):
        planes = generate_sample(labels, side, np.random.default_rng([2018, 200]))
        ax.imshow(composite(planes), interpolation="nearest")
        ax.set_title(f"{side} px, same seed", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = out_dir / "synth_sizes.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------- calibration


def calibrate(per_class: int = 24, size: int = 512) -> list[float]:
    """Per-class scale bringing each pattern's bright structures to ~1 (see protloc.synth.patterns._CLASS_SCALE)."""
    from protloc.synth.drawing import _blur
    from protloc.synth.field import _draw_red, _draw_yellow, _make_field
    from protloc.synth.patterns import _PATTERNS, _expression

    scales = []
    for c in range(HPA2018.num_classes):
        peaks = []
        for i in range(per_class):
            rng = np.random.default_rng([9, c, i])
            field = _make_field(size, rng, int(c == 17), int(c == 16))
            _draw_red(field, rng)
            _draw_yellow(field, rng)
            amp = _expression(field, rng, c)
            pattern = _blur(_PATTERNS[c](field, amp, rng), field.px(0.9))
            bright = pattern[pattern > 0.1 * pattern.max()]
            peaks.append(float(np.percentile(bright, 99)))
        scales.append(round(1.0 / statistics.median(peaks), 2))
        print(f"class {c:2d} {HPA2018.names[c]:32s} scale {scales[-1]:.2f}", file=sys.stderr)
    return scales


# ---------------------------------------------------------------------------------------------------- main


def _machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpus}-core {platform.machine()}, {platform.system()}, Python {platform.python_version()}, no GPU used "
        f"(load average before the run: {load})"
    )


def _replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench_synth:{name}:begin -->\n).*?(<!-- bench_synth:{name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOCS}: marker block {name!r} not found")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "hpa" / "real_channel_stats.json")
    parser.add_argument("--n-stats", type=int, default=400, help="synthetic 512 px fields for the statistics")
    parser.add_argument("--repeats", type=int, default=5, help="runs per speed measurement (median reported)")
    parser.add_argument("--n512", type=int, default=60, help="samples per speed run at 512 px")
    parser.add_argument("--n128", type=int, default=400, help="samples per speed run at 128 px")
    parser.add_argument("--write-docs", action="store_true", help="refresh the tables in docs/synthetic-data.md")
    parser.add_argument("--figures-only", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--tmp", type=Path, help="folder for the speed runs' files (default: the system temp)")
    args = parser.parse_args(argv)

    if args.calibrate:
        print(calibrate())
        return 0
    figures = render_figures(IMAGES)
    print("figures:", ", ".join(str(p.relative_to(ROOT)) for p in figures), file=sys.stderr)
    if args.figures_only:
        return 0

    machine_line = _machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    real, real_source = real_stats(args.real)
    started = time.perf_counter()
    synthetic = synthetic_stats(args.n_stats)
    print(f"statistics of {args.n_stats} fields in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    speeds = []
    generation = []
    for size, n in ((512, args.n512), (128, args.n128)):
        generation.append(measure_generation(size, n, args.repeats))
        print(f"generation {generation[-1]}", file=sys.stderr)
        for workers in sorted({1, cores}):
            speeds.append(measure_speed(size, n * workers, workers, args.repeats, args.tmp))
            print(f"speed {speeds[-1]}", file=sys.stderr)
    leak = leak_check()
    print(f"leak check {leak}", file=sys.stderr)

    date = time.strftime("%Y-%m-%d")
    stats_md = (
        f"Real: `{real_source}` (~100 real 512 px Kaggle PNGs per channel). Synthetic: {args.n_stats} fields of "
        f"512 px, labels drawn with the real frequencies, seed 0. Measured {date}.\n\n" + stats_table(synthetic, real)
    )
    speed_rows = [
        "| image size | what | worker processes | samples/s (median) | per core | samples per CPU-second | "
        "runs (samples/s) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for g in generation:
        rate = g["samples_per_second"]
        speed_rows.append(
            f"| {g['size']} px | `generate_sample` only, in memory | 1 | {rate} | {rate} | "
            f"{g['samples_per_cpu_second']} | |"
        )
    for s in speeds:
        runs = ", ".join(str(x) for x in s["runs"])  # type: ignore[attr-defined]
        speed_rows.append(
            f"| {s['size']} px | `make_dataset`, PNG files | {s['workers']} | {s['samples_per_second']} | "
            f"{s['per_core']} | {s['samples_per_cpu_second'] or 'n/a'} | {runs} |"
        )
    speed_md = (
        f"Machine: {machine_line}. Command: `python benchmarks/bench_synth.py` (each run: "
        f"`make_dataset(out, n_train=N, size=S, workers=W)`, PNG 8-bit, files written to a temporary folder on "
        f"{'the local disk' if args.tmp is None else args.tmp}; "
        f"N = {args.n512} x W at 512 px, {args.n128} x W at 128 px; median of {args.repeats} runs). "
        f"Measured {date}.\n\n" + "\n".join(speed_rows)
    )
    leak_md = (
        f"Single-label {leak['size']} px fields, {leak['images_per_class']} per class, half to fit class centroids, "
        "half to test (nearest centroid):\n\n"
        "| guess the class from | accuracy |\n|---|---:|\n"
        f"| chance (1 of 28) | {leak['chance']:.3f} |\n"
        f"| mean green brightness alone | {leak['from_mean_green']:.3f} |\n"
        f"| six simple spatial features of green vs. the landmarks | {leak['from_spatial_features']:.3f} |"
    )
    results = {
        "synthetic": synthetic,
        "real_source": real_source,
        "generation": generation,
        "speed": speeds,
        "leak": leak,
        "date": date,
        "machine": machine_line,
    }
    save("synth", results, stats_md + "\n\n" + speed_md + "\n\n" + leak_md)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write_docs:
        text = DOCS.read_text()
        text = _replace_block(text, "stats", stats_md)
        text = _replace_block(text, "speed", speed_md)
        text = _replace_block(text, "leak", leak_md)
        DOCS.write_text(text)
        print(f"updated {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
