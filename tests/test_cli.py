"""The ``fastpath`` command line: help, synth, replay, explain, and how bad input fails.

Most checks call :func:`fastpath.cli.main` in-process (it returns the exit status;
argparse's own errors and ``--help`` raise ``SystemExit``); one end-to-end check
runs the installed console script in a subprocess. Clusters and traces are small
(6 nodes, 3,000 flows) so the file stays fast on two cores. ``fastpath bench`` is
not run here: it is slow by design, and bench/ covers it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from clirun import cli
from fastpath.cli import BALANCERS, main
from fastpath.cluster.compile import compile_cluster
from fastpath.cluster.load import load_cluster
from fastpath.errors import FastpathError
from fastpath.replay import sample_paths

#: Size of the small synthetic cluster and trace the replay checks use.
NODES, PODS_PER_NODE, SERVICES, FLOWS = 6, 8, 10, 3000
#: Columns every synthetic trace carries.
TRACE_COLUMNS = {"src_ip", "dst_ip", "src_port", "dst_port", "proto", "ts", "dst_name", "bytes", "packets"}
#: Columns of a results file (interfaces.md "Results out"), in order.
RESULT_COLUMNS = ["verdict", "reason", "path", "src_node", "dst_node", "src_pod", "dst_pod", "service",
                  "dnat_ip", "dnat_port", "snat_ip", "hops"]



def read_results(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


def assert_one_line_error(rc: int, out: str, err: str, *names: str) -> None:
    """Status 2, nothing on stdout, exactly one stderr line that names every one of ``names``."""
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastpath: error: "), err
    for name in names:
        assert name in lines[0], (name, err)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A small cluster and trace, made through the CLI."""
    d = tmp_path_factory.mktemp("small")
    cluster, trace = d / "cluster.json", d / "trace.arrow"
    assert main(["synth", "cluster", "--nodes", str(NODES), "--pods-per-node", str(PODS_PER_NODE),
                 "--services", str(SERVICES), "-o", str(cluster)]) == 0
    assert main(["synth", "trace", str(cluster), "--flows", str(FLOWS), "-o", str(trace)]) == 0
    return {"dir": d, "cluster": cluster, "trace": trace}


@pytest.fixture(scope="module")
def by_lb(small) -> dict[str, tuple[pa.Table, dict]]:
    """The small trace replayed with every balancer: lb -> (results, summary JSON)."""
    runs = {}
    for lb in BALANCERS:
        out, sj = small["dir"] / f"results-{lb}.arrow", small["dir"] / f"summary-{lb}.json"
        rc = main(["replay", str(small["cluster"]), str(small["trace"]), "--lb", lb, "--quiet",
                   "-o", str(out), "--summary-json", str(sj)])
        assert rc == 0, lb
        runs[lb] = (read_results(out), json.loads(sj.read_text()))
    return runs


# --------------------------------------------------------------------------- help

HELP = {
    (): ["--debug", "synth", "replay", "explain", "bench"],
    ("synth",): ["cluster", "trace"],
    ("synth", "cluster"): ["--nodes", "--pods-per-node", "--services", "--seed", "--addressing", "--output"],
    ("synth", "trace"): ["cluster", "--flows", "--seed", "--output"],
    ("replay",): ["cluster", "trace", "--output", "--lb", "--seed", "--maglev-size", "--conn-duration",
                  "--batch-size", "--threads", "--quiet", "--summary-json"],
    ("explain",): ["cluster", "--src", "--dst", "--dport", "--sport", "--proto", "--lb"],
    ("bench",): ["--quick", "--threads"],
}


@pytest.mark.parametrize("words", list(HELP), ids=lambda w: " ".join(w) or "fastpath")
def test_help_names_the_options(capsys, words):
    rc, out, err = cli(capsys, *words, "--help")
    assert rc == 0, err
    assert out.startswith("usage: fastpath"), out
    for opt in HELP[words]:
        assert opt in out, (opt, out)


def test_no_command_is_a_usage_error(capsys):
    rc, out, err = cli(capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "COMMAND" in err and "--help" in err


# --------------------------------------------------------------------------- synth

@pytest.mark.parametrize("addressing", ["bridge", "calico"])
def test_synth_cluster_writes_a_loadable_cluster(capsys, tmp_path, addressing):
    out = tmp_path / "c.json"
    rc, stdout, err = cli(capsys, "synth", "cluster", "--nodes", 4, "--pods-per-node", 5, "--services", 3,
                          "--addressing", addressing, "-o", out)
    assert rc == 0, err
    assert str(out) in stdout
    cluster = load_cluster(out)
    assert len(cluster.nodes) == 4
    assert len(cluster.pods) == 4 * 5
    assert len(cluster.services) == 3
    if addressing == "bridge":
        assert all(len(n.pod_cidrs) == 1 and n.pod_cidrs[0][1] == 24 for n in cluster.nodes)
    else:  # Calico-style: no podCIDR on the nodes, pods from /26 blocks
        assert all(n.pod_cidrs == () for n in cluster.nodes)
    compile_cluster(cluster)  # and it compiles


@pytest.mark.parametrize("value, why", [("0", "must be positive"), ("x", "not a whole number"),
                                        ("-3", "must be positive")])
def test_synth_cluster_bad_values(capsys, tmp_path, value, why):
    out = tmp_path / "c.json"
    rc, stdout, err = cli(capsys, "synth", "cluster", "--nodes", value, "--pods-per-node", 8,
                          "--services", 10, "-o", out)
    assert rc == 2
    assert stdout == ""
    last = err.strip().splitlines()[-1]
    assert "--nodes" in last and why in last, err
    assert not out.exists()


def test_synth_cluster_bad_value_is_one_line(capsys, tmp_path):
    rc, out, err = cli(capsys, "synth", "cluster", "--nodes", "0", "--pods-per-node", 8, "--services", 10,
                       "-o", tmp_path / "c.json")
    assert_one_line_error(rc, out, err, "--nodes")


def test_synth_trace_rows_columns_and_repeatability(capsys, small, tmp_path):
    a, b, c = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "c.arrow"
    for path, seed in ((a, 7), (b, 7), (c, 8)):
        rc, out, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", 2500, "--seed", seed, "-o", path)
        assert rc == 0, err
        assert f"{2500} flows" in out
    table = feather.read_table(a)
    assert table.num_rows == 2500
    assert TRACE_COLUMNS <= set(table.column_names)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_synth_trace_bad_flows(capsys, small, tmp_path):
    rc, out, err = cli(capsys, "synth", "trace", small["cluster"], "--flows", "0", "-o", tmp_path / "t.arrow")
    assert rc == 2 and "--flows" in err
    assert not (tmp_path / "t.arrow").exists()


# --------------------------------------------------------------------------- replay

def test_replay_bundled_sample(capsys, tmp_path):
    out, sj = tmp_path / "results.arrow", tmp_path / "summary.json"
    rc, stdout, err = cli(capsys, "replay", "-o", out, "--summary-json", sj)
    assert rc == 0, err
    assert "flows by verdict" in stdout and "flows by path" in stdout     # the summary tables
    cluster, trace = sample_paths()
    with pa.memory_map(str(trace)) as src:
        trace_rows = pa.ipc.open_file(src).read_all().num_rows
    results = read_results(out)
    assert results.column_names == RESULT_COLUMNS
    assert results.num_rows == trace_rows
    summary = json.loads(sj.read_text())
    assert summary["flows"] == trace_rows
    assert sum(summary["by_verdict"].values()) == trace_rows
    assert sum(summary["by_path"].values()) == trace_rows
    counted = Counter(results.column("verdict").to_pylist())
    assert {k: v for k, v in summary["by_verdict"].items() if v} == dict(counted)
    assert summary["output"] == str(out)
    assert Path(summary["cluster"]).name == cluster.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.arrow", "summary.json"]  # no temporary left


def test_replay_quiet_prints_no_table(capsys, small):
    rc, out, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet")
    assert rc == 0, err
    assert out == ""
    rc, out, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "--summary-json", "-")
    assert rc == 0, err
    summary = json.loads(out)                         # stdout is the JSON and nothing else
    assert summary["flows"] == FLOWS and summary["output"] is None


def test_replay_every_balancer(by_lb):
    for lb, (results, summary) in by_lb.items():
        assert results.num_rows == FLOWS, lb
        assert results.column_names == RESULT_COLUMNS
        assert summary["lb"] == lb and summary["flows"] == FLOWS
        assert sum(summary["by_verdict"].values()) == FLOWS


def test_maglev_and_random_differ_only_on_service_flows(by_lb):
    rnd, mag = by_lb["random"][0].to_pydict(), by_lb["maglev"][0].to_pydict()
    assert rnd["service"] == mag["service"]           # the frontend hit does not depend on the balancer
    service_rows = [i for i, s in enumerate(rnd["service"]) if s is not None]
    other_rows = [i for i, s in enumerate(rnd["service"]) if s is None]
    assert len(service_rows) > 100 and len(other_rows) > 100
    differ = [i for i in service_rows
              if (rnd["dnat_ip"][i], rnd["dnat_port"][i]) != (mag["dnat_ip"][i], mag["dnat_port"][i])]
    assert differ, "maglev picked the same backend as random for every service flow"
    for col in RESULT_COLUMNS:                        # non-service flows: row for row the same
        assert [rnd[col][i] for i in other_rows] == [mag[col][i] for i in other_rows], col
    assert Counter(rnd["verdict"][i] for i in other_rows) == Counter(mag["verdict"][i] for i in other_rows)


def test_replay_parquet_output(capsys, small, by_lb, tmp_path):
    out = tmp_path / "results.parquet"
    rc, _, err = cli(capsys, "replay", small["cluster"], small["trace"], "--quiet", "-o", out)
    assert rc == 0, err
    assert out.read_bytes()[:4] == b"PAR1"
    table = pq.read_table(out)
    assert table.num_rows == FLOWS
    assert table.column_names == RESULT_COLUMNS
    arrow = by_lb["random"][0]
    for col in ("verdict", "path", "dst_pod", "service", "dnat_ip", "hops"):
        assert table.column(col).to_pylist() == arrow.column(col).to_pylist(), col


def test_replay_cluster_without_trace(capsys, small, tmp_path):
    rc, out, err = cli(capsys, "replay", small["cluster"], "-o", tmp_path / "r.arrow")
    assert_one_line_error(rc, out, err, "TRACE")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad input

def _truncated_trace(small, d: Path) -> tuple[list, list[str]]:
    data = small["trace"].read_bytes()
    half = d / "half.arrow"
    half.write_bytes(data[: len(data) // 2])
    return [small["cluster"], half], ["half.arrow"]


def _trace_without_src_port(small, d: Path) -> tuple[list, list[str]]:
    path = d / "no-sport.arrow"
    feather.write_feather(feather.read_table(small["trace"]).drop(["src_port"]), str(path))
    return [small["cluster"], path], ["no-sport.arrow", "src_port"]


def _bad_pod_ip(small, d: Path) -> tuple[list, list[str]]:
    objs = json.loads(small["cluster"].read_text())
    pod = next(o for o in objs["items"] if o["kind"] == "Pod" and not o["spec"].get("hostNetwork")
               and o.get("status", {}).get("podIP"))
    pod["status"]["podIP"] = "10.244.1.999"
    pod["status"]["podIPs"] = [{"ip": "10.244.1.999"}]
    path = d / "bad-ip.json"
    path.write_text(json.dumps(objs))
    return [path, small["trace"]], ["bad-ip.json", "10.244.1.999", pod["metadata"]["name"]]


def _missing_cluster(small, d: Path) -> tuple[list, list[str]]:
    return [d / "no-such-cluster.json", small["trace"]], ["no-such-cluster.json"]


BAD_INPUTS = {"missing-cluster": _missing_cluster, "truncated-trace": _truncated_trace,
              "no-src-port": _trace_without_src_port, "bad-pod-ip": _bad_pod_ip}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_and_no_results_file(capsys, small, tmp_path, case):
    args, names = BAD_INPUTS[case](small, tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    rc, out, err = cli(capsys, "replay", *args, "--quiet", "-o", outdir / "results.arrow")
    assert_one_line_error(rc, out, err, *names)
    assert list(outdir.iterdir()) == []               # no results file, no temporary left over


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_debug_raises(small, tmp_path, case):
    args, names = BAD_INPUTS[case](small, tmp_path)
    with pytest.raises(FastpathError) as info:
        main(["--debug", "replay", *map(str, args), "--quiet", "-o", str(tmp_path / "results.arrow")])
    assert names[0] in str(info.value)
    assert not (tmp_path / "results.arrow").exists()


# --------------------------------------------------------------------------- explain

@pytest.fixture(scope="module")
def sample():
    """The bundled sample: (cluster path, compiled plane, a pod that declares a port)."""
    path, _ = sample_paths()
    cluster = load_cluster(path)
    dp = compile_cluster(cluster)
    pod = next(p for p in cluster.pods if p.ip and p.node and not p.host_network and p.ports)
    return path, dp, pod


def resolve_one(dp, src_ip: int, dst: str | int, dport: int, proto: int, sport: int = 40000) -> dict:
    """What ``dp.resolve`` gives for one flow (``dst`` an address, or a DNS name)."""
    cols = {"src_ip": pa.array([src_ip], pa.uint32()), "src_port": pa.array([sport], pa.uint16()),
            "dst_port": pa.array([dport], pa.uint16()), "proto": pa.array([proto], pa.uint8())}
    if isinstance(dst, str):
        cols["dst_ip"] = pa.array([None], pa.uint32())
        cols["dst_name"] = pa.array([dst], pa.string())
    else:
        cols["dst_ip"] = pa.array([dst], pa.uint32())
    return dp.resolve(pa.record_batch(cols)).to_pylist()[0]


def result_text(row: dict) -> str:
    text = f"{row['verdict']}, path {row['path']}, hops {row['hops']}"
    text += f", service {row['service']}" if row["service"] else ""
    return text + (f", reason {row['reason']}" if row.get("reason") else "")


def stages(output: str) -> list[str]:
    """The stage column of ``explain``'s output, in order (first line is the flow)."""
    lines = output.strip().splitlines()
    assert lines[0].startswith("flow "), output
    return [line.split()[0] for line in lines[1:]]


def result_line(output: str) -> str:
    last = output.strip().splitlines()[-1].split(None, 1)
    assert last[0] == "result", output
    return last[1]


def test_explain_pod_to_service_by_name(capsys, sample):
    path, dp, pod = sample
    rc, out, err = cli(capsys, "explain", path, "--src", pod.key, "--dst", "kube-dns.kube-system",
                       "--dport", 53, "--proto", "udp")
    assert rc == 0, err
    seen = stages(out)
    order = ["source", "dns", "service", "route", "neighbour", "fdb", "listen", "result"]
    assert [s for i, s in enumerate(seen) if s in order and (i == 0 or seen[i - 1] != s)] == order, out
    if "forward" in seen:                             # a cross-node hop sits between route and neighbour
        assert seen.index("route") < seen.index("forward") < seen.index("neighbour")
    expect = resolve_one(dp, pod.ip, "kube-dns.kube-system", 53, 17)
    assert expect["service"] == "kube-system/kube-dns:dns" and expect["verdict"] == "delivered"
    assert result_line(out) == result_text(expect)
    assert expect["dst_pod"] in out and "10.96.0.10" in out


def test_explain_loopback(capsys, sample):
    path, dp, pod = sample
    port, proto = pod.ports[0].port, pod.ports[0].proto
    pname = {6: "tcp", 17: "udp", 132: "sctp"}[proto]
    rc, out, err = cli(capsys, "explain", path, "--src", pod.key, "--dst", "127.0.0.1", "--dport", port,
                       "--proto", pname)
    assert rc == 0, err
    assert stages(out) == ["source", "loopback", "listen", "result"]
    expect = resolve_one(dp, pod.ip, int(0x7F000001), port, proto)
    assert (expect["verdict"], expect["path"]) == ("delivered", "loopback")
    assert result_line(out) == result_text(expect)


def test_explain_egress_is_masqueraded(capsys, sample):
    path, dp, pod = sample
    rc, out, err = cli(capsys, "explain", path, "--src", pod.key, "--dst", "8.8.8.8", "--dport", 443)
    assert rc == 0, err
    expect = resolve_one(dp, pod.ip, 0x08080808, 443, 6)
    assert (expect["verdict"], expect["path"]) == ("egress", "external")
    assert result_line(out) == result_text(expect)
    assert "snat" in stages(out)
    assert "masquerade" in out
    node_ip = next(n.internal_ip for n in load_cluster(path).nodes if n.name == pod.node)
    assert f"{node_ip >> 24}.{node_ip >> 16 & 255}.{node_ip >> 8 & 255}.{node_ip & 255}" in out


def test_explain_clusterip_on_unserved_port(capsys, sample):
    path, dp, pod = sample
    rc, out, err = cli(capsys, "explain", path, "--src", pod.key, "--dst", "10.96.0.10", "--dport", 80)
    assert rc == 0, err
    seen = stages(out)
    assert seen[0] == "source" and seen[-1] == "result"
    assert set(seen[1:-1]) == {"service"}, out        # the walk stops at kube-proxy: no route line
    assert "rejected" in out
    expect = resolve_one(dp, pod.ip, 0x0A60000A, 80, 6)
    assert expect["verdict"] == "rejected"
    assert result_line(out) == result_text(expect)


def test_explain_unknown_name_is_unresolved(capsys, sample):
    path, dp, pod = sample
    rc, out, err = cli(capsys, "explain", path, "--src", pod.key, "--dst", "no-such-service.nowhere",
                       "--dport", 80)
    assert rc == 0, err
    assert stages(out) == ["source", "dns", "result"]
    assert result_line(out) == "unresolved, path none, hops 0, reason no-dns-answer"


@pytest.mark.parametrize("flag, value", [("--src", "shop/no-such-pod"), ("--src", "10.244.0.300"),
                                         ("--dst", "10.96.0.300")])
def test_explain_bad_endpoint(capsys, sample, flag, value):
    path, _, pod = sample
    args = {"--src": pod.key, "--dst": "10.96.0.10"}
    args[flag] = value
    rc, out, err = cli(capsys, "explain", path, "--src", args["--src"], "--dst", args["--dst"], "--dport", 53)
    assert_one_line_error(rc, out, err, value)


def test_explain_unknown_destination_pod(capsys, sample):
    path, _, pod = sample
    rc, out, err = cli(capsys, "explain", path, "--src", pod.key, "--dst", "shop/no-such-pod", "--dport", 80)
    assert_one_line_error(rc, out, err, "shop/no-such-pod")


def test_explain_missing_cluster(capsys, tmp_path):
    rc, out, err = cli(capsys, "explain", tmp_path / "nope.json", "--src", "10.0.0.1", "--dst", "10.0.0.2",
                       "--dport", 80)
    assert_one_line_error(rc, out, err, "nope.json")


# --------------------------------------------------------------------------- console script

def _console_script() -> list[str]:
    exe = Path(sys.executable).with_name("fastpath")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("fastpath")
    return [found] if found else [sys.executable, "-m", "fastpath.cli"]


def test_console_script_end_to_end(small, tmp_path):
    """The installed entry point: a replay's summary on stdout, and status 2 on bad input."""
    cmd = _console_script()
    ok = subprocess.run([*cmd, "replay", str(small["cluster"]), str(small["trace"]), "--quiet",
                         "-o", str(tmp_path / "r.arrow"), "--summary-json", "-"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["flows"] == FLOWS
    assert read_results(tmp_path / "r.arrow").num_rows == FLOWS
    bad = subprocess.run([*cmd, "replay", str(tmp_path / "missing.json"), str(small["trace"]), "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert_one_line_error(bad.returncode, bad.stdout, bad.stderr, "missing.json")
