"""The conntrack stage's kernel and its state, in flat arrays (see :mod:`fastpath.stages.conntrack`).

State lives in a handful of 2-D arrays, one row per record, so that one
record's fields share a cache line and the helpers take few arguments (numba
passes each array as a struct and counts references to it, so a helper with
twenty array arguments costs more than the work it does):

* conntrack records, for the entries that need one (see :func:`_ct_add`):
  ``ct64[e] = (expiry, assured_at)`` and
  ``ct32[e] = (node, bucket, heap next, chain prev, chain next, state)``;
* per-(node, hash bucket) chains of the entries that are not ASSURED, newest
  first, found through an open-addressing index on ``node << 32 | bucket``:
  a full table's ``early_drop`` looks at 8 buckets, never at the whole table;
* neighbour entries: a node's entry for one of its own pods is row ``pod`` of
  ``nb64 = (node << 32 | address, expiry)`` (key -1 while absent); the others
  (next hops, gateways) are slots of an open-addressing index of
  ``(node << 32 | address, expiry)`` pairs, so a use reads and writes one slot;
* per node: ``nd[n]`` holds the table size, occupancy and every counter (the
  current interval's and the whole replay's);
* expiries in FIFO queues of ``(time, who)`` rows, kept in blocks from one pool
  (:mod:`fastpath.tables.timers`): conntrack entries in a lane per lifetime (entries of one
  lifetime filed in time order expire in that order: O(1) each), the rest in a
  radix heap (a monotone priority queue: a key is never below the last one
  taken, which holds because time only moves forward) threaded through the
  records' ``heap next``; neighbour entries (60 s after the last use) by a
  check filed at each use that moves an expiry, in time order since every entry
  lives as long (:func:`_nb_expire`);
* the walk is memory-bound, so it prefetches: the index slots, counters and pod
  records of the row :data:`ROW_AHEAD` rows on, and the records (or index slots)
  of the queue rows :data:`~fastpath.tables.timers.Q_AHEAD` places behind the one being released.

Big helpers are plain compiled functions (no parallel passes; LLVM inlines the
small ones), so the kernel compiles in seconds.

A call may keep only some nodes' state (``own``, a node group of
:mod:`fastpath.stages.conntrack_split`): the records then hold those nodes'
entries only, and the other side of a row that crosses groups answers through
``far_ok`` (see :func:`track`).
"""
from __future__ import annotations

import numpy as np

from .._jit import jit, prefetch
from ..codes import (BRIDGE, DELIVERED, DENIED, DROPPED, EGRESS, EXTERNAL, LOOPBACK, NONE, R_CONNTRACK_FULL,
                     R_POLICY_EGRESS,
                     REFUSED, ROUTED)
from ..tables.balancers import flow_hash
from ..tables.hashindex import delete, find, slot
from ..tables.timers import I64_MAX, Q_HEAD_X, Q_TAG, q_ahead, q_due, q_pop, q_push, q_room, rh_due, rh_push, rh_ready

# ----------------------------------------------------------------------------- layouts

#: ``ct64`` columns.
CT_EXP, CT_ASSURED = 0, 1
#: ``ct32`` columns.
CT_NODE, CT_BUCKET, CT_HNEXT, CT_PREV, CT_NEXT, CT_STATE = range(6)
#: ``nb64`` columns (and the neighbour index's).
NB_KEY, NB_EXP = 0, 1
#: ``nd`` columns: size, now (``N_CHAINED``: records on the node's eviction chains), the interval's
#: counters, the replay's counters.
(N_MAX, N_BUCKETS, N_OCC, N_NOCC, N_CHAINED,
 N_IV_PEAK, N_IV_NEW, N_IV_DROPS, N_IV_FLOODS, N_IV_BIN, N_IV_BOUT, N_IV_NPEAK, N_IV_NOVER,
 N_PEAK, N_DROPS, N_FLOODS, N_NPEAK, N_NOVER, N_NEW) = range(19)
N_COLS = 19
#: Timeline row columns (``tl[row]``).
TL_COLS = ("t", "node", "entries", "new", "drops", "floods", "bin", "bout", "nentries", "nover")
#: ``params`` slots (ns, except the hash key).
(P_INTERVAL, P_KEY, P_TIME_WAIT, P_SYN_SENT, P_CLOSE, P_UDP, P_UDP_STREAM, P_GENERIC, P_STREAM_AFTER,
 P_FDB_AGE, P_NB_LIFE) = range(11)
#: ``meta`` slots: current interval, started, chains in use, neighbour index entries in use, timeline rows,
#: the high-water mark of the conntrack pool (records at or above it were never used).
M_IV, M_STARTED, M_CHAINS, M_NB_USED, M_ROWS, M_CT_HW = range(6)
#: Slots of ``meta``.
META_SLOTS = 16
#: Buckets a full table looks through for an entry to evict (``early_drop``'s 8 buckets).
EARLY_DROP_BUCKETS = 8
#: Neighbour table hard cap per node (``gc_thresh3``).
GC_THRESH3 = 1024
#: The expiry queues (:mod:`fastpath.tables.timers`): ``0 .. N_LANES - 1`` are the conntrack lanes, entries of
#: one lifetime (the queue's tag) filed in time order, the first :data:`N_LANES` lifetimes seen (other entries
#: go to the radix heap); ``who`` is a record, or ``-1 - node`` for an entry that needs none (see
#: :func:`_ct_add`). Queue :data:`NB_Q` holds the neighbour checks (see :func:`_nb_expire`).
N_LANES = 8
NB_Q = N_LANES
N_QUEUES = N_LANES + 1
#: Rows ahead whose reads :func:`track` starts (:func:`_prefetch_row`).
ROW_AHEAD = 16
#: Record states.
FREE, LIVE, DEAD = 0, 1, 2
#: ``CT_PREV`` of a record on no chain.
OFF_CHAIN = -2


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
def _chain_link(ct32, chx, nd, meta, e):
    """Put record ``e`` at the head (newest end) of its (node, bucket) chain."""
    nd[ct32[e, CT_NODE], N_CHAINED] += 1
    key = _chain_key(ct32[e, CT_NODE], ct32[e, CT_BUCKET])
    i = find(chx, key)
    if chx[i, 0] == key:
        h = chx[i, 1]
        ct32[h, CT_PREV] = e
        ct32[e, CT_NEXT] = h
    else:
        chx[i, 0] = key
        meta[M_CHAINS] += 1
        ct32[e, CT_NEXT] = -1
    ct32[e, CT_PREV] = -1
    chx[i, 1] = e


@jit(_nrt=False)
def _chain_unlink(ct32, chx, nd, meta, e):
    """Take record ``e`` off its chain."""
    nd[ct32[e, CT_NODE], N_CHAINED] -= 1
    p = ct32[e, CT_PREV]
    q = ct32[e, CT_NEXT]
    if p >= 0:
        ct32[p, CT_NEXT] = q
    else:                                            # the head: the index points at the next one
        i = find(chx, _chain_key(ct32[e, CT_NODE], ct32[e, CT_BUCKET]))
        if q >= 0:
            chx[i, 1] = q
        else:
            delete(chx, i)
            meta[M_CHAINS] -= 1
    if q >= 0:
        ct32[q, CT_PREV] = p
    ct32[e, CT_PREV] = OFF_CHAIN
    ct32[e, CT_NEXT] = OFF_CHAIN


@jit(_nrt=False)
def _early_drop(ct64, ct32, chx, nd, meta, n, nb, bucket, t):
    """The entry a full table on node ``n`` evicts for a new one in ``bucket``: the newest that is not
    ASSURED in the nearest of the 8 buckets from there; -1 if there is none (at once where the node has
    no record on a chain: a table full of ASSURED entries, the common case, probes no bucket)."""
    if nd[n, N_CHAINED] == 0:
        return np.int64(-1)
    m = min(EARLY_DROP_BUCKETS, nb)
    mask = chx.shape[0] - 1
    for off in range(m):                             # the 8 chain heads' slots: their misses overlap
        prefetch(chx, 2 * slot(_chain_key(n, (bucket + off) % nb), mask))
    for off in range(m):
        b = (bucket + off) % nb
        key = _chain_key(n, b)
        i = find(chx, key)
        if chx[i, 0] != key:
            continue
        e = chx[i, 1]
        while e != -1:
            nx = ct32[e, CT_NEXT]
            if ct64[e, CT_ASSURED] <= t:             # became ASSURED since: never a candidate again
                _chain_unlink(ct32, chx, nd, meta, e)
            else:
                return e
            e = nx
    return -1


@jit(_nrt=False, inline="always")
def _lane_of(qs, bnext, life):
    """The lane of lifetime ``life`` if it takes one more entry (claiming a free lane for a new lifetime), or
    -1: the entry goes to the radix heap."""
    for k in range(N_LANES):
        lk = qs[k, Q_TAG]
        if lk == life or lk == -1:
            qs[k, Q_TAG] = life
            return k if q_room(qs, bnext, k) else -1
    return -1


@jit(_nrt=False, inline="always")
def _ct_due(heads, qs, t):
    """Whether some conntrack record may be due at ``t`` (a few reads of small arrays)."""
    for k in range(N_LANES):
        if q_due(qs, k, t):
            return True
    return rh_due(heads, t)


@jit(_nrt=False, inline="always")
def _ct_release(ct32, ct_free, chx, nd, meta, e):
    """Record ``e``'s expiry came: out of its table if still in it, back to the pool."""
    if ct32[e, CT_STATE] == LIVE:
        nd[ct32[e, CT_NODE], N_OCC] -= 1
        if ct32[e, CT_PREV] != OFF_CHAIN:
            _chain_unlink(ct32, chx, nd, meta, e)
    ct32[e, CT_STATE] = FREE
    ct_free[ct_free[0] + 1] = e                      # ct_free[0]: how many are free
    ct_free[0] += 1


@jit(_nrt=False)
def _ct_expire(ct64, ct32, ct_free, heads, qs, blk, bnext, chx, nd, meta, t):
    """Take every conntrack entry whose expiry is at or before ``t``: lane heads, then the heap."""
    w = ct32.shape[1]
    for k in range(N_LANES):
        while q_due(qs, k, t):
            e = q_ahead(qs, blk, k)                 # a record due soon: its miss overlaps this release
            if e > 0:
                prefetch(ct32, e * w)
            elif e < 0:
                prefetch(nd, (-1 - e) * N_COLS)
            who = q_pop(qs, blk, bnext, k)
            if who >= 0:
                _ct_release(ct32, ct_free, chx, nd, meta, who)
            else:                                    # an entry without a record: always still in its table
                nd[-1 - who, N_OCC] -= 1
    while rh_ready(heads, ct64, CT_EXP, ct32, CT_HNEXT, t):
        e = heads[0]
        heads[0] = ct32[e, CT_HNEXT]
        _ct_release(ct32, ct_free, chx, nd, meta, e)


@jit(_nrt=False)
def _evict(ct64, ct32, chx, nd, meta, n, t, bucket):
    """Make room on full node ``n`` (``early_drop``); False if nothing could be evicted."""
    victim = _early_drop(ct64, ct32, chx, nd, meta, n, nd[n, N_BUCKETS], bucket, t)
    if victim < 0:
        return False
    ct32[victim, CT_STATE] = DEAD                    # its record is freed when its expiry comes
    nd[n, N_OCC] -= 1
    _chain_unlink(ct32, chx, nd, meta, victim)
    return True


@jit(_nrt=False, inline="always")
def _ct_room(ct64, ct32, chx, nd, meta, n, t, bucket):
    """Whether node ``n``'s table takes a new entry in ``bucket``, evicting one if it is full."""
    return nd[n, N_OCC] < nd[n, N_MAX] or _evict(ct64, ct32, chx, nd, meta, n, t, bucket)


@jit(_nrt=False, inline="always")
def _ct_add(ct64, ct32, ct_free, heads, qs, blk, bnext, chx, nd, meta, n, t, expiry, assured_at,
            bucket):
    """A new entry on node ``n``, which has room (:func:`_ct_room`).

    An entry ASSURED from the start whose lifetime has a lane with room needs no
    record: nothing evicts it or ends it early, so its lane row says all
    (``-1 - node``) and its release only counts it out. The others get a record
    (a candidate for early drop on its bucket's chain, or filed in the radix heap)."""
    k = _lane_of(qs, bnext, expiry - t)
    if assured_at <= t and k >= 0:
        q_push(qs, blk, bnext, k, expiry, -1 - n)
    else:
        e = _take(ct_free, meta, M_CT_HW)
        ct64[e, CT_EXP] = expiry
        ct64[e, CT_ASSURED] = assured_at
        ct32[e, CT_NODE] = n
        ct32[e, CT_BUCKET] = bucket
        ct32[e, CT_STATE] = LIVE
        if assured_at > t:                           # not ASSURED yet: a candidate for early drop
            _chain_link(ct32, chx, nd, meta, e)
        else:
            ct32[e, CT_PREV] = OFF_CHAIN
            ct32[e, CT_NEXT] = OFF_CHAIN
        if k >= 0:
            q_push(qs, blk, bnext, k, expiry, e)
        else:
            rh_push(heads, ct32, CT_HNEXT, e, expiry)
    occ = nd[n, N_OCC] + 1
    nd[n, N_OCC] = occ
    nd[n, N_NEW] += 1
    nd[n, N_IV_NEW] += 1
    if occ > nd[n, N_IV_PEAK]:
        nd[n, N_IV_PEAK] = occ
    if occ > nd[n, N_PEAK]:
        nd[n, N_PEAK] = occ


# ----------------------------------------------------------------------------- neighbour entries

@jit(_nrt=False)
def _nb_expire(nb64, qs, blk, bnext, nix, nd, meta, t):
    """Take every neighbour entry not used in its lifetime up to ``t``.

    Every use that moves an entry's expiry files a check at the new expiry in
    queue :data:`NB_Q` (who: the entry's index key, or ``-1 - pod``); all
    entries live the same time after their last use, so checks are filed in
    time order and the queue is a FIFO. A check whose entry has an expiry other
    than its own (used again since, or gone) is stale and dropped. The index
    slots (or pod records) of checks a few places on are prefetched.
    """
    mask = nix.shape[0] - 1
    while q_due(qs, NB_Q, t):
        a = q_ahead(qs, blk, NB_Q)
        if a > 0:
            _prefetch_slot(nix, a, mask)
        elif a < 0:
            prefetch(nb64, 2 * (-1 - a))
        x = qs[NB_Q, Q_HEAD_X]
        w = q_pop(qs, blk, bnext, NB_Q)
        if w < 0:                                    # a node's entry for one of its own pods
            pod = -1 - w
            if nb64[pod, NB_KEY] >= 0 and nb64[pod, NB_EXP] == x:
                nd[nb64[pod, NB_KEY] >> 32, N_NOCC] -= 1
                nb64[pod, NB_KEY] = -1
        else:
            i = find(nix, w)
            if nix[i, 0] == w and nix[i, 1] == x:
                nd[w >> 32, N_NOCC] -= 1
                delete(nix, i)
                meta[M_NB_USED] -= 1


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
def _nb_key(n, addr):
    return (np.int64(n) << np.int64(32)) | np.int64(addr)


@jit(_nrt=False, inline="always")
def _nb_use_pod(nb64, qs, blk, bnext, nd, meta, n, pod, addr, t, life):
    """Node ``n`` resolves its own pod ``pod`` (address ``addr``) at ``t``: record number ``pod``."""
    x = t + life
    if nb64[pod, NB_KEY] >= 0:                       # present: a refresh
        if nb64[pod, NB_EXP] < x:
            nb64[pod, NB_EXP] = x
            q_push(qs, blk, bnext, NB_Q, x, -1 - pod)
    elif _nb_room(nd, n):
        nb64[pod, NB_KEY] = _nb_key(n, addr)
        nb64[pod, NB_EXP] = x
        q_push(qs, blk, bnext, NB_Q, x, -1 - pod)


@jit(_nrt=False, inline="always")
def _nb_use(qs, blk, bnext, nix, nd, meta, n, addr, t, life):
    """Node ``n`` resolves ``addr`` at ``t``: refresh its entry, or make one (an overflow if the table is full).
    The entry is its index slot: ``(key, expiry)``."""
    key = _nb_key(n, addr)
    x = t + life
    i = find(nix, key)
    if nix[i, 0] == key:                             # the common case: a refresh
        if nix[i, 1] < x:
            nix[i, 1] = x
            q_push(qs, blk, bnext, NB_Q, x, key)
    elif _nb_room(nd, n):
        nix[i, 0] = key
        nix[i, 1] = x
        meta[M_NB_USED] += 1
        q_push(qs, blk, bnext, NB_Q, x, key)


@jit(_nrt=False, inline="always")
def _prefetch_slot(nix, key, mask):
    """Prefetch ``key``'s home slot in the neighbour index and the cache line after it (a probe or a
    deletion's backward shift often runs on into it)."""
    i = 2 * slot(key, mask)
    prefetch(nix, i)
    prefetch(nix, i + 8)


@jit(_nrt=False, inline="always")
def _prefetch_row(nix, nb64, nd, fdb_last, pod_node, node_ip, src_node, dst_node, src_pod, dst_pod, j):
    """Start loading what row ``j`` will touch (its neighbour index slots, its nodes' counters, its pods'
    FDB times and records), so those misses overlap the rows before it."""
    mask = nix.shape[0] - 1
    sn = np.int64(src_node[j])
    dn = np.int64(dst_node[j])
    if sn >= 0:
        prefetch(nd, sn * N_COLS)
        if dn >= 0 and dn != sn:
            prefetch(nd, dn * N_COLS)
            _prefetch_slot(nix, _nb_key(sn, node_ip[dn]), mask)
            _prefetch_slot(nix, _nb_key(dn, node_ip[sn]), mask)
        else:
            _prefetch_slot(nix, _nb_key(sn, 0), mask)
    sp = np.int64(src_pod[j])
    if sp >= 0:
        prefetch(fdb_last, sp)
        prefetch(pod_node, sp)
    dp = np.int64(dst_pod[j])
    if dp >= 0:
        prefetch(nb64, 2 * dp)
        prefetch(fdb_last, dp)
        prefetch(pod_node, dp)


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
            if d > P[P_STREAM_AFTER]:                          # a packet after 2 s (time_after)
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
def track(ct64, ct32, ct_free, ct_heads, qs, blk, bnext, chx, nb64, nix, nd,
          tl, meta, P, ts, proto, src_ip, dst_ip, src_port, dst_port, life_ns, nbytes, has_bytes,
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
        for p in range(fdb_last.shape[0]):           # every pod's MAC learned as the replay starts
            fdb_last[p] = ts[0]
    life = P[P_NB_LIFE]
    want = decided.shape[0] != 0
    for i in range(n_rows):
        if i + ROW_AHEAD < n_rows:
            _prefetch_row(nix, nb64, nd, fdb_last, pod_node, node_ip, src_node, dst_node, src_pod, dst_pod,
                          i + ROW_AHEAD)
        t = ts[i]
        iv = t // interval
        while meta[M_IV] < iv:                       # close intervals: emit, expire to the next start
            if timeline:
                _emit(nd, tl, meta, interval, own)
            meta[M_IV] += 1
            start = meta[M_IV] * interval
            _ct_expire(ct64, ct32, ct_free, ct_heads, qs, blk, bnext, chx, nd, meta, start)
            _nb_expire(nb64, qs, blk, bnext, nix, nd, meta, start)
            _next_interval(nd, own)
        if _ct_due(ct_heads, qs, t):
            _ct_expire(ct64, ct32, ct_free, ct_heads, qs, blk, bnext, chx, nd, meta, t)
        if q_due(qs, NB_Q, t):
            _nb_expire(nb64, qs, blk, bnext, nix, nd, meta, t)
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
        # denied by the backend's ingress policy (on the far node); egress policy drops it on the
        # client's node before the entry is confirmed: no entry anywhere
        far_denied = v == DENIED and reason[i] != R_POLICY_EGRESS
        # what the connection leaves in the tables of the nodes that see it
        both = False                                 # client's node and the far node
        one = False                                  # the client's node only
        if v == DELIVERED or v == REFUSED:
            one = sn >= 0
            both = one and dn >= 0 and dn != sn
        elif v == EGRESS:
            one = sn >= 0
        elif (v == DROPPED or far_denied) and sn >= 0 and dn >= 0 and dn != sn:
            one = True                               # left the client's node, dropped on the far one
        kind = src_kind[i]
        if one:
            expiry, assured_at = _lifetime(v, tcp, pr, t, d, P)
            h = flow_hash(np.uint64(P[P_KEY]), src_ip[i], dst_ip[i], src_port[i], dst_port[i], proto[i])
            src_part = 2 if kind == 0 else (0 if kind == 1 else 1)
            if own_s:                                # room on the client's node (evicting if it is full)
                bucket_s = _bucket(h, nd, sn)
                ok = _ct_room(ct64, ct32, chx, nd, meta, sn, t, bucket_s)
            else:                                    # the client's node is kept elsewhere: its answer
                bucket_s = np.int64(0)
                ok = far_ok[i] != 0
            if not ok:
                _drop_full(nd, sn, own_s, verdict, reason, path, dst_pod, hops, i, src_part)
                if want:
                    decided[i] = decided[i] & np.uint8(0xFF ^ D_SN_OK)
                dst_node[i] = -1
                dn = -1
                v = DROPPED
            else:
                add_d = False                        # the far node's entry, then the client's
                bucket_d = np.int64(0)
                s_expiry, s_assured = expiry, assured_at
                if both:
                    if own_d:
                        bucket_d = _bucket(h, nd, dn)
                        ok = _ct_room(ct64, ct32, chx, nd, meta, dn, t, bucket_d)
                        add_d = ok
                    elif own_s:                      # the far node is kept elsewhere: its answer
                        ok = far_ok[i] != 0
                    if not ok:
                        _drop_full(nd, dn, own_d, verdict, reason, path, dst_pod, hops, i,
                                   src_part + (1 if kind == 2 else 2))
                        if want and own_d:
                            decided[i] = decided[i] & np.uint8(0xFF ^ D_DN_OK)
                        v = DROPPED
                        # the client's entry stays, unanswered
                        s_expiry, s_assured = t + _unanswered(tcp, pr, P), I64_MAX
                for side in range(2):                # one call site, inlined once
                    if side == 0:
                        if not add_d:
                            continue
                        an, ax, aa, ab = dn, expiry, assured_at, bucket_d
                    else:                            # the client's entry, once the far side answered
                        if not own_s:
                            continue
                        an, ax, aa, ab = sn, s_expiry, s_assured, bucket_s
                    _ct_add(ct64, ct32, ct_free, ct_heads, qs, blk, bnext, chx, nd, meta, an, t, ax, aa,
                            ab)
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
                if t >= fdb_last[dp] + P[P_FDB_AGE]:          # aged once 300 s have passed (has_expired)
                    nd[pn, N_FLOODS] += 1
                    nd[pn, N_IV_FLOODS] += 1
                if alive > fdb_last[dp]:
                    fdb_last[dp] = alive
                # the node's neighbour entry for its pod (pod -> pod on one bridge: the pod's own table)
                if pa_ != BRIDGE or kind != 0:
                    _nb_use_pod(nb64, qs, blk, bnext, nd, meta, pn, dp, np.int64(dnat_ip[i]), t, life)
        # neighbour entries between nodes (next hop, and the answer back), and to the gateway
        if sn >= 0:
            cross = dn >= 0 and dn != sn
            answered = v == DELIVERED or v == REFUSED
            use_next = cross and own_s and (answered or v == DROPPED or far_denied)
            use_back = cross and own_d and answered
            use_gw = own_s and (v == EGRESS or (kind == 2 and answered))
            for k in range(3):                       # one call site, inlined once
                if k == 0:                           # the client's node: the far node, its next hop
                    if not use_next:
                        continue
                    un, ua = sn, np.int64(node_ip[dn])
                elif k == 1:                         # the far node: the client's node, for the answer
                    if not use_back:
                        continue
                    un, ua = dn, np.int64(node_ip[sn])
                else:                                # the client's node: the default gateway
                    if not use_gw:
                        continue
                    un, ua = sn, np.int64(0)
                _nb_use(qs, blk, bnext, nix, nd, meta, un, ua, t, life)
