"""What a watcher remembers between runs: a lock, an append-only journal, and the results tables.

The output folder of ``protloc watch`` holds::

    watch.lock        held (flock) while a watcher runs: a second watcher on the same output is refused
    journal.jsonl     one line per field that was classified or set aside, fsynced: the memory of the watcher
    results.csv       (or results.jsonl) one row per classified field, flushed and fsynced per row
    rejected.csv      one row per field set aside (corrupt, unreadable, incomplete), with the reason
    pictures/         optional: one composite PNG per field, labels written on it

The journal says what is "already done": a restarted watcher reads it and skips those fields, and takes every
other field it finds (so one that arrived while it was down is not lost). A field is journalled only once its
row is durable: written, fsynced, and still in the file at the table's path. At start the two are reconciled:
a row without a journal line (a crash between the two) is journalled instead of classified again, and a field
journalled as done whose row is not in the table (the table was removed, replaced or edited) is classified
again. A crash in the middle of a line leaves a torn last line, which is cut off.

Each of the three files is an :class:`AppendOnlyFile`, which before and after every line checks that the file
it holds open is still the one at its path (same device and inode): one removed while the watcher runs is made
again from the copy still open, every line kept, and the watcher says so; one replaced by another file stops the
watcher with one line, its own lines saved beside it, rather than writing into a file it did not make.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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


# ------------------------------------------------------------------------------------ append-only files


def _fsync_folder(folder: Path) -> None:
    """Make a file's creation or rename durable (its directory entry); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


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


class AppendOnlyFile:
    """A file of lines, each one durable before :meth:`append` returns, that stays the file at its path.

    ``on_notice`` hears what was done about the file (recreated after it was removed). See the module docstring.
    """

    def __init__(self, path: Path, on_notice: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_notice = on_notice or (lambda message: None)
        _cut_torn_tail(path)
        self._open()

    def _open(self) -> None:
        created = not self.path.exists()
        self._handle: IO[bytes] = self.path.open("a+b")
        info = os.fstat(self._handle.fileno())
        self._identity = (info.st_dev, info.st_ino)
        if created:
            _fsync_folder(self.path.parent)

    @property
    def empty(self) -> bool:
        return os.fstat(self._handle.fileno()).st_size == 0

    def append(self, text: str) -> None:
        """Write one line and return once it is on disk in the file at :attr:`path`.

        Raises:
            DataError: another file was put at the path while the watcher ran (the watcher stops).
        """
        self._check()
        self._handle.write(text.encode("utf-8") + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._check()  # removed while the line was written: made again, this line included

    def _check(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._recreate()
            return
        if (info.st_dev, info.st_ino) != self._identity:
            raise DataError(self._replaced())

    def _copy_of_own(self, target: Path) -> int:
        """Copy the lines of the file held open (removed or not) to ``target``, durably; return their count."""
        self._handle.flush()
        self._handle.seek(0)
        lines = 0
        with target.open("xb") as out:
            while chunk := self._handle.read(1 << 20):
                lines += chunk.count(b"\n")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return lines

    def _recreate(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.restoring")
        lines = self._copy_of_own(temporary)
        try:
            os.link(temporary, self.path)  # never over a file that appeared meanwhile
        except FileExistsError:
            temporary.unlink()
            raise DataError(self._replaced()) from None
        except OSError:  # no hard links here (some network shares): a rename, checked just before
            if self.path.exists():
                temporary.unlink()
                raise DataError(self._replaced()) from None
            temporary.replace(self.path)
        else:
            temporary.unlink()
        _fsync_folder(self.path.parent)
        old = self._handle
        self._open()
        old.close()
        self.on_notice(f"{self.path} was removed while watching; made it again with the {lines} lines written so far")

    def _replaced(self) -> str:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        kept = self.path.with_name(f"{self.path.stem}.watcher-{stamp}{self.path.suffix}")
        try:
            lines = self._copy_of_own(kept)
            saved = f"its {lines} lines are saved as {kept.name}"
        except OSError as exc:
            saved = f"its lines could not be saved ({exc.strerror or exc})"
        return (
            f"{self.path} was replaced by another file while the watcher ran; stopped rather than write into a file "
            f"it did not make ({saved}); move one of them away and start the watcher again"
        )

    def read_lines(self) -> list[str]:
        """Every complete line of the file as it is at its path (for reconciling at start)."""
        if not self.path.is_file():
            return []
        return self.path.read_text(encoding="utf-8", errors="replace").splitlines()

    def close(self) -> None:
        self._handle.close()


# ------------------------------------------------------------------------------------------- journal


@dataclass
class Journal:
    """The append-only record of fields classified (``done``) and set aside (``rejected`` + signature)."""

    path: Path
    done: set[str]
    rejected: dict[str, Signature]
    file: AppendOnlyFile | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, on_notice: Callable[[str], None] | None = None) -> Journal:
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
        return cls(path=path, done=done, rejected=rejected, file=AppendOnlyFile(path, on_notice))

    def record(self, key: str, status: str, signature: Signature, **extra: Any) -> None:
        entry = {"field": key, "status": status, "time": now_iso(), "files": [list(s) for s in signature], **extra}
        assert self.file is not None
        self.file.append(json.dumps(entry))
        if status == "done":
            self.done.add(key)
            self.rejected.pop(key, None)
        else:
            self.rejected[key] = signature

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


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

    def __init__(
        self,
        path: Path,
        classes: Sequence[str],
        on_notice: Callable[[str], None] | None = None,
        *,
        cells: bool = False,
    ) -> None:
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
        self.file = AppendOnlyFile(path, on_notice)
        if fresh and self.format == "csv":
            self.file.append(self._csv_line(self.header))

    def fields(self) -> list[str]:
        """The field of every row, in order (to reconcile with the journal at start)."""
        if not self.path.is_file():
            return []
        if self.format == "jsonl":
            found = []
            for line in self.file.read_lines():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    found.append(str(json.loads(line)["field"]))
            return found
        with self.path.open(newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            return [row[0] for row in reader if row]

    @staticmethod
    def _csv_line(values: Sequence[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(values)
        return buffer.getvalue()

    def append(self, row: dict[str, Any]) -> None:
        """Write one row; when this returns, the row is on disk in the table at :attr:`path`."""
        self.append_rows([row])

    def append_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append a field's rows in one write (a field's cells land together or, after a crash, not at all); when
        this returns they are on disk in the table at :attr:`path`."""
        if rows:
            self.file.append("\n".join(self._text(row) for row in rows))

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
        self.file.close()


class RejectedTable:
    """``rejected.csv``: ``field``, ``time``, ``reason``, ``files``; one row per field set aside."""

    HEADER = ("field", "time", "reason", "files")

    def __init__(self, path: Path, on_notice: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.file = AppendOnlyFile(path, on_notice)
        if self.file.empty:
            self.file.append(ResultsTable._csv_line(self.HEADER))

    def append(self, key: str, reason: str, files: Sequence[str]) -> None:
        self.file.append(ResultsTable._csv_line([key, now_iso(), reason, "; ".join(files)]))

    def close(self) -> None:
        self.file.close()
