"""Which fields are in a watched folder, and when a field is complete and safe to read.

A field is ``<Id>_<channel>.<ext>`` files, as everywhere in protloc; in a recursive watch its key is the
sub-folder and the Id (``plate1/A1_f03``). A field is **ready** when every channel the model needs is there,
no file is empty, and none has changed size or modification time for ``settle`` seconds, as seen by this
process (two looks at least ``settle`` apart). That covers writers that copy slowly or pause: a file that is
still growing keeps changing its signature. Writers that write a temporary name (``.A1_red.png``,
``A1_red.png.part``, ``~A1_red.png``) and rename are never looked at before the rename: those names are not
channel files. A field that still lacks a channel (or has an empty file) ``incomplete_after`` seconds after it
was first seen is reported as incomplete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protloc.data.io import IMAGE_EXTENSIONS, split_channel_filename
from protloc.watch.state import Signature


@dataclass
class PendingField:
    """A field seen but not yet taken: its files so far and when they last changed."""

    key: str
    sample_id: str
    files: dict[str, Path]
    first_seen: float
    signature: Signature | None = None
    stable_since: float = 0.0
    sizes_ok: bool = False
    present: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [path.name for path in self.files.values()]


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "~"))


class FieldTracker:
    """Fields seen in ``root`` and not yet classified or set aside (bounded: finished fields are dropped)."""

    def __init__(
        self,
        root: Path,
        channels: Sequence[str],
        *,
        recursive: bool = False,
        exclude: Path | None = None,
        settle: float = 2.0,
        incomplete_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root.resolve()
        self.channels = tuple(channels)
        self.recursive = recursive
        self.exclude = exclude.resolve() if exclude is not None else None
        self.settle = settle
        self.incomplete_after = incomplete_after
        self.clock = clock
        self.pending: dict[str, PendingField] = {}

    # ------------------------------------------------------------------------------------ finding files

    def field_of(self, path: Path) -> tuple[str, str, str] | None:
        """``(key, Id, channel)`` for a channel file inside the watched folder, else ``None``."""
        if _is_hidden(path.name):
            return None
        parsed = split_channel_filename(path.name)
        if parsed is None:
            return None
        try:
            relative = path.parent.resolve().relative_to(self.root)
        except ValueError:
            return None
        if relative.parts and (not self.recursive or any(_is_hidden(p) for p in relative.parts)):
            return None
        if self.exclude is not None and (path.parent.resolve() == self.exclude or self.exclude in path.parents):
            return None
        sample_id, channel = parsed
        key = sample_id if not relative.parts else f"{relative.as_posix()}/{sample_id}"
        return key, sample_id, channel

    def walk(self) -> Iterator[Path]:
        """Every candidate file under the folder (its sub-folders too when recursive), without the output."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if self.recursive and (self.exclude is None or Path(entry.path).resolve() != self.exclude):
                        stack.append(Path(entry.path))
                elif split_channel_filename(entry.name) is not None:
                    yield Path(entry.path)

    def seen(self, path: Path, *, skip: Callable[[str], bool]) -> bool:
        """Note a file that appeared or changed; ``skip(key)`` says the field is already done. True if noted."""
        parsed = self.field_of(path)
        if parsed is None:
            return False
        key, sample_id, channel = parsed
        if skip(key):
            return False
        pending = self.pending.get(key)
        if pending is None:
            pending = self.pending[key] = PendingField(key, sample_id, {}, first_seen=self.clock())
            for other in self.channels:  # files of the field already there (it was set aside, or events were lost)
                for extension in IMAGE_EXTENSIONS:
                    sibling = path.with_name(f"{sample_id}_{other}{extension}")
                    if sibling.is_file():
                        pending.files[other] = sibling
                        break
        pending.files[channel] = path
        return True

    def gone(self, path: Path) -> None:
        parsed = self.field_of(path)
        if parsed is None:
            return
        pending = self.pending.get(parsed[0])
        if pending is not None and pending.files.get(parsed[2]) == path:
            del pending.files[parsed[2]]

    # -------------------------------------------------------------------------------------- readiness

    def look(self, pending: PendingField, now: float) -> None:
        """Stat the field's files; restart its quiet period when anything changed."""
        entries = []
        present = []
        sizes_ok = True
        for channel in self.channels:
            path = pending.files.get(channel)
            if path is None:
                continue
            try:
                stat = path.stat()
            except OSError:
                del pending.files[channel]
                continue
            present.append(channel)
            entries.append((channel, int(stat.st_size), int(stat.st_mtime_ns)))
            sizes_ok = sizes_ok and stat.st_size > 0
        signature = tuple(entries)
        if signature != pending.signature:
            pending.signature = signature
            pending.stable_since = now
        pending.present = present
        pending.sizes_ok = sizes_ok

    def due(self) -> tuple[list[PendingField], list[PendingField]]:
        """``(ready, incomplete)``: fields to classify now, and fields given up on as incomplete.

        Both are removed from the pending set; the caller journals them.
        """
        now = self.clock()
        ready: list[PendingField] = []
        incomplete: list[PendingField] = []
        for key, pending in list(self.pending.items()):
            self.look(pending, now)
            quiet = now - pending.stable_since >= self.settle
            complete = len(pending.present) == len(self.channels) and pending.sizes_ok
            if complete and quiet:
                ready.append(pending)
                del self.pending[key]
            elif not pending.files:
                del self.pending[key]  # every file went away again (moved or deleted by the writer)
            elif quiet and now - pending.first_seen >= self.incomplete_after:
                incomplete.append(pending)
                del self.pending[key]
        ready.sort(key=lambda p: p.stable_since)
        return ready, incomplete

    def waiting(self) -> int:
        return len(self.pending)

    def missing(self, pending: PendingField) -> str:
        """Why an incomplete field is incomplete, in words."""
        lacking = [c for c in self.channels if c not in pending.present]
        if lacking:
            return f"no {', '.join(lacking)} channel file after {self.incomplete_after:g} s"
        return f"an empty channel file after {self.incomplete_after:g} s"
