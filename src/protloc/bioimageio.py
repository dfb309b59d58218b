"""BioImage.IO model packages: export a protloc package so deepImageJ, ilastik, QuPath and bioimageio.core
users can run it, and read such a package back for ``protloc predict`` / ``protloc watch``.

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
import hashlib
import shutil
import tempfile
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc.bioimageio_compat import ensure_compatible
from protloc.card import ModelCard, check_card
from protloc.errors import ModelError
from protloc.inference import OnnxBackend

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
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


def is_bioimageio(path: str | Path) -> bool:
    """A BioImage.IO package: a ``.zip`` holding ``rdf.yaml``/``bioimageio.yaml``, or a folder with one."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in RDF_NAMES)
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name in archive.namelist() for name in RDF_NAMES)
    return False


# ---------------------------------------------------------------------------------------------- reading


class SpecPipelineBackend:
    """Runs a protloc BioImage.IO package as its description says: 0-1 pixels -> (x 255, the preprocessing
    ops) -> ONNX Runtime -> postprocessing ops -> probabilities. Implements :class:`protloc.inference.Backend`.
    """

    def __init__(self, onnx_path: Path, pre: Sequence[dict[str, Any]], post: Sequence[dict[str, Any]], **kw: Any):
        self.network = OnnxBackend(onnx_path, **kw)
        self.pre = [_operation(op, "preprocessing") for op in pre]
        self.post = [_operation(op, "postprocessing") for op in post]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, np.float32) * np.float32(255.0)
        for op in self.pre:
            x = op(x)
        return np.asarray(
            self.network.session.run(None, {self.network.input_name: np.ascontiguousarray(x, np.float32)})[0]
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        y = self.logits(batch).astype(np.float64)
        for op in self.post:
            y = op(y)
        return np.asarray(y, np.float32)


def _along_channels(values: Any) -> Any:
    if isinstance(values, list):
        return np.asarray(values, np.float32).reshape(1, -1, 1, 1)
    return np.float32(values)


def _operation(op: dict[str, Any], where: str) -> Callable[[np.ndarray], np.ndarray]:
    name, kwargs = op.get("id"), op.get("kwargs") or {}
    axis = kwargs.get("axis")
    if axis not in (None, "channel"):
        raise ModelError(f"{where} {name} along axis {axis!r}: protloc runs only per-channel or whole-tensor ops")
    if name == "scale_linear":
        gain, offset = _along_channels(kwargs.get("gain", 1.0)), _along_channels(kwargs.get("offset", 0.0))
        return lambda x: x * gain + offset
    if name == "fixed_zero_mean_unit_variance":
        mean, std = _along_channels(kwargs["mean"]), _along_channels(kwargs["std"])
        return lambda x: (x - mean) / std
    if name == "sigmoid":
        return lambda y: 1.0 / (1.0 + np.exp(-y))
    if name == "ensure_dtype":
        return lambda x: x
    raise ModelError(f"this BioImage.IO package uses {where} {name!r}, which protloc does not run")


def read_description(path: str | Path) -> dict[str, Any]:
    """The parsed ``rdf.yaml`` of a package (zip or folder)."""
    import yaml

    path = Path(path)
    try:
        if path.is_dir():
            text = next((path / n).read_text("utf-8") for n in RDF_NAMES if (path / n).is_file())
        else:
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in RDF_NAMES if n in archive.namelist())
                text = archive.read(name).decode("utf-8")
        rdf = yaml.safe_load(text)
    except (StopIteration, OSError, zipfile.BadZipFile, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable BioImage.IO package ({exc.__class__.__name__})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ModelError(f"{path}: its description is not a BioImage.IO model")
    return rdf


def load_bioimageio(path: str | Path, *, threads: int | None = None) -> tuple[ModelCard, SpecPipelineBackend]:
    """The card and a backend for a BioImage.IO package that protloc exported (zip or unpacked folder).

    Raises:
        ModelError: not a protloc package, no ONNX weights, a weights file that does not match its checksum,
            or processing protloc does not run.
    """
    path = Path(path)
    rdf = read_description(path)
    card = ((rdf.get("config") or {}).get("protloc") or {}).get("card")
    if card is None:
        raise ModelError(f"{path}: a BioImage.IO model, but not one exported by protloc (no config.protloc.card)")
    typed = check_card(card, where=str(path))
    onnx = (rdf.get("weights") or {}).get("onnx")
    if not onnx:
        raise ModelError(f"{path}: this BioImage.IO package has no ONNX weights, which protloc runs")
    inputs, outputs = rdf["inputs"][0], rdf["outputs"][0]
    folder = Path(tempfile.mkdtemp(prefix="protloc-bioimageio-"))
    weights = folder / Path(onnx["source"]).name
    try:
        if path.is_dir():
            shutil.copyfile(path / onnx["source"], weights)
        else:
            with zipfile.ZipFile(path) as archive:
                weights.write_bytes(archive.read(onnx["source"]))
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if onnx.get("sha256") and digest != onnx["sha256"]:
            raise ModelError(f"{path}: {onnx['source']} does not match its sha256 in the description (damaged?)")
        backend = SpecPipelineBackend(
            weights, inputs.get("preprocessing") or [], outputs.get("postprocessing") or [], threads=threads
        )
    except (OSError, KeyError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ModelError(f"{path}: cannot read its ONNX weights ({exc.__class__.__name__}: {exc})") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(backend, shutil.rmtree, folder, True)
    return typed, backend


# ------------------------------------------------------------------------------------------------ export


@dataclass
class BioimageioExport:
    path: Path
    max_abs_diff: dict[str, float]
    """weights format -> largest |spec pipeline - protloc| on the test logits."""
    inputs: str
    weights: tuple[str, ...]


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
) -> BioimageioExport:
    """Write a BioImage.IO model package (zip) for a protloc package (see the module docstring).

    Args:
        model: the package folder.
        out: the ``.zip`` to write (default ``MODEL/bioimageio.zip``).
        tolerance: largest allowed |spec pipeline - PyTorch| on the logits, per weights format.
        torchscript: add TorchScript weights too (deepImageJ and older consumers run those).
        authors: names for the description's authors (default: the current user).
        license: SPDX licence id of the weights.

    Raises:
        DependencyError: bioimageio.spec is not installed (``pip install 'protloc[bioimageio]'``).
        ModelError: export failed, parity failed, or the description did not validate (nothing written).
    """
    ensure_compatible()
    import torch

    from protloc.export import _export, _Named, parity_inputs
    from protloc.inference import Preprocessor
    from protloc.package import load_package
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
    uint8, source = parity_inputs(package, count=2)
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
    return BioimageioExport(path=target, max_abs_diff=worst, inputs=source, weights=tuple(weights))


def _normalised(pixels: np.ndarray, pre: Sequence[dict[str, Any]]) -> np.ndarray:
    x = pixels * np.float32(255.0)
    for op in pre:
        x = _operation(op, "preprocessing")(x)
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
    import torch
    from bioimageio.spec.model import v0_5 as spec

    size = card.size
    channels = list(card.channels)
    protloc_config = {
        "card": card.to_dict(),
        "thresholds": dict(zip(card.classes, card.thresholds, strict=True)),
        "resize": f"whole field to {size} x {size} px, area interpolation when shrinking",
    }
    try:
        with offline():
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
