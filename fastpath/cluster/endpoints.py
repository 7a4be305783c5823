"""Endpoints of services: the EndpointSlice controller's work, for services given without slices.

For every service with a selector and no EndpointSlice in the input, the pods
of its namespace whose labels hold every selector pair become endpoints, with
the conditions the controller sets (``kubernetes/pkg/controller/endpointslice``,
``staging/src/k8s.io/endpointslice``):

* only pods with an IP and a node;
* ``ready`` = pod Ready and not terminating, ``serving`` = pod Ready,
  ``terminating`` = ``metadata.deletionTimestamp`` set;
* ``nodeName``, ``zone`` (the node's ``topology.kubernetes.io/zone``), ``targetRef``
  the pod; zone hints (``forZones`` = own zone) for ``trafficDistribution``
  PreferClose / PreferSameZone / PreferSameNode, and node hints (``forNodes`` = own
  node) for PreferSameNode (KEP-3015);
* one port per service port: a numeric ``targetPort`` as is; a named one resolved
  per pod over its container ports with that name *and* the service port's
  protocol (``podutil.FindPort``); a pod lacking the name gets no port for it;
* endpoints grouped into one slice per distinct port mapping; a service
  matching no pod gets one empty slice, as the controller's placeholder.

ExternalName services and services without a selector get none.
"""
from __future__ import annotations

import zlib

from .load import gc_paused
from .load_kinds import _object_new
from .model import Cluster, Endpoint, EndpointSlice, EndpointSlicePort, Pod, Service

#: ``trafficDistribution`` values for which the controller writes zone hints.
ZONE_HINT_DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")
#: ``trafficDistribution`` values for which it also writes node hints.
NODE_HINT_DISTRIBUTIONS = ("PreferSameNode",)
#: Letters of Kubernetes' generated name suffixes (``generateName``).
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def endpoints_for(cluster: Cluster) -> list[EndpointSlice]:
    """Every endpoint slice of the cluster: the given ones, then :func:`derive_slices`."""
    return list(cluster.slices) + derive_slices(cluster)


def derive_slices(cluster: Cluster) -> list[EndpointSlice]:
    """Build the EndpointSlices the controller would for services given without any.

    Parameters
    ----------
    cluster
        A loaded cluster. Services that already have an EndpointSlice (by
        namespace and ``kubernetes.io/service-name``) are left alone.

    Returns
    -------
    list of EndpointSlice
        In service order; within a service one slice per distinct port mapping,
        in order of the first pod having it; endpoints in pod order.
    """
    with gc_paused():
        return _derive(cluster)


def _derive(cluster: Cluster) -> list[EndpointSlice]:
    given = {(s.namespace, s.service) for s in cluster.slices}
    wanted = [s for s in cluster.services
              if s.selector and s.type != "ExternalName" and (s.namespace, s.name) not in given]
    if not wanted:
        return []
    pods = cluster.pods
    zone_of = {n.name: n.zone for n in cluster.nodes}

    # index endpoint-able pods by (namespace, label key, value), only for keys some selector uses
    keys_by_ns: dict[str, set[str]] = {}
    for s in wanted:
        keys_by_ns.setdefault(s.namespace, set()).update(s.selector)
    index: dict[str, dict[str, dict[str, list[int]]]] = {
        ns: {k: {} for k in keys} for ns, keys in keys_by_ns.items()}
    for i, p in enumerate(pods):
        if p.ip is None or p.node is None:
            continue
        by_key = index.get(p.namespace)
        if by_key is None:
            continue
        labels = p.labels
        for k, values in by_key.items():
            v = labels.get(k)
            if v is not None:
                lst = values.get(v)
                if lst is None:
                    values[v] = [i]
                else:
                    lst.append(i)

    cache: dict[tuple[int, bool, bool], Endpoint] = {}
    port_objs: dict[tuple, EndpointSlicePort] = {}
    used_names: set[tuple[str, str]] = {(s.namespace, s.name) for s in cluster.slices}
    out: list[EndpointSlice] = []
    for svc in wanted:
        by_key = index[svc.namespace]
        candidates: list[int] | None = None
        for k, v in svc.selector.items():
            lst = by_key[k].get(v)
            if not lst:
                candidates = []
                break
            if candidates is None or len(lst) < len(candidates):
                candidates = lst
        selector = tuple(svc.selector.items())
        hints = svc.traffic_distribution in ZONE_HINT_DISTRIBUTIONS
        node_hints = svc.traffic_distribution in NODE_HINT_DISTRIBUTIONS
        # a port mapping as plain (name, port, proto) tuples; pods of one template share
        # their ports tuple, so it is resolved once per template
        fixed = None
        if all(type(sp.target_port) is int for sp in svc.ports):
            fixed = tuple((sp.name, sp.target_port, sp.proto) for sp in svc.ports)
        by_template: dict[int, tuple] = {}
        groups: dict[tuple, list[Endpoint]] = {}
        for i in candidates or ():
            p = pods[i]
            labels = p.labels
            for k, v in selector:
                if labels.get(k) != v:
                    break
            else:
                mapping = fixed
                if mapping is None:
                    mapping = by_template.get(id(p.ports))
                    if mapping is None:
                        mapping = by_template[id(p.ports)] = _port_mapping(svc, p)
                key = (i, hints, node_hints)
                ep = cache.get(key)
                if ep is None:
                    ep = cache[key] = _endpoint(p, zone_of.get(p.node), hints, node_hints)
                group = groups.get(mapping)
                if group is None:
                    groups[mapping] = [ep]
                else:
                    group.append(ep)
        if not groups:
            groups[()] = []
        for mapping, eps in groups.items():
            ports = []
            for m in mapping:
                po = port_objs.get(m)
                if po is None:
                    po = port_objs[m] = EndpointSlicePort(name=m[0], port=m[1], proto=m[2])
                ports.append(po)
            out.append(EndpointSlice(namespace=svc.namespace, name=_slice_name(svc, len(out), used_names),
                                     service=svc.name, ports=tuple(ports), endpoints=tuple(eps)))
    return out


def _port_mapping(svc: Service, pod: Pod) -> tuple[tuple[str | None, int, int], ...]:
    """``(name, port, proto)`` per service port the pod serves: numbers as is, names resolved on the pod."""
    out = []
    for sp in svc.ports:
        target = sp.target_port
        if type(target) is not int:
            for cp in pod.ports:
                if cp.name == target and cp.proto == sp.proto:
                    target = cp.port
                    break
            else:
                continue  # this pod does not serve the named port
        out.append((sp.name, target, sp.proto))
    return tuple(out)


def _endpoint(p: Pod, zone: str | None, hints: bool, node_hints: bool = False) -> Endpoint:
    # every field set in its order at once, not by the frozen dataclass's __init__ (one
    # object.__setattr__ a field: a third of the derivation at 150,000 pods)
    ready, term, node = p.ready, p.terminating, p.node
    ep = _object_new(Endpoint)
    fields = ep.__dict__
    fields["addresses"] = (p.ip,)
    fields["ready"] = ready and not term
    fields["serving"] = ready
    fields["terminating"] = term
    fields["node"] = node
    fields["zone"] = zone
    fields["hint_zones"] = (zone,) if hints and zone else ()
    fields["target_pod"] = f"{p.namespace}/{p.name}"
    fields["hint_nodes"] = (node,) if node_hints and node else ()
    return ep


def _slice_name(svc: Service, salt: int, used: set[tuple[str, str]]) -> str:
    """``<service>-<5 letters>`` like ``generateName``, but deterministic and unique in the namespace."""
    h = zlib.crc32(f"{svc.namespace}/{svc.name}/{salt}".encode())
    while True:
        suffix = "".join(NAME_ALPHABET[(h // 27 ** k) % 27] for k in range(5))
        name = f"{svc.name[:57]}-{suffix}"
        if (svc.namespace, name) not in used:
            used.add((svc.namespace, name))
            return name
        h = zlib.crc32(name.encode(), h)
