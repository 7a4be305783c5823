"""``fastpath study`` against the replays it is made of, whole process, same run.

A study of three balancers replays the trace three times and tallies figures as
it goes; the figures (vectorized counts per batch, then a few plots) should
cost little next to the replays. Each round is a fresh Python process, as a
user running the command would see it:

* ``replays``: ``fastpath.replay`` under random, maglev and round-robin, no output;
* ``study``: ``fastpath.report.run`` under the same three, writing the page.

The study's ``extra_info`` holds ``over_replays`` = study seconds / replays seconds
(median rounds, same run); the issue's target is at most 1.5.

Sizes: the 500-node cluster and 20 M flows of ``bench_replay.py``; with
``FASTPATH_BENCH_QUICK=1`` a 20-node cluster and 20,000 flows.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("matplotlib")

from bench_replay import FLOWS, NODES, PODS_PER_NODE, QUICK, SERVICES  # noqa: E402
from fastpath.cluster.load import load_cluster  # noqa: E402
from fastpath.cluster.synth import synth_cluster, write_cluster  # noqa: E402
from fastpath.traces import synth_trace  # noqa: E402

#: Balancers of the study (and of the three replays it is measured against).
LBS = ("random", "maglev", "round-robin")
ROUNDS = 1 if QUICK else 3

REPLAYS_CHILD = """
import sys
from fastpath.replay import replay
for lb in sys.argv[3].split(","):
    replay(sys.argv[1], sys.argv[2], None, lb=lb, progress=False)
"""

STUDY_CHILD = """
import sys
from fastpath import report
report.run(sys.argv[1], sys.argv[2], sys.argv[4], lbs=sys.argv[3].split(","), progress=False)
"""

_times: dict[str, float] = {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-study")
    write_cluster(synth_cluster(NODES, PODS_PER_NODE, SERVICES, seed=0), d / "cluster.json")
    synth_trace(load_cluster(d / "cluster.json"), FLOWS, seed=1, out=d / "trace.arrow")
    return d


def _child(code: str, d, out: str = "") -> None:
    subprocess.run([sys.executable, "-c", code, str(d / "cluster.json"), str(d / "trace.arrow"), ",".join(LBS),
                    out], check=True)


@pytest.mark.parametrize("what", ["replays", "study"])
def test_study_against_replays(benchmark, inputs, throughput, what):
    code, out = (REPLAYS_CHILD, "") if what == "replays" else (STUDY_CHILD, str(inputs / "report"))
    if not QUICK:
        _child(code, inputs, out)                           # warm the JIT cache, untimed

    def once():
        t = time.perf_counter()
        _child(code, inputs, out)
        return time.perf_counter() - t

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    throughput(benchmark, FLOWS * len(LBS), unit="flows", balancers=",".join(LBS))
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        _times[what] = stats.median
        if what == "study" and "replays" in _times:
            benchmark.extra_info["over_replays"] = round(_times["study"] / _times["replays"], 3)
            print(f"\nstudy / three replays (median rounds, same run): {benchmark.extra_info['over_replays']}x")
    if what == "study":
        assert (inputs / "report" / "index.html").stat().st_size > 0
        assert os.path.getsize(inputs / "report" / "figures.json") > 0
