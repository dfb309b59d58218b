"""The watch loop: classify each field that lands in a folder, exactly once, until told to stop.

Filesystem events come from ``watchfiles`` (inotify / FSEvents / ReadDirectoryChanges, or polling with
``poll=True`` for network shares where events do not arrive); a full rescan every ``rescan_every`` seconds and
at start catches anything the events missed and every field that arrived while no watcher ran. Fields become
ready as :mod:`protloc.watch.fields` says, go through the one prediction core
(:func:`protloc.inference.core.batch_probabilities`, the backend of
:func:`protloc.inference.predict.load_backend`) in small batches, and are recorded as
:mod:`protloc.watch.state` says. Memory holds only fields not yet finished and the set
of finished field keys (tens of bytes each); images live for one batch.

Stopping: set ``stop`` (a :class:`threading.Event`); :func:`stop_on_signals` sets it on the first Ctrl-C or
SIGTERM, so the batch in hand is finished and recorded before the loop ends; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from protloc.data.io import read_sample
from protloc.errors import DataError, require
from protloc.inference.core import Backend, Preprocessor, batch_probabilities, parse_tta
from protloc.metrics import decide
from protloc.model.card import ModelCard
from protloc.utils import usable_cpus
from protloc.watch.fields import FieldTracker, PendingField
from protloc.watch.settings import WatchSettings
from protloc.watch.state import (
    JOURNAL_FILE,
    REJECTED_FILE,
    Journal,
    RejectedTable,
    ResultsTable,
    now_iso,
    watch_locks,
)
from protloc.workers import thread_map

DEFAULT_OUT = "protloc-watch"
PICTURE_SIDE = 512


@dataclass
class WatchEvent:
    """What happened: ``started``, ``classified`` (with its table ``row``), ``rejected`` (``message`` says
    why), ``waiting`` (incomplete fields left at the end of a ``once`` run), ``notice`` (something the watcher
    did or skipped that a person should know: a table made again, a sub-folder it cannot read) or ``stopped``."""

    kind: str
    field: str | None = None
    message: str = ""
    row: dict[str, Any] | None = None


@dataclass
class WatchSummary:
    out: Path
    table: Path
    classified: int = 0
    rejected: int = 0
    already_done: int = 0
    waiting: list[str] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, on_signal: Callable[[str], None] | None = None) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) sets ``stop``; a second Ctrl-C raises ``KeyboardInterrupt`` at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number: int, frame: Any) -> None:
        if stop.is_set() and number == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        if on_signal is not None:
            on_signal(signal.Signals(number).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _picture(image: np.ndarray, channels: Sequence[str], caption: str, path: Path) -> None:
    import cv2

    from protloc.plots import composite_rgb, stretch_for_display
    from protloc.utils import atomic_path

    rgb = composite_rgb(stretch_for_display(image), channels)
    scale = PICTURE_SIDE / max(rgb.shape[:2])
    if scale != 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    banner = np.zeros((22, rgb.shape[1], 3), np.uint8)
    cv2.putText(banner, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.concatenate([banner, rgb]), cv2.COLOR_RGB2BGR))
    if ok:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            encoded.tofile(temp)


class _Classifier:
    """One model, its preprocessing and thresholds, and where its results go."""

    def __init__(
        self,
        backend: Backend,
        card: ModelCard,
        thresholds: Sequence[float],
        *,
        tta: str | Sequence[str] | None,
        tiles: int,
        bit_depth: int | None,
        min_one: bool,
    ) -> None:
        self.backend = backend
        self.classes = [str(c) for c in card.classes]
        self.exclusive = card.scheme.exclusive
        self.preprocessor = Preprocessor.from_card(card, tiles=tiles, bit_depth=bit_depth)
        self.views = parse_tta(tta)
        self.thresholds = list(thresholds)
        self.min_one = min_one

    @property
    def channels(self) -> tuple[str, ...]:
        return self.preprocessor.channels

    def read(self, pending: PendingField) -> tuple[np.ndarray, np.ndarray]:
        image = read_sample(
            pending.files, self.preprocessor.channels, bit_depth=self.preprocessor.bit_depth, sample_id=pending.key
        )
        return image, self.preprocessor.prepare_uint8(image)

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities = batch_probabilities(self.backend, inputs, self.views)
        decided = decide(probabilities, self.thresholds, min_one=self.min_one, exclusive=self.exclusive)
        return probabilities, decided


class _CellScorer:
    """Per-cell results of a field: a cell model package as it is (with the field model it carries), or a field
    model (the baseline: its probabilities to every cell), through :func:`protloc.cells.predict.predict_field_cells`."""

    def __init__(self, predictor: Any, bit_depth: int | None) -> None:
        self.predictor = predictor
        self.classes = [str(c) for c in predictor.class_names]
        self.bit_depth = int(bit_depth or 16)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.predictor.channels)

    def read(self, pending: PendingField) -> tuple[np.ndarray, np.ndarray]:
        image = read_sample(pending.files, self.channels, bit_depth=self.bit_depth, sample_id=pending.key)
        return image, image

    def __call__(self, image: np.ndarray) -> Any:
        from protloc.cells.predict import predict_field_cells

        return predict_field_cells(self.predictor, image, channels=self.channels, embeddings=False)


def _cell_rows(scorer: _CellScorer, result: Any, common: dict[str, Any]) -> list[dict[str, Any]]:
    """One results row per cell of a field."""
    rows = []
    for row, cell in enumerate(result.as_dicts(scorer.classes)):
        probabilities = result.probabilities[row]
        ids = sorted(np.flatnonzero(result.decisions[row]).tolist(), key=lambda i: -float(probabilities[i]))
        rows.append(
            {
                "field": common["field"],
                "cell": cell["cell"],
                "box": cell["box"],
                "area": cell["area"],
                "border": bool(cell["border"]),
                **{k: v for k, v in common.items() if k != "field"},
                "labels": [scorer.classes[i] for i in ids],
                "predicted": ids,
                "probabilities": {c: round(float(p), 5) for c, p in zip(scorer.classes, probabilities, strict=True)},
            }
        )
    return rows


def _cell_picture(image: np.ndarray, channels: Sequence[str], result: Any, n_classes: int, path: Path) -> None:
    from protloc.cells.draw import draw_outlines, write_picture

    classes = {
        int(c): [int(k) for k in np.flatnonzero(row)] for c, row in zip(result.cells, result.decisions, strict=True)
    }
    write_picture(path, draw_outlines(image, channels, result.labels, cell_classes=classes, n_classes=n_classes))


def watch_folder(
    folder: str | Path,
    model: str | Path,
    settings: WatchSettings | None = None,
    *,
    stop: threading.Event | None = None,
    on_event: Callable[[WatchEvent], None] | None = None,
    **options: Any,
) -> WatchSummary:
    """Classify every field in ``folder`` and each one that lands there later, until ``stop`` is set.

    Args:
        folder: the folder the microscope writes ``<Id>_<channel>.<ext>`` files into.
        model: a model package, an exported ``.onnx`` file, or a BioImage.IO package made by protloc.
        settings: see :class:`WatchSettings`; ``options`` (its field names, e.g. ``once=True``) change it.
        stop: set it to stop after the batch in hand (see :func:`stop_on_signals`).
        on_event: called with every :class:`WatchEvent`.

    Raises:
        DataError: the folder does not exist, or a file of the output was replaced by another while running.
        ConfigError: a setting is out of range, or another watcher holds the folder or the output.
    """
    require("watchfiles", "watch")
    settings = replace(settings or WatchSettings(), **options).check()
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder to watch")
    out = Path(settings.out) if settings.out is not None else folder / DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    classify = _scorer(model, settings)
    emit = on_event or (lambda event: None)
    with watch_locks(folder, out):
        watcher = _Watcher(folder, out, settings, classify, emit)
        try:
            watcher.run(stop if stop is not None else threading.Event())
        finally:
            watcher.close()
    summary = watcher.summary
    emit(WatchEvent("stopped", message=f"{summary.classified} classified, {summary.rejected} set aside"))
    return summary


def _scorer(model: str | Path, settings: WatchSettings) -> _Classifier | _CellScorer:
    """What answers a field: the field model's classifier, or with ``cells`` the per-cell scorer."""
    from protloc.inference.backends import read_model_card, resolve_backend
    from protloc.inference.budget import plan_budget
    from protloc.inference.predict import load_backend, resolve_thresholds

    if settings.cells:
        from protloc.cells.predict import predictor_for

        predictor = predictor_for(model, backend=settings.backend, device=settings.device, tta=settings.tta)
        if settings.thresholds is not None:
            scored_by = predictor.cell_card or predictor.field_card
            assert scored_by is not None
            predictor.thresholds = resolve_thresholds(scored_by, settings.thresholds)
        return _CellScorer(predictor, settings.bit_depth)
    # a batch of fields is read (side by side, a thread per CPU), then classified: in turn, so the network takes
    # every usable CPU too (the one budget, with decoding in this process)
    chosen = resolve_backend(model, settings.backend, device=settings.device)
    cpus = usable_cpus()
    budget = plan_budget(chosen, read_model_card(model).size, device=settings.device, workers=0, threads=cpus)
    card, network = load_backend(model, chosen, device=settings.device, threads=budget.threads, spin=budget.spin)
    return _Classifier(
        network,
        card,
        resolve_thresholds(card, settings.thresholds),
        tta=settings.tta,
        tiles=settings.tiles,
        bit_depth=settings.bit_depth,
        min_one=settings.min_one,
    )


class _Watcher:
    """One run of the watch loop: the output's tables and journal, the tracker of pending fields, and what is done
    with a field once it is ready."""

    def __init__(
        self,
        folder: Path,
        out: Path,
        settings: WatchSettings,
        classify: _Classifier | _CellScorer,
        emit: Callable[[WatchEvent], None],
    ) -> None:
        self.folder, self.out, self.s, self.classify, self.emit = folder, out, settings, classify, emit
        self.started = time.perf_counter()
        self.journal = Journal.open(out / JOURNAL_FILE, self.notice)
        try:
            table = out / f"results.{settings.table}"
            self.results = ResultsTable(table, classify.classes, self.notice, cells=settings.cells)
        except BaseException:  # another model's table: nothing stays open
            self.journal.close()
            raise
        self.rejected = RejectedTable(out / REJECTED_FILE, self.notice)
        self.summary = WatchSummary(out=out, table=self.results.path)
        _reconcile(self.journal, self.results, self.notice)
        self.summary.already_done = len(self.journal.done)
        self.tracker = FieldTracker(
            folder,
            classify.channels,
            recursive=settings.recursive,
            exclude=out,
            settle=settings.settle,
            incomplete_after=settings.incomplete_after,
            follow_links=settings.follow_links,
            on_notice=self.notice,
        )

    def notice(self, message: str) -> None:
        self.emit(WatchEvent("notice", message=message))

    def close(self) -> None:
        self.summary.seconds = time.perf_counter() - self.started
        self.journal.close()
        self.results.close()
        self.rejected.close()

    # -- the loop

    def run(self, stop: threading.Event) -> None:
        """Scan, then follow the folder's events (rescanning now and then) until ``stop``, ``once`` or
        ``max_fields`` ends it."""
        from watchfiles import Change
        from watchfiles import watch as watch_changes

        s, tracker, skip = self.s, self.tracker, self.journal.done.__contains__
        tick_ms = max(50, int(min(s.settle / 2 if s.settle else 0.25, 0.5) * 1000))
        last_scan: float | None = None
        for changes in watch_changes(
            self.folder,
            watch_filter=lambda change, path: tracker.field_of(Path(path)) is not None,
            stop_event=stop,
            rust_timeout=tick_ms,
            yield_on_timeout=True,
            debounce=tick_ms,
            step=min(50, tick_ms),
            force_polling=s.poll,
            poll_delay_ms=int(s.poll_interval * 1000),
            recursive=s.recursive,
            raise_interrupt=False,
        ):
            # The first scan runs once the watcher is listening (its first answer), so a field written
            # while the scan runs is in the scan, in the events, or in both: never in neither.
            for change, name in changes:
                if change == Change.deleted:
                    tracker.gone(Path(name))
                else:
                    tracker.seen(Path(name), skip=skip)
            if last_scan is None or time.monotonic() - last_scan >= s.rescan_every:
                for path in tracker.walk():
                    tracker.seen(path, skip=skip)
                if last_scan is None:
                    mode = "polling" if s.poll else "events"
                    self.emit(
                        WatchEvent(
                            "started",
                            message=f"watching {self.folder} ({mode}): {self.summary.already_done} fields classified "
                            f"before, {tracker.waiting()} to look at",
                        )
                    )
                last_scan = time.monotonic()
            if self.work(stop):
                break
        self.summary.waiting = sorted(tracker.pending)
        for key in self.summary.waiting if s.once else ():
            self.emit(WatchEvent("waiting", key, tracker.missing(tracker.pending[key]).split(" after ")[0]))

    def work(self, stop: threading.Event) -> bool:
        """Take what is due; True when the loop should end."""
        s, tracker, journal = self.s, self.tracker, self.journal
        ready, incomplete = tracker.due()
        for pending in incomplete:
            if journal.rejected.get(pending.key) != pending.signature:  # not set aside before as is
                self.set_aside(pending, tracker.missing(pending))
        ready = [p for p in ready if journal.rejected.get(p.key) != p.signature]
        for first in range(0, len(ready), s.batch_size):
            if stop.is_set() or _enough(self.summary, s.max_fields):
                return True
            self.take(ready[first : first + s.batch_size])
        if stop.is_set() or _enough(self.summary, s.max_fields):
            return True
        return s.once and all(time.monotonic() - p.stable_since >= s.settle for p in tracker.pending.values())

    # -- one batch of fields

    def set_aside(self, pending: PendingField, reason: str) -> None:
        self.rejected.append(pending.key, reason, pending.names())
        self.journal.record(pending.key, "rejected", pending.signature or (), reason=reason)
        self.summary.rejected += 1
        self.emit(WatchEvent("rejected", pending.key, reason))

    def _read(self, pending: PendingField) -> tuple[tuple[np.ndarray, np.ndarray] | None, Exception | None]:
        try:
            return self.classify.read(pending), None
        except Exception as exc:  # any undecodable file: set aside (by load), keep watching
            return None, exc

    def load(self, batch: list[PendingField]) -> list[tuple[PendingField, np.ndarray, np.ndarray]]:
        """The fields of ``batch`` that read whole and did not change while read; the others are set aside
        (unreadable, or links leading out) or wait again (changed). The fields are read side by side, one
        thread per usable CPU (decoding releases the GIL; the network runs after, on every CPU)."""
        loaded = []
        readable = []
        for pending in batch:
            refused = self.tracker.link_problem(pending)
            if refused is not None:
                self.set_aside(pending, refused)
                continue
            readable.append((pending, pending.signature))
        reads = thread_map(self._read, [p for p, _ in readable], threads=min(len(readable), usable_cpus()))
        for (pending, before), (got, exc) in zip(readable, reads, strict=True):
            if got is not None:
                image, inputs = got
            else:
                assert exc is not None
                reason = str(exc) if isinstance(exc, DataError) else f"{exc.__class__.__name__}: {exc}"
                self.tracker.look(pending, time.monotonic())
                if pending.signature != before:  # it changed while we read it: wait again
                    self.tracker.pending[pending.key] = pending
                else:
                    self.set_aside(pending, reason.splitlines()[0] if reason else "unreadable")
                continue
            self.tracker.look(pending, time.monotonic())
            if pending.signature != before:
                self.tracker.pending[pending.key] = pending
                continue
            loaded.append((pending, image, inputs))
        return loaded

    def take(self, batch: list[PendingField]) -> None:
        loaded = self.load(batch)
        if not loaded:
            return
        classify = self.classify
        if isinstance(classify, _CellScorer):
            for pending, image, _ in loaded:
                self.take_cells(classify, pending, image)
            return
        tick = time.perf_counter()
        probabilities, labels = classify(np.stack([inputs for _, _, inputs in loaded]))
        each = (time.perf_counter() - tick) / len(loaded)
        for (pending, image, _), probs, chosen in zip(loaded, probabilities, labels, strict=True):
            ids = sorted(np.flatnonzero(chosen).tolist(), key=lambda i: -float(probs[i]))
            names = [classify.classes[i] for i in ids]
            picture = None
            if self.s.pictures:
                relative = Path("pictures") / f"{pending.key}.png"
                caption = ", ".join(f"{classify.classes[i]} {probs[i]:.2f}" for i in ids)
                _picture(image, classify.channels, caption, self.out / relative)
                picture = relative.as_posix()
            row = {
                **_row_start(pending),
                "labels": names,
                "predicted": ids,
                "seconds": round(each, 4),
                "picture": picture,
                "probabilities": {c: round(float(p), 5) for c, p in zip(classify.classes, probs, strict=True)},
                "files": pending.names(),
            }
            self.results.append(row)  # durable in the table at its path when this returns
            self.journal.record(pending.key, "done", pending.signature or ())
            self.summary.classified += 1
            self.emit(WatchEvent("classified", pending.key, "; ".join(names), row))

    def take_cells(self, scorer: _CellScorer, pending: PendingField, image: np.ndarray) -> None:
        tick = time.perf_counter()
        result = scorer(image)
        seconds = time.perf_counter() - tick
        picture = None
        if self.s.pictures:
            relative = Path("pictures") / f"{pending.key}.png"
            _cell_picture(image, scorer.channels, result, len(scorer.classes), self.out / relative)
            picture = relative.as_posix()
        common = {**_row_start(pending), "seconds": round(seconds, 4), "picture": picture, "files": pending.names()}
        rows = _cell_rows(scorer, result, common)
        self.results.append_rows(rows)  # a field's cells land together, durable when this returns
        self.journal.record(pending.key, "done", pending.signature or ())
        self.summary.classified += 1
        counts: dict[str, int] = {}
        for row in rows:
            for name in row["labels"]:
                counts[name] = counts.get(name, 0) + 1
        top = sorted(counts.items(), key=lambda item: -item[1])[:5]
        message = f"{len(rows)} cells ({result.method}): " + ", ".join(f"{n} {c}" for n, c in top)
        self.emit(WatchEvent("classified", pending.key, message, {**common, "cells": len(rows)}))


def _row_start(pending: PendingField) -> dict[str, Any]:
    """A row's field, when it was classified and when it was acquired (its newest file's modification time)."""
    newest = max(mtime for _, _, mtime in pending.signature or ((None, 0, 0),))
    acquired = dt.datetime.fromtimestamp(newest / 1e9, dt.timezone.utc).isoformat(timespec="milliseconds")
    return {"field": pending.key, "time": now_iso(), "acquired": acquired}


def _reconcile(journal: Journal, results: ResultsTable, notice: Callable[[str], None]) -> None:
    """Make the journal agree with the table at start: a row without a journal line (killed between the two) is
    journalled; a field journalled as done without a row (the table was removed, replaced or edited while no
    watcher ran) is classified again."""
    rows = set(results.fields())
    for key in sorted(rows - journal.done):
        journal.record(key, "done", (), recovered=True)
    lost = journal.done - rows
    if lost:
        journal.done -= lost
        notice(
            f"{len(lost)} fields journalled as classified have no row in {results.path.name} (removed, replaced or "
            "edited?); classifying them again"
        )


def _enough(summary: WatchSummary, max_fields: int | None) -> bool:
    return max_fields is not None and summary.classified + summary.rejected >= max_fields
