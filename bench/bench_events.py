"""Replay against a changing cluster (issue #13): the whole replay with events against the same
replay without, same run; and one endpoint-readiness event at 10,000 services against a full compile.

* ``test_replay_without_events`` / ``test_replay_with_events``: each round a fresh Python
  process (``replay(cluster, trace, None, events=...)``, no results file), the same cluster and
  timed trace, without and with about 1,000 watch events (``synth_events``: rollouts and
  scalings, the EndpointSlice controller's slice updates) spread over the trace's time span.
  Both run the default for a timed trace: connection tracking on
  (``FASTPATH_BENCH_EVENTS_CONNTRACK=0`` runs both with ``--no-conntrack``). ``extra_info``:
  flows/s of the whole process (the benchmark's median round) and of the streaming part
  (``inner_flows_per_s``, the summary's ``flows_per_s``), the summary's wall and compile
  seconds, and on the events side the events and groups applied, the seconds spent applying
  them (``apply_s``: ``LivePlane.apply_s``), re-running the affected service ports' flows
  through the tables before each group (``churn_s``: ``LivePlane._measure``), the forwarding
  recompiles, and ``vs_without_events`` (whole-process rate over the no-events rate of the
  same run; issue #13 target >= 0.7) with ``inner_vs_without_events`` beside it.
* ``test_readiness_event[random|maglev]``: a 10,000-service cluster (1,000 nodes, 30 pods a
  node), a :class:`~fastpath.live.LivePlane` built once (not timed) over a list of events, each
  turning the ``Ready`` condition of one randomly chosen pod (a ready endpoint of some service)
  to ``False``: distinct pods, one event per ``ts``, no EndpointSlice events, so fastpath plays
  the EndpointSlice controller and the pod leaves its services' ready endpoints (a pod behind a
  headless service alone changes no service port: ``events_changing_ports`` counts the others).
  Each round is one ``apply_next()``: one event, churn measuring armed as in a replay.
  ``extra_info``: per-event median, p90 and max in ms, and ``vs_full_compile`` (the compile
  below over the event's median; target: an event at most 1 ms).
* ``test_compile_10k_services[random|maglev]``: the floor the event beats: one
  ``compile_cluster`` of the same cluster with the same balancer (columns dropped before each
  round, as ``bench_cluster.py``'s first compile), what recompiling per event would cost.

Sizes: replays on a 500-node cluster (30 pods a node, 1,000 services; ``bench_replay.py``'s),
20 M flows of the default mix at 100,000 flows/s (a 200 s trace), 18 rollouts and 18 scalings
(1,029 events in 403 groups with seed 0). ``FASTPATH_BENCH_QUICK=1``: 20 nodes, 20,000 flows at
100 flows/s (the same 200 s span), one rollout and one scaling; the readiness cluster 50 nodes,
10 pods a node, 100 services. ``FASTPATH_BENCH_EVENTS_FLOWS`` overrides the flow count (the rate
follows, so the span stays 200 s).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fastpath.cluster import columns
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import load_cluster, read_objects
from fastpath.cluster.synth import synth_cluster, write_cluster
from fastpath.cluster.synth_events import synth_events, write_events
from fastpath.events import events_from_lines
from fastpath.live import LivePlane
from fastpath.traces import DEFAULT_BATCH_SIZE, synth_trace

from bench_replay import PEAK_RSS  # noqa: E402  the child programs' peak-RSS helper

#: Small sizes (CI smoke run).
QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Flows of the replayed trace, and its span in seconds (the arrival rate is FLOWS / SPAN_S).
FLOWS = int(os.environ.get("FASTPATH_BENCH_EVENTS_FLOWS", 20_000 if QUICK else 20_000_000))
SPAN_S = 200.0
#: Replay cluster: nodes, pods per node, services; the events: rollouts, drains, scalings.
NODES, PODS_PER_NODE, SERVICES = (20, 10, 20) if QUICK else (500, 30, 1000)
ROLLOUTS, DRAINS, SCALE = (1, 0, 1) if QUICK else (18, 0, 18)
#: Both replays with connection tracking (the default for a timed trace) unless set to 0.
CONNTRACK = os.environ.get("FASTPATH_BENCH_EVENTS_CONNTRACK", "1") not in ("", "0")
#: The readiness micro-benchmark's cluster: nodes, pods per node, services.
MICRO_NODES, MICRO_PODS, MICRO_SERVICES = (50, 10, 100) if QUICK else (1000, 30, 10_000)
#: Timed rounds (after one untimed warm-up round): whole processes, compiles, single events.
ROUNDS = 1 if QUICK else 3
EVENT_ROUNDS, EVENT_WARMUP = (5, 1) if QUICK else (300, 10)

#: A replay round: argv = cluster, trace, batch size, conntrack on/off, events file or "-".
#: The LivePlane is caught as it is made, for what the summary does not say (its apply time).
CHILD = PEAK_RSS + """
import json, sys, time
import fastpath.live as live
from fastpath.replay import replay

planes, churn = [], [0.0]
_init, _measure = live.LivePlane.__init__, live.LivePlane._measure

def init(self, *a, **k):
    _init(self, *a, **k)
    planes.append(self)

def measure(self, *a, **k):
    t = time.perf_counter()
    try:
        return _measure(self, *a, **k)
    finally:
        churn[0] += time.perf_counter() - t

live.LivePlane.__init__, live.LivePlane._measure = init, measure
s = replay(sys.argv[1], sys.argv[2], None, batch_size=int(sys.argv[3]), progress=False,
           conntrack=sys.argv[4] == "on", events=None if sys.argv[5] == "-" else sys.argv[5])
got = {"flows": s.flows, "inner_flows_per_s": s.flows_per_s, "wall_s": s.wall_s, "compile_s": s.compile_s,
       "peak_rss_mb": peak_rss_mb()}
if planes:
    lp = planes[0]
    got.update(events=sum(len(g) for g in lp.groups[:lp.applied]), groups=lp.applied, apply_s=lp.apply_s,
               churn_s=churn[0], full_compiles=lp.full_compiles, broken=s.broken_connections,
               changed_backend=sum(r["changed_backend"] for r in s.events))
print(json.dumps(got))
"""

_replays: dict[str, dict] = {}       # "with" / "without" -> that test's extra_info (filled in either order)


@pytest.fixture(scope="module")
def replay_inputs(tmp_path_factory) -> tuple[Path, Path, Path, int]:
    """The cluster, the timed trace, and the events over the trace's span (count returned)."""
    d = tmp_path_factory.mktemp("events")
    cluster = write_cluster(synth_cluster(NODES, PODS_PER_NODE, SERVICES, seed=0), d / "cluster.json")
    trace = d / "trace.arrow"
    synth_trace(load_cluster(cluster), FLOWS, seed=0, out=trace, rate=FLOWS / SPAN_S)
    with pa.memory_map(str(trace)) as source:
        reader = pa.ipc.open_file(source)
        first = reader.get_batch(0).column("ts")[0].cast(pa.int64()).as_py()
        last = reader.get_batch(reader.num_record_batches - 1).column("ts")[-1].cast(pa.int64()).as_py()
    events = synth_events(cluster, rollouts=ROLLOUTS, drains=DRAINS, scale=SCALE, start_ns=first,
                          span_s=(last - first) / 1e9, seed=0)
    path = write_events(events, d / "events.jsonl")
    return cluster, trace, path, len(events)


def _child(cluster: Path, trace: Path, events: Path | None) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(cluster), str(trace), str(DEFAULT_BATCH_SIZE),
                           "on" if CONNTRACK else "off", str(events) if events is not None else "-"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratios() -> None:
    """``vs_without_events`` on the events test once both replays have run (either order)."""
    w, wo = _replays.get("with"), _replays.get("without")
    if w is None or wo is None:
        return
    if w.get("flows_per_s") and wo.get("flows_per_s"):
        w["vs_without_events"] = round(w["flows_per_s"] / wo["flows_per_s"], 3)          # target >= 0.7
    if w.get("inner_flows_per_s") and wo.get("inner_flows_per_s"):
        w["inner_vs_without_events"] = round(w["inner_flows_per_s"] / wo["inner_flows_per_s"], 3)


def _replay(benchmark, throughput, replay_inputs, with_events: bool) -> dict:
    cluster, trace, events, n_events = replay_inputs
    got = benchmark.pedantic(_child, args=(cluster, trace, events if with_events else None),
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert got["flows"] == FLOWS
    info = dict(inner_flows_per_s=got["inner_flows_per_s"], wall_s=round(got["wall_s"], 3),
                compile_s=round(got["compile_s"], 3), peak_rss_mb=round(got["peak_rss_mb"], 1),
                conntrack=CONNTRACK, nodes=NODES, services=SERVICES)
    if with_events:
        assert got["events"] == n_events, got           # every event applied (the trace spans them)
        info.update(events=got["events"], groups=got["groups"], apply_s=round(got["apply_s"], 3),
                    churn_s=round(got["churn_s"], 3), full_compiles=got["full_compiles"],
                    broken_connections=got["broken"], changed_backend=got["changed_backend"])
    throughput(benchmark, FLOWS, unit="flows", **info)
    _replays["with" if with_events else "without"] = benchmark.extra_info
    _ratios()
    return got


def test_replay_without_events(benchmark, throughput, replay_inputs):
    """The timed replay in a fresh process, the cluster as it stands at the start."""
    _replay(benchmark, throughput, replay_inputs, with_events=False)


def test_replay_with_events(benchmark, throughput, replay_inputs):
    """The same replay with ``events=``: every flow sees the cluster at its ``ts``."""
    _replay(benchmark, throughput, replay_inputs, with_events=True)


# --------------------------------------------------------------------------- one event at 10,000 services

class Micro:
    """The readiness cluster: the loaded cluster and one not-Ready event per chosen pod."""

    def __init__(self, d: Path) -> None:
        path = write_cluster(synth_cluster(MICRO_NODES, MICRO_PODS, MICRO_SERVICES, seed=1), d / "cluster.json")
        self.cluster = load_cluster(path)
        flat: list[dict] = []
        for o in read_objects(path):
            flat += o.get("items", []) if o.get("kind") == "List" else [o]
        behind = set()                                                    # pods some service balances over
        for o in (o for o in flat if o.get("kind") == "EndpointSlice"):
            for e in o.get("endpoints") or ():
                ref = e.get("targetRef") or {}
                if (e.get("conditions") or {}).get("ready") and ref.get("kind") == "Pod":
                    behind.add((ref.get("namespace"), ref.get("name")))
        pods = [o for o in flat if o.get("kind") == "Pod" and not o["spec"].get("hostNetwork")
                and (o["metadata"].get("namespace", "default"), o["metadata"]["name"]) in behind
                and any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in o["status"].get("conditions", []))]
        picks = np.random.default_rng(0).choice(len(pods), EVENT_ROUNDS + EVENT_WARMUP + 1, replace=False)
        t0 = 1_700_000_000_000_000_000
        self.events = []
        for k, i in enumerate(picks.tolist()):
            p = copy.deepcopy(pods[i])
            for c in p["status"]["conditions"]:
                if c["type"] == "Ready":
                    c["status"] = "False"
            self.events.append({"type": "MODIFIED", "ts": t0 + k * 1_000_000, "object": p})
        self.slices = sum(1 for o in flat if o.get("kind") == "EndpointSlice")


_micro: dict[str, dict] = {}          # "event:<lb>" / "compile:<lb>" -> that test's extra_info


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Micro:
    return Micro(tmp_path_factory.mktemp("readiness"))


def _micro_ratio(lb: str) -> None:
    ev, comp = _micro.get(f"event:{lb}"), _micro.get(f"compile:{lb}")
    if ev and comp and ev.get("event_ms_median") and comp.get("compile_ms"):
        ev["full_compile_ms"] = comp["compile_ms"]
        ev["vs_full_compile"] = round(comp["compile_ms"] / ev["event_ms_median"], 1)


@pytest.mark.parametrize("lb", ["random", "maglev"])
def test_compile_10k_services(benchmark, throughput, micro, lb):
    """One full ``compile_cluster`` of the readiness cluster: what a recompile per event would cost."""
    compile_cluster(micro.cluster, lb=lb)              # JIT-compile (or load) the build kernels first

    def first_compile():
        columns.forget()
        return compile_cluster(micro.cluster, lb=lb)

    dp = benchmark.pedantic(first_compile, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    throughput(benchmark, len(dp.tables.pod_names), unit="pods", lb=lb, nodes=MICRO_NODES, services=MICRO_SERVICES)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["compile_ms"] = round(stats.median * 1e3, 1)
    _micro[f"compile:{lb}"] = benchmark.extra_info
    _micro_ratio(lb)


@pytest.mark.parametrize("lb", ["random", "maglev"])
def test_readiness_event(benchmark, throughput, micro, lb):
    """``LivePlane.apply_next()`` of one event: a pod's Ready condition turns False (10,000 services)."""
    lp = LivePlane(micro.cluster, events_from_lines(micro.events), lb=lb)     # built once, not timed
    benchmark.pedantic(lp.apply_next, rounds=EVENT_ROUNDS, iterations=1, warmup_rounds=EVENT_WARMUP)
    assert lp.applied >= 1 and lp.full_compiles == 0, (lp.applied, lp.full_compiles)
    touched = sum(1 for r in lp.records if r["affected_service_ports"])   # headless services have no ports
    assert touched >= lp.applied // 2, (touched, lp.applied)
    throughput(benchmark, 1, unit="events", lb=lb, nodes=MICRO_NODES, services=MICRO_SERVICES,
               slices=micro.slices, events_applied=lp.applied, events_changing_ports=touched)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        data = np.array(stats.data) * 1e3
        benchmark.extra_info.update(event_ms_median=round(float(np.median(data)), 3),
                                    event_ms_p90=round(float(np.percentile(data, 90)), 3),
                                    event_ms_max=round(float(data.max()), 3))
    _micro[f"event:{lb}"] = benchmark.extra_info
    _micro_ratio(lb)
