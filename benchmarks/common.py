"""Shared helpers for the benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("PROTLOC_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        info["cpu"] = model
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def timed(function: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def save(name: str, payload: dict[str, Any], markdown: str, *, echo: bool = True) -> Path:
    """Write ``results/<name>.json`` (with the machine description) and ``results/<name>.md``, each replaced
    whole (a run stopped while writing leaves the previous file); ``echo`` prints the Markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    _replace(path, json.dumps(payload, indent=2, default=str) + "\n")
    _replace(RESULTS / f"{name}.md", markdown.rstrip() + "\n")
    if echo:
        print(markdown)
    return path


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_rss_of(command: Sequence[str], env: dict[str, str] | None = None, poll: float = 0.05) -> tuple[int, float]:
    """Run a command; return (peak resident memory in bytes of it and its children summed, seconds)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    handle = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            members = [handle, *handle.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in members if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(poll)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
    return peak, time.perf_counter() - start
