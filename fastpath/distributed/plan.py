"""How a distributed replay splits its work: row ranges, state partitions, conntrack groups.

All of it is plain numpy on the driver over small arrays (per node, per range);
no per-flow array comes here.
"""
from __future__ import annotations

import heapq

import numpy as np

#: Rows a task handles (a range of the trace): big enough that a task's fixed costs (a
#: plane from the worker's cache, opening the trace) vanish, small enough to balance.
PART_ROWS = 1 << 20


def ranges(n_rows: int, workers: int, batch_size: int, part_rows: int = PART_ROWS) -> list[tuple[int, int]]:
    """Contiguous row ranges covering ``0:n_rows``: at least two per worker, at most
    ``part_rows`` rows each, each a whole number of batches (but the last)."""
    if n_rows == 0:
        return [(0, 0)]
    want = max(2 * workers, -(-n_rows // part_rows))
    size = -(-n_rows // want)
    size = max(batch_size, -(-size // batch_size) * batch_size)
    return [(a, min(n_rows, a + size)) for a in range(0, n_rows, size)]


def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def node_components(n_nodes: int, aff_key: np.ndarray, aff_node: np.ndarray) -> np.ndarray:
    """Per node, a component id: nodes whose flows share a ClientIP-affinity key (service port, client
    IP) are one component (the affinity table is keyed without the node, so they share state).

    In-cluster clients use their own node's key only; an external client reaching one
    affinity service through several nodes ties those nodes together.
    """
    parent = np.arange(n_nodes, dtype=np.int64)
    if aff_key.size:
        order = np.lexsort((aff_node, aff_key))
        k, nd = aff_key[order], aff_node[order]
        same = np.flatnonzero(k[1:] == k[:-1])
        for i in same.tolist():
            a, b = _find(parent, int(nd[i])), _find(parent, int(nd[i + 1]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([_find(parent, i) for i in range(n_nodes)], dtype=np.int64)


def balance(weights: np.ndarray, bins: int) -> np.ndarray:
    """Items (their weights) into ``bins`` bins, heaviest first into the lightest bin (greedy LPT)."""
    out = np.zeros(weights.shape[0], dtype=np.int32)
    heap = [(0, b) for b in range(bins)]
    for i in np.argsort(-weights, kind="stable").tolist():
        load, b = heapq.heappop(heap)
        out[i] = b
        heapq.heappush(heap, (load + int(weights[i]), b))
    return out


def state_partitions(counts: np.ndarray, aff_key: np.ndarray, aff_node: np.ndarray, parts: int) -> np.ndarray:
    """``part_of_node`` (index node + 1; slot 0 unused: rows without balancer state are spread over
    every partition) for ``parts`` partitions.

    ``counts``: rows per node + 1 (slot 0: rows with no state). Components of nodes
    (:func:`node_components`) are balanced by rows over the partitions.
    """
    n_nodes = counts.shape[0] - 1
    comp = node_components(n_nodes, aff_key, aff_node)
    comp_rows = np.bincount(comp, weights=counts[1:], minlength=n_nodes)
    part_of_comp = balance(comp_rows, parts)
    out = np.zeros(n_nodes + 1, dtype=np.int32)
    out[1:] = part_of_comp[comp]
    return out
