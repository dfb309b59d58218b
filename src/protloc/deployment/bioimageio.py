"""BioImage.IO model packages: export a protloc package so deepImageJ, ilastik, QuPath and bioimageio.core
users can run it (:mod:`protloc.inference.bioimageio` reads such a package back for ``protloc predict``).

:func:`export_bioimageio` writes one zip in the current model description format (0.5), built with
``bioimageio.spec``'s own classes and validated by it before anything is written:

* ``weights.onnx`` (and ``weights.torchscript.pt``): the network *without* its normalisation, which is stated
  in the spec's own terms instead: input ``pixels`` ``(batch, channel, y, x)`` float32 holding 8-bit values
  0-255 in the card's channel order (each channel named), preprocessing ``scale_linear`` (gain 1/255) then
  ``fixed_zero_mean_unit_variance`` along the channel axis with the card's mean and std, and postprocessing
  ``sigmoid``; output ``probabilities`` ``(batch, class)`` with the class names as channel names. An ensemble
  keeps its members' normalisations inside the network (they differ) and states only the scaling.
* ``test_input.npy`` / ``test_output.npy``: a real training field (or a synthetic one) and protloc's own
  probabilities for it, computed by the package's PyTorch network; a cover picture; ``README.md``
  (channels, resizing, classes and thresholds, how to run it); licence; citations of the Human Protein Atlas.
* ``config.protloc``: the model card (thresholds, channels, input size, bit depth), so protloc can use the
  package as its own.

Before writing, the spec's pipeline is run on the test input with ONNX Runtime (the same code
:func:`load_bioimageio` gives ``protloc predict``) and compared with PyTorch within ``tolerance`` (the ONNX
export's 1e-4 on logits); TorchScript is checked the same way. Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import getpass
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc.deployment.bioimageio_compat import ensure_compatible
from protloc.errors import ModelError
from protloc.inference.bioimageio import SpecPipelineBackend, spec_operation
from protloc.model.card import ModelCard

INPUT_ID = "pixels"
OUTPUT_ID = "probabilities"
BIOIMAGEIO_FILE = "bioimageio.zip"
CITATIONS = (
    ("Thul PJ et al. (2017) A subcellular map of the human proteome. Science 356:eaal3321", "10.1126/science.aal3321"),
    (
        "Ouyang W et al. (2019) Analysis of the Human Protein Atlas Image Classification competition. "
        "Nature Methods 16:1254-1261",
        "10.1038/s41592-019-0658-6",
    ),
)


@dataclass
class BioimageioExport:
    path: Path
    max_abs_diff: dict[str, float]
    """weights format -> largest |spec pipeline - protloc| on the test logits."""
    inputs: str
    weights: tuple[str, ...]
    synthetic: bool = False
    """whether the parity check and the test tensors used synthetic fields instead of real images."""


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """bioimageio.spec checking local files (hashes, test tensors) without reaching the network."""
    from bioimageio.spec import ValidationContext

    with ValidationContext(perform_io_checks=True):
        yield


def _cover(image: np.ndarray, channels: Sequence[str], lines: Sequence[str], path: Path) -> None:
    import cv2

    from protloc.plots import composite_rgb, stretch_for_display

    side = 256
    rgb = cv2.resize(composite_rgb(stretch_for_display(image), channels), (side, side), interpolation=cv2.INTER_AREA)
    panel = np.full((side, side, 3), 255, np.uint8)
    for row, text in enumerate(lines[:9]):
        cv2.putText(panel, text, (10, 28 + 26 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.concatenate([rgb, panel], axis=1), cv2.COLOR_RGB2BGR))
    assert ok
    encoded.tofile(path)


def _readme(card: ModelCard, name: str, single: bool, parity: dict[str, float], inputs: str) -> str:
    spec = card.input
    channels = ", ".join(spec.channels)
    size = spec.size
    classes = "\n".join(
        f"| {i} | {c} | {t:.3f} |" for i, (c, t) in enumerate(zip(card.classes, card.thresholds, strict=True))
    )
    normalised = (
        "then `fixed_zero_mean_unit_variance` per channel with the training mean and std (both in the description)"
        if single
        else "(each member of this ensemble normalises inside the network)"
    )
    metrics = card.metrics.get("validation", {})
    score = (
        f"macro F1 {metrics['macro_f1']:.4f} on the validation split at the thresholds above"
        if "macro_f1" in metrics
        else "no validation metrics in the model card"
    )
    checks = ", ".join(f"{fmt} {diff:.1e}" for fmt, diff in parity.items())
    return f"""# {name}

Multi-label subcellular localization of a protein from a four-channel immunofluorescence field
(Human Protein Atlas style: red microtubules, green protein of interest, blue nucleus, yellow endoplasmic
reticulum). Exported by protloc {card.protloc_version or ""} from a `{card.architecture.name}`
model.

## Input

`pixels`: `(batch, channel, y, x)` float32, channels **{channels}** in this order, each an 8-bit intensity
0-255, the **whole field resized to {size} x {size} px** (area interpolation when shrinking). 16-bit files map
linearly onto 0-255 as `round(v * 255 / (2**{spec.bit_depth} - 1))`, the same for every image (no
per-image stretching: brightness carries signal). Preprocessing (in the description): `scale_linear` by 1/255,
{normalised}.

## Output

`probabilities`: `(batch, class)`, one sigmoid probability per class (several can be present at once). A class
is predicted when its probability reaches its threshold; protloc also gives a field with no class over its
threshold its most likely class (every HPA field shows at least one localization).

| id | class | threshold |
|---|---|---|
{classes}

## Validation

Scores from protloc's training run: {score}. At export, each weights format with the processing of this
description reproduced protloc's PyTorch logits on {inputs} within 1e-4 (largest difference: {checks}); the
test tensors are protloc's own probabilities for the first of them.

## Running it

- protloc: `protloc predict MODEL.zip FOLDER` or `protloc watch FOLDER --model MODEL.zip` (resizing, channel
  files and thresholds handled).
- bioimageio.core: `bioimageio predict --inputs ...` on a resized 4-channel array; apply the thresholds above.
- deepImageJ, ilastik, QuPath: open the zip; give a {size} x {size} image with the four channels in the order
  above.

## Limitations

Trained on the data named in `config.protloc.card.training`; fields from other microscopes, magnifications or
stains may need re-training. Classifies whole fields; per-cell results need a cell model.
"""


def export_bioimageio(
    model: str | Path,
    out: str | Path | None = None,
    *,
    tolerance: float = 1e-4,
    torchscript: bool = True,
    opset: int = 18,
    authors: Sequence[str] | None = None,
    license: str = "MIT",
    name: str | None = None,
    parity_data: str | Path | None = None,
) -> BioimageioExport:
    """Write a BioImage.IO model package (zip) for a protloc package (see the module docstring).

    Args:
        model: the package folder.
        out: the ``.zip`` to write (default ``MODEL/bioimageio.zip``).
        tolerance: largest allowed |spec pipeline - PyTorch| on the logits, per weights format.
        torchscript: add TorchScript weights too (deepImageJ and older consumers run those).
        authors: names for the description's authors (default: the current user).
        license: SPDX licence id of the weights.
        parity_data: a data set whose images the parity check and the test tensors use (default: the card's
            training data, else synthetic fields, as :func:`protloc.deployment.onnx.parity_inputs` says).

    Raises:
        DependencyError: bioimageio.spec is not installed (``pip install 'protloc[bioimageio]'``).
        ModelError: export failed, parity failed, or the description did not validate (nothing written).
    """
    ensure_compatible()
    import torch

    from protloc.deployment.onnx import _export, _Named, parity_inputs
    from protloc.inference.core import Preprocessor
    from protloc.model.package import load_package
    from protloc.utils import atomic_path

    package = load_package(model)
    target = Path(out) if out is not None else package.path / BIOIMAGEIO_FILE
    if target.suffix.lower() != ".zip":
        raise ModelError(f"{target}: a BioImage.IO package is written as a .zip")
    card = package.card
    single = not package.is_ensemble
    full = package.build_model().eval()
    core = full.backbone if single else full
    assert isinstance(core, torch.nn.Module)
    network = _Named(core).eval()
    uint8, source, synthetic = parity_inputs(package, count=2, data=parity_data)
    pixels = Preprocessor.to_pixels(uint8)
    with torch.no_grad():
        expected = full(torch.from_numpy(pixels)).numpy()
    probabilities = (1.0 / (1.0 + np.exp(-expected.astype(np.float64)))).astype(np.float32)
    pre: list[dict[str, Any]] = [{"id": "scale_linear", "kwargs": {"gain": 1.0 / 255.0, "offset": 0.0}}]
    if single:
        pre.append(
            {
                "id": "fixed_zero_mean_unit_variance",
                "kwargs": {"mean": list(card.input.mean), "std": list(card.input.std), "axis": "channel"},
            }
        )
    post = [{"id": "sigmoid"}]
    with tempfile.TemporaryDirectory(prefix="protloc-bioimageio-") as temp:
        work = Path(temp)
        onnx_path = work / "weights.onnx"
        _export(network, torch.from_numpy(_normalised(pixels[:1], pre)), onnx_path, opset)
        worst = {"onnx": _parity(SpecPipelineBackend(onnx_path, pre, post).logits(pixels), expected)}
        weights = ["onnx"]
        if torchscript:
            script_path = work / "weights.torchscript.pt"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in PyTorch, still run widely
                traced = torch.jit.trace(network, torch.from_numpy(_normalised(pixels[:1], pre)), check_trace=False)
                traced.save(str(script_path))
                loaded = torch.jit.load(str(script_path)).eval()
                got = loaded(torch.from_numpy(_normalised(pixels, pre))).numpy()
            worst["torchscript"] = _parity(got, expected)
            weights.append("torchscript")
        for fmt, diff in worst.items():
            if not np.isfinite(diff) or diff > tolerance:
                raise ModelError(
                    f"BioImage.IO export of {package.path}: {fmt} with the spec's processing differs from PyTorch "
                    f"by {diff:.2e} (tolerance {tolerance:.0e}); not written"
                )
        np.save(work / "test_input.npy", pixels[:1] * np.float32(255.0))
        np.save(work / "test_output.npy", probabilities[:1])
        import tifffile

        tifffile.imwrite(work / "sample_input.tif", pixels[1] * np.float32(255.0), photometric="minisblack")
        tifffile.imwrite(work / "sample_output.tif", probabilities[1:2], photometric="minisblack")
        order = np.argsort(-probabilities[0])[:8]
        _cover(
            uint8[0],
            package.channels,
            [f"{card.classes[i][:24]}  {probabilities[0, i]:.2f}" for i in order],
            work / "cover.png",
        )
        title = name or f"protloc {card.architecture.name} HPA protein localization"
        (work / "README.md").write_text(_readme(card, title, single, worst, source), encoding="utf-8")
        description = _describe(
            card, work, pre, post, title, weights, opset, tolerance, authors or [getpass.getuser()], license, single
        )
        from bioimageio.spec import save_bioimageio_package

        with atomic_path(target) as temp_zip, offline(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # bioimageio.spec's notes on re-reading its own output
            temp_zip.unlink()
            save_bioimageio_package(description, output_path=temp_zip)
    return BioimageioExport(path=target, max_abs_diff=worst, inputs=source, weights=tuple(weights), synthetic=synthetic)


def _normalised(pixels: np.ndarray, pre: Sequence[dict[str, Any]]) -> np.ndarray:
    x = pixels * np.float32(255.0)
    for op in pre:
        x = spec_operation(op, "preprocessing")(x)
    return np.ascontiguousarray(x, np.float32)


def _parity(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - expected).max())


def _describe(
    card: ModelCard,
    work: Path,
    pre: list[dict[str, Any]],
    post: list[dict[str, Any]],
    title: str,
    weights: Sequence[str],
    opset: int,
    tolerance: float,
    authors: Sequence[str],
    license: str,
    single: bool,
) -> Any:
    """The 0.5 model description, built from bioimageio.spec's classes (validated as it is built)."""
    import pydantic
    from bioimageio.spec.model import v0_5 as spec

    size = card.size
    protloc_config = {
        "card": card.to_dict(),
        "thresholds": dict(zip(card.classes, card.thresholds, strict=True)),
        "resize": f"whole field to {size} x {size} px, area interpolation when shrinking",
    }
    try:
        with offline():
            inputs, outputs = _tensors(spec, card, work, pre, single)
            entries = _weight_entries(spec, work, weights, opset)
            config = spec.Config(
                bioimageio=spec.BioimageioConfig(
                    reproducibility_tolerance=[
                        spec.ReproducibilityTolerance(absolute_tolerance=tolerance, relative_tolerance=1e-4)
                    ],
                    architecture_type=card.architecture.name[:32],
                    modality="fluorescence microscopy (immunofluorescence, 4 channels)",
                    task="multi-label classification",
                    target_structure=list(card.classes),
                ),
                protloc=protloc_config,  # type: ignore[call-arg]  # Config allows extra keys
            )
            return spec.ModelDescr(
                name=title,
                description="Where in the cell a protein lives: multi-label localization of the green channel's "
                f"protein over {card.num_classes} classes from a 4-channel HPA-style field.",
                authors=[spec.Author(name=a) for a in authors],
                cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in CITATIONS],
                license=spec.LicenseId(license),
                documentation=spec.FileDescr(source=work / "README.md"),
                covers=[spec.FileDescr(source=work / "cover.png")],
                tags=["fluorescence-light-microscopy", "classification", "2d", "human-protein-atlas", "protloc"],
                inputs=[inputs],
                outputs=[outputs],
                weights=spec.WeightsDescr(**entries),
                config=config,
            )
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ModelError(f"the BioImage.IO description did not validate: {where}: {first.get('msg')}") from None


def _tensors(spec: Any, card: ModelCard, work: Path, pre: list[dict[str, Any]], single: bool) -> tuple[Any, Any]:
    """The input tensor (8-bit intensities, the card's channels, scaled and normalised as the spec says) and the
    output tensor (one sigmoid probability per class)."""
    size = card.size
    channels = list(card.channels)
    preprocessing: list[Any] = [
        spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=pre[0]["kwargs"]["gain"], offset=0.0))
    ]
    if single:
        preprocessing.append(
            spec.FixedZeroMeanUnitVarianceDescr(
                kwargs=spec.FixedZeroMeanUnitVarianceAlongAxisKwargs(
                    mean=pre[1]["kwargs"]["mean"], std=pre[1]["kwargs"]["std"], axis=spec.AxisId("channel")
                )
            )
        )
    inputs = spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID),
        description=f"8-bit intensities 0-255, channels {', '.join(channels)}, field resized to {size} px",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=channels),
            spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
            spec.SpaceInputAxis(id=spec.AxisId("x"), size=size),
        ],
        test_tensor=spec.FileDescr(source=work / "test_input.npy"),
        sample_tensor=spec.FileDescr(source=work / "sample_input.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 255.0)),
        preprocessing=preprocessing,
    )
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID),
        description="sigmoid probability per class; thresholds in config.protloc.thresholds",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=list(card.classes))],
        test_tensor=spec.FileDescr(source=work / "test_output.npy"),
        sample_tensor=spec.FileDescr(source=work / "sample_output.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[spec.SigmoidDescr()],
    )
    return inputs, outputs


def _weight_entries(spec: Any, work: Path, weights: Sequence[str], opset: int) -> dict[str, Any]:
    """The ONNX weights, and the TorchScript ones traced from the same network when asked."""
    import torch

    entries: dict[str, Any] = {
        "onnx": spec.OnnxWeightsDescr(
            source=work / "weights.onnx",
            opset_version=opset,
            comment="exported by protloc from the package's safetensors weights; checked against PyTorch",
        )
    }
    if "torchscript" in weights:
        entries["torchscript"] = spec.TorchscriptWeightsDescr(
            source=work / "weights.torchscript.pt",
            pytorch_version=spec.Version(torch.__version__.split("+")[0]),
            parent="onnx",
            comment="traced from the same PyTorch network as the ONNX weights; checked against PyTorch",
        )
    return entries
