from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protloc.cli import main
from protloc.deployment.quantize import INT8_ONNX_FILE, QUANT_KEY, quantize_onnx
from protloc.errors import ConfigError, ModelError
from protloc.inference.predict import predict_folder
from protloc.model.card import read_card


@pytest.fixture(scope="module")
def package(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(trained_run / "model", folder)
    return folder


@pytest.fixture(scope="module")
def exported(package: Path) -> Path:
    code = main(["export", str(package), "--int8", "--calibration-images", "32"])
    assert code == 0
    return package


def onnx_graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path)).graph


def _ops(path: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_int8_export_is_quantised_and_self_describing(exported: Path) -> None:
    int8, fp32 = exported / INT8_ONNX_FILE, exported / "model.onnx"
    ops = _ops(int8)
    assert ops.count("QuantizeLinear") >= 5 and "DequantizeLinear" in ops
    assert "QuantizeLinear" not in _ops(fp32)
    assert int8.stat().st_size < fp32.stat().st_size / 2  # int8 weights
    # the classifier stays float32: its inputs come straight from a Dequantize, its logits are not re-quantised
    graph = onnx_graph(int8)
    producer = {out: node for node in graph.node for out in node.output}
    logits = producer[graph.output[0].name]
    while logits.op_type not in ("Gemm", "MatMul"):
        logits = producer[logits.input[0]]
    weight = producer.get(logits.input[1])
    assert weight is None or weight.op_type != "DequantizeLinear"
    assert "QuantizeLinear" not in [node.op_type for node in graph.node if graph.output[0].name in node.output]
    assert read_card(int8) == read_card(exported)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    settings = json.loads(meta[QUANT_KEY])
    assert "32 images from" in settings["calibration_images"]
    assert 0 < settings["max_prob_diff"] < 0.1 and settings["decision_agreement"] > 0.8


def test_int8_predictions_stay_close_to_float32(exported: Path, synth_data: Path, tmp_path: Path) -> None:
    fp32 = predict_folder(exported / "model.onnx", synth_data, tmp_path / "f", backend="onnx", workers=1)
    int8 = predict_folder(exported / INT8_ONNX_FILE, synth_data, tmp_path / "i", backend="onnx", workers=1)
    assert fp32 is not None and int8 is not None
    diff = np.abs(int8.probabilities - fp32.probabilities)
    assert 0 < diff.max() < 0.1
    assert diff.mean() < 0.02


def test_int8_refusals_write_nothing(package: Path, tmp_path: Path) -> None:
    target = tmp_path / "q.onnx"
    with pytest.raises(ModelError, match="changes a probability"):
        quantize_onnx(package, target, count=8, check_count=8, tolerance=1e-7)
    with pytest.raises(ConfigError, match="calibration data not found"):
        quantize_onnx(package, target, data=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown calibration method"):
        quantize_onnx(package, target, method="magic")
    assert not target.exists()
    assert not list(tmp_path.iterdir())


def test_calibration_reader_rewinds_to_the_first_images() -> None:
    from protloc.deployment.quantize import _Reader

    pixels = np.arange(10 * 4 * 2 * 2, dtype=np.float32).reshape(10, 4, 2, 2)
    reader = _Reader("input", pixels, batch=4)

    def read_all() -> list[np.ndarray]:
        out = []
        while (chunk := reader.get_next()) is not None:
            out.append(chunk["input"])
        return out

    first = read_all()
    assert [len(c) for c in first] == [4, 4, 2]
    reader.rewind()
    again = read_all()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_default_calibration_keeps_activation_memory_flat_across_input_sizes() -> None:
    from protloc.deployment.quantize import default_calibration_images

    assert [default_calibration_images(s) for s in (None, 64, 128, 256, 512, 2048)] == [512, 512, 512, 128, 32, 32]


def test_the_stem_can_stay_float_and_an_unknown_layer_is_refused(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "stem.int8.onnx"
    quantize_onnx(package, out, count=16, check_count=8, keep_float=("classifier", "stem"), tolerance=1.0)
    graph = onnx_graph(out)
    producer = {name: node for node in graph.node for name in node.output}
    stem = next(node for node in graph.node if node.op_type == "Conv")
    weight = producer.get(stem.input[1])
    assert weight is None or weight.op_type != "DequantizeLinear"  # float weights
    later = [node for node in graph.node if node.op_type == "Conv"][1]
    assert producer[later.input[1]].op_type == "DequantizeLinear"  # the others int8
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[QUANT_KEY])["float32"] == ["classifier", "stem"]
    with pytest.raises(ConfigError, match="unknown float layer 'head'"):
        quantize_onnx(package, tmp_path / "x.onnx", keep_float=("head",))


def test_the_command_and_the_library_keep_the_same_layers_in_float_by_default() -> None:
    import inspect

    from protloc.cli.deploy import export
    from protloc.deployment.quantize import DEFAULT_FLOAT_LAYERS

    default = inspect.signature(export).parameters["int8_float"].default
    assert (
        tuple(default.split(","))
        == DEFAULT_FLOAT_LAYERS
        == inspect.signature(quantize_onnx).parameters["keep_float"].default
    )
