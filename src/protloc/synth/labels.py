"""Label sets with the real Kaggle HPA 2018 frequencies, and sample ids shaped like the real ones."""

from __future__ import annotations

import functools
import importlib.resources
import json
import uuid

import numpy as np

from protloc.classes import HPA2018
from protloc.errors import ConfigError

SYNTH_SCHEME = HPA2018
"""The class scheme of the synthetic data: the generator makes 2018-style data (the 28 classes of the Kaggle
2018 release, its label-set frequencies and its ``Id,Target`` layout), so it names that scheme explicitly."""

# --------------------------------------------------------------------------------------------------------------
# Labels and ids
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _label_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped real label sets: (multi-hot (S, 28) uint8, frequency (S,), per-class image counts (28,))."""
    text = importlib.resources.files("protloc").joinpath("data/hpa_label_stats.json").read_text("utf-8")
    data = json.loads(text)
    sets = data["label_sets"]
    hot = np.zeros((len(sets), SYNTH_SCHEME.num_classes), dtype=np.uint8)
    for row, (ids, _count) in enumerate(sets):
        hot[row, [int(i) for i in ids]] = 1
    weights = np.array([count for _ids, count in sets], dtype=np.float64)
    return hot, weights, np.asarray(data["class_counts"], dtype=np.int64)


def sample_label_sets(n: int, rng: np.random.Generator, min_per_class: int = 0) -> np.ndarray:
    """Draw ``n`` label sets with the frequencies of the real Kaggle HPA 2018 training set.

    Every row is one of the 577 distinct label sets of the 31,072 real images, drawn with its real frequency,
    so class imbalance and co-occurrence are the real ones.

    Args:
        n: how many label sets.
        rng: the random stream (the result is a pure function of its state).
        min_per_class: guarantee at least this many rows holding every class. Rows are swapped, rarest class
            first, for real label sets that hold the short class; a row is only given up when none of its
            classes would fall below the minimum, so the guarantee holds for all classes at the end.

    Returns:
        ``(n, 28)`` multi-hot ``uint8`` array.

    Raises:
        ConfigError: ``n < 0``, ``min_per_class < 0``, or ``min_per_class * 28 > n``.
    """
    if n < 0:
        raise ConfigError(f"number of label sets must be >= 0, got {n}")
    if min_per_class < 0:
        raise ConfigError(f"min_per_class must be >= 0, got {min_per_class}")
    if min_per_class * SYNTH_SCHEME.num_classes > n:
        raise ConfigError(
            f"min_per_class={min_per_class} needs at least {min_per_class * SYNTH_SCHEME.num_classes} samples "
            f"({SYNTH_SCHEME.num_classes} classes x {min_per_class}), but only {n} were asked for"
        )
    hot, weights, class_counts = _label_table()
    choice = rng.choice(len(weights), size=n, p=weights / weights.sum())
    if min_per_class > 0:
        _top_up(choice, hot, weights, class_counts, min_per_class, rng)
    return hot[choice].copy()


def _top_up(
    choice: np.ndarray,
    hot: np.ndarray,
    weights: np.ndarray,
    class_counts: np.ndarray,
    minimum: int,
    rng: np.random.Generator,
) -> None:
    """Swap rows of ``choice`` (in place) until every class is held by at least ``minimum`` rows."""
    counts = hot[choice].sum(axis=0).astype(np.int64)
    for c in np.argsort(class_counts, kind="stable"):  # rarest first
        if counts[c] >= minimum:
            continue
        holders = np.flatnonzero(hot[:, c])
        holder_p = weights[holders] / weights[holders].sum()
        candidates: list[int] = []
        while counts[c] < minimum:
            if not candidates:
                # A row may go when it lacks c and none of its classes would drop below the minimum.
                rows = hot[choice]
                ok = (rows[:, c] == 0) & np.all((rows == 0) | (counts > minimum)[None, :], axis=1)
                candidates = list(rng.permutation(np.flatnonzero(ok)))
                if not candidates:  # impossible while n >= 28 * minimum; kept as a guard
                    raise ConfigError(f"cannot give every class {minimum} samples with {len(choice)} samples")
            victim = int(candidates.pop())
            old = hot[choice[victim]]
            if old[c] or np.any(old.astype(bool) & (counts <= minimum)):
                continue  # no longer eligible after earlier swaps
            new = int(holders[rng.choice(len(holders), p=holder_p)])
            counts += hot[new].astype(np.int64) - old
            choice[victim] = new


# UUID version-1 timestamps (100 ns ticks since 1582-10-15) between 2018-08-15 and 2018-11-15, when the real
# ids were minted: their third group reads 11e8, as in 00070df0-bbc3-11e8-b2bc-ac1f6b6435d0.
_UUID_T0 = (1534291200 + 12219292800) * 10**7
_UUID_T1 = (1542240000 + 12219292800) * 10**7


def synth_id(rng: np.random.Generator) -> str:
    """A sample id shaped like the real ones: a version-1 UUID string minted in late 2018, drawn from ``rng``."""
    ticks = int(rng.integers(_UUID_T0, _UUID_T1))
    clock_seq = int(rng.integers(0, 1 << 14))
    node = int(rng.integers(0, 1 << 48))
    fields = (
        ticks & 0xFFFFFFFF,
        (ticks >> 32) & 0xFFFF,
        ((ticks >> 48) & 0x0FFF) | 0x1000,
        ((clock_seq >> 8) & 0x3F) | 0x80,
        clock_seq & 0xFF,
        node,
    )
    return str(uuid.UUID(fields=fields))
