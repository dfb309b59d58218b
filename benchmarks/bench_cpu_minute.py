"""Quality per CPU-minute on foreign data: protloc's recipe (and each lever) vs a plain reference script.

    python benchmarks/bench_cpu_minute.py [--minutes 12] [--families sparse dense] [--variants default reference]

The setting of issue 14: an HPA-like data set protloc's generator did not make (``benchmarks/hpa_like.py``,
two families: sparse/bright and dense/dim, other renderings), 3,000 training and 1,000 test fields at 128 px
with the real label frequencies, **one CPU core per run** for a fixed training budget. Jobs run two at a time,
each pinned to its own core (``taskset``) with one compute thread, so the two runs of a pair share the machine
evenly and are measured side by side.

Every job writes its validation and test probabilities, so decision rules (one 0.5 cut-off, fitted per-class
thresholds, shrunk thresholds) are compared afterwards on the same networks (``--rules-only`` redoes that part).

Variants (``VARIANTS``): ``reference`` is ``benchmarks/reference_train.py`` (resnet18, 4 channels, AdamW, BCE,
flips and 90-degree rotations, a one-cycle rate over wall-clock time, per-class thresholds on a stratified 20%
validation split, the final weights); every other name is ``protloc train`` with the config changes listed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, save, table  # noqa: E402

BEFORE = {
    "oversample": 0.0,
    "ema": 0.0,
    "resolution_schedule": "none",
    "threshold_shrink": 0.0,
    "threshold_method": "fit",
    "precision": "32-true",
}
LEVERS = {
    "precision": "auto",
    "resolution_schedule": "progressive",
    "oversample": 0.5,
    "ema": 0.99,
    "threshold_method": "joint",
    "threshold_shrink": 0.0,
}
"""every lever of issue 14 on: the configuration the ablation starts from (bf16 where the CPU has it natively)."""
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {},
    "levers": LEVERS,
    # and each lever taken away in turn
    "levers-fp32": {**LEVERS, "precision": "32-true"},
    "levers-no-ema": {**LEVERS, "ema": 0.0},
    "levers-no-oversample": {**LEVERS, "oversample": 0.0},
    "levers-no-resolution": {**LEVERS, "resolution_schedule": "none"},
    # protloc's `cpu` recipe as it stood when issue 14 was filed
    "before": BEFORE,
    # protloc's `cpu` recipe as it is now: the levers that paid for themselves (levers-no-ema, see BENCHMARKS.md)
    "default": {},
}


def _run_reference(data: Path, out: Path, minutes: float, size: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(HERE / "reference_train.py"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--minutes",
        str(minutes),
        "--threads",
        "1",
        "--size",
        str(size),
    ]
    subprocess.run(command, check=True)
    result = json.loads((out / "result.json").read_text())
    return {key: result.get(key) for key in ("epochs", "steps", "train_seconds", "images_per_second")}


def _run_protloc(data: Path, out: Path, minutes: float, changes: dict[str, Any]) -> dict[str, Any]:
    from protloc.inference.evaluate import evaluate_model
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    overrides = {
        "data": str(data),
        "out": str(out / "run"),
        "cache_dir": str(out / "cache"),
        "max_time": f"{minutes:g}",
        "epochs": 100,  # a ceiling: the budget ends training
        "seed": 0,
        **changes,
    }
    config = resolve_config("cpu", overrides=overrides)
    start = time.perf_counter()
    result = train(config, overwrite=True)
    assert result is not None
    seconds = time.perf_counter() - start
    evaluate_model(result.package_dir, data, split="test", labels=data / "test_truth.csv", out=out / "test")
    return {
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "fit_seconds": round(result.seconds.get("fit", 0.0), 1),
        "budget": result.budget,
    }


def run_job(family: str, variant: str, data: Path, out: Path, minutes: float, size: int = 128) -> None:
    """One job in this process (the pinned child the orchestrator starts)."""
    out.mkdir(parents=True, exist_ok=True)
    if variant == "reference":
        info = _run_reference(data, out, minutes, size)
    else:
        info = _run_protloc(data, out, minutes, {"image_size": size, **VARIANTS[variant]})
    info.update(family=family, variant=variant, minutes=minutes)
    (out / "job.json").write_text(json.dumps(info, indent=1, default=str))


# ------------------------------------------------------------------------------------------------ scoring


def _read_truth(path: Path) -> tuple[list[str], np.ndarray]:
    from protloc.data.catalog import open_dataset

    catalog = open_dataset(path.parent, labels=path, split="test")
    assert catalog.labels is not None
    return list(catalog.ids), catalog.labels


def job_probabilities(out: Path, variant: str, test_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(validation truth, validation probabilities, test probabilities in ``test_ids`` order)."""
    from protloc.inference.files import read_probabilities_table

    if variant == "reference":
        val = np.load(out / "val_probabilities.npy")
        val_truth = np.load(out / "val_truth.npy")
        ids = (out / "test_ids.txt").read_text().split()
        test = np.load(out / "test_probabilities.npy")
    else:
        _, val, val_truth_or_none = read_probabilities_table(out / "run" / "val_predictions.csv")
        assert val_truth_or_none is not None
        val_truth = val_truth_or_none
        ids, test, _ = read_probabilities_table(out / "test" / "predictions.csv")
    order = {sample: i for i, sample in enumerate(ids)}
    return val_truth, val, test[[order[s] for s in test_ids]]


RULES: dict[str, dict[str, Any]] = {
    "0.5": {"method": "fixed", "min_one": False},
    "0.5 + at least one": {"method": "fixed", "min_one": True},
    "fit, no at-least-one": {"method": "fit", "min_one": False},
    "fit": {"method": "fit"},
    "fit, shrunk 10": {"method": "fit", "shrink": 10.0},
    "joint 0.5": {"method": "joint", "micro_weight": 0.5},
    "joint 1": {"method": "joint", "micro_weight": 1.0},
    "joint 0.5, shrunk 10": {"method": "joint", "micro_weight": 0.5, "shrink": 10.0},
}
MAIN_RULE = {"reference": "its own thresholds", "before": "fit"}
"""the rule each variant's own program applies (the reference script's: per-class thresholds, nothing more)."""
DEFAULT_RULE = "joint 0.5"


def score_rules(
    val_truth: np.ndarray, val: np.ndarray, truth: np.ndarray, test: np.ndarray, own: list[float] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Test scores of each decision rule, every rule fitted on the validation split only (``own``: the
    thresholds a program fitted itself, used without the at-least-one rule); and the labels."""
    from protloc.classes import HPA2018
    from protloc.metrics import decide, evaluate, fit_decision

    rules: dict[str, Any] = {}
    labels: dict[str, np.ndarray] = {}
    chosen = dict(RULES) | ({"its own thresholds": {"own": own, "min_one": False}} if own is not None else {})
    for name, rule in chosen.items():
        settings = {k: v for k, v in rule.items() if k not in ("min_one", "own")}
        cuts = rule["own"] if "own" in rule else fit_decision(val_truth, val, **settings).values
        min_one = bool(rule.get("min_one", True))
        report = evaluate(truth, test, cuts, HPA2018.names, min_one=min_one)
        rules[name] = report.summary() | {"per_class_f1": [row.f1 for row in report.per_class]}
        labels[name] = decide(test, cuts, min_one=min_one)
    return rules, labels


def bootstrap_macro_f1(truth: np.ndarray, predicted: dict[str, np.ndarray], repeats: int = 2000) -> dict[str, Any]:
    """Macro F1 of each labelling over ``repeats`` resamples of the test fields (the same resamples for all):
    the 5-95% interval of each, and of each one's difference to the first. Rare classes have one or two test
    positives, so one field more or less moves macro F1 by a few hundredths; this says how much."""
    rng = np.random.default_rng(0)
    weights = rng.multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=repeats).astype(np.float64)
    t = truth.astype(bool)

    def scores(labels: np.ndarray) -> np.ndarray:
        p = labels.astype(bool)
        tp, fp, fn = weights @ (t & p), weights @ (~t & p), weights @ (t & ~p)
        support = tp + fn
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
        return np.nansum(np.where(support > 0, f1, np.nan), axis=1) / np.maximum((support > 0).sum(axis=1), 1)

    names = list(predicted)
    samples = {name: scores(labels) for name, labels in predicted.items()}
    out: dict[str, Any] = {}
    for name in names:
        low, high = np.percentile(samples[name], [5, 95])
        out[name] = {"low": round(float(low), 4), "high": round(float(high), 4)}
        if name != names[0]:
            diff = samples[name] - samples[names[0]]
            d_low, d_high = np.percentile(diff, [5, 95])
            out[name]["minus_first"] = {
                "median": round(float(np.median(diff)), 4),
                "low": round(float(d_low), 4),
                "high": round(float(d_high), 4),
                "share_above": round(float((diff > 0).mean()), 4),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--families", nargs="+", default=["sparse", "dense"])
    parser.add_argument("--variants", nargs="+", default=["default", "reference"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/protloc-cpu-minute"))
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128, help="side of the fields, and of the networks' input")
    parser.add_argument("--cores", default="0,1", help="cores to pin jobs to, one job per core at a time")
    parser.add_argument("--results-name", default="cpu_minute")
    parser.add_argument("--rules-only", action="store_true", help="only rescore finished jobs")
    parser.add_argument("--job", nargs=2, metavar=("FAMILY", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work
    if args.job:
        family, variant = args.job
        run_job(family, variant, work / family, work / "jobs" / f"{family}-{variant}", args.minutes, args.size)
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    import hpa_like

    for family in args.families:
        if not (work / family / "test_truth.csv").is_file():
            print(f"generating the {family} family ...", flush=True)
            hpa_like.make(work / family, family, args.n_train, args.n_test, size=args.size)
    jobs = [(f, v) for f in args.families for v in args.variants]
    if not args.rules_only:
        cores = args.cores.split(",")
        pending = [j for j in jobs if not (work / "jobs" / f"{j[0]}-{j[1]}" / "job.json").is_file()]
        running: list[tuple[subprocess.Popen[bytes], str]] = []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        while pending or running:
            while pending and len(running) < len(cores):
                free = next(c for c in cores if c not in {core for _, core in running})
                family, variant = pending.pop(0)
                log = work / "jobs" / f"{family}-{variant}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                command = ["taskset", "-c", free, sys.executable, __file__, "--work", str(work)]
                command += ["--minutes", str(args.minutes), "--size", str(args.size), "--job", family, variant]
                print(f"core {free}: {family} / {variant}", flush=True)
                with open(log, "wb") as handle:
                    running.append((subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT), free))
            time.sleep(2)
            for process, core in list(running):
                if process.poll() is not None:
                    running.remove((process, core))
                    if process.returncode:
                        print(f"a job on core {core} failed ({process.returncode}); see its log", flush=True)
    results: dict[str, Any] = {"machine": machine(), "minutes": args.minutes, "jobs": {}}
    rows = []
    for family in args.families:
        test_ids, truth = _read_truth(work / family / "test_truth.csv")
        compared: dict[str, np.ndarray] = {}
        for variant in args.variants:
            out = work / "jobs" / f"{family}-{variant}"
            if not (out / "job.json").is_file():
                continue
            info = json.loads((out / "job.json").read_text())
            val_truth, val, test = job_probabilities(out, variant, test_ids)
            own = json.loads((out / "thresholds.json").read_text()) if variant == "reference" else None
            rules, labels = score_rules(val_truth, val, truth, test, own)
            results["jobs"][f"{family}/{variant}"] = info | {"rules": rules}
            own = MAIN_RULE.get(variant, DEFAULT_RULE)
            compared[variant] = labels[own]
            if variant == "reference":
                compared["reference + protloc's rule"] = labels[DEFAULT_RULE]
            main_rule = rules[own]
            epochs = info.get("epochs")
            rows.append(
                [
                    family,
                    variant,
                    f"{epochs:.1f}" if isinstance(epochs, float) else str(epochs),
                    f"**{main_rule['macro_f1']:.3f}** ({own})",
                    f"{rules['fit']['macro_f1']:.3f}",
                    f"{rules['0.5 + at least one']['macro_f1']:.3f}",
                    f"{main_rule['micro_f1']:.3f}",
                    f"{main_rule['exact_match']:.3f}",
                ]
            )
        for baseline in ("reference", "levers"):  # against the plain script, and each lever against all of them
            if baseline in compared and len(compared) > 1:
                order = [baseline, *[k for k in compared if k != baseline]]
                boot = bootstrap_macro_f1(truth, {k: compared[k] for k in order})
                results.setdefault(f"bootstrap_vs_{baseline}", {})[family] = boot
    markdown = table(
        [
            "family",
            "variant",
            "epochs",
            "test macro F1 (its own rule)",
            "macro F1, each class fitted alone",
            "macro F1, 0.5 + at least one",
            "micro F1 (its rule)",
            "exact match (its rule)",
        ],
        rows,
    )
    for baseline in ("reference", "levers"):
        for family, boot in results.get(f"bootstrap_vs_{baseline}", {}).items():
            lines = [
                f"- {name}: {d['median']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], above the {baseline} in "
                f"{100 * d['share_above']:.0f}%"
                for name, d in ((n, v["minus_first"]) for n, v in boot.items() if "minus_first" in v)
            ]
            markdown += f"\n\n{family}: test macro F1 minus the {baseline}'s, median and 5-95% over 2,000 resamples "
            markdown += "of the test fields:\n\n" + "\n".join(lines)
    markdown += "\n\n" + rules_table(results["jobs"])
    save(args.results_name, results, markdown)


SHOWN_RULES = ("0.5", "0.5 + at least one", "fit", "fit, shrunk 10", "joint 0.5", "joint 1", "joint 0.5, shrunk 10")


def rules_table(jobs: dict[str, Any]) -> str:
    """Test macro F1 / micro F1 / exact match of every job under each decision rule (fitted on its validation
    split): what one rule buys against another, on the same networks."""
    rows = []
    for name, job in jobs.items():
        cells = []
        for rule in SHOWN_RULES:
            r = job["rules"][rule]
            cells.append(f"{r['macro_f1']:.3f} / {r['micro_f1']:.3f} / {r['exact_match']:.3f}")
        rows.append([name, *cells])
    return "Decision rules, test macro F1 / micro F1 / exact match:\n\n" + table(["job", *SHOWN_RULES], rows)


if __name__ == "__main__":
    main()
