"""ClientHello server-name reader: real hellos whole, byte by byte, fragmented, refused.

The hellos come from real clients: Python's ssl (OpenSSL) in memory for TLS 1.2 and 1.3,
and ``openssl s_client`` caught by a loopback listener. Variants (other names, extension
orders, sizes, record boundaries) are made by re-framing a real hello with the small
independent encoder below, never by the code under test.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.tls.clienthello import (
    MAX_CLIENT_HELLO,
    NEED_MORE,
    Found,
    Hello,
    NeedMore,
    NotTls,
    read_server_name,
)
from tests.helpers import free_port

GARBAGE = b"\x17\x03\x03\x00\x05hello GET / HTTP/1.1\r\n\x00\xff"

# ---------------------------------------------------------------- real hellos


def python_hello(server_hostname: str | None, version: ssl.TLSVersion) -> bytes:
    """The first flight of an in-memory ssl client: one record holding its ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        context.check_hostname = False
    context.minimum_version = version
    context.maximum_version = version
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def openssl_hello(*args: str) -> bytes:
    """What ``openssl s_client`` sends first, read by a listener on a loopback port."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is required for this test"
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(10)
        proc = subprocess.Popen(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                # framed here by the record header alone: s_client sends one record
                while len(data) < 5 or len(data) < 5 + struct.unpack("!H", data[3:5])[0]:
                    chunk = conn.recv(65536)
                    assert chunk, f"s_client closed after {len(data)} bytes"
                    data += chunk
        finally:
            proc.kill()
            proc.wait(10)
            assert proc.stdin is not None
            proc.stdin.close()
    return data


@dataclasses.dataclass
class Real:
    data: bytes
    server_name: str | None


@pytest.fixture(scope="module")
def real_hellos() -> dict[str, Real]:
    tls12, tls13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    return {
        "python-tls1.2-sni": Real(python_hello("www.example.com", tls12), "www.example.com"),
        "python-tls1.3-sni": Real(python_hello("www.example.com", tls13), "www.example.com"),
        "python-tls1.2-no-sni": Real(python_hello(None, tls12), None),
        "python-tls1.3-no-sni": Real(python_hello(None, tls13), None),
        # case and a trailing dot go on the wire as given; the IDN as its A-label
        "python-upper-dot": Real(python_hello("Shop.Example.COM.", tls13), "shop.example.com"),
        "python-idn": Real(python_hello("bücher.example", tls13), "xn--bcher-kva.example"),
        # ssl sends no SNI for an IP address
        "python-ip": Real(python_hello("192.0.2.7", tls13), None),
        "openssl-sni": Real(
            openssl_hello("-servername", "openssl.example.net"), "openssl.example.net"
        ),
        "openssl-tls1.2": Real(
            openssl_hello("-tls1_2", "-servername", "old.example.net"), "old.example.net"
        ),
        "openssl-no-sni": Real(openssl_hello("-noservername"), None),
    }


REAL_NAMES = [
    "python-tls1.2-sni",
    "python-tls1.3-sni",
    "python-tls1.2-no-sni",
    "python-tls1.3-no-sni",
    "python-upper-dot",
    "python-idn",
    "python-ip",
    "openssl-sni",
    "openssl-tls1.2",
    "openssl-no-sni",
]


@pytest.fixture(params=REAL_NAMES)
def real(request: pytest.FixtureRequest, real_hellos: dict[str, Real]) -> Real:
    return real_hellos[request.param]


# ---------------------------------------------------------------- an independent encoder


@dataclasses.dataclass
class ClientHello:
    """A ClientHello taken apart: the fields before the extensions, then each extension."""

    head: bytes  # legacy_version .. compression_methods
    extensions: list[tuple[int, bytes]] | None

    @classmethod
    def from_record(cls, record: bytes) -> ClientHello:
        assert record[0] == 0x16 and record[5] == 1
        (length,) = struct.unpack("!H", record[3:5])
        body = record[9 : 5 + length]
        assert len(body) == int.from_bytes(record[6:9], "big")
        pos = 2 + 32
        pos += 1 + body[pos]  # session id
        pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]  # cipher suites
        pos += 1 + body[pos]  # compression methods
        head, rest = body[:pos], body[pos + 2 :]
        extensions = []
        while rest:
            kind, size = struct.unpack("!HH", rest[:4])
            extensions.append((kind, rest[4 : 4 + size]))
            rest = rest[4 + size :]
        return cls(head, extensions)

    def message(self) -> bytes:
        """The handshake message: type, 3-byte length, body."""
        body = self.head
        if self.extensions is not None:
            blob = b"".join(struct.pack("!HH", k, len(v)) + v for k, v in self.extensions)
            body += struct.pack("!H", len(blob)) + blob
        return b"\x01" + len(body).to_bytes(3, "big") + body

    def with_extension(self, kind: int, value: bytes) -> ClientHello:
        """A copy with extension ``kind`` set to ``value`` (replaced in place, or added)."""
        assert self.extensions is not None
        kinds = [k for k, _ in self.extensions]
        extensions = list(self.extensions)
        if kind in kinds:
            extensions[kinds.index(kind)] = (kind, value)
        else:
            extensions.insert(0, (kind, value))
        return ClientHello(self.head, extensions)

    def with_sni(self, *names: tuple[int, bytes]) -> ClientHello:
        entries = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in names)
        return self.with_extension(0, struct.pack("!H", len(entries)) + entries)

    def without(self, kind: int) -> ClientHello:
        assert self.extensions is not None
        return ClientHello(self.head, [(k, v) for k, v in self.extensions if k != kind])


def records(message: bytes, sizes: Sequence[int] = (), version: bytes = b"\x03\x01") -> bytes:
    """``message`` in handshake records of ``sizes`` bytes, the last one taking the rest."""
    out, pos = [], 0
    for size in [*sizes, len(message)]:
        chunk = message[pos : pos + size]
        if chunk:
            out.append(b"\x16" + version + struct.pack("!H", len(chunk)) + chunk)
        pos += size
        if pos >= len(message):
            break
    return b"".join(out)


@pytest.fixture(scope="module")
def base(real_hellos: dict[str, Real]) -> ClientHello:
    return ClientHello.from_record(real_hellos["python-tls1.3-sni"].data)


def sni_ext(name: bytes) -> bytes:
    entry = struct.pack("!BH", 0, len(name)) + name
    return struct.pack("!H", len(entry)) + entry


# ---------------------------------------------------------------- helpers


def prefixes_need_more(data: bytes, step: int = 1) -> None:
    for end in [*range(0, len(data), step), *range(max(0, len(data) - 20), len(data))]:
        assert read_server_name(data[:end]) == NeedMore(), f"prefix of {end} bytes"


def assert_not_tls(data: bytes, *words: str) -> NotTls:
    result = read_server_name(data)
    assert isinstance(result, NotTls), result
    for word in words:
        assert word in result.reason, result.reason
    return result


# ---------------------------------------------------------------- real hellos


def test_real_hello_whole(real: Real) -> None:
    assert read_server_name(real.data) == Found(real.server_name)


def test_real_hello_every_prefix_needs_more(real: Real) -> None:
    prefixes_need_more(real.data)


def test_real_hello_with_trailing_garbage(real: Real) -> None:
    assert read_server_name(real.data + GARBAGE) == Found(real.server_name)
    assert read_server_name(real.data + b"\x00" * MAX_CLIENT_HELLO) == Found(real.server_name)


def test_real_hello_as_bytearray_and_memoryview(real: Real) -> None:
    assert read_server_name(bytearray(real.data)) == Found(real.server_name)
    padded = memoryview(b"PROXY junk\r\n" + real.data)
    assert read_server_name(padded[12:]) == Found(real.server_name)


def test_real_hellos_are_what_they_claim(real_hellos: dict[str, Real]) -> None:
    # the TLS 1.3 hellos offer TLS 1.3 (supported_versions, 43) and the 1.2 ones do not
    for name, real in real_hellos.items():
        hello = ClientHello.from_record(real.data)
        assert hello.extensions is not None
        kinds = {k for k, _ in hello.extensions}
        assert (0 in kinds) == (real.server_name is not None), name
        if "1.2" in name:
            assert 43 not in kinds, name
        if "1.3" in name:
            assert 43 in kinds, name


def test_result_values() -> None:
    assert NEED_MORE == NeedMore()
    assert Found("a.example") == Found("a.example") != Found(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Found("a.example").server_name = "b.example"  # type: ignore[misc]
    assert not hasattr(Found("a.example"), "__dict__")  # slots


# ---------------------------------------------------------------- fragmentation


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param((100,), id="two-records"),
        pytest.param((1,), id="split-in-type"),
        pytest.param((2,), id="split-in-length"),
        pytest.param((4,), id="split-after-header"),
        pytest.param((3, 40, 7), id="four-records"),
        pytest.param((1,) * 600, id="one-byte-records"),
    ],
)
def test_fragmented_hello(real_hellos: dict[str, Real], sizes: tuple[int, ...]) -> None:
    real = real_hellos["python-tls1.3-sni"]
    data = records(ClientHello.from_record(real.data).message(), sizes)
    assert len(data) < MAX_CLIENT_HELLO
    assert read_server_name(data) == Found("www.example.com")
    assert read_server_name(data + GARBAGE) == Found("www.example.com")
    prefixes_need_more(data)


def test_fragmented_hello_split_by_hand(real_hellos: dict[str, Real]) -> None:
    # the handshake message cut in two, each half in its own record
    record = real_hellos["openssl-sni"].data
    message = record[5:]
    half = len(message) // 2
    data = (
        record[:3]
        + struct.pack("!H", half)
        + message[:half]
        + record[:3]
        + struct.pack("!H", len(message) - half)
        + message[half:]
    )
    assert read_server_name(data) == Found("openssl.example.net")
    prefixes_need_more(data)


def test_large_post_quantum_sized_hello(base: ClientHello) -> None:
    # Chrome's hybrid X25519MLKEM768 key share (1216 + 32 bytes) makes a ~1.8 KB hello
    shares = struct.pack("!HH", 0x11EC, 1216) + b"\x42" * 1216
    shares += struct.pack("!HH", 0x001D, 32) + b"\x43" * 32
    hello = base.with_extension(51, struct.pack("!H", len(shares)) + shares)
    big = hello.with_extension(0xFE0D, b"\x00" * 300).message()  # and a GREASE ECH
    assert 1700 < len(big) < 2000
    for data in (records(big), records(big, (1000,)), records(big, (1,) * 1000)):
        assert read_server_name(data) == Found("www.example.com")
        assert read_server_name(data + GARBAGE) == Found("www.example.com")


def test_the_last_record_may_end_after_the_hello(base: ClientHello) -> None:
    # extra bytes inside the record that ends the hello are not looked at
    message = base.message()
    record = b"\x16\x03\x01" + struct.pack("!H", len(message) + 3) + message + b"\x17\x17\x17"
    assert read_server_name(record) == Found("www.example.com")
    assert read_server_name(record[:-3]) == Found("www.example.com")


def test_size_bound(base: ClientHello) -> None:
    # exactly one record of 2^14 bytes: the largest hello accepted
    fixed = len(base.with_extension(21, b"").message())
    fits = base.with_extension(21, b"\x00" * (2**14 - fixed)).message()
    assert len(records(fits)) == MAX_CLIENT_HELLO
    assert read_server_name(records(fits)) == Found("www.example.com")
    prefixes_need_more(records(fits)[:300])
    # one byte more must go in a second record and cannot end within the bound
    over = base.with_extension(21, b"\x00" * (2**14 - fixed + 1)).message()
    assert_not_tls(records(over, (2**14,)), "of 16381 bytes (at most 16380)")
    assert_not_tls(records(over, (2**14,))[:9], "at most 16380")  # known from its header
    # a hello cut into many small records runs past the bound on its record headers
    padded = base.with_extension(21, b"\x00" * 2500).message()
    assert 6 * len(padded) > MAX_CLIENT_HELLO > 5 + len(padded)
    many = records(padded, (1,) * len(padded))
    assert_not_tls(many, "not complete within")
    assert_not_tls(many[:MAX_CLIENT_HELLO], "not complete within")
    prefixes_need_more(many[: MAX_CLIENT_HELLO - 5], step=97)


# ---------------------------------------------------------------- extensions and names


def test_no_extensions_at_all(base: ClientHello) -> None:
    # TLS 1.2 and older may end the hello after the compression methods
    data = records(ClientHello(base.head, None).message())
    assert read_server_name(data) == Found(None)
    prefixes_need_more(data)
    assert read_server_name(records(ClientHello(base.head, []).message())) == Found(None)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_extensions_in_any_order(base: ClientHello, data: st.DataObject) -> None:
    assert base.extensions is not None
    order = data.draw(st.permutations(base.extensions))
    hello = records(ClientHello(base.head, list(order)).message())
    assert read_server_name(hello) == Found("www.example.com")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a.example", "a.example"),
        (b"A.EXAMPLE.", "a.example"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"localhost", "localhost"),
        (b"a-b.c0.example", "a-b.c0.example"),
        (b"9.example.123abc", "9.example.123abc"),
        (b"a" * 63 + b".example", "a" * 63 + ".example"),
        (b"", None),
        (b".", None),
        (b"a..example", None),
        (b"a.example..", None),
        (b"b\xc3\xbccher.example", None),
        (b"\xff", None),
        (b"a\x00.example", None),
        (b"exa mple.com", None),
        (b"under_score.example", None),
        (b"-a.example", None),
        (b"a-.example", None),
        (b"*.example.com", None),
        (b"a" * 64 + b".example", None),
        (b".".join([b"a" * 63] * 4), None),  # 255 characters
        (b"127.0.0.1", None),
        (b"192.0.2.1.", None),
        (b"10.1", None),
        (b"::1", None),
        (b"[2001:db8::1]", None),
    ],
)
def test_host_name_checks(base: ClientHello, raw: bytes, expected: str | None) -> None:
    data = records(base.with_sni((0, raw)).message())
    assert read_server_name(data) == Found(expected)


def test_other_name_types_are_skipped(base: ClientHello) -> None:
    data = records(base.with_sni((7, b"\x01\x02"), (0, b"b.example")).message())
    assert read_server_name(data) == Found("b.example")
    data = records(base.with_sni((7, b"c.example")).message())
    assert read_server_name(data) == Found(None)


# ---------------------------------------------------------------- refusals


def test_not_a_handshake_record() -> None:
    for data in (b"G", b"GET / HTTP/1.1\r\n", b"\x17\x03\x03\x00\x10", b"\x00"):
        assert_not_tls(data, "first byte")


def test_sslv2_compatible_hello() -> None:
    # SSLv2 record header (high bit, 15-bit length), msg_type 1, version 3.1, lengths
    cipher_specs = bytes.fromhex("00002f000035")
    body = b"\x01\x03\x01" + struct.pack("!HHH", len(cipher_specs), 0, 16) + cipher_specs
    hello = struct.pack("!H", 0x8000 | (len(body) + 16)) + body + b"\x07" * 16
    assert_not_tls(hello, "SSLv2")
    assert_not_tls(hello[:1], "SSLv2")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x16\x02", ("record version major 2",)),
        (b"\x16\x03\x01\x00\x00", ("empty handshake record",)),
        (b"\x16\x03\x01\x40\x01", ("record of 16385 bytes",)),
        (b"\x16\x03\x01\x00\x10\x02", ("handshake message type 2",)),
        (b"\x16\x03\x01\x00\x10\x01\x00\x00\x05", ("ClientHello of 5 bytes",)),
        (b"\x16\x03\x01\x00\x10\x01\xff\xff\xff", ("at most",)),
        (b"\x16\x03\x01\x00\x04\x01\x00\x01\x00\x15\x03\x03\x00\x02", ("content type 21",)),
    ],
)
def test_record_layer_refusals(data: bytes, words: tuple[str, ...]) -> None:
    assert_not_tls(data, *words)


def _corrupt(base: ClientHello, what: str) -> bytes:
    assert base.extensions is not None
    head = bytearray(base.head)
    if what == "version":
        head[0] = 2
        return ClientHello(bytes(head), base.extensions).message()
    if what == "session":
        head[34] = 33
        return ClientHello(bytes(head), base.extensions).message()
    session = 35 + head[34]
    if what == "suites-odd":
        head[session : session + 2] = struct.pack("!H", 3)
        return ClientHello(bytes(head), base.extensions).message()
    if what == "suites-empty":
        suites = struct.unpack("!H", head[session : session + 2])[0]
        del head[session + 2 : session + 2 + suites]
        head[session : session + 2] = b"\x00\x00"
        return ClientHello(bytes(head), base.extensions).message()
    if what == "methods-empty":
        return ClientHello(base.head[:-2] + b"\x00", base.extensions).message()
    if what == "duplicate":
        return ClientHello(base.head, [*base.extensions, base.extensions[-1]]).message()
    if what == "two-host-names":
        return base.with_sni((0, b"a.example"), (0, b"b.example")).message()
    if what == "empty-name-list":
        return base.with_extension(0, b"\x00\x00").message()
    if what == "sni-trailing":
        return base.with_extension(0, sni_ext(b"a.example") + b"\x00").message()
    if what == "sni-list-overrun":
        return base.with_extension(0, b"\x00\x40" + sni_ext(b"a.example")[2:]).message()
    if what == "sni-name-overrun":
        return base.with_extension(0, b"\x00\x0c\x00\x00\x40a.example").message()
    message = bytearray(base.message())
    if what == "extensions-short":  # the extensions length says 1 byte less
        at = 4 + len(base.head)
        (n,) = struct.unpack("!H", message[at : at + 2])
        message[at : at + 2] = struct.pack("!H", n - 1)
        return bytes(message)
    if what == "extensions-long":
        at = 4 + len(base.head)
        (n,) = struct.unpack("!H", message[at : at + 2])
        message[at : at + 2] = struct.pack("!H", n + 1)
        return bytes(message)
    if what == "extension-overrun":  # the last extension claims a byte past the end
        _, value = base.extensions[-1]
        at = len(message) - len(value) - 2
        message[at : at + 2] = struct.pack("!H", len(value) + 1)
        return bytes(message)
    raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("version", ("version major",)),
        ("session", ("session id of 33",)),
        ("suites-odd", ("cipher suites of 3",)),
        ("suites-empty", ("cipher suites of 0",)),
        ("methods-empty", ("no compression method",)),
        ("duplicate", ("twice",)),
        ("two-host-names", ("two host names",)),
        ("empty-name-list", ("empty server name list",)),
        ("sni-trailing", ("after the server name list",)),
        ("sni-list-overrun", ("server name list overruns",)),
        ("sni-name-overrun", ("server name overruns",)),
        ("extensions-short", ("bytes after the extensions",)),
        ("extensions-long", ("extensions overruns",)),
        ("extension-overrun", ("extension overruns",)),
    ],
)
def test_client_hello_refusals(base: ClientHello, what: str, words: tuple[str, ...]) -> None:
    data = records(_corrupt(base, what))
    assert_not_tls(data, *words)
    assert_not_tls(records(_corrupt(base, what), (50,)), *words)  # fragmented as well


def test_refused_before_the_hello_is_complete(base: ClientHello) -> None:
    # a wrong field is refused as soon as it has arrived, not at the end
    data = records(_corrupt(base, "session"))
    assert_not_tls(data[: 5 + 4 + 35], "session id of 33")
    assert read_server_name(data[: 5 + 4 + 34]) == NeedMore()


# ---------------------------------------------------------------- properties


def _outcome(result: Hello) -> None:
    assert isinstance(result, NeedMore | Found | NotTls)
    if isinstance(result, Found) and result.server_name is not None:
        assert result.server_name == result.server_name.lower()
        assert result.server_name.isascii() and not result.server_name.endswith(".")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _outcome(read_server_name(data))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03"]),
    st.integers(0, 2**14 + 2),
    st.binary(max_size=600),
)
def test_arbitrary_record_payloads_never_raise(head: bytes, length: int, payload: bytes) -> None:
    _outcome(read_server_name(head + struct.pack("!H", length) + b"\x01" + payload))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_hellos_never_raise(real_hellos: dict[str, Real], data: st.DataObject) -> None:
    hello = bytearray(data.draw(st.sampled_from(sorted(real_hellos.values(), key=repr))).data)
    for _ in range(data.draw(st.integers(1, 4))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    _outcome(read_server_name(bytes(hello[:cut])))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_a_full_bound_of_bytes_is_never_need_more(data: bytes) -> None:
    for prefix in (b"", b"\x16", b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03"):
        padded = (prefix + data).ljust(MAX_CLIENT_HELLO, b"\x00")
        assert not isinstance(read_server_name(padded), NeedMore)


def _names() -> st.SearchStrategy[str]:
    label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
    return (
        st.lists(label, min_size=1, max_size=5)
        .map(".".join)
        .filter(lambda n: not n.rpartition(".")[2].isdigit())
    )


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_generated_hellos_whole_truncated_and_fragmented(
    base: ClientHello, data: st.DataObject
) -> None:
    assert base.extensions is not None
    name = data.draw(_names())
    hello = base.with_sni((0, name.upper().encode())).without(21)
    extensions = data.draw(st.permutations(hello.extensions or []))
    message = ClientHello(hello.head, list(extensions)).message()
    sizes = data.draw(st.lists(st.integers(1, 300), max_size=6))
    wire = records(message, sizes)
    assert read_server_name(wire) == Found(name)
    assert read_server_name(wire + data.draw(st.binary(max_size=40))) == Found(name)
    cut = data.draw(st.integers(0, len(wire) - 1))
    assert read_server_name(wire[:cut]) == NeedMore()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for end in range(size, len(data) + size, size):
        yield data[:end]


def test_peeking_as_it_arrives(real_hellos: dict[str, Real]) -> None:
    # what the listener does: the whole prefix again each time more bytes have come
    data = real_hellos["openssl-sni"].data + GARBAGE
    answers = [read_server_name(prefix) for prefix in _chunks(data, 100)]
    first = next(i for i, a in enumerate(answers) if not isinstance(a, NeedMore))
    assert (first + 1) * 100 >= len(real_hellos["openssl-sni"].data)
    assert set(answers[first:]) == {Found("openssl.example.net")}
