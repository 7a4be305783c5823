"""``fastpath study``: a capacity study as a page of figures and a JSON file of numbers.

:func:`study` replays one trace under each balancer asked for (and, with
``against``, resolves every flow against a second cluster state too), tallies
what the page needs batch by batch (:mod:`fastpath.report.figures`), and returns
the figures as a plain dict; :func:`write_report` (:mod:`fastpath.report.page`)
draws them into ``index.html`` beside ``figures.json``::

    import fastpath.report as report
    figs = report.study("cluster.json", "trace.arrow", lbs=["random", "maglev"])
    report.write_report(figs, "study/")
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import FastpathError
from .figures import StudyTally, figures
from .page import pyplot, render_html, write_report

__all__ = ["StudyTally", "figures", "pyplot", "render_html", "study", "write_report"]


def study(cluster, trace, *, lbs: Iterable[str] = ("random",), against=None, seed: int = 0,
          batch_size: int | None = None, progress: bool | None = None, events=None, **service_opts) -> dict:
    """Replay ``trace`` over ``cluster`` under every balancer of ``lbs``; the study's figures.

    Parameters
    ----------
    cluster, against
        A :class:`~fastpath.cluster.model.Cluster` or a path to Kubernetes objects.
        ``against``: a second cluster state (a drain, a scale-up); every flow is also
        resolved there, and the change figure counts service flows whose backend differs.
    trace
        A trace file or directory.
    lbs
        Balancers, in the order the page compares them; the first is the reference
        for the figures that do not compare balancers.
    seed, batch_size, progress, **service_opts
        As for :func:`fastpath.replay`.
    events
        Cluster events (``docs/events.md``; a path or an :class:`~fastpath.events.EventLog`):
        every balancer's replay follows them, and the change figure shows, per balancer,
        the flows that changed backend after each group and the connections broken.
        Not with ``against``.

    Returns
    -------
    dict
        What ``figures.json`` holds, keyed by figure (see :func:`figures`).
    """
    from ..cluster.compile import compile_cluster
    from ..cluster.load import load_cluster
    from ..replay import replay
    from ..traces import DEFAULT_BATCH_SIZE, open_trace

    # (cluster or path as given, lb) -> DataPlane: the CLI passes one that uses the compiled-table
    # cache (fastpath.cache); the clusters are then loaded only where no entry holds their tables
    compiled = service_opts.pop("compiled", None)
    lbs = list(dict.fromkeys(lbs))
    if not lbs:
        raise FastpathError("study: no balancer given (--lb)")
    name = str(cluster) if not hasattr(cluster, "nodes") else "<Cluster>"
    other_name = None if against is None else (str(against) if not hasattr(against, "nodes") else "<Cluster>")
    if events is not None:
        if against is not None:
            raise FastpathError("study: give --against or --events, not both")
        from ..events import EventLog, read_events
        log = events if isinstance(events, EventLog) else read_events(events)
        compiled = None
    if not hasattr(cluster, "nodes") and compiled is None:
        cluster = load_cluster(cluster)
    if against is not None and not hasattr(against, "nodes") and compiled is None:
        against = load_cluster(against)
    timed = "ts" in open_trace(trace).schema.names
    tallies: list[StudyTally] = []
    timeline = None
    with tempfile.TemporaryDirectory(prefix="fastpath-study-") as tmp:
        for k, lb in enumerate(lbs):
            live = None
            if events is not None:
                from ..live import LivePlane
                live = LivePlane(cluster, log, lb=lb, seed=seed, **service_opts)
                dp, dp2 = live.dp, None
            elif compiled is not None:
                dp = compiled(cluster, lb)
                dp2 = compiled(against, lb) if against is not None else None
            else:
                dp = compile_cluster(cluster, lb=lb, seed=seed, **service_opts)
                dp2 = compile_cluster(against, lb=lb, seed=seed, **service_opts) if against is not None else None
            tally = StudyTally(dp, lb, live=live)

            def on_batch(flows, r, tally=tally, dp2=dp2):
                tally.add(flows, r)
                if dp2 is not None:
                    tally.add_against(r, dp2.resolve_flows(flows))

            tl = Path(tmp) / "timeline.arrow" if k == 0 else None
            # the first balancer's replay also writes the per-node timeline (a timed trace only)
            extra = {"timeline": tl} if tl is not None and timed else {}
            summary = replay(live if live is not None else dp, trace, None,
                             batch_size=batch_size or DEFAULT_BATCH_SIZE, progress=progress, on_batch=on_batch,
                             **extra)
            if tl is not None and tl.exists():
                import pyarrow as pa

                with pa.OSFile(str(tl), "rb") as src:          # read into memory: the folder goes away
                    timeline = pa.ipc.open_file(src).read_all()
            if getattr(summary, "flows", tally.flows) != tally.flows:
                raise FastpathError(f"study: the replay counted {summary.flows} flows, the study {tally.flows}")
            tallies.append(tally)
            if tally.flows == 0:    # every figure would be empty, and the page would say why wrongly
                raise FastpathError(f"study: {trace}: the trace has no flows, so there is nothing to study")
        return figures(tallies, cluster=name, trace=str(trace), against=other_name, timeline=timeline)


def run(cluster, trace, out_dir: str | os.PathLike, **kwargs) -> Path:
    """:func:`study`, then :func:`write_report` into ``out_dir``; returns the page's path."""
    pyplot()                     # fail before the replays if matplotlib is missing
    return write_report(study(cluster, trace, **kwargs), out_dir)
