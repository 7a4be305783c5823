"""The vectorized hostside tables equal their per-object twins (tests/naive/hostside.py).

:mod:`fastpath.cluster.hostside` builds what listens (EndpointSlice ports), the
hostPort DNAT and the routes of pods on nodes not in the input from columns
(:mod:`fastpath.cluster.columns`); the twins loop over the objects as the module
once did. Compared on random clusters (multi-address endpoints, hostPort claims
that collide, hostNetwork targets, pods on unknown nodes), on every real dump, on
``tests/data`` and on a synthetic cluster.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_real_dumps import REJECTED

from fastpath.cluster import columns
from fastpath.cluster.compile import compile_forwarding
from fastpath.cluster.endpoints import endpoints_for
from fastpath.cluster.hostside import orphan_routes, portmap_table, served_listeners
from fastpath.cluster.load import cluster_from_objects, load_cluster
from fastpath.cluster.model import (Cluster, ContainerPort, Endpoint, EndpointSlice, EndpointSlicePort, Node,
                                    Pod)
from fastpath.cluster.synth import synth_cluster
from fastpath.tables.lpm import RouteTable

from naive import hostside as naive

DATA = Path(__file__).resolve().parent / "data"
DUMPS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-k8s-dumps"


def _inputs() -> list[Path]:
    out = sorted(p for p in DATA.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    if DUMPS.is_dir():      # the dumps the loader rightly refuses are test_real_dumps.py's to check
        out += sorted(p for p in DUMPS.iterdir()
                      if p.name != "SOURCES.md" and not p.name.startswith(".") and p.name not in REJECTED)
    return out


def check_same(cluster: Cluster) -> None:
    """Every hostside table of ``cluster``, vectorized and naive, is identical (order included)."""
    columns.forget()
    slices = endpoints_for(cluster)
    t = compile_forwarding(cluster, slices=slices)
    cols = columns.pod_columns(cluster.pods, cluster.nodes)
    pod_host = np.array([p.host_network for p in cluster.pods], dtype=bool)
    pod_index = {f"{p.namespace}/{p.name}": i for i, p in enumerate(cluster.pods)}

    got = served_listeners(columns.endpoint_columns(slices, cols), t.pod_by_ip, t.node_by_ip, pod_host, t.pod_node)
    want = naive.served_listeners(slices, t.pod_by_ip, t.node_by_ip, pod_index, pod_host, t.pod_node)
    for g, w in zip(got, want):
        assert g.dtype.kind == w.dtype.kind
        assert g.tolist() == w.tolist()

    (pm, bits), (pm_n, bits_n) = portmap_table(cluster.nodes, cols, t.pod_node), \
        naive.portmap_table(cluster.nodes, cluster.pods, t.pod_node)
    assert np.array_equal(pm.slots, pm_n.slots)
    assert np.array_equal(bits, bits_n)

    node_index = {n.name: i for i, n in enumerate(cluster.nodes)}
    taken = np.concatenate([t.node_by_ip.keys.astype(np.uint32), t.pod_by_ip.keys.astype(np.uint32)])
    r, r_n = RouteTable(), RouteTable()
    assert orphan_routes(r, cols, taken) == naive.orphan_routes(r_n, cluster.pods, node_index, taken)
    for a, b in zip(r.prefixes(), r_n.prefixes()):
        assert np.array_equal(a, b)


def _ip(rng, base: int, span: int) -> int:
    return base + int(rng.integers(0, span))


def random_cluster(seed: int) -> Cluster:
    """Nodes, pods and slices drawn to hit every branch of the three tables."""
    rng = np.random.default_rng(seed)
    n_nodes = int(rng.integers(0, 5))
    nodes = [Node(name=f"n{i}", internal_ip=0xC0A80000 + i if rng.random() < 0.9 else None,
                  external_ip=0xCB007100 + i if rng.random() < 0.5 else None,
                  pod_cidrs=((0x0AF40000 + (i << 8), 24),), zone=None) for i in range(n_nodes)]
    shared_ports = tuple(ContainerPort(container="c", port=80, proto=6, name="http", host_port=8080)
                         for _ in range(1))
    pods = []
    used = set()
    for j in range(int(rng.integers(0, 25))):
        node = f"n{int(rng.integers(0, n_nodes + 2))}" if rng.random() < 0.9 else None   # n{N}, n{N+1}: unknown
        host = rng.random() < 0.2
        ip = None
        if rng.random() < 0.9:
            if host and node is not None and node in {n.name for n in nodes}:
                ip = next(n.internal_ip for n in nodes if n.name == node)
            else:
                ip = _ip(rng, 0x0AF40000, 6 << 8)
                if ip in used:
                    ip = None
                else:
                    used.add(ip)
        if rng.random() < 0.3:
            ports = shared_ports                               # a template's tuple, shared by replicas
        else:
            ports = tuple(ContainerPort(container=f"c{k}", port=int(rng.choice([53, 80, 443, 8080])),
                                        proto=int(rng.choice([6, 17, 132])), name=None,
                                        host_port=int(rng.choice([0, 80, 8443, 30000])) or None)
                          for k in range(int(rng.integers(0, 4))))
        pods.append(Pod(namespace=str(rng.choice(["a", "b"])), name=f"p{j}", node=node, host_network=host,
                        ip=ip, ready=bool(rng.random() < 0.8), terminating=False, ports=ports))
    node_ips = [a for n in nodes for a in (n.internal_ip, n.external_ip) if a is not None]
    pod_ips = [p.ip for p in pods if p.ip is not None]
    slices = []
    for s in range(int(rng.integers(0, 5))):
        sports = tuple(EndpointSlicePort(name=None, port=int(rng.choice([0, 53, 80, 6443])),
                                         proto=int(rng.choice([6, 17]))) for _ in range(int(rng.integers(0, 3))))
        eps = []
        for _ in range(int(rng.integers(0, 5))):
            pool = node_ips + pod_ips + [0x08080808]
            addrs = tuple(int(rng.choice(pool)) for _ in range(int(rng.integers(0, 3))))
            target = f"{rng.choice(['a', 'b'])}/p{int(rng.integers(0, len(pods) + 2))}" if rng.random() < 0.7 \
                else None
            eps.append(Endpoint(addresses=addrs, ready=True, serving=bool(rng.random() < 0.8), terminating=False,
                                node=None, zone=None, hint_zones=(), target_pod=target))
        slices.append(EndpointSlice(namespace="a", name=f"s{s}", service=f"svc{s}", ports=sports,
                                    endpoints=tuple(eps)))
    return Cluster(nodes=nodes, pods=pods, services=[], slices=slices)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_clusters(seed):
    check_same(random_cluster(seed))


@pytest.mark.parametrize("path", _inputs(), ids=lambda p: p.name)
def test_real_and_sample_inputs(path):
    check_same(load_cluster(path))


def test_synthetic_cluster():
    check_same(cluster_from_objects([synth_cluster(20, 8, 30)]))


def test_columns_follow_the_pod_list():
    """A changed pod list makes new columns; the same list gives the kept ones."""
    cluster = random_cluster(7)
    a = columns.pod_columns(cluster.pods, cluster.nodes)
    assert columns.pod_columns(cluster.pods, cluster.nodes) is a
    cluster.pods.append(Pod(namespace="z", name="new", node=None, host_network=False, ip=None, ready=True,
                            terminating=False, ports=()))
    b = columns.pod_columns(cluster.pods, cluster.nodes)
    assert b is not a and b.names[-1] == "z/new" and len(b.names) == len(a.names) + 1
