"""Connection tracking, bridge FDB and neighbour tables over time (spec §5).

A trace with ``ts`` is replayed with state: after the stateless stages have
decided a batch, :class:`ConntrackStage` walks its flows in time order (one
thread, per-node state in flat arrays) and

* gives each connection an entry in the conntrack table of every node whose
  netfilter sees it (the client's node, where kube-proxy DNATs, and the
  backend's node when different), for its lifetime: ``duration`` plus the
  timeout of the state it closes in (:data:`TIMEOUTS`);
* drops a new connection on a node whose table is full (``dropped``, reason
  ``conntrack-full``) unless it can evict an entry that is not ASSURED from
  the 8 hash buckets starting at its own (``early_drop``);
* ages the bridge FDB (a frame to a MAC not heard from for 300 s floods:
  counted, still delivered) and the nodes' neighbour tables (``gc_thresh3``
  hard cap: a new entry on a full table is an overflow, counted);
* counts all of it per node and per interval (the timeline) and in the summary.

The rules, with every choice the spec left open, are in ``docs/dataplane.md``
("Connection tracking over time"); the slow twin is ``tests/naive/conntrack.py``.

Memory holds live state only: an entry record is 40 bytes (expiry, when it
becomes ASSURED, node, hash bucket, three links, state), pooled and reused.
The kernel and the layout of its arrays are :mod:`fastpath.stages.conntrack_kernel`.

A stage may keep only some nodes' state (:meth:`ConntrackStage.set_owned`), the
rest being tracked by other stages, maybe in other processes; the driver that
makes their union the single run is :mod:`fastpath.stages.conntrack_split`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .._jit import read_only
from ..cluster.objects import CONNTRACK_MAX_PER_CORE, CONNTRACK_MIN
from ..codes import DELIVERED, DENIED, DROPPED, EGRESS, LOOPBACK, NONE, R_POLICY_EGRESS, REFUSED
from ..errors import FastpathError
from ..lifetimes import UDP_DEFAULT_DURATION, lifetimes_ns
from ..tables import hashindex, timers
from ..tables.balancers import seed_key
from . import conntrack_kernel as K

NS = 1_000_000_000
#: Conntrack timeouts, seconds (kernel defaults with kube-proxy's overrides, spec §5 item 3).
TIMEOUTS = {
    "tcp_time_wait": 120,    #: after a normal close (the connection's ``duration`` elapsed)
    "tcp_syn_sent": 120,     #: a SYN that got no answer (dropped on the far node)
    "tcp_close": 10,         #: after a RST (refused: nothing listens)
    "udp": 30,               #: after the last packet, not a stream (one-shot, refused, unanswered)
    "udp_stream": 120,       #: after the last packet of a stream (replied, alive more than 2 s after the first)
    "generic": 600,          #: any other protocol
}
#: A replied UDP flow becomes a stream (ASSURED) with a packet more than this long after its first one
#: (``nf_conntrack_proto_udp.c``: ``time_after(jiffies, stream_ts)``); a ``duration`` of exactly 2 s is not one.
UDP_STREAM_AFTER = 2
#: kube-proxy's conntrack sizing: ``min(max(PER_CPU * cpus, MIN), MAX)`` (``--conntrack-max-per-core``,
#: ``--conntrack-min``, their defaults here; the ConfigMap ``kube-system/kube-proxy`` may set others:
#: :func:`conntrack_max`); a Node without ``status.capacity.cpu`` counts as 1 CPU (``MIN`` by default).
CT_PER_CPU, CT_MIN, CT_MAX = CONNTRACK_MAX_PER_CORE, CONNTRACK_MIN, 1048576
#: The kernel's own ``nf_conntrack_max``, kept on a node whose kube-proxy leaves it alone
#: (``conntrack.maxPerCore: 0``).
CT_KERNEL_DEFAULT = 262144
#: Hash buckets = max / HASHSIZE_RATIO (kube-proxy sets ``hashsize`` to a quarter of the max).
HASHSIZE_RATIO = 4
#: Bridge FDB ageing (``BR_DEFAULT_AGEING_TIME``), seconds.
FDB_AGEING = 300
#: A neighbour entry lives this long after its last use (REACHABLE for ``base_reachable_time``
#: 30 s, STALE after, then collected after ``gc_stale_time`` 60 s unused).
NEIGH_LIFETIME = 60
#: The salt of the conntrack bucket hash (independent of the balancers' draws).
SALT_CONNTRACK = 9
#: Protocols with TCP-like states (TCP, SCTP).
_TCPLIKE = (6, 132)


def conntrack_max(cpu: int | None, sizing: tuple[int, int] | None = None) -> int:
    """``nf_conntrack_max`` of a node with ``cpu`` CPUs under kube-proxy's ``sizing``.

    ``sizing`` is ``(maxPerCore, min)`` from the ConfigMap ``kube-system/kube-proxy``
    (:attr:`fastpath.cluster.model.Cluster.conntrack_sizing`); None: kube-proxy's defaults
    (:data:`CT_PER_CPU`, :data:`CT_MIN`). ``maxPerCore`` 0: kube-proxy leaves the sysctl
    alone and the node keeps the kernel's :data:`CT_KERNEL_DEFAULT`; otherwise
    ``min(max(maxPerCore * cpu, min), CT_MAX)``. Unknown CPUs (None) count as 1.
    """
    per_core, floor = (CT_PER_CPU, CT_MIN) if sizing is None else sizing
    if per_core == 0:
        return CT_KERNEL_DEFAULT
    return min(max(int(per_core) * (1 if cpu is None else int(cpu)), int(floor)), CT_MAX)


def bucket_count(ct_max: int) -> int:
    """Hash buckets of a table of ``ct_max`` entries (``nf_conntrack_buckets``)."""
    return max(1, int(ct_max) // HASHSIZE_RATIO)


# --------------------------------------------------------------------------- the stage

@dataclass
class NodeState:
    """One node's conntrack figures over a replay."""

    conntrack_peak: int
    conntrack_max: int
    conntrack_drops: int
    fdb_floods: int
    neigh_peak: int
    neigh_overflows: int


class ConntrackStage:
    """Conntrack, FDB and neighbour state of every node through a timed replay.

    Parameters
    ----------
    dp
        The compiled :class:`fastpath.pipeline.DataPlane` (its cluster and tables).
    conntrack_max
        Every node's table size; ``None``: kube-proxy's sizing (the cluster's
        ``conntrack_sizing``, from its ConfigMap) over each Node's
        ``status.capacity.cpu`` (:func:`conntrack_max`).
    interval
        Timeline interval, seconds.
    default_duration
        Seconds a TCP or SCTP connection lives where the trace gives no
        ``duration`` (UDP: :data:`UDP_DEFAULT_DURATION`; other protocols: this).
    timeline
        Keep one row per node and interval (:meth:`timeline_table`).
    seed
        Seed of the bucket hash.

    A stage keeps every node's state unless told otherwise (:meth:`set_owned`: a
    node group of :mod:`fastpath.stages.conntrack_split`).
    """

    def __init__(self, dp, *, conntrack_max: int | None = None, interval: float = 1.0,
                 default_duration: float = 30.0, timeline: bool = False, seed: int = 0) -> None:
        if not (isinstance(interval, (int, float)) and np.isfinite(interval) and interval > 0):
            raise FastpathError(f"--interval {interval!r}: must be a positive number of seconds")
        if conntrack_max is not None and (int(conntrack_max) < 1 or int(conntrack_max) > (1 << 31) - 1):
            raise FastpathError(f"--conntrack-max {conntrack_max!r}: must be between 1 and 2**31-1")
        if not (np.isfinite(default_duration) and default_duration >= 0):
            raise FastpathError(f"default duration {default_duration!r}: must be >= 0 seconds")
        cluster = dp.cluster
        t = dp.tables
        self.node_names = list(t.node_names)
        n = len(self.node_names)
        self.node_cpu = [getattr(node, "cpu", None) for node in cluster.nodes]
        if conntrack_max is not None:
            mx = np.full(n, int(conntrack_max), np.int64)
        else:
            sizing = getattr(cluster, "conntrack_sizing", None)
            mx = np.array([conntrack_max_of(c, sizing) for c in self.node_cpu], dtype=np.int64)
        self.interval_ns = int(round(interval * NS))
        if self.interval_ns < 1:
            raise FastpathError(f"--interval {interval!r}: shorter than a nanosecond")
        self.timeline = bool(timeline)
        self.default_duration = float(default_duration)
        P = np.zeros(11, np.int64)
        P[K.P_INTERVAL] = self.interval_ns
        P[K.P_KEY] = np.array([seed_key(seed, SALT_CONNTRACK)], np.uint64).view(np.int64)[0]
        for slot, k in ((K.P_TIME_WAIT, "tcp_time_wait"), (K.P_SYN_SENT, "tcp_syn_sent"), (K.P_CLOSE, "tcp_close"),
                        (K.P_UDP, "udp"), (K.P_UDP_STREAM, "udp_stream"), (K.P_GENERIC, "generic")):
            P[slot] = TIMEOUTS[k] * NS
        P[K.P_STREAM_AFTER] = UDP_STREAM_AFTER * NS
        P[K.P_FDB_AGE] = FDB_AGEING * NS
        P[K.P_NB_LIFE] = NEIGH_LIFETIME * NS
        self.params = P                              # writable, as a deep copy of it is (one specialization)
        self.node_ip = np.ascontiguousarray(t.node_ip, dtype=np.uint32)
        self.pod_node = np.ascontiguousarray(t.pod_node, dtype=np.int32)
        kept = getattr(cluster, "cached_pod_bridged", None)   # fastpath.cache: without loading the pods
        self.pod_bridged = kept.copy() if kept is not None else \
            np.array([(not p.host_network) and p.ip is not None and p.node is not None
                      for p in cluster.pods], dtype=np.uint8)
        if self.pod_bridged.shape[0] != self.pod_node.shape[0]:
            self.pod_bridged = (self.pod_node >= 0).astype(np.uint8)
        self.fdb_last = np.zeros(self.pod_node.shape[0], np.int64)
        self.nd = np.zeros((n, K.N_COLS), np.int64)
        self.nd[:, K.N_MAX] = mx
        self.nd[:, K.N_BUCKETS] = [bucket_count(m) for m in mx]
        self.meta = np.zeros(K.META_SLOTS, np.int64)
        # pools: records, free lists, heap heads, indexes (grown by _reserve before each batch)
        self.ct64 = np.zeros((0, 2), np.int64)
        self.ct32 = np.zeros((0, 6), np.int32)
        self.ct_free = np.zeros(1, np.int32)
        self.ct_heads = timers.new_radix_heap()
        self.qs, self.blk, self.bnext = timers.new_queues(K.N_QUEUES)   # the lanes, the neighbour checks
        self.chx = np.full((16, 2), hashindex.EMPTY, np.int64)   # chain heads: (node << 32 | bucket, record)
        pods = self.pod_node.shape[0]            # row p: the entry of pod p's node for it
        self.nb64 = np.zeros((pods, 2), np.int64)
        self.nb64[:, K.NB_KEY] = -1
        self.nix = np.full((16, 2), hashindex.EMPTY, np.int64)   # neighbour index: (key, expiry) slots
        self._rows: list[np.ndarray] = []
        #: 1 for each node whose state this stage keeps (writable, as a deep copy or an unpickled one is:
        #: one specialization)
        self.own = np.ones(n, np.uint8)
        self._last_ts: int | None = None             # the last row's ts (the clock never goes back)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_read_only"] = [k for k, v in state.items() if isinstance(v, np.ndarray) and not v.flags.writeable]
        return state

    def __setstate__(self, state: dict) -> None:
        """Unpickled (a stage sent to another process: the distributed replay's conntrack chain), every
        array owns its memory again: the pools grow in place (:meth:`_grow`), which a view of a received
        buffer cannot; and each array is as writable as it was, so the kernel's one specialization
        serves it (a received buffer's arrays are read-only or not as the transport made them)."""
        read_only_names = set(state.pop("_read_only", ()))
        self.__dict__.update(state)
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                if not v.flags.owndata or v.flags.writeable == (k in read_only_names):
                    v = v.copy()
                v.flags.writeable = k not in read_only_names
                setattr(self, k, v)

    # ------------------------------------------------------------------ pools
    @staticmethod
    def _grow(rec: tuple[np.ndarray, ...], free: np.ndarray, hw: int, need: int) -> None:
        """Grow records ``rec`` (2-D arrays, a row each) and their free list in place until ``need`` more fit.

        A pool grows by a quarter at a time, in place (``ndarray.resize``: the
        allocator moves pages rather than copying, and nothing else holds the
        arrays), so memory follows the live entries, never twice them.
        """
        cap = rec[0].shape[0]
        if cap - hw + int(free[0]) >= need:
            return
        new = max(1024, cap + cap // 4, hw + need)
        for a in rec:
            a.resize((new, a.shape[1]), refcheck=False)
        free.resize(new + 1, refcheck=False)

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` more flows. A flow adds at most two conntrack entries (each with a record and on
        a chain at worst), three neighbour index entries (next hop, the way back, the gateway) and six queue
        rows (its two entries, four neighbour checks)."""
        self._grow((self.ct64, self.ct32), self.ct_free, int(self.meta[K.M_CT_HW]), 2 * rows)
        timers.grow_blocks(self.qs, self.blk, self.bnext, 6 * rows)
        self.chx = hashindex.room(self.chx, int(self.meta[K.M_CHAINS]) + 2 * rows)
        self.nix = hashindex.room(self.nix, int(self.meta[K.M_NB_USED]) + 3 * rows)

    def _keep(self, tl: np.ndarray) -> None:
        k = int(self.meta[K.M_ROWS])
        self.meta[K.M_ROWS] = 0
        if k:
            self._rows.append(tl[:k])

    def _call(self, tl: np.ndarray, cols: tuple, results: tuple, finish: bool, far_ok: np.ndarray | None = None,
              decided: np.ndarray | None = None) -> None:
        K.track(self.ct64, self.ct32, self.ct_free, self.ct_heads, self.qs, self.blk, self.bnext, self.chx,
                self.nb64, self.nix, self.nd, tl, self.meta, self.params, *cols, *results,
                self.node_ip, self.pod_node, self.pod_bridged, self.fdb_last,
                self.own, _ALL_OK if far_ok is None else far_ok, _NO_DECIDED if decided is None else decided,
                self.timeline, finish)
        self._keep(tl)

    def _tl(self, intervals: int) -> np.ndarray:
        rows = max(0, intervals) * int(np.count_nonzero(self.own)) if self.timeline else 0
        return np.empty((rows, len(K.TL_COLS)), np.int64)

    def _first_iv(self, t0: int) -> int:
        """The interval the clock is in, or would start in at ``t0``."""
        return t0 // self.interval_ns if self.meta[K.M_STARTED] == 0 else int(self.meta[K.M_IV])

    # ------------------------------------------------------------------ running
    def run(self, flows, r, *, far_ok: np.ndarray | None = None, decided: np.ndarray | None = None) -> None:
        """Track one batch of resolved flows (``r``: :class:`fastpath.pipeline.Results`), in place.

        Rows must come in time order across calls. A batch without ``ts``
        is left alone (conntrack needs time).

        A stage that keeps only some nodes (:meth:`set_owned`) takes ``far_ok``
        (uint8 per row: whether the table of the row's other side, kept by
        another stage, admitted the connection; see
        :func:`fastpath.stages.conntrack_kernel.track`) and writes ``decided``
        (uint8 per row, the kernel's ``D_*`` bits) if given.
        """
        if flows.ts is None or flows.n == 0:
            return
        n = flows.n
        if len(r) != n:                              # a reused buffer longer than the batch: its first rows
            r = r.take(slice(0, n))
        if far_ok is not None:
            far_ok = _ro_u8(far_ok)
            if far_ok.shape != (n,):
                raise FastpathError(f"conntrack: far_ok has {far_ok.shape[0]} rows, the batch {n}")
        if decided is not None and (decided.shape != (n,) or decided.dtype != np.uint8
                                    or not decided.flags.c_contiguous or not decided.flags.writeable):
            raise FastpathError(f"conntrack: decided must be a writable, contiguous uint8 array of {n} rows")
        self._reserve(n)
        ts = flows.ts
        self._last_ts = int(ts[-1])
        first_iv = self._first_iv(int(ts[0]))
        nb = flows.bytes
        # every input column read-only (as Arrow's are) and of one dtype: one specialization
        ro = read_only
        cols = (ro(np.asarray(ts, np.int64)), ro(np.asarray(flows.proto, np.uint8)),
                ro(np.asarray(flows.src_ip, np.uint32)), ro(np.asarray(_dst_of(flows, r), np.uint32)),
                ro(np.asarray(flows.src_port, np.uint16)), ro(np.asarray(flows.dst_port, np.uint16)),
                ro(lifetimes_ns(flows.proto, flows.duration, self.default_duration)),
                ro(np.asarray(nb, np.uint64)) if nb is not None else _NO_BYTES, nb is not None)
        self._call(self._tl(int(ts[-1]) // self.interval_ns - first_iv), cols,
                   (r.verdict, r.reason, r.path, r.src_node, r.dst_node, r.src_pod, r.dst_pod, r.src_kind, r.hops,
                    r.dnat_ip), False, far_ok, decided)

    def set_owned(self, own: np.ndarray) -> None:
        """Keep only the state of the nodes where ``own`` (one per node) is true: a node group.

        Before the first row. Other nodes' counters stay 0 and get no timeline
        rows; :meth:`run` then needs ``far_ok`` for rows whose other side is
        kept elsewhere. The driver is :mod:`fastpath.stages.conntrack_split`.
        """
        if self.started:
            raise FastpathError("conntrack: the owned nodes are set before the first row")
        own = np.asarray(own)
        if own.shape != (len(self.node_names),):
            raise FastpathError(f"conntrack: own has {own.shape} entries, the cluster {len(self.node_names)} nodes")
        self.own = np.ascontiguousarray(own != 0, dtype=np.uint8)

    def advance(self, t: int) -> None:
        """Move the clock to ``t`` (ns) without a flow.

        On a stage that has seen no row yet this starts the clock at ``t`` as a
        first flow at ``t`` would (its interval, every pod's FDB time);
        afterwards it closes the intervals before ``t``'s (their timeline rows)
        and expires what is due by ``t``, as a flow at ``t`` would before its
        own work. A node group starts its clock at the whole trace's first
        ``ts`` and advances it to the last one before :meth:`finish`, so its
        timeline and final occupancies are the single run's.
        """
        t = int(t)
        if self._last_ts is not None and t < self._last_ts:
            raise FastpathError(f"conntrack: the clock cannot go back from {self._last_ts} to {t} ns")
        self._last_ts = t
        ro = read_only
        cols = (ro(np.array([t], np.int64)), ro(np.zeros(1, np.uint8)), ro(np.zeros(1, np.uint32)),
                ro(np.zeros(1, np.uint32)), ro(np.zeros(1, np.uint16)), ro(np.zeros(1, np.uint16)),
                ro(np.zeros(1, np.int64)), _NO_BYTES, False)
        results = (np.zeros(1, np.uint8), np.zeros(1, np.uint8), np.full(1, LOOPBACK, np.uint8),
                   np.full(1, -1, np.int32), np.full(1, -1, np.int32), np.full(1, -1, np.int32),
                   np.full(1, -1, np.int32), np.ones(1, np.uint8), np.zeros(1, np.uint8), np.zeros(1, np.uint32))
        self._call(self._tl(t // self.interval_ns - self._first_iv(t)), cols, results, False)

    def finish(self) -> None:
        """Close the last interval (its timeline rows). Call once, after the last batch."""
        ro = read_only                               # the same argument types as run(): one specialization
        cols = (ro(np.zeros(0, np.int64)), ro(np.zeros(0, np.uint8)), ro(np.zeros(0, np.uint32)),
                ro(np.zeros(0, np.uint32)), ro(np.zeros(0, np.uint16)), ro(np.zeros(0, np.uint16)),
                ro(np.zeros(0, np.int64)), _NO_BYTES, False)
        results = (np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.int32),
                   np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint8),
                   np.zeros(0, np.uint8), np.zeros(0, np.uint32))
        self._call(self._tl(1), cols, results, True)

    # ------------------------------------------------------------------ reading
    @property
    def started(self) -> bool:
        return bool(self.meta[K.M_STARTED])

    def occupancy(self, node: int) -> int:
        """Live conntrack entries of ``node`` now (after the last flow tracked)."""
        return int(self.nd[node, K.N_OCC])

    def table_max(self, node: int) -> int:
        """The size of ``node``'s conntrack table."""
        return int(self.nd[node, K.N_MAX])

    def node_states(self) -> dict[str, NodeState]:
        """Per node: peak and max, drops, FDB floods, neighbour peak and overflows."""
        cols = (K.N_PEAK, K.N_MAX, K.N_DROPS, K.N_FLOODS, K.N_NPEAK, K.N_NOVER)
        rows = self.nd[:, cols].tolist()
        return {name: NodeState(*row) for name, row in zip(self.node_names, rows)}

    def summary(self) -> dict:
        """The replay summary's keys: ``conntrack_drops``, ``fdb_floods``, ``neigh_overflows``, ``nodes``."""
        nd = self.nd
        return {
            "conntrack_drops": int(nd[:, K.N_DROPS].sum()), "fdb_floods": int(nd[:, K.N_FLOODS].sum()),
            "neigh_overflows": int(nd[:, K.N_NOVER].sum()),
            "nodes": {name: {"conntrack_peak": s.conntrack_peak, "conntrack_max": s.conntrack_max,
                             "conntrack_drops": s.conntrack_drops, "fdb_floods": s.fdb_floods,
                             "neigh_peak": s.neigh_peak, "neigh_overflows": s.neigh_overflows}
                      for name, s in self.node_states().items()},
        }

    def timeline_rows(self) -> np.ndarray:
        """The timeline as kept: int64 rows of :data:`~fastpath.stages.conntrack_kernel.TL_COLS` (the nodes
        this stage keeps only)."""
        return np.concatenate(self._rows) if self._rows else np.zeros((0, len(K.TL_COLS)), np.int64)

    def timeline_table(self) -> pa.Table:
        """The timeline (``--timeline``): one row per node and interval, in time then node order."""
        tl = self.timeline_rows()
        c = dict(zip(K.TL_COLS, tl.T))
        names = pa.array(self.node_names, pa.string())
        idx = np.ascontiguousarray(c["node"], np.int32)
        return pa.table({
            "t": pa.array(np.ascontiguousarray(c["t"]), pa.timestamp("ns")),
            "node": pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), names),
            "conntrack_entries": pa.array(np.ascontiguousarray(c["entries"])),
            "conntrack_max": pa.array(np.ascontiguousarray(self.nd[idx, K.N_MAX])),
            "new_connections": pa.array(np.ascontiguousarray(c["new"])),
            "drops": pa.array(np.ascontiguousarray(c["drops"])),
            "fdb_floods": pa.array(np.ascontiguousarray(c["floods"])),
            "bytes_in": pa.array(np.ascontiguousarray(c["bin"]).view(np.uint64)),
            "bytes_out": pa.array(np.ascontiguousarray(c["bout"]).view(np.uint64)),
            "neigh_entries": pa.array(np.ascontiguousarray(c["nentries"])),
            "neigh_overflows": pa.array(np.ascontiguousarray(c["nover"])),
        })


def conntrack_max_of(cpu: int | None, sizing: tuple[int, int] | None = None) -> int:
    """:func:`conntrack_max` under a name ``ConntrackStage``'s ``conntrack_max`` argument does not hide."""
    return conntrack_max(cpu, sizing)


def write_timeline(table: pa.Table, path) -> None:
    """The ``--timeline`` table at ``path``, in the format its extension names (``.arrow``/``.feather``
    Arrow IPC, ``.parquet``), whole or not at all (a temporary name beside it, then renamed).

    Raises
    ------
    FastpathError
        Any other extension (:func:`fastpath.outputs.output_format`).
    """
    import os
    from pathlib import Path

    from ..outputs import output_format

    path = Path(path)
    fmt = output_format(path, "timeline")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, str(tmp))
        else:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ro_u8(a) -> np.ndarray:
    """``a`` as a contiguous, read-only uint8 array (the kernel's type for ``own`` and ``far_ok``)."""
    return read_only(np.ascontiguousarray(a, dtype=np.uint8))


#: Placeholder for a trace without ``bytes`` (read-only, like the columns).
_NO_BYTES = read_only(np.zeros(1, np.uint64))
#: ``far_ok`` of a stage that keeps every node (never read), and ``decided`` not wanted.
_ALL_OK = _ro_u8(np.ones(1, np.uint8))
_NO_DECIDED = np.zeros(0, np.uint8)


def _dst_of(flows, r) -> np.ndarray:
    """The destination the client addressed (the DNS answer for ``dst_name`` rows: the pre-DNAT address
    is not kept, so those rows hash on the address after DNAT)."""
    if flows.name_code is None:
        return flows.dst_ip
    return np.where(flows.name_code >= 0, r.dnat_ip, flows.dst_ip).astype(np.uint32)


# --------------------------------------------------------------------------- explain

def entries_left(verdict, reason, path, src_node, dst_node, proto, life_ns):
    """What each connection leaves in the conntrack tables, by the stage's rule (the kernel's
    ``track``; its twin ``tests/naive/conntrack.py``; ``docs/dataplane.md``), as numpy arrays:
    ``(on_client, on_far, seconds)``.

    ``on_client``: an entry on the client's node (``src_node``): delivered, refused or egress, or
    no answer from another node that dropped it or denied it by ingress policy (egress policy
    drops on the client's node: no entry). ``on_far``: one on the destination's node too
    (delivered or refused there). ``seconds``: how long each lives: ``life_ns``
    (:func:`fastpath.lifetimes.lifetimes_ns`) plus TIME_WAIT, the UDP (stream) or generic timeout
    when answered; the close (RST) or UDP timeout when refused; SYN_SENT or the UDP timeout when
    no answer came. Loopback flows leave nothing.
    """
    v, sn, dn = np.asarray(verdict), np.asarray(src_node), np.asarray(dst_node)
    proto = np.asarray(proto)
    d = np.asarray(life_ns, np.int64)
    tcp, udp = np.isin(proto, _TCPLIKE), proto == 17
    answered = (v == DELIVERED) | (v == EGRESS)
    refused = v == REFUSED
    other = np.where(udp, TIMEOUTS["udp"], TIMEOUTS["generic"])
    stream = udp & (d > UDP_STREAM_AFTER * NS)
    seconds = np.where(answered, d / NS + np.where(tcp, TIMEOUTS["tcp_time_wait"],
                                                   np.where(stream, TIMEOUTS["udp_stream"], other)),
                       np.where(refused, np.where(tcp, TIMEOUTS["tcp_close"], other),
                                np.where(tcp, TIMEOUTS["tcp_syn_sent"], other)))
    client = (np.asarray(path) != LOOPBACK) & (sn >= 0)
    far = (dn >= 0) & (dn != sn)
    far_denied = (v == DENIED) & (np.asarray(reason) != R_POLICY_EGRESS)
    on_client = client & (answered | refused | (((v == DROPPED) | far_denied) & far))
    on_far = client & far & ((v == DELIVERED) | refused)
    return on_client, on_far, seconds


def explain_conntrack(stage: ConntrackStage | None, proto: int, verdict: int, src_node: int, dst_node: int,
                      duration: float | None = None, default_duration: float = 30.0,
                      node_names: list[str] | None = None, say_none: bool = True, reason: int = 0) -> list[str]:
    """What a connection leaves in the conntrack tables, as lines of text (``fastpath explain``).

    With a ``stage`` (a replay's), each line also says how full that node's table is now.
    A connection that leaves no entry gets a line saying so, or none with ``say_none=False``.
    ``reason`` (a code of :data:`fastpath.codes.REASONS`) tells a denied connection's side: egress
    policy drops it on the client's node (no entry), ingress policy on the far node. Who holds an
    entry and for how long: :func:`entries_left`.
    """
    names = stage.node_names if stage is not None else node_names
    life_ns = lifetimes_ns(np.array([proto]), None if duration is None else np.array([duration], np.float64),
                           default_duration)
    on_client, on_far, seconds = (a[0] for a in entries_left(
        [verdict], [reason], [NONE], [src_node], [dst_node], [proto], life_ns))
    if not on_client:
        return ["conntrack: no entry (the packet never left the client's node, or stayed inside a pod)"] \
            if say_none else []
    tcp = proto in _TCPLIKE
    if verdict in (DELIVERED, EGRESS):
        state = ("ASSURED once established; TIME_WAIT 120 s after close" if tcp else
                 "a UDP stream: ASSURED 2 s in; 120 s after its last packet"
                 if proto == 17 and life_ns[0] > UDP_STREAM_AFTER * NS else
                 "one-shot UDP: never ASSURED (evictable); 30 s after its last packet" if proto == 17 else
                 "generic protocol: 600 s after its last packet")
    elif verdict == REFUSED:
        state = "refused: RST, CLOSE for 10 s" if tcp else "refused: ICMP port unreachable, 30 s unreplied"
    else:
        state = "no answer from the far node: SYN_SENT 120 s" if tcp else "no answer: 30 s unreplied"
    lines = []
    for n in [src_node] + ([dst_node] if on_far else []):
        name = names[n] if names else str(n)
        size = f" (table {stage.occupancy(n):,} of {stage.table_max(n):,})" if stage is not None else ""
        lines.append(f"conntrack: an entry on node {name}{size} for {float(seconds):g} s ({state})")
    return lines


# --------------------------------------------------------------------------- the replay's hook

#: ``replay()`` keywords this stage takes (the rest go to the service map compiler).
REPLAY_OPTIONS = ("conntrack", "conntrack_max", "interval", "timeline")


def pop_replay_options(opts: dict) -> dict:
    """Take this stage's keywords out of ``replay()``'s ``**service_opts``."""
    return {k: opts.pop(k) for k in REPLAY_OPTIONS if k in opts}


class ReplayConntrack:
    """The stage as :func:`fastpath.replay.replay` drives it: after every batch is resolved, in
    trace order, on the writer thread of a pipelined replay (beside the next batch's resolve);
    the timeline written at the end.

    Built by :meth:`start`, which returns ``None`` where there is nothing to track:
    ``conntrack=False`` (``--no-conntrack``), or a trace without ``ts`` (time is
    needed; the flows are then resolved as before, without state).
    """

    def __init__(self, stage: ConntrackStage, timeline) -> None:
        self.stage = stage
        self.timeline = timeline

    @staticmethod
    def wanted(reader, opts: dict) -> bool:
        """Whether a replay of ``reader``'s trace with ``opts`` tracks connections (:meth:`start` makes a
        stage): ``conntrack`` is not turned off and the trace has ``ts``."""
        return bool(opts.get("conntrack", True)) and "ts" in reader.schema.names

    @classmethod
    def start(cls, dp, reader, opts: dict) -> "ReplayConntrack | None":
        from pathlib import Path

        timeline = opts.get("timeline")
        if not cls.wanted(reader, opts):
            if timeline is not None:
                why = "the trace has no 'ts' column" if "ts" not in reader.schema.names else \
                    "--no-conntrack was given"
                raise FastpathError(f"--timeline {timeline}: no timeline to write ({why})")
            return None
        if timeline is not None:
            from ..outputs import output_format

            timeline = Path(timeline)
            output_format(timeline, "timeline")          # the format follows the extension; others are an error
            if not timeline.parent.is_dir():
                raise FastpathError(f"{timeline}: folder {timeline.parent} does not exist")
        stage = ConntrackStage(dp, conntrack_max=opts.get("conntrack_max"), interval=opts.get("interval", 1.0),
                               default_duration=getattr(dp.services, "conn_duration", 30.0),
                               timeline=timeline is not None, seed=getattr(dp, "seed", 0))
        return cls(stage, timeline)

    def warm(self, flows, r) -> None:
        """Compile the kernel on a few rows, on a throwaway copy of the stage (the real one stays fresh)."""
        import copy

        throwaway = copy.deepcopy(self.stage)
        throwaway.run(flows, r.copy())
        throwaway.finish()

    def finish(self) -> None:
        """Close the last interval; write the timeline (whole or not at all)."""
        self.stage.finish()
        if self.timeline is not None:
            write_timeline(self.stage.timeline_table(), self.timeline)

    def summary_fields(self) -> dict:
        """``Summary`` keywords: conntrack_drops, fdb_floods, neigh_overflows, nodes."""
        return self.stage.summary()


def render_nodes(nodes: dict, drops: int, floods: int, overflows: int = 0):
    """A rich table: one line per node class (nodes of one table size), peak occupancy against max."""
    from rich.table import Table

    classes: dict[int, list] = {}
    for name, s in nodes.items():
        classes.setdefault(s["conntrack_max"], []).append((name, s))
    t = Table(title="conntrack, FDB and neighbour tables by node class", title_justify="left",
              caption=f"conntrack-full drops {drops:,}, FDB floods {floods:,}, neighbour overflows {overflows:,}",
              caption_justify="left")
    for col in ("node class (table size)", "nodes", "fullest node", "peak / max", "drops", "FDB floods",
                "neigh peak", "neigh overflows"):
        t.add_column(col, justify="left" if col.startswith(("node class", "fullest")) else "right")
    for mx in sorted(classes):
        members = classes[mx]
        name, top = max(members, key=lambda m: m[1]["conntrack_peak"])
        t.add_row(f"max {mx:,}", f"{len(members):,}", name,
                  f"{top['conntrack_peak']:,} / {mx:,} ({top['conntrack_peak'] / mx:.1%})",
                  f"{sum(s['conntrack_drops'] for _, s in members):,}",
                  f"{sum(s.get('fdb_floods', 0) for _, s in members):,}",
                  f"{max(s.get('neigh_peak', 0) for _, s in members):,}",
                  f"{sum(s.get('neigh_overflows', 0) for _, s in members):,}")
    return t
