"""Capacity-study figures from service-stage results: backend load, imbalance, churn.

The questions users ask of kube-proxy (spec §6): how evenly do flows spread
over a service's backends (kubernetes #37932, cilium #14250), and how many
flows change backend when an endpoint goes away (why Maglev exists).

* :func:`backend_load` — flows (and bytes) per backend of every service port,
  from result arrays or an Arrow results table and the :class:`ServiceMap`.
* :func:`imbalance` — max/mean and coefficient of variation of one load vector;
  :meth:`BackendLoad.imbalance` gives them per service port.
* :func:`churn` — share of flows whose backend changes when endpoints are
  removed, per balancer: Maglev moves about 1/N, hash-mod-N most flows.
* :func:`plot_backend_load`, :func:`plot_churn` — matplotlib figures, only if
  matplotlib is installed (it is not a dependency).
"""
from __future__ import annotations

import dataclasses

import ipaddress
from dataclasses import dataclass
from typing import Iterable

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._jit import pjit
from .cluster.model import Cluster, EndpointSlice
from .codes import PENDING
from .errors import FastpathError
from .tables.balancers import BALANCERS
from .tables.exact import ExactTable
from .tables.services import ServiceMap, ServiceStage, compile_services


@dataclass(frozen=True)
class BackendLoad:
    """Flows (and bytes) per backend: one row per endpoint of every service port."""

    names: list[str]          #: service-port names, by id
    sp: np.ndarray            #: int32 service-port id of each row
    ip: np.ndarray            #: uint32 backend address
    port: np.ndarray          #: uint16 backend port
    flows: np.ndarray         #: int64 flows sent there
    bytes: np.ndarray | None  #: float64 bytes sent there (when weights were given)
    unmatched: int            #: flows with a service whose destination is none of its endpoints
    ready: np.ndarray | None = None   #: bool, the endpoint is Ready (None: treat all as Ready)
    pod: list[str | None] | None = None  #: pod (``namespace/name``) behind each row, None where not a pod

    def __repr__(self) -> str:
        ports = int(np.unique(self.sp).size) if self.sp.size else 0
        extra = f", {float(self.bytes.sum()):,.0f} bytes" if self.bytes is not None else ""
        return (f"BackendLoad({ports:,} service ports, {self.sp.shape[0]:,} backends, "
                f"{int(self.flows.sum()):,} flows{extra}, {self.unmatched:,} unmatched)")

    def counted(self) -> np.ndarray:
        """Rows that count as a service's backends: Ready endpoints, and any other that got flows.

        The one meaning of "backends" in fastpath: the replay summary's ``backends``
        column and :meth:`imbalance` both count these rows.
        """
        ready = np.ones(self.sp.shape[0], bool) if self.ready is None else self.ready
        return ready | (self.flows > 0)

    def to_arrow(self) -> pa.Table:
        """The rows as a table: service, backend (``IP:port``), pod, ready, flows[, bytes]."""
        from .addr import ips_to_strings

        backend = pc.binary_join_element_wise(ips_to_strings(self.ip), pa.array(self.port.astype(str)), ":")
        cols = {"service": pa.DictionaryArray.from_arrays(pa.array(self.sp, pa.int32()), pa.array(self.names)),
                "backend": backend}
        if self.pod is not None:
            cols["pod"] = pa.array(self.pod, pa.string())
        if self.ready is not None:
            cols["ready"] = pa.array(self.ready)
        cols["flows"] = pa.array(self.flows)
        if self.bytes is not None:
            cols["bytes"] = pa.array(self.bytes)
        return pa.table(cols)

    def imbalance(self, by: str = "flows") -> pa.Table:
        """Per service port with load: backends, total, max/mean and coefficient of variation.

        ``backends`` counts the port's Ready endpoints plus any other endpoint that
        got flows (:meth:`counted`, the replay summary's meaning); max/mean and CV
        are over those, so an idle Ready backend counts as a zero.
        """
        load = self.flows.astype(np.float64) if by == "flows" else self.bytes
        if load is None:
            raise FastpathError(f"imbalance by {by!r}: the load was computed without weights")
        rows = {"service": [], "backends": [], "total": [], "max_over_mean": [], "cv": []}
        keep = np.flatnonzero(self.counted())
        sp = self.sp[keep]
        bounds = np.flatnonzero(np.diff(sp)) + 1
        for seg in np.split(keep, bounds):
            if seg.size == 0 or load[seg].sum() == 0:
                continue
            mom, cv = imbalance(load[seg])
            rows["service"].append(self.names[int(self.sp[seg[0]])])
            rows["backends"].append(int(seg.size))
            rows["total"].append(float(load[seg].sum()))
            rows["max_over_mean"].append(mom)
            rows["cv"].append(cv)
        return pa.table(rows)


def imbalance(loads: np.ndarray) -> tuple[float, float]:
    """(max / mean, coefficient of variation = std / mean) of one service's backend loads.

    Both are NaN where there is no load at all; a perfect spread gives (1.0, 0.0).
    """
    x = np.asarray(loads, dtype=np.float64)
    if x.size == 0 or x.sum() == 0:
        return float("nan"), float("nan")
    mean = x.mean()
    return float(x.max() / mean), float(x.std() / mean)


@pjit
def _match_backends(ep_off, ep_ip, ep_port, sp, ip, port, out):
    """Endpoint index of each (sp, ip, port), by binary search in the sp's sorted endpoints; -1 if none."""
    for i in numba.prange(sp.shape[0]):
        s = sp[i]
        out[i] = -1
        if s < 0:
            continue
        lo = ep_off[s]
        hi = ep_off[s + 1]
        key = (np.uint64(ip[i]) << np.uint64(16)) | np.uint64(port[i])
        while lo < hi:
            mid = (lo + hi) // 2
            k = (np.uint64(ep_ip[mid]) << np.uint64(16)) | np.uint64(ep_port[mid])
            if k < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < ep_off[s + 1] and ep_ip[lo] == ip[i] and ep_port[lo] == port[i]:
            out[i] = lo


def _results_columns(results, smap: ServiceMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(service id, dnat_ip, dnat_port) from result arrays, a dict, or an Arrow results table."""
    if isinstance(results, (pa.Table, pa.RecordBatch)):
        for col in ("service", "dnat_ip", "dnat_port"):
            if col not in results.column_names:
                raise FastpathError(f"results table: column {col!r} missing (have {', '.join(results.column_names)})")
        svc = results.column("service")
        if pa.types.is_dictionary(svc.type):
            svc = svc.cast(pa.string())
        if not pa.types.is_integer(svc.type):
            idx = pc.index_in(svc, value_set=pa.array(smap.names, pa.string()))
            sp = np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int32)
        else:
            sp = np.asarray(svc.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int32)
        # null dnat (an unresolved flow: no answer) is no backend; it has no service either
        ip = np.asarray(results.column("dnat_ip").fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint32)
        port = np.asarray(results.column("dnat_port").fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint16)
        return sp, ip, port

    def get(name):
        v = results.get(name) if isinstance(results, dict) else getattr(results, name, None)
        if v is None:
            raise FastpathError(f"results: {name!r} missing")
        return v

    return (np.ascontiguousarray(get("service"), dtype=np.int32),
            np.ascontiguousarray(get("dnat_ip"), dtype=np.uint32),
            np.ascontiguousarray(get("dnat_port"), dtype=np.uint16))


def backend_load(results, smap: ServiceMap, weights: np.ndarray | None = None) -> BackendLoad:
    """Flows (and bytes) each backend of each service port received.

    Parameters
    ----------
    results
        Result arrays (an object or dict with ``service``, ``dnat_ip``,
        ``dnat_port``) or an Arrow results table/batch (``service`` names).
    smap
        The service map the results came from.
    weights
        Optional bytes per flow (e.g. the trace's ``bytes`` column).

    Returns
    -------
    BackendLoad
        One row per endpoint of every service port, including those that got
        nothing. Flows rejected or dropped at the service stage kept their
        frontend as destination, so they count for no backend.
    """
    sp, ip, port = _results_columns(results, smap)
    if not (sp.shape[0] == ip.shape[0] == port.shape[0]):
        raise FastpathError("results: service, dnat_ip and dnat_port must have the same length")
    ep = np.empty(sp.shape[0], dtype=np.int64)
    _match_backends(smap.ep_off, smap.ep_ip, smap.ep_port, sp, ip, port, ep)
    hit = ep >= 0
    n_ep = smap.ep_ip.shape[0]
    flows = np.bincount(ep[hit], minlength=n_ep).astype(np.int64)
    total_bytes = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape[0] != sp.shape[0]:
            raise FastpathError(f"weights: {w.shape[0]} rows for {sp.shape[0]} results")
        total_bytes = np.bincount(ep[hit], weights=w[hit], minlength=n_ep)
    ep_sp = np.repeat(np.arange(len(smap.names), dtype=np.int32), np.diff(smap.ep_off))
    unmatched = int(np.count_nonzero((sp >= 0) & ~hit & _dnat_changed(sp, ip, port, smap)))
    pod = [smap.pod_names[int(i)] if i >= 0 else None for i in smap.ep_pod.tolist()]
    return BackendLoad(list(smap.names), ep_sp, smap.ep_ip.copy(), smap.ep_port.copy(), flows, total_bytes,
                       unmatched, smap.ep_ready.astype(bool), pod)


def _dnat_changed(sp, ip, port, smap: ServiceMap) -> np.ndarray:
    """Rows whose destination is not a frontend (a rejected or dropped flow keeps its frontend)."""
    proto = smap.sp_proto[np.maximum(sp, 0)]
    return smap.frontend_lookup(ip, proto, port) < 0


# --------------------------------------------------------------------------- churn

def _address(value) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return int(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise FastpathError(f"churn: remove={value!r} is not an IPv4 endpoint address") from None


def _addresses(cluster: Cluster, remove: Iterable) -> set[int]:
    """Endpoint addresses to remove: IPs (text or integer) or pods named ``namespace/name``."""
    pods: dict | None = None
    out = set()
    for r in remove:
        if isinstance(r, str) and "/" in r:
            pods = pods if pods is not None else {p.key: p for p in cluster.pods}
            pod = pods.get(r)
            if pod is None or pod.ip is None:
                raise FastpathError(f"churn: remove={r!r}: " + ("no such pod" if pod is None else "the pod has no IP"))
            out.add(pod.ip)
        else:
            out.add(_address(r))
    return out


def without_endpoints(cluster: Cluster, remove: Iterable) -> Cluster:
    """``cluster`` with every endpoint whose address is in ``remove`` taken out of its slices.

    ``remove`` holds addresses (text or integer) or pods (``namespace/name``).
    """
    from .cluster.endpoints import endpoints_for

    gone = _addresses(cluster, remove)
    slices = []
    for sl in endpoints_for(cluster):
        eps = tuple(e for e in sl.endpoints if not (e.addresses and e.addresses[0] in gone))
        slices.append(sl if len(eps) == len(sl.endpoints) else
                      EndpointSlice(sl.namespace, sl.name, sl.service, sl.ports, eps))
    # replace() keeps every other field (namespaces, missing nodes, masquerade, policies, ...)
    return dataclasses.replace(cluster, slices=slices, warnings=list(cluster.warnings))


def _flow_columns(flows) -> dict:
    names = ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "ts")
    dtypes = (np.uint32, np.uint32, np.uint16, np.uint16, np.uint8, np.int64)
    out = {}
    for name, dt in zip(names, dtypes):
        if isinstance(flows, (pa.Table, pa.RecordBatch)):
            col = flows.column(name) if name in flows.column_names else None
            if col is not None and pa.types.is_timestamp(col.type):
                col = col.cast(pa.int64())
            # a null dst_ip (a row given by dst_name) is no address: 0, which no frontend has
            v = col.fill_null(0).to_numpy(zero_copy_only=False) if col is not None else None
        elif isinstance(flows, dict):
            v = flows.get(name)
        else:
            v = getattr(flows, name, None)
        if v is None and name != "ts":
            raise FastpathError(f"churn: flows lack column {name!r}")
        out[name] = None if v is None else np.ascontiguousarray(v, dtype=dt)
    return out


def client_nodes(cluster: Cluster, src_ip: np.ndarray) -> np.ndarray:
    """Node of each client as the pipeline classifies it: a pod's node, a node's own address, else -1."""
    index = {n.name: i for i, n in enumerate(cluster.nodes)}
    keys, vals = [], []
    for i, n in enumerate(cluster.nodes):
        for a in (n.internal_ip, n.external_ip):
            if a is not None:
                keys.append(a)
                vals.append(i)
    for p in cluster.pods:
        if p.ip is not None and p.node in index and not p.host_network:
            keys.append(p.ip)
            vals.append(index[p.node])
    table = ExactTable.build(np.array(keys, np.uint64), np.array(vals, np.int64))
    return table.lookup(np.asarray(src_ip, dtype=np.uint64)).astype(np.int32)


def _backends(smap: ServiceMap, cols: dict, src_node: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(backend key ip << 16 | port, chosen, service-port id) per flow after one fresh stage."""
    n = cols["src_ip"].shape[0]
    verdict = np.full(n, PENDING, np.uint8)
    service = np.full(n, -1, np.int32)
    dip, dport = cols["dst_ip"].copy(), cols["dst_port"].copy()
    ServiceStage(smap).run(cols["src_ip"], cols["dst_ip"], cols["src_port"], cols["dst_port"], cols["proto"],
                           cols["ts"], np.full(n, -1, np.int32), src_node.copy(), verdict, service, dip, dport,
                           cols["src_ip"].copy())
    chosen = (service >= 0) & (verdict == PENDING)
    return (dip.astype(np.uint64) << np.uint64(16)) | dport.astype(np.uint64), chosen, service


def churn(cluster: Cluster, flows, remove, lb: str | Iterable[str] = BALANCERS, *, seed: int = 0,
          maglev_size: int = 16381, conn_duration: float = 30.0) -> dict[str, float]:
    """Share of flows whose backend changes when endpoints are removed, per balancer.

    Parameters
    ----------
    cluster
        The cluster before the change.
    flows
        Flow columns (dict, object or Arrow table): ``src_ip``, ``dst_ip``,
        ``src_port``, ``dst_port``, ``proto`` and optionally ``ts``. Clients
        are classified as the pipeline does (pod, node address, external).
    remove
        An endpoint address (text or integer) or several: every endpoint with
        that address leaves every slice.
    lb
        Balancer name or names to compare (all five by default).

    Returns
    -------
    dict
        Balancer -> moved flows / flows that had a backend both before and
        after (flows that were on a removed endpoint count as moved). Stateful
        balancers replay the flows from a fresh state each time.
    """
    remove, lbs, cols, src_node, after_cluster = _churn_inputs(cluster, flows, remove, lb)
    out: dict[str, float] = {}
    for name in lbs:
        kw = dict(lb=name, seed=seed, maglev_size=maglev_size, conn_duration=conn_duration)
        b0, ok0, _ = _backends(compile_services(cluster, **kw), cols, src_node)
        b1, ok1, _ = _backends(compile_services(after_cluster, **kw), cols, src_node)
        both = ok0 & ok1
        out[name] = float((b0[both] != b1[both]).mean()) if both.any() else float("nan")
    return out


def _churn_inputs(cluster: Cluster, flows, remove, lb):
    """What :func:`churn` and :func:`churn_by_service` both start from: the endpoints to
    remove as a list, the balancers, the flow columns, each flow's client node, and the
    cluster without those endpoints."""
    if isinstance(remove, (str, int, np.integer)):
        remove = [remove]
    remove = list(remove)
    lbs = [lb] if isinstance(lb, str) else list(lb)
    cols = _flow_columns(flows)
    return remove, lbs, cols, client_nodes(cluster, cols["src_ip"]), without_endpoints(cluster, remove)


def churn_by_service(cluster: Cluster, flows, remove, lb: str | Iterable[str] = BALANCERS, *, seed: int = 0,
                     maglev_size: int = 16381, conn_duration: float = 30.0) -> pa.Table:
    """:func:`churn` per service port: which services moved flows, and which pods left them.

    Same arguments as :func:`churn` (``remove`` may name pods, ``namespace/name``).

    Returns
    -------
    pyarrow.Table
        One row per balancer and service port that had flows with a backend both
        before and after: ``lb``, ``service``, ``flows`` (those flows), ``moved``,
        ``share`` (moved / flows), ``backends_before``, ``backends_after`` (Ready
        endpoints) and ``removed`` (the pods taken out of that service, by name).
    """
    remove, lbs, cols, src_node, after_cluster = _churn_inputs(cluster, flows, remove, lb)
    gone = _addresses(cluster, remove)
    rows: dict[str, list] = {k: [] for k in ("lb", "service", "flows", "moved", "share", "backends_before",
                                             "backends_after", "removed")}
    for name in lbs:
        kw = dict(lb=name, seed=seed, maglev_size=maglev_size, conn_duration=conn_duration)
        before, after = compile_services(cluster, **kw), compile_services(after_cluster, **kw)
        b0, ok0, sp = _backends(before, cols, src_node)
        b1, ok1, _ = _backends(after, cols, src_node)
        both = ok0 & ok1
        n_sp = len(before.names)
        total = np.bincount(sp[both], minlength=n_sp)
        moved = np.bincount(sp[both & (b0 != b1)], minlength=n_sp)
        for s in np.flatnonzero(total):
            lo, hi = int(before.ep_off[s]), int(before.ep_off[s + 1])
            left = [before.pod_names[int(before.ep_pod[e])] if before.ep_pod[e] >= 0 else before.backend_text(e)
                    for e in range(lo, hi) if int(before.ep_ip[e]) in gone]
            a_lo, a_hi = int(after.ep_off[s]), int(after.ep_off[s + 1])
            rows["lb"].append(name)
            rows["service"].append(before.names[s])
            rows["flows"].append(int(total[s]))
            rows["moved"].append(int(moved[s]))
            rows["share"].append(float(moved[s] / total[s]))
            rows["backends_before"].append(int(before.ep_ready[lo:hi].sum()))
            rows["backends_after"].append(int(after.ep_ready[a_lo:a_hi].sum()))
            rows["removed"].append(", ".join(left))
    return pa.table({"lb": pa.array(rows["lb"], pa.string()), "service": pa.array(rows["service"], pa.string()),
                     "flows": pa.array(rows["flows"], pa.int64()), "moved": pa.array(rows["moved"], pa.int64()),
                     "share": pa.array(rows["share"], pa.float64()),
                     "backends_before": pa.array(rows["backends_before"], pa.int64()),
                     "backends_after": pa.array(rows["backends_after"], pa.int64()),
                     "removed": pa.array(rows["removed"], pa.string())})


# --------------------------------------------------------------------------- plots

def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise FastpathError("plotting needs matplotlib, which fastpath does not install: pip install matplotlib") \
            from None
    return plt


def plot_backend_load(load: BackendLoad, service: str | None = None, ax=None):
    """Bar chart of flows per backend of one service port (the busiest if not named)."""
    plt = _pyplot()
    if service is None:
        totals = np.bincount(load.sp, weights=load.flows, minlength=len(load.names))
        sp = int(np.argmax(totals))
    elif service in load.names:
        sp = load.names.index(service)
    else:
        raise FastpathError(f"plot: no service port {service!r}")
    rows = np.flatnonzero(load.sp == sp)
    if ax is None:
        _, ax = plt.subplots()
    labels = [f"{ipaddress.IPv4Address(int(load.ip[r]))}:{int(load.port[r])}" for r in rows]
    ax.bar(range(rows.size), load.flows[rows])
    ax.set_xticks(range(rows.size), labels, rotation=90)
    ax.set_ylabel("flows")
    ax.set_title(load.names[sp])
    return ax


def plot_churn(result: dict[str, float], ax=None):
    """Bar chart of :func:`churn`'s moved share per balancer."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots()
    ax.bar(list(result), [result[k] for k in result])
    ax.set_ylabel("share of flows that changed backend")
    return ax
