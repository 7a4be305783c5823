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
    # one entry at a time: a bridged pod's address listens in that pod; a node's address on that
    # node's host (its hostNetwork target pod when it runs there, else "something in the host")
    pods_out, protos_out, ports_out, hkeys, hvals = [], [], [], [], []
    for a, t, pr, po in zip(addr, target, proto, port):
        pod = int(pod_by_ip.lookup(np.array([a], np.uint32))[0])
        if pod >= 0:
            pods_out.append(pod)
            protos_out.append(pr)
            ports_out.append(po)
            continue
        node = int(node_by_ip.lookup(np.array([a], np.uint64))[0])
        if node < 0:
            continue
        own = t >= 0 and bool(pod_host[t]) and int(pod_node[t]) == node
        hkeys.append((node << 24) | (pr << 16) | po)           # pack3: a << 24 | proto << 16 | port
        hvals.append(t if own else HOST_PROCESS)
    return (np.array(pods_out, np.int64), np.array(protos_out, np.int64), np.array(ports_out, np.int64),
            np.array(hkeys, np.uint64), np.array(hvals, np.int64))


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
