"""Every real cluster dump loads and replays, except the redacted and malformed ones.

The dumps live beside the repository (``../shared/data/real-k8s-dumps/``, origins in
its ``SOURCES.md``); CI has a copy of ``shared/`` beside the clone. Each is one input:
a file or a directory (support bundles). The ones a user must be told are broken are
listed in :data:`REJECTED` with the reason and the exact one-line error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fastpath import load_cluster, replay, synth_trace
from fastpath.cluster.problems import counts, report
from fastpath.errors import FastpathError

DUMPS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-k8s-dumps"

pytestmark = pytest.mark.skipif(not DUMPS.is_dir(), reason=f"real cluster dumps not found at {DUMPS} "
                                                           "(the shared/ folder beside the repository)")

#: Inputs that must fail: name -> (why, the error after "<path>: ").
REJECTED = {
    "eks-kubectl-cluster-info-dump-stdout.md": (
        "kubectl cluster-info dump's stdout: JSON Lists mixed with container logs and an edited stray '{'",
        "line 2 column 5: bad JSON (Expecting property name enclosed in double quotes)"),
    "popeye-service-list-duplicate-clusterip.yaml": (
        "a linter's fixture: four Services share one clusterIP, which the API server never allows",
        "Service default/svc4: clusterIP 10.96.12.148 is also Service default/svc2's"),
    "sbctl-kurl-support-bundle": (
        "node addresses redacted to ***HIDDEN*** by the support-bundle redactor",
        "Node troubleshoot-demo-001: bad IPv4 InternalIP '***HIDDEN***': expected dotted quad like 10.244.1.7"),
    "troubleshoot-redacted-nodes-digitalocean.json": (
        "node addresses and podCIDRs redacted to ***HIDDEN***",
        "Node biggernode-3i745: spec.podCIDR: bad CIDR '***HIDDEN***/25': '***HIDDEN***' is not an IPv4 address"),
}

#: Where each rejected input's error points (the file inside a directory input).
ERROR_FILE = {"sbctl-kurl-support-bundle": "nodes.json"}


def _inputs() -> list[str]:
    if not DUMPS.is_dir():
        return []
    return sorted(p.name for p in DUMPS.iterdir() if p.name != "SOURCES.md" and not p.name.startswith("."))


@pytest.mark.parametrize("name", _inputs())
def test_dump_loads_and_replays(name, tmp_path):
    path = DUMPS / name
    if name in REJECTED:
        _, error = REJECTED[name]
        with pytest.raises(FastpathError) as err:
            load_cluster(path)
        where = path / ERROR_FILE[name] if name in ERROR_FILE else path
        assert str(err.value) == f"{where}: {error}"
        return
    cluster = load_cluster(path)
    # every load warning is one line, and what --summary-json counts adds up
    assert all("\n" not in w for w in cluster.warnings)
    c = counts(cluster)
    assert sum(c["warnings"].values()) >= len(cluster.problems)
    trace = tmp_path / "t.arrow"
    try:
        assert synth_trace(cluster, 300, seed=1, out=trace) == 300
    except FastpathError as e:      # nothing to make flows between: a lone Service, Node list, ...
        assert str(e) == ("the cluster has nothing to make flows between: no pod with an IP to send from, and no "
                          "service an outside client can reach (at a node's NodePort, a load-balancer or an external "
                          "IP) (or every kind share of the trace mix is 0)")
        assert not any(p.ip is not None for p in cluster.pods)
        _address_trace(cluster, 300, trace)
    summary = replay(cluster, trace, return_table=True, progress=False, threads=1)
    table = summary.table
    assert table.num_rows == 300
    assert table.column("verdict").null_count == 0, "every flow gets a verdict"


def _address_trace(cluster, n: int, path: Path) -> None:
    """Flows to the addresses a cluster without pod addresses has (nodes, service VIPs), and around them.

    ``synth_trace`` needs pods with addresses to make flows between; a dump of nodes
    alone, of one Service, or of completed pods still has to replay.
    """
    rng = np.random.default_rng(3)
    addrs = [ip for node in cluster.nodes for ip in (node.internal_ip, node.external_ip) if ip is not None]
    addrs += [ip for svc in cluster.services for ip in svc.cluster_ips + svc.external_ips + svc.lb_ips]
    ports = [22, 80, 443, 10250] + [p.port for svc in cluster.services for p in svc.ports]
    pool = np.array(addrs + [0x0A000001, 0x08080808, 0xC0A80101], dtype=np.uint32)
    table = pa.table({
        "src_ip": pa.array(rng.choice(pool, n), pa.uint32()),
        "dst_ip": pa.array(rng.choice(pool, n), pa.uint32()),
        "src_port": pa.array(rng.integers(1024, 65535, n), pa.uint16()),
        "dst_port": pa.array(rng.choice(ports, n), pa.uint16()),
        "proto": pa.array(rng.choice([6, 17], n), pa.uint8()),
    })
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)


def test_every_rejected_input_exists():
    missing = sorted(set(REJECTED) - set(_inputs()))
    assert not missing, f"listed as rejected but not in {DUMPS}: {missing}"


def test_namespace_dump_keeps_pods_on_absent_nodes(capsys):
    """`kubectl get all -n default` of a 3-node minikube: no Node objects, pods kept."""
    c = load_cluster(DUMPS / "kubediagrams-zookeeper-namespace-default-no-nodes.yml")
    assert c.nodes == [] and len(c.pods) == 3
    assert c.missing_nodes == {"minikube-m02": 1, "minikube-m03": 1, "minikube": 1}
    assert not any(p.node_known for p in c.pods)
    assert c.namespaces["default"] == {"kubernetes.io/metadata.name": "default"}
    assert len(c.services) == 3                                     # services over those pods still load
    report(c)
    err = capsys.readouterr().err.splitlines()
    assert ("fastpath: warning: 3 pods on nodes the input does not hold (default/zk-0 on minikube-m02, "
            "default/zk-1 on minikube-m03, default/zk-2 on minikube): kept; flows to them are dropped "
            "(reason node-not-in-input)") in err
    assert any(line.startswith("fastpath: warning: skipped 10 objects of kinds fastpath does not use") for line in err)


def test_whole_cluster_dump_reads_configmaps_and_namespaces():
    c = load_cluster(DUMPS / "kubediagrams-minikube-whole-cluster.yml")
    assert c.cluster_cidr == (0x0AF40000, 16)                      # kube-proxy's clusterCIDR 10.244.0.0/16
    assert c.nodes[0].cpu == 2
    assert "ingress-nginx" in c.namespaces and c.namespaces["ingress-nginx"]["kubernetes.io/metadata.name"] == \
        "ingress-nginx"
    ingress = next(p for p in c.pods if p.name.startswith("ingress-nginx-controller"))
    assert {(cp.port, cp.host_port) for cp in ingress.ports} >= {(80, 80), (443, 443)}


def test_verdict_counts_add_up_on_a_support_bundle(tmp_path):
    c = load_cluster(DUMPS / "troubleshoot-k3s-support-bundle")
    trace = tmp_path / "t.arrow"
    synth_trace(c, 500, seed=2, out=trace)
    table = replay(c, trace, return_table=True, progress=False, threads=1).table
    got = pc.value_counts(table.column("verdict").combine_chunks().dictionary_decode()).to_pylist()
    assert sum(x["counts"] for x in got) == 500


def test_study_of_a_one_node_dump_whose_conntrack_fills(tmp_path):
    """minikube's one node holds 131,072 connections: a 200,000-flow trace fills it, and the
    state-over-time figure counts the nodes that dropped (it raised ArrowNotImplementedError)."""
    pytest.importorskip("matplotlib")
    from fastpath.cli import main

    path = DUMPS / "kubediagrams-nginx-deployed-all-ep-eps-nodes.yaml"
    synth_trace(load_cluster(path), 200_000, seed=1, out=tmp_path / "t.arrow")
    assert main(["study", str(path), str(tmp_path / "t.arrow"), "-o", str(tmp_path / "report"), "--lb", "random",
                 "--quiet", "--no-cache"]) == 0
    import json

    got = json.loads((tmp_path / "report" / "figures.json").read_text())["state_over_time"]
    assert got["drops"] > 0 and got["nodes_with_drops"] == 1 and got["peak_node"] == "minikube"


def test_explain_names_a_pod_on_an_absent_node_as_the_source():
    """`kubectl get all -n default` has no Nodes: zk-0 sends as a client outside the cluster
    (docs/dataplane.md §1), and explain says which pod that is and why, not 'not a pod'."""
    from fastpath import compile_cluster
    from fastpath.explain import explain

    dp = compile_cluster(load_cluster(DUMPS / "kubediagrams-zookeeper-namespace-default-no-nodes.yml"))
    lines = explain(dp, "default/zk-0", "zk-hs", 2181).render().splitlines()
    assert lines[1].split(None, 1)[1] == ("10.244.1.19 is pod default/zk-0, on node minikube-m02, which is not in "
                                          "the input: it sends as a client outside the cluster")
    assert lines[2].split(None, 1)[1] == ("'zk-hs': no answer (a client outside the cluster has no search path: "
                                          "only a fully qualified cluster name answers)")
    assert lines[-1].split()[:2] == ["result", "unresolved,"]
    full = explain(dp, "default/zk-0", "zk-hs.default.svc.cluster.local", 2181).render().splitlines()
    assert "no answer" not in full[2]
