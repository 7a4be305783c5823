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


def balance(weights: np.ndarray, bins: int) -> np.ndarray:
    """Items (their weights) into ``bins`` bins, heaviest first into the lightest bin (greedy LPT)."""
    out = np.zeros(weights.shape[0], dtype=np.int32)
    heap = [(0, b) for b in range(bins)]
    for i in np.argsort(-weights, kind="stable").tolist():
        load, b = heapq.heappop(heap)
        out[i] = b
        heapq.heappush(heap, (load + int(weights[i]), b))
    return out


def state_partitions(counts: np.ndarray, parts: int) -> np.ndarray:
    """``part_of_node`` (index node + 1; slot 0 unused: rows without balancer state are spread over
    every partition) for ``parts`` partitions.

    ``counts``: rows per node + 1 (slot 0: rows with no state). Nodes are balanced by rows over the
    partitions: every piece of balancer state is one node's (round-robin and least-connection
    counters, and ClientIP affinity, which kube-proxy keeps per node: an external client reaching one
    service through two nodes has an entry on each), so no two nodes need the same partition.
    """
    n_nodes = counts.shape[0] - 1
    out = np.zeros(n_nodes + 1, dtype=np.int32)
    out[1:] = balance(counts[1:], parts)
    return out
