"""The forwarding tables (:func:`fastpath.cluster.compile.compile_forwarding`) against the model.

Each table is read back whole (every occupied slot of an exact table, every prefix of
the route table) and compared with what the rules of ``docs/dataplane.md`` derive from
the :class:`~fastpath.cluster.model.Cluster` directly: hand-made clusters first, then
random ones (``tests/naive/pipeline.py`` builds the expected routes).
"""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.addr import cni_mac, int_to_mac
from fastpath.cluster.compile import ForwardingTables, compile_forwarding, fdb_key
from fastpath.cluster.load import load_cluster
from fastpath.cluster.model import Cluster, Node
from fastpath.tables.exact import EMPTY, ExactTable, pack2_np, pack3_np
from fastpath.cluster.hostside import NH_NO_MASQUERADE, NH_NODE_NOT_IN_INPUT
from naive.pipeline import HOST_PROCESS, NaiveNetwork, ip, random_cluster
from naive.pipeline import make_pod as _pod

TCP, UDP, SCTP = 6, 17, 132



def contents(table: ExactTable) -> dict[int, int]:
    """Every key -> value the table holds."""
    used = table.keys != EMPTY
    out = dict(zip(table.keys[used].tolist(), table.values[used].tolist()))
    assert len(out) == len(table)
    return out


def bridged(cluster: Cluster) -> list[int]:
    """Pods on a node's bridge: an IP, a node of the input, not hostNetwork, not a node's address."""
    names = {n.name for n in cluster.nodes}
    node_ips = {a for n in cluster.nodes for a in (n.internal_ip, n.external_ip) if a is not None}
    return [i for i, p in enumerate(cluster.pods)
            if p.ip is not None and p.node in names and not p.host_network and p.ip not in node_ips]


def check_tables(cluster: Cluster, t: ForwardingTables) -> None:
    node_index = {n.name: i for i, n in enumerate(cluster.nodes)}
    pod_index = {p.key: i for i, p in enumerate(cluster.pods)}
    on_bridge = bridged(cluster)
    nw = NaiveNetwork(cluster)

    assert t.node_names == [n.name for n in cluster.nodes]
    assert t.pod_names == [f"{p.namespace}/{p.name}" for p in cluster.pods]
    assert t.node_ip.tolist() == [n.internal_ip or 0 for n in cluster.nodes]
    assert t.pod_ip.tolist() == [p.ip or 0 for p in cluster.pods]
    assert t.pod_node.tolist() == [node_index.get(p.node, -1) if p.node else -1 for p in cluster.pods]
    assert [t.ns_names[k] for k in t.pod_ns] == [p.namespace for p in cluster.pods]

    # node by IP: every InternalIP and ExternalIP
    want_nodes = {}
    for i, n in enumerate(cluster.nodes):
        for a in (n.internal_ip, n.external_ip):
            if a is not None:
                want_nodes.setdefault(a, i)
    assert contents(t.node_by_ip) == want_nodes

    # pod by IP: bridged pods only
    assert contents(t.pod_by_ip) == {cluster.pods[i].ip: i for i in on_bridge}

    # neighbour table: (node, pod IP) -> 0a:58 + the IP's bytes
    want_neigh = {}
    for i in on_bridge:
        p = cluster.pods[i]
        mac = int_to_mac(cni_mac(p.ip))
        assert mac == "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(p.ip).packed)
        want_neigh[int(pack2_np(node_index[p.node], p.ip))] = int(mac.replace(":", ""), 16)
    assert contents(t.neighbours) == want_neigh

    # FDB: (node, MAC) -> port; the port leads to the pod; veths numbered 1.. per node in pod order
    fdb = contents(t.fdb)
    assert len(fdb) == len(on_bridge) == t.port_pod.size == t.port_veth.size
    assert sorted(fdb.values()) == list(range(len(on_bridge)))
    veths: dict[str, list[tuple[int, int]]] = {}
    for i in on_bridge:
        p = cluster.pods[i]
        port = fdb[int(fdb_key(node_index[p.node], cni_mac(p.ip)))]
        assert t.port_pod[port] == i
        veths.setdefault(p.node, []).append((i, int(t.port_veth[port])))
    for node, pairs in veths.items():
        assert [v for _, v in sorted(pairs)] == list(range(1, len(pairs) + 1)), node

    # listening ports: every declared (pod, proto, port), and every one an EndpointSlice lists a
    # serving endpoint under; hostNetwork ones (and slices' node addresses) per node, first pod wins
    want_listen = {int(pack3_np(i, cp.proto, cp.port)) for i, p in enumerate(cluster.pods) for cp in p.ports}
    want_listen |= {int(pack3_np(pod_index[k], pr, po)) for k, pr, po in nw.served}
    want_host = {int(pack3_np(node_index[n], pr, po)): -2 if who == HOST_PROCESS else pod_index[who]
                 for (n, pr, po), who in nw.host_listeners.items()}
    got_listen = {int(pack3_np(i, int(e) >> 16, int(e) & 0xFFFF)) for i in range(len(cluster.pods))
                  for e in t.ports_of(i)}
    assert got_listen == want_listen
    rec = t.pod_rec.reshape(-1, 4)
    assert int((rec[:, 1:] != 0xFFFFFFFF).sum()) + t.more_ports.size == len(want_listen)
    for i in range(len(cluster.pods)):
        assert list(t.ports_of(i)) == sorted(t.ports_of(i))
        assert int(rec[i, 0]) == (int(t.pod_node[i]) & 0xFFFFFFFF)
        listens = sorted({(cp.proto << 16) | cp.port for cp in cluster.pods[i].ports}
                         | {(pr << 16) | po for k, pr, po in nw.served if k == cluster.pods[i].key})
        assert list(t.ports_of(i)) == listens
        assert t.more_off[i + 1] - t.more_off[i] == max(0, len(listens) - 3)

    # the join the forwarding kernel reads: (node, IP) -> MAC -> FDB port -> pod is pod by IP on that node
    for i in on_bridge:
        p = cluster.pods[i]
        nd = node_index[p.node]
        for other in {nd, (nd + 1) % len(cluster.nodes)}:
            mac = t.neighbours.get(int(pack2_np(other, p.ip)))
            port = t.fdb.get(int(fdb_key(other, mac))) if mac >= 0 else -1
            via_bridge = int(t.port_pod[port]) if port >= 0 else -1
            by_ip = t.pod_by_ip.get(p.ip)
            assert via_bridge == (by_ip if int(t.pod_node[by_ip]) == other else -1)
    assert contents(t.host_listen) == want_host

    # route table: pod CIDRs and Calico routes, next hop = node index
    net, length, hop = t.routes.prefixes()
    got_routes = set(zip(net.tolist(), length.tolist(), hop.tolist()))
    want_routes = {(int(r.network_address), r.prefixlen, node_index[n]) for r, n in nw.routes}
    want_routes |= {(a, 32, NH_NODE_NOT_IN_INPUT) for a in nw.orphans}         # pods on nodes not in the input
    assert {r for r in got_routes if r[2] != NH_NO_MASQUERADE} == want_routes
    assert not any(r[2] == NH_NO_MASQUERADE for r in got_routes) or nw.no_masquerade


# --------------------------------------------------------------------------- by hand

def two_nodes() -> Cluster:
    nodes = [
        Node("node-a", ip("192.168.1.10"), ip("203.0.113.10"), ((ip("10.244.0.0"), 24), (ip("10.245.0.0"), 24)), None),
        Node("node-b", ip("192.168.1.11"), None, ((ip("10.244.1.0"), 24),), None),
    ]
    pods = [
        _pod("b1", "node-b", "10.244.1.7", ("web", 8080, TCP)),
        _pod("a1", "node-a", "10.244.0.5", ("web", 8080, TCP), ("dns", 53, UDP), ("dns", 53, TCP)),
        _pod("a2", "node-a", "10.245.0.7", ("sig", 9000, SCTP)),
        _pod("kubelet-a", "node-a", "192.168.1.10", ("k", 10250, TCP), host=True, ns="kube-system"),
        _pod("other-a", "node-a", "192.168.1.10", ("k", 10250, TCP), ("k", 10255, TCP), host=True, ns="kube-system"),
        _pod("c1", "node-b", "172.16.0.5", ("web", 8080, TCP)),
        _pod("c1b", "node-b", "172.16.0.9"),
        _pod("c2", "node-a", "172.16.1.5"),
        _pod("c3", "node-b", "172.16.1.6"),
        _pod("pending", None, "10.244.0.99", ("web", 8080, TCP)),
        _pod("no-ip", "node-a", None, ("web", 8080, TCP)),
    ]
    return Cluster(nodes=nodes, pods=pods, services=[], slices=[])


def test_two_nodes_by_hand():
    cluster = two_nodes()
    t = compile_forwarding(cluster)
    # worked out by hand
    assert t.pod_by_ip.get(ip("10.244.0.5")) == 1
    assert t.pod_by_ip.get(ip("192.168.1.10")) == -1           # hostNetwork: the node's IP
    assert t.pod_by_ip.get(ip("10.244.0.99")) == -1            # no node
    assert t.node_by_ip.get(ip("203.0.113.10")) == 0
    assert t.node_by_ip.get(ip("192.168.1.11")) == 1
    assert t.neighbours.get(int(pack2_np(0, ip("10.244.0.5")))) == 0x0A58_0AF4_0005
    assert t.neighbours.get(int(pack2_np(1, ip("10.244.0.5")))) == -1   # not on node-b's bridge
    assert t.host_listen.get(int(pack3_np(0, TCP, 10250))) == 3          # the first declaring pod
    assert t.host_listen.get(int(pack3_np(0, TCP, 10255))) == 4
    assert t.host_listen.get(int(pack3_np(1, TCP, 10250))) == -1
    assert not t.listens(1, SCTP, 53)
    # veths: node-a's bridge has a1, a2, c2 (veth1..3); node-b's has b1, c1, c1b, c3
    veth = {t.pod_names[p]: (t.node_names[t.pod_node[p]], int(v)) for p, v in zip(t.port_pod, t.port_veth)}
    assert veth == {"default/a1": ("node-a", 1), "default/a2": ("node-a", 2), "default/c2": ("node-a", 3),
                    "default/b1": ("node-b", 1), "default/c1": ("node-b", 2), "default/c1b": ("node-b", 3),
                    "default/c3": ("node-b", 4)}
    net, length, hop = t.routes.prefixes()
    routes = {(str(ipaddress.ip_address(n)) + f"/{ln}", h)
              for n, ln, h in zip(net.tolist(), length.tolist(), hop.tolist())}
    assert routes == {("10.244.0.0/24", 0), ("10.245.0.0/24", 0), ("10.244.1.0/24", 1),
                      ("172.16.0.0/26", 1),                      # one node uses the block
                      ("172.16.1.5/32", 0), ("172.16.1.6/32", 1)}  # shared block: host routes
    assert t.route_notes                                          # Calico-style routing is said
    check_tables(cluster, t)


def test_no_pods_no_routes():
    cluster = Cluster(nodes=[Node("n", ip("10.0.0.1"), None, (), None)], pods=[], services=[], slices=[])
    t = compile_forwarding(cluster)
    assert len(t.routes) == 0 and len(t.pod_by_ip) == 0 and t.port_pod.size == 0 and not t.route_notes
    assert t.routes.lookup(np.array([ip("10.0.0.1")], dtype=np.uint32))[0] == np.uint32(0xFFFFFFFF)
    check_tables(cluster, t)


def test_node_without_addresses():
    cluster = Cluster(nodes=[Node("bare", None, None, ((ip("10.244.0.0"), 24),), None)],
                      pods=[_pod("p", "bare", "10.244.0.3", ("w", 80, TCP))], services=[], slices=[])
    t = compile_forwarding(cluster)
    assert t.node_ip.tolist() == [0] and len(t.node_by_ip) == 0
    check_tables(cluster, t)


@pytest.mark.parametrize("name", ["small-list.json", "calico-list.json", "small-stream.yaml"])
def test_sample_clusters(data_dir, name):
    check_tables(cluster := load_cluster(data_dir / name), compile_forwarding(cluster))


def test_calico_sample_routes(data_dir):
    t = compile_forwarding(load_cluster(data_dir / "calico-list.json"))
    net, length, hop = t.routes.prefixes()
    routes = {(str(ipaddress.ip_address(n)) + f"/{ln}", t.node_names[h])
              for n, ln, h in zip(net.tolist(), length.tolist(), hop.tolist())}
    assert routes == {("10.244.0.0/24", "worker-1"), ("10.244.1.0/24", "worker-2"),
                      ("192.168.33.3/32", "worker-1"), ("192.168.33.4/32", "worker-1"),
                      ("192.168.33.9/32", "worker-2"), ("192.168.71.128/26", "worker-2")}


# --------------------------------------------------------------------------- random clusters

@pytest.mark.parametrize("seed", range(6))
def test_random_clusters(seed):
    # a pod inside another node's CIDR and a block overlapping a CIDR: see tests/test_pipeline.py
    cluster = random_cluster(np.random.default_rng(seed), misplaced=False, nested_cidr=False)
    check_tables(cluster, compile_forwarding(cluster))


@given(seed=st.integers(0, 2**32 - 1))
def test_random_clusters_hypothesis(seed):
    cluster = random_cluster(np.random.default_rng(seed), misplaced=False, nested_cidr=False)
    check_tables(cluster, compile_forwarding(cluster))
