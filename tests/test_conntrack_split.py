"""Conntrack by node groups (:mod:`fastpath.stages.conntrack_split`) against the single run.

Every node group tracks its own nodes' state on its own stage, assuming the
other side's answer on rows that cross groups, round after round until the
assumptions agree with the answers (or a fallback to one group). The merged
rows, summary, per-node counters and timeline must equal one stage over the
whole trace, which ``tests/test_conntrack.py`` holds to the slow twin. The
random timed traces are that file's (its helpers: the clusters and flows of
``naive.services``, spread over time as there).
"""
from __future__ import annotations

import copy
import dataclasses
import pickle
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.model import Cluster, Node
from fastpath.codes import DELIVERED, DROPPED, R_CONNTRACK_FULL
from fastpath.errors import FastpathError
from fastpath.pipeline import Results
from fastpath.stages import conntrack_kernel as K
from fastpath.stages.conntrack import ConntrackStage
from fastpath.stages.conntrack_split import (GroupFigures, merge_figures, merge_rows, next_assumptions, relevant_rows,
                                             track_group, track_split)
from naive.pipeline import ip
from naive.pipeline import make_pod as _pod
from naive.services import random_cluster as random_service_cluster
from test_conntrack import S, TCP, UDP, fl, timed_flows, to_flows, two_nodes


def random_trace(seed: int, n: int, nodes: tuple[int, int] = (1, 4)):
    rng = random.Random(seed)
    c = random_service_cluster(rng, n_nodes=rng.randint(*nodes), n_services=4)
    c = dataclasses.replace(c, nodes=[dataclasses.replace(nd, cpu=rng.choice([None, 2, 8])) for nd in c.nodes])
    return c, timed_flows(rng, c, n)


def random_groups(rng: random.Random, nodes: int, groups: int) -> list[int]:
    """Each node's group: ``min(groups, nodes)`` groups, each with a node at least, numbered at random."""
    order = list(range(nodes))
    rng.shuffle(order)
    names = rng.sample(range(100), groups)
    out = [0] * nodes
    for i, n in enumerate(order):
        out[n] = names[i] if i < groups else names[rng.randrange(groups)]
    return out


def copy_results(r: Results) -> Results:
    return Results(**{k: v.copy() for k, v in vars(r).items()})


def single_run(make, fl_, base):
    stage = make()
    r = copy_results(base)
    stage.run(fl_, r)
    stage.finish()
    return stage, r


def assert_same(got_rows: Results, got_summary, got_timeline, got_nd, stage: ConntrackStage, r: Results) -> None:
    for k, v in vars(r).items():
        g = getattr(got_rows, k)
        bad = np.flatnonzero(g != v)
        assert bad.size == 0, f"column {k}: rows {bad[:10].tolist()} split {g[bad[:10]]} single {v[bad[:10]]}"
    assert got_summary == stage.summary()
    assert got_timeline.equals(stage.timeline_table())
    if got_nd is not None:
        assert (got_nd == stage.nd).all()


def split_and_check(cluster: Cluster, flows: list[dict], group_of_node, max_rounds: int = 4, **opts):
    """``track_split`` against one stage over the same resolved rows; returns the split's result."""
    dp = compile_cluster(cluster, lb="random")
    f = to_flows(flows)
    base = dp.resolve_flows(f)
    make = lambda: ConntrackStage(dp, timeline=True, **opts)  # noqa: E731
    stage, r = single_run(make, f, base)
    before = copy_results(base)
    res = track_split(make, f, base, np.asarray(group_of_node), max_rounds=max_rounds)
    assert all((getattr(base, k) == v).all() for k, v in vars(before).items())     # input rows not changed
    assert_same(res.rows, res.summary, res.timeline, res.stage.nd, stage, r)
    assert res.stage.node_states() == stage.node_states()
    assert [res.stage.occupancy(n) for n in range(len(stage.node_names))] == \
        [stage.occupancy(n) for n in range(len(stage.node_names))]
    return res


def by_batches(make, f, base, group_of_node, batches: int):
    """A driver as a distributed one would be: each group on its own stage, fed batch by batch, handing
    back only its rows' results, ``decided`` and :class:`GroupFigures`; the rounds, the merge. Without a
    fallback: the rounds must agree within twice the rows some group assumes something about, plus one."""
    like = make()
    n = f.n
    clock = (int(f.ts[0]), int(f.ts[-1]))
    owns = [(np.asarray(group_of_node) == g).astype(np.uint8) for g in np.unique(group_of_node)]
    rows = [np.flatnonzero(relevant_rows(base.src_node, base.dst_node, base.dst_pod, like.pod_node, o)) for o in owns]
    crossing = np.bincount(np.concatenate(rows), minlength=n) > 1        # rows seen by two groups or more
    max_rounds = 2 * int(crossing.sum()) + 1
    far = [None] * len(owns)
    for rounds in range(1, max_rounds + 1):
        out = []
        for g, own in enumerate(owns):
            stage = make()
            idx = rows[g]
            res = base.take(idx)
            flows_g = f.take(idx)
            cuts = sorted({0, len(idx), *random.Random(len(idx) + g).choices(range(len(idx) + 1), k=batches - 1)})
            decided = []
            for lo, hi in list(zip(cuts, cuts[1:])) or [(0, 0)]:
                part = Results(**{c: v[lo:hi] for c, v in vars(res).items()})
                ok = None if far[g] is None else far[g][lo:hi]
                decided.append(track_group(stage, flows_g.slice(lo, hi), part, own, ok, clock,
                                           final=hi == len(idx)))
            out.append((res, np.concatenate(decided), GroupFigures.of(stage)))
        far, changed = next_assumptions(n, rows, [o[1] for o in out], far)
        if not changed:
            merged = merge_figures(like, [o[2] for o in out])
            return merge_rows(base, rows, [o[0] for o in out], owns), merged, rounds
    raise AssertionError(f"no agreement in {max_rounds} rounds")


# --------------------------------------------------------------------------- hand cases

def three_nodes() -> Cluster:
    nodes = [Node(f"node-{x}", ip(f"192.168.1.{10 + i}"), None, ((ip(f"10.244.{i}.0"), 24),), None)
             for i, x in enumerate("abc")]
    pods = [_pod("a1", "node-a", "10.244.0.5", ("web", 8080, TCP), ("dns", 53, UDP)),
            _pod("a2", "node-a", "10.244.0.6", ("web", 8080, TCP)),
            _pod("b1", "node-b", "10.244.1.7", ("web", 8080, TCP)),
            _pod("c1", "node-c", "10.244.2.8", ("web", 8080, TCP))]
    return Cluster(nodes=nodes, pods=pods, services=[], slices=[])


#: test_conntrack's backend-node-full case: node-b full, the client's entry on node-a stays unanswered.
BACKEND_FULL = [fl(0, "10.244.1.7", "10.244.1.7", 8080, sport=1),
                fl(0, "192.168.1.11", "10.244.1.7", 8080, sport=2),
                fl(S, "10.244.0.5", "10.244.1.7", 8080, sport=3),
                fl(200 * S, "10.244.0.5", "10.244.0.6", 8080, sport=4)]


def test_backend_node_full_needs_a_second_round():
    """Round 1 assumes node-b admits the cross-node connection; node-b (full) refuses it: round 2
    assumes the refusal, and its answers agree."""
    res = split_and_check(two_nodes(), BACKEND_FULL, [0, 1], conntrack_max=1)
    assert (res.rounds, res.fell_back) == (2, False)
    assert res.summary["conntrack_drops"] == 1 and res.summary["nodes"]["node-b"]["conntrack_drops"] == 1
    assert res.rows.verdict[2] == DROPPED and res.rows.hops[2] == 4              # dropped on node-b


def test_one_group_is_one_round():
    res = split_and_check(two_nodes(), BACKEND_FULL, [7, 7], conntrack_max=1)
    assert (res.rounds, res.fell_back) == (1, False)


#: A chain of surprises: node-b refuses row 2 (full), so node-a's entry is unanswered (evictable) and
#: row 3 (a -> c) evicts it: node-a admits row 3, which round 1 did not know, and node-c must answer.
CHAIN = [fl(0, "192.168.1.11", "10.244.1.7", 8080, sport=1),          # node-b holds one ASSURED entry
         fl(S, "10.244.0.5", "10.244.1.7", 8080, sport=2),            # a -> b: refused by node-b (full)
         fl(2 * S, "10.244.0.6", "10.244.2.8", 8080, sport=3)]        # a -> c: evicts the unanswered entry


def test_chain_of_surprises_takes_three_rounds_or_falls_back():
    res = split_and_check(three_nodes(), CHAIN, [0, 1, 2], conntrack_max=1)
    assert (res.rounds, res.fell_back) == (3, False)
    assert res.rows.verdict.tolist() == [DELIVERED, DROPPED, DELIVERED]
    res = split_and_check(three_nodes(), CHAIN, [0, 1, 2], max_rounds=2, conntrack_max=1)
    assert (res.rounds, res.fell_back) == (2, True)
    res = split_and_check(three_nodes(), CHAIN, [0, 1, 0], conntrack_max=1)     # a and c together
    assert (res.rounds, res.fell_back) == (2, False)


def test_fdb_flood_on_the_far_group():
    """The destination pod's FDB time and floods belong to its node's group (the two rows that set and
    read it are tracked there)."""
    flows = [fl(0, "10.244.0.5", "10.244.1.7", 8080, duration=0.5),
             fl(501 * S, "10.244.0.5", "10.244.1.7", 8080, sport=3),
             fl(502 * S, "10.244.1.7", "10.244.0.5", 8080, sport=4)]
    res = split_and_check(two_nodes(), flows, [0, 1], interval=100.0)
    assert res.summary["nodes"]["node-b"]["fdb_floods"] == 1 and res.rounds == 1


def test_group_without_rows_still_has_its_timeline():
    """A node that sees no flow gets the single run's timeline rows (the clock runs over the trace)."""
    flows = [fl(0, "10.244.0.5", "10.244.0.6", 8080), fl(5 * S, "10.244.0.5", "10.244.0.6", 8080, sport=2)]
    res = split_and_check(two_nodes(), flows, [0, 1])
    assert res.timeline.num_rows == 12


def test_every_node_owned_is_the_single_run():
    """``set_owned`` with every node, ``far_ok`` and ``decided`` given: the plain run's rows and figures;
    ``decided`` marks each row's kept sides and the drops."""
    c, flows = random_trace(6, 120, nodes=(3, 3))
    dp = compile_cluster(c, lb="random")
    f = to_flows(flows)
    base = dp.resolve_flows(f)
    make = lambda: ConntrackStage(dp, timeline=True, conntrack_max=3)  # noqa: E731
    stage, r = single_run(make, f, base)
    other = make()
    other.set_owned(np.ones(3, bool))
    got = copy_results(base)
    decided = np.zeros(f.n, np.uint8)
    other.run(f, got, far_ok=np.zeros(f.n, np.uint8), decided=decided)
    other.finish()
    assert_same(got, other.summary(), other.timeline_table(), other.nd, stage, r)
    sn, dn = base.src_node.astype(np.int64), base.dst_node.astype(np.int64)
    assert (((decided & K.D_SN_OWNED) != 0) == (sn >= 0)).all()
    assert (((decided & K.D_DN_OWNED) != 0) == (dn >= 0)).all()
    full = r.reason == R_CONNTRACK_FULL
    refused = ((decided & K.D_SN_OK) == 0) & (sn >= 0) | ((decided & K.D_DN_OK) == 0) & (dn >= 0)
    assert (refused == full).all() and full.any()
    # a copy of a group's stage (as the replay's warm-up makes, or a pickled one) compiles nothing new
    group = make()
    group.set_owned(np.array([1, 0, 1]))
    for st_ in (copy.deepcopy(group), pickle.loads(pickle.dumps(group))):
        track_group(st_, f, copy_results(base), st_.own, None, (int(f.ts[0]), int(f.ts[-1])))
    assert len(K.track.signatures) == 1


def test_stage_guards():
    dp = compile_cluster(two_nodes())
    stage = ConntrackStage(dp)
    with pytest.raises(FastpathError):
        stage.set_owned(np.ones(3, np.uint8))
    stage.advance(10 * S)
    with pytest.raises(FastpathError):
        stage.set_owned(np.ones(2, np.uint8))
    with pytest.raises(FastpathError):
        stage.advance(S)


# --------------------------------------------------------------------------- random timed traces

@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 120), ct_max=st.sampled_from([1, 1, 1, 2, 2, 3, 5, 8, 40, None]),
       interval=st.sampled_from([0.5, 1.0, 7.0, 60.0]), groups=st.sampled_from([1, 2, 3, 4, 4]),
       max_rounds=st.sampled_from([1, 2, 4]), gseed=st.integers(0, 10**6), one_node=st.booleans())
def test_random_timed_traces_split(seed, n, ct_max, interval, groups, max_rounds, gseed, one_node):
    c, flows = random_trace(seed, n, nodes=(1, 4) if one_node else (2, 4))
    group_of_node = random_groups(random.Random(gseed), len(c.nodes), groups)
    res = split_and_check(c, flows, group_of_node, max_rounds=max_rounds, conntrack_max=ct_max, interval=interval,
                          default_duration=30.0)
    event("fell back" if res.fell_back else f"rounds {res.rounds}")
    event(f"{len(set(group_of_node))} groups")


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 120), ct_max=st.sampled_from([1, 2, 3, 8, None]),
       interval=st.sampled_from([0.5, 7.0]), batches=st.integers(1, 4), gseed=st.integers(0, 10**6))
def test_random_traces_batch_by_batch(seed, n, ct_max, interval, batches, gseed):
    """The pieces as a distributed driver uses them (groups fed batch by batch, figures merged)."""
    c, flows = random_trace(seed, n, nodes=(2, 4))
    group_of_node = random_groups(random.Random(gseed), len(c.nodes), len(c.nodes))
    dp = compile_cluster(c, lb="random")
    f = to_flows(flows)
    base = dp.resolve_flows(f)
    make = lambda: ConntrackStage(dp, timeline=True, conntrack_max=ct_max, interval=interval)  # noqa: E731
    stage, r = single_run(make, f, base)
    rows, merged, _ = by_batches(make, f, base, group_of_node, batches)
    assert_same(rows, merged.summary(), merged.timeline_table(), merged.nd, stage, r)


def test_rounds_and_fallback_both_occur():
    """Over fixed random traces with full tables and a node per group: some agree in round 1, some
    need more rounds, some run out of rounds (max 2) and fall back; all equal the single run."""
    outcomes = Counter()
    for seed in range(40):
        c, flows = random_trace(seed, 100, nodes=(3, 4))
        res = split_and_check(c, flows, list(range(len(c.nodes))), max_rounds=2, conntrack_max=2, interval=7.0)
        outcomes["fell back" if res.fell_back else f"rounds {res.rounds}"] += 1
    assert outcomes["rounds 1"] and outcomes["rounds 2"] and outcomes["fell back"], outcomes
