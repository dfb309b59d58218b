"""ONNX export with a parity check, so deployments can run without torch.

:func:`export_onnx` writes the package's network (single model or ensemble, normalisation included) with a
dynamic batch axis, embeds the model card in the ONNX metadata (the file is then self-describing), and
compares ONNX Runtime against PyTorch on real inputs: images the caller names (``parity_data``; an error if
they cannot be read), else the package's own training images when they are reachable, else synthetic fields,
and the result says which and, for synthetic ones, why (:attr:`ExportResult.synthetic`; the CLI prints it and
suggests ``--parity-data``). The export is refused when the largest absolute difference in the logits exceeds
``tolerance`` (1e-4 by default, float32).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protloc.errors import DataError, ModelError
from protloc.inference.core import OnnxBackend, Preprocessor
from protloc.model.card import ONNX_CARD_KEY, ONNX_FILE, ModelCard
from protloc.model.package import ModelPackage, load_package
from protloc.utils import atomic_path

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    inputs: str
    """where the parity inputs came from (for synthetic fields, why no real ones were used)."""
    exporter: str
    batch_sizes: tuple[int, ...]
    synthetic: bool = False
    """whether the parity check ran on synthetic fields instead of real images."""


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' and the quantiser's logging, warnings and prints."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(network: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """Try the dynamo exporter, fall back to the TorchScript one; return which worked."""
    errors = []
    for dynamo in (True, False):
        try:
            with quiet_export():
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    torch.onnx.export(
                        network,
                        (example,),
                        str(path),
                        dynamo=True,
                        opset_version=opset,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_shapes={"pixels": {0: batch}},
                        external_data=False,
                    )
                else:
                    torch.onnx.export(
                        network,
                        (example,),
                        str(path),
                        dynamo=False,
                        opset_version=opset,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    )
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # exporter failures are many and varied
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {exc.__class__.__name__}: {str(exc)[:200]}")
    raise ModelError("ONNX export failed with both exporters: " + " | ".join(errors))


class _Named(torch.nn.Module):
    """Gives the exported graph's input the name ``pixels``."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(pixels)


def parity_inputs(
    package: ModelPackage, count: int = 4, data: str | Path | None = None
) -> tuple[np.ndarray, str, bool]:
    """Model inputs (uint8 ``(N, C, S, S)``) for a parity check, where they came from, and whether they are
    synthetic: the images of ``data`` when given, else the card's training images if they can be read, else
    synthetic fields (the description then says why no real ones were used).

    Raises:
        DataError: ``data`` was given and cannot be read (a named source never falls back to synthetic fields).
    """
    if data is not None:
        batch = _real_inputs(package, data, count)
        return batch, f"{len(batch)} images from {data}", False
    named = package.card.training_data
    if not named:
        why = "the model card names no training data"
    elif not Path(named).exists():
        why = f"the training data {named} is not reachable from here"
    else:
        try:
            batch = _real_inputs(package, named, count)
            return batch, f"{len(batch)} training images from {named}", False
        except (DataError, OSError) as exc:
            why = f"the training data {named} could not be read: {exc}"
    return _synthetic_inputs(package, count), f"{count} synthetic fields ({why})", True


def _real_inputs(package: ModelPackage, data: str | Path, count: int) -> np.ndarray:
    from protloc.data.catalog import open_dataset

    preprocessor = Preprocessor.from_card(package.card)
    catalog = open_dataset(data, channels=list(package.channels), allow_empty_labels=True)
    if not len(catalog):
        raise DataError(f"{data}: no images to check the export on")
    picks = [catalog.ids[i] for i in range(min(count, len(catalog)))]
    return np.concatenate([preprocessor.load(catalog.files[i], i) for i in picks])


def _synthetic_inputs(package: ModelPackage, count: int) -> np.ndarray:
    from protloc.synth import generate_sample
    from protloc.synth.labels import SYNTH_SCHEME

    preprocessor = Preprocessor.from_card(package.card)
    rng = np.random.default_rng(0)
    fields = []
    for i in range(count):
        labels = np.zeros(SYNTH_SCHEME.num_classes, np.uint8)  # the generator draws the 2018 classes
        labels[(i * 7) % SYNTH_SCHEME.num_classes] = 1
        planes = generate_sample(labels, max(package.size, 64), rng)
        fields.append(preprocessor.prepare_uint8(np.stack([planes[c] for c in package.channels])))
    return np.concatenate(fields)


def export_onnx(
    model: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = 18,
    tolerance: float = 1e-4,
    parity_data: str | Path | None = None,
) -> ExportResult:
    """Export a package to ONNX and check it against PyTorch.

    Args:
        model: the package folder.
        out: the ``.onnx`` file to write (default: ``model.onnx`` inside the package).
        opset: ONNX opset version.
        tolerance: largest allowed absolute difference between ONNX Runtime and PyTorch logits.
        parity_data: a data set (folder, Kaggle root, labels CSV) whose images the check runs on (default: the
            card's training data, else synthetic fields; see :func:`parity_inputs`).

    Raises:
        ModelError: export failed, or the outputs differ by more than ``tolerance`` (nothing is written).
        DataError: ``parity_data`` cannot be read.
    """
    package = load_package(model)
    target = Path(out) if out is not None else package.path / ONNX_FILE
    if target.suffix.lower() != ".onnx":
        raise ModelError(f"{target}: the output file must end in .onnx")
    network = _Named(package.build_model()).eval()
    inputs, source, synthetic = parity_inputs(package, data=parity_data)
    pixels = Preprocessor.to_pixels(inputs)
    with torch.no_grad():
        expected = network(torch.from_numpy(pixels)).numpy()
    with atomic_path(target) as temp:
        exporter = _export(network, torch.from_numpy(pixels[:2]), temp, opset)
        embed_card(temp, package.card, exporter)
        backend = OnnxBackend(temp)
        worst = 0.0
        sizes = (1, len(pixels))
        for size in sizes:
            got = backend.session.run(None, {backend.input_name: pixels[:size]})[0]
            worst = max(worst, float(np.abs(got - expected[:size]).max()))
        if not np.isfinite(worst) or worst > tolerance:
            raise ModelError(
                f"ONNX export of {package.path} differs from PyTorch by {worst:.2e} (tolerance {tolerance:.0e}); "
                "not written"
            )
    return ExportResult(
        path=target, max_abs_diff=worst, inputs=source, exporter=exporter, batch_sizes=sizes, synthetic=synthetic
    )


def embed_card(path: Path, card: ModelCard, exporter: str, extra: dict[str, str] | None = None) -> None:
    """Replace an ONNX file's metadata with the package's card, the exporter's name and ``extra`` entries."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entries = {ONNX_CARD_KEY: json.dumps(card.to_dict()), "protloc_exporter": exporter, **(extra or {})}
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.producer_name = "protloc"
    onnx.save(model, str(path))
