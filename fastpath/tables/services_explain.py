"""Why the service stage did what it did to one flow (``fastpath explain``'s service lines).

:func:`explain_service` replays one resolved flow through :class:`~fastpath.tables.services.ServiceMap`
in plain Python: the frontend it matched, the eligible endpoints kube-proxy would
consider from the receiving node, the balancer's pick, and the NAT. Importable from
:mod:`fastpath.tables.services` as before.
"""
from __future__ import annotations

import numpy as np

from ..addr import int_to_ip
from ..cluster.model import PROTO_NAMES
from ..codes import DROPPED, REJECTED
from .balancers import (F_AFFINITY, F_HAS_ANY, F_HAS_READY, FE_CLUSTER_IP, FE_NODE_PORT, FRONTEND_KINDS,
                        LB_LEAST_CONN, LB_MAGLEV, LB_RANDOM, LB_ROUND_ROBIN, LB_SOURCE_HASH, SALT_MAGLEV, SALT_NODE,
                        SALT_RANDOM, SALT_SOURCE, client_hash, flow_eligible_set, flow_hash, modn, uses_local)
from .services import ServiceMap, balancer_code


def explain_service(dp, flows, results, row: int = 0) -> list[str]:
    """Why the service stage did what it did to one resolved flow, as lines of text.

    Parameters
    ----------
    dp
        A :class:`fastpath.pipeline.DataPlane` (its ``services`` and ``stage``
        are used) or a :class:`ServiceMap`.
    flows
        The flows (``src_ip``, ``dst_ip``, ``src_port``, ``dst_port``, ``proto``
        and optionally ``ts`` arrays, as attributes or dict keys).
    results
        The batch's results after the stage (``service``, ``verdict``,
        ``src_node``, ``dnat_ip``, ``dnat_port``, ``snat_ip``, and ``src_kind``
        where known: 2 = external client).
    row
        Which flow.

    Returns
    -------
    list of str
        Frontend and its kind, receiving node, eligible endpoints and why
        (policy, fallback, topology), the backend and why (balancer, hash,
        affinity), and source NAT. Empty where the flow hit no frontend and no
        ClusterIP.
    """
    smap: ServiceMap = dp.services if hasattr(dp, "services") else dp
    stage = getattr(dp, "stage", None)

    def get(obj, name):
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    src, dst = int(get(flows, "src_ip")[row]), int(get(flows, "dst_ip")[row])
    sport, dport, proto = int(get(flows, "src_port")[row]), int(get(flows, "dst_port")[row]), int(get(flows, "proto")[row])
    pname = PROTO_NAMES.get(proto, str(proto)).lower()
    sp = int(get(results, "service")[row])
    verdict = int(get(results, "verdict")[row])
    rn = int(get(results, "src_node")[row])
    kinds = get(results, "src_kind")
    a = smap.arrays
    lines: list[str] = []
    if sp < 0:
        if smap.cluster_ips.get(dst) >= 0:
            lines.append(f"{int_to_ip(dst)} is a ClusterIP but no service port serves {pname}/{dport} "
                         f"there: rejected (ICMP port unreachable)")
        return lines
    value = int(smap.frontend_lookup(np.array([dst]), np.array([proto]), np.array([dport]))[0])
    kind = (value >> 32) & 0xF
    fnode = (value >> 36) - 1
    external = bool(kinds[row] == 2) if kinds is not None else rn < 0
    name = smap.names[sp]
    where = f" on node {smap.node_names[fnode]}'s address" if kind == FE_NODE_PORT else ""
    lines.append(f"{int_to_ip(dst)} {pname}/{dport} is the {FRONTEND_KINDS[kind]} frontend of {name}{where}")
    flags = int(smap.sp_flags[sp])
    node = smap.node_names[rn] if rn >= 0 else "?"
    if not external:
        lines.append(f"in-cluster client: kube-proxy on its node {node} decides")
    elif kind == FE_NODE_PORT:
        lines.append(f"external client: received by node {node}, which owns the address")
    elif rn >= 0:
        local = bool(uses_local(np.uint8(flags), kind, True))
        cand = int(a.lbn_off[sp + 1] - a.lbn_off[sp])
        pool = (f"the {cand} node(s) with local endpoints ({_policy_name(kind)} Local: the load balancer's "
                f"health check)" if local and cand else f"all {len(a.node_pool)} nodes")
        h = int(flow_hash(a.keys[SALT_NODE], src, dst, sport, dport, proto))
        lines.append(f"external client: received by node {node}, drawn by flow hash {h:#010x} among {pool}")
    if not flags & F_HAS_ANY:
        lines.append(f"{name} has no Ready or Serving+Terminating endpoint: rejected (ICMP port unreachable)")
        return lines
    if rn < 0:
        lines.append("no node can receive the flow: dropped")
        return lines
    local = bool(uses_local(np.uint8(flags), kind, external))
    s = flow_eligible_set(a, sp, kind, external, rn)
    policy = _policy_name(kind) if kind == FE_CLUSTER_IP or external else None
    if local:
        if s < 0:
            lines.append(f"{policy} Local: no endpoint of {name} on node {node}: dropped")
            return lines
        members = smap.set_members(s)
        why = "Ready" if smap.ep_ready[members].all() else "no local Ready one, so Serving+Terminating"
        lines.append(f"{policy} Local: {members.size} {why} endpoint(s) on node {node} eligible")
    else:
        members = smap.set_members(s)
        head = f"{policy} Cluster" if policy else "in-cluster client on an external frontend: cluster view"
        if not flags & F_HAS_READY:
            lines.append(f"{head}: no Ready endpoint, falling back to {members.size} Serving+Terminating")
        elif s != int(a.sp_set[sp]):
            z = int(a.node_zone[rn])
            lines.append(f"{head}: topology hints, node zone {smap.zones[z]}: {members.size} of "
                         f"{smap.set_members(int(a.sp_set[sp])).size} Ready endpoints hinted for it")
        else:
            lines.append(f"{head}: {members.size} Ready endpoint(s) eligible")
    lines.append("eligible: " + ", ".join(smap.backend_text(int(e)) for e in members[:8])
                 + (f", ... ({members.size} in all)" if members.size > 8 else ""))
    if verdict in (REJECTED, DROPPED):
        return lines
    e_chosen = _chosen(smap, members, int(get(results, "dnat_ip")[row]), int(get(results, "dnat_port")[row]))
    n = members.size
    pos = int(np.flatnonzero(members == e_chosen)[0]) if e_chosen >= 0 else -1
    lb = balancer_code(smap.lb)
    if flags & F_AFFINITY:
        lines.append(f"sessionAffinity ClientIP ({int(smap.affinity_timeout[sp])} s): node {node} keeps the "
                     f"client's backend while the client returns through node {node} within the timeout "
                     f"(each node's kube-proxy has its own affinity entries: through another node the client "
                     f"may get another backend)")
    if lb == LB_RANDOM:
        h = int(flow_hash(a.keys[SALT_RANDOM], src, dst, sport, dport, proto))
        lines.append(f"random: 5-tuple hash {h:#010x} -> position {modn(h, n)} of {n}")
    elif lb == LB_SOURCE_HASH:
        h = int(client_hash(a.keys[SALT_SOURCE], src))
        lines.append(f"source-hash: client hash {h:#010x} -> position {modn(h, n)} of {n}")
    elif lb == LB_MAGLEV:
        h = int(flow_hash(a.keys[SALT_MAGLEV], src, dst, sport, dport, proto))
        t = int(a.set_table[s])
        if t < 0:
            lines.append("maglev: a single backend")
        else:
            idx = int(modn(h, smap.maglev_size))
            lines.append(f"maglev: 5-tuple hash {h:#010x} mod {smap.maglev_size} = slot {idx} -> position "
                         f"{int(a.maglev[t, idx])} of {n} (table shared by {int((a.set_table == t).sum())} set(s))")
    elif lb == LB_ROUND_ROBIN and stage is not None:
        c = stage.state.rr_counter(rn, sp)
        lines.append(f"round-robin: node {node}'s counter for {name} now {c} (next position {c % n} of {n})")
    elif lb == LB_LEAST_CONN and stage is not None:
        counts = ", ".join(f"{int_to_ip(int(smap.ep_ip[e]))}:{int(smap.ep_port[e])}="
                           f"{stage.state.active_connections(rn, int(e)) - (int(e) == e_chosen)}"
                           for e in members[:8])
        lines.append(f"least-connection: active connections from node {node} before this one: {counts} "
                     f"(fewest wins, first in list order on ties)")
    if pos >= 0:
        lines.append(f"DNAT -> {smap.backend_text(e_chosen)}")
    snat = int(get(results, "snat_ip")[row])
    if snat != src:
        reason = ("hairpin: the backend is the client itself" if int(get(results, "dnat_ip")[row]) == src else
                  "an external client reaching a ClusterIP" if kind == FE_CLUSTER_IP else
                  "an external client under externalTrafficPolicy Cluster")
        lines.append(f"SNAT (masquerade) {int_to_ip(src)} -> {int_to_ip(snat)}, node {node}'s address: {reason}")
    elif external:
        lines.append("client IP kept (externalTrafficPolicy Local)")
    return lines


def _policy_name(kind: int) -> str:
    return "internalTrafficPolicy" if kind == FE_CLUSTER_IP else "externalTrafficPolicy"


def _chosen(smap: ServiceMap, members: np.ndarray, ip: int, port: int) -> int:
    hit = members[(smap.ep_ip[members] == ip) & (smap.ep_port[members] == port)]
    return int(hit[0]) if hit.size else -1
