"""Manifests without a cluster (``--expand-workloads``), ``synth --policies``, the policy summary and explain."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from fastpath.addr import int_to_ip
from fastpath.cli import main
from fastpath.cluster.load import cluster_from_objects, load_cluster
from fastpath.cluster.synth import synth_cluster, write_cluster
from fastpath.cluster.workloads import expand_workloads
from fastpath.codes import DENIED
from fastpath.errors import FastpathError
from fastpath.explain import explain
from fastpath.pipeline import DataPlane
from fastpath.replay import replay
from fastpath.stages.policy import isolated_without_ingress
from fastpath.traces import normalize_batch


def workload(kind: str, name: str, labels: dict, ports=(), ns: str = "shop", host: bool = False, **spec) -> dict:
    template = {"metadata": {"labels": labels},
                "spec": {"hostNetwork": host, "containers": [{"name": "main", "ports": [
                    {"name": n, "containerPort": p, "protocol": pr} for n, p, pr in ports]}]}}
    body = {"template": template, **spec}
    if kind == "CronJob":
        body = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template, **spec}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": body}


def manifests() -> list[dict]:
    return [
        workload("Deployment", "web", {"app": "web"}, [("http", 8080, "TCP")], replicas=3,
                 selector={"matchLabels": {"app": "web"}}),
        workload("StatefulSet", "db", {"app": "db"}, [("sql", 5432, "TCP")], replicas=2,
                 selector={"matchLabels": {"app": "db"}}),
        workload("DaemonSet", "agent", {"app": "agent"}, [("m", 9100, "TCP")], host=True,
                 selector={"matchLabels": {"app": "agent"}}),
        workload("DaemonSet", "fluent", {"app": "fluent"}, [], selector={"matchLabels": {"app": "fluent"}}),
        workload("Job", "migrate", {"job": "migrate"}, [], parallelism=2),
        workload("CronJob", "report", {"job": "report"}, []),
        workload("ReplicaSet", "cache", {"app": "cache"}, [("redis", 6379, "TCP")],
                 selector={"matchLabels": {"app": "cache"}}),
    ]


def test_expand_places_pods_as_controllers_do():
    cluster = cluster_from_objects(manifests(), "app.yaml")
    assert len(cluster.workloads) == 7 and not cluster.pods
    owners: dict[str, str] = {}
    c = expand_workloads(cluster, owners)
    assert [n.name for n in c.nodes] == ["node-000", "node-001", "node-002"]      # synthetic nodes
    by_owner: dict[str, list] = {}
    for p in c.pods:
        by_owner.setdefault(owners[p.key], []).append(p)
    counts = {k: len(v) for k, v in by_owner.items()}
    assert counts == {"shop/web[Deployment]": 3, "shop/db[StatefulSet]": 2, "shop/agent[DaemonSet]": 3,
                      "shop/fluent[DaemonSet]": 3, "shop/migrate[Job]": 2, "shop/report[CronJob]": 1,
                      "shop/cache[ReplicaSet]": 1}
    assert [p.name for p in by_owner["shop/db[StatefulSet]"]] == ["db-0", "db-1"]
    assert {p.node for p in by_owner["shop/fluent[DaemonSet]"]} == {"node-000", "node-001", "node-002"}
    web = by_owner["shop/web[Deployment]"]
    assert all(p.labels == {"app": "web"} and p.ports[0].name == "http" and p.ports[0].port == 8080 for p in web)
    assert len({p.node for p in web}) == 3                                          # spread round-robin
    for p in by_owner["shop/agent[DaemonSet]"]:                                     # hostNetwork: the node's IP
        node = next(n for n in c.nodes if n.name == p.node)
        assert p.host_network and p.ip == node.internal_ip
    bridged = [p for p in c.pods if not p.host_network]
    assert len({p.ip for p in bridged}) == len(bridged)
    for p in bridged:                                                               # inside the node's pod CIDR
        node = next(n for n in c.nodes if n.name == p.node)
        net, length = node.pod_cidrs[0]
        assert p.ip >> (32 - length) == net >> (32 - length) and p.ip & 0xFF >= 2
    assert any("placed 15 pods for 7 workloads on 3 synthetic nodes" in w for w in c.warnings)
    dp = DataPlane.build(c)                                                         # and they forward
    web_ip, db_ip = web[0].ip, by_owner["shop/db[StatefulSet]"][0].ip
    row = dp.resolve({"src_ip": np.array([web_ip], np.uint32), "dst_ip": np.array([db_ip], np.uint32),
                      "src_port": np.array([40000], np.uint16), "dst_port": np.array([5432], np.uint16),
                      "proto": np.array([6], np.uint8)}).to_pylist()[0]
    assert row["verdict"] == "delivered" and row["dst_pod"].startswith("shop/db-")


def test_expand_keeps_given_nodes_and_pods():
    objs = manifests()[:2] + [
        {"kind": "Node", "metadata": {"name": "n0"}, "spec": {"podCIDR": "10.1.0.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.5.1"}]}},
        {"kind": "Pod", "metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"}},
         "spec": {"nodeName": "n0", "containers": [{"name": "c"}]},
         "status": {"phase": "Running", "podIP": "10.1.0.2"}},
    ]
    c = expand_workloads(cluster_from_objects(objs))
    assert [n.name for n in c.nodes] == ["n0"]
    placed = [p for p in c.pods if p.name != "db-0"]
    assert len(placed) == 3 and all(p.name.startswith("web-") for p in placed)      # db has its pod
    assert sorted(int_to_ip(p.ip) for p in placed) == ["10.1.0.3", "10.1.0.4", "10.1.0.5"]   # .2 is taken


def test_expand_without_workloads_is_the_same_cluster():
    c = cluster_from_objects([{"kind": "Node", "metadata": {"name": "n0"}}])
    assert expand_workloads(c) is c


@pytest.mark.parametrize("spec, message", [
    ({"replicas": -1}, "spec.replicas -1 is not a whole number >= 0"),
    ({"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 0}]}]}}},
     "spec.template.spec: container c containerPort"),
    ({"selector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}},
     "spec.selector.matchExpressions[0].operator 'Bogus'"),
])
def test_bad_workload_one_line(spec, message):
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
           "spec": spec}
    with pytest.raises(FastpathError) as e:
        cluster_from_objects([obj], "app.yaml")
    assert str(e.value).startswith("app.yaml: Deployment shop/web: ") and message in str(e.value)


# --------------------------------------------------------------------------- command line

def _write_yaml(path, objs):
    import yaml
    path.write_text(yaml.safe_dump_all(objs))


def test_cli_expand_workloads(tmp_path, capsys):
    pol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "db-from-web", "namespace": "shop"},
           "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}}
    app = tmp_path / "app.yaml"
    _write_yaml(app, manifests() + [pol])
    c = load_cluster(app, expand_workloads=True)
    web = next(p for p in c.pods if p.name.startswith("web-"))
    cache = next(p for p in c.pods if p.name.startswith("cache-"))
    assert main(["explain", str(app), "--expand-workloads", "--src", web.key, "--dst", "shop/db-0",
                 "--dport", "5432"]) == 0
    out = capsys.readouterr().out
    assert "allowed by shop/db-from-web ingress[0]" in out and "delivered" in out
    assert main(["explain", str(app), "--expand-workloads", "--src", cache.key, "--dst", "shop/db-0",
                 "--dport", "5432"]) == 0
    out = capsys.readouterr().out
    assert "isolated for ingress" in out and "denied (policy-ingress)" in out
    assert main(["explain", str(app), "--src", web.key, "--dst", "shop/db-0", "--dport", "5432"]) == 2
    assert "no such pod" in capsys.readouterr().err                            # no pods without the flag


def test_synth_policies(tmp_path):
    assert main(["synth", "cluster", "--nodes", "6", "--pods-per-node", "12", "--services", "12",
                 "--policies", "30", "-o", str(tmp_path / "c.json")]) == 0
    c = load_cluster(tmp_path / "c.json")
    assert len(c.policies) == 30
    kinds = {("ns-wide" if not p.pod_selector.match_labels and not p.pod_selector.expressions else "app")
             for p in c.policies}
    assert kinds == {"ns-wide", "app"}
    assert any(q.ip_block is not None for p in c.policies for r in p.ingress + p.egress for q in r.peers or ())
    assert any(q.namespace_selector is not None and q.pod_selector is not None
               for p in c.policies for r in p.ingress + p.egress for q in r.peers or ())
    plain = synth_cluster(6, 12, 12)["items"]
    with_p = synth_cluster(6, 12, 12, policies=30)["items"]
    assert [o for o in with_p if o["kind"] not in ("NetworkPolicy", "Namespace")] == plain   # same cluster


# --------------------------------------------------------------------------- summary and explain

def test_replay_summary_policy(tmp_path):
    from fastpath.traces import synth_trace

    obj = synth_cluster(8, 15, 16, policies=40, seed=3)
    path = tmp_path / "c.json"
    write_cluster(obj, path)
    cluster = load_cluster(path)
    synth_trace(cluster, 20000, seed=1, out=tmp_path / "t.arrow")
    s = replay(cluster, tmp_path / "t.arrow", return_table=True, progress=False)
    pol = s.policy
    assert pol is not None and pol["policies"] == 40
    t = s.table
    verdict = t.column("verdict").to_pylist()
    reason = t.column("reason").to_pylist()
    assert pol["denied_ingress"] == sum(1 for r in reason if r == "policy-ingress") > 0
    assert pol["denied_egress"] == sum(1 for r in reason if r == "policy-egress")
    assert s.by_verdict["denied"] == pol["denied_ingress"] + pol["denied_egress"] == verdict.count("denied")
    # the namespace pairs add up to every denied flow shown (the list is the top rows)
    src_pod, dst_pod = t.column("src_pod").to_pylist(), t.column("dst_pod").to_pylist()
    pairs: dict = {}
    for v, sp, dp_ in zip(verdict, src_pod, dst_pod):
        if v == "denied":
            key = (sp.split("/")[0] if sp else None, dp_.split("/")[0] if dp_ else "(outside)")
            pairs[key] = pairs.get(key, 0) + 1
    for row in pol["denied_by_namespace"]:
        if not row["src_namespace"].startswith("("):
            assert pairs[(row["src_namespace"], row["dst_namespace"])] == row["ingress"] + row["egress"]
    assert pol["top_policies"] and all(p["allowed"] > 0 for p in pol["top_policies"])
    json.dumps(s.to_dict())                                               # --summary-json writes it


def test_isolated_without_ingress():
    objs = manifests()[:2] + [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "shop"},
         "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 8080}]}]}},
    ]
    dp = DataPlane.build(expand_workloads(cluster_from_objects(objs)))
    iso = [dp.tables.pod_names[i] for i in isolated_without_ingress(dp.policy)]
    assert sorted(iso) == ["shop/db-0", "shop/db-1"]


def test_explain_agrees_with_the_verdict():
    from test_policy import base_objects, policy

    spec = {"podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}], "ports": [{"port": "http"}]}]}
    eg = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
          "egress": [{"to": [{"ipBlock": {"cidr": "10.244.1.0/24"}}]}]}
    dp = DataPlane.build(cluster_from_objects(base_objects() + [policy("shop", "api-in", spec),
                                                                 policy("shop", "web-out", eg)]))
    cases = {("ops/mon", "shop/api", 9090): "allowed by shop/api-in ingress[0] (from[0] namespaceSelector {team=b}",
             ("ops/mon", "shop/api", 9091): "denied (policy-ingress)",
             ("shop/web", "shop/db", 5432): "allowed by shop/web-out egress[0] (to[0] ipBlock 10.244.1.0/24",
             ("shop/web", "ops/mon", 8080): "denied (policy-egress)",
             ("shop/web", "shop/api", 9090): "isolated for ingress"}
    for (src, dst, port), text in cases.items():
        ex = explain(dp, src, dst, port)
        body = ex.render()
        assert text in body, body
        assert ("denied (policy-" in body) == (ex.result["verdict"] == "denied"), body
