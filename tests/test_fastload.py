"""The fast JSON path of the loader (msgspec, falling back to json) gives the same Cluster as json.

Every file of tests/data and every real dump under ../shared/data/real-k8s-dumps is loaded
twice, once with the fast decoder and once with it switched off, and the clusters (and any
error) must be equal; labels too, which the model's equality leaves out.
"""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

from fastpath.cluster import load
from fastpath.errors import FastpathError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
#: ../shared beside the repository, as tests/conftest.py finds it
DUMPS = Path(os.environ.get("FASTPATH_SHARED", ROOT.parent / "shared")) / "data" / "real-k8s-dumps"


def _inputs() -> list[Path]:
    out = sorted(p for p in DATA.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    if DUMPS.is_dir():
        out += sorted(p for p in DUMPS.iterdir() if p.is_dir() or p.suffix in (".json", ".yaml", ".yml"))
    return out


def _load(path: Path, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(load, "_fast_json", None)
        try:
            return load.load_cluster(path)
        except FastpathError as e:
            return str(e)


def _labels(c):
    return ([n.labels for n in c.nodes], [p.labels for p in c.pods], [s.selector for s in c.services])


def test_fast_decoder_is_there():
    assert load._fast_json is not None, "msgspec is a core dependency: the fast path should be on"


@pytest.mark.parametrize("path", _inputs(), ids=lambda p: p.name)
def test_fast_load_equals_json_load(path, monkeypatch):
    fast, plain = _load(path, True, monkeypatch), _load(path, False, monkeypatch)
    if isinstance(plain, str):
        assert fast == plain
        return
    assert fast == plain
    assert fast.warnings == plain.warnings
    assert _labels(fast) == _labels(plain)
    assert fast.summary() == plain.summary()


def test_real_dumps_present_or_skipped():
    if not DUMPS.is_dir():
        pytest.skip(f"{DUMPS} not present")
    assert len([p for p in _inputs() if DUMPS in p.parents]) >= 10


@pytest.mark.parametrize("text", [
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": NaN}]}',   # json only
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": 1e400}]}',  # out of range
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n\\ud800"}}]}',          # lone surrogate
    '{"kind": "List", "items": []} trailing',                                                  # bad JSON
    '{"kind": "List", "items": [',                                                             # truncated
    '{"kind": "Node", "metadata": {"name": "a", "name": "b"}}',                                 # repeated key
])
def test_fast_path_falls_back_to_json_exactly(tmp_path, monkeypatch, text):
    f = tmp_path / "c.json"
    f.write_text(text)
    assert _load(f, True, monkeypatch) == _load(f, False, monkeypatch)


def test_parse_json_same_objects(tmp_path):
    doc = {"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "é", "labels": {"a": "1"}},
                                      "spec": {"containers": [{"ports": [{"containerPort": 80}]}]},
                                      "x": [1.5, -0.0, 10 ** 30, None, True]}]}
    text = json.dumps(doc)
    assert load._parse_json(text, tmp_path / "x.json") == [doc]


def test_gc_paused_freezes_survivors_and_restores():
    assert gc.isenabled()
    before = gc.get_freeze_count()
    with load.gc_paused():
        assert not gc.isenabled()
        keep = [[i] for i in range(1000)]       # lists: always tracked by the collector
        with load.gc_paused():              # nested: the inner pause leaves the collector off
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + 1000   # moved out of the collector's generations
    assert len(keep) == 1000
    gc.disable()
    try:
        with load.gc_paused():
            pass
        assert not gc.isenabled()           # was off: stays off, nothing frozen on the way out
    finally:
        gc.enable()


# --------------------------------------------------------------------------- fast readers against their twins

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastpath.cluster.model import Node, Pod  # noqa: E402
from fastpath.cluster.problems import Problems  # noqa: E402

from naive import load as naive_load  # noqa: E402

#: Field values of every type a hand-written or broken dump may hold.
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(["", "x", "TCP", "Pod", "a-1"]),
                 st.lists(st.sampled_from(["x", 1]), max_size=2), st.dictionaries(st.sampled_from(["name", "x"]),
                                                                                   st.sampled_from(["z", 1, ""]),
                                                                                   max_size=2))
_ADDR = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.300", "fe80::1", "", "1.2.3", 7, None])
_NAMED = st.lists(st.one_of(st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["a", "b", ""]), _ANY)}),
                            _ANY), max_size=3)
_GOOD_ADDRS = st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "192.168.1.9"]), min_size=1, max_size=3)
_BOOL = st.one_of(st.none(), st.booleans())
_TEXT = st.one_of(st.none(), st.sampled_from(["", "z1", "node-1"]))


def _mostly(good, odd):
    """``good`` seven times in eight, else ``odd`` (a field of an unusual type or value)."""
    return st.integers(0, 7).flatmap(lambda k: odd if k == 0 else good)


_ENDPOINT = st.fixed_dictionaries({"addresses": _mostly(_GOOD_ADDRS, st.one_of(st.lists(_ADDR, max_size=3), _ANY))},
                                  optional={
    "conditions": _mostly(st.fixed_dictionaries({}, optional={k: _BOOL for k in ("ready", "serving", "terminating")}),
                          st.one_of(st.fixed_dictionaries({}, optional={"ready": _ANY, "terminating": _ANY}), _ANY)),
    "zone": _mostly(_TEXT, _ANY), "nodeName": _mostly(_TEXT, _ANY),
    "topology": _mostly(st.fixed_dictionaries({"topology.kubernetes.io/zone": _TEXT}), _ANY),
    "hints": _mostly(st.fixed_dictionaries({}, optional={
        "forZones": _mostly(st.lists(st.fixed_dictionaries({"name": _TEXT}), max_size=2), _NAMED),
        "forNodes": _mostly(st.lists(st.fixed_dictionaries({"name": _TEXT}), max_size=2), _NAMED)}), _ANY),
    "targetRef": _mostly(st.fixed_dictionaries({"kind": st.sampled_from(["Pod", "Node"])},
                                               optional={"name": _mostly(_TEXT, _ANY),
                                                         "namespace": _mostly(_TEXT, _ANY)}), _ANY),
})


def _slow_endpoint(e):
    try:
        return load._endpoint(e, "ns", 0)
    except (load._Invalid, FastpathError, AttributeError, TypeError, KeyError, ValueError) as err:
        return type(err)


@settings(max_examples=500, deadline=None)
@given(_mostly(_ENDPOINT, _ANY))
def test_fast_endpoint_reader_equals_the_checked_one(e):
    """Where the fast reader answers, it is the checked reader's endpoint; where the checked
    reader raises (naming the field), the fast one leaves it to it."""
    fast = load._endpoint_fast(e, "ns") if type(e) is dict else None
    slow = _slow_endpoint(e)
    if fast is not None:
        assert not isinstance(slow, type), slow
        assert fast == slow and vars(fast) == vars(slow) and hash(fast) == hash(slow)


def _pods_and_nodes(draw_ints):
    """Nodes with 0-2 pod CIDRs and pods (some on unknown nodes, some hostNetwork, some sharing an IP)."""
    rng = draw_ints
    nodes = [Node(name=f"n{i}", internal_ip=None, external_ip=None,
                  pod_cidrs=tuple((0x0A000000 + (i << 8) + (k << 16), 24) for k in range(rng[i % len(rng)] % 3)),
                  zone=None) for i in range(rng[0] % 4)]
    pods = []
    for j, r in enumerate(rng[1:]):
        ip = None if r % 7 == 0 else 0x0A000000 + (r % 5 << 16) + ((r // 5) % 5 << 8) + (r // 25) % 4
        node = None if r % 11 == 0 else f"n{(r // 3) % 6}"
        pods.append(Pod(namespace="d", name=f"p{j}", node=node, host_network=r % 13 == 0, ip=ip, ready=True,
                        terminating=False, ports=()))
    return pods, nodes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_check_pods_equals_the_per_pod_loop(ints):
    pods_a, nodes = _pods_and_nodes(ints)
    pods_b = list(pods_a)
    out = []
    for check, pods in ((load._check_pods, pods_a), (naive_load.check_pods, pods_b)):
        warnings: list[str] = []
        problems = Problems()
        try:
            missing = check(pods, [f"f{i}" for i in range(len(pods))], nodes, warnings, problems)
        except FastpathError as e:
            out.append(str(e))
        else:
            out.append((missing, warnings, problems.by_key, [vars(p) for p in pods]))
    assert out[0] == out[1]


@pytest.mark.parametrize("name,data", [
    ("bom.json", b'\xef\xbb\xbf{"kind": "List", "items": []}'),
    ("utf16.json", '{"kind": "List", "items": []}'.encode("utf-16")),
    ("bad-utf8.json", b'{"kind": "Pod", "metadata": {"name": "\xff"}}'),
    ("spaces.txt", b' \n\t[{"kind": "Namespace", "metadata": {"name": "a"}}]'),
    ("nbsp.txt", '\u00a0{"kind": "List", "items": []}'.encode()),
    ("empty.json", b"  \n"),
    ("nan.json", b'{"kind": "List", "items": [], "x": NaN}'),
])
def test_json_from_bytes_equals_json_from_text(tmp_path, monkeypatch, name, data):
    """The fast decoder reads JSON from the file's bytes; odd files get what the text path gives."""
    path = tmp_path / name
    path.write_bytes(data)
    assert _load(path, True, monkeypatch) == _load(path, False, monkeypatch)


def _pod_obj(name, ports, container="app", ip="10.0.0.1"):
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "d"},
            "spec": {"containers": [{"name": container, "ports": ports}]}, "status": {"podIP": ip}}


def test_one_container_port_reuse_tells_templates_apart(tmp_path):
    """Pods of a file reuse the ports of an earlier pod only where its port list is equal."""
    objs = [
        _pod_obj("a", [{"containerPort": 80}, {"containerPort": 81}], ip="10.0.0.1"),
        _pod_obj("b", [{"containerPort": 80}, {"containerPort": 82}], ip="10.0.0.2"),           # same first, count
        _pod_obj("c", [{"containerPort": 80}, {"containerPort": 81, "protocol": "UDP"}], ip="10.0.0.3"),
        _pod_obj("d", [{"containerPort": 81}, {"containerPort": 80}], ip="10.0.0.4"),
        _pod_obj("e", [{"containerPort": 80}, {"containerPort": 81}], container="side", ip="10.0.0.5"),
        _pod_obj("f", [{"containerPort": 80, "name": "http"}, {"containerPort": 81}], ip="10.0.0.6"),
        _pod_obj("g", [{"name": "http", "containerPort": 80}, {"containerPort": 81}], ip="10.0.0.7"),
        _pod_obj("h", [{"containerPort": 80}, {"containerPort": 81}], ip="10.0.0.8"),
    ]
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"kind": "List", "items": objs}))
    got = load.load_cluster(path)
    want = load.cluster_from_objects(json.loads(path.read_text())["items"])
    assert [p.ports for p in got.pods] == [p.ports for p in want.pods]
    ports = {p.name: [(cp.container, cp.port, cp.proto, cp.name) for cp in p.ports] for p in got.pods}
    assert ports["b"] == [("app", 80, 6, None), ("app", 82, 6, None)]
    assert ports["c"] == [("app", 80, 6, None), ("app", 81, 17, None)]
    assert ports["e"][0][0] == "side" and ports["g"] == ports["f"] and ports["h"] == ports["a"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "List", "items": objs[:1] + [
        _pod_obj("z", [{"containerPort": 80}, {"containerPort": "eighty"}], ip="10.0.0.9")]}))
    with pytest.raises(FastpathError, match="Pod d/z: .*eighty"):
        load.load_cluster(bad)


# --------------------------------------------------------------------------- typed records against the plain path
# load_cluster decodes a JSON List into typed records (fastpath.cluster.load_fast) and reads
# those; whatever is unusual goes back to the plain path (dicts). Either way the Cluster,
# its warnings, or the one-line error must be the plain path's.

import copy  # noqa: E402

import msgspec  # noqa: E402

from fastpath.cluster import load_fast  # noqa: E402
from fastpath.cluster.synth import synth_cluster  # noqa: E402
from test_fuzz import _slots  # noqa: E402  every (container, key) of a JSON tree


def _taken(path: Path, monkeypatch) -> str:
    """Which way ``load_cluster(path)`` went: typed (records read through), redo (records, then
    the plain path), plain (no records); an error the same."""
    calls = []
    real = load._load_files

    def spy(p, files, is_dir, typed):
        calls.append(typed)
        return real(p, files, is_dir, typed)

    with monkeypatch.context() as m:
        m.setattr(load, "_load_files", spy)
        records = []
        real_decode = load.decode_list

        def decode_spy(data):
            found = real_decode(data)
            records.append(found is not None)
            return found

        m.setattr(load, "decode_list", decode_spy)
        try:
            load.load_cluster(path)
        except FastpathError:
            pass
    if not any(records):
        return "plain"
    return "redo" if calls[-1] is False else "typed"


def _same(path: Path, monkeypatch) -> None:
    """The fast load of ``path`` is the plain one: the Cluster (every field, labels, warnings,
    problems, namespaces in order) or the error."""
    fast, plain = _load(path, True, monkeypatch), _load(path, False, monkeypatch)
    if isinstance(plain, str) or isinstance(fast, str):
        assert fast == plain
        return
    assert fast == plain
    assert fast.warnings == plain.warnings and fast.problems == plain.problems
    assert list(fast.namespaces.items()) == list(plain.namespaces.items())
    assert fast.skipped_kinds == plain.skipped_kinds and fast.missing_nodes == plain.missing_nodes
    for a, b in ((fast.nodes, plain.nodes), (fast.pods, plain.pods), (fast.services, plain.services),
                 (fast.slices, plain.slices)):
        assert [vars(x) for x in a] == [vars(x) for x in b]       # labels and selectors too
    assert [[vars(e) for e in s.endpoints] for s in fast.slices] == [[vars(e) for e in s.endpoints]
                                                                     for s in plain.slices]


def test_typed_path_is_taken(tmp_path, monkeypatch):
    """The inputs of the comparison above do go through the typed records (else it compares
    the plain path with itself)."""
    taken = {p.name: _taken(p, monkeypatch) for p in _inputs()}
    assert taken["small-list.json"] == "typed" and taken["calico-list.json"] == "typed"
    assert taken["small-stream.yaml"] == "plain"
    if DUMPS.is_dir():
        assert taken["troubleshoot-k3s-support-bundle"] == "typed"      # files of Lists, other kinds too
        assert taken["kubectl-neat-kind-pod-list-no-nodes.json"] == "typed"
        assert taken["sbctl-kurl-support-bundle"] == "redo"            # ***HIDDEN*** node addresses
        assert sum(v == "typed" for v in taken.values()) >= 6, taken   # the others: YAML, single objects
    f = tmp_path / "synth.json"
    f.write_text(json.dumps(synth_cluster(20, 5, 20, seed=3)))
    assert _taken(f, monkeypatch) == "typed"
    _same(f, monkeypatch)


#: Base objects the mutations start from: the small List, a synthetic cluster, and pods,
#: services and slices with every field the readers read.
_FULL = [
    {"kind": "Node", "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
     "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]},
     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                              {"type": "ExternalIP", "address": "1.2.3.4"}], "capacity": {"cpu": "3500m"}}},
    {"kind": "Pod", "metadata": {"name": "p1", "namespace": "a", "labels": {"app": "x"},
                                 "deletionTimestamp": "2024-01-01T00:00:00Z"},
     "spec": {"nodeName": "n1", "hostNetwork": False,
              "containers": [{"name": "c", "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"},
                                                     {"containerPort": 53, "protocol": "UDP", "hostPort": 53}]},
                             {"name": "d", "ports": [{"containerPort": 80}]}],
              "initContainers": [{"name": "s", "restartPolicy": "Always", "ports": [{"containerPort": 9000}]},
                                 {"name": "i", "ports": [{"containerPort": 9001}]}]},
     "status": {"phase": "Running", "podIP": "fd00::5", "podIPs": [{"ip": "fd00::5"}, {"ip": "10.244.1.5"}],
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}},
    {"kind": "Pod", "metadata": {"name": "p2", "namespace": "a"},
     "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
     "status": {"phase": "Succeeded", "podIP": "10.244.1.6", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"kind": "Service", "metadata": {"name": "s1", "namespace": "a"},
     "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "x"},
              "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                        {"port": 53, "protocol": "UDP", "targetPort": 53}],
              "externalIPs": ["5.6.7.8"], "sessionAffinity": "ClientIP",
              "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
              "externalTrafficPolicy": "Local", "trafficDistribution": "PreferClose"},
     "status": {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}}},
    {"kind": "EndpointSlice", "metadata": {"name": "s1-abc", "namespace": "a",
                                           "labels": {"kubernetes.io/service-name": "s1"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "all"}],
     "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": "n1", "zone": "z1", "targetRef": {"kind": "Pod", "name": "p1", "namespace": "a"},
                    "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}},
                   {"addresses": ["10.244.1.7", "10.244.1.8"], "conditions": {"ready": False},
                    "topology": {"topology.kubernetes.io/zone": "z2"}}]},
    {"kind": "EndpointSlice", "metadata": {"name": "s1-v6", "namespace": "a",
                                           "labels": {"kubernetes.io/service-name": "s1"}},
     "addressType": "IPv6", "endpoints": [{"addresses": ["fd00::5"]}]},
    {"kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "t"}}},
    {"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "a"}, "data": {"x": "1"}},
]
_TYPED_BASES = {
    "small-list": json.loads((DATA / "small-list.json").read_text())["items"],
    "synth": synth_cluster(3, 3, 3, namespaces=2, zones=2, seed=5)["items"],
    "full": _FULL,
    "full-records-only": [o for o in _FULL if o["kind"] in load_fast.KIND_OF.values()],
}
#: Odd values: other types, out of range, bad addresses, empty, falsy of every type.
_ODD = [None, True, False, 0, 1, -1, 65536, 80, "80", 2**64, 1.5, 80.0, "", " ", "x", "10.0.0.300", " 10.0.0.1",
        "10.0.0.1", "10.244.1.0/24", "::1", "TCP", "tcp", "None", "Always", "Ready", "True", "Pod", "IPv6",
        [], [1, "a"], [None], ["10.0.0.1"], [{}], {}, {"a": 1}, {"name": 5}, {"ip": "10.0.0.1"}]


@st.composite
def _mutated(draw):
    objs = copy.deepcopy(_TYPED_BASES[draw(st.sampled_from(sorted(_TYPED_BASES)))])
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(objs)
        parent, key = slots[draw(st.integers(0, len(slots) - 1))]
        op = draw(st.sampled_from(["swap", "swap", "swap", "drop", "wrap", "copy", "twice"]))
        if op == "swap":
            parent[key] = copy.deepcopy(draw(st.sampled_from(_ODD)))
        elif op == "drop":
            del parent[key]
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
        elif op == "copy":              # an object again: the same, or (mutated later) different
            objs.append(copy.deepcopy(objs[draw(st.integers(0, len(objs) - 1))]))
        elif isinstance(parent, dict):  # a key given twice in the JSON text: the last one counts
            parent[key] = _Twice(parent[key], copy.deepcopy(draw(st.sampled_from(_ODD))))
    return objs


class _Twice:
    """A value written as its key twice: ``first``, then ``last``."""

    def __init__(self, first, last) -> None:
        self.first, self.last = first, last


def _dumps(doc) -> str:
    """JSON text of ``doc``, a :class:`_Twice` value as its key given twice."""
    if isinstance(doc, dict):
        parts = []
        for k, v in doc.items():
            if isinstance(v, _Twice):
                parts += [f"{json.dumps(k)}: {_dumps(v.first)}", f"{json.dumps(k)}: {_dumps(v.last)}"]
            else:
                parts.append(f"{json.dumps(k)}: {_dumps(v)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(doc, list):
        return "[" + ", ".join(_dumps(v) for v in doc) + "]"
    if isinstance(doc, _Twice):         # moved into a list by a later mutation: one value
        return _dumps(doc.last)
    return json.dumps(doc)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(objs=_mutated(), kind=st.sampled_from(["List", "PodList", "List", "List"]))
def test_typed_records_equal_the_plain_path(tmp_path_factory, objs, kind):
    """A List with fields swapped, dropped, wrapped, given twice, and objects repeated loads
    exactly as the plain path loads it (or fails with its message)."""
    f = tmp_path_factory.mktemp("typed") / "c.json"
    f.write_text(_dumps({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": objs}))
    with pytest.MonkeyPatch.context() as mp:
        _same(f, mp)


@pytest.mark.parametrize("text", [
    # unread fields the typed decoder skips but the plain path refuses (or reads differently)
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": ' + "9" * 5000 + '}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": [' + "1" * 4301 + ']}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": ' + "9" * 4300 + '}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": "' + "9" * 5000 + '"}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": 1e400}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": "\\ud800"}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": ' + "[" * 900 + "]" * 900 + '}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": ' + "[" * 3000 + "]" * 3000 + '}]}',
    # shapes: not a List, items missing or null, kinds missing, Lists in Lists, a kind twice
    '{"kind": "Pod", "metadata": {"name": "p"}, "items": []}',
    '{"kind": "List"}',
    '{"kind": "List", "items": null}',
    '{"kind": "NodeList", "items": [{"metadata": {"name": "n1"}}]}',
    '{"kind": "List", "items": [{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}}]}]}',
    '{"kind": "List", "items": [{"kind": "Node", "kind": "Pod", "metadata": {"name": "n1"}}]}',
    '{"kind": "List", "items": [{"kind": "Pod", "kind": "Node", "metadata": {"name": "n1"}}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}}, {"kind": "Node", '
    '"metadata": {"name": "n1"}, "x": 1}]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}}, {"kind": "Node", '
    '"metadata": {"name": "n1"}}]}',
    '{"kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"}}, {"kind": "Pod", '
    '"metadata": {"name": "p", "namespace": "a"}}, {"kind": "Pod", "metadata": {"name": "p", "namespace": "a"}}]}',
    '[{"kind": "Node", "metadata": {"name": "n1"}}]',
    '{"kind": "List", "items": ["x"]}',
    '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}}]} {}',
])
def test_typed_records_odd_files(tmp_path, monkeypatch, text):
    f = tmp_path / "c.json"
    f.write_text(text)
    _same(f, monkeypatch)


@pytest.mark.parametrize("data", [
    b'{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "x": "\xff"}]}',
    b'{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n1"}, "\xc3": 1}]}',
    b'{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n\xc3\xa9"}, "x": "\xe4\xb8\xad"}]}',
])
def test_typed_records_odd_bytes(tmp_path, monkeypatch, data):
    """Bytes that are not UTF-8 in a field nobody reads: the plain path refuses the file."""
    f = tmp_path / "c.json"
    f.write_bytes(data)
    _same(f, monkeypatch)


def test_typed_records_in_a_directory(tmp_path, monkeypatch):
    """Files of a directory: records in one, dicts in another, the same object in both."""
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "a.json").write_text(json.dumps({"kind": "List", "items": _FULL}))
    (d / "b.yaml").write_text(json.dumps({"kind": "List", "items": _FULL[:2]}))
    (d / "version.json").write_text('{"v": 1}')
    _same(d, monkeypatch)
    (d / "b.yaml").unlink()
    (d / "c.json").write_text(json.dumps({"kind": "List", "items": _FULL[1:2]}))
    _same(d, monkeypatch)
    assert _taken(d, monkeypatch) == "redo"         # Pod a/p1 in two files: compared as dicts
    (d / "c.json").unlink()
    assert _taken(d, monkeypatch) == "redo"         # an endpoint's v1beta1 topology: the plain path reads it
    plain_free = [o for o in _FULL if o["metadata"]["name"] != "s1-abc"]
    (d / "a.json").write_text(json.dumps({"kind": "List", "items": plain_free}))
    assert _taken(d, monkeypatch) == "typed"
    _same(d, monkeypatch)


def test_long_digit_runs_are_found():
    assert not load_fast._long_digits(b"1" * 2150 + b"x" + b"1" * 2150)
    for at in range(0, 2200, 97):
        assert load_fast._long_digits(b"x" * at + b"7" * 4301 + b"x")
    assert load_fast._long_digits(b"7" * 4301)


def test_text_caches_stop_growing_where_texts_differ():
    pods: list = []
    readers = load_fast.TypedReaders(load._PodParser(False), pods)
    readers.TEXTS_KEPT = 4
    dec = msgspec.json.Decoder(load_fast.PodRecord)

    def read(i, image, time):
        rec = dec.decode(json.dumps({"kind": "Pod", "metadata": {"name": f"p{i}"},
                                     "spec": {"containers": [{"name": "c", "image": image}]},
                                     "status": {"conditions": [{"type": "Ready", "status": "True",
                                                                "lastTransitionTime": time}]}}))
        pods.append(readers.pod(rec, "d", f"p{i}"))
        assert pods[-1].ready

    for i in range(20):                     # every text new: the caches stop at 4
        read(i, f"i{i}", f"t{i}")
    assert len(readers._ports_by_text) == 4 and len(readers._ready_by_text) == 4
    assert len(readers._ports) == 1
    for i in range(20, 60):                 # texts seen again and again: they grow again
        read(i, f"i{i % 8}", f"t{i % 8}")
    assert len(readers._ports_by_text) == 8 and len(readers._ready_by_text) == 8
