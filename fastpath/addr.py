"""Addresses: IPv4 text <-> uint32 (vectorized), CIDRs, MAC addresses as uint64.

IPv4 addresses travel through fastpath as ``uint32`` holding the address's
value (``int(ipaddress.IPv4Address(s))``); MAC addresses as ``uint64`` holding
the 48-bit value. Column conversions run in a numba kernel straight over the
Arrow string buffers, so a million strings take milliseconds, not a Python
loop per row.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

import numpy as np
import pyarrow as pa

from ._jit import jit
from .errors import FastpathError

#: The CNI bridge plugin's MAC prefix: ``0a:58`` then the four IPv4 bytes.
CNI_MAC_PREFIX = 0x0A58_0000_0000
#: 127.0.0.0/8, the loopback range.
LOOPBACK_NET, LOOPBACK_LEN = 0x7F000000, 8


# --------------------------------------------------------------------------- scalars

def ip_to_int(text: str, what: str = "address") -> int:
    """Parse dotted-quad IPv4 text to its integer value, or raise :class:`FastpathError`."""
    try:
        return int(ipaddress.IPv4Address(str(text).strip()))
    except (ipaddress.AddressValueError, ValueError):
        raise FastpathError(f"bad IPv4 {what} {text!r}: expected dotted quad like 10.244.1.7") from None


def int_to_ip(value: int) -> str:
    """Integer value to dotted-quad text."""
    return str(ipaddress.IPv4Address(int(value)))


def parse_cidr(text: str, strict: bool = True) -> tuple[int, int]:
    """Parse ``a.b.c.d/len`` to ``(network, length)``.

    A missing length means /32. With ``strict`` (the default) host bits set
    beyond the length are an error; the message names the bad value and the
    network it probably meant.
    """
    s = str(text).strip()
    addr, sep, plen = s.partition("/")
    if sep:
        if not plen.isdigit():
            raise FastpathError(f"bad CIDR {text!r}: prefix length {plen!r} is not a number")
        length = int(plen)
        if length > 32:
            raise FastpathError(f"bad CIDR {text!r}: prefix length {length} is outside 0-32")
    else:
        length = 32
    try:
        value = int(ipaddress.IPv4Address(addr))
    except (ipaddress.AddressValueError, ValueError):
        raise FastpathError(f"bad CIDR {text!r}: {addr!r} is not an IPv4 address") from None
    mask = prefix_mask(length)
    if value & ~mask & 0xFFFFFFFF:
        if strict:
            raise FastpathError(
                f"bad CIDR {text!r}: host bits set (the network is {int_to_ip(value & mask)}/{length})"
            )
        value &= mask
    return value, length


def prefix_mask(length: int) -> int:
    """Netmask of a prefix length as an integer (``/0`` -> 0)."""
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def cidr_contains(network: int, length: int, ip: int) -> bool:
    """Whether ``ip`` lies in ``network/length``."""
    return (ip & prefix_mask(length)) == network


def format_cidr(network: int, length: int) -> str:
    return f"{int_to_ip(network)}/{length}"


def mac_to_int(text: str) -> int:
    """``aa:bb:cc:dd:ee:ff`` (or ``-`` separated) to its 48-bit integer value."""
    parts = str(text).strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise FastpathError(f"bad MAC address {text!r}: expected six hex bytes like 0a:58:0a:f4:01:07")
    try:
        return int("".join(parts), 16)
    except ValueError:
        raise FastpathError(f"bad MAC address {text!r}: expected six hex bytes like 0a:58:0a:f4:01:07") from None


def int_to_mac(value: int) -> str:
    """48-bit integer to ``aa:bb:cc:dd:ee:ff``."""
    v = int(value)
    return ":".join(f"{(v >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def cni_mac(ip: np.ndarray | int) -> np.ndarray | int:
    """The CNI bridge plugin's MAC for an IPv4 address: ``0a:58:`` + the 4 address bytes.

    Works on a scalar or, vectorized, on a uint32 array (returns uint64).
    """
    if isinstance(ip, (int, np.integer)):
        return CNI_MAC_PREFIX | (int(ip) & 0xFFFFFFFF)
    return np.asarray(ip, dtype=np.uint64) | np.uint64(CNI_MAC_PREFIX)


# --------------------------------------------------------------------------- columns

@jit(inline="always")
def _dotted_quad(data, p, end):
    """Read ``a.b.c.d`` from ``data[p:end]``: (value, the position after it, whether it is one).

    Each octet 1-3 digits, at most 255, no leading zero (inet_aton would read it as
    octal); what follows the fourth octet is the caller's.
    """
    value = np.uint32(0)
    octets = 0
    while True:
        digits = 0
        octet = 0
        lead = p
        while p < end and data[p] >= 48 and data[p] <= 57:
            octet = octet * 10 + (data[p] - 48)
            digits += 1
            p += 1
        if digits == 0 or digits > 3 or octet > 255 or (digits > 1 and data[lead] == 48):
            return value, p, False
        value = np.uint32((value << np.uint32(8)) | np.uint32(octet))
        octets += 1
        if octets == 4:
            return value, p, True
        if p >= end or data[p] != 46:  # '.'
            return value, p, False
        p += 1


@jit
def _parse_ipv4_buffer(offsets, data, valid, out):
    """Parse dotted quads from an Arrow string buffer. Returns the first bad row or -1."""
    n = out.shape[0]
    for i in range(n):
        if not valid[i]:
            out[i] = 0
            continue
        value, p, ok = _dotted_quad(data, offsets[i], offsets[i + 1])
        if not ok or p != offsets[i + 1]:
            return i
        out[i] = value
    return -1


def ips_from_strings(values: Iterable[str] | pa.Array | pa.ChunkedArray, what: str = "column") -> np.ndarray:
    """Dotted-quad strings to a uint32 array, vectorized over the Arrow buffers.

    Nulls become 0 (check validity separately where nulls matter). A
    malformed string raises :class:`FastpathError` naming ``what``, the row and
    the value.
    """
    arr = values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not isinstance(arr, pa.Array):
        arr = pa.array(list(arr), type=pa.string())
    if pa.types.is_dictionary(arr.type):
        codes = np.asarray(arr.indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return ips_from_strings(arr.dictionary, what)[codes]
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        arr = arr.cast(pa.large_string())
    elif not pa.types.is_large_string(arr.type):
        raise FastpathError(f"{what}: expected uint32 or dotted-quad strings, got {arr.type}")
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1 + arr.offset)[arr.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    if arr.null_count:
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    else:
        valid = np.ones(n, dtype=np.bool_)
    out = np.empty(n, dtype=np.uint32)
    bad = _parse_ipv4_buffer(offsets, data, valid, out)
    if bad >= 0:
        raw = bytes(data[offsets[bad]:offsets[bad + 1]][:64])  # bytes: the value may not be UTF-8
        try:
            shown = repr(raw.decode("utf-8"))
        except UnicodeDecodeError:
            shown = f"{raw!r} (not UTF-8)"
        raise FastpathError(f"{what}: row {bad} holds {shown}, not an IPv4 address")
    return out


@jit
def _parse_cidr_buffer(offsets, data, net, length):
    """Parse ``a.b.c.d/len`` (or a bare address: /32) rows from an Arrow string buffer.

    Writes ``net`` and ``length`` per row; returns a mask of rows this strict
    reader could not take (whitespace, a bad number, host bits set, ...), which the
    caller hands to :func:`parse_cidr` one by one for the exact answer or message.
    """
    n = net.shape[0]
    odd = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        end = offsets[i + 1]
        value, p, ok = _dotted_quad(data, offsets[i], end)
        bad = not ok
        plen = 32
        if not bad and p < end:
            if data[p] != 47:  # '/'
                bad = True
            else:
                p += 1
                digits = 0
                plen = 0
                while p < end and data[p] >= 48 and data[p] <= 57 and digits < 3:
                    plen = plen * 10 + (data[p] - 48)
                    digits += 1
                    p += 1
                if digits == 0 or p != end or plen > 32:
                    bad = True
        if not bad and plen < 32 and (value & np.uint32((1 << (32 - plen)) - 1)) != 0:
            bad = True                     # host bits set: parse_cidr words the error
        odd[i] = bad
        net[i] = value
        length[i] = plen
    return odd


def cidrs_from_strings(values: Iterable[str] | pa.Array, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIDR strings to ``(network uint32, length int64)`` arrays, vectorized.

    The same answers and errors as :func:`parse_cidr` on each string (which it
    falls back to for the rare rows the buffer parser does not take: spaces, host
    bits set, malformed text), at a few nanoseconds a row.
    """
    arr = values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not isinstance(arr, pa.Array):
        items = values if isinstance(values, list) else list(values)
        try:
            arr = pa.array(items, type=pa.large_string())
        except (pa.ArrowException, TypeError):
            arr = pa.array([str(v) for v in items], type=pa.large_string())
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    n = len(arr)
    bufs = arr.buffers()    # a null row reads as empty text: odd, so parse_cidr words it
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1 + arr.offset)[arr.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    net = np.empty(n, dtype=np.uint32)
    length = np.empty(n, dtype=np.int64)
    odd = _parse_cidr_buffer(offsets, data, net, length)
    for i in np.flatnonzero(odd).tolist():
        net[i], length[i] = parse_cidr(arr[i].as_py(), strict=strict)
    return net, length


@jit
def _format_ipv4(values, offsets, data):
    n = values.shape[0]
    p = 0
    offsets[0] = 0
    for i in range(n):
        v = values[i]
        for k in range(4):
            octet = (v >> np.uint32(24 - 8 * k)) & np.uint32(255)
            if octet >= 100:
                data[p] = 48 + octet // 100
                p += 1
            if octet >= 10:
                data[p] = 48 + (octet // 10) % 10
                p += 1
            data[p] = 48 + octet % 10
            p += 1
            if k < 3:
                data[p] = 46
                p += 1
        offsets[i + 1] = p
    return p


def ips_to_strings(values: np.ndarray) -> pa.StringArray:
    """uint32 addresses to an Arrow array of dotted-quad strings (vectorized)."""
    v = np.ascontiguousarray(values, dtype=np.uint32)
    offsets = np.empty(v.shape[0] + 1, dtype=np.int32)
    data = np.empty(max(1, v.shape[0] * 15), dtype=np.uint8)
    used = _format_ipv4(v, offsets, data)
    return pa.StringArray.from_buffers(v.shape[0], pa.py_buffer(offsets), pa.py_buffer(data[:used].copy()))
