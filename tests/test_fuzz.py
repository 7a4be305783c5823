"""Fuzzing the command line with mutated clusters and traces (issue #19, "done means").

Hypothesis mutates valid inputs (the small kubectl List and YAML stream in
tests/data/, and a small synthetic cluster; a synthetic trace of it) the ways
real files break: types swapped, keys dropped, values out of range, names
huge, bytes flipped, inserted and cut off. Every case runs ``fastpath replay``
in-process and must end in one of two ways:

* exit 0, with a results file holding one row per flow of the trace; or
* exit 2, with exactly one stderr line (``fastpath: error: ...``), no traceback,
  and no results file;

and never leave a temporary file behind. Exit 1 (an internal error: a bug that
the CLI caught) fails the test, with the line that names it. Examples are
derandomized, so CI sees the same cases every run; the whole file stays well
under a minute on two cores. Signals and the hand cases of the issue are in
``test_hostile.py``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath.cli import main
from fastpath.cluster.load import load_cluster, read_objects
from fastpath.cluster.synth import synth_cluster
from fastpath.traces import open_trace, synth_trace

DATA = Path(__file__).resolve().parent / "data"
#: Hypothesis settings shared by every fuzz test: repeatable, no per-example deadline.
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

#: Values swapped in for a field: other types, out-of-range numbers, bad addresses, a long name.
ODD_VALUES = [None, True, False, 0, -1, 65536, 2**64, 1.5, float("inf"), "", " ", "x" * 300, "10.0.0.300",
              "10.244.0.0/33", "::1", "0.0.0.0/0", "-", "TCP", "udp", "\u00e9\u4e2d", [], [1, "a"], [None],
              {}, {"a": {"b": []}}, {"name": 5}]


# --------------------------------------------------------------------------- inputs

def _base_clusters() -> dict[str, list]:
    small = read_objects(DATA / "small-list.json")
    stream = read_objects(DATA / "small-stream.yaml")
    synth = synth_cluster(2, 3, 3, namespaces=2, zones=2, seed=5)["items"]
    return {"small-list": small, "small-stream": stream, "synth": synth}


BASES = _base_clusters()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The base cluster file, a 64-flow trace of it, and a private compiled-table cache."""
    d = tmp_path_factory.mktemp("fuzz")
    cluster = d / "cluster.json"
    cluster.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": BASES["small-list"]}))
    trace = d / "trace.arrow"
    synth_trace(load_cluster(cluster), 64, seed=7, out=trace)
    table = pa.ipc.open_file(pa.memory_map(str(trace))).read_all()
    old = os.environ.get("FASTPATH_CACHE_DIR")
    os.environ["FASTPATH_CACHE_DIR"] = str(d / "cache")
    yield {"cluster": cluster, "trace": trace, "table": table}
    if old is None:
        os.environ.pop("FASTPATH_CACHE_DIR", None)
    else:
        os.environ["FASTPATH_CACHE_DIR"] = old


def run_replay(cluster: Path, trace: Path, folder: Path, expect_rows: int | None = None) -> tuple[int, str]:
    """``fastpath replay`` in-process; checks the contract; returns (status, stderr)."""
    out = folder / "results.arrow"
    before = set(os.listdir(folder))
    err, sink = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
        try:
            rc = main(["replay", str(cluster), str(trace), "-o", str(out), "--quiet", "--threads", "1"])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
    text = err.getvalue()
    assert rc in (0, 2), f"exit {rc}: {text}"
    assert "Traceback" not in text, text
    if rc == 0:
        assert out.exists()
        rows = pa.ipc.open_file(pa.memory_map(str(out))).read_all().num_rows
        want = expect_rows if expect_rows is not None else open_trace(trace).num_rows
        assert rows == want, (rows, want)
        out.unlink()
    else:
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastpath: error: "), text
        assert len(lines[0]) < 2100, len(lines[0])
        assert not out.exists()
    after = set(os.listdir(folder))
    assert after == before, sorted(after ^ before)  # no temporary (or any other) file left
    return rc, text


# --------------------------------------------------------------------------- cluster mutations

def _slots(tree) -> list[tuple[object, object]]:
    """Every (container, key-or-index) of a JSON-like tree, parents before children."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            out.append((node, k))
            if isinstance(v, (dict, list)):
                stack.append(v)
    return out


@st.composite
def mutated_cluster(draw) -> tuple[list, str]:
    """A base cluster's objects with 1-3 fields swapped, dropped or duplicated; and how to write it."""
    name = draw(st.sampled_from(sorted(BASES)))
    objs = copy.deepcopy(BASES[name])
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(objs)
        parent, key = slots[draw(st.integers(0, len(slots) - 1))]
        op = draw(st.sampled_from(["swap", "swap", "drop", "wrap", "copy-object"]))
        if op == "swap":
            parent[key] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
        elif op == "drop":
            del parent[key]
        elif op == "wrap":                       # a value where a list of it (or a mapping) belongs
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
        else:                                    # an object twice (a duplicate, or a clash)
            objs.append(copy.deepcopy(objs[draw(st.integers(0, len(objs) - 1))]))
    return objs, draw(st.sampled_from(["json", "yaml"]))


def _write_cluster(objs: list, fmt: str, path: Path) -> Path:
    doc = {"apiVersion": "v1", "kind": "List", "items": objs}
    if fmt == "json":
        path.write_text(json.dumps(doc))
    else:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


@settings(FUZZ, max_examples=20)
@given(case=mutated_cluster())
def test_mutated_cluster_objects(env, case):
    objs, fmt = case
    with tempfile.TemporaryDirectory() as d:
        cluster = _write_cluster(objs, fmt, Path(d) / f"cluster.{fmt}")
        run_replay(cluster, env["trace"], Path(d), expect_rows=env["table"].num_rows)


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    """``data`` with bytes flipped, a run inserted, or the end cut off."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "flip", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@settings(FUZZ, max_examples=12)
@given(data=st.data(), fmt=st.sampled_from(["json", "yaml"]))
def test_damaged_cluster_bytes(env, data, fmt):
    with tempfile.TemporaryDirectory() as d:
        clean = _write_cluster(BASES["small-list"], fmt, Path(d) / f"clean.{fmt}").read_bytes()
        (Path(d) / f"clean.{fmt}").unlink()
        cluster = Path(d) / f"cluster.{fmt}"
        cluster.write_bytes(data.draw(damaged_bytes(clean)))
        run_replay(cluster, env["trace"], Path(d), expect_rows=env["table"].num_rows)


# --------------------------------------------------------------------------- trace mutations

#: Types a column is cast to (unsafe casts: values wrap or truncate as a careless writer's would).
ODD_TYPES = [pa.string(), pa.int64(), pa.int8(), pa.uint64(), pa.float64(), pa.float32(), pa.bool_(),
             pa.timestamp("s"), pa.large_string(), pa.binary(), pa.null()]


def _cast(col: pa.ChunkedArray, t: pa.DataType) -> pa.Array:
    arr = col.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(t):
        return pa.nulls(len(arr))
    try:
        return arr.cast(t, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([str(v) for v in arr.to_pylist()], t if pa.types.is_string(t) else pa.string())


@st.composite
def mutated_trace(draw, table: pa.Table) -> pa.Table:
    """The base trace with 1-3 columns dropped, retyped, nulled, pushed out of range or reordered."""
    for _ in range(draw(st.integers(1, 3))):
        names = table.schema.names
        name = draw(st.sampled_from(names))
        i = names.index(name)
        op = draw(st.sampled_from(["drop", "cast", "cast", "null", "value", "dictionary", "swap-rows", "rename"]))
        col = table.column(i)
        n = table.num_rows
        if op == "drop":
            table = table.remove_column(i)
        elif op == "cast":
            table = table.set_column(i, name, _cast(col, draw(st.sampled_from(ODD_TYPES))))
        elif op == "null":
            rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
            mask = np.zeros(n, bool)
            mask[rows] = True
            arr = col.combine_chunks()
            table = table.set_column(i, name, pc_if_null(arr, mask))
        elif op == "value":
            row = draw(st.integers(0, n - 1))
            value = draw(st.sampled_from([-1, 0, 65536, 70000, 2**32, 2**63 - 1, -(2**63)]))
            ints = np.asarray(_cast(col, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), np.int64).copy()
            ints[row] = value
            table = table.set_column(i, name, pa.array(ints))
        elif op == "dictionary":
            arr = _cast(col, pa.string()) if not pa.types.is_dictionary(col.type) else col.combine_chunks()
            if not pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_encode()
            table = table.set_column(i, name, arr)
        elif op == "swap-rows":
            a, b = sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)))
            order = np.arange(n)
            order[[a, b]] = order[[b, a]]
            table = table.set_column(i, name, col.take(pa.array(order)))
        else:
            table = table.rename_columns([draw(st.sampled_from(["src_ip", "ts", "x", ""])) if k == i else c
                                          for k, c in enumerate(names)])
    return table


def pc_if_null(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), pa.nulls(len(arr), arr.type), arr)


def _write_trace(table: pa.Table, fmt: str, path: Path) -> Path:
    if fmt == "parquet":
        pq.write_table(table, path, compression="none")
    elif fmt == "stream":
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table, max_chunksize=20)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=20)
    return path


@settings(FUZZ, max_examples=20)
@given(data=st.data(), fmt=st.sampled_from(["arrow", "stream", "parquet"]))
def test_mutated_trace_columns(env, data, fmt):
    table = data.draw(mutated_trace(env["table"]))
    with tempfile.TemporaryDirectory() as d:
        trace = _write_trace(table, fmt, Path(d) / f"trace.{'parquet' if fmt == 'parquet' else 'arrow'}")
        run_replay(env["cluster"], trace, Path(d), expect_rows=table.num_rows)


@settings(FUZZ, max_examples=12)
@given(data=st.data(), fmt=st.sampled_from(["arrow", "stream", "parquet"]))
def test_damaged_trace_bytes(env, data, fmt):
    with tempfile.TemporaryDirectory() as d:
        name = f"trace.{'parquet' if fmt == 'parquet' else 'arrow'}"
        clean = _write_trace(env["table"], fmt, Path(d) / name).read_bytes()
        trace = Path(d) / name
        trace.write_bytes(data.draw(damaged_bytes(clean)))
        run_replay(env["cluster"], trace, Path(d))
