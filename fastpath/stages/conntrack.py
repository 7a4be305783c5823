"""Connection tracking, bridge FDB and neighbour tables over time (spec §5).

A trace with ``ts`` is replayed with state: after the stateless stages have
decided a batch, :class:`ConntrackStage` walks its flows in time order (one
thread, per-node state in flat arrays) and

* gives each connection an entry in the conntrack table of every node whose
  netfilter sees it (the client's node, where kube-proxy DNATs, and the
  backend's node when different), for its lifetime: ``duration`` plus the
  timeout of the state it closes in (:data:`TIMEOUTS`);
* drops a new connection on a node whose table is full (``dropped``, reason
  ``conntrack-full``) unless it can evict an entry that is not ASSURED from
  the 8 hash buckets starting at its own (``early_drop``);
* ages the bridge FDB (a frame to a MAC not heard from for 300 s floods:
  counted, still delivered) and the nodes' neighbour tables (``gc_thresh3``
  hard cap: a new entry on a full table is an overflow, counted);
* counts all of it per node and per interval (the timeline) and in the summary.

The rules, with every choice the spec left open, are in ``docs/dataplane.md``
("Connection tracking over time"); the slow twin is ``tests/naive/conntrack.py``.

Memory holds live state only: an entry record is 37 bytes (expiry, when it
becomes ASSURED, node, hash bucket, three links), pooled and reused; expiries
sit in a radix heap (a monotone priority queue: keys never go below the last
one taken, which holds because time only moves forward) threaded through the
records, so taking the due entries costs a few list walks, not a log-n sift.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

from .._jit import jit, pjit, read_only
from ..codes import (BRIDGE, DELIVERED, DENIED, DROPPED, EGRESS, EXTERNAL, LOOPBACK, NONE, R_CONNTRACK_FULL,
                     REFUSED, ROUTED)
from ..errors import FastpathError
from ..tables.balancers import flow_hash, seed_key

NS = 1_000_000_000
#: Conntrack timeouts, seconds (kernel defaults with kube-proxy's overrides, spec §5 item 3).
TIMEOUTS = {
    "tcp_time_wait": 120,    #: after a normal close (the connection's ``duration`` elapsed)
    "tcp_syn_sent": 120,     #: a SYN that got no answer (dropped on the far node)
    "tcp_close": 10,         #: after a RST (refused: nothing listens)
    "udp": 30,               #: after the last packet, not a stream (one-shot, refused, unanswered)
    "udp_stream": 120,       #: after the last packet of a stream (replied, alive 2 s after the first)
    "generic": 600,          #: any other protocol
}
#: A replied UDP flow becomes a stream (ASSURED) this long after its first packet.
UDP_STREAM_AFTER = 2
#: kube-proxy's conntrack sizing: ``min(max(PER_CPU * cpus, MIN), MAX)`` (``--conntrack-max-per-core``,
#: ``--conntrack-min``); a Node without ``status.capacity.cpu`` gets ``MIN``.
CT_PER_CPU, CT_MIN, CT_MAX = 32768, 131072, 1048576
#: Hash buckets = max / HASHSIZE_RATIO (kube-proxy sets ``hashsize`` to a quarter of the max).
HASHSIZE_RATIO = 4
#: Buckets a full table looks through for an entry to evict (``early_drop``'s 8 buckets).
EARLY_DROP_BUCKETS = 8
#: Bridge FDB ageing (``BR_DEFAULT_AGEING_TIME``), seconds.
FDB_AGEING = 300
#: A neighbour entry lives this long after its last use (REACHABLE for ``base_reachable_time``
#: 30 s, STALE after, then collected after ``gc_stale_time`` 60 s unused).
NEIGH_LIFETIME = 60
#: Neighbour table hard cap per node (``gc_thresh3``).
GC_THRESH3 = 1024
#: Protocols with TCP-like states (TCP, SCTP).
_TCPLIKE = (6, 132)
#: Radix-heap buckets (key XOR last has at most 64 bits), the slot of ``last``, and the slot of a
#: lower bound on every key filed (so that a heap with nothing due answers in O(1)).
_RH_LAST = 65
_RH_BOUND = 66
_NIL = np.int32(-1)
_I64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)
#: Entry record states.
_FREE, _LIVE, _DEAD = np.uint8(0), np.uint8(1), np.uint8(2)
#: ``meta`` slots.
M_IV, M_STARTED, M_CT_FREE, M_NB_FREE, M_NB_USED, M_ROWS = range(6)
#: The salt of the conntrack bucket hash (independent of the balancers' draws).
SALT_CONNTRACK = 9


def conntrack_max(cpu: int | None) -> int:
    """kube-proxy's ``nf_conntrack_max`` for a node with ``cpu`` CPUs (``CT_MIN`` where unknown)."""
    if cpu is None:
        return CT_MIN
    return min(max(CT_PER_CPU * int(cpu), CT_MIN), CT_MAX)


def bucket_count(ct_max: int) -> int:
    """Hash buckets of a table of ``ct_max`` entries (``nf_conntrack_buckets``)."""
    return max(1, int(ct_max) // HASHSIZE_RATIO)


#: Entry pool (conntrack records).
CtArrays = namedtuple("CtArrays", ["exp", "assured", "node", "bucket", "hnext", "lprev", "lnext", "state",
                                   "free", "heads"])
#: Neighbour pool and its index (open addressing on pack(node, address), backward-shift delete).
NbArrays = namedtuple("NbArrays", ["key", "exp", "hkey", "node", "hnext", "free", "heads", "ix_key", "ix_val"])
#: Per-node state and counters (current, per interval, whole replay).
NodeArrays = namedtuple("NodeArrays", [
    "max", "buckets", "occ", "lhead", "ltail", "nocc",
    "iv_peak", "iv_new", "iv_drops", "iv_floods", "iv_bin", "iv_bout", "iv_npeak", "iv_nover",
    "peak", "drops", "floods", "npeak", "nover", "new",
])
#: Timeline rows written by the kernel.
TlArrays = namedtuple("TlArrays", ["t", "node", "entries", "new", "drops", "floods", "bin", "bout", "nentries",
                                   "nover"])


# --------------------------------------------------------------------------- radix heap

@jit(inline="always")
def _bitlen(x):
    """Bits needed for unsigned ``x`` (0 for 0)."""
    x = np.uint64(x)
    n = 0
    if x >= np.uint64(1 << 32):
        x >>= np.uint64(32)
        n += 32
    if x >= np.uint64(1 << 16):
        x >>= np.uint64(16)
        n += 16
    if x >= np.uint64(1 << 8):
        x >>= np.uint64(8)
        n += 8
    if x >= np.uint64(1 << 4):
        x >>= np.uint64(4)
        n += 4
    if x >= np.uint64(4):
        x >>= np.uint64(2)
        n += 2
    if x >= np.uint64(2):
        x >>= np.uint64(1)
        n += 1
    if x >= np.uint64(1):
        n += 1
    return n


@jit(inline="always")
def _rh_push(heads, nxt, idx, key):
    """File record ``idx`` under ``key`` (>= the heap's last key)."""
    b = _bitlen(np.uint64(key) ^ np.uint64(heads[_RH_LAST]))
    nxt[idx] = heads[b]
    heads[b] = idx
    if key < heads[_RH_BOUND]:
        heads[_RH_BOUND] = key


@jit(inline="always")
def _rh_ready(heads, nxt, keys, t):
    """Whether bucket 0 holds records due at ``t`` (all its keys equal the last key); settles it if needed."""
    if heads[0] != -1:
        return heads[_RH_LAST] <= t
    if heads[_RH_BOUND] > t:
        return False
    b = 1
    while b <= 64 and heads[b] == -1:
        b += 1
    if b > 64:
        heads[_RH_BOUND] = _I64_MAX
        return False
    m = _I64_MAX
    i = heads[b]
    while i != -1:
        if keys[i] < m:
            m = keys[i]
        i = nxt[i]
    heads[_RH_BOUND] = m                             # the smallest key filed
    if m > t:
        return False
    heads[_RH_LAST] = m
    i = heads[b]
    heads[b] = -1
    while i != -1:                                   # every record moves to a lower bucket
        j = nxt[i]
        _rh_push(heads, nxt, i, keys[i])
        i = j
    return True


# --------------------------------------------------------------------------- conntrack entries
#
# The helpers take plain arrays (never the named tuples): the kernel unpacks its
# tuples once, inside a one-item parallel loop, where numba hands arrays on
# without reference-counting every use (see fastpath.tables.balancers).

@jit(inline="always")
def _list_unlink(lprev, lnext, lhead, ltail, n, e):
    p = lprev[e]
    q = lnext[e]
    if p >= 0:
        lnext[p] = q
    else:
        lhead[n] = q
    if q >= 0:
        lprev[q] = p
    else:
        ltail[n] = p
    lprev[e] = -2
    lnext[e] = -2


@jit(inline="always")
def _ct_expire(c_exp, c_node, c_hnext, c_lprev, c_lnext, c_state, c_free, c_heads, occ, lhead, ltail, t):
    """Take every conntrack record whose expiry is at or before ``t``."""
    while _rh_ready(c_heads, c_hnext, c_exp, t):
        e = c_heads[0]
        c_heads[0] = c_hnext[e]
        if c_state[e] == _LIVE:
            n = c_node[e]
            occ[n] -= 1
            if c_lprev[e] != -2:
                _list_unlink(c_lprev, c_lnext, lhead, ltail, n, e)
        c_state[e] = _FREE
        c_free[np.int64(c_free[0]) + 1] = e          # c_free[0]: how many are free
        c_free[0] += 1


@jit(inline="always")
def _ct_insert(c_exp, c_assured, c_node, c_bucket, c_hnext, c_lprev, c_lnext, c_state, c_free, c_heads,
               mx, buckets, occ, lhead, ltail, new, iv_new, iv_peak, peak, n, t, expiry, assured_at, bucket):
    """A new entry on node ``n``: its record, or -1 if the table is full and nothing could be evicted."""
    if occ[n] >= mx[n]:
        nb = np.int64(buckets[n])
        best = np.int64(-1)
        best_off = np.int64(EARLY_DROP_BUCKETS)
        e = np.int64(ltail[n])                       # newest first: the kernel's chains put new entries first
        while e != -1:
            prev = np.int64(c_lprev[e])
            if c_assured[e] <= t:
                _list_unlink(c_lprev, c_lnext, lhead, ltail, n, e)   # became ASSURED: never a candidate
            else:
                off = (np.int64(c_bucket[e]) - np.int64(bucket)) % nb
                if off < best_off:
                    best_off = off
                    best = e
                    if off == 0:
                        break
            e = prev
        if best < 0:
            return np.int64(-1)
        c_state[best] = _DEAD                        # its record is freed when its expiry comes
        occ[n] -= 1
        _list_unlink(c_lprev, c_lnext, lhead, ltail, n, best)
    e = np.int64(c_free[np.int64(c_free[0])])
    c_free[0] -= 1
    c_exp[e] = expiry
    c_assured[e] = assured_at
    c_node[e] = n
    c_bucket[e] = bucket
    c_state[e] = _LIVE
    if assured_at > t:                               # not ASSURED yet: a candidate for early drop
        c_lprev[e] = ltail[n]
        c_lnext[e] = -1
        if ltail[n] >= 0:
            c_lnext[ltail[n]] = e
        else:
            lhead[n] = e
        ltail[n] = e
    else:
        c_lprev[e] = -2
        c_lnext[e] = -2
    _rh_push(c_heads, c_hnext, e, expiry)
    occ[n] += 1
    new[n] += 1
    iv_new[n] += 1
    if occ[n] > iv_peak[n]:
        iv_peak[n] = occ[n]
    if occ[n] > peak[n]:
        peak[n] = occ[n]
    return e


# --------------------------------------------------------------------------- neighbour entries

@jit(inline="always")
def _ix_slot(key, mask):
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@jit(inline="always")
def _ix_find(ix_key, key):
    """Slot of ``key`` in the index, or the empty slot where it would go."""
    mask = ix_key.shape[0] - 1
    i = _ix_slot(key, mask)
    while ix_key[i] != key and ix_key[i] != np.uint64(0xFFFFFFFFFFFFFFFF):
        i = (i + 1) & mask
    return i


@jit(inline="always")
def _ix_delete(ix_key, ix_val, i):
    """Remove slot ``i`` from a linear-probing table (backward shift: no tombstones)."""
    mask = ix_key.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if ix_key[j] == np.uint64(0xFFFFFFFFFFFFFFFF):
            break
        home = _ix_slot(ix_key[j], mask)
        # move j back to i if its home is not cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and (home <= i and home > j)):
            ix_key[i] = ix_key[j]
            ix_val[i] = ix_val[j]
            i = j
    ix_key[i] = np.uint64(0xFFFFFFFFFFFFFFFF)


@jit(inline="always")
def _nb_expire(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, meta, t):
    while _rh_ready(b_heads, b_hnext, b_hkey, t):
        e = b_heads[0]
        b_heads[0] = b_hnext[e]
        if b_exp[e] > t:                             # used since it was filed: file it again
            b_hkey[e] = b_exp[e]
            _rh_push(b_heads, b_hnext, e, b_exp[e])
            continue
        nocc[b_node[e]] -= 1
        _ix_delete(ix_key, ix_val, _ix_find(ix_key, b_key[e]))
        meta[M_NB_USED] -= 1
        b_free[np.int64(b_free[0]) + 1] = e
        b_free[0] += 1


@jit(inline="always")
def _nb_use(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, nover, iv_nover,
            iv_npeak, npeak, meta, n, addr, t, life):
    """Node ``n`` resolves ``addr`` at ``t``: refresh its entry, or make one (an overflow if the table is full)."""
    key = (np.uint64(n) << np.uint64(32)) | np.uint64(addr)
    i = _ix_find(ix_key, key)
    if ix_key[i] == key:
        e = ix_val[i]
        if b_exp[e] < t + life:
            b_exp[e] = t + life
        return
    if nocc[n] >= GC_THRESH3:
        nover[n] += 1
        iv_nover[n] += 1
        return
    e = np.int64(b_free[np.int64(b_free[0])])
    b_free[0] -= 1
    b_key[e] = key
    b_exp[e] = t + life
    b_hkey[e] = t + life
    b_node[e] = n
    _rh_push(b_heads, b_hnext, e, t + life)
    ix_key[i] = key
    ix_val[i] = e
    meta[M_NB_USED] += 1
    nocc[n] += 1
    if nocc[n] > iv_npeak[n]:
        iv_npeak[n] = nocc[n]
    if nocc[n] > npeak[n]:
        npeak[n] = nocc[n]


# --------------------------------------------------------------------------- the kernel

@jit(inline="always")
def _emit(occ, iv_peak, iv_new, iv_drops, iv_floods, iv_bin, iv_bout, iv_npeak, iv_nover,
          tl_t, tl_node, tl_entries, tl_new, tl_drops, tl_floods, tl_bin, tl_bout, tl_nentries, tl_nover,
          meta, interval):
    """Timeline rows of the current interval (one per node); counters reset."""
    row = meta[M_ROWS]
    start = meta[M_IV] * interval
    for n in range(occ.shape[0]):
        tl_t[row] = start
        tl_node[row] = n
        tl_entries[row] = iv_peak[n]
        tl_new[row] = iv_new[n]
        tl_drops[row] = iv_drops[n]
        tl_floods[row] = iv_floods[n]
        tl_bin[row] = iv_bin[n]
        tl_bout[row] = iv_bout[n]
        tl_nentries[row] = iv_npeak[n]
        tl_nover[row] = iv_nover[n]
        row += 1
        iv_new[n] = 0
        iv_drops[n] = 0
        iv_floods[n] = 0
        iv_bin[n] = 0
        iv_bout[n] = 0
        iv_nover[n] = 0
    meta[M_ROWS] = row


@pjit
def _track(C, B, N, T, meta, P, ts, proto, src_ip, dst_ip, src_port, dst_port, duration, has_duration, dflt_ns,
           nbytes, has_bytes, verdict, reason, path, src_node, dst_node, src_pod, dst_pod, src_kind, hops,
           dnat_ip, node_ip, pod_node, pod_bridged, fdb_last, timeline, finish):
    """Walk rows in time order: conntrack entries, FDB ageing, neighbour entries, counters.

    ``P`` holds the parameters (ns): interval, hash key, timeouts, FDB ageing,
    neighbour lifetime. With ``finish`` it only emits the last interval.
    """
    (interval, key, tw, syn, close, udp, udp_stream, generic, stream_after, fdb_age, nb_life) = P
    c_exp, c_assured, c_node, c_bucket, c_hnext, c_lprev, c_lnext, c_state, c_free, c_heads = C
    b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val = B
    (mx, buckets, occ, lhead, ltail, nocc, iv_peak, iv_new, iv_drops, iv_floods, iv_bin, iv_bout, iv_npeak,
     iv_nover, peak, drops, floods, npeak, nover, new) = N
    tl_t, tl_node, tl_entries, tl_new, tl_drops, tl_floods, tl_bin, tl_bout, tl_nentries, tl_nover = T
    for _ in numba.prange(1):                        # one thread, in trace order (see the comment above)
        if finish:
            if timeline and meta[M_STARTED] != 0:
                _emit(occ, iv_peak, iv_new, iv_drops, iv_floods, iv_bin, iv_bout, iv_npeak, iv_nover,
                      tl_t, tl_node, tl_entries, tl_new, tl_drops, tl_floods, tl_bin, tl_bout, tl_nentries,
                      tl_nover, meta, interval)
            continue
        n_rows = ts.shape[0]
        if n_rows == 0:
            continue
        if meta[M_STARTED] == 0:
            meta[M_STARTED] = 1
            meta[M_IV] = ts[0] // interval
            for p in range(fdb_last.shape[0]):       # every pod's MAC learned as the replay starts
                fdb_last[p] = ts[0]
        for i in range(n_rows):
            t = ts[i]
            iv = t // interval
            while meta[M_IV] < iv:                   # close intervals: emit, expire to the next start
                if timeline:
                    _emit(occ, iv_peak, iv_new, iv_drops, iv_floods, iv_bin, iv_bout, iv_npeak, iv_nover,
                          tl_t, tl_node, tl_entries, tl_new, tl_drops, tl_floods, tl_bin, tl_bout, tl_nentries,
                          tl_nover, meta, interval)
                meta[M_IV] += 1
                start = meta[M_IV] * interval
                _ct_expire(c_exp, c_node, c_hnext, c_lprev, c_lnext, c_state, c_free, c_heads, occ, lhead, ltail,
                           start)
                _nb_expire(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, meta,
                           start)
                for n in range(occ.shape[0]):
                    iv_peak[n] = occ[n]
                    iv_npeak[n] = nocc[n]
            _ct_expire(c_exp, c_node, c_hnext, c_lprev, c_lnext, c_state, c_free, c_heads, occ, lhead, ltail, t)
            _nb_expire(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, meta, t)
            v = verdict[i]
            pa_ = path[i]
            if pa_ == LOOPBACK:
                continue
            sn = np.int64(src_node[i])
            dn = np.int64(dst_node[i])
            pr = np.int64(proto[i])
            tcp = pr == 6 or pr == 132
            d = np.int64(-1)
            if has_duration:
                x = duration[i]
                if x == x:                           # not NaN
                    d = np.int64(x * 1e9 + 0.5)
            if d < 0:
                d = dflt_ns[0] if tcp else (dflt_ns[1] if pr == 17 else dflt_ns[2])
            # what the connection leaves in the tables of the nodes that see it
            both = False                             # client's node and the far node
            one = False                              # the client's node only
            if v == DELIVERED or v == REFUSED:
                one = sn >= 0
                both = one and dn >= 0 and dn != sn
            elif v == EGRESS:
                one = sn >= 0
            elif (v == DROPPED or v == DENIED) and sn >= 0 and dn >= 0 and dn != sn:
                one = True                           # left the client's node, dropped on the far one
            if one:
                if v == DELIVERED or v == EGRESS:
                    if tcp:
                        expiry = t + d + tw
                        assured_at = t               # established
                    elif pr == 17:
                        if d >= stream_after:
                            expiry = t + d + udp_stream
                            assured_at = t + stream_after
                        else:
                            expiry = t + d + udp
                            assured_at = _I64_MAX
                    else:
                        expiry = t + d + generic
                        assured_at = _I64_MAX
                elif v == REFUSED:
                    expiry = t + (close if tcp else (udp if pr == 17 else generic))
                    assured_at = _I64_MAX
                else:
                    expiry = t + (syn if tcp else (udp if pr == 17 else generic))
                    assured_at = _I64_MAX
                h = flow_hash(key, src_ip[i], dst_ip[i], src_port[i], dst_port[i], proto[i])
                kind = src_kind[i]
                src_part = 2 if kind == 0 else (0 if kind == 1 else 1)
                b = np.uint32((np.uint64(h) * np.uint64(buckets[sn])) >> np.uint64(32))
                mine = _ct_insert(c_exp, c_assured, c_node, c_bucket, c_hnext, c_lprev, c_lnext, c_state, c_free,
                                  c_heads, mx, buckets, occ, lhead, ltail, new, iv_new, iv_peak, peak, sn, t,
                                  expiry, assured_at, b)
                if mine < 0:
                    drops[sn] += 1
                    iv_drops[sn] += 1
                    verdict[i] = DROPPED
                    reason[i] = R_CONNTRACK_FULL
                    path[i] = NONE
                    dst_node[i] = -1
                    dst_pod[i] = -1
                    hops[i] = src_part
                    dn = -1
                    both = False
                    v = DROPPED
                elif both:
                    b = np.uint32((np.uint64(h) * np.uint64(buckets[dn])) >> np.uint64(32))
                    if _ct_insert(c_exp, c_assured, c_node, c_bucket, c_hnext, c_lprev, c_lnext, c_state, c_free,
                                  c_heads, mx, buckets, occ, lhead, ltail, new, iv_new, iv_peak, peak, dn, t,
                                  expiry, assured_at, b) < 0:
                        drops[dn] += 1
                        iv_drops[dn] += 1
                        verdict[i] = DROPPED
                        reason[i] = R_CONNTRACK_FULL
                        path[i] = NONE
                        dst_pod[i] = -1
                        hops[i] = src_part + (1 if kind == 2 else 2)
                        v = DROPPED
                        # the client's entry stays, unanswered: its record is retired and a new one filed
                        c_state[mine] = _DEAD
                        occ[sn] -= 1
                        if c_lprev[mine] != -2:
                            _list_unlink(c_lprev, c_lnext, lhead, ltail, sn, mine)
                        lost = t + (syn if tcp else (udp if pr == 17 else generic))
                        b = np.uint32((np.uint64(h) * np.uint64(buckets[sn])) >> np.uint64(32))
                        _ct_insert(c_exp, c_assured, c_node, c_bucket, c_hnext, c_lprev, c_lnext, c_state, c_free,
                                   c_heads, mx, buckets, occ, lhead, ltail, new, iv_new, iv_peak, peak, sn, t,
                                   lost, _I64_MAX, b)
                        new[sn] -= 1
                        iv_new[sn] -= 1
            # bytes: out of the client's node, into the far node (interval of the first packet)
            if has_bytes and (v == DELIVERED or v == EGRESS):
                if sn >= 0:
                    iv_bout[sn] += nbytes[i]
                if dn >= 0 and dn != sn:
                    iv_bin[dn] += nbytes[i]
            # the bridge FDB: the client pod's MAC is heard, then the frame to the destination pod
            alive = t + d if (v == DELIVERED or v == EGRESS) else t
            sp = np.int64(src_pod[i])
            if src_kind[i] == 0 and sp >= 0:
                if alive > fdb_last[sp]:
                    fdb_last[sp] = alive
            dp = np.int64(dst_pod[i])
            if (v == DELIVERED or v == REFUSED) and dp >= 0 and pod_bridged[dp] != 0 and \
                    (pa_ == BRIDGE or pa_ == ROUTED or pa_ == EXTERNAL):
                pn = np.int64(pod_node[dp])
                if t > fdb_last[dp] + fdb_age:
                    floods[pn] += 1
                    iv_floods[pn] += 1
                if alive > fdb_last[dp]:
                    fdb_last[dp] = alive
                # the node's neighbour entry for its pod (pod -> pod on one bridge: the pod's own table)
                if pa_ != BRIDGE or src_kind[i] != 0:
                    _nb_use(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, nover,
                            iv_nover, iv_npeak, npeak, meta, pn, dnat_ip[i], t, nb_life)
            # neighbour entries between nodes (next hop, and the answer back), and to the gateway
            if sn >= 0:
                if dn >= 0 and dn != sn and (v == DELIVERED or v == REFUSED or v == DROPPED or v == DENIED):
                    _nb_use(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, nover,
                            iv_nover, iv_npeak, npeak, meta, sn, node_ip[dn], t, nb_life)
                    if v == DELIVERED or v == REFUSED:
                        _nb_use(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc,
                                nover, iv_nover, iv_npeak, npeak, meta, dn, node_ip[sn], t, nb_life)
                if v == EGRESS or (src_kind[i] == 2 and (v == DELIVERED or v == REFUSED)):
                    _nb_use(b_key, b_exp, b_hkey, b_node, b_hnext, b_free, b_heads, ix_key, ix_val, nocc, nover,
                            iv_nover, iv_npeak, npeak, meta, sn, 0, t, nb_life)   # the default gateway


# --------------------------------------------------------------------------- the stage

@dataclass
class NodeState:
    """One node's conntrack figures over a replay."""

    conntrack_peak: int
    conntrack_max: int
    conntrack_drops: int
    fdb_floods: int
    neigh_peak: int
    neigh_overflows: int


class ConntrackStage:
    """Conntrack, FDB and neighbour state of every node through a timed replay.

    Parameters
    ----------
    dp
        The compiled :class:`fastpath.pipeline.DataPlane` (its cluster and tables).
    conntrack_max
        Every node's table size; ``None``: kube-proxy's formula over each
        Node's ``status.capacity.cpu`` (:func:`conntrack_max`).
    interval
        Timeline interval, seconds.
    default_duration
        Seconds a TCP or SCTP connection lives where the trace gives no
        ``duration`` (UDP: :data:`UDP_DEFAULT_DURATION`; other protocols: this).
    timeline
        Keep one row per node and interval (:meth:`timeline_table`).
    seed
        Seed of the bucket hash.
    """

    def __init__(self, dp, *, conntrack_max: int | None = None, interval: float = 1.0,
                 default_duration: float = 30.0, timeline: bool = False, seed: int = 0) -> None:
        if not (isinstance(interval, (int, float)) and np.isfinite(interval) and interval > 0):
            raise FastpathError(f"--interval {interval!r}: must be a positive number of seconds")
        if conntrack_max is not None and (int(conntrack_max) < 1 or int(conntrack_max) > (1 << 31) - 1):
            raise FastpathError(f"--conntrack-max {conntrack_max!r}: must be between 1 and 2**31-1")
        if not (np.isfinite(default_duration) and default_duration >= 0):
            raise FastpathError(f"default duration {default_duration!r}: must be >= 0 seconds")
        cluster = dp.cluster
        t = dp.tables
        self.node_names = list(t.node_names)
        n = len(self.node_names)
        self.node_cpu = [getattr(node, "cpu", None) for node in cluster.nodes]
        if conntrack_max is not None:
            mx = np.full(n, int(conntrack_max), np.int64)
        else:
            mx = np.array([conntrack_max_of(c) for c in self.node_cpu], dtype=np.int64)
        self.interval_ns = int(round(interval * NS))
        if self.interval_ns < 1:
            raise FastpathError(f"--interval {interval!r}: shorter than a nanosecond")
        self.timeline = bool(timeline)
        self.default_ns = np.array([round(default_duration * NS), round(UDP_DEFAULT_DURATION * NS),
                                    round(default_duration * NS)], dtype=np.int64)
        self.params = (np.int64(self.interval_ns), np.uint64(seed_key(seed, SALT_CONNTRACK)),
                       *(np.int64(TIMEOUTS[k] * NS) for k in ("tcp_time_wait", "tcp_syn_sent", "tcp_close", "udp",
                                                               "udp_stream", "generic")),
                       np.int64(UDP_STREAM_AFTER * NS), np.int64(FDB_AGEING * NS), np.int64(NEIGH_LIFETIME * NS))
        self.node_ip = np.ascontiguousarray(t.node_ip, dtype=np.uint32)
        self.pod_node = np.ascontiguousarray(t.pod_node, dtype=np.int32)
        kept = getattr(cluster, "cached_pod_bridged", None)   # fastpath.cache: without loading the pods
        self.pod_bridged = kept.copy() if kept is not None else \
            np.array([(not p.host_network) and p.ip is not None and p.node is not None
                      for p in cluster.pods], dtype=np.uint8)
        if self.pod_bridged.shape[0] != self.pod_node.shape[0]:
            self.pod_bridged = (self.pod_node >= 0).astype(np.uint8)
        self.fdb_last = np.zeros(self.pod_node.shape[0], np.int64)
        z = lambda dt=np.int64: np.zeros(n, dt)  # noqa: E731
        self.N = NodeArrays(max=mx, buckets=np.array([bucket_count(m) for m in mx], dtype=np.int64),
                            occ=z(), lhead=np.full(n, -1, np.int32), ltail=np.full(n, -1, np.int32), nocc=z(),
                            iv_peak=z(), iv_new=z(), iv_drops=z(), iv_floods=z(), iv_bin=z(np.uint64),
                            iv_bout=z(np.uint64), iv_npeak=z(), iv_nover=z(),
                            peak=z(), drops=z(), floods=z(), npeak=z(), nover=z(), new=z())
        self.C = self._ct_pool(1024)
        self.B = self._nb_pool(1024)
        self.meta = np.zeros(8, np.int64)
        self._rows: list[TlArrays] = []

    # ------------------------------------------------------------------ pools
    @staticmethod
    def _heads() -> np.ndarray:
        h = np.full(_RH_BOUND + 1, -1, np.int64)
        h[_RH_LAST] = 0
        h[_RH_BOUND] = _I64_MAX
        return h

    @classmethod
    def _ct_pool(cls, cap: int, old: CtArrays | None = None) -> CtArrays:
        C = CtArrays(exp=np.zeros(cap, np.int64), assured=np.zeros(cap, np.int64), node=np.zeros(cap, np.int32),
                     bucket=np.zeros(cap, np.uint32), hnext=np.full(cap, -1, np.int32),
                     lprev=np.full(cap, -2, np.int32), lnext=np.full(cap, -2, np.int32),
                     state=np.zeros(cap, np.uint8), free=np.zeros(cap + 1, np.int32), heads=cls._heads())
        start = 0
        if old is not None:
            k = old.exp.shape[0]
            for a, b in zip(C[:8], old[:8]):
                a[:k] = b
            C.heads[:] = old.heads
            nfree = int(old.free[0])
            C.free[1:nfree + 1] = old.free[1:nfree + 1]
            C.free[0] = nfree
            start = k
        fresh = np.arange(cap - 1, start - 1, -1, dtype=np.int32)
        C.free[int(C.free[0]) + 1:int(C.free[0]) + 1 + fresh.size] = fresh
        C.free[0] += fresh.size
        return C

    @classmethod
    def _nb_pool(cls, cap: int, old: NbArrays | None = None) -> NbArrays:
        B = NbArrays(key=np.zeros(cap, np.uint64), exp=np.zeros(cap, np.int64), hkey=np.zeros(cap, np.int64),
                     node=np.zeros(cap, np.int32), hnext=np.full(cap, -1, np.int32), free=np.zeros(cap + 1, np.int32),
                     heads=cls._heads(), ix_key=np.full(4 * cap, 0xFFFFFFFFFFFFFFFF, np.uint64),
                     ix_val=np.zeros(4 * cap, np.int32))
        start = 0
        if old is not None:
            k = old.key.shape[0]
            for a, b in zip(B[:5], old[:5]):
                a[:k] = b
            B.heads[:] = old.heads
            nfree = int(old.free[0])
            B.free[1:nfree + 1] = old.free[1:nfree + 1]
            B.free[0] = nfree
            start = k
            _reindex(old.ix_key, old.ix_val, B.ix_key, B.ix_val)
        fresh = np.arange(cap - 1, start - 1, -1, dtype=np.int32)
        B.free[int(B.free[0]) + 1:int(B.free[0]) + 1 + fresh.size] = fresh
        B.free[0] += fresh.size
        return B

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` more flows: three conntrack records and three neighbour records each."""
        need = 3 * rows
        if int(self.C.free[0]) < need:
            cap = self.C.exp.shape[0]
            while cap - (self.C.exp.shape[0] - int(self.C.free[0])) < need:
                cap *= 2
            self.C = self._ct_pool(cap, self.C)
        need = 3 * rows
        if int(self.B.free[0]) < need:
            cap = self.B.key.shape[0]
            while cap - (self.B.key.shape[0] - int(self.B.free[0])) < need:
                cap *= 2
            self.B = self._nb_pool(cap, self.B)

    def _timeline_out(self, intervals: int) -> TlArrays:
        rows = max(0, intervals) * len(self.node_names) if self.timeline else 0
        return TlArrays(t=np.empty(rows, np.int64), node=np.empty(rows, np.int32), entries=np.empty(rows, np.int64),
                        new=np.empty(rows, np.int64), drops=np.empty(rows, np.int64),
                        floods=np.empty(rows, np.int64), bin=np.empty(rows, np.uint64),
                        bout=np.empty(rows, np.uint64), nentries=np.empty(rows, np.int64),
                        nover=np.empty(rows, np.int64))

    def _keep(self, T: TlArrays) -> None:
        k = int(self.meta[M_ROWS])
        self.meta[M_ROWS] = 0
        if k:
            self._rows.append(TlArrays(*(a[:k] for a in T)))

    # ------------------------------------------------------------------ running
    def run(self, flows, r) -> None:
        """Track one batch of resolved flows (``r``: :class:`fastpath.pipeline.Results`), in place.

        Rows must come in time order across calls. A batch without ``ts``
        is left alone (conntrack needs time).
        """
        if flows.ts is None or flows.n == 0:
            return
        n = flows.n
        if len(r) != n:                              # a reused buffer longer than the batch: its first rows
            r = type(r)(**{k: v[:n] for k, v in vars(r).items()})
        self._reserve(n)
        ts = flows.ts
        first_iv = int(ts[0]) // self.interval_ns if self.meta[M_STARTED] == 0 else int(self.meta[M_IV])
        T = self._timeline_out(int(ts[-1]) // self.interval_ns - first_iv)
        dur = flows.duration
        has_dur = dur is not None
        nb = flows.bytes
        # every input column read-only (as Arrow's are) and of one dtype: one specialization
        ro = read_only
        _track(self.C, self.B, self.N, T, self.meta, self.params, ro(np.asarray(ts, np.int64)),
               ro(np.asarray(flows.proto, np.uint8)), ro(np.asarray(flows.src_ip, np.uint32)),
               ro(np.asarray(_dst_of(flows, r), np.uint32)), ro(np.asarray(flows.src_port, np.uint16)),
               ro(np.asarray(flows.dst_port, np.uint16)),
               ro(np.asarray(dur, np.float64) if has_dur else _NO_DURATION), has_dur, np.int64(self.default_ns),
               ro(np.asarray(nb, np.uint64)) if nb is not None else _NO_BYTES, nb is not None,
               r.verdict, r.reason, r.path, r.src_node, r.dst_node, r.src_pod, r.dst_pod, r.src_kind, r.hops,
               r.dnat_ip, self.node_ip, self.pod_node, self.pod_bridged, self.fdb_last, self.timeline, False)
        self._keep(T)

    def finish(self) -> None:
        """Close the last interval (its timeline rows). Call once, after the last batch."""
        T = self._timeline_out(1)
        ro = read_only                               # the same argument types as run(): one specialization
        _track(self.C, self.B, self.N, T, self.meta, self.params, ro(np.zeros(0, np.int64)),
               ro(np.zeros(0, np.uint8)), ro(np.zeros(0, np.uint32)), ro(np.zeros(0, np.uint32)),
               ro(np.zeros(0, np.uint16)), ro(np.zeros(0, np.uint16)), _NO_DURATION, False,
               np.int64(self.default_ns), _NO_BYTES, False, np.zeros(0, np.uint8), np.zeros(0, np.uint8),
               np.zeros(0, np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32),
               np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.uint32),
               self.node_ip, self.pod_node, self.pod_bridged, self.fdb_last, self.timeline, True)
        self._keep(T)

    # ------------------------------------------------------------------ reading
    @property
    def started(self) -> bool:
        return bool(self.meta[M_STARTED])

    def occupancy(self, node: int) -> int:
        """Live conntrack entries of ``node`` now (after the last flow tracked)."""
        return int(self.N.occ[node])

    def node_states(self) -> dict[str, NodeState]:
        """Per node: peak and max, drops, FDB floods, neighbour peak and overflows."""
        N = self.N
        return {name: NodeState(int(N.peak[i]), int(N.max[i]), int(N.drops[i]), int(N.floods[i]),
                                int(N.npeak[i]), int(N.nover[i]))
                for i, name in enumerate(self.node_names)}

    def summary(self) -> dict:
        """The replay summary's keys: ``conntrack_drops``, ``fdb_floods``, ``neigh_overflows``, ``nodes``."""
        N = self.N
        return {
            "conntrack_drops": int(N.drops.sum()), "fdb_floods": int(N.floods.sum()),
            "neigh_overflows": int(N.nover.sum()),
            "nodes": {name: {"conntrack_peak": s.conntrack_peak, "conntrack_max": s.conntrack_max,
                             "conntrack_drops": s.conntrack_drops, "fdb_floods": s.fdb_floods,
                             "neigh_peak": s.neigh_peak, "neigh_overflows": s.neigh_overflows}
                      for name, s in self.node_states().items()},
        }

    def timeline_table(self) -> pa.Table:
        """The timeline (``--timeline``): one row per node and interval, in time then node order."""
        cols = TlArrays(*(np.concatenate([getattr(r, f) for r in self._rows]) if self._rows
                          else np.zeros(0, getattr(self._timeline_out(0), f).dtype) for f in TlArrays._fields))
        names = pa.array(self.node_names, pa.string())
        idx = cols.node
        return pa.table({
            "t": pa.array(cols.t, pa.timestamp("ns")),
            "node": pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), names),
            "conntrack_entries": pa.array(cols.entries),
            "conntrack_max": pa.array(self.N.max[idx] if idx.size else np.zeros(0, np.int64)),
            "new_connections": pa.array(cols.new),
            "drops": pa.array(cols.drops),
            "fdb_floods": pa.array(cols.floods),
            "bytes_in": pa.array(cols.bin),
            "bytes_out": pa.array(cols.bout),
            "neigh_entries": pa.array(cols.nentries),
            "neigh_overflows": pa.array(cols.nover),
        })


#: Placeholders for a trace without ``duration`` or ``bytes`` (read-only, like the columns).
_NO_DURATION = read_only(np.zeros(1, np.float64))
_NO_BYTES = read_only(np.zeros(1, np.uint64))

#: Seconds a UDP exchange lives where the trace gives no ``duration``: a query and its answer.
UDP_DEFAULT_DURATION = 0.0


def conntrack_max_of(cpu: int | None) -> int:
    """Alias of :func:`conntrack_max` (the stage's per-node sizing)."""
    return conntrack_max(cpu)


@jit
def _reindex(ok, ov, nk, nv):
    mask = nk.shape[0] - 1
    for i in range(ok.shape[0]):
        k = ok[i]
        if k != np.uint64(0xFFFFFFFFFFFFFFFF):
            j = _ix_slot(k, mask)
            while nk[j] != np.uint64(0xFFFFFFFFFFFFFFFF):
                j = (j + 1) & mask
            nk[j] = k
            nv[j] = ov[i]


def _dst_of(flows, r) -> np.ndarray:
    """The destination the client addressed (the DNS answer for ``dst_name`` rows: the pre-DNAT address
    is not kept, so those rows hash on the address after DNAT)."""
    if flows.name_code is None:
        return flows.dst_ip
    return np.where(flows.name_code >= 0, r.dnat_ip, flows.dst_ip).astype(np.uint32)


# --------------------------------------------------------------------------- explain

def explain_conntrack(stage: ConntrackStage | None, proto: int, verdict: int, src_node: int, dst_node: int,
                      duration: float | None = None, default_duration: float = 30.0) -> list[str]:
    """What a connection leaves in the conntrack tables, as lines of text (``fastpath explain``)."""
    names = stage.node_names if stage is not None else None
    tcp = proto in _TCPLIKE
    d = duration if duration is not None else (default_duration if proto != 17 else UDP_DEFAULT_DURATION)
    lines = []
    if verdict in (DELIVERED, EGRESS):
        if tcp:
            life, state = d + TIMEOUTS["tcp_time_wait"], "ASSURED once established; TIME_WAIT 120 s after close"
        elif proto == 17 and d >= UDP_STREAM_AFTER:
            life, state = d + TIMEOUTS["udp_stream"], "a UDP stream: ASSURED 2 s in; 120 s after its last packet"
        elif proto == 17:
            life, state = d + TIMEOUTS["udp"], "one-shot UDP: never ASSURED (evictable); 30 s after its last packet"
        else:
            life, state = d + TIMEOUTS["generic"], "generic protocol: 600 s after its last packet"
    elif verdict == REFUSED:
        life = TIMEOUTS["tcp_close"] if tcp else TIMEOUTS["udp"]
        state = "refused: RST, CLOSE for 10 s" if tcp else "refused: ICMP port unreachable, 30 s unreplied"
    elif verdict in (DROPPED, DENIED) and src_node >= 0 and dst_node >= 0 and dst_node != src_node:
        life = TIMEOUTS["tcp_syn_sent"] if tcp else TIMEOUTS["udp"]
        state = "no answer from the far node: SYN_SENT 120 s" if tcp else "no answer: 30 s unreplied"
        dst_node = -1
    else:
        return ["conntrack: no entry (the packet never left the client's node, or stayed inside a pod)"]
    where = [n for n in (src_node, dst_node) if n >= 0]
    where = list(dict.fromkeys(where))
    for n in where:
        name = names[n] if names else str(n)
        size = f" (table {stage.occupancy(n):,} of {int(stage.N.max[n]):,})" if stage is not None else ""
        lines.append(f"conntrack: an entry on node {name}{size} for {life:g} s ({state})")
    return lines


# --------------------------------------------------------------------------- the replay's hook

#: ``replay()`` keywords this stage takes (the rest go to the service map compiler).
REPLAY_OPTIONS = ("conntrack", "conntrack_max", "interval", "timeline")


def pop_replay_options(opts: dict) -> dict:
    """Take this stage's keywords out of ``replay()``'s ``**service_opts``."""
    return {k: opts.pop(k) for k in REPLAY_OPTIONS if k in opts}


class ReplayConntrack:
    """The stage as :func:`fastpath.replay.replay` drives it: after every batch is resolved,
    on the resolving thread, in trace order; the timeline written at the end.

    Built by :meth:`start`, which returns ``None`` where there is nothing to track:
    ``conntrack=False`` (``--no-conntrack``), or a trace without ``ts`` (time is
    needed; the flows are then resolved as before, without state).
    """

    def __init__(self, stage: ConntrackStage, timeline) -> None:
        self.stage = stage
        self.timeline = timeline

    @classmethod
    def start(cls, dp, reader, opts: dict) -> "ReplayConntrack | None":
        from pathlib import Path

        timeline = opts.get("timeline")
        timed = "ts" in reader.schema.names
        if timeline is not None and (not timed or not opts.get("conntrack", True)):
            why = "the trace has no 'ts' column" if not timed else "--no-conntrack was given"
            raise FastpathError(f"--timeline {timeline}: no timeline to write ({why})")
        if not opts.get("conntrack", True) or not timed:
            return None
        if timeline is not None:
            timeline = Path(timeline)
            if not timeline.parent.is_dir():
                raise FastpathError(f"{timeline}: folder {timeline.parent} does not exist")
        stage = ConntrackStage(dp, conntrack_max=opts.get("conntrack_max"), interval=opts.get("interval", 1.0),
                               default_duration=getattr(dp.services, "conn_duration", 30.0),
                               timeline=timeline is not None, seed=getattr(dp, "seed", 0))
        return cls(stage, timeline)

    def wrap(self, resolve):
        """``resolve(flows, out=None) -> Results`` followed by this stage."""
        def resolved(flows, out=None):
            r = resolve(flows, out=out)
            self.stage.run(flows, r)
            return r
        return resolved

    def warm(self, flows, r) -> None:
        """Compile the kernel on a few rows, on a throwaway copy of the stage (the real one stays fresh)."""
        import copy

        throwaway = copy.deepcopy(self.stage)
        throwaway.run(flows, Results_copy(r))
        throwaway.finish()

    def finish(self) -> None:
        """Close the last interval; write the timeline (whole or not at all)."""
        import os

        self.stage.finish()
        if self.timeline is None:
            return
        table = self.stage.timeline_table()
        tmp = self.timeline.with_name(f".{self.timeline.name}.{os.getpid()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, self.timeline)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def summary_fields(self) -> dict:
        """``Summary`` keywords: conntrack_drops, fdb_floods, neigh_overflows, nodes."""
        return self.stage.summary()


def Results_copy(r):  # noqa: N802 -- a copy of a Results (the warm-up must not touch the real rows)
    return type(r)(**{k: np.array(v, copy=True) for k, v in vars(r).items()})


def render_nodes(nodes: dict, drops: int, floods: int, overflows: int = 0):
    """A rich table: one line per node class (nodes of one table size), peak occupancy against max."""
    from rich.table import Table

    classes: dict[int, list] = {}
    for name, s in nodes.items():
        classes.setdefault(s["conntrack_max"], []).append((name, s))
    t = Table(title="conntrack, FDB and neighbour tables by node class", title_justify="left",
              caption=f"conntrack-full drops {drops:,}, FDB floods {floods:,}, neighbour overflows {overflows:,}",
              caption_justify="left")
    for col in ("node class (table size)", "nodes", "fullest node", "peak / max", "drops", "FDB floods",
                "neigh peak", "neigh overflows"):
        t.add_column(col, justify="left" if col.startswith(("node class", "fullest")) else "right")
    for mx in sorted(classes):
        members = classes[mx]
        name, top = max(members, key=lambda m: m[1]["conntrack_peak"])
        t.add_row(f"max {mx:,}", f"{len(members):,}", name,
                  f"{top['conntrack_peak']:,} / {mx:,} ({top['conntrack_peak'] / mx:.1%})",
                  f"{sum(s['conntrack_drops'] for _, s in members):,}",
                  f"{sum(s.get('fdb_floods', 0) for _, s in members):,}",
                  f"{max(s.get('neigh_peak', 0) for _, s in members):,}",
                  f"{sum(s.get('neigh_overflows', 0) for _, s in members):,}")
    return t
