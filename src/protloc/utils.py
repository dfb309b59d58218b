"""Small helpers shared across modules: atomic writes of files and folders, worker counts, timing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from protloc.errors import STORAGE_ERRNOS, storage_error


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or kill while writing leaves ``path`` as it was (absent or old), never half-written. A write the
    disk refuses (full, over quota, read-only, not permitted) raises a one-line
    :class:`~protloc.errors.StorageError` naming ``path``, and the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:
            raise storage_error(exc, path) from None
        raise
    os.close(handle)
    temp = Path(temp_name)
    try:
        temp.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files; outputs should have the usual permissions
        yield temp
        temp.replace(path)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:  # disk full, quota, read-only, not permitted: one line, not a traceback
            raise storage_error(exc, path) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as temp, temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_folder(target: str | Path, *, before_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``target``; on success it becomes ``target`` (see :func:`swap_folder`).

    On any failure, and on a kill before the swap, ``target`` stays as it was and the staging folder is removed
    (after a kill, a hidden ``.<name>.partial-*`` folder is left, which nothing reads). ``before_replace(target)``
    runs just before an existing ``target`` is replaced, to check it may still be (it may have changed meanwhile).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if before_replace is not None and target.exists():
            before_replace(target)
        swap_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_folder(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` at ``target`` by renames: an existing ``target`` is renamed aside,
    ``staging`` renamed into place, then the old one removed. ``target`` is at every moment absent, old or new,
    never half of each.

    Raises:
        DataError: the rename failed (another file system, permissions).
    """
    from protloc.errors import DataError

    try:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if target.exists():
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(trash)
            try:
                staging.rename(target)
            except BaseException:
                trash.rename(target)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(target)
    except OSError as exc:
        raise DataError(f"could not move the finished folder into {target}: {exc}") from None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: ``taskset``, cgroup cpusets), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(limit: int = 8) -> int:
    """Worker processes to use by default: the CPUs this process may run on, at most ``limit``."""
    return max(1, min(usable_cpus(), limit))


class Stopwatch:
    """Measures wall time of named steps: ``with watch("train"): ...``; ``watch.seconds`` maps name -> s."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
