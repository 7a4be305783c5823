"""kube-proxy's conntrack sizing from its ConfigMap (spec §5 item 1; docs/dataplane.md, "Table size").

kube-proxy (``cmd/kube-proxy``, ``getConntrackMax``) sets ``nf_conntrack_max`` from the
``conntrack:`` block of its KubeProxyConfiguration (ConfigMap ``kube-system/kube-proxy``,
``data["config.conf"]``): ``maxPerCore`` > 0 gives ``max(maxPerCore x CPUs, min)`` (the spec
caps it at 1,048,576); ``maxPerCore: 0`` leaves the sysctl alone, so the node keeps the
kernel default 262,144 (minikube, k0s, usernetes ship that). Null fields take the defaults
32768 and 131072. Checked here: the reader (values, defaults, one-line errors), the sizing
function against the twin's, a replay's per-node ``conntrack_max`` (summary and timeline)
with ``maxPerCore: 0`` and without the ConfigMap, a small custom sizing that fills tables
(kernel and twin flow by flow), the study's headroom, and the compiled-table cache.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pytest

import fastpath
from fastpath.cache import LazyCluster, compile_cached
from fastpath.cluster.load import cluster_from_objects
from fastpath.errors import FastpathError
from fastpath.stages.conntrack import CT_KERNEL_DEFAULT, ConntrackStage, conntrack_max
from naive.conntrack import kube_proxy_max
from test_conntrack import S, TCP, assert_agree, fl
from test_events_twin import assert_fast_equals_twin, event, flow, node_obj, pod_obj, service_obj, write_inputs
from test_real_dumps import DUMPS

#: minikube's KubeProxyConfiguration (abridged from a real dump): kube-proxy leaves conntrack alone.
MINIKUBE_CONF = """apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: null
  tcpCloseWaitTimeout: 0s
  tcpEstablishedTimeout: 0s
kind: KubeProxyConfiguration
mode: iptables
"""


def kube_proxy_cm(conf: str, key: str = "config.conf") -> dict:
    """The ConfigMap kubeadm writes (``config.conf`` beside ``kubeconfig.conf``)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
            "data": {key: conf, "kubeconfig.conf": "apiVersion: v1\nkind: Config\n"}}


def conntrack_conf(block: str) -> str:
    return ("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n"
            f"clusterCIDR: 10.244.0.0/16\nconntrack:\n{block}")


def sizing_of(conf: str, key: str = "config.conf"):
    return cluster_from_objects([kube_proxy_cm(conf, key)]).conntrack_sizing


# --------------------------------------------------------------------------- the reader

def test_reads_max_per_core_and_min():
    assert sizing_of(MINIKUBE_CONF) == (0, 131072)                    # min null: its default
    assert sizing_of(conntrack_conf("  maxPerCore: 1\n  min: 40\n")) == (1, 40)
    assert sizing_of(conntrack_conf("  min: 40\n")) == (32768, 40)     # maxPerCore absent: its default
    assert sizing_of(conntrack_conf("  maxPerCore: 65536\n")) == (65536, 131072)
    # JSON text under another key (k3s, k0s) is read as clusterCIDR is
    assert sizing_of('{"conntrack": {"maxPerCore": 0}}', key="config") == (0, 131072)
    # nothing set: the defaults, as without the ConfigMap
    assert sizing_of(conntrack_conf("  maxPerCore: null\n  min: null\n")) is None
    assert sizing_of(conntrack_conf("  tcpEstablishedTimeout: 24h0m0s\n")) is None
    assert sizing_of("mode: iptables\n") is None
    assert cluster_from_objects([]).conntrack_sizing is None
    # another namespace's kube-proxy ConfigMap is not kube-proxy's
    other = dict(kube_proxy_cm(MINIKUBE_CONF), metadata={"name": "kube-proxy", "namespace": "default"})
    assert cluster_from_objects([other]).conntrack_sizing is None


@pytest.mark.parametrize("block, expected", [
    ("  maxPerCore: '0'\n", "conntrack.maxPerCore: expected a whole number from 0 to 2147483647, found '0'"),
    ("  maxPerCore: -1\n", "conntrack.maxPerCore: expected a whole number from 0 to 2147483647, found -1"),
    ("  min: 1.5\n", "conntrack.min: expected a whole number from 0 to 2147483647, found 1.5"),
    ("  min: true\n", "conntrack.min: expected a whole number from 0 to 2147483647, found True"),
    ("  maxPerCore: 4294967296\n", "conntrack.maxPerCore: expected a whole number from 0 to 2147483647, "
                                    "found 4294967296"),
    ("  [1, 2]\n", "conntrack: expected a mapping of settings, found list [1, 2]"),
])
def test_bad_value_is_one_line_naming_the_field(block, expected):
    with pytest.raises(FastpathError) as err:
        cluster_from_objects([kube_proxy_cm(conntrack_conf(block))], source="c.yaml")
    msg = str(err.value)
    assert msg == f"c.yaml: ConfigMap kube-system/kube-proxy: data.config.conf: {expected}", msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- the sizing rule

def test_sizing_rule():
    # no ConfigMap: the built-in formula, unknown CPUs as 1 (CT_MIN)
    assert [conntrack_max(c) for c in (None, 1, 4, 8, 16, 64)] == [131072, 131072, 131072, 262144, 524288, 1048576]
    assert [conntrack_max(c, (32768, 131072)) for c in (None, 4, 8, 64)] == [131072, 131072, 262144, 1048576]
    # maxPerCore 0: the kernel's default, whatever the CPUs and min
    assert CT_KERNEL_DEFAULT == 262144
    assert {conntrack_max(c, (0, m)) for c in (None, 1, 2, 64, 512) for m in (0, 40, 131072, 2000000)} == {262144}
    # maxPerCore > 0: max(perCore x CPUs, min), capped at 1,048,576
    assert conntrack_max(2, (1, 40)) == 40 and conntrack_max(64, (1, 40)) == 64
    assert conntrack_max(None, (100, 40)) == 100                       # unknown CPUs count as 1
    assert conntrack_max(4, (500000, 0)) == 1048576 and conntrack_max(1, (1, 5000000)) == 1048576


def test_sizing_matches_the_twin():
    sizings = [None, (0, 131072), (0, 0), (1, 40), (32768, 131072), (65536, 0), (1, 0), (300000, 2000000)]
    for cpu, sizing in itertools.product([None, 0, 1, 2, 3, 4, 5, 8, 31, 32, 33, 64, 1000], sizings):
        assert conntrack_max(cpu, sizing) == kube_proxy_max(cpu, sizing), (cpu, sizing)


# --------------------------------------------------------------------------- a replay

def _cluster_objects(with_configmap: bool) -> list[dict]:
    objects = [node_obj(0, cpu=2), node_obj(1, cpu=16), node_obj(2, cpu=64), node_obj(3, cpu=None),
               pod_obj("web-a", "node-1", "10.244.1.10", "web"), pod_obj("client", "node-0", "10.244.0.5", "client"),
               service_obj("web", "web", "10.96.0.10")]
    return objects + ([kube_proxy_cm(MINIKUBE_CONF)] if with_configmap else [])


@pytest.mark.parametrize("with_configmap, expected", [
    (True, [262144, 262144, 262144, 262144]),         # kube-proxy leaves nf_conntrack_max alone
    (False, [131072, 524288, 1048576, 131072]),       # kube-proxy's defaults over 2, 16, 64, ? CPUs
])
def test_replay_node_table_sizes(tmp_path, with_configmap, expected):
    flows = [flow(k * S // 2, "10.244.0.5", "10.96.0.10", 80, sport=30000 + k, duration=5.0) for k in range(20)]
    cluster, trace, _ = write_inputs(tmp_path, _cluster_objects(with_configmap), [], flows)
    timeline = tmp_path / "timeline.arrow"
    s = fastpath.replay(str(cluster), str(trace), None, progress=False, timeline=str(timeline), threads=1)
    assert {n: v["conntrack_max"] for n, v in s.nodes.items()} == {f"node-{i}": m for i, m in enumerate(expected)}
    with pa.memory_map(str(timeline)) as src:
        rows = pa.ipc.open_file(src).read_all().select(["node", "conntrack_max"]).to_pylist()
    assert {(r["node"], r["conntrack_max"]) for r in rows} == {(f"node-{i}", m) for i, m in enumerate(expected)}
    assert s.conntrack_drops == 0
    # --conntrack-max still sets every node's, over the ConfigMap
    s = fastpath.replay(str(cluster), str(trace), None, progress=False, conntrack_max=7, threads=1)
    assert {v["conntrack_max"] for v in s.nodes.values()} == {7}


# --------------------------------------------------------------------------- a small sizing fills tables

def _small_sizing_objects() -> list[dict]:
    """node-0 (2 CPUs: max(1 x 2, 40) = 40 entries) and node-1 (64 CPUs: 64 entries)."""
    return [node_obj(0, cpu=2), node_obj(1, cpu=64),
            pod_obj("client", "node-0", "10.244.0.5", "client"), pod_obj("local", "node-1", "10.244.1.5", "client"),
            pod_obj("web-a", "node-1", "10.244.1.10", "web"), service_obj("web", "web", "10.96.0.10"),
            kube_proxy_cm(conntrack_conf("  maxPerCore: 1\n  min: 40\n"))]


def _filling_flows() -> list[dict]:
    """50 long TCP connections node-0 -> node-1 (an entry on both), then 50 inside node-1."""
    out = [fl(k * S // 10, "10.244.0.5", "10.244.1.10", 8080, sport=20000 + k, duration=1000.0) for k in range(50)]
    out += [fl(10 * S + k * S // 10, "10.244.1.5", "10.244.1.10", 8080, sport=20000 + k, duration=1000.0)
            for k in range(50)]
    return out


def test_small_sizing_fills_tables_kernel_and_twin_agree():
    cluster = cluster_from_objects(_small_sizing_objects())
    assert cluster.conntrack_sizing == (1, 40)
    stage, twin, got = assert_agree(cluster, _filling_flows(), batches=3)
    nodes = stage.summary()["nodes"]
    assert {n: v["conntrack_max"] for n, v in nodes.items()} == {"node-0": 40, "node-1": 64}
    # node-0 holds 40 established connections and drops the other 10; node-1 took those 40,
    # then 24 of its own 50 and dropped 26
    assert (nodes["node-0"]["conntrack_peak"], nodes["node-0"]["conntrack_drops"]) == (40, 10)
    assert (nodes["node-1"]["conntrack_peak"], nodes["node-1"]["conntrack_drops"]) == (64, 26)
    assert sum(r["reason"] == "conntrack-full" for r in got) == 36
    assert twin.max == {"node-0": 40, "node-1": 64}


@pytest.mark.parametrize("with_events", [False, True])
def test_small_sizing_replay_from_file_matches_twin(with_events):
    """The whole replay (ConfigMap read from the file) against the twin, flow by flow; with cluster
    events (``--events``: the live cluster carries the sizing) a node of 8 CPUs joins: 40 entries."""
    flows = [flow(f["ts"], f["src_ip"], f["dst_ip"], f["dst_port"], sport=f["src_port"], duration=f["duration"])
             for f in _filling_flows()]
    flows += [flow(20 * S + k * S // 10, "10.244.0.5", "10.96.0.10", 80, sport=40000 + k) for k in range(10)]
    events = []
    if with_events:
        events = [event("ADDED", 21 * S, node_obj(2, cpu=8)),
                  event("ADDED", 21 * S, pod_obj("late", "node-2", "10.244.2.5", "client")),
                  event("ADDED", 21 * S, pod_obj("late-peer", "node-2", "10.244.2.6", "peer"))]
        flows += [flow(22 * S + k * S // 10, "10.244.2.5", "10.244.2.6", 8080, sport=50000 + k, duration=1000.0)
                  for k in range(45)]
    rows, _ = assert_fast_equals_twin(_small_sizing_objects(), events, flows, conntrack=True)
    # the service flows find node-0 full; node-2 (8 CPUs: max(1 x 8, 40) = 40) drops 5 of its 45
    assert sum(r["reason"] == "conntrack-full" for r in rows) == 46 + 5 * with_events


# --------------------------------------------------------------------------- headroom and the cache

def test_study_headroom_uses_the_configmap():
    from fastpath.report.figures import StudyTally, _headroom
    from fastpath.traces import normalize_batch

    cluster = cluster_from_objects(_small_sizing_objects())
    dp = fastpath.compile_cluster(cluster)
    f = _filling_flows()[:5]
    flows = normalize_batch({"src_ip": np.array([x["src_ip"] for x in f], np.uint32),
                             "dst_ip": np.array([x["dst_ip"] for x in f], np.uint32),
                             "src_port": np.array([x["src_port"] for x in f], np.uint16),
                             "dst_port": np.array([x["dst_port"] for x in f], np.uint16),
                             "proto": np.full(len(f), TCP, np.uint8),
                             "ts": np.array([x["ts"] for x in f], np.int64)})
    tally = StudyTally(dp, "random")
    tally.add(flows, dp.resolve_flows(flows))
    rows = _headroom(tally)["nodes"]
    assert {r["node"]: r["conntrack_max"] for r in rows} == {"node-0": 40, "node-1": 64}


def test_cache_keeps_the_sizing_and_a_changed_configmap_rebuilds(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": _cluster_objects(True)}))
    s1, s2, s3 = {}, {}, {}
    compile_cached(path, directory=tmp_path / "cache", stats=s1)
    dp = compile_cached(path, directory=tmp_path / "cache", stats=s2)
    assert s2["hit"] and isinstance(dp.cluster, LazyCluster)
    assert dp.cluster.conntrack_sizing == (0, 131072) and not dp.cluster.loaded     # a light field
    assert {v["conntrack_max"] for v in ConntrackStage(dp).summary()["nodes"].values()} == {262144}
    items = _cluster_objects(False) + [kube_proxy_cm(conntrack_conf("  maxPerCore: 1\n  min: 40\n"))]
    path.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": items}))
    dp = compile_cached(path, directory=tmp_path / "cache", stats=s3)
    assert not s3["hit"] and s3["key"] != s2["key"]
    assert dp.cluster.conntrack_sizing == (1, 40)
    assert [v["conntrack_max"] for v in ConntrackStage(dp).summary()["nodes"].values()] == [40, 40, 64, 40]


def test_real_minikube_dump_keeps_the_kernel_default():
    path = DUMPS / "kubediagrams-minikube-whole-cluster.yml"
    if not path.exists():
        pytest.skip(f"{path} not present")
    c = fastpath.load_cluster(path)
    assert c.conntrack_sizing == (0, 131072)                           # maxPerCore: 0, min: null
    assert conntrack_max(c.nodes[0].cpu, c.conntrack_sizing) == 262144


def test_cli_help_states_the_rule():
    import argparse

    from fastpath.cli import build_parser
    from fastpath.stages.conntrack import CT_MAX, CT_MIN, CT_PER_CPU

    replay = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["replay"]
    text = next(a.help for a in replay._actions if "--conntrack-max" in a.option_strings)
    for words in ("kube-system/kube-proxy", "maxPerCore", "maxPerCore 0", str(CT_PER_CPU), str(CT_MIN), str(CT_MAX),
                  str(CT_KERNEL_DEFAULT)):
        assert words in text, (words, text)
