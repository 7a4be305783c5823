"""Slow twin of :func:`fastpath.cluster.endpoints.derive_slices`: every service against every pod.

Written from the EndpointSlice controller's rules (docs in the fast module), with no index:
for each service, scan all pods; for each matching pod, resolve every service port; group
endpoints by the resolved port list. Returns a canonical form (no slice names) to compare.
"""
from __future__ import annotations

#: trafficDistribution values that put the endpoint's own zone in its hints.
HINTED = {"PreferClose", "PreferSameZone", "PreferSameNode"}
#: And the ones that also put the endpoint's own node in its node hints (KEP-3015).
NODE_HINTED = {"PreferSameNode"}


def derive(cluster) -> list[tuple]:
    """``[(namespace, service, ports, endpoints)]`` with ports ``((name, port, proto), ...)``
    and endpoints ``((addresses, ready, serving, terminating, node, zone, hints, target, node_hints), ...)``,
    one entry per derived slice, in service order then first-seen mapping order."""
    has_slice = set()
    for s in cluster.slices:
        has_slice.add(s.namespace + "/" + s.service)
    zones = {}
    for n in cluster.nodes:
        zones[n.name] = n.zone
    out = []
    for svc in cluster.services:
        if svc.type == "ExternalName" or not svc.selector:
            continue
        if svc.namespace + "/" + svc.name in has_slice:
            continue
        mappings = []          # list of [ports, endpoints]
        for pod in cluster.pods:
            if pod.namespace != svc.namespace or pod.ip is None or pod.node is None:
                continue
            if not all(pod.labels.get(k) == v for k, v in svc.selector.items()):
                continue
            ports = []
            for sp in svc.ports:
                if isinstance(sp.target_port, int):
                    ports.append((sp.name, sp.target_port, sp.proto))
                    continue
                found = [cp.port for cp in pod.ports if cp.name == sp.target_port and cp.proto == sp.proto]
                if found:
                    ports.append((sp.name, found[0], sp.proto))
            ports = tuple(ports)
            zone = zones.get(pod.node)
            hints = (zone,) if svc.traffic_distribution in HINTED and zone else ()
            node_hints = (pod.node,) if svc.traffic_distribution in NODE_HINTED else ()
            ep = ((pod.ip,), pod.ready and not pod.terminating, pod.ready, pod.terminating,
                  pod.node, zone, hints, pod.namespace + "/" + pod.name, node_hints)
            for m in mappings:
                if m[0] == ports:
                    m[1].append(ep)
                    break
            else:
                mappings.append([ports, [ep]])
        if not mappings:
            mappings.append([(), []])
        for ports, eps in mappings:
            out.append((svc.namespace, svc.name, ports, tuple(eps)))
    return out


def canonical(slices) -> list[tuple]:
    """The same form from :class:`EndpointSlice` objects (names dropped)."""
    return [(s.namespace, s.service, tuple((p.name, p.port, p.proto) for p in s.ports),
             tuple((e.addresses, e.ready, e.serving, e.terminating, e.node, e.zone, e.hint_zones, e.target_pod,
                    e.hint_nodes)
                   for e in s.endpoints))
            for s in slices]


# --------------------------------------------------------------------------- reading slices and Endpoints

def conditions(cond: dict | None) -> tuple[bool, bool, bool]:
    """``(ready, serving, terminating)`` of an EndpointSlice endpoint's ``conditions``, as kube-proxy
    reads them (``pkg/proxy/endpointslicecache.go``): a missing ready or serving is true, a missing
    terminating is false."""
    cond = cond or {}
    ready = cond.get("ready") is not False
    serving = cond.get("serving") is not False
    terminating = cond.get("terminating") is True
    return ready, serving, terminating


def mirror(endpoints: dict) -> list[tuple]:
    """What the EndpointSliceMirroring controller makes of a legacy ``Endpoints`` object, in the
    :func:`canonical` form: one slice per subset, ``addresses`` ready, ``notReadyAddresses`` not
    ready (only ``ready`` is set, so serving reads true and terminating false), IPv4 only."""
    import ipaddress

    ns = endpoints["metadata"].get("namespace") or "default"
    name = endpoints["metadata"]["name"]
    out = []
    for sub in endpoints.get("subsets") or []:
        ports = tuple((p.get("name") or None, int(p["port"]), {"TCP": 6, "UDP": 17, "SCTP": 132}[p.get("protocol", "TCP")])
                      for p in sub.get("ports") or [])
        eps = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in sub.get(key) or []:
                addr = ipaddress.ip_address(a["ip"])
                if addr.version != 4:
                    continue
                ref = a.get("targetRef") or {}
                target = None
                if ref.get("kind") == "Pod":
                    target = (ref.get("namespace") or ns) + "/" + ref["name"]
                eps.append(((int(addr),), ready, True, False, a.get("nodeName"), None, (), target, ()))
        out.append((ns, name, ports, tuple(eps)))
    return out
