"""Whole-process replay against the I/O floor, with peak memory.

Each round runs a fresh Python process (``sys.executable``), as a user running
``fastpath replay`` would: interpreter start, imports, loading the JIT cache,
compiling the cluster, then streaming the trace through the pipeline and
writing the results file. The I/O floor is the same process doing only the
I/O: reading and checking every batch of the trace (``open_trace``) and
writing an Arrow file of the results' size (33 bytes a flow), no resolving.
Both report their peak resident memory (``VmHWM`` of the child's own address space:
``ru_maxrss`` would also count the pytest parent's memory at fork), which must stay
bounded by the batch size, not grow with the trace.

Sizes: a 500-node cluster (30 pods a node, 400 services) and 20 M flows; with
``FASTPATH_BENCH_QUICK=1`` a 20-node cluster and 20,000 flows.
``FASTPATH_BENCH_REPLAY_FLOWS`` overrides the flow count. Throughput lands in
``benchmark.extra_info["flows_per_s"]`` (whole process, median round); the
replay's ``extra_info`` also holds the floor's figure from the same run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
NODES, PODS_PER_NODE, SERVICES = (20, 10, 20) if QUICK else (500, 30, 400)
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

#: The child process of a replay round: argv = cluster, trace, out, batch size.
REPLAY_CHILD = PEAK_RSS + """
import json, sys
from fastpath.replay import replay
s = replay(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=int(sys.argv[4]), progress=False)
print(json.dumps({"flows": s.flows, "inner_flows_per_s": s.flows_per_s, "compile_s": s.compile_s,
                  "peak_rss_mb": peak_rss_mb()}))
"""

#: The child process of an I/O floor round: read and check the trace, write as many result bytes.
FLOOR_CHILD = PEAK_RSS + """
import json, os, sys
import numpy as np, pyarrow as pa
from fastpath.traces import open_trace
reader = open_trace(sys.argv[2], int(sys.argv[4]))
widths = [("verdict", np.uint8), ("path", np.uint8), ("src_node", np.int32), ("dst_node", np.int32),
          ("src_pod", np.int32), ("dst_pod", np.int32), ("service", np.int32), ("dnat_ip", np.uint32),
          ("dnat_port", np.uint16), ("snat_ip", np.uint32), ("hops", np.uint8)]
schema = pa.schema([(name, pa.from_numpy_dtype(t)) for name, t in widths])
full = [np.zeros(reader.batch_size, t) for _, t in widths]
tmp = sys.argv[3] + ".tmp"
n = 0
with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
    for flows in reader:
        writer.write_batch(pa.RecordBatch.from_arrays([pa.array(c[:flows.n]) for c in full], schema=schema))
        n += flows.n
os.replace(tmp, sys.argv[3])
print(json.dumps({"flows": n, "peak_rss_mb": peak_rss_mb()}))
"""

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
    """Read + check every batch of the trace and write a results-sized Arrow file; no resolving."""
    trace = replay_inputs[1]
    got = _rounds(benchmark, FLOOR_CHILD, replay_inputs, tmp_path / "floor.arrow")
    throughput(benchmark, FLOWS, unit="flows", peak_rss_mb=round(got["peak_rss_mb"], 1),
               trace_mb=round(trace.stat().st_size / 2**20, 1), batch_size=DEFAULT_BATCH_SIZE)
    if "flows_per_s" in benchmark.extra_info:
        _floor["flows_per_s"] = benchmark.extra_info["flows_per_s"]


def test_replay_whole_process(benchmark, throughput, replay_inputs, tmp_path):
    """``replay(cluster, trace, out)`` in a fresh process: start, compile, stream, write."""
    got = _rounds(benchmark, REPLAY_CHILD, replay_inputs, tmp_path / "results.arrow")
    info = dict(peak_rss_mb=round(got["peak_rss_mb"], 1), inner_flows_per_s=got["inner_flows_per_s"],
                compile_s=got["compile_s"], nodes=NODES, pods=NODES * PODS_PER_NODE, services=SERVICES,
                batch_size=DEFAULT_BATCH_SIZE)
    throughput(benchmark, FLOWS, unit="flows", **info)
    if "flows_per_s" in benchmark.extra_info and _floor:
        benchmark.extra_info["io_floor_flows_per_s"] = _floor["flows_per_s"]
        benchmark.extra_info["share_of_io_floor"] = benchmark.extra_info["flows_per_s"] / _floor["flows_per_s"]
