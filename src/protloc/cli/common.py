"""What every command shares: the Typer app, the console, shared options, progress bars and small parsers.

Only the ``protloc.cli`` package prints, colours and draws bars; library functions take ``on_progress``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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


@contextmanager
def stage_progress() -> Iterator[Callable[[Any], None]]:
    """One progress bar for a run of stages (``protloc train --cells``): it shows the current stage and how far
    it is; a line is printed as each stage begins. Yields an ``on_progress(report)`` callback for reports with
    ``name``, ``number``, ``stages``, ``done``, ``total`` and ``note``
    (:class:`protloc.training.cells.PipelineProgress`)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("•"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("starting", total=1)
        current: list[str] = [""]

        def update(report: Any) -> None:
            label = f"[{report.number}/{report.stages}] {report.name}"
            if report.name != current[0]:
                current[0] = report.name
                progress.console.print(escape(f"{label}{': ' + report.note if report.note else ''}"))
            progress.update(task, description=label, completed=report.done, total=max(report.total, 1e-9))

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


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["work_side=768", "weights=cyto3", "match_nuclei=true"]`` -> ``{"work_side": 768, "weights": "cyto3",
    "match_nuclei": True}`` (numbers and true/false parsed)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ProtlocError(f"option {pair!r} must look like KEY=VALUE")
        value: Any = {"true": True, "false": False}.get(text.strip().lower(), text)
        for kind in (int, float) if isinstance(value, str) else ():
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        options[key.strip().replace("-", "_")] = value
    return options


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
