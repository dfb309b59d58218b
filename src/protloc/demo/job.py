"""The main job, end to end: what ``make demo`` runs.

synthesize (or take a real HPA folder) -> check -> statistics -> train the default CPU model on fold 0 of a
5-fold stratified split -> fit thresholds -> evaluate -> predict the test set into a submission -> score it
against the synthetic test truth -> export ONNX -> one self-contained HTML report.

The time left after the data steps and the cache, less a reserve for what follows training, is the
training budget: it drives the learning rate (:mod:`protloc.training.budget`), so training ends at its deadline
with the rate annealed however fast the machine turns out to be, and the whole job takes about ``minutes``
(10 by default; ``quick`` is a one-minute version).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from protloc.errors import ConfigError, DataError

DEMO_EPOCH_CEILING = 60
"""at most this many epochs; the time budget normally ends training first."""

DEMO_ENTRIES = {"data", "stats", "run", "cache", "predictions", "cells", "cells-run", "cells-baseline", "report.html"}
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
    cell_share: float = 0.35
    """share of the training time given to the cell model (``protloc train --cells`` on the same fields, with the
    demo's field model; the demo's own data only); 0 = the report shows only the baseline (field labels to every
    cell)."""
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
                cell_share=self.cell_share,
                size=128,
                image_size=64,
                model=self.model,
                workers=self.workers,
                overwrite=self.overwrite,
            )
        if self.minutes <= 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")
        if not 0 <= self.cell_share < 1:
            raise ConfigError(f"cell_share must be in [0, 1), got {self.cell_share}")
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


@dataclass(frozen=True)
class DemoEvent:
    """What the demo tells its caller: a numbered step starts (``step``), ends (``done``, with ``seconds``), or a
    result line (``note``). Plain text; the CLI decides how it looks."""

    kind: Literal["step", "done", "note"]
    text: str
    step: int = 0
    seconds: float = 0.0


Listener = Callable[[DemoEvent], None]
Bars = Callable[[str], Any]


class Steps:
    """Numbers the steps, times them and tells the listener."""

    def __init__(self, on_event: Listener | None) -> None:
        self.on_event: Listener = on_event or (lambda event: None)
        self.seconds: dict[str, float] = {}
        self.count = 0

    @contextmanager
    def __call__(self, name: str, text: str) -> Iterator[None]:
        self.count += 1
        self.on_event(DemoEvent("step", text, self.count))
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.on_event(DemoEvent("done", f"done in {self.seconds[name]:.1f} s", self.count, self.seconds[name]))

    def note(self, text: str) -> None:
        self.on_event(DemoEvent("note", text, self.count))


@dataclass
class _Job:
    """One demo run's shared state, passed from chapter to chapter."""

    settings: DemoSettings
    steps: Steps
    bar: Bars
    started: float = field(default_factory=time.perf_counter)
    cell_seconds: float = 0.0
    """the cell model's training budget (set by the field model's step, which leaves it)."""

    @property
    def cells(self) -> bool:
        return self.settings.cell_fields > 0

    @property
    def out(self) -> Path:
        return self.settings.out


def run_demo(settings: DemoSettings, on_event: Listener | None = None, progress: Bars | None = None) -> DemoResult:
    """Run the whole main job into ``settings.out`` and return where everything is.

    Args:
        settings: see :class:`DemoSettings`.
        on_event: told of each step and result line (:class:`DemoEvent`); ``None`` runs silently.
        progress: ``progress(description)`` returns a context manager yielding an ``on_progress(done, total)``
            callback (the CLI passes its Rich progress bar); ``None`` shows no bars.
    """
    job = _Job(settings.resolved(), Steps(on_event), progress or _no_progress)
    _prepare_folder(job.settings)
    data = _data(job)
    _check(job, data)
    _statistics(job, data)
    result = _train(job, data)
    test_f1, submission, test_set = _predict_test(job, data, result.package_dir)
    cell_sections: list[tuple[str, str, str]] = []
    if job.cells and (data / "test").is_dir():
        cell_package = _cell_model(job, data)
        cell_sections = _single_cells(job, data, result.package_dir, cell_package)
    onnx_path = _export(job, result.package_dir)
    report_path = _report(job, data, test_set, cell_sections)
    job.steps.seconds["total"] = round(time.perf_counter() - job.started, 1)
    return DemoResult(
        out=job.out,
        report=report_path,
        validation_macro_f1=result.report.macro_f1,
        test_macro_f1=test_f1,
        submission=submission,
        onnx=onnx_path,
        seconds=dict(job.steps.seconds),
    )


def _prepare_folder(settings: DemoSettings) -> None:
    import shutil

    out = settings.out
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


def _data(job: _Job) -> Path:
    """1. the synthetic data set, unless the user brought a real one."""
    settings = job.settings
    if settings.data is not None:
        return settings.data
    from protloc.synth import make_dataset

    data = job.out / "data"
    with (
        job.steps(
            "synth",
            f"Synthesizing {settings.n_train} training + {settings.n_test} test fields of "
            f"{settings.size} px (Kaggle layout, real HPA label frequencies)",
        ),
        job.bar("synthesizing") as update,
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
    return data


def _check(job: _Job, data: Path) -> None:
    """2. every problem of the data set in one pass; the job stops on the first error."""
    from protloc.data.check import check_dataset

    with job.steps("check", f"Checking {data}"), job.bar("checking") as update:
        report = check_dataset(data, workers=job.settings.workers, on_progress=update)
    if not report.ok:
        first = report.errors[0].message
        raise DataError(f"{data}: {len(report.errors)} problems, e.g. {first}; run `protloc check {data}` for all")
    job.steps.note(f"{', '.join(f'{n} {s}' for s, n in report.samples.items())} samples, no problems")


def _statistics(job: _Job, data: Path) -> None:
    """3. class balance and pixel statistics, with pictures, for the report."""
    from protloc.data.catalog import open_dataset
    from protloc.data.stats import dataset_statistics, write_statistics

    with job.steps("stats", "Data set statistics and pictures"):
        catalog = open_dataset(data)
        stats = dataset_statistics(catalog, pixel_images=min(100, len(catalog)))
        write_statistics(stats, job.out / "stats", title="training set")
        _sample_pictures(catalog, job.out / "stats")
    top = np.argsort(stats.class_counts)[::-1][:3]
    names = stats.class_names
    job.steps.note(
        "commonest: "
        + ", ".join(f"{names[i]} {stats.class_counts[i]}" for i in top)
        + f"; rarest: {names[int(np.argmin(stats.class_counts))]} {min(stats.class_counts)}"
    )


def _train(job: _Job, data: Path) -> Any:
    """4. train: the cache first, so the budget that remains is all training; the budget then drives the
    learning rate (:mod:`protloc.training.budget`), which ends training by the deadline annealed. Epochs are a
    ceiling."""
    from protloc.data.cache import build_cache
    from protloc.data.catalog import open_dataset
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    settings = job.settings
    config = resolve_config(
        "cpu",
        overrides={
            "data": str(data),
            "out": str(job.out / "run"),
            "model": settings.model,
            "image_size": settings.image_size,
            "epochs": DEMO_EPOCH_CEILING,
            "seed": settings.seed,
            "cache_dir": str(job.out / "cache"),
            "workers": settings.workers,
        },
    )
    with (
        job.steps("cache", f"Decoding every training field once into a {config.stored_size} px cache"),
        job.bar("caching") as update,
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
    budget = settings.minutes * 60.0
    elapsed = time.perf_counter() - job.started
    # after training: calibration on the validation fold, test prediction, export, report (+ margin)
    reserve = max(40.0, 0.08 * budget) if not settings.quick else 15.0
    train_budget = max(30.0, budget - elapsed - reserve)
    # the cell model gets its share on the demo's own data (a real download of 31,000 fields would spend the
    # whole budget segmenting them; there the report shows the baseline)
    if job.cells and settings.cell_share > 0 and settings.data is None and (data / "test").is_dir():
        job.cell_seconds = train_budget * settings.cell_share
        train_budget -= job.cell_seconds
    config = replace(config, max_time=f"{train_budget / 60:.3f}")
    with (
        job.steps(
            "train",
            f"Training {settings.model} at {settings.image_size} px on fold 0 of 5 for {train_budget / 60:.1f} min "
            f"(the learning rate follows the clock and is annealed at the deadline; at most {config.epochs} epochs)",
        ),
        job.bar("caching") as update,
    ):
        result = train(config, overwrite=True, on_cache_progress=update)
    assert result is not None
    gain = result.threshold_gain
    job.steps.note(
        f"validation macro F1 {result.report.macro_f1:.3f} with per-class thresholds "
        f"({gain['gain_cv']:+.3f} vs one 0.5 threshold, cross-validated); best epoch {result.best_epoch + 1}"
    )
    return result


def _predict_test(job: _Job, data: Path, package: Path) -> tuple[float | None, Path | None, Any]:
    """5. predict the test set into a submission; score it against the synthetic truth when there is one."""
    from protloc.data.catalog import open_dataset
    from protloc.demo.report import TestSet
    from protloc.inference.predict import predict_folder
    from protloc.metrics import evaluate

    if not (data / "test").is_dir():
        return None, None, None
    with job.steps("predict", "Predicting the test set into a Kaggle submission"), job.bar("predicting") as update:
        prediction = predict_folder(
            package, data, job.out / "predictions", workers=job.settings.workers, on_progress=update
        )
    assert prediction is not None
    submission = prediction.written.get("submission")
    truth_file = data / "test_truth.csv"
    if not truth_file.is_file():
        return None, submission, None
    truth_catalog = open_dataset(data, split="test", labels=truth_file)
    assert truth_catalog.labels is not None
    order = [prediction.ids.index(i) for i in truth_catalog.ids]
    probabilities = prediction.probabilities[order]
    test_report = evaluate(
        truth_catalog.labels,
        probabilities,
        prediction.thresholds,
        prediction.scheme.names,
        min_one=True,
        exclusive=prediction.scheme.exclusive,
    )
    test_set = TestSet(
        ids=truth_catalog.ids,
        truth=truth_catalog.labels,
        probabilities=probabilities,
        predicted=prediction.labels[order],
        report=test_report,
        files=truth_catalog.files,
    )
    job.steps.note(
        f"test macro F1 {test_report.macro_f1:.3f} over {test_report.classes_scored} classes "
        f"({test_report.n_samples} images, scored against test_truth.csv)"
    )
    return test_report.macro_f1, submission, test_set


def _export(job: _Job, package: Path) -> Path:
    """6. ONNX, checked against PyTorch."""
    from protloc.deployment.onnx import export_onnx

    with job.steps("export", "Exporting ONNX and checking it against PyTorch"):
        exported = export_onnx(package)
    job.steps.note(f"{exported.path}: max |ONNX Runtime - PyTorch| = {exported.max_abs_diff:.1e}")
    return exported.path


def _report(job: _Job, data: Path, test_set: Any, cell_sections: list[tuple[str, str, str]]) -> Path:
    """7. the single-file HTML report."""
    from protloc.demo.report import write_report

    settings = job.settings
    with job.steps("report", "Writing the HTML report"):
        timings = dict(job.steps.seconds)
        timings["total"] = round(time.perf_counter() - job.started, 1)
        notes = [
            f"Synthetic HPA-like data ({settings.n_train} + {settings.n_test} fields of {settings.size} px) "
            "made by protloc's generator."
            if settings.data is None
            else f"Data: {data}"
        ]
        return write_report(
            job.out / "report.html",
            job.out / "run",
            title="protloc demo",
            stats_dir=job.out / "stats",
            test=test_set,
            timings=timings,
            notes=notes,
            extra_sections=cell_sections,
        )


def _cell_model(job: _Job, data: Path) -> Path | None:
    """6. a cell model from the same fields' labels (``protloc train --cells`` with the demo's field model:
    segment, crops, cell model, fusion), in the time the field model's step left."""
    from protloc.training.cells import CellPipelineSettings, train_cells

    settings = job.settings
    if job.cell_seconds <= 0:
        return None
    pipeline = CellPipelineSettings(
        data=str(data),
        out=str(job.out / "cells-run"),
        max_time=f"{job.cell_seconds / 60:.3f}",
        field_run=str(job.out / "run"),
        field_size=settings.image_size,
        crop_size=max(32, min(64, settings.size // 4)),
        cell_model=settings.model,
        seed=settings.seed,
        workers=settings.workers,
        cache_dir=str(job.out / "cache"),
    )
    with (
        job.steps(
            "cell model",
            f"Training a cell model from the fields' labels for {job.cell_seconds / 60:.1f} min (segment every "
            "training field, cut the cells, train on the crops with their field's labels, fit the thresholds)",
        ),
        job.bar("cell model") as update,
    ):
        result = train_cells(
            pipeline,
            on_progress=lambda p: update(int(1000 * (p.number - 1 + p.done / max(p.total, 1e-9)) / p.stages), 1000),
        )
    job.steps.note(f"{result.package_dir} (fusion: {result.fusion.describe()})")
    return result.package_dir


def _single_cells(job: _Job, data: Path, package: Path, cell_package: Path | None) -> list[tuple[str, str, str]]:
    """The first test fields cell by cell: the cell model's package and the baseline (its field model's labels to
    every cell) on the same cells; the report's single-cell section."""
    from protloc.cells.outputs import MASKS_DIR, evaluate_cells, predict_cells
    from protloc.cells.predict import open_cell_predictor
    from protloc.cells.report import cells_section_html
    from protloc.cells.truth import truth_folder
    from protloc.data.catalog import open_dataset

    ids = open_dataset(data, split="test", channels=None).ids[: job.settings.cell_fields]
    baseline = ("baseline: field labels to every cell", open_cell_predictor(field_model=package))
    if cell_package is None:
        runs = [(*baseline, "cells")]
        text = "the field model's labels to every cell"
    else:
        runs = [("cell model", open_cell_predictor(cell_package), "cells"), (*baseline, "cells-baseline")]
        text = "the cell model and the baseline"
    scored: list[tuple[str, Any, Any]] = []
    with job.steps("cells", f"Single cells: segmenting {len(ids)} test fields, {text}"):
        masks: Path | None = None
        for name, predictor, folder in runs:
            summary = predict_cells(predictor, data, job.out / folder, split="test", ids=ids, masks=masks, pictures=2)
            masks = masks or summary.out / MASKS_DIR  # the same cells for every method
            try:
                evaluation = evaluate_cells(summary.out, truth_folder(data, "test"))
            except DataError:  # real data: no per-cell truth
                evaluation = None
            scored.append((name, summary, evaluation))
    for name, summary, evaluation in scored:
        value = f"; per-cell mAP {evaluation.map:.3f} (2021 metric)" if evaluation is not None else ""
        job.steps.note(f"{name}: {summary.cells} cells ({summary.method}){value}")
    summary, evaluation = scored[0][1], scored[0][2]
    others = [(name, e) for name, _, e in scored if e is not None]
    html = cells_section_html(summary.out, evaluation=evaluation, compare=others)
    if cell_package is not None:
        html = _cell_budget_note(cell_package) + html
    return [("cells", f"Single cells: {summary.cells} cells of {summary.fields} test fields", html)]


def _cell_budget_note(cell_package: Path) -> str:
    """What the demo's cell model had: a short budget, so the report does not pass it off as the method's best."""
    import html

    from protloc.model.card import read_card

    training = read_card(cell_package).training
    seconds, epochs, crops = training.get("fit_seconds"), training.get("epochs_run"), training.get("n_samples")
    if seconds is None:
        return ""
    text = (
        f"The cell model trained for {float(seconds):.0f} s ({epochs} epoch(s) over {crops} crops) inside this "
        "demo's budget, so it may score below the baseline here; BENCHMARKS.md ('Single cells') measures the same "
        "pipeline at a 20-minute budget on another generator's fields, where it beats even the true field labels "
        "copied to every cell."
    )
    return f"<p>{html.escape(text)}</p>"


@contextmanager
def _no_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    yield lambda done, total: None


def _sample_pictures(catalog: Any, folder: Path, count: int = 2) -> None:
    from protloc.data.io import CHANNELS, read_sample
    from protloc.plots import sample_figure, save_figure

    for index in range(min(count, len(catalog))):
        sample_id = catalog.ids[index]
        image = read_sample(catalog.paths(index), CHANNELS, sample_id=sample_id)
        labels = ", ".join(catalog.scheme.names_of(catalog.labels[index])) if catalog.labels is not None else ""
        save_figure(sample_figure(image, CHANNELS, title=sample_id, label_text=labels), folder / f"sample_{index}.png")
