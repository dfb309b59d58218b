"""One process per output folder: an exclusive lock that a second run is refused by, naming the holder.

``with hold(folder, "protloc predict"):`` takes an advisory ``flock`` on ``<folder>/.protloc.lock`` without
waiting. A second process asking for the same folder (a second ``protloc predict`` into the same ``--out``, a
``train`` into a run folder in use, a watcher) gets a one-line :class:`~protloc.errors.BusyError` naming the
holder's command, process id, host and start time, instead of interleaving its rows with the first's. The lock
belongs to the open file, so it vanishes when the holder exits, even when killed: there is never a stale lock to
clear by hand. The lock file itself stays (it holds only who last held it).

Under distributed launchers the processes of one run share its folder: only global rank 0 locks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

from protloc.errors import STORAGE_ERRNOS, BusyError, storage_error

LOCK_NAME = ".protloc.lock"

_HELD: set[int] = set()
"""File descriptors of the locks this process holds, dropped in forked children (:func:`_drop_in_child`)."""


def _drop_in_child() -> None:
    """In a forked child (a data-loader or pool worker), let go of the parent's locks.

    ``flock`` belongs to the open file, which a fork shares: a worker that outlives its killed parent for a few
    seconds would otherwise keep the folder locked, and the user's rerun would be refused for a dead process.
    The descriptor is pointed at ``/dev/null`` rather than closed, so nothing the child does with it can touch
    the lock.
    """
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_in_child)

P = ParamSpec("P")
R = TypeVar("R")


def _is_worker_rank() -> bool:
    """True in the non-zero ranks of a distributed run (they share rank 0's folder and its lock)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock on ``folder``: ``{"command", "pid", "host", "since"}``, or ``None``."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8")
        found = json.loads(text)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _describe(found: dict[str, Any] | None) -> str:
    if not found:
        return "another process"
    where = f"pid {found.get('pid', '?')}"
    if found.get("host") and found.get("host") != socket.gethostname():
        where += f" on {found['host']}"
    return f"{found.get('command', 'another process')!s} ({where}, since {found.get('since', '?')})"


@contextlib.contextmanager
def hold(folder: str | Path, command: str = "protloc") -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if needed) for the ``with`` block.

    Args:
        folder: the output folder.
        command: what this process is doing, shown to the one that is refused (``"protloc predict"``).

    Raises:
        BusyError: another process holds the folder; the message names it.
        StorageError: the folder cannot be created or written (full, read-only, not permitted).
    """
    folder = Path(folder)
    if _is_worker_rank():
        yield folder
        return
    path = folder / LOCK_NAME
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle: IO[str] = path.open("a+", encoding="utf-8")
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:
            raise storage_error(exc, path) from None
        raise
    with handle:
        if not _try_lock(handle):
            raise BusyError(
                f"{folder}: in use by {_describe(holder(folder))}; wait for it to finish or choose another folder"
            )
        _HELD.add(handle.fileno())
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                json.dumps(
                    {
                        "command": command,
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    }
                )
            )
            handle.flush()
            yield folder
        except BaseException:
            if created:  # a run that failed before writing anything leaves no folder behind
                _remove_if_only_lock(folder, path)
            raise
        finally:
            _HELD.discard(handle.fileno())
            _unlock(handle)


def _remove_if_only_lock(folder: Path, lock: Path) -> None:
    """Remove ``folder`` when it holds nothing but its lock file (a folder this process made and never used)."""
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [lock.name]:
            lock.unlink()
            folder.rmdir()


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - protloc's CI runs on Linux
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: IO[str]) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        with contextlib.suppress(OSError):
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def locked_output(argument: str, command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that it runs holding :func:`hold` on its folder argument ``argument``.

    ``@locked_output("out", "protloc predict")`` over ``predict_folder(model, data, out, ...)``: the whole call
    holds ``out``, and a second concurrent call is refused before it reads or writes anything.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            folder = signature.bind(*args, **kwargs).arguments[argument]
            with hold(folder, command):
                return function(*args, **kwargs)

        return wrapper

    return decorate
