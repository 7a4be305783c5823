"""Slow twin of :class:`fastpath.pipeline.DataPlane`: one flow at a time, plain dicts.

Written rule by rule from ``docs/dataplane.md`` (§1 who sends, §3 loopback, §4 the
service stage through a callback, §5–7 forwarding, §6 hops) and the spec's §1–2, with
the Calico route rule of :mod:`fastpath.cluster.compile`'s docstring. Tables are Python
dicts built straight from the :class:`~fastpath.cluster.model.Cluster`; longest-prefix
match scans every route with :mod:`ipaddress`. Nothing here is shared with the kernels.

A flow is a dict with ``src_ip``, ``dst_ip`` (ints), ``src_port``, ``dst_port``,
``proto``. A result is a dict with the result columns of interfaces.md as Python values:
``verdict`` and ``path`` strings, ``src_node``/``dst_node`` node names, ``src_pod``/
``dst_pod`` ``namespace/name``, ``service`` name (all ``None`` where null), ``dnat_ip``,
``dnat_port``, ``snat_ip``, ``hops`` ints.

The service stage (``service_stage(flow, src_pod, src_node) -> dict | None``) is given
the flow, the sender's pod key (or ``None``) and node name (or ``None``; for an external
client, the node that owns the destination). ``None`` means no frontend was hit. A hit
returns a dict with ``service`` (name), ``verdict`` (``None`` to go on forwarding, or
``"rejected"``/``"dropped"``), ``dnat_ip``, ``dnat_port``, ``snat_ip``, and optionally
``src_node`` (the receiving node it chose, for external clients).
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Optional

#: The loopback range (a martian from outside).
LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
#: Calico's IPAM block length (IPPool blockSize).
CALICO_BLOCK = 26

ServiceStage = Callable[[dict, Optional[str], Optional[str]], Optional[dict]]


def cni_mac(ip: int) -> str:
    """The CNI bridge plugin's MAC: ``0a:58:`` then the four address bytes."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed)


#: The host-listener value of a port something in the host namespace serves, no pod known.
HOST_PROCESS = "<host process>"


class NaiveNetwork:
    """The cluster's forwarding state as dicts (what each node's kernel would hold).

    ``non_masquerade``: CIDR strings whose egress keeps the pod address (ip-masq-agent);
    ``None``: the cluster's ip-masq-agent config if it has one, else masquerade everything.
    ``slices``: every EndpointSlice (default: the given ones and those the controller derives).
    """

    def __init__(self, cluster, non_masquerade=None, slices=None) -> None:
        self.cluster = cluster
        names = {n.name for n in cluster.nodes}
        # node IPs: InternalIP and ExternalIP (a node's own addresses win over anything from pods)
        self.node_by_ip: dict[int, str] = {}
        self.internal_ip: dict[str, Optional[int]] = {}
        for node in cluster.nodes:
            self.internal_ip[node.name] = node.internal_ip
            for ip in (node.internal_ip, node.external_ip):
                if ip is not None:
                    self.node_by_ip.setdefault(ip, node.name)
        # §1: in-cluster pod senders: a pod with an IP and a node of the input, not hostNetwork,
        # whose IP is not a node's
        self.pod_by_ip: dict[int, object] = {}
        for pod in cluster.pods:
            if pod.ip is not None and pod.node in names and not pod.host_network and pod.ip not in self.node_by_ip:
                self.pod_by_ip.setdefault(pod.ip, pod)
        # pods on nodes the input lacks: their addresses lead nowhere known
        self.orphans: set[int] = {p.ip for p in cluster.pods
                                  if p.ip is not None and p.node is not None and p.node not in names
                                  and p.ip not in self.node_by_ip and p.ip not in self.pod_by_ip}
        self.routes = self._routes(self)
        # neighbour table per node: (node, pod IP) -> MAC, pods on that node's bridge
        self.neighbours: dict[tuple[str, int], str] = {}
        # FDB per node bridge: (node, MAC) -> the pod behind that port
        self.fdb: dict[tuple[str, str], object] = {}
        for pod in self.pod_by_ip.values():
            mac = cni_mac(pod.ip)
            self.neighbours[(pod.node, pod.ip)] = mac
            self.fdb[(pod.node, mac)] = pod
        # a hostNetwork pod listens in its node's namespace
        self.host_listeners: dict[tuple[str, int, int], str] = {}
        for pod in cluster.pods:
            if pod.host_network and pod.node in names:
                for cp in pod.ports:
                    self.host_listeners.setdefault((pod.node, cp.proto, cp.port), pod.key)
        # §2 item 8: and whatever an EndpointSlice lists as serving there listens too
        self.served: set[tuple[str, int, int]] = set()        # (pod key, proto, port)
        pods_by_key = {p.key: p for p in cluster.pods}
        if slices is None:
            from fastpath.cluster.endpoints import endpoints_for
            slices = endpoints_for(cluster)
        for sl in slices:
            for e in sl.endpoints:
                if not e.serving:
                    continue
                for addr in e.addresses:
                    for sp in sl.ports:
                        if not sp.port:
                            continue
                        if addr in self.pod_by_ip:
                            self.served.add((self.pod_by_ip[addr].key, sp.proto, sp.port))
                        elif addr in self.node_by_ip:
                            node = self.node_by_ip[addr]
                            t = pods_by_key.get(e.target_pod) if e.target_pod else None
                            who = t.key if t is not None and t.host_network and t.node == node else HOST_PROCESS
                            self.host_listeners.setdefault((node, sp.proto, sp.port), who)
        # §3 item 10: hostPort, the CNI portmap DNAT at every address of the pod's node
        self.portmap: dict[tuple[int, int, int], tuple[int, int]] = {}
        by_name = {n.name: n for n in cluster.nodes}
        for pod in cluster.pods:
            if pod.host_network or pod.ip is None or pod.node not in names:
                continue
            for cp in pod.ports:
                if getattr(cp, "host_port", None):
                    n = by_name[pod.node]
                    for addr in (n.internal_ip, n.external_ip):
                        if addr is not None:
                            self.portmap.setdefault((addr, cp.proto, cp.host_port), (pod.ip, cp.port))
        # §2 item 7: ip-masq-agent
        masq = getattr(cluster, "masquerade", None)
        self.no_masquerade: list = []
        if non_masquerade is not None:
            self.no_masquerade = [ipaddress.ip_network(c, strict=False) for c in non_masquerade]
        elif masq is not None:
            self.no_masquerade = [ipaddress.ip_network((n, ln), strict=False) for n, ln in masq.non_masquerade_cidrs]
        if (non_masquerade is not None or masq is not None) and not (masq is not None and masq.masq_link_local):
            self.no_masquerade.append(ipaddress.ip_network("169.254.0.0/16"))

    def owner(self, ip: int) -> Optional[str]:
        """The node an address belongs to: its own address first, then the routes; None for a pod
        on a node not in the input."""
        if ip in self.node_by_ip:
            return self.node_by_ip[ip]
        if ip in self.orphans:
            return None
        return self.route(ip)

    @staticmethod
    def _routes(nw) -> list[tuple[ipaddress.IPv4Network, str]]:
        """Every node's pod CIDRs, plus Calico block or host routes for bridged pods outside their node's."""
        cluster = nw.cluster
        own_nodes = {n.name for n in cluster.nodes}
        routes = []
        cidrs = []
        own: dict[str, list] = {}
        for node in cluster.nodes:
            for net, length in node.pod_cidrs:
                cidr = ipaddress.ip_network((net, length))
                cidrs.append(cidr)
                own.setdefault(node.name, []).append(cidr)
                routes.append((cidr, node.name))
        outside = []
        for pod in cluster.pods:
            if pod.ip is None or pod.node not in own_nodes or pod.host_network or pod.ip in nw.node_by_ip:
                continue                    # bridged pods only
            addr = ipaddress.ip_address(pod.ip)
            if not any(addr in c for c in own.get(pod.node, [])):
                outside.append(pod)
        users: dict[ipaddress.IPv4Network, set] = {}
        for pod in outside:
            block = ipaddress.ip_network((pod.ip, CALICO_BLOCK), strict=False)
            users.setdefault(block, set()).add(pod.node)
        added = set()
        for pod in outside:
            block = ipaddress.ip_network((pod.ip, CALICO_BLOCK), strict=False)
            if len(users[block]) == 1 and not any(block.overlaps(c) for c in cidrs):
                route = (block, pod.node)
            else:
                route = (ipaddress.ip_network((pod.ip, 32)), pod.node)
            if route not in added:
                added.add(route)
                routes.append(route)
        return routes

    def route(self, ip: int) -> Optional[str]:
        """Longest-prefix match over the cluster route table, by scanning every route."""
        addr = ipaddress.ip_address(ip)
        best, best_len = None, -1
        for net, node in self.routes:
            if addr in net and net.prefixlen > best_len:
                best, best_len = node, net.prefixlen
        return best

    def pod_listens(self, pod, proto: int, port: int) -> bool:
        """Declared by a container, or listed by an EndpointSlice as a serving endpoint's port."""
        return any(cp.proto == proto and cp.port == port for cp in pod.ports) or (pod.key, proto, port) in self.served


def _result(flow: dict) -> dict:
    return {
        "verdict": None, "reason": None, "path": None, "src_node": None, "dst_node": None,
        "src_pod": None, "dst_pod": None, "service": None,
        "dnat_ip": flow["dst_ip"], "dnat_port": flow["dst_port"], "snat_ip": flow["src_ip"], "hops": 0,
    }


def _source_part(kind: str, src_node: Optional[str]) -> int:
    """§6 hops of the sending side: a pod's veth and cbr0, nothing for a host, the receiving node."""
    if kind == "pod":
        return 2
    if kind == "host":
        return 0
    return 1 if src_node is not None else 0


def resolve_one(net: NaiveNetwork, flow: dict, service_stage: Optional[ServiceStage] = None) -> dict:
    """Resolve one flow by the rules of docs/dataplane.md."""
    r = _result(flow)
    src, dst = flow["src_ip"], flow["dst_ip"]
    proto, dport = flow["proto"], flow["dst_port"]

    # §1 who sends
    src_pod = net.pod_by_ip.get(src)
    if src_pod is not None:
        kind, src_node = "pod", src_pod.node
        r["src_pod"] = src_pod.key
    elif src in net.node_by_ip:
        kind, src_node = "host", net.node_by_ip[src]
    else:
        kind, src_node = "external", None
    r["src_node"] = src_node

    # §3 loopback
    is_loopback = ipaddress.ip_address(dst) in LOOPBACK_NET
    if (kind != "external" and is_loopback) or (kind == "pod" and dst == src):
        r["path"], r["hops"], r["dst_node"] = "loopback", 0, src_node
        if kind == "pod":
            r["dst_pod"] = src_pod.key
            listens = net.pod_listens(src_pod, proto, dport)
        else:
            # a host sender has no pod of its own: the doc's "the sender's" pod is read as
            # the hostNetwork pod that listens there, as §6 names it (null when none)
            listener = net.host_listeners.get((src_node, proto, dport))
            r["dst_pod"] = None if listener == HOST_PROCESS else listener
            listens = listener is not None
        r["verdict"] = "delivered" if listens else "refused"
        r["reason"] = None if listens else "no-listener"
        return r
    if kind == "external" and is_loopback:
        r["verdict"], r["reason"], r["path"] = "dropped", "martian", "none"
        return r

    # hostPort: the CNI portmap plugin's DNAT, before kube-proxy (which then sees a pod address)
    mapped = net.portmap.get((dst, proto, dport))
    if mapped is not None:
        dst, dport = mapped
        r["dnat_ip"], r["dnat_port"] = dst, dport

    # §1, external: the receiving node owns the destination (node IP, or route)
    if kind == "external":
        owner = net.owner(dst)
        src_node = owner
        r["src_node"] = owner

    # §4 service stage
    if service_stage is not None and mapped is None:
        hit = service_stage(flow, r["src_pod"], src_node)
        if hit is not None:
            r["service"] = hit["service"]
            r["dnat_ip"], r["dnat_port"], r["snat_ip"] = hit["dnat_ip"], hit["dnat_port"], hit["snat_ip"]
            if kind == "external" and hit.get("src_node") is not None:
                src_node = hit["src_node"]
                r["src_node"] = src_node
            if hit.get("verdict") is not None:
                r["verdict"], r["reason"], r["path"] = hit["verdict"], hit["reason"], "none"
                r["hops"] = _source_part(kind, src_node)
                return r
            dst, dport = r["dnat_ip"], r["dnat_port"]
            if kind == "external" and src_node is None:
                # no receiving node yet: the one that owns the rewritten destination
                src_node = net.owner(dst)
                r["src_node"] = src_node
    source_part = _source_part(kind, src_node)

    def crossings(dst_node: str) -> int:
        if src_node is None or dst_node == src_node:
            return 0
        return 1 if kind == "external" else 2

    def path_to(dst_node: str, host_dst: bool) -> str:
        if kind == "external":
            return "external"
        if dst_node != src_node:
            return "routed"
        return "loopback" if (kind == "host" and host_dst) else "bridge"

    # §6 a node's own address: its host namespace (before any route derived from pods)
    if dst in net.node_by_ip:
        dst_node = net.node_by_ip[dst]
        r["dst_node"] = dst_node
        listener = net.host_listeners.get((dst_node, proto, dport))
        r["dst_pod"] = None if listener == HOST_PROCESS else listener
        r["verdict"], r["reason"] = ("delivered", None) if listener is not None else ("refused", "no-listener")
        r["path"] = path_to(dst_node, True)
        r["hops"] = source_part + crossings(dst_node)
        return r

    # a pod on a node the input does not hold: nowhere known to go
    if dst in net.orphans:
        r["verdict"], r["reason"], r["path"], r["hops"] = "dropped", "node-not-in-input", "none", source_part
        return r

    # §5 route hit: node, neighbour table, FDB, listener
    dst_node = net.route(dst)
    if dst_node is not None:
        r["dst_node"] = dst_node
        mac = net.neighbours.get((dst_node, dst))
        pod = net.fdb.get((dst_node, mac)) if mac is not None else None
        if pod is None:
            r["verdict"], r["reason"], r["path"] = "dropped", "no-such-pod", "none"
            r["hops"] = source_part + crossings(dst_node)
            return r
        r["dst_pod"] = pod.key
        listens = net.pod_listens(pod, proto, dport)
        r["verdict"], r["reason"] = ("delivered", None) if listens else ("refused", "no-listener")
        r["path"] = path_to(dst_node, False)
        own_bridge = kind == "pod" and dst_node == src_node
        r["hops"] = source_part + crossings(dst_node) + (1 if own_bridge else 2)
        return r

    # §7 route miss, not a node IP: leaves the cluster
    if kind == "external":
        r["verdict"], r["reason"], r["path"], r["hops"] = "dropped", "no-route", "none", 0
        r["src_node"] = None
        return r
    r["verdict"], r["path"] = "egress", "external"
    kept = any(ipaddress.ip_address(dst) in c for c in net.no_masquerade)   # ip-masq-agent
    if kind == "pod" and not kept:          # pods are masqueraded; a host keeps its own address
        r["snat_ip"] = net.internal_ip[src_node]
    r["hops"] = source_part + 1
    return r


def naive_resolve(cluster, flows: list[dict], service_stage: Optional[ServiceStage] = None,
                  non_masquerade=None) -> list[dict]:
    """Resolve ``flows`` (dicts) against ``cluster``, one at a time, in order.

    Parameters
    ----------
    cluster
        A :class:`fastpath.cluster.model.Cluster`.
    flows
        Dicts with ``src_ip``, ``dst_ip`` (ints), ``src_port``, ``dst_port``, ``proto``.
    service_stage
        ``service_stage(flow, src_pod, src_node) -> dict | None`` (see the module
        docstring); ``None`` for clusters without services.
    non_masquerade
        CIDR strings (``--non-masquerade-cidrs``); ``None``: the cluster's ip-masq-agent config.

    Returns
    -------
    list of dict
        One result per flow with the result columns of interfaces.md.
    """
    net = NaiveNetwork(cluster, non_masquerade)
    return [resolve_one(net, f, service_stage) for f in flows]


# --------------------------------------------------------------------------- random inputs
# Small random clusters and traces that reach every rule above (shared by
# tests/test_pipeline.py and tests/test_compile.py).

#: Ports containers declare in random clusters (few, so flows often hit one).
PORTS = (53, 80, 443, 8080, 9000)
#: TCP, UDP, SCTP.
PROTOS = (6, 17, 132)


def ip(text: str) -> int:
    """Dotted quad to its integer value."""
    return int(ipaddress.ip_address(text))


_ip = ip


def make_pod(name, node, addr, *ports, host=False, ns="default"):
    """A Ready pod by hand: ``ports`` as (container, port, proto) triples."""
    from fastpath.cluster.model import ContainerPort, Pod

    return Pod(namespace=ns, name=name, node=node, host_network=host, ip=None if addr is None else ip(addr),
               ready=True, terminating=False,
               ports=tuple(ContainerPort(container=c, port=p, proto=pr, name=None) for c, p, pr in ports))


def random_cluster(rng, *, misplaced: bool = True, nested_cidr: bool = True):
    """A random cluster of 1–6 nodes exercising every forwarding rule.

    Nodes have one or two /24 pod CIDRs (one node may have a /27 that sits inside a
    Calico block), an InternalIP and sometimes an ExternalIP. Pods: bridged pods in
    their node's CIDRs, Calico-style pods in 172.16.0.0/16 blocks (sometimes one
    block shared by two nodes), hostNetwork pods, pods with no IP, pods with an IP
    but no node, multi-container pods with TCP/UDP/SCTP ports. ``misplaced`` allows
    pods whose IP lies in another node's pod CIDR; ``nested_cidr`` allows the /27.
    """
    from fastpath.cluster.model import Cluster, ContainerPort, Node, Pod

    n_nodes = int(rng.integers(1, 7))
    nodes = []
    for i in range(n_nodes):
        cidrs = [(_ip(f"10.244.{i}.0"), 24)]
        if rng.random() < 0.3:
            cidrs.append((_ip(f"10.245.{i}.0"), 24))
        if i == 0 and nested_cidr and rng.random() < 0.3:
            cidrs.append((_ip("172.16.9.32"), 27))     # inside Calico block 172.16.9.0/26
        ext = _ip(f"203.0.113.{10 + i}") if rng.random() < 0.4 else None
        nodes.append(Node(name=f"node-{i}", internal_ip=_ip(f"192.168.0.{10 + i}"), external_ip=ext,
                          pod_cidrs=tuple(cidrs), zone=None))
    pods = []
    used_ips: set = set()
    host_ports: set = set()

    def ports(node: str | None, host: bool) -> tuple:
        out, seen = [], set()
        for c in range(int(rng.integers(1, 4))):
            for _ in range(int(rng.integers(0, 4))):
                key = (int(rng.choice(PROTOS)), int(rng.choice(PORTS)))
                if key in seen or (host and (node,) + key in host_ports):
                    continue
                seen.add(key)
                if host:
                    host_ports.add((node,) + key)
                out.append(ContainerPort(container=f"c{c}", port=key[1], proto=key[0], name=None))
        return tuple(out)

    def fresh(make) -> int | None:
        for _ in range(20):
            ip = make()
            if ip not in used_ips:
                used_ips.add(ip)
                return ip
        return None

    for i, node in enumerate(nodes):
        for j in range(int(rng.integers(0, 7))):
            kinds = ["bridged", "bridged", "bridged", "calico", "host", "no-ip"] + (["misplaced"] if misplaced else [])
            kind = rng.choice(kinds)
            name, host, ip, where = f"p{i}-{j}", False, None, node.name
            if kind == "bridged":
                net, length = node.pod_cidrs[int(rng.integers(len(node.pod_cidrs)))]
                ip = fresh(lambda: net + int(rng.integers(2, (1 << (32 - length)) - 1)))
            elif kind == "calico":
                # blocks 172.16.{0..9}.{0,64}/26: nodes share a few of them
                ip = fresh(lambda: _ip(f"172.16.{int(rng.integers(0, 10))}.{int(rng.integers(1, 127))}"))
            elif kind == "host":
                host, ip = True, node.internal_ip
            elif kind == "misplaced":
                other = nodes[int(rng.integers(n_nodes))]
                net, length = other.pod_cidrs[0]
                ip = fresh(lambda: net + int(rng.integers(2, 254)))
            pods.append(Pod(namespace=str(rng.choice(["default", "shop"])), name=name, node=where,
                            host_network=host, ip=ip, ready=True, terminating=False,
                            ports=ports(where, host)))
    for j in range(int(rng.integers(0, 3))):   # not scheduled; one may still carry an IP
        net, _ = nodes[0].pod_cidrs[0]
        ip = fresh(lambda: net + int(rng.integers(2, 254))) if j == 0 else None
        pods.append(Pod(namespace="default", name=f"pending-{j}", node=None, host_network=False, ip=ip,
                        ready=False, terminating=False, ports=ports(None, False)))
    order = rng.permutation(len(pods))
    return Cluster(nodes=nodes, pods=[pods[k] for k in order], services=[], slices=[])


def random_flows(cluster, rng, n: int, *, external_ip_senders: bool = True) -> list[dict]:
    """``n`` flows mixing every kind of sender and destination of the rules above.

    ``external_ip_senders`` lets hosts send from their ExternalIP too (else only from
    their InternalIP).
    """
    pod_ips = [p.ip for p in cluster.pods if p.ip is not None]
    node_ips = [ip for nd in cluster.nodes for ip in (nd.internal_ip, nd.external_ip) if ip is not None]
    host_ips = node_ips if external_ip_senders else [nd.internal_ip for nd in cluster.nodes]
    cidrs = [c for nd in cluster.nodes for c in nd.pod_cidrs]
    bridged = [p.ip for p in cluster.pods if p.ip is not None and p.node is not None and not p.host_network]

    def in_cidr() -> int:
        net, length = cidrs[int(rng.integers(len(cidrs)))]
        return net + int(rng.integers(0, 1 << (32 - length)))

    def internet() -> int:
        return _ip("8.8.0.0") + int(rng.integers(0, 1 << 16))

    def calico_space() -> int:
        return _ip("172.16.0.0") + int(rng.integers(0, 10 * 256))

    def pick(items, fallback):
        return items[int(rng.integers(len(items)))] if items else fallback()

    sources = [
        lambda: pick(bridged, internet), lambda: pick(bridged, internet), lambda: pick(host_ips, internet),
        internet, in_cidr, lambda: pick(pod_ips, internet),
    ]
    flows = []
    for _ in range(n):
        src = sources[int(rng.integers(len(sources)))]()
        dests = [
            lambda: _ip("127.0.0.1") + int(rng.integers(0, 1 << 16)), lambda: src,
            lambda: pick(pod_ips, internet), lambda: pick(pod_ips, internet), lambda: pick(bridged, internet),
            in_cidr, calico_space, lambda: pick(node_ips, internet), internet,
        ]
        dst = dests[int(rng.integers(len(dests)))]()
        port = int(rng.choice(PORTS)) if rng.random() < 0.8 else int(rng.integers(1, 65536))
        flows.append({"src_ip": src, "dst_ip": dst, "src_port": int(rng.integers(1024, 65536)),
                      "dst_port": port, "proto": int(rng.choice(PROTOS))})
    return flows
