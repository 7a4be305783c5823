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
    assert len(c.warnings) == 4
    assert "skipped 2 ConfigMap objects" in warnings and "skipped 1 Job object" in warnings
    assert "addressType IPv6 (e.g. demo/echo-v6-abcde)" in warnings
    assert "1 completed pod" in warnings


def test_calico_noted_once():
    c = load_cluster(DATA / "calico-list.json")
    assert len(c.pods) == 6 and c.warnings == [
        "4 pod IPs outside every node's pod CIDR (e.g. Pod orders/api-84d5b7c9f6-2kq8d 192.168.33.3): "
        "Calico-style addressing, routed by block or host routes"]


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
    doc["items"].append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})
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
    assert sorted(c.warnings) == ["skipped 1 Deployment object: kind not used by fastpath",
                                  "skipped 3 ConfigMap objects: kind not used by fastpath"]


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
    (b"\xff\xfe{}", "not UTF-8"),
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


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FastpathError, match="no such file"):
        load_cluster(tmp_path / "nope.json")
    with pytest.raises(FastpathError, match="holds no .json"):
        load_cluster(tmp_path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "c.json"
    path.mkdir()
    with pytest.raises(FastpathError, match="holds no"):
        load_cluster(path)                                            # a directory named like a file
    from fastpath.cluster.load import read_objects
    with pytest.raises(FastpathError, match=r"c\.json: cannot read"):
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
    "containers share a port": (
        _set("Pod", "web-7d9f8b6c5d-x2k4p",
             lambda o: o["spec"]["containers"][1]["ports"][0].update(containerPort=8080)),
        WEB + "containers web and envoy both declare port 8080/TCP"),
    "unknown node": (_set("Pod", "db-0", lambda o: o["spec"].update(nodeName="node-z")),
                     "Pod shop/db-0: spec.nodeName 'node-z' is not a Node of the cluster"),
    "overlapping cidrs": (_set("Node", "node-b", lambda o: o["spec"].update(podCIDR="10.244.0.0/23", podCIDRs=None)),
                          "Node node-b: podCIDR 10.244.0.0/23 overlaps Node node-a's 10.244.0.0/24"),
    "node ip twice": (_set("Node", "node-c", lambda o: o["status"]["addresses"][0].update(address="192.168.1.11")),
                      "Node node-c: address 192.168.1.11 is also Node node-b's"),
    "duplicate pod": (_dup("Pod", "db-0"), "Pod shop/db-0: defined twice"),
    "duplicate node": (_dup("Node", "node-b", lambda o: o["spec"].update(podCIDR=None, podCIDRs=None)),
                       "Node node-b: defined twice"),
    "duplicate service": (_dup("Service", "legacy-db"), "Service shop/legacy-db: defined twice"),
    "duplicate slice": (_dup("EndpointSlice", "web-5xq9c"), "EndpointSlice shop/web-5xq9c: defined twice"),
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
    "selector": (_svc_spec("web", "selector", ["app", "web"]), "Service shop/web: spec.selector is not a mapping"),
    "labels": (_set("Pod", "db-0", lambda o: o["metadata"].update(labels="app=db")),
               "Pod shop/db-0: metadata.labels is not a mapping"),
    "malformed": (_set("Pod", "db-0", lambda o: o["spec"].update(containers="postgres")),
                  "Pod shop/db-0: malformed object"),
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
    (tmp_path / "b.json").write_text(json.dumps(node))
    with pytest.raises(FastpathError, match=r"b\.json: Node node-a: defined twice \(first in .*a\.json\)"):
        load_cluster(tmp_path)
