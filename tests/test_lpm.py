"""RouteTable (Poptrie LPM) against its slow twin, DPDK-style edge cases, and a real Internet table.

Order: edge cases first (every depth at one address, /0 and /32, nesting, range
boundaries), then errors, then random tables (hypothesis) against
``tests/naive/lpm.py``, then the 616k-prefix RouteViews table against pytricia.
"""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import benchdata
from fastpath.errors import FastpathError
from fastpath.tables.lpm import RouteTable
from fastpath.tables.routeviews import read_pfx2as
from naive.lpm import MISS, NaiveRouteTable, mask

ALL_ONES = 0xFFFFFFFF


# --------------------------------------------------------------------------- helpers

def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def dotted(value: int) -> str:
    return str(ipaddress.IPv4Address(int(value)))


def both(routes) -> tuple[RouteTable, NaiveRouteTable]:
    """RouteTable and twin built from ``[(prefix_int, length, next_hop), ...]``."""
    p = np.array([r[0] for r in routes], dtype=np.uint32)
    n = np.array([r[1] for r in routes], dtype=np.uint8)
    h = np.array([r[2] for r in routes], dtype=np.uint32)
    return RouteTable.from_arrays(p, n, h), NaiveRouteTable.from_arrays(p.tolist(), n.tolist(), h.tolist())


def probe_points(prefixes, lengths, extra=()) -> np.ndarray:
    """First and last address of every prefix and their neighbours, plus 0 and 2^32-1."""
    first = np.asarray(prefixes, dtype=np.int64)
    last = first + (np.int64(1) << (32 - np.asarray(lengths, dtype=np.int64))) - 1
    pts = np.concatenate([first, last, first - 1, last + 1, [0, ALL_ONES], np.asarray(extra, np.int64)])
    pts = np.unique(pts[(pts >= 0) & (pts <= ALL_ONES)])
    return pts.astype(np.uint32)


def assert_same(rt: RouteTable, twin: NaiveRouteTable, addresses=()) -> None:
    """Lookups (all three forms), contents, size and flattened ranges agree with the twin."""
    p, n, h = rt.prefixes()
    assert list(zip(p.tolist(), n.tolist(), h.tolist())) == twin.prefixes()
    assert len(rt) == len(twin)
    pts = probe_points(p, n, addresses)
    expected = np.array(twin.lookup_many(pts.tolist()), dtype=np.uint32)
    got = rt.lookup(pts)
    if not np.array_equal(got, expected):
        j = int(np.flatnonzero(got != expected)[0])
        pytest.fail(f"lookup {dotted(pts[j])}: RouteTable {got[j]:#x}, twin {expected[j]:#x}; "
                    f"table {[(dotted(a), b, c) for a, b, c in twin.prefixes()]}")
    out = np.full(pts.shape, 7, dtype=np.uint32)
    assert rt.lookup(pts, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(rt.lookup_parallel(pts), expected)
    out2 = np.zeros(pts.shape, dtype=np.uint32)
    assert rt.lookup_parallel(pts, out=out2) is out2
    np.testing.assert_array_equal(out2, expected)
    assert_ranges(rt, twin, pts, expected)


def assert_ranges(rt: RouteTable, twin: NaiveRouteTable, pts=None, expected=None) -> None:
    starts, hops = rt.to_ranges()
    assert starts.dtype == np.uint64 and hops.dtype == np.uint32
    assert starts.shape == hops.shape and starts[0] == 0
    assert np.all(np.diff(starts) > 0) and starts[-1] <= ALL_ONES
    # ranges merge equal neighbours (documented), so compare with the twin's merged ranges
    assert list(zip(starts.tolist(), hops.tolist())) == twin.ranges()
    if pts is not None:
        idx = np.searchsorted(starts, pts.astype(np.uint64), side="right") - 1
        np.testing.assert_array_equal(hops[idx], expected)


# --------------------------------------------------------------------------- edge cases

DEPTH_ADDRESSES = [0x00000000, ALL_ONES, ip("192.168.10.11"), 0x80000000, 0x7FFFFFFF, ip("10.244.7.9")]


@pytest.mark.parametrize("address", DEPTH_ADDRESSES, ids=dotted)
@pytest.mark.parametrize("order", ["longest-first", "shortest-first"])
def test_one_address_covered_at_every_depth(address, order):
    """DPDK test_lpm style: /1../32 over one address, deleted depth by depth."""
    routes = [(address & mask(d), d, d) for d in range(1, 33)]
    rt, twin = both(routes)
    # every depth d answers where the address's bit d flips (first d-1 bits still agree)
    flips = [address ^ (1 << (32 - d)) for d in range(1, 33)]
    assert rt.lookup(np.array([address], np.uint32))[0] == 32
    np.testing.assert_array_equal(rt.lookup(np.array(flips, np.uint32)),
                                  [d - 1 if d > 1 else MISS for d in range(1, 33)])
    assert_same(rt, twin, flips)
    depths = list(range(32, 0, -1)) if order == "longest-first" else list(range(1, 33))
    for d in depths:
        rt.delete((address & mask(d), d))
        twin.delete((address & mask(d), d))
        remaining = depths[depths.index(d) + 1:]
        want = max(remaining) if remaining else MISS
        assert rt.lookup(np.array([address], np.uint32))[0] == want, f"after deleting /{d}"
        assert_same(rt, twin, flips)
    assert len(rt) == 0


@pytest.mark.parametrize("address", DEPTH_ADDRESSES, ids=dotted)
def test_every_depth_under_a_default_route(address):
    routes = [(0, 0, 100)] + [(address & mask(d), d, d) for d in range(1, 33)]
    rt, twin = both(routes)
    for d in range(32, 0, -1):
        assert rt.lookup(np.array([address], np.uint32))[0] == d
        rt.delete((address & mask(d), d))
        twin.delete((address & mask(d), d))
        assert_same(rt, twin, [address])
    np.testing.assert_array_equal(rt.lookup(np.array([0, address, ALL_ONES], np.uint32)), [100] * 3)


def test_empty_table_misses_everything():
    rt = RouteTable.from_arrays(np.empty(0, np.uint32), np.empty(0, np.uint8), np.empty(0, np.uint32))
    assert len(rt) == 0 and RouteTable.MISS == MISS == 0xFFFFFFFF
    np.testing.assert_array_equal(rt.lookup(np.array([0, 1, ALL_ONES], np.uint32)), [MISS] * 3)
    starts, hops = rt.to_ranges()
    assert starts.tolist() == [0] and hops.tolist() == [MISS]
    assert rt.lookup(np.empty(0, np.uint32)).shape == (0,)


def test_default_route_alone_covers_everything():
    rt = RouteTable.from_cidrs(["0.0.0.0/0"], [5])
    np.testing.assert_array_equal(rt.lookup(np.array([0, 0x7FFFFFFF, 0x80000000, ALL_ONES], np.uint32)), [5] * 4)
    assert [a.tolist() for a in rt.to_ranges()] == [[0], [5]]


@pytest.mark.parametrize("host", ["0.0.0.0", "0.0.0.1", "10.0.0.0", "127.255.255.255", "128.0.0.0",
                                  "255.255.255.254", "255.255.255.255"])
def test_host_route_alone(host):
    rt = RouteTable.from_cidrs([f"{host}/32"], [3])
    twin = NaiveRouteTable.from_cidrs([f"{host}/32"], [3])
    a = ip(host)
    assert rt.lookup(np.array([a], np.uint32))[0] == 3
    assert_same(rt, twin, [a - 1 if a else a, a + 1 if a < ALL_ONES else a])


def test_host_route_in_slash24_in_slash8():
    rt = RouteTable.from_cidrs(["10.0.0.0/8", "10.1.2.0/24", "10.1.2.3/32"], [1, 2, 3])
    twin = NaiveRouteTable.from_cidrs(["10.0.0.0/8", "10.1.2.0/24", "10.1.2.3/32"], [1, 2, 3])
    cases = {"9.255.255.255": MISS, "10.0.0.0": 1, "10.1.1.255": 1, "10.1.2.0": 2, "10.1.2.2": 2,
             "10.1.2.3": 3, "10.1.2.4": 2, "10.1.2.255": 2, "10.1.3.0": 1, "10.255.255.255": 1,
             "11.0.0.0": MISS}
    got = rt.lookup(np.array([ip(a) for a in cases], np.uint32))
    assert dict(zip(cases, got.tolist())) == cases
    assert_same(rt, twin)
    for cidr, after in [("10.1.2.0/24", 3), ("10.1.2.3/32", 1), ("10.0.0.0/8", MISS)]:
        rt.delete(cidr)
        twin.delete(cidr)
        assert rt.lookup(np.array([ip("10.1.2.3")], np.uint32))[0] == after
        assert_same(rt, twin)


@pytest.mark.parametrize("length", range(33))
def test_first_and_last_address_at_every_length(length):
    """A prefix at each length with its two halves' edges, bordered by other prefixes."""
    rng = np.random.default_rng(length)
    base = int(rng.integers(1, 1 << 32)) & mask(length)
    routes = [(base, length, 1)]
    size = 1 << (32 - length)
    if base > 0:
        routes.append((base - 1, 32, 2))                               # the address just before
    if base + size <= ALL_ONES:
        routes.append((base + size, 32, 3))                         # the address just after
    if length < 32:
        routes.append((base + size // 2, length + 1, 4))            # upper half, longer
    rt, twin = both(routes)
    assert_same(rt, twin, [base + size // 2 - 1, base + size // 2])


@pytest.mark.parametrize("boundary", [15, 16, 17, 21, 22, 23, 27, 28, 29, 31, 32])
def test_stride_boundaries(boundary):
    """Prefixes ending at and around the trie's level boundaries (16 + 6 + 6 + 4 bits)."""
    base = ip("172.16.0.0")
    routes = [(base & mask(n), n, n) for n in (boundary - 1, boundary) if n >= 0]
    routes += [((base | (1 << (32 - boundary))) & mask(boundary), boundary, 77)]
    routes += [(ip("172.31.255.255") & mask(boundary), boundary, 78)]
    rt, twin = both(routes)
    assert_same(rt, twin)


def test_duplicates_last_wins():
    rt = RouteTable.from_cidrs(["10.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/8"], [1, 2, 3, 4])
    assert len(rt) == 2
    np.testing.assert_array_equal(rt.lookup(np.array([ip("10.0.0.1"), ip("10.1.0.0")], np.uint32)), [3, 4])
    rt2 = RouteTable.from_arrays(np.array([ip("10.0.0.0")] * 3, np.uint32), np.array([8] * 3, np.uint8),
                                 np.array([9, 8, 7], np.uint32))
    assert rt2.prefixes()[2].tolist() == [7]


def test_insert_replaces_and_delete_falls_back():
    rt = RouteTable.from_cidrs(["10.244.0.0/16", "0.0.0.0/0"], next_hops=[1, 2])
    twin = NaiveRouteTable.from_cidrs(["10.244.0.0/16", "0.0.0.0/0"], [1, 2])
    probe = np.array([ip("10.244.7.7"), ip("10.244.8.1"), ip("8.8.8.8")], np.uint32)
    np.testing.assert_array_equal(rt.lookup(probe), [1, 1, 2])
    rt.insert("10.244.7.0/24", 9)
    np.testing.assert_array_equal(rt.lookup(probe), [9, 1, 2])
    rt.insert((ip("10.244.7.0"), 24), 10)                      # re-insert replaces the next hop
    assert len(rt) == 3
    np.testing.assert_array_equal(rt.lookup(probe), [10, 1, 2])
    rt.delete("10.244.7.0/24")
    np.testing.assert_array_equal(rt.lookup(probe), [1, 1, 2])
    rt.delete((ip("10.244.0.0"), 16))
    np.testing.assert_array_equal(rt.lookup(probe), [2, 2, 2])
    for r, h in [("10.244.7.0/24", 9), ("10.244.7.0/24", 10)]:
        twin.insert(r, h)
    for r in ["10.244.7.0/24", "10.244.0.0/16"]:
        twin.delete(r)
    assert_same(rt, twin, probe)


def test_delete_absent_prefix_raises_and_names_it():
    rt = RouteTable.from_cidrs(["10.0.0.0/8"], [1])
    with pytest.raises(FastpathError, match=r"10\.1\.0\.0/16"):
        rt.delete("10.1.0.0/16")
    with pytest.raises(FastpathError, match=r"10\.0\.0\.0/9"):
        rt.delete((ip("10.0.0.0"), 9))
    rt.delete("10.0.0.0/8")
    with pytest.raises(FastpathError, match=r"10\.0\.0\.0/8"):
        rt.delete("10.0.0.0/8")                                  # already gone
    rt.insert("10.0.0.0/8", 2)                                   # and back
    assert rt.lookup(np.array([ip("10.9.9.9")], np.uint32))[0] == 2


def test_largest_next_hop_is_not_miss():
    rt = RouteTable.from_cidrs(["10.0.0.0/8"], [0xFFFFFFFE])
    assert rt.lookup(np.array([ip("10.0.0.1"), ip("11.0.0.1")], np.uint32)).tolist() == [0xFFFFFFFE, MISS]


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("cidr, needle", [
    ("10.0.0.0/33", "10.0.0.0/33"),
    ("10.0.0.1/8", "10.0.0.1/8"),
    ("10.244.7.9/24", "10.244.7.9/24"),
    ("10.0.0/8", "10.0.0/8"),
    ("10.0.0.0/x", "10.0.0.0/x"),
    ("not-a-cidr", "not-a-cidr"),
    ("2001:db8::/32", "2001:db8::/32"),
])
def test_bad_cidr_names_the_value(cidr, needle):
    for action in (lambda: RouteTable.from_cidrs(["0.0.0.0/0", cidr], [1, 2]),
                   lambda: RouteTable.from_cidrs(["0.0.0.0/0"], [1]).insert(cidr, 3),
                   lambda: RouteTable.from_cidrs(["0.0.0.0/0"], [1]).delete(cidr)):
        with pytest.raises(FastpathError) as err:
            action()
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_from_arrays_rejects_host_bits_and_names_the_prefix():
    with pytest.raises(FastpathError, match=r"10\.0\.0\.1/8"):
        RouteTable.from_arrays(np.array([ip("10.0.0.0"), ip("10.0.0.1")], np.uint32),
                               np.array([8, 8], np.uint8), np.array([1, 2], np.uint32))
    with pytest.raises(FastpathError, match=r"10\.0\.0\.1/8"):
        RouteTable.from_cidrs(["0.0.0.0/0"], [1]).insert((ip("10.0.0.1"), 8), 2)


@pytest.mark.parametrize("prefixes, lengths, next_hops, needle", [
    ([0], [33], [1], "33"),
    ([0, 0], [0], [1, 1], "length"),
    ([0], [0], [0xFFFFFFFF], "MISS"),
])
def test_from_arrays_rejects_bad_arrays(prefixes, lengths, next_hops, needle):
    with pytest.raises(FastpathError, match=needle):
        RouteTable.from_arrays(np.array(prefixes, np.uint32), np.array(lengths, np.uint8),
                               np.array(next_hops, np.uint32))


def test_from_cidrs_length_mismatch():
    with pytest.raises(FastpathError, match="2 CIDRs but 1 next hops"):
        RouteTable.from_cidrs(["10.0.0.0/8", "0.0.0.0/0"], [1])


@pytest.mark.parametrize("dst", [np.array([1.5]), np.array([-1], np.int64), np.array([1 << 32], np.int64),
                                 np.array(["10.0.0.1"])])
def test_bad_destinations_are_rejected(dst):
    rt = RouteTable.from_cidrs(["0.0.0.0/0"], [1])
    with pytest.raises(FastpathError, match="route lookup"):
        rt.lookup(dst)
    with pytest.raises(FastpathError, match="route lookup"):
        rt.lookup_parallel(dst)


@pytest.mark.parametrize("out", [np.empty(3, np.int64), np.empty(2, np.uint32), np.empty(6, np.uint32)[::2]])
def test_bad_out_array_is_rejected(out):
    rt = RouteTable.from_cidrs(["0.0.0.0/0"], [1])
    with pytest.raises(FastpathError, match="out must be"):
        rt.lookup(np.zeros(3, np.uint32), out=out)


def test_integer_destinations_of_other_dtypes_and_layouts():
    rt, twin = both([(ip("10.0.0.0"), 8, 1), (ip("192.168.0.0"), 16, 2), (0, 0, 3)])
    addrs = [ip("10.1.2.3"), ip("192.168.9.9"), 0, ALL_ONES, ip("172.16.0.1")]
    want = twin.lookup_many(addrs)
    assert rt.lookup(np.array(addrs, np.int64)).tolist() == want
    assert rt.lookup(np.array(addrs, np.uint64)).tolist() == want
    strided = np.repeat(np.array(addrs, np.uint32), 2)[::2]
    assert rt.lookup(strided).tolist() == want
    assert rt.lookup_parallel(strided).tolist() == want


def test_read_only_inputs():
    routes = benchdata.cluster_route_table(nodes=300, seed=4)
    for a in routes:
        a.setflags(write=False)
    rt = RouteTable.from_arrays(*routes)
    twin = NaiveRouteTable.from_arrays(*(a.tolist() for a in routes))
    dst = benchdata.destinations_in(routes.prefixes, routes.lengths, 2000, seed=5)
    dst = np.concatenate([dst, benchdata.random_destinations(2000, seed=6)])
    dst.setflags(write=False)
    want = np.array(twin.lookup_many(dst.tolist()), np.uint32)
    np.testing.assert_array_equal(rt.lookup(dst), want)
    np.testing.assert_array_equal(rt.lookup_parallel(dst), want)
    np.testing.assert_array_equal(rt.lookup(dst, out=np.empty_like(want)), want)


def test_parallel_equals_plain_on_a_large_batch():
    routes = benchdata.calico_route_table(blocks=2000, hosts=300, seed=1)
    rt = RouteTable.from_arrays(*routes)
    dst = np.concatenate([benchdata.destinations_in(routes.prefixes[:-1], routes.lengths[:-1], 150_000, seed=2),
                          benchdata.random_destinations(50_000, seed=3)])
    plain = rt.lookup(dst)
    np.testing.assert_array_equal(rt.lookup_parallel(dst), plain)
    np.testing.assert_array_equal(rt.lookup_parallel(dst, chunk=1000), plain)
    np.testing.assert_array_equal(rt.lookup_parallel(dst[:5001], chunk=1), plain[:5001])
    starts, hops = rt.to_ranges()
    np.testing.assert_array_equal(hops[np.searchsorted(starts, dst, side="right") - 1], plain)
    assert rt.nbytes > 0


def test_lpm_get_inside_a_user_kernel():
    """The inline probe other kernels call gives what RouteTable.lookup gives."""
    from fastpath._jit import jit
    from fastpath.tables.lpm import lpm_get

    @jit
    def hops_of(l0, nodes, leaves, hosts, dst, out):
        for j in range(dst.shape[0]):
            out[j] = lpm_get(l0, nodes, leaves, hosts, dst[j])

    routes = benchdata.calico_route_table(blocks=500, hosts=100, seed=9)
    rt = RouteTable.from_arrays(*routes)
    dst = np.concatenate([benchdata.destinations_in(routes.prefixes, routes.lengths, 5000, seed=1),
                          np.array([0, ALL_ONES], np.uint32)])
    out = np.empty_like(dst)
    hops_of(*rt.arrays, dst, out)
    np.testing.assert_array_equal(out, rt.lookup(dst))


def test_contains():
    rt = RouteTable.from_cidrs(["10.0.0.0/8"], [1])
    rt.insert("10.1.0.0/16", 2)
    assert "10.0.0.0/8" in rt and (ip("10.1.0.0"), 16) in rt and "10.0.0.0/9" not in rt
    rt.delete("10.0.0.0/8")
    assert "10.0.0.0/8" not in rt and len(rt) == 1


# --------------------------------------------------------------------------- random tables

#: Addresses prefixes cluster around, so random tables nest and collide.
ANCHORS = [0, ALL_ONES, ip("10.244.7.9"), ip("10.244.0.0"), ip("192.168.1.1"), 0x80000000, 0x7FFFFFFF,
           ip("172.16.255.0")]

lengths_st = st.one_of(st.integers(0, 32), st.sampled_from([0, 8, 15, 16, 17, 22, 23, 24, 28, 29, 31, 32]))
address_st = st.one_of(st.integers(0, ALL_ONES), st.sampled_from(ANCHORS),
                       st.sampled_from(ANCHORS).flatmap(lambda a: st.integers(0, 255).map(lambda x: a ^ x)))
route_st = st.tuples(address_st, lengths_st, st.integers(0, 20)).map(lambda r: (r[0] & mask(r[1]), r[1], r[2]))


@settings(max_examples=100)   # a few ms each: worth more examples than the profile's default
@given(st.lists(route_st, max_size=40), st.lists(address_st, max_size=30))
def test_random_tables_match_twin(routes, probes):
    rt, twin = both(routes)
    assert_same(rt, twin, probes)


@settings(max_examples=100)
@given(st.lists(route_st, max_size=25),
       st.lists(st.tuples(st.sampled_from(["insert", "delete", "delete-existing"]), route_st,
                          st.integers(0, 1000)), max_size=25),
       st.lists(address_st, max_size=20))
def test_random_inserts_and_deletes_match_twin(routes, ops, probes):
    rt, twin = both(routes)
    for step, (op, route, pick) in enumerate(ops):
        prefix, length, hop = route
        if op == "insert":
            rt.insert((prefix, length), hop)
            twin.insert((prefix, length), hop)
        else:
            present = twin.prefixes()
            if op == "delete-existing" and present:
                prefix, length, _ = present[pick % len(present)]
            if (prefix, length) in [(p, n) for p, n, _ in present]:
                rt.delete((prefix, length))
                twin.delete((prefix, length))
            else:
                with pytest.raises(FastpathError):
                    rt.delete((prefix, length))
        if step % 3 == 2:               # look up between updates too (recompiles mid-sequence)
            assert_same(rt, twin, probes)
    assert_same(rt, twin, probes)


@settings(max_examples=60)
@given(st.lists(st.tuples(address_st, st.integers(0, 26), st.integers(0, 20))
                .map(lambda r: (r[0] & mask(r[1]), r[1], r[2])), min_size=1, max_size=40),
       st.lists(address_st, max_size=30))
def test_random_short_prefix_tables_match_twin(routes, probes):
    """Prefixes no longer than /26: every first-level node can become a ply (the cluster layout)."""
    rt, twin = both(routes)
    assert_same(rt, twin, probes)


def test_plies_next_to_nodes():
    """A /24-per-node table with one /28: plies for the /24s, a node where the /28 is."""
    routes = benchdata.cluster_route_table(nodes=200, seed=4)
    sub = int(routes.prefixes[0]) + 64
    rows = list(zip(routes.prefixes.tolist(), routes.lengths.tolist(), routes.next_hops.tolist()))
    rt, twin = both(rows + [(sub, 28, 999)])
    assert rt.layout == "plies" and 0 < rt.plies < 200
    assert_same(rt, twin, [sub - 64, sub - 1, sub, sub + 15, sub + 16, sub + 64])
    assert rt.lookup(np.array([sub + 3], np.uint32))[0] == 999


def test_ply_budget_keeps_nodes(monkeypatch):
    """Past the ply budget the same table keeps its Poptrie nodes (with plies, then without), and answers the same."""
    from fastpath.tables import lpm

    routes = benchdata.cluster_route_table(nodes=300, seed=5)
    rt = RouteTable.from_arrays(*routes)
    assert rt.layout == "flat" and rt.plies > 0
    dst = benchdata.destinations_in(routes.prefixes, routes.lengths, 5000, seed=6)
    twin = NaiveRouteTable.from_arrays(*(a.tolist() for a in routes))
    layouts = []
    for budget in (rt.plies - 1, 10):           # the flat layout's shared plies no longer fit; then no plies
        monkeypatch.setattr(lpm, "PLY_BUDGET", budget)
        small = RouteTable.from_arrays(*routes)
        layouts.append(small.layout)
        np.testing.assert_array_equal(small.lookup(dst), rt.lookup(dst))
        assert_same(small, twin)
    assert layouts == ["plies", "poptrie"]


def test_benchdata_tables_match_twin():
    layouts = []
    for routes in (benchdata.cluster_route_table(nodes=200, seed=1),
                   benchdata.calico_route_table(blocks=300, hosts=100, seed=2)):
        rt = RouteTable.from_arrays(*routes)
        layouts.append(rt.layout)
        twin = NaiveRouteTable.from_arrays(*(a.tolist() for a in routes))
        pods = routes.lengths > 0
        dst = benchdata.destinations_in(routes.prefixes[pods], routes.lengths[pods], 3000, seed=3)
        got = rt.lookup(dst)
        assert got.tolist() == twin.lookup_many(dst.tolist())
        default_hop = routes.next_hops[~pods][0]
        assert not np.any(got == default_hop)          # every destination lands inside a pod range
        assert_same(rt, twin)
    assert layouts == ["flat", "flat"]   # both all plies; Calico's 100 /32s in the host table


def host_table_case(blocks: int, hosts: int, seed: int):
    routes = benchdata.calico_route_table(blocks=blocks, hosts=hosts, seed=seed)
    return list(zip(routes.prefixes.tolist(), routes.lengths.tolist(), routes.next_hops.tolist()))


@settings(max_examples=60)
@given(st.lists(st.tuples(address_st, st.integers(0, 26), st.integers(0, 20))
                .map(lambda r: (r[0] & mask(r[1]), r[1], r[2])), max_size=30),
       st.lists(st.tuples(address_st, st.integers(0, 20)), min_size=1, max_size=40),
       st.lists(address_st, max_size=20))
def test_random_host_route_tables_match_twin(routes, hosts, probes):
    """/26-or-shorter prefixes plus /32s: the flat layout with its host table, probed at every host and beside it."""
    rt, twin = both(routes + [(a, 32, h) for a, h in hosts])
    assert rt.layout == "flat" and rt.host_routes == len({a for a, _ in hosts})
    near = [a + k for a, _ in hosts for k in (-1, 0, 1) if 0 <= a + k <= ALL_ONES]
    assert_same(rt, twin, probes + near)


def test_host_routes_at_the_ends_of_the_address_space():
    rt, twin = both([(0, 32, 1), (ALL_ONES, 32, 2), (0, 0, 3), (ip("10.0.0.0"), 26, 4)])
    assert rt.layout == "flat"
    assert rt.lookup(np.array([0, 1, ALL_ONES - 1, ALL_ONES], np.uint32)).tolist() == [1, 3, 3, 2]
    assert_same(rt, twin)


def test_a_full_20_of_host_routes_and_neighbours():
    """All 4096 addresses of one /20 as /32s, and hosts in the next /20s: the big group is placed first."""
    base = ip("10.9.0.0")
    others = [base + 4096 + 7, base + 2 * 4096 + 9, base + 3 * 4096 + 1]
    rows = host_table_case(200, 0, seed=3) + [(base + k, 32, k % 7) for k in range(4096)] + [(a, 32, 8) for a in others]
    rt, twin = both(rows)
    assert rt.layout == "flat" and rt.host_routes == 4096 + 3
    assert_same(rt, twin, [base - 1, base, base + 4095, base + 4096] + others)


def test_host_table_limits_fall_back_to_nodes(monkeypatch):
    """Too many hosts for the budget, or too dense for the displacements: the trie keeps them, same answers."""
    from fastpath.tables import lpm

    rows = host_table_case(300, 120, seed=4)
    flat, twin = both(rows)
    assert flat.layout == "flat" and flat.host_routes == 120
    monkeypatch.setattr(lpm, "HOST_BUDGET", 100)
    rt, _ = both(rows)
    assert rt.layout != "flat" and rt.host_routes == 0
    assert_same(rt, twin)
    monkeypatch.undo()
    # two whole neighbouring /20s of hosts: 16384 slots hold them (a 4096-slot block each); 8192 may not be used
    dense = [(ip("10.1.0.0") + k, 32, 1) for k in range(4096)] + [(ip("10.1.16.0") + k, 32, 2) for k in range(4096)]
    rt, twin = both(dense + [(0, 0, 9)])
    assert rt.layout == "flat" and rt.host_routes == 8192
    assert_same(rt, twin, [ip("10.1.0.0") + 5, ip("10.1.16.0") + 4095])
    monkeypatch.setattr(lpm, "_HOST_SLOTS_MAX", 8192)
    rt, twin = both(dense + [(0, 0, 9)])
    assert rt.layout != "flat"
    assert_same(rt, twin, [ip("10.1.0.0") + 5, ip("10.1.16.0") + 4095])


def test_host_placement_reports_a_group_without_room():
    """Two full /20s cannot share 4096 slots under any displacement: placement says so."""
    from fastpath.tables import lpm

    addr = np.concatenate([ip("10.1.0.0") + np.arange(4096), ip("10.3.0.0") + np.arange(4096)]).astype(np.uint32)
    hop = np.zeros(addr.size, np.uint32)
    l0 = np.zeros(1 << 20, np.uint32)
    slots = np.empty(4096, np.uint64)
    assert not lpm._place_hosts(addr, hop, np.array([0, 4096, 8192], np.int64), l0, slots)
    assert lpm._place_hosts(addr[:4096], hop[:4096], np.array([0, 4096], np.int64), l0, slots)


def test_host_route_updates_in_a_flat_table():
    """Deleting a /32 falls back to its block; a new /32 lands in the host table."""
    rows = host_table_case(300, 40, seed=5)
    rt, twin = both(rows)
    a, n, h = next(r for r in rows if r[1] == 32)
    rt.delete((a, 32))
    twin.delete((a, 32))
    assert rt.layout == "flat" and rt.host_routes == 39
    assert_same(rt, twin, [a])
    block = next(r for r in rows if r[1] == 26)
    rt.insert((block[0] + 9, 32), 4242)
    twin.insert((block[0] + 9, 32), 4242)
    assert rt.host_routes == 40 and rt.lookup(np.array([block[0] + 9], np.uint32))[0] == 4242
    assert_same(rt, twin, [block[0] + 8, block[0] + 10])


# --------------------------------------------------------------------------- pfx2as reader

def test_read_pfx2as_small_file(tmp_path):
    path = tmp_path / "small.pfx2as"
    path.write_text("1.0.0.0\t24\t15169\n\n1.0.4.0\t22\t56203\n37.1.241.0\t24\t31167,65623\n"
                    "0.0.0.0\t0\t3257_4436\n1.0.6.0\t24\t15169\n9.9.9.9\t32\t{19281,19282}\n")
    prefixes, lengths, hops, asns = read_pfx2as(path)
    assert prefixes.dtype == np.uint32 and lengths.dtype == np.uint8 and hops.dtype == np.uint32
    assert [dotted(p) for p in prefixes] == ["1.0.0.0", "1.0.4.0", "37.1.241.0", "0.0.0.0", "1.0.6.0", "9.9.9.9"]
    assert lengths.tolist() == [24, 22, 24, 0, 24, 32]
    assert [asns[h] for h in hops] == ["15169", "56203", "31167,65623", "3257_4436", "15169", "{19281,19282}"]
    assert len(asns) == 5


def test_read_pfx2as_gzip_and_empty(tmp_path):
    import gzip
    path = tmp_path / "t.pfx2as.gz"
    with gzip.open(path, "wt") as f:
        f.write("10.0.0.0\t8\t1\n")
    p, n, h, asns = read_pfx2as(path)
    assert (p.tolist(), n.tolist(), h.tolist(), asns) == ([ip("10.0.0.0")], [8], [0], ["1"])
    empty = tmp_path / "empty.pfx2as"
    empty.write_text("")
    assert [len(x) for x in read_pfx2as(empty)] == [0, 0, 0, 0]


@pytest.mark.parametrize("line, needle", [
    ("1.0.4.0\t24", "expected 3 tab-separated fields"),
    ("1.0.4.0\t24\t1\t2", "expected 3 tab-separated fields"),
    ("1.0.4.0 24 1", "expected 3 tab-separated fields"),
    ("1.0.4\t24\t1", "'1.0.4' is not an IPv4 address"),
    ("1.0.4.256\t24\t1", "'1.0.4.256' is not an IPv4 address"),
    ("1.0.4.0\t33\t1", "prefix length '33'"),
    ("1.0.4.0\tx\t1", "prefix length 'x'"),
    ("1.0.4.0\t-1\t1", "prefix length '-1'"),
    ("1.0.4.1\t24\t1", "1.0.4.1/24 has host bits set"),
    ("1.0.4.0\t24\tAS15169", "origin AS 'AS15169'"),
    ("1.0.4.0\t24\t", "origin AS ''"),
    ("2001:db8::\t32\t1", "IPv6"),
])
def test_read_pfx2as_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "bad.pfx2as"
    path.write_text(f"1.0.0.0\t24\t15169\n\n1.0.1.0\t24\t15169\n{line}\n1.0.5.0\t24\t1\n")
    with pytest.raises(FastpathError) as err:
        read_pfx2as(path)
    message = str(err.value)
    assert f"{path}: line 4" in message and needle in message and "\n" not in message


def test_read_pfx2as_missing_file(tmp_path):
    with pytest.raises(FastpathError, match="no such pfx2as file"):
        read_pfx2as(tmp_path / "nope.pfx2as.gz")


# --------------------------------------------------------------------------- the real table

def pytricia_lookup(tree, addresses: np.ndarray) -> np.ndarray:
    get = tree.get
    return np.fromiter((get(a, MISS) for a in addresses.tolist()), dtype=np.uint32, count=addresses.size)


@pytest.fixture(scope="module")
def routeviews(routeviews_v4_path):
    prefixes, lengths, hops, asns = read_pfx2as(routeviews_v4_path)
    return prefixes, lengths, hops, asns


def test_routeviews_file_reads_whole(routeviews):
    prefixes, lengths, hops, asns = routeviews
    assert prefixes.size == 615_842 and len(asns) == 53_975
    assert int(lengths.min()) >= 8 and int(lengths.max()) <= 32
    assert asns[hops[0]] == "15169" and dotted(prefixes[0]) == "1.0.0.0" and lengths[0] == 24
    assert "3257_4436" in asns and "31167,65623" in asns


def test_routeviews_ipv6_file_is_refused(routeviews_v4_path):
    v6 = routeviews_v4_path.with_name("routeviews-rv6-20160202-1200.pfx2as.gz")
    if not v6.exists():
        pytest.skip(f"{v6} not present")
    with pytest.raises(FastpathError, match=r"line 1: '2001::' is an IPv6 prefix"):
        read_pfx2as(v6)


def test_routeviews_table_matches_pytricia(routeviews):
    """Every prefix edge (±1) and 1M random addresses, before and after 1,000 deletes: 0 disagreements."""
    pytricia = pytest.importorskip("pytricia")
    prefixes, lengths, hops, _ = routeviews
    rt = RouteTable.from_arrays(prefixes, lengths, hops)
    assert rt.plies == 0                 # an Internet table keeps the compressed nodes
    tree = pytricia.PyTricia(32)
    insert = tree.insert
    for p, n, h in zip(prefixes.tolist(), lengths.tolist(), hops.tolist()):
        insert(p, n, h)
    assert len(rt) == len(tree) == prefixes.size
    edges = probe_points(prefixes, lengths)
    randoms = benchdata.random_destinations(1_000_000, seed=2016)
    rng = np.random.default_rng(7)
    gone = rng.choice(prefixes.size, size=1000, replace=False)

    for stage in ("before deletes", "after deletes"):
        for name, pts in (("prefix edges", edges), ("random addresses", randoms)):
            want = pytricia_lookup(tree, pts)
            got = rt.lookup(pts)
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, (f"{stage}, {name}: {bad.size} disagreements, first "
                                   f"{dotted(pts[bad[0]])}: RouteTable {got[bad[0]]}, pytricia {want[bad[0]]}")
            np.testing.assert_array_equal(rt.lookup_parallel(pts), want)
            starts, range_hops = rt.to_ranges()
            np.testing.assert_array_equal(range_hops[np.searchsorted(starts, pts, side="right") - 1], want)
        if stage == "before deletes":
            for i in gone.tolist():
                rt.delete((int(prefixes[i]), int(lengths[i])))
                tree.delete(f"{dotted(prefixes[i])}/{lengths[i]}")
            assert len(rt) == len(tree) == prefixes.size - 1000
            # the deleted prefixes' edges are where fallbacks happen: probe them explicitly
            edges = np.union1d(edges, probe_points(prefixes[gone], lengths[gone]))
