"""The pipelined replay (read / resolve / write on three threads) against the sequential one.

Byte-for-byte the same results file and the same summary for every balancer and
batch sizes 1, 7 and 65,536; failures in any stage (a bad row in a later batch,
a truncated trace, a writer that fails, a signal mid-write) end with the usual
one-line error and leave no file behind.
"""
from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fastpath._stream import stream, tally_batch
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import load_cluster
from fastpath.errors import FastpathError
from fastpath.replay import replay, sample_paths

replay_mod = importlib.import_module("fastpath.replay")   # the module, not the function of that name
BALANCERS = ("random", "round-robin", "source-hash", "maglev", "least-connection")
#: Summary fields that are timings, not results.
TIMINGS = ("wall_s", "compile_s", "flows_per_s")


@pytest.fixture(scope="module")
def sample() -> tuple[Path, Path]:
    return sample_paths()


@pytest.fixture(scope="module")
def sample_table(sample) -> pa.Table:
    with pa.memory_map(str(sample[1])) as src:
        return pa.ipc.open_file(src).read_all()


def write_trace(table: pa.Table, path: Path, rows_per_batch: int, stream_format: bool = False) -> Path:
    sink = pa.OSFile(str(path), "wb")
    make = pa.ipc.new_stream if stream_format else pa.ipc.new_file
    with sink, make(sink, table.schema) as w:
        for b in table.to_batches(max_chunksize=rows_per_batch):
            w.write_batch(b)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def summary_of(s) -> dict:
    d = s.to_dict()
    for k in TIMINGS:
        d.pop(k)
    d.pop("output")
    return d


@pytest.mark.parametrize("lb", BALANCERS)
def test_pipelined_results_equal_sequential_byte_for_byte(lb, sample, sample_table, tmp_path):
    plane = compile_cluster(load_cluster(sample[0]), lb=lb, seed=3)
    tiny = write_trace(sample_table.slice(0, 40), tmp_path / "tiny.arrow", 16)
    small = write_trace(sample_table.slice(0, 200), tmp_path / "small.arrow", 64)
    sizes = {tiny: 40, small: 200, sample[1]: 200_000}
    for trace, batch in ((tiny, 1), (small, 7), (sample[1], 65_536)):
        got = {}
        for pipelined in (False, True):
            out = tmp_path / f"{lb}-{batch}-{pipelined}.arrow"
            s = replay(plane, trace, out, batch_size=batch, progress=False, pipelined=pipelined)
            got[pipelined] = (out.read_bytes(), summary_of(s))
        assert got[True][0] == got[False][0], (lb, batch)
        assert got[True][1] == got[False][1], (lb, batch)
        assert got[True][1]["flows"] == sizes[trace]


def test_pipelined_return_table_and_parquet_match(sample, tmp_path):
    plane = compile_cluster(load_cluster(sample[0]))
    outs = {}
    for pipelined in (False, True):
        out = tmp_path / f"r-{pipelined}.parquet"
        s = replay(plane, sample[1], out, batch_size=30_000, progress=False, pipelined=pipelined, return_table=True)
        outs[pipelined] = (out.read_bytes(), s.table)
    assert outs[True][0] == outs[False][0]
    assert outs[True][1].equals(outs[False][1])


def test_bad_row_in_a_later_batch_is_one_error_and_no_file(sample_table, sample, tmp_path):
    cut = 150_000
    ts = sample_table.column("ts").cast(pa.int64()).to_numpy().copy()
    ts[cut] = ts[cut - 1] - 1                                # time goes back in batch 16 of 20
    bad = sample_table.set_column(sample_table.schema.get_field_index("ts"), "ts",
                                  pa.array(ts).cast(pa.timestamp("ns")))
    trace = write_trace(bad, tmp_path / "bad.arrow", 10_000)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(FastpathError, match=f"goes back in time at row {cut}"):
        replay(sample[0], trace, folder / "r.arrow", batch_size=10_000, progress=False)
    assert list(folder.iterdir()) == []


def test_writer_failure_surfaces_and_removes_the_file(sample, tmp_path, monkeypatch):
    calls = []
    real = replay_mod._ResultsWriter.write

    def failing(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise FastpathError("disk says no")
        real(self, batch)

    monkeypatch.setattr(replay_mod._ResultsWriter, "write", failing)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(FastpathError, match="disk says no"):
        replay(sample[0], sample[1], folder / "r.arrow", batch_size=10_000, progress=False)
    assert list(folder.iterdir()) == []


def test_conntrack_failure_surfaces_and_removes_the_file(sample, tmp_path, monkeypatch):
    """The tracking stage (a thread of its own when pipelined) fails on its third batch: the replay
    raises that error, the other stages stop, and no file is left."""
    from fastpath.stages.conntrack import ConntrackStage

    calls = []
    real = ConntrackStage.run

    def failing(self, flows, r):
        calls.append(1)
        if len(calls) == 3:
            raise FastpathError("conntrack says no")
        real(self, flows, r)

    monkeypatch.setattr(ConntrackStage, "run", failing)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(FastpathError, match="conntrack says no"):
        replay(sample[0], sample[1], folder / "r.arrow", batch_size=10_000, progress=False)
    assert list(folder.iterdir()) == []


def test_stream_tracks_each_batch_in_order_before_it_is_finished():
    """``track`` runs on every batch in trace order, and ``finish`` sees what it changed, pipelined or not."""
    class Batch:
        def __init__(self, i):
            self.n = 1
            self.i = i

    for pipelined in (False, True):
        tracked, finished = [], []

        def track(r, flows):
            tracked.append(flows.i)
            r["tracked"] = True

        def finish(r, flows):
            finished.append((flows.i, r.get("tracked", False)))

        n = stream((Batch(i) for i in range(50)), lambda f, out: {}, finish, pipelined=pipelined, track=track)
        assert n == 50
        assert tracked == list(range(50))
        assert finished == [(i, True) for i in range(50)]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastpath.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_truncated_trace_is_one_line_and_no_file(sample_table, sample, tmp_path):
    whole = write_trace(sample_table, tmp_path / "whole.arrows", 10_000, stream_format=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[: int(len(data) * 0.6)])           # ends inside batch 12 of 20
    folder = tmp_path / "out"
    folder.mkdir()
    done = cli("replay", str(sample[0]), str(cut), "-o", str(folder / "r.arrow"), "--quiet", "--batch-size", "5000")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cut.arrows" in lines[0], done.stderr
    assert list(folder.iterdir()) == []


def test_signal_mid_write_leaves_no_file(sample, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "fastpath.cli", "replay", str(sample[0]), str(sample[1]),
                             "-o", str(folder / "r.arrow"), "--quiet", "--batch-size", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        if tmp and tmp[0].stat().st_size > 100_000:            # several batches written
            break
        time.sleep(0.02)
    assert proc.poll() is None, "replay ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 2), err
    assert len(err.strip().splitlines()) == 1, err
    assert list(folder.iterdir()) == []


def test_stream_surfaces_reader_errors_and_stops():
    class Batch:
        def __init__(self, n):
            self.n = n

    def batches():
        yield Batch(3)
        yield Batch(3)
        raise FastpathError("trace.arrow: bad at row 6")

    finished = []
    with pytest.raises(FastpathError, match="bad at row 6"):
        stream(batches(), lambda f, out: f, lambda r, f: finished.append(f.n))
    assert sum(finished) <= 6


def test_tally_kernel_counts_as_numpy_does():
    rng = np.random.default_rng(1)
    n, services, pods = 5000, 7, 11
    verdict = rng.integers(0, 7, n).astype(np.uint8)
    path = rng.integers(0, 5, n).astype(np.uint8)
    service = rng.integers(-1, services, n).astype(np.int32)
    dst_pod = rng.integers(-1, pods, n).astype(np.int32)
    nbytes = rng.integers(0, 1 << 40, n).astype(np.uint64)
    nbytes.flags.writeable = False
    npackets = rng.integers(0, 1 << 32, n).astype(np.uint32)
    npackets.flags.writeable = False
    by_v, by_p = np.zeros(7, np.int64), np.zeros(5, np.int64)
    by_s, s_bytes = np.zeros(services + 1, np.int64), np.zeros(services + 1, np.uint64)
    s_packets = np.zeros(services + 1, np.uint64)
    dense = np.zeros((services + 1) * (pods + 1), np.int64)
    tally_batch(verdict, path, service, dst_pod, nbytes, npackets, by_v, by_p, by_s, s_bytes, s_packets, dense,
                pods + 1, np.zeros(0, np.int64))
    assert by_v.tolist() == np.bincount(verdict, minlength=7).tolist()
    assert by_p.tolist() == np.bincount(path, minlength=5).tolist()
    assert by_s.tolist() == np.bincount(service + 1, minlength=services + 1).tolist()
    for s in range(services + 1):
        assert int(s_bytes[s]) == int(nbytes[service + 1 == s].astype(object).sum())
        assert int(s_packets[s]) == int(npackets[service + 1 == s].astype(object).sum())
    keys = (service.astype(np.int64) + 1) * (pods + 1) + dst_pod + 1
    want = np.bincount(keys[service >= 0], minlength=dense.size)
    assert dense.tolist() == want.tolist()
    sparse = np.zeros(n, np.int64)
    k = tally_batch(verdict, path, service, dst_pod, nbytes, npackets, by_v, by_p, by_s, s_bytes, s_packets,
                    np.zeros(0, np.int64), pods + 1, sparse)
    assert sorted(sparse[:k].tolist()) == sorted(keys[service >= 0].tolist())


#: A fresh process replays a trace with names, again, then one without (its dst_ip straight from
#: Arrow, read-only where DNS made the other a fresh array), and lists the kernels holding more
#: than one specialization.
_SPECIALIZATIONS = """
import json, re, sys
from numba.core.registry import CPUDispatcher
from fastpath.replay import replay
for trace in (sys.argv[2], sys.argv[2], sys.argv[4]):
    replay(sys.argv[1], trace, sys.argv[3], batch_size=65536, progress=False)
# every kernel, by the modules holding them (gc.get_objects() misses objects gc.freeze() moved)
kernels = {id(d): d for name, m in list(sys.modules.items()) if name.startswith("fastpath")
           for d in vars(m).values() if isinstance(d, CPUDispatcher)}
assert len(kernels) > 20, len(kernels)


def role(sig):
    # a signature with every array's writability dropped: two equal roles are one kernel compiled
    # twice for read-only and writable inputs (a helper called with other scalar types from two
    # kernels has two signatures and two roles, each compiled once)
    text = re.sub(r"readonly ", "", str(sig))
    return re.sub(r"(Array\\([^,]+, \\d+, '[CFA]'), (True|False)", r"\\1", text)


twice = []
for d in kernels.values():
    roles = [role(s) for s in d.signatures]
    if len(set(roles)) < len(roles):
        twice.append(f"{d.py_func.__module__}.{d.__name__}: {[str(s) for s in d.signatures]}")
print(json.dumps(twice))
"""


def test_replay_compiles_each_kernel_once(sample, tmp_path):
    """Read-only Arrow columns and writable arrays, signed and unsigned, traces with and without
    names: one specialization a kernel."""
    table = pa.ipc.open_file(str(sample[1])).read_all()
    unnamed = table.filter(table["dst_ip"].is_valid()).drop_columns(["dst_name"])
    with pa.OSFile(str(tmp_path / "unnamed.arrow"), "wb") as f, pa.ipc.new_file(f, unnamed.schema) as w:
        w.write_table(unnamed)
    done = subprocess.run([sys.executable, "-c", _SPECIALIZATIONS, str(sample[0]), str(sample[1]),
                           str(tmp_path / "r.arrow"), str(tmp_path / "unnamed.arrow")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_dns_dictionary_pass_matches_twin_on_odd_names():
    """The one-pass answer of a whole name dictionary equals the slow twin's, odd spellings included."""
    import random

    from fastpath.dns import DnsTable
    from naive.dns import NaiveDns
    from test_dns import NS, batch, cluster_with_headless

    rng = random.Random(7)
    c = cluster_with_headless()
    t, naive = DnsTable.from_cluster(c, seed=1), NaiveDns(c, seed=1)
    words = [s.name for s in c.services] + ["ns", "db", "other", "svc", "pod", "cluster", "local", "x",
                                            "10-244-1-7", "1-2-3-4", "", "Ünï", "a\tb", "CLUSTER"]
    names, spaces = [], []
    for _ in range(600):
        parts = [rng.choice(words) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.5:
            parts = [rng.choice(words[:len(c.services)] + ["10-244-1-7"]), rng.choice(["ns", "db", "x"]),
                     rng.choice(["svc", "pod"]), "cluster", "local"][:rng.randint(1, 5)]
        name = ".".join(parts)
        name = rng.choice(["", " ", "  "]) + name + rng.choice(["", ".", " ", ". ", ".."])
        names.append(name.upper() if rng.random() < 0.1 else name)
        spaces.append(rng.choice(NS + [None]))
    src = np.array([rng.randint(0, 2**32 - 1) for _ in names], np.uint32)
    port = np.array([rng.randint(0, 65535) for _ in names], np.uint16)
    got, _, _ = batch(t, names, spaces, NS, src, port)
    want = [naive.resolve(n, s, int(a), int(b)) for n, s, a, b in zip(names, spaces, src, port)]
    assert got == want
    assert sum(g is not None for g in got) > 15
