"""Cluster DNS against its slow twin (tests/naive/dns.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fastpath.cluster.model import Cluster, Endpoint, EndpointSlice, EndpointSlicePort, Service, ServicePort
from fastpath.dns import DnsTable
from fastpath.errors import FastpathError
from naive.dns import NaiveDns
from naive.services import ip, random_cluster


def batch(table: DnsTable, names: list, namespaces: list, ns_names: list[str], src_ip=None, src_port=None):
    """Resolve (name, namespace) rows with the table; return (ip or None) per row."""
    name_dict = sorted({n for n in names if n is not None})
    codes = np.array([name_dict.index(n) if n is not None else -1 for n in names], np.int32)
    ns = np.array([ns_names.index(s) if s is not None else -1 for s in namespaces], np.int32)
    out = np.full(len(names), 7, np.uint32)
    ok = np.ones(len(names), bool)
    table.resolve(codes, name_dict, ns, ns_names, out, ok, src_ip=src_ip, src_port=src_port)
    return [int(o) if k else None for o, k in zip(out, ok)], out, ok


def cluster_with_headless() -> Cluster:
    c = random_cluster(random.Random(3), n_nodes=3, n_services=6)
    c.services.append(Service("db", "pg", "ClusterIP", (), True, (ServicePort("pg", 5432, 6, 5432, None),), None,
                              (), (), False, 10800, "Cluster", "Cluster", None))
    c.services.append(Service("db", "gone", "ClusterIP", (), True, (ServicePort("pg", 5432, 6, 5432, None),), None,
                              (), (), False, 10800, "Cluster", "Cluster", None))
    c.services.append(Service("db", "legacy", "ExternalName", (), False, (), None, (), (), False, 10800, "Cluster",
                              "Cluster", None, "db.example.com"))
    eps = tuple(Endpoint((ip(f"10.244.1.{k}"),), k != 9, True, False, "node-1", None, (), None) for k in (7, 8, 9))
    c.slices.append(EndpointSlice("db", "pg-1", "pg", (EndpointSlicePort("pg", 5432, 6),), eps))
    c.slices.append(EndpointSlice("db", "gone-1", "gone", (EndpointSlicePort("pg", 5432, 6),), eps[2:]))
    return c


NS = ["ns", "db", "other"]


def test_service_names_and_search_path():
    c = cluster_with_headless()
    t = DnsTable.from_cluster(c)
    svc = next(s for s in c.services if s.namespace == "ns" and s.cluster_ips)
    vip = svc.cluster_ips[0]
    rows = [
        (svc.name, "ns", vip), (svc.name, "other", None), (f"{svc.name}.ns", "other", vip),
        (f"{svc.name}.ns.svc", "other", vip), (f"{svc.name}.ns.svc.cluster.local", "db", vip),
        (f"{svc.name}.ns.svc.cluster.local.", None, vip), (f"{svc.name.upper()}.NS.svc.Cluster.Local", None, vip),
        (f"{svc.name}.ns", None, None), (svc.name + ".", "ns", None), ("legacy", "db", None),
        ("legacy.db.svc.cluster.local", None, None), ("10-244-3-9.any.pod.cluster.local", None, ip("10.244.3.9")),
        ("10-244-3-9.any.pod", "db", ip("10.244.3.9")), ("10-244-03-9.any.pod.cluster.local", None, None),
        ("10-244-3-256.any.pod.cluster.local", None, None), ("10-244-3.any.pod.cluster.local", None, None),
        ("10-244-3-9.pod.cluster.local", None, None), ("", "ns", None), (".", "ns", None),
        (f"{svc.name}..ns", "ns", None), ("kubernetes.default", "ns", None),
    ]
    got, _, _ = batch(t, [r[0] for r in rows], [r[1] for r in rows], NS)
    assert got == [r[2] for r in rows]


def test_search_order_ndots():
    t = DnsTable.from_cluster(cluster_with_headless())
    sfx = ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert t.candidates("web", "shop") == [f"web.{s}" for s in sfx] + ["web"]
    assert t.candidates("a.b.c.d", "shop") == [f"a.b.c.d.{s}" for s in sfx] + ["a.b.c.d"]
    assert t.candidates("a.b.c.d.e.f", "shop") == ["a.b.c.d.e.f"] + [f"a.b.c.d.e.f.{s}" for s in sfx]
    assert t.candidates("Web.Shop.", "shop") == ["web.shop"]
    assert t.candidates("web.shop", None) == ["web.shop"]


def test_other_domain():
    c = cluster_with_headless()
    c.domain = "corp.example"
    t = DnsTable.from_cluster(c)
    svc = next(s for s in c.services if s.namespace == "ns" and s.cluster_ips)
    got, _, _ = batch(t, [f"{svc.name}.ns.svc.corp.example", f"{svc.name}.ns.svc.cluster.local", svc.name,
                          "1-2-3-4.ns.pod.corp.example"], [None, None, "ns", None], NS)
    assert got == [svc.cluster_ips[0], None, svc.cluster_ips[0], ip("1.2.3.4")]


def test_headless_picks_ready_endpoints_per_client():
    c = cluster_with_headless()
    t = DnsTable.from_cluster(c)
    n = 400
    src = np.arange(n, dtype=np.uint32) + ip("10.244.0.2")
    port = np.full(n, 5000, np.uint16)
    got, _, ok = batch(t, ["pg.db.svc.cluster.local"] * n, ["ns"] * n, NS, src, port)
    assert set(got) == {ip("10.244.1.7"), ip("10.244.1.8")}      # .9 is not Ready
    again, _, _ = batch(t, ["pg.db.svc.cluster.local"] * n, ["ns"] * n, NS, src, port)
    assert got == again
    assert batch(t, ["gone.db.svc.cluster.local"], ["ns"], NS)[0] == [None]   # no Ready endpoint
    one, _, _ = batch(t, ["pg.db.svc.cluster.local"] * 3, ["ns"] * 3, NS)
    assert len(set(one)) == 1                                      # by name without a client


def test_rows_without_name_untouched_and_errors():
    t = DnsTable.from_cluster(cluster_with_headless())
    got, out, ok = batch(t, [None, "nosuch"], [None, "ns"], NS)
    assert out[0] == 7 and ok[0] and not ok[1]
    with pytest.raises(FastpathError, match="namespace"):
        t.resolve(np.array([0], np.int32), ["a"], np.array([5], np.int32), NS, np.zeros(1, np.uint32),
                  np.ones(1, bool))
    with pytest.raises(FastpathError, match="one row per flow"):
        t.resolve(np.array([0], np.int32), ["a"], np.array([], np.int32), NS, np.zeros(1, np.uint32),
                  np.ones(1, bool))


def test_matches_twin_on_random_names():
    rng = random.Random(0)
    for k in range(4):
        c = cluster_with_headless()
        t, naive = DnsTable.from_cluster(c, seed=k), NaiveDns(c, seed=k)
        words = [s.name for s in c.services] + ["nosuch", "pod", "svc", "cluster", "local", "ns", "db", "other",
                                                  "10-244-1-7", "1-2-3-4", "01-2-3-4", "a-b-c-d"]
        names, spaces, src, port = [], [], [], []
        for _ in range(300):
            parts = [rng.choice(words) for _ in range(rng.randint(1, 6))]
            if rng.random() < 0.4:
                parts = [rng.choice(words[:len(c.services)]), rng.choice(["ns", "db"]), "svc", "cluster", "local"][
                        :rng.randint(1, 5)]
            if rng.random() < 0.2:
                parts = [rng.choice(["10-244-1-7", "1-2-3-4", "256-1-1-1"]), rng.choice(NS), "pod", "cluster",
                         "local"][:rng.randint(3, 5)]
            name = ".".join(parts) + ("." if rng.random() < 0.2 else "")
            names.append(name)
            spaces.append(rng.choice(NS + [None]))
            src.append(rng.randint(0, 2**32 - 1))
            port.append(rng.randint(0, 65535))
        got, _, _ = batch(t, names, spaces, NS, np.array(src, np.uint32), np.array(port, np.uint16))
        want = [naive.resolve(nm, sp, s, p) for nm, sp, s, p in zip(names, spaces, src, port)]
        assert got == want
        assert sum(g is not None for g in got) > 30


POD_RECORDS = ["10-244-1-7.shop.pod.cluster.local", "10-244-1-7.shop.pod.cluster.local.", "10-244-1-7.Shop.POD.cluster.local",
               "010-244-1-7.shop.pod.cluster.local", "10-244-1-256.shop.pod.cluster.local", "1-2-3-4.a.pod.cluster.local",
               "1-2-3.shop.pod.cluster.local", "1-2-3-4-5.shop.pod.cluster.local", "10-244-1-7.shop.team.pod.cluster.local",
               "10-244-1-7.-shop.pod.cluster.local", "10-244-1-7.shop.pod.other.local", "0-0-0-0.x.pod.cluster.local",
               "255-255-255-255.x-y.pod.cluster.local", "10-244-01-7.shop.pod.cluster.local", "web", "web.shop"]


def test_batch_pod_records_equal_single_answers():
    """The vectorized pod-record path answers exactly as answer() does, name by name."""
    table = DnsTable.from_cluster(cluster_with_headless())
    ns_names = ["shop", "kube-system"]
    for ns in ("shop", None):
        got, _, _ = batch(table, POD_RECORDS, [ns] * len(POD_RECORDS), ns_names)
        for name, g in zip(POD_RECORDS, got):
            want = table.answer(name, ns)
            assert (g is not None) == bool(want), name
            if want:
                assert g in want, name
