"""One flow, hop by hop, through the same compiled tables the kernels use.

:func:`explain` resolves the flow with the real kernels (so the verdict is the
one a replay gives) and narrates each table lookup on the way: who sends, DNS,
loopback, the service stage, the route, the neighbour table, the bridge FDB and
the listening port.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .addr import LOOPBACK_LEN, LOOPBACK_NET, cidr_contains, format_cidr, int_to_ip, int_to_mac, ip_to_int
from .cluster.compile import fdb_key
from .cluster.hostside import NH_NO_MASQUERADE, NH_NODE_NOT_IN_INPUT
from .cluster.model import PROTO_NAMES
from .codes import PROTOCOLS
from .errors import FastpathError
from .pipeline import SRC_EXTERNAL, SRC_HOST, SRC_POD, DataPlane
from .tables.exact import pack2, pack3
from .tables.lpm import RouteTable


@dataclass
class Explanation:
    """The walk of one flow: numbered steps and the final result row.

    ``steps`` is the text walk; ``hops`` the same steps structured for machines
    (as Batfish's traceroute answers): ``step`` (1, 2, ...), ``stage``, ``node``
    (where the lookup happens), ``table`` (which table), ``key`` (what was looked
    up), ``result`` (what it gave) and ``detail`` (the text line); a field that
    does not apply is None. :meth:`to_dict` adds the final ``disposition``.
    ``conntrack`` says what the connection leaves in the nodes' conntrack tables
    (state after the walk, not a step of it).
    """

    flow: str
    steps: list[tuple[str, str]] = field(default_factory=list)   #: (stage, what happened)
    result: dict = field(default_factory=dict)                   #: the result columns
    hops: list[dict] = field(default_factory=list)               #: the steps, structured
    query: dict = field(default_factory=dict)                    #: the flow asked about, structured
    conntrack: list[str] = field(default_factory=list)           #: entries it leaves, a line per node

    def add(self, stage: str, text: str, *, node: str | None = None, table: str | None = None,
            key: str | None = None, result: str | None = None) -> None:
        """One step: ``stage`` and its text; ``node``/``table``/``key``/``result`` where they apply."""
        self.steps.append((stage, text))
        self.hops.append({"step": len(self.hops) + 1, "stage": stage, "node": node, "table": table, "key": key,
                          "result": result, "detail": text})

    @property
    def verdict(self) -> str:
        """The flow's verdict (``delivered``, ``refused``, ...)."""
        return self.result.get("verdict", "")

    @property
    def delivered(self) -> bool:
        """Whether the flow got where it was going: delivered, or egress (it left the cluster)."""
        return self.verdict in ("delivered", "egress")

    def disposition(self) -> dict:
        """The final answer: verdict, reason (None where delivered), path, hops, and where it ended."""
        r = self.result
        dnat = r.get("dnat_ip")
        return {"verdict": r.get("verdict"), "reason": r.get("reason"), "path": r.get("path"),
                "hops": r.get("hops"), "service": r.get("service"), "dst_node": r.get("dst_node"),
                "dst_pod": r.get("dst_pod"),
                "dnat": None if dnat is None else f"{int_to_ip(int(dnat))}:{r.get('dnat_port')}",
                "snat_ip": None if r.get("snat_ip") is None else int_to_ip(int(r["snat_ip"]))}

    def to_dict(self) -> dict:
        """JSON-ready: ``flow`` (the query), ``hops`` (structured steps), ``disposition``, ``result`` row."""
        row = dict(self.result)
        for k in ("dnat_ip", "snat_ip"):
            if row.get(k) is not None:
                row[k] = int_to_ip(int(row[k]))
        return {"flow": dict(self.query, text=self.flow), "hops": [dict(h) for h in self.hops],
                "disposition": self.disposition(), "conntrack": list(self.conntrack), "result": row}

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text (``fastpath explain -o json``)."""
        return json.dumps(self.to_dict(), indent=indent)

    def render(self) -> str:
        """Plain text, one step a line."""
        width = max([len(s) for s, _ in self.steps] + [9 if self.conntrack else 6])
        lines = [self.flow]
        lines += [f"  {s:<{width}}  {t}" for s, t in self.steps]
        lines += [f"  {'conntrack':<{width}}  {t}" for t in self.conntrack]
        r = self.result
        lines.append(f"  {'result':<{width}}  {r['verdict']}, path {r['path']}, hops {r['hops']}"
                     f"{', service ' + r['service'] if r.get('service') else ''}"
                     f"{', reason ' + r['reason'] if r.get('reason') else ''}")
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


@dataclass(frozen=True)
class Endpoint:
    """What a name given to :func:`explain` names, as kubectl would read it."""

    text: str               #: as given
    kind: str               #: ``ip``, ``pod``, ``node``, ``service`` or ``dns``
    ip: int | None          #: the address the flow uses (None for a DNS name)
    name: str | None = None  #: pod ``namespace/name``, node name, service ``namespace/name``, or the DNS name


def _find_service(dp: DataPlane, ns: str, name: str):
    return next((s for s in dp.cluster.services if s.namespace == ns and s.name == name), None)


def _service_endpoint(dp: DataPlane, text: str, svc, what: str) -> Endpoint:
    if svc.type == "ExternalName":
        return Endpoint(text, "dns", None, f"{svc.name}.{svc.namespace}.svc.{dp.cluster.domain}")
    if not svc.cluster_ips:
        raise FastpathError(f"{what} {text!r}: service {svc.key} is headless (no ClusterIP); name one of its pods")
    return Endpoint(text, "service", int(svc.cluster_ips[0]), svc.key)


def lookup_endpoint(dp: DataPlane, text: str, role: str = "source", src_is_pod: bool = False) -> Endpoint:
    """Read a ``--src``/``--dst`` name the way kubectl users write them.

    An IP (``10.244.1.7``); a pod (``namespace/name``, ``pod/namespace/name`` or a
    unique bare name); a node (``node-003`` or ``node/node-003``: its InternalIP);
    and, as destination, a service (``svc/namespace/name``: its ClusterIP; or
    ``name.namespace`` where that service exists: from a pod, through the pod's DNS
    resolver as the pod would ask; from a node or an outside client, which do not
    use the cluster's DNS, the service's ClusterIP, with a ``dns`` step saying whether
    the name itself gets a DNS answer there, as a replay row by name does) or any other DNS name.
    """
    what = role
    t = dp.tables
    kind, _, rest = text.partition("/")
    if _looks_like_ip(text) or (text and all(ch.isdigit() or ch == "." for ch in text)):
        return Endpoint(text, "ip", ip_to_int(text, what))
    if kind in ("svc", "service", "services") and rest:
        if role == "source":
            raise FastpathError(f"{what} {text!r}: a service cannot send; name a pod, node or IP")
        ns, _, name = rest.rpartition("/")
        hits = [s for s in dp.cluster.services if s.name == name and (s.namespace == ns or not ns)]
        if len(hits) != 1:
            raise FastpathError(f"{what} {text!r}: " + ("no such service" if not hits else
                                "ambiguous, give svc/NAMESPACE/NAME: " + ", ".join(s.key for s in hits[:4])))
        return _service_endpoint(dp, text, hits[0], what)
    if kind in ("node", "nodes", "no") and rest:
        text_node = rest
    else:
        text_node = text
    if text_node in t.node_names:
        node = next(n for n in dp.cluster.nodes if n.name == text_node)
        if node.internal_ip is None:
            raise FastpathError(f"{what} {text!r}: node {node.name} has no InternalIP")
        return Endpoint(text, "node", int(node.internal_ip), node.name)
    if kind in ("node", "nodes", "no") and rest:
        raise FastpathError(f"{what} {text!r}: no such node")
    pod_text = rest if kind in ("pod", "pods", "po") and rest else text
    if "/" in pod_text or role == "source":
        return Endpoint(text, "pod", _endpoint_ip(dp, pod_text, what), _pod_key(dp, pod_text))
    labels = text.split(".")
    domain = dp.cluster.domain
    if len(labels) >= 2 and (len(labels) == 2 or ".".join(labels[2:]) in ("svc", f"svc.{domain}")):
        svc = _find_service(dp, labels[1], labels[0])
        if svc is not None:
            if src_is_pod or svc.headless or svc.type == "ExternalName":
                return Endpoint(text, "dns", None, text)          # the pod asks its resolver, as it would
            return _service_endpoint(dp, text, svc, what)        # a node or outside client: the service itself
    if text in t.pod_names or sum(1 for k in t.pod_names if k.split("/", 1)[1] == text) == 1:
        return Endpoint(text, "pod", _endpoint_ip(dp, text, what), _pod_key(dp, text))
    return Endpoint(text, "dns", None, text)


def _pod_key(dp: DataPlane, text: str) -> str:
    names = dp.tables.pod_names
    return next((k for k in names if k == text), None) or next(k for k in names if k.split("/", 1)[1] == text)


def _named_port(dp: DataPlane, dst: Endpoint, port: str, src_ip: int | None = None,
                sport: int = 40000) -> tuple[int, int]:
    """(number, protocol) of the named ``port`` of the destination (a service's port, a pod's container port).

    A DNS name that is not ``name.namespace`` of a service (``kube-dns`` from a pod of its
    namespace) is read as what the source's resolver answers for it.
    """
    c = dp.cluster
    if dst.kind in ("service", "dns"):
        ns_name = dst.name if dst.kind == "service" else None
        if ns_name is None:
            labels = dst.text.split(".")
            ns_name = f"{labels[1]}/{labels[0]}" if len(labels) >= 2 else None
        svc = next((s for s in c.services if s.key == ns_name), None) if ns_name else None
        if svc is not None:
            hit = next((sp for sp in svc.ports if sp.name == port), None)
            if hit is None:
                raise FastpathError(f"--dport {port!r}: service {svc.key} has no port named so (it has "
                                    + (", ".join(sp.name or str(sp.port) for sp in svc.ports) or "no ports") + ")")
            return hit.port, hit.proto
        if dst.kind == "dns" and src_ip is not None:
            answer = _name_answer(dp, src_ip, sport, dst.name or dst.text)
            if answer is not None:
                return _named_port(dp, Endpoint(dst.text, "ip", answer), port)
    if dst.kind == "ip" and dst.ip is not None:
        svc = next((s for s in c.services if dst.ip in s.cluster_ips), None)
        if svc is not None:
            return _named_port(dp, Endpoint(dst.text, "service", dst.ip, svc.key), port)
    pods = []
    if dst.kind == "pod" or (dst.kind == "ip" and dst.ip is not None):
        pods = [pd for pd in c.pods if (pd.key == dst.name if dst.kind == "pod" else pd.ip == dst.ip)]
    elif dst.kind == "node":
        pods = [pd for pd in c.pods if pd.host_network and pd.node == dst.name]
    for pd in pods:
        for cp in pd.ports:
            if cp.name == port:
                return cp.port, cp.proto
    if pods or dst.kind in ("pod", "node"):
        raise FastpathError(f"--dport {port!r}: no container port of that name at {dst.text}")
    raise FastpathError(f"--dport {port!r}: a named port needs a service, pod or node destination "
                        f"({dst.text!r} is neither); give a number")


def explain(dp: DataPlane, src: str, dst: str, dport: int | str, proto: str | int | None = None,
            sport: int = 40000, ts: int | None = None) -> Explanation:
    """Walk one flow through ``dp``'s tables, without changing them.

    Parameters
    ----------
    src
        Client: an IP, a pod (``namespace/name`` or a unique bare name), or a
        node (``node-003``: its InternalIP). See :func:`lookup_endpoint`.
    dst
        Destination: an IP, a pod, a node, a service (``svc/namespace/name`` or
        ``name.namespace``), or a DNS name (resolved as the source pod's resolver would).
    dport
        Destination port: a number, or a named port of the destination
        (``http``: the service's port of that name, or a container port's).
    proto
        tcp, udp, sctp or a protocol number; default the named port's, else tcp.
    sport
        Source port.
    ts
        The flow's time (ns), for timed state.

    The flow runs through the real kernels on a copy of the balancer state
    (round-robin counters, connections, affinities): the answer is what the
    next flow would get, and ``dp`` is left as it was.
    """
    s_end = lookup_endpoint(dp, str(src), "source")
    # a pod asks its resolver: one the kernels see as a pod (a pod on a node not in the input sends as an
    # outside client, whether named or given by IP)
    from_pod = dp.tables.pod_by_ip.get(int(s_end.ip)) >= 0
    d_end = lookup_endpoint(dp, str(dst), "destination", src_is_pod=from_pod)
    named = None
    if isinstance(dport, str) and not dport.isdigit():
        dport, named = _named_port(dp, d_end, dport, int(s_end.ip), int(sport))
    if isinstance(dport, str):
        dport = int(dport)
    if not 0 <= int(dport) <= 0xFFFF or not 0 <= int(sport) <= 0xFFFF:
        raise FastpathError(f"port out of range 0..65535: dport {dport}, sport {sport}")
    p = _parse_proto(proto if proto is not None else (named or "tcp"))
    saved = dp.stage
    dp.stage = _stage_copy(saved)
    try:
        ex = _explain(dp, s_end, d_end, int(dport), p, int(sport), ts)
    finally:
        dp.stage = saved
    _add_conntrack(ex, dp, p)
    ex.query = {"src": str(src), "src_kind": s_end.kind, "src_ip": int_to_ip(s_end.ip), "dst": str(dst),
                "dst_kind": d_end.kind, "dst_ip": None if d_end.ip is None else int_to_ip(d_end.ip),
                "dst_name": d_end.name if d_end.kind == "dns" else None, "src_port": int(sport),
                "dst_port": int(dport), "proto": PROTO_NAMES.get(p, str(p)).lower()}
    return ex


def _add_conntrack(ex: Explanation, dp: DataPlane, proto: int) -> None:
    """What the connection leaves in the nodes' conntrack tables (``fastpath.stages.conntrack``)."""
    from .codes import REASONS, VERDICTS
    from .stages.conntrack import explain_conntrack

    row = ex.result
    if not row or row.get("path") == "loopback" or row.get("verdict") not in VERDICTS:
        return
    index = {name: i for i, name in enumerate(dp.tables.node_names)}
    sn = index.get(row.get("src_node"), -1)
    dn = index.get(row.get("dst_node"), -1)
    reason = REASONS.index(row["reason"]) if row.get("reason") in REASONS else 0
    for line in explain_conntrack(None, proto, VERDICTS.index(row["verdict"]), sn, dn,
                                  default_duration=getattr(dp.services, "conn_duration", 30.0),
                                  node_names=list(dp.tables.node_names), say_none=False, reason=reason):
        ex.conntrack.append(line.removeprefix("conntrack: "))


def _stage_copy(stage):
    """The service stage with its own copy of the balancer state (explain must not advance the real one)."""
    import copy

    other = copy.copy(stage)
    if hasattr(stage, "state"):
        other.state = stage.state.copy()
    return other


def _explain(dp: DataPlane, s_end: Endpoint, d_end: Endpoint, dport: int, p: int, sport: int,
             ts: int | None) -> Explanation:
    from .traces import normalize_batch

    t = dp.tables
    src_ip = s_end.ip
    dst = d_end.name if d_end.kind == "dns" else d_end.text
    by_name = d_end.kind == "dns"
    cols = {"src_ip": pa.array([src_ip], pa.uint32()), "src_port": pa.array([sport], pa.uint16()),
            "dst_port": pa.array([dport], pa.uint16()), "proto": pa.array([p], pa.uint8())}
    if by_name:
        cols["dst_ip"] = pa.array([None], pa.uint32())
        cols["dst_name"] = pa.array([dst], pa.string())
        orig = 0
    else:
        orig = d_end.ip
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
                         f"(pod-by-IP table: hit); leaves by eth0 -> veth{veth} -> cbr0",
               node=t.node_names[sn], table="pod-by-IP", key=int_to_ip(src_ip), result=f"pod {t.pod_names[sp]}")
    elif kind == SRC_HOST:
        ex.add("source", f"{int_to_ip(src_ip)} is node {t.node_names[sn]}'s address (host network namespace)",
               node=t.node_names[sn], table="node-by-IP", key=int_to_ip(src_ip), result=f"node {t.node_names[sn]}")
    elif (absent := _pod_on_absent_node(dp, src_ip)) is not None:
        pod, node = absent
        ex.add("source", f"{int_to_ip(src_ip)} is pod {pod}, on node {node or '?'}, which is not in the input: "
                         f"it sends as a client outside the cluster",
               table="pod-by-IP, node-by-IP", key=int_to_ip(src_ip), result="external")
    else:
        ex.add("source", f"{int_to_ip(src_ip)} is outside the cluster (not a pod, not a node)",
               table="pod-by-IP, node-by-IP", key=int_to_ip(src_ip), result="external")

    # --- DNS
    if by_name:
        if row["verdict"] == "unresolved":
            why = ("search path of the source's namespace, ndots:5" if kind == SRC_POD else
                   f"{'a host' if kind == SRC_HOST else 'a client outside the cluster'} has no search path: "
                   f"only a fully qualified cluster name answers")
            ex.add("dns", f"{dst!r}: no answer ({why})", table="dns", key=dst, result=None)
            return ex
        orig = _answered(dp, flows)
        ex.add("dns", f"{dst!r} -> {int_to_ip(orig)}", table="dns", key=dst, result=int_to_ip(orig))

    elif d_end.kind == "service" and _dns_form(d_end.text):
        # ``name.namespace`` from a node or outside client: read as the service itself (kubectl habit),
        # but say what the cluster DNS would answer a flow that asked for the name (a replay row by name)
        svc_ip = int_to_ip(orig)
        if _name_answer(dp, src_ip, sport, d_end.text) is None:
            who = "a host" if kind == SRC_HOST else "a client outside the cluster"
            fqdn = f"{d_end.name.split('/', 1)[1]}.{d_end.name.split('/', 1)[0]}.svc.{dp.cluster.domain}"
            ex.add("dns", f"{d_end.text!r}: not asked of DNS, read as service {d_end.name} (ClusterIP {svc_ip}); "
                          f"{who} has no search path, so a flow asking DNS for {d_end.text!r} gets no answer "
                          f"(unresolved, no-dns-answer): it resolves only as {fqdn}",
                   table="dns", key=d_end.text, result=None)
        else:
            ex.add("dns", f"{d_end.text!r} -> {svc_ip} (service {d_end.name})", table="dns", key=d_end.text,
                   result=svc_ip)

    # --- loopback
    if row["path"] == "loopback" and (cidr_contains(LOOPBACK_NET, LOOPBACK_LEN, orig) or orig == src_ip):
        where = t.pod_names[sp] if kind == SRC_POD else f"node {t.node_names[sn]}"
        ex.add("loopback", f"{int_to_ip(orig)} stays inside {where}'s network namespace (lo)")
        _add_listen(ex, dp, row, p, dport)
        return ex
    if row["verdict"] == "dropped" and cidr_contains(LOOPBACK_NET, LOOPBACK_LEN, orig):
        ex.add("drop", "a loopback destination from outside the cluster is a martian: dropped")
        return ex

    # --- hostPort: the CNI portmap plugin's DNAT on the node, before kube-proxy
    pm = t.portmap.get(int(pack3(orig, p, dport))) if len(t.portmap) else -1
    if pm >= 0:
        pod_ip, cport = pm >> 16, pm & 0xFFFF
        owner = int(t.pod_by_ip.get(pod_ip))
        hn = t.node_by_ip.get(orig)
        who = f"pod {t.pod_names[owner]}" if owner >= 0 else "a pod"
        ex.add("portmap", f"{int_to_ip(orig)} {pname}/{dport} is hostPort {dport} of {who} on node "
                          f"{t.node_names[hn]} (CNI portmap DNAT, before kube-proxy) -> "
                          f"{int_to_ip(pod_ip)}:{cport}",
               node=t.node_names[hn], table="portmap (CNI-HOSTPORT-DNAT)", key=f"{int_to_ip(orig)} {pname}/{dport}",
               result=f"{int_to_ip(pod_ip)}:{cport}")
        orig = pod_ip                    # kube-proxy sees the pod's address: no service frontend

    # --- service stage
    asked = {"src_ip": flows.src_ip, "dst_ip": np.array([orig], np.uint32), "src_port": flows.src_port,
             "dst_port": flows.dst_port, "proto": flows.proto, "ts": flows.ts}
    for line in _service_lines(dp, asked, r):
        ex.add("service", line, node=t.node_names[int(r.src_node[0])] if int(r.src_node[0]) >= 0 else None,
               table="service map (kube-proxy)", key=f"{int_to_ip(orig)} {pname}/{dport}",
               result=line[len("DNAT -> "):] if line.startswith("DNAT -> ") else None)
    if row["path"] == "none" and row["verdict"] in ("rejected", "dropped") and row["dst_node"] is None \
            and (row["service"] is not None or row["verdict"] == "rejected"):
        return ex                       # stopped by kube-proxy: no endpoint, no local endpoint, unserved port
    d = int(r.dnat_ip[0])
    port = int(r.dnat_port[0])
    if row["service"] is None and kind != SRC_EXTERNAL:
        ex.add("service", f"{int_to_ip(d)} {pname}/{port}: no frontend (not a service)")

    # --- NetworkPolicy (fastpath.stages.policy): which policies select each end, which rule allowed
    if dp.policy is not None:
        from .stages.policy import explain_policy
        for line in explain_policy(dp, src_ip, p, r):
            ex.add("policy", line)
        if row["verdict"] == "denied":
            return ex

    # --- route
    nh = int(t.routes.lookup(np.array([d], np.uint32))[0])
    hn = t.node_by_ip.get(d)
    if hn >= 0:                          # a node's own address: its host route wins over pod-derived routes
        via = "" if nh == RouteTable.MISS or nh >= NH_NO_MASQUERADE else \
            f" (its host route wins over {_matched_prefix(t.routes, d)}, a route derived from pods)"
        ex.add("route", f"{int_to_ip(d)}: node {t.node_names[hn]}'s own address{via}",
               node=t.node_names[sn] if sn >= 0 else None, table="node-by-IP", key=int_to_ip(d),
               result=f"node {t.node_names[hn]}")
        _add_listen(ex, dp, row, p, port)
        return ex
    if nh == NH_NODE_NOT_IN_INPUT:
        pods = [t.pod_names[i] for i in np.flatnonzero(t.pod_ip == d)[:1]]
        ex.add("route", f"{int_to_ip(d)}: pod {pods[0] if pods else '?'} runs on a node that is not in the input: "
                        f"dropped (node-not-in-input)", table="routes", key=int_to_ip(d), result=None)
        return ex
    if nh < NH_NO_MASQUERADE:
        pref = _matched_prefix(t.routes, d)
        ex.add("route", f"{int_to_ip(d)}: longest prefix {pref} in the cluster route table -> node {t.node_names[nh]}",
               node=t.node_names[sn] if sn >= 0 else None, table="routes", key=int_to_ip(d),
               result=f"{pref} -> node {t.node_names[nh]}")
        if sn >= 0 and nh != sn:
            ex.add("forward", f"node {t.node_names[sn]} -> node {t.node_names[nh]} "
                              f"({int_to_ip(int(t.node_ip[nh]))})")
        mac = t.neighbours.get(int(pack2(nh, d)))
        if mac < 0:
            ex.add("neighbour", f"node {t.node_names[nh]}: no neighbour entry for {int_to_ip(d)} (no such pod)")
            return ex
        ex.add("neighbour", f"node {t.node_names[nh]}: {int_to_ip(d)} -> {int_to_mac(mac)}",
               node=t.node_names[nh], table="neighbours", key=int_to_ip(d), result=int_to_mac(mac))
        port_id = t.fdb.get(fdb_key(nh, mac))
        dp_ = int(t.port_pod[port_id])
        ex.add("fdb", f"cbr0 on {t.node_names[nh]}: {int_to_mac(mac)} -> port veth{int(t.port_veth[port_id])} "
                      f"-> pod {t.pod_names[dp_]} eth0",
               node=t.node_names[nh], table="fdb (cbr0)", key=int_to_mac(mac),
               result=f"veth{int(t.port_veth[port_id])} -> pod {t.pod_names[dp_]}")
        _add_listen(ex, dp, row, p, port)
        return ex
    if row["verdict"] == "egress":
        ex.add("route", f"{int_to_ip(d)}: outside pod, node and service ranges -> default route, leaves the cluster")
        if nh == NH_NO_MASQUERADE and kind == SRC_POD:
            ex.add("snat", f"{int_to_ip(d)} is in nonMasqueradeCIDRs ({_matched_prefix(t.routes, d)}, ip-masq-agent): "
                           f"source {int_to_ip(src_ip)} kept")
        elif int(r.snat_ip[0]) != src_ip:
            ex.add("snat", f"masquerade {int_to_ip(src_ip)} -> {int_to_ip(int(r.snat_ip[0]))}")
        else:
            ex.add("snat", f"source {int_to_ip(src_ip)} kept (a host's own address)")
    else:
        ex.add("route", f"{int_to_ip(d)}: no route from outside the cluster: dropped")
    return ex


def _pod_on_absent_node(dp: DataPlane, ip: int) -> tuple[str, str | None] | None:
    """``(pod, node)`` where ``ip`` is a pod's on a node not in the input (its /32 route to nowhere); else None."""
    t = dp.tables
    if int(t.routes.lookup(np.array([ip], np.uint32))[0]) != NH_NODE_NOT_IN_INPUT:
        return None
    found = np.flatnonzero(t.pod_ip == ip)[:1]
    if not found.size:
        return None
    pod = t.pod_names[int(found[0])]
    node = next((p.node for p in getattr(dp.cluster, "pods", None) or () if p.key == pod), None)
    return pod, node


def _looks_like_ip(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(x.isdigit() for x in parts)


def _dns_form(text: str) -> bool:
    """Whether a destination was written as a DNS name (``name.namespace[.svc...]``), not ``svc/...``."""
    return "/" not in text and "." in text and not _looks_like_ip(text)


def _name_answer(dp: DataPlane, src_ip: int, sport: int, name: str) -> int | None:
    """What the cluster DNS answers ``src_ip`` asking for ``name`` (as a replay row by name gets it); None: no answer."""
    from .codes import UNRESOLVED
    from .traces import normalize_batch

    flows = normalize_batch(pa.record_batch({
        "src_ip": pa.array([src_ip], pa.uint32()), "src_port": pa.array([sport], pa.uint16()),
        "dst_port": pa.array([0], pa.uint16()), "proto": pa.array([6], pa.uint8()),
        "dst_ip": pa.array([None], pa.uint32()), "dst_name": pa.array([name], pa.string())}), "explain")
    verdict = np.full(flows.n, 255, np.uint8)
    dst = dp._resolve_names(flows, verdict)
    return None if verdict[0] == UNRESOLVED else int(dst[0])


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


def _add_listen(ex: Explanation, dp: DataPlane, row: dict, proto: int, port: int) -> None:
    pname = PROTO_NAMES.get(proto, str(proto)).lower()
    ex.add("listen", _listen_text(dp, row, proto, port), node=row["dst_node"], table="listeners",
           key=f"{row['dst_pod'] or 'host'} {pname}/{port}", result=row["verdict"])


def _listen_text(dp: DataPlane, row: dict, proto: int, port: int) -> str:
    pname = PROTO_NAMES.get(proto, str(proto)).lower()
    target = row["dst_pod"] or (f"node {row['dst_node']}" if row["dst_node"] else "?")
    if row["verdict"] == "delivered":
        declared = False
        if row["dst_pod"]:
            pod = dp.cluster.pods[dp.tables.pod_names.index(row["dst_pod"])]
            declared = any(cp.proto == proto and cp.port == port for cp in pod.ports)
        if declared:
            return f"{target} declares {pname}/{port}: delivered"
        where = f"{target}'s host namespace" if not row["dst_pod"] else target
        return (f"{where} listens on {pname}/{port} (an EndpointSlice lists it as a serving endpoint there; "
                f"no container declares it): delivered")
    return f"nothing in {target} declares {pname}/{port} or serves it in an EndpointSlice: refused"


def _service_lines(dp: DataPlane, flows, r) -> list[str]:
    from .tables.services import explain_service

    return explain_service(dp, flows, r)
