"""Slow twin of :mod:`fastpath.dns`: CoreDNS's records and a pod's resolv.conf, one query at a time.

Written from the spec §4 and the module docstring's choices: records are a dict
built by scanning services and slices; pod records are parsed with ``ipaddress``;
the search list follows resolv.conf(5) (ndots:5, trailing dot = absolute).
"""
from __future__ import annotations

import ipaddress
import zlib
from typing import Optional

from fastpath.cluster.endpoints import endpoints_for
from fastpath.cluster.model import Cluster

from .services import fmix64, key_of


class NaiveDns:
    def __init__(self, cluster: Cluster, seed: int = 0):
        self.domain = (cluster.domain or "cluster.local").lower().strip(".")
        self.seed = seed
        self.a: dict[str, list[int]] = {}
        slices = endpoints_for(cluster)
        for svc in cluster.services:
            fqdn = (svc.name + "." + svc.namespace + ".svc." + self.domain).lower()
            if svc.type == "ExternalName":
                continue                                  # a CNAME out of the cluster
            if svc.headless:
                ips = set()
                for sl in slices:
                    if sl.namespace == svc.namespace and sl.service == svc.name:
                        for e in sl.endpoints:
                            if e.ready and e.addresses:
                                ips.add(e.addresses[0])
                if ips:
                    self.a[fqdn] = sorted(ips)
            elif svc.cluster_ips:
                self.a[fqdn] = [svc.cluster_ips[0]]

    def query(self, fqdn: str) -> list[int]:
        if fqdn in self.a:
            return self.a[fqdn]
        labels = fqdn.split(".")
        dom = self.domain.split(".")
        if len(labels) == 3 + len(dom) and labels[2] == "pod" and labels[3:] == dom and labels[1]:
            try:
                addr = ipaddress.IPv4Address(labels[0].replace("-", "."))
            except ValueError:
                return []
            if labels[0].count("-") == 3:
                return [int(addr)]
        return []

    def answers(self, name: str, namespace: Optional[str]) -> list[int]:
        name = name.strip().lower()
        if name in ("", "."):
            return []
        if name.endswith("."):
            tries = [name[:-1]]
        elif namespace is None:
            tries = [name]
        else:
            search = [namespace + ".svc." + self.domain, "svc." + self.domain, self.domain]
            with_search = [name + "." + s for s in search]
            tries = ([name] + with_search) if name.count(".") >= 5 else (with_search + [name])
        for t in tries:
            if any(label == "" for label in t.split(".")):
                continue
            got = self.query(t)
            if got:
                return got
        return []

    def resolve(self, name: str, namespace: Optional[str], src_ip: Optional[int] = None,
                src_port: Optional[int] = None) -> Optional[int]:
        ips = self.answers(name, namespace)
        if not ips:
            return None
        if len(ips) == 1:
            return ips[0]
        who = (src_ip << 16 | src_port) if src_ip is not None else zlib.crc32(name.lower().encode())
        h = fmix64(who ^ key_of(self.seed, "dns"))
        return ips[(h >> 32) % len(ips)]
