"""Service ports and frontends: the first half of the service map (:mod:`fastpath.tables.services`).

:func:`service_ports` numbers every port of every proxied Service (its *service-port
id*) and lists the addresses that reach it; :func:`frontend_tables` turns those into
the exact-match tables the service stage probes (ClusterIP, load-balancer and
externalIP frontends, NodePorts, node addresses, the known ClusterIPs). A replay with
cluster events (:mod:`fastpath.live`) calls both again when a Service changes, with
the service-port ids fixed, so every other table keeps its meaning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..addr import int_to_ip
from ..cluster.model import PROTO_NAMES, node_addresses
from ..errors import FastpathError
from .balancers import (F_AFFINITY, F_ETP_LOCAL, F_ITP_LOCAL, FE_CLUSTER_IP, FE_EXTERNAL_IP, FE_LOAD_BALANCER,
                        FE_NODE_PORT)
from .exact import EMPTY, ExactTable, pack3_np

#: Default ``sessionAffinityConfig.clientIP.timeoutSeconds``.
DEFAULT_AFFINITY_TIMEOUT = 10800


@dataclass
class ServicePorts:
    """Every service port by id, and the frontend claims on them (lists, in service order)."""

    names: list[str]            #: ``namespace/name:portname-or-port``
    service: list[int]          #: index into the services list (-1: a fixed id no service has now)
    port: list[int]
    proto: list[int]
    pname: list[str]            #: slice port name it matches ("" where unnamed)
    flags: list[int]            #: F_ITP_LOCAL | F_ETP_LOCAL | F_AFFINITY
    timeout: list[int]          #: ClientIP affinity timeout, seconds
    by_service: dict            #: (namespace, name) -> its service-port ids
    fe: dict                    #: frontend kind -> (ips, protos, ports, sps)
    np_proto: list[int]         #: NodePorts: protocol, port, service port
    np_port: list[int]
    np_sp: list[int]
    cluster_ips: list[int]


def service_ports(services: list, sp_names: list[str] | None = None) -> ServicePorts:
    """Number the ports of the proxied ``services`` (ExternalName and headless ones are not).

    ``sp_names``: fixed ids by name (see :func:`fastpath.tables.services.compile_services`).
    """
    names: list[str] = []
    sp_service, sp_port, sp_proto, sp_flags, sp_timeout = [], [], [], [], []
    sp_pname: list[str] = []
    fe = {k: ([], [], [], []) for k in (FE_CLUSTER_IP, FE_LOAD_BALANCER, FE_EXTERNAL_IP)}  # ip, proto, port, sp
    np_proto, np_port, np_sp = [], [], []
    cluster_ips: list[int] = []
    sp_by_svc: dict[tuple[str, str], list[int]] = {}
    fixed = None
    if sp_names is not None:               # fixed ids: every row exists up front, blank until a port claims it
        fixed = {name: i for i, name in enumerate(sp_names)}
        names = list(sp_names)
        n = len(names)
        sp_service, sp_port, sp_proto, sp_pname = [-1] * n, [0] * n, [0] * n, [""] * n
        sp_flags, sp_timeout = [0] * n, [DEFAULT_AFFINITY_TIMEOUT] * n
    for si, svc in enumerate(services):
        if svc.type == "ExternalName" or svc.headless:
            continue                       # not proxied (ShouldSkipService)
        cluster_ips.extend(svc.cluster_ips)
        flags = ((F_ITP_LOCAL if svc.internal_policy == "Local" else 0)
                 | (F_ETP_LOCAL if svc.external_policy == "Local" else 0)
                 | (F_AFFINITY if svc.session_affinity else 0))
        timeout = svc.affinity_timeout or DEFAULT_AFFINITY_TIMEOUT
        node_ports = svc.type in ("NodePort", "LoadBalancer")
        lb_ips = svc.lb_ips if svc.type == "LoadBalancer" else ()
        for port in svc.ports:
            name = f"{svc.namespace}/{svc.name}:{port.name or port.port}"
            if fixed is None:
                sp = len(names)
                names.append(name)
                for col, x in ((sp_service, si), (sp_port, port.port), (sp_proto, port.proto),
                               (sp_pname, port.name or ""), (sp_flags, flags), (sp_timeout, timeout)):
                    col.append(x)
            else:
                sp = fixed.get(name)
                if sp is None:
                    raise FastpathError(f"service port {name} is not among the fixed service-port ids")
                sp_service[sp], sp_port[sp], sp_proto[sp], sp_pname[sp] = si, port.port, port.proto, port.name or ""
                sp_flags[sp], sp_timeout[sp] = flags, timeout
            sp_by_svc.setdefault((svc.namespace, svc.name), []).append(sp)
            for kind, ips in ((FE_CLUSTER_IP, svc.cluster_ips), (FE_LOAD_BALANCER, lb_ips),
                              (FE_EXTERNAL_IP, svc.external_ips)):
                cols = fe[kind]
                for ip in ips:
                    cols[0].append(ip)
                    cols[1].append(port.proto)
                    cols[2].append(port.port)
                    cols[3].append(sp)
            if node_ports and port.node_port:
                np_proto.append(port.proto)
                np_port.append(port.node_port)
                np_sp.append(sp)
    return ServicePorts(names, sp_service, sp_port, sp_proto, sp_pname, sp_flags, sp_timeout, sp_by_svc, fe,
                        np_proto, np_port, np_sp, cluster_ips)


def frontend_filter(frontends: ExactTable, node_ips: ExactTable, cluster_ips: ExactTable) -> np.ndarray:
    """The bit set over every address the service stage may take a flow at (frontends, node
    addresses, known ClusterIPs): most flows pass the stage with one load (``balancers.address_filter``)."""
    from .balancers import address_filter

    return address_filter(np.concatenate([
        (frontends.keys[frontends.keys != EMPTY] >> np.uint64(24)), node_ips.keys[node_ips.keys != EMPTY],
        cluster_ips.keys[cluster_ips.keys != EMPTY]]))


def frontend_tables(ports: ServicePorts, nodes: list, warnings: list[str]
                    ) -> tuple[ExactTable, ExactTable, ExactTable, ExactTable]:
    """The frontend tables of ``ports``: exact frontends, NodePorts, node addresses, known ClusterIPs."""
    frontends, node_ports, node_ips = _frontend_table(ports.fe, ports.np_proto, ports.np_port, ports.np_sp,
                                                      nodes, ports.names, warnings)
    cip = np.unique(np.array(ports.cluster_ips, dtype=np.uint64))
    return frontends, node_ports, node_ips, ExactTable.build(cip, np.ones(cip.shape[0], np.int64))


def _frontend_table(fe: dict, np_proto: list, np_port: list, np_sp: list, nodes: list, names: list[str],
                    warnings: list[str]) -> tuple[ExactTable, ExactTable, ExactTable]:
    """The frontend tables: exact (ClusterIP, LB, externalIP), NodePorts, node addresses.

    A NodePort is one entry keyed by (protocol, port) and matches on every node
    address, so the table grows with service ports, not service ports x nodes.
    The first claim of a key wins (see the module docstring).
    """
    keys, vals = [], []
    for kind in (FE_CLUSTER_IP, FE_LOAD_BALANCER, FE_EXTERNAL_IP):
        ip, proto, port, sp = (np.array(c, dtype=np.int64) for c in fe[kind])
        keys.append(pack3_np(ip, proto, port))
        vals.append(sp | (kind << 32))
    k = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.int64)
    uniq, first, inverse = np.unique(k, return_index=True, return_inverse=True)

    def lost(count: int, key: int, loser: int, winner: int) -> None:
        warnings.append(
            f"{count} frontend claim(s) lost to an earlier one: e.g. "
            f"{int_to_ip(key >> 24)} {PROTO_NAMES.get((key >> 16) & 0xFF, '?').lower()}/{key & 0xFFFF} "
            f"of {names[loser & 0xFFFFFFFF]} goes to {names[winner & 0xFFFFFFFF]}")

    clash = np.flatnonzero(v != v[first][inverse])       # a later claim that differs from the kept one
    if clash.size:
        j = int(clash[0])
        lost(int(clash.size), int(k[j]), int(v[j]), int(v[first[inverse[j]]]))
    exact = ExactTable.build(uniq, v[first])

    n_ip, n_node = node_addresses(nodes)
    node_ips = ExactTable.build(np.array(n_ip, dtype=np.uint64), np.array(n_node, dtype=np.int64))
    np_key = pack3_np(np.zeros(len(np_sp), dtype=np.int64), np.array(np_proto, dtype=np.int64),
                      np.array(np_port, dtype=np.int64))
    np_val = np.array(np_sp, dtype=np.int64) | (FE_NODE_PORT << 32)
    nk, nfirst, ninv = np.unique(np_key, return_index=True, return_inverse=True)
    nclash = np.flatnonzero(np_val != np_val[nfirst][ninv])
    if nclash.size:
        j = int(nclash[0])
        lost(int(nclash.size), int(np_key[j]), int(np_val[j]), int(np_val[nfirst[ninv[j]]]))
    node_ports = ExactTable.build(nk, np_val[nfirst])
    # an exact frontend on a node address hides a NodePort on the same (protocol, port)
    if uniq.size and n_ip:
        on_node = np.isin((uniq >> np.uint64(24)).astype(np.int64), np.array(n_ip, dtype=np.int64))
        hidden = [(int(key), int(val)) for key, val in zip(uniq[on_node], v[first][on_node])
                  if node_ports.get(int(key) & 0xFFFFFF) >= 0]
        if hidden:
            key, val = hidden[0]
            lost(len(hidden), key, node_ports.get(key & 0xFFFFFF), val)
    return exact, node_ports, node_ips
