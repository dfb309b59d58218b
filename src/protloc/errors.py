"""Errors a user can cause, with messages that say what is wrong, where, and what to do.

Everything the user can get wrong (a missing file, a corrupt image, a bad label, a wrong flag) raises a
:class:`ProtlocError`. The CLI prints its message on one line and exits non-zero; a traceback means a bug.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path


class ProtlocError(Exception):
    """Base class for user-facing errors: the message is printed as is, on one line."""


class DataError(ProtlocError):
    """A data set, image or CSV file is missing, unreadable or malformed."""


class LabelError(DataError):
    """A label string names an unknown class, repeats one, or is not a number."""


class ConfigError(ProtlocError):
    """A flag, a config file or a combination of settings is invalid."""


class ModelError(ProtlocError):
    """A model package is missing, malformed, or does not fit the data it is asked to handle."""


class StorageError(ProtlocError):
    """The disk refused a write or a read: full, over quota, read-only, or not permitted."""


class BusyError(ProtlocError):
    """Another process holds the output this one needs (see :mod:`protloc.locks`)."""


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})
"""``errno`` values that are the storage's answer, not a bug: reported on one line by :func:`storage_error`."""


def storage_error(exc: OSError, path: str | os.PathLike[str] | None = None, action: str = "write") -> StorageError:
    """One line for a write the disk refused: the path, why, and what to free or change.

    Args:
        exc: the ``OSError`` (its ``errno`` should be in :data:`STORAGE_ERRNOS`).
        path: the file being written (default: the one the error names).
        action: what was refused, for the message (``"write"``; ``"access"`` when it is not known).
    """
    target = Path(path if path is not None else (exc.filename or "?"))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = ""
        with contextlib.suppress(OSError):
            existing = next(p for p in (target, *target.parents) if p.exists())
            free = f" ({shutil.disk_usage(existing).free / 2**20:.0f} MiB free there)"
        why = "over the disk quota" if exc.errno == errno.EDQUOT else "no space left on the device"
        if exc.errno == errno.EFBIG:
            why = "the file is too large for its file system"
        return StorageError(
            f"cannot write {target}: {why}{free}; free space on that disk (old runs, caches) or write elsewhere"
        )
    if exc.errno == errno.EROFS:
        return StorageError(f"cannot {action} {target}: the file system is read-only; write the output elsewhere")
    return StorageError(
        f"cannot {action} {target}: permission denied; use a folder you may {action}, or change its permissions"
    )


class DependencyError(ProtlocError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str) -> None:
    """Raise :class:`DependencyError` naming ``extra`` when ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DependencyError(
            f"this needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'protloc[{extra}]'"
        )
