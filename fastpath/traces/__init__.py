"""Traces: the flow schema, reading trace files in batches, synthetic traces.

* :mod:`.schema` -- the columns, :class:`Flows` (a batch as numpy arrays) and
  :func:`normalize_batch`, which checks a batch and converts it;
* :mod:`.reader` -- :func:`open_trace` over Arrow IPC files and streams, Parquet
  and directories, in bounded batches;
* :mod:`.synth` -- :func:`synth_trace`, a workload model written as Arrow IPC.
"""
from __future__ import annotations

from .reader import DEFAULT_BATCH_SIZE, TraceReader, open_trace
from .schema import (CANONICAL_TYPES, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, TRACE_COLUMNS, Flows, check_schema,
                     normalize_batch)
from .synth import TraceMix, synth_trace, trace_schema

__all__ = [
    "CANONICAL_TYPES", "DEFAULT_BATCH_SIZE", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "TRACE_COLUMNS",
    "Flows", "TraceMix", "TraceReader", "check_schema", "normalize_batch", "open_trace", "synth_trace",
    "trace_schema",
]
