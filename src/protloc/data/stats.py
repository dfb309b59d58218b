"""Statistics of a labelled data set: class balance, labels per image, class co-occurrence, pixel intensities.

:func:`dataset_statistics` computes them; :func:`write_statistics` writes the tables (CSV/JSON) and the
figures (PNG, via :mod:`protloc.plots`) into a folder. Torch-free.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from protloc.data.catalog import Catalog
from protloc.data.io import CHANNELS, read_channel
from protloc.errors import DataError
from protloc.schemes import ClassScheme
from protloc.utils import atomic_write_text


@dataclass
class ChannelStats:
    """Pixel statistics of one channel over a sample of images (8-bit scale)."""

    mean: float
    std: float
    fraction_zero: float
    percentiles: dict[str, float]
    n_images: int


@dataclass
class DatasetStats:
    """Counts that describe a labelled data set."""

    n_images: int
    class_counts: list[int]
    labels_per_image: dict[int, int]
    """number of labels -> number of images with that many."""
    cooccurrence: list[list[int]]
    """(C, C): images carrying both classes; the diagonal holds the class counts."""
    scheme: str
    """the class scheme the counts are over (its names come from :func:`protloc.schemes.get_scheme`)."""
    class_names: list[str]
    short_names: list[str]
    channels: dict[str, ChannelStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("short_names")
        return data


def label_statistics(labels: np.ndarray, scheme: ClassScheme) -> DatasetStats:
    """Class counts, labels-per-image histogram and co-occurrence of a ``(N, C)`` multi-hot matrix."""
    if labels.ndim != 2 or labels.shape[1] != scheme.num_classes:
        raise ValueError(f"labels must have shape (N, {scheme.num_classes}) for {scheme.name}, got {labels.shape}")
    matrix = labels.astype(np.int64)
    per_image = matrix.sum(axis=1)
    histogram = {int(k): int(v) for k, v in zip(*np.unique(per_image, return_counts=True), strict=True)}
    return DatasetStats(
        n_images=len(labels),
        class_counts=[int(c) for c in matrix.sum(axis=0)],
        labels_per_image=histogram,
        cooccurrence=(matrix.T @ matrix).tolist(),
        scheme=scheme.name,
        class_names=list(scheme.names),
        short_names=list(scheme.shorts),
    )


def channel_statistics(
    catalog: Catalog,
    channels: Sequence[str] = CHANNELS,
    *,
    max_images: int = 200,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, ChannelStats]:
    """Pixel statistics per channel over up to ``max_images`` randomly chosen samples (8-bit values)."""
    rng = np.random.default_rng(seed)
    count = min(max_images, len(catalog))
    picks = np.sort(rng.choice(len(catalog), size=count, replace=False)) if count else np.array([], dtype=int)
    histograms = {c: np.zeros(256, dtype=np.int64) for c in channels}
    for done, index in enumerate(picks, start=1):
        files = catalog.paths(int(index))
        for channel in channels:
            if channel in files:
                plane = read_channel(files[channel])
                histograms[channel] += np.bincount(plane.ravel(), minlength=256)
        if on_progress:
            on_progress(done, count)
    values = np.arange(256, dtype=np.float64)
    result = {}
    for channel, hist in histograms.items():
        total = int(hist.sum())
        if total == 0:
            continue
        mean = float((hist * values).sum() / total)
        std = float(np.sqrt((hist * (values - mean) ** 2).sum() / total))
        cumulative = np.cumsum(hist) / total
        percentiles = {str(q): float(np.searchsorted(cumulative, q / 100.0)) for q in (1, 5, 25, 50, 75, 95, 99, 99.9)}
        result[channel] = ChannelStats(
            mean=round(mean, 3),
            std=round(std, 3),
            fraction_zero=round(float(hist[0] / total), 5),
            percentiles=percentiles,
            n_images=count,
        )
    return result


def dataset_statistics(
    catalog: Catalog,
    *,
    pixel_images: int = 200,
    on_progress: Callable[[int, int], None] | None = None,
) -> DatasetStats:
    """All statistics of a labelled Catalog; pixel statistics from ``pixel_images`` samples (0 skips them)."""
    if catalog.labels is None:
        raise DataError(f"{catalog.image_dir}: no labels found; stats needs a labels CSV (train.csv)")
    stats = label_statistics(catalog.labels, catalog.scheme)
    if pixel_images > 0:
        channels = [c for c in CHANNELS if all(c in catalog.files[i] for i in catalog.ids[:1])]
        stats.channels = channel_statistics(catalog, channels, max_images=pixel_images, on_progress=on_progress)
    return stats


def write_statistics(stats: DatasetStats, out: str | Path, *, title: str = "") -> dict[str, Path]:
    """Write ``class_counts.csv``, ``stats.json`` and the figures into ``out``; return what was written."""
    from protloc import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    rows = ["class_id,class_name,count,fraction"]
    for class_id, (name, count) in enumerate(zip(stats.class_names, stats.class_counts, strict=True)):
        rows.append(f"{class_id},{_csv_cell(name)},{count},{count / max(stats.n_images, 1):.5f}")
    written["class_counts"] = atomic_write_text(out / "class_counts.csv", "\n".join(rows) + "\n")
    written["json"] = atomic_write_text(out / "stats.json", json.dumps(stats.to_json(), indent=1) + "\n")
    written["class_distribution"] = plots.save_figure(
        plots.class_distribution(stats.class_counts, stats.n_images, title=title, names=stats.class_names),
        out / "class_distribution.png",
    )
    written["labels_per_image"] = plots.save_figure(
        plots.labels_per_image(stats.labels_per_image, title=title), out / "labels_per_image.png"
    )
    written["cooccurrence"] = plots.save_figure(
        plots.cooccurrence_heatmap(np.asarray(stats.cooccurrence), title=title, shorts=stats.short_names),
        out / "cooccurrence.png",
    )
    if stats.channels:
        written["channel_intensity"] = plots.save_figure(
            plots.channel_intensity(stats.channels, title=title), out / "channel_intensity.png"
        )
    return written


def _csv_cell(text: str) -> str:
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def read_class_counts(path: str | Path) -> list[int]:
    """Read back ``class_counts.csv`` (used by tests and reports)."""
    with Path(path).open(newline="") as handle:
        return [int(row["count"]) for row in csv.DictReader(handle)]
