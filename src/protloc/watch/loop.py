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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc.data.io import read_sample
from protloc.errors import ConfigError, DataError, require
from protloc.inference.core import Backend, Preprocessor, batch_probabilities, parse_tta
from protloc.metrics import decide
from protloc.model.card import ModelCard
from protloc.watch.fields import FieldTracker, PendingField
from protloc.watch.state import (
    JOURNAL_FILE,
    REJECTED_FILE,
    TABLE_FORMATS,
    Journal,
    RejectedTable,
    ResultsTable,
    now_iso,
    watch_locks,
)

DEFAULT_OUT = "protloc-watch"
PICTURE_SIDE = 512


@dataclass
class WatchEvent:
    """What happened: ``started``, ``classified`` (with its table ``row``), ``rejected`` (``message`` says
    why), ``waiting`` (incomplete fields left at the end of a ``once`` run) or ``stopped``."""

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
        return probabilities, decide(probabilities, self.thresholds, min_one=self.min_one)


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
    *,
    out: str | Path | None = None,
    table: str = "csv",
    backend: str = "auto",
    device: str = "cpu",
    tta: str | Sequence[str] | None = None,
    thresholds: float | str | Path | None = None,
    min_one: bool = True,
    tiles: int = 1,
    bit_depth: int | None = None,
    pictures: bool = False,
    recursive: bool = False,
    settle: float = 2.0,
    incomplete_after: float = 600.0,
    poll: bool = False,
    poll_interval: float = 1.0,
    rescan_every: float = 60.0,
    batch_size: int = 8,
    once: bool = False,
    cells: bool = False,
    max_fields: int | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[WatchEvent], None] | None = None,
) -> WatchSummary:
    """Classify every field in ``folder`` and each one that lands there later, until ``stop`` is set.

    Args:
        folder: the folder the microscope writes ``<Id>_<channel>.<ext>`` files into.
        model: a model package, an exported ``.onnx`` file, or a BioImage.IO package made by protloc.
        out: where the results, journal and pictures go (default ``FOLDER/protloc-watch``).
        table: ``csv`` or ``jsonl``: the results table's format.
        backend, device, tta, thresholds, min_one, tiles, bit_depth: as for ``protloc predict``.
        pictures: write ``pictures/<field>.png``, the composite with its labels, per field.
        recursive: watch sub-folders too (the key of a field is then ``sub/folder/Id``).
        settle: seconds a field's files must stay unchanged before it is read.
        incomplete_after: seconds after which a field still lacking a channel is set aside as incomplete
            (it is taken again if its files change later).
        poll: poll the folder instead of waiting for filesystem events (network shares), every
            ``poll_interval`` seconds.
        rescan_every: seconds between full rescans that catch anything the events missed.
        batch_size: at most this many ready fields through the network at once.
        cells: one row per cell: each field is segmented and its cells scored (``model``: a cell model
            package, fused with the field model it carries as its card says; or a field model, whose
            probabilities every cell gets); pictures show the cells' outlines.
        once: classify what is there (waiting for files to settle) and return instead of watching on.
        max_fields: return after this many fields were classified or set aside.
        stop: set it to stop after the batch in hand (see :func:`stop_on_signals`).
        on_event: called with every :class:`WatchEvent`.

    Raises:
        DataError: the folder does not exist.
        ConfigError: a setting is out of range, or another watcher holds the folder or the output.
    """
    require("watchfiles", "watch")
    from watchfiles import Change
    from watchfiles import watch as watch_changes

    from protloc.inference.predict import load_backend, resolve_thresholds
    from protloc.utils import default_workers

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder to watch")
    if table not in TABLE_FORMATS:
        raise ConfigError(f"table format {table!r} is not one of {', '.join(TABLE_FORMATS)}")
    if settle < 0 or incomplete_after <= 0 or poll_interval <= 0 or batch_size < 1:
        raise ConfigError("settle must be >= 0, incomplete-after and poll-interval > 0, batch-size >= 1")
    out = Path(out) if out is not None else folder / DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    classify: _Classifier | _CellScorer
    if cells:
        from protloc.cells.predict import predictor_for

        predictor = predictor_for(model, backend=backend, device=device, tta=tta)
        if thresholds is not None:
            scored_by = predictor.cell_card or predictor.field_card
            assert scored_by is not None
            predictor.thresholds = resolve_thresholds(scored_by, thresholds)
        classify = _CellScorer(predictor, bit_depth)
    else:
        card, network = load_backend(model, backend, device=device, threads=default_workers(limit=256))
        classify = _Classifier(
            network,
            card,
            resolve_thresholds(card, thresholds),
            tta=tta,
            tiles=tiles,
            bit_depth=bit_depth,
            min_one=min_one,
        )
    stop = stop if stop is not None else threading.Event()
    emit = on_event or (lambda event: None)
    started = time.perf_counter()
    with watch_locks(folder, out):
        journal = Journal.open(out / JOURNAL_FILE)
        results = ResultsTable(out / f"results.{table}", classify.classes, cells=cells)
        rejected = RejectedTable(out / REJECTED_FILE)
        summary = WatchSummary(out=out, table=results.path)
        try:
            last = results.last_field()
            if last is not None and last not in journal.done:  # killed between the row and its journal line
                journal.record(last, "done", (), recovered=True)
            summary.already_done = len(journal.done)
            tracker = FieldTracker(
                folder,
                classify.channels,
                recursive=recursive,
                exclude=out,
                settle=settle,
                incomplete_after=incomplete_after,
            )
            skip = journal.done.__contains__

            def set_aside(pending: PendingField, reason: str) -> None:
                rejected.append(pending.key, reason, pending.names())
                journal.record(pending.key, "rejected", pending.signature or (), reason=reason)
                summary.rejected += 1
                emit(WatchEvent("rejected", pending.key, reason))

            def take(batch: list[PendingField]) -> None:
                loaded = []
                for pending in batch:
                    before = pending.signature
                    try:
                        image, inputs = classify.read(pending)
                    except Exception as exc:  # any undecodable file: set aside, keep watching
                        reason = str(exc) if isinstance(exc, DataError) else f"{exc.__class__.__name__}: {exc}"
                        tracker.look(pending, time.monotonic())
                        if pending.signature != before:  # it changed while we read it: wait again
                            tracker.pending[pending.key] = pending
                        else:
                            set_aside(pending, reason.splitlines()[0] if reason else "unreadable")
                        continue
                    tracker.look(pending, time.monotonic())
                    if pending.signature != before:
                        tracker.pending[pending.key] = pending
                        continue
                    loaded.append((pending, image, inputs))
                if not loaded:
                    return
                if isinstance(classify, _CellScorer):
                    for pending, image, _ in loaded:
                        take_cells(classify, pending, image)
                    return
                assert isinstance(classify, _Classifier)
                tick = time.perf_counter()
                probabilities, labels = classify(np.stack([inputs for _, _, inputs in loaded]))
                each = (time.perf_counter() - tick) / len(loaded)
                for (pending, image, _), probs, chosen in zip(loaded, probabilities, labels, strict=True):
                    ids = sorted(np.flatnonzero(chosen).tolist(), key=lambda i: -float(probs[i]))
                    names = [classify.classes[i] for i in ids]
                    picture = None
                    if pictures:
                        relative = Path("pictures") / f"{pending.key}.png"
                        caption = ", ".join(f"{classify.classes[i]} {probs[i]:.2f}" for i in ids)
                        _picture(image, classify.channels, caption, out / relative)
                        picture = relative.as_posix()
                    newest = max(mtime for _, _, mtime in pending.signature or ((None, 0, 0),))
                    row = {
                        "field": pending.key,
                        "time": now_iso(),
                        "acquired": dt.datetime.fromtimestamp(newest / 1e9, dt.timezone.utc).isoformat(
                            timespec="milliseconds"
                        ),
                        "labels": names,
                        "predicted": ids,
                        "seconds": round(each, 4),
                        "picture": picture,
                        "probabilities": {c: round(float(p), 5) for c, p in zip(classify.classes, probs, strict=True)},
                        "files": pending.names(),
                    }
                    results.append(row)
                    journal.record(pending.key, "done", pending.signature or ())
                    summary.classified += 1
                    emit(WatchEvent("classified", pending.key, "; ".join(names), row))

            def take_cells(scorer: _CellScorer, pending: PendingField, image: np.ndarray) -> None:
                tick = time.perf_counter()
                result = scorer(image)
                seconds = time.perf_counter() - tick
                picture = None
                if pictures:
                    relative = Path("pictures") / f"{pending.key}.png"
                    _cell_picture(image, scorer.channels, result, len(scorer.classes), out / relative)
                    picture = relative.as_posix()
                newest = max(mtime for _, _, mtime in pending.signature or ((None, 0, 0),))
                common = {
                    "field": pending.key,
                    "time": now_iso(),
                    "acquired": dt.datetime.fromtimestamp(newest / 1e9, dt.timezone.utc).isoformat(
                        timespec="milliseconds"
                    ),
                    "seconds": round(seconds, 4),
                    "picture": picture,
                    "files": pending.names(),
                }
                rows = _cell_rows(scorer, result, common)
                results.append_rows(rows)
                journal.record(pending.key, "done", pending.signature or ())
                summary.classified += 1
                counts: dict[str, int] = {}
                for row in rows:
                    for name in row["labels"]:
                        counts[name] = counts.get(name, 0) + 1
                top = sorted(counts.items(), key=lambda item: -item[1])[:5]
                message = f"{len(rows)} cells ({result.method}): " + ", ".join(f"{n} {c}" for n, c in top)
                emit(WatchEvent("classified", pending.key, message, {**common, "cells": len(rows)}))

            def work() -> bool:
                """Take what is due; True when the loop should end."""
                ready, incomplete = tracker.due()
                for pending in incomplete:
                    if journal.rejected.get(pending.key) != pending.signature:  # not set aside before as is
                        set_aside(pending, tracker.missing(pending))
                ready = [p for p in ready if journal.rejected.get(p.key) != p.signature]
                for first in range(0, len(ready), batch_size):
                    if stop.is_set() or _enough(summary, max_fields):
                        return True
                    take(ready[first : first + batch_size])
                if stop.is_set() or _enough(summary, max_fields):
                    return True
                return once and all(time.monotonic() - p.stable_since >= settle for p in tracker.pending.values())

            def accept(change: Change, path: str) -> bool:
                return tracker.field_of(Path(path)) is not None

            tick_ms = max(50, int(min(settle / 2 if settle else 0.25, 0.5) * 1000))
            last_scan: float | None = None
            for changes in watch_changes(
                folder,
                watch_filter=accept,
                stop_event=stop,
                rust_timeout=tick_ms,
                yield_on_timeout=True,
                debounce=tick_ms,
                step=min(50, tick_ms),
                force_polling=poll,
                poll_delay_ms=int(poll_interval * 1000),
                recursive=recursive,
                raise_interrupt=False,
            ):
                # The first scan runs once the watcher is listening (its first answer), so a field written
                # while the scan runs is in the scan, in the events, or in both: never in neither.
                for change, name in changes:
                    if change == Change.deleted:
                        tracker.gone(Path(name))
                    else:
                        tracker.seen(Path(name), skip=skip)
                if last_scan is None or time.monotonic() - last_scan >= rescan_every:
                    for path in tracker.walk():
                        tracker.seen(path, skip=skip)
                    if last_scan is None:
                        emit(
                            WatchEvent(
                                "started",
                                message=f"watching {folder} ({'polling' if poll else 'events'}): "
                                f"{summary.already_done} fields classified before, {tracker.waiting()} to look at",
                            )
                        )
                    last_scan = time.monotonic()
                if work():
                    break
            summary.waiting = sorted(tracker.pending)
            for key in summary.waiting if once else ():
                emit(WatchEvent("waiting", key, tracker.missing(tracker.pending[key]).split(" after ")[0]))
        finally:
            summary.seconds = time.perf_counter() - started
            journal.close()
            results.close()
            rejected.close()
    emit(WatchEvent("stopped", message=f"{summary.classified} classified, {summary.rejected} set aside"))
    return summary


def _enough(summary: WatchSummary, max_fields: int | None) -> bool:
    return max_fields is not None and summary.classified + summary.rejected >= max_fields
