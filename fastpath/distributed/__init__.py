"""The replay on a Dask cluster: the same rows, in the same order, as one process.

``fastpath replay … --scheduler local|ADDRESS [--workers N]`` and
``fastpath.replay(…, scheduler=…)`` run :func:`replay_distributed`. The trace is
cut into contiguous row ranges; workers read their ranges themselves (the trace
path must be readable on every worker: a shared filesystem or the same copy),
compile the cluster once per worker process (``tasks.PlaneSpec``: from the
path, or a :class:`~fastpath.cluster.model.Cluster` shipped once), and hand each
other numpy pieces. The work, in Dask tasks (``docs/distributed.md`` has the
picture and the costs):

1. **Resolve.** Stateless balancers (random, source-hash, Maglev, no ClientIP
   affinity): each range is resolved on its own. Stateful ones (round-robin and
   least-connection counters, affinity) keep state per node, so rows are
   shuffled into *state partitions* first: a stateless pass finds the node whose
   kube-proxy state each row touches (the client's node; for an external client
   the receiving node), nodes are balanced over the partitions by rows (no state
   is shared between nodes, affinity included), and each partition resolves its
   rows in trace order with one balancer state, as the single process would.
2. **Connection tracking** (a trace with ``ts``): per-node tables, but a
   cross-node connection couples its client's node and its backend's node (a full
   backend table changes the client's entry). Nodes are split into one group per
   worker; each group runs the conntrack stage over the rows touching its nodes,
   assuming the other side admitted every connection; the groups' refusals are
   exchanged and the groups run again until no assumption changes (then the
   answer is exact), or, after :data:`MAX_ROUNDS`, one task runs every node
   (``fastpath.stages.conntrack_split``).
3. **Write.** Each range's rows are put back in trace order, counted and written
   as ``part-NNNNN.arrow`` (or ``.parquet``); the parts, in name order, are the
   single-process results. The summary's counts are sums, merged exactly.

The results go to a folder of parts (``-o DIR``, a name without a results
extension) or to one file (``-o results.arrow``: the driver joins the parts).
Written whole or not at all, as everywhere: a failed run leaves nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FastpathError
from . import plan, tasks

#: Conntrack rounds of node groups before the chain takes over.
MAX_ROUNDS = 4
#: Node groups by default from this many workers (below, the chain: with 2 groups each tracks about 3/4
#: of the rows, cross-node rows on both sides, so the rounds buy little over one core).
GROUPS_FROM = 4
#: A round of node groups refusing more than this share of the rows: tables that full, the chain instead.
CHAIN_IF_REFUSED = 0.02
#: Dask's settings of the environment a nanny gives the worker process it starts.
PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
#: How long joining a scheduler address may take.
CONNECT_TIMEOUT = "20s"
#: Output names without one of these endings are folders of parts.
_FILE_SUFFIXES = (".arrow", ".feather", ".ipc", ".parquet", ".pq")


def _dask():
    try:
        import distributed
    except ImportError:
        raise FastpathError("--scheduler needs Dask's distributed package: pip install 'fastpath[dask]'") from None
    return distributed


def local_cluster(workers: int):
    """The ``distributed.LocalCluster`` that ``--scheduler local`` starts: ``workers`` processes, one
    thread each, no dashboard port of its own, only critical log lines (a task's failure reaches the
    caller as its exception, said in one line).

    Its workers start without Dask's ``MALLOC_TRIM_THRESHOLD_``: set, it also fixes glibc's mmap
    threshold, so every batch column is a fresh mmap the kernel zeroes (a range resolves about 20 %
    slower). Close it with ``close()``.
    """
    import logging

    import dask

    d = _dask()
    with dask.config.set({f"{PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None}):
        return d.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                              dashboard_address=":0", silence_logs=logging.CRITICAL)


class _Session:
    """A Dask client: a LocalCluster started here (``local``) or a running scheduler joined."""

    def __init__(self, scheduler: str, workers: int | None) -> None:
        d = _dask()
        self.cluster = None
        self.own = True
        if not isinstance(scheduler, str):           # a distributed.Client the caller holds
            if not hasattr(scheduler, "submit"):
                raise FastpathError(f"scheduler {scheduler!r}: expected 'local', an address, or a distributed.Client")
            self.client, self.own = scheduler, False
            self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
            return
        if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
            raise FastpathError(f"--workers {workers!r}: must be a positive number")
        if scheduler == "local":
            self.cluster = local_cluster(int(workers) if workers else (os.cpu_count() or 1))
            self.client = d.Client(self.cluster)
        else:
            try:
                self.client = d.Client(scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as e:
                raise FastpathError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({e})") from None
            if workers:
                try:
                    self.client.wait_for_workers(int(workers), timeout=120)
                except TimeoutError:
                    have = len(self.client.scheduler_info().get("workers", {}))
                    self.client.close()
                    raise FastpathError(f"--scheduler {scheduler}: {have} workers joined in 120 s, "
                                        f"--workers asked for {workers}") from None
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})) or int(workers or 1))

    def first_worker(self) -> str:
        """The address of one worker (where the conntrack chain prefers to run)."""
        return sorted(self.client.scheduler_info().get("workers", {}))[0]

    def bytes_sent(self) -> int | None:
        """Bytes the workers have sent each other so far (Dask's own count), or None if it has none."""
        try:
            got = self.client.run(lambda dask_worker: int(dask_worker.transfer_outgoing_bytes_total))
        except Exception:  # noqa: BLE001 -- an older distributed without the counter: not reported
            return None
        return int(sum(got.values()))

    def close(self) -> None:
        if not self.own:
            return
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _output(out: Path | None) -> tuple[str, str | None]:
    """("file" | "folder" | "none", the parts' suffix)."""
    if out is None:
        return "none", None
    # parts are Arrow IPC files either way; a Parquet results file is written from them at the end
    return ("file" if out.suffix.lower() in _FILE_SUFFIXES else "folder"), ".arrow"


def _check_time_order(trace, edges: list[tuple], bounds: list[tuple[int, int]]) -> None:
    """Time order across ranges (each range's reader checked its own rows)."""
    last = None
    for (first, final), (a, _) in zip(edges, bounds):
        if first is None:
            continue
        if last is not None and first < last:
            raise FastpathError(f"{trace}: column 'ts' goes back in time at row {a} ({first} after {last}); "
                                f"rows must be in time order")
        last = final


class _Waiter:
    """Waits on futures, with a rich progress bar on a terminal (stderr)."""

    def __init__(self, show: bool | None, workers: int) -> None:
        self.bar = None
        self.workers = workers
        if show is not False:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from ..outputs import console as make_console

            console = make_console(stderr=True)
            if console.is_terminal:
                self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("tasks"), TimeElapsedColumn(), console=console)
                self.bar.start()

        self.phases: dict[str, float] = {}

    def wait(self, what: str, futures: list, show: bool = True) -> list:
        """The futures' results (a task's error raised here as it was raised); the wait is timed as
        phase ``what`` (a phase's tasks may have started while an earlier phase was waited on)."""
        d = _dask()
        t = time.perf_counter()
        if self.bar is not None and show:
            task = self.bar.add_task(f"{what} ({self.workers} workers)", total=len(futures))
            for _ in d.as_completed(futures):
                self.bar.advance(task)
        got = [f.result() for f in futures]
        self.phases[what] = round(self.phases.get(what, 0.0) + time.perf_counter() - t, 6)
        return got

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def replay_distributed(cluster, trace, out=None, *, scheduler: str = "local", workers: int | None = None,
                       lb: str = "random", seed: int = 0, batch_size: int | None = None, progress: bool | None = None,
                       top: int | None = None, plane_cache: bool = False, load_options: dict | None = None,
                       part_rows: int | None = None, conntrack_groups: int | None = None, **service_opts: Any):
    """:func:`fastpath.replay` on a Dask cluster; the same :class:`~fastpath.replay.Summary` and rows.

    Parameters
    ----------
    cluster
        A path to Kubernetes objects (read by every worker: it must be valid there) or a
        :class:`~fastpath.cluster.model.Cluster` (sent to each worker once).
    trace
        A trace file or directory, readable by every worker at this path.
    out
        Results: a file (``.arrow``/``.parquet``: the driver joins the parts into it), a
        folder (any other name: ``part-NNNNN.arrow`` files, in trace order), or None.
        With a remote scheduler the folder must be on a filesystem the workers share.
    scheduler
        ``"local"`` (a LocalCluster here: ``workers`` processes, one thread each, default
        one per core), a scheduler address (``tcp://host:8786``; ``workers``: wait
        until that many have joined), or a ``distributed.Client`` already connected.
        A script that starts a local cluster needs the ``if __name__ == "__main__":``
        guard (worker processes are spawned and import the main module).
    plane_cache
        Workers compile through the compiled-table cache (``fastpath.cache``), as the
        command line does; default: each worker compiles in process.
    part_rows
        Rows a task handles (default :data:`fastpath.distributed.plan.PART_ROWS`).
    conntrack_groups
        Node groups connection tracking is split into (rounds until they agree, else the chain);
        1: the chain alone; default: one group per worker from :data:`GROUPS_FROM` workers, else
        the chain.
    lb, seed, batch_size, progress, top, **service_opts
        As :func:`fastpath.replay` (``conntrack``, ``conntrack_max``, ``interval``,
        ``timeline``, ``with_flows``, ``events`` included). With ``events`` the replay runs
        as one task on one worker (exact; not split: see ``docs/distributed.md``).
    """
    from ..files import RESULT_BYTES_PER_ROW, check_free_space, check_outputs
    from ..outputs import flow_fields_of_schema, output_format, results_metadata
    from ..pipeline import RESULT_SCHEMA
    from ..replay import TOP_SERVICES, Summary
    from ..stages.conntrack import pop_replay_options
    from ..traces import DEFAULT_BATCH_SIZE, open_trace

    t0 = time.perf_counter()
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    top = TOP_SERVICES if top is None else top
    events = service_opts.pop("events", None)
    reader = open_trace(trace, batch_size)
    out_path = Path(out) if out is not None else None
    kind, suffix = _output(out_path)
    if kind == "file":
        output_format(out_path, "results file")
    with_flows = bool(service_opts.pop("with_flows", False))
    ct_opts = pop_replay_options(service_opts)
    timed = "ts" in reader.schema.names and ct_opts.get("conntrack", True)
    timeline = ct_opts.get("timeline")
    if timeline is not None and not timed:
        why = "the trace has no 'ts' column" if "ts" not in reader.schema.names else "--no-conntrack was given"
        raise FastpathError(f"--timeline {timeline}: no timeline to write ({why})")
    if timeline is not None:
        output_format(timeline, "timeline")
        if not Path(timeline).parent.is_dir():
            raise FastpathError(f"{timeline}: folder {Path(timeline).parent} does not exist")
    cluster_path = cluster if isinstance(cluster, (str, os.PathLike)) else getattr(cluster, "source", None)
    if out_path is not None:
        check_outputs([("results folder" if kind == "folder" else "results file", out_path)],
                      [("trace", trace), *(("trace", f) for f in reader.files), ("cluster", cluster_path)])
        if kind == "folder" and out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
            raise FastpathError(f"{out_path}: results folder exists and is not empty")
        parent = out_path.parent
        if not parent.is_dir():
            raise FastpathError(f"{out_path}: folder {parent} does not exist")
        check_free_space(out_path, reader.num_rows * RESULT_BYTES_PER_ROW["arrow"], "results file")
    if isinstance(cluster, (str, os.PathLike)):
        cluster = str(Path(cluster).resolve())
    trace_s = str(Path(trace).resolve())
    options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in service_opts.items()))
    spec = tasks.PlaneSpec(cluster, lb=lb, seed=seed, options=options, cache=plane_cache,
                           load_options=tuple(sorted((load_options or {}).items())), token=uuid.uuid4().hex)

    session = _Session(scheduler, workers)
    client = session.client
    waiter = _Waiter(progress, session.workers)
    folder = None
    try:
        spec_f = client.submit(_same, spec, pure=False)    # in the graph once: a lost worker recomputes it
        facts = client.submit(tasks.facts, spec_f, pure=False).result()
        compile_s = time.perf_counter() - t0
        cluster_name = str(cluster_path) if cluster_path else (facts["cluster_name"] or "<Cluster>")
        flow_cols = flow_fields_of_schema(reader.schema) if with_flows else []
        import pyarrow as pa

        schema = pa.schema(list(RESULT_SCHEMA) + flow_cols, metadata=results_metadata(
            cluster=cluster_name, trace=str(trace), lb=lb, seed=seed, with_flows=with_flows,
            options={"batch_size": reader.batch_size, **dict(service_opts)}))
        if out_path is not None:
            folder = tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".parts", dir=out_path.parent)
        output = tasks.Output(folder, suffix or ".arrow", schema, tuple(flow_cols))
        if events is not None:                   # one ordered task (see _with_events)
            return _with_events(client, waiter, cluster, trace_s, trace, out_path, kind, folder, events, lb, seed,
                                batch_size, top, with_flows, ct_opts, service_opts, session, t0, schema,
                                cluster_name)
        bounds = plan.ranges(reader.num_rows, session.workers, batch_size, part_rows or plan.PART_ROWS)
        stats = {"workers": session.workers, "ranges": len(bounds), "stateful": facts["stateful"], "timed": timed}
        sent0 = session.bytes_sent()
        t1 = time.perf_counter()
        ct_fields: dict = {}
        if not timed and not facts["stateful"] and not facts["affinity_only"]:
            counts = waiter.wait("resolve and write", [
                client.submit(tasks.resolve_write_range, spec_f, trace_s, batch_size, a, b, k, output, pure=False)
                for k, (a, b) in enumerate(bounds)])
            _check_time_order(trace, [c["edges"] for c in counts], bounds)
            allowed = _sum([c["allowed"] for c in counts])
        else:
            parts, edges = _resolve_phase(client, waiter, spec_f, trace_s, batch_size, bounds, facts,
                                          session.workers)
            stats["partitions"] = len(parts)
            if facts["stateful"]:                    # a range's rows are spread over every partition
                pieces = [[client.submit(tasks.piece_rows, p, a, b, pure=False) for p in parts] for a, b in bounds]
            else:                                    # range k is part k
                pieces = [[p] for p in parts]
            changes: list[list] = [[] for _ in bounds]
            if timed:
                ct_fields, changes = _conntrack_phase(client, waiter, spec_f, parts, pieces, bounds, facts, ct_opts,
                                                      session, conntrack_groups, edges, batch_size)
                stats.update(ct_fields.pop("_how"))
            counts = waiter.wait("resolve, track, write" if timed else "resolve and write", [
                client.submit(tasks.write_range, spec_f, batch_size, a, b, k, output, pieces[k], changes[k],
                              pure=False, priority=_first(k, bounds))
                for k, (a, b) in enumerate(bounds)])
            smalls = waiter.wait("resolve", [client.submit(tasks.small, p, pure=False) for p in parts], show=False)
            _check_time_order(trace, edges if edges is not None else [s["edges"] for s in smalls], bounds)
            allowed = _sum([s["allowed"] for s in smalls])
            if timed:
                ct_fields = _conntrack_fields(ct_fields)
        summary = client.submit(tasks.summarize, spec_f, counts, allowed, top, pure=False).result()
        t2 = time.perf_counter()
        sent1 = session.bytes_sent()
        stats["phases_s"] = waiter.phases
        stats["bytes_moved"] = sent1 - sent0 if sent0 is not None and sent1 is not None else None
        if out_path is not None:
            _commit(Path(folder), out_path, kind, len(bounds), suffix, schema)
            folder = None
        if timeline is not None:
            from ..stages.conntrack import write_timeline

            write_timeline(ct_fields.pop("timeline_table"), timeline)
        ct_fields.pop("timeline_table", None)
    except BaseException as e:
        if _is_worker_death(e):
            raise _one_line(e) from None
        raise
    finally:
        waiter.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        session.close()
    t3 = time.perf_counter()
    done = summary.pop("flows")
    return Summary(cluster=cluster_name, trace=str(trace), output=str(out_path) if out_path is not None else None,
                   flows=done, wall_s=round(t3 - t0, 6), compile_s=round(compile_s, 6),
                   flows_per_s=round(done / (t2 - t1), 1) if t2 > t1 else 0.0, lb=lb, seed=seed,
                   batch_size=batch_size, threads=session.workers, distributed=stats, **summary, **ct_fields)


def _same(x):
    return x


def _with_events(client, waiter, cluster, trace_s: str, trace, out_path, kind: str, folder, events, lb, seed,
                 batch_size: int, top: int, with_flows: bool, ct_opts: dict, service_opts: dict, session, t0: float,
                 schema, cluster_name: str):
    """``--events``: the replay in one task on a worker (exact, not split). A group of events changes
    every stage's tables at once, and pods moving between nodes couple the conntrack node groups, so
    neither the ranges nor the node groups apply; the run is the single process's, on the cluster."""
    if isinstance(events, (str, os.PathLike)):
        events = str(Path(events).resolve())        # read by the worker at this path
    options = dict(service_opts, lb=lb, seed=seed, batch_size=batch_size, top=top, with_flows=with_flows, **ct_opts)
    if ct_opts.get("timeline") is not None:
        options["timeline"] = str(Path(ct_opts["timeline"]).resolve())
    part = str(Path(folder) / tasks.part_name(0, ".arrow")) if folder is not None else None
    t1 = time.perf_counter()
    summary = waiter.wait("replay with events", [
        client.submit(tasks.replay_with_events, cluster, trace_s, part, events, options, pure=False)])[0]
    if out_path is not None:                         # a results file says the paths as given here
        _commit(Path(folder), out_path, kind, 1, ".arrow", schema)
    t2 = time.perf_counter()
    summary.cluster, summary.trace = cluster_name, str(trace)
    summary.output = str(out_path) if out_path is not None else None
    summary.distributed = {"workers": session.workers, "ranges": 1, "events": "one task",
                           "phases_s": waiter.phases}
    summary.compile_s = round(summary.compile_s + (t1 - t0), 6)
    summary.wall_s = round(t2 - t0, 6)
    return summary


def _sum(arrays: list):
    got = [a for a in arrays if a is not None]
    return np.sum(got, axis=0) if got else None


def _is_worker_death(e: BaseException) -> bool:
    return type(e).__name__ == "KilledWorker"


def _one_line(e: BaseException) -> BaseException:
    """A worker that died more often than Dask retries: one line; anything else as it was."""
    if _is_worker_death(e):
        return FastpathError(f"a Dask worker died while running a replay task, and again on retry ({e}); "
                             "nothing was written")
    return e


def _resolve_phase(client, waiter, spec_f, trace: str, batch_size: int, bounds, facts, workers: int):
    """Resolved parts (futures kept on the workers; not waited for) and, for state partitions, each
    range's ts edges (None: the parts' own, read later)."""
    from operator import getitem

    if not facts["stateful"]:
        # a range's tasks before the next range's: the conntrack chain behind them starts early
        parts = [client.submit(tasks.resolve_range, spec_f, trace, batch_size, a, b, pure=False,
                               priority=_first(k, bounds)) for k, (a, b) in enumerate(bounds)]
        if facts["affinity_only"]:               # the affinity rows again: a chain per key partition
            nparts = max(workers, 1) * 2
            states: list = [None] * nparts
            fixed = []
            for k, p in enumerate(parts):
                first = {"pure": False, "priority": _first(k, bounds)}
                split = client.submit(tasks.affinity_split, spec_f, p, nparts, **first)
                fixes = []
                for q in range(nparts):
                    step = client.submit(tasks.affinity_step, spec_f, states[q], batch_size,
                                         client.submit(getitem, split, q, **first), **first)
                    states[q] = client.submit(getitem, step, 0, **first)
                    fixes.append(client.submit(getitem, step, 1, **first))
                fixed.append(client.submit(tasks.fixed_part, p, *fixes, **first))
            parts = fixed
        return parts, None
    keys = [client.submit(tasks.state_keys, spec_f, trace, batch_size, a, b, pure=False) for a, b in bounds]
    heads = waiter.wait("find state nodes", [client.submit(_key_facts, k, pure=False) for k in keys])
    counts = np.sum([h["counts"] for h in heads], axis=0)
    nparts = max(workers, 1) * 2
    part_of_node = plan.state_partitions(counts, nparts)
    splits = [client.submit(tasks.split_range, k, part_of_node, trace, batch_size, a, b, nparts, pure=False)
              for k, (a, b) in zip(keys, bounds)]
    parts = [client.submit(tasks.resolve_partition, spec_f, batch_size,
                           *[client.submit(getitem, s, q, pure=False) for s in splits], pure=False)
             for q in range(nparts)]
    return parts, [h["edges"] for h in heads]


def _first(k: int, bounds: list) -> int:
    """Dask priority of range ``k``'s tasks: earlier ranges first."""
    return len(bounds) - k


def _key_facts(keys: dict) -> dict:
    return {k: keys[k] for k in ("counts", "edges")}


def _conntrack_phase(client, waiter, spec_f, parts, pieces, bounds, facts, ct_opts, session, groups_asked, edges,
                     batch_size: int):
    """Connection tracking (see the module docstring): node groups in rounds where asked for (or with
    :data:`GROUPS_FROM` workers or more), else, or when the groups do not agree, the chain. Returns the
    conntrack fields (futures or values, see :func:`_conntrack_fields`) and each range's change lists."""
    groups = groups_asked if groups_asked is not None else (session.workers if session.workers >= GROUPS_FROM else 1)
    groups = max(1, min(int(groups), facts["nodes"] or 1))
    how = {"conntrack": "chain", "conntrack_groups": 1, "conntrack_rounds": 0}
    if groups > 1:
        smalls = waiter.wait("resolve", [client.submit(tasks.small, p, pure=False) for p in parts])
        settled = _conntrack_groups(client, waiter, spec_f, parts, smalls, bounds, ct_opts, groups,
                                    edges if edges is not None else [x["edges"] for x in smalls])
        if settled is not None:
            return settled
        how["conntrack_rounds"] = MAX_ROUNDS      # they did not agree: the chain, below
    return _conntrack_chain(client, spec_f, pieces, bounds, ct_opts, session, how, batch_size)


def _conntrack_chain(client, spec_f, pieces, bounds, ct_opts, session, how: dict, batch_size: int):
    """Every node in one stage, range after range on one worker (the next range's step starts as soon as
    its rows are resolved); exact whatever the tables do."""
    from operator import getitem

    # one worker keeps the stage (it is big: no transfer between steps); a step ready to run goes first
    home = {"workers": [session.first_worker()], "allow_other_workers": True, "priority": 100}
    stage = None
    changes = []
    for k, (a, b) in enumerate(bounds):
        step = client.submit(tasks.chain_step, spec_f, dict(ct_opts), stage, pieces[k], a, b, batch_size, pure=False,
                             **home)
        stage = client.submit(getitem, step, 0, pure=False, **home)
        changes.append([client.submit(getitem, step, 1, pure=False, **home)])
    fields = {"_future": client.submit(tasks.chain_finish, dict(ct_opts), stage, pure=False, **home), "_how": how}
    return fields, changes


def _conntrack_fields(fields: dict) -> dict:
    """The conntrack summary fields, once the chain (if it ran) has finished."""
    if "_future" in fields:
        fields = fields.pop("_future").result()
    fields = dict(fields)
    fields["timeline_table"] = fields.pop("timeline", None)
    return fields


def _conntrack_groups(client, waiter, spec_f, parts, smalls, bounds, ct_opts, groups: int, edges: list):
    """Node groups in rounds until no assumption changes; None where they do not agree within
    :data:`MAX_ROUNDS` rounds, or refuse more than :data:`CHAIN_IF_REFUSED` of the rows in a round
    (tables that full rarely agree: the chain is then cheaper)."""
    firsts = [e[0] for e in edges if e[0] is not None]
    if not firsts:                                  # an empty trace: the tables as they start
        fields = client.submit(tasks.conntrack_summary, spec_f, dict(ct_opts), None, pure=False).result()
        return {**fields, "_how": {"conntrack": "groups", "conntrack_groups": 0, "conntrack_rounds": 0}}, \
            [[] for _ in bounds]
    clock = (min(firsts), max(e[1] for e in edges if e[1] is not None))
    rows = sum(s["n"] for s in smalls)
    node_rows = np.sum([s["node_rows"] for s in smalls], axis=0)
    group_of_node = plan.balance(node_rows, groups)
    pod_node = client.submit(tasks.pod_nodes, spec_f, pure=False)
    none = np.zeros(0, np.int64)
    assumed = (none, none)
    for rounds in range(1, MAX_ROUNDS + 1):
        runs = _track_groups(client, spec_f, parts, pod_node, group_of_node, groups, ct_opts, clock, assumed)
        refusals = waiter.wait(f"conntrack round {rounds}", [client.submit(tasks.refusals, r, pure=False) for r in runs])
        got = (np.unique(np.concatenate([x[0] for x in refusals])), np.unique(np.concatenate([x[1] for x in refusals])))
        if all(np.array_equal(g, a) for g, a in zip(got, assumed)):
            figures = [client.submit(tasks.group_figures, r, pure=False) for r in runs]
            fields = client.submit(tasks.conntrack_summary, spec_f, dict(ct_opts), figures, pure=False).result()
            fields["_how"] = {"conntrack": "groups", "conntrack_groups": groups, "conntrack_rounds": rounds}
            return fields, [[client.submit(tasks.changes_in, r, a, b, pure=False) for r in runs] for a, b in bounds]
        if got[0].size + got[1].size > CHAIN_IF_REFUSED * rows:
            return None
        assumed = got
    return None


def _track_groups(client, spec_f, parts, pod_node, group_of_node, groups: int, ct_opts, clock, assumed) -> list:
    runs = []
    for g in range(groups):
        own = (group_of_node == g).astype(np.uint8)
        pieces = [client.submit(tasks.piece_group, p, own, pod_node, pure=False) for p in parts]
        runs.append(client.submit(tasks.track_group_task, spec_f, dict(ct_opts), own, clock, assumed, pieces,
                                  pure=False))
    return runs


def _commit(folder: Path, out: Path, kind: str, n_parts: int, suffix: str, schema) -> None:
    """The parts in place: renamed as the results folder, or joined into the results file."""
    if kind == "folder":
        if out.exists():
            out.rmdir()                              # checked empty before the run
        os.replace(folder, out)
        return
    from ..replay import _ResultsWriter

    import pyarrow as pa

    writer = _ResultsWriter(out, schema)
    try:
        for k in range(n_parts):
            with pa.memory_map(str(folder / tasks.part_name(k, suffix))) as src:
                r = pa.ipc.open_file(src)
                for i in range(r.num_record_batches):
                    writer.write(r.get_batch(i).replace_schema_metadata(schema.metadata))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
