"""Maglev lookup tables (Eisenbud et al., NSDI 2016, §3.4), as Cilium and Katran build them.

Each backend ``i`` of a set has a preference list over the ``M`` table slots (M
prime), the permutation ``(offset_i + j * skip_i) mod M`` with

* ``offset_i = h1(name_i) mod M``,
* ``skip_i = h2(name_i) mod (M - 1) + 1``,

and the backends take turns claiming their next still-free preferred slot until
the table is full. Each backend ends up with ``M / N`` slots give or take one,
and removing a backend moves little more than its own slots (the paper's
Figure 11), which is why Maglev suits backends that churn.

A backend's name is its endpoint ``IP:port``, hashed as its packed 48-bit value
``ip << 16 | port`` (a one-to-one encoding of the text) by ``mix64`` with two
seeded keys for ``h1`` and ``h2``. Table entries are positions in the set's
backend list, in the narrowest integer that holds them (``uint8`` up to 256
backends), so 10,000 tables of 16381 slots take 164 MB. Tables are built in
parallel, one per distinct backend list.
"""
from __future__ import annotations

import numba
import numpy as np

from .._jit import jit, pjit
from ..errors import FastpathError
from .balancers import SALT_OFFSET, SALT_SKIP, mix64, seed_key

#: Cilium's default table size (``--bpf-lb-maglev-table-size``); Katran uses 65537.
DEFAULT_M = 16381
#: Table sizes Cilium accepts (primes); any prime is accepted here.
CILIUM_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)


def is_prime(n: int) -> bool:
    """Whether ``n`` is prime (trial division; table sizes are small)."""
    n = int(n)
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def check_size(m: int) -> int:
    """Validate a Maglev table size: a prime between 3 and 2^31."""
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 3 or m >= 2**31 or not is_prime(int(m)):
        raise FastpathError(f"maglev_size {m!r}: must be a prime number (Cilium uses one of {CILIUM_SIZES})")
    return int(m)


def backend_names(ip: np.ndarray, port: np.ndarray) -> np.ndarray:
    """Backends' names ``IP:port`` packed as ``ip << 16 | port`` (uint64)."""
    return (np.asarray(ip, dtype=np.uint64) << np.uint64(16)) | np.asarray(port, dtype=np.uint64)


@pjit
def _fill(tab_off, names, k_offset, k_skip, out):
    """Populate ``out[t]`` for each backend list ``names[tab_off[t]:tab_off[t + 1]]``."""
    for t in numba.prange(tab_off.shape[0] - 1):
        _fill_one(t, tab_off, names, k_offset, k_skip, out)


@jit
def _fill_few(tab_off, names, k_offset, k_skip, out):
    """:func:`_fill` on one thread (a few tables: waking the pool costs more than the work)."""
    for t in range(tab_off.shape[0] - 1):
        _fill_one(t, tab_off, names, k_offset, k_skip, out)


@jit(inline="always")
def _fill_one(t, tab_off, names, k_offset, k_skip, out):
    """Populate ``out[t]``: Maglev's permutation fill over list ``t``."""
    m = out.shape[1]
    mm = np.uint64(m)
    if True:
        a = tab_off[t]
        n = tab_off[t + 1] - a
        cur = np.empty(n, dtype=np.int64)      # current slot of each backend's permutation
        skip = np.empty(n, dtype=np.int64)
        for j in range(n):
            cur[j] = np.int64(mix64(k_offset ^ names[a + j]) % mm)
            skip[j] = np.int64(mix64(k_skip ^ names[a + j]) % (mm - np.uint64(1))) + 1
        entry = np.full(m, -1, dtype=np.int64)
        filled = 0
        while filled < m:
            for j in range(n):
                c = cur[j]
                while entry[c] >= 0:
                    c += skip[j]
                    if c >= m:
                        c -= m
                entry[c] = j
                c += skip[j]
                cur[j] = c - m if c >= m else c
                filled += 1
                if filled == m:
                    break
        for c in range(m):
            out[t, c] = entry[c]


def build_tables(tab_off: np.ndarray, names: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Maglev tables for several backend lists at once.

    Parameters
    ----------
    tab_off
        int64[T + 1], CSR offsets of each list into ``names``.
    names
        uint64 backend names (:func:`backend_names`), in each list's order.
    m
        Table size, a prime larger than every list.
    seed
        Seed of the name hashes.

    Returns
    -------
    ndarray
        ``[T, m]`` positions into each list: uint8 while lists hold at most 256
        backends (Kubernetes tests 250 a service), else uint16, else int32.
    """
    m = check_size(m)
    tab_off = np.ascontiguousarray(tab_off, dtype=np.int64)
    names = np.ascontiguousarray(names, dtype=np.uint64)
    sizes = np.diff(tab_off)
    if sizes.size and sizes.min() < 1:
        raise FastpathError("maglev: every backend list needs at least one backend")
    biggest = int(sizes.max()) if sizes.size else 0
    if biggest > m:
        raise FastpathError(f"maglev_size {m} is smaller than a service's {biggest} backends: "
                            f"use a prime above 100 x {biggest}")
    dtype = np.uint8 if biggest <= 256 else np.uint16 if biggest <= 65536 else np.int32
    out = np.empty((sizes.size, m), dtype=dtype)
    if sizes.size:
        fill = _fill if sizes.size > 2 else _fill_few
        fill(tab_off, names, np.uint64(seed_key(seed, SALT_OFFSET)), np.uint64(seed_key(seed, SALT_SKIP)), out)
    return out


def maglev_table(ip: np.ndarray, port: np.ndarray, m: int = DEFAULT_M, seed: int = 0) -> np.ndarray:
    """The Maglev table of one backend list (``ip``/``port`` in list order)."""
    names = backend_names(ip, port)
    return build_tables(np.array([0, names.size], np.int64), names, m, seed)[0]
