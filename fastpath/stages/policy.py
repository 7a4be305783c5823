"""The NetworkPolicy stage: every connection allowed or ``denied``, a few array reads a flow.

Semantics: ``../shared/spec/kubernetes-dataplane.md`` §6, and ``docs/dataplane.md``
("NetworkPolicy"). The stage runs after kube-proxy (it sees the chosen backend pod and
port, and the source as it arrives, after any masquerade) and before forwarding.

Compilation (once, :func:`compile_policies`), in the manner of Cilium's identities and
policy map:

* **identity classes.** Pods are grouped by (namespace, labels); every selector is
  evaluated once per group (an inverted label index narrows ``matchLabels``). A pod
  gets three small integers: its *ingress subject* class (the set of Ingress policies
  selecting it, with the named ports those policies use resolved on its containers),
  its *egress subject* class (the Egress policies selecting it), and its *peer* class
  (the peer selectors that match it, the ipBlock class of its IP, and the named ports
  egress rules use, resolved on it). Pods no selector tells apart share a class.
  ``-1`` subject: not isolated in that direction.
* **address classes.** Every ipBlock (``cidr`` minus ``except``) cuts the IPv4 space
  into intervals; intervals inside the same blocks share a class. A source or
  destination that is not a pod (a node, a hostNetwork pod, an outside client) is
  looked up here by binary search; a pod's class already holds its IP's.
* **policy map** (:class:`PolicyMap`). Per direction and subject class, a short sorted
  run of keys — a peer class, a whole namespace (``podSelector: {}`` or a
  ``namespaceSelector`` alone: one entry, not one per pod class), an address class —
  each with a *port set*: ranges of ``proto << 16 | port``, each with the policy that
  allows it. A peer class's entry folds in every rule that applies to it (its
  namespace's, its address's, the any-pod and any-peer rules); without one, the
  namespace entry (or the subject's any-pod set) and, where the subject has ipBlock
  rules, the address entry are read. A rule's named ports are resolved per
  destination pod. The kernel reads a subject's run as one 64-byte row
  (:meth:`PolicyMap.rows`: keys, and where each port set's ranges are); a run longer
  than a row, from the sorted CSR form.

Per flow (:mod:`fastpath.stages.policy_kernel`): the destination pod by address, then the
egress check of the source pod and the ingress check of the destination pod, each one
row of the map and a scan of a few ranges. Exempt: a pod to itself, and a pod
and its own node (either way). hostNetwork pods are never selected (they are their
node's address).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cluster.model import PROTO_NAMES, Cluster
from ..cluster.netpol import LabelSelector, NetworkPolicy, Peer, PolicyPort, Rule, namespace_labels
from ..tables.exact import EMPTY
from .policy_kernel import ROW, ROW_KEYS, SCAN, _address_class, _policy_kernel  # noqa: F401 (re-exported)

#: Every port of every protocol, as ``proto << 16 | port`` ranges.
ALL_PORTS = ((6 << 16, (6 << 16) | 0xFFFF), (17 << 16, (17 << 16) | 0xFFFF), (132 << 16, (132 << 16) | 0xFFFF))
#: Per-flow attribution codes besides a policy index (``PolicyStage.last_ingress`` / ``last_egress``).
NOT_ISOLATED, EXEMPT, NO_RULE = -1, -2, -3


# --------------------------------------------------------------------------- selectors

class _Selectors:
    """Selector evaluation over pod label groups, cached, with a per-namespace label index."""

    def __init__(self, group_ns: list[str], group_labels: list[dict], ns_labels: dict[str, dict]) -> None:
        self.group_labels = group_labels
        self.ns_labels = ns_labels
        self.by_ns: dict[str, list[int]] = {}
        for g, ns in enumerate(group_ns):
            self.by_ns.setdefault(ns, []).append(g)
        self._index: dict[str, dict[tuple[str, str], list[int]]] = {}
        self._pods: dict[tuple[str, LabelSelector], tuple[int, ...]] = {}
        self._ns: dict[LabelSelector, tuple[str, ...]] = {}
        self._peer: dict[tuple, tuple[int, ...]] = {}

    def _idx(self, ns: str) -> dict[tuple[str, str], list[int]]:
        idx = self._index.get(ns)
        if idx is None:
            idx = self._index[ns] = {}
            for g in self.by_ns.get(ns, ()):
                for kv in self.group_labels[g].items():
                    idx.setdefault(kv, []).append(g)
        return idx

    def pods(self, ns: str, sel: LabelSelector) -> tuple[int, ...]:
        """Label groups of namespace ``ns`` that ``sel`` selects."""
        key = (ns, sel)
        hit = self._pods.get(key)
        if hit is not None:
            return hit
        if sel.match_labels:
            idx = self._idx(ns)
            lists = [idx.get(kv, ()) for kv in sel.match_labels]
            cand = min(lists, key=len)
        else:
            cand = self.by_ns.get(ns, ())
        labels = self.group_labels
        out = tuple(g for g in cand if sel.matches(labels[g]))
        self._pods[key] = out
        return out

    def namespaces(self, sel: LabelSelector) -> tuple[str, ...]:
        hit = self._ns.get(sel)
        if hit is None:
            hit = self._ns[sel] = tuple(n for n, lab in self.ns_labels.items() if sel.matches(lab))
        return hit

    def peer(self, policy_ns: str, peer: Peer) -> tuple[int, ...]:
        """Label groups a selector peer matches (never called for ipBlock peers)."""
        key = (policy_ns if peer.namespace_selector is None else None, peer.pod_selector, peer.namespace_selector)
        hit = self._peer.get(key)
        if hit is not None:
            return hit
        ps = peer.pod_selector or LabelSelector()
        if peer.namespace_selector is None:
            out = self.pods(policy_ns, ps)
        else:
            out = tuple(g for ns in self.namespaces(peer.namespace_selector) for g in self.pods(ns, ps))
        self._peer[key] = out
        return out


def _all_pods(peer: Peer) -> bool:
    """A peer matching every pod of every namespace (``namespaceSelector: {}``, no or empty podSelector)."""
    return (peer.namespace_selector is not None and peer.namespace_selector.empty
            and (peer.pod_selector is None or peer.pod_selector.empty))


def resolve_named(ports, name: str, proto: int) -> list[int]:
    """Port numbers a pod's containers declare under ``name`` for ``proto``."""
    return [cp.port for cp in ports if cp.name == name and cp.proto == proto]


def _ranges(pp: tuple[PolicyPort, ...] | None, ports) -> list[tuple[int, int]]:
    """A rule's ports as ``proto << 16 | port`` ranges; names resolved on ``ports`` (None: no pod, no names)."""
    if pp is None:
        return list(ALL_PORTS)
    out = []
    for p in pp:
        base = p.proto << 16
        if p.port is None:
            out.append((base, base | 0xFFFF))
        elif isinstance(p.port, str):
            if ports is not None:
                out += [(base | n, base | n) for n in resolve_named(ports, p.port, p.proto)]
        else:
            out.append((base | p.port, base | (p.end_port if p.end_port is not None else p.port)))
    return out


def _has_names(rule: Rule) -> bool:
    return rule.ports is not None and any(isinstance(p.port, str) for p in rule.ports)


# --------------------------------------------------------------------------- address classes

def _address_classes(blocks: list) -> tuple[np.ndarray, np.ndarray, list[frozenset]]:
    """Interval starts (uint32, first 0), their class, and each class's set of block indices."""
    bounds = {0}
    for b in blocks:
        if b.cidr is None:
            continue
        for net, length in (b.cidr,) + b.excepts:
            bounds.add(net)
            end = net + (1 << (32 - length))
            if end < 1 << 32:
                bounds.add(end)
    starts = np.array(sorted(bounds), dtype=np.uint64)
    member = [set() for _ in range(starts.size)]
    for k, b in enumerate(blocks):
        if b.cidr is None:
            continue
        inside = np.zeros(starts.size, dtype=bool)
        net, length = b.cidr
        lo, hi = np.searchsorted(starts, [net, net + (1 << (32 - length))])
        inside[lo:hi] = True
        for en, el in b.excepts:
            lo, hi = np.searchsorted(starts, [en, en + (1 << (32 - el))])
            inside[lo:hi] = False
        for i in np.flatnonzero(inside).tolist():
            member[i].add(k)
    classes: dict[frozenset, int] = {}
    cls = np.empty(starts.size, dtype=np.int32)
    for i, m in enumerate(member):
        cls[i] = classes.setdefault(frozenset(m), len(classes))
    return starts.astype(np.uint32), cls, list(classes)


# --------------------------------------------------------------------------- compiled stage

@dataclass
class PolicyTables:
    """The compiled policy stage (see the module docstring)."""

    policies: list[NetworkPolicy]
    pod_rec: np.ndarray          #: int32[4 * (P + 1)]: ingress subject, egress subject, peer class, namespace
                                 #: (-1: none); then a blank record (all -1), read for a flow without a pod
    peer_addr: np.ndarray        #: int32[peer classes]: the address class of the class's pods
    n_peer: int                  #: peer classes (keys below this are peer classes)
    n_ns: int                    #: namespaces: key ``n_peer + ns`` is a whole namespace
    ingress: "PolicyMap"         #: (subject, key) -> port set (key: peer class, namespace, address class)
    egress: "PolicyMap"
    fallback_in: np.ndarray      #: int32[2 * S_in]: port set for a peer without entry (even: not a pod, odd: a pod)
    fallback_eg: np.ndarray
    addr_in: np.ndarray          #: bool[S_in]: the subject has address-class entries (ipBlock rules)
    addr_eg: np.ndarray
    in_rows: np.ndarray          #: int32[S_in + 1, ROW]: :meth:`PolicyMap.rows` of ``ingress``
    eg_rows: np.ndarray          #: int32[S_eg + 1, ROW]
    ps_off: np.ndarray           #: int64[sets + 1]: CSR offsets into the ranges
    ps_lo: np.ndarray            #: uint32 range starts (proto << 16 | port)
    ps_hi: np.ndarray            #: uint32 range ends (inclusive)
    ps_pol: np.ndarray           #: int32 policy allowing the range
    addr_start: np.ndarray       #: uint32 interval starts
    addr_cls: np.ndarray         #: int32 interval class
    ingress_subjects: list[tuple[int, ...]]   #: policies of each ingress subject class
    egress_subjects: list[tuple[int, ...]]
    blocks: list                 #: distinct ipBlocks, by index

    @property
    def addr_base(self) -> int:
        """Key of address class 0."""
        return self.n_peer + self.n_ns

    def describe(self) -> dict:
        return {"policies": len(self.policies), "ingress_classes": len(self.ingress_subjects),
                "egress_classes": len(self.egress_subjects), "peer_classes": self.n_peer,
                "address_classes": int(self.addr_cls.max(initial=-1)) + 1,
                "ingress_entries": len(self.ingress), "egress_entries": len(self.egress),
                "port_ranges": int(self.ps_lo.size)}


@dataclass(frozen=True)
class PolicyMap:
    """One direction's policy map: per subject class, its entries sorted by key (CSR).

    Keys: a peer class (``< n_peer``), ``n_peer + namespace`` (a whole namespace),
    ``n_peer + n_ns + address class``. A subject has a handful of entries, read as one
    short run (binary search beyond :data:`SCAN`).
    """

    off: np.ndarray              #: int64[subjects + 1]
    key: np.ndarray              #: uint32[entries], sorted within each subject
    ps: np.ndarray               #: int32[entries]: the port set

    def __len__(self) -> int:
        return int(self.key.shape[0])

    @classmethod
    def build(cls, subjects: int, entries: list[tuple[int, int, int]]) -> "PolicyMap":
        """From (subject, key, port set) triples, each (subject, key) once."""
        a = np.array(entries, dtype=np.int64).reshape(-1, 3)
        order = np.lexsort((a[:, 1], a[:, 0]))
        a = a[order]
        off = np.searchsorted(a[:, 0], np.arange(subjects + 1)).astype(np.int64)
        return cls(off, a[:, 1].astype(np.uint32), a[:, 2].astype(np.int32))

    def rows(self, fallback: np.ndarray, ps_off: np.ndarray) -> np.ndarray:
        """The map as one 64-byte row a subject, plus a blank row (the kernel's fast path).

        Row ``s``: up to :data:`~fastpath.stages.policy_kernel.ROW_KEYS` keys (-2 unused),
        their port sets, then the fallback sets ``fallback[2s]`` (-1 where the subject's
        run does not fit a row: the kernel reads the CSR run) and ``fallback[2s + 1]``.
        A port set is written as where its ranges are, ``first range << 8 | count``
        (0: the empty set), so the kernel reads its ranges with no lookup in between.
        The last row is blank (no key, empty fallbacks).
        """
        subjects = self.off.shape[0] - 1
        count = np.diff(ps_off)
        fits = (count < 256) & (ps_off[:-1] < (1 << 23))
        packed = np.where(fits, (ps_off[:-1] << 8) | count, 0).astype(np.int32)
        runs = np.diff(self.off)
        subj = np.repeat(np.arange(subjects), runs)
        long = runs > ROW_KEYS
        long[subj[~fits[self.ps]]] = True
        long |= ~fits[fallback[0::2]] | ~fits[fallback[1::2]]
        out = np.full((subjects + 1, ROW), -2, dtype=np.int32)
        out[:, ROW_KEYS:] = 0
        pos = np.arange(self.key.shape[0]) - np.repeat(self.off[:-1], runs)
        ok = ~long[subj]
        out[subj[ok], pos[ok]] = self.key[ok].astype(np.int32)
        out[subj[ok], ROW_KEYS + pos[ok]] = packed[self.ps[ok]]
        out[:subjects, 2 * ROW_KEYS] = np.where(long, -1, packed[fallback[0::2]])
        out[:subjects, 2 * ROW_KEYS + 1] = packed[fallback[1::2]]
        return out


class _PortSets:
    """Interned port sets: tuples of (lo, hi, policy) ranges, in policy order."""

    def __init__(self) -> None:
        self.ids: dict[tuple, int] = {(): 0}
        self.sets: list[tuple] = [()]

    def add(self, ranges) -> int:
        if not ranges:
            return 0
        key = tuple(sorted(set(ranges), key=_range_order))
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.sets)
            self.sets.append(key)
        return i

    def arrays(self):
        off = np.zeros(len(self.sets) + 1, dtype=np.int64)
        off[1:] = np.cumsum([len(s) for s in self.sets])
        flat = [r for s in self.sets for r in s]
        lo = np.array([r[0] for r in flat], dtype=np.uint32)
        hi = np.array([r[1] for r in flat], dtype=np.uint32)
        pol = np.array([r[2] for r in flat], dtype=np.int32)
        return off, lo, hi, pol


def _range_order(r):
    return (r[2], r[0], r[1])


def _peer_key(pol: NetworkPolicy, q: Peer) -> tuple:
    return (pol.namespace if q.namespace_selector is None else None, q.pod_selector, q.namespace_selector)


def _ns_wide(q: Peer) -> bool:
    """A selector peer that takes whole namespaces (no or an empty podSelector)."""
    return q.ip_block is None and (q.pod_selector is None or q.pod_selector.empty) and not _all_pods(q)


def compile_policies(cluster: Cluster, tables) -> PolicyTables | None:
    """Compile ``cluster.policies`` against the forwarding tables' pods; None without policies.

    ``tables`` is the :class:`~fastpath.cluster.compile.ForwardingTables` of the same
    cluster (pod and namespace indices are shared).
    """
    policies = list(getattr(cluster, "policies", None) or ())
    if not policies:
        return None
    pods = cluster.pods
    n_pods = len(pods)
    bridged = np.zeros(n_pods, dtype=bool)
    if n_pods:
        vals = tables.pod_by_ip.values[tables.pod_by_ip.slots != EMPTY]
        bridged[vals] = True
    ns_index = {n: i for i, n in enumerate(tables.ns_names)}
    pod_ns = tables.pod_ns
    # label groups: pods of one namespace with the same labels
    group_of: dict[tuple, int] = {}
    group_ns: list[str] = []
    group_labels: list[dict] = []
    pod_group = np.full(n_pods, -1, dtype=np.int64)
    rows = np.flatnonzero(bridged)
    keys = [(p.namespace, tuple(sorted(p.labels.items()))) for p in map(pods.__getitem__, rows.tolist())]
    groups = []
    for i, key in zip(rows.tolist(), keys):
        g = group_of.get(key)
        if g is None:
            g = group_of[key] = len(group_ns)
            group_ns.append(key[0])
            group_labels.append(pods[i].labels)
        groups.append(g)
    pod_group[rows] = groups
    ns_labels = namespace_labels(cluster)
    sel = _Selectors(group_ns, group_labels, ns_labels)
    n_groups = len(group_ns)
    n_ns = len(tables.ns_names)

    # policies selecting each group, per direction
    ing_of: list[list[int]] = [[] for _ in range(n_groups)]
    eg_of: list[list[int]] = [[] for _ in range(n_groups)]
    for k, pol in enumerate(policies):
        for g in sel.pods(pol.namespace, pol.pod_selector):
            if pol.affects_ingress:
                ing_of[g].append(k)
            if pol.affects_egress:
                eg_of[g].append(k)

    # distinct specific peers (a podSelector that picks pods), namespace-wide peers, ipBlocks
    peer_id: dict[tuple, int] = {}
    peer_groups: list[tuple[int, ...]] = []
    wide_ns: dict[tuple, tuple[int, ...]] = {}
    block_id: dict = {}
    blocks: list = []
    egress_names: set[tuple[str, int]] = set()
    for pol in policies:
        for direction, rules in (("in", pol.ingress), ("eg", pol.egress)):
            for r in rules:
                if direction == "eg" and r.ports is not None:
                    egress_names.update((p.port, p.proto) for p in r.ports if isinstance(p.port, str))
                for q in r.peers or ():
                    if q.ip_block is not None:
                        if q.ip_block not in block_id:
                            block_id[q.ip_block] = len(blocks)
                            blocks.append(q.ip_block)
                    elif _all_pods(q):
                        continue
                    elif _ns_wide(q):
                        key = _peer_key(pol, q)
                        if key not in wide_ns:
                            names = (pol.namespace,) if q.namespace_selector is None else \
                                sel.namespaces(q.namespace_selector)
                            wide_ns[key] = tuple(ns_index[n] for n in names if n in ns_index)
                    else:
                        key = _peer_key(pol, q)
                        if key not in peer_id:
                            peer_id[key] = len(peer_groups)
                            peer_groups.append(sel.peer(pol.namespace, q))
    group_peers: list[list[int]] = [[] for _ in range(n_groups)]
    for q, gs in enumerate(peer_groups):
        for g in gs:
            group_peers[g].append(q)
    addr_start, addr_cls, addr_members = _address_classes(blocks)
    pod_addr = np.zeros(n_pods, dtype=np.int64)
    if n_pods:
        pod_addr = addr_cls[np.searchsorted(addr_start, tables.pod_ip, side="right") - 1].astype(np.int64)
    names = sorted(egress_names)

    # classes (one computation per group, ports tuple and address class)
    pod_rec = np.full((n_pods, 4), -1, dtype=np.int32)
    pod_rec[:, 3] = pod_ns
    in_class: dict[tuple, int] = {}
    eg_class: dict[tuple, int] = {}
    peer_class: dict[tuple, int] = {}
    in_rep: list[int] = []         # a representative pod per class
    eg_rep: list[int] = []
    peer_rep: list[int] = []
    in_names: dict[tuple, bool] = {}
    done: dict[tuple, tuple[int, int, int]] = {}
    triples = []
    for i, g, a in zip(rows.tolist(), pod_group[rows].tolist(), pod_addr[rows].tolist()):
        ports = pods[i].ports
        memo = (g, id(ports), a)
        hit = done.get(memo)
        if hit is not None:
            triples.append(hit)
            continue
        ci = ce = -1
        ing = tuple(ing_of[g])
        if ing:
            uses = in_names.get(ing)
            if uses is None:
                uses = in_names[ing] = any(_has_names(r) for k in ing for r in policies[k].ingress)
            key = (ing, id(ports) if uses else 0)
            ci = in_class.get(key)
            if ci is None:
                ci = in_class[key] = len(in_rep)
                in_rep.append(i)
        eg = tuple(eg_of[g])
        if eg:
            ce = eg_class.get(eg)
            if ce is None:
                ce = eg_class[eg] = len(eg_rep)
                eg_rep.append(i)
        res = tuple(tuple(resolve_named(ports, n, pr)) for n, pr in names) if names else ()
        key = (int(pod_ns[i]), tuple(group_peers[g]), a, res)
        cp = peer_class.get(key)
        if cp is None:
            cp = peer_class[key] = len(peer_rep)
            peer_rep.append(i)
        done[memo] = (ci, ce, cp)
        triples.append(done[memo])
    if rows.size:
        pod_rec[rows, :3] = np.array(triples, dtype=np.int32)
    n_peer = len(peer_rep)
    peer_keys = list(peer_class)
    peer_addr = np.array([k[2] for k in peer_keys], dtype=np.int32)
    addr_base = n_peer + n_ns

    # which peer classes each specific peer reaches; peer classes by namespace
    pcs_of_peer: list[list[int]] = [[] for _ in peer_groups]
    pcs_of_ns: list[list[int]] = [[] for _ in range(n_ns)]
    acs_of_block: list[list[int]] = [[] for _ in blocks]
    for a, members in enumerate(addr_members):
        for b in members:
            acs_of_block[b].append(a)
    for c, (ns, qs, _a, _res) in enumerate(peer_keys):
        pcs_of_ns[ns].append(c)
        for q in qs:
            pcs_of_peer[q].append(c)

    psets = _PortSets()

    def build(subjects: list[tuple[int, ...]], reps: list[int], egress: bool):
        entries: list[tuple[int, int, int]] = []
        fallback = np.zeros(2 * len(subjects), dtype=np.int32)
        has_addr = np.zeros(len(subjects), dtype=bool)
        for s, pols in enumerate(subjects):
            any_r: list = []                    # every peer
            pod_r: list = []                    # every pod
            ent: dict[int, list] = {}           # peer class -> ranges
            wide: dict[int, list] = {}          # namespace -> ranges
            addr: dict[int, list] = {}          # address class -> ranges
            subj_ports = None if egress else pods[reps[s]].ports
            for k in pols:
                pol = policies[k]
                for r in (pol.egress if egress else pol.ingress):
                    named = egress and _has_names(r)
                    rng = [(lo, hi, k) for lo, hi in _ranges(r.ports, subj_ports)]
                    targets: list[int] | tuple = ()
                    if r.peers is None:
                        any_r += rng
                        if named:
                            targets = range(n_peer)
                    else:
                        for q in r.peers:
                            if q.ip_block is not None:
                                for a in acs_of_block[block_id[q.ip_block]]:
                                    addr.setdefault(a, []).extend(rng)
                                if named:               # a pod in the block, by its resolved names
                                    b = block_id[q.ip_block]
                                    targets = [c for c in range(n_peer) if b in addr_members[peer_keys[c][2]]]
                                else:
                                    continue
                            elif _all_pods(q):
                                if not named:
                                    pod_r += rng
                                    continue
                                targets = range(n_peer)
                            elif _ns_wide(q):
                                spaces = wide_ns[_peer_key(pol, q)]
                                if not named:
                                    for n in spaces:
                                        wide.setdefault(n, []).extend(rng)
                                    continue
                                targets = [c for n in spaces for c in pcs_of_ns[n]]
                            else:
                                targets = pcs_of_peer[peer_id[_peer_key(pol, q)]]
                            for c in targets:
                                if named:               # names resolve on the destination pod
                                    ent.setdefault(c, []).extend(
                                        (lo, hi, k) for lo, hi in _ranges(r.ports, pods[peer_rep[c]].ports))
                                else:
                                    ent.setdefault(c, []).extend(rng)
                            targets = ()
                    for c in targets:                   # every peer, with names: per pod class
                        ent.setdefault(c, []).extend(
                            (lo, hi, k) for lo, hi in _ranges(r.ports, pods[peer_rep[c]].ports))
            base_pod = any_r + pod_r
            fallback[2 * s] = psets.add(any_r)
            fallback[2 * s + 1] = psets.add(base_pod)
            has_addr[s] = bool(addr)
            for c, rs in ent.items():           # a pod class: everything that applies to it
                _ns, _qs, a, _res = peer_keys[c]
                entries.append((s, c, psets.add(rs + wide.get(_ns, []) + addr.get(a, []) + base_pod)))
            for n, rs in wide.items():
                entries.append((s, n_peer + n, psets.add(rs + base_pod)))
            for a, rs in addr.items():
                entries.append((s, addr_base + a, psets.add(rs + any_r)))
        return PolicyMap.build(len(subjects), entries), fallback, has_addr

    in_subjects = [k[0] for k in in_class]
    eg_subjects = list(eg_class)
    t_in, fb_in, ad_in = build(in_subjects, in_rep, False)
    t_eg, fb_eg, ad_eg = build(eg_subjects, eg_rep, True)
    off, lo, hi, pol = psets.arrays()
    pod_rec = np.concatenate([pod_rec.reshape(-1), np.full(4, -1, dtype=np.int32)])
    return PolicyTables(policies=policies, pod_rec=pod_rec, peer_addr=peer_addr,
                        n_peer=n_peer, n_ns=n_ns, ingress=t_in, egress=t_eg, fallback_in=fb_in, fallback_eg=fb_eg,
                        addr_in=ad_in, addr_eg=ad_eg, in_rows=t_in.rows(fb_in, off),
                        eg_rows=t_eg.rows(fb_eg, off), ps_off=off, ps_lo=lo, ps_hi=hi, ps_pol=pol,
                        addr_start=addr_start, addr_cls=addr_cls, ingress_subjects=in_subjects,
                        egress_subjects=eg_subjects, blocks=blocks)


class PolicyStage:
    """The compiled tables plus the per-batch entry point and allow counters."""

    def __init__(self, tables: PolicyTables, fwd) -> None:
        self.t = tables
        self.fwd = fwd                          #: the cluster's ForwardingTables
        n = len(tables.policies)
        #: Flows each policy allowed (ingress + egress) since the last :meth:`reset`, counted
        #: while ``counting`` is on (replay's summary turns it on).
        self.allowed = np.zeros(n, dtype=np.int64)
        self.counting = False
        self.last_ingress = np.zeros(0, dtype=np.int32)
        self.last_egress = np.zeros(0, dtype=np.int32)

    @classmethod
    def build(cls, cluster: Cluster, fwd) -> "PolicyStage | None":
        """The stage for ``cluster``, or None when it has no NetworkPolicy (the stage is skipped)."""
        t = compile_policies(cluster, fwd)
        return None if t is None else cls(t, fwd)

    def reset(self) -> None:
        self.allowed[:] = 0

    def run(self, src_ip, proto, src_pod, dnat_ip, dnat_port, snat_ip, verdict, reason, dst_pod, dst_node,
            chunk: int = 8192) -> None:
        """Decide the pending flows of one batch, in place (see :func:`_policy_kernel`)."""
        n = src_ip.shape[0]
        if self.last_ingress.shape[0] < n:
            self.last_ingress = np.empty(n, dtype=np.int32)
            self.last_egress = np.empty(n, dtype=np.int32)
        li, le = self.last_ingress[:n], self.last_egress[:n]
        t, f = self.t, self.fwd
        _policy_kernel(src_ip, proto, src_pod, dnat_ip, dnat_port, snat_ip,
                       f.pod_by_ip.slots, f.node_by_ip.slots, f.pod_node, t.pod_rec, t.peer_addr,
                       np.int64(t.n_peer), np.int64(t.addr_base),
                       t.in_rows, t.eg_rows, t.ingress.off, t.ingress.key, t.ingress.ps,
                       t.egress.off, t.egress.key, t.egress.ps,
                       t.fallback_in, t.fallback_eg, t.addr_in, t.addr_eg,
                       t.ps_off, t.ps_lo, t.ps_hi, t.ps_pol, t.addr_start, t.addr_cls,
                       verdict, reason, dst_pod, dst_node, li, le, np.int64(chunk))
        if not self.counting:
            return
        npol = self.allowed.shape[0]
        self.allowed += np.bincount(li.astype(np.intp) + 3, minlength=npol + 3)[3:]
        self.allowed += np.bincount(le.astype(np.intp) + 3, minlength=npol + 3)[3:]


# --------------------------------------------------------------------------- explain

def _peer_text(peer: Peer) -> str:
    if peer.ip_block is not None:
        b = peer.ip_block
        if b.cidr is None:
            return "ipBlock (IPv6)"
        from ..addr import format_cidr
        ex = "".join(f" except {format_cidr(*e)}" for e in b.excepts)
        return f"ipBlock {format_cidr(*b.cidr)}{ex}"
    parts = []
    if peer.namespace_selector is not None:
        parts.append(f"namespaceSelector {peer.namespace_selector}")
    if peer.pod_selector is not None:
        parts.append(f"podSelector {peer.pod_selector}")
    return " and ".join(parts)


def _port_ok(pp: PolicyPort, proto: int, port: int, dst_ports) -> bool:
    if pp.proto != proto:
        return False
    if pp.port is None:
        return True
    if isinstance(pp.port, str):
        return dst_ports is not None and port in resolve_named(dst_ports, pp.port, proto)
    return pp.port <= port <= (pp.end_port if pp.end_port is not None else pp.port)


def _which_rule(pol: NetworkPolicy, egress: bool, peer_pod, peer_ip: int, proto: int, port: int, dst_ports,
                ns_labels: dict) -> str | None:
    """The first rule of ``pol`` that allows the connection, described; None if none does."""
    rules = pol.egress if egress else pol.ingress
    field_ = "egress" if egress else "ingress"
    for i, r in enumerate(rules):
        peer_at = None
        if r.peers is None:
            peer_at = "every peer"
        else:
            for k, q in enumerate(r.peers):
                if q.ip_block is not None:
                    ok = q.ip_block.contains(peer_ip)
                elif peer_pod is None:
                    ok = False
                else:
                    ns_ok = (peer_pod.namespace == pol.namespace if q.namespace_selector is None
                             else q.namespace_selector.matches(ns_labels.get(peer_pod.namespace, {})))
                    ok = ns_ok and (q.pod_selector is None or q.pod_selector.matches(peer_pod.labels))
                if ok:
                    peer_at = f"{'to' if egress else 'from'}[{k}] {_peer_text(q)}"
                    break
        if peer_at is None:
            continue
        if r.ports is None:
            return f"{field_}[{i}] ({peer_at}, every port)"
        for k, pp in enumerate(r.ports):
            if _port_ok(pp, proto, port, dst_ports):
                return f"{field_}[{i}] ({peer_at}, ports[{k}] {pp})"
    return None


def explain_policy(dp, src_ip: int, proto: int, r, row: int = 0) -> list[str]:
    """The policy stage's part of ``fastpath explain`` for row ``row`` of results ``r``.

    ``src_ip`` and ``proto`` are the flow's (the results hold the rest: the source pod,
    the destination and port after kube-proxy, the source after masquerade).

    Which policies select the source (egress) and the destination (ingress), and which
    rule allowed the connection, or that the pod is isolated and no rule allowed it.
    """
    stage = dp.policy
    if stage is None:
        return []
    t, f = stage.t, dp.tables
    pods = dp.cluster.pods
    ns_labels = namespace_labels(dp.cluster)
    sp = int(r.src_pod[row])
    d_ip = int(r.dnat_ip[row])
    seen = int(r.snat_ip[row])
    port = int(r.dnat_port[row])
    dp_ = int(f.pod_by_ip.get(d_ip))
    lines: list[str] = []
    name = f.pod_names
    pkt = f"{PROTO_NAMES.get(proto, str(proto)).lower()}/{port}"
    if sp >= 0 and sp == dp_:
        return [f"pod {name[sp]} to itself: always allowed"]
    if sp >= 0:
        s = int(t.pod_rec[4 * sp + 1])
        if s < 0:
            lines.append(f"egress: no Egress policy selects pod {name[sp]}: not isolated, allowed")
        else:
            pols = t.egress_subjects[s]
            lines.append(f"egress: pod {name[sp]} is selected by {', '.join(t.policies[k].key for k in pols)} "
                         f"(isolated for egress)")
            node_of = int(f.node_by_ip.get(d_ip))
            if dp_ < 0 and node_of >= 0 and node_of == int(f.pod_node[sp]):
                lines.append(f"egress: {_ip(d_ip)} is the pod's own node: always allowed")
            else:
                peer = pods[dp_] if dp_ >= 0 else None
                for k in pols:
                    why = _which_rule(t.policies[k], True, peer, d_ip, proto, port,
                                      peer.ports if peer is not None else None, ns_labels)
                    if why:
                        lines.append(f"egress: allowed by {t.policies[k].key} {why}")
                        break
                else:
                    to = f"pod {name[dp_]}" if dp_ >= 0 else _ip(d_ip)
                    lines.append(f"egress: no rule of those policies allows {pkt} to {to}: denied (policy-egress)")
                    return lines
    if dp_ < 0:
        if sp < 0:
            lines.append("no pod at either end: no policy applies")
        return lines
    s = int(t.pod_rec[4 * dp_])
    if s < 0:
        lines.append(f"ingress: no Ingress policy selects pod {name[dp_]}: not isolated, allowed")
        return lines
    pols = t.ingress_subjects[s]
    lines.append(f"ingress: pod {name[dp_]} is selected by {', '.join(t.policies[k].key for k in pols)} "
                 f"(isolated for ingress)")
    q = sp if seen == src_ip else int(f.pod_by_ip.get(seen))
    if q < 0 and int(f.node_by_ip.get(seen)) == int(f.pod_node[dp_]) >= 0:
        lines.append(f"ingress: the source {_ip(seen)} is the pod's own node: always allowed")
        return lines
    who = f"pod {name[q]}" if q >= 0 else _ip(seen)
    if seen != src_ip:
        who += " (the source after masquerade)"
    for k in pols:
        why = _which_rule(t.policies[k], False, pods[q] if q >= 0 else None, seen, proto, port, pods[dp_].ports,
                          ns_labels)
        if why:
            lines.append(f"ingress: allowed by {t.policies[k].key} {why} for {who}")
            return lines
    lines.append(f"ingress: no rule of those policies allows {pkt} from {who}: denied (policy-ingress)")
    return lines


def _ip(v: int) -> str:
    from ..addr import int_to_ip
    return int_to_ip(v)


# --------------------------------------------------------------------------- summary

from .policy_summary import (PolicyTally, isolated_without_ingress, policy_tally,  # noqa: E402,F401
                             render_policy_summary)
