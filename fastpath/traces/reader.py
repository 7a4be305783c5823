"""Reading trace files in bounded batches.

:func:`open_trace` opens an Arrow IPC file (Feather v2, memory-mapped), an
Arrow IPC stream, a Parquet file, or a directory of such files (read in
sorted path order, as one trace), and iterates it as :class:`Flows` of
``batch_size`` rows whatever the file's own batching. Memory stays bounded by
the batch size (and the file's own largest batch or row group); a file is
never loaded whole.
"""
from __future__ import annotations

import mmap
import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FastpathError
from ..files import input_stat
from .schema import TRACE_COLUMNS, Flows, check_schema, normalize_batch

#: Rows per batch by default: 128 Ki rows is about 4 MB of trace columns and as much of
#: results, so a batch stays in the last-level cache while every stage of the pipeline
#: passes over it, and a replay pays its per-batch Python steps half as often as with
#: 64 Ki (the 20M-flow replay of ``bench_replay.py``, whole process, four runs each on a
#: 2-core Xeon guest: 3.55-3.71 s against 3.88-3.99 s; peak RSS 564-572 MB against 544 MB).
DEFAULT_BATCH_SIZE = 1 << 17
#: File name endings read as traces inside a directory.
TRACE_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows", ".parquet", ".pq")

#: madvise advice that unmaps pages already read (None where the platform lacks it).
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None
_ARROW_FILE_MAGIC = b"ARROW1"
_PARQUET_MAGIC = b"PAR1"
_STREAM_CONTINUATION = b"\xff\xff\xff\xff"


@contextmanager
def _reading(path: Path):
    """Turn Arrow / OS errors while reading ``path`` into one-line FastpathErrors."""
    try:
        yield
    except FastpathError:
        raise
    except UnicodeDecodeError as e:  # a column name (or other schema text) that is not UTF-8
        raise FastpathError(f"{path}: cannot read trace (column name or schema text "
                            f"{bytes(e.object[:64])!r} is not UTF-8 text)") from None
    except (pa.ArrowException, OSError, EOFError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FastpathError(f"{path}: cannot read trace ({first})") from None


def _sniff(path: Path) -> str:
    """``arrow-file``, ``arrow-stream`` or ``parquet``, from the file's first bytes."""
    with _reading(path):
        with open(path, "rb") as fh:
            head = fh.read(8)
    if not head:
        raise FastpathError(f"{path}: empty file, not a trace")
    if head.startswith(_ARROW_FILE_MAGIC):
        return "arrow-file"
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_STREAM_CONTINUATION):
        return "arrow-stream"
    raise FastpathError(f"{path}: not a trace (neither an Arrow IPC nor a Parquet file)")


def _field_indices(schema: pa.Schema) -> list[int]:
    return [i for i, name in enumerate(schema.names) if name in TRACE_COLUMNS]


@dataclass
class _TraceFile:
    """One file of a trace: its kind, row count and (trace columns of the) schema."""

    path: Path
    kind: str
    num_rows: int
    schema: pa.Schema
    fields: list[int]

    @classmethod
    def open(cls, path: Path) -> "_TraceFile":
        if not stat.S_ISREG(input_stat(path, "trace").st_mode):  # a FIFO or a device: refused, never opened
            raise FastpathError(f"{path}: the trace is a directory inside a trace directory's file list")
        kind = _sniff(path)
        with _reading(path):
            if kind == "parquet":
                meta = pq.ParquetFile(path)
                full = meta.schema_arrow
                num_rows = meta.metadata.num_rows
            elif kind == "arrow-file":
                reader = pa.ipc.open_file(pa.memory_map(str(path)))
                full = reader.schema
                num_rows = _count_rows(reader, full)
            else:
                full = pa.ipc.open_stream(pa.memory_map(str(path))).schema
                cheap = pa.ipc.IpcReadOptions(included_fields=_smallest_field(full))
                num_rows = sum(b.num_rows for b in pa.ipc.open_stream(pa.memory_map(str(path)), options=cheap))
            for i in range(len(full)):  # every column name is UTF-8 text, or one line naming the column
                try:
                    full.field(i).name
                except UnicodeDecodeError as e:
                    raise FastpathError(f"{path}: column {i + 1} of {len(full)} has a name that is not UTF-8 "
                                        f"text ({bytes(e.object[:64])!r})") from None
        check_schema(full, str(path))
        fields = _field_indices(full)
        return cls(path, kind, num_rows, pa.schema([full.field(i) for i in fields]), fields)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, pa.RecordBatch]]:
        """The file's record batches with the row number of each one's first row, trace columns
        only, as stored (any size), from the batch that holds row ``start`` on (the batches
        before it are not read: Arrow batches are skipped by their row counts, Parquet row
        groups by their metadata).

        Arrow files are memory-mapped and read zero-copy. Once the caller asks
        for the next batch, the pages of the previous one are handed back to
        the kernel (``MADV_DONTNEED``: they stay in the page cache, and any
        array still viewing them faults them back in), so the process's
        resident memory stays bounded by a batch, not by the file.
        """
        options = pa.ipc.IpcReadOptions(included_fields=self.fields)
        with _reading(self.path):
            if self.kind in ("arrow-file", "arrow-stream"):
                mapped, source = _map(self.path)
                if self.kind == "arrow-file":
                    reader = pa.ipc.open_file(source, options=options)
                    stored = (reader.get_batch(i) for i in range(reader.num_record_batches))
                else:
                    stored = iter(pa.ipc.open_stream(source, options=options))
                row = 0
                for batch in stored:
                    if row + batch.num_rows > start:
                        yield row, batch
                    row += batch.num_rows
                    del batch
                    _drop_pages(mapped)
            else:
                names = self.schema.names
                pf = pq.ParquetFile(self.path, read_dictionary=[n for n in ("dst_name",) if n in names])
                row, groups, acc = 0, [], 0
                for g in range(pf.metadata.num_row_groups):
                    rows = pf.metadata.row_group(g).num_rows
                    if acc + rows > start:
                        row = acc if not groups else row
                        groups.append(g)
                    acc += rows
                if not groups:
                    return
                for batch in pf.iter_batches(batch_size=batch_size, columns=names, row_groups=groups):
                    yield row, batch
                    row += batch.num_rows


def _map(path: Path) -> tuple[mmap.mmap, pa.BufferReader]:
    """Memory-map ``path`` read-only; Arrow reads zero-copy from the returned source."""
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return mapped, pa.BufferReader(pa.py_buffer(mapped))


def _drop_pages(mapped: mmap.mmap) -> None:
    if _DONTNEED is not None:
        try:
            mapped.madvise(_DONTNEED)
        except (OSError, ValueError):
            pass


def _smallest_field(schema: pa.Schema) -> list[int]:
    widths = [(getattr(f.type, "bit_width", 64) if pa.types.is_primitive(f.type) else 128, i)
              for i, f in enumerate(schema)]
    return [min(widths)[1]] if widths else []


def _count_rows(reader: pa.ipc.RecordBatchFileReader, schema: pa.Schema) -> int:
    count = getattr(reader, "count_rows", None)
    if count is not None:
        return int(count())
    return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _concat(pieces: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(pieces) == 1:
        return pieces[0]
    if hasattr(pa, "concat_batches"):
        return pa.concat_batches(pieces)
    return pa.Table.from_batches(pieces).combine_chunks().to_batches()[0]


_DIGITS = re.compile(r"(\d+)")


def _number_order(path: Path) -> tuple:
    """Sort key of a trace directory's file: its path, with each run of digits compared as a number
    (``part-2`` before ``part-10``, as ``pyarrow.dataset.write_dataset`` and Hive folders number
    them); zero-padded names sort as their text does."""
    return tuple(tuple((int(t), t) if i % 2 else t for i, t in enumerate(_DIGITS.split(part)))
                 for part in path.parts)


def _trace_files(path: Path) -> list[Path]:
    if stat.S_ISDIR(input_stat(path, "trace").st_mode):
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            found += [Path(root) / f for f in files
                      if f.lower().endswith(TRACE_SUFFIXES) and not f.startswith((".", "_"))]
        if not found:
            raise FastpathError(f"{path}: directory holds no trace files ({', '.join(TRACE_SUFFIXES)})")
        return sorted(found, key=_number_order)
    input_stat(path, "trace")  # no such file, a symlink loop, a FIFO or a device: one line
    return [path]


class TraceReader:
    """A trace opened for reading: row count and schema up front, then batches.

    Iterating yields :class:`Flows` of exactly ``batch_size`` rows (the last
    one fewer), in file order, each checked by :func:`normalize_batch`
    (errors name the file and the row within it). Time order is also checked
    across batch and file boundaries. Iterate again to re-read.

    Attributes
    ----------
    path : Path
    batch_size : int
    num_rows : int
        Rows in the whole trace (known before reading, for a progress bar).
    schema : pyarrow.Schema
        The trace columns of the (first) file.
    format : str
        ``arrow-file``, ``arrow-stream``, ``parquet``, or ``dataset`` for a directory.
    files : list of Path
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FastpathError(f"batch size must be a positive integer, got {batch_size!r}")
        self.path = Path(path)
        self.batch_size = batch_size
        self._files = [_TraceFile.open(p) for p in _trace_files(self.path)]
        first = self._files[0]
        for other in self._files[1:]:
            if set(other.schema.names) != set(first.schema.names):
                raise FastpathError(f"{other.path}: columns {sorted(other.schema.names)} differ from "
                                    f"{first.path}'s {sorted(first.schema.names)}")
        self.files = [f.path for f in self._files]
        self.num_rows = sum(f.num_rows for f in self._files)
        self.schema = first.schema
        self.format = "dataset" if self.path.is_dir() else first.kind

    @property
    def num_batches(self) -> int:
        """How many batches iteration yields."""
        return -(-self.num_rows // self.batch_size)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (f"TraceReader({str(self.path)!r}, format={self.format!r}, num_rows={self.num_rows}, "
                f"batch_size={self.batch_size})")

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __iter__(self) -> Iterator[Flows]:
        return self.rows(0, self.num_rows)

    def rows(self, start: int, stop: int) -> Iterator[Flows]:
        """Rows ``start:stop`` of the whole trace (counted across its files), in batches of
        ``batch_size`` (the last one fewer), checked as iteration checks them; time order is
        checked within the range. What the distributed replay's tasks read
        (:mod:`fastpath.distributed`): batches and files before ``start`` are skipped unread."""
        size = self.batch_size
        state = {"last_ts": None, "last_where": ""}
        groups: list[tuple[_TraceFile, int, list[pa.RecordBatch]]] = []
        have = 0
        base = 0                                     # the first row of this file in the whole trace
        for tf in self._files:
            lo, hi = max(start - base, 0), min(stop - base, tf.num_rows)
            base += tf.num_rows
            if lo >= hi:
                continue
            for row, raw in tf.batches(size, lo):
                if row >= hi:
                    break
                off = max(lo - row, 0)
                end = min(raw.num_rows, hi - row)
                row += off
                while off < end:
                    take = min(size - have, end - off)
                    piece = raw.slice(off, take)
                    if groups and groups[-1][0] is tf:
                        groups[-1][2].append(piece)
                    else:
                        groups.append((tf, row, [piece]))
                    off += take
                    row += take
                    have += take
                    if have == size:
                        yield self._emit(groups, state)
                        groups, have = [], 0
        if groups:
            yield self._emit(groups, state)

    def _emit(self, groups: list, state: dict) -> Flows:
        parts = []
        for tf, row0, pieces in groups:
            with _reading(tf.path):
                batch = _concat(pieces)
            flows = normalize_batch(batch, source=str(tf.path), row_offset=row0)
            if flows.ts is not None and flows.n:
                last = state["last_ts"]
                if last is not None and flows.ts[0] < last:
                    raise FastpathError(f"{tf.path}: column 'ts' goes back in time at row {row0} "
                                        f"({flows.ts[0]} after {last}{state['last_where']}); "
                                        f"rows must be in time order")
                state["last_ts"] = int(flows.ts[-1])
                state["last_where"] = f" in {tf.path}" if len(self._files) > 1 else ""
            parts.append(flows)
        return Flows.concat(parts)

    def read_all(self) -> Flows:
        """The whole trace as one :class:`Flows` (for small traces; it is all in memory)."""
        parts = list(self)
        if not parts:
            return normalize_batch(self.schema.empty_table(), source=str(self.path))
        return Flows.concat(parts)


def open_trace(path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE) -> TraceReader:
    """Open a trace file or directory for reading in batches.

    Parameters
    ----------
    path
        An Arrow IPC file (``.arrow``/``.feather``, memory-mapped), an Arrow IPC
        stream, a Parquet file, or a directory of them (read as one trace in
        path order, a run of digits in a name compared as a number: ``part-2``
        before ``part-10``; names starting with ``.`` or ``_`` are skipped). The
        format is told by the file's first bytes, not its name.
    batch_size
        Rows per yielded batch (default :data:`DEFAULT_BATCH_SIZE`).

    Returns
    -------
    TraceReader
        Knows ``num_rows`` and ``schema``; iterate it for :class:`Flows`.

    Raises
    ------
    FastpathError
        The path does not exist, a file is empty, truncated, not Arrow or
        Parquet, or lacks a required column; naming the file.
    """
    return TraceReader(path, batch_size)
