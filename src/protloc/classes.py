"""Labels under a class scheme: parsing, formatting and naming.

Class schemes are data (see :mod:`protloc.schemes`); every function here takes the scheme, which comes from
the catalog (the labels file) or the model card, never from a default. Labels travel through protloc as
multi-hot ``uint8`` vectors of the scheme's length; on disk they are id strings such as ``"7 1 2 0"`` (2018)
or ``"7|1|2|0"`` (2021). ``HPA2018`` is the Kaggle 2018 release's scheme, for code that is about that release
(the synthetic generator draws its classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protloc.errors import ConfigError
from protloc.schemes import ClassScheme, HPAClass, get_scheme, is_integer_text

__all__ = [
    "HPA2018",
    "ClassScheme",
    "HPAClass",
    "format_labels",
    "is_integer_text",
    "label_ids",
    "label_names",
    "parse_labels",
    "resolve_class",
    "resolve_classes",
]

HPA2018: ClassScheme = get_scheme("hpa2018")


def parse_labels(text: str, *, scheme: ClassScheme, where: str = "", allow_empty: bool = False) -> np.ndarray:
    """Parse a label string (``"7 1 2 0"`` or ``"7|1|2|0"``) into a multi-hot ``uint8`` vector of ``scheme``.

    Args:
        text: class ids separated by spaces or ``|``, in any order.
        where: where the string came from (``"train.csv line 5"``), put at the start of error messages.
        allow_empty: accept an empty string as "no label" (a prediction may have none; a training
            label may not).
        scheme: the class scheme (the catalog's or the model card's).

    Raises:
        LabelError: a token is not an integer, is not a class id, appears twice, or an exclusive class
            (``Negative``) is combined with another.
    """
    return scheme.parse(text, where=where, allow_empty=allow_empty)


def label_ids(multi_hot: Sequence[int] | np.ndarray, scheme: ClassScheme) -> list[int]:
    """The class ids set in a multi-hot vector, ascending."""
    return scheme.ids_of(multi_hot)


def format_labels(multi_hot: Sequence[int] | np.ndarray, scheme: ClassScheme) -> str:
    """Format a multi-hot vector as its release writes labels, ids ascending (``"0 1 2 7"``, ``"0|1|2|7"``)."""
    return scheme.format(multi_hot)


def label_names(multi_hot: Sequence[int] | np.ndarray, scheme: ClassScheme) -> list[str]:
    """The class names set in a multi-hot vector, in id order."""
    return scheme.names_of(multi_hot)


def resolve_class(value: int | str, scheme: ClassScheme) -> int:
    """A class id from an id (``7``, ``"7"``), a name or short name (any case), or an unambiguous name prefix.

    Raises:
        ConfigError: an id out of the scheme's range, or a name that matches no class (with suggestions) or
            several.
    """
    return scheme.resolve(value)


def resolve_classes(classes: Sequence[int | str] | str, scheme: ClassScheme) -> list[int]:
    """Class ids for ids and/or names (see :func:`resolve_class`); a string may list several, comma-separated.

    Repeats are dropped; the order is kept.
    """
    items: Sequence[int | str] = (
        [part for part in classes.split(",") if part.strip()] if isinstance(classes, str) else classes
    )
    if not items:
        raise ConfigError(f"no class given; give class ids ({scheme.id_range}) or names")
    return list(dict.fromkeys(resolve_class(item, scheme) for item in items))
