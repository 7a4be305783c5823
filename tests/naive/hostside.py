"""The hostside tables as plain loops: the twin of :mod:`fastpath.cluster.hostside`.

These are the per-object versions :mod:`fastpath.cluster.hostside` had before it read
columns (:mod:`fastpath.cluster.columns`); ``tests/test_hostside.py`` checks that the
vectorized functions give the same tables on real dumps, ``tests/data`` and synthetic
clusters.
"""
from __future__ import annotations

import numpy as np

from fastpath.cluster.hostside import HOST_PROCESS, NH_NODE_NOT_IN_INPUT
from fastpath.cluster.model import Node
from fastpath.tables.exact import AddressTable, ExactTable, pack3_np
from fastpath.tables.lpm import RouteTable


def served_listeners(slices, pod_by_ip: AddressTable, node_by_ip: ExactTable, pod_index: dict[str, int],
                     pod_host: np.ndarray, pod_node: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Listening entries that EndpointSlices add (see the module docstring).

    Returns
    -------
    pods, protos, ports
        int64 arrays: bridged pod ``pods[k]`` listens on ``(protos[k], ports[k])``.
    host_keys, host_values
        ``pack3(node, proto, port)`` -> hostNetwork pod index or :data:`HOST_PROCESS`.
    """
    addr, target, proto, port = [], [], [], []
    for sl in slices:
        sports = [(p.proto, p.port) for p in sl.ports if p.port]
        if not sports:
            continue
        for e in sl.endpoints:
            if not e.serving or not e.addresses:
                continue
            t = pod_index.get(e.target_pod, -1) if e.target_pod else -1
            for a in e.addresses:
                for pr, po in sports:
                    addr.append(a)
                    target.append(t)
                    proto.append(pr)
                    port.append(po)
    empty = np.zeros(0, np.int64)
    if not addr:
        return empty, empty, empty, np.zeros(0, np.uint64), empty
    addr_a = np.array(addr, dtype=np.uint32)
    target_a = np.array(target, dtype=np.int64)
    proto_a = np.array(proto, dtype=np.int64)
    port_a = np.array(port, dtype=np.int64)
    pod = pod_by_ip.lookup(addr_a).astype(np.int64)
    bridged = pod >= 0
    node = node_by_ip.lookup(addr_a.astype(np.uint64)).astype(np.int64)
    host = ~bridged & (node >= 0)
    own = np.zeros(addr_a.shape[0], dtype=bool)
    has_t = target_a >= 0
    own[has_t] = pod_host[target_a[has_t]] & (pod_node[target_a[has_t]] == node[has_t])
    hval = np.where(own, target_a, HOST_PROCESS)[host]
    hkey = pack3_np(node[host], proto_a[host], port_a[host])
    return pod[bridged], proto_a[bridged], port_a[bridged], hkey, hval


def portmap_table(nodes: list[Node], pods, pod_node: np.ndarray) -> tuple[ExactTable, np.ndarray]:
    """The CNI portmap DNAT of every hostPort, and the bit set of hostPorts (uint8[8192]).

    Only pods on a node of the input with an IP and not ``hostNetwork`` (a
    hostNetwork pod's port already is its node's). Where two pods claim one
    (address, protocol, hostPort), the first in input order wins.
    """
    keys, vals = [], []
    bits = np.zeros(8192, dtype=np.uint8)
    for i, p in enumerate(pods):
        if p.host_network or p.ip is None or pod_node[i] < 0:
            continue
        for cp in p.ports:
            hp = getattr(cp, "host_port", None)
            if not hp:
                continue
            n = nodes[int(pod_node[i])]
            for a in (n.internal_ip, n.external_ip):
                if a is not None:
                    keys.append((a, cp.proto, hp))
                    vals.append((int(p.ip) << 16) | int(cp.port))
            bits[hp >> 3] |= np.uint8(1 << (hp & 7))
    if not keys:
        return ExactTable.build(np.zeros(0, np.uint64), np.zeros(0, np.int64)), bits
    k = np.array(keys, dtype=np.int64)
    packed = pack3_np(k[:, 0], k[:, 1], k[:, 2])[::-1]        # reversed: the first claim is the last write
    return ExactTable.build(packed, np.array(vals, dtype=np.int64)[::-1]), bits


def orphan_routes(routes: RouteTable, pods, node_index: dict[str, int], taken: np.ndarray) -> int:
    """Add a /32 ``NH_NODE_NOT_IN_INPUT`` route per address of a pod whose node is not in the input.

    ``taken``: addresses that stay what they are (node addresses, bridged pods).
    Returns how many routes were added.
    """
    ips = {p.ip for p in pods if p.ip is not None and p.node is not None and p.node not in node_index}
    if not ips:
        return 0
    a = np.array(sorted(ips), dtype=np.uint32)
    a = a[~np.isin(a, taken)]
    for ip in a.tolist():
        routes.insert((ip, 32), NH_NODE_NOT_IN_INPUT)
    return int(a.size)
