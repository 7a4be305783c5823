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
