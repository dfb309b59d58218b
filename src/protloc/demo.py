"""The main job, end to end: what ``make demo`` runs.

synthesize (or take a real HPA folder) -> check -> statistics -> train the default CPU model on fold 0 of a
5-fold stratified split -> fit thresholds -> evaluate -> predict the test set into a submission -> score it
against the synthetic test truth -> export ONNX -> one self-contained HTML report.

The time left after the data steps and the cache, less a reserve for what follows training, is the
training budget: it drives the learning rate (:mod:`protloc.budget`), so training ends at its deadline
with the rate annealed however fast the machine turns out to be, and the whole job takes about ``minutes``
(10 by default; ``quick`` is a one-minute version).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from protloc.errors import ConfigError, DataError

DEMO_EPOCH_CEILING = 60
"""at most this many epochs; the time budget normally ends training first."""

DEMO_ENTRIES = {"data", "stats", "run", "cache", "predictions", "cells", "report.html"}
"""What a demo writes into its folder; a folder holding anything else is never deleted."""


@dataclass
class DemoSettings:
    """What the demo does; the defaults are the ~10-minute run on a 2-core CPU."""

    out: Path = Path("demo")
    data: Path | None = None
    quick: bool = False
    minutes: float = 10.0
    seed: int = 0
    n_train: int = 2400
    n_test: int = 400
    cell_fields: int = 12
    """test fields predicted cell by cell for the report's single-cell section (0 = none)."""
    size: int = 256
    image_size: int = 128
    model: str = "resnet18"
    workers: int | None = None
    overwrite: bool = True

    def resolved(self) -> DemoSettings:
        if self.quick:
            return DemoSettings(
                out=self.out,
                data=self.data,
                quick=True,
                minutes=1.0,
                seed=self.seed,
                n_train=400,
                n_test=100,
                cell_fields=4,
                size=128,
                image_size=64,
                model=self.model,
                workers=self.workers,
                overwrite=self.overwrite,
            )
        if self.minutes <= 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")
        return self


@dataclass
class DemoResult:
    out: Path
    report: Path
    validation_macro_f1: float
    test_macro_f1: float | None
    submission: Path | None
    onnx: Path | None
    seconds: dict[str, float] = field(default_factory=dict)


class Steps:
    """Prints numbered steps with their duration; collects timings."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.seconds: dict[str, float] = {}
        self.count = 0

    @contextmanager
    def __call__(self, name: str, text: str) -> Iterator[None]:
        self.count += 1
        self.say(f"[bold cyan]{self.count}. {escape(text)}[/]")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.say(f"   [dim]done in {self.seconds[name]:.1f} s[/]")


def run_demo(
    settings: DemoSettings, say: Callable[[str], None] = print, progress: Callable[[str], Any] | None = None
) -> DemoResult:
    """Run the whole main job into ``settings.out`` and return where everything is.

    Args:
        settings: see :class:`DemoSettings`.
        say: prints a line (Rich markup allowed).
        progress: ``progress(description)`` returns a context manager yielding an ``on_progress(done, total)``
            callback (the CLI passes its Rich progress bar); ``None`` shows no bars.
    """
    import shutil

    from protloc.check import check_dataset
    from protloc.config import resolve_config
    from protloc.stats import dataset_statistics, write_statistics
    from protloc.train import train

    settings = settings.resolved()
    out = settings.out
    started = time.perf_counter()
    budget = settings.minutes * 60.0
    steps = Steps(say)
    bar = progress or _no_progress
    if settings.data is not None and not settings.data.exists():
        raise DataError(f"{settings.data}: not found; see the README (Real data) for downloading the HPA images")
    if out.exists() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES)
        if foreign or not settings.overwrite:
            raise ConfigError(
                f"{out}: holds other files than a previous demo's (e.g. {foreign[0] if foreign else out}); "
                "choose another --out"
            )
        shutil.rmtree(out)  # a previous demo's output: replaced
    out.mkdir(parents=True, exist_ok=True)

    # 1. data
    if settings.data is None:
        from protloc.synth import make_dataset

        data = out / "data"
        with (
            steps(
                "synth",
                f"Synthesizing {settings.n_train} training + {settings.n_test} test fields of "
                f"{settings.size} px (Kaggle layout, real HPA label frequencies)",
            ),
            bar("synthesizing") as update,
        ):
            make_dataset(
                data,
                n_train=settings.n_train,
                n_test=settings.n_test,
                size=settings.size,
                seed=settings.seed,
                min_per_class=max(3, settings.n_train // 200),
                workers=settings.workers,
                on_progress=update,
                cells=settings.cell_fields > 0,
            )
    else:
        data = settings.data

    # 2. check
    with steps("check", f"Checking {data}"), bar("checking") as update:
        report = check_dataset(data, workers=settings.workers, on_progress=update)
    if not report.ok:
        first = report.errors[0].message
        raise DataError(f"{data}: {len(report.errors)} problems, e.g. {first}; run `protloc check {data}` for all")
    say(f"   {', '.join(f'{n} {s}' for s, n in report.samples.items())} samples, no problems")

    # 3. statistics
    with steps("stats", "Data set statistics and pictures"):
        from protloc.catalog import open_dataset

        catalog = open_dataset(data)
        stats = dataset_statistics(catalog, pixel_images=min(100, len(catalog)))
        write_statistics(stats, out / "stats", title="training set")
        _sample_pictures(catalog, out / "stats")
    top = np.argsort(stats.class_counts)[::-1][:3]
    names = stats.class_names
    say(
        "   commonest: "
        + ", ".join(f"{names[i]} {stats.class_counts[i]}" for i in top)
        + f"; rarest: {names[int(np.argmin(stats.class_counts))]} {min(stats.class_counts)}"
    )

    # 4. train: the cache first, so the budget that remains is all training; the budget then drives the
    # learning rate (protloc.budget), which ends training by the deadline annealed. Epochs are a ceiling.
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(data),
            "out": str(out / "run"),
            "model": settings.model,
            "image_size": settings.image_size,
            "epochs": DEMO_EPOCH_CEILING,
            "seed": settings.seed,
            "cache_dir": str(out / "cache"),
            "workers": settings.workers,
        },
    )
    from protloc.cache import build_cache

    with (
        steps("cache", f"Decoding every training field once into a {config.stored_size} px cache"),
        bar("caching") as update,
    ):
        train_catalog = open_dataset(data, split=config.split, labels=config.labels, channels=config.channels)
        build_cache(
            train_catalog,
            config.channels,
            config.stored_size,
            cache_dir=config.cache_dir,
            bit_depth=config.bit_depth,
            workers=config.workers,
            on_progress=update,
        )
    elapsed = time.perf_counter() - started
    # after training: calibration on the validation fold, test prediction, export, report (+ margin)
    reserve = max(40.0, 0.08 * budget) if not settings.quick else 15.0
    train_budget = max(30.0, budget - elapsed - reserve)
    config = replace(config, max_time=f"{train_budget / 60:.3f}")
    with (
        steps(
            "train",
            f"Training {settings.model} at {settings.image_size} px on fold 0 of 5 for {train_budget / 60:.1f} min "
            f"(the learning rate follows the clock and is annealed at the deadline; at most {config.epochs} epochs)",
        ),
        bar("caching") as update,
    ):
        result = train(config, overwrite=True, on_cache_progress=update)
    assert result is not None
    gain = result.threshold_gain
    say(
        f"   validation macro F1 [bold]{result.report.macro_f1:.3f}[/] with per-class thresholds "
        f"({gain['gain_cv']:+.3f} vs one 0.5 threshold, cross-validated); best epoch {result.best_epoch + 1}"
    )

    # 5. predict the test set, score it against the synthetic truth
    from protloc.predict import predict_folder

    submission: Path | None = None
    test_set = None
    test_f1: float | None = None
    if (data / "test").is_dir():
        with steps("predict", "Predicting the test set into a Kaggle submission"), bar("predicting") as update:
            prediction = predict_folder(
                result.package_dir, data, out / "predictions", workers=settings.workers, on_progress=update
            )
        assert prediction is not None
        submission = prediction.written.get("submission")
        truth_file = data / "test_truth.csv"
        if truth_file.is_file():
            from protloc.catalog import open_dataset as open_split
            from protloc.metrics import evaluate
            from protloc.report import TestSet

            truth_catalog = open_split(data, split="test", labels=truth_file)
            assert truth_catalog.labels is not None
            order = [prediction.ids.index(i) for i in truth_catalog.ids]
            probabilities = prediction.probabilities[order]
            predicted = prediction.labels[order]
            test_report = evaluate(truth_catalog.labels, probabilities, prediction.thresholds, min_one=True)
            test_f1 = test_report.macro_f1
            test_set = TestSet(
                ids=truth_catalog.ids,
                truth=truth_catalog.labels,
                probabilities=probabilities,
                predicted=predicted,
                report=test_report,
                files=truth_catalog.files,
            )
            say(
                f"   test macro F1 [bold]{test_report.macro_f1:.3f}[/] over {test_report.classes_scored} classes "
                f"({test_report.n_samples} images, scored against test_truth.csv)"
            )

    # 5b. single cells: segment a few test fields, give each cell its field's labels (the baseline), score
    cell_sections: list[tuple[str, str, str]] = []
    if settings.cell_fields > 0 and (data / "test").is_dir():
        cell_sections = _single_cells(settings, data, out, result.package_dir, steps, say)

    # 6. ONNX
    onnx_path: Path | None = None
    with steps("export", "Exporting ONNX and checking it against PyTorch"):
        from protloc.export import export_onnx

        exported = export_onnx(result.package_dir)
        onnx_path = exported.path
    say(f"   {escape(str(onnx_path))}: max |ONNX Runtime - PyTorch| = {exported.max_abs_diff:.1e}")

    # 7. report
    with steps("report", "Writing the HTML report"):
        from protloc.report import write_report

        timings = dict(steps.seconds)
        timings["total"] = round(time.perf_counter() - started, 1)
        notes = [
            f"Synthetic HPA-like data ({settings.n_train} + {settings.n_test} fields of {settings.size} px) "
            "made by protloc's generator."
            if settings.data is None
            else f"Data: {data}"
        ]
        report_path = write_report(
            out / "report.html",
            out / "run",
            title="protloc demo",
            stats_dir=out / "stats",
            test=test_set,
            timings=timings,
            notes=notes,
            extra_sections=cell_sections,
        )
    total = time.perf_counter() - started
    steps.seconds["total"] = round(total, 1)
    return DemoResult(
        out=out,
        report=report_path,
        validation_macro_f1=result.report.macro_f1,
        test_macro_f1=test_f1,
        submission=submission,
        onnx=onnx_path,
        seconds=dict(steps.seconds),
    )


def _single_cells(
    settings: DemoSettings, data: Path, out: Path, package: Path, steps: Steps, say: Callable[[str], None]
) -> list[tuple[str, str, str]]:
    """Per-cell baseline on the first test fields; the report's single-cell section."""
    from protloc.catalog import open_dataset
    from protloc.cells.outputs import evaluate_cells, predict_cells
    from protloc.cells.predict import open_cell_predictor, scaled_segmenter_options
    from protloc.cells.report import cells_section_html
    from protloc.cells.truth import truth_folder

    ids = open_dataset(data, split="test", channels=None).ids[: settings.cell_fields]
    options = scaled_segmenter_options(settings.size) if settings.data is None else {}
    with steps("cells", f"Single cells: segmenting {len(ids)} test fields, the field model's labels to every cell"):
        predictor = open_cell_predictor(field_model=package, segmenter_options=options)
        summary = predict_cells(predictor, data, out / "cells", split="test", ids=ids, pictures=2)
        try:
            evaluation = evaluate_cells(summary.out, truth_folder(data, "test"))
        except DataError:  # real data: no per-cell truth
            evaluation = None
    scored = f"; per-cell mAP {evaluation.map:.3f} (2021 metric)" if evaluation is not None else ""
    say(f"   {summary.cells} cells ({summary.method}){scored}")
    html = cells_section_html(summary.out, evaluation=evaluation)
    return [("cells", f"Single cells: {summary.cells} cells of {summary.fields} test fields", html)]


@contextmanager
def _no_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    yield lambda done, total: None


def _sample_pictures(catalog: Any, folder: Path, count: int = 2) -> None:
    from protloc.io import CHANNELS, read_sample
    from protloc.plots import sample_figure, save_figure

    for index in range(min(count, len(catalog))):
        sample_id = catalog.ids[index]
        image = read_sample(catalog.paths(index), CHANNELS, sample_id=sample_id)
        labels = ", ".join(catalog.scheme.names_of(catalog.labels[index])) if catalog.labels is not None else ""
        save_figure(sample_figure(image, CHANNELS, title=sample_id, label_text=labels), folder / f"sample_{index}.png")
