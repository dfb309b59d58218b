"""Deployment commands: predict (fields and cells), export, ensemble, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from protloc.cli.common import (
    CHANNEL_MAP_OPTION,
    _parse_options,
    _split_ids,
    app,
    console,
    err_console,
    progress_bar,
)

# ---------------------------------------------------------------------------------------- deployment


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
    devices: Annotated[int, typer.Option(help="Devices for DDP prediction (torch backend).")] = 1,
    num_nodes: Annotated[int, typer.Option(help="Machines for multi-node DDP prediction.")] = 1,
    accelerator: Annotated[str, typer.Option(help="auto, cpu, gpu (DDP prediction).")] = "auto",
    channel_map: Annotated[str | None, CHANNEL_MAP_OPTION] = None,
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="Per cell: segment, score each cell (MODEL = a cell model, fused with its field model as its card "
            "says; a field model gives the baseline 'field labels to every cell'); writes cells.csv, the 2021 "
            "submission.csv, cells.h5ad.",
        ),
    ] = False,
    field_model: Annotated[
        Path | None,
        typer.Option(
            "--field-model",
            help="With --cells: the field model fused with the cell model (default: the one it carries).",
        ),
    ] = None,
    mix: Annotated[
        float | None,
        typer.Option(
            help="With --cells: instead of the card's fitted fusion, mix x cell + (1 - mix) x field (needs a field "
            "model)."
        ),
    ] = None,
    masks: Annotated[Path | None, typer.Option(help="With --cells: label images to use instead of segmenting.")] = None,
    pictures: Annotated[int, typer.Option(help="With --cells: outline pictures of the first N fields.")] = 0,
    seg_option: Annotated[
        list[str] | None,
        typer.Option("--seg-option", help="With --cells: segmenter setting KEY=VALUE over the card's, repeatable."),
    ] = None,
) -> None:
    """Predict localizations for new images: probabilities, labels and a Kaggle submission (resumable)."""
    from protloc.inference.predict import PredictSettings, predict_folder

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
            threads,
        )
        return

    chosen_ids = _split_ids(ids, ids_file)
    settings = PredictSettings(
        split=split,
        ids=tuple(chosen_ids) if chosen_ids is not None else None,
        backend=backend,
        device=device,
        tta=tta,
        thresholds=threshold,
        min_one=not allow_empty,
        tiles=tiles,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        devices=devices,
        num_nodes=num_nodes,
        accelerator=accelerator,
        channel_map=channel_map,
    )
    with progress_bar("predicting") as update:
        result = predict_folder(model, data, out, settings, on_progress=update)
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
    mix: float | None,
    masks: Path | None,
    pictures: int,
    seg_option: list[str] | None,
    split: str | None,
    ids: list[str] | None,
    backend: str,
    device: str,
    tta: str,
    threads: int | None,
) -> None:
    from protloc.cells.outputs import predict_cells
    from protloc.cells.predict import METHOD_BASELINE, predictor_for

    predictor = predictor_for(
        model,
        field_model,
        backend=backend,
        device=device,
        mix=mix,
        tta=tta,
        segmenter_options=_parse_options(seg_option or []),
        threads=threads,
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
        f"[bold]{escape(summary.method)}[/] ({escape(predictor.applied_fusion.describe())}){note}"
    )
    console.print(escape("wrote " + ", ".join(str(p) for p in summary.written.values())))


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model package folder.")],
    onnx: Annotated[Path | None, typer.Option("--onnx", help="ONNX file to write (default: MODEL/model.onnx).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest allowed |ONNX - PyTorch| on the logits.")] = 1e-4,
    parity_data: Annotated[
        Path | None,
        typer.Option(help="Images to check the export on (default: the card's training data, else synthetic)."),
    ] = None,
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
    calibration_images: Annotated[
        int | None, typer.Option(help="Images to calibrate --int8 on (default 512 at 128 px, fewer for larger inputs).")
    ] = None,
    calibration_method: Annotated[str, typer.Option(help="minmax, percentile or entropy.")] = "percentile",
    int8_tolerance: Annotated[
        float, typer.Option(help="Largest allowed change of a probability, int8 vs float32.")
    ] = 0.1,
    int8_float: Annotated[
        str,
        typer.Option(
            "--int8-float", help="Layers --int8 leaves in float32: classifier, stem, both (comma-separated) or none."
        ),
    ] = "classifier,stem",
) -> None:
    """Export a package to ONNX (dynamic batch, card embedded) and check it against PyTorch on real inputs.

    With --int8, also a statically quantised int8 model (ONNX Runtime, QDQ, per-channel weights) calibrated
    on training images, and its change against float32 on other images; with --bioimageio, also a validated
    BioImage.IO model package.
    """
    from protloc.deployment.onnx import export_onnx

    result = export_onnx(model, onnx, opset=opset, tolerance=tolerance, parity_data=parity_data)
    console.print(
        f"wrote {escape(str(result.path))} ({result.exporter} exporter); max |ONNX Runtime - PyTorch| = "
        f"{result.max_abs_diff:.2e} on {escape(str(result.inputs))}, "
        f"batch sizes {', '.join(map(str, result.batch_sizes))}"
    )
    if result.synthetic:
        err_console.print(
            "[yellow]note[/] the export was checked on synthetic fields, not on your images; give "
            "--parity-data DATA to check it on them"
        )
    if int8:
        from protloc.deployment.quantize import quantize_onnx

        quantized = quantize_onnx(
            model,
            int8_out,
            source=result.path,
            data=calibration,
            count=calibration_images,
            method=calibration_method,
            tolerance=int8_tolerance,
            keep_float=tuple(p.strip() for p in int8_float.split(",") if p.strip() and p.strip() != "none"),
        )
        console.print(
            f"wrote {escape(str(quantized.path))} (int8, calibrated on {escape(quantized.calibration)}); on "
            f"{escape(quantized.check)}: max |int8 - float32| probability {quantized.max_prob_diff:.3f} "
            f"(mean {quantized.mean_prob_diff:.4f}), {quantized.decision_agreement:.1%} of decisions unchanged"
        )
    if bioimageio:
        from protloc.deployment.bioimageio import export_bioimageio

        package = export_bioimageio(
            model,
            bioimageio_out,
            tolerance=tolerance,
            opset=opset,
            authors=author,
            license=license,
            parity_data=parity_data,
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
    from protloc.model.card import read_card
    from protloc.training.ensemble import make_ensemble

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
    from protloc.explanation.explain import explain_sample

    explanation = explain_sample(
        model, data, sample_id, out, split=split, classes=class_ or None, max_classes=max_classes
    )
    names = explanation.class_names
    shown = ", ".join(f"{names[c]} {explanation.probabilities[c]:.2f}" for c in explanation.maps)
    truth = explanation.true_labels
    known = f"; true: {', '.join(names[c] for c in truth)}" if truth else ""
    console.print(escape(f"wrote {out}: {shown}{known}"))
