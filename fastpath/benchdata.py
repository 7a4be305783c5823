"""Route tables and destinations for benchmarks and capacity studies.

Shared by ``bench/`` and the ``fastpath bench`` command. Every table generator
returns :class:`Routes` (``prefixes`` uint32, ``lengths`` uint8, ``next_hops``
uint32), ready for ``RouteTable.from_arrays(*routes)``; destination generators
return uint32 arrays. All are deterministic for a given ``seed``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: 10.0.0.0/8, the pool the synthetic clusters take pod CIDRs from.
POD_POOL, POD_POOL_LEN = 0x0A000000, 8
#: Per-node pod CIDR length (kube-controller-manager's ``--node-cidr-mask-size`` default).
NODE_CIDR_LEN = 24
#: Calico IPAM block length (its default ``blockSize``).
CALICO_BLOCK_LEN = 26


class Routes(NamedTuple):
    """A route table before compilation: three parallel arrays."""

    prefixes: np.ndarray  #: network addresses, uint32
    lengths: np.ndarray  #: prefix lengths, uint8
    next_hops: np.ndarray  #: next hops, uint32


def _routes(prefixes, lengths, next_hops) -> Routes:
    return Routes(np.ascontiguousarray(prefixes, dtype=np.uint32),
                  np.ascontiguousarray(lengths, dtype=np.uint8),
                  np.ascontiguousarray(next_hops, dtype=np.uint32))


def _subnets(count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct random ``/length`` subnets of :data:`POD_POOL`, sorted."""
    available = 1 << (length - POD_POOL_LEN)
    if not 0 <= count <= available:
        raise ValueError(f"{count} /{length} subnets do not fit in 10.0.0.0/8 (at most {available})")
    index = np.sort(rng.choice(available, size=count, replace=False)).astype(np.uint64)
    return (np.uint64(POD_POOL) + (index << np.uint64(32 - length))).astype(np.uint32)


def cluster_route_table(nodes: int = 5000, seed: int = 0) -> Routes:
    """A Kubernetes node route table: one ``/24`` pod CIDR per node, plus a default route.

    Pod CIDRs are distinct random ``/24`` subnets of 10.0.0.0/8 (as after node churn);
    node ``i``'s CIDR routes to next hop ``i`` and the default route ``0.0.0.0/0`` to
    next hop ``nodes`` (the egress gateway).
    """
    rng = np.random.default_rng(seed)
    prefixes = np.append(_subnets(nodes, NODE_CIDR_LEN, rng), np.uint32(0))
    lengths = np.append(np.full(nodes, NODE_CIDR_LEN), 0)
    next_hops = np.append(rng.permutation(nodes), nodes)
    return _routes(prefixes, lengths, next_hops)


def calico_route_table(blocks: int = 20000, hosts: int = 2000, seed: int = 0,
                       nodes: int | None = None) -> Routes:
    """A Calico (BGP) route table: ``/26`` IPAM blocks, ``/32`` borrowed pod IPs, default route.

    ``blocks`` distinct ``/26`` blocks of 10.0.0.0/8 are spread over ``nodes`` nodes
    (default ``blocks // 4``, at least 1); ``hosts`` pod IPs inside random blocks were
    borrowed by another node, so each gets a ``/32`` route to that node, longer than and
    inside its block's route. The default route goes to next hop ``nodes``.
    """
    rng = np.random.default_rng(seed)
    nodes = max(1, blocks // 4) if nodes is None else nodes
    block_prefixes = _subnets(blocks, CALICO_BLOCK_LEN, rng)
    block_owner = rng.integers(0, nodes, size=blocks)
    # distinct host addresses: distinct (block, offset) pairs
    block_size = 1 << (32 - CALICO_BLOCK_LEN)
    if hosts > blocks * block_size:
        raise ValueError(f"{hosts} host routes do not fit in {blocks} /{CALICO_BLOCK_LEN} blocks")
    slots = rng.choice(blocks * block_size, size=hosts, replace=False) if hosts else np.empty(0, np.int64)
    host_block = slots // block_size
    host_prefixes = block_prefixes[host_block].astype(np.uint64) + (slots % block_size).astype(np.uint64)
    # the borrowing node differs from the block's owner (when there is another node)
    shift = rng.integers(1, nodes, size=hosts) if nodes > 1 else np.zeros(hosts, np.int64)
    host_owner = (block_owner[host_block] + shift) % nodes
    prefixes = np.concatenate([block_prefixes, host_prefixes.astype(np.uint32), [0]])
    lengths = np.concatenate([np.full(blocks, CALICO_BLOCK_LEN), np.full(hosts, 32), [0]])
    next_hops = np.concatenate([block_owner, host_owner, [nodes]])
    return _routes(prefixes, lengths, next_hops)


#: The RouteViews IPv4 table shipped in the project's ``shared/data`` folder.
ROUTEVIEWS_FILE = "routeviews-rv2-20160202-1200.pfx2as.gz"


def routeviews_path() -> Path | None:
    """The RouteViews file: under ``$FASTPATH_SHARED/data`` when set, else ``shared/data``
    beside the source tree or beside the working directory; None where it is absent."""
    if os.environ.get("FASTPATH_SHARED"):
        cands = [Path(os.environ["FASTPATH_SHARED"]) / "data" / ROUTEVIEWS_FILE]
    else:
        here = Path(__file__).resolve().parents[1]
        cands = [d / "shared" / "data" / ROUTEVIEWS_FILE for d in (here.parent, Path.cwd().parent)]
    return next((p for p in cands if p.exists()), None)


def routeviews_table(path: str | Path) -> Routes:
    """The IPv4 Internet table of a RouteViews ``pfx2as`` file; next hop = origin-AS index.

    See :func:`fastpath.tables.routeviews.read_pfx2as` (which also returns the AS names).
    """
    from .tables.routeviews import read_pfx2as

    prefixes, lengths, next_hops, _ = read_pfx2as(path)
    return Routes(prefixes, lengths, next_hops)


def random_destinations(n: int, seed: int = 0) -> np.ndarray:
    """``n`` destinations drawn uniformly from the whole IPv4 space (uint32)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)


def destinations_in(prefixes: np.ndarray, lengths: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` destinations inside the given prefixes (uint32).

    Each destination picks one prefix uniformly at random, then an address uniformly
    inside it; pass only the pod prefixes (drop the default route) to aim at pods.
    """
    prefixes = np.asarray(prefixes, dtype=np.uint32)
    lengths = np.asarray(lengths, dtype=np.uint8)
    if prefixes.shape != lengths.shape or prefixes.size == 0:
        raise ValueError("destinations_in needs equally long, non-empty prefix and length arrays")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, prefixes.size, size=n)
    host_bits = (np.uint64(1) << (np.uint64(32) - lengths[pick].astype(np.uint64))) - np.uint64(1)
    offsets = rng.integers(0, 1 << 32, size=n, dtype=np.uint64) & host_bits
    return (prefixes[pick].astype(np.uint64) | offsets).astype(np.uint32)
