"""RouteTable: IPv4 longest-prefix match in a compressed multibit trie (Poptrie).

Why this structure
------------------
A DIR-24-8 table (DPDK ``rte_lpm``) answers most lookups with one read, but its
first level is 2^24 entries (32-64 MiB): every random lookup is a miss to DRAM.
fastpath follows Poptrie (Asai & Ohara, SIGCOMM 2015) instead:

* a direct-pointing first level on the top 20 bits (1,048,576 x 4 B = 4 MiB);
* below it, nodes of 64 children (6-bit strides: 20 + 6 + 6 = 32 bits), each node
  three words: a bit vector of which children are inner nodes, a bit vector
  marking where a run of equal leaves starts, and the two base indices. A
  child's position in the packed child or leaf array is a ``popcnt`` away, so
  a node never stores the 64 entries themselves.

Poptrie's paper prefers an 18-bit direct level (1 MiB) for Internet tables.
fastpath takes 20 bits because of the cluster tables it meets: with 20 + 6 a
Calico ``/26`` block ends at the first node level, as a node's ``/24`` does, so
every pod lookup is three dependent reads (direct entry, node, leaf), and no
lookup takes more than four. Destinations inside pod ranges touch only the few
KiB of the direct level that cover those ranges. On the RouteViews table with
uniformly random destinations (which touch all 4 MiB) the two layouts measured
within noise of each other on this project's machines (20 bits a little ahead);
the 18-bit layout made Calico lookups take a second node level and ran them at
about half the rate. The one cost: a table of node /24s measured 0–15% slower
with 20 bits (334 against 296–390 M/s), its first level's hot part being larger.
The whole 616k-prefix RouteViews table compiles to 6.6 MiB.

Plies for cluster tables
------------------------
A node costs two dependent reads (the node, then its leaf). Where a table's
first-level nodes have no inner child (every prefix below the direct level is
/26 or shorter: a node's /24 pod CIDR, Calico blocks without host routes), each
such node is written out as a plain ply of its 64 leaves, so a lookup is the
first-level entry and one ply entry. That doubled the 5,000-node /24 table's
rate (338 to ~680 M lookups/s on the AMD EPYC guest) for 0.7 MiB more; the flat
layout below now takes such tables further. Plies beside nodes are for tables
with a few longer prefixes: a table gets them only when it needs at most
:data:`PLY_BUDGET` of them (RouteViews would need hundreds of thousands) and at
most :data:`PLY_MIXED_SHARE` of its first-level nodes must stay nodes: lookups
that switch at random between a ply and a node mispredict a branch each time,
and a Calico table whose host routes kept a tenth of its nodes ran at half
speed with plies.

Flat tables and host routes
---------------------------
Where every first-level node can be a ply, the whole first level becomes plies:
each direct leaf points at a shared ply of 64 copies of its next hop, so an entry
is nothing but its ply's offset and a lookup is two reads with no branch. Calico
tables are /26 blocks plus /32 routes for pod addresses borrowed by another node;
those /32s would keep a tenth of the nodes. They go to a host table instead, a
perfect hash read next to the ply (not after it): a /32 is the longest match
there is, so a host-table hit is the answer and a miss leaves the ply's. A /20's
hosts share a displacement ``d`` kept in the spare top bits of its first-level
entry, and sit at ``(address ^ d) mod slots``; the build picks each /20's ``d``
so that no two hosts meet. The pick between the host and the ply is a select
(:func:`fastpath._jit.select_unpredictable`): as a branch it mispredicts on the
one lookup in ten that is a host, and LLVM makes it one unless told not to. On
the benchmark tables this runs the Calico table (20k blocks, 2k /32s) at ~460 M
lookups/s against ~220 with Poptrie nodes, and the /24 table at ~860 against
~660 with flagged plies. A table with prefixes of /27-/31, more than
:data:`HOST_BUDGET` host routes, more plies than :data:`PLY_BUDGET`, or hosts
too dense for the displacements keeps the layouts above; :attr:`RouteTable.layout`
says which a table got.

The lookup (:func:`lpm_get`) is written out for two node levels at most, with
first-level entries holding word offsets: no loop, no level counter, no
multiply, ~20 instructions on the node path. That alone took the /24 table from
338 to ~435 M/s and Calico from 188 to ~225.

The table is compiled from a flat list of disjoint address ranges (the same
list :meth:`RouteTable.to_ranges` returns), which also makes the build linear:
every node's children are visited in address order with one moving cursor.

Updates (:meth:`RouteTable.insert`, :meth:`RouteTable.delete`) change the prefix
set at once and recompile lazily at the next lookup; a full rebuild of the
RouteViews table takes well under a second, so a batch of updates costs one
rebuild.
"""
from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

from .._jit import chunk_bounds, jit, pjit, popcount64, select_unpredictable
from ..addr import cidrs_from_strings, format_cidr, parse_cidr
from ..errors import FastpathError

#: Next hop returned where no prefix matches.
MISS = np.uint32(0xFFFFFFFF)
#: Bits resolved by the direct-pointing first level.
_DIRECT_BITS = 20
#: Width of one node's stride.
_STRIDE = 6
# lpm_get is written out for this layout: at most two node levels below the direct one
assert _DIRECT_BITS + 2 * _STRIDE == 32
#: First-level entry flags: ``_DIRECT`` set: the low 30 bits (``_INDEX``) index
#: ``leaves``, a leaf when ``_PLY`` is clear, a 64-entry ply when set; ``_DIRECT``
#: clear: the entry is the node's word offset in ``nodes`` (3 words a node).
_DIRECT = 0x80000000
_PLY = 0x40000000
_INDEX = 0x3FFFFFFF
#: Most plies a table gets (x 256 B: 4 MiB); a table needing more keeps its nodes.
PLY_BUDGET = 1 << 14
#: A table gets plies only if at most this share of its first-level nodes must stay
#: nodes (those with deeper children): lookups switching between a ply and a node at
#: random mispredict a branch each time (a Calico table with 10% host-route nodes ran
#: half as fast with plies as without).
PLY_MIXED_SHARE = 1 / 32
#: Shift of the first node level's stride in the address.
_SHIFT1 = 32 - _DIRECT_BITS - _STRIDE
#: Flat layout: the low bits of a first-level entry hold its ply's offset in ``leaves``
#: (at most PLY_BUDGET plies of 64), the bits above the /20's host-table displacement.
_FLAT_DISP = 20
_FLAT_OFFSET = (1 << _FLAT_DISP) - 1
# (a displacement has as many bits as the address bits below a /20)
assert PLY_BUDGET * 64 <= _FLAT_OFFSET + 1 and 32 - _FLAT_DISP == 32 - _DIRECT_BITS
#: Most /32 host routes a flat table keeps in its host table; beyond, the table keeps nodes.
HOST_BUDGET = 1 << 15
#: Host-table slots, at least: the hosts of one /20 differ in their low 12 bits, so
#: with 4096 slots or more no displacement makes two of them meet.
_HOST_SLOTS_MIN = 1 << (32 - _DIRECT_BITS)
#: Host-table slots, at most (8 B each: 1 MiB).
_HOST_SLOTS_MAX = 1 << 17


# --------------------------------------------------------------------------- ranges

@jit
def _emit(starts, vals, m, pos, val):
    """Append range start ``pos`` with ``val``, merging equal neighbours. Returns new length."""
    if m > 0 and starts[m - 1] == pos:
        vals[m - 1] = val
        if m > 1 and vals[m - 2] == val:
            return m - 1
        return m
    if m > 0 and vals[m - 1] == val:
        return m
    starts[m] = pos
    vals[m] = val
    return m + 1


@jit
def _prefixes_to_ranges(prefixes, lengths, next_hops, starts, vals):
    """Flatten prefixes sorted by (network, length), no duplicates, into disjoint ranges.

    ``starts``/``vals`` need room for ``2 * n + 1`` entries. Returns the count.
    """
    n = prefixes.shape[0]
    stack_end = np.empty(34, dtype=np.uint64)
    stack_val = np.empty(34, dtype=np.uint32)
    top = 0
    m = 0
    m = _emit(starts, vals, m, np.uint64(0), np.uint32(0xFFFFFFFF))
    full = np.uint64(1) << np.uint64(32)
    for j in range(n):
        s = np.uint64(prefixes[j])
        e = s + (np.uint64(1) << np.uint64(32 - lengths[j]))
        while top > 0 and stack_end[top - 1] <= s:
            top -= 1
            below = np.uint32(0xFFFFFFFF) if top == 0 else stack_val[top - 1]
            if stack_end[top] < full:
                m = _emit(starts, vals, m, stack_end[top], below)
        m = _emit(starts, vals, m, s, next_hops[j])
        stack_end[top] = e
        stack_val[top] = next_hops[j]
        top += 1
    while top > 0:
        top -= 1
        below = np.uint32(0xFFFFFFFF) if top == 0 else stack_val[top - 1]
        if stack_end[top] < full:
            m = _emit(starts, vals, m, stack_end[top], below)
    return m


# --------------------------------------------------------------------------- build

@jit
def _advance(starts, i, a):
    """Index of the range holding address ``a``, moving forward from ``i``."""
    n = starts.shape[0]
    while i + 1 < n and starts[i + 1] <= a:
        i += 1
    return i


@jit
def _build_poptrie(starts, vals, l0, nodes, leaves, queue):
    """Compile disjoint ranges into (l0, nodes, leaves). Returns (node count, leaf count).

    The first level's node entries hold node indices here; :func:`_link_first_level`
    turns them into word offsets or plies.
    """
    n = starts.shape[0]
    nleaf = 0
    nnode = 0
    i = 0
    prev_val = np.uint32(0)
    prev_leaf = -1
    # first level: one entry per /20 (per /_DIRECT_BITS)
    below = 32 - _DIRECT_BITS
    for j in range(1 << _DIRECT_BITS):
        a = np.uint64(j) << np.uint64(below)
        b = a + (np.uint64(1) << np.uint64(below))
        i = _advance(starts, i, a)
        if i + 1 == n or starts[i + 1] >= b:
            v = vals[i]
            if prev_leaf < 0 or v != prev_val:
                leaves[nleaf] = v
                prev_leaf = nleaf
                prev_val = v
                nleaf += 1
            l0[j] = np.uint32(_DIRECT) | np.uint32(prev_leaf)
        else:
            l0[j] = np.uint32(nnode)
            queue[nnode, 0] = np.int64(a)                     # address of the node's first child
            queue[nnode, 1] = _SHIFT1                         # address bits below this node's stride
            nnode += 1
    # inner nodes, breadth first: siblings are allocated together
    q = 0
    while q < nnode:
        a0 = np.uint64(queue[q, 0])
        shift = queue[q, 1]
        i = 0
        # binary search for the range holding a0 (nodes are not visited in address order)
        lo = 0
        hi = n - 1
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if starts[mid] <= a0:
                lo = mid
            else:
                hi = mid - 1
        i = lo
        vec = np.uint64(0)
        leafvec = np.uint64(0)
        base0 = nleaf
        base1 = nnode
        have_leaf = False
        last_val = np.uint32(0)
        for c in range(64):
            a = a0 + (np.uint64(c) << np.uint64(shift))
            b = a + (np.uint64(1) << np.uint64(shift))
            i = _advance(starts, i, a)
            if shift > 0 and not (i + 1 == n or starts[i + 1] >= b):
                vec |= np.uint64(1) << np.uint64(c)
                queue[nnode, 0] = np.int64(a)
                queue[nnode, 1] = shift - 6
                nnode += 1
            else:
                v = vals[i]
                if not have_leaf or v != last_val:
                    leafvec |= np.uint64(1) << np.uint64(c)
                    leaves[nleaf] = v
                    nleaf += 1
                    have_leaf = True
                    last_val = v
        nodes[3 * q] = vec
        nodes[3 * q + 1] = leafvec
        nodes[3 * q + 2] = (np.uint64(base0) << np.uint64(32)) | np.uint64(base1)
        q += 1
    return nnode, nleaf


@jit
def _count_plies(l0, nodes):
    """(first-level entries that are nodes, those of them whose children are all leaves)."""
    entries = 0
    plain = 0
    for j in range(l0.shape[0]):
        d = l0[j]
        if (d & np.uint32(_DIRECT)) == 0:
            entries += 1
            if nodes[3 * np.int64(d)] == 0:
                plain += 1
    return entries, plain


@jit(inline="always")
def _write_ply(nodes, n, leaves, out, m):
    """The 64 leaves of the node at word ``n`` (it has no inner child), in order, to ``out[m:m + 64]``."""
    leafvec = nodes[n + 1]
    base0 = nodes[n + 2] >> np.uint64(32)
    for c in range(64):
        out[m + c] = leaves[base0 + popcount64(leafvec << np.uint64(63 - c)) - np.uint64(1)]


@jit
def _link_first_level(l0, nodes, leaves, first_ply, plies):
    """Turn the first level's node indices into node word offsets, or (``plies``) into plies.

    A ply is the 64 leaves of a node with no inner child, written out in order
    from ``leaves[first_ply]`` on: one read replaces the node and its leaf.
    """
    m = np.int64(first_ply)
    for j in range(l0.shape[0]):
        d = l0[j]
        if d & np.uint32(_DIRECT):
            continue
        n = 3 * np.int64(d)
        if plies and nodes[n] == 0:
            _write_ply(nodes, n, leaves, leaves, m)
            l0[j] = np.uint32(_DIRECT | _PLY) | np.uint32(m)
            m += 64
        else:
            l0[j] = np.uint32(n)


@jit
def _flatten(l0, nodes, leaves, flat_l0, flat_leaves, first):
    """Flat layout: every first-level node (none has an inner child) to a ply from ``flat_leaves[first]`` on.

    ``flat_l0`` already points the direct leaves at their shared plies.
    """
    m = np.int64(first)
    for j in range(l0.shape[0]):
        d = l0[j]
        if d & np.uint32(_DIRECT) == 0:
            _write_ply(nodes, 3 * np.int64(d), leaves, flat_leaves, m)
            flat_l0[j] = np.uint32(m)
            m += 64


@jit(inline="always")
def _host_slot(a, d, mask):
    """Host-table slot of address ``a`` under its /20's displacement ``d``: ``(a ^ d) & mask``.

    ``d`` flips the low 12 address bits, where a /20's hosts differ, so they
    never meet each other; the bits above pick the 4096-slot block, so /20s whose
    address bits there agree compete for one block. (Letting ``d`` move the block
    too cost three instructions a lookup: Calico 455 -> 380 M lookups/s.)
    """
    return (np.uint32(a) ^ np.uint32(d)) & mask


@jit
def _place_hosts(addr, hop, group_off, l0, slots):
    """Put the host routes ``addr -> hop`` in the host table ``slots``; False where some /20's hosts find no room.

    Hosts come grouped by /20, the largest group first. A group takes the first
    displacement ``d`` whose slots (:func:`_host_slot`) are all free, and ``d``
    goes into the top bits of its /20's entry in the flat ``l0``. Free slots get a
    copy of a host that lives in another slot: no address probes a slot holding
    its own address other than its own, so a copy never matches.
    """
    mask = np.uint32(slots.shape[0] - 1)
    used = np.zeros(slots.shape[0], dtype=np.bool_)
    for g in range(group_off.shape[0] - 1):
        lo = group_off[g]
        hi = group_off[g + 1]
        found = -1
        for d in range(1 << (32 - _DIRECT_BITS)):
            free = True
            for i in range(lo, hi):
                if used[_host_slot(addr[i], d, mask)]:
                    free = False
                    break
            if free:
                found = d
                break
        if found < 0:
            return False
        for i in range(lo, hi):
            k = _host_slot(addr[i], found, mask)
            used[k] = True
            slots[k] = (np.uint64(addr[i]) << np.uint64(32)) | np.uint64(hop[i])
        l0[addr[lo] >> np.uint32(32 - _DIRECT_BITS)] |= np.uint32(found) << np.uint32(_FLAT_DISP)
    a = addr[0]
    filler = slots[_host_slot(a, l0[a >> np.uint32(32 - _DIRECT_BITS)] >> np.uint32(_FLAT_DISP), mask)]
    for k in range(slots.shape[0]):
        if not used[k]:
            slots[k] = filler
    return True


# --------------------------------------------------------------------------- lookup

@jit(inline="always")
def lpm_get(l0, nodes, leaves, hosts, addr):
    """Next hop of one address (``MISS`` where none). Inline-callable from other kernels.

    Pass the four arrays of :attr:`RouteTable.arrays`. A flat table (no nodes)
    is the first-level entry, its ply's entry, and the host table read beside
    them. Otherwise, written out for the 20 + 6 + 6 layout: a leaf or ply
    straight from the first level, else a node whose child is a leaf or a second
    node whose children all are. No loop and no level counter: fewer
    instructions per lookup is what lets the independent lookups of a batch overlap.
    """
    a = np.uint32(addr)
    if nodes.shape[0] == 0:                            # flat: every first-level entry a ply
        e = l0[a >> np.uint32(32 - _DIRECT_BITS)]
        nh = leaves[(e & np.uint32(_FLAT_OFFSET)) + ((a >> np.uint32(_STRIDE)) & np.uint32(63))]
        if hosts.shape[0] == 0:
            return nh
        h = hosts[_host_slot(a, e >> np.uint32(_FLAT_DISP), np.uint32(hosts.shape[0] - 1))]
        return select_unpredictable(np.uint32(h >> np.uint64(32)) == a, np.uint32(h), nh)
    d = l0[a >> np.uint32(32 - _DIRECT_BITS)]
    if d & np.uint32(_DIRECT):
        if d & np.uint32(_PLY):
            return leaves[(d & np.uint32(_INDEX)) + ((a >> np.uint32(_STRIDE)) & np.uint32(63))]
        return leaves[d & np.uint32(_INDEX)]
    n = np.uint64(d)                                   # the node's first word
    vec = nodes[n]
    v = np.uint64((a >> np.uint32(_STRIDE)) & np.uint32(63))
    above = np.uint64(63) - v                          # shift that keeps children 0..v
    bases = nodes[n + np.uint64(2)]
    if (vec >> v) & np.uint64(1):                      # an inner child: its children are all leaves
        n = ((bases & np.uint64(0xFFFFFFFF)) + popcount64(vec << above) - np.uint64(1)) * np.uint64(3)
        above = np.uint64(63) - np.uint64(a & np.uint32(63))
        bases = nodes[n + np.uint64(2)]
    return leaves[(bases >> np.uint64(32)) + popcount64(nodes[n + np.uint64(1)] << above) - np.uint64(1)]


@jit
def _lookup(l0, nodes, leaves, hosts, dst, out):
    for j in range(dst.shape[0]):
        out[j] = lpm_get(l0, nodes, leaves, hosts, dst[j])


@pjit
def _lookup_parallel(l0, nodes, leaves, hosts, dst, out, chunk):
    n = dst.shape[0]
    nchunks = (n + chunk - 1) // chunk
    for c in numba.prange(nchunks):
        lo, hi = chunk_bounds(c, chunk, n)
        for j in range(lo, hi):
            out[j] = lpm_get(l0, nodes, leaves, hosts, dst[j])


# --------------------------------------------------------------------------- table

def _normalize(prefixes, lengths, next_hops, what: str = "route table"):
    p = np.ascontiguousarray(prefixes, dtype=np.uint64)
    ln = np.ascontiguousarray(lengths, dtype=np.int64)
    nh = np.ascontiguousarray(next_hops, dtype=np.int64)
    if not (p.ndim == ln.ndim == nh.ndim == 1) or not (p.shape == ln.shape == nh.shape):
        raise FastpathError(f"{what}: prefixes {p.shape}, lengths {ln.shape} and next hops {nh.shape} "
                            "must be 1-D arrays of one length")
    if p.size:
        bad = np.flatnonzero((ln < 0) | (ln > 32))
        if bad.size:
            raise FastpathError(f"{what}: prefix length {ln[bad[0]]} at row {bad[0]} is outside 0-32")
        bad = np.flatnonzero(p > 0xFFFFFFFF)
        if bad.size:
            raise FastpathError(f"{what}: prefix {p[bad[0]]} at row {bad[0]} is not a 32-bit address")
        bad = np.flatnonzero((nh < 0) | (nh >= 0xFFFFFFFF))
        if bad.size:
            raise FastpathError(f"{what}: next hop {nh[bad[0]]} at row {bad[0]} must be in 0..2^32-2 "
                                "(2^32-1 is RouteTable.MISS)")
        mask = np.where(ln == 0, 0, (np.uint64(0xFFFFFFFF) << (32 - ln).astype(np.uint64)) & np.uint64(0xFFFFFFFF))
        bad = np.flatnonzero(p & ~mask & np.uint64(0xFFFFFFFF))
        if bad.size:
            r = bad[0]
            raise FastpathError(f"{what}: prefix {format_cidr(int(p[r]), int(ln[r]))} at row {r} has host bits set "
                                f"(the network is {format_cidr(int(p[r] & mask[r]), int(ln[r]))})")
    return p, ln, nh


def _ranges(keys: np.ndarray, nh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ranges (starts, next hops) of sorted prefix keys (see :meth:`RouteTable.to_ranges`)."""
    p = (keys >> np.uint64(6)).astype(np.uint32)
    ln = (keys & np.uint64(63)).astype(np.uint8)
    starts = np.empty(2 * p.size + 1, dtype=np.uint64)
    vals = np.empty(2 * p.size + 1, dtype=np.uint32)
    m = _prefixes_to_ranges(p, ln, np.ascontiguousarray(nh, dtype=np.uint32), starts, vals)
    return starts[:m].copy(), vals[:m].copy()


def _poptrie(starts: np.ndarray, vals: np.ndarray):
    """The Poptrie of disjoint ranges: ``(l0, nodes, leaves, node count, leaf count)``, first-level
    entries holding node indices (:func:`_build_poptrie`), arrays cut to what they hold."""
    n = starts.size
    node_cap = 3 * n + 64                              # a range boundary opens at most one node a level
    l0 = np.empty(1 << _DIRECT_BITS, dtype=np.uint32)
    nodes = np.empty(3 * node_cap, dtype=np.uint64)
    leaves = np.empty((1 << _DIRECT_BITS) + node_cap + 3 * n + 64, dtype=np.uint32)
    queue = np.empty((node_cap, 2), dtype=np.int64)
    nn, nl = _build_poptrie(starts, vals, l0, nodes, leaves, queue)
    return l0, nodes[:3 * nn], leaves[:nl], nn, nl


def _keys(p: np.ndarray, ln: np.ndarray) -> np.ndarray:
    """Sort key of a prefix: network then length, so covering prefixes come first."""
    return (p << np.uint64(6)) | ln.astype(np.uint64)


class RouteTable:
    """IPv4 longest-prefix-match table mapping prefixes to uint32 next hops.

    Build with :meth:`from_cidrs` or :meth:`from_arrays`; look up a batch with
    :meth:`lookup` (one thread) or :meth:`lookup_parallel` (all threads).
    Every length /0-/32 is allowed, prefixes may nest and overlap; the
    longest match wins. :attr:`MISS` (``0xFFFFFFFF``) marks "no route".

    Examples
    --------
    >>> rt = RouteTable.from_cidrs(["10.244.0.0/16", "0.0.0.0/0"], next_hops=[1, 2])
    >>> rt.lookup(np.array([0x0AF40107, 0x08080808], dtype=np.uint32)).tolist()
    [1, 2]
    """

    MISS: int = int(MISS)

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.uint64)   # sorted (network << 6 | length)
        self._nh = np.empty(0, dtype=np.uint32)
        self._pending: dict[int, int] = {}            # key -> next hop, or -1 to delete
        self._compiled = None
        self._plies = 0
        self._hosts = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def from_arrays(cls, prefixes: np.ndarray, lengths: np.ndarray, next_hops: np.ndarray) -> "RouteTable":
        """Build from parallel arrays (network as uint32 value, length, next hop).

        A prefix given twice keeps its last next hop. Host bits beyond the
        length are an error.
        """
        p, ln, nh = _normalize(prefixes, lengths, next_hops)
        keys = _keys(p, ln)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        nh = nh[order]
        if keys.size:
            last = np.ones(keys.size, dtype=bool)
            last[:-1] = keys[1:] != keys[:-1]   # with a stable sort, the last of equals is the last given
            keys = keys[last]
            nh = nh[last]
        rt = cls()
        rt._keys = np.ascontiguousarray(keys)
        rt._nh = np.ascontiguousarray(nh, dtype=np.uint32)
        return rt

    @classmethod
    def from_cidrs(cls, cidrs: Sequence[str], next_hops: Sequence[int]) -> "RouteTable":
        """Build from CIDR strings (``"10.244.0.0/16"``); host bits set are an error."""
        cidrs = list(cidrs)
        next_hops = list(next_hops)
        if len(cidrs) != len(next_hops):
            raise FastpathError(f"route table: {len(cidrs)} CIDRs but {len(next_hops)} next hops")
        net, ln = cidrs_from_strings(cidrs)      # vectorized; parse_cidr's answers and errors
        return cls.from_arrays(net.astype(np.uint64), ln, np.array(next_hops, dtype=np.int64))

    # ------------------------------------------------------------------ updates
    @staticmethod
    def _key_of(cidr) -> tuple[int, int, int]:
        if isinstance(cidr, str):
            net, length = parse_cidr(cidr)
        else:
            net, length = (int(x) for x in cidr)
            _normalize([net], [length], [0])
        return (net << 6) | length, net, length

    def insert(self, cidr: str | tuple[int, int], next_hop: int) -> None:
        """Add a prefix, or replace its next hop if present."""
        key, net, length = self._key_of(cidr)
        _normalize([net], [length], [next_hop])
        self._pending[key] = int(next_hop)
        self._compiled = None

    def delete(self, cidr: str | tuple[int, int]) -> None:
        """Remove a prefix; its addresses fall back to the next shorter covering prefix."""
        key, net, length = self._key_of(cidr)
        if not self._contains_key(key):
            raise FastpathError(f"route table: no route {format_cidr(net, length)} to delete")
        self._pending[key] = -1
        self._compiled = None

    def _contains_key(self, key: int) -> bool:
        if key in self._pending:
            return self._pending[key] >= 0
        i = int(np.searchsorted(self._keys, np.uint64(key)))
        return i < self._keys.size and int(self._keys[i]) == key

    def __contains__(self, cidr) -> bool:
        return self._contains_key(self._key_of(cidr)[0])

    def _apply_pending(self) -> None:
        if not self._pending:
            return
        pk = np.fromiter(self._pending.keys(), dtype=np.uint64, count=len(self._pending))
        pv = np.fromiter(self._pending.values(), dtype=np.int64, count=len(self._pending))
        keys = np.concatenate([self._keys, pk])
        vals = np.concatenate([self._nh.astype(np.int64), pv])
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        last = np.ones(keys.size, dtype=bool)
        last[:-1] = keys[1:] != keys[:-1]
        keep = last & (vals >= 0)
        self._keys = np.ascontiguousarray(keys[keep])
        self._nh = np.ascontiguousarray(vals[keep], dtype=np.uint32)
        self._pending.clear()

    # ------------------------------------------------------------------ compiling
    def prefixes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Current contents as (network uint32, length uint8, next hop uint32), sorted."""
        self._apply_pending()
        p = (self._keys >> np.uint64(6)).astype(np.uint32)
        ln = (self._keys & np.uint64(63)).astype(np.uint8)
        return p, ln, self._nh.copy()

    def to_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """The table flattened to disjoint ranges covering all of IPv4.

        Returns ``(starts, next_hops)``: range ``i`` is ``[starts[i], starts[i+1])``
        (the last one ends at 2^32), ``starts[0] == 0``, neighbours differ in
        next hop, and ``MISS`` marks uncovered space. ``np.searchsorted(starts,
        dst, "right") - 1`` then indexes ``next_hops``.
        """
        self._apply_pending()
        return _ranges(self._keys, self._nh)

    def _compile(self):
        if self._compiled is None:
            self._apply_pending()
            length = self._keys & np.uint64(63)
            host = length == np.uint64(32)
            nhost = int(np.count_nonzero(host))
            trie = None
            if nhost <= HOST_BUDGET and not np.any(length[~host] > _DIRECT_BITS + _STRIDE):
                trie = _poptrie(*_ranges(self._keys[~host], self._nh[~host]))
                self._compiled = self._compile_flat(trie, host, nhost)
                if nhost:
                    trie = None                    # it lacks the host routes
            if self._compiled is None:
                self._compiled = self._compile_nodes(trie if trie is not None else _poptrie(*self.to_ranges()))
        return self._compiled

    def _compile_flat(self, trie, host: np.ndarray, nhost: int):
        """The flat layout from the Poptrie of all but the /32s (see the module docstring), or None
        where it does not fit its budgets."""
        l0, nodes, leaves, nn, _ = trie
        direct = (l0 & np.uint32(_DIRECT)) != 0
        shared, which = np.unique(leaves[l0[direct] & np.uint32(_INDEX)], return_inverse=True)
        plies = shared.size + nn                    # every node is a first-level one here (no prefix past /26)
        if plies > PLY_BUDGET:
            return None
        flat_l0 = np.empty_like(l0)
        flat_l0[direct] = which.astype(np.uint32) * np.uint32(64)
        flat_leaves = np.empty(64 * plies, dtype=np.uint32)
        flat_leaves[:64 * shared.size] = np.repeat(shared, 64)
        _flatten(l0, nodes, leaves, flat_l0, flat_leaves, 64 * shared.size)
        hosts = np.empty(0, dtype=np.uint64)
        if nhost:
            addr = (self._keys[host] >> np.uint64(6)).astype(np.uint32)
            hop = self._nh[host]
            region = addr >> np.uint32(32 - _DIRECT_BITS)
            count = np.bincount(region, minlength=1 << _DIRECT_BITS)[region]
            order = np.lexsort((addr, region, -count))          # largest /20 group first
            addr, hop, region = addr[order], hop[order], region[order]
            starts = np.flatnonzero(np.r_[True, region[1:] != region[:-1]])
            group_off = np.r_[starts, addr.size].astype(np.int64)
            size = _HOST_SLOTS_MIN
            while size < 2 * nhost:
                size *= 2
            while True:
                if size > _HOST_SLOTS_MAX:
                    return None                     # hosts too dense for the displacements
                hosts = np.empty(size, dtype=np.uint64)
                placed_l0 = flat_l0.copy()
                if _place_hosts(addr, hop, group_off, placed_l0, hosts):
                    flat_l0 = placed_l0
                    break
                size *= 2
        self._plies = plies
        self._hosts = nhost
        return flat_l0, np.empty(0, dtype=np.uint64), flat_leaves, hosts

    def _compile_nodes(self, trie):
        """Poptrie nodes, with plies where the table allows them (see the module docstring)."""
        l0, nodes, leaves, nn, nl = trie
        entries, plain = _count_plies(l0, nodes)
        plies = 0 < plain <= PLY_BUDGET and entries - plain <= entries * PLY_MIXED_SHARE
        self._plies = plain if plies else 0
        self._hosts = 0
        leaves = np.concatenate([leaves, np.empty(64 * self._plies, dtype=np.uint32)])
        if leaves.size > _INDEX or 3 * nn > _INDEX:
            raise FastpathError(f"route table: {leaves.size} leaves and {nn} nodes exceed the "
                                f"first level's {_INDEX + 1} index range")
        _link_first_level(l0, nodes, leaves, nl, plies)
        # an empty node array marks a flat table: a table with no node keeps one that no lookup reads
        return l0, nodes.copy() if nn else np.zeros(3, dtype=np.uint64), leaves, np.empty(0, dtype=np.uint64)

    @property
    def layout(self) -> str:
        """How the table compiled: ``"flat"`` (plies only, /32s in the host table), ``"plies"`` (plies
        beside Poptrie nodes) or ``"poptrie"`` (see the module docstring)."""
        _, nodes, _, _ = self._compile()
        return "flat" if nodes.shape[0] == 0 else "plies" if self._plies else "poptrie"

    @property
    def plies(self) -> int:
        """64-entry plies the table compiled to (a flat table's shared ones included; 0: none)."""
        self._compile()
        return self._plies

    @property
    def host_routes(self) -> int:
        """/32 routes held in a flat table's host table (0 where they sit in the trie)."""
        self._compile()
        return self._hosts

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The compiled ``(l0, nodes, leaves, hosts)`` arrays, for kernels that call :func:`lpm_get`."""
        return self._compile()

    # ------------------------------------------------------------------ lookups
    @staticmethod
    def _check(dst, out) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(dst)
        if d.dtype != np.uint32:
            if d.dtype.kind not in "iu":
                raise FastpathError(f"route lookup: destinations must be uint32 addresses, got {d.dtype}")
            if d.size and (d.min() < 0 or d.max() > 0xFFFFFFFF):
                raise FastpathError("route lookup: destinations must lie in 0..2^32-1")
            d = d.astype(np.uint32)
        d = np.ascontiguousarray(d).reshape(-1)
        if out is None:
            out = np.empty(d.shape[0], dtype=np.uint32)
        elif out.dtype != np.uint32 or out.shape != d.shape or not out.flags.c_contiguous:
            raise FastpathError(f"route lookup: out must be a contiguous uint32 array of shape {d.shape}")
        return d, out

    def lookup(self, dst: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Next hop of every address in ``dst`` (uint32), ``MISS`` where no prefix matches.

        With ``out`` the results are written there (and ``out`` is returned).
        """
        d, out = self._check(dst, out)
        _lookup(*self._compile(), d, out)
        return out

    def lookup_into(self, dst: np.ndarray, out: np.ndarray) -> np.ndarray:
        """In-place form of :meth:`lookup`."""
        return self.lookup(dst, out)

    def lookup_parallel(self, dst: np.ndarray, out: np.ndarray | None = None, chunk: int = 16384) -> np.ndarray:
        """:meth:`lookup` spread over all numba threads (see ``fastpath._jit.set_threads``)."""
        d, out = self._check(dst, out)
        _lookup_parallel(*self._compile(), d, out, np.int64(chunk))
        return out

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        self._apply_pending()
        return int(self._keys.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the compiled lookup structure."""
        return sum(a.nbytes for a in self._compile())

    def __repr__(self) -> str:
        return f"RouteTable({len(self)} prefixes)"
