"""Balancer state: round-robin counters, least-connection counts and open connections, affinities.

The stateful balancers' memory between flows (and batches), in flat arrays the
sequential stage kernels of :mod:`fastpath.tables.balancers` read and write:
counters per (node, service port) and (node, endpoint), the open connections
of least-connection by their end time, and the ClientIP affinity table, keyed by
(service port, node, client IP): each node's kube-proxy keeps its own affinity entries
(:func:`affinity_key`).

Connections live their own ``duration``, so they need not end in the order
they started; most do (one default lifetime for all, or durations shorter than
the gaps between starts), so a connection that ends no earlier than the last
one queued goes to a FIFO ring (O(1)), and only the others to a binary
min-heap; retiring takes the earlier of the two heads.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .._jit import jit
from ..errors import FastpathError
from .exact import EMPTY, ht_place, pack2, pack2_np

#: Balancer names, indexed by their code.
BALANCERS = ("random", "round-robin", "source-hash", "maglev", "least-connection")
LB_RANDOM, LB_ROUND_ROBIN, LB_SOURCE_HASH, LB_MAGLEV, LB_LEAST_CONN = range(5)

#: Largest node x column counter array kept dense (int64: 256 MiB); beyond, a hash table.
DENSE_LIMIT = 1 << 25

#: Balancer state the sequential kernel reads and writes (see :class:`BalancerState`).
StateArrays = namedtuple("StateArrays", [
    "rr_dense",                    # int64[nodes, S] round-robin counters, or [0, 0]: use the hash table
    "rr_keys", "rr_vals",          # pack2(node, sp) -> [counter]
    "lc_dense",                    # int64[nodes, E] active connections, or [0, 0]: use the hash table
    "lc_keys", "lc_vals",          # pack2(node, endpoint) -> [active connections]
    "aff_keys", "aff_vals",        # affinity_key(sp, node, nodes, client ip) -> [endpoint, last use ns]
    "conn_end", "conn_key",        # [2, cap] open connections by end ns: row 0 a FIFO ring, row 1 a min-heap
    "meta",                        # i64: rr used, lc used, aff used, FIFO head, FIFO count, heap count
])
_RR_USED, _LC_USED, _AFF_USED, _FIFO_HEAD, _FIFO_COUNT, _HEAP_COUNT = range(6)


# --------------------------------------------------------------------------- affinity keys

@jit(inline="always")
def affinity_key(sp, node, n_nodes, client):
    """The ClientIP-affinity key of (service port, node, client IP): ``(sp * n_nodes + node) << 32 | client``.

    ``node`` is the node whose kube-proxy DNATs the flow (the one whose round-robin and
    least-connection counters it uses): kube-proxy keeps affinity in each node's own kernel
    (iptables' ``recent`` lists, IPVS persistence templates, nftables maps), so an external
    client arriving at two nodes has an entry on each. One-to-one while ``S * n_nodes`` fits 32
    bits (:func:`check_affinity_keys`), and never the table's empty key ``EMPTY``.
    """
    return pack2(np.uint64(sp) * np.uint64(n_nodes) + np.uint64(node), client)


def affinity_keys_np(sp: np.ndarray, node: np.ndarray, n_nodes: int, client: np.ndarray) -> np.ndarray:
    """Vectorized :func:`affinity_key`."""
    return pack2_np(np.asarray(sp, np.uint64) * np.uint64(n_nodes) + np.asarray(node, np.uint64), client)


def check_affinity_keys(n_sp: int, n_nodes: int) -> None:
    """Refuse a map whose (service port, node) pairs do not fit the affinity key's 32 bits."""
    if n_sp * n_nodes >= 1 << 32:
        raise FastpathError(f"{n_sp} service ports x {n_nodes} nodes exceed the 2^32 (service port, node) "
                            f"pairs the ClientIP-affinity table can key")


# --------------------------------------------------------------------------- state tables

@jit
def _rehash(old_keys, old_vals, new_keys, new_vals):
    for i in range(old_keys.shape[0]):
        k = old_keys[i]
        if k != np.uint64(0xFFFFFFFFFFFFFFFF):
            j = ht_place(new_keys, k)
            new_keys[j] = k
            for c in range(old_vals.shape[1]):
                new_vals[j, c] = old_vals[i, c]


def _grown(keys: np.ndarray, vals: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """The table, re-hashed into a capacity of at least ``2 * need`` if it has less."""
    cap = keys.shape[0]
    if cap >= 2 * need:
        return keys, vals
    while cap < 2 * need:
        cap *= 2
    nk = np.full(cap, EMPTY, dtype=np.uint64)
    nv = np.zeros((cap, vals.shape[1]), dtype=np.int64)
    _rehash(keys, vals, nk, nv)
    return nk, nv


class BalancerState:
    """Round-robin counters, least-connection counts and open connections, and the affinity table.

    Counters per (node, service port) and (node, endpoint) live in a dense
    ``[nodes, columns]`` array when it has at most :data:`DENSE_LIMIT` cells
    (pass its shape), else in an open-addressing table. The tables are flat
    arrays (keys ``uint64``, values ``int64[cap, w]``), grown between kernel
    calls so each call has room for every flow it may add.
    """

    def __init__(self, rr_shape: tuple[int, int] = (0, 0), lc_shape: tuple[int, int] = (0, 0)) -> None:
        def dense(shape):
            return np.zeros(shape if 0 < shape[0] * shape[1] <= DENSE_LIMIT else (0, 0), np.int64)

        self.arrays = StateArrays(
            rr_dense=dense(rr_shape),
            rr_keys=np.full(8, EMPTY, np.uint64), rr_vals=np.zeros((8, 1), np.int64),
            lc_dense=dense(lc_shape),
            lc_keys=np.full(8, EMPTY, np.uint64), lc_vals=np.zeros((8, 1), np.int64),
            aff_keys=np.full(8, EMPTY, np.uint64), aff_vals=np.zeros((8, 2), np.int64),
            conn_end=np.zeros((2, 8), np.int64), conn_key=np.zeros((2, 8), np.uint64),
            meta=np.zeros(8, np.int64),
        )

    def reserve(self, rows: int, lb: int, affinity: bool, timed: bool) -> None:
        """Make room for ``rows`` more flows in the tables balancer ``lb`` (and affinity) will write."""
        a = self.arrays
        m = a.meta
        rr_k, rr_v, lc_k, lc_v = a.rr_keys, a.rr_vals, a.lc_keys, a.lc_vals
        af_k, af_v = a.aff_keys, a.aff_vals
        if lb == LB_ROUND_ROBIN and a.rr_dense.shape[0] == 0:
            rr_k, rr_v = _grown(rr_k, rr_v, int(m[_RR_USED]) + rows)
        if lb == LB_LEAST_CONN and a.lc_dense.shape[0] == 0:
            lc_k, lc_v = _grown(lc_k, lc_v, int(m[_LC_USED]) + rows)
        if affinity:
            af_k, af_v = _grown(af_k, af_v, int(m[_AFF_USED]) + rows)
        ce, ck = a.conn_end, a.conn_key
        fifo, heap = int(m[_FIFO_COUNT]), int(m[_HEAP_COUNT])
        if lb == LB_LEAST_CONN and timed and ce.shape[1] < max(fifo, heap) + rows:
            cap = ce.shape[1]
            while cap < max(fifo, heap) + rows:
                cap *= 2
            ce2 = np.zeros((2, cap), np.int64)
            ck2 = np.zeros((2, cap), np.uint64)
            order = (int(m[_FIFO_HEAD]) + np.arange(fifo)) % ce.shape[1]
            ce2[0, :fifo] = ce[0, order]               # the ring, unrolled from its head
            ck2[0, :fifo] = ck[0, order]
            m[_FIFO_HEAD] = 0
            ce2[1, :heap] = ce[1, :heap]               # a heap stays a heap in a longer array
            ck2[1, :heap] = ck[1, :heap]
            ce, ck = ce2, ck2
        self.arrays = StateArrays(a.rr_dense, rr_k, rr_v, a.lc_dense, lc_k, lc_v, af_k, af_v, ce, ck, m)

    def endpoints(self, n: int) -> None:
        """Room in the dense least-connection counters for endpoint indices below ``n`` (cluster events
        append endpoints): the columns double, or the counters move to the hash table past
        :data:`DENSE_LIMIT` cells."""
        a = self.arrays
        d = a.lc_dense
        if d.shape[0] == 0 or d.shape[1] >= n:
            return
        cols = max(n, 2 * d.shape[1])
        if d.shape[0] * cols <= DENSE_LIMIT:
            grown = np.zeros((d.shape[0], cols), np.int64)
            grown[:, :d.shape[1]] = d
            self.arrays = a._replace(lc_dense=grown)
            return
        rows, cols_nz = np.nonzero(d)
        keys = (rows.astype(np.uint64) << np.uint64(32)) | cols_nz.astype(np.uint64)
        lk, lv = _grown(np.full(8, EMPTY, np.uint64), np.zeros((8, 1), np.int64), max(1, keys.shape[0]))
        _rehash(keys, d[rows, cols_nz].reshape(-1, 1), lk, lv)
        a.meta[_LC_USED] = keys.shape[0]
        self.arrays = a._replace(lc_dense=np.zeros((0, 0), np.int64), lc_keys=lk, lc_vals=lv)

    def copy(self) -> "BalancerState":
        """An independent copy (explain works on one, so it never disturbs a replay)."""
        other = BalancerState.__new__(BalancerState)
        other.arrays = StateArrays(*(x.copy() for x in self.arrays))
        return other

    def active_connections(self, node: int, endpoint: int) -> int:
        """Open connections of ``node`` to ``endpoint`` (least-connection state)."""
        a = self.arrays
        return int(_count(a.lc_dense, a.lc_keys, a.lc_vals, node, endpoint))

    def rr_counter(self, node: int, sp: int) -> int:
        """Flows ``node`` has sent to service port ``sp`` by round-robin."""
        a = self.arrays
        return int(_count(a.rr_dense, a.rr_keys, a.rr_vals, node, sp))

    def affinity(self, sp: int, node: int, client: int, n_nodes: int) -> tuple[int, int] | None:
        """(endpoint, last use ns) that ``node`` (of ``n_nodes``) remembers for ``client`` on service port ``sp``
        (the last use is the end of the client's latest-ending connection through that node under it)."""
        a = self.arrays
        i = ht_place(a.aff_keys, affinity_key(sp, node, n_nodes, client))
        if a.aff_keys[i] == EMPTY:
            return None
        return int(a.aff_vals[i, 0]), int(a.aff_vals[i, 1])


@jit(inline="always")
def _count(dense, keys, vals, row, col):
    """Counter (row, col): from the dense array when there is one, else the hash table (0 if absent)."""
    if dense.shape[0] > 0:
        return dense[row, col]
    key = pack2(row, col)
    slot = ht_place(keys, key)
    return vals[slot, 0] if keys[slot] == key else np.int64(0)


@jit(inline="always")
def _add(dense, keys, vals, meta, used, row, col, delta):
    """Add ``delta`` to counter (row, col); returns the value before. ``meta[used]`` counts hash keys."""
    if dense.shape[0] > 0:
        old = dense[row, col]
        dense[row, col] = old + delta
        return old
    key = pack2(row, col)
    slot = ht_place(keys, key)
    if keys[slot] != key:
        keys[slot] = key
        vals[slot, 0] = 0
        meta[used] += 1
    old = vals[slot, 0]
    vals[slot, 0] = old + delta
    return old




@jit(inline="always")
def _retire(lc_dense, lc_keys, lc_vals, conn_end, conn_key, meta, t):
    """Close every connection that ended at or before ``t`` (least-connection), earliest first."""
    cap = conn_end.shape[1]
    head = meta[_FIFO_HEAD]
    count = meta[_FIFO_COUNT]
    heap = meta[_HEAP_COUNT]
    while True:
        if count > 0 and conn_end[0, head] <= t and (heap == 0 or conn_end[0, head] <= conn_end[1, 0]):
            key = conn_key[0, head]
            head = (head + 1) % cap
            count -= 1
        elif heap > 0 and conn_end[1, 0] <= t:
            key = conn_key[1, 0]
            heap -= 1
            _heap_pop(conn_end, conn_key, heap)
        else:
            break
        _add(lc_dense, lc_keys, lc_vals, meta, _LC_USED, np.int64(key >> np.uint64(32)),
             np.int64(key & np.uint64(0xFFFFFFFF)), -1)
    meta[_FIFO_HEAD] = head
    meta[_FIFO_COUNT] = count
    meta[_HEAP_COUNT] = heap


@jit(inline="always")
def _heap_pop(conn_end, conn_key, n):
    """Drop the heap's root (``n``: its size after): the last entry sifts down from there."""
    end = conn_end[1, n]
    k = conn_key[1, n]
    i = np.int64(0)
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and conn_end[1, c + 1] < conn_end[1, c]:
            c += 1
        if conn_end[1, c] >= end:
            break
        conn_end[1, i] = conn_end[1, c]
        conn_key[1, i] = conn_key[1, c]
        i = c
    conn_end[1, i] = end
    conn_key[1, i] = k


@jit(inline="always")
def _open(lc_dense, lc_keys, lc_vals, conn_end, conn_key, meta, node, ep, end, has_ts):
    """Count a new connection for least-connection (and file its end when timed)."""
    _add(lc_dense, lc_keys, lc_vals, meta, _LC_USED, node, ep, 1)
    if not has_ts:
        return
    key = pack2(node, ep)
    cap = conn_end.shape[1]
    count = meta[_FIFO_COUNT]
    last = (meta[_FIFO_HEAD] + count - 1) % cap
    if count == 0 or conn_end[0, last] <= end:     # in order: the FIFO
        tail = (meta[_FIFO_HEAD] + count) % cap
        conn_end[0, tail] = end
        conn_key[0, tail] = key
        meta[_FIFO_COUNT] = count + 1
        return
    i = meta[_HEAP_COUNT]                          # out of order: the heap, sifted up
    meta[_HEAP_COUNT] = i + 1
    while i > 0:
        parent = (i - 1) >> 1
        if conn_end[1, parent] <= end:
            break
        conn_end[1, i] = conn_end[1, parent]
        conn_key[1, i] = conn_key[1, parent]
        i = parent
    conn_end[1, i] = end
    conn_key[1, i] = key
