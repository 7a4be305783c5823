"""Conntrack, FDB and neighbour state over time (:mod:`fastpath.stages.conntrack`) against its slow twin.

The stateless stages resolve a timed batch; then the kernel (:class:`ConntrackStage`)
and the twin (``tests/naive/conntrack.py``: a dict per node, a heap of expiries)
apply the time rules to the same rows. Every result column, every timeline row and
the summary must agree: hand cases first (a table filling exactly at its max,
one-shot UDP evicted, established TCP refusing new flows, TIME_WAIT, both nodes of a
cross-node connection, an FDB entry ageing out), then random timed traces.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.model import Cluster, Node
from fastpath.codes import PATHS, REASONS, VERDICTS
from fastpath.pipeline import Results
from fastpath.stages.conntrack import ConntrackStage, bucket_count, conntrack_max, explain_conntrack
from fastpath.tables.timers import BLOCK, POOL_NFREE, Q_COUNT
from fastpath.traces import normalize_batch
from naive.conntrack import NaiveConntrack
from naive.pipeline import ip
from naive.pipeline import make_pod as _pod
from naive.services import random_cluster as random_service_cluster
from naive.services import random_flows as random_service_flows

S = 10**9
TCP, UDP = 6, 17
KINDS = ("pod", "host", "external")
INT_COLS = ("verdict", "reason", "path", "src_node", "dst_node", "src_pod", "dst_pod", "service", "dnat_ip",
            "dnat_port", "snat_ip", "hops")


def to_flows(flows: list[dict]):
    cols = {k: np.array([f[k] for f in flows], dtype=t) for k, t in
            (("src_ip", np.uint32), ("dst_ip", np.uint32), ("src_port", np.uint16), ("dst_port", np.uint16),
             ("proto", np.uint8), ("ts", np.int64))}
    if any("duration" in f for f in flows):
        cols["duration"] = pa.array([f.get("duration") for f in flows], pa.float64())
    if any("bytes" in f for f in flows):
        cols["bytes"] = np.array([f.get("bytes", 0) for f in flows], np.uint64)
    return normalize_batch(cols)


def named(dp, r: Results, i: int) -> dict:
    t = dp.tables
    nm = lambda names, k: names[k] if k >= 0 else None  # noqa: E731
    return {"verdict": VERDICTS[r.verdict[i]], "reason": REASONS[r.reason[i]] or None, "path": PATHS[r.path[i]],
            "src_node": nm(t.node_names, int(r.src_node[i])), "dst_node": nm(t.node_names, int(r.dst_node[i])),
            "src_pod": nm(t.pod_names, int(r.src_pod[i])), "dst_pod": nm(t.pod_names, int(r.dst_pod[i])),
            "service": nm(list(dp.services.names), int(r.service[i])), "dnat_ip": int(r.dnat_ip[i]),
            "dnat_port": int(r.dnat_port[i]), "snat_ip": int(r.snat_ip[i]), "hops": int(r.hops[i]),
            "src_kind": KINDS[r.src_kind[i]]}


def run_both(cluster: Cluster, flows: list[dict], *, batches: int = 1, **opts):
    """Kernel and twin over the same resolved flows: (kernel rows, twin rows, stage, twin)."""
    dp = compile_cluster(cluster, lb="random")
    fl = to_flows(flows)
    base = dp.resolve_flows(fl)
    stage = ConntrackStage(dp, timeline=True, **opts)
    twin = NaiveConntrack(cluster, sizing=cluster.conntrack_sizing, **opts)
    want = []
    for i, f in enumerate(flows):
        r = named(dp, base, i)
        g = dict(f)
        g["duration"] = f.get("duration")
        twin.track(g, r)
        want.append(r)
    twin.finish()
    n = len(flows)
    cuts = sorted(set([0, n] + [random.Random(n).randint(0, n) for _ in range(batches - 1)]))
    got_r = Results(**{k: v.copy() for k, v in vars(base).items()})
    for lo, hi in zip(cuts, cuts[1:]):
        part = Results(**{k: v[lo:hi] for k, v in vars(got_r).items()})
        stage.run(fl.slice(lo, hi), part)
    stage.finish()
    got = [named(dp, got_r, i) for i in range(n)]
    return got, want, stage, twin


def assert_agree(cluster, flows, **opts) -> tuple[ConntrackStage, NaiveConntrack, list[dict]]:
    got, want, stage, twin = run_both(cluster, flows, **opts)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"row {i} {flows[i]}: kernel {g} twin {w}"
    tl = stage.timeline_table().to_pylist()
    want_tl = twin.rows
    assert len(tl) == len(want_tl)
    for a, b in zip(tl, want_tl):
        a = dict(a, t=int(pa.scalar(a["t"], pa.timestamp("ns")).value))
        assert a == b
    assert stage.summary() == twin.summary()
    return stage, twin, got


# --------------------------------------------------------------------------- hand cases

def two_nodes(cpu=None) -> Cluster:
    nodes = [Node("node-a", ip("192.168.1.10"), None, ((ip("10.244.0.0"), 24),), None, cpu=cpu),
             Node("node-b", ip("192.168.1.11"), None, ((ip("10.244.1.0"), 24),), None, cpu=cpu)]
    pods = [_pod("a1", "node-a", "10.244.0.5", ("web", 8080, TCP), ("dns", 53, UDP)),
            _pod("a2", "node-a", "10.244.0.6", ("web", 8080, TCP)),
            _pod("b1", "node-b", "10.244.1.7", ("web", 8080, TCP), ("dns", 53, UDP))]
    return Cluster(nodes=nodes, pods=pods, services=[], slices=[])


def fl(t, src, dst, port, proto=TCP, sport=40000, **kw):
    return dict(ts=int(t), src_ip=ip(src), dst_ip=ip(dst), src_port=sport, dst_port=port, proto=proto, **kw)


def test_sizing_formula():
    assert conntrack_max(None) == 131072
    assert conntrack_max(2) == 131072 and conntrack_max(4) == 131072
    assert conntrack_max(8) == 262144
    assert conntrack_max(64) == 1048576
    assert bucket_count(131072) == 32768 and bucket_count(3) == 1
    c = two_nodes(cpu=16)
    stage = ConntrackStage(compile_cluster(c))
    assert stage.summary()["nodes"]["node-a"]["conntrack_max"] == 524288


def test_fills_exactly_at_max():
    """Max 3 on node-a, established TCP: three connections fit, the fourth is dropped."""
    c = two_nodes()
    flows = [fl(i * S, "10.244.0.5", "10.244.0.6", 8080, sport=40000 + i) for i in range(4)]
    stage, _, got = assert_agree(c, flows, conntrack_max=3)
    assert [g["verdict"] for g in got] == ["delivered"] * 3 + ["dropped"]
    assert got[3]["reason"] == "conntrack-full" and got[3]["path"] == "none" and got[3]["dst_pod"] is None
    s = stage.summary()
    assert s["conntrack_drops"] == 1
    assert s["nodes"]["node-a"] == dict(s["nodes"]["node-a"], conntrack_peak=3, conntrack_max=3, conntrack_drops=1)


def test_established_tcp_refuses_new_flows_until_time_wait_ends():
    """A table full of ASSURED TCP refuses everything, UDP too, until the entries expire
    (duration + TIME_WAIT 120 s)."""
    c = two_nodes()
    flows = [fl(0, "10.244.0.5", "10.244.0.6", 8080, sport=1, duration=5.0),
             fl(1 * S, "10.244.0.5", "10.244.0.6", 8080, sport=2, duration=5.0),
             fl(2 * S, "10.244.0.5", "10.244.0.6", 8080, UDP, sport=3),
             fl(124 * S, "10.244.0.5", "10.244.0.6", 8080, sport=4),      # 0 + 5 + 120 = 125: still held
             fl(125 * S, "10.244.0.5", "10.244.0.6", 8080, sport=5)]      # the first one's TIME_WAIT is over
    _, _, got = assert_agree(c, flows, conntrack_max=2)
    assert [g["verdict"] for g in got] == ["delivered", "delivered", "dropped", "dropped", "delivered"]


def test_one_shot_udp_evicted_first():
    """One bucket (max 3 -> 1 bucket): one-shot UDP entries are not ASSURED, the newest goes first."""
    c = two_nodes()
    flows = [fl(0, "10.244.0.5", "10.244.0.6", 8080, sport=1),                  # TCP, ASSURED
             fl(S, "10.244.0.6", "10.244.0.5", 53, UDP, sport=2),                  # one-shot DNS
             fl(2 * S, "10.244.0.6", "10.244.0.5", 53, UDP, sport=3),              # one-shot DNS (newest)
             fl(3 * S, "10.244.0.5", "10.244.0.6", 8080, sport=4)]                 # evicts sport=3
    stage, twin, got = assert_agree(c, flows, conntrack_max=3)
    assert [g["verdict"] for g in got] == ["delivered"] * 4
    assert stage.summary()["nodes"]["node-a"]["conntrack_peak"] == 3
    assert sorted(e["seq"] for e in twin.table["node-a"].values()) == [1, 2, 4]


def test_udp_stream_becomes_assured():
    """A UDP flow alive 2 s is a stream: ASSURED from then on, never evicted."""
    c = two_nodes()
    flows = [fl(0, "10.244.0.6", "10.244.0.5", 53, UDP, sport=1, duration=10.0),
             fl(S, "10.244.0.5", "10.244.0.6", 8080, sport=2),
             fl(int(1.5 * S), "10.244.0.5", "10.244.0.6", 8080, sport=3),   # stream not yet ASSURED: evicted
             fl(3 * S, "10.244.0.5", "10.244.0.6", 8080, sport=4)]          # all ASSURED now: dropped
    _, _, got = assert_agree(c, flows, conntrack_max=2)
    assert [g["verdict"] for g in got] == ["delivered", "delivered", "delivered", "dropped"]


def test_udp_stream_needs_a_packet_after_2_s():
    """A replied UDP flow is a stream only with a packet *after* 2 s (``time_after(jiffies, stream_ts)``):
    alive exactly 2 s it keeps the 30 s timeout (gone by 50 s: the next connection finds room in a table
    of one); alive 2.001 s it is an ASSURED stream held 120 s after its last packet (the next one is dropped)."""
    c = two_nodes()
    for alive, later in ((2.0, "delivered"), (2.001, "dropped")):
        flows = [fl(0, "10.244.0.6", "10.244.0.5", 53, UDP, sport=1, duration=alive),
                 fl(50 * S, "10.244.0.5", "10.244.0.6", 8080, sport=2)]
        _, _, got = assert_agree(c, flows, conntrack_max=1)
        assert [g["verdict"] for g in got] == ["delivered", later], alive


def test_time_wait_holds_entries_after_close():
    c = two_nodes()
    flows = [fl(0, "10.244.0.5", "10.244.0.6", 8080, duration=1.0)] + \
        [fl(t * S, "10.244.1.7", "192.168.1.11", 9, sport=5) for t in (60, 120, 121, 122)]
    stage, _, _ = assert_agree(c, flows, interval=60.0)
    tl = [r for r in stage.timeline_table().to_pylist() if r["node"] == "node-a"]
    # interval [0, 60): the connection; [60, 120): TIME_WAIT still holds it; [120, 180): gone at 121 s
    assert [r["conntrack_entries"] for r in tl] == [1, 1, 1]
    assert stage.occupancy(0) == 0


def test_cross_node_connection_holds_entries_on_both_nodes():
    c = two_nodes()
    flows = [fl(0, "10.244.0.5", "10.244.1.7", 8080, bytes=1000),
             fl(S, "10.244.0.5", "10.244.1.7", 9999, sport=2),                 # refused: RST, 10 s on both
             fl(2 * S, "10.244.0.5", "10.244.1.99", 8080, sport=3)]            # no such pod: SYN_SENT on a only
    stage, twin, got = assert_agree(c, flows)
    assert [g["verdict"] for g in got] == ["delivered", "refused", "dropped"]
    assert stage.summary()["nodes"]["node-a"]["conntrack_peak"] == 3
    assert stage.summary()["nodes"]["node-b"]["conntrack_peak"] == 2
    tl = stage.timeline_table().to_pylist()
    assert tl[0]["node"] == "node-a" and tl[0]["bytes_out"] == 1000 and tl[1]["bytes_in"] == 1000


def test_backend_node_full_drops_and_client_entry_stays_unanswered():
    c = two_nodes()
    flows = [fl(0, "10.244.1.7", "10.244.1.7", 8080, sport=1),                  # loopback: no entry
             fl(0, "192.168.1.11", "10.244.1.7", 8080, sport=2),               # host -> own pod: node-b 1
             fl(S, "10.244.0.5", "10.244.1.7", 8080, sport=3),                 # node-b full: dropped there
             fl(200 * S, "10.244.0.5", "10.244.0.6", 8080, sport=4)]
    stage, twin, got = assert_agree(c, flows, conntrack_max=1)
    assert got[2]["verdict"] == "dropped" and got[2]["reason"] == "conntrack-full"
    assert got[2]["dst_node"] == "node-b" and got[2]["hops"] == 4
    assert stage.summary()["nodes"]["node-a"]["conntrack_peak"] == 1


def test_fdb_entry_ages_out_and_floods():
    """b1 says nothing for more than 300 s: the next frame to it floods node-b's bridge (still delivered)."""
    c = two_nodes()
    flows = [fl(0, "10.244.0.5", "10.244.1.7", 8080, duration=0.5),
             fl(200 * S, "10.244.0.5", "10.244.1.7", 8080, sport=2, duration=0.5),   # 200 - 0.5 < 300: known
             fl(501 * S, "10.244.0.5", "10.244.1.7", 8080, sport=3),                 # 501 - 200.5 > 300: flood
             fl(502 * S, "10.244.0.5", "10.244.1.7", 8080, sport=4)]                 # learned again
    stage, _, got = assert_agree(c, flows, interval=100.0)
    assert [g["verdict"] for g in got] == ["delivered"] * 4
    s = stage.summary()
    assert s["fdb_floods"] == 1 and s["nodes"]["node-b"]["fdb_floods"] == 1
    assert sum(r["fdb_floods"] for r in stage.timeline_table().to_pylist()) == 1


def test_fdb_entry_aged_exactly_at_300_s():
    """The bridge ages an entry once 300 s have passed since its MAC was last heard (``has_expired``:
    ``updated + ageing_time <= now``; the gc deletes it at that moment): a frame at exactly 300 s floods,
    one a nanosecond earlier does not."""
    c = two_nodes()
    flows = [fl(0, "10.244.0.5", "10.244.1.7", 8080, duration=0.0),
             fl(300 * S - 1, "10.244.0.5", "10.244.1.7", 8080, sport=2, duration=0.0),   # 1 ns short: known
             fl(600 * S - 1, "10.244.0.5", "10.244.1.7", 8080, sport=3, duration=0.0)]   # exactly 300 s: aged
    stage, _, got = assert_agree(c, flows, interval=100.0)
    assert [g["verdict"] for g in got] == ["delivered"] * 3
    assert stage.summary()["fdb_floods"] == 1 and stage.summary()["nodes"]["node-b"]["fdb_floods"] == 1


def test_policy_denied_across_nodes_holds_an_entry_only_for_ingress():
    """A cross-node connection denied by the backend's ingress policy left the client's node (SYN_SENT
    120 s there, its next hop's neighbour entry used); one denied by the client's egress policy is
    dropped on the client's node before its entry is confirmed: no entry, no neighbour entry."""
    from fastpath.cluster.load import cluster_from_objects

    def obj_pod(name, node, addr, app):
        return {"kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
                "status": {"podIP": addr, "conditions": [{"type": "Ready", "status": "True"}]}}

    def obj_node(name, addr, cidr):
        return {"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": addr}]}}

    deny = lambda name, app, kind: {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",  # noqa: E731
                                    "metadata": {"name": name, "namespace": "default"},
                                    "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": [kind]}}
    c = cluster_from_objects([obj_node("node-a", "192.168.1.10", "10.244.0.0/24"),
                              obj_node("node-b", "192.168.1.11", "10.244.1.0/24"),
                              obj_pod("quiet", "node-a", "10.244.0.5", "quiet"),    # may send nothing
                              obj_pod("client", "node-a", "10.244.0.6", "client"),
                              obj_pod("closed", "node-b", "10.244.1.7", "closed"),  # takes nothing
                              deny("no-egress", "quiet", "Egress"), deny("no-ingress", "closed", "Ingress")])
    flows = [fl(0, "10.244.0.5", "10.244.1.7", 8080, sport=1),        # egress-denied on node-a
             fl(S, "10.244.0.6", "10.244.1.7", 8080, sport=2)]        # ingress-denied on node-b
    stage, _, got = assert_agree(c, flows)
    assert [(g["verdict"], g["reason"]) for g in got] == [("denied", "policy-egress"), ("denied", "policy-ingress")]
    s = stage.summary()["nodes"]
    assert s["node-a"]["conntrack_peak"] == 1 and s["node-b"]["conntrack_peak"] == 0
    assert s["node-a"]["neigh_peak"] == 1                              # node-b's address, for the second only


def test_neighbour_table_overflow_counted():
    """Node-a routes to 1,100 distinct pod addresses of node-b... only node-b's table of its own pods grows;
    a host reaching 1,100 addresses it must resolve overflows at gc_thresh3."""
    nodes = [Node("n0", ip("192.168.1.10"), None, ((ip("10.244.0.0"), 22),), None)]
    pods = [_pod(f"p{i}", "n0", str(ipaddress.IPv4Address(ip("10.244.0.0") + 10 + i)), ("web", 80, TCP))
            for i in range(1100)]
    c = Cluster(nodes=nodes, pods=pods, services=[], slices=[])
    flows = [dict(ts=i * 1000, src_ip=ip("192.168.1.10"), dst_ip=ip("10.244.0.0") + 10 + i, src_port=1000,
                  dst_port=80, proto=TCP) for i in range(1100)]
    stage, _, got = assert_agree(c, flows)
    assert all(g["verdict"] == "delivered" for g in got)
    s = stage.summary()
    assert s["neigh_overflows"] == 1100 - 1024 and s["nodes"]["n0"]["neigh_peak"] == 1024


def test_trace_without_ts_leaves_results_alone():
    c = two_nodes()
    dp = compile_cluster(c)
    cols = {"src_ip": np.array([ip("10.244.0.5")], np.uint32), "dst_ip": np.array([ip("10.244.0.6")], np.uint32),
            "src_port": np.array([1], np.uint16), "dst_port": np.array([8080], np.uint16),
            "proto": np.array([TCP], np.uint8)}
    flows = normalize_batch(cols)
    r = dp.resolve_flows(flows)
    before = r.verdict.copy()
    stage = ConntrackStage(dp, conntrack_max=1)
    stage.run(flows, r)
    stage.finish()
    assert (r.verdict == before).all() and not stage.started
    assert stage.timeline_table().num_rows == 0


def test_explain_lines():
    lines = explain_conntrack(None, TCP, 0, 0, 1, duration=5.0)
    assert len(lines) == 2 and "125 s" in lines[0] and "TIME_WAIT" in lines[0]
    assert "no entry" in explain_conntrack(None, UDP, 2, 0, -1)[0]
    assert explain_conntrack(None, UDP, 2, 0, -1, say_none=False) == []


# --------------------------------------------------------------------------- random timed traces

def timed_flows(rng: random.Random, c, n: int) -> list[dict]:
    """Random service flows spread over time (gaps from 0 to 1,000 s, so entries expire
    between rows and across whole lifetimes), with durations, bytes, and pod-to-pod rows (bridged or routed)."""
    flows = random_service_flows(rng, c, n)
    pods = [p.ip for p in c.pods if p.ip is not None]
    t = 0
    for f in flows:
        t += rng.choice([0, 10**6, 3 * 10**8, S, 31 * S, 59 * S, 130 * S, 1000 * S])
        f["ts"] = t
        if rng.random() < 0.3 and pods:                  # pod to pod straight, over the bridge or routed
            f["dst_ip"], f["dst_port"] = rng.choice(pods), rng.choice([8080, 8081])
        if rng.random() < 0.7:
            f["duration"] = rng.choice([None, 0.0, 0.001, 1.9, 2.0, 2.5, 40.0, 400.0])
        f["bytes"] = rng.randint(0, 10**6)
    return flows


@pytest.mark.parametrize("ct_max", [None, 300])
def test_queues_span_and_reuse_blocks(ct_max):
    """A trace long and dense enough that the expiry queues hold several blocks of rows at once, blocks
    spent at a head are reused at a tail, and the pool grows between batches: 40,000 flows over 320 s,
    most without a duration (one lane), some with one (the heap), a few pod to pod; with room, and with
    small tables (evictions, drops, records and entries without one side by side)."""
    rng = random.Random(11)
    c = random_service_cluster(rng, n_nodes=3, n_services=4)
    flows = random_service_flows(rng, c, 40_000)
    pods = [p.ip for p in c.pods if p.ip is not None]
    t = 0
    for f in flows:
        t += rng.randint(0, 16 * 10**6)
        f["ts"] = t
        if rng.random() < 0.2 and pods:
            f["dst_ip"], f["dst_port"] = rng.choice(pods), 8080
        if rng.random() < 0.1:
            f["duration"] = rng.choice([0.5, 3.0, 70.0])
    stage, _, _ = assert_agree(c, flows, conntrack_max=ct_max, batches=6, default_duration=30.0)
    if ct_max is None:
        assert stage.qs[:-1, Q_COUNT].max() > BLOCK      # a queue spans blocks (at the end, still)
        assert stage.qs[-1, POOL_NFREE] > 0             # and blocks came back to the pool (LIFO: reused first)
    else:
        assert stage.summary()["conntrack_drops"] > 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 120), ct_max=st.sampled_from([1, 2, 3, 5, 8, 40, None]),
       interval=st.sampled_from([0.5, 1.0, 7.0, 60.0]), batches=st.integers(1, 4))
def test_random_timed_traces(seed, n, ct_max, interval, batches):
    rng = random.Random(seed)
    c = random_service_cluster(rng, n_nodes=rng.randint(1, 4), n_services=4)
    c = dataclasses.replace(c, nodes=[dataclasses.replace(nd, cpu=rng.choice([None, 2, 8])) for nd in c.nodes])
    flows = timed_flows(rng, c, n)
    assert_agree(c, flows, conntrack_max=ct_max, interval=interval, batches=batches, default_duration=30.0)


# --------------------------------------------------------------------------- real clusters

SAMPLE = Path(__file__).resolve().parents[1] / "traces" / "sample-cluster.json"
DUMPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-k8s-dumps"


def _real_inputs() -> list[str]:
    from test_real_dumps import REJECTED

    names = sorted(p.name for p in DUMPS.iterdir() if p.name != "SOURCES.md" and not p.name.startswith(".")) \
        if DUMPS.is_dir() else []
    return ["sample"] + [n for n in names if n not in REJECTED]


@pytest.mark.parametrize("name", _real_inputs())
def test_real_clusters_agree_with_the_twin(name, tmp_path):
    """The bundled sample and every real dump that loads: a timed synthetic trace over it (mixed durations,
    a high rate, small tables so entries are evicted and refused), kernel and twin row by row."""
    from fastpath import load_cluster, synth_trace

    c = load_cluster(SAMPLE if name == "sample" else DUMPS / name)
    if not any(p.ip is not None and p.node is not None for p in c.pods):
        pytest.skip("no running pod with an address: nothing to make flows between")
    trace = tmp_path / "t.arrow"
    synth_trace(c, 800, seed=3, out=trace, duration_mix=True, rate=400.0, cache=False)
    t = pa.ipc.open_file(pa.memory_map(str(trace))).read_all()
    if "dst_name" in t.column_names:             # the twin's flows are addresses: rows to a name are left out
        t = t.filter(pc.is_null(t.column("dst_name")))
    cols = {k: t.column(k).to_pylist() for k in ("src_ip", "dst_ip", "src_port", "dst_port", "proto")}
    ts = t.column("ts").cast(pa.int64()).to_pylist()
    dur = t.column("duration").to_pylist() if "duration" in t.column_names else [None] * t.num_rows
    flows = [dict(ts=ts[i], duration=dur[i], **{k: v[i] for k, v in cols.items()}) for i in range(t.num_rows)]
    assert flows
    assert_agree(c, flows, conntrack_max=40, batches=3, default_duration=30.0)
