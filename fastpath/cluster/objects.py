"""Kinds read besides the four core ones: legacy ``Endpoints`` and two ``ConfigMap`` objects.

* ``Endpoints`` (``v1``): for a service given without any EndpointSlice, its
  ``Endpoints`` object of the same name is mirrored into slices as the
  EndpointSliceMirroring controller does (``pkg/controller/endpointslicemirroring``):
  one slice per subset, ``addresses`` ready, ``notReadyAddresses`` not ready; the
  controller sets only ``ready``, so kube-proxy reads ``serving`` as true and
  ``terminating`` as false.
* ``ConfigMap kube-system/ip-masq-agent``: the agent's YAML or JSON under
  ``data.config`` (``nonMasqueradeCIDRs``, ``masqLinkLocal``; a key left out keeps the
  agent's default: RFC 1918 and no link-local masquerade).
* ``ConfigMap kube-system/kube-proxy``: ``clusterCIDR`` and ``conntrack.maxPerCore`` /
  ``conntrack.min`` (the conntrack table's sizing) of the KubeProxyConfiguration under
  ``data["config.conf"]`` (kubeadm, minikube, kind) or any other key.

Errors raise :class:`ObjectError` with the field path; the loader adds file and object.
"""
from __future__ import annotations

import yaml

from .model import Endpoint, EndpointSlice, EndpointSlicePort, Masquerade
from .validate import show

#: ip-masq-agent's default ``nonMasqueradeCIDRs`` (RFC 1918), as ``(network, length)``.
DEFAULT_NON_MASQUERADE = ((0x0A000000, 8), (0xAC100000, 12), (0xC0A80000, 16))
#: kube-proxy's defaults for ``conntrack.maxPerCore`` and ``conntrack.min`` (``--conntrack-max-per-core``,
#: ``--conntrack-min``; ``pkg/proxy/apis/config/v1alpha1/defaults.go``): a null or absent field takes these.
CONNTRACK_MAX_PER_CORE, CONNTRACK_MIN = 32768, 131072
#: The largest value kube-proxy's int32 fields hold.
_INT32_MAX = (1 << 31) - 1
#: Where the objects live.
MASQ_AGENT = ("kube-system", "ip-masq-agent")
KUBE_PROXY = ("kube-system", "kube-proxy")


class ObjectError(ValueError):
    """A bad field in one object (the message starts with its path)."""


def mirror_endpoints(obj: dict, ns: str, name: str, ip, port, proto, text) -> list[EndpointSlice]:
    """The slices the mirroring controller makes of one ``Endpoints`` object.

    ``ip``, ``port``, ``proto``, ``text`` are the loader's field readers (they raise
    naming the field). Returns one slice per subset (IPv6 addresses left out).
    """
    out = []
    subsets = obj.get("subsets") or ()
    if type(subsets) is not list:
        raise ObjectError(f"subsets: expected a list, found {show(subsets)}")
    for i, sub in enumerate(subsets):
        what = f"subsets[{i}]"
        ports = []
        for j, p in enumerate(sub.get("ports") or ()):
            pw = f"{what}.ports[{j}]"
            ports.append(EndpointSlicePort(name=text(p.get("name"), f"{pw}.name") or None,
                                           port=port(p.get("port"), f"{pw}.port"),
                                           proto=proto(p.get("protocol"), f"{pw}.protocol")))
        eps = []
        for ready, key in ((True, "addresses"), (False, "notReadyAddresses")):
            for j, a in enumerate(sub.get(key) or ()):
                aw = f"{what}.{key}[{j}]"
                addr = text(a.get("ip"), f"{aw}.ip")
                if not addr or ":" in addr:
                    continue
                ref = a.get("targetRef") or {}
                target = None
                if ref.get("kind") == "Pod" and ref.get("name"):
                    target = (f"{text(ref.get('namespace'), f'{aw}.targetRef.namespace') or ns}/"
                              f"{text(ref['name'], f'{aw}.targetRef.name')}")
                eps.append(Endpoint(addresses=(ip(addr, f"{aw}.ip"),), ready=ready, serving=True,
                                    terminating=False, node=text(a.get("nodeName"), f"{aw}.nodeName") or None,
                                    zone=None, hint_zones=(), target_pod=target))
        out.append(EndpointSlice(namespace=ns, name=f"{name}-mirror-{i}"[:253], service=name, ports=tuple(ports),
                                 endpoints=tuple(eps), from_endpoints=True))
    return out


def _config_doc(obj: dict, keys: tuple[str, ...], strict: bool = True) -> tuple[str, dict] | None:
    """The first YAML/JSON document under ``data[key]`` for one of ``keys`` (all keys when empty).

    Returns ``(field path, mapping)``. Not ``strict``: values that are not a mapping of
    settings are passed over rather than an error.
    """
    data = obj.get("data") or {}
    if type(data) is not dict:
        raise ObjectError(f"data: expected a mapping, found {show(data)}")
    for key in keys or tuple(data):
        text = data.get(key)
        if text is None:
            continue
        path = f"data.{key}"
        if type(text) is not str:
            raise ObjectError(f"{path}: expected a string, found {show(text)}")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            if not strict:
                continue
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ObjectError(f"{path}:{where} bad YAML ({getattr(e, 'problem', None) or e})") from None
        if doc is None:
            continue
        if type(doc) is not dict:
            if not strict:
                continue
            raise ObjectError(f"{path}: expected a mapping of settings, found {show(doc)}")
        return path, doc
    return None


def masquerade(obj: dict, source: str, cidr, v6_note) -> Masquerade:
    """ip-masq-agent's settings from its ConfigMap (defaults where a key is left out).

    ``cidr(text, what)`` parses an IPv4 CIDR (raising naming ``what``); ``v6_note(text)``
    is called for each IPv6 CIDR, which is left out.
    """
    found = _config_doc(obj, ("config",))
    cidrs, link_local = DEFAULT_NON_MASQUERADE, False
    if found is not None:
        path, doc = found
        texts = doc.get("nonMasqueradeCIDRs")
        if texts is not None:
            if type(texts) is not list:
                raise ObjectError(f"{path}: nonMasqueradeCIDRs: expected a list, found {show(texts)}")
            out = []
            for i, t in enumerate(texts):
                if type(t) is not str:
                    raise ObjectError(f"{path}: nonMasqueradeCIDRs[{i}]: expected a CIDR string, found {show(t)}")
                if ":" in t:
                    v6_note(t)
                    continue
                c = cidr(t, f"{path}: nonMasqueradeCIDRs[{i}]")
                if c not in out:
                    out.append(c)
            cidrs = tuple(out)
        ll = doc.get("masqLinkLocal")
        if ll is not None:
            if type(ll) is not bool:
                raise ObjectError(f"{path}: masqLinkLocal: expected true or false, found {show(ll)}")
            link_local = ll
    return Masquerade(non_masquerade_cidrs=cidrs, masq_link_local=link_local, source=source)


def _kube_proxy_doc(obj: dict) -> tuple[str, dict] | None:
    """kube-proxy's KubeProxyConfiguration: ``data["config.conf"]``, else the first mapping under any key."""
    return _config_doc(obj, ("config.conf",)) or _config_doc(obj, (), strict=False)


def kube_proxy_cluster_cidr(obj: dict, cidr) -> tuple[int, int] | None:
    """The first IPv4 ``clusterCIDR`` of kube-proxy's configuration, or None when not set."""
    found = _kube_proxy_doc(obj)
    if found is None:
        return None
    path, doc = found
    text = doc.get("clusterCIDR")
    if text in (None, ""):
        return None
    if type(text) is not str:
        raise ObjectError(f"{path}: clusterCIDR: expected a string, found {show(text)}")
    for part in text.split(","):
        part = part.strip()
        if part and ":" not in part:
            return cidr(part, f"{path}: clusterCIDR")
    return None


def kube_proxy_conntrack(obj: dict) -> tuple[int, int] | None:
    """``(maxPerCore, min)`` of the ``conntrack`` block of kube-proxy's configuration, or None when
    the configuration sets neither (the defaults then apply, as without the ConfigMap).

    A null or absent field takes kube-proxy's default (:data:`CONNTRACK_MAX_PER_CORE`,
    :data:`CONNTRACK_MIN`). ``maxPerCore: 0`` means kube-proxy leaves ``nf_conntrack_max``
    alone (:func:`fastpath.stages.conntrack.conntrack_max`). A value that is not a whole number
    from 0 to 2**31-1 (kube-proxy's ``int32``) raises :class:`ObjectError` naming the field.
    """
    found = _kube_proxy_doc(obj)
    if found is None:
        return None
    path, doc = found
    block = doc.get("conntrack")
    if block is None:
        return None
    if type(block) is not dict:
        raise ObjectError(f"{path}: conntrack: expected a mapping of settings, found {show(block)}")
    values, given = [], False
    for key, default in (("maxPerCore", CONNTRACK_MAX_PER_CORE), ("min", CONNTRACK_MIN)):
        v = block.get(key)
        if v is not None and (type(v) is not int or not 0 <= v <= _INT32_MAX):
            raise ObjectError(f"{path}: conntrack.{key}: expected a whole number from 0 to {_INT32_MAX}, "
                              f"found {show(v)}")
        given |= v is not None
        values.append(default if v is None else v)
    return (values[0], values[1]) if given else None
