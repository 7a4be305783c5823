"""The compiled-table cache: a second run over the same cluster skips loading and compiling it.

Compiling a 5,000-node cluster (150,000 pods, 10,000 services) takes seconds:
parsing 139 MB of JSON, building the model, then the tables. The tables depend
only on the input's bytes, the options that shape them and fastpath's code, so
:func:`compile_cached` keeps them on disk and a later ``replay``/``explain``
of the same input loads them instead, in a fraction of a second.

**Where.** ``$FASTPATH_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastpath``, else
``~/.cache/fastpath``. One folder per entry, named by its key; the
:data:`MAX_ENTRIES` most recently used entries are kept. ``--no-cache`` (or
``cache=False``) neither reads nor writes it.

**Key.** SHA-256 over: the cache format, fastpath's version and a digest of its
source files (any code change is a new key), the input path as given (the
cluster's ``source`` names it), the SHA-256 of every input file's
bytes (a directory: each file's path inside it and digest, in the order the
loader reads them), and the load and compile options (balancer, seed, Maglev
size, connection duration, ``expand_workloads``, ...). Hashing 139 MB costs
about 0.1-0.3 s, so a file's digest is remembered beside its size, inode,
mtime and ctime (in ``inputs/``), and reused while those are unchanged, as
git's index does; a digest taken within :data:`RACY_S` seconds of the file's
last change is not trusted (the file may still be being written).

**What an entry holds.** Never pickle: ``tables.bin`` holds every numpy array of
the compiled :class:`~fastpath.pipeline.DataPlane`, raw, one after the other (each
at a multiple of 64 bytes; plain numeric dtypes only), read back with one read and
no copy per array; ``meta.json`` names each (dtype, shape, offset) and holds
everything else as JSON: the object
graph (which fastpath class each object is, its fields; arrays by name), the
name lists (nodes, pods, service ports) and the cluster's light fields
(warnings, problems, skipped kinds, nodes, source, ...). ``entry.json`` holds
the key and the SHA-256 of the other two files; an entry whose files do not
hash to those, cannot be read, or do not decode is removed and rebuilt, never
used. Only classes defined in fastpath modules are rebuilt from an entry.

**Other entries.** :func:`cached_object` keeps anything else built from a cluster
input alone the same way (``synth trace``'s pools: what flows are drawn from), keyed
by its kind and options in place of the compile options, with the cluster's light
fields beside it.

**What a cached plane is.** The same tables, so the same results. Its
``cluster`` is a :class:`LazyCluster`: the light fields are there at once
(enough for ``replay``, its warnings and summary, and conntrack's node CPUs);
touching anything else (pods, services, slices, policies, workloads: explain's
name lookups, a study) loads the cluster from its files then, once. A data
plane holding something the codec does not know (a new stage with a numba
typed dict, say) is simply not cached: the run compiles as before.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cluster.model import Cluster
from .files import temp_beside, temp_done

#: Layout version of an entry; bump when the codec changes.
CACHE_FORMAT = 2
#: Entries kept (least recently used go first).
MAX_ENTRIES = 8
#: A file digest is reused only when taken at least this long after the file's last change.
RACY_S = 2.0
#: Cluster fields left out of an entry and loaded on first use (they are most of the model).
LAZY_FIELDS = ("pods", "services", "slices", "policies", "workloads")
#: DataPlane attributes rebuilt rather than stored: the cluster (light fields only), the
#: Arrow dictionaries and the balancer state (both made by ``DataPlane.__init__``), the input's name.
_PLANE_REBUILT = ("cluster", "_dicts", "stage", "source_name", "prepare_s")


class Uncacheable(Exception):
    """The object graph holds something the codec does not store (the run compiles as usual)."""


class CacheError(Exception):
    """An entry that is missing, stale, truncated, tampered with or undecodable."""


# --------------------------------------------------------------------------- places and keys

def cache_dir() -> Path:
    """The cache folder: ``$FASTPATH_CACHE_DIR``, ``$XDG_CACHE_HOME/fastpath`` or ``~/.cache/fastpath``."""
    env = os.environ.get("FASTPATH_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fastpath"


_SOURCE_DIGEST: str | None = None


def source_digest() -> str:
    """SHA-256 over fastpath's own ``.py`` files (names and bytes): code changes change every key."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(b"\0")
            h.update(f.read_bytes())
            h.update(b"\0")
        _SOURCE_DIGEST = h.hexdigest()
    return _SOURCE_DIGEST


def _input_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    from .cluster import load

    finder = getattr(load, "cluster_files", None)
    if finder is not None:
        return list(finder(path))
    return sorted(f for f in path.iterdir() if f.suffix.lower() in load.SUFFIXES and f.is_file())


def file_digest(path: Path, memo_dir: Path | None) -> str:
    """SHA-256 of a file's bytes, remembered by (size, inode, device, mtime, ctime) in ``memo_dir``."""
    st = path.stat()
    stamp = [st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns]
    memo = None
    if memo_dir is not None:
        memo = memo_dir / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32] + ".json")
        try:
            saved = json.loads(memo.read_text())
            if saved.get("stamp") == stamp and saved.get("hashed_ns", 0) - max(st.st_mtime_ns, st.st_ctime_ns) \
                    >= RACY_S * 1e9:
                return str(saved["sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    hashed_ns = time.time_ns()
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
            else _sha256_stream(f)
    if memo is not None:
        _write_atomic(memo, json.dumps({"path": str(path.resolve()), "stamp": stamp, "sha256": digest,
                                        "hashed_ns": hashed_ns}).encode())
    return digest


def _sha256_stream(f) -> str:  # Python 3.10: no hashlib.file_digest
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _jsonable(options: dict) -> dict:
    out = {}
    for k, v in sorted(options.items()):
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = repr(v)
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        out[k] = v
    json.dumps(out)   # raises TypeError for an option the key cannot hold
    return out


def entry_key(path: str | os.PathLike, load_options: dict, compile_options: dict,
              directory: Path | None = None) -> str:
    """The cache key of compiling ``path`` with these options (see the module docstring)."""
    from . import __version__

    p = Path(path)
    memo = (directory if directory is not None else cache_dir()) / "inputs"
    files = _input_files(p)
    base = p if p.is_dir() else p.parent
    parts = {
        "format": CACHE_FORMAT, "version": __version__, "source": source_digest(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "numpy": np.__version__.split(".")[0],
        # the path as given too: the cluster's ``source`` and its warnings name it
        "path": str(path),
        "inputs": [[str(f.relative_to(base)) if p.is_dir() else f.name, file_digest(f, memo)] for f in files],
        "load": _jsonable(load_options), "compile": _jsonable(compile_options),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- the codec

def _qualname(obj_type: type) -> str:
    mod = obj_type.__module__
    if not (mod == "fastpath" or mod.startswith("fastpath.")):
        raise Uncacheable(f"{mod}.{obj_type.__qualname__} is not a fastpath class")
    return f"{mod}:{obj_type.__qualname__}"


def _class(name: str) -> type:
    mod, _, qual = name.partition(":")
    if not (mod == "fastpath" or mod.startswith("fastpath.")):
        raise CacheError(f"class {name} is not a fastpath class")
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise CacheError(f"{name} is not a class")
    return obj


#: Values JSON holds as they are (finite floats only: see ``_Encoder.enc``).
_PLAIN = (str, int, bool, type(None))


class _Encoder:
    """Object graph -> JSON-able tree + named arrays. Shared objects and arrays are stored once."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._array_names: dict[int, str] = {}
        self._objects: dict[int, int] = {}
        self._string_lists: dict[str, str] = {}
        self._keep: list = []          # keep encoded objects alive, so ids stay unique

    def enc(self, x: Any) -> Any:
        t = type(x)
        if x is None or t is bool or t is int or t is str:
            return x
        if t is float:
            return x if math.isfinite(x) else {"$f": repr(x)}
        if t is list:
            if len(x) >= 64 and all(type(v) is str for v in x):
                return self._strings(x)
            if len(x) >= 64 and self._same_class(x):
                return self._columns(x)
            return [self.enc(v) for v in x]
        if t is dict:
            if all(type(k) is str for k in x):
                if all(type(v) in _PLAIN for v in x.values()):
                    return {"$m": x, "p": 1}           # labels: strings only, decoded as they are
                if all(type(v) is tuple and all(type(i) in _PLAIN for i in v) for v in x.values()):
                    return {"$mt": {k: list(v) for k, v in x.items()}}   # DNS records: name -> addresses
                return {"$m": {k: self.enc(v) for k, v in x.items()}}
            return {"$d": [[self.enc(k), self.enc(v)] for k, v in x.items()]}
        if t is tuple:
            if all(type(v) in _PLAIN for v in x):
                return {"$t": list(x), "p": 1}
            return {"$t": [self.enc(v) for v in x]}
        if t is set or t is frozenset:
            return {"$set" if t is set else "$fset": [self.enc(v) for v in x]}
        if isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise Uncacheable("an object array")
            name = self._array_names.get(id(x))
            if name is None:
                name = self._array_names[id(x)] = f"a{len(self.arrays)}"
                self.arrays[name] = x
                self._keep.append(x)
            return {"$a": name}
        if isinstance(x, np.generic):
            if x.dtype.hasobject:
                raise Uncacheable("an object scalar")
            v = x.item()
            return {"$s": x.dtype.str, "v": self.enc(v)}
        if isinstance(x, tuple) and hasattr(t, "_fields"):          # a NamedTuple
            return {"$nt": _qualname(t), "v": [self.enc(v) for v in x]}
        if t in (list, dict, tuple) or not hasattr(x, "__dict__") or hasattr(t, "__slots__") \
                and "__dict__" not in getattr(t, "__slots__", ()):
            raise Uncacheable(f"a {t.__module__}.{t.__qualname__}")
        if isinstance(x, type) or callable(x) and not hasattr(x, "__dict__"):
            raise Uncacheable(f"a {t.__qualname__}")
        ref = self._objects.get(id(x))
        if ref is not None:
            return {"$r": ref}
        name = _qualname(t)
        if isinstance(x, Cluster):
            raise Uncacheable("a Cluster inside the compiled tables")
        n = self._objects[id(x)] = len(self._objects)
        self._keep.append(x)
        return {"$o": name, "id": n, "d": {k: self.enc(v) for k, v in vars(x).items()}}


    def _same_class(self, x: list) -> bool:
        t = type(x[0])
        return (dataclasses.is_dataclass(t) and not isinstance(x[0], type) and t.__module__.startswith("fastpath.")
                and not issubclass(t, Cluster) and all(type(v) is t for v in x)
                and not any(id(v) in self._objects for v in x))

    def _columns(self, x: list) -> Any:
        """Many objects of one dataclass (a cluster's nodes) column by column: a column of
        plain values is decoded without a step per value."""
        names = list(vars(x[0]))
        if any(list(vars(v)) != names for v in x):
            return [self.enc(v) for v in x]
        first = len(self._objects)
        for v in x:
            self._objects[id(v)] = len(self._objects)
            self._keep.append(v)
        cols = []
        for name in names:
            col = [vars(v)[name] for v in x]
            if all(type(c) in _PLAIN for c in col):
                cols.append({"p": col})
            elif all(type(c) is dict and all(type(k) is str and type(i) in _PLAIN for k, i in c.items()) for c in col):
                cols.append({"p": col})                  # labels: a fresh dict each from the JSON
            elif all(type(c) is tuple and all(type(i) is tuple and all(type(j) in _PLAIN for j in i) for i in c)
                     for c in col):
                cols.append({"tt": [[list(i) for i in c] for c in col]})    # pod CIDRs
            else:
                cols.append({"v": [self.enc(c) for c in col]})
        return {"$ol": _qualname(type(x[0])), "id": first, "f": names, "c": cols}

    def _strings(self, x: list[str]) -> Any:
        """A long list of names as one UTF-8 array, NUL-separated (150,000 pod names: 4 MB of JSON
        otherwise); equal lists (pod names in the forwarding tables and the service map) stored once."""
        joined = "\0".join(x)
        if joined.count("\0") != len(x) - 1:
            return list(x)                       # a name holding NUL: plain JSON
        data = joined.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(data).hexdigest()
        name = self._string_lists.get(digest)
        if name is None:
            name = self._string_lists[digest] = f"s{len(self._string_lists)}"
            self.arrays[name] = np.frombuffer(data, dtype=np.uint8)
        return {"$sl": name, "n": len(x)}


class _Decoder:
    def __init__(self, arrays) -> None:
        self.arrays = arrays
        self.objects: dict[int, Any] = {}
        self._string_lists: dict[str, list[str]] = {}
        self.classes: dict[str, type] = {}

    def dec(self, x: Any) -> Any:
        if type(x) is list:
            return [self.dec(v) for v in x]
        if type(x) is not dict:
            return x
        if "$sl" in x:
            name = x["$sl"]
            got = self._string_lists.get(name)
            if got is None:
                got = self._string_lists[name] = self.arrays[name].tobytes().decode("utf-8", "surrogatepass") \
                    .split("\0")
                if len(got) != int(x["n"]):
                    raise CacheError(f"string list {name} holds {len(got)} names, not {x['n']}")
            return list(got)                     # each holder its own list, as when compiled
        if "$m" in x:
            if "p" in x:
                return x["$m"]                           # a fresh dict from the JSON, used once
            return {k: self.dec(v) for k, v in x["$m"].items()}
        if "$a" in x:
            return self.arrays[x["$a"]]
        if "$mt" in x:
            return {k: tuple(v) for k, v in x["$mt"].items()}
        if "$t" in x:
            if "p" in x:
                return tuple(x["$t"])
            return tuple([self.dec(v) for v in x["$t"]])
        if "$o" in x:
            cls = self.classes.get(x["$o"])
            if cls is None:
                cls = self.classes[x["$o"]] = _class(x["$o"])
            obj = cls.__new__(cls)
            self.objects[int(x["id"])] = obj
            obj.__dict__.update({k: self.dec(v) for k, v in x["d"].items()})
            return obj
        if "$r" in x:
            return self.objects[int(x["$r"])]
        if "$ol" in x:
            cls = _class(x["$ol"])
            cols = [c["p"] if "p" in c else [tuple(map(tuple, v)) for v in c["tt"]] if "tt" in c
                    else [self.dec(v) for v in c["v"]] for c in x["c"]]
            names = x["f"]
            out = []
            new = cls.__new__
            for k, row in enumerate(zip(*cols)):
                obj = new(cls)
                obj.__dict__.update(zip(names, row))
                self.objects[int(x["id"]) + k] = obj
                out.append(obj)
            return out
        if "$s" in x:
            return np.dtype(x["$s"]).type(self.dec(x["v"]))
        if "$d" in x:
            return {self.dec(k): self.dec(v) for k, v in x["$d"]}
        if "$nt" in x:
            return _class(x["$nt"])(*(self.dec(v) for v in x["v"]))
        if "$f" in x:
            return float(x["$f"])
        if "$set" in x:
            return {self.dec(v) for v in x["$set"]}
        if "$fset" in x:
            return frozenset(self.dec(v) for v in x["$fset"])
        raise CacheError(f"unknown node {sorted(x)[:3]}")


# --------------------------------------------------------------------------- the lazy cluster

class LazyCluster(Cluster):
    """A :class:`Cluster` whose light fields came from the cache; the rest loads on first use.

    ``warnings``, ``problems``, ``skipped_kinds``, ``nodes``, ``domain``, ``source``
    (every field but :data:`LAZY_FIELDS`, where it could be stored) are there at once.
    Reading ``pods``, ``services``, ``slices``, ``policies`` or ``workloads`` calls the
    loader once (``load_cluster`` on the same files and options) and takes every field
    from the loaded cluster.
    """

    def __init__(self, light: dict, loader: Callable[[], Cluster]) -> None:  # noqa: D107 - no dataclass init
        self.__dict__.update(light)
        self.__dict__["_loader"] = loader

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_loader", "_full"):
            raise AttributeError(name)
        full = self.__dict__.get("_full")
        if full is None:
            loader = self.__dict__.get("_loader")
            if loader is None:
                raise AttributeError(name)
            full = loader()
            self.__dict__["_full"] = full
            for f in dataclasses.fields(Cluster):
                self.__dict__[f.name] = getattr(full, f.name)
        try:
            return self.__dict__[name]
        except KeyError:
            return getattr(full, name)

    def __eq__(self, other) -> bool:
        """Field by field against any :class:`Cluster` (loads the full cluster)."""
        if not isinstance(other, Cluster):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(Cluster) if f.compare)

    __hash__ = None  # type: ignore[assignment] - mutable, as Cluster

    @property
    def loaded(self) -> bool:
        """Whether the full cluster has been loaded."""
        return "_full" in self.__dict__

    def __repr__(self) -> str:
        if self.loaded:
            return super().__repr__()
        return f"Cluster({self.__dict__.get('source') or '?'}, from the compiled-table cache; pods not loaded)"


def pod_bridged(cluster: Cluster) -> np.ndarray:
    """uint8 per pod: on a node's bridge (not hostNetwork, an IP, a node). Kept in an entry as the
    cluster's ``cached_pod_bridged``, so conntrack (``stages/conntrack.py``, the same expression)
    starts without loading the pods."""
    from .cluster.columns import pod_columns

    cols = pod_columns(cluster.pods, cluster.nodes)      # kept from the compile just made
    return (~cols.host & cols.has_ip & cols.node_given).astype(np.uint8)


def _light_fields(cluster: Cluster, enc: _Encoder) -> dict:
    out = {"cached_pod_bridged": enc.enc(pod_bridged(cluster))}
    for f in dataclasses.fields(Cluster):
        if f.name in LAZY_FIELDS:
            continue
        try:
            out[f.name] = enc.enc(getattr(cluster, f.name))
        except Uncacheable:
            continue           # read from the loaded cluster when asked
    return out


# --------------------------------------------------------------------------- entries

def _plane_state(dp) -> dict:
    from .pipeline import DataPlane

    params = [p for p in inspect.signature(DataPlane.__init__).parameters if p != "self"]
    missing = [p for p in params if p not in _PLANE_REBUILT and p not in vars(dp)]
    if missing:
        raise Uncacheable(f"DataPlane.__init__ takes {missing} that are not attributes")
    return {k: v for k, v in vars(dp).items() if k not in _PLANE_REBUILT}


def encode_plane(dp) -> tuple[dict, dict[str, np.ndarray]]:
    """A DataPlane as (JSON tree, arrays); raises :class:`Uncacheable` where it cannot."""
    enc = _Encoder()
    tree = {"plane": {k: enc.enc(v) for k, v in _plane_state(dp).items()},
            "cluster": _light_fields(dp.cluster, enc)}
    return tree, enc.arrays


def decode_plane(tree: dict, arrays, loader: Callable[[], Cluster]):
    """Rebuild the DataPlane of :func:`encode_plane`, its cluster a :class:`LazyCluster`."""
    from .pipeline import DataPlane
    from .tables.services import ServiceStage

    dec = _Decoder(arrays)
    cluster = LazyCluster({k: dec.dec(v) for k, v in tree["cluster"].items()}, loader)
    state = {k: dec.dec(v) for k, v in tree["plane"].items()}
    params = [p for p in inspect.signature(DataPlane.__init__).parameters if p != "self"]
    args = {}
    for p in params:
        if p == "cluster":
            args[p] = cluster
        elif p == "stage":
            args[p] = ServiceStage(state["services"])
        else:
            args[p] = state[p]
    dp = DataPlane(**args)
    for k, v in state.items():
        if k not in params:
            setattr(dp, k, v)
    dp.reset()
    return dp


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        temp_done(tmp)


def _json_loads(data: bytes):
    try:
        from msgspec.json import decode
        return decode(data)
    except Exception:  # noqa: BLE001 - no msgspec, or NaN in the data: json decides
        return json.loads(data)


def store(directory: Path, key: str, dp) -> Path | None:
    """Write ``dp``'s entry (atomically: a temporary folder renamed into place); None if uncacheable."""
    tree, arrays = encode_plane(dp)
    return _store_entry(directory, key, tree, arrays)


def _store_entry(directory: Path, key: str, tree: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write an entry's three files into a temporary folder, then rename it into place."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-"))
    try:
        npz, tree["arrays"] = _pack_arrays(arrays)
        meta = json.dumps(tree, separators=(",", ":")).encode()
        entry = {"format": CACHE_FORMAT, "key": key, "meta_sha256": hashlib.sha256(meta).hexdigest(),
                 "tables_sha256": hashlib.sha256(npz).hexdigest(), "tables_bytes": len(npz),
                 "created": time.time()}
        (tmp / "tables.bin").write_bytes(npz)
        (tmp / "meta.json").write_bytes(meta)
        (tmp / "entry.json").write_text(json.dumps(entry, indent=1))
        final = directory / key
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:          # another process put it there first
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(directory)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: Alignment of each array in ``tables.bin`` (a cache line).
_ALIGN = 64


def _pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """Arrays as one byte string (each at a multiple of :data:`_ALIGN`) and their index:
    name -> [dtype, shape, offset]. Only plain numeric dtypes (no objects, no records)."""
    out = bytearray()
    index = {}
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf" or a.dtype.fields is not None:
            raise Uncacheable(f"an array of dtype {a.dtype}")
        out.extend(b"\0" * (-len(out) % _ALIGN))
        index[name] = [a.dtype.str, list(a.shape), len(out)]
        out.extend(np.ascontiguousarray(a).tobytes())
    return bytes(out), index


def _read_exactly(path: Path, size) -> bytearray:
    """The file's bytes in a fresh writable buffer (the arrays are views of it); a file of
    another size than ``size`` is a :class:`CacheError`."""
    if type(size) is not int or size < 0:
        raise CacheError("entry.json gives no size for tables.bin")
    buf = bytearray(size)
    with open(path, "rb") as f:
        got = f.readinto(buf)
        if got != size or f.read(1):
            raise CacheError(f"tables.bin holds {'more' if got == size else got} bytes, not {size}")
    return buf


def _unpack_arrays(raw: bytearray, index: dict) -> dict[str, np.ndarray]:
    """The arrays of :func:`_pack_arrays`: writable views of ``raw``, no copies."""
    out = {}
    for name, (dtype, shape, offset) in index.items():
        dt = np.dtype(dtype)
        if dt.kind not in "biuf" or dt.fields is not None:
            raise CacheError(f"array {name}: dtype {dtype} is not a plain number")
        count = math.prod(shape)
        if not (type(offset) is int and 0 <= offset and offset + count * dt.itemsize <= len(raw)):
            raise CacheError(f"array {name} lies outside tables.bin")
        out[name] = np.frombuffer(raw, dtype=dt, count=count, offset=offset).reshape(shape)
    return out


def fetch(directory: Path, key: str, loader: Callable[[], Cluster]):
    """The DataPlane of entry ``key``; :class:`CacheError` if it is absent or fails any check."""
    return _fetch_entry(directory, key, lambda tree, arrays: decode_plane(tree, arrays, loader))


def _fetch_entry(directory: Path, key: str, decode: Callable[[dict, dict], Any]):
    """``decode(tree, arrays)`` of entry ``key``, every digest checked; :class:`CacheError` on any failure."""
    d = directory / key
    try:
        entry = json.loads((d / "entry.json").read_text())
    except FileNotFoundError:
        raise CacheError("no entry") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"entry.json unreadable: {e}") from None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
        raise CacheError("entry.json is for another key or format")
    try:
        meta = (d / "meta.json").read_bytes()
        raw = _read_exactly(d / "tables.bin", entry.get("tables_bytes"))
    except OSError as e:
        raise CacheError(f"unreadable: {e}") from None
    if hashlib.sha256(meta).hexdigest() != entry.get("meta_sha256"):
        raise CacheError("meta.json does not match its digest")
    if hashlib.sha256(raw).hexdigest() != entry.get("tables_sha256"):
        raise CacheError("tables.bin does not match its digest")
    try:
        tree = _json_loads(meta)
        out = decode(tree, _unpack_arrays(raw, tree["arrays"]))
    except CacheError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to decode means: rebuild
        raise CacheError(f"undecodable: {type(e).__name__}: {e}") from None
    try:
        os.utime(d / "entry.json")          # most recently used
    except OSError:
        pass
    return out


def _key_or_none(path: Path, load_options: dict, options: dict, folder: Path) -> str | None:
    """:func:`entry_key`, or None: an unreadable input (the loader then says why) or an option
    the key cannot hold runs without the cache."""
    try:
        return entry_key(path, load_options, options, folder)
    except (OSError, TypeError, ValueError):
        return None


def _fetch_or_forget(folder: Path, key: str, decode: Callable[[dict, dict], Any], stats: dict):
    """:func:`_fetch_entry`, or None with ``stats["why"]`` set; an entry that fails a check is removed."""
    try:
        return _fetch_entry(folder, key, decode)
    except CacheError as e:
        stats["why"] = str(e)
        if str(e) != "no entry":
            shutil.rmtree(folder / key, ignore_errors=True)
        return None


def _prune(directory: Path) -> None:
    entries = []
    for d in directory.iterdir():
        if d.is_dir() and not d.name.startswith(".") and d.name != "inputs":
            try:
                entries.append(((d / "entry.json").stat().st_mtime, d))
            except OSError:
                entries.append((0.0, d))
    entries.sort(reverse=True)
    for _, d in entries[MAX_ENTRIES:]:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- the entry point

def _compile_apart(path: Path, folder: Path, load_options: dict, compile_options: dict) -> bool:
    """Load, compile and store ``path``'s entry in a child process; whether it succeeded."""
    import pickle
    import subprocess
    import sys

    here = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    code = ("import pickle, sys; from fastpath.cache import compile_cached; a = pickle.load(sys.stdin.buffer); "
            "compile_cached(a['path'], directory=a['dir'], load_options=a['load'], **a['compile'])")
    args = {"path": str(path), "dir": str(folder), "load": load_options, "compile": compile_options}
    try:
        done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(args), capture_output=True, env=env)
    except OSError:
        return False
    return done.returncode == 0


def compile_cached(path: str | os.PathLike, *, cache: bool = True, directory: str | os.PathLike | None = None,
                   load_options: dict | None = None, on_load: Callable[[Cluster], None] | None = None,
                   stats: dict | None = None, cluster: Cluster | None = None, lean: bool = False,
                   **compile_options):
    """Load and compile the cluster at ``path``, or take its compiled tables from the cache.

    Parameters
    ----------
    path
        Cluster file or directory, as :func:`fastpath.cluster.load.load_cluster` takes.
    cache
        False: load and compile, touch no cache file (``--no-cache``).
    directory
        The cache folder (default :func:`cache_dir`).
    load_options
        Keyword arguments of ``load_cluster`` (``expand_workloads``); part of the key.
    on_load
        Called with the cluster once it is known, loaded or from the cache (a
        :class:`LazyCluster`), e.g. to print its load warnings.
    stats
        A dict filled with ``hit`` (bool), ``key``, ``why`` (why an entry was rebuilt) and ``seconds``.
    cluster
        The cluster of ``path`` when the caller has it already (loaded, or a cached plane's
        :class:`LazyCluster`): used on a miss instead of loading the files again.
    lean
        On a miss, load, compile and store the entry in a child process, then take
        it from the cache as a hit would (its cluster a :class:`LazyCluster`): the
        millions of loaded objects never live in this process, whose memory they
        would keep (Python does not hand freed small objects back to the system),
        so a replay needs the same memory on its first run as on later ones. If the
        child fails, this process loads and compiles (and reports the error).
    **compile_options
        Keyword arguments of :func:`fastpath.cluster.compile.compile_cluster`
        (``lb``, ``seed``, ``maglev_size``, ``conn_duration``); part of the key.

    Returns
    -------
    DataPlane
        With ``source_name`` set to ``str(path)`` and ``prepare_s`` to the seconds this took
        (:func:`fastpath.replay` adds them to its summary's compile time, once).
    """
    from .cluster.compile import compile_cluster
    from .cluster.load import load_cluster

    t0 = time.perf_counter()
    load_options = dict(load_options or {})
    stats = stats if stats is not None else {}
    p = Path(path)

    def loader() -> Cluster:
        return load_cluster(p, **load_options)

    folder = Path(directory) if directory is not None else cache_dir()
    key = _key_or_none(p, load_options, compile_options, folder) if cache else None
    stats.update(hit=False, key=key, why=None)
    if key is not None:
        dp = _fetch_or_forget(folder, key, lambda tree, arrays: decode_plane(tree, arrays, loader), stats)
        if dp is not None:
            stats.update(hit=True, seconds=time.perf_counter() - t0)
            dp.source_name = str(path)
            dp.prepare_s = stats["seconds"]      # replay counts it in its compile time
            if on_load is not None:
                on_load(dp.cluster)
            return dp
    if lean and key is not None and cluster is None and _compile_apart(p, folder, load_options, compile_options):
        try:
            dp = fetch(folder, key, loader)
        except CacheError:
            pass                          # (the entry vanished: compile here)
        else:
            stats["seconds"] = time.perf_counter() - t0
            dp.source_name = str(path)
            dp.prepare_s = stats["seconds"]
            if on_load is not None:
                on_load(dp.cluster)
            return dp
    if cluster is None:
        cluster = loader()
    if on_load is not None:
        on_load(cluster)
    dp = compile_cluster(cluster, **compile_options)
    dp.source_name = str(path)
    if key is not None:
        try:
            store(folder, key, dp)
        except Uncacheable as e:
            stats["why"] = f"not cached: {e}"
        except OSError as e:              # a read-only or full disk: run without the cache
            stats["why"] = f"not cached: {e}"
    stats["seconds"] = time.perf_counter() - t0
    dp.prepare_s = stats["seconds"]
    return dp


def cached_object(path: str | os.PathLike, kind: str, options: dict, build: Callable[[Cluster], Any], *,
                  cache: bool = True, directory: str | os.PathLike | None = None, load_options: dict | None = None,
                  on_load: Callable[[Cluster], None] | None = None, stats: dict | None = None) -> tuple[Any, Cluster]:
    """``build(cluster)`` of the cluster at ``path``, or that object from the cache: ``(object, cluster)``.

    For what else than a DataPlane depends only on the cluster's input and a few options
    (the trace generator's pools, :func:`fastpath.traces.synth.synth_trace`). The entry
    is keyed as a compiled plane's is, with ``kind`` and ``options`` in place of the
    compile options, and holds the object (arrays, plain values, fastpath classes: the
    same codec) and the cluster's light fields. On a hit the cluster is a
    :class:`LazyCluster` (warnings and counts without loading); on a miss it is loaded,
    ``build`` runs and the entry is stored. ``stats`` gets ``hit``, ``key`` and ``why``.
    """
    from .cluster.load import load_cluster

    load_options = dict(load_options or {})
    stats = stats if stats is not None else {}
    p = Path(path)
    folder = Path(directory) if directory is not None else cache_dir()

    def loader() -> Cluster:
        return load_cluster(p, **load_options)

    key = _key_or_none(p, load_options, {"$object": kind, **options}, folder) if cache else None
    stats.update(hit=False, key=key, why=None)
    if key is not None:
        def decode(tree: dict, arrays) -> tuple[Any, Cluster]:
            dec = _Decoder(arrays)
            if tree.get("kind") != kind:
                raise CacheError(f"an entry for {tree.get('kind')!r}, not {kind!r}")
            light = {k: dec.dec(v) for k, v in tree["cluster"].items()}
            return dec.dec(tree["object"]), LazyCluster(light, loader)

        found = _fetch_or_forget(folder, key, decode, stats)
        if found is not None:
            stats["hit"] = True
            if on_load is not None:
                on_load(found[1])
            return found
    cluster = loader()
    if on_load is not None:
        on_load(cluster)
    obj = build(cluster)
    if key is not None:
        try:
            enc = _Encoder()
            tree = {"kind": kind, "object": enc.enc(obj), "cluster": _light_fields(cluster, enc)}
            _store_entry(folder, key, tree, enc.arrays)
        except (Uncacheable, OSError) as e:     # a read-only or full disk: go on without the cache
            stats["why"] = f"not cached: {e}"
    return obj, cluster
