"""Synthetic cluster events (``docs/events.md``): rollouts, drains and scaling as a watch stream.

:func:`synth_events` plays the controllers over a cluster and returns the events ``kubectl get
--watch --output-watch-events -o json`` prints, with a ``ts``; :func:`write_events` writes them.
A **rollout** (maxSurge 25 % rounded up, maxUnavailable 25 % rounded down, as the Deployment
controller) ADDs new pods Pending on schedulable nodes, gives each a never-used IP of its node's
podCIDR (Running, not Ready), Ready ``ready_s`` later; old pods, unready first, turn terminating
(``deletionTimestamp``, not Ready) and are DELETED ``grace_s`` later. A **drain** cordons a Node
and evicts its pods (not hostNetwork, DaemonSet or static ones), replaced on other nodes. A
**scale** moves a workload up or down by 1 to half its replicas. Services given with
EndpointSlices get the EndpointSlice controller's updates (:mod:`fastpath.cluster.slice_events`).
Actions run one after another (the next once the previous one's new pods are Ready); the rest
of the span is spread evenly before, between and after them. Deterministic for a seed.
"""
from __future__ import annotations

import copy
import json
import math
import socket
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import FastpathError
from ..files import atomic_write_text
from .endpoints import NAME_ALPHABET
from .load import _flatten, cluster_files, cluster_from_objects, load_cluster, read_objects
from .model import Cluster
from .slice_events import with_slice_updates
from .synth import _NOT_READY, _READY, _ntoa

#: ``ts`` of the span's start by default: the synthetic traces' time zero.
START_NS = 1_700_000_000_000_000_000
#: Seconds from a pod's scheduling to its IP (sandbox and CNI), drawn uniformly; from cordon to evictions.
SANDBOX_S, EVICT_S = (0.3, 1.0), 1.0
#: Owners of pods a drain leaves in place; of pods never rolled out or scaled.
DRAIN_LEAVES = frozenset({"DaemonSet", "Node"})
FIXED_OWNERS = frozenset({"DaemonSet", "Node", "StatefulSet", "Job", "CronJob"})
HASH_LABEL = "pod-template-hash"
_CORDON_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
_SCHEDULED = {"type": "PodScheduled", "status": "True"}
_LATER = "<set once the times are final>"      # creation and deletion timestamps
_TERMINAL = ("Succeeded", "Failed")


def synth_events(cluster_path_or_objects: str | Path | dict | Iterable[dict], *, rollouts: int = 1, drains: int = 0,
                 scale: int = 0, start_ns: int = START_NS, span_s: float = 60.0, seed: int = 0,
                 grace_s: float = 30.0, ready_s: float = 2.0) -> list[dict]:
    """Watch events (``{"type", "ts", "object"}``, in time order) of rollouts, drains and scalings.

    ``cluster_path_or_objects``: a cluster file or directory, a ``v1`` ``List``, or objects. Every
    ``ts`` lies in ``[start_ns, start_ns + span_s]``. ``grace_s``: a terminating pod's grace period;
    ``ready_s``: a new pod's time from IP to Ready. Raises :class:`FastpathError` (one line) for no
    such cluster, a bad number, nothing to roll out, scale or drain, or a span too short.
    """
    for name, v in (("rollouts", rollouts), ("drains", drains), ("scale", scale), ("seed", seed), ("start", start_ns)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise FastpathError(f"synth events: {name} must be a whole number >= 0 (got {v!r})")
    for name, v in (("span", span_s), ("grace", grace_s), ("ready", ready_s)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                (name == "span" and v == 0):
            raise FastpathError(f"synth events: {name} must be a finite number of seconds "
                                f"{'> 0' if name == 'span' else '>= 0'} (got {v!r})")
    span_ns = round(span_s * 1e9)
    if int(start_ns) + span_ns >= 1 << 63:
        raise FastpathError(f"synth events: start {start_ns} plus span {span_s} s is past 2**63-1 ns")
    objects, cluster = _read(cluster_path_or_objects)
    sim = _Sim(objects, cluster, int(seed), round(grace_s * 1e9), round(ready_s * 1e9))
    return sim.run(int(rollouts), int(drains), int(scale), int(start_ns), span_ns)


def write_events(events: list[dict], path: str | Path) -> Path:
    """Write ``events`` as JSON lines, whole or not at all (a temporary file, then rename)."""
    return atomic_write_text(path, "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events),
                             "events file")


def workload_key(pod: dict) -> tuple | None:
    """``(namespace, labels but pod-template-hash)`` of a pod a rollout or scaling may touch, else None."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    labels = meta.get("labels") or {}
    if (spec.get("hostNetwork") or not labels or (_owner(pod) or {}).get("kind") in FIXED_OWNERS
            or (pod.get("status") or {}).get("phase") in _TERMINAL):
        return None
    return meta.get("namespace") or "default", tuple(sorted((k, v) for k, v in labels.items() if k != HASH_LABEL))


def _read(src: str | Path | dict | Iterable[dict]) -> tuple[list[dict], Cluster]:
    """The raw Nodes, Pods, Services and EndpointSlices (first of duplicates) and the validated cluster."""
    if isinstance(src, (str, Path)):
        p, items = Path(src), []
        cluster = load_cluster(p)            # names the file and object at fault
        for f in cluster_files(p) if p.is_dir() else [p]:
            objs = read_objects(f)
            if not p.is_dir() or any(isinstance(o, dict) and "kind" in o for o in objs):
                items.extend((str(f), o) for o in objs)
    else:
        objs = [src] if isinstance(src, dict) else list(src)
        cluster, items = cluster_from_objects(objs), [("<objects>", o) for o in objs]
    seen, out = set(), []
    for _, obj, kind in _flatten(items):
        key = kind in ("Node", "Pod", "Service", "EndpointSlice") and (kind, *_pkey(obj))
        if key and key not in seen:
            seen.add(key)
            out.append(obj)
    return out, cluster


def _owner(obj: dict) -> dict | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return next((r for r in refs if isinstance(r, dict) and r.get("controller")), None)


def _ip(text: object) -> int | None:
    try:
        return int.from_bytes(socket.inet_aton(text), "big") if str(text).count(".") == 3 else None
    except (OSError, TypeError):
        return None


def _ready(obj: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or ())


def _pkey(obj: dict) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "default", obj["metadata"]["name"]


def _prefix(pod: dict) -> str:
    """The ReplicaSet-style prefix of a pod's name (``cart-api-5d8f7c9b4`` of ``cart-api-5d8f7c9b4-x2b7q``)."""
    meta = pod["metadata"]
    return (meta.get("generateName") or "").rstrip("-") or meta["name"].rpartition("-")[0] or meta["name"]


def _evicted(pod: dict, node: str) -> bool:
    """Whether draining ``node`` evicts ``pod``: on it, neither hostNetwork nor a DaemonSet's or static pod."""
    spec = pod.get("spec") or {}
    return spec.get("nodeName") == node and not spec.get("hostNetwork") and \
        (_owner(pod) or {}).get("kind") not in DRAIN_LEAVES


class _Sim:
    """The cluster as the actions change it, and their events (``[ts, action, type, object]``, ts relative)."""

    def __init__(self, objects: list[dict], cluster: Cluster, seed: int, grace_ns: int, ready_ns: int):
        self.rng, self.grace, self.ready, self.objects = np.random.default_rng(seed), grace_ns, ready_ns, objects
        self.nodes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Node"}
        self.model = {n.name: n for n in cluster.nodes}
        self.base_pods = {_pkey(o): o for o in objects if o["kind"] == "Pod"}
        self.pods = {k: o for k, o in self.base_pods.items()   # the live ones: not terminating, not finished
                     if not o["metadata"].get("deletionTimestamp") and (o.get("status") or {}).get("phase")
                     not in _TERMINAL}
        self.names = set(self.base_pods)
        self.selectors = [(s.namespace, s.selector) for s in cluster.services if s.selector]
        self.cordoned = {n for n, o in self.nodes.items() if (o.get("spec") or {}).get("unschedulable")}
        self.tainted = {n for n, o in self.nodes.items() if any(
            t.get("effect") in ("NoSchedule", "NoExecute") for t in (o.get("spec") or {}).get("taints") or ())}
        on = Counter((o.get("spec") or {}).get("nodeName") for o in self.pods.values())
        self.per_node = {n: on[n] for n in self.nodes}
        used = set()                       # every address a pod or node holds: never handed out again
        for o in self.base_pods.values():
            st = o.get("status") or {}
            used.update(_ip(t) for t in [st.get("podIP")] + [e.get("ip") for e in st.get("podIPs") or ()])
        for o in self.nodes.values():
            used.update(_ip(a.get("address")) for a in (o.get("status") or {}).get("addresses") or ())
            used.update(_ip(str(v).partition("/")[0]) for k, v in (o["metadata"].get("annotations") or {}).items()
                        if k.startswith("projectcalico"))
        self.used = used - {None}
        pod_ips = [_ip((o.get("status") or {}).get("podIP")) for o in self.base_pods.values()
                   if not (o.get("spec") or {}).get("hostNetwork")]
        self.next_block = (max(filter(None, pod_ips), default=0x0A800000 - 64) & ~63) + 64   # Calico: blocks from here
        self.addresses: dict[str, Iterator[int]] = {}
        self.full, self.events, self.action = set(), [], 0   # nodes out of addresses; events; action number

    def run(self, rollouts: int, drains: int, scale: int, start_ns: int, span_ns: int) -> list[dict]:
        kinds = ["rollout"] * rollouts + ["drain"] * drains + ["scale"] * scale
        if (rollouts or scale) and not self._workloads():
            raise FastpathError(f"synth events: the cluster has no workload to {'roll out' if rollouts else 'scale'} "
                                f"(pods of a Deployment or ReplicaSet, with labels)")
        spare = len([n for n in self.nodes if n not in self.cordoned and n not in self.tainted]) or \
            len([n for n in self.nodes if n not in self.cordoned])
        if drains and drains >= spare:
            raise FastpathError(f"synth events: cannot drain {drains} of the {spare} schedulable nodes "
                                f"(the evicted pods need one left)")
        t, done = 0, set()
        for self.action, i in enumerate(self.rng.permutation(len(kinds)).tolist()):
            if kinds[i] == "drain":
                t = self._drain(t)
                continue
            loads = self._workloads()     # the ones a Service selects first, then the ones not yet changed
            picks = [k for k in loads if any(ns == k[0] and sel.items() <= dict(k[1]).items()
                                             for ns, sel in self.selectors)]
            picks = [k for k in picks or loads if k not in done] or picks or list(loads)
            key = picks[int(self.rng.integers(len(picks)))]
            done.add(key)
            t = (self._rollout if kinds[i] == "rollout" else self._scale)(t, loads[key])
        total = max((e[0] for e in self.events), default=0)
        if total > span_ns:
            raise FastpathError(f"synth events: these changes take {total / 1e9:.1f} s (grace {self.grace / 1e9:g} s, "
                                f"ready {self.ready / 1e9:g} s); give a span of at least {math.ceil(total / 1e9)} s")
        gap = (span_ns - total) // (len(kinds) + 1)
        for e in self.events:
            e[0] += start_ns + gap * (e[1] + 1)
        self.events.sort(key=lambda e: e[0])
        return self._finish(with_slice_updates(self.objects, [(e[0], e[2], e[3]) for e in self.events]))

    def _workloads(self) -> dict[tuple, list[tuple[str, str]]]:
        out: dict[tuple, list] = {}
        for k, o in self.pods.items():
            if (key := workload_key(o)) is not None:
                out.setdefault(key, []).append(k)
        return out

    def _emit(self, ts: int, etype: str, obj: dict) -> None:
        self.events.append([ts, self.action, etype, copy.deepcopy(obj)])

    def _place(self) -> tuple[str, int]:
        """The least loaded schedulable node (ties drawn at random) and a fresh IP of its podCIDR."""
        while True:
            free = [n for n in self.nodes if n not in self.cordoned and n not in self.full]
            free = [n for n in free if n not in self.tainted] or free
            if not free:
                raise FastpathError("synth events: no schedulable node with a free pod address is left" if self.nodes
                                    else "synth events: the cluster holds no Node to place new pods on")
            least = min(self.per_node[n] for n in free)
            ties = [n for n in free if self.per_node[n] == least]
            node = ties[int(self.rng.integers(len(ties)))]
            if node not in self.addresses:
                self.addresses[node] = self._candidates(node)
            ip = next((ip for ip in self.addresses[node] if ip not in self.used), None)
            if ip is not None:
                self.used.add(ip)
                return node, ip
            self.full.add(node)

    def _candidates(self, node: str) -> Iterator[int]:
        """Addresses for a node's pods: its podCIDRs (bridge), else /26 blocks no address was taken from."""
        cidrs = self.model[node].pod_cidrs if node in self.model else ()
        for net, length in cidrs:
            size = 1 << (32 - length)
            yield from range(net + 2, net + size - 1) if size >= 4 else range(net, net + size)
        while not cidrs and self.next_block < 1 << 32:
            block, self.next_block = self.next_block, self.next_block + 64
            if not any(ip in self.used for ip in range(block, block + 64)):
                yield from range(block, block + 64)

    def _create(self, t: int, like: dict, name: str, labels: dict, owner: dict | None = None,
                generated: bool = True) -> int:
        """A pod like ``like``: ADDED Pending at ``t``, its IP, then Ready. Returns when it is Ready."""
        node, ip = self._place()
        ns = _pkey(like)[0]
        meta = {"name": name, "namespace": ns, "uid": self._uid(), "labels": labels, "creationTimestamp": _LATER}
        if generated:
            meta["generateName"] = name[:-5]
        if like["metadata"].get("ownerReferences"):
            mine = _owner(like)
            meta["ownerReferences"] = [owner if r is mine and owner else r for r in like["metadata"]["ownerReferences"]]
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": {**copy.deepcopy(like.get("spec") or {}), "nodeName": node},
               "status": {"phase": "Pending", "conditions": [_SCHEDULED]}}
        self.names.add((ns, name))
        self._emit(t, "ADDED", obj)
        t += round(self.rng.uniform(*SANDBOX_S) * 1e9)
        host = self.model[node].internal_ip if node in self.model else None
        obj["status"] = {"phase": "Running", "hostIP": None if host is None else _ntoa(host), "podIP": _ntoa(ip),
                         "podIPs": [{"ip": _ntoa(ip)}], "conditions": [_SCHEDULED] + _NOT_READY}
        self._emit(t, "MODIFIED", obj)
        t += self.ready
        obj["status"]["conditions"] = [_SCHEDULED] + _READY
        self._emit(t, "MODIFIED", obj)
        self.pods[(ns, name)] = obj
        self.per_node[node] += 1
        return t

    def _terminate(self, t: int, key: tuple[str, str]) -> int:
        """Pod ``key`` terminating at ``t`` (not Ready), DELETED a grace period later; returns that time."""
        obj = copy.deepcopy(self.pods.pop(key))
        if (node := (obj.get("spec") or {}).get("nodeName")) in self.per_node:
            self.per_node[node] -= 1
        obj["metadata"].update(deletionTimestamp=_LATER, deletionGracePeriodSeconds=round(self.grace / 1e9))
        st = obj.setdefault("status", {})
        st["conditions"] = [c for c in st.get("conditions") or ()
                            if c.get("type") not in ("Ready", "ContainersReady")] + _NOT_READY
        self._emit(t, "MODIFIED", obj)
        self._emit(t + self.grace, "DELETED", obj)
        return t + self.grace

    def _new_name(self, ns: str, prefix: str) -> str:
        name = f"{prefix}-{self._letters(5)}"
        return name if (ns, name) not in self.names else self._new_name(ns, prefix)

    def _letters(self, n: int) -> str:
        return "".join(NAME_ALPHABET[i] for i in self.rng.integers(len(NAME_ALPHABET), size=n).tolist())

    def _uid(self) -> str:
        return str(uuid.UUID(bytes=self.rng.bytes(16), version=4))

    def _rollout(self, t: int, members: list[tuple[str, str]]) -> int:
        """The Deployment controller's rolling update of ``members``; returns when the last new pod is Ready."""
        like = self.pods[members[0]]
        labels, ns, prefix = dict(like["metadata"].get("labels") or {}), _pkey(like)[0], _prefix(like)
        if (old_hash := labels.get(HASH_LABEL)) and prefix.endswith("-" + old_hash):
            prefix = prefix[:-len(old_hash) - 1]
        rs = f"{prefix}-{self._letters(10)}"
        if HASH_LABEL in labels:
            labels[HASH_LABEL] = rs.rpartition("-")[2]
        owner = {**o, "name": rs, "uid": self._uid()} if (o := _owner(like)) and o.get("kind") == "ReplicaSet" else None
        replicas = len(members)
        surge, unavailable = -(-replicas // 4), replicas // 4
        old, new = list(members), []             # new: the times the new pods turn Ready
        while True:
            changed = True
            while changed:
                for _ in range(min(replicas + surge - len(old) - len(new), replicas - len(new))):
                    new.append(self._create(t, like, self._new_name(ns, rs), dict(labels), owner))
                new_unready = sum(r > t for r in new)
                # unready old pods go first (as far as the surge allows), then ready ones down to the minimum
                sick = [k for k in old if not _ready(self.pods[k])]
                sick = sick[:max(len(old) + len(new) - (replicas - unavailable) - new_unready, 0)]
                healthy = sum(_ready(self.pods[k]) for k in old) + len(new) - new_unready
                victims = sick + [k for k in old if k not in sick][:max(healthy - replicas + unavailable, 0)]
                for k in victims:
                    old.remove(k)
                    self._terminate(t, k)
                changed = bool(victims)
            later = [r for r in new if r > t]
            if not later:
                return t
            t = min(later)

    def _scale(self, t: int, members: list[tuple[str, str]]) -> int:
        """Scale a workload up or down by 1 to half its replicas; returns when the new pods are Ready."""
        k = int(self.rng.integers(1, max(1, len(members) // 2) + 1))
        if len(members) < 2 or self.rng.random() < 0.5:
            like = self.pods[members[-1]]
            return max(self._create(t, like, self._new_name(_pkey(like)[0], _prefix(like)),
                                    dict(like["metadata"].get("labels") or {})) for _ in range(k))
        victims = [m for m in members if not _ready(self.pods[m])] + \
            [m for m in reversed(members) if _ready(self.pods[m])]     # unready first, then the newest
        for m in victims[:k]:
            self._terminate(t, m)
        return t

    def _drain(self, t: int) -> int:
        """Cordon a node, evict its pods, replace them elsewhere; returns when the replacements are Ready."""
        free = [n for n in self.nodes if n not in self.cordoned]
        free = [n for n in free if n not in self.tainted] or free
        busy = {n for p in self.pods.values() if _evicted(p, n := (p.get("spec") or {}).get("nodeName"))}
        busy = [n for n in free if n in busy] or free
        node = busy[int(self.rng.integers(len(busy)))]
        obj = self.nodes[node] = copy.deepcopy(self.nodes[node])
        spec = obj.setdefault("spec", {})
        spec["unschedulable"] = True
        spec["taints"] = [x for x in spec.get("taints") or () if x.get("key") != _CORDON_TAINT["key"]] + \
            [dict(_CORDON_TAINT)]
        self.cordoned.add(node)
        self._emit(t, "MODIFIED", obj)
        end = t = t + round(EVICT_S * 1e9)
        for key, pod in self.base_pods.items():    # pods already terminating there: the drain waits for them
            if key not in self.pods and _evicted(pod, node) and pod["metadata"].get("deletionTimestamp"):
                self._emit(t + self.grace, "DELETED", pod)
        for key, pod in [(k, p) for k, p in self.pods.items() if _evicted(p, node)]:
            gone = self._terminate(t, key)
            sts = (_owner(pod) or {}).get("kind") == "StatefulSet"    # its name again, once the old pod is gone
            name = key[1] if sts else self._new_name(key[0], _prefix(pod))
            end = max(end, self._create(gone if sts else t, pod, name, dict(pod["metadata"].get("labels") or {}),
                                        generated=not sts))
        return end

    def _finish(self, events: list[tuple[int, str, dict]]) -> list[dict]:
        """Each object with namespace, labels and uid, its timestamps filled in, and a resourceVersion."""
        created, deleting = {}, {}         # (kind, namespace, name) -> ns
        versions = (o["metadata"].get("resourceVersion") for o in self.objects)
        rv, out = 1 + max((int(v) for v in versions if str(v).isdigit()), default=0), []
        for ts, etype, obj in events:
            obj = copy.deepcopy(obj)
            meta, kind = obj["metadata"], obj["kind"]
            if ns := "" if kind == "Node" else meta.get("namespace") or "default":
                meta["namespace"] = ns
            meta.setdefault("labels", {})
            meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"fastpath:{kind}/{ns}/{meta['name']}")))
            key = (kind, ns, meta["name"])
            if etype == "ADDED":                 # a StatefulSet's pod comes back under its name
                created.pop(key, None)
                deleting.pop(key, None)
            for field, at in (("creationTimestamp", created), ("deletionTimestamp", deleting)):
                if meta.get(field) == _LATER:
                    when = at.setdefault(key, ts if field == "creationTimestamp" else ts + self.grace)
                    meta[field] = datetime.fromtimestamp(when // 10**9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta["resourceVersion"] = str(rv)
            rv += 1
            out.append({"type": etype, "ts": ts, "object": obj})
        return out
