"""Slow twin of :mod:`fastpath.stages.conntrack`: one flow at a time, a dict per node, a heap of expiries.

Written from the spec (§5) and ``docs/dataplane.md`` ("Connection tracking over
time"). It takes the stateless results of each flow (verdict, path, nodes, pods,
as names) and applies the time rules; nothing is shared with the kernel but the
documented constants (timeouts, sizing formula) and the documented bucket hash.

A flow is a dict with ``ts`` (ns), ``src_ip``, ``dst_ip`` (the address the client
used), ``src_port``, ``dst_port``, ``proto``, and optionally ``duration``
(seconds, ``None`` for the default) and ``bytes``. A result is a dict with
``verdict``, ``reason``, ``path``, ``src_node``, ``dst_node``, ``src_pod``,
``dst_pod``, ``hops``, ``dnat_ip`` and ``src_kind`` (``"pod"``, ``"host"`` or
``"external"``); :meth:`NaiveConntrack.track` updates it in place.
"""
from __future__ import annotations

import heapq
import math
from typing import Optional

from naive.services import M64, fmix32, fmix64

NS = 10**9
TIME_WAIT, SYN_SENT, CLOSE, UDP, UDP_STREAM, GENERIC = 120, 120, 10, 30, 120, 600
STREAM_AFTER = 2
FDB_AGEING, NEIGH_LIFE, GC_THRESH3 = 300, 60, 1024
CONNTRACK_SALT = 9


def kube_proxy_max(cpu: Optional[int], sizing: Optional[tuple] = None) -> int:
    """kube-proxy: min(max(maxPerCore x CPUs, min), 1048576), CPUs unknown counting as 1;
    ``sizing`` is (maxPerCore, min) from its ConfigMap, None for (32768, 131072). maxPerCore 0:
    kube-proxy leaves the sysctl alone, so the kernel's default 262144 stays."""
    if sizing is None:
        sizing = (32768, 131072)
    per_core, floor = sizing
    if per_core == 0:
        return 262144
    cpus = 1 if cpu is None else cpu
    return min(max(per_core * cpus, floor), 1048576)


def bucket_hash(seed: int, f: dict) -> int:
    """The documented bucket hash: flow_hash with the conntrack salt's key."""
    k = fmix64((seed * 0x9E3779B97F4A7C15 + CONNTRACK_SALT) & M64)
    lo, hi = k & 0xFFFFFFFF, k >> 32
    h = fmix32(lo ^ f["proto"] ^ f["src_ip"])
    h = fmix32(h ^ f["dst_ip"] ^ hi)
    return fmix32(h ^ (f["src_port"] << 16) ^ f["dst_port"])


class NaiveConntrack:
    """Every node's conntrack table, FDB and neighbour table, as dicts."""

    def __init__(self, cluster, *, conntrack_max: Optional[int] = None, interval: float = 1.0,
                 default_duration: float = 30.0, seed: int = 0, sizing: Optional[tuple] = None) -> None:
        """``conntrack_max`` sets every node's table; else kube-proxy's ``sizing`` (maxPerCore, min)
        over each node's CPUs (:func:`kube_proxy_max`)."""
        self.nodes = [n.name for n in cluster.nodes]
        self.node_ip = {n.name: (n.internal_ip or 0) for n in cluster.nodes}
        self.max = {n.name: conntrack_max if conntrack_max is not None else kube_proxy_max(n.cpu, sizing)
                    for n in cluster.nodes}
        self.buckets = {n: max(1, m // 4) for n, m in self.max.items()}
        self.pod_node = {p.key: p.node for p in cluster.pods}
        self.bridged = {p.key for p in cluster.pods if not p.host_network and p.ip is not None and p.node is not None}
        self.interval = round(interval * NS)
        self.default = default_duration
        self.seed = seed
        self.table: dict[str, dict[int, dict]] = {n: {} for n in self.nodes}   # node -> id -> entry
        self.heap: list[tuple] = []                                            # (expiry, id, node)
        self.seq = 0
        self.neigh: dict[str, dict[int, int]] = {n: {} for n in self.nodes}    # node -> address -> expiry
        self.fdb: dict[str, int] = {}                                         # pod -> last frame heard (ns)
        self.totals = {n: dict(peak=0, drops=0, floods=0, npeak=0, nover=0) for n in self.nodes}
        self.iv = None
        self.cur: dict[str, dict] = {}
        self.rows: list[dict] = []

    # ---- time
    def _expire(self, t: int) -> None:
        while self.heap and self.heap[0][0] <= t:
            _, eid, node = heapq.heappop(self.heap)
            self.table[node].pop(eid, None)
        for node in self.nodes:
            for addr in [a for a, e in self.neigh[node].items() if e <= t]:
                del self.neigh[node][addr]

    def _start_interval(self) -> None:
        self.cur = {n: dict(peak=len(self.table[n]), new=0, drops=0, floods=0, bin=0, bout=0,
                            npeak=len(self.neigh[n]), nover=0) for n in self.nodes}

    def _emit(self) -> None:
        for n in self.nodes:
            c = self.cur[n]
            self.rows.append(dict(t=self.iv * self.interval, node=n, conntrack_entries=c["peak"],
                                  conntrack_max=self.max[n], new_connections=c["new"], drops=c["drops"],
                                  fdb_floods=c["floods"], bytes_in=c["bin"], bytes_out=c["bout"],
                                  neigh_entries=c["npeak"], neigh_overflows=c["nover"]))

    def finish(self) -> None:
        if self.iv is not None:
            self._emit()

    # ---- tables
    def _insert(self, node: str, t: int, expiry: int, assured_at: float, bucket: int) -> Optional[int]:
        tab = self.table[node]
        if len(tab) >= self.max[node]:
            best = None
            for eid, e in tab.items():
                if e["assured_at"] <= t:
                    continue                         # ASSURED: never evicted
                off = (e["bucket"] - bucket) % self.buckets[node]
                if off >= 8:
                    continue
                rank = (off, -e["seq"])              # nearest bucket first, newest first in a bucket
                if best is None or rank < best[0]:
                    best = (rank, eid)
            if best is None:
                return None
            del tab[best[1]]
        self.seq += 1
        eid = self.seq
        tab[eid] = dict(expiry=expiry, assured_at=assured_at, bucket=bucket, seq=self.seq)
        heapq.heappush(self.heap, (expiry, eid, node))
        c = self.cur[node]
        c["new"] += 1
        c["peak"] = max(c["peak"], len(tab))
        self.totals[node]["peak"] = max(self.totals[node]["peak"], len(tab))
        return eid

    def _neigh(self, node: str, addr: int, t: int) -> None:
        tab = self.neigh[node]
        if addr in tab:
            tab[addr] = max(tab[addr], t + NEIGH_LIFE * NS)
            return
        if len(tab) >= GC_THRESH3:
            self.cur[node]["nover"] += 1
            self.totals[node]["nover"] += 1
            return
        tab[addr] = t + NEIGH_LIFE * NS
        self.cur[node]["npeak"] = max(self.cur[node]["npeak"], len(tab))
        self.totals[node]["npeak"] = max(self.totals[node]["npeak"], len(tab))

    # ---- one flow
    def track(self, f: dict, r: dict) -> None:
        t = f["ts"]
        iv = t // self.interval
        if self.iv is None:
            self.iv = iv
            for p in self.pod_node:
                self.fdb[p] = t                      # every pod's MAC learned as the replay starts
            self._start_interval()
        while self.iv < iv:
            self._emit()
            self.iv += 1
            self._expire(self.iv * self.interval)
            self._start_interval()
        self._expire(t)
        if r["path"] == "loopback":
            return
        proto = f["proto"]
        tcp = proto in (6, 132)
        dur = f.get("duration")
        if dur is None or (isinstance(dur, float) and math.isnan(dur)):
            dur = 0.0 if proto == 17 else self.default
        d = int(dur * 1e9 + 0.5)
        v, sn, dn = r["verdict"], r["src_node"], r["dst_node"]
        if v in ("delivered", "refused"):
            nodes = [sn] if sn is not None else []
            if nodes and dn is not None and dn != sn:
                nodes.append(dn)
        elif v == "egress":
            nodes = [sn] if sn is not None else []
        elif (v == "dropped" or (v == "denied" and r["reason"] != "policy-egress")) and sn is not None \
                and dn is not None and dn != sn:
            nodes = [sn]                             # egress policy drops it on the client's node: none
        else:
            nodes = []
        never = math.inf
        unanswered = t + (SYN_SENT if tcp else UDP if proto == 17 else GENERIC) * NS
        if v in ("delivered", "egress"):
            if tcp:
                expiry, assured = t + d + TIME_WAIT * NS, t
            elif proto == 17 and d > STREAM_AFTER * NS:
                expiry, assured = t + d + UDP_STREAM * NS, t + STREAM_AFTER * NS
            elif proto == 17:
                expiry, assured = t + d + UDP * NS, never
            else:
                expiry, assured = t + d + GENERIC * NS, never
        elif v == "refused":
            expiry, assured = t + (CLOSE if tcp else UDP if proto == 17 else GENERIC) * NS, never
        else:
            expiry, assured = unanswered, never
        h = bucket_hash(self.seed, f)
        src_part = {"pod": 2, "host": 0, "external": 1}[r["src_kind"]]
        if nodes:
            mine = self._insert(sn, t, expiry, assured, (h * self.buckets[sn]) >> 32)
            if mine is None:
                self._drop(sn, r)
                r.update(dst_node=None, dst_pod=None, hops=src_part)
                v, dn = "dropped", None
            elif len(nodes) == 2 and self._insert(dn, t, expiry, assured, (h * self.buckets[dn]) >> 32) is None:
                self._drop(dn, r)
                r.update(dst_pod=None, hops=src_part + (1 if r["src_kind"] == "external" else 2))
                v = "dropped"
                del self.table[sn][mine]             # the client's entry: no answer came
                self.cur[sn]["new"] -= 1
                self._insert(sn, t, unanswered, never, (h * self.buckets[sn]) >> 32)
        if f.get("bytes") is not None and v in ("delivered", "egress"):
            if sn is not None:
                self.cur[sn]["bout"] += f["bytes"]
            if dn is not None and dn != sn:
                self.cur[dn]["bin"] += f["bytes"]
        alive = t + d if v in ("delivered", "egress") else t
        if r["src_kind"] == "pod" and r["src_pod"] is not None:
            self.fdb[r["src_pod"]] = max(self.fdb[r["src_pod"]], alive)
        dp = r["dst_pod"]
        if v in ("delivered", "refused") and dp in self.bridged and r["path"] in ("bridge", "routed", "external"):
            pn = self.pod_node[dp]
            if t >= self.fdb[dp] + FDB_AGEING * NS:      # aged at 300 s (updated + ageing <= now)
                self.cur[pn]["floods"] += 1
                self.totals[pn]["floods"] += 1
            self.fdb[dp] = max(self.fdb[dp], alive)
            if r["path"] != "bridge" or r["src_kind"] != "pod":
                self._neigh(pn, r["dnat_ip"], t)
        if sn is not None:
            if dn is not None and dn != sn and (v in ("delivered", "refused", "dropped")
                                                or (v == "denied" and r["reason"] != "policy-egress")):
                self._neigh(sn, self.node_ip[dn], t)
                if v in ("delivered", "refused"):
                    self._neigh(dn, self.node_ip[sn], t)
            if v == "egress" or (r["src_kind"] == "external" and v in ("delivered", "refused")):
                self._neigh(sn, 0, t)

    def _drop(self, node: str, r: dict) -> None:
        self.cur[node]["drops"] += 1
        self.totals[node]["drops"] += 1
        r.update(verdict="dropped", reason="conntrack-full", path="none")

    def summary(self) -> dict:
        return {
            "conntrack_drops": sum(x["drops"] for x in self.totals.values()),
            "fdb_floods": sum(x["floods"] for x in self.totals.values()),
            "neigh_overflows": sum(x["nover"] for x in self.totals.values()),
            "nodes": {n: {"conntrack_peak": x["peak"], "conntrack_max": self.max[n], "conntrack_drops": x["drops"],
                          "fdb_floods": x["floods"], "neigh_peak": x["npeak"], "neigh_overflows": x["nover"]}
                      for n, x in self.totals.items()},
        }
