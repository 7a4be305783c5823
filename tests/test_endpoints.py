"""Endpoint derivation (the EndpointSlice controller's rules) against the slow twin and by hand."""
from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from fastpath.cluster.endpoints import derive_slices, endpoints_for
from fastpath.cluster.load import cluster_from_objects, load_cluster
from fastpath.cluster.model import (Cluster, ContainerPort, Endpoint, EndpointSlice, EndpointSlicePort, Node,
                                    Pod, Service, ServicePort)
from fastpath.cluster.synth import synth_cluster
from naive.endpoints import canonical, derive

DATA = Path(__file__).parent / "data"


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def by_service(slices):
    out: dict[str, list[EndpointSlice]] = {}
    for s in slices:
        out.setdefault(f"{s.namespace}/{s.service}", []).append(s)
    return out


# --------------------------------------------------------------------------- by hand

def test_small_list():
    c = load_cluster(DATA / "small-list.json")
    derived = by_service(derive_slices(c))
    # web, kube-dns and kubernetes have slices; legacy-db is ExternalName
    assert sorted(derived) == ["payments/api", "shop/cart", "shop/db", "shop/storefront"]
    (cart,) = derived["shop/cart"]
    assert cart.ports == (EndpointSlicePort(None, 9000, 6),)
    assert cart.endpoints == (
        Endpoint((ip("10.244.1.8"),), True, True, False, "node-b", "eu-west-1a", (), "shop/cart-5c6d7f9b8-pq2rs"),
        # terminating: not ready, still serving; the Pending pod (no IP, no node) is left out
        Endpoint((ip("10.244.2.5"),), False, True, True, "node-c", "eu-west-1b", (), "shop/cart-5c6d7f9b8-vw7xz"),
    )
    (front,) = derived["shop/storefront"]
    assert front.ports == (EndpointSlicePort("http", 8080, 6),)
    # PreferClose: each endpoint hinted to its own zone; the NotReady pod is neither ready nor serving
    assert [(e.ready, e.serving, e.hint_zones) for e in front.endpoints] == \
        [(True, True, ("eu-west-1a",)), (True, True, ("eu-west-1a",)), (False, False, ("eu-west-1b",))]
    (api,) = derived["payments/api"]
    assert api.ports == (EndpointSlicePort("https", 8443, 6), EndpointSlicePort("statsd", 8125, 17))
    all_slices = endpoints_for(c)
    assert all_slices[: len(c.slices)] == c.slices and len(all_slices) == len(c.slices) + 4
    assert len({(s.namespace, s.name) for s in all_slices}) == len(all_slices)


def test_named_port_resolved_per_pod():
    c = load_cluster(DATA / "small-stream.yaml")
    derived = by_service(derive_slices(c))
    # the IPv6 slice of demo/echo was skipped, so its IPv4 endpoints are derived
    echo = derived["demo/echo"]
    assert [(s.ports, [e.target_pod for e in s.endpoints]) for s in echo] == [
        ((EndpointSlicePort("http", 8080, 6),), ["demo/echo-6c9f7d8b5-2xv8q"]),
        ((EndpointSlicePort("http", 8081, 6),), ["demo/echo-7f4b9c6d2-k5m3n"]),
    ]
    (v1,) = derived["demo/echo-v1"]
    assert [e.target_pod for e in v1.endpoints] == ["demo/echo-6c9f7d8b5-2xv8q"]   # selector needs both labels


def _pod(name, labels, ports, ip_="10.0.0.1", node="n1", ready=True, terminating=False, ns="ns"):
    return Pod(namespace=ns, name=name, node=node, host_network=False, ip=ip(ip_) if ip_ else None, ready=ready,
               terminating=terminating, ports=tuple(ContainerPort("c", p, proto, n) for p, proto, n in ports),
               labels=labels)


def _svc(name, selector, ports, ns="ns", stype="ClusterIP", td=None):
    return Service(namespace=ns, name=name, type=stype, cluster_ips=(ip("10.96.0.5"),), headless=False,
                   ports=tuple(ServicePort(pn, port, proto, tp, None) for pn, port, proto, tp in ports),
                   selector=selector, external_ips=(), lb_ips=(), session_affinity=False, affinity_timeout=10800,
                   external_policy="Cluster", internal_policy="Cluster", traffic_distribution=td)


def test_missing_name_and_protocol_mismatch():
    pods = [
        _pod("a", {"app": "x"}, [(8080, 6, "http"), (9000, 6, "admin")], "10.0.0.1"),
        _pod("b", {"app": "x"}, [(8080, 6, "http")], "10.0.0.2"),                 # no "admin"
        _pod("c", {"app": "x"}, [(8080, 17, "http"), (9000, 6, "admin")], "10.0.0.3"),   # http is UDP here
        _pod("d", {"app": "x"}, [(8080, 6, "http")], None),                        # no IP yet
        _pod("e", {"app": "x"}, [(8080, 6, "http")], "10.0.0.5", node=None),       # no node
        _pod("f", {"app": "x"}, [(8080, 6, "http")], "10.0.0.6", ns="other"),      # other namespace
        _pod("g", {"app": "y"}, [(8080, 6, "http")], "10.0.0.7"),                  # other labels
    ]
    svc = _svc("s", {"app": "x"}, [("web", 80, 6, "http"), ("admin", 9000, 6, "admin")])
    c = Cluster(nodes=[Node("n1", ip("192.168.0.1"), None, (), "z1")], pods=pods, services=[svc], slices=[])
    got = [([(p.name, p.port) for p in s.ports], [e.target_pod for e in s.endpoints]) for s in derive_slices(c)]
    assert got == [([("web", 8080), ("admin", 9000)], ["ns/a"]),
                   ([("web", 8080)], ["ns/b"]),
                   ([("admin", 9000)], ["ns/c"])]
    assert canonical(derive_slices(c)) == derive(c)


def test_no_endpoints_cases():
    pods = [_pod("a", {"app": "x"}, [(8080, 6, "http")])]
    node = Node("n1", ip("192.168.0.1"), None, (), None)
    services = [
        _svc("nomatch", {"app": "nothing"}, [(None, 80, 6, 8080)]),
        _svc("noselector", None, [(None, 80, 6, 8080)]),
        _svc("empty", {}, [(None, 80, 6, 8080)]),
        _svc("extname", {"app": "x"}, [(None, 80, 6, 8080)], stype="ExternalName"),
        _svc("given", {"app": "x"}, [(None, 80, 6, 8080)]),
    ]
    given = EndpointSlice("ns", "given-abcde", "given", (), ())
    c = Cluster(nodes=[node], pods=pods, services=services, slices=[given])
    derived = derive_slices(c)
    # only the placeholder of the selector service that matches nothing
    assert [(s.service, s.ports, s.endpoints) for s in derived] == [("nomatch", (), ())]
    assert derive_slices(Cluster([node], pods, [], [])) == []


def test_names_unique_and_deterministic():
    c = load_cluster(DATA / "small-stream.yaml")
    a, b = derive_slices(c), derive_slices(c)
    assert [s.name for s in a] == [s.name for s in b]
    assert len({s.name for s in a}) == len(a)
    assert all(s.name.startswith(s.service + "-") and len(s.name) == len(s.service) + 6 for s in a)


# --------------------------------------------------------------------------- against the twin

def random_cluster(seed: int) -> Cluster:
    r = random.Random(seed)
    zones = [None, "z1", "z2"]
    nodes = [Node(f"n{i}", ip(f"192.168.0.{i + 1}"), None, (), r.choice(zones)) for i in range(r.randint(1, 4))]
    names = ["http", "grpc", "metrics", None]
    label_pool = {"app": ["a", "b", "c"], "tier": ["x", "y"], "track": ["stable", "canary"]}
    namespaces = ["ns1", "ns2", "ns3"][: r.randint(1, 3)]
    pods = []
    for i in range(r.randint(0, 40)):
        labels = {k: r.choice(v) for k, v in label_pool.items() if r.random() < 0.8}
        ports = []
        used = set()
        for _ in range(r.randint(0, 3)):
            port, proto = r.choice([80, 8080, 8081, 9000, 9090]), r.choice([6, 6, 17])
            if (port, proto) in used:
                continue
            used.add((port, proto))
            ports.append(ContainerPort(r.choice(["app", "envoy"]), port, proto, r.choice(names)))
        pods.append(Pod(namespace=r.choice(namespaces), name=f"p{i}", node=r.choice([n.name for n in nodes] + [None]),
                        host_network=r.random() < 0.1,
                        ip=None if r.random() < 0.1 else ip(f"10.0.{i // 250}.{i % 250}"),
                        ready=r.random() < 0.8, terminating=r.random() < 0.15, ports=tuple(ports), labels=labels))
    services = []
    for j in range(r.randint(0, 10)):
        sel = r.choice([None, {}] + [{k: r.choice(v) for k, v in r.sample(sorted(label_pool.items()), r.randint(1, 2))}
                                     for _ in range(6)])
        sports, seen = [], set()
        for k in range(r.randint(0, 3)):
            port, proto = r.choice([80, 443, 8080]), r.choice([6, 17])
            if (port, proto) in seen:
                continue
            seen.add((port, proto))
            target = r.choice([port, 8080, 9000, "http", "grpc", "metrics", "missing"])
            sports.append(ServicePort(f"p{k}" if r.random() < 0.7 else None, port, proto, target, None))
        services.append(Service(
            namespace=r.choice(namespaces), name=f"s{j}",
            type=r.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
            cluster_ips=(), headless=r.random() < 0.2, ports=tuple(sports), selector=sel, external_ips=(), lb_ips=(),
            session_affinity=False, affinity_timeout=10800, external_policy="Cluster", internal_policy="Cluster",
            traffic_distribution=r.choice([None, None, "PreferClose", "PreferSameNode", "Other"])))
    slices = []
    for s in services:
        if r.random() < 0.2:
            slices.append(EndpointSlice(s.namespace, f"{s.name}-given", s.name, (), ()))
    return Cluster(nodes=nodes, pods=pods, services=services, slices=slices)


@pytest.mark.parametrize("seed", range(150))
def test_matches_twin_on_random_clusters(seed):
    c = random_cluster(seed)
    assert canonical(derive_slices(c)) == derive(c)


@pytest.mark.parametrize("addressing", ["bridge", "calico"])
def test_matches_twin_on_synthetic_cluster(addressing):
    c = cluster_from_objects(synth_cluster(12, 14, 40, seed=7, addressing=addressing, slices=False)["items"])
    got = derive_slices(c)
    assert canonical(got) == derive(c)
    # canary deployments map "http" to two numbers: some service has two slices
    assert any(len(v) > 1 for v in by_service(got).values())
