"""Loading Kubernetes objects: formats, field semantics, and one-line errors for bad input."""
from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from fastpath.cluster.load import cluster_from_objects, load_cluster
from fastpath.cluster.model import ContainerPort, ServicePort
from fastpath.errors import FastpathError

DATA = Path(__file__).parent / "data"


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


@pytest.fixture()
def small() -> dict:
    return json.loads((DATA / "small-list.json").read_text())


def find(doc: dict, kind: str, name: str) -> dict:
    return next(o for o in doc["items"] if o["kind"] == kind and o["metadata"]["name"] == name)


def error_of(doc, tmp_path: Path, name: str = "cluster.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    with pytest.raises(FastpathError) as err:
        load_cluster(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    return msg


# --------------------------------------------------------------------------- formats

def test_small_list_fields():
    c = load_cluster(DATA / "small-list.json")
    assert (len(c.nodes), len(c.pods), len(c.services), len(c.slices)) == (3, 11, 8, 3)
    assert c.warnings == []
    nodes = {n.name: n for n in c.nodes}
    a = nodes["node-a"]
    assert (a.internal_ip, a.external_ip, a.pod_cidrs, a.zone) == (ip("192.168.1.10"), ip("203.0.113.10"),
                                                                   ((ip("10.244.0.0"), 24),), "eu-west-1a")
    # IPv6 podCIDR and InternalIP of the dual-stack node are left out
    assert nodes["node-c"].pod_cidrs == ((ip("10.244.2.0"), 24),)
    assert nodes["node-c"].internal_ip == ip("192.168.1.12") and nodes["node-c"].external_ip is None
    pods = {p.name: p for p in c.pods}
    web = pods["web-7d9f8b6c5d-x2k4p"]
    assert (web.namespace, web.node, web.ip, web.ready, web.terminating, web.host_network) == \
        ("shop", "node-a", ip("10.244.0.5"), True, False, False)
    assert ContainerPort("envoy", 15001, 6, "envoy-outbound") in web.ports and len(web.ports) == 4
    assert web.labels["app"] == "web"
    assert pods["web-7d9f8b6c5d-r4vnw"].ready is False
    term = pods["cart-5c6d7f9b8-vw7xz"]
    assert term.terminating and term.ready
    pending = pods["cart-5c6d7f9b8-hh5nt"]
    assert pending.node is None and pending.ip is None and not pending.ready
    proxy = pods["kube-proxy-8wd5t"]
    assert proxy.host_network and proxy.ip == ip("192.168.1.10")
    dns_ports = {(p.port, p.proto, p.name) for p in pods["coredns-7c65d6cfc9-4hzbq"].ports}
    assert dns_ports == {(53, 17, "dns"), (53, 6, "dns-tcp"), (9153, 6, "metrics")}

    svcs = {s.key: s for s in c.services}
    k8s = svcs["default/kubernetes"]
    assert (k8s.type, k8s.cluster_ips, k8s.headless, k8s.selector, k8s.session_affinity, k8s.affinity_timeout,
            k8s.external_policy, k8s.internal_policy, k8s.traffic_distribution) == \
        ("ClusterIP", (ip("10.96.0.1"),), False, None, False, 10800, "Cluster", "Cluster", None)
    assert k8s.ports == (ServicePort("https", 443, 6, 6443, None),)
    assert svcs["shop/cart"].ports == (ServicePort(None, 80, 6, "http", None),)
    front = svcs["shop/storefront"]
    assert (front.type, front.lb_ips, front.session_affinity, front.affinity_timeout, front.traffic_distribution) == \
        ("LoadBalancer", (ip("198.51.100.20"),), True, 600, "PreferClose")
    assert front.ports[0].node_port == 31080
    db = svcs["shop/db"]
    assert db.headless and db.cluster_ips == ()
    legacy = svcs["shop/legacy-db"]
    assert (legacy.type, legacy.external_name, legacy.cluster_ips, legacy.ports) == \
        ("ExternalName", "db.legacy.example.com", (), ())
    api = svcs["payments/api"]
    assert (api.type, api.external_policy, api.external_ips) == ("NodePort", "Local", (ip("203.0.113.50"),))
    assert [(p.port, p.proto, p.target_port, p.node_port) for p in api.ports] == \
        [(443, 6, "https", 30443), (8125, 17, "statsd", 30125)]

    slices = {s.service: s for s in c.slices}
    ep = slices["kubernetes"].endpoints[0]
    # conditions left out: ready nil means ready, serving nil means as ready, terminating nil means false
    assert (ep.addresses, ep.ready, ep.serving, ep.terminating, ep.target_pod, ep.node) == \
        ((ip("192.168.1.10"),), True, True, False, None, None)
    web_eps = slices["web"].endpoints
    assert [e.target_pod for e in web_eps] == ["shop/web-7d9f8b6c5d-x2k4p", "shop/web-7d9f8b6c5d-m8q7z",
                                               "shop/web-7d9f8b6c5d-r4vnw"]
    assert [(e.ready, e.serving, e.zone) for e in web_eps] == \
        [(True, True, "eu-west-1a"), (True, True, "eu-west-1a"), (False, False, "eu-west-1b")]
    assert [(p.name, p.port, p.proto) for p in slices["kube-dns"].ports] == \
        [("dns", 53, 17), ("dns-tcp", 53, 6), ("metrics", 9153, 6)]


def test_yaml_stream():
    c = load_cluster(DATA / "small-stream.yaml")
    assert (len(c.nodes), len(c.pods), len(c.services), len(c.slices)) == (2, 3, 2, 0)
    pods = {p.name: p for p in c.pods}
    v1 = pods["echo-6c9f7d8b5-2xv8q"]
    # a native sidecar (init container with restartPolicy Always) listens; protocol defaults to TCP
    assert {(p.container, p.port, p.proto) for p in v1.ports} == {("echo", 8080, 6), ("proxy", 15001, 6)}
    assert pods["echo-7f4b9c6d2-k5m3n"].ip == ip("10.244.0.7")        # first IPv4 of podIPs
    assert pods["migrate-x7k2p"].ip is None                           # completed: IP released (and reused)
    svcs = {s.name: s for s in c.services}
    assert svcs["echo"].cluster_ips == (ip("10.96.140.3"),) and svcs["echo"].internal_policy == "Local"
    assert svcs["echo-v1"].ports[0].target_port == 8080               # "8080" is a number
    assert svcs["echo-v1"].type == "ClusterIP"
    warnings = "\n".join(c.warnings)
    # the kube-proxy ConfigMap is read (no clusterCIDR in it); the Job is a workload (H4's reader)
    assert c.cluster_cidr is None and c.skipped_kinds == {"ConfigMap": 1}
    assert "skipped 1 ConfigMap object" in warnings
    assert "addressType IPv6 (e.g. demo/echo-v6-abcde)" in warnings
    assert "1 completed pod" in warnings


def test_calico_noted_once():
    c = load_cluster(DATA / "calico-list.json")
    assert len(c.pods) == 6 and c.warnings == [
        "4 pod IPs outside every node's pod CIDR (e.g. Pod orders/api-84d5b7c9f6-2kq8d 192.168.33.3): "
        "Calico-style or VPC-native addressing (Calico IPAM blocks, the AWS VPC CNI), routed by block or host routes"]


def test_pod_in_another_nodes_cidr_noted(small, tmp_path):
    find(small, "Pod", "db-0")["status"]["podIP"] = "10.244.0.77"       # on node-c, in node-a's CIDR
    path = tmp_path / "c.json"
    path.write_text(json.dumps(small))
    c = load_cluster(path)
    assert len(c.warnings) == 1 and "inside another node's pod CIDR" in c.warnings[0]
    assert "shop/db-0 10.244.0.77 on node-c" in c.warnings[0]


def test_directory_merges_sorted_files(small, tmp_path):
    items = small["items"]
    nodes = [o for o in items if o["kind"] == "Node"]
    pods = [o for o in items if o["kind"] == "Pod"]
    rest = [o for o in items if o["kind"] not in ("Node", "Pod")]
    (tmp_path / "01-nodes.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    (tmp_path / "02-pods.yaml").write_text(yaml.safe_dump_all(pods))
    (tmp_path / "03-rest.yml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": rest}))
    (tmp_path / "README.md").write_text("not a cluster file")
    c = load_cluster(tmp_path)
    ref = load_cluster(DATA / "small-list.json")
    assert (c.nodes, c.pods, c.services, c.slices) == (ref.nodes, ref.pods, ref.services, ref.slices)
    assert [p.labels for p in c.pods] == [p.labels for p in ref.pods]


def test_single_object_array_and_typed_list(tmp_path):
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.0.0/24"}}
    (tmp_path / "node.json").write_text(json.dumps(node))
    assert [n.name for n in load_cluster(tmp_path / "node.json").nodes] == ["n1"]
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"podIP": "10.244.0.3"}}
    # an API PodList leaves kind out of its items; a bare array is read as objects
    doc = [node, {"apiVersion": "v1", "kind": "PodList", "items": [pod]}]
    (tmp_path / "objs").write_text(json.dumps(doc))                     # no suffix: sniffed as JSON
    c = load_cluster(tmp_path / "objs")
    assert [(p.namespace, p.name, p.ip) for p in c.pods] == [("default", "p", ip("10.244.0.3"))]


def test_cluster_from_objects_names_source(small):
    c = cluster_from_objects(small["items"])
    assert len(c.pods) == 11
    bad = copy.deepcopy(small)
    find(bad, "Pod", "db-0")["status"]["podIP"] = "10.244.2"
    with pytest.raises(FastpathError, match=r"^snapshot: Pod shop/db-0: .*'10\.244\.2'"):
        cluster_from_objects(bad["items"], source="snapshot")


def test_unknown_kinds_once_and_unknown_fields_ignored(small, tmp_path):
    ref = cluster_from_objects(small["items"])
    doc = copy.deepcopy(small)
    for i in range(3):
        doc["items"].append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm{i}"}})
    doc["items"].append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "web"}})
    for o in doc["items"]:
        o["metadata"]["futureField"] = {"x": 1}
        o.setdefault("spec", {})["notModelled"] = [1, 2]
        o["status"] = {**(o.get("status") or {}), "somethingNew": "yes"}
        for ctr in (o.get("spec") or {}).get("containers", []):
            ctr["securityContext"] = {"runAsNonRoot": True}
            for p in ctr.get("ports", []):
                p["hostIP"] = "0.0.0.0"
        for e in o.get("endpoints") or []:
            e["deprecatedTopology"] = {"a": "b"}
    c = cluster_from_objects(doc["items"])
    assert (c.nodes, c.pods, c.services, c.slices) == (ref.nodes, ref.pods, ref.services, ref.slices)
    assert sorted(c.warnings) == ["skipped 1 Widget object: kind not used by fastpath",
                                  "skipped 3 ConfigMap objects: kind not used by fastpath"]
    assert c.skipped_kinds == {"ConfigMap": 3, "Widget": 1}


def test_slice_port_without_number_skipped(small):
    doc = copy.deepcopy(small)
    find(doc, "EndpointSlice", "web-5xq9c")["ports"].append({"name": "all", "protocol": "TCP"})
    c = cluster_from_objects(doc["items"])
    web = next(s for s in c.slices if s.service == "web")
    assert [p.name for p in web.ports] == ["http"]
    assert c.warnings == ["skipped 1 EndpointSlice port without a port number (e.g. in shop/web-5xq9c): "
                          "kube-proxy ignores them"]


def test_pods_without_ip_or_node_kept(small):
    doc = copy.deepcopy(small)
    p = find(doc, "Pod", "db-0")
    del p["status"]["podIP"]
    c = cluster_from_objects(doc["items"])
    db = next(x for x in c.pods if x.name == "db-0")
    assert db.ip is None and db.node == "node-c"


def test_host_network_pods_share_the_node_ip(small):
    doc = copy.deepcopy(small)
    extra = copy.deepcopy(find(doc, "Pod", "kube-proxy-8wd5t"))
    extra["metadata"]["name"] = "kube-apiserver-node-a"
    extra["spec"]["containers"][0]["ports"] = [{"containerPort": 6443}]
    doc["items"].append(extra)
    c = cluster_from_objects(doc["items"])
    assert sum(p.ip == ip("192.168.1.10") for p in c.pods) == 2


# --------------------------------------------------------------------------- file errors

def test_truncated_json(small, tmp_path):
    text = json.dumps(small, indent=2)
    path = tmp_path / "cluster.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(FastpathError, match=r"cluster\.json: line \d+ column \d+: bad JSON .*truncated"):
        load_cluster(path)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {a: b\n---\n")
    with pytest.raises(FastpathError, match=r"c\.yaml: line \d+ column \d+: bad YAML"):
        load_cluster(path)


@pytest.mark.parametrize("content, expected", [
    (b"", "file is empty"),
    (b"  \n", "file is empty"),
    (b"{\x80}", "not UTF-8"),
    (b"\xff\xfe\x00\xd8", "not UTF-16"),
    (b'{"apiVersion": "v1", "metadata": {"name": "x"}}', "object x has no kind"),
    (b'["just a string"]', "expected Kubernetes objects"),
    (b'{"kind": "List", "items": {"a": 1}}', "items is not a list"),
    (b'{"kind": "Pod", "metadata": {}}', "Pod without metadata.name"),
])
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(FastpathError, match=expected) as err:
        load_cluster(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, content", [
    # a hand-edited kubectl List: a bare "-" (null) between two items
    ("c.yaml", b"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n-\n"
               b"- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n"),
    ("c.json", b'{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Namespace", '
               b'"metadata": {"name": "a"}}, null, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}]}'),
])
def test_null_list_item_is_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FastpathError) as err:
        load_cluster(path)
    assert str(err.value) == f"{path}: List items[1]: expected a Kubernetes object (a mapping), found null"


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FastpathError, match="no such (cluster )?file"):
        load_cluster(tmp_path / "nope.json")
    with pytest.raises(FastpathError, match="holds no .json"):
        load_cluster(tmp_path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "c.json"
    path.mkdir()
    with pytest.raises(FastpathError, match="holds no"):
        load_cluster(path)                                            # a directory named like a file
    from fastpath.cluster.load import read_objects
    with pytest.raises(FastpathError, match=r"c\.json: (cannot read|the cluster is a directory)"):
        read_objects(path)


# --------------------------------------------------------------------------- object errors

def _set(kind, name, fn):
    def mutate(doc):
        fn(find(doc, kind, name))
    return mutate


def _add(obj):
    def mutate(doc):
        doc["items"].append(obj)
    return mutate


def _dup(kind, name, change=None):
    def mutate(doc):
        o = copy.deepcopy(find(doc, kind, name))
        if change:
            change(o)
        doc["items"].append(o)
    return mutate


def _web_port(field, value):
    return _set("Pod", "web-7d9f8b6c5d-x2k4p", lambda o: o["spec"]["containers"][0]["ports"][0].update({field: value}))


def _svc_port(name, field, value):
    return _set("Service", name, lambda o: o["spec"]["ports"][0].update({field: value}))


def _svc_spec(name, field, value):
    return _set("Service", name, lambda o: o["spec"].update({field: value}))


WEB = "Pod shop/web-7d9f8b6c5d-x2k4p: "
CASES = {
    # malformed addresses and CIDRs
    "pod ip": (_set("Pod", "web-7d9f8b6c5d-x2k4p", lambda o: o["status"].update(podIP="10.244.0.300")),
               WEB + "bad IPv4 status.podIP '10.244.0.300'"),
    "node cidr host bits": (_set("Node", "node-a", lambda o: o["spec"].update(podCIDR="10.244.0.1/24")),
                            "Node node-a: spec.podCIDR: bad CIDR '10.244.0.1/24': host bits set"),
    "node cidr length": (_set("Node", "node-a", lambda o: o["spec"].update(podCIDRs=["10.244.0.0/33"])),
                         "Node node-a: spec.podCIDR: bad CIDR '10.244.0.0/33'"),
    "node ip": (_set("Node", "node-b", lambda o: o["status"]["addresses"][0].update(address="192.168.1.x")),
                "Node node-b: bad IPv4 InternalIP '192.168.1.x'"),
    "cluster ip": (_svc_spec("web", "clusterIPs", ["10.96.12.400"]),
                   "Service shop/web: bad IPv4 spec.clusterIP '10.96.12.400'"),
    "external ip": (_svc_spec("api", "externalIPs", ["203.0.113"]),
                    "Service payments/api: bad IPv4 spec.externalIPs '203.0.113'"),
    "lb ip": (_set("Service", "storefront", lambda o: o["status"]["loadBalancer"]["ingress"][0].update(ip="1.2.3")),
              "Service shop/storefront: bad IPv4 status.loadBalancer.ingress ip '1.2.3'"),
    "slice address": (_set("EndpointSlice", "web-5xq9c", lambda o: o["endpoints"][1].update(addresses=["10.244.1"])),
                      "EndpointSlice shop/web-5xq9c: bad IPv4 endpoints[1] address '10.244.1'"),
    "slice no address": (_set("EndpointSlice", "web-5xq9c", lambda o: o["endpoints"][0].update(addresses=[])),
                         "EndpointSlice shop/web-5xq9c: endpoints[0] has no addresses"),
    # conflicts between objects
    "pod ip twice": (_set("Pod", "db-0", lambda o: o["status"].update(podIP="10.244.0.5")),
                     "Pod shop/db-0: IP 10.244.0.5 is also Pod shop/web-7d9f8b6c5d-x2k4p's"),
    "overlapping cidrs": (_set("Node", "node-b", lambda o: o["spec"].update(podCIDR="10.244.0.0/23", podCIDRs=None)),
                          "Node node-b: podCIDR 10.244.0.0/23 overlaps Node node-a's 10.244.0.0/24"),
    "node ip twice": (_set("Node", "node-c", lambda o: o["status"]["addresses"][0].update(address="192.168.1.11")),
                      "Node node-c: address 192.168.1.11 is also Node node-b's"),
    "duplicate pod": (_dup("Pod", "db-0", lambda o: o["metadata"].update(uid="x")),
                      "Pod shop/db-0: defined twice, differently"),
    "duplicate node": (_dup("Node", "node-b", lambda o: o["spec"].update(podCIDR=None, podCIDRs=None)),
                       "Node node-b: defined twice, differently"),
    "duplicate service": (_dup("Service", "legacy-db", lambda o: o["spec"].update(type="NodePort")),
                          "Service shop/legacy-db: defined twice, differently"),
    "duplicate slice": (_dup("EndpointSlice", "web-5xq9c", lambda o: o.update(endpoints=[])),
                        "EndpointSlice shop/web-5xq9c: defined twice, differently"),
    "cluster ip twice": (_svc_spec("cart", "clusterIPs", ["10.96.12.40"]),
                         "Service shop/cart: clusterIP 10.96.12.40 is also Service shop/web's"),
    "node port twice": (_svc_port("storefront", "nodePort", 30443),
                        "Service payments/api: nodePort 30443 is also Service shop/storefront's"),
    "service port twice": (_set("Service", "web", lambda o: o["spec"]["ports"].append({"port": 80, "name": "b"})),
                           "Service shop/web: spec.ports[1]: port 80/TCP declared twice"),
    # ports and protocols
    "container port 0": (_web_port("containerPort", 0), WEB + "container web containerPort 0 is not a port number"),
    "container port big": (_web_port("containerPort", 70000), WEB + "container web containerPort 70000 is not"),
    "container port name": (_web_port("containerPort", "http"), WEB + "container web containerPort 'http' is not"),
    "container protocol": (_web_port("protocol", "ICMP"), WEB + "container web port 8080 protocol 'ICMP' is not TCP"),
    "service port": (_svc_port("web", "port", 0), "Service shop/web: spec.ports[0].port 0 is not a port number"),
    "target port": (_svc_port("web", "targetPort", 70000), "spec.ports[0].targetPort 70000 is not a port number"),
    "target port empty": (_svc_port("web", "targetPort", ""), "spec.ports[0].targetPort '' is neither"),
    "node port": (_svc_port("storefront", "nodePort", 99999), "spec.ports[0].nodePort 99999 is not a port number"),
    "service protocol": (_svc_port("web", "protocol", "tcp"), "spec.ports[0].protocol 'tcp' is not TCP, UDP or SCTP"),
    "slice port": (_set("EndpointSlice", "web-5xq9c", lambda o: o["ports"][0].update(port=-1)),
                   "EndpointSlice shop/web-5xq9c: ports[0].port -1 is not a port number"),
    "slice protocol": (_set("EndpointSlice", "web-5xq9c", lambda o: o["ports"][0].update(protocol="QUIC")),
                       "ports[0].protocol 'QUIC' is not TCP, UDP or SCTP"),
    # service fields
    "service type": (_svc_spec("web", "type", "Ingress"), "Service shop/web: spec.type 'Ingress' is not one of"),
    "affinity": (_svc_spec("web", "sessionAffinity", "Cookie"),
                 "spec.sessionAffinity 'Cookie' is not None or ClientIP"),
    "affinity timeout": (_svc_spec("storefront", "sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 86401}}),
                         "Service shop/storefront: sessionAffinityConfig.clientIP.timeoutSeconds 86401 is outside"),
    "traffic policy": (_svc_spec("api", "externalTrafficPolicy", "Global"),
                       "spec.externalTrafficPolicy 'Global' is not Cluster or Local"),
    "selector": (_svc_spec("web", "selector", ["app", "web"]),
                 "Service shop/web: spec.selector: expected a mapping, found list ['app', 'web']"),
    "labels": (_set("Pod", "db-0", lambda o: o["metadata"].update(labels="app=db")),
               "Pod shop/db-0: metadata.labels: expected a mapping, found 'app=db'"),
    "malformed": (_set("Pod", "db-0", lambda o: o["spec"].update(containers="postgres")),
                  "Pod shop/db-0: spec.containers: expected a list, found 'postgres'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_errors(small, tmp_path, case):
    mutate, expected = CASES[case]
    mutate(small)
    msg = error_of(small, tmp_path)
    assert expected in msg, msg


def test_same_name_in_other_namespace_is_fine(small):
    doc = copy.deepcopy(small)
    other = copy.deepcopy(find(doc, "Pod", "db-0"))
    other["metadata"]["namespace"] = "payments"
    other["status"]["podIP"] = "10.244.2.60"
    doc["items"].append(other)
    assert len(cluster_from_objects(doc["items"]).pods) == 12


def test_duplicate_across_files_names_both(small, tmp_path):
    node = find(small, "Node", "node-a")
    (tmp_path / "a.json").write_text(json.dumps(node))
    (tmp_path / "b.json").write_text(json.dumps({**node, "spec": {}}))
    with pytest.raises(FastpathError,
                       match=r"b\.json: Node node-a: defined twice, differently \(first in .*a\.json\)"):
        load_cluster(tmp_path)


# --------------------------------------------------------------------------- real clusters as they are (#11, #19)

import subprocess  # noqa: E402
import sys  # noqa: E402

from fastpath.cluster.endpoints import derive_slices  # noqa: E402
from fastpath.cluster.problems import counts, report  # noqa: E402
from naive.endpoints import canonical, conditions, derive, mirror  # noqa: E402


def _node(name, ip_, cidr=None, zone=None, cpu=None):
    o = {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
         "spec": {"podCIDR": cidr} if cidr else {},
         "status": {"addresses": [{"type": "InternalIP", "address": ip_}, {"type": "Hostname", "address": name}]}}
    if zone:
        o["metadata"]["labels"]["topology.kubernetes.io/zone"] = zone
    if cpu is not None:
        o["status"]["capacity"] = {"cpu": cpu, "memory": "3912Mi", "pods": "110"}
    return o


def _pod(name, node, ip_, labels=None, ns="default", ports=(), ready=True):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name.split("-")[0]}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x", "ports": list(ports)}]},
            "status": {"phase": "Running", "podIP": ip_, "podIPs": [{"ip": ip_}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _svc(name, cluster_ip, selector=None, ports=None, ns="default", **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                     "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                     **({"selector": selector} if selector is not None else {}), **spec}}


# item 1: pods on nodes the input does not hold

def test_pods_on_absent_nodes_kept_and_warned_once(tmp_path):
    # `kubectl get all -n default` of minikube: pods and services, no Node objects
    objs = [_pod("web-1", "minikube", "10.244.0.5"), _pod("web-2", "minikube-m02", "10.244.1.5"),
            _pod("db-0", "minikube", "10.244.0.6"), _svc("web", "10.96.0.10", {"app": "web"})]
    c = cluster_from_objects(objs)
    assert [p.node_known for p in c.pods] == [False, False, False]
    assert [p.node for p in c.pods] == ["minikube", "minikube-m02", "minikube"]
    assert c.missing_nodes == {"minikube": 2, "minikube-m02": 1}
    assert c.warnings == ["3 pods on nodes the input does not hold (default/web-1 on minikube, default/web-2 on "
                          "minikube-m02, default/db-0 on minikube): kept; flows to them are dropped "
                          "(reason node-not-in-input)"]
    # the service over them still gets its endpoints, as the controller would
    assert canonical(derive_slices(c)) == derive(c)
    assert [e.target_pod for e in derive_slices(c)[0].endpoints] == ["default/web-1", "default/web-2"]
    # with the node given, the same pods are known
    c2 = cluster_from_objects(objs + [_node("minikube", "192.168.49.2", "10.244.0.0/24")])
    assert c2.missing_nodes == {"minikube-m02": 1} and [p.node_known for p in c2.pods] == [True, False, True]


def test_synth_trace_and_explain_on_absent_nodes(tmp_path):
    path = tmp_path / "ns.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        _pod("web-1", "minikube", "10.244.0.5", ports=[{"containerPort": 8080}]),
        _pod("client-1", "minikube", "10.244.0.9"), _svc("web", "10.96.0.10", {"app": "web"})]}))
    run = [sys.executable, "-m", "fastpath.cli"]
    r = subprocess.run(run + ["synth", "trace", str(path), "--flows", "200", "-o", str(tmp_path / "t.arrow")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fastpath: warning: 2 pods on nodes the input does not hold" in r.stderr
    r = subprocess.run(run + ["explain", str(path), "--src", "default/client-1", "--dst", "10.96.0.10",
                              "--dport", "80"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stdout.strip()


# item 4: services without selector and without EndpointSlice: the legacy Endpoints object

KUBERNETES_EP = {"apiVersion": "v1", "kind": "Endpoints",
                 "metadata": {"name": "kubernetes", "namespace": "default",
                              "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                 "subsets": [{"addresses": [{"ip": "192.168.64.23"}],
                              "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}]}]}


def test_legacy_endpoints_mirrored_like_the_controller():
    db_ep = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db", "namespace": "shop"},
             "subsets": [{"addresses": [{"ip": "10.0.10.180", "nodeName": "ip-10-0-10-170",
                                         "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "shop"}}],
                          "notReadyAddresses": [{"ip": "10.0.10.181", "nodeName": "ip-10-0-10-150",
                                                 "targetRef": {"kind": "Pod", "name": "db-1"}},
                                                {"ip": "fd00::1"}],
                          "ports": [{"name": "pg", "port": 5432}, {"name": "metrics", "port": 9187,
                                                                   "protocol": "TCP"}]},
                         {"addresses": [{"ip": "10.0.10.9"}], "ports": [{"port": 5433, "protocol": "UDP"}]}]}
    objs = [_svc("kubernetes", "10.96.0.1", None, [{"name": "https", "port": 443, "targetPort": 8443}]),
            KUBERNETES_EP,
            _svc("db", "10.100.0.5", None, [{"name": "pg", "port": 5432}], ns="shop"), db_ep,
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "no-such-service"}, "subsets": []}]
    c = cluster_from_objects(objs)
    assert c.warnings == []
    assert all(s.from_endpoints for s in c.slices)
    assert canonical(c.slices) == mirror(KUBERNETES_EP) + mirror(db_ep)
    assert canonical(c.slices)[1][3][1][:4] == ((ip("10.0.10.181"),), False, True, False)   # not ready, serving
    assert derive_slices(c) == []                      # a service with Endpoints is not derived again


def test_endpoints_used_only_without_slices_and_missing_ones_warned(small):
    doc = copy.deepcopy(small)
    # shop/web has an EndpointSlice: its Endpoints object is left alone
    web_ep = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
              "subsets": [{"addresses": [{"ip": "10.9.9.9"}], "ports": [{"name": "http", "port": 1}]}]}
    lonely = [_svc("external-db", "10.96.60.1", None, ns="shop"), _svc("api-ext", "10.96.60.2", None, ns="shop"),
              _svc("a", "10.96.60.3", None), _svc("b", "10.96.60.4", None)]
    c = cluster_from_objects(doc["items"] + [web_ep] + lonely)
    assert not any(s.from_endpoints for s in c.slices)
    assert "4 services without selector, EndpointSlice or Endpoints (shop/external-db, shop/api-ext, default/a, "\
           "...): no endpoints: flows to them are rejected" in c.warnings
    assert c.problems["no-endpoints-source"][-1] == "default/b"


def test_endpoints_errors_name_the_field():
    bad = copy.deepcopy(KUBERNETES_EP)
    bad["subsets"][0]["addresses"][0]["ip"] = "192.168.64"
    svc = _svc("kubernetes", "10.96.0.1", None)
    with pytest.raises(FastpathError, match=r"^x: Endpoints default/kubernetes: bad IPv4 subsets\[0\]\.addresses\[0\]"
                                            r"\.ip '192\.168\.64'"):
        cluster_from_objects([svc, bad], source="x")
    bad["subsets"][0]["addresses"] = "192.168.64.1"
    with pytest.raises(FastpathError, match=r"Endpoints default/kubernetes: subsets\[0\]\.addresses: expected a "
                                            r"list, found '192\.168\.64\.1'"):
        cluster_from_objects([svc, bad])


# item 6: leniency

def test_two_containers_one_port_is_a_warning(small):
    doc = copy.deepcopy(small)
    web = find(doc, "Pod", "web-7d9f8b6c5d-x2k4p")
    web["spec"]["containers"][1]["ports"][0]["containerPort"] = 8080      # envoy also declares 8080/TCP
    c = cluster_from_objects(doc["items"])
    pod = next(p for p in c.pods if p.name == "web-7d9f8b6c5d-x2k4p")
    assert [(p.container, p.port) for p in pod.ports if p.port == 8080] == [("web", 8080)]
    assert c.warnings == ["1 pod with two containers declaring one port (shop/web-7d9f8b6c5d-x2k4p 8080/TCP in "
                          "web and envoy): the API server accepts it; the first container's declaration is kept"]


def test_identical_copies_merged_differing_ones_name_both_files(small, tmp_path):
    (tmp_path / "all.json").write_text(json.dumps(small))
    (tmp_path / "zz").mkdir()
    (tmp_path / "zz" / "nodes.json").write_text(json.dumps(
        {"kind": "NodeList", "items": [find(small, "Node", "node-a"), find(small, "Node", "node-b")]}))
    c = load_cluster(tmp_path)
    assert len(c.nodes) == 3
    assert c.problems["merged-duplicate"] == ["Node node-a", "Node node-b"]
    changed = copy.deepcopy(find(small, "Node", "node-b"))
    changed["metadata"]["resourceVersion"] = "999"
    (tmp_path / "zz" / "nodes.json").write_text(json.dumps(changed))
    with pytest.raises(FastpathError) as err:
        load_cluster(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'zz' / 'nodes.json'}: Node node-b: defined twice, differently "
                              f"(first in {tmp_path / 'all.json'})")


def test_support_bundle_read_recursively(small, tmp_path):
    # troubleshoot's layout: cluster-resources/{nodes.json, pods/<ns>.json, services/<ns>.json}, plus files
    # that are not Kubernetes objects
    root = tmp_path / "support-bundle" / "cluster-resources"
    (root / "pods").mkdir(parents=True)
    (root / "services").mkdir()
    items = small["items"]
    (root / "nodes.json").write_text(json.dumps({"kind": "NodeList", "items": [o for o in items if o["kind"] == "Node"]}))
    for ns in {o["metadata"].get("namespace") for o in items} - {None}:
        for kind, sub in (("Pod", "pods"), ("Service", "services")):
            sel = [o for o in items if o["kind"] == kind and o["metadata"].get("namespace") == ns]
            (root / sub / f"{ns}.json").write_text(json.dumps({"kind": f"{kind}List", "items": sel}))
    (tmp_path / "support-bundle" / "version.json").write_text('{"major": "1", "minor": "30"}')
    (root / "pods" / "logs").mkdir()
    (root / "pods" / "logs" / "web.log").write_text("GET / 200\n")
    (tmp_path / "support-bundle" / ".hidden").mkdir()
    (tmp_path / "support-bundle" / ".hidden" / "x.json").write_text("not json")
    c = load_cluster(tmp_path / "support-bundle")
    ref = cluster_from_objects([o for o in items if o["kind"] in ("Node", "Pod", "Service")])
    assert sorted(p.key for p in c.pods) == sorted(p.key for p in ref.pods)
    assert len(c.services) == len(ref.services) and len(c.nodes) == 3
    assert c.problems["skipped-files"] == ["version.json"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_bom(small, tmp_path, encoding):
    path = tmp_path / "c.json"                                     # PowerShell: kubectl get ... > c.json
    bom = {"utf-16": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    path.write_bytes(bom + json.dumps(small).encode(encoding))
    assert load_cluster(path).summary() == cluster_from_objects(small["items"]).summary()
    yml = tmp_path / "c.yaml"
    yml.write_bytes(bom + yaml.safe_dump(small).encode(encoding))
    assert load_cluster(yml).summary() == cluster_from_objects(small["items"]).summary()


def test_warning_lines_count_and_first_few(capsys):
    objs = [_pod(f"web-{i}", f"node-{i}", f"10.244.0.{i + 1}") for i in range(5)]
    objs += [{"kind": "ClusterRole", "metadata": {"name": f"r{i}"}} for i in range(3)] + \
            [{"kind": "Secret", "metadata": {"name": "s"}}]
    c = cluster_from_objects(objs)
    assert c.warnings[-1].startswith("5 pods on nodes the input does not hold (default/web-0 on node-0, "
                                     "default/web-1 on node-1, default/web-2 on node-2, ...)")
    assert counts(c) == {"warnings": {"node-not-in-input": 5}, "skipped_kinds": {"ClusterRole": 3, "Secret": 1}}
    assert report(c) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("fastpath: warning: skipped 4 objects of kinds fastpath does not use (ClusterRole 3, "
                      "Secret 1)")
    report(c, debug=True)
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("fastpath: warning: node-not-in-input: all 5: default/web-0 on node-0, default/web-1 on "
                       "node-1, default/web-2 on node-2, default/web-3 on node-3, default/web-4 on node-4")


# item 7: endpoint conditions and node hints

@pytest.mark.parametrize("cond", [None, {}, {"ready": True}, {"ready": False}, {"serving": False},
                                  {"ready": False, "serving": True, "terminating": True},
                                  {"ready": None, "serving": None, "terminating": None},
                                  {"ready": False, "terminating": True}, {"serving": True}])
def test_endpoint_conditions_as_kube_proxy_reads_them(cond):
    e = {"addresses": ["10.244.0.5"], "nodeName": "node-a", "hints": {"forNodes": [{"name": "node-a"}],
                                                                      "forZones": [{"name": "z1"}]}}
    if cond is not None:
        e["conditions"] = cond
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": "web-abcde", "namespace": "default",
                       "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": [e]}
    got = cluster_from_objects([sl]).slices[0].endpoints[0]
    assert (got.ready, got.serving, got.terminating) == conditions(cond)
    assert got.hint_nodes == ("node-a",) and got.hint_zones == ("z1",)


def test_prefer_same_node_derives_node_hints():
    objs = [_node("node-a", "192.168.1.10", "10.244.0.0/24", zone="z1"),
            _node("node-b", "192.168.1.11", "10.244.1.0/24", zone="z2"),
            _pod("web-1", "node-a", "10.244.0.5"), _pod("web-2", "node-b", "10.244.1.5"),
            _pod("web-3", "node-b", "10.244.1.6", ready=False),
            _svc("web", "10.96.0.10", {"app": "web"}, trafficDistribution="PreferSameNode"),
            _svc("web-zone", "10.96.0.11", {"app": "web"}, trafficDistribution="PreferClose"),
            _svc("web-plain", "10.96.0.12", {"app": "web"})]
    c = cluster_from_objects(objs)
    got = derive_slices(c)
    assert canonical(got) == derive(c)
    hints = {s.service: [(e.hint_nodes, e.hint_zones) for e in s.endpoints] for s in got}
    assert hints["web"] == [(("node-a",), ("z1",)), (("node-b",), ("z2",)), (("node-b",), ("z2",))]
    assert hints["web-zone"] == [((), ("z1",)), ((), ("z2",)), ((), ("z2",))]
    assert hints["web-plain"] == [((), ()), ((), ()), ((), ())]


# item 10 and the fields other stages read: namespaces, ConfigMaps, CPUs, hostPort

def test_namespaces_from_objects_and_implied():
    objs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "web"}}},
            _pod("web-1", "n", "10.244.0.5", ns="shop"), _pod("api-1", "n", "10.244.0.6", ns="payments"),
            _svc("web", "10.96.0.10", {"app": "web"}, ns="edge")]
    c = cluster_from_objects(objs)
    assert c.namespaces == {"shop": {"kubernetes.io/metadata.name": "shop", "team": "web"},
                            "payments": {"kubernetes.io/metadata.name": "payments"},
                            "edge": {"kubernetes.io/metadata.name": "edge"}}


MASQ_YAML = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 100.64.0.0/10\n  - fd00::/8\nmasqLinkLocal: true\nresyncInterval: 60s\n"


def _cm(name, data, ns="kube-system"):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def test_ip_masq_agent_configmap():
    c = cluster_from_objects([_cm("ip-masq-agent", {"config": MASQ_YAML})], source="c.yaml")
    m = c.masquerade
    assert m.non_masquerade_cidrs == ((ip("10.0.0.0"), 8), (ip("100.64.0.0"), 10)) and m.masq_link_local is True
    assert m.source == "c.yaml: ConfigMap kube-system/ip-masq-agent"
    assert c.problems == {"masquerade-v6": ["fd00::/8"]}
    # JSON text works too; keys left out keep the agent's defaults (RFC 1918, no link-local)
    c = cluster_from_objects([_cm("ip-masq-agent", {"config": '{"masqLinkLocal": false}'})])
    assert c.masquerade.non_masquerade_cidrs == ((ip("10.0.0.0"), 8), (ip("172.16.0.0"), 12), (ip("192.168.0.0"), 16))
    assert cluster_from_objects([_cm("ip-masq-agent", {})]).masquerade.masq_link_local is False
    assert cluster_from_objects([_cm("ip-masq-agent", {"config": MASQ_YAML}, ns="default")]).masquerade is None
    assert cluster_from_objects([]).masquerade is None


@pytest.mark.parametrize("text, expected", [
    ("nonMasqueradeCIDRs: [10.0.0.0/33]", "data.config: nonMasqueradeCIDRs[0]: bad CIDR '10.0.0.0/33'"),
    ("nonMasqueradeCIDRs: 10.0.0.0/8", "data.config: nonMasqueradeCIDRs: expected a list, found '10.0.0.0/8'"),
    ("masqLinkLocal: yes please", "data.config: masqLinkLocal: expected true or false, found 'yes please'"),
    ("[1, 2]", "data.config: expected a mapping of settings, found list [1, 2]"),
    ("a: [", "data.config: line 1 bad YAML"),
])
def test_ip_masq_agent_errors(text, expected):
    with pytest.raises(FastpathError) as err:
        cluster_from_objects([_cm("ip-masq-agent", {"config": text})], source="c.yaml")
    assert str(err.value).startswith(f"c.yaml: ConfigMap kube-system/ip-masq-agent: {expected}"), str(err.value)


def test_kube_proxy_cluster_cidr():
    conf = ("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\nmode: iptables\n")
    c = cluster_from_objects([_cm("kube-proxy", {"config.conf": conf, "kubeconfig.conf": "apiVersion: v1\n"})])
    assert c.cluster_cidr == (ip("10.244.0.0"), 16)
    assert cluster_from_objects([_cm("kube-proxy", {"config.conf": 'clusterCIDR: ""'})]).cluster_cidr is None
    # another key (k3s, k0s) is searched when config.conf is absent
    assert cluster_from_objects([_cm("kube-proxy", {"config": conf})]).cluster_cidr == (ip("10.244.0.0"), 16)


@pytest.mark.parametrize("cpu, expected", [("4", 4), (4, 4), ("3500m", 4), ("250m", 1), ("2.5", 3), (None, None)])
def test_node_cpu_capacity(cpu, expected):
    assert cluster_from_objects([_node("n", "192.168.1.1", cpu=cpu)]).nodes[0].cpu == expected


def test_node_cpu_capacity_bad():
    with pytest.raises(FastpathError, match=r"Node n: status.capacity.cpu 'lots' is not a CPU count"):
        cluster_from_objects([_node("n", "192.168.1.1", cpu="lots")])


def test_host_port():
    # ingress-nginx on minikube: hostPort 80/443 on the controller's container ports
    pod = _pod("ingress-nginx-controller-1", "minikube", "10.244.0.7",
               ports=[{"containerPort": 80, "hostPort": 80, "name": "http", "protocol": "TCP"},
                      {"containerPort": 443, "hostPort": 8443, "name": "https", "protocol": "TCP"},
                      {"containerPort": 8443, "name": "webhook", "protocol": "TCP"}])
    got = cluster_from_objects([pod]).pods[0].ports
    assert [(p.port, p.host_port) for p in got] == [(80, 80), (443, 8443), (8443, None)]
    pod["spec"]["containers"][0]["ports"][0]["hostPort"] = 70000
    with pytest.raises(FastpathError, match=r"container main port 80 hostPort 70000 is not a port number"):
        cluster_from_objects([pod])


# #19 item 3: a string field holding a list or a mapping, named by its path

def _slice_obj():
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": "node-a", "zone": "z1"}]}


def _with(obj, path, value):
    o = copy.deepcopy(obj)
    cur = o
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if k.isdigit() else cur[k]
    cur[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return o


TYPE_CASES = {
    "nodeName list": (_with(_pod("web-1", "n", "10.244.0.5"), "spec.nodeName", ["node-a"]),
                      "Pod default/web-1: spec.nodeName: expected a string, found list ['node-a']"),
    "namespace mapping": (_with(_pod("web-1", "n", "10.244.0.5"), "metadata.namespace", {"a": 1}),
                          "Pod web-1: metadata.namespace: expected a string, found dict {'a': 1}"),
    "label value list": (_with(_pod("web-1", "n", "10.244.0.5"), "metadata.labels", {"app": ["web"]}),
                         "Pod default/web-1: metadata.labels.app: expected a string, found list ['web']"),
    "selector value mapping": (_svc("web", "10.96.0.10", {"app": {"x": "y"}}),
                               "Service default/web: spec.selector.app: expected a string, found dict {'x': 'y'}"),
    "zone label int": (_node("n", "192.168.1.1", zone=1),
                       "Node n: metadata.labels.topology.kubernetes.io/zone: expected a string, found 1"),
    "slice nodeName list": (_with(_slice_obj(), "endpoints.0.nodeName", ["a"]),
                            "EndpointSlice shop/web-abcde: endpoints[0].nodeName: expected a string, found list"),
    "slice zone mapping": (_with(_slice_obj(), "endpoints.0.zone", {"z": 1}),
                           "EndpointSlice shop/web-abcde: endpoints[0].zone: expected a string, found dict"),
    "service-name label list": (
        _with(_slice_obj(), "metadata.labels", {"kubernetes.io/service-name": ["web"]}),
        "EndpointSlice shop/web-abcde: metadata.labels.kubernetes.io/service-name: expected a string, found list"),
    "service port name list": (_svc("web", "10.96.0.10", {"app": "web"}, [{"name": ["http"], "port": 80}]),
                               "Service default/web: spec.ports[0].name: expected a string, found list ['http']"),
    "slice port name": (_with(_slice_obj(), "ports.0.name", 5),
                        "EndpointSlice shop/web-abcde: ports[0].name: expected a string, found 5"),
    # what used to be "malformed object (AttributeError: 'str' object has no attribute 'get')"
    "spec a string": (_with(_pod("web-1", "n", "10.244.0.5"), "spec", "oops"),
                      "Pod default/web-1: spec: expected a mapping, found 'oops'"),
    "address a string": (_with(_node("n", "192.168.1.1"), "status.addresses", ["192.168.1.1"]),
                         "Node n: status.addresses[0]: expected a mapping, found '192.168.1.1'"),
    "container a string": (_with(_pod("web-1", "n", "10.244.0.5"), "spec.containers", ["nginx"]),
                           "Pod default/web-1: spec.containers[0]: expected a mapping, found 'nginx'"),
    "port entry a number": (_with(_pod("web-1", "n", "10.244.0.5"), "spec.containers.0.ports", [80]),
                            "Pod default/web-1: spec.containers[0].ports[0]: expected a mapping, found 80"),
    "service ports a mapping": (_with(_svc("web", "10.96.0.10"), "spec.ports", [{"port": {"n": 80}}]),
                                "Service default/web: spec.ports[0].port dict {'n': 80} is not a port number"),
    "conditions a list": (_with(_slice_obj(), "endpoints.0.conditions", ["ready"]),
                          "EndpointSlice shop/web-abcde: endpoints[0].conditions: expected a mapping, found list"),
    "podCIDRs a string": (_with(_node("n", "192.168.1.1"), "spec", {"podCIDRs": "10.244.0.0/24"}),
                          "Node n: spec.podCIDRs: expected a list, found '10.244.0.0/24'"),
    "externalIPs a string": (_svc("web", "10.96.0.10", externalIPs="1.2.3.4"),
                             "Service default/web: spec.externalIPs: expected a list, found '1.2.3.4'"),
    "slice addresses a string": (_with(_slice_obj(), "endpoints.0.addresses", "10.244.0.5"),
                                 "EndpointSlice shop/web-abcde: endpoints[0].addresses: expected a list"),
    "podIPs strings": (_with(_pod("web-1", "n", ""), "status.podIPs", ["10.244.0.5"]),
                       "Pod default/web-1: status.podIPs[0]: expected a mapping, found '10.244.0.5'"),
}


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_type_confusion_names_the_field(case):
    obj, expected = TYPE_CASES[case]
    with pytest.raises(FastpathError) as err:
        c = cluster_from_objects([obj], source="c.json")
        derive_slices(c)                 # what used to crash after loading
    msg = str(err.value)
    assert msg.startswith(f"c.json: {expected}"), msg
    assert "\n" not in msg and "malformed" not in msg and len(msg) < 200


def test_replay_cli_prints_warnings_and_counts_them(tmp_path):
    path = tmp_path / "ns.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        _pod("web-1", "minikube", "10.244.0.5", ports=[{"containerPort": 8080}]),
        _pod("client-1", "minikube", "10.244.0.9"), _svc("web", "10.96.0.10", {"app": "web"}),
        _svc("kubernetes", "10.96.0.1", None), {"kind": "ServiceAccount", "metadata": {"name": "default"}}]}))
    run = [sys.executable, "-m", "fastpath.cli"]
    trace = tmp_path / "t.arrow"
    assert subprocess.run(run + ["synth", "trace", str(path), "--flows", "100", "-o", str(trace)],
                          capture_output=True).returncode == 0
    r = subprocess.run(run + ["replay", str(path), str(trace), "--quiet", "--summary-json", "-"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "fastpath: warning: skipped 1 object of kinds fastpath does not use (ServiceAccount 1)",
        "fastpath: warning: 1 service without selector, EndpointSlice or Endpoints (default/kubernetes): "
        "no endpoints: flows to them are rejected",
        "fastpath: warning: 2 pods on nodes the input does not hold (default/web-1 on minikube, default/client-1 "
        "on minikube): kept; flows to them are dropped (reason node-not-in-input)"]
    s = json.loads(r.stdout)
    assert s["warnings"] == {"no-endpoints-source": 1, "node-not-in-input": 2}
    assert s["skipped_kinds"] == {"ServiceAccount": 1}


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path


def test_swapped_types_never_crash_past_the_loader(small):
    """A leaf of any object becomes a list or a mapping: the loader says which field, or the
    value is one fastpath ignores and the cluster compiles (no TypeError downstream)."""
    from fastpath.cluster.compile import compile_cluster

    import random as _random
    rng = _random.Random(11)
    cases = [(i, path) for i, o in enumerate(small["items"]) for path in _leaves(o)]
    for i, path in rng.sample(cases, 80):
        doc = copy.deepcopy(small)
        cur = doc["items"][i]
        for k in path[:-1]:
            cur = cur[k]
        old = cur[path[-1]]
        cur[path[-1]] = rng.choice([[old], {"x": old}])
        try:
            c = cluster_from_objects(doc["items"], source="c.json")
        except FastpathError as e:
            msg = str(e)
            assert msg.startswith("c.json: ") and "\n" not in msg and len(msg) < 300, msg
            assert "malformed object" not in msg, (path, msg)
            continue
        compile_cluster(c)
