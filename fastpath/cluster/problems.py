"""Load warnings: collected by kind of problem, said once each, printed by the command line.

The loader goes on where the API server would (a pod on a node the input lacks, two
containers declaring one port, a service with nothing behind it). Each kind of
problem becomes one line of :attr:`Cluster.warnings` with a count and the first few
objects; :attr:`Cluster.problems` keeps every object. :func:`report` prints them
on stderr (``replay``, ``explain``, ``synth trace``), :func:`counts` gives what
``--summary-json`` records.
"""
from __future__ import annotations

import sys
from typing import IO

from ..errors import shorten

#: Objects named in a warning line (``--debug`` lists all).
EXAMPLES = 3

#: Problem key -> (message, consequence). The message reads after a count.
MESSAGES: dict[str, tuple[str, str]] = {
    "node-not-in-input": ("pod{s} on nodes the input does not hold",
                          "kept; flows to them are dropped (reason node-not-in-input)"),
    "duplicate-container-port": ("pod{s} with two containers declaring one port",
                                 "the API server accepts it; the first container's declaration is kept"),
    "merged-duplicate": ("object{s} given twice, identically", "merged"),
    "no-endpoints-source": ("service{s} without selector, EndpointSlice or Endpoints",
                            "no endpoints: flows to them are rejected"),
    "skipped-files": ("file{s} in the directory hold no Kubernetes objects", "skipped"),
    "masquerade-v6": ("IPv6 nonMasqueradeCIDR{s} in ip-masq-agent's config", "ignored (fastpath is IPv4)"),
}


class Problems:
    """Objects by kind of problem, in the order met."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[str]] = {}

    def add(self, key: str, name: str) -> None:
        """Note one object (``namespace/name``, or a file) with problem ``key`` (a :data:`MESSAGES` key)."""
        lst = self.by_key.get(key)
        if lst is None:
            self.by_key[key] = [name]
        else:
            lst.append(name)

    def lines(self) -> list[str]:
        """One line per kind of problem: count, what, the first few objects, what fastpath does."""
        return [line(key, names) for key, names in self.by_key.items()]


def line(key: str, names: list[str]) -> str:
    """The warning line of problem ``key`` over ``names``."""
    what, then = MESSAGES[key]
    n = len(names)
    shown = ", ".join(shorten(x) for x in names[:EXAMPLES]) + (", ..." if n > EXAMPLES else "")
    return f"{n} {what.format(s='s' * (n != 1))} ({shown}): {then}"


def skipped_line(kind: str, n: int) -> str:
    """The warning line for ``n`` skipped objects of ``kind``."""
    return f"skipped {n} {kind} object{'s' * (n != 1)}: kind not used by fastpath"


def counts(cluster) -> dict:
    """``{"warnings": {problem: count}, "skipped_kinds": {kind: count}}`` for ``--summary-json``.

    Warnings not filed under a problem key (address notes, NetworkPolicy notes) count
    under ``other``.
    """
    problems = getattr(cluster, "problems", None) or {}
    skipped = dict(getattr(cluster, "skipped_kinds", None) or {})
    w = {k: len(v) for k, v in problems.items()}
    keyed = {line(k, v) for k, v in problems.items()} | {skipped_line(k, n) for k, n in skipped.items()}
    other = sum(1 for text in cluster.warnings if text not in keyed)
    if other:
        w["other"] = other
    return {"warnings": w, "skipped_kinds": skipped}


def report(cluster, stream: IO[str] | None = None, debug: bool = False) -> int:
    """Print the cluster's load warnings on ``stream`` (default stderr), one line each.

    Skipped kinds are gathered into one line. With ``debug``, every object of every
    problem is listed. Returns the number of lines printed.
    """
    stream = stream if stream is not None else sys.stderr
    skipped = dict(getattr(cluster, "skipped_kinds", None) or {})
    hide = {skipped_line(k, n) for k, n in skipped.items()}
    out = []
    if skipped:
        total = sum(skipped.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(f"skipped {total} object{'s' * (total != 1)} of kinds fastpath does not use ({kinds})")
    out.extend(t for t in cluster.warnings if t not in hide)
    if debug:
        for key, names in (getattr(cluster, "problems", None) or {}).items():
            if len(names) > EXAMPLES:
                out.append(f"{key}: all {len(names)}: {', '.join(shorten(x) for x in names)}")
    for t in out:
        print(f"fastpath: warning: {t}", file=stream)
    return len(out)
