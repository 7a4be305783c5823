"""What the workers of a distributed replay run (:mod:`fastpath.distributed`).

Every function here is a pure function of its arguments (the trace and cluster
are read from their paths, the compiled plane comes from a per-process cache),
so Dask may run any of them again on another worker after a failure and get
the same answer. (The two chains, conntrack's and affinity's, carry a stage
from step to step; a step never changes what an earlier step returned but that
stage, which only the next step reads.) The pieces they hand each other are
numpy arrays in tuples or small dataclasses:

* a **resolved part** (:class:`Resolved`, or a ``(rows, flows, results)`` piece
  of one): global row numbers (int64, increasing), the
  :class:`~fastpath.traces.Flows` and the integer
  :class:`~fastpath.pipeline.Results` of those rows;
* a **change list** from connection tracking: the rows it changed (refused by
  a full table) and their new ``verdict``, ``reason``, ``path``, ``dst_node``,
  ``dst_pod``, ``hops`` (:data:`CT_FIELDS`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..pipeline import Results
from ..traces import open_trace
from ..traces.schema import Flows

#: Result columns connection tracking may change (a drop on a full table).
CT_FIELDS = ("verdict", "reason", "path", "dst_node", "dst_pod", "hops")


@dataclass(frozen=True)
class PlaneSpec:
    """How a worker gets the compiled cluster: once per process, not per task.

    ``cluster`` is a path (read by each worker: the path must be valid there) or a
    :class:`~fastpath.cluster.model.Cluster` (in the task graph once, sent to each
    worker that needs it). ``cache``: compile through the user's compiled-table cache
    (``fastpath.cache``, what the command line does); else compile in process.
    """

    cluster: Any
    lb: str = "random"
    seed: int = 0
    options: tuple = ()                          #: the service-map compiler's keywords, as sorted pairs
    cache: bool = False
    load_options: tuple = ()
    token: str = ""                              #: names this spec in the worker's cache

    def with_lb(self, lb: str) -> "PlaneSpec":
        return replace(self, lb=lb)


_PLANES: dict[tuple, list] = {}
_PLANES_LOCK = threading.Lock()


class _Plane:
    """A compiled plane checked out of this process's cache for one task (its balancer state reset)."""

    def __init__(self, spec: PlaneSpec) -> None:
        self.key = (spec.token, spec.lb, spec.seed)
        self.spec = spec
        with _PLANES_LOCK:
            free = _PLANES.setdefault(self.key, [])
            self.dp = free.pop() if free else None
        if self.dp is None:
            self.dp = _build(spec)
        self.dp.reset()

    def __enter__(self):
        return self.dp

    def __exit__(self, *exc) -> None:
        with _PLANES_LOCK:
            _PLANES.setdefault(self.key, []).append(self.dp)


def _build(spec: PlaneSpec):
    from ..replay import _compiled_plane

    opts = dict(spec.options)
    if spec.cache and not hasattr(spec.cluster, "nodes"):
        from ..cache import compile_cached

        dp = compile_cached(spec.cluster, cache=True, lean=True, load_options=dict(spec.load_options),
                            lb=spec.lb, seed=spec.seed, **opts)
        vars(dp).pop("prepare_s", None)
        return dp
    return _compiled_plane(spec.cluster, lb=spec.lb, seed=spec.seed, **opts)


def _threads() -> int:
    """This worker's threads (what the kernels may use: a worker process per core, one thread each)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


class _KernelThreads:
    def __enter__(self):
        from .._jit import get_threads, set_threads

        self.before = get_threads()
        set_threads(_threads())

    def __exit__(self, *exc) -> None:
        from .._jit import set_threads

        set_threads(self.before)


# --------------------------------------------------------------------------- facts

def facts(spec: PlaneSpec) -> dict:
    """What the driver plans with: the balancer's statefulness and the table sizes."""
    with _Plane(spec) as dp:
        counters = dp.lb in ("round-robin", "least-connection")
        affinity = bool(dp.services.has_affinity)
        return {"stateful": counters or (affinity and dp.policy is not None),
                "affinity_only": affinity and not counters and dp.policy is None,
                "nodes": len(dp.tables.node_names), "pods": len(dp.tables.pod_names),
                "services": len(dp.services.names), "policy": dp.policy is not None,
                "cluster_name": getattr(dp, "source_name", None) or getattr(dp.cluster, "source", None)}


# --------------------------------------------------------------------------- rows

def _read_only(f: Flows) -> Flows:
    """``f`` with read-only columns, as Arrow's are: the kernels' specializations for a trace's
    batches serve these rows too (none is compiled a second time for writable copies)."""
    from .._jit import read_only

    return replace(f, **{k: read_only(v) for k, v in vars(f).items() if isinstance(v, np.ndarray)})


def _read(trace: str, batch_size: int, start: int, stop: int) -> list[Flows]:
    return list(open_trace(trace, batch_size).rows(start, stop))


def _edges(batches: list[Flows]) -> tuple[int | None, int | None]:
    """First and last ``ts`` of a range (the driver checks time order across ranges)."""
    ts = [b.ts for b in batches if b.ts is not None and b.n]
    return (int(ts[0][0]), int(ts[-1][-1])) if ts else (None, None)


def _resolve(dp, batches: list[Flows]) -> Results:
    """Resolve batches in order with one plane (its balancer state carried between them)."""
    out = [dp.resolve_flows(flows) for flows in batches]
    return Results.concat(out) if out else Results.empty(0)


@dataclass
class Resolved:
    """A resolved part, kept on the worker that made it until its pieces are taken."""

    rows: np.ndarray            #: global row numbers, increasing
    flows: Flows
    results: Results
    edges: tuple = (None, None)
    node_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   #: rows per node touched
    allowed: np.ndarray | None = None                                              #: policy allow counts


def _finish_part(dp, rows: np.ndarray, flows: Flows, r: Results, edges) -> Resolved:
    n_nodes = len(dp.tables.node_names)
    touched = np.concatenate([r.src_node[r.src_node >= 0], r.dst_node[(r.dst_node >= 0) & (r.dst_node != r.src_node)]])
    allowed = dp.policy.allowed.copy() if dp.policy is not None else None
    return Resolved(rows, flows, r, edges, np.bincount(touched, minlength=n_nodes).astype(np.int64), allowed)


def resolve_range(spec: PlaneSpec, trace: str, batch_size: int, start: int, stop: int) -> Resolved:
    """Rows ``start:stop`` read and resolved (no balancer state carried in: a stateless balancer)."""
    with _KernelThreads(), _Plane(spec) as dp:
        _policy_counting(dp)
        batches = _read(trace, batch_size, start, stop)
        flows = Flows.concat(batches) if batches else None
        r = _resolve(dp, batches)
        return _finish_part(dp, np.arange(start, start + r.verdict.shape[0], dtype=np.int64), flows, r,
                            _edges(batches))


def _policy_counting(dp) -> None:
    if dp.policy is not None:
        dp.policy.counting = True


# --------------------------------------------------------------------------- stateful partitions

def state_keys(spec: PlaneSpec, trace: str, batch_size: int, start: int, stop: int) -> dict:
    """The node whose kube-proxy state each row of ``start:stop`` touches (the stateless half of the
    service stage decides it: the client's node, or for an external client the receiving node).
    Every piece of balancer state is that node's own: round-robin counters per (node, service port),
    least-connection counts per (node, endpoint), ClientIP affinity per (service port, node, client),
    so a node's rows need nothing from another node's.

    Returns ``node`` (int32 per row, -1: no state), ``counts`` (rows per node + 1, slot 0 for -1)
    and the range's first and last ``ts``.
    """
    with _KernelThreads(), _Plane(spec.with_lb("random")) as dp:
        batches = _read(trace, batch_size, start, stop)
        r = _resolve(dp, batches)
        node = r.src_node.astype(np.int32)
        node = np.where(r.service >= 0, node, np.int32(-1))     # only service traffic has balancer state
        return {"node": node,
                "counts": np.bincount(node.astype(np.int64) + 1, minlength=len(dp.tables.node_names) + 1),
                "edges": _edges(batches)}


def split_range(keys: dict, part_of_node: np.ndarray, trace: str, batch_size: int, start: int, stop: int,
                parts: int) -> list:
    """Rows ``start:stop`` split by state partition: ``(rows, flows)`` for each partition."""
    batches = _read(trace, batch_size, start, stop)
    if not batches:
        return [None] * parts
    flows = Flows.concat(batches)
    node = keys["node"].astype(np.int64)
    q = part_of_node[node + 1]
    free = node < 0                              # rows without balancer state: spread evenly
    q[free] = ((np.flatnonzero(free) + start) // 4096) % parts
    order = np.argsort(q, kind="stable")
    bounds = np.searchsorted(q[order], np.arange(parts + 1))
    out = []
    for p in range(parts):
        idx = order[bounds[p]:bounds[p + 1]]
        out.append((idx + start, flows.take(idx)) if idx.size else None)   # names as read (--with-flows)
    return out


def resolve_partition(spec: PlaneSpec, batch_size: int, *pieces) -> Resolved:
    """One state partition's rows (its pieces from every range, in range order), resolved in trace
    order with one balancer state, as the single-process replay resolves them."""
    got = [p for p in pieces if p is not None]
    with _KernelThreads(), _Plane(spec) as dp:
        _policy_counting(dp)
        if not got:
            return _finish_part(dp, np.zeros(0, np.int64), None, Results.empty(0), (None, None))
        rows = np.concatenate([p[0] for p in got])
        flows = _read_only(Flows.concat([p[1] for p in got]))
        batches = [flows.slice(i, i + batch_size) for i in range(0, flows.n, batch_size)]
        r = _resolve(dp, batches)
        return _finish_part(dp, rows, flows, r, (None, None))


# --------------------------------------------------------------------------- ClientIP affinity alone

def affinity_split(spec: PlaneSpec, part: Resolved, parts: int) -> list:
    """A stateless balancer's range, resolved on its own, is exact but for its rows to ClientIP-affinity
    service ports: their state is the affinity table, keyed by (service port, node, client IP) only (the
    node that DNATs: the row's ``src_node``). Those rows (row numbers and flows) for each of ``parts``
    key partitions, by a hash of the key."""
    from ..tables.balancer_state import affinity_keys_np
    from ..tables.balancers import F_AFFINITY

    with _Plane(spec) as dp:
        flags = dp.services.arrays.sp_flags
        n_nodes = len(dp.services.node_names)
    sp = part.results.service
    aff = np.flatnonzero((sp >= 0) & ((flags[np.maximum(sp, 0)] & F_AFFINITY) != 0))
    if aff.size == 0:
        return [None] * parts
    key = affinity_keys_np(sp[aff], part.results.src_node[aff], n_nodes, part.flows.src_ip[aff])
    q = ((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(parts)
    out = []
    for p in range(parts):
        idx = aff[q == p]
        out.append((part.rows[idx], part.flows.take(idx).compact_names()) if idx.size else None)
    return out


def affinity_step(spec: PlaneSpec, state, batch_size: int, piece) -> tuple:
    """One key partition's affinity rows of one range (``piece``: row numbers and flows, or None),
    resolved in trace order with the partition's affinity table carried from the previous range's step
    (``state``: the :class:`~fastpath.tables.balancer_state.BalancerState`; None: the first range).
    Returns the state for the next step and ``(rows, results)``. A chain per key partition: range k's
    answers need only ranges up to k, so the conntrack chain behind it never waits for the whole trace."""
    with _KernelThreads(), _Plane(spec) as dp:
        if state is not None:
            dp.stage.state = state
        fix = None
        if piece is not None:
            rows, flows = piece
            flows = _read_only(flows)
            fix = rows, _resolve(dp, [flows.slice(i, i + batch_size) for i in range(0, flows.n, batch_size)])
        state = dp.stage.state
        dp.reset()                               # the plane goes back to the pool with a fresh state
        return state, fix


def fixed_part(part: Resolved, *fixes) -> Resolved:
    """``part`` with its affinity rows' results from their key partitions (a copy)."""
    got = [f for f in fixes if f is not None]
    if not got:
        return part
    r = part.results.copy()
    for rows, res in got:
        lo, hi = np.searchsorted(rows, [part.rows[0], part.rows[-1] + 1])
        if lo == hi:
            continue
        at = rows[lo:hi] - part.rows[0]
        for k, v in vars(res).items():
            getattr(r, k)[at] = v[lo:hi]
    return replace(part, results=r)


# --------------------------------------------------------------------------- pieces

def piece_rows(part: Resolved, start: int, stop: int) -> tuple | None:
    """The part's rows in ``start:stop``, their flows and results (what one range's writer, or the
    conntrack chain, needs from it)."""
    lo, hi = np.searchsorted(part.rows, [start, stop])
    if lo == hi:
        return None
    return part.rows[lo:hi], part.flows.slice(lo, hi), part.results.take(slice(lo, hi))


def _gather(pieces: list, start: int, stop: int) -> tuple[Flows, Results]:
    """Rows ``start:stop`` in trace order from pieces (``(rows, flows, results)`` or :class:`Resolved`)
    that hold them all between them. One piece holding exactly them is used as it is (no copy)."""
    got = [(p.rows, p.flows, p.results) if isinstance(p, Resolved) else p for p in pieces if p is not None]
    n = sum(g[0].size for g in got)
    if n != stop - start:
        raise RuntimeError(f"rows {start}:{stop}: {n} resolved rows arrived for {stop - start}")   # a bug, not input
    if not got:
        return None, Results.empty(0)
    if len(got) == 1:
        return got[0][1], got[0][2]
    rows = np.concatenate([g[0] for g in got])
    order = np.argsort(rows, kind="stable")
    return _read_only(Flows.concat([g[1] for g in got]).take(order)), Results.concat([g[2] for g in got]).take(order)


def _with_changes(r: Results, start: int, changes: list) -> Results:
    """``r`` with connection tracking's changes (a copy where there are any)."""
    changes = [c for c in changes if c is not None]
    if not changes:
        return r
    r = r.copy()
    for c in changes:
        at = c[0] - start
        for k, v in zip(CT_FIELDS, c[1:]):
            getattr(r, k)[at] = v
    return r


def piece_group(part: Resolved, own: np.ndarray, pod_node: np.ndarray) -> tuple | None:
    """The part's rows that touch a node of one conntrack group (``own``), with their flows and results."""
    from ..stages.conntrack_split import relevant_rows

    if part.rows.size == 0:
        return None
    r = part.results
    keep = np.flatnonzero(relevant_rows(r.src_node, r.dst_node, r.dst_pod, pod_node, own))
    if keep.size == 0:
        return None
    return part.rows[keep], part.flows.take(keep), r.take(keep)


def small(part: Resolved) -> dict:
    """What the driver reads of a part: its time edges, rows per node, policy allow counts."""
    return {"edges": part.edges, "node_rows": part.node_rows, "allowed": part.allowed, "n": int(part.rows.size)}


# --------------------------------------------------------------------------- writing

@dataclass(frozen=True)
class Output:
    """Where and how the writing tasks write their parts."""

    folder: str | None          #: a temporary folder beside the results (None: nothing written)
    suffix: str = ".arrow"      #: parts are Arrow IPC files
    schema: Any = None          #: the results' pyarrow schema, metadata included
    flow_cols: tuple = ()       #: the input's flow columns written beside the results (--with-flows)


def part_name(k: int, suffix: str) -> str:
    """The file name of results part ``k``: the parts in name order are the rows in trace order."""
    return f"part-{k:05d}{suffix}"


def _write(dp, out: Output, k: int, r: Results, flows: Flows, batch_size: int) -> None:
    import os
    from pathlib import Path

    import pyarrow as pa

    from ..outputs import flow_arrays

    final = Path(out.folder) / part_name(k, out.suffix)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        sink = pa.OSFile(str(tmp), "wb")
        writer = pa.ipc.new_file(sink, out.schema)
        for lo in range(0, r.verdict.shape[0], batch_size):
            batch = dp.to_arrow(r.take(slice(lo, lo + batch_size)))
            if out.flow_cols:
                batch = pa.RecordBatch.from_arrays(
                    batch.columns + flow_arrays(flows.slice(lo, lo + batch_size), list(out.flow_cols)),
                    schema=out.schema)
            writer.write_batch(batch)
        writer.close()
        sink.close()
        os.replace(tmp, final)               # a retried task writes the same bytes again
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_range(spec: PlaneSpec, batch_size: int, start: int, stop: int, k: int, out: Output, pieces: list,
                changes: list) -> dict:
    """Rows ``start:stop`` put together in trace order (from every piece that holds some, then the
    changes connection tracking made), counted, and written as part ``k``. Returns the counts."""
    with _KernelThreads(), _Plane(spec) as dp:
        flows, r = _gather(pieces, start, stop)
        return _count_and_write(dp, batch_size, k, out, _with_changes(r, start, changes), flows)


def _count_and_write(dp, batch_size: int, k: int, out: Output, r: Results, flows: Flows | None) -> dict:
    from ..replay import _Tally
    from ..stages.policy_summary import PolicyTally

    n = r.verdict.shape[0]
    tally = _Tally(len(dp.services.names), len(dp.tables.pod_names), dense=False)
    ptally = PolicyTally(dp) if dp.policy is not None else None
    for lo in range(0, n, batch_size):
        part = r.take(slice(lo, lo + batch_size))
        tally.add(part, flows.slice(lo, lo + batch_size) if flows is not None else _NoBytes)
        if ptally is not None:
            ptally.add(part)
    if out.folder is not None:
        _write(dp, out, k, r, flows, batch_size)
    return {"tally": tally.compact(), "policy_pairs": ptally.pairs if ptally is not None else None, "n": n}


class _NoBytes:
    bytes = None


def resolve_write_range(spec: PlaneSpec, trace: str, batch_size: int, start: int, stop: int, k: int,
                        out: Output) -> dict:
    """A stateless replay without connection tracking: rows ``start:stop`` read, resolved, counted and
    written as part ``k`` in one task (nothing kept between tasks)."""
    with _KernelThreads(), _Plane(spec) as dp:
        _policy_counting(dp)
        batches = _read(trace, batch_size, start, stop)
        r = _resolve(dp, batches)
        got = _count_and_write(dp, batch_size, k, out, r, Flows.concat(batches) if batches else None)
        got["edges"] = _edges(batches)
        got["allowed"] = dp.policy.allowed.copy() if dp.policy is not None else None
        return got


# --------------------------------------------------------------------------- the summary

def summarize(spec: PlaneSpec, counts: list, allowed, top: int) -> dict:
    """The summary's counts from every writing task, merged exactly, with the names the plane knows."""
    from ..codes import PATHS, REASONS, VERDICTS
    from ..replay import _ready_backends, _Tally
    from ..stages.policy_summary import PolicyTally

    with _Plane(spec) as dp:
        tally = _Tally.merged([c["tally"] for c in counts], len(dp.services.names), len(dp.tables.pod_names))
        policy = None
        if dp.policy is not None:
            pt = PolicyTally(dp)
            for c in counts:
                pt.pairs += c["policy_pairs"]
            dp.policy.allowed[:] = allowed if allowed is not None else 0
            policy = pt.result()
            dp.policy.allowed[:] = 0
        by_path = {name: int(n) for name, n in zip(PATHS, tally.path)}
        forwarded = by_path["routed"] + by_path["bridge"]
        return {
            "flows": int(sum(c["n"] for c in counts)),
            "by_verdict": {name: int(n) for name, n in zip(VERDICTS, tally.verdict)},
            "by_path": by_path,
            "by_reason": {name: int(n) for name, n in zip(REASONS[1:], tally.reason[1:])},
            "top_services": tally.top_services(list(dp.services.names), top, _ready_backends(dp)),
            "cross_node_share": round(by_path["routed"] / forwarded, 6) if forwarded else 0.0,
            "policy": policy,
        }


# --------------------------------------------------------------------------- connection tracking

def pod_nodes(spec: PlaneSpec) -> np.ndarray:
    """Each pod's node (what decides which conntrack group a destination pod's FDB entry is in)."""
    with _Plane(spec) as dp:
        return np.ascontiguousarray(dp.tables.pod_node, dtype=np.int32)


def _stage(dp, ct_opts: dict):
    from ..stages.conntrack import ConntrackStage

    return ConntrackStage(dp, conntrack_max=ct_opts.get("conntrack_max"), interval=ct_opts.get("interval", 1.0),
                          default_duration=getattr(dp.services, "conn_duration", 30.0),
                          timeline=ct_opts.get("timeline") is not None, seed=getattr(dp, "seed", 0))


@dataclass
class GroupRun:
    """One conntrack group's round, kept on its worker: the rows it changed, its figures, its refusals."""

    changed_rows: np.ndarray     #: global rows whose client node is this group's and conntrack changed
    changed: tuple               #: their new values of :data:`CT_FIELDS`
    figures: Any                 #: fastpath.stages.conntrack_split.GroupFigures
    refused_s: np.ndarray        #: global rows whose client node (kept here) refused the connection
    refused_d: np.ndarray        #: global rows whose far node (kept here) refused it


def track_group_task(spec: PlaneSpec, ct_opts: dict, own: np.ndarray, clock: tuple, assumed: tuple,
                     pieces: list) -> GroupRun:
    """One node group's conntrack over its rows (every piece that touches its nodes, put in trace order),
    assuming the refusals ``assumed`` (client-side rows, far-side rows) of the other groups' last round."""
    from ..stages.conntrack_split import GroupFigures, far_ok_of, track_group

    got = [p for p in pieces if p is not None]
    own = np.asarray(own) != 0
    with _Plane(spec) as dp:
        stage = _stage(dp, ct_opts)
        if got:
            rows = np.concatenate([p[0] for p in got])
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
            flows = Flows.concat([p[1] for p in got]).take(order)
            r = Results.concat([p[2] for p in got]).take(order)
        else:
            rows, flows, r = np.zeros(0, np.int64), None, Results.empty(0)
        before = {k: getattr(r, k).copy() for k in CT_FIELDS}
        sn, dn = r.src_node.astype(np.int64), r.dst_node.astype(np.int64)
        own_s = (sn >= 0) & own[np.maximum(sn, 0)]
        own_d = (dn >= 0) & own[np.maximum(dn, 0)]
        far_ok = far_ok_of(own_s, own_d, ~np.isin(rows, assumed[0]), ~np.isin(rows, assumed[1]))
        if flows is None:                        # a group whose nodes see no flow still has timeline rows
            z = np.zeros(0, np.uint32)
            flows = Flows(z, z, z.astype(np.uint16), z.astype(np.uint16), z.astype(np.uint8), ts=z.astype(np.int64))
        decided = track_group(stage, _read_only(flows), r, own, far_ok, clock)
        mine = own_s & np.logical_or.reduce([getattr(r, k) != before[k] for k in CT_FIELDS]) if rows.size \
            else np.zeros(0, bool)
        refused_s, refused_d = _refused(decided)
        return GroupRun(rows[mine], tuple(getattr(r, k)[mine] for k in CT_FIELDS), GroupFigures.of(stage),
                        rows[refused_s], rows[refused_d])


def _refused(decided: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (masks) whose client node's table, and whose far node's table, kept here, refused them."""
    from ..stages import conntrack_kernel as K

    return (((decided & K.D_SN_OWNED) != 0) & ((decided & K.D_SN_OK) == 0),
            ((decided & K.D_DN_OWNED) != 0) & ((decided & K.D_DN_OK) == 0))


def refusals(run: GroupRun) -> tuple[np.ndarray, np.ndarray]:
    return run.refused_s, run.refused_d


def group_figures(run: GroupRun):
    return run.figures


def changes_in(run: GroupRun, start: int, stop: int) -> tuple | None:
    """The group's changed rows in ``start:stop`` and their new values (what one writer applies)."""
    lo, hi = np.searchsorted(run.changed_rows, [start, stop])
    if lo == hi:
        return None
    return (run.changed_rows[lo:hi], *(v[lo:hi] for v in run.changed))


def conntrack_summary(spec: PlaneSpec, ct_opts: dict, figures: list | None) -> dict:
    """The summary's conntrack fields (and the timeline table) from every group's figures (None: a
    trace without rows)."""
    from ..stages.conntrack_split import merge_figures

    with _Plane(spec) as dp:
        if figures is None:                      # no flow at all: the fresh tables, finished
            view = _stage(dp, ct_opts)
            view.finish()
        else:
            view = merge_figures(_stage(dp, ct_opts), figures)
        out = dict(view.summary())
        out["timeline"] = view.timeline_table() if ct_opts.get("timeline") is not None else None
        return out


# --------------------------------------------------------------------------- the conntrack chain

def chain_step(spec: PlaneSpec, ct_opts: dict, stage, pieces: list, start: int, stop: int,
               batch_size: int) -> tuple:
    """Connection tracking over rows ``start:stop``, every node in one stage carried from the previous
    range's step (``None``: the first range). Returns the stage (for the next step) and the rows it
    changed with their new values of :data:`CT_FIELDS`. The chain runs in trace order, one range after
    another, while later ranges are still being resolved: exact whatever the tables do."""
    if stage is None:
        with _Plane(spec) as dp:
            stage = _stage(dp, ct_opts)
    if stop <= start:
        return stage, None
    flows, r0 = _gather(pieces, start, stop)
    r = r0.copy()
    n = r.verdict.shape[0]
    decided = np.zeros(n, np.uint8)
    for lo in range(0, n, batch_size):           # batch by batch, as the single process: its pools stay small
        hi = min(n, lo + batch_size)
        stage.run(flows.slice(lo, hi), r.take(slice(lo, hi)), decided=decided[lo:hi])
    # every node is kept: a row changes only where a table refused it
    refused_s, refused_d = _refused(decided)
    rows = np.flatnonzero(refused_s | refused_d)
    return stage, (rows + start, *(getattr(r, k)[rows] for k in CT_FIELDS)) if rows.size else None


def chain_finish(ct_opts: dict, stage) -> dict:
    """The chain's last interval closed: the summary's conntrack fields and the timeline table."""
    stage.finish()
    out = dict(stage.summary())
    out["timeline"] = stage.timeline_table() if ct_opts.get("timeline") is not None else None
    return out


# --------------------------------------------------------------------------- cluster events

def replay_with_events(cluster, trace: str, out: str | None, events, options: dict):
    """The whole replay of a trace with cluster events (``--events``), in this one task, as one process
    runs it (``fastpath.replay``): its results file and its summary. The events are applied in time
    order to every stage's tables at once (``fastpath.live``), so this part is not split."""
    from ..replay import replay

    return replay(cluster, trace, out, events=events, threads=_threads(), progress=False, **options)
