"""``fastpath bench``: lookups/s and flows/s on this machine, in a few seconds.

A quick look for users; the full suites with competitors (pytricia, py-radix,
``numpy.searchsorted``) live in the repository's ``bench/`` folder.
"""
from __future__ import annotations

import time

import numpy as np

from . import benchdata
from ._jit import get_threads, set_threads
from .tables.lpm import RouteTable



def _best_rate(fn, n: int, repeat: int = 5) -> float:
    fn()  # warm (jit, caches)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def pod_to_pod_flows(dp, n: int, seed: int = 0) -> dict:
    """``n`` flows between random bridged pods, each to a port the destination declares."""
    t = dp.tables
    rng = np.random.default_rng(seed)
    pods = t.port_pod.astype(np.int64)
    src = pods[rng.integers(0, pods.size, n)]
    dst = pods[rng.integers(0, pods.size, n)]
    ports = np.zeros(len(t.pod_names), dtype=np.uint16)
    protos = np.full(len(t.pod_names), 6, dtype=np.uint8)
    for i, p in enumerate(dp.cluster.pods):
        if p.ports:
            ports[i] = p.ports[0].port
            protos[i] = p.ports[0].proto
    return {"src_ip": t.pod_ip[src], "dst_ip": t.pod_ip[dst],
            "src_port": rng.integers(32768, 61000, n).astype(np.uint16),
            "dst_port": ports[dst], "proto": protos[dst]}


#: Said under the table: why an all-cores row can be slower than the 1-thread row.
THREADS_NOTE = ("An all-cores row slower than its 1-thread row means the cores were busy with other work "
                "(threads wait for each other at the end of every batch), not that threads hurt.")
#: Rows of pytricia at most (one Python call per address).
PEER_ROWS = 200_000


def _peers(name: str, routes, rt, dst: np.ndarray, quick: bool) -> list[tuple[str, str, float, str]]:
    """The same lookups by numpy.searchsorted over the flat ranges and by pytricia (when installed)."""
    rows = []
    starts, hops = rt.to_ranges()
    starts32 = starts.astype(np.uint32)
    rows.append((f"  peer: numpy.searchsorted, {name}", "1",
                 _best_rate(lambda: hops[np.searchsorted(starts32, dst, side="right") - 1], dst.size, 3),
                 "M lookups/s"))
    try:
        import pytricia
    except ImportError:
        rows.append((f"  peer: pytricia, {name} (not installed: pip install pytricia)", "", float("nan"), ""))
        return rows
    if quick and len(routes.prefixes) > 100_000:
        rows.append((f"  peer: pytricia, {name} (skipped in --quick: building it takes seconds)", "",
                     float("nan"), ""))
        return rows
    tree = pytricia.PyTricia(32)
    for pfx, ln, nh in zip(routes.prefixes.tolist(), routes.lengths.tolist(), routes.next_hops.tolist()):
        tree.insert(pfx, ln, nh)
    keys = dst[:PEER_ROWS].tolist()
    get = tree.get
    rows.append((f"  peer: pytricia, {name}", "1", _best_rate(lambda: [get(k) for k in keys], len(keys), 2),
                 "M lookups/s"))
    return rows


def run(quick: bool = False, threads: int | None = None) -> list[tuple[str, str, float, str]]:
    """Measure and print a table; returns ``(workload, threads, rate, unit)`` rows.

    Rates are in millions a second of the row's unit (lookups or flows); rows
    without a rate (build times, notes) have NaN and an empty unit.
    """
    from rich.console import Console
    from rich.table import Table

    from .cluster.load import cluster_from_objects
    from .cluster.compile import compile_cluster
    from .cluster.synth import synth_cluster
    from .pipeline import DataPlane  # noqa: F401  (compile_cluster builds one)
    from .traces import normalize_batch

    from .outputs import console as make_console

    console = make_console()
    all_threads = set_threads(threads)
    rows: list[tuple[str, str, float]] = []
    n = 1_000_000 if quick else 10_000_000

    tables = [("cluster /24 per node, 5,000 nodes", benchdata.cluster_route_table(5000)),
              ("Calico /26 blocks + /32s", benchdata.calico_route_table())]
    rv = benchdata.routeviews_path()
    if rv is not None:
        tables.insert(0, ("RouteViews 616k prefixes, random dst", benchdata.routeviews_table(rv)))
    for name, routes in tables:
        t0 = time.perf_counter()
        rt = RouteTable.from_arrays(*routes)
        rt.lookup(np.zeros(1, np.uint32))
        build = time.perf_counter() - t0
        if name.startswith("RouteViews"):
            dst = benchdata.random_destinations(n)
        else:
            pods = routes.lengths > 0   # destinations in pod ranges, not the default route
            dst = benchdata.destinations_in(routes.prefixes[pods], routes.lengths[pods], n)
        out = np.empty_like(dst)
        set_threads(1)
        rows.append((f"LPM {name}", "1", _best_rate(lambda: rt.lookup(dst, out), n), "M lookups/s"))
        set_threads(all_threads)
        rows.append((f"LPM {name}", str(all_threads), _best_rate(lambda: rt.lookup_parallel(dst, out), n),
                     "M lookups/s"))
        set_threads(1)
        rows += _peers(name, routes, rt, dst, quick)
        set_threads(all_threads)
        rows.append((f"LPM {name}: build {build * 1e3:.0f} ms, {rt.nbytes / 2**20:.1f} MiB", "", float("nan"), ""))

    nodes = 200 if quick else 5000
    t0 = time.perf_counter()
    cluster = cluster_from_objects(synth_cluster(nodes, 30, nodes * 2, seed=0)["items"], "synth")
    dp = compile_cluster(cluster)
    compile_s = time.perf_counter() - t0
    flows = normalize_batch(pod_to_pod_flows(dp, n), "bench")
    set_threads(1)
    rows.append((f"pipeline pod-to-pod, {nodes} nodes", "1", _best_rate(lambda: dp.resolve_flows(flows), n, 3),
                 "M flows/s"))
    set_threads(all_threads)
    rows.append((f"pipeline pod-to-pod, {nodes} nodes", str(all_threads),
                 _best_rate(lambda: dp.resolve_flows(flows), n, 3), "M flows/s"))
    rows.append((f"synth + load + compile {nodes} nodes, {len(cluster.pods)} pods: {compile_s:.2f} s", "",
                 float("nan"), ""))

    table = Table(title=f"fastpath bench ({'quick' if quick else 'full'}; {get_threads()} threads max)")
    table.add_column("workload")
    table.add_column("threads", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("unit")
    for name, th, rate, unit in rows:
        table.add_row(name, th, "" if rate != rate else f"{rate / 1e6:,.2f}", unit)
    console.print(table)
    console.print(THREADS_NOTE)
    console.print("Peers: the same destinations through numpy.searchsorted (binary search over the flat ranges) "
                  f"and pytricia (one call per address, first {PEER_ROWS:,}); bench/ has the full suites.")
    return rows
