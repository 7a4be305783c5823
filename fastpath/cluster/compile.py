"""Compile a validated :class:`~fastpath.cluster.model.Cluster` into forwarding tables.

Every Kubernetes rule of the forwarding path becomes table contents here, once,
so the kernels never branch on Kubernetes concepts:

* **pod by IP** (exact, :class:`~fastpath.tables.exact.AddressTable`): IP -> pod,
  for pods with an IP and a node that are not ``hostNetwork`` (hostNetwork pods
  share their node's IP).
* **node by IP** (exact): every node's InternalIP and ExternalIP -> node.
* **cluster route table** (LPM, :class:`~fastpath.tables.lpm.RouteTable`): each
  node's pod CIDRs -> node; for pods whose IP lies outside their own node's pod
  CIDRs (Calico-style IPAM, or an address borrowed from another node's range),
  the /26 block holding it -> its node when only that node has such pods in the
  block and the block overlaps no pod CIDR, else a /32 host route, as Calico's
  routes do.
* **neighbour table** (exact): (node, pod IP) -> MAC, the CNI bridge plugin's
  ``0a:58:`` + IPv4 address, one entry per pod on that node's bridge.
* **FDB** (exact): (node, MAC) -> bridge port, one forwarding database per node
  bridge ``cbr0``; ``port_pod`` maps a port to the pod behind that veth.
* **pod records** (``pod_rec``): 16 bytes a pod, one cache line's quarter —
  its node and its first three declared (protocol, port) pairs, sorted; a
  pod's fourth and later pairs in ``more_ports`` (CSR offsets ``more_off``).
  Most pods declare three or fewer, so the listening check is three compares
  on the line that also gave the pod's node. And (node, protocol, port) -> pod
  (exact) for hostNetwork pods. The pairs are what the pod listens on: its
  declared ports and those an EndpointSlice serves it on; the host-listen table
  also holds EndpointSlice ports at node addresses, and the portmap table the
  hostPorts (:mod:`fastpath.cluster.hostside`). A node's own address is never a
  bridged pod's; pods on nodes not in the input get /32 routes to a marker next
  hop, as do ip-masq-agent's nonMasqueradeCIDRs.

The forwarding kernel does not walk the neighbour table and the FDB one after
the other: both are keyed by what the pod-by-IP table already says. The node's
neighbour entry for an IP exists exactly when a bridged pod with that IP runs on
that node, and its FDB port leads back to that pod (CNI MACs are ``0a:58:`` +
the IP, pod IPs are unique), so "(node, IP) -> MAC -> port -> pod" is the pod by
IP, kept when its node is the routed node. The kernel reads that join
(``pod_by_ip`` + ``pod_rec``): one probe instead of two. The neighbour tables
and FDBs are still compiled as such; ``fastpath explain`` walks them hop by hop
and the tests check the join against them for every pod.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..addr import cni_mac, prefix_mask
from ..tables.exact import AddressTable, ExactTable, pack2_np, pack3_np
from ..tables.lpm import RouteTable
from .model import Cluster, node_addresses

#: An empty listening-port entry in a pod record (no real proto << 16 | port is all ones).
NO_PORT = np.uint32(0xFFFFFFFF)
#: Calico's IPAM block size (IPPool ``blockSize``).
CALICO_BLOCK = 26


@dataclass(frozen=True)
class ForwardingTables:
    """The compiled forwarding path: flat arrays and tables only."""

    node_names: list[str]
    pod_names: list[str]              #: ``namespace/name``
    ns_names: list[str]
    node_ip: np.ndarray               #: uint32[N] InternalIP (0 where none)
    pod_ip: np.ndarray                #: uint32[P] (0 where none)
    pod_node: np.ndarray              #: int32[P] (-1 where unscheduled)
    pod_ns: np.ndarray                #: int32[P] index into ns_names
    pod_by_ip: AddressTable           #: IP -> bridged pod
    pod_rec: np.ndarray               #: uint32[4 * P]: node (int32 bits), then 3 entries proto << 16 | port
    more_off: np.ndarray              #: int64[P + 1]: CSR offsets of each pod's 4th and later entries
    more_ports: np.ndarray            #: uint32: those entries
    node_by_ip: ExactTable
    routes: RouteTable                #: next hop = node index
    neighbours: ExactTable            #: pack2(node, ip) -> MAC
    fdb: ExactTable                   #: node << 48 | MAC -> port id
    port_pod: np.ndarray              #: int32[ports] pod behind each bridge port
    port_veth: np.ndarray             #: int32[ports] veth number on its node (vethN)
    host_listen: ExactTable           #: pack3(node, proto, port) -> hostNetwork pod (-2: a host process, no pod)
    route_notes: list[str]            #: how routes were derived (for explain / warnings)
    portmap: ExactTable               #: pack3(node address, proto, hostPort) -> pod IP << 16 | containerPort
    hostport_bits: np.ndarray         #: uint8[8192]: bit p set where some pod has hostPort p

    def ports_of(self, pod: int) -> np.ndarray:
        """The (proto << 16 | port) entries pod ``pod`` listens on, sorted."""
        first = self.pod_rec[4 * pod + 1: 4 * pod + 4]
        more = self.more_ports[int(self.more_off[pod]):int(self.more_off[pod + 1])]
        return np.concatenate([first[first != NO_PORT], more[more != NO_PORT]])   # (live updates pad with it)

    def listens(self, pod: int, proto: int, port: int) -> bool:
        """Whether pod ``pod`` listens on ``port`` for ``proto`` (declared, or served in an EndpointSlice)."""
        return bool(((int(proto) << 16) | int(port)) in self.ports_of(pod).tolist())


def fdb_key(node: np.ndarray | int, mac: np.ndarray | int):
    """FDB key: the bridge's node in the top 16 bits, the 48-bit MAC below."""
    if isinstance(node, (int, np.integer)):
        return (int(node) << 48) | int(mac)
    return (np.asarray(node, dtype=np.uint64) << np.uint64(48)) | np.asarray(mac, dtype=np.uint64)


def compile_forwarding(cluster: Cluster, *, slices=None, non_masquerade_cidrs=None) -> ForwardingTables:
    """Build every forwarding table of ``cluster`` (see the module docstring).

    ``slices``: every EndpointSlice, given and derived (default
    :func:`fastpath.cluster.endpoints.endpoints_for`), for what listens.
    ``non_masquerade_cidrs``: CIDR strings or (network, length) prefixes whose egress keeps the pod
    IP, replacing the ip-masq-agent ConfigMap's (default: the ConfigMap's, if any;
    else every pod's egress is masqueraded). See :mod:`fastpath.cluster.hostside`.
    """
    from .columns import endpoint_columns, pod_columns
    from .hostside import (NH_NODE_NOT_IN_INPUT, masquerade_exceptions, no_masquerade_routes, orphan_routes,
                           portmap_table, served_listeners)
    nodes, pods = cluster.nodes, cluster.pods
    cols = pod_columns(pods, nodes)          # one pass over the pods, shared with the service map
    node_index = cols.node_index
    # the tables get their own copies: the columns are kept for the next compile of these pods
    pod_ns, pod_node, pod_ip = cols.ns.copy(), cols.node.copy(), cols.ip.copy()
    has_ip, pod_host = cols.has_ip, cols.host

    node_ip = np.array([n.internal_ip or 0 for n in nodes], dtype=np.uint32)
    nk, nv = node_addresses(nodes)
    node_by_ip = ExactTable.build(np.array(nk, dtype=np.uint64), np.array(nv, dtype=np.int64))

    # pods on a bridge: an IP, a node, not hostNetwork; a node's own address is the node's (VPC-native)
    node_addr = np.array(nk, dtype=np.uint32)
    bridged = np.flatnonzero(has_ip & (pod_node >= 0) & ~pod_host & ~np.isin(pod_ip, node_addr))
    b_ip = pod_ip[bridged]
    b_node = pod_node[bridged]
    pod_by_ip = AddressTable.build(b_ip, bridged)

    # cluster route table: pod CIDRs, then Calico-style blocks / host routes for the rest
    r_net, r_len, r_nh = [], [], []
    for i, n in enumerate(nodes):
        for net, length in n.pod_cidrs:
            r_net.append(net)
            r_len.append(length)
            r_nh.append(i if n.present else NH_NODE_NOT_IN_INPUT)   # a deleted node's range: to nowhere
    routes = RouteTable.from_arrays(np.array(r_net, dtype=np.uint32), np.array(r_len, dtype=np.uint8),
                                    np.array(r_nh, dtype=np.uint32))
    notes: list[str] = []
    if bridged.size:
        owner = routes.lookup(b_ip)
        uncovered = owner == np.uint32(RouteTable.MISS)
        stray = uncovered | (owner.astype(np.int64) != b_node)
        if stray.any():
            s_ip = b_ip[stray]
            s_node = b_node[stray].astype(np.int64)
            block = s_ip & np.uint32(prefix_mask(CALICO_BLOCK))
            # a block outside every pod CIDR and used by exactly one node becomes one /26
            # route; a shared block, or a pod inside another node's CIDR, gets a /32
            pairs = np.unique(np.stack([block.astype(np.int64), s_node]), axis=1)
            blocks, counts = np.unique(pairs[0], return_counts=True)
            single = blocks[counts == 1]
            # a block overlaps a pod CIDR that covers it (then its pods are not uncovered)
            # or one that lies inside it (a CIDR of /26 or longer)
            r_net_a = np.array(r_net, dtype=np.int64)
            r_len_a = np.array(r_len, dtype=np.int64)
            inside = r_net_a[r_len_a >= CALICO_BLOCK] & prefix_mask(CALICO_BLOCK)
            use_block = (np.isin(block.astype(np.int64), single) & uncovered[stray]
                         & ~np.isin(block.astype(np.int64), inside))
            bp = np.unique(np.stack([block[use_block].astype(np.int64), s_node[use_block]]), axis=1)
            add_net = np.concatenate([bp[0], s_ip[~use_block].astype(np.int64)])
            add_len = np.concatenate([np.full(bp.shape[1], CALICO_BLOCK), np.full((~use_block).sum(), 32)])
            add_nh = np.concatenate([bp[1], s_node[~use_block]])
            for net, length, nh in zip(add_net.tolist(), add_len.tolist(), add_nh.tolist()):
                routes.insert((net, length), nh)
            notes.append(f"{int(stray.sum())} pod IPs outside their node's pod CIDR: routed by "
                         f"{bp.shape[1]} /{CALICO_BLOCK} block routes and {int((~use_block).sum())} /32 host routes")

    # pods on nodes not in the input: /32 routes to nowhere; ip-masq-agent's nonMasqueradeCIDRs
    orphans = orphan_routes(routes, cols, np.concatenate([node_addr, b_ip]))
    if orphans:
        notes.append(f"{orphans} pod IPs on nodes not in the input: flows to them are dropped (node-not-in-input)")
    no_masquerade_routes(routes, masquerade_exceptions(cluster, non_masquerade_cidrs))

    # neighbour tables and FDBs: one entry per bridged pod on its node
    macs = cni_mac(b_ip)
    neighbours = ExactTable.build(pack2_np(b_node, b_ip), macs.astype(np.int64))
    order = np.argsort(b_node, kind="stable")
    port_pod = bridged[order].astype(np.int32)
    port_node = b_node[order]
    starts = np.searchsorted(port_node, np.arange(len(nodes)))
    port_veth = (np.arange(port_pod.size) - starts[port_node] + 1).astype(np.int32) if port_pod.size else \
        np.empty(0, dtype=np.int32)
    fdb = ExactTable.build(fdb_key(port_node, macs[order]), np.arange(port_pod.size, dtype=np.int64))

    lp_pod_a, lp_proto_a, lp_port_a = cols.port_pod, cols.port_proto, cols.port_num
    hmask = pod_host[lp_pod_a] & (pod_node[lp_pod_a] >= 0) if lp_pod_a.size else np.zeros(0, dtype=bool)
    hk = pack3_np(pod_node[lp_pod_a[hmask]], lp_proto_a[hmask], lp_port_a[hmask])
    hv = lp_pod_a[hmask]
    # what listens besides declared ports: every port an EndpointSlice lists a serving endpoint under
    if slices is None:
        from .endpoints import endpoints_for
        slices = endpoints_for(cluster)
    s_pod, s_proto, s_port, s_hk, s_hv = served_listeners(
        endpoint_columns(slices, cols), pod_by_ip, node_by_ip, pod_host, pod_node)
    if s_pod.size:
        lp_entry = _sorted_unique(np.concatenate([(lp_pod_a << 32) | (lp_proto_a << 16) | lp_port_a,
                                                  (s_pod << 32) | (s_proto << 16) | s_port]))
        lp_pod_a, lp_proto_a, lp_port_a = lp_entry >> 32, (lp_entry >> 16) & 0xFF, lp_entry & 0xFFFF
    pod_rec, more_off, more_ports = _pod_records(pod_node, lp_pod_a, lp_proto_a, lp_port_a)
    # first hostNetwork pod declaring a port on a node wins, then EndpointSlice entries:
    # build in reverse so the first is the last write
    hk = np.concatenate([hk, s_hk])[::-1]
    host_listen = ExactTable.build(hk, np.concatenate([hv, s_hv])[::-1])
    portmap, hostport_bits = portmap_table(nodes, cols, pod_node)

    return ForwardingTables(
        node_names=list(cols.node_names),
        pod_names=list(cols.names),
        ns_names=list(cols.ns_names),
        node_ip=node_ip, pod_ip=pod_ip, pod_node=pod_node, pod_ns=pod_ns,
        pod_by_ip=pod_by_ip, pod_rec=pod_rec, more_off=more_off, more_ports=more_ports, node_by_ip=node_by_ip, routes=routes,
        neighbours=neighbours, fdb=fdb, port_pod=port_pod, port_veth=port_veth,
        host_listen=host_listen, route_notes=notes, portmap=portmap, hostport_bits=hostport_bits,
    )


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array by one sort (numpy 2's hashing ``unique`` is slower here)."""
    a = np.sort(a)
    if a.size > 1:
        a = a[np.concatenate(([True], a[1:] != a[:-1]))]
    return a


def _pod_records(pod_node: np.ndarray, pod: np.ndarray, proto: np.ndarray, port: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pod_rec``, ``more_off``, ``more_ports`` (see :class:`ForwardingTables`)."""
    n = pod_node.shape[0]
    entry = (proto.astype(np.uint64) << np.uint64(16)) | port.astype(np.uint64)
    order = np.lexsort((entry, pod))
    pod_s, entry_s = pod[order], entry[order].astype(np.uint32)
    first = np.searchsorted(pod_s, np.arange(n + 1))
    rank = np.arange(pod_s.size) - first[pod_s]              # position in its pod's sorted run
    rec = np.full((n, 4), NO_PORT, dtype=np.uint32)
    rec[:, 0] = pod_node.astype(np.int64) & 0xFFFFFFFF
    inline = rank < 3
    rec[pod_s[inline], 1 + rank[inline]] = entry_s[inline]
    more_ports = entry_s[~inline]
    more_off = np.searchsorted(pod_s[~inline], np.arange(n + 1)).astype(np.int64)
    return rec.reshape(-1), more_off, more_ports


def compile_cluster(cluster, *, lb: str = "random", seed: int = 0, **service_options):
    """Compile a cluster (a :class:`Cluster` or a path to load) into a :class:`~fastpath.pipeline.DataPlane`.

    Parameters
    ----------
    cluster
        A loaded :class:`Cluster`, or a path (file or directory) of Kubernetes objects.
    lb
        kube-proxy backend choice: ``random``, ``round-robin``, ``source-hash``,
        ``maglev`` or ``least-connection``.
    seed
        Seed of the emulated randomness (flow hashes), so replays repeat.
    service_options
        Passed to the service map compiler (``maglev_size``, ``conn_duration``).
    """
    from ..pipeline import DataPlane
    from .load import load_cluster

    if not isinstance(cluster, Cluster):
        cluster = load_cluster(cluster)
    return DataPlane.build(cluster, lb=lb, seed=seed, **service_options)
