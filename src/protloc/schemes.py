"""Class schemes as data: which localisation classes a labels file, a model or a report speaks of.

A :class:`ClassScheme` is an ordered list of classes (id = position), the labels-file header and separator of
its release, and the classes that exclude all others (``Negative``). Three are built in, shipped as JSON in
``protloc/data/schemes/``:

* ``hpa2018``: the 28 classes of the Kaggle 2018 release (``Id,Target``, ids separated by spaces);
* ``hpa2021``: the 19 classes of the Kaggle 2021 single-cell release (``ID,Label``, ids separated by ``|``),
  ``Negative`` (18) exclusive of the others;
* ``subcell31``: the 31 classes of the HPA subcellular section that the SubCell models predict (list from
  CellProfiling/SubCellPortable ``inference.py``; see the file's ``source``).

A user scheme is a small JSON file (``{"name": ..., "classes": ["Nucleus", ["Cytosol", "Cyto."], ...],
"exclusive": ["Negative"]}``) or a text file with one class name per line. :func:`detect_scheme` finds the
scheme of a labels file from its header, separators and id range; :func:`map_labels` turns labels of one
scheme into another where a documented mapping exists (``hpa2018 -> hpa2021``). Torch-free, and the lowest
floor: it imports only :mod:`protloc.errors`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from protloc.errors import ConfigError, LabelError


def is_integer_text(text: str) -> bool:
    """True for ``"7"`` or ``"-1"`` in ASCII digits; false for ``"²"``, ``"٣"`` or ``"1.5"``.

    ``str.isdigit`` is true for superscripts and other digits that ``int()`` then refuses, so user text is
    checked with this instead.
    """
    body = text.strip().removeprefix("-")
    return bool(body) and body.isascii() and body.isdecimal()


BUILTIN_SCHEMES: tuple[str, ...] = ("hpa2018", "hpa2021", "subcell31")
DEFAULT_SCHEME = "hpa2018"
"""The scheme assumed where nothing says otherwise (old model cards, the 2018 layout)."""

_TOKEN_SPLIT = re.compile(r"\s*[|;]\s*|\s+")
"""Between two class ids of a label: one ``|`` or ``;`` (spaces around it allowed), or a run of spaces."""

NAME_SEPARATORS: tuple[str, ...] = (",", "|", ";")
"""Characters a class name may not hold: protloc's own files separate values with them (CSV columns ``,``; class
ids in 2021 labels and the cell table ``|``; class names in the ``Labels`` and ``labels`` columns ``; ``).
Newlines and tabs are control characters, refused as such."""

FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@")
"""First characters that make a spreadsheet read a CSV cell as a formula: a class name may not start with one, so
no CSV protloc writes (column headers, ``Labels``) can carry a formula (refused when the scheme is read, rather
than escaped in each writer, so every file reads back to the same names)."""

_BAD_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))
"""Unicode categories refused in class names: control, format (bidirectional overrides, zero-width), surrogate,
private-use characters and line/paragraph separators."""


def check_class_name(name: str, *, what: str) -> None:
    """Refuse a class name that would break a file protloc writes or mislead a reader of one.

    Raises:
        ConfigError: naming ``what`` (``"mine.json: class 3"``) and the offending character.
    """
    if not name.strip():
        raise ConfigError(f"{what} has an empty name")
    for char in name:
        if unicodedata.category(char) in _BAD_CATEGORIES:
            raise ConfigError(
                f"{what} {name!r} holds the control or invisible character U+{ord(char):04X}; "
                "class names are one line of visible text"
            )
        if char in NAME_SEPARATORS:
            raise ConfigError(
                f"{what} {name!r} holds {char!r}, which separates values in protloc's files (CSV columns, "
                "label ids, label names); use another character (e.g. '/' or '&')"
            )
    if name.startswith(FORMULA_STARTS):
        raise ConfigError(
            f"{what} {name!r} starts with {name[0]!r}, which a spreadsheet opening protloc's CSV files would take "
            "for a formula; start the name with a letter or digit"
        )


@dataclass(frozen=True)
class HPAClass:
    """One localisation class: its id in its scheme, full name and a short name for tight plots."""

    id: int
    name: str
    short: str


@dataclass(frozen=True)
class ClassScheme:
    """An ordered set of localisation classes and how its release writes labels.

    Attributes:
        name: ``hpa2018``, ``hpa2021``, ``subcell31`` or a user's name.
        classes: the classes, ``classes[i].id == i``.
        exclusive: ids that may not share a label with any other class (``Negative``).
        header: the labels-file header of this release (``Id,Target`` or ``ID,Label``).
        separator: the separator between class ids in that file (``" "`` or ``"|"``).
        title: one line for people.
        source: where the list comes from.
    """

    name: str
    classes: tuple[HPAClass, ...]
    exclusive: tuple[int, ...] = ()
    header: tuple[str, str] = ("Id", "Target")
    separator: str = " "
    title: str = ""
    source: str = ""
    _lookup: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError(f"class scheme {self.name!r} has no classes")
        lookup = self._lookup
        for i, cls in enumerate(self.classes):
            check_class_name(cls.name, what=f"class scheme {self.name!r}: class {i}")
            check_class_name(cls.short, what=f"class scheme {self.name!r}: short name of class {i}")
            if cls.id != i:
                raise ConfigError(f"class scheme {self.name!r}: class {cls.name!r} has id {cls.id}, expected {i}")
            if cls.name.lower() in lookup:
                raise ConfigError(f"class scheme {self.name!r}: class name {cls.name!r} appears twice")
            lookup[cls.name.lower()] = i
        for i in self.exclusive:
            if not 0 <= i < len(self.classes):
                raise ConfigError(f"class scheme {self.name!r}: exclusive class id {i} is out of range")

    # ----------------------------------------------------------------- names
    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def shorts(self) -> tuple[str, ...]:
        return tuple(c.short for c in self.classes)

    @property
    def id_range(self) -> str:
        return f"0-{len(self.classes) - 1}"

    def describe(self) -> str:
        """``hpa2021 (19 classes)``: the scheme as messages name it."""
        return f"{self.name} ({len(self.classes)} classes)"

    # ------------------------------------------------------------- labels
    def parse(self, text: str, *, where: str = "", allow_empty: bool = False) -> np.ndarray:
        """Parse a label string (``"7 1 2 0"``, ``"7|1|2|0"``) into a multi-hot ``uint8`` vector.

        Ids may be separated by spaces, ``|`` or ``;`` whatever the scheme, so a file of either release reads.

        Raises:
            LabelError: a token is not an integer or not a class id of this scheme, appears twice, or an
                exclusive class (``Negative``) is combined with another.
        """
        prefix = f"{where}: " if where else ""
        stripped = text.strip()
        tokens = _TOKEN_SPLIT.split(stripped) if stripped else []
        if not tokens and not allow_empty:
            raise LabelError(f"{prefix}empty label: every training image needs at least one class id ({self.id_range})")
        multi_hot = np.zeros(len(self.classes), dtype=np.uint8)
        for token in tokens:
            if not token:
                raise LabelError(
                    f"{prefix}label {stripped!r} has an empty class id (two separators in a row, or one at an end)"
                )
            if not is_integer_text(token):
                raise LabelError(
                    f"{prefix}label {token!r} is not a number in ASCII digits; expected class ids {self.id_range} "
                    f"of {self.name}"
                )
            class_id = int(token)
            if not 0 <= class_id < len(self.classes):
                raise LabelError(
                    f"{prefix}label {token!r} is not a class id of {self.describe()}; expected {self.id_range}"
                )
            if multi_hot[class_id]:
                raise LabelError(f"{prefix}label {class_id} appears twice in {text.strip()!r}")
            multi_hot[class_id] = 1
        for class_id in self.exclusive:
            if multi_hot[class_id] and multi_hot.sum() > 1:
                raise LabelError(
                    f"{prefix}{self.classes[class_id].name} ({class_id}) excludes every other class, "
                    f"but {text.strip()!r} combines it with others"
                )
        return multi_hot

    def check_vector(self, multi_hot: Sequence[int] | np.ndarray) -> np.ndarray:
        vector = np.asarray(multi_hot)
        if vector.shape != (len(self.classes),):
            raise ValueError(
                f"expected a multi-hot vector of length {len(self.classes)} ({self.name}), got shape {vector.shape}"
            )
        return vector

    def ids_of(self, multi_hot: Sequence[int] | np.ndarray) -> list[int]:
        """The class ids set in a multi-hot vector, ascending."""
        return [int(i) for i in np.flatnonzero(self.check_vector(multi_hot))]

    def format(self, multi_hot: Sequence[int] | np.ndarray, separator: str | None = None) -> str:
        """Format a multi-hot vector as this release writes it (``"0 1 2 7"`` or ``"0|1|2|7"``)."""
        return (self.separator if separator is None else separator).join(str(i) for i in self.ids_of(multi_hot))

    def names_of(self, multi_hot: Sequence[int] | np.ndarray) -> list[str]:
        """The class names set in a multi-hot vector, in id order."""
        return [self.classes[i].name for i in self.ids_of(multi_hot)]

    def multi_hot(self, ids: Iterable[int]) -> np.ndarray:
        vector = np.zeros(len(self.classes), dtype=np.uint8)
        for class_id in ids:
            vector[int(class_id)] = 1
        return vector

    def zeros(self, n: int = 0) -> np.ndarray:
        """An empty ``(n, C)`` label array."""
        return np.zeros((n, len(self.classes)), np.uint8)

    # ------------------------------------------------------------- lookup
    def resolve(self, value: int | str) -> int:
        """A class id from an id (``7``, ``"7"``), a name or short name (any case), or an unambiguous prefix.

        Raises:
            ConfigError: an id out of range, or a name that matches no class (with suggestions) or several.
        """
        if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
            raise ConfigError(f"class {value!r} is neither a class id ({self.id_range}) nor a class name")
        if isinstance(value, str) and is_integer_text(value):
            value = int(value.strip())
        if not isinstance(value, str):
            if not 0 <= int(value) < len(self.classes):
                raise ConfigError(f"class id {value} is out of range; {self.name} class ids are {self.id_range}")
            return int(value)
        text = " ".join(value.split()).lower()
        for names in (self.names, self.shorts):
            for class_id, name in enumerate(names):
                if name.lower() == text:
                    return class_id
        starts = [i for i, name in enumerate(self.names) if text and name.lower().startswith(text)]
        if len(starts) == 1:
            return starts[0]
        if len(starts) > 1:
            options = ", ".join(f"{self.names[i]} ({i})" for i in starts)
            raise ConfigError(f"class {value!r} is ambiguous: {options}; give the full name or the id")
        lowered = {name.lower(): i for i, name in enumerate(self.names)}
        close = get_close_matches(text, list(lowered), n=3, cutoff=0.6)
        hint = "; did you mean " + ", ".join(repr(self.names[lowered[c]]) for c in close) + "?" if close else ""
        raise ConfigError(
            f"unknown class {value!r}{hint} (give a {self.name} class id {self.id_range} or a class name)"
        )

    def index_of_name(self, name: str) -> int | None:
        return self._lookup.get(name.lower())

    # ------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """The scheme as JSON data (what a model card and a scheme file hold)."""
        return {
            "name": self.name,
            "title": self.title,
            "source": self.source,
            "header": list(self.header),
            "separator": self.separator,
            "exclusive": [self.classes[i].name for i in self.exclusive],
            "classes": [[c.name, c.short] for c in self.classes],
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "class scheme") -> ClassScheme:
        """Build a scheme from JSON data (see the module docstring); raises :class:`ConfigError` naming ``where``."""
        if isinstance(data, list):
            data = {"classes": data}
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
            raise ConfigError(f"{where}: a class scheme needs a non-empty list 'classes'")
        classes = []
        for i, item in enumerate(data["classes"]):
            if isinstance(item, str):
                name, short = item, item
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                name, short = item["name"], str(item.get("short") or item["name"])
            elif isinstance(item, list) and item and all(isinstance(x, str) for x in item):
                name, short = item[0], item[1] if len(item) > 1 else item[0]
            else:
                raise ConfigError(f"{where}: class {i} is {item!r}; give a name, [name, short] or {{'name': ...}}")
            check_class_name(name.strip(), what=f"{where}: class {i}")
            check_class_name(short.strip() or name.strip(), what=f"{where}: short name of class {i}")
            classes.append(HPAClass(i, name.strip(), short.strip() or name.strip()))
        names = {c.name.lower(): c.id for c in classes}
        exclusive = []
        for item in data.get("exclusive", []):
            if isinstance(item, int) and not isinstance(item, bool):
                exclusive.append(item)
            elif isinstance(item, str) and item.lower() in names:
                exclusive.append(names[item.lower()])
            else:
                raise ConfigError(f"{where}: exclusive class {item!r} is not a class of this scheme")
        header = data.get("header", ["Id", "Target"])
        if not (isinstance(header, list) and len(header) == 2 and all(isinstance(h, str) for h in header)):
            raise ConfigError(f"{where}: 'header' must be two column names, got {header!r}")
        separator = data.get("separator", " ")
        if separator not in (" ", "|", ";"):
            raise ConfigError(f"{where}: 'separator' must be ' ', '|' or ';', got {separator!r}")
        return cls(
            name=str(data.get("name") or "custom"),
            classes=tuple(classes),
            exclusive=tuple(exclusive),
            header=(header[0], header[1]),
            separator=separator,
            title=str(data.get("title", "")),
            source=str(data.get("source", "")),
        )


# --------------------------------------------------------------------------- registry
def _data_file(name: str) -> Any:
    return json.loads(resources.files("protloc").joinpath("data", "schemes", name).read_text(encoding="utf-8"))


@cache
def builtin_scheme(name: str) -> ClassScheme:
    if name not in BUILTIN_SCHEMES:
        raise ConfigError(f"unknown class scheme {name!r}; built in: {', '.join(BUILTIN_SCHEMES)}")
    return ClassScheme.from_dict(_data_file(f"{name}.json"), where=f"built-in scheme {name}")


def load_scheme_file(path: str | Path) -> ClassScheme:
    """A user's scheme: JSON (``{"name", "classes", "exclusive"}`` or a list of names) or one name per line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: class scheme file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        data = {"classes": lines}
    if isinstance(data, dict) and not data.get("name"):
        data = {**data, "name": path.stem}
    elif isinstance(data, list):
        data = {"name": path.stem, "classes": data}
    return ClassScheme.from_dict(data, where=str(path))


def get_scheme(spec: str | Path | ClassScheme | dict[str, Any] | None = None) -> ClassScheme:
    """A scheme from a built-in name, a scheme file, scheme data (a card's ``scheme``), or ``None`` (2018).

    Raises:
        ConfigError: an unknown name that is not a file either, or a malformed file.
    """
    if spec is None:
        return builtin_scheme(DEFAULT_SCHEME)
    if isinstance(spec, ClassScheme):
        return spec
    if isinstance(spec, dict):
        if spec.get("name") in BUILTIN_SCHEMES and "classes" not in spec:
            return builtin_scheme(spec["name"])
        scheme = ClassScheme.from_dict(spec, where="card scheme")
        if scheme.name in BUILTIN_SCHEMES and scheme.names == builtin_scheme(scheme.name).names:
            return builtin_scheme(scheme.name)
        return scheme
    text = str(spec).strip()
    if text.lower() in BUILTIN_SCHEMES:
        return builtin_scheme(text.lower())
    if Path(text).is_file():
        return load_scheme_file(text)
    raise ConfigError(
        f"unknown class scheme {text!r}: give one of {', '.join(BUILTIN_SCHEMES)} or a scheme file (.json, .txt)"
    )


def scheme_for_names(names: Sequence[str]) -> ClassScheme:
    """The built-in scheme whose class names are exactly ``names``, else a custom scheme of those names."""
    for name in BUILTIN_SCHEMES:
        if builtin_scheme(name).names == tuple(names):
            return builtin_scheme(name)
    return ClassScheme.from_dict({"name": "custom", "classes": list(names)}, where="class names")


# --------------------------------------------------------------------------- detection
LABEL_HEADERS: tuple[tuple[str, str], ...] = (("Id", "Target"), ("ID", "Label"))
"""The labels-file headers understood: 2018 (and user files) ``Id,Target``; 2021 ``ID,Label``."""


def detect_scheme(header: Sequence[str], label_texts: Iterable[str]) -> ClassScheme:
    """The scheme a labels file speaks, from its header and separators.

    ``ID,Label`` or ``|`` separators mean ``hpa2021``; ``Id,Target`` with spaces means ``hpa2018``. Ids beyond
    that scheme's range are then reported row by row by the reader, with a hint to name the scheme
    (``--classes subcell31`` or a scheme file).
    """
    head = tuple(h.strip() for h in header[:2])
    uses_bar = any("|" in t for t in label_texts)
    return builtin_scheme("hpa2021" if head == ("ID", "Label") or uses_bar else "hpa2018")


# --------------------------------------------------------------------------- mappings
@dataclass(frozen=True)
class SchemeMapping:
    """A documented many-to-one mapping of one scheme's classes onto another's (``None``: no counterpart)."""

    source: ClassScheme
    target: ClassScheme
    targets: tuple[int | None, ...]
    why: str

    @property
    def dropped(self) -> list[str]:
        return [self.source.names[i] for i, t in enumerate(self.targets) if t is None]

    @property
    def merged(self) -> dict[str, list[str]]:
        """Target class -> the source classes that fold into it, where more than one does or the name changes."""
        into: dict[str, list[str]] = {}
        for i, t in enumerate(self.targets):
            if t is not None:
                into.setdefault(self.target.names[t], []).append(self.source.names[i])
        return {k: v for k, v in into.items() if v != [k]}

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Map ``(N, C_source)`` (or one vector) multi-hot labels to the target scheme."""
        labels = np.asarray(labels)
        single = labels.ndim == 1
        rows = labels[None] if single else labels
        if rows.shape[1] != len(self.source):
            raise ValueError(f"labels have {rows.shape[1]} columns, {self.source.name} has {len(self.source)}")
        out = np.zeros((len(rows), len(self.target)), np.uint8)
        for i, t in enumerate(self.targets):
            if t is not None:
                out[:, t] |= rows[:, i].astype(np.uint8)
        return out[0] if single else out


MAPPINGS: dict[tuple[str, str], str] = {("hpa2018", "hpa2021"): "hpa2018-to-hpa2021.json"}


def get_mapping(source: ClassScheme | str | Path, target: ClassScheme | str | Path) -> SchemeMapping:
    """The documented mapping from ``source`` to ``target`` (raises :class:`ConfigError` when there is none)."""
    src, dst = get_scheme(source), get_scheme(target)
    key = (src.name, dst.name)
    if key not in MAPPINGS:
        known = ", ".join(f"{a} -> {b}" for a, b in MAPPINGS)
        raise ConfigError(f"no mapping from {src.describe()} to {dst.describe()}; protloc documents: {known}")
    data = _data_file(MAPPINGS[key])
    targets: list[int | None] = []
    for name in src.names:
        goal = data["map"][name]
        targets.append(None if goal is None else dst.index_of_name(goal))
    return SchemeMapping(src, dst, tuple(targets), str(data["why"]))


def require_same_scheme(expected: ClassScheme, got: ClassScheme, *, what: str, where: str) -> None:
    """Refuse data of another scheme than a model's, saying what to do."""
    if expected.names == got.names:
        return
    hint = (
        f"; pass --map-from {got.name} to fold its labels into {expected.name}"
        if (got.name, expected.name) in MAPPINGS
        else ""
    )
    raise ConfigError(
        f"{where}: {what} is labelled in {got.describe()} but the model predicts {expected.describe()}{hint}"
    )
