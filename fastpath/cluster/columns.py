"""A cluster's pods and endpoints as columns: one pass over the objects, shared by the compilers.

Compiling a 5,000-node cluster reads the same attributes of 150,000 pods and
125,000 endpoints in several places (the forwarding tables, the service map,
what listens, the hostPort DNAT, the cache's light fields). :func:`pod_columns`
and :func:`endpoint_columns` read each attribute once into a numpy array (or a
list where the value is a string) and keep the result for the lists they were
built from: a second call with the same lists (the same objects, in the same
order) returns the same columns without a pass. Any change to a list (an object
replaced, added or removed) makes a new pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np


@dataclass(frozen=True)
class PodColumns:
    """Every pod's fields the compilers read, in pod order (``P`` pods, ``K`` declared ports)."""

    names: list[str]          #: ``namespace/name``
    index: dict[str, int]     #: ``namespace/name`` -> pod (the last of a repeated name)
    ns_names: list[str]       #: namespaces in order of first use
    ns: np.ndarray            #: int32[P] index into ``ns_names``
    node_names: list[str]     #: the cluster's nodes
    node_index: dict[str, int]  #: node name -> node (nodes present only)
    node: np.ndarray          #: int32[P] node index (-1: unscheduled, or a node not in the input)
    node_given: np.ndarray    #: bool[P] ``spec.nodeName`` set
    ip: np.ndarray            #: uint32[P] (0 where none)
    has_ip: np.ndarray        #: bool[P]
    host: np.ndarray          #: bool[P] ``hostNetwork``
    port_pod: np.ndarray      #: int64[K] the pod of each declared container port, pods in order
    port_proto: np.ndarray    #: int64[K]
    port_num: np.ndarray      #: int64[K] containerPort
    port_host: np.ndarray     #: int64[K] hostPort (0: none)


@dataclass(frozen=True)
class EndpointColumns:
    """Every endpoint of a list of EndpointSlices, in slice order (``E`` endpoints, ``A`` addresses)."""

    slices: list              #: the slices, as given
    endpoints: list           #: the :class:`~fastpath.cluster.model.Endpoint` objects
    slice_start: np.ndarray   #: int64[S + 1] first endpoint of each slice
    ip: np.ndarray            #: int64[E] first address (0 where none)
    valid: np.ndarray         #: bool[E] has an address
    ready: np.ndarray         #: bool[E]
    serving: np.ndarray       #: bool[E]
    terminating: np.ndarray   #: bool[E]
    node: np.ndarray          #: int32[E] ``nodeName`` as a node index (-1: none, or unknown)
    pod: np.ndarray           #: int32[E] ``targetRef`` pod index (-1: none, or unknown)
    zone: list                #: ``zone`` (str or None)
    hint_zones: list          #: ``hints.forZones`` names (tuples)
    addr: np.ndarray          #: int64[A] every address of every endpoint, in order
    addr_ep: np.ndarray       #: int64[A] the endpoint of each address
    port_off: np.ndarray      #: int64[S + 1] CSR offsets of each slice's numbered ports
    port_proto: np.ndarray    #: int64 protocol of each slice port with a port number
    port_num: np.ndarray      #: int64 its port


class _Memo:
    """The last result and the lists it was built from (same objects, same order: same result).

    Kept as one tuple, replaced whole, so a reader in another thread never pairs one
    call's lists with another's result.
    """

    def __init__(self) -> None:
        self.state: tuple = ((), (), None)

    def get(self, key: tuple, lists: tuple):
        old_key, copies, value = self.state
        if value is None or len(key) != len(old_key) or any(a is not b for a, b in zip(key, old_key)):
            return None
        # list == compares item by item, identical objects at once (1 ms for 150,000 pods)
        if any(len(a) != len(b) or a != b for a, b in zip(lists, copies)):
            return None
        return value

    def put(self, key: tuple, lists: tuple, value):
        self.state = (key, tuple(list(x) for x in lists), value)
        return value


_PODS = _Memo()
_ENDPOINTS = _Memo()


def pod_columns(pods: list, nodes: list) -> PodColumns:
    """The columns of ``pods`` (node indices from ``nodes``); see :class:`PodColumns`."""
    found = _PODS.get((pods, nodes), (pods, nodes))
    if found is not None:
        return found
    return _PODS.put((pods, nodes), (pods, nodes), _pod_columns(pods, nodes))


def _pod_columns(pods: list, nodes: list) -> PodColumns:
    n = len(pods)
    node_names = [nd.name for nd in nodes]
    # a node kept in place while absent (fastpath.live) holds no pod
    node_index = {nd.name: i for i, nd in enumerate(nodes) if getattr(nd, "present", True)}
    ns_list = [p.namespace for p in pods]
    names = [f"{ns}/{p.name}" for ns, p in zip(ns_list, pods)]
    ns_names = list(dict.fromkeys(ns_list))
    ns_of = dict(zip(ns_names, range(len(ns_names))))
    node_list = [p.node for p in pods]
    ips = [p.ip for p in pods]
    # ports: replicas of a template share one tuple of ContainerPorts, so read each tuple once
    port_lists = [p.ports for p in pods]
    ids = list(map(id, port_lists))
    uniq = dict(zip(ids, port_lists))                     # id -> tuple, in order of first use
    pos = dict(zip(uniq, range(len(uniq))))
    code = np.fromiter(map(pos.__getitem__, ids), dtype=np.int64, count=n)
    u_len = np.fromiter(map(len, uniq.values()), dtype=np.int64, count=len(uniq))
    u_cps = list(chain.from_iterable(uniq.values()))
    u_proto = np.array([cp.proto for cp in u_cps], dtype=np.int64)
    u_port = np.array([cp.port for cp in u_cps], dtype=np.int64)
    u_host = np.array([getattr(cp, "host_port", None) or 0 for cp in u_cps], dtype=np.int64)
    u_off = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.cumsum(u_len, out=u_off[1:])
    per_pod = u_len[code]
    total = int(per_pod.sum())
    port_pod = np.repeat(np.arange(n, dtype=np.int64), per_pod)
    before = np.cumsum(per_pod) - per_pod
    take = np.repeat(u_off[:-1][code] - before, per_pod) + np.arange(total, dtype=np.int64)
    return PodColumns(
        names=names, index=dict(zip(names, range(n))), ns_names=ns_names,
        ns=np.fromiter(map(ns_of.__getitem__, ns_list), dtype=np.int32, count=n),
        node_names=node_names, node_index=node_index,
        node=np.fromiter(map(node_index.get, node_list, repeat(-1)), dtype=np.int32, count=n),
        node_given=np.array([x is not None for x in node_list], dtype=bool),
        ip=np.array([0 if x is None else x for x in ips], dtype=np.uint32),
        has_ip=np.array([x is not None for x in ips], dtype=bool),
        host=np.array([p.host_network for p in pods], dtype=bool),
        port_pod=port_pod, port_proto=u_proto[take], port_num=u_port[take], port_host=u_host[take])


def endpoint_columns(slices: list, pods: PodColumns) -> EndpointColumns:
    """The columns of every endpoint of ``slices`` (pods and nodes indexed by ``pods``)."""
    found = _ENDPOINTS.get((slices, pods), (slices,))
    if found is not None:
        return found
    return _ENDPOINTS.put((slices, pods), (slices,), _endpoint_columns(slices, pods))


def _endpoint_columns(slices: list, pods: PodColumns) -> EndpointColumns:
    eps = [e for sl in slices for e in sl.endpoints]
    n = len(eps)
    slice_start = np.zeros(len(slices) + 1, dtype=np.int64)
    np.cumsum([len(sl.endpoints) for sl in slices], out=slice_start[1:])
    addrs = [e.addresses for e in eps]
    n_addr = np.fromiter(map(len, addrs), dtype=np.int64, count=n)
    addr = np.fromiter(chain.from_iterable(addrs), dtype=np.int64, count=int(n_addr.sum()))
    valid = n_addr > 0
    first = np.zeros(n, dtype=np.int64)
    first[valid] = addr[(np.cumsum(n_addr) - n_addr)[valid]]
    sports = [[(p.proto, p.port) for p in sl.ports if p.port] for sl in slices]
    port_off = np.zeros(len(slices) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sports], out=port_off[1:])
    flat = list(chain.from_iterable(sports))
    return EndpointColumns(
        slices=list(slices), endpoints=eps, slice_start=slice_start, ip=first, valid=valid,
        ready=np.array([e.ready for e in eps], dtype=bool),
        serving=np.array([e.serving for e in eps], dtype=bool),
        terminating=np.array([e.terminating for e in eps], dtype=bool),
        node=np.fromiter(map(pods.node_index.get, [e.node for e in eps], repeat(-1)), dtype=np.int32, count=n),
        pod=np.fromiter(map(pods.index.get, [e.target_pod for e in eps], repeat(-1)), dtype=np.int32, count=n),
        zone=[e.zone for e in eps], hint_zones=[e.hint_zones for e in eps],
        addr=addr, addr_ep=np.repeat(np.arange(n, dtype=np.int64), n_addr),
        port_off=port_off, port_proto=np.array([p[0] for p in flat], dtype=np.int64),
        port_num=np.array([p[1] for p in flat], dtype=np.int64))


def forget() -> None:
    """Drop the kept columns (a benchmark timing a first compile; tests)."""
    global _PODS, _ENDPOINTS
    _PODS, _ENDPOINTS = _Memo(), _Memo()
