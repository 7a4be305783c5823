"""fastpath study: figures.json against a plain-Python twin over the results file, the page,
its empty sections, and (where Chromium is installed) the page as a browser shows it."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import fastpath
from fastpath.cli import main
from naive import report as twin

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 30-node cluster, the same cluster with one service's first two endpoints gone, a timed trace."""
    d = tmp_path_factory.mktemp("study")
    obj = fastpath.synth_cluster(30, 8, 20, seed=3)
    fastpath.write_cluster(obj, d / "cluster.json")
    drained = copy.deepcopy(obj)
    # the other state: every pod of the first node gone (a drain without rescheduling)
    first = next(o for o in drained["items"] if o["kind"] == "Node")["metadata"]["name"]
    gone = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in drained["items"]
            if o["kind"] == "Pod" and o["spec"].get("nodeName") == first and not o["spec"].get("hostNetwork")}
    items = []
    for o in drained["items"]:
        if o["kind"] == "Pod" and (o["metadata"]["namespace"], o["metadata"]["name"]) in gone:
            continue
        if o["kind"] == "EndpointSlice":
            o["endpoints"] = [e for e in o.get("endpoints", [])
                              if (e.get("targetRef") or {}).get("name") not in {n for _, n in gone}]
        items.append(o)
    drained["items"] = items
    fastpath.write_cluster(drained, d / "drained.json")
    cluster = fastpath.load_cluster(d / "cluster.json")
    fastpath.synth_trace(cluster, 40_000, seed=5, out=d / "trace.arrow")
    return d


def _study(d: Path, *args: str) -> dict:
    rc = main(["study", str(d / "cluster.json"), str(d / "trace.arrow"), "-o", str(d / "report"), "--quiet", *args])
    assert rc == 0
    return json.loads((d / "report" / "figures.json").read_text())


def _rows(path: Path) -> list[dict]:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all().to_pylist()


def test_figures_agree_with_the_results_file(small):
    figs = _study(small, "--lb", "random,maglev", "--against", str(small / "drained.json"))
    rows = {}
    for lb in ("random", "maglev"):
        assert main(["replay", str(small / "cluster.json"), str(small / "trace.arrow"), "--lb", lb, "--quiet",
                     "-o", str(small / f"{lb}.arrow")]) == 0
        rows[lb] = _rows(small / f"{lb}.arrow")
    ref = rows["random"]

    mix = twin.mix(ref)
    assert figs["traffic_mix"]["verdict"] == mix["verdict"]
    assert figs["traffic_mix"]["path"] == mix["path"]
    assert figs["traffic_mix"]["reason"] == mix["reason"]
    assert figs["traffic_mix"]["flows"] == len(ref) == figs["study"]["flows"]

    # balance: every top service's load per backend, under both balancers
    for lb in ("random", "maglev"):
        per = twin.backend_flows(rows[lb])
        for svc in figs["balance"]["top_services"]:
            got = dict(zip(svc["backends"], svc["by_lb"][lb]["flows"]))
            want = per.get(svc["service"], {})
            assert {b: n for b, n in got.items() if n} == dict(want), (lb, svc["service"])
    assert figs["balance"]["top_services"], "the sample has service traffic"

    # where: shares over flows with both nodes in the cluster
    cluster = fastpath.load_cluster(small / "cluster.json")
    zone_of = {n.name: n.zone or "(no zone)" for n in cluster.nodes}
    cross, zone, both = twin.shares(ref, zone_of)
    assert figs["where"]["forwarded_flows"] == both
    assert figs["where"]["cross_node_share"] == pytest.approx(cross, abs=1e-6)
    assert figs["where"]["cross_zone_share"] == pytest.approx(zone, abs=1e-6)
    trace = pa.ipc.open_file(pa.memory_map(str(small / "trace.arrow"))).read_all()
    flow_bytes = trace.column("bytes").to_pylist() if "bytes" in trace.column_names else None
    pods = twin.source_pods(ref, flow_bytes)
    top = figs["where"]["top_source_pods"]
    key = "bytes" if flow_bytes is not None else "flows"
    assert [p[key] for p in top] == sorted(pods.values(), reverse=True)[:len(top)]
    for p in top:
        assert p[key] == pods[p["pod"]]

    # headroom: each node's entries and their lifetimes, by the conntrack stage's rule
    load = twin.conntrack_load(ref, trace.select([c for c in ("proto", "duration") if c in trace.column_names]).to_pylist())
    got = {n["node"]: n for n in figs["headroom"]["nodes"]}
    assert set(got) == set(load)
    for node, (entries, seconds) in load.items():
        assert got[node]["entries_per_flow"] == pytest.approx(entries / len(ref), abs=1e-6)
        assert got[node]["mean_lifetime_s"] == pytest.approx(seconds / entries, rel=1e-6)
        assert got[node]["fill_rate_flows_per_s"] == pytest.approx(got[node]["conntrack_max"] * len(ref) / seconds,
                                                                   rel=1e-5)

    # change against the drained state: the twin replays it too
    for lb in ("random", "maglev"):
        assert main(["replay", str(small / "drained.json"), str(small / "trace.arrow"), "--lb", lb, "--quiet",
                     "-o", str(small / f"{lb}-drained.arrow")]) == 0
        flows, moved = twin.changed(rows[lb], _rows(small / f"{lb}-drained.arrow"))
        got = figs["change"]["by_lb"][lb]
        assert (got["service_flows"], got["changed"]) == (flows, moved)
    # Maglev's promise: far fewer flows move than under a fresh random draw
    assert figs["change"]["by_lb"]["maglev"]["changed_share"] < 0.5 * figs["change"]["by_lb"]["random"]["changed_share"]


def test_page_has_every_section_and_says_why_when_empty(small):
    figs = _study(small, "--lb", "maglev")
    page = (small / "report" / "index.html").read_text()
    for key in ("traffic_mix", "balance", "where", "state_over_time", "change", "headroom"):
        assert f"id='{key}'" in page
        assert key in figs
    # one balancer, no --against: the change section says why it is empty
    assert "why_empty" in figs["change"]
    assert "no --against cluster" in page
    assert figs["study"]["balancers"] == ["maglev"]
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # every figure is an embedded PNG
    imgs = re.findall(r"<img src='data:image/png;base64,", page)
    assert len(imgs) >= 4
    assert figs["headroom"]["first_to_fill"]["fill_rate_flows_per_s"] > 0


def test_untimed_trace_says_there_is_no_state_over_time(small, tmp_path):
    t = pa.ipc.open_file(pa.memory_map(str(small / "trace.arrow"))).read_all()
    if "ts" in t.column_names:
        t = t.drop_columns(["ts"])
    with pa.OSFile(str(tmp_path / "untimed.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    assert main(["study", str(small / "cluster.json"), str(tmp_path / "untimed.arrow"), "-o",
                 str(tmp_path / "r"), "--lb", "random", "--quiet"]) == 0
    figs = json.loads((tmp_path / "r" / "figures.json").read_text())
    assert "no ts column" in figs["state_over_time"]["why_empty"]
    assert "no ts column" in (tmp_path / "r" / "index.html").read_text()


def test_missing_matplotlib_names_the_extra(small, tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    rc = main(["study", str(small / "cluster.json"), str(small / "trace.arrow"), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fastpath[study]" in err[0]
    assert not (tmp_path / "r").exists()


def test_bad_balancer_list_is_one_line():
    r = subprocess.run([sys.executable, "-m", "fastpath.cli", "study", "c.json", "t.arrow", "-o", "x", "--lb",
                        "random,fastest"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "balancers are" in r.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Appended to a copy of the page in the test only: the page itself has no script.
_PROBE = """<script>
window.addEventListener('error', e => document.body.setAttribute('data-errors', 'error: ' + e.message));
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-images', imgs.length + '/' + bad);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_in_a_headless_browser(small, tmp_path):
    _study(small, "--lb", "random,maglev", "--against", str(small / "drained.json"))
    page = (small / "report" / "index.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'data-images="(\d+)/(\d+)"', r.stdout)
    assert m, r.stdout[:500]
    total, bad = int(m.group(1)), int(m.group(2))
    assert total >= 5 and bad == 0
    assert "data-errors=\"" not in r.stdout
    assert not re.search(r"CONSOLE\(\d+\).*(Uncaught|Error)", r.stderr)


def test_state_over_time_agrees_with_the_replay_timeline(small):
    figs = _study(small, "--lb", "random")
    if "why_empty" in figs["state_over_time"]:
        pytest.skip(f"synthetic trace untimed: {figs['state_over_time']['why_empty']}")
    tl = small / "timeline.arrow"
    assert main(["replay", str(small / "cluster.json"), str(small / "trace.arrow"), "--lb", "random", "--quiet",
                 "--timeline", str(tl)]) == 0
    rows = _rows(tl)
    peak: dict[str, float] = {}
    for r in rows:
        peak[r["node"]] = max(peak.get(r["node"], 0.0), r["conntrack_entries"] / r["conntrack_max"])
    got = figs["state_over_time"]
    assert got["peak_occupancy"] == pytest.approx(max(peak.values()), abs=1e-6)
    assert peak[got["peak_node"]] == pytest.approx(max(peak.values()), abs=1e-6)
    assert got["drops"] == sum(r["drops"] for r in rows)
    assert got["fdb_floods"] == sum(r["fdb_floods"] for r in rows)
    assert got["nodes"] == len(peak)


def test_empty_trace_is_one_line_and_writes_nothing(small, tmp_path, capsys):
    t = pa.ipc.open_file(pa.memory_map(str(small / "trace.arrow"))).read_all().slice(0, 0)
    with pa.OSFile(str(tmp_path / "empty.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    rc = main(["study", str(small / "cluster.json"), str(tmp_path / "empty.arrow"), "-o", str(tmp_path / "r"),
               "--lb", "random", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no flows" in err[0]
    assert not (tmp_path / "r").exists()


def test_empty_top_talker_tables_say_why(small):
    # a one-node cluster has no node pair; a trace from outside only has no source pod
    figs = _study(small, "--lb", "random")
    figs["where"]["top_node_pairs"], figs["where"]["top_source_pods"] = [], []
    page = fastpath.report.render_html(figs)
    assert "No flow went from one node of the cluster to another." in page
    assert "No flow came from a pod." in page


def test_state_over_time_of_a_cluster_without_nodes_says_so():
    from types import SimpleNamespace

    from fastpath.report.figures import _state_over_time

    ref = SimpleNamespace(has_ts=True, dp=SimpleNamespace(tables=SimpleNamespace(node_names=[])))
    assert "no Node objects" in _state_over_time(ref, None)["why_empty"]


def test_change_without_service_flows_says_why(small):
    # events after the trace's end (or a trace that meets no service) move no flow: no 'n/a' bars
    figs = _study(small, "--lb", "random", "--against", str(small / "drained.json"))
    figs["change"]["by_lb"]["random"].update(service_flows=0, changed=0, changed_share=None, services=[])
    page = fastpath.report.render_html(figs)
    assert "No flow of the trace went to a service, so none could change backend." in page
    assert "n/a under random" not in page
