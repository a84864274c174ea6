"""Sans-IO reader of the server name in a TLS ClientHello, from the peeked bytes.

For on-demand TLS the listener must know which name a connection asks for *before* the
TLS layer starts: ``ssl``'s SNI callback runs inside the handshake and cannot wait for a
certificate to be issued. So the listener peeks the socket (``MSG_PEEK``), consuming
nothing, and asks this module about the whole prefix peeked so far, every time::

    match read_server_name(peeked):
        case NeedMore():  # a valid prefix of a ClientHello: peek again, within a deadline
            ...
        case Found(server_name=name):  # complete: maybe wait for name's certificate; TLS
            ...
        case NotTls(reason=reason):  # cannot be a ClientHello: close, log the reason
            ...

Nothing here is consumed or kept: the caller hands the socket to TLS with the ClientHello
still unread in the kernel. A prefix of :data:`MAX_CLIENT_HELLO` bytes never yields
:class:`NeedMore`, so that is all a caller ever needs to peek.

What is checked (RFC 8446 sections 4.1.2, 4.2 and 5.1; RFC 5246 section 7.4.1.2; RFC 6066
section 3) is the framing: record headers, the handshake header and every length of the
ClientHello down to its extensions, so a wrong peer (plain HTTP on the TLS port, an
SSLv2-compatible hello, garbage) is refused at the first byte that proves it rather than
at the deadline. Cipher suites, versions and extension contents other than server_name
are TLS's business and are not judged; bytes after the ClientHello -- in its last record
or in records after it -- are never looked at.

The ClientHello may span several handshake records (a post-quantum key share makes
Chrome's ~1.8 KB, and any sender may fragment it, even inside the 4-byte handshake
header): the record payloads are reassembled, which is the only copy made, and only when
there is more than one record. The work is linear in the peeked bytes.

The server name is the ``host_name`` of the server_name extension, lower-cased, without
one trailing dot. :class:`Found` carries None both when the extension is absent and when
its name is not a usable DNS host name: not ASCII (RFC 6066 requires the A-label form),
empty, over 253 characters, a label that is not 1-63 characters of ``a-z0-9-`` with no
``-`` at either end (so no ``*`` and no ``_``), or an IP literal, which RFC 6066 forbids
in SNI (an all-numeric last label: ``192.0.2.1``; an IPv6 literal fails the label rule).
Either way there is no name a certificate could be issued for; the handshake then goes on
with whatever the SNI callback picks for such a name. A server_name extension whose
*structure* is wrong (lengths, two host names) makes the hello :class:`NotTls`, as
OpenSSL refuses it too.
"""

from __future__ import annotations

import dataclasses

from edge.config.addresses import normalize_hostname

__all__ = [
    "MAX_CLIENT_HELLO",
    "NEED_MORE",
    "Found",
    "Hello",
    "NeedMore",
    "NotTls",
    "read_server_name",
]

_RECORD_HEADER = 5  # content type, legacy version (2), length (2)
_MAX_FRAGMENT = 1 << 14  # RFC 8446 5.1: TLSPlaintext.length MUST NOT exceed 2^14
# One record of the largest plaintext size. Real ClientHellos are far smaller (OpenSSL
# pads to 517 bytes, Chrome with ML-KEM sends ~1.8 KB), and a hello cut into many small
# records pays 5 bytes per record: it must still end within this many bytes.
MAX_CLIENT_HELLO = _RECORD_HEADER + _MAX_FRAGMENT

_HANDSHAKE = 0x16  # ContentType.handshake
_CLIENT_HELLO = 1  # HandshakeType.client_hello
_HANDSHAKE_HEADER = 4  # msg_type, length (3)
# legacy_version (2), random (32), session id length (1), cipher suites length (2) and
# one suite (2), compression methods length (1) and one method (1)
_MIN_BODY = 2 + 32 + 1 + 2 + 2 + 1 + 1
# what fits MAX_CLIENT_HELLO in a single record
_MAX_BODY = MAX_CLIENT_HELLO - _RECORD_HEADER - _HANDSHAKE_HEADER
_SERVER_NAME = 0  # ExtensionType.server_name
_HOST_NAME = 0  # NameType.host_name


@dataclasses.dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes are a valid prefix of a ClientHello: peek again once more have come."""


@dataclasses.dataclass(frozen=True, slots=True)
class Found:
    """A complete ClientHello; ``server_name`` as described in the module docstring."""

    server_name: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class NotTls:
    """The bytes cannot start a TLS ClientHello; ``reason`` says why, for the log."""

    reason: str


Hello = NeedMore | Found | NotTls
NEED_MORE = NeedMore()  # what read_server_name returns: there is nothing in it to vary


class _Incomplete(Exception):
    """The ClientHello goes on past the bytes peeked so far."""


class _Invalid(Exception):
    """The bytes contradict the ClientHello syntax; the message is the reason."""


def read_server_name(data: bytes | bytearray | memoryview) -> Hello:
    """Read the ClientHello at the start of ``data`` (the connection's first bytes).

    Never raises; see the module docstring for the three answers. ``data`` is not kept.
    """
    view = memoryview(data)
    size = len(view)
    fragments: list[memoryview] = []  # the handshake bytes of each record, in order
    have = 0  # handshake bytes in fragments
    need = 0  # handshake bytes of the whole ClientHello, once its header is in
    pos = 0  # the next record header
    while need == 0 or have < need:
        if pos + _RECORD_HEADER + 1 > MAX_CLIENT_HELLO:
            return NotTls(f"ClientHello not complete within {MAX_CLIENT_HELLO} bytes")
        if pos >= size:
            break
        content_type = view[pos]
        if content_type != _HANDSHAKE:
            return NotTls(_wrong_record(view, pos))
        if pos + 1 < size and view[pos + 1] != 3:
            return NotTls(f"record version major {view[pos + 1]} (TLS has 3)")
        if pos + _RECORD_HEADER > size:
            break
        length = view[pos + 3] << 8 | view[pos + 4]
        if length == 0:
            return NotTls("empty handshake record")  # RFC 8446 5.1: MUST NOT be sent
        if length > _MAX_FRAGMENT:
            return NotTls(f"record of {length} bytes (at most 2^14)")
        start = pos + _RECORD_HEADER
        pos = start + length
        if pos > MAX_CLIENT_HELLO:
            return NotTls(f"ClientHello not complete within {MAX_CLIENT_HELLO} bytes")
        stop = min(pos, size)
        if stop > start:
            fragments.append(view[start:stop])
            have += stop - start
        if not fragments:
            break
        if fragments[0][0] != _CLIENT_HELLO:
            return NotTls(f"handshake message type {fragments[0][0]} (client_hello is 1)")
        if need == 0 and have >= _HANDSHAKE_HEADER:
            header = _join(fragments, _HANDSHAKE_HEADER)
            body = header[1] << 16 | header[2] << 8 | header[3]
            if body < _MIN_BODY:
                return NotTls(f"ClientHello of {body} bytes (at least {_MIN_BODY})")
            if body > _MAX_BODY:
                return NotTls(f"ClientHello of {body} bytes (at most {_MAX_BODY})")
            need = _HANDSHAKE_HEADER + body
        if stop < pos:
            break  # this record goes on past the peeked bytes
    if have < _HANDSHAKE_HEADER:
        return NEED_MORE
    message = fragments[0] if len(fragments) == 1 else memoryview(b"".join(fragments))
    available = min(have, need)
    try:
        return _parse_body(message, need, available)
    except _Incomplete:
        return NEED_MORE
    except _Invalid as exc:
        return NotTls(str(exc))


def _wrong_record(view: memoryview, pos: int) -> str:
    first = view[pos]
    if pos > 0:
        # RFC 8446 5.1: handshake messages MUST NOT be interleaved with other record types
        return f"record of content type {first} inside the ClientHello"
    if first & 0x80 and (len(view) < 3 or view[2] == _CLIENT_HELLO):
        return "SSLv2-compatible ClientHello (not supported)"
    return f"first byte {first:#04x} is not a TLS handshake record (0x16)"


def _join(fragments: list[memoryview], count: int) -> bytes:
    """The first ``count`` handshake bytes, which may lie in several fragments."""
    if len(fragments[0]) >= count:
        return bytes(fragments[0][:count])
    return b"".join(fragments)[:count]


class _Reader:
    """A cursor over ``buf[pos:end]``, of which only ``buf[:available]`` has arrived.

    Reading past ``end`` (a declared length) is :class:`_Invalid`; reading past
    ``available`` while still within ``end`` is :class:`_Incomplete`. Checking ``end``
    first is what lets a truncated hello never look invalid.
    """

    __slots__ = ("available", "buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int, end: int, available: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.available = available

    def _take(self, count: int, what: str) -> int:
        start = self.pos
        if start + count > self.end:
            raise _Invalid(f"{what} overruns its enclosing length")
        if start + count > self.available:
            raise _Incomplete
        self.pos = start + count
        return start

    def u8(self, what: str) -> int:
        return self.buf[self._take(1, what)]

    def u16(self, what: str) -> int:
        at = self._take(2, what)
        return self.buf[at] << 8 | self.buf[at + 1]

    def skip(self, count: int, what: str) -> None:
        if self.pos + count > self.end:
            raise _Invalid(f"{what} overruns its enclosing length")
        self.pos += count  # what is skipped need not have arrived yet

    def vector(self, length: int, what: str) -> _Reader:
        """A reader over the next ``length`` bytes, which this one steps past."""
        start = self.pos
        self.skip(length, what)
        return _Reader(self.buf, start, start + length, self.available)

    def done(self) -> bool:
        return self.pos >= self.end


def _parse_body(message: memoryview, need: int, available: int) -> Hello:
    """The ClientHello after its handshake header (RFC 8446 4.1.2, RFC 5246 7.4.1.2)."""
    r = _Reader(message, _HANDSHAKE_HEADER, need, available)
    if r.u8("legacy_version") != 3:
        raise _Invalid("ClientHello version major is not 3")
    r.skip(1 + 32, "random")
    session_id = r.u8("session id length")
    if session_id > 32:
        raise _Invalid(f"session id of {session_id} bytes (at most 32)")
    r.skip(session_id, "session id")
    suites = r.u16("cipher suites length")
    if suites < 2 or suites % 2:
        raise _Invalid(f"cipher suites of {suites} bytes (a positive even number)")
    r.skip(suites, "cipher suites")
    methods = r.u8("compression methods length")
    if methods < 1:
        raise _Invalid("no compression method")
    r.skip(methods, "compression methods")
    server_name: str | None = None
    if not r.done():  # TLS 1.2 and older may end here, without extensions
        extensions = r.vector(r.u16("extensions length"), "extensions")
        if not r.done():
            raise _Invalid("bytes after the extensions")
        seen: set[int] = set()
        while not extensions.done():
            kind = extensions.u16("extension type")
            body = extensions.vector(extensions.u16("extension length"), "extension")
            if kind in seen:  # RFC 8446 4.2: MUST NOT be more than one of the same type
                raise _Invalid(f"extension {kind} twice")
            seen.add(kind)
            if kind == _SERVER_NAME:
                server_name = _server_name(body)
    if available < need:
        raise _Incomplete  # everything read so far is valid; the rest was skipped over
    return Found(server_name)


def _server_name(ext: _Reader) -> str | None:
    """The server_name extension (RFC 6066 3): the host_name, if it is a usable one."""
    names = ext.vector(ext.u16("server name list length"), "server name list")
    if not ext.done():
        raise _Invalid("bytes after the server name list")
    if names.done():
        raise _Invalid("empty server name list")
    host: str | None = None
    seen_host = False
    while not names.done():
        name_type = names.u8("server name type")
        name = names.vector(names.u16("server name length"), "server name")
        if name_type != _HOST_NAME:
            continue  # none other is defined; RFC 6066 3 gives any future one a length
        if seen_host:  # RFC 6066 3: not more than one name of the same name_type
            raise _Invalid("two host names in server_name")
        seen_host = True
        if name.end > name.available:
            raise _Incomplete
        host = _host_name(bytes(name.buf[name.pos : name.end]))
    return host


def _host_name(raw: bytes) -> str | None:
    """``raw`` lower-cased without one trailing dot, or None if not a DNS host name."""
    if not raw.isascii():
        return None
    text = raw.decode("ascii").lower()
    if text.endswith("."):
        text = text[:-1]
    try:
        normalize_hostname(text, allow_wildcard=False)
    except ValueError:
        return None
    if text.rpartition(".")[2].isdigit():
        return None  # an IP literal (RFC 6066 3 forbids them): no TLD is all digits
    return text
