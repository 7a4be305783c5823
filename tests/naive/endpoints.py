"""Slow twin of :func:`fastpath.cluster.endpoints.derive_slices`: every service against every pod.

Written from the EndpointSlice controller's rules (docs in the fast module), with no index:
for each service, scan all pods; for each matching pod, resolve every service port; group
endpoints by the resolved port list. Returns a canonical form (no slice names) to compare.
"""
from __future__ import annotations

#: trafficDistribution values that put the endpoint's own zone in its hints.
HINTED = {"PreferClose", "PreferSameZone", "PreferSameNode"}


def derive(cluster) -> list[tuple]:
    """``[(namespace, service, ports, endpoints)]`` with ports ``((name, port, proto), ...)``
    and endpoints ``((addresses, ready, serving, terminating, node, zone, hints, target), ...)``,
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
            ep = ((pod.ip,), pod.ready and not pod.terminating, pod.ready, pod.terminating,
                  pod.node, zone, hints, pod.namespace + "/" + pod.name)
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
             tuple((e.addresses, e.ready, e.serving, e.terminating, e.node, e.zone, e.hint_zones, e.target_pod)
                   for e in s.endpoints))
            for s in slices]
