"""Which fields are in a watched folder, and when a field is complete and safe to read.

A field is ``<Id>_<channel>.<ext>`` files, as everywhere in protloc; in a recursive watch its key is the
sub-folder and the Id (``plate1/A1_f03``). A field is **ready** when every channel the model needs is there,
no file is empty, and none has changed size or modification time for ``settle`` seconds, as seen by this
process (two looks at least ``settle`` apart). That covers writers that copy slowly or pause: a file that is
still growing keeps changing its signature. Writers that write a temporary name (``.A1_red.png``,
``A1_red.png.part``, ``~A1_red.png``) and rename are never looked at before the rename: those names are not
channel files. A field that still lacks a channel (or has an empty file) ``incomplete_after`` seconds after it
was first seen is reported as incomplete.

**Links.** A channel file that is a symbolic link (or lies in a linked sub-folder) leading outside the watched
folder is set aside with a line saying so, unless ``follow_links`` is on (``protloc watch --follow-links``): a
link can point anywhere the watcher's user may read, which the person filling the folder may not. Links that stay
inside the folder are followed. In a recursive watch, linked sub-folders are entered only with ``follow_links``;
without it each one leading out is named once (``on_notice``), as is a sub-folder that cannot be read.
"""

from __future__ import annotations

import contextlib
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
        follow_links: bool = False,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self.given_root = root.absolute()
        self.root = root.resolve()
        self.follow_links = follow_links
        self.on_notice = on_notice or (lambda message: None)
        self._told: set[str] = set()
        self.channels = tuple(channels)
        self.recursive = recursive
        self.exclude = exclude.resolve() if exclude is not None else None
        self.settle = settle
        self.incomplete_after = incomplete_after
        self.clock = clock
        self.pending: dict[str, PendingField] = {}

    # ------------------------------------------------------------------------------------ finding files

    def _relative(self, folder: Path) -> Path | None:
        """``folder`` relative to the watched folder: as written (a linked sub-folder keeps its name), else
        resolved; ``None`` when it is outside."""
        for base, candidate in ((self.given_root, folder.absolute()), (self.root, folder.resolve())):
            with contextlib.suppress(ValueError):
                return candidate.relative_to(base)
        return None

    def field_of(self, path: Path) -> tuple[str, str, str] | None:
        """``(key, Id, channel)`` for a channel file inside the watched folder, else ``None``."""
        if _is_hidden(path.name):
            return None
        parsed = split_channel_filename(path.name)
        if parsed is None:
            return None
        relative = self._relative(path.parent)
        if relative is None:
            return None
        if relative.parts and (not self.recursive or any(_is_hidden(p) for p in relative.parts)):
            return None
        if self.exclude is not None and (path.parent.resolve() == self.exclude or self.exclude in path.parents):
            return None
        sample_id, channel = parsed
        key = sample_id if not relative.parts else f"{relative.as_posix()}/{sample_id}"
        return key, sample_id, channel

    def _tell_once(self, key: str, message: str) -> None:
        if key not in self._told:
            self._told.add(key)
            self.on_notice(message)

    def _leads_out(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            return True
        return False

    def walk(self) -> Iterator[Path]:
        """Every candidate file under the folder (its sub-folders too when recursive), without the output.

        A sub-folder that cannot be read, or (without ``follow_links``) a linked one leading out of the folder, is
        named once through ``on_notice`` and left out.
        """
        stack = [self.given_root]
        entered = {self.root}
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                said = f"{folder}: cannot be read ({exc.strerror or exc}); its fields are not watched"
                self._tell_once(f"unreadable {folder}", said)
                continue
            self._told.discard(f"unreadable {folder}")
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False) or (entry.is_symlink() and entry.is_dir()):
                    if not self.recursive:
                        continue
                    path = Path(entry.path)
                    resolved = path.resolve()
                    if (self.exclude is not None and resolved == self.exclude) or resolved in entered:
                        continue
                    if entry.is_symlink() and not self.follow_links:
                        if self._leads_out(path):
                            self._tell_once(
                                f"link {path}",
                                f"{path}: a link to {resolved}, outside the watched folder; not watched "
                                "(--follow-links to watch linked folders)",
                            )
                        continue
                    entered.add(resolved)
                    stack.append(path)
                elif split_channel_filename(entry.name) is not None:
                    yield Path(entry.path)

    def link_problem(self, pending: PendingField) -> str | None:
        """Why a field may not be read because of a link (a file leading outside the watched folder), or
        ``None``; always ``None`` with ``follow_links``."""
        if self.follow_links:
            return None
        for path in pending.files.values():
            if self._leads_out(path):
                return (
                    f"{path.name} leads outside the watched folder (to {path.resolve()}); links leading out are "
                    "not followed (watch with --follow-links to allow them)"
                )
        return None

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
