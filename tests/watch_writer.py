"""A stand-in for a microscope's acquisition program, run as its own process by tests/test_watch.py.

    python tests/watch_writer.py FOLDER            # the mixed session below
    python tests/watch_writer.py FOLDER --stream N # N fields back to back, as fast as the disk takes them

writes fields into FOLDER the ways real writers do, and prints one line per field when it is complete:

* ``burst_NN``   12 fields written all at once, as fast as the disk takes them
* ``slow_N``     files written in chunks with pauses (a slow copy): a reader that does not wait would read
                 a truncated PNG
* ``renamed``    each file written under a temporary name (``.renamed_red.png.part``) and renamed
* ``late``       two channels first, the other two 1.5 s later
* ``never``      two channels only, ever (must be reported incomplete)
* ``corrupt``    four files of garbage
* ``truncated``  a valid PNG cut in half in one channel (written at once, so it never grows again)

It exits 0 after writing everything; it never reads what the watcher writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

CHANNELS = ("red", "green", "blue", "yellow")
SIZE = 48


def png(seed: int) -> bytes:
    plane = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    ok, data = cv2.imencode(".png", plane)
    assert ok
    return data.tobytes()


def write(path: Path, data: bytes, *, chunks: int = 1, pause: float = 0.0) -> None:
    step = max(1, len(data) // chunks)
    with path.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            if pause:
                time.sleep(pause)


def field(folder: Path, name: str, seed: int, channels: tuple[str, ...] = CHANNELS, **how: float) -> None:
    for i, channel in enumerate(channels):
        write(folder / f"{name}_{channel}.png", png(seed * 10 + i), **how)  # type: ignore[arg-type]


def main(folder: Path) -> None:
    for n in range(12):
        field(folder, f"burst_{n:02d}", n)
    print("burst", flush=True)
    field(folder, "never", 51, CHANNELS[:2])
    for n in range(2):
        field(folder, f"slow_{n}", 60 + n, chunks=4, pause=0.12)  # type: ignore[arg-type]
    print("slow", flush=True)
    for i, channel in enumerate(CHANNELS):
        temp = folder / f".renamed_{channel}.png.part"
        write(temp, png(700 + i), chunks=3, pause=0.05)  # type: ignore[arg-type]
        temp.rename(folder / f"renamed_{channel}.png")
    print("renamed", flush=True)
    for channel in CHANNELS:
        (folder / f"corrupt_{channel}.png").write_bytes(b"\x89PNG not really" * 20)
    for i, channel in enumerate(CHANNELS):
        data = png(800 + i)
        (folder / f"truncated_{channel}.png").write_bytes(data[: len(data) // 2] if channel == "blue" else data)
    print("bad", flush=True)
    field(folder, "late", 50, CHANNELS[:2])
    time.sleep(1.5)
    field(folder, "late", 50, CHANNELS[2:])
    print("late", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--stream":
        for n in range(int(sys.argv[3])):
            field(Path(sys.argv[1]), f"s{n:04d}", n)
    else:
        main(Path(sys.argv[1]))
