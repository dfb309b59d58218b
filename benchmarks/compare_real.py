"""The synthetic generator beside genuine HPA fields: the same measurements on both, as a table and figures.

    python benchmarks/compare_real.py [--realdata ../shared/realdata] [--synthetic 50] [--seed 7]

Real: the 50 labelled Kaggle 2018 fields of ``realdata/kaggle2018_akashpalrecha`` (512 px, 8-bit). Synthetic:
``--synthetic`` fields from :func:`protloc.synth.make_dataset` at 512 px (a seed not used elsewhere). For each
field and channel: the 8-bit intensity histogram and the fraction of empty (zero) pixels; for each field: the
number of nuclei (Otsu threshold of the blue channel, holes filled, components >= 60 px), their median area,
the cell area (pixels above Otsu in red or yellow, divided by the nuclei), and the texture of the green channel
(mean |Laplacian| over pixels above 0, divided by their mean: edge energy per unit brightness). Medians and
quartiles over fields are written to ``results/compare_real.{json,md}`` and the figures to
``docs/images/real_vs_synth_*.png``. The real fields are the Human Protein Atlas's (CC BY-SA 3.0).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"


def field_measures(image: np.ndarray) -> dict[str, float]:
    """Measurements of one ``(4, H, W)`` uint8 field in red, green, blue, yellow order (scaled to 512 px)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    scale = (512.0 / image.shape[1]) ** 2
    out: dict[str, float] = {}
    for i, channel in enumerate(CHANNELS):
        out[f"zero_{channel}"] = float((image[i] == 0).mean())
        out[f"mean_{channel}"] = float(image[i].mean())
    blue = cv2.GaussianBlur(image[2], (0, 0), 1.5)
    nuclei = ndimage.binary_fill_holes(blue > max(threshold_otsu(blue), 8))
    labels, _ = ndimage.label(nuclei)
    areas = np.bincount(labels.ravel())[1:] * scale
    areas = areas[areas >= 60]
    out["nuclei"] = float(len(areas))
    out["nucleus_area"] = float(np.median(areas)) if len(areas) else 0.0
    body = np.maximum(image[0], image[3])
    body = cv2.GaussianBlur(body, (0, 0), 2.0)
    cells = (body > max(threshold_otsu(body), 4)) | nuclei
    out["cell_area"] = float(cells.sum() * scale / len(areas)) if len(areas) else 0.0
    out["cover"] = float(cells.mean())
    green = image[1].astype(np.float32)
    lit = green > 0
    laplacian = np.abs(cv2.Laplacian(green, cv2.CV_32F))
    out["green_texture"] = float(laplacian[lit].mean() / max(green[lit].mean(), 1e-6)) if lit.any() else 0.0
    return out


def histograms(images: list[np.ndarray]) -> np.ndarray:
    """(4, 256) pixel fractions per grey level, pooled over the fields."""
    counts = np.zeros((4, 256), np.float64)
    for image in images:
        for i in range(4):
            counts[i] += np.bincount(image[i].ravel(), minlength=256)
    return counts / counts.sum(axis=1, keepdims=True)


def read_fields(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    catalog = open_dataset(folder)
    ids = catalog.ids[:limit] if limit else catalog.ids
    return [read_sample(catalog.files[i], CHANNELS, size=512, sample_id=i) for i in ids]


def summarise(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    keys = rows[0].keys()
    return {k: [float(np.percentile([r[k] for r in rows], q)) for q in (25, 50, 75)] for k in keys}


def figures(
    real: list[np.ndarray],
    synth: list[np.ndarray],
    real_rows: list[dict[str, float]],
    synth_rows: list[dict[str, float]],
) -> list[Path]:
    from protloc.plots import PALETTE, _figure, save_figure

    IMAGES.mkdir(parents=True, exist_ok=True)
    written = []
    real_h, synth_h = histograms(real), histograms(synth)
    figure = _figure(12, 6.4)
    axes = figure.subplots(2, 2).ravel()
    for i, channel in enumerate(CHANNELS):
        axis = axes[i]
        axis.semilogy(
            np.arange(1, 256), real_h[i, 1:], color=PALETTE["train"], label=f"real (zero: {real_h[i, 0]:.0%})"
        )
        axis.semilogy(
            np.arange(1, 256), synth_h[i, 1:], color=PALETTE["val"], label=f"synthetic (zero: {synth_h[i, 0]:.0%})"
        )
        axis.set_title(f"{channel}: pixels per grey level (0 left out)", fontsize=10)
        axis.set_xlim(1, 255)
        axis.legend(fontsize=8, frameon=False)
        axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle(f"{len(real)} real HPA 2018 fields vs {len(synth)} synthetic fields, 512 px 8-bit", fontsize=11)
    written.append(save_figure(figure, IMAGES / "real_vs_synth_histograms.png"))

    keys = [
        ("nuclei", "nuclei per field"),
        ("nucleus_area", "nucleus area (px at 512)"),
        ("cell_area", "cell area (px at 512)"),
        ("green_texture", "green texture (|Laplacian| / mean)"),
    ]
    figure = _figure(12, 3.4)
    axes = figure.subplots(1, len(keys))
    for axis, (key, title) in zip(axes, keys, strict=True):
        data = [[r[key] for r in real_rows], [r[key] for r in synth_rows]]
        parts = axis.boxplot(data, widths=0.6, patch_artist=True, showfliers=True)
        for patch, colour in zip(parts["boxes"], (PALETTE["train"], PALETTE["val"]), strict=True):
            patch.set_facecolor(colour)
            patch.set_alpha(0.6)
        axis.set_xticks([1, 2], ["real", "synthetic"])
        axis.set_title(title, fontsize=10)
        axis.spines[["top", "right"]].set_visible(False)
    written.append(save_figure(figure, IMAGES / "real_vs_synth_cells.png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(os.environ.get("PROTLOC_REALDATA", REPO.parent / "shared" / "realdata"))
    parser.add_argument("--realdata", type=Path, default=default)
    parser.add_argument("--synthetic", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args()
    from protloc.synth import make_dataset

    real = read_fields(args.realdata / "kaggle2018_akashpalrecha")
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(Path(tmp) / "s", n_train=args.synthetic, size=512, seed=args.seed, workers=2)
        synth = read_fields(Path(tmp) / "s")
    real_rows = [field_measures(image) for image in real]
    synth_rows = [field_measures(image) for image in synth]
    real_sum, synth_sum = summarise(real_rows), summarise(synth_rows)
    rows = []
    for key in real_sum:
        r, s = real_sum[key], synth_sum[key]
        fmt = "{:.2f}" if max(r[1], s[1]) < 10 else "{:.0f}"
        rows.append(
            [
                key,
                fmt.format(r[1]) + f" ({fmt.format(r[0])}-{fmt.format(r[2])})",
                fmt.format(s[1]) + f" ({fmt.format(s[0])}-{fmt.format(s[2])})",
            ]
        )
    payload: dict[str, Any] = {
        "real_fields": len(real),
        "synthetic_fields": len(synth),
        "real": real_sum,
        "synthetic": synth_sum,
    }
    if not args.no_figures:
        payload["figures"] = [str(p.relative_to(REPO)) for p in figures(real, synth, real_rows, synth_rows)]
    save("compare_real", payload, table(["measure (median, quartiles)", "real 2018 fields", "synthetic"], rows))


if __name__ == "__main__":
    main()
