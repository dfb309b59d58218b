"""Derive the label statistics that protloc ships from the real Kaggle HPA 2018 label table.

Run once by a developer (it reads ``../shared/hpa``, which the package never reads at run time)::

    python tools/derive_label_stats.py ../shared/hpa/kaggle2018_train_labels.csv \
        src/protloc/data/hpa_label_stats.json

The output holds facts, not the table: how often each distinct label set occurs, and per-class counts.
"""

from __future__ import annotations

import collections
import csv
import json
import sys
from pathlib import Path


def main(source: Path, out: Path) -> None:
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    label_sets: collections.Counter[tuple[int, ...]] = collections.Counter(
        tuple(sorted(int(t) for t in row["Target"].split())) for row in rows
    )
    class_counts = [0] * 28
    for label_set, count in label_sets.items():
        for class_id in label_set:
            class_counts[class_id] += count
    stats = {
        "source": "Kaggle Human Protein Atlas Image Classification (2018), train.csv; "
        "counts derived from CellProfiling/HPA-competition-solutions (MIT licence)",
        "n_images": len(rows),
        "class_counts": class_counts,
        "label_sets": [
            [list(label_set), count] for label_set, count in sorted(label_sets.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }
    out.write_text(json.dumps(stats, separators=(",", ":")) + "\n")
    print(f"{len(rows)} images, {len(label_sets)} distinct label sets -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
