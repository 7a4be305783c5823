"""Longest-prefix match: fastpath's RouteTable against pytricia, py-radix and numpy.searchsorted.

Each lookup benchmark runs on three workloads (see ``conftest.py``): the RouteViews
Internet table with uniform random destinations, a 5,000-node cluster table (/24 per
node) and a Calico table (/26 blocks + /32s) with destinations inside pod ranges.
Throughput lands in ``benchmark.extra_info["lookups_per_s"]``.

Run: ``pytest bench/ --benchmark-only`` (``FASTPATH_BENCH_QUICK=1`` for a smoke run).
"""
from __future__ import annotations

import numpy as np
import pytest

from fastpath._jit import get_threads, set_threads
from fastpath.addr import ips_to_strings
from fastpath.tables.lpm import RouteTable

#: Next hop where no route matches, as every competitor reports it here.
MISS = RouteTable.MISS


# --------------------------------------------------------------------------- fastpath

def test_fastpath_lookup_1thread(benchmark, run, throughput, workload):
    """RouteTable.lookup: the serial kernel, one core."""
    out = np.empty_like(workload.dst)
    run(benchmark, workload.table.lookup, workload.dst, out)
    np.testing.assert_array_equal(out, workload.table.lookup(workload.dst))
    throughput(benchmark, workload.dst.size, prefixes=len(workload.table), table_bytes=workload.table.nbytes,
               threads=1)


def test_fastpath_lookup_parallel(benchmark, run, throughput, workload):
    """RouteTable.lookup_parallel on every numba thread (all cores)."""
    before = get_threads()
    threads = set_threads(None)
    try:
        out = np.empty_like(workload.dst)
        run(benchmark, workload.table.lookup_parallel, workload.dst, out)
    finally:
        set_threads(before)
    np.testing.assert_array_equal(out, workload.table.lookup(workload.dst))
    throughput(benchmark, workload.dst.size, prefixes=len(workload.table), threads=threads)


# --------------------------------------------------------------------------- competitors

def test_numpy_searchsorted(benchmark, run, throughput, workload):
    """Binary search over the flattened ranges (``RouteTable.to_ranges``), in numpy."""
    starts, hops = workload.table.to_ranges()
    starts32 = starts.astype(np.uint32)            # every start is < 2^32, so uint32 is exact

    def lookup(dst):
        return hops[np.searchsorted(starts32, dst, side="right") - 1]

    got = run(benchmark, lookup, workload.dst)
    np.testing.assert_array_equal(got, workload.table.lookup(workload.dst))
    throughput(benchmark, workload.dst.size, ranges=int(starts.size))


def _pytricia(workload, cached):
    pytricia = pytest.importorskip("pytricia")

    def build():
        tree = pytricia.PyTricia(32)
        for p, n, h in zip(*(a.tolist() for a in workload.routes)):
            tree.insert(p, n, h)
        return tree

    return cached(f"pytricia:{workload.name}", build)


def _radix(workload, cached):
    radix = pytest.importorskip("radix")

    def build():
        tree = radix.Radix()
        for p, n, h in zip(ips_to_strings(workload.routes.prefixes).to_pylist(),
                           workload.routes.lengths.tolist(), workload.routes.next_hops.tolist()):
            tree.add(p, n).data["nh"] = h
        return tree

    return cached(f"radix:{workload.name}", build)


def test_pytricia(benchmark, run, throughput, workload, session_cache, subset):
    """pytricia (C patricia trie): one ``get`` call per int address, a subset of the batch."""
    tree = _pytricia(workload, session_cache)
    keys = workload.dst[:subset].tolist()

    def lookup(keys):
        get = tree.get
        return [get(k, MISS) for k in keys]

    got = run(benchmark, lookup, keys)
    assert got == workload.table.lookup(workload.dst[:subset]).tolist()
    throughput(benchmark, len(keys))


def test_py_radix(benchmark, run, throughput, workload, session_cache, subset):
    """py-radix: one ``search_best`` call per dotted-quad string, a subset of the batch."""
    tree = _radix(workload, session_cache)
    texts = ips_to_strings(workload.dst[:subset]).to_pylist()

    def lookup(texts):
        best = tree.search_best
        return [MISS if node is None else node.data["nh"] for node in map(best, texts)]

    got = run(benchmark, lookup, texts)
    assert got == workload.table.lookup(workload.dst[:subset]).tolist()
    throughput(benchmark, len(texts))


# --------------------------------------------------------------------------- build

@pytest.mark.parametrize("case", ["routeviews", "calico"])
def test_build(benchmark, run, throughput, routes_for, case):
    """RouteTable.from_arrays plus compiling the trie (forced by ``nbytes``), from flat arrays."""
    routes = routes_for(case)

    def build():
        table = RouteTable.from_arrays(*routes)
        table.nbytes                               # compiles the lookup structure
        return table

    table = run(benchmark, build)
    throughput(benchmark, routes.prefixes.size, unit="prefixes", table_bytes=table.nbytes)
