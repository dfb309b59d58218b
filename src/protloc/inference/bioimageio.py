"""Reading a BioImage.IO model package that protloc exported (a zip or an unpacked folder), and running it as
its description says, for ``protloc predict`` / ``protloc watch`` / the service (the export side is
:mod:`protloc.deployment.bioimageio`).

The package's ``config.protloc.card`` is protloc's model card; its ONNX weights run on ONNX Runtime with the
preprocessing and postprocessing ops of the description (:class:`SpecPipelineBackend`).

A package is read as something a stranger sent: the description is read only up to
:data:`MAX_DESCRIPTION_BYTES`; every path it names must stay inside the package (relative, no ``..``, no URL, no
symbolic link, a regular file); the weights must carry a ``sha256``, and are checked against the size limit
(``PROTLOC_MAX_WEIGHTS_MB``, :data:`DEFAULT_MAX_WEIGHTS_MB`) and, in a zip, against an inflation ratio of
:data:`MAX_INFLATE_RATIO` before a byte is read, then streamed in chunks of :data:`CHUNK` bytes to a private
temporary file with the sha256 computed on the way (never held whole in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from protloc.errors import ConfigError, ModelError
from protloc.inference.core import OnnxBackend
from protloc.model.card import ModelCard, check_card

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
"""The file names of a package's description, in order of preference."""

MAX_DESCRIPTION_BYTES = 1 << 20
"""The largest ``rdf.yaml`` read (1 MiB; protloc's own are about 10 KB)."""
DEFAULT_MAX_WEIGHTS_MB = 512
"""The largest weights file read, in MiB, unless ``PROTLOC_MAX_WEIGHTS_MB`` says otherwise: above any single
network protloc trains (a DenseNet-121 is 28 MiB) and an ensemble of several; an ONNX file without external data
cannot pass 2 GiB anyway."""
WEIGHTS_ENV = "PROTLOC_MAX_WEIGHTS_MB"
MAX_INFLATE_RATIO = 100
"""A zip member larger than 1 MiB that inflates more than this many times is refused unread: network weights
barely compress (about 1.1 times), a run of zeros a thousand times."""
CHUNK = 1 << 20
"""Bytes read at a time from a package's member."""


def is_bioimageio(path: str | Path) -> bool:
    """A BioImage.IO package: a ``.zip`` holding ``rdf.yaml``/``bioimageio.yaml``, or a folder with one."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() or (path / name).is_symlink() for name in RDF_NAMES)
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name in archive.namelist() for name in RDF_NAMES)
    return False


class SpecPipelineBackend:
    """Runs a protloc BioImage.IO package as its description says: 0-1 pixels -> (x 255, the preprocessing
    ops) -> ONNX Runtime -> postprocessing ops -> probabilities. Implements :class:`protloc.inference.core.Backend`.
    """

    def __init__(self, onnx_path: Path, pre: Sequence[dict[str, Any]], post: Sequence[dict[str, Any]], **kw: Any):
        self.network = OnnxBackend(onnx_path, **kw)
        self.pre = [spec_operation(op, "preprocessing") for op in pre]
        self.post = [spec_operation(op, "postprocessing") for op in post]

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


def spec_operation(op: dict[str, Any], where: str) -> Callable[[np.ndarray], np.ndarray]:
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


def max_weights_bytes() -> int:
    """The weights size limit in bytes: ``PROTLOC_MAX_WEIGHTS_MB`` if set, else :data:`DEFAULT_MAX_WEIGHTS_MB`.

    Raises:
        ConfigError: the variable is not a positive whole number.
    """
    text = os.environ.get(WEIGHTS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_WEIGHTS_MB << 20
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ConfigError(f"{WEIGHTS_ENV}={text!r}: expected a positive whole number of MiB")
    return int(text) << 20


def package_path(source: Any, where: str) -> str:
    """A path the description names, as a path inside the package: relative, in ``/`` form, without ``..``.

    Raises:
        ModelError: an absolute path, a drive or URL, ``..``, a backslash or control character, or no text.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelError(f"{where}: a file path in the description is {source!r}, not a path")
    refused = (
        "://" in source
        or source.startswith(("/", "~"))
        or re.match(r"^[A-Za-z]:", source) is not None
        or "\\" in source
        or any(ord(c) < 32 for c in source)
        or ".." in PurePosixPath(source).parts
    )
    if refused:
        raise ModelError(
            f"{where}: the description names {source!r}, which is not a file inside the package; "
            "protloc reads only relative paths within it (no absolute path, '..' or URL)"
        )
    return PurePosixPath(source).as_posix()


@contextlib.contextmanager
def open_member(package: Path, name: str, limit: int, what: str, hint: str = "") -> Iterator[tuple[IO[bytes], int]]:
    """A package member opened for reading, with its size, after every check that needs no byte of it.

    In a folder: no component of ``name`` may be a symbolic link, the file must resolve inside the folder and be a
    regular file (not a device such as ``/dev/zero``), opened without following links. In a zip: the member must
    exist and declare at most ``limit`` bytes and a plausible inflation ratio.

    Raises:
        ModelError: naming the package, the member and what is wrong.
    """
    where = f"{package}: {what} {name}"
    name = package_path(name, f"{package}: {what}")
    if package.is_dir():
        current = package
        for part in PurePosixPath(name).parts:
            current = current / part
            if current.is_symlink():
                raise ModelError(
                    f"{where}: {current.relative_to(package)} is a symbolic link; protloc reads only "
                    "files that lie inside the package"
                )
        try:
            inside = current.resolve(strict=True).is_relative_to(package.resolve())
            if not inside or not stat.S_ISREG(current.lstat().st_mode):  # no device, pipe or folder: not opened
                raise ModelError(f"{where}: not a regular file inside the package")
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            descriptor = os.open(current, flags)
        except OSError as exc:
            raise ModelError(f"{where}: cannot be read ({exc.strerror or exc})") from None
        with os.fdopen(descriptor, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):  # replaced between the look and the opening
                raise ModelError(f"{where}: not a regular file inside the package")
            _check_size(info.st_size, limit, where, hint)
            yield file, info.st_size
        return
    try:
        archive = zipfile.ZipFile(package)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{package}: not a readable BioImage.IO package ({exc.__class__.__name__})") from None
    with archive:
        try:
            member = archive.getinfo(name)
        except KeyError:
            raise ModelError(f"{where}: the package does not hold this file") from None
        _check_size(member.file_size, limit, where, hint)
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > CHUNK and ratio > MAX_INFLATE_RATIO:
            raise ModelError(
                f"{where}: {member.compress_size / 2**20:.1f} MiB that would inflate {ratio:.0f} times, to "
                f"{member.file_size / 2**20:.0f} MiB (at most {MAX_INFLATE_RATIO} times): not network weights"
            )
        try:
            with archive.open(member) as handle:
                yield handle, member.file_size
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ModelError(f"{where}: damaged in the zip ({exc.__class__.__name__}: {exc})") from None


def _check_size(size: int, limit: int, where: str, hint: str) -> None:
    if size > limit:
        raise ModelError(f"{where}: {size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.0f} MiB{hint}")


def read_member(package: Path, name: str, limit: int, what: str) -> bytes:
    """A small member read whole, in chunks, never past ``limit`` bytes."""
    with open_member(package, name, limit, what) as (handle, _):
        data = bytearray()
        while chunk := handle.read(CHUNK):
            data += chunk
            if len(data) > limit:
                raise ModelError(f"{package}: {what} {name}: longer than the {limit / 2**20:.0f} MiB it may hold")
    return bytes(data)


def copy_verified(package: Path, name: str, sha256: Any, target: Path, what: str) -> None:
    """Copy a member to ``target`` in chunks, computing its sha256 on the way; refuse a missing or wrong one.

    Raises:
        ModelError: no ``sha256`` in the description, a member over the limits, or a digest that differs (the
            partial copy is deleted).
    """
    if not isinstance(sha256, str) or re.fullmatch(r"[0-9a-fA-F]{64}", sha256) is None:
        raise ModelError(
            f"{package}: {what} {name} has no sha256 in the description; protloc runs only weights it can verify "
            "(export the package again with protloc or bioimageio.spec, which write it)"
        )
    limit = max_weights_bytes()
    digest = hashlib.sha256()
    copied = 0
    hint = f"; raise {WEIGHTS_ENV} if they are genuine"
    with open_member(package, name, limit, what, hint) as (handle, _), target.open("wb") as out:
        while chunk := handle.read(CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise ModelError(f"{package}: {what} {name}: longer than the limit of {limit / 2**20:.0f} MiB")
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256.lower():
        target.unlink()
        raise ModelError(f"{package}: {name} does not match its sha256 in the description (damaged or altered?)")


def read_description(path: str | Path) -> dict[str, Any]:
    """The parsed ``rdf.yaml`` of a package (zip or folder), read within :data:`MAX_DESCRIPTION_BYTES`."""
    import yaml

    path = Path(path)
    if path.is_dir():
        names = [n for n in RDF_NAMES if (path / n).exists() or (path / n).is_symlink()]
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in RDF_NAMES if n in archive.namelist()]
        except (OSError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{path}: not a readable BioImage.IO package ({exc.__class__.__name__})") from None
    if not names:
        raise ModelError(f"{path}: not a BioImage.IO package (no {' or '.join(RDF_NAMES)})")
    text = read_member(path, names[0], MAX_DESCRIPTION_BYTES, "description")
    try:
        rdf = yaml.safe_load(text.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable BioImage.IO package ({exc.__class__.__name__})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ModelError(f"{path}: its description is not a BioImage.IO model")
    return rdf


def read_bioimageio_card(path: str | Path) -> ModelCard:
    """The protloc model card inside a BioImage.IO package that protloc exported (zip or unpacked folder).

    Raises:
        ModelError: not a readable BioImage.IO model, or not one exported by protloc.
    """
    return _protloc_card(read_description(path), Path(path))


def _protloc_card(rdf: dict[str, Any], path: Path) -> ModelCard:
    card = ((rdf.get("config") or {}).get("protloc") or {}).get("card")
    if card is None:
        raise ModelError(f"{path}: a BioImage.IO model, but not one exported by protloc (no config.protloc.model.card)")
    return check_card(card, where=str(path))


def load_bioimageio(path: str | Path, *, threads: int | None = None) -> tuple[ModelCard, SpecPipelineBackend]:
    """The card and a backend for a BioImage.IO package that protloc exported (zip or unpacked folder).

    Raises:
        ModelError: not a protloc package, no ONNX weights, weights without a sha256 or that do not match it,
            a path outside the package, a member over the size limits, or processing protloc does not run.
    """
    path = Path(path)
    rdf = read_description(path)
    typed = _protloc_card(rdf, path)
    onnx = (rdf.get("weights") or {}).get("onnx")
    if not isinstance(onnx, dict):
        raise ModelError(f"{path}: this BioImage.IO package has no ONNX weights, which protloc runs")
    try:
        inputs, outputs = rdf["inputs"][0], rdf["outputs"][0]
    except (KeyError, IndexError, TypeError):
        raise ModelError(f"{path}: the description has no inputs or outputs") from None
    source = package_path(onnx.get("source"), f"{path}: ONNX weights")
    folder = Path(tempfile.mkdtemp(prefix="protloc-bioimageio-"))
    weights = folder / "weights.onnx"
    try:
        copy_verified(path, source, onnx.get("sha256"), weights, "ONNX weights")
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
