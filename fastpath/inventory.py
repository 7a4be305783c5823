"""``fastpath ls``: a cluster's pods, services and nodes, as ``kubectl get`` lists them.

So a user can find the names ``explain`` takes without reading the JSON.
:func:`rows` gives the rows as dicts (``-o json``); :func:`listing` renders them
as a plain, space-aligned table (``-o table``; ``-o wide`` adds columns). Names
are never cut: the table is as wide as its longest cell, whatever the terminal.
"""
from __future__ import annotations

import json

from .addr import format_cidr, int_to_ip
from .cluster.model import PROTO_NAMES, Cluster
from .errors import FastpathError

#: Kind names and short forms ``ls`` takes, as kubectl's.
KINDS = {"pods": "pods", "po": "pods", "pod": "pods", "services": "services", "svc": "services",
         "service": "services", "nodes": "nodes", "no": "nodes", "node": "nodes"}
#: Columns of each kind: (key, header, only with -o wide).
COLUMNS = {
    "pods": (("namespace", "NAMESPACE", False), ("name", "NAME", False), ("status", "STATUS", False),
             ("ip", "IP", False), ("node", "NODE", False), ("ports", "PORTS", True),
             ("host_network", "HOST-NETWORK", True)),
    "services": (("namespace", "NAMESPACE", False), ("name", "NAME", False), ("type", "TYPE", False),
                 ("cluster_ip", "CLUSTER-IP", False), ("external_ip", "EXTERNAL-IP", False),
                 ("ports", "PORT(S)", False), ("endpoints", "ENDPOINTS", True), ("selector", "SELECTOR", True)),
    "nodes": (("name", "NAME", False), ("internal_ip", "INTERNAL-IP", False), ("pod_cidr", "POD-CIDR", False),
              ("zone", "ZONE", False), ("pods", "PODS", False), ("external_ip", "EXTERNAL-IP", True)),
}


def _ip(v: int | None) -> str | None:
    return None if v is None else int_to_ip(int(v))


def _proto(p: int) -> str:
    return PROTO_NAMES.get(p, str(p))


def _pod_rows(cluster: Cluster, namespace: str | None) -> list[dict]:
    out = []
    for p in cluster.pods:
        if namespace is not None and p.namespace != namespace:
            continue
        status = "Terminating" if p.terminating else ("Ready" if p.ready else "NotReady")
        if p.node is None:
            status = "Pending"
        ports = ",".join(f"{c.name + ':' if c.name else ''}{c.port}/{_proto(c.proto)}" for c in p.ports)
        out.append({"namespace": p.namespace, "name": p.name, "status": status, "ip": _ip(p.ip), "node": p.node,
                    "ports": ports or None, "host_network": p.host_network})
    return out


def _service_rows(cluster: Cluster, namespace: str | None) -> list[dict]:
    from .cluster.endpoints import endpoints_for

    ready: dict[str, int] = {}
    for sl in endpoints_for(cluster):
        key = f"{sl.namespace}/{sl.service}"
        ready[key] = ready.get(key, 0) + sum(1 for e in sl.endpoints if e.ready)
    out = []
    for s in cluster.services:
        if namespace is not None and s.namespace != namespace:
            continue
        if s.type == "ExternalName":
            cip = None
        else:
            cip = "None" if s.headless else ",".join(int_to_ip(int(i)) for i in s.cluster_ips) or None
        ext = [int_to_ip(int(i)) for i in s.lb_ips + s.external_ips] or ([s.external_name] if s.external_name else [])
        ports = ",".join(f"{sp.name + ':' if sp.name else ''}{sp.port}"
                         f"{'/' + str(sp.node_port) if sp.node_port else ''}/{_proto(sp.proto)}" for sp in s.ports)
        selector = ",".join(f"{k}={v}" for k, v in sorted((s.selector or {}).items()))
        out.append({"namespace": s.namespace, "name": s.name, "type": s.type, "cluster_ip": cip,
                    "external_ip": ",".join(ext) or None, "ports": ports or None,
                    "endpoints": ready.get(s.key, 0), "selector": selector or None})
    return out


def _node_rows(cluster: Cluster) -> list[dict]:
    count: dict[str, int] = {}
    for p in cluster.pods:
        if p.node is not None:
            count[p.node] = count.get(p.node, 0) + 1
    return [{"name": n.name, "internal_ip": _ip(n.internal_ip),
             "pod_cidr": ",".join(format_cidr(net, ln) for net, ln in n.pod_cidrs) or None, "zone": n.zone,
             "pods": count.get(n.name, 0), "external_ip": _ip(n.external_ip)} for n in cluster.nodes]


def rows(cluster: Cluster, kind: str = "pods", namespace: str | None = None) -> list[dict]:
    """The objects of ``kind`` (pods, services, nodes; kubectl's short forms too) as dicts, in input order.

    Parameters
    ----------
    namespace
        Only this namespace (pods, services); None: all. Nodes have no namespace.
    """
    k = KINDS.get(kind)
    if k is None:
        raise FastpathError(f"ls: unknown kind {kind!r}; use pods, services or nodes")
    if k == "pods":
        return _pod_rows(cluster, namespace)
    if k == "services":
        return _service_rows(cluster, namespace)
    return _node_rows(cluster)


def _cell(v) -> str:
    if v is None:
        return "<none>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def listing(cluster: Cluster, kind: str = "pods", namespace: str | None = None, output: str = "table") -> str:
    """``kind`` as text: ``table`` (kubectl's columns), ``wide`` (more columns), ``json`` (every field) or
    ``name`` (``pod/NAMESPACE/NAME`` a line, as ``explain --src``/``--dst`` take them)."""
    k = KINDS.get(kind, kind)
    data = rows(cluster, k, namespace)
    if output == "json":
        return json.dumps(data, indent=2) + "\n"
    if output == "name":      # kubectl's -o name: what explain --src/--dst take
        prefix = {"pods": "pod/", "services": "svc/", "nodes": "node/"}[k]
        return "".join(f"{prefix}{r['namespace'] + '/' if 'namespace' in r else ''}{r['name']}\n" for r in data)
    if output not in ("table", "wide"):
        raise FastpathError(f"ls: unknown output {output!r}; use table, wide, json or name")
    cols = [(key, head) for key, head, wide in COLUMNS[k] if output == "wide" or not wide]
    if namespace is not None and k != "nodes":
        cols = [(key, head) for key, head in cols if key != "namespace"]
    if not data:
        where = f" in namespace {namespace}" if namespace is not None and k != "nodes" else ""
        return f"No {k} found{where}.\n"
    table = [[head for _, head in cols]] + [[_cell(r[key]) for key, _ in cols] for r in data]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in table)
