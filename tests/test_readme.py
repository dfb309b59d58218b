"""The README's Python example runs as written (smaller, so that it fits the test suite)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers import require

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), re.S)
    assert blocks, "README.md has no Python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require("torch")
    code = _python_example()
    shrunk = re.sub(r"n_train=\d+", "n_train=120", code)
    shrunk = re.sub(r"n_test=\d+", "n_test=24", shrunk)
    shrunk = re.sub(r'"max_time": "[\d.]+"', '"max_time": "0.25"', shrunk)
    assert shrunk != code, "the example's sizes changed: update this test's shrinking"
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, object] = {"__name__": "__main__"}
        exec(compile(shrunk, str(README), "exec"), namespace)
    finally:
        os.chdir(here)
    macro_f1, package = capsys.readouterr().out.split()[:2]
    card = json.loads((tmp_path / package / "card.json").read_text())
    assert float(macro_f1) == pytest.approx(card["metrics"]["validation"]["macro_f1"], abs=5e-4)
    predictions = namespace["predictions"]
    assert len(predictions.ids) == 24  # type: ignore[attr-defined]
    assert (tmp_path / "pred" / "submission.csv").is_file()
