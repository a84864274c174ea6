"""The PROXY-protocol listeners end to end: raw sockets, TLS, and a real HAProxy in front.

Each ``edge serve`` runs under uvloop and under the default asyncio loop. One edge per
loop (module scope, with both PROXY listeners on) serves most tests; the deadline and
the untrusted-peer tests start their own edge with different settings. The address in
the PROXY header must be the request's client everywhere: X-Forwarded-For, X-Real-IP
and the access log; X-Forwarded-Port is the header's destination port. Every refusal
closes the connection without sending a single byte.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.haproxy import HAProxy, Listen, required_tool
from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    free_port,
    parse_head,
    proxy_doc,
    wait_for,
)

HOST = "app.test"  # routed on the plain PROXY listener
TLS_HOST = "a.example.com"  # has a certificate of its own, routed on the TLS listener
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOOPS = ["uvloop", "asyncio"]

# ---------------------------------------------------------------------------
# wire helpers
# ---------------------------------------------------------------------------


def v1(src: str, dst: str, sport: int = 5555, dport: int = 8080) -> bytes:
    proto = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(
    src: tuple[str, int] = ("198.51.100.23", 40000),
    dst: tuple[str, int] = ("127.0.0.1", 8443),
    *,
    version_command: int = 0x21,  # version 2, PROXY
    transport: int = 0x1,  # STREAM
    tlvs: bytes = b"",
) -> bytes:
    if ":" in src[0]:
        family = 0x2
        addresses = socket.inet_pton(socket.AF_INET6, src[0])
        addresses += socket.inet_pton(socket.AF_INET6, dst[0])
    else:
        family = 0x1
        addresses = socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
    body = addresses + struct.pack("!HH", src[1], dst[1]) + tlvs
    fixed = struct.pack("!BBH", version_command, family << 4 | transport, len(body))
    return V2_SIGNATURE + fixed + body


def request(path: str, host: str = HOST, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pp-test\r\n{extra}\r\n".encode()


def new_path(prefix: str = "t") -> str:
    return f"/{prefix}/{uuid.uuid4().hex[:16]}"


@dataclasses.dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def upstream_saw(self) -> dict[str, list[str]]:
        """The echo upstream's view of the request headers, names lowercased."""
        assert self.status == 200, (self.status, self.body[:300])
        seen: dict[str, list[str]] = {}
        for name, value in json.loads(self.body)["headers"]:
            seen.setdefault(name.lower(), []).append(value)
        return seen

    def upstream_path(self) -> str:
        return str(json.loads(self.body)["path"])


class ResponseReader:
    """Reads HTTP/1.1 responses (Content-Length bodies) from a ``recv()`` callable."""

    def __init__(self, recv: Callable[[], bytes]) -> None:
        self.recv = recv
        self.buf = b""

    def _more(self) -> None:
        chunk = self.recv()
        if not chunk:
            raise EOFError(f"connection closed; got {self.buf[:200]!r}")
        self.buf += chunk

    def read(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        lengths = [int(v) for k, v in headers if k == "content-length"]
        assert lengths, f"response without Content-Length: {head!r}"
        while len(self.buf) < lengths[0]:
            self._more()
        body, self.buf = self.buf[: lengths[0]], self.buf[lengths[0] :]
        return Response(status, headers, body)


def connect(port: int, source: str | None = None, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(port: int, data: bytes, responses: int = 1) -> list[Response]:
    """Send ``data`` in one write, read ``responses`` responses."""
    with connect(port) as sock:
        sock.sendall(data)
        reader = ResponseReader(lambda: sock.recv(65536))
        return [reader.read() for _ in range(responses)]


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Everything the peer sends before it closes: (bytes, "eof" | "reset" | "timeout")."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return got, "eof"
            got += data
    except ConnectionResetError:
        return got, "reset"
    except TimeoutError:
        return got, "timeout"


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, tolerating a peer that has already closed (the refusals we test for)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def assert_closed_silently(sock: socket.socket, timeout: float = 3.0) -> float:
    """The peer closes without sending a byte; returns how long that took."""
    start = time.monotonic()
    got, how = read_until_closed(sock, timeout)
    elapsed = time.monotonic() - start
    assert got == b"", f"the edge sent {got[:200]!r} on a refused connection"
    assert how in ("eof", "reset"), f"still open after {timeout}s"
    return elapsed


class MemoryTLS:
    """A client TLS session over memory BIOs: the ClientHello can be sent with a prefix."""

    def __init__(self, ca: trustme.CA, server_hostname: str) -> None:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)

    def client_hello(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        hello = self.outgoing.read()
        assert hello[:1] == b"\x16", hello[:16]  # a TLS handshake record
        return hello

    def _flush(self, sock: socket.socket) -> None:
        out = self.outgoing.read()
        if out:
            sock.sendall(out)

    def finish_handshake(self, sock: socket.socket) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self._flush(sock)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the TLS handshake")
            self.incoming.write(data)
        self._flush(sock)

    def send(self, sock: socket.socket, data: bytes) -> None:
        self.obj.write(data)
        self._flush(sock)

    def recv(self, sock: socket.socket) -> bytes:
        while True:
            try:
                return self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._flush(sock)
                data = sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""


def access_entry(edge: EdgeProcess, path: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((r for r in edge.access_log() if r.get("path") == path), None)

    entry: dict[str, Any] = wait_for(find, timeout=5)
    return entry


def proxy_counters(edge: EdgeProcess) -> dict[str, int]:
    return dict(edge.health()["proxy_protocol"])


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    ca_pem: Path
    leaf_der: bytes
    record: str  # the cert:{name} JSON value


@dataclasses.dataclass(frozen=True)
class Stack:
    loop: str
    edge: EdgeProcess
    upstream: Upstream
    certs: Certs
    workdir: Path

    @property
    def pp_port(self) -> int:
        return int(self.edge.env["PROXY_PROTOCOL_PORT"])

    @property
    def tls_port(self) -> int:
        return int(self.edge.env["PROXY_PROTOCOL_TLS_PORT"])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = trustme.CA()
    leaf = ca.issue_cert(TLS_HOST, common_name=TLS_HOST)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    ca_pem = tmp_path_factory.mktemp("pp-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    record = json.dumps(
        {
            "cert_name": "a",
            "domains": [TLS_HOST],
            "fullchain_pem": chain,
            "private_key_pem": leaf.private_key_pem.bytes().decode(),
        }
    )
    leaf_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return Certs(ca, ca_pem, leaf_der, record)


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    server = Upstream()
    # BaseHTTPRequestHandler writes the head and the body separately: with Nagle on, each
    # response waits ~40 ms for a delayed ACK, which would make the load test crawl
    server.server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    yield server
    server.close()


def live_redis(redis_server: RedisServer) -> RedisServer:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    return redis_server


@pytest.fixture(scope="module", params=LOOPS)
def stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    module_upstream: Upstream,
    certs: Certs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One edge with both PROXY listeners, routing HOST and TLS_HOST to the echo upstream."""
    loop = str(request.param)
    client = live_redis(redis_server).client()
    client.flushall()
    client.set(f"proxy:{HOST}", proxy_doc(HOST, module_upstream.url))
    client.set(f"proxy:{TLS_HOST}", proxy_doc(TLS_HOST, module_upstream.url))
    client.set("cert:a", certs.record)
    workdir = tmp_path_factory.mktemp(f"pp-{loop}")
    edge = EdgeProcess(
        redis_server.url,
        workdir,
        EDGE_LOOP=loop,
        CONFIG_RESYNC_INTERVAL=30,
        PROXY_PROTOCOL_PORT=free_port(),
        PROXY_PROTOCOL_TLS_PORT=free_port(),
    )
    try:
        edge.start()
        edge.wait_generation(
            lambda h: h["proxies"] == 2 and h["tls"]["certificates"] == 1 and not h["rejected"],
            timeout=10,
        )
        yield Stack(loop, edge, module_upstream, certs, workdir)
    finally:
        edge.stop(timeout=10)
    # refusals are logged at info/warning; nothing may have gone wrong inside the edge
    # (an exception escaping a reader callback is logged by the event loop as an error)
    edge.check_errors()


@pytest.fixture
def spare_edge(
    redis_server: RedisServer, tmp_path: Path, event_loop_name: str
) -> Iterator[Callable[..., EdgeProcess]]:
    """Start an edge with its own settings (no Redis flush: the module's edge keeps its
    configuration); under uvloop and asyncio through ``event_loop_name``."""
    started: list[EdgeProcess] = []

    def start(**env: Any) -> EdgeProcess:
        edge = EdgeProcess(
            live_redis(redis_server).url,
            tmp_path,
            EDGE_LOOP=event_loop_name,
            CONFIG_RESYNC_INTERVAL=30,
            **env,
        )
        started.append(edge)
        return edge.start()

    yield start
    for edge in started:
        edge.stop(timeout=10)
    for edge in started:
        edge.check_errors()


# ---------------------------------------------------------------------------
# 1-3: valid headers, raw sockets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [("203.0.113.7", "127.0.0.1"), ("2001:db8::7", "::1")],
    ids=["tcp4", "tcp6"],
)
def test_v1_header_and_request_in_one_write(stack: Stack, src: str, dst: str) -> None:
    path = new_path()
    [resp] = exchange(stack.pp_port, v1(src, dst, 5555, 8080) + request(path))
    seen = resp.upstream_saw()
    assert resp.upstream_path() == path
    assert seen["x-forwarded-for"] == [src]
    assert seen["x-real-ip"] == [src]
    assert seen["x-forwarded-port"] == ["8080"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert access_entry(stack.edge, path)["client"] == src


def test_ipv4_mapped_source_is_reported_as_ipv4(stack: Stack) -> None:
    """A dual-stack HAProxy sends TCP6 ::ffff:a.b.c.d for IPv4 clients."""
    path = new_path()
    [resp] = exchange(stack.pp_port, v1("::ffff:203.0.113.9", "::1", 5555, 8080) + request(path))
    seen = resp.upstream_saw()
    assert seen["x-forwarded-for"] == ["203.0.113.9"]
    assert seen["x-real-ip"] == ["203.0.113.9"]
    assert access_entry(stack.edge, path)["client"] == "203.0.113.9"


def test_v1_keep_alive_requests_carry_the_address(stack: Stack) -> None:
    paths = [new_path() for _ in range(3)]
    with connect(stack.pp_port) as sock:
        reader = ResponseReader(lambda: sock.recv(65536))
        sock.sendall(v1("203.0.113.7", "127.0.0.1", 5555, 8080) + request(paths[0]))
        first = reader.read()
        sock.sendall(request(paths[1]))
        second = reader.read()
        time.sleep(0.05)
        sock.sendall(request(paths[2]))
        third = reader.read()
    for resp, path in zip((first, second, third), paths, strict=True):
        seen = resp.upstream_saw()
        assert resp.upstream_path() == path
        assert seen["x-forwarded-for"] == ["203.0.113.7"]
        assert seen["x-real-ip"] == ["203.0.113.7"]
        assert seen["x-forwarded-port"] == ["8080"]
        assert access_entry(stack.edge, path)["client"] == "203.0.113.7"


def test_pipelined_requests_in_the_first_write(stack: Stack) -> None:
    """Nothing after the header is lost: two requests arrive in the header's segment."""
    paths = [new_path(), new_path()]
    data = v1("203.0.113.8", "127.0.0.1", 5555, 8081) + request(paths[0]) + request(paths[1])
    responses = exchange(stack.pp_port, data, responses=2)
    for resp, path in zip(responses, paths, strict=True):
        assert resp.upstream_path() == path
        assert resp.upstream_saw()["x-forwarded-for"] == ["203.0.113.8"]


def test_large_body_in_the_header_write(stack: Stack) -> None:
    """A body far larger than the peek buffer, sent with the header: every byte arrives."""
    path = new_path()
    body = bytes(range(256)) * 512  # 128 KiB
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n\r\n"
    [resp] = exchange(stack.pp_port, v2(("198.51.100.4", 9)) + head.encode() + body)
    assert json.loads(resp.body)["body_len"] == len(body)
    assert resp.upstream_saw()["x-forwarded-for"] == ["198.51.100.4"]


@pytest.mark.parametrize("version", [1, 2])
def test_header_and_request_byte_by_byte(stack: Stack, version: int) -> None:
    path = new_path()
    if version == 1:
        header, client, port = v1("203.0.113.7", "127.0.0.1", 5555, 8080), "203.0.113.7", "8080"
    else:
        header, client, port = (
            v2(("198.51.100.3", 1234), ("127.0.0.1", 8082)),
            "198.51.100.3",
            "8082",
        )
    data = header + request(path)
    with connect(stack.pp_port) as sock:
        for i in range(len(data)):
            sock.send(data[i : i + 1])
            time.sleep(0.001)
        resp = ResponseReader(lambda: sock.recv(65536)).read()
    seen = resp.upstream_saw()
    assert resp.upstream_path() == path
    assert seen["x-forwarded-for"] == [client]
    assert seen["x-real-ip"] == [client]
    assert seen["x-forwarded-port"] == [port]
    assert access_entry(stack.edge, path)["client"] == client


def test_request_long_after_the_header(stack: Stack) -> None:
    path = new_path()
    with connect(stack.pp_port) as sock:
        sock.sendall(v1("203.0.113.7", "127.0.0.1", 5555, 8080))
        time.sleep(0.3)
        sock.sendall(request(path))
        resp = ResponseReader(lambda: sock.recv(65536)).read()
    assert resp.upstream_saw()["x-forwarded-for"] == ["203.0.113.7"]
    assert access_entry(stack.edge, path)["client"] == "203.0.113.7"


@pytest.mark.parametrize(
    ("src", "dst"),
    [(("198.51.100.23", 40000), ("127.0.0.1", 8443)), (("2001:db8::23", 40000), ("::1", 8443))],
    ids=["inet", "inet6"],
)
def test_v2_with_tlvs(stack: Stack, src: tuple[str, int], dst: tuple[str, int]) -> None:
    path = new_path()
    unique = f"uid-{uuid.uuid4().hex[:12]}"
    tlvs = tlv(0x02, HOST.encode()) + tlv(0x05, unique.encode())
    [resp] = exchange(stack.pp_port, v2(src, dst, tlvs=tlvs) + request(path))
    seen = resp.upstream_saw()
    assert seen["x-forwarded-for"] == [src[0]]
    assert seen["x-real-ip"] == [src[0]]
    assert seen["x-forwarded-port"] == ["8443"]
    entry = access_entry(stack.edge, path)
    assert entry["client"] == src[0]
    assert entry.get("proxy_unique_id") == unique


def test_v2_local_uses_the_socket_address(stack: Stack) -> None:
    """LOCAL (a health check from the proxy itself): addresses in the block are ignored."""
    path = new_path()
    header = v2(("198.51.100.99", 999), ("198.51.100.98", 998), version_command=0x20)
    [resp] = exchange(stack.pp_port, header + request(path))
    seen = resp.upstream_saw()
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-real-ip"] == ["127.0.0.1"]
    assert seen["x-forwarded-port"] == [str(stack.pp_port)]
    assert access_entry(stack.edge, path)["client"] == "127.0.0.1"


def test_v1_unknown_uses_the_socket_address(stack: Stack) -> None:
    path = new_path()
    [resp] = exchange(stack.pp_port, b"PROXY UNKNOWN\r\n" + request(path))
    seen = resp.upstream_saw()
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-real-ip"] == ["127.0.0.1"]
    assert seen["x-forwarded-port"] == [str(stack.pp_port)]
    assert access_entry(stack.edge, path)["client"] == "127.0.0.1"


def test_client_forwarded_for_is_appended_to_not_trusted(stack: Stack) -> None:
    """An incoming X-Forwarded-For is kept and the PROXY address appended; X-Real-IP and
    X-Forwarded-Port from the client are replaced."""
    path = new_path()
    extra = "X-Forwarded-For: 10.9.9.9\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\n"
    [resp] = exchange(stack.pp_port, v1("203.0.113.7", "127.0.0.1") + request(path, extra=extra))
    seen = resp.upstream_saw()
    assert seen["x-forwarded-for"] == ["10.9.9.9, 203.0.113.7"]
    assert seen["x-real-ip"] == ["203.0.113.7"]
    assert seen["x-forwarded-port"] == ["8080"]


# ---------------------------------------------------------------------------
# 4: invalid headers are closed with nothing sent
# ---------------------------------------------------------------------------

GOOD = request("/never")
INVALID: dict[str, bytes] = {
    "no-header": GOOD,
    "lowercase-proxy": b"proxy TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n" + GOOD,
    "tcp5": b"PROXY TCP5 203.0.113.7 127.0.0.1 5555 8080\r\n" + GOOD,
    "leading-zero-octet": b"PROXY TCP4 203.0.113.07 127.0.0.1 5555 8080\r\n" + GOOD,
    "port-65536": b"PROXY TCP4 203.0.113.7 127.0.0.1 65536 8080\r\n" + GOOD,
    "lone-lf": b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\n" + GOOD,
    "200-byte-line": b"PROXY UNKNOWN " + b"x" * 184 + b"\r\n" + GOOD,
    "v6-address-in-tcp4": b"PROXY TCP4 2001:db8::1 127.0.0.1 5555 8080\r\n" + GOOD,
    "v2-version-1": v2(version_command=0x11) + GOOD,
    "v2-dgram": v2(transport=0x2) + GOOD,
    "tls-record": bytes.fromhex("160301002a") + b"\x00" * 42,
}
assert len(INVALID["200-byte-line"]) == 200 + len(GOOD)


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_header_closed_with_nothing_sent(stack: Stack, name: str) -> None:
    before = proxy_counters(stack.edge)
    with connect(stack.pp_port) as sock:
        sock.sendall(INVALID[name])
        elapsed = assert_closed_silently(sock)
    # refused at the first impossible byte, not at PROXY_PROTOCOL_TIMEOUT (5 s here)
    assert elapsed < 2.5, elapsed
    wait_for(lambda: proxy_counters(stack.edge)["invalid_headers"] == before["invalid_headers"] + 1)
    assert proxy_counters(stack.edge)["refused_peers"] == before["refused_peers"]
    # the edge keeps serving
    path = new_path()
    [resp] = exchange(stack.pp_port, v1("203.0.113.7", "127.0.0.1") + request(path))
    assert resp.upstream_saw()["x-forwarded-for"] == ["203.0.113.7"]


def test_tls_listener_without_header_closed_with_nothing_sent(stack: Stack) -> None:
    before = proxy_counters(stack.edge)
    hello = MemoryTLS(stack.certs.ca, TLS_HOST).client_hello()
    with connect(stack.tls_port) as sock:
        sock.sendall(hello)
        assert assert_closed_silently(sock) < 2.5
    wait_for(lambda: proxy_counters(stack.edge)["invalid_headers"] == before["invalid_headers"] + 1)


def test_loopback_peer_outside_the_default_trusted_cidrs_refused(stack: Stack) -> None:
    """The default PROXY_TRUSTED_CIDRS is 127.0.0.1/32, not all of 127.0.0.0/8."""
    before = proxy_counters(stack.edge)
    with connect(stack.pp_port, source="127.0.0.2") as sock:
        send_quietly(sock, v1("203.0.113.7", "127.0.0.1") + request(new_path()))
        assert assert_closed_silently(sock) < 2.5
    wait_for(lambda: proxy_counters(stack.edge)["refused_peers"] == before["refused_peers"] + 1)


# ---------------------------------------------------------------------------
# 5-6: untrusted peers, header deadline (an edge of their own)
# ---------------------------------------------------------------------------


def test_untrusted_peer_closed_with_nothing_sent(spare_edge: Callable[..., EdgeProcess]) -> None:
    port = free_port()
    edge = spare_edge(PROXY_PROTOCOL_PORT=port, PROXY_TRUSTED_CIDRS="10.0.0.0/8")
    assert proxy_counters(edge) == {"refused_peers": 0, "invalid_headers": 0}
    with connect(port) as sock:
        send_quietly(sock, v1("203.0.113.7", "127.0.0.1") + request("/x"))
        assert_closed_silently(sock)
    # a peer that says nothing is refused at accept too, not at the header deadline (5 s)
    with connect(port) as silent:
        assert assert_closed_silently(silent) < 2.5
    wait_for(lambda: proxy_counters(edge) == {"refused_peers": 2, "invalid_headers": 0})
    assert edge.health()["status"] in ("ok", "degraded")


def test_header_deadline(spare_edge: Callable[..., EdgeProcess]) -> None:
    port = free_port()
    edge = spare_edge(PROXY_PROTOCOL_PORT=port, PROXY_PROTOCOL_TIMEOUT=0.5)
    half = connect(port)
    silent = connect(port)
    complete = connect(port)
    try:
        started = time.monotonic()
        half.sendall(b"PROXY TCP4 203.0")
        complete.sendall(v1("203.0.113.7", "127.0.0.1"))
        assert_closed_silently(half)
        half_elapsed = time.monotonic() - started
        assert_closed_silently(silent)
        silent_elapsed = time.monotonic() - started
        assert 0.3 <= half_elapsed <= 2.5, half_elapsed
        assert 0.3 <= silent_elapsed <= 2.5, silent_elapsed
        # a complete header is not subject to the deadline: a request long after it is served
        time.sleep(max(0.0, started + 0.8 - time.monotonic()))
        complete.sendall(request("/late"))
        raw = complete.recv(65536)
        assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    finally:
        for sock in (half, silent, complete):
            sock.close()
    wait_for(lambda: proxy_counters(edge) == {"refused_peers": 0, "invalid_headers": 2})


# ---------------------------------------------------------------------------
# 7: the TLS PROXY listener
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_tls_header_and_client_hello_in_one_write(stack: Stack, version: int) -> None:
    path = new_path()
    if version == 1:
        header, client = v1("203.0.113.9", "127.0.0.1", 5555, 443), "203.0.113.9"
    else:
        header, client = v2(("198.51.100.9", 5555), ("127.0.0.1", 443)), "198.51.100.9"
    tls = MemoryTLS(stack.certs.ca, TLS_HOST)
    with connect(stack.tls_port) as sock:
        sock.sendall(header + tls.client_hello())
        tls.finish_handshake(sock)  # verifies the chain and the name against the trustme CA
        assert tls.obj.getpeercert(binary_form=True) == stack.certs.leaf_der
        tls.send(sock, request(path, host=TLS_HOST))
        resp = ResponseReader(lambda: tls.recv(sock)).read()
    seen = resp.upstream_saw()
    assert resp.upstream_path() == path
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-for"] == [client]
    assert seen["x-real-ip"] == [client]
    assert seen["x-forwarded-port"] == ["443"]
    assert access_entry(stack.edge, path)["client"] == client


# ---------------------------------------------------------------------------
# 8: a real HAProxy in front
# ---------------------------------------------------------------------------

CLIENT = "127.0.0.2"  # the test client's address, distinct from HAProxy's own 127.0.0.1
HAPROXY_LISTENS = {
    # name: (listener, send-proxy keyword)
    "plain_v1": ("plain", "send-proxy"),
    "plain_v2": ("plain", "send-proxy-v2"),
    "tls_v1": ("tls", "send-proxy"),
    "tls_v2": ("tls", "send-proxy-v2"),
}


@pytest.fixture(scope="module")
def haproxy(stack: Stack) -> Iterator[HAProxy]:
    listens = []
    for name, (listener, keyword) in HAPROXY_LISTENS.items():
        v2_options = keyword == "send-proxy-v2"
        listens.append(
            Listen(
                name,
                stack.pp_port if listener == "plain" else stack.tls_port,
                keyword,
                # v2: a unique-id TLV naming the client as HAProxy saw it
                server_options="proxy-v2-options unique-id" if v2_options else "",
                section_lines=("unique-id-format hap-%ci-%cp",) if v2_options else (),
            )
        )
    workdir = stack.workdir / "haproxy"
    workdir.mkdir(exist_ok=True)
    proxy = HAProxy(workdir, listens)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize("name", ["plain_v1", "plain_v2"])
def test_haproxy_plain(stack: Stack, haproxy: HAProxy, name: str) -> None:
    port = haproxy.port(name)
    paths = [new_path() for _ in range(3)]
    with connect(port, source=CLIENT) as sock:
        client_port = sock.getsockname()[1]
        reader = ResponseReader(lambda: sock.recv(65536))
        responses = []
        for path in paths:  # one keep-alive connection through HAProxy
            sock.sendall(request(path))
            responses.append(reader.read())
    for resp, path in zip(responses, paths, strict=True):
        seen = resp.upstream_saw()
        assert resp.upstream_path() == path
        assert seen["x-forwarded-for"] == [CLIENT]
        assert seen["x-real-ip"] == [CLIENT]
        assert seen["x-forwarded-port"] == [str(port)]
        assert seen["x-forwarded-proto"] == ["http"]
        entry = access_entry(stack.edge, path)
        assert entry["client"] == CLIENT
        if name.endswith("v2"):
            assert entry.get("proxy_unique_id") == f"hap-{CLIENT}-{client_port}"
        else:
            assert "proxy_unique_id" not in entry


@pytest.mark.parametrize("name", ["tls_v1", "tls_v2"])
def test_haproxy_tls_python(stack: Stack, haproxy: HAProxy, name: str) -> None:
    port = haproxy.port(name)
    ctx = ssl.create_default_context()
    stack.certs.ca.configure_trust(ctx)
    paths = [new_path(), new_path()]
    with (
        connect(port, source=CLIENT) as raw,
        ctx.wrap_socket(raw, server_hostname=TLS_HOST) as sock,
    ):
        assert sock.getpeercert(binary_form=True) == stack.certs.leaf_der
        reader = ResponseReader(lambda: sock.recv(65536))
        responses = []
        for path in paths:
            sock.sendall(request(path, host=TLS_HOST))
            responses.append(reader.read())
    for resp, path in zip(responses, paths, strict=True):
        seen = resp.upstream_saw()
        assert resp.upstream_path() == path
        assert seen["x-forwarded-proto"] == ["https"]
        assert seen["x-forwarded-for"] == [CLIENT]
        assert seen["x-real-ip"] == [CLIENT]
        assert seen["x-forwarded-port"] == [str(port)]
        assert access_entry(stack.edge, path)["client"] == CLIENT


@pytest.mark.parametrize("name", ["tls_v1", "tls_v2"])
def test_haproxy_tls_curl(stack: Stack, haproxy: HAProxy, name: str) -> None:
    curl = required_tool("curl")
    port = haproxy.port(name)
    path = new_path("curl")
    result = subprocess.run(
        [curl, "-sS", "--fail", "--max-time", "10",
         "--resolve", f"{TLS_HOST}:{port}:127.0.0.1",
         "--cacert", str(stack.certs.ca_pem),
         "--interface", CLIENT,
         f"https://{TLS_HOST}:{port}{path}"],
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    doc = json.loads(result.stdout)
    assert doc["path"] == path
    seen = Response(200, [], result.stdout).upstream_saw()
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-for"] == [CLIENT]
    assert seen["x-real-ip"] == [CLIENT]
    assert seen["x-forwarded-port"] == [str(port)]
    assert access_entry(stack.edge, path)["client"] == CLIENT


LOAD_THREADS = 4
LOAD_KEEPALIVE_CONNECTIONS = 16  # per thread, alternating v1 and v2
LOAD_REQUESTS_PER_CONNECTION = 50
LOAD_FRESH_CONNECTIONS = 40  # per thread, one request each, alternating v1 and v2
LOAD_TOTAL = LOAD_THREADS * (
    LOAD_KEEPALIVE_CONNECTIONS * LOAD_REQUESTS_PER_CONNECTION + LOAD_FRESH_CONNECTIONS
)


def test_haproxy_load(stack: Stack, haproxy: HAProxy) -> None:
    """Thousands of requests through HAProxy, v1 and v2, keep-alive and fresh connections:
    all 200, each carrying its own client's address (one loopback address per thread)."""
    assert LOAD_TOTAL >= 3000
    ports = [haproxy.port("plain_v1"), haproxy.port("plain_v2")]
    token = uuid.uuid4().hex[:12]
    errors: list[str] = []
    lock = threading.Lock()

    def one(conn: http.client.HTTPConnection, address: str, port: int, path: str) -> bool:
        try:
            conn.request("GET", path, headers={"Host": HOST})
            resp = conn.getresponse()
            body = resp.read()
            problem = ""
            if resp.status != 200:
                problem = f"status {resp.status}"
            else:
                got = Response(200, [], body)
                seen = got.upstream_saw()
                wanted = {
                    "x-forwarded-for": [address],
                    "x-real-ip": [address],
                    "x-forwarded-port": [str(port)],
                }
                wrong = {k: seen.get(k) for k, v in wanted.items() if seen.get(k) != v}
                if got.upstream_path() != path:
                    problem = f"answer for {got.upstream_path()}"
                elif wrong:
                    problem = f"headers {wrong}"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            with lock:
                errors.append(f"{path} via {port}: {problem}")
        return not problem

    def run(index: int) -> int:
        address = f"127.0.0.{20 + index}"
        done = 0
        for c in range(LOAD_KEEPALIVE_CONNECTIONS):
            port = ports[(c + index) % 2]
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=10, source_address=(address, 0)
            )
            try:
                for i in range(LOAD_REQUESTS_PER_CONNECTION):
                    done += one(conn, address, port, f"/load/{token}/{index}/k{c}-{i}")
            finally:
                conn.close()
        for f in range(LOAD_FRESH_CONNECTIONS):
            port = ports[(f + index) % 2]
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=10, source_address=(address, 0)
            )
            try:
                done += one(conn, address, port, f"/load/{token}/{index}/f{f}")
            finally:
                conn.close()
        return done

    with concurrent.futures.ThreadPoolExecutor(LOAD_THREADS) as pool:
        succeeded = sum(pool.map(run, range(LOAD_THREADS)))
    assert not errors, f"{len(errors)} errors, first ones: {errors[:10]}"
    assert succeeded == LOAD_TOTAL

    prefix = f"/load/{token}/"

    def logged() -> list[dict[str, Any]]:
        entries = [r for r in stack.edge.access_log() if r.get("path", "").startswith(prefix)]
        return entries if len(entries) >= LOAD_TOTAL else []

    entries = wait_for(logged, timeout=10)
    assert len(entries) == LOAD_TOTAL
    for entry in entries:
        index = int(entry["path"].split("/")[3])
        assert entry["client"] == f"127.0.0.{20 + index}", entry
        assert entry["status"] == 200, entry
