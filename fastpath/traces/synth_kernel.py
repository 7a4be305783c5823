"""The trace generator's kernel: every row drawn on its own, from a counter-based random stream.

Row ``r`` of a trace made with key ``K`` (from the seed) has the stream
``base = mix(K + r * GOLDEN)``; its draw number ``s`` (a *slot*, fixed per purpose:
:data:`S_KIND`, :data:`S_SRC`, ...) is ``mix(base + s * GOLDEN)``, its top 53 bits a
uniform in [0, 1). ``mix`` is SplitMix64's finalizer. A row's values therefore
depend on the seed, its index, the mix and the cluster only: never on the batch
size, the thread count or the order rows are made in, so the kernel runs rows in
parallel and any range of rows can be made alone.

Each row is drawn as :mod:`fastpath.traces.synth` describes: a kind by its share,
then within the kind (clients uniform over the pods, destinations by popularity
through alias tables, Poisson arrivals, lognormal sizes with a Pareto tail). The
slow twin is ``tests/naive/synth.py`` (plain Python integers and ``math``).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .._jit import chunk_bounds, jit, pjit, prefetch, stack_empty
from ..tables.exact import at_find, at_home, ht_find, ht_home

#: SplitMix64's increment (2**64 / golden ratio): the step between rows' streams and draws.
GOLDEN = 0x9E3779B97F4A7C15
_GOLDEN = np.uint64(GOLDEN)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Draw slots: which of a row's uniforms serves which purpose.
S_KIND = 0        #: the kind
S_SRC = 1         #: the client (pod, node, internet address)
S_A = 2           #: the kind's first choice (service or pod, listening or not, missing name, ...)
S_B = 3           #: the kind's second choice (the frontend, the pod port, the name, ...)
S_C = 4           #: a third (a declared port, a client of the name's namespace, a port)
S_REDRAW = 5      #: S_REDRAW .. S_REDRAW + REDRAWS - 1: redraws of a value that collides
REDRAWS = 8
S_SPORT = 13      #: the ephemeral source port
S_GAP = 14        #: the gap since the previous arrival (exponential)
S_NORM = 15       #: the size's normal deviate (by its quantile, :func:`normal_quantile`)
S_ELEPHANT = 16   #: whether the size is drawn from the Pareto tail
S_PARETO = 17     #: the tail's draw
S_LIFE = 18       #: the connection's lifetime (duration_mix)
S_STREAM = 19     #: whether it is a long-lived stream
S_STREAM_LEN = 20  #: a stream's lifetime
SLOTS = 21

# Kinds, in :attr:`TraceMix.KINDS` order.
K_EAST_WEST, K_NORTH_SOUTH, K_LOCALHOST, K_BY_NAME, K_EGRESS, K_HOST, K_TO_NOTHING = range(7)
# Alias tables, in the order of ``ch_off`` (:class:`fastpath.traces.synth._Generator`).
T_KIND, T_CI, T_NS, T_NAME, T_EGRESS = range(5)

# Knobs, in the order of the ``knobs`` float array (:func:`fastpath.traces.synth._knob_array`).
(N_VIA_SERVICE, N_LISTENING, N_MISSING, N_GAP_NS, N_SIGMA, N_LOG_MEDIAN, N_ELEPHANTS, N_ALPHA,
 N_ELEPHANT_MIN, N_LONG_LIVED, N_TCP_ALPHA, N_TCP_SCALE, N_UDP_ONE_SHOT, N_STREAM_LO, N_STREAM_HI) = range(15)
KNOBS = 15

LOCALHOST = 0x7F000001
INTERNET_LO, INTERNET_HI = 0x0B000000, 0x64000000
EPHEMERAL_LO, EPHEMERAL_HI = 32768, 60999
MSS = 1448


@jit(inline="always")
def _mix(z):
    """SplitMix64's finalizer: a bijection of uint64 that scatters every input bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@jit(inline="always")
def _unit(base, slot):
    """Uniform in [0, 1): draw ``slot`` of the row whose stream is ``base``."""
    return np.float64(_mix(base + np.uint64(slot) * _GOLDEN) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@jit(inline="always")
def _below(u, n):
    """``floor(u * n)`` kept below ``n`` (the product can round up to it); 0 for ``n <= 0``."""
    return min(np.int64(u * n), np.int64(n) - 1) if n > 0 else np.int64(0)


@jit(inline="always")
def _alias(ch, off, t, u):
    """Index drawn from alias table ``t``, and the residual.

    ``ch`` holds every table's ``(prob, alias)`` pairs interleaved (one cache line a
    draw), table ``t`` at pairs ``off[t] .. off[t + 1]``. The residual is the draw's
    fraction rescaled to [0, 1): uniform and independent of the index, so a second
    choice inside the entry costs no second draw.
    """
    lo = off[t]
    k = off[t + 1] - lo
    x = u * k
    i = min(np.int64(x), k - 1)
    f = x - i
    p = ch[2 * (lo + i)]
    if f < p:
        return i, min(f / p, 0.9999999999999999)
    return np.int64(ch[2 * (lo + i) + 1]), min((f - p) / (1.0 - p), 0.9999999999999999)


@jit(inline="always")
def _exponential(u):
    return -math.log1p(-u)


@jit(inline="always")
def _lomax(u, alpha):
    """numpy's ``pareto(alpha)`` (a Lomax deviate) by inversion."""
    return math.expm1(-math.log1p(-u) / alpha)


# Peter Acklam's rational approximation of the normal quantile (relative error below 1.2e-9):
# its central region needs no logarithm, so a lognormal size costs one exp.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
P_LOW = 0.02425


@jit(inline="always")
def _tail(q):
    return ((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
            / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0))


@jit(inline="always")
def normal_quantile(u):
    """The standard normal deviate at probability ``u + 2**-54`` (in (0, 1): both tails finite)."""
    p = u + 5.551115123125783e-17
    if p < P_LOW:
        return _tail(math.sqrt(-2.0 * math.log(p)))
    if p > 1.0 - P_LOW:
        return -_tail(math.sqrt(-2.0 * math.log1p(-p)))
    q = p - 0.5
    r = q * q
    return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0))


@jit(inline="always")
def _pack(ip, port, proto):
    """A destination as the packed tables hold it: ``ip << 32 | port << 16 | proto << 8``."""
    return (np.uint64(ip) << np.uint64(32)) | (np.uint64(port) << np.uint64(16)) | (np.uint64(proto) << np.uint64(8))


@jit(_nrt=False)
def _rows(lo, hi, start, key, knobs, ch, ch_off, cli_ip, cli_pstart, cli_pcount, cli_port, cli_proto,
          ns_members, ns_start, ns_count, pp, listen, pod_slots, host_ip, cidr_net, cidr_size, ci, ci_keys, ci_addrs,
          nsf, node_addr, nm, missing_codes, egress_ip, egress_cum, egress_port, egress_proto, to_nothing_ways,
          src, dst, sport, dport, proto, gap, code, nbytes, packets, duration):
    """Rows ``start + lo .. start + hi`` into positions ``lo .. hi`` of the outputs (sequential).

    Walks the rows :data:`WALK` at a time: first each row's stream, kind and the first
    table line it will read (the client, the frontend's or name's alias entry, the pod
    port, the first probe of a set), prefetched, so the walk's cache misses overlap; then
    the rows sorted by kind (a counting sort), so each kind's code runs for a run of rows
    and its branches are predicted. Its scratch is on the stack: ``bases`` (uint64, :data:`WALK`)
    and ``order`` (int64, ``2 * WALK + 8``: the sorted rows, each row's kind, the counts).

    Packed tables (one read an entry): ``pp``/``ci`` (pod ports, ClusterIP frontends) and
    ``nsf`` (North-South segments, the low bit set for a NodePort) as :func:`_pack` makes
    them; ``nm`` (names) as pairs ``code << 32 | port << 16 | proto << 8``, ``namespace + 1``.
    ``listen``/``ci_keys``: exact-match sets of ``ip << 16 | port``; ``pod_slots``: pods
    by address (:mod:`fastpath.tables.exact`).
    """
    n_cli = cli_ip.shape[0]
    n_pp = pp.shape[0]
    n_ci = ch_off[T_CI + 1] - ch_off[T_CI]
    n_nm = ch_off[T_NAME + 1] - ch_off[T_NAME]
    svc_share = knobs[N_VIA_SERVICE] if n_pp > 0 else 1.0
    svc_share = svc_share if n_ci > 0 else 0.0
    n_ways = to_nothing_ways.shape[0]
    with_life = duration.shape[0] > 0
    bases = stack_empty(WALK, np.uint64)
    order = stack_empty(_ORDER, np.int64)
    KS = WALK                             # order[KS + i]: row i's kind; order[CS + k]: counts
    CS = 2 * WALK
    for g in range(lo, hi, np.uint64(WALK)):
        ge = min(hi, g + np.uint64(WALK))
        for k in range(8):
            order[CS + k] = 0
        for j in range(g, ge):            # first the group's first reads, prefetched: their misses overlap
            base = _mix(key + (np.uint64(start) + j) * _GOLDEN)
            bases[j - g] = base
            kind, _ = _alias(ch, ch_off, T_KIND, _unit(base, S_KIND))
            order[KS + j - g] = kind
            order[CS + kind + 1] += 1
            u_a = _unit(base, S_A)
            u_b = _unit(base, S_B)
            if kind != K_NORTH_SOUTH and kind != K_HOST:
                prefetch(cli_ip, _below(_unit(base, S_SRC), n_cli))
            if kind == K_EAST_WEST or kind == K_HOST:
                if u_a < svc_share:
                    prefetch(ch, 2 * (ch_off[T_CI] + _below(u_b, n_ci)))
                else:
                    prefetch(pp, _below(u_b, n_pp))
            elif kind == K_BY_NAME and n_nm > 0:
                prefetch(ch, 2 * (ch_off[T_NAME] + _below(u_b, n_nm)))
            elif kind == K_TO_NOTHING:                 # the first probe of the set the value must miss
                way = to_nothing_ways[_below(u_a, n_ways)]
                u_c = _unit(base, S_C)
                if way == 0:
                    cidr = _below(u_b, cidr_net.shape[0])
                    a = cidr_net[cidr] + 1 + _below(u_c, cidr_size[cidr] - 2)
                    prefetch(pod_slots, at_home(pod_slots, np.uint32(a)))
                elif way == 1:
                    d = np.int64(pp[_below(u_b, n_pp)] >> np.uint64(32))
                    prefetch(listen, 2 * ht_home(listen, np.uint64((d << 16) | (1 + _below(u_c, 65535)))))
        for k in range(1, 8):             # the group's rows by kind (counting sort): each kind's
            order[CS + k] += order[CS + k - 1]    # code runs for a run of rows, its branches predicted
        for i in range(ge - g):
            kind = order[KS + i]
            order[order[CS + kind]] = i
            order[CS + kind] += 1
        for t in range(ge - g):           # then each row, its first reads in cache
            i = order[t]
            j = g + np.uint64(i)
            base = bases[i]
            kind = order[KS + i]
            u_src = _unit(base, S_SRC)
            u_a = _unit(base, S_A)
            u_b = _unit(base, S_B)
            u_c = _unit(base, S_C)
            s = np.uint32(0)
            e = np.uint64(0)                   # the destination, packed
            c_name = np.int32(-1)
            if kind == K_EAST_WEST or kind == K_HOST:
                if kind == K_EAST_WEST:
                    s = cli_ip[_below(u_src, n_cli)]
                else:
                    s = host_ip[_below(u_src, host_ip.shape[0])]
                if u_a < svc_share:
                    f, _ = _alias(ch, ch_off, T_CI, u_b)
                    e = ci[f]
                else:
                    e = pp[_below(u_b, n_pp)]
            elif kind == K_NORTH_SOUTH:
                s = np.uint32(INTERNET_LO + _below(u_src, INTERNET_HI - INTERNET_LO))
                f, v = _alias(ch, ch_off, T_NS, u_a)
                e = nsf[f]
                if e & np.uint64(1):                              # a NodePort: any node address
                    e = (np.uint64(node_addr[_below(v, node_addr.shape[0])]) << np.uint64(32)) \
                        | (e & np.uint64(0xFFFFFF00))
            elif kind == K_LOCALHOST:
                c = _below(u_src, n_cli)
                s = cli_ip[c]
                if u_a < knobs[N_LISTENING] and cli_pcount[c] > 0:
                    k = cli_pstart[c] + _below(u_b, cli_pcount[c])
                    e = _pack(LOCALHOST, cli_port[k], cli_proto[k])
                else:
                    held = np.int64(s) << 16
                    p16 = 1024 + _below(u_b, 64512)
                    for t in range(REDRAWS):
                        if ht_find(listen, np.uint64(held | p16), -1) < 0:
                            break
                        p16 = 1024 + _below(_unit(base, S_REDRAW + t), 64512)
                    e = _pack(LOCALHOST, p16, 6)
            elif kind == K_BY_NAME:
                c = _below(u_src, n_cli)
                if (u_a < knobs[N_MISSING] or n_nm == 0) and missing_codes.shape[0] > 0:
                    c_name = missing_codes[_below(u_b, missing_codes.shape[0])]
                    e = _pack(0, 80, 6)
                else:
                    f, _ = _alias(ch, ch_off, T_NAME, u_b)
                    w = nm[2 * f]
                    c_name = np.int32(w >> np.uint64(32))
                    e = w & np.uint64(0xFFFFFFFF)
                    ns = np.int64(nm[2 * f + 1]) - 1
                    if ns >= 0:                                  # a short name: a client of its namespace
                        c = ns_members[ns_start[ns] + _below(u_c, ns_count[ns])]
                s = cli_ip[c]
            elif kind == K_EGRESS:
                s = cli_ip[_below(u_src, n_cli)]
                f, _ = _alias(ch, ch_off, T_EGRESS, u_a)
                x = u_b * egress_cum[egress_cum.shape[0] - 1]
                k = 0
                while k < egress_cum.shape[0] - 1 and egress_cum[k] <= x:
                    k += 1
                e = _pack(egress_ip[f], egress_port[k], egress_proto[k])
            else:                                                # K_TO_NOTHING
                s = cli_ip[_below(u_src, n_cli)]
                way = to_nothing_ways[_below(u_a, n_ways)]
                if way == 0:                                     # a pod-CIDR address no pod holds, port 80
                    cidr = _below(u_b, cidr_net.shape[0])
                    net = cidr_net[cidr]
                    room = cidr_size[cidr] - 2
                    a = net + 1 + _below(u_c, room)
                    for t in range(REDRAWS):
                        if at_find(pod_slots, np.uint32(a), -1) < 0:
                            break
                        a = net + 1 + _below(_unit(base, S_REDRAW + t), room)
                    e = _pack(a, 80, 6)
                else:                                            # a pod port not declared; a ClusterIP port not served
                    if way == 1:
                        d = np.int64(pp[_below(u_b, n_pp)] >> np.uint64(32))
                    else:
                        d = np.int64(ci_addrs[_below(u_b, ci_addrs.shape[0])])
                    p16 = 1 + _below(u_c, 65535)
                    for t in range(REDRAWS):
                        taken = ht_find(listen, np.uint64((d << 16) | p16), -1) if way == 1 \
                            else ht_find(ci_keys, np.uint64((d << 16) | p16), -1)
                        if taken < 0:
                            break
                        p16 = 1 + _below(_unit(base, S_REDRAW + t), 65535)
                    e = _pack(d, p16, 6)
            src[j] = s
            dst[j] = np.uint32(e >> np.uint64(32))
            dport[j] = np.uint16((e >> np.uint64(16)) & np.uint64(0xFFFF))
            q8 = np.uint8((e >> np.uint64(8)) & np.uint64(0xFF))
            proto[j] = q8
            code[j] = c_name
            sport[j] = np.uint16(EPHEMERAL_LO + _below(_unit(base, S_SPORT), EPHEMERAL_HI - EPHEMERAL_LO + 1))
            gap[j] = np.int64(_exponential(_unit(base, S_GAP)) * knobs[N_GAP_NS])
            size = math.exp(normal_quantile(_unit(base, S_NORM)) * knobs[N_SIGMA] + knobs[N_LOG_MEDIAN])
            if _unit(base, S_ELEPHANT) < knobs[N_ELEPHANTS]:
                size = knobs[N_ELEPHANT_MIN] * (1.0 + _lomax(_unit(base, S_PARETO), knobs[N_ALPHA]))
            nb = np.uint64(min(max(np.rint(size), 1.0), 4611686018427387904.0))
            nbytes[j] = nb
            packets[j] = np.uint32(min((nb + np.uint64(MSS - 1)) // np.uint64(MSS), np.uint64(0xFFFFFFFF)))
            if with_life:
                u = _unit(base, S_LIFE)
                if q8 == 17:
                    life = _exponential(u) * knobs[N_UDP_ONE_SHOT]
                else:
                    life = knobs[N_TCP_SCALE] * (_lomax(u, knobs[N_TCP_ALPHA]) + 1.0)
                if _unit(base, S_STREAM) < knobs[N_LONG_LIVED]:
                    lo_s = knobs[N_STREAM_LO]
                    life = lo_s + _unit(base, S_STREAM_LEN) * (knobs[N_STREAM_HI] - lo_s)
                duration[j] = life


#: Rows per parallel work item.
CHUNK = 1 << 14
#: Rows a walk takes at once (prefetched, then sorted by kind).
WALK = 256
#: Items of :func:`_rows`'s ``order`` scratch (a constant for ``stack_empty``).
_ORDER = 2 * WALK + 8


@pjit
def make_rows(start, key, knobs, ch, ch_off, cli_ip, cli_pstart, cli_pcount, cli_port, cli_proto,
              ns_members, ns_start, ns_count, pp, listen, pod_slots, host_ip, cidr_net, cidr_size, ci, ci_keys, ci_addrs,
              nsf, node_addr, nm, missing_codes, egress_ip, egress_cum, egress_port, egress_proto, to_nothing_ways,
              src, dst, sport, dport, proto, gap, code, nbytes, packets, duration):
    """Rows ``start .. start + len(src)`` of the trace into the outputs, chunks in parallel.

    ``gap``: nanoseconds since the previous row's arrival (the caller sums them into
    ``ts``); ``code``: the ``dst_name`` dictionary index (-1: the row has a ``dst_ip``);
    ``duration``: seconds, or an empty array when the mix writes none. The tables as
    :func:`_rows` takes them (:class:`fastpath.traces.synth._Generator` packs them).
    """
    n = src.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    for c in numba.prange(chunks):
        lo, hi = chunk_bounds(c, CHUNK, n)
        _rows(lo, hi, start, key, knobs, ch, ch_off, cli_ip, cli_pstart, cli_pcount, cli_port, cli_proto,
              ns_members, ns_start, ns_count, pp, listen, pod_slots, host_ip, cidr_net, cidr_size, ci, ci_keys,
              ci_addrs, nsf, node_addr, nm, missing_codes, egress_ip, egress_cum, egress_port, egress_proto,
              to_nothing_ways, src, dst, sport, dport, proto, gap, code, nbytes, packets, duration)
