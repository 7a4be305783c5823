"""The EndpointSlice controller over a stream of pod events: the slice updates it writes.

A service given with EndpointSlices takes its endpoints from them (interfaces.md), so pod
events alone do not move its backends: the controller rewrites the slices as its pods come,
turn Ready, terminate and go. :func:`with_slice_updates` adds those writes to a time-ordered
event list: after each group of events with one ``ts``, the slice events of every service
whose selected pods the group changed. The slices are computed as
:func:`fastpath.cluster.endpoints.derive_slices` derives them, and matched to the service's
existing slices by ports (names and metadata kept; an extra one ADDED, one left over
DELETED). Services given without slices need nothing: their endpoints follow the pods.
"""
from __future__ import annotations

import zlib
from typing import Iterator

from .endpoints import NAME_ALPHABET, derive_slices
from .load import cluster_from_objects
from .model import Cluster
from .synth import slice_object

#: Label naming an EndpointSlice's service.
SERVICE_LABEL = "kubernetes.io/service-name"

WatchEvent = tuple[int, str, dict]       # (ts, type, object)


def with_slice_updates(objects: list[dict], events: list[WatchEvent]) -> list[WatchEvent]:
    """``events`` (Pods and Nodes, in time order, over the cluster ``objects``) with the slice updates.

    ``objects``: the cluster's raw Nodes, Pods, Services and EndpointSlices, one of each name.
    The events are returned as given, each ``ts`` group followed by its slice events.
    """
    services = {_key(o): o for o in objects if o["kind"] == "Service"}
    slices: dict[tuple[str, str], list[dict]] = {}
    for o in objects:
        s = (_key(o)[0], (o["metadata"].get("labels") or {}).get(SERVICE_LABEL))
        if o["kind"] == "EndpointSlice" and ((services.get(s) or {}).get("spec") or {}).get("selector"):
            slices.setdefault(s, []).append(o)
    if not slices:
        return list(events)
    managed: dict[str, list[tuple[str, str]]] = {}     # namespace -> its services given with slices
    for s in slices:
        managed.setdefault(s[0], []).append(s)
    by_ns: dict[str, dict] = {}                        # namespace -> pod key -> pod, as the events go
    for o in objects:
        if o["kind"] == "Pod":
            by_ns.setdefault(_key(o)[0], {})[_key(o)] = o
    names = {_key(o) for o in objects if o["kind"] == "EndpointSlice"}
    nodes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Node"}
    parsed: dict[int, tuple] = {}          # id(object) -> (object, its model), each object parsed once
    out: list[WatchEvent] = []
    i = 0
    while i < len(events):
        ts, touched = events[i][0], set()
        while i < len(events) and events[i][0] == ts:
            _, etype, obj = events[i]
            out.append(events[i])
            i += 1
            if obj["kind"] == "Node":
                nodes[obj["metadata"]["name"]] = obj
            if obj["kind"] != "Pod":
                continue
            key = _key(obj)
            pods = by_ns.setdefault(key[0], {})
            for o in (pods.get(key), obj):        # the services that selected it before, and after
                labels = (o or {}).get("metadata", {}).get("labels") or {}
                touched.update(s for s in managed.get(key[0], ()) if _selects(services[s], labels))
            if etype == "DELETED":
                pods.pop(key, None)
            else:
                pods[key] = obj
        for s in sorted(touched):
            out.extend((ts, etype, o) for etype, o in _update(s, services[s], slices, by_ns[s[0]], nodes, names,
                                                                parsed))
    return out


def _update(s: tuple[str, str], svc: dict, slices: dict, pods: dict, nodes: dict, names: set,
            parsed: dict) -> Iterator[tuple[str, dict]]:
    """The slice events that bring service ``s``'s slices in line with its pods; ``slices[s]`` updated."""
    def model(obj: dict):
        if id(obj) not in parsed:
            one = cluster_from_objects([obj], source="slice updates")
            parsed[id(obj)] = (obj, (one.nodes or one.pods or one.services)[0])
        return parsed[id(obj)][1]

    members = [o for o in pods.values() if _selects(svc, o["metadata"].get("labels") or {})]
    on = {(o.get("spec") or {}).get("nodeName") for o in members}
    mini = Cluster(nodes=[model(nodes[n]) for n in sorted(on - {None}) if n in nodes],
                   pods=[model(o) for o in members], services=[model(svc)], slices=[])
    derived = [slice_object(x) for x in derive_slices(mini)]
    pool, new = list(slices[s]), []
    # the derived slices whose ports an existing one has take it first; the others take what is left
    for d in sorted(derived, key=lambda d: not any(_ports(c) == _ports(d) for c in pool)):
        cur = next((c for c in pool if _ports(c) == _ports(d)), pool[0] if pool else None)
        if cur is None:
            name = d["metadata"]["name"]
            while (s[0], name) in names:
                h = zlib.crc32(name.encode())
                name = f"{s[1][:57]}-{''.join(NAME_ALPHABET[(h // 27 ** k) % 27] for k in range(5))}"
            names.add((s[0], name))
            new.append({**d, "metadata": {**d["metadata"], "name": name}})
            yield "ADDED", new[-1]
            continue
        pool.remove(cur)
        new.append({**cur, "endpoints": d["endpoints"], "ports": d["ports"]})
        if d["endpoints"] != cur.get("endpoints") or _ports(d) != _ports(cur):
            yield "MODIFIED", new[-1]
    for cur in pool:
        yield "DELETED", cur
    slices[s] = new


def _key(obj: dict) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "default", obj["metadata"]["name"]


def _selects(svc: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def _ports(o: dict) -> list:
    return sorted((p.get("name") or "", p.get("port"), p.get("protocol") or "TCP") for p in o.get("ports") or ())
