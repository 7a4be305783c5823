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
