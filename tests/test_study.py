"""Capacity-study figures: backend load, imbalance, churn across balancers."""
from __future__ import annotations

import importlib.util
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from fastpath.cluster.model import Endpoint
from fastpath.errors import FastpathError
from fastpath.study import backend_load, churn, client_nodes, imbalance, plot_churn, without_endpoints
from fastpath.tables.services import ServiceStage, compile_services
from naive.services import ip
from test_services import CLIENT, VIP, arrays, run_stage, small_cluster


def many_endpoints(n: int):
    return small_cluster(endpoints=tuple(
        Endpoint((ip(f"10.244.{i % 2}.{100 + i}"),), True, True, False, f"node-{i % 2}", None, (), None)
        for i in range(n)))


def flows_to(dst, n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"src_ip": int(s), "dst_ip": dst, "src_port": int(p), "dst_port": 80, "proto": 6}
            for s, p in zip(rng.integers(0x64400000, 0x6440FFFF, n), rng.integers(1024, 65535, n))]


def test_imbalance():
    assert imbalance([5, 5, 5]) == (1.0, 0.0)
    mom, cv = imbalance([3, 1])
    assert mom == 1.5 and cv == pytest.approx(0.5)
    assert all(math.isnan(x) for x in imbalance([0, 0])) and all(math.isnan(x) for x in imbalance([]))


def test_backend_load_from_arrays_and_arrow():
    c = many_endpoints(6)
    smap = compile_services(c)
    f = flows_to(VIP, 3000) + flows_to(ip("10.96.0.11"), 10) + flows_to(ip("8.8.8.8"), 5)
    out = run_stage(ServiceStage(smap), c, f)
    w = np.arange(len(f), dtype=np.float64)
    load = backend_load(out, smap, weights=w)
    want = Counter(zip(out["dnat_ip"][:3000].tolist(), out["dnat_port"][:3000].tolist()))
    got = {(int(a), int(p)): int(k) for a, p, k in zip(load.ip, load.port, load.flows)}
    assert got == dict(want) and load.flows.sum() == 3000 and load.unmatched == 0
    assert load.bytes.sum() == pytest.approx(w[:3000].sum())
    # the same from an Arrow results table with service names
    names = pa.DictionaryArray.from_arrays(pa.array(out["service"], pa.int32(), mask=out["service"] < 0),
                                           pa.array(smap.names))
    table = pa.table({"service": names, "dnat_ip": out["dnat_ip"], "dnat_port": out["dnat_port"]})
    assert np.array_equal(backend_load(table, smap).flows, load.flows)
    t = load.imbalance()
    assert t.column("service").to_pylist() == ["shop/web:http"] and t.column("backends")[0].as_py() == 6
    assert 1.0 <= t.column("max_over_mean")[0].as_py() < 1.2
    assert load.to_arrow().num_rows == 6


def test_backend_load_zero_backends_and_unmatched():
    c = many_endpoints(4)
    smap = compile_services(c)
    out = {"service": np.array([0, 0, -1], np.int32), "dnat_ip": np.array([ip("10.244.0.100"), 1, 2], np.uint32),
           "dnat_port": np.array([8080, 80, 80], np.uint16)}
    load = backend_load(out, smap)
    assert load.flows.tolist() == [1, 0, 0, 0] and load.unmatched == 1
    with pytest.raises(FastpathError, match="'dnat_port' missing"):
        backend_load(pa.table({"service": ["a"], "dnat_ip": [1]}), smap)


def test_without_endpoints_and_client_nodes():
    c = many_endpoints(5)
    gone = without_endpoints(c, ["10.244.0.100", ip("10.244.1.101")])
    smap = compile_services(gone)
    assert sorted(smap.ep_ip.tolist()) == sorted([ip("10.244.0.102"), ip("10.244.1.103"), ip("10.244.0.104")])
    nodes = client_nodes(c, np.array([CLIENT, ip("192.168.0.2"), ip("203.0.113.1"), ip("8.8.8.8")], np.uint32))
    assert nodes.tolist() == [2, 1, 0, -1]
    with pytest.raises(FastpathError, match="not an IPv4"):
        without_endpoints(c, ["web-0"])


def test_churn_maglev_moves_about_one_in_n():
    n = 20
    c = many_endpoints(n)
    f = arrays(flows_to(VIP, 20000, seed=1))
    f = {k: v for k, v in f.items() if v is not None}
    result = churn(c, f, "10.244.1.105", maglev_size=4093)
    assert set(result) == {"random", "round-robin", "source-hash", "maglev", "least-connection"}
    assert 1 / n <= result["maglev"] <= 1 / n + 0.03
    assert result["random"] > 0.3 and result["source-hash"] > 0.3
    assert result["maglev"] < result["random"] / 5
    assert churn(c, f, [], lb="random") == {"random": 0.0}


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib installed")
def test_plots_need_matplotlib():
    with pytest.raises(FastpathError, match="matplotlib"):
        plot_churn({"maglev": 0.05})
