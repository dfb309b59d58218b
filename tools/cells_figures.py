"""Draw the segmentation pictures of docs/cells.md from the real HPA 2021 fields.

    PYTHONPATH=src python tools/cells_figures.py [--out docs/images/cells_hpa2021.png]

Segments the seven fields of ../shared/realdata/hpa2021_trainandgain with the classical segmenter, draws
each with its cell outlines (white; cells cut by the border in orange) and its count, tiles them into one
PNG (palette-quantised to stay small) and prints a Markdown table of cells per field.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from protloc.cells.draw import draw_outlines
from protloc.cells.masks import border_cells
from protloc.cells.segment import ClassicalSegmenter
from protloc.data.catalog import open_dataset
from protloc.data.io import CHANNELS, read_sample

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("PROTLOC_REALDATA", ROOT.parent / "shared" / "realdata"))
BORDER = 2  # palette index (tab20: orange) that colours the cells cut by the border


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "cells_hpa2021.png")
    parser.add_argument("--tile", type=int, default=360)
    args = parser.parse_args()
    catalog = open_dataset(REALDATA / "hpa2021_trainandgain" / "images", channels=None)
    segmenter = ClassicalSegmenter()
    tiles, rows = [], []
    for sample_id in catalog.ids:
        image = read_sample(catalog.files[sample_id], CHANNELS)
        labels = segmenter(image[[CHANNELS.index(c) for c in segmenter.channels]])
        cut = border_cells(labels)
        picture = draw_outlines(
            image,
            CHANNELS,
            labels,
            cell_classes={int(c): [BORDER] for c in cut},
            n_classes=4,
            side=args.tile,
            thickness=2,
        )
        text = f"{sample_id[:8]}: {int(labels.max())} cells"
        cv2.putText(picture, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(picture, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(picture)
        rows.append((sample_id, image.shape[1], int(labels.max()), len(cut)))
    while len(tiles) % 4:
        legend = np.full_like(tiles[0], 255)
        for line, words in enumerate(("white: a whole cell", "orange: cut by the border", "HPA, CC BY-SA 3.0")):
            cv2.putText(legend, words, (12, 40 + 28 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(legend)
    grid = np.vstack([np.hstack(tiles[i : i + 4]) for i in range(0, len(tiles), 4)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    print("| field | px | cells found | cut by the border |")
    print("|---|---|---|---|")
    for sample_id, side, cells, cut_cells in rows:
        print(f"| {sample_id} | {side} | {cells} | {cut_cells} |")


if __name__ == "__main__":
    main()
