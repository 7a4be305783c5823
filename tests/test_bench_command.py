"""``fastpath bench --quick`` measures and prints every workload it promises."""
from fastpath.cli import main


def test_bench_quick_prints_every_workload(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTPATH_SHARED", str(tmp_path))   # RouteViews optional: the row may be absent
    assert main(["bench", "--quick", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    for workload in ("LPM cluster /24 per node", "LPM Calico", "pipeline pod-to-pod", "synth + load + compile"):
        assert workload in out, workload
    for peer in ("peer: numpy.searchsorted", "peer: pytricia", "M lookups/s", "M flows/s", "busy"):
        assert peer in out, peer                     # peer rows, units, and why 2 threads can be slower
