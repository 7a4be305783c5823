"""Synthetic NetworkPolicy sets for ``synth cluster --policies N``.

Policies as platform teams write them, over the deployments :mod:`fastpath.cluster.synth`
made (labels ``app: <name>``, named ports ``http``/``grpc``/``statsd``, ``metrics``):

* **namespace isolation**: per application namespace a default-deny ingress policy
  (``podSelector: {}``, ``policyTypes: [Ingress]``), and in some an allow from the same
  namespace (``from: [podSelector: {}]``);
* **DNS egress**: in namespaces that isolate egress, every pod may reach CoreDNS
  (``namespaceSelector`` on ``kubernetes.io/metadata.name: kube-system`` AND
  ``podSelector`` ``k8s-app: kube-dns``, UDP and TCP 53);
* **per-app allow lists** (the bulk): a policy selecting ``app: X`` that admits its
  callers (same namespace by ``podSelector``, other namespaces by namespace AND pod
  selector) on its named service port, Prometheus from ``monitoring`` on ``metrics``,
  and on some apps an egress allow list to the apps they call, DNS, and a few
  ``ipBlock`` destinations (the outside database 10.20.30.40/32, the internet as
  ``0.0.0.0/0`` except the private ranges);
* a few ``ipBlock`` ingress rules (load-balancer health checkers 198.18.0.0/15) and
  ``matchExpressions`` selectors (``version In (v1, v2)``, ``tier NotIn (batch)``).

Deterministic for a seed; ``Namespace`` objects with ``team`` labels come with them.
"""
from __future__ import annotations

import numpy as np

#: Share of namespaces that isolate egress too, and of apps with an egress allow list.
P_EGRESS_NS, P_EGRESS_APP, P_SAME_NS_ALLOW = 0.25, 0.3, 0.3


def _pol(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _dns_rule() -> dict:
    return {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def synth_policies(deploys: list[dict], namespaces: list[str], count: int, seed: int = 0) -> list[dict]:
    """``count`` NetworkPolicies (plus the ``Namespace`` objects) for the given deployments.

    ``deploys``: dicts with ``name``, ``ns``, ``kind`` (``http``/``grpc``/``statsd``),
    ``port`` and ``metrics`` (as ``synth cluster`` plans them).
    """
    if count <= 0:
        return []
    rng = np.random.default_rng([seed, 14])
    out: list[dict] = [{"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {"team": f"team-{k % 5}",
                                                            "env": "prod" if k % 3 else "staging"}}}
                       for k, ns in enumerate(namespaces)]
    out.append({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "monitoring", "labels": {"team": "platform", "env": "prod"}}})
    pols: list[dict] = []
    egress_ns = set()
    for k, ns in enumerate(namespaces):                  # namespace isolation
        pols.append(_pol(ns, "default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        if rng.random() < P_EGRESS_NS:
            egress_ns.add(ns)
            pols.append(_pol(ns, "default-deny-egress-allow-dns", {"podSelector": {}, "policyTypes": ["Egress"],
                                                                  "egress": [_dns_rule()]}))
        if rng.random() < P_SAME_NS_ALLOW:
            pols.append(_pol(ns, "allow-same-namespace", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    if not deploys:
        return out + pols[:count]
    n = len(deploys)
    round_ = 0
    while len(pols) < count:
        for d in range(n):
            if len(pols) >= count:
                break
            dep = deploys[(d * 7919 + round_ * 104729) % n] if round_ else deploys[d]
            pols.append(_app_policy(rng, dep, deploys, egress_ns, round_))
        round_ += 1
    return out + pols[:count]


def _app_policy(rng, dep: dict, deploys: list[dict], egress_ns: set, round_: int) -> dict:
    ns, app = dep["ns"], dep["name"]
    proto = "UDP" if dep["kind"] == "statsd" else "TCP"
    port: object = dep["kind"] if rng.random() < 0.7 else dep["port"]
    callers = [deploys[i] for i in rng.choice(len(deploys), size=min(len(deploys), int(rng.integers(1, 4))),
                                              replace=False)]
    peers = []
    for c in callers:
        if c["ns"] == ns:
            peers.append({"podSelector": {"matchLabels": {"app": c["name"]}}})
        else:
            peers.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": c["ns"]}},
                          "podSelector": {"matchLabels": {"app": c["name"]}}})
    ingress = [{"from": peers, "ports": [{"protocol": proto, "port": port}]}]
    if dep.get("metrics"):
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                        "ports": [{"port": "metrics"}]})
    if rng.random() < 0.03:
        ingress.append({"from": [{"ipBlock": {"cidr": "198.18.0.0/15", "except": ["198.19.0.0/24"]}}],
                        "ports": [{"protocol": proto, "port": dep["port"]}]})
    selector: dict = {"matchLabels": {"app": app}}
    if rng.random() < 0.05:
        selector["matchExpressions"] = [{"key": "version", "operator": "In", "values": ["v1", "v2"]}]
    elif rng.random() < 0.03:
        selector["matchExpressions"] = [{"key": "tier", "operator": "NotIn", "values": ["batch"]}]
    spec: dict = {"podSelector": selector, "ingress": ingress}
    if ns in egress_ns or rng.random() < P_EGRESS_APP:
        callees = [deploys[i] for i in rng.choice(len(deploys), size=min(len(deploys), int(rng.integers(1, 3))),
                                                  replace=False)]
        egress = [_dns_rule()]
        for c in callees:
            to = {"podSelector": {"matchLabels": {"app": c["name"]}}}
            if c["ns"] != ns:
                to["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": c["ns"]}}
            egress.append({"to": [to], "ports": [{"protocol": "UDP" if c["kind"] == "statsd" else "TCP",
                                                  "port": c["kind"]}]})
        u = rng.random()
        if u < 0.05:
            egress.append({"to": [{"ipBlock": {"cidr": "10.20.30.40/32"}}], "ports": [{"port": 5432}]})
        elif u < 0.1:
            egress.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12",
                                                                                "192.168.0.0/16"]}}],
                           "ports": [{"port": 443}]})
        spec["egress"] = egress
        spec["policyTypes"] = ["Ingress", "Egress"]
    suffix = f"-{round_}" if round_ else ""
    return _pol(ns, f"allow-{app}{suffix}", spec)
