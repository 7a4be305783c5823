"""fastpath: a high-throughput emulator of the Kubernetes data plane.

Load a cluster's objects, compile them once into flat tables, and resolve
batches of flows with numba kernels::

    import fastpath
    cluster = fastpath.load_cluster("cluster.json")
    dp = fastpath.compile_cluster(cluster, lb="maglev")
    results = dp.resolve(batch)                  # pyarrow RecordBatch of result columns
    summary = fastpath.replay(cluster, "trace.arrow", "results.arrow")

The building blocks stand on their own for capacity studies:
:class:`RouteTable` (longest-prefix match), :class:`ExactTable` (exact match),
the service map (:func:`compile_services`) and :mod:`fastpath.study`.
"""
from __future__ import annotations

from ._jit import prepare, set_threads
from .addr import int_to_ip, ip_to_int, ips_from_strings, ips_to_strings, parse_cidr
from .cluster.compile import compile_cluster
from .cluster.load import cluster_from_objects, load_cluster
from .cluster.model import Cluster
from .cluster.synth import synth_cluster, write_cluster
from .errors import FastpathError
from .explain import explain
from .pipeline import RESULT_SCHEMA, DataPlane, Results
from .replay import replay
from .tables.exact import ExactTable
from .tables.lpm import RouteTable
from .tables.services import ServiceMap, compile_services
from .traces import normalize_batch, open_trace, synth_trace

__version__ = "0.1.0"

__all__ = [
    "Cluster", "DataPlane", "ExactTable", "FastpathError", "RESULT_SCHEMA", "Results", "RouteTable",
    "ServiceMap", "cluster_from_objects", "compile_cluster", "compile_services", "explain", "int_to_ip",
    "ip_to_int", "ips_from_strings", "ips_to_strings", "load_cluster", "normalize_batch", "open_trace",
    "parse_cidr", "prepare", "replay", "set_threads", "synth_cluster", "synth_trace", "write_cluster",
]
