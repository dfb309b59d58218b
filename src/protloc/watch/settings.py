"""How ``protloc watch`` runs: one settings object, built once (by the CLI or a notebook) and passed whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protloc.errors import ConfigError
from protloc.watch.state import TABLE_FORMATS


@dataclass(frozen=True)
class WatchSettings:
    """What to do with each field that lands in the watched folder, and how to notice it.

    ``backend``, ``device``, ``tta``, ``thresholds``, ``min_one``, ``tiles`` and ``bit_depth`` mean what they
    mean for ``protloc predict``.
    """

    out: Path | None = None
    """where the results, journal and pictures go (default ``FOLDER/protloc-watch``)."""
    table: str = "csv"
    """``csv`` or ``jsonl``: the results table's format."""
    backend: str = "auto"
    device: str = "cpu"
    tta: str | Sequence[str] | None = None
    thresholds: float | str | Path | None = None
    min_one: bool = True
    tiles: int = 1
    bit_depth: int | None = None
    pictures: bool = False
    """write ``pictures/<field>.png``, the composite with its labels (or its cells' outlines), per field."""
    recursive: bool = False
    """watch sub-folders too (the key of a field is then ``sub/folder/Id``)."""
    follow_links: bool = False
    """read channel files (and enter sub-folders) that are links leading outside the folder; by default such a
    field is set aside with a line in ``rejected.csv`` saying so."""
    settle: float = 2.0
    """seconds a field's files must stay unchanged before it is read."""
    incomplete_after: float = 600.0
    """seconds after which a field still lacking a channel is set aside as incomplete (it is taken again if its
    files change later)."""
    poll: bool = False
    """poll the folder every ``poll_interval`` seconds instead of waiting for filesystem events (network shares)."""
    poll_interval: float = 1.0
    rescan_every: float = 60.0
    """seconds between full rescans that catch anything the events missed."""
    batch_size: int = 8
    """at most this many ready fields through the network at once."""
    once: bool = False
    """classify what is there (waiting for files to settle) and return instead of watching on."""
    cells: bool = False
    """one row per cell: each field is segmented and its cells scored (the model: a cell model package, fused with
    the field model it carries as its card says; or a field model, whose probabilities every cell gets)."""
    max_fields: int | None = None
    """return after this many fields were classified or set aside."""

    def check(self) -> WatchSettings:
        """These settings, or a :class:`ConfigError` naming the one out of range."""
        if self.table not in TABLE_FORMATS:
            raise ConfigError(f"table format {self.table!r} is not one of {', '.join(TABLE_FORMATS)}")
        if self.settle < 0 or self.incomplete_after <= 0 or self.poll_interval <= 0 or self.batch_size < 1:
            raise ConfigError("settle must be >= 0, incomplete-after and poll-interval > 0, batch-size >= 1")
        return self
