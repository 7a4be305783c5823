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

A trace's name dictionary is answered whole, for every client namespace, in one
vectorized pass (Arrow's string kernels build each name's candidates and look
them up; names outside printable ASCII go through :meth:`DnsTable.answer`), the
first time a batch uses it; flows then take their answer by numpy indexing.
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
#: A name dictionary with at most this many (name, client namespace) pairs is answered whole
#: the first time a batch uses it (one vectorized pass); a larger one pair by pair as batches meet them.
EAGER_PAIRS = 1 << 20


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
        if not memo["all"] and count.size <= EAGER_PAIRS:
            memo["all"] = True               # the whole dictionary, from every namespace, in one pass
            unknown = np.flatnonzero(count < 0)
        else:                            # (after a batch or two, none: no sort of every row's pair)
            unknown = np.unique(pair[count[pair] < 0])
        if unknown.size:                 # each (name, namespace) pair is worked out once per dictionary
            unknown = self._answer_pairs(memo, unknown, width, ns_names)
            new: list[int] = []
            used = memo["used"]
            for key in unknown.tolist():     # names the vectorized pass leaves to Python (non-ASCII, control)
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

    def _records(self) -> dict:
        """The service records as Arrow keys and a flat answer array (built once)."""
        rec = self._answers.get("__records__")
        if rec is None:
            names = list(self.records)
            counts = np.array([len(self.records[n]) for n in names], dtype=np.int64)
            starts = np.zeros(len(names), dtype=np.int64)
            if len(names) > 1:
                starts[1:] = np.cumsum(counts)[:-1]
            flat = [ip for n in names for ip in self.records[n]]
            rec = self._answers["__records__"] = {
                "keys": pa.array(names, type=pa.large_string()), "count": counts, "start": starts,
                "answers": np.array(flat, dtype=np.uint32)}
        return rec

    def _lookup_many(self, fqdns: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`lookup` over an array of names: (record index or -1, pod-record address, has pod record)."""
        rec = self._records()
        idx = pc.index_in(fqdns, value_set=rec["keys"]).fill_null(-1).to_numpy(zero_copy_only=False)
        idx = np.asarray(idx, dtype=np.int64)
        n = len(fqdns)
        value = np.zeros(n, dtype=np.uint64)
        good = np.zeros(n, dtype=bool)
        maybe = _np_bool(pc.ends_with(fqdns, f".pod.{self.domain}")) & (idx < 0)   # the regex only where it can hit
        if not maybe.any():
            return idx, value.astype(np.uint32), good
        where = np.flatnonzero(maybe)
        pattern = (r"^(?P<a>[0-9]{1,3})-(?P<b>[0-9]{1,3})-(?P<c>[0-9]{1,3})-(?P<d>[0-9]{1,3})\.[^.]+"
                   r"\.pod\." + re.escape(self.domain) + r"$")
        parts = pc.extract_regex(fqdns.take(pa.array(where)), pattern)
        ok = np.asarray(parts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        v = np.zeros(where.size, dtype=np.uint64)
        if ok.any():
            for f in "abcd":
                text = parts.field(f)
                digits = pc.utf8_length(text).to_numpy(zero_copy_only=False)
                lead0 = pc.starts_with(text, "0").to_numpy(zero_copy_only=False)
                num = pc.cast(pc.if_else(parts.is_valid(), text, "0"), pa.int64()).to_numpy(zero_copy_only=False)
                ok &= ~((digits > 1) & lead0) & (num <= 255)           # no leading zeros, an octet
                v = (v << np.uint64(8)) | num.astype(np.uint64)
        good[where] = ok
        value[where] = v
        return idx, value.astype(np.uint32), good

    def _answer_pairs(self, memo: dict, keys: np.ndarray, width: int, ns_names: list[str]) -> np.ndarray:
        """Answer (name code, namespace slot) ``keys`` in one vectorized pass; return those left to Python.

        The same answers as :meth:`answer`: the candidates of :meth:`candidates`
        (built with Arrow's string kernels), each looked up in the records and as
        a pod record, the first with an answer winning. The name as is and its
        ``svc.<domain>`` and ``<domain>`` forms are looked up once per name, the
        ``<ns>.svc.<domain>`` form once per pair. Names with characters outside
        printable ASCII (where Python's and Arrow's case folding or whitespace
        could differ) are returned for :meth:`answer`.
        """
        if "arrow" not in memo:
            memo["arrow"] = pa.array([n if isinstance(n, str) else str(n) for n in memo["dict"]],
                                     type=pa.large_string())
        if "ns_arrow" not in memo or memo["ns_key"] != ns_names:
            memo["ns_arrow"] = pa.array([""] + [str(n).lower() for n in ns_names], type=pa.large_string())
            memo["ns_key"] = list(ns_names)
        codes, nsi = np.divmod(keys, width)
        names_u, inv = np.unique(codes, return_inverse=True)        # per name, then per pair
        raw = memo["arrow"].take(pa.array(names_u))
        plain_u = _np_bool(pc.match_substring_regex(raw, r"^[\x20-\x7e]*$"))
        plain = plain_u[inv]
        rest = keys[~plain]
        if not plain.any():
            return rest
        name = pc.ascii_lower(pc.utf8_trim(raw, " "))
        empty = _np_bool(pc.equal(name, "")) | _np_bool(pc.equal(name, "."))
        absolute = _np_bool(pc.ends_with(name, "."))
        base = pc.if_else(pa.array(absolute), pc.utf8_slice_codeunits(name, 0, -1), name)
        broken = _np_bool(pc.starts_with(base, ".")) | _np_bool(pc.match_substring(base, ".."))
        as_is_broken = broken | _np_bool(pc.ends_with(base, "."))
        dots = np.asarray(pc.count_substring(name, ".").to_numpy(zero_copy_only=False))
        d, dot = pa.scalar(self.domain, pa.large_string()), pa.scalar(".", pa.large_string())
        svc_d = pa.scalar(f"svc.{self.domain}", pa.large_string())
        per_name = [(base, ~as_is_broken & ~empty),                                   # A: the name as is
                    (pc.binary_join_element_wise(base, svc_d, dot), ~broken & ~empty),  # C
                    (pc.binary_join_element_wise(base, d, dot), ~broken & ~empty)]      # D
        n = keys.size
        pod_client = (nsi > 0) & ~absolute[inv]
        search = pod_client & plain
        hits, recs, pods = {}, {}, {}
        for kind, (cand, ok) in zip((0, 2, 3), per_name):
            idx, value, pod = self._lookup_many(cand)
            hit = ok & ((idx >= 0) | pod)
            hits[kind], recs[kind], pods[kind] = hit[inv], idx[inv], value[inv]
        hits[2] &= search
        hits[3] &= search
        hits[0] &= plain
        b_rows = np.flatnonzero(search & (~broken & ~empty)[inv])                    # B: <ns>.svc.<domain>, per pair
        hits[1] = np.zeros(n, dtype=bool)
        recs[1] = np.full(n, -1, dtype=np.int64)
        pods[1] = np.zeros(n, dtype=np.uint32)
        if b_rows.size:
            cand = pc.binary_join_element_wise(base.take(pa.array(inv[b_rows])),
                                               memo["ns_arrow"].take(pa.array(nsi[b_rows])), svc_d, dot)
            idx, value, pod = self._lookup_many(cand)
            hits[1][b_rows] = (idx >= 0) | pod
            recs[1][b_rows] = idx
            pods[1][b_rows] = value
        a_first = ~pod_client | (dots[inv] >= NDOTS)
        order_a = [0, 1, 2, 3]
        order_b = [1, 2, 3, 0]
        win = np.full(n, -1, dtype=np.int64)
        for i in range(4):
            ka, kb = order_a[i], order_b[i]
            take_a = (win < 0) & a_first & hits[ka]
            take_b = (win < 0) & ~a_first & hits[kb]
            win[take_a] = ka
            win[take_b] = kb
        keys = keys[plain]
        win = win[plain]
        rec = self._records()
        count, start, name_key = memo["count"], memo["start"], memo["name_key"]
        if "rec_base" not in memo:             # the records' answers, once per memo, at a fixed offset
            memo["rec_base"] = memo["used"]
            _append(memo, rec["answers"])
        rec_base = memo["rec_base"]
        got_idx = np.full(keys.size, -1, dtype=np.int64)
        got_pod = np.zeros(keys.size, dtype=np.uint32)
        for k in range(4):
            sel = win == k
            got_idx[sel] = recs[k][plain][sel]
            got_pod[sel] = pods[k][plain][sel]
        is_rec = got_idx >= 0
        is_pod = (win >= 0) & ~is_rec
        count[keys] = 0
        start[keys] = 0
        count[keys[is_rec]] = rec["count"][got_idx[is_rec]]
        start[keys[is_rec]] = rec_base + rec["start"][got_idx[is_rec]]
        pod_keys = keys[is_pod]
        count[pod_keys] = 1
        start[pod_keys] = memo["used"] + np.arange(pod_keys.size)
        _append(memo, got_pod[is_pod])
        multi = keys[count[keys] > 1]      # a name's CRC picks among several answers when no client is given
        names = memo["dict"]
        for key in multi.tolist():
            nm = names[key // width]
            name_key[key] = zlib.crc32((nm if isinstance(nm, str) else str(nm)).lower().encode())
        return rest

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
                    "answers": np.zeros(1024, dtype=np.uint32), "used": 0, "all": False}
            self._answers["__pairs__"] = memo
        return memo


def _np_bool(a) -> np.ndarray:
    """An Arrow boolean array as numpy (null: False)."""
    return np.asarray(a.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


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
