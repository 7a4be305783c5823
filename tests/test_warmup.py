"""fastpath.prepare() compiles every kernel, and the public API is importable from the top."""
import fastpath


def test_prepare_compiles_every_kernel():
    fastpath.prepare()
    from fastpath import pipeline
    from fastpath.stages import conntrack_kernel, policy_kernel
    from fastpath.tables import balancers
    from fastpath.traces import synth, synth_kernel

    # the data path's kernels, the policy stage's and connection tracking's have a compiled form
    for kernel in (pipeline._sources, pipeline._forward, balancers._stage_hash_random, balancers._stage_hash_maglev,
                   balancers._pick_in_order, policy_kernel._policy_kernel, conntrack_kernel.track,
                   synth_kernel.make_rows, synth._vose):
        assert kernel.signatures, kernel.py_func.__name__


def test_public_api_names_resolve():
    for name in fastpath.__all__:
        assert getattr(fastpath, name) is not None, name


#: A fresh process: prepare(), then replays as the command runs them; the kernels that gained a
#: compiled form after prepare() (numba's cache loads what prepare() compiled earlier: no compiling).
_AFTER_PREPARE = """
import json, sys
from numba.core.registry import CPUDispatcher
import fastpath
fastpath.prepare()
kernels = {id(d): d for name, m in list(sys.modules.items()) if name.startswith("fastpath")
           for d in vars(m).values() if isinstance(d, CPUDispatcher)}
before = {k: set(d.signatures) for k, d in kernels.items()}
from fastpath.replay import replay
for lb in ("random", "maglev", "round-robin"):
    replay(sys.argv[1], sys.argv[2], None, lb=lb, progress=False)
print(json.dumps(sorted(f"{d.py_func.__module__}.{d.__name__}" for k, d in kernels.items()
                        if set(d.signatures) - before[k])))
"""


def test_prepare_warms_what_a_replay_runs(tmp_path):
    """After fastpath.prepare(), replaying the bundled sample (names, ts, affinity services) under
    three balancers needs no kernel in a form prepare() did not make."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _AFTER_PREPARE, str(root / "traces" / "sample-cluster.json"),
                           str(root / "traces" / "sample-trace.arrow")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_kernels_beside_have_a_replays_types(tmp_path):
    """The helper process's compiles (``beside_kernels``: forwarding on a tiny plane, conntrack on a stub)
    make the very forms a replay calls: after a replay of a timed trace from a file and the helper's
    function, neither kernel has a form the replay did not use."""
    from pathlib import Path

    import pyarrow as pa

    from fastpath._warmup import beside_kernels
    from fastpath.pipeline import _forward
    from fastpath.replay import replay
    from fastpath.stages.conntrack_kernel import track

    root = Path(__file__).resolve().parents[1] / "traces"
    with pa.memory_map(str(root / "sample-trace.arrow")) as src:
        table = pa.ipc.open_file(src).read_all().slice(0, 3000)
    trace = tmp_path / "t.arrow"
    with pa.OSFile(str(trace), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    s = replay(root / "sample-cluster.json", trace, None, progress=False)
    assert s.nodes                                    # connection tracking ran
    used = {k: set(k.signatures) for k in (track, _forward)}
    beside_kernels()
    for kernel, forms in used.items():               # no form the replay did not use (other tests may
        assert set(kernel.signatures) == forms, kernel.py_func.__name__   # have made others before)


def test_compile_beside_starts_only_on_a_cold_cache(monkeypatch):
    """A helper starts only when the run compiles on a cold cache and the conntrack kernel is not cached;
    joined, it has exited (here it finds the kernel cached: quick)."""
    from fastpath import _warmup

    first = _warmup.FirstRun(show=False)
    first.cold = False
    assert _warmup.CompileBeside.start_if_cold(first, conntrack=True) is None
    first.cold = True
    monkeypatch.setattr(_warmup, "_kernel_cold", lambda kernel: False)
    assert _warmup.CompileBeside.start_if_cold(first, conntrack=True) is None
    monkeypatch.setattr(_warmup, "_kernel_cold", lambda kernel: True)
    beside = _warmup.CompileBeside.start_if_cold(first, conntrack=True)
    assert beside is not None and beside.proc is not None
    proc = beside.proc
    beside.join()
    assert beside.proc is None and proc.returncode == 0


def test_a_failing_start_stops_the_helper(monkeypatch, tmp_path):
    """The helper starts before the cluster loads; a cluster that fails to load stops it (no process left
    compiling after the one-line error)."""
    import pytest

    from fastpath import _warmup
    from fastpath.errors import FastpathError
    from fastpath.replay import replay, sample_paths

    class Helper:
        closed = False

        def close(self):
            Helper.closed = True

        def join(self, timeout=0):
            pass

    monkeypatch.setattr(_warmup.CompileBeside, "start_if_cold", classmethod(lambda cls, first, conntrack: Helper()))
    bad = tmp_path / "cluster.json"
    bad.write_text('{"kind": "List", "items": [')
    with pytest.raises(FastpathError):
        replay(bad, sample_paths()[1], None, progress=False)
    assert Helper.closed
