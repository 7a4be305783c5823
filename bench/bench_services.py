"""Service stage throughput, service-map compile time and Maglev table build time.

10,000 services x 10 endpoints (Kubernetes' tested 10,000-service limit), flows
from pods to ClusterIP frontends. ``FASTPATH_BENCH_QUICK=1`` shrinks the batch so
CI only proves the suite runs. Throughput lands in ``benchmark.extra_info``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastpath._jit import get_threads, set_threads
from fastpath.cluster.model import Cluster, Endpoint, EndpointSlice, EndpointSlicePort, Node, Service, ServicePort
from fastpath.codes import PENDING
from fastpath.tables.balancers import BALANCERS
from fastpath.tables.maglev import DEFAULT_M, backend_names, build_tables
from fastpath.tables.services import ServiceStage, compile_services

#: Smaller inputs for CI smoke runs.
QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Services, endpoints each, nodes of the benchmark cluster.
SERVICES, ENDPOINTS, NODES = (1000, 10, 20) if QUICK else (10_000, 10, 100)
#: Flows per batch.
FLOWS = 200_000 if QUICK else 4_000_000


def service_cluster(n_services: int = SERVICES, n_eps: int = ENDPOINTS, n_nodes: int = NODES) -> Cluster:
    """A cluster of ``n_services`` ClusterIP services, each with ``n_eps`` Ready endpoints."""
    nodes = [Node(f"node-{i}", 0xC0A80000 + i + 1, None, ((0x0AF40000 + (i << 8), 24),), f"z{i % 3}")
             for i in range(n_nodes)]
    services, slices = [], []
    port = (ServicePort("http", 80, 6, 8080, None),)
    for s in range(n_services):
        services.append(Service("bench", f"svc-{s}", "ClusterIP", (0x0A600000 + s + 1,), False, port, None,
                                (), (), False, 10800, "Cluster", "Cluster", None))
        eps = tuple(Endpoint((0x0AF40000 + (((s * n_eps + k) % (n_nodes * 250)) // 250 << 8)
                              + ((s * n_eps + k) % 250) + 2,), True, True, False,
                             f"node-{((s * n_eps + k) % (n_nodes * 250)) // 250}", None, (), None)
                    for k in range(n_eps))
        slices.append(EndpointSlice("bench", f"svc-{s}-x", f"svc-{s}", (EndpointSlicePort("http", 8080 + s % 7, 6),),
                                    eps))
    return Cluster(nodes, [], services, slices)


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return service_cluster()


@pytest.fixture(scope="module")
def flows(cluster) -> dict:
    rng = np.random.default_rng(0)
    n = FLOWS
    svc = rng.integers(0, len(cluster.services), n)
    return {
        "src_ip": (0x0AF40000 + (rng.integers(0, NODES, n) << 8) + rng.integers(2, 252, n)).astype(np.uint32),
        "dst_ip": (0x0A600001 + svc).astype(np.uint32),
        "src_port": rng.integers(1024, 65535, n).astype(np.uint16),
        "dst_port": np.full(n, 80, np.uint16),
        "proto": np.full(n, 6, np.uint8),
        "ts": np.sort(rng.integers(0, 60 * 10**9, n)).astype(np.int64),
        "src_node": rng.integers(0, NODES, n).astype(np.int32),
    }


def _outputs(f: dict) -> tuple:
    n = f["src_ip"].shape[0]
    return (f["src_node"].copy(), np.full(n, PENDING, np.uint8), np.full(n, -1, np.int32), f["dst_ip"].copy(),
            f["dst_port"].copy(), f["src_ip"].copy())


def test_compile_service_map(benchmark, throughput, cluster):
    smap = compile_services(cluster)             # warm the kernels
    benchmark.pedantic(compile_services, args=(cluster,), rounds=3, iterations=1)
    throughput(benchmark, len(smap.names), unit="service_ports", endpoints=int(smap.ep_ip.shape[0]))


def test_maglev_build(benchmark, throughput, cluster):
    rng = np.random.default_rng(1)
    n_tables = len(cluster.services)
    ip = rng.integers(0x0AF40000, 0x0AF4FFFF, n_tables * ENDPOINTS).astype(np.uint32)
    names = backend_names(ip, np.full(ip.shape[0], 8080, np.uint16))
    off = np.arange(n_tables + 1, dtype=np.int64) * ENDPOINTS
    build_tables(off[:3], names, DEFAULT_M, 0)   # warm
    benchmark.pedantic(build_tables, args=(off, names, DEFAULT_M, 0), rounds=2, iterations=1)
    throughput(benchmark, n_tables, unit="maglev_tables", size=DEFAULT_M, threads=get_threads())


@pytest.mark.parametrize("threads", ["1", "all"])
@pytest.mark.parametrize("lb", BALANCERS)
def test_service_stage(benchmark, throughput, cluster, flows, lb, threads):
    smap = compile_services(cluster, lb=lb)
    stage = ServiceStage(smap)
    cols = [flows[k] for k in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "ts")]
    small = [c[:1000] for c in cols]
    before = get_threads()
    set_threads(1 if threads == "1" else None)
    try:
        stage.run(*small, np.full(1000, -1, np.int32), *_outputs({k: v[:1000] for k, v in flows.items()}))
        out = _outputs(flows)
        src_pod = np.full(FLOWS, -1, np.int32)

        def setup():
            out[1].fill(PENDING)
            return (), {}

        def batch():
            stage.run(*cols, src_pod, *out)

        benchmark.pedantic(batch, setup=setup, rounds=5 if not QUICK else 2, iterations=1)
        used = get_threads()
    finally:
        set_threads(before)
    assert (out[2] >= 0).all()
    throughput(benchmark, FLOWS, unit="flows", lb=lb, threads=used)
