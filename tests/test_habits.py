"""Habits users already have (issue #18, items 2-9): outputs, names and answers as kubectl,
hubble and pyarrow users expect them.

Most checks run the command line in-process (:func:`fastpath.cli.main`, as tests/test_cli.py
does) on a small synthetic cluster (6 nodes, 3,000 flows); a few use the library.
"""
from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fastpath
from fastpath import study
from clirun import cli
from fastpath.cli import build_parser, main
from fastpath.codes import REASONS
from fastpath.errors import FastpathError
from fastpath.outputs import console, read_results_metadata
from fastpath.pipeline import RESULT_SCHEMA
from fastpath.explain import explain
from fastpath.replay import replay, sample_paths

ROOT = Path(__file__).resolve().parents[1]
NODES, PODS_PER_NODE, SERVICES, FLOWS = 6, 8, 10, 3000



def one_line_error(rc: int, out: str, err: str, *words: str) -> None:
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastpath: error: "), err
    for w in words:
        assert w in lines[0], (w, err)


def read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("habits")
    cluster, trace = d / "cluster.json", d / "trace.arrow"
    assert main(["synth", "cluster", "--nodes", str(NODES), "--pods-per-node", str(PODS_PER_NODE),
                 "--services", str(SERVICES), "-o", str(cluster)]) == 0
    assert main(["synth", "trace", str(cluster), "--flows", str(FLOWS), "-o", str(trace)]) == 0
    return {"dir": d, "cluster": cluster, "trace": trace, "model": fastpath.load_cluster(cluster)}


# --------------------------------------------------------------------------- 2. outputs are what their names say

@pytest.mark.parametrize("name", ["results.csv", "json", "results.txt"])
def test_results_format_follows_the_extension(capsys, small, tmp_path, name):
    rc, out, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "-o", tmp_path / name)
    one_line_error(rc, out, err, name, ".arrow", ".feather", ".parquet")
    assert list(tmp_path.iterdir()) == []                           # nothing written, not even a temporary
    with pytest.raises(FastpathError, match="parquet"):
        replay(small["cluster"], small["trace"], tmp_path / name)


def test_results_parquet_and_feather_are_what_they_say(capsys, small, tmp_path):
    for name in ("r.parquet", "r.feather"):
        rc, _, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "-o", tmp_path / name)
        assert rc == 0, err
    assert pq.read_table(tmp_path / "r.parquet").num_rows == FLOWS           # real Parquet
    assert read_ipc(tmp_path / "r.feather").num_rows == FLOWS                # Arrow IPC (Feather v2)


def test_timeline_format_follows_the_extension(capsys, small, tmp_path):
    """``--timeline`` is an output file like ``-o``: ``.parquet`` is Parquet, ``.arrow``/``.feather`` Arrow
    IPC, any other ending an error before any work, with nothing written."""
    for name in ("tl.parquet", "tl.arrow"):
        rc, _, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "--timeline", tmp_path / name)
        assert rc == 0, err
    as_parquet, as_ipc = pq.read_table(tmp_path / "tl.parquet"), read_ipc(tmp_path / "tl.arrow")
    assert as_parquet.num_rows > 0 and as_parquet.column_names[:2] == ["t", "node"]
    assert as_parquet.equals(as_ipc)
    for name in ("tl.csv", "timeline"):
        rc, out, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "-o", tmp_path / "r.arrow",
                           "--timeline", tmp_path / name)
        one_line_error(rc, out, err, name, ".arrow", ".parquet")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tl.arrow", "tl.parquet"]
    with pytest.raises(FastpathError, match="tl.csv.*parquet"):
        replay(small["cluster"], small["trace"], timeline=tmp_path / "tl.csv", progress=False)


def test_synth_trace_parquet_is_parquet(capsys, small, tmp_path):
    rc, _, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", 500, "-o", tmp_path / "t.parquet")
    assert rc == 0, err
    rc, _, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", 500, "-o", tmp_path / "t.arrow")
    assert rc == 0, err
    from_parquet = pq.read_table(tmp_path / "t.parquet")
    assert from_parquet.num_rows == 500
    assert from_parquet.select(["src_ip", "dst_port", "proto"]).equals(
        read_ipc(tmp_path / "t.arrow").select(["src_ip", "dst_port", "proto"]))
    rc, out, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", 10, "-o", tmp_path / "t.csv")
    one_line_error(rc, out, err, "t.csv", ".parquet")
    assert not (tmp_path / "t.csv").exists()


def test_summary_json_on_stdout_is_json_alone(capsys, small):
    rc, out, err = cli(capsys, "replay", small["cluster"], small["trace"], "--summary-json", "-")
    assert rc == 0, err
    assert json.loads(out)["flows"] == FLOWS                         # stdout: the JSON, nothing else
    assert "flows by verdict" in err                                 # the table went to stderr


def test_dash_is_stdout_for_the_cluster_json(capsys):
    rc, out, err = cli(capsys, "synth", "cluster", "--nodes", 2, "--pods-per-node", 2, "--services", 2, "-o", "-")
    assert rc == 0, err
    assert json.loads(out)["kind"] == "List" and not Path("-").exists()


# --------------------------------------------------------------------------- 3. results that stand alone

def test_results_carry_metadata_and_flows(capsys, small, tmp_path):
    out = tmp_path / "r.arrow"
    rc, _, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "--lb", "maglev", "--seed", 3,
                     "--with-flows", "-o", out)
    assert rc == 0, err
    meta = read_results_metadata(out)
    assert meta["fastpath_version"] == fastpath.__version__
    assert (meta["cluster"], meta["trace"]) == (str(small["cluster"]), str(small["trace"]))
    assert (meta["lb"], meta["seed"], meta["with_flows"]) == ("maglev", 3, True)
    assert meta["options"]["maglev_size"] == 16381
    results, trace = read_ipc(out), read_ipc(small["trace"])
    assert results.column_names[:len(RESULT_SCHEMA)] == RESULT_SCHEMA.names
    for col in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "ts", "dst_name", "bytes", "packets"):
        assert results.column(col).equals(trace.column(col).cast(results.schema.field(col).type)), col
    plain = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "--lb", "maglev", "--seed", 3,
                "-o", tmp_path / "plain.parquet")
    assert plain[0] == 0
    assert pq.read_table(tmp_path / "plain.parquet").column_names == RESULT_SCHEMA.names
    assert read_results_metadata(tmp_path / "plain.parquet")["with_flows"] is False


def test_no_answer_is_null_not_zero(small):
    dp = fastpath.compile_cluster(small["model"])
    res = dp.resolve(read_ipc(small["trace"]))
    unresolved = np.array(res.column("verdict").to_pylist()) == "unresolved"
    assert unresolved.any() and not unresolved.all()
    for col in ("dnat_ip", "dnat_port", "snat_ip"):
        null = res.column(col).is_null().to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(null, unresolved, err_msg=col)
    reason = res.column("reason").to_pylist()
    assert all(r == "no-dns-answer" for r, u in zip(reason, unresolved) if u)


def test_results_doc_covers_every_column_and_reason():
    doc = (ROOT / "docs" / "results.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)`[^|]*\| ([^|]+) \|", doc, re.M)}
    for f in RESULT_SCHEMA:
        assert f.name in rows, f.name
        want = {pa.uint32(): "uint32", pa.uint16(): "uint16", pa.uint8(): "uint8"}.get(f.type)
        if want is None:
            want = f"dictionary<{f.type.index_type}, string>"
        assert rows[f.name].strip() == want, (f.name, rows[f.name])
    for word in REASONS[1:]:
        assert f"| `{word}` |" in doc, word
    for col in ("src_ip", "dst_ip", "proto", "ts", "dst_name", "bytes", "packets"):
        assert f"`{col}`" in doc, col


# --------------------------------------------------------------------------- 4. fastpath ls

def test_ls_pods_services_nodes(capsys, small):
    c = small["model"]
    rc, out, err = cli(capsys, "ls", small["cluster"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "STATUS", "IP", "NODE"] and len(lines) == len(c.pods) + 1
    assert all(p.name in out for p in c.pods)                        # names whole, however long
    rc, out, _ = cli(capsys, "ls", small["cluster"], "svc", "-n", "kube-system", "-o", "wide")
    assert "kube-dns" in out and "10.96.0.10" in out and "dns:53/UDP" in out and "ENDPOINTS" in out
    assert "NAMESPACE" not in out                                    # one namespace: the column goes, as kubectl
    rc, out, _ = cli(capsys, "ls", small["cluster"], "nodes", "-o", "json")
    nodes = json.loads(out)
    assert [n["name"] for n in nodes] == [n.name for n in c.nodes]
    assert sum(n["pods"] for n in nodes) == sum(1 for p in c.pods if p.node)
    rc, out, _ = cli(capsys, "ls", small["cluster"], "pods", "-n", "kube-system", "-o", "name")
    names = out.split()
    assert names and all(n.startswith("pod/kube-system/") for n in names)
    rc, out, err = cli(capsys, "ls", small["cluster"], "secrets")
    assert rc == 2 and "secrets" in err


# --------------------------------------------------------------------------- 5. explain names things as kubectl does

def test_explain_takes_kubectl_names(small):
    c = small["model"]
    dp = fastpath.compile_cluster(c, lb="maglev")
    node = c.nodes[3]
    by_node = explain(dp, node.name, "kube-dns.kube-system", "dns")
    by_ip = explain(dp, fastpath.int_to_ip(node.internal_ip), "10.96.0.10", 53, "udp")
    assert by_node.result == by_ip.result and by_node.result["service"] == "kube-system/kube-dns:dns"
    assert by_node.query["proto"] == "udp"                           # the named port's protocol
    for dst in ("svc/kube-system/kube-dns", "kube-dns.kube-system.svc", "service/kube-system/kube-dns"):
        assert explain(dp, f"node/{node.name}", dst, "dns").result == by_ip.result, dst
    tcp = explain(dp, node.name, "svc/kube-system/kube-dns", "dns-tcp")
    assert tcp.result["service"] == "kube-system/kube-dns:dns-tcp"
    pod = next(p for p in c.pods if p.ip and not p.host_network and any(cp.name for cp in p.ports))
    named = next(cp for cp in pod.ports if cp.name)
    to_pod = explain(dp, node.name, f"pod/{pod.key}", named.name)
    assert (to_pod.result["dst_pod"], to_pod.result["verdict"]) == (pod.key, "delivered")
    with pytest.raises(FastpathError, match="no port named"):
        explain(dp, node.name, "svc/kube-system/kube-dns", "http")
    with pytest.raises(FastpathError, match="no such service"):
        explain(dp, node.name, "svc/shop/nothing", 80)


def test_explain_json_and_exit_code(capsys, small):
    rc, out, err = cli(capsys, "explain", small["cluster"], "--src", "node-001", "--dst", "kube-dns.kube-system",
                       "--dport", "dns", "-o", "json", "--exit-code")
    assert rc == 0, err
    answer = json.loads(out)
    assert answer["disposition"]["verdict"] == "delivered" and answer["disposition"]["reason"] is None
    hops = answer["hops"]
    assert [h["step"] for h in hops] == list(range(1, len(hops) + 1))
    assert all({"step", "node", "table", "key", "result"} <= set(h) for h in hops)
    route = next(h for h in hops if h["stage"] == "route")
    assert route["table"] == "routes" and route["node"] == "node-001" and "->" in route["result"]
    assert hops[-1]["stage"] == "listen" and hops[-1]["result"] == "delivered"
    # a ClusterIP on a port it does not serve: rejected, exit 1 only with --exit-code
    args = ["explain", small["cluster"], "--src", "node-001", "--dst", "10.96.0.10", "--dport", 81]
    assert cli(capsys, *args)[0] == 0
    rc, out, _ = cli(capsys, *args, "--exit-code", "-o", "json")
    d = json.loads(out)["disposition"]
    assert rc == 1 and (d["verdict"], d["reason"]) == ("rejected", "port-not-served")


def _option_helps(argv: list[str]) -> dict[str, str]:
    """Each option of ``fastpath ARGV --help`` with its help text."""
    import argparse

    sub = build_parser()
    for word in argv:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return {a.option_strings[-1]: a.help or "" for a in sub._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("argv", [["explain"], ["synth", "cluster"], ["synth", "trace"], ["ls"], ["bench"]])
def test_every_option_has_help_and_default(argv):
    for opt, text in _option_helps(argv).items():
        assert text, (argv, opt)
        assert "default" in text or "required" in text or opt in ("--no-slices", "--exit-code"), (argv, opt, text)


# --------------------------------------------------------------------------- 6. explain does not change what it explains

@pytest.mark.parametrize("lb", ["round-robin", "least-connection"])
def test_explain_leaves_balancer_state_alone(small, lb):
    c = small["model"]
    batch = read_ipc(small["trace"]).slice(0, 1000)
    dp = fastpath.compile_cluster(c, lb=lb)
    dp.resolve(batch)                                                # some state to keep
    expected = fastpath.compile_cluster(c, lb=lb)
    expected.resolve(batch)
    for _ in range(3):
        explain(dp, "node-001", "kube-dns.kube-system", "dns")
    assert dp.resolve(batch).equals(expected.resolve(batch))
    dp.reset()
    again = fastpath.compile_cluster(c, lb=lb)
    assert dp.resolve(batch).equals(again.resolve(batch))           # reset(): as freshly compiled


@pytest.mark.parametrize("lb", ["random", "source-hash", "maglev"])
def test_stateless_balancers_answer_the_same_twice(small, lb):
    dp = fastpath.compile_cluster(small["model"], lb=lb)
    batch = read_ipc(small["trace"])
    assert dp.resolve(batch).equals(dp.resolve(batch))


# --------------------------------------------------------------------------- 7. one number, one meaning

def test_summary_backends_are_study_backends():
    cluster, trace = sample_paths()
    dp = fastpath.compile_cluster(cluster)
    summary = replay(dp, trace, return_table=True, progress=False)
    table = study.backend_load(summary.table, dp.services).imbalance()
    by_service = dict(zip(table.column("service").to_pylist(),
                          zip(table.column("backends").to_pylist(), table.column("max_over_mean").to_pylist())))
    assert summary.top_services
    for s in summary.top_services:
        backends, mom = by_service[s.service]
        assert s.backends == backends, s.service
        assert s.imbalance == pytest.approx(mom, abs=1e-3), s.service


def test_summary_tables_balancer_and_full_names(small):
    s = replay(small["cluster"], small["trace"], lb="maglev", seed=5, progress=False)
    buf = io.StringIO()
    s.render(console(file=buf))                                      # a pipe: full width
    text = buf.getvalue()
    assert "flows by verdict" in text and "flows by path" in text and "flows by verdict and path" not in text
    assert "maglev, seed 5" in text
    assert "Ready endpoints" in text                                 # the header says what backends count
    for svc in s.top_services:
        assert svc.service in text, svc.service                      # never cut
    assert "…" not in text


# --------------------------------------------------------------------------- 8. library objects print usefully

def test_reprs_are_one_line(small):
    c = small["model"]
    dp = fastpath.compile_cluster(c)
    load = study.backend_load(dp.resolve(read_ipc(small["trace"])), dp.services)
    for obj, start in ((c, f"Cluster({NODES} nodes, {len(c.pods)} pods, {len(c.services)} services"),
                       (dp, f"DataPlane({NODES} nodes, {len(c.pods)} pods"),
                       (load, "BackendLoad(")):
        text = repr(obj)
        assert text.startswith(start) and "\n" not in text and len(text) < 200, text
    assert f"{int(load.flows.sum()):,} flows" in repr(load)


# --------------------------------------------------------------------------- 9. smaller habits

def test_version(capsys):
    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and out.strip() == f"fastpath {fastpath.__version__}"


def test_proto_as_text(small, tmp_path):
    trace = read_ipc(small["trace"]).slice(0, 500)
    names = {6: "tcp", 17: "UDP", 132: "sctp"}
    texty = trace.set_column(trace.schema.get_field_index("proto"), "proto",
                             pa.array([names[p] for p in trace.column("proto").to_pylist()]))
    dp = fastpath.compile_cluster(small["model"])
    assert dp.resolve(texty).equals(dp.resolve(trace))
    pq.write_table(texty, tmp_path / "t.parquet")
    assert replay(dp, tmp_path / "t.parquet", progress=False).flows == 500
    bad = texty.set_column(texty.schema.get_field_index("proto"), "proto", pa.array(["tcp"] * 499 + ["icmp"]))
    with pytest.raises(FastpathError, match=r"'proto' holds 'icmp' at row 499"):
        dp.resolve(bad)


def test_timestamps_in_errors_are_iso8601():
    cols = {"src_ip": ["10.0.0.1"] * 2, "dst_ip": ["10.0.0.2"] * 2, "src_port": [1, 2], "dst_port": [80, 80],
            "proto": [6, 6], "ts": np.array([1_700_000_000_000_000_000, 1_699_999_999_000_000_000])}
    with pytest.raises(FastpathError, match=r"2023-11-14T22:13:19\.000000000Z .* after 2023-11-14T22:13:20"):
        fastpath.normalize_batch(cols, "t.arrow")


def test_no_color_means_no_escape_codes(small, monkeypatch):
    s = replay(small["cluster"], small["trace"], progress=False)
    monkeypatch.setenv("FORCE_COLOR", "1")                          # as a terminal would be
    monkeypatch.delenv("NO_COLOR", raising=False)
    buf = io.StringIO()
    s.render(console(file=buf))
    assert "\x1b[" in buf.getvalue()                                 # styled by default ...
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    s.render(console(file=buf))
    assert "\x1b[" not in buf.getvalue() and "flows by verdict" in buf.getvalue()   # ... and not at all here


def test_trace_mix_from_the_cli(capsys, small, tmp_path):
    rc, _, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", 400, "--mix", "ts_type=int64",
                     "--mix", "east_west=0", "--mix", "by_name=1", "--mix", "missing_names=1",
                     "-o", tmp_path / "t.arrow")
    assert rc == 0, err
    t = read_ipc(tmp_path / "t.arrow")
    assert t.schema.field("ts").type == pa.int64()
    assert t.column("dst_ip").null_count > 0                         # by-name flows dominate
    rc, out, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", 10, "--mix", "nonsense=1",
                       "-o", tmp_path / "u.arrow")
    one_line_error(rc, out, err, "nonsense", "east_west")


def test_churn_per_service_names_pods(small):
    c = small["model"]
    flows = read_ipc(small["trace"])
    dp = fastpath.compile_cluster(c)
    e = int(np.flatnonzero((dp.services.ep_pod >= 0) & dp.services.ep_ready)[0])
    pod = dp.services.pod_names[int(dp.services.ep_pod[e])]
    table = study.churn_by_service(c, flows, pod, lb=["maglev", "random"])
    assert set(table.column_names) >= {"lb", "service", "flows", "moved", "share", "removed"}
    rows = [r for r in table.to_pylist() if pod in r["removed"]]
    assert rows and all(r["backends_after"] < r["backends_before"] for r in rows)
    total = {lb: study.churn(c, flows, pod, lb=lb)[lb] for lb in ("maglev", "random")}
    for lb in ("maglev", "random"):
        mine = [r for r in table.to_pylist() if r["lb"] == lb]
        assert sum(r["moved"] for r in mine) / sum(r["flows"] for r in mine) == pytest.approx(total[lb])
    load = study.backend_load(dp.resolve(flows), dp.services).to_arrow()
    assert pod in load.column("pod").to_pylist()


def test_bench_peers_and_units():
    from fastpath import benchdata, benchmark
    from fastpath.tables.lpm import RouteTable

    routes = benchdata.cluster_route_table(50)
    rt = RouteTable.from_arrays(*routes)
    dst = benchdata.destinations_in(routes.prefixes[routes.lengths > 0], routes.lengths[routes.lengths > 0], 20_000)
    rows = benchmark._peers("cluster /24 per node, 50 nodes", routes, rt, dst, quick=True)
    names = [r[0] for r in rows]
    assert any("numpy.searchsorted" in n for n in names) and any("pytricia" in n for n in names)
    assert all(r[3] == "M lookups/s" for r in rows if r[2] == r[2])
    assert "busy" in benchmark.THREADS_NOTE
