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
