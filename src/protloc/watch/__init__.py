"""``protloc watch``: classify each acquisition as it lands in a folder (the microscope side).

:func:`watch_folder` is the library function; :mod:`protloc.watch.fields` decides when a field is complete,
:mod:`protloc.watch.state` keeps the lock, the journal and the results tables, :mod:`protloc.watch.loop` runs it.

May import: the top level, ``data``, ``model``, ``inference`` and ``cells``.
"""

from protloc.watch.loop import WatchEvent, WatchSummary, stop_on_signals, watch_folder
from protloc.watch.settings import WatchSettings

__all__ = ["WatchEvent", "WatchSettings", "WatchSummary", "stop_on_signals", "watch_folder"]
