"""Slow twin of :mod:`fastpath.stages.policy`: plain Python over the NetworkPolicy objects.

Written from ``../shared/spec/kubernetes-dataplane.md`` §6 and ``docs/dataplane.md``
("NetworkPolicy"), with no compilation: for one connection it walks every policy,
every rule, every peer, every port. Nothing is shared with the kernel but the model
objects (:mod:`fastpath.cluster.netpol`) and their ``matches`` methods, which are
checked on their own in ``tests/test_policy.py``.

The connection is given as the stage sees it: after kube-proxy (``dst_ip``/``dst_port``
are the backend's), with ``seen_src`` the source address as it arrives at the
destination (after any masquerade).
"""
from __future__ import annotations

import ipaddress
from typing import Optional

NS_NAME_LABEL = "kubernetes.io/metadata.name"


class NaivePolicies:
    """The cluster's pods, nodes and policies as dicts and lists."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.policies = list(cluster.policies)
        # pods reachable by address: an IP, a node of the input, not hostNetwork
        nodes = {n.name for n in cluster.nodes}
        self.pod_by_ip = {}
        for p in cluster.pods:
            if p.ip is not None and p.node in nodes and not p.host_network:
                self.pod_by_ip.setdefault(p.ip, p)
        self.node_ips = {}
        self.node_by_ip = {}
        for n in cluster.nodes:
            self.node_ips[n.name] = {ip for ip in (n.internal_ip, n.external_ip) if ip is not None}
            for ip in self.node_ips[n.name]:
                self.node_by_ip.setdefault(ip, n.name)
        self.ns_labels = {}
        given = cluster.namespaces or {}
        for name, labels in (given.items() if isinstance(given, dict) else ((n.name, n.labels) for n in given)):
            self.ns_labels[name] = dict(labels)
        for p in cluster.pods:
            self.ns_labels.setdefault(p.namespace, {})
        for pol in self.policies:
            self.ns_labels.setdefault(pol.namespace, {})
        for name, labels in self.ns_labels.items():
            labels[NS_NAME_LABEL] = name

    # ------------------------------------------------------------------ the rules
    @staticmethod
    def selects(pol, pod) -> bool:
        """§6.1/§6.5: a policy selects pods of its own namespace, never hostNetwork pods."""
        return pod.namespace == pol.namespace and not pod.host_network and pol.pod_selector.matches(pod.labels)

    def peer_matches(self, pol, peer, pod, ip: int) -> bool:
        """§6.3: one peer against the other end (``pod`` None: not a pod)."""
        if peer.ip_block is not None:
            b = peer.ip_block
            if b.cidr is None:
                return False
            addr = ipaddress.ip_address(ip)
            net = ipaddress.ip_network((b.cidr[0], b.cidr[1]))
            if addr not in net:
                return False
            return not any(addr in ipaddress.ip_network((n, ln)) for n, ln in b.excepts)
        if pod is None:
            return False
        if peer.namespace_selector is None:
            if pod.namespace != pol.namespace:
                return False
        elif not peer.namespace_selector.matches(self.ns_labels[pod.namespace]):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)

    @staticmethod
    def port_matches(rule, proto: int, port: int, dst_pod) -> bool:
        """§6.3: numbers, ranges (endPort), names resolved on the destination pod; no ports = all."""
        if rule.ports is None:
            return True
        for p in rule.ports:
            if p.proto != proto:
                continue
            if p.port is None:
                return True
            if isinstance(p.port, str):
                if dst_pod is not None and any(cp.name == p.port and cp.proto == proto and cp.port == port
                                               for cp in dst_pod.ports):
                    return True
            elif p.port <= port <= (p.end_port if p.end_port is not None else p.port):
                return True
        return False

    def _side(self, subject, egress: bool, peer_pod, peer_ip, proto, port, dst_pod):
        """(isolated, index of the first policy that allows, or None)."""
        isolated = False
        for k, pol in enumerate(self.policies):
            if not (pol.affects_egress if egress else pol.affects_ingress) or not self.selects(pol, subject):
                continue
            isolated = True
            for rule in (pol.egress if egress else pol.ingress):
                peer_ok = rule.peers is None or any(self.peer_matches(pol, q, peer_pod, peer_ip) for q in rule.peers)
                if peer_ok and self.port_matches(rule, proto, port, dst_pod):
                    return True, k
        return isolated, None

    def decide(self, src_ip: int, seen_src: int, dst_ip: int, dst_port: int, proto: int) -> dict:
        """One connection: ``{"denied": None | "policy-egress" | "policy-ingress", "egress": a, "ingress": a}``.

        ``a`` is the allowing policy's index, ``"exempt"``, ``"open"`` (not isolated) or None.
        """
        out = {"denied": None, "egress": "open", "ingress": "open"}
        src = self.pod_by_ip.get(src_ip)
        dst = self.pod_by_ip.get(dst_ip)
        if src is not None and dst is not None and src is dst:
            out["egress"] = out["ingress"] = "exempt"         # a pod to itself
            return out
        if src is not None:
            isolated = any(p.affects_egress and self.selects(p, src) for p in self.policies)
            if isolated:
                if dst is None and dst_ip in self.node_ips.get(src.node, ()):
                    out["egress"] = "exempt"                  # to its own node
                else:
                    _, k = self._side(src, True, dst, dst_ip, proto, dst_port, dst)
                    out["egress"] = k
                    if k is None:
                        out["denied"] = "policy-egress"
                        return out
        if dst is not None:
            isolated = any(p.affects_ingress and self.selects(p, dst) for p in self.policies)
            if isolated:
                seen_pod = src if seen_src == src_ip else self.pod_by_ip.get(seen_src)
                if seen_pod is None and seen_src in self.node_ips.get(dst.node, ()):
                    out["ingress"] = "exempt"                 # from its own node
                else:
                    _, k = self._side(dst, False, seen_pod, seen_src, proto, dst_port, dst)
                    out["ingress"] = k
                    if k is None:
                        out["denied"] = "policy-ingress"
        return out


def allowed_ports(net: NaivePolicies, src_ip: int, seen_src: int, dst_ip: int, proto: int,
                  ports=range(1, 65536)) -> list[int]:
    """Every port of ``ports`` the policies allow for this pair (slow: for small checks)."""
    return [p for p in ports if net.decide(src_ip, seen_src, dst_ip, p, proto)["denied"] is None]
