"""Compile every kernel once on tiny inputs (see :func:`fastpath.prepare`)."""
from __future__ import annotations

import numpy as np


def run() -> None:
    from .addr import ips_from_strings, ips_to_strings
    from .cluster.compile import compile_cluster
    from .cluster.load import cluster_from_objects
    from .cluster.synth import synth_cluster
    from .tables.lpm import RouteTable
    from .traces import normalize_batch

    ips_to_strings(ips_from_strings(["10.0.0.1"]))
    rt = RouteTable.from_cidrs(["10.0.0.0/8"], [1])
    rt.lookup(np.zeros(4, np.uint32))
    rt.lookup_parallel(np.zeros(4, np.uint32))
    cluster = cluster_from_objects(synth_cluster(2, 3, 2, seed=0)["items"], "warm-up")
    flows = normalize_batch({"src_ip": np.zeros(2, np.uint32), "dst_ip": np.zeros(2, np.uint32),
                             "src_port": np.zeros(2, np.uint16), "dst_port": np.zeros(2, np.uint16),
                             "proto": np.full(2, 6, np.uint8), "ts": np.arange(2, dtype=np.int64)}, "warm-up")
    for lb in ("random", "round-robin", "source-hash", "maglev", "least-connection"):
        compile_cluster(cluster, lb=lb).resolve_flows(flows)
