"""The one numba decorator of the project, and the warm-up entry.

Every kernel in fastpath compiles through :func:`jit` (or :func:`pjit` for the
parallel forms), so compile options live in one place: ``cache=True`` so a
second process starts fast, ``nogil=True`` so callers may thread, and
``error_model="numpy"`` so arithmetic never raises inside a kernel.

Idle threads of the parallel kernels sleep rather than spin: ``OMP_WAIT_POLICY``
is set to ``PASSIVE`` unless the user set it, before numba loads its OpenMP
layer (which reads it once). The replay's reader and writer threads, and
``synth trace``'s writer, share the cores with those threads between kernel
calls; spinning, they took a third of the CPU (a 20M-flow replay with
connection tracking: 11.1-11.5 s and 17.5-18.1 s of CPU, against 9.9-10.1 s and
11.7-11.9 s sleeping).
"""
from __future__ import annotations

import os
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")     # before numba's OpenMP layer loads (see above)

import numba  # noqa: E402 - after the wait policy
import numpy as np  # noqa: E402
from numba.core import types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

#: Options shared by every kernel.
JIT_OPTIONS: dict[str, Any] = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


def jit(fn: Callable | None = None, **overrides: Any):
    """Compile ``fn`` with the project-wide options (usable bare or with overrides)."""
    opts = {**JIT_OPTIONS, **overrides}
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)


def pjit(fn: Callable | None = None, **overrides: Any):
    """Like :func:`jit`, with ``parallel=True`` for kernels that use ``numba.prange``."""
    return jit(fn, parallel=True, **overrides)


@intrinsic
def select_unpredictable(typingctx, cond, a, b):
    """``a if cond else b`` as a select the compiler must keep (LLVM ``!unpredictable``).

    LLVM turns a plain select whose operand is a load into a branch around that
    load; where the condition is random per lookup, the branch mispredicts and
    costs more than the load it skips. ``a`` and ``b`` must have the same type.
    """
    if a != b:
        return None
    sig = a(cond, a, b)

    def codegen(context, builder, signature, args):
        c = context.cast(builder, args[0], signature.args[0], types.boolean)
        inst = builder.select(c, args[1], args[2])
        inst.set_metadata("unpredictable", builder.module.add_metadata([]))
        return inst

    return sig, codegen


@intrinsic
def popcount64(typingctx, x):
    """Population count of a uint64 (one ``popcnt`` instruction)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        val = context.cast(builder, args[0], signature.args[0], types.uint64)
        return builder.ctpop(val)

    return sig, codegen


@intrinsic
def bit_length64(typingctx, x):
    """Bits needed for unsigned ``x`` (0 for 0): ``64 - ctlz(x)``, one ``lzcnt`` instruction."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        val = context.cast(builder, args[0], signature.args[0], types.uint64)
        lz = builder.ctlz(val, ir.Constant(ir.IntType(1), 0))
        return builder.sub(ir.Constant(ir.IntType(64), 64), lz)

    return sig, codegen


#: Flows per group in the kernels that walk a chunk one table level at a time
#: (every flow's first lookup, then every flow's second, ...), so the CPU keeps a
#: group's independent memory reads in flight together.
GROUP = 32
#: :data:`GROUP` as the unsigned step of such a walk.
UGROUP = np.uint64(GROUP)


@jit(inline="always")
def chunk_bounds(c, chunk, n):
    """Rows ``[lo, hi)`` of parallel work item ``c``, as unsigned integers.

    numba wraps negative indices around, and for a signed index it cannot prove
    non-negative (``range(c * chunk, hi)`` inside ``prange``) it emits that check
    on every array access, which keeps LLVM from vectorizing a column pass
    (measured 4x slower). Kernels loop over ``range(lo, hi)`` from here.
    """
    lo = np.uint64(c) * np.uint64(chunk)
    return lo, min(np.uint64(n), lo + np.uint64(chunk))


def set_threads(n: int | None) -> int:
    """Set the number of threads the parallel kernels use (``None``: all cores).

    Returns the number in force afterwards.
    """
    if n is None or n <= 0:
        n = numba.config.NUMBA_NUM_THREADS
    n = min(int(n), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def get_threads() -> int:
    """Number of threads the parallel kernels use now."""
    return numba.get_num_threads()


def prepare() -> None:
    """Compile (or load from cache) every kernel, so timing starts warm.

    The CLI and the benchmarks call this before they measure anything.
    """
    from . import _warmup

    _warmup.run()


def cpu_count() -> int:
    return os.cpu_count() or 1


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to start loading ``arr[idx]`` into cache (``llvm.prefetch``; no fault if out of range).

    ``idx`` is a flat element index from the start of the data (a C-contiguous
    2-D array takes ``row * width + col``).

    Issued for a whole group of independent lookups before probing them, so their
    cache misses overlap instead of waiting behind each other's branch mispredictions.
    """
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.gep(ary.data, [index])
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        i32 = ir.IntType(32)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def stack_empty(typingctx, n, dtype):
    """A 1-D C array of ``n`` items of ``dtype`` on the calling kernel's stack (``n`` a constant).

    Scratch for the sequential per-item passes of the parallel kernels, which
    compile without reference counting and so cannot call ``np.empty``. The
    array lives as long as the calling function's frame: never return it or
    keep it. A stack slot is also known to LLVM to alias none of the kernel's
    arguments, so the pass keeps its loads and stores around scratch writes.
    """
    if not isinstance(n, types.IntegerLiteral) or not isinstance(dtype, (types.NumberClass, types.DType)):
        return None
    count = n.literal_value
    item = dtype.dtype
    arrty = types.Array(item, 1, "C")
    sig = arrty(n, dtype)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        llty = context.get_data_type(item)
        size = context.get_constant(types.intp, count)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(llty))
        ary = context.make_array(arrty)(context, builder)
        data = cgutils.alloca_once(builder, llty, size=size)
        context.populate_array(ary, data=data, shape=[size], strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return sig, codegen


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: a kernel's input columns are then always read-only, as
    Arrow's zero-copy buffers are, so the kernel compiles one specialization, not two."""
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v
