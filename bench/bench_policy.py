"""The NetworkPolicy stage (issue #14): compile time, the stage alone, the pipeline with and without.

A synthetic cluster of 5,000 nodes x 30 pods (150,000 pods, 10,000 services) with
10,000 NetworkPolicies as ``synth cluster --policies`` makes them (namespace isolation,
per-app allow lists with named ports, cross-namespace peers, DNS egress, a few
ipBlocks); quick mode (``FASTPATH_BENCH_QUICK=1``, CI) 200 nodes and 400 policies.

* ``test_compile_policies``: selectors to identity classes and the policy map, once
  (target: 10,000 policies under 2 s).
* ``test_policy_stage``: the stage's kernel alone on one thread, on flows already through
  sources and kube-proxy (target: at least 50 M flows/s).
* ``test_pipeline``: the whole per-batch pipeline with the policies and, in the same run,
  on the same cluster and flows, without them (the stage skipped), 1 thread and all.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastpath._jit import get_threads, set_threads
from fastpath.benchmark import pod_to_pod_flows
from fastpath.cluster.load import cluster_from_objects
from fastpath.cluster.synth import synth_cluster
from fastpath.codes import DENIED, LOOPBACK, PENDING
from fastpath.pipeline import DataPlane, Results
from fastpath.stages.policy import compile_policies
from fastpath.traces import normalize_batch

QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Cluster size: nodes x pods per node, services, policies.
NODES, PODS_PER_NODE, SERVICES, POLICIES = (200, 30, 400, 400) if QUICK else (5000, 30, 10_000, 10_000)
#: Flows per round.
FLOWS = 50_000 if QUICK else 4_000_000
ROUNDS = 1 if QUICK else 5


@pytest.fixture(scope="module")
def cluster():
    objs = synth_cluster(NODES, PODS_PER_NODE, SERVICES, seed=0, policies=POLICIES)["items"]
    return cluster_from_objects(objs, "bench")


@pytest.fixture(scope="module")
def dataplane(cluster):
    dp = DataPlane.build(cluster)
    assert dp.policy is not None and len(dp.policy.t.policies) == POLICIES
    return dp


@pytest.fixture(scope="module")
def flows(dataplane):
    return normalize_batch(pod_to_pod_flows(dataplane, FLOWS, seed=1), "bench")


def test_compile_policies(benchmark, throughput, cluster, dataplane):
    compile_policies(cluster, dataplane.tables)       # warm the kernels the build uses
    benchmark.pedantic(compile_policies, args=(cluster, dataplane.tables), rounds=ROUNDS, iterations=1)
    throughput(benchmark, POLICIES, unit="policies", pods=len(cluster.pods), **dataplane.policy.t.describe())


def test_policy_stage(benchmark, throughput, dataplane, flows):
    """The stage alone, one thread: its inputs are the batch's state after kube-proxy."""
    stage, dataplane.policy = dataplane.policy, None
    try:
        r = dataplane.resolve_flows(flows)             # sources and kube-proxy, no policy
    finally:
        dataplane.policy = stage
    # as the stage finds them: every flow pending but the loopback ones (decided by the sources pass)
    pending = np.where(r.path == LOOPBACK, r.verdict, PENDING).astype(np.uint8)
    verdict, reason = pending.copy(), np.zeros(flows.n, np.uint8)
    dst_pod, dst_node = r.dst_pod.copy(), r.dst_node.copy()
    args = (flows.src_ip, flows.proto, r.src_pod, r.dnat_ip, r.dnat_port, r.snat_ip, verdict, reason, dst_pod,
            dst_node)

    def setup():
        verdict[:] = pending
        return args, {}

    before = get_threads()
    set_threads(1)
    try:
        stage.run(*args)                              # warm
        denied = int((verdict == DENIED).sum())
        assert 0 < denied < flows.n, "a realistic policy set allows some flows and denies others"
        benchmark.pedantic(stage.run, setup=setup, rounds=ROUNDS, iterations=1)
        throughput(benchmark, flows.n, unit="flows", threads=1, denied_share=round(denied / flows.n, 3))
    finally:
        set_threads(before)


@pytest.mark.parametrize("policies", ["with", "without"])
@pytest.mark.parametrize("threads", ["1", "all"])
def test_pipeline(benchmark, throughput, dataplane, flows, policies, threads):
    stage = dataplane.policy
    before = get_threads()
    set_threads(1 if threads == "1" else None)
    if policies == "without":
        dataplane.policy = None
    try:
        out = Results.empty(flows.n)
        dataplane.resolve_flows(flows, out)          # warm
        benchmark.pedantic(dataplane.resolve_flows, args=(flows, out), rounds=ROUNDS, iterations=1)
        throughput(benchmark, flows.n, unit="flows", threads=get_threads(), policies=policies,
                   denied=int((out.verdict == DENIED).sum()))
    finally:
        dataplane.policy = stage
        set_threads(before)
