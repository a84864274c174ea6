"""PROXY protocol v1/v2 parser: valid headers, every prefix, early rejection, properties."""

from __future__ import annotations

import ipaddress
import random
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import ClientError
from edge.net.proxy_protocol import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    V2_SIGNATURE,
    ProxyFamily,
    ProxyHeader,
    ProxyProtocolError,
    crc32c,
    parse_proxy_header,
)

HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
CLIENT_HELLO_PREFIX = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def parse(buf: bytes) -> ProxyHeader | None:
    return parse_proxy_header(buf)


def complete(buf: bytes) -> ProxyHeader:
    header = parse_proxy_header(buf)
    assert header is not None
    return header


# ---------------------------------------------------------------- helpers for v2


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C straight from the reflected polynomial, one bit at a time (no table)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(
    *,
    command: int = 1,
    fam: int = 0x11,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    crc: str | None = None,
    version: int = 2,
    length: int | None = None,
) -> bytes:
    """A v2 header; ``crc`` "good" or "bad" appends a PP2_TYPE_CRC32C TLV."""
    body = addresses + tlvs
    if crc is not None:
        body += tlv(0x03, b"\x00\x00\x00\x00")
    size = len(body) if length is None else length
    header = V2_SIGNATURE + struct.pack("!BBH", version << 4 | command, fam, size) + body
    if crc is not None:
        value = crc32c_bitwise(header) ^ (0 if crc == "good" else 1)
        header = header[:-4] + struct.pack("!I", value)
    return header


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


UNIX_ADDRESSES = b"/run/haproxy.sock".ljust(108, b"\x00") + b"/run/edge.sock".ljust(108, b"\x00")
SSL_TLV = tlv(
    0x20,
    b"\x07"  # TLS, cert on this connection, cert in session
    + struct.pack("!I", 0)
    + tlv(0x21, b"TLSv1.3")
    + tlv(0x22, b"client.example")
    + tlv(0x23, b"TLS_AES_128_GCM_SHA256"),
)

VALID_V1 = [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
    b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n",
    b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:: ffff:: 65535 65535\r\n",
]
VALID_V2 = [
    v2(addresses=inet("10.0.0.1", "10.0.0.2", 40000, 443)),
    v2(fam=0x21, addresses=inet("2001:db8::7", "2001:db8::8", 1, 2), tlvs=SSL_TLV),
    v2(fam=0x31, addresses=UNIX_ADDRESSES),
    v2(fam=0x00),
    v2(command=0, fam=0x00),
    v2(
        addresses=inet("10.0.0.1", "10.0.0.2", 1, 2),
        tlvs=tlv(0x02, b"example.com") + tlv(0x05, b"id-1"),
        crc="good",
    ),
]


# ---------------------------------------------------------------- v1


def test_v1_tcp4() -> None:
    header = complete(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert header.version == 1
    assert header.length == 47
    assert header.local is False
    assert header.family is ProxyFamily.TCP4
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)
    assert header.tlvs == ()
    assert header.authority is None and header.unique_id is None


def test_v1_tcp6_returns_canonical_addresses() -> None:
    header = complete(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 0:0::1 0 80\r\n")
    assert header.family is ProxyFamily.TCP6
    assert header.source == ("2001:db8::1", 0)
    assert header.destination == ("::1", 80)


def test_v1_tcp6_accepts_an_ipv4_tail_and_canonicalises_it() -> None:
    header = complete(b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n")
    assert header.source == ("::ffff:a01:203", 1)


@pytest.mark.parametrize(
    "line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 whatever, ignored !\r\n"]
)
def test_v1_unknown_is_local(line: bytes) -> None:
    header = complete(line)
    assert header.local is True
    assert header.family is ProxyFamily.UNSPEC
    assert header.source is None and header.destination is None
    assert header.length == len(line)


@pytest.mark.parametrize("trailing", [HTTP_REQUEST, CLIENT_HELLO_PREFIX, b"\r\n", b"x"])
@pytest.mark.parametrize("line", VALID_V1)
def test_length_points_at_the_first_byte_after_the_header(line: bytes, trailing: bytes) -> None:
    buf = line + trailing
    header = complete(buf)
    assert header.length == len(line)
    assert buf[header.length :] == trailing
    assert header == complete(line)


def test_v1_107_bytes_is_the_maximum() -> None:
    tcp6_longest_hex = VALID_V1[3]
    assert len(tcp6_longest_hex) == 104
    assert complete(tcp6_longest_hex).length == 104

    unknown_worst = (
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(unknown_worst) == MAX_V1_HEADER == 107
    assert complete(unknown_worst + HTTP_REQUEST).length == 107

    # a TCP6 line can reach 107 bytes with an IPv4 tail (39 + 42 address characters)
    tcp6_107 = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:255.255.25.2 65535 65535\r\n"
    )
    assert len(tcp6_107) == 107
    assert complete(tcp6_107).destination == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:1902", 65535)


def test_v1_108_bytes_is_rejected_before_byte_107() -> None:
    tcp6_108 = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2 65535 65535\r\n"
    )
    unknown_108 = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    for line in (tcp6_108, unknown_108):
        assert len(line) == 108
        # the CR can no longer arrive in time once 106 bytes are seen without one
        assert parse(line[:105]) is None
        with pytest.raises(ProxyProtocolError, match="no CRLF within 107"):
            parse(line[:106])
        with pytest.raises(ProxyProtocolError):
            parse(line)


def test_v1_line_without_crlf_never_waits_past_107_bytes() -> None:
    with pytest.raises(ProxyProtocolError):
        parse(b"PROXY UNKNOWN " + b"a" * 500)


@pytest.mark.parametrize("header", VALID_V1 + VALID_V2)
def test_every_prefix_needs_more_data_and_the_whole_header_parses(header: bytes) -> None:
    for i in range(len(header)):
        assert parse(header[:i]) is None, header[:i]
    assert complete(header).length == len(header)


@pytest.mark.parametrize("header", VALID_V1 + VALID_V2)
def test_bytearray_and_memoryview_inputs(header: bytes) -> None:
    expected = complete(header + b"tail")
    assert parse_proxy_header(bytearray(header + b"tail")) == expected
    assert parse_proxy_header(memoryview(header + b"tail")) == expected
    assert parse_proxy_header(memoryview(header)[:-1]) is None


INVALID_V1 = {
    "double space after PROXY": b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "double space between fields": b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    "trailing space": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
    "tab": b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
    "tab inside a field list": b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
    "lowercase proxy": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "lowercase tcp4": b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    "TCP5": b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    "UDP4": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "UNKNOWN glued": b"PROXY UNKNOWNX\r\n",
    "PROXY alone": b"PROXY\r\n",
    "PROXY and space": b"PROXY \r\n",
    "missing destination port": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "missing all fields": b"PROXY TCP4\r\n",
    "extra field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "leading zero in an octet": b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    "octet 256": b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    "three octets": b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    "five octets": b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
    "empty octet": b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n",
    "port 65536": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "port with leading zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
    "port 00": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",
    "negative port": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "plus port": b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    "hex port": b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n",
    "IPv6 for TCP4": b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
    "IPv4 for TCP6": b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    "IPv4 destination for TCP6": b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
    "IPv6 scope id": b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    "IPv6 two double colons": b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    "IPv6 five hex digits": b"PROXY TCP6 12345:: ::1 1 2\r\n",
    "IPv6 nine groups": b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
    "IPv6 bracketed": b"PROXY TCP6 [::1] ::1 1 2\r\n",
    "lone LF": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "lone CR then data": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET",
    "CR CR LF": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
    "LF CR": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r",
    "CR inside the line": b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n",
    "lone LF after UNKNOWN": b"PROXY UNKNOWN\n",
    "LF inside UNKNOWN text": b"PROXY UNKNOWN a\nb\r\n",
    "line over 107 bytes": b"PROXY UNKNOWN " + b"f" * 94 + b"\r\n",
    "non-ASCII address": b"PROXY TCP4 1.2.3.\xd9\xa4 5.6.7.8 1 2\r\n",
    "non-ASCII digit in port": b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # ARABIC-INDIC ONE
    "non-ASCII after UNKNOWN": b"PROXY UNKNOWN caf\xc3\xa9\r\n",
    "NUL after UNKNOWN": b"PROXY UNKNOWN \x00\r\n",
}


@pytest.mark.parametrize("line", INVALID_V1.values(), ids=INVALID_V1.keys())
def test_invalid_v1_is_rejected(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as caught:
        parse(line)
    assert str(caught.value)  # a message naming the problem
    # also with the rest of the stream behind it: trailing bytes change nothing
    with pytest.raises(ProxyProtocolError):
        parse(line + HTTP_REQUEST)


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b"G", "first byte 0x47"),
        (b"\x16", "TLS"),
        (b"\x00", "first byte"),
        (b"PO", "offset 1"),
        (b"PROXY TCP5", "TCP5"),
        (b"PROXY X", "'X'"),
        (b"PROXY TCP4 01", "source address"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4.", "destination address"),
        (b"PROXY TCP4 256", "source address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 0", None),  # valid so far
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 08", "source port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", "source port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "more than 4 fields"),
        (b"PROXY TCP4 :", "source address"),
        (b"PROXY TCP6 1.", "source address"),
        (b"PROXY TCP6 :::", "source address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:", "source address"),
        (b"PROXY TCP6 ::1 ::1%", "destination address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "line feed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r", "carriage return"),
        (b"PROXY TCP4 1.2\r", "needs 4 fields"),
    ],
)
def test_v1_rejection_happens_at_the_byte_that_proves_it(buf: bytes, message: str | None) -> None:
    # the buffer one byte shorter is still a valid prefix ...
    assert parse(buf[:-1]) is None
    if message is None:
        assert parse(buf) is None
        return
    # ... and this byte makes it impossible
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        parse(buf)


@pytest.mark.parametrize(
    "buf", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", CLIENT_HELLO_PREFIX, b"POST / HTTP/1.1\r\n"]
)
def test_plain_http_or_tls_without_a_proxy_header_fails_from_the_first_bytes(buf: bytes) -> None:
    # "P" alone could still be "PROXY"; every other prefix is already hopeless
    first_failing = 2 if buf.startswith(b"P") else 1
    assert all(parse(buf[:i]) is None for i in range(first_failing))
    for i in range(first_failing, len(buf) + 1):
        with pytest.raises(ProxyProtocolError):
            parse(buf[:i])


def test_error_belongs_to_the_client_error_hierarchy() -> None:
    with pytest.raises(ClientError) as caught:
        parse(b"GET ")
    assert isinstance(caught.value, ProxyProtocolError)
    assert caught.value.close_connection is True
    assert "PROXY" in caught.value.public_message


# ---------------------------------------------------------------- v2


def test_v2_proxy_inet() -> None:
    header = complete(v2(addresses=inet("10.0.0.1", "10.0.0.2", 40000, 443)) + CLIENT_HELLO_PREFIX)
    assert header.version == 2
    assert header.length == 16 + 12
    assert header.local is False
    assert header.family is ProxyFamily.TCP4
    assert header.source == ("10.0.0.1", 40000)
    assert header.destination == ("10.0.0.2", 443)
    assert header.tlvs == ()


def test_v2_proxy_inet6_with_ssl_tlv() -> None:
    header = complete(
        v2(fam=0x21, addresses=inet("2001:db8::7", "::ffff:1.2.3.4", 1, 2), tlvs=SSL_TLV)
    )
    assert header.length == 16 + 36 + len(SSL_TLV)
    assert header.family is ProxyFamily.TCP6
    assert header.source == ("2001:db8::7", 1)
    assert header.destination == ("::ffff:102:304", 2)
    assert header.ssl is not None
    assert header.ssl.tls and header.ssl.client_cert and header.ssl.client_cert_verified
    assert header.ssl.version == "TLSv1.3"
    assert header.ssl.cn == "client.example"
    assert header.ssl.cipher == "TLS_AES_128_GCM_SHA256"
    assert header.ssl.sig_alg is None
    assert header.tlvs == ((0x20, SSL_TLV[3:]),)


def test_v2_ssl_tlv_unverified_certificate() -> None:
    ssl_tlv = tlv(0x20, b"\x03" + struct.pack("!I", 1))
    header = complete(v2(addresses=inet("1.1.1.1", "2.2.2.2", 1, 2), tlvs=ssl_tlv))
    assert header.ssl is not None
    assert header.ssl.client == 3 and header.ssl.verify == 1
    assert header.ssl.client_cert and not header.ssl.client_cert_verified


@pytest.mark.parametrize("command", [0, 1])
def test_v2_unix_and_unspec_use_the_socket_addresses(command: int) -> None:
    unix = complete(v2(command=command, fam=0x31, addresses=UNIX_ADDRESSES))
    assert unix.local is True
    assert unix.family is (ProxyFamily.UNIX if command else ProxyFamily.UNSPEC)
    assert unix.source is None and unix.destination is None
    assert unix.length == 16 + 216
    unspec = complete(v2(command=command, fam=0x00))
    assert unspec.local is True
    assert unspec.family is ProxyFamily.UNSPEC
    assert unspec.length == 16


@pytest.mark.parametrize("fam", [0x11, 0x21, 0x12, 0x22, 0x32])
def test_v2_local_ignores_the_address_block_but_consumes_it(fam: int) -> None:
    size = {1: 12, 2: 36, 3: 216}[fam >> 4]
    buf = v2(command=0, fam=fam, addresses=b"\xaa" * size, tlvs=tlv(0x05, b"hc")) + HTTP_REQUEST
    header = complete(buf)
    assert header.local is True
    assert header.family is ProxyFamily.UNSPEC
    assert header.source is None and header.destination is None
    assert header.length == 16 + size + 5
    assert header.unique_id == b"hc"
    assert buf[header.length :] == HTTP_REQUEST


def test_v2_tlvs_authority_unique_id_and_crc() -> None:
    buf = v2(
        addresses=inet("10.0.0.1", "10.0.0.2", 1, 2),
        tlvs=tlv(0x02, "bücher.example".encode()) + tlv(0x04, b"") + tlv(0x05, b"\x00id\xff"),
        crc="good",
    )
    header = complete(buf + HTTP_REQUEST)
    assert header.length == len(buf)
    assert header.authority == "bücher.example"
    assert header.unique_id == b"\x00id\xff"
    kinds = [kind for kind, _ in header.tlvs]
    assert kinds == [0x02, 0x04, 0x05, 0x03]
    assert header.tlvs[3][1] == buf[-4:]
    assert header.tlvs[1] == (0x04, b"")


def test_v2_crc_covers_the_whole_header() -> None:
    good = v2(addresses=inet("10.0.0.1", "10.0.0.2", 1, 2), crc="good")
    assert complete(good).length == len(good)
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse(v2(addresses=inet("10.0.0.1", "10.0.0.2", 1, 2), crc="bad"))
    # one flipped bit anywhere outside the checksum itself is caught
    tampered = bytearray(good)
    tampered[17] ^= 0x01  # the source address
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse(bytes(tampered))


def test_crc32c_known_vector_and_bitwise_reference() -> None:
    assert crc32c_bitwise(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 3
    assert crc32c(data) == crc32c_bitwise(data)


@given(st.binary(max_size=300))
def test_crc32c_matches_the_bitwise_reference(data: bytes) -> None:
    assert crc32c(data) == crc32c_bitwise(data)


ADDR4 = inet("10.0.0.1", "10.0.0.2", 1, 2)
INVALID_V2 = {
    "version 1 nibble": v2(version=1, addresses=ADDR4),
    "version 3 nibble": v2(version=3, addresses=ADDR4),
    "command 0x2": v2(command=2, addresses=ADDR4),
    "command 0xf": v2(command=0xF, addresses=ADDR4),
    "UDP over IPv4": v2(fam=0x12, addresses=ADDR4),
    "UDP over IPv6": v2(fam=0x22, addresses=b"\x00" * 36),
    "unix datagram": v2(fam=0x32, addresses=UNIX_ADDRESSES),
    "family 4": v2(fam=0x41, addresses=ADDR4),
    "transport 3": v2(fam=0x13, addresses=ADDR4),
    "inet without transport": v2(fam=0x10, addresses=ADDR4),
    "unspec with stream": v2(fam=0x01),
    "address block longer than length": v2(addresses=ADDR4[:8], length=8),
    "truncated TLV header": v2(addresses=ADDR4, tlvs=b"\x02\x00"),
    "truncated TLV value": v2(addresses=ADDR4, tlvs=tlv(0x02, b"example.com")[:-1]),
    "stray byte after TLVs": v2(addresses=ADDR4, tlvs=tlv(0x04, b"") + b"\x00"),
    "repeated authority": v2(addresses=ADDR4, tlvs=tlv(0x02, b"a") + tlv(0x02, b"b")),
    "authority not UTF-8": v2(addresses=ADDR4, tlvs=tlv(0x02, b"\xff\xfe")),
    "unique id over 128": v2(addresses=ADDR4, tlvs=tlv(0x05, b"u" * 129)),
    "CRC of 3 bytes": v2(addresses=ADDR4, tlvs=tlv(0x03, b"abc")),
    "SSL TLV too short": v2(addresses=ADDR4, tlvs=tlv(0x20, b"\x01\x00\x00")),
    "SSL sub-TLV overrun": v2(
        addresses=ADDR4, tlvs=tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLS")[:-1])
    ),
    "SSL sub-TLV not UTF-8": v2(
        addresses=ADDR4, tlvs=tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x22, b"\xc3"))
    ),
}


@pytest.mark.parametrize("buf", INVALID_V2.values(), ids=INVALID_V2.keys())
def test_invalid_v2_is_rejected(buf: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(buf)
    with pytest.raises(ProxyProtocolError):
        parse(buf + HTTP_REQUEST)


def test_v2_unique_id_of_128_bytes_is_accepted() -> None:
    header = complete(v2(addresses=ADDR4, tlvs=tlv(0x05, b"u" * 128)))
    assert header.unique_id == b"u" * 128


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (V2_SIGNATURE + b"\x11", "version 1"),
        (V2_SIGNATURE + b"\x22", "command 0x2"),
        (V2_SIGNATURE + b"\x21\x12", "datagram"),
        (V2_SIGNATURE + b"\x21\x41", "family"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08", "address block"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0e", "stray bytes"),  # 12 + 2: no room for a TLV
        (V2_SIGNATURE + b"\x21\x11\x00\x14" + ADDR4 + b"\x02\x00\x06", "runs past"),
    ],
)
def test_v2_rejection_happens_at_the_byte_that_proves_it(buf: bytes, message: str) -> None:
    assert parse(buf[:-1]) is None
    with pytest.raises(ProxyProtocolError, match=message):
        parse(buf)


def test_v2_signature_mismatch_fails_at_the_diverging_byte() -> None:
    for i in range(len(V2_SIGNATURE)):
        assert parse(V2_SIGNATURE[:i]) is None
        wrong = V2_SIGNATURE[:i] + bytes([V2_SIGNATURE[i] ^ 0x40])
        with pytest.raises(ProxyProtocolError):
            parse(wrong)


def test_v2_length_over_the_cap_is_rejected_at_16_bytes() -> None:
    fixed = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_HEADER - 16 + 1)
    assert len(fixed) == 16
    assert parse(fixed[:15]) is None
    with pytest.raises(ProxyProtocolError, match="cap"):
        parse(fixed)
    at_cap = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_HEADER - 16)
    assert parse(at_cap) is None  # exactly at the cap: waits for the rest


def test_v2_cap_is_a_keyword() -> None:
    buf = v2(addresses=ADDR4, tlvs=tlv(0x04, b"\x00" * 100))
    assert parse_proxy_header(buf, max_v2_header=len(buf)) == complete(buf)
    with pytest.raises(ProxyProtocolError, match="cap"):
        parse_proxy_header(buf[:16], max_v2_header=len(buf) - 1)
    # the widest header the length field can express, when the caller allows it
    widest = v2(command=0, fam=0x00, tlvs=tlv(0x04, b"\x00" * (65535 - 3)))
    assert parse_proxy_header(widest, max_v2_header=16 + 65535) is not None


# ---------------------------------------------------------------- properties

ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6)
ports = st.integers(min_value=0, max_value=65535)


@given(ipv4s, ipv4s, ports, ports, st.binary(max_size=20))
def test_v1_tcp4_round_trip(src: str, dst: str, sport: int, dport: int, tail: bytes) -> None:
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    header = complete(line + tail)
    assert header.length == len(line)
    assert header.source == (src, sport)
    assert header.destination == (dst, dport)


@given(
    ipv6s,
    ipv6s,
    ports,
    ports,
    st.sampled_from(["compressed", "exploded", "upper"]),
    st.binary(max_size=20),
)
def test_v1_tcp6_round_trip(
    src: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address,
    sport: int,
    dport: int,
    form: str,
    tail: bytes,
) -> None:
    def text(address: ipaddress.IPv6Address) -> str:
        if form == "exploded":
            return address.exploded
        return address.compressed.upper() if form == "upper" else address.compressed

    line = f"PROXY TCP6 {text(src)} {text(dst)} {sport} {dport}\r\n".encode()
    header = complete(line + tail)
    assert header.length == len(line)
    assert header.source == (src.compressed, sport)
    assert header.destination == (dst.compressed, dport)
    for i in range(len(line)):
        assert parse(line[:i]) is None


@given(st.sampled_from([4, 6]), st.binary(min_size=32, max_size=32), ports, ports)
def test_v2_round_trip(ip_version: int, raw: bytes, sport: int, dport: int) -> None:
    size = 4 if ip_version == 4 else 16
    src, dst = ipaddress.ip_address(raw[:size]), ipaddress.ip_address(raw[16 : 16 + size])
    buf = v2(
        fam=0x11 if ip_version == 4 else 0x21, addresses=inet(str(src), str(dst), sport, dport)
    )
    header = complete(buf + CLIENT_HELLO_PREFIX)
    assert header.length == len(buf)
    assert header.source == (src.compressed, sport)
    assert header.destination == (dst.compressed, dport)


def _outcome(buf: bytes) -> ProxyHeader | type[ProxyProtocolError] | None:
    try:
        return parse(buf)
    except ProxyProtocolError:
        return ProxyProtocolError


def _assert_consistent_prefixes(buf: bytes) -> None:
    """Only ProxyProtocolError escapes, and no later byte undoes a verdict.

    Once a prefix is rejected every longer buffer is rejected; once it is complete every
    longer buffer yields the same header; "need more data" only ever precedes them.
    """
    verdict: ProxyHeader | type[ProxyProtocolError] | None = None
    for i in range(len(buf) + 1):
        outcome = _outcome(buf[:i])
        if verdict is not None:
            assert outcome == verdict, buf[:i]
        verdict = outcome


V1_TOKENS = [
    *(b"PROXY", b" ", b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1", b"0", b"65535"),
    *(b"255", b".", b":", b"::", b"ffff", b"\r", b"\n", b"\r\n", b"01", b"a", b"\x00"),
]
printable_v1 = st.lists(st.sampled_from(V1_TOKENS), max_size=14).map(b"".join)


@given(st.one_of(st.binary(max_size=64), printable_v1.map(lambda b: b"PROXY " + b)))
def test_random_v1_ish_bytes_only_raise_proxy_protocol_error(buf: bytes) -> None:
    _assert_consistent_prefixes(buf)


@given(
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.integers(0, 80),
    st.binary(max_size=90),
)
def test_random_v2_bodies_only_raise_proxy_protocol_error(
    ver_cmd: int, fam: int, length: int, body: bytes
) -> None:
    buf = V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, length) + body
    _assert_consistent_prefixes(buf)


@given(st.sampled_from(VALID_V1 + VALID_V2), st.data())
def test_mutated_valid_headers_only_raise_proxy_protocol_error(
    header: bytes, data: st.DataObject
) -> None:
    buf = bytearray(header + HTTP_REQUEST)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(header) - 1))
        buf[position] = data.draw(st.integers(0, 0xFF))
    _assert_consistent_prefixes(bytes(buf))


@pytest.mark.parametrize("seed", range(20))
def test_a_full_peek_buffer_never_needs_more_data(seed: int) -> None:
    """A caller peeking max(MAX_V1_HEADER, MAX_V2_HEADER) bytes always gets a verdict."""
    rng = random.Random(seed)
    noise = rng.randbytes(MAX_V2_HEADER)
    printable = bytes(rng.choice(b"0123456789abcdef:. ") for _ in range(MAX_V2_HEADER))
    fixed = V2_SIGNATURE + bytes([0x20 | rng.randrange(2), rng.choice([0, 0x11, 0x21, 0x31])])
    for candidate in (
        noise,
        b"PROXY " + printable,
        b"PROXY TCP6 " + printable,
        b"PROXY UNKNOWN " + printable,
        V2_SIGNATURE + noise,
        fixed + noise,
    ):
        assert _outcome(candidate[:MAX_V2_HEADER]) is not None
