"""The one thread budget of a process that decodes images and runs a network on them.

Every caller that feeds files to a network takes its decoding workers and the network's threads from
:func:`plan_budget`: batch prediction and evaluation (:func:`protloc.inference.core.predict_catalog`), per-cell
prediction (``predict --cells``), the microscope's watch folder and the HTTP service. The rule: **decoding
workers plus the network's threads never exceed the CPUs this process may use** (its affinity,
:func:`protloc.utils.usable_cpus`), split by what each side costs per sample:

* decoding costs about :data:`DECODE_SECONDS_PER_MPX` core-seconds per million decoded pixels (PNG, all
  channels, resize included); the network about :data:`MODEL_SECONDS_PER_MPX` core-seconds per million input
  pixels on ONNX Runtime (PyTorch eager :data:`TORCH_FACTOR` times that; nothing on a GPU);
* **ONNX Runtime on the CPU runs in lanes** (the default when neither ``workers`` nor ``threads`` is given):
  ``lanes`` threads of this process each take a whole batch, decode it and run the network on it with
  ``threads`` intra-op threads (1 on up to :data:`LANE_LIMIT` CPUs), so ``lanes x threads`` fits the CPUs and
  the batches never wait on each other. ONNX Runtime's intra-op threads use their cores fully (2 threads ran
  1.99x one on the 2-core machine), so a decoding thread beside them can only preempt one and stall the
  operator's other; independent lanes leave no such barrier, and decoding costs only its own CPU time
  (BENCHMARKS.md, "Thread budget": 1.12x of the model alone at 128 px fields against 1.21x, 1.69x at 512 px
  against 2.00x);
* otherwise (PyTorch, an explicit ``--workers`` or ``--threads``), while decoding needs less than two cores'
  worth of the split, it runs **in this process on one prefetch thread** (:func:`protloc.workers.prefetch`)
  that keeps ``prefetch`` batches decoded ahead while the network computes the current one: on every usable
  CPU when decoding needs under half a core (small fields), else on the CPUs but one. ONNX Runtime's threads
  are told not to spin-wait, so they give the core back to the decoder between operators;
* past that (a fast network on many cores, or large fields), ``workers`` decoding processes take their share
  of the cores and the network the rest.

An explicit ``workers`` or ``threads`` (``--workers``, ``--threads``) always wins; the other takes what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protloc.utils import usable_cpus

if TYPE_CHECKING:
    from protloc.data.catalog import Catalog

DECODE_SECONDS_PER_MPX = 0.006
"""Core-seconds to decode and resize one million PNG pixels (4 x 512² 8-bit planes took ~6 ms per sample per
core on the quiet 2-core machine, BENCHMARKS.md "Reading images")."""

MODEL_SECONDS_PER_MPX = 0.08
"""Core-seconds of the default network (resnet18, ONNX Runtime) per million input pixels: ~390 samples/s of
4 x 128² on 2 threads (BENCHMARKS.md, "Inference")."""

TORCH_FACTOR = 1.45
"""PyTorch eager on the CPU over ONNX Runtime at batch 16 (BENCHMARKS.md, "Inference")."""

PREFETCH_BATCHES = 2
"""Batches decoded ahead of the network: one being computed, one ready, one being decoded."""

LANE_LIMIT = 8
"""Lanes at most: each holds a batch and the network's activations for it; past 8 CPUs a lane gets more threads."""

SERVICE_DECODE_LIMIT = 4
"""The service's decoding threads: at most this many (uploads decode in parallel with the network)."""


@dataclass(frozen=True)
class ThreadBudget:
    """How one process splits its CPUs between decoding images and running the network.

    ``workers`` decoding processes (0: decoding runs in this process, on ``prefetch`` batches ahead in one thread
    when ``prefetch`` > 0) and ``threads`` intra-op threads of the network; ``workers + threads <= cpus`` unless
    a caller asked for more. ``lanes`` > 1: that many threads each decode a batch and run the network on it
    (``lanes x threads <= cpus``; no prefetch thread, no decoding processes). ``spin``: whether ONNX Runtime's
    threads may spin-wait between operators (only when nothing else in the process needs the cores).
    """

    cpus: int
    workers: int
    threads: int
    prefetch: int = PREFETCH_BATCHES
    spin: bool = False
    lanes: int = 1

    def describe(self) -> dict[str, Any]:
        """The split as a plain dict (benchmarks report it)."""
        return {
            "cpus": self.cpus,
            "workers": self.workers,
            "threads": self.threads,
            "prefetch": self.prefetch,
            "lanes": self.lanes,
        }


def decode_share(backend: str, input_size: int, field_pixels: int | None, *, channels: int = 4) -> float:
    """The share of a sample's CPU time that decoding takes (0-1): decoded pixels against the network's input
    pixels, weighted by :data:`DECODE_SECONDS_PER_MPX` and :data:`MODEL_SECONDS_PER_MPX`."""
    field = field_pixels if field_pixels else input_size * input_size
    decode = DECODE_SECONDS_PER_MPX * channels * field / 1e6
    model = MODEL_SECONDS_PER_MPX * channels * input_size * input_size / 1e6
    if backend == "torch":
        model *= TORCH_FACTOR
    return decode / (decode + model)


def plan_budget(
    backend: str,
    input_size: int,
    *,
    field_pixels: int | None = None,
    device: str = "cpu",
    workers: int | None = None,
    threads: int | None = None,
    cpus: int | None = None,
) -> ThreadBudget:
    """The split of ``cpus`` (default: the usable CPUs) for batch prediction with ``backend`` (``onnx`` or
    ``torch``) on fields of ``field_pixels`` pixels per plane resized to ``input_size``; see the module docstring.

    ``workers`` and ``threads``, when given, are kept as they are (an explicit ``--workers 4`` on 2 cores is the
    user's call); the one not given gets the CPUs the other leaves, at least 1. With neither given, ONNX Runtime
    on two CPUs or more runs in lanes.
    """
    cpus = cpus or usable_cpus()
    on_gpu = backend == "torch" and device not in ("cpu", "auto")
    if backend == "onnx" and workers is None and threads is None and cpus >= 2:
        lanes = min(cpus, LANE_LIMIT)
        return ThreadBudget(cpus=cpus, workers=0, threads=cpus // lanes, prefetch=0, lanes=lanes)
    decode_cores = 0.0 if on_gpu else cpus * decode_share(backend, input_size, field_pixels)
    if workers is None:
        if on_gpu:  # the network runs on the device: every core but the one feeding it decodes
            workers = cpus - 1
        else:
            workers = round(decode_cores)
            if threads is not None:
                workers = min(workers, max(0, cpus - threads))
        workers = min(workers, cpus - 1)
        workers = 0 if workers < 2 else workers  # one decoding process: a thread in this process does better
    if threads is None:
        thread_decoding = 1 if workers <= 1 and round(decode_cores) >= 1 else 0  # the prefetch thread's core
        threads = max(1, cpus - max(workers, thread_decoding))
    return ThreadBudget(cpus=cpus, workers=workers, threads=threads, prefetch=PREFETCH_BATCHES if workers <= 1 else 0)


def plan_service(
    backend: str, *, threads: int | None = None, decode_threads: int | None = None, cpus: int | None = None
) -> ThreadBudget:
    """The service's split. ONNX Runtime runs in lanes (as :func:`plan_budget`): ``lanes`` network calls at the
    same time, each on ``threads`` threads (1 on up to :data:`LANE_LIMIT` CPUs), micro-batches side by side;
    PyTorch takes half the CPUs for one call at a time (a lone request waits 3 ms more than on all of them,
    and the server answers ~10% more requests/s under load, benchmarks/bench_serve.py). Uploads decode on the
    threads the network's leave (1 to :data:`SERVICE_DECODE_LIMIT`; they wait on uploads, so a few beside the
    lanes cost little). ``workers`` here counts decoding threads; an explicit ``threads`` gives ONNX Runtime
    ``cpus // threads`` lanes."""
    cpus = cpus or usable_cpus()
    onnx = backend == "onnx"
    if threads is None:
        threads = max(1, -(-cpus // LANE_LIMIT)) if onnx else max(1, cpus // 2)
    lanes = max(1, cpus // threads) if onnx else 1
    if decode_threads is None:
        decode_threads = max(1, min(cpus - (threads if lanes == 1 else cpus // 2), SERVICE_DECODE_LIMIT))
    return ThreadBudget(cpus=cpus, workers=decode_threads, threads=threads, prefetch=0, spin=lanes == 1, lanes=lanes)


def plan_cells(*, threads: int | None = None, cpus: int | None = None) -> ThreadBudget:
    """Per-cell prediction's split (``predict --cells``, the watcher with cells): each field is read one ahead on
    a prefetch thread (a full field: its decoding takes a core of its own), segmentation and the networks run in
    turn on the CPUs it leaves."""
    cpus = cpus or usable_cpus()
    return ThreadBudget(cpus=cpus, workers=0, threads=threads or max(1, cpus - 1), prefetch=1)


def field_pixels_of(catalog: Catalog) -> int | None:
    """Pixels per plane of the catalog's first sample, from its first file's header (``None`` for an empty
    catalog or a file that cannot be read: the read that follows reports the problem)."""
    if not catalog.ids:
        return None
    from protloc.data.decoder import probe
    from protloc.errors import DataError

    files = catalog.files[catalog.ids[0]]
    try:
        height, width = probe(next(iter(files.values()))).plane_shape
    except (DataError, OSError, StopIteration):
        return None
    return int(height) * int(width)


def plan_for_catalog(
    backend: str,
    input_size: int,
    catalog: Catalog,
    *,
    device: str = "cpu",
    workers: int | None = None,
    threads: int | None = None,
) -> ThreadBudget:
    """:func:`plan_budget` for predicting ``catalog`` (its fields' size read from the first sample's header)."""
    return plan_budget(
        backend, input_size, field_pixels=field_pixels_of(catalog), device=device, workers=workers, threads=threads
    )
