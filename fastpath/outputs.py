"""What fastpath writes, the way users expect it: formats by extension, metadata, consoles.

* :func:`output_format` -- a file's format follows its extension (``.arrow``,
  ``.feather``, ``.parquet``); anything else is a one-line error naming the
  accepted ones, never Arrow bytes under a ``.csv`` name.
* :func:`results_metadata` -- the schema metadata a results file carries, so it
  stands alone (fastpath version, cluster and trace paths, balancer, seed,
  options); :func:`read_results_metadata` reads it back.
* :func:`flow_fields` / :func:`flow_arrays` -- a batch's input flow columns as
  Arrow arrays (zero-copy over the normalized numpy columns), for
  ``replay --with-flows``.
* :func:`console` -- a rich console that honours ``NO_COLOR`` fully (no escape
  codes at all) and never cuts names when the output is not a terminal.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import FastpathError

#: Output endings and the format each means.
FORMATS = {".arrow": "arrow", ".feather": "arrow", ".parquet": "parquet", ".pq": "parquet"}
#: How the accepted endings are named in errors.
ACCEPTED = ".arrow, .feather or .parquet"
#: Schema metadata key of a results file's provenance (JSON).
METADATA_KEY = b"fastpath"
#: Width a console takes when writing to a pipe or file: wide enough that no name is cut.
PIPE_WIDTH = 4000


def output_format(path: str | os.PathLike, what: str = "output") -> str:
    """``"arrow"`` or ``"parquet"`` from ``path``'s extension.

    Raises
    ------
    FastpathError
        Any other extension (``results.csv``, a bare ``json``): one line naming
        the path and the accepted endings.
    """
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        got = f"extension {suffix!r}" if suffix else "no extension"
        raise FastpathError(f"{path}: {what} has {got}; the format follows the extension: use {ACCEPTED}")
    return fmt


def is_stdout(path: Any) -> bool:
    """Whether a text output path is ``-`` (standard output)."""
    return path is not None and str(path) == "-"


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` to ``path``, or to standard output where ``path`` is ``-``."""
    if is_stdout(path):
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    else:  # whole or not at all, naming ``path`` in any error (fastpath.files)
        from .files import atomic_write_text

        atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def results_metadata(*, cluster: str, trace: str, lb: str, seed: int, options: dict | None = None,
                     with_flows: bool = False) -> dict[bytes, bytes]:
    """Schema metadata for a results file: what made it, as JSON under :data:`METADATA_KEY`."""
    from . import __version__

    about = {"fastpath_version": __version__, "cluster": str(cluster), "trace": str(trace), "lb": lb,
             "seed": int(seed), "options": {k: v for k, v in sorted((options or {}).items())},
             "with_flows": bool(with_flows)}
    return {METADATA_KEY: json.dumps(about, sort_keys=True, default=str).encode()}


def read_results_metadata(schema_or_path) -> dict:
    """The provenance a results file (or its schema) carries; ``{}`` where it has none."""
    schema = schema_or_path
    if not isinstance(schema, pa.Schema):
        path = Path(schema_or_path)
        if output_format(path, "results file") == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        else:
            with pa.memory_map(str(path)) as src:
                schema = pa.ipc.open_file(src).schema
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


# --------------------------------------------------------------------------- flow columns

#: Input flow columns in the order ``--with-flows`` writes them, with their Arrow types.
_FLOW_TYPES = (("src_ip", pa.uint32()), ("dst_ip", pa.uint32()), ("src_port", pa.uint16()),
               ("dst_port", pa.uint16()), ("proto", pa.uint8()), ("ts", pa.timestamp("ns")),
               ("dst_name", pa.dictionary(pa.int32(), pa.string())), ("bytes", pa.uint64()),
               ("packets", pa.uint32()), ("duration", pa.float64()))


def flow_fields(flows) -> list[pa.Field]:
    """The input columns ``flows`` (:class:`fastpath.traces.Flows`) has, as Arrow fields."""
    out = []
    for name, typ in _FLOW_TYPES:
        attr = "name_code" if name == "dst_name" else name
        if getattr(flows, attr, None) is not None:
            out.append(pa.field(name, typ))
    return out


def flow_fields_of_schema(schema: pa.Schema) -> list[pa.Field]:
    """The input columns a trace with ``schema`` gives every batch (``dst_ip`` always: null where named)."""
    have = set(schema.names)
    return [pa.field(name, typ) for name, typ in _FLOW_TYPES
            if name in ("src_ip", "dst_ip", "src_port", "dst_port", "proto") or name in have]


def _validity(valid: np.ndarray) -> tuple[pa.Buffer | None, int]:
    nulls = int(valid.shape[0] - np.count_nonzero(valid))
    return (pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None), nulls


def flow_arrays(flows, fields: list[pa.Field]) -> list[pa.Array]:
    """The columns ``fields`` of ``flows`` as Arrow arrays (zero-copy; ``dst_ip`` null where named)."""
    n = flows.n
    named = flows.name_code >= 0 if flows.name_code is not None else None
    out = []
    for f in fields:
        if f.name == "dst_name":
            if flows.name_code is None:
                out.append(pa.nulls(n, f.type))
                continue
            bitmap, nulls = _validity(named)
            idx = pa.Array.from_buffers(pa.int32(), n, [bitmap, pa.py_buffer(np.ascontiguousarray(flows.name_code))],
                                        null_count=nulls)
            out.append(pa.DictionaryArray.from_arrays(idx, pa.array(flows.name_dict or [], pa.string())))
            continue
        values = getattr(flows, f.name, None)
        if values is None:
            out.append(pa.nulls(n, f.type))
            continue
        bitmap, nulls = (None, 0)
        if f.name == "dst_ip" and named is not None:
            bitmap, nulls = _validity(~named)
        out.append(pa.Array.from_buffers(f.type, n, [bitmap, pa.py_buffer(np.ascontiguousarray(values))],
                                         null_count=nulls))
    return out


# --------------------------------------------------------------------------- consoles

def no_color() -> bool:
    """``NO_COLOR`` set to anything non-empty (https://no-color.org)."""
    return bool(os.environ.get("NO_COLOR"))


def console(stderr: bool = False, wide: bool = False, file=None):
    """A rich console: no escape codes at all under ``NO_COLOR``, full width when not a terminal.

    ``wide`` also lifts the width limit on a terminal (``-o wide``): lines may wrap, names
    are never cut.
    """
    from rich.console import Console

    kw: dict[str, Any] = {"stderr": stderr} if file is None else {"file": file}
    if no_color():
        kw.update(color_system=None, no_color=True, highlight=False)
    probe = Console(**kw)
    if wide or not probe.is_terminal:
        kw["width"] = PIPE_WIDTH
        return Console(**kw)
    return probe
