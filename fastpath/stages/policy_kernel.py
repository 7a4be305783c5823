"""The NetworkPolicy stage's kernel: a few array reads a flow (tables: :mod:`fastpath.stages.policy`).

Per flow (:func:`_policy_rows`): the destination pod by address, then the egress
check of the source pod and the ingress check of the destination pod, each one pass
over the subject's run in the policy map and a scan of a few port ranges. Exempt: a
pod to itself, and a pod and its own node (either way).

Compile time counts (every kernel compiles once on a fresh machine): the per-row
kernel and the per-side lookup are plain sequential functions without reference
counting; only the small helpers are inlined, and the parallel loop of
:func:`_policy_kernel` holds one call.
"""
from __future__ import annotations

import numba
import numpy as np

from .._jit import chunk_bounds, jit, pjit, prefetch, stack_empty
from ..codes import DENIED, PENDING, R_POLICY_EGRESS, R_POLICY_INGRESS
from ..tables.exact import at_find, at_home, at_probe, ht_find

#: Entries of a subject read one by one; a longer run is binary-searched.
SCAN = 16
#: Words of a subject's row in a policy map's ``rows`` (64 bytes, one cache line):
#: :data:`ROW_KEYS` keys (-2 unused), their port sets, then the fallback port sets for
#: a peer that is not a pod (-1: the run is longer, read the CSR map) and for a pod.
ROW = 16
#: Keys a row holds.
ROW_KEYS = 7
#: Flows a level of :func:`_policy_rows` walks before the next level reads what it prefetched: long enough
#: that the prefetches land first (with the shared :data:`~fastpath._jit.GROUP` of 32 the pod-slot and record
#: reads waited on them: 27.7 M flows/s on one thread against 31–33 with 256).
PGROUP = 256
UPGROUP = np.uint64(PGROUP)


@jit(_nrt=False)
def _address_class(starts, cls, ip):
    """Class of the interval holding ``ip`` (binary search over ``starts``; ``starts[0] == 0``).

    A call, not inlined: only a peer that is not a pod (a node, an outside address) needs it.
    """
    lo = 0
    hi = starts.shape[0]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if starts[mid] <= ip:
            lo = mid
        else:
            hi = mid
    return np.int64(cls[lo])


@jit(_nrt=False, inline="always")
def _allowed_by(ps_off, ps_lo, ps_hi, ps_pol, a, b, key):
    """The first policy (input order) whose range in port set ``a`` or ``b`` (-1: none) holds ``key``; else -3.

    Every range of a set is read (a set has a few): no exit branch inside the loop.
    """
    best = np.int64(0x7FFFFFFF)
    for k in range(np.uint64(ps_off[a]), np.uint64(ps_off[a + 1])):
        hit = (ps_lo[k] <= key) & (key <= ps_hi[k])
        best = min(best, np.int64(ps_pol[k]) if hit else np.int64(0x7FFFFFFF))
    if b >= 0:
        for k in range(np.uint64(ps_off[b]), np.uint64(ps_off[b + 1])):
            hit = (ps_lo[k] <= key) & (key <= ps_hi[k])
            best = min(best, np.int64(ps_pol[k]) if hit else np.int64(0x7FFFFFFF))
    return best if best != 0x7FFFFFFF else np.int64(-3)


@jit(_nrt=False, inline="always")
def _lookup(m_key, m_ps, lo, hi, k1, k2, k3):
    """Port sets under keys ``k1``, ``k2``, ``k3`` in a subject's sorted run ``[lo, hi)`` (-1 where absent).

    A short run is read whole, one pass for the three keys; a long one is
    binary-searched (:func:`_lookup_long`, a call: rare).
    """
    if hi - lo > np.uint64(SCAN):
        return _lookup_long(m_key, m_ps, lo, hi, k1, k2, k3)
    r1 = np.int64(-1)
    r2 = np.int64(-1)
    r3 = np.int64(-1)
    for k in range(lo, hi):
        kk = m_key[k]
        p = np.int64(m_ps[k])
        r1 = p if kk == k1 else r1
        r2 = p if kk == k2 else r2
        r3 = p if kk == k3 else r3
    return r1, r2, r3


@jit(_nrt=False)
def _lookup_long(m_key, m_ps, lo, hi, k1, k2, k3):
    """:func:`_lookup` by binary search, for a run longer than :data:`SCAN`."""
    return _bsearch(m_key, m_ps, lo, hi, k1), _bsearch(m_key, m_ps, lo, hi, k2), _bsearch(m_key, m_ps, lo, hi, k3)


@jit(_nrt=False, inline="always")
def _bsearch(m_key, m_ps, lo, hi, want):
    while lo < hi:
        mid = (lo + hi) >> np.uint64(1)
        if m_key[mid] < want:
            lo = mid + np.uint64(1)
        else:
            hi = mid
    if lo < m_key.shape[0] and m_key[lo] == want:
        return np.int64(m_ps[lo])
    return np.int64(-1)


@jit(_nrt=False)
def _side(m_off, m_key, m_ps, fallback, has_addr, s, peer, n_peer, addr_base, peer_addr, pod_rec,
          addr_start, addr_cls, ip, key, ps_off, ps_lo, ps_hi, ps_pol):
    """The policy allowing ``key`` for subject ``s`` and the other end (``peer`` a pod, or -1 and ``ip``), else -3.

    A pod peer: its class's entry (every rule that applies to it, folded) if the subject
    has one, else its namespace's entry or the subject's any-pod set, and with ipBlock
    rules its address class's entry too. Not a pod: the address class's entry, else the
    subject's any-peer set.
    """
    lo = np.uint64(m_off[s])
    hi = np.uint64(m_off[s + 1])
    none = np.uint32(0xFFFFFFFF)
    if peer >= 0:
        pc = np.int64(pod_rec[4 * peer + 2])
        k1 = np.uint32(pc)
        k2 = np.uint32(n_peer + np.int64(pod_rec[4 * peer + 3]))
        k3 = np.uint32(addr_base + np.int64(peer_addr[pc])) if has_addr[s] else none
    else:
        k1 = none
        k2 = none
        k3 = np.uint32(addr_base + _address_class(addr_start, addr_cls, ip))
    r1, r2, r3 = _lookup(m_key, m_ps, lo, hi, k1, k2, k3)
    if peer >= 0:
        if r1 >= 0:                                  # the class's entry: every rule folded
            first, second = r1, np.int64(-1)
        else:                                        # its namespace's (or the any-pod set), and its address's
            first, second = (r2 if r2 >= 0 else np.int64(fallback[2 * s + 1])), r3
    else:
        first, second = (r3 if r3 >= 0 else np.int64(fallback[2 * s])), np.int64(-1)
    return _allowed_by(ps_off, ps_lo, ps_hi, ps_pol, first, second, key)


@jit(_nrt=False, inline="always")
def _side_row(rows, m_off, m_key, m_ps, fallback, has_addr, s, peer, n_peer, addr_base, peer_addr, pod_rec,
              addr_start, addr_cls, ip, key, ps_off, ps_lo, ps_hi, ps_pol):
    """:func:`_side` for a pod peer, from subject ``s``'s row of the map (:data:`ROW` words).

    A row holds up to :data:`ROW_KEYS` keys, their port sets (as ``first range << 8 |
    count``: no ``ps_off`` read), and the two fallback sets; all keys are compared (no
    branch per entry). A longer run (first fallback < 0) or a peer that is not a pod
    takes :func:`_side`.
    """
    if rows[s, 2 * ROW_KEYS] < 0 or peer < 0:
        return _side(m_off, m_key, m_ps, fallback, has_addr, s, peer, n_peer, addr_base, peer_addr, pod_rec,
                     addr_start, addr_cls, ip, key, ps_off, ps_lo, ps_hi, ps_pol)
    pc = np.int64(pod_rec[4 * peer + 2])
    k1 = pc
    k2 = n_peer + np.int64(pod_rec[4 * peer + 3])
    k3 = addr_base + np.int64(peer_addr[max(pc, 0)]) if pc >= 0 else np.int64(-3)
    r1 = np.int64(-1)
    r2 = np.int64(-1)
    r3 = np.int64(-1)
    for k in range(ROW_KEYS):
        kk = np.int64(rows[s, k])
        p = np.int64(rows[s, ROW_KEYS + k])
        r1 = p if kk == k1 else r1
        r2 = p if kk == k2 else r2
        r3 = p if kk == k3 else r3
    first = r1 if r1 >= 0 else (r2 if r2 >= 0 else np.int64(rows[s, 2 * ROW_KEYS + 1]))
    second = np.int64(0) if r1 >= 0 else (r3 if r3 >= 0 else np.int64(0))
    best = np.int64(0x7FFFFFFF)
    for k in range(np.uint64(first >> 8), np.uint64((first >> 8) + (first & 255))):
        hit = (ps_lo[k] <= key) & (key <= ps_hi[k])
        best = min(best, np.int64(ps_pol[k]) if hit else np.int64(0x7FFFFFFF))
    for k in range(np.uint64(second >> 8), np.uint64((second >> 8) + (second & 255))):
        hit = (ps_lo[k] <= key) & (key <= ps_hi[k])
        best = min(best, np.int64(ps_pol[k]) if hit else np.int64(0x7FFFFFFF))
    return best if best != 0x7FFFFFFF else np.int64(-3)


@jit(_nrt=False)
def _policy_rows(lo, hi, src_ip, proto, src_pod, dnat_ip, dnat_port, snat_ip,
                 pod_slots, node_slots, pod_node, pod_rec, peer_addr, n_peer, addr_base,
                 in_rows, eg_rows, in_off, in_key, in_ps, eg_off, eg_key, eg_ps, fb_in, fb_eg, ad_in, ad_eg,
                 ps_off, ps_lo, ps_hi, ps_pol, addr_start, addr_cls,
                 verdict, reason, dst_pod, dst_node, last_in, last_eg):
    """Decide the PENDING flows of rows ``[lo, hi)``: egress of the source pod, ingress of the destination pod.

    Walks the rows in groups of :data:`PGROUP`, one level at a time (the destination
    pod's slot; the pod and both pods' records; each end's subject and the other end,
    exemptions; the decision), prefetching what the next level reads. Writes ``DENIED``
    with the reason, and ``dst_pod``/``dst_node`` of a denied flow's pod;
    ``last_in``/``last_eg`` get the allowing policy (or NOT_ISOLATED -1, EXEMPT -2,
    NO_RULE -3). Its scratch (``dp``, ``se``, ``si``, ``qi``: :data:`PGROUP` each) is on the stack.
    ``pod_rec`` ends with a blank record and each map's ``rows`` with a blank row, read
    in place of a branch where a flow has no such pod or subject.

    Sequential, without reference counting (``_nrt=False``: it allocates nothing on the
    heap), so it compiles in seconds; :func:`_policy_kernel` runs it on chunks in parallel.
    """
    dp = stack_empty(PGROUP, np.int64)                  # the destination pod's slot, then the pod
    se = stack_empty(PGROUP, np.int64)                  # the source's egress subject row
    si = stack_empty(PGROUP, np.int64)                  # the destination's ingress subject row
    qi = stack_empty(PGROUP, np.int64)                  # the pod behind the source address seen, or -1
    n_pods = pod_rec.shape[0] // 4 - 1                  # the blank record's index
    n_in = in_rows.shape[0] - 1                          # the blank rows'
    n_eg = eg_rows.shape[0] - 1
    for g in range(lo, hi, UPGROUP):
        ge = min(hi, g + UPGROUP)
        for j in range(g, ge):                       # level 1: the destination pod's slot
            last_in[j] = -1
            last_eg[j] = -1
            if verdict[j] == PENDING:
                h = at_home(pod_slots, dnat_ip[j])
                dp[j - g] = h
                prefetch(pod_slots, h)
            else:
                dp[j - g] = -2
        for j in range(g, ge):                       # level 2: the pod, and both pods' records
            p = dp[j - g]
            if p == -2:
                continue
            p = at_probe(pod_slots, dnat_ip[j], p, -1)
            dp[j - g] = p
            if p >= 0:
                prefetch(pod_rec, 4 * p)
                prefetch(pod_node, p)                # a denied flow's node
            sp = np.int64(src_pod[j])
            if sp >= 0:
                prefetch(pod_rec, 4 * sp)
        for j in range(g, ge):                       # level 3: subjects, the ends they see, exemptions
            d = dp[j - g]
            if d == -2:
                continue
            sp = np.int64(src_pod[j])
            spx = sp if sp >= 0 else n_pods          # a pod's record, else the blank one (no branch)
            dx = d if d >= 0 else n_pods
            s_e = np.int64(pod_rec[4 * spx + 1])
            s_i = np.int64(pod_rec[4 * dx])
            seen = snat_ip[j]
            q = sp
            if seen != src_ip[j]:                    # masqueraded: the pod (if any) behind the address seen
                q = at_find(pod_slots, seen, -1)
            if d < 0 and s_e >= 0:
                if ht_find(node_slots, np.uint64(dnat_ip[j]), -1) == np.int64(pod_node[sp]):
                    s_e = -2                         # to the pod's own node
            if q < 0 and s_i >= 0:
                if ht_find(node_slots, np.uint64(seen), -1) == np.int64(pod_node[d]):
                    s_i = -2                         # from the pod's own node
            hair = (sp >= 0) & (sp == d)             # a pod to itself
            s_e = np.int64(-2) if hair else s_e
            s_i = np.int64(-2) if hair else s_i
            se[j - g] = s_e
            si[j - g] = s_i
            qi[j - g] = q
            prefetch(eg_rows, ROW * (s_e if s_e >= 0 else n_eg))
            prefetch(in_rows, ROW * (s_i if s_i >= 0 else n_in))
        for j in range(g, ge):                       # level 4: the decision
            d = dp[j - g]
            if d == -2:
                continue
            key = (np.uint32(proto[j]) << np.uint32(16)) | np.uint32(dnat_port[j])
            s = se[j - g]
            a = s
            if s >= 0:
                a = _side_row(eg_rows, eg_off, eg_key, eg_ps, fb_eg, ad_eg, s, d, n_peer, addr_base, peer_addr, pod_rec,
                          addr_start, addr_cls, dnat_ip[j], key, ps_off, ps_lo, ps_hi, ps_pol)
            last_eg[j] = a
            if a == -3:
                verdict[j] = DENIED
                reason[j] = R_POLICY_EGRESS
                if d >= 0:
                    dst_pod[j] = d
                    dst_node[j] = pod_node[d]
                continue
            s = si[j - g]
            a = s
            if s >= 0:
                a = _side_row(in_rows, in_off, in_key, in_ps, fb_in, ad_in, s, qi[j - g], n_peer, addr_base, peer_addr,
                          pod_rec, addr_start, addr_cls, snat_ip[j], key, ps_off, ps_lo, ps_hi, ps_pol)
            last_in[j] = a
            if a == -3:
                verdict[j] = DENIED
                reason[j] = R_POLICY_INGRESS
                dst_pod[j] = d
                dst_node[j] = pod_node[d]




@pjit
def _policy_kernel(src_ip, proto, src_pod, dnat_ip, dnat_port, snat_ip,
                   pod_slots, node_slots, pod_node, pod_rec, peer_addr, n_peer, addr_base,
                   in_rows, eg_rows, in_off, in_key, in_ps, eg_off, eg_key, eg_ps, fb_in, fb_eg, ad_in, ad_eg,
                   ps_off, ps_lo, ps_hi, ps_pol, addr_start, addr_cls,
                   verdict, reason, dst_pod, dst_node, last_in, last_eg, chunk):
    """Decide every PENDING flow (:func:`_policy_rows`), chunks of ``chunk`` rows in parallel.

    The parallel loop only calls the sequential kernel: a small loop body compiles fast.
    """
    n = src_ip.shape[0]
    chunks = (n + chunk - 1) // chunk
    for c in numba.prange(chunks):
        lo, hi = chunk_bounds(c, chunk, n)
        _policy_rows(lo, hi, src_ip, proto, src_pod, dnat_ip, dnat_port, snat_ip,
                     pod_slots, node_slots, pod_node, pod_rec, peer_addr, n_peer, addr_base,
                     in_rows, eg_rows, in_off, in_key, in_ps, eg_off, eg_key, eg_ps, fb_in, fb_eg, ad_in, ad_eg,
                     ps_off, ps_lo, ps_hi, ps_pol, addr_start, addr_cls,
                     verdict, reason, dst_pod, dst_node, last_in, last_eg)
