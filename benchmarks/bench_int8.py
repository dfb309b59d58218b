"""What keeps int8 faithful: layers left in float32, judged by what users see.

    python benchmarks/bench_int8.py --model PACKAGE --data ROOT [--calibration-images 512]

For each choice of layers kept in float32 (none: everything int8, as protloc quantised before 2026-12-06; the
classifier; the classifier and the stem, the default since), ``protloc.deployment.quantize.quantize_onnx`` writes an
int8 model of ``PACKAGE`` (percentile ranges on its training images, tolerance off so that every choice is
written), then the float32 ONNX model and each int8 model predict ROOT's test fields (``test/`` with
``test_truth.csv``) and are compared: the largest and mean change of a probability, the share of decisions
(class x field at the card's thresholds) flipped, macro F1 against the truth, and the export check's own figure
(on training images not used for calibration). Results: ``benchmarks/results/int8.{json,md}`` (``--name``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table

CHOICES: list[tuple[str, tuple[str, ...]]] = [
    ("none (before)", ()),
    ("classifier", ("classifier",)),
    ("classifier + stem (the default)", ("classifier", "stem")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--calibration-images", type=int, default=None)
    parser.add_argument("--name", default="int8", help="results/NAME.{json,md}")
    args = parser.parse_args()

    from protloc.data.catalog import open_dataset
    from protloc.deployment.onnx import export_onnx
    from protloc.deployment.quantize import quantize_onnx
    from protloc.inference.predict import predict_folder
    from protloc.metrics import evaluate
    from protloc.model.card import read_card

    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    card = read_card(args.model)
    fp32 = export_onnx(args.model, work / "model.onnx").path
    truth = open_dataset(args.data, split="test", labels=args.data / "test_truth.csv", channels=None)
    assert truth.labels is not None

    def scores(path: Path, name: str) -> np.ndarray:
        result = predict_folder(path, args.data, work / f"pred-{name}", backend="onnx", workers=0)
        assert result is not None
        return result.probabilities[[result.ids.index(i) for i in truth.ids]]

    reference = scores(fp32, "fp32")
    thresholds = np.asarray(card.thresholds)

    def macro(probabilities: np.ndarray) -> float:
        report = evaluate(
            truth.labels, probabilities, thresholds, card.classes, min_one=True, exclusive=card.scheme.exclusive
        )
        return report.macro_f1

    base_f1 = macro(reference)
    rows, records = [["float32 (ONNX Runtime)", "-", "-", "-", "-", f"{base_f1:.4f}", "-"]], []
    for label, keep in CHOICES:
        started = time.perf_counter()
        made = quantize_onnx(
            args.model,
            work / f"int8-{len(keep)}.onnx",
            source=fp32,
            count=args.calibration_images,
            keep_float=keep,
            tolerance=1.0,
        )
        probabilities = scores(made.path, f"int8-{len(keep)}")
        diff = np.abs(probabilities - reference)
        flipped = float(((probabilities >= thresholds) != (reference >= thresholds)).mean())
        f1 = macro(probabilities)
        record = {
            "float32_layers": list(keep),
            "check_max_prob_diff": round(made.max_prob_diff, 4),
            "test_max_prob_diff": round(float(diff.max()), 4),
            "test_mean_prob_diff": round(float(diff.mean()), 5),
            "decisions_flipped": round(flipped, 5),
            "macro_f1": round(f1, 4),
            "macro_f1_change": round(f1 - base_f1, 4),
            "passes_default_check": made.max_prob_diff <= 0.1,
            "seconds": round(time.perf_counter() - started, 1),
        }
        records.append(record)
        rows.append(
            [
                label,
                f"{made.max_prob_diff:.3f}" + ("" if made.max_prob_diff <= 0.1 else " (refused at 0.1)"),
                f"{diff.max():.3f}",
                f"{diff.mean():.4f}",
                f"{flipped:.2%}",
                f"{f1:.4f}",
                f"{f1 - base_f1:+.4f}",
            ]
        )
        print(label, record, flush=True)
    header = [
        "int8, float32 layers",
        "export check: max prob change",
        "test: max prob change",
        "mean",
        "decisions flipped",
        "macro F1",
        "change",
    ]
    markdown = (
        f"{args.model} ({card.architecture.name}, {card.size} px), {len(truth)} test fields of {args.data}\n\n"
        + table(header, rows)
    )
    save(args.name, {"model": str(args.model), "fields": len(truth), "choices": records}, markdown)


if __name__ == "__main__":
    main()
