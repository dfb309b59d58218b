"""The ``protloc`` command line: thin Typer commands over library functions.

Each command parses its flags, calls one function of the library, and prints a short Rich summary. Heavy
imports (torch, Lightning, ONNX Runtime) happen inside the commands that need them, so ``protloc --help``
and the data commands stay fast. A :class:`~protloc.errors.ProtlocError` ends the command with one red line
and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from protloc import __version__
from protloc.errors import STORAGE_ERRNOS, ProtlocError, storage_error

app = typer.Typer(
    name="protloc",
    help="Where in a human cell does a protein live? Train, evaluate and serve multi-label localization "
    "models on 4-channel fluorescence microscopy (Human Protein Atlas).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(highlight=False, soft_wrap=True)
CLASSES_OPTION = typer.Option(
    "--classes",
    help="Class scheme of the labels: hpa2018, hpa2021, subcell31 or a scheme file (.json/.txt); "
    "found from the labels file when not given.",
)
CHANNEL_MAP_OPTION = typer.Option(
    "--channel-map",
    help="Roles of a microscope file's channels (OME-TIFF, CZI, ND2, LIF), by name or index: "
    "DAPI=blue,Tubulin=red,Ab=green,ER=yellow; found from the channel names when not given.",
)
MAP_FROM_OPTION = typer.Option(
    "--map-from",
    help="Read the labels in this scheme and fold them into --classes (documented: hpa2018 -> hpa2021).",
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar with count, elapsed time and ETA; yields an ``on_progress(done, total)`` callback."""
    with progress_bars(description) as (update,):
        yield update


@contextmanager
def progress_bars(*descriptions: str) -> Iterator[tuple[Callable[[int, int], None], ...]]:
    """Several Rich progress bars in one display; yields one ``on_progress(done, total)`` callback per bar."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("•"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as progress:

        def bar(description: str) -> Callable[[int, int], None]:
            task = progress.add_task(description, total=None)

            def update(done: int, of: int) -> None:
                progress.update(task, completed=done, total=of)

            return update

        yield tuple(bar(d) for d in descriptions)


def _version(value: bool) -> None:
    if value:
        console.print(f"protloc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """protloc: protein localization from fluorescence microscopy."""


# ----------------------------------------------------------------------------------------------- data


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (Kaggle layout).")],
    n_train: Annotated[int, typer.Option("--n-train", help="Training samples.")] = 1000,
    n_test: Annotated[int, typer.Option("--n-test", help="Test samples (truth in test_truth.csv).")] = 200,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    min_per_class: Annotated[
        int, typer.Option("--min-per-class", help="At least this many training images of every class.")
    ] = 0,
    image_format: Annotated[str, typer.Option("--format", help="png, tif or jpg.")] = "png",
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16 (png/tif).")] = 8,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPUs).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    cells: Annotated[
        bool, typer.Option("--cells", help="Also write single-cell truth (label images, per-cell classes).")
    ] = False,
) -> None:
    """Write a synthetic HPA-like data set in the Kaggle layout (train.csv, train/, test/, sample_submission.csv)."""
    from protloc.synth import make_dataset

    with progress_bar("synthesizing") as update:
        summary = make_dataset(
            out,
            n_train=n_train,
            n_test=n_test,
            size=size,
            seed=seed,
            min_per_class=min_per_class,
            image_format=image_format,
            bit_depth=bit_depth,
            workers=workers,
            overwrite=overwrite,
            on_progress=update,
            cells=cells,
        )
    if cells:
        console.print(f"single-cell truth: {summary.cells} cells in train_cells_truth/ and test_cells_truth/")
    rate = (summary.n_train + summary.n_test) / max(summary.seconds, 1e-9)
    console.print(
        f"wrote {summary.n_train} train + {summary.n_test} test samples of {summary.size}x{summary.size} px to "
        f"{escape(str(summary.out))} in {summary.seconds:.1f} s ({rate:.0f} samples/s)"
    )


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Kaggle root, labels CSV, or folder of channel images.")],
    channels: Annotated[str, typer.Option(help="Channels every sample must have (e.g. rgby, green).")] = "rgby",
    quick: Annotated[bool, typer.Option(help="Read image headers only (skips corrupt-pixel detection).")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPUs).")] = None,
    show: Annotated[int, typer.Option(help="Problems listed per kind (all are counted).")] = 20,
    out: Annotated[Path | None, typer.Option(help="Also write every problem to this CSV.")] = None,
    classes: Annotated[str | None, CLASSES_OPTION] = None,
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
) -> None:
    """Validate a data set in one pass and list every problem with its Id; exit 1 if anything is wrong."""
    from protloc.check import check_dataset, write_problems
    from protloc.io import parse_channels

    with progress_bar("reading images") as update:
        report = check_dataset(
            data,
            channels=parse_channels(channels),
            decode=not quick,
            workers=workers,
            on_progress=update,
            scheme=classes,
            channel_map=channel_map,
        )
    for split, scheme in report.schemes.items():
        console.print(f"{escape(split)}: labels in class scheme {escape(scheme.describe())}")
    if out is not None:
        write_problems(report, out)
    shown: dict[str, int] = {}
    for problem in report.problems:
        shown[problem.kind] = shown.get(problem.kind, 0) + 1
        if shown[problem.kind] <= show:
            style = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{style}]{problem.severity}[/] [bold]{problem.kind}[/]: {escape(problem.message)}")
    samples = ", ".join(f"{n} {split}" for split, n in report.samples.items()) or "no"
    if report.problems:
        table = Table(title="problems by kind", show_edge=False)
        table.add_column("kind")
        table.add_column("count", justify="right")
        table.add_column("severity")
        for kind, count in sorted(report.counts().items(), key=lambda kv: -kv[1]):
            severity = next(p.severity for p in report.problems if p.kind == kind)
            table.add_row(kind, str(count), severity)
        console.print(table)
        hidden = sum(max(0, n - show) for n in shown.values())
        if hidden:
            console.print(f"({hidden} more not listed; use --show or --out to see all)")
    if report.ok:
        note = f" with {len(report.warnings)} warnings" if report.warnings else ""
        console.print(f"[green]OK[/]: {escape(samples)} samples checked{note}")
        return
    err_console.print(
        f"[red]error:[/] {len(report.errors)} problems in {escape(str(data))} ({escape(samples)} samples checked)"
    )
    raise typer.Exit(1)


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["work_side=768", "weights=cyto3"]`` -> ``{"work_side": 768, "weights": "cyto3"}`` (numbers parsed)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ProtlocError(f"option {pair!r} must look like KEY=VALUE")
        value: Any = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        options[key.strip().replace("-", "_")] = value
    return options


@app.command()
def segment(
    data: Annotated[Path, typer.Argument(help="Kaggle root, labels CSV, or folder of channel images.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for <Id>_cells.png and cells.csv (default: <images>_cells).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a Kaggle root.")] = "train",
    segmenter: Annotated[
        str,
        typer.Option(help="classical (no weights), or a learned one installed with its weights: cellpose, hpacellseg."),
    ] = "classical",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="Segmenter setting KEY=VALUE, repeatable (work_side=768, channels=blue,red; "
            "weights=PATH for cellpose; "
            "nuclei_weights=PATH and cell_weights=PATH for hpacellseg).",
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPUs).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Segment fields again even when their labels exist.")] = False,
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="Significant bits of 16-bit files.")] = 16,
) -> None:
    """Segment each field into cells: label images (16-bit PNG, 0 = background) and a per-cell table."""
    from protloc.cells.runner import segment_dataset

    with progress_bar("segmenting") as update:
        summary = segment_dataset(
            data,
            out,
            split=split,
            segmenter=segmenter,
            options=_parse_options(option or []),
            workers=workers,
            overwrite=overwrite,
            bit_depth=bit_depth,
            on_progress=update,
        )
    reused = summary.fields - summary.segmented
    note = f" ({reused} already done)" if reused else ""
    console.print(
        f"segmented {summary.fields} fields{note}: {summary.cells} cells "
        f"({summary.cells / max(summary.fields, 1):.1f} per field, {summary.border_cells} cut by the border) "
        f"in {summary.seconds:.1f} s"
    )
    console.print(escape(f"wrote {summary.out} (label images, {summary.table.name}, segmentation.json)"))


@app.command("cell-data")
def cell_data(
    data: Annotated[Path, typer.Argument(help="Field data set with labels: Kaggle root or labels CSV.")],
    out: Annotated[Path, typer.Argument(help="Folder for the cell data set (train.csv, train/, folds.csv).")],
    masks: Annotated[Path, typer.Option(help="Label images <Id>_cells.png (protloc segment, or a truth folder).")],
    labels: Annotated[
        str, typer.Option(help="field (weak: every cell gets its field's labels) or cells (per-cell truth).")
    ] = "field",
    truth: Annotated[
        Path | None, typer.Option(help="Per-cell truth folder for --labels cells (default: --masks).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a Kaggle root.")] = "train",
    size: Annotated[int, typer.Option(help="Crop side in px.")] = 64,
    padding: Annotated[float, typer.Option(help="Margin around each cell's box, fraction of its side.")] = 0.05,
    folds: Annotated[int, typer.Option(help="Folds by field written to folds.csv.")] = 5,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it holds a cell data set.")] = False,
) -> None:
    """Cut every cell into a masked, centred crop: a data set of cells that `protloc train` turns into a cell model."""
    from protloc.cells.dataset import make_cell_dataset

    with progress_bar("cutting cells") as update:
        summary = make_cell_dataset(
            data,
            out,
            masks=masks,
            labels=labels,
            truth=truth,
            split=split,
            size=size,
            padding=padding,
            n_folds=folds,
            overwrite=overwrite,
            on_progress=update,
        )
    skipped = f" ({summary.skipped} left out)" if summary.skipped else ""
    console.print(
        f"{summary.cells} cells of {summary.fields} fields{skipped} as {summary.size} px crops in "
        f"{summary.seconds:.1f} s: {escape(str(summary.out))}; train a cell model with "
        f"`protloc train {escape(str(summary.out))} --image-size {summary.size}`"
    )


@app.command()
def stats(
    data: Annotated[Path, typer.Argument(help="Kaggle root or labels CSV.")],
    out: Annotated[Path, typer.Option(help="Folder for the tables and figures.")] = Path("stats"),
    split: Annotated[str, typer.Option(help="Split of a Kaggle root.")] = "train",
    labels: Annotated[Path | None, typer.Option(help="Labels CSV overriding the layout's.")] = None,
    pixel_images: Annotated[int, typer.Option(help="Images sampled for pixel statistics (0 = skip).")] = 200,
    classes: Annotated[str | None, CLASSES_OPTION] = None,
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
) -> None:
    """Class distribution, labels per image, co-occurrence and pixel statistics: a table plus PNG figures."""
    from protloc.catalog import open_dataset
    from protloc.stats import dataset_statistics, write_statistics

    catalog = open_dataset(data, split=split, labels=labels, channels=None, scheme=classes, channel_map=channel_map)
    names = catalog.scheme.names
    with progress_bar("pixel statistics") as update:
        result = dataset_statistics(catalog, pixel_images=pixel_images, on_progress=update)
    written = write_statistics(result, out, title=catalog.name)
    table = Table(title=f"{catalog.name}: {result.n_images} images, {catalog.scheme.describe()}", show_edge=False)
    for column, justify in (("id", "right"), ("class", "left"), ("images", "right"), ("share", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    order = sorted(range(len(names)), key=lambda i: -result.class_counts[i])
    for class_id in order:
        count = result.class_counts[class_id]
        table.add_row(str(class_id), names[class_id], str(count), f"{100 * count / result.n_images:.2f}%")
    console.print(table)
    per_image = ", ".join(f"{k}: {v}" for k, v in sorted(result.labels_per_image.items()))
    console.print(f"labels per image: {per_image}")
    for channel, values in result.channels.items():
        console.print(
            f"{channel:>6}: mean {values.mean:6.2f}, zeros {values.fraction_zero:6.1%}, "
            f"p99 {values.percentiles['99']:.0f} ({values.n_images} images)"
        )
    console.print(escape("wrote " + ", ".join(str(p) for p in written.values())))


@app.command()
def show(
    data: Annotated[Path, typer.Argument(help="Kaggle root, labels CSV, or folder of channel images.")],
    sample_id: Annotated[str, typer.Argument(metavar="ID", help="The sample's Id.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("sample.png"),
    split: Annotated[str | None, typer.Option(help="Split to look in (default: train, then test).")] = None,
    channels: Annotated[str, typer.Option(help="Channels to show, in order.")] = "rgby",
) -> None:
    """Draw one sample: the composite (yellow mixed in as in HPA's viewer) and each channel, with its labels."""
    from protloc.catalog import locate_sample
    from protloc.io import parse_channels, read_sample
    from protloc.plots import sample_figure, save_figure

    chosen = parse_channels(channels)
    found, index = locate_sample(data, sample_id, split=split)
    image = read_sample(found.paths(index), chosen, sample_id=sample_id)
    labels = found.labels
    label_text = ", ".join(found.scheme.names_of(labels[index])) if labels is not None else "(no labels)"
    save_figure(sample_figure(image, chosen, title=sample_id, label_text=label_text), out)
    console.print(escape(f"wrote {out}: {sample_id} ({label_text})"))


# ------------------------------------------------------------------------------------------ training


def _print_report(report: Any, title: str) -> None:
    table = Table(title=title, show_edge=False)
    for column in ("id", "class", "support", "precision", "recall", "F1", "threshold"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in sorted(report.per_class, key=lambda r: -r.support):
        f1 = "-" if row.f1 is None else f"{row.f1:.3f}"
        table.add_row(
            str(row.class_id),
            row.name,
            str(row.support),
            f"{row.precision:.3f}",
            f"{row.recall:.3f}",
            f1,
            f"{row.threshold:.2f}",
        )
    console.print(table)
    console.print(
        f"[bold]macro F1 {report.macro_f1:.4f}[/] over {report.classes_scored} classes present "
        f"(at 0.5 for every class: {report.macro_f1_at_0_5:.4f}); micro F1 {report.micro_f1:.4f}; "
        f"exact match {report.exact_match:.3f}; {report.n_samples} images"
    )


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Kaggle root (train.csv + train/) or a labels CSV.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<recipe>-fold<k>).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of settings; flags override it.")] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="cpu (resnet18, 128 px), gpu (densenet121, 512 px) or seed (the seed notebook's CNN, BCE, 0.5); "
            "default: gpu when CUDA is available, else cpu."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Any timm model name, or seed-cnn.")] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights (needs the network)."),
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Network input side in px.")] = None,
    cache_size: Annotated[
        int | None, typer.Option(help="Side stored in the cache (> image size: random crops).")
    ] = None,
    channels: Annotated[str | None, typer.Option(help="Channels and order: rgby, rgb, green, ...")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (per device).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    loss: Annotated[str | None, typer.Option(help="focal or bce.")] = None,
    focal_gamma: Annotated[float | None, typer.Option(help="Focal loss gamma.")] = None,
    pos_weight: Annotated[str | None, typer.Option(help="none, sqrt-inverse or inverse class weights.")] = None,
    augment: Annotated[str | None, typer.Option(help="standard, light or none.")] = None,
    oversample: Annotated[float | None, typer.Option(help="Rare-class oversampling strength 0-1.")] = None,
    folds: Annotated[int | None, typer.Option(help="Number of stratified folds.")] = None,
    fold: Annotated[int | None, typer.Option(help="Fold held out for validation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for folds, shuffling and initialisation.")] = None,
    max_time: Annotated[str | None, typer.Option(help="Time budget: minutes or HH:MM:SS.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience in epochs (0 = off).")] = None,
    threshold_method: Annotated[str | None, typer.Option(help="fit (per class) or fixed (0.5).")] = None,
    devices: Annotated[str | None, typer.Option(help="auto, a count, or ids like 0,1.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Machines for multi-node DDP.")] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ddp_spawn, fsdp, ...")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, 32-true, bf16-mixed, 16-mixed.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Where caches live (default ~/.cache/protloc).")] = None,
    split: Annotated[str | None, typer.Option(help="Split of a Kaggle root.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV overriding the layout's.")] = None,
    classes: Annotated[str | None, CLASSES_OPTION] = None,
    map_from: Annotated[str | None, MAP_FROM_OPTION] = None,
    bit_depth: Annotated[int | None, typer.Option(help="Significant bits of 16-bit images.")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    tensorboard: Annotated[bool | None, typer.Option("--tensorboard/--no-tensorboard")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Save last.ckpt every N steps.")] = None,
    checkpoint_minutes: Annotated[
        float | None, typer.Option(help="Save last.ckpt at least this often inside an epoch (default 10).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
) -> None:
    """Train a model: cache, stratified folds, Lightning fit, per-class thresholds, model package."""
    from protloc.config import resolve_config
    from protloc.train import train as run_training

    overrides: dict[str, Any] = {
        "data": str(data),
        "model": model,
        "pretrained": pretrained,
        "image_size": image_size,
        "cache_size": cache_size,
        "channels": channels,
        "batch_size": batch_size,
        "epochs": epochs,
        "lr": lr,
        "loss": loss,
        "focal_gamma": focal_gamma,
        "pos_weight": pos_weight,
        "augment": augment,
        "oversample": oversample,
        "folds": folds,
        "fold": fold,
        "seed": seed,
        "max_time": max_time,
        "patience": patience,
        "threshold_method": threshold_method,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "accelerator": accelerator,
        "precision": precision,
        "workers": workers,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "split": split,
        "labels": str(labels) if labels else None,
        "classes": classes,
        "map_from": map_from,
        "channel_map": channel_map,
        "bit_depth": bit_depth,
        "compile": compile,
        "tensorboard": tensorboard,
        "checkpoint_every_n_steps": checkpoint_every,
        "checkpoint_minutes": checkpoint_minutes,
    }
    if resume and out is not None and (out / "config.yaml").is_file() and config is None:
        config = out / "config.yaml"
    resolved = resolve_config(recipe, config, overrides)
    resolved.out = str(out) if out is not None else f"runs/{resolved.recipe}-fold{resolved.fold}"
    with progress_bars("caching images", "training steps") as (cache_update, step_update):
        result = run_training(
            resolved, resume=resume, overwrite=overwrite, on_cache_progress=cache_update, on_progress=step_update
        )
    if result is None:  # a DDP worker rank
        return
    _print_report(result.report, f"validation fold {resolved.fold}: per-class scores")
    gain = result.threshold_gain
    console.print(
        f"per-class thresholds vs one 0.5 threshold: {gain['gain_in_sample']:+.4f} macro F1 on the fitted fold, "
        f"{gain['gain_cv']:+.4f} cross-validated"
    )
    console.print(
        f"model package: [bold]{escape(str(result.package_dir))}[/]  (run: {escape(str(result.run_dir))}, "
        f"{result.epochs_run} epochs, "
        f"best epoch {result.best_epoch + 1}, {result.seconds.get('fit', 0):.0f} s fitting)"
    )


@app.command()
def evaluate(
    model: Annotated[
        Path, typer.Argument(help="Model package folder, an exported .onnx file, or a protloc BioImage.IO zip.")
    ],
    data: Annotated[Path, typer.Argument(help="Labelled data: Kaggle root, labels CSV, or folder + --labels.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, per_class.csv, predictions, chart.")] = Path(
        "evaluation"
    ),
    split: Annotated[str, typer.Option(help="Split of a Kaggle root.")] = "train",
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (e.g. the synthetic test_truth.csv).")] = None,
    map_from: Annotated[str | None, MAP_FROM_OPTION] = None,
    backend: Annotated[
        str, typer.Option(help="auto (onnx for a .onnx file or without PyTorch, else torch), torch or onnx.")
    ] = "auto",
    tta: Annotated[str, typer.Option(help="none, flips, rot90, d4 or a list of views.")] = "none",
    threshold: Annotated[str | None, typer.Option(help="One global threshold, or a JSON of per-class values.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    workers: Annotated[int | None, typer.Option(help="Decoding processes.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 (torch backend).")] = "auto",
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="Per cell, against per-cell truth (<split>_cells_truth/): the 2021 mAP and segmentation F1/AP, "
            "side by side with the baseline 'field labels to every cell' when --field-model is given.",
        ),
    ] = False,
    field_model: Annotated[
        Path | None, typer.Option("--field-model", help="With --cells: the field model (baseline and mix).")
    ] = None,
    mix: Annotated[
        list[float] | None, typer.Option(help="With --cells: cell-model weights of the mix, repeatable.")
    ] = None,
    masks: Annotated[Path | None, typer.Option(help="With --cells: label images instead of segmenting.")] = None,
    seg_option: Annotated[
        list[str] | None,
        typer.Option("--seg-option", help="With --cells: segmenter setting KEY=VALUE over the card's, repeatable."),
    ] = None,
) -> None:
    """Score a model package on any labelled data set: per-class precision/recall/F1, macro and micro F1."""
    from protloc.evaluate import evaluate_model

    if cells:
        _evaluate_cells(model, data, out, field_model, mix or [0.5], masks, seg_option, split, backend, device, tta)
        return

    with progress_bar("predicting") as update:
        result = evaluate_model(
            model,
            data,
            out=out,
            split=split,
            labels=labels,
            map_from=map_from,
            channel_map=channel_map,
            backend=backend,
            device=device,
            tta=tta,
            thresholds=threshold,
            batch_size=batch_size,
            workers=workers,
            on_progress=update,
        )
    _print_report(result.report, f"{data}: per-class scores")
    console.print(escape("wrote " + ", ".join(str(p) for p in result.written.values())))


def _evaluate_cells(
    model: Path,
    data: Path,
    out: Path,
    field_model: Path | None,
    mixes: list[float],
    masks: Path | None,
    seg_option: list[str] | None,
    split: str,
    backend: str,
    device: str,
    tta: str,
) -> None:
    from rich.table import Table

    from protloc.card import read_card
    from protloc.cells.outputs import compare_cell_methods
    from protloc.cells.predict import is_cell_model, open_cell_predictor
    from protloc.utils import atomic_write_json

    cell_model = model if is_cell_model(read_card(model)) else None
    predictor = open_cell_predictor(
        cell_model,
        field_model if cell_model is not None else model,
        backend=backend,
        device=device,
        tta=tta,
        segmenter_options=_parse_options(seg_option or []),
    )
    with progress_bar("cells") as update:
        results = compare_cell_methods(predictor, data, split=split, mixes=mixes, masks=masks, on_progress=update)
    table = Table(title=f"{data} ({split}): per-cell scores")
    for column in ("method", "mAP (IoU>=0.6)", "seg F1@0.5", "seg AP@0.5", "seg F1@0.75", "cells (pred/true)"):
        table.add_column(column)
    for method, result in results.items():
        seg = {s["iou"]: s for s in result.segmentation}
        table.add_row(
            escape(method),
            f"{result.map:.4f}",
            f"{seg[0.5]['f1']:.3f}",
            f"{seg[0.5]['ap']:.3f}",
            f"{seg[0.75]['f1']:.3f}",
            f"{result.predicted_cells}/{result.true_cells}",
        )
    console.print(table)
    path = atomic_write_json(out / "cells_evaluation.json", {m: r.as_dict() for m, r in results.items()})
    console.print(escape(f"wrote {path}"))


# ---------------------------------------------------------------------------------------- deployment


def _split_ids(ids: str | None, ids_file: Path | None) -> list[str] | None:
    chosen: list[str] = []
    if ids:
        chosen += [part.strip() for part in ids.split(",") if part.strip()]
    if ids_file is not None:
        if not ids_file.is_file():
            raise ProtlocError(f"{ids_file}: ids file not found")
        lines = [line.strip().split(",")[0] for line in ids_file.read_text().splitlines()]
        chosen += [line for line in lines if line and line != "Id"]
    return chosen or None


@app.command()
def predict(
    model: Annotated[
        Path, typer.Argument(help="Model package folder, an exported .onnx file, or a protloc BioImage.IO zip.")
    ],
    data: Annotated[
        Path,
        typer.Argument(
            help="Kaggle root (its test/), a folder of channel images, or one channel file of a single sample."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for probabilities.csv, predictions.csv, submission.csv.")] = Path(
        "predictions"
    ),
    split: Annotated[str | None, typer.Option(help="Split of a Kaggle root (default: test).")] = None,
    ids: Annotated[str | None, typer.Option(help="Only these Ids (comma-separated).")] = None,
    ids_file: Annotated[Path | None, typer.Option(help="Only the Ids listed in this file (one per line).")] = None,
    backend: Annotated[
        str, typer.Option(help="auto (onnx for a .onnx file or without PyTorch, else torch), torch or onnx.")
    ] = "auto",
    tta: Annotated[str, typer.Option(help="none, flips, rot90, d4 (all 8) or views like id,flip.")] = "none",
    threshold: Annotated[str | None, typer.Option(help="One global threshold, or a JSON of per-class values.")] = None,
    allow_empty: Annotated[bool, typer.Option(help="Allow images with no label (default: at least one).")] = False,
    tiles: Annotated[int, typer.Option(help="1 = resize each field; N = N x N tiles, max over tiles.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: CPUs).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 (torch backend).")] = "auto",
    devices: Annotated[int, typer.Option(help="Devices for DDP prediction (torch backend).")] = 1,
    num_nodes: Annotated[int, typer.Option(help="Machines for multi-node DDP prediction.")] = 1,
    accelerator: Annotated[str, typer.Option(help="auto, cpu, gpu (DDP prediction).")] = "auto",
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="Per cell: segment, score each cell (MODEL = a cell model; a field model gives the baseline "
            "'field labels to every cell'); writes cells.csv, the 2021 submission.csv, cells.h5ad.",
        ),
    ] = False,
    field_model: Annotated[
        Path | None, typer.Option("--field-model", help="With --cells: a field model mixed with the cell model.")
    ] = None,
    mix: Annotated[float, typer.Option(help="With --cells and --field-model: weight of the cell model.")] = 0.5,
    masks: Annotated[Path | None, typer.Option(help="With --cells: label images to use instead of segmenting.")] = None,
    pictures: Annotated[int, typer.Option(help="With --cells: outline pictures of the first N fields.")] = 0,
    seg_option: Annotated[
        list[str] | None,
        typer.Option("--seg-option", help="With --cells: segmenter setting KEY=VALUE over the card's, repeatable."),
    ] = None,
) -> None:
    """Predict localizations for new images: probabilities, labels and a Kaggle submission (resumable)."""
    from protloc.predict import predict_folder

    if cells:
        _predict_cells(
            model,
            data,
            out,
            field_model,
            mix,
            masks,
            pictures,
            seg_option,
            split,
            _split_ids(ids, ids_file),
            backend,
            device,
            tta,
        )
        return

    with progress_bar("predicting") as update:
        result = predict_folder(
            model,
            data,
            out,
            channel_map=channel_map,
            split=split,
            ids=_split_ids(ids, ids_file),
            backend=backend,
            device=device,
            tta=tta,
            thresholds=threshold,
            min_one=not allow_empty,
            tiles=tiles,
            batch_size=batch_size,
            workers=workers,
            devices=devices,
            num_nodes=num_nodes,
            accelerator=accelerator,
            on_progress=update,
        )
    if result is None:
        return
    counts = result.labels.sum(axis=0)
    names = result.scheme.names
    top = ", ".join(f"{names[i]} {int(counts[i])}" for i in counts.argsort()[::-1][:6] if counts[i] > 0)
    resumed = f" (resumed after {result.resumed_from})" if result.resumed_from else ""
    console.print(
        f"predicted {len(result.ids)} samples{resumed} in {result.seconds:.1f} s "
        f"({result.rate:.1f} samples/s); most frequent: {top}"
    )
    console.print(escape("wrote " + ", ".join(str(p) for p in result.written.values())))


def _predict_cells(
    model: Path,
    data: Path,
    out: Path,
    field_model: Path | None,
    mix: float,
    masks: Path | None,
    pictures: int,
    seg_option: list[str] | None,
    split: str | None,
    ids: list[str] | None,
    backend: str,
    device: str,
    tta: str,
) -> None:
    from protloc.card import read_card
    from protloc.cells.outputs import predict_cells
    from protloc.cells.predict import METHOD_BASELINE, is_cell_model, open_cell_predictor

    cell_model = model if is_cell_model(read_card(model)) else None
    predictor = open_cell_predictor(
        cell_model,
        field_model if cell_model is not None else model,
        backend=backend,
        device=device,
        mix=mix,
        tta=tta,
        segmenter_options=_parse_options(seg_option or []),
    )
    with progress_bar("cells") as update:
        summary = predict_cells(
            predictor, data, out, split=split, ids=ids, masks=masks, pictures=pictures, on_progress=update
        )
    note = (
        " [yellow](no cell model: every cell gets its field's probabilities)[/]"
        if summary.method == METHOD_BASELINE
        else ""
    )
    console.print(
        f"{summary.cells} cells in {summary.fields} fields in {summary.seconds:.1f} s, method: "
        f"[bold]{escape(summary.method)}[/]{note}"
    )
    console.print(escape("wrote " + ", ".join(str(p) for p in summary.written.values())))


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model package folder.")],
    onnx: Annotated[Path | None, typer.Option("--onnx", help="ONNX file to write (default: MODEL/model.onnx).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest allowed |ONNX - PyTorch| on the logits.")] = 1e-4,
    bioimageio: Annotated[
        bool, typer.Option("--bioimageio", help="Also write a BioImage.IO model package (zip) for deepImageJ & co.")
    ] = False,
    bioimageio_out: Annotated[
        Path | None, typer.Option(help="BioImage.IO zip to write (default: MODEL/bioimageio.zip).")
    ] = None,
    author: Annotated[list[str] | None, typer.Option(help="Author named in the BioImage.IO package.")] = None,
    license: Annotated[str, typer.Option(help="SPDX licence id of the BioImage.IO package's weights.")] = "MIT",
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write an int8 model (MODEL/model.int8.onnx), calibrated on data.")
    ] = False,
    int8_out: Annotated[Path | None, typer.Option("--int8-out", help="The int8 file to write.")] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration data set for --int8 (default: the card's training data).")
    ] = None,
    calibration_images: Annotated[int, typer.Option(help="Images to calibrate --int8 on.")] = 128,
    calibration_method: Annotated[str, typer.Option(help="minmax, percentile or entropy.")] = "minmax",
    int8_tolerance: Annotated[
        float, typer.Option(help="Largest allowed change of a probability, int8 vs float32.")
    ] = 0.1,
) -> None:
    """Export a package to ONNX (dynamic batch, card embedded) and check it against PyTorch on real inputs.

    With --int8, also a statically quantised int8 model (ONNX Runtime, QDQ, per-channel weights) calibrated
    on training images, and its change against float32 on other images; with --bioimageio, also a validated
    BioImage.IO model package.
    """
    from protloc.export import export_onnx

    result = export_onnx(model, onnx, opset=opset, tolerance=tolerance)
    console.print(
        f"wrote {escape(str(result.path))} ({result.exporter} exporter); max |ONNX Runtime - PyTorch| = "
        f"{result.max_abs_diff:.2e} on {escape(str(result.inputs))}, "
        f"batch sizes {', '.join(map(str, result.batch_sizes))}"
    )
    if int8:
        from protloc.quantize import quantize_onnx

        quantized = quantize_onnx(
            model,
            int8_out,
            source=result.path,
            data=calibration,
            count=calibration_images,
            method=calibration_method,
            tolerance=int8_tolerance,
        )
        console.print(
            f"wrote {escape(str(quantized.path))} (int8, calibrated on {escape(quantized.calibration)}); on "
            f"{escape(quantized.check)}: max |int8 - float32| probability {quantized.max_prob_diff:.3f} "
            f"(mean {quantized.mean_prob_diff:.4f}), {quantized.decision_agreement:.1%} of decisions unchanged"
        )
    if bioimageio:
        from protloc.bioimageio import export_bioimageio

        package = export_bioimageio(
            model, bioimageio_out, tolerance=tolerance, opset=opset, authors=author, license=license
        )
        diffs = ", ".join(f"{fmt} {diff:.2e}" for fmt, diff in package.max_abs_diff.items())
        console.print(
            escape(
                f"wrote {package.path} (BioImage.IO model, {' + '.join(package.weights)} weights, validated); "
                f"max |spec pipeline - PyTorch|: {diffs} on {package.inputs}"
            )
        )


@app.command()
def ensemble(
    members: Annotated[list[Path], typer.Argument(help="Member packages (e.g. the fold models).")],
    out: Annotated[Path, typer.Option(help="Ensemble package folder to write.")] = Path("ensemble"),
    thresholds: Annotated[str, typer.Option(help="auto, oof (refit on pooled out-of-fold predictions) or mean.")] = (
        "auto"
    ),
) -> None:
    """Average several packages into one ensemble package, with combined thresholds."""
    from protloc.card import read_card
    from protloc.ensemble import make_ensemble

    folder = make_ensemble(members, out, thresholds=thresholds)
    card = read_card(folder)
    info = card.threshold_info
    oof = card.metrics.get("out_of_fold")
    note = f"; out-of-fold macro F1 {oof['macro_f1']:.4f} on {info['oof_samples']} images" if oof else ""
    console.print(escape(f"wrote ensemble {folder} of {len(members)} members; thresholds: {info['method']}{note}"))


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="Model package folder.")],
    data: Annotated[Path, typer.Argument(help="Kaggle root, labels CSV, or folder of channel images.")],
    sample_id: Annotated[str, typer.Argument(metavar="ID", help="The sample's Id.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("explanation.png"),
    split: Annotated[str | None, typer.Option(help="Split to look in (default: train, then test).")] = None,
    class_: Annotated[
        list[str] | None,
        typer.Option("--class", help="Class to explain: id, name or prefix (repeatable; default: predicted)."),
    ] = None,
    max_classes: Annotated[int, typer.Option(help="At most this many predicted classes.")] = 6,
) -> None:
    """Class activation maps (Grad-CAM) for each predicted class, overlaid on the composite."""
    from protloc.explain import explain_sample

    explanation = explain_sample(
        model, data, sample_id, out, split=split, classes=class_ or None, max_classes=max_classes
    )
    names = explanation.class_names
    shown = ", ".join(f"{names[c]} {explanation.probabilities[c]:.2f}" for c in explanation.maps)
    truth = explanation.true_labels
    known = f"; true: {', '.join(names[c] for c in truth)}" if truth else ""
    console.print(escape(f"wrote {out}: {shown}{known}"))


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model package folder (or exported .onnx: no explanations).")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; non-loopback needs --token or --allow-remote.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes, each with its own model copy.")] = 1,
    token: Annotated[
        str | None,
        typer.Option(envvar="PROTLOC_TOKEN", help="Bearer token clients must send (shows in ps: prefer the env var)."),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Read the bearer token from this file's first line (not shown in ps).")
    ] = None,
    allow_remote: Annotated[bool, typer.Option(help="Listen beyond loopback without a token.")] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A Host name to answer besides loopback (repeatable; '*' for any). Stops DNS rebinding."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A web origin (https://host[:port]) whose pages may call the API (repeatable; off by default)."
        ),
    ] = None,
    max_pending: Annotated[int, typer.Option(help="Requests queued for the network at once (503 above).")] = 64,
    header_timeout: Annotated[float, typer.Option(help="Seconds for a request's headers to arrive.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds for a request body to arrive (408 after).")] = 60.0,
    backend: Annotated[str, typer.Option(help="auto (onnx when model.onnx exists), onnx or torch.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads (default: half the CPUs).")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MB (413 above).")] = 64.0,
    max_batch: Annotated[int, typer.Option(help="Micro-batch size for concurrent requests (1 = off).")] = 8,
    cells: Annotated[
        Path | None, typer.Option(help="Cell model package for /predict?cells=true (default: field baseline).")
    ] = None,
    cell_mix: Annotated[float, typer.Option(help="Cell model's weight for cell_method=mix.")] = 0.5,
    max_cell_mpx: Annotated[float, typer.Option(help="Largest field segmented for cells, in megapixels.")] = 16.0,
) -> None:
    """Serve a model over HTTP: JSON API, web page at /, API reference at /docs."""
    from protloc.serve import run

    console.print(escape(f"protloc serving {model} on http://{host}:{port}/  (API reference: /docs)"))
    run(
        model,
        host=host,
        port=port,
        workers=workers,
        token=token,
        token_file=token_file,
        allow_remote=allow_remote,
        allowed_hosts=tuple(allowed_host or ()),
        cors_origins=tuple(cors_origin or ()),
        backend=backend,
        threads=threads,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        max_pending=max_pending,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        cells=cells,
        cell_mix=cell_mix,
        max_cell_mpx=max_cell_mpx,
    )


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="The folder the microscope writes <Id>_<channel>.<ext> files into.")],
    model: Annotated[Path, typer.Option(help="Model package, exported .onnx, or protloc BioImage.IO package.")],
    out: Annotated[
        Path | None, typer.Option(help="Results, journal and pictures (default: FOLDER/protloc-watch).")
    ] = None,
    table: Annotated[str, typer.Option(help="Results table format: csv or jsonl.")] = "csv",
    pictures: Annotated[bool, typer.Option(help="Write a composite PNG with its labels per field.")] = False,
    recursive: Annotated[bool, typer.Option(help="Watch sub-folders too (plates, wells).")] = False,
    settle: Annotated[float, typer.Option(help="Seconds a field's files must stay unchanged before reading.")] = 2.0,
    incomplete_after: Annotated[
        float, typer.Option(help="Seconds after which a field lacking a channel is set aside.")
    ] = 600.0,
    poll: Annotated[bool, typer.Option(help="Poll instead of filesystem events (network shares).")] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls with --poll.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Classify what is there, then exit.")] = False,
    backend: Annotated[str, typer.Option(help="auto, torch or onnx.")] = "auto",
    tta: Annotated[str, typer.Option(help="none, flips, rot90, d4 or views like id,flip.")] = "none",
    threshold: Annotated[str | None, typer.Option(help="One global threshold, or a JSON of per-class values.")] = None,
    allow_empty: Annotated[bool, typer.Option(help="Allow fields with no label (default: at least one).")] = False,
    tiles: Annotated[int, typer.Option(help="1 = resize each field; N = N x N tiles, max over tiles.")] = 1,
    bit_depth: Annotated[int | None, typer.Option(help="Significant bits of 16-bit files (default: card's).")] = None,
    batch_size: Annotated[int, typer.Option(help="At most this many ready fields per network call.")] = 8,
    max_fields: Annotated[int | None, typer.Option(help="Exit after this many fields.", hidden=True)] = None,
) -> None:
    """Classify each acquisition as it lands in FOLDER; results appended to one table. Ctrl-C stops cleanly."""
    import threading

    from protloc.watch import WatchEvent, stop_on_signals, watch_folder

    def show(event: WatchEvent) -> None:
        if event.kind == "classified" and event.row is not None:
            console.print(escape(f"{event.field}: {event.message}  ({event.row['seconds'] * 1000:.0f} ms)"))
        elif event.kind in ("rejected", "waiting"):
            err_console.print(f"[yellow]{event.kind}[/] {escape(str(event.field))}: {escape(event.message)}")
        else:
            err_console.print(escape(event.message))

    stop = threading.Event()

    def stopping(name: str) -> None:
        err_console.print(f"{name}: finishing the field in hand, then stopping (again to abort)")

    with stop_on_signals(stop, stopping):
        summary = watch_folder(
            folder,
            model,
            out=out,
            table=table,
            backend=backend,
            tta=tta,
            thresholds=threshold,
            min_one=not allow_empty,
            tiles=tiles,
            bit_depth=bit_depth,
            pictures=pictures,
            recursive=recursive,
            settle=settle,
            incomplete_after=incomplete_after,
            poll=poll,
            poll_interval=poll_interval,
            once=once,
            batch_size=batch_size,
            max_fields=max_fields,
            stop=stop,
            on_event=show,
        )
    console.print(
        escape(
            f"{summary.classified} fields classified, {summary.rejected} set aside in {summary.seconds:.1f} s; "
            f"results in {summary.table}"
        )
    )


# ---------------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("demo"),
    quick: Annotated[bool, typer.Option(help="A one-minute version (small data, tiny training).")] = False,
    data: Annotated[Path | None, typer.Option(help="Run on a real HPA download (Kaggle layout) instead.")] = None,
    minutes: Annotated[float, typer.Option(help="Time budget for the whole job.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed for data, folds and training.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPUs).")] = None,
) -> None:
    """The main job end to end: data, statistics, training, thresholds, evaluation, submission, ONNX, report."""
    from protloc.demo import DemoSettings, run_demo

    settings = DemoSettings(out=out, quick=quick, data=data, minutes=minutes, seed=seed, workers=workers)
    result = run_demo(settings, say=console.print, progress=progress_bar)
    test = f", test macro F1 [bold]{result.test_macro_f1:.3f}[/]" if result.test_macro_f1 is not None else ""
    console.print(
        f"\n[bold green]Done in {result.seconds['total'] / 60:.1f} min[/]: validation macro F1 "
        f"[bold]{result.validation_macro_f1:.3f}[/]{test}.\n"
        f"Report: [bold]{escape(str(result.report))}[/]  (open it in a browser)\n"
        f"Model package: {escape(str(result.out / 'run' / 'model'))}  ONNX: {escape(str(result.onnx))}"
        + (f"  Submission: {result.submission}" if result.submission else "")
    )


# ------------------------------------------------------------------------------------------ entry point


# what `pip install 'protloc[train]'` adds over the torch-free core and runtime
TRAIN_EXTRA_MODULES = frozenset(
    {
        "torch",
        "torchvision",
        "timm",
        "lightning",
        "torchmetrics",
        "albumentations",
        "iterstrat",
        "sklearn",
        "safetensors",
        "onnx",
        "onnxscript",
        "pytorch_grad_cam",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return (and, from the console script, exit with) its status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="protloc", standalone_mode=False)
    except ProtlocError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 1
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        err_console.print(f"[red]error:[/] {escape(str(storage_error(exc, action='access')))}")
        return 1
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in TRAIN_EXTRA_MODULES:
            raise
        command = next((a for a in args if not a.startswith("-")), "this command")
        err_console.print(
            f"[red]error:[/] protloc {escape(command)} needs the {escape(missing)} package, which this install "
            f"lacks: pip install {escape(repr('protloc[train]'))} (the runtime extra predicts and serves with "
            "ONNX Runtime only)"
        )
        return 1
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("[red]interrupted[/]")
        return 130
    return result if isinstance(result, int) else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
