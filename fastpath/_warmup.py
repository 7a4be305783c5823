"""Compile every kernel once on tiny inputs (see :func:`fastpath.prepare`)."""
from __future__ import annotations

import numpy as np


def run() -> None:
    from .addr import ips_from_strings, ips_to_strings
    from .cluster.compile import compile_cluster
    from .cluster.load import cluster_from_objects
    from .cluster.synth import synth_cluster
    from .tables.lpm import RouteTable
    from .traces import normalize_batch

    ips_to_strings(ips_from_strings(["10.0.0.1"]))
    rt = RouteTable.from_cidrs(["10.0.0.0/8"], [1])
    rt.lookup(np.zeros(4, np.uint32))
    rt.lookup_parallel(np.zeros(4, np.uint32))
    from .stages.conntrack import ConntrackStage

    items = synth_cluster(2, 3, 2, seed=0, policies=2)["items"]
    cluster = cluster_from_objects(items, "warm-up")
    flows = normalize_batch({"src_ip": np.zeros(2, np.uint32), "dst_ip": np.zeros(2, np.uint32),
                             "src_port": np.zeros(2, np.uint16), "dst_port": np.zeros(2, np.uint16),
                             "proto": np.full(2, 6, np.uint8), "ts": np.arange(2, dtype=np.int64)}, "warm-up")
    for lb in ("random", "round-robin", "source-hash", "maglev", "least-connection"):
        dp = compile_cluster(cluster, lb=lb)
        r = dp.resolve_flows(flows)                 # sources, the service stage, policy, forwarding
    ConntrackStage(dp).run(flows, r)                # connection tracking over time
    _events(cluster, items, flows)
    _synth(cluster)
    _replays(cluster)


def _replays(cluster) -> None:
    """Replays of a small trace read from a file, as ``fastpath replay`` reads one (Arrow's
    read-only columns, names for DNS, ``ts`` for connection tracking), over the bundled
    sample cluster where it is installed (ClientIP affinity, many pods), else the tiny one:
    the stateful passes, the tallies and the lookups the streaming replay adds, with a
    replay's own types, under every balancer."""
    import tempfile
    from pathlib import Path

    from .cluster.load import load_cluster
    from .errors import FastpathError
    from .replay import replay, sample_paths
    from .traces import synth_trace

    try:
        cluster = load_cluster(sample_paths()[0])
    except FastpathError:
        pass
    with tempfile.TemporaryDirectory(prefix="fastpath-warm-up-") as d:
        trace = Path(d) / "t.arrow"
        # 60,000 rows: a batch's named rows pass FEW (tables.exact), as a real trace's do
        synth_trace(cluster, 60_000, out=trace, duration_mix=True, rate=20_000.0)
        for lb in ("random", "round-robin", "source-hash", "maglev", "least-connection"):
            replay(cluster, trace, Path(d) / "r.arrow", lb=lb, progress=False)


def _synth(cluster) -> None:
    """The trace generator: a few rows (and the alias-table builder long tables use)."""
    from .traces import synth

    mix = synth.TraceMix(duration_mix=True)
    pools = synth._Pools(cluster, mix, np.random.default_rng(0))
    synth._Generator(pools, mix, 0).rows(0, 4)
    synth._vose(np.ones(2), np.ones(2), np.arange(2, dtype=np.int64))


def _events(cluster, items: list, flows) -> None:
    """A replay with events: a pod turns not-ready, another goes (the in-place table updates)."""
    import copy

    from .events import events_from_lines
    from .live import LivePlane

    pods = [o for o in items if o["kind"] == "Pod" and o.get("status", {}).get("podIP")
            and not o["spec"].get("hostNetwork")]
    if len(pods) < 2:
        return
    flip = copy.deepcopy(pods[0])
    for c in flip["status"].get("conditions", []):
        if c.get("type") == "Ready":
            c["status"] = "False"
    lp = LivePlane(cluster, events_from_lines([{"type": "MODIFIED", "ts": 0, "object": flip},
                                               {"type": "DELETED", "ts": 1, "object": pods[1]}], "warm-up"),
                   lb="maglev")
    r = lp.resolve(flows, None)
    lp.departures.add(flows, r, 30.0)
    lp.finish()


# --------------------------------------------------------------------------- first run

#: About how long a replay's first run compiles its kernels on a 2-core machine (numba, LLVM; the
#: forwarding and conntrack kernels beside it, in a helper: :class:`CompileBeside`), quoted in the
#: first-run message; later runs load them from numba's cache in about a second.
COLD_COMPILE_S = 15


def conntrack_kernel() -> None:
    """Compile the conntrack stage's kernel alone, with the argument types a replay gives it, on a stub
    plane (two nodes, three pods): nothing else is compiled, so a helper process running this finishes
    while the replay that started it compiles its other kernels (:class:`CompileBeside`)."""
    from types import SimpleNamespace

    from .pipeline import Results
    from .stages.conntrack import ConntrackStage
    from .traces import normalize_batch

    n = 4
    nodes = [SimpleNamespace(cpu=None), SimpleNamespace(cpu=4)]
    cluster = SimpleNamespace(nodes=nodes, cached_pod_bridged=np.ones(3, np.uint8))
    tables = SimpleNamespace(node_names=["a", "b"], node_ip=np.array([1, 2], np.uint32),
                             pod_node=np.array([0, 1, 1], np.int32))
    stage = ConntrackStage(SimpleNamespace(cluster=cluster, tables=tables))
    flows = normalize_batch({"src_ip": np.arange(n, dtype=np.uint32), "dst_ip": np.arange(n, dtype=np.uint32),
                             "src_port": np.zeros(n, np.uint16), "dst_port": np.zeros(n, np.uint16),
                             "proto": np.full(n, 6, np.uint8), "ts": np.arange(n, dtype=np.int64)}, "warm-up")
    r = Results.empty(n)
    for name, v in (("verdict", 0), ("reason", 0), ("path", 1), ("src_node", 0), ("dst_node", 1), ("src_pod", 0),
                    ("dst_pod", 2), ("service", -1), ("dnat_ip", 0), ("dnat_port", 0), ("snat_ip", 0), ("hops", 1),
                    ("src_kind", 0)):
        getattr(r, name)[:] = v
    stage.run(flows, r)
    stage.finish()


def forward_kernel() -> None:
    """Compile the forwarding kernel alone (:meth:`fastpath.pipeline.DataPlane._forward_rows`) with the
    argument types a replay gives it (a trace's read-only columns), on stub tables of a compiled plane's
    types: no cluster is compiled, so the helper compiles no kernel the replay compiles too."""
    from types import SimpleNamespace

    from ._jit import read_only
    from .codes import DROPPED
    from .pipeline import CHUNK, DataPlane, Results

    u32, u64 = np.uint32, np.uint64
    routes = SimpleNamespace(arrays=(np.zeros(1, u32), np.zeros(0, u64), np.zeros(0, u32), np.zeros(0, u64)))
    slots = SimpleNamespace(slots=np.zeros(8, u64))
    tables = SimpleNamespace(routes=routes, node_by_ip=slots, node_ip=np.zeros(2, u32), pod_by_ip=slots,
                             pod_rec=np.zeros(8, u32), more_off=np.zeros(3, np.int64), more_ports=np.zeros(0, u32),
                             host_listen=slots)
    n = 4
    r = Results.empty(n)
    r.verdict.fill(DROPPED)                          # decided: nothing is looked up, the kernel only has to exist
    DataPlane._forward_rows(SimpleNamespace(tables=tables), read_only(np.full(n, 6, np.uint8)), r, slice(0, n),
                            np.int64(CHUNK))


def beside_kernels(conntrack: bool = True) -> None:
    """What :class:`CompileBeside`'s helper compiles, in the order a replay reaches them after the
    service stage: forwarding, then (a replay that tracks connections) the conntrack kernel."""
    forward_kernel()
    if conntrack:
        conntrack_kernel()


class CompileBeside:
    """A helper process compiling kernels into numba's cache while this one compiles others.

    numba compiles one kernel at a time in a process (under one lock), so on a
    cold cache a replay used one core for half a minute while the other idled.
    The helper runs :func:`beside_kernels`: the forwarding kernel (ready long
    before the replay gets past its sources and service stage) and the
    conntrack kernel (:meth:`join` waits for it just before the replay's own
    first call, which then loads it from the cache). Best effort: if the helper
    cannot start, fails or is slow, the replay compiles a kernel itself, as
    without it.
    """

    @classmethod
    def start_if_cold(cls, first_run: "FirstRun", conntrack: bool) -> "CompileBeside | None":
        """A helper, if this run compiles on a cold cache and a kernel the helper would compile is not cached
        (the forwarding kernel; the conntrack kernel where the run tracks connections); else None."""
        from .pipeline import _forward
        from .stages.conntrack_kernel import track

        if not first_run.cold or not (_kernel_cold(_forward) or (conntrack and _kernel_cold(track))):
            return None
        return cls(conntrack)

    def __init__(self, conntrack: bool = True) -> None:
        import subprocess
        import sys

        code = f"from fastpath._warmup import beside_kernels as k; k({bool(conntrack)})"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None

    def join(self, timeout: float = 120.0) -> None:
        """Wait for the helper (at most ``timeout`` s)."""
        import subprocess

        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.close()
            self.proc = None

    def close(self) -> None:
        """Stop the helper if it still runs (the replay ended first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


#: Marker files in numba's cache folder, one per (fastpath, numba, CPU, sources) key.
_MARKER_PREFIX = "fastpath-kernels-"


def _marker() -> "tuple[object, object] | None":
    """(marker path, a kernel's cache index path) for this machine and these sources; None if unknown."""
    import hashlib
    from pathlib import Path

    try:
        import llvmlite.binding as ll
        import numba

        from . import __version__
        from .pipeline import _sources

        cache = _sources._cache
        folder = Path(cache._cache_path)
        index = Path(cache._cache_file._index_path)
        h = hashlib.sha1(f"{__version__}|{numba.__version__}|{ll.get_host_cpu_name()}|"
                         f"{ll.get_host_cpu_features().flatten()}".encode())
        root = Path(__file__).resolve().parent
        for src in sorted(root.rglob("*.py")):       # numba re-compiles a kernel whose source changed
            st = src.stat()
            h.update(f"{src.relative_to(root)}:{st.st_mtime_ns}:{st.st_size}".encode())
        return folder / f"{_MARKER_PREFIX}{h.hexdigest()[:16]}", index
    except Exception:  # noqa: BLE001 -- no marker: never in the way of a run
        return None


def is_cold() -> bool:
    """Whether numba's cache lacks this machine's kernels (no marker, or a key kernel's index missing).

    Cheap: a hash of version strings and source file stamps, and two ``stat`` calls.
    """
    m = _marker()
    if m is None:
        return False
    marker, index = m
    return not (marker.exists() and index.exists())


def _kernel_cold(kernel) -> bool:
    """Whether numba's cache has no index for this kernel (a dispatcher compiled with ``cache=True``)."""
    try:
        from pathlib import Path

        return not Path(kernel._cache._cache_file._index_path).exists()
    except Exception:  # noqa: BLE001 -- unknown: never in the way of a run
        return False


def mark_warm() -> None:
    """Record that the kernels are compiled and cached (after a run that compiled them)."""
    m = _marker()
    if m is None:
        return
    marker, _ = m
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("kernels compiled and cached by numba for this machine\n")
    except OSError:
        pass


class FirstRun:
    """Say so on stderr while a cold cache compiles kernels: a spinner on a terminal, else one line.

    ``start()`` before the first kernel call, ``stop(ok)`` once the kernels ran;
    a successful stop on a cold cache writes the marker. ``show=False``: silent.
    ``kernel``: the run needs that one kernel only (``synth trace``'s generator); it
    is cold when numba's cache has no index for it, and no marker is written.
    """

    def __init__(self, show: bool | None = None, kernel=None, what: str = "kernels",
                 seconds: int = COLD_COMPILE_S) -> None:
        self.show = show
        self.cold = False
        self._status = None
        #: one numba kernel the run needs (cold: not in numba's cache), else every replay kernel (the marker)
        self.kernel = kernel
        self.what = what
        self.seconds = seconds

    def start(self) -> "FirstRun":
        self.cold = is_cold() if self.kernel is None else _kernel_cold(self.kernel)
        if not self.cold or self.show is False:
            return self
        text = f"compiling {self.what} for this machine, once (~{self.seconds} s)"
        try:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                self._status = console.status(text, spinner="dots")
                self._status.start()
                return self
        except Exception:  # noqa: BLE001
            pass
        import sys

        print(f"fastpath: {text}", file=sys.stderr, flush=True)
        return self

    def during(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; the notice stops if it raises."""
        try:
            return fn(*args, **kwargs)
        except BaseException:
            self.stop(ok=False)
            raise

    def stop(self, ok: bool = True) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if ok and self.cold:
            if self.kernel is None:
                mark_warm()
            self.cold = False
