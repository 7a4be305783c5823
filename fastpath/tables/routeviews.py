"""RouteViews / CAIDA ``pfx2as`` files: a real Internet routing table for LPM work.

A ``pfx2as`` file (``routeviews-rv2-YYYYMMDD-HHMM.pfx2as.gz``) has one line per
announced IPv4 prefix: ``prefix<TAB>length<TAB>origin``, where the origin is an AS
number, several joined by ``_`` (multi-origin) or ``,`` (an AS set, sometimes in
braces). :func:`read_pfx2as` turns it into the ``(prefix, length, next_hop)``
arrays :meth:`fastpath.tables.lpm.RouteTable.from_arrays` takes, with the next hop
the index of the origin string in a list of distinct origins.

Reading is vectorized (``pyarrow.csv`` plus :func:`fastpath.addr.ips_from_strings`),
so the 616k-line table loads in a fraction of a second. Only when something is
wrong does a plain line-by-line scan run, to name the file and line at fault.
"""
from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..addr import ips_from_strings
from ..errors import FastpathError

#: Column names given to the three tab-separated fields of a pfx2as line.
COLUMNS = ("prefix", "length", "asn")
#: An origin field: AS numbers joined by ``_`` (multi-origin) or ``,`` (AS set), maybe in braces.
ASN_PATTERN = r"^\{?[0-9]+(?:[_,{}]+[0-9]+)*\}?$"
#: Dotted quad with 1-3 digit octets (the same rule as :func:`fastpath.addr.ips_from_strings`).
_IPV4_PATTERN = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
#: gzip magic bytes; pfx2as files are usually gzipped, plain text also reads.
_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open_text(path: Path) -> io.TextIOBase:
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _check_line(path: Path, lineno: int, line: str) -> None:
    """Raise :class:`FastpathError` if one pfx2as line is malformed (the slow, exact check)."""
    fields = line.split("\t")
    where = f"{path}: line {lineno}"
    if len(fields) != 3:
        raise FastpathError(f"{where}: expected 3 tab-separated fields (prefix, length, origin AS), "
                            f"got {len(fields)} in {line!r}")
    prefix, length, asn = fields
    if ":" in prefix:
        raise FastpathError(f"{where}: {prefix!r} is an IPv6 prefix; read_pfx2as reads IPv4 "
                            f"tables only (routeviews-rv2-*, not rv6)")
    m = _IPV4_PATTERN.match(prefix)
    if m is None or any(int(o) > 255 for o in m.groups()):
        raise FastpathError(f"{where}: prefix {prefix!r} is not an IPv4 address")
    if not length.isascii() or not length.isdigit() or int(length) > 32:
        raise FastpathError(f"{where}: prefix length {length!r} is not a number in 0-32")
    value = 0
    for o in m.groups():
        value = (value << 8) | int(o)
    n = int(length)
    mask = (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF if n else 0
    if value & ~mask & 0xFFFFFFFF:
        raise FastpathError(f"{where}: prefix {prefix}/{n} has host bits set")
    if re.match(ASN_PATTERN, asn) is None:
        raise FastpathError(f"{where}: origin AS {asn!r} is not an AS number "
                            f"(like 701, 701_702 or {{701,702}})")


def _raise_at_bad_line(path: Path, hint: str) -> None:
    """Scan ``path`` line by line and raise at the first malformed line."""
    with _open_text(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if line:
                _check_line(path, lineno, line)
    raise FastpathError(f"{path}: not a readable pfx2as file ({hint})")


def _read_table(path: Path) -> pa.Table:
    source = pa.input_stream(str(path), compression="gzip" if _is_gzip(path) else None)
    return pcsv.read_csv(
        source,
        read_options=pcsv.ReadOptions(column_names=list(COLUMNS)),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                        escape_char=False),
        convert_options=pcsv.ConvertOptions(
            column_types={"prefix": pa.string(), "length": pa.int16(), "asn": pa.string()},
            strings_can_be_null=False,
        ),
    )


def read_pfx2as(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read an IPv4 RouteViews ``pfx2as`` file (gzip or plain text).

    Parameters
    ----------
    path
        A ``routeviews-rv2-*.pfx2as.gz`` file: ``prefix<TAB>length<TAB>origin`` lines.

    Returns
    -------
    prefixes : numpy.ndarray of uint32
        Network addresses, in file order.
    lengths : numpy.ndarray of uint8
        Prefix lengths (0-32).
    next_hops : numpy.ndarray of uint32
        Index into ``asns`` of each line's origin field.
    asns : list of str
        The distinct origin fields (``"15169"``, ``"3257_4436"``, ``"31167,65623"``), in
        order of first appearance.

    Raises
    ------
    FastpathError
        The file is missing, is an IPv6 table, or has a malformed line (the message names
        the file and line).

    Examples
    --------
    >>> prefixes, lengths, next_hops, asns = read_pfx2as("routeviews-rv2-20160202-1200.pfx2as.gz")
    >>> rt = RouteTable.from_arrays(prefixes, lengths, next_hops)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FastpathError(f"{path}: no such pfx2as file")
    if path.stat().st_size == 0:
        return _empty()
    try:
        table = _read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError) as exc:
        if "Empty CSV file" in str(exc):
            return _empty()
        _raise_at_bad_line(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise  # unreachable: _raise_at_bad_line always raises
    if table.num_rows == 0:
        return _empty()

    length_col = table.column("length")
    if length_col.null_count or pc.min(length_col).as_py() < 0 or pc.max(length_col).as_py() > 32:
        _raise_at_bad_line(path, "a prefix length outside 0-32")
    lengths = length_col.to_numpy().astype(np.uint8)
    try:
        prefixes = ips_from_strings(table.column("prefix"), what=str(path))
    except FastpathError as exc:
        _raise_at_bad_line(path, str(exc))
    # host bits beyond the length: the shift by 32 - length needs 64-bit arithmetic for /0.
    masks = ((np.uint64(0xFFFFFFFF) << (32 - lengths.astype(np.uint64))) & np.uint64(0xFFFFFFFF))
    if np.any(prefixes.astype(np.uint64) & ~masks & np.uint64(0xFFFFFFFF)):
        _raise_at_bad_line(path, "a prefix with host bits set")

    encoded = pc.dictionary_encode(table.column("asn").combine_chunks())
    asns = encoded.dictionary
    if not pc.all(pc.match_substring_regex(asns, ASN_PATTERN)).as_py():
        _raise_at_bad_line(path, "a malformed origin AS field")
    next_hops = encoded.indices.to_numpy().astype(np.uint32)
    return prefixes, lengths, next_hops, asns.to_pylist()


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    return (np.empty(0, np.uint32), np.empty(0, np.uint8), np.empty(0, np.uint32), [])
