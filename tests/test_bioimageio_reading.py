"""Reading a BioImage.IO package as something a stranger sent (issue 20, rows 3 and 4): members within size and
inflation limits, read in chunks with the sha256 checked on the way, the sha256 required, and every path the
description names inside the package. Needs no bioimageio extra: reading a package is protloc's own code."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from protloc.errors import ModelError
from protloc.inference.bioimageio import CHUNK, is_bioimageio, load_bioimageio
from protloc.inference.predict import load_backend
from tests.helpers import require, tiny_package

require("onnxruntime")


def _rdf(card: dict[str, Any], source: str, sha256: str | None) -> dict[str, Any]:
    onnx: dict[str, Any] = {"source": source, "opset_version": 18}
    if sha256 is not None:
        onnx["sha256"] = sha256
    return {
        "type": "model",
        "format_version": "0.5.4",
        "name": "tiny",
        "inputs": [{"id": "pixels", "preprocessing": [{"id": "scale_linear", "kwargs": {"gain": 1 / 255}}]}],
        "outputs": [{"id": "probabilities", "postprocessing": [{"id": "sigmoid"}]}],
        "weights": {"onnx": onnx},
        "config": {"protloc": {"card": card}},
    }


@pytest.fixture(scope="module")
def onnx_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    """A tiny package's ONNX network (normalisation inside, 0-1 pixels in, logits out) and its card."""
    from protloc.deployment.onnx import export_onnx
    from protloc.model.card import read_card

    package = tiny_package(tmp_path_factory.mktemp("tiny") / "model", size=32)
    export_onnx(package)
    return (package / "model.onnx").read_bytes(), read_card(package).to_dict()


def _folder(root: Path, weights: bytes, card: dict[str, Any], source: str = "weights.onnx", **rdf: Any) -> Path:
    folder = root / "package"
    folder.mkdir(parents=True)
    (folder / "weights.onnx").write_bytes(weights)
    description = _rdf(card, source, hashlib.sha256(weights).hexdigest())
    description["weights"]["onnx"].update(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(description))
    return folder


def _zip(folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as target:
        for path in sorted(folder.iterdir()):
            target.write(path, path.name)
        for name, data in (extra or {}).items():
            target.writestr(name, data)
    return archive


def test_a_clean_package_loads_from_a_folder_and_a_zip(
    onnx_weights: tuple[bytes, dict[str, Any]], tmp_path: Path
) -> None:
    weights, card = onnx_weights
    folder = _folder(tmp_path, weights, card)
    pixels = np.random.default_rng(0).random((2, 4, 32, 32), dtype=np.float32)
    results = []
    for package in (folder, _zip(folder)):
        assert is_bioimageio(package)
        _, backend = load_backend(package, "auto")
        results.append(backend(pixels))
    assert results[0].shape == (2, 28) and np.allclose(results[0], results[1])


def test_weights_without_a_sha256_are_refused(onnx_weights: tuple[bytes, dict[str, Any]], tmp_path: Path) -> None:
    weights, card = onnx_weights
    folder = _folder(tmp_path, weights, card)
    description = yaml.safe_load((folder / "rdf.yaml").read_text())
    del description["weights"]["onnx"]["sha256"]
    (folder / "rdf.yaml").write_text(yaml.safe_dump(description))
    for package in (folder, _zip(folder)):
        with pytest.raises(ModelError, match="weights.onnx has no sha256 in the description"):
            load_bioimageio(package)


@pytest.mark.parametrize(
    "source",
    ["/etc/passwd", "/dev/zero", "../../outside/evil.onnx", "sub/../../evil.onnx", "https://evil.example/w.onnx",
     "C:/evil.onnx", "..\\evil.onnx"],
)  # fmt: skip
def test_paths_outside_the_package_are_refused(
    onnx_weights: tuple[bytes, dict[str, Any]], tmp_path: Path, source: str
) -> None:
    weights, card = onnx_weights
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.onnx").write_bytes(weights)
    folder = _folder(tmp_path / "deep" / "er", weights, card, source=source)
    for package in (folder, _zip(folder)):
        with pytest.raises(ModelError, match="not a file inside the package"):
            load_bioimageio(package)


def test_links_and_special_files_inside_a_folder_are_refused(
    onnx_weights: tuple[bytes, dict[str, Any]], tmp_path: Path
) -> None:
    weights, card = onnx_weights
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(weights)
    folder = _folder(tmp_path, weights, card, source="linked/weights.onnx")
    (folder / "linked").symlink_to(tmp_path)  # a folder link leading out
    with pytest.raises(ModelError, match="linked is a symbolic link"):
        load_bioimageio(folder)
    shutil.rmtree(folder)
    folder = _folder(tmp_path, weights, card, source="zero.onnx")
    (folder / "zero.onnx").symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="zero.onnx is a symbolic link"):
        load_bioimageio(folder)
    os.mkfifo(folder / "pipe.onnx")
    description = yaml.safe_load((folder / "rdf.yaml").read_text())
    description["weights"]["onnx"]["source"] = "pipe.onnx"
    (folder / "rdf.yaml").write_text(yaml.safe_dump(description))
    with pytest.raises(ModelError, match="pipe.onnx: not a regular file"):  # refused, not opened (it would block)
        load_bioimageio(folder)
    (folder / "rdf.yaml").unlink()
    (folder / "rdf.yaml").symlink_to("/dev/zero")  # the description itself
    started = time.perf_counter()
    with pytest.raises(ModelError, match="rdf.yaml is a symbolic link"):
        load_bioimageio(folder)
    assert time.perf_counter() - started < 1


def test_oversized_and_inflating_members_are_refused_before_a_byte_is_read(
    onnx_weights: tuple[bytes, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, card = onnx_weights
    read: list[int] = []
    original = zipfile.ZipExtFile.read

    def counting(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        if self.name == "weights.onnx":
            read.append(n)
        return original(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    # 8 MiB of zeros deflate to 8 KB: a thousand times (the attack: 1 GiB of zeros in a 42 MB zip)
    zeros = bytes(8 << 20)
    bomb = _folder(tmp_path / "bomb", zeros, card, source="weights.onnx")
    with pytest.raises(ModelError, match=r"would inflate \d+ times, to 8 MiB \(at most 100 times\)"):
        load_bioimageio(_zip(bomb))
    assert read == []
    monkeypatch.setenv("PROTLOC_MAX_WEIGHTS_MB", "1")
    noise = np.random.default_rng(0).bytes(3 << 20)
    big = _folder(tmp_path / "big", noise, card)
    for package in (big, _zip(big)):
        with pytest.raises(ModelError, match="3.0 MiB, over the limit of 1 MiB; raise PROTLOC_MAX_WEIGHTS_MB"):
            load_bioimageio(package)
    assert read == []
    monkeypatch.delenv("PROTLOC_MAX_WEIGHTS_MB")
    # within the limits: read in chunks, the digest computed on the way; a wrong one leaves no copy behind
    damaged = _folder(tmp_path / "damaged", weights, card)
    (damaged / "weights.onnx").write_bytes(weights[:-10] + b"0" * 10)
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("protloc-bioimageio-*"))
    with pytest.raises(ModelError, match="does not match its sha256"):
        load_bioimageio(_zip(damaged))
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("protloc-bioimageio-*")) == before
    assert read and all(0 < n <= CHUNK for n in read)  # never one read of a whole member


def test_a_description_past_its_limit_is_not_read_whole(
    onnx_weights: tuple[bytes, dict[str, Any]], tmp_path: Path
) -> None:
    weights, card = onnx_weights
    folder = _folder(tmp_path, weights, card)
    with (folder / "rdf.yaml").open("a") as handle:
        handle.write("# " + "x" * (2 << 20) + "\n")
    for package in (folder, _zip(folder)):
        with pytest.raises(ModelError, match="description rdf.yaml: 2.0 MiB, over the limit of 1 MiB"):
            load_bioimageio(package)
