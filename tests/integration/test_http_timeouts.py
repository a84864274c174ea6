"""Client-side deadlines of the downstream connection, with every timeout set to 1 s.

- the head deadline is total (from the first byte) and answers 408;
- the body deadline is an idle timer (no bytes for that long) and answers 408;
- an idle keep-alive connection, or one that never sends a byte, is closed silently.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import EdgeProcess, RedisServer, Upstream, module_edge, wait_for

HOST = "app.test"
TIMEOUT = 1.0
# timers never fire early; the upper bound only catches a deadline that is not enforced
EARLIEST = TIMEOUT * 0.9
LATEST = TIMEOUT + 3.0


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def timed_edge(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    echo_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EdgeProcess]:
    with module_edge(
        redis_server,
        tmp_path_factory.mktemp("edge-timeouts"),
        HOST,
        echo_upstream.url,
        EDGE_LOOP=request.param,
        CLIENT_HEADER_TIMEOUT=TIMEOUT,
        CLIENT_BODY_TIMEOUT=TIMEOUT,
        KEEPALIVE_TIMEOUT=TIMEOUT,
    ) as edge:
        yield edge


def connect(edge: EdgeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", edge.http_port), timeout=LATEST + 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the edge closes (a reset counts as a close)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bytes]:
    """One Content-Length framed response; returns status, headers, body and what follows."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before a response head: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "closed inside a response body"
        rest += data
    return status, headers, rest[:length], rest[length:]


def access_line(edge: EdgeProcess, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((x for x in edge.access_log() if x.get("request_id") == request_id), None)

    return wait_for(find, timeout=5)  # type: ignore[no-any-return]


def assert_408(edge: EdgeProcess, status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 408
    doc = json.loads(body)
    assert doc["error"]["code"] == "request_timeout"
    assert doc["error"]["message"] == "request timeout"
    rid = doc["error"]["request_id"]
    assert rid and headers["x-request-id"] == rid
    assert headers.get("connection") == "close"
    assert b"Traceback" not in body
    assert access_line(edge, rid)["status"] == 408


def gets_408_then_close(edge: EdgeProcess, sock: socket.socket) -> float:
    """The 408 (see ``assert_408``) comes next on ``sock``, then the close; how long it
    took from now."""
    started = time.monotonic()
    status, headers, body, rest = read_response(sock)
    elapsed = time.monotonic() - started
    assert_408(edge, status, headers, body)
    assert rest + read_all(sock) == b""
    return elapsed


def test_partial_head_gets_408_then_close(timed_edge: EdgeProcess) -> None:
    with connect(timed_edge) as sock:
        sock.sendall(f"GET /slow-head HTTP/1.1\r\nHost: {HOST}\r\nX-A: b\r\n".encode())
        elapsed = gets_408_then_close(timed_edge, sock)
    assert EARLIEST <= elapsed <= LATEST, elapsed


def test_head_deadline_is_total_not_reset_by_trickled_bytes(timed_edge: EdgeProcess) -> None:
    """Bytes every 0.2 s keep arriving, yet the head must be complete 1 s after it began."""
    head = f"GET /trickled-head HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {'s' * 40}\r\n\r\n".encode()
    with connect(timed_edge) as sock:
        started = time.monotonic()
        sent = 0
        while sent < len(head) and not select.select([sock], [], [], 0.2)[0]:
            sock.sendall(head[sent : sent + 1])
            sent += 1
        status, headers, body, _ = read_response(sock)
        elapsed = time.monotonic() - started
        assert sent < len(head), "the head should not have been completed"
        assert_408(timed_edge, status, headers, body)
        assert read_all(sock) == b""
    assert EARLIEST <= elapsed <= LATEST, elapsed


def test_idle_request_body_gets_408_then_close(timed_edge: EdgeProcess) -> None:
    with connect(timed_edge) as sock:
        sock.sendall(
            f"POST /idle-body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n".encode()
            + b"0123456789"
        )
        elapsed = gets_408_then_close(timed_edge, sock)
    assert EARLIEST <= elapsed <= LATEST, elapsed


def test_trickled_body_within_the_idle_timeout_is_not_cut(
    timed_edge: EdgeProcess, echo_upstream: Upstream
) -> None:
    """One byte every 0.3 s for 2.4 s: slower than the timeout in total, never idle that long."""
    body = b"abcdefgh"
    with connect(timed_edge) as sock:
        sock.sendall(
            f"POST /trickled-body HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        started = time.monotonic()
        for i in range(len(body)):
            # nothing may come back while the body is still arriving
            assert not select.select([sock], [], [], 0.3)[0], "answered mid-body"
            sock.sendall(body[i : i + 1])
        status, _, payload, _ = read_response(sock)
        assert time.monotonic() - started > 2 * TIMEOUT
    assert status == 200
    doc = json.loads(payload)
    assert doc["path"] == "/trickled-body"
    assert doc["body_len"] == len(body)


def test_idle_keepalive_connection_is_closed_silently(timed_edge: EdgeProcess) -> None:
    with connect(timed_edge) as sock:
        sock.sendall(f"GET /ka-idle HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        status, headers, _, rest = read_response(sock)
        assert status == 200 and "connection" not in headers
        started = time.monotonic()
        assert rest + read_all(sock) == b""
        elapsed = time.monotonic() - started
    assert EARLIEST <= elapsed <= LATEST, elapsed


def test_a_request_before_the_keepalive_deadline_is_served(timed_edge: EdgeProcess) -> None:
    with connect(timed_edge) as sock:
        for i in range(3):
            sock.sendall(f"GET /ka-{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            status, _, payload, rest = read_response(sock)
            assert status == 200 and rest == b""
            assert json.loads(payload)["path"] == f"/ka-{i}"
            # idle for well under the timeout before the next request
            assert not select.select([sock], [], [], TIMEOUT * 0.5)[0]
        assert read_all(sock) == b""


def test_fresh_connection_sending_nothing_is_closed_silently(timed_edge: EdgeProcess) -> None:
    with connect(timed_edge) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        elapsed = time.monotonic() - started
    assert EARLIEST <= elapsed <= LATEST, elapsed
