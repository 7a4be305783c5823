"""Synthetic clusters: a realistic ``kubectl get nodes,pods,services,endpointslices -A -o json``.

:func:`synth_cluster` returns the ``v1`` ``List`` as plain dicts, so a synthetic
cluster goes through the same loader as a real one; :func:`write_cluster`
writes it atomically. Deterministic for a seed.

What it holds, in the proportions of a typical production cluster:

* nodes with an InternalIP (192.168.1.0/24 for up to 240 nodes, else 172.16.0.0/12),
  an ExternalIP on every fourth, zone labels round-robin over ``zones``; node 0 is
  the control plane (a hostNetwork ``kube-apiserver`` pod on 6443);
* addressing ``"bridge"``: a /24 ``podCIDR`` per node from 10.244.0.0/16 (up to 256
  nodes) or 10.128.0.0/9, pods from ``.2`` up; ``"calico"``: no podCIDR, pods from /26
  blocks of the IPPool 10.128.0.0/9 handed to nodes on demand (in shuffled order,
  offset 0 of a node's first block is its IPIP tunnel address), and a few pods with an
  address borrowed from another node's block;
* hostNetwork daemons on every node (``kube-proxy`` 10249/10256, ``node-exporter`` 9100),
  CoreDNS (2 replicas) behind ``kube-system/kube-dns`` at 10.96.0.10;
* deployments with Zipf-like replica counts spread over the nodes, an app container
  with a named port (``http``, ``grpc`` or UDP ``statsd``), a ``metrics`` port on some,
  an envoy sidecar (15001, 15090) on some; a canary ``v2`` on some that maps ``http``
  to another number; a few NotReady, Terminating and Pending (unscheduled) pods;
* services, one per deployment: mostly ClusterIP, some NodePort (unique nodePorts
  30000-32767), LoadBalancer (ingress IPs), headless, externalIPs, Local traffic
  policies, ClientIP affinity, ``trafficDistribution: PreferClose``; a few whose
  selector matches no pod; ``default/kubernetes`` and one selector-less service with
  hand-made slices; one ExternalName;
* with ``slices``: the EndpointSlices the controller would write
  (:func:`fastpath.cluster.endpoints.derive_slices`), zone hints for PreferClose.
  The slices of selector-less services are always written (nothing else makes them).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np

from ..addr import format_cidr, ips_to_strings
from ..errors import FastpathError
from ..files import temp_beside, temp_done
from .endpoints import NAME_ALPHABET, derive_slices
from .load import cluster_from_objects, gc_paused
from .load_kinds import _object_new, _PodParser
from .model import PROTO_NAMES, EndpointSlice, Pod

#: Application namespaces, in order (more become ``team-<n>``).
NAMESPACE_NAMES = ("shop", "payments", "search", "identity", "media", "analytics", "checkout", "catalog",
                   "messaging", "ml-serving", "billing", "logistics")
#: Words and roles that make deployment names (``cart-api``, ``search-worker``, ...).
APP_WORDS = ("cart", "checkout", "catalog", "search", "auth", "profile", "orders", "inventory", "pricing",
             "payment", "shipping", "review", "recommend", "notify", "email", "ledger", "session", "gateway",
             "frontend", "image", "video", "upload", "report", "audit", "feature", "config", "quote", "ads",
             "currency", "geo", "rating", "wishlist", "loyalty", "fraud", "tax", "invoice", "stock",
             "tracking", "chat", "media")
#: Second word of a deployment name.
APP_ROLES = ("api", "web", "worker", "grpc", "cache", "db", "proxy", "sync", "backend", "svc")
#: Region of the zone names (``eu-west-1a`` ...).
REGION = "eu-west-1"
#: Service CIDR (kubeadm default), the API server's and the DNS service's ClusterIP.
SERVICE_CIDR = (0x0A600000, 12)
KUBERNETES_VIP, DNS_VIP = 0x0A600001, 0x0A60000A
#: Cluster CIDR for bridge addressing: 10.244.0.0/16 up to 256 nodes, else 10.128.0.0/9.
SMALL_CLUSTER_CIDR, LARGE_CLUSTER_CIDR = (0x0AF40000, 16), (0x0A800000, 9)
#: Calico IPPool and its block size.
CALICO_POOL, CALICO_BLOCK = (0x0A800000, 9), 26
#: Node InternalIP ranges: small clusters, large clusters.
SMALL_NODE_BASE, LARGE_NODE_BASE = 0xC0A8010A, 0xAC100000  # 192.168.1.10, 172.16.0.0
#: Node ExternalIPs, load-balancer ingress IPs, service externalIPs (inside 198.18.0.0/15).
NODE_EXT_BASE, LB_BASE, EXT_IP_BASE = 0xC6120000, 0xC6130000, 0xC6138000
#: NodePort range (kube-apiserver ``--service-node-port-range`` default).
NODE_PORT_RANGE = (30000, 32767)
#: Where the DaemonSet pods' name suffixes start (apart from the deployments' pods).
DAEMON_SUFFIX_BASE = 4_000_000
#: Pods a /24 bridge can hold (.2 to .254; .1 is the bridge).
MAX_BRIDGE_PODS = 253
#: Shares of pods in odd states, of deployments with features, of service kinds.
P_NOT_READY, P_TERMINATING, P_PENDING, P_BORROWED = 0.01, 0.005, 0.003, 0.002
P_SIDECAR, P_METRICS, P_CANARY, P_GRPC, P_UDP = 0.3, 0.4, 0.1, 0.1, 0.03
P_HEADLESS, P_NODEPORT, P_LB, P_NO_MATCH = 0.08, 0.10, 0.06, 0.005
P_NAMED_TARGET, P_EXTERNAL_IPS, P_LOCAL_ETP, P_LOCAL_ITP, P_AFFINITY, P_PREFER_CLOSE = \
    0.55, 0.02, 0.3, 0.02, 0.05, 0.05
#: Containers and ports of the system pods.
_KUBE_PROXY = [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.31.4",
                "ports": [{"containerPort": 10249, "name": "metrics", "protocol": "TCP"},
                          {"containerPort": 10256, "name": "healthz", "protocol": "TCP"}]}]
_NODE_EXPORTER = [{"name": "node-exporter", "image": "quay.io/prometheus/node-exporter:v1.8.2",
                   "ports": [{"containerPort": 9100, "hostPort": 9100, "name": "metrics", "protocol": "TCP"}]}]
_APISERVER = [{"name": "kube-apiserver", "image": "registry.k8s.io/kube-apiserver:v1.31.4",
               "ports": [{"containerPort": 6443, "name": "https", "protocol": "TCP"}]}]
_COREDNS = [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3",
             "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                       {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                       {"containerPort": 9153, "name": "metrics", "protocol": "TCP"}]}]
_ENVOY = {"name": "envoy", "image": "envoyproxy/envoy:v1.32.1",
          "ports": [{"containerPort": 15001, "name": "envoy-outbound", "protocol": "TCP"},
                    {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]}
_READY = [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]
_NOT_READY = [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
              {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"}]
_UNSCHEDULABLE = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": "0/1 nodes are available: 1 Insufficient cpu."}]
_NODE_READY = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
_DELETED_AT = "2025-03-02T10:15:30Z"


def synth_cluster(nodes: int, pods_per_node: int, services: int, *, namespaces: int = 8, zones: int = 3,
                  seed: int = 0, addressing: str = "bridge", slices: bool = True, policies: int = 0) -> dict:
    """Generate a realistic cluster as the ``v1`` ``List`` kubectl prints.

    ``policies``: that many NetworkPolicies (and Namespace objects with labels) as
    :func:`fastpath.cluster.synth_policies.synth_policies` makes them; the rest of the
    cluster is the same with or without them.

    Parameters
    ----------
    nodes
        Node count (bridge addressing: at most 32768).
    pods_per_node
        Pods on each node, hostNetwork daemons included (the total is exactly
        ``nodes * pods_per_node``; Pending pods keep their count but lose their node).
    services
        Service count, the fixed ones included (``default/kubernetes``,
        ``kube-system/kube-dns``, ``monitoring/node-exporter``, one ExternalName,
        one selector-less); the rest select one deployment each.
    namespaces
        Application namespaces (besides ``default``, ``kube-system``, ``monitoring``).
    zones
        Zones (1-26), assigned to nodes round-robin.
    seed
        Seed of every random choice: the same arguments give the same cluster.
    addressing
        ``"bridge"`` (a /24 podCIDR per node) or ``"calico"`` (/26 blocks on demand).
    slices
        Include the EndpointSlices of selector services.

    Returns
    -------
    dict
        ``{"apiVersion": "v1", "kind": "List", "items": [...]}``, JSON-ready.
    """
    _check_args(nodes, pods_per_node, services, namespaces, zones, addressing)
    with gc_paused():
        rng = np.random.default_rng(seed)
        g = _Gen(rng, nodes, pods_per_node, services, namespaces, zones, addressing)
        node_objs, pod_objs, service_objs = g.nodes(), g.pods(), g.services()
        items = node_objs + pod_objs + service_objs
        manual = g.manual_slices()
        if policies:
            from .synth_policies import synth_policies
            manual += synth_policies(g.deploys, g.ns_names, policies, seed)
        if slices:
            # the loader reads the cluster without its pods; the pods it would read are the
            # generator's own (reading 150,000 pod dicts back was a third of the time)
            cluster = cluster_from_objects(node_objs + service_objs + manual, source="synth")
            cluster.pods = g.pod_models
            manual += slice_objects(derive_slices(cluster))
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items + manual}


def write_cluster(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` as compact JSON (UTF-8), atomically (a temporary name in the same folder, then rename).

    Encoded by msgspec where installed (a 139 MB dump in about 0.3 s, json.dumps takes 2 s;
    the same bytes for the ASCII documents :func:`synth_cluster` makes), else by json.
    """
    p = Path(path)
    try:
        from msgspec.json import encode
        data = encode(obj)
    except (ImportError, TypeError, ValueError, OverflowError):     # no msgspec, or a value it refuses
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    fd, tmp = temp_beside(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.write(b"\n")
        os.replace(tmp, p)
    except OSError as e:  # a full disk: name the user's path, not the temporary file
        Path(tmp).unlink(missing_ok=True)
        from ..files import write_error

        raise write_error(p, "cluster file", e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        temp_done(tmp)
    return p


def slice_object(s: EndpointSlice) -> dict:
    """An :class:`EndpointSlice` as the ``discovery.k8s.io/v1`` object the controller writes."""
    return slice_objects([s])[0]


def slice_objects(slices: list[EndpointSlice]) -> list[dict]:
    """:func:`slice_object` of each slice, the addresses of all of them formatted in one go."""
    addrs = [a for s in slices for e in s.endpoints for a in e.addresses]
    # vectorized where it pays (125,000 endpoints at 5,000 nodes); the same text either way
    text = iter(_ip_strings(addrs) if len(addrs) > 64 else map(_ntoa, addrs)).__next__
    out = []
    for s in slices:
        eps = []
        for e in s.endpoints:
            n = len(e.addresses)
            ep: dict = {"addresses": [text()] if n == 1 else [text() for _ in range(n)],
                        "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating}}
            if e.node is not None:
                ep["nodeName"] = e.node
            if e.target_pod is not None:
                ns, _, name = e.target_pod.partition("/")
                ep["targetRef"] = {"kind": "Pod", "name": name, "namespace": ns}
            if e.zone is not None:
                ep["zone"] = e.zone
            if e.hint_zones:
                ep["hints"] = {"forZones": [{"name": z} for z in e.hint_zones]}
            eps.append(ep)
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": s.name, "namespace": s.namespace, "generateName": f"{s.service}-",
                                 "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                                            "kubernetes.io/service-name": s.service}},
                    "addressType": "IPv4", "endpoints": eps,
                    "ports": [{"name": p.name or "", "port": p.port, "protocol": PROTO_NAMES[p.proto]}
                              for p in s.ports]})
    return out


# --------------------------------------------------------------------------- internals

def _check_args(nodes, pods_per_node, services, namespaces, zones, addressing) -> None:
    if addressing not in ("bridge", "calico"):
        raise FastpathError(f"synth: addressing {addressing!r} is not bridge or calico")
    if nodes < 1 or pods_per_node < 0 or services < 0 or namespaces < 1:
        raise FastpathError(f"synth: need nodes >= 1, pods per node >= 0, services >= 0, namespaces >= 1 "
                            f"(got {nodes}, {pods_per_node}, {services}, {namespaces})")
    if not 1 <= zones <= 26:
        raise FastpathError(f"synth: zones {zones} is outside 1-26")
    if pods_per_node > MAX_BRIDGE_PODS:
        raise FastpathError(f"synth: {pods_per_node} pods per node do not fit a /24 podCIDR "
                            f"(at most {MAX_BRIDGE_PODS})")
    if addressing == "bridge" and nodes > 1 << (24 - LARGE_CLUSTER_CIDR[1]):
        raise FastpathError(f"synth: {nodes} nodes do not fit /24 podCIDRs in {format_cidr(*LARGE_CLUSTER_CIDR)}")
    blocks = nodes * -(-(pods_per_node + 1) // 64)
    if addressing == "calico" and blocks > 1 << (CALICO_BLOCK - CALICO_POOL[1]):
        raise FastpathError(f"synth: {nodes} nodes need {blocks} /{CALICO_BLOCK} blocks, more than the IPPool "
                            f"{format_cidr(*CALICO_POOL)} holds")


def _ntoa(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def _ip_strings(values) -> list[str]:
    return ips_to_strings(np.asarray(values, dtype=np.uint32)).to_pylist()


def _suffixes(rng: np.random.Generator, count: int, width: int) -> list[str]:
    """Random ``generateName``-style suffixes (may repeat)."""
    letters = np.array(list(NAME_ALPHABET))[rng.integers(0, len(NAME_ALPHABET), size=(count, width))]
    return ["".join(row) for row in letters.tolist()]


def _unique_suffixes(start: int, count: int) -> list[str]:
    """Five-letter suffixes, distinct for distinct indices (a bijection on 27**5)."""
    space = len(NAME_ALPHABET) ** 5
    codes = (np.arange(start, start + count, dtype=np.int64) * 7_919_227 + 1_234_567) % space
    digits = (codes[:, None] // (len(NAME_ALPHABET) ** np.arange(5))) % len(NAME_ALPHABET)
    letters = np.array(list(NAME_ALPHABET))[digits]
    return ["".join(row) for row in letters.tolist()]


def _count(n: int, share: float) -> int:
    """How many of ``n`` get a feature of this share: at least one, at most ``n``."""
    return min(n, max(1, round(n * share))) if n else 0


def _pick(rng: np.random.Generator, candidates: np.ndarray, share: float) -> np.ndarray:
    """A mask choosing ``_count`` of the ``candidates`` (a mask), at random."""
    idx = np.flatnonzero(candidates)
    out = np.zeros(candidates.size, dtype=bool)
    out[rng.choice(idx, size=_count(idx.size, share), replace=False)] = True
    return out


def _zipf_counts(rng: np.random.Generator, parts: int, total: int) -> np.ndarray:
    """``parts`` counts, each >= 1 where possible, summing to ``total``, Zipf-like."""
    if parts == 0:
        return np.zeros(0, dtype=np.int64)
    if total < parts:
        out = np.zeros(parts, dtype=np.int64)
        out[rng.permutation(parts)[:total]] = 1
        return out
    w = np.minimum(rng.zipf(1.7, parts), 200).astype(np.float64)
    extra = (total - parts) * w / w.sum()
    out = 1 + np.floor(extra).astype(np.int64)
    rest = total - int(out.sum())
    if rest:
        out[np.argsort(-(extra - np.floor(extra)), kind="stable")[:rest]] += 1
    return out


class _Gen:
    """One synthetic cluster in the making (arrays first, dicts at the end)."""

    def __init__(self, rng, n_nodes, ppn, n_services, n_ns, n_zones, addressing):
        self.rng, self.n, self.ppn, self.addressing = rng, n_nodes, ppn, addressing
        self.n_services = n_services
        self.ns_names = [NAMESPACE_NAMES[k] if k < len(NAMESPACE_NAMES) else f"team-{k}" for k in range(n_ns)]
        self.zone_names = [f"{REGION}{chr(97 + z)}" for z in range(n_zones)]
        width = max(3, len(str(n_nodes - 1)))
        self.node_names = [f"node-{i:0{width}d}" for i in range(n_nodes)]
        i = np.arange(n_nodes, dtype=np.int64)
        if n_nodes <= 240:
            internal = SMALL_NODE_BASE + i
        else:
            internal = LARGE_NODE_BASE + ((i // 250) << 8) + i % 250 + 2
        self.node_ip = internal.astype(np.uint32)
        self.node_ip_s = _ip_strings(self.node_ip)
        self.has_ext = i % 4 == 0
        self.ext_ip_s = _ip_strings(NODE_EXT_BASE + 1 + i // 4)
        self.node_zone = [self.zone_names[k % n_zones] for k in range(n_nodes)]
        if addressing == "bridge":
            base = SMALL_CLUSTER_CIDR[0] if n_nodes <= 256 else LARGE_CLUSTER_CIDR[0]
            self.node_cidr = (base + (i << 8)).astype(np.uint32)
        self.tunnel: dict[int, int] = {}
        self.deploys: list[dict] = []
        #: the pods as the loader reads them, in the order of :meth:`pods` (which makes them)
        self.pod_models: list[Pod] = []

    # ---------------------------------------------------------------- nodes
    def nodes(self) -> list[dict]:
        out = []
        self._plan_pods()  # Calico tunnel addresses live on the nodes
        for k, name in enumerate(self.node_names):
            addrs = [{"address": self.node_ip_s[k], "type": "InternalIP"}]
            if self.has_ext[k]:
                addrs.append({"address": self.ext_ip_s[k], "type": "ExternalIP"})
            addrs.append({"address": name, "type": "Hostname"})
            labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                      "topology.kubernetes.io/region": REGION, "topology.kubernetes.io/zone": self.node_zone[k]}
            meta: dict = {"name": name, "labels": labels}
            spec: dict = {}
            if k == 0:
                labels["node-role.kubernetes.io/control-plane"] = ""
                spec["taints"] = [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]
            if self.addressing == "bridge":
                cidr = format_cidr(int(self.node_cidr[k]), 24)
                spec["podCIDR"] = cidr
                spec["podCIDRs"] = [cidr]
            elif k in self.tunnel:
                meta["annotations"] = {"projectcalico.org/IPv4Address": f"{self.node_ip_s[k]}/16",
                                       "projectcalico.org/IPv4IPIPTunnelAddr": _ntoa(self.tunnel[k])}
            out.append({"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec,
                        "status": {"addresses": addrs, "capacity": {"pods": "110"}, "conditions": _NODE_READY,
                                   "nodeInfo": {"kubeletVersion": "v1.31.4",
                                                "containerRuntimeVersion": "containerd://1.7.24"}}})
        return out

    # ---------------------------------------------------------------- pods
    def _plan_pods(self) -> None:
        """Decide every pod's node, owner and address (arrays)."""
        rng, n, ppn = self.rng, self.n, self.ppn
        daemons = min(2, ppn)
        slots = np.full(n, ppn - daemons, dtype=np.int64)
        self.apiserver = bool(slots[0] > 0)
        slots[0] -= self.apiserver
        slot_node = rng.permutation(np.repeat(np.arange(n), slots))
        self.n_coredns = min(2, slot_node.size)
        app = slot_node.size - self.n_coredns
        # deployments: one per selector service at least, about a dozen replicas on average
        fixed = min(self.n_services, 5)
        self.n_select = max(0, self.n_services - fixed)
        n_match = self.n_select - self._no_match_count()
        n_deploy = max(n_match, -(-app // 12)) if app else n_match
        replicas = _zipf_counts(rng, n_deploy, app)
        self._plan_deployments(n_deploy, replicas)
        pod_deploy = np.repeat(np.arange(n_deploy), replicas)
        self.pod_node = slot_node.astype(np.int64)   # coredns first, then deployments in order
        self.pod_deploy = np.concatenate([np.full(self.n_coredns, -1), pod_deploy]).astype(np.int64)
        self.pod_version = np.zeros(self.pod_node.size, dtype=np.int64)
        for dep in self.deploys:
            if dep["canary"]:
                start = self.n_coredns + int(dep["first"])
                self.pod_version[start + dep["replicas"] - dep["canary"]: start + dep["replicas"]] = 1
        # a few deployment pods in odd states (disjoint): Pending (unscheduled), Terminating, NotReady
        size = self.pod_node.size
        self.pending, self.terminating, self.not_ready = (np.zeros(size, dtype=bool) for _ in range(3))
        if app >= 20:
            perm = rng.permutation(np.arange(self.n_coredns, size))
            start = 0
            for mask, share in ((self.pending, P_PENDING), (self.terminating, P_TERMINATING),
                                (self.not_ready, P_NOT_READY)):
                k = _count(app, share)
                mask[perm[start:start + k]] = True
                start += k
        self.pod_node[self.pending] = -1
        self.pod_ip = self._addresses()

    def _no_match_count(self) -> int:
        return max(1, int(self.n_select * P_NO_MATCH)) if self.n_select >= 10 else 0

    def _plan_deployments(self, count: int, replicas: np.ndarray) -> None:
        rng = self.rng
        ns_weight = 1.0 / np.arange(1, len(self.ns_names) + 1) ** 0.7
        ns = rng.choice(len(self.ns_names), size=count, p=ns_weight / ns_weight.sum())
        u = rng.random((count, 6))
        app_port = rng.choice(np.array([8080, 8000, 3000, 5000, 9000, 8443]), size=count)
        hashes = _suffixes(rng, 2 * count, 10)
        first = np.concatenate([[0], np.cumsum(replicas)[:-1]]) if count else replicas
        words, roles = len(APP_WORDS), len(APP_ROLES)
        for d in range(count):
            name = f"{APP_WORDS[d % words]}-{APP_ROLES[(d // words) % roles]}"
            if d >= words * roles:
                name += f"-{d // (words * roles)}"
            kind = "grpc" if u[d, 0] < P_GRPC else "statsd" if u[d, 0] < P_GRPC + P_UDP else "http"
            port = {"grpc": 50051, "statsd": 8125}.get(kind, int(app_port[d]))
            r = int(replicas[d])
            canary = max(1, r // 5) if kind == "http" and r >= 2 and u[d, 1] < P_CANARY else 0
            self.deploys.append({"name": name, "ns": self.ns_names[ns[d]], "kind": kind, "port": port,
                                 "metrics": bool(u[d, 2] < P_METRICS), "sidecar": bool(u[d, 3] < P_SIDECAR),
                                 "replicas": r, "canary": canary, "first": int(first[d]),
                                 "hash": (hashes[2 * d], hashes[2 * d + 1])})
        if not any(dep["canary"] for dep in self.deploys):   # at least one, where one fits
            for dep in self.deploys:
                if dep["kind"] == "http" and dep["replicas"] >= 2:
                    dep["canary"] = max(1, dep["replicas"] // 5)
                    break

    def _addresses(self) -> np.ndarray:
        """Pod IPs (0 where none): bridge from the node's /24, Calico from /26 blocks."""
        ip = np.zeros(self.pod_node.size, dtype=np.int64)
        placed = np.flatnonzero(self.pod_node >= 0)
        if self.addressing == "bridge":
            order = placed[np.argsort(self.pod_node[placed], kind="stable")]
            nodes = self.pod_node[order]
            rank = np.arange(order.size) - np.searchsorted(nodes, nodes)
            ip[order] = self.node_cidr[nodes].astype(np.int64) + 2 + rank
            return ip
        rng = self.rng
        borrow = np.sort(rng.choice(placed, size=_count(placed.size, P_BORROWED), replace=False)) \
            if self.n > 1 and placed.size >= 20 else placed[:0]
        own = np.setdiff1d(placed, borrow)
        order = own[np.argsort(self.pod_node[own], kind="stable")]
        nodes = self.pod_node[order]
        rank = np.arange(order.size) - np.searchsorted(nodes, nodes)
        per_node = np.bincount(nodes, minlength=self.n)
        # address 0 of a node's first block is its tunnel address; 64 addresses a block
        blocks = np.where(per_node > 0, (per_node + 1 + 63) // 64, 0)
        block_start = np.concatenate([[0], np.cumsum(blocks)[:-1]])
        block_id = rng.permutation(int(blocks.sum()))          # blocks claimed as nodes came up
        block_net = CALICO_POOL[0] + block_id.astype(np.int64) * 64
        slot = rank + 1
        ip[order] = block_net[block_start[nodes] + slot // 64] + slot % 64
        for k in np.flatnonzero(blocks):
            self.tunnel[int(k)] = int(block_net[block_start[k]])
        # a few pods borrow a free address from another node's last block
        used = per_node + 1
        for p in borrow.tolist():
            donors = np.flatnonzero((blocks > 0) & (used < blocks * 64) & (np.arange(self.n) != self.pod_node[p]))
            if donors.size == 0:
                self.pod_node[p] = -1      # nowhere to put it: it stays Pending
                self.pending[p] = True
                continue
            d = int(donors[rng.integers(donors.size)])
            ip[p] = block_net[block_start[d] + used[d] // 64] + used[d] % 64
            used[d] += 1
        return ip

    def pods(self) -> list[dict]:
        """The pods' objects; :attr:`pod_models` gets the :class:`Pod` the loader reads from each."""
        out = []
        models = self.pod_models = []
        # a template's container ports, as the loader reads them (by the containers list's identity)
        ports_of = _PodParser().ports
        node_names, node_ip_s = self.node_names, self.node_ip_s
        node_ip = self.node_ip.tolist()
        proxy_sfx = _unique_suffixes(DAEMON_SUFFIX_BASE, self.n)
        exporter_sfx = _unique_suffixes(2 * DAEMON_SUFFIX_BASE, self.n)
        for k in range(self.n):
            node, nip = node_names[k], node_ip_s[k]
            host = []
            if self.ppn >= 1:
                host.append(("kube-system", f"kube-proxy-{proxy_sfx[k]}", {"k8s-app": "kube-proxy"}, _KUBE_PROXY))
            if self.ppn >= 2:
                host.append(("monitoring", f"node-exporter-{exporter_sfx[k]}",
                             {"app.kubernetes.io/name": "node-exporter"}, _NODE_EXPORTER))
            if k == 0 and self.apiserver:
                host.append(("kube-system", f"kube-apiserver-{node}", {"component": "kube-apiserver",
                                                                       "tier": "control-plane"}, _APISERVER))
            for ns, name, labels, containers in host:
                out.append(self._host_pod(ns, name, labels, containers, node, nip))
                models.append(_pod_model(ns, name, node, True, node_ip[k], True, False,
                                         ports_of({"containers": containers})[0], labels))
        templates = self._templates()
        ips = _ip_strings(self.pod_ip)
        names = _unique_suffixes(0, self.pod_node.size)
        pod_node, pod_deploy, pod_version = self.pod_node.tolist(), self.pod_deploy.tolist(), self.pod_version.tolist()
        pending, terminating, not_ready = self.pending.tolist(), self.terminating.tolist(), self.not_ready.tolist()
        pod_ip = self.pod_ip.tolist()
        template_ports = [[ports_of({"containers": v[3]})[0] for v in versions] for versions in templates]
        for i in range(len(pod_node)):
            d = pod_deploy[i]
            v = pod_version[i] if d >= 0 else 0      # CoreDNS (-1): the last template
            ns, prefix, labels, containers = templates[d][v]
            name = prefix + names[i]
            meta = {"name": name, "namespace": ns, "labels": labels}
            if pending[i]:
                out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": containers},
                            "status": {"phase": "Pending", "conditions": _UNSCHEDULABLE}})
                models.append(_pod_model(ns, name, None, False, None, False, False, template_ports[d][v], labels))
                continue
            k = pod_node[i]
            term = terminating[i]
            if term:
                meta["deletionTimestamp"] = _DELETED_AT
                meta["deletionGracePeriodSeconds"] = 30
            ip = ips[i]
            node = node_names[k]
            unready = not_ready[i]
            out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                        "spec": {"nodeName": node, "containers": containers},
                        "status": {"phase": "Running", "hostIP": node_ip_s[k], "podIP": ip, "podIPs": [{"ip": ip}],
                                   "conditions": _NOT_READY if unready else _READY}})
            models.append(_pod_model(ns, name, node, False, pod_ip[i], not unready, term, template_ports[d][v],
                                     labels))
        return out

    @staticmethod
    def _host_pod(ns, name, labels, containers, node, nip) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "hostNetwork": True, "containers": containers},
                "status": {"phase": "Running", "hostIP": nip, "podIP": nip, "podIPs": [{"ip": nip}],
                           "conditions": _READY}}

    def _templates(self) -> list:
        """Per deployment, per version: (namespace, name prefix, labels, containers); CoreDNS last."""
        out = []
        for dep in self.deploys:
            versions = []
            for v in range(2 if dep["canary"] else 1):
                port = dep["port"] + v                       # the canary serves "http" elsewhere
                proto = "UDP" if dep["kind"] == "statsd" else "TCP"
                ports = [{"containerPort": port, "name": dep["kind"], "protocol": proto}]
                if dep["metrics"]:
                    ports.append({"containerPort": 9102, "name": "metrics", "protocol": "TCP"})
                containers = [{"name": dep["name"].split("-")[0],
                               "image": f"registry.example.com/{dep['ns']}/{dep['name']}:1.{v + 4}.0",
                               "ports": ports}]
                if dep["sidecar"]:
                    containers.append(_ENVOY)
                labels = {"app": dep["name"], "pod-template-hash": dep["hash"][v], "version": f"v{v + 1}"}
                versions.append((dep["ns"], f"{dep['name']}-{dep['hash'][v]}-", labels, containers))
            out.append(versions)
        out.append([("kube-system", "coredns-7c65d6cfc9-", {"k8s-app": "kube-dns", "pod-template-hash": "7c65d6cfc9"},
                     _COREDNS)])
        return out

    # ---------------------------------------------------------------- services
    def services(self) -> list[dict]:
        n_sel, rng = self.n_select, self.rng
        vips = (SERVICE_CIDR[0] + 256 + rng.choice((1 << (32 - SERVICE_CIDR[1])) - 512, size=n_sel + 1,
                                                   replace=False)).tolist()
        out = [
            _service("default", "kubernetes", KUBERNETES_VIP, [{"name": "https", "port": 443, "protocol": "TCP",
                                                                 "targetPort": 6443}], None),
            _service("kube-system", "kube-dns", DNS_VIP,
                     [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                      {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}],
                     {"k8s-app": "kube-dns"}),
            _service("monitoring", "node-exporter", None, [{"name": "metrics", "port": 9100, "protocol": "TCP",
                                                            "targetPort": "metrics"}],
                     {"app.kubernetes.io/name": "node-exporter"}),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy-db", "namespace": self.ns_names[0]},
             "spec": {"type": "ExternalName", "externalName": "legacy-db.corp.example.com",
                      "sessionAffinity": "None"}},
            _service(self.ns_names[0], "external-postgres", vips[-1],
                     [{"name": "postgres", "port": 5432, "protocol": "TCP", "targetPort": 5432}], None),
        ][: self.n_services]
        node_ports = rng.permutation(np.arange(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1)).tolist()
        u = rng.random((n_sel, 2))
        # service kinds (disjoint) and features, each on an exact share (at least one)
        perm = rng.permutation(n_sel)
        kind_of = np.zeros(n_sel, dtype=np.int64)           # 0 ClusterIP, 1 headless, 2 NodePort, 3 LB
        start = 0
        for code, share in ((1, P_HEADLESS), (2, P_NODEPORT), (3, P_LB)):
            k = _count(n_sel, share)
            kind_of[perm[start:start + k]] = code
            start += k
        has_vip = kind_of != 1
        named_target = _pick(rng, np.ones(n_sel, dtype=bool), P_NAMED_TARGET)
        ext_ips = _pick(rng, has_vip, P_EXTERNAL_IPS)
        etp_local = _pick(rng, kind_of >= 2, P_LOCAL_ETP)
        itp_local = _pick(rng, np.ones(n_sel, dtype=bool), P_LOCAL_ITP)
        affinity = _pick(rng, has_vip, P_AFFINITY)
        prefer_close = _pick(rng, np.ones(n_sel, dtype=bool), P_PREFER_CLOSE)
        no_match = set(rng.choice(n_sel, size=self._no_match_count(), replace=False).tolist()) if n_sel else set()
        d = 0
        n_lb = n_ext = 0
        for j in range(n_sel):
            if j in no_match:
                dep = {"name": f"{APP_WORDS[j % len(APP_WORDS)]}-legacy-{j}",
                       "ns": self.ns_names[j % len(self.ns_names)],
                       "kind": "http", "port": 8080, "metrics": False, "canary": 0}
            else:
                dep = self.deploys[d]
                d += 1
            r = u[j]
            headless = kind_of[j] == 1
            stype = ("ClusterIP", "ClusterIP", "NodePort", "LoadBalancer")[kind_of[j]]
            named = dep["canary"] or named_target[j]
            kind = dep["kind"]
            proto = "UDP" if kind == "statsd" else "TCP"
            ports = [{"name": kind, "port": {"http": 80, "grpc": 50051, "statsd": 8125}[kind], "protocol": proto,
                      "targetPort": kind if named else dep["port"]}]
            if dep["metrics"] and r[0] < 0.5:
                ports.append({"name": "metrics", "port": 9102, "protocol": "TCP", "targetPort": 9102})
            elif r[1] < 0.3:
                del ports[0]["name"]              # a single unnamed port
            if stype != "ClusterIP":
                if len(node_ports) < len(ports):
                    stype = "ClusterIP"           # the nodePort range is used up
                else:
                    for p in ports:
                        p["nodePort"] = node_ports.pop()
            svc = _service(dep["ns"], dep["name"], None if headless else vips[j], ports, {"app": dep["name"]},
                           stype=stype)
            spec = svc["spec"]
            if stype != "ClusterIP":
                spec["externalTrafficPolicy"] = "Local" if etp_local[j] else "Cluster"
            if stype == "LoadBalancer":
                svc["status"] = {"loadBalancer": {"ingress": [{"ip": _ntoa(LB_BASE + 1 + n_lb), "ipMode": "VIP"}]}}
                n_lb += 1
            if ext_ips[j]:
                spec["externalIPs"] = [_ntoa(EXT_IP_BASE + 1 + n_ext)]
                n_ext += 1
            if itp_local[j]:
                spec["internalTrafficPolicy"] = "Local"
            if affinity[j]:
                spec["sessionAffinity"] = "ClientIP"
                spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800 if r[1] < 0.5 else 3600}}
            if prefer_close[j]:
                spec["trafficDistribution"] = "PreferClose"
            out.append(svc)
        return out

    def manual_slices(self) -> list[dict]:
        """Slices of the selector-less services: the API server's own, and an outside database."""
        out = []
        if self.n_services >= 1:
            out.append(_manual_slice("default", "kubernetes", self.node_ip_s[0], "https", 6443))
        if self.n_services >= 5:
            out.append(_manual_slice(self.ns_names[0], "external-postgres", "10.20.30.40", "postgres", 5432))
        return out


def _pod_model(ns: str, name: str, node: str | None, host: bool, ip: int | None, ready: bool, terminating: bool,
               ports: tuple, labels: dict) -> Pod:
    """The :class:`Pod` the loader reads from a pod object with these fields (its ``Pod(...)``)."""
    pod = _object_new(Pod)
    pod.__dict__.update(namespace=ns, name=name, node=node, host_network=host, ip=ip, ready=ready,
                        terminating=terminating, ports=ports, labels=labels, node_known=True)
    return pod


def _service(ns: str, name: str, vip: int | None, ports: list, selector: dict | None, stype: str = "ClusterIP") -> dict:
    ip = _ntoa(vip) if vip is not None else "None"
    spec: dict = {"clusterIP": ip, "clusterIPs": [ip], "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"],
                  "ipFamilyPolicy": "SingleStack", "ports": ports, "sessionAffinity": "None", "type": stype}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec,
            "status": {"loadBalancer": {}}}


def _manual_slice(ns: str, service: str, address: str, port_name: str, port: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": service, "namespace": ns, "labels": {"kubernetes.io/service-name": service,
                                                                       "endpointslice.kubernetes.io/managed-by":
                                                                           "endpointslicemirroring-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}
