"""The service stage against its slow twin (tests/naive/services.py), rule by rule and at random."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from fastpath.cluster.model import (Cluster, ContainerPort, Endpoint, EndpointSlice, EndpointSlicePort, Node, Pod,
                                    Service, ServicePort)
from fastpath.codes import DROPPED, PENDING, REASONS, REJECTED, VERDICTS
from fastpath.errors import FastpathError
from fastpath.pipeline import stage_reason
from fastpath.tables.services import ServiceStage, compile_services, explain_service
from naive.services import BALANCERS, NaiveServices, ip, random_cluster, random_flows


# --------------------------------------------------------------------------- harness

def classify(cluster: Cluster, src: np.ndarray) -> np.ndarray:
    """src_node as the pipeline's first kernel sets it: pod's node, node's own address, else -1."""
    names = {n.name: i for i, n in enumerate(cluster.nodes)}
    by_ip = {}
    for i, n in enumerate(cluster.nodes):
        for a in (n.internal_ip, n.external_ip):
            if a is not None:
                by_ip.setdefault(a, i)
    for p in cluster.pods:
        if p.ip is not None and p.node is not None and not p.host_network:
            by_ip[p.ip] = names[p.node]
    return np.array([by_ip.get(int(s), -1) for s in src], dtype=np.int32)


def arrays(flows: list[dict]) -> dict:
    cols = {k: np.array([f[k] for f in flows], dtype=dt) for k, dt in
            (("src_ip", np.uint32), ("dst_ip", np.uint32), ("src_port", np.uint16), ("dst_port", np.uint16),
             ("proto", np.uint8))}
    cols["ts"] = np.array([f["ts"] for f in flows], dtype=np.int64) if flows and "ts" in flows[0] else None
    timed = any("duration" in f for f in flows)
    cols["duration"] = np.array([np.nan if f.get("duration") is None else f["duration"] for f in flows],
                                dtype=np.float64) if timed else None
    return cols


def run_stage(stage: ServiceStage, cluster: Cluster, flows: list[dict], batches: int = 1,
              verdict: np.ndarray | None = None) -> dict:
    """Run the stage over ``flows`` split into ``batches``; return the output columns."""
    c = arrays(flows)
    n = len(flows)
    out = {"src_node": classify(cluster, c["src_ip"]), "verdict": np.full(n, PENDING, np.uint8)
           if verdict is None else verdict.copy(), "service": np.full(n, -1, np.int32),
           "dnat_ip": c["dst_ip"].copy(), "dnat_port": c["dst_port"].copy(), "snat_ip": c["src_ip"].copy()}
    cuts = sorted({0, n, *np.linspace(0, n, batches + 1).astype(int).tolist()})
    for a, b in zip(cuts[:-1], cuts[1:]):
        sl = slice(a, b)
        stage.run(c["src_ip"][sl], c["dst_ip"][sl], c["src_port"][sl], c["dst_port"][sl], c["proto"][sl],
                  None if c["ts"] is None else c["ts"][sl], np.full(b - a, -1, np.int32),
                  *(out[k][sl] for k in ("src_node", "verdict", "service", "dnat_ip", "dnat_port", "snat_ip")),
                  duration=None if c["duration"] is None else c["duration"][sl])
    return out


def as_naive(smap, cluster: Cluster, out: dict, flows: list[dict]) -> list:
    """Kernel output in the twin's shape (None where no frontend was hit)."""
    rows = []
    for i, f in enumerate(flows):
        v = int(out["verdict"][i])
        sp = int(out["service"][i])
        if sp < 0 and v == PENDING:
            rows.append(None)
            continue
        sn = int(out["src_node"][i])
        rows.append({"service": smap.names[sp] if sp >= 0 else None,
                     "verdict": None if v == PENDING else VERDICTS[v],
                     # the reason the pipeline reads off the row (balancers.stage_reason)
                     "reason": None if v == PENDING else (REASONS[int(stage_reason(np.uint8(v), sp, sn))] or None),
                     "dnat_ip": int(out["dnat_ip"][i]), "dnat_port": int(out["dnat_port"][i]),
                     "snat_ip": int(out["snat_ip"][i]),
                     "src_node": cluster.nodes[sn].name if sn >= 0 and sp >= 0 else None})
    return rows


def naive_rows(cluster, flows, **kw) -> list:
    rows = NaiveServices(cluster, **kw).run(flows)
    for r in rows:
        if r is not None and r["service"] is None:
            r["src_node"] = None
    return rows


def check_same(cluster, flows, lb, seed=0, m=251, batches=1, conn=30.0):
    smap = compile_services(cluster, lb=lb, seed=seed, maglev_size=m, conn_duration=conn)
    got = as_naive(smap, cluster, run_stage(ServiceStage(smap), cluster, flows, batches), flows)
    want = naive_rows(cluster, flows, lb=lb, seed=seed, maglev_size=m, conn_duration=conn)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is not None and w["service"] is not None and w["src_node"] is None:
            w = {**w, "src_node": None}
        assert g == w, f"flow {i} {flows[i]}: kernel {g} != twin {w}"
    return got


# --------------------------------------------------------------------------- a hand-built cluster

def small_cluster(**svc_kw) -> Cluster:
    """Two zones, three nodes, one service 'web' with endpoints on node-0 and node-1."""
    nodes = [Node("node-0", ip("192.168.0.1"), ip("203.0.113.1"), ((ip("10.244.0.0"), 24),), "za"),
             Node("node-1", ip("192.168.0.2"), None, ((ip("10.244.1.0"), 24),), "zb"),
             Node("node-2", ip("192.168.0.3"), None, ((ip("10.244.2.0"), 24),), "zb")]
    pods = [Pod("shop", f"web-{i}", f"node-{i % 2}", False, ip(f"10.244.{i % 2}.{10 + i}"), True, False,
                (ContainerPort("c", 8080, 6, "http"),)) for i in range(4)]
    pods.append(Pod("shop", "client", "node-2", False, ip("10.244.2.5"), True, False, ()))
    base = dict(namespace="shop", name="web", type="LoadBalancer", cluster_ips=(ip("10.96.0.10"),), headless=False,
                ports=(ServicePort("http", 80, 6, "http", 30080),), selector=None,
                external_ips=(ip("198.18.0.1"),), lb_ips=(ip("198.19.0.1"),), session_affinity=False,
                affinity_timeout=10800, external_policy="Cluster", internal_policy="Cluster",
                traffic_distribution=None)
    base.update(svc_kw.pop("svc", {}))
    eps = svc_kw.pop("endpoints", None)
    if eps is None:
        eps = tuple(Endpoint((p.ip,), True, True, False, p.node, "za" if p.node == "node-0" else "zb", (), p.key)
                    for p in pods[:4])
    services = [Service(**base),
                Service("shop", "empty", "ClusterIP", (ip("10.96.0.11"),), False, (ServicePort(None, 81, 6, 81, None),),
                        None, (), (), False, 10800, "Cluster", "Cluster", None),
                Service("shop", "db", "ClusterIP", (), True, (ServicePort("pg", 5432, 6, 5432, None),),
                        None, (), (), False, 10800, "Cluster", "Cluster", None),
                Service("shop", "legacy", "ExternalName", (), False, (), None, (), (), False, 10800, "Cluster",
                        "Cluster", None, "db.example.com")]
    slices = [EndpointSlice("shop", "web-x", "web", (EndpointSlicePort("http", 8080, 6),), eps)]
    return Cluster(nodes, pods, services, slices)


def one(stage_or_map, cluster, src, dst, dport, proto=6, sport=40000, ts=None, lb="random"):
    stage = stage_or_map if isinstance(stage_or_map, ServiceStage) else ServiceStage(stage_or_map)
    f = {"src_ip": src, "dst_ip": dst, "src_port": sport, "dst_port": dport, "proto": proto}
    if ts is not None:
        f["ts"] = ts
    out = run_stage(stage, cluster, [f])
    return {k: int(v[0]) for k, v in out.items()}


POD0, POD1, CLIENT = ip("10.244.0.10"), ip("10.244.1.11"), ip("10.244.2.5")
OUTSIDE = ip("100.64.0.9")
VIP, EXT_IP, LB_IP = ip("10.96.0.10"), ip("198.18.0.1"), ip("198.19.0.1")


def test_frontends_and_names():
    c = small_cluster()
    smap = compile_services(c)
    assert smap.names == ["shop/web:http", "shop/empty:81"]          # headless and ExternalName not proxied
    # ClusterIP, externalIP, LB IP, empty's ClusterIP; one NodePort entry on 3 InternalIPs + 1 ExternalIP
    assert len(smap.frontends) == 3 + 1
    assert len(smap.node_ports) == 1 and len(smap.node_ips) == 4
    for dst, port in ((VIP, 80), (EXT_IP, 80), (LB_IP, 80), (ip("192.168.0.3"), 30080), (ip("203.0.113.1"), 30080)):
        r = one(smap, c, CLIENT, dst, port)
        assert r["service"] == 0 and r["verdict"] == PENDING
        assert r["dnat_port"] == 8080 and r["dnat_ip"] in {p.ip for p in c.pods[:4]}
    assert one(smap, c, CLIENT, VIP, 443)["service"] == -1


def test_clusterip_wrong_port_or_proto_rejected_other_ips_pass():
    c = small_cluster()
    smap = compile_services(c)
    for port, proto in ((81, 6), (80, 17), (8080, 6)):
        r = one(smap, c, CLIENT, VIP, port, proto)
        assert (r["verdict"], r["service"], r["dnat_ip"]) == (REJECTED, -1, VIP)
    r = one(smap, c, CLIENT, EXT_IP, 81)            # an externalIP on a wrong port is no frontend
    assert (r["verdict"], r["service"]) == (PENDING, -1)
    r = one(smap, c, CLIENT, ip("8.8.8.8"), 53, 17)
    assert (r["verdict"], r["service"]) == (PENDING, -1)


def test_no_endpoints_rejected_everywhere():
    c = small_cluster(endpoints=())
    smap = compile_services(c)
    for dst, port in ((VIP, 80), (LB_IP, 80), (ip("192.168.0.1"), 30080)):
        r = one(smap, c, OUTSIDE, dst, port)
        assert (r["verdict"], r["service"]) == (REJECTED, 0)
    assert one(smap, c, CLIENT, ip("10.96.0.11"), 81)["verdict"] == REJECTED   # 'empty' has no slice at all


def test_only_pending_rows_are_touched():
    c = small_cluster()
    smap = compile_services(c)
    f = [{"src_ip": CLIENT, "dst_ip": VIP, "src_port": 1, "dst_port": 80, "proto": 6}] * 3
    out = run_stage(ServiceStage(smap), c, f, verdict=np.array([PENDING, 0, 5], np.uint8))
    assert out["service"].tolist() == [0, -1, -1] and out["verdict"].tolist() == [PENDING, 0, 5]
    assert out["dnat_ip"][1:].tolist() == [VIP, VIP]


def test_terminating_fallback_and_not_serving():
    # no Ready endpoint: Serving+Terminating ones are used; not-serving ones never
    eps = (Endpoint((POD0,), False, True, True, "node-0", "za", (), None),
           Endpoint((POD1,), False, False, True, "node-1", "zb", (), None))
    c = small_cluster(endpoints=eps)
    smap = compile_services(c)
    assert {one(smap, c, CLIENT, VIP, 80, sport=s)["dnat_ip"] for s in range(200)} == {POD0}
    # only not-serving endpoints: none usable at all -> rejected
    c = small_cluster(endpoints=eps[1:])
    assert one(compile_services(c), c, CLIENT, VIP, 80)["verdict"] == REJECTED


def test_internal_traffic_policy_local():
    c = small_cluster(svc={"internal_policy": "Local"})
    smap = compile_services(c)
    r = one(smap, c, CLIENT, VIP, 80)                    # client on node-2: no local endpoint
    assert (r["verdict"], r["service"]) == (DROPPED, 0)
    node0_pods = {p.ip for p in c.pods[:4] if p.node == "node-0"}
    got = {one(smap, c, ip("192.168.0.1"), VIP, 80, sport=s)["dnat_ip"] for s in range(200)}   # host of node-0
    assert got == node0_pods
    # iTP does not govern external frontends for in-cluster clients
    assert one(smap, c, CLIENT, LB_IP, 80)["verdict"] == PENDING


def test_external_traffic_policy_local_and_snat():
    c = small_cluster(svc={"external_policy": "Local"})
    smap = compile_services(c)
    r = one(smap, c, OUTSIDE, ip("192.168.0.3"), 30080)  # NodePort on node-2: nothing local
    assert (r["verdict"], r["src_node"]) == (DROPPED, 2)
    r = one(smap, c, OUTSIDE, ip("192.168.0.2"), 30080)  # node-1: local endpoint, client IP kept
    assert r["verdict"] == PENDING and r["src_node"] == 1 and r["snat_ip"] == OUTSIDE
    assert r["dnat_ip"] in {p.ip for p in c.pods if p.node == "node-1"}
    # the load balancer only sends to nodes with local endpoints
    nodes = {one(smap, c, OUTSIDE + s, LB_IP, 80, sport=s)["src_node"] for s in range(300)}
    assert nodes == {0, 1}
    # an in-cluster client on an external frontend sees the cluster view
    assert one(smap, c, CLIENT, ip("192.168.0.3"), 30080)["verdict"] == PENDING
    # a ClusterIP from outside is masqueraded whatever eTP says
    r = one(smap, c, OUTSIDE, VIP, 80)
    assert r["snat_ip"] == int(c.nodes[r["src_node"]].internal_ip)


def test_external_cluster_policy_masquerades_to_receiving_node():
    c = small_cluster()
    smap = compile_services(c)
    r = one(smap, c, OUTSIDE, ip("203.0.113.1"), 30080)   # NodePort on node-0's ExternalIP
    assert r["src_node"] == 0 and r["snat_ip"] == ip("192.168.0.1")
    nodes = {one(smap, c, OUTSIDE, EXT_IP, 80, sport=s)["src_node"] for s in range(300)}
    assert nodes == {0, 1, 2}
    r = one(smap, c, CLIENT, VIP, 80)                     # in-cluster: no SNAT
    assert r["snat_ip"] == CLIENT and r["src_node"] == 2


def test_hairpin_masquerade():
    eps = (Endpoint((POD0,), True, True, False, "node-0", "za", (), None),)
    c = small_cluster(endpoints=eps)
    r = one(compile_services(c), c, POD0, VIP, 80)
    assert r["dnat_ip"] == POD0 and r["snat_ip"] == ip("192.168.0.1")


def test_topology_hints():
    hint = {POD0: ("za",), POD1: ("zb",)}
    eps = tuple(Endpoint((a,), True, True, False, n, z, hint[a], None)
                for a, n, z in ((POD0, "node-0", "za"), (POD1, "node-1", "zb")))
    c = small_cluster(endpoints=eps, svc={"traffic_distribution": "PreferClose"})
    smap = compile_services(c)
    assert {one(smap, c, CLIENT, VIP, 80, sport=s)["dnat_ip"] for s in range(100)} == {POD1}     # node-2 in zb
    assert {one(smap, c, ip("192.168.0.1"), VIP, 80, sport=s)["dnat_ip"] for s in range(100)} == {POD0}
    # one Ready endpoint without hints: topology off, both used
    eps2 = eps[:1] + (Endpoint((POD1,), True, True, False, "node-1", "zb", (), None),)
    c2 = small_cluster(endpoints=eps2)
    assert {one(compile_services(c2), c2, CLIENT, VIP, 80, sport=s)["dnat_ip"] for s in range(100)} == {POD0, POD1}
    # hints for a zone no node of this zone has: no endpoint for zb -> cluster-wide
    eps3 = tuple(Endpoint((a,), True, True, False, "node-0", "za", ("za",), None) for a in (POD0, POD1))
    c3 = small_cluster(endpoints=eps3)
    assert {one(compile_services(c3), c3, CLIENT, VIP, 80, sport=s)["dnat_ip"] for s in range(100)} == {POD0, POD1}


def test_named_ports_duplicates_and_slice_port_match():
    eps = (Endpoint((POD0,), True, True, False, "node-0", "za", (), None),)
    c = small_cluster(endpoints=eps)
    extra = [EndpointSlice("shop", "web-y", "web", (EndpointSlicePort("http", 9090, 6),),
                           (Endpoint((POD1,), True, True, False, "node-1", "zb", (), None),
                            Endpoint((POD0,), True, True, False, "node-0", "za", (), None))),
             EndpointSlice("shop", "web-z", "web", (EndpointSlicePort("other", 7070, 6),),
                           (Endpoint((ip("10.244.1.99"),), True, True, False, "node-1", "zb", (), None),)),
             EndpointSlice("shop", "web-dup", "web", (EndpointSlicePort("http", 8080, 6),),
                           (Endpoint((POD0,), False, False, False, "node-0", "za", (), None),))]
    c.slices.extend(extra)
    smap = compile_services(c)
    got = {(smap.ep_ip[e], smap.ep_port[e]) for e in smap.endpoints(0)}
    assert got == {(POD0, 8080), (POD0, 9090), (POD1, 9090)}
    assert smap.ep_ready[smap.endpoints(0)].all()         # the first of a duplicate kept


def test_errors():
    c = small_cluster()
    with pytest.raises(FastpathError, match="unknown balancer"):
        compile_services(c, lb="wrr")
    with pytest.raises(FastpathError, match="prime"):
        compile_services(c, lb="maglev", maglev_size=1000)
    with pytest.raises(FastpathError, match="conn_duration"):
        compile_services(c, conn_duration=0)
    stage = ServiceStage(compile_services(c))
    z = np.zeros(2, np.uint32)
    with pytest.raises(FastpathError, match="'verdict'"):
        stage.run(z, z, z.astype(np.uint16), z.astype(np.uint16), z.astype(np.uint8), None, z.astype(np.int32),
                  np.zeros(2, np.int32), np.zeros(2, np.int64), np.zeros(2, np.int32), z.copy(),
                  np.zeros(2, np.uint16), z.copy())
    with pytest.raises(FastpathError, match="'dst_ip' has 3 rows"):
        stage.run(z, np.zeros(3, np.uint32), z, z, z, None, z, np.zeros(2, np.int32), np.zeros(2, np.uint8),
                  np.zeros(2, np.int32), z.copy(), np.zeros(2, np.uint16), z.copy())


def test_read_only_inputs():
    c = small_cluster()
    stage = ServiceStage(compile_services(c))
    cols = arrays([{"src_ip": CLIENT, "dst_ip": VIP, "src_port": 5, "dst_port": 80, "proto": 6, "ts": 0}] * 4)
    for v in cols.values():
        if v is not None:
            v.flags.writeable = False
    out = [np.full(4, 2, np.int32), np.full(4, PENDING, np.uint8), np.full(4, -1, np.int32),
           cols["dst_ip"].copy(), cols["dst_port"].copy(), cols["src_ip"].copy()]
    stage.run(cols["src_ip"], cols["dst_ip"], cols["src_port"], cols["dst_port"], cols["proto"], cols["ts"],
              np.full(4, 4, np.int32), *out)
    assert (out[2] == 0).all()


# --------------------------------------------------------------------------- against the twin

@pytest.mark.parametrize("lb", BALANCERS)
def test_matches_twin_on_random_clusters(lb):
    for k in range(5):
        rng = random.Random(1000 * BALANCERS.index(lb) + k)
        c = random_cluster(rng, n_nodes=rng.randint(1, 5), n_services=rng.randint(1, 12))
        flows = random_flows(rng, c, 150, with_ts=k != 3, durations=k % 2 == 1)
        check_same(c, flows, lb, seed=k, batches=rng.choice([1, 3, 7]), conn=rng.choice([1.0, 30.0]))


@pytest.mark.parametrize("lb", ["random", "source-hash", "maglev"])
def test_matches_twin_in_runs_of_service_and_other_traffic(lb):
    """Runs of 40 service flows, then 40 to pods, node ports nobody serves, the Internet and
    unserved ClusterIP ports: after a run of service flows the stateless pass skips the
    address filter for the next group and probes every flow (FILTER_SKIP)."""
    from fastpath.tables.balancers import GROUP

    for k in range(3):
        rng = random.Random(500 + k)
        c = random_cluster(rng, n_nodes=4, n_services=10)
        services = [f for f in random_flows(rng, c, 600) if f["dst_port"] < 1000]
        pods = [p.ip for p in c.pods if p.ip is not None]
        srcs = pods + [n.internal_ip for n in c.nodes]
        cips = [a for s in c.services for a in s.cluster_ips]
        others = []
        for j in range(600):
            kind = j % 4
            d = (rng.choice(pods), rng.choice(c.nodes).internal_ip, ip("8.8.8.8") + j,
                 rng.choice(cips) if cips else ip("1.1.1.1"))[kind]
            others.append({"src_ip": rng.choice(srcs), "dst_ip": d, "src_port": rng.randint(1024, 65535),
                           "dst_port": 22 if kind == 1 else 3000 + j % 7, "proto": 6, "ts": 0})
        run = GROUP + 8
        ordered = []
        for j in range(0, max(len(services), len(others)), run):
            ordered += services[j:j + run] + others[j:j + run]
        t = 0
        for f in ordered:
            t += 10**8
            f["ts"] = t
        got = check_same(c, ordered, lb, seed=k)
        assert sum(r is not None and r["service"] is not None for r in got) > 2 * run
        assert sum(r is not None and r["dnat_ip"] != f["dst_ip"] for r, f in zip(got, ordered)) > run
        assert sum(r is None for r in got) > 2 * run


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("lb", ["round-robin", "least-connection"])
def test_counted_balancers_without_affinity_match_twin(lb, dense, monkeypatch):
    """Without ClientIP affinity every row of round-robin and least-connection goes through the
    parallel pass and then the in-order pick (_pick_in_order); counters dense or hashed."""
    import dataclasses

    import fastpath.tables.balancer_state as balancer_state

    if not dense:
        monkeypatch.setattr(balancer_state, "DENSE_LIMIT", 0)
    for k in range(4):
        rng = random.Random(900 + k)
        c = random_cluster(rng, n_nodes=rng.randint(1, 5), n_services=12)
        c = dataclasses.replace(c, services=[dataclasses.replace(s, session_affinity=False) for s in c.services])
        assert not compile_services(c, lb=lb).has_affinity
        flows = random_flows(rng, c, 300, with_ts=k != 2, durations=k % 2 == 1)
        check_same(c, flows, lb, seed=k, batches=rng.choice([1, 4]), conn=rng.choice([1.0, 30.0]))


@pytest.mark.parametrize("lb", ["round-robin", "least-connection"])
def test_matches_twin_with_hashed_counters(lb, monkeypatch):
    """Counters beyond the dense limit live in the hash table: same answers."""
    import fastpath.tables.balancer_state as balancer_state

    monkeypatch.setattr(balancer_state, "DENSE_LIMIT", 0)
    for k in range(3):
        rng = random.Random(77 + k)
        c = random_cluster(rng, n_nodes=4, n_services=10)
        check_same(c, random_flows(rng, c, 200, durations=k == 1), lb, seed=k, batches=3, conn=5.0)


def test_matches_twin_on_sample_cluster(data_dir):
    from fastpath.cluster.load import load_cluster
    c = load_cluster(data_dir / "small-list.json")
    rng = random.Random(7)
    flows = random_flows(rng, c, 300)
    for lb in BALANCERS:
        got = check_same(c, flows, lb, seed=3, batches=4)
        assert sum(r is not None and r["service"] is not None for r in got) > 100


def test_twin_and_kernel_disagree_on_another_seed():
    """The differential check can fail: another seed changes backend choices."""
    rng = random.Random(5)
    c = random_cluster(rng, n_nodes=3, n_services=8)
    flows = random_flows(rng, c, 200)
    a = check_same(c, flows, "random", seed=1)
    b = naive_rows(c, flows, lb="random", seed=2)
    assert a != b


def test_repeatable_under_seed():
    rng = random.Random(11)
    c = random_cluster(rng, n_nodes=4, n_services=10)
    flows = random_flows(rng, c, 300)
    for lb in BALANCERS:
        smap = compile_services(c, lb=lb, seed=9, maglev_size=251)
        a = run_stage(ServiceStage(smap), c, flows, batches=1)
        b = run_stage(ServiceStage(compile_services(c, lb=lb, seed=9, maglev_size=251)), c, flows, batches=5)
        for k in a:
            assert np.array_equal(a[k], b[k]), (lb, k)


# --------------------------------------------------------------------------- balancer statistics

def wide_cluster(n_eps: int, affinity: bool = False, timeout: int = 10800) -> Cluster:
    c = small_cluster(endpoints=tuple(
        Endpoint((ip(f"10.244.{i % 2}.{100 + i}"),), True, True, False, f"node-{i % 2}", None, (), None)
        for i in range(n_eps)), svc={"session_affinity": affinity, "affinity_timeout": timeout})
    return c


def flow_batch(n, rng, clients=None, dst=VIP, dport=80, ts_step=0):
    src = rng.integers(0x64400000, 0x6440FFFF, n) if clients is None else rng.choice(clients, n)
    return [{"src_ip": int(s), "dst_ip": dst, "src_port": int(p), "dst_port": dport, "proto": 6, "ts": i * ts_step}
            for i, (s, p) in enumerate(zip(src, rng.integers(1024, 65535, n)))]


def test_random_is_uniform():
    n_eps, n = 10, 20000
    c = wide_cluster(n_eps)
    rng = np.random.default_rng(0)
    out = run_stage(ServiceStage(compile_services(c, seed=4)), c, flow_batch(n, rng))
    counts = np.array(list(Counter(out["dnat_ip"].tolist()).values()))
    assert counts.size == n_eps
    chi2 = ((counts - n / n_eps) ** 2 / (n / n_eps)).sum()
    assert chi2 < 40        # 9 degrees of freedom: p < 1e-5 above 40


def test_source_hash_never_splits_a_client():
    c = wide_cluster(7)
    rng = np.random.default_rng(1)
    clients = rng.integers(0x0A000000, 0x0AFFFFFF, 50)
    flows = flow_batch(3000, rng, clients)
    out = run_stage(ServiceStage(compile_services(c, lb="source-hash")), c, flows)
    seen = defaultdict(set)
    for f, d in zip(flows, out["dnat_ip"].tolist()):
        seen[f["src_ip"]].add(d)
    assert all(len(v) == 1 for v in seen.values())
    assert len({next(iter(v)) for v in seen.values()}) > 3


def test_round_robin_per_node_counts_differ_by_at_most_one():
    c = wide_cluster(6)
    rng = np.random.default_rng(2)
    hosts = [ip("192.168.0.1"), ip("192.168.0.2"), ip("192.168.0.3")]
    flows = flow_batch(1001, rng, hosts)
    out = run_stage(ServiceStage(compile_services(c, lb="round-robin")), c, flows, batches=3)
    per = defaultdict(Counter)
    for f, d in zip(flows, out["dnat_ip"].tolist()):
        per[f["src_ip"]][d] += 1
    for counts in per.values():
        v = list(counts.values()) + [0] * (6 - len(counts))
        assert max(v) - min(v) <= 1


@pytest.mark.parametrize("lb", BALANCERS)
def test_affinity_never_broken_inside_timeout(lb):
    """External clients to a ClusterIP land on nodes drawn per flow; each receiving node keeps the
    client's backend (affinity is per node, as kube-proxy's), never broken inside the timeout."""
    c = wide_cluster(8, affinity=True, timeout=5)
    rng = np.random.default_rng(3)
    clients = rng.integers(0x64400000, 0x6440FFFF, 40)
    flows = flow_batch(2000, rng, clients, ts_step=10**7)      # 20 s in all, 10 ms apart
    out = run_stage(ServiceStage(compile_services(c, lb=lb, maglev_size=1021)), c, flows, batches=4)
    last = {}
    moved_after_idle = 0
    for f, d, node in zip(flows, out["dnat_ip"].tolist(), out["src_node"].tolist()):
        prev = last.get((f["src_ip"], node))
        if prev is not None:
            if f["ts"] - prev[1] <= 5 * 10**9:
                assert d == prev[0]
            else:
                moved_after_idle += d != prev[0]
        last[(f["src_ip"], node)] = (d, f["ts"])
    assert len(set(out["src_node"].tolist())) == 3


NODE_A, NODE_B = ip("192.168.0.1"), ip("192.168.0.2")      # node-0's and node-1's InternalIP


def hop_flows(clients, steps, dport=30080, duration=0.0):
    """Each client's flows, in time order: ``steps`` is (seconds, node address) per round of flows (TCP)."""
    flows = []
    for t, node in steps:
        for k, c in enumerate(clients):
            flows.append({"src_ip": int(c), "dst_ip": node, "src_port": 20000 + len(flows), "dst_port": dport,
                          "proto": 6, "ts": t * 10**9 + k + 1, "duration": duration})
    return flows


def fresh(smap, cluster, f):
    """The backend a flow gets with no affinity entry anywhere (alone on a fresh stage)."""
    out = run_stage(ServiceStage(smap), cluster, [f])
    return int(out["dnat_ip"][0]), int(out["src_node"][0])


@pytest.mark.parametrize("lb", BALANCERS)
def test_affinity_is_per_node_for_an_external_client(lb):
    """kube-proxy keeps ClientIP affinity in each node's kernel (iptables' ``recent`` lists, IPVS
    persistence templates): an external client reaching a ClientIP-affinity NodePort at node A, then
    at node B, gets B's own choice there (not A's), and each node keeps its own choice after.
    Kernel == twin flow by flow. (One flow of another client through B first, so that B's
    round-robin and least-connection counters are not A's.)"""
    c = small_cluster(svc={"session_affinity": True, "affinity_timeout": 100})
    smap = compile_services(c, lb=lb, maglev_size=251)
    clients = np.random.default_rng(8).integers(0x64400000, 0x6440FFFF, 30)
    steps = [(0, NODE_A), (1, NODE_B), (2, NODE_A), (3, NODE_B), (4, NODE_A)]
    warm = {"src_ip": OUTSIDE, "dst_ip": NODE_B, "src_port": 1, "dst_port": 30080, "proto": 6, "ts": 0,
            "duration": 50.0}
    flows = [warm] + hop_flows(clients, steps, duration=50.0)
    got = check_same(c, flows, lb, m=251)[1:]
    n = len(clients)
    differ = 0
    for k in range(n):
        a = [got[j * n + k] for j in (0, 2, 4)]
        b = [got[j * n + k] for j in (1, 3)]
        assert {r["src_node"] for r in a} == {"node-0"} and {r["src_node"] for r in b} == {"node-1"}
        assert len({r["dnat_ip"] for r in a}) == 1 and len({r["dnat_ip"] for r in b}) == 1
        if lb in ("random", "source-hash", "maglev"):     # B chose by its hash, A's entry unseen
            assert b[0]["dnat_ip"] == fresh(smap, c, flows[1 + n + k])[0]
        differ += a[0]["dnat_ip"] != b[0]["dnat_ip"]
    if lb == "source-hash":                  # the client hash picks the same on every node
        assert differ == 0
    else:
        assert differ > n // 2


def test_affinity_timeout_runs_per_node():
    """Each node's entry has its own timeout: the client's flow through node B at 6 s does not
    refresh node A's entry, so at 12 s (timeout 10 s) node A chooses anew."""
    c = small_cluster(svc={"session_affinity": True, "affinity_timeout": 10})
    smap = compile_services(c, lb="random")
    clients = np.random.default_rng(9).integers(0x64400000, 0x6440FFFF, 40)
    flows = hop_flows(clients, [(0, NODE_A), (6, NODE_B), (12, NODE_A), (13, NODE_A)])
    got = check_same(c, flows, "random")
    n = len(clients)
    moved = 0
    for k in range(n):
        first, again, after = got[k], got[2 * n + k], got[3 * n + k]
        assert again["dnat_ip"] == fresh(smap, c, flows[2 * n + k])[0]     # expired: a fresh draw
        assert after["dnat_ip"] == again["dnat_ip"]                         # the new entry holds
        moved += again["dnat_ip"] != first["dnat_ip"]
    assert moved > 0


def test_pod_client_affinity_is_its_nodes():
    """A pod or host client is always DNATed on its own node: one entry, on that node, whichever
    frontend (ClusterIP, NodePort on another node's address, load-balancer IP) it uses."""
    c = small_cluster(svc={"session_affinity": True, "affinity_timeout": 100})
    for lb in BALANCERS:
        smap = compile_services(c, lb=lb, maglev_size=251)
        stage = ServiceStage(smap)
        dsts = [(VIP, 80), (NODE_A, 30080), (NODE_B, 30080), (LB_IP, 80), (EXT_IP, 80)] * 4
        flows = [{"src_ip": CLIENT, "dst_ip": d, "src_port": 30000 + j, "dst_port": p, "proto": 6, "ts": j * 10**8}
                 for j, (d, p) in enumerate(dsts)]
        out = run_stage(stage, c, flows)
        assert set(out["src_node"].tolist()) == {2} and len(set(out["dnat_ip"].tolist())) == 1
        entry = stage.state.affinity(0, 2, CLIENT, 3)
        assert entry is not None and smap.ep_ip[entry[0]] == out["dnat_ip"][0]
        assert stage.state.affinity(0, 0, CLIENT, 3) is None and stage.state.affinity(0, 1, CLIENT, 3) is None
        check_same(c, flows, lb, m=251)


def test_affinity_keys_are_one_to_one_and_bounded():
    from fastpath.tables.balancer_state import affinity_key, affinity_keys_np, check_affinity_keys
    from fastpath.tables.exact import EMPTY

    n_sp, n_nodes = 5, 7
    sp, node = np.meshgrid(np.arange(n_sp), np.arange(n_nodes), indexing="ij")
    for client in (0, 0x0A000001, 0xFFFFFFFF):
        keys = affinity_keys_np(sp.ravel(), node.ravel(), n_nodes, np.full(sp.size, client))
        assert np.unique(keys).size == sp.size
        assert int(keys[-1]) == int(affinity_key(n_sp - 1, n_nodes - 1, n_nodes, client))
    check_affinity_keys(1 << 16, (1 << 16) - 1)
    top = affinity_keys_np(np.array([(1 << 16) - 2]), np.array([(1 << 16) - 2]), (1 << 16) - 1,
                           np.array([0xFFFFFFFF]))
    assert top[0] != EMPTY
    with pytest.raises(FastpathError, match="ClientIP-affinity"):
        check_affinity_keys(1 << 16, 1 << 16)


def test_least_connection_never_picks_a_busier_backend():
    c = wide_cluster(5)
    rng = np.random.default_rng(4)
    hosts = [ip("192.168.0.1"), ip("192.168.0.3")]
    flows = flow_batch(1500, rng, hosts, ts_step=10**8)
    conn = 2.0
    out = run_stage(ServiceStage(compile_services(c, lb="least-connection", conn_duration=conn)), c, flows, batches=3)
    backends = sorted(set(out["dnat_ip"].tolist()))
    assert len(backends) == 5
    opened = []          # (end, node, backend)
    for f, d, node in zip(flows, out["dnat_ip"].tolist(), out["src_node"].tolist()):
        active = Counter(b for end, nd, b in opened if nd == node and end > f["ts"])
        assert active[d] <= min(active[b] for b in backends)
        opened.append((f["ts"] + int(conn * 1e9), node, d))


def test_least_connection_without_ts_balances_totals():
    c = wide_cluster(4)
    rng = np.random.default_rng(5)
    flows = [{k: v for k, v in f.items() if k != "ts"} for f in flow_batch(401, rng, [CLIENT])]
    out = run_stage(ServiceStage(compile_services(c, lb="least-connection")), c, flows, batches=2)
    counts = Counter(out["dnat_ip"].tolist())
    assert max(counts.values()) - min(counts.values()) <= 1


# --------------------------------------------------------------------------- explain

def test_explain_lines():
    c = small_cluster(svc={"external_policy": "Local"})
    for lb in BALANCERS:
        smap = compile_services(c, lb=lb, maglev_size=251)
        stage = ServiceStage(smap)
        f = [{"src_ip": OUTSIDE, "dst_ip": LB_IP, "src_port": 1234, "dst_port": 80, "proto": 6, "ts": 0}]
        out = run_stage(stage, c, f)
        out["src_kind"] = np.array([2], np.uint8)
        dp = type("DP", (), {"services": smap, "stage": stage})()
        lines = explain_service(dp, arrays(f), out)
        text = "\n".join(lines)
        assert "LoadBalancer frontend of shop/web:http" in text
        assert "externalTrafficPolicy Local" in text and "DNAT ->" in text and "client IP kept" in text
        assert lb in text
    f = [{"src_ip": CLIENT, "dst_ip": VIP, "src_port": 1, "dst_port": 99, "proto": 6}]
    out = run_stage(ServiceStage(smap), c, f)
    assert "rejected" in explain_service(smap, arrays(f), out)[0]


def test_explain_says_affinity_is_the_receiving_nodes():
    c = small_cluster(svc={"session_affinity": True, "affinity_timeout": 60})
    smap = compile_services(c)
    stage = ServiceStage(smap)
    f = [{"src_ip": OUTSIDE, "dst_ip": NODE_B, "src_port": 1234, "dst_port": 30080, "proto": 6, "ts": 0}]
    out = run_stage(stage, c, f)
    out["src_kind"] = np.array([2], np.uint8)
    dp = type("DP", (), {"services": smap, "stage": stage})()
    text = "\n".join(explain_service(dp, arrays(f), out))
    assert "sessionAffinity ClientIP (60 s): node node-1 keeps the client's backend" in text
    assert "each node's kube-proxy has its own affinity entries" in text


def test_frontend_clash_first_wins_with_warning():
    c = small_cluster()
    c.services.append(Service("shop", "twin", "ClusterIP", (ip("10.96.0.12"),), False,
                              (ServicePort("http", 80, 6, 8080, None),), None, (EXT_IP,), (), False, 10800,
                              "Cluster", "Cluster", None))
    smap = compile_services(c)
    assert len(smap.warnings) == 1 and "shop/twin:http goes to shop/web:http" in smap.warnings[0]
    assert one(smap, c, CLIENT, EXT_IP, 80)["service"] == 0
    c2 = small_cluster()
    c2.nodes[1] = Node("node-1", ip("192.168.0.2"), ip("192.168.0.2"), ((ip("10.244.1.0"), 24),), "zb")
    assert compile_services(c2).warnings == []
