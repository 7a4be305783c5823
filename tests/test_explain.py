"""``fastpath.explain``: one flow, hop by hop, agreeing with what the kernels resolve.

Flows are drawn from the bundled sample trace, spread over every (verdict, path)
kind that occurs there, and each is explained on its own; its result row must be
the row :meth:`DataPlane.resolve` gives the same flow inside a batch (the
balancers checked are stateless, so a flow's backend does not depend on its
neighbours in the batch), and the narrated steps must come in data-plane order.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from fastpath.addr import int_to_ip
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import load_cluster
from fastpath.errors import FastpathError
from fastpath.explain import Explanation, explain
from fastpath.replay import sample_paths

#: Stages in the order a flow meets them (each may repeat, e.g. several ``service`` lines).
STAGE_ORDER = ["source", "dns", "loopback", "drop", "portmap", "service", "route", "forward", "neighbour", "fdb",
               "listen", "snat"]
#: Rows of the sample trace the flows are drawn from.
WINDOW = 40_000
#: Flows drawn per (verdict, path, by-name, service-or-not) kind, plus this many at random.
PER_KIND, AT_RANDOM = 12, 120


@pytest.fixture(scope="module")
def sample():
    """(cluster, trace window as a RecordBatch with int64 ts) of the bundled sample."""
    cluster_path, trace_path = sample_paths()
    with pa.memory_map(str(trace_path)) as src:
        table = pa.ipc.open_file(src).read_all().slice(0, WINDOW).combine_chunks()
    table = table.set_column(table.schema.get_field_index("ts"), "ts", table.column("ts").cast(pa.int64()))
    return load_cluster(cluster_path), table.to_batches()[0]


@pytest.fixture(scope="module", params=["random", "maglev", "source-hash"])
def plane(request, sample):
    return compile_cluster(sample[0], lb=request.param, seed=3)


@pytest.fixture(scope="module")
def drawn(sample, plane):
    """Flows (as dicts) with the row ``dp.resolve`` gives each: every kind, then a random fill."""
    batch = sample[1]
    rows = plane.resolve(batch).to_pylist()
    flows = batch.to_pylist()
    kinds = defaultdict(list)
    for i, (f, r) in enumerate(zip(flows, rows)):
        kinds[(r["verdict"], r["path"], f["dst_ip"] is None, r["service"] is None)].append(i)
    rng = np.random.default_rng(11)
    picked = set()
    for members in kinds.values():
        picked.update(rng.choice(members, size=min(PER_KIND, len(members)), replace=False).tolist())
    picked.update(rng.choice(len(flows), size=AT_RANDOM, replace=False).tolist())
    verdicts = {rows[i]["verdict"] for i in picked}
    assert {"delivered", "refused", "rejected", "dropped", "egress", "unresolved"} <= verdicts
    return [(flows[i], rows[i]) for i in sorted(picked)]


def explain_flow(dp, f: dict) -> Explanation:
    dst = f["dst_name"] if f["dst_ip"] is None else int_to_ip(f["dst_ip"])
    return explain(dp, int_to_ip(f["src_ip"]), dst, f["dst_port"], f["proto"], f["src_port"], ts=f["ts"])


def test_result_is_the_row_resolve_gives(plane, drawn):
    for f, row in drawn:
        ex = explain_flow(plane, f)
        got = {k: ex.result[k] for k in ("verdict", "path", "dst_pod", "service", "hops")}
        want = {k: row[k] for k in ("verdict", "path", "dst_pod", "service", "hops")}
        assert got == want, f
        assert ex.result == row, f                    # and every other column too


def test_steps_follow_the_data_plane(plane, drawn):
    for f, row in drawn:
        ex = explain_flow(plane, f)
        names = [s for s, _ in ex.steps]
        assert names and names[0] == "source", (f, names)
        # the entries the connection leaves in conntrack: one per node whose netfilter sees it
        tracked = ex.conntrack
        if row["verdict"] in ("delivered", "refused", "egress") and row["path"] != "loopback" \
                and row["src_node"] is not None:
            nodes = {row["src_node"]} | ({row["dst_node"]} if row["dst_node"] and row["verdict"] != "egress" else set())
            assert len(tracked) == len(nodes) and all(any(n in t for t in tracked) for n in nodes), (f, tracked)
        core = ex.steps
        ranks = [STAGE_ORDER.index(s) for s in names]
        assert ranks == sorted(ranks), (f, names)
        by_name = f["dst_ip"] is None
        assert ("dns" in names) == by_name, (f, names)
        if row["verdict"] == "unresolved":
            assert names[-1] == "dns", (f, names)
        if row["verdict"] in ("delivered", "refused"):
            assert names[-1] == "listen", (f, names)
            assert (row["verdict"] == "delivered") == ("delivered" in core[-1][1]), (f, core[-1])
        if row["path"] == "loopback" and row["service"] is None:
            assert "route" not in names or "loopback" not in names
        if row["verdict"] == "egress" and row["src_pod"] is not None:
            assert names[-1] == "snat" and "masquerade" in core[-1][1], (f, core)
        if row["verdict"] == "rejected":                # kube-proxy stops it: nothing is routed
            assert "route" not in names and names[-1] == "service", (f, names)
        if row["service"] is not None:
            assert "service" in names and any(row["service"] in t for s, t in ex.steps if s == "service")


def test_render_ends_with_the_result(plane, drawn):
    for f, row in drawn[:60]:
        ex = explain_flow(plane, f)
        text = ex.render()
        lines = text.splitlines()
        assert lines[0].startswith(f"flow {int_to_ip(f['src_ip'])}:{f['src_port']} -> ")
        want = f"{row['verdict']}, path {row['path']}, hops {row['hops']}"
        if row["service"]:
            want += f", service {row['service']}"
        if row["reason"]:
            want += f", reason {row['reason']}"
        assert lines[-1].split(None, 1) == ["result", want], text
        assert len(lines) == len(ex.steps) + len(ex.conntrack) + 2


def test_pod_names_and_errors(sample):
    cluster = sample[0]
    dp = compile_cluster(cluster)
    pod = next(p for p in cluster.pods if p.ip and p.node and not p.host_network and p.ports)
    by_key = explain(dp, pod.key, "10.96.0.10", 53, "udp")
    by_ip = explain(dp, int_to_ip(pod.ip), "10.96.0.10", 53, "udp")
    assert by_key.result == by_ip.result
    assert by_key.result["src_pod"] == pod.key
    assert explain(dp, pod.name, "10.96.0.10", 53, "udp").result == by_ip.result   # a unique bare name
    assert explain(dp, pod.key, "10.96.0.10", 53, 17).result == by_ip.result        # protocol by number
    to_pod = explain(dp, int_to_ip(pod.ip), pod.key, pod.ports[0].port, pod.ports[0].proto)
    assert (to_pod.result["dst_pod"], to_pod.result["verdict"]) == (pod.key, "delivered")
    with pytest.raises(FastpathError, match="no-such-pod"):
        explain(dp, "shop/no-such-pod", "10.96.0.10", 53)
    with pytest.raises(FastpathError, match="10.96.0.300"):
        explain(dp, pod.key, "10.96.0.300", 53)
    with pytest.raises(FastpathError, match="icmp"):
        explain(dp, pod.key, "10.96.0.10", 53, "icmp")
