"""Trace schema, normalize_batch, open_trace over every format, synth_trace."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.cluster.model import Cluster, ContainerPort, Node, Pod, Service, ServicePort
from fastpath.errors import FastpathError
from fastpath.traces import (DEFAULT_BATCH_SIZE, Flows, TraceMix, normalize_batch, open_trace, synth_trace,
                             trace_schema)
from fastpath.traces import synth as synth_mod

IP = lambda s: int(ipaddress.IPv4Address(s))  # noqa: E731


# --------------------------------------------------------------------------- helpers

def small_cluster(nodes: int = 3, pods_per_node: int = 4, services: int = 3, node_port: bool = True) -> Cluster:
    """Nodes 192.168.0.10+i with pod CIDR 10.244.i.0/24, pods .2.., ClusterIPs 10.96.0.10+k."""
    N, P, S = [], [], []
    for i in range(nodes):
        N.append(Node(f"node-{i}", IP("192.168.0.10") + i, None, ((IP("10.244.0.0") + (i << 8), 24),), "z1"))
        for j in range(pods_per_node):
            app = f"app{j % services}"
            ns = "shop" if (j % services) % 2 == 0 else "default"
            P.append(Pod(ns, f"{app}-{i}-{j}", f"node-{i}", False, IP("10.244.0.2") + (i << 8) + j, True, False,
                         (ContainerPort("c", 8080, 6, "http"),), {"app": app}))
        P.append(Pod("kube-system", f"proxy-{i}", f"node-{i}", True, IP("192.168.0.10") + i, True, False,
                     (ContainerPort("c", 10256, 6, None),)))
    for k in range(services):
        kind = "NodePort" if (k == 0 and node_port) else "ClusterIP"
        S.append(Service("shop" if k % 2 == 0 else "default", f"app{k}", kind, (IP("10.96.0.10") + k,), False,
                         (ServicePort("http", 80, 6, 8080, 30080 if kind == "NodePort" else None),),
                         {"app": f"app{k}"}, (), (), False, 10800, "Cluster", "Cluster", None))
    return Cluster(N, P, S, [])


def table(n: int = 10, **override) -> pa.Table:
    cols = {
        "src_ip": pa.array(np.arange(n, dtype=np.uint32) + IP("10.244.0.2")),
        "dst_ip": pa.array(np.full(n, IP("10.96.0.10"), dtype=np.uint32)),
        "src_port": pa.array(np.arange(n, dtype=np.uint16) + 40000),
        "dst_port": pa.array(np.full(n, 80, dtype=np.uint16)),
        "proto": pa.array(np.full(n, 6, dtype=np.uint8)),
        "ts": pa.array(np.arange(n, dtype=np.int64) * 1000, type=pa.timestamp("ns")),
    }
    for k, v in override.items():
        if v is None:
            cols.pop(k)
        else:
            cols[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)
    return pa.table(cols)


def write_arrow(path: Path, tbl: pa.Table, chunk: int | None = None) -> Path:
    with pa.ipc.new_file(str(path), tbl.schema) as w:
        w.write_table(tbl, max_chunksize=chunk)
    return path


def write_stream(path: Path, tbl: pa.Table, chunk: int | None = None) -> Path:
    with pa.ipc.new_stream(str(path), tbl.schema) as w:
        w.write_table(tbl, max_chunksize=chunk)
    return path


def one_line_error(excinfo, *parts: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# --------------------------------------------------------------------------- schema acceptance

def test_canonical_columns_pass_through_zero_copy():
    tbl = table(100)
    batch = tbl.to_batches()[0]
    f = normalize_batch(batch)
    assert f.n == 100 and len(f) == 100
    assert f.src_ip.dtype == np.uint32 and f.src_port.dtype == np.uint16 and f.proto.dtype == np.uint8
    assert f.ts.dtype == np.int64 and f.ts[3] == 3000
    assert f.name_code is None and f.bytes is None and f.packets is None
    for name in ("src_ip", "dst_ip", "src_port", "dst_port", "proto"):
        arr = getattr(f, name)
        assert not arr.flags.writeable, name  # a view of Arrow memory, not a copy
        assert arr.ctypes.data == batch.column(name).buffers()[1].address
        assert arr.flags.c_contiguous


def test_string_ips_equal_integer_ips():
    tbl = table(5)
    as_text = table(5, src_ip=[str(ipaddress.IPv4Address(int(x))) for x in tbl.column("src_ip").to_numpy()],
                    dst_ip=pa.array(["10.96.0.10"] * 5).dictionary_encode())
    a, b = normalize_batch(tbl), normalize_batch(as_text)
    np.testing.assert_array_equal(a.src_ip, b.src_ip)
    np.testing.assert_array_equal(a.dst_ip, b.dst_ip)
    assert b.src_ip.dtype == np.uint32


def test_wide_integer_columns_are_range_checked_and_cast():
    tbl = table(4, src_port=np.array([0, 1, 65535, 40000], dtype=np.int64),
                proto=np.array([6, 17, 132, 255], dtype=np.int64),
                src_ip=np.array([0, 1, 2**32 - 1, 7], dtype=np.int64),
                bytes=np.array([0, 10, 2**62, 5], dtype=np.int64),
                packets=np.array([1, 2, 3, 2**32 - 1], dtype=np.uint64))
    f = normalize_batch(tbl)
    assert f.src_port.dtype == np.uint16 and list(f.src_port) == [0, 1, 65535, 40000]
    assert f.proto.dtype == np.uint8 and list(f.proto) == [6, 17, 132, 255]
    assert f.src_ip.dtype == np.uint32 and f.src_ip[2] == 2**32 - 1
    assert f.bytes.dtype == np.uint64 and f.bytes[2] == 2**62
    assert f.packets.dtype == np.uint32 and f.packets[3] == 2**32 - 1


@pytest.mark.parametrize("ts", [
    pa.array([0, 5, 5, 9], type=pa.int64()),
    pa.array([0, 5, 5, 9], type=pa.timestamp("ns")),
    pa.array([0, 5, 5, 9], type=pa.timestamp("ns", tz="UTC")),
    pa.array([0, 5, 5, 9], type=pa.uint32()),
])
def test_ts_types(ts):
    f = normalize_batch(table(4, ts=ts))
    assert f.ts.dtype == np.int64 and list(f.ts) == [0, 5, 5, 9]


def test_ts_coarser_units_scale_to_ns():
    f = normalize_batch(table(3, ts=pa.array([1, 2, 3], type=pa.timestamp("ms"))))
    assert list(f.ts) == [1_000_000, 2_000_000, 3_000_000]


def test_duration_nan_or_null_is_the_default():
    """A NaN ``duration`` is a row without one, as a null is (pandas writes NaN for a missing float,
    Zeek's ``-`` reads as NaN, and ``replay --with-flows`` writes NaN where the row gave none)."""
    f = normalize_batch(table(4, duration=pa.array([1.5, np.nan, None, 0.0], pa.float64())))
    assert f.duration.dtype == np.float64 and f.duration[0] == 1.5 and f.duration[3] == 0.0
    assert np.isnan(f.duration[1]) and np.isnan(f.duration[2])
    for bad, shown in ((-1.0, "-1.0"), (np.inf, "inf")):
        with pytest.raises(FastpathError) as e:
            normalize_batch(table(3, duration=np.array([1.0, np.nan, bad])), source="flows.arrow")
        one_line_error(e, f"flows.arrow: column 'duration' holds {shown} at row 2")


def test_results_with_flows_replay_as_a_trace(tmp_path):
    """``replay --with-flows`` writes the input's columns (``duration`` NaN where a row gave none): the
    results file is a trace itself, and replays to the same results."""
    from fastpath.cluster.compile import compile_cluster
    from fastpath.replay import replay

    dp = compile_cluster(small_cluster())
    dur = pa.array([None if i % 3 else 2.5 for i in range(10)], pa.float64())
    trace = write_arrow(tmp_path / "t.arrow", table(10, duration=dur))
    replay(dp, trace, tmp_path / "r.arrow", with_flows=True, progress=False)
    again = replay(dp, tmp_path / "r.arrow", tmp_path / "r2.arrow", progress=False)
    assert again.flows == 10
    first = pa.ipc.open_file(str(tmp_path / "r.arrow")).read_all()
    second = pa.ipc.open_file(str(tmp_path / "r2.arrow")).read_all()
    assert second.equals(first.select(second.column_names).replace_schema_metadata(second.schema.metadata))


@pytest.mark.parametrize("encode", [False, True])
def test_dst_name_plain_or_dictionary(encode):
    names = pa.array(["web", None, "web.shop", "web", None])
    if encode:
        names = names.dictionary_encode()
    f = normalize_batch(table(5, dst_name=names, dst_ip=pa.array([None, 7, None, None, 9], type=pa.uint32())))
    assert f.name_code.dtype == np.int32
    got = [f.name_dict[c] if c >= 0 else None for c in f.name_code]
    assert got == ["web", None, "web.shop", "web", None]
    assert list(f.dst_ip) == [0, 7, 0, 0, 9]


def test_dst_name_without_dst_ip_column():
    f = normalize_batch(table(2, dst_ip=None, dst_name=["a", "b"]))
    assert list(f.dst_ip) == [0, 0] and f.name_dict == ["a", "b"]


def test_dict_of_numpy_arrays_and_extra_columns_ignored():
    d = {"src_ip": np.array([1, 2], np.uint32), "dst_ip": np.array([3, 4], np.uint32),
         "src_port": np.array([5, 6]), "dst_port": np.array([7, 8]), "proto": np.array([6, 17]),
         "comment": np.array(["x", "y"])}
    f = normalize_batch(d)
    assert list(f.dst_port) == [7, 8] and f.dst_port.dtype == np.uint16 and f.ts is None


def test_multi_chunk_table_with_differing_dictionaries():
    a = table(3, dst_ip=pa.array([None] * 3, pa.uint32()), dst_name=pa.array(["x", "y", "x"]).dictionary_encode())
    b = table(2, dst_ip=pa.array([None] * 2, pa.uint32()), dst_name=pa.array(["z", "x"]).dictionary_encode())
    b = b.set_column(5, "ts", pa.array([5000, 6000], pa.timestamp("ns")))
    f = normalize_batch(pa.concat_tables([a, b]))
    assert [f.name_dict[c] for c in f.name_code] == ["x", "y", "x", "z", "x"]


def test_flows_slice_and_concat():
    a = normalize_batch(table(4, dst_ip=pa.array([None, 1, None, 2], pa.uint32()), dst_name=["p", None, "q", None]))
    b = normalize_batch(table(3, dst_ip=pa.array([None, 3, None], pa.uint32()), dst_name=["q", None, "r"]))
    c = Flows.concat([a, b.slice(0, 3)])
    assert c.n == 7
    assert [c.name_dict[k] if k >= 0 else None for k in c.name_code] == ["p", None, "q", None, "q", None, "r"]
    s = c.slice(2, 5)
    assert s.n == 3 and list(s.dst_ip) == [0, 2, 0]


# --------------------------------------------------------------------------- bad input

BAD = [
    ("missing", dict(src_port=None), "missing required column 'src_port'"),
    ("missing dst", dict(dst_ip=None), "'dst_ip'"),
    ("float port", dict(dst_port=np.array([80.0] * 10)), "column 'dst_port' has type double"),
    ("unknown proto text", dict(proto=["tcp"] * 9 + ["gre"]), "column 'proto' holds 'gre' at row 9"),   # tcp/udp/sctp text is fine
    ("float proto", dict(proto=[6.0] * 10), "column 'proto' has type double"),
    ("null port", dict(src_port=pa.array([1] * 6 + [None] + [1] * 3, pa.uint16())), "column 'src_port' is null at row 6"),
    ("proto 256", dict(proto=np.array([6] * 9 + [256])), "column 'proto' holds 256 at row 9, outside 0..255"),
    ("port -1", dict(dst_port=np.array([80] * 3 + [-1] + [80] * 6)), "column 'dst_port' holds -1 at row 3"),
    ("port 70000", dict(src_port=np.array([70000] * 10)), "column 'src_port' holds 70000 at row 0, outside 0..65535"),
    ("ip too big", dict(src_ip=np.array([2**32] * 10, dtype=np.int64)), "column 'src_ip' holds 4294967296 at row 0"),
    ("bad ip text", dict(src_ip=["10.0.0.1"] * 4 + ["10.0.0.300"] + ["1.1.1.1"] * 5), "column 'src_ip': row 4"),
    ("null dst no name", dict(dst_ip=pa.array([1] * 8 + [None, 1], pa.uint32())),
     "column 'dst_ip' is null at row 8 and the row has no dst_name"),
    ("both", dict(dst_name=["a"] + [None] * 9), "row 0 has both 'dst_ip' and 'dst_name'"),
    ("negative ts", dict(ts=np.array([0, 1, -5] + [9] * 7)), "column 'ts' is negative (-5) at row 2"),
    ("ts back", dict(ts=pa.array([0, 1, 2, 3, 4, 3, 6, 7, 8, 9], pa.timestamp("ns"))),
     "column 'ts' goes back in time at row 5"),
    ("ts date", dict(ts=pa.array([0] * 10, pa.date32())), "column 'ts' has type date32"),
    ("bytes negative", dict(bytes=np.array([1] * 9 + [-1])), "column 'bytes' holds -1 at row 9"),
    ("packets null", dict(packets=pa.array([None] * 10, pa.uint32())), "column 'packets' is null at row 0"),
]


@pytest.mark.parametrize("override,expect", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_batches_name_source_column_and_row(override, expect):
    with pytest.raises(FastpathError) as e:
        normalize_batch(table(10, **override), source="flows.arrow")
    one_line_error(e, "flows.arrow: ", expect)


def test_float_column_hint_mentions_pandas():
    with pytest.raises(FastpathError, match="pandas"):
        normalize_batch(table(3, src_port=np.array([1.0, np.nan, 2.0])))


def test_row_offset_counts_from_the_file_start():
    with pytest.raises(FastpathError, match=r"row 1004\b"):
        normalize_batch(table(10, src_ip=["1.1.1.1"] * 4 + ["1.1.1"] + ["1.1.1.1"] * 5), "t", row_offset=1000)
    with pytest.raises(FastpathError, match=r"row 1007\b"):
        normalize_batch(table(10, proto=np.array([1] * 7 + [999] * 3)), "t", row_offset=1000)


def test_dict_input_length_mismatch_and_wrong_object():
    with pytest.raises(FastpathError, match="different lengths"):
        normalize_batch({"src_ip": np.zeros(2, np.uint32), "dst_ip": np.zeros(3, np.uint32),
                         "src_port": np.zeros(2, int), "dst_port": np.zeros(2, int), "proto": np.zeros(2, int)})
    with pytest.raises(FastpathError, match="expected a pyarrow RecordBatch"):
        normalize_batch([1, 2, 3])


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40))
def test_range_check_matches_a_plain_loop(values):
    tbl = table(len(values), dst_port=np.array(values, dtype=np.int64))
    bad = [i for i, v in enumerate(values) if not 0 <= v <= 65535]
    if bad:
        with pytest.raises(FastpathError, match=rf"holds {values[bad[0]]} at row {bad[0]},"):
            normalize_batch(tbl)
    else:
        assert normalize_batch(tbl).dst_port.tolist() == values


# --------------------------------------------------------------------------- reading files

def big_table(n: int) -> pa.Table:
    names = pa.array([None if i % 3 else f"svc-{i % 7}" for i in range(n)]).dictionary_encode()
    dst = pa.array([None if i % 3 == 0 else i for i in range(n)], pa.uint32())
    return table(n, dst_ip=dst, dst_name=names, bytes=np.arange(n, dtype=np.uint64))


def check_rows(reader, tbl: pa.Table, batch_size: int) -> None:
    sizes, src, names = [], [], []
    for f in reader:
        sizes.append(f.n)
        src.append(np.asarray(f.src_ip))
        names += [f.name_dict[c] if c >= 0 else None for c in f.name_code]
    n = tbl.num_rows
    assert reader.num_rows == n
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert len(sizes) == reader.num_batches
    np.testing.assert_array_equal(np.concatenate(src), tbl.column("src_ip").to_numpy())
    assert names == tbl.column("dst_name").to_pylist()


@pytest.mark.parametrize("chunk", [None, 7, 100, 1000])
@pytest.mark.parametrize("batch_size", [1, 64, 333, 5000])
def test_arrow_file_rechunks_in_order(tmp_path, chunk, batch_size):
    tbl = big_table(1000)
    r = open_trace(write_arrow(tmp_path / "t.arrow", tbl, chunk), batch_size=batch_size)
    assert r.format == "arrow-file" and r.schema.names == tbl.schema.names
    check_rows(r, tbl, batch_size)


def test_stream_parquet_feather_and_directory(tmp_path):
    tbl = big_table(900)
    r = open_trace(write_stream(tmp_path / "t.arrows", tbl, 50), batch_size=128)
    assert r.format == "arrow-stream"
    check_rows(r, tbl, 128)
    pq.write_table(tbl, tmp_path / "t.parquet", row_group_size=100)
    r = open_trace(tmp_path / "t.parquet", batch_size=128)
    assert r.format == "parquet"
    check_rows(r, tbl, 128)
    import pyarrow.feather as feather
    feather.write_feather(tbl, tmp_path / "t.feather", chunksize=64)  # lz4-compressed by default
    check_rows(open_trace(tmp_path / "t.feather", batch_size=100), tbl, 100)
    d = tmp_path / "dir"
    (d / "part=1").mkdir(parents=True)
    write_arrow(d / "a.arrow", tbl.slice(0, 300), 40)
    pq.write_table(tbl.slice(300, 350), d / "b.parquet", row_group_size=70)
    write_stream(d / "part=1" / "c.arrows", tbl.slice(650), 33)
    (d / "_SUCCESS").write_text("")
    (d / "README.txt").write_text("not a trace")
    r = open_trace(d, batch_size=128)
    assert r.format == "dataset" and len(r.files) == 3
    check_rows(r, tbl, 128)
    assert r.read_all().n == 900


def test_reader_errors_name_the_file_and_row_in_it(tmp_path):
    tbl = table(1000, proto=np.array([6] * 900 + [300] + [6] * 99))
    r = open_trace(write_arrow(tmp_path / "p.arrow", tbl, 128), batch_size=256)
    with pytest.raises(FastpathError) as e:
        list(r)
    one_line_error(e, "p.arrow: column 'proto' holds 300 at row 900")


def test_time_order_checked_across_batches_and_files(tmp_path):
    ts = np.arange(1000, dtype=np.int64)
    ts[512:] -= 10  # goes back exactly at a batch boundary
    path = write_arrow(tmp_path / "t.arrow", table(1000, ts=ts))
    with pytest.raises(FastpathError) as e:
        list(open_trace(path, batch_size=256))
    one_line_error(e, "t.arrow: column 'ts' goes back in time at row 512")
    d = tmp_path / "d"
    d.mkdir()
    write_arrow(d / "1.arrow", table(10, ts=np.arange(10) + 100))
    write_arrow(d / "2.arrow", table(10, ts=np.arange(10)))
    with pytest.raises(FastpathError) as e:
        list(open_trace(d))
    one_line_error(e, "2.arrow: column 'ts' goes back in time at row 0", "1.arrow")


def test_directory_parts_numbered_without_padding_read_in_number_order(tmp_path):
    """``pyarrow.dataset.write_dataset`` names its files ``part-0`` .. ``part-11`` (and Hive folders
    ``hour=9``, ``hour=10``): read in the order of their numbers, not of their text, so the trace
    written in time order is read in time order."""
    import pyarrow.dataset as ds

    tbl = big_table(1200)                                   # ts in order
    ds.write_dataset(tbl, tmp_path / "parts", format="parquet", max_rows_per_file=100, max_rows_per_group=100)
    assert len(list((tmp_path / "parts").iterdir())) == 12
    r = open_trace(tmp_path / "parts", batch_size=256)
    assert [p.name for p in r.files][:4] == ["part-0.parquet", "part-1.parquet", "part-2.parquet", "part-3.parquet"]
    check_rows(r, tbl, 256)
    for hour in (9, 10):
        (tmp_path / "hive" / f"hour={hour}").mkdir(parents=True)
        write_arrow(tmp_path / "hive" / f"hour={hour}" / "a.arrow", tbl.slice((hour - 9) * 600, 600))
    check_rows(open_trace(tmp_path / "hive", batch_size=256), tbl, 256)


def test_directory_with_differing_columns(tmp_path):
    write_arrow(tmp_path / "a.arrow", table(3))
    write_arrow(tmp_path / "b.arrow", table(3, ts=None))
    with pytest.raises(FastpathError, match="b.arrow: columns .* differ"):
        open_trace(tmp_path)


@pytest.mark.parametrize("kind", ["arrow", "stream", "parquet"])
def test_truncated_files(tmp_path, kind):
    tbl = big_table(5000)
    path = tmp_path / f"t.{kind}"
    if kind == "arrow":
        write_arrow(path, tbl, 500)
    elif kind == "stream":
        write_stream(path, tbl, 500)
    else:
        pq.write_table(tbl, path, row_group_size=500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastpathError) as e:
        list(open_trace(path))
    one_line_error(e, str(path))


def test_not_a_trace(tmp_path):
    (tmp_path / "x.arrow").write_text("src_ip,dst_ip\n1,2\n")
    with pytest.raises(FastpathError, match=r"x.arrow: not a trace"):
        open_trace(tmp_path / "x.arrow")
    (tmp_path / "e.arrow").write_bytes(b"")
    with pytest.raises(FastpathError, match=r"e.arrow: empty file"):
        open_trace(tmp_path / "e.arrow")
    with pytest.raises(FastpathError, match="no such trace"):
        open_trace(tmp_path / "nope.arrow")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastpathError, match="holds no trace files"):
        open_trace(tmp_path / "empty")
    write_arrow(tmp_path / "m.arrow", table(3, proto=None))
    with pytest.raises(FastpathError, match="m.arrow: missing required column 'proto'"):
        open_trace(tmp_path / "m.arrow")
    with pytest.raises(FastpathError, match="batch size"):
        open_trace(tmp_path / "m.arrow", batch_size=0)


def test_empty_trace_and_default_batch_size(tmp_path):
    r = open_trace(write_arrow(tmp_path / "z.arrow", table(0)))
    assert r.num_rows == 0 and list(r) == [] and r.read_all().n == 0
    assert r.batch_size == DEFAULT_BATCH_SIZE == 131072


# --------------------------------------------------------------------------- synth_trace

@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return small_cluster()


def test_synth_is_deterministic_per_seed(tmp_path, cluster):
    a, b, c = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "c.arrow"
    assert synth_trace(cluster, 100_000, seed=3, out=a) == 100_000
    synth_trace(cluster, 100_000, seed=3, out=b, threads=1)
    synth_trace(cluster, 100_000, seed=4, out=c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    d = tmp_path / "d.arrow"  # other batch layout, same rows
    synth_trace(cluster, 100_000, seed=3, out=d, batch_size=10_000)
    x, y = open_trace(a).read_all(), open_trace(d).read_all()
    for name in ("src_ip", "dst_ip", "dst_port", "proto", "ts", "name_code", "bytes"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
    assert not list(tmp_path.glob(".*tmp"))


def classify(f: Flows, cl: Cluster) -> np.ndarray:
    """Each row's kind, told from the row alone (the test's own reading of the model)."""
    pods = {p.ip for p in cl.pods if not p.host_network}
    hosts = {n.internal_ip for n in cl.nodes}
    listening = {(p.ip, c.port) for p in cl.pods if not p.host_network for c in p.ports}
    served = {(ip, sp.port) for s in cl.services for ip in s.cluster_ips for sp in s.ports}
    out = []
    for src, dst, port, code in zip(f.src_ip.tolist(), f.dst_ip.tolist(), f.dst_port.tolist(), f.name_code.tolist()):
        if src not in pods and src not in hosts:
            out.append("north_south")
        elif src in hosts:
            out.append("host")
        elif code >= 0:
            out.append("by_name")
        elif dst == IP("127.0.0.1"):
            out.append("localhost")
        elif (dst, port) in served or (dst, port) in listening:
            out.append("east_west")
        elif ipaddress.IPv4Address(dst) in ipaddress.IPv4Network("10.0.0.0/8"):
            out.append("to_nothing")
        else:
            out.append("egress")
    return np.array(out)


@pytest.mark.parametrize("knobs", [{}, dict(east_west=0.2, to_nothing=0.3, localhost=0.2, north_south=0.0)])
def test_synth_mix_roughly_as_configured(tmp_path, cluster, knobs):
    n = 40_000
    synth_trace(cluster, n, seed=1, out=tmp_path / "t.arrow", **knobs)
    f = open_trace(tmp_path / "t.arrow").read_all()
    kinds = classify(f, cluster)
    mix = TraceMix(**knobs)
    want = np.array([getattr(mix, k) for k in TraceMix.KINDS])
    want = want / want.sum()
    for k, share in zip(TraceMix.KINDS, want):
        assert abs((kinds == k).mean() - share) < 0.015, (k, (kinds == k).mean(), share)
    names = [f.name_dict[c] for c in f.name_code[f.name_code >= 0]]
    missing = np.mean([nm.startswith("nosuch") or ".nosuch-ns" in nm for nm in names])
    assert abs(missing - mix.missing_names) < 0.03
    assert any(nm.endswith(".pod.cluster.local") for nm in names)
    assert {"app0", "app0.shop", "app0.shop.svc", "app0.shop.svc.cluster.local"} <= set(names)
    # Poisson arrivals at the configured rate, sizes around the configured median.
    gaps = np.diff(f.ts)
    assert (gaps >= 0).all() and abs(gaps.mean() / (1e9 / mix.rate) - 1) < 0.05
    assert abs(np.median(f.bytes) / mix.bytes_median - 1) < 0.1
    assert f.bytes.max() > 100 * mix.bytes_median  # heavy tail
    assert (f.packets >= 1).all()


def test_synth_columns_and_nulls(tmp_path, cluster):
    synth_trace(cluster, 5000, seed=2, out=tmp_path / "t.arrow", ts_type="int64")
    tbl = pa.ipc.open_file(tmp_path / "t.arrow").read_all()
    assert tbl.schema.remove_metadata() == trace_schema("int64")
    assert b"fastpath.synth" in tbl.schema.metadata
    named = tbl.column("dst_name").is_valid()
    assert named.equals(tbl.column("dst_ip").is_null())
    assert 0 < named.to_numpy(zero_copy_only=False).mean() < 0.2


def test_synth_popularity_is_heavy_tailed(tmp_path):
    cl = small_cluster(nodes=4, pods_per_node=10, services=10)
    synth_trace(cl, 30_000, seed=5, out=tmp_path / "t.arrow", east_west=1, north_south=0, localhost=0, by_name=0,
                egress=0, host=0, to_nothing=0, via_service=1.0, zipf=1.5)
    f = open_trace(tmp_path / "t.arrow").read_all()
    counts = np.sort(np.bincount((f.dst_ip - IP("10.96.0.10")).astype(np.int64)))[::-1]
    assert counts.sum() == 30_000 and len(counts) == 10
    assert counts[0] / counts.sum() > 0.4 and counts[0] > 10 * counts[-1]


def test_synth_kinds_the_cluster_cannot_produce_are_renormalized(tmp_path):
    cl = small_cluster(node_port=False)
    synth_trace(cl, 10_000, seed=1, out=tmp_path / "t.arrow")
    kinds = classify(open_trace(tmp_path / "t.arrow").read_all(), cl)
    assert (kinds == "north_south").sum() == 0
    assert abs((kinds == "east_west").mean() - 0.5 / 0.9) < 0.02


def test_synth_bad_arguments(tmp_path, cluster):
    with pytest.raises(FastpathError, match="unknown trace mix knob 'eastwest'"):
        synth_trace(cluster, 10, out=tmp_path / "t.arrow", eastwest=0.5)
    with pytest.raises(FastpathError, match="missing_names=1.5"):
        synth_trace(cluster, 10, out=tmp_path / "t.arrow", missing_names=1.5)
    with pytest.raises(FastpathError, match="flows must be"):
        synth_trace(cluster, -1, out=tmp_path / "t.arrow")
    with pytest.raises(FastpathError, match="nothing to make flows between"):
        synth_trace(Cluster([], [], [], []), 10, out=tmp_path / "t.arrow")
    with pytest.raises(FastpathError, match="does not exist"):
        synth_trace(cluster, 10, out=tmp_path / "no" / "t.arrow")
    assert not os.listdir(tmp_path)


def test_synth_failure_leaves_nothing(tmp_path, cluster, monkeypatch):
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = synth_mod._record_batch
    monkeypatch.setattr(synth_mod, "_record_batch", boom)
    with pytest.raises(KeyboardInterrupt):
        synth_trace(cluster, 50_000, out=tmp_path / "t.arrow", batch_size=10_000)
    assert os.listdir(tmp_path) == []


def test_synth_zero_flows(tmp_path, cluster):
    assert synth_trace(cluster, 0, out=tmp_path / "t.arrow") == 0
    assert open_trace(tmp_path / "t.arrow").num_rows == 0


def test_flows_concat_and_take_keep_each_rows_name():
    """Batches of one file share a dictionary (their codes are joined as they are); batches with
    different dictionaries are merged. Either way every row keeps its own name; take() keeps them too."""
    def named(names, codes):
        n = len(codes)
        return Flows(src_ip=np.arange(n, dtype=np.uint32), dst_ip=np.zeros(n, np.uint32),
                     src_port=np.zeros(n, np.uint16), dst_port=np.zeros(n, np.uint16), proto=np.full(n, 6, np.uint8),
                     name_code=np.array(codes, np.int32), name_dict=list(names))

    def names_of(f):
        return [f.name_dict[c] if c >= 0 else None for c in f.name_code]

    a, b = named(["x", "y"], [0, -1, 1]), named(["x", "y"], [1, 1])
    c = named(["y", "z"], [1, 0, -1])
    plain = Flows(src_ip=np.zeros(1, np.uint32), dst_ip=np.zeros(1, np.uint32), src_port=np.zeros(1, np.uint16),
                  dst_port=np.zeros(1, np.uint16), proto=np.full(1, 6, np.uint8))
    assert names_of(Flows.concat([a, b])) == ["x", None, "y", "y", "y"]
    assert names_of(Flows.concat([a, plain, b])) == ["x", None, "y", None, "y", "y"]
    joined = Flows.concat([a, c, b])
    assert names_of(joined) == ["x", None, "y", "z", "y", None, "y", "y"]
    assert names_of(joined.take(np.array([3, 0, 7]))) == ["z", "x", "y"]
    small = joined.take(np.array([3, 1, 5])).compact_names()
    assert names_of(small) == ["z", None, None] and small.name_dict == ["z"]
    assert names_of(joined.compact_names()) == names_of(joined)
    assert joined.take(np.array([3, 0])).n == 2
