"""Maglev tables against the paper's pseudocode (tests/naive/services.py), balance and churn."""
from __future__ import annotations

import numpy as np
import pytest

from fastpath.errors import FastpathError
from fastpath.tables.maglev import backend_names, build_tables, check_size, is_prime, maglev_table
from naive.services import maglev_populate


def backends(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ip = rng.choice(np.arange(0x0AF40000, 0x0AF4FFFF, dtype=np.uint32), n, replace=False)
    return ip, rng.integers(1, 65535, n).astype(np.uint16)


def test_is_prime_and_size_check():
    primes = [p for p in range(200) if is_prime(p)]
    assert primes[:10] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29] and len(primes) == 46
    assert is_prime(16381) and is_prime(65537) and not is_prime(16383) and not is_prime(1)
    for bad in (1000, 2, 1, -7, 16383, 2**31 + 11, True, 16381.0):
        with pytest.raises(FastpathError, match="prime"):
            check_size(bad)
    assert check_size(np.int64(251)) == 251


@pytest.mark.parametrize("m,n", [(7, 1), (7, 7), (13, 5), (251, 3), (251, 40), (1021, 9), (16381, 12)])
def test_matches_paper_pseudocode(m, n):
    rng = np.random.default_rng(m * 100 + n)
    ip, port = backends(n, rng)
    for seed in (0, 5):
        got = maglev_table(ip, port, m, seed)
        want = maglev_populate(backend_names(ip, port).tolist(), m, seed)
        assert got.tolist() == want


def test_many_tables_at_once_equal_one_by_one():
    rng = np.random.default_rng(1)
    lists = [backends(int(k), rng) for k in rng.integers(1, 20, 30)]
    names = [backend_names(ip, port) for ip, port in lists]
    off = np.concatenate(([0], np.cumsum([len(x) for x in names])))
    tables = build_tables(off, np.concatenate(names), 509, 3)
    assert tables.shape == (30, 509) and tables.dtype == np.uint8
    for t, (ip, port) in zip(tables, lists):
        assert np.array_equal(t, maglev_table(ip, port, 509, 3))


def test_balanced_within_one_percent_when_m_exceeds_100n():
    rng = np.random.default_rng(2)
    for n, m in ((10, 1021), (50, 16381), (163, 16381)):
        t = maglev_table(*backends(n, rng), m)
        counts = np.bincount(t, minlength=n)
        assert counts.max() - counts.min() <= 1          # every backend claims one slot a turn
        assert counts.max() / counts.mean() <= 1.01


def test_few_slots_move_when_a_backend_goes():
    rng = np.random.default_rng(3)
    for n in (5, 10, 40):
        ip, port = backends(n, rng)
        before = maglev_table(ip, port, 16381)
        for gone in (0, n // 2, n - 1):
            keep = np.arange(n) != gone
            after = maglev_table(ip[keep], port[keep], 16381)
            # compare backends, not positions (positions after `gone` shift down by one)
            old = backend_names(ip, port)[before]
            new = backend_names(ip[keep], port[keep])[after]
            moved = (old != new).mean()
            forced = (before == gone).mean()                # slots of the removed backend must move
            assert forced <= moved <= forced + 0.5 / n + 0.02, (n, moved, forced)


def test_hash_mod_n_moves_most_flows():
    """The contrast Maglev exists for: a modulo over the list moves most flows."""
    n = 10
    h = np.random.default_rng(4).integers(0, 2**32, 50000)
    before = h % n
    after = h % (n - 1)
    after = np.where(after >= 3, after + 1, after)   # backend 3 removed; positions past it shift
    assert (before != after).mean() > 0.8


def test_errors():
    ip, port = backends(12, np.random.default_rng(5))
    with pytest.raises(FastpathError, match="smaller than"):
        maglev_table(ip, port, 11)
    with pytest.raises(FastpathError, match="at least one backend"):
        build_tables(np.array([0, 0]), np.zeros(0, np.uint64), 7, 0)
    assert build_tables(np.array([0]), np.zeros(0, np.uint64), 7, 0).shape == (0, 7)
