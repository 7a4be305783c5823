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
