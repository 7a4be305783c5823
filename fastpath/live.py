"""Replay against a changing cluster: the tables follow the events, flows see the cluster at their ``ts``.

:class:`LivePlane` wraps a :class:`~fastpath.pipeline.DataPlane` compiled over a
:class:`~fastpath.cluster.live.LiveCluster` (every node, pod and service port at a fixed
index for the whole replay) and applies each group of events between the flows
before and after it (``docs/events.md``):

* the **service map** through :class:`~fastpath.tables.services_update.ServiceMapEditor`
  (only the touched services' endpoints, sets and Maglev tables; frontends when a
  Service changed);
* the **forwarding tables** in place for ordinary bridged pods (the pod-by-IP table,
  the pod's record of node and listening ports); anything else (nodes, hostNetwork or
  hostPort pods, Calico-style addresses) recompiles them, at the same indices;
* **NetworkPolicy** and **DNS** rebuilt when what they read changed.

It also measures what the changes did: for each group, the share of the affected
service ports' flows that got another backend than the tables before the group would
have given (same balancer state), and the connections broken (TCP/SCTP, UDP straight to
a pod) or flushed (UDP through a service) by pods going away (:class:`Departures`).
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager

import numpy as np

from ._jit import jit
from .cluster.compile import NO_PORT, compile_forwarding
from .cluster.live import Changes, LiveCluster
from .codes import DELIVERED, PENDING
from .errors import FastpathError
from .events import EventLog
from .lifetimes import lifetimes_ns


class LivePlane:
    """A data plane that follows cluster events (see the module docstring).

    Parameters
    ----------
    cluster
        The cluster at the start (a loaded :class:`~fastpath.cluster.model.Cluster`).
    log
        The events (:func:`fastpath.events.read_events`).
    lb, seed, non_masquerade_cidrs, service_options
        As :meth:`fastpath.pipeline.DataPlane.build`.
    """

    def __init__(self, cluster, log: EventLog, *, lb: str = "random", seed: int = 0, non_masquerade_cidrs=None,
                 **service_options) -> None:
        from .cluster.endpoints import endpoints_for
        from .pipeline import DataPlane
        from .tables.frontends import service_ports
        from .tables.services_update import ServiceMapEditor

        self.live = LiveCluster(cluster, log)
        self.log = log
        self.groups = log.groups
        self.group_ts = np.array([g[0].ts for g in self.groups], np.int64)
        self.group_first = np.cumsum([0] + [len(g) for g in self.groups[:-1]]).tolist()
        self.masq = non_masquerade_cidrs
        now = self.live.cluster()
        slices = endpoints_for(now)              # kept: what listens (_served_reset) comes from them too
        dp = self.dp = DataPlane.build(now, lb=lb, seed=seed, non_masquerade_cidrs=non_masquerade_cidrs,
                                       slices=slices, sp_names=self.live.sp_names, **service_options)
        smap = dp.services
        self.editor = ServiceMapEditor(smap, len(now.nodes))
        self.ports = service_ports(now.services, self.live.sp_names)
        self._served_reset(slices)
        self.applied = 0                             #: groups applied so far
        self.records: list[dict] = []                #: one per group (docs/events.md "Churn")
        self.ct_updates: dict[int, tuple] = {}       #: group -> (pods, nodes, bridged) for the conntrack stage
        self._churn = None                           #: (group, old ServiceStage, affected mask, senders before) until the next group
        self._dns_dirty = False
        self.apply_s = 0.0                           #: seconds spent applying events
        self.full_compiles = 0                       #: forwarding recompiles (not in-place updates)
        self.departures = Departures(*self.live.departures(), len(now.pods), len(self.groups))
        #: per service port: flows measured for churn (after a group that affected it), and those that moved
        self.churn_flows = np.zeros(len(smap.names), np.int64)
        self.churn_changed = np.zeros(len(smap.names), np.int64)
        self.warnings = list(log.warnings)
        if self.live.controller and self.live.set_aside:
            self.warnings.append(
                f"{log.source}: no EndpointSlice or Endpoints events: fastpath derives the endpoints of services "
                f"with a selector from their pods, as the EndpointSlice controller would "
                f"({self.live.set_aside} given slice(s) set aside)")

    # ------------------------------------------------------------------ served ports (what listens)
    def _served_reset(self, slices) -> None:
        """Per service, the (pod, proto << 16 | port) entries its serving endpoints add to what pods listen on
        (one pass over every slice), and per pod how many services add each entry."""
        self.served_by_svc: dict[tuple, set] = {}
        self.served_pod: dict[int, dict[int, int]] = {}
        if not slices:
            return
        pods, protos, ports, _, _, sl = self._listeners(slices)
        svc_of = [(s.namespace, s.service) for s in slices]
        for p, e, k in zip(pods.tolist(), ((protos << 16) | ports).tolist(), sl.tolist()):
            self.served_by_svc.setdefault(svc_of[k], set()).add((p, e))
        for entries in self.served_by_svc.values():
            for p, e in entries:
                counts = self.served_pod.setdefault(p, {})
                counts[e] = counts.get(e, 0) + 1

    def _listeners(self, slices) -> tuple:
        from .cluster.columns import _endpoint_columns
        from .cluster.hostside import served_listeners

        t = self.dp.tables
        ends = _endpoint_columns(slices, self.live.pod_names_index())
        return served_listeners(ends, t.pod_by_ip, t.node_by_ip, np.zeros(len(t.pod_names), bool), t.pod_node,
                                with_slice=True)

    def _served_set(self, key, slices) -> set | None:
        """Record service ``key``'s entries from ``slices``; the pods whose entries changed (None: a node
        address serves it, which only a recompile places)."""
        new: set = set()
        if slices:
            pods, protos, ports, hk, _, _ = self._listeners(slices)
            if hk.size:
                return None
            new = set(zip(pods.tolist(), ((protos << 16) | ports).tolist()))
        old = self.served_by_svc.get(key, set())
        if new == old:
            return set()
        for p, e in old - new:
            counts = self.served_pod[p]
            counts[e] -= 1
            if not counts[e]:
                del counts[e]
        for p, e in new - old:
            counts = self.served_pod.setdefault(p, {})
            counts[e] = counts.get(e, 0) + 1
        self.served_by_svc[key] = new
        return {p for p, _ in old ^ new}

    # ------------------------------------------------------------------ applying events
    def pending_until(self, t: int) -> int:
        """How many groups take effect at or before ``t`` and are not applied yet."""
        return int(np.searchsorted(self.group_ts, t, side="right")) - self.applied

    def apply_next(self, churn: bool = True) -> None:
        """Apply the next group of events to the tables (and start measuring its churn)."""
        g = self.applied
        t0 = time.perf_counter()
        group = self.groups[g]
        before = self.editor.snapshot()
        ch = self.live.apply(self.group_first[g], group)
        affected = self._apply(ch, g) if ch else []
        kinds: dict[str, int] = {}
        for e in group:
            kinds[e.label] = kinds.get(e.label, 0) + 1
        names = self.dp.services.names
        self.records.append({
            "ts": int(group[0].ts), "events": len(group), "kinds": kinds,
            "affected_service_ports": sorted(names[s] for s in affected),
            "flows": 0, "changed_backend": 0, "changed_share": None, "broken_connections": 0, "udp_flushed": 0})
        self._churn = None
        if churn and affected:
            from .tables.services import ServiceStage

            mask = np.zeros(len(names), bool)
            mask[affected] = True
            from .tables.balancers import F_AFFINITY
            old = ServiceStage(dataclasses.replace(self.dp.services, arrays=before,
                                                   has_affinity=bool((before.sp_flags & F_AFFINITY).any())))
            old.state = self.dp.stage.state.copy()
            self._churn = (g, old, mask, self._senders_before(ch))
        self.applied += 1
        self.apply_s += time.perf_counter() - t0

    def _senders_before(self, ch: Changes) -> tuple[np.ndarray, np.ndarray]:
        """(address, node) of the senders the group changed, as the cluster before it saw them: a pod's
        or node's address -> its node then, -1 where the address was no pod's or node's (an external
        client). Churn replays their flows from there."""
        was: dict[int, int] = {}
        for before, after in ch.pods.values():
            for p in (after, before):                    # the older version wins
                if p is None or p.ip is None or p.host_network:   # a node's address: the node's, as before
                    continue
                bridged = p is before and not p.host_network and p.node_known and p.node is not None
                was[p.ip] = self.live.node_index[p.node] if bridged else was.get(p.ip, -1)
        for i, before in ch.nodes.items():
            for ip in (before.internal_ip, before.external_ip):
                if ip is not None:
                    was[ip] = i if before.present else -1
            now = self.live.nodes[i]
            for ip in (now.internal_ip, now.external_ip):
                if ip is not None and ip not in was:
                    was[ip] = -1
        ips = np.array(sorted(was), np.uint32)
        return ips, np.array([was[int(x)] for x in ips], np.int32)

    def _apply(self, ch: Changes, g: int) -> list[int]:
        from .tables.frontends import frontend_tables, service_ports

        dp, live, ed = self.dp, self.live, self.editor
        now = live.cluster()
        dp.cluster = now
        recompile = bool(ch.nodes)
        for i, (old, new) in ch.pods.items():
            if not recompile and not self._pod_in_place(i, old, new):
                recompile = True
        affected: set = set()
        force: set = set()
        old_sps = self.ports.by_service              # replaced, not changed, when ports change
        if ch.service_objects or ch.nodes:
            ports = service_ports(now.services, live.sp_names)
            ed.set_ports(ports, *frontend_tables(ports, now.nodes, []))
            for key, (before, after) in ch.service_objects.items():
                sps = set(old_sps.get(key, ())) | set(ports.by_service.get(key, ()))
                force |= sps                          # policies, affinity: the sets are built anew
                if _facts(before) != _facts(after):
                    affected |= sps
            self.ports = ports
            if ch.nodes:
                self._node_arrays(now)
        by_service = {}
        for key in ch.services:
            sps = sorted(set(old_sps.get(key, ())) | set(self.ports.by_service.get(key, ())))
            if sps:
                by_service[key] = sps
        slices_of = {key: live.slices_of(key) for key in ch.services}
        if by_service:
            _, changed = ed.update(by_service, [s for k in by_service for s in slices_of[k]], live.universe_index(),
                                   live.present_mask(), self.ports.pname, self.ports.proto,
                                   live.pod_names_index().node_index, force=tuple(sorted(force)))
            affected |= set(changed)
        relisten = set(ch.pods)
        if not recompile:
            for key in ch.services:
                changed = self._served_set(key, slices_of[key])
                if changed is None:
                    recompile = True
                    break
                relisten |= changed
        if recompile:
            self._recompile(now)
        else:
            for i in sorted(relisten):
                if not self._listen_in_place(i):
                    self._recompile(now)
                    break
        smap = ed.smap
        dp.services = smap
        dp.stage.smap = smap
        dp.stage.state.endpoints(ed.n_endpoints())
        if ch.pods or ch.policies or ch.nodes:
            self._policy(now)
        # DNS answers a service's ClusterIP, or a headless service's ready endpoints: nothing else
        if ch.service_objects or any(getattr(live.services.get(k), "headless", False) for k in ch.services):
            self._dns_dirty = True
        if ch.pods:                                  # the conntrack stage's pod facts, from this group on
            pods = np.array(sorted(ch.pods), np.int64)
            bridged = [not p.host_network and p.ip is not None and p.node is not None
                       for p in (now.pods[i] for i in pods.tolist())]
            self.ct_updates[g] = (pods, dp.tables.pod_node[pods].copy(), np.array(bridged, np.uint8))
        return sorted(affected)

    def _node_arrays(self, now) -> None:
        """Present nodes, their masquerade addresses and zones, in the map's arrays."""
        ed = self.editor
        a = ed.smap.arrays
        node_ip = np.array([n.internal_ip or n.external_ip or 0 for n in now.nodes], np.uint32)
        zones = ed.zone_index
        nz = len(zones)
        for n in now.nodes:
            if n.present and n.zone and n.zone not in zones:
                raise FastpathError(f"{self.log.source}: node {n.name} moves to zone {n.zone}, which no node had "
                                    f"at the start or in its first event: not supported")
        node_zone = np.array([zones.get(n.zone, nz) if n.zone else nz for n in now.nodes], np.int32)
        pool = np.array([i for i, n in enumerate(now.nodes) if n.present], np.int32)
        ed.smap = dataclasses.replace(ed.smap, arrays=a._replace(node_ip=node_ip, node_zone=node_zone,
                                                                  node_pool=pool))

    def _recompile(self, now) -> None:
        """The forwarding tables anew (same indices), and what listens from every slice."""
        from .cluster.endpoints import endpoints_for

        slices = endpoints_for(now)
        self.dp.tables = compile_forwarding(now, slices=slices, non_masquerade_cidrs=self.masq)
        if self.dp.policy is not None:
            self.dp.policy.fwd = self.dp.tables
        self._served_reset(slices)
        self.full_compiles += 1

    def _policy(self, now) -> None:
        from .stages.policy import PolicyStage

        if not self.live.has_policies:
            return
        old = self.dp.policy
        new = PolicyStage.build(now, self.dp.tables)
        if new is not None and old is not None:
            new.counting = old.counting
            if new.allowed.shape == old.allowed.shape:
                new.allowed[:] = old.allowed
        self.dp.policy = new

    # ------------------------------------------------------------------ forwarding, in place
    def _plain(self, p) -> bool:
        """Whether pod ``p`` is an ordinary bridged pod the forwarding tables can take in place."""
        if p.ip is None or p.node is None:
            return True                               # no address on a bridge: nothing to place
        t = self.dp.tables
        node = self.live.node_index.get(p.node)
        # inside its node's pod CIDR: no route of its own (a Calico-style block or /32 goes with the pod)
        inside = node is not None and any((p.ip >> (32 - n)) == (net >> (32 - n)) if n else True
                                          for net, n in self.live.nodes[node].pod_cidrs)
        return (p.node_known and inside and not p.host_network and not any(cp.host_port for cp in p.ports)
                and t.node_by_ip.get(p.ip) < 0 and int(t.routes.lookup(np.array([p.ip], np.uint32))[0]) == node)

    def _pod_in_place(self, i: int, old, new) -> bool:
        """Move pod ``i`` from ``old`` to ``new`` in the pod table and its record; False: recompile."""
        t = self.dp.tables
        if not (self._plain(old) and self._plain(new)):
            return False
        bridged = new.ip is not None and new.node is not None
        if bridged and t.pod_by_ip.get(new.ip) not in (-1, i):
            return False                              # an address two pods claim: the loader's rules decide
        remove = [old.ip] if (old.ip is not None and t.pod_by_ip.get(old.ip) == i
                              and (not bridged or old.ip != new.ip)) else []
        table = t.pod_by_ip.updated(remove=remove, add=[(new.ip, i)] if bridged else [])
        node = self.live.node_index[new.node] if new.node is not None and new.node_known else -1
        t.pod_ip[i] = new.ip or 0
        t.pod_node[i] = node
        t.pod_rec[4 * i] = np.uint32(node & 0xFFFFFFFF)
        if table is not t.pod_by_ip:
            self.dp.tables = dataclasses.replace(t, pod_by_ip=table)
            if self.dp.policy is not None:
                self.dp.policy.fwd = self.dp.tables
        return self._listen_in_place(i)

    def _listen_in_place(self, i: int) -> bool:
        """Rewrite what pod ``i`` listens on (declared and served ports) in its record and its share of
        the overflow list, padded with empty entries; False when they hold fewer than it needs."""
        t = self.dp.tables
        p = self.live.pods[i]
        entries = {(cp.proto << 16) | cp.port for cp in p.ports}
        entries |= set(self.served_pod.get(i, ()))
        lo, hi = int(t.more_off[i]), int(t.more_off[i + 1])
        if len(entries) > 3 + hi - lo:
            return False
        row = sorted(entries) + [int(NO_PORT)] * (3 + hi - lo - len(entries))
        t.pod_rec[4 * i + 1:4 * i + 4] = row[:3]
        t.more_ports[lo:hi] = row[3:]
        return True

    # ------------------------------------------------------------------ resolving
    def resolve(self, flows, out):
        """Resolve a batch in time order, applying each group of events before the first flow at or after it."""
        from .pipeline import Results

        if flows.ts is None:
            raise FastpathError("--events needs a trace with a ts column (when each flow starts)")
        ts = flows.ts
        n = flows.n
        if out is None:
            out = Results.empty(n)
        pos = 0
        while pos < n:
            while self.applied < len(self.groups) and self.group_ts[self.applied] <= ts[pos]:
                self.apply_next()
            cut = n if self.applied >= len(self.groups) else \
                int(np.searchsorted(ts, self.group_ts[self.applied], side="left"))
            cut = max(cut, pos + 1)
            part = flows.slice(pos, cut)
            r = out.take(slice(pos, cut))
            if self._dns_dirty and part.name_code is not None:
                from .dns import DnsTable
                self.dp.dns = DnsTable.from_cluster(self.dp.cluster)
                self._dns_dirty = False
            with _few_threads(cut - pos):
                self.dp.resolve_flows(part, out=r)
                if self._churn is not None:
                    self._measure(part, r)
            pos = cut
        return out

    def _measure(self, flows, r) -> None:
        """Churn: the affected ports' flows run again through the tables as they were before the group."""
        from .pipeline import SRC_EXTERNAL

        g, old, mask, (was_ip, was_node) = self._churn
        svc = r.service
        rows = np.flatnonzero((svc >= 0) & mask[np.maximum(svc, 0)])
        if not rows.size:
            return
        f = flows
        dst = self.dp.last_dst[rows] if self.dp.last_dst is not None else f.dst_ip[rows]
        k = rows.shape[0]
        src_node = np.where(r.src_kind[rows] == SRC_EXTERNAL, -1, r.src_node[rows]).astype(np.int32)
        if was_ip.size:                                  # senders the group changed: as they were before it
            k_ = np.minimum(np.searchsorted(was_ip, f.src_ip[rows]), was_ip.size - 1)
            hit = was_ip[k_] == f.src_ip[rows]
            src_node[hit] = was_node[k_[hit]]
        verdict = np.full(k, PENDING, np.uint8)
        service = np.full(k, -1, np.int32)
        dnat_ip = np.ascontiguousarray(dst, np.uint32)
        dnat_port = np.ascontiguousarray(f.dst_port[rows], np.uint16)
        snat_ip = np.ascontiguousarray(f.src_ip[rows], np.uint32)
        old.run(f.src_ip[rows], dnat_ip.copy(), f.src_port[rows], f.dst_port[rows], f.proto[rows], f.ts[rows],
                r.src_pod[rows], src_node, verdict, service, dnat_ip, dnat_port, snat_ip,
                None if f.duration is None else f.duration[rows])
        moved = (dnat_ip != r.dnat_ip[rows]) | (dnat_port != r.dnat_port[rows])
        rec = self.records[g]
        rec["flows"] += k
        rec["changed_backend"] += int(np.count_nonzero(moved))
        n = self.churn_flows.shape[0]
        self.churn_flows += np.bincount(svc[rows], minlength=n)
        self.churn_changed += np.bincount(svc[rows][moved], minlength=n)

    # ------------------------------------------------------------------ the conntrack stage
    def follow_conntrack(self, ct) -> None:
        """Let the replay's conntrack stage (:class:`~fastpath.stages.conntrack.ReplayConntrack`, or
        None) follow the events: its own copy of the pods' nodes, updated group by group on its
        thread (:meth:`run_conntrack`), and each node's address from its first appearance."""
        if ct is None:
            return
        st = ct.stage
        st.pod_node = st.pod_node.copy()
        for i, n in enumerate(self.live.nodes):
            if not n.present and st.node_ip[i] == 0:
                first = next((o for e, o in zip(self.log.events, self.live.parsed)
                              if e.kind == "Node" and e.name == n.name and o is not None), None)
                st.node_ip[i] = (first.internal_ip or 0) if first is not None else 0
        self._ct_group = 0

    def run_conntrack(self, ct, flows, r) -> None:
        """Conntrack over a batch, the pods' nodes updated at each group of events inside it."""
        st = ct.stage
        ts = flows.ts
        pos, n = 0, flows.n
        while pos < n:
            g = self._ct_group
            while g < len(self.group_ts) and self.group_ts[g] <= ts[pos]:
                upd = self.ct_updates.get(g)
                if upd is not None:
                    pods, nodes, bridged = upd
                    st.pod_node[pods] = nodes
                    st.pod_bridged[pods] = bridged
                g += 1
            self._ct_group = g
            cut = n if g >= len(self.group_ts) else int(np.searchsorted(ts, self.group_ts[g], side="left"))
            cut = max(cut, pos + 1)
            if pos == 0 and cut == n:
                st.run(flows, r)
            else:
                st.run(flows.slice(pos, cut), r.take(slice(pos, cut)))
            pos = cut

    def finish(self) -> None:
        """Apply the groups after the last flow (their records), and total the churn shares."""
        while self.applied < len(self.groups):
            self.apply_next(churn=False)
        self.departures.fill(self.records)
        for rec in self.records:
            rec["changed_share"] = round(rec["changed_backend"] / rec["flows"], 6) if rec["flows"] else None
        self.dp.services = self.editor.view()

    def summary_fields(self) -> dict:
        """What the replay's summary adds (``docs/events.md``)."""
        return {"broken_connections": int(self.departures.broken.sum()),
                "udp_flushed": int(self.departures.flushed.sum()),
                "event_groups": len(self.groups), "events": self.records, "event_warnings": list(self.warnings)}


#: A piece of a batch (between two groups of events) this small runs its kernels on one
#: thread: waking the pool costs more than the work, and far more when another thread (the
#: writer's conntrack) holds the other core.
FEW_ROWS = 8192


@contextmanager
def _few_threads(rows: int):
    """One kernel thread (on this thread only: numba's count is per thread) for a small piece."""
    from ._jit import get_threads, set_threads

    if rows >= FEW_ROWS:
        yield
        return
    before = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)


def cluster_at(base, log: EventLog, at: int | None = None):
    """The cluster as the events leave it at time ``at`` (ns; events at ``at`` count; None: after all),
    with every node and pod that ever exists in place (``fastpath explain --at``)."""
    live = LiveCluster(base, log)
    first = 0
    for group in log.groups:
        if at is not None and group[0].ts > at:
            break
        live.apply(first, group)
        first += len(group)
    now = live.cluster()
    return dataclasses.replace(now, pods=[p for i, p in enumerate(now.pods) if i in live.exists])


def _facts(svc) -> tuple | None:
    """What makes a Service's ports the same ports (docs/events.md "Churn")."""
    if svc is None or svc.type == "ExternalName" or svc.headless:
        return None
    return (svc.type, svc.ports, svc.external_policy, svc.internal_policy, svc.session_affinity,
            svc.affinity_timeout, svc.traffic_distribution)


class Departures:
    """Connections broken or flushed by pods going away (``docs/events.md``), counted per group.

    ``gone`` and ``stops``: ``(pod, ts, group)`` tuples from :meth:`LiveCluster.departures`: a
    UDP flow through a service is flushed when its pod stops serving first (kube-proxy's
    conntrack cleanup only touches entries to a service address or NodePort); every other
    connection (TCP/SCTP, and UDP straight to a pod) breaks when its pod goes away first.
    Runs on the results of each batch (any thread, in trace order).
    """

    def __init__(self, gone: list, stops: list, n_pods: int, n_groups: int) -> None:
        self.gone = self._csr(gone, n_pods)
        self.stops = self._csr(stops, n_pods)
        self.broken = np.zeros(max(1, n_groups), np.int64)
        self.flushed = np.zeros(max(1, n_groups), np.int64)
        self.any = bool(gone or stops)

    @staticmethod
    def _csr(rows: list, n_pods: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets per pod, times, groups), each pod's times in order."""
        d = np.array(sorted(rows), np.int64).reshape(-1, 3)
        return (np.searchsorted(d[:, 0], np.arange(n_pods + 1)).astype(np.int64),
                np.ascontiguousarray(d[:, 1]), np.ascontiguousarray(d[:, 2]))

    def add(self, flows, r, default_s: float) -> None:
        """Count the batch's connections that a departure cuts."""
        if not self.any or flows.ts is None:
            return
        life = lifetimes_ns(flows.proto, flows.duration, default_s)
        _count_departures(r.verdict, r.dst_pod, r.service, flows.proto, flows.ts, life, *self.gone, *self.stops,
                          self.broken, self.flushed)

    def fill(self, records: list[dict]) -> None:
        for g, rec in enumerate(records):
            rec["broken_connections"] = int(self.broken[g])
            rec["udp_flushed"] = int(self.flushed[g])


@jit(_nrt=False)
def _count_departures(verdict, dst_pod, service, proto, ts, life, g_off, g_ts, g_group, s_off, s_ts, s_group,
                      broken, flushed):
    """Each delivered flow against the first departure of its pod after it starts (UDP through a
    service: the pod no longer serving; anything else: the pod going away), counted when that
    comes before the flow ends."""
    for i in range(verdict.shape[0]):
        p = dst_pod[i]
        if verdict[i] != DELIVERED or p < 0:
            continue
        udp = proto[i] == 17 and service[i] >= 0     # kube-proxy flushes only what it DNATed
        off, times, group = (s_off, s_ts, s_group) if udp else (g_off, g_ts, g_group)
        t = ts[i]
        end = t + life[i]
        for k in range(off[p], off[p + 1]):
            g = times[k]
            if g > t:
                if g < end:
                    if udp:
                        flushed[group[k]] += 1
                    else:
                        broken[group[k]] += 1
                break


def render_events(summary, top: int = 10):
    """The summary's cluster-event figures as rich tables: totals, then the groups that moved most flows."""
    from datetime import datetime, timezone

    from rich.console import Group
    from rich.table import Table

    recs = summary.events or []
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("cluster events", f"{sum(r['events'] for r in recs):,} in {summary.event_groups:,} groups")
    head.add_row("broken", f"{summary.broken_connections:,} connections whose pod went away first")
    head.add_row("flushed", f"{summary.udp_flushed:,} UDP service flows whose pod stopped serving (re-balanced)")
    moved = sorted((r for r in recs if r["flows"]), key=lambda r: (-r["changed_backend"], r["ts"]))[:top]
    t = Table(title=f"groups that moved most flows (top {len(moved)})", title_justify="left",
              caption="changed: flows of the affected service ports that got another backend than the "
                      "cluster just before would have given", caption_justify="left")
    for col, just in (("time (UTC)", "left"), ("events", "left"), ("service ports", "left"), ("flows", "right"),
                      ("changed", "right"), ("broken", "right")):
        t.add_column(col, justify=just, overflow="fold")
    for r in moved:
        ports = r["affected_service_ports"]
        when = datetime.fromtimestamp(r["ts"] // 1_000_000_000, timezone.utc).strftime("%H:%M:%S")
        t.add_row(f"{when}.{r['ts'] % 1_000_000_000 // 1_000_000:03d}", ", ".join(f"{v} {k}" for k, v in r["kinds"].items()),
                  ", ".join(ports[:3]) + (f" (+{len(ports) - 3})" if len(ports) > 3 else ""),
                  f"{r['flows']:,}", f"{r['changed_backend']:,} ({r['changed_share']:.1%})",
                  f"{r['broken_connections']:,}")
    return Group(head, t) if moved else head
