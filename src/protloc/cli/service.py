"""The microscope side and the main job: serve, watch, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from protloc.cli.common import (
    app,
    console,
    err_console,
    progress_bar,
)


@app.command()
def serve(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="Model package folder (or exported .onnx: no explanations); a cell model package from `protloc "
            "train DATA --cells` is served as it is (its field model answers fields, the package answers cells)."
        ),
    ] = None,
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
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads per network call (default 1: a call per CPU at a time).")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MB (413 above).")] = 64.0,
    max_batch: Annotated[int, typer.Option(help="Micro-batch size for concurrent requests (1 = off).")] = 8,
    cells: Annotated[
        Path | None,
        typer.Option(
            help="Cell model package for /predict?cells=true (default: field baseline); alone, without MODEL, a "
            "package that carries its field model."
        ),
    ] = None,
    cell_mix: Annotated[float, typer.Option(help="Cell model's weight for cell_method=mix.")] = 0.5,
    max_cell_mpx: Annotated[float, typer.Option(help="Largest field segmented for cells, in megapixels.")] = 16.0,
) -> None:
    """Serve a model over HTTP: JSON API, web page at /, API reference at /docs."""
    from protloc.serve import run

    if model is None:
        if cells is None:
            raise typer.BadParameter("give the MODEL to serve (or --cells CELL_PACKAGE alone)")
        model = cells
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
    follow_links: Annotated[
        bool, typer.Option(help="Read files and folders that are links leading outside FOLDER (refused by default).")
    ] = False,
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
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="One row per cell: segment each field and score its cells (MODEL: a cell model package from "
            "`protloc train DATA --cells`, used as it is; a field model gives every cell its field's labels).",
        ),
    ] = False,
    max_fields: Annotated[int | None, typer.Option(help="Exit after this many fields.", hidden=True)] = None,
) -> None:
    """Classify each acquisition as it lands in FOLDER; results appended to one table. Ctrl-C stops cleanly."""
    import threading

    from protloc.watch import WatchEvent, WatchSettings, stop_on_signals, watch_folder

    def show(event: WatchEvent) -> None:
        if event.kind == "classified" and event.row is not None:
            console.print(escape(f"{event.field}: {event.message}  ({event.row['seconds'] * 1000:.0f} ms)"))
        elif event.kind in ("rejected", "waiting"):
            err_console.print(f"[yellow]{event.kind}[/] {escape(str(event.field))}: {escape(event.message)}")
        elif event.kind == "notice":
            err_console.print(f"[yellow]notice[/] {escape(event.message)}")
        else:
            err_console.print(escape(event.message))

    stop = threading.Event()

    def stopping(name: str) -> None:
        err_console.print(f"{name}: finishing the field in hand, then stopping (again to abort)")

    settings = WatchSettings(
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
        follow_links=follow_links,
        settle=settle,
        incomplete_after=incomplete_after,
        poll=poll,
        poll_interval=poll_interval,
        once=once,
        batch_size=batch_size,
        cells=cells,
        max_fields=max_fields,
    )
    with stop_on_signals(stop, stopping):
        summary = watch_folder(folder, model, settings, stop=stop, on_event=show)
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
    from protloc.demo.job import DemoEvent, DemoSettings, run_demo

    def show(event: DemoEvent) -> None:
        if event.kind == "step":
            console.print(f"[bold cyan]{event.step}. {escape(event.text)}[/]")
        elif event.kind == "done":
            console.print(f"   [dim]{escape(event.text)}[/]")
        else:
            console.print(f"   {escape(event.text)}")

    settings = DemoSettings(out=out, quick=quick, data=data, minutes=minutes, seed=seed, workers=workers)
    result = run_demo(settings, on_event=show, progress=progress_bar)
    test = f", test macro F1 [bold]{result.test_macro_f1:.3f}[/]" if result.test_macro_f1 is not None else ""
    console.print(
        f"\n[bold green]Done in {result.seconds['total'] / 60:.1f} min[/]: validation macro F1 "
        f"[bold]{result.validation_macro_f1:.3f}[/]{test}.\n"
        f"Report: [bold]{escape(str(result.report))}[/]  (open it in a browser)\n"
        f"Model package: {escape(str(result.out / 'run' / 'model'))}  ONNX: {escape(str(result.onnx))}"
        + (f"  Submission: {result.submission}" if result.submission else "")
    )
