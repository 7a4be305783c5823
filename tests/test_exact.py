"""Exact-match tables against a dict: ExactTable (16-byte slots) and AddressTable (8-byte slots)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.errors import FastpathError
from fastpath.tables.exact import EMPTY, AddressTable, ExactTable

ADDR = st.integers(0, 0xFFFFFFFE)
#: Addresses that collide in small tables: few distinct low bits, and the edges.
CROWDED = st.one_of(st.integers(0, 40), st.sampled_from([0, 1, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000]),
                    st.integers(0, 40).map(lambda x: x << 24))


def twin(keys, values) -> dict[int, int]:
    """The slow twin: a dict, where the last value given for a key wins."""
    out: dict[int, int] = {}
    for k, v in zip(keys, values):
        out[int(k)] = int(v)
    return out


def compare(cls, key_type, pairs, probes):
    """Build ``cls`` from ``pairs`` and check every probe and the whole content against the dict twin."""
    keys = np.array([k for k, _ in pairs], dtype=key_type)
    values = np.array([v for _, v in pairs], dtype=np.int64)
    table = cls.build(keys, values)
    want = twin(keys, values)
    assert len(table) == len(want)
    queries = np.array(list(want) + probes, dtype=key_type)
    assert table.lookup(queries, default=-7).tolist() == [want.get(int(q), -7) for q in queries]
    for q in queries[:20]:
        assert table.get(int(q)) == want.get(int(q), -1)
    used = table.keys != EMPTY
    assert dict(zip(table.keys[used].tolist(), table.values[used].tolist())) == want
    return table


@given(st.lists(st.tuples(st.one_of(ADDR, CROWDED), st.integers(0, 0xFFFFFFFE)), max_size=300),
       st.lists(st.one_of(ADDR, CROWDED, st.just(0xFFFFFFFF)), max_size=100))
def test_address_table_matches_a_dict(pairs, probes):
    table = compare(AddressTable, np.uint32, pairs, probes)
    assert table.nbytes == 8 * table.slots.size


@given(st.lists(st.tuples(st.integers(0, 2**64 - 2), st.integers(-(2**62), 2**62)), max_size=300),
       st.lists(st.integers(0, 2**64 - 1), max_size=100))
def test_exact_table_matches_a_dict(pairs, probes):
    table = compare(ExactTable, np.uint64, pairs, probes)
    assert table.nbytes == 16 * (table.slots.size // 2)


def test_half_full_at_most():
    for n in (0, 1, 4, 5, 1000, 150_000):
        keys = np.arange(n, dtype=np.uint32) * np.uint32(7919)
        t = AddressTable.build(keys, np.arange(n))
        assert t.slots.size >= 2 * n and t.slots.size >= 8
        assert (t.slots.size & (t.slots.size - 1)) == 0


def test_reserved_values_are_refused():
    with pytest.raises(FastpathError, match="255.255.255.255"):
        AddressTable.build(np.array([0xFFFFFFFF], np.uint32), np.array([1]))
    with pytest.raises(FastpathError, match="values"):
        AddressTable.build(np.array([1], np.uint32), np.array([-1]))
    with pytest.raises(FastpathError, match="reserved"):
        ExactTable.build(np.array([2**64 - 1], np.uint64), np.array([1]))
    with pytest.raises(FastpathError, match="same length"):
        AddressTable.build(np.array([1, 2], np.uint32), np.array([1]))
