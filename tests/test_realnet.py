"""Real clusters as they are (#11 items 1, 2, 3, 5, 8, 9; #19 item 4): kernels against the slow twins.

Each rule is checked on hand-written objects shaped like the real dumps (a namespace dump
without Nodes, an EKS VPC-native cluster, a kind/minikube control plane, an ingress
controller with hostPorts, an ip-masq-agent ConfigMap), by the kernels and by
``tests/naive/pipeline.py`` (which must agree on every column), and the routing rules
through ``fastpath explain`` too. Then random clusters with all of these mixed in, the
``reason`` column and summary, and clusters without pods.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import cluster_from_objects, load_cluster
from fastpath.cluster.model import Cluster, ContainerPort, Masquerade, Pod
from fastpath.codes import REASONS
from fastpath.explain import explain
from fastpath.pipeline import RESULT_SCHEMA
from fastpath.replay import replay
from naive.pipeline import ip, naive_resolve, random_cluster, random_flows
from naive.services import NaiveServices
from test_pipeline import COLUMNS, assert_same, kernel_rows

TCP, UDP = 6, 17


# --------------------------------------------------------------------------- objects as kubectl prints them

def node(name, internal, cidr=None, external=None, labels=None):
    addrs = [{"type": "InternalIP", "address": internal}] + ([{"type": "ExternalIP", "address": external}]
                                                            if external else [])
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "spec": spec, "status": {"addresses": addrs}}


def pod(ns, name, node_name, addr, ports=(), host=False, labels=None):
    """``ports``: (containerPort, protocol, hostPort or None) triples."""
    cports = [{"containerPort": p, "protocol": pr, **({"hostPort": hp} if hp else {})} for p, pr, hp in ports]
    spec = {"nodeName": node_name, "containers": [{"name": "c", "ports": cports}]}
    if host:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels or {}},
            "spec": spec, "status": {"podIP": addr, "podIPs": [{"ip": addr}],
                                     "conditions": [{"type": "Ready", "status": "True"}]}}


def service(ns, name, cluster_ip, ports, selector=None, svc_type="ClusterIP"):
    """``ports``: (name, port, targetPort, nodePort or None)."""
    sp = [{"name": n, "port": p, "targetPort": t, "protocol": "TCP", **({"nodePort": np_} if np_ else {})}
          for n, p, t, np_ in ports]
    spec = {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": svc_type, "ports": sp}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def slice_(ns, name, svc, addresses, ports, node_name=None, target=None):
    """An EndpointSlice: ``ports`` (name, port); conditions left out, as kube-proxy reads them (true)."""
    ep = {"addresses": addresses}
    if node_name:
        ep["nodeName"] = node_name
    if target:
        ep["targetRef"] = {"kind": "Pod", "namespace": ns, "name": target}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [ep], "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]}


def flow(src, dst, port, proto=TCP):
    return {"src_ip": ip(src), "dst_ip": ip(dst), "src_port": 40000, "dst_port": port, "proto": proto}


def both(cluster: Cluster, flows: list[dict], non_masquerade=None, **opts) -> list[dict]:
    """Kernel rows, after checking that the twin gives the same on every column."""
    dp = compile_cluster(cluster, non_masquerade_cidrs=non_masquerade, **opts)
    got = kernel_rows(dp, flows)
    want = naive_resolve(cluster, flows, NaiveServices(cluster).stage, non_masquerade=non_masquerade)
    assert_same(cluster, flows, got, want)
    return got


def summary(row: dict) -> tuple:
    return row["verdict"], row["reason"], row["path"], row["dst_node"], row["dst_pod"], row["hops"]


# --------------------------------------------------------------------------- item 9: the reason column

def test_reason_column_follows_verdict():
    """``reason`` is right after ``verdict``; null exactly where delivered or egress; from the fixed list."""
    assert RESULT_SCHEMA.names[:3] == ["verdict", "reason", "path"]
    assert RESULT_SCHEMA.field("reason").type == pa.dictionary(pa.int8(), pa.string())
    cluster, flows = _mixed_case(3, 400)
    rows = both(cluster, flows)
    seen = set()
    for r in rows:
        assert (r["reason"] is None) == (r["verdict"] in ("delivered", "egress")), r
        assert r["reason"] is None or r["reason"] in REASONS[1:]
        seen.add((r["verdict"], r["reason"]))
    assert {("refused", "no-listener"), ("dropped", "no-such-pod"), ("dropped", "node-not-in-input"),
            ("dropped", "martian"), ("dropped", "no-route")} <= seen


def test_summary_counts_reasons(data_dir, tmp_path):
    """Replay's summary (and ``--summary-json``) counts flows by reason; they add up per verdict."""
    from fastpath.cli import main

    cluster = load_cluster(data_dir / "small-list.json")
    rng = random.Random(4)
    svc = NaiveServices(cluster)
    flows = [flow("10.244.0.5", d, p) for d, p in (("10.96.33.7", 81), ("10.244.2.77", 80), ("127.0.0.1", 1),
                                                      ("1.1.1.1", 443), ("10.244.1.7", 8080))] * 3
    flows += [{**flow("198.51.100.7", "192.168.1.11", 30443), "src_port": rng.randrange(1024, 65535)}]
    trace = tmp_path / "t.arrow"
    cols = {k: pa.array([f[k] for f in flows], t) for k, t in (("src_ip", pa.uint32()), ("dst_ip", pa.uint32()),
            ("src_port", pa.uint16()), ("dst_port", pa.uint16()), ("proto", pa.uint8()))}
    with pa.OSFile(str(trace), "wb") as sink, pa.ipc.new_file(sink, pa.schema(list(
            (k, v.type) for k, v in cols.items()))) as w:
        w.write_batch(pa.record_batch(cols))
    s = replay(cluster, trace, tmp_path / "r.arrow", progress=False)
    want: dict = {}
    for r in naive_resolve(cluster, flows, svc.stage):
        if r["reason"]:
            want[r["reason"]] = want.get(r["reason"], 0) + 1
    assert {k: v for k, v in s.by_reason.items() if v} == want
    assert want == {"port-not-served": 3, "no-such-pod": 3, "no-listener": 3, "no-local-endpoint": 1}
    assert sum(s.by_reason.values()) == s.flows - s.by_verdict["delivered"] - s.by_verdict["egress"]
    out = tmp_path / "s.json"
    assert main(["replay", str(data_dir / "small-list.json"), str(trace), "--quiet", "--no-cache",
                 "--summary-json", str(out)]) == 0
    assert {k: v for k, v in json.loads(out.read_text())["by_reason"].items() if v} == want


# --------------------------------------------------------------------------- item 1: nodes not in the input

def namespace_dump() -> list[dict]:
    """``kubectl get all -n shop -o json`` plus one pod of kube-system: no Node objects at all."""
    return [
        pod("shop", "web-1", "minikube", "10.244.0.5", [(8080, "TCP", None)], labels={"app": "web"}),
        pod("shop", "web-2", "minikube", "10.244.0.6", [(8080, "TCP", None)], labels={"app": "web"}),
        service("shop", "web", "10.96.10.10", [("http", 80, 8080, None)], selector={"app": "web"}),
    ]


def test_pods_on_nodes_not_in_input():
    """A namespace dump loads; flows to its pods (directly or through their service) are dropped."""
    cluster = cluster_from_objects(namespace_dump())
    assert not cluster.nodes and cluster.missing_nodes == {"minikube": 2}
    rows = both(cluster, [flow("198.51.100.7", "10.244.0.5", 8080), flow("198.51.100.7", "10.96.10.10", 80),
                          flow("198.51.100.7", "10.244.0.99", 8080)])
    assert summary(rows[0]) == ("dropped", "node-not-in-input", "none", None, None, 0)
    assert rows[1]["verdict"] == "dropped" and rows[1]["service"] == "shop/web:http"   # no node receives it
    assert summary(rows[2]) == ("dropped", "no-route", "none", None, None, 0)
    ex = explain(compile_cluster(cluster), "198.51.100.7", "10.244.0.5", 8080)
    assert ex.result["reason"] == "node-not-in-input" and "not in the input" in ex.render()


def test_pods_on_a_missing_node_beside_real_ones():
    """A support bundle missing one Node: pods there are unreachable, the others work; services DNAT to them."""
    objs = [node("n1", "192.168.1.10", "10.244.0.0/24"),
            pod("shop", "web-1", "n1", "10.244.0.5", [(8080, "TCP", None)], labels={"app": "web"}),
            pod("shop", "web-2", "gone", "10.244.1.6", [(8080, "TCP", None)], labels={"app": "api"}),
            service("shop", "api", "10.96.10.11", [("http", 80, 8080, None)], selector={"app": "api"})]
    cluster = cluster_from_objects(objs)
    rows = both(cluster, [flow("10.244.0.5", "10.244.1.6", 8080), flow("10.244.0.5", "10.96.10.11", 80),
                          flow("10.244.1.6", "10.244.0.5", 8080), flow("10.244.0.5", "10.244.1.7", 80)])
    assert summary(rows[0]) == ("dropped", "node-not-in-input", "none", None, None, 2)
    assert summary(rows[1]) == ("dropped", "node-not-in-input", "none", None, None, 2)
    assert rows[1]["dnat_ip"] == ip("10.244.1.6")
    assert rows[2]["verdict"] == "delivered" and rows[2]["src_pod"] is None     # its sender is outside
    assert rows[3]["verdict"] == "egress"


# --------------------------------------------------------------------------- item 2: VPC-native

def eks_objects() -> list[dict]:
    """EKS, AWS VPC CNI: no podCIDR, pods in the nodes' subnet, aws-node hostNetwork on each node."""
    return [
        node("ip-10-0-10-170", "10.0.10.170"), node("ip-10-0-10-150", "10.0.10.150"),
        pod("app", "api-1", "ip-10-0-10-170", "10.0.10.180", [(8080, "TCP", None)]),
        pod("app", "api-2", "ip-10-0-10-150", "10.0.10.20", [(8080, "TCP", None)]),      # block .0/26: B's
        pod("kube-system", "aws-node-a", "ip-10-0-10-170", "10.0.10.170", [(61678, "TCP", None)], host=True),
        pod("kube-system", "aws-node-b", "ip-10-0-10-150", "10.0.10.150", [(61678, "TCP", None)], host=True),
        service("kube-system", "metrics", "172.20.0.50", [("m", 61678, 61678, None)]),
        slice_("kube-system", "metrics-x", "metrics", ["10.0.10.150"], [("m", 61678)], "ip-10-0-10-150",
               "aws-node-b"),
    ]


def test_vpc_native_node_addresses_win():
    """The issue's case: 10.0.10.128/26 is routed to A (its pod .180), but B's own .150 is B's."""
    cluster = cluster_from_objects(eks_objects())
    a, b = "ip-10-0-10-170", "ip-10-0-10-150"
    rows = both(cluster, [flow("10.0.10.180", "10.0.10.150", 61678), flow("10.0.10.180", "10.0.10.170", 61678),
                          flow("10.0.10.180", "172.20.0.50", 61678), flow("198.51.100.7", "10.0.10.150", 61678),
                          flow("10.0.10.180", "10.0.10.20", 8080), flow("10.0.10.150", "10.0.10.180", 8080),
                          flow("10.0.10.180", "10.0.10.150", 22)])
    assert summary(rows[0]) == ("delivered", None, "routed", b, "kube-system/aws-node-b", 4)
    assert summary(rows[1]) == ("delivered", None, "bridge", a, "kube-system/aws-node-a", 2)
    assert summary(rows[2])[:5] == ("delivered", None, "routed", b, "kube-system/aws-node-b")  # a node-IP backend
    assert summary(rows[3]) == ("delivered", None, "external", b, "kube-system/aws-node-b", 1)
    assert summary(rows[4]) == ("delivered", None, "routed", b, "app/api-2", 6)
    assert rows[5]["src_pod"] is None and rows[5]["src_node"] == b and rows[5]["verdict"] == "delivered"
    assert summary(rows[6]) == ("refused", "no-listener", "routed", b, None, 4)
    dp = compile_cluster(cluster)
    for dst, node_name in (("10.0.10.150", b), ("10.0.10.170", a)):
        ex = explain(dp, "10.0.10.180", dst, 61678)
        assert ex.result["verdict"] == "delivered" and ex.result["dst_node"] == node_name
        route = [t for s, t in ex.steps if s == "route"]
        assert route and f"node {node_name}'s own address" in route[0]
    assert "wins over 10.0.10.128/26" in [t for s, t in explain(dp, "10.0.10.180", "10.0.10.150", 61678).steps
                                          if s == "route"][0]     # A's block covers B's address
    ex = explain(dp, "10.0.10.180", "172.20.0.50", 61678)
    assert ex.result["verdict"] == "delivered" and ex.result["dst_node"] == b


# --------------------------------------------------------------------------- item 3: what listens

def kind_objects() -> list[dict]:
    """kind: the API server on the control-plane node's host (declared nowhere), a pod serving an undeclared port."""
    return [
        node("kind-control-plane", "172.18.0.2", "10.244.0.0/24"), node("kind-worker", "172.18.0.3", "10.244.1.0/24"),
        pod("kube-system", "kube-apiserver-kind-control-plane", "kind-control-plane", "172.18.0.2", host=True),
        pod("demo", "echo-1", "kind-worker", "10.244.1.5", [], labels={"app": "echo"}),
        pod("demo", "client", "kind-worker", "10.244.1.9", []),
        service("default", "kubernetes", "10.96.0.1", [("https", 443, 6443, None)]),
        slice_("default", "kubernetes", "kubernetes", ["172.18.0.2"], [("https", 6443)]),
        service("demo", "echo", "10.96.5.5", [("http", 80, 5678, None)], selector={"app": "echo"}),
    ]


def test_what_listens():
    """kubernetes.default:443 -> 6443 on the control plane is delivered; an EndpointSlice port is listened on."""
    cluster = cluster_from_objects(kind_objects())
    rows = both(cluster, [flow("10.244.1.9", "10.96.0.1", 443), flow("10.244.1.9", "172.18.0.2", 6443),
                          flow("10.244.1.9", "10.96.5.5", 80), flow("10.244.1.9", "10.244.1.5", 5678),
                          flow("10.244.1.9", "10.244.1.5", 5679), flow("172.18.0.2", "127.0.0.1", 6443),
                          flow("10.244.1.9", "172.18.0.2", 6444)])
    cp = "kind-control-plane"
    assert summary(rows[0]) == ("delivered", None, "routed", cp, None, 4)
    assert rows[0]["dnat_ip"] == ip("172.18.0.2") and rows[0]["dnat_port"] == 6443
    assert summary(rows[1]) == ("delivered", None, "routed", cp, None, 4)
    assert summary(rows[2])[:5] == ("delivered", None, "bridge", "kind-worker", "demo/echo-1")
    assert summary(rows[3])[:2] == ("delivered", None)
    assert summary(rows[4])[:2] == ("refused", "no-listener")
    assert summary(rows[5]) == ("delivered", None, "loopback", cp, None, 0)
    assert summary(rows[6])[:2] == ("refused", "no-listener")
    ex = explain(compile_cluster(cluster), "demo/client", "10.96.0.1", 443)
    assert ex.result["verdict"] == "delivered"
    assert "EndpointSlice" in [t for s, t in ex.steps if s == "listen"][0]


# --------------------------------------------------------------------------- item 5: hostPort

def ingress_objects() -> list[dict]:
    """minikube's ingress addon: the controller's containerPorts 80/443 with hostPorts 80/443, and a
    NodePort service that a hostPort on 30080 shadows."""
    return [
        node("minikube", "192.168.49.2", "10.244.0.0/24", external="203.0.113.9"),
        node("m02", "192.168.49.3", "10.244.1.0/24"),
        pod("ingress-nginx", "controller", "minikube", "10.244.0.7",
            [(80, "TCP", 80), (443, "TCP", 443), (8080, "TCP", 30080)], labels={"app": "ingress"}),
        pod("demo", "client", "m02", "10.244.1.4", []),
        service("ingress-nginx", "np", "10.96.7.7", [("http", 80, 8080, 30080)], selector={"app": "ingress"},
                svc_type="NodePort"),
    ]


def test_host_port():
    """Reachable at every address of its node, from pods and from outside, before NodePorts."""
    cluster = cluster_from_objects(ingress_objects())
    assert cluster.pods[0].ports[0].host_port == 80
    rows = both(cluster, [flow("198.51.100.7", "192.168.49.2", 80), flow("198.51.100.7", "203.0.113.9", 443),
                          flow("10.244.1.4", "192.168.49.2", 80), flow("10.244.1.4", "192.168.49.3", 80),
                          flow("198.51.100.7", "192.168.49.2", 30080), flow("198.51.100.7", "192.168.49.3", 30080),
                          flow("192.168.49.2", "192.168.49.2", 443)])
    ctl = "ingress-nginx/controller"
    assert summary(rows[0]) == ("delivered", None, "external", "minikube", ctl, 3)
    assert (rows[0]["dnat_ip"], rows[0]["dnat_port"], rows[0]["service"]) == (ip("10.244.0.7"), 80, None)
    assert summary(rows[1]) == ("delivered", None, "external", "minikube", ctl, 3)
    assert summary(rows[2]) == ("delivered", None, "routed", "minikube", ctl, 6)
    assert summary(rows[3]) == ("refused", "no-listener", "bridge", "m02", None, 2)      # m02 has no hostPort 80
    assert (rows[4]["dnat_port"], rows[4]["service"]) == (8080, None)                   # portmap first
    assert (rows[5]["service"], rows[5]["verdict"]) == ("ingress-nginx/np:http", "delivered")  # NodePort elsewhere
    assert rows[6]["verdict"] == "delivered" and rows[6]["dst_pod"] == ctl
    ex = explain(compile_cluster(cluster), "198.51.100.7", "192.168.49.2", 80)
    steps = [s for s, _ in ex.steps]
    assert "portmap" in steps and steps.index("portmap") < steps.index("route")
    assert "10.244.0.7:80" in dict(ex.steps)["portmap"] and ex.result["verdict"] == "delivered"


# --------------------------------------------------------------------------- item 8: masquerade

def test_masquerade_as_ip_masq_agent():
    """nonMasqueradeCIDRs keep the pod IP (link-local too unless masqLinkLocal); default unchanged."""
    objs = [node("n1", "192.168.1.10", "10.244.0.0/24"), pod("a", "p", "n1", "10.244.0.5"),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "kube-system", "name": "ip-masq-agent"},
             "data": {"config": "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 172.16.0.0/12\nmasqLinkLocal: false\n"}}]
    flows = [flow("10.244.0.5", "10.1.2.3", 80), flow("10.244.0.5", "8.8.8.8", 53, UDP),
             flow("10.244.0.5", "169.254.169.254", 80), flow("10.244.0.5", "172.20.0.1", 443),
             flow("192.168.1.10", "8.8.8.8", 53)]
    pod_ip, node_ip = ip("10.244.0.5"), ip("192.168.1.10")
    with_cm = cluster_from_objects(objs)
    assert with_cm.masquerade is not None
    assert [r["snat_ip"] for r in both(with_cm, flows)] == [pod_ip, node_ip, pod_ip, pod_ip, node_ip]
    plain = cluster_from_objects(objs[:2])
    assert [r["snat_ip"] for r in both(plain, flows)] == [node_ip, node_ip, node_ip, node_ip, node_ip]
    cli = both(plain, flows, non_masquerade=["8.8.8.0/24"])
    assert [r["snat_ip"] for r in cli] == [node_ip, pod_ip, pod_ip, node_ip, node_ip]
    assert all(r["verdict"] == "egress" for r in cli)
    ex = explain(compile_cluster(with_cm), "10.244.0.5", "10.1.2.3", 80)
    assert "nonMasqueradeCIDRs" in dict(ex.steps)["snat"]


# --------------------------------------------------------------------------- random clusters, every rule mixed

def _mixed_case(seed: int, n: int):
    """A random cluster (tests/naive/pipeline.py) plus pods on a missing node, a pod at a node's
    address, hostPorts, EndpointSlices naming undeclared ports and node addresses, ip-masq-agent."""
    from fastpath.cluster.model import Endpoint, EndpointSlice, EndpointSlicePort

    rng = np.random.default_rng(seed)
    base = random_cluster(rng)
    pods = list(base.pods)
    pods.append(Pod("lost", "o1", "gone", False, ip("10.250.0.5"), True, False, ()))
    pods.append(Pod("lost", "o2", "gone", False, ip("10.244.0.77"), True, False, ()))       # inside node-0's CIDR
    pods.append(Pod("lost", "o3", "gone", True, ip("192.168.0.99"), True, False, ()))       # hostNetwork there
    n0 = base.nodes[0]
    pods.append(Pod("odd", "at-node-ip", n0.name, False, n0.internal_ip, True, False,
                    (ContainerPort("c", 80, TCP, None),)))
    bridged = [p for p in pods if p.ip is not None and p.node == n0.name and not p.host_network
               and p.ip != n0.internal_ip]
    if bridged:
        p = bridged[0]
        hp = ContainerPort("c", 8080, TCP, None, host_port=80)
        pods[pods.index(p)] = Pod(p.namespace, p.name, p.node, False, p.ip, True, False, p.ports + (hp,))
    eps = [Endpoint((n0.internal_ip,), True, True, False, n0.name, None, (), None),
           Endpoint((ip("10.250.0.5"),), True, True, False, "gone", None, (), None)]
    eps += [Endpoint((p.ip,), True, bool(rng.random() < 0.7), False, p.node, None, (), p.key)
            for p in pods[:6] if p.ip is not None]
    slices = [EndpointSlice("default", "s1", "svc", (EndpointSlicePort("a", 9000, TCP), EndpointSlicePort("b", 53, UDP)),
                            tuple(eps))]
    cluster = Cluster(nodes=base.nodes, pods=pods, services=[], slices=slices)
    if seed % 2:
        cluster.masquerade = Masquerade(((ip("8.8.0.0"), 17),), bool(seed % 4 == 1))
    flows = random_flows(cluster, rng, n)
    extra = [ip("10.250.0.5"), ip("10.244.0.77"), ip("192.168.0.99"), n0.internal_ip, ip("169.254.1.1")]
    for f in flows[::3]:
        f["dst_ip"] = extra[int(rng.integers(len(extra)))]
        f["dst_port"] = int(rng.choice([80, 9000, 53, 8080]))
    return cluster, flows


@pytest.mark.parametrize("seed", range(8))
def test_random_mixed_clusters(seed):
    cluster, flows = _mixed_case(seed, 300)
    both(cluster, flows)


# --------------------------------------------------------------------------- #19 item 4: no pods

@pytest.mark.parametrize("text,name", [
    (json.dumps({"apiVersion": "v1", "kind": "List", "items": [node("n1", "192.168.1.10", "10.244.0.0/24")]}),
     "nodes.json"),
    (json.dumps({"apiVersion": "v1", "kind": "List", "items": []}), "empty.json"),
    ("---\n---\n", "empty.yaml"),
])
def test_cluster_without_pods_replays(tmp_path, text, name):
    """A nodes-only List, an empty List, empty YAML documents: every flow gets a verdict."""
    path = tmp_path / name
    path.write_text(text)
    trace = tmp_path / "t.arrow"
    batch = pa.record_batch({
        "src_ip": pa.array([ip("10.244.0.5"), ip("192.168.1.10"), ip("198.51.100.7")], pa.uint32()),
        "dst_ip": pa.array([None, ip("8.8.8.8"), ip("127.0.0.1")], pa.uint32()),
        "dst_name": pa.array(["kubernetes.default", None, None]),
        "src_port": pa.array([1, 2, 3], pa.uint16()), "dst_port": pa.array([443, 53, 80], pa.uint16()),
        "proto": pa.array([6, 17, 6], pa.uint8())})
    with pa.OSFile(str(trace), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    s = replay(path, trace, tmp_path / "r.arrow", progress=False, return_table=True)
    rows = s.table.to_pylist()
    assert s.flows == 3 and all(r["verdict"] for r in rows)
    assert [r["reason"] for r in rows][0::2] == ["no-dns-answer", "martian"]
    assert [c for c in COLUMNS if c not in s.table.column_names] == []
