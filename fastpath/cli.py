"""The ``fastpath`` command: synth, replay, explain, bench.

User errors (bad files, objects, columns, values) print one line naming what is
at fault and exit with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FastpathError, Interrupted, one_line

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


def _seed(text: str) -> int:
    """A seed: a whole number 0 .. 2**64-1 (the same range for every command)."""
    v = _nonneg(text)
    if v >= 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is over 2**64-1")
    return v


def _port_number(text: str) -> int:
    """A source port: a whole number 0..65535."""
    v = _nonneg(text)
    if v > 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0..65535")
    return v


def _cidr_list(text: str) -> list[str]:
    """``--non-masquerade-cidrs``: comma-separated IPv4 CIDRs (an empty string: none)."""
    from .addr import parse_cidr

    out = [c.strip() for c in text.split(",") if c.strip()]
    for c in out:
        try:
            parse_cidr(c, strict=False)
        except FastpathError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return out


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lb", choices=BALANCERS, default="random",
                   help="kube-proxy backend choice (default: random, as iptables/nftables)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the emulated randomness (default 0)")
    p.add_argument("--maglev-size", type=_positive, default=16381,
                   help="Maglev lookup table size, a prime (default 16381, Cilium's)")
    p.add_argument("--conn-duration", type=float, default=30.0,
                   help="seconds a TCP/SCTP connection lives where the trace gives no 'duration' "
                        "(UDP: 0, a query and its answer); least-connection counts it open that long, "
                        "ClientIP affinity stays in use that long, conntrack holds it that long plus its "
                        "closing timeout (default 30)")
    p.add_argument("--non-masquerade-cidrs", type=_cidr_list, default=None, metavar="CIDR,...",
                   help="destinations a pod's egress keeps its own address for, as ip-masq-agent's "
                        "nonMasqueradeCIDRs (default: the input's ip-masq-agent ConfigMap if it has one, "
                        "else every pod's egress is SNATed to its node IP)")
    p.add_argument("--expand-workloads", action="store_true",
                   help="place pods for Deployments, StatefulSets, DaemonSets, Jobs, ... that have none "
                        "(manifests without a running cluster) (default: off)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the compiled-table cache (~/.cache/fastpath, or "
                        "$FASTPATH_CACHE_DIR): load and compile the cluster every time")


def _version() -> str:
    from . import __version__

    return __version__


def _port_or_name(text: str) -> int | str:
    """A port number 0..65535, or a port name (IANA_SVC_NAME: letters, digits, '-')."""
    if text.isdigit():
        v = int(text)
        if v > 0xFFFF:
            raise argparse.ArgumentTypeError(f"{text!r} is outside 0..65535")
        return v
    if not text or len(text) > 15 or not all(ch.isalnum() or ch == "-" for ch in text) or text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is neither a port number nor a port name")
    return text


def _mix_knobs() -> str:
    from dataclasses import fields

    from .traces.synth import TraceMix

    return ", ".join(f"{f.name} [{f.default}]" for f in fields(TraceMix))


def _parse_mix(items: list[str]) -> dict:
    """``--mix KNOB=VALUE`` pairs as keyword knobs of :class:`fastpath.traces.TraceMix` (checked there)."""
    from dataclasses import fields

    from .traces.synth import TraceMix

    types = {f.name: type(f.default) for f in fields(TraceMix)}
    knobs: dict = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in types:
            raise FastpathError(f"--mix {item!r}: expected KNOB=VALUE with a knob of: {', '.join(types)}")
        try:
            if types[name] is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                knobs[name] = value.lower() in ("true", "1", "yes")
            elif types[name] is int:
                knobs[name] = int(float(value))
            else:
                knobs[name] = types[name](value)
        except ValueError:
            raise FastpathError(f"--mix {item!r}: {value!r} is not a {types[name].__name__}") from None
    return knobs


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
    ap.add_argument("--version", action="version", version=f"fastpath {_version()}",
                    help="print fastpath's version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    syn = sub.add_parser("synth", help="make a synthetic cluster, trace or events file")
    ssub = syn.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    ssub.required = True
    sc = ssub.add_parser("cluster", help="a synthetic cluster as a kubectl v1 List (JSON)")
    sc.add_argument("--nodes", type=_positive, required=True, help="nodes (required)")
    sc.add_argument("--pods-per-node", type=_nonneg, required=True,
                    help="application pods per node, besides the DaemonSet pods (required)")
    sc.add_argument("--services", type=_nonneg, required=True, help="services (required)")
    sc.add_argument("--namespaces", type=_positive, default=8,
                    help="application namespaces, besides default, kube-system, monitoring (default 8)")
    sc.add_argument("--zones", type=_positive, default=3, help="topology zones the nodes spread over (default 3)")
    sc.add_argument("--addressing", choices=("bridge", "calico"), default="bridge",
                    help="bridge: a /24 pod CIDR per node; calico: /26 blocks on demand (default bridge)")
    sc.add_argument("--policies", type=_nonneg, default=0,
                    help="also make N NetworkPolicies: namespace isolation, per-app allow lists, a few ipBlocks (default 0: none)")
    sc.add_argument("--no-slices", action="store_true",
                    help="leave EndpointSlices out (fastpath derives them from selectors)")
    sc.add_argument("--seed", type=_seed, default=0, help="random seed: same seed, same cluster (default 0)")
    sc.add_argument("-o", "--output", required=True, type=Path,
                    help="where to write the cluster JSON ('-' for stdout; required)")
    st = ssub.add_parser("trace", help="a synthetic trace for a cluster (Arrow IPC or Parquet, by extension)",
                         epilog="trace mix knobs for --mix (TraceMix; default in brackets): " + _mix_knobs())
    st.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster file or directory")
    st.add_argument("--flows", type=_positive, required=True, help="rows to write (required)")
    st.add_argument("--seed", type=_seed, default=0, help="random seed: same seed, same bytes (default 0)")
    st.add_argument("--mix", action="append", default=[], metavar="KNOB=VALUE",
                    help="set a trace mix knob, e.g. --mix east_west=0.7 --mix zipf=1.3 (repeatable; "
                         "knobs listed below; default: the built-in mix)")
    st.add_argument("--rate", type=float, default=None, metavar="R",
                    help="flows per second (Poisson arrivals; gives ts; default 100000)")
    st.add_argument("--duration-mix", action="store_true",
                    help="write a 'duration' column: heavy-tailed TCP lifetimes, one-shot DNS over UDP, "
                         "2%% long-lived streams (TraceMix.duration_mix) (default: off)")
    st.add_argument("--no-cache", action="store_true",
                    help="neither read nor write the cache (~/.cache/fastpath, or $FASTPATH_CACHE_DIR) that keeps "
                         "what flows are drawn from per cluster input, seed and zipf: load the cluster every time")
    st.add_argument("-o", "--output", required=True, type=Path,
                    help="trace file: .arrow/.feather (Arrow IPC) or .parquet (required)")
    se = ssub.add_parser("events", help="cluster changes for replay --events: rollouts, drains, scaling (JSON lines)",
                         epilog="rollouts as the Deployment controller runs them (maxSurge 25%, maxUnavailable "
                                "25%); a pod turns Ready 2 s after its IP and is deleted 30 s after it starts "
                                "terminating; slices given for a service are updated as the EndpointSlice "
                                "controller would")
    se.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster file or directory")
    se.add_argument("--rollouts", type=_nonneg, default=1, metavar="N",
                    help="workloads to roll out, preferring ones a Service selects (default 1)")
    se.add_argument("--drains", type=_nonneg, default=0, metavar="N",
                    help="nodes to drain: cordon, evict their pods, reschedule them elsewhere (default 0)")
    se.add_argument("--scale", type=_nonneg, default=0, metavar="N",
                    help="workloads to scale up or down by 1 to half their replicas (default 0)")
    se.add_argument("--start", type=_nonneg, default=1_700_000_000_000_000_000, metavar="NS",
                    help="ts the span starts at, ns since the epoch (default 1700000000000000000, "
                         "where synth trace starts)")
    se.add_argument("--span", type=float, default=60.0, metavar="S",
                    help="seconds the events spread over, evenly around the changes (default 60)")
    se.add_argument("--seed", type=_seed, default=0, help="random seed: same seed, same bytes (default 0)")
    se.add_argument("-o", "--output", required=True, type=Path,
                    help="events file, one JSON watch event a line ('-' for stdout; required)")

    rp = sub.add_parser("replay", help="resolve every flow of a trace; write results and a summary")
    rp.add_argument("cluster", nargs="?", type=Path, metavar="CLUSTER", help="cluster file or directory (default: bundled sample)")
    rp.add_argument("trace", nargs="?", type=Path, metavar="TRACE", help="trace file or directory (default: bundled sample)")
    rp.add_argument("-o", "--output", type=Path,
                    help="results file: .arrow/.feather (Arrow IPC) or .parquet, by extension (default: none written)")
    rp.add_argument("--with-flows", action="store_true",
                    help="also write the input's flow columns (src_ip, dst_ip, ports, proto, ts, ...) "
                         "beside the result columns")
    rp.add_argument("--wide", action="store_true",
                    help="on a terminal, never cut names in the summary (piped output is always full width)")
    rp.add_argument("--events", type=Path, metavar="EVENTS",
                    help="cluster changes while the trace plays: JSON lines of watch events with a ts each "
                         "(docs/events.md; fastpath synth events writes them); needs a trace with ts "
                         "(default: none, the cluster stands still)")
    _service_args(rp)
    rp.add_argument("--batch-size", type=_positive, default=None, help="flows per batch (default 131072)")
    rp.add_argument("--threads", type=_positive, default=None, help="kernel threads (default: all cores)")
    rp.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    rp.add_argument("--summary-json", type=Path, help="also write the summary as JSON here ('-' for stdout)")
    rp.add_argument("--timeline", type=Path, metavar="TIMELINE",
                    help="write one row per node and interval (.arrow/.feather Arrow IPC or .parquet, by "
                         "extension): conntrack entries (peak) and max, "
                         "new connections, drops, FDB floods, bytes in/out (needs a trace with ts)")
    rp.add_argument("--interval", type=float, default=1.0, metavar="S",
                    help="timeline interval, seconds (default 1)")
    rp.add_argument("--conntrack-max", type=_positive, default=None, metavar="N",
                    help="every node's conntrack table size (default: kube-proxy's sizing, "
                         "min(max(maxPerCore x CPUs, min), 1048576) with the Node's capacity.cpu, maxPerCore and "
                         "min from the ConfigMap kube-system/kube-proxy's conntrack block, else 32768 and 131072; "
                         "maxPerCore 0: kube-proxy leaves it alone, the kernel default 262144)")
    rp.add_argument("--no-conntrack", action="store_true",
                    help="no connection tracking, FDB or neighbour state (a trace without ts has none)")
    rp.add_argument("--scheduler", metavar="local|ADDRESS", default=None,
                    help="replay on a Dask cluster (pip install 'fastpath[dask]'; docs/distributed.md): 'local' "
                         "starts one here, an address (tcp://host:8786) joins a running scheduler; same rows "
                         "as one process (with --events: one task on one worker). -o names a results file, or "
                         "a folder of parts (a name without .arrow/.parquet). Paths must be readable by every "
                         "worker (default: one process)")
    rp.add_argument("--workers", type=_positive, default=None, metavar="N",
                    help="with --scheduler local: worker processes, one thread each (default: one per core); "
                         "with an address: wait until N workers have joined")

    ex = sub.add_parser(
        "explain", help="one flow, hop by hop",
        epilog="examples: --src node-003 --dst kube-dns.kube-system --dport dns;  "
               "--src node-003 --dst svc/default/kubernetes --dport https -o json --exit-code")
    ex.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster file or directory")
    ex.add_argument("--src", required=True, metavar="SOURCE",
                    help="client: a pod (NAMESPACE/NAME, pod/NAMESPACE/NAME or a unique NAME), "
                         "a node (node-003: its InternalIP), or an IP (required)")
    ex.add_argument("--dst", required=True, metavar="DEST",
                    help="destination: a service (svc/NAMESPACE/NAME or NAME.NAMESPACE), a pod, a node, "
                         "an IP, or a DNS name resolved as the source pod would (required)")
    ex.add_argument("--dport", required=True, type=_port_or_name, metavar="PORT",
                    help="destination port: a number, or a named port of the destination "
                         "(a service's port name such as http or dns, or a container port's) (required)")
    ex.add_argument("--sport", type=_port_number, default=40000, metavar="PORT", help="source port (default 40000)")
    ex.add_argument("--proto", choices=("tcp", "udp", "sctp"), default=None,
                    help="protocol (default: the named port's, else tcp)")
    ex.add_argument("-o", "--output", choices=("text", "json"), default="text",
                    help="text: one step a line; json: structured hops (step, node, table, key, result) "
                         "and the final disposition (default text)")
    ex.add_argument("--exit-code", action="store_true",
                    help="exit 1 when the flow is not delivered (refused, rejected, dropped, denied, unresolved); "
                         "egress, which leaves the cluster, counts as delivered")
    ex.add_argument("--events", type=Path, metavar="EVENTS",
                    help="cluster changes (docs/events.md): explain against the cluster as they leave it at --at "
                         "(default: none)")
    ex.add_argument("--at", type=str, default=None, metavar="TS",
                    help="with --events: the time to explain at, integer ns or RFC 3339; events at that very "
                         "time count (default: after every event)")
    _service_args(ex)

    ls = sub.add_parser("ls", help="list a cluster's pods, services or nodes (to find names for explain)")
    ls.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster file or directory")
    ls.add_argument("kind", nargs="?", default="pods", choices=("pods", "services", "nodes", "po", "svc", "no"),
                    metavar="KIND", help="pods, services or nodes (default pods)")
    ls.add_argument("-n", "--namespace", default=None, metavar="NS",
                    help="only this namespace (default: all namespaces)")
    ls.add_argument("-o", "--output", choices=("table", "wide", "json", "name"), default="table",
                    help="table, wide (more columns), json (every field) or name (pod/NAMESPACE/NAME a line, "
                         "as explain takes them); names are never cut (default table)")

    sd = sub.add_parser("study", help="a capacity study: a page of figures (index.html) and figures.json",
                        epilog="needs matplotlib: pip install 'fastpath[study]'")
    sd.add_argument("cluster", nargs="?", type=Path, metavar="CLUSTER",
                    help="cluster file or directory (default: bundled sample)")
    sd.add_argument("trace", nargs="?", type=Path, metavar="TRACE", help="trace file or directory (default: bundled sample)")
    sd.add_argument("-o", "--output", dest="report_dir", type=Path, required=True, metavar="REPORT_DIR",
                    help="folder for index.html and figures.json (made if missing) (required)")
    sd.add_argument("--lb", type=_balancer_list, default=["random", "maglev"], metavar="A,B,...",
                    help="balancers to compare, comma-separated, the first the reference "
                         f"(default random,maglev; any of {', '.join(BALANCERS)})")
    sd.add_argument("--against", type=Path, metavar="CLUSTER2",
                    help="another state of the cluster (a drain, a scale-up): the change figure counts the "
                         "service flows that go to another backend there")
    sd.add_argument("--events", type=Path, metavar="EVENTS",
                    help="cluster changes while the trace plays (docs/events.md; not with --against): the change "
                         "figure counts, per balancer, the flows that go to another backend after each change "
                         "and the connections broken")
    sd.add_argument("--seed", type=int, default=0, help="seed of the emulated randomness (default 0)")
    sd.add_argument("--maglev-size", type=_positive, default=16381,
                    help="Maglev lookup table size, a prime (default 16381, Cilium's)")
    sd.add_argument("--batch-size", type=_positive, default=None, help="flows per batch (default 131072)")
    sd.add_argument("--quiet", action="store_true", help="no progress bars")
    sd.add_argument("--no-cache", action="store_true",
                    help="neither read nor write the compiled-table cache (~/.cache/fastpath)")

    be = sub.add_parser("bench", help="measure lookups/s and flows/s on this machine")
    be.add_argument("--quick", action="store_true", help="small sizes, a few seconds (default: full sizes)")
    be.add_argument("--threads", type=_positive, default=None,
                    help="threads for the all-cores rows (default: all cores)")
    _say_switches_are_off(ap)
    return ap


def _say_switches_are_off(parser: argparse.ArgumentParser) -> None:
    """Every on/off switch's help ends with its default (off), as every other option's does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _say_switches_are_off(sub)
        elif (isinstance(action, argparse._StoreTrueAction) and action.help
              and "default" not in action.help and action.help is not argparse.SUPPRESS):
            action.help += " (default: off)"


#: Arguments naming files a command writes, and files it reads: every output is checked
#: against every input (and for a usable folder) before any work starts.
OUTPUT_ARGS = ("output", "summary_json", "timeline")
INPUT_ARGS = ("cluster", "trace", "events")
_OUTPUT_NAMES = {"output": "output (-o)", "summary_json": "summary JSON (--summary-json)",
                 "timeline": "timeline (--timeline)"}


def _guard_paths(a, *inputs: tuple[str, Path]) -> list[tuple[str, Path]]:
    """Refuse, before any work, inputs that are not regular files or directories, and outputs
    that would overwrite an input or cannot be written (see :func:`fastpath.files.check_outputs`);
    returns the inputs checked, as ``(what, path)``."""
    from .files import check_outputs, input_stat

    ins = [(name, getattr(a, name)) for name in INPUT_ARGS if isinstance(getattr(a, name, None), Path)]
    ins += list(inputs)
    for what, path in ins:
        input_stat(path, what)
    outs = [(_OUTPUT_NAMES[name], getattr(a, name)) for name in OUTPUT_ARGS
            if isinstance(getattr(a, name, None), Path)]
    check_outputs(outs, ins)
    return ins


def _cmd_synth(a) -> int:
    _guard_paths(a)
    if a.what == "cluster":
        from .cluster.synth import synth_cluster, write_cluster

        obj = synth_cluster(a.nodes, a.pods_per_node, a.services, namespaces=a.namespaces, zones=a.zones,
                            seed=a.seed, addressing=a.addressing, slices=not a.no_slices,
                            policies=a.policies)
        from .outputs import is_stdout, write_text

        if is_stdout(a.output):
            write_text("-", json.dumps(obj))
            print(f"wrote {len(obj['items'])} objects to stdout", file=sys.stderr)
            return 0
        write_cluster(obj, a.output)
        print(f"wrote {a.output}: {len(obj['items'])} objects")
        return 0
    if a.what == "events":
        from collections import Counter

        from .cluster.synth_events import synth_events, write_events
        from .outputs import is_stdout, write_text

        events = synth_events(a.cluster, rollouts=a.rollouts, drains=a.drains, scale=a.scale, start_ns=a.start,
                              span_s=a.span, seed=a.seed)
        if is_stdout(a.output):
            if events:
                write_text("-", "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
        else:
            write_events(events, a.output)
        kinds = Counter(e["type"] for e in events)
        span = f"{(events[-1]['ts'] - events[0]['ts']) / 1e9:.1f} s from ts {events[0]['ts']}" if events else "no time"
        print(f"wrote {'stdout' if is_stdout(a.output) else a.output}: {len(events)} events ("
              f"{', '.join(f'{kinds[t]} {t}' for t in ('ADDED', 'MODIFIED', 'DELETED'))}) over {span}",
              file=sys.stderr if is_stdout(a.output) else sys.stdout)
        return 0
    from .outputs import output_format
    from .traces import synth_trace

    from .files import TRACE_BYTES_PER_FLOW, check_free_space

    check_free_space(a.output, a.flows * TRACE_BYTES_PER_FLOW[output_format(a.output, "trace")], "trace")
    knobs = _parse_mix(a.mix)
    if a.rate is not None:
        knobs["rate"] = a.rate
    if a.duration_mix:
        knobs["duration_mix"] = True
    from ._warmup import FirstRun
    from .cluster.problems import report
    from .traces.synth_kernel import make_rows

    first_run = FirstRun(kernel=make_rows, what="the trace generator", seconds=15).start()
    n = first_run.during(synth_trace, a.cluster, a.flows, seed=a.seed, out=a.output, cache=not a.no_cache,
                         on_load=lambda c: report(c, debug=bool(getattr(a, "debug", False))), **knobs)
    first_run.stop()
    print(f"wrote {a.output}: {n} flows")
    return 0


def _load_cluster(a, path):
    """Load a cluster and print its load warnings and skipped kinds on stderr (all objects with --debug)."""
    from .cluster.load import load_cluster
    from .cluster.problems import report

    cluster = load_cluster(path, expand_workloads=bool(getattr(a, "expand_workloads", False)))
    report(cluster, debug=bool(getattr(a, "debug", False)))
    return cluster


def _service_opts(a) -> dict:
    return dict(lb=a.lb, seed=a.seed, maglev_size=a.maglev_size, conn_duration=a.conn_duration)


def _compiled(a, path, lean: bool = False):
    """The cluster's DataPlane from the compiled-table cache, else loaded and compiled (then cached).

    Load warnings go to stderr either way (a cached entry keeps them). ``lean``: a replay, which
    needs only the tables: free the loaded objects once they are cached."""
    from .cache import compile_cached
    from .cluster.problems import report

    return compile_cached(path, cache=not getattr(a, "no_cache", False), lean=lean,
                          load_options={"expand_workloads": bool(getattr(a, "expand_workloads", False))},
                          on_load=lambda c: report(c, debug=bool(getattr(a, "debug", False))), **_service_opts(a),
                          **({} if getattr(a, "non_masquerade_cidrs", None) is None
                             else {"non_masquerade_cidrs": a.non_masquerade_cidrs}))


def _cmd_replay(a) -> int:
    from .replay import replay, sample_paths

    if (a.cluster is None) != (a.trace is None):
        raise FastpathError("replay: give both CLUSTER and TRACE, or neither for the bundled sample")
    cluster, trace = (a.cluster, a.trace) if a.cluster else sample_paths()
    _guard_paths(a, ("cluster", cluster), ("trace", trace))
    opts = _service_opts(a)
    if a.batch_size:
        opts["batch_size"] = a.batch_size
    from .outputs import console, is_stdout, output_format, write_text

    if a.workers is not None and a.scheduler is None:
        raise FastpathError("--workers needs --scheduler (local, or a Dask scheduler's address)")
    if a.output is not None and a.scheduler is None:
        output_format(a.output, "results file")
    if a.timeline is not None:
        output_format(a.timeline, "timeline")
    if a.with_flows:
        opts["with_flows"] = True
    opts.update(conntrack=not a.no_conntrack, conntrack_max=a.conntrack_max, interval=a.interval)
    if a.timeline is not None:
        opts["timeline"] = a.timeline
    if a.scheduler is not None:
        if a.events is not None:                 # read and checked here, before any work; replayed in one task
            loaded = _live_inputs(a, cluster, opts)
            opts.pop("non_masquerade_cidrs", None)
        else:
            loaded = _compiled(a, cluster, lean=True).cluster   # warnings here, once; local workers read the cache
        opts.pop("lb"), opts.pop("seed")
        from .distributed import replay_distributed

        summary = replay_distributed(
            cluster, trace, a.output, scheduler=a.scheduler, workers=a.workers, lb=a.lb, seed=a.seed,
            progress=not a.quiet, plane_cache=not a.no_cache,
            load_options={"expand_workloads": bool(getattr(a, "expand_workloads", False))},
            **({} if a.non_masquerade_cidrs is None else {"non_masquerade_cidrs": a.non_masquerade_cidrs}), **opts)
    elif a.events is not None:
        dp = loaded = _live_inputs(a, cluster, opts)
    else:
        dp = _compiled(a, cluster, lean=True)    # warnings on stderr, with --quiet too
        loaded = dp.cluster                      # from the cache: warnings and counts without loading
    if a.scheduler is None:
        summary = replay(dp, trace, a.output, threads=a.threads, progress=not a.quiet, **opts)
    for line in summary.event_warnings or ():
        if line not in opts["events"].warnings:          # the events file's own were said before
            print(f"fastpath: warning: {line}", file=sys.stderr)
    if not a.quiet:
        # with --summary-json -, stdout is the JSON alone: the table goes to stderr
        summary.render(console(stderr=is_stdout(a.summary_json), wide=a.wide))
    if a.summary_json:
        from .cluster.problems import counts

        write_text(a.summary_json, json.dumps({**summary.to_dict(), **counts(loaded)}, indent=2))
    return 0


def _live_inputs(a, cluster: Path, opts: dict):
    """``--events``: the cluster loaded (warnings on stderr) and the events read and checked, before any
    work; the replay compiles both itself (the compiled-table cache holds still clusters only)."""
    from .cluster.load import load_cluster
    from .cluster.problems import report
    from .events import read_events

    log = read_events(a.events)
    loaded = load_cluster(cluster, expand_workloads=bool(getattr(a, "expand_workloads", False)))
    report(loaded, debug=bool(getattr(a, "debug", False)))
    for line in log.warnings:
        print(f"fastpath: warning: {line}", file=sys.stderr)
    opts["events"] = log
    if getattr(a, "non_masquerade_cidrs", None) is not None:
        opts["non_masquerade_cidrs"] = a.non_masquerade_cidrs
    return loaded


def _cmd_explain(a) -> int:
    from .explain import explain

    if a.at is not None and a.events is None:
        raise FastpathError("explain: --at needs --events (the cluster changes to apply)")
    if a.events is not None:
        from .cluster.compile import compile_cluster
        from .events import parse_ts
        from .live import cluster_at

        at = None if a.at is None else parse_ts(int(a.at) if a.at.isdigit() else a.at, "--at")
        opts: dict = {}
        base = _live_inputs(a, a.cluster, opts)          # opts: the events, --non-masquerade-cidrs
        dp = compile_cluster(cluster_at(base, opts.pop("events"), at), **_service_opts(a), **opts)
    else:
        dp = _compiled(a, a.cluster)
    ex = explain(dp, a.src, a.dst, a.dport, a.proto, a.sport)
    print(ex.to_json() if a.output == "json" else ex.render())
    return 1 if a.exit_code and not ex.delivered else 0


def _cmd_ls(a) -> int:
    from .cluster.load import load_cluster
    from .inventory import KINDS, listing

    kind = KINDS[a.kind]
    print(listing(load_cluster(a.cluster), kind, namespace=a.namespace, output=a.output), end="")
    return 0


def _balancer_list(text: str) -> list[str]:
    lbs = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in lbs if x not in BALANCERS]
    if bad or not lbs:
        raise argparse.ArgumentTypeError(f"{text!r}: balancers are {', '.join(BALANCERS)}, comma-separated")
    return list(dict.fromkeys(lbs))


def _study_planes(a):
    """``(path, lb) -> DataPlane`` through the compiled-table cache; a path's cluster is loaded at
    most once (a miss reuses the cluster an earlier balancer loaded) and its warnings said once."""
    from .cache import compile_cached
    from .cluster.problems import report

    known: dict = {}

    def planes(path, lb):
        first = path not in known
        dp = compile_cached(path, lb=lb, seed=a.seed, maglev_size=a.maglev_size, cluster=known.get(path),
                            load_options={"expand_workloads": bool(getattr(a, "expand_workloads", False))},
                            on_load=(lambda c: report(c, debug=bool(a.debug))) if first else None)
        known[path] = dp.cluster
        return dp

    return planes


def _cmd_study(a) -> int:
    from . import report
    from .files import check_output_folder
    from .replay import sample_paths

    if (a.cluster is None) != (a.trace is None):
        raise FastpathError("study: give both CLUSTER and TRACE, or neither for the bundled sample")
    if a.cluster is None:
        a.cluster, a.trace = sample_paths()
    if a.report_dir.exists() and not a.report_dir.is_dir():
        raise FastpathError(f"{a.report_dir}: the report folder is a file")
    report.pyplot()                          # say what is missing before any replay runs
    ins = _guard_paths(a, *((("against", a.against),) if a.against else ()))
    check_output_folder(a.report_dir, ("index.html", "figures.json"), ins, "report folder")
    if a.events is not None and a.against:
        raise FastpathError("study: give --against or --events, not both")
    if a.events is not None:                 # the events: compiled per balancer over every object they add
        cached: dict = {}
        cluster, against = _live_inputs(a, a.cluster, cached), None
    elif a.no_cache:
        cluster = _load_cluster(a, a.cluster)
        against = _load_cluster(a, a.against) if a.against else None
        cached = {}
    else:                                    # each balancer's tables from the cache where it has them
        cluster, against = a.cluster, a.against
        cached = {"compiled": _study_planes(a)}
    figs = report.study(cluster, a.trace, lbs=a.lb, against=against, seed=a.seed, batch_size=a.batch_size,
                        progress=not a.quiet, maglev_size=a.maglev_size, **cached)
    figs["study"]["cluster"], figs["study"]["trace"] = str(a.cluster), str(a.trace)
    if a.against:
        figs["study"]["against"] = figs["change"]["against"] = str(a.against)
    if a.events is not None:
        figs["change"]["events"] = str(a.events)
    page = report.write_report(figs, a.report_dir)
    print(f"study written: {page} (and {page.with_name('figures.json')})", file=sys.stderr)
    return 0


def _cmd_bench(a) -> int:
    from .benchmark import run

    run(quick=a.quick, threads=a.threads)
    return 0


#: Signals that end a run with one line, exit status 128 + the signal's number, and no
#: temporary file left (a signal the parent set to be ignored, as ``nohup`` does, stays ignored).
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextmanager
def _signals_raise() -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP raise :class:`~fastpath.errors.Interrupted`.

    The first signal raises; later ones are let go while the run unwinds, so the
    cleanup that removes temporary outputs is not cut short. The previous
    handlers come back on leaving (``main`` may be called in-process).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def _raise(signo, frame):
        if fired:
            return
        fired.append(signo)
        raise Interrupted(signo, signal.Signals(signo).name)

    previous = {}
    for name in STOP_SIGNALS:
        signo = getattr(signal, name, None)
        if signo is None or signal.getsignal(signo) is signal.SIG_IGN:
            continue
        try:
            previous[signo] = signal.signal(signo, _raise)
        except (OSError, ValueError):
            pass
    try:
        yield
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler if handler is not None else signal.SIG_DFL)


def _internal_error(e: BaseException) -> str:
    """One line for a bug (not bad input): the exception and where it was raised."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return (f"fastpath: internal error: {type(e).__name__}: {one_line(e)}{where} "
            f"(run with --debug for the traceback, and please report it)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastpath`` console script.

    Returns the exit status: 0 done, 1 an internal error (a bug; one line, the
    traceback with ``--debug``), 2 bad input or usage (one line naming the file,
    object, column or option), ``128 + signo`` when SIGINT, SIGTERM or SIGHUP
    ended the run (130, 143, 129). argparse's ``--help`` and usage errors raise
    ``SystemExit``. The signal handlers are installed only when ``argv`` is None
    (the console script); an in-process call keeps its caller's.
    """
    # As the console script (no argv): signals end the run cleanly. Called from Python code with
    # argv, the caller's own signal handling is left alone (KeyboardInterrupt still cleans up).
    from .files import remove_temps

    with _signals_raise() if argv is None else contextlib.nullcontext():
        try:
            return _main(argv)
        except Interrupted as e:
            print(f"fastpath: interrupted by {e.name}; no partial output left", file=sys.stderr)
            return 128 + e.signo
        except KeyboardInterrupt:  # a SIGINT outside the handlers (another thread installed them)
            print("fastpath: interrupted by SIGINT; no partial output left", file=sys.stderr)
            return 130
        finally:
            remove_temps()           # a temporary file a signal caught before its own cleanup ran


def _main(argv: list[str] | None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    handlers = {"synth": _cmd_synth, "replay": _cmd_replay, "explain": _cmd_explain, "bench": _cmd_bench,
                "ls": _cmd_ls, "study": _cmd_study}
    try:
        return handlers[a.command](a)
    except FastpathError as e:
        if a.debug:
            raise
        print(f"fastpath: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # whoever read stdout went away (``| head``): stop quietly, as other tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + 13  # SIGPIPE
    except OSError as e:
        if a.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"fastpath: error: {one_line(where + str(e.strerror or e))}", file=sys.stderr)
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt):
        if a.debug:
            import traceback

            traceback.print_exc()
        raise
    except Exception as e:  # noqa: BLE001 -- a bug: one line, not a traceback, unless --debug
        if a.debug:
            raise
        print(_internal_error(e), file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
