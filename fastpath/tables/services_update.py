"""Incremental service-map updates: one service's endpoints changed, only its tables change.

kube-proxy does not rebuild its rules for the whole cluster when one endpoint turns
not-ready: its ``EndpointsChangeTracker`` records the services an event touched and
one sync rewrites their chains. :class:`ServiceMapEditor` does the same to a compiled
:class:`~fastpath.tables.services.ServiceMap`:

* **endpoints keep their index.** An endpoint is a (service port, IP, port); one that
  stays keeps its row (its conditions are updated in place), a new one is appended.
  Least-connection counts and ClientIP affinities, keyed by endpoint index, carry
  over untouched.
* **eligible sets are appended.** The touched service ports' sets are computed by
  the same ``CategorizeEndpoints`` kernel the compiler uses, over just their
  endpoints, and appended to the set arrays (cluster, per-zone and per-node sets,
  node hints); the service ports then point at the new sets. Old sets stay as they
  were, so a copy of the per-service-port arrays taken before an update is the map
  as it stood (what churn is measured against).
* **Maglev tables are appended**, one per backend list not seen before (a list seen
  before reuses its table: a rollback costs nothing).

Arrays grow by doubling; a service port's update costs its own endpoints, the
local-set table and one pass over the per-node CSR of Local policies.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..cluster.columns import _endpoint_columns
from .balancer_state import check_affinity_keys
from .balancers import F_AFFINITY, F_ETP_LOCAL, F_HAS_ANY, F_HAS_READY, F_ITP_LOCAL, F_NODE_HINTS, NODE_HINT_KEY
from .exact import EMPTY, ExactTable, pack2_np
from .frontends import frontend_filter
from .maglev import backend_names, build_tables

#: The per-service-port arrays of MapArrays an update writes in place.
SP_ARRAYS = ("sp_flags", "sp_set", "sp_zone_row", "affinity_ns", "sp_span", "sp_table")
#: What an endpoint is, for "did it change": conditions, node, zone, hints.
_EP_FIELDS = ("node", "pod", "zone", "ready", "serving", "terminating", "hints")


class _Grown:
    """A 1-D (or row-wise 2-D) array with spare capacity: ``used`` rows are live."""

    def __init__(self, a: np.ndarray, used: int | None = None) -> None:
        self.a = a
        self.used = a.shape[0] if used is None else used

    def extend(self, x: np.ndarray) -> np.ndarray:
        need = self.used + x.shape[0]
        if need > self.a.shape[0]:
            cap = max(need, self.a.shape[0] + self.a.shape[0] // 4, 16)     # by a quarter: Maglev rows are big
            b = np.zeros((cap,) + self.a.shape[1:], dtype=self.a.dtype)
            b[:self.used] = self.a[:self.used]
            self.a = b                  # a new array: readers of the old one keep theirs
        self.a[self.used:need] = x
        self.used = need
        return self.a


class ServiceMapEditor:
    """Apply endpoint and service changes to a live :class:`ServiceMap` (see the module docstring).

    Parameters
    ----------
    smap
        The compiled map (``compile_services`` with fixed ``sp_names``).
    n_nodes
        Nodes in the cluster (present or not): the size of the node columns.
    """

    def __init__(self, smap, n_nodes: int) -> None:
        self.smap = smap
        self.n_nodes = n_nodes
        a = smap.arrays
        n_sp = len(smap.names)
        self.zone_index = {z: i for i, z in enumerate(smap.zones[:int(a.zone_width) - 1])}
        self.zones = list(smap.zones[:int(a.zone_width) - 1])
        ep_sp = np.repeat(np.arange(n_sp), np.diff(smap.ep_off))
        self.ep = {name: _Grown(getattr(smap, "ep_" + name).copy())
                   for name in ("ip", "port", "node", "pod", "zone", "ready", "serving", "terminating", "hints")}
        self.ep["node_id"] = _Grown(smap.ep_node.copy())     # the node, present or not (what changed means)
        self.ep_key = {(int(s), int(i), int(p)): e for e, (s, i, p) in
                       enumerate(zip(ep_sp.tolist(), smap.ep_ip.tolist(), smap.ep_port.tolist()))}
        self.sp_eps = [np.arange(smap.ep_off[s], smap.ep_off[s + 1], dtype=np.int64) for s in range(n_sp)]
        self.set_off = _Grown(a.set_off.copy())
        self.set_ep = _Grown(a.set_ep.copy())
        self.set_ip = _Grown(a.set_ip.copy())
        self.set_port = _Grown(a.set_port.copy())
        self.set_backend = _Grown(a.set_backend.copy())
        self.set_table = _Grown(a.set_table.copy())
        self.zone_sets = _Grown(a.zone_sets.copy(),
                                int(max(0, a.sp_zone_row.max() + 1 if n_sp else 0)) * int(a.zone_width))
        self.maglev = _Grown(a.maglev.copy()) if smap.lb == "maglev" else None
        self.tables: dict[bytes, int] = {}
        if self.maglev is not None:
            names = backend_names(a.set_ip, a.set_port)
            for s in np.flatnonzero(a.set_table >= 0).tolist():
                self.tables.setdefault(names[a.set_off[s]:a.set_off[s + 1]].tobytes(), int(a.set_table[s]))
        lt = smap.local_sets
        live = lt.keys != EMPTY
        self.loc_keys, self.loc_vals = lt.keys[live].copy(), lt.values[live].copy()
        self.local = lt
        #: service ports with entries in the local-set table (Local policies, node hints)
        self.with_local = set(np.unique(((self.loc_keys >> np.uint64(32)) & np.uint64(0x7FFFFFFF))
                                        .astype(np.int64)).tolist())

    # ------------------------------------------------------------------ reading
    def n_endpoints(self) -> int:
        """Endpoint rows in use (some may belong to no service port any more)."""
        return self.ep["ip"].used

    def endpoints_of(self, sp: int) -> np.ndarray:
        """Endpoint indices of service port ``sp`` now, in (IP, port) order."""
        return self.sp_eps[sp]

    def snapshot(self):
        """The map's kernel arrays as they stand, safe from later updates (copies of the per-port arrays)."""
        a = self.smap.arrays
        return a._replace(**{k: getattr(a, k).copy() for k in SP_ARRAYS})

    def view(self):
        """A :class:`ServiceMap` whose ``ep_*`` arrays are in service-port order (``ep_off``), for the
        summary and explain; its kernel arrays are the live ones (endpoint indices differ from them)."""
        order = np.concatenate(self.sp_eps) if self.sp_eps else np.zeros(0, np.int64)
        off = np.zeros(len(self.sp_eps) + 1, np.int64)
        np.cumsum([x.shape[0] for x in self.sp_eps], out=off[1:])
        cols = {"ep_" + k: g.a[:g.used][order] for k, g in self.ep.items() if k != "node_id"}
        return dataclasses.replace(self.smap, ep_off=off, **cols)

    # ------------------------------------------------------------------ services
    def set_ports(self, ports, frontends, node_ports, node_ips, cip_table) -> None:
        """A Service (or node) changed: new per-port facts and frontend tables. The ports' sets are
        rebuilt by :meth:`update` (the caller forces those whose Service changed)."""
        sm = self.smap
        a = sm.arrays
        keep = a.sp_flags & np.uint8(F_HAS_ANY | F_HAS_READY | F_NODE_HINTS)
        a.sp_flags[:] = np.array(ports.flags, np.uint8) | keep
        a.affinity_ns[:] = np.array(ports.timeout, np.int64) * np.int64(1_000_000_000)
        if (a.sp_flags & F_AFFINITY).any():
            check_affinity_keys(len(sm.names), len(sm.node_names))
        filt = frontend_filter(frontends, node_ips, cip_table)
        arrays = a._replace(fe_slots=frontends.slots, np_slots=node_ports.slots, nip_slots=node_ips.slots,
                            cip_slots=cip_table.slots, addr_filter=filt)
        self.smap = dataclasses.replace(
            sm, arrays=arrays, frontends=frontends, node_ports=node_ports, node_ips=node_ips, cluster_ips=cip_table,
            sp_service=np.array(ports.service, np.int32), sp_port=np.array(ports.port, np.uint16),
            sp_proto=np.array(ports.proto, np.uint8), affinity_timeout=np.array(ports.timeout, np.int64),
            has_affinity=bool((a.sp_flags & F_AFFINITY).any()))

    # ------------------------------------------------------------------ endpoints
    def update(self, by_service: dict, slices: list, pods, present: np.ndarray, pname: list[str],
               proto: list[int], node_index: dict, force: tuple = ()) -> tuple[list[int], list[int]]:
        """New endpoints for the service ports of some services.

        ``by_service``: (namespace, name) -> service-port ids, for the touched services;
        ``slices``: every EndpointSlice (given and derived) of those services; ``pods``:
        what :func:`~fastpath.cluster.columns.endpoint_columns` indexes pods and nodes by
        (every node, present or not); ``present``: bool per node; ``pname``/``proto``:
        every service port's slice port name and protocol; ``node_index``: present nodes
        by name (node hints); ``force``: ports whose sets are rebuilt even if their
        endpoints did not change (their Service's policies did).

        Returns ``(rebuilt, changed)``: the ports whose sets were rebuilt, and those whose
        endpoints changed (addresses, ports, node, zone, hints, conditions; a node that
        comes or goes rebuilds the sets of the ports with endpoints on it, but does not
        change the endpoints).
        """
        from .services import _gather_endpoints

        hint_nodes: list = []
        ends = _endpoint_columns(slices, pods)      # not kept: each update has its own few slices
        g = _gather_endpoints(ends, by_service, pname, proto, self.zones, self.zone_index, hint_nodes)
        g_sp, g_ip, g_port = g[0], g[1], g[2]
        new = dict(zip(_EP_FIELDS, g[3:10]))
        new["node_id"] = new["node"]                # which node, present or not; the sets see present ones
        new["node"] = np.where(present[np.maximum(new["node_id"], 0)] & (new["node_id"] >= 0), new["node_id"], -1
                               ).astype(new["node_id"].dtype) if present.size else new["node_id"]
        touched = sorted({sp for sps in by_service.values() for sp in sps})
        first = np.searchsorted(g_sp, touched)
        last = np.searchsorted(g_sp, touched, side="right")
        ep_idx = np.empty(g_sp.shape[0], np.int64)
        fresh_rows = []
        for k, (s, i, p) in enumerate(zip(g_sp.tolist(), g_ip.tolist(), g_port.tolist())):
            e = self.ep_key.get((s, i, p))
            if e is None:
                e = self.ep_key[(s, i, p)] = self.ep["ip"].used + len(fresh_rows)
                fresh_rows.append(k)
            ep_idx[k] = e
        if fresh_rows:
            rows = np.array(fresh_rows, np.int64)
            self.ep["ip"].extend(g_ip[rows].astype(self.ep["ip"].a.dtype))
            self.ep["port"].extend(g_port[rows].astype(self.ep["port"].a.dtype))
            for f in _EP_FIELDS + ("node_id",):
                self.ep[f].extend(new[f][rows].astype(self.ep[f].a.dtype))
        rebuild = set(force)
        changed = set()
        for f in _EP_FIELDS + ("node_id",):         # conditions now, and which ports they changed
            col = self.ep[f].a
            differs = col[ep_idx] != new[f]
            if differs.any():
                ports = g_sp[differs].tolist()
                rebuild.update(ports)
                if f not in ("node", "pod"):
                    changed.update(ports)
            col[ep_idx] = new[f]
        for sp, lo, hi in zip(touched, first.tolist(), last.tolist()):
            now = ep_idx[lo:hi]
            if not np.array_equal(now, self.sp_eps[sp]):
                changed.add(sp)
                rebuild.add(sp)
            self.sp_eps[sp] = now
        rebuilt = sorted(rebuild)
        if rebuilt:
            hints = hint_nodes[0] if hint_nodes else None
            self._rebuild_sets(rebuilt, g_sp, ep_idx, hints, node_index)
        return rebuilt, sorted(changed)

    def _rebuild_sets(self, sps: list[int], g_sp, g_idx, g_hints, node_index: dict) -> None:
        from .services import _categorize, _node_hint_sets

        sm = self.smap
        a = sm.arrays
        eps = [self.sp_eps[sp] for sp in sps]
        glob = np.concatenate(eps) if eps else np.zeros(0, np.int64)
        off = np.zeros(len(sps) + 1, np.int64)
        np.cumsum([x.shape[0] for x in eps], out=off[1:])
        col = {f: self.ep[f].a[glob] for f in ("ready", "serving", "terminating", "node", "hints")}
        flags = a.sp_flags[sps].copy()
        needs_local = (flags & (F_ITP_LOCAL | F_ETP_LOCAL)) != 0
        n_zones = int(a.zone_width) - 1
        n, n_ep = len(sps), glob.shape[0]
        n_hinted = int(np.count_nonzero(col["hints"]))
        set_off = np.zeros(n * (1 + n_zones) + n_ep + 2, np.int64)
        set_ep = np.empty(2 * n_ep + n_zones * n_hinted + 1, np.int32)
        sp_set = np.empty(n, np.int32)
        sp_has = np.empty(n, np.uint8)
        sp_row = np.empty(n, np.int32)
        zone_sets = np.empty(max(1, n * (n_zones + 1)), np.int32)
        loc_sp, loc_node, loc_set = (np.empty(n_ep, np.int32) for _ in range(3))
        counts = np.zeros(4, np.int64)
        _categorize(off, col["ready"], col["serving"], col["terminating"], col["node"], col["hints"], needs_local,
                    n_zones, self.n_nodes, set_off, set_ep, sp_set, sp_has, sp_row, zone_sets, loc_sp, loc_node,
                    loc_set, counts)
        n_sets, n_members, n_rows, n_loc = (int(x) for x in counts)
        set_off, set_ep = set_off[:n_sets + 1], set_ep[:n_members]
        flags = (flags & ~np.uint8(F_HAS_ANY | F_HAS_READY | F_NODE_HINTS)) | sp_has
        nh_keys = np.zeros(0, np.uint64)
        nh_sets = np.zeros(0, np.int64)
        if g_hints is not None:                     # node hints of these ports, in their endpoint order
            hint_of = {int(e): h for e, h in zip(g_idx.tolist(), g_hints)}
            local_hints = [hint_of.get(int(e), ()) for e in glob.tolist()]
            if any(local_hints):
                set_off, set_ep, nh_keys, nh_sets = _node_hint_sets(off, col["ready"], local_hints, node_index,
                                                                    set_off, set_ep, flags)
                n_sets = set_off.shape[0] - 1
        base_set = self.set_off.used - 1
        base_member = int(self.set_off.a[base_set])
        base_row = self.zone_sets.used // int(a.zone_width)
        members = glob[set_ep].astype(np.int32)
        m_ip = self.ep["ip"].a[members]
        m_port = self.ep["port"].a[members]
        self.set_off.extend(set_off[1:] + base_member)
        self.set_ep.extend(members)
        self.set_ip.extend(m_ip.astype(self.set_ip.a.dtype))
        self.set_port.extend(m_port.astype(self.set_port.a.dtype))
        self.set_backend.extend(m_ip.astype(np.uint64) | (m_port.astype(np.uint64) << np.uint64(32)))
        table = np.full(n_sets, -1, np.int32)
        if self.maglev is not None:
            self._maglev(set_off, backend_names(m_ip, m_port), table)
        self.set_table.extend(table)
        if n_rows:
            self.zone_sets.extend(zone_sets[:n_rows * (n_zones + 1)] + base_set)
        sp_a = np.array(sps, np.int64)
        if nh_keys.size:                            # node-hint keys name the local port: the real one
            nh_sp = ((nh_keys >> np.uint64(32)) & np.uint64(0x7FFFFFFF)).astype(np.int64)
            nh_keys = ((sp_a[nh_sp].astype(np.uint64) | np.uint64(NODE_HINT_KEY)) << np.uint64(32)) \
                | (nh_keys & np.uint64(0xFFFFFFFF))
        a.sp_set[sp_a] = np.where(sp_set >= 0, sp_set + base_set, -1)
        a.sp_zone_row[sp_a] = np.where(sp_row >= 0, sp_row + base_row, -1)
        a.sp_flags[sp_a] = flags
        self._spans(sp_a)
        arrays = a._replace(
            set_off=self.set_off.a, set_ep=self.set_ep.a, set_ip=self.set_ip.a, set_port=self.set_port.a,
            set_backend=self.set_backend.a, set_table=self.set_table.a, zone_sets=self.zone_sets.a,
            maglev=self.maglev.a if self.maglev is not None else a.maglev)
        if n_loc or nh_keys.size or not self.with_local.isdisjoint(sps):
            arrays = self._local(arrays, sp_a, loc_sp[:n_loc], loc_node[:n_loc], loc_set[:n_loc] + base_set,
                                 nh_keys, nh_sets + base_set)
        self.smap = dataclasses.replace(sm, arrays=arrays, local_sets=self.local)

    def _local(self, arrays, sp_a, loc_sp, loc_node, loc_set, nh_keys, nh_sets):
        """The local-set table and the per-port node lists: these ports' entries replaced."""
        owner = (self.loc_keys >> np.uint64(32)) & np.uint64(0x7FFFFFFF)
        keep = ~np.isin(owner, sp_a.astype(np.uint64))
        self.loc_keys = np.concatenate([self.loc_keys[keep], pack2_np(sp_a[loc_sp], loc_node), nh_keys])
        self.loc_vals = np.concatenate([self.loc_vals[keep], loc_set.astype(np.int64), nh_sets.astype(np.int64)])
        self.local = ExactTable.build(self.loc_keys, self.loc_vals)
        owner = ((self.loc_keys >> np.uint64(32)) & np.uint64(0x7FFFFFFF)).astype(np.int64)
        self.with_local = set(np.unique(owner).tolist())
        plain = (self.loc_keys >> np.uint64(63)) == 0
        l_sp = owner[plain]
        l_node = (self.loc_keys[plain] & np.uint64(0xFFFFFFFF)).astype(np.int32)
        order = np.lexsort((l_node, l_sp))
        lbn_off = np.zeros(arrays.sp_flags.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(l_sp, minlength=arrays.sp_flags.shape[0]), out=lbn_off[1:])
        return arrays._replace(loc_slots=self.local.slots, lbn_off=lbn_off, lbn_node=np.ascontiguousarray(l_node[order]))

    def _spans(self, sps: np.ndarray) -> None:
        """``sp_span``/``sp_table``: the in-cluster shortcut (see ``compile_services``) of these ports."""
        a = self.smap.arrays
        s0 = np.maximum(a.sp_set[sps], 0).astype(np.int64)
        off = self.set_off.a[:self.set_off.used]
        off = np.append(off, off[-1])               # s0 + 1 stays in range when there is no set
        first = off[s0]
        size = off[s0 + 1] - first
        flags = a.sp_flags[sps]
        plain = (((flags & (F_ITP_LOCAL | F_AFFINITY | F_NODE_HINTS)) == 0) & ((flags & F_HAS_ANY) != 0)
                 & (a.sp_zone_row[sps] < 0) & (a.sp_set[sps] >= 0) & (size > 0))
        a.sp_span[sps] = np.where(plain, (first << 32) | size, -1)
        a.sp_table[sps] = np.where(plain, np.append(self.set_table.a[:self.set_table.used], -1)[s0], -1)

    def _maglev(self, set_off: np.ndarray, names: np.ndarray, table: np.ndarray) -> None:
        """Maglev rows for new sets of two or more backends; a list seen before reuses its row."""
        sm = self.smap
        todo: dict[bytes, list[int]] = {}
        parts = []
        for s in np.flatnonzero(np.diff(set_off) >= 2).tolist():
            seg = names[set_off[s]:set_off[s + 1]]
            key = seg.tobytes()
            row = self.tables.get(key)
            if row is not None:
                table[s] = row
            elif key in todo:
                todo[key].append(s)
            else:
                todo[key] = [s]
                parts.append(seg)
        if not parts:
            return
        tab_off = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([p.shape[0] for p in parts], out=tab_off[1:])
        rows = build_tables(tab_off, np.concatenate(parts), sm.maglev_size, sm.seed)
        base = self.maglev.used
        self.maglev.extend(rows.astype(self.maglev.a.dtype))
        for k, (key, sets) in enumerate(todo.items()):
            self.tables[key] = base + k
            table[sets] = base + k

