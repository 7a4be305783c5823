"""Kubernetes objects in: JSON/YAML files or parsed dicts -> a validated :class:`Cluster`.

Reads what ``kubectl get nodes,namespaces,pods,services,endpointslices,endpoints,
networkpolicies,configmaps -A -o json`` prints (a ``v1`` ``List``), a single object, a
YAML stream (``---`` separated, which may hold Lists), a JSON array of objects, or a
directory of such files (read recursively, in path order, all merged: a support
bundle's ``cluster-resources/``). UTF-16 files with a byte-order mark are read. Only
the fields fastpath models are read; any other field is ignored. Legacy ``Endpoints``
and the ip-masq-agent and kube-proxy ConfigMaps: :mod:`fastpath.cluster.objects`.

Where the API server would accept the input, loading goes on and the problem is
filed by kind (:mod:`fastpath.cluster.problems`): one line each in
:attr:`Cluster.warnings`, every object in :attr:`Cluster.problems`, skipped kinds in
:attr:`Cluster.skipped_kinds`. Every other problem raises
:class:`~fastpath.errors.FastpathError` with one line naming the file, the object
and the field, e.g.
``cluster.json: Pod shop/web-1: bad IPv4 status.podIP '10.0.0.300': expected dotted quad like 10.244.1.7``
or ``cluster.json: Pod shop/web-1: spec.nodeName: expected a string, found list ['a']``
(:mod:`fastpath.cluster.validate` names the field when a reader trips over a type).
The readers of one object's fields, kind by kind: :mod:`fastpath.cluster.load_kinds`.

A JSON ``List`` is first decoded into typed records of the kinds a big dump is made
of, holding only the fields read (:mod:`fastpath.cluster.load_fast`: the 5,000-node,
139 MB synthetic dump in about 1.3 s instead of 3); anything unusual in them sends
the load back to the plain path above (JSON decoded to dicts), which gives the same
cluster, warnings and errors.
"""
from __future__ import annotations

import gc
import json
from contextlib import contextmanager
from itertools import repeat
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import yaml

try:  # a fast JSON decoder (about twice json's speed on a 139 MB kubectl dump); json is the fallback
    from msgspec.json import decode as _fast_json
except ImportError:  # pragma: no cover - msgspec is a core dependency
    _fast_json = None

from ..addr import format_cidr, int_to_ip, prefix_mask
from ..errors import FastpathError, shorten
from ..files import input_stat, read_input
from . import safeyaml
from .netpol import ExtraKinds
from .problems import Problems, skipped_line
from .validate import find_type_error, show
from .model import Cluster, EndpointSlice, Node, Pod, Service

#: File name endings read from a directory.
SUFFIXES = (".json", ".yaml", ".yml")
#: The YAML loader: libyaml's when PyYAML was built with it.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: EndpointSlice label naming its service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Kinds whose objects live in a namespace.
NAMESPACED = ("Pod", "Service", "EndpointSlice", "Endpoints", "ConfigMap")
#: Kinds without a namespace.
CLUSTER_SCOPED = frozenset({"Node", "Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                            "ClusterRoleBinding", "CustomResourceDefinition", "IngressClass"})
#: Kinds read here (NetworkPolicy, Namespace and workloads: :class:`fastpath.cluster.netpol.ExtraKinds`).
READ_KINDS = frozenset({"Node", "Pod", "Service", "EndpointSlice", "Endpoints", "ConfigMap"})
#: Label every namespace carries (set by the API server since Kubernetes 1.21).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


# --------------------------------------------------------------------------- files

def load_cluster(path: str | Path, *, expand_workloads: bool = False) -> Cluster:
    """Load and validate a cluster from a file or a directory of files.

    With ``expand_workloads``, pods are placed for the Deployments, StatefulSets,
    DaemonSets, ReplicaSets, Jobs and CronJobs that have none
    (:func:`fastpath.cluster.workloads.expand_workloads`: manifests without a cluster).

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
    is_dir = p.is_dir()
    if is_dir:
        files = cluster_files(p)
        if not files:
            raise FastpathError(f"{p}: directory holds no .json, .yaml or .yml files")
    elif p.exists():
        files = [p]
    else:
        input_stat(p, "cluster")  # says which: no such file, a broken symlink, a symlink loop
        raise FastpathError(f"{p}: no such file or directory")
    with gc_paused():
        typed = _fast_json is not None
        try:
            cluster = _load_files(p, files, is_dir, typed)
        except Redo:        # something the typed records leave to the plain path: it says what
            cluster = _load_files(p, files, is_dir, False)
    if expand_workloads:
        from .workloads import expand_workloads as _expand
        cluster = _expand(cluster)
    cluster.source = str(p)
    return cluster


def _load_files(p: Path, files: list[Path], is_dir: bool, typed: bool) -> Cluster:
    """:func:`load_cluster` of ``files`` (under ``p`` where ``is_dir``); ``typed``: JSON
    ``List`` files decoded into typed records (:mod:`fastpath.cluster.load_fast`),
    which may raise :class:`~fastpath.cluster.load_fast.Redo`."""
    problems = Problems()
    items: list[tuple[str, object]] = []
    for f in files:
        src = str(f)
        objs = _read_objects(f, typed)
        if is_dir and not any(type(o) is TypedList or (isinstance(o, dict) and "kind" in o) for o in objs):
            problems.add("skipped-files", str(f.relative_to(p)))  # a bundle's version.json, ...
            continue
        items.extend((src, obj) for obj in objs)
    return _build(items, problems, by_identity=False)


def cluster_files(directory: Path) -> list[Path]:
    """The ``.json``/``.yaml``/``.yml`` files under ``directory``, recursively, in path order.

    Support bundles keep ``cluster-resources/pods/<namespace>.json``; hidden files and
    folders (``.git``) are left out.
    """
    out = []
    for f in directory.rglob("*"):
        rel = f.relative_to(directory).parts
        if f.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in rel) and f.is_file():
            out.append(f)
    return sorted(out, key=lambda f: f.relative_to(directory).parts)


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

    On leaving the outermost pause the survivors (the model objects: millions
    for a 5,000-node cluster) are moved to the permanent generation
    (``gc.freeze``) before the collector is switched back on: re-enabling alone
    makes the next allocation start a full collection over all of them (1.6 s
    at 150,000 pods), and they would be rescanned at every later full one.
    Frozen objects are still freed by reference counting as usual.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


def read_objects(path: str | Path) -> list:
    """Parse one file into its top-level objects (not yet flattened or validated)."""
    return _read_objects(Path(path), False)


def _read_objects(p: Path, typed: bool) -> list:
    """:func:`read_objects`; ``typed``: a JSON ``List`` comes back as one
    :class:`~fastpath.cluster.load_fast.TypedList` where it can."""
    data = read_input(p, "cluster")  # a regular file under the size limit; FIFOs and devices refused
    suffix = p.suffix.lower()
    if _fast_json is not None and (suffix == ".json" or (suffix not in (".yaml", ".yml")
                                                         and _first_char(data) in (b"{", b"["))):
        if typed:
            found = decode_list(data)
            if found is not None:
                return [found]
        # JSON read straight from the bytes (no 139 MB text copy); anything the decoder refuses
        # (not UTF-8, a byte-order mark, NaN, ...) takes the path below, which says why
        try:
            doc = _fast_json(data)
        except Exception:  # noqa: BLE001
            pass
        else:
            return doc if isinstance(doc, list) else [doc]
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a byte-order mark (PowerShell's `>`)
        data = _utf16_to_utf8(data, p)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FastpathError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None
    first = _first_char(text)
    if not first:
        raise FastpathError(f"{p}: file is empty")
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and first in "{["):
        return _parse_json(text, p)
    return _parse_yaml(text, p)


def _first_char(text: str | bytes) -> str | bytes:
    """The first character that is not whitespace (as ``text.lstrip()[:1]``, without copying ``text``)."""
    i, n = 0, len(text)
    while i < n and text[i:i + 1].isspace():
        i += 1
    return text[i:i + 1]


def _utf16_to_utf8(data: bytes, p: Path) -> bytes:
    """A UTF-16 file with a byte-order mark, as UTF-8 bytes."""
    try:
        return data.decode("utf-16").encode("utf-8")
    except UnicodeDecodeError as e:
        raise FastpathError(f"{p}: not UTF-16 text after its byte-order mark (bad bytes at offset {e.start})") from None


def _parse_json(text: str, p: Path) -> list:
    if _fast_json is not None:
        try:
            doc = _fast_json(text)
        except Exception:  # noqa: BLE001 - anything it refuses (NaN, huge ints, bad JSON): json decides
            pass
        else:
            return doc if isinstance(doc, list) else [doc]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        tail = "; the file ends early (truncated?)" if e.pos >= len(text.rstrip()) else ""
        raise FastpathError(f"{p}: line {e.lineno} column {e.colno}: bad JSON ({e.msg}){tail}") from None
    except RecursionError:
        raise FastpathError(f"{p}: bad JSON (nested too deeply)") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise FastpathError(f"{p}: bad JSON ({shorten(' '.join(str(e).split(';')[0].split()), 160)})") from None
    return doc if isinstance(doc, list) else [doc]


def _parse_yaml(text: str, p: Path) -> list:
    try:
        docs = [d for d in safeyaml.load_all(text) if d is not None]  # aliases bounded
    except safeyaml.AliasLimit as e:
        raise FastpathError(f"{p}: {e}") from None
    except RecursionError:
        raise FastpathError(f"{p}: bad YAML (nested too deeply)") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise FastpathError(f"{p}: bad YAML ({shorten(' '.join(str(e).split(';')[0].split()), 160)})") from None
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
        if type(obj) is TypedList:         # records with their kinds, mappings as a List's items
            kind_of = KIND_OF
            sub = obj.items
            for i, it in enumerate(sub):
                sub[i] = None               # read once: freed as soon as read, its memory reused
                k = kind_of.get(type(it))
                if k is not None:
                    yield src, it, k
                else:
                    yield from _list_items(src, obj.kind, (it,), i)
            continue
        kind = _kind(src, obj)
        if not (kind.endswith("List") and "items" in obj):
            yield src, obj, kind
            continue
        sub = obj.get("items") or []
        if not isinstance(sub, list):
            raise FastpathError(f"{src}: {kind}: items is not a list")
        yield from _list_items(src, kind, sub)


def _list_items(src: str, kind: str, sub: Iterable, start: int = 0) -> Iterator[tuple[str, dict, str]]:
    """The items of a List of ``kind`` (``sub`` from item ``start`` on), flattened."""
    # kubectl's List carries kinds in its items; an API PodList (etc.) leaves them out
    item_kind = kind[:-4]
    for i, it in enumerate(sub, start):
        if type(it) is dict:            # the usual item: a mapping with a kind that is no List
            k = it.get("kind")
            if type(k) is str and k and not k.endswith("List"):
                yield src, it, k
                continue
        elif not isinstance(it, dict):  # a bare "-" in a hand-edited List, a string, ...
            found = "null" if it is None else show(it)
            raise FastpathError(f"{src}: {kind} items[{i}]: expected a Kubernetes object (a mapping), found {found}")
        if item_kind and isinstance(it, dict) and "kind" not in it:
            it = {**it, "kind": item_kind}
        k = _kind(src, it)
        if k.endswith("List") and "items" in it:
            yield from _flatten(((src, it),))
        else:
            yield src, it, k


def _kind(src: str, obj: object) -> str:
    if not isinstance(obj, dict):
        raise FastpathError(f"{src}: expected Kubernetes objects (mappings), found {show(obj)}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        raise FastpathError(f"{src}: object {name or '(unnamed)'} has no kind")
    return kind


# --------------------------------------------------------------------------- fields and kinds

# the readers of one object's fields (fastpath.cluster.load_kinds), importable from here as before
from .load_kinds import (AFFINITY_TIMEOUT_DEFAULT, AFFINITY_TIMEOUT_MAX, SERVICE_TYPES,  # noqa: E402,F401
                         TERMINAL_PHASES, TRAFFIC_POLICIES, ZONE_LABEL, _cidr, _cpus, _endpoint, _endpoint_fast,
                         _hint_names, _Invalid, _ip, _is_v6, _labels, _list, _new_endpoint, _node, _PodParser,
                         _port, _proto, _service, _slice, _str, _target)
from .load_fast import KIND_OF, Redo, TypedList, TypedReaders, decode_list  # noqa: E402


# --------------------------------------------------------------------------- assembly

def _build(items: Iterable[tuple[str, object]], problems: Problems | None = None, *,
           by_identity: bool = True) -> Cluster:
    """The cluster of ``items`` (``(source, object)``). ``by_identity``: pods may share one
    ``containers`` list (objects built in memory), so their ports are read once per list."""
    from . import objects

    nodes: list[Node] = []
    pods: list[Pod] = []
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    # (kind, ns/name) -> (source, object): identical copies merge, differing ones are an error
    origin: dict[tuple[str, str], tuple[str, dict]] = {}
    pod_src: list[str] = []
    skipped: dict[str, int] = {}
    slice_skips: dict[str, list[str]] = {}
    portless: list[str] = []
    legacy: dict[tuple[str, str], tuple[str, dict]] = {}   # Endpoints by (ns, name)
    namespaces: dict[str, dict] = {}
    ns_names: dict[str, str] = {}
    masq = cluster_cidr = conntrack_sizing = None
    problems = problems if problems is not None else Problems()
    parse_pod = _PodParser(by_identity)
    extra = ExtraKinds()        # NetworkPolicy, Namespace, workloads (fastpath.cluster.netpol)
    extra_kinds = extra.KINDS

    typed = TypedReaders(parse_pod, pods)
    typed_src = typed_entry = None
    read_pod, add_pod, add_pod_src = typed.pod, pods.append, pod_src.append

    for src, obj, kind in _flatten(items):
        if type(obj) is not dict:       # a typed record (fastpath.cluster.load_fast)
            meta = obj.metadata
            name = meta.name if meta is not None else None
            if not name:
                raise Redo
            if kind == "Node":
                ns = ""
            else:
                ns = meta.namespace or "default"
                ns = ns_names.get(ns) or _interned(ns, ns_names, namespaces)     # a call only for a new one
            ident = f"{ns}/{name}" if ns else name
            key = (kind, ident)
            if key in origin:           # given twice: the plain path compares the objects whole
                raise Redo
            if src is not typed_src:
                typed_src, typed_entry = src, (src, None)   # a record is not kept: only where it was
            origin[key] = typed_entry
            try:
                if kind == "Pod":
                    add_pod(read_pod(obj, ns, name))
                    add_pod_src(src)
                elif kind == "EndpointSlice":
                    atype = obj.addressType or "IPv4"
                    labels = meta.labels
                    svc = labels.get(SERVICE_NAME_LABEL) if labels else None
                    if atype != "IPv4":
                        slice_skips.setdefault(f"addressType {atype}", []).append(ident)
                    elif not svc:
                        slice_skips.setdefault(f"no {SERVICE_NAME_LABEL} label", []).append(ident)
                    else:
                        slices.append(typed.slice(obj, ns, name, svc, portless))
                elif kind == "Node":
                    nodes.append(typed.node(obj, name))
                else:
                    services.append(typed.service(obj, ns, name))
            except Exception:  # noqa: BLE001 - a bad value, or anything unusual: the plain path says what
                raise Redo from None
            continue
        is_extra = kind in extra_kinds
        if not is_extra and kind not in READ_KINDS:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise FastpathError(f"{src}: {kind} without metadata.name")
        if kind in CLUSTER_SCOPED:
            ns = ""
        else:
            ns = meta.get("namespace") or "default"
            if type(ns) is not str:
                raise FastpathError(f"{src}: {kind} {name}: metadata.namespace: expected a string, found {show(ns)}")
            ns = _interned(ns, ns_names, namespaces)
        ident = f"{ns}/{name}" if ns else name
        key = (kind, ident)
        first = origin.get(key)
        if first is not None:
            if type(first[1]) is not dict:  # a typed record first: the plain path compares them
                raise Redo
            if first[1] == obj:     # the same object in two files (or twice in one): one object
                problems.add("merged-duplicate", f"{kind} {ident}")
                continue
            where = "" if first[0] == src else f" (first in {first[0]})"
            raise FastpathError(f"{src}: {kind} {ident}: defined twice, differently{where}")
        origin[key] = (src, obj)
        if is_extra:
            extra.add(src, obj, kind)
            continue
        try:
            if kind == "Pod":
                pods.append(parse_pod(obj, ns, name))
                pod_src.append(src)
            elif kind == "Node":
                nodes.append(_node(obj, name))
            elif kind == "Service":
                services.append(_service(obj, ns, name))
            elif kind == "EndpointSlice":
                atype = _str(obj.get("addressType"), "addressType") or "IPv4"
                svc = _labels(meta.get("labels"), "metadata.labels").get(SERVICE_NAME_LABEL)
                if atype != "IPv4":
                    slice_skips.setdefault(f"addressType {atype}", []).append(ident)
                elif not svc:
                    slice_skips.setdefault(f"no {SERVICE_NAME_LABEL} label", []).append(ident)
                else:
                    slices.append(_slice(obj, ns, name, svc, portless))
            elif kind == "Endpoints":
                _labels(meta.get("labels"), "metadata.labels")
                legacy[(ns, name)] = (src, obj)
            elif (ns, name) == objects.MASQ_AGENT:
                masq = objects.masquerade(obj, f"{src}: ConfigMap {ident}", _cidr,
                                          lambda t: problems.add("masquerade-v6", t))
            elif (ns, name) == objects.KUBE_PROXY:
                cluster_cidr = objects.kube_proxy_cluster_cidr(obj, _cidr)
                conntrack_sizing = objects.kube_proxy_conntrack(obj)
            else:                                   # another ConfigMap: not used
                skipped[kind] = skipped.get(kind, 0) + 1
        except (_Invalid, FastpathError, objects.ObjectError) as e:
            raise FastpathError(f"{src}: {kind} {ident}: {e}") from None
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            raise FastpathError(f"{src}: {kind} {ident}: {_malformed(obj, kind, e)}") from None

    slices.extend(_mirror(services, slices, legacy, problems))
    warnings: list[str] = []
    for kind, n in skipped.items():
        warnings.append(skipped_line(kind, n))
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
    if parse_pod.shared_port:
        for p in parse_pod.shared_port:
            problems.add("duplicate-container-port", p)
    src_of = {("Node", n.name): origin[("Node", n.name)][0] for n in nodes}
    _check_nodes(nodes, src_of)
    missing = _check_pods(pods, pod_src, nodes, warnings, problems)
    _check_services(services, origin)
    warnings.extend(problems.lines())
    cluster = Cluster(nodes=nodes, pods=pods, services=services, slices=slices, warnings=warnings,
                      namespaces=namespaces, missing_nodes=missing, masquerade=masq, cluster_cidr=cluster_cidr,
                      conntrack_sizing=conntrack_sizing, skipped_kinds=skipped, problems=problems.by_key)
    extra.finish(cluster)
    return cluster


def _interned(ns: str, ns_names: dict, namespaces: dict) -> str:
    """One string per namespace, shared by its objects; a namespace first met gets its name label."""
    same = ns_names.get(ns)
    if same is None:
        ns_names[ns] = ns
        namespaces[ns] = {NAMESPACE_NAME_LABEL: ns}
        return ns
    return same


def _malformed(obj: dict, kind: str, e: Exception) -> str:
    """The message for an object the readers tripped over: the field path where one fits."""
    where = find_type_error(obj, kind)
    return where if where else f"malformed object ({type(e).__name__}: {str(e)[:80]})"


def _mirror(services: list[Service], slices: list[EndpointSlice], legacy: dict,
            problems: Problems) -> list[EndpointSlice]:
    """Slices from legacy Endpoints for services given without slices; note services with no source at all."""
    from . import objects

    sliced = {(s.namespace, s.service) for s in slices}
    out: list[EndpointSlice] = []
    for svc in services:
        key = (svc.namespace, svc.name)
        if svc.type == "ExternalName" or key in sliced:
            continue
        found = legacy.get(key)
        if found is not None:
            src, obj = found
            try:
                out.extend(objects.mirror_endpoints(obj, svc.namespace, svc.name, _ip, _port, _proto, _str))
            except (_Invalid, FastpathError, objects.ObjectError) as e:
                raise FastpathError(f"{src}: Endpoints {svc.key}: {e}") from None
            except (AttributeError, TypeError, KeyError, ValueError) as e:
                raise FastpathError(f"{src}: Endpoints {svc.key}: {_malformed(obj, 'Endpoints', e)}") from None
        elif not svc.selector:
            problems.add("no-endpoints-source", svc.key)
    return out


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


def _check_pods(pods: list[Pod], pod_src: list[str], nodes: list[Node], warnings: list[str],
                problems: Problems) -> dict[str, int]:
    """Pod addresses against nodes; returns the node names pods give that no Node has (-> pod count).

    Pods on such nodes are kept with ``node_known=False`` (a namespace-scoped dump has no Nodes).
    Column by column (150,000 pods at 5,000 nodes); a repeated pod IP is then found by
    :func:`_repeated_ip`, which names the pods as a walk in pod order would.
    """
    import numpy as np

    node_pos = {n.name: i for i, n in enumerate(nodes)}
    missing: dict[str, int] = {}
    # the columns in one walk over the pods (each a cache miss at 150,000 pods): every pod's
    # node; the pods with an IP of their own (not hostNetwork), and those IPs
    node_list: list[str | None] = []
    owned: list[int] = []
    owned_ips: list[int] = []
    add_node, add_owned, add_ip = node_list.append, owned.append, owned_ips.append
    for i, p in enumerate(pods):
        add_node(p.node)
        ip = p.ip
        if ip is not None and not p.host_network:
            add_owned(i)
            add_ip(ip)
    node_at = np.fromiter(map(node_pos.get, node_list, repeat(-1)), dtype=np.int64, count=len(node_list))
    for i in [i for i in np.flatnonzero(node_at < 0).tolist() if node_list[i] is not None]:
        p = pods[i]
        missing[p.node] = missing.get(p.node, 0) + 1
        problems.add("node-not-in-input", f"{p.key} on {p.node}")
        pods[i] = replace(p, node_known=False)      # the same IP and hostNetwork
    ip = np.array(owned_ips, dtype=np.int64)
    order = np.sort(ip)
    if (order[1:] == order[:-1]).any():        # an IP given twice
        _repeated_ip(pods, pod_src, owned)
    if not owned:
        return missing
    rows = np.array(owned, dtype=np.int64)
    node = node_at[rows]
    placed = node >= 0
    rows = rows[placed]
    ip = ip[placed]
    node = node[placed]
    # inside one of its own node's pod CIDRs: compare with each node's k-th CIDR in turn
    width = max((len(n.pod_cidrs) for n in nodes), default=0)
    inside = np.zeros(ip.shape[0], dtype=bool)
    for k in range(width):
        net = np.array([n.pod_cidrs[k][0] if len(n.pod_cidrs) > k else -1 for n in nodes], dtype=np.int64)
        mask = np.array([prefix_mask(n.pod_cidrs[k][1]) if len(n.pod_cidrs) > k else 0 for n in nodes],
                        dtype=np.int64)
        inside |= (ip & mask[node]) == net[node]
    spans = sorted((net, net | (~prefix_mask(length) & 0xFFFFFFFF)) for n in nodes for net, length in n.pod_cidrs)
    starts = np.array([a for a, _ in spans], dtype=np.int64)
    ends = np.array([b for _, b in spans], dtype=np.int64)
    stray = rows[~inside]
    s_ip = ip[~inside]
    k = np.searchsorted(starts, s_ip, side="right") - 1
    in_other = (k >= 0) & (s_ip <= ends[np.maximum(k, 0)]) if k.size and starts.size else \
        np.zeros(k.shape[0], dtype=bool)
    outside, foreign = stray[~in_other].tolist(), stray[in_other].tolist()
    if outside:
        p = pods[outside[0]]
        warnings.append(f"{len(outside)} pod IP{'s' * (len(outside) != 1)} outside every node's pod CIDR "
                        f"(e.g. Pod {p.key} {int_to_ip(p.ip)}): Calico-style or VPC-native addressing (Calico IPAM "
                        f"blocks, the AWS VPC CNI), routed by block or host routes")
    if foreign:
        p = pods[foreign[0]]
        warnings.append(f"{len(foreign)} pod IP{'s' * (len(foreign) != 1)} inside another node's pod CIDR "
                        f"(e.g. Pod {p.key} {int_to_ip(p.ip)} on {p.node}): borrowed addresses, routed by host routes")
    return missing


def _repeated_ip(pods: list[Pod], pod_src: list[str], owned: list[int]) -> None:
    """Raise for the first pod (in pod order) whose IP an earlier pod has."""
    by_ip: dict[int, int] = {}
    for i in owned:
        p = pods[i]
        j = by_ip.setdefault(p.ip, i)
        if j != i:
            raise FastpathError(f"{pod_src[i]}: Pod {p.key}: IP {int_to_ip(p.ip)} is also Pod {pods[j].key}'s")


def _check_services(services: list[Service], origin: dict) -> None:
    vip_owner: dict[int, str] = {}
    node_port_owner: dict[tuple[int, int], str] = {}
    for s in services:
        key = s.key
        for ip in s.cluster_ips:
            other = vip_owner.setdefault(ip, key)
            if other != key:
                src = origin[("Service", key)][0]
                raise FastpathError(f"{src}: Service {key}: clusterIP {int_to_ip(ip)} is also Service {other}'s")
        for p in s.ports:
            if p.node_port is None:
                continue
            other = node_port_owner.setdefault((p.node_port, p.proto), key)
            if other != key:
                src = origin[("Service", key)][0]
                raise FastpathError(f"{src}: Service {key}: nodePort {p.node_port} is also Service {other}'s")
