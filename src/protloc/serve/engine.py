"""The model behind the service: loaded once, run off the event loop, concurrent requests micro-batched.

:class:`InferenceEngine` owns the network (ONNX Runtime or PyTorch, through
:func:`protloc.inference.backends.load_backend`), the preprocessing the card prescribes, the thresholds, and
two pools of threads:

* **decoding** (``decode_threads``): uploaded bytes -> ``(C, H, W)`` uint8 -> model inputs. OpenCV, tifffile
  and NumPy release the GIL, so several requests decode in parallel while the model runs.
* **inference** (``inference_threads``, default the budget's lanes: one per CPU on ONNX Runtime, each call on one
  thread, else 1): the network, one batch at a time per thread. Requests
  wait in a queue; whenever a thread becomes free it takes *everything waiting* (up to ``max_batch``) as one
  batch. Nothing waits for a batch to fill, so a lone request runs at once, and under load requests that
  arrive while the model is busy share the next call (dynamic micro-batching; ``max_batch=1`` turns it off).

Admission is bounded: at most ``max_pending`` requests are inside the engine at a time; one more gets
:class:`ServiceBusyError` (HTTP 503 with ``Retry-After``) rather than an ever-growing queue.

Torch is imported only for ``backend="torch"`` and, lazily, for explanations.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from protloc.errors import ConfigError, ModelError, ProtlocError
from protloc.inference import backends
from protloc.inference.budget import plan_service
from protloc.inference.core import Preprocessor, batch_probabilities
from protloc.metrics import decide
from protloc.model.card import resolve_package_path

T = TypeVar("T")

BACKEND_CHOICES = backends.BACKENDS


class ServiceBusyError(ProtlocError):
    """Too many requests are already being processed; the client should retry shortly (HTTP 503)."""


class NotAvailableError(ProtlocError):
    """The service cannot do this with the installed packages or this model (HTTP 501)."""


@dataclass
class Prediction:
    """One sample's result: probabilities ``(K,)`` (K classes of the scheme), the decided labels, timings in s."""

    probabilities: np.ndarray
    labels: np.ndarray
    decode_seconds: float = 0.0
    inference_seconds: float = 0.0

    @property
    def label_ids(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.labels)]


@dataclass
class EngineStats:
    """Counters for ``/health`` and the benchmark (read from the event-loop thread)."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    samples: int = 0
    batches: int = 0

    @property
    def mean_batch(self) -> float:
        return self.samples / self.batches if self.batches else 0.0


def resolve_backend(model: str | Path, backend: str) -> str:
    """The service's backend: :func:`protloc.inference.backends.resolve_backend` preferring latency (ONNX Runtime
    when the package has ``model.onnx``)."""
    return backends.resolve_backend(model, backend, prefer="latency")


class InferenceEngine:
    """A model package ready to serve predictions (see the module docstring).

    Args:
        model: the package folder (or its card.json), or an exported ``.onnx`` file (ONNX backend only).
        backend: ``auto``, ``onnx`` or ``torch``.
        device: torch device (``cpu``, ``cuda``, ``auto``); the ONNX backend runs on the CPU.
        threads: intra-op threads of the ONNX Runtime session. Default: half the CPUs (at least 1), leaving the
            rest to decoding uploads and HTTP; on 2 cores this serves about 10% more requests/s under load than
            ONNX Runtime's own default of one thread per core, for 3 ms more on a lone request
            (``benchmarks/bench_serve.py``).
        max_batch: the most samples run through the network in one call (1 disables micro-batching).
        max_pending: the most requests admitted at a time; more get :class:`ServiceBusyError`.
        decode_threads: threads that decode uploads (default: the CPUs the network's threads leave, at least 1 and
            at most 4: :func:`protloc.inference.budget.plan_service`).
        inference_threads: batches run at the same time (default: the budget's lanes, one per CPU with ONNX
            Runtime on one thread each; 1 with PyTorch, whose own threads use the cores).

    Raises:
        ModelError: the package cannot be loaded with that backend.
        ConfigError: a setting out of range.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        max_batch: int = 8,
        max_pending: int = 64,
        decode_threads: int | None = None,
        inference_threads: int | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or (inference_threads is not None and inference_threads < 1):
            raise ConfigError("max_batch, max_pending and inference_threads must be at least 1")
        self.model_path = Path(model)
        self.backend_name = resolve_backend(model, backend)
        self.device = device
        budget = plan_service(self.backend_name, threads=threads, decode_threads=decode_threads)
        if threads is None and self.backend_name == "onnx":
            threads = budget.threads
        self.threads = threads
        loaded = time.perf_counter()
        self.card, self.backend = backends.load_backend(model, self.backend_name, device=device, threads=threads)
        self.load_seconds = time.perf_counter() - loaded
        self.preprocessor = Preprocessor.from_card(self.card)
        self.thresholds = np.asarray(self.card.thresholds, dtype=np.float64)
        self.min_one = bool(self.card.decision.min_one)
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.decode_threads = budget.workers
        self.inference_threads = inference_threads or budget.lanes
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()
        self.stats = EngineStats()
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._drainers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0
        self._explainer: Any = None
        self._explainer_lock = threading.Lock()
        self._warm_up()

    # ------------------------------------------------------------------------------------------ info

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels a sample must have, in the model's order."""
        return self.preprocessor.channels

    @property
    def bit_depth(self) -> int:
        return self.preprocessor.bit_depth

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered."""
        return self._pending

    def _warm_up(self) -> None:
        """One call on a blank input, so the first client does not pay for lazy initialisation."""
        size = self.preprocessor.size
        blank = np.zeros((1, 1, len(self.channels), size, size), np.uint8)
        batch_probabilities(self.backend, blank)

    def _pool(self, name: str, threads: int) -> ThreadPoolExecutor:
        with self._pools_lock:
            pool = self._pools.get(name)
            if pool is None:
                pool = self._pools[name] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"protloc-{name}")
            return pool

    def worker_pool(self, name: str, threads: int) -> ThreadPoolExecutor:
        """A named pool of ``threads`` threads for other bounded work (e.g. ``"cells"``: segmentation), made on
        first use and stopped by :meth:`close` with the others."""
        return self._pool(name, threads)

    @property
    def decode_pool(self) -> ThreadPoolExecutor:
        """Threads that decode uploads (made on first use, again after :meth:`close`)."""
        return self._pool("decode", self.decode_threads)

    @property
    def inference_pool(self) -> ThreadPoolExecutor:
        """Threads that run the network."""
        return self._pool("infer", self.inference_threads)

    def close(self) -> None:
        """Stop the thread pools, finishing pending work first. The engine stays usable: a later request makes
        new ones (an app's lifespan may end and start again, as test clients do)."""
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ running

    async def in_decode_pool(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on a decoding thread."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, function, *args)

    def try_admit(self) -> bool:
        """Count a request in, unless ``max_pending`` are already in progress (then ``False``)."""
        if self._pending >= self.max_pending:
            return False
        self._pending += 1
        self.stats.requests += 1
        return True

    def release(self) -> None:
        """Count an admitted request out."""
        self._pending -= 1

    def busy_message(self) -> str:
        return (
            f"the service is busy ({self._pending} requests in progress, limit {self.max_pending}); retry in a moment"
        )

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request in for the ``with`` block; :class:`ServiceBusyError` when ``max_pending`` are in progress."""
        if not self.try_admit():
            raise ServiceBusyError(self.busy_message())
        try:
            yield
        finally:
            self.release()

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A ``(C, H, W)`` uint8 field -> the model's uint8 input ``(T, C, S, S)`` (resized, as in training)."""
        return self.preprocessor.prepare_uint8(image)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Labels ``(N, K)`` from probabilities ``(N, K)``: the package's thresholds and min-one rule."""
        return decide(probabilities, self.thresholds, min_one=self.min_one, exclusive=self.card.scheme.exclusive)

    async def infer(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities ``(K,)`` for one sample's inputs ``(T, C, S, S)``, batched with concurrent requests."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((inputs, future))
        if self._drainers < self.inference_threads:
            self._drainers += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)  # keep a reference until it ends (the loop holds only a weak one)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        """Take everything waiting (up to ``max_batch``), run it as one batch, repeat until the queue is empty."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
                while self._queue and len(items) < self.max_batch:
                    item = self._queue.popleft()
                    if not item[1].done():  # a client that went away leaves a cancelled future
                        items.append(item)
                if not items:
                    continue
                try:
                    result = await loop.run_in_executor(self.inference_pool, self.run_batch, [x for x, _ in items])
                except Exception as exc:
                    for _, future in items:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.stats.batches += 1
                self.stats.samples += len(items)
                for row, (_, future) in zip(result, items, strict=True):
                    if not future.done():
                        future.set_result(row)
        finally:
            self._drainers -= 1

    def run_batch(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``(N, K)`` for a list of ``(T, C, S, S)`` uint8 inputs, on the calling thread."""
        stacked = np.stack(list(inputs))
        return batch_probabilities(self.backend, stacked)

    # ------------------------------------------------------------------------------------------ explain

    def explainer(self) -> Any:
        """The Grad-CAM explainer (:class:`protloc.explanation.explain.Explainer`), built on first use.

        Raises:
            NotAvailableError: PyTorch or grad-cam is not installed, the model is a bare ``.onnx`` file, or the
                network has no convolutional feature map to explain.
        """
        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = self._build_explainer()
            return self._explainer

    def _build_explainer(self) -> Any:
        for module, extra in (("torch", "train"), ("pytorch_grad_cam", "train")):
            if importlib.util.find_spec(module) is None:
                raise NotAvailableError(
                    f"explanations need PyTorch and grad-cam, which are not installed here ({module} is missing); "
                    f"install them with: pip install 'protloc[{extra}]' (predictions work without them)"
                )
        if self.model_path.suffix.lower() == ".onnx":
            raise NotAvailableError(
                "explanations need the model package folder (its weights), not an exported .onnx file; "
                "serve the package folder instead"
            )
        from protloc.explanation.explain import Explainer

        try:
            return Explainer(resolve_package_path(self.model_path), device="cpu")
        except ModelError as exc:
            raise NotAvailableError(f"explanations are not available for this model: {exc}") from None

    def explain(self, image: np.ndarray, class_id: int | None) -> tuple[Any, int]:
        """Grad-CAM of one ``(C, H, W)`` uint8 field for one class (default: the most probable one).

        Returns:
            The :class:`protloc.explanation.explain.Explanation` and the class id explained.
        """
        explainer = self.explainer()
        if class_id is None:
            probabilities = self.run_batch([self.prepare(image)])[0]
            class_id = int(np.argmax(probabilities))
        with self._explainer_lock:  # Grad-CAM hooks one network: one explanation at a time
            explanation = explainer.explain(image, [class_id])
        return explanation, class_id
