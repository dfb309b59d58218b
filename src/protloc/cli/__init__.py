"""The ``protloc`` command line: thin Typer commands over library functions, one module per group of commands
(``data``, ``training``, ``deploy``, ``service``) over what they share (``common``).

Each command parses its flags, calls one function of the library, and prints a short Rich summary. Heavy
imports (torch, Lightning, ONNX Runtime) happen inside the commands that need them, so ``protloc --help``
and the data commands stay fast. A :class:`~protloc.errors.ProtlocError` ends the command with one red line
and exit status 1; anything else is a bug and keeps its traceback.

May import: every wing (``data``, ``model``, ``inference``, ``deployment``, ``explanation``, ``cells``,
``synth``, ``training``, ``serve``, ``watch``, ``demo``) and the top level.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.markup import escape

# Importing the command modules registers their commands, in the order `protloc --help` lists them.
# isort: off
from protloc.cli import data  # noqa: F401
from protloc.cli import training  # noqa: F401
from protloc.cli import deploy  # noqa: F401
from protloc.cli import service  # noqa: F401

# isort: on
from protloc.cli.common import app, console, err_console
from protloc.errors import STORAGE_ERRNOS, ProtlocError, storage_error

__all__ = ["app", "console", "entry", "err_console", "main"]


# ------------------------------------------------------------------------------------------ entry point


# what `pip install 'protloc[train]'` adds over the torch-free core and runtime
TRAIN_EXTRA_MODULES = frozenset(
    {
        "torch",
        "torchvision",
        "timm",
        "lightning",
        "torchmetrics",
        "albumentations",
        "iterstrat",
        "sklearn",
        "safetensors",
        "onnx",
        "onnxscript",
        "pytorch_grad_cam",
    }
)


def _click_flavours() -> list[Any]:
    """The click exception modules a usage error may come from: click's, and the copy newer Typer releases
    vendor as ``typer._click`` (whose exceptions are other classes, so catching click's alone let a wrong flag
    end in a traceback)."""
    flavours: list[Any] = [click.exceptions]
    try:
        from typer._click import exceptions as vendored
    except ImportError:  # Typer before 0.20 uses click itself
        return flavours
    return [*flavours, vendored]


def _typer_exception_modules() -> list[Any]:
    try:
        import typer.exceptions
    except ImportError:
        return []
    return [typer.exceptions]


USAGE_ERRORS: tuple[type[Exception], ...] = tuple(f.ClickException for f in _click_flavours())
ABORTS: tuple[type[BaseException], ...] = tuple(
    {click.exceptions.Abort, *(getattr(m, "Abort", click.exceptions.Abort) for m in _typer_exception_modules())}
)
INTERRUPTS: tuple[type[BaseException], ...] = (*ABORTS, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return (and, from the console script, exit with) its status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="protloc", standalone_mode=False)
    except ProtlocError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 1
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        err_console.print(f"[red]error:[/] {escape(str(storage_error(exc, action='access')))}")
        return 1
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in TRAIN_EXTRA_MODULES:
            raise
        command = next((a for a in args if not a.startswith("-")), "this command")
        err_console.print(
            f"[red]error:[/] protloc {escape(command)} needs the {escape(missing)} package, which this install "
            f"lacks: pip install {escape(repr('protloc[train]'))} (the runtime extra predicts and serves with "
            "ONNX Runtime only)"
        )
        return 1
    except USAGE_ERRORS as exc:
        exc.show()  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except INTERRUPTS:
        err_console.print("[red]interrupted[/]")
        return 130
    return result if isinstance(result, int) else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
