"""The trace generator's kernel against its twin (``tests/naive/synth.py``), row for row.

The pools (what flows are drawn from) against a plain reading of the cluster's
objects; the kernel's rows against plain-Python rows from the same pools, on small
and real clusters, every kind alone and mixed, rows from the middle of a trace, and
random seeds and knobs (hypothesis).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import load_cluster
from fastpath.cluster.load import cluster_from_objects
from fastpath.cluster.synth import synth_cluster
from fastpath.traces import synth as S
from fastpath.traces.reader import open_trace
from naive import synth as twin
from test_real_dumps import DUMPS, REJECTED
from test_traces import small_cluster

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "traces" / "sample-cluster.json"
COLUMNS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "gaps", "name_code", "bytes", "packets")


def _pools(cluster, mix: S.TraceMix, seed: int) -> S._Pools:
    return S._Pools(cluster, mix, np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,)))))


def assert_rows_equal(cluster, mix: S.TraceMix, seed: int, start: int, count: int) -> None:
    pools = _pools(cluster, mix, seed)
    got = S._Generator(pools, mix, seed).rows(start, count)
    want = twin.rows(pools, mix, seed, start, count)
    for k, name in enumerate(COLUMNS):
        col = [w[k] for w in want]
        if name == "dst_ip":          # a named row has no address: the kernel writes 0 there
            col = [0 if w[6] >= 0 else v for w, v in zip(want, col)]
        np.testing.assert_array_equal(got[name], np.array(col, dtype=got[name].dtype), err_msg=name)
    if mix.duration_mix:
        np.testing.assert_allclose(got["duration"], [w[9] for w in want], rtol=1e-12)
    else:
        assert "duration" not in got


def _clusters():
    yield "small", small_cluster()
    yield "small-no-nodeport", small_cluster(node_port=False)
    yield "sample", load_cluster(SAMPLE)
    yield "synth-lb", cluster_from_objects(synth_cluster(6, 5, 12, seed=3)["items"], "synth")


@pytest.fixture(scope="module")
def clusters() -> dict:
    return dict(_clusters())


@pytest.mark.parametrize("name", [n for n, _ in _clusters()])
def test_pools_match_a_plain_reading_of_the_objects(clusters, name):
    cl, mix = clusters[name], S.TraceMix()
    p, want = _pools(cl, mix, 5), twin.pools(cl, mix, 5)
    for field in ("cli_ip", "ns_members", "ns_count", "cli_pcount", "cli_port", "cli_proto", "pp_ip", "listen_keys",
                  "pod_ips", "host_ip", "cidr_net", "cidr_size", "node_addr", "ci_ip", "ci_port", "ci_keys",
                  "ci_addrs", "ns_ip", "ns_port", "ns_nodes"):
        assert getattr(p, field).tolist() == want[field], field
    assert p.names[:len(want["names_prefix"])] == want["names_prefix"]
    # the alias table draws each North-South segment with its share (a NodePort: its node addresses')
    if p.ns.k:
        np.testing.assert_allclose(implied(p.ns), np.array(want["ns_w"]) / sum(want["ns_w"]), rtol=1e-9)


def implied(choice: S._Choice) -> np.ndarray:
    """The probability of each index under an alias table: its own column plus the aliases to it."""
    p = choice.prob.copy()
    np.add.at(p, choice.alias, 1.0 - choice.prob)
    return p / choice.k


@pytest.mark.parametrize("name", [n for n, _ in _clusters()])
@pytest.mark.parametrize("knobs", [{}, {"duration_mix": True, "long_lived": 0.3}])
def test_kernel_rows_equal_the_twin(clusters, name, knobs):
    assert_rows_equal(clusters[name], S.TraceMix(**knobs), seed=7, start=0, count=3000)


@pytest.mark.parametrize("kind", S.TraceMix.KINDS)
def test_each_kind_alone(clusters, kind):
    knobs = {k: 0.0 for k in S.TraceMix.KINDS}
    knobs[kind] = 1.0
    assert_rows_equal(clusters["synth-lb"], S.TraceMix(**knobs, missing_names=0.3, localhost_listening=0.5),
                      seed=1, start=123_456, count=1500)


def test_redraws_where_most_ports_are_taken():
    """A pod declaring thousands of ports: localhost and closed-port rows collide and redraw."""
    cl = small_cluster(nodes=1, pods_per_node=1, services=1)
    pod = cl.pods[0]
    many = tuple(type(pod.ports[0])("c", port, 6, None) for port in range(1024, 60000))
    cl.pods[0] = type(pod)(pod.namespace, pod.name, pod.node, False, pod.ip, True, False, many, pod.labels)
    knobs = {k: 0.0 for k in S.TraceMix.KINDS}
    knobs.update(localhost=1.0, to_nothing=1.0)
    assert_rows_equal(cl, S.TraceMix(**knobs, localhost_listening=0.0), seed=2, start=0, count=2000)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), start=st.integers(0, 2**40), zipf=st.floats(0, 3),
       shares=st.lists(st.floats(0, 1), min_size=7, max_size=7).filter(lambda s: sum(s) > 0.01),
       via=st.floats(0, 1), rate=st.floats(1.0, 1e7))
def test_random_knobs_equal_the_twin(seed, start, zipf, shares, via, rate):
    cl = small_cluster(nodes=2, pods_per_node=3, services=4)
    mix = S.TraceMix(**dict(zip(S.TraceMix.KINDS, shares)), zipf=zipf, via_service=via, rate=rate)
    assert_rows_equal(cl, mix, seed=seed, start=start, count=200)


def test_north_south_node_addresses_are_uniform():
    """A NodePort's flows spread evenly over every node address (drawn from the alias residual)."""
    cl = cluster_from_objects(synth_cluster(40, 2, 60, seed=1)["items"], "synth")
    knobs = {k: 0.0 for k in S.TraceMix.KINDS}
    knobs["north_south"] = 1.0
    mix = S.TraceMix(**knobs)
    pools = _pools(cl, mix, 0)
    rows = S._Generator(pools, mix, 0).rows(0, 400_000)
    at_nodes = np.isin(rows["dst_ip"], pools.node_addr)
    assert at_nodes.mean() > 0.3
    counts = np.bincount(np.searchsorted(np.sort(pools.node_addr), rows["dst_ip"][at_nodes]),
                         minlength=pools.node_addr.size)
    expected = at_nodes.sum() / pools.node_addr.size
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 2 * pools.node_addr.size, chi2            # about its degrees of freedom when uniform


@pytest.mark.skipif(not DUMPS.is_dir(), reason="real cluster dumps not found")
def test_real_dumps_kernel_equals_twin():
    done = 0
    for path in sorted(DUMPS.iterdir()):
        if path.name in REJECTED or path.name == "SOURCES.md" or path.name.startswith("."):
            continue
        cl = load_cluster(path)
        try:
            mix = S.TraceMix(duration_mix=True)
            assert_rows_equal(cl, mix, seed=3, start=0, count=400)
        except S.FastpathError as e:
            assert "nothing to make flows between" in str(e)
            continue
        p, want = _pools(cl, S.TraceMix(), 3), twin.pools(cl, S.TraceMix(), 3)
        assert p.cli_ip.tolist() == want["cli_ip"] and p.listen_keys.tolist() == want["listen_keys"], path.name
        assert p.names[:len(want["names_prefix"])] == want["names_prefix"], path.name
        done += 1
    assert done >= 10


def test_file_rows_are_the_kernel_rows(tmp_path, clusters):
    """What synth_trace writes is the kernel's rows, ts the running sum of the gaps."""
    cl = clusters["sample"]
    out = tmp_path / "t.arrow"
    S.synth_trace(cl, 5000, seed=9, out=out, batch_size=777, duration_mix=True)
    f = open_trace(out).read_all()
    mix = S.TraceMix(duration_mix=True)
    rows = S._Generator(_pools(cl, mix, 9), mix, 9).rows(0, 5000)
    np.testing.assert_array_equal(f.src_ip, rows["src_ip"])
    np.testing.assert_array_equal(f.dst_port, rows["dst_port"])
    np.testing.assert_array_equal(f.ts, mix.start_ns + np.cumsum(rows["gaps"]))
    np.testing.assert_array_equal(f.name_code >= 0, rows["name_code"] >= 0)
