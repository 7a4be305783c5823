"""Backend choice: the flow hashes, the five balancers, affinity, and the stage kernels.

kube-proxy decides once per new connection which endpoint gets it; this module
is that decision over a batch of flows. Randomness is emulated by seeded hashes
so that a replay is repeatable:

``mix32``
    MurmurHash3's 32-bit finalizer (``fmix32``), all arithmetic mod 2^32.
``flow_hash(k, 5-tuple)``
    three chained rounds over the 5-tuple's 32-bit words,
    ``mix32(mix32(mix32(k_lo ^ proto ^ src_ip) ^ dst_ip ^ k_hi) ^ (src_port << 16 | dst_port))``,
    where ``k = seed_key(seed, salt)`` (``k_lo``, ``k_hi`` its halves) differs
    per use, so the backend choice, the Maglev index and the receiving node are
    independent draws.
``client_hash(k, src_ip)``
    ``mix32(k_lo ^ src_ip)``.
``modn(h, n)``
    ``h mod n`` (32-bit division; the bias is below ``n / 2^32``). Every choice
    below, Maglev's index included, takes its hash into range this way. A
    multiply-shift reduction (``(h * n) >> 32``) would save the division, but it
    maps hashes to positions in order, so after an endpoint change most flows
    would keep their backend: a random balancer's churn would look like a
    consistent hash's (28% of flows moved where mod n moves 95%, 1 of 20
    endpoints removed), which is not what iptables' random draw does.

The hashes are 32-bit so that the parallel pass computes a group's hashes in one
vector loop (AVX2 multiplies eight 32-bit lanes at once, but has no 64-bit
multiply): they cost a fifth of the pass when they were two 64-bit ``fmix64``
rounds per flow, computed one flow at a time.

The balancers (``lb=``), over the eligible endpoints of the flow's service port
in ``(IP, port)`` order:

``random``
    ``modn(flow_hash(k_random), n)``: uniform, as iptables' probability chain
    and nftables' ``numgen random mod n``.
``round-robin``
    IPVS ``rr``: a counter per (receiving node, service port), in trace order.
``source-hash``
    IPVS ``sh``: ``modn(client_hash(k_source, src_ip), n)`` — a client never splits.
``maglev``
    the service port's Maglev table (:mod:`fastpath.tables.maglev`) at
    ``modn(flow_hash(k_maglev), M)``.
``least-connection``
    IPVS ``lc``: fewest active connections of the receiving node to each backend,
    the first such backend in list order on ties (as ``ip_vs_lc_schedule``). Every
    flow is a new connection living its own lifetime from its ``ts``
    (:func:`fastpath.lifetimes.lifetimes_ns`: the trace's ``duration``, else
    the per-protocol default), the one time model conntrack uses too; a heap
    of (end time, node, backend) retires them. Without ``ts`` connections never
    end: lc balances the connections each node has opened.

``sessionAffinity: ClientIP`` wraps any balancer: a table keyed (service port,
node, client IP) keeps the backend for ``timeoutSeconds`` after its last use,
and a connection uses it until it ends: a flow at ``ts`` finds the remembered
backend if ``ts`` is at most ``timeoutSeconds`` past the end of the client's
latest-ending connection there (connection lifetimes as least-connection's;
with no ``duration`` column a UDP exchange ends at once, as iptables'
``recent --rcheck --seconds`` from the last new connection); a remembered backend that is not
eligible for this flow (another node under a Local policy) is chosen anew.
Without ``ts`` an affinity never expires. An affinity hit does not advance
round-robin. The node is the one that DNATs the flow, whose counters it uses (the
client's node; for an external client the receiving node): kube-proxy keeps
affinity in each node's kernel (iptables' ``-m recent --name KUBE-SEP-…
--rcheck --seconds T`` lists, IPVS persistence templates, nftables maps), so an
external client reaching one service through two nodes has an entry, and a
timeout, on each, and may get a different backend on each
(:func:`~fastpath.tables.balancer_state.affinity_key`).

Each row is a new connection (conntrack pinning of later packets is not
modelled here): a row repeating a 5-tuple gets the same backend from the hash
balancers, the next one in turn from round-robin.

Three kernels share the per-flow helpers. The parallel pass, :func:`_stage_hash`,
runs random, source-hash and maglev over the batch in parallel chunks (per-flow
work independent, nothing written but the flow's own outputs), walking each
chunk in groups of flows one table level at a time so that the cache misses of a
group overlap (Maglev tables do not fit in cache: 10,000 x 16381 slots); an
in-cluster client of a service port whose eligible set depends on nothing else
takes a shortcut, one read for the set (``sp_span``). Under round-robin and
least-connection the same pass finds every flow's frontend and eligible set, and
:func:`_pick_in_order` then advances the counters, one thread in trace order.
Flows to affinity service ports go through :func:`_stage`, one thread in trace
order; their service ports never share a round-robin counter with the others.
Least-connection connections end in time order across all service ports, so
where some service port has affinity every flow under it goes through
:func:`_stage`. Per-(node,
column) counters sit in a dense array when small enough, else in a hash table
(:class:`BalancerState`). The helpers the kernels call with arrays are inlined
at the numba level: a call taking arrays costs more than the lookup it does.
"""
from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from .._jit import GROUP, UGROUP, chunk_bounds, jit, pjit, prefetch, stack_empty
from ..codes import DROPPED, PENDING, REJECTED
from .balancer_state import (BALANCERS, LB_LEAST_CONN, LB_MAGLEV, LB_RANDOM, LB_ROUND_ROBIN,  # noqa: F401
                             LB_SOURCE_HASH, BalancerState, StateArrays, _add, _count, _open, _retire, _AFF_USED,
                             _RR_USED, affinity_key)
from .exact import EMPTY, ht_find, ht_home, ht_place, ht_probe, pack2, pack3

#: Frontend kinds, indexed by code (bits 32-35 of a frontend value).
FRONTEND_KINDS = ("ClusterIP", "externalIP", "LoadBalancer", "NodePort")
FE_CLUSTER_IP, FE_EXTERNAL_IP, FE_LOAD_BALANCER, FE_NODE_PORT = range(4)

#: Service-port flags (``sp_flags``).
F_ITP_LOCAL = np.uint8(1)     #: internalTrafficPolicy: Local
F_ETP_LOCAL = np.uint8(2)     #: externalTrafficPolicy: Local
F_AFFINITY = np.uint8(4)      #: sessionAffinity: ClientIP
F_HAS_ANY = np.uint8(8)       #: some Ready or Serving+Terminating endpoint exists
F_HAS_READY = np.uint8(16)    #: some Ready endpoint exists
F_NODE_HINTS = np.uint8(32)   #: node hints (PreferSameNode) apply on some node: look up loc_slots first
#: Bit added to the service port in ``loc_slots`` keys of node-hint sets (``pack2(sp | NODE_HINT_KEY, node)``).
NODE_HINT_KEY = 1 << 31

#: Hash salts: one independent draw per use of the seed.
SALT_RANDOM, SALT_SOURCE, SALT_MAGLEV, SALT_NODE, SALT_OFFSET, SALT_SKIP, SALT_DNS = range(1, 8)
#: Number of seed keys kept (index = salt).
N_KEYS = 8

_M64 = (1 << 64) - 1
#: fmix64 multipliers (MurmurHash3).
C1, C2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
#: 2^64 / golden ratio, spreads seeds.
GOLDEN = 0x9E3779B97F4A7C15

#: Rows per sequential-kernel call: state tables grow between calls.
SEQ_CHUNK = 1 << 20
#: Flows per parallel work item.
PAR_CHUNK = 4096

#: The map arrays the stage kernels read (built by :func:`fastpath.tables.services.compile_services`).
MapArrays = namedtuple("MapArrays", [
    "fe_slots",                    # frontends (ExactTable.slots): pack3(ip, proto, port) -> sp | kind << 32
    "np_slots",                    # NodePorts: pack3(0, proto, nodePort) -> sp | FE_NODE_PORT << 32
    "nip_slots",                   # node addresses (InternalIP, ExternalIP) -> node
    "cip_slots",                   # known ClusterIPs
    "sp_flags",                    # u8[S]
    "sp_set",                      # i32[S] cluster-view eligible set (-1 none)
    "sp_zone_row",                 # i32[S] row of zone_sets, -1 when topology never applies
    "zone_sets",                   # i32[rows * (Z + 1)] eligible set by the receiving node's zone
    "zone_width",                  # Z + 1 (the last column: nodes without a zone)
    "node_zone",                   # i32[N] zone index, Z where none
    "node_ip",                     # u32[N] masquerade address (InternalIP, else ExternalIP, else 0)
    "loc_slots",                   # pack2(sp, node) -> local eligible set
    "lbn_off", "lbn_node",         # CSR per sp: nodes holding local eligible endpoints
    "set_off", "set_ep", "set_ip", "set_port",  # eligible sets (CSR) -> endpoint, IP, port
    "set_table",                   # i32[sets] Maglev table row (-1: one backend or no Maglev)
    "maglev",                      # [tables, M] backend position in the set
    "affinity_ns",                 # i64[S] ClientIP affinity timeout in ns
    "keys",                        # u64[N_KEYS] seed keys by salt
    "addr_filter",                 # u64[FILTER_WORDS] bit set over hashed frontend / node / ClusterIP addresses
    "sp_span",                     # i64[S] first << 32 | size of the eligible set every in-cluster client gets, or -1
    "sp_table",                    # i32[S] Maglev table row of that set (-1: none)
    "set_backend",                 # u64 per set member: IP | port << 32 (one read for the rewrite)
    "node_pool",                   # i32: the nodes present, in order (an external client's flow lands on one)
])



# --------------------------------------------------------------------------- hashes (Python side)

def mix64_py(x: int) -> int:
    """:func:`mix64` on a Python int (for keys, explain and the slow twins)."""
    x &= _M64
    x ^= x >> 33
    x = (x * C1) & _M64
    x ^= x >> 33
    x = (x * C2) & _M64
    x ^= x >> 33
    return x


def seed_key(seed: int, salt: int) -> int:
    """The hash key of one use (``salt``) of ``seed``."""
    return mix64_py((int(seed) * GOLDEN + salt) & _M64)


def seed_keys(seed: int) -> np.ndarray:
    """All keys of ``seed``, indexed by salt (uint64[N_KEYS])."""
    return np.array([seed_key(seed, s) for s in range(N_KEYS)], dtype=np.uint64)


def mix64_np(x: np.ndarray) -> np.ndarray:
    """Vectorized :func:`mix64` over a uint64 array."""
    x = np.asarray(x, dtype=np.uint64).copy()
    x ^= x >> np.uint64(33)
    x *= np.uint64(C1)
    x ^= x >> np.uint64(33)
    x *= np.uint64(C2)
    x ^= x >> np.uint64(33)
    return x


# --------------------------------------------------------------------------- hashes (kernels)

@jit
def mix64(x):
    """MurmurHash3 ``fmix64`` of a uint64."""
    x = np.uint64(x)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


# numba widens uint32 arithmetic to 64 bits; every step is cut back to uint32 so that
# LLVM keeps 32-bit lanes and vectorizes a loop of these (see the module docstring).

@jit(inline="always")
def mix32(x):
    """MurmurHash3 ``fmix32`` of a uint32."""
    x = np.uint32(x)
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * np.uint32(0x85EBCA6B))
    x = np.uint32(x ^ (x >> np.uint32(13)))
    x = np.uint32(x * np.uint32(0xC2B2AE35))
    return np.uint32(x ^ (x >> np.uint32(16)))


@jit(inline="always")
def flow_hash(key, src_ip, dst_ip, src_port, dst_port, proto):
    """Seeded 32-bit hash of a 5-tuple (see the module docstring)."""
    k = np.uint64(key)
    h = mix32(np.uint32(np.uint32(k) ^ np.uint32(proto)) ^ np.uint32(src_ip))
    h = mix32(np.uint32(h ^ np.uint32(dst_ip)) ^ np.uint32(k >> np.uint64(32)))
    return mix32(h ^ np.uint32(np.uint32(np.uint32(src_port) << np.uint32(16)) | np.uint32(dst_port)))


@jit(inline="always")
def client_hash(key, src_ip):
    """Seeded 32-bit hash of a client address (IPVS ``sh``)."""
    return mix32(np.uint32(np.uint64(key)) ^ np.uint32(src_ip))


@jit(inline="always")
def modn(h, n):
    """32-bit hash ``h`` taken into ``[0, n)``: ``h mod n`` in 32-bit arithmetic (``n`` < 2^32)."""
    return np.int64(np.uint32(h) % np.uint32(n))


# --------------------------------------------------------------------------- the per-flow body
#
# Kernels unpack MapArrays / StateArrays once per call and hand plain arrays on:
# reading an array out of a tuple inside the flow loop costs an atomic
# reference-count pair per access, which would cost more than the lookup itself.

@jit
def uses_local(flags, kind, external):
    """Whether a Local traffic policy governs a flow (see :func:`eligible_set`)."""
    if kind == FE_CLUSTER_IP:
        return (flags & F_ITP_LOCAL) != 0
    return external and (flags & F_ETP_LOCAL) != 0


@jit(inline="always")
def eligible_set(sp_flags, sp_set, sp_zone_row, zone_sets, zone_width, node_zone, loc_slots,
                 sp, kind, external, rn):
    """Eligible endpoint set of a flow received on node ``rn``, or -1 (Local, none there).

    ``CategorizeEndpoints``: a ClusterIP follows internalTrafficPolicy for every
    client; NodePort / LoadBalancer / externalIP follow externalTrafficPolicy for
    external clients and the cluster view for in-cluster ones (kube-proxy sends
    those to the cluster chain, "subject to neither form of traffic policy").
    The cluster view depends on ``rn``'s zone where topology hints apply.
    """
    if uses_local(sp_flags[sp], kind, external):
        return ht_find(loc_slots, pack2(sp, rn), -1)
    if (sp_flags[sp] & F_NODE_HINTS) != 0 and rn >= 0:   # node hints, checked before zone hints
        s = ht_find(loc_slots, pack2(sp | NODE_HINT_KEY, rn), -1)
        if s >= 0:
            return s
    row = sp_zone_row[sp]
    if row < 0:
        return np.int64(sp_set[sp])
    return np.int64(zone_sets[np.int64(row) * zone_width + node_zone[rn]])


@jit(inline="always")
def receiving_node(sp_flags, lbn_off, lbn_node, node_pool, sp, kind, fnode, h_node):
    """Node that receives an external client's flow (its kube-proxy decides).

    NodePort: the node owning the address. LoadBalancer, externalIP and a
    ClusterIP reached from outside: a node drawn by ``h_node`` among the nodes
    holding local eligible endpoints when a Local policy applies (what the cloud
    load balancer's health check leaves), else among all nodes present (``node_pool``:
    every node, unless cluster events removed some); -1 without nodes.
    """
    if kind == FE_NODE_PORT:
        return np.int64(fnode)
    n_nodes = node_pool.shape[0]
    if n_nodes == 0:
        return np.int64(-1)
    if uses_local(sp_flags[sp], kind, True):
        a = lbn_off[sp]
        b = lbn_off[sp + 1]
        if b > a:
            return np.int64(lbn_node[a + modn(h_node, b - a)])
    return np.int64(node_pool[modn(h_node, n_nodes)])


def flow_eligible_set(T: MapArrays, sp: int, kind: int, external: bool, rn: int) -> int:
    """:func:`eligible_set` over a :data:`MapArrays` (Python side, for explain)."""
    return int(eligible_set(T.sp_flags, T.sp_set, T.sp_zone_row, T.zone_sets, T.zone_width, T.node_zone,
                            T.loc_slots, sp, kind, external, rn))


@jit(inline="always")
def pick_hash(lb, s_ip, d, sport, dport, p, keys):
    """The hash a stateless balancer draws with: the client's under source-hash, else the 5-tuple's."""
    if lb == LB_SOURCE_HASH:
        return client_hash(keys[SALT_SOURCE], s_ip)
    return flow_hash(keys[SALT_MAGLEV if lb == LB_MAGLEV else SALT_RANDOM], s_ip, d, sport, dport, p)


@jit(inline="always")
def _hash_pick(lb, tb, n, h, maglev):
    """Position a stateless balancer picks by :func:`pick_hash` ``h`` among ``n`` (``tb``: the set's Maglev row)."""
    if lb != LB_MAGLEV:
        return modn(h, n)
    if tb < 0:
        return np.int64(0)                         # one backend: no table
    return np.int64(maglev[tb, modn(h, maglev.shape[1])])


@jit(inline="always")
def _balance(lb, s, lo, n, rn, sp, s_ip, d, sport, dport, p, keys, set_table, maglev, set_ep,
             rr_dense, rr_keys, rr_vals, lc_dense, lc_keys, lc_vals, meta):
    """Position in eligible set ``s`` (``n`` backends from ``lo``) chosen by balancer ``lb``."""
    if lb != LB_ROUND_ROBIN and lb != LB_LEAST_CONN:
        return _hash_pick(lb, set_table[s], n, pick_hash(lb, s_ip, d, sport, dport, p, keys), maglev)
    if lb == LB_ROUND_ROBIN:
        return np.int64(_add(rr_dense, rr_keys, rr_vals, meta, _RR_USED, rn, sp, 1) % n)
    # least-connection: first backend in list order with the fewest active connections
    best = np.int64(0)
    fewest = np.int64(-1)
    for j in range(n):
        c = _count(lc_dense, lc_keys, lc_vals, rn, set_ep[lo + j])
        if fewest < 0 or c < fewest:
            fewest = c
            best = j
    return best


#: Bits in the address filter (2^20 bits = 128 KiB, stays in L2): one load tells almost
#: every other destination that it is no frontend, node address or ClusterIP at all.
FILTER_BITS = 20
#: The stateless pass skips the filter for a group of flows when at least 1/FILTER_SKIP of
#: the group before hit a frontend: on service traffic the filter only costs (a fifth of
#: the pass, measured), while a probe answers what the filter would. Results are the
#: same either way: the filter has no false negatives, and whatever passes it is probed.
FILTER_SKIP = 2


@jit(inline="always")
def filter_bits(d):
    """Word index and two-bit mask of address ``d`` in the address filter.

    A blocked Bloom filter: the address's hash picks one 64-bit word and two bits
    in it, all from the well-mixed high bits of the product, so one load answers.
    """
    h = np.uint64(d) * np.uint64(0x9E3779B97F4A7C15)
    mask = ((np.uint64(1) << ((h >> np.uint64(64 - FILTER_BITS)) & np.uint64(63)))
            | (np.uint64(1) << ((h >> np.uint64(64 - FILTER_BITS - 6)) & np.uint64(63))))
    return h >> np.uint64(64 - FILTER_BITS + 6), mask


@jit
def _fill_filter(addresses, words):
    for j in range(addresses.shape[0]):
        w, mask = filter_bits(addresses[j])
        words[w] |= mask


def address_filter(addresses: np.ndarray) -> np.ndarray:
    """The bit set :func:`maybe_service_address` reads, over ``addresses`` (uint32)."""
    words = np.zeros((1 << FILTER_BITS) // 64, dtype=np.uint64)
    _fill_filter(np.ascontiguousarray(addresses, dtype=np.uint64), words)
    return words


@jit(inline="always")
def maybe_service_address(addr_filter, d):
    """False only where ``d`` is surely no frontend, node address or ClusterIP (no false negatives).

    See :func:`filter_bits`. On the 5,000-node benchmark cluster (10,000 services)
    it lets through 0.14% of pod addresses; one bit an address let through a few
    percent, and each of those walked the whole frontend lookup.
    """
    w, mask = filter_bits(d)
    return (addr_filter[w] & mask) == mask


@jit(inline="always")
def frontend_of(fe_slots, np_slots, nip_slots, d, p, dport):
    """Frontend value of (address, protocol, port), -1 where none: ``sp | kind << 32 | (node + 1) << 36``.

    ClusterIPs, externalIPs and load-balancer IPs are matched exactly; a NodePort
    matches on any node address (one entry per service port, not per node), and
    the node that owns the address is folded into the value. An exact frontend
    wins over a NodePort on the same key (the first claim wins).
    """
    return node_port_or(ht_find(fe_slots, pack3(d, p, dport), -1), np_slots, nip_slots, d, p, dport)


@jit(inline="always")
def node_port_or(v, np_slots, nip_slots, d, p, dport):
    """:func:`frontend_of` once the exact table answered ``v`` (a kernel probes it after a prefetch)."""
    if v >= 0:
        return v
    node = ht_find(nip_slots, np.uint64(d), -1)
    if node < 0:
        return np.int64(-1)
    v = ht_find(np_slots, pack3(0, p, dport), -1)
    if v < 0:
        return v
    return v | ((node + 1) << 36)


@jit(inline="always")
def masquerades(flags, kind, external):
    """Whether a flow leaves with its receiving node's address whatever backend it gets.

    An external client's flow is, unless externalTrafficPolicy: Local governs it
    (a NodePort, LoadBalancer or externalIP keeps the client address); any flow
    is when its backend is its own client (hairpin, :func:`_rewrite`).
    """
    return external and (kind == FE_CLUSTER_IP or not uses_local(flags, kind, external))


@jit(inline="always")
def _target(i, v, defer, cip_slots, sp_flags, sp_set, sp_zone_row, zone_sets, zone_width, node_zone, loc_slots,
            lbn_off, lbn_node, node_pool, keys, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
            deferred):
    """Eligible set of row ``i`` whose frontend is ``v``, with its receiving node and whether the client is external.

    Writes what it decides on the way: ``REJECTED`` / ``DROPPED``, the service-port
    id, an external client's receiving node. The set is -1 where the flow is
    decided or is no service's, and for a ClientIP-affinity flow when ``defer``
    (the stateless pass; flagged in ``deferred`` when it has rows).
    """
    none = (np.int64(-1), np.int64(-1), False)
    d = dst_ip[i]
    if v < 0:
        if ht_find(cip_slots, np.uint64(d), -1) >= 0:
            verdict[i] = REJECTED                  # a ClusterIP, on a port it does not serve
        return none
    sp = v & 0xFFFFFFFF
    flags = sp_flags[sp]
    if defer and (flags & F_AFFINITY) != 0:
        if deferred.shape[0] > 0:
            deferred[i] = 1                        # ClientIP affinity: the stateful pass decides
        return none
    kind = (v >> 32) & 0xF
    rn = np.int64(src_node[i])
    external = rn < 0
    if external:
        rn = receiving_node(sp_flags, lbn_off, lbn_node, node_pool, sp, kind, (v >> 36) - 1,
                            flow_hash(keys[SALT_NODE], src_ip[i], d, src_port[i], dst_port[i], proto[i]))
        src_node[i] = rn
    service[i] = sp
    if (flags & F_HAS_ANY) == 0:
        verdict[i] = REJECTED                      # no endpoints at all
        return none
    if rn < 0:
        verdict[i] = DROPPED                       # no node to receive it
        return none
    s = eligible_set(sp_flags, sp_set, sp_zone_row, zone_sets, zone_width, node_zone, loc_slots,
                     sp, kind, external, rn)
    if s < 0:
        verdict[i] = DROPPED                       # Local policy, no local endpoint
        return none
    return s, rn, external


@jit(inline="always")
def _rewrite(i, k, rn, masq, set_backend, node_ip, src_ip, dnat_ip, dnat_port, snat_ip):
    """DNAT row ``i`` to backend ``k``; SNAT to node ``rn`` when ``masq`` or the backend is the client itself."""
    b = set_backend[np.uint64(k)]
    b_ip = np.uint32(b & np.uint64(0xFFFFFFFF))
    dnat_ip[i] = b_ip
    dnat_port[i] = np.uint16(b >> np.uint64(32))
    if masq or b_ip == src_ip[i]:
        snat_ip[i] = node_ip[rn]                   # masquerade to the receiving node


# The stateless pass walks each chunk in groups of GROUP flows, one level at a time
# (every flow's address filter, frontend prefetch and hash, then every flow's frontend
# probe, then every flow's eligible set and pick, then every flow's
# rewrite): the reads of a level are independent, and each level prefetches what
# the next one reads, so the CPU keeps a group's cache misses in flight together
# instead of one flow's chain of dependent misses after another. The last levels
# (Maglev's table slot, the backend, the rewrite) run one group late, after the
# next group's lookups, so a Maglev slot prefetched from DRAM has a whole group's
# work to arrive in (maglev 38 -> 43 M flows/s on one thread; the others unchanged).
# On service traffic the per-row arithmetic of a group runs as vector loops over the
# group's columns: the frontend keys and home slots, then the balancer's hashes
# (32-bit, see the module docstring); the lookups stay scalar.
# Rows are unsigned (``chunk_bounds``): for a signed index numba emits a
# negative-index wrap-around on every access, which costs more than the lookups here.


#: Rows of two groups (:func:`_stage_hash_chunk` keeps two in flight), a constant for :func:`stack_empty`.
_GROUP2 = 2 * GROUP


# The pass over a work item's rows is compiled once per balancer, with ``lb`` a constant (a literal
# argument: numba compiles one form per value): LLVM drops the other balancers' branches and keeps
# more of the pass in registers (random +6%, source-hash +4%, measured). Round-robin and
# least-connection run the same pass (it stops before the pick). It is a function of its own,
# compiled as the sequential kernels are (no reference counting, ``_nrt=False``), that the parallel
# loop calls: inlined into the ``prange`` body, numba's parallel passes made it the longest compile of
# a first run (9.5 s for the random balancer; 7 s now). Its scratch is on the stack
# (``stack_empty``): heap scratch passed in cost 9% of the pass.


@jit(_nrt=False)
def _stage_hash_chunk(T, lb, lo, hi, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
                      dnat_ip, dnat_port, snat_ip, deferred, pend, slots):
    """The parallel pass over rows ``[lo, hi)``: one work item of :func:`_stage_hash` (``lb`` a literal: one
    compiled form per balancer, see above).

    Random, source-hash and maglev are decided here. Under round-robin and
    least-connection the pass stops before the pick: it leaves each row's eligible backends in ``pend``
    (``first << 33 | count << 1 | masquerade``, -1 for none) for the counters of
    :func:`_pick_in_order`. Flows to ClientIP-affinity service ports are only
    flagged in ``deferred`` (when it has rows) for :func:`_stage`. An in-cluster
    client of a service port whose eligible set depends on nothing else takes
    the shortcut ``sp_span`` (one read for the set); every other flow goes
    through :func:`_target`.
    """
    (fe_slots, np_slots, nip_slots, cip_slots, sp_flags, sp_set, sp_zone_row, zone_sets, zone_width, node_zone,
     node_ip, loc_slots, lbn_off, lbn_node, set_off, _set_ep, _set_ip, _set_port, set_table, maglev,
     _affinity_ns, keys, addr_filter, sp_span, sp_table, set_backend, node_pool) = T
    m = maglev.shape[1]
    # ``slots``: ``maglev`` flat (one index to prefetch and read). The scratch, on the stack: ``key``,
    # ``home``, ``pick`` hold a group; ``at``, ``tab``, ``node`` two groups in flight: rows [o, o + GROUP)
    # for the group being looked up, the others for the group before it, whose backends are read a
    # group later (Maglev: its table slots, prefetched a whole group earlier, come from DRAM).
    key = stack_empty(GROUP, np.uint64)            # frontend key
    home = stack_empty(GROUP, np.int64)            # its home slot
    pick = stack_empty(GROUP, np.uint32)           # the balancer's hash
    at = stack_empty(_GROUP2, np.int64)            # home slot, then frontend (-1: none), then backend; -2: done
    tab = stack_empty(_GROUP2, np.int64)           # maglev: the table slot naming the backend, -1: none
    node = stack_empty(_GROUP2, np.int64)          # receiving node, ~node where it masquerades
    screen = True                              # read the address filter (see FILTER_SKIP)
    o = np.uint64(0)                           # this group's rows in at / tab / node
    pg = hi                                    # the group before, still to rewrite (hi: none)
    pge = hi
    for g in range(lo, hi + UGROUP, UGROUP):   # one step more than groups: it finishes the last
        ge = min(hi, g + UGROUP)
        live = 0
        if not screen:                         # service traffic: every row's frontend key and home slot
            for i in range(g, ge):             # in one vector loop (+9% on all-service traffic)
                fk = pack3(dst_ip[i], proto[i], dst_port[i])
                key[i - g] = fk
                home[i - g] = ht_home(fe_slots, fk)
        for i in range(g, ge):                 # level 1: address filter, prefetch the frontend slot
            h = np.int64(-2)
            d = dst_ip[i]
            if verdict[i] == PENDING and (not screen or maybe_service_address(addr_filter, d)):
                if screen:
                    fk = pack3(d, proto[i], dst_port[i])
                    key[i - g] = fk
                    h = ht_home(fe_slots, fk)
                else:
                    h = home[i - g]
                prefetch(fe_slots, 2 * h)
                live += 1
            at[o + i - g] = h
        if live == 0:
            screen = True                      # no flow of the group is kube-proxy's
        else:
            if lb != LB_ROUND_ROBIN and lb != LB_LEAST_CONN:   # the balancer's hash of every row: one
                for i in range(g, ge):                          # vector loop (``lb`` is a constant here)
                    pick[i - g] = pick_hash(lb, src_ip[i], dst_ip[i], src_port[i], dst_port[i], proto[i], keys)
            hits = 0
            for i in range(g, ge):             # level 2: frontend (prefetch its shortcut)
                h = at[o + i - g]
                if h == -2:
                    continue
                v = node_port_or(ht_probe(fe_slots, key[i - g], h, -1), np_slots, nip_slots, dst_ip[i],
                                 proto[i], dst_port[i])
                at[o + i - g] = v
                if v >= 0:
                    hits += 1
                    prefetch(sp_span, v & 0xFFFFFFFF)
            screen = hits * FILTER_SKIP < ge - g
            for i in range(g, ge):             # level 3: eligible set, pick (prefetch the backend)
                r = o + i - g
                v = at[r]
                if v == -2:
                    continue
                at[r] = -2
                rn = np.int64(src_node[i])
                span = sp_span[v & 0xFFFFFFFF] if v >= 0 and rn >= 0 else np.int64(-1)
                if span >= 0:                  # in-cluster client, the service port's one set
                    service[i] = v & 0xFFFFFFFF
                    first = span >> 32
                    size = span & 0xFFFFFFFF
                    tb = np.int64(sp_table[v & 0xFFFFFFFF]) if lb == LB_MAGLEV else np.int64(-1)
                    masq = False
                else:
                    s, rn, external = _target(i, v, True, cip_slots, sp_flags, sp_set, sp_zone_row,
                                              zone_sets, zone_width, node_zone, loc_slots, lbn_off, lbn_node,
                                              node_pool, keys, src_ip, dst_ip, src_port, dst_port, proto, src_node,
                                              verdict, service, deferred)
                    if s < 0:
                        continue
                    first = np.int64(set_off[s])
                    size = np.int64(set_off[s + 1]) - first
                    tb = np.int64(set_table[s]) if lb == LB_MAGLEV else np.int64(-1)
                    masq = masquerades(sp_flags[v & 0xFFFFFFFF], (v >> 32) & 0xF, external)
                if lb == LB_ROUND_ROBIN or lb == LB_LEAST_CONN:   # the counters pick, in trace order
                    pend[i] = (first << 33) | (size << 1) | (1 if masq else 0)
                    continue
                node[r] = ~rn if masq else rn
                if lb == LB_MAGLEV:            # the table slot now, the backend it names a group later
                    at[r] = first
                    t = np.int64(-1)
                    if tb >= 0:
                        t = tb * m + modn(pick[i - g], m)
                        prefetch(slots, t)
                    tab[r] = t
                    continue
                k = first + _hash_pick(lb, tb, size, pick[i - g], maglev)
                at[r] = k
                prefetch(set_backend, k)
        if pg < hi:                            # the group before: backends, rewrite
            po = np.uint64(GROUP) - o
            if lb == LB_MAGLEV:
                for r in range(po, po + (pge - pg)):   # level 3b (maglev): the backend its slot names
                    k = at[r]
                    if k >= 0 and tab[r] >= 0:
                        at[r] = k + slots[tab[r]]
            for i in range(pg, pge):           # level 4: rewrite
                r = po + i - pg
                k = at[r]
                if k < 0:
                    continue
                rn = node[r]
                _rewrite(i, k, ~rn if rn < 0 else rn, rn < 0, set_backend, node_ip, src_ip, dnat_ip, dnat_port,
                         snat_ip)
        if live > 0:
            pg = g
            pge = ge
            o = np.uint64(GROUP) - o
        else:
            pg = hi


@jit(inline="always")
def _stage_hash_items(T, lb, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service, dnat_ip,
                      dnat_port, snat_ip, deferred, pend):
    """The parallel loop of a balancer's pass: work items of ``chunk`` rows (inlined into each balancer's kernel)."""
    n = src_ip.shape[0]
    slots = T.maglev.ravel()
    for c in numba.prange((n + chunk - 1) // chunk):
        lo, hi = chunk_bounds(c, chunk, n)
        _stage_hash_chunk(T, lb, lo, hi, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
                          dnat_ip, dnat_port, snat_ip, deferred, pend, slots)


@pjit
def _stage_hash_random(T, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service, dnat_ip,
                       dnat_port, snat_ip, deferred, pend):
    _stage_hash_items(T, LB_RANDOM, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
                      dnat_ip, dnat_port, snat_ip, deferred, pend)


@pjit
def _stage_hash_source(T, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service, dnat_ip,
                       dnat_port, snat_ip, deferred, pend):
    _stage_hash_items(T, LB_SOURCE_HASH, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
                      dnat_ip, dnat_port, snat_ip, deferred, pend)


@pjit
def _stage_hash_maglev(T, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service, dnat_ip,
                       dnat_port, snat_ip, deferred, pend):
    _stage_hash_items(T, LB_MAGLEV, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
                      dnat_ip, dnat_port, snat_ip, deferred, pend)


@pjit
def _stage_hash_counted(T, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service, dnat_ip,
                        dnat_port, snat_ip, deferred, pend):
    _stage_hash_items(T, LB_ROUND_ROBIN, chunk, src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service,
                      dnat_ip, dnat_port, snat_ip, deferred, pend)


#: The parallel pass of each balancer, by balancer code.
_STAGE_HASH = (_stage_hash_random, _stage_hash_counted, _stage_hash_source, _stage_hash_maglev, _stage_hash_counted)


def _stage_hash(T: MapArrays, lb: int, chunk: int, *columns: np.ndarray) -> None:
    """The parallel pass (:func:`_stage_hash_chunk`) of balancer ``lb`` over ``columns``:
    ``src_ip, dst_ip, src_port, dst_port, proto, src_node, verdict, service, dnat_ip, dnat_port,
    snat_ip, deferred, pend``."""
    _STAGE_HASH[lb](T, chunk, *columns)


@jit(_nrt=False)
def _pick_in_order(T, S, lb, has_ts, life, pend, lo, hi, src_ip, ts, src_node, service, dnat_ip, dnat_port,
                   snat_ip, at):
    """The counters' pick for rows ``[lo, hi)`` that :func:`_stage_hash` left in ``pend``, in trace order.

    Round-robin advances the counter of (receiving node, service port) once a
    row; least-connection closes the connections that ended by the row's ``ts``,
    takes the first backend with the fewest open ones and opens one there. In
    groups of :data:`GROUP` rows the counters are prefetched first and the chosen
    backends before the rewrite, so their cache misses overlap. ``at``: scratch of
    :data:`GROUP` int64.

    Sequential kernels compile without numba's reference counting (``_nrt=False``:
    they allocate nothing): arrays pass through the inlined helpers with no atomic
    count per use, and the kernel compiles in seconds, not minutes as in a
    one-item parallel loop.
    """
    node_ip, set_backend, set_ep, set_table, maglev, keys = T.node_ip, T.set_backend, T.set_ep, T.set_table, \
        T.maglev, T.keys
    rr_dense, rr_keys, rr_vals, lc_dense, lc_keys, lc_vals = S.rr_dense, S.rr_keys, S.rr_vals, S.lc_dense, \
        S.lc_keys, S.lc_vals
    conn_end, conn_key, meta = S.conn_end, S.conn_key, S.meta
    rr_width = np.uint64(rr_dense.shape[1])
    lc_width = np.uint64(lc_dense.shape[1])
    dense = (rr_dense.shape[0] if lb == LB_ROUND_ROBIN else lc_dense.shape[0]) > 0
    for _ in range(1):
        for g in range(np.uint64(lo), np.uint64(hi), UGROUP):
            ge = min(np.uint64(hi), g + UGROUP)
            if dense:
                for i in range(g, ge):             # level 1: prefetch the counters
                    p = pend[i]
                    if p < 0:
                        continue
                    rn = np.uint64(src_node[i])
                    if lb == LB_ROUND_ROBIN:
                        prefetch(rr_dense, rn * rr_width + np.uint64(service[i]))
                    else:
                        first = p >> 33
                        prefetch(lc_dense, rn * lc_width + np.uint64(set_ep[first]))
                        prefetch(lc_dense, rn * lc_width + np.uint64(set_ep[first + ((p >> 1) & 0xFFFFFFFF) - 1]))
            for i in range(g, ge):                 # level 2: the pick, in order (prefetch the backend)
                p = pend[i]
                at[i - g] = -1
                if p < 0:
                    continue
                first = p >> 33
                rn = np.int64(src_node[i])
                t = ts[i] if has_ts else np.int64(0)
                if lb == LB_LEAST_CONN and has_ts:
                    _retire(lc_dense, lc_keys, lc_vals, conn_end, conn_key, meta, t)
                pos = _balance(lb, 0, first, (p >> 1) & 0xFFFFFFFF, rn, np.int64(service[i]), 0, 0, 0, 0, 0, keys,
                               set_table, maglev, set_ep, rr_dense, rr_keys, rr_vals, lc_dense, lc_keys, lc_vals, meta)
                if lb == LB_LEAST_CONN:
                    _open(lc_dense, lc_keys, lc_vals, conn_end, conn_key, meta, rn, np.int64(set_ep[first + pos]),
                          t + life[i], has_ts)
                k = first + pos
                at[i - g] = k
                prefetch(set_backend, k)
            for i in range(g, ge):                 # level 3: rewrite
                k = at[i - g]
                if k >= 0:
                    _rewrite(i, k, np.int64(src_node[i]), (pend[i] & 1) != 0, set_backend, node_ip, src_ip, dnat_ip,
                             dnat_port, snat_ip)


@jit(_nrt=False)
def _stage(T, S, lb, has_ts, life, rows, src_ip, dst_ip, src_port, dst_port, proto, ts,
           src_node, verdict, service, dnat_ip, dnat_port, snat_ip, no_defer):
    """The stateful pass: the rows listed in ``rows``, in that order, reading and writing the balancer state ``S``.

    Every row under least-connection when some service port has ClientIP
    affinity (affinity rows and the others open and close connections in one
    time order); otherwise the affinity rows :func:`_stage_hash` deferred.
    ``no_defer``: an empty uint8 array. Compiled as :func:`_pick_in_order` is.
    """
    (fe_slots, np_slots, nip_slots, cip_slots, sp_flags, sp_set, sp_zone_row, zone_sets, zone_width, node_zone,
     node_ip, loc_slots, lbn_off, lbn_node, set_off, set_ep, _set_ip, _set_port, set_table, maglev,
     affinity_ns, keys, addr_filter, _sp_span, _sp_table, set_backend, node_pool) = T
    rr_dense, rr_keys, rr_vals, lc_dense, lc_keys, lc_vals, aff_keys, aff_vals, conn_end, conn_key, meta = S
    n_nodes = np.int64(node_ip.shape[0])               # affinity keys: (service port, node, client)
    for _ in range(1):                                 # one thread walks the rows in trace order
        for r in range(rows.shape[0]):
            i = np.uint64(rows[r])                     # unsigned: no wrap-around per access
            if verdict[i] != PENDING:
                continue
            d = dst_ip[i]
            if not maybe_service_address(addr_filter, d):
                continue                               # no frontend, node address or ClusterIP: not kube-proxy's
            v = frontend_of(fe_slots, np_slots, nip_slots, d, proto[i], dst_port[i])
            s, rn, external = _target(i, v, False, cip_slots, sp_flags, sp_set, sp_zone_row, zone_sets,
                                      zone_width, node_zone, loc_slots, lbn_off, lbn_node, node_pool, keys, src_ip,
                                      dst_ip, src_port, dst_port, proto, src_node, verdict, service, no_defer)
            if s < 0:
                continue
            sp = v & 0xFFFFFFFF
            flags = sp_flags[sp]
            affinity = (flags & F_AFFINITY) != 0
            s_ip = src_ip[i]
            lo = np.int64(set_off[s])
            n = np.int64(set_off[s + 1]) - lo
            t = ts[i] if has_ts else np.int64(0)
            if lb == LB_LEAST_CONN and has_ts:
                _retire(lc_dense, lc_keys, lc_vals, conn_end, conn_key, meta, t)
            pos = np.int64(-1)
            slot = np.int64(0)
            hit = False
            akey = EMPTY
            if affinity:                               # the DNAT node's own entry (rn: as its counters)
                akey = affinity_key(sp, rn, n_nodes, s_ip)
                slot = ht_place(aff_keys, akey)
                if aff_keys[slot] == akey and (not has_ts or t - aff_vals[slot, 1] <= affinity_ns[sp]):
                    ep = aff_vals[slot, 0]
                    for j in range(n):
                        if set_ep[lo + j] == ep:
                            pos = j
                            hit = True
                            break
            if pos < 0:
                pos = _balance(lb, s, lo, n, rn, sp, s_ip, d, src_port[i], dst_port[i], proto[i], keys, set_table,
                               maglev, set_ep, rr_dense, rr_keys, rr_vals, lc_dense, lc_keys, lc_vals, meta)
            if affinity:
                if aff_keys[slot] != akey:
                    aff_keys[slot] = akey
                    meta[_AFF_USED] += 1
                end = t + life[i]                      # in use until the connection ends
                if hit and aff_vals[slot, 1] > end:
                    end = aff_vals[slot, 1]
                aff_vals[slot, 0] = set_ep[lo + pos]
                aff_vals[slot, 1] = end
            if lb == LB_LEAST_CONN:
                _open(lc_dense, lc_keys, lc_vals, conn_end, conn_key, meta, rn, np.int64(set_ep[lo + pos]),
                      t + life[i], has_ts)
            _rewrite(i, lo + pos, rn, masquerades(flags, (v >> 32) & 0xF, external), set_backend, node_ip, src_ip,
                     dnat_ip, dnat_port, snat_ip)
