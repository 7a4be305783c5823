"""Replay against a changing cluster (docs/events.md) against its slow twin (tests/naive/events.py).

The twin rebuilds the whole cluster from raw objects at every group of events and carries
only the balancer state across; the fast side updates its tables in place. First the twin
alone (hand cases with their expected values: a rollout under every balancer, Maglev's
small churn against random's large one, a TCP connection broken where the same UDP one is
flushed, a deleted node's pods dropped, identity and ordering rules), then the fast replay
(``fastpath.replay(..., events=...)``) against the twin on every result column and the
summary's event figures: the hand cases, and random event streams (pods added, readiness
flips, terminating, deleted, scaled, rolled out; nodes added and deleted; service ports
added) with random timed flows, under every balancer, with and without conntrack.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.cluster.load import cluster_from_objects
from naive.events import RESULT_KEYS, naive_event_replay
from naive.pipeline import naive_resolve
from naive.services import NaiveServices

S = 10**9
TCP, UDP = 6, 17
BALANCERS = ("random", "round-robin", "source-hash", "maglev", "least-connection")
WEB_VIP, API_VIP = "10.96.0.10", "10.96.0.11"
NODE_PORT = 30080


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


# --------------------------------------------------------------------------- raw objects

def node_obj(i: int, zone: str | None = "za", cpu: int | None = 4, external: bool = False) -> dict:
    labels = {"kubernetes.io/hostname": f"node-{i}"}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    addrs = [{"type": "InternalIP", "address": f"192.168.0.{10 + i}"}]
    if external:
        addrs.append({"type": "ExternalIP", "address": f"203.0.113.{10 + i}"})
    status = {"addresses": addrs}
    if cpu is not None:
        status["capacity"] = {"cpu": str(cpu)}
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": f"node-{i}", "labels": labels},
            "spec": {"podCIDR": f"10.244.{i}.0/24"}, "status": status}


def pod_obj(name: str, node: str | None, addr: str | None, app: str, *, ready: bool = True,
            terminating: bool = False, ns: str = "default", version: str = "v1") -> dict:
    meta = {"name": name, "namespace": ns, "labels": {"app": app, "version": version}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    spec = {"containers": [{"name": "main", "ports": [
        {"containerPort": 8080, "protocol": "TCP", "name": "http"},
        {"containerPort": 5353, "protocol": "UDP", "name": "dns"}]}]}
    if node is not None:
        spec["nodeName"] = node
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if addr is not None:
        status["podIP"] = addr
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}


def service_obj(name: str, app: str, vip: str, *, stype: str = "ClusterIP", ports: list[dict] | None = None,
                ns: str = "default", **spec_extra) -> dict:
    if ports is None:
        ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                 {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]
    spec = {"type": stype, "clusterIP": vip, "selector": {"app": app}, "ports": ports, **spec_extra}
    return {"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def event(kind: str, ts: int, obj: dict) -> dict:
    return {"type": kind, "ts": int(ts), "object": obj}


def flow(ts: int, src: str | int, dst: str | int, port: int, proto: int = TCP, sport: int = 40000,
         duration: float | None = None) -> dict:
    f = {"ts": int(ts), "src_ip": ip(src) if isinstance(src, str) else src,
         "dst_ip": ip(dst) if isinstance(dst, str) else dst, "src_port": sport, "dst_port": port, "proto": proto}
    if duration is not None:
        f["duration"] = duration
    return f


# --------------------------------------------------------------------------- the fast side

def write_inputs(folder: Path, objects: list[dict], events: list[dict], flows: list[dict],
                 ts_type: str = "int64") -> tuple[Path, Path, Path]:
    """The cluster as a JSON List, the trace as Arrow IPC, the events as JSON lines."""
    cluster = folder / "cluster.json"
    cluster.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}))
    cols = {
        "src_ip": pa.array([f["src_ip"] for f in flows], pa.uint32()),
        "dst_ip": pa.array([f["dst_ip"] for f in flows], pa.uint32()),
        "src_port": pa.array([f["src_port"] for f in flows], pa.uint16()),
        "dst_port": pa.array([f["dst_port"] for f in flows], pa.uint16()),
        "proto": pa.array([f["proto"] for f in flows], pa.uint8()),
        "ts": pa.array([f["ts"] for f in flows], pa.int64()),
    }
    if ts_type == "timestamp":
        cols["ts"] = cols["ts"].cast(pa.timestamp("ns"))
    if any("duration" in f for f in flows):
        cols["duration"] = pa.array([f.get("duration") for f in flows], pa.float64())
    table = pa.table(cols)
    trace = folder / "trace.arrow"
    with pa.OSFile(str(trace), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    evs = folder / "events.jsonl"
    evs.write_text("".join(json.dumps(e) + "\n" for e in events))
    return cluster, trace, evs


def fast_replay(folder: Path, objects, events, flows, *, lb: str, seed: int, conntrack: bool,
                ts_type: str = "int64", **opts):
    """``fastpath.replay`` of the inputs written to ``folder``; ``events=None``: the replay without ``--events``."""
    import fastpath

    cluster, trace, evs = write_inputs(folder, objects, events or [], flows, ts_type)
    if events is not None:
        opts["events"] = str(evs)
    return fastpath.replay(str(cluster), str(trace), None, lb=lb, seed=seed, return_table=True,
                           progress=False, conntrack=conntrack, **opts)


def show_flow(f: dict) -> str:
    return (f"t={f['ts'] / S:g}s {ipaddress.IPv4Address(f['src_ip'])}:{f['src_port']} -> "
            f"{ipaddress.IPv4Address(f['dst_ip'])}:{f['dst_port']}/{f['proto']} d={f.get('duration')}")


def assert_fast_equals_twin(objects, events, flows, *, lb: str = "random", seed: int = 0, conntrack: bool = False,
                            conn_duration: float = 30.0, conntrack_max: int | None = None,
                            ts_type: str = "int64") -> tuple[list[dict], dict]:
    """The fast replay and the twin agree on every result column of every flow and on the summary's
    event figures; returns the twin's (rows, summary)."""
    want, want_sum = naive_event_replay(objects, events, flows, lb=lb, seed=seed, conntrack=conntrack,
                                        conn_duration=conn_duration, conntrack_max=conntrack_max)
    opts = {"conn_duration": conn_duration}
    if conntrack_max is not None:
        opts["conntrack_max"] = conntrack_max
    with tempfile.TemporaryDirectory() as d:
        s = fast_replay(Path(d), objects, events, flows, lb=lb, seed=seed, conntrack=conntrack, ts_type=ts_type,
                        **opts)
    assert s.table is not None and s.table.num_rows == len(flows)
    got = s.table.select(list(RESULT_KEYS)).to_pylist()
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            diff = {k: (g[k], w[k]) for k in RESULT_KEYS if g[k] != w[k]}
            pytest.fail(f"{lb}: row {i} ({show_flow(flows[i])}): fast vs twin {diff}")
    assert s.event_groups == want_sum["event_groups"]
    got_events = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in s.events]
    for g in got_events:
        g["affected_service_ports"] = list(g["affected_service_ports"])
        g["kinds"] = dict(g["kinds"])
    assert len(got_events) == len(want_sum["events"])
    for g, w in zip(got_events, want_sum["events"]):
        share_g, share_w = g.pop("changed_share"), w["changed_share"]
        assert g == {k: v for k, v in w.items() if k != "changed_share"}, (lb, g, w)
        if share_w is None:
            assert share_g is None, (lb, g, w)
        else:
            assert share_g == pytest.approx(share_w, abs=1e-6), (lb, g, w)
    assert (s.broken_connections, s.udp_flushed) == (want_sum["broken_connections"], want_sum["udp_flushed"])
    return want, want_sum


# --------------------------------------------------------------------------- hand cases

def rollout_case() -> tuple[list[dict], list[dict], list[dict], dict]:
    """Three nodes, web v1 on each, a client pod; a rolling update (maxSurge 1) from 10 s to 22 s.

    Returns objects, events, flows, and per web pod the interval [from, until) in which it
    may take new connections (Ready, not terminating, not deleted).
    """
    objects = [node_obj(0, "za"), node_obj(1, "zb"), node_obj(2, "zb")]
    objects += [pod_obj(f"web-{c}", f"node-{i}", f"10.244.{i}.10", "web") for i, c in enumerate("abc")]
    objects.append(pod_obj("client", "node-0", "10.244.0.5", "client"))
    objects.append(service_obj("web", "web", WEB_VIP))

    def v2(c, i, **kw):
        return pod_obj(f"web-v2-{c}", f"node-{i}", f"10.244.{i}.20", "web", version="v2", **kw)

    def v1(c, i, **kw):
        return pod_obj(f"web-{c}", f"node-{i}", f"10.244.{i}.10", "web", **kw)

    events = [
        event("ADDED", 10 * S, v2("a", 1, ready=False)),
        event("MODIFIED", 12 * S, v2("a", 1)),
        event("MODIFIED", 12 * S, v1("a", 0, ready=False, terminating=True)),
        event("DELETED", 15 * S, v1("a", 0, ready=False, terminating=True)),
        event("ADDED", 15 * S, v2("b", 2, ready=False)),
        event("MODIFIED", 17 * S, v2("b", 2)),
        event("MODIFIED", 17 * S, v1("b", 1, ready=False, terminating=True)),
        event("DELETED", 20 * S, v1("b", 1, ready=False, terminating=True)),
        event("ADDED", 20 * S, v2("c", 0)),
        event("MODIFIED", 20 * S, v1("c", 2, ready=False, terminating=True)),
        event("DELETED", 22 * S, v1("c", 2, ready=False, terminating=True)),
    ]
    flows = []
    for k in range(120):                      # every 250 ms from 0 to 30 s, TCP for 5 s; some DNS
        t = k * S // 4
        flows.append(flow(t, "10.244.0.5", WEB_VIP, 80, TCP, sport=20000 + k, duration=5.0))
        if k % 4 == 0:
            flows.append(flow(t, "10.244.0.5", WEB_VIP, 53, UDP, sport=50000 + k))
    flows.sort(key=lambda f: f["ts"])
    live = {"default/web-a": (0, 12 * S), "default/web-b": (0, 17 * S), "default/web-c": (0, 20 * S),
            "default/web-v2-a": (12 * S, 10**20), "default/web-v2-b": (17 * S, 10**20),
            "default/web-v2-c": (20 * S, 10**20)}
    return objects, events, flows, live


@pytest.mark.parametrize("lb", BALANCERS)
def test_rollout_under_every_balancer(lb):
    objects, events, flows, live = rollout_case()
    rows, summary = naive_event_replay(objects, events, flows, lb=lb, seed=5)
    assert len(rows) == len(flows)
    for f, r in zip(flows, rows):
        assert r["verdict"] == "delivered", (show_flow(f), r)
        assert r["service"] == ("default/web:http" if f["proto"] == TCP else "default/web:dns")
        lo, hi = live[r["dst_pod"]]
        assert lo <= f["ts"] < hi, (show_flow(f), r["dst_pod"])
        assert r["src_pod"] == "default/client" and r["reason"] is None
    # before the rollout only v1, after it only v2, and every v2 pod got flows
    assert {r["dst_pod"] for f, r in zip(flows, rows) if f["ts"] < 10 * S} <= {"default/web-a", "default/web-b",
                                                                                "default/web-c"}
    late = {r["dst_pod"] for f, r in zip(flows, rows) if f["ts"] >= 22 * S}
    assert late <= {"default/web-v2-a", "default/web-v2-b", "default/web-v2-c"}
    if lb != "source-hash":                   # one client: source-hash sends it to one backend
        assert len(late) == 3
    assert summary["event_groups"] == 6
    recs = summary["events"]
    assert [r["ts"] // S for r in recs] == [10, 12, 15, 17, 20, 22]
    assert [r["events"] for r in recs] == [1, 2, 2, 2, 3, 1]
    assert recs[4]["kinds"] == {"DELETED Pod": 1, "ADDED Pod": 1, "MODIFIED Pod": 1}
    for r in recs:
        assert r["affected_service_ports"] == ["default/web:dns", "default/web:http"]
        assert r["flows"] > 0 and 0 <= r["changed_backend"] <= r["flows"]
        assert r["changed_share"] == r["changed_backend"] / r["flows"]
    # TCP connections of 5 s to a v1 pod that is deleted within them are broken (it stopped
    # taking new ones 3 s before: those of the last 2 s before that); DNS lives 0 s: never flushed
    assert summary["udp_flushed"] == 0
    broken = sum(1 for f, r in zip(flows, rows) if f["proto"] == TCP and any(
        r["dst_pod"] == p and f["ts"] < g < f["ts"] + 5 * S
        for p, g in (("default/web-a", 15 * S), ("default/web-b", 20 * S), ("default/web-c", 22 * S))))
    assert broken > 0 and summary["broken_connections"] == broken
    assert sum(r["broken_connections"] for r in recs) == broken
    assert recs[0]["broken_connections"] == recs[1]["broken_connections"] == 0   # nothing deleted yet


def scale_down_case(n: int = 10, n_flows: int = 3000) -> tuple[list[dict], list[dict], list[dict]]:
    """``n`` backends on two nodes, one deleted at 1 s; ``n_flows`` pod clients' connections after it."""
    objects = [node_obj(0, "za"), node_obj(1, "za")]
    objects += [pod_obj(f"web-{k}", f"node-{k % 2}", f"10.244.{k % 2}.{10 + k}", "web") for k in range(n)]
    objects += [pod_obj(f"client-{k}", f"node-{k % 2}", f"10.244.{k % 2}.{100 + k}", "client") for k in range(8)]
    objects.append(service_obj("web", "web", WEB_VIP))
    gone = objects[2 + n - 1]
    events = [event("DELETED", S, gone)]
    rng = random.Random(11)
    flows = [flow(S + k * 1000, f"10.244.{k % 2}.{100 + rng.randrange(8)}", WEB_VIP, 80, TCP,
                  sport=rng.randrange(1024, 65536), duration=0.001) for k in range(n_flows)]
    return objects, events, flows


def test_maglev_moves_about_one_in_n_random_moves_most():
    objects, events, flows = scale_down_case()
    shares = {}
    for lb in ("maglev", "random"):
        rows, summary = naive_event_replay(objects, events, flows, lb=lb)
        (rec,) = summary["events"]
        assert rec["affected_service_ports"] == ["default/web:dns", "default/web:http"]
        assert rec["flows"] == len(flows)
        assert all(r["dst_pod"] != "default/web-9" and r["verdict"] == "delivered" for r in rows)
        shares[lb] = rec["changed_share"]
    assert shares["maglev"] < 0.25, shares
    assert shares["random"] > 0.7, shares


def test_tcp_broken_udp_flushed():
    """Pod b1 (the one backend of service y) is deleted at 5 s: a TCP connection to it from 0 s for
    10 s is broken, the same UDP one through the service is flushed, and a UDP one straight to b1 is
    broken (kube-proxy's cleanup only deletes entries to a service address: nothing re-balances
    it); shorter ones, one-shot UDP, connections after 5 s and to other pods are neither."""
    objects = [node_obj(0), node_obj(1)]
    objects += [pod_obj("a1", "node-0", "10.244.0.10", "x"), pod_obj("b1", "node-1", "10.244.1.10", "y"),
                pod_obj("b2", "node-1", "10.244.1.11", "x"), service_obj("y", "y", API_VIP)]
    events = [event("DELETED", 5 * S, objects[3])]
    flows = [flow(0, "10.244.0.10", "10.244.1.10", 8080, TCP, 1, duration=10.0),   # broken
             flow(0, "10.244.0.10", API_VIP, 53, UDP, 2, duration=10.0),           # flushed
             flow(0, "10.244.0.10", "10.244.1.10", 5353, UDP, 10, duration=10.0),  # straight to b1: broken
             flow(0, "10.244.0.10", "10.244.1.10", 8080, TCP, 3, duration=4.0),    # over at 4 s
             flow(0, "10.244.0.10", API_VIP, 53, UDP, 4),                          # one-shot UDP: 0 s
             flow(0, "10.244.0.10", "10.244.1.10", 8080, TCP, 5, duration=5.0),    # ends exactly at 5 s
             flow(S, "10.244.0.10", "10.244.1.10", 8080, TCP, 6),                  # default 30 s: broken
             flow(S, "10.244.0.10", "10.244.1.11", 8080, TCP, 7),                  # b2 stays
             flow(5 * S, "10.244.0.10", "10.244.1.10", 8080, TCP, 8),              # b1 gone already
             flow(6 * S, "10.244.0.10", "10.244.1.11", 5353, UDP, 9, duration=100.0)]
    rows, summary = naive_event_replay(objects, events, flows)
    assert [r["verdict"] for r in rows] == ["delivered"] * 8 + ["dropped", "delivered"]
    assert rows[8]["reason"] == "no-such-pod"
    assert rows[1]["dst_pod"] == "default/b1" and rows[1]["service"] == "default/y:dns"
    assert summary["broken_connections"] == 3 and summary["udp_flushed"] == 1
    (rec,) = summary["events"]
    assert rec == {"ts": 5 * S, "events": 1, "kinds": {"DELETED Pod": 1},
                   "affected_service_ports": ["default/y:dns", "default/y:http"],
                   "flows": 0, "changed_backend": 0, "changed_share": None, "broken_connections": 3,
                   "udp_flushed": 1}
    _, fast = assert_fast_equals_twin(objects, events, flows)
    assert (fast["broken_connections"], fast["udp_flushed"]) == (3, 1)


def node_deletion_case():
    objects = [node_obj(0), node_obj(1), node_obj(2)]
    objects += [pod_obj("a1", "node-0", "10.244.0.10", "web"), pod_obj("b1", "node-1", "10.244.1.10", "web"),
                pod_obj("b2", "node-1", "10.244.1.11", "web"), pod_obj("c1", "node-2", "10.244.2.10", "web")]
    objects.append(service_obj("web", "web", WEB_VIP))
    events = [event("DELETED", 10 * S, objects[1])]
    flows = []
    for t in (0, 9, 10, 11):
        for k, dst in enumerate(("10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.1.99")):
            flows.append(flow(t * S, "10.244.0.10", dst, 8080, TCP, sport=1000 * t + k))
    flows.append(flow(11 * S, "100.64.0.1", "10.244.1.10", 8080, TCP, sport=7))      # from outside
    return objects, events, flows


def test_node_deleted_drops_flows_to_its_pods():
    objects, events, flows = node_deletion_case()
    rows, summary = naive_event_replay(objects, events, flows)
    by = {(f["ts"] // S, ipaddress.IPv4Address(f["dst_ip"]).exploded, f["src_ip"]): r for f, r in zip(flows, rows)}
    a1 = ip("10.244.0.10")
    for t in (0, 9):
        assert by[(t, "10.244.1.10", a1)]["verdict"] == "delivered"
        assert by[(t, "10.244.1.10", a1)]["dst_node"] == "node-1"
        assert by[(t, "10.244.1.99", a1)]["reason"] == "no-such-pod"
    for t in (10, 11):
        for dst in ("10.244.1.10", "10.244.1.11"):
            r = by[(t, dst, a1)]
            assert (r["verdict"], r["reason"], r["path"], r["dst_node"], r["dst_pod"]) == \
                ("dropped", "node-not-in-input", "none", None, None), r
        assert by[(t, "10.244.2.10", a1)]["verdict"] == "delivered"
        # an address of its CIDR that no pod holds: a route to nowhere too, not egress
        r = by[(t, "10.244.1.99", a1)]
        assert (r["verdict"], r["reason"], r["hops"]) == ("dropped", "node-not-in-input", 2)
    r = by[(11, "10.244.1.10", ip("100.64.0.1"))]
    assert (r["verdict"], r["reason"]) == ("dropped", "node-not-in-input")
    # the default 30 s TCP connections to b1 and b2 from 0 s and 9 s were broken by the node going away
    assert summary["broken_connections"] == 4
    (rec,) = summary["events"]
    assert rec["kinds"] == {"DELETED Node": 1}
    # a fresh load keeps b1 and b2 as (Ready) endpoints; only their zone went with the node
    assert rec["affected_service_ports"] == ["default/web:dns", "default/web:http"]


def test_event_and_flow_at_the_same_nanosecond_event_first():
    objects = [node_obj(0), pod_obj("a1", "node-0", "10.244.0.10", "x")]
    events = [event("ADDED", 7, pod_obj("a2", "node-0", "10.244.0.11", "x"))]
    flows = [flow(6, "10.244.0.10", "10.244.0.11", 8080), flow(7, "10.244.0.10", "10.244.0.11", 8080)]
    rows, summary = naive_event_replay(objects, events, flows)
    assert [r["verdict"] for r in rows] == ["dropped", "delivered"]
    assert summary["events"][0]["ts"] == 7 and summary["event_groups"] == 1


def test_results_equal_a_fresh_load_in_universe_order():
    """After the events, results are those of a fresh load of the objects in universe order: base
    objects in input order, new ones after, and a deleted one that comes back in its old place
    (external clients land on a node drawn from the nodes in that order)."""
    objects = [node_obj(0, external=True), node_obj(1, external=True), node_obj(2, external=True)]
    objects += [pod_obj(f"web-{k}", f"node-{k % 3}", f"10.244.{k % 3}.{10 + k}", "web") for k in range(6)]
    objects.append(service_obj("web", "web", WEB_VIP, externalIPs=["198.18.0.1"],
                               ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]))
    n3 = node_obj(3, external=True)
    events = [event("DELETED", S, objects[0]), event("ADDED", 2 * S, n3),
              event("ADDED", 3 * S, pod_obj("web-9", "node-3", "10.244.3.10", "web")),
              event("ADDED", 4 * S, objects[0])]                  # node-0 back: first again
    rng = random.Random(3)
    flows = [flow(5 * S + k, f"100.64.{rng.randrange(4)}.{rng.randrange(1, 255)}", "198.18.0.1", 80,
                  sport=rng.randrange(1024, 65536)) for k in range(200)]
    for lb in ("random", "maglev"):
        rows, _ = naive_event_replay(objects, events, flows, lb=lb)
        final = cluster_from_objects(objects + [n3, events[2]["object"]])
        assert [n.name for n in final.nodes] == ["node-0", "node-1", "node-2", "node-3"]
        stage = NaiveServices(final, lb, 0).stage
        fresh = naive_resolve(final, flows, stage)
        assert rows == fresh
        assert len({r["src_node"] for r in rows}) == 4


def test_identity_rules():
    """ADDED of an existing object modifies it, MODIFIED of a missing one adds it, DELETED of a missing
    one is nothing; an object without a namespace is the one in ``default``."""
    objects = [node_obj(0), pod_obj("a1", "node-0", "10.244.0.10", "x")]
    no_ns = pod_obj("a1", "node-0", "10.244.0.10", "x", ready=False)
    del no_ns["metadata"]["namespace"]
    events = [event("ADDED", S, no_ns),                                        # a1 modified (not ready)
              event("MODIFIED", 2 * S, pod_obj("a2", "node-0", "10.244.0.11", "x")),   # added
              event("DELETED", 3 * S, pod_obj("zz", "node-0", "10.244.0.99", "x")),    # nothing
              event("DELETED", 3 * S, pod_obj("a1", "node-0", "10.244.0.10", "x", ns="other"))]
    flows = [flow(4 * S, "10.244.0.11", "10.244.0.10", 8080), flow(4 * S, "10.244.0.10", "10.244.0.11", 8080)]
    rows, summary = naive_event_replay(objects, events, flows)
    assert [r["verdict"] for r in rows] == ["delivered", "delivered"]       # not Ready still listens
    assert summary["event_groups"] == 3 and summary["events"][2]["events"] == 2
    assert summary["events"][2]["kinds"] == {"DELETED Pod": 2}


def test_bookmarks_other_kinds_and_rfc3339_times():
    """BOOKMARKs and kinds the replay does not model form no group; ``ts`` may be RFC 3339."""
    objects = [node_obj(0), pod_obj("a1", "node-0", "10.244.0.10", "x")]
    cm = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c", "namespace": "default"}, "data": {}}
    t0 = 1767323045 * S                                     # 2026-01-02T03:04:05Z
    events = [{"type": "BOOKMARK", "ts": t0, "object": {"kind": "Pod", "metadata": {"resourceVersion": "7"}}},
              event("ADDED", t0 + 1, cm),
              {"type": "ADDED", "ts": "2026-01-02T03:04:05.5Z", "object": pod_obj("a2", "node-0", "10.244.0.11", "x")},
              {"type": "DELETED", "ts": "2026-01-02T04:04:06.000000001+01:00", "object": objects[1]}]
    flows = [flow(t0 + S // 2 - 1, "10.244.0.10", "10.244.0.11", 8080),
             flow(t0 + S // 2, "10.244.0.10", "10.244.0.11", 8080, sport=2, duration=10.0)]
    rows, summary = naive_event_replay(objects, events, flows)
    assert [r["verdict"] for r in rows] == ["dropped", "delivered"]
    assert [r["ts"] for r in summary["events"]] == [t0 + S // 2, t0 + S + 1]
    assert summary["event_groups"] == 2 and summary["events"][1]["kinds"] == {"DELETED Pod": 1}


def test_unaffected_group_and_readiness_flip():
    """A pod no service selects changes nothing for the services; a backend's readiness flip
    affects its service's ports (and, with one backend left, moves its flows)."""
    objects = [node_obj(0), pod_obj("w1", "node-0", "10.244.0.10", "web"),
               pod_obj("w2", "node-0", "10.244.0.11", "web"), pod_obj("c", "node-0", "10.244.0.5", "client"),
               service_obj("web", "web", WEB_VIP)]
    events = [event("MODIFIED", S, pod_obj("c", "node-0", "10.244.0.5", "client", ready=False)),
              event("MODIFIED", 2 * S, pod_obj("w2", "node-0", "10.244.0.11", "web", ready=False))]
    flows = [flow(2 * S + k, "10.244.0.5", WEB_VIP, 80, sport=3000 + k) for k in range(50)]
    rows, summary = naive_event_replay(objects, events, flows, lb="maglev")
    r1, r2 = summary["events"]
    assert r1["affected_service_ports"] == [] and r1["flows"] == 0 and r1["changed_share"] is None
    assert r2["affected_service_ports"] == ["default/web:dns", "default/web:http"]
    assert r2["flows"] == 50 and {r["dst_pod"] for r in rows} == {"default/w1"}
    assert 0 < r2["changed_backend"] < 50          # those Maglev had sent to w2


def test_service_port_added_and_conntrack_twin_runs():
    objects = [node_obj(0, cpu=2), node_obj(1, cpu=16), pod_obj("w1", "node-1", "10.244.1.10", "web"),
               pod_obj("c", "node-0", "10.244.0.5", "client"), service_obj("web", "web", WEB_VIP)]
    svc2 = service_obj("web", "web", WEB_VIP, ports=[
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        {"name": "alt", "port": 8443, "protocol": "TCP", "targetPort": 8080}])
    events = [event("MODIFIED", S, svc2), event("ADDED", 2 * S, node_obj(2, cpu=8))]
    flows = [flow(0, "10.244.0.5", WEB_VIP, 8443), flow(S, "10.244.0.5", WEB_VIP, 8443),
             flow(S, "10.244.0.5", WEB_VIP, 80, sport=2), flow(3 * S, "10.244.0.5", WEB_VIP, 8443, sport=3)]
    rows, summary = naive_event_replay(objects, events, flows, conntrack=True, conntrack_max=1)
    assert rows[0]["verdict"] == "rejected" and rows[0]["reason"] == "port-not-served"
    assert rows[1]["verdict"] == "delivered" and rows[1]["service"] == "default/web:alt"
    # node-0's table holds one entry (conntrack_max 1): the next connection from it is dropped
    assert rows[2]["verdict"] == "dropped" and rows[2]["reason"] == "conntrack-full"
    assert summary["events"][0]["affected_service_ports"] == ["default/web:alt", "default/web:dns",
                                                              "default/web:http"]
    assert summary["events"][0]["flows"] == 2 and summary["events"][0]["changed_backend"] == 1


# --------------------------------------------------------------------------- random event streams

class Stream:
    """A random small cluster, a random event stream over it and random timed flows."""

    APPS = ("web", "api")

    def __init__(self, seed: int, n_events: int, n_flows: int) -> None:
        self.args = (seed, n_events, n_flows)
        self.rng = rng = random.Random(seed)
        self.next_node = 0
        self.next_host = {}
        self.live_nodes: list[str] = []
        self.pods: dict[str, dict] = {}             # live pods by name
        self.ever_ips: list[str] = []
        self.node_ips: list[str] = []
        self.objects: list[dict] = []
        self.base, self.base_zones = True, set()
        for _ in range(rng.randint(1, 3)):
            self.objects.append(self.new_node())
        self.base = False
        for app in self.APPS + ("batch",):
            for _ in range(rng.randint(0, 3)):
                p = self.new_pod(app, ready=rng.random() < 0.85)
                if p is not None:
                    self.objects.append(p)
        self.services = {"web": self.web_service([]), "api": self.api_service()}
        self.objects += list(self.services.values())
        rng.shuffle(self.objects)
        self.events: list[dict] = []
        t = 0
        for _ in range(n_events):
            t += rng.choice([0, 0, S // 2, S, 3 * S, 7 * S])
            self.step(max(t, 1))
        self.flows = self.make_flows(n_flows, t + 10 * S)

    def __repr__(self) -> str:
        return "Stream(seed={}, n_events={}, n_flows={})".format(*self.args)

    # ---- objects
    def new_node(self) -> dict:
        i = self.next_node
        self.next_node += 1
        self.next_host[f"node-{i}"] = 10
        self.live_nodes.append(f"node-{i}")
        self.node_ips.append(f"192.168.0.{10 + i}")
        # a node added by an event takes a zone some base node has (or none): the fast side refuses
        # a zone no node had (fastpath.live, "moves to zone ..., which no node had")
        zones = ["za", "zb", None] if self.base else sorted(self.base_zones) + [None]
        zone = self.rng.choice(zones)
        if self.base and zone:
            self.base_zones.add(zone)
        return node_obj(i, zone=zone, cpu=self.rng.choice([None, 2, 8]), external=self.rng.random() < 0.3)

    def new_pod(self, app: str, ready: bool = True) -> dict | None:
        if not self.live_nodes:
            return None
        nd = self.rng.choice(self.live_nodes)
        h = self.next_host[nd]
        self.next_host[nd] = h + 1
        addr = f"10.244.{nd.split('-')[1]}.{h}"
        name = f"{app}-{len(self.ever_ips)}"
        self.ever_ips.append(addr)
        p = pod_obj(name, nd, addr, app, ready=ready)
        self.pods[name] = p
        return p

    def web_service(self, extra_ports: list[dict]) -> dict:
        r = self.rng
        spec = {}
        if r.random() < 0.3:
            spec["sessionAffinity"] = "ClientIP"
        if r.random() < 0.3:
            spec["trafficDistribution"] = "PreferClose"
        if r.random() < 0.2:
            spec["internalTrafficPolicy"] = "Local"
        ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                 {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}] + extra_ports
        return service_obj("web", "web", WEB_VIP, ports=ports, **spec)

    def api_service(self) -> dict:
        spec = {"externalTrafficPolicy": "Local"} if self.rng.random() < 0.3 else {}
        if self.rng.random() < 0.4:                 # external clients through several nodes: per-node affinity
            spec["sessionAffinity"] = "ClientIP"
        return service_obj("api", "api", API_VIP, stype="NodePort", ports=[
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NODE_PORT}], **spec)

    # ---- events
    def modified(self, name: str, **changes) -> dict:
        old = self.pods[name]
        ready = old["status"]["conditions"][0]["status"] == "True"
        p = pod_obj(name, old["spec"].get("nodeName"), old["status"].get("podIP"), old["metadata"]["labels"]["app"],
                    ready=changes.get("ready", ready),
                    terminating=changes.get("terminating", "deletionTimestamp" in old["metadata"]))
        self.pods[name] = p
        return p

    def step(self, t: int) -> None:
        r = self.rng
        what = r.choice(["add", "add", "ready", "terminate", "delete", "delete", "scale", "rollout", "node-add",
                         "node-delete", "svc-port", "batch"])
        names = sorted(self.pods)
        app_pods = lambda app: sorted(n for n in self.pods if n.startswith(app + "-"))  # noqa: E731
        ev = self.events.append
        if what == "add" or (what in ("ready", "terminate", "delete") and not names):
            p = self.new_pod(r.choice(self.APPS), ready=r.random() < 0.7)
            if p is not None:
                ev(event("ADDED", t, p))
        elif what == "ready":
            n = r.choice(names)
            ready = self.pods[n]["status"]["conditions"][0]["status"] == "True"
            ev(event("MODIFIED", t, self.modified(n, ready=not ready)))
        elif what == "terminate":
            n = r.choice(names)
            ev(event("MODIFIED", t, self.modified(n, terminating=True, ready=r.random() < 0.5)))
        elif what == "delete":
            n = r.choice(names)
            ev(event("DELETED", t, self.pods.pop(n)))
        elif what == "scale":
            app = r.choice(self.APPS)
            if r.random() < 0.5:
                for _ in range(r.randint(1, 3)):
                    p = self.new_pod(app)
                    if p is not None:
                        ev(event("ADDED", t, p))
            else:
                for n in app_pods(app)[: r.randint(1, 3)]:
                    ev(event("DELETED", t, self.pods.pop(n)))
        elif what == "rollout":
            app = r.choice(self.APPS)
            old = app_pods(app)
            for n in old[: r.randint(1, 2)]:
                p = self.new_pod(app)
                if p is not None:
                    ev(event("ADDED", t, p))
                ev(event("DELETED", t, self.pods.pop(n)))
        elif what == "node-add" and self.next_node < 5:
            ev(event("ADDED", t, self.new_node()))
        elif what == "node-delete" and self.live_nodes:
            nd = r.choice(self.live_nodes)
            self.live_nodes.remove(nd)
            ev(event("DELETED", t, node_obj(int(nd.split("-")[1]))))
        elif what == "svc-port":
            extra = [{"name": f"alt{len(self.events)}", "port": 8000 + len(self.events) % 1000, "protocol": "TCP",
                      "targetPort": 8080}]
            prev = self.services["web"]["spec"]["ports"][2:]
            svc = self.web_service(prev + extra)
            self.services["web"] = svc
            ev(event("MODIFIED", t, svc))
        elif what == "batch":
            mine = app_pods("batch")
            if mine:
                ev(event("MODIFIED", t, self.modified(mine[0], ready=r.random() < 0.5)))
            else:
                p = self.new_pod("batch")
                if p is not None:
                    ev(event("ADDED", t, p))

    # ---- flows
    def make_flows(self, n: int, horizon: int) -> list[dict]:
        r = self.rng
        ev_ts = [e["ts"] for e in self.events]
        srcs = self.ever_ips + self.node_ips[:1] + ["100.64.0.7"]
        out = []
        for _ in range(n):
            t = r.choice(ev_ts) if ev_ts and r.random() < 0.15 else r.randrange(0, horizon)
            src = r.choice(srcs) if r.random() < 0.85 else f"100.64.0.{r.randint(1, 250)}"
            kind = r.choice(["vip", "vip", "vip-dns", "pod", "nodeport", "alt"])
            if kind == "vip":
                dst, port, proto = WEB_VIP, 80, TCP
            elif kind == "vip-dns":
                dst, port, proto = WEB_VIP, 53, UDP
            elif kind == "alt":
                dst, port, proto = WEB_VIP, 8000 + r.randrange(0, 12), TCP
            elif kind == "pod":
                dst = r.choice(self.ever_ips) if self.ever_ips else "10.244.0.77"
                port, proto = r.choice([(8080, TCP), (5353, UDP), (9, TCP)])
            else:
                dst, port, proto = r.choice(self.node_ips), NODE_PORT, TCP
                if r.random() < 0.7:                # a roaming client (one of two) half the time
                    src = f"100.64.1.{r.randint(1, 250)}" if r.random() < 0.5 else r.choice(["100.64.1.1",
                                                                                          "100.64.1.2"])
            d = r.choice([None, None, 0.0, 0.5, 3.0, 20.0, 100.0])
            out.append(flow(t, src, dst, port, proto, sport=r.randrange(1024, 65536), duration=d))
        out.sort(key=lambda f: f["ts"])
        return out


def test_random_stream_generator_reaches_every_event_kind():
    kinds, groups, multi = set(), 0, 0
    for seed in range(30):
        s = Stream(seed, 12, 5)
        cluster_from_objects(s.objects)           # a valid base cluster
        kinds |= {f"{e['type']} {e['object']['kind']}" for e in s.events}
        ts = [e["ts"] for e in s.events]
        groups += len(set(ts))
        multi += len(ts) - len(set(ts))
    assert kinds == {"ADDED Pod", "MODIFIED Pod", "DELETED Pod", "ADDED Node", "DELETED Node", "MODIFIED Service"}
    assert multi > 20


def event_streams(max_events: int = 14, max_flows: int = 60):
    """Hypothesis strategy: a random :class:`Stream` (base objects, events, timed flows)."""
    return st.builds(Stream, st.integers(0, 10**6), st.integers(0, max_events), st.integers(1, max_flows))


@settings(max_examples=25, deadline=None)
@given(s=event_streams(), lb=st.sampled_from(BALANCERS), seed=st.integers(0, 6))
def test_twin_random_streams_are_self_consistent(s, lb, seed):
    """The twin on random streams: every cluster on the way loads, results are well formed, the
    figures add up."""
    rows, summary = naive_event_replay(s.objects, s.events, s.flows, lb=lb, seed=seed)
    assert len(rows) == len(s.flows)
    recs = summary["events"]
    assert summary["event_groups"] == len(recs) == len({e["ts"] for e in s.events})
    assert sum(r["events"] for r in recs) == len(s.events)
    assert summary["broken_connections"] == sum(r["broken_connections"] for r in recs)
    assert summary["udp_flushed"] == sum(r["udp_flushed"] for r in recs)
    for r in recs:
        assert r["changed_backend"] <= r["flows"]
        assert sum(r["kinds"].values()) == r["events"]
    for f, r in zip(s.flows, rows):
        assert r["verdict"] in ("delivered", "refused", "dropped", "rejected", "egress")
        assert (r["reason"] is None) == (r["verdict"] in ("delivered", "egress"))
    assert sum(r["flows"] for r in recs) <= sum(1 for r in rows if r["service"] is not None)


# --------------------------------------------------------------------------- against the fast side

@settings(max_examples=10, deadline=None)
@given(s=event_streams(0, 50), lb=st.sampled_from(BALANCERS), conntrack=st.booleans(),
       ct_max=st.sampled_from([None, 2]))
def test_fast_without_events_matches_twin(s, lb, conntrack, ct_max):
    """No events: the twin is the stateful replay of one cluster, which fastpath has always done
    (this checks the harness: files written, columns decoded, conntrack options passed)."""
    want, summary = naive_event_replay(s.objects, [], s.flows, lb=lb, conntrack=conntrack,
                                       conntrack_max=ct_max if conntrack else None)
    assert summary == {"broken_connections": 0, "udp_flushed": 0, "event_groups": 0, "events": []}
    opts = {"conntrack_max": ct_max} if conntrack and ct_max is not None else {}
    with tempfile.TemporaryDirectory() as d:
        got = fast_replay(Path(d), s.objects, None, s.flows, lb=lb, seed=0, conntrack=conntrack, **opts)
    got = got.table.select(list(RESULT_KEYS)).to_pylist()
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{lb}: row {i} ({show_flow(s.flows[i])}): fast {g} twin {w}"
    assert len(got) == len(want)


@pytest.mark.parametrize("lb", BALANCERS)
def test_fast_rollout_matches_twin(lb):
    objects, events, flows, _ = rollout_case()
    assert_fast_equals_twin(objects, events, flows, lb=lb, seed=5)


def test_fast_maglev_and_random_churn_match_twin():
    objects, events, flows = scale_down_case(n_flows=600)
    for lb in ("maglev", "random"):
        assert_fast_equals_twin(objects, events, flows, lb=lb)


def test_fast_broken_and_flushed_match_twin():
    objects = [node_obj(0), node_obj(1)]
    objects += [pod_obj("a1", "node-0", "10.244.0.10", "x"), pod_obj("b1", "node-1", "10.244.1.10", "x")]
    events = [event("DELETED", 5 * S, objects[3])]
    flows = [flow(0, "10.244.0.10", "10.244.1.10", 8080, TCP, 1, duration=10.0),
             flow(0, "10.244.0.10", "10.244.1.10", 5353, UDP, 2, duration=10.0),
             flow(S, "10.244.0.10", "10.244.1.10", 8080, TCP, 3),
             flow(5 * S, "10.244.0.10", "10.244.1.10", 8080, TCP, 4)]
    _, summary = assert_fast_equals_twin(objects, events, flows, ts_type="timestamp")
    assert (summary["broken_connections"], summary["udp_flushed"]) == (3, 0)   # the UDP flow: straight to b1


def test_udp_flushed_when_its_pod_stops_serving():
    """A rollout's old pod turns terminating and not Ready at 5 s, and is deleted at 35 s: the UDP
    stream to it through its service is flushed at 5 s; the TCP connection keeps its pod and breaks
    only at 35 s, and so does a UDP stream straight to the pod (kube-proxy flushes only entries to a
    service address)."""
    objects = [node_obj(0), node_obj(1)]
    objects += [pod_obj("a1", "node-0", "10.244.0.10", "x"), pod_obj("b1", "node-1", "10.244.1.10", "y"),
                service_obj("y", "y", API_VIP)]
    events = [event("MODIFIED", 5 * S, pod_obj("b1", "node-1", "10.244.1.10", "y", ready=False, terminating=True)),
              event("DELETED", 35 * S, objects[3])]
    flows = [flow(0, "10.244.0.10", API_VIP, 53, UDP, 1, duration=10.0),                # flushed at 5 s
             flow(0, "10.244.0.10", "10.244.1.10", 8080, TCP, 2, duration=10.0),        # over before 35 s
             flow(0, "10.244.0.10", "10.244.1.10", 5353, UDP, 5, duration=10.0),        # not flushed: no service
             flow(S, "10.244.0.10", "10.244.1.10", 8080, TCP, 3, duration=60.0),        # broken at 35 s
             flow(6 * S, "10.244.0.10", "10.244.1.10", 5353, UDP, 4, duration=60.0)]    # broken at 35 s
    rows, summary = naive_event_replay(objects, events, flows)
    assert [r["verdict"] for r in rows] == ["delivered"] * 5
    assert rows[0]["dst_pod"] == "default/b1" and rows[0]["service"] == "default/y:dns"
    assert [(r["broken_connections"], r["udp_flushed"]) for r in summary["events"]] == [(0, 1), (2, 0)]
    _, fast = assert_fast_equals_twin(objects, events, flows)
    assert (fast["broken_connections"], fast["udp_flushed"]) == (2, 1)


@pytest.mark.parametrize("conntrack", [False, True])
def test_fast_node_deletion_matches_twin(conntrack):
    objects, events, flows = node_deletion_case()
    rows, _ = assert_fast_equals_twin(objects, events, flows, conntrack=conntrack)
    assert sum(r["reason"] == "node-not-in-input" for r in rows) == 7


def test_fast_node_added_matches_twin():
    """A node joins (no pod on it yet): no service port's facts or endpoints change, so none is affected;
    its NodePort frontend serves at once, and a pod scheduled there later is reached."""
    objects = [node_obj(0), pod_obj("w", "node-0", "10.244.0.10", "web"), pod_obj("a", "node-0", "10.244.0.11", "api"),
               service_obj("web", "web", WEB_VIP), service_obj("api", "api", API_VIP, stype="NodePort", ports=[
                   {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NODE_PORT}])]
    events = [event("ADDED", S, node_obj(1)), event("ADDED", 2 * S, pod_obj("w2", "node-1", "10.244.1.10", "web"))]
    flows = [flow(S, "100.64.1.9", "192.168.0.11", NODE_PORT), flow(S, "10.244.0.10", WEB_VIP, 80, sport=2),
             flow(2 * S, "10.244.0.10", "10.244.1.10", 8080, sport=3)]
    rows, summary = assert_fast_equals_twin(objects, events, flows)
    assert [r["verdict"] for r in rows] == ["delivered"] * 3 and rows[0]["src_node"] == "node-1"
    assert [r["affected_service_ports"] for r in summary["events"]] == [[], ["default/web:dns", "default/web:http"]]


def test_fast_last_node_deleted_matches_twin():
    """The only node goes (a NodePort service without endpoints): its frontends go with it."""
    objects = [node_obj(2, cpu=2), service_obj("api", "api", API_VIP, stype="NodePort", ports=[
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NODE_PORT}])]
    events = [event("DELETED", 1, objects[0])]
    flows = [flow(0, "100.64.1.9", "192.168.0.12", NODE_PORT), flow(9 * S, "100.64.1.9", "192.168.0.12", NODE_PORT)]
    rows, _ = assert_fast_equals_twin(objects, events, flows)
    assert [(r["verdict"], r["reason"]) for r in rows] == [("rejected", "no-endpoints"), ("dropped", "no-route")]


@settings(max_examples=25, deadline=None)
@given(s=event_streams(12, 50), lb=st.sampled_from(BALANCERS), seed=st.integers(0, 6), conntrack=st.booleans(),
       ct_max=st.sampled_from([None, 2, 5]), conn_duration=st.sampled_from([30.0, 4.0]))
def test_fast_random_streams_match_twin(s, lb, seed, conntrack, ct_max, conn_duration):
    assert_fast_equals_twin(s.objects, s.events, s.flows, lb=lb, seed=seed, conntrack=conntrack,
                            conntrack_max=ct_max if conntrack else None, conn_duration=conn_duration)
