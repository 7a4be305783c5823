"""Whole-process replay against the I/O floor, its resolve phase, and a first run on a cold cache.

Each round runs a fresh Python process (``sys.executable``), as a user running
``fastpath replay`` would: interpreter start, imports, loading the JIT cache,
compiling the cluster, then streaming the trace through the pipeline and
writing the results file. Measured in one run:

* ``test_io_floor``: the I/O alone: every record batch of the trace read
  memory-mapped and checked with Arrow's structural ``validate()``, and a file
  written with the results' schema (``RESULT_SCHEMA``) and row count (values
  don't matter), nothing else. ``extra_info["io_s"]`` is that loop's time inside
  the process (what the resolve phase is compared with).
* ``test_replay_whole_process``: ``replay(cluster, trace, out)``; ``extra_info``
  holds the resolve phase (``resolve_s``: the summary's wall time less its
  compile time), ``resolve_vs_io_floor`` (resolve_s / io_s of the same run;
  target <= 2) and the peak RSS.
* ``test_replay_first_run``: ``fastpath replay`` of the bundled sample in a
  fresh process with an empty numba cache (``NUMBA_CACHE_DIR`` pointed at an
  empty folder): every kernel compiled on the spot, as after a fresh
  ``pip install``. One round; ``extra_info`` holds its compile time.

Peak resident memory is ``VmHWM`` of the child's own address space (``ru_maxrss``
would also count the pytest parent's memory at fork); it must stay bounded by
the batch size, not grow with the trace.

Sizes: a 500-node cluster (30 pods a node, 1,000 services) and 20 M flows (``synth
trace`` defaults); with ``FASTPATH_BENCH_QUICK=1`` a 20-node cluster and 20,000 flows.
``FASTPATH_BENCH_REPLAY_FLOWS`` overrides the flow count. Throughput lands in
``benchmark.extra_info["flows_per_s"]`` (whole process, median round).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from fastpath.cluster.load import load_cluster
from fastpath.cluster.synth import synth_cluster, write_cluster
from fastpath.traces import DEFAULT_BATCH_SIZE, synth_trace

#: Small sizes (CI smoke run).
QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Flows in the replayed trace.
FLOWS = int(os.environ.get("FASTPATH_BENCH_REPLAY_FLOWS", 20_000 if QUICK else 20_000_000))
#: Cluster size: nodes, pods per node, services.
NODES, PODS_PER_NODE, SERVICES = (20, 10, 20) if QUICK else (500, 30, 1000)
#: Timed rounds (each a whole process), after one untimed warm-up round.
ROUNDS = 1 if QUICK else 3

#: Peak resident memory of the child's own address space (VmHWM; ru_maxrss would also
#: count the parent's memory at fork), shared by both child programs.
PEAK_RSS = """
import resource

def peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

#: The child process of a replay round: argv = cluster, trace, out, batch size. Stateless
#: (``conntrack=False``, as ``--no-conntrack``): this file measures the streaming replay
#: against its I/O floor; ``bench_conntrack.py`` measures what the timed state adds.
REPLAY_CHILD = PEAK_RSS + """
import json, sys
from fastpath.replay import replay
s = replay(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=int(sys.argv[4]), progress=False,
           conntrack=False)
print(json.dumps({"flows": s.flows, "inner_flows_per_s": s.flows_per_s, "compile_s": s.compile_s,
                  "wall_s": s.wall_s, "resolve_s": s.wall_s - s.compile_s, "peak_rss_mb": peak_rss_mb()}))
"""

#: The child process of an I/O floor round: read + validate every batch, write as many result rows.
FLOOR_CHILD = PEAK_RSS + """
import json, sys, time
import numpy as np, pyarrow as pa
from fastpath.pipeline import RESULT_SCHEMA
t0 = time.perf_counter()
size = int(sys.argv[4])

def zeros(field, n):
    t = field.type
    if pa.types.is_dictionary(t):
        idx = pa.array(np.zeros(n, t.index_type.to_pandas_dtype()))
        return pa.DictionaryArray.from_arrays(idx, pa.array([""], t.value_type))
    return pa.array(np.zeros(n, t.to_pandas_dtype()))

full = pa.RecordBatch.from_arrays([zeros(f, size) for f in RESULT_SCHEMA], schema=RESULT_SCHEMA)
n = 0
with pa.memory_map(sys.argv[2]) as source, pa.OSFile(sys.argv[3], "wb") as sink, \\
        pa.ipc.new_file(sink, RESULT_SCHEMA) as writer:
    reader = pa.ipc.open_file(source)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        batch.validate()
        rows = batch.num_rows
        while rows:
            take = min(rows, size)
            writer.write_batch(full.slice(0, take))
            rows -= take
            n += take
print(json.dumps({"flows": n, "io_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}))
"""

#: The child of the first-run round: ``fastpath replay`` (the bundled sample) with an empty numba cache.
FIRST_RUN_ARGS = ["-m", "fastpath.cli", "replay"]

_floor: dict[str, float] = {}


@pytest.fixture(scope="module")
def replay_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic cluster and an uncompressed trace over it, made once."""
    d = tmp_path_factory.mktemp("replay")
    cluster_path = write_cluster(synth_cluster(NODES, PODS_PER_NODE, SERVICES, seed=0), d / "cluster.json")
    trace_path = d / "trace.arrow"
    synth_trace(load_cluster(cluster_path), FLOWS, seed=0, out=trace_path)
    return cluster_path, trace_path


def _child(code: str, cluster: Path, trace: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code, str(cluster), str(trace), str(out), str(DEFAULT_BATCH_SIZE)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rows(path: Path) -> int:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).count_rows()


def _rounds(benchmark, code: str, inputs: tuple[Path, Path], out: Path) -> dict:
    """Time whole-process rounds of ``code`` (one warm-up); check every flow reached ``out``."""
    got = benchmark.pedantic(_child, args=(code, *inputs, out), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert got["flows"] == FLOWS and _rows(out) == FLOWS
    return got


def test_io_floor(benchmark, throughput, replay_inputs, tmp_path):
    """Read + validate every batch of the trace, write its row count in the results' schema; no resolving."""
    trace = replay_inputs[1]
    got = _rounds(benchmark, FLOOR_CHILD, replay_inputs, tmp_path / "floor.arrow")
    throughput(benchmark, FLOWS, unit="flows", peak_rss_mb=round(got["peak_rss_mb"], 1), io_s=round(got["io_s"], 3),
               trace_mb=round(trace.stat().st_size / 2**20, 1), batch_size=DEFAULT_BATCH_SIZE)
    _floor["io_s"] = got["io_s"]
    if "flows_per_s" in benchmark.extra_info:
        _floor["flows_per_s"] = benchmark.extra_info["flows_per_s"]


def test_replay_whole_process(benchmark, throughput, replay_inputs, tmp_path):
    """``replay(cluster, trace, out)`` in a fresh process: start, compile, stream, write."""
    got = _rounds(benchmark, REPLAY_CHILD, replay_inputs, tmp_path / "results.arrow")
    info = dict(peak_rss_mb=round(got["peak_rss_mb"], 1), inner_flows_per_s=got["inner_flows_per_s"],
                compile_s=round(got["compile_s"], 3), resolve_s=round(got["resolve_s"], 3),
                nodes=NODES, pods=NODES * PODS_PER_NODE, services=SERVICES, batch_size=DEFAULT_BATCH_SIZE)
    if _floor.get("io_s"):
        info["resolve_vs_io_floor"] = round(got["resolve_s"] / _floor["io_s"], 2)   # target <= 2
    throughput(benchmark, FLOWS, unit="flows", **info)
    if "flows_per_s" in benchmark.extra_info and _floor.get("flows_per_s"):
        benchmark.extra_info["io_floor_flows_per_s"] = _floor["flows_per_s"]
        benchmark.extra_info["share_of_io_floor"] = benchmark.extra_info["flows_per_s"] / _floor["flows_per_s"]


def _first_run() -> dict:
    with tempfile.TemporaryDirectory(prefix="fastpath-numba-cache-") as cache, \
            tempfile.TemporaryDirectory(prefix="fastpath-first-run-") as out:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        done = subprocess.run([sys.executable, *FIRST_RUN_ARGS, "-o", str(Path(out) / "results.arrow"),
                               "--summary-json", str(Path(out) / "summary.json")],
                              check=True, capture_output=True, text=True, env=env)
        summary = json.loads((Path(out) / "summary.json").read_text())
        summary["notice"] = "compiling kernels" in done.stderr
        return summary


def test_replay_first_run(benchmark, throughput):
    """``fastpath replay`` (the bundled sample) on an empty numba cache: compiling every kernel it needs.

    Skipped in quick mode (a cold compile is most of a minute on 2 cores: CI's budget).
    """
    if QUICK and not os.environ.get("FASTPATH_BENCH_FIRST_RUN"):
        pytest.skip("first run on a cold cache: full runs only (or FASTPATH_BENCH_FIRST_RUN=1)")
    got = benchmark.pedantic(_first_run, rounds=1, iterations=1, warmup_rounds=0)
    assert got["notice"], "a cold cache says it is compiling"
    throughput(benchmark, got["flows"], unit="flows", compile_s=round(got["compile_s"], 2),
               wall_s=round(got["wall_s"], 2), resolve_s=round(got["wall_s"] - got["compile_s"], 3))
