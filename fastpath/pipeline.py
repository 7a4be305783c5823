"""The per-batch data path: sources, loopback, kube-proxy, routing, bridge, verdict.

A batch of flows goes through three kernels and the service stage, each a
pass over flat arrays (``docs/dataplane.md`` states the rules):

1. :func:`_sources` — who sends (pod by IP, else node by IP, else external),
   and the loopback path (127.0.0.0/8 or the sender's own IP) with its
   listening-port check.
2. the service stage (:class:`fastpath.tables.services.ServiceStage`) — frontend
   match, eligible endpoints, backend choice, DNAT and masquerade.
3. :func:`_forward` — longest-prefix match to the destination node, that node's
   neighbour table and bridge FDB (read as their compiled join) to the pod, the
   listening-port check, egress with SNAT, path and hop count.

Names never enter a kernel: pods, nodes and services are integer indices, and
become Arrow dictionaries only in :meth:`DataPlane.to_arrow`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

from ._jit import GROUP, UGROUP, chunk_bounds, jit, pjit, prefetch
from .cluster.compile import ForwardingTables, compile_forwarding
from .cluster.model import Cluster
from .codes import (BRIDGE, DELIVERED, DROPPED, EGRESS, EXTERNAL, LOOPBACK, NONE, PATHS, PENDING,
                    REFUSED, ROUTED, UNRESOLVED, VERDICTS)
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
            verdict=np.empty(n, np.uint8), path=np.empty(n, np.uint8),
            src_node=np.empty(n, np.int32), dst_node=np.empty(n, np.int32),
            src_pod=np.empty(n, np.int32), dst_pod=np.empty(n, np.int32),
            service=np.empty(n, np.int32), dnat_ip=np.empty(n, np.uint32),
            dnat_port=np.empty(n, np.uint16), snat_ip=np.empty(n, np.uint32),
            hops=np.empty(n, np.uint8), src_kind=np.empty(n, np.uint8),
        )

    def __len__(self) -> int:
        return int(self.verdict.shape[0])


#: The result columns written to files, in order (interfaces.md "Results out").
RESULT_SCHEMA = pa.schema([
    ("verdict", pa.dictionary(pa.int8(), pa.string())),
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


@pjit
def _sources(src_ip, dst_ip, dst_port, proto, pod_slots, pod_rec, more_off, more_ports, node_slots, hl_slots,
             verdict, path, src_node, dst_node, src_pod, dst_pod, service,
             dnat_ip, dnat_port, snat_ip, hops, src_kind, chunk):
    """Classify senders, initialise every column, and resolve loopback flows."""
    n = src_ip.shape[0]
    for c in numba.prange((n + chunk - 1) // chunk):
        lo, hi = chunk_bounds(c, chunk, n)
        for j in range(lo, hi):                          # initialise (a straight pass: vectorizes)
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
                        dst_pod[j] = hp
                        ok = hp >= 0
                    verdict[j] = DELIVERED if ok else REFUSED


@pjit
def _forward(proto, l0, nodes, leaves, hosts, node_slots, node_ip, pod_slots, pod_rec, more_off, more_ports, hl_slots,
             verdict, path, src_node, dst_node, dst_pod, dnat_ip, dnat_port, snat_ip, hops, src_kind,
             chunk):
    """Route, bridge and deliver every flow still pending; count hops of stopped ones.

    The bridge step reads the neighbour-table / FDB join compiled into pod by IP
    + ``pod_rec`` (see :mod:`fastpath.cluster.compile`): the pod holding the
    address, if it runs on the routed node, is the one behind that node's bridge.
    """
    n = proto.shape[0]
    for c in numba.prange((n + chunk - 1) // chunk):
        lo, hi = chunk_bounds(c, chunk, n)
        rnode = np.empty(GROUP, dtype=np.int64)
        pod = np.empty(GROUP, dtype=np.int64)
        for g in range(lo, hi, UGROUP):
            ge = min(hi, g + UGROUP)
            for j in range(g, ge):                       # level 1: route (LPM) -> node; prefetch the
                dn = -2                                  # address's pod slot (-2: decided before)
                if verdict[j] == PENDING:
                    nh = lpm_get(l0, nodes, leaves, hosts, dnat_ip[j])
                    dn = -1 if nh == np.uint32(0xFFFFFFFF) else np.int64(nh)
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
                        hl_slots, verdict, path, src_node, dst_node, dst_pod, dnat_ip, dnat_port, snat_ip,
                        hops, src_kind)


@jit(inline="always")
def _finish(j, dn, dp, proto, node_slots, node_ip, pod_rec, more_off, more_ports, hl_slots,
            verdict, path, src_node, dst_node, dst_pod, dnat_ip, dnat_port, snat_ip, hops, src_kind):
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
        return
    d = dnat_ip[j]
    port = dnat_port[j]
    target = dn if dn >= 0 else ht_find(node_slots, np.uint64(d), -1)   # a pod's node, or a node address
    if target >= 0:
        if ext and sn < 0:                        # an external client is received by the target node
            sn = target
            src_node[j] = target
            src_part = 1
        cross = 0 if target == sn else (1 if ext else 2)
        dst_node[j] = target
        if dn >= 0:                               # a pod behind that node's bridge
            if dp < 0:
                verdict[j] = DROPPED              # no such pod behind this node's bridge
                path[j] = NONE
                hops[j] = src_part + cross
                return
            dst_pod[j] = dp
            ok = pod_listens(pod_rec, more_off, more_ports, dp, proto[j], port)
            verdict[j] = DELIVERED if ok else REFUSED
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
        dst_pod[j] = hp
        verdict[j] = DELIVERED if hp >= 0 else REFUSED
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
        path[j] = NONE
        hops[j] = 0
        return
    verdict[j] = EGRESS
    path[j] = EXTERNAL
    if kind == SRC_POD:
        snat_ip[j] = node_ip[sn]                  # masquerade to the node IP
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
        t = tables
        self._dicts = {
            "verdict": pa.array(VERDICTS, pa.string()),
            "path": pa.array(PATHS, pa.string()),
            "node": pa.array(t.node_names, pa.string()),
            "pod": pa.array(t.pod_names, pa.string()),
            "service": pa.array(list(services.names), pa.string()),
        }

    @classmethod
    def build(cls, cluster: Cluster, *, lb: str = "random", seed: int = 0, **service_options) -> "DataPlane":
        """Compile ``cluster``'s forwarding tables, service map and DNS."""
        from .dns import DnsTable
        from .tables.services import ServiceStage, compile_services

        tables = compile_forwarding(cluster)
        smap = compile_services(cluster, lb=lb, seed=seed, **service_options)
        return cls(cluster, tables, smap, ServiceStage(smap), DnsTable.from_cluster(cluster), lb, seed)

    def reset(self) -> None:
        """Forget balancer state (round-robin counters, connections, affinity)."""
        from .tables.services import ServiceStage

        self.stage = ServiceStage(self.services)

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
        l0, nodes, leaves, hosts = t.routes.arrays
        chunk = np.int64(CHUNK)
        # cache blocking: the three passes run block by block, so the columns a pass
        # writes are still in cache when the next pass reads them
        for lo in range(0, n, BLOCK):
            b = slice(lo, min(n, lo + BLOCK))
            src_ip, d, dport, proto = flows.src_ip[b], dst[b], flows.dst_port[b], flows.proto[b]
            verdict, src_node, src_pod, service = r.verdict[b], r.src_node[b], r.src_pod[b], r.service[b]
            dnat_ip, dnat_port, snat_ip = r.dnat_ip[b], r.dnat_port[b], r.snat_ip[b]
            _sources(src_ip, d, dport, proto,
                     t.pod_by_ip.slots, t.pod_rec, t.more_off, t.more_ports, t.node_by_ip.slots, t.host_listen.slots,
                     verdict, r.path[b], src_node, r.dst_node[b], src_pod, r.dst_pod[b], service,
                     dnat_ip, dnat_port, snat_ip, r.hops[b], r.src_kind[b], chunk)
            self.stage.run(src_ip, d, flows.src_port[b], dport, proto, None if flows.ts is None else flows.ts[b],
                           src_pod, src_node, verdict, service, dnat_ip, dnat_port, snat_ip)
            _forward(proto, l0, nodes, leaves, hosts, t.node_by_ip.slots, t.node_ip,
                     t.pod_by_ip.slots, t.pod_rec, t.more_off, t.more_ports, t.host_listen.slots,
                     verdict, r.path[b], src_node, r.dst_node[b], r.dst_pod[b], dnat_ip, dnat_port, snat_ip,
                     r.hops[b], r.src_kind[b], chunk)
        return r

    def _resolve_names(self, flows, verdict: np.ndarray) -> np.ndarray:
        """Destinations with ``dst_name`` answered by DNS; unanswered rows marked unresolved."""
        t = self.tables
        src_pod = t.pod_by_ip.lookup(flows.src_ip)
        src_ns = np.where(src_pod >= 0, t.pod_ns[np.maximum(src_pod, 0)], -1).astype(np.int32)
        dst = np.array(flows.dst_ip, dtype=np.uint32, copy=True)
        ok = np.ones(flows.n, dtype=bool)
        self.dns.resolve(flows.name_code, flows.name_dict, src_ns, t.ns_names, dst, ok,
                         src_ip=flows.src_ip, src_port=flows.src_port)
        verdict[~ok] = UNRESOLVED
        return dst

    def resolve(self, batch, source: str = "<batch>") -> pa.RecordBatch:
        """Resolve a batch of flows into a results ``RecordBatch`` (same rows, same order).

        ``batch`` is a ``pyarrow.RecordBatch``/``Table`` or a dict of numpy arrays
        with the trace columns of interfaces.md.
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

        cols = [
            pa.DictionaryArray.from_arrays(pa.array(r.verdict.view(np.int8)), d["verdict"]),
            pa.DictionaryArray.from_arrays(pa.array(r.path.view(np.int8)), d["path"]),
            names(r.src_node, d["node"]), names(r.dst_node, d["node"]),
            names(r.src_pod, d["pod"]), names(r.dst_pod, d["pod"]),
            names(r.service, d["service"]),
            pa.array(r.dnat_ip), pa.array(r.dnat_port), pa.array(r.snat_ip), pa.array(r.hops),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=RESULT_SCHEMA)

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
