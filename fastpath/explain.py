"""One flow, hop by hop, through the same compiled tables the kernels use.

:func:`explain` resolves the flow with the real kernels (so the verdict is the
one a replay gives) and narrates each table lookup on the way: who sends, DNS,
loopback, the service stage, the route, the neighbour table, the bridge FDB and
the listening port.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .addr import LOOPBACK_LEN, LOOPBACK_NET, cidr_contains, format_cidr, int_to_ip, int_to_mac, ip_to_int
from .cluster.compile import fdb_key
from .cluster.model import PROTO_NAMES
from .codes import PROTOCOLS
from .errors import FastpathError
from .pipeline import SRC_EXTERNAL, SRC_HOST, SRC_POD, DataPlane
from .tables.exact import pack2
from .tables.lpm import RouteTable


@dataclass
class Explanation:
    """The walk of one flow: numbered steps and the final result row."""

    flow: str
    steps: list[tuple[str, str]] = field(default_factory=list)   #: (stage, what happened)
    result: dict = field(default_factory=dict)                   #: the result columns

    def add(self, stage: str, text: str) -> None:
        self.steps.append((stage, text))

    def render(self) -> str:
        """Plain text, one step a line."""
        width = max((len(s) for s, _ in self.steps), default=6)
        lines = [self.flow]
        lines += [f"  {s:<{width}}  {t}" for s, t in self.steps]
        r = self.result
        lines.append(f"  {'result':<{width}}  {r['verdict']}, path {r['path']}, hops {r['hops']}"
                     f"{', service ' + r['service'] if r.get('service') else ''}")
        return "\n".join(lines)


def _parse_proto(proto: str | int) -> int:
    if isinstance(proto, int):
        return proto
    p = PROTOCOLS.get(str(proto).lower())
    if p is None:
        raise FastpathError(f"unknown protocol {proto!r}: use tcp, udp or sctp")
    return p


def _endpoint_ip(dp: DataPlane, text: str, what: str) -> int:
    """An IP, or a pod given as ``namespace/name`` (or a unique bare name)."""
    if any(ch.isalpha() for ch in text) or "/" in text:
        names = dp.tables.pod_names
        hits = [i for i, k in enumerate(names) if k == text or k.split("/", 1)[1] == text]
        if len(hits) != 1:
            raise FastpathError(f"{what} {text!r}: " + ("no such pod" if not hits else
                                f"ambiguous, matches {', '.join(names[i] for i in hits[:4])}"))
        ip = int(dp.tables.pod_ip[hits[0]])
        if not ip:
            raise FastpathError(f"{what} {text!r}: the pod has no IP yet")
        return ip
    return ip_to_int(text, what)


def explain(dp: DataPlane, src: str, dst: str, dport: int, proto: str | int = "tcp", sport: int = 40000,
            ts: int | None = None) -> Explanation:
    """Walk one flow through ``dp``'s tables.

    Parameters
    ----------
    src
        Client IP, or a pod (``namespace/name``).
    dst
        Destination IP, a pod, or a DNS name (resolved as the source pod's resolver would).
    dport, proto, sport
        Destination port, protocol (tcp/udp/sctp) and source port.
    """
    from .traces import normalize_batch

    t = dp.tables
    p = _parse_proto(proto)
    src_ip = _endpoint_ip(dp, src, "source")
    by_name = not _looks_like_ip(dst) and "/" not in dst     # namespace/name is a pod, never a DNS name
    cols = {"src_ip": pa.array([src_ip], pa.uint32()), "src_port": pa.array([sport], pa.uint16()),
            "dst_port": pa.array([dport], pa.uint16()), "proto": pa.array([p], pa.uint8())}
    if by_name:
        cols["dst_ip"] = pa.array([None], pa.uint32())
        cols["dst_name"] = pa.array([dst], pa.string())
        orig = 0
    else:
        orig = _endpoint_ip(dp, dst, "destination")
        cols["dst_ip"] = pa.array([orig], pa.uint32())
    if ts is not None:
        cols["ts"] = pa.array([ts], pa.int64())
    flows = normalize_batch(pa.record_batch(cols), "explain")
    r = dp.resolve_flows(flows)
    row = dp.to_arrow(r).to_pylist()[0]
    pname = PROTO_NAMES.get(p, str(p)).lower()
    ex = Explanation(f"flow {int_to_ip(src_ip)}:{sport} -> {dst}:{dport} {pname}", result=row)

    # --- who sends
    kind = int(r.src_kind[0])
    sp = int(r.src_pod[0])
    sn = int(r.src_node[0])
    if kind == SRC_POD:
        veth = _veth_of(dp, sp)
        ex.add("source", f"{int_to_ip(src_ip)} is pod {t.pod_names[sp]} on node {t.node_names[sn]} "
                         f"(pod-by-IP table: hit); leaves by eth0 -> veth{veth} -> cbr0")
    elif kind == SRC_HOST:
        ex.add("source", f"{int_to_ip(src_ip)} is node {t.node_names[sn]}'s address (host network namespace)")
    else:
        ex.add("source", f"{int_to_ip(src_ip)} is outside the cluster (not a pod, not a node)")

    # --- DNS
    if by_name:
        if row["verdict"] == "unresolved":
            ex.add("dns", f"{dst!r}: no answer (search path of the source's namespace, ndots:5)")
            return ex
        orig = _answered(dp, flows)
        ex.add("dns", f"{dst!r} -> {int_to_ip(orig)}")

    # --- loopback
    if row["path"] == "loopback" and (cidr_contains(LOOPBACK_NET, LOOPBACK_LEN, orig) or orig == src_ip):
        where = t.pod_names[sp] if kind == SRC_POD else f"node {t.node_names[sn]}"
        ex.add("loopback", f"{int_to_ip(orig)} stays inside {where}'s network namespace (lo)")
        ex.add("listen", _listen_text(dp, row, p, dport))
        return ex
    if row["verdict"] == "dropped" and cidr_contains(LOOPBACK_NET, LOOPBACK_LEN, orig):
        ex.add("drop", "a loopback destination from outside the cluster is a martian: dropped")
        return ex

    # --- service stage
    asked = {"src_ip": flows.src_ip, "dst_ip": np.array([orig], np.uint32), "src_port": flows.src_port,
             "dst_port": flows.dst_port, "proto": flows.proto, "ts": flows.ts}
    for line in _service_lines(dp, asked, r):
        ex.add("service", line)
    if row["path"] == "none" and row["verdict"] in ("rejected", "dropped") and row["dst_node"] is None \
            and (row["service"] is not None or row["verdict"] == "rejected"):
        return ex                       # stopped by kube-proxy: no endpoint, no local endpoint, unserved port
    d = int(r.dnat_ip[0])
    port = int(r.dnat_port[0])
    if row["service"] is None and kind != SRC_EXTERNAL:
        ex.add("service", f"{int_to_ip(d)} {pname}/{port}: no frontend (not a service)")

    # --- route
    nh = int(t.routes.lookup(np.array([d], np.uint32))[0])
    if nh != RouteTable.MISS:
        pref = _matched_prefix(t.routes, d)
        ex.add("route", f"{int_to_ip(d)}: longest prefix {pref} in the cluster route table -> node {t.node_names[nh]}")
        if sn >= 0 and nh != sn:
            ex.add("forward", f"node {t.node_names[sn]} -> node {t.node_names[nh]} "
                              f"({int_to_ip(int(t.node_ip[nh]))})")
        mac = t.neighbours.get(int(pack2(nh, d)))
        if mac < 0:
            ex.add("neighbour", f"node {t.node_names[nh]}: no neighbour entry for {int_to_ip(d)} (no such pod)")
            return ex
        ex.add("neighbour", f"node {t.node_names[nh]}: {int_to_ip(d)} -> {int_to_mac(mac)}")
        port_id = t.fdb.get(fdb_key(nh, mac))
        dp_ = int(t.port_pod[port_id])
        ex.add("fdb", f"cbr0 on {t.node_names[nh]}: {int_to_mac(mac)} -> port veth{int(t.port_veth[port_id])} "
                      f"-> pod {t.pod_names[dp_]} eth0")
        ex.add("listen", _listen_text(dp, row, p, port))
        return ex
    hn = t.node_by_ip.get(d)
    if hn >= 0:
        ex.add("route", f"{int_to_ip(d)}: not in any pod CIDR; it is node {t.node_names[hn]}'s address")
        ex.add("listen", _listen_text(dp, row, p, port))
        return ex
    if row["verdict"] == "egress":
        ex.add("route", f"{int_to_ip(d)}: outside pod, node and service ranges -> default route, leaves the cluster")
        ex.add("snat", f"masquerade {int_to_ip(src_ip)} -> {int_to_ip(int(r.snat_ip[0]))}")
    else:
        ex.add("route", f"{int_to_ip(d)}: no route from outside the cluster: dropped")
    return ex


def _looks_like_ip(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(x.isdigit() for x in parts)


def _answered(dp: DataPlane, flows) -> int:
    dst = dp._resolve_names(flows, np.full(flows.n, 255, np.uint8))
    return int(dst[0])


def _veth_of(dp: DataPlane, pod: int) -> int:
    hits = np.flatnonzero(dp.tables.port_pod == pod)
    return int(dp.tables.port_veth[hits[0]]) if hits.size else 0


def _matched_prefix(rt: RouteTable, addr: int) -> str:
    p, ln, _ = rt.prefixes()
    best = None
    for net, length in zip(p.tolist(), ln.tolist()):
        if cidr_contains(net, length, addr) and (best is None or length > best[1]):
            best = (net, length)
    return format_cidr(*best) if best else "-"


def _listen_text(dp: DataPlane, row: dict, proto: int, port: int) -> str:
    pname = PROTO_NAMES.get(proto, str(proto)).lower()
    target = row["dst_pod"] or (f"node {row['dst_node']}" if row["dst_node"] else "?")
    if row["verdict"] == "delivered":
        return f"{target} declares {pname}/{port}: delivered"
    return f"nothing in {target} declares {pname}/{port}: refused"


def _service_lines(dp: DataPlane, flows, r) -> list[str]:
    from .tables.services import explain_service

    return explain_service(dp, flows, r)
