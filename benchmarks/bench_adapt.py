"""Adapting a package to a new microscope without labels (``protloc adapt``): chosen on synthetic shifts, then
reported once on the 50 labelled genuine Kaggle 2018 fields.

    python benchmarks/bench_adapt.py choose  --model synth=RUN/model --model hpa_like=RUN/model \\
        --source synth=SYNTH_ROOT --source hpa_like=HPA_LIKE_SPARSE_ROOT --shift dense=HPA_LIKE_DENSE_ROOT
    python benchmarks/bench_adapt.py genuine --model synth=RUN/model --model hpa_like=RUN/model --method norm,bn

``choose`` scores each model on labelled synthetic shifts it was not trained on: its own generator's test
fields as they are (no shift: adaptation must not hurt), the same fields at a third of the brightness (another
gain or bit depth) and the other hpa_like family (``dense``: small dim cells, background, noise); each
adaptation method (none, norm, bn, norm+bn) re-estimated on 16, 64 or all of the shifted test fields,
unlabelled. ``genuine`` runs ``adapt_package`` (the command's library function, guard on) on the 50 genuine
fields themselves, unlabelled, and scores the package before and after, and the prior (every field gets the
two commonest classes of the 31,072 Kaggle 2018 training images, Nucleoplasm and Cytosol): macro F1 over the
classes present, micro F1 and exact match, with 95 % bootstrap intervals over fields (the same resamples for
every row), and the paired difference after - before. Nothing is tuned on the genuine fields.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save, table

REPO = Path(__file__).resolve().parents[1]
METHODS = {"none": (), "norm": ("norm",), "bn": ("bn",), "norm+bn": ("norm", "bn")}


def _pairs(values: list[str]) -> dict[str, Path]:
    return {v.split("=", 1)[0]: Path(v.split("=", 1)[1]) for v in values}


def scores(truth: np.ndarray, decided: np.ndarray) -> tuple[float, float, float]:
    """Macro F1 over the classes present, micro F1, exact match."""
    from protloc.metrics import macro_f1, micro_f1

    exact = float((decided == truth).all(axis=1).mean())
    return macro_f1(truth, decided), micro_f1(truth, decided), exact


def bootstrap(
    truth: np.ndarray, decided: dict[str, np.ndarray], bases: dict[str, str], resamples: int, seed: int
) -> dict[str, Any]:
    """95 % percentile intervals of each row's scores, and of each row's difference to its row in ``bases``, over
    the same field resamples."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(truth), size=(resamples, len(truth)))
    values = {name: np.array([scores(truth[d], labels[d]) for d in draws]) for name, labels in decided.items()}
    out: dict[str, Any] = {}
    for name, v in values.items():
        out[name] = {
            "point": [round(x, 4) for x in scores(truth, decided[name])],
            "low": np.percentile(v, 2.5, axis=0).round(4).tolist(),
            "high": np.percentile(v, 97.5, axis=0).round(4).tolist(),
        }
        if name in bases:
            diff = v - values[bases[name]]
            out[name]["diff_low"] = np.percentile(diff, 2.5, axis=0).round(4).tolist()
            out[name]["diff_high"] = np.percentile(diff, 97.5, axis=0).round(4).tolist()
    return out


def _decide(card: Any, probabilities: np.ndarray) -> np.ndarray:
    from protloc.metrics import decide

    return decide(probabilities, card.thresholds, min_one=card.decision.min_one, exclusive=card.scheme.exclusive)


def _labelled(root: Path) -> Any:
    from protloc.data.catalog import open_dataset

    if (root / "test_truth.csv").is_file():
        return open_dataset(root, split="test", labels=root / "test_truth.csv", channels=None)
    return open_dataset(root, channels=None)


def choose(args: argparse.Namespace) -> None:
    from protloc.model.package import load_package
    from protloc.training.adapt import adapt_network, probabilities_of, read_inputs

    models, sources, shifts = _pairs(args.model), _pairs(args.source), _pairs(args.shift)
    rows, results = [], {}
    for name, path in models.items():
        package = load_package(path)
        network, card = package.build_model(), package.card
        own = _labelled(sources[name])
        own_inputs = read_inputs(own, card)
        targets = {
            "no shift": (own_inputs, own.labels),
            "x0.35 gain": ((own_inputs * 0.35).astype(np.uint8), own.labels),
        }
        for shift, root in shifts.items():
            catalog = _labelled(root)
            targets[shift] = (read_inputs(catalog, card), catalog.labels)
        for target, (inputs, truth) in targets.items():
            rng = np.random.default_rng(args.seed)
            for method, steps in METHODS.items():
                for count in [0] if not steps else args.fields:
                    used = (
                        inputs if count >= len(inputs) or count == 0 else inputs[rng.permutation(len(inputs))[:count]]
                    )
                    net = network if not steps else adapt_network(network, used, steps, batch_size=32)[0]
                    macro, micro, exact = scores(truth, _decide(card, probabilities_of(net, inputs)))
                    label = method if not steps else f"{method} ({min(count, len(inputs))} fields)"
                    rows.append([name, target, label, f"{macro:.3f}", f"{micro:.3f}", f"{exact:.3f}"])
                    results[f"{name} | {target} | {label}"] = [round(macro, 4), round(micro, 4), round(exact, 4)]
                    print(" | ".join(rows[-1]), flush=True)
    save(
        "adapt_choose",
        {"machine": machine(), "results": results},
        table(["model", "labelled target", "adaptation", "macro F1", "micro F1", "exact"], rows),
    )


def genuine(args: argparse.Namespace) -> None:
    from protloc.errors import ModelError
    from protloc.model.package import load_package
    from protloc.training.adapt import AdaptSettings, adapt_package, probabilities_of, read_inputs

    real = args.realdata / "kaggle2018_akashpalrecha"
    catalog = _labelled(real)
    truth = catalog.labels
    stats = json.loads(resources.files("protloc").joinpath("data/hpa_label_stats.json").read_text("utf-8"))
    commonest = list(np.argsort(stats["class_counts"])[::-1][:2])
    prior = np.zeros_like(truth)
    prior[:, commonest] = 1
    decided = {"prior: Nucleoplasm + Cytosol": prior}
    bases: dict[str, str] = {}
    records: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in _pairs(args.model).items():
            before = load_package(path)
            inputs = read_inputs(catalog, before.card)
            decided[f"{name}: as trained"] = _decide(before.card, probabilities_of(before.build_model(), inputs))
            for method in args.method:
                label = f"{name}: adapted ({method})"
                started = time.perf_counter()
                settings = AdaptSettings(methods=tuple(method.split(",")), seed=args.seed)
                try:
                    result = adapt_package(path, real / "images", Path(tmp) / name, settings)
                except ModelError as exc:
                    records[label] = {"refused": str(exc)}
                    print(f"{label}: {exc}", flush=True)
                    continue
                after = load_package(result.out)
                probabilities = probabilities_of(after.build_model(), read_inputs(catalog, after.card))
                decided[label] = _decide(after.card, probabilities)
                bases[label] = f"{name}: as trained"
                records[label] = {"seconds": round(time.perf_counter() - started, 1), "guard": result.guard}
    intervals = bootstrap(truth, decided, bases, args.resamples, args.seed)
    rows = []
    for label, labels in decided.items():
        point = scores(truth, labels)
        ci = intervals[label]
        cells = [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in zip(point, ci["low"], ci["high"], strict=True)]
        diff = f"{ci['diff_low'][0]:+.3f} to {ci['diff_high'][0]:+.3f}" if "diff_low" in ci else ""
        rows.append([label, *cells, diff])
    for label, record in records.items():
        if "refused" in record:
            rows.append([label, "refused by the guard", "", "", record["refused"].split(": ", 1)[-1]])
    save(
        "adapt_genuine",
        {"machine": machine(), "fields": len(truth), "intervals": intervals, "adaptation": records},
        table(
            ["model", "macro F1 (classes present)", "micro F1", "exact match", "macro F1 after - before (95 %)"], rows
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("choose", "genuine"))
    parser.add_argument("--model", action="append", default=[], help="NAME=PACKAGE, repeatable")
    parser.add_argument("--source", action="append", default=[], help="NAME=labelled root of the model's generator")
    parser.add_argument("--shift", action="append", default=[], help="NAME=labelled root of a shifted family")
    parser.add_argument("--fields", type=int, nargs="+", default=[16, 64, 10_000])
    parser.add_argument("--method", action="append", default=None, help="norm, bn or norm,bn; repeatable")
    default = Path(os.environ.get("PROTLOC_REALDATA", REPO.parent / "shared" / "realdata"))
    parser.add_argument("--realdata", type=Path, default=default)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.method = args.method or ["norm"]
    choose(args) if args.stage == "choose" else genuine(args)


if __name__ == "__main__":
    main()
