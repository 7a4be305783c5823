"""Cluster DNS as CoreDNS's ``kubernetes`` plugin answers A queries, and a pod's resolver.

Records (spec §4, ``cluster.domain`` is the domain, ``cluster.local`` by default):

* ``<svc>.<ns>.svc.<domain>`` -> the service's (first IPv4) ClusterIP;
* a headless service (``clusterIP: None``) -> the first address of each of its
  Ready endpoints (every EndpointSlice of the service, given or derived from its
  selector); none Ready -> no answer;
* ``a-b-c-d.<ns>.pod.<domain>`` -> ``a.b.c.d`` for any well-formed address
  (four decimal octets 0-255 without leading zeros), as kubeadm's Corefile sets
  ``pods insecure``: the pod need not exist;
* ExternalName services answer a CNAME to a name outside the cluster; fastpath
  does not resolve outside names, so they stay unresolved. SRV records and
  per-endpoint hostnames are not modelled (flows carry A lookups).

Names are case-insensitive. A pod's resolver (``dnsPolicy: ClusterFirst``) has
``search <ns>.svc.<domain> svc.<domain> <domain>`` and ``options ndots:5``: a
name ending in a dot is tried as is; a name with fewer than 5 dots is tried
with each search suffix first, then as is; one with 5 or more dots as is
first, then with each suffix (glibc's order). The first name with an answer
wins. Clients that are not pods (external, or a node's host network, source
namespace -1) have no search path: only fully qualified names answer.

A headless service answers several addresses; a client uses the first, and
CoreDNS rotates the order, so fastpath picks one per flow:
``(mix64(k_dns ^ (src_ip << 16 | src_port)) >> 32) mod n`` when the client's
address and port are given, else by the CRC-32 of the queried name.

Each distinct (name, source namespace) of a batch is resolved once in Python;
flows then take their answer by numpy indexing.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cluster.model import Cluster
from .errors import FastpathError
from .tables.balancers import SALT_DNS, mix64_np, seed_key

#: ``options ndots:5`` of a pod's resolv.conf.
NDOTS = 5


@dataclass(frozen=True)
class DnsTable:
    """Every A record of the cluster, by fully qualified name (lowercase, no trailing dot)."""

    domain: str
    records: dict[str, tuple[int, ...]]   #: service names -> answers (pod records are computed)
    seed: int = 0
    #: answers already worked out, by (name, namespace): a replay asks the same names every batch
    _answers: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cluster(cls, cluster: Cluster, seed: int = 0) -> "DnsTable":
        """Build the service records of ``cluster`` (see the module docstring)."""
        try:
            from .cluster.endpoints import endpoints_for
            slices = endpoints_for(cluster)
        except ImportError:          # pragma: no cover - lands with the cluster loader
            slices = list(cluster.slices)
        domain = (cluster.domain or "cluster.local").strip(".").lower()
        ready: dict[tuple[str, str], set[int]] = {}
        for sl in slices:
            for e in sl.endpoints:
                if e.ready and e.addresses:
                    ready.setdefault((sl.namespace, sl.service), set()).add(e.addresses[0])
        records: dict[str, tuple[int, ...]] = {}
        for s in cluster.services:
            name = f"{s.name}.{s.namespace}.svc.{domain}".lower()
            if s.type == "ExternalName":
                continue
            if s.headless:
                ips = tuple(sorted(ready.get((s.namespace, s.name), ())))
            else:
                ips = tuple(s.cluster_ips[:1])
            if ips:
                records[name] = ips
        return cls(domain, records, int(seed))

    # ------------------------------------------------------------------ one name
    def lookup(self, fqdn: str) -> tuple[int, ...]:
        """A answers of one fully qualified name (lowercase, no trailing dot); () if none."""
        hit = self.records.get(fqdn)
        if hit is not None:
            return hit
        suffix = f".pod.{self.domain}"
        if fqdn.endswith(suffix):
            head = fqdn[: -len(suffix)]
            label, dot, ns = head.partition(".")
            if dot and ns and "." not in ns:
                ip = _dashed_ipv4(label)
                if ip is not None:
                    return (ip,)
        return ()

    def candidates(self, name: str, namespace: str | None) -> list[str]:
        """Names a client in ``namespace`` (None: not a pod) tries, in order."""
        name = name.strip().lower()
        if not name or name == ".":
            return []
        if name.endswith("."):
            return [name[:-1]]
        if namespace is None:
            return [name]
        search = [f"{namespace}.svc.{self.domain}", f"svc.{self.domain}", self.domain]
        searched = [f"{name}.{s}" for s in search]
        return [name] + searched if name.count(".") >= NDOTS else searched + [name]

    def answer(self, name: str, namespace: str | None) -> tuple[int, ...]:
        """A answers for ``name`` asked from ``namespace``: the first candidate that has any."""
        key = (name, namespace)
        hit = self._answers.get(key)
        if hit is None:
            hit = self._answers[key] = self._answer(name, namespace)
        return hit

    def _answer(self, name: str, namespace: str | None) -> tuple[int, ...]:
        for fqdn in self.candidates(name, namespace):
            if "" in fqdn.split("."):
                continue
            hit = self.lookup(fqdn)
            if hit:
                return hit
        return ()

    # ------------------------------------------------------------------ a batch
    def resolve(self, name_codes: np.ndarray, name_dict: list[str], src_ns: np.ndarray, ns_names: list[str],
                out_ip: np.ndarray, out_ok: np.ndarray, src_ip: np.ndarray | None = None,
                src_port: np.ndarray | None = None) -> None:
        """Resolve the ``dst_name`` of a batch in place.

        Parameters
        ----------
        name_codes : int32
            Index into ``name_dict`` per flow; -1 where the flow has no name
            (its ``out_ip`` and ``out_ok`` are left alone).
        name_dict
            The batch's distinct names.
        src_ns : int32
            Namespace index (into ``ns_names``) of each flow's source pod; -1
            for clients that are not pods.
        ns_names
            Namespace names.
        out_ip : uint32, out
            The answer, where there is one.
        out_ok : bool, out
            True where the name answered, False where it did not.
        src_ip, src_port : optional
            Client address and port, to pick among a headless service's answers.
        """
        codes = np.asarray(name_codes)
        ns = np.asarray(src_ns)
        n = codes.shape[0]
        if ns.shape[0] != n or out_ip.shape[0] != n or out_ok.shape[0] != n:
            raise FastpathError(f"dns: name_codes ({n}), src_ns ({ns.shape[0]}), out_ip ({out_ip.shape[0]}) "
                                f"and out_ok ({out_ok.shape[0]}) must have one row per flow")
        rows = np.flatnonzero(codes >= 0)
        if rows.size == 0:
            return
        c = codes[rows].astype(np.int64)
        s = ns[rows].astype(np.int64)
        if c.max() >= len(name_dict):
            raise FastpathError(f"dns: name code {int(c.max())} outside the batch's {len(name_dict)} names")
        if s.size and (s.max() >= len(ns_names) or s.min() < -1):
            raise FastpathError(f"dns: source namespace index {int(s.max())} outside the {len(ns_names)} namespaces")
        width = len(ns_names) + 1
        pair = c * width + (s + 1)
        memo = self._pair_memo(name_dict, width)
        count, start, name_key = memo["count"], memo["start"], memo["name_key"]
        uniq = np.unique(pair)
        unknown = uniq[count[uniq] < 0]
        if unknown.size:                 # each (name, namespace) pair is worked out once per dictionary
            unknown = self._pod_records(memo, unknown, width)
            new: list[int] = []
            used = memo["used"]
            for key in unknown.tolist():
                code, nsi = divmod(key, width)
                name = name_dict[code]
                name = name if isinstance(name, str) else str(name)
                ips = self.answer(name, ns_names[nsi - 1] if nsi else None)
                count[key] = len(ips)
                start[key] = used + len(new)
                new.extend(ips)
                name_key[key] = zlib.crc32(name.lower().encode())
            _append(memo, np.array(new, dtype=np.uint32))
        answers = memo["answers"]
        k = count[pair]
        ok = k > 0
        out_ok[rows] = ok
        pos = np.zeros(rows.shape[0], dtype=np.int64)
        multi = k > 1
        if multi.any():
            if src_ip is not None and src_port is not None:
                who = ((np.asarray(src_ip, dtype=np.uint64)[rows[multi]] << np.uint64(16))
                       | np.asarray(src_port, dtype=np.uint64)[rows[multi]])
            else:
                who = name_key[pair[multi]]
            h = mix64_np(who ^ np.uint64(seed_key(self.seed, SALT_DNS)))
            pos[multi] = (h >> np.uint64(32)) % k[multi].astype(np.uint64)
        out_ip[rows[ok]] = answers[start[pair[ok]] + pos[ok]]

    def _pod_records(self, memo: dict, keys: np.ndarray, width: int) -> np.ndarray:
        """Answer the pod records (``a-b-c-d.<ns>.pod.<domain>``) among ``keys`` at once; return the rest.

        Vectorized with Arrow's regex kernels. Equivalent to :meth:`answer` for
        these names from any client: the search-list candidates before the
        absolute name can never match (a service name has no dots).
        """
        if "arrow" not in memo:
            memo["arrow"] = pa.array(memo["dict"], type=pa.string())
        names = pc.utf8_lower(memo["arrow"].take(pa.array(keys // width)))
        pattern = (r"^(?P<a>\d{1,3})-(?P<b>\d{1,3})-(?P<c>\d{1,3})-(?P<d>\d{1,3})\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
                   r"\.pod\." + re.escape(self.domain) + r"\.?$")
        hit = pc.match_substring_regex(names, pattern).fill_null(False).to_numpy(zero_copy_only=False)
        if not hit.any():
            return keys
        parts = pc.extract_regex(names.filter(pa.array(hit)), pattern)
        octets = [parts.field(f).to_numpy(zero_copy_only=False) for f in "abcd"]
        value = np.zeros(int(hit.sum()), dtype=np.uint64)
        good = np.ones(value.shape[0], dtype=bool)
        for o in octets:
            digits = o.astype(str)
            good &= ~((np.char.str_len(digits) > 1) & (np.char.startswith(digits, "0")))   # no leading zeros
            v = o.astype(np.int64)
            good &= v <= 255
            value = (value << np.uint64(8)) | v.astype(np.uint64)
        k = keys[hit][good]
        memo["count"][k] = 1
        memo["start"][k] = memo["used"] + np.arange(k.size)
        _append(memo, value[good].astype(np.uint32))
        memo["name_key"][k] = [zlib.crc32(str(n).encode()) for n in names.filter(pa.array(hit)).filter(pa.array(good)).to_pylist()]
        rest = np.ones(keys.shape[0], dtype=bool)
        rest[np.flatnonzero(hit)[good]] = False
        return keys[rest]

    def _pair_memo(self, name_dict: list[str], width: int) -> dict:
        """Answers by (name code, namespace) for one name dictionary, filled as pairs are met.

        A trace's batches share their dictionary (the reader hands back the same
        list), so a replay works out each pair once, not once per batch.
        """
        memo = self._answers.get("__pairs__")
        if memo is None or memo["dict"] is not name_dict or memo["width"] != width:
            size = len(name_dict) * width
            memo = {"dict": name_dict, "width": width, "count": np.full(size, -1, dtype=np.int64),
                    "start": np.zeros(size, dtype=np.int64), "name_key": np.zeros(size, dtype=np.uint64),
                    "answers": np.zeros(1024, dtype=np.uint32), "used": 0}
            self._answers["__pairs__"] = memo
        return memo


def _append(memo: dict, values: np.ndarray) -> None:
    """Append answers to the memo's buffer, doubling it when full (amortized O(1) per answer)."""
    used = memo["used"]
    buf = memo["answers"]
    if used + values.size > buf.size:
        grown = np.zeros(max(2 * buf.size, used + values.size), dtype=np.uint32)
        grown[:used] = buf[:used]
        memo["answers"] = buf = grown
    buf[used:used + values.size] = values
    memo["used"] = used + values.size


def _dashed_ipv4(label: str) -> int | None:
    """``a-b-c-d`` -> the address, or None if not four decimal octets without leading zeros."""
    parts = label.split("-")
    if len(parts) != 4:
        return None
    value = 0
    for p in parts:
        if not p.isdigit() or not p.isascii() or (len(p) > 1 and p[0] == "0") or int(p) > 255:
            return None
        value = (value << 8) | int(p)
    return value
