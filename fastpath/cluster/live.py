"""A cluster that changes: the objects as they stand, and what each group of events touched.

:class:`LiveCluster` is the control plane's half of a replay with ``--events``
(``docs/events.md``). It holds the validated objects at the current time, keeps every
node, pod and service port a stable index for the whole replay (its *universe*: the
input's objects in order, then those first added by events, in order of first event),
and applies one group of events at a time, returning a :class:`Changes` (kube-proxy's
change trackers: which services' endpoints, which pods, which nodes). The tables'
half is :mod:`fastpath.live`.

A node or pod that does not exist at the moment keeps its place: a node as a
``Node(present=False)`` without addresses (a deleted node keeps its pod CIDRs, routed
to nowhere), a pod as one without node or IP. Every event's object is validated up
front by the cluster loader, so a bad one stops the replay before it starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import FastpathError
from ..events import Event, EventLog
from .model import Cluster, Node, Pod

#: Node fields the data plane reads (a cordon, a label or a condition change none of them).
_NODE_FACTS = ("internal_ip", "external_ip", "pod_cidrs", "zone", "cpu", "present")


@dataclass
class Changes:
    """What one group of events touched."""

    nodes: dict = field(default_factory=dict)        #: node index -> the node before (facts changed)
    pods: dict = field(default_factory=dict)         #: pod index -> (before, after)
    services: set = field(default_factory=set)       #: (namespace, name) whose endpoints may have changed
    service_objects: dict = field(default_factory=dict)  #: (namespace, name) -> (before, after) Service (None: absent)
    policies: bool = False                           #: NetworkPolicies or Namespaces changed

    def __bool__(self) -> bool:
        return bool(self.nodes or self.pods or self.services or self.service_objects or self.policies)


class _Index:
    """What :func:`~fastpath.cluster.columns.endpoint_columns` reads of the pods: names and present nodes."""

    def __init__(self, index: dict, node_index: dict) -> None:
        self.index = index
        self.node_index = node_index


def _parse(e: Event, source: str):
    """The event's object as the loader validates it (None for a DELETED event)."""
    from .load import cluster_from_objects

    if e.type == "DELETED":
        return None
    where = f"{source} line {e.line}"
    if e.kind == "Endpoints":
        return e.obj                                  # mirrored when applied: it needs its Service then
    c = cluster_from_objects([e.obj], source=where)
    if e.kind == "Node":
        return c.nodes[0]
    if e.kind == "Pod":
        return c.pods[0]
    if e.kind == "Service":
        return c.services[0]
    if e.kind == "EndpointSlice":
        return c.slices[0] if c.slices else None      # an IPv6 slice: skipped, as the loader skips it
    if e.kind == "NetworkPolicy":
        if not c.policies:
            raise FastpathError(f"{where}: NetworkPolicy {e.namespace}/{e.name} could not be read")
        return c.policies[0]
    return dict(c.namespaces.get(e.name, {"kubernetes.io/metadata.name": e.name}))   # Namespace: its labels


class LiveCluster:
    """The cluster at the current time of a replay with events (see the module docstring)."""

    def __init__(self, base: Cluster, log: EventLog) -> None:
        from ..tables.frontends import service_ports

        self.base = base
        self.log = log
        self.parsed = [_parse(e, log.source) for e in log.events]
        # the universe: input order, then first appearance in the events
        self.nodes: list[Node] = list(base.nodes)
        self.node_index = {n.name: i for i, n in enumerate(self.nodes)}
        self.pods: list[Pod] = list(base.pods)
        self.pod_index = {p.key: i for i, p in enumerate(self.pods)}
        self.exists = set(range(len(self.pods)))       # pods that exist now (the others keep their place)
        sp_names = list(service_ports(base.services).names)
        seen_sp = set(sp_names)
        for e, obj in zip(log.events, self.parsed):
            if e.kind == "Node" and e.name not in self.node_index:
                self.node_index[e.name] = len(self.nodes)
                first = obj if obj is not None else Node(e.name, None, None, (), None)
                self.nodes.append(Node(e.name, None, None, (), first.zone, {}, first.cpu, present=False))
            elif e.kind == "Pod" and f"{e.namespace}/{e.name}" not in self.pod_index:
                self.pod_index[f"{e.namespace}/{e.name}"] = len(self.pods)
                self.pods.append(self._no_pod(e.namespace, e.name))
            if e.kind == "Pod" and obj is not None:   # a pod added later: room in its record for its ports
                i = self.pod_index[f"{e.namespace}/{e.name}"]
                held = self.pods[i]
                if i >= len(base.pods) and held.ip is None and len(obj.ports) > len(held.ports):
                    self.pods[i] = dataclasses.replace(held, ports=obj.ports)
            elif e.kind == "Service" and obj is not None and obj.type != "ExternalName" and not obj.headless:
                for port in obj.ports:
                    name = f"{obj.namespace}/{obj.name}:{port.name or port.port}"
                    if name not in seen_sp:
                        seen_sp.add(name)
                        sp_names.append(name)
        self.sp_names = sp_names
        self.services = {(s.namespace, s.name): s for s in base.services}
        #: No EndpointSlice or Endpoints in the events: fastpath plays the EndpointSlice controller,
        #: deriving the endpoints of every service with a selector from its pods as they stand.
        self.controller = not any(e.kind in ("EndpointSlice", "Endpoints") for e in log.events)
        derived = {k for k, s in self.services.items() if s.selector and s.type != "ExternalName"}
        kept = [s for s in base.slices if not (self.controller and (s.namespace, s.service) in derived)]
        self.set_aside = len(base.slices) - len(kept)
        self.given = {(s.namespace, s.name): s for s in kept if not s.from_endpoints}
        self.given_of: dict[tuple, set] = {}           # (namespace, service) -> its given slices' keys
        for k, s in self.given.items():
            self.given_of.setdefault((s.namespace, s.service), set()).add(k)
        self.mirrored: dict[tuple, list] = {}
        for s in kept:
            if s.from_endpoints:
                self.mirrored.setdefault((s.namespace, s.service), []).append(s)
        self.legacy: dict[tuple, dict] = {}           # Endpoints objects seen in events
        self.policies = {(p.namespace, p.name): p for p in base.policies}
        self.namespaces = dict(base.namespaces)
        self.order = {("Service",) + k: i for i, k in enumerate(self.services)}
        self.order.update({("EndpointSlice",) + k: i for i, k in enumerate(self.given)})
        self.order.update({("NetworkPolicy",) + k: i for i, k in enumerate(self.policies)})
        self.has_policies = bool(base.policies) or any(e.kind == "NetworkPolicy" for e in log.events)
        self._by_label: dict[tuple, set] = {}          # (namespace, key, value) -> pod indices
        for i, p in enumerate(self.pods):
            self._label(i, p, True)
        self._selectors: dict[tuple, set] = {}         # (namespace, first selector pair) -> services
        for s in self.services.values():
            self._select(s, True)
        self._cluster: Cluster | None = None
        self._dirty = True                             # services, slices or policies changed
        self._present: dict | None = None              # present node name -> index
        self._present_mask = None                      # bool per node
        self._missing: dict[str, int] = {}             # node name -> pods bound to it while it is absent
        for p in self.pods:
            self._count_missing(p, 1)

    # ------------------------------------------------------------------ the cluster now
    @staticmethod
    def _no_pod(ns: str, name: str) -> Pod:
        return Pod(ns, name, None, False, None, False, False, ())

    def present(self, node: str | None) -> bool:
        i = self.node_index.get(node) if node is not None else None
        return i is not None and self.nodes[i].present

    def cluster(self) -> Cluster:
        """The cluster as it stands: every node and pod of the universe in place (the lists are
        this object's own, updated in place), the other objects in order."""
        b = self.base
        c = self._cluster
        if c is None:
            c = self._cluster = Cluster(nodes=self.nodes, pods=self.pods, services=[], slices=[], warnings=[],
                                        domain=b.domain, namespaces=self.namespaces, masquerade=b.masquerade,
                                        workloads=b.workloads, cluster_cidr=b.cluster_cidr,
                                        conntrack_sizing=b.conntrack_sizing, source=b.source)
            self._dirty = True
        if self._dirty:
            ordered = lambda kind, d: [d[k] for k in sorted(d, key=lambda k: self.order[(kind,) + k])]  # noqa: E731
            c.services = ordered("Service", self.services)
            c.slices = ordered("EndpointSlice", self.given) + [s for k in self.services
                                                               for s in self.mirrored.get(k, ())]
            c.policies = ordered("NetworkPolicy", self.policies)
            self._dirty = False
        missing: dict[str, int] = {}
        for name, n in self._missing.items():
            if n:
                missing[name] = n
        c.missing_nodes = missing
        return c

    def universe_index(self) -> _Index:
        """Pods by name and every node by name, present or not (an endpoint's node identity)."""
        return _Index(self.pod_index, self.node_index)

    def present_mask(self):
        """bool per node: present now."""
        import numpy as np

        if self._present_mask is None:
            self._present_mask = np.array([n.present for n in self.nodes], bool)
        return self._present_mask

    def pod_names_index(self) -> _Index:
        """Pods by name and the present nodes by name (what endpoint columns are indexed by)."""
        if self._present is None:
            self._present = {n.name: i for i, n in enumerate(self.nodes) if n.present}
        return _Index(self.pod_index, self._present)

    def slices_of(self, key: tuple[str, str]) -> list:
        """Every EndpointSlice of a service now: given, mirrored from Endpoints, or derived from its selector."""
        from .endpoints import derive_slices

        keys = sorted(self.given_of.get(key, ()), key=lambda k: self.order[("EndpointSlice",) + k])
        given = [self.given[k] for k in keys] + self.mirrored.get(key, [])
        svc = self.services.get(key)
        if given or svc is None or not svc.selector or svc.type == "ExternalName":
            return given
        pods = [self.pods[i] for i in sorted(self.selected(svc))]
        on = {p.node for p in pods}                 # the nodes they are on: zones for their endpoints
        nodes = [self.nodes[j] for j in (self.node_index.get(x) for x in on) if j is not None and self.nodes[j].present]
        mini = Cluster(nodes=nodes, pods=pods, services=[svc], slices=[])
        return derive_slices(mini)

    def selected(self, svc) -> set:
        """Pod indices whose labels hold every pair of ``svc``'s selector."""
        pairs = list(svc.selector.items())
        sets = [self._by_label.get((svc.namespace, k, v), set()) for k, v in pairs]
        if not sets:
            return set()
        best = min(sets, key=len)
        return {i for i in best if all(self.pods[i].labels.get(k) == v for k, v in pairs)}

    # ------------------------------------------------------------------ indexes
    def _label(self, i: int, p: Pod, add: bool) -> None:
        for k, v in p.labels.items():
            s = self._by_label.setdefault((p.namespace, k, v), set())
            if add:
                s.add(i)
            else:
                s.discard(i)

    def _select(self, svc, add: bool) -> None:
        if not svc.selector:
            return
        k, v = next(iter(svc.selector.items()))
        s = self._selectors.setdefault((svc.namespace, k, v), set())
        if add:
            s.add((svc.namespace, svc.name))
        else:
            s.discard((svc.namespace, svc.name))

    def _services_of(self, p: Pod) -> set:
        """Services whose selector holds ``p`` (so whose derived endpoints follow it)."""
        out = set()
        for k, v in p.labels.items():
            for key in self._selectors.get((p.namespace, k, v), ()):
                svc = self.services.get(key)
                if svc is not None and all(p.labels.get(a) == b for a, b in svc.selector.items()):
                    out.add(key)
        return out

    # ------------------------------------------------------------------ applying
    def apply(self, first: int, group: list[Event]) -> Changes:
        """Apply one group of events (``first``: the index of its first event in the log)."""
        ch = Changes()
        for k, e in enumerate(group):
            obj = self.parsed[first + k]
            getattr(self, "_" + e.kind.lower())(e, obj, ch)
        return ch

    def _count_missing(self, p: Pod, k: int) -> None:
        if p.node is not None and not p.node_known:
            self._missing[p.node] = self._missing.get(p.node, 0) + k

    def _set_pod(self, i: int, new: Pod, ch: Changes) -> None:
        old = self.pods[i]
        if new is old:
            return
        self._label(i, old, False)
        self._label(i, new, True)
        self._count_missing(old, -1)
        self._count_missing(new, 1)
        first = ch.pods.get(i, (old, None))[0]
        ch.pods[i] = (first, new)
        ch.services |= self._services_of(old) | self._services_of(new)
        self.pods[i] = new

    def _pod(self, e: Event, obj, ch: Changes) -> None:
        i = self.pod_index[f"{e.namespace}/{e.name}"]
        if obj is None:
            new = self._no_pod(e.namespace, e.name)
            self.exists.discard(i)
        else:
            self.exists.add(i)
            new = dataclasses.replace(obj, node_known=obj.node is None or self.present(obj.node))
        self._set_pod(i, new, ch)

    def _node(self, e: Event, obj, ch: Changes) -> None:
        i = self.node_index[e.name]
        old = self.nodes[i]
        if obj is None:
            if not old.present:
                return
            new = Node(old.name, None, None, old.pod_cidrs, old.zone, {}, old.cpu, present=False)
        else:
            new = obj
        if all(getattr(old, f) == getattr(new, f) for f in _NODE_FACTS):
            self.nodes[i] = new                      # a cordon, labels, conditions: nothing to do
            return
        self.nodes[i] = new
        self._present = self._present_mask = None
        ch.nodes.setdefault(i, old)
        # the endpoints on it (their zone, whether their node is there): its pods' services, and
        # those whose given slices name it
        for j, p in enumerate(self.pods):
            if p.node == e.name:
                ch.services |= self._services_of(p)
                if old.present != new.present:       # its pods' node is (no longer) in the input
                    self._set_pod(j, dataclasses.replace(p, node_known=new.present), ch)
        for sl in list(self.given.values()) + [x for xs in self.mirrored.values() for x in xs]:
            if any(ep.node == e.name for ep in sl.endpoints):
                ch.services.add((sl.namespace, sl.service))

    def _service(self, e: Event, obj, ch: Changes) -> None:
        self._dirty = True
        key = (e.namespace, e.name)
        old = self.services.get(key)
        if old is not None:
            self._select(old, False)
        if obj is None:
            self.services.pop(key, None)
        else:
            self.services[key] = obj
            self.order.setdefault(("Service",) + key, len(self.order))
            self._select(obj, True)
            legacy = self.legacy.get(key)
            if legacy is not None and key not in self.mirrored:
                self._mirror(key, legacy)
        ch.services.add(key)
        ch.service_objects[key] = (ch.service_objects.get(key, (old, None))[0], obj)

    def _endpointslice(self, e: Event, obj, ch: Changes) -> None:
        self._dirty = True
        key = (e.namespace, e.name)
        old = self.given.pop(key, None)
        if old is not None:
            self.given_of[(old.namespace, old.service)].discard(key)
            ch.services.add((old.namespace, old.service))
        if obj is not None:
            self.given[key] = obj
            self.given_of.setdefault((obj.namespace, obj.service), set()).add(key)
            self.order.setdefault(("EndpointSlice",) + key, len(self.order))
            ch.services.add((obj.namespace, obj.service))

    def _endpoints(self, e: Event, obj, ch: Changes) -> None:
        self._dirty = True
        key = (e.namespace, e.name)
        self.mirrored.pop(key, None)
        self.legacy.pop(key, None)
        if obj is not None:
            self.legacy[key] = obj
            if key in self.services:
                self._mirror(key, obj)
        ch.services.add(key)

    def _mirror(self, key: tuple[str, str], obj: dict) -> None:
        from .load import _mirror
        from .problems import Problems

        svc = self.services[key]
        self.mirrored[key] = _mirror([svc], [], {key: (f"{self.log.source}: Endpoints {key[0]}/{key[1]}", obj)},
                                     Problems())

    def _networkpolicy(self, e: Event, obj, ch: Changes) -> None:
        self._dirty = True
        key = (e.namespace, e.name)
        if obj is None:
            self.policies.pop(key, None)
        else:
            self.policies[key] = obj
            self.order.setdefault(("NetworkPolicy",) + key, len(self.order))
        ch.policies = True

    def _namespace(self, e: Event, obj, ch: Changes) -> None:
        if obj is None:
            self.namespaces.pop(e.name, None)
        else:
            self.namespaces[e.name] = obj
        ch.policies = True

    # ------------------------------------------------------------------ departures
    def departures(self) -> tuple[list, list]:
        """``(gone, stops)``, each ``(pod, ts, group)`` in event order (``docs/events.md``).

        A pod *goes away* at its DELETED event, or at its node's DELETED event while bound to
        it (once since it was created). It *stops serving* when its Ready condition turns
        false while it exists, or when it goes away Ready (what kube-proxy flushes UDP
        entries on: the endpoint's serving condition follows the pod's readiness).
        """
        exists = set(range(len(self.base.pods)))
        ready = {i for i, p in enumerate(self.base.pods) if p.ready}
        node_of = {i: p.node for i, p in enumerate(self.base.pods)}
        nodes = {n.name for n in self.base.nodes}
        gone_at: set = set()
        gone, stops = [], []
        group, last_ts = -1, None
        for e, obj in zip(self.log.events, self.parsed):
            if e.ts != last_ts:
                group, last_ts = group + 1, e.ts
            if e.kind == "Pod":
                i = self.pod_index[f"{e.namespace}/{e.name}"]
                if obj is None:
                    if i in exists and i not in gone_at:
                        gone.append((i, e.ts, group))
                    if i in ready:
                        stops.append((i, e.ts, group))
                    exists.discard(i)
                    gone_at.discard(i)
                    ready.discard(i)
                    node_of.pop(i, None)
                    continue
                if i not in exists:                    # created (again): alive
                    exists.add(i)
                    gone_at.discard(i)
                node_of[i] = obj.node
                now = obj.ready and i not in gone_at
                if i in ready and not now:
                    stops.append((i, e.ts, group))
                (ready.add if now else ready.discard)(i)
            elif e.kind == "Node":
                if obj is not None:
                    nodes.add(e.name)
                    continue
                if e.name not in nodes:
                    continue                            # a watch started late: nothing to delete
                nodes.discard(e.name)
                for i, n in node_of.items():
                    if n == e.name and i in exists and i not in gone_at:
                        gone_at.add(i)
                        gone.append((i, e.ts, group))
                        if i in ready:
                            stops.append((i, e.ts, group))
                            ready.discard(i)
        return gone, stops
