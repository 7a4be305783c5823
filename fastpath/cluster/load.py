"""Kubernetes objects in: JSON/YAML files or parsed dicts -> a validated :class:`Cluster`.

Reads what ``kubectl get nodes,pods,services,endpointslices -A -o json`` prints
(a ``v1`` ``List``), a single object, a YAML stream (``---`` separated, which
may hold Lists), a JSON array of objects, or a directory of such files (sorted
by name, all merged). Only the fields fastpath models are read; any other field
is ignored. Kinds fastpath does not use are noted once each in
:attr:`Cluster.warnings` and skipped.

Every problem in the input raises :class:`~fastpath.errors.FastpathError` with
one line naming the file and the object, e.g.
``cluster.json: Pod shop/web-1: bad IPv4 status.podIP '10.0.0.300': expected dotted quad like 10.244.1.7``.
"""
from __future__ import annotations

import gc
import json
import socket
from bisect import bisect_right
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from ..addr import format_cidr, int_to_ip, ip_to_int, parse_cidr, prefix_mask
from ..errors import FastpathError
from .model import (PROTO_NUMBERS, Cluster, ContainerPort, Endpoint, EndpointSlice, EndpointSlicePort,
                    Node, Pod, Service, ServicePort)

#: File name endings read from a directory.
SUFFIXES = (".json", ".yaml", ".yml")
#: The YAML loader: libyaml's when PyYAML was built with it.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Node label holding the node's zone.
ZONE_LABEL = "topology.kubernetes.io/zone"
#: EndpointSlice label naming its service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Service types Kubernetes defines.
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
#: Default and largest ``sessionAffinityConfig.clientIP.timeoutSeconds``.
AFFINITY_TIMEOUT_DEFAULT, AFFINITY_TIMEOUT_MAX = 10800, 86400
#: Traffic policies (external and internal).
TRAFFIC_POLICIES = ("Cluster", "Local")
#: Pod phases whose IP the network plugin has released (the pod keeps it in its status).
TERMINAL_PHASES = ("Succeeded", "Failed")
#: Kinds whose objects live in a namespace.
NAMESPACED = ("Pod", "Service", "EndpointSlice")

_AF_INET = socket.AF_INET
_inet_pton = socket.inet_pton


class _Invalid(Exception):
    """A problem inside one object; the caller adds file and object name."""


# --------------------------------------------------------------------------- files

def load_cluster(path: str | Path) -> Cluster:
    """Load and validate a cluster from a file or a directory of files.

    Parameters
    ----------
    path
        A ``.json`` file (a ``v1`` ``List``, one object, or an array of objects),
        a ``.yaml``/``.yml`` stream of objects (Lists allowed), or a directory
        whose ``.json``/``.yaml``/``.yml`` files are read in name order and merged.
        Files with another ending are read as JSON when they start with ``{``
        or ``[``, else as YAML.

    Returns
    -------
    Cluster
        Nodes, pods, services and endpoint slices in input order, with notes
        (skipped kinds, Calico-style pod addresses, ...) in ``warnings``.

    Raises
    ------
    FastpathError
        Unreadable or malformed file (naming the file and, where the parser
        gives one, the line), or an invalid object (naming file and object).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        if not files:
            raise FastpathError(f"{p}: directory holds no .json, .yaml or .yml files")
    elif p.exists():
        files = [p]
    else:
        raise FastpathError(f"{p}: no such file or directory")
    with gc_paused():
        items: list[tuple[str, object]] = []
        for f in files:
            src = str(f)
            items.extend((src, obj) for obj in read_objects(f))
        return _build(items)


def cluster_from_objects(objects: Iterable[dict], source: str = "<objects>") -> Cluster:
    """Validate already-parsed Kubernetes objects (dicts) into a :class:`Cluster`.

    ``source`` names the origin in error messages. ``List`` objects are flattened.
    """
    with gc_paused():
        return _build((source, obj) for obj in objects)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bulk parse.

    Parsing a big cluster allocates millions of dicts and lists that all stay
    alive; the collector would rescan them again and again (json.loads of
    150,000 pods runs about three times slower with it on). Nothing built here
    forms a reference cycle, so nothing is left for it to collect.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_objects(path: str | Path) -> list:
    """Parse one file into its top-level objects (not yet flattened or validated)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FastpathError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FastpathError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None
    stripped = text.lstrip()
    if not stripped:
        raise FastpathError(f"{p}: file is empty")
    suffix = p.suffix.lower()
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and stripped[0] in "{["):
        return _parse_json(text, p)
    return _parse_yaml(text, p)


def _parse_json(text: str, p: Path) -> list:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        tail = "; the file ends early (truncated?)" if e.pos >= len(text.rstrip()) else ""
        raise FastpathError(f"{p}: line {e.lineno} column {e.colno}: bad JSON ({e.msg}){tail}") from None
    except RecursionError:
        raise FastpathError(f"{p}: bad JSON (nested too deeply)") from None
    return doc if isinstance(doc, list) else [doc]


def _parse_yaml(text: str, p: Path) -> list:
    try:
        docs = [d for d in yaml.load_all(text, Loader=YAML_LOADER) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise FastpathError(f"{p}: {where}bad YAML ({what})") from None
    out: list = []
    for d in docs:
        if isinstance(d, list):
            out.extend(d)
        else:
            out.append(d)
    return out


def _flatten(items: Iterable[tuple[str, object]]) -> Iterator[tuple[str, dict, str]]:
    """Yield ``(source, object, kind)``, opening ``List`` and ``<Kind>List`` objects."""
    for src, obj in items:
        kind = _kind(src, obj)
        if not (kind.endswith("List") and "items" in obj):
            yield src, obj, kind
            continue
        # kubectl's List carries kinds in its items; an API PodList (etc.) leaves them out
        item_kind = kind[:-4]
        sub = obj.get("items") or []
        if not isinstance(sub, list):
            raise FastpathError(f"{src}: {kind}: items is not a list")
        for it in sub:
            if item_kind and isinstance(it, dict) and "kind" not in it:
                it = {**it, "kind": item_kind}
            k = _kind(src, it)
            if k.endswith("List") and "items" in it:
                yield from _flatten(((src, it),))
            else:
                yield src, it, k


def _kind(src: str, obj: object) -> str:
    if not isinstance(obj, dict):
        raise FastpathError(f"{src}: expected Kubernetes objects (mappings), found {type(obj).__name__} "
                            f"{str(obj)[:40]!r}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        raise FastpathError(f"{src}: object {name or '(unnamed)'} has no kind")
    return kind


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
    raise _Invalid(f"{what} {value!r} is not a port number 1-65535")


def _proto(value, what: str) -> int:
    if value is None:
        return 6
    n = PROTO_NUMBERS.get(value)
    if n is None:
        raise _Invalid(f"{what} {value!r} is not TCP, UDP or SCTP")
    return n


def _labels(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(f"{what} is not a mapping")
    return value


def _cidr(text, what: str) -> tuple[int, int]:
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
    cidrs: list[tuple[int, int]] = []
    texts = list(spec.get("podCIDRs") or ())
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
    return Node(name=name, internal_ip=internal, external_ip=external, pod_cidrs=tuple(cidrs),
                zone=labels.get(ZONE_LABEL), labels=labels)


class _PodParser:
    """Pods, with container ports shared across replicas of one template."""

    def __init__(self) -> None:
        self.port_sets: dict[tuple, tuple[ContainerPort, ...]] = {}
        self.terminal: list[str] = []

    def ports(self, spec: dict) -> tuple[ContainerPort, ...]:
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
    def _parse_ports(key: tuple) -> tuple[ContainerPort, ...]:
        out: list[ContainerPort] = []
        owner: dict[tuple[int, int], str] = {}
        for cname, entries in key:
            for items in entries:
                p = dict(items)
                port, proto = p.get("containerPort"), p.get("protocol")
                cp = ContainerPort(container=cname, port=_port(port, f"container {cname} containerPort"),
                                   proto=_proto(proto, f"container {cname} port {port} protocol"),
                                   name=p.get("name") or None)
                first = owner.setdefault((cp.port, cp.proto), cname)
                if first != cname:
                    raise _Invalid(f"containers {first} and {cname} both declare port {cp.port}/"
                                   f"{proto or 'TCP'} (containers of a pod share its network namespace)")
                out.append(cp)
        return tuple(out)

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
        return Pod(namespace=ns, name=name, node=spec.get("nodeName") or None,
                   host_network=bool(spec.get("hostNetwork", False)), ip=ip, ready=ready,
                   terminating=meta.get("deletionTimestamp") is not None,
                   ports=self.ports(spec), labels=_labels(meta.get("labels"), "metadata.labels"))


def _service(obj: dict, ns: str, name: str) -> Service:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    stype = spec.get("type") or "ClusterIP"
    if stype not in SERVICE_TYPES:
        raise _Invalid(f"spec.type {stype!r} is not one of {', '.join(SERVICE_TYPES)}")
    texts = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    headless = any(t == "None" for t in texts)
    cluster_ips: tuple[int, ...] = ()
    if stype != "ExternalName" and not headless:
        cluster_ips = tuple(_ip(t, "spec.clusterIP") for t in texts if t and not _is_v6(t))
    ports: list[ServicePort] = []
    seen: set[tuple[int, int]] = set()
    for i, p in enumerate(spec.get("ports") or ()):
        what = f"spec.ports[{i}]"
        port = _port(p.get("port"), f"{what}.port")
        proto = _proto(p.get("protocol"), f"{what}.protocol")
        if (port, proto) in seen:
            raise _Invalid(f"{what}: port {port}/{p.get('protocol') or 'TCP'} declared twice")
        seen.add((port, proto))
        tp = p.get("targetPort")
        if tp is None:
            target: int | str = port
        elif type(tp) is int or (isinstance(tp, str) and tp.isdigit()):
            target = _port(tp, f"{what}.targetPort")
        elif isinstance(tp, str) and tp.strip() and tp == tp.strip():
            target = tp
        else:
            raise _Invalid(f"{what}.targetPort {tp!r} is neither a port number nor a port name")
        np_ = p.get("nodePort")
        node_port = _port(np_, f"{what}.nodePort") if np_ not in (None, 0) else None
        ports.append(ServicePort(name=p.get("name") or None, port=port, proto=proto,
                                 target_port=target, node_port=node_port))
    selector = spec.get("selector")
    if selector is not None and not isinstance(selector, dict):
        raise _Invalid("spec.selector is not a mapping")
    ext = tuple(_ip(t, "spec.externalIPs") for t in spec.get("externalIPs") or () if not _is_v6(t))
    lb = tuple(_ip(g["ip"], "status.loadBalancer.ingress ip")
               for g in (status.get("loadBalancer") or {}).get("ingress") or ()
               if g.get("ip") and not _is_v6(g["ip"]))
    aff = spec.get("sessionAffinity") or "None"
    if aff not in ("None", "ClientIP"):
        raise _Invalid(f"spec.sessionAffinity {aff!r} is not None or ClientIP")
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    if timeout is None:
        timeout = AFFINITY_TIMEOUT_DEFAULT
    elif type(timeout) is not int or not 0 < timeout <= AFFINITY_TIMEOUT_MAX:
        raise _Invalid(f"sessionAffinityConfig.clientIP.timeoutSeconds {timeout!r} is outside 1-{AFFINITY_TIMEOUT_MAX}")
    etp = spec.get("externalTrafficPolicy") or "Cluster"
    itp = spec.get("internalTrafficPolicy") or "Cluster"
    for field, v in (("externalTrafficPolicy", etp), ("internalTrafficPolicy", itp)):
        if v not in TRAFFIC_POLICIES:
            raise _Invalid(f"spec.{field} {v!r} is not Cluster or Local")
    return Service(namespace=ns, name=name, type=stype, cluster_ips=cluster_ips, headless=headless,
                   ports=tuple(ports), selector=selector or None, external_ips=ext, lb_ips=lb,
                   session_affinity=aff == "ClientIP", affinity_timeout=timeout,
                   external_policy=etp, internal_policy=itp,
                   traffic_distribution=spec.get("trafficDistribution") or None,
                   external_name=spec.get("externalName") if stype == "ExternalName" else None)


def _slice(obj: dict, ns: str, name: str, service: str, portless: list[str]) -> EndpointSlice:
    ports = []
    for i, p in enumerate(obj.get("ports") or ()):
        what = f"ports[{i}]"
        if p.get("port") is None:       # "all ports": kube-proxy has no use for it
            portless.append(f"{ns}/{name}")
            continue
        ports.append(EndpointSlicePort(name=p.get("name") or None, port=_port(p.get("port"), f"{what}.port"),
                                       proto=_proto(p.get("protocol"), f"{what}.protocol")))
    endpoints = []
    for i, e in enumerate(obj.get("endpoints") or ()):
        what = f"endpoints[{i}]"
        addrs = e.get("addresses") or ()
        if not addrs:
            raise _Invalid(f"{what} has no addresses")
        cond = e.get("conditions") or {}
        ready = cond.get("ready")
        ready = True if ready is None else bool(ready)          # nil means ready (API semantics)
        serving = cond.get("serving")
        serving = ready if serving is None else bool(serving)   # nil means "same as ready"
        term = bool(cond.get("terminating") or False)
        zone = e.get("zone")
        if zone is None and isinstance(e.get("topology"), dict):  # discovery.k8s.io/v1beta1
            zone = e["topology"].get(ZONE_LABEL)
        hints = tuple(z.get("name") for z in (e.get("hints") or {}).get("forZones") or () if z.get("name"))
        ref = e.get("targetRef") or {}
        target = f"{ref.get('namespace') or ns}/{ref['name']}" if ref.get("kind") == "Pod" and ref.get("name") \
            else None
        endpoints.append(Endpoint(addresses=tuple(_ip(a, f"{what} address") for a in addrs), ready=ready,
                                  serving=serving, terminating=term, node=e.get("nodeName") or None,
                                  zone=zone or None, hint_zones=hints, target_pod=target))
    return EndpointSlice(namespace=ns, name=name, service=service, ports=tuple(ports), endpoints=tuple(endpoints))


# --------------------------------------------------------------------------- assembly

def _build(items: Iterable[tuple[str, object]]) -> Cluster:
    nodes: list[Node] = []
    pods: list[Pod] = []
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    origin: dict[tuple[str, str], str] = {}      # (kind, ns/name) -> source, for duplicates
    pod_src: list[str] = []
    skipped: dict[str, int] = {}
    slice_skips: dict[str, list[str]] = {}
    portless: list[str] = []
    parse_pod = _PodParser()

    for src, obj, kind in _flatten(items):
        if kind not in ("Node", "Pod", "Service", "EndpointSlice"):
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise FastpathError(f"{src}: {kind} without metadata.name")
        ns = (meta.get("namespace") or "default") if kind in NAMESPACED else ""
        ident = f"{ns}/{name}" if ns else name
        key = (kind, ident)
        if key in origin:
            where = "" if origin[key] == src else f" (first in {origin[key]})"
            raise FastpathError(f"{src}: {kind} {ident}: defined twice{where}")
        origin[key] = src
        try:
            if kind == "Pod":
                pods.append(parse_pod(obj, ns, name))
                pod_src.append(src)
            elif kind == "Node":
                nodes.append(_node(obj, name))
            elif kind == "Service":
                services.append(_service(obj, ns, name))
            else:
                atype = obj.get("addressType") or "IPv4"
                svc = _labels(meta.get("labels"), "metadata.labels").get(SERVICE_NAME_LABEL)
                if atype != "IPv4":
                    slice_skips.setdefault(f"addressType {atype}", []).append(ident)
                elif not svc:
                    slice_skips.setdefault(f"no {SERVICE_NAME_LABEL} label", []).append(ident)
                else:
                    slices.append(_slice(obj, ns, name, svc, portless))
        except (_Invalid, FastpathError) as e:
            raise FastpathError(f"{src}: {kind} {ident}: {e}") from None
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            raise FastpathError(f"{src}: {kind} {ident}: malformed object ({type(e).__name__}: {e})") from None

    warnings: list[str] = []
    for kind, n in skipped.items():
        warnings.append(f"skipped {n} {kind} object{'s' * (n != 1)}: kind not used by fastpath")
    for why, names in slice_skips.items():
        warnings.append(f"skipped {len(names)} EndpointSlice{'s' * (len(names) != 1)} with {why} "
                        f"(e.g. {names[0]}): fastpath models IPv4 slices of services")
    if portless:
        warnings.append(f"skipped {len(portless)} EndpointSlice port{'s' * (len(portless) != 1)} without a port "
                        f"number (e.g. in {portless[0]}): kube-proxy ignores them")
    if parse_pod.terminal:
        n = len(parse_pod.terminal)
        warnings.append(f"{n} completed pod{'s' * (n != 1)} (phase Succeeded/Failed, e.g. {parse_pod.terminal[0]}) "
                        f"kept without an IP: the network plugin released it")
    src_of = {("Node", n.name): origin[("Node", n.name)] for n in nodes}
    _check_nodes(nodes, src_of)
    _check_pods(pods, pod_src, nodes, warnings)
    _check_services(services, origin)
    return Cluster(nodes=nodes, pods=pods, services=services, slices=slices, warnings=warnings)


def _check_nodes(nodes: list[Node], src_of: dict) -> None:
    ip_owner: dict[int, str] = {}
    for n in nodes:
        for ip in (n.internal_ip, n.external_ip):
            if ip is None:
                continue
            other = ip_owner.setdefault(ip, n.name)
            if other != n.name:
                raise FastpathError(f"{src_of[('Node', n.name)]}: Node {n.name}: address {int_to_ip(ip)} "
                                    f"is also Node {other}'s")
    spans = sorted((net, net | (~prefix_mask(length) & 0xFFFFFFFF), length, n.name)
                   for n in nodes for net, length in n.pod_cidrs)
    for (a_net, a_end, a_len, a_name), (b_net, b_end, b_len, b_name) in zip(spans, spans[1:]):
        if b_net <= a_end:
            raise FastpathError(f"{src_of[('Node', b_name)]}: Node {b_name}: podCIDR {format_cidr(b_net, b_len)} "
                                f"overlaps Node {a_name}'s {format_cidr(a_net, a_len)}")


def _check_pods(pods: list[Pod], pod_src: list[str], nodes: list[Node], warnings: list[str]) -> None:
    node_cidrs = {n.name: n.pod_cidrs for n in nodes}
    spans = sorted((net, net | (~prefix_mask(length) & 0xFFFFFFFF)) for n in nodes for net, length in n.pod_cidrs)
    starts = [s for s, _ in spans]
    by_ip: dict[int, int] = {}
    outside: list[int] = []
    foreign: list[int] = []
    for i, p in enumerate(pods):
        if p.node is not None:
            own = node_cidrs.get(p.node)
            if own is None:
                raise FastpathError(f"{pod_src[i]}: Pod {p.key}: spec.nodeName {p.node!r} is not a Node of the cluster")
        if p.ip is None or p.host_network:
            continue
        j = by_ip.setdefault(p.ip, i)
        if j != i:
            q = pods[j]
            raise FastpathError(f"{pod_src[i]}: Pod {p.key}: IP {int_to_ip(p.ip)} is also Pod {q.key}'s")
        if p.node is None:
            continue
        ip = p.ip
        for net, length in own:
            if ip & prefix_mask(length) == net:
                break
        else:
            k = bisect_right(starts, ip) - 1
            if k >= 0 and ip <= spans[k][1]:
                foreign.append(i)
            else:
                outside.append(i)
    if outside:
        p = pods[outside[0]]
        warnings.append(f"{len(outside)} pod IP{'s' * (len(outside) != 1)} outside every node's pod CIDR "
                        f"(e.g. Pod {p.key} {int_to_ip(p.ip)}): Calico-style addressing, "
                        f"routed by block or host routes")
    if foreign:
        p = pods[foreign[0]]
        warnings.append(f"{len(foreign)} pod IP{'s' * (len(foreign) != 1)} inside another node's pod CIDR "
                        f"(e.g. Pod {p.key} {int_to_ip(p.ip)} on {p.node}): borrowed addresses, routed by host routes")


def _check_services(services: list[Service], origin: dict) -> None:
    vip_owner: dict[int, str] = {}
    node_port_owner: dict[tuple[int, int], str] = {}
    for s in services:
        src = origin[("Service", s.key)]
        for ip in s.cluster_ips:
            other = vip_owner.setdefault(ip, s.key)
            if other != s.key:
                raise FastpathError(f"{src}: Service {s.key}: clusterIP {int_to_ip(ip)} is also Service {other}'s")
        for p in s.ports:
            if p.node_port is None:
                continue
            other = node_port_owner.setdefault((p.node_port, p.proto), s.key)
            if other != s.key:
                raise FastpathError(f"{src}: Service {s.key}: nodePort {p.node_port} is also Service {other}'s")
