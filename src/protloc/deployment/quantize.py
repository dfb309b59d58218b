"""int8 ONNX: static quantisation calibrated on the training images, with its accuracy change measured.

:func:`quantize_onnx` turns a package's float32 ONNX export into an int8 one with ONNX Runtime's static
quantisation: QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer
kernels), weights signed int8 per output channel, activations unsigned int8 per tensor with ranges
calibrated on real inputs. The calibration images come from the package's own training data (or ``data``)
and are decoded and resized exactly as ``protloc predict`` does; a disjoint set of images from the same
data then compares the int8 model against the float32 one (largest and mean change of the probabilities,
share of label decisions that stay the same under the card's thresholds). The export is refused when the
largest probability change exceeds ``tolerance``. The card is embedded as in the float32 file, with the
quantisation settings beside it, so the int8 file is self-describing and ``protloc predict FILE.onnx``
takes it as it is.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc.errors import ConfigError, DataError, ModelError
from protloc.inference.core import OnnxBackend, Preprocessor
from protloc.model.card import ONNX_FILE, ModelCard
from protloc.utils import atomic_path

INT8_ONNX_FILE = "model.int8.onnx"
QUANT_KEY = "protloc_quantization"
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
FLOAT_LAYERS = ("classifier", "stem")
"""Layers :func:`quantize_onnx` can leave in float32 (``keep_float``)."""
DEFAULT_FLOAT_LAYERS = ("classifier", "stem")
"""Left in float32 unless told otherwise: on a resnet18 trained by ``protloc demo --data`` on 3,000 foreign fields
(test macro F1 0.745), 1,000 test fields' worst probability change was 0.134 with the classifier alone in float32
and 0.054 with the stem too, macro F1 -0.006 and +0.002, decisions flipped 0.08 % and 0.04 % (BENCHMARKS.md,
"int8")."""


@dataclass
class QuantizeResult:
    path: Path
    calibration: str
    """where the calibration images came from, and how many."""
    check: str
    """where the check images came from, and how many (disjoint from the calibration images)."""
    max_prob_diff: float
    mean_prob_diff: float
    decision_agreement: float
    """share of (image, class) decisions under the card's thresholds that int8 and float32 share."""
    seconds: float


def training_inputs(
    card: ModelCard, data: str | Path | None, count: int, *, skip: int = 0, seed: int = 0
) -> tuple[np.ndarray, str]:
    """uint8 model inputs ``(N, C, S, S)`` from a data set (default: the card's training data).

    Images are drawn at random (seeded) across the whole training split, so calibration sees every kind of
    field rather than the first few; ``skip`` drops the first draws (the check set skips the calibration set).
    """
    source = data if data is not None else card.training_data
    if not source:
        raise ConfigError("the card names no training data; pass the calibration data (--calibration DATA)")
    if not Path(source).exists():
        raise ConfigError(f"{source}: calibration data not found; pass another folder with --calibration DATA")
    from protloc.data.catalog import open_dataset

    channels = list(card.input.channels)
    catalog = open_dataset(source, channels=channels, allow_empty_labels=True)
    if len(catalog) <= skip:
        raise DataError(f"{source}: {len(catalog)} images, too few to calibrate and check on ({skip + 1} needed)")
    order = np.random.default_rng(seed).permutation(len(catalog))[skip : skip + count]
    preprocessor = Preprocessor.from_card(card)
    picks = [catalog.ids[int(i)] for i in order]
    batch = np.concatenate([preprocessor.load(catalog.files[i], i) for i in picks])
    return batch, f"{len(picks)} images from {source}"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over float 0-1 pixels, a few images at a time."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch: int = 8) -> None:
        self.input_name = input_name
        self._pixels = pixels
        self._batch = batch
        self._batches: Iterator[np.ndarray] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._batches, None)
        return None if chunk is None else {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        """Start again from the first images (ONNX Runtime asks when it calibrates more than once)."""
        pixels, batch = self._pixels, self._batch
        self._batches = (pixels[i : i + batch] for i in range(0, len(pixels), batch))


def quantize_onnx(
    model: str | Path,
    out: str | Path | None = None,
    *,
    source: str | Path | None = None,
    data: str | Path | None = None,
    count: int | None = None,
    check_count: int = 64,
    method: str = "percentile",
    tolerance: float = 0.1,
    keep_float: tuple[str, ...] = DEFAULT_FLOAT_LAYERS,
    on_progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Write an int8 ONNX model of a package, calibrated on its training images, and measure the change.

    Args:
        model: the package folder.
        out: the ``.onnx`` file to write (default: ``model.int8.onnx`` inside the package).
        source: the float32 ONNX file to quantise (default: a fresh export, parity-checked against PyTorch).
        data: the calibration data set (default: the training data named in the card).
        count: calibration images (default: :func:`default_calibration_images`); ``check_count`` more,
            disjoint from them, measure the change.
        method: range calibration: ``minmax``, ``percentile`` (99.999th) or ``entropy``.
        tolerance: largest allowed change of any probability between int8 and float32.
        keep_float: layers left in float32 (``FLOAT_LAYERS``): ``classifier`` (the last Gemm/MatMul and what
            follows it, so the logits are not rounded to 256 levels) and ``stem`` (the first convolution, which
            sees the raw pixels); ``()`` quantises everything.

    Raises:
        ConfigError: no calibration data, or a bad setting.
        ModelError: quantisation failed or changed the probabilities by more than ``tolerance``
            (nothing is written).
    """
    import time

    from protloc.deployment.onnx import embed_card, export_onnx
    from protloc.model.package import load_package

    start = time.perf_counter()
    unknown = [name for name in keep_float if name not in FLOAT_LAYERS]
    if unknown:
        raise ConfigError(f"unknown float layer {unknown[0]!r}; use {', '.join(FLOAT_LAYERS)}")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; use {', '.join(CALIBRATION_METHODS)}")
    package = load_package(model)
    if count is None:
        count = default_calibration_images(package.card.architecture.image_size)
    if count < 1 or check_count < 1:
        raise ConfigError(f"calibration and check need at least one image each, got {count} and {check_count}")
    target = Path(out) if out is not None else package.path / INT8_ONNX_FILE
    if target.suffix.lower() != ".onnx":
        raise ModelError(f"{target}: the output file must end in .onnx")
    card = package.card
    progress = on_progress or (lambda _message: None)
    progress("reading calibration images")
    calibration, calibration_source = training_inputs(card, data, count)
    checking, check_source = training_inputs(card, data, check_count, skip=count)
    with tempfile.TemporaryDirectory(prefix="protloc-int8-") as tmp:
        work = Path(tmp)
        if source is None:
            progress("exporting the float32 model")
            source = export_onnx(package.path, work / ONNX_FILE).path
        elif not Path(source).is_file():
            raise ModelError(f"{source}: float32 ONNX file not found; create it with `protloc export`")
        progress(f"calibrating on {len(calibration)} images ({method})")
        prepared = work / "prepared.onnx"
        quantized = work / "int8.onnx"
        _quantize(Path(source), prepared, quantized, Preprocessor.to_pixels(calibration), method, keep_float)
        progress(f"checking on {len(checking)} other images")
        pixels = Preprocessor.to_pixels(checking)
        reference = _probabilities(OnnxBackend(source), pixels)
        got = _probabilities(OnnxBackend(quantized), pixels)
        diff = np.abs(got - reference)
        thresholds = np.asarray(card.thresholds, np.float32)
        agreement = float(((got >= thresholds) == (reference >= thresholds)).mean())
        worst = float(diff.max())
        if not np.isfinite(worst) or worst > tolerance:
            raise ModelError(
                f"int8 quantisation of {package.path} changes a probability by {worst:.3f} (tolerance "
                f"{tolerance}) on {check_source}; not written (try more --calibration-images, or another "
                "--calibration-method)"
            )
        settings = {
            "format": "QDQ",
            "weights": "int8, per channel, symmetric",
            "float32": list(keep_float),
            "activations": "uint8, per tensor",
            "calibration": method,
            "calibration_images": calibration_source,
            "check_images": check_source,
            "max_prob_diff": round(worst, 6),
            "mean_prob_diff": round(float(diff.mean()), 6),
            "decision_agreement": round(agreement, 6),
        }
        with atomic_path(target) as temp:
            temp.write_bytes(quantized.read_bytes())
            embed_card(temp, card, _exporter_of(Path(source)), extra={QUANT_KEY: json.dumps(settings)})
            OnnxBackend(temp)  # the written file loads
    return QuantizeResult(
        path=target,
        calibration=calibration_source,
        check=check_source,
        max_prob_diff=worst,
        mean_prob_diff=float(diff.mean()),
        decision_agreement=agreement,
        seconds=time.perf_counter() - start,
    )


def default_calibration_images(image_size: int | None) -> int:
    """512 images at 128 px, fewer for larger inputs: ONNX Runtime's calibrators hold every image's
    activations, so the count keeps their memory about that of 512 images at 128 px (32 at 512 px). On a
    well-trained 128 px model, 512 images cost 0.0043 macro F1 against 0.0067 with 128 (BENCHMARKS.md)."""
    side = image_size or 128
    return int(max(32, min(512, 512 * (128 / side) ** 2)))


def _probabilities(backend: OnnxBackend, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([backend(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def _exporter_of(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == "protloc_exporter"), "unknown")


def _head_nodes(model: Any) -> list[str]:
    """The classifier: the nodes from the last Gemm/MatMul to the logits. They stay float32 (a few thousand
    weights), so the logits are not rounded to 256 levels per tensor, which moved a probability by up to 0.1."""
    outputs = {o.name for o in model.graph.output}
    producer = {out: node for node in model.graph.node for out in node.output}
    head: list[str] = []
    frontier = [producer[name] for name in outputs if name in producer]
    while frontier:
        node = frontier.pop()
        if len(head) == 8:  # no Gemm/MatMul near the output: a head of another kind, quantised as it is
            return []
        head.append(node.name)
        if node.op_type not in ("Gemm", "MatMul"):
            frontier += [producer[name] for name in node.input if name in producer]
    return head


def _stem_nodes(model: Any) -> list[str]:
    """The first convolution the input reaches (it sees the raw pixels, whose range calibration fits worst)."""
    inputs = {i.name for i in model.graph.input}
    frontier, seen = set(inputs), 0
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(name in frontier for name in node.input):
            if node.op_type == "Conv":
                return [node.name]
            frontier.update(node.output)
            seen += 1
            if seen > 16:
                break
    return []


def _quantize(
    source: Path, prepared: Path, out: Path, pixels: np.ndarray, method: str, keep_float: tuple[str, ...]
) -> None:
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ModelError("int8 export needs onnxruntime with its quantization tools: pip install onnxruntime") from None
    import onnx

    from protloc.deployment.onnx import INPUT_NAME, quiet_export

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name or INPUT_NAME
    try:
        with quiet_export():
            # Shape inference and constant folding first, as ONNX Runtime recommends, so every Conv/Gemm
            # is found and quantised.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            graph = onnx.load(str(prepared), load_external_data=False)
            head = (_head_nodes(graph) if "classifier" in keep_float else []) + (
                _stem_nodes(graph) if "stem" in keep_float else []
            )
            quantize_static(
                str(prepared),
                str(out),
                _Reader(input_name, pixels),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
                nodes_to_exclude=head,
                extra_options={"CalibPercentile": 99.999},
            )
    except Exception as exc:  # the quantiser's failures are many and varied
        raise ModelError(f"{source}: int8 quantisation failed ({exc.__class__.__name__}: {str(exc)[:200]})") from None
