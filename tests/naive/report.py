"""Slow twin of fastpath.report's figures: plain Python over a results file's rows.

Reads the result rows (and the trace's rows for bytes) as dicts and counts with
``collections.Counter``; no numpy, no kernel. Enough to check the numbers of
``figures.json`` that come from result columns.
"""
from __future__ import annotations

from collections import Counter


def mix(rows: list[dict]) -> dict:
    """Flows by verdict, path and reason (reason: non-null only)."""
    return {
        "verdict": dict(Counter(r["verdict"] for r in rows)),
        "path": dict(Counter(r["path"] for r in rows)),
        "reason": dict(Counter(r["reason"] for r in rows if r.get("reason"))),
    }


def backend_flows(rows: list[dict]) -> dict[str, Counter]:
    """Per service, flows per backend (its pod, else ``IP:port``), whatever happened after the DNAT."""
    import ipaddress

    out: dict[str, Counter] = {}
    for r in rows:
        if r["service"] is None or r.get("reason") in SERVICE_STAGE_REASONS:
            continue                       # stopped at the frontend: no backend was chosen
        backend = r["dst_pod"] or f"{ipaddress.IPv4Address(r['dnat_ip'])}:{r['dnat_port']}"
        out.setdefault(r["service"], Counter())[backend] += 1
    return out


#: Reasons the service stage gives when it picks no backend (the flow keeps its frontend).
SERVICE_STAGE_REASONS = ("no-endpoints", "no-local-endpoint", "port-not-served")


def shares(rows: list[dict], zone_of: dict[str, str]) -> tuple[float | None, float | None, int]:
    """(cross-node share, cross-zone share, flows) over flows with both nodes in the cluster."""
    both = [r for r in rows if r["src_node"] is not None and r["dst_node"] is not None]
    if not both:
        return None, None, 0
    cross = sum(1 for r in both if r["src_node"] != r["dst_node"])
    zone = sum(1 for r in both if zone_of.get(r["src_node"], "(no zone)") != zone_of.get(r["dst_node"], "(no zone)"))
    return cross / len(both), zone / len(both), len(both)


def source_pods(rows: list[dict], flow_bytes: list[int] | None) -> Counter:
    """Bytes (or flows, without a bytes column) per source pod."""
    c: Counter = Counter()
    for i, r in enumerate(rows):
        if r["src_pod"] is not None:
            c[r["src_pod"]] += flow_bytes[i] if flow_bytes is not None else 1
    return c


def changed(rows_a: list[dict], rows_b: list[dict]) -> tuple[int, int]:
    """(service flows, those whose backend address differs) between two replays of one trace."""
    flows = moved = 0
    for a, b in zip(rows_a, rows_b):
        if a["service"] is not None:
            flows += 1
            moved += (a["dnat_ip"], a["dnat_port"]) != (b["dnat_ip"], b["dnat_port"])
    return flows, moved


def conntrack_load(rows: list[dict], trace: list[dict], default_s: float = 30.0) -> dict[str, tuple[int, float]]:
    """Per node, (conntrack entries, their summed lifetimes in seconds) by the conntrack stage's
    rule (tests/naive/conntrack.py): who holds an entry, and for how long, by how the flow ended."""
    out: dict[str, list] = {}
    for r, f in zip(rows, trace):
        v, sn, dn, proto = r["verdict"], r["src_node"], r["dst_node"], f["proto"]
        if r["path"] == "loopback" or sn is None:
            continue
        tcp = proto in (6, 132)
        d = f.get("duration")
        d = (0.0 if proto == 17 else default_s) if d is None or d != d else d
        other = 30 if proto == 17 else 600
        if v in ("delivered", "egress"):
            life = d + (120 if tcp else 120 if proto == 17 and d > 2 else other)
        elif v == "refused":
            life = 10 if tcp else other
        else:
            life = 120 if tcp else other
        far = dn is not None and dn != sn
        if v in ("delivered", "refused"):
            nodes = [sn, dn] if far else [sn]
        elif v == "egress" or ((v == "dropped" or (v == "denied" and r["reason"] != "policy-egress")) and far):
            nodes = [sn]
        else:
            nodes = []
        for n in nodes:
            e = out.setdefault(n, [0, 0.0])
            e[0] += 1
            e[1] += life
    return {n: (e, s) for n, (e, s) in out.items()}
