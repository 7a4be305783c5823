"""The NetworkPolicy stage (:mod:`fastpath.stages.policy`) against its slow twin.

``tests/naive/policy.py`` decides one connection at a time by walking the policy
objects. Here the whole data path runs with the compiled stage, and with the stage
left out; every flow still undecided when the stage runs must come out ``denied``
(with the twin's reason) exactly when the twin denies it, and otherwise exactly as
without policies, and the policy the kernel credits with allowing it must be the
twin's. Hand cases first (each with its expected answer), then random clusters and
random policies drawn from the whole grammar, then the parser's errors.
"""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.cluster.load import cluster_from_objects
from fastpath.cluster.netpol import LabelSelector, Requirement
from fastpath.codes import (DENIED, LOOPBACK, R_MARTIAN, R_NO_LOCAL_ENDPOINT, R_POLICY_EGRESS, R_POLICY_INGRESS,
                            REASONS, REJECTED, UNRESOLVED)
from fastpath.errors import FastpathError
from fastpath.pipeline import DataPlane
from fastpath.traces import normalize_batch
from naive.policy import NaivePolicies

TCP, UDP, SCTP = 6, 17, 132


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# --------------------------------------------------------------------------- objects by hand

def node(name: str, addr: str, cidr: str) -> dict:
    return {"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}]}}


def pod(ns: str, name: str, node_name: str, addr: str, labels: dict, ports=(), host: bool = False) -> dict:
    cports = [{"containerPort": p, "protocol": pr, **({"name": n} if n else {})} for n, p, pr in ports]
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node_name, "hostNetwork": host, "containers": [{"name": "c", "ports": cports}]},
            "status": {"phase": "Running", "podIP": addr, "conditions": [{"type": "Ready", "status": "True"}]}}


def namespace(name: str, labels: dict) -> dict:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def service(ns: str, name: str, vip: str, selector: dict, ports: list, stype: str = "ClusterIP",
            etp: str = "Cluster") -> dict:
    spec = {"type": stype, "clusterIP": vip, "selector": selector, "ports": ports}
    if stype != "ClusterIP":
        spec["externalTrafficPolicy"] = etp
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def base_objects() -> list[dict]:
    """Two nodes, namespaces shop (team=a) and ops (team=b), five pods and a hostNetwork one."""
    return [
        node("n0", "192.168.0.10", "10.244.0.0/24"), node("n1", "192.168.0.11", "10.244.1.0/24"),
        namespace("shop", {"team": "a"}), namespace("ops", {"team": "b"}),
        pod("shop", "web", "n0", "10.244.0.2", {"app": "web"}, [("http", 8080, "TCP")]),
        pod("shop", "api", "n1", "10.244.1.2", {"app": "api"}, [("http", 9090, "TCP"), ("dns", 53, "UDP")]),
        pod("shop", "db", "n1", "10.244.1.3", {"app": "db"}, [("sql", 5432, "TCP")]),
        pod("ops", "mon", "n0", "10.244.0.3", {"app": "web"}, [("http", 8080, "TCP")]),
        pod("ops", "probe", "n1", "10.244.1.4", {"app": "probe"}, []),
        pod("ops", "agent", "n0", "192.168.0.10", {"app": "agent"}, [("m", 9100, "TCP")], host=True),
    ]


def build(objects: list[dict]) -> DataPlane:
    return DataPlane.build(cluster_from_objects(objects, "test"))


def run(dp: DataPlane, flows: list[tuple]) -> tuple:
    """Resolve (src, dst, dport, proto) flows; also the twin's answers and the no-policy results."""
    cols = {"src_ip": np.array([ip(f[0]) if isinstance(f[0], str) else f[0] for f in flows], np.uint32),
            "dst_ip": np.array([ip(f[1]) if isinstance(f[1], str) else f[1] for f in flows], np.uint32),
            "src_port": np.full(len(flows), 40000, np.uint16),
            "dst_port": np.array([f[2] for f in flows], np.uint16),
            "proto": np.array([f[3] if len(f) > 3 else TCP for f in flows], np.uint8)}
    fl = normalize_batch(cols, "test")
    r = dp.resolve_flows(fl)
    li, le = dp.policy.last_ingress[:fl.n].copy(), dp.policy.last_egress[:fl.n].copy()
    stage, dp.policy = dp.policy, None
    try:
        base = dp.resolve_flows(fl)
    finally:
        dp.policy = stage
    return fl, r, base, li, le


def check_twin(dp: DataPlane, flows: list[tuple]):
    """Kernel vs twin on every flow; returns the per-flow outcome: None, 'policy-ingress' or 'policy-egress'."""
    fl, r, base, li, le = run(dp, flows)
    twin = NaivePolicies(dp.cluster)
    out = []
    for j in range(fl.n):
        decided_before = (base.path[j] == LOOPBACK or base.verdict[j] in (REJECTED, UNRESOLVED)
                          or base.reason[j] in (R_MARTIAN, R_NO_LOCAL_ENDPOINT))
        if decided_before:
            assert r.verdict[j] == base.verdict[j] and r.reason[j] == base.reason[j], j
            out.append(None)
            continue
        d = twin.decide(int(fl.src_ip[j]), int(base.snat_ip[j]), int(base.dnat_ip[j]), int(base.dnat_port[j]),
                        int(fl.proto[j]))
        where = f"flow {j} {flows[j]}: twin {d}, kernel verdict {r.verdict[j]} reason {REASONS[r.reason[j]]}"
        if d["denied"]:
            assert r.verdict[j] == DENIED and REASONS[r.reason[j]] == d["denied"], where
        else:
            assert r.verdict[j] == base.verdict[j] and r.reason[j] == base.reason[j], where
            assert r.dst_pod[j] == base.dst_pod[j], where
        for side, got in (("egress", le[j]), ("ingress", li[j])):
            want = d[side]
            if d["denied"] == "policy-egress" and side == "ingress":
                continue                              # never reached
            code = {"open": -1, "exempt": -2, None: -3}.get(want, want)
            assert got == code, f"{where}: {side} allowed by {got}, twin {want}"
        out.append(d["denied"])
    return out


# --------------------------------------------------------------------------- hand cases

WEB, API, DB, MON, PROBE, NODE0, NODE1 = ("10.244.0.2", "10.244.1.2", "10.244.1.3", "10.244.0.3", "10.244.1.4",
                                          "192.168.0.10", "192.168.0.11")
OUTSIDE = "203.0.113.7"


def test_no_policies_no_stage():
    dp = build(base_objects())
    assert dp.policy is None                          # the stage costs nothing


def test_deny_all_ingress():
    dp = build(base_objects() + [policy("shop", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]})])
    got = check_twin(dp, [(WEB, API, 9090), (MON, DB, 5432), (API, MON, 8080), (NODE1, API, 9090),
                          (NODE0, API, 9090), (OUTSIDE, WEB, 8080), (API, WEB, 8080), (API, API, 9090)])
    assert got == ["policy-ingress", "policy-ingress", None, None, "policy-ingress", "policy-ingress",
                   "policy-ingress", None]


def test_deny_all_egress():
    dp = build(base_objects() + [policy("shop", "deny", {"podSelector": {}, "policyTypes": ["Egress"]})])
    got = check_twin(dp, [(WEB, API, 9090), (WEB, MON, 8080), (MON, WEB, 8080), (WEB, OUTSIDE, 443),
                          (WEB, NODE0, 10250), (WEB, NODE1, 10250), (WEB, "127.0.0.1", 8080)])
    assert got == ["policy-egress", "policy-egress", None, "policy-egress", None, "policy-egress", None]


def test_isolated_only_once_selected():
    spec = {"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}
    dp = build(base_objects() + [policy("shop", "db-from-api", spec)])
    got = check_twin(dp, [(API, DB, 5432), (WEB, DB, 5432), (MON, DB, 5432), (WEB, API, 9090), (DB, WEB, 8080)])
    assert got == [None, "policy-ingress", "policy-ingress", None, None]


def test_namespace_and_pod_selector_vs_two_peers():
    both = {"podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                                   "podSelector": {"matchLabels": {"app": "web"}}}]}]}
    two = {"podSelector": {"matchLabels": {"app": "api"}},
           "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}},
                                 {"podSelector": {"matchLabels": {"app": "web"}}}]}]}
    flows = [(MON, API, 9090), (PROBE, API, 9090), (WEB, API, 9090), (DB, API, 9090)]
    assert check_twin(build(base_objects() + [policy("shop", "p", both)]), flows) == \
        [None, "policy-ingress", "policy-ingress", "policy-ingress"]
    assert check_twin(build(base_objects() + [policy("shop", "p", two)]), flows) == \
        [None, None, None, "policy-ingress"]


def test_ip_block_except_and_pod_ips():
    spec = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.0/28"]}},
                                  {"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.3/32"]}}]}]}
    dp = build(base_objects() + [policy("shop", "p", spec)])
    got = check_twin(dp, [("203.0.113.20", WEB, 8080), ("203.0.113.7", WEB, 8080), (API, WEB, 8080),
                          (DB, WEB, 8080), (MON, WEB, 8080), ("198.51.100.1", WEB, 8080)])
    # ipBlock matches pod IPs (Calico): api (10.244.1.2) in, db (the except) out
    assert got == [None, "policy-ingress", None, "policy-ingress", "policy-ingress", "policy-ingress"]


def test_named_ports_resolve_per_pod():
    objs = base_objects() + [
        pod("shop", "web2", "n1", "10.244.1.9", {"app": "web"}, [("http", 8081, "TCP")]),
        policy("shop", "p", {"podSelector": {"matchLabels": {"app": "web"}},
                             "ingress": [{"ports": [{"port": "http"}]}]}),
        policy("ops", "e", {"podSelector": {"matchLabels": {"app": "probe"}}, "policyTypes": ["Egress"],
                            "egress": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}),
    ]
    dp = build(objs)
    got = check_twin(dp, [(API, WEB, 8080), (API, WEB, 8081), (API, "10.244.1.9", 8081), (API, "10.244.1.9", 8080),
                          (PROBE, WEB, 8080), (PROBE, "10.244.1.9", 8080), (PROBE, "10.244.1.9", 8081),
                          (PROBE, API, 9090), (PROBE, OUTSIDE, 8080)])
    assert got == [None, "policy-ingress", None, "policy-ingress",
                   None, "policy-egress", None, None, "policy-egress"]


def test_subject_with_more_entries_than_a_row():
    """A subject whose run outgrows the kernel's one-row fast path is read from the CSR map."""
    from fastpath.stages.policy_kernel import ROW_KEYS
    clients = [pod("shop", f"c{i}", "n0", f"10.244.0.{20 + i}", {"app": f"c{i}"}) for i in range(ROW_KEYS + 2)]
    spec = {"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"c{i}"}}}],
                         "ports": [{"port": 5000 + i}]} for i in range(ROW_KEYS + 2)]}
    dp = build(base_objects() + clients + [policy("shop", "db-many", spec)])
    t = dp.policy.t
    assert (t.in_rows[:-1, 2 * ROW_KEYS] == -1).any(), "the db subject's run is longer than a row"
    flows = [(f"10.244.0.{20 + i}", DB, 5000 + k) for i in range(ROW_KEYS + 2) for k in (i, (i + 1) % (ROW_KEYS + 2))]
    got = check_twin(dp, flows + [(WEB, DB, 5000), (OUTSIDE, DB, 5000)])
    assert got == [None, "policy-ingress"] * (ROW_KEYS + 2) + ["policy-ingress", "policy-ingress"]


def test_end_port_and_protocols():
    spec = {"podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"ports": [{"port": 9000, "endPort": 9090}, {"protocol": "UDP", "port": 53}]}]}
    dp = build(base_objects() + [policy("shop", "p", spec)])
    got = check_twin(dp, [(WEB, API, 9090), (WEB, API, 8999), (WEB, API, 9091), (WEB, API, 9000),
                          (WEB, API, 53, UDP), (WEB, API, 53, TCP), (WEB, API, 9050, SCTP)])
    assert got == [None, "policy-ingress", "policy-ingress", None, None, "policy-ingress", "policy-ingress"]


def test_service_traffic_after_dnat():
    objs = base_objects() + [service("shop", "api", "10.96.0.20", {"app": "api"},
                                     [{"port": 80, "targetPort": 9090, "protocol": "TCP"}])]
    allow_target = {"podSelector": {"matchLabels": {"app": "api"}}, "ingress": [{"ports": [{"port": 9090}]}]}
    allow_front = {"podSelector": {"matchLabels": {"app": "api"}}, "ingress": [{"ports": [{"port": 80}]}]}
    assert check_twin(build(objs + [policy("shop", "p", allow_target)]), [(WEB, "10.96.0.20", 80)]) == [None]
    assert check_twin(build(objs + [policy("shop", "p", allow_front)]), [(WEB, "10.96.0.20", 80)]) == \
        ["policy-ingress"]
    egress = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
              "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 9090}]}]}
    assert check_twin(build(objs + [policy("shop", "e", egress)]), [(WEB, "10.96.0.20", 80), (WEB, DB, 5432)]) == \
        [None, "policy-egress"]


@pytest.mark.parametrize("etp", ["Cluster", "Local"])
def test_external_traffic_policy(etp):
    objs = base_objects() + [service("shop", "web", "10.96.0.30", {"app": "web"},
                                     [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}],
                                     stype="NodePort", etp=etp)]
    spec = {"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]}
    dp = build(objs + [policy("shop", "p", spec)])
    # web runs on n0: through n1 the client is SNATed to n1 (Cluster) -> not in the block;
    # through n0 the source is web's own node -> always allowed; Local keeps the client's address
    flows = [(OUTSIDE, NODE1, 30080), (OUTSIDE, NODE0, 30080), ("198.51.100.9", NODE0, 30080)]
    got = check_twin(dp, flows)
    fl, r, base, li, le = run(dp, flows)
    if etp == "Cluster":
        assert got == ["policy-ingress", None, None]      # via n0: from web's own node, whoever the client
        assert li[1] == li[2] == -2
    else:
        # via n1: no local endpoint (dropped by kube-proxy, before the stage); via n0 the client's
        # own address arrives: in the block, allowed by the policy; outside it, denied
        assert REASONS[r.reason[0]] == "no-local-endpoint"
        assert got[1:] == [None, "policy-ingress"] and li[1] == 0


def test_pod_and_own_node_and_hostnetwork_never_selected():
    spec = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dp = build(base_objects() + [policy("ops", "deny", spec)])
    got = check_twin(dp, [(NODE0, MON, 8080), (NODE1, MON, 8080), (MON, NODE0, 9100), (MON, NODE1, 9100),
                          (WEB, NODE0, 9100), (MON, "127.0.0.1", 8080)])
    # the hostNetwork agent in ops is not isolated (it is node n0's address)
    assert got == [None, "policy-ingress", None, "policy-egress", None, None]


def test_summary_counts_allowed():
    spec = {"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}
    dp = build(base_objects() + [policy("shop", "db-from-api", spec)])
    run(dp, [(API, DB, 5432)])
    assert dp.policy.allowed.tolist() == [0]              # not counting unless asked
    dp.policy.counting = True
    run(dp, [(API, DB, 5432), (API, DB, 5432), (WEB, DB, 5432)])
    # run() resolves twice with the stage: once counted (the policy run), once without it
    assert dp.policy.allowed.tolist() == [2]


def test_isolated_pods_with_egress_policies_only(tmp_path):
    """No pod is an ingress subject when every policy is egress-only: the summary's isolated pods
    are none (the count once indexed an empty subject table and crashed the replay's summary)."""
    from fastpath import replay, synth_trace
    from fastpath.stages.policy_summary import isolated_without_ingress

    egress = {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Egress"],
              "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}
    dp = build(base_objects() + [policy("shop", "api-out", egress)])
    assert len(dp.policy.t.ingress_subjects) == 0
    assert isolated_without_ingress(dp.policy).tolist() == []
    cluster = cluster_from_objects(base_objects() + [policy("shop", "api-out", egress)], "test")
    synth_trace(cluster, 500, out=tmp_path / "t.arrow", seed=1)
    summary = replay(cluster, tmp_path / "t.arrow", progress=False)
    assert summary.flows == 500 and summary.policy is not None
    deny = {"podSelector": {}, "policyTypes": ["Ingress"]}
    dp = build(base_objects() + [policy("shop", "api-out", egress), policy("ops", "deny-in", deny)])
    names = [dp.tables.pod_names[i] for i in isolated_without_ingress(dp.policy)]
    assert names == ["ops/mon", "ops/probe"]


# --------------------------------------------------------------------------- random policies

LABEL_VALUES = {"app": ("web", "api", "db"), "tier": ("fe", "be"), "ver": ("v1", "v2")}
NS_LABELS = {"team": ("a", "b"), "env": ("prod", "dev")}
PORT_NAMES = ("http", "metrics", "dns")


def _selector(rng, vocab) -> dict:
    out: dict = {}
    if rng.random() < 0.25:
        return out
    keys = list(vocab)
    if rng.random() < 0.7:
        k = keys[rng.integers(len(keys))]
        out["matchLabels"] = {k: vocab[k][rng.integers(len(vocab[k]))]}
    if rng.random() < 0.5:
        exprs = []
        for _ in range(int(rng.integers(1, 3))):
            k = keys[rng.integers(len(keys))] if rng.random() < 0.9 else "absent"
            op = ("In", "NotIn", "Exists", "DoesNotExist")[rng.integers(4)]
            e = {"key": k, "operator": op}
            if op in ("In", "NotIn"):
                vals = vocab.get(k, ("x",))
                e["values"] = list(rng.choice(vals, size=int(rng.integers(1, len(vals) + 1)), replace=False))
            exprs.append(e)
        out["matchExpressions"] = exprs
    return out


def _peer(rng) -> dict:
    u = rng.random()
    if u < 0.3:
        return {"podSelector": _selector(rng, LABEL_VALUES)}
    if u < 0.5:
        return {"namespaceSelector": _selector(rng, NS_LABELS)}
    if u < 0.7:
        return {"podSelector": _selector(rng, LABEL_VALUES), "namespaceSelector": _selector(rng, NS_LABELS)}
    cidr = ("10.244.0.0/16", "10.244.1.0/24", "192.168.0.0/24", "203.0.113.0/24", "0.0.0.0/0",
            "10.244.0.0/23")[rng.integers(6)]
    block: dict = {"cidr": cidr}
    if rng.random() < 0.5:
        net = ipaddress.ip_network(cidr)
        if net.prefixlen < 32:
            sub = list(net.subnets(new_prefix=min(32, net.prefixlen + int(rng.integers(1, 9)))))
            block["except"] = [str(sub[int(rng.integers(min(len(sub), 8)))])]
    return {"ipBlock": block}


def _ports(rng) -> list | None:
    if rng.random() < 0.3:
        return None
    out = []
    for _ in range(int(rng.integers(1, 3))):
        p: dict = {}
        if rng.random() < 0.7:
            p["protocol"] = ("TCP", "UDP", "SCTP")[rng.integers(3)]
        u = rng.random()
        if u < 0.4:
            p["port"] = int(rng.choice([53, 80, 8080, 8081, 9090, 9100]))
        elif u < 0.65:
            p["port"] = PORT_NAMES[rng.integers(3)]
        elif u < 0.9:
            lo = int(rng.choice([53, 80, 8000, 9000]))
            p["port"], p["endPort"] = lo, lo + int(rng.integers(0, 200))
        out.append(p)
    return out


def random_policy_cluster(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    objs = [node("n0", "192.168.0.10", "10.244.0.0/24"), node("n1", "192.168.0.11", "10.244.1.0/24")]
    nss = ["shop", "ops", "dev"]
    for ns in nss[:2]:
        objs.append(namespace(ns, {k: v[rng.integers(len(v))] for k, v in NS_LABELS.items() if rng.random() < 0.8}))
    for i in range(int(rng.integers(4, 10))):
        nd = int(rng.integers(2))
        labels = {k: v[rng.integers(len(v))] for k, v in LABEL_VALUES.items() if rng.random() < 0.7}
        ports = []
        for name, choices, proto in (("http", (8080, 8081), "TCP"), ("metrics", (9090, 9100), "TCP"),
                                     ("dns", (53,), "UDP")):
            if rng.random() < 0.6:
                ports.append((name, int(rng.choice(choices)), proto))
        host = rng.random() < 0.08
        addr = f"192.168.0.1{nd}" if host else f"10.244.{nd}.{10 + i}"
        objs.append(pod(nss[rng.integers(3)], f"p{i}", f"n{nd}", addr, labels, ports, host=host))
    objs.append(service("shop", "svc", "10.96.0.40", {"app": "web"},
                        [{"port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}],
                        stype="NodePort", etp=("Cluster", "Local")[rng.integers(2)]))
    for k in range(int(rng.integers(1, 6))):
        spec: dict = {"podSelector": _selector(rng, LABEL_VALUES)}
        for direction, field in (("ingress", "from"), ("egress", "to")):
            if rng.random() < 0.7:
                rules = []
                for _ in range(int(rng.integers(0, 3))):
                    r: dict = {}
                    if rng.random() < 0.75:
                        r[field] = [_peer(rng) for _ in range(int(rng.integers(1, 3)))]
                    ports = _ports(rng)
                    if ports is not None:
                        r["ports"] = ports
                    rules.append(r)
                spec[direction] = rules
        if rng.random() < 0.5:
            types = [t for t in ("Ingress", "Egress") if rng.random() < 0.7]
            if types:
                spec["policyTypes"] = types
        objs.append(policy(nss[rng.integers(3)], f"pol{k}", spec))
    return objs


def random_policy_flows(objs: list[dict], seed: int, n: int = 150) -> list[tuple]:
    rng = np.random.default_rng(seed + 1)
    addrs = [o["status"]["podIP"] for o in objs if o["kind"] == "Pod"]
    addrs += ["192.168.0.10", "192.168.0.11", "203.0.113.7", "203.0.113.200", "198.51.100.3"]
    dsts = addrs + ["10.96.0.40", "127.0.0.1"]
    out = []
    for _ in range(n):
        d = dsts[rng.integers(len(dsts))]
        port = int(rng.choice([53, 80, 8080, 8081, 9090, 9100, 30080, 150, 9050]))
        out.append((addrs[rng.integers(len(addrs))], d, port, (TCP, TCP, UDP, SCTP)[rng.integers(4)]))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_random_policies_against_twin(seed):
    objs = random_policy_cluster(seed)
    dp = build(objs)
    check_twin(dp, random_policy_flows(objs, seed))


# --------------------------------------------------------------------------- parsing

def test_selector_semantics():
    sel = LabelSelector((("app", "web"),), (Requirement("tier", "NotIn", frozenset({"db"})),
                                             Requirement("ver", "Exists"), Requirement("old", "DoesNotExist"),
                                             Requirement("zone", "In", frozenset({"a", "b"}))))
    assert sel.matches({"app": "web", "ver": "1", "zone": "a"})
    assert sel.matches({"app": "web", "ver": "1", "zone": "b", "tier": "fe"})
    assert not sel.matches({"app": "web", "ver": "1", "zone": "a", "tier": "db"})
    assert not sel.matches({"app": "web", "zone": "a"})
    assert not sel.matches({"app": "web", "ver": "1", "zone": "a", "old": ""})
    assert not sel.matches({"app": "web", "ver": "1", "zone": "c"})
    assert LabelSelector().matches({}) and LabelSelector().empty


def test_policy_types_implied_and_explicit():
    c = cluster_from_objects([
        policy("a", "in-only", {"podSelector": {}}),
        policy("a", "both", {"podSelector": {}, "egress": [{}]}),
        policy("a", "eg", {"podSelector": {}, "policyTypes": ["Egress"]}),
    ])
    assert [(p.affects_ingress, p.affects_egress) for p in c.policies] == [(True, False), (True, True), (False, True)]
    assert c.policies[1].egress[0].peers is None and c.policies[1].egress[0].ports is None


@pytest.mark.parametrize("spec, message", [
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
     "spec.podSelector.matchExpressions[0].operator 'Near' is not one of In, NotIn, Exists, DoesNotExist"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values: operator In needs at least one value"),
    ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0] '11.0.0.0/16' is not inside cidr '10.0.0.0/8'"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr"),
    ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol 'ICMP' is not TCP"),
    ({"ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port 70000 is not a port number"),
    ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort needs a numeric port"),
    ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "spec.ingress[0].ports[0].endPort 80 is below port 90"),
    ({"ingress": [{"ports": [{"port": "Not_A_Name"}]}]}, "spec.ingress[0].ports[0].port 'Not_A_Name' is neither"),
    ({"policyTypes": ["Sideways"]}, "spec.policyTypes[0] 'Sideways' is not Ingress or Egress"),
    ({"ingress": {"from": []}}, "spec.ingress is not a list"),
])
def test_malformed_policies_one_line(spec, message):
    with pytest.raises(FastpathError) as e:
        cluster_from_objects([policy("shop", "bad", spec)], source="np.yaml")
    text = str(e.value)
    assert text.startswith("np.yaml: NetworkPolicy shop/bad: ") and message in text and "\n" not in text, text


def test_accepted_but_not_modelled_warns():
    c = cluster_from_objects([policy("a", "p", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.1/8"}}, {"ipBlock": {"cidr": "fd00::/8"}}]}]})])
    assert any("IPv6 ipBlock" in w for w in c.warnings)
    assert any("host bits set" in w for w in c.warnings)
    assert c.policies[0].ingress[0].peers[0].ip_block.cidr == (ip("10.0.0.0"), 8)
