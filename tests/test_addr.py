"""fastpath.addr against the standard library's ipaddress, on edge cases and random data."""
from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fastpath.addr import (
    cidr_contains,
    cidrs_from_strings,
    cni_mac,
    format_cidr,
    int_to_ip,
    int_to_mac,
    ip_to_int,
    ips_from_strings,
    ips_to_strings,
    mac_to_int,
    parse_cidr,
    prefix_mask,
)
from fastpath.errors import FastpathError

EDGE_IPS = [0, 1, 0x7F000001, 0x0A000000, 0x0AF40107, 0xC0A8FFFF, 0xFFFFFFFE, 0xFFFFFFFF]
BAD_IPS = ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.256", "1..2.3", "1.2.3.", ".1.2.3",
           "a.b.c.d", "1.2.3.4 ", " 1.2.3.4", "1.2.3.1000", "1.2.3.-4", "1,2,3,4", "::1",
           "10.0.0.0/8", "1.2.3.4\n"]


def _std(values) -> list[str]:
    return [str(ipaddress.IPv4Address(int(v))) for v in values]


def _random_ips(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.array(EDGE_IPS, np.uint32),
                           rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)])


# --------------------------------------------------------------------------- scalars

@pytest.mark.parametrize("value", EDGE_IPS)
def test_scalar_round_trip_edges(value):
    text = str(ipaddress.IPv4Address(value))
    assert int_to_ip(value) == text
    assert ip_to_int(text) == value


@pytest.mark.parametrize("text", [t for t in BAD_IPS if t and t == t.strip()])  # scalars are stripped
def test_ip_to_int_rejects_and_names_value(text):
    with pytest.raises(FastpathError, match="bad IPv4") as err:
        ip_to_int(text, what="node address")
    assert repr(text) in str(err.value)
    assert "node address" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("length", range(33))
def test_prefix_mask_matches_ipaddress(length):
    assert prefix_mask(length) == int(ipaddress.IPv4Network(f"0.0.0.0/{length}").netmask)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_parse_cidr_and_contains_match_ipaddress(addr, length, probe):
    net = ipaddress.IPv4Network((addr, length), strict=False)
    network = int(net.network_address)
    assert parse_cidr(str(net)) == (network, length)
    assert format_cidr(network, length) == str(net)
    # non-strict parsing masks the host bits away
    assert parse_cidr(f"{ipaddress.IPv4Address(addr)}/{length}", strict=False) == (network, length)
    assert cidr_contains(network, length, probe) == (ipaddress.IPv4Address(probe) in net)


def test_parse_cidr_without_length_is_host_route():
    assert parse_cidr("10.244.1.7") == (0x0AF40107, 32)
    assert parse_cidr(" 0.0.0.0/0 ") == (0, 0)
    assert parse_cidr("255.255.255.255/32") == (0xFFFFFFFF, 32)


@pytest.mark.parametrize("text, needle", [
    ("10.0.0.0/33", "33"),
    ("10.0.0.0/-1", "-1"),
    ("10.0.0.0/x", "'x'"),
    ("10.0.0.0/", "''"),
    ("10.0.0/8", "'10.0.0'"),
    ("300.0.0.0/8", "'300.0.0.0'"),
    ("10.0.0.1/8", "10.0.0.0/8"),           # host bits: the message names the network meant
    ("10.244.7.9/24", "10.244.7.0/24"),
    ("0.0.0.1/0", "0.0.0.0/0"),
])
def test_parse_cidr_rejects_and_names_value(text, needle):
    with pytest.raises(FastpathError) as err:
        parse_cidr(text)
    message = str(err.value)
    assert repr(text) in message and needle in message and "\n" not in message


# --------------------------------------------------------------------------- columns

def test_ips_from_strings_matches_ipaddress_on_random_data():
    values = _random_ips(20_000, seed=1)
    texts = _std(values)
    got = ips_from_strings(pa.array(texts))
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, values)
    # and back: the formatter is the parser's inverse and matches ipaddress
    assert ips_to_strings(values).to_pylist() == texts


@pytest.mark.parametrize("make", [
    lambda t: t,                                                   # plain Python list
    lambda t: pa.array(t, type=pa.string()),
    lambda t: pa.array(t, type=pa.large_string()),
    lambda t: pa.array(t, type=pa.binary()),
    lambda t: pa.chunked_array([pa.array(t[:3]), pa.array(t[3:])]),
    lambda t: pa.array(["x"] * 5 + t).slice(5),                    # non-zero offset
    lambda t: pa.array(t).dictionary_encode(),
    lambda t: pa.chunked_array([pa.array(t).dictionary_encode()]),
], ids=["list", "string", "large_string", "binary", "chunked", "sliced", "dictionary",
        "chunked-dictionary"])
def test_ips_from_strings_accepts_arrow_layouts(make):
    values = np.array(EDGE_IPS + EDGE_IPS[::-1], np.uint32)
    np.testing.assert_array_equal(ips_from_strings(make(_std(values))), values)


def test_ips_from_strings_dictionary_with_repeats_and_nulls():
    arr = pa.DictionaryArray.from_arrays(pa.array([2, 0, None, 1, 2, 0], type=pa.int32()),
                                         pa.array(["10.0.0.1", "192.168.1.1", "255.255.255.255"]))
    got = ips_from_strings(arr)
    np.testing.assert_array_equal(got[[0, 1, 3, 4, 5]],
                                  [0xFFFFFFFF, 0x0A000001, 0xC0A80101, 0xFFFFFFFF, 0x0A000001])


def test_ips_from_strings_nulls_become_zero():
    arr = pa.array(["10.0.0.1", None, "10.0.0.3", None])
    np.testing.assert_array_equal(ips_from_strings(arr), [0x0A000001, 0, 0x0A000003, 0])


def test_ips_from_strings_empty():
    assert ips_from_strings(pa.array([], type=pa.string())).shape == (0,)
    assert ips_to_strings(np.empty(0, np.uint32)).to_pylist() == []


@pytest.mark.parametrize("bad", BAD_IPS)
def test_ips_from_strings_rejects_and_names_row_and_value(bad):
    texts = ["10.0.0.1", "10.0.0.2", bad, "10.0.0.4"]
    with pytest.raises(FastpathError) as err:
        ips_from_strings(pa.array(texts), what="trace.arrow column dst_ip")
    message = str(err.value)
    assert "trace.arrow column dst_ip" in message
    assert "row 2" in message and repr(bad) in message


def test_ips_from_strings_rejects_numeric_arrow_types_with_a_clear_message():
    with pytest.raises(FastpathError, match="expected uint32 or dotted-quad strings"):
        ips_from_strings(pa.array([1.5, 2.5]), what="dst_ip")


@given(st.text(alphabet="0123456789.", max_size=16))
def test_ips_from_strings_accepts_exactly_what_ipaddress_accepts(text):
    assume(not _has_leading_zero(text))  # see test_ips_from_strings_rejects_leading_zeros
    try:
        expected = int(ipaddress.IPv4Address(text))
    except ValueError:
        expected = None
    try:
        got = int(ips_from_strings(pa.array([text]))[0])
    except FastpathError:
        got = None
    assert got == expected


def _has_leading_zero(text: str) -> bool:
    return any(len(part) > 1 and part[0] == "0" for part in text.split("."))


@pytest.mark.parametrize("text", ["01.2.3.4", "10.0.0.010", "001.2.3.4"])
def test_ips_from_strings_rejects_leading_zeros(text):
    with pytest.raises(ValueError):
        ip_to_int(text)                         # the scalar parser refuses them ...
    with pytest.raises(FastpathError):
        ips_from_strings(pa.array([text]))      # ... and so should the column parser


def test_ips_to_strings_read_only_input():
    values = _random_ips(100, seed=2)
    values.setflags(write=False)
    assert ips_to_strings(values).to_pylist() == _std(values)


# --------------------------------------------------------------------------- MACs

@given(st.integers(0, 2**48 - 1))
def test_mac_round_trip(value):
    text = int_to_mac(value)
    assert len(text) == 17 and text == text.lower()
    assert mac_to_int(text) == value
    assert mac_to_int(text.upper().replace(":", "-")) == value


@pytest.mark.parametrize("bad", ["", "0a:58:0a:f4:01", "0a:58:0a:f4:01:07:09", "0a:58:0a:f4:01:7",
                                 "0a:58:0a:f4:01:gg", "0a580af40107", "0a:58:0a:f4:01:0:7"])
def test_mac_to_int_rejects_and_names_value(bad):
    with pytest.raises(FastpathError, match="bad MAC address") as err:
        mac_to_int(bad)
    assert repr(bad) in str(err.value)


def test_cni_mac_scalar_matches_bridge_plugin_rule():
    # containernetworking/plugins hwaddr: 0a:58 followed by the four IPv4 bytes
    assert int_to_mac(cni_mac(ip_to_int("10.244.1.7"))) == "0a:58:0a:f4:01:07"
    assert int_to_mac(cni_mac(0)) == "0a:58:00:00:00:00"
    assert int_to_mac(cni_mac(0xFFFFFFFF)) == "0a:58:ff:ff:ff:ff"
    assert cni_mac(np.uint32(0x0AF40107)) == 0x0A580AF40107


def test_cni_mac_vectorized_matches_scalar():
    values = _random_ips(1000, seed=3)
    values.setflags(write=False)
    got = cni_mac(values)
    assert got.dtype == np.uint64 and got.shape == values.shape
    assert [int_to_mac(m) for m in got[:50]] == [
        "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(int(v)).packed)
        for v in values[:50]]
    np.testing.assert_array_equal(got, [cni_mac(int(v)) for v in values])


# --------------------------------------------------------------------------- CIDR columns

def _one(parse, text):
    try:
        return parse(text)
    except FastpathError as e:
        return str(e)


CIDR_EDGES = ["10.0.0.0/8", " 10.0.0.0/8 ", "10.0.0.1/8", "10.0.0.0", "010.0.0.0/8", "10.0.0.0/33",
              "10.0.0.0/08", "1.2.3.4/", "a", "", "1.2.3.4/0008", "0.0.0.0/0", "255.255.255.255/32",
              "1.2.3.4//3", "1.2.3/24", "1.2.3.4.5/32", "1.2.3.4/3x", "256.0.0.0/8", "1.2.3.4/-1", None]


@pytest.mark.parametrize("text", CIDR_EDGES)
def test_cidrs_from_strings_answers_and_errors_as_parse_cidr(text):
    want = _one(parse_cidr, text)
    got = _one(lambda t: tuple(int(a[0]) for a in cidrs_from_strings([t])), text)
    assert got == want


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.booleans()), max_size=40))
def test_cidrs_from_strings_matches_ipaddress_on_random_prefixes(rows):
    texts = [f"{ipaddress.IPv4Address(v & prefix_mask(n))}" + (f"/{n}" if (n != 32 or slash) else "")
             for v, n, slash in rows]
    net, length = cidrs_from_strings(texts)
    want = [ipaddress.IPv4Network(t) for t in texts]
    assert net.tolist() == [int(w.network_address) for w in want]
    assert length.tolist() == [w.prefixlen for w in want]


def test_cidrs_from_strings_names_the_first_bad_row():
    with pytest.raises(FastpathError, match="'10.0.0.1/8': host bits set"):
        cidrs_from_strings(["10.0.0.0/8", "10.0.0.1/8", "x"])
