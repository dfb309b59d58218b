"""Errors a user can cause, with messages that say what is wrong, where, and what to do.

Everything the user can get wrong (a missing file, a corrupt image, a bad label, a wrong flag) raises a
:class:`ProtlocError`. The CLI prints its message on one line and exits non-zero; a traceback means a bug.
"""

from __future__ import annotations


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
