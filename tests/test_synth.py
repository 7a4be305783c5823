"""Synthetic clusters: valid for the loader, deterministic, and holding every promised feature."""
from __future__ import annotations

import ipaddress
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from fastpath.cluster.endpoints import derive_slices
from fastpath.cluster.load import cluster_from_objects, load_cluster
from fastpath.cluster.synth import _Gen, synth_cluster, write_cluster
from fastpath.errors import FastpathError
from naive.endpoints import canonical


def inside(value: int, network: str) -> bool:
    return ipaddress.IPv4Address(value) in ipaddress.IPv4Network(network)


@pytest.fixture(scope="module")
def medium() -> dict:
    return synth_cluster(60, 14, 160, seed=11)


@pytest.fixture(scope="module")
def medium_cluster(medium):
    return cluster_from_objects(medium["items"])


def test_deterministic_per_seed():
    a = synth_cluster(8, 10, 20, seed=3, addressing="calico")
    b = synth_cluster(8, 10, 20, seed=3, addressing="calico")
    c = synth_cluster(8, 10, 20, seed=4, addressing="calico")
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)


def test_counts(medium, medium_cluster):
    c = medium_cluster
    assert medium["apiVersion"] == "v1" and medium["kind"] == "List"
    assert (len(c.nodes), len(c.pods), len(c.services)) == (60, 60 * 14, 160)
    assert c.warnings == []
    kinds = Counter(o["kind"] for o in medium["items"])
    assert kinds["EndpointSlice"] == len(c.slices)


def test_nodes(medium_cluster):
    nodes = medium_cluster.nodes
    assert sum(n.external_ip is not None for n in nodes) == 15           # every fourth node
    assert Counter(n.zone for n in nodes) == {"eu-west-1a": 20, "eu-west-1b": 20, "eu-west-1c": 20}
    assert all(inside(n.internal_ip, "192.168.1.0/24") for n in nodes)
    # bridge: one /24 podCIDR a node from 10.244.0.0/16
    assert all(len(n.pod_cidrs) == 1 and n.pod_cidrs[0][1] == 24 and inside(n.pod_cidrs[0][0], "10.244.0.0/16")
               for n in nodes)
    assert "node-role.kubernetes.io/control-plane" in nodes[0].labels


def test_pods(medium_cluster):
    c = medium_cluster
    node_cidr = {n.name: n.pod_cidrs[0] for n in c.nodes}
    node_ip = {n.name: n.internal_ip for n in c.nodes}
    host = [p for p in c.pods if p.host_network]
    # kube-proxy and node-exporter on every node, plus the API server on the control plane
    assert Counter(p.name.rsplit("-", 1)[0] for p in host) == {"kube-proxy": 60, "node-exporter": 60,
                                                                 "kube-apiserver-node": 1}
    assert all(p.ip == node_ip[p.node] for p in host)
    for p in c.pods:
        if not p.host_network and p.ip is not None:
            network, length = node_cidr[p.node]
            assert p.ip >> (32 - length) == network >> (32 - length)
    assert Counter(p.node for p in c.pods if p.node).most_common(1)[0][1] <= 14
    assert sum(p.node is None and p.ip is None for p in c.pods) >= 1          # Pending
    assert sum(p.terminating for p in c.pods) >= 1
    assert sum(not p.ready and not p.terminating and p.ip is not None for p in c.pods) >= 1   # NotReady
    sidecar = [p for p in c.pods if {cp.container for cp in p.ports} >= {"envoy"} and len(p.ports) >= 3]
    assert sidecar and all(any(cp.port == 15001 for cp in p.ports) for p in sidecar)
    dns = [p for p in c.pods if p.labels.get("k8s-app") == "kube-dns"]
    assert len(dns) == 2 and all(p.namespace == "kube-system" and p.ready for p in dns)
    # Zipf-like replica counts: some deployments much bigger than others
    replicas = Counter(p.labels["app"] for p in c.pods if "app" in p.labels)
    assert max(replicas.values()) >= 4 * min(replicas.values())


def test_services(medium_cluster):
    c = medium_cluster
    svcs = {s.key: s for s in c.services}
    dns = svcs["kube-system/kube-dns"]
    assert dns.cluster_ips == (int(ipaddress.IPv4Address("10.96.0.10")),)
    assert svcs["default/kubernetes"].selector is None
    types = Counter(s.type for s in c.services)
    assert types["ExternalName"] == 1 and types["NodePort"] >= 1 and types["LoadBalancer"] >= 1
    headless = [s for s in c.services if s.headless]
    assert len(headless) >= 2 and all(s.cluster_ips == () for s in headless)
    vips = [ip for s in c.services for ip in s.cluster_ips]
    assert len(vips) == len(set(vips)) and all(inside(v, "10.96.0.0/12") for v in vips)
    node_ports = [p.node_port for s in c.services for p in s.ports if p.node_port is not None]
    assert node_ports and len(node_ports) == len(set(node_ports)) and all(30000 <= n <= 32767 for n in node_ports)
    assert all(p.node_port is not None for s in c.services if s.type in ("NodePort", "LoadBalancer") for p in s.ports)
    assert all(s.lb_ips for s in c.services if s.type == "LoadBalancer")
    assert any(s.external_ips for s in c.services)
    assert any(s.external_policy == "Local" for s in c.services)
    assert any(s.internal_policy == "Local" for s in c.services)
    assert any(s.session_affinity for s in c.services)
    assert any(s.traffic_distribution == "PreferClose" for s in c.services)
    assert any(isinstance(p.target_port, str) for s in c.services for p in s.ports)
    assert any(isinstance(p.target_port, int) for s in c.services if s.selector for p in s.ports)


def test_slices(medium_cluster):
    c = medium_cluster
    per = defaultdict(list)
    for s in c.slices:
        per[(s.namespace, s.service)].append(s)
    svcs = {(s.namespace, s.name): s for s in c.services}
    # every selector service has slices, the ExternalName service none
    assert all(key in per for key, s in svcs.items() if s.selector)
    assert not any(svcs[k].type == "ExternalName" for k in per)
    # a few selector services match no pod: one empty slice
    assert any(not s.endpoints for s in c.slices)
    # canaries map the name "http" to two numbers: two slices for one service
    assert any(len({sl.ports for sl in v}) > 1 for v in per.values())
    hinted = [e for s in c.slices if svcs[(s.namespace, s.service)].traffic_distribution == "PreferClose"
              for e in s.endpoints]
    assert hinted and all(e.hint_zones == (e.zone,) for e in hinted)
    assert all(not e.hint_zones for s in c.slices if svcs[(s.namespace, s.service)].traffic_distribution is None
               for e in s.endpoints)
    assert any(e.terminating and not e.ready for s in c.slices for e in s.endpoints)
    # the slices written are exactly what derivation gives for the cluster without them
    bare = cluster_from_objects(synth_cluster(60, 14, 160, seed=11, slices=False)["items"])
    manual = {"kubernetes", "external-postgres"}
    assert canonical([s for s in c.slices if s.service not in manual]) == canonical(derive_slices(bare))
    assert sorted(s.service for s in bare.slices) == sorted(manual)


def test_calico_addressing():
    c = cluster_from_objects(synth_cluster(40, 20, 30, seed=2, addressing="calico")["items"])
    assert all(n.pod_cidrs == () for n in c.nodes)
    bridged = [p for p in c.pods if not p.host_network and p.ip is not None]
    assert all(inside(p.ip, "10.128.0.0/9") for p in bridged)
    assert len(c.warnings) == 1 and f"{len(bridged)} pod IPs outside every node's pod CIDR" in c.warnings[0]
    block_nodes = defaultdict(set)
    for p in bridged:
        block_nodes[p.ip >> 6].add(p.node)
    shared = [b for b, ns in block_nodes.items() if len(ns) > 1]
    # blocks belong to one node each, except the few holding borrowed addresses
    assert 1 <= len(shared) <= 3 and len(block_nodes) >= 40
    # blocks are handed out in no particular node order (not one contiguous range per node)
    firsts = [min(b for b, ns in block_nodes.items() if n.name in ns) for n in c.nodes]
    assert firsts != sorted(firsts)


@pytest.mark.parametrize("addressing", ["bridge", "calico"])
@pytest.mark.parametrize("size", [(40, 20, 30), (3, 2, 6), (2, 1, 1)])
def test_generator_pods_are_the_loaders(addressing, size):
    # synth_cluster derives the slices from the generator's pods, not from reading its pod objects back
    g = _Gen(np.random.default_rng(2), *size, 3, 2, addressing)
    objects = g.nodes() + g.pods()
    loaded = cluster_from_objects(objects).pods
    assert len(g.pod_models) == len(loaded) == size[0] * size[1]
    assert [vars(p) for p in g.pod_models] == [vars(p) for p in loaded]        # labels too


def test_write_round_trip(tmp_path):
    obj = synth_cluster(500, 20, 300, seed=5)
    path = write_cluster(obj, tmp_path / "cluster.json")
    assert path == tmp_path / "cluster.json" and [p.name for p in tmp_path.iterdir()] == ["cluster.json"]
    c = load_cluster(path)
    kinds = Counter(o["kind"] for o in obj["items"])
    assert (len(c.nodes), len(c.pods), len(c.services), len(c.slices)) == \
        (500, 10_000, 300, kinds["EndpointSlice"])
    assert c.warnings == []


def test_write_is_atomic(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_cluster({"bad": object()}, path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["cluster.json"]


def test_tiny_and_bad_arguments():
    c = cluster_from_objects(synth_cluster(1, 0, 0)["items"])
    assert (len(c.nodes), len(c.pods), len(c.services)) == (1, 0, 0)
    c = cluster_from_objects(synth_cluster(2, 3, 2)["items"])
    assert (len(c.nodes), len(c.pods), len(c.services)) == (2, 6, 2)
    for args, kw in [((0, 1, 1), {}), ((1, 300, 1), {}), ((1, 1, 1), {"addressing": "flannel"}),
                     ((1, 1, 1), {"zones": 0}), ((40000, 1, 1), {}),
                     ((70000, 100, 1), {"addressing": "calico"})]:
        with pytest.raises(FastpathError, match="^synth: "):
            synth_cluster(*args, **kw)
