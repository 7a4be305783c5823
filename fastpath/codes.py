"""Integer codes the kernels write, and their names in the results.

Kernels work on these small integers; the results writer turns them into
Arrow dictionaries with :data:`VERDICTS`, :data:`PATHS` and :data:`REASONS` as
dictionaries. Codes are append-only: a new verdict or reason goes at the end, so
results written by an older fastpath read the same.
"""
from __future__ import annotations

import numpy as np

#: Verdict names, indexed by code.
VERDICTS = ("delivered", "refused", "rejected", "dropped", "egress", "unresolved", "denied")
#: Path names, indexed by code.
PATHS = ("loopback", "bridge", "routed", "external", "none")

DELIVERED, REFUSED, REJECTED, DROPPED, EGRESS, UNRESOLVED, DENIED = (np.uint8(i) for i in range(7))
LOOPBACK, BRIDGE, ROUTED, EXTERNAL, NONE = (np.uint8(i) for i in range(5))
#: Why a flow was not delivered, indexed by code (the ``reason`` result column;
#: ``docs/dataplane.md`` documents each). Code 0 is "no reason": a delivered or
#: egress flow, written as null.
REASONS = (
    "",                   # 0: delivered or egress (null in the results)
    "no-listener",        # refused: nothing listens on the final pod's port
    "no-endpoints",       # rejected: the service has no endpoints at all
    "no-local-endpoint",  # dropped: a Local traffic policy with no endpoint on the receiving node
    "port-not-served",    # rejected: a service address on a port it does not serve
    "no-route",           # dropped: no route (or no node to receive it)
    "no-such-pod",        # dropped: routed to a node whose bridge has no pod with that address
    "martian",            # dropped: a loopback address arriving from outside a pod
    "policy-ingress",     # denied: the destination's NetworkPolicies allow no rule for it
    "policy-egress",      # denied: the source's NetworkPolicies allow no rule for it
    "conntrack-full",     # dropped: the node's conntrack table is full
    "no-dns-answer",      # unresolved: dst_name has no DNS answer
    "node-not-in-input",  # dropped: the pod's node is not in the cluster input
)
(R_NONE, R_NO_LISTENER, R_NO_ENDPOINTS, R_NO_LOCAL_ENDPOINT, R_PORT_NOT_SERVED, R_NO_ROUTE, R_NO_SUCH_POD,
 R_MARTIAN, R_POLICY_INGRESS, R_POLICY_EGRESS, R_CONNTRACK_FULL, R_NO_DNS_ANSWER,
 R_NODE_NOT_IN_INPUT) = (np.uint8(i) for i in range(13))
#: Verdict of a flow no stage has decided yet.
PENDING = np.uint8(255)
#: "No such index" for node, pod and service columns.
NO_INDEX = np.int32(-1)

#: IANA protocol numbers fastpath knows.
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
