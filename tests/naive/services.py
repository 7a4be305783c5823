"""Slow twin of the service stage (:mod:`fastpath.tables.services`): one flow at a time, dicts.

Written from the spec (§3) and ``docs/dataplane.md`` §4 rule by rule, with the
choices documented in :mod:`fastpath.tables.balancers` (hashes, tie-breaks,
receiving node of external clients) and :mod:`fastpath.tables.maglev` (the
paper's population loop). Nothing here is shared with the kernels: hashes are
Python ints, the Maglev table is the paper's pseudocode, least-connection scans
a list of every connection opened.

Also builds random test clusters and flows (:func:`random_cluster`, :func:`random_flows`).
"""
from __future__ import annotations

import ipaddress
import random
from typing import Optional

from fastpath.cluster.endpoints import endpoints_for
from fastpath.cluster.model import (Cluster, ContainerPort, Endpoint, EndpointSlice, EndpointSlicePort, Node, Pod,
                                    Service, ServicePort)

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
BALANCERS = ("random", "round-robin", "source-hash", "maglev", "least-connection")
SALTS = {"random": 1, "source": 2, "maglev": 3, "node": 4, "offset": 5, "skip": 6, "dns": 7}


# --------------------------------------------------------------------------- hashes, from the docs

def fmix64(x: int) -> int:
    x &= M64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    x ^= x >> 33
    return x


def key_of(seed: int, use: str) -> int:
    return fmix64((seed * 0x9E3779B97F4A7C15 + SALTS[use]) & M64)


def fmix32(x: int) -> int:
    x &= M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    x ^= x >> 16
    return x


def hash_flow(k: int, f: dict) -> int:
    lo, hi = k & M32, k >> 32
    h = fmix32(lo ^ f["proto"] ^ f["src_ip"])
    h = fmix32(h ^ f["dst_ip"] ^ hi)
    return fmix32(h ^ (f["src_port"] << 16) ^ f["dst_port"])


def hash_client(k: int, ip: int) -> int:
    return fmix32((k & M32) ^ ip)


def modn(h: int, n: int) -> int:
    return h % n


def maglev_populate(names: list[int], m: int, seed: int) -> list[int]:
    """Maglev (NSDI 2016) §3.4 Pseudocode 1, literally."""
    k1, k2 = key_of(seed, "offset"), key_of(seed, "skip")
    n = len(names)
    offset = [fmix64(k1 ^ x) % m for x in names]
    skip = [fmix64(k2 ^ x) % (m - 1) + 1 for x in names]

    def permutation(i: int, j: int) -> int:
        return (offset[i] + j * skip[i]) % m

    nxt = [0] * n
    entry = [-1] * m
    filled = 0
    while True:
        for i in range(n):
            c = permutation(i, nxt[i])
            while entry[c] >= 0:
                nxt[i] += 1
                c = permutation(i, nxt[i])
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return entry


# --------------------------------------------------------------------------- the twin

class NaiveServices:
    """kube-proxy for one flow at a time.

    ``stage(flow, src_pod, src_node)`` follows the callback protocol of
    :mod:`tests.naive.pipeline`; :meth:`run` resolves a list of flows in order.
    """

    def __init__(self, cluster: Cluster, lb: str = "random", seed: int = 0, maglev_size: int = 16381,
                 conn_duration: float = 30.0):
        assert lb in BALANCERS
        self.lb, self.seed, self.m, self.conn_ns = lb, seed, maglev_size, int(round(conn_duration * 1e9))
        self.nodes = list(cluster.nodes)
        self.node_by_name = {n.name: n for n in self.nodes}
        self.node_order = {n.name: i for i, n in enumerate(self.nodes)}
        self.node_by_ip: dict[int, str] = {}
        for n in self.nodes:
            for ip in (n.internal_ip, n.external_ip):
                if ip is not None:
                    self.node_by_ip.setdefault(ip, n.name)
        self.pod_node = {p.ip: p.node for p in cluster.pods     # in-cluster pod clients (docs/dataplane.md §1)
                         if p.ip is not None and p.node in self.node_by_name and not p.host_network
                         and p.ip not in self.node_by_ip}
        slices = endpoints_for(cluster)
        self.ports: dict[str, dict] = {}           # service-port name -> facts
        self.frontends: dict[tuple, tuple] = {}    # (ip, proto, port) -> (sp name, kind, node name)
        self.cluster_ips: set[int] = set()
        claims = {"ClusterIP": [], "LoadBalancer": [], "externalIP": [], "NodePort": []}
        for svc in cluster.services:
            if svc.type == "ExternalName" or svc.headless:
                continue
            self.cluster_ips.update(svc.cluster_ips)
            for port in svc.ports:
                name = f"{svc.namespace}/{svc.name}:{port.name or port.port}"
                self.ports[name] = {
                    "svc": svc, "port": port, "endpoints": self._endpoints(svc, port, slices),
                }
                for ip in svc.cluster_ips:
                    claims["ClusterIP"].append(((ip, port.proto, port.port), (name, "ClusterIP", None)))
                if svc.type == "LoadBalancer":
                    for ip in svc.lb_ips:
                        claims["LoadBalancer"].append(((ip, port.proto, port.port), (name, "LoadBalancer", None)))
                for ip in svc.external_ips:
                    claims["externalIP"].append(((ip, port.proto, port.port), (name, "externalIP", None)))
                if svc.type in ("NodePort", "LoadBalancer") and port.node_port:
                    for n in self.nodes:
                        for ip in (n.internal_ip, n.external_ip):
                            if ip is not None:
                                claims["NodePort"].append(((ip, port.proto, port.node_port), (name, "NodePort", n.name)))
        for kind in ("ClusterIP", "LoadBalancer", "externalIP", "NodePort"):
            for k, v in claims[kind]:
                self.frontends.setdefault(k, v)
        self.rr: dict[tuple, int] = {}
        self.conns: list[tuple] = []               # (end ns or None, node, sp, (ip, port))
        # ClientIP affinity is each node's own (kube-proxy's iptables `recent` lists, IPVS persistence
        # templates and nftables maps live in the node's kernel): keyed by the node that DNATs
        self.affinity: dict[tuple, tuple] = {}     # (sp, node, client) -> ((ip, port), last ns)
        self._tables: dict[tuple, list[int]] = {}

    @staticmethod
    def _endpoints(svc: Service, port: ServicePort, slices: list[EndpointSlice]) -> list[dict]:
        seen: dict[tuple, dict] = {}
        for sl in slices:
            if sl.namespace != svc.namespace or sl.service != svc.name:
                continue
            match = [p for p in sl.ports if (p.name or "") == (port.name or "") and p.proto == port.proto]
            if not match:
                continue
            for e in sl.endpoints:
                if not e.addresses:
                    continue
                key = (e.addresses[0], match[0].port)
                if key not in seen:
                    seen[key] = {"ip": key[0], "port": key[1], "ready": e.ready, "serving": e.serving,
                                 "terminating": e.terminating, "node": e.node, "hints": set(e.hint_zones),
                                 "node_hints": set(e.hint_nodes), "zone": e.zone}
        return [seen[k] for k in sorted(seen)]

    # ---- CategorizeEndpoints
    @staticmethod
    def _ready_else_terminating(eps: list[dict]) -> list[dict]:
        ready = [e for e in eps if e["ready"]]
        if ready:
            return ready
        return [e for e in eps if e["serving"] and e["terminating"]]

    def cluster_view(self, eps: list[dict], node: str) -> list[dict]:
        ready = [e for e in eps if e["ready"]]
        # node hints (PreferSameNode, KEP-3015) first: every Ready endpoint hinted, one for this node
        if ready and all(e["node_hints"] for e in ready) and any(node in e["node_hints"] for e in ready):
            return [e for e in ready if node in e["node_hints"]]
        zone = self.node_by_name[node].zone
        if ready and zone and all(e["hints"] for e in ready) and any(zone in e["hints"] for e in ready):
            return [e for e in ready if zone in e["hints"]]
        return self._ready_else_terminating(eps)

    def local_view(self, eps: list[dict], node: str) -> list[dict]:
        return self._ready_else_terminating([e for e in eps if e["node"] == node])

    def eligible(self, sp: str, kind: str, external: bool, node: str) -> tuple[list[dict], bool]:
        """(eligible endpoints, whether a Local policy applied)."""
        svc = self.ports[sp]["svc"]
        eps = self.ports[sp]["endpoints"]
        if kind == "ClusterIP":
            local = svc.internal_policy == "Local"
        else:
            local = external and svc.external_policy == "Local"
        return (self.local_view(eps, node) if local else self.cluster_view(eps, node)), local

    # ---- the stage
    def stage(self, flow: dict, src_pod: Optional[str] = None, src_node: Optional[str] = None) -> Optional[dict]:
        src, dst = flow["src_ip"], flow["dst_ip"]
        fe = self.frontends.get((dst, flow["proto"], flow["dst_port"]))
        out = {"service": None, "verdict": None, "reason": None, "dnat_ip": dst, "dnat_port": flow["dst_port"],
               "snat_ip": src, "src_node": None}
        if fe is None:
            if dst in self.cluster_ips:
                out["verdict"], out["reason"] = "rejected", "port-not-served"
                return out
            return None
        sp, kind, fe_node = fe
        out["service"] = sp
        client_node = self.pod_node.get(src) or self.node_by_ip.get(src)
        external = client_node is None
        if not external:
            node = client_node
        elif kind == "NodePort":
            node = fe_node
        else:
            node = self._lb_node(flow, sp, kind)
        out["src_node"] = node
        eps = self.ports[sp]["endpoints"]
        if not any(e["ready"] or (e["serving"] and e["terminating"]) for e in eps):
            out["verdict"], out["reason"] = "rejected", "no-endpoints"
            return out
        if node is None:
            out["verdict"], out["reason"] = "dropped", "no-route"       # no node to receive it
            return out
        elig, local = self.eligible(sp, kind, external, node)
        if not elig:
            out["verdict"], out["reason"] = "dropped", "no-local-endpoint"
            return out
        backend = self._choose(flow, sp, node, elig)
        out["dnat_ip"], out["dnat_port"] = backend["ip"], backend["port"]
        if (external and (kind == "ClusterIP" or not local)) or backend["ip"] == src:
            n = self.node_by_name[node]
            out["snat_ip"] = n.internal_ip or n.external_ip or 0
        return out

    def _lb_node(self, flow: dict, sp: str, kind: str) -> Optional[str]:
        if not self.nodes:
            return None
        svc = self.ports[sp]["svc"]
        policy = svc.internal_policy if kind == "ClusterIP" else svc.external_policy
        pool = [n.name for n in self.nodes]
        if policy == "Local":
            with_local = [n for n in pool if self.local_view(self.ports[sp]["endpoints"], n)]
            if with_local:
                pool = with_local
        h = hash_flow(key_of(self.seed, "node"), flow)
        return pool[modn(h, len(pool))]

    def _choose(self, flow: dict, sp: str, node: str, elig: list[dict]) -> dict:
        svc = self.ports[sp]["svc"]
        ts = flow.get("ts")
        if self.lb == "least-connection" and ts is not None:
            self.conns = [c for c in self.conns if c[0] is None or c[0] > ts]
        chosen = None
        if svc.session_affinity:
            prev = self.affinity.get((sp, node, flow["src_ip"]))
            timeout = (svc.affinity_timeout or 10800) * 10**9
            if prev is not None and (ts is None or ts - prev[1] <= timeout):
                chosen = next((e for e in elig if (e["ip"], e["port"]) == prev[0]), None)
        hit = chosen is not None
        if chosen is None:
            chosen = elig[self._balance(flow, sp, node, elig)]
        end = ts + self.lifetime(flow) if ts is not None else None
        if svc.session_affinity:
            last = end or 0                          # in use until the connection ends
            if hit:
                last = max(last, prev[1])
            self.affinity[(sp, node, flow["src_ip"])] = ((chosen["ip"], chosen["port"]), last)
        if self.lb == "least-connection":
            self.conns.append((end, node, sp, (chosen["ip"], chosen["port"])))
        return chosen

    def lifetime(self, flow: dict) -> int:
        """The connection's lifetime, ns: its ``duration``, else 0 for UDP and ``conn_duration`` for the rest."""
        d = flow.get("duration")
        if d is None or d != d:
            return 0 if flow["proto"] == 17 else self.conn_ns
        return int(min(d, 100 * 365 * 86400.0) * 1e9 + 0.5)

    def _balance(self, flow: dict, sp: str, node: str, elig: list[dict]) -> int:
        n = len(elig)
        if self.lb == "random":
            return modn(hash_flow(key_of(self.seed, "random"), flow), n)
        if self.lb == "source-hash":
            return modn(hash_client(key_of(self.seed, "source"), flow["src_ip"]), n)
        if self.lb == "maglev":
            if n == 1:
                return 0
            names = tuple((e["ip"] << 16) | e["port"] for e in elig)
            table = self._tables.get(names)
            if table is None:
                table = self._tables[names] = maglev_populate(list(names), self.m, self.seed)
            return table[modn(hash_flow(key_of(self.seed, "maglev"), flow), self.m)]
        if self.lb == "round-robin":
            c = self.rr.get((node, sp), 0)
            self.rr[(node, sp)] = c + 1
            return c % n
        counts = [self.active(node, sp, e) for e in elig]
        return counts.index(min(counts))

    def active(self, node: str, sp: str, e: dict) -> int:
        """Open connections of ``node`` to backend ``e`` of ``sp`` (least-connection)."""
        return sum(1 for c in self.conns if c[1] == node and c[2] == sp and c[3] == (e["ip"], e["port"]))

    def run(self, flows: list[dict]) -> list[Optional[dict]]:
        return [self.stage(f) for f in flows]


# --------------------------------------------------------------------------- test clusters

def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def random_cluster(rng: random.Random, n_nodes: int = 4, n_services: int = 10, max_endpoints: int = 6,
                   zones: tuple = ("za", "zb", "zc")) -> Cluster:
    """A small random cluster with explicit EndpointSlices covering every rule of the stage."""
    nodes = []
    for i in range(n_nodes):
        zone = rng.choice(zones + (None,)) if zones else None
        nodes.append(Node(name=f"node-{i}", internal_ip=ip(f"192.168.0.{i + 1}"),
                          external_ip=ip(f"203.0.113.{i + 1}") if rng.random() < 0.5 else None,
                          pod_cidrs=((ip(f"10.244.{i}.0"), 24),), zone=zone))
    pods = []
    for i in range(n_nodes):
        for k in range(rng.randint(2, 5)):
            pods.append(Pod(namespace="ns", name=f"p{i}-{k}", node=f"node-{i}", host_network=False,
                            ip=ip(f"10.244.{i}.{k + 2}"), ready=True, terminating=False,
                            ports=(ContainerPort("c", 8080, 6, "http"),)))
    services, slices = [], []
    for s in range(n_services):
        stype = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "headless"])
        ports = []
        for j in range(rng.randint(1, 2)):
            proto = rng.choice([6, 6, 17])
            ports.append(ServicePort(name=rng.choice([None, f"p{j}"]) if j == 0 else f"p{j}", port=80 + j,
                                     proto=proto, target_port=8080 + j,
                                     node_port=30000 + 2 * s + j if stype in ("NodePort", "LoadBalancer") else None))
        headless = stype == "headless"
        svc = Service(
            namespace="ns", name=f"svc{s}", type="ClusterIP" if headless else stype,
            cluster_ips=() if headless or stype == "ExternalName" else (ip(f"10.96.0.{s + 1}"),),
            headless=headless, ports=tuple(ports), selector=None,
            external_ips=(ip(f"198.18.0.{s + 1}"),) if rng.random() < 0.3 else (),
            lb_ips=(ip(f"198.19.0.{s + 1}"),) if stype == "LoadBalancer" else (),
            session_affinity=rng.random() < 0.3, affinity_timeout=rng.choice([0, 3, 20]),
            external_policy=rng.choice(["Cluster", "Local"]), internal_policy=rng.choice(["Cluster", "Local"]),
            traffic_distribution=rng.choice([None, "PreferClose"]),
            external_name="x.example.com" if stype == "ExternalName" else None)
        services.append(svc)
        hinted = rng.random() < 0.5
        p_ready = 0.0 if rng.random() < 0.2 else 0.7       # some services only have terminating endpoints
        for k in range(rng.randint(0, 2)):
            eps = []
            for _ in range(rng.randint(0, max_endpoints)):
                p = rng.choice(pods)
                ready = rng.random() < p_ready
                serving = ready or rng.random() < 0.5
                term = (not ready) and rng.random() < 0.6
                node = p.node if rng.random() < 0.95 else None
                z = next((n.zone for n in nodes if n.name == p.node), None)
                hints = ()
                if hinted and rng.random() < 0.95:
                    hints = tuple(sorted({rng.choice(zones)} | ({z} if z and rng.random() < 0.7 else set())))
                node_hints = ()
                if s % 3 == 1:   # node hints (PreferSameNode) on a third of the services, from their own draw
                    r2 = random.Random(f"{s}/{k}/{len(eps)}")
                    if r2.random() < 0.9:
                        node_hints = (p.node,) if r2.random() < 0.7 else (r2.choice(nodes).name,)
                eps.append(Endpoint(addresses=(p.ip,), ready=ready, serving=serving, terminating=term,
                                    node=node, zone=z, hint_zones=hints, target_pod=p.key, hint_nodes=node_hints))
            sports = tuple(EndpointSlicePort(name=sp.name, port=sp.target_port + k * rng.randint(0, 1),
                                             proto=sp.proto)
                           for sp in ports if rng.random() < 0.9)
            slices.append(EndpointSlice(namespace="ns", name=f"svc{s}-{k}", service=f"svc{s}", ports=sports,
                                        endpoints=tuple(eps)))
    return Cluster(nodes=nodes, pods=pods, services=services, slices=slices)


def random_flows(rng: random.Random, cluster: Cluster, n: int, with_ts: bool = True,
                 durations: bool = False) -> list[dict]:
    """Flows to every kind of frontend and elsewhere, from pods, hosts and outside, in time order
    (with ``durations``, each timed flow has a ``duration``: seconds, or None for the default).
    A fifth of them come from two roaming external clients to external frontends (NodePorts on
    every node's addresses, load-balancer IPs, externalIPs): one client through several nodes,
    where each node keeps its own ClientIP affinity."""
    dsts, external = [], []
    for s in cluster.services:
        for p in s.ports:
            for cip in s.cluster_ips:
                dsts += [(cip, p.proto, p.port)] * 4
                dsts.append((cip, p.proto, p.port + 1000))        # a port it does not serve
                dsts.append((cip, 23 - p.proto, p.port))          # the other protocol
            for e in s.external_ips + s.lb_ips:
                dsts += [(e, p.proto, p.port)] * 2
                external.append((e, p.proto, p.port))
            if p.node_port:
                for nd in cluster.nodes:
                    for a in (nd.internal_ip, nd.external_ip):
                        if a is not None:
                            dsts.append((a, p.proto, p.node_port))
                            external.append((a, p.proto, p.node_port))
    dsts.append((ip("10.244.0.2"), 6, 8080))
    dsts.append((ip("8.8.8.8"), 17, 53))
    srcs = [a for a in [p.ip for p in cluster.pods] + [n.internal_ip for n in cluster.nodes] if a is not None]
    srcs += [ip(f"100.64.0.{i}") for i in range(1, 6)]
    roaming = [ip("100.64.1.1"), ip("100.64.1.2")]
    flows, t = [], 0
    for _ in range(n):
        if external and rng.random() < 0.2:
            src, (d, proto, port) = rng.choice(roaming), rng.choice(external)
        else:
            src, (d, proto, port) = rng.choice(srcs), rng.choice(dsts)
        t += rng.choice([0, 10**8, 10**9, 4 * 10**9, 25 * 10**9])
        f = {"src_ip": src, "dst_ip": d, "src_port": rng.randint(1024, 65535), "dst_port": port,
             "proto": proto}
        if with_ts:
            f["ts"] = t
            if durations:
                f["duration"] = rng.choice([None, 0.0, 0.05, 0.5, 3.0, 40.0, 300.0])
        flows.append(f)
    return flows
