"""The numbers of a capacity study, tallied from result columns batch by batch.

:class:`StudyTally` watches one replay (one balancer) and keeps, with vectorized
counts per batch and no Python per flow:

* the traffic mix (flows by verdict, path and reason);
* flows and bytes per backend of every service port (:func:`fastpath.study`'s
  endpoint matching), hence each service's spread;
* flows and bytes per (source node, destination node) pair and per zone pair;
* flows and bytes per source pod (top talkers);
* per node, the conntrack entries the trace's connections create and how long
  they live (the headroom figure), and with ``against``, how many service flows
  a second cluster state sends to another backend.

:func:`figures` turns the tallies of every balancer into the plain dict that
``figures.json`` holds and the page draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codes import PATHS, REASONS, VERDICTS
from ..lifetimes import DEFAULT_DURATION as DEFAULT_CONN_DURATION, lifetimes_ns
from ..stages.conntrack import conntrack_max, entries_left
from ..study import _match_backends, imbalance

#: Node pairs counted in a dense matrix up to this many nodes; beyond it, sparse counts.
DENSE_NODES = 1024
#: Services drawn in the balance figure, and listed among the worst by imbalance.
TOP_SERVICES, WORST_SERVICES = 6, 10
#: A service needs this many flows per backend on average to be ranked by imbalance
#: (fewer, and the draw's own noise dominates max/mean).
MIN_FLOWS_PER_BACKEND = 20
#: Node pairs and source pods listed as top talkers.
TOP_TALKERS = 10
#: Nodes shown in the node x node heatmap (the busiest; the rest are summed as "other").
HEATMAP_NODES = 40


class _SparseCounter:
    """Counts and weights per int64 key, merged every few batches (memory stays small)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.keys = np.empty(0, np.int64)
        self.counts = np.empty(0, np.int64)
        self.weights = np.empty(0, np.float64)

    def add(self, keys: np.ndarray, weights: np.ndarray | None) -> None:
        k, inv = np.unique(keys, return_inverse=True)
        w = np.bincount(inv, weights=weights, minlength=k.size) if weights is not None else np.zeros(k.size)
        self.parts.append((k, np.bincount(inv, minlength=k.size), w))
        if len(self.parts) >= 32:
            self._merge()

    def _merge(self) -> None:
        if not self.parts:
            return
        k = np.concatenate([self.keys] + [p[0] for p in self.parts])
        c = np.concatenate([self.counts] + [p[1] for p in self.parts])
        w = np.concatenate([self.weights] + [p[2] for p in self.parts])
        self.parts = []
        self.keys, inv = np.unique(k, return_inverse=True)
        self.counts = np.bincount(inv, weights=c, minlength=self.keys.size).astype(np.int64)
        self.weights = np.bincount(inv, weights=w, minlength=self.keys.size)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._merge()
        return self.keys, self.counts, self.weights


@dataclass
class StudyTally:
    """What one replay (one balancer) contributes to a study; feed it every batch in order.

    Parameters
    ----------
    dp
        The compiled :class:`~fastpath.pipeline.DataPlane` the replay runs.
    lb
        The balancer's name, as the figures label it.
    """

    dp: Any
    lb: str
    flows: int = 0
    has_bytes: bool = False
    has_ts: bool = False
    t_first: int | None = None
    t_last: int | None = None
    against: Any = None          #: a second DataPlane the same flows are resolved against
    #: the :class:`~fastpath.live.LivePlane` of a replay with cluster events: backends come and go, so
    #: they are counted by (service port, address, port) and named at the end
    live: Any = None
    _state: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        t, smap = self.dp.tables, self.dp.services
        n_nodes, n_pods = len(t.node_names), len(t.pod_names)
        s = self._state
        s["verdict"] = np.zeros(len(VERDICTS), np.int64)
        s["path"] = np.zeros(len(PATHS), np.int64)
        s["reason"] = np.zeros(len(REASONS), np.int64)
        s["ep_flows"] = np.zeros(smap.ep_ip.shape[0], np.int64)
        s["ep_bytes"] = np.zeros(smap.ep_ip.shape[0], np.float64)
        # node pairs: index n_nodes stands for "none" (outside the cluster)
        self._side = n_nodes + 1
        if self._side <= DENSE_NODES + 1:
            s["pair_flows"] = np.zeros(self._side * self._side, np.int64)
            s["pair_bytes"] = np.zeros(self._side * self._side, np.float64)
        else:
            s["pairs"] = _SparseCounter()
        s["pod_flows"] = np.zeros(n_pods, np.int64)
        s["pod_bytes"] = np.zeros(n_pods, np.float64)
        s["ct_entries"] = np.zeros(n_nodes, np.int64)      # entries created per node
        s["ct_seconds"] = np.zeros(n_nodes, np.float64)    # their summed lifetimes
        s["sp_flows"] = np.zeros(len(smap.names), np.int64)
        s["sp_changed"] = np.zeros(len(smap.names), np.int64)

    # ------------------------------------------------------------------ per batch
    def add(self, flows, r) -> None:
        """Count one resolved batch (``flows``: :class:`~fastpath.traces.Flows`, ``r``: its Results)."""
        s, n = self._state, flows.n
        if n == 0:
            return
        self.flows += n
        w = None
        if flows.bytes is not None:
            self.has_bytes = True
            w = np.asarray(flows.bytes, dtype=np.float64)
        if flows.ts is not None:
            self.has_ts = True
            first, last = int(flows.ts[0]), int(flows.ts[-1])
            self.t_first = first if self.t_first is None else min(self.t_first, first)
            self.t_last = last if self.t_last is None else max(self.t_last, last)
        s["verdict"] += np.bincount(r.verdict, minlength=len(VERDICTS))[:len(VERDICTS)]
        s["path"] += np.bincount(r.path, minlength=len(PATHS))[:len(PATHS)]
        s["reason"] += np.bincount(r.reason, minlength=len(REASONS))[:len(REASONS)]

        svc = r.service >= 0
        if self.live is not None:
            hit = svc & (r.verdict != VERDICTS.index("rejected"))
            keys = ((r.service[hit].astype(np.int64) << 48) | (r.dnat_ip[hit].astype(np.int64) << 16)
                    | r.dnat_port[hit].astype(np.int64))
            s.setdefault("backends", _SparseCounter()).add(keys, None if w is None else w[hit])
        else:
            smap = self.dp.services
            ep = np.empty(n, np.int64)
            _match_backends(smap.ep_off, smap.ep_ip, smap.ep_port, r.service, r.dnat_ip, r.dnat_port, ep)
            hit = ep >= 0
            s["ep_flows"] += np.bincount(ep[hit], minlength=s["ep_flows"].size)
            if w is not None:
                s["ep_bytes"] += np.bincount(ep[hit], weights=w[hit], minlength=s["ep_bytes"].size)
        s["sp_flows"] += np.bincount(r.service[svc], minlength=s["sp_flows"].size)

        src_n = np.where(r.src_node >= 0, r.src_node, self._side - 1).astype(np.int64)
        dst_n = np.where(r.dst_node >= 0, r.dst_node, self._side - 1).astype(np.int64)
        keys = src_n * self._side + dst_n
        if "pairs" in s:
            s["pairs"].add(keys, w)
        else:
            s["pair_flows"] += np.bincount(keys, minlength=s["pair_flows"].size)
            if w is not None:
                s["pair_bytes"] += np.bincount(keys, weights=w, minlength=s["pair_bytes"].size)
        pod = r.src_pod >= 0
        s["pod_flows"] += np.bincount(r.src_pod[pod], minlength=s["pod_flows"].size)
        if w is not None:
            s["pod_bytes"] += np.bincount(r.src_pod[pod], weights=w[pod], minlength=s["pod_bytes"].size)
        self._conntrack(flows, r)

    def _conntrack(self, flows, r) -> None:
        """Entries each node's conntrack gets from this batch, and how long they live.

        The conntrack stage's rule (:func:`fastpath.stages.conntrack.entries_left`): who holds
        an entry (the client's node, and the destination's when it answered or refused there)
        and for how long (the connection's lifetime, :mod:`fastpath.lifetimes`, plus the
        timeout of the state it closes in).
        """
        s = self._state
        life = lifetimes_ns(flows.proto, flows.duration,
                            getattr(self.dp.services, "conn_duration", DEFAULT_CONN_DURATION))
        on_client, on_far, seconds = entries_left(r.verdict, r.reason, r.path, r.src_node, r.dst_node,
                                                  flows.proto, life)
        for held, node in ((on_client, r.src_node), (on_far, r.dst_node)):
            i = np.flatnonzero(held)
            s["ct_entries"] += np.bincount(node[i], minlength=s["ct_entries"].size)
            s["ct_seconds"] += np.bincount(node[i], weights=seconds[i], minlength=s["ct_seconds"].size)

    def add_against(self, r, r2) -> None:
        """Count service flows whose backend differs between this cluster (``r``) and the other (``r2``)."""
        s = self._state
        svc = r.service >= 0
        changed = svc & ((r.dnat_ip != r2.dnat_ip) | (r.dnat_port != r2.dnat_port))
        s["sp_changed"] += np.bincount(r.service[changed], minlength=s["sp_changed"].size)

    # ------------------------------------------------------------------ results
    def counts(self) -> dict[str, dict[str, int]]:
        s = self._state
        return {
            "verdict": {k: int(v) for k, v in zip(VERDICTS, s["verdict"]) if v},
            "path": {k: int(v) for k, v in zip(PATHS, s["path"]) if v},
            "reason": {k: int(v) for k, v in zip(REASONS, s["reason"]) if v and k},
        }

    def backend_rows(self) -> list[dict]:
        """One row per service port with flows: its backends' loads (flows, bytes) by pod or address."""
        from ..addr import int_to_ip

        if self.live is not None:
            return self._live_backend_rows()
        smap, s = self.dp.services, self._state
        rows = []
        ep_sp = np.repeat(np.arange(len(smap.names)), np.diff(smap.ep_off))
        sp_total = np.bincount(ep_sp, weights=s["ep_flows"], minlength=len(smap.names))
        for sp in np.flatnonzero(sp_total):
            lo, hi = int(smap.ep_off[sp]), int(smap.ep_off[sp + 1])
            idx = np.arange(lo, hi)
            # the summary's meaning of "backends": Ready endpoints, plus any other that got flows
            keep = idx[smap.ep_ready[lo:hi].astype(bool) | (s["ep_flows"][lo:hi] > 0)]
            names = [smap.pod_names[int(smap.ep_pod[e])] if smap.ep_pod[e] >= 0
                     else f"{int_to_ip(int(smap.ep_ip[e]))}:{int(smap.ep_port[e])}" for e in keep]
            flows = s["ep_flows"][keep]
            mom, cv = imbalance(flows)
            rows.append({"service": smap.names[sp], "backends": names, "flows": flows.tolist(),
                         "bytes": s["ep_bytes"][keep].tolist() if self.has_bytes else None,
                         "total": int(flows.sum()), "max_over_mean": _num(mom), "cv": _num(cv)})
        return rows

    def _live_backend_rows(self) -> list[dict]:
        """:meth:`backend_rows` of a replay with events: every backend that got flows, named by its pod
        where a pod holds the address at the end, else by address."""
        from ..addr import int_to_ip

        keys, counts, weights = self._state.get("backends", _SparseCounter()).result()
        names, t = self.dp.services.names, self.dp.tables
        sp = keys >> 48
        ip = ((keys >> 16) & 0xFFFFFFFF).astype(np.uint32)
        pod = t.pod_by_ip.lookup(ip) if keys.size else np.zeros(0, np.int64)
        rows = []
        for s_ in np.unique(sp).tolist():
            k = np.flatnonzero(sp == s_)
            flows = counts[k]
            mom, cv = imbalance(flows)
            rows.append({"service": names[s_],
                         "backends": [t.pod_names[int(pod[j])] if pod[j] >= 0 else
                                      f"{int_to_ip(int(ip[j]))}:{int(keys[j] & 0xFFFF)}" for j in k.tolist()],
                         "flows": flows.tolist(), "bytes": weights[k].tolist() if self.has_bytes else None,
                         "total": int(flows.sum()), "max_over_mean": _num(mom), "cv": _num(cv)})
        return rows

    def pair_matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, flows, bytes) of every (src node, dst node) pair with traffic; key = src * side + dst."""
        s = self._state
        if "pairs" in s:
            return s["pairs"].result()
        keys = np.flatnonzero(s["pair_flows"])
        return keys.astype(np.int64), s["pair_flows"][keys], s["pair_bytes"][keys]


def _num(x: float) -> float | None:
    """A JSON-safe float: NaN and infinities become null."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


# --------------------------------------------------------------------------- figures

def figures(tallies: list[StudyTally], *, cluster: str, trace: str, against: str | None = None,
            timeline=None) -> dict:
    """Every number of the study page, keyed by figure (the content of ``figures.json``).

    Parameters
    ----------
    tallies
        One :class:`StudyTally` per balancer, in ``--lb`` order; the first is the
        reference for the figures that do not compare balancers.
    timeline
        The first balancer's timeline (a ``pyarrow.Table`` with the ``--timeline``
        columns), or ``None`` when the trace has no ``ts``.
    """
    ref = tallies[0]
    out: dict[str, Any] = {
        "study": {"cluster": cluster, "trace": trace, "against": against, "flows": ref.flows,
                  "balancers": [t.lb for t in tallies], "seed": getattr(ref.dp, "seed", 0)},
        "traffic_mix": _traffic_mix(ref),
        "balance": _balance(tallies),
        "where": _where(ref),
        "state_over_time": _state_over_time(ref, timeline),
        "change": _change(tallies, against),
        "headroom": _headroom(ref),
    }
    return out


def _traffic_mix(ref: StudyTally) -> dict:
    c = ref.counts()
    delivered = c["verdict"].get("delivered", 0)
    return {**c, "flows": ref.flows, "delivered_share": _share(delivered, ref.flows)}


def _balance(tallies: list[StudyTally]) -> dict:
    per_lb = {t.lb: {r["service"]: r for r in t.backend_rows()} for t in tallies}
    ref = per_lb[tallies[0].lb]
    top = sorted(ref.values(), key=lambda r: -r["total"])[:TOP_SERVICES]
    services = []
    for row in top:
        entry = {"service": row["service"], "backends": row["backends"], "by_lb": {}}
        for lb, rows in per_lb.items():
            r = rows.get(row["service"])
            if r is None:
                continue
            # align on the reference's backend order; a backend another lb never used counts 0
            load = dict(zip(r["backends"], r["flows"]))
            entry["by_lb"][lb] = {"flows": [int(load.get(b, 0)) for b in row["backends"]],
                                  "max_over_mean": r["max_over_mean"], "cv": r["cv"]}
        services.append(entry)
    worst = {}
    for lb, rows in per_lb.items():
        ranked = [r for r in rows.values()
                  if len(r["backends"]) > 1 and r["total"] >= MIN_FLOWS_PER_BACKEND * len(r["backends"])
                  and r["max_over_mean"] is not None]
        ranked.sort(key=lambda r: -r["max_over_mean"])
        worst[lb] = [{"service": r["service"], "backends": len(r["backends"]), "flows": r["total"],
                      "max_over_mean": r["max_over_mean"], "cv": r["cv"]} for r in ranked[:WORST_SERVICES]]
    return {"top_services": services, "worst": worst, "min_flows_per_backend": MIN_FLOWS_PER_BACKEND}


def _where(ref: StudyTally) -> dict:
    t = ref.dp.tables
    names = list(t.node_names)
    side = len(names) + 1
    keys, flows, nbytes = ref.pair_matrix()
    src, dst = keys // side, keys % side
    inside = (src < side - 1) & (dst < side - 1)
    total_in = int(flows[inside].sum())
    cross = inside & (src != dst)
    # zones: the node's topology label; nodes without one share "(no zone)"
    zone_of = [n.zone or "(no zone)" for n in ref.dp.cluster.nodes] if len(ref.dp.cluster.nodes) == len(names) \
        else ["(no zone)"] * len(names)
    zones = sorted(set(zone_of)) + ["outside"]
    zi = np.array([zones.index(z) for z in zone_of] + [len(zones) - 1], dtype=np.int64)
    zs, zd = zi[src], zi[dst]
    nz = len(zones)
    zflows = np.bincount(zs * nz + zd, weights=flows, minlength=nz * nz).reshape(nz, nz)
    zbytes = np.bincount(zs * nz + zd, weights=nbytes, minlength=nz * nz).reshape(nz, nz)
    cross_zone = inside & (zs != zd)
    # the busiest nodes for the heatmap, the rest summed as "other"
    node_load = np.bincount(src[inside], weights=flows[inside], minlength=side) + \
        np.bincount(dst[inside], weights=flows[inside], minlength=side)
    busiest = [int(i) for i in np.argsort(-node_load[:side - 1], kind="stable")[:HEATMAP_NODES]
               if node_load[i] > 0]
    slot = np.full(side, len(busiest), np.int64)
    slot[busiest] = np.arange(len(busiest))
    k = len(busiest) + 1
    sel = inside
    hm = np.bincount(slot[src[sel]] * k + slot[dst[sel]], weights=flows[sel], minlength=k * k).reshape(k, k)
    rank = nbytes if ref.has_bytes else flows
    ci = np.flatnonzero(cross)[np.argsort(-rank[cross], kind="stable")[:TOP_TALKERS]]
    talkers = [{"src_node": names[int(src[i])], "dst_node": names[int(dst[i])], "flows": int(flows[i]),
                "bytes": float(nbytes[i]) if ref.has_bytes else None} for i in ci]
    s = ref._state
    pod_key = s["pod_bytes"] if ref.has_bytes else s["pod_flows"]
    top_pods = [int(i) for i in np.argsort(-pod_key, kind="stable")[:TOP_TALKERS] if s["pod_flows"][i] > 0]
    return {
        "forwarded_flows": total_in,
        "cross_node_share": _share(int(flows[cross].sum()), total_in),
        "cross_zone_share": _share(int(flows[cross_zone].sum()), total_in),
        "cross_zone_bytes": float(nbytes[cross_zone].sum()) if ref.has_bytes else None,
        "zones": zones,
        "zone_flows": zflows.astype(np.int64).tolist(),
        "zone_bytes": zbytes.tolist() if ref.has_bytes else None,
        "heatmap_nodes": [names[i] for i in busiest] + (["other"] if len(names) > len(busiest) else []),
        "node_flows": (hm if len(names) > len(busiest) else hm[:-1, :-1]).astype(np.int64).tolist(),
        "top_node_pairs": talkers,
        "top_source_pods": [{"pod": t.pod_names[i], "flows": int(s["pod_flows"][i]),
                             "bytes": float(s["pod_bytes"][i]) if ref.has_bytes else None} for i in top_pods],
    }


def _state_over_time(ref: StudyTally, timeline) -> dict:
    if not ref.has_ts:
        return {"why_empty": "the trace has no ts column, so the replay keeps no state over time"}
    if not len(ref.dp.tables.node_names):
        return {"why_empty": "the cluster has no Node objects, so no node keeps conntrack state"}
    if timeline is None or timeline.num_rows == 0:
        return {"why_empty": "the replay wrote no timeline rows (conntrack off?)"}
    node = timeline.column("node").to_pylist()
    t = timeline.column("t").cast("int64").to_numpy()
    entries = timeline.column("conntrack_entries").to_numpy()
    cmax = timeline.column("conntrack_max").to_numpy()
    drops = timeline.column("drops").to_numpy()
    floods = timeline.column("fdb_floods").to_numpy()
    names = sorted(set(node))
    ni = np.array([names.index(x) for x in node], dtype=np.int64) if node else np.empty(0, np.int64)
    occupancy = entries / np.maximum(cmax, 1)
    peak_occ = np.zeros(len(names))
    np.maximum.at(peak_occ, ni, occupancy)
    busiest = [names[i] for i in np.argsort(-peak_occ, kind="stable")[:8]]
    series = {}
    for nm in busiest:
        m = np.flatnonzero(ni == names.index(nm))
        series[nm] = {"t": ((t[m] - t.min()) / 1e9).round(6).tolist(), "entries": entries[m].tolist(),
                      "max": int(cmax[m].max())}
    times = np.unique(t)
    ti = np.searchsorted(times, t)
    return {
        "interval_s": float((times[1] - times[0]) / 1e9) if times.size > 1 else None,
        "nodes": len(names),
        "peak_occupancy": _num(float(peak_occ.max())) if peak_occ.size else None,
        "peak_node": busiest[0] if busiest else None,
        "drops": int(drops.sum()), "fdb_floods": int(floods.sum()),
        "busiest": series,
        "drops_over_time": np.bincount(ti, weights=drops, minlength=times.size).astype(np.int64).tolist(),
        "floods_over_time": np.bincount(ti, weights=floods, minlength=times.size).astype(np.int64).tolist(),
        "t": ((times - times.min()) / 1e9).round(6).tolist(),
        "nodes_with_drops": int(np.unique(ni[drops > 0]).size),
    }


def _change(tallies: list[StudyTally], against: str | None) -> dict:
    events = tallies[0].live is not None
    if against is None and not events:
        return {"why_empty": "no --against cluster or --events was given, so there is no change to compare"}
    out: dict[str, Any] = {"against": against, "by_lb": {}}
    if events:
        out["events"] = tallies[0].live.log.source
    for t in tallies:
        s = t._state
        if events:      # the flows of affected service ports after each group, against the tables before it
            flows, changed = t.live.churn_flows, t.live.churn_changed
        else:
            flows, changed = s["sp_flows"], s["sp_changed"]
        names = t.dp.services.names
        top = np.argsort(-flows, kind="stable")[:TOP_SERVICES * 2]
        out["by_lb"][t.lb] = {
            "service_flows": int(flows.sum()), "changed": int(changed.sum()),
            "changed_share": _share(int(changed.sum()), int(flows.sum())),
            "services": [{"service": names[i], "flows": int(flows[i]), "changed": int(changed[i]),
                          "changed_share": _share(int(changed[i]), int(flows[i]))} for i in top if flows[i]],
        }
        if events:
            extra = t.live.summary_fields()
            out["by_lb"][t.lb].update({k: extra[k] for k in ("broken_connections", "udp_flushed", "event_groups")})
    return out


def _headroom(ref: StudyTally) -> dict:
    s = ref._state
    names = list(ref.dp.tables.node_names)
    entries, seconds = s["ct_entries"], s["ct_seconds"]
    nodes = ref.dp.cluster.nodes if len(ref.dp.cluster.nodes) == len(names) else []
    sizing = getattr(ref.dp.cluster, "conntrack_sizing", None)       # kube-proxy's ConfigMap
    cmax = np.array([conntrack_max(getattr(n, "cpu", None), sizing) for n in nodes]
                    or [conntrack_max(None, sizing)] * len(names), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_life = np.where(entries > 0, seconds / np.maximum(entries, 1), np.nan)
        # Little's law: entries on node n = rate x (entries per flow on n) x (mean lifetime)
        fill = np.where(seconds > 0, cmax * ref.flows / seconds, np.inf)
    order = [int(i) for i in np.argsort(fill, kind="stable") if entries[i] > 0]
    rows = [{"node": names[i], "conntrack_max": int(cmax[i]), "entries_per_flow": _num(entries[i] / ref.flows),
             "mean_lifetime_s": _num(float(mean_life[i])), "fill_rate_flows_per_s": _num(float(fill[i]))}
            for i in order]
    return {"nodes": rows, "first_to_fill": rows[0] if rows else None,
            "observed_rate_flows_per_s": _num(ref.flows / ((ref.t_last - ref.t_first) / 1e9))
            if ref.has_ts and ref.t_last is not None and ref.t_last > ref.t_first else None}
