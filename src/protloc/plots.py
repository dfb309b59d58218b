"""Figures: data set statistics, sample composites, training curves and per-class scores.

Every function returns a matplotlib ``Figure`` (drawn with the non-interactive Agg backend) so a notebook
can show it and :func:`save_figure` can write it. :func:`composite_rgb` is plain numpy and is also used by
the HTML report, the explanations and the web service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protloc.channels import CHANNEL_ROLES
from protloc.utils import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CHANNEL_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.35, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
PALETTE = {"train": "#4c72b0", "val": "#dd8452", "accent": "#2a9d8f", "muted": "#8d99ae"}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=dpi, facecolor="white")
    return path


def figure_png_bytes(figure: Figure, *, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (for embedding in HTML or HTTP responses)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def composite_rgb(image: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """Blend a ``(C, H, W)`` uint8 sample into an ``(H, W, 3)`` uint8 RGB picture as HPA's viewer does.

    Red, green and blue go to their own colour; yellow (the ER) is added at half strength to red and green
    so it shows as yellow without hiding the protein in green.
    """
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise ValueError(f"expected ({len(channels)}, H, W) for channels {tuple(channels)}, got {image.shape}")
    planes = {name: image[i].astype(np.float32) for i, name in enumerate(channels)}
    zero = np.zeros(image.shape[1:], np.float32)
    yellow = planes.get("yellow", zero) * 0.5
    rgb = np.stack(
        [planes.get("red", zero) + yellow, planes.get("green", zero) + yellow, planes.get("blue", zero)], axis=-1
    )
    return np.clip(rgb, 0, 255).astype(np.uint8)


def stretch_for_display(image: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale each channel of a ``(C, H, W)`` uint8 image so its ``percentile`` maps to 255 (display only).

    Fluorescence fields are mostly dark; this makes dim channels visible without changing what the model sees.
    """
    out = np.empty_like(image)
    for index, plane in enumerate(image):
        top = float(np.percentile(plane, percentile))
        gain = 255.0 / top if top > 0 else 1.0
        out[index] = np.clip(plane.astype(np.float32) * max(gain, 1.0), 0, 255).astype(np.uint8)
    return out


def tint(plane: np.ndarray, channel: str) -> np.ndarray:
    """A single channel shown in its own colour, as ``(H, W, 3)`` uint8."""
    colour = np.asarray(CHANNEL_COLOURS.get(channel, (1.0, 1.0, 1.0)), np.float32)
    return (plane.astype(np.float32)[..., None] * colour).clip(0, 255).astype(np.uint8)


def sample_figure(
    image: np.ndarray,
    channels: Sequence[str],
    *,
    title: str = "",
    label_text: str = "",
    stretch: bool = True,
) -> Figure:
    """The composite and each channel side by side, titled with the sample's id and label names.

    With ``stretch`` each channel is contrast-stretched for display (see :func:`stretch_for_display`).
    """
    if stretch:
        image = stretch_for_display(image)
        title = (title + " " if title else "") + "(contrast stretched per channel for display)"
    panels = 1 + len(channels)
    figure = _figure(3.2 * panels, 3.9)
    axes = figure.subplots(1, panels)
    axes = np.atleast_1d(axes)
    axes[0].imshow(composite_rgb(image, channels))
    axes[0].set_title("composite", fontsize=10)
    for axis, (index, channel) in zip(axes[1:], enumerate(channels), strict=True):
        axis.imshow(tint(image[index], channel))
        axis.set_title(f"{channel}: {CHANNEL_ROLES[channel]}", fontsize=10)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    heading = title + (f"\n{label_text}" if label_text else "")
    if heading:
        figure.suptitle(heading, fontsize=11)
    return figure


def class_distribution(class_counts: Sequence[int], n_images: int, *, names: Sequence[str], title: str = "") -> Figure:
    """Horizontal bar chart of images per class, commonest first, with counts and percentages."""
    counts = np.asarray(class_counts)
    order = np.argsort(-counts, kind="stable")
    figure = _figure(9, max(3.0, 0.3 * len(counts) + 0.5))
    axis = figure.subplots()
    labels = [f"{names[i]} ({i})" for i in order]
    bars = axis.barh(range(len(counts)), counts[order], color=PALETTE["train"])
    axis.set_yticks(range(len(counts)), labels, fontsize=9)
    axis.invert_yaxis()
    axis.set_xlabel("images")
    for bar, count in zip(bars, counts[order], strict=True):
        share = 100.0 * count / max(n_images, 1)
        axis.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {count} ({share:.1f}%)", va="center", fontsize=8
        )
    axis.set_xlim(0, max(1, counts.max()) * 1.22)
    axis.spines[["top", "right"]].set_visible(False)
    axis.set_title((title + ": " if title else "") + f"images per class ({n_images} images)", fontsize=11)
    return figure


def labels_per_image(histogram: Mapping[int, int], *, title: str = "") -> Figure:
    """Bar chart: how many images carry 1, 2, 3... labels."""
    figure = _figure(6, 3.6)
    axis = figure.subplots()
    keys = sorted(histogram)
    values = [histogram[k] for k in keys]
    bars = axis.bar([str(k) for k in keys], values, color=PALETTE["accent"])
    axis.bar_label(bars, fontsize=9)
    axis.set_xlabel("labels per image")
    axis.set_ylabel("images")
    axis.spines[["top", "right"]].set_visible(False)
    axis.set_title((title + ": " if title else "") + "labels per image", fontsize=11)
    return figure


def cooccurrence_heatmap(cooccurrence: np.ndarray, *, shorts: Sequence[str], title: str = "") -> Figure:
    """Heatmap of P(column class | row class): how often a class comes with each other class."""
    matrix = np.asarray(cooccurrence, dtype=np.float64)
    counts = np.diag(matrix).copy()
    conditional = np.divide(matrix, counts[:, None], out=np.zeros_like(matrix), where=counts[:, None] > 0)
    np.fill_diagonal(conditional, np.nan)
    figure = _figure(10, 9)
    axis = figure.subplots()
    shown = axis.imshow(conditional, cmap="magma_r", vmin=0, vmax=max(0.05, float(np.nanmax(conditional) or 0.05)))
    n = len(counts)
    labels = [f"{shorts[i]} ({i})" for i in range(n)]
    axis.set_xticks(range(n), labels, rotation=90, fontsize=8)
    axis.set_yticks(range(n), [f"{lab}  n={int(c)}" for lab, c in zip(labels, counts, strict=True)], fontsize=8)
    axis.set_xlabel("also labelled with")
    axis.set_ylabel("images of class")
    figure.colorbar(shown, ax=axis, shrink=0.8, label="P(column | row)")
    axis.set_title((title + ": " if title else "") + "class co-occurrence", fontsize=11)
    return figure


def channel_intensity(channels: Mapping[str, Any], *, title: str = "") -> Figure:
    """Per-channel pixel statistics: mean, share of exact zeros and percentiles, as grouped bars."""
    names = list(channels)
    figure = _figure(9, 3.6)
    left, right = figure.subplots(1, 2)
    colours = [CHANNEL_COLOURS.get(n, (0.5, 0.5, 0.5)) for n in names]
    zero = [channels[n].fraction_zero for n in names]
    bars = left.bar(names, zero, color=colours, edgecolor="black", linewidth=0.5)
    left.bar_label(bars, labels=[f"{z:.0%}" for z in zero], fontsize=9)
    left.set_ylim(0, 1.05)
    left.set_title("share of pixels exactly 0", fontsize=10)
    quantiles = ["50", "75", "95", "99"]
    width = 0.8 / len(names)
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        values = [channels[name].percentiles.get(q, np.nan) for q in quantiles]
        right.bar(
            np.arange(len(quantiles)) + i * width,
            values,
            width,
            color=colour,
            edgecolor="black",
            linewidth=0.5,
            label=f"{name} (mean {channels[name].mean:.1f})",
        )
    right.set_xticks(np.arange(len(quantiles)) + 0.4 - width / 2, [f"p{q}" for q in quantiles])
    right.set_ylabel("8-bit value")
    right.set_title("pixel percentiles", fontsize=10)
    right.legend(fontsize=8, frameon=False)
    for axis in (left, right):
        axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle((title + ": " if title else "") + "pixel intensities per channel", fontsize=11)
    return figure


def training_curves(rows: Sequence[Mapping[str, float]]) -> Figure:
    """Loss and macro F1 per epoch, training vs validation."""
    epochs = [int(r["epoch"]) + 1 for r in rows]
    figure = _figure(10, 3.8)
    loss_axis, f1_axis = figure.subplots(1, 2)
    for axis, key, label in ((loss_axis, "loss", "loss"), (f1_axis, "macro_f1", "macro F1 (0.5 threshold)")):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{key}", np.nan) for r in rows]
            axis.plot(
                epochs,
                values,
                marker="o",
                markersize=3,
                color=PALETTE[split],
                label="training" if split == "train" else "validation",
            )
        axis.set_xlabel("epoch")
        axis.set_title(label, fontsize=11)
        axis.grid(alpha=0.3)
        axis.spines[["top", "right"]].set_visible(False)
    f1_axis.set_ylim(0, 1)
    best = int(np.nanargmax([r.get("val_macro_f1", np.nan) for r in rows])) if rows else 0
    if rows:
        f1_axis.axvline(epochs[best], color=PALETTE["muted"], linestyle="--", linewidth=1)
        f1_axis.annotate(
            f"best {rows[best]['val_macro_f1']:.3f}",
            (epochs[best], rows[best]["val_macro_f1"]),
            textcoords="offset points",
            xytext=(6, -14),
            fontsize=9,
        )
    loss_axis.legend(frameon=False)
    return figure


def per_class_f1(report: Any, *, title: str = "validation") -> Figure:
    """F1 of each class at the chosen thresholds, with support; classes absent from the truth are greyed."""
    rows = list(report.per_class)
    figure = _figure(10, 8.5)
    axis = figure.subplots()
    order = sorted(range(len(rows)), key=lambda i: -(rows[i].support))
    values = [rows[i].f1 if rows[i].f1 is not None else 0.0 for i in order]
    colours = [PALETTE["accent"] if rows[i].f1 is not None else "#d9d9d9" for i in order]
    bars = axis.barh(range(len(rows)), values, color=colours)
    axis.set_yticks(range(len(rows)), [f"{rows[i].name} ({rows[i].class_id})" for i in order], fontsize=9)
    axis.invert_yaxis()
    for bar, i in zip(bars, order, strict=True):
        row = rows[i]
        text = f" {row.f1:.2f}  n={row.support}  t={row.threshold:.2f}" if row.f1 is not None else " no positives"
        axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    axis.set_xlim(0, 1.3)
    axis.set_xlabel("F1")
    axis.axvline(report.macro_f1, color=PALETTE["val"], linestyle="--", linewidth=1)
    axis.spines[["top", "right"]].set_visible(False)
    axis.set_title(
        f"{title}: per-class F1 (macro F1 {report.macro_f1:.3f} over {report.classes_scored} classes, "
        f"{report.n_samples} images; n = support, t = threshold)",
        fontsize=10,
    )
    return figure
