"""Replaying a trace: stream its batches through the data plane, write results, sum up.

:func:`replay` reads a trace in bounded batches (:func:`fastpath.traces.open_trace`),
resolves each batch with a compiled :class:`~fastpath.pipeline.DataPlane`, writes
the result columns in input order (Arrow IPC, or Parquet by the output's
extension) under a temporary name in the output's folder, and renames it at
the end: a failed or interrupted replay leaves no file behind. Reading,
resolving and writing overlap on three threads (:mod:`fastpath._stream`):
batch k+1 is read while batch k is resolved and batch k-1 summed up and
written; the resolving stays on one thread, in trace order. On a cold numba
cache a line on stderr says the kernels are being compiled (once). The
:class:`Summary` counts flows by verdict and path, ranks services with their
backend imbalance, and says how fast it went.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._jit import get_threads, set_threads
from ._stream import NO_BYTES, NO_PACKETS, read_only, stream, tally_batch
from .cluster.model import Cluster
from .codes import PATHS, REASONS, VERDICTS
from .errors import FastpathError
from .files import RESULT_BYTES_PER_ROW, check_free_space, check_outputs, temp_beside, temp_done, write_error
from .outputs import flow_arrays, flow_fields_of_schema, output_format, results_metadata
from .traces import DEFAULT_BATCH_SIZE, open_trace

#: Output endings written as Parquet; any other ending is written as Arrow IPC (Feather v2).
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Services listed in the summary.
TOP_SERVICES = 10
#: Names of the bundled sample, in ``traces/`` at the repository root.
SAMPLE_CLUSTER, SAMPLE_TRACE = "sample-cluster.json", "sample-trace.arrow"
#: Batches of (service, backend) pair counts gathered before they are merged.
_PAIR_MERGE_EVERY = 32
#: Largest (service ports + 1) x (pods + 1) counted in a dense array (16 Mi entries, 128 MB of address space).
_DENSE_PAIRS = 1 << 24
#: An empty pair-count array: counting sparsely.
_NO_KEYS = np.zeros(0, np.int64)


def sample_paths() -> tuple[Path, Path]:
    """The bundled sample cluster and trace.

    Looked for, in order: ``$FASTPATH_SAMPLE`` (a folder); ``traces/`` beside the
    package's source tree (a clone, or an editable install); the ``fastpath.sample``
    package data (a wheel); ``traces/`` under the current directory.

    Raises
    ------
    FastpathError
        None of these holds both files; the message lists where it looked.
    """
    places = []
    if os.environ.get("FASTPATH_SAMPLE"):
        places.append(Path(os.environ["FASTPATH_SAMPLE"]))
    places.append(Path(__file__).resolve().parents[1] / "traces")
    try:
        spec = importlib.util.find_spec("fastpath.sample")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        places += [Path(p) for p in spec.submodule_search_locations]
    places.append(Path.cwd() / "traces")
    for place in places:
        if (place / SAMPLE_CLUSTER).is_file() and (place / SAMPLE_TRACE).is_file():
            return place / SAMPLE_CLUSTER, place / SAMPLE_TRACE
    raise FastpathError(f"bundled sample ({SAMPLE_CLUSTER}, {SAMPLE_TRACE}) not found in "
                        + ", ".join(str(p) for p in places) + "; give CLUSTER and TRACE")


# --------------------------------------------------------------------------- summary

@dataclass
class ServiceLoad:
    """One service port's share of a replay."""

    service: str       #: ``namespace/name:port``
    flows: int         #: flows that hit it
    backends: int      #: backends that got at least one flow
    imbalance: float   #: busiest backend's flows / mean over the backends that got flows (1.0: even)
    bytes: int | None = None  #: bytes of those flows, where the trace has ``bytes``
    packets: int | None = None  #: packets of those flows, where the trace has ``packets``


@dataclass
class Summary:
    """What a replay did.

    ``flows_per_s`` counts the streaming part only (read, resolve, write);
    ``compile_s`` is compiling the cluster and JIT-compiling (or loading) the
    kernels; ``wall_s`` is the whole call.
    ``cross_node_share`` is routed / (routed + bridge): of the flows forwarded
    between pods and hosts inside the cluster, the share that crossed nodes.
    """

    cluster: str
    trace: str
    output: str | None
    flows: int
    by_verdict: dict[str, int]
    by_path: dict[str, int]
    top_services: list[ServiceLoad]
    cross_node_share: float
    wall_s: float
    compile_s: float
    flows_per_s: float
    lb: str
    seed: int
    batch_size: int
    threads: int
    #: flows by ``reason`` (codes.REASONS, docs/dataplane.md): every one that was not delivered or egress
    by_reason: dict[str, int] = field(default_factory=dict)
    #: NetworkPolicy figures (fastpath.stages.policy.PolicyTally.result); None without policies
    policy: dict | None = None
    #: connection tracking (fastpath.stages.conntrack; None when off: no ``ts``, or --no-conntrack):
    #: new connections dropped by a full table, FDB floods, neighbour-table overflows, and per node
    #: name {conntrack_peak, conntrack_max, conntrack_drops, fdb_floods, neigh_peak, neigh_overflows}
    conntrack_drops: int | None = None
    fdb_floods: int | None = None
    neigh_overflows: int | None = None
    nodes: dict | None = None
    #: cluster events (``--events``, docs/events.md; None without): TCP/SCTP connections whose pod went
    #: away first, UDP flows flushed, groups of events, and one record per group (churn)
    broken_connections: int | None = None
    udp_flushed: int | None = None
    event_groups: int | None = None
    events: list | None = None
    #: notes about the events (skipped kinds, endpoints derived from pods), said once
    event_warnings: list | None = None
    #: a replay on a Dask cluster (fastpath.distributed, docs/distributed.md; None in one process): workers,
    #: ranges, state partitions, conntrack groups and rounds, seconds per phase, bytes handed between tasks
    distributed: dict | None = None
    table: pa.Table | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``--summary-json`` writes); the results table is left out."""
        d = asdict(self)
        d.pop("table")
        return d

    def render(self, console: Any = None) -> Any:
        """Print the summary as rich tables (to ``console``, default stdout); returns the renderable.

        The default console (:func:`fastpath.outputs.console`) is full width when stdout is
        not a terminal, so piped names are never cut, and honours ``NO_COLOR``.
        """
        from rich.columns import Columns
        from rich.console import Group
        from rich.table import Table

        from .outputs import console as make_console

        console = console or make_console()
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        head.add_row("cluster", self.cluster)
        head.add_row("trace", self.trace)
        head.add_row("results", self.output or "(not written)")
        head.add_row("flows", f"{self.flows:,}")
        head.add_row("balancer", f"{self.lb}, seed {self.seed}")
        where = (f"{self.threads} Dask workers" if self.distributed is not None else f"{self.threads} threads")
        head.add_row("throughput", f"{self.flows_per_s / 1e6:,.2f} M flows/s "
                                   f"({where}, batches of {self.batch_size:,})")
        head.add_row("wall time", f"{self.wall_s:.2f} s (compile {self.compile_s:.2f} s)")
        head.add_row("cross-node", f"{self.cross_node_share:.1%} of forwarded flows routed to another node")

        total = max(self.flows, 1)
        tables = []
        reasons = {k: v for k, v in self.by_reason.items() if v}
        for what, rows in (("verdict", self.by_verdict), ("path", self.by_path), ("reason", reasons)):
            if not rows:
                continue                                # no reason table when every flow got through
            t = Table(title=f"flows by {what}", title_justify="left")
            t.add_column(what, overflow="fold")
            t.add_column("flows", justify="right")
            t.add_column("share", justify="right")
            for name, n in rows.items():
                t.add_row(name, f"{n:,}", f"{n / total:.1%}")
            tables.append(t)
        counts = Columns(tables, padding=(0, 4))

        top = Table(title=f"top {len(self.top_services)} services by flows", title_justify="left",
                    caption="backends: the port's Ready endpoints, plus any other endpoint that got flows "
                            "(as fastpath.study counts them); imbalance: busiest backend / mean over them",
                    caption_justify="left")
        for col, just in (("service", "left"), ("flows", "right"), ("share", "right"),
                          ("backends (Ready + used)", "right"), ("imbalance (max/mean)", "right")):
            top.add_column(col, justify=just, overflow="fold")
        for s in self.top_services:
            top.add_row(s.service, f"{s.flows:,}", f"{s.flows / total:.1%}", str(s.backends), f"{s.imbalance:.2f}")
        group = Group(head, counts, top)
        if self.policy is not None:
            from .stages.policy import render_policy_summary
            group = Group(group, render_policy_summary(self.policy))
        if self.nodes is not None:
            from .stages.conntrack import render_nodes
            group = Group(group, render_nodes(self.nodes, self.conntrack_drops, self.fdb_floods,
                                              self.neigh_overflows or 0))
        if self.events is not None:
            from .live import render_events
            group = Group(group, render_events(self))
        console.print(group)
        return group


class _Tally:
    """Running counts over result batches (integer columns only, vectorized).

    Service and pod indices are shifted by one so that "none" (-1) lands in
    slot 0: every count is a bincount or a unique over the whole batch, with no
    boolean masking (which costs more than the counting).
    """

    def __init__(self, n_services: int, n_pods: int, dense: bool = True) -> None:
        self.verdict = np.zeros(len(VERDICTS), np.int64)
        self.reason = np.zeros(len(REASONS), np.int64)
        self.path = np.zeros(len(PATHS), np.int64)
        self.service = np.zeros(n_services + 1, np.int64)        # slot 0: no service
        self.service_bytes = np.zeros(n_services + 1, np.uint64)
        self.has_bytes = False
        self.service_packets = np.zeros(n_services + 1, np.uint64)
        self.has_packets = False
        self.pod_slots = n_pods + 1                                # slot 0: no pod
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        # (service, backend) counts: a dense array while it is small enough (zeroed lazily by
        # the OS, so only the pages of pairs that occur take memory), else sorted key runs.
        # dense=False: always sparse (a distributed replay's task counts a range once: the dense array's
        # pages would cost more to touch and scan than the range's own key runs)
        pairs = self.service.shape[0] * self.pod_slots
        self._dense = np.zeros(pairs, np.int64) if dense and pairs <= _DENSE_PAIRS else None

    def add(self, r, flows) -> None:
        # one pass of the tally kernel (nogil: it runs on the writer thread beside the resolving)
        if flows.bytes is not None:
            self.has_bytes = True
        nbytes = read_only(flows.bytes) if flows.bytes is not None else NO_BYTES
        if flows.packets is not None:
            self.has_packets = True
        npackets = read_only(flows.packets) if flows.packets is not None else NO_PACKETS
        dense = self._dense is not None
        keys = _NO_KEYS if dense else np.empty(len(r), np.int64)
        k = tally_batch(r.verdict, r.path, r.service, r.dst_pod, nbytes, npackets, self.verdict, self.path,
                        self.service, self.service_bytes, self.service_packets, self._dense if dense else _NO_KEYS,
                        self.pod_slots, keys)
        self.reason += np.bincount(r.reason, minlength=len(REASONS))[:len(REASONS)]
        if dense:
            return
        self._pairs.append(np.unique(keys[:k], return_counts=True))
        if len(self._pairs) >= _PAIR_MERGE_EVERY:
            self._pairs = [self._merged()]

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        if self._dense is not None:
            keys = np.flatnonzero(self._dense)
            return keys, self._dense[keys]
        if not self._pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.concatenate([k for k, _ in self._pairs])
        counts = np.concatenate([c for _, c in self._pairs])
        uniq, inv = np.unique(keys, return_inverse=True)
        return uniq, np.bincount(inv, weights=counts).astype(np.int64)

    def compact(self) -> dict:
        """The counts as a few small arrays (the (service, backend) pairs sparse): what a distributed
        replay's writing task sends back (:mod:`fastpath.distributed`)."""
        keys, counts = self._merged()
        return {"verdict": self.verdict, "reason": self.reason, "path": self.path, "service": self.service,
                "service_bytes": self.service_bytes, "has_bytes": self.has_bytes,
                "service_packets": self.service_packets, "has_packets": self.has_packets, "keys": keys, "counts": counts}

    @classmethod
    def merged(cls, parts: list[dict], n_services: int, n_pods: int) -> "_Tally":
        """One tally holding the sum of :meth:`compact` counts (exact: every count is a sum)."""
        t = cls.__new__(cls)
        t.pod_slots = n_pods + 1
        t._dense = None
        for name, dtype, size in (("verdict", np.int64, len(VERDICTS)), ("reason", np.int64, len(REASONS)),
                                  ("path", np.int64, len(PATHS)), ("service", np.int64, n_services + 1),
                                  ("service_bytes", np.uint64, n_services + 1),
                                  ("service_packets", np.uint64, n_services + 1)):
            setattr(t, name, np.zeros(size, dtype))
            for p in parts:
                getattr(t, name)[:] += p[name]
        t.has_bytes = any(p["has_bytes"] for p in parts)
        t.has_packets = any(p["has_packets"] for p in parts)
        t._pairs = [(p["keys"], p["counts"]) for p in parts if p["keys"].size]
        t._pairs = [t._merged()]
        return t

    def top_services(self, names: list[str], top: int, ready: tuple | None = None) -> list[ServiceLoad]:
        """The ``top`` busiest service ports. ``ready`` (see :func:`_ready_backends`): count a port's
        Ready endpoints as backends even when idle (an idle one counts as a zero in the imbalance)."""
        keys, counts = self._merged()
        slot_of, pod_slot = np.divmod(keys, self.pod_slots)
        backend = pod_slot > 0
        slot_of, counts = slot_of[backend], counts[backend]
        order = np.argsort(-self.service[1:], kind="stable")[:top] + 1
        out = []
        for s in order:
            if self.service[s] == 0:
                break
            per_backend = counts[slot_of == s]
            if ready is not None:                       # Ready endpoints that got nothing count as zeros
                off, pods = ready
                got = pod_slot[backend][slot_of == s] - 1
                idle = np.setdiff1d(pods[off[s - 1]:off[s]], got).size
                per_backend = np.concatenate([per_backend, np.zeros(idle, per_backend.dtype)])
            # a service whose flows all stopped at the frontend has no backend load: no imbalance
            mean = per_backend.mean() if per_backend.size else 0.0
            imbalance = float(per_backend.max() / mean) if mean > 0 else 0.0
            out.append(ServiceLoad(names[s - 1], int(self.service[s]), int(per_backend.size), round(imbalance, 4),
                                   int(self.service_bytes[s]) if self.has_bytes else None,
                                   int(self.service_packets[s]) if self.has_packets else None))
        return out


# --------------------------------------------------------------------------- writing

class _ResultsWriter:
    """Result batches to a temporary file beside ``out``, renamed over it on :meth:`commit`."""

    def __init__(self, out: Path, schema: pa.Schema) -> None:
        if not out.parent.is_dir():
            raise FastpathError(f"{out}: folder {out.parent} does not exist")
        self.out = out
        fd, self.tmp = temp_beside(out)          # registered: a signal at any moment leaves no file
        try:
            os.close(fd)
            if out.suffix.lower() in PARQUET_SUFFIXES:
                self._writer = pq.ParquetWriter(str(self.tmp), schema)
            else:
                self._sink = pa.OSFile(str(self.tmp), "wb")
                self._writer = pa.ipc.new_file(self._sink, schema)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            temp_done(self.tmp)
            raise

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def commit(self) -> None:
        self._writer.close()
        if hasattr(self, "_sink"):
            self._sink.close()
        os.replace(self.tmp, self.out)
        temp_done(self.tmp)

    def abort(self) -> None:
        try:
            self._writer.close()
            if hasattr(self, "_sink"):
                self._sink.close()
        except Exception:  # noqa: BLE001 -- the file is being thrown away
            pass
        self.tmp.unlink(missing_ok=True)
        temp_done(self.tmp)


#: A cluster input of this many bytes or more is loaded and compiled in a child process
#: (:func:`fastpath.cache.compile_cached`'s lean compile, into a temporary folder): its millions of
#: objects never live in the replay's process, whose peak memory they would otherwise set (Python
#: keeps freed small objects' memory). Smaller inputs compile here (a child costs a second or two).
LEAN_BYTES = 32 << 20


def _compiled_plane(cluster, **options):
    """``compile_cluster(cluster, **options)``; a large cluster path through a child process (see
    :data:`LEAN_BYTES`). The user's compiled-table cache is not touched."""
    from .cluster.compile import compile_cluster

    if isinstance(cluster, (str, os.PathLike)):
        p = Path(cluster)
        try:
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        except OSError:
            size = 0                              # the loader says what is wrong with it
        if size >= LEAN_BYTES:
            from .cache import compile_cached

            with tempfile.TemporaryDirectory(prefix="fastpath-compile-") as tmp:
                dp = compile_cached(p, directory=tmp, lean=True, **options)
            vars(dp).pop("prepare_s", None)       # timed by the caller
            return dp
    return compile_cluster(cluster, **options)


def _event_log(events, cluster):
    """``events`` (a path, an EventLog, a list of dicts, or None) as an EventLog, read and checked."""
    if events is None:
        return None
    from .events import EventLog, events_from_lines, read_events

    if hasattr(cluster, "resolve_flows"):
        raise FastpathError("events: give the cluster as a path or a Cluster, not a compiled DataPlane "
                            "(the replay compiles it over every object the events will add)")
    if isinstance(events, EventLog):
        return events
    if isinstance(events, (str, os.PathLike)):
        return read_events(events)
    return events_from_lines(list(events))


def _ready_backends(dp) -> tuple[np.ndarray, np.ndarray]:
    """Per service port, the pods of its Ready endpoints (CSR: offsets, pod indices).

    The summary's "backends" is what :meth:`fastpath.study.BackendLoad.counted`
    counts: Ready endpoints, plus any other endpoint that got flows.
    """
    smap = dp.services
    pods = dp.tables.pod_by_ip.lookup(smap.ep_ip).astype(np.int64)
    keep = smap.ep_ready.astype(bool) & (pods >= 0)
    sp = np.repeat(np.arange(len(smap.names)), np.diff(smap.ep_off))
    off = np.concatenate([[0], np.cumsum(np.bincount(sp[keep], minlength=len(smap.names)))]).astype(np.int64)
    return off, pods[keep]


def _progress(show: bool | None, total: int):
    """A rich progress bar on stderr when asked for and stderr is a terminal, else None."""
    if show is False:
        return None
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    from .outputs import console as make_console

    console = make_console(stderr=True)       # honours NO_COLOR
    if not console.is_terminal:
        return None

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed / 1e6:,.2f} M flows/s" if speed else "", style="progress.data.speed")

    return Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TextColumn("flows"),
                    _Rate(), TimeRemainingColumn(), console=console, transient=False)


# --------------------------------------------------------------------------- replay

def replay(cluster, trace, out: str | os.PathLike | None = None, *, lb: str = "random", seed: int = 0,
           batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None, progress: bool | None = None,
           return_table: bool = False, top: int = TOP_SERVICES, pipelined: bool = True, on_batch=None,
           events=None, scheduler: str | None = None, workers: int | None = None, **service_opts: Any) -> Summary:
    """Resolve every flow of a trace; write the results; return a :class:`Summary`.

    Parameters
    ----------
    cluster
        A :class:`~fastpath.cluster.model.Cluster`, a path to Kubernetes objects,
        or an already compiled :class:`~fastpath.pipeline.DataPlane` (its balancer
        state is reset first, so replays repeat; ``lb``, ``seed`` and
        ``service_opts`` then do not apply).
    trace
        A trace file or directory (see :func:`fastpath.traces.open_trace`).
    out
        Results file, its format by extension: Arrow IPC for ``.arrow``/``.feather``,
        Parquet for ``.parquet``/``.pq``; any other ending is a :class:`FastpathError`.
        One row per flow in input order, the columns of ``docs/results.md``, and
        schema metadata saying what made it (``fastpath.outputs.read_results_metadata``).
        Written whole or not at all. ``None``: nothing written.
    with_flows
        (keyword, in ``service_opts``) Also write the input's flow columns (``src_ip``,
        ``dst_ip``, ports, ``proto``, ``ts``, ``dst_name``, ``bytes``, ``packets`` as the
        trace has them) after the result columns.
    lb, seed, **service_opts
        Passed to :func:`fastpath.cluster.compile.compile_cluster`.
    batch_size
        Flows per batch (default 131072: the batch's columns stay in cache).
    on_batch
        Called as ``on_batch(flows, results)`` for every batch, in trace order, with
        the normalized :class:`~fastpath.traces.Flows` and the integer
        :class:`~fastpath.pipeline.Results` (valid only during the call); what
        :mod:`fastpath.report` tallies its figures with.
    threads
        Kernel threads (default: all cores); restored afterwards.
    progress
        Show a progress bar on stderr (only when it is a terminal); ``False``: never.
    return_table
        Also keep every result batch, as ``Summary.table`` (memory grows with the trace).
    top
        How many services the summary ranks.
    pipelined
        Read batch k+1 and write batch k-1 on two more threads while batch k is
        resolved (see :mod:`fastpath._stream`); ``False``: one step after the
        other on this thread. The results are the same either way.
    events
        Cluster events (``docs/events.md``): a path to a JSON-lines watch stream, a
        :class:`~fastpath.events.EventLog`, or a list of event dicts. Each flow then
        sees the cluster as it stands at its ``ts`` (:mod:`fastpath.live`); the summary
        adds ``broken_connections``, ``udp_flushed``, ``event_groups`` and ``events``.
        ``cluster`` must then be a path or a :class:`Cluster`, not a compiled plane; or
        pass a :class:`~fastpath.live.LivePlane` as ``cluster`` (``fastpath.report.study`` does).
    scheduler, workers
        Replay on a Dask cluster (:func:`fastpath.distributed.replay_distributed`; the
        ``dask`` extra): ``"local"`` starts ``workers`` processes here, an address joins a
        running scheduler. Same rows and summary as one process. ``cluster`` must then be a
        path or a :class:`Cluster`; ``out`` may also name a folder of parts; ``threads``,
        ``return_table``, ``pipelined`` and ``on_batch`` do not apply.

    Raises
    ------
    FastpathError
        Bad cluster, trace or output path (one line naming it). Any error or
        ``KeyboardInterrupt`` removes the temporary results file.
    """
    if scheduler is not None:
        if hasattr(cluster, "resolve_flows") or hasattr(cluster, "apply_next"):
            raise FastpathError("scheduler: give the cluster as a path or a Cluster (each worker compiles it), "
                                "not a compiled plane")
        if return_table or on_batch is not None:
            raise FastpathError("scheduler: return_table and on_batch need the rows in this process; "
                                "read the results file instead")
        from .distributed import replay_distributed

        return replay_distributed(cluster, trace, out, scheduler=scheduler, workers=workers, lb=lb, seed=seed,
                                  batch_size=batch_size, progress=progress, top=top, events=events, **service_opts)
    t0 = time.perf_counter()
    reader = open_trace(trace, batch_size)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        output_format(out_path, "results file")       # the format follows the extension; others are an error
    with_flows = bool(service_opts.pop("with_flows", False))
    from .stages.conntrack import ReplayConntrack, pop_replay_options
    ct_opts = pop_replay_options(service_opts)   # conntrack, conntrack_max, interval, timeline
    if out_path is not None:  # before any work: never an input, never a folder, a folder that exists
        cluster_path = cluster if isinstance(cluster, (str, os.PathLike)) else (getattr(cluster, "source", "") or getattr(cluster, "source_name", "")
                                                                               or None)
        check_outputs([("results file", out_path)],
                      [("trace", trace), *(("trace", f) for f in reader.files), ("cluster", cluster_path)])
        check_free_space(out_path, reader.num_rows * RESULT_BYTES_PER_ROW[output_format(out_path)], "results file")
    from ._warmup import CompileBeside, FirstRun
    log = _event_log(events, cluster)        # before any work: a bad line stops the run here
    first_run = FirstRun(progress).start()   # a cold numba cache: say what the wait is for (stderr)
    # a cold cache: the forwarding and conntrack kernels compile in a helper process while this one
    # loads the cluster and compiles the others
    beside = CompileBeside.start_if_cold(first_run, conntrack=ReplayConntrack.wanted(reader, ct_opts))
    try:
        live = cluster if hasattr(cluster, "apply_next") else None     # a LivePlane built by the caller
        if live is not None:
            dp = live.dp
            cluster_name = live.dp.cluster.source or "<LivePlane>"
        elif log is not None:
            from .cluster.load import load_cluster
            from .live import LivePlane

            base = cluster if isinstance(cluster, Cluster) else load_cluster(cluster)
            cluster_name = (base.source or "<Cluster>") if isinstance(cluster, Cluster) else str(cluster)
            live = LivePlane(base, log, lb=lb, seed=seed, **service_opts)
            dp = live.dp
        elif hasattr(cluster, "resolve_flows"):
            dp = cluster
            dp.reset()
            cluster_name = getattr(dp, "source_name", None) or f"<{type(dp).__name__}>"   # set by fastpath.cache
            # fastpath.cache's plane: its load/compile (or cache fetch) just before counts as compile time, once
            t0 -= float(vars(dp).pop("prepare_s", 0.0) or 0.0)
            lb, seed = getattr(dp, "lb", lb), getattr(dp, "seed", seed)
        else:
            cluster_name = (cluster.source or "<Cluster>") if isinstance(cluster, Cluster) else str(cluster)
            dp = _compiled_plane(cluster, lb=lb, seed=seed, **service_opts)
        ct = ReplayConntrack.start(dp, reader, ct_opts)   # None: no ts, or --no-conntrack
        if live is not None:
            if reader.schema.get_field_index("ts") < 0:
                raise FastpathError(f"{trace}: --events needs a trace with a ts column (when each flow starts)")
            live.follow_conntrack(ct)
        compile_s = time.perf_counter() - t0

        from .pipeline import RESULT_SCHEMA, Results

        # the results carry where they came from; --with-flows puts the input's columns beside them
        flow_cols = flow_fields_of_schema(reader.schema) if with_flows else []
        out_schema = pa.schema(list(RESULT_SCHEMA) + flow_cols, metadata=results_metadata(
            cluster=cluster_name, trace=str(trace), lb=lb, seed=seed, with_flows=with_flows,
            options={"batch_size": reader.batch_size, **{k: v for k, v in service_opts.items()}}))
        tally = _Tally(len(dp.services.names), len(dp.tables.pod_names))
        from .stages.policy import policy_tally
        ptally = policy_tally(dp)                # None without NetworkPolicies
    except BaseException:                        # no helper left compiling, no notice left spinning
        first_run.stop(ok=False)
        if beside is not None:
            beside.close()
        raise

    before = get_threads()
    used = set_threads(threads)
    kept: list[pa.RecordBatch] = []
    writer = bar = None
    done = 0
    t1 = time.perf_counter()
    try:
        writer = _ResultsWriter(out_path, out_schema) if out_path is not None else None
        bar = _progress(progress, reader.num_rows)
        warm_s = [0.0]

        def warm(first) -> None:
            # JIT-compile (or load from cache) the kernels for these column types on a few rows,
            # then forget the balancer state they left: compiling is not counted as streaming.
            if first.n:
                tc = time.perf_counter()
                few = first.slice(0, 16)
                r_few = dp.resolve_flows(few)
                _Tally(len(dp.services.names), 1).add(r_few, few)   # compiles the tally kernel (keys past its size: skipped)
                if ct is not None:
                    if beside is not None:
                        beside.join()            # its kernel is in the cache now: loaded, not compiled
                    ct.warm(few, r_few)
                dp.reset()
                warm_s[0] = time.perf_counter() - tc
            first_run.stop()                     # kernels compiled: the notice goes, the progress bar starts

        def track(r, flows) -> None:
            # on a thread of its own when pipelined, in trace order: connection tracking (its kernel
            # releases the GIL, so it runs beside the next batch's resolve and the batch before's
            # writing); it may still drop a flow (a full table), so it comes before the tallies
            if live is not None:
                live.run_conntrack(ct, flows, r)
            else:
                ct.stage.run(flows, r)

        def finish(r, flows) -> None:
            # on the writer thread when pipelined, in trace order: sum up, encode, write
            if live is not None:
                live.departures.add(flows, r, dp.services.conn_duration)
            tally.add(r, flows)
            if ptally is not None:
                ptally.add(r)
            if on_batch is not None:
                on_batch(flows, r)
            if writer is not None or return_table:
                batch = dp.to_arrow(r)
                if flow_cols:
                    batch = pa.RecordBatch.from_arrays(batch.columns + flow_arrays(flows, flow_cols),
                                                       schema=out_schema)
                if writer is not None:
                    writer.write(batch)
                if return_table:
                    kept.append(batch)

        def resolved(n: int) -> None:
            if not bar.task_ids:                 # started after the first batch: after any compile notice
                bar.start()
                bar.add_task("replay", total=reader.num_rows)
            bar.update(bar.task_ids[0], completed=n)

        t1 = time.perf_counter()
        resolve = live.resolve if live is not None else (lambda flows, out: dp.resolve_flows(flows, out=out))
        done = stream(reader, resolve, finish,
                      buffers=None if return_table else Results.empty, size=min(reader.batch_size, reader.num_rows),
                      pipelined=pipelined, first=warm, resolved=resolved if bar is not None else None,
                      track=track if ct is not None else None)
        compile_s += warm_s[0]
        t1 += warm_s[0]
        if live is not None:
            live.finish()                        # groups after the last flow; churn shares
        if ct is not None:
            ct.finish()                          # the last interval; the timeline file
        if writer is not None:
            writer.commit()
    except OSError as e:  # a full disk, a vanished folder: name the user's path, not the temporary file
        if writer is not None:
            writer.abort()
        if out_path is None:
            raise
        raise write_error(out_path, "results file", e) from None
    except BaseException:  # bad input, a signal (Interrupted), KeyboardInterrupt: no partial file
        if writer is not None:
            writer.abort()
        raise
    finally:
        first_run.stop(ok=False)
        if beside is not None:
            beside.close()
        if bar is not None:
            bar.stop()
        set_threads(before)
    t2 = time.perf_counter()

    by_verdict = {name: int(n) for name, n in zip(VERDICTS, tally.verdict)}
    by_path = {name: int(n) for name, n in zip(PATHS, tally.path)}
    by_reason = {name: int(n) for name, n in zip(REASONS[1:], tally.reason[1:])}
    forwarded = by_path["routed"] + by_path["bridge"]
    return Summary(
        cluster=cluster_name, trace=str(trace), output=str(out_path) if out_path is not None else None,
        flows=done, by_verdict=by_verdict, by_path=by_path, by_reason=by_reason,
        top_services=tally.top_services(list(dp.services.names), top, _ready_backends(dp)),
        cross_node_share=round(by_path["routed"] / forwarded, 6) if forwarded else 0.0,
        wall_s=round(t2 - t0, 6), compile_s=round(compile_s, 6),
        flows_per_s=round(done / (t2 - t1), 1) if t2 > t1 else 0.0,
        lb=lb, seed=seed, batch_size=reader.batch_size, threads=used,
        policy=ptally.result() if ptally is not None else None,
        **(ct.summary_fields() if ct is not None else {}),
        **(live.summary_fields() if live is not None else {}),
        table=pa.Table.from_batches(kept, schema=out_schema) if return_table else None,
    )
