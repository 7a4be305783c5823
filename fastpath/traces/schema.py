"""The trace schema, and batches of flows as flat numpy arrays.

A trace is a table with one row a flow (see ``shared/spec/interfaces.md``,
"Flows in"). :func:`normalize_batch` checks one batch of it and hands the
kernels a :class:`Flows`: contiguous numpy arrays of fixed dtypes, zero-copy
from Arrow wherever the column already has the kernel's type. Every problem
raises :class:`~fastpath.errors.FastpathError` with one line naming the
source, the column and, where it is a value, the row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..addr import ips_from_strings
from ..errors import FastpathError

#: Columns every trace has (``dst_ip`` may be left out where ``dst_name`` is given).
REQUIRED_COLUMNS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto")
#: Columns a trace may have.
OPTIONAL_COLUMNS = ("ts", "dst_name", "bytes", "packets", "duration")
#: Every column fastpath reads from a trace; any other column is ignored.
TRACE_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
#: Integer columns: numpy dtype the kernels read, and the range a value must lie in.
INT_COLUMNS: dict[str, tuple[np.dtype, int, int]] = {
    "src_port": (np.dtype(np.uint16), 0, 0xFFFF),
    "dst_port": (np.dtype(np.uint16), 0, 0xFFFF),
    "proto": (np.dtype(np.uint8), 0, 0xFF),
    "bytes": (np.dtype(np.uint64), 0, 0xFFFF_FFFF_FFFF_FFFF),
    "packets": (np.dtype(np.uint32), 0, 0xFFFF_FFFF),
}
#: Arrow type of each column in a trace fastpath writes (``synth_trace``).
CANONICAL_TYPES: dict[str, pa.DataType] = {
    "src_ip": pa.uint32(),
    "dst_ip": pa.uint32(),
    "src_port": pa.uint16(),
    "dst_port": pa.uint16(),
    "proto": pa.uint8(),
    "ts": pa.timestamp("ns"),
    "dst_name": pa.dictionary(pa.int32(), pa.string()),
    "bytes": pa.uint64(),
    "packets": pa.uint32(),
    "duration": pa.float64(),
}

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


@dataclass(frozen=True)
class Flows:
    """One batch of flows as flat, contiguous numpy arrays (the kernels' input).

    Arrays may be read-only views of Arrow memory. ``n`` is the row count.

    Attributes
    ----------
    src_ip, dst_ip : uint32
        Addresses as integers; ``dst_ip`` is 0 on rows given by ``dst_name``.
    src_port, dst_port : uint16
    proto : uint8
    ts : int64 or None
        Nanoseconds, non-decreasing.
    name_code : int32 or None
        Index into ``name_dict`` of the row's ``dst_name``; -1 where the row has none.
    name_dict : list of str or None
        The distinct names of this batch.
    bytes : uint64 or None
    packets : uint32 or None
    duration : float64 or None
        Seconds the connection lives (NaN where the row gives none: the replay's default).
    """

    src_ip: np.ndarray
    dst_ip: np.ndarray
    src_port: np.ndarray
    dst_port: np.ndarray
    proto: np.ndarray
    ts: np.ndarray | None = None
    name_code: np.ndarray | None = None
    name_dict: list[str] | None = None
    bytes: np.ndarray | None = None
    packets: np.ndarray | None = None
    duration: np.ndarray | None = None
    n: int = -1

    def __post_init__(self) -> None:
        if self.n < 0:
            object.__setattr__(self, "n", int(self.src_ip.shape[0]))

    def __len__(self) -> int:
        return self.n

    def slice(self, start: int, stop: int) -> "Flows":
        """Rows ``start:stop`` as views (the name dictionary is shared)."""
        start, stop, _ = slice(start, stop).indices(self.n)
        cut = {f.name: getattr(self, f.name)[start:stop] for f in fields(self)
               if isinstance(getattr(self, f.name), np.ndarray)}
        return replace(self, n=max(0, stop - start), **cut)

    def take(self, idx: np.ndarray) -> "Flows":
        """Rows ``idx`` (an index array or a boolean mask), as copies; the name dictionary is shared."""
        cut = {f.name: getattr(self, f.name)[idx] for f in fields(self)
               if isinstance(getattr(self, f.name), np.ndarray)}
        return replace(self, n=int(cut["src_ip"].shape[0]), **cut)

    def compact_names(self) -> "Flows":
        """The same rows with only the names they use in ``name_dict`` (DNS resolves a batch's whole
        dictionary: a few rows taken from a big batch should not carry all of it)."""
        if self.name_code is None or not self.name_dict:
            return self
        used, codes = np.unique(self.name_code, return_inverse=True)
        keep = used[used >= 0]
        shift = int(used.size - keep.size)                   # -1 sorts first: its slot stays -1
        codes = codes.astype(np.int32).reshape(-1) - shift
        return replace(self, name_code=codes, name_dict=[self.name_dict[i] for i in keep.tolist()])

    @staticmethod
    def concat(parts: Sequence["Flows"]) -> "Flows":
        """Rows of ``parts`` one after the other; name dictionaries are merged."""
        if len(parts) == 1:
            return parts[0]
        out: dict[str, Any] = {}
        for f in fields(Flows):
            if f.name in ("n", "name_dict", "name_code"):
                continue
            vals = [getattr(p, f.name) for p in parts]
            if all(v is None for v in vals):
                out[f.name] = None
            elif any(v is None for v in vals):
                raise FastpathError(f"cannot join batches: column {f.name!r} is in some and not in others")
            else:
                out[f.name] = np.concatenate(vals)
        if all(p.name_code is None for p in parts):
            return Flows(**out)
        named = [p for p in parts if p.name_code is not None]
        if all(p.name_dict == named[0].name_dict for p in named[1:]):    # one dictionary (a file's batches)
            codes = [p.name_code if p.name_code is not None else np.full(p.n, -1, dtype=np.int32) for p in parts]
            return Flows(name_code=np.concatenate(codes).astype(np.int32, copy=False),
                         name_dict=list(named[0].name_dict), **out)
        merged: dict[str, int] = {}
        codes = []
        for p in parts:
            if p.name_code is None:
                codes.append(np.full(p.n, -1, dtype=np.int32))
                continue
            remap = np.array([merged.setdefault(s, len(merged)) for s in p.name_dict] + [-1], dtype=np.int32)
            codes.append(remap[p.name_code])  # code -1 picks the trailing -1
        return Flows(name_code=np.concatenate(codes), name_dict=list(merged), **out)


# --------------------------------------------------------------------------- schema

def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t)


def _is_text_like(t: pa.DataType) -> bool:
    return _is_text(t) or (pa.types.is_dictionary(t) and _is_text(t.value_type))


def _accepts(name: str, t: pa.DataType) -> str | None:
    """None if column ``name`` may have type ``t``; else what it should be."""
    if name in ("src_ip", "dst_ip"):
        ok = pa.types.is_integer(t) or _is_text_like(t) or (name == "dst_ip" and pa.types.is_null(t))
        return None if ok else "uint32 or dotted-quad strings"
    if name == "ts":
        return None if (pa.types.is_integer(t) or pa.types.is_timestamp(t)) else "timestamp[ns] or int64 nanoseconds"
    if name == "dst_name":
        return None if (_is_text_like(t) or pa.types.is_null(t)) else "string or dictionary<string>"
    if name == "proto":
        return None if (pa.types.is_integer(t) or _is_text_like(t)) else "uint8 or text (tcp, udp, sctp)"
    if name == "duration":
        ok = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)
        return None if ok else "float64 seconds"
    return None if pa.types.is_integer(t) else str(INT_COLUMNS[name][0])


def _type_error(source: str, name: str, t: pa.DataType, want: str) -> FastpathError:
    hint = ""
    if pa.types.is_floating(t):
        hint = " (pandas turns integer columns with missing values into floats; fill or drop them)"
    return FastpathError(f"{source}: column {name!r} has type {t}, expected {want}{hint}")


def check_schema(schema: pa.Schema, source: str = "<batch>") -> None:
    """Check a trace's schema: required columns present, each column of an accepted type.

    Raises
    ------
    FastpathError
        Naming ``source`` and the first column at fault.
    """
    names = schema.names
    for name in TRACE_COLUMNS:
        if names.count(name) > 1:
            raise FastpathError(f"{source}: column {name!r} appears {names.count(name)} times")
    for name in REQUIRED_COLUMNS:
        if name not in names and not (name == "dst_ip" and "dst_name" in names):
            extra = " (or dst_name)" if name == "dst_ip" else ""
            raise FastpathError(f"{source}: missing required column {name!r}{extra}; "
                                f"a trace needs {', '.join(REQUIRED_COLUMNS)}")
    for name in TRACE_COLUMNS:
        if name in names:
            t = schema.field(name).type
            want = _accepts(name, t)
            if want is not None:
                raise _type_error(source, name, t, want)


# --------------------------------------------------------------------------- columns

def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def _no_nulls(arr: pa.Array, name: str, source: str, row0: int) -> None:
    if arr.null_count:
        raise FastpathError(f"{source}: column {name!r} is null at row {row0 + _first_null(arr)}")


def _int_values(arr: pa.Array, name: str, source: str, row0: int,
                dtype: np.dtype, lo: int, hi: int) -> np.ndarray:
    """Integer column -> ``dtype`` array, zero-copy where the type already matches."""
    _no_nulls(arr, name, source, row0)
    values = arr.to_numpy(zero_copy_only=False)
    if values.dtype == dtype:
        return values
    info = np.iinfo(values.dtype)
    if values.size and (info.min < lo or info.max > hi):
        # Compare in the source dtype against bounds clipped to it, so no value wraps.
        bad = np.zeros(values.shape[0], dtype=np.bool_)
        if info.min < lo:
            bad |= values < max(lo, info.min)
        if info.max > hi:
            bad |= values > min(hi, info.max)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FastpathError(f"{source}: column {name!r} holds {values[i]} at row {row0 + i}, outside {lo}..{hi}")
    return values.astype(dtype)


_ROW_IN_MESSAGE = re.compile(r"row (\d+)")


def _ip_values(arr: pa.Array, name: str, source: str, row0: int) -> np.ndarray:
    """Addresses as uint32; nulls become 0 (the caller checks where nulls are allowed)."""
    if pa.types.is_integer(arr.type):
        if arr.null_count:
            arr = pc.fill_null(arr, 0)
        return _int_values(arr, name, source, row0, np.dtype(np.uint32), 0, 0xFFFF_FFFF)
    if pa.types.is_null(arr.type) or arr.null_count == len(arr):
        return np.zeros(len(arr), dtype=np.uint32)
    if not (pa.types.is_dictionary(arr.type) or pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())  # string_view
    try:
        try:
            values = ips_from_strings(arr, what=f"{source}: column {name!r}")
        except FastpathError:
            if not pa.types.is_dictionary(arr.type):
                raise
            # A dictionary entry is not an address: read the rows themselves, so the error
            # names the first row that uses a bad entry, and an entry no row uses is no fault.
            values = ips_from_strings(arr.cast(arr.type.value_type), what=f"{source}: column {name!r}")
    except FastpathError as e:
        # ips_from_strings counts rows from the batch's start; count them from the source's.
        raise FastpathError(_ROW_IN_MESSAGE.sub(lambda m: f"row {row0 + int(m.group(1))}", str(e), count=1)) from None
    if arr.null_count:
        values = np.where(arr.is_valid().to_numpy(zero_copy_only=False), values, np.uint32(0))
    return values


def _ts_values(arr: pa.Array, source: str, row0: int) -> np.ndarray:
    _no_nulls(arr, "ts", source, row0)
    if pa.types.is_timestamp(arr.type):
        scale = _NS_PER_UNIT[arr.type.unit]
        ints = arr.view(pa.int64()).to_numpy(zero_copy_only=False)
        if scale != 1:
            limit = np.iinfo(np.int64).max // scale
            over = np.flatnonzero(np.abs(ints) > limit)
            if over.size:
                raise FastpathError(f"{source}: column 'ts' at row {row0 + int(over[0])} overflows nanoseconds")
            ints = ints * np.int64(scale)
    else:
        ints = _int_values(arr, "ts", source, row0, np.dtype(np.int64), -(1 << 63), (1 << 63) - 1)
    if ints.size:
        if ints.min() < 0:
            i = int(np.flatnonzero(ints < 0)[0])
            raise FastpathError(f"{source}: column 'ts' is negative ({ints[i]}) at row {row0 + i}")
        back = ints[1:] < ints[:-1]
        if back.any():
            i = int(np.flatnonzero(back)[0]) + 1
            raise FastpathError(f"{source}: column 'ts' goes back in time at row {row0 + i} "
                                f"({_iso(ints[i])} after {_iso(ints[i - 1])}); rows must be in time order")
    return ints


def _iso(ns) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC (``2023-11-14T22:13:20.000000123Z``), and the integer."""
    ns = int(ns)
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        import datetime as _dt

        stamp = _dt.datetime.fromtimestamp(secs, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(ns)
    return f"{stamp}.{frac:09d}Z = {ns} ns"


def _proto_values(arr: pa.Array, source: str, row0: int) -> pa.Array:
    """A text ``proto`` column (``tcp``, ``UDP``, ``sctp``, or a number as text) as uint8."""
    from ..codes import PROTOCOLS

    _no_nulls(arr, "proto", source, row0)
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    words = enc.dictionary.to_pylist()
    codes = []
    for w in words:
        key = (w or "").strip().lower()
        code = PROTOCOLS.get(key)
        if code is None and key.isdigit() and int(key) <= 0xFF:
            code = int(key)
        codes.append(-1 if code is None else code)
    table = np.array(codes + [-1], dtype=np.int16)
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    values = table[idx]
    bad = np.flatnonzero(values < 0)
    if bad.size:
        i = int(bad[0])
        raise FastpathError(f"{source}: column 'proto' holds {words[int(idx[i])]!r} at row {row0 + i}; "
                            f"use tcp, udp, sctp or a protocol number")
    return pa.array(values.astype(np.uint8))


def _duration_values(arr: pa.Array, source: str, row0: int) -> np.ndarray:
    """``duration`` as float64 seconds; a null or a NaN is NaN: the row gives none (the replay's default
    for it), as pandas writes a missing float and ``replay --with-flows`` writes such a row."""
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)   # nulls read as NaN
    bad = (values < 0) | np.isinf(values)                            # NaN compares false: not given
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FastpathError(f"{source}: column 'duration' holds {values[i]} at row {row0 + i}; "
                            f"seconds must be finite and >= 0")
    return values


#: The last dictionary turned into Python strings (and its entries that are not UTF-8),
#: reused while batches share it.
_last_dictionary: list = [None, None, None]


def _dictionary_strings(dictionary: pa.Array) -> tuple[list, np.ndarray]:
    """The entries as Python strings (None: a null entry, or one that is not UTF-8 text), and
    the positions of the entries that are not UTF-8 (checked per entry, so only rows that
    use one are at fault)."""
    cached, strings, bad = _last_dictionary
    if cached is not None and (cached is dictionary or (len(cached) == len(dictionary) and cached.equals(dictionary))):
        return strings, bad
    try:
        dictionary.validate(full=True)
        strings = dictionary.to_pylist()
        bad = np.zeros(0, np.int64)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raw = dictionary.cast(pa.large_binary()).to_pylist() if _is_text(dictionary.type) else dictionary.to_pylist()
        strings, bad_list = [], []
        for i, b in enumerate(raw):
            try:
                strings.append(b.decode("utf-8") if isinstance(b, bytes) else b)
            except UnicodeDecodeError:
                strings.append(None)
                bad_list.append(i)
        bad = np.asarray(bad_list, np.int64)
    _last_dictionary[:] = [dictionary, strings, bad]
    return strings, bad


def _checked_indices(arr: pa.DictionaryArray, name: str, source: str, row0: int) -> pa.DictionaryArray:
    """A dictionary column whose indices all point into its dictionary, and whose rows that
    point at a null entry are null themselves (never read as the entry at slot 0).

    Raises
    ------
    FastpathError
        An index outside the dictionary, naming the column and the row.
    """
    indices, size = arr.indices, len(arr.dictionary)
    if not len(indices):
        return arr
    valid = indices.is_valid().to_numpy(zero_copy_only=False) if indices.null_count else None
    codes = (pc.fill_null(indices, 0) if indices.null_count else indices).to_numpy(zero_copy_only=False)
    out = (codes < 0) | (codes >= size)
    if valid is not None:
        out &= valid
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise FastpathError(f"{source}: column {name!r} at row {row0 + i} points at dictionary entry {int(codes[i])}, "
                            f"outside the column's {size} entries (a corrupt file?)")
    if arr.dictionary.null_count:
        null_entry = arr.dictionary.is_null().to_numpy(zero_copy_only=False)[codes]
        if null_entry.any():
            mask = null_entry if valid is None else (null_entry | ~valid)
            arr = pa.DictionaryArray.from_arrays(pa.array(codes, type=indices.type, mask=mask), arr.dictionary)
    return arr


def _name_values(arr: pa.Array, source: str, row0: int = 0) -> tuple[np.ndarray, list[str]]:
    if pa.types.is_null(arr.type):
        return np.full(len(arr), -1, dtype=np.int32), []
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    arr = _checked_indices(arr, "dst_name", source, row0)
    indices = arr.indices
    if indices.null_count:
        indices = pc.fill_null(indices, -1)
    codes = indices.to_numpy(zero_copy_only=False)
    if codes.dtype != np.int32:
        if len(arr.dictionary) > np.iinfo(np.int32).max:
            raise FastpathError(f"{source}: column 'dst_name' has more than 2**31 distinct names")
        codes = codes.astype(np.int32)
    dictionary = arr.dictionary
    if dictionary.null_count:  # a code pointing at a null name is a row without a name
        null_codes = np.flatnonzero(dictionary.is_null().to_numpy(zero_copy_only=False))
        codes = np.where(np.isin(codes, null_codes), np.int32(-1), codes)
    strings, not_text = _dictionary_strings(dictionary)
    if not_text.size:
        used = np.flatnonzero(np.isin(codes, not_text))
        if used.size:  # an entry no row uses is no fault of the trace's
            i = int(used[0])
            raw = dictionary.cast(pa.large_binary())[int(codes[i])].as_py()[:64]
            raise FastpathError(f"{source}: column 'dst_name' at row {row0 + i} holds {raw!r}, not UTF-8 text")
    return codes, strings


# --------------------------------------------------------------------------- batches

def _columns(batch: Any, source: str) -> tuple[dict[str, pa.Array], int]:
    """The trace columns of ``batch`` as single Arrow arrays, and the row count."""
    if isinstance(batch, pa.Table):
        check_schema(batch.schema, source)
        if any(batch.column(n).num_chunks > 1 for n in TRACE_COLUMNS if n in batch.schema.names):
            batch = batch.select([n for n in TRACE_COLUMNS if n in batch.schema.names]).combine_chunks()
        cols = {}
        for name in TRACE_COLUMNS:
            if name in batch.schema.names:
                col = batch.column(name)
                cols[name] = col.chunk(0) if col.num_chunks else pa.array([], type=col.type)
        return cols, batch.num_rows
    if isinstance(batch, pa.RecordBatch):
        check_schema(batch.schema, source)
        return {n: batch.column(n) for n in TRACE_COLUMNS if n in batch.schema.names}, batch.num_rows
    if isinstance(batch, Mapping):
        cols = {}
        for name in TRACE_COLUMNS:
            if name in batch:
                try:
                    cols[name] = pa.array(batch[name])
                except (pa.ArrowException, TypeError, ValueError) as e:
                    raise FastpathError(f"{source}: column {name!r} cannot be read: {str(e).splitlines()[0]}") from None
        check_schema(pa.schema([(n, a.type) for n, a in cols.items()]), source)
        lengths = {n: len(a) for n, a in cols.items()}
        if len(set(lengths.values())) > 1:
            raise FastpathError(f"{source}: columns have different lengths: "
                                + ", ".join(f"{n}={k}" for n, k in lengths.items()))
        return cols, next(iter(lengths.values()))
    raise FastpathError(f"{source}: expected a pyarrow RecordBatch or Table or a dict of arrays, "
                        f"got {type(batch).__name__}")


def normalize_batch(batch: pa.RecordBatch | pa.Table | Mapping[str, Any], source: str = "<batch>",
                    *, row_offset: int = 0) -> Flows:
    """Check one batch of a trace and return it as :class:`Flows`.

    Columns that already have the kernels' type (uint32 addresses, uint16
    ports, uint8 proto, int64/timestamp[ns] ts, ...) are passed through
    zero-copy; other integer types are cast after a range check; dotted-quad
    strings are parsed vectorized; ``dst_name`` becomes codes into a list of
    names. Columns other than the trace columns are ignored.

    Parameters
    ----------
    batch
        A ``pyarrow.RecordBatch`` or ``Table``, or a dict of numpy arrays (or
        anything ``pyarrow.array`` takes) keyed by column name.
    source
        What to call the batch in error messages (a file name).
    row_offset
        Row number of the batch's first row within ``source``, for messages.

    Raises
    ------
    FastpathError
        A missing column, a wrong type, a null where none is allowed (a row
        with neither ``dst_ip`` nor ``dst_name``, or with both), a value out of
        range, a negative ``ts`` or one that goes back in time. The message
        names ``source``, the column and the row.
    """
    cols, n = _columns(batch, source)
    for name in ("src_ip", "dst_ip"):
        if name in cols and pa.types.is_dictionary(cols[name].type):
            cols[name] = _checked_indices(cols[name], name, source, row_offset)
    row0 = row_offset
    _no_nulls(cols["src_ip"], "src_ip", source, row0)
    src_ip = _ip_values(cols["src_ip"], "src_ip", source, row0)
    if _is_text_like(cols["proto"].type):
        cols["proto"] = _proto_values(cols["proto"], source, row0)     # tcp/udp/sctp as text
    ints = {name: _int_values(cols[name], name, source, row0, *INT_COLUMNS[name])
            for name in INT_COLUMNS if name in cols}
    ts = _ts_values(cols["ts"], source, row0) if "ts" in cols else None
    duration = _duration_values(cols["duration"], source, row0) if "duration" in cols else None

    name_code = name_dict = None
    if "dst_name" in cols:
        name_code, name_dict = _name_values(cols["dst_name"], source, row0)
    if "dst_ip" in cols:
        dst = cols["dst_ip"]
        dst_ip = _ip_values(dst, "dst_ip", source, row0)
        if dst.null_count or name_code is not None:
            has_ip = dst.is_valid().to_numpy(zero_copy_only=False) if dst.null_count else np.ones(n, np.bool_)
            has_name = name_code >= 0 if name_code is not None else np.zeros(n, np.bool_)
            neither = np.flatnonzero(~has_ip & ~has_name)
            if neither.size:
                raise FastpathError(f"{source}: column 'dst_ip' is null at row {row0 + int(neither[0])} "
                                    f"and the row has no dst_name")
            both = np.flatnonzero(has_ip & has_name)
            if both.size:
                raise FastpathError(f"{source}: row {row0 + int(both[0])} has both 'dst_ip' and 'dst_name'; "
                                    f"dst_ip must be null where dst_name is given")
    else:
        missing = np.flatnonzero(name_code < 0)
        if missing.size:
            raise FastpathError(f"{source}: column 'dst_name' is null at row {row0 + int(missing[0])} "
                                f"and the trace has no dst_ip column")
        dst_ip = np.zeros(n, dtype=np.uint32)
    return Flows(src_ip=src_ip, dst_ip=dst_ip, src_port=ints["src_port"], dst_port=ints["dst_port"],
                 proto=ints["proto"], ts=ts, name_code=name_code, name_dict=name_dict,
                 bytes=ints.get("bytes"), packets=ints.get("packets"), duration=duration, n=n)
