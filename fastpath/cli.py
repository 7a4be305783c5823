"""The ``fastpath`` command: synth, replay, explain, bench.

User errors (bad files, objects, columns, values) print one line naming what is
at fault and exit with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import FastpathError

#: Balancers ``--lb`` accepts.
BALANCERS = ("random", "round-robin", "source-hash", "maglev", "least-connection")
#: Exit status of a user error.
EXIT_USAGE = 2


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return v


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lb", choices=BALANCERS, default="random",
                   help="kube-proxy backend choice (default: random, as iptables/nftables)")
    p.add_argument("--seed", type=int, default=0, help="seed of the emulated randomness (default 0)")
    p.add_argument("--maglev-size", type=_positive, default=16381,
                   help="Maglev lookup table size, a prime (default 16381, Cilium's)")
    p.add_argument("--conn-duration", type=float, default=30.0,
                   help="seconds a connection stays open, for least-connection (default 30)")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``fastpath ...: error: ...``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        where = self.prog.partition(" ")[2]
        self.exit(EXIT_USAGE, f"fastpath: error: {where + ': ' if where else ''}{message} "
                              f"(see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="fastpath",
        description="Emulate the Kubernetes data plane over millions of flows: routes, bridges, kube-proxy.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    syn = sub.add_parser("synth", help="make a synthetic cluster or trace")
    ssub = syn.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    ssub.required = True
    sc = ssub.add_parser("cluster", help="a synthetic cluster as a kubectl v1 List (JSON)")
    sc.add_argument("--nodes", type=_positive, required=True)
    sc.add_argument("--pods-per-node", type=_nonneg, required=True)
    sc.add_argument("--services", type=_nonneg, required=True)
    sc.add_argument("--namespaces", type=_positive, default=8)
    sc.add_argument("--zones", type=_positive, default=3)
    sc.add_argument("--addressing", choices=("bridge", "calico"), default="bridge",
                    help="bridge: a /24 pod CIDR per node; calico: /26 blocks on demand")
    sc.add_argument("--no-slices", action="store_true",
                    help="leave EndpointSlices out (fastpath derives them from selectors)")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("-o", "--output", required=True, type=Path)
    st = ssub.add_parser("trace", help="a synthetic trace (Arrow IPC) for a cluster")
    st.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster file or directory")
    st.add_argument("--flows", type=_positive, required=True)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("-o", "--output", required=True, type=Path)

    rp = sub.add_parser("replay", help="resolve every flow of a trace; write results and a summary")
    rp.add_argument("cluster", nargs="?", type=Path, metavar="CLUSTER", help="cluster file or directory (default: bundled sample)")
    rp.add_argument("trace", nargs="?", type=Path, metavar="TRACE", help="trace file or directory (default: bundled sample)")
    rp.add_argument("-o", "--output", type=Path, help="results file (.arrow/.feather or .parquet)")
    _service_args(rp)
    rp.add_argument("--batch-size", type=_positive, default=None, help="flows per batch (default 65536)")
    rp.add_argument("--threads", type=_positive, default=None, help="kernel threads (default: all cores)")
    rp.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    rp.add_argument("--summary-json", type=Path, help="also write the summary as JSON here ('-' for stdout)")

    ex = sub.add_parser("explain", help="one flow, hop by hop")
    ex.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster file or directory")
    ex.add_argument("--src", required=True, help="client IP or pod (namespace/name)")
    ex.add_argument("--dst", required=True, help="destination IP, pod, or DNS name")
    ex.add_argument("--dport", type=_nonneg, required=True)
    ex.add_argument("--sport", type=_nonneg, default=40000)
    ex.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    _service_args(ex)

    be = sub.add_parser("bench", help="measure lookups/s and flows/s on this machine")
    be.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    be.add_argument("--threads", type=_positive, default=None, help="threads for the all-cores rows")
    return ap


def _cmd_synth(a) -> int:
    if a.what == "cluster":
        from .cluster.synth import synth_cluster, write_cluster

        obj = synth_cluster(a.nodes, a.pods_per_node, a.services, namespaces=a.namespaces, zones=a.zones,
                            seed=a.seed, addressing=a.addressing, slices=not a.no_slices)
        write_cluster(obj, a.output)
        print(f"wrote {a.output}: {len(obj['items'])} objects")
        return 0
    from .cluster.load import load_cluster
    from .traces import synth_trace

    cluster = load_cluster(a.cluster)
    n = synth_trace(cluster, a.flows, seed=a.seed, out=a.output)
    print(f"wrote {a.output}: {n} flows")
    return 0


def _service_opts(a) -> dict:
    return dict(lb=a.lb, seed=a.seed, maglev_size=a.maglev_size, conn_duration=a.conn_duration)


def _cmd_replay(a) -> int:
    from .replay import replay, sample_paths

    if (a.cluster is None) != (a.trace is None):
        raise FastpathError("replay: give both CLUSTER and TRACE, or neither for the bundled sample")
    cluster, trace = (a.cluster, a.trace) if a.cluster else sample_paths()
    opts = _service_opts(a)
    if a.batch_size:
        opts["batch_size"] = a.batch_size
    summary = replay(cluster, trace, a.output, threads=a.threads, progress=not a.quiet, **opts)
    if not a.quiet:
        summary.render()
    if a.summary_json:
        text = json.dumps(summary.to_dict(), indent=2)
        if str(a.summary_json) == "-":
            print(text)
        else:
            a.summary_json.write_text(text + "\n")
    return 0


def _cmd_explain(a) -> int:
    from .cluster.compile import compile_cluster
    from .explain import explain

    dp = compile_cluster(a.cluster, **_service_opts(a))
    print(explain(dp, a.src, a.dst, a.dport, a.proto, a.sport).render())
    return 0


def _cmd_bench(a) -> int:
    from .benchmark import run

    run(quick=a.quick, threads=a.threads)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastpath`` console script."""
    ap = build_parser()
    a = ap.parse_args(argv)
    handlers = {"synth": _cmd_synth, "replay": _cmd_replay, "explain": _cmd_explain, "bench": _cmd_bench}
    try:
        return handlers[a.command](a)
    except FastpathError as e:
        if a.debug:
            raise
        print(f"fastpath: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if a.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"fastpath: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastpath: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
