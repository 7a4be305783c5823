"""The loader's fast path: a kubectl ``List`` decoded straight into typed records.

:func:`decode_list` decodes a JSON ``List`` with msgspec into :class:`msgspec.Struct`
records for the kinds a big dump is made of (Pod, Node, Service, EndpointSlice),
holding only the fields the loader reads: every other field is skipped by the
decoder, never built. :class:`TypedReaders` turns those records into model objects,
each object visited once. Any other kind in the list is decoded as a plain mapping
(one item at a time) and goes the usual way.

This path must give what the plain path gives (JSON decoded to dicts, read by
:mod:`fastpath.cluster.load_kinds`), warnings and errors included. It never decides
anything unusual itself: where a field has an unexpected type the typed decoder
refuses the item (which is then decoded as a mapping), and where a reader meets
anything unusual (a bad value, an object given twice) it raises :class:`Redo`, and
the loader loads the input again, the plain way, which says what is wrong.
"""
from __future__ import annotations

import re
import socket
import sys
from typing import Any, Union

import msgspec
from msgspec import UNSET, Struct

from ..addr import ip_to_int
from .load_kinds import TERMINAL_PHASES, _node, _object_new, _PodParser, _port, _proto, _service
from .model import Endpoint, EndpointSlice, EndpointSlicePort, Pod

_parse_ports = _PodParser._parse_ports

_AF_INET = socket.AF_INET
_inet_pton = socket.inet_pton


class Redo(Exception):
    """The typed records hold something the fast readers leave to the plain path."""


# --------------------------------------------------------------------------- the records
# Only the fields the loader reads. A field typed as Any is read by the plain
# reader (or its truth value taken), as the plain path would; every other type is
# what a well-formed object holds: the decoder refuses anything else.

class _S(Struct, gc=False):
    """A record the collector need not track (no record refers back to another)."""


#: A field kept as its JSON text, decoded when read (an empty text: not given).
_NOT_GIVEN = msgspec.Raw(b"")


class _Meta(_S):
    name: Union[str, None] = None
    namespace: Union[str, None] = None
    labels: Union[dict[str, str], None] = None


class _PodMeta(_S):
    name: Union[str, None] = None
    namespace: Union[str, None] = None
    #: the labels' JSON text: replicas of a template give the same text, read once (and
    #: their pods share one mapping)
    labels: msgspec.Raw = _NOT_GIVEN
    deletionTimestamp: Any = None


class _NameMeta(_S):
    name: Union[str, None] = None
    namespace: Union[str, None] = None


class _NodeMeta(_S):
    name: Union[str, None] = None
    labels: Any = None


class _ContainerPort(_S, frozen=True):
    containerPort: Union[int, None] = None
    protocol: Union[str, None] = None
    name: Union[str, None] = None
    hostPort: Union[int, None] = None


class _Container(_S, frozen=True):
    name: Union[str, None] = None
    ports: Union[tuple[_ContainerPort, ...], None] = None
    restartPolicy: Union[str, None] = None


class _PodSpec(_S):
    nodeName: Union[str, None] = None
    hostNetwork: Union[bool, None] = None
    #: the containers' JSON text: replicas of one template give the same text, read once
    containers: msgspec.Raw = _NOT_GIVEN
    initContainers: msgspec.Raw = _NOT_GIVEN


class _PodIP(_S):
    ip: Union[str, None] = None


class _Condition(_S):
    type: Union[str, None] = None
    status: Union[str, None] = None


class _PodStatus(_S):
    podIP: Union[str, None] = None
    podIPs: msgspec.Raw = _NOT_GIVEN        # read only where podIP is not an IPv4 address
    phase: Union[str, None] = None
    conditions: msgspec.Raw = _NOT_GIVEN    # the same text in most pods of a cluster just started


class PodRecord(_S, tag_field="kind", tag="Pod"):
    metadata: Union[_PodMeta, None] = None
    spec: Union[_PodSpec, None] = None
    status: Union[_PodStatus, None] = None


class _NodeSpec(_S):
    podCIDR: Any = None
    podCIDRs: Any = None


class _NodeStatus(_S):
    addresses: Any = None
    capacity: Any = None


class NodeRecord(_S, tag_field="kind", tag="Node"):
    metadata: Union[_NodeMeta, None] = None
    spec: Union[_NodeSpec, None] = None
    status: Union[_NodeStatus, None] = None


class ServiceRecord(_S, tag_field="kind", tag="Service"):
    metadata: Union[_NameMeta, None] = None
    spec: Any = None
    status: Any = None


class _EndpointConditions(_S):
    ready: Any = None
    serving: Any = None
    terminating: Any = None


class _Named(_S):
    name: Union[str, None] = None


class _Hints(_S):
    forZones: Union[list[_Named], None] = None
    forNodes: Union[list[_Named], None] = None


class _TargetRef(_S):
    kind: Union[str, None] = None
    name: Union[str, None] = None
    namespace: Union[str, None] = None


class _Endpoint(_S):
    addresses: Union[list[str], None] = None
    conditions: Union[_EndpointConditions, None] = None
    zone: Union[str, None] = None
    nodeName: Union[str, None] = None
    topology: Any = UNSET
    hints: Union[_Hints, None] = None
    targetRef: Union[_TargetRef, None] = None


class _SlicePort(_S):
    name: Union[str, None] = None
    port: Union[int, None] = None
    protocol: Union[str, None] = None


class SliceRecord(_S, tag_field="kind", tag="EndpointSlice"):
    metadata: Union[_Meta, None] = None
    addressType: Union[str, None] = None
    endpoints: Union[list[_Endpoint], None] = None
    ports: Union[list[_SlicePort], None] = None


_Record = Union[PodRecord, NodeRecord, ServiceRecord, SliceRecord]
#: Record type -> its kind.
KIND_OF = {PodRecord: "Pod", NodeRecord: "Node", ServiceRecord: "Service", SliceRecord: "EndpointSlice"}


class _RecordList(Struct, gc=False):
    kind: str
    items: list[_Record]


class _RawList(Struct, gc=False):
    kind: str
    items: list[msgspec.Raw]


_decode_records = msgspec.json.Decoder(_RecordList).decode
_decode_containers = msgspec.json.Decoder(Union[tuple[_Container, ...], None]).decode
_decode_conditions = msgspec.json.Decoder(Union[list[_Condition], None]).decode
_decode_pod_ips = msgspec.json.Decoder(Union[list[_PodIP], None]).decode
_decode_labels = msgspec.json.Decoder(Union[dict[str, str], None]).decode
_decode_raw_list = msgspec.json.Decoder(_RawList).decode
_decode_record = msgspec.json.Decoder(_Record).decode
_decode_any = msgspec.json.Decoder().decode


class TypedList:
    """A decoded ``List``: ``kind`` and ``items`` (records, and mappings for other kinds)."""

    __slots__ = ("kind", "items")

    def __init__(self, kind: str, items: list) -> None:
        self.kind = kind
        self.items = items


# --------------------------------------------------------------------------- decoding

#: A run of digits, and two sampled digits in a row (see :func:`_long_digits`).
_DIGITS = re.compile(rb"[0-9]+")
_DIGIT_PAIR = re.compile(rb"(?=[0-9]{2})")


def _long_digits(data: bytes) -> bool:
    """Whether ``data`` may hold a run of more digits than ``int()`` converts (4,300).

    The plain path refuses such a file (json's ``int()``); the typed decoder skips
    unread fields without converting them. A run of ``limit + 1`` digits holds two
    neighbouring offsets that are multiples of ``step = limit // 2``, the first with
    more than ``step`` digits from there on; only the bytes at those offsets are
    looked at (a 64 KB sample of a 139 MB file), then the few runs they start.
    Runs half that long are also reported: the plain path then decides, which is
    never wrong.
    """
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if not limit:
        return False
    step = max(1, limit // 2)
    match = _DIGITS.match
    for pair in _DIGIT_PAIR.finditer(data[::step]):
        at = pair.start() * step
        if match(data, at).end() - at > step:
            return True
    return False


def decode_list(data: bytes) -> TypedList | None:
    """A JSON ``List`` (``{"kind": "...List", "items": [...]}``) as a :class:`TypedList`, or
    None where the plain path must decide (any other shape, a decoding problem, a byte
    sequence the plain path would refuse even in a field nobody reads)."""
    if not data.isascii():
        try:
            data.decode("utf-8")    # the typed decoder does not check the bytes of skipped strings
        except UnicodeDecodeError:
            return None
    if _long_digits(data):
        return None
    try:
        doc = _decode_records(data)
        items = doc.items
    except msgspec.ValidationError:        # another kind, or a field of an unusual type: item by item
        try:
            doc = _decode_raw_list(data)
            items = []
            for raw in doc.items:
                try:
                    items.append(_decode_record(raw))
                except msgspec.ValidationError:
                    items.append(_decode_any(raw))
        except Exception:  # noqa: BLE001 - anything odd: the plain path says what
            return None
    except Exception:  # noqa: BLE001 - bad JSON, nesting too deep, ...: the plain path says what
        return None
    if not doc.kind.endswith("List"):
        return None
    return TypedList(doc.kind, items)


# --------------------------------------------------------------------------- reading

class TypedReaders:
    """Model objects from records; the pods share the plain reader's state (``parser``)."""

    #: JSON texts each cache of texts keeps at least; beyond, it grows only while its
    #: entries are found more often than not (where pods differ, e.g. by timestamps or
    #: a service-account token's volume name, their texts are read one by one)
    TEXTS_KEPT = 4096

    def __init__(self, parser: _PodParser, pods: list) -> None:
        self.parser = parser
        #: (containers, initContainers) records -> (ports, note): replicas of a template share one entry
        self._ports: dict[tuple, tuple] = {}
        #: the same by the containers' JSON text (and the init containers', where given)
        self._ports_by_text: dict[bytes | tuple[bytes, bytes], tuple] = {}
        #: conditions' JSON text -> Ready
        self._ready_by_text: dict[bytes, bool] = {}
        self._slice_ports: dict[tuple, EndpointSlicePort] = {}
        self._node_names = parser.node_names
        self._pods = pods               # the pods read so far, for the caches' hit counts
        self._ports_missed = self._ready_missed = self._labels_missed = 0
        #: labels' JSON text -> the mapping the pods with that text share
        self._labels_by_text: dict[bytes, dict] = {}
        #: the last pod's conditions and containers (JSON texts, as decoded) and what they gave
        self._last_conditions: msgspec.Raw | None = None
        self._last_ready = False
        self._last_containers: msgspec.Raw | None = None
        self._last_ports: tuple = ((), None)
        self._last_labels: msgspec.Raw | None = None
        self._last_mapping: dict | None = None

    def _ports_of(self, text: bytes | tuple[bytes, bytes]) -> tuple:
        """(ports, note) of a pod's containers (and init containers), given as their JSON texts."""
        containers, inits = (text, b"") if type(text) is bytes else text
        key = (_decode_containers(containers) if containers else None, _decode_containers(inits) if inits else None)
        found = self._ports.get(key)
        if found is None:
            found = self._ports[key] = _parse_ports(_port_key(*key))
        self._ports_missed += 1
        if len(self._ports_by_text) < max(self.TEXTS_KEPT, len(self._pods) - self._ports_missed):
            self._ports_by_text[text] = found
        return found

    def _labels_of(self, text: bytes) -> dict | None:
        """A pod's labels, given as their JSON text (None: ``null``); raises on anything but strings."""
        labels = _decode_labels(text)
        self._labels_missed += 1
        if labels and len(self._labels_by_text) < max(self.TEXTS_KEPT, len(self._pods) - self._labels_missed):
            self._labels_by_text[text] = labels
        return labels

    def _ready(self, text: bytes) -> bool:
        """Whether the conditions (their JSON text) say Ready True (the first Ready condition)."""
        ready = False
        for c in (_decode_conditions(text) if text else None) or ():
            if c.type == "Ready":
                ready = c.status == "True"
                break
        self._ready_missed += 1
        if len(self._ready_by_text) < max(self.TEXTS_KEPT, len(self._pods) - self._ready_missed):
            self._ready_by_text[text] = ready
        return ready

    def pod(self, obj: PodRecord, ns: str, name: str) -> Pod:
        """As :meth:`_PodParser.__call__` reads the same object; raises anything on the unusual
        (its notes may then be left half-made: the loader starts again, the plain way)."""
        meta = obj.metadata
        spec = obj.spec
        status = obj.status
        ip = None
        ready = False
        if status is not None:
            text = status.podIP
            if not text or ":" in text:
                text = None
                listed = status.podIPs
                for e in (_decode_pod_ips(listed) if listed else None) or ():
                    t = e.ip
                    if t and ":" not in t:
                        text = t
                        break
            if text:
                try:
                    ip = int.from_bytes(_inet_pton(_AF_INET, text), "big")
                except (OSError, ValueError):
                    ip = ip_to_int(text, "status.podIP")
                if status.phase in TERMINAL_PHASES:
                    ip = None
                    self.parser.terminal.append(f"{ns}/{name}")
            # replicas of a template come one after another (kubectl sorts by name): the last
            # pod's text, compared in place, answers before a copy of it is looked up
            raw = status.conditions
            if raw == self._last_conditions:
                ready = self._last_ready
            else:
                conditions = bytes(raw)
                ready = self._ready_by_text.get(conditions)
                if ready is None:
                    ready = self._ready(conditions)
                self._last_conditions, self._last_ready = raw, ready
        if spec is not None:
            node = spec.nodeName or None
            if node is not None:
                node = self._node_names.setdefault(node, node)
            host = bool(spec.hostNetwork)
            raw = spec.containers
            inits = spec.initContainers
            if inits is _NOT_GIVEN and raw == self._last_containers:
                found = self._last_ports
            else:
                containers = bytes(raw) if inits is _NOT_GIVEN else (bytes(raw), bytes(inits))
                found = self._ports_by_text.get(containers)
                if found is None:
                    found = self._ports_of(containers)
                # remembered only without init containers (their text is not compared)
                self._last_containers = raw if inits is _NOT_GIVEN else None
                self._last_ports = found
        else:
            node = None
            host = False
            found = self._ports_by_text.get(b"")
            if found is None:
                found = self._ports_of(b"")
        ports, shared = found
        if shared is not None:
            self.parser.shared_port.append(f"{ns}/{name} {shared}")
        raw = meta.labels
        if raw == self._last_labels:
            labels = self._last_mapping
        elif raw is _NOT_GIVEN:
            labels = {}
        else:
            text = bytes(raw)
            labels = self._labels_by_text.get(text)
            if labels is None:
                labels = self._labels_of(text)
            self._last_labels, self._last_mapping = raw, labels
        # every field as Pod(...) sets it, in its order, without the frozen dataclass's __setattr__
        pod = _object_new(Pod)
        fields = pod.__dict__
        fields["namespace"] = ns
        fields["name"] = name
        fields["node"] = node
        fields["host_network"] = host
        fields["ip"] = ip
        fields["ready"] = ready
        fields["terminating"] = meta.deletionTimestamp is not None
        fields["ports"] = ports
        fields["labels"] = labels if labels is not None else {}
        fields["node_known"] = True
        return pod

    def slice(self, obj: SliceRecord, ns: str, name: str, service: str, portless: list[str]) -> EndpointSlice:
        """As :func:`fastpath.cluster.load_kinds._slice` reads the same object (the endpoints as
        :func:`~fastpath.cluster.load_kinds._endpoint_fast` does); raises :class:`Redo` or
        anything else on the unusual."""
        ports = []
        without = 0
        cache = self._slice_ports
        for p in obj.ports or ():
            port = p.port
            if port is None:
                without += 1
                continue
            k = (p.name, port, p.protocol)
            sp = cache.get(k)
            if sp is None:
                sp = cache[k] = EndpointSlicePort(name=p.name or None, port=_port(port, "ports[].port"),
                                                  proto=_proto(p.protocol, "ports[].protocol"))
            ports.append(sp)
        endpoints = []
        new = _object_new
        for e in obj.endpoints or ():
            addrs = e.addresses
            if not addrs:
                raise Redo
            if len(addrs) == 1:
                ips = (int.from_bytes(_inet_pton(_AF_INET, addrs[0]), "big"),)
            else:
                ips = tuple([int.from_bytes(_inet_pton(_AF_INET, a), "big") for a in addrs])
            cond = e.conditions
            if cond is None:
                ready = serving = True
                term = False
            else:
                ready = cond.ready
                ready = True if ready is None else bool(ready)
                serving = cond.serving
                serving = True if serving is None else bool(serving)
                term = bool(cond.terminating or False)
            zone = e.zone
            if zone is None and e.topology is not UNSET:
                raise Redo
            hints = node_hints = ()
            hint = e.hints
            if hint is not None:
                hints = _names(hint.forZones)
                node_hints = _names(hint.forNodes)
            target = None
            ref = e.targetRef
            if ref is not None and ref.kind == "Pod" and ref.name:
                target = f"{ref.namespace or ns}/{ref.name}"
            ep = new(Endpoint)
            fields = ep.__dict__
            fields["addresses"] = ips
            fields["ready"] = ready
            fields["serving"] = serving
            fields["terminating"] = term
            fields["node"] = e.nodeName or None
            fields["zone"] = zone or None
            fields["hint_zones"] = hints
            fields["target_pod"] = target
            fields["hint_nodes"] = node_hints
            endpoints.append(ep)
        if without:
            portless.extend([f"{ns}/{name}"] * without)
        out = new(EndpointSlice)
        fields = out.__dict__                   # as EndpointSlice(...) sets them, in its order
        fields["namespace"] = ns
        fields["name"] = name
        fields["service"] = service
        fields["ports"] = tuple(ports)
        fields["endpoints"] = tuple(endpoints)
        fields["from_endpoints"] = False
        return out

    @staticmethod
    def node(obj: NodeRecord, name: str):
        """:func:`~fastpath.cluster.load_kinds._node` of the fields it reads."""
        spec, status = obj.spec, obj.status
        return _node({"metadata": {"labels": obj.metadata.labels},
                      "spec": None if spec is None else {"podCIDR": spec.podCIDR, "podCIDRs": spec.podCIDRs},
                      "status": None if status is None else {"addresses": status.addresses,
                                                             "capacity": status.capacity}}, name)

    @staticmethod
    def service(obj: ServiceRecord, ns: str, name: str):
        """:func:`~fastpath.cluster.load_kinds._service` of the fields it reads."""
        return _service({"spec": obj.spec, "status": obj.status}, ns, name)


def _names(entries) -> tuple:
    """``hints.forZones`` / ``forNodes``: the names given (empty ones left out)."""
    if not entries:
        return ()
    return tuple([z.name for z in entries if z.name])


def _port_key(containers, inits) -> tuple:
    """The plain reader's cache key (:meth:`_PodParser._ports`) for these containers."""
    raw = []
    for c in containers or ():
        ps = c.ports
        if ps:
            raw.append((c.name, tuple([(("containerPort", p.containerPort), ("protocol", p.protocol),
                                        ("name", p.name), ("hostPort", p.hostPort)) for p in ps])))
    for c in inits or ():
        ps = c.ports
        if ps and c.restartPolicy == "Always":
            raw.append((c.name, tuple([(("containerPort", p.containerPort), ("protocol", p.protocol),
                                        ("name", p.name), ("hostPort", p.hostPort)) for p in ps])))
    return tuple(raw)
