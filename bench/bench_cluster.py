"""Big clusters (issue #20): synth, load, compile, the compiled-table cache, synth trace, replay.

At Kubernetes' tested limits, 5,000 nodes / 150,000 pods / 10,000 services
(``fastpath synth cluster --nodes 5000 --pods-per-node 30 --services 10000``, a
139 MB JSON dump), measured in one run:

* ``test_synth_cluster``: ``synth_cluster`` + ``write_cluster`` (what the command does).
* ``test_load[msgspec|json]``: ``load_cluster`` of the dump with the fast JSON decoder
  (msgspec) and with it switched off (``json``, the peer), in process; ``extra_info["parser"]``.
  The last round's cluster is freed before each round (untimed), as a command loads one
  cluster: with it still held, each round runs in a heap the last one fragmented and the
  rounds slow down (1.27 s to 1.60 s over six, measured).
* ``test_compile``: ``compile_cluster`` of the loaded cluster (service map, route table,
  pod records, DNS; Maglev only for the balancer asked: the default ``random`` here), as a
  first compile: the pod and endpoint columns it keeps (:mod:`fastpath.cluster.columns`) are
  dropped before each round.
* ``test_cached_load``: :func:`fastpath.cache.compile_cached` on a warm cache entry:
  the compiled tables back from disk (hashes checked) without loading the cluster.
* ``test_synth_trace[cold|cached]``: ``fastpath synth trace --flows 10000000`` as a whole
  process, ``--no-cache`` (load the cluster, build the pools) and on a warm cache (the pools
  from the cache, no load); ``extra_info`` holds the seconds inside ``synth_trace``
  (``synth_s``) and its rate (``synth_flows_per_s``: the pools' set-up, the rows and the
  writing, without the cluster's load), and the peak RSS (VmHWM of the child). The trace
  is written to a fresh path each round (the last round's file removed untimed).
* ``test_replay_whole_process[cold|cached]``: ``fastpath replay CLUSTER TRACE --quiet`` of
  those 10M flows as a whole process (no results file), ``--no-cache`` and on a warm
  cache; peak RSS beside.

The cache lives in a temporary folder (``FASTPATH_CACHE_DIR``), never ``~/.cache``.
Quick mode (``FASTPATH_BENCH_QUICK=1``): 50 nodes, 10 pods a node, 100 services, 20,000 flows.
``FASTPATH_BENCH_CLUSTER_FLOWS`` overrides the flow count.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fastpath.cache import compile_cached
from fastpath.cluster import columns, load
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.synth import synth_cluster, write_cluster

#: Small sizes (CI smoke run).
from bench_replay import PEAK_RSS  # noqa: E402  the child programs' peak-RSS helper

QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Cluster size: nodes, pods per node, services.
NODES, PODS_PER_NODE, SERVICES = (50, 10, 100) if QUICK else (5000, 30, 10_000)
#: Flows of the synthetic trace and the replays.
FLOWS = int(os.environ.get("FASTPATH_BENCH_CLUSTER_FLOWS", 20_000 if QUICK else 10_000_000))
#: Timed rounds (after one untimed warm-up round); whole-process rounds are fewer.
ROUNDS = 1 if QUICK else 3
PROCESS_ROUNDS = 1 if QUICK else 2

#: A child process: run ``fastpath`` in process, then print its peak RSS (VmHWM of its own
#: address space), the seconds inside ``main`` and those inside ``synth_trace`` less its
#: cluster load (a ``synth trace`` run) as JSON on the last line of stderr.
CHILD = PEAK_RSS + """
import json, sys, time

from fastpath.cli import main
from fastpath.cluster import load
from fastpath.traces import synth
import fastpath.traces

spent = {"synth_trace": 0.0, "load_cluster": 0.0}


def timed(module, name):                      # seconds inside a function, summed
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t
    return wrapper


synth.synth_trace = fastpath.traces.synth_trace = timed(synth, "synth_trace")
load.load_cluster = timed(load, "load_cluster")
t = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "main_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(),
                  "synth_s": spent["synth_trace"] - spent["load_cluster"]}), file=sys.stderr)
sys.exit(rc)
"""


class Work:
    """The folder of the run: the dump, the trace, the cache."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fastpath-bench-cluster-")
        self.dir = Path(self._tmp.name)
        self.cluster_file = self.dir / "cluster.json"
        self.trace_file = self.dir / "trace.arrow"
        self.cache_dir = self.dir / "cache"
        self.env = {**os.environ, "FASTPATH_CACHE_DIR": str(self.cache_dir)}
        write_cluster(synth_cluster(NODES, PODS_PER_NODE, SERVICES), self.cluster_file)
        self.cluster = load.load_cluster(self.cluster_file)

    def child(self, *argv: str) -> tuple[float, dict]:
        """Run ``fastpath ARGV`` in a fresh process: (wall seconds, the child's JSON report)."""
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, *argv], env=self.env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise AssertionError(f"fastpath {' '.join(argv)} failed ({p.returncode}): {p.stderr[-2000:]}")
        return wall, json.loads(p.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def work():
    w = Work()
    yield w
    w._tmp.cleanup()


def _rounds(benchmark, fn, rounds=ROUNDS):
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def test_synth_cluster(benchmark, throughput, work):
    out = work.dir / "synth.json"
    _rounds(benchmark, lambda: write_cluster(synth_cluster(NODES, PODS_PER_NODE, SERVICES), out))
    assert out.stat().st_size == work.cluster_file.stat().st_size
    throughput(benchmark, NODES, unit="nodes", pods=NODES * PODS_PER_NODE, services=SERVICES,
               dump_mb=round(out.stat().st_size / 2**20, 1))


@pytest.mark.parametrize("parser", ["msgspec", "json"])
def test_load(benchmark, throughput, work, parser, monkeypatch):
    if parser == "json":
        monkeypatch.setattr(load, "_fast_json", None)
    elif load._fast_json is None:
        pytest.skip("msgspec not installed")
    held: list = []

    def run():
        held.append(load.load_cluster(work.cluster_file))

    def fresh():          # untimed: the last round's cluster freed first, as a process loads one cluster
        held.clear()
        gc.collect()
        return (), {}

    benchmark.pedantic(run, setup=fresh, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    c = held[-1]
    assert c == work.cluster
    throughput(benchmark, len(c.pods), unit="pods", parser=parser, nodes=len(c.nodes), services=len(c.services),
               dump_mb=round(work.cluster_file.stat().st_size / 2**20, 1))


def test_compile(benchmark, throughput, work):
    compile_cluster(work.cluster)                     # JIT-compile (or load) the build kernels first

    def first_compile():
        columns.forget()                              # the pod and endpoint columns are made again each round
        return compile_cluster(work.cluster)

    dp = _rounds(benchmark, first_compile)
    throughput(benchmark, len(dp.tables.pod_names), unit="pods", nodes=NODES, services=SERVICES, lb="random")


def test_cached_load(benchmark, throughput, work):
    stats: dict = {}
    compile_cached(work.cluster_file, directory=work.cache_dir)          # cold: load, compile, store
    dp = _rounds(benchmark, lambda: compile_cached(work.cluster_file, directory=work.cache_dir, stats=stats))
    assert stats["hit"], stats
    entry = work.cache_dir / stats["key"]
    size = sum(f.stat().st_size for f in entry.iterdir())
    throughput(benchmark, len(dp.tables.pod_names), unit="pods", entry_mb=round(size / 2**20, 1))


@pytest.mark.parametrize("mode", ["cold", "cached"])
def test_synth_trace(benchmark, throughput, work, mode):
    """``fastpath synth trace`` of FLOWS rows as a whole process: ``--no-cache`` (the cluster
    loaded, its pools built), and on a warm cache (the pools from the cache, no load)."""
    argv = ["synth", "trace", str(work.cluster_file), "--flows", str(FLOWS), "-o", str(work.trace_file)]
    if mode == "cold":
        argv.append("--no-cache")
    else:
        work.child(*argv)                             # fill the cache
    reports = []

    def run():
        _, rep = work.child(*argv)
        reports.append(rep)

    def fresh():                                      # untimed: freeing the last round's file is the file
        work.trace_file.unlink(missing_ok=True)       # system's work (0.2 s for 380 MB here), not synthesis
        return (), {}

    benchmark.pedantic(run, setup=fresh, rounds=PROCESS_ROUNDS, iterations=1, warmup_rounds=1)
    rep = min(reports, key=lambda r: r["main_s"])
    throughput(benchmark, FLOWS, unit="flows", mode=mode,
               peak_rss_mb=round(max(r["peak_rss_mb"] for r in reports)), main_s=round(rep["main_s"], 3),
               synth_s=round(rep["synth_s"], 3), synth_flows_per_s=round(FLOWS / rep["synth_s"]),
               nodes=NODES, services=SERVICES, trace_mb=round(work.trace_file.stat().st_size / 2**20))


@pytest.mark.parametrize("mode", ["cold", "cached"])
def test_replay_whole_process(benchmark, throughput, work, mode):
    if not work.trace_file.exists():
        work.child("synth", "trace", str(work.cluster_file), "--flows", str(FLOWS), "-o", str(work.trace_file))
    argv = ["replay", str(work.cluster_file), str(work.trace_file), "--quiet"]
    if mode == "cold":
        argv.append("--no-cache")
    else:
        work.child(*argv)                             # fill the cache
    reports = []

    def run():
        reports.append(work.child(*argv)[1])

    _rounds(benchmark, run, PROCESS_ROUNDS)
    throughput(benchmark, FLOWS, unit="flows", mode=mode, peak_rss_mb=round(max(r["peak_rss_mb"] for r in reports)),
               nodes=NODES, pods=NODES * PODS_PER_NODE, services=SERVICES)
