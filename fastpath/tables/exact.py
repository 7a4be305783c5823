"""Exact-match tables: open addressing with linear probing on uint64 keys.

One structure serves every exact lookup of the data plane: pods by IP, the
neighbour table ((node, IP) -> MAC), the bridge FDBs ((node, MAC) -> port),
listening ports ((pod, proto, port)) and service frontends ((IP, proto, port)).
Keys are packed into one uint64 by the caller (see :func:`pack2`/:func:`pack3`).

The table is one flat uint64 array of (key, value) slot pairs, a power of two
of slots at most half full (a miss probes ~2.5 slots), so key and value share a cache line and
a hit usually costs one memory read. The kernel-side probe :func:`ht_find` is
inlined into other kernels; :func:`ht_home` + :func:`ht_probe` split it so a
kernel can prefetch a whole group's slots before probing them.
:class:`ExactTable` is the Python-side wrapper.

:class:`AddressTable` is the same scheme for the one table the data path reads
twice per flow, pods by IPv4 address: key and a 32-bit value share one 8-byte
slot (``ip << 32 | value``), which halves the table, so more of it stays in cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._jit import jit, pjit, read_only
from ..errors import FastpathError
import numba

#: Marks an empty slot (no real key may take this value).
EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
#: Fibonacci hashing multiplier (2^64 / golden ratio).
_MULT = np.uint64(0x9E3779B97F4A7C15)


@jit
def ht_slot(key, mask):
    """Home slot of ``key`` in a table of ``mask + 1`` slots."""
    h = key * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@jit(inline="always")
def ht_home(slots, key):
    """Home slot of ``key`` in an interleaved table; prefetch ``slots[2 * home]`` ahead of :func:`ht_probe`."""
    return ht_slot(key, (slots.shape[0] >> 1) - 1)


@jit(inline="always")
def ht_probe(slots, key, home, default):
    """:func:`ht_find` starting from a home slot computed (and prefetched) before."""
    mask = (slots.shape[0] >> 1) - 1
    i = home
    while True:
        k = slots[2 * i]
        if k == np.uint64(0xFFFFFFFFFFFFFFFF):       # first: the reserved key itself is never found
            return np.int64(default)
        if k == key:
            return np.int64(slots[2 * i + 1])
        i = (i + 1) & mask


@jit(inline="always")
def ht_find(slots, key, default):
    """Value under ``key`` in an interleaved table (``slots[2i]`` key, ``slots[2i+1]`` value).

    Key and value share a cache line, so a hit costs one memory read.
    Inline-callable from other kernels; returns int64 (``default`` where absent).
    """
    return ht_probe(slots, key, ht_home(slots, key), default)


@jit
def ht_place(keys, key):
    """Slot of ``key`` in a key array (``keys.shape[0]`` a power of two), or the empty slot where it would go."""
    mask = keys.shape[0] - 1
    i = ht_slot(key, mask)
    while True:
        k = keys[i]
        if k == key or k == np.uint64(0xFFFFFFFFFFFFFFFF):
            return i
        i = (i + 1) & mask


@jit
def _ht_build(in_keys, in_values, keys, values):
    """Insert all pairs; a repeated key keeps the last value. Returns the distinct count."""
    count = 0
    for j in range(in_keys.shape[0]):
        key = in_keys[j]
        i = ht_place(keys, key)
        if keys[i] != key:
            keys[i] = key
            count += 1
        values[i] = in_values[j]
    return count


@pjit
def _ht_lookup(slots, query, default, out):
    for j in numba.prange(query.shape[0]):
        out[j] = ht_find(slots, query[j], default)


@jit
def _ht_lookup_few(slots, query, default, out):
    for j in range(query.shape[0]):
        out[j] = ht_find(slots, query[j], default)


# --------------------------------------------------------------------------- address table

@jit(inline="always")
def at_home(slots, ip):
    """Home slot of IPv4 ``ip`` in an :class:`AddressTable`; prefetch ``slots[home]`` before :func:`at_probe`."""
    return ht_slot(np.uint64(ip), slots.shape[0] - 1)


@jit(inline="always")
def at_probe(slots, ip, home, default):
    """Value under IPv4 ``ip`` (int64), probing from ``home``; ``default`` where absent."""
    mask = slots.shape[0] - 1
    want = np.uint64(ip)
    i = home
    while True:
        s = slots[i]
        if s == np.uint64(0xFFFFFFFFFFFFFFFF):
            return np.int64(default)
        if (s >> np.uint64(32)) == want:
            return np.int64(s & np.uint64(0xFFFFFFFF))
        i = (i + 1) & mask


@jit(inline="always")
def at_find(slots, ip, default):
    """Value under IPv4 ``ip`` in an :class:`AddressTable` (inline-callable)."""
    return at_probe(slots, ip, at_home(slots, ip), default)


@jit
def _at_build(ips, values, slots):
    """Insert all pairs; a repeated address keeps the last value. Returns the distinct count."""
    mask = slots.shape[0] - 1
    count = 0
    for j in range(ips.shape[0]):
        key = np.uint64(ips[j])
        entry = (key << np.uint64(32)) | np.uint64(values[j])
        i = ht_slot(key, mask)
        while True:
            s = slots[i]
            if s == np.uint64(0xFFFFFFFFFFFFFFFF):
                slots[i] = entry
                count += 1
                break
            if (s >> np.uint64(32)) == key:
                slots[i] = entry
                break
            i = (i + 1) & mask
    return count


@jit
def at_set(slots, ip, value):
    """Insert or overwrite ``ip -> value`` in place; returns 1 when ``ip`` is new (the caller keeps room)."""
    mask = slots.shape[0] - 1
    key = np.uint64(ip)
    entry = (key << np.uint64(32)) | np.uint64(value)
    i = ht_slot(key, mask)
    while True:
        s = slots[i]
        if s == np.uint64(0xFFFFFFFFFFFFFFFF):
            slots[i] = entry
            return 1
        if (s >> np.uint64(32)) == key:
            slots[i] = entry
            return 0
        i = (i + 1) & mask


@jit
def at_remove(slots, ip):
    """Delete ``ip`` in place (backward-shift deletion: no tombstones); returns 1 when it was there."""
    mask = slots.shape[0] - 1
    key = np.uint64(ip)
    i = ht_slot(key, mask)
    while True:
        s = slots[i]
        if s == np.uint64(0xFFFFFFFFFFFFFFFF):
            return 0
        if (s >> np.uint64(32)) == key:
            break
        i = (i + 1) & mask
    j = i
    while True:                    # pull back every later entry of the run that may sit at i
        j = (j + 1) & mask
        s = slots[j]
        if s == np.uint64(0xFFFFFFFFFFFFFFFF):
            break
        k = ht_slot(s >> np.uint64(32), mask)
        stays = (i < k <= j) if i <= j else (i < k or k <= j)
        if not stays:
            slots[i] = s
            i = j
    slots[i] = np.uint64(0xFFFFFFFFFFFFFFFF)
    return 1


@pjit
def _at_lookup(slots, query, default, out):
    for j in numba.prange(query.shape[0]):
        out[j] = at_find(slots, query[j], default)


@jit
def _at_lookup_few(slots, query, default, out):
    for j in range(query.shape[0]):
        out[j] = at_find(slots, query[j], default)


#: Below this many keys a batch lookup runs on one thread: waking the pool costs more.
FEW = 4096


def _capacity(n: int, load: float) -> int:
    """Slots for ``n`` keys: a power of two (at least 8), filled to at most ``load``."""
    cap = 8
    while cap * load < max(1, n):
        cap *= 2
    return cap


class _SlotTable:
    """What both tables share: batch and single lookups, size, bytes."""

    # set by each table: key dtype, parallel lookup kernel (slots, query, default, out), its
    # one-thread form for a few keys, one-key finder (slots, key, default)
    _key_type: type
    _batch = None
    _few = None
    _one = None

    def lookup(self, query: np.ndarray, default: int = -1, out: np.ndarray | None = None) -> np.ndarray:
        """Values for a batch of keys (``default`` where absent)."""
        q = read_only(np.ascontiguousarray(query, dtype=self._key_type))   # one specialization, whoever asks
        if out is None:
            out = np.empty(q.shape[0], dtype=np.int64)
        (self._few if q.shape[0] < FEW else self._batch)(self.slots, q, np.int64(default), out)
        return out

    def get(self, key: int, default: int = -1) -> int:
        """One key's value (Python side; for explain and tests)."""
        return int(self._one(self.slots, self._key_type(key), np.int64(default)))

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes


@dataclass(frozen=True)
class AddressTable(_SlotTable):
    """An exact-match table from IPv4 addresses to values in ``0 .. 2^32 - 2``, 8 bytes a slot.

    Build with :meth:`build`; kernels probe ``slots`` with :func:`at_find`
    (or :func:`at_home` + prefetch + :func:`at_probe`).
    """

    slots: np.ndarray   #: uint64[capacity]: ``ip << 32 | value``, all ones where free
    size: int           #: number of distinct addresses
    _key_type = np.uint32
    _batch = staticmethod(_at_lookup)
    _few = staticmethod(_at_lookup_few)
    _one = staticmethod(at_find)

    @classmethod
    def build(cls, ips: np.ndarray, values: np.ndarray, load: float = 0.5) -> "AddressTable":
        """Build from parallel arrays; a repeated address keeps its last value."""
        k = np.ascontiguousarray(ips, dtype=np.uint64)
        v = np.ascontiguousarray(values, dtype=np.int64)
        if k.shape != v.shape or k.ndim != 1:
            raise FastpathError(f"address table: addresses {k.shape} and values {v.shape} must be 1-D "
                                "and the same length")
        if k.size and (k.max() >= 0xFFFFFFFF or v.min() < 0 or v.max() >= 0xFFFFFFFF):
            raise FastpathError("address table: addresses must lie in 0..2^32-2 (255.255.255.255 is the "
                                "empty mark) and values in 0..2^32-2")
        slots = np.full(_capacity(k.size, load), EMPTY, dtype=np.uint64)
        n = _at_build(k, v, slots)
        return cls(slots, int(n))

    def updated(self, remove=(), add=()) -> "AddressTable":
        """The table with addresses ``remove`` deleted and ``(ip, value)`` pairs ``add`` set, in place
        (a new table, sharing nothing, when it must grow past half full)."""
        slots, size = self.slots, self.size
        for ip in remove:
            size -= at_remove(slots, np.uint32(ip))
        add = list(add)
        if 2 * (size + len(add)) > slots.shape[0]:
            live = slots[slots != EMPTY]
            ips = np.concatenate([live >> np.uint64(32), np.array([a for a, _ in add], np.uint64)])
            vals = np.concatenate([(live & np.uint64(0xFFFFFFFF)).astype(np.int64),
                                   np.array([v for _, v in add], np.int64)])
            return AddressTable.build(ips, vals)
        for ip, value in add:
            size += at_set(slots, np.uint32(ip), np.int64(value))
        return AddressTable(slots, size)

    @property
    def keys(self) -> np.ndarray:
        """Addresses by slot (EMPTY where free)."""
        return np.where(self.slots == EMPTY, EMPTY, self.slots >> np.uint64(32))

    @property
    def values(self) -> np.ndarray:
        """Values by slot (int64; meaningless where free)."""
        return (self.slots & np.uint64(0xFFFFFFFF)).astype(np.int64)


# --------------------------------------------------------------------------- key packing

@jit
def pack2(hi, lo):
    """Pack (hi, lo) into one key: ``hi << 32 | lo`` (lo must fit 32 bits)."""
    return (np.uint64(hi) << np.uint64(32)) | np.uint64(lo)


@jit
def pack3(a, proto, port):
    """Pack (a 32-bit value, an 8-bit protocol, a 16-bit port) into one key."""
    return (np.uint64(a) << np.uint64(24)) | (np.uint64(proto) << np.uint64(16)) | np.uint64(port)


def pack2_np(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Vectorized :func:`pack2`."""
    return (np.asarray(hi, dtype=np.uint64) << np.uint64(32)) | np.asarray(lo, dtype=np.uint64)


def pack3_np(a: np.ndarray, proto: np.ndarray, port: np.ndarray) -> np.ndarray:
    """Vectorized :func:`pack3`."""
    return ((np.asarray(a, dtype=np.uint64) << np.uint64(24))
            | (np.asarray(proto, dtype=np.uint64) << np.uint64(16))
            | np.asarray(port, dtype=np.uint64))


@dataclass(frozen=True)
class ExactTable(_SlotTable):
    """An exact-match table from uint64 keys to int64 values.

    Build with :meth:`build`; look up a batch with :meth:`lookup`, or pass
    ``slots`` to a kernel that calls :func:`ht_find`.
    """

    slots: np.ndarray   #: uint64[2 * capacity]: key (EMPTY where free), value (int64 bits), interleaved
    size: int           #: number of distinct keys
    _key_type = np.uint64
    _batch = staticmethod(_ht_lookup)
    _few = staticmethod(_ht_lookup_few)
    _one = staticmethod(ht_find)

    @property
    def keys(self) -> np.ndarray:
        """Keys by slot (a view; EMPTY where free)."""
        return self.slots[0::2]

    @property
    def values(self) -> np.ndarray:
        """Values by slot (a view, int64)."""
        return self.slots[1::2].view(np.int64)

    @classmethod
    def build(cls, keys: np.ndarray, values: np.ndarray, load: float = 0.5) -> "ExactTable":
        """Build from parallel arrays; a repeated key keeps its last value."""
        k = np.ascontiguousarray(keys, dtype=np.uint64)
        v = np.ascontiguousarray(values, dtype=np.int64)
        if k.shape != v.shape or k.ndim != 1:
            raise FastpathError(f"exact table: keys {k.shape} and values {v.shape} must be 1-D and the same length")
        if k.size and (k == EMPTY).any():
            raise FastpathError("exact table: key 0xFFFFFFFFFFFFFFFF is reserved for empty slots")
        cap = _capacity(k.size, load)
        tk = np.full(cap, EMPTY, dtype=np.uint64)
        tv = np.zeros(cap, dtype=np.int64)
        n = _ht_build(k, v, tk, tv)
        slots = np.empty(2 * cap, dtype=np.uint64)
        slots[0::2] = tk
        slots[1::2] = tv.view(np.uint64)
        return cls(slots, int(n))

