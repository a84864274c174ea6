"""Upstream failures: refused, connect and response timeouts, bad responses, TLS trust."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import EdgeProcess, RedisServer, free_port, wait_for
from tests.integration.test_upstream_pool import (
    HOST,
    ScriptedUpstream,
    UpConn,
    configure,
    keepalive_json,
    request,
    scripted,
)

__all__ = ["scripted"]  # fixture re-used from the pool tests

REFUSED = "bad gateway: upstream refused or unreachable"
CONNECT_TIMEOUT = "gateway timeout: upstream connect timed out"
RESPONSE_TIMEOUT = "gateway timeout: upstream did not respond in time"
INVALID = "bad gateway: upstream sent an invalid response"


def error_message(body: bytes) -> str:
    return str(json.loads(body)["error"]["message"])


def test_dead_upstream_is_502_quickly(edge: EdgeProcess, redis_db: RedisServer) -> None:
    configure(redis_db, edge, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    status, body = request(edge.http_port)
    elapsed = time.monotonic() - started
    assert status == 502
    assert error_message(body) == REFUSED
    # three attempts, 100 ms then 200 ms apart
    assert 0.25 <= elapsed < 1.0, elapsed
    log = wait_for(lambda: [r for r in edge.access_log() if r["status"] == 502])
    assert log[0]["upstream"].startswith("127.0.0.1:")


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose SYNs are dropped: a listen(0) socket that never accepts, kept full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break  # the queue is full: further SYNs are dropped
            fillers.append(probe)
        else:
            pytest.skip("this kernel completes connections beyond a full listen(0) backlog")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_connect_timeout_is_504(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    blackhole: int,
    event_loop_name: str,
) -> None:
    edge = edge_factory(EDGE_LOOP=event_loop_name, PROXY_CONNECT_TIMEOUT=1)
    configure(redis_db, edge, f"http://127.0.0.1:{blackhole}")
    started = time.monotonic()
    status, body = request(edge.http_port)
    elapsed = time.monotonic() - started
    assert status == 504
    assert error_message(body) == CONNECT_TIMEOUT
    assert 0.8 <= elapsed < 3.0, elapsed


def test_response_timeout_is_504(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    event_loop_name: str,
) -> None:
    def silent(conn: UpConn) -> None:
        assert conn.next_request() is not None  # read it, never answer

    edge = edge_factory(EDGE_LOOP=event_loop_name, PROXY_REQUEST_TIMEOUT=1)
    up = scripted(silent)
    configure(redis_db, edge, up.url)
    started = time.monotonic()
    status, body = request(edge.http_port)
    elapsed = time.monotonic() - started
    assert status == 504
    assert error_message(body) == RESPONSE_TIMEOUT != CONNECT_TIMEOUT
    assert 0.8 <= elapsed < 3.0, elapsed
    # the edge gave up on that connection rather than pooling it
    wait_for(lambda: up.conns[0].closed_at is not None, timeout=5)


def test_malformed_response_is_502_and_connection_dropped(
    edge: EdgeProcess, redis_db: RedisServer, scripted: Callable[..., ScriptedUpstream]
) -> None:
    def serve(conn: UpConn) -> None:
        if conn.index == 0:
            assert conn.next_request() is not None
            conn.respond(200, body=b"fine")
            assert conn.next_request() is not None
            conn.send_raw(b"NOT-HTTP garbage\r\n\r\n")
            return  # stay open: only the edge may close it
        keepalive_json(conn)

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    assert request(edge.http_port) == (200, b"fine")
    status, body = request(edge.http_port, path="/bad")
    assert status == 502
    assert error_message(body) == INVALID
    wait_for(lambda: up.conns[0].closed_at is not None, timeout=5)
    status, body = request(edge.http_port, path="/next")
    assert status == 200
    assert json.loads(body)["conn"] == 1  # a new connection, not the broken one
    assert up.conns[0].requests == 2  # the failed GET was not re-sent anywhere
    assert up.conns[1].requests == 1


def _read_until_end(port: int, raw: bytes) -> tuple[bytes, str]:
    """Everything the edge sends until it closes, and how the connection ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        chunks: list[bytes] = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return b"".join(chunks), "reset"
            if not data:
                return b"".join(chunks), "eof"
            chunks.append(data)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upstream_close_mid_body_aborts_client(
    edge: EdgeProcess,
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    framing: str,
) -> None:
    def serve(conn: UpConn) -> None:
        assert conn.next_request() is not None
        if framing == "content-length":
            conn.send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        else:
            conn.send_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n")
            conn.send_raw(b"x" * 1000 + b"\r\n")
        conn.sock.close()

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    raw = f"GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    data, _how = _read_until_end(edge.http_port, raw)
    head, _, body = data.partition(b"\r\n\r\n")
    if head:
        assert head.startswith(b"HTTP/1.1 200")
    if framing == "content-length":
        assert len(body) < 100000
    else:
        assert not body.endswith(b"0\r\n\r\n")  # never the last chunk of a complete body
        assert len(body) < 2000
    record = wait_for(lambda: [r for r in edge.access_log() if r["path"] == "/big"])[0]
    assert record.get("aborted") is True


@pytest.fixture
def tls_upstream(ca: trustme.CA, scripted: Callable[..., ScriptedUpstream]) -> ScriptedUpstream:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return scripted(keepalive_json, tls=ctx)


def test_https_upstream_unknown_ca_is_502(
    edge: EdgeProcess, redis_db: RedisServer, tls_upstream: ScriptedUpstream
) -> None:
    configure(redis_db, edge, tls_upstream.url)
    assert tls_upstream.url.startswith("https://")
    status, body = request(edge.http_port)
    assert status == 502
    assert error_message(body) == REFUSED
    assert tls_upstream.connections == 0  # no handshake completed, no request sent
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in edge.stderr())


def test_https_upstream_trusted_ca_is_200(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    tls_upstream: ScriptedUpstream,
    ca: trustme.CA,
    tmp_path: Path,
    event_loop_name: str,
) -> None:
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    edge = edge_factory(EDGE_LOOP=event_loop_name, SSL_CERT_FILE=str(pem))
    configure(redis_db, edge, tls_upstream.url)
    for i in range(3):
        status, body = request(edge.http_port, path=f"/tls{i}")
        assert status == 200, body
        assert json.loads(body) == {"conn": 0, "n": i + 1, "path": f"/tls{i}"}
    assert tls_upstream.connections == 1  # TLS connections are pooled too


def _trickle_upload(port: int, seconds: float, step: float = 0.2) -> tuple[int, bytes]:
    """POST a chunked body that keeps flowing for ``seconds``; the status and body back."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(
            f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        end = time.monotonic() + seconds
        answered = False
        while time.monotonic() < end:
            if select.select([s], [], [], 0)[0]:
                answered = True  # an early answer: stop sending, read it
                break
            s.sendall(b"400\r\n" + b"u" * 1024 + b"\r\n")
            time.sleep(step)
        if not answered:
            s.sendall(b"0\r\n\r\n")
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, resp.read()


def test_upload_longer_than_the_request_timeout_is_served_while_bytes_flow(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    """PROXY_REQUEST_TIMEOUT is an idle timer: body progress keeps the exchange alive."""
    edge = edge_factory(PROXY_REQUEST_TIMEOUT=1)
    up = scripted(keepalive_json)
    configure(redis_db, edge, up.url)
    status, body = _trickle_upload(edge.http_port, seconds=3.0)
    assert status == 200, body
    assert json.loads(body)["path"] == "/upload"


def test_upstream_that_stops_reading_the_upload_is_504(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    """The idle timer runs while the upstream does not take the body (its buffers full)."""

    def stalled(conn: UpConn) -> None:
        conn.sock.recv(1024)  # the head, then never another read
        time.sleep(20)

    edge = edge_factory(PROXY_REQUEST_TIMEOUT=1)
    up = scripted(stalled)
    configure(redis_db, edge, up.url)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=15) as s:
        s.sendall(
            f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 200000000\r\n\r\n".encode()
        )
        s.settimeout(0.05)
        data = b""
        with contextlib.suppress(OSError):
            while time.monotonic() - started < 12 and b"\r\n\r\n" not in data:
                with contextlib.suppress(TimeoutError):
                    s.sendall(b"x" * 65536)
                with contextlib.suppress(TimeoutError):
                    data += s.recv(65536)
    elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 504 "), data[:200]
    assert elapsed < 10, elapsed


def test_total_timeout_caps_a_response_that_keeps_trickling(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    def trickle(conn: UpConn) -> None:
        assert conn.next_request() is not None
        conn.send_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(100):
                conn.send_raw(b"1\r\nx\r\n")
                time.sleep(0.2)

    edge = edge_factory(PROXY_REQUEST_TIMEOUT=1, PROXY_TOTAL_TIMEOUT=2)
    up = scripted(trickle)
    configure(redis_db, edge, up.url)
    started = time.monotonic()
    data, _how = _read_until_end(
        edge.http_port, f"GET /s HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    )
    elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 200 ")
    assert not data.endswith(b"0\r\n\r\n")  # cut, not completed
    assert 1.5 <= elapsed < 6, elapsed
    record = wait_for(lambda: [r for r in edge.access_log() if r["path"] == "/s"])[0]
    assert record.get("aborted") is True


def test_total_timeout_before_the_response_is_504(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    edge = edge_factory(PROXY_REQUEST_TIMEOUT=5, PROXY_TOTAL_TIMEOUT=1.5)
    up = scripted(keepalive_json)
    configure(redis_db, edge, up.url)
    started = time.monotonic()
    status, body = _trickle_upload(edge.http_port, seconds=4.0)
    assert status == 504, body
    assert 1.0 <= time.monotonic() - started < 6
