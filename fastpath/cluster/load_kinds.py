"""One Kubernetes object's fields -> a model object, for :mod:`fastpath.cluster.load`.

The field readers (an address, a port, a protocol, labels, a CIDR) and the readers of
each kind fastpath models: Node, Pod (:class:`_PodParser`), Service, EndpointSlice and
its endpoints (a fast path for the common shape, :func:`_endpoint_fast`, and the
checked one, :func:`_endpoint`). A problem raises :class:`_Invalid` (or
:class:`~fastpath.errors.FastpathError`); the loader adds file and object name.
"""
from __future__ import annotations

import math
import socket

from ..addr import ip_to_int, parse_cidr
from ..errors import FastpathError
from .model import (PROTO_NUMBERS, ContainerPort, Endpoint, EndpointSlice, EndpointSlicePort, Node, Pod, Service,
                    ServicePort)
from .validate import check_string_map, show

#: Node label holding the node's zone.
ZONE_LABEL = "topology.kubernetes.io/zone"
#: Service types Kubernetes defines.
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
#: Default and largest ``sessionAffinityConfig.clientIP.timeoutSeconds``.
AFFINITY_TIMEOUT_DEFAULT, AFFINITY_TIMEOUT_MAX = 10800, 86400
#: Traffic policies (external and internal).
TRAFFIC_POLICIES = ("Cluster", "Local")
#: Pod phases whose IP the network plugin has released (the pod keeps it in its status).
TERMINAL_PHASES = ("Succeeded", "Failed")

_AF_INET = socket.AF_INET
_inet_pton = socket.inet_pton


class _Invalid(Exception):
    """A problem inside one object; the caller adds file and object name."""


# --------------------------------------------------------------------------- fields

def _ip(text, what: str) -> int:
    """Strict dotted-quad IPv4 to int (inet_pton fast path, ip_to_int for the message)."""
    try:
        return int.from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, TypeError, ValueError):
        return ip_to_int(text, what)  # raises FastpathError naming the value


def _is_v6(text) -> bool:
    return isinstance(text, str) and ":" in text


def _port(value, what: str) -> int:
    if type(value) is int and 0 < value < 65536:
        return value
    if isinstance(value, str) and value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    raise _Invalid(f"{what} {show(value)} is not a port number 1-65535")


def _proto(value, what: str) -> int:
    if value is None:
        return 6
    n = PROTO_NUMBERS.get(value) if type(value) is str else None
    if n is None:
        raise _Invalid(f"{what} {show(value)} is not TCP, UDP or SCTP")
    return n


def _labels(value, what: str) -> dict:
    """Labels or a selector: a mapping of strings (the API server rejects anything else)."""
    try:
        return check_string_map(value, what)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _str(value, what: str) -> str | None:
    """An optional string field: None, or a string (a list or mapping here is an error)."""
    if value is None or type(value) is str:
        return value
    raise _Invalid(f"{what}: expected a string, found {show(value)}")


def _list(value, what: str):
    """An optional list field (None: empty); a string here would be read a character at a time."""
    if value is None:
        return ()
    if type(value) is not list:
        raise _Invalid(f"{what}: expected a list, found {show(value)}")
    return value


def _cpus(value) -> int | None:
    """``status.capacity.cpu`` (``"4"``, ``"3500m"``, 4) as whole CPUs, millicores rounded up."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        if text.endswith("m"):
            return max(1, -(-int(text[:-1]) // 1000))
        return max(1, math.ceil(float(text)))
    except (ValueError, OverflowError):
        raise _Invalid(f"status.capacity.cpu {show(value)} is not a CPU count like 4 or 3500m") from None


def _cidr(text, what: str) -> tuple[int, int]:
    if type(text) is str:       # the usual a.b.c.d/len, network bits only: at once (a node's podCIDR)
        addr, sep, plen = text.partition("/")
        if sep and len(plen) <= 2 and plen.isascii() and plen.isdigit():
            length = int(plen)
            try:
                value = int.from_bytes(_inet_pton(_AF_INET, addr), "big")
            except (OSError, ValueError):
                pass
            else:
                if length <= 32 and not value & (0xFFFFFFFF >> length):
                    return value, length
    try:
        return parse_cidr(text)
    except FastpathError as e:
        raise _Invalid(f"{what}: {e}") from None


# --------------------------------------------------------------------------- kinds

def _node(obj: dict, name: str) -> Node:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = _labels(meta.get("labels"), "metadata.labels")
    zone = _str(labels.get(ZONE_LABEL), f"metadata.labels.{ZONE_LABEL}")
    cidrs: list[tuple[int, int]] = []
    texts = list(_list(spec.get("podCIDRs"), "spec.podCIDRs"))
    if spec.get("podCIDR"):
        texts.insert(0, spec["podCIDR"])
    for t in texts:
        if _is_v6(t):
            continue
        c = _cidr(t, "spec.podCIDR")
        if c not in cidrs:
            cidrs.append(c)
    internal = external = None
    for a in status.get("addresses") or ():
        t, addr = a.get("type"), a.get("address")
        if t == "InternalIP" and internal is None and not _is_v6(addr):
            internal = _ip(addr, "InternalIP")
        elif t == "ExternalIP" and external is None and not _is_v6(addr):
            external = _ip(addr, "ExternalIP")
    node = _object_new(Node)        # every field at once, as Node(...) sets them
    node.__dict__.update(name=name, internal_ip=internal, external_ip=external, pod_cidrs=tuple(cidrs), zone=zone,
                         labels=labels, cpu=_cpus((status.get("capacity") or {}).get("cpu")), present=True)
    return node


class _PodParser:
    """Pods, with container ports shared across replicas of one template."""

    def __init__(self, by_identity: bool = True) -> None:
        self.port_sets: dict[tuple, tuple[tuple[ContainerPort, ...], str | None]] = {}
        #: id(containers list) -> (it, initContainers, ports); None: objects parsed from a
        #: file, where no two pods share a list (each entry would only cost time and memory)
        self._by_list: dict[int, tuple] | None = {} if by_identity else None
        self._one: dict[tuple, tuple] = {}      # (container, first port, count) -> (port list, ports)
        self.terminal: list[str] = []
        self.shared_port: list[str] = []     # pods whose containers declare one port twice
        #: every spec.nodeName given, each once: pods on one node share one name string
        #: (a dict lookup by it later hashes it once and compares by identity)
        self.node_names: dict[str, str] = {}

    def ports(self, spec: dict) -> tuple[tuple[ContainerPort, ...], str | None]:
        """The pod's container ports, and a note when two containers declare one port."""
        # objects built in memory (synth_cluster) share one containers list per template:
        # that list, kept alive here so its id stays its own, answers at once
        if self._by_list is None:
            return self._one_container_ports(spec)
        containers, inits = spec.get("containers"), spec.get("initContainers")
        same = self._by_list.get(id(containers))
        if same is not None and same[0] is containers and same[1] is inits:
            return same[2]
        found = self._ports(spec)
        if containers is not None:
            self._by_list[id(containers)] = (containers, inits, found)
        return found

    def _one_container_ports(self, spec: dict) -> tuple[tuple[ContainerPort, ...], str | None]:
        """:meth:`_ports`, answered at once for the usual pod of a file: one container whose port
        list equals (``==``, as the cache key's entries compare) the last one seen with the
        same container name, first containerPort and length."""
        containers = spec.get("containers")
        if type(containers) is list and len(containers) == 1 and not spec.get("initContainers"):
            c = containers[0]
            ps = c.get("ports") if type(c) is dict else None
            if type(ps) is list and ps and type(ps[0]) is dict:
                name, first = c.get("name"), ps[0].get("containerPort")
                if (name is None or type(name) is str) and type(first) is int:
                    key = (name, first, len(ps))
                    seen = self._one.get(key)
                    if seen is not None and seen[0] == ps:
                        return seen[1]
                    found = self._ports(spec)
                    self._one[key] = (ps, found)
                    return found
        return self._ports(spec)

    def _ports(self, spec: dict) -> tuple[tuple[ContainerPort, ...], str | None]:
        # the key is the raw port entries: replicas of one template hit the cache
        raw = []
        for c in spec.get("containers") or ():
            ps = c.get("ports")
            if ps:
                raw.append((c.get("name"), tuple([tuple(p.items()) for p in ps])))
        inits = spec.get("initContainers")
        if inits:  # native sidecars (init containers that keep running) also listen
            for c in inits:
                ps = c.get("ports")
                if ps and c.get("restartPolicy") == "Always":
                    raw.append((c.get("name"), tuple([tuple(p.items()) for p in ps])))
        key = tuple(raw)
        found = self.port_sets.get(key)
        if found is None:
            found = self.port_sets[key] = self._parse_ports(key)
        return found

    @staticmethod
    def _parse_ports(key: tuple) -> tuple[tuple[ContainerPort, ...], str | None]:
        out: list[ContainerPort] = []
        owner: dict[tuple[int, int], str] = {}
        note = None
        for cname, entries in key:
            _str(cname, "spec.containers[].name")
            for items in entries:
                p = dict(items)
                port, proto, pname, hp = p.get("containerPort"), p.get("protocol"), p.get("name"), p.get("hostPort")
                number = PROTO_NUMBERS.get(proto) if type(proto) is str else None
                if not (type(port) is int and 0 < port < 65536 and number is not None
                        and (pname is None or type(pname) is str) and hp in (None, 0)):
                    # anything but the usual port: read field by field (the messages name the field)
                    what = f"container {cname} port {port if type(port) is int else '?'}"
                    port = _port(port, f"container {cname} containerPort")
                    number = _proto(proto, f"{what} protocol")
                    pname = _str(pname, f"{what} name")
                    hp = _port(hp, f"{what} hostPort") if hp not in (None, 0) else None
                else:
                    hp = None
                # every field at once, not by the frozen dataclass's __init__
                cp = _object_new(ContainerPort)
                cp.__dict__.update(container=cname, port=port, proto=number, name=pname or None, host_port=hp)
                first = owner.setdefault((cp.port, cp.proto), cname)
                if first != cname:
                    # the API server accepts it; the second container fails to bind at run time
                    if note is None:
                        note = f"{cp.port}/{proto or 'TCP'} in {first} and {cname}"
                    continue
                out.append(cp)
        return tuple(out), note

    def __call__(self, obj: dict, ns: str, name: str) -> Pod:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        text = status.get("podIP")
        if not text or _is_v6(text):
            text = None
            for e in status.get("podIPs") or ():
                t = e.get("ip")
                if t and not _is_v6(t):
                    text = t
                    break
        ip = None
        if text:
            try:
                ip = int.from_bytes(_inet_pton(_AF_INET, text), "big")
            except (OSError, TypeError, ValueError):
                ip = ip_to_int(text, "status.podIP")
        if ip is not None and status.get("phase") in TERMINAL_PHASES:
            ip = None  # completed pod: its IP went back to the pool and may be reused
            self.terminal.append(f"{ns}/{name}")
        ready = False
        for c in status.get("conditions") or ():
            if c.get("type") == "Ready":
                ready = c.get("status") == "True"
                break
        node = spec.get("nodeName") or None
        if node is not None:
            if type(node) is not str:
                raise _Invalid(f"spec.nodeName: expected a string, found {show(node)}")
            node = self.node_names.setdefault(node, node)
        ports, shared = self.ports(spec)
        if shared is not None:
            self.shared_port.append(f"{ns}/{name} {shared}")
        # every field as Pod(...) sets it, without the frozen dataclass's per-field __setattr__
        pod = _object_new(Pod)
        pod.__dict__.update(namespace=ns, name=name, node=node, host_network=bool(spec.get("hostNetwork", False)),
                            ip=ip, ready=ready, terminating=meta.get("deletionTimestamp") is not None,
                            ports=ports, labels=_labels(meta.get("labels"), "metadata.labels"), node_known=True)
        return pod


def _service(obj: dict, ns: str, name: str) -> Service:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    stype = spec.get("type") or "ClusterIP"
    if stype not in SERVICE_TYPES:
        raise _Invalid(f"spec.type {show(stype)} is not one of {', '.join(SERVICE_TYPES)}")
    texts = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if type(texts) is not list:
        raise _Invalid(f"spec.clusterIPs: expected a list, found {show(texts)}")
    headless = any([t == "None" for t in texts])
    cluster_ips: tuple[int, ...] = ()
    if stype != "ExternalName" and not headless:
        cluster_ips = tuple([_ip(t, "spec.clusterIP") for t in texts if t and not _is_v6(t)])
    ports: list[ServicePort] = []
    seen: set[tuple[int, int]] = set()
    for i, p in enumerate(spec.get("ports") or ()):
        # each field as _port, _proto and _str read it; the field's name only for a message
        port = p.get("port")
        if type(port) is not int or not 0 < port < 65536:
            port = _port(port, f"spec.ports[{i}].port")
        given = p.get("protocol")
        proto = 6 if given is None else PROTO_NUMBERS.get(given) if type(given) is str else None
        if proto is None:
            proto = _proto(given, f"spec.ports[{i}].protocol")
        if (port, proto) in seen:
            raise _Invalid(f"spec.ports[{i}]: port {port}/{given or 'TCP'} declared twice")
        seen.add((port, proto))
        tp = p.get("targetPort")
        if tp is None:
            target: int | str = port
        elif type(tp) is int or (isinstance(tp, str) and tp.isdigit()):
            target = _port(tp, f"spec.ports[{i}].targetPort")
        elif isinstance(tp, str) and tp.strip() and tp == tp.strip():
            target = tp
        else:
            raise _Invalid(f"spec.ports[{i}].targetPort {tp!r} is neither a port number nor a port name")
        np_ = p.get("nodePort")
        node_port = _port(np_, f"spec.ports[{i}].nodePort") if np_ not in (None, 0) else None
        pname = p.get("name")
        if pname is not None and type(pname) is not str:
            _str(pname, f"spec.ports[{i}].name")
        sp = _object_new(ServicePort)
        sp.__dict__.update(name=pname or None, port=port, proto=proto, target_port=target, node_port=node_port)
        ports.append(sp)
    selector = _labels(spec.get("selector"), "spec.selector")
    given = _list(spec.get("externalIPs"), "spec.externalIPs")
    ext = tuple([_ip(t, "spec.externalIPs") for t in given if not _is_v6(t)]) if given else ()
    given = (status.get("loadBalancer") or {}).get("ingress") or ()
    lb = tuple([_ip(g["ip"], "status.loadBalancer.ingress ip")
                for g in given if g.get("ip") and not _is_v6(g["ip"])]) if given else ()
    aff = spec.get("sessionAffinity") or "None"
    if aff not in ("None", "ClientIP"):
        raise _Invalid(f"spec.sessionAffinity {show(aff)} is not None or ClientIP")
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    if timeout is None:
        timeout = AFFINITY_TIMEOUT_DEFAULT
    elif type(timeout) is not int or not 0 < timeout <= AFFINITY_TIMEOUT_MAX:
        raise _Invalid(f"sessionAffinityConfig.clientIP.timeoutSeconds {timeout!r} is outside 1-{AFFINITY_TIMEOUT_MAX}")
    etp = spec.get("externalTrafficPolicy") or "Cluster"
    itp = spec.get("internalTrafficPolicy") or "Cluster"
    if etp not in TRAFFIC_POLICIES:
        raise _Invalid(f"spec.externalTrafficPolicy {show(etp)} is not Cluster or Local")
    if itp not in TRAFFIC_POLICIES:
        raise _Invalid(f"spec.internalTrafficPolicy {show(itp)} is not Cluster or Local")
    # every field as Service(...) sets it, without the frozen dataclass's per-field __setattr__
    svc = _object_new(Service)
    svc.__dict__.update(namespace=ns, name=name, type=stype, cluster_ips=cluster_ips, headless=headless,
                        ports=tuple(ports), selector=selector or None, external_ips=ext, lb_ips=lb,
                        session_affinity=aff == "ClientIP", affinity_timeout=timeout,
                        external_policy=etp, internal_policy=itp,
                        traffic_distribution=_str(spec.get("trafficDistribution"), "spec.trafficDistribution")
                        or None,
                        external_name=_str(spec.get("externalName"), "spec.externalName") if stype == "ExternalName"
                        else None)
    return svc


def _slice(obj: dict, ns: str, name: str, service: str, portless: list[str]) -> EndpointSlice:
    ports = []
    for i, p in enumerate(obj.get("ports") or ()):
        what = f"ports[{i}]"
        if p.get("port") is None:       # "all ports": kube-proxy has no use for it
            portless.append(f"{ns}/{name}")
            continue
        ports.append(EndpointSlicePort(name=_str(p.get("name"), f"{what}.name") or None,
                                       port=_port(p.get("port"), f"{what}.port"),
                                       proto=_proto(p.get("protocol"), f"{what}.protocol")))
    endpoints = []
    for i, e in enumerate(obj.get("endpoints") or ()):
        ep = _endpoint_fast(e, ns) if type(e) is dict else None
        endpoints.append(ep if ep is not None else _endpoint(e, ns, i))
    return EndpointSlice(namespace=ns, name=name, service=service, ports=tuple(ports), endpoints=tuple(endpoints))


def _new_endpoint(**fields) -> Endpoint:
    """An :class:`Endpoint` from every field, without the frozen dataclass's per-field
    ``object.__setattr__`` (125,000 endpoints at 5,000 nodes); equal to ``Endpoint(**fields)``."""
    ep = _object_new(Endpoint)
    ep.__dict__.update(fields)
    return ep


_object_new = object.__new__


def _endpoint_fast(e: dict, ns: str) -> Endpoint | None:
    """An endpoint whose fields all have their usual types, else None (:func:`_endpoint` decides)."""
    get = e.get
    addrs = get("addresses")
    if type(addrs) is not list or not addrs:
        return None
    try:
        if len(addrs) == 1:
            ips = (int.from_bytes(_inet_pton(_AF_INET, addrs[0]), "big"),)
        else:
            ips = tuple([int.from_bytes(_inet_pton(_AF_INET, a), "big") for a in addrs])
    except (OSError, TypeError, ValueError):
        return None
    cond = get("conditions")
    if cond is None:
        ready = serving = True
        term = False
    elif type(cond) is dict:
        ready = cond.get("ready")
        ready = True if ready is None else bool(ready)
        serving = cond.get("serving")
        serving = True if serving is None else bool(serving)
        term = bool(cond.get("terminating") or False)
    else:
        return None
    zone = get("zone")
    node = get("nodeName")
    if (zone is not None and type(zone) is not str) or (node is not None and type(node) is not str) \
            or (zone is None and "topology" in e):
        return None
    hints = node_hints = ()
    hint = get("hints")
    if hint:
        if type(hint) is not dict:
            return None
        hints = _hint_names(hint.get("forZones"))
        node_hints = _hint_names(hint.get("forNodes"))
        if hints is None or node_hints is None:
            return None
    target = None
    ref = get("targetRef")
    if ref:
        if type(ref) is not dict:
            return None
        if ref.get("kind") == "Pod":
            rname = ref.get("name")
            if rname:
                rns = ref.get("namespace")
                if type(rname) is not str or (rns is not None and type(rns) is not str):
                    return None
                target = f"{rns or ns}/{rname}"
    return _new_endpoint(addresses=ips, ready=ready, serving=serving, terminating=term, node=node or None,
                         zone=zone or None, hint_zones=hints, target_pod=target, hint_nodes=node_hints)


def _hint_names(entries) -> tuple | None:
    """``hints.forZones`` / ``forNodes`` names when every entry is a mapping with a string name
    or none (the names kept), else None."""
    if not entries:
        return ()
    if type(entries) is not list:
        return None
    out = []
    for z in entries:
        if type(z) is not dict:
            return None
        n = z.get("name")
        if n:
            if type(n) is not str:
                return None
            out.append(n)
    return tuple(out)


def _endpoint(e: dict, ns: str, i: int) -> Endpoint:
    """One endpoint, every field checked (naming the field where one is wrong)."""
    what = f"endpoints[{i}]"
    addrs = _list(e.get("addresses"), f"{what}.addresses")
    if not addrs:
        raise _Invalid(f"{what} has no addresses")
    cond = e.get("conditions") or {}
    # as kube-proxy reads them (pkg/proxy/endpointslicecache.go): a missing ready or
    # serving is true, a missing terminating false
    ready = cond.get("ready")
    ready = True if ready is None else bool(ready)
    serving = cond.get("serving")
    serving = True if serving is None else bool(serving)
    term = bool(cond.get("terminating") or False)
    zone = e.get("zone")
    if zone is None and isinstance(e.get("topology"), dict):  # discovery.k8s.io/v1beta1
        zone = e["topology"].get(ZONE_LABEL)
    zone = _str(zone, f"{what}.zone")
    hint = e.get("hints") or {}
    hints = tuple(_str(z.get("name"), f"{what}.hints.forZones[].name")
                  for z in hint.get("forZones") or () if z.get("name"))
    node_hints = tuple(_str(z.get("name"), f"{what}.hints.forNodes[].name")
                       for z in hint.get("forNodes") or () if z.get("name"))
    return Endpoint(addresses=tuple(_ip(a, f"{what} address") for a in addrs), ready=ready,
                    serving=serving, terminating=term,
                    node=_str(e.get("nodeName"), f"{what}.nodeName") or None,
                    zone=zone or None, hint_zones=hints, target_pod=_target(e, ns, what),
                    hint_nodes=node_hints)


def _target(e: dict, ns: str, what: str) -> str | None:
    """``namespace/name`` of an endpoint's (or address's) ``targetRef`` when it is a Pod."""
    ref = e.get("targetRef") or {}
    if ref.get("kind") != "Pod" or not ref.get("name"):
        return None
    name = _str(ref["name"], f"{what}.targetRef.name")
    return f"{_str(ref.get('namespace'), f'{what}.targetRef.namespace') or ns}/{name}"
