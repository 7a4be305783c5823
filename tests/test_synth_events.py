"""``fastpath synth events``: rollouts, drains and scaling as a watch stream a replay can take.

Small synthetic clusters (5 nodes, node-000 the tainted control plane) keep it fast. Each
check replays the events over the cluster's own objects, as ``replay --events`` would.
"""
from __future__ import annotations

import ipaddress
import json
import math
from collections import Counter

import pytest

from clirun import cli
from fastpath.cli import build_parser
from fastpath.cluster.endpoints import derive_slices
from fastpath.cluster.load import cluster_from_objects
from fastpath.cluster.synth import synth_cluster, write_cluster
from fastpath.cluster.synth_events import HASH_LABEL, START_NS, synth_events, workload_key, write_events
from fastpath.errors import FastpathError
from naive.endpoints import canonical

GRACE, READY = 30 * 10**9, 2 * 10**9
#: Nodes, pods per node, services of the cluster the checks use.
CLUSTER_ARGS = (5, 14, 12)


@pytest.fixture(scope="module")
def cluster() -> dict:
    return synth_cluster(*CLUSTER_ARGS, seed=7)


@pytest.fixture(scope="module")
def cluster_path(cluster, tmp_path_factory):
    path = tmp_path_factory.mktemp("events") / "cluster.json"
    write_cluster(cluster, path)
    return path


def ident(obj: dict) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace") or ("" if obj["kind"] == "Node" else "default"), meta["name"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", ()))


def groups(events: list[dict]):
    """``(ts, events)`` for each run of equal ``ts``."""
    i = 0
    while i < len(events):
        j = i
        while j < len(events) and events[j]["ts"] == events[i]["ts"]:
            j += 1
        yield events[i]["ts"], events[i:j]
        i = j


def apply(state: dict, group: list[dict]) -> None:
    for e in group:
        if e["type"] == "DELETED":
            state.pop(ident(e["object"]), None)
        else:
            state[ident(e["object"])] = e["object"]


def base_state(cluster: dict) -> dict:
    return {ident(o): o for o in cluster["items"]}


def live(pod: dict) -> bool:
    return "deletionTimestamp" not in pod["metadata"]


# --------------------------------------------------------------------------- the stream itself

@pytest.mark.parametrize("seed", [0, 1])
def test_every_object_loads_and_time_only_moves_on(cluster, seed):
    events = synth_events(cluster, rollouts=2, drains=1, scale=2, span_s=600, seed=seed)
    kinds = Counter(e["type"] for e in events)
    assert kinds["ADDED"] and kinds["MODIFIED"] and kinds["DELETED"]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert START_NS <= events[0]["ts"] and events[-1]["ts"] <= START_NS + 600 * 10**9
    for e in events:
        assert set(e) == {"type", "ts", "object"} and type(e["ts"]) is int
        obj = e["object"]
        meta = obj["metadata"]
        assert obj["kind"] and obj["apiVersion"] and meta["name"] and meta["uid"] and "labels" in meta
        if obj["kind"] != "Node":
            assert meta["namespace"]
        if obj["kind"] in ("Pod", "Node"):
            assert "spec" in obj and "status" in obj
        cluster_from_objects([obj])          # the loader takes it on its own


def test_same_seed_same_bytes(cluster, tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_events(synth_events(cluster, rollouts=1, drains=1, scale=1, span_s=300, seed=5), a)
    write_events(synth_events(cluster, rollouts=1, drains=1, scale=1, span_s=300, seed=5), b)
    write_events(synth_events(cluster, rollouts=1, drains=1, scale=1, span_s=300, seed=6), c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    lines = a.read_text().splitlines()
    assert lines and all(json.loads(line)["object"] for line in lines)


def test_a_directory_reads_as_its_file(cluster_path, tmp_path):
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "cluster.json").write_bytes(cluster_path.read_bytes())
    assert synth_events(tmp_path / "dump", seed=3) == synth_events(cluster_path, seed=3)


# --------------------------------------------------------------------------- rollouts

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rollout_keeps_surge_and_availability(cluster, seed):
    events = synth_events(cluster, rollouts=1, seed=seed)
    added = [e["object"] for e in events if e["type"] == "ADDED"]
    keys = {workload_key(p) for p in added}
    assert len(keys) == 1, keys
    key = keys.pop()
    state = base_state(cluster)
    members = {k: p for k, p in state.items() if k[0] == "Pod" and workload_key(p) == key and live(p)}
    replicas = len(members)
    surge, unavailable = math.ceil(replicas / 4), replicas // 4
    floor = min(replicas - unavailable, sum(ready(p) for p in members.values()))
    old_hashes = {p["metadata"]["labels"].get(HASH_LABEL) for p in members.values()}
    # a Service selects it
    selectors = [o["spec"].get("selector") for o in cluster["items"] if o["kind"] == "Service"]
    assert any(s and s.items() <= dict(key[1]).items() for s in selectors)
    for _, group in groups(events):
        apply(state, group)
        pods = [p for k, p in state.items() if k[0] == "Pod" and workload_key(p) == key and live(p)]
        assert len(pods) <= replicas + surge
        assert sum(ready(p) for p in pods) >= floor
    pods = [p for k, p in state.items() if k[0] == "Pod" and workload_key(p) == key and live(p)]
    assert len(pods) == replicas and all(ready(p) for p in pods)
    new_hashes = {p["metadata"]["labels"].get(HASH_LABEL) for p in pods}
    assert len(new_hashes) == 1 and not new_hashes & old_hashes
    new_hash = new_hashes.pop()
    for p in pods:                               # <deployment>-<new hash>-<5 letters>
        rs, _, suffix = p["metadata"]["name"].rpartition("-")
        assert rs.rpartition("-")[2] == new_hash and len(suffix) == 5


def test_a_pod_comes_up_and_goes_down_in_order(cluster):
    events = synth_events(cluster, rollouts=2, drains=1, scale=1, span_s=600, seed=4)
    by_pod: dict[tuple, list[dict]] = {}
    for e in events:
        if e["object"]["kind"] == "Pod":
            by_pod.setdefault(ident(e["object"]), []).append(e)
    cordoned: dict[str, int] = {e["object"]["metadata"]["name"]: e["ts"] for e in events
                                if e["object"]["kind"] == "Node" and e["object"]["spec"].get("unschedulable")}
    born = 0
    for seq in by_pod.values():
        if seq[0]["type"] == "ADDED":
            born += 1
            add, ip, up = seq[:3]
            pod = add["object"]
            assert pod["status"]["phase"] == "Pending" and "podIP" not in pod["status"] and not ready(pod)
            node = pod["spec"]["nodeName"]
            assert node != "node-000" and not (node in cordoned and cordoned[node] <= add["ts"])
            assert ip["type"] == "MODIFIED" and ip["object"]["status"]["podIP"] and not ready(ip["object"])
            assert ip["object"]["status"]["phase"] == "Running" and add["ts"] < ip["ts"]
            assert up["type"] == "MODIFIED" and ready(up["object"]) and up["ts"] - ip["ts"] == READY
            seq = seq[3:]
        if seq:                                  # then terminating, and gone a grace period later
            term, gone = seq
            assert term["type"] == "MODIFIED" and not ready(term["object"])
            assert term["object"]["metadata"]["deletionTimestamp"]
            assert gone["type"] == "DELETED" and gone["ts"] - term["ts"] == GRACE
    assert born


def test_new_addresses_are_fresh_and_inside_the_node(cluster):
    events = synth_events(cluster, rollouts=2, drains=1, scale=2, span_s=600, seed=9)
    cidr = {o["metadata"]["name"]: ipaddress.ip_network(o["spec"]["podCIDR"])
            for o in cluster["items"] if o["kind"] == "Node"}
    used = {o["status"].get("podIP") for o in cluster["items"] if o["kind"] == "Pod"}
    used |= {a["address"] for o in cluster["items"] if o["kind"] == "Node" for a in o["status"]["addresses"]}
    base = {ident(o) for o in cluster["items"]}
    new = {}
    for e in events:
        pod = e["object"]
        if pod["kind"] == "Pod" and ident(pod) not in base and pod["status"].get("podIP"):
            new.setdefault(ident(pod), set()).add((pod["status"]["podIP"], pod["spec"]["nodeName"]))
    assert new
    ips = [ip for seen in new.values() for ip, _ in seen]
    assert all(len(seen) == 1 for seen in new.values())          # one address a pod, for life
    assert len(ips) == len(set(ips)) and not set(ips) & used
    for seen in new.values():
        ip, node = next(iter(seen))
        assert ipaddress.ip_address(ip) in cidr[node]


def test_calico_addresses_are_fresh_too():
    cluster = synth_cluster(6, 20, 12, seed=2, addressing="calico")
    events = synth_events(cluster, rollouts=2, drains=1, span_s=600)
    used = {o["status"].get("podIP") for o in cluster["items"] if o["kind"] == "Pod"}
    ips = [e["object"]["status"]["podIP"] for e in events if e["type"] == "MODIFIED" and e["object"]["kind"] == "Pod"
           and e["object"]["metadata"]["name"] not in {o["metadata"]["name"] for o in cluster["items"]}
           and e["object"]["status"].get("podIP") and not ready(e["object"])
           and "deletionTimestamp" not in e["object"]["metadata"]]
    assert ips and len(ips) == len(set(ips)) and not set(ips) & used
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.128.0.0/9") for ip in ips)


# --------------------------------------------------------------------------- drains and scaling

@pytest.mark.parametrize("seed", [0, 1])
def test_drain_empties_the_node(cluster, seed):
    events = synth_events(cluster, rollouts=0, drains=1, seed=seed)
    cordons = [e for e in events if e["object"]["kind"] == "Node"]
    assert len(cordons) == 1 and cordons[0]["type"] == "MODIFIED" and cordons[0]["object"]["spec"]["unschedulable"]
    node = cordons[0]["object"]["metadata"]["name"]
    assert node != "node-000"                   # the control plane is tainted: workers are drained
    state = base_state(cluster)
    evicted = [p for p in state.values() if p["kind"] == "Pod" and p["spec"].get("nodeName") == node
               and not p["spec"].get("hostNetwork")]
    for _, group in groups(events):
        apply(state, group)
    left = [p for p in state.values() if p["kind"] == "Pod" and p["spec"].get("nodeName") == node]
    assert evicted and all(p["spec"].get("hostNetwork") for p in left)
    added = [e["object"] for e in events if e["type"] == "ADDED"]
    assert len(added) == sum(live(p) for p in evicted)
    assert Counter(workload_key(p) for p in added) == Counter(workload_key(p) for p in evicted if live(p))
    assert all(p["spec"]["nodeName"] != node and ready(p) for p in state.values()
               if p["kind"] == "Pod" and ident(p) in {ident(a) for a in added})
    assert state[("Node", "", node)]["spec"]["unschedulable"] is True


def _owned(name: str, node: str, ip: str, kind: str, owner: str, labels: dict, host: bool = False) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "db", "labels": labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u-" + owner,
                                              "controller": True}]},
            "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "c", "ports": [
                {"containerPort": 5432, "name": "pg", "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def test_owners_decide_what_a_drain_does():
    """A StatefulSet's pod comes back under its name once gone, a DaemonSet's stays, a ReplicaSet's is replaced."""
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n{k}"}, "spec": {"podCIDR": f"10.1.{k}.0/24"},
              "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{k + 10}"}]}} for k in range(3)]
    pods = [_owned("pg-0", "n0", "10.1.0.2", "StatefulSet", "pg", {"app": "pg"}),
            _owned("agent-x2b7q", "n0", "10.1.0.3", "DaemonSet", "agent", {"app": "agent"}),
            _owned("web-5d8f7c9b4-k2m4p", "n0", "10.1.0.4", "ReplicaSet", "web-5d8f7c9b4",
                   {"app": "web", HASH_LABEL: "5d8f7c9b4"}),
            _owned("web-5d8f7c9b4-zz9xq", "n0", "10.1.0.5", "ReplicaSet", "web-5d8f7c9b4",
                   {"app": "web", HASH_LABEL: "5d8f7c9b4"})]
    events = synth_events(nodes + pods, rollouts=0, drains=1, span_s=120)
    assert events[0]["object"]["metadata"]["name"] == "n0"          # the only node with pods to evict
    seq = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["object"]["kind"] == "Pod"]
    assert ("MODIFIED", "agent-x2b7q") not in seq
    assert seq.index(("DELETED", "pg-0")) < seq.index(("ADDED", "pg-0"))
    added = [e["object"] for e in events if e["type"] == "ADDED"]
    assert {p["metadata"]["name"] for p in added} >= {"pg-0"} and len(added) == 3
    for web in [p for p in added if p["metadata"]["name"] != "pg-0"]:
        assert web["metadata"]["name"].startswith("web-5d8f7c9b4-") and web["spec"]["nodeName"] != "n0"
        assert web["metadata"]["ownerReferences"][0]["name"] == "web-5d8f7c9b4"
    # a rollout makes a new ReplicaSet: its name, the pods' hash label and owner agree
    events = synth_events(nodes + pods, span_s=120, seed=1)
    new = [e["object"] for e in events if e["type"] == "ADDED"]
    assert len(new) == 2 and all(p["metadata"]["labels"]["app"] == "web" for p in new)   # the one Deployment
    for p in new:
        rs, _, _ = p["metadata"]["name"].rpartition("-")
        assert p["metadata"]["ownerReferences"][0]["name"] == rs == "web-" + p["metadata"]["labels"][HASH_LABEL]
        assert rs != "web-5d8f7c9b4"


def test_scale_moves_one_workload(cluster):
    for seed in range(4):
        events = synth_events(cluster, rollouts=0, scale=1, seed=seed)
        keys = {workload_key(e["object"]) for e in events if e["object"]["kind"] == "Pod"}
        assert len(keys) == 1
        state = base_state(cluster)
        before = sum(workload_key(p) in keys and live(p) for p in state.values() if p["kind"] == "Pod")
        for _, group in groups(events):
            apply(state, group)
        after = sum(workload_key(p) in keys for p in state.values() if p["kind"] == "Pod")
        assert after != before and after >= 1 and abs(after - before) <= max(1, before // 2)


def test_slices_follow_the_pods(cluster):
    """After every group, the given slices say what the EndpointSlice controller derives from the pods."""
    events = synth_events(cluster, rollouts=2, drains=1, scale=1, span_s=600, seed=1)
    assert any(e["object"]["kind"] == "EndpointSlice" for e in events)
    state = base_state(cluster)
    selected = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in cluster["items"]
                if o["kind"] == "Service" and o["spec"].get("selector")}

    def key(s):
        return (s[0], s[1], s[2], tuple(sorted(s[3], key=repr)))

    for _, group in groups(events):
        apply(state, group)
        given = cluster_from_objects(list(state.values()))
        bare = cluster_from_objects([o for o in state.values() if o["kind"] != "EndpointSlice"
                                     or (o["metadata"]["namespace"],
                                         o["metadata"]["labels"]["kubernetes.io/service-name"]) not in selected])
        ours = [s for s in given.slices if (s.namespace, s.service) in selected]
        assert sorted(map(key, canonical(ours))) == sorted(map(key, canonical(derive_slices(bare))))


# --------------------------------------------------------------------------- errors

def test_bad_input_is_one_clear_error(cluster, tmp_path):
    with pytest.raises(FastpathError, match="no such cluster"):
        synth_events(tmp_path / "nope.json")
    nodes_only = [o for o in cluster["items"] if o["kind"] == "Node"]
    with pytest.raises(FastpathError, match="no workload to roll out"):
        synth_events(nodes_only)
    assert synth_events(nodes_only, rollouts=0) == []
    for bad in (dict(span_s=0), dict(span_s=float("nan")), dict(rollouts=-1), dict(seed=1.5), dict(grace_s=-1),
                dict(drains=True), dict(start_ns=-5)):
        with pytest.raises(FastpathError, match="synth events: "):
            synth_events(cluster, **bad)
    with pytest.raises(FastpathError, match="span of at least"):
        synth_events(cluster, span_s=5)
    with pytest.raises(FastpathError, match="cannot drain 4 of the 4"):
        synth_events(cluster, rollouts=0, drains=4)


# --------------------------------------------------------------------------- the command

def test_cli_writes_the_events(capsys, cluster_path, tmp_path):
    out = tmp_path / "events.jsonl"
    rc, stdout, err = cli(capsys, "synth", "events", cluster_path, "-o", out, "--rollouts", 1, "--drains", 1,
                          "--scale", 1, "--span", 300, "--seed", 2, "--start", 10**18)
    assert rc == 0, err
    lines = out.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events == synth_events(cluster_path, rollouts=1, drains=1, scale=1, span_s=300, seed=2, start_ns=10**18)
    kinds = Counter(e["type"] for e in events)
    assert stdout.startswith(f"wrote {out}: {len(events)} events ({kinds['ADDED']} ADDED, ")
    assert len(stdout.splitlines()) == 1 and "s from ts 1" in stdout
    rc, stdout, err = cli(capsys, "synth", "events", cluster_path, "-o", "-")
    assert rc == 0 and [json.loads(line) for line in stdout.splitlines()] == synth_events(cluster_path)
    assert err.startswith("wrote stdout: ")


@pytest.mark.parametrize("args, names", [
    (["--rollouts", "-1"], ["--rollouts"]),
    (["--span", "abc"], ["--span"]),
    (["--span", "0"], ["span"]),
    (["--seed", "x"], ["--seed"]),
    (["--span", "3"], ["span of at least"]),
    (["--drains", "9"], ["cannot drain 9"]),
])
def test_cli_refuses_bad_numbers_in_one_line(capsys, cluster_path, tmp_path, args, names):
    out = tmp_path / "e.jsonl"
    rc, stdout, err = cli(capsys, "synth", "events", cluster_path, "-o", out, *args)
    assert rc == 2 and not stdout and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fastpath: error: ") and all(n in err for n in names), err
    assert not out.exists()


def test_cli_guards_its_paths(capsys, cluster_path, tmp_path):
    rc, _, err = cli(capsys, "synth", "events", tmp_path / "none.json", "-o", tmp_path / "e.jsonl")
    assert rc == 2 and "no such cluster" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "synth", "events", cluster_path, "-o", cluster_path)
    assert rc == 2 and "would overwrite the cluster input" in err
    rc, _, err = cli(capsys, "synth", "events", cluster_path, "-o", tmp_path / "no" / "e.jsonl")
    assert rc == 2 and "does not exist" in err


def test_every_option_says_its_default():
    import argparse

    sub = build_parser()
    for word in ("synth", "events"):
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    for a in sub._actions:
        if a.option_strings and a.dest != "help":
            assert "default" in a.help or "required" in a.help, a.option_strings
