"""Synthetic traces: a workload model over a cluster, written as an Arrow IPC file.

:class:`TraceMix` is the model, knob by knob. Each flow is first given a
*kind* (east-west, north-south, localhost, by DNS name, egress, from a host,
to nothing) by the kinds' shares, then drawn within its kind: clients are
spread evenly over the pods, services are chosen by a Zipf-like popularity
(the service of rank ``r`` has weight ``1 / r**zipf``, ranks shuffled by the
seed), arrivals are Poisson, sizes lognormal with a Pareto tail of elephants.

The cluster becomes flat arrays once (:class:`_Pools`: clients, frontends, names,
alias tables for every weighted choice); then a compiled kernel
(:mod:`fastpath.traces.synth_kernel`) draws every row on its own from a
counter-based random stream keyed by the seed and the row's index, so the rows
depend on ``seed``, the mix and the cluster only, never on the batch size or the
number of threads, and batches are drawn in parallel while the previous one is
written.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pac

from .._jit import jit
from ..addr import ips_to_strings
from ..cluster.model import Cluster
from ..errors import FastpathError
from ..outputs import output_format
from ..tables.exact import AddressTable, ExactTable
from . import synth_kernel as K
from .schema import CANONICAL_TYPES

#: Internet addresses (clients and servers) are drawn from 11.0.0.0 - 99.255.255.255,
#: public space clear of the private ranges clusters use.
INTERNET_RANGE = (K.INTERNET_LO, K.INTERNET_HI)
#: How many internet servers egress flows go to (popularity Zipf-like too).
EGRESS_SERVERS = 4096
#: Egress destination ports and their shares: HTTPS, HTTP, DNS over UDP.
EGRESS_PORTS = ((443, 6, 0.80), (80, 6, 0.15), (53, 17, 0.05))
#: Shares of the ways a service is named in a ``dst_name``: ``web`` (only from a pod of
#: the service's namespace), ``web.shop``, ``web.shop.svc``, ``web.shop.svc.<domain>``.
NAME_FORMS = (0.4, 0.3, 0.1, 0.2)
#: Share of resolvable names that are pod records (``10-244-1-7.shop.pod.<domain>``).
POD_RECORD_SHARE = 0.1
#: Fill of the pools' exact-match sets: a little fuller than the data path's (a miss probes
#: about three slots of one cache line; the sets take half the memory, so more stays in cache).
SET_LOAD = 0.6

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
        # compiled for the long tables (hundreds of thousands of names at 5,000 nodes); the same
        # function as Python for a short one (the kinds), which then needs no compiled kernel loaded
        (_vose.py_func if k < 256 else _vose)(scaled, self.prob, self.alias)


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


# --------------------------------------------------------------------------- the cluster's pools

def _unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` by a sort (numpy 2's hashing ``unique`` is several times slower here)."""
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


class _Pools:
    """Everything flows are drawn from, as flat arrays, built once from the cluster.

    Built column-wise (:func:`~fastpath.cluster.columns.pod_columns`: one pass over the
    pods), so at 5,000 nodes / 150,000 pods / 10,000 services it takes a fraction of a
    second. Only arrays, scalars, :class:`_Choice` tables and the list of names: the
    compiled-table cache can keep it (:func:`_pools_of`, :func:`fastpath.cache.cached_object`).
    """

    def __init__(self, cluster: Cluster, mix: TraceMix, rng: np.random.Generator) -> None:
        from ..cluster.columns import pod_columns

        domain = cluster.domain
        self.summary = cluster.summary()          # for the trace's metadata
        cols = pod_columns(cluster.pods, cluster.nodes)
        client = cols.has_ip & cols.node_given & ~cols.host           # a pod on a node's bridge
        clients = np.flatnonzero(client)
        self.cli_ip = cols.ip[clients]
        # namespaces of the clients, sorted by name
        used = np.flatnonzero(np.bincount(cols.ns[clients], minlength=len(cols.ns_names)))
        namespaces = sorted(cols.ns_names[i] for i in used.tolist())
        ns_id = {ns: i for i, ns in enumerate(namespaces)}
        remap = np.full(len(cols.ns_names), -1, dtype=np.int64)
        remap[used] = [ns_id[cols.ns_names[i]] for i in used.tolist()]
        cli_ns = remap[cols.ns[clients]]
        # Clients of each namespace (CSR), for short names that only resolve there.
        self.ns_members = np.argsort(cli_ns, kind="stable")
        self.ns_count = np.bincount(cli_ns, minlength=len(namespaces)).astype(np.int64)
        self.ns_start = np.concatenate([[0], np.cumsum(self.ns_count)[:-1]]).astype(np.int64)
        # Each client's declared ports (CSR), for localhost flows.
        own = client[cols.port_pod]
        self.cli_pcount = np.bincount(cols.port_pod[own], minlength=len(client))[clients].astype(np.int64)
        self.cli_pstart = np.concatenate([[0], np.cumsum(self.cli_pcount)[:-1]]).astype(np.int64)
        self.cli_port = cols.port_num[own].astype(np.uint16)
        self.cli_proto = cols.port_proto[own].astype(np.uint8)
        # Pod ports anyone can connect to straight (pod -> pod), and what listens.
        self.pp_ip = np.repeat(self.cli_ip, self.cli_pcount)
        self.pp_port, self.pp_proto = self.cli_port, self.cli_proto
        self.listen_keys = _unique((self.pp_ip.astype(np.int64) << 16) | self.pp_port)
        self.pod_ips = _unique(cols.ip[cols.has_ip].astype(np.int64))
        # the same as exact-match sets, for the kernel (one probe where a binary search takes twenty)
        self.listen_set = _exact_set(self.listen_keys)
        self.pod_set = AddressTable.build(self.pod_ips.astype(np.uint64), np.zeros(self.pod_ips.size, np.int64),
                                          load=SET_LOAD).slots
        self.host_ip = np.array([n.internal_ip for n in cluster.nodes if n.internal_ip is not None], dtype=np.uint32)
        cidrs = [c for n in cluster.nodes for c in n.pod_cidrs if c[1] <= 30]
        self.cidr_net = np.array([c[0] for c in cidrs], dtype=np.int64)
        self.cidr_size = np.array([1 << (32 - c[1]) for c in cidrs], dtype=np.int64)

        # Service popularity: Zipf over ranks shuffled by the seed.
        services = [s for s in cluster.services if s.type != "ExternalName" and s.ports]
        rank = rng.permutation(len(services)) + 1
        svc_w = 1.0 / rank.astype(np.float64) ** float(mix.zipf)
        self._frontends(cluster, services, svc_w)
        self._names(services, svc_w, clients, cols, namespaces, ns_id, domain)

        # Internet servers for egress, popular ones first.
        lo, hi = INTERNET_RANGE
        self.egress_ip = rng.integers(lo, hi, EGRESS_SERVERS, dtype=np.int64).astype(np.uint32)
        self.egress = _Choice(1.0 / np.arange(1, EGRESS_SERVERS + 1, dtype=np.float64))

    def _frontends(self, cluster: Cluster, services: list, svc_w: np.ndarray) -> None:
        """ClusterIP frontends (``ci_*``), and the north-south ones as segments (``ns_*``).

        North-south: a service's external and load-balancer IPs on each of its ports
        (a segment of one address each), and each NodePort on every node address
        (InternalIP, ExternalIP): one segment of all of them, drawn uniformly inside.
        At 5,000 nodes that is millions of (address, port) pairs, never made: a flow
        draws its segment by weight, then its node address from the draw's residual
        (:meth:`_Choice.draw_residual`).
        """
        # every node's addresses, in node order: InternalIP, then ExternalIP
        self.node_addr = np.array([ip for node in cluster.nodes for ip in (node.internal_ip, node.external_ip)
                                   if ip is not None], dtype=np.uint32)
        n_addr = self.node_addr.size
        ci = []
        seg_ip, seg_port, seg_proto, seg_nodes, seg_w = [], [], [], [], []
        for s, w in zip(services, svc_w.tolist()):
            ports = s.ports
            for sp in ports:
                for ip in s.cluster_ips:
                    ci.append((ip, sp.port, sp.proto, w / (len(ports) * len(s.cluster_ips))))
            outside = [(ip, sp.port, sp.proto) for sp in ports for ip in s.external_ips + s.lb_ips]
            node_ports = [(sp.node_port, sp.proto) for sp in ports if sp.node_port] \
                if s.type in ("NodePort", "LoadBalancer") and n_addr else []
            total = len(outside) + len(node_ports) * n_addr
            if not total:
                continue
            share = w / total
            for ip, port, proto in outside:
                seg_ip.append(ip), seg_port.append(port), seg_proto.append(proto), seg_nodes.append(False)
                seg_w.append(share)
            for port, proto in node_ports:
                seg_ip.append(0), seg_port.append(port), seg_proto.append(proto), seg_nodes.append(True)
                seg_w.append(share * n_addr)
        if ci:
            ip, port, proto, w = zip(*ci)
            self.ci_ip, self.ci_port = np.array(ip, dtype=np.uint32), np.array(port, dtype=np.uint16)
            self.ci_proto, self.ci = np.array(proto, dtype=np.uint8), _Choice(np.array(w, dtype=np.float64))
        else:
            self.ci_ip, self.ci_port, self.ci_proto = (np.zeros(0, np.uint32), np.zeros(0, np.uint16),
                                                       np.zeros(0, np.uint8))
            self.ci = _Choice(np.zeros(0))
        self.ns_ip, self.ns_port = np.array(seg_ip, dtype=np.uint32), np.array(seg_port, dtype=np.uint16)
        self.ns_proto, self.ns_nodes = np.array(seg_proto, dtype=np.uint8), np.array(seg_nodes, dtype=np.bool_)
        self.ns = _Choice(np.array(seg_w, dtype=np.float64))
        self.ci_keys = _unique((self.ci_ip.astype(np.int64) << 16) | self.ci_port)
        self.ci_set = _exact_set(self.ci_keys)
        self.ci_addrs = _unique(self.ci_ip)

    def _names(self, services: list, svc_w: np.ndarray, clients: np.ndarray, cols, namespaces: list[str],
               ns_id: dict[str, int], domain: str) -> None:
        """DNS names: every service by its four forms, pod records, and names that do not exist."""
        codes: dict[str, int] = {}  # each distinct name once in the dictionary
        entries = []  # (name code, port, proto, namespace id or -1, weight)
        for s, w in zip(services, svc_w.tolist()):
            forms = (s.name, f"{s.name}.{s.namespace}", f"{s.name}.{s.namespace}.svc",
                     f"{s.name}.{s.namespace}.svc.{domain}")
            shares = list(NAME_FORMS)
            nsid = ns_id.get(s.namespace, -1)
            if nsid < 0:  # no client in the namespace: the short form could never resolve
                shares[1] += shares[0]
                shares[0] = 0.0
            for form, share in zip(forms, shares):
                if share:
                    c = codes.setdefault(form, len(codes))
                    bound = nsid if form is forms[0] else -1
                    for sp in s.ports:
                        entries.append((c, sp.port, sp.proto, bound, (1 - POD_RECORD_SHARE) * w * share / len(s.ports)))
        arr = np.array([e[:4] for e in entries], dtype=np.int64).reshape(-1, 4)
        weights = np.array([e[4] for e in entries], dtype=np.float64)
        names = list(codes)
        if len(self.pp_ip):
            pod_share = POD_RECORD_SHARE * (svc_w.sum() if len(services) else 1.0) / len(self.pp_ip)
            # one record name per pod address (the namespace of the last client holding it),
            # coded in order of first appearance among the pod ports
            uniq, first, inverse = np.unique(self.pp_ip, return_index=True, return_inverse=True)
            _, last_rev = np.unique(self.cli_ip[::-1], return_index=True)
            last = clients[self.cli_ip.size - 1 - last_rev]            # uniq is a subset of the client IPs
            last = last[np.searchsorted(_unique(self.cli_ip), uniq)]
            in_order = np.argsort(first, kind="stable")
            rec_ns = pa.array([cols.ns_names[i] for i in cols.ns[last[in_order]].tolist()], type=pa.string())
            dashed = pac.replace_substring(ips_to_strings(uniq[in_order]), ".", "-")
            text = pac.binary_join_element_wise(dashed, rec_ns, pa.scalar(f"pod.{domain}"), ".")
            rec_code = np.empty(uniq.size, dtype=np.int64)
            rec_code[in_order] = np.arange(len(codes), len(codes) + uniq.size, dtype=np.int64)
            names += text.to_pylist()   # never equal to a service's form (those end in .svc.<domain>, or have one dot)
            pc = rec_code[inverse.reshape(-1)]
            arr = np.concatenate([arr, np.stack([pc, self.pp_port.astype(np.int64), self.pp_proto.astype(np.int64),
                                                 np.full(pc.size, -1, np.int64)], axis=1)])
            weights = np.concatenate([weights, np.full(self.pp_ip.size, pod_share)])
        taken = set(names)
        some_ns = (namespaces or ["default"])[:4]
        missing = [f"nosuch-{i}.{ns}.svc.{domain}" for ns in some_ns for i in range(4)]
        missing += [f"nosuch-{i}" for i in range(4)] + [f"{s.name}.nosuch-ns" for s in services[:8]]
        missing = [m for m in dict.fromkeys(missing) if m not in taken]
        self.missing_codes = np.arange(len(names), len(names) + len(missing), dtype=np.int32)
        self.names = names + missing
        self.nm_code, self.nm_port = arr[:, 0].astype(np.int32), arr[:, 1].astype(np.uint16)
        self.nm_proto, self.nm_ns = arr[:, 2].astype(np.uint8), arr[:, 3]
        self.nm = _Choice(weights)

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
            raise FastpathError("the cluster has nothing to make flows between: no pod with an IP to send from, "
                                "and no service an outside client can reach (at a node's NodePort, a load-balancer or an external IP) "
                                "(or every kind share of the trace mix is 0)")
        return w / w.sum()


# --------------------------------------------------------------------------- rows

#: ``duration_mix``: TCP lifetimes are Pareto (shape TCP_ALPHA, scale TCP_SCALE seconds: median
#: about 0.04 s, mean 0.3 s, a heavy tail); UDP is one-shot (exponential, mean UDP_ONE_SHOT s,
#: a DNS query and its answer: never a conntrack stream); long-lived streams (gRPC, websockets,
#: video) last uniformly STREAM_RANGE seconds, whatever their protocol.
TCP_ALPHA, TCP_SCALE, UDP_ONE_SHOT, STREAM_RANGE = 1.2, 0.05, 0.005, (300.0, 3600.0)


def seed_key(seed: int) -> int:
    """The 64-bit key of a seed's random streams (:mod:`fastpath.traces.synth_kernel`)."""
    return int.from_bytes(hashlib.sha256(f"fastpath synth trace {int(seed)}".encode()).digest()[:8], "little")


def _knob_array(mix: TraceMix) -> np.ndarray:
    """The mix's numbers in :mod:`~fastpath.traces.synth_kernel`'s ``knobs`` order."""
    k = np.zeros(K.KNOBS, dtype=np.float64)
    k[K.N_VIA_SERVICE] = mix.via_service
    k[K.N_LISTENING] = mix.localhost_listening
    k[K.N_MISSING] = mix.missing_names
    k[K.N_GAP_NS] = 1e9 / float(mix.rate)
    k[K.N_SIGMA] = mix.bytes_sigma
    k[K.N_LOG_MEDIAN] = np.log(float(mix.bytes_median))
    k[K.N_ELEPHANTS] = mix.elephants
    k[K.N_ALPHA] = mix.elephant_alpha
    k[K.N_ELEPHANT_MIN] = mix.elephant_min
    k[K.N_LONG_LIVED] = mix.long_lived
    k[K.N_TCP_ALPHA], k[K.N_TCP_SCALE], k[K.N_UDP_ONE_SHOT] = TCP_ALPHA, TCP_SCALE, UDP_ONE_SHOT
    k[K.N_STREAM_LO], k[K.N_STREAM_HI] = STREAM_RANGE
    return k


class _Generator:
    """The kernel's arguments for one trace: the pools packed for it, the mix, the seed's key.

    Every alias table's ``(prob, alias)`` pairs interleaved in one array; each table of
    destinations one uint64 an entry (:func:`~fastpath.traces.synth_kernel._pack`); the
    sets a drawn value must miss are the pools' exact-match tables.
    """

    def __init__(self, pools: _Pools, mix: TraceMix, seed: int) -> None:
        p = pools
        tables = [_Choice(p.kind_weights(mix)), p.ci, p.ns, p.nm, p.egress]
        self.duration = bool(mix.duration_mix)
        off = np.zeros(len(tables) + 1, dtype=np.int64)
        np.cumsum([t.k for t in tables], out=off[1:])
        ch = np.empty(2 * int(off[-1]), dtype=np.float64)
        ch[0::2] = np.concatenate([t.prob[:t.k] for t in tables])
        ch[1::2] = np.concatenate([t.alias[:t.k] for t in tables])
        shares = np.array([sh for _, _, sh in EGRESS_PORTS], dtype=np.float64)
        ways = [w for w, ok in enumerate((len(p.cidr_net) > 0, len(p.pp_ip) > 0, p.ci.k > 0)) if ok]
        nm = np.empty(2 * p.nm_code.size, dtype=np.uint64)
        nm[0::2] = _packed(p.nm_code.astype(np.uint32), p.nm_port, p.nm_proto)          # the code where the ip goes
        nm[1::2] = (p.nm_ns + 1).astype(np.uint64)
        nothing = np.zeros(0, np.int64)
        self.args = (np.uint64(seed_key(seed)), _knob_array(mix), ch, off,
                     p.cli_ip, p.cli_pstart, p.cli_pcount, p.cli_port, p.cli_proto, p.ns_members, p.ns_start,
                     p.ns_count, _packed(p.pp_ip, p.pp_port, p.pp_proto), p.listen_set, p.pod_set,
                     p.host_ip, p.cidr_net, p.cidr_size, _packed(p.ci_ip, p.ci_port, p.ci_proto), p.ci_set, p.ci_addrs, _packed(p.ns_ip, p.ns_port, p.ns_proto) | p.ns_nodes.astype(np.uint64),
                     p.node_addr, nm, p.missing_codes, p.egress_ip, np.cumsum(shares),
                     np.array([pt for pt, _, _ in EGRESS_PORTS], dtype=np.uint16),
                     np.array([q for _, q, _ in EGRESS_PORTS], dtype=np.uint8), np.array(ways or nothing, np.int64))

    def columns(self, m: int) -> dict[str, np.ndarray]:
        """Empty output columns for ``m`` rows (``gaps``: nanoseconds since the previous arrival)."""
        return dict(src_ip=np.empty(m, np.uint32), dst_ip=np.empty(m, np.uint32), src_port=np.empty(m, np.uint16),
                    dst_port=np.empty(m, np.uint16), proto=np.empty(m, np.uint8), gaps=np.empty(m, np.int64),
                    name_code=np.empty(m, np.int32), bytes=np.empty(m, np.uint64), packets=np.empty(m, np.uint32),
                    duration=np.empty(m if self.duration else 0, np.float64))

    def rows(self, start: int, m: int, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Rows ``start .. start + m``, into ``out`` (:meth:`columns` of at least ``m`` rows) if given."""
        cols = {k: v[:m] for k, v in (out or self.columns(m)).items()}
        K.make_rows(np.int64(start), *self.args, cols["src_ip"], cols["dst_ip"], cols["src_port"], cols["dst_port"],
                    cols["proto"], cols["gaps"], cols["name_code"], cols["bytes"], cols["packets"], cols["duration"])
        if not self.duration:
            del cols["duration"]
        return cols


def _exact_set(keys: np.ndarray) -> np.ndarray:
    """``keys`` as an exact-match table's slots (values unused)."""
    return ExactTable.build(keys.astype(np.uint64), np.zeros(keys.size, np.int64), load=SET_LOAD).slots


def _packed(ip: np.ndarray, port: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Destinations as the kernel's packed tables hold them: ``ip << 32 | port << 16 | proto << 8``."""
    return (ip.astype(np.uint64) << np.uint64(32)) | (port.astype(np.uint64) << np.uint64(16)) \
        | (proto.astype(np.uint64) << np.uint64(8))


def _batches(gen: _Generator, start_ns: int, flows: int, batch_size: int, threads: int) -> Iterator[dict]:
    """Generated rows in batches of ``batch_size``, ``ts`` made absolute.

    The next batch is made in a second thread (the kernel releases the GIL; ``threads``
    of numba's threads) while the caller writes this one, so writing and drawing overlap.
    Two sets of columns take turns (fresh memory would cost page faults every batch): a
    batch's arrays are written over two batches later, so the caller must be done with
    them (written out) when it asks for the next.
    """
    from .._jit import set_threads

    size = min(batch_size, flows)
    buffers = [gen.columns(size), gen.columns(size) if flows > size else None]

    def make(start: int, out: dict) -> dict:
        set_threads(threads)                  # numba's thread count is per calling thread
        return gen.rows(start, min(batch_size, flows - start), out)

    t = int(start_ns)
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(make, 0, buffers[0])
        for k, start in enumerate(range(0, flows, batch_size)):
            cols = ahead.result()
            if start + batch_size < flows:
                ahead = pool.submit(make, start + batch_size, buffers[(k + 1) % 2])
            ts = cols.pop("gaps")
            np.cumsum(ts, out=ts)                 # in place: the gaps become arrival times
            ts += t
            t = int(ts[-1])
            cols["ts"] = ts
            yield cols


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


def trace_schema(ts_type: str = "timestamp", metadata: dict | None = None, duration: bool = False) -> pa.Schema:
    """The schema of the traces fastpath writes (the canonical column types; ``duration`` only if asked)."""
    types = dict(CANONICAL_TYPES)
    if not duration:
        types.pop("duration", None)
    if ts_type == "int64":
        types["ts"] = pa.int64()
    return pa.schema(list(types.items()), metadata=metadata)


#: Layout of the pools kept in the cache; bump when :class:`_Pools` changes shape.
POOLS_FORMAT = 3


def _pools_of(cluster: Cluster | str | os.PathLike, mix: TraceMix, seed: int, cache: bool,
              on_load: Callable[[Cluster], None] | None, directory=None, stats: dict | None = None) -> _Pools:
    """The pools of a cluster, or of a cluster input through the cache (keyed by seed and ``zipf``:
    all that shapes them besides the input)."""
    def build(c: Cluster) -> _Pools:
        return _Pools(c, mix, np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,)))))

    if isinstance(cluster, Cluster):
        return build(cluster)
    from ..cache import cached_object

    pools, _ = cached_object(cluster, "synth-pools", {"format": POOLS_FORMAT, "seed": seed, "zipf": float(mix.zipf)},
                             build, cache=cache, on_load=on_load, directory=directory, stats=stats)
    return pools


def synth_trace(cluster: Cluster | str | os.PathLike, flows: int, *, seed: int = 0, out: str | os.PathLike,
                batch_size: int = 1 << 20, threads: int | None = None, compression: str | None = None,
                cache: bool = True, cache_dir: str | os.PathLike | None = None, cache_stats: dict | None = None,
                on_load: Callable[[Cluster], None] | None = None, **mix: Any) -> int:
    """Write a synthetic trace of ``flows`` rows over ``cluster`` to an Arrow IPC file.

    Parameters
    ----------
    cluster
        The cluster whose pods, services and nodes the flows go between, or the path
        of a cluster input: then what flows are drawn from (its pools: clients,
        frontends, names) comes from the compiled-table cache when an earlier trace of
        the same input, seed and ``zipf`` put it there, without loading the cluster
        (:func:`fastpath.cache.cached_object`).
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
        Threads drawing rows (default: all cores); the rows do not depend on it.
    compression
        ``None`` (default: readers memory-map the columns, zero-copy), ``"zstd"``
        (about a third of the size; the bundled sample) or ``"lz4"``.
    cache
        With a path: False neither reads nor writes the cache (``--no-cache``).
    cache_dir, cache_stats
        With a path: the cache folder (default :func:`fastpath.cache.cache_dir`), and a
        dict given ``hit``, ``key`` and ``why`` (why an entry was rebuilt).
    on_load
        With a path: called with the cluster once it is known (loaded, or the cache's
        :class:`~fastpath.cache.LazyCluster`), e.g. to print its load warnings.
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
    pools = _pools_of(cluster, knobs, seed, cache, on_load, cache_dir, cache_stats)
    about = {"seed": seed, "flows": flows, "cluster": pools.summary, "mix": asdict(knobs)}
    schema = trace_schema(knobs.ts_type, {METADATA_KEY: json.dumps(about, sort_keys=True)}, knobs.duration_mix)
    names = pa.array(pools.names, type=pa.string())
    gen = _Generator(pools, knobs, seed) if flows else None   # fails on an empty cluster before creating anything

    out = Path(out)
    if not out.parent.is_dir():
        raise FastpathError(f"{out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    parquet = output_format(out, "trace") == "parquet"      # the format follows the extension
    try:
        if parquet:
            import pyarrow.parquet as pq

            with pq.ParquetWriter(str(tmp), schema, compression=compression or "snappy") as writer:
                for cols in (_batches(gen, knobs.start_ns, flows, batch_size, threads) if flows else ()):
                    writer.write_batch(_record_batch(cols, schema, names))
        else:
            options = pa.ipc.IpcWriteOptions(compression=compression)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
                for cols in (_batches(gen, knobs.start_ns, flows, batch_size, threads) if flows else ()):
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
