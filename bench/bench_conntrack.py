"""A timed replay with connection tracking against the same replay without it, whole process, one run.

Each round runs a fresh Python process, as ``fastpath replay`` would: the same
cluster and trace, once with conntrack, FDB and neighbour state
(``conntrack=True``, the default for a trace with ``ts``) and once with
``--no-conntrack``. ``extra_info`` holds each one's flows/s, peak RSS (``VmHWM``
of the child), the largest table occupancy, and on the stateful test the ratio
to the stateless one of the same run (``vs_stateless``; target >= 0.6).

Sizes: a 5,000-node cluster (30 pods a node, 10,000 services), 20 M flows of the
default synthetic mix at 100,000 flows/s (a 200 s trace: TCP entries live 30 s +
120 s of TIME_WAIT, so tables fill to their steady state), default table sizes;
the bound to check is peak RSS under 2 GB. ``FASTPATH_BENCH_QUICK=1``: 20 nodes,
20,000 flows. ``FASTPATH_BENCH_CONNTRACK_FLOWS`` / ``_NODES`` override.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.cluster.load import load_cluster
from fastpath.cluster.synth import synth_cluster, write_cluster
from fastpath.traces import DEFAULT_BATCH_SIZE, synth_trace

from bench_replay import PEAK_RSS  # noqa: E402  the child programs' peak-RSS helper

QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
FLOWS = int(os.environ.get("FASTPATH_BENCH_CONNTRACK_FLOWS", 20_000 if QUICK else 20_000_000))
NODES = int(os.environ.get("FASTPATH_BENCH_CONNTRACK_NODES", 20 if QUICK else 5000))
PODS_PER_NODE, SERVICES = (10, 20) if QUICK else (30, 10_000)
ROUNDS = 1 if QUICK else 3

CHILD = PEAK_RSS + """
import json, sys
from fastpath.replay import replay

s = replay(sys.argv[1], sys.argv[2], None, batch_size=int(sys.argv[3]), progress=False,
           conntrack=sys.argv[4] == "on")
peak = max((v["conntrack_peak"] for v in (s.nodes or {}).values()), default=0)
print(json.dumps({"flows": s.flows, "inner_flows_per_s": s.flows_per_s, "wall_s": s.wall_s,
                  "compile_s": s.compile_s, "peak_rss_mb": peak_rss_mb(), "conntrack_peak": peak,
                  "conntrack_drops": s.conntrack_drops}))
"""

_rates: dict[str, float] = {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("conntrack")
    cluster = write_cluster(synth_cluster(NODES, PODS_PER_NODE, SERVICES, seed=0), d / "cluster.json")
    trace = d / "trace.arrow"
    synth_trace(load_cluster(cluster), FLOWS, seed=0, out=trace)
    return cluster, trace


def _child(cluster: Path, trace: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(cluster), str(trace), str(DEFAULT_BATCH_SIZE), mode],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["off", "on"])
def test_replay_conntrack(benchmark, throughput, inputs, mode):
    """Whole-process replay of a timed trace: ``off`` = ``--no-conntrack``, ``on`` = per-node state."""
    got = benchmark.pedantic(_child, args=(*inputs, mode), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert got["flows"] == FLOWS
    if mode == "on":
        assert got["conntrack_peak"] > 0
    throughput(benchmark, FLOWS, unit="flows", peak_rss_mb=round(got["peak_rss_mb"], 1), nodes=NODES,
               inner_flows_per_s=got["inner_flows_per_s"], conntrack_peak=got["conntrack_peak"],
               conntrack_drops=got["conntrack_drops"])
    rate = benchmark.extra_info.get("flows_per_s")
    if rate:
        _rates[mode] = rate
        if mode == "on" and _rates.get("off"):
            benchmark.extra_info["vs_stateless"] = round(rate / _rates["off"], 3)   # target >= 0.6
