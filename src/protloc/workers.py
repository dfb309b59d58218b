"""Worker processes: the one process pool of protloc (synthetic data, cache building, data checks, prediction).

Workers start clean, never by a plain fork: once OpenCV (or a BLAS library) has run a parallel operation in the
parent, a forked child that calls it can hang on the copied thread pool. On POSIX a fork server forks the
workers from a fresh process that has imported only numpy, OpenCV and protloc's readers; elsewhere, spawn.
Either way each worker imports the calling script again, so a script that starts workers must run its work
under ``if __name__ == "__main__":`` (the ``protloc`` command and ``python -m protloc`` do).

:func:`imap` is the one way to run a function over many items: in order, at most ``window`` chunks in flight
(bounded memory whatever the number of items), in this process when ``workers <= 1``. :func:`prefetch` runs
an iterator ahead of its consumer on one thread of this process (decoding while the network computes);
:func:`thread_map` runs a function over items on several threads of this process, in order (each batch decoded
and run through the network on its own thread).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from protloc.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

PRELOAD = ("numpy", "cv2", "protloc.data.io")
"""Modules the fork server imports once, so each worker starts with them loaded."""


def pool_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """The start method of protloc's workers: a fork server where there is one (POSIX), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([*PRELOAD, *preload])  # takes effect when the server first starts
        return context
    return multiprocessing.get_context("spawn")


def process_pool(
    workers: int,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    preload: Sequence[str] = (),
) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started by :func:`pool_context`."""
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=pool_context(preload), initializer=initializer, initargs=initargs
    )


def _apply(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def imap(
    function: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    chunksize: int = 1,
    window: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    preload: Sequence[str] = (),
) -> Generator[R, None, None]:
    """``map(function, items)`` over ``workers`` processes, results in order.

    Items go to the workers in chunks of ``chunksize``; at most ``window`` chunks (default ``2 * workers``) are in
    flight, so memory stays bounded. With ``workers <= 1`` everything runs in this process (``initializer``
    too). ``function``, ``initializer`` and the items must be picklable (module-level functions).

    Raises:
        ConfigError: a worker died (out of memory, or a calling script without a ``__main__`` guard).
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    window = window or 2 * workers
    pool = process_pool(workers, initializer=initializer, initargs=initargs, preload=preload)
    try:
        chunks = _chunks(items, max(1, chunksize))
        for results in _in_order(lambda chunk: pool.submit(_apply, function, chunk), chunks, window):
            yield from results
    except BrokenProcessPool:
        raise ConfigError(
            "a worker process died before it finished (out of memory?). Workers re-import the calling script: "
            'run it under `if __name__ == "__main__":`, or use one worker (workers=1)'
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(submit: Callable[[T], Future[R]], items: Iterable[T], window: int) -> Generator[R, None, None]:
    """Each item's result in order, as ``submit`` (a pool's) computes them, at most ``window`` in flight."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


_END = object()


def prefetch(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """``items`` produced on one background thread, at most ``depth`` ahead of the consumer, in order.

    For work that releases the GIL (OpenCV, tifffile and NumPy decoding) while the consumer runs a network:
    the two overlap. An exception in ``items`` is raised here, at the item where it happened; a consumer that
    stops early stops the thread (it finishes the item in hand). ``depth <= 0`` iterates in the caller's thread.
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put((_END, exc))

    thread = threading.Thread(target=produce, name="protloc-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        thread.join()


def thread_map(
    function: Callable[[T], R], items: Iterable[T], *, threads: int, window: int | None = None
) -> Generator[R, None, None]:
    """``map(function, items)`` on ``threads`` threads of this process, results in order.

    For work that releases the GIL (OpenCV decoding, ONNX Runtime): independent items run side by side without
    waiting on each other. At most ``window`` items (default ``threads + 1``) are in flight, so memory stays
    bounded; an exception is raised here at the item where it happened, and a consumer that stops early cancels
    the items not started (those running finish). ``threads <= 1`` runs in the caller's thread.
    """
    if threads <= 1:
        yield from map(function, items)
        return
    window = max(threads, window or threads + 1)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="protloc-lane")
    try:
        yield from _in_order(lambda item: pool.submit(function, item), items, window)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
