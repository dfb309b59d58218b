"""Data commands: synth, check, segment, cell-data, stats, show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from protloc.cli.common import (
    CHANNEL_MAP_OPTION,
    CLASSES_OPTION,
    _parse_options,
    app,
    console,
    err_console,
    progress_bar,
)

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
    from protloc.data.check import check_dataset, write_problems
    from protloc.data.io import parse_channels

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
    size: Annotated[int | None, typer.Option(help="Crop side in px (default: 96).")] = None,
    padding: Annotated[float, typer.Option(help="Margin around each cell's box, fraction of its side.")] = 0.05,
    context: Annotated[
        float, typer.Option(help="The surroundings kept in each crop: 0 (masked, the default) to 1 (as they are).")
    ] = 0.0,
    folds: Annotated[int, typer.Option(help="Folds by field written to folds.csv.")] = 5,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it holds a cell data set.")] = False,
) -> None:
    """Cut every cell into a centred crop (masked by default): a data set of cells that `protloc train` turns into a
    cell model."""
    from protloc.cells.dataset import DEFAULT_CROP_SIZE, make_cell_dataset

    with progress_bar("cutting cells") as update:
        summary = make_cell_dataset(
            data,
            out,
            masks=masks,
            labels=labels,
            truth=truth,
            split=split,
            size=size or DEFAULT_CROP_SIZE,
            padding=padding,
            context=context,
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
    from protloc.data.catalog import open_dataset
    from protloc.data.stats import dataset_statistics, write_statistics

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
    from protloc.data.catalog import locate_sample
    from protloc.data.io import parse_channels, read_sample
    from protloc.plots import sample_figure, save_figure

    chosen = parse_channels(channels)
    found, index = locate_sample(data, sample_id, split=split)
    image = read_sample(found.paths(index), chosen, sample_id=sample_id)
    labels = found.labels
    label_text = ", ".join(found.scheme.names_of(labels[index])) if labels is not None else "(no labels)"
    save_figure(sample_figure(image, chosen, title=sample_id, label_text=label_text), out)
    console.print(escape(f"wrote {out}: {sample_id} ({label_text})"))
