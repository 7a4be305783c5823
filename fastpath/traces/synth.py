"""Synthetic traces: a workload model over a cluster, written as an Arrow IPC file.

:class:`TraceMix` is the model, knob by knob. Each flow is first given a
*kind* (east-west, north-south, localhost, by DNS name, egress, from a host,
to nothing) by the kinds' shares, then drawn within its kind: clients are
spread evenly over the pods, services are chosen by a Zipf-like popularity
(the service of rank ``r`` has weight ``1 / r**zipf``, ranks shuffled by the
seed), arrivals are Poisson, sizes lognormal with a Pareto tail of elephants.

Generation is vectorized numpy, block by block (:data:`BLOCK` rows, each
block with its own random stream derived from the seed), so the rows depend
on ``seed``, ``flows``, the mix and the cluster only, never on the batch size
or the number of threads.
"""
from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pac

from .._jit import jit
from ..addr import int_to_ip, ips_to_strings
from ..cluster.model import Cluster
from ..errors import FastpathError
from ..outputs import output_format
from .schema import CANONICAL_TYPES

#: Rows drawn from one random stream; the unit that makes rows independent of batch size.
BLOCK = 1 << 16
#: Ephemeral source ports (Linux ``ip_local_port_range``).
EPHEMERAL_PORTS = (32768, 60999)
#: 127.0.0.1, where localhost flows go.
LOCALHOST = 0x7F000001
#: Internet addresses (clients and servers) are drawn from 11.0.0.0 - 99.255.255.255,
#: public space clear of the private ranges clusters use.
INTERNET_RANGE = (0x0B000000, 0x64000000)
#: How many internet servers egress flows go to (popularity Zipf-like too).
EGRESS_SERVERS = 4096
#: Egress destination ports and their shares: HTTPS, HTTP, DNS over UDP.
EGRESS_PORTS = ((443, 6, 0.80), (80, 6, 0.15), (53, 17, 0.05))
#: Shares of the ways a service is named in a ``dst_name``: ``web`` (only from a pod of
#: the service's namespace), ``web.shop``, ``web.shop.svc``, ``web.shop.svc.<domain>``.
NAME_FORMS = (0.4, 0.3, 0.1, 0.2)
#: Share of resolvable names that are pod records (``10-244-1-7.shop.pod.<domain>``).
POD_RECORD_SHARE = 0.1
#: Bytes per full packet when deriving packets from bytes (a TCP segment at MTU 1500).
MSS = 1448
#: Schema metadata key holding how the trace was made.
METADATA_KEY = b"fastpath.synth"


@dataclass(frozen=True)
class TraceMix:
    """The workload model of :func:`synth_trace`; each knob is a keyword argument there.

    The seven ``kind`` shares are relative weights, normalized to sum to 1
    over the kinds the cluster can produce (no NodePort, LoadBalancer or
    external-IP service: no north-south flows, and so on). The defaults sum
    to 1, so each reads as a fraction of the trace.
    """

    east_west: float = 0.50      #: kind: pod -> ClusterIP service, or pod -> pod port
    north_south: float = 0.10    #: kind: internet client -> NodePort / load-balancer IP / external IP
    localhost: float = 0.04      #: kind: pod -> 127.0.0.1 on a port
    by_name: float = 0.10        #: kind: pod -> ``dst_name`` (``dst_ip`` null), dictionary-encoded
    egress: float = 0.10         #: kind: pod -> internet server (443, 80, 53/udp)
    host: float = 0.06           #: kind: node / hostNetwork source -> ClusterIP service or pod port
    to_nothing: float = 0.10     #: kind: pod -> pod-CIDR address with no pod, closed pod port, ClusterIP on a port it does not serve
    via_service: float = 0.8     #: of east-west and host flows: share to a ClusterIP (rest straight to a pod port)
    localhost_listening: float = 0.75  #: of localhost flows: share to a port the pod declares
    missing_names: float = 0.10  #: of by-name flows: share of names that do not exist
    zipf: float = 1.1            #: service popularity exponent (0: all equally popular)
    rate: float = 100_000.0      #: mean arrivals per second (Poisson)
    start_ns: int = 1_700_000_000_000_000_000  #: ``ts`` of time zero (2023-11-14T22:13:20Z)
    ts_type: str = "timestamp"   #: ``ts`` column type: ``timestamp`` (timestamp[ns]) or ``int64``
    bytes_median: float = 2_000.0  #: median flow size in bytes (lognormal body)
    bytes_sigma: float = 1.5     #: lognormal sigma of flow sizes
    elephants: float = 0.02      #: share of flows drawn from the Pareto tail instead
    elephant_alpha: float = 1.2  #: Pareto shape of the tail (smaller: heavier)
    elephant_min: float = 1e6    #: smallest elephant, bytes
    #: write a ``duration`` column (seconds each connection lives; see :func:`_durations`):
    #: heavy-tailed TCP lifetimes, one-shot DNS-like UDP, and a share of long-lived streams
    duration_mix: bool = False
    long_lived: float = 0.02     #: with ``duration_mix``: share of flows that are long-lived streams

    KINDS = ("east_west", "north_south", "localhost", "by_name", "egress", "host", "to_nothing")

    @classmethod
    def from_knobs(cls, **knobs: Any) -> "TraceMix":
        """Build from keyword knobs; unknown or out-of-range knobs raise :class:`FastpathError`."""
        names = [f.name for f in fields(cls)]
        for k in knobs:
            if k not in names:
                raise FastpathError(f"unknown trace mix knob {k!r}; knobs are: {', '.join(names)}")
        mix = cls(**knobs)
        for k in cls.KINDS + ("bytes_sigma", "elephant_min", "zipf"):
            if not (float(getattr(mix, k)) >= 0):
                raise FastpathError(f"trace mix knob {k}={getattr(mix, k)!r} must be >= 0")
        for k in ("via_service", "localhost_listening", "missing_names", "elephants", "long_lived"):
            if not 0 <= float(getattr(mix, k)) <= 1:
                raise FastpathError(f"trace mix knob {k}={getattr(mix, k)!r} must be a share in 0..1")
        for k in ("rate", "bytes_median", "elephant_alpha"):
            if not float(getattr(mix, k)) > 0:
                raise FastpathError(f"trace mix knob {k}={getattr(mix, k)!r} must be > 0")
        if mix.ts_type not in ("timestamp", "int64"):
            raise FastpathError(f"trace mix knob ts_type={mix.ts_type!r} must be 'timestamp' or 'int64'")
        if int(mix.start_ns) < 0:
            raise FastpathError(f"trace mix knob start_ns={mix.start_ns!r} must be >= 0")
        return mix


# --------------------------------------------------------------------------- sampling

class _Choice:
    """Draw indices ``0..K-1`` with given weights in O(1) each (Vose's alias method)."""

    def __init__(self, weights: np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        self.k = k = w.shape[0]
        self.prob = np.ones(k, dtype=np.float64)
        self.alias = np.arange(k, dtype=np.int64)
        if k == 0 or w.sum() <= 0:
            self.k = 0
            return
        scaled = w * (k / w.sum())
        _vose(scaled, self.prob, self.alias)   # compiled: millions of NodePort frontends at 5,000 nodes

    def draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        u = rng.random(m) * self.k
        i = u.astype(np.int64)
        np.minimum(i, self.k - 1, out=i)
        return np.where(u - i < self.prob[i], i, self.alias[i])


@jit
def _vose(scaled, prob, alias):
    """Vose's alias tables, in place: the small and large worklists as stacks (last in, first out)."""
    k = scaled.shape[0]
    small = np.empty(k, np.int64)
    large = np.empty(k, np.int64)
    ns = 0
    nl = 0
    for i in range(k):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        elif scaled[i] >= 1.0:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        g = large[nl]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            small[ns] = g
            ns += 1
        else:
            large[nl] = g
            nl += 1


def _pick(rng: np.random.Generator, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """For each row, a uniform index in ``start .. start+count-1`` (count > 0)."""
    return start + (rng.random(start.shape[0]) * count).astype(np.int64)


def _in_sorted(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    if keys.shape[0] == 0:
        return np.zeros(values.shape[0], dtype=np.bool_)
    pos = np.minimum(np.searchsorted(keys, values), keys.shape[0] - 1)
    return keys[pos] == values


def _redraw(draw, bad, values: np.ndarray, tries: int = 8) -> np.ndarray:
    """Redraw the values ``bad(values)`` flags, a few times (rare collisions)."""
    for _ in range(tries):
        miss = np.flatnonzero(bad(values))
        if miss.size == 0:
            break
        values[miss] = draw(miss.size)
    return values


# --------------------------------------------------------------------------- the cluster's pools

class _Pools:
    """Everything flows are drawn from, as flat arrays, built once from the cluster."""

    def __init__(self, cluster: Cluster, mix: TraceMix, rng: np.random.Generator) -> None:
        domain = cluster.domain
        node_by_name = {n.name: n for n in cluster.nodes}
        clients = [p for p in cluster.pods if p.ip is not None and p.node is not None and not p.host_network]
        self.cli_ip = np.array([p.ip for p in clients], dtype=np.uint32)
        namespaces = sorted({p.namespace for p in clients})
        ns_id = {ns: i for i, ns in enumerate(namespaces)}
        # Clients of each namespace (CSR), for short names that only resolve there.
        cli_ns = np.array([ns_id[p.namespace] for p in clients], dtype=np.int64)
        self.ns_members = np.argsort(cli_ns, kind="stable")
        self.ns_count = np.bincount(cli_ns, minlength=len(namespaces)).astype(np.int64)
        self.ns_start = np.concatenate([[0], np.cumsum(self.ns_count)[:-1]]).astype(np.int64)
        # Each client's declared ports (CSR), for localhost flows.
        self.cli_pcount = np.array([len(p.ports) for p in clients], dtype=np.int64)
        self.cli_pstart = np.concatenate([[0], np.cumsum(self.cli_pcount)[:-1]]).astype(np.int64)
        self.cli_port = np.array([c.port for p in clients for c in p.ports], dtype=np.uint16)
        self.cli_proto = np.array([c.proto for p in clients for c in p.ports], dtype=np.uint8)
        # Pod ports anyone can connect to straight (pod -> pod), and what listens.
        self.pp_ip = np.repeat(self.cli_ip, self.cli_pcount)
        self.pp_port, self.pp_proto = self.cli_port, self.cli_proto
        self.listen_keys = np.unique((self.pp_ip.astype(np.int64) << 16) | self.pp_port)
        self.pod_ips = np.unique(np.array([p.ip for p in cluster.pods if p.ip is not None], dtype=np.int64))
        self.host_ip = np.array([n.internal_ip for n in cluster.nodes if n.internal_ip is not None], dtype=np.uint32)
        cidrs = [c for n in cluster.nodes for c in n.pod_cidrs if c[1] <= 30]
        self.cidr_net = np.array([c[0] for c in cidrs], dtype=np.int64)
        self.cidr_size = np.array([1 << (32 - c[1]) for c in cidrs], dtype=np.int64)

        # Service popularity: Zipf over ranks shuffled by the seed.
        services = [s for s in cluster.services if s.type != "ExternalName" and s.ports]
        rank = rng.permutation(len(services)) + 1
        svc_w = 1.0 / rank.astype(np.float64) ** float(mix.zipf)
        ci = []
        # north-south frontends: a service's external and LB IPs on each port, then each NodePort on
        # every node address (InternalIP, ExternalIP): at 5,000 nodes millions of rows, made as
        # array segments (one per NodePort), never a tuple each
        node_addr = np.array([ip for node in node_by_name.values() for ip in (node.internal_ip, node.external_ip)
                              if ip is not None], dtype=np.uint32)
        seg_ip, seg_port, seg_proto, seg_w = [], [], [], []
        for s, w in zip(services, svc_w):
            for sp in s.ports:
                for ip in s.cluster_ips:
                    ci.append((ip, sp.port, sp.proto, w / (len(s.ports) * len(s.cluster_ips))))
            outside = [(ip, sp.port, sp.proto) for sp in s.ports for ip in s.external_ips + s.lb_ips]
            node_ports = [(sp.node_port, sp.proto) for sp in s.ports if sp.node_port] \
                if s.type in ("NodePort", "LoadBalancer") else []
            total = len(outside) + len(node_ports) * node_addr.size
            if not total:
                continue
            share = w / total
            if outside:
                ip, port, proto = zip(*outside)
                seg_ip.append(np.array(ip, dtype=np.uint32))
                seg_port.append(np.array(port, dtype=np.uint16))
                seg_proto.append(np.array(proto, dtype=np.uint8))
                seg_w.append(np.full(len(outside), share))
            for port, proto in node_ports:
                seg_ip.append(node_addr)
                seg_port.append(np.full(node_addr.size, port, dtype=np.uint16))
                seg_proto.append(np.full(node_addr.size, proto, dtype=np.uint8))
                seg_w.append(np.full(node_addr.size, share))
        self.ci_ip, self.ci_port, self.ci_proto, self.ci = self._frontends(ci)
        if seg_ip:
            self.ns_ip, self.ns_port, self.ns_proto = (np.concatenate(seg_ip), np.concatenate(seg_port),
                                                       np.concatenate(seg_proto))
            self.ns = _Choice(np.concatenate(seg_w))
        else:
            self.ns_ip, self.ns_port, self.ns_proto, self.ns = self._frontends([])
        self.ci_keys = np.unique((self.ci_ip.astype(np.int64) << 16) | self.ci_port)
        self.ci_addrs = np.unique(self.ci_ip)

        # DNS names: every service by its four forms, pod records, and names that do not exist.
        codes: dict[str, int] = {}  # each distinct name once in the dictionary
        code = lambda name: codes.setdefault(name, len(codes))  # noqa: E731
        entries = []  # (name code, port, proto, namespace id or -1, weight)
        for s, w in zip(services, svc_w):
            forms = [s.name, f"{s.name}.{s.namespace}", f"{s.name}.{s.namespace}.svc",
                     f"{s.name}.{s.namespace}.svc.{domain}"]
            shares = list(NAME_FORMS)
            nsid = ns_id.get(s.namespace, -1)
            if nsid < 0:  # no client in the namespace: the short form could never resolve
                shares[1] += shares[0]
                shares[0] = 0.0
            for form, share in zip(forms, shares):
                if share:
                    for sp in s.ports:
                        entries.append((code(form), sp.port, sp.proto, nsid if form == s.name else -1,
                                        (1 - POD_RECORD_SHARE) * w * share / len(s.ports)))
        pod_entries = None
        if len(self.pp_ip):
            pod_share = POD_RECORD_SHARE * (svc_w.sum() if len(services) else 1.0) / len(self.pp_ip)
            pod_ns = {p.ip: p.namespace for p in clients}
            # one record name per pod address, named in order of first appearance (as row by row)
            uniq, first, inverse = np.unique(self.pp_ip, return_index=True, return_inverse=True)
            rec_code = np.empty(uniq.size, dtype=np.int64)
            in_order = np.argsort(first, kind="stable")
            dashed = pac.replace_substring(ips_to_strings(uniq[in_order]), ".", "-").to_pylist()
            for j, ip, text in zip(in_order.tolist(), uniq[in_order].tolist(), dashed):
                rec_code[j] = code(f"{text}.{pod_ns[ip]}.pod.{domain}")
            pod_entries = (rec_code[inverse.reshape(-1)], self.pp_port, self.pp_proto,
                           np.full(self.pp_ip.size, pod_share))
        some_ns = (namespaces or ["default"])[:4]
        missing = [f"nosuch-{i}.{ns}.svc.{domain}" for ns in some_ns for i in range(4)]
        missing += [f"nosuch-{i}" for i in range(4)] + [f"{s.name}.nosuch-ns" for s in services[:8]]
        missing = list(dict.fromkeys(m for m in missing if m not in codes))
        self.missing_codes = np.array([code(m) for m in missing], dtype=np.int32)
        self.names = list(codes)
        arr = np.array([e[:4] for e in entries], dtype=np.int64).reshape(-1, 4)
        weights = np.array([e[4] for e in entries], dtype=np.float64)
        if pod_entries is not None:
            pc, pp, pq, pw = pod_entries
            arr = np.concatenate([arr, np.stack([pc, pp.astype(np.int64), pq.astype(np.int64),
                                                 np.full(pc.size, -1, np.int64)], axis=1)])
            weights = np.concatenate([weights, pw])
        self.nm_code, self.nm_port = arr[:, 0].astype(np.int32), arr[:, 1].astype(np.uint16)
        self.nm_proto, self.nm_ns = arr[:, 2].astype(np.uint8), arr[:, 3]
        self.nm = _Choice(weights)

        # Internet servers for egress, popular ones first.
        lo, hi = INTERNET_RANGE
        self.egress_ip = rng.integers(lo, hi, EGRESS_SERVERS, dtype=np.int64).astype(np.uint32)
        self.egress = _Choice(1.0 / np.arange(1, EGRESS_SERVERS + 1, dtype=np.float64))

    @staticmethod
    def _frontends(rows):
        if not rows:
            return (np.zeros(0, np.uint32), np.zeros(0, np.uint16), np.zeros(0, np.uint8), _Choice(np.zeros(0)))
        ip, port, proto, w = zip(*rows)
        return (np.array(ip, dtype=np.uint32), np.array(port, dtype=np.uint16), np.array(proto, dtype=np.uint8),
                _Choice(np.array(w, dtype=np.float64)))

    def kind_weights(self, mix: TraceMix) -> np.ndarray:
        """The kinds' shares, zero for the kinds this cluster cannot produce, normalized."""
        pods, ports = len(self.cli_ip) > 0, len(self.pp_ip) > 0
        can = {
            "east_west": pods and (self.ci.k > 0 or ports),
            "north_south": self.ns.k > 0,
            "localhost": pods,
            "by_name": pods,
            "egress": pods,
            "host": len(self.host_ip) > 0 and (self.ci.k > 0 or ports),
            "to_nothing": pods and (len(self.cidr_net) > 0 or ports or self.ci.k > 0),
        }
        w = np.array([float(getattr(mix, k)) if can[k] else 0.0 for k in TraceMix.KINDS])
        if w.sum() <= 0:
            raise FastpathError("the cluster has no pods or services to make flows between "
                                "(or every kind share of the trace mix is 0)")
        return w / w.sum()


# --------------------------------------------------------------------------- kinds

def _service_or_pod(pools: _Pools, rng, m: int, via_service: float):
    """Destinations of east-west and host flows: a ClusterIP by popularity, or a pod port."""
    dst = np.empty(m, np.uint32)
    port = np.empty(m, np.uint16)
    proto = np.empty(m, np.uint8)
    share = via_service if len(pools.pp_ip) else 1.0
    share = share if pools.ci.k else 0.0
    svc = rng.random(m) < share
    i = np.flatnonzero(svc)
    f = pools.ci.draw(rng, i.size) if i.size else np.zeros(0, np.int64)
    dst[i], port[i], proto[i] = pools.ci_ip[f], pools.ci_port[f], pools.ci_proto[f]
    j = np.flatnonzero(~svc)
    p = rng.integers(0, len(pools.pp_ip), j.size) if j.size else np.zeros(0, np.int64)
    dst[j], port[j], proto[j] = pools.pp_ip[p], pools.pp_port[p], pools.pp_proto[p]
    return dst, port, proto


def _clients(pools: _Pools, rng, m: int) -> np.ndarray:
    return rng.integers(0, len(pools.cli_ip), m)


def _east_west(pools, mix, rng, m):
    src = pools.cli_ip[_clients(pools, rng, m)]
    return (src, *_service_or_pod(pools, rng, m, mix.via_service), None)


def _host(pools, mix, rng, m):
    src = pools.host_ip[rng.integers(0, len(pools.host_ip), m)]
    return (src, *_service_or_pod(pools, rng, m, mix.via_service), None)


def _north_south(pools, mix, rng, m):
    src = rng.integers(*INTERNET_RANGE, m, dtype=np.int64).astype(np.uint32)
    f = pools.ns.draw(rng, m)
    return src, pools.ns_ip[f], pools.ns_port[f], pools.ns_proto[f], None


def _localhost(pools, mix, rng, m):
    c = _clients(pools, rng, m)
    port = rng.integers(1024, 65536, m).astype(np.uint16)
    proto = np.full(m, 6, np.uint8)
    listen = (rng.random(m) < mix.localhost_listening) & (pools.cli_pcount[c] > 0)
    i = np.flatnonzero(listen)
    k = _pick(rng, pools.cli_pstart[c[i]], pools.cli_pcount[c[i]])
    port[i], proto[i] = pools.cli_port[k], pools.cli_proto[k]
    j = np.flatnonzero(~listen)
    ip_j = pools.cli_ip[c[j]].astype(np.int64) << 16
    port[j] = _redraw(lambda n: rng.integers(1024, 65536, n),
                      lambda v: _in_sorted(pools.listen_keys, ip_j | v), port[j].astype(np.int64))
    return pools.cli_ip[c], np.full(m, LOCALHOST, np.uint32), port, proto, None


def _by_name(pools, mix, rng, m):
    c = _clients(pools, rng, m)
    code = np.empty(m, np.int32)
    port = np.full(m, 80, np.uint16)
    proto = np.full(m, 6, np.uint8)
    missing = (rng.random(m) < mix.missing_names) | (pools.nm.k == 0)
    i = np.flatnonzero(~missing)
    e = pools.nm.draw(rng, i.size)
    code[i], port[i], proto[i] = pools.nm_code[e], pools.nm_port[e], pools.nm_proto[e]
    ns = pools.nm_ns[e]
    bound = np.flatnonzero(ns >= 0)  # short names: a client of the service's namespace
    if bound.size:
        nsb = ns[bound]
        c[i[bound]] = pools.ns_members[_pick(rng, pools.ns_start[nsb], pools.ns_count[nsb])]
    j = np.flatnonzero(missing)
    code[j] = pools.missing_codes[rng.integers(0, len(pools.missing_codes), j.size)]
    return pools.cli_ip[c], np.zeros(m, np.uint32), port, proto, code


def _egress(pools, mix, rng, m):
    src = pools.cli_ip[_clients(pools, rng, m)]
    dst = pools.egress_ip[pools.egress.draw(rng, m)]
    table = np.array([p for p, _, _ in EGRESS_PORTS]), np.array([q for _, q, _ in EGRESS_PORTS])
    k = np.searchsorted(np.cumsum([s for _, _, s in EGRESS_PORTS]), rng.random(m) * sum(s for *_, s in EGRESS_PORTS),
                        side="right")
    return src, dst, table[0][k].astype(np.uint16), table[1][k].astype(np.uint8), None


def _to_nothing(pools, mix, rng, m):
    src = pools.cli_ip[_clients(pools, rng, m)]
    dst = np.empty(m, np.uint32)
    port = rng.integers(1, 65536, m).astype(np.uint16)
    proto = np.full(m, 6, np.uint8)
    ways = np.array([len(pools.cidr_net) > 0, len(pools.pp_ip) > 0, pools.ci.k > 0], dtype=np.float64)
    way = np.searchsorted(np.cumsum(ways / ways.sum()), rng.random(m), side="right")
    # A pod-CIDR address no pod holds, on a common port.
    i = np.flatnonzero(way == 0)
    if i.size:
        cidr = rng.integers(0, len(pools.cidr_net), i.size)
        net, size = pools.cidr_net[cidr], pools.cidr_size[cidr]
        addr = net + 1 + (rng.random(i.size) * (size - 2)).astype(np.int64)
        for _ in range(8):
            hit = np.flatnonzero(_in_sorted(pools.pod_ips, addr))
            if hit.size == 0:
                break
            addr[hit] = net[hit] + 1 + (rng.random(hit.size) * (size[hit] - 2)).astype(np.int64)
        dst[i] = addr
        port[i] = 80
    # A pod's address on a port it does not declare (way 1); a ClusterIP on a port it does
    # not serve (way 2).
    for kind, addrs, taken in ((1, pools.pp_ip, pools.listen_keys), (2, pools.ci_addrs, pools.ci_keys)):
        j = np.flatnonzero(way == kind)
        if j.size:
            ip = addrs[rng.integers(0, len(addrs), j.size)]
            key = ip.astype(np.int64) << 16
            port[j] = _redraw(lambda n: rng.integers(1, 65536, n),
                              lambda v: _in_sorted(taken, key | v), port[j].astype(np.int64))
            dst[j] = ip
    return src, dst, port, proto, None


_KIND_FUNCS = (_east_west, _north_south, _localhost, _by_name, _egress, _host, _to_nothing)


# --------------------------------------------------------------------------- blocks and batches

def _block(pools: _Pools, mix: TraceMix, kinds: _Choice, seed: int, index: int, m: int) -> dict[str, np.ndarray]:
    """Rows of block ``index`` (``ts`` relative: gaps only, summed by the caller)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1, index))))
    src = np.empty(m, np.uint32)
    dst = np.empty(m, np.uint32)
    dport = np.empty(m, np.uint16)
    proto = np.empty(m, np.uint8)
    code = np.full(m, -1, np.int32)
    kind = kinds.draw(rng, m).astype(np.uint8)
    order = np.argsort(kind, kind="stable")  # rows grouped by kind, each group in row order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(kind, minlength=len(_KIND_FUNCS)))])
    for k, func in enumerate(_KIND_FUNCS):
        rows = order[bounds[k]:bounds[k + 1]]
        if rows.size:
            s, d, p, q, c = func(pools, mix, rng, rows.size)
            src[rows], dst[rows], dport[rows], proto[rows] = s, d, p, q
            if c is not None:
                code[rows] = c
    sport = rng.integers(EPHEMERAL_PORTS[0], EPHEMERAL_PORTS[1] + 1, m, dtype=np.int32).astype(np.uint16)
    gaps = (rng.standard_exponential(m, dtype=np.float32) * np.float32(1e9 / float(mix.rate))).astype(np.int64)
    z = rng.standard_normal(m, dtype=np.float32)
    size = np.exp(z.astype(np.float64) * float(mix.bytes_sigma) + np.log(float(mix.bytes_median)))
    big = np.flatnonzero(rng.random(m) < mix.elephants)
    size[big] = float(mix.elephant_min) * (1.0 + rng.pareto(float(mix.elephant_alpha), big.size))
    nbytes = np.clip(np.rint(size), 1, 2.0 ** 62).astype(np.uint64)
    packets = np.minimum((nbytes + np.uint64(MSS - 1)) // np.uint64(MSS), np.uint64(0xFFFFFFFF)).astype(np.uint32)
    cols = dict(src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, proto=proto,
                gaps=gaps, name_code=code, bytes=nbytes, packets=packets)
    if mix.duration_mix:
        cols["duration"] = _durations(mix, seed, index, proto)
    return cols


#: ``duration_mix``: TCP lifetimes are Pareto (shape TCP_ALPHA, scale TCP_SCALE seconds: median
#: about 0.04 s, mean 0.3 s, a heavy tail); UDP is one-shot (exponential, mean UDP_ONE_SHOT s,
#: a DNS query and its answer: never a conntrack stream); long-lived streams (gRPC, websockets,
#: video) last uniformly STREAM_RANGE seconds, whatever their protocol.
TCP_ALPHA, TCP_SCALE, UDP_ONE_SHOT, STREAM_RANGE = 1.2, 0.05, 0.005, (300.0, 3600.0)


def _durations(mix: TraceMix, seed: int, index: int, proto: np.ndarray) -> np.ndarray:
    """Seconds each row's connection lives (``duration_mix``), from a stream of its own:
    the other columns are the same with the mix on or off."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(2, index))))
    m = proto.shape[0]
    tcp = TCP_SCALE * (rng.pareto(TCP_ALPHA, m) + 1.0)
    udp = rng.standard_exponential(m) * UDP_ONE_SHOT
    out = np.where(proto == 17, udp, tcp)
    lo, hi = STREAM_RANGE
    stream = rng.random(m) < float(mix.long_lived)
    out[stream] = lo + rng.random(int(stream.sum())) * (hi - lo)
    return out


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _record_batch(cols: dict[str, np.ndarray], schema: pa.Schema, names: pa.Array) -> pa.RecordBatch:
    m = cols["src_ip"].shape[0]
    named = cols["name_code"] >= 0
    arrays = []
    for field in schema:
        name = field.name
        if name == "dst_ip":
            arr = pa.Array.from_buffers(pa.uint32(), m, [_validity(~named), pa.py_buffer(cols["dst_ip"])])
        elif name == "dst_name":
            idx = pa.Array.from_buffers(pa.int32(), m, [_validity(named), pa.py_buffer(cols["name_code"])])
            arr = pa.DictionaryArray.from_arrays(idx, names)
        elif name == "ts":
            arr = pa.Array.from_buffers(field.type, m, [None, pa.py_buffer(cols["ts"])])
        else:
            arr = pa.Array.from_buffers(field.type, m, [None, pa.py_buffer(np.ascontiguousarray(cols[name]))])
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _blocks(pools: _Pools, mix: TraceMix, seed: int, flows: int, threads: int) -> Iterator[dict]:
    """Blocks in order, drawn by ``threads`` threads (numpy releases the GIL in its loops)."""
    kinds = _Choice(pools.kind_weights(mix))
    count = -(-flows // BLOCK)

    def make(index: int) -> dict:
        return _block(pools, mix, kinds, seed, index, min(BLOCK, flows - index * BLOCK))

    if threads <= 1 or count <= 1:
        yield from map(make, range(count))
        return
    with ThreadPoolExecutor(threads) as pool:
        ahead: deque = deque()
        for index in range(count):
            ahead.append(pool.submit(make, index))
            if len(ahead) > 2 * threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def _batches(pools: _Pools, mix: TraceMix, seed: int, flows: int, batch_size: int,
             threads: int) -> Iterator[dict]:
    """Generated rows in batches of ``batch_size``, ``ts`` made absolute."""
    t = int(mix.start_ns)
    pending: list[dict] = []
    have = done = 0
    for cols in _blocks(pools, mix, seed, flows, threads):
        ts = np.cumsum(cols.pop("gaps"))
        ts += t
        t = int(ts[-1])
        cols["ts"] = ts
        pending.append(cols)
        have += ts.shape[0]
        done += ts.shape[0]
        while have >= batch_size or (have and done == flows):
            take = min(have, batch_size)
            joined = {k: np.concatenate([c[k] for c in pending]) if len(pending) > 1 else pending[0][k]
                      for k in pending[0]}
            yield {k: v[:take] for k, v in joined.items()}
            have -= take
            pending = [{k: v[take:] for k, v in joined.items()}] if have else []


def trace_schema(ts_type: str = "timestamp", metadata: dict | None = None, duration: bool = False) -> pa.Schema:
    """The schema of the traces fastpath writes (the canonical column types; ``duration`` only if asked)."""
    types = dict(CANONICAL_TYPES)
    if not duration:
        types.pop("duration", None)
    if ts_type == "int64":
        types["ts"] = pa.int64()
    return pa.schema(list(types.items()), metadata=metadata)


def synth_trace(cluster: Cluster, flows: int, *, seed: int = 0, out: str | os.PathLike,
                batch_size: int = 1 << 20, threads: int | None = None, compression: str | None = None,
                **mix: Any) -> int:
    """Write a synthetic trace of ``flows`` rows over ``cluster`` to an Arrow IPC file.

    Parameters
    ----------
    cluster
        The cluster whose pods, services and nodes the flows go between.
    flows
        Number of rows.
    seed
        Same seed, flows, mix and cluster: a byte-identical file.
    out
        The file to write, its format by extension: Arrow IPC (``.arrow``,
        ``.feather``) or Parquet (``.parquet``); any other ending is a
        :class:`FastpathError`. Written under a temporary name in the same
        folder, then renamed, so it is there whole or not at all.
    batch_size
        Rows per record batch in the file (does not change the rows).
    threads
        Threads drawing blocks (default: all cores); the rows do not depend on it.
    compression
        ``None`` (default: readers memory-map the columns, zero-copy), ``"zstd"``
        (about a third of the size; the bundled sample) or ``"lz4"``.
    **mix
        Knobs of :class:`TraceMix` (``east_west=0.6``, ``zipf=1.3``, ``rate=1e6``, ...).

    Returns
    -------
    int
        Rows written.
    """
    if isinstance(flows, bool) or not isinstance(flows, (int, np.integer)) or flows < 0:
        raise FastpathError(f"flows must be a non-negative integer, got {flows!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise FastpathError(f"batch size must be a positive integer, got {batch_size!r}")
    if compression not in (None, "zstd", "lz4"):
        raise FastpathError(f"compression must be None, 'zstd' or 'lz4', got {compression!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FastpathError(f"seed must be a non-negative integer, got {seed!r}")
    flows, batch_size, seed = int(flows), int(batch_size), int(seed)
    threads = (os.cpu_count() or 1) if threads is None else max(1, int(threads))
    knobs = TraceMix.from_knobs(**mix)
    pools = _Pools(cluster, knobs, np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,)))))
    about = {"seed": seed, "flows": flows, "cluster": cluster.summary(), "mix": asdict(knobs)}
    schema = trace_schema(knobs.ts_type, {METADATA_KEY: json.dumps(about, sort_keys=True)}, knobs.duration_mix)
    names = pa.array(pools.names, type=pa.string())
    if flows:  # fail on an empty cluster before creating anything
        pools.kind_weights(knobs)

    out = Path(out)
    if not out.parent.is_dir():
        raise FastpathError(f"{out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    parquet = output_format(out, "trace") == "parquet"      # the format follows the extension
    try:
        if parquet:
            import pyarrow.parquet as pq

            with pq.ParquetWriter(str(tmp), schema, compression=compression or "snappy") as writer:
                for cols in (_batches(pools, knobs, seed, flows, batch_size, threads) if flows else ()):
                    writer.write_batch(_record_batch(cols, schema, names))
        else:
            options = pa.ipc.IpcWriteOptions(compression=compression)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
                for cols in (_batches(pools, knobs, seed, flows, batch_size, threads) if flows else ()):
                    writer.write_batch(_record_batch(cols, schema, names))
        os.replace(tmp, out)
    except OSError as e:  # a full disk: name the user's path, not the temporary file
        tmp.unlink(missing_ok=True)
        from ..files import write_error

        raise write_error(out, "trace", e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return flows
