"""Open-addressing hash indexes that change as a kernel runs: find, insert in place, delete.

Linear probing over a power-of-two table of int64 keys (:data:`EMPTY` marks a free
slot); a deletion shifts the entries after it back (no tombstones, so probes stay
short however many deletions there were). Two layouts:

* a key array and a value array (:func:`find`, :func:`delete`, :func:`reindex`);
* pairs, ``ix[slot] = (key, value)`` (:func:`pfind`, :func:`pdelete`,
  :func:`reindex_pairs`): a probe and the value it finds share a cache line.

Insertion is the caller's: :func:`find` / :func:`pfind` return the empty slot where
a missing key goes. The caller keeps the load at most two thirds (:func:`room`,
:func:`room_pairs` between kernel calls), which is what keeps probes short.
"""
from __future__ import annotations

import numpy as np

from .._jit import jit

#: A free slot.
EMPTY = np.int64(-1)


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (at least 16)."""
    return 1 << max(4, int(n - 1).bit_length())


def room(key: np.ndarray, val: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """The index ``(key, val)``, or a larger copy, at most two thirds full once ``need`` entries are in it."""
    if 2 * key.shape[0] >= 3 * need:
        return key, val
    size = pow2((3 * need + 1) // 2)
    nk, nv = np.full(size, EMPTY, np.int64), np.zeros(size, val.dtype)
    reindex(key, val, nk, nv)
    return nk, nv


def room_pairs(ix: np.ndarray, need: int) -> np.ndarray:
    """:func:`room` for a pair index."""
    if 2 * ix.shape[0] >= 3 * need:
        return ix
    new = np.full((pow2((3 * need + 1) // 2), 2), EMPTY, np.int64)
    reindex_pairs(ix, new)
    return new


@jit(_nrt=False, inline="always")
def slot(key, mask):
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@jit(_nrt=False, inline="always")
def find(ix_key, key):
    """Slot of ``key`` in the index, or the empty slot where it would go."""
    mask = ix_key.shape[0] - 1
    i = slot(key, mask)
    while ix_key[i] != key and ix_key[i] != EMPTY:
        i = (i + 1) & mask
    return i


@jit(_nrt=False)
def delete(ix_key, ix_val, i):
    """Remove slot ``i`` from a linear-probing index (backward shift: no tombstones)."""
    mask = ix_key.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if ix_key[j] == EMPTY:
            break
        home = slot(ix_key[j], mask)
        # move j back to i if its home is not cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and (home <= i and home > j)):
            ix_key[i] = ix_key[j]
            ix_val[i] = ix_val[j]
            i = j
    ix_key[i] = EMPTY


@jit(_nrt=False)
def reindex(ok, ov, nk, nv):
    """Move every entry of index ``(ok, ov)`` into the empty, larger index ``(nk, nv)``."""
    mask = nk.shape[0] - 1
    for i in range(ok.shape[0]):
        k = ok[i]
        if k != EMPTY:
            j = slot(k, mask)
            while nk[j] != EMPTY:
                j = (j + 1) & mask
            nk[j] = k
            nv[j] = ov[i]


@jit(_nrt=False, inline="always")
def pfind(ix, key):
    """Slot of ``key`` in a pair index (``ix[slot] = (key, value)``: one cache line answers a probe), or the
    empty slot where it would go."""
    mask = ix.shape[0] - 1
    i = slot(key, mask)
    while ix[i, 0] != key and ix[i, 0] != EMPTY:
        i = (i + 1) & mask
    return i


@jit(_nrt=False)
def pdelete(ix, i):
    """Remove slot ``i`` from a pair index (backward shift, as :func:`delete`)."""
    mask = ix.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if ix[j, 0] == EMPTY:
            break
        home = slot(ix[j, 0], mask)
        if (i <= j and (home <= i or home > j)) or (i > j and (home <= i and home > j)):
            ix[i, 0] = ix[j, 0]
            ix[i, 1] = ix[j, 1]
            i = j
    ix[i, 0] = EMPTY


@jit(_nrt=False)
def reindex_pairs(old, new):
    """Move every entry of pair index ``old`` into the empty, larger pair index ``new``."""
    mask = new.shape[0] - 1
    for i in range(old.shape[0]):
        k = old[i, 0]
        if k != EMPTY:
            j = slot(k, mask)
            while new[j, 0] != EMPTY:
                j = (j + 1) & mask
            new[j, 0] = k
            new[j, 1] = old[i, 1]
