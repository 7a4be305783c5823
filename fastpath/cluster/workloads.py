"""Workload objects, and their pods placed as the controllers and the scheduler would.

Users run policy analysis on what they are about to deploy (``helm template``, a
manifests folder): Deployments, StatefulSets, DaemonSets, ReplicaSets,
ReplicationControllers, Jobs and CronJobs, and no pods. :func:`expand_workloads`
places their pods so that replay and ``explain`` work on manifests
(``--expand-workloads``):

* one pod per replica (``spec.replicas``, default 1; a Job's ``parallelism``; a
  CronJob's job template's), a DaemonSet's on every node;
* labels, container ports and ``hostNetwork`` from the pod template (labels are the
  template's only: no ``pod-template-hash``, so selectors see what the manifest says);
* names as the controllers make them (``web-7d4f9c8b6d-xk2lp``, ``db-0``, ``agent-q8x4t``);
* nodes round-robin over the schedulable nodes (control-plane nodes only when no other);
  without nodes in the input, :data:`SYNTH_NODES` synthetic nodes as ``synth cluster``
  makes them (InternalIP 192.168.1.10 up, a /24 podCIDR each from 10.244.0.0/16);
* addresses from the node's pod CIDR from ``.2`` up, as the bridge plugin's host-local
  IPAM hands them out, skipping addresses pods of the input hold (a node without a
  pod CIDR gets a /24 of 10.200.0.0/16 routed as Calico does); hostNetwork pods take
  their node's InternalIP.

A workload "has pods" when some pod of its namespace matches its selector (or, without
one, carries every template label): those are left alone.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

from ..addr import format_cidr, int_to_ip, prefix_mask
from ..errors import FastpathError
from .model import Cluster, ContainerPort, Node, Pod
from .netpol import LabelSelector, PolicyError, _selector

#: Workload kinds expanded.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob")
#: Synthetic nodes made when the input has none.
SYNTH_NODES = 3
#: Where synthetic node addresses and pod CIDRs start (as ``synth cluster``).
NODE_BASE, POD_BASE, SPARE_POD_BASE = 0xC0A8010A, 0x0AF40000, 0x0AC80000
#: Characters of generated name suffixes (the API server's ``generateName`` alphabet).
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Workload:
    """A pod controller and its pod template."""

    kind: str
    namespace: str
    name: str
    replicas: int                            #: pods it wants (-1: one per node, a DaemonSet)
    selector: LabelSelector | None
    host_network: bool
    ports: tuple[ContainerPort, ...]
    labels: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """``namespace/name[Kind]``, as netpol-analyzer names workloads."""
        return f"{self.namespace}/{self.name}[{self.kind}]"


def _count(value, what: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"{what} {value!r} is not a whole number >= 0")
    return value


def parse_workload(obj: dict, kind: str, namespace: str, name: str) -> Workload:
    """Validate one workload object (raises :class:`PolicyError` naming the field path)."""
    from .load import _Invalid, _PodParser

    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise PolicyError("spec is not a mapping")
    where = "spec"
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        where = "spec.jobTemplate.spec"
    template = spec.get("template") or {}
    if not isinstance(template, dict):
        raise PolicyError(f"{where}.template is not a mapping")
    tmeta = template.get("metadata") or {}
    tspec = template.get("spec") or {}
    labels = tmeta.get("labels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(f"{where}.template.metadata.labels is not a mapping")
    if kind == "DaemonSet":
        replicas = -1
    elif kind in ("Job", "CronJob"):
        replicas = _count(spec.get("parallelism"), f"{where}.parallelism", 1)
    else:
        replicas = _count(spec.get("replicas"), f"{where}.replicas", 1)
    raw = spec.get("selector")
    if raw is None or kind in ("Job", "CronJob"):
        selector = None
    elif kind == "ReplicationController":        # a plain label map
        if not isinstance(raw, dict):
            raise PolicyError("spec.selector is not a mapping")
        selector = LabelSelector(tuple((str(k), str(v)) for k, v in raw.items()))
    else:
        selector = _selector(raw, "spec.selector")
    try:
        ports = _PodParser().ports(tspec)
        if len(ports) == 2 and isinstance(ports[0], tuple):    # (ports, note) where the loader gives a note
            ports = ports[0]
    except _Invalid as e:
        raise PolicyError(f"{where}.template.spec: {e}") from None
    return Workload(kind=kind, namespace=namespace, name=name, replicas=replicas, selector=selector,
                    host_network=bool(tspec.get("hostNetwork", False)), ports=ports,
                    labels={str(k): str(v) for k, v in labels.items()})


def _suffix(seed: str, width: int) -> str:
    h = zlib.crc32(seed.encode())
    out = []
    for _ in range(width):
        h, r = divmod(h * 2654435761 + 12345, len(_ALPHABET))
        out.append(_ALPHABET[r])
        h &= 0xFFFFFFFF
    return "".join(out)


def pod_names(w: Workload, count: int) -> list[str]:
    """The names the workload's controller gives its ``count`` pods."""
    if w.kind == "StatefulSet":
        return [f"{w.name}-{i}" for i in range(count)]
    base = w.name
    if w.kind == "Deployment":
        base = f"{w.name}-{_suffix(w.namespace + '/' + w.name, 10)}"
    elif w.kind == "CronJob":
        base = f"{w.name}-{29000000 + zlib.crc32(w.name.encode()) % 1000000}"
    names, seen = [], set()
    for i in range(count):
        k = 0
        while True:
            n = f"{base}-{_suffix(f'{w.namespace}/{base}/{i}/{k}', 5)}"
            if n not in seen:
                break
            k += 1
        seen.add(n)
        names.append(n)
    return names


def synthetic_nodes(count: int = SYNTH_NODES) -> list[Node]:
    """``count`` nodes as ``synth cluster`` makes them (bridge addressing)."""
    return [Node(name=f"node-{k:03d}", internal_ip=NODE_BASE + k, external_ip=None,
                 pod_cidrs=((POD_BASE + (k << 8), 24),), zone=f"eu-west-1{chr(97 + k % 3)}",
                 labels={"kubernetes.io/hostname": f"node-{k:03d}", "topology.kubernetes.io/zone":
                         f"eu-west-1{chr(97 + k % 3)}"})
            for k in range(count)]


def _has_pods(w: Workload, pods_by_ns: dict[str, list[Pod]]) -> bool:
    for p in pods_by_ns.get(w.namespace, ()):
        if w.selector is not None and not w.selector.empty:
            if w.selector.matches(p.labels):
                return True
        elif w.labels and all(p.labels.get(k) == v for k, v in w.labels.items()):
            return True
    return False


class _Addresses:
    """Per-node address pools: the node's first pod CIDR from .2 up, skipping used addresses."""

    def __init__(self, nodes: list[Node], used: set[int]) -> None:
        self.used = used
        self.next: dict[str, int] = {}
        self.end: dict[str, int] = {}
        spare = 0
        for n in nodes:
            if n.pod_cidrs:
                net, length = n.pod_cidrs[0]
            else:
                net, length = SPARE_POD_BASE + (spare << 8), 24
                spare += 1
            self.next[n.name] = net + 2 if length <= 30 else net
            self.end[n.name] = net | (~prefix_mask(length) & 0xFFFFFFFF)
            self.cidr = format_cidr(net, length)

    def take(self, node: str) -> int:
        ip = self.next[node]
        while ip in self.used:
            ip += 1
        if ip >= self.end[node]:
            raise FastpathError(f"--expand-workloads: node {node}'s pod CIDR is full "
                                f"(last address {int_to_ip(self.end[node])})")
        self.used.add(ip)
        self.next[node] = ip + 1
        return ip


def expand_workloads(cluster: Cluster, owners: dict[str, str] | None = None) -> Cluster:
    """A copy of ``cluster`` with pods placed for every workload that has none.

    Parameters
    ----------
    cluster
        A loaded cluster; its ``workloads`` come from the loader.
    owners
        If given, filled with ``pod key -> workload key`` (``ns/name[Kind]``) for every
        placed pod.

    Returns
    -------
    Cluster
        The same cluster with the placed pods (and synthetic nodes where it had none)
        appended, and a note in ``warnings``. Without workloads to expand, ``cluster`` itself.
    """
    workloads = list(getattr(cluster, "workloads", None) or ())
    pods_by_ns: dict[str, list[Pod]] = {}
    for p in cluster.pods:
        pods_by_ns.setdefault(p.namespace, []).append(p)
    todo = [w for w in workloads if not _has_pods(w, pods_by_ns)]
    if not todo:
        return cluster
    nodes = list(cluster.nodes)
    made_nodes = not nodes
    if made_nodes:
        nodes = synthetic_nodes()
    workers = [n for n in nodes if "node-role.kubernetes.io/control-plane" not in n.labels] or nodes
    used = {p.ip for p in cluster.pods if p.ip is not None}
    used.update(n.internal_ip for n in nodes if n.internal_ip is not None)
    pool = _Addresses(nodes, used)
    taken = {p.key for p in cluster.pods}
    placed: list[Pod] = []
    turn = 0
    for w in todo:
        targets = nodes if w.replicas < 0 else [workers[(turn + i) % len(workers)] for i in range(w.replicas)]
        if w.replicas > 0:
            turn += w.replicas
        for node, name in zip(targets, pod_names(w, len(targets))):
            key = f"{w.namespace}/{name}"
            if key in taken:
                raise FastpathError(f"--expand-workloads: {w.kind} {w.namespace}/{w.name}: pod name {key} "
                                    f"is taken by a pod of the input")
            taken.add(key)
            ip = node.internal_ip if w.host_network else pool.take(node.name)
            placed.append(Pod(namespace=w.namespace, name=name, node=node.name, host_network=w.host_network,
                              ip=ip, ready=True, terminating=False, ports=w.ports, labels=dict(w.labels)))
            if owners is not None:
                owners[key] = w.key
    note = (f"--expand-workloads: placed {len(placed)} pod{'s' * (len(placed) != 1)} for {len(todo)} "
            f"workload{'s' * (len(todo) != 1)}" + (f" on {len(nodes)} synthetic nodes" if made_nodes else ""))
    return replace(cluster, nodes=nodes, pods=list(cluster.pods) + placed, warnings=list(cluster.warnings) + [note])
