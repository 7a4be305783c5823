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

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING

from .errors import FastpathError

#: Where each public name lives. They are imported on first use (PEP 562), so
#: ``import fastpath`` (and the ``fastpath`` command's start, before it installs
#: its signal handlers) does not wait for numba, numpy and pyarrow.
_LAZY = {
    "prepare": "._jit", "set_threads": "._jit",
    "int_to_ip": ".addr", "ip_to_int": ".addr", "ips_from_strings": ".addr", "ips_to_strings": ".addr",
    "parse_cidr": ".addr",
    "compile_cluster": ".cluster.compile",
    "cluster_from_objects": ".cluster.load", "load_cluster": ".cluster.load",
    "Cluster": ".cluster.model",
    "synth_cluster": ".cluster.synth", "write_cluster": ".cluster.synth",
    "explain": ".explain",
    "RESULT_SCHEMA": ".pipeline", "DataPlane": ".pipeline", "Results": ".pipeline",
    "replay": ".replay",
    "ExactTable": ".tables.exact",
    "RouteTable": ".tables.lpm",
    "ServiceMap": ".tables.services", "compile_services": ".tables.services",
    "normalize_batch": ".traces", "open_trace": ".traces", "synth_trace": ".traces",
}

if TYPE_CHECKING:  # pragma: no cover -- for type checkers and IDEs
    from ._jit import prepare, set_threads
    from .addr import int_to_ip, ip_to_int, ips_from_strings, ips_to_strings, parse_cidr
    from .cluster.compile import compile_cluster
    from .cluster.load import cluster_from_objects, load_cluster
    from .cluster.model import Cluster
    from .cluster.synth import synth_cluster, write_cluster
    from .explain import explain
    from .pipeline import RESULT_SCHEMA, DataPlane, Results
    from .replay import replay
    from .tables.exact import ExactTable
    from .tables.lpm import RouteTable
    from .tables.services import ServiceMap, compile_services
    from .traces import normalize_batch, open_trace, synth_trace


def __getattr__(name: str):
    where = _LAZY.get(name)
    if where is None:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'fastpath' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # a submodule: fastpath.tables, ...
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


class _Package(type(importlib)):
    """The package's module type: ``fastpath.replay`` and ``fastpath.explain`` stay the functions.

    Importing a submodule sets it as an attribute of its package; the functions
    ``replay`` and ``explain`` share their modules' names, so without this, whichever
    was imported last would win (``from fastpath.replay import X`` still works: it
    reads ``sys.modules``).
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _FUNCTIONS_NAMED_AS_MODULES and isinstance(value, type(importlib)):
            value = getattr(value, name)
        super().__setattr__(name, value)


#: Public functions whose names are also submodules' names.
_FUNCTIONS_NAMED_AS_MODULES = ("replay", "explain")
sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "Cluster", "DataPlane", "ExactTable", "FastpathError", "RESULT_SCHEMA", "Results", "RouteTable",
    "ServiceMap", "cluster_from_objects", "compile_cluster", "compile_services", "explain", "int_to_ip",
    "ip_to_int", "ips_from_strings", "ips_to_strings", "load_cluster", "normalize_batch", "open_trace",
    "parse_cidr", "prepare", "replay", "set_threads", "synth_cluster", "synth_trace", "write_cluster",
]
