"""The on-disk cache: every sample decoded and resized once, stored as ``uint8`` in one flat array file.

Decoding four PNGs costs ~7 ms per sample per core; reading a cached sample costs microseconds. So training
reads from a cache built once per (data set, channels, size, bit depth):

* **Layout**: ``<cache_dir>/<name>-<size>px-<channels>-<fingerprint>/`` holds ``images.u8`` (a raw C-order
  ``(N, C, S, S)`` uint8 array, memory-mapped while building) and ``meta.json`` (shape, ids, settings).
* **Fingerprint**: a hash of the ids, every channel file's name, size and modification time, and the
  settings. Change any file or setting and a new cache is built; otherwise the old one is reused.
* **Atomic and resumable**: building happens in ``<key>.partial/`` with a ``done.u8`` mask flushed as
  samples land; a killed build resumes where it stopped (a sample whose files changed meanwhile is redone),
  and only a complete build is renamed into place.
* **Bounded memory**: :class:`ArrayCache` reads samples with ``os.pread`` rather than keeping the array
  mapped, so a training process's resident memory does not grow with the data set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protloc import __version__
from protloc.data.catalog import Catalog
from protloc.data.io import read_sample
from protloc.errors import DataError
from protloc.utils import atomic_write_json, default_workers
from protloc.workers import imap

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$PROTLOC_CACHE``, else ``$XDG_CACHE_HOME/protloc``, else ``~/.cache/protloc``."""
    if os.environ.get("PROTLOC_CACHE"):
        return Path(os.environ["PROTLOC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protloc"


def _file_signatures(catalog: Catalog, channels: Sequence[str]) -> np.ndarray:
    """One 16-byte digest per sample of its channel files' names, sizes and modification times."""
    signatures = np.zeros((len(catalog), 16), dtype=np.uint8)
    for row, sample_id in enumerate(catalog.ids):
        files = catalog.files[sample_id]
        digest = hashlib.blake2b(digest_size=16)
        for channel in channels:
            path = files.get(channel)
            if path is None:
                raise DataError(f"sample {sample_id}: missing {channel} channel file in {catalog.image_dir}")
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        signatures[row] = np.frombuffer(digest.digest(), dtype=np.uint8)
    return signatures


def _layout_key(catalog: Catalog, channels: Sequence[str], size: int, bit_depth: int) -> str:
    """What the shape and meaning of the store depend on (not the file contents): ids and settings."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(channels), size, bit_depth]).encode())
    for sample_id in catalog.ids:
        digest.update(sample_id.encode() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class ArrayCache:
    """A finished cache: ``len(cache)`` samples of shape ``(C, S, S)``, read one at a time without mapping."""

    folder: Path
    ids: list[str]
    channels: tuple[str, ...]
    size: int
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self._file = self.folder / "images.u8"
        self._sample_bytes = len(self.channels) * self.size * self.size
        self._fd: int | None = None
        self._pid: int | None = None
        expected = self._sample_bytes * len(self.ids)
        if self._file.stat().st_size != expected:
            raise DataError(f"{self._file}: size {self._file.stat().st_size} != expected {expected}; delete the cache")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.ids), len(self.channels), self.size, self.size)

    def _descriptor(self) -> int:
        # One descriptor per process: DataLoader workers fork after the parent may have opened it.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self._file, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, index: int) -> np.ndarray:
        """Sample ``index`` as a fresh ``(C, S, S)`` uint8 array."""
        if not 0 <= index < len(self.ids):
            raise IndexError(f"cache index {index} out of range for {len(self.ids)} samples")
        data = os.pread(self._descriptor(), self._sample_bytes, index * self._sample_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(len(self.channels), self.size, self.size).copy()

    def memmap(self) -> np.ndarray:
        """The whole store as a read-only memory map (for statistics and benchmarks)."""
        return np.memmap(self._file, dtype=np.uint8, mode="r", shape=self.shape)

    def channel_statistics(
        self, indices: Sequence[int] | np.ndarray | None = None, max_samples: int = 2000, seed: int = 0
    ) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of pixel values scaled to 0-1, over up to ``max_samples`` samples."""
        pool = np.arange(len(self)) if indices is None else np.asarray(indices)
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(pool, size=min(max_samples, len(pool)), replace=False))
        sums = np.zeros(len(self.channels), np.float64)
        squares = np.zeros(len(self.channels), np.float64)
        for index in picks:
            sample = self.read(int(index)).reshape(len(self.channels), -1).astype(np.float64) / 255.0
            sums += sample.mean(axis=1)
            squares += (sample**2).mean(axis=1)
        mean = sums / max(len(picks), 1)
        std = np.sqrt(np.maximum(squares / max(len(picks), 1) - mean**2, 1e-12))
        return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-3)), 6) for s in std]

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state


_WORKER: dict[str, Any] = {}


def _init_worker(path: str, shape: tuple[int, ...], channels: tuple[str, ...], size: int, bit_depth: int) -> None:
    _WORKER["array"] = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    _WORKER["settings"] = (channels, size, bit_depth)


def _fill(job: tuple[int, str, dict[str, Path]]) -> tuple[int, str | None]:
    index, sample_id, files = job
    channels, size, bit_depth = _WORKER["settings"]
    try:
        _WORKER["array"][index] = read_sample(files, channels, size=size, bit_depth=bit_depth, sample_id=sample_id)
    except DataError as exc:
        return index, str(exc)
    return index, None


def open_cache(folder: str | Path) -> ArrayCache:
    """Open a finished cache folder (one that has ``meta.json``)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: not a finished protloc cache (no meta.json)")
    meta = json.loads(meta_path.read_text())
    return ArrayCache(
        folder=folder, ids=list(meta["ids"]), channels=tuple(meta["channels"]), size=int(meta["size"]), meta=meta
    )


def build_cache(
    catalog: Catalog,
    channels: Sequence[str],
    size: int,
    *,
    cache_dir: str | Path | None = None,
    bit_depth: int = 16,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ArrayCache:
    """Return the cache for this catalog and settings, building (or finishing) it when needed.

    Raises:
        DataError: a sample cannot be read (the partial cache is kept, so fixing the file and re-running
            only redoes what is missing).
    """
    channels = tuple(channels)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    signatures = _file_signatures(catalog, channels)
    layout = _layout_key(catalog, channels, size, bit_depth)
    # the finished cache is keyed by content: ids, file names/sizes/mtimes, channels, size, bit depth
    content = hashlib.sha256(layout.encode() + signatures.tobytes()).hexdigest()[:16]
    stem = f"{_safe(catalog.name)}-{size}px-{''.join(c[0] for c in channels)}"
    final = root / f"{stem}-{content}"
    if (final / "meta.json").is_file():
        cache = open_cache(final)
        if on_progress:
            on_progress(len(cache), len(cache))
        return cache

    # The partial build is keyed by layout only: when files change between attempts (a corrupt file fixed),
    # only the samples whose files changed are redone.
    partial = root / f"{stem}-{layout}.partial"
    shape = (len(catalog), len(channels), size, size)
    done = _prepare_partial(partial, shape, signatures)
    started = time.perf_counter()
    _fill_missing(catalog, partial, done, shape, channels, size, bit_depth, workers or default_workers(), on_progress)
    images_path = partial / "images.u8"
    with images_path.open("rb+") as handle:
        os.fsync(handle.fileno())
    meta = {
        "format": CACHE_FORMAT,
        "protloc_version": __version__,
        "ids": catalog.ids,
        "channels": list(channels),
        "size": size,
        "bit_depth": bit_depth,
        "shape": list(shape),
        "source": str(catalog.image_dir),
        "name": catalog.name,
        "built_seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(partial / "meta.json", meta)
    (partial / "done.u8").unlink(missing_ok=True)
    (partial / "signatures.u8").unlink(missing_ok=True)
    if final.exists():  # a concurrent build finished first; keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(final)
    return open_cache(final)


def _prepare_partial(partial: Path, shape: tuple[int, ...], signatures: np.ndarray) -> np.memmap:
    """The partial build's sparse image file and its done mask, with the samples whose files changed since the
    last attempt (or all, on a first attempt) marked to do."""
    partial.mkdir(parents=True, exist_ok=True)
    images_path = partial / "images.u8"
    expected_bytes = int(np.prod(shape))
    if not images_path.exists() or images_path.stat().st_size != expected_bytes:
        with images_path.open("wb") as handle:
            handle.truncate(expected_bytes)  # sparse: no zeros written
        (partial / "done.u8").unlink(missing_ok=True)
    done = _open_done_mask(partial / "done.u8", shape[0])
    signatures_path = partial / "signatures.u8"
    if signatures_path.is_file() and signatures_path.stat().st_size == signatures.nbytes:
        previous = np.fromfile(signatures_path, dtype=np.uint8).reshape(signatures.shape)
        changed = (previous != signatures).any(axis=1)
        done[changed] = 0
    else:
        done[:] = 0
    done.flush()
    signatures.tofile(signatures_path)
    return done


def _fill_missing(
    catalog: Catalog,
    partial: Path,
    done: np.memmap,
    shape: tuple[int, ...],
    channels: tuple[str, ...],
    size: int,
    bit_depth: int,
    workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Decode and resize every sample not done yet into the partial build, in worker processes.

    Raises:
        DataError: a sample cannot be read (what was finished stays marked done).
    """
    todo = [int(i) for i in np.flatnonzero(done == 0)]
    total = len(catalog)
    completed = total - len(todo)
    if on_progress:
        on_progress(completed, total)
    errors: list[str] = []
    jobs = [(i, catalog.ids[i], catalog.files[catalog.ids[i]]) for i in todo]
    last_flush = time.monotonic()
    results = imap(
        _fill,
        jobs,
        workers=1 if len(jobs) < 32 else workers,
        chunksize=8,
        initializer=_init_worker,
        initargs=(str(partial / "images.u8"), shape, channels, size, bit_depth),
        preload=[__name__],
    )
    try:
        for index, error in results:
            if error is not None:
                errors.append(error)
                continue
            done[index] = 1
            completed += 1
            if on_progress:
                on_progress(completed, total)
            if time.monotonic() - last_flush > 2.0:
                done.flush()  # pixels are in the page cache already; the mask only marks them
                last_flush = time.monotonic()
    finally:
        done.flush()
        results.close()  # stops the workers when a sample fails to read
        _WORKER.clear()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(
            f"cache build: {errors[0]}{more}; fix or remove the file and run again (finished samples are kept)"
        )


def _open_done_mask(path: Path, count: int) -> np.memmap:
    if not path.exists() or path.stat().st_size != count:
        with path.open("wb") as handle:
            handle.truncate(count)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=(count,))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40] or "data"
