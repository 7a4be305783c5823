"""The per-batch data path: sources, loopback, kube-proxy, routing, bridge, verdict.

A batch of flows goes through three kernels and the service stage, each a
pass over flat arrays (``docs/dataplane.md`` states the rules):

1. :func:`_sources` — who sends (pod by IP, else node by IP, else external),
   the loopback path (127.0.0.0/8 or the sender's own IP) with its
   listening-port check, and hostPorts (the CNI portmap DNAT, before kube-proxy).
2. the service stage (:class:`fastpath.tables.services.ServiceStage`) — frontend
   match, eligible endpoints, backend choice, DNAT and masquerade.
3. :func:`_forward` — longest-prefix match to the destination node, that node's
   neighbour table and bridge FDB (read as their compiled join) to the pod, the
   listening-port check, egress with SNAT, path and hop count.

Every flow not delivered and not egress gets a ``reason`` code (``codes.REASONS``):
the kernels write it beside the verdict, and :func:`_forward` reads the service
stage's off the row (:func:`stage_reason`).

Names never enter a kernel: pods, nodes and services are integer indices, and
become Arrow dictionaries only in :meth:`DataPlane.to_arrow`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

from ._jit import GROUP, UGROUP, chunk_bounds, jit, pjit, prefetch, read_only, stack_empty
from .cluster.compile import ForwardingTables, compile_forwarding
from .cluster.model import Cluster
from .codes import (BRIDGE, DELIVERED, DROPPED, EGRESS, EXTERNAL, LOOPBACK, NONE, PATHS, PENDING, R_MARTIAN,
                    R_NO_DNS_ANSWER, R_NO_ENDPOINTS, R_NO_LISTENER, R_NO_LOCAL_ENDPOINT, R_NO_ROUTE, R_NO_SUCH_POD,
                    R_NODE_NOT_IN_INPUT, R_PORT_NOT_SERVED, REASONS, REFUSED, REJECTED, ROUTED, UNRESOLVED, VERDICTS)
from .tables.exact import at_home, at_probe, ht_find, pack3
from .tables.lpm import lpm_get

#: Source kinds (``Results.src_kind``).
SRC_POD, SRC_HOST, SRC_EXTERNAL = np.uint8(0), np.uint8(1), np.uint8(2)
#: Flows per parallel work item: big enough to amortize scheduling, small enough to balance.
CHUNK = 8192
#: Flows per cache block: every pass of a block runs before the next block starts, so a
#: block's columns (about 60 bytes a flow, 15 MiB) stay in the L3 cache between passes.
#: (64Ki and 256Ki measured within noise of each other on the 5,000-node benchmark.)
BLOCK = 262144


@dataclass
class Results:
    """Integer result columns of one batch (see :data:`RESULT_SCHEMA` for their meaning)."""

    verdict: np.ndarray    #: uint8 code (codes.VERDICTS)
    reason: np.ndarray     #: uint8 code (codes.REASONS; 0 = none, written as null)
    path: np.ndarray       #: uint8 code (codes.PATHS)
    src_node: np.ndarray   #: int32, -1 = null
    dst_node: np.ndarray   #: int32
    src_pod: np.ndarray    #: int32
    dst_pod: np.ndarray    #: int32
    service: np.ndarray    #: int32 service-port id
    dnat_ip: np.ndarray    #: uint32
    dnat_port: np.ndarray  #: uint16
    snat_ip: np.ndarray    #: uint32
    hops: np.ndarray       #: uint8
    src_kind: np.ndarray   #: uint8 (SRC_POD, SRC_HOST, SRC_EXTERNAL); not written to files

    @classmethod
    def empty(cls, n: int) -> "Results":
        return cls(
            verdict=np.empty(n, np.uint8), reason=np.empty(n, np.uint8), path=np.empty(n, np.uint8),
            src_node=np.empty(n, np.int32), dst_node=np.empty(n, np.int32),
            src_pod=np.empty(n, np.int32), dst_pod=np.empty(n, np.int32),
            service=np.empty(n, np.int32), dnat_ip=np.empty(n, np.uint32),
            dnat_port=np.empty(n, np.uint16), snat_ip=np.empty(n, np.uint32),
            hops=np.empty(n, np.uint8), src_kind=np.empty(n, np.uint8),
        )

    def __len__(self) -> int:
        return int(self.verdict.shape[0])

    def take(self, idx) -> "Results":
        """Rows ``idx`` (an index array, a mask or a slice); an index array or a mask copies them."""
        return Results(**{k: v[idx] for k, v in vars(self).items()})

    def copy(self) -> "Results":
        """Every column copied (a stage that writes rows in place then leaves these alone)."""
        return Results(**{k: v.copy() for k, v in vars(self).items()})

    @staticmethod
    def concat(parts: "list[Results]") -> "Results":
        """Rows of ``parts`` one after the other (the one part itself when there is one)."""
        if len(parts) == 1:
            return parts[0]
        return Results(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in vars(parts[0])})


#: The result columns written to files, in order (interfaces.md "Results out").
RESULT_SCHEMA = pa.schema([
    ("verdict", pa.dictionary(pa.int8(), pa.string())),
    ("reason", pa.dictionary(pa.int8(), pa.string())),
    ("path", pa.dictionary(pa.int8(), pa.string())),
    ("src_node", pa.dictionary(pa.int32(), pa.string())),
    ("dst_node", pa.dictionary(pa.int32(), pa.string())),
    ("src_pod", pa.dictionary(pa.int32(), pa.string())),
    ("dst_pod", pa.dictionary(pa.int32(), pa.string())),
    ("service", pa.dictionary(pa.int32(), pa.string())),
    ("dnat_ip", pa.uint32()),
    ("dnat_port", pa.uint16()),
    ("snat_ip", pa.uint32()),
    ("hops", pa.uint8()),
])


# --------------------------------------------------------------------------- kernels
#
# Each kernel walks its chunk in groups of GROUP flows, one table level at a time
# (every flow's first lookup, then every flow's second, ...): the lookups of a
# level are independent, so the CPU keeps GROUP memory reads in flight instead of
# waiting on one flow's chain of dependent misses. Rows are unsigned
# (``chunk_bounds``): a signed index costs a wrap-around check on every access.


@jit(inline="always")
def pod_node_of(pod_rec, p):
    """Node of pod ``p`` (-1 where unscheduled), from ``ForwardingTables.pod_rec``."""
    return np.int64(np.int32(pod_rec[4 * p]))


@jit(inline="always")
def pod_listens(pod_rec, more_off, more_ports, p, proto, port):
    """Whether some container of pod ``p`` declares ``port`` for ``proto``.

    Three compares on the pod's record without a branch between them; only a pod
    with more than three declared ports, none of them a match, reads on.
    """
    want = (np.uint32(proto) << np.uint32(16)) | np.uint32(port)
    third = pod_rec[4 * p + 3]
    if (pod_rec[4 * p + 1] == want) | (pod_rec[4 * p + 2] == want) | (third == want):
        return True
    if third == np.uint32(0xFFFFFFFF):
        return False                                 # three or fewer: all seen
    for k in range(np.uint64(more_off[p]), np.uint64(more_off[p + 1])):
        if more_ports[k] == want:
            return True
    return False


# The per-item passes of the parallel kernels are functions of their own, compiled without
# reference counting (``_nrt=False``), their scratch on the stack, and called from the ``prange``
# loop: inlined into it, numba's parallel passes compiled them for seconds longer (see
# :mod:`fastpath.tables.balancers`).


@pjit
def _sources(src_ip, dst_ip, dst_port, proto, pod_slots, pod_rec, more_off, more_ports, node_slots, hl_slots,
             pm_slots, hp_bits, verdict, reason, path, src_node, dst_node, src_pod, dst_pod, service,
             dnat_ip, dnat_port, snat_ip, hops, src_kind, chunk):
    """Classify senders, initialise every column, resolve loopback flows, and DNAT hostPorts (portmap)."""
    n = src_ip.shape[0]
    for c in numba.prange((n + chunk - 1) // chunk):
        lo, hi = chunk_bounds(c, chunk, n)
        _sources_chunk(lo, hi, src_ip, dst_ip, dst_port, proto, pod_slots, pod_rec, more_off, more_ports, node_slots,
                       hl_slots, pm_slots, hp_bits, verdict, reason, path, src_node, dst_node, src_pod, dst_pod,
                       service, dnat_ip, dnat_port, snat_ip, hops, src_kind)


@jit(_nrt=False)
def _sources_chunk(lo, hi, src_ip, dst_ip, dst_port, proto, pod_slots, pod_rec, more_off, more_ports, node_slots,
                   hl_slots, pm_slots, hp_bits, verdict, reason, path, src_node, dst_node, src_pod, dst_pod, service,
                   dnat_ip, dnat_port, snat_ip, hops, src_kind):
    """:func:`_sources` over rows ``[lo, hi)``."""
    for j in range(lo, hi):                          # initialise (a straight pass: vectorizes)
        reason[j] = 0
        dst_pod[j] = -1
        dst_node[j] = -1
        service[j] = -1
        dnat_ip[j] = dst_ip[j]
        dnat_port[j] = dst_port[j]
        snat_ip[j] = src_ip[j]
        hops[j] = 0
        path[j] = NONE
    for g in range(lo, hi, UGROUP):
        ge = min(hi, g + UGROUP)
        for j in range(g, ge):                       # level 1: pod by IP (prefetch, then probe)
            h = at_home(pod_slots, src_ip[j])
            src_pod[j] = h
            prefetch(pod_slots, h)
        for j in range(g, ge):
            p = at_probe(pod_slots, src_ip[j], np.int64(src_pod[j]), -1)
            src_pod[j] = p
            if p >= 0:
                prefetch(pod_rec, 4 * p)
        for j in range(g, ge):                       # level 2: its node, or node by IP
            p = src_pod[j]
            if p >= 0:
                src_node[j] = pod_node_of(pod_rec, p)
                src_kind[j] = SRC_POD
            else:
                node = ht_find(node_slots, np.uint64(src_ip[j]), -1)
                src_node[j] = node
                src_kind[j] = SRC_HOST if node >= 0 else SRC_EXTERNAL
        for j in range(g, ge):                       # loopback
            s = src_ip[j]
            d = dst_ip[j]
            kind = src_kind[j]
            if verdict[j] != PENDING:                # decided before (DNS: unresolved)
                continue
            if (d >> np.uint32(24)) == np.uint32(127) or (kind == SRC_POD and d == s):
                if kind == SRC_EXTERNAL:
                    verdict[j] = DROPPED             # martian: loopback address from outside
                    reason[j] = R_MARTIAN
                    continue
                node = np.int64(src_node[j])
                path[j] = LOOPBACK
                dst_node[j] = node
                if kind == SRC_POD:
                    p = np.int64(src_pod[j])
                    dst_pod[j] = p
                    ok = pod_listens(pod_rec, more_off, more_ports, p, proto[j], dst_port[j])
                else:
                    hp = ht_find(hl_slots, pack3(node, proto[j], dst_port[j]), -1)
                    dst_pod[j] = hp if hp >= 0 else -1
                    ok = hp != -1                    # -2: a host process listens (no pod known)
                verdict[j] = DELIVERED if ok else REFUSED
                reason[j] = 0 if ok else R_NO_LISTENER
                continue
            port = dst_port[j]                       # hostPort: the CNI portmap DNAT, before kube-proxy
            if (hp_bits[port >> np.uint16(3)] >> (port & np.uint16(7))) & np.uint8(1):
                v = ht_find(pm_slots, pack3(d, proto[j], port), -1)
                if v >= 0:
                    dnat_ip[j] = np.uint32(v >> 16)
                    dnat_port[j] = np.uint16(v & 0xFFFF)


@jit(inline="always")
def stage_reason(verdict, sp, rn):
    """The reason code of a flow :func:`fastpath.tables.balancers._target` stopped, from what it left in the row.

    ``REJECTED`` with a service port: no endpoints (``R_NO_ENDPOINTS``); without
    one: a ClusterIP on a port it does not serve (``R_PORT_NOT_SERVED``).
    ``DROPPED``: a Local policy without a local endpoint (``R_NO_LOCAL_ENDPOINT``),
    or no node to receive an external client (``R_NO_ROUTE``, receiving node -1).
    0 for anything else. Read off the row by the forwarding kernel, so the
    service stage's kernels (:mod:`fastpath.tables.balancers`) write no reason column.
    """
    if verdict == REJECTED:
        return R_NO_ENDPOINTS if sp >= 0 else R_PORT_NOT_SERVED
    if verdict == DROPPED:
        return R_NO_LOCAL_ENDPOINT if rn >= 0 else R_NO_ROUTE
    return np.uint8(0)


@pjit
def _forward(proto, l0, nodes, leaves, hosts, node_slots, node_ip, pod_slots, pod_rec, more_off, more_ports, hl_slots,
             verdict, reason, path, src_node, dst_node, dst_pod, service, dnat_ip, dnat_port, snat_ip, hops, src_kind,
             chunk):
    """Route, bridge and deliver every flow still pending; count hops of stopped ones.

    The bridge step reads the neighbour-table / FDB join compiled into pod by IP
    + ``pod_rec`` (see :mod:`fastpath.cluster.compile`): the pod holding the
    address, if it runs on the routed node, is the one behind that node's bridge.
    """
    n = proto.shape[0]
    for c in numba.prange((n + chunk - 1) // chunk):
        lo, hi = chunk_bounds(c, chunk, n)
        _forward_chunk(lo, hi, proto, l0, nodes, leaves, hosts, node_slots, node_ip, pod_slots, pod_rec, more_off,
                       more_ports, hl_slots, verdict, reason, path, src_node, dst_node, dst_pod, service, dnat_ip,
                       dnat_port, snat_ip, hops, src_kind)


@jit(_nrt=False)
def _forward_chunk(lo, hi, proto, l0, nodes, leaves, hosts, node_slots, node_ip, pod_slots, pod_rec, more_off,
                   more_ports, hl_slots, verdict, reason, path, src_node, dst_node, dst_pod, service, dnat_ip,
                   dnat_port, snat_ip, hops, src_kind):
    """:func:`_forward` over rows ``[lo, hi)``."""
    rnode = stack_empty(GROUP, np.int64)             # a group's routed node
    pod = stack_empty(GROUP, np.int64)               # its pod slot, then the pod behind that node's bridge
    for g in range(lo, hi, UGROUP):
        ge = min(hi, g + UGROUP)
        for j in range(g, ge):                       # level 1: route (LPM) -> node; prefetch the
            dn = -2                                  # address's pod slot (-2: decided before)
            if verdict[j] == PENDING:
                # a node index, or a marker next hop read as a small negative number:
                # -1 no route, -3 a pod on a node not in the input, -4 egress kept unmasqueraded
                dn = np.int64(np.int32(lpm_get(l0, nodes, leaves, hosts, dnat_ip[j])))
                if dn >= 0:
                    h = at_home(pod_slots, dnat_ip[j])
                    pod[j - g] = h
                    prefetch(pod_slots, h)
            rnode[j - g] = dn
        for j in range(g, ge):                       # level 2: the pod holding the address
            p = np.int64(-1)
            if rnode[j - g] >= 0:
                p = at_probe(pod_slots, dnat_ip[j], pod[j - g], -1)
                if p >= 0:
                    prefetch(pod_rec, 4 * p)
            pod[j - g] = p
        for j in range(g, ge):                       # level 3: behind the routed node's bridge?
            p = pod[j - g]
            if p >= 0:
                if pod_node_of(pod_rec, p) != rnode[j - g]:
                    pod[j - g] = -1                  # no neighbour entry on that node
        for j in range(g, ge):                       # level 4: listener, verdict, path, hops
            _finish(j, rnode[j - g], pod[j - g], proto, node_slots, node_ip, pod_rec, more_off, more_ports,
                    hl_slots, verdict, reason, path, src_node, dst_node, dst_pod, service, dnat_ip, dnat_port,
                    snat_ip, hops, src_kind)


#: Route-table next hops that are not nodes (read by the kernel as ``int32``: -3, -4).
NH_NODE_NOT_IN_INPUT = np.uint32(0xFFFFFFFD)
NH_NO_MASQUERADE = np.uint32(0xFFFFFFFC)


@jit(inline="always")
def _finish(j, dn, dp, proto, node_slots, node_ip, pod_rec, more_off, more_ports, hl_slots,
            verdict, reason, path, src_node, dst_node, dst_pod, service, dnat_ip, dnat_port, snat_ip, hops,
            src_kind):
    """Decide one flow once its route, neighbour and FDB lookups are known."""
    kind = src_kind[j]
    sn = np.int64(src_node[j])
    ext = kind == SRC_EXTERNAL
    if kind == SRC_POD:
        src_part = 2
    elif kind == SRC_HOST:
        src_part = 0
    else:
        src_part = 1 if sn >= 0 else 0
    if dn == -2:                                  # decided before this kernel
        if path[j] == NONE and verdict[j] != UNRESOLVED and hops[j] == 0:
            hops[j] = src_part                    # stopped at the service stage (or martian: 0)
        if reason[j] == 0:
            v = verdict[j]                        # DNS, or the service stage (its reason read off the row)
            reason[j] = R_NO_DNS_ANSWER if v == UNRESOLVED else stage_reason(v, service[j], src_node[j])
        return
    if dn == -3:                                  # a pod whose node is not in the input
        verdict[j] = DROPPED
        reason[j] = R_NODE_NOT_IN_INPUT
        path[j] = NONE
        hops[j] = src_part
        return
    d = dnat_ip[j]
    port = dnat_port[j]
    hn = np.int64(-1)
    if dp < 0:                                    # not a pod: a node's own address wins over pod routes
        hn = ht_find(node_slots, np.uint64(d), -1)
    target = hn if hn >= 0 else dn
    if target >= 0:
        if ext and sn < 0:                        # an external client is received by the target node
            sn = target
            src_node[j] = target
            src_part = 1
        cross = 0 if target == sn else (1 if ext else 2)
        dst_node[j] = target
        if hn < 0:                                # routed to a node: the pod behind its bridge
            if dp < 0:
                verdict[j] = DROPPED              # no such pod behind this node's bridge
                reason[j] = R_NO_SUCH_POD
                path[j] = NONE
                hops[j] = src_part + cross
                return
            dst_pod[j] = dp
            ok = pod_listens(pod_rec, more_off, more_ports, dp, proto[j], port)
            verdict[j] = DELIVERED if ok else REFUSED
            reason[j] = 0 if ok else R_NO_LISTENER
            same_bridge = kind == SRC_POD and dn == sn
            hops[j] = src_part + cross + (1 if same_bridge else 2)
            if ext:
                path[j] = EXTERNAL
            elif dn == sn:
                path[j] = BRIDGE
            else:
                path[j] = ROUTED
            return
        hp = ht_find(hl_slots, pack3(target, proto[j], port), -1)   # the node's host namespace
        dst_pod[j] = hp if hp >= 0 else -1
        ok = hp != -1                             # -2: a host process listens (no pod known)
        verdict[j] = DELIVERED if ok else REFUSED
        reason[j] = 0 if ok else R_NO_LISTENER
        if ext:
            path[j] = EXTERNAL
            hops[j] = src_part + cross
        elif target != sn:
            path[j] = ROUTED
            hops[j] = src_part + cross
        elif kind == SRC_HOST:
            path[j] = LOOPBACK                    # the host reaching one of its own addresses
            hops[j] = 0
        else:
            path[j] = BRIDGE                      # pod -> veth -> cbr0 -> its own host
            hops[j] = src_part
        return
    if ext:
        verdict[j] = DROPPED                      # no route: neither cluster nor a node
        reason[j] = R_NO_ROUTE
        path[j] = NONE
        hops[j] = 0
        return
    verdict[j] = EGRESS
    path[j] = EXTERNAL
    if kind == SRC_POD and dn != -4:
        snat_ip[j] = node_ip[sn]                  # masquerade to the node IP (not for nonMasqueradeCIDRs)
    hops[j] = src_part + 1


# --------------------------------------------------------------------------- data plane

class DataPlane:
    """A compiled cluster: every table the kernels read, and the batch resolver.

    Build with :func:`fastpath.compile_cluster`. :meth:`resolve` turns a batch of
    flows (Arrow ``RecordBatch``/``Table`` or a dict of numpy arrays) into a
    results ``RecordBatch`` with the columns of :data:`RESULT_SCHEMA`.
    """

    def __init__(self, cluster: Cluster, tables: ForwardingTables, services, stage, dns, lb: str, seed: int):
        self.cluster = cluster
        self.tables = tables
        self.services = services     #: fastpath.tables.services.ServiceMap
        self.stage = stage           #: fastpath.tables.services.ServiceStage (balancer state)
        self.dns = dns               #: fastpath.dns.DnsTable
        self.lb = lb
        self.seed = seed
        #: fastpath.stages.policy.PolicyStage, or None without NetworkPolicies (the stage is skipped)
        self.policy = None
        #: the destination column of the last batch resolved (after DNS)
        self.last_dst = None
        t = tables
        self._dicts = {
            "verdict": pa.array(VERDICTS, pa.string()),
            "reason": pa.array(REASONS, pa.string()),
            "path": pa.array(PATHS, pa.string()),
            "node": pa.array(t.node_names, pa.string()),
            "pod": pa.array(t.pod_names, pa.string()),
            "service": pa.array(list(services.names), pa.string()),
        }

    def __repr__(self) -> str:
        t = self.tables
        return (f"DataPlane({len(t.node_names):,} nodes, {len(t.pod_names):,} pods, "
                f"{len(self.services.names):,} service ports, {len(t.routes):,} routes, lb={self.lb}, seed={self.seed})")

    @classmethod
    def build(cls, cluster: Cluster, *, lb: str = "random", seed: int = 0, non_masquerade_cidrs=None,
              slices=None, **service_options) -> "DataPlane":
        """Compile ``cluster``'s forwarding tables, service map and DNS.

        ``non_masquerade_cidrs`` (CIDR strings): destinations a pod's egress keeps its
        address for, as ip-masq-agent's ``nonMasqueradeCIDRs`` (default: the input's
        ip-masq-agent ConfigMap, if any; else every pod's egress is masqueraded).
        ``slices``: every EndpointSlice, given and derived, when the caller has them
        (default :func:`fastpath.cluster.endpoints.endpoints_for`).
        """
        from .cluster.endpoints import endpoints_for
        from .dns import DnsTable
        from .tables.services import ServiceStage, compile_services

        if slices is None:
            slices = endpoints_for(cluster)      # given and derived: what listens, and the service map
        tables = compile_forwarding(cluster, slices=slices, non_masquerade_cidrs=non_masquerade_cidrs)
        smap = compile_services(cluster, lb=lb, seed=seed, slices=slices, **service_options)
        dp = cls(cluster, tables, smap, ServiceStage(smap), DnsTable.from_cluster(cluster), lb, seed)
        from .stages.policy import PolicyStage
        dp.policy = PolicyStage.build(cluster, tables)
        return dp

    def reset(self) -> None:
        """Forget balancer state (round-robin counters, connections, affinity)."""
        from .tables.services import ServiceStage

        self.stage = ServiceStage(self.services)
        if self.policy is not None:
            self.policy.reset()                  # its per-policy allow counters

    # ------------------------------------------------------------------ resolving
    def resolve_flows(self, flows, out: Results | None = None) -> Results:
        """Resolve normalized flows (:class:`fastpath.traces.Flows`) into integer results."""
        t = self.tables
        n = flows.n
        r = Results.empty(n) if out is None else out
        r.verdict.fill(PENDING)
        dst = flows.dst_ip
        if flows.name_code is not None:
            dst = self._resolve_names(flows, r.verdict)
        self.last_dst = dst                      # the destinations the stages saw (fastpath.live's churn)
        chunk = np.int64(CHUNK)
        # cache blocking: the three passes run block by block, so the columns a pass
        # writes are still in cache when the next pass reads them
        for lo in range(0, n, BLOCK):
            b = slice(lo, min(n, lo + BLOCK))
            src_ip, d, dport, proto = flows.src_ip[b], dst[b], flows.dst_port[b], flows.proto[b]
            verdict, reason = r.verdict[b], r.reason[b]
            src_node, src_pod, service = r.src_node[b], r.src_pod[b], r.service[b]
            dnat_ip, dnat_port, snat_ip = r.dnat_ip[b], r.dnat_port[b], r.snat_ip[b]
            _sources(src_ip, d, dport, proto,
                     t.pod_by_ip.slots, t.pod_rec, t.more_off, t.more_ports, t.node_by_ip.slots, t.host_listen.slots,
                     t.portmap.slots, t.hostport_bits, verdict, reason, r.path[b], src_node, r.dst_node[b], src_pod, r.dst_pod[b], service,
                     dnat_ip, dnat_port, snat_ip, r.hops[b], r.src_kind[b], chunk)
            if len(t.portmap):                   # kube-proxy sees a hostPort flow after portmap's DNAT
                d = dnat_ip.copy()
            self.stage.run(src_ip, d, flows.src_port[b], dport, proto, None if flows.ts is None else flows.ts[b],
                           src_pod, src_node, verdict, service, dnat_ip, dnat_port, snat_ip,
                           None if flows.duration is None else flows.duration[b])
            if self.policy is not None:          # NetworkPolicy (fastpath.stages.policy); skipped without policies
                self.policy.run(src_ip, proto, src_pod, dnat_ip, dnat_port, snat_ip, verdict, reason,
                                r.dst_pod[b], r.dst_node[b])
            self._forward_rows(proto, r, b, chunk)
        return r

    def _forward_rows(self, proto: np.ndarray, r: Results, b: slice, chunk: np.int64) -> None:
        """Forwarding (:func:`_forward`: route, bridge, deliver) of rows ``b`` of ``r`` still pending."""
        t = self.tables
        l0, nodes, leaves, hosts = t.routes.arrays
        _forward(proto, l0, nodes, leaves, hosts, t.node_by_ip.slots, t.node_ip,
                 t.pod_by_ip.slots, t.pod_rec, t.more_off, t.more_ports, t.host_listen.slots,
                 r.verdict[b], r.reason[b], r.path[b], r.src_node[b], r.dst_node[b], r.dst_pod[b], r.service[b],
                 r.dnat_ip[b], r.dnat_port[b], r.snat_ip[b], r.hops[b], r.src_kind[b], chunk)

    def _resolve_names(self, flows, verdict: np.ndarray) -> np.ndarray:
        """Destinations with ``dst_name`` answered by DNS; unanswered rows marked unresolved."""
        t = self.tables
        dst = np.array(flows.dst_ip, dtype=np.uint32, copy=True)
        rows = np.flatnonzero(flows.name_code >= 0)      # only the named rows: one pass over them
        if rows.size == 0:
            return read_only(dst)
        src_ip = flows.src_ip[rows]                      # (the lookup passes it read-only itself)
        src_pod = t.pod_by_ip.lookup(src_ip)
        src_ns = np.full(rows.size, -1, dtype=np.int32)   # (a cluster without pods has no pod_ns to index)
        hit = src_pod >= 0
        src_ns[hit] = t.pod_ns[src_pod[hit]]
        ip = np.zeros(rows.size, dtype=np.uint32)
        ok = np.ones(rows.size, dtype=bool)
        self.dns.resolve(flows.name_code[rows], flows.name_dict, src_ns, t.ns_names, ip, ok,
                         src_ip=src_ip, src_port=flows.src_port[rows])
        dst[rows[ok]] = ip[ok]
        verdict[rows[~ok]] = UNRESOLVED
        # read-only as a trace's own column is: the kernels then compile one specialization, not
        # one for traces with names and another for traces without (12 s more on a first run)
        return read_only(dst)

    def resolve(self, batch, source: str = "<batch>") -> pa.RecordBatch:
        """Resolve a batch of flows into a results ``RecordBatch`` (same rows, same order).

        ``batch`` is a ``pyarrow.RecordBatch``/``Table`` or a dict of numpy arrays
        with the trace columns of interfaces.md.

        Stateless balancers (``random``, ``source-hash``, ``maglev``) give the same
        answer for the same batch every time. ``round-robin``, ``least-connection``
        and ClientIP affinity are stateful, as in kube-proxy: each call goes on from
        the counters, connections and affinities the previous calls left (so a trace
        resolved batch by batch equals it resolved whole); :meth:`reset` forgets
        them. :func:`fastpath.explain` never changes them.
        """
        from .traces import normalize_batch

        return self.to_arrow(self.resolve_flows(normalize_batch(batch, source)))

    def to_arrow(self, r: Results) -> pa.RecordBatch:
        """Integer results to the Arrow result columns, names dictionary-encoded."""
        d = self._dicts

        def names(idx: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
            # indices zero-copy over the result array; -1 becomes null through a validity bitmap
            n = idx.shape[0]
            valid = idx >= 0
            nulls = n - int(np.count_nonzero(valid))
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
            indices = pa.Array.from_buffers(pa.int32(), n, [bitmap, pa.py_buffer(idx)], null_count=nulls)
            return pa.DictionaryArray.from_arrays(indices, dictionary)

        def reasons(code: np.ndarray) -> pa.DictionaryArray:
            # code 0 (delivered, egress) is null, through a validity bitmap over the same indices
            n = code.shape[0]
            valid = code != 0
            nulls = n - int(np.count_nonzero(valid))
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
            indices = pa.Array.from_buffers(pa.int8(), n, [bitmap, pa.py_buffer(code)], null_count=nulls)
            return pa.DictionaryArray.from_arrays(indices, d["reason"])

        cols = [
            pa.DictionaryArray.from_arrays(pa.array(r.verdict.view(np.int8)), d["verdict"]),
            reasons(r.reason),
            pa.DictionaryArray.from_arrays(pa.array(r.path.view(np.int8)), d["path"]),
            names(r.src_node, d["node"]), names(r.dst_node, d["node"]),
            names(r.src_pod, d["pod"]), names(r.dst_pod, d["pod"]),
            names(r.service, d["service"]),
            *self._answers(r), pa.array(r.hops),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=RESULT_SCHEMA)

    @staticmethod
    def _answers(r: Results) -> list[pa.Array]:
        """``dnat_ip``, ``dnat_port``, ``snat_ip``: zero-copy, null where there is no answer.

        A flow whose ``dst_name`` got no DNS answer (``unresolved``) has no destination
        and no source translation: its three columns are null, through one shared
        validity bitmap (built only when the batch has such a flow: one SIMD count).
        """
        n = r.verdict.shape[0]
        unanswered = r.verdict == UNRESOLVED
        nulls = int(np.count_nonzero(unanswered))
        bitmap = pa.py_buffer(np.packbits(~unanswered, bitorder="little")) if nulls else None
        return [pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(x)], null_count=nulls)
                for t, x in ((pa.uint32(), r.dnat_ip), (pa.uint16(), r.dnat_port), (pa.uint32(), r.snat_ip))]

    # ------------------------------------------------------------------ facts
    def describe(self) -> dict:
        """Sizes of the compiled tables (for ``fastpath explain`` and capacity notes)."""
        t = self.tables
        return {
            "nodes": len(t.node_names), "pods": len(t.pod_names),
            "routes": len(t.routes), "route_table_bytes": t.routes.nbytes,
            "neighbours": len(t.neighbours), "fdb_entries": len(t.fdb),
            "listening_ports": int((t.pod_rec.reshape(-1, 4)[:, 1:] != 0xFFFFFFFF).sum() + t.more_ports.size), "service_ports": len(self.services.names),
        }
