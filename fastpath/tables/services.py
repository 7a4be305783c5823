"""The service map: kube-proxy's rules compiled into flat arrays, and the service stage.

:func:`compile_services` turns a cluster's Services and EndpointSlices into a
:class:`ServiceMap`:

* **frontends**, one :class:`~fastpath.tables.exact.ExactTable` keyed
  ``pack3(ip, proto, port)``: every ClusterIP, externalIP and load-balancer
  ingress IP on the port (value ``sp | kind << 32``); and the NodePorts, one
  entry per service port keyed ``pack3(0, proto, nodePort)``, matched on any
  node address through a node-by-IP table, so the map grows with service
  ports, not service ports x nodes (:func:`~fastpath.tables.balancers.frontend_of`
  folds the node in: ``sp | kind << 32 | (node + 1) << 36``). Headless and
  ExternalName services have no frontend. Where two frontends claim one key
  the first wins, in the order ClusterIP, LoadBalancer, externalIP, NodePort,
  then service order (a warning says so). The known ClusterIPs are a further
  table, so traffic to a ClusterIP on a port or protocol it does not serve is
  rejected. A 128 KiB bit set over all these addresses lets most flows (pod
  to pod, egress) pass the stage with one load.
* **endpoints** of each service port in CSR form, sorted by (IP, port): from
  every EndpointSlice labelled with the service (the given ones and those the
  EndpointSlice controller would derive, :func:`fastpath.cluster.endpoints.endpoints_for`)
  whose ports include one with the service port's name and protocol; an
  endpoint's port is its slice's. Only an endpoint's first address counts, and
  an (IP, port) seen twice keeps its first occurrence (kube-proxy's
  ``endpointslicecache``).
* **eligible sets**, kube-proxy's ``CategorizeEndpoints`` (``pkg/proxy/topology.go``)
  precomputed: the *cluster view* is the Ready endpoints, else the
  Serving+Terminating ones; when every Ready endpoint carries zone hints and
  one is hinted for the receiving node's zone, only the Ready endpoints hinted
  for that zone (one set per zone, only for service ports where that narrows
  anything). The *local view* of a node, built only for service ports with a
  Local policy, is that node's Ready endpoints, else its Serving+Terminating
  ones. Which view a flow gets is :func:`fastpath.tables.balancers.eligible_set`.
* **Maglev tables** (``lb="maglev"``), one per distinct eligible backend list.

:class:`ServiceStage` runs the stage over a batch (``docs/dataplane.md`` §4);
the balancers, hashes and affinity are in :mod:`fastpath.tables.balancers`, the
``explain`` step in :mod:`fastpath.tables.services_explain`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from .._jit import jit
from ..addr import int_to_ip
from ..cluster.model import Cluster
from ..errors import FastpathError
from .._jit import GROUP
from ..lifetimes import lifetimes_ns
from .balancers import (BALANCERS, F_AFFINITY, F_ETP_LOCAL, F_HAS_ANY, F_ITP_LOCAL, F_NODE_HINTS, NODE_HINT_KEY,
                        LB_LEAST_CONN, LB_MAGLEV, LB_ROUND_ROBIN, SEQ_CHUNK, BalancerState, MapArrays, PAR_CHUNK, _pick_in_order, _stage,
                        _stage_hash, seed_keys)
from .balancer_state import check_affinity_keys
from .exact import ExactTable, pack2_np, pack3_np
from .frontends import (DEFAULT_AFFINITY_TIMEOUT, frontend_filter, frontend_tables,  # noqa: F401 (re-exported)
                        service_ports)
from .maglev import DEFAULT_M, backend_names, build_tables, check_size

#: Bit of an endpoint's hint mask saying it carries zone hints at all.
HINTED = np.uint64(1 << 63)
#: Most node zones the topology masks can hold.
MAX_ZONES = 63


@dataclass(frozen=True)
class ServiceMap:
    """Every service port of a cluster as flat arrays (see the module docstring).

    Index ``sp`` (a *service-port id*) runs over :attr:`names`; the service
    stage writes it into results' ``service`` column.
    """

    names: list[str]                 #: ``namespace/name:portname-or-port`` by service-port id
    lb: str                          #: balancer the map was built for
    seed: int
    maglev_size: int
    conn_duration: float             #: least-connection connection lifetime, seconds
    arrays: MapArrays                #: what the kernels read
    frontends: ExactTable            #: pack3(ip, proto, port) -> sp | kind << 32 (ClusterIP, LB, externalIP)
    node_ports: ExactTable           #: pack3(0, proto, nodePort) -> sp | FE_NODE_PORT << 32
    node_ips: ExactTable             #: node InternalIP / ExternalIP -> node
    cluster_ips: ExactTable          #: ClusterIP -> 1
    local_sets: ExactTable           #: pack2(sp, node) -> local eligible set
    sp_service: np.ndarray           #: int32[S] index into cluster.services
    sp_port: np.ndarray              #: uint16[S] service port
    sp_proto: np.ndarray             #: uint8[S]
    sp_flags: np.ndarray             #: uint8[S] F_* flags
    affinity_timeout: np.ndarray     #: int64[S] seconds
    ep_off: np.ndarray               #: int64[S + 1] endpoints of sp: ep_off[sp]:ep_off[sp + 1]
    ep_ip: np.ndarray                #: uint32[E]
    ep_port: np.ndarray              #: uint16[E] numeric target port
    ep_node: np.ndarray              #: int32[E] node index, -1 unknown
    ep_pod: np.ndarray               #: int32[E] pod index (targetRef), -1 none
    ep_zone: np.ndarray              #: int32[E] index into zones, -1 none
    ep_ready: np.ndarray             #: bool[E]
    ep_serving: np.ndarray           #: bool[E]
    ep_terminating: np.ndarray       #: bool[E]
    ep_hints: np.ndarray             #: uint64[E] bit z: hinted for zones[z]; bit 63: has hints
    node_names: list[str]
    zones: list[str]                 #: node zones first (bit order), then zones only endpoints name
    pod_names: list[str]
    has_affinity: bool               #: some service port has sessionAffinity ClientIP
    warnings: list[str] = field(default_factory=list)

    @property
    def n_sets(self) -> int:
        return int(self.arrays.set_off.shape[0] - 1)

    def set_members(self, s: int) -> np.ndarray:
        """Endpoint indices of eligible set ``s``."""
        a = self.arrays
        return a.set_ep[a.set_off[s]:a.set_off[s + 1]]

    def endpoints(self, sp: int) -> range:
        """Endpoint indices of service port ``sp``."""
        return range(int(self.ep_off[sp]), int(self.ep_off[sp + 1]))

    def backend_text(self, e: int) -> str:
        """``IP:port`` of endpoint ``e``, with its pod and node where known."""
        text = f"{int_to_ip(int(self.ep_ip[e]))}:{int(self.ep_port[e])}"
        extra = []
        if self.ep_pod[e] >= 0:
            extra.append(f"pod {self.pod_names[self.ep_pod[e]]}")
        if self.ep_node[e] >= 0:
            extra.append(f"node {self.node_names[self.ep_node[e]]}")
        return text + (f" ({', '.join(extra)})" if extra else "")

    def frontend_lookup(self, ip: np.ndarray, proto: np.ndarray, port: np.ndarray) -> np.ndarray:
        """Frontend values (``sp | kind << 32 | (node + 1) << 36``, -1 where none) of a batch of keys."""
        ip = np.asarray(ip, dtype=np.uint64)
        proto = np.asarray(proto, dtype=np.int64)
        port = np.asarray(port, dtype=np.int64)
        out = self.frontends.lookup(pack3_np(ip, proto, port))
        node = self.node_ips.lookup(ip)
        nodeport = self.node_ports.lookup(pack3_np(np.zeros_like(proto), proto, port))
        take = (out < 0) & (node >= 0) & (nodeport >= 0)
        out[take] = nodeport[take] | ((node[take] + 1) << 36)
        return out

    def describe(self) -> dict:
        """Sizes of the compiled map (capacity notes)."""
        a = self.arrays
        return {
            "service_ports": len(self.names), "frontends": len(self.frontends),
            "node_ports": len(self.node_ports),
            "endpoints": int(self.ep_ip.shape[0]), "eligible_sets": self.n_sets,
            "local_sets": len(self.local_sets), "maglev_tables": int(a.maglev.shape[0]),
            "bytes": int(sum(x.nbytes for x in a if isinstance(x, np.ndarray))),
        }


# --------------------------------------------------------------------------- compile

def balancer_code(lb: str) -> int:
    """Code of a balancer name, or :class:`FastpathError` listing the choices."""
    try:
        return BALANCERS.index(lb)
    except ValueError:
        raise FastpathError(f"unknown balancer {lb!r}: choose one of {', '.join(BALANCERS)}") from None


def _all_slices(cluster: Cluster) -> list:
    try:
        from ..cluster.endpoints import endpoints_for
    except ImportError:        # pragma: no cover - the module lands with the cluster loader
        return list(cluster.slices)
    return endpoints_for(cluster)


def compile_services(cluster: Cluster, *, lb: str = "random", seed: int = 0,
                     maglev_size: int = DEFAULT_M, conn_duration: float = 30.0, slices=None,
                     sp_names: list[str] | None = None) -> ServiceMap:
    """Compile ``cluster``'s services into a :class:`ServiceMap`.

    Parameters
    ----------
    cluster
        The validated cluster; endpoints come from its EndpointSlices and, for
        services given without any, from their selectors.
    lb
        Balancer: ``random``, ``round-robin``, ``source-hash``, ``maglev`` or
        ``least-connection`` (see :mod:`fastpath.tables.balancers`).
    seed
        Seed of every hash, so a replay is repeatable.
    maglev_size
        Prime size M of each Maglev table (Cilium's default 16381).
    conn_duration
        Seconds a connection stays active, for ``least-connection``.
    slices
        Every EndpointSlice, given and derived, when the caller has them already
        (default :func:`fastpath.cluster.endpoints.endpoints_for`).
    sp_names
        The service-port ids to use, by name (a replay with cluster events fixes them for
        every service port it will ever see, :mod:`fastpath.live`): a service port of the
        cluster gets the id of its name; names the cluster does not have are service ports
        without frontend or endpoints. Default: the cluster's service ports in order.
        Nodes not ``present`` receive no flow.
    """
    lb_code = balancer_code(lb)
    if lb_code == LB_MAGLEV:
        maglev_size = check_size(maglev_size)
    if not (isinstance(conn_duration, (int, float)) and math.isfinite(conn_duration) and conn_duration > 0):
        raise FastpathError(f"conn_duration {conn_duration!r}: must be a positive number of seconds")
    seed = int(seed)
    warnings: list[str] = []

    # nodes and zones
    nodes = cluster.nodes
    node_index = {n.name: i for i, n in enumerate(nodes) if n.present}
    zones = sorted({n.zone for n in nodes if n.zone})
    if len(zones) > MAX_ZONES:
        raise FastpathError(f"cluster has {len(zones)} zones: topology hints support at most {MAX_ZONES}")
    n_zones = len(zones)
    zone_index = {z: i for i, z in enumerate(zones)}
    node_zone = np.array([zone_index.get(n.zone, n_zones) for n in nodes], dtype=np.int32)
    node_ip = np.array([n.internal_ip or n.external_ip or 0 for n in nodes], dtype=np.uint32)

    # service ports and their frontends
    ports = service_ports(cluster.services, sp_names)
    names, sp_service, sp_port, sp_proto, sp_pname, sp_flags, sp_timeout = (
        ports.names, ports.service, ports.port, ports.proto, ports.pname, ports.flags, ports.timeout)
    sp_by_svc = ports.by_service
    frontends, node_ports, node_ips, cip_table = frontend_tables(ports, nodes, warnings)
    n_sp = len(names)

    # endpoints
    from ..cluster.columns import endpoint_columns, pod_columns
    cols = pod_columns(cluster.pods, nodes)      # the pass compile_forwarding made (or makes now)
    pod_names = list(cols.names)
    hint_nodes: list = []
    ends = endpoint_columns(_all_slices(cluster) if slices is None else slices, cols)
    ep = _gather_endpoints(ends, sp_by_svc, sp_pname, sp_proto, zones, zone_index, hint_nodes)
    ep_sp, ep_ip, ep_port, ep_node, ep_pod, ep_zone, ep_ready, ep_serving, ep_term, ep_hints, all_zones = ep
    ep_off = np.zeros(n_sp + 1, dtype=np.int64)
    np.cumsum(np.bincount(ep_sp, minlength=n_sp), out=ep_off[1:])

    # eligible sets
    sp_flags_a = np.array(sp_flags, dtype=np.uint8)
    needs_local = (sp_flags_a & (F_ITP_LOCAL | F_ETP_LOCAL)) != 0
    n_ep = ep_ip.shape[0]
    n_hinted = int(np.count_nonzero(ep_hints))
    cap_sets = n_sp * (1 + n_zones) + n_ep + 1
    cap_members = 2 * n_ep + n_zones * n_hinted + 1
    set_off = np.zeros(cap_sets + 1, dtype=np.int64)
    set_ep = np.empty(cap_members, dtype=np.int32)
    sp_set = np.empty(n_sp, dtype=np.int32)
    sp_has = np.empty(n_sp, dtype=np.uint8)
    sp_zone_row = np.empty(n_sp, dtype=np.int32)
    zone_sets = np.empty(max(1, n_sp * (n_zones + 1)), dtype=np.int32)
    loc_sp = np.empty(n_ep, dtype=np.int32)
    loc_node = np.empty(n_ep, dtype=np.int32)
    loc_set = np.empty(n_ep, dtype=np.int32)
    counts = np.zeros(4, dtype=np.int64)
    _categorize(ep_off, ep_ready, ep_serving, ep_term, ep_node, ep_hints, needs_local, n_zones, len(nodes),
                set_off, set_ep, sp_set, sp_has, sp_zone_row, zone_sets, loc_sp, loc_node, loc_set, counts)
    n_sets, n_members, n_rows, n_loc = (int(x) for x in counts)
    set_off = set_off[:n_sets + 1].copy()
    set_ep = set_ep[:n_members].copy()
    zone_sets = zone_sets[:max(1, n_rows * (n_zones + 1))].copy()
    sp_flags_a |= sp_has
    loc_sp, loc_node, loc_set = loc_sp[:n_loc], loc_node[:n_loc], loc_set[:n_loc]
    loc_keys, loc_vals = pack2_np(loc_sp, loc_node), loc_set
    if hint_nodes:       # trafficDistribution PreferSameNode: per (service port, node) sets in the same table
        set_off, set_ep, nh_keys, nh_sets = _node_hint_sets(ep_off, ep_ready, hint_nodes[0], node_index, set_off,
                                                            set_ep, sp_flags_a)
        n_sets = set_off.shape[0] - 1
        loc_keys = np.concatenate([loc_keys, nh_keys])
        loc_vals = np.concatenate([loc_vals, nh_sets]).astype(loc_set.dtype)
    local_table = ExactTable.build(loc_keys, loc_vals)
    order = np.lexsort((loc_node, loc_sp))
    lbn_node = np.ascontiguousarray(loc_node[order], dtype=np.int32)
    lbn_off = np.zeros(n_sp + 1, dtype=np.int64)
    np.cumsum(np.bincount(loc_sp, minlength=n_sp), out=lbn_off[1:])
    set_ip = ep_ip[set_ep]
    set_port = ep_port[set_ep]

    # Maglev tables, one per distinct backend list
    set_table = np.full(n_sets, -1, dtype=np.int32)
    if lb_code == LB_MAGLEV:
        maglev = _maglev_tables(set_off, set_ip, set_port, set_table, maglev_size, seed)
    else:
        maglev = np.zeros((0, 1), dtype=np.uint8)     # same kernel type as real (uint8) tables

    # the shortcut of in-cluster clients: the one eligible set of a service port without
    # affinity, internalTrafficPolicy Local or topology (see balancers._stage_hash)
    s0 = np.maximum(sp_set, 0).astype(np.int64)
    off = np.append(set_off, set_off[-1])          # s0 + 1 stays in range when there is no set
    first, size = off[s0], off[s0 + 1] - off[s0]
    plain = (((sp_flags_a & (F_ITP_LOCAL | F_AFFINITY | F_NODE_HINTS)) == 0) & ((sp_flags_a & F_HAS_ANY) != 0)
             & (sp_zone_row < 0) & (sp_set >= 0) & (size > 0))
    sp_span = np.where(plain, (first << 32) | size, -1).astype(np.int64)
    sp_table = np.where(plain, np.append(set_table, -1)[s0], -1).astype(np.int32)

    timeouts = np.array(sp_timeout, dtype=np.int64)
    if (sp_flags_a & F_AFFINITY).any():
        check_affinity_keys(len(names), len(nodes))    # affinity keys pack (service port, node) in 32 bits
    arrays = MapArrays(
        fe_slots=frontends.slots, np_slots=node_ports.slots, nip_slots=node_ips.slots, cip_slots=cip_table.slots,
        sp_flags=sp_flags_a, sp_set=sp_set, sp_zone_row=sp_zone_row, zone_sets=zone_sets,
        zone_width=np.int64(n_zones + 1), node_zone=node_zone, node_ip=node_ip,
        loc_slots=local_table.slots, lbn_off=lbn_off, lbn_node=lbn_node,
        set_off=set_off, set_ep=set_ep, set_ip=set_ip, set_port=set_port, set_table=set_table,
        maglev=maglev, affinity_ns=timeouts * np.int64(1_000_000_000), keys=seed_keys(seed),
        addr_filter=frontend_filter(frontends, node_ips, cip_table),
        sp_span=sp_span, sp_table=sp_table,
        set_backend=set_ip.astype(np.uint64) | (set_port.astype(np.uint64) << np.uint64(32)),
        node_pool=np.array([i for i, n in enumerate(nodes) if n.present], dtype=np.int32),
    )
    return ServiceMap(
        names=names, lb=lb, seed=seed, maglev_size=int(maglev_size), conn_duration=float(conn_duration),
        arrays=arrays, frontends=frontends, node_ports=node_ports, node_ips=node_ips, cluster_ips=cip_table, local_sets=local_table,
        sp_service=np.array(sp_service, dtype=np.int32), sp_port=np.array(sp_port, dtype=np.uint16),
        sp_proto=np.array(sp_proto, dtype=np.uint8), sp_flags=sp_flags_a, affinity_timeout=timeouts,
        ep_off=ep_off, ep_ip=ep_ip, ep_port=ep_port, ep_node=ep_node, ep_pod=ep_pod, ep_zone=ep_zone,
        ep_ready=ep_ready, ep_serving=ep_serving, ep_terminating=ep_term, ep_hints=ep_hints,
        node_names=[n.name for n in nodes], zones=all_zones, pod_names=pod_names,
        has_affinity=bool((sp_flags_a & F_AFFINITY).any()), warnings=warnings,
    )


def _node_hint_sets(ep_off: np.ndarray, ready: np.ndarray, hints: list, node_index: dict, set_off: np.ndarray,
                    set_ep: np.ndarray, sp_flags: np.ndarray):
    """Node-hint eligible sets (``topologyModeFromHints``, KEP-3015), added after the others.

    For a service port whose every Ready endpoint carries node hints, each node some
    Ready endpoint is hinted for gets the set of those endpoints, keyed
    ``pack2(sp | NODE_HINT_KEY, node)`` in the local-set table; the port is flagged
    ``F_NODE_HINTS``. A receiving node no hint names falls back to zone hints and the
    cluster set, as kube-proxy does. Returns the grown ``set_off``, ``set_ep`` and the keys
    and set numbers to add. (Only services with node hints pay for this Python loop.)
    """
    offs, members, keys, sets = [], [], [], []
    n_sets = set_off.shape[0] - 1
    end = int(set_off[-1])
    for sp in range(ep_off.shape[0] - 1):
        a, b = int(ep_off[sp]), int(ep_off[sp + 1])
        rdy = [e for e in range(a, b) if ready[e]]
        if not rdy or not all(hints[e] for e in rdy):
            continue
        by_node: dict[int, list[int]] = {}
        for e in rdy:
            for nd in {node_index.get(name) for name in hints[e]} - {None}:
                by_node.setdefault(nd, []).append(e)
        if not by_node:
            continue
        sp_flags[sp] |= F_NODE_HINTS
        for nd in sorted(by_node):
            members.extend(by_node[nd])
            end += len(by_node[nd])
            offs.append(end)
            keys.append((sp | NODE_HINT_KEY) << 32 | nd)
            sets.append(n_sets)
            n_sets += 1
    return (np.concatenate([set_off, np.array(offs, dtype=set_off.dtype)]),
            np.concatenate([set_ep, np.array(members, dtype=set_ep.dtype)]),
            np.array(keys, dtype=np.uint64), np.array(sets, dtype=np.int64))


def _gather_endpoints(ends, sp_by_svc: dict, sp_pname: list[str], sp_proto: list,
                      zones: list[str], zone_index: dict, node_hints: list | None = None):
    """Endpoint arrays of every service port, sorted by (sp, IP, port), duplicates dropped.

    ``ends``: every endpoint of every slice, as :func:`fastpath.cluster.columns.endpoint_columns`
    gives them. ``node_hints``, when given, gets each kept endpoint's ``hint_nodes`` (a list in
    endpoint order) appended, where any endpoint carries node hints.
    """
    # every endpoint of every slice once, in slice order, as one record each
    all_zones = list(zones)
    extra_zones: dict[str, int] = {}
    eps = ends.endpoints
    slices = ends.slices
    slice_start = ends.slice_start.tolist()
    rec = np.zeros(len(eps), dtype=_ENDPOINT_RECORD)
    rec["ip"] = ends.ip
    rec["valid"] = ends.valid
    rec["ready"] = ends.ready
    rec["serving"] = ends.serving
    rec["terminating"] = ends.terminating
    rec["node"] = ends.node
    rec["pod"] = ends.pod
    zone_of = ends.zone
    # zones no node has, numbered after the nodes' in order of first use
    for z in dict.fromkeys(zone_of):
        if z and z not in zone_index:
            extra_zones[z] = len(zones) + len(extra_zones)
    number = {**zone_index, **extra_zones}
    rec["zone"] = np.fromiter(map(number.get, zone_of, repeat(-1)), dtype=np.int32, count=len(zone_of))
    hint_of = ends.hint_zones
    bits: dict[tuple, int] = {}                 # each distinct forZones tuple once
    for h in dict.fromkeys(hint_of):
        if h:
            hint = 1 << 63
            for z in h:
                k = zone_index.get(z)
                if k is not None:
                    hint |= 1 << k
            bits[h] = hint
    if bits:
        rec["hints"] = np.fromiter(map(bits.get, hint_of, repeat(0)), dtype=np.uint64, count=len(hint_of))
    all_zones.extend(sorted(extra_zones, key=extra_zones.get))

    # which slices (and which of their ports) serve each service port
    slices_of: dict[tuple[str, str], list[int]] = {}
    for i, sl in enumerate(slices):
        slices_of.setdefault((sl.namespace, sl.service), []).append(i)
    seg_sp, seg_start, seg_len, seg_port = [], [], [], []
    for svc_key, sps in sp_by_svc.items():
        for i in slices_of.get(svc_key, ()):
            sl = slices[i]
            n = slice_start[i + 1] - slice_start[i]
            if n == 0:
                continue
            for sp in sps:
                for p in sl.ports:
                    if p.proto == sp_proto[sp] and (p.name or "") == sp_pname[sp]:
                        seg_sp.append(sp)
                        seg_start.append(slice_start[i])
                        seg_len.append(n)
                        seg_port.append(p.port)
                        break
    seg_len_a = np.array(seg_len, dtype=np.int64)
    total = int(seg_len_a.sum())
    first = np.repeat(np.array(seg_start, dtype=np.int64) - np.concatenate(([0], np.cumsum(seg_len_a)[:-1])),
                      seg_len_a) if total else np.zeros(0, np.int64)
    idx = first + np.arange(total, dtype=np.int64)
    sp_a = np.repeat(np.array(seg_sp, dtype=np.int32), seg_len_a)
    port_a = np.repeat(np.array(seg_port, dtype=np.int64), seg_len_a)

    valid = rec["valid"][idx]
    ip = rec["ip"][idx]
    # sort by (sp, ip, port, input order) and drop repeated (sp, ip, port)
    order = np.lexsort((np.arange(total), port_a, ip, sp_a))
    order = order[valid[order]]
    s_sp, s_ip, s_port = sp_a[order], ip[order], port_a[order]
    keep = np.ones(order.shape[0], bool)
    if order.shape[0] > 1:
        keep[1:] = (s_sp[1:] != s_sp[:-1]) | (s_ip[1:] != s_ip[:-1]) | (s_port[1:] != s_port[:-1])
    order = order[keep]
    pick = idx[order]
    if node_hints is not None and any(e.hint_nodes for e in eps):
        node_hints.append([eps[k].hint_nodes for k in pick.tolist()])

    r = rec[pick]
    return (np.ascontiguousarray(sp_a[order]), ip[order].astype(np.uint32), port_a[order].astype(np.uint16),
            r["node"].copy(), r["pod"].copy(), r["zone"].copy(), r["ready"].copy(), r["serving"].copy(),
            r["terminating"].copy(), r["hints"].copy(), all_zones)


#: One endpoint as :func:`_gather_endpoints` first records it.
_ENDPOINT_RECORD = np.dtype([("ip", np.int64), ("ready", bool), ("serving", bool), ("terminating", bool),
                             ("node", np.int32), ("zone", np.int32), ("hints", np.uint64), ("pod", np.int32),
                             ("valid", bool)])


@jit
def _categorize(ep_off, ready, serving, term, node, hint, sp_local, n_zones, n_nodes,
                set_off, set_ep, sp_set, sp_has, sp_zone_row, zone_sets, loc_sp, loc_node, loc_set, counts):
    """``CategorizeEndpoints`` for every service port: cluster, per-zone and per-node eligible sets."""
    ns = 0
    nm = 0
    rows = 0
    nl = 0
    width = n_zones + 1
    seen = np.full(max(n_nodes, 1), -1, dtype=np.int64)
    set_off[0] = 0
    for sp in range(ep_off.shape[0] - 1):
        a = ep_off[sp]
        b = ep_off[sp + 1]
        n_ready = 0
        n_st = 0
        hinted = True
        for e in range(a, b):
            if ready[e]:
                n_ready += 1
                if hint[e] == 0:
                    hinted = False
            elif serving[e] and term[e]:
                n_st += 1
        base = -1
        sp_has[sp] = 0
        if n_ready + n_st > 0:
            sp_has[sp] = 8 | (16 if n_ready > 0 else 0)
            for e in range(a, b):
                if ready[e] if n_ready > 0 else (serving[e] and term[e]):
                    set_ep[nm] = e
                    nm += 1
            base = ns
            ns += 1
            set_off[ns] = nm
        sp_set[sp] = base
        sp_zone_row[sp] = -1
        if n_ready > 0 and hinted and n_zones > 0:
            differs = False
            for z in range(n_zones):
                bit = np.uint64(1) << np.uint64(z)
                cnt = 0
                for e in range(a, b):
                    if ready[e] and (hint[e] & bit) != 0:
                        cnt += 1
                if cnt == 0 or cnt == n_ready:
                    zone_sets[rows * width + z] = base
                else:
                    for e in range(a, b):
                        if ready[e] and (hint[e] & bit) != 0:
                            set_ep[nm] = e
                            nm += 1
                    zone_sets[rows * width + z] = ns
                    ns += 1
                    set_off[ns] = nm
                    differs = True
            zone_sets[rows * width + n_zones] = base
            if differs:
                sp_zone_row[sp] = rows
                rows += 1
        if sp_local[sp]:
            for e in range(a, b):
                nd = node[e]
                if nd < 0 or seen[nd] == sp:
                    continue
                seen[nd] = sp
                local_ready = 0
                local_st = 0
                for e2 in range(a, b):
                    if node[e2] == nd:
                        if ready[e2]:
                            local_ready += 1
                        elif serving[e2] and term[e2]:
                            local_st += 1
                if local_ready + local_st == 0:
                    continue
                for e2 in range(a, b):
                    if node[e2] == nd and (ready[e2] if local_ready > 0 else (serving[e2] and term[e2])):
                        set_ep[nm] = e2
                        nm += 1
                loc_sp[nl] = sp
                loc_node[nl] = nd
                loc_set[nl] = ns
                nl += 1
                ns += 1
                set_off[ns] = nm
    counts[0] = ns
    counts[1] = nm
    counts[2] = rows
    counts[3] = nl


def _maglev_tables(set_off: np.ndarray, set_ip: np.ndarray, set_port: np.ndarray, set_table: np.ndarray,
                   m: int, seed: int) -> np.ndarray:
    """Build one table per distinct backend list of two or more; fill ``set_table``."""
    names = backend_names(set_ip, set_port)
    distinct: dict[bytes, int] = {}
    tab_off = [0]
    parts = []
    sizes = np.diff(set_off)
    for s in np.flatnonzero(sizes >= 2).tolist():
        seg = names[set_off[s]:set_off[s + 1]]
        key = seg.tobytes()
        t = distinct.get(key)
        if t is None:
            t = distinct[key] = len(parts)
            parts.append(seg)
            tab_off.append(tab_off[-1] + seg.shape[0])
        set_table[s] = t
    flat = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    return build_tables(np.array(tab_off, dtype=np.int64), flat, m, seed)


# --------------------------------------------------------------------------- the stage

#: ``_stage``'s empty deferral column.
_NO_DEFER = np.zeros(0, np.uint8)


def _column(name: str, x, dtype, n: int | None, writable: bool = False) -> np.ndarray:
    """A flat contiguous array of ``dtype`` (zero-copy when it already is one), or a one-line error."""
    if writable:
        if not isinstance(x, np.ndarray) or x.dtype != dtype or x.ndim != 1 or not x.flags.c_contiguous \
                or not x.flags.writeable:
            got = f"{x.dtype}{'' if getattr(x, 'flags', None) is None or x.flags.writeable else ' read-only'}" \
                if isinstance(x, np.ndarray) else type(x).__name__
            raise FastpathError(f"service stage: output {name!r} must be a writable contiguous 1-D "
                                f"{np.dtype(dtype).name} array, got {got}")
        arr = x
    else:
        try:
            arr = np.ascontiguousarray(x, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            raise FastpathError(f"service stage: column {name!r} cannot be read as {np.dtype(dtype).name}") from None
        if arr.ndim != 1:
            raise FastpathError(f"service stage: column {name!r} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise FastpathError(f"service stage: column {name!r} has {arr.shape[0]} rows, expected {n}")
    return arr


class ServiceStage:
    """kube-proxy on every node, over batches of flows; holds the balancer state between batches.

    Parameters
    ----------
    smap
        The compiled service map; its ``lb`` picks the balancer.
    """

    def __init__(self, smap: ServiceMap) -> None:
        self.smap = smap
        self.lb = balancer_code(smap.lb)
        self.reset()

    def run(self, src_ip, dst_ip, src_port, dst_port, proto, ts, src_pod, src_node, verdict, service,
            dnat_ip, dnat_port, snat_ip, duration=None) -> None:
        """Resolve the service stage of one batch, in place (``docs/dataplane.md`` §4).

        Only rows whose ``verdict`` is ``PENDING`` are looked at.

        Parameters
        ----------
        src_ip, dst_ip : uint32
        src_port, dst_port : uint16
        proto : uint8
        ts : int64 nanoseconds, non-decreasing, or None
            Without timestamps ClientIP affinity never expires and least-connection
            connections never close.
        src_pod : int32
            The sending pod or -1 (not used by the rules, kept for symmetry with the pipeline).
        src_node : int32, in/out
            >= 0 for in-cluster clients (their node's kube-proxy decides); -1 for
            external clients, set here to the receiving node where a frontend is
            hit: a NodePort's node; for a LoadBalancer / externalIP / ClusterIP, a
            node drawn by a seeded flow hash among the nodes with local endpoints
            when a Local policy governs the flow, else among all nodes. It stays
            -1 for a ClusterIP's unserved port (no frontend was hit).
        verdict : uint8, in/out
            ``REJECTED`` (no endpoints, or a ClusterIP's unserved port) and
            ``DROPPED`` (Local policy without a local endpoint) are written here.
        service : int32, out
            Service-port id of the frontend hit (caller pre-fills -1).
        dnat_ip, dnat_port, snat_ip : out
            Rewritten destination and source (caller pre-fills the inputs).
        duration : float64 seconds (NaN: not given), or None
            Each connection's lifetime, for least-connection and ClientIP
            affinity (:func:`fastpath.lifetimes.lifetimes_ns`: without it, the
            per-protocol default).
        """
        n = _column("src_ip", src_ip, np.uint32, None).shape[0]
        src_ip = _column("src_ip", src_ip, np.uint32, n)
        dst_ip = _column("dst_ip", dst_ip, np.uint32, n)
        src_port = _column("src_port", src_port, np.uint16, n)
        dst_port = _column("dst_port", dst_port, np.uint16, n)
        proto = _column("proto", proto, np.uint8, n)
        has_ts = ts is not None
        ts = _column("ts", ts, np.int64, n) if has_ts else np.zeros(1, np.int64)
        outs = [_column(name, x, dt, n, writable=True) for name, x, dt in (
            ("src_node", src_node, np.int32), ("verdict", verdict, np.uint8), ("service", service, np.int32),
            ("dnat_ip", dnat_ip, np.uint32), ("dnat_port", dnat_port, np.uint16), ("snat_ip", snat_ip, np.uint32))]
        if n == 0:
            return
        T = self.smap.arrays
        affinity = self.smap.has_affinity
        stateful = affinity or self.lb == LB_LEAST_CONN
        # connection lifetimes: the kernels read them only under least-connection and affinity
        if not stateful:
            life = np.zeros(1, np.int64)
        elif has_ts:
            life = lifetimes_ns(proto, None if duration is None else _column("duration", duration, np.float64, n),
                                self.smap.conn_duration)
        else:
            life = np.zeros(n, np.int64)
        if self.lb == LB_LEAST_CONN and affinity:
            # affinity rows and the others open and close connections in one time order: one pass
            rows = np.arange(n, dtype=np.int64)
        else:
            deferred = np.zeros(n if affinity else 0, dtype=np.uint8)
            counted = self.lb in (LB_ROUND_ROBIN, LB_LEAST_CONN)
            pend = np.full(n if counted else 0, -1, dtype=np.int64)
            _stage_hash(T, self.lb, PAR_CHUNK, src_ip, dst_ip, src_port, dst_port, proto, *outs, deferred, pend)
            if counted:                                    # the counters, in trace order
                src_node_out, _, service_out, dnat_ip_out, dnat_port_out, snat_ip_out = outs
                for start in range(0, n, SEQ_CHUNK):
                    stop = min(n, start + SEQ_CHUNK)
                    self.state.reserve(stop - start, self.lb, False, has_ts)
                    _pick_in_order(T, self.state.arrays, self.lb, has_ts, life, pend, start, stop, src_ip,
                                   ts, src_node_out, service_out, dnat_ip_out, dnat_port_out, snat_ip_out,
                                   np.empty(GROUP, np.int64))
            if not affinity:
                return
            rows = np.flatnonzero(deferred).astype(np.int64)
        cols = (src_ip, dst_ip, src_port, dst_port, proto, ts, *outs)
        # at least one call, if with no rows: the kernel compiles with the first batch (a replay's warm-up,
        # while a helper compiles others: fastpath._warmup.CompileBeside), not amid the first with an
        # affinity row
        for start in range(0, max(rows.shape[0], 1), SEQ_CHUNK):
            chunk = rows[start:start + SEQ_CHUNK]
            self.state.reserve(chunk.shape[0], self.lb, self.smap.has_affinity, has_ts)
            _stage(T, self.state.arrays, self.lb, has_ts, life, chunk, *cols, _NO_DEFER)  # one thread, in order

    def reset(self) -> None:
        """Forget round-robin counters, open connections and affinities."""
        nodes = len(self.smap.node_names)
        self.state = BalancerState(
            rr_shape=(nodes, len(self.smap.names)) if self.lb == LB_ROUND_ROBIN else (0, 0),
            lc_shape=(nodes, int(self.smap.ep_ip.shape[0])) if self.lb == LB_LEAST_CONN else (0, 0))


# --------------------------------------------------------------------------- explain

def __getattr__(name: str):
    """:func:`~fastpath.tables.services_explain.explain_service`, importable from here (loaded on first use)."""
    if name == "explain_service":
        from .services_explain import explain_service
        return explain_service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
