"""What a watcher remembers between runs: a lock, an append-only journal, and the results tables.

The output folder of ``protloc watch`` holds::

    watch.lock        held (flock) while a watcher runs: a second watcher on the same output is refused
    journal.jsonl     one line per field that was classified or set aside, fsynced: the memory of the watcher
    results.csv       (or results.jsonl) one row per classified field, flushed and fsynced per row
    rejected.csv      one row per field set aside (corrupt, unreadable, incomplete), with the reason
    pictures/         optional: one composite PNG per field, labels written on it

The journal is the single source of truth for "already done": a restarted watcher reads it and skips those
fields, and takes every other field it finds (so one that arrived while it was down is not lost). A row is
written to the results table *before* its journal line; a crash between the two leaves one row without a
journal line, which :class:`ResultsTable` finds at start (it is the table's last row) and journals instead of
classifying the field again. A crash in the middle of a line leaves a torn last line, which is cut off.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from protloc.errors import ConfigError, DataError

JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "watch.lock"
REJECTED_FILE = "rejected.csv"
FOLDER_LOCK_FILE = ".protloc-watch.lock"
TABLE_FORMATS = ("csv", "jsonl")

Signature = tuple[tuple[str, int, int], ...]
"""A field's files as ``((channel, size, mtime_ns), ...)`` in channel order: what "unchanged" means."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------- lock


class FolderLock:
    """An exclusive advisory lock on a file (``flock``), held until :meth:`release`; the holder's pid is in it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.handle: IO[str] | None = None
        handle = path.open("a+")
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{what} is already being watched by process {holder} ({path}); stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
                self.handle.truncate(0)
            self.handle.close()  # closing drops the lock
            self.handle = None


def _lock(handle: IO[str]) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def watch_locks(folder: Path, out: Path) -> Iterator[None]:
    """Lock the output folder (always) and the watched folder (where it is writable): one watcher each."""
    locks = [FolderLock(out / LOCK_FILE, str(out))]
    try:
        if os.access(folder, os.W_OK):
            locks.append(FolderLock(folder / FOLDER_LOCK_FILE, str(folder)))
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


# ------------------------------------------------------------------------------------------- journal


def _append_line(handle: IO[bytes], text: str) -> None:
    handle.write(text.encode("utf-8") + b"\n")
    handle.flush()
    os.fsync(handle.fileno())


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a crash in the middle of writing it)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


@dataclass
class Journal:
    """The append-only record of fields classified (``done``) and set aside (``rejected`` + signature)."""

    path: Path
    done: set[str]
    rejected: dict[str, Signature]

    @classmethod
    def open(cls, path: Path) -> Journal:
        _cut_torn_tail(path)
        done: set[str] = set()
        rejected: dict[str, Signature] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    try:
                        entry = json.loads(line)
                        key, status = entry["field"], entry["status"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise DataError(f"{path}: line {number} is not a journal entry; the file was edited") from None
                    if status == "done":
                        done.add(key)
                        rejected.pop(key, None)
                    elif status == "rejected":
                        rejected[key] = signature_from_json(entry.get("files", []))
        journal = cls(path=path, done=done, rejected=rejected)
        journal._handle = path.open("ab")
        return journal

    _handle: IO[bytes] | None = None

    def record(self, key: str, status: str, signature: Signature, **extra: Any) -> None:
        entry = {"field": key, "status": status, "time": now_iso(), "files": [list(s) for s in signature], **extra}
        assert self._handle is not None
        _append_line(self._handle, json.dumps(entry))
        if status == "done":
            self.done.add(key)
            self.rejected.pop(key, None)
        else:
            self.rejected[key] = signature

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def signature_from_json(files: Sequence[Sequence[Any]]) -> Signature:
    return tuple((str(c), int(size), int(mtime)) for c, size, mtime in files)


# -------------------------------------------------------------------------------------------- tables


class ResultsTable:
    """One row per field (or, with ``cells``, per cell), appended and fsynced field by field: ``results.csv`` or
    ``results.jsonl``.

    Columns: ``field``, with ``cells`` the cell's ``cell`` id, ``box`` (``y0 x0 y1 x1``), ``area`` and
    ``border`` flag; ``time`` (when classified, UTC), ``acquired`` (newest file's modification time),
    ``labels`` (names, ``; ``), ``predicted`` (class ids), ``seconds``, ``picture``, then one probability per
    class name. The JSONL form has the same keys, with lists for labels/predicted/box and a ``probabilities``
    object; it also names the ``files``.
    """

    CELL_COLUMNS = ("cell", "box", "area", "border")

    def __init__(self, path: Path, classes: Sequence[str], *, cells: bool = False) -> None:
        self.path = path
        self.format = path.suffix.lstrip(".")
        if self.format not in TABLE_FORMATS:
            raise ConfigError(f"{path}: the results table must be .csv or .jsonl")
        self.classes = list(classes)
        self.cells = cells
        per_cell = list(self.CELL_COLUMNS) if cells else []
        self.header = [
            "field",
            *per_cell,
            "time",
            "acquired",
            "labels",
            "predicted",
            "seconds",
            "picture",
            *self.classes,
        ]
        _cut_torn_tail(path)
        fresh = not path.is_file() or path.stat().st_size == 0
        if not fresh and self.format == "csv":
            with path.open(newline="", encoding="utf-8") as handle:
                first = next(csv.reader(handle), [])
            if first != self.header:
                raise ConfigError(
                    f"{path} has other columns than this model's results (written by another model?); "
                    "give another --out"
                )
        self._handle = path.open("ab")
        if fresh and self.format == "csv":
            _append_line(self._handle, self._csv_line(self.header))

    def last_field(self) -> str | None:
        """The field of the last row (to reconcile with the journal after a crash), or ``None``."""
        if not self.path.is_file():
            return None
        with self.path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 65536))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
        if not lines:
            return None
        if self.format == "jsonl":
            try:
                return str(json.loads(lines[-1])["field"])
            except (json.JSONDecodeError, KeyError, TypeError):
                return None
        row = next(csv.reader([lines[-1]]), [])
        return row[0] if row and row != self.header else None

    @staticmethod
    def _csv_line(values: Sequence[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(values)
        return buffer.getvalue()

    def append(self, row: dict[str, Any]) -> None:
        self.append_rows([row])

    def append_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append a field's rows in one write (a field's cells land together or, after a crash, not at all)."""
        if rows:
            _append_line(self._handle, "\n".join(self._text(row) for row in rows))

    def _text(self, row: dict[str, Any]) -> str:
        if self.format == "jsonl":
            return json.dumps(row)
        probabilities = row["probabilities"]
        per_cell = (
            [row["cell"], " ".join(str(v) for v in row["box"]), row["area"], int(row["border"])] if self.cells else []
        )
        values = [
            row["field"],
            *per_cell,
            row["time"],
            row["acquired"],
            "; ".join(row["labels"]),
            " ".join(str(i) for i in row["predicted"]),
            row["seconds"],
            row["picture"] or "",
            *(f"{probabilities[name]:.5f}" for name in self.classes),
        ]
        return self._csv_line(values)

    def close(self) -> None:
        self._handle.close()


class RejectedTable:
    """``rejected.csv``: ``field``, ``time``, ``reason``, ``files``; one row per field set aside."""

    HEADER = ("field", "time", "reason", "files")

    def __init__(self, path: Path) -> None:
        self.path = path
        _cut_torn_tail(path)
        fresh = not path.is_file() or path.stat().st_size == 0
        self._handle = path.open("ab")
        if fresh:
            _append_line(self._handle, ResultsTable._csv_line(self.HEADER))

    def append(self, key: str, reason: str, files: Sequence[str]) -> None:
        _append_line(self._handle, ResultsTable._csv_line([key, now_iso(), reason, "; ".join(files)]))

    def close(self) -> None:
        self._handle.close()
