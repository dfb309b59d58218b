"""protloc: where in a human cell does a protein live?

Multi-label classification of protein subcellular localization from 4-channel fluorescence microscopy
(Human Protein Atlas): read and check data, train, calibrate, predict, export, explain and serve.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("protloc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

# protloc 0.1's flat module paths (see protloc._moved) still import, with a DeprecationWarning
from protloc import _moved

_moved.install()
