"""The small shared pieces the kernels build on: bit intrinsics, stack scratch and the one time model."""
from __future__ import annotations

import math

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from fastpath._jit import bit_length64, popcount64, stack_empty
from fastpath.lifetimes import MAX_DURATION, lifetimes_ns


@numba.njit
def _bits(xs, out_len, out_pop):
    for i in range(xs.shape[0]):
        out_len[i] = bit_length64(xs[i])
        out_pop[i] = popcount64(xs[i])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=40))
def test_bit_intrinsics_match_python(values):
    xs = np.array(values + [0, 1, (1 << 63), (1 << 64) - 1], dtype=np.uint64)
    n, p = np.empty(xs.size, np.int64), np.empty(xs.size, np.uint64)
    _bits(xs, n, p)
    assert n.tolist() == [int(v).bit_length() for v in xs.tolist()]
    assert p.tolist() == [bin(int(v)).count("1") for v in xs.tolist()]


@numba.njit(_nrt=False)
def _running_max(xs, out):
    # two stack scratch arrays of different types in a kernel without reference counting: each keeps
    # what is written to it, apart from the other and from the arguments
    best = stack_empty(8, np.int64)
    seen = stack_empty(8, np.uint8)
    for k in range(8):
        best[k] = -(1 << 62)
        seen[k] = 0
    for i in range(xs.shape[0]):
        k = i % 8
        if xs[i] > best[k]:
            best[k] = xs[i]
        seen[k] = 1
    for k in range(8):
        out[k] = best[k] if seen[k] else -1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), max_size=60))
def test_stack_scratch_holds_its_values(values):
    xs = np.array(values, dtype=np.int64)
    out = np.empty(8, np.int64)
    _running_max(xs, out)
    assert out.tolist() == [max(values[k::8]) if values[k::8] else -1 for k in range(8)]


def test_stack_scratch_needs_a_constant_size():
    @numba.njit(_nrt=False)
    def sized(n):
        return stack_empty(n, np.int64).shape[0]

    with pytest.raises(numba.core.errors.TypingError):
        sized(8)


def _one(proto: int, d: float | None, default_s: float) -> int:
    """The rule as written in fastpath.lifetimes, one connection at a time."""
    if d is None or math.isnan(d):
        return 0 if proto == 17 else round(default_s * 1e9)
    return int(min(d, MAX_DURATION) * 1e9 + 0.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 6, 17, 132]),
                          st.one_of(st.none(), st.just(float("nan")), st.floats(0, 1e12, allow_nan=False))),
                min_size=1, max_size=30),
       st.sampled_from([0.5, 30.0, 3600.0]))
def test_lifetimes_follow_the_rule(rows, default_s):
    proto = np.array([p for p, _ in rows], np.uint8)
    dur = np.array([np.nan if d is None else d for _, d in rows], np.float64)
    got = lifetimes_ns(proto, dur, default_s)
    assert got.dtype == np.int64
    assert got.tolist() == [_one(p, d, default_s) for p, d in rows]
    # without a duration column every row takes its protocol's default
    assert lifetimes_ns(proto, None, default_s).tolist() == [_one(p, None, default_s) for p, _ in rows]
