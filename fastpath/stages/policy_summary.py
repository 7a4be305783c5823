"""The NetworkPolicy stage's figures for ``replay``'s summary (``Summary.policy``).

Denied flows by side and by (source namespace, destination namespace), the policies
that allowed the most flows (the stage's per-policy counters), and the pods isolated
for ingress that no rule lets anything reach.
"""
from __future__ import annotations

import numpy as np

from ..codes import DENIED, R_POLICY_EGRESS

#: Rows the summary lists (namespace pairs, policies, isolated pods).
SUMMARY_TOP = 10


def isolated_without_ingress(stage) -> np.ndarray:
    """Pods isolated for ingress that no rule lets anything reach (their own node aside)."""
    t = stage.t
    n_sub = len(t.ingress_subjects)
    open_ = np.zeros(n_sub, dtype=bool)
    open_ |= t.fallback_in[0::2] != 0
    open_ |= t.fallback_in[1::2] != 0
    m = t.ingress
    subj = np.repeat(np.arange(n_sub), np.diff(m.off))
    open_[subj[m.ps != 0]] = True
    ing = t.pod_rec[0::4][:-1]                   # the last record is the kernel's blank one
    shut = np.zeros(ing.shape[0], dtype=bool)
    held = ing >= 0                              # no pod is an ingress subject under egress-only policies
    shut[held] = ~open_[ing[held]]
    return np.flatnonzero(shut)


class PolicyTally:
    """Policy figures over the result batches of a replay (``Summary.policy``)."""

    def __init__(self, dp) -> None:
        self.dp = dp
        self.pod_ns = dp.tables.pod_ns.astype(np.int64)
        self.n_ns = len(dp.tables.ns_names)
        # (source namespace + 2, destination namespace + 1) x side; source slot 0 external, 1 host
        self.pairs = np.zeros((self.n_ns + 2) * (self.n_ns + 1) * 2, dtype=np.int64)

    def add(self, r) -> None:
        """Count one batch's denied flows by side and (source, destination) namespace."""
        rows = np.flatnonzero(r.verdict == DENIED)
        if rows.size == 0:
            return
        sp = r.src_pod[rows].astype(np.int64)
        dpod = r.dst_pod[rows].astype(np.int64)
        host = r.src_kind[rows] == 1
        s = np.where(sp >= 0, self.pod_ns[np.maximum(sp, 0)] + 2, np.where(host, 1, 0))
        d = np.where(dpod >= 0, self.pod_ns[np.maximum(dpod, 0)] + 1, 0)
        side = (r.reason[rows] == R_POLICY_EGRESS).astype(np.int64)
        key = (s * (self.n_ns + 1) + d) * 2 + side
        self.pairs += np.bincount(key, minlength=self.pairs.size)

    def result(self, top: int = SUMMARY_TOP) -> dict:
        """``denied_ingress``, ``denied_egress``, ``denied_by_namespace``, ``top_policies``,
        ``isolated_without_ingress`` (count and the first pods)."""
        names = self.dp.tables.ns_names
        stage = self.dp.policy
        grid = self.pairs.reshape(self.n_ns + 2, self.n_ns + 1, 2)
        by_pair = []
        for s, d in zip(*np.nonzero(grid.sum(axis=2))):
            src = "(external)" if s == 0 else "(host)" if s == 1 else names[s - 2]
            dst = "(outside)" if d == 0 else names[d - 1]
            by_pair.append({"src_namespace": src, "dst_namespace": dst, "ingress": int(grid[s, d, 0]),
                            "egress": int(grid[s, d, 1])})
        by_pair.sort(key=lambda x: (-(x["ingress"] + x["egress"]), x["src_namespace"], x["dst_namespace"]))
        order = np.argsort(-stage.allowed, kind="stable")[:top]
        pols = [{"policy": stage.t.policies[k].key, "allowed": int(stage.allowed[k])}
                for k in order.tolist() if stage.allowed[k] > 0]
        iso = isolated_without_ingress(stage)
        pod_names = self.dp.tables.pod_names
        return {"policies": len(stage.t.policies),
                "denied_ingress": int(grid[:, :, 0].sum()), "denied_egress": int(grid[:, :, 1].sum()),
                "denied_by_namespace": by_pair[:top], "top_policies": pols,
                "isolated_without_ingress": {"count": int(iso.size), "pods": [pod_names[i] for i in iso[:top]]}}


def policy_tally(dp) -> PolicyTally | None:
    """A :class:`PolicyTally` for ``dp``, or None when it has no policy stage."""
    if getattr(dp, "policy", None) is None:
        return None
    dp.policy.counting = True                # the stage counts the flows each policy allowed
    return PolicyTally(dp)


def render_policy_summary(policy: dict):
    """The ``Summary.policy`` figures as rich tables (a renderable)."""
    from rich.console import Group
    from rich.table import Table

    head = Table(title=f"NetworkPolicy ({policy['policies']} policies): denied flows", title_justify="left")
    for col, just in (("source namespace", "left"), ("destination namespace", "left"),
                      ("ingress", "right"), ("egress", "right")):
        head.add_column(col, justify=just, overflow="fold")
    head.add_row("(all)", "(all)", f"{policy['denied_ingress']:,}", f"{policy['denied_egress']:,}")
    for row in policy["denied_by_namespace"]:
        head.add_row(row["src_namespace"], row["dst_namespace"], f"{row['ingress']:,}", f"{row['egress']:,}")
    top = Table(title="top policies by flows allowed", title_justify="left")
    top.add_column("policy", overflow="fold")
    top.add_column("flows allowed", justify="right")
    for row in policy["top_policies"]:
        top.add_row(row["policy"], f"{row['allowed']:,}")
    iso = policy["isolated_without_ingress"]
    tail = Table.grid()
    tail.add_row(f"isolated pods no rule lets anything reach: {iso['count']:,}"
                 + (f" (e.g. {', '.join(iso['pods'][:3])})" if iso["pods"] else ""))
    return Group(head, top, tail)
