"""The replay on a Dask cluster (fastpath.distributed): the same rows and summary as one process.

One LocalCluster of two worker processes (one thread each) serves the module; each
replay joins it by address, as ``--scheduler tcp://…`` does. Row ranges are made
small (``part_rows``) so every replay has many tasks, state partitions and
conntrack groups.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

distributed = pytest.importorskip("distributed")

from fastpath import replay  # noqa: E402
from fastpath.cluster.load import load_cluster  # noqa: E402
from fastpath.cluster.synth import synth_cluster, write_cluster  # noqa: E402
from fastpath.distributed import plan  # noqa: E402
from fastpath.errors import FastpathError  # noqa: E402
from fastpath.replay import sample_paths  # noqa: E402
from fastpath.traces import synth_trace  # noqa: E402

BALANCERS = ("random", "round-robin", "source-hash", "maglev", "least-connection")
#: Summary fields that differ by nature between the two runs.
_RUN_FIELDS = ("wall_s", "compile_s", "flows_per_s", "threads", "output", "batch_size", "distributed")


@pytest.fixture(scope="module")
def dask_cluster():
    import logging

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=logging.ERROR)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """A 12-node cluster with small conntrack tables under a dense timed trace: tables fill, drops
    happen on both sides of cross-node connections, so the conntrack groups must settle in rounds."""
    d = tmp_path_factory.mktemp("busy")
    cluster = write_cluster(synth_cluster(12, 8, 10, seed=3), d / "cluster.json")
    trace = d / "trace.arrow"
    synth_trace(load_cluster(cluster), 60_000, seed=4, out=trace, rate=20_000.0, duration_mix=True)
    return cluster, trace


def _rows(path: Path) -> pa.Table:
    if path.is_dir():
        parts = sorted(path.iterdir())
        return pa.concat_tables([pa.ipc.open_file(str(p)).read_all() for p in parts])
    return pa.ipc.open_file(str(path)).read_all()


def _same_summary(one, many) -> None:
    a, b = one.to_dict(), many.to_dict()
    for k in _RUN_FIELDS:
        a.pop(k), b.pop(k)
    assert a == b


def _both(tmp_path, cluster, trace, address, **opts):
    one = replay(str(cluster), str(trace), tmp_path / "one.arrow", progress=False, **opts)
    many = replay(str(cluster), str(trace), tmp_path / "many.arrow", progress=False, scheduler=address,
                  part_rows=opts.pop("part_rows", 16_384), **opts)
    return one, many


@pytest.mark.parametrize("lb", BALANCERS)
def test_sample_every_balancer_with_conntrack(tmp_path, dask_cluster, lb):
    """The bundled sample (ts, dst_name, bytes, ClientIP affinity, external clients), connection
    tracking on: byte-for-byte the same results file, the same summary, the same timeline."""
    cluster, trace = sample_paths()
    one = replay(str(cluster), str(trace), tmp_path / "one.arrow", progress=False, lb=lb,
                 timeline=tmp_path / "tl1.arrow")
    many = replay(str(cluster), str(trace), tmp_path / "many.arrow", progress=False, lb=lb,
                  timeline=tmp_path / "tl2.arrow", scheduler=dask_cluster.scheduler_address, part_rows=16_384)
    assert (tmp_path / "one.arrow").read_bytes() == (tmp_path / "many.arrow").read_bytes()
    assert pa.ipc.open_file(str(tmp_path / "tl1.arrow")).read_all().equals(
        pa.ipc.open_file(str(tmp_path / "tl2.arrow")).read_all())
    _same_summary(one, many)
    assert many.conntrack_drops is not None
    assert many.distributed["conntrack"] == "chain"


def test_sample_conntrack_by_node_groups(tmp_path, dask_cluster):
    cluster, trace = sample_paths()
    one = replay(str(cluster), str(trace), tmp_path / "one.arrow", progress=False, lb="maglev",
                 timeline=tmp_path / "tl1.arrow")
    many = replay(str(cluster), str(trace), tmp_path / "many.arrow", progress=False, lb="maglev",
                  timeline=tmp_path / "tl2.arrow", scheduler=dask_cluster.scheduler_address, part_rows=16_384,
                  conntrack_groups=3)
    assert many.distributed["conntrack"] == "groups" and many.distributed["conntrack_groups"] == 3
    assert (tmp_path / "one.arrow").read_bytes() == (tmp_path / "many.arrow").read_bytes()
    assert pa.ipc.open_file(str(tmp_path / "tl1.arrow")).read_all().equals(
        pa.ipc.open_file(str(tmp_path / "tl2.arrow")).read_all())
    _same_summary(one, many)


@pytest.mark.parametrize("lb", ["random", "round-robin", "least-connection"])
def test_sample_without_conntrack(tmp_path, dask_cluster, lb):
    cluster, trace = sample_paths()
    one, many = _both(tmp_path, cluster, trace, dask_cluster.scheduler_address, lb=lb, conntrack=False)
    assert _rows(tmp_path / "one.arrow").equals(_rows(tmp_path / "many.arrow"))
    _same_summary(one, many)


def test_trace_without_ts_and_with_flows(tmp_path, dask_cluster):
    """No ts (no time, no conntrack); --with-flows columns beside the results; a folder of parts."""
    cluster, trace = sample_paths()
    t = pa.ipc.open_file(str(trace)).read_all().drop_columns(["ts"])
    flat = tmp_path / "flat.arrow"
    with pa.OSFile(str(flat), "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t, max_chunksize=50_000)
    one = replay(str(cluster), str(flat), tmp_path / "one.arrow", progress=False, lb="round-robin", with_flows=True)
    many = replay(str(cluster), str(flat), tmp_path / "parts", progress=False, lb="round-robin", with_flows=True,
                  scheduler=dask_cluster.scheduler_address, part_rows=30_000, batch_size=50_000)   # parts: whole batches
    parts = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert parts[0] == "part-00000.arrow" and len(parts) > 2
    assert _rows(tmp_path / "one.arrow").equals(_rows(tmp_path / "parts"))
    _same_summary(one, many)


@pytest.mark.parametrize("lb, table, settles", [("random", 9000, True), ("least-connection", 9500, True),
                                                ("round-robin", 1500, False)])
def test_tables_fill_groups_settle_in_rounds(tmp_path, dask_cluster, busy, lb, table, settles):
    """Node groups (asked for: two workers default to the chain). Full tables drop new connections on
    client and backend nodes, so the groups' first assumptions fail. With ~900 drops the groups agree
    after a few rounds; with most connections dropped (a cascade of refusals) they would not, and the
    chain takes over. Either way the answer is exact, drops and timeline included."""
    cluster, trace = busy
    one = replay(str(cluster), str(trace), tmp_path / "one.arrow", progress=False, lb=lb, conntrack_max=table,
                 timeline=tmp_path / "tl1.arrow")
    many = replay(str(cluster), str(trace), tmp_path / "many.arrow", progress=False, lb=lb, conntrack_max=table,
                  timeline=tmp_path / "tl2.arrow", scheduler=dask_cluster.scheduler_address, part_rows=8192,
                  batch_size=4096, conntrack_groups=2)
    assert one.conntrack_drops > 500
    d = many.distributed
    assert d["ranges"] > 4
    if settles:
        assert d["conntrack"] == "groups" and d["conntrack_groups"] == 2 and 2 <= d["conntrack_rounds"] <= 4
    else:                                       # too many refusals for rounds: the chain took over
        assert d["conntrack"] == "chain" and d["conntrack_rounds"] >= 1
    assert _rows(tmp_path / "one.arrow").equals(_rows(tmp_path / "many.arrow"))
    assert pa.ipc.open_file(str(tmp_path / "tl1.arrow")).read_all().equals(
        pa.ipc.open_file(str(tmp_path / "tl2.arrow")).read_all())
    _same_summary(one, many)


def test_worker_killed_mid_replay_is_retried(tmp_path, dask_cluster, busy):
    """A worker process killed while the replay runs: Dask reruns its tasks elsewhere (they are pure),
    and the results are complete and exact."""
    cluster, trace = busy
    one = replay(str(cluster), str(trace), tmp_path / "one.arrow", progress=False, lb="round-robin")
    client = distributed.Client(dask_cluster.scheduler_address)
    killed = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            busy_workers = [w for w, tasks in client.processing().items() if tasks]
            if busy_workers:
                pid = client.run(os.getpid, workers=busy_workers[:1])[busy_workers[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    t = threading.Thread(target=kill_one)
    t.start()
    try:
        many = replay(str(cluster), str(trace), tmp_path / "many.arrow", progress=False, lb="round-robin",
                      scheduler=dask_cluster.scheduler_address, part_rows=4096)
    finally:
        t.join()
        client.wait_for_workers(2, timeout=60)
        client.close()
    assert killed
    assert _rows(tmp_path / "one.arrow").equals(_rows(tmp_path / "many.arrow"))
    _same_summary(one, many)


def test_bad_trace_row_fails_with_one_line_and_no_output(tmp_path, dask_cluster):
    """A row that goes back in time in the middle of the trace: the worker's one-line error reaches
    the caller; no results file or folder is left, nor a temporary one."""
    cluster, trace = sample_paths()
    t = pa.ipc.open_file(str(trace)).read_all()
    ts = t.column("ts").to_numpy().copy()
    ts[150_000] = ts[0]
    bad = tmp_path / "bad.arrow"
    t = t.set_column(t.schema.get_field_index("ts"), "ts", pa.array(ts, pa.timestamp("ns")))
    with pa.OSFile(str(bad), "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t, max_chunksize=65_536)
    out = tmp_path / "out"
    with pytest.raises(FastpathError, match="goes back in time"):
        replay(str(cluster), str(bad), out, progress=False, scheduler=dask_cluster.scheduler_address,
               part_rows=16_384)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arrow"]


def test_empty_trace(tmp_path, dask_cluster):
    cluster, trace = sample_paths()
    t = pa.ipc.open_file(str(trace)).read_all().slice(0, 0)
    empty = tmp_path / "empty.arrow"
    with pa.OSFile(str(empty), "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    one = replay(str(cluster), str(empty), tmp_path / "one.arrow", progress=False, lb="round-robin")
    many = replay(str(cluster), str(empty), tmp_path / "many.arrow", progress=False, lb="round-robin",
                  scheduler=dask_cluster.scheduler_address)
    assert _rows(tmp_path / "many.arrow").num_rows == 0
    _same_summary(one, many)


def test_cluster_events_replay_in_one_task(tmp_path, dask_cluster):
    """--events: the replay runs as one task on a worker; the same bytes, summary and timeline."""
    from fastpath.cluster.synth_events import synth_events

    cluster, trace = sample_paths()
    events = synth_events(cluster, rollouts=2, drains=1, span_s=7.0, grace_s=0.2, ready_s=0.1,
                          start_ns=1_700_000_000_000_000_000)
    one = replay(str(cluster), str(trace), tmp_path / "one.parquet", progress=False, lb="maglev", events=events,
                 timeline=tmp_path / "tl1.arrow")
    many = replay(str(cluster), str(trace), tmp_path / "many.parquet", progress=False, lb="maglev", events=events,
                  timeline=tmp_path / "tl2.arrow", scheduler=dask_cluster.scheduler_address)
    assert one.event_groups > 5 and one.broken_connections is not None
    assert many.distributed["events"] == "one task"
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "one.parquet").equals(pq.read_table(tmp_path / "many.parquet"))
    assert pa.ipc.open_file(str(tmp_path / "tl1.arrow")).read_all().equals(
        pa.ipc.open_file(str(tmp_path / "tl2.arrow")).read_all())
    a, b = one.to_dict(), many.to_dict()
    for k in _RUN_FIELDS + ("trace",):
        a.pop(k), b.pop(k)
    assert a == b


def test_options_refused_before_any_work(tmp_path, monkeypatch):
    import fastpath.distributed

    monkeypatch.setattr(fastpath.distributed, "CONNECT_TIMEOUT", "1s")
    cluster, trace = sample_paths()
    from fastpath.cluster.compile import compile_cluster

    with pytest.raises(FastpathError, match="path or a Cluster"):
        replay(compile_cluster(str(cluster)), str(trace), scheduler="local")
    with pytest.raises(FastpathError, match="Dask scheduler"):
        replay(str(cluster), str(trace), scheduler="tcp://127.0.0.1:9", progress=False)


def test_cli_local_cluster(tmp_path, capsys):
    """``fastpath replay --scheduler local --workers 2``: the command line's summary JSON equals one
    process's, and the results file is the same bytes."""
    from clirun import cli

    cluster, trace = sample_paths()
    common = ("replay", cluster, trace, "--quiet", "--lb", "round-robin")
    assert cli(capsys, *common, "-o", tmp_path / "one.arrow", "--summary-json", tmp_path / "one.json")[0] == 0
    rc, _, err = cli(capsys, *common, "-o", tmp_path / "many.arrow", "--summary-json", tmp_path / "many.json",
                     "--scheduler", "local", "--workers", "2")
    assert rc == 0, err
    assert (tmp_path / "one.arrow").read_bytes() == (tmp_path / "many.arrow").read_bytes()
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "many"))
    for k in _RUN_FIELDS:
        a.pop(k), b.pop(k)
    assert a == b
    rc, _, err = cli(capsys, "replay", "--workers", "2")
    assert rc == 2 and "--workers needs --scheduler" in err


def test_cli_local_cluster_bad_trace_is_one_line(tmp_path):
    """``--scheduler local`` on a trace with a bad row: the worker's failure is the command's one line on
    stderr (no worker log, no traceback from a worker process), status 2, and no results file."""
    import subprocess
    import sys

    cluster, trace = sample_paths()
    t = pa.ipc.open_file(str(trace)).read_all().slice(0, 5_000)
    ports = t.column("dst_port").to_numpy().astype(np.int64)
    ports[4_000] = 70_000
    bad = tmp_path / "bad.parquet"
    import pyarrow.parquet as pq

    pq.write_table(t.set_column(t.schema.get_field_index("dst_port"), "dst_port", pa.array(ports)), bad)
    run = subprocess.run([sys.executable, "-m", "fastpath.cli", "replay", str(cluster), str(bad), "--quiet",
                          "--scheduler", "local", "--workers", "1", "-o", str(tmp_path / "r.arrow")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastpath: error: "), run.stderr
    assert "column 'dst_port' holds 70000 at row 4000" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_local_cluster_workers_keep_glibc_malloc_defaults():
    """``--scheduler local``'s workers start without Dask's ``MALLOC_TRIM_THRESHOLD_`` (set, it also fixes
    glibc's mmap threshold: every batch column a fresh mmap the kernel zeroes), and Dask's own setting
    is as it was after the cluster starts."""
    import os

    import dask

    from fastpath.distributed import PRE_SPAWN, _Session

    before = dict(dask.config.get(PRE_SPAWN))
    session = _Session("local", 1)                    # as replay(scheduler="local") starts it
    try:
        got = session.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    finally:
        session.close()
    assert list(got.values()) == [os.environ.get("MALLOC_TRIM_THRESHOLD_")]   # as this process has it: unset
    assert dict(dask.config.get(PRE_SPAWN)) == before and "MALLOC_TRIM_THRESHOLD_" in before


# --------------------------------------------------------------------------- the plan

def test_ranges_cover_the_trace_in_whole_batches():
    for n, workers, bs, part in ((0, 2, 10, 100), (1, 2, 10, 100), (1000, 2, 64, 100), (10**6, 3, 65536, 2**18)):
        got = plan.ranges(n, workers, bs, part)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
        assert all((b - a) % bs == 0 for a, b in got[:-1])


def test_state_partitions_balance_nodes_alone():
    """Every piece of balancer state is one node's (ClientIP affinity included: kube-proxy keeps it per
    node, so an external client reaching a service through two nodes has an entry on each): nodes
    are balanced over the partitions by their rows alone, none tied to another."""
    counts = np.array([5, 40, 10, 10, 30, 10, 10, 0, 10])            # slot 0: rows without state
    part = plan.state_partitions(counts, 4)
    assert part[0] == 0 and part.shape == counts.shape
    loads = np.bincount(part[1:], weights=counts[1:], minlength=4)
    assert sorted(loads.tolist()) == [20.0, 30.0, 30.0, 40.0]            # greedy LPT over the nodes themselves
    assert part[0 + 1] != part[3 + 1]                                # the two heaviest nodes apart


def test_balance_is_greedy_over_weights():
    w = np.array([5, 1, 4, 2, 3])
    got = plan.balance(w, 2)
    loads = np.bincount(got, weights=w)
    assert sorted(loads.tolist()) == [7.0, 8.0]


def test_conntrack_stage_keeps_running_after_a_transfer():
    """The chain's stage moves between workers as Dask sends data: pickled with out-of-band buffers,
    its arrays arrive as views of the received frames. Its pools must still grow in place."""
    import pickle

    from fastpath.cluster.compile import compile_cluster
    from fastpath.stages.conntrack import ConntrackStage
    from fastpath.traces import open_trace

    cluster, trace = sample_paths()
    dp = compile_cluster(str(cluster))
    batches = iter(open_trace(trace, 20_000))
    here, moved = ConntrackStage(dp), None
    f = next(batches)
    here.run(f, dp.resolve_flows(f))
    frames: list = []
    data = pickle.dumps(here, protocol=5, buffer_callback=frames.append)
    moved = pickle.loads(data, buffers=[bytearray(x.raw()) for x in frames])
    for k, v in vars(here).items():              # as writable as before: the kernel's one specialization
        if isinstance(v, np.ndarray):
            assert getattr(moved, k).flags.writeable == v.flags.writeable, k
    for f in batches:                            # 180,000 more rows: the pools grow several times
        r = dp.resolve_flows(f)
        r2 = type(r)(**{k: v.copy() for k, v in vars(r).items()})
        here.run(f, r)
        moved.run(f, r2)
        assert np.array_equal(r.verdict, r2.verdict)
    here.finish()
    moved.finish()
    assert here.summary() == moved.summary()
