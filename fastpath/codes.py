"""Integer codes the kernels write, and their names in the results.

Kernels work on these small integers; the results writer turns them into
Arrow dictionaries with :data:`VERDICTS` and :data:`PATHS` as dictionaries.
"""
from __future__ import annotations

import numpy as np

#: Verdict names, indexed by code.
VERDICTS = ("delivered", "refused", "rejected", "dropped", "egress", "unresolved")
#: Path names, indexed by code.
PATHS = ("loopback", "bridge", "routed", "external", "none")

DELIVERED, REFUSED, REJECTED, DROPPED, EGRESS, UNRESOLVED = (np.uint8(i) for i in range(6))
LOOPBACK, BRIDGE, ROUTED, EXTERNAL, NONE = (np.uint8(i) for i in range(5))
#: Verdict of a flow no stage has decided yet.
PENDING = np.uint8(255)
#: "No such index" for node, pod and service columns.
NO_INDEX = np.int32(-1)

#: IANA protocol numbers fastpath knows.
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
