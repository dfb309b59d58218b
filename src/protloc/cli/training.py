"""Training commands: train, evaluate (fields and cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from protloc.cli.common import (
    CHANNEL_MAP_OPTION,
    CLASSES_OPTION,
    MAP_FROM_OPTION,
    _parse_options,
    _print_report,
    app,
    console,
    progress_bar,
    progress_bars,
    stage_progress,
)
from protloc.errors import ConfigError

# ------------------------------------------------------------------------------------------ training


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
    ema: Annotated[
        float | None, typer.Option(help="Decay of a moving average of the weights, which is kept (0 = off).")
    ] = None,
    resolution_schedule: Annotated[
        str | None, typer.Option(help="progressive (half size first, full size last) or none.")
    ] = None,
    threshold_shrink: Annotated[
        float | None, typer.Option(help="Pull fitted thresholds towards the global one by k/(positives+k).")
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Number of stratified folds.")] = None,
    fold: Annotated[int | None, typer.Option(help="Fold held out for validation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for folds, shuffling and initialisation.")] = None,
    max_time: Annotated[str | None, typer.Option(help="Time budget: minutes or HH:MM:SS.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience in epochs (0 = off).")] = None,
    threshold_method: Annotated[
        str | None,
        typer.Option(help="joint (per class, fitted together for macro and micro F1), fit (each alone), fixed (0.5)."),
    ] = None,
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
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="A cell model package from field labels: segment, cut crops, field model, cell model, pseudo-label "
            "rounds, fusion, all under one --max-time; resumable (run it again after a stop).",
        ),
    ] = False,
    crop_size: Annotated[int | None, typer.Option(help="With --cells: side of the cell crops in px.")] = None,
    context: Annotated[
        float | None,
        typer.Option(help="With --cells: the crops' surroundings kept, 0 (masked, the default) to 1 (as they are)."),
    ] = None,
    cell_head: Annotated[
        str | None, typer.Option(help="With --cells: mil (an image head over each field's cells) or plain.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="With --cells: out-of-fold pseudo-label rounds.")] = None,
    cell_truth: Annotated[
        Path | None,
        typer.Option(help="With --cells: per-cell truth of some fields; the fusion is fitted on the held-out ones."),
    ] = None,
    field_run: Annotated[
        Path | None,
        typer.Option(
            help="With --cells: a finished `protloc train` run (same data, --folds, --fold, --seed) whose model is the "
            "field model, instead of training one."
        ),
    ] = None,
    seg_option: Annotated[
        list[str] | None,
        typer.Option("--seg-option", help="With --cells: classical segmenter setting KEY=VALUE, repeatable."),
    ] = None,
) -> None:
    """Train a model: cache, stratified folds, Lightning fit, per-class thresholds, model package.

    With --cells: a cell model package (see docs/cells.md), which predict, evaluate, serve and watch take as it is.
    """
    from protloc.training.config import resolve_config
    from protloc.training.train import train as run_training

    cell_only = {
        "--crop-size": crop_size,
        "--context": context,
        "--cell-head": cell_head,
        "--rounds": rounds,
        "--cell-truth": cell_truth,
    }
    given = [flag for flag, value in {**cell_only, "--field-run": field_run}.items() if value is not None]
    given += ["--seg-option"] if seg_option else []
    if given and not cells:
        raise ConfigError(f"{', '.join(given)} only apply with --cells (a cell model pipeline)")
    if cells:
        _train_cells(
            data,
            out,
            {
                "split": split,
                "labels": str(labels) if labels else None,
                "classes": classes,
                "map_from": map_from,
                "channel_map": channel_map,
                "bit_depth": bit_depth,
                "max_time": max_time,
                "crop_size": crop_size,
                "context": context,
                "field_size": image_size,
                "field_model": model,
                "cell_model": model,
                "field_epochs": epochs,
                "cell_epochs": epochs,
                "cell_head": cell_head,
                "rounds": rounds,
                "cell_truth": str(cell_truth) if cell_truth else None,
                "field_run": str(field_run) if field_run else None,
                "segmenter_options": _parse_options(seg_option) if seg_option else None,
                "folds": folds,
                "fold": fold,
                "seed": seed,
                "cache_dir": str(cache_dir) if cache_dir else None,
                "workers": workers,
            },
        )
        return

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
        "ema": ema,
        "resolution_schedule": resolution_schedule,
        "threshold_shrink": threshold_shrink,
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


def _train_cells(data: Path, out: Path | None, options: dict[str, Any]) -> None:
    from protloc.training.cells import CellPipelineSettings, train_cells

    settings = CellPipelineSettings(
        data=str(data), out=str(out or "runs/cells"), **{k: v for k, v in options.items() if v is not None}
    )
    with stage_progress() as update:
        result = train_cells(settings, on_progress=update)
    for name, record in result.stages.items():
        values = record["summary"].get("fit", record["summary"])
        summary = ", ".join(
            f"{k} {v}" for k, v in values.items() if isinstance(v, (int, float, str)) and k != "package"
        )
        note = " (done before)" if name in result.skipped else ""
        console.print(escape(f"{name}: {record['seconds']:.0f} s{note}  {summary}"))
    console.print(
        f"cell model package: [bold]{escape(str(result.package_dir))}[/] (fusion: {escape(result.fusion.describe())}; "
        f"carries its field model); {result.seconds:.0f} s in this run"
    )


@app.command("pseudo-label")
def pseudo_label(
    cell_model: Annotated[Path, typer.Argument(help="A cell model package that scores the crops.")],
    cell_data: Annotated[Path, typer.Argument(help="The cell data set (protloc cell-data) whose labels to refine.")],
    out: Annotated[Path, typer.Option(help="The labels CSV to write (train with --labels).")] = Path(
        "pseudo_labels.csv"
    ),
    threshold: Annotated[float, typer.Option(help="Drop a field class where the cell scores below this.")] = 0.1,
    relative: Annotated[
        float, typer.Option(help="Also where it scores below this share of its field's best cell (0 = off).")
    ] = 0.0,
    backend: Annotated[str, typer.Option(help="auto, torch or onnx.")] = "auto",
) -> None:
    """One round of pseudo-labels: drop from each cell the field classes a cell model scores it low for.

    Score with a model that did not train on these cells where you can (out of fold); `protloc train DATA --cells
    --rounds N` does the rounds out of fold by itself.
    """
    from protloc.cells.pseudo import pseudo_label as run

    with progress_bar("scoring cells") as update:
        result = run(
            cell_model, cell_data, out, threshold=threshold, relative=relative, backend=backend, on_progress=update
        )
    console.print(
        escape(
            f"{result.cells} cells: {result.labels_before} labels -> {result.labels_after} "
            f"({result.cells_without_class} cells left without a class); wrote {result.out}; train with "
            f"`protloc train {cell_data} --labels {result.out}`"
        )
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
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes; 0 = a prefetch thread (default: fitted to the CPUs).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="The network's threads (default: 1 per lane with ONNX Runtime, else the CPUs decoding leaves)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 (torch backend).")] = "auto",
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="Per cell, against per-cell truth (<split>_cells_truth/): the 2021 mAP and segmentation F1/AP of "
            "the cell model alone, its fitted fusion and the baseline 'field labels to every cell', side by side.",
        ),
    ] = False,
    field_model: Annotated[
        Path | None,
        typer.Option(
            "--field-model", help="With --cells: the field model (baseline and fusion; default: the one MODEL carries)."
        ),
    ] = None,
    mix: Annotated[
        list[float] | None,
        typer.Option(help="With --cells: also score mix x cell + (1 - mix) x field for these weights, repeatable."),
    ] = None,
    masks: Annotated[Path | None, typer.Option(help="With --cells: label images instead of segmenting.")] = None,
    seg_option: Annotated[
        list[str] | None,
        typer.Option("--seg-option", help="With --cells: segmenter setting KEY=VALUE over the card's, repeatable."),
    ] = None,
) -> None:
    """Score a model package on any labelled data set: per-class precision/recall/F1, macro and micro F1."""
    from protloc.inference.evaluate import evaluate_model

    if cells:
        _evaluate_cells(model, data, out, field_model, mix or [], masks, seg_option, split, backend, device, tta)
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
            threads=threads,
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

    from protloc.cells.outputs import compare_cell_methods
    from protloc.cells.predict import predictor_for
    from protloc.utils import atomic_write_json

    predictor = predictor_for(
        model, field_model, backend=backend, device=device, tta=tta, segmenter_options=_parse_options(seg_option or [])
    )
    with progress_bar("cells") as update:
        results = compare_cell_methods(predictor, data, split=split, mixes=mixes, masks=masks, on_progress=update)
    table = Table(title=f"{data} ({split}): per-cell scores")
    for column in (
        "method",
        "mAP (IoU>=0.6)",
        "seg F1@0.5",
        "seg AP@0.5",
        "seg F1@0.6",
        "seg F1@0.75",
        "cells (pred/true)",
    ):
        table.add_column(column)
    for method, result in results.items():
        seg = {s["iou"]: s for s in result.segmentation}
        table.add_row(
            escape(method),
            f"{result.map:.4f}",
            f"{seg[0.5]['f1']:.3f}",
            f"{seg[0.5]['ap']:.3f}",
            f"{seg[0.6]['f1']:.3f}",
            f"{seg[0.75]['f1']:.3f}",
            f"{result.predicted_cells}/{result.true_cells}",
        )
    console.print(table)
    path = atomic_write_json(out / "cells_evaluation.json", {m: r.as_dict() for m, r in results.items()})
    console.print(escape(f"wrote {path}"))


# ---------------------------------------------------------------------------------------------- adapt


@app.command()
def adapt(
    model: Annotated[Path, typer.Argument(help="The package to adapt: a field model, or a cell model (--cells).")],
    data: Annotated[Path, typer.Argument(help="Unlabelled fields of the new microscope (any layout predict reads).")],
    out: Annotated[Path, typer.Option(help="The adapted package to write (replaced if it exists).")],
    method: Annotated[
        str, typer.Option(help="Comma-separated: norm (per-channel intensity statistics), bn (batch-norm, AdaBN).")
    ] = "norm",
    max_fields: Annotated[int, typer.Option(help="Fields read at most (a random choice).")] = 256,
    min_fields: Annotated[int, typer.Option(help="Refuse fewer fields than this.")] = 8,
    guard: Annotated[
        bool,
        typer.Option(
            "--guard/--no-guard",
            help="Refuse an adaptation that lowers the source validation macro F1 when run on those fields.",
        ),
    ] = True,
    tolerance: Annotated[float, typer.Option(help="Macro F1 the guard lets the adaptation lose.")] = 0.02,
    batch_size: Annotated[int, typer.Option(help="Fields per batch (batch-norm statistics).")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the choice of fields.")] = 0,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 1,
    bit_depth: Annotated[
        int | None, typer.Option(help="Significant bits of 16-bit files (default: the card's).")
    ] = None,
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
    match_nuclei: Annotated[
        bool,
        typer.Option(
            help="Cell models: segment each field at its nuclei's scale, for the adaptation and in the new package."
        ),
    ] = False,
    max_cells: Annotated[int, typer.Option(help="Cell models: cells the statistics are estimated on, at most.")] = 4096,
) -> None:
    """Adapt a model package to a new microscope without labels: re-estimate its normalisation on the new fields.

    The weights stay; the per-channel intensity statistics (and with --method norm,bn the batch-norm statistics)
    become the new fields'. See docs/adaptation.md for when it helps and when it cannot.
    predict, watch and the service take the new package as they take any other; its card records the adaptation.
    """
    from protloc.training.adapt import AdaptSettings, adapt_package

    settings = AdaptSettings(
        methods=tuple(method.split(",")),
        max_fields=max_fields,
        min_fields=min_fields,
        guard=guard,
        tolerance=tolerance,
        batch_size=batch_size,
        seed=seed,
        workers=workers,
        bit_depth=bit_depth,
        channel_map=channel_map,
        match_nuclei=match_nuclei,
        max_cells=max_cells,
    )
    with progress_bar("reading fields") as update:
        result = adapt_package(model, data, out, settings, on_progress=update)
    record = result.record
    guard_line = (
        f"guard passed (validation macro F1 {result.guard['macro_f1_before']:.3f} -> "
        f"{result.guard['macro_f1_adapted']:.3f} when adapted on those fields)"
        if result.guard.get("passed")
        else f"guard not run: {result.guard.get('reason', 'switched off')}"
    )
    cells = f" ({record['cells_used']} cells)" if "cells_used" in record else ""
    console.print(
        escape(
            f"adapted {model} ({', '.join(record['methods'])}) on {record['fields_used']} of {record['fields']} "
            f"fields{cells} of {data}; {guard_line}; wrote {result.out}"
        )
    )
    if record.get("field_model", {}).get("adapted") is False:
        console.print(escape(f"its field model kept as it was: {record['field_model']['reason']}"))
