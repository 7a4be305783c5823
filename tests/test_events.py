"""Cluster events (``--events``, docs/events.md): the reader, the in-place tables, the replay.

The slow twin of the whole replay is ``tests/naive/events.py`` (``tests/test_events_twin.py``);
here: the events file's errors, the in-place address table against a dict, the service-map
editor against a fresh compile after every group, and a replay of the bundled sample with
``fastpath synth events`` rollouts, a drain and scaling, compared epoch by epoch with a
cluster rebuilt from the objects as they then stand.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpath
from fastpath.cluster.load import cluster_from_objects, read_objects
from fastpath.errors import FastpathError
from fastpath.events import events_from_lines, parse_ts, read_events
from fastpath.live import LivePlane
from fastpath.tables.exact import AddressTable
from fastpath.tables.services import compile_services
from fastpath.traces import open_trace

from clirun import cli

SAMPLE = "traces/sample-cluster.json"
T0 = 1_700_000_000_000_000_000


def objects(path=SAMPLE) -> list[dict]:
    """The raw objects of a cluster file or folder, Lists flattened, in the loader's order."""
    from pathlib import Path

    from fastpath.cluster.load import _flatten, cluster_files

    p = Path(path)
    items = ((str(f), o) for f in (cluster_files(p) if p.is_dir() else [p]) for o in read_objects(f))
    return [o if "kind" in o else {**o, "kind": kind} for _, o, kind in _flatten(items)]


def pod_event(obj: dict, ts: int, kind: str = "MODIFIED") -> str:
    return json.dumps({"type": kind, "ts": ts, "object": obj})


# --------------------------------------------------------------------------- the events file

def test_ts_forms():
    assert parse_ts(5, "x") == 5
    assert parse_ts("2023-11-14T22:13:20Z", "x") == T0
    assert parse_ts("2023-11-14T22:13:20.000000001Z", "x") == T0 + 1
    assert parse_ts("2023-11-15T00:13:20.5+02:00", "x") == T0 + 500_000_000
    for bad in ("yesterday", -1, 1.5, True, None):
        with pytest.raises(FastpathError, match='"ts"'):
            parse_ts(bad, "x")


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not JSON"),
    ('{"type": "MODIFIED", "object": {"kind": "Pod", "metadata": {"name": "a"}}}', 'line 2: no "ts"'),
    ('{"type": "CHANGED", "ts": 5, "object": {}}', 'line 2: "type" must be one of'),
    ('{"type": "MODIFIED", "ts": 1, "object": {"kind": "Pod", "metadata": {"name": "a"}}}', "goes back in time"),
    ('{"type": "ADDED", "ts": 9, "object": {"kind": "Pod"}}', "line 2: Pod without metadata.name"),
    ('{"type": "ERROR", "ts": 9, "object": {"code": 410}}', "line 2: the watch stream reported an error"),
])
def test_bad_lines_name_the_line(line, message):
    first = '{"type": "DELETED", "ts": 5, "object": {"kind": "Pod", "metadata": {"name": "x"}}}'
    with pytest.raises(FastpathError, match=message):
        events_from_lines([first, line], "ev.jsonl")


def test_a_line_cut_short_says_so():
    # an events file copied while `kubectl get --watch` was still writing it: the last line ends mid-string
    line = '{"type": "MODIFIED", "ts": 7, "object": {"kind": "Pod", "metadata": {"name": "web-1", "namesp'
    with pytest.raises(FastpathError) as err:
        events_from_lines([line], "ev.jsonl")
    assert str(err.value) == ("ev.jsonl line 1: not JSON (Unterminated string starting at column 87); "
                              "the line ends early (cut short?)")


def test_skipped_kinds_and_bookmarks_are_said(tmp_path):
    p = tmp_path / "ev.jsonl"
    p.write_text("\n".join([
        '{"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "7"}}}',
        '{"type": "ADDED", "ts": 3, "object": {"kind": "ConfigMap", "metadata": {"name": "c"}}}',
        '{"type": "DELETED", "ts": 4, "object": {"kind": "Pod", "metadata": {"name": "p", "namespace": "n"}}}',
        ""]))
    log = read_events(p)
    assert [(e.type, e.kind, e.namespace, e.name, e.line) for e in log.events] == [("DELETED", "Pod", "n", "p", 3)]
    assert any("ConfigMap (1)" in w for w in log.warnings) and any("BOOKMARK" in w for w in log.warnings)


def test_an_object_the_loader_refuses_names_the_line(tmp_path):
    pod = next(o for o in objects() if o["kind"] == "Pod")
    bad = json.loads(json.dumps(pod))
    bad["status"]["podIP"] = "10.1.2.300"
    log = events_from_lines([pod_event(pod, T0), pod_event(bad, T0 + 1)], "ev.jsonl")
    with pytest.raises(FastpathError, match="ev.jsonl line 2"):
        LivePlane(fastpath.load_cluster(SAMPLE), log)


# --------------------------------------------------------------------------- in-place address table

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(0, 1000)), max_size=120))
def test_address_table_updates_match_a_dict(ops):
    table = AddressTable.build(np.zeros(0, np.uint32), np.zeros(0, np.int64))
    want: dict[int, int] = {}
    for remove, ip, value in ops:
        if remove:
            want.pop(ip, None)
            table = table.updated(remove=[ip])
        else:
            want[ip] = value
            table = table.updated(add=[(ip, value)])
        assert table.size == len(want)
    got = table.lookup(np.arange(48, dtype=np.uint32))
    assert got.tolist() == [want.get(i, -1) for i in range(48)]


# --------------------------------------------------------------------------- the service map, group by group

def _sets(smap, sp: int) -> list:
    """Every eligible set a flow to ``sp`` can get, as backend lists (the map's indices left out)."""
    from fastpath.tables.balancers import flow_eligible_set

    a = smap.arrays
    out = []
    for kind in (0, 3):
        for external in (False, True):
            for rn in range(a.node_zone.shape[0]):
                s = flow_eligible_set(a, sp, kind, external, rn)
                out.append(None if s < 0 else [int(x) for x in a.set_backend[a.set_off[s]:a.set_off[s + 1]]])
    return out


@pytest.fixture(scope="module")
def rollout_events(tmp_path_factory):
    from fastpath.cluster.synth_events import synth_events, write_events

    path = tmp_path_factory.mktemp("ev") / "events.jsonl"
    write_events(synth_events(SAMPLE, rollouts=2, drains=1, scale=1, span_s=60.0, seed=3), path)
    return path


def test_service_map_after_each_group_equals_a_fresh_compile(rollout_events):
    log = read_events(rollout_events)
    lp = LivePlane(fastpath.load_cluster(SAMPLE), log, lb="maglev")
    for g in range(len(lp.groups)):
        lp.apply_next(churn=False)
        if g % 7 and g != len(lp.groups) - 1:
            continue                                    # every 7th group, and the last
        now = lp.live.cluster()
        from fastpath.cluster.endpoints import endpoints_for
        fresh = compile_services(now, lb="maglev", slices=endpoints_for(now), sp_names=lp.live.sp_names)
        live = lp.editor.smap
        assert live.names == fresh.names
        for sp in range(len(fresh.names)):
            assert _sets(live, sp) == _sets(fresh, sp), (g, fresh.names[sp])
            assert live.arrays.sp_flags[sp] == fresh.arrays.sp_flags[sp], (g, fresh.names[sp])
        assert lp.full_compiles < len(lp.groups)


# --------------------------------------------------------------------------- the replay, epoch by epoch

def _epochs_agree(trace: str, events, lb: str, cluster=SAMPLE) -> fastpath.Summary:
    """Replay with events; then each stretch between groups resolved by a plane compiled from the objects
    as they stand (flows to ClientIP-affinity services skipped: their state spans the stretches)."""
    summary = fastpath.replay(str(cluster), trace, None, lb=lb, events=events, return_table=True, progress=False,
                              conntrack=False)
    got = summary.table.to_pylist()
    log = read_events(events)
    store = {}
    for o in objects(cluster):
        m = o["metadata"]
        store[(o["kind"], m.get("namespace") or ("" if o["kind"] in ("Node", "Namespace") else "default"),
               m["name"])] = o
    flows = next(iter(open_trace(trace, 1 << 22)))
    cuts = [0] + [int(np.searchsorted(flows.ts, g[0].ts)) for g in log.groups] + [flows.n]
    for k in range(len(cuts) - 1):
        if k:
            for e in log.groups[k - 1]:
                if e.type == "DELETED":
                    store.pop(e.key, None)
                else:
                    store[e.key] = e.obj
        a, b = cuts[k], cuts[k + 1]
        if a == b:
            continue
        dp = fastpath.compile_cluster(cluster_from_objects(list(store.values())), lb=lb)
        want = dp.to_arrow(dp.resolve_flows(flows.slice(a, b))).to_pylist()
        affinity = {dp.services.names[s] for s in np.flatnonzero(dp.services.arrays.sp_flags & 4)}
        for i, w in enumerate(want):
            if w["service"] not in affinity:
                assert got[a + i] == w, (a + i, k)
    return summary


@pytest.mark.parametrize("lb", ["random"])       # maglev: the real dumps below, and the map test above
def test_rollouts_drain_and_scaling_on_the_sample(rollout_events, tmp_path, lb):
    trace = tmp_path / "t.arrow"
    from fastpath.traces.synth import synth_trace

    synth_trace(fastpath.load_cluster(SAMPLE), 40_000, out=trace, rate=700.0, duration_mix=True, seed=1)
    s = _epochs_agree(str(trace), rollout_events, lb)
    assert s.event_groups == len(read_events(rollout_events).groups) == len(s.events)
    moved = [r for r in s.events if r["flows"]]
    assert moved and all(0 <= r["changed_backend"] <= r["flows"] for r in moved)
    assert s.broken_connections > 0                  # deleted pods held live TCP connections
    assert s.broken_connections == sum(r["broken_connections"] for r in s.events)


def test_cli_replay_with_events_and_bad_events(rollout_events, tmp_path, capsys):
    out = tmp_path / "r.arrow"
    js = tmp_path / "s.json"
    rc, _, err = cli(capsys, "replay", SAMPLE, "traces/sample-trace.arrow", "--events", rollout_events, "-o", out,
                     "--summary-json", js, "--quiet")
    assert rc == 0, err
    d = json.loads(js.read_text())
    assert d["event_groups"] > 0 and isinstance(d["events"], list) and "broken_connections" in d
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rollout_events.read_text().splitlines()[0] + "\n{oops\n")
    out2 = tmp_path / "r2.arrow"
    rc, _, err = cli(capsys, "replay", SAMPLE, "traces/sample-trace.arrow", "--events", bad, "-o", out2)
    assert rc != 0 and "bad.jsonl line 2: not JSON" in err
    assert len(err.strip().splitlines()) == 1 and not out2.exists()


def test_explain_at_a_time(rollout_events, capsys):
    log = read_events(rollout_events)
    gone = next(e for e in log.events if e.type == "DELETED" and e.kind == "Pod")
    pod = f"{gone.namespace}/{gone.name}"
    rc, out, err = cli(capsys, "explain", SAMPLE, "--src", "node-003", "--dst", pod, "--dport", "9102",
                       "--events", rollout_events, "--at", str(gone.ts - 1))
    assert rc == 0 and "result" in out, err
    rc, out, err = cli(capsys, "explain", SAMPLE, "--src", "node-003", "--dst", pod, "--dport", "9102",
                       "--events", rollout_events, "--at", str(gone.ts))
    assert rc == 2 and "no such pod" in err
    rc, out, err = cli(capsys, "explain", SAMPLE, "--src", "node-003", "--dst", pod, "--dport", "9102", "--at", "5")
    assert rc == 2 and "--at needs --events" in err


def test_study_with_events(rollout_events, tmp_path):
    pytest.importorskip("matplotlib")
    from fastpath import report
    from fastpath.traces.synth import synth_trace

    trace = tmp_path / "t.arrow"
    synth_trace(fastpath.load_cluster(SAMPLE), 30_000, out=trace, rate=500.0, seed=2)
    figs = report.study(SAMPLE, trace, lbs=["random", "maglev"], events=rollout_events, progress=False)
    change = figs["change"]
    assert change["events"] == str(rollout_events) and set(change["by_lb"]) == {"random", "maglev"}
    rnd, mag = change["by_lb"]["random"], change["by_lb"]["maglev"]
    assert rnd["service_flows"] == mag["service_flows"] > 0
    assert mag["changed_share"] < rnd["changed_share"]            # Maglev moves fewer flows
    assert rnd["event_groups"] == len(read_events(rollout_events).groups)
    # backends are counted as they come and go: pods the rollouts added got flows too
    backends = {b for row in figs["balance"]["top_services"] for b in row["backends"]}
    added = {f"{e.namespace}/{e.name}" for e in read_events(rollout_events).events
             if e.type == "ADDED" and e.kind == "Pod"}
    assert backends & added
    page = report.write_report(figs, tmp_path / "study")
    assert "Connections broken by pods going away" in page.read_text()


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-k8s-dumps"
#: Real dumps `synth events` can roll out and scale in (the others have one node, or redacted addresses).
REAL_DUMPS = ["kubediagrams-k0s-whole-cluster.yml", "kubediagrams-minikube-kube-prometheus-stack.yaml",
              "troubleshoot-k3s-support-bundle", "eks-cluster-info-dump-extracted"]


@pytest.mark.parametrize("dump", REAL_DUMPS)
def test_real_dumps_with_rollouts(dump, tmp_path):
    """Real clusters, messy as users' are: rollouts and scaling over them, epoch by epoch as a fresh load."""
    from fastpath.cluster.synth_events import synth_events, write_events
    from fastpath.traces.synth import synth_trace

    path = REAL / dump
    if not path.exists():
        pytest.skip(f"{path} not present")
    events = tmp_path / "events.jsonl"
    write_events(synth_events(path, rollouts=2, scale=1, span_s=60.0, seed=1), events)
    trace = tmp_path / "t.arrow"
    synth_trace(fastpath.load_cluster(path), 6_000, out=trace, rate=100.0, duration_mix=True, seed=1)
    s = _epochs_agree(str(trace), events, "maglev", cluster=path)
    assert s.event_groups == len(read_events(events).groups) > 0


def test_network_policies_follow_the_pods(tmp_path):
    """A cluster with NetworkPolicies: new pods are selected by the policies as they appear."""
    from fastpath.cluster.synth import synth_cluster, write_cluster
    from fastpath.cluster.synth_events import synth_events, write_events
    from fastpath.traces.synth import synth_trace

    cluster = write_cluster(synth_cluster(10, 15, 20, seed=4, policies=15), tmp_path / "c.json")
    events = tmp_path / "e.jsonl"
    write_events(synth_events(cluster, rollouts=2, drains=1, span_s=60.0, seed=4), events)
    trace = tmp_path / "t.arrow"
    synth_trace(fastpath.load_cluster(cluster), 8_000, out=trace, rate=130.0, seed=4)
    s = _epochs_agree(str(trace), events, "random", cluster=cluster)
    assert s.by_verdict["denied"] > 0 and s.event_groups > 10
