"""Replaying a trace: stream its batches through the data plane, write results, sum up.

:func:`replay` reads a trace in bounded batches (:func:`fastpath.traces.open_trace`),
resolves each batch with a compiled :class:`~fastpath.pipeline.DataPlane`, writes
the result columns in input order (Arrow IPC, or Parquet by the output's
extension) under a temporary name in the output's folder, and renames it at
the end: a failed or interrupted replay leaves no file behind. The
:class:`Summary` counts flows by verdict and path, ranks services with their
backend imbalance, and says how fast it went.
"""
from __future__ import annotations

import importlib.util
import itertools
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
from .cluster.model import Cluster
from .codes import PATHS, VERDICTS
from .errors import FastpathError
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
    table: pa.Table | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``--summary-json`` writes); the results table is left out."""
        d = asdict(self)
        d.pop("table")
        return d

    def render(self, console: Any = None) -> Any:
        """Print the summary as rich tables (to ``console``, default stdout); returns the renderable."""
        from rich.console import Console, Group
        from rich.table import Table

        console = console or Console()
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        head.add_row("cluster", self.cluster)
        head.add_row("trace", self.trace)
        head.add_row("results", self.output or "(not written)")
        head.add_row("flows", f"{self.flows:,}")
        head.add_row("throughput", f"{self.flows_per_s / 1e6:,.2f} M flows/s "
                                   f"({self.threads} threads, batches of {self.batch_size:,})")
        head.add_row("wall time", f"{self.wall_s:.2f} s (compile {self.compile_s:.2f} s)")
        head.add_row("cross-node", f"{self.cross_node_share:.1%} of forwarded flows routed to another node")

        counts = Table(title="flows by verdict and path", title_justify="left")
        for col in ("verdict", "flows", "share", "path", "flows ", "share "):
            counts.add_column(col, justify="left" if col.strip() in ("verdict", "path") else "right")
        total = max(self.flows, 1)
        rows_v, rows_p = list(self.by_verdict.items()), list(self.by_path.items())
        for i in range(max(len(rows_v), len(rows_p))):
            cells = []
            for rows in (rows_v, rows_p):
                if i < len(rows):
                    name, n = rows[i]
                    cells += [name, f"{n:,}", f"{n / total:.1%}"]
                else:
                    cells += ["", "", ""]
            counts.add_row(*cells)

        top = Table(title=f"top {len(self.top_services)} services by flows", title_justify="left")
        for col, just in (("service", "left"), ("flows", "right"), ("share", "right"),
                          ("backends", "right"), ("imbalance (max/mean)", "right")):
            top.add_column(col, justify=just)
        for s in self.top_services:
            top.add_row(s.service, f"{s.flows:,}", f"{s.flows / total:.1%}", str(s.backends), f"{s.imbalance:.2f}")
        group = Group(head, counts, top)
        console.print(group)
        return group


class _Tally:
    """Running counts over result batches (integer columns only, vectorized).

    Service and pod indices are shifted by one so that "none" (-1) lands in
    slot 0: every count is a bincount or a unique over the whole batch, with no
    boolean masking (which costs more than the counting).
    """

    def __init__(self, n_services: int, n_pods: int) -> None:
        self.verdict = np.zeros(len(VERDICTS), np.int64)
        self.path = np.zeros(len(PATHS), np.int64)
        self.service = np.zeros(n_services + 1, np.int64)        # slot 0: no service
        self.service_bytes = np.zeros(n_services + 1, np.float64)
        self.has_bytes = False
        self.pod_slots = n_pods + 1                                # slot 0: no pod
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        # (service, backend) counts: a dense array while it is small enough (zeroed lazily by
        # the OS, so only the pages of pairs that occur take memory), else sorted key runs.
        pairs = self.service.shape[0] * self.pod_slots
        self._dense = np.zeros(pairs, np.int64) if pairs <= _DENSE_PAIRS else None

    def add(self, r, flows) -> None:
        for code in range(len(VERDICTS)):  # a few SIMD passes over uint8 beat bincount's cast to intp
            self.verdict[code] += np.count_nonzero(r.verdict == code)
        for code in range(len(PATHS)):
            self.path[code] += np.count_nonzero(r.path == code)
        slot = r.service.astype(np.int64) + 1
        size = self.service.shape[0]
        self.service += np.bincount(slot, minlength=size)
        if flows.bytes is not None:
            self.has_bytes = True
            self.service_bytes += np.bincount(slot, weights=flows.bytes, minlength=size)
        keys = slot * self.pod_slots + (r.dst_pod + 1)
        if self._dense is not None:
            np.add.at(self._dense, keys, 1)
            return
        self._pairs.append(np.unique(keys, return_counts=True))
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

    def top_services(self, names: list[str], top: int) -> list[ServiceLoad]:
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
            imbalance = float(per_backend.max() / per_backend.mean()) if per_backend.size else 0.0
            out.append(ServiceLoad(names[s - 1], int(self.service[s]), int(per_backend.size), round(imbalance, 4),
                                   int(self.service_bytes[s]) if self.has_bytes else None))
        return out


# --------------------------------------------------------------------------- writing

class _ResultsWriter:
    """Result batches to a temporary file beside ``out``, renamed over it on :meth:`commit`."""

    def __init__(self, out: Path, schema: pa.Schema) -> None:
        if not out.parent.is_dir():
            raise FastpathError(f"{out}: folder {out.parent} does not exist")
        self.out = out
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a results file is an ordinary file
        try:
            if out.suffix.lower() in PARQUET_SUFFIXES:
                self._writer = pq.ParquetWriter(str(self.tmp), schema)
            else:
                self._sink = pa.OSFile(str(self.tmp), "wb")
                self._writer = pa.ipc.new_file(self._sink, schema)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def commit(self) -> None:
        self._writer.close()
        if hasattr(self, "_sink"):
            self._sink.close()
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        try:
            self._writer.close()
            if hasattr(self, "_sink"):
                self._sink.close()
        except Exception:  # noqa: BLE001 -- the file is being thrown away
            pass
        self.tmp.unlink(missing_ok=True)


def _progress(show: bool | None, total: int):
    """A rich progress bar on stderr when asked for and stderr is a terminal, else None."""
    if show is False:
        return None
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    console = Console(stderr=True)
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
           return_table: bool = False, top: int = TOP_SERVICES, **service_opts: Any) -> Summary:
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
        Results file: Parquet for ``.parquet``/``.pq``, else Arrow IPC. One row
        per flow in input order, the columns of interfaces.md. Written whole or
        not at all. ``None``: nothing written.
    lb, seed, **service_opts
        Passed to :func:`fastpath.cluster.compile.compile_cluster`.
    batch_size
        Flows per batch (default 65536: the batch's columns stay in cache).
    threads
        Kernel threads (default: all cores); restored afterwards.
    progress
        Show a progress bar on stderr (only when it is a terminal); ``False``: never.
    return_table
        Also keep every result batch, as ``Summary.table`` (memory grows with the trace).
    top
        How many services the summary ranks.

    Raises
    ------
    FastpathError
        Bad cluster, trace or output path (one line naming it). Any error or
        ``KeyboardInterrupt`` removes the temporary results file.
    """
    from .cluster.compile import compile_cluster

    t0 = time.perf_counter()
    reader = open_trace(trace, batch_size)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists() and any(
            out_path.resolve() == f.resolve() for f in reader.files):
        raise FastpathError(f"{out_path}: results would overwrite the trace being replayed")
    if hasattr(cluster, "resolve_flows"):
        dp = cluster
        dp.reset()
        cluster_name = f"<{type(dp).__name__}>"
        lb, seed = getattr(dp, "lb", lb), getattr(dp, "seed", seed)
    else:
        cluster_name = "<Cluster>" if isinstance(cluster, Cluster) else str(cluster)
        dp = compile_cluster(cluster, lb=lb, seed=seed, **service_opts)
    compile_s = time.perf_counter() - t0

    from .pipeline import RESULT_SCHEMA, Results

    before = get_threads()
    used = set_threads(threads)
    tally = _Tally(len(dp.services.names), len(dp.tables.pod_names))
    kept: list[pa.RecordBatch] = []
    writer = bar = None
    done = 0
    t1 = time.perf_counter()
    try:
        writer = _ResultsWriter(out_path, RESULT_SCHEMA) if out_path is not None else None
        bar = _progress(progress, reader.num_rows)
        reuse = None if return_table else Results.empty(min(reader.batch_size, reader.num_rows))
        batches = iter(reader)
        first = next(batches, None)
        if first is not None and first.n:
            # JIT-compile (or load from cache) the kernels for these column types on a few rows,
            # then forget the balancer state they left: compiling is not counted as streaming.
            tc = time.perf_counter()
            dp.resolve_flows(first.slice(0, 16))
            dp.reset()
            compile_s += time.perf_counter() - tc
        t1 = time.perf_counter()
        if bar is not None:
            bar.start()
            task = bar.add_task("replay", total=reader.num_rows)
        for flows in itertools.chain([first] if first is not None else [], batches):
            r = dp.resolve_flows(flows, out=reuse if reuse is not None and flows.n == len(reuse) else None)
            tally.add(r, flows)
            if writer is not None or return_table:
                batch = dp.to_arrow(r)
                if writer is not None:
                    writer.write(batch)
                if return_table:
                    kept.append(batch)
            done += flows.n
            if bar is not None:
                bar.update(task, completed=done)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.stop()
        set_threads(before)
    t2 = time.perf_counter()

    by_verdict = {name: int(n) for name, n in zip(VERDICTS, tally.verdict)}
    by_path = {name: int(n) for name, n in zip(PATHS, tally.path)}
    forwarded = by_path["routed"] + by_path["bridge"]
    return Summary(
        cluster=cluster_name, trace=str(trace), output=str(out_path) if out_path is not None else None,
        flows=done, by_verdict=by_verdict, by_path=by_path,
        top_services=tally.top_services(list(dp.services.names), top),
        cross_node_share=round(by_path["routed"] / forwarded, 6) if forwarded else 0.0,
        wall_s=round(t2 - t0, 6), compile_s=round(compile_s, 6),
        flows_per_s=round(done / (t2 - t1), 1) if t2 > t1 else 0.0,
        lb=lb, seed=seed, batch_size=reader.batch_size, threads=used,
        table=pa.Table.from_batches(kept, schema=RESULT_SCHEMA) if return_table else None,
    )
