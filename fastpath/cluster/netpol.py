"""``networking.k8s.io/v1`` NetworkPolicy: the model and its parser.

What fastpath keeps of a NetworkPolicy, validated (``../shared/spec/kubernetes-dataplane.md``
§6, ``k8s.io/api/networking/v1/types.go``):

* ``spec.podSelector`` (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist;
  empty = every pod of the policy's namespace);
* ``spec.policyTypes``, explicit, or implied: ``Ingress``, plus ``Egress`` when the
  policy has egress rules;
* ``spec.ingress[].from[]`` / ``spec.egress[].to[]`` peers: ``podSelector`` (pods of the
  policy's namespace), ``namespaceSelector`` (every pod of the matching namespaces),
  both in one peer (AND), or ``ipBlock`` (``cidr`` minus ``except``);
* ``ports[]``: ``protocol`` (TCP default, UDP, SCTP), ``port`` by number or by name
  (resolved on the destination pod), ``endPort`` (a range; needs a numeric port).

A malformed policy raises :class:`~fastpath.errors.FastpathError` through the loader
with one line naming the file, the policy and the field path, e.g.
``np.yaml: NetworkPolicy shop/allow-web: spec.ingress[0].from[1]: ipBlock cannot be combined
with podSelector or namespaceSelector``. Things the API server accepts but fastpath cannot
model (IPv6 blocks, host bits set in a CIDR) are noted in the cluster's warnings.

The per-flow semantics live in :mod:`fastpath.stages.policy` (compiled tables) and in
the slow twin ``tests/naive/policy.py`` (these objects, read directly).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..addr import parse_cidr, prefix_mask
from ..errors import FastpathError
from .model import PROTO_NUMBERS

#: The label the API server puts on every namespace (Kubernetes >= 1.21).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: Label selector operators.
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
#: A port name (IANA_SVC_NAME: 1-15 lowercase letters, digits, '-', at least one letter).
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


class PolicyError(Exception):
    """A problem inside one policy; the loader adds file and policy name (the message starts with the field path)."""


# --------------------------------------------------------------------------- model

@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    op: str                              #: In, NotIn, Exists, DoesNotExist
    values: frozenset = frozenset()

    def matches(self, labels: dict) -> bool:
        if self.op == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.op == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.op == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    """A ``metav1.LabelSelector``: every ``matchLabels`` pair and every expression must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        """The empty selector ``{}``, which matches everything."""
        return not self.match_labels and not self.expressions

    def matches(self, labels: dict) -> bool:
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for r in self.expressions:
            if not r.matches(labels):
                return False
        return True

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.expressions:
            if r.op in ("In", "NotIn"):
                parts.append(f"{r.key} {r.op.lower()} ({','.join(sorted(r.values))})")
            else:
                parts.append(("" if r.op == "Exists" else "!") + r.key)
        return "{" + ", ".join(parts) + "}" if parts else "{}"


@dataclass(frozen=True)
class IPBlock:
    """``cidr`` minus every ``except``; ``cidr`` None: an IPv6 block (matches no IPv4 address)."""

    cidr: tuple[int, int] | None
    excepts: tuple[tuple[int, int], ...] = ()

    def contains(self, ip: int) -> bool:
        if self.cidr is None:
            return False
        net, length = self.cidr
        if ip & prefix_mask(length) != net:
            return False
        return not any(ip & prefix_mask(el) == en for en, el in self.excepts)


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: pods (selectors) or addresses (``ip_block``)."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """One ``ports`` entry: ``port`` None = every port of the protocol; a str is a port name."""

    proto: int
    port: int | str | None = None
    end_port: int | None = None

    def __str__(self) -> str:
        from .model import PROTO_NAMES
        p = PROTO_NAMES[self.proto]
        if self.port is None:
            return f"{p} (all ports)"
        if self.end_port is not None:
            return f"{p} {self.port}-{self.end_port}"
        return f"{p} {self.port}"


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule. ``peers`` None: every peer; ``ports`` None: every port."""

    peers: tuple[Peer, ...] | None
    ports: tuple[PolicyPort, ...] | None


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...]            #: rules, meaningful when ``affects_ingress``
    egress: tuple[Rule, ...]
    affects_ingress: bool                #: policyTypes holds Ingress (explicit or implied)
    affects_egress: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Namespace:
    """A namespace and its labels (``kubernetes.io/metadata.name`` always among them)."""

    name: str
    labels: dict = field(default_factory=dict, compare=False, hash=False)


def namespace_labels(cluster) -> dict[str, dict]:
    """Labels of every namespace the cluster names (objects, pods, policies).

    ``Namespace`` objects give their labels (``cluster.namespaces``, a list of
    objects with ``name`` and ``labels``, or a name -> labels mapping); every
    namespace carries ``kubernetes.io/metadata.name: <name>`` as the API server
    sets it; a namespace only pods or policies name has just that label.
    """
    out: dict[str, dict] = {}
    given = getattr(cluster, "namespaces", None) or ()
    items = given.items() if isinstance(given, dict) else ((n.name, n.labels) for n in given)
    for name, labels in items:
        out[name] = {**(labels or {}), NAMESPACE_NAME_LABEL: name}
    for p in cluster.pods:
        out.setdefault(p.namespace, {NAMESPACE_NAME_LABEL: p.namespace})
    for pol in getattr(cluster, "policies", None) or ():
        out.setdefault(pol.namespace, {NAMESPACE_NAME_LABEL: pol.namespace})
    return out


# --------------------------------------------------------------------------- parsing

def _selector(value, what: str) -> LabelSelector:
    if value is None:
        return LabelSelector()
    if not isinstance(value, dict):
        raise PolicyError(f"{what} is not a mapping")
    ml = value.get("matchLabels") or {}
    if not isinstance(ml, dict):
        raise PolicyError(f"{what}.matchLabels is not a mapping")
    pairs = []
    for k, v in ml.items():
        if not isinstance(k, str) or not k:
            raise PolicyError(f"{what}.matchLabels: key {k!r} is not a label key")
        if v is None:
            v = ""
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise PolicyError(f"{what}.matchLabels.{k}: value {v!r} is not a string")
        pairs.append((k, str(v)))
    exprs = []
    me = value.get("matchExpressions") or []
    if not isinstance(me, list):
        raise PolicyError(f"{what}.matchExpressions is not a list")
    for i, e in enumerate(me):
        w = f"{what}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            raise PolicyError(f"{w} is not a mapping")
        key, op, values = e.get("key"), e.get("operator"), e.get("values")
        if not isinstance(key, str) or not key:
            raise PolicyError(f"{w}.key is missing")
        if op not in OPERATORS:
            raise PolicyError(f"{w}.operator {op!r} is not one of {', '.join(OPERATORS)}")
        if values is not None and not isinstance(values, list):
            raise PolicyError(f"{w}.values is not a list")
        values = values or []
        if op in ("In", "NotIn") and not values:
            raise PolicyError(f"{w}.values: operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{w}.values: operator {op} takes no values")
        exprs.append(Requirement(key, op, frozenset(str(v) for v in values)))
    return LabelSelector(tuple(pairs), tuple(exprs))


def _ip_block(value, what: str, notes: list[str]) -> IPBlock:
    if not isinstance(value, dict):
        raise PolicyError(f"{what} is not a mapping")
    text = value.get("cidr")
    if not isinstance(text, str) or not text:
        raise PolicyError(f"{what}.cidr is missing")
    excepts = value.get("except") or []
    if not isinstance(excepts, list):
        raise PolicyError(f"{what}.except is not a list")
    if ":" in text:
        notes.append("ipv6")
        return IPBlock(None)
    cidr = _cidr(text, f"{what}.cidr", notes)
    out = []
    for i, t in enumerate(excepts):
        w = f"{what}.except[{i}]"
        if not isinstance(t, str):
            raise PolicyError(f"{w} {t!r} is not a CIDR")
        if ":" in t:
            continue
        en, el = _cidr(t, w, notes)
        if el < cidr[1] or en & prefix_mask(cidr[1]) != cidr[0]:
            raise PolicyError(f"{w} {t!r} is not inside cidr {text!r}")
        out.append((en, el))
    return IPBlock(cidr, tuple(out))


def _cidr(text: str, what: str, notes: list[str]) -> tuple[int, int]:
    try:
        return parse_cidr(text)
    except FastpathError:
        pass
    try:
        net, length = parse_cidr(text, strict=False)
    except FastpathError as e:
        raise PolicyError(f"{what}: {e}") from None
    notes.append(f"host bits set in {what} {text!r}")
    return net & prefix_mask(length), length


def _peers(value, what: str, notes: list[str]) -> tuple[Peer, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise PolicyError(f"{what} is not a list")
    if not value:
        return None                              # an empty list, like an absent one: every peer
    out = []
    for i, p in enumerate(value):
        w = f"{what}[{i}]"
        if not isinstance(p, dict):
            raise PolicyError(f"{w} is not a mapping")
        has = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if p.get(k) is not None]
        if not has:
            raise PolicyError(f"{w}: a peer needs podSelector, namespaceSelector or ipBlock")
        if "ipBlock" in has and len(has) > 1:
            raise PolicyError(f"{w}: ipBlock cannot be combined with podSelector or namespaceSelector")
        if "ipBlock" in has:
            out.append(Peer(ip_block=_ip_block(p["ipBlock"], f"{w}.ipBlock", notes)))
            continue
        ps = _selector(p["podSelector"], f"{w}.podSelector") if "podSelector" in has else None
        ns = _selector(p["namespaceSelector"], f"{w}.namespaceSelector") if "namespaceSelector" in has else None
        out.append(Peer(pod_selector=ps, namespace_selector=ns))
    return tuple(out)


def _ports(value, what: str) -> tuple[PolicyPort, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise PolicyError(f"{what} is not a list")
    if not value:
        return None                              # empty list: every port
    out = []
    for i, p in enumerate(value):
        w = f"{what}[{i}]"
        if not isinstance(p, dict):
            raise PolicyError(f"{w} is not a mapping")
        proto_name = p.get("protocol") or "TCP"
        proto = PROTO_NUMBERS.get(proto_name)
        if proto is None:
            raise PolicyError(f"{w}.protocol {proto_name!r} is not TCP, UDP or SCTP")
        port = p.get("port")
        end = p.get("endPort")
        if port is not None:
            if isinstance(port, bool):
                raise PolicyError(f"{w}.port {port!r} is neither a port number nor a port name")
            if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                port = int(port)
                if not 0 < port < 65536:
                    raise PolicyError(f"{w}.port {port} is not a port number 1-65535")
            elif isinstance(port, str) and _PORT_NAME.match(port) and any(c.isalpha() for c in port) \
                    and "--" not in port:
                pass
            else:
                raise PolicyError(f"{w}.port {port!r} is neither a port number 1-65535 nor a port name "
                                  f"(IANA_SVC_NAME: up to 15 lowercase letters, digits and '-')")
        if end is not None:
            if isinstance(end, bool) or not isinstance(end, int) or not 0 < end < 65536:
                raise PolicyError(f"{w}.endPort {end!r} is not a port number 1-65535")
            if not isinstance(port, int):
                raise PolicyError(f"{w}.endPort needs a numeric port (got port {port!r})")
            if end < port:
                raise PolicyError(f"{w}.endPort {end} is below port {port}")
        out.append(PolicyPort(proto, port, end))
    return tuple(out)


def _rules(value, what: str, peer_field: str, notes: list[str]) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PolicyError(f"{what} is not a list")
    out = []
    for i, r in enumerate(value):
        w = f"{what}[{i}]"
        if r is None:
            r = {}
        if not isinstance(r, dict):
            raise PolicyError(f"{w} is not a mapping")
        out.append(Rule(_peers(r.get(peer_field), f"{w}.{peer_field}", notes), _ports(r.get("ports"), f"{w}.ports")))
    return tuple(out)


def parse_network_policy(obj: dict, namespace: str, name: str, notes: list[str] | None = None) -> NetworkPolicy:
    """Validate one NetworkPolicy object (raises :class:`PolicyError` naming the field path).

    ``notes`` collects things accepted but not modelled (``"ipv6"``, host bits set).
    """
    notes = [] if notes is None else notes
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise PolicyError("spec is not a mapping")
    sel = _selector(spec.get("podSelector"), "spec.podSelector")
    ingress = _rules(spec.get("ingress"), "spec.ingress", "from", notes)
    egress = _rules(spec.get("egress"), "spec.egress", "to", notes)
    types = spec.get("policyTypes")
    if types is None or types == []:
        has_in, has_eg = True, bool(egress)
    else:
        if not isinstance(types, list):
            raise PolicyError("spec.policyTypes is not a list")
        for i, t in enumerate(types):
            if t not in ("Ingress", "Egress"):
                raise PolicyError(f"spec.policyTypes[{i}] {t!r} is not Ingress or Egress")
        has_in, has_eg = "Ingress" in types, "Egress" in types
    return NetworkPolicy(namespace=namespace, name=name, pod_selector=sel, ingress=ingress, egress=egress,
                         affects_ingress=has_in, affects_egress=has_eg)


def parse_namespace(obj: dict, name: str) -> Namespace:
    """A Namespace object's labels (plus ``kubernetes.io/metadata.name``)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise PolicyError("metadata.labels is not a mapping")
    return Namespace(name, {**{str(k): str(v) for k, v in labels.items()}, NAMESPACE_NAME_LABEL: name})


def policy_warnings(notes: list[str], first: str | None) -> list[str]:
    """Warnings for what :func:`parse_network_policy` accepted but does not model."""
    out = []
    v6 = notes.count("ipv6")
    if v6:
        out.append(f"{v6} IPv6 ipBlock{'s' * (v6 != 1)} in NetworkPolicies match no IPv4 address (fastpath is IPv4)")
    bits = [n for n in notes if n != "ipv6"]
    if bits:
        out.append(f"{len(bits)} ipBlock CIDR{'s' * (len(bits) != 1)} with host bits set, read as their network "
                   f"(e.g. {bits[0]}{' in ' + first if first else ''})")
    return out


# --------------------------------------------------------------------------- loader hook

class ExtraKinds:
    """The loader's reader for NetworkPolicy, Namespace and workload objects.

    :func:`fastpath.cluster.load.load_cluster` hands every object of these kinds
    to :meth:`add` and calls :meth:`finish` on the built cluster, which sets
    ``cluster.policies``, ``cluster.namespaces`` (where the loader did not) and
    ``cluster.workloads`` (:mod:`fastpath.cluster.workloads`).
    """

    #: Kinds read here.
    KINDS = frozenset({"NetworkPolicy", "Namespace", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
                       "ReplicationController", "Job", "CronJob"})

    def __init__(self) -> None:
        self.policies: list[NetworkPolicy] = []
        self.namespaces: list[Namespace] = []
        self.workloads: list = []
        self.notes: list[str] = []
        self._first_note: str | None = None
        self._origin: dict[tuple[str, str], str] = {}

    def add(self, src: str, obj: dict, kind: str) -> None:
        """Validate one object (raises FastpathError naming file, object and field)."""
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise FastpathError(f"{src}: {kind} without metadata.name")
        ns = "" if kind == "Namespace" else (meta.get("namespace") or "default")
        ident = f"{ns}/{name}" if ns else name
        key = (kind, ident)
        if key in self._origin:
            first = self._origin[key]
            raise FastpathError(f"{src}: {kind} {ident}: defined twice{'' if first == src else f' (first in {first})'}")
        self._origin[key] = src
        try:
            if kind == "NetworkPolicy":
                before = len(self.notes)
                self.policies.append(parse_network_policy(obj, ns, name, self.notes))
                if len(self.notes) > before and self._first_note is None:
                    self._first_note = f"{src}: NetworkPolicy {ident}"
            elif kind == "Namespace":
                self.namespaces.append(parse_namespace(obj, name))
            else:
                from .workloads import parse_workload
                self.workloads.append(parse_workload(obj, kind, ns, name))
        except PolicyError as e:
            raise FastpathError(f"{src}: {kind} {ident}: {e}") from None
        except FastpathError as e:
            raise FastpathError(f"{src}: {kind} {ident}: {e}") from None
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            raise FastpathError(f"{src}: {kind} {ident}: malformed object ({type(e).__name__}: {e})") from None

    def finish(self, cluster) -> None:
        """Attach what was read to ``cluster`` (and say what was accepted but not modelled)."""
        cluster.policies = self.policies
        if self.namespaces:                      # Namespace objects read here: their labels win
            given = getattr(cluster, "namespaces", None)
            merged = dict(given) if isinstance(given, dict) else {}
            for n in self.namespaces:
                merged[n.name] = n.labels
            cluster.namespaces = merged
        cluster.workloads = self.workloads
        cluster.warnings.extend(policy_warnings(self.notes, self._first_note))
