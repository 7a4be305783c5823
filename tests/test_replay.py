"""replay(): the bundled sample end to end, order, atomic output, repeatability, Parquet."""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastpath._jit import get_threads
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import load_cluster
from fastpath.errors import FastpathError
from fastpath.pipeline import DataPlane
from fastpath.replay import Summary, replay, sample_paths
from fastpath.traces import open_trace

#: Batches small enough that the sample (200k flows) spans several.
BATCH = 50_000


@pytest.fixture(scope="module")
def sample() -> tuple[Path, Path]:
    return sample_paths()


@pytest.fixture(scope="module")
def plane(sample) -> DataPlane:
    return compile_cluster(load_cluster(sample[0]))


@pytest.fixture(scope="module")
def sample_run(sample, plane, tmp_path_factory) -> tuple[Summary, pa.Table, Path]:
    out = tmp_path_factory.mktemp("replay") / "results.arrow"
    summary = replay(plane, sample[1], out, batch_size=BATCH, return_table=True)
    return summary, pa.ipc.open_file(out).read_all(), out


def read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa.ipc.open_file(path).read_all()


def test_sample_is_bundled_and_sized_as_documented(sample):
    cluster, trace = sample
    cl = load_cluster(cluster)
    assert (len(cl.nodes), len(cl.pods), len(cl.services)) == (20, 600, 60)
    assert open_trace(trace).num_rows == 200_000
    assert cluster.stat().st_size + trace.stat().st_size < 5 * 2**20


def test_sample_totals_and_order(sample, sample_run):
    summary, results, out = sample_run
    flows = open_trace(sample[1]).read_all()
    n = flows.n
    assert summary.flows == n == results.num_rows
    assert sum(summary.by_verdict.values()) == n and sum(summary.by_path.values()) == n
    assert summary.table.equals(results)
    # Every row where nothing rewrote the destination still carries its input's (ip, port): rows in input order.
    no_service = results.column("service").is_null().to_numpy(zero_copy_only=False)
    by_ip = flows.name_code < 0
    keep = no_service & by_ip
    assert keep.sum() > n // 4
    np.testing.assert_array_equal(results.column("dnat_ip").to_numpy()[keep], flows.dst_ip[keep])
    np.testing.assert_array_equal(results.column("dnat_port").to_numpy()[keep], flows.dst_port[keep])
    verdict = np.array(results.column("verdict").to_pylist())
    plain = np.isin(verdict, ["delivered", "refused"]) & no_service
    np.testing.assert_array_equal(results.column("snat_ip").to_numpy()[plain], flows.src_ip[plain])
    # Counts in the summary are the counts in the file.
    assert dict(Counter(verdict.tolist())) == {k: v for k, v in summary.by_verdict.items() if v}
    paths = Counter(results.column("path").to_pylist())
    assert dict(paths) == {k: v for k, v in summary.by_path.items() if v}
    assert summary.cross_node_share == pytest.approx(paths["routed"] / (paths["routed"] + paths["bridge"]), abs=1e-6)
    # Every kind of outcome the sample is made to show.
    for v in ("delivered", "refused", "dropped", "egress", "unresolved"):
        assert summary.by_verdict[v] > 0, v
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_top_services_match_the_results(sample_run):
    summary, results, _ = sample_run
    svc = results.column("service").to_pylist()
    pod = results.column("dst_pod").to_pylist()
    flows = Counter(s for s in svc if s is not None)
    per_backend: dict[str, Counter] = {}
    for s, p in zip(svc, pod):
        if s is not None and p is not None:
            per_backend.setdefault(s, Counter())[p] += 1
    assert summary.top_services, "the sample hits services"
    assert [s.flows for s in summary.top_services] == sorted((s.flows for s in summary.top_services), reverse=True)
    for s in summary.top_services:
        assert s.flows == flows[s.service]
        counts = np.array(list(per_backend.get(s.service, Counter()).values()))
        assert s.backends == counts.size
        if counts.size:
            assert s.imbalance == pytest.approx(counts.max() / counts.mean(), rel=1e-3)
        assert s.bytes is not None and s.bytes > 0
    assert summary.top_services[0].flows == max(flows.values())


def test_top_services_carry_bytes_and_packets(sample, plane, sample_run, tmp_path):
    """The trace's ``bytes`` and ``packets`` are carried into the per-service load figures: each top
    service's sums over the flows that hit it (``packets`` None where the trace has no such column)."""
    summary, results, _ = sample_run
    trace = read(sample[1])
    svc = results.column("service").to_pylist()
    nbytes, packets = Counter(), Counter()
    for s, b, p in zip(svc, trace.column("bytes").to_pylist(), trace.column("packets").to_pylist()):
        if s is not None:
            nbytes[s] += b
            packets[s] += p
    for s in summary.top_services:
        assert (s.bytes, s.packets) == (nbytes[s.service], packets[s.service])
    assert json.loads(json.dumps(summary.to_dict()))["top_services"][0]["packets"] == summary.top_services[0].packets
    bare = trace.select(["src_ip", "dst_ip", "src_port", "dst_port", "proto", "ts", "dst_name"])
    with pa.OSFile(str(tmp_path / "bare.arrow"), "wb") as sink, pa.ipc.new_file(sink, bare.schema) as w:
        w.write_table(bare)
    plain = replay(plane, tmp_path / "bare.arrow", progress=False)
    assert plain.top_services and all(s.packets is None and s.bytes is None for s in plain.top_services)


def test_summary_json_and_render(sample_run):
    summary, _, _ = sample_run
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["flows"] == 200_000 and "table" not in d and d["top_services"][0]["service"]
    from rich.console import Console

    buf = io.StringIO()
    summary.render(Console(file=buf, width=120))
    text = buf.getvalue()
    assert "delivered" in text and "200,000" in text and summary.top_services[0].service in text


def test_same_seed_same_bytes_and_parquet(sample, tmp_path):
    a, b, c = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "c.arrow"
    replay(sample[0], sample[1], a, seed=7, batch_size=BATCH)
    replay(sample[0], sample[1], b, seed=7, batch_size=BATCH)
    replay(sample[0], sample[1], c, seed=8, batch_size=BATCH)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()  # the random balancer picks other backends
    p = tmp_path / "a.parquet"
    s = replay(sample[0], sample[1], p, seed=7, batch_size=BATCH, progress=True)
    assert s.output == str(p) and pq.ParquetFile(p).metadata.num_rows == 200_000
    assert read(p).equals(read(a))
    assert sorted(os.listdir(tmp_path)) == ["a.arrow", "a.parquet", "b.arrow", "c.arrow"]


def test_a_compiled_plane_replays_the_same_twice(sample, plane, tmp_path):
    replay(plane, sample[1], tmp_path / "1.arrow", batch_size=BATCH)
    replay(plane, sample[1], tmp_path / "2.arrow", batch_size=BATCH)
    assert (tmp_path / "1.arrow").read_bytes() == (tmp_path / "2.arrow").read_bytes()


def test_interrupted_replay_leaves_nothing(sample, plane, tmp_path, monkeypatch):
    seen = []
    real = DataPlane.resolve_flows

    def interrupted(self, flows, out=None):
        seen.append(flows.n)
        if len(seen) == 3:  # a warm-up call on a few rows, two batches, then ^C
            raise KeyboardInterrupt
        return real(self, flows, out)

    monkeypatch.setattr(DataPlane, "resolve_flows", interrupted)
    threads = get_threads()
    with pytest.raises(KeyboardInterrupt):
        replay(plane, sample[1], tmp_path / "r.arrow", batch_size=BATCH)
    assert len(seen) == 3 and os.listdir(tmp_path) == []
    assert get_threads() == threads
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        replay(plane, sample[1], tmp_path / "r.parquet", batch_size=BATCH)
    assert os.listdir(tmp_path) == []


def test_bad_row_late_in_the_trace_leaves_nothing(sample, plane, tmp_path):
    tbl = pa.ipc.open_file(sample[1]).read_all().slice(0, 120_000)
    proto = tbl.column("proto").to_numpy().astype(np.int64)
    proto[110_000] = 300
    tbl = tbl.set_column(tbl.schema.get_field_index("proto"), "proto", pa.array(proto))
    trace = tmp_path / "bad.arrow"
    with pa.ipc.new_file(str(trace), tbl.schema) as w:
        w.write_table(tbl)
    out = tmp_path / "out" / "r.arrow"
    out.parent.mkdir()
    with pytest.raises(FastpathError, match="bad.arrow: column 'proto' holds 300 at row 110000"):
        replay(plane, trace, out, batch_size=BATCH)
    assert os.listdir(out.parent) == []


def test_bad_output_paths(sample, plane, tmp_path):
    with pytest.raises(FastpathError, match="does not exist"):
        replay(plane, sample[1], tmp_path / "nope" / "r.arrow")
    trace = tmp_path / "t.arrow"
    trace.write_bytes(sample[1].read_bytes())
    with pytest.raises(FastpathError, match="overwrite the trace"):
        replay(plane, trace, trace)
    assert sorted(os.listdir(tmp_path)) == ["t.arrow"]


def test_no_output_file(sample, plane, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = replay(plane, sample[1], batch_size=BATCH)
    assert s.output is None and s.table is None and s.flows == 200_000 and os.listdir(tmp_path) == []


def test_sample_paths_override(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPATH_SAMPLE", str(tmp_path))
    assert sample_paths()[0].parent != tmp_path  # empty override folder: falls through to traces/
    for name in ("sample-cluster.json", "sample-trace.arrow"):
        (tmp_path / name).write_text("x")
    assert sample_paths() == (tmp_path / "sample-cluster.json", tmp_path / "sample-trace.arrow")


def test_sparse_pair_counting_agrees_with_dense(sample, plane, sample_run, monkeypatch):
    import importlib

    replay_mod = importlib.import_module("fastpath.replay")   # the module; fastpath.replay is the function

    monkeypatch.setattr(replay_mod, "_DENSE_PAIRS", 0)  # as for a cluster too big for the dense array
    monkeypatch.setattr(replay_mod, "_PAIR_MERGE_EVERY", 2)
    sparse = replay(plane, sample[1], batch_size=20_000)
    assert sparse.top_services == sample_run[0].top_services
