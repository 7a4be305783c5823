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
STAGE_ORDER = ["source", "dns", "loopback", "drop", "portmap", "service", "policy", "route", "forward", "neighbour", "fdb",
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


# --------------------------------------------------------------------------- clusters with more rules

#: Flows drawn per (verdict, reason, path, by-name, service-or-not) kind of each cluster below.
PER_RULE_KIND = 3


def _synth_policy_cluster(addressing: str):
    from fastpath.cluster.load import cluster_from_objects
    from fastpath.cluster.synth import synth_cluster

    obj = synth_cluster(8, 8, 16, namespaces=3, policies=10, addressing=addressing, seed=2)
    return cluster_from_objects(obj["items"], f"synth-{addressing}")


def _conformance_cluster():
    from tests.test_policy_conformance import CORPUS, case_cluster

    if not (CORPUS / "onlineboutique_workloads").is_dir():
        pytest.skip("conformance corpus not present")
    c = case_cluster(CORPUS / "onlineboutique_workloads")
    return c[0] if isinstance(c, tuple) else c


def _dump_cluster():
    from pathlib import Path

    p = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-k8s-dumps" / \
        "kubediagrams-wordpress-namespace-default-no-nodes.yml"
    if not p.is_file():
        pytest.skip("real dump not present")
    return load_cluster(p)


@pytest.fixture(scope="module", params=["synth-bridge-policies", "synth-calico-policies", "conformance-boutique",
                                        "dump-pods-on-absent-nodes"])
def ruled(request, tmp_path_factory):
    """(plane, drawn flows with their resolve rows) of a cluster with NetworkPolicies, VPC-like addressing or a dump."""
    from fastpath.traces.synth import synth_trace

    cluster = {"synth-bridge-policies": lambda: _synth_policy_cluster("bridge"),
               "synth-calico-policies": lambda: _synth_policy_cluster("calico"),
               "conformance-boutique": _conformance_cluster,
               "dump-pods-on-absent-nodes": _dump_cluster}[request.param]()
    dp = compile_cluster(cluster, lb="maglev", seed=3)
    out = tmp_path_factory.mktemp("ruled") / "trace.arrow"
    synth_trace(cluster, 3000, seed=1, out=out, cache=False)
    with pa.memory_map(str(out)) as src:
        table = pa.ipc.open_file(src).read_all().combine_chunks()
    table = table.set_column(table.schema.get_field_index("ts"), "ts", table.column("ts").cast(pa.int64()))
    batch = table.to_batches()[0]
    rows = dp.resolve(batch).to_pylist()
    flows = batch.to_pylist()
    kinds = defaultdict(list)
    for i, (f, r) in enumerate(zip(flows, rows)):
        kinds[(r["verdict"], r["reason"], r["path"], f["dst_ip"] is None, r["service"] is None)].append(i)
    rng = np.random.default_rng(5)
    picked = set()
    for members in kinds.values():
        picked.update(rng.choice(members, size=min(PER_RULE_KIND, len(members)), replace=False).tolist())
    if dp.policy is not None:
        assert {"policy-egress", "policy-ingress"} <= {rows[i]["reason"] for i in picked}
    return dp, [(flows[i], rows[i]) for i in sorted(picked)]


def _policy_said(lines: list[str], side: str, keys: list[str]) -> int:
    """What the policy step says of one direction, as the kernel's code (policy index, -1, -2, -3)."""
    if any("to itself" in t for t in lines):
        return -2
    for t in lines:
        if not t.startswith(side + ":"):
            continue
        if "always allowed" in t:
            return -2
        if t.startswith(f"{side}: allowed by "):
            return keys.index(t.split()[3])
        if "denied" in t:
            return -3
        if "not isolated" in t:
            return -1
    return -1


def test_steps_agree_with_the_kernels_on_ruled_clusters(ruled):
    dp, drawn = ruled
    keys = [p.key for p in dp.policy.t.policies] if dp.policy is not None else []
    for f, row in drawn:
        ex = explain_flow(dp, f)
        names = [s for s, _ in ex.steps]
        if f["dst_ip"] is None and ex.query["dst_kind"] == "service":
            # ``name.namespace`` from a node or outside client: read as the service, and the dns step
            # says whether the name itself gets an answer (the replay row's verdict)
            dns = [t for s, t in ex.steps if s == "dns"]
            assert len(dns) == 1 and ("no answer" in dns[0]) == (row["verdict"] == "unresolved"), (f, row, dns)
            continue
        assert ex.result == row, f
        ranks = [STAGE_ORDER.index(s) for s in names]
        assert ranks == sorted(ranks), (f, names)
        if row["verdict"] != "unresolved" and row["dnat_ip"] is not None:
            dnat = [t for s, t in ex.steps if s == "service" and t.startswith("DNAT -> ")]
            assert all(t.startswith(f"DNAT -> {int_to_ip(row['dnat_ip'])}:{row['dnat_port']}") for t in dnat), (f, dnat)
        if row["verdict"] == "egress" and row["src_pod"] is not None and row["snat_ip"] != f["src_ip"]:
            assert f"-> {int_to_ip(row['snat_ip'])}" in ex.steps[-1][1], (f, ex.steps[-1])
        if dp.policy is None or "policy" not in names:
            assert row["reason"] not in ("policy-egress", "policy-ingress"), f
            continue
        lines = [t for s, t in ex.steps if s == "policy"]
        egress, ingress = int(dp.policy.last_egress[0]), int(dp.policy.last_ingress[0])   # explain's own resolve
        assert _policy_said(lines, "egress", keys) == egress, (f, lines, egress)
        if egress != -3:
            assert _policy_said(lines, "ingress", keys) == ingress, (f, lines, ingress)
        if row["verdict"] == "denied":
            assert names[-1] == "policy" and row["reason"] in lines[-1], (f, lines)


def test_a_service_name_from_a_host_says_what_dns_answers():
    """``name.namespace`` from a node is read as the service (a kubectl habit), and explain says that a
    flow asking DNS for that name from the node gets no answer, as a replay row by name does."""
    dp = compile_cluster(_synth_policy_cluster("bridge"), lb="maglev", seed=3)
    node = dp.cluster.nodes[1]
    ex = explain(dp, node.name, "kube-dns.kube-system", 53, "udp")
    assert ex.result["service"] == "kube-system/kube-dns:dns"
    by_name = dp.resolve(pa.record_batch({
        "src_ip": pa.array([node.internal_ip], pa.uint32()), "src_port": pa.array([40000], pa.uint16()),
        "dst_port": pa.array([53], pa.uint16()), "proto": pa.array([17], pa.uint8()),
        "dst_ip": pa.array([None], pa.uint32()), "dst_name": pa.array(["kube-dns.kube-system"], pa.string())}))
    assert by_name.column("verdict")[0].as_py() == "unresolved"
    dns = [t for s, t in ex.steps if s == "dns"]
    assert len(dns) == 1 and "no answer" in dns[0] and "kube-dns.kube-system.svc.cluster.local" in dns[0], ex.steps
    fq = explain(dp, node.name, "kube-dns.kube-system.svc.cluster.local", 53, "udp")
    assert fq.result == ex.result
    assert [t for s, t in fq.steps if s == "dns"] == ["'kube-dns.kube-system.svc.cluster.local' -> 10.96.0.10 "
                                                       "(service kube-system/kube-dns)"]
    by_svc = explain(dp, node.name, "svc/kube-system/kube-dns", "dns")
    assert by_svc.result == ex.result and "dns" not in [s for s, _ in by_svc.steps]


def test_a_pod_on_an_absent_node_by_name_or_by_ip():
    """A pod on a node not in the input sends as an outside client: named or by IP, the same walk."""
    c = _dump_cluster()
    dp = compile_cluster(c)
    pod = next(p for p in c.pods if p.ip and p.node and p.node not in {n.name for n in c.nodes})
    by_name = explain(dp, pod.key, "wordpress.default", 80)
    by_ip = explain(dp, int_to_ip(pod.ip), "wordpress.default", 80)
    assert by_name.result == by_ip.result and by_name.steps == by_ip.steps
    assert by_name.query["dst_kind"] == by_ip.query["dst_kind"] == "service"


def test_a_named_port_of_a_name_the_pods_resolver_answers():
    """``--dst kube-dns --dport dns`` from a pod of kube-system: the service its resolver answers, its port."""
    dp = compile_cluster(_synth_policy_cluster("bridge"), lb="maglev", seed=3)
    pod = next(p for p in dp.cluster.pods if p.namespace == "kube-system" and p.ip and not p.host_network)
    ex = explain(dp, pod.key, "kube-dns", "dns")
    assert (ex.query["dst_port"], ex.query["proto"]) == (53, "udp")
    assert ex.result == explain(dp, pod.key, "kube-dns", 53, "udp").result
    assert ex.result["service"] == "kube-system/kube-dns:dns"
    other = next(p for p in dp.cluster.pods if p.namespace not in ("kube-system", "default") and p.ip
                 and not p.host_network)
    with pytest.raises(FastpathError, match="named port"):
        explain(dp, other.key, "kube-dns", "dns")                  # no answer from another namespace
