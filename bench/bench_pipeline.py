"""The whole per-batch pipeline on a large synthetic cluster (issue: the cluster and its five paths).

Pod-to-pod flows (random bridged source and destination pods, each to a port the
destination declares) through sources + loopback, the service stage and
forwarding, on one thread and on every core; and the compile time of the
cluster's tables. 5,000 nodes x 30 pods (150,000 pods, 10,000 services) in full
mode, 200 nodes in quick mode.
"""
from __future__ import annotations

import os

import pytest

from fastpath._jit import get_threads, set_threads
from fastpath.benchmark import pod_to_pod_flows
from fastpath.cluster.compile import compile_cluster, compile_forwarding
from fastpath.cluster.load import cluster_from_objects
from fastpath.cluster.synth import synth_cluster
from fastpath.pipeline import Results
from fastpath.traces import normalize_batch

QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Cluster size: nodes x pods per node, and services.
NODES, PODS_PER_NODE, SERVICES = (200, 30, 400) if QUICK else (5000, 30, 10_000)
#: Flows per round.
FLOWS = 50_000 if QUICK else 4_000_000
ROUNDS = 1 if QUICK else 5


@pytest.fixture(scope="module")
def cluster():
    return cluster_from_objects(synth_cluster(NODES, PODS_PER_NODE, SERVICES, seed=0)["items"], "bench")


@pytest.fixture(scope="module")
def dataplane(cluster):
    return compile_cluster(cluster)


@pytest.fixture(scope="module")
def flows(dataplane):
    return normalize_batch(pod_to_pod_flows(dataplane, FLOWS, seed=1), "bench")


def test_compile_forwarding(benchmark, throughput, cluster):
    compile_forwarding(cluster)   # warm the kernels
    benchmark.pedantic(compile_forwarding, args=(cluster,), rounds=ROUNDS, iterations=1)
    throughput(benchmark, len(cluster.pods), unit="pods", nodes=len(cluster.nodes))


def test_compile_cluster(benchmark, throughput, cluster):
    """Forwarding tables, service map and DNS: everything ``replay`` compiles."""
    compile_cluster(cluster)
    benchmark.pedantic(compile_cluster, args=(cluster,), rounds=ROUNDS, iterations=1)
    throughput(benchmark, len(cluster.pods), unit="pods", nodes=len(cluster.nodes),
               services=len(cluster.services))


@pytest.mark.parametrize("threads", ["1", "all"])
def test_pod_to_pod(benchmark, throughput, dataplane, flows, threads):
    before = get_threads()
    set_threads(1 if threads == "1" else None)
    try:
        out = Results.empty(flows.n)
        dataplane.resolve_flows(flows, out)          # warm
        delivered = int((out.verdict == 0).sum())
        assert delivered > 0.9 * flows.n, "pod-to-pod flows should mostly be delivered"
        benchmark.pedantic(dataplane.resolve_flows, args=(flows, out), rounds=ROUNDS, iterations=1)
        throughput(benchmark, flows.n, unit="flows", threads=get_threads(), nodes=NODES,
                   pods=len(dataplane.tables.pod_names))
    finally:
        set_threads(before)
