"""Expiry structures for kernels that walk time forward: block FIFO queues and a radix heap.

Both serve :mod:`fastpath.stages.conntrack_kernel`, and neither knows what it files:

* **FIFO queues** of ``(time, who)`` rows, for things filed in the order they come
  due (entries of one lifetime, filed as time moves on). Rows sit in blocks of
  :data:`BLOCK` rows from one pool (``blk``: ``BLOCK`` rows a block; ``bnext[b]``:
  the next block of a queue, or of the free list), so a queue grows and shrinks a
  block at a time without copying, and a block spent at one queue's head is reused
  at some queue's tail (last freed, first reused: still in cache). ``qs`` holds a
  row per queue, ``(tag, head block, head index, tail block, tail index, count,
  head's time)``, and a last row for the pool, ``(free block, free blocks, blocks
  ever used)``. A kernel files only into a queue with room (:func:`q_room`) or
  within a reserve made before the call (:func:`grow_blocks`).
* **A radix heap** (a monotone priority queue: a key is never below the last one
  taken, which holds because time only moves forward) of records threaded through
  a column of the caller's record array: 64 buckets by the highest bit in which a
  key differs from the last key taken, O(1) to file, each record moved at most 64
  times before it is taken.
"""
from __future__ import annotations

import numpy as np

from .._jit import bit_length64, jit

I64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)

# ----------------------------------------------------------------------------- block FIFO queues

#: ``qs`` columns of a queue's row.
Q_TAG, Q_HEAD, Q_HIDX, Q_TAIL, Q_TIDX, Q_COUNT, Q_HEAD_X = range(7)
Q_COLS = 7
#: ``qs`` columns of the pool's row (the last one).
POOL_FREE, POOL_NFREE, POOL_HW = range(3)
#: Rows a block holds (64 KiB of ``(time, who)`` rows).
BLOCK = 4096
#: Rows behind the head that :func:`q_ahead` reads (a release prefetches what it names).
Q_AHEAD = 16


def new_queues(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` empty queues (tag -1) and an empty block pool: ``(qs, blk, bnext)``."""
    qs = np.zeros((n + 1, Q_COLS), np.int64)
    qs[:n, Q_TAG] = -1
    return qs, np.zeros((0, 2), np.int64), np.zeros(0, np.int64)


def free_blocks(qs: np.ndarray, bnext: np.ndarray) -> int:
    """Blocks the queues can still take: on the free list, and never used."""
    pool = qs[-1]
    return bnext.shape[0] - int(pool[POOL_HW]) + int(pool[POOL_NFREE])


def grow_blocks(qs: np.ndarray, blk: np.ndarray, bnext: np.ndarray, need: int) -> None:
    """Make room for ``need`` more rows however they fall among the queues (each queue's tail block may be
    partly used): the pool grows in place (``ndarray.resize``: pages move, nothing is copied), by a quarter
    at least. ``blk`` and ``bnext`` must own their memory."""
    free = free_blocks(qs, bnext)
    want = -(-need // BLOCK) + qs.shape[0] - 1
    if free >= want:
        return
    cap = bnext.shape[0]
    new = max(cap + cap // 4, cap + want - free)
    blk.resize((new * BLOCK, 2), refcheck=False)
    bnext.resize(new, refcheck=False)


@jit(_nrt=False, inline="always")
def q_room(qs, bnext, q):
    """Whether queue ``q`` takes one more row (its tail block has room, or a block is free)."""
    if qs[q, Q_COUNT] != 0 and qs[q, Q_TIDX] < BLOCK:
        return True
    p = qs.shape[0] - 1
    return qs[p, POOL_NFREE] > 0 or qs[p, POOL_HW] < bnext.shape[0]


@jit(_nrt=False, inline="always")
def _block(qs, bnext):
    """A block for a queue's tail: the last one freed, else the next never used."""
    p = qs.shape[0] - 1
    b = qs[p, POOL_FREE]
    if qs[p, POOL_NFREE] > 0:
        qs[p, POOL_FREE] = bnext[b]
        qs[p, POOL_NFREE] -= 1
        return b
    b = qs[p, POOL_HW]
    qs[p, POOL_HW] = b + 1
    return b


@jit(_nrt=False, inline="always")
def _free(qs, bnext, b):
    p = qs.shape[0] - 1
    bnext[b] = qs[p, POOL_FREE]
    qs[p, POOL_FREE] = b
    qs[p, POOL_NFREE] += 1


@jit(_nrt=False, inline="always")
def q_push(qs, blk, bnext, q, x, who):
    """Append ``(x, who)`` to queue ``q`` (which has room: :func:`q_room`, or the reserve)."""
    c = qs[q, Q_COUNT]
    if c == 0:
        b = _block(qs, bnext)
        qs[q, Q_HEAD] = b
        qs[q, Q_HIDX] = 0
        qs[q, Q_TAIL] = b
        qs[q, Q_TIDX] = 0
        qs[q, Q_HEAD_X] = x
    elif qs[q, Q_TIDX] == BLOCK:
        b = _block(qs, bnext)
        bnext[qs[q, Q_TAIL]] = b
        qs[q, Q_TAIL] = b
        qs[q, Q_TIDX] = 0
    p = qs[q, Q_TAIL] * BLOCK + qs[q, Q_TIDX]
    blk[p, 0] = x
    blk[p, 1] = who
    qs[q, Q_TIDX] += 1
    qs[q, Q_COUNT] = c + 1


@jit(_nrt=False, inline="always")
def q_due(qs, q, t):
    """Whether queue ``q``'s head row is due at ``t`` (its time is ``qs[q, Q_HEAD_X]``)."""
    return qs[q, Q_COUNT] != 0 and qs[q, Q_HEAD_X] <= t


@jit(_nrt=False, inline="always")
def q_ahead(qs, blk, q):
    """The ``who`` of the row :data:`Q_AHEAD` places behind queue ``q``'s head, or 0 if that row is in a later
    block (or absent): what a release prefetches."""
    i = qs[q, Q_HIDX] + Q_AHEAD
    if qs[q, Q_COUNT] > Q_AHEAD and i < BLOCK:
        return blk[qs[q, Q_HEAD] * BLOCK + i, 1]
    return np.int64(0)


@jit(_nrt=False, inline="always")
def q_pop(qs, blk, bnext, q):
    """Take queue ``q``'s head row: its ``who`` (its time is ``qs[q, Q_HEAD_X]``, read before)."""
    h = qs[q, Q_HEAD]
    i = qs[q, Q_HIDX]
    who = blk[h * BLOCK + i, 1]
    c = qs[q, Q_COUNT] - 1
    qs[q, Q_COUNT] = c
    i += 1
    if c == 0:                                       # empty: its block goes back
        _free(qs, bnext, h)
    else:
        if i == BLOCK:                               # the head block is spent
            nb = bnext[h]
            _free(qs, bnext, h)
            h = nb
            qs[q, Q_HEAD] = h
            i = 0
        qs[q, Q_HEAD_X] = blk[h * BLOCK + i, 0]
    qs[q, Q_HIDX] = i
    return who


# ----------------------------------------------------------------------------- radix heap

#: ``heads`` slots: 65 buckets (key XOR last has at most 64 bits), then the last key taken and a lower
#: bound on every key filed (so that a heap with nothing due answers in O(1)).
RH_LAST = 65
RH_BOUND = 66
RH_SLOTS = 67


def new_radix_heap() -> np.ndarray:
    """An empty radix heap's ``heads``."""
    h = np.full(RH_SLOTS, -1, np.int64)
    h[RH_LAST] = 0
    h[RH_BOUND] = I64_MAX
    return h


@jit(_nrt=False, inline="always")
def rh_push(heads, nxt, ncol, idx, key):
    """File record ``idx`` under ``key`` (>= the heap's last key); ``nxt[:, ncol]`` links the records."""
    b = bit_length64(np.uint64(key) ^ np.uint64(heads[RH_LAST]))
    nxt[idx, ncol] = heads[b]
    heads[b] = idx
    if key < heads[RH_BOUND]:
        heads[RH_BOUND] = key


@jit(_nrt=False, inline="always")
def rh_due(heads, t):
    """Whether the heap may hold records due at ``t`` (cheap: two reads; :func:`rh_ready` settles)."""
    if heads[0] != -1:
        return heads[RH_LAST] <= t
    return heads[RH_BOUND] <= t


@jit(_nrt=False)
def rh_ready(heads, keys, kcol, nxt, ncol, t):
    """Whether bucket 0 holds records due at ``t`` (all its keys equal the last key); settles it if needed.

    ``keys[:, kcol]`` holds each record's key. Take bucket 0's records while this is true."""
    if heads[0] != -1:
        return heads[RH_LAST] <= t
    if heads[RH_BOUND] > t:
        return False
    b = 1
    while b <= 64 and heads[b] == -1:
        b += 1
    if b > 64:
        heads[RH_BOUND] = I64_MAX
        return False
    m = I64_MAX
    i = heads[b]
    while i != -1:
        if keys[i, kcol] < m:
            m = keys[i, kcol]
        i = nxt[i, ncol]
    heads[RH_BOUND] = m                              # the smallest key filed
    if m > t:
        return False
    heads[RH_LAST] = m
    i = heads[b]
    heads[b] = -1
    while i != -1:                                   # every record moves to a lower bucket
        j = nxt[i, ncol]
        rh_push(heads, nxt, ncol, i, keys[i, kcol])
        i = j
    return True
