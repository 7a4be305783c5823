"""Slow twin of the replay against a changing cluster (``docs/events.md``): rebuild everything, every group.

Written from ``docs/events.md`` rule by rule, the obviously-right way: the raw objects
are kept in one dict in *universe order*; before each flow every group of events with
``ts <=`` the flow's time is applied to it, and after each group the whole cluster is
loaded afresh (:func:`fastpath.cluster.load.cluster_from_objects`) and new
:class:`~naive.pipeline.NaiveNetwork` / :class:`~naive.services.NaiveServices` twins are
built for it; only the balancer state (``rr``, ``conns``, ``affinity``: keyed by node,
service-port names and ``(ip, port)``, so they mean the same in every rebuild) is carried
from one to the next. Nothing is shared with the incremental tables.

Inputs
------
``objects``
    The base cluster's raw Kubernetes objects (dicts; ``List`` objects are flattened).
``events``
    Dicts ``{"type": "ADDED" | "MODIFIED" | "DELETED", "ts": int ns, "object": dict}``
    in time order; ``ts`` may also be an RFC 3339 string. ``BOOKMARK`` events and events
    of kinds other than :data:`EVENT_KINDS` are skipped and form no group; ``ERROR`` raises.
``flows``
    Dicts with ``ts`` (int ns, non-decreasing), ``src_ip``, ``dst_ip`` (ints),
    ``src_port``, ``dst_port``, ``proto`` and optionally ``duration`` (seconds;
    ``None``/NaN: the per-protocol default).

Identity and order (``docs/events.md`` "What a flow sees")
    An object is ``(kind, namespace, name)``, the namespace ``""`` for cluster-scoped
    kinds and ``"default"`` where a namespaced object gives none (the loader's rule).
    Universe order: base objects in input order, then objects first added by events in
    the order of their first event; a deleted object that comes back keeps its place.
    ``ADDED`` of an existing object acts as ``MODIFIED`` and the reverse; ``DELETED`` of
    an absent object does nothing (but is still an event of its group).

Results (first element of the returned pair)
    One dict per flow, the columns of :data:`fastpath.pipeline.RESULT_SCHEMA` as Python
    values: ``verdict``, ``reason`` (``None`` when none), ``path``, ``src_node``,
    ``dst_node``, ``src_pod``, ``dst_pod``, ``service`` (names or ``None``),
    ``dnat_ip``, ``dnat_port``, ``snat_ip``, ``hops`` (ints). With ``conntrack=True``
    the results are those after :class:`~naive.conntrack.NaiveConntrack` tracked them
    (one tracker for the whole replay, sized from each node's first version; its pod
    facts follow the cluster at each group; a pod new to it has its MAC learned at its
    group's time).

Summary (second element)::

    {
      "broken_connections": int,   # TCP/SCTP (any proto but 17) connections broken, all groups
      "udp_flushed": int,          # UDP flows flushed, all groups
      "event_groups": int,         # groups of events (equal ts); BOOKMARKs and skipped kinds in none
      "events": [                  # one record per group, in time order
        {"ts": int,                              # the group's ts (ns)
         "events": int,                          # events in the group
         "kinds": {"MODIFIED Pod": 2, ...},      # count by "TYPE Kind", in order of first occurrence
         "affected_service_ports": [str, ...],   # sorted service-port names
         "flows": int,                           # flows of affected ports from ts until the next group
         "changed_backend": int,                 # of those, a different (dnat_ip, dnat_port) than before
         "changed_share": float | None,          # changed_backend / flows; None when flows is 0
         "broken_connections": int,              # connections this group broke
         "udp_flushed": int},                    # UDP flows this group flushed
        ...
      ],
    }

A node that goes away
    Its pod CIDRs (as its last version gave them) become routes to nowhere while no Node
    of that name is present: an address in them is treated as an orphan pod's (``dropped``,
    ``node-not-in-input``) unless a route of the cluster as it stands is more specific.
    Otherwise the cluster is exactly the fresh load (its pods stay, on a node the input
    lacks; they stay endpoints of their services).

Broken and flushed
    A pod ``namespace/name`` goes away at a ``DELETED`` of it (when it exists), or at a
    ``DELETED`` of a Node for every existing pod whose ``spec.nodeName`` is that node and
    that has not gone away already (since it was last created). A delivered flow (final
    verdict) with ``dst_pod`` p and lifetime ``L`` (``duration`` rounded to ns, at most
    100 years; no duration: 0 for UDP, ``conn_duration`` for the rest) is flushed when it is
    UDP through a service (``service`` not null: kube-proxy's cleanup only deletes entries to
    a service address or NodePort), else broken, by the first going-away time ``g`` of p
    with ``ts < g < ts + L``, and counted to the group of ``g``; for a flushed one, ``g`` is
    instead the first time p stopped serving: its Ready condition turned false while it
    existed, or it went away Ready.

Churn
    Before a group is applied the old NaiveServices is kept with a deep copy of its state.
    A service port is *affected* when its service's facts (type, the service's ports,
    traffic policies, affinity, traffic distribution) or its sorted endpoints
    ``(ip, port, node, zone, hint zones, hint nodes, ready, serving, terminating)``
    differ before and after the group, or it exists on one side only. Every flow until
    the next group whose new result names an affected port is counted; the old twin's
    stage runs on it (same arguments, its own evolving copy of the state) and the flow is
    ``changed_backend`` when its ``(dnat_ip, dnat_port)`` differs from the new stage's
    output (no frontend hit by the old one: the flow kept its destination, which differs
    from the new output only if the new stage picked a backend).
"""
from __future__ import annotations

import bisect
import calendar
import copy
import ipaddress
import math
import re
from types import SimpleNamespace
from typing import Optional

from fastpath.cluster.endpoints import endpoints_for
from fastpath.cluster.load import cluster_from_objects
from naive.conntrack import NaiveConntrack
from naive.pipeline import NaiveNetwork, resolve_one
from naive.services import NaiveServices

#: Kinds without a namespace (as the loader reads them).
CLUSTER_SCOPED = frozenset({"Node", "Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                            "ClusterRoleBinding", "CustomResourceDefinition", "IngressClass"})
#: Kinds an event may carry; events of other kinds are skipped.
EVENT_KINDS = frozenset({"Node", "Pod", "Service", "EndpointSlice", "Endpoints", "Namespace", "NetworkPolicy"})
#: The longest lifetime, seconds (100 years).
MAX_DURATION = 100 * 365 * 86400.0
#: The result columns, in file order.
RESULT_KEYS = ("verdict", "reason", "path", "src_node", "dst_node", "src_pod", "dst_pod", "service",
               "dnat_ip", "dnat_port", "snat_ip", "hops")


def identity(obj: dict) -> tuple[str, str, str]:
    """``(kind, namespace, name)`` of a raw object."""
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    ns = "" if kind in CLUSTER_SCOPED else (meta.get("namespace") or "default")
    return kind, ns, meta.get("name")


def flatten(objects) -> list[dict]:
    """Raw objects with ``List`` objects replaced by their items."""
    out = []
    for obj in objects:
        if isinstance(obj, dict) and obj.get("kind") == "List":
            out.extend(flatten(obj.get("items") or ()))
        else:
            out.append(obj)
    return out


def lifetime_ns(flow: dict, conn_duration: float) -> int:
    """The connection's lifetime: its ``duration`` rounded to ns (at most 100 years), else 0 for UDP
    and ``conn_duration`` for every other protocol."""
    d = flow.get("duration")
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return 0 if flow["proto"] == 17 else int(round(conn_duration * 1e9))
    return int(round(min(float(d), MAX_DURATION) * 1e9))


def port_endpoints(svc, port, slices) -> tuple:
    """The service port's endpoints as sorted tuples: NaiveServices' gathering (first endpoint per
    (ip, port) over the slices), with every field that makes an endpoint change."""
    return tuple((d["ip"], d["port"], d["node"], d["zone"], tuple(sorted(d["hints"])), tuple(sorted(d["node_hints"])),
                  d["ready"], d["serving"], d["terminating"]) for d in NaiveServices._endpoints(svc, port, slices))


def port_facts(cluster) -> dict[str, tuple]:
    """Service-port name -> (the service's facts, its sorted endpoints), for the ports NaiveServices serves."""
    slices = endpoints_for(cluster)
    out: dict[str, tuple] = {}
    for svc in cluster.services:
        if svc.type == "ExternalName" or svc.headless:
            continue
        facts = (svc.type, svc.ports, svc.external_policy, svc.internal_policy, svc.session_affinity,
                 svc.affinity_timeout, svc.traffic_distribution)
        for port in svc.ports:
            out[f"{svc.namespace}/{svc.name}:{port.name or port.port}"] = (facts, port_endpoints(svc, port, slices))
    return out


def affected_ports(before: dict, after: dict) -> list[str]:
    """Sorted names of the service ports whose facts or endpoints differ (or that exist on one side only)."""
    return sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))


def parse_ts(value) -> int:
    """``ts``: integer nanoseconds, or an RFC 3339 string (``2026-01-02T03:04:05.5Z``, up to ns)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)", value)
    if m is None:
        raise ValueError(f"ts {value!r}")
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    tz = m.group(8)
    offset = 0 if tz in ("Z", "z") else (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    whole = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) - offset
    return whole * 10**9 + int((m.group(7) or "").ljust(9, "0"))


def group_events(events: list[dict]) -> list[tuple[int, list[dict]]]:
    """Events grouped by equal ``ts``, in order; ``ts`` going back is an error. ``BOOKMARK`` events and
    objects of kinds the replay does not model (:data:`EVENT_KINDS`) are left out: they form no group."""
    groups: list[tuple[int, list[dict]]] = []
    for i, ev in enumerate(events):
        if ev["type"] == "BOOKMARK":
            continue
        if ev["type"] == "ERROR":
            raise ValueError(f"event {i}: an ERROR event")
        if ev["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"event {i}: type {ev['type']!r}")
        ts = parse_ts(ev["ts"])
        if groups and ts < groups[-1][0]:
            raise ValueError(f"event {i}: ts {ts} goes back in time")
        if groups and ts == groups[-1][0]:
            groups[-1][1].append(ev)
        else:
            groups.append((ts, [ev]))
    # kinds not modelled are skipped (after the time check: their ts must still be in order)
    groups = [(ts, [e for e in evs if e["object"].get("kind") in EVENT_KINDS]) for ts, evs in groups]
    return [(ts, evs) for ts, evs in groups if evs]


def _ready(obj: dict) -> bool:
    """The pod's Ready condition as the cluster loader reads it."""
    return cluster_from_objects([obj]).pods[0].ready


class _World:
    """The cluster as it stands: raw objects in universe order and the twins built from them."""

    def __init__(self, objects: list[dict], lb: str, seed: int, maglev_size: int, conn_duration: float) -> None:
        self.universe: dict[tuple, Optional[dict]] = {}
        for obj in flatten(objects):
            self.universe.setdefault(identity(obj), obj)
        self.opts = dict(lb=lb, seed=seed, maglev_size=maglev_size, conn_duration=conn_duration)
        self.gone: dict[str, bool] = {}                # pod key -> gone away since it was last created
        self.goneaway: dict[str, list[int]] = {}       # pod key -> going-away times, in order
        self.ready: dict[str, bool] = {}               # pod key -> Ready and not gone away
        self.stopped: dict[str, list[int]] = {}        # pod key -> times it stopped serving, in order
        for obj in flatten(objects):
            if obj.get("kind") == "Pod":
                self.ready[f"{identity(obj)[1]}/{identity(obj)[2]}"] = _ready(obj)
        self.deleted_nodes: dict[str, list] = {}       # deleted node -> its pod CIDRs then
        self.services: Optional[NaiveServices] = None
        self.rebuild()

    def objects(self) -> list[dict]:
        return [o for o in self.universe.values() if o is not None]

    def rebuild(self) -> None:
        """A fresh load of the objects as they stand, and fresh twins; the balancer state carried over."""
        old = self.services
        self.cluster = cluster_from_objects(self.objects())
        self.net = NaiveNetwork(self.cluster)
        present = {n.name for n in self.cluster.nodes}
        cidrs = [ipaddress.ip_network(c) for name, cs in self.deleted_nodes.items() if name not in present
                 for c in cs]
        if cidrs:
            self.net.orphans = _Nowhere(self.net.orphans, self.net.routes, cidrs)
        self.services = NaiveServices(self.cluster, **self.opts)
        if old is not None:
            self.services.rr, self.services.conns, self.services.affinity = old.rr, old.conns, old.affinity
            self.services._tables = old._tables          # a cache of Maglev tables by backend names
        self.facts = port_facts(self.cluster)

    def snapshot(self) -> NaiveServices:
        """The current service twin with its own deep copy of the balancer state."""
        snap = copy.copy(self.services)
        snap.rr = copy.deepcopy(self.services.rr)
        snap.conns = copy.deepcopy(self.services.conns)
        snap.affinity = copy.deepcopy(self.services.affinity)
        return snap

    def _goes_away(self, pod_key: str, ts: int) -> None:
        if not self.gone.get(pod_key, False):
            self.gone[pod_key] = True
            self.goneaway.setdefault(pod_key, []).append(ts)
        self._serving(pod_key, False, ts)

    def _serving(self, pod_key: str, now: bool, ts: int) -> None:
        if self.ready.get(pod_key, False) and not now:
            self.stopped.setdefault(pod_key, []).append(ts)
        self.ready[pod_key] = now

    def apply(self, ts: int, event: dict) -> None:
        obj = event["object"]
        key = identity(obj)
        kind, ns, name = key
        exists = self.universe.get(key) is not None
        if event["type"] == "DELETED":
            if not exists:
                return                               # a watch started late: nothing to delete
            if kind == "Node":
                self.deleted_nodes[name] = list(cluster_from_objects([self.universe[key]]).nodes[0].pod_cidrs)
            self.universe[key] = None
            if kind == "Pod":
                self._goes_away(f"{ns}/{name}", ts)
                self._serving(f"{ns}/{name}", False, ts)    # (gone already through its node: no second stop)
            elif kind == "Node":
                for (k, pns, pname), o in self.universe.items():
                    if k == "Pod" and o is not None and ((o.get("spec") or {}).get("nodeName") or None) == name:
                        self._goes_away(f"{pns}/{pname}", ts)
            return
        self.universe[key] = obj                     # appended at the end when first seen
        if kind == "Pod" and not exists:
            self.gone[f"{ns}/{name}"] = False        # (re)created: alive again
        if kind == "Pod":
            pod = f"{ns}/{name}"
            self._serving(pod, _ready(obj) and not self.gone.get(pod, False), ts)


class _Nowhere:
    """``NaiveNetwork.orphans`` plus the pod CIDRs of deleted nodes (docs/events.md "A node that goes
    away": routes to nowhere). An address is nowhere when it is an orphan pod's, or when a deleted
    node's CIDR holds it with a longer prefix than every route of the cluster as it stands."""

    def __init__(self, orphans: set, routes: list, cidrs: list) -> None:
        self.orphans, self.routes, self.cidrs = orphans, routes, cidrs

    def __contains__(self, ip: int) -> bool:
        if ip in self.orphans:
            return True
        addr = ipaddress.ip_address(ip)
        gone = max((c.prefixlen for c in self.cidrs if addr in c), default=-1)
        if gone < 0:
            return False
        return gone > max((net.prefixlen for net, _ in self.routes if addr in net), default=-1)


def _source_kind(net: NaiveNetwork, src: int) -> str:
    """docs/dataplane.md §1, as resolve_one decides it."""
    if src in net.pod_by_ip:
        return "pod"
    if src in net.node_by_ip:
        return "host"
    return "external"


def _conntrack(objects: list[dict], events: list[dict], cluster, conntrack_max, conn_duration, seed):
    """One tracker over every node ever seen (each node's first version, in universe order)."""
    first: dict[str, dict] = {}
    for obj in flatten(objects) + [e["object"] for _, evs in group_events(events) for e in evs
                                   if e["type"] != "DELETED"]:
        if obj.get("kind") == "Node":
            first.setdefault(identity(obj)[2], obj)
    nodes = [cluster_from_objects([o]).nodes[0] for o in first.values()]
    return NaiveConntrack(SimpleNamespace(nodes=nodes, pods=cluster.pods), conntrack_max=conntrack_max,
                          default_duration=conn_duration, seed=seed, sizing=cluster.conntrack_sizing)


def naive_event_replay(objects: list[dict], events: list[dict], flows: list[dict], *, lb: str = "random",
                       seed: int = 0, conntrack: bool = False, conn_duration: float = 30.0,
                       conntrack_max: Optional[int] = None, maglev_size: int = 16381) -> tuple[list[dict], dict]:
    """Replay ``flows`` while ``events`` change the cluster of ``objects`` (see the module docstring).

    ``conntrack_max`` (only with ``conntrack``) sets every node's table size, as
    ``replay(conntrack_max=...)``; ``maglev_size`` as ``replay(maglev_size=...)``.

    Returns
    -------
    (list of dict, dict)
        The result of each flow, and the summary (format in the module docstring).
    """
    groups = group_events(events)
    world = _World(objects, lb, seed, maglev_size, conn_duration)
    ct = _conntrack(objects, events, world.cluster, conntrack_max, conn_duration, seed) if conntrack else None
    records: list[dict] = []
    by_ts: dict[int, dict] = {}
    churn: Optional[tuple[set, NaiveServices, dict]] = None      # (affected, old twin, record)

    def apply_group(ts: int, evs: list[dict]) -> None:
        nonlocal churn
        before = world.facts
        old = world.snapshot()
        kinds: dict[str, int] = {}
        for ev in evs:
            k = f"{ev['type']} {ev['object'].get('kind')}"
            kinds[k] = kinds.get(k, 0) + 1
            world.apply(ts, ev)
        world.rebuild()
        affected = affected_ports(before, world.facts)
        rec = {"ts": ts, "events": len(evs), "kinds": kinds, "affected_service_ports": affected, "flows": 0,
               "changed_backend": 0, "changed_share": None, "broken_connections": 0, "udp_flushed": 0}
        records.append(rec)
        by_ts[ts] = rec
        churn = (set(affected), old, rec) if affected else None
        if ct is not None:
            ct.pod_node = {p.key: p.node for p in world.cluster.pods}
            ct.bridged = {p.key for p in world.cluster.pods
                          if not p.host_network and p.ip is not None and p.node is not None}
            if ct.iv is not None:                        # started: a new pod's MAC is learned now
                for p in ct.pod_node:
                    ct.fdb.setdefault(p, ts)

    results: list[dict] = []
    delivered: list[tuple[int, int, str, bool]] = []         # (ts, lifetime ns, dst_pod, flushable UDP)
    gi = 0
    last_ts = None
    for f in flows:
        t = int(f["ts"])
        if last_ts is not None and t < last_ts:
            raise ValueError(f"flow ts {t} goes back in time")
        last_ts = t
        while gi < len(groups) and groups[gi][0] <= t:
            apply_group(*groups[gi])
            gi += 1
        seen: dict = {}

        def stage(flow, src_pod, src_node, _seen=seen):
            out = world.services.stage(flow, src_pod, src_node)
            _seen["args"], _seen["out"] = (src_pod, src_node), out
            return out

        r = resolve_one(world.net, f, stage)
        if ct is not None:
            r["src_kind"] = _source_kind(world.net, f["src_ip"])
            ct.track(dict(f, duration=f.get("duration")), r)
            del r["src_kind"]
        if churn is not None and r["service"] in churn[0]:
            _, old, rec = churn
            rec["flows"] += 1
            was = old.stage(f, *seen["args"])
            now = seen["out"]
            before = (f["dst_ip"], f["dst_port"]) if was is None else (was["dnat_ip"], was["dnat_port"])
            if before != (now["dnat_ip"], now["dnat_port"]):
                rec["changed_backend"] += 1
        if r["verdict"] == "delivered" and r["dst_pod"] is not None:
            delivered.append((t, lifetime_ns(f, conn_duration), r["dst_pod"],
                              f["proto"] == 17 and r["service"] is not None))
        results.append({k: r[k] for k in RESULT_KEYS})
    while gi < len(groups):                               # the rest still break connections
        apply_group(*groups[gi])
        gi += 1
    if ct is not None:
        ct.finish()

    for t, life, pod, flushable in delivered:
        times = (world.stopped if flushable else world.goneaway).get(pod, [])
        i = bisect.bisect_right(times, t)                 # first going-away strictly after ts
        if i < len(times) and times[i] < t + life:
            by_ts[times[i]]["udp_flushed" if flushable else "broken_connections"] += 1
    for rec in records:
        rec["changed_share"] = rec["changed_backend"] / rec["flows"] if rec["flows"] else None
    summary = {
        "broken_connections": sum(r["broken_connections"] for r in records),
        "udp_flushed": sum(r["udp_flushed"] for r in records),
        "event_groups": len(records),
        "events": records,
    }
    return results, summary
