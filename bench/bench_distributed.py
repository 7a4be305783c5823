"""The replay on a local Dask cluster of 2 workers against the single-process replay, same run.

Each round is a fresh Python process, as a user running ``fastpath replay`` would
(interpreter start, imports, compiling the cluster), on ``bench_replay.py``'s
inputs: a 500-node cluster (30 pods a node, 1,000 services) and 20 M flows of
the default mix with ``ts``. No results file is written (both sides count and
summarize every row).

* ``test_single_process[conntrack|stateless]``: ``replay(cluster, trace)``, with
  connection tracking (the default for a trace with ``ts``) and without
  (``conntrack=False``).
* ``test_local_cluster[...]``: the same call with ``scheduler=`` the LocalCluster that
  ``--scheduler local`` starts (``fastpath.distributed.local_cluster``: ``WORKERS``
  processes, one thread each), started inside the round (its start-up counts). ``extra_info``: ``vs_single`` (this median / the single process's median
  of the same mode, same run; the target on 2 cores is at most 1.2), Dask's task
  stream summed per task kind (``compute_s``), ``worker_flows_per_s`` (flows / the
  compute seconds of all tasks: what one worker does per second of work),
  ``bytes_moved_per_flow`` (what the workers sent each other), and the phases.

``bench/README.md`` turns these into the scaling model (10 billion flows on N workers).
Quick mode (``FASTPATH_BENCH_QUICK=1``): 20 nodes and 20,000 flows, connection tracking only.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from bench_replay import FLOWS, NODES, PEAK_RSS, PODS_PER_NODE, QUICK, ROUNDS, SERVICES  # noqa: E402
from bench_replay import replay_inputs  # noqa: E402,F401 -- the shared inputs fixture

#: Worker processes of the local cluster (one per core of the benchmark machine).
WORKERS = 2
MODES = ["conntrack"] if QUICK else ["conntrack", "stateless"]

SINGLE_CHILD = PEAK_RSS + """
import json, sys, time
t0 = time.perf_counter()
from fastpath.replay import replay
s = replay(sys.argv[1], sys.argv[2], None, progress=False, conntrack=sys.argv[3] == "1")
print(json.dumps({"flows": s.flows, "wall_s": time.perf_counter() - t0, "compile_s": s.compile_s,
                  "drops": s.conntrack_drops, "verdicts": s.by_verdict, "peak_rss_mb": peak_rss_mb()}))
"""

DIST_CHILD = PEAK_RSS + """
import json, sys, time
from collections import defaultdict

def main():
    t0 = time.perf_counter()
    from distributed import Client, get_task_stream
    from distributed.utils import key_split
    from fastpath.distributed import local_cluster
    from fastpath.replay import replay
    cluster = local_cluster(int(sys.argv[4]))         # as --scheduler local starts it
    client = Client(cluster)
    up_s = time.perf_counter() - t0
    with get_task_stream(client) as stream:
        s = replay(sys.argv[1], sys.argv[2], None, progress=False, conntrack=sys.argv[3] == "1", scheduler=client)
    busy = defaultdict(float)
    for t in stream.data:
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                busy[key_split(t["key"])] += ss["stop"] - ss["start"]
    client.close()
    cluster.close()
    print(json.dumps({"flows": s.flows, "wall_s": time.perf_counter() - t0, "cluster_up_s": up_s,
                      "drops": s.conntrack_drops, "verdicts": s.by_verdict, "distributed": s.distributed,
                      "compute_s": {k: round(v, 3) for k, v in sorted(busy.items())},
                      "peak_rss_mb": peak_rss_mb()}))

if __name__ == "__main__":
    main()
"""

_single: dict[str, dict] = {}


def _child(code: str, cluster: Path, trace: Path, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", code, str(cluster), str(trace), *map(str, args)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", MODES)
def test_single_process(benchmark, throughput, replay_inputs, mode):  # noqa: F811
    got = benchmark.pedantic(_child, args=(SINGLE_CHILD, *replay_inputs, int(mode == "conntrack")), rounds=ROUNDS,
                             iterations=1, warmup_rounds=1)
    assert got["flows"] == FLOWS
    _single[mode] = got
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        _single[mode]["median_s"] = stats.median
    throughput(benchmark, FLOWS, unit="flows", nodes=NODES, pods=NODES * PODS_PER_NODE, services=SERVICES,
               peak_rss_mb=round(got["peak_rss_mb"], 1), compile_s=round(got["compile_s"], 3))


@pytest.mark.parametrize("mode", MODES)
def test_local_cluster(benchmark, throughput, replay_inputs, mode):  # noqa: F811
    got = benchmark.pedantic(_child, args=(DIST_CHILD, *replay_inputs, int(mode == "conntrack"), WORKERS),
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert got["flows"] == FLOWS
    one = _single.get(mode)
    if one is not None:                            # the same answer as the single process
        assert got["verdicts"] == one["verdicts"] and got["drops"] == one["drops"]
    compute = sum(got["compute_s"].values())
    d = got["distributed"]
    info = dict(workers=WORKERS, cluster_up_s=round(got["cluster_up_s"], 2), compute_s=got["compute_s"],
                worker_flows_per_s=round(FLOWS / compute) if compute else None, phases_s=d["phases_s"],
                bytes_moved_per_flow=round(d["bytes_moved"] / FLOWS, 1) if d.get("bytes_moved") is not None else None,
                conntrack_rounds=d.get("conntrack_rounds"), peak_rss_mb_driver=round(got["peak_rss_mb"], 1))
    throughput(benchmark, FLOWS, unit="flows", **info)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and one is not None and one.get("median_s"):
        benchmark.extra_info["vs_single"] = round(stats.median / one["median_s"], 3)   # target <= 1.2
