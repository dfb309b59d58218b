"""Demo: the main job end to end and its single-file HTML report.

``job`` (``run_demo``: synthetic data, training, evaluation, prediction, export, cells) and ``report``.

May import: the top level, ``data``, ``model``, ``inference``, ``deployment``, ``explanation``, ``cells``,
``synth`` and ``training``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_demo"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``protloc.demo.report`` does not pull in training
    if name == "run_demo":
        from protloc.demo.job import run_demo

        return run_demo
    raise AttributeError(name)
