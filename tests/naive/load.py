"""The loader's checks as plain per-object loops: twins of :mod:`fastpath.cluster.load`.

:func:`check_pods` is ``_check_pods`` as it was before it went column by column;
``tests/test_fastload.py`` compares the two on random pods and nodes. The endpoint
reader's slow path (``load._endpoint``, every field checked) is the twin of its fast
path (``load._endpoint_fast``) and is compared with it there too.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace

from fastpath.addr import int_to_ip, prefix_mask
from fastpath.cluster.model import Node, Pod
from fastpath.cluster.problems import Problems
from fastpath.errors import FastpathError


def check_pods(pods: list[Pod], pod_src: list[str], nodes: list[Node], warnings: list[str],
               problems: Problems) -> dict[str, int]:
    """Pod addresses against nodes; returns the node names pods give that no Node has (-> pod count).

    Pods on such nodes are kept with ``node_known=False`` (a namespace-scoped dump has no Nodes).
    """
    node_cidrs = {n.name: n.pod_cidrs for n in nodes}
    missing: dict[str, int] = {}
    spans = sorted((net, net | (~prefix_mask(length) & 0xFFFFFFFF)) for n in nodes for net, length in n.pod_cidrs)
    starts = [s for s, _ in spans]
    by_ip: dict[int, int] = {}
    outside: list[int] = []
    foreign: list[int] = []
    for i, p in enumerate(pods):
        own = ()
        if p.node is not None:
            own = node_cidrs.get(p.node)
            if own is None:
                missing[p.node] = missing.get(p.node, 0) + 1
                problems.add("node-not-in-input", f"{p.key} on {p.node}")
                p = pods[i] = replace(p, node_known=False)
        if p.ip is None or p.host_network:
            continue
        j = by_ip.setdefault(p.ip, i)
        if j != i:
            q = pods[j]
            raise FastpathError(f"{pod_src[i]}: Pod {p.key}: IP {int_to_ip(p.ip)} is also Pod {q.key}'s")
        if p.node is None or not p.node_known:
            continue
        ip = p.ip
        for net, length in own:
            if ip & prefix_mask(length) == net:
                break
        else:
            k = bisect_right(starts, ip) - 1
            if k >= 0 and ip <= spans[k][1]:
                foreign.append(i)
            else:
                outside.append(i)
    if outside:
        p = pods[outside[0]]
        warnings.append(f"{len(outside)} pod IP{'s' * (len(outside) != 1)} outside every node's pod CIDR "
                        f"(e.g. Pod {p.key} {int_to_ip(p.ip)}): Calico-style or VPC-native addressing (Calico IPAM "
                        f"blocks, the AWS VPC CNI), routed by block or host routes")
    if foreign:
        p = pods[foreign[0]]
        warnings.append(f"{len(foreign)} pod IP{'s' * (len(foreign) != 1)} inside another node's pod CIDR "
                        f"(e.g. Pod {p.key} {int_to_ip(p.ip)} on {p.node}): borrowed addresses, routed by host routes")
    return missing
