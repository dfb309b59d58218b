"""The house rules that the code can check: wings import only what their docstring allows, no import cycles
(lazy imports included), no old flat module paths inside protloc, Rich only in the CLI, rooms a person can
hold, and the old paths still import (as the same module, with a warning)."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

import protloc
from protloc._moved import MOVED
from tests.helpers import require

PACKAGE = Path(protloc.__file__).parent
WINGS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
MAX_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every protloc module a file imports, at the top or inside functions (TYPE_CHECKING included)."""
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("protloc"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("protloc"):
            found.add(node.module)
            for alias in node.names:  # `from protloc.data import io` imports the module protloc.data.io
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file():
                    found.add(candidate)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "top"


def _allowed(wing: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text("utf-8"))) or ""
    match = re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S)
    assert match, f"protloc/{wing}/__init__.py: the docstring must say what the wing may import ('May import: ...')"
    text = match.group(1)
    allowed = set(re.findall(r"``(\w+)``", text))
    assert allowed <= set(WINGS), f"{wing}: names unknown wings {sorted(allowed - set(WINGS))}"
    if "top level" in text:
        allowed.add("top")
    return allowed | {wing}


def test_every_wing_says_what_it_owns_and_may_import() -> None:
    for wing in WINGS:
        _allowed(wing)  # raises with the file named when the docstring lacks it


def test_wings_import_only_what_they_declare() -> None:
    allowed = {wing: _allowed(wing) for wing in WINGS}
    allowed["top"] = {"top"}
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _wing(target) not in allowed[_wing(module)]
        and module not in {"protloc", "protloc._moved", "protloc.__main__"}
    )
    assert not wrong, "imports that climb to a higher wing:\n" + "\n".join(wrong)


def test_the_top_level_holds_only_shared_rooms() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert set(top) == {
        "__init__",
        "__main__",
        "_moved",
        "channels",
        "classes",
        "errors",
        "locks",
        "metrics",
        "plots",
        "schemes",
        "utils",
        "workers",
    }, top


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if nxt == "protloc":
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in MODULES:
        if module not in state and module != "protloc":
            visit(module)


def test_protloc_uses_no_old_module_path() -> None:
    old = {f"protloc.{name}" for name in MOVED}
    used = sorted(f"{module}: {target}" for module, path in MODULES.items() for target in _imports(path) & old)
    assert not used, used


def test_rich_is_imported_only_by_the_cli() -> None:
    offenders = []
    for module, path in MODULES.items():
        if _wing(module) == "cli":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "rich" or n.startswith("rich.") for n in names):
                offenders.append(module)
    assert not offenders, offenders


def test_rooms_stay_small() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by what their parts own): {big}"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_paths_import_as_the_same_module_with_a_warning(old: str) -> None:
    if old in {"train", "ensemble", "lightning_module", "callbacks", "datamodule", "losses", "budget", "models"}:
        require("torch")
    if old in {"bioimageio", "bioimageio_compat"}:
        require("yaml")
    new = importlib.import_module(f"protloc.{MOVED[old]}")
    sys.modules.pop(f"protloc.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"protloc.{old}")
    assert module is new
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(f"protloc.{old} moved to protloc.{MOVED[old]}" in m for m in messages), messages


def test_old_names_of_the_inference_module_still_resolve() -> None:
    from protloc.inference.core import batch_probabilities

    with pytest.warns(DeprecationWarning, match="protloc.inference.batch_probabilities moved"):
        from protloc.inference import batch_probabilities as old  # type: ignore[attr-defined]
    assert old is batch_probabilities
    with pytest.raises(ImportError):
        from protloc.inference import no_such_name  # type: ignore[attr-defined]  # noqa: F401


def test_a_missing_optional_package_fails_in_ci_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import REQUIRE_OPTIONAL, require

    monkeypatch.delenv(REQUIRE_OPTIONAL, raising=False)
    with pytest.raises(pytest.skip.Exception):
        require("protloc_no_such_package")
    monkeypatch.setenv(REQUIRE_OPTIONAL, "1")
    with pytest.raises(pytest.fail.Exception, match="protloc_no_such_package is not importable"):
        require("protloc_no_such_package")
    assert require("numpy").__name__ == "numpy"


LONG_FUNCTION = 80
"""Library functions past this many lines of code (docstring aside) are stories that want chapters, unless their
docstring says why they are kept in one piece ("One piece: ...")."""


def _long_functions() -> list[str]:
    long = []
    for module, path in MODULES.items():
        if _wing(module) == "cli":  # Typer commands: their options are declarations, not code
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            doc = ast.get_docstring(node) or ""
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            lines = (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0
            if lines > LONG_FUNCTION and "One piece:" not in doc:
                long.append(f"{module}.{node.name}: {lines} lines")
    return long


def test_library_functions_are_short_or_say_why_not() -> None:
    long = _long_functions()
    assert not long, "\n".join(long)


def test_tests_require_optional_packages_through_the_one_switch() -> None:
    """A test file that skipped with pytest.importorskip would hide a missing extra in CI."""
    tests = Path(__file__).parent
    offenders = [
        p.name
        for p in sorted(tests.glob("test_*.py"))
        if p.name != Path(__file__).name and re.search(r"pytest\.importorskip\(", p.read_text("utf-8"))
    ]
    assert not offenders, f"use tests.helpers.require instead of pytest.importorskip in {offenders}"
