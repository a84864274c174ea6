"""Sans-IO parser for HAProxy's PROXY protocol, versions 1 (text) and 2 (binary).

Spec: haproxy ``doc/proxy-protocol.txt``. One pure function, no sockets, no clock::

    header = parse_proxy_header(peeked)   # the whole buffer peeked so far, every time

* ``None``: ``peeked`` is a valid prefix of a header; peek again (with a deadline).
* :class:`ProxyProtocolError`: ``peeked`` cannot start any valid header. Raised at the
  first byte that proves it, so a wrong peer (TLS or HTTP without a PROXY header, a
  garbled line) is dropped at once instead of waiting for the deadline.
* :class:`ProxyHeader`: complete; ``header.length`` bytes are the header. The caller
  consumes exactly that many bytes (``recv(length)``) and hands the socket on with the
  ClientHello / request still unread in the kernel (STYLE.md section 2).

A buffer of ``max(MAX_V1_HEADER, max_v2_header)`` bytes never yields ``None``, so that
is all a caller ever needs to peek.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Literal

import msgspec

from edge.errors import ClientError

__all__ = [
    "MAX_V1_HEADER",
    "MAX_V2_HEADER",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyProtocolError",
    "ProxySSL",
    "crc32c",
    "parse_proxy_header",
]

# spec 2.1: the longest v1 line, "PROXY UNKNOWN <ipv6> <ipv6> 65535 65535\r\n", CRLF included
MAX_V1_HEADER = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# The v2 length field allows 16 + 65535 bytes. We cap it so a peer cannot make us peek
# and hold 64 KiB per connection: HAProxy's own headers are far smaller (216 bytes of
# AF_UNIX addresses at most, plus a few short TLVs), and the spec expects the whole
# header to fit one 536-byte segment. 4 KiB of TLVs leaves ample room for SSL sub-TLVs.
MAX_V2_HEADER = 16 + 4096

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
_PP2_SUBTYPE_SSL_VERSION = 0x21
_PP2_SUBTYPE_SSL_CN = 0x22
_PP2_SUBTYPE_SSL_CIPHER = 0x23
_PP2_SUBTYPE_SSL_SIG_ALG = 0x24
_PP2_SUBTYPE_SSL_KEY_ALG = 0x25
_MAX_UNIQUE_ID = 128  # spec 2.2.5
# a repeated TLV we interpret would be ambiguous (which authority is true?): refuse it
_SINGLE_TLVS = frozenset(
    {PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL}
)


class ProxyProtocolError(ClientError):
    """The peer in front of us sent an invalid PROXY header.

    No HTTP or TLS layer exists yet, so the caller closes the connection without an
    answer (spec 2.1: "abort the connection as soon as possible") and logs the detail.
    """

    public_message = "invalid PROXY protocol header"


class ProxyFamily(enum.StrEnum):
    """The address family the header announces, one vocabulary for v1 and v2."""

    TCP4 = "tcp4"  # v1 TCP4, v2 AF_INET + STREAM
    TCP6 = "tcp6"  # v1 TCP6, v2 AF_INET6 + STREAM
    UNIX = "unix"  # v2 AF_UNIX + STREAM: paths, not IP addresses
    UNSPEC = "unspec"  # v1 UNKNOWN, v2 AF_UNSPEC, every v2 LOCAL


class ProxySSL(msgspec.Struct, frozen=True, kw_only=True):
    """PP2_TYPE_SSL (spec 2.2.6): how the client reached the proxy in front of us."""

    client: int  # bit field: 0x01 TLS, 0x02 cert on this connection, 0x04 cert in session
    verify: int  # 0 when a client certificate was presented and verified
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.client & 0x01)

    @property
    def client_cert(self) -> bool:
        return bool(self.client & 0x06)

    @property
    def client_cert_verified(self) -> bool:
        return self.client_cert and self.verify == 0


# msgspec rather than a frozen dataclass: built once per connection, ~10x cheaper
class ProxyHeader(msgspec.Struct, frozen=True, kw_only=True):
    """A complete PROXY header.

    ``local`` is True when the header carries no usable client address (v1 UNKNOWN,
    v2 LOCAL, v2 AF_UNSPEC or AF_UNIX): the connection's own socket addresses apply,
    and ``source``/``destination`` are None. Otherwise both are ``(ip, port)`` with the
    IP in canonical form.
    """

    version: Literal[1, 2]
    length: int
    local: bool
    family: ProxyFamily
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    alpn: bytes | None = None
    ssl: ProxySSL | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse_proxy_header(
    buf: bytes | bytearray | memoryview, *, max_v2_header: int = MAX_V2_HEADER
) -> ProxyHeader | None:
    """Parse the PROXY header at the start of ``buf``; see the module docstring.

    Returns None while ``buf`` is a valid but incomplete prefix, raises
    :class:`ProxyProtocolError` as soon as it cannot be one. Bytes after the header
    are never looked at. ``max_v2_header`` caps a v2 header (16 fixed bytes included).
    """
    if not buf:
        return None
    first = buf[0]
    if first == 0x50:  # "P"
        return _parse_v1(bytes(buf[:MAX_V1_HEADER]))
    if first == 0x0D:  # "\r", the v2 signature
        return _parse_v2(buf, max_v2_header)
    if first == 0x16:
        raise ProxyProtocolError("missing PROXY header: got a TLS record")
    raise ProxyProtocolError(f"missing PROXY header: first byte {first:#04x}")


# ---------------------------------------------------------------- version 1


_V1_PREFIX = b"PROXY "
_TCP4 = b"TCP4"
_TCP6 = b"TCP6"
_UNKNOWN = b"UNKNOWN"
_V1_FIELDS = ("source address", "destination address", "source port", "destination port")
_IPV6_CHARS = b"0123456789abcdefABCDEF:."
_PRINTABLE = bytes(range(0x20, 0x7F))


def _parse_v1(data: bytes) -> ProxyHeader | None:
    # The CRLF must end by byte 107, so the CR sits at index 105 at the latest.
    cr = data.find(b"\r", 0, MAX_V1_HEADER - 1)
    if cr == -1:
        if b"\n" in data:
            raise ProxyProtocolError("v1: line feed without carriage return")
        _check_v1_prefix(data[: MAX_V1_HEADER - 1])
        if len(data) >= MAX_V1_HEADER - 1:
            raise ProxyProtocolError(f"v1: no CRLF within {MAX_V1_HEADER} bytes")
        return None
    if b"\n" in data[:cr]:
        raise ProxyProtocolError("v1: line feed without carriage return")
    if cr + 1 < len(data) and data[cr + 1] != 0x0A:
        raise ProxyProtocolError("v1: carriage return not followed by line feed")
    # the line ends at this CR whatever follows, so it must be complete and valid now
    header = _parse_v1_line(data[:cr], cr + 2)
    return header if cr + 1 < len(data) else None


def _parse_v1_line(line: bytes, length: int) -> ProxyHeader:
    """The line without its CRLF; the hot path, usually the only v1 code that runs."""
    if not line.startswith(_V1_PREFIX):
        _check_v1_prefix(line)  # names the first wrong byte
        raise ProxyProtocolError("v1: line ends inside 'PROXY '")
    parts = line.split(b" ")
    proto = parts[1]
    if not proto:
        raise ProxyProtocolError("v1: empty field (double space)")
    if proto == _UNKNOWN:
        # spec 2.1: anything up to the CRLF after UNKNOWN is ignored; we still insist
        # on printable ASCII after one space, as the line is specified as US-ASCII
        rest = line[13:]
        if rest and (rest[0] != 0x20 or rest.translate(None, _PRINTABLE)):
            raise ProxyProtocolError("v1: invalid text after UNKNOWN")
        return ProxyHeader(version=1, length=length, local=True, family=ProxyFamily.UNSPEC)
    if proto == _TCP4:
        family, parse_ip = ProxyFamily.TCP4, _ipv4
    elif proto == _TCP6:
        family, parse_ip = ProxyFamily.TCP6, _ipv6
    else:
        raise ProxyProtocolError(f"v1: unknown protocol {_show(proto)}")
    if len(parts) != 6:
        if b"" in parts:
            raise ProxyProtocolError("v1: empty field (double or trailing space)")
        raise ProxyProtocolError(f"v1: {proto.decode()} needs 4 fields, got {len(parts) - 2}")
    src = parse_ip(parts[2])
    if src is None:
        raise _field_error(proto, 0, parts[2])
    dst = parse_ip(parts[3])
    if dst is None:
        raise _field_error(proto, 1, parts[3])
    sport = _port(parts[4])
    if sport is None:
        raise _field_error(proto, 2, parts[4])
    dport = _port(parts[5])
    if dport is None:
        raise _field_error(proto, 3, parts[5])
    return ProxyHeader(
        version=1,
        length=length,
        local=False,
        family=family,
        source=(src, sport),
        destination=(dst, dport),
    )


def _check_v1_prefix(data: bytes) -> None:
    """Raise unless ``data`` (no CR, no LF) can still grow into a valid v1 line."""
    head = data[: len(_V1_PREFIX)]
    if head != _V1_PREFIX[: len(head)]:
        at = next(i for i, (a, b) in enumerate(zip(head, _V1_PREFIX, strict=False)) if a != b)
        raise ProxyProtocolError(f"not a PROXY header: wrong byte at offset {at}")
    rest = data[len(_V1_PREFIX) :]
    space = rest.find(b" ")
    proto = rest if space == -1 else rest[:space]
    if space == 0:
        raise ProxyProtocolError("v1: empty field (double space)")
    if space == -1:
        if not any(word.startswith(proto) for word in (_TCP4, _TCP6, _UNKNOWN)):
            raise ProxyProtocolError(f"v1: unknown protocol {_show(proto)}")
        return
    if proto == _UNKNOWN:
        if rest[space:].translate(None, _PRINTABLE):
            raise ProxyProtocolError("v1: invalid text after UNKNOWN")
        return
    if proto not in (_TCP4, _TCP6):
        raise ProxyProtocolError(f"v1: unknown protocol {_show(proto)}")
    fields = rest[space + 1 :].split(b" ")
    if len(fields) > 4:
        raise ProxyProtocolError(f"v1: {proto.decode()} has more than 4 fields")
    ip_prefix_ok = _ipv4_prefix_ok if proto == _TCP4 else _ipv6_prefix_ok
    for index, value in enumerate(fields):
        complete = index < len(fields) - 1  # a space follows it
        if complete and not value:
            raise ProxyProtocolError("v1: empty field (double space)")
        if index < 2:
            ok = ip_prefix_ok(value)
            if ok and complete:
                ok = (_ipv4 if proto == _TCP4 else _ipv6)(value) is not None
        else:
            ok = _port_prefix_ok(value)
        if not ok:
            raise _field_error(proto, index, value)


def _field_error(proto: bytes, index: int, value: bytes) -> ProxyProtocolError:
    return ProxyProtocolError(f"v1: invalid {proto.decode()} {_V1_FIELDS[index]} {_show(value)}")


def _port(text: bytes) -> int | None:
    # decimal 0..65535, no leading zero (spec 2.1: no confusion with octal)
    if not text.isdigit() or len(text) > 5 or (text[0] == 0x30 and len(text) > 1):
        return None
    port = int(text)
    return port if port <= 65535 else None


def _port_prefix_ok(text: bytes) -> bool:
    return not text or _port(text) is not None


def _ipv4(text: bytes) -> str | None:
    """Strict dotted quad; when valid it already is the canonical form."""
    octets = text.split(b".")
    if len(octets) != 4:
        return None
    for octet in octets:  # _octet_ok inlined: this runs twice per v1 connection
        if not octet.isdigit() or len(octet) > 3 or int(octet) > 255:
            return None
        if octet[0] == 0x30 and len(octet) > 1:
            return None
    return text.decode("ascii")


def _octet_ok(octet: bytes) -> bool:
    return (
        octet.isdigit()
        and len(octet) <= 3
        and (octet[0] != 0x30 or len(octet) == 1)
        and int(octet) <= 255
    )


def _ipv4_prefix_ok(text: bytes) -> bool:
    octets = text.split(b".")
    if len(octets) > 4:
        return False
    last = octets.pop()
    return all(_octet_ok(octet) for octet in octets) and (not last or _octet_ok(last))


def _ipv6(text: bytes) -> str | None:
    # The character filter keeps out what ipaddress would otherwise accept here, such
    # as a "%scope" suffix; an IPv4 address has no colon and fails in ipaddress.
    if not text or text.translate(None, _IPV6_CHARS):
        return None
    try:
        return ipaddress.IPv6Address(text.decode("ascii")).compressed
    except ValueError:
        return None


def _ipv6_prefix_ok(text: bytes) -> bool:
    """Whether some completion of ``text`` is an address :func:`_ipv6` accepts."""
    if text.translate(None, _IPV6_CHARS):
        return False
    if b"." in text:
        # an IPv4 tail has begun: the hextets before it are final, its value is not
        colon = text.rfind(b":")
        return (
            colon != -1
            and _ipv4_prefix_ok(text[colon + 1 :])
            and _ipv6(text[: colon + 1] + b"0.0.0.0") is not None
        )
    doubles = text.count(b"::")
    if b":::" in text or doubles > 1:
        return False
    if text.startswith(b":") and not text.startswith(b"::") and text != b":":
        return False
    parts = text.split(b":")
    if any(len(part) > 4 for part in parts):
        return False
    groups = sum(1 for part in parts if part)
    if text.endswith(b":") and not text.endswith(b"::"):
        groups += 1  # another hextet must follow (or, without "::" yet, a second colon)
    # with "::" it stands for at least one zero hextet, so at most 7 are written
    return groups <= (7 if doubles else 8)


def _show(value: bytes) -> str:
    return repr(value[:48])


# ---------------------------------------------------------------- version 2

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_TRANSPORT_UNSPEC, _TRANSPORT_STREAM, _TRANSPORT_DGRAM = 0x0, 0x1, 0x2
_ADDRESS_LENGTH = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


def _parse_v2(buf: bytes | bytearray | memoryview, max_v2_header: int) -> ProxyHeader | None:
    fixed = bytes(buf[:16])
    signature = fixed[:12]
    if signature != V2_SIGNATURE[: len(signature)]:
        at = next(
            i for i, (a, b) in enumerate(zip(signature, V2_SIGNATURE, strict=False)) if a != b
        )
        raise ProxyProtocolError(f"not a PROXY header: wrong v2 signature byte at offset {at}")
    if len(fixed) < 13:
        return None
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"v2: version {version} in the version/command byte")
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"v2: unknown command {command:#x}")
    if len(fixed) < 14:
        return None
    family, transport = fixed[13] >> 4, fixed[13] & 0x0F
    if family not in _ADDRESS_LENGTH or transport > _TRANSPORT_DGRAM:
        raise ProxyProtocolError(f"v2: unknown family/transport byte {fixed[13]:#04x}")
    local = command == _CMD_LOCAL
    if not local:
        # spec 2.2: LOCAL ignores this byte; for PROXY only 0x00, 0x11, 0x21, 0x31 serve
        if transport == _TRANSPORT_DGRAM:
            raise ProxyProtocolError("v2: datagram transport, only streams are served")
        if (family == _AF_UNSPEC) != (transport == _TRANSPORT_UNSPEC):
            raise ProxyProtocolError(f"v2: invalid family/transport byte {fixed[13]:#04x}")
    if len(fixed) < 16:
        return None
    total = 16 + int.from_bytes(fixed[14:16], "big")
    if total > max_v2_header:
        raise ProxyProtocolError(f"v2: header of {total} bytes exceeds the {max_v2_header} cap")
    address_end = 16 + _ADDRESS_LENGTH[family]
    if address_end > total:
        raise ProxyProtocolError(
            f"v2: {address_end - 16}-byte address block exceeds length {total - 16}"
        )
    data = bytes(buf[:total])
    tlvs = _scan_tlvs(data, address_end, total)  # rejects bad TLVs before all arrived
    if len(data) < total:
        return None

    header_family = ProxyFamily.UNSPEC
    source = destination = None
    if not local:
        if family == _AF_INET:
            header_family = ProxyFamily.TCP4
            source = (str(ipaddress.IPv4Address(data[16:20])), _u16(data, 24))
            destination = (str(ipaddress.IPv4Address(data[20:24])), _u16(data, 26))
        elif family == _AF_INET6:
            header_family = ProxyFamily.TCP6
            source = (ipaddress.IPv6Address(data[16:32]).compressed, _u16(data, 48))
            destination = (ipaddress.IPv6Address(data[32:48]).compressed, _u16(data, 50))
        elif family == _AF_UNIX:
            header_family = ProxyFamily.UNIX

    authority = unique_id = alpn = ssl = None
    position = address_end
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C:
            _verify_crc32c(data, position + 3, value)
        elif kind == PP2_TYPE_AUTHORITY:
            authority = value.decode("utf-8")  # checked by _check_tlv
        elif kind == PP2_TYPE_UNIQUE_ID:
            unique_id = value
        elif kind == PP2_TYPE_ALPN:
            alpn = value
        elif kind == PP2_TYPE_SSL:
            ssl = _parse_ssl(value)
        position += 3 + len(value)
    return ProxyHeader(
        version=2,
        length=total,
        local=source is None,
        family=header_family,
        source=source,
        destination=destination,
        authority=authority,
        unique_id=unique_id,
        alpn=alpn,
        ssl=ssl,
        tlvs=tuple(tlvs),
    )


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "big")


def _scan_tlvs(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """The TLVs in ``data[start:end]`` received so far; raises on any that cannot fit.

    The TLVs must exactly fill the header: one running past ``end`` or fewer than 3
    bytes left over is an error, detected as soon as the bytes that prove it arrive.
    """
    tlvs: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    position = start
    while position < end:
        if end - position < 3:
            raise ProxyProtocolError(f"v2: {end - position} stray bytes after the last TLV")
        if position + 3 > len(data):
            break
        kind = data[position]
        value_end = position + 3 + _u16(data, position + 1)
        if value_end > end:
            raise ProxyProtocolError(f"v2: TLV {kind:#04x} runs past the end of the header")
        if value_end > len(data):
            break
        if kind in seen and kind in _SINGLE_TLVS:
            raise ProxyProtocolError(f"v2: repeated TLV {kind:#04x}")
        seen.add(kind)
        value = data[position + 3 : value_end]
        _check_tlv(kind, value)
        tlvs.append((kind, value))
        position = value_end
    return tlvs


def _check_tlv(kind: int, value: bytes) -> None:
    if kind == PP2_TYPE_CRC32C:
        if len(value) != 4:
            raise ProxyProtocolError(f"v2: CRC32C TLV of {len(value)} bytes, not 4")
    elif kind == PP2_TYPE_AUTHORITY:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProxyProtocolError("v2: authority TLV is not UTF-8") from None
    elif kind == PP2_TYPE_UNIQUE_ID:
        if len(value) > _MAX_UNIQUE_ID:
            raise ProxyProtocolError(f"v2: unique ID TLV of {len(value)} bytes, over 128")
    elif kind == PP2_TYPE_SSL:
        _parse_ssl(value)


def _parse_ssl(value: bytes) -> ProxySSL:
    if len(value) < 5:
        raise ProxyProtocolError("v2: SSL TLV shorter than 5 bytes")
    strings: dict[int, str] = {}
    position = 5
    while position < len(value):
        if len(value) - position < 3:
            raise ProxyProtocolError("v2: truncated sub-TLV in the SSL TLV")
        kind = value[position]
        value_end = position + 3 + _u16(value, position + 1)
        if value_end > len(value):
            raise ProxyProtocolError(f"v2: SSL sub-TLV {kind:#04x} runs past the SSL TLV")
        if _PP2_SUBTYPE_SSL_VERSION <= kind <= _PP2_SUBTYPE_SSL_KEY_ALG:
            try:
                strings[kind] = value[position + 3 : value_end].decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError(f"v2: SSL sub-TLV {kind:#04x} is not UTF-8") from None
        position = value_end
    return ProxySSL(
        client=value[0],
        verify=int.from_bytes(value[1:5], "big"),
        version=strings.get(_PP2_SUBTYPE_SSL_VERSION),
        cn=strings.get(_PP2_SUBTYPE_SSL_CN),
        cipher=strings.get(_PP2_SUBTYPE_SSL_CIPHER),
        sig_alg=strings.get(_PP2_SUBTYPE_SSL_SIG_ALG),
        key_alg=strings.get(_PP2_SUBTYPE_SSL_KEY_ALG),
    )


def _verify_crc32c(data: bytes, value_offset: int, value: bytes) -> None:
    # spec 2.2.3: the CRC of the whole header with the checksum field zeroed; the
    # value is sent in network byte order
    zeroed = bytearray(data)
    zeroed[value_offset : value_offset + 4] = bytes(4)
    if crc32c(zeroed) != int.from_bytes(value, "big"):
        raise ProxyProtocolError("v2: CRC32C checksum mismatch")


def _crc32c_table() -> tuple[int, ...]:
    # CRC-32C (Castagnoli, RFC 4960 appendix B), reflected polynomial 0x82F63B78
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data``; a table-driven loop, fast enough for headers of a few KiB."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
