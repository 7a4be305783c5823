"""The validated cluster: what fastpath keeps of the Kubernetes objects.

Plain frozen dataclasses, one per kind, with addresses already as integers.
This is the control plane's view; :mod:`fastpath.cluster.compile` turns it
into the flat tables the kernels read. Built by
:func:`fastpath.cluster.load.load_cluster` (from files) or
:func:`fastpath.cluster.load.cluster_from_objects` (from parsed objects).
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: IP protocol numbers by the names Kubernetes uses.
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
#: And back.
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


@dataclass(frozen=True)
class Node:
    name: str
    internal_ip: int | None          #: status.addresses InternalIP (IPv4 as int)
    external_ip: int | None          #: status.addresses ExternalIP
    pod_cidrs: tuple[tuple[int, int], ...]  #: spec.podCIDR(s), IPv4 only: (network, length)
    zone: str | None                 #: label topology.kubernetes.io/zone
    labels: dict = field(default_factory=dict, compare=False, hash=False)
    #: ``status.capacity.cpu`` as whole CPUs (millicores rounded up; None: not given).
    #: kube-proxy sizes the node's conntrack table from it.
    cpu: int | None = None
    #: False for a node a replay with cluster events (:mod:`fastpath.live`) keeps a place
    #: for while it does not exist (not added yet, or deleted): it has no addresses, pods
    #: bound to it are on a node not in the input, and a deleted node's pod CIDRs route
    #: to nowhere (``docs/events.md``).
    present: bool = True


@dataclass(frozen=True)
class ContainerPort:
    container: str
    port: int                        #: containerPort
    proto: int                       #: 6, 17 or 132
    name: str | None
    #: ``hostPort``: the CNI portmap plugin DNATs this port at every address of the
    #: pod's node to ``port`` (None: not given)
    host_port: int | None = None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str | None                 #: spec.nodeName (None: not scheduled)
    host_network: bool
    ip: int | None                   #: status.podIP(s), first IPv4 (node IP for hostNetwork)
    ready: bool                      #: Ready condition True
    terminating: bool                #: metadata.deletionTimestamp set
    ports: tuple[ContainerPort, ...]
    labels: dict = field(default_factory=dict, compare=False, hash=False)
    #: False when ``spec.nodeName`` names a node the input does not hold (a namespace
    #: dump, a single pod): the pod is kept, flows to it are ``dropped`` with reason
    #: ``node-not-in-input``. Such names are also in :attr:`Cluster.missing_nodes`.
    node_known: bool = True

    @property
    def key(self) -> str:
        """``namespace/name``, the name results carry."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    port: int
    proto: int
    target_port: int | str           #: number, or a container port name
    node_port: int | None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str                        #: ClusterIP, NodePort, LoadBalancer, ExternalName
    cluster_ips: tuple[int, ...]     #: empty for headless (clusterIP None) and ExternalName
    headless: bool
    ports: tuple[ServicePort, ...]
    selector: dict | None            #: None: no selector (endpoints only from slices)
    external_ips: tuple[int, ...]
    lb_ips: tuple[int, ...]          #: status.loadBalancer.ingress[].ip
    session_affinity: bool           #: sessionAffinity ClientIP
    affinity_timeout: int            #: seconds (default 10800)
    external_policy: str             #: externalTrafficPolicy: Cluster | Local
    internal_policy: str             #: internalTrafficPolicy: Cluster | Local
    traffic_distribution: str | None  #: e.g. PreferClose
    external_name: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[int, ...]
    ready: bool
    serving: bool
    terminating: bool
    node: str | None
    zone: str | None
    hint_zones: tuple[str, ...]      #: hints.forZones[].name
    target_pod: str | None           #: targetRef namespace/name where kind Pod
    hint_nodes: tuple[str, ...] = ()  #: hints.forNodes[].name (trafficDistribution PreferSameNode)


@dataclass(frozen=True)
class EndpointSlicePort:
    name: str | None
    port: int
    proto: int


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str                     #: label kubernetes.io/service-name
    ports: tuple[EndpointSlicePort, ...]
    endpoints: tuple[Endpoint, ...]
    #: True when mirrored from a legacy ``Endpoints`` object (``subsets[]``), as the
    #: EndpointSliceMirroring controller does, for a service given without slices.
    from_endpoints: bool = False


@dataclass(frozen=True)
class Masquerade:
    """ip-masq-agent's configuration (ConfigMap ``kube-system/ip-masq-agent``, key ``config``).

    Pod traffic to a destination inside ``non_masquerade_cidrs`` keeps the pod's
    source address; traffic elsewhere is SNATed to the node IP.
    """

    non_masquerade_cidrs: tuple[tuple[int, int], ...]  #: (network, length), IPv4 only
    masq_link_local: bool            #: masqLinkLocal: also SNAT 169.254.0.0/16 (default False)
    source: str = ""                 #: where it was read (``file: ConfigMap kube-system/ip-masq-agent``)


def node_addresses(nodes: list[Node]) -> tuple[list[int], list[int]]:
    """Every node's InternalIP and ExternalIP with the node's index: ``(addresses, nodes)``."""
    ips, idx = [], []
    for i, n in enumerate(nodes):
        for ip in (n.internal_ip, n.external_ip):
            if ip is not None:
                ips.append(ip)
                idx.append(i)
    return ips, idx


@dataclass
class Cluster:
    """Every object fastpath uses, validated, in input order."""

    nodes: list[Node]
    pods: list[Pod]
    services: list[Service]
    slices: list[EndpointSlice]
    #: Notes said once while loading (skipped kinds, Calico-style pod IPs, ...).
    warnings: list[str] = field(default_factory=list)
    #: Cluster DNS domain.
    domain: str = "cluster.local"
    #: Every namespace: name -> labels. From ``Namespace`` objects, plus every namespace
    #: that pods or services name, with only ``kubernetes.io/metadata.name`` (NetworkPolicy
    #: ``namespaceSelector`` selects on these labels).
    namespaces: dict[str, dict] = field(default_factory=dict)
    #: Node names that pods' ``spec.nodeName`` give but the input has no Node for -> pod count.
    missing_nodes: dict[str, int] = field(default_factory=dict)
    #: ip-masq-agent's configuration when the input holds its ConfigMap, else None.
    masquerade: Masquerade | None = None
    #: NetworkPolicies (:class:`fastpath.cluster.netpol.NetworkPolicy`), in input order.
    policies: list = field(default_factory=list)
    #: Workload objects (:class:`fastpath.cluster.workloads.Workload`): Deployments, StatefulSets, ...
    workloads: list = field(default_factory=list)
    #: kube-proxy's ``clusterCIDR`` (ConfigMap ``kube-system/kube-proxy``), when given.
    cluster_cidr: tuple[int, int] | None = None
    #: kube-proxy's conntrack sizing ``(maxPerCore, min)`` (the ConfigMap's ``conntrack`` block, null
    #: fields as their defaults), when it sets one; None: the defaults (32768, 131072). Read by
    #: :func:`fastpath.stages.conntrack.conntrack_max`; ``maxPerCore`` 0 leaves the kernel's default.
    conntrack_sizing: tuple[int, int] | None = None
    #: Kinds the loader skipped -> object count.
    skipped_kinds: dict[str, int] = field(default_factory=dict)
    #: Load problems by kind (a short key such as ``duplicate-container-port``) -> every
    #: object it concerns; :attr:`warnings` holds one rendered line per key.
    problems: dict[str, list[str]] = field(default_factory=dict)
    #: The file or directory it was loaded from ("" when built from objects).
    source: str = ""

    def summary(self) -> str:
        return (f"{len(self.nodes)} nodes, {len(self.pods)} pods, "
                f"{len(self.services)} services, {len(self.slices)} endpoint slices")

    def __repr__(self) -> str:
        # a one-liner: the default dataclass repr printed every object (almost a megabyte)
        return (f"Cluster({len(self.nodes):,} nodes, {len(self.pods):,} pods, {len(self.services):,} services, "
                f"{len(self.slices):,} endpoint slices, {len(self.warnings):,} warnings, domain {self.domain})")
