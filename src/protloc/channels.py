"""The four channels of an HPA field and what each shows: the names every wing uses (the readers, the card,
the figures, the service).
"""

from __future__ import annotations

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""All channel names, in the default order (microtubules, protein, nucleus, endoplasmic reticulum)."""

CHANNEL_ROLES: dict[str, str] = {
    "red": "microtubules",
    "green": "protein of interest",
    "blue": "nucleus",
    "yellow": "endoplasmic reticulum",
}

__all__ = ["CHANNELS", "CHANNEL_ROLES"]
