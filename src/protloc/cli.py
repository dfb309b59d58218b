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
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from protloc import __version__
from protloc.errors import ProtlocError

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
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar with count, elapsed time and ETA; yields an ``on_progress(done, total)`` callback."""
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
        task = progress.add_task(description, total=total)

        def update(done: int, of: int) -> None:
            progress.update(task, completed=done, total=of)

        yield update


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
        )
    rate = (summary.n_train + summary.n_test) / max(summary.seconds, 1e-9)
    console.print(
        f"wrote {summary.n_train} train + {summary.n_test} test samples of {summary.size}x{summary.size} px to "
        f"{summary.out} in {summary.seconds:.1f} s ({rate:.0f} samples/s)"
    )


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Kaggle root, labels CSV, or folder of channel images.")],
    channels: Annotated[str, typer.Option(help="Channels every sample must have (e.g. rgby, green).")] = "rgby",
    quick: Annotated[bool, typer.Option(help="Read image headers only (skips corrupt-pixel detection).")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPUs).")] = None,
    show: Annotated[int, typer.Option(help="Problems listed per kind (all are counted).")] = 20,
    out: Annotated[Path | None, typer.Option(help="Also write every problem to this CSV.")] = None,
) -> None:
    """Validate a data set in one pass and list every problem with its Id; exit 1 if anything is wrong."""
    from protloc.check import check_dataset, write_problems
    from protloc.io import parse_channels

    with progress_bar("reading images") as update:
        report = check_dataset(
            data, channels=parse_channels(channels), decode=not quick, workers=workers, on_progress=update
        )
    if out is not None:
        write_problems(report, out)
    shown: dict[str, int] = {}
    for problem in report.problems:
        shown[problem.kind] = shown.get(problem.kind, 0) + 1
        if shown[problem.kind] <= show:
            style = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{style}]{problem.severity}[/] [bold]{problem.kind}[/]: {problem.message}")
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
        console.print(f"[green]OK[/]: {samples} samples checked{note}")
        return
    err_console.print(f"[red]error:[/] {len(report.errors)} problems in {data} ({samples} samples checked)")
    raise typer.Exit(1)


def _open_for_sample(data: Path, sample_id: str, split: str | None, channels: Sequence[str]) -> tuple[object, int]:
    """Find ``sample_id`` in the requested split, or in train then test of a Kaggle root."""
    from protloc.catalog import open_dataset
    from protloc.errors import DataError

    splits = [split] if split else ["train", "test"]
    last: DataError | None = None
    for name in splits:
        try:
            catalog = open_dataset(data, split=name, channels=None)
        except DataError as exc:
            last = exc
            continue
        if sample_id in catalog.files:
            return catalog, catalog.ids.index(sample_id)
    if last is not None and split:
        raise last
    raise ProtlocError(f"Id {sample_id!r} not found in {data}" + (f" ({split})" if split else " (train or test)"))


@app.command()
def stats(
    data: Annotated[Path, typer.Argument(help="Kaggle root or labels CSV.")],
    out: Annotated[Path, typer.Option(help="Folder for the tables and figures.")] = Path("stats"),
    split: Annotated[str, typer.Option(help="Split of a Kaggle root.")] = "train",
    labels: Annotated[Path | None, typer.Option(help="Labels CSV overriding the layout's.")] = None,
    pixel_images: Annotated[int, typer.Option(help="Images sampled for pixel statistics (0 = skip).")] = 200,
) -> None:
    """Class distribution, labels per image, co-occurrence and pixel statistics: a table plus PNG figures."""
    from protloc.catalog import open_dataset
    from protloc.classes import CLASS_NAMES
    from protloc.stats import dataset_statistics, write_statistics

    catalog = open_dataset(data, split=split, labels=labels, channels=None)
    with progress_bar("pixel statistics") as update:
        result = dataset_statistics(catalog, pixel_images=pixel_images, on_progress=update)
    written = write_statistics(result, out, title=catalog.name)
    table = Table(title=f"{catalog.name}: {result.n_images} images", show_edge=False)
    for column, justify in (("id", "right"), ("class", "left"), ("images", "right"), ("share", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    order = sorted(range(len(CLASS_NAMES)), key=lambda i: -result.class_counts[i])
    for class_id in order:
        count = result.class_counts[class_id]
        table.add_row(str(class_id), CLASS_NAMES[class_id], str(count), f"{100 * count / result.n_images:.2f}%")
    console.print(table)
    per_image = ", ".join(f"{k}: {v}" for k, v in sorted(result.labels_per_image.items()))
    console.print(f"labels per image: {per_image}")
    for channel, values in result.channels.items():
        console.print(
            f"{channel:>6}: mean {values.mean:6.2f}, zeros {values.fraction_zero:6.1%}, "
            f"p99 {values.percentiles['99']:.0f} ({values.n_images} images)"
        )
    console.print("wrote " + ", ".join(str(p) for p in written.values()))


@app.command()
def show(
    data: Annotated[Path, typer.Argument(help="Kaggle root, labels CSV, or folder of channel images.")],
    sample_id: Annotated[str, typer.Argument(metavar="ID", help="The sample's Id.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("sample.png"),
    split: Annotated[str | None, typer.Option(help="Split to look in (default: train, then test).")] = None,
    channels: Annotated[str, typer.Option(help="Channels to show, in order.")] = "rgby",
) -> None:
    """Draw one sample: the composite (yellow mixed in as in HPA's viewer) and each channel, with its labels."""
    from protloc.catalog import Catalog
    from protloc.classes import label_names
    from protloc.io import parse_channels, read_sample
    from protloc.plots import sample_figure, save_figure

    chosen = parse_channels(channels)
    found, index = _open_for_sample(data, sample_id, split, chosen)
    assert isinstance(found, Catalog)
    image = read_sample(found.paths(index), chosen, sample_id=sample_id)
    label_text = ", ".join(label_names(found.labels[index])) if found.labels is not None else "(no labels)"
    save_figure(sample_figure(image, chosen, title=sample_id, label_text=label_text), out)
    console.print(f"wrote {out}: {sample_id} ({label_text})")


# ------------------------------------------------------------------------------------------ entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return (and, from the console script, exit with) its status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="protloc", standalone_mode=False)
    except ProtlocError as exc:
        err_console.print(f"[red]error:[/] {exc}")
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
