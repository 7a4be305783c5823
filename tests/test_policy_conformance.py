"""NetworkPolicy conformance: netpol-analyzer's expected connectivity lists, replayed.

Every case under ``../shared/data/netpol-conformance/`` (np-guard/netpol-analyzer's
inputs and expected ``list`` outputs; format in its README) is loaded, its workloads
expanded to pods (``--expand-workloads``: one pod per workload is what the lists
speak of), and every workload pair x protocol x port replayed through the whole
data path (kube-proxy, the policy stage, forwarding), plus every external address
range the README's atoms cut, both ways. A connection is allowed when its verdict is
not ``denied``. The allowed sets are rendered in the analyzer's format and compared
line by line with its expected list.

Ports: a flow per port of 1-65535 would be 196,605 flows a pair; instead every port
at which some rule's port range, ``endPort`` or some pod's container port (named
ports) starts or ends is tried. The policy verdict is constant between those cuts,
so the first port of each interval stands for it exactly.

Cases where fastpath's documented semantics (spec §6: ``ipBlock`` matches pod IPs as
Calico does; hostNetwork pods are never selected and are their node's address) differ
from the analyzer's are listed in :data:`DIFFERENT` with the reason; for them the test
checks that every differing line is one the reason explains.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastpath.addr import int_to_ip
from fastpath.cluster.load import cluster_from_objects, read_objects
from fastpath.cluster.workloads import WORKLOAD_KINDS, expand_workloads
from fastpath.codes import DENIED
from fastpath.pipeline import DataPlane
from fastpath.traces import normalize_batch

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "netpol-conformance"
PROTOS = (("TCP", 6), ("UDP", 17), ("SCTP", 132))

#: Cases whose expected list fastpath's semantics change, and why (README "How
#: netpol-analyzer's model differs"). The check for these: every line that differs
#: involves a hostNetwork workload or an ipBlock-allowed pod pair (see _explained).
DIFFERENT = {
    "ipblockstest": "hostNetwork workloads are their node's address, never selected (analyzer: ordinary pods)",
    "ipblockstest_2": "hostNetwork workloads are their node's address; ipBlock peers match pod IPs (Calico)",
    "ipblockstest_3": "hostNetwork workloads are their node's address; ipBlock peers match pod IPs (Calico)",
    "multiple_topology_resources_1": "hostNetwork workloads are their node's address, never selected",
    "multiple_topology_resources_2": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-new1": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-new1a": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-new2": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-new3": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-old1": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-old2": "hostNetwork workloads are their node's address, never selected",
    "semanticDiff-same-topologies-old3": "hostNetwork workloads are their node's address, never selected",
    "ipblockstest_4": "hostNetwork workloads are their node's address, never selected (their egress is open); "
                      "an external range inside 127.0.0.0/8 is the pod's own loopback, always allowed",
    "semanticDiff-different-topologies-policy-a-with-ipblock": "ipBlock peers match pod IPs (Calico)",
    "semanticDiff-different-topologies-policy-b-with-ipblock": "ipBlock peers match pod IPs (Calico)",
}


#: Cases whose input the API server would reject, repaired the way the analyzer reads them:
#: a port entry without ``containerPort`` (``containerport:`` misspelt) is left out
#: (fastpath's loader rejects it with a one-line error, as the API server does).
REPAIRED = {
    "netpol_named_port_test": "container port 'udps' has 'containerport' (misspelt), no containerPort",
    "netpol_named_port_test_2": "container port 'udps' has 'containerport' (misspelt), no containerPort",
}


def _cases() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir() if (p / "expected_connlist.txt").is_file())


pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"conformance corpus not present at {CORPUS}")


# --------------------------------------------------------------------------- the case as a cluster

def _objects(case: Path) -> list[dict]:
    out = []
    for f in sorted(case.rglob("*")):
        if f.is_file() and f.suffix.lower() in (".yaml", ".yml", ".json") and f.name != "expected_connlist.txt":
            for obj in read_objects(f):
                out.extend(_flat(obj))
    return out


def _flat(obj) -> list[dict]:
    if not isinstance(obj, dict):
        return []
    kind = obj.get("kind") or ""
    if kind.endswith("List") and isinstance(obj.get("items"), list):
        out = []
        for it in obj["items"]:
            if isinstance(it, dict) and "kind" not in it and kind != "List":
                it = {**it, "kind": kind[:-4]}
            out.extend(_flat(it))
        return out
    return [obj]


def _repaired(spec: dict) -> dict:
    """Container port entries without ``containerPort`` left out (see :data:`REPAIRED`)."""
    out = dict(spec)
    out["containers"] = [{**c, "ports": [p for p in c.get("ports") or () if "containerPort" in p]}
                         for c in spec.get("containers") or ()]
    return out


def _repaired_workload(obj: dict) -> dict:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        return obj
    tmpl = spec.get("template") or {}
    return {**obj, "spec": {**spec, "template": {**tmpl, "spec": _repaired(tmpl.get("spec") or {})}}}


def case_cluster(case: Path):
    """The case's cluster with one workload per analyzer peer, expanded; and pod -> peer name."""
    keep, peers, rename = [], set(), {}
    pods: dict[tuple[str, str, str], dict] = {}
    for obj in _objects(case):
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        if kind in ("NetworkPolicy", "Namespace"):
            keep.append(obj)
        elif kind in WORKLOAD_KINDS:
            if (ns, meta["name"], kind) not in peers:
                peers.add((ns, meta["name"], kind))
                keep.append(_repaired_workload(obj))
        elif kind == "Pod":
            owner = next((o for o in meta.get("ownerReferences") or ()
                          if o.get("controller") and o.get("kind") != "Node"), None)
            okind, oname = (owner.get("kind") or "Pod", owner["name"]) if owner else ("Pod", meta["name"])
            pods.setdefault((ns, oname, okind), obj)
    for (ns, oname, okind), pod in pods.items():
        if (ns, oname, okind) in peers:
            continue
        peers.add((ns, oname, okind))
        kind = okind if okind in WORKLOAD_KINDS and okind != "DaemonSet" else "ReplicaSet"
        name = oname if kind == okind else f"x-{okind.lower()}-{oname}"
        rename[f"{ns}/{name}[{kind}]"] = f"{ns}/{oname}[{okind}]"
        spec = _repaired(pod.get("spec") or {})
        keep.append({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns},
                     "spec": {"replicas": 1, "template": {
                         "metadata": {"labels": (pod.get("metadata") or {}).get("labels") or {}},
                         "spec": {"containers": spec.get("containers") or [],
                                  "hostNetwork": bool(spec.get("hostNetwork", False))}}}})
    owners: dict[str, str] = {}
    cluster = expand_workloads(cluster_from_objects(keep, source=case.name), owners)
    peer_of = {}
    for pod_key, wkey in owners.items():
        peer_of.setdefault(rename.get(wkey, wkey), pod_key)     # the first pod of each workload
    return cluster, peer_of


# --------------------------------------------------------------------------- external atoms

def _atoms(blocks) -> list[tuple[int, int]]:
    """Maximal contiguous ranges of the atoms the blocks cut (the whole space without blocks)."""
    bounds = {0, 1 << 32}
    for b in blocks:
        if b.cidr is None:
            continue
        for net, ln in (b.cidr,) + b.excepts:
            bounds.update((net, net + (1 << (32 - ln))))
    edges = sorted(bounds)
    sig = []
    for lo, hi in zip(edges, edges[1:]):
        sig.append((lo, hi, frozenset(k for k, b in enumerate(blocks) if b.contains(lo))))
    out = []
    for lo, hi, s in sig:                     # merge neighbours of the same atom
        if out and out[-1][2] == s and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi, s)
        else:
            out.append((lo, hi, s))
    return [(lo, hi - 1) for lo, hi, _ in out]


def _blocks(cluster, egress: bool):
    seen = []
    for pol in cluster.policies:
        for r in (pol.egress if egress else pol.ingress):
            for q in r.peers or ():
                if q.ip_block is not None and q.ip_block not in seen:
                    seen.append(q.ip_block)
    return seen


def _pick(lo: int, hi: int, taken: set[int]) -> int:
    ip = lo
    while ip in taken and ip < hi:
        ip += 1
    return ip


# --------------------------------------------------------------------------- connections

def _render(allowed: dict[str, list[tuple[int, int]]]) -> str:
    full = all(allowed.get(p) == [(1, 65535)] for p, _ in PROTOS)
    if full:
        return "All Connections"
    parts = []
    for p, _ in PROTOS:
        rs = allowed.get(p)
        if rs:
            parts.append(f"{p} " + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in rs))
    return ",".join(sorted(parts))


def connlist(case: Path) -> list[str]:
    """fastpath's answer for a case, in the analyzer's list format."""
    cluster, peer_of = case_cluster(case)
    dp = DataPlane.build(cluster)
    pods = {p.key: p for p in cluster.pods}
    node_ips = {n.internal_ip for n in cluster.nodes}
    taken = {p.ip for p in cluster.pods if p.ip is not None} | node_ips
    # cuts: every port where some rule's range or some container port starts or ends
    cuts = {1}
    for pol in cluster.policies:
        for r in pol.ingress + pol.egress:
            for pp in r.ports or ():
                if isinstance(pp.port, int):
                    cuts.update((pp.port, (pp.end_port or pp.port) + 1))
    for p in cluster.pods:
        for cp in p.ports:
            cuts.update((cp.port, cp.port + 1))
    cuts = np.array(sorted(c for c in cuts if 1 <= c <= 65535), dtype=np.int64)
    ends = np.append(cuts[1:] - 1, 65535)

    ends_list = []                                   # (name, ip)
    for name in sorted(peer_of):
        ends_list.append((name, pods[peer_of[name]].ip))
    pairs = [(a, b) for a in ends_list for b in ends_list if a[0] != b[0]]
    for lo, hi in _atoms(_blocks(cluster, egress=False)):
        ext = (f"{int_to_ip(lo)}-{int_to_ip(hi)}[External]", _pick(lo, hi, taken))
        pairs += [(ext, w) for w in ends_list]
    for lo, hi in _atoms(_blocks(cluster, egress=True)):
        ext = (f"{int_to_ip(lo)}-{int_to_ip(hi)}[External]", _pick(lo, hi, taken))
        pairs += [(w, ext) for w in ends_list]
    if not pairs:
        return []
    src = np.array([a[1] for a, _ in pairs], dtype=np.uint32)
    dst = np.array([b[1] for _, b in pairs], dtype=np.uint32)
    npair, nproto, ncut = len(pairs), len(PROTOS), cuts.size
    cols = {
        "src_ip": np.repeat(src, nproto * ncut),
        "dst_ip": np.repeat(dst, nproto * ncut),
        "src_port": np.full(npair * nproto * ncut, 40000, np.uint16),
        "dst_port": np.tile(cuts, npair * nproto).astype(np.uint16),
        "proto": np.tile(np.repeat(np.array([p for _, p in PROTOS], np.uint8), ncut), npair),
    }
    r = dp.resolve_flows(normalize_batch(cols, case.name))
    ok = (r.verdict != DENIED).reshape(npair, nproto, ncut)
    lines = []
    for k, (a, b) in enumerate(pairs):
        if not ok[k].any():
            continue
        allowed = {}
        for pi, (pname, _) in enumerate(PROTOS):
            rs = []
            for lo, hi, yes in zip(cuts.tolist(), ends.tolist(), ok[k, pi].tolist()):
                if yes:
                    if rs and rs[-1][1] == lo - 1:
                        rs[-1] = (rs[-1][0], hi)
                    else:
                        rs.append((lo, hi))
            allowed[pname] = rs
        lines.append(f"{a[0]} => {b[0]} : {_render(allowed)}")
    return sorted(lines, key=lambda s: s.split(" : ")[0].encode())


def _explained(case: Path, line: str, cluster_host: set[str], ipblock_case: bool) -> bool:
    """Whether a differing line involves what the case's reason names."""
    peers = line.split(" : ")[0].split(" => ")
    if any(p in cluster_host for p in peers):
        return True
    if peers[1].startswith("127.") and peers[1].endswith("[External]") and "loopback" in DIFFERENT[case.name]:
        return True                          # 127.0.0.0/8 from a pod is its own loopback
    return ipblock_case and not any(p.endswith("[External]") for p in peers)   # a pod pair: pod IP in a block


def _host_peers(case: Path) -> set[str]:
    cluster, peer_of = case_cluster(case)
    pods = {p.key: p for p in cluster.pods}
    return {name for name, key in peer_of.items() if pods[key].host_network}


@pytest.mark.parametrize("case", _cases())
def test_case(case):
    path = CORPUS / case
    expected = [ln for ln in (path / "expected_connlist.txt").read_text().splitlines() if ln.strip()]
    got = connlist(path)
    if case not in DIFFERENT:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        assert not missing and not extra, (f"{case}: {len(missing)} expected lines missing, {len(extra)} extra; "
                                           f"first missing {missing[:3]}, first extra {extra[:3]}")
        assert got == expected          # same order too
        return
    diff = sorted(set(expected) ^ set(got))
    assert diff, f"{case} is listed as differing ({DIFFERENT[case]}) but agrees: take it off the list"
    host = _host_peers(path)
    ipb = "ipBlock" in DIFFERENT[case]
    unexplained = [ln for ln in diff if not _explained(path, ln, host, ipb)]
    assert not unexplained, f"{case}: lines the listed reason does not explain: {unexplained[:3]}"
