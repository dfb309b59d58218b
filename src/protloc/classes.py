"""The 28 Human Protein Atlas localization classes and the label strings that name them.

This module is the single source of truth for class ids, names and short names. Labels travel through
protloc as multi-hot ``uint8`` vectors of length :data:`NUM_CLASSES`; on disk they are the Kaggle
``Target`` strings, space-separated class ids such as ``"7 1 2 0"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches

import numpy as np

from protloc.errors import ConfigError, LabelError


@dataclass(frozen=True)
class HPAClass:
    """One localization class: its Kaggle id, full name and a short name for tight plots."""

    id: int
    name: str
    short: str


CLASSES: tuple[HPAClass, ...] = (
    HPAClass(0, "Nucleoplasm", "Nucleopl."),
    HPAClass(1, "Nuclear membrane", "Nuc. membr."),
    HPAClass(2, "Nucleoli", "Nucleoli"),
    HPAClass(3, "Nucleoli fibrillar center", "Nucleoli FC"),
    HPAClass(4, "Nuclear speckles", "Nuc. speckles"),
    HPAClass(5, "Nuclear bodies", "Nuc. bodies"),
    HPAClass(6, "Endoplasmic reticulum", "ER"),
    HPAClass(7, "Golgi apparatus", "Golgi"),
    HPAClass(8, "Peroxisomes", "Peroxisomes"),
    HPAClass(9, "Endosomes", "Endosomes"),
    HPAClass(10, "Lysosomes", "Lysosomes"),
    HPAClass(11, "Intermediate filaments", "Interm. fil."),
    HPAClass(12, "Actin filaments", "Actin fil."),
    HPAClass(13, "Focal adhesion sites", "Focal adh."),
    HPAClass(14, "Microtubules", "Microtubules"),
    HPAClass(15, "Microtubule ends", "MT ends"),
    HPAClass(16, "Cytokinetic bridge", "Cytok. bridge"),
    HPAClass(17, "Mitotic spindle", "Mit. spindle"),
    HPAClass(18, "Microtubule organizing center", "MTOC"),
    HPAClass(19, "Centrosome", "Centrosome"),
    HPAClass(20, "Lipid droplets", "Lipid drop."),
    HPAClass(21, "Plasma membrane", "Plasma membr."),
    HPAClass(22, "Cell junctions", "Cell junct."),
    HPAClass(23, "Mitochondria", "Mitochondria"),
    HPAClass(24, "Aggresome", "Aggresome"),
    HPAClass(25, "Cytosol", "Cytosol"),
    HPAClass(26, "Cytoplasmic bodies", "Cyto. bodies"),
    HPAClass(27, "Rods & rings", "Rods & rings"),
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
SHORT_NAMES: tuple[str, ...] = tuple(c.short for c in CLASSES)


def parse_labels(text: str, *, where: str = "", allow_empty: bool = False) -> np.ndarray:
    """Parse a Kaggle ``Target`` string (``"7 1 2 0"``) into a multi-hot ``uint8`` vector.

    Args:
        text: space-separated class ids, in any order.
        where: where the string came from (``"train.csv line 5"``), put at the start of error messages.
        allow_empty: accept an empty string as "no label" (a prediction may have none; a training
            label may not).

    Raises:
        LabelError: a token is not an integer, is not a class id, or appears twice.
    """
    prefix = f"{where}: " if where else ""
    tokens = text.split()
    if not tokens and not allow_empty:
        raise LabelError(f"{prefix}empty label: every training image needs at least one class id (0-27)")
    multi_hot = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for token in tokens:
        try:
            class_id = int(token)
        except ValueError:
            raise LabelError(f"{prefix}label {token!r} is not a number; expected class ids 0-27") from None
        if not 0 <= class_id < NUM_CLASSES:
            raise LabelError(f"{prefix}label {token!r} is not a class id; expected 0-{NUM_CLASSES - 1}")
        if multi_hot[class_id]:
            raise LabelError(f"{prefix}label {class_id} appears twice in {text.strip()!r}")
        multi_hot[class_id] = 1
    return multi_hot


def label_ids(multi_hot: Sequence[int] | np.ndarray) -> list[int]:
    """The class ids set in a multi-hot vector, ascending."""
    vector = np.asarray(multi_hot)
    if vector.shape != (NUM_CLASSES,):
        raise ValueError(f"expected a multi-hot vector of length {NUM_CLASSES}, got shape {vector.shape}")
    return [int(i) for i in np.flatnonzero(vector)]


def format_labels(multi_hot: Sequence[int] | np.ndarray) -> str:
    """Format a multi-hot vector as a Kaggle ``Target`` string, ids ascending (``"0 1 2 7"``)."""
    return " ".join(str(i) for i in label_ids(multi_hot))


def label_names(multi_hot: Sequence[int] | np.ndarray) -> list[str]:
    """The class names set in a multi-hot vector, in id order."""
    return [CLASS_NAMES[i] for i in label_ids(multi_hot)]


def is_integer_text(text: str) -> bool:
    """True for ``"7"`` or ``"-1"`` in ASCII digits; false for ``"²"``, ``"٣"`` or ``"1.5"``.

    ``str.isdigit`` is true for superscripts and other digits that ``int()`` then refuses, so user text is
    checked with this instead.
    """
    body = text.strip().removeprefix("-")
    return bool(body) and body.isascii() and body.isdecimal()


def resolve_class(value: int | str) -> int:
    """A class id from an id (``7``, ``"7"``), a name or short name (any case), or an unambiguous name prefix.

    Raises:
        ConfigError: an id outside 0-27, or a name that matches no class (with suggestions) or several.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise ConfigError(f"class {value!r} is neither a class id (0-{NUM_CLASSES - 1}) nor a class name")
    if isinstance(value, str) and is_integer_text(value):
        value = int(value.strip())
    if not isinstance(value, str):
        if not 0 <= int(value) < NUM_CLASSES:
            raise ConfigError(f"class id {value} is out of range; class ids are 0-{NUM_CLASSES - 1}")
        return int(value)
    text = " ".join(value.split()).lower()
    for names in (CLASS_NAMES, SHORT_NAMES):
        for class_id, name in enumerate(names):
            if name.lower() == text:
                return class_id
    starts = [i for i, name in enumerate(CLASS_NAMES) if text and name.lower().startswith(text)]
    if len(starts) == 1:
        return starts[0]
    if len(starts) > 1:
        options = ", ".join(f"{CLASS_NAMES[i]} ({i})" for i in starts)
        raise ConfigError(f"class {value!r} is ambiguous: {options}; give the full name or the id")
    lowered = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
    close = get_close_matches(text, list(lowered), n=3, cutoff=0.6)
    hint = "; did you mean " + ", ".join(repr(CLASS_NAMES[lowered[c]]) for c in close) + "?" if close else ""
    raise ConfigError(f"unknown class {value!r}{hint} (give a class id 0-{NUM_CLASSES - 1} or a class name)")


def resolve_classes(classes: Sequence[int | str] | str) -> list[int]:
    """Class ids for ids and/or names (see :func:`resolve_class`); a string may list several, comma-separated.

    Repeats are dropped; the order is kept.
    """
    items: Sequence[int | str] = (
        [part for part in classes.split(",") if part.strip()] if isinstance(classes, str) else classes
    )
    if not items:
        raise ConfigError("no class given; give class ids (0-27) or names")
    return list(dict.fromkeys(resolve_class(item) for item in items))
