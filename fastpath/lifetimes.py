"""One time model for every stage that keeps connections.

A connection lives its ``duration`` (the trace column, Zeek's ``conn.log``
habit) from its first packet at ``ts``; where the trace has no ``duration``
(or a null in it), the per-protocol default: TCP, SCTP and other protocols
``--conn-duration`` seconds (default 30), UDP :data:`UDP_DEFAULT_DURATION`
(a query and its answer). Least-connection counts a connection open for that
long, ClientIP affinity stays in use until it ends, and conntrack holds its
entry that long plus the timeout of the state it closes in.
"""
from __future__ import annotations

import numpy as np

#: Seconds a UDP exchange lives where the trace gives no ``duration``: a query and its answer.
UDP_DEFAULT_DURATION = 0.0
#: Seconds a TCP (or SCTP, or other) connection lives where the trace gives no ``duration``.
DEFAULT_DURATION = 30.0
#: The longest lifetime kept, seconds (100 years): longer durations count as this.
MAX_DURATION = 100 * 365 * 86400.0


def lifetimes_ns(proto: np.ndarray, duration: np.ndarray | None, default_s: float = DEFAULT_DURATION) -> np.ndarray:
    """Each connection's lifetime in nanoseconds (int64), by the rule in the module docstring.

    ``duration`` is float seconds (NaN: not given) or ``None``; a duration is
    rounded to the nearest nanosecond, and held to :data:`MAX_DURATION` (so
    that ``ts`` plus a lifetime plus a timeout stays inside int64 nanoseconds).
    """
    proto = np.asarray(proto)
    base = np.where(proto == 17, np.int64(round(UDP_DEFAULT_DURATION * 1e9)), np.int64(round(default_s * 1e9)))
    if duration is None:
        return base.astype(np.int64, copy=False)
    d = np.asarray(duration, np.float64)
    given = d == d
    ns = np.minimum(np.where(given, d, 0.0), MAX_DURATION) * 1e9 + 0.5
    return np.where(given, ns.astype(np.int64), base)
