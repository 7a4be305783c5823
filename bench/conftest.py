"""Workloads for the LPM benchmarks: three route tables, each with its destinations.

Sizes come from the environment so CI can run the whole folder in seconds:

* ``FASTPATH_BENCH_QUICK=1``: small tables and batches (CI runs
  ``pytest bench/ --benchmark-disable`` with it, as a smoke test);
* ``FASTPATH_BENCH_LOOKUPS`` / ``FASTPATH_BENCH_SUBSET``: override the batch size for
  fastpath and numpy, and for the per-call competitors (pytricia, py-radix);
* ``FASTPATH_SHARED``: the ``shared/`` folder holding the RouteViews table (default
  ``../shared`` beside the repository); RouteViews cases skip when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

from fastpath import benchdata
from fastpath.tables.lpm import RouteTable

#: Small sizes everywhere (CI smoke run).
QUICK = os.environ.get("FASTPATH_BENCH_QUICK", "") not in ("", "0")
#: Destinations per round for the batch lookups (fastpath, numpy).
LOOKUPS = int(os.environ.get("FASTPATH_BENCH_LOOKUPS", 20_000 if QUICK else 4_000_000))
#: Destinations per round for the per-call competitors (pytricia, py-radix).
SUBSET = int(os.environ.get("FASTPATH_BENCH_SUBSET", 2_000 if QUICK else 200_000))
#: Timed rounds per benchmark (after one warm-up round).
ROUNDS = 1 if QUICK else 5
#: Quick mode keeps every n-th RouteViews prefix (the file is still read whole).
QUICK_ROUTEVIEWS_STRIDE = 20
#: Table sizes per case: (cluster nodes), (Calico blocks, host routes).
CLUSTER_NODES = 200 if QUICK else 5000
CALICO_BLOCKS, CALICO_HOSTS = (500, 50) if QUICK else (20_000, 2_000)
#: The workloads every lookup benchmark runs on.
CASES = ["routeviews", "cluster", "calico"]


class Workload(NamedTuple):
    """One route table and the destinations looked up in it."""

    name: str
    routes: benchdata.Routes
    dst: np.ndarray          #: LOOKUPS destinations, uint32
    table: RouteTable        #: compiled and warmed up


def routeviews_path() -> Path:
    path = benchdata.routeviews_path()
    if path is None:
        pytest.skip("RouteViews table not present (set FASTPATH_SHARED to the shared/ folder)")
    return path


_cache: dict[str, object] = {}


def cached(key: str, make: Callable[[], object]):
    """Build expensive things (tables, competitor tries) once per session."""
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def _routeviews_routes() -> benchdata.Routes:
    routes = benchdata.routeviews_table(routeviews_path())
    if QUICK:
        routes = benchdata.Routes(*(a[::QUICK_ROUTEVIEWS_STRIDE].copy() for a in routes))
    return routes


def make_routes(name: str) -> benchdata.Routes:
    if name == "routeviews":
        return cached("routes:routeviews", _routeviews_routes)
    if name == "cluster":
        return benchdata.cluster_route_table(nodes=CLUSTER_NODES, seed=0)
    if name == "calico":
        return benchdata.calico_route_table(blocks=CALICO_BLOCKS, hosts=CALICO_HOSTS, seed=0)
    raise ValueError(name)


def _make_workload(name: str) -> Workload:
    routes = make_routes(name)
    if name == "routeviews":
        dst = benchdata.random_destinations(LOOKUPS, seed=1)        # the whole Internet, uniformly
    else:
        pods = routes.lengths > 0                                   # aim at pod ranges, not the default
        dst = benchdata.destinations_in(routes.prefixes[pods], routes.lengths[pods], LOOKUPS, seed=1)
    table = RouteTable.from_arrays(*routes)
    table.lookup(dst[:1000])                                        # compile the table and the kernels
    table.lookup_parallel(dst[:1000])
    return Workload(name, routes, dst, table)


@pytest.fixture(scope="session", params=CASES)
def workload(request) -> Workload:
    """Each lookup benchmark runs once per case in :data:`CASES`."""
    return cached(f"workload:{request.param}", lambda: _make_workload(request.param))


@pytest.fixture(scope="session")
def routes_for() -> Callable[[str], benchdata.Routes]:
    """``routes_for(case)``: the flat route arrays of a case (for build benchmarks)."""
    return make_routes


@pytest.fixture(scope="session")
def session_cache() -> Callable[[str, Callable[[], object]], object]:
    """``session_cache(key, make)``: build competitor structures once per session."""
    return cached


@pytest.fixture(scope="session")
def subset() -> int:
    """Destinations per round for the per-call competitors."""
    return SUBSET


@pytest.fixture(scope="session")
def run():
    """``run(benchmark, fn, *args)``: one warm-up round, then ROUNDS timed rounds of one call."""
    def run(benchmark, fn, *args):
        return benchmark.pedantic(fn, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)

    return run


# --------------------------------------------------------------------------- reporting

_results: list[tuple[str, str, float]] = []


@pytest.fixture
def throughput(request):
    """``record(benchmark, count, unit="lookups")``: store count/s in ``extra_info``.

    The rate uses the median round; with ``--benchmark-disable`` there are no timings
    and only the count is stored.
    """
    def record(benchmark, count: int, unit: str = "lookups", **info) -> None:
        benchmark.extra_info.update(info)
        benchmark.extra_info[unit] = int(count)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        if stats is not None and stats.median > 0:
            rate = count / stats.median
            benchmark.extra_info[f"{unit}_per_s"] = rate
            _results.append((request.node.name, unit, rate))

    return record


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    terminalreporter.section("throughput (median round)")
    width = max(len(name) for name, _, _ in _results)
    for name, unit, rate in _results:
        terminalreporter.write_line(f"{name:<{width}}  {rate / 1e6:10.2f} M {unit}/s")
