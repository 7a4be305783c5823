"""Open-addressing hash indexes that change as a kernel runs: find, insert in place, delete.

Linear probing over a power-of-two table of ``(key, value)`` int64 pairs, ``ix[slot]``
(:data:`EMPTY` keys mark free slots), so a probe and the value it finds share a
cache line. A deletion shifts the entries after it back (no tombstones, so probes
stay short however many deletions there were). Insertion is the caller's:
:func:`find` returns the empty slot where a missing key goes. The caller keeps the
load at most two thirds (:func:`room` between kernel calls), which is what keeps
probes short.
"""
from __future__ import annotations

import numpy as np

from .._jit import jit

#: A free slot.
EMPTY = np.int64(-1)


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (at least 16)."""
    return 1 << max(4, int(n - 1).bit_length())


def room(ix: np.ndarray, need: int) -> np.ndarray:
    """The index ``ix``, or a larger copy, at most two thirds full once ``need`` entries are in it."""
    if 2 * ix.shape[0] >= 3 * need:
        return ix
    new = np.full((pow2((3 * need + 1) // 2), 2), EMPTY, np.int64)
    reindex(ix, new)
    return new


@jit(_nrt=False, inline="always")
def slot(key, mask):
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@jit(_nrt=False, inline="always")
def find(ix, key):
    """Slot of ``key``, or the empty slot where it would go."""
    mask = ix.shape[0] - 1
    i = slot(key, mask)
    while ix[i, 0] != key and ix[i, 0] != EMPTY:
        i = (i + 1) & mask
    return i


@jit(_nrt=False)
def delete(ix, i):
    """Remove slot ``i`` (backward shift: each entry after it that may sit nearer its home slot moves back)."""
    mask = ix.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if ix[j, 0] == EMPTY:
            break
        home = slot(ix[j, 0], mask)
        # move j back to i if its home is not cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and (home <= i and home > j)):
            ix[i, 0] = ix[j, 0]
            ix[i, 1] = ix[j, 1]
            i = j
    ix[i, 0] = EMPTY


@jit(_nrt=False)
def reindex(old, new):
    """Move every entry of index ``old`` into the empty, larger index ``new``."""
    mask = new.shape[0] - 1
    for i in range(old.shape[0]):
        k = old[i, 0]
        if k != EMPTY:
            j = slot(k, mask)
            while new[j, 0] != EMPTY:
                j = (j + 1) & mask
            new[j, 0] = k
            new[j, 1] = old[i, 1]
