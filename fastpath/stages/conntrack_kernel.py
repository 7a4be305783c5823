"""The conntrack stage's kernel and its state, in flat arrays (see :mod:`fastpath.stages.conntrack`).

State lives in a handful of 2-D arrays, one row per record, so that one
record's fields share a cache line and the helpers take few arguments (numba
passes each array as a struct and counts references to it, so a helper with
twenty array arguments costs more than the work it does):

* conntrack records: ``ct64[e] = (expiry, assured_at)`` and
  ``ct32[e] = (node, bucket, heap next, chain prev, chain next, state)``;
* per-(node, hash bucket) chains of the entries that are not ASSURED, newest
  first, found through an open-addressing index on ``node << 32 | bucket``:
  a full table's ``early_drop`` looks at 8 buckets, never at the whole table;
* neighbour records: ``nb64[e] = (node << 32 | address, expiry)`` and
  ``nb32[e] = (node, wheel next)``. A node's entry for one of its own pods is
  record number ``pod`` (the first ``meta[M_NB_PODS]`` records; key -1 while
  absent); the others (next hops, gateways) are found through an index on the key;
* per node: ``nd[n]`` holds the table size, occupancy and every counter (the
  current interval's and the whole replay's);
* conntrack expiries sit in FIFO lanes, one per lifetime (entries of one
  lifetime filed in time order expire in that order: O(1) each, and the record
  is touched only when filed and when due), and the rest, with the neighbour
  in a radix heap (a monotone priority queue: a key is never below the last one
  taken, which holds because time only moves forward), threaded through the
  records' ``heap next``;
* neighbour expiries (60 s after the last use, refreshed lazily) in a timing
  wheel of about one-second slots; the slot that time reaches moves into a small
  binary heap that gives them up in exact order.

Every helper is a plain compiled function (no ``inline="always"``, no parallel
passes): LLVM inlines the small ones, and the kernel compiles in seconds.

A call may keep only some nodes' state (``own``, a node group of
:mod:`fastpath.stages.conntrack_split`): the records then hold those nodes'
entries only, and the other side of a row that crosses groups answers through
``far_ok`` (see :func:`track`).
"""
from __future__ import annotations

import numpy as np

from .._jit import bit_length64, jit
from ..codes import (BRIDGE, DELIVERED, DENIED, DROPPED, EGRESS, EXTERNAL, LOOPBACK, NONE, R_CONNTRACK_FULL,
                     REFUSED, ROUTED)
from ..tables.balancers import flow_hash

# ----------------------------------------------------------------------------- layouts

#: ``ct64`` columns.
CT_EXP, CT_ASSURED = 0, 1
#: ``ct32`` columns.
CT_NODE, CT_BUCKET, CT_HNEXT, CT_PREV, CT_NEXT, CT_STATE = range(6)
#: ``nb64`` columns.
NB_KEY, NB_EXP = 0, 1
#: ``nb32`` columns.
NB_NODE, NB_HNEXT = 0, 1
#: The neighbour timing wheel: ``NB_SLOTS`` slots of ``2 ** NB_SLOT_BITS`` ns (1.07 s; 137 s in all,
#: more than an entry's lifetime), each a list through ``NB_HNEXT``.
NB_SLOT_BITS = 30
NB_SLOTS = 128
#: ``nd`` columns: size, now, the interval's counters, the replay's counters.
(N_MAX, N_BUCKETS, N_OCC, N_NOCC,
 N_IV_PEAK, N_IV_NEW, N_IV_DROPS, N_IV_FLOODS, N_IV_BIN, N_IV_BOUT, N_IV_NPEAK, N_IV_NOVER,
 N_PEAK, N_DROPS, N_FLOODS, N_NPEAK, N_NOVER, N_NEW) = range(18)
N_COLS = 18
#: Timeline row columns (``tl[row]``).
TL_COLS = ("t", "node", "entries", "new", "drops", "floods", "bin", "bout", "nentries", "nover")
#: ``params`` slots (ns, except the hash key).
(P_INTERVAL, P_KEY, P_TIME_WAIT, P_SYN_SENT, P_CLOSE, P_UDP, P_UDP_STREAM, P_GENERIC, P_STREAM_AFTER,
 P_FDB_AGE, P_NB_LIFE) = range(11)
#: ``meta`` slots: current interval, started, chains in use, neighbour records in use, timeline rows, and
#: the high-water marks of the two pools (records at or above it were never used).
M_IV, M_STARTED, M_CHAINS, M_NB_USED, M_ROWS, M_CT_HW, M_NB_HW, M_NB_SLOT, M_NB_HEAP, M_NB_PODS = range(10)
#: Slots of ``meta``.
META_SLOTS = 16
#: Buckets a full table looks through for an entry to evict (``early_drop``'s 8 buckets).
EARLY_DROP_BUCKETS = 8
#: Neighbour table hard cap per node (``gc_thresh3``).
GC_THRESH3 = 1024
#: Radix-heap buckets (key XOR last has at most 64 bits), then the slot of ``last`` and the slot
#: of a lower bound on every key filed (so that a heap with nothing due answers in O(1)).
RH_LAST = 65
RH_BOUND = 66
RH_SLOTS = 67
#: FIFO lanes of conntrack expiries: entries of one lifetime, filed in time order, expire in that order, so
#: a lane per lifetime (up to :data:`N_LANES` lifetimes, the first seen) files and takes them in O(1); other
#: entries go to the radix heap. ``lanes[k] = (lifetime, head, tail, head's expiry)``, linked by ``CT_HNEXT``.
N_LANES = 8
LN_LIFE, LN_HEAD, LN_TAIL, LN_HEAD_EXP = range(4)
#: An empty index slot.
EMPTY = np.int64(-1)
I64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)
#: Record states.
FREE, LIVE, DEAD = 0, 1, 2
#: ``CT_PREV`` of a record on no chain.
OFF_CHAIN = -2


# ----------------------------------------------------------------------------- radix heap

@jit(_nrt=False, inline="always")
def _rh_push(heads, nxt, ncol, idx, key):
    """File record ``idx`` under ``key`` (>= the heap's last key); ``nxt[:, ncol]`` links the records."""
    b = bit_length64(np.uint64(key) ^ np.uint64(heads[RH_LAST]))
    nxt[idx, ncol] = heads[b]
    heads[b] = idx
    if key < heads[RH_BOUND]:
        heads[RH_BOUND] = key


@jit(_nrt=False, inline="always")
def _rh_due(heads, t):
    """Whether the heap may hold records due at ``t`` (cheap: two reads; :func:`_rh_ready` settles)."""
    if heads[0] != -1:
        return heads[RH_LAST] <= t
    return heads[RH_BOUND] <= t


@jit(_nrt=False)
def _rh_ready(heads, keys, kcol, nxt, ncol, t):
    """Whether bucket 0 holds records due at ``t`` (all its keys equal the last key); settles it if needed."""
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
        _rh_push(heads, nxt, ncol, i, keys[i, kcol])
        i = j
    return True


# ----------------------------------------------------------------------------- open-addressing index

@jit(_nrt=False, inline="always")
def _slot(key, mask):
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@jit(_nrt=False, inline="always")
def _find(ix_key, key):
    """Slot of ``key`` in the index, or the empty slot where it would go."""
    mask = ix_key.shape[0] - 1
    i = _slot(key, mask)
    while ix_key[i] != key and ix_key[i] != EMPTY:
        i = (i + 1) & mask
    return i


@jit(_nrt=False)
def _delete(ix_key, ix_val, i):
    """Remove slot ``i`` from a linear-probing index (backward shift: no tombstones)."""
    mask = ix_key.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if ix_key[j] == EMPTY:
            break
        home = _slot(ix_key[j], mask)
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
            j = _slot(k, mask)
            while nk[j] != EMPTY:
                j = (j + 1) & mask
            nk[j] = k
            nv[j] = ov[i]


# ----------------------------------------------------------------------------- pools

@jit(_nrt=False, inline="always")
def _take(free, meta, hw):
    """A record to use: the last one freed (``free[0]`` of them in ``free[1:]``), else the next never used
    (``meta[hw]``); the caller reserved room."""
    k = free[0]
    if k > 0:
        free[0] = k - 1
        return np.int64(free[k])
    e = meta[hw]
    meta[hw] = e + 1
    return e


# ----------------------------------------------------------------------------- conntrack entries

@jit(_nrt=False, inline="always")
def _chain_key(n, bucket):
    return (np.int64(n) << np.int64(32)) | np.int64(bucket)


@jit(_nrt=False)
def _chain_link(ct32, ch_key, ch_val, meta, e):
    """Put record ``e`` at the head (newest end) of its (node, bucket) chain."""
    key = _chain_key(ct32[e, CT_NODE], ct32[e, CT_BUCKET])
    i = _find(ch_key, key)
    if ch_key[i] == key:
        h = ch_val[i]
        ct32[h, CT_PREV] = e
        ct32[e, CT_NEXT] = h
    else:
        ch_key[i] = key
        meta[M_CHAINS] += 1
        ct32[e, CT_NEXT] = -1
    ct32[e, CT_PREV] = -1
    ch_val[i] = e


@jit(_nrt=False)
def _chain_unlink(ct32, ch_key, ch_val, meta, e):
    """Take record ``e`` off its chain."""
    p = ct32[e, CT_PREV]
    q = ct32[e, CT_NEXT]
    if p >= 0:
        ct32[p, CT_NEXT] = q
    else:                                            # the head: the index points at the next one
        i = _find(ch_key, _chain_key(ct32[e, CT_NODE], ct32[e, CT_BUCKET]))
        if q >= 0:
            ch_val[i] = q
        else:
            _delete(ch_key, ch_val, i)
            meta[M_CHAINS] -= 1
    if q >= 0:
        ct32[q, CT_PREV] = p
    ct32[e, CT_PREV] = OFF_CHAIN
    ct32[e, CT_NEXT] = OFF_CHAIN


@jit(_nrt=False)
def _early_drop(ct64, ct32, ch_key, ch_val, meta, n, nb, bucket, t):
    """The entry a full table on node ``n`` evicts for a new one in ``bucket``: the newest that is not
    ASSURED in the nearest of the 8 buckets from there; -1 if there is none."""
    for off in range(min(EARLY_DROP_BUCKETS, nb)):
        b = (bucket + off) % nb
        key = _chain_key(n, b)
        i = _find(ch_key, key)
        if ch_key[i] != key:
            continue
        e = ch_val[i]
        while e != -1:
            nx = ct32[e, CT_NEXT]
            if ct64[e, CT_ASSURED] <= t:             # became ASSURED since: never a candidate again
                _chain_unlink(ct32, ch_key, ch_val, meta, e)
            else:
                return e
            e = nx
    return -1


@jit(_nrt=False, inline="always")
def _ct_file(ct32, heads, lanes, e, t, expiry):
    """File record ``e``'s expiry: in the FIFO lane of its lifetime (claiming a free lane for a new
    lifetime), else in the radix heap."""
    life = expiry - t
    for k in range(N_LANES):
        lk = lanes[k, LN_LIFE]
        if lk == life or lk == -1:
            lanes[k, LN_LIFE] = life
            ct32[e, CT_HNEXT] = -1
            tail = lanes[k, LN_TAIL]
            if tail == -1:
                lanes[k, LN_HEAD] = e
                lanes[k, LN_HEAD_EXP] = expiry
            else:
                ct32[tail, CT_HNEXT] = e
            lanes[k, LN_TAIL] = e
            return
    _rh_push(heads, ct32, CT_HNEXT, e, expiry)


@jit(_nrt=False, inline="always")
def _ct_due(heads, lanes, t):
    """Whether some conntrack record may be due at ``t`` (a few reads of small arrays)."""
    for k in range(N_LANES):
        if lanes[k, LN_HEAD] != -1 and lanes[k, LN_HEAD_EXP] <= t:
            return True
    return _rh_due(heads, t)


@jit(_nrt=False, inline="always")
def _ct_release(ct32, ct_free, ch_key, ch_val, nd, meta, e):
    """Record ``e``'s expiry came: out of its table if still in it, back to the pool."""
    if ct32[e, CT_STATE] == LIVE:
        nd[ct32[e, CT_NODE], N_OCC] -= 1
        if ct32[e, CT_PREV] != OFF_CHAIN:
            _chain_unlink(ct32, ch_key, ch_val, meta, e)
    ct32[e, CT_STATE] = FREE
    ct_free[ct_free[0] + 1] = e                      # ct_free[0]: how many are free
    ct_free[0] += 1


@jit(_nrt=False)
def _ct_expire(ct64, ct32, ct_free, heads, lanes, ch_key, ch_val, nd, meta, t):
    """Take every conntrack record whose expiry is at or before ``t``: lane heads, then the heap."""
    for k in range(N_LANES):
        while lanes[k, LN_HEAD] != -1 and lanes[k, LN_HEAD_EXP] <= t:
            e = lanes[k, LN_HEAD]
            nx = ct32[e, CT_HNEXT]
            lanes[k, LN_HEAD] = nx
            if nx == -1:
                lanes[k, LN_TAIL] = -1
            else:
                lanes[k, LN_HEAD_EXP] = ct64[nx, CT_EXP]
            _ct_release(ct32, ct_free, ch_key, ch_val, nd, meta, e)
    while _rh_ready(heads, ct64, CT_EXP, ct32, CT_HNEXT, t):
        e = heads[0]
        heads[0] = ct32[e, CT_HNEXT]
        _ct_release(ct32, ct_free, ch_key, ch_val, nd, meta, e)


@jit(_nrt=False)
def _evict(ct64, ct32, ch_key, ch_val, nd, meta, n, t, bucket):
    """Make room on full node ``n`` (``early_drop``); False if nothing could be evicted."""
    victim = _early_drop(ct64, ct32, ch_key, ch_val, meta, n, nd[n, N_BUCKETS], bucket, t)
    if victim < 0:
        return False
    ct32[victim, CT_STATE] = DEAD                    # its record is freed when its expiry comes
    nd[n, N_OCC] -= 1
    _chain_unlink(ct32, ch_key, ch_val, meta, victim)
    return True


@jit(_nrt=False, inline="always")
def _ct_insert(ct64, ct32, ct_free, heads, lanes, ch_key, ch_val, nd, meta, n, t, expiry, assured_at,
               bucket):
    """A new entry on node ``n``: its record, or -1 if the table is full and nothing could be evicted."""
    if nd[n, N_OCC] >= nd[n, N_MAX] and not _evict(ct64, ct32, ch_key, ch_val, nd, meta, n, t, bucket):
        return -1
    e = _take(ct_free, meta, M_CT_HW)
    ct64[e, CT_EXP] = expiry
    ct64[e, CT_ASSURED] = assured_at
    ct32[e, CT_NODE] = n
    ct32[e, CT_BUCKET] = bucket
    ct32[e, CT_STATE] = LIVE
    if assured_at > t:                               # not ASSURED yet: a candidate for early drop
        _chain_link(ct32, ch_key, ch_val, meta, e)
    else:
        ct32[e, CT_PREV] = OFF_CHAIN
        ct32[e, CT_NEXT] = OFF_CHAIN
    _ct_file(ct32, heads, lanes, e, t, expiry)
    occ = nd[n, N_OCC] + 1
    nd[n, N_OCC] = occ
    nd[n, N_NEW] += 1
    nd[n, N_IV_NEW] += 1
    if occ > nd[n, N_IV_PEAK]:
        nd[n, N_IV_PEAK] = occ
    if occ > nd[n, N_PEAK]:
        nd[n, N_PEAK] = occ
    return e


@jit(_nrt=False)
def _ct_retire(ct32, ch_key, ch_val, nd, meta, e):
    """Take live record ``e`` out of its table now (its record is freed when its expiry comes)."""
    ct32[e, CT_STATE] = DEAD
    nd[ct32[e, CT_NODE], N_OCC] -= 1
    if ct32[e, CT_PREV] != OFF_CHAIN:
        _chain_unlink(ct32, ch_key, ch_val, meta, e)


# ----------------------------------------------------------------------------- neighbour entries

@jit(_nrt=False)
def _heap_push(heap, meta, key, e):
    """Binary min-heap of ``(key, record)`` rows in ``heap``, ``meta[M_NB_HEAP]`` of them: add one."""
    i = meta[M_NB_HEAP]
    meta[M_NB_HEAP] = i + 1
    while i > 0:
        up = (i - 1) >> 1
        if heap[up, 0] <= key:
            break
        heap[i, 0] = heap[up, 0]
        heap[i, 1] = heap[up, 1]
        i = up
    heap[i, 0] = key
    heap[i, 1] = e


@jit(_nrt=False)
def _heap_pop(heap, meta):
    """Drop the heap's smallest row (the last row sifts down from the root)."""
    n = meta[M_NB_HEAP] - 1
    meta[M_NB_HEAP] = n
    key = heap[n, 0]
    e = heap[n, 1]
    i = np.int64(0)
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and heap[c + 1, 0] < heap[c, 0]:
            c += 1
        if heap[c, 0] >= key:
            break
        heap[i, 0] = heap[c, 0]
        heap[i, 1] = heap[c, 1]
        i = c
    heap[i, 0] = key
    heap[i, 1] = e


@jit(_nrt=False)
def _nb_file(nb32, wheel, heap, meta, e, key):
    """File neighbour record ``e`` to be looked at ``key``: the wheel slot of that time, or the heap if
    time has reached that slot already."""
    s = key >> NB_SLOT_BITS
    if s <= meta[M_NB_SLOT]:
        _heap_push(heap, meta, key, e)
    else:
        w = s & (NB_SLOTS - 1)
        nb32[e, NB_HNEXT] = wheel[w]
        wheel[w] = e


@jit(_nrt=False, inline="always")
def _nb_due(heap, meta, t):
    """Whether some neighbour record may be due at ``t``, or time has reached a new wheel slot."""
    return (meta[M_NB_HEAP] > 0 and heap[0, 0] <= t) or meta[M_NB_SLOT] < (t >> NB_SLOT_BITS)


@jit(_nrt=False)
def _nb_expire(nb64, nb32, nb_free, wheel, heap, ix_key, ix_val, nd, meta, t):
    """Take every neighbour entry not used in its lifetime up to ``t``; file again the ones used since."""
    while True:
        if meta[M_NB_HEAP] > 0 and heap[0, 0] <= t:
            e = heap[0, 1]
            _heap_pop(heap, meta)
            if nb64[e, NB_EXP] > t:                  # used since it was filed: file it again
                _nb_file(nb32, wheel, heap, meta, e, nb64[e, NB_EXP])
                continue
            nd[nb32[e, NB_NODE], N_NOCC] -= 1
            if e < meta[M_NB_PODS]:                  # a pod's own record: absent again
                nb64[e, NB_KEY] = -1
                continue
            _delete(ix_key, ix_val, _find(ix_key, nb64[e, NB_KEY]))
            meta[M_NB_USED] -= 1
            nb_free[nb_free[0] + 1] = e
            nb_free[0] += 1
        elif meta[M_NB_SLOT] < (t >> NB_SLOT_BITS):  # time reached the next slot: its entries to the heap
            s = meta[M_NB_SLOT] + 1
            meta[M_NB_SLOT] = s
            w = s & (NB_SLOTS - 1)
            e = wheel[w]
            wheel[w] = -1
            while e != -1:
                nx = nb32[e, NB_HNEXT]
                _nb_file(nb32, wheel, heap, meta, e, nb64[e, NB_EXP])
                e = nx
        else:
            return


@jit(_nrt=False, inline="always")
def _nb_use_pod(nb64, nb32, wheel, heap, nd, meta, n, pod, addr, t, life):
    """Node ``n`` resolves its own pod ``pod`` (address ``addr``) at ``t``: record number ``pod``."""
    if nb64[pod, NB_KEY] >= 0:                       # present: a refresh
        if nb64[pod, NB_EXP] < t + life:
            nb64[pod, NB_EXP] = t + life
    elif _nb_room(nd, n):
        nb64[pod, NB_KEY] = (np.int64(n) << np.int64(32)) | np.int64(addr)
        nb64[pod, NB_EXP] = t + life
        nb32[pod, NB_NODE] = n
        _nb_file(nb32, wheel, heap, meta, pod, t + life)


@jit(_nrt=False, inline="always")
def _nb_room(nd, n):
    """Count a new entry on node ``n``'s table: False (an overflow, counted) if it holds ``gc_thresh3``."""
    if nd[n, N_NOCC] >= GC_THRESH3:
        nd[n, N_NOVER] += 1
        nd[n, N_IV_NOVER] += 1
        return False
    c = nd[n, N_NOCC] + 1
    nd[n, N_NOCC] = c
    if c > nd[n, N_IV_NPEAK]:
        nd[n, N_IV_NPEAK] = c
    if c > nd[n, N_NPEAK]:
        nd[n, N_NPEAK] = c
    return True


@jit(_nrt=False, inline="always")
def _nb_use(nb64, nb32, nb_free, wheel, heap, ix_key, ix_val, nd, meta, n, addr, t, life):
    """Node ``n`` resolves ``addr`` at ``t``: refresh its entry, or make one (an overflow if the table is full)."""
    key = (np.int64(n) << np.int64(32)) | np.int64(addr)
    i = _find(ix_key, key)
    if ix_key[i] == key:                             # the common case, inline: a refresh
        e = ix_val[i]
        if nb64[e, NB_EXP] < t + life:
            nb64[e, NB_EXP] = t + life
    else:
        _nb_add(nb64, nb32, nb_free, wheel, heap, ix_key, ix_val, nd, meta, n, key, i, t + life)


@jit(_nrt=False)
def _nb_add(nb64, nb32, nb_free, wheel, heap, ix_key, ix_val, nd, meta, n, key, i, expiry):
    """A new neighbour entry in empty index slot ``i``, or an overflow if node ``n``'s table is full."""
    if not _nb_room(nd, n):
        return
    e = _take(nb_free, meta, M_NB_HW)
    nb64[e, NB_KEY] = key
    nb64[e, NB_EXP] = expiry
    nb32[e, NB_NODE] = n
    _nb_file(nb32, wheel, heap, meta, e, expiry)
    ix_key[i] = key
    ix_val[i] = e
    meta[M_NB_USED] += 1


# ----------------------------------------------------------------------------- intervals

@jit(_nrt=False)
def _emit(nd, tl, meta, interval, own):
    """Timeline rows of the current interval: one per node this call keeps, in node order."""
    row = meta[M_ROWS]
    start = meta[M_IV] * interval
    for n in range(nd.shape[0]):
        if own[n] == 0:
            continue
        tl[row, 0] = start
        tl[row, 1] = n
        tl[row, 2] = nd[n, N_IV_PEAK]
        tl[row, 3] = nd[n, N_IV_NEW]
        tl[row, 4] = nd[n, N_IV_DROPS]
        tl[row, 5] = nd[n, N_IV_FLOODS]
        tl[row, 6] = nd[n, N_IV_BIN]
        tl[row, 7] = nd[n, N_IV_BOUT]
        tl[row, 8] = nd[n, N_IV_NPEAK]
        tl[row, 9] = nd[n, N_IV_NOVER]
        row += 1
    meta[M_ROWS] = row


@jit(_nrt=False)
def _next_interval(nd, own):
    """Counters of a new interval (of the nodes this call keeps): peaks start at what the tables hold now."""
    for n in range(nd.shape[0]):
        if own[n] == 0:
            continue
        nd[n, N_IV_NEW] = 0
        nd[n, N_IV_DROPS] = 0
        nd[n, N_IV_FLOODS] = 0
        nd[n, N_IV_BIN] = 0
        nd[n, N_IV_BOUT] = 0
        nd[n, N_IV_NOVER] = 0
        nd[n, N_IV_PEAK] = nd[n, N_OCC]
        nd[n, N_IV_NPEAK] = nd[n, N_NOCC]


# ----------------------------------------------------------------------------- one flow

@jit(_nrt=False, inline="always")
def _lifetime(v, tcp, pr, t, d, P):
    """(expiry, assured_at) of the entry a connection leaves, by how it ended."""
    if v == DELIVERED or v == EGRESS:
        if tcp:
            return t + d + P[P_TIME_WAIT], t                  # established at once
        if pr == 17:
            if d >= P[P_STREAM_AFTER]:
                return t + d + P[P_UDP_STREAM], t + P[P_STREAM_AFTER]
            return t + d + P[P_UDP], I64_MAX
        return t + d + P[P_GENERIC], I64_MAX
    if v == REFUSED:
        return t + (P[P_CLOSE] if tcp else (P[P_UDP] if pr == 17 else P[P_GENERIC])), I64_MAX
    return t + _unanswered(tcp, pr, P), I64_MAX


@jit(_nrt=False, inline="always")
def _drop_full(nd, n, count, verdict, reason, path, dst_pod, hops, i, h):
    """Row ``i`` dropped by node ``n``'s full table (reason ``conntrack-full``), ``h`` hops in; the drop
    counted on ``n`` where ``count`` (this call keeps ``n``'s state)."""
    if count:
        nd[n, N_DROPS] += 1
        nd[n, N_IV_DROPS] += 1
    verdict[i] = DROPPED
    reason[i] = R_CONNTRACK_FULL
    path[i] = NONE
    dst_pod[i] = -1
    hops[i] = h


@jit(_nrt=False, inline="always")
def _unanswered(tcp, pr, P):
    return P[P_SYN_SENT] if tcp else (P[P_UDP] if pr == 17 else P[P_GENERIC])


@jit(_nrt=False, inline="always")
def _bucket(h, nd, n):
    return np.int64((np.uint64(h) * np.uint64(nd[n, N_BUCKETS])) >> np.uint64(32))


#: ``decided`` bits (node-group mode, see :func:`track`): the client's node is kept by this call and its table
#: admitted the connection (or was not asked); the same for the far node; the client's node is kept here;
#: the far node is kept here.
D_SN_OK, D_DN_OK, D_SN_OWNED, D_DN_OWNED = 1, 2, 4, 8


@jit(_nrt=False)
def track(ct64, ct32, ct_free, ct_heads, ct_lanes, ch_key, ch_val, nb64, nb32, nb_free, nb_wheel, nb_heap, ix_key,
          ix_val, nd, tl, meta, P, ts, proto, src_ip, dst_ip, src_port, dst_port, life_ns, nbytes, has_bytes,
          verdict, reason, path, src_node, dst_node, src_pod, dst_pod, src_kind, hops, dnat_ip,
          node_ip, pod_node, pod_bridged, fdb_last, own, far_ok, decided, timeline, finish):
    """Walk rows in time order: conntrack entries, FDB ageing, neighbour entries, counters.

    ``life_ns``: each connection's lifetime (:func:`fastpath.lifetimes.lifetimes_ns`). With
    ``finish`` it only emits the last interval's timeline rows.

    Node groups (:mod:`fastpath.stages.conntrack_split`): ``own[x]`` (uint8 per node) says whether this
    call keeps node ``x``'s state (its counters and timeline rows, conntrack and neighbour entries, the
    FDB times of its pods); every other node's state is neither read nor written. Where a row's other
    side is kept elsewhere, whether that side's table admitted the connection is read from ``far_ok[i]``
    (the client's node's answer for a row whose client node is not kept here; the far node's answer for
    a row whose far node is not kept here; both together for a row where neither is). ``decided``
    (uint8 per row, or empty: not written) gets :data:`D_SN_OK` ... :data:`D_DN_OWNED`. With ``own``
    all ones ``far_ok`` is never read (one element will do) and the walk is the single run's.
    """
    interval = P[P_INTERVAL]
    if finish:
        if timeline and meta[M_STARTED] != 0:
            _emit(nd, tl, meta, interval, own)
        return
    n_rows = ts.shape[0]
    if n_rows == 0:
        return
    if meta[M_STARTED] == 0:
        meta[M_STARTED] = 1
        meta[M_IV] = ts[0] // interval
        meta[M_NB_SLOT] = ts[0] >> NB_SLOT_BITS     # the neighbour wheel starts at the first flow
        for p in range(fdb_last.shape[0]):           # every pod's MAC learned as the replay starts
            fdb_last[p] = ts[0]
    life = P[P_NB_LIFE]
    want = decided.shape[0] != 0
    for i in range(n_rows):
        t = ts[i]
        iv = t // interval
        while meta[M_IV] < iv:                       # close intervals: emit, expire to the next start
            if timeline:
                _emit(nd, tl, meta, interval, own)
            meta[M_IV] += 1
            start = meta[M_IV] * interval
            _ct_expire(ct64, ct32, ct_free, ct_heads, ct_lanes, ch_key, ch_val, nd, meta, start)
            _nb_expire(nb64, nb32, nb_free, nb_wheel, nb_heap, ix_key, ix_val, nd, meta, start)
            _next_interval(nd, own)
        if _ct_due(ct_heads, ct_lanes, t):
            _ct_expire(ct64, ct32, ct_free, ct_heads, ct_lanes, ch_key, ch_val, nd, meta, t)
        if _nb_due(nb_heap, meta, t):
            _nb_expire(nb64, nb32, nb_free, nb_wheel, nb_heap, ix_key, ix_val, nd, meta, t)
        sn = np.int64(src_node[i])
        dn = np.int64(dst_node[i])
        own_s = sn >= 0 and own[sn] != 0             # this call keeps the client's node
        own_d = dn >= 0 and own[dn] != 0             # ... the far node
        if want:
            decided[i] = np.uint8((D_SN_OK | D_SN_OWNED if own_s else 0) | (D_DN_OK | D_DN_OWNED if own_d else 0))
        pa_ = path[i]
        if pa_ == LOOPBACK:
            continue
        v = verdict[i]
        pr = np.int64(proto[i])
        tcp = pr == 6 or pr == 132
        d = life_ns[i]                               # fastpath.lifetimes: duration, else the default
        # what the connection leaves in the tables of the nodes that see it
        both = False                                 # client's node and the far node
        one = False                                  # the client's node only
        if v == DELIVERED or v == REFUSED:
            one = sn >= 0
            both = one and dn >= 0 and dn != sn
        elif v == EGRESS:
            one = sn >= 0
        elif (v == DROPPED or v == DENIED) and sn >= 0 and dn >= 0 and dn != sn:
            one = True                               # left the client's node, dropped on the far one
        kind = src_kind[i]
        if one:
            expiry, assured_at = _lifetime(v, tcp, pr, t, d, P)
            h = flow_hash(np.uint64(P[P_KEY]), src_ip[i], dst_ip[i], src_port[i], dst_port[i], proto[i])
            src_part = 2 if kind == 0 else (0 if kind == 1 else 1)
            mine = np.int64(-1)
            if own_s:
                mine = _ct_insert(ct64, ct32, ct_free, ct_heads, ct_lanes, ch_key, ch_val, nd, meta, sn, t, expiry,
                                  assured_at, _bucket(h, nd, sn))
                ok = mine >= 0
            else:                                    # the client's node is kept elsewhere: its answer
                ok = far_ok[i] != 0
            if not ok:
                _drop_full(nd, sn, own_s, verdict, reason, path, dst_pod, hops, i, src_part)
                if want:
                    decided[i] = decided[i] & np.uint8(0xFF ^ D_SN_OK)
                dst_node[i] = -1
                dn = -1
                v = DROPPED
            elif both:
                if own_d:
                    ok = _ct_insert(ct64, ct32, ct_free, ct_heads, ct_lanes, ch_key, ch_val, nd, meta, dn, t, expiry,
                                    assured_at, _bucket(h, nd, dn)) >= 0
                elif own_s:                          # the far node is kept elsewhere: its answer
                    ok = far_ok[i] != 0
                if not ok:
                    _drop_full(nd, dn, own_d, verdict, reason, path, dst_pod, hops, i,
                               src_part + (1 if kind == 2 else 2))
                    if want and own_d:
                        decided[i] = decided[i] & np.uint8(0xFF ^ D_DN_OK)
                    v = DROPPED
                    if own_s:
                        # the client's entry stays, unanswered: its record is retired and a new one filed
                        _ct_retire(ct32, ch_key, ch_val, nd, meta, mine)
                        _ct_insert(ct64, ct32, ct_free, ct_heads, ct_lanes, ch_key, ch_val, nd, meta, sn, t,
                                   t + _unanswered(tcp, pr, P), I64_MAX, _bucket(h, nd, sn))
                        nd[sn, N_NEW] -= 1
                        nd[sn, N_IV_NEW] -= 1
        # bytes: out of the client's node, into the far node (interval of the first packet)
        if has_bytes and (v == DELIVERED or v == EGRESS):
            if own_s:
                nd[sn, N_IV_BOUT] += np.int64(nbytes[i])
            if dn >= 0 and dn != sn and own_d:
                nd[dn, N_IV_BIN] += np.int64(nbytes[i])
        # the bridge FDB: the client pod's MAC is heard, then the frame to the destination pod
        alive = t + d if (v == DELIVERED or v == EGRESS) else t
        sp = np.int64(src_pod[i])
        if kind == 0 and sp >= 0:
            ps = np.int64(pod_node[sp])
            if alive > fdb_last[sp] and (ps < 0 or own[ps] != 0):
                fdb_last[sp] = alive
        dp = np.int64(dst_pod[i])
        if (v == DELIVERED or v == REFUSED) and dp >= 0 and pod_bridged[dp] != 0 and \
                (pa_ == BRIDGE or pa_ == ROUTED or pa_ == EXTERNAL):
            pn = np.int64(pod_node[dp])
            if own[pn] != 0:
                if t > fdb_last[dp] + P[P_FDB_AGE]:
                    nd[pn, N_FLOODS] += 1
                    nd[pn, N_IV_FLOODS] += 1
                if alive > fdb_last[dp]:
                    fdb_last[dp] = alive
                # the node's neighbour entry for its pod (pod -> pod on one bridge: the pod's own table)
                if pa_ != BRIDGE or kind != 0:
                    _nb_use_pod(nb64, nb32, nb_wheel, nb_heap, nd, meta, pn, dp, np.int64(dnat_ip[i]), t, life)
        # neighbour entries between nodes (next hop, and the answer back), and to the gateway
        if sn >= 0:
            if dn >= 0 and dn != sn and (v == DELIVERED or v == REFUSED or v == DROPPED or v == DENIED):
                if own_s:
                    _nb_use(nb64, nb32, nb_free, nb_wheel, nb_heap, ix_key, ix_val, nd, meta, sn,
                            np.int64(node_ip[dn]), t, life)
                if (v == DELIVERED or v == REFUSED) and own_d:
                    _nb_use(nb64, nb32, nb_free, nb_wheel, nb_heap, ix_key, ix_val, nd, meta, dn, np.int64(node_ip[sn]),
                            t, life)
            if own_s and (v == EGRESS or (kind == 2 and (v == DELIVERED or v == REFUSED))):
                # the default gateway
                _nb_use(nb64, nb32, nb_free, nb_wheel, nb_heap, ix_key, ix_val, nd, meta, sn, np.int64(0), t, life)
