"""``python -m protloc``: the same as the ``protloc`` command."""

from protloc.cli import entry

if __name__ == "__main__":
    entry()
