"""Node hints (``hints.forNodes``, trafficDistribution PreferSameNode, KEP-3015) in the service stage.

kube-proxy's ``topologyModeFromHints``: when every Ready endpoint carries node hints and
one names the receiving node, only the endpoints hinted for that node are used; node
hints are checked before zone hints; otherwise zone hints, then the cluster view.
Checked by hand here and against the slow twin (tests/naive/services.py) on random
clusters, given slices and slices fastpath derives itself.
"""
from __future__ import annotations

import random

import pytest

from fastpath.cluster.load import cluster_from_objects
from fastpath.tables.balancers import F_NODE_HINTS
from fastpath.tables.services import compile_services
from fastpath.cluster.model import Endpoint
from naive.services import BALANCERS, random_cluster, random_flows
from test_services import CLIENT, POD0, POD1, VIP, check_same, one, small_cluster

NODE0, NODE1 = 0xC0A80001, 0xC0A80002          # node-0 and node-1 InternalIPs (192.168.0.1/.2)


def _eps(node_hints: dict, zone_hints: dict | None = None) -> tuple:
    zone_hints = zone_hints or {}
    return tuple(Endpoint((a,), True, True, False, n, z, zone_hints.get(a, ()), None, hint_nodes=node_hints.get(a, ()))
                 for a, n, z in ((POD0, "node-0", "za"), (POD1, "node-1", "zb")))


def _dnats(smap, c, src) -> set:
    return {one(smap, c, src, VIP, 80, sport=s)["dnat_ip"] for s in range(60)}


def test_node_hints_pick_the_receiving_nodes_endpoints():
    c = small_cluster(endpoints=_eps({POD0: ("node-0",), POD1: ("node-1",)}),
                      svc={"traffic_distribution": "PreferSameNode"})
    smap = compile_services(c)
    assert _dnats(smap, c, NODE0) == {POD0}
    assert _dnats(smap, c, NODE1) == {POD1}
    # node-2 is named by no hint and there are no zone hints: every Ready endpoint
    assert _dnats(smap, c, CLIENT) == {POD0, POD1}


def test_node_hints_before_zone_hints_and_zone_fallback():
    # POD0 hinted for node-2's zone (zb) but for node-0 only; POD1 for node-1 and zone zb
    c = small_cluster(endpoints=_eps({POD0: ("node-0",), POD1: ("node-1",)}, {POD0: ("zb",), POD1: ("zb",)}))
    smap = compile_services(c)
    assert _dnats(smap, c, NODE0) == {POD0}          # node hint wins over node-0's zone (za: no zone hint)
    assert _dnats(smap, c, CLIENT) == {POD0, POD1}   # node-2: no node hint for it, zone zb: both hinted
    c2 = small_cluster(endpoints=_eps({POD0: ("node-0",), POD1: ("node-1",)}, {POD0: ("za",), POD1: ("zb",)}))
    assert _dnats(compile_services(c2), c2, CLIENT) == {POD1}   # falls back to zone hints


def test_node_hints_ignored_unless_every_ready_endpoint_has_them():
    c = small_cluster(endpoints=_eps({POD0: ("node-0",)}))
    smap = compile_services(c)
    assert not (smap.sp_flags & F_NODE_HINTS).any()
    assert _dnats(smap, c, NODE0) == {POD0, POD1}
    # hints naming only nodes the input lacks change nothing
    c2 = small_cluster(endpoints=_eps({POD0: ("node-9",), POD1: ("node-9",)}))
    assert _dnats(compile_services(c2), c2, NODE0) == {POD0, POD1}


@pytest.mark.parametrize("lb", BALANCERS)
def test_matches_twin_on_random_clusters_with_node_hints(lb):
    hinted = 0
    for seed in range(4):
        rng = random.Random(1000 + seed)
        c = random_cluster(rng, n_services=8)
        hinted += int((compile_services(c).sp_flags & F_NODE_HINTS).astype(bool).sum())
        check_same(c, random_flows(rng, c, 300), lb, seed=seed)
    assert hinted > 0, "the random clusters exercise node hints"


def _node(name, ip_, cidr):
    return {"kind": "Node", "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip_}]}}


def _pod(name, node, ip_):
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": ip_, "conditions": [{"type": "Ready", "status": "True"}]}}


def test_derived_slices_of_a_prefer_same_node_service():
    c = cluster_from_objects([
        _node("node-0", "192.168.0.1", "10.244.0.0/24"), _node("node-1", "192.168.0.2", "10.244.1.0/24"),
        _node("node-2", "192.168.0.3", "10.244.2.0/24"),
        _pod("web-0", "node-0", "10.244.0.10"), _pod("web-1", "node-1", "10.244.1.11"),
        {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "trafficDistribution": "PreferSameNode",
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}])
    smap = compile_services(c)
    assert {one(smap, c, NODE0, VIP, 80, sport=s)["dnat_ip"] for s in range(60)} == {POD0}
    assert {one(smap, c, NODE1, VIP, 80, sport=s)["dnat_ip"] for s in range(60)} == {POD1}
    # node-2 has no endpoint; both share its zone z1: the zone hints keep both
    assert {one(smap, c, 0xC0A80003, VIP, 80, sport=s)["dnat_ip"] for s in range(60)} == {POD0, POD1}
    rng = random.Random(5)
    flows = [{"src_ip": rng.choice([NODE0, NODE1, 0xC0A80003, 0x0AF40005]), "dst_ip": VIP, "src_port": 1000 + i,
              "dst_port": 80, "proto": 6} for i in range(200)]
    for lb in BALANCERS:
        check_same(c, flows, lb)
