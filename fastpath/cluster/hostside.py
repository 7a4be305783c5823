"""Forwarding rules of real clusters, compiled into table contents.

:func:`fastpath.cluster.compile.compile_forwarding` calls these; each turns one
rule of ``../shared/spec/kubernetes-dataplane.md`` into entries of a table the
kernels already read (or one more exact table), so no rule costs per-flow Python:

* **What listens** (§2 item 8, :func:`served_listeners`): a pod listens on the
  ports its containers declare *and* on every (protocol, port) an EndpointSlice
  lists it under as a serving endpoint (a readiness probe passed there). An
  endpoint address that is a bridged pod's IP adds entries to that pod's record;
  one that is a node's address adds (node, protocol, port) to the host-listen
  table: the endpoint's ``targetRef`` pod where it is a hostNetwork pod on that
  node, else :data:`HOST_PROCESS` (something in the host namespace listens, no
  pod known: the API server's 6443 on a control-plane node).
* **hostPort** (§3 item 10, :func:`portmap_table`): the CNI ``portmap`` plugin's
  DNAT. Every address of the pod's node, on (protocol, hostPort), becomes
  ``pod IP:containerPort`` before kube-proxy sees the flow. Keyed
  ``pack3(node address, proto, hostPort)``, value ``pod IP << 16 | containerPort``;
  a bit set over ports lets flows to other ports skip the probe.
* **Pods on nodes not in the input** (:func:`orphan_routes`): a /32 route per
  such pod's address to the marker next hop ``NH_NODE_NOT_IN_INPUT``: flows there
  are ``dropped`` with reason ``node-not-in-input``.
* **ip-masq-agent** (§2 item 7, :func:`no_masquerade_routes`): each
  ``nonMasqueradeCIDRs`` prefix (and 169.254.0.0/16 unless ``masqLinkLocal``)
  becomes a route to the marker ``NH_NO_MASQUERADE``, except where a cluster route
  already covers it: a pod's egress that matches one keeps its source address.
"""
from __future__ import annotations

import numpy as np

from ..addr import prefix_mask
from ..tables.exact import AddressTable, ExactTable, pack3_np
from ..tables.lpm import RouteTable
from .columns import EndpointColumns, PodColumns
from .model import Cluster, Node

#: Host-listen value of a port that something in the node's host namespace serves, no pod known.
HOST_PROCESS = -2
#: Route-table next hops that are not nodes; the forwarding kernel reads them as int32 -3 and -4.
NH_NODE_NOT_IN_INPUT = 0xFFFFFFFD
NH_NO_MASQUERADE = 0xFFFFFFFC
#: IPv4 link-local, which ip-masq-agent leaves unmasqueraded unless ``masqLinkLocal``.
LINK_LOCAL = (0xA9FE0000, 16)


def served_listeners(ends: EndpointColumns, pod_by_ip: AddressTable, node_by_ip: ExactTable,
                     pod_host: np.ndarray, pod_node: np.ndarray, with_slice: bool = False) -> tuple:
    """Listening entries that EndpointSlices add (see the module docstring).

    ``ends``: the endpoints of every slice, given and derived, as columns
    (:func:`fastpath.cluster.columns.endpoint_columns`).

    Returns
    -------
    pods, protos, ports
        int64 arrays: bridged pod ``pods[k]`` listens on ``(protos[k], ports[k])``.
    host_keys, host_values
        ``pack3(node, proto, port)`` -> hostNetwork pod index or :data:`HOST_PROCESS`.
        In order of slice, endpoint, address, port (the first of a repeated key wins).
    slices
        Only ``with_slice``: the slice each of ``pods`` comes from (index into ``ends.slices``).
    """
    empty = np.zeros(0, np.int64)
    # every address of a serving endpoint, once per numbered port of its slice
    ep_slice = np.repeat(np.arange(ends.slice_start.shape[0] - 1, dtype=np.int64), np.diff(ends.slice_start))
    serving = ends.serving[ends.addr_ep] if ends.addr_ep.size else np.zeros(0, bool)
    a_ep = ends.addr_ep[serving]
    a_slice = ep_slice[a_ep]
    lo, hi = ends.port_off[a_slice], ends.port_off[a_slice + 1]
    per = hi - lo
    total = int(per.sum())
    if total == 0:
        return (empty, empty, empty, np.zeros(0, np.uint64), empty) + ((empty,) if with_slice else ())
    row = np.repeat(np.arange(a_ep.shape[0], dtype=np.int64), per)
    take = np.repeat(lo - (np.cumsum(per) - per), per) + np.arange(total, dtype=np.int64)
    addr_a = ends.addr[serving][row].astype(np.uint32)
    target_a = ends.pod[a_ep][row].astype(np.int64)
    proto_a = ends.port_proto[take]
    port_a = ends.port_num[take]
    pod = pod_by_ip.lookup(addr_a).astype(np.int64)
    bridged = pod >= 0
    node = node_by_ip.lookup(addr_a.astype(np.uint64)).astype(np.int64)
    host = ~bridged & (node >= 0)
    own = np.zeros(addr_a.shape[0], dtype=bool)
    has_t = target_a >= 0
    own[has_t] = pod_host[target_a[has_t]] & (pod_node[target_a[has_t]] == node[has_t])
    hval = np.where(own, target_a, HOST_PROCESS)[host]
    hkey = pack3_np(node[host], proto_a[host], port_a[host])
    out = (pod[bridged], proto_a[bridged], port_a[bridged], hkey, hval)
    return out + (a_slice[row][bridged],) if with_slice else out


def portmap_table(nodes: list[Node], pods: PodColumns, pod_node: np.ndarray) -> tuple[ExactTable, np.ndarray]:
    """The CNI portmap DNAT of every hostPort, and the bit set of hostPorts (uint8[8192]).

    Only pods on a node of the input with an IP and not ``hostNetwork`` (a
    hostNetwork pod's port already is its node's). Where two pods claim one
    (address, protocol, hostPort), the first in input order wins.
    """
    bits = np.zeros(8192, dtype=np.uint8)
    k = np.flatnonzero(pods.port_host != 0)
    if k.size:
        pod = pods.port_pod[k]
        ok = ~pods.host[pod] & pods.has_ip[pod] & (pod_node[pod] >= 0)
        k, pod = k[ok], pod[ok]
    if not k.size:
        return ExactTable.build(np.zeros(0, np.uint64), np.zeros(0, np.int64)), bits
    hp = pods.port_host[k]
    np.bitwise_or.at(bits, hp >> 3, (1 << (hp & 7)).astype(np.uint8))
    # each port at the node's InternalIP, then its ExternalIP (where the node has them)
    internal = np.array([-1 if n.internal_ip is None else n.internal_ip for n in nodes], dtype=np.int64)
    external = np.array([-1 if n.external_ip is None else n.external_ip for n in nodes], dtype=np.int64)
    nd = pod_node[pod].astype(np.int64)
    addr = np.stack([internal[nd], external[nd]], axis=1).reshape(-1)
    has = addr >= 0
    proto = np.repeat(pods.port_proto[k], 2)[has]
    port = np.repeat(hp, 2)[has]
    vals = np.repeat((pods.ip[pod].astype(np.int64) << 16) | pods.port_num[k], 2)[has]
    packed = pack3_np(addr[has], proto, port)[::-1]          # reversed: the first claim is the last write
    return ExactTable.build(packed, vals[::-1]), bits


def orphan_routes(routes: RouteTable, pods: PodColumns, taken: np.ndarray) -> int:
    """Add a /32 ``NH_NODE_NOT_IN_INPUT`` route per address of a pod whose node is not in the input.

    ``taken``: addresses that stay what they are (node addresses, bridged pods).
    Returns how many routes were added.
    """
    orphan = pods.has_ip & pods.node_given & (pods.node < 0)
    if not orphan.any():
        return 0
    a = np.unique(pods.ip[orphan])
    a = a[~np.isin(a, taken)]
    for ip in a.tolist():
        routes.insert((ip, 32), NH_NODE_NOT_IN_INPUT)
    return int(a.size)


def masquerade_exceptions(cluster: Cluster, override=None) -> list[tuple[int, int]]:
    """The prefixes a pod's egress keeps its address for: ``override`` (the CLI's), else the
    ip-masq-agent ConfigMap's; plus link-local unless ``masqLinkLocal``. Empty: masquerade all."""
    masq = getattr(cluster, "masquerade", None)
    if override is None and masq is None:
        return []
    if override is not None:
        from ..addr import parse_cidr
        cidrs = [parse_cidr(c, strict=False) if isinstance(c, str) else tuple(c) for c in override]
    else:
        cidrs = list(masq.non_masquerade_cidrs)
    if not (masq is not None and masq.masq_link_local):
        cidrs.append(LINK_LOCAL)
    return cidrs


def no_masquerade_routes(routes: RouteTable, cidrs) -> int:
    """Add each prefix of ``cidrs`` as a ``NH_NO_MASQUERADE`` route unless a route already covers it.

    A prefix inside a cluster route never sees egress (the cluster route, or a
    longer one, matches every address of it), so leaving it out changes nothing;
    a prefix holding cluster routes loses nothing either (they are longer).
    Returns how many were added.
    """
    if not cidrs:
        return 0
    net, length, _ = routes.prefixes()
    net = net.astype(np.int64)
    length = length.astype(np.int64)
    masks = (np.int64(0xFFFFFFFF) << (32 - length)) & np.int64(0xFFFFFFFF)
    added = 0
    for cnet, clen in sorted(set((int(n) & prefix_mask(int(ln)), int(ln)) for n, ln in cidrs)):
        if ((length <= clen) & ((cnet & masks) == net)).any():
            continue
        routes.insert((cnet, clen), NH_NO_MASQUERADE)
        added += 1
    return added
