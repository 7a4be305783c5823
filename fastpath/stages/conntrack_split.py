"""Connection tracking split by node groups, with exactly the single run's results.

:class:`~fastpath.stages.conntrack.ConntrackStage` walks a timed trace with
per-node state. That state is separable by node but for one coupling: a
connection between two nodes (client node ``sn``, far node ``dn != sn``) asks
``sn``'s table first and, only if ``sn`` admitted it, ``dn``'s; when ``dn``
refuses (full), the row becomes a ``conntrack-full`` drop and ``sn``'s entry is
refiled as unanswered, which changes ``sn``'s counters, its later table and the
FDB time of the client pod. So the nodes can be cut into groups, each tracked by
its own stage (:meth:`ConntrackStage.set_owned`, maybe in another process), only
speculatively: a group *assumes* the other side's answer for each row whose
other side it does not keep (``far_ok``), and reports the answers of its own
tables (``decided``, the kernel's ``D_*`` bits). A driver repeats rounds until
the assumptions agree with the answers.

The pieces, usable in process (:func:`track_split`, the reference driver) or by
a driver that runs each group in another process:

* :func:`relevant_rows`: the rows a group tracks (those touching its nodes);
* :func:`track_group`: one group's rows (or the next batch of them) on its stage,
  with the trace's clock (its first and last ``ts``) so the group's timeline
  rows and final tables are the single run's; returns ``decided``;
* :func:`next_assumptions`: each group's ``far_ok`` for the next round from
  every group's ``decided``, and whether any changed;
* :func:`merge_rows`, :class:`GroupFigures`, :func:`merge_figures`: the rows from
  the group that keeps each row's client node, per-node figures (``summary()``,
  ``node_states()``, the timeline) from each node's group.

Why a consistent assumption gives the exact result
--------------------------------------------------
Call the assumptions of a round *consistent* when :func:`next_assumptions`
derives from that round's answers the very assumptions it ran with. Then every
group's state of its own nodes equals the single run's after every row, by
induction over rows in time order. Before row ``i`` it holds (at the start: the
clock starts every group at the trace's first ``ts``, which sets the first
interval and every pod's FDB time as the single run does). At row ``i``:

* expiry depends on time alone, entry by entry: whatever rows a group skipped,
  every entry of its nodes due by ``ts[i]`` is gone before the row's inserts,
  and every interval boundary is crossed (expiring to the boundary, then the
  interval's peaks start from the tables) as in the single run, because the
  clock loop visits every interval, not only those with rows;
* the client node's group inserts into the true ``sn`` table: its answer ``S``
  is the true one (it depends on earlier rows only);
* the far node's group assumed ``S`` (consistency), so it asks ``dn``'s true
  table exactly when the single run does: its answer ``D`` is the true one;
* the client node's group assumed ``D`` (where ``S`` admitted), so its row
  (verdict, drop, the refiled unanswered entry, ``N_NEW``), its bytes,
  neighbour uses and the client pod's FDB time are the true ones; a group
  keeping only the destination pod's node assumed ``S and D``, the true
  verdict, so its FDB and neighbour updates are the true ones;
* a row touches no node but ``sn``, ``dn`` and the destination pod's node (the
  client pod lives on ``sn``), so a group keeping none of them, which skips
  the row, misses nothing.

Why rounds converge
-------------------
A row's answers depend only on earlier rows (through the tables) and, for the
far node, on the same row's client-side answer. Let row ``i`` be the first
whose assumption is wrong in some round. Every earlier row is exact in that
round, so ``S`` at ``i`` is true and the next round's far-node assumption at
``i`` is right; then ``D`` at ``i`` is true, and the round after has every row
up to ``i`` right. The first wrong row moves forward at least every two rounds,
so the rounds end (within ``2 x`` the rows that cross groups, plus one), and
wrong guesses at unrelated rows are fixed in the same round. In practice the
first round (every far side admits) is wrong only where a far table was full,
and the second or third round is consistent; :func:`track_split` stops after
``max_rounds`` and then runs one group holding every node (the single run).

A group's outcome depends only on its rows, its nodes and its ``far_ok``; a
group whose assumptions did not change keeps its previous round's outcome.

Not covered: a replay with events (:meth:`fastpath.live.LivePlane.run_conntrack`)
moves pods between nodes, and a pod's FDB time follows it to its new node; the
groups here assume the pods' nodes (``stage.pod_node``) do not change.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from ..errors import FastpathError
from ..pipeline import Results
from ..traces.schema import Flows
from . import conntrack_kernel as K
from .conntrack import ConntrackStage

__all__ = ["GroupFigures", "SplitResult", "far_ok_of", "merge_figures", "merge_rows", "next_assumptions",
           "relevant_rows", "track_group", "track_split"]


# --------------------------------------------------------------------------- rows

def relevant_rows(src_node: np.ndarray, dst_node: np.ndarray, dst_pod: np.ndarray, pod_node: np.ndarray,
                  own: np.ndarray) -> np.ndarray:
    """Rows (bool mask) that touch a node where ``own`` is true: the client's node, the far node, or the
    node of the destination pod.

    The columns are the resolved rows' (before conntrack: it sets ``dst_node`` to -1 on a drop by the
    client's node); ``pod_node`` is the stage's pod-to-node map. A pod client lives on ``src_node``.
    """
    own = np.asarray(own) != 0
    sn = np.asarray(src_node, np.int64)
    dn = np.asarray(dst_node, np.int64)
    dp = np.asarray(dst_pod, np.int64)
    pod_node = np.asarray(pod_node, np.int64)

    def owned(x: np.ndarray) -> np.ndarray:
        return (x >= 0) & own[np.maximum(x, 0)]

    pn = np.where(dp >= 0, pod_node[np.maximum(dp, 0)], -1) if pod_node.shape[0] else np.full(dp.shape, -1)
    return owned(sn) | owned(dn) | owned(pn)


# --------------------------------------------------------------------------- one group

def track_group(stage: ConntrackStage, flows: Flows, r: Results, own: np.ndarray, far_ok: np.ndarray | None,
                clock: tuple[int, int], *, final: bool = True) -> np.ndarray:
    """Track a node group's rows on ``stage``; returns their ``decided`` bits (uint8 per row).

    Parameters
    ----------
    stage
        The group's stage, fresh on the first call (built with the options of the single run).
    flows, r
        The group's rows (:func:`relevant_rows` of the whole trace, :meth:`Flows.take` /
        :meth:`Results.take`) in time order, resolved; ``r`` is changed in place as
        :meth:`ConntrackStage.run` does. Zero rows are fine (a group whose nodes see no flow still
        has timeline rows).
    own
        The group's nodes (one flag per node); the same on every call.
    far_ok
        The round's assumption for each row (:func:`next_assumptions`); ``None``: every far side
        admits (the first round).
    clock
        ``(first ts, last ts)`` of the whole trace (all groups' rows together). On the stage's first
        call the clock starts at the first; on the ``final`` call it is advanced to the last and the
        stage finished (:meth:`ConntrackStage.finish`).
    final
        This is the group's last (or only) batch. A group fed batch by batch passes ``False`` on the
        others; the batches must come in time order, as for :meth:`ConntrackStage.run`.
    """
    own = np.asarray(own) != 0
    t_first, t_last = int(clock[0]), int(clock[1])
    if not stage.started:
        stage.set_owned(own)
        stage.advance(t_first)
    elif not np.array_equal(stage.own != 0, own):
        raise FastpathError("conntrack: a group's nodes changed between its batches")
    n = flows.n
    decided = np.zeros(n, np.uint8)
    if n:
        if flows.ts is None:
            raise FastpathError("conntrack: a node group needs the trace's ts")
        stage.run(flows, r, far_ok=np.ones(n, np.uint8) if far_ok is None else far_ok, decided=decided)
    if final:
        stage.advance(t_last)
        stage.finish()
    return decided


# --------------------------------------------------------------------------- rounds

def far_ok_of(own_s: np.ndarray, own_d: np.ndarray, ok_s: np.ndarray, ok_d: np.ndarray) -> np.ndarray:
    """A group's ``far_ok`` for its rows (uint8), from whether it keeps each row's client node
    (``own_s``) and far node (``own_d``), and the answers it assumes of those tables (``ok_s``,
    ``ok_d``; a node not asked admits). Keeping the client's node only: the far answer where the
    client admitted (1 where not: not read); the far node only: the client's answer; neither (the
    destination pod's node): both; both: 1."""
    return np.where(own_s, np.where(own_d, True, ~ok_s | ok_d), np.where(own_d, ok_s, ok_s & ok_d)).astype(np.uint8)


def next_assumptions(n_rows: int, rows: Sequence[np.ndarray], decided: Sequence[np.ndarray],
                     far_ok: Sequence[np.ndarray | None] | None = None) -> tuple[list[np.ndarray], bool]:
    """Each group's ``far_ok`` for the next round, and whether any differs from this round's.

    ``rows[g]``: group ``g``'s rows (indices into the whole trace of ``n_rows`` rows, ascending);
    ``decided[g]``: its :func:`track_group` answers for them; ``far_ok[g]``: what it assumed (``None``,
    or a ``None`` entry: every far side admits). A row's client-node answer ``S`` is the ``D_SN_OK`` bit
    of the group that kept its client node (``D_SN_OWNED``), its far-node answer ``D`` the ``D_DN_OK``
    bit of the far node's group (a node not asked, or absent, admits). A group then assumes: keeping
    the client's node only, ``D`` where ``S`` admitted (1 where not: not read); keeping the far node
    only, ``S``; keeping neither (the destination pod's node), ``S and D``; keeping both, 1.
    Unchanged assumptions are consistent: the round's results are exact (module docstring).

    Row by row: a driver may run it on any slice of the trace (``rows`` relative to the slice, every
    group's bits for it), e.g. batch by batch, and OR the ``changed`` flags.
    """
    ok_s = np.ones(n_rows, bool)
    ok_d = np.ones(n_rows, bool)
    for idx, d in zip(rows, decided):
        own_s = (d & K.D_SN_OWNED) != 0
        own_d = (d & K.D_DN_OWNED) != 0
        ok_s[idx[own_s]] = (d[own_s] & K.D_SN_OK) != 0
        ok_d[idx[own_d]] = (d[own_d] & K.D_DN_OK) != 0
    out, changed = [], False
    for g, (idx, d) in enumerate(zip(rows, decided)):
        new = far_ok_of((d & K.D_SN_OWNED) != 0, (d & K.D_DN_OWNED) != 0, ok_s[idx], ok_d[idx])
        old = None if far_ok is None else far_ok[g]
        changed |= bool((new != 1).any()) if old is None else not np.array_equal(new, old)
        out.append(new)
    return out, changed


# --------------------------------------------------------------------------- merging

def merge_rows(r: Results, rows: Sequence[np.ndarray], results: Sequence[Results],
               owns: Sequence[np.ndarray]) -> Results:
    """The whole trace's rows: ``r`` (the resolved rows, before conntrack; not changed) with each row
    tracked by a group taken from the group keeping its client node (``owns[g]``: group ``g``'s nodes;
    ``results[g]``: its rows ``rows[g]`` after :func:`track_group`). Rows without a client node are
    not changed by conntrack and stay as resolved."""
    out = r.copy()
    for idx, res, own in zip(rows, results, owns):
        own = np.asarray(own) != 0
        sn = np.asarray(r.src_node, np.int64)[idx]
        mine = (sn >= 0) & own[np.maximum(sn, 0)]
        at = idx[mine]
        for k, v in vars(res).items():
            getattr(out, k)[at] = v[mine]
    return out


@dataclass
class GroupFigures:
    """What a group's stage hands back besides its rows (small: a row per node, and its timeline rows)."""

    own: np.ndarray        #: uint8 per node: the group's nodes
    nd: np.ndarray         #: the stage's per-node counters (``ConntrackStage.nd``)
    timeline: np.ndarray   #: its timeline rows (``conntrack_kernel.TL_COLS``), its nodes only

    @classmethod
    def of(cls, stage: ConntrackStage) -> "GroupFigures":
        """The figures of a finished group stage."""
        return cls(np.array(stage.own, np.uint8), stage.nd.copy(), stage.timeline_rows())


def merge_figures(like: ConntrackStage, figures: Sequence[GroupFigures]) -> ConntrackStage:
    """A stage to read the merged figures from: each node's counters from its group, the timeline rows
    of every group in the single run's order (time, then node).

    ``like``: any stage built with the single run's options (its node names, table sizes and interval
    are used; it is not changed). The result answers :meth:`~ConntrackStage.summary`,
    :meth:`~ConntrackStage.node_states`, :meth:`~ConntrackStage.timeline_table`,
    :meth:`~ConntrackStage.occupancy` and :meth:`~ConntrackStage.table_max`; it is for reading only
    (it shares ``like``'s pools: never run it).
    """
    nodes = like.nd.shape[0]
    nd = like.nd.copy()
    seen = np.zeros(nodes, np.int64)
    for f in figures:
        own = np.asarray(f.own) != 0
        nd[own] = f.nd[own]
        seen += own
    if (seen != 1).any():
        raise FastpathError("conntrack: every node must belong to exactly one group")
    parts = [f.timeline for f in figures if f.timeline.shape[0]]
    tl = np.concatenate(parts) if parts else np.zeros((0, len(K.TL_COLS)), np.int64)
    tl = tl[np.lexsort((tl[:, 1], tl[:, 0]))]
    view = copy.copy(like)
    view.nd = nd
    view._rows = [tl]
    view.own = np.ones(nodes, np.uint8)
    return view


# --------------------------------------------------------------------------- the reference driver

@dataclass
class SplitResult:
    """What :func:`track_split` returns."""

    rows: Results            #: the whole trace's rows after conntrack, in the original order
    summary: dict            #: as :meth:`ConntrackStage.summary`
    timeline: pa.Table       #: as :meth:`ConntrackStage.timeline_table`
    rounds: int              #: rounds run (before a fallback, if any)
    fell_back: bool          #: the rounds did not agree within ``max_rounds``: one group ran every node
    stage: ConntrackStage    #: the merged figures (:func:`merge_figures`), or the fallback's stage


def track_split(make_stage: Callable[[], ConntrackStage], flows: Flows, r: Results, group_of_node: np.ndarray,
                max_rounds: int = 4) -> SplitResult:
    """Conntrack over a whole timed trace, node group by node group, in process (the reference driver).

    ``make_stage()``: a fresh stage with the single run's options; ``flows``, ``r``: the whole trace
    in time order and its resolved rows (not changed); ``group_of_node``: each node's group (any
    integers). Round 1 assumes every far side admits; each next round assumes what the last one
    answered (:func:`next_assumptions`), rerunning only the groups whose assumptions changed, until
    none changes (exact), or ``max_rounds`` rounds ran: then one stage keeps every node.
    """
    if max_rounds < 1:
        raise FastpathError(f"max_rounds {max_rounds!r}: must be at least 1")
    like = make_stage()
    group_of_node = np.asarray(group_of_node)
    if group_of_node.shape != (like.nd.shape[0],):
        raise FastpathError(f"group_of_node has {group_of_node.shape} entries, the cluster {like.nd.shape[0]} nodes")
    n = flows.n
    if len(r) != n:                                  # a reused buffer longer than the batch: its first rows
        r = r.take(slice(0, n))
    if flows.ts is None or n == 0:                   # nothing tracked, as ConntrackStage.run
        like.finish()
        return SplitResult(r.take(np.arange(n)), like.summary(), like.timeline_table(), 0, False, like)
    clock = (int(flows.ts[0]), int(flows.ts[n - 1]))
    owns = [(group_of_node == g).astype(np.uint8) for g in np.unique(group_of_node)]
    rows = [np.flatnonzero(relevant_rows(r.src_node, r.dst_node, r.dst_pod, like.pod_node, own)) for own in owns]
    parts = [(flows.take(idx), r_g) for idx, r_g in ((idx, r.take(idx)) for idx in rows)]
    far: list[np.ndarray | None] = [None] * len(owns)      # this round's assumptions (None: all admit)
    ran: list[tuple[np.ndarray | None, ConntrackStage, Results, np.ndarray] | None] = [None] * len(owns)
    rounds = 0
    while True:
        rounds += 1
        for g, own in enumerate(owns):
            last = ran[g]
            if last is not None and not _changed(last[0], far[g]):
                continue                             # same rows, nodes and assumptions: same outcome
            stage = make_stage()
            fl, res0 = parts[g]
            res = res0.take(np.arange(len(res0)))
            ran[g] = (far[g], stage, res, track_group(stage, fl, res, own, far[g], clock))
        done = [x for x in ran if x is not None]
        far, changed = next_assumptions(n, rows, [x[3] for x in done], [x[0] for x in done])
        if not changed:
            merged = merge_figures(like, [GroupFigures.of(x[1]) for x in done])
            out = merge_rows(r, rows, [x[2] for x in done], owns)
            return SplitResult(out, merged.summary(), merged.timeline_table(), rounds, False, merged)
        if rounds >= max_rounds:
            break
    single = make_stage()                            # the fallback: one group holding every node
    out = r.take(np.arange(n))
    single.run(flows, out)
    single.finish()
    return SplitResult(out, single.summary(), single.timeline_table(), rounds, True, single)


def _changed(old: np.ndarray | None, new: np.ndarray | None) -> bool:
    """Whether two assumptions differ (``None``: every far side admits)."""
    if old is None and new is None:
        return False
    if old is None or new is None:
        return bool(((new if old is None else old) != 1).any())
    return not np.array_equal(old, new)
