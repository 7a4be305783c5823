"""Slow twin of :class:`fastpath.tables.lpm.RouteTable`: one dict per prefix length.

Longest-prefix match as a textbook states it: for a destination, try lengths 32, 31,
..., 0, mask the address to that length and look the network up in that length's dict;
the first hit wins. Written from the rules, not from the kernel.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence, Union

#: Next hop returned where no prefix covers the destination (same value as RouteTable.MISS).
MISS = 0xFFFFFFFF

Route = Union[str, "tuple[int, int]"]


#: Netmask of every prefix length /0../32 as an int, straight from ipaddress.
MASKS = [int(ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask) for n in range(33)]


def mask(length: int) -> int:
    """Netmask of a prefix length as an int (``/0`` -> 0)."""
    return MASKS[length]


def parse_route(route: Route) -> tuple[int, int]:
    """``"10.0.0.0/8"`` or ``(prefix_int, length)`` -> ``(prefix_int, length)``; strict about host bits."""
    if isinstance(route, str):
        net = ipaddress.IPv4Network(route, strict=True)  # ValueError on bad CIDRs
        return int(net.network_address), net.prefixlen
    prefix, length = int(route[0]), int(route[1])
    net = ipaddress.IPv4Network((prefix, length), strict=True)
    return int(net.network_address), net.prefixlen


class NaiveRouteTable:
    """Dict-per-length LPM table with the same insert/delete semantics as RouteTable."""

    MISS = MISS

    def __init__(self) -> None:
        self.by_length: list[dict[int, int]] = [{} for _ in range(33)]

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], next_hops: Iterable[int]) -> "NaiveRouteTable":
        table = cls()
        for cidr, nh in zip(list(cidrs), list(next_hops), strict=True):
            table.insert(cidr, nh)
        return table

    @classmethod
    def from_arrays(cls, prefixes: Sequence[int], lengths: Sequence[int],
                    next_hops: Sequence[int]) -> "NaiveRouteTable":
        """Build from parallel sequences; a repeated prefix keeps the last next hop."""
        table = cls()
        for p, n, nh in zip(prefixes, lengths, next_hops, strict=True):
            table.insert((int(p), int(n)), int(nh))
        return table

    def insert(self, route: Route, next_hop: int) -> None:
        prefix, length = parse_route(route)
        self.by_length[length][prefix] = int(next_hop)

    def delete(self, route: Route) -> None:
        """Remove a prefix; ``KeyError`` if absent."""
        prefix, length = parse_route(route)
        del self.by_length[length][prefix]

    def lookup(self, address: int) -> int:
        """Next hop of the longest prefix covering ``address``, or :data:`MISS`."""
        address = int(address)
        for length in range(32, -1, -1):
            hop = self.by_length[length].get(address & mask(length))
            if hop is not None:
                return hop
        return MISS

    def lookup_many(self, addresses: Iterable[int]) -> list[int]:
        return [self.lookup(a) for a in addresses]

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_length)

    def prefixes(self) -> list[tuple[int, int, int]]:
        """``(prefix, length, next_hop)`` of every route, sorted by (prefix, length)."""
        return sorted((p, n, nh) for n, d in enumerate(self.by_length) for p, nh in d.items())

    def ranges(self) -> list[tuple[int, int]]:
        """Disjoint ``(start, next_hop)`` ranges covering [0, 2**32), adjacent equal hops merged.

        Every change of the answer happens at a prefix's first address or just past its
        last, so evaluating the lookup at those points gives the whole picture.
        """
        points = {0}
        for p, n, _ in self.prefixes():
            points.add(p)
            end = p + (1 << (32 - n))
            if end < 1 << 32:
                points.add(end)
        out: list[tuple[int, int]] = []
        for start in sorted(points):
            hop = self.lookup(start)
            if not out or out[-1][1] != hop:
                out.append((start, hop))
        return out
