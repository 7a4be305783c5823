"""Field types of the Kubernetes objects fastpath reads, to name the culprit of a bad one.

The loader reads objects optimistically (``obj.get("spec") or {}``) for speed. When
that raises (a string where a mapping should be, a list where a string should be),
:func:`find_type_error` walks the object against :data:`SHAPES` and names the first
field whose type is wrong, by its path, e.g.
``spec.containers[0].ports[1].containerPort: expected a port number, found list [80]``.
"""
from __future__ import annotations

#: Shape of a string map (labels, selectors): every key and value a string.
STRING_MAP = "string-map"
#: A port: an int, or a string of digits (what kubectl accepts from YAML).
PORT = "port"
#: A port or a port name (``targetPort``).
PORT_OR_NAME = "port-or-name"

_META = {"name": str, "namespace": str, "labels": STRING_MAP}
_CONTAINERS = [{"name": str, "ports": [{"containerPort": PORT, "hostPort": PORT, "protocol": str, "name": str}]}]

#: Every field the loader reads, per kind: a mapping is a nested object, a one-element
#: list is a list of that shape, a type (or one of the names above) is a leaf.
SHAPES: dict[str, dict] = {
    "Node": {"metadata": _META,
             "spec": {"podCIDR": str, "podCIDRs": [str]},
             "status": {"addresses": [{"type": str, "address": str}], "capacity": {}}},
    "Pod": {"metadata": _META,
            "spec": {"nodeName": str, "hostNetwork": bool, "containers": _CONTAINERS,
                     "initContainers": _CONTAINERS},
            "status": {"podIP": str, "podIPs": [{"ip": str}], "phase": str,
                       "conditions": [{"type": str, "status": str}]}},
    "Service": {"metadata": _META,
                "spec": {"type": str, "clusterIP": str, "clusterIPs": [str], "selector": STRING_MAP,
                         "ports": [{"name": str, "port": PORT, "protocol": str, "targetPort": PORT_OR_NAME,
                                    "nodePort": PORT}],
                         "externalIPs": [str], "sessionAffinity": str,
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": int}},
                         "externalTrafficPolicy": str, "internalTrafficPolicy": str,
                         "trafficDistribution": str, "externalName": str},
                "status": {"loadBalancer": {"ingress": [{"ip": str}]}}},
    "EndpointSlice": {"metadata": _META, "addressType": str,
                      "ports": [{"name": str, "port": PORT, "protocol": str}],
                      "endpoints": [{"addresses": [str], "nodeName": str, "zone": str,
                                     "conditions": {"ready": bool, "serving": bool, "terminating": bool},
                                     "hints": {"forZones": [{"name": str}], "forNodes": [{"name": str}]},
                                     "targetRef": {"kind": str, "name": str, "namespace": str}}]},
    "Endpoints": {"metadata": _META,
                  "subsets": [{"addresses": [{"ip": str, "nodeName": str,
                                              "targetRef": {"kind": str, "name": str, "namespace": str}}],
                               "notReadyAddresses": [{"ip": str, "nodeName": str,
                                                      "targetRef": {"kind": str, "name": str, "namespace": str}}],
                               "ports": [{"name": str, "port": PORT, "protocol": str}]}]},
    "ConfigMap": {"metadata": _META, "data": STRING_MAP},
}

_WORDS = {str: "a string", bool: "true or false", int: "a whole number", STRING_MAP: "a mapping of strings",
          PORT: "a port number", PORT_OR_NAME: "a port number or name"}


def _short_repr():
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 80, 80, 80
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    return r


_SHORT_REPR = _short_repr()


def show(value: object, limit: int = 40) -> str:
    """A value for a message, cut to ``limit`` characters: a scalar's repr, else ``type repr``."""
    r = _SHORT_REPR.repr(value)  # bounded: never the repr of a whole (alias-expanded) structure
    if len(r) > limit:
        r = r[:limit - 3] + "..."
    if value is None or type(value) in (str, int, float, bool):
        return r
    return f"{type(value).__name__} {r}"


def find_type_error(obj: object, kind: str) -> str | None:
    """The first field of ``obj`` whose type does not fit :data:`SHAPES`, as ``path: expected ..., found ...``.

    None when every field read fits (the problem is elsewhere) or the kind is unknown.
    """
    shape = SHAPES.get(kind)
    if shape is None:
        return None
    return _walk(obj, shape, "")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(value: object, shape: object, path: str) -> str | None:
    if value is None:
        return None                       # absent or null: the loader's default applies
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{path or 'object'}: expected a mapping, found {show(value)}"
        for key, sub in shape.items():
            bad = _walk(value.get(key), sub, _join(path, key))
            if bad:
                return bad
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{path}: expected a list, found {show(value)}"
        for i, item in enumerate(value):
            bad = _walk(item, shape[0], f"{path}[{i}]")
            if bad:
                return bad
        return None
    if shape == STRING_MAP:
        if not isinstance(value, dict):
            return f"{path}: expected a mapping, found {show(value)}"
        for k, v in value.items():
            if type(k) is not str:
                return f"{path}: key {show(k)} is not a string"
            if type(v) is not str:
                return f"{path}.{k}: expected a string, found {show(v)}"
        return None
    if shape == PORT or shape == PORT_OR_NAME:
        if type(value) is int or isinstance(value, str):
            return None
    elif shape is int:
        if type(value) is int:
            return None
    elif type(value) is shape:
        return None
    return f"{path}: expected {_WORDS[shape]}, found {show(value)}"


def check_string_map(value: object, what: str) -> dict:
    """``value`` as labels/selector: a mapping of strings to strings (None: empty).

    Raises ValueError naming ``what`` and the offending key.
    """
    if value is None:
        return {}
    if type(value) is not dict:
        raise ValueError(f"{what}: expected a mapping, found {show(value)}")
    for k, v in value.items():
        if type(v) is not str or type(k) is not str:
            raise ValueError(_walk(value, STRING_MAP, what))
    return value
