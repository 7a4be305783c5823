"""The compiled-table cache (fastpath.cache): same tables as a fresh compile; bad entries rebuilt."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastpath import cache
from fastpath.cache import LazyCluster, compile_cached
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import load_cluster
from fastpath.cluster.synth import synth_cluster, write_cluster
from fastpath.traces import synth_trace
from fastpath.traces.reader import open_trace


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cluster")
    return write_cluster(synth_cluster(12, 8, 25, seed=4, addressing="calico"), d / "c.json")


@pytest.fixture(scope="module")
def trace_file(cluster_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trace") / "t.arrow"
    synth_trace(load_cluster(cluster_file), 3000, seed=2, out=out)
    return out


def _same_graph(a, b) -> None:
    """Two planes hold equal values: every array equal in dtype, shape, layout and contents."""
    ta, arrays_a = cache.encode_plane(a)
    tb, arrays_b = cache.encode_plane(b)
    assert ta["plane"] == tb["plane"]
    assert arrays_a.keys() == arrays_b.keys()
    for k, x in arrays_a.items():
        y = arrays_b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        if k.startswith("a"):        # a table's array ("s...": a name list's bytes, the codec's own)
            # the same layout and writability, so the kernels get the same numba types (no recompiling)
            assert (x.flags.c_contiguous, x.flags.writeable, x.flags.aligned) == \
                (y.flags.c_contiguous, y.flags.writeable, y.flags.aligned), k
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k


def _results(dp, trace):
    reader = open_trace(trace)
    out = []
    for flows in reader:
        r = dp.resolve_flows(flows)
        out.append({k: v.copy() for k, v in vars(r).items() if isinstance(v, np.ndarray)})
    dp.reset()
    return out


def _entry(d: Path, key: str) -> Path:
    return d / key


@pytest.mark.parametrize("opts", [dict(lb="random"), dict(lb="maglev", seed=3, maglev_size=251)])
def test_cached_tables_equal_a_fresh_compile(cluster_file, trace_file, tmp_path, opts):
    fresh = compile_cluster(load_cluster(cluster_file), **opts)
    s1, s2 = {}, {}
    first = compile_cached(cluster_file, directory=tmp_path, stats=s1, **opts)
    second = compile_cached(cluster_file, directory=tmp_path, stats=s2, **opts)
    assert not s1["hit"] and s2["hit"] and s1["key"] == s2["key"]
    assert isinstance(second.cluster, LazyCluster) and not second.cluster.loaded
    _same_graph(fresh, second)
    assert second.tables.pod_names == fresh.tables.pod_names
    assert list(second.services.names) == list(fresh.services.names)
    for r1, r2 in zip(_results(fresh, trace_file), _results(second, trace_file)):
        for k in r1:
            assert np.array_equal(r1[k], r2[k]), k
    # only arrays and JSON in an entry, never pickle
    files = sorted(p.name for p in (tmp_path / s2["key"]).iterdir())
    assert files == ["entry.json", "meta.json", "tables.bin"]
    # raw arrays of plain numbers, each named in meta.json, inside the file, cache-line aligned
    meta = json.loads((tmp_path / s2["key"] / "meta.json").read_text())
    size = (tmp_path / s2["key"] / "tables.bin").stat().st_size
    assert meta["arrays"]
    for dtype, shape, offset in meta["arrays"].values():
        assert np.dtype(dtype).kind in "biuf" and offset % 64 == 0
        assert offset + int(np.prod(shape)) * np.dtype(dtype).itemsize <= size


def test_lazy_cluster_light_then_full(cluster_file, tmp_path):
    fresh = load_cluster(cluster_file)
    compile_cached(cluster_file, directory=tmp_path)
    dp = compile_cached(cluster_file, directory=tmp_path)
    c = dp.cluster
    assert c.warnings == fresh.warnings and c.source == fresh.source and c.nodes == fresh.nodes
    assert [n.labels for n in c.nodes] == [n.labels for n in fresh.nodes]
    assert not c.loaded
    assert c.pods == fresh.pods and c.services == fresh.services      # loads, once
    assert c.loaded and c == fresh
    assert dp.source_name == str(cluster_file)


def test_options_and_input_bytes_are_in_the_key(cluster_file, tmp_path):
    k1 = cache.entry_key(cluster_file, {}, dict(lb="random"), tmp_path)
    assert k1 == cache.entry_key(cluster_file, {}, dict(lb="random"), tmp_path)
    assert k1 != cache.entry_key(cluster_file, {}, dict(lb="maglev"), tmp_path)
    assert k1 != cache.entry_key(cluster_file, {"expand_workloads": True}, dict(lb="random"), tmp_path)
    other = tmp_path / "c2.json"
    other.write_bytes(cluster_file.read_bytes())
    k2 = cache.entry_key(other, {}, dict(lb="random"), tmp_path)
    other.write_bytes(cluster_file.read_bytes())                                   # rewritten, same bytes
    assert cache.entry_key(other, {}, dict(lb="random"), tmp_path) == k2
    other.write_bytes(cluster_file.read_bytes().replace(b'"node-000"', b'"node-zzz"', 1))
    assert cache.entry_key(other, {}, dict(lb="random"), tmp_path) != k2      # same size, other bytes


def test_changed_input_is_a_new_entry(cluster_file, tmp_path):
    f = tmp_path / "in.json"
    f.write_bytes(cluster_file.read_bytes())
    a = compile_cached(f, directory=tmp_path / "c")
    obj = json.loads(f.read_text())
    obj["items"] = [o for o in obj["items"] if not (o["kind"] == "Service" and o["metadata"]["name"] == "kube-dns")]
    f.write_text(json.dumps(obj))
    st = {}
    b = compile_cached(f, directory=tmp_path / "c", stats=st)
    assert not st["hit"]
    assert len(b.services.names) < len(a.services.names)
    _same_graph(compile_cluster(load_cluster(f)), b)


def _corrupt(kind: str, entry: Path) -> None:
    if kind == "truncated-tables":
        data = (entry / "tables.bin").read_bytes()
        (entry / "tables.bin").write_bytes(data[: len(data) // 2])
    elif kind == "flipped-tables":
        data = bytearray((entry / "tables.bin").read_bytes())
        data[len(data) // 2] ^= 0x55
        (entry / "tables.bin").write_bytes(bytes(data))
    elif kind == "tampered-meta":            # still valid JSON: only the digest tells
        text = (entry / "meta.json").read_text()
        (entry / "meta.json").write_text(text.replace('"random"', '"maglev"', 1))
    elif kind == "truncated-meta":
        data = (entry / "meta.json").read_bytes()
        (entry / "meta.json").write_bytes(data[:100])
    elif kind == "garbage-entry":
        (entry / "entry.json").write_text("{not json")
    elif kind == "missing-tables":
        (entry / "tables.bin").unlink()
    elif kind == "stale-format":
        e = json.loads((entry / "entry.json").read_text())
        e["format"] = -1
        (entry / "entry.json").write_text(json.dumps(e))


@pytest.mark.parametrize("kind", ["truncated-tables", "flipped-tables", "tampered-meta", "truncated-meta",
                                  "garbage-entry", "missing-tables", "stale-format"])
def test_bad_entry_is_rebuilt_never_used(cluster_file, tmp_path, kind):
    st = {}
    compile_cached(cluster_file, directory=tmp_path, stats=st)
    entry = tmp_path / st["key"]
    _corrupt(kind, entry)
    st2 = {}
    dp = compile_cached(cluster_file, directory=tmp_path, stats=st2)
    assert not st2["hit"] and st2["why"] and st2["why"] != "no entry"
    _same_graph(compile_cluster(load_cluster(cluster_file)), dp)
    st3 = {}
    compile_cached(cluster_file, directory=tmp_path, stats=st3)       # rebuilt: good again
    assert st3["hit"]


def test_no_cache_touches_nothing(cluster_file, tmp_path):
    d = tmp_path / "cache"
    compile_cached(cluster_file, directory=d, cache=False)
    assert not d.exists()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FASTPATH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "fastpath"


def test_prune_keeps_the_most_recent(cluster_file, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 2)
    keys = []
    for seed in range(3):
        st = {}
        compile_cached(cluster_file, directory=tmp_path, stats=st, seed=seed)
        keys.append(st["key"])
    left = {p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != "inputs"}
    assert left == set(keys[1:])


def test_uncacheable_plane_still_compiles(cluster_file, tmp_path, monkeypatch):
    def refuse(dp):
        raise cache.Uncacheable("test")
    monkeypatch.setattr(cache, "encode_plane", refuse)
    st = {}
    dp = compile_cached(cluster_file, directory=tmp_path, stats=st)
    assert dp.tables.pod_names and st["why"] == "not cached: test"
    assert not any(p.is_dir() and p.name != "inputs" for p in tmp_path.iterdir())


def test_cli_replay_cached_same_summary(cluster_file, trace_file, tmp_path, monkeypatch, capsys):
    from fastpath.cli import main

    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(tmp_path / "cache"))
    outs = []
    for extra in ([], [], ["--no-cache"]):
        js = tmp_path / f"s{len(outs)}.json"
        assert main(["replay", str(cluster_file), str(trace_file), "--quiet", "--summary-json", str(js),
                     *extra]) == 0
        d = json.loads(js.read_text())
        outs.append({k: v for k, v in d.items() if not k.endswith("_s") and "per_s" not in k})
    assert outs[0] == outs[1] == outs[2]
    assert outs[0]["cluster"] == str(cluster_file)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "inputs"]) == 1


def test_cli_study_uses_the_cache(cluster_file, trace_file, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from fastpath.cli import main

    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(tmp_path / "cache"))
    figs = []
    for run in range(2):
        out = tmp_path / f"r{run}"
        assert main(["study", str(cluster_file), str(trace_file), "-o", str(out), "--quiet",
                     "--lb", "random,maglev"]) == 0
        figs.append(json.loads((out / "figures.json").read_text()))
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "inputs"]
    assert len(entries) == 2                       # one a balancer, reused by the second study
    assert figs[0] == figs[1]


def test_cached_replay_leaves_the_pods_unloaded(cluster_file, trace_file, tmp_path):
    from fastpath.replay import replay

    compile_cached(cluster_file, directory=tmp_path)
    dp = compile_cached(cluster_file, directory=tmp_path)
    fresh = replay(compile_cluster(load_cluster(cluster_file)), trace_file, None, progress=False)
    s = replay(dp, trace_file, None, progress=False)            # conntrack on: the trace has ts
    assert not dp.cluster.loaded
    assert s.by_verdict == fresh.by_verdict and s.by_path == fresh.by_path


def test_lean_miss_compiles_in_a_child_and_answers_as_a_hit(cluster_file, trace_file, tmp_path):
    """A replay's miss (``lean``): the child process loads, compiles and stores; this process only
    fetches, so it never holds the loaded objects. Same tables and results as a fresh compile,
    load warnings reported once; a bad input still fails here with its one-line error."""
    seen = []
    st = {}
    dp = compile_cached(cluster_file, directory=tmp_path, stats=st, lean=True, on_load=seen.append)
    assert not st["hit"] and (tmp_path / st["key"] / "tables.bin").exists()
    assert isinstance(dp.cluster, LazyCluster) and not dp.cluster.loaded
    assert len(seen) == 1 and seen[0].warnings == load_cluster(cluster_file).warnings
    fresh = compile_cluster(load_cluster(cluster_file))
    _same_graph(fresh, dp)
    for r1, r2 in zip(_results(fresh, trace_file), _results(dp, trace_file)):
        for k in r1:
            assert np.array_equal(r1[k], r2[k]), k
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "List", "items": [{"kind": "Pod", "metadata": 7}]}')
    from fastpath.errors import FastpathError
    with pytest.raises(FastpathError, match="bad.json"):
        compile_cached(bad, directory=tmp_path, lean=True)


# --------------------------------------------------------------------------- synth trace's pools

def _pools_entry(d: Path) -> Path:
    found = [p for p in d.iterdir() if p.is_dir() and p.name != "inputs"
             and json.loads((p / "meta.json").read_text()).get("kind") == "synth-pools"]
    assert len(found) == 1, found
    return found[0]


def test_synth_trace_from_the_cache_is_the_same_bytes_without_a_load(cluster_file, tmp_path, monkeypatch):
    """A path's pools come from the cache on the second trace: the same file, the cluster not loaded."""
    from fastpath.cluster import load

    d = tmp_path / "cache"
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(d))
    direct, first, second = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "c.arrow"
    synth_trace(load_cluster(cluster_file), 5000, seed=3, out=direct, duration_mix=True)
    seen = []
    synth_trace(cluster_file, 5000, seed=3, out=first, duration_mix=True, on_load=seen.append)
    assert not isinstance(seen[0], LazyCluster)
    monkeypatch.setattr(load, "load_cluster", lambda *a, **k: pytest.fail("loaded on a cache hit"))
    synth_trace(cluster_file, 5000, seed=3, out=second, duration_mix=True, on_load=seen.append)
    assert isinstance(seen[1], LazyCluster) and not seen[1].loaded
    assert seen[1].warnings == seen[0].warnings
    assert direct.read_bytes() == first.read_bytes() == second.read_bytes()
    # another seed or zipf shapes other pools: a new entry; the rate does not
    synth_trace(cluster_file, 100, seed=3, out=tmp_path / "d.arrow", rate=5.0)
    monkeypatch.undo()
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(d))
    synth_trace(cluster_file, 100, seed=4, out=tmp_path / "e.arrow")
    kinds = [json.loads((p / "meta.json").read_text())["kind"] for p in d.iterdir() if p.is_dir()
             and p.name != "inputs"]
    assert kinds == ["synth-pools", "synth-pools"]


@pytest.mark.parametrize("kind", ["truncated-tables", "flipped-tables", "truncated-meta", "garbage-entry",
                                  "missing-tables", "stale-format"])
def test_bad_pools_entry_is_rebuilt_never_used(cluster_file, tmp_path, kind):
    d = tmp_path / "cache"
    want = tmp_path / "want.arrow"
    synth_trace(load_cluster(cluster_file), 2000, seed=1, out=want)
    stats: dict = {}
    synth_trace(cluster_file, 2000, seed=1, out=tmp_path / "a.arrow", cache_dir=d)
    _corrupt(kind, _pools_entry(d))
    got = tmp_path / "b.arrow"
    synth_trace(cluster_file, 2000, seed=1, out=got, cache_dir=d, cache_stats=stats)
    assert not stats["hit"] and stats["why"] and stats["why"] != "no entry"
    assert got.read_bytes() == want.read_bytes()
    synth_trace(cluster_file, 2000, seed=1, out=got, cache_dir=d, cache_stats=stats)
    assert stats["hit"]


def test_cli_synth_trace_cache_and_no_cache(cluster_file, tmp_path, monkeypatch, capsys):
    from clirun import cli

    d = tmp_path / "cache"
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(d))
    outs = []
    for extra in ([], [], ["--no-cache"]):
        out = tmp_path / f"t{len(outs)}.arrow"
        rc, stdout, err = cli(capsys, "synth", "trace", cluster_file, "--flows", 3000, "-o", out, *extra)
        assert rc == 0 and f"wrote {out}: 3000 flows" in stdout, err
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert len([p for p in d.iterdir() if p.is_dir() and p.name != "inputs"]) == 1
