"""Upstream keep-alive pool: reuse, stale connections, idle timeout and idle limit.

``ScriptedUpstream`` (also used by the other forwarding test files) is a loopback TCP
server whose every accepted socket is served by a test-provided function in its own
thread, with h11 for parsing, so each test decides exactly when the upstream answers,
stays silent or closes.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import h11
import pytest

from tests.helpers import EdgeProcess, RedisServer, Upstream, proxy_doc, wait_for

HOST = "app.test"


@dataclass
class Received:
    request: h11.Request
    body: bytes
    body_len: int

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.request.headers:
            if k == name:
                return bytes(v)
        return None


@dataclass
class UpConn:
    """One accepted upstream socket, seen from the upstream."""

    sock: socket.socket
    index: int
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER))
    requests: int = 0
    closed_at: float | None = None  # when the upstream saw the peer's EOF/RST
    sent: int = 0  # response body bytes handed to the kernel

    def next_request(
        self, timeout: float = 30.0, on_body: Callable[[bytes], None] | None = None
    ) -> Received | None:
        """The next whole request, or None when the edge closed the connection."""
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        self.sock.settimeout(timeout)
        request: h11.Request | None = None
        chunks: list[bytes] = []
        length = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = self.sock.recv(1 << 20)
                except (ConnectionResetError, OSError):
                    data = b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                length += len(event.data)
                if on_body is not None:
                    on_body(bytes(event.data))
                else:
                    chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self.requests += 1
                return Received(request, b"".join(chunks), length)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:
                raise AssertionError(f"unexpected event {event!r}")

    def respond(
        self, status: int = 200, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> None:
        hdrs = list(headers or [])
        if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
            hdrs.append(("Content-Length", str(len(body))))
        out = self.h11.send(h11.Response(status_code=status, headers=hdrs))
        if body:
            out += self.h11.send(h11.Data(data=body))
        out += self.h11.send(h11.EndOfMessage())
        self.sock.sendall(out)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def wait_eof(self, timeout: float = 30.0) -> bool:
        """Read (and drop) until the edge closes; True if it did within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class ScriptedUpstream:
    """A loopback server calling ``serve(conn)`` in a thread for every accepted socket.

    When ``serve`` returns, the upstream keeps reading until the edge closes, so
    ``open_count`` reflects what the edge still holds open.
    """

    def __init__(
        self,
        serve: Callable[[UpConn], None],
        tls: ssl.SSLContext | None = None,
        backlog: int = 64,
    ) -> None:
        self.serve = serve
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = int(self.listener.getsockname()[1])
        self.conns: list[UpConn] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.conns)

    @property
    def open_count(self) -> int:
        return sum(1 for c in self.conns if c.closed_at is None)

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    sock.close()
                    continue
            with self._lock:
                conn = UpConn(sock, len(self.conns))
                self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: UpConn) -> None:
        try:
            self.serve(conn)
            if conn.sock.fileno() >= 0:
                conn.wait_eof(timeout=60)
        except BaseException as exc:  # recorded so the test can show it
            if not self._closing:
                self.errors.append(exc)
        finally:
            conn.closed_at = time.monotonic()
            try:
                conn.sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closing = True
        self.listener.close()
        for conn in self.conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def keepalive_json(conn: UpConn) -> None:
    """Answer every request on the connection with its connection index and request number."""
    while (req := conn.next_request()) is not None:
        doc = {"conn": conn.index, "n": conn.requests, "path": req.request.target.decode()}
        conn.respond(200, [("Content-Type", "application/json")], json.dumps(doc).encode())


def configure(redis_db: RedisServer, edge: EdgeProcess, target_url: str, **fields: object) -> None:
    redis_db.client().set(f"proxy:{HOST}", proxy_doc(HOST, target_url, **fields))
    edge.wait_generation(lambda h: h["proxies"] >= 1)


def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers={"Host": HOST})
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            c.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []

    def make(
        serve: Callable[[UpConn], None], tls: ssl.SSLContext | None = None
    ) -> ScriptedUpstream:
        up = ScriptedUpstream(serve, tls=tls)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


# ---------------------------------------------------------------------------- reuse


def test_sequential_requests_share_one_upstream_connection(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    configure(redis_db, edge, upstream.url)
    client = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
    for i in range(20):
        status, body = request(edge.http_port, path=f"/a{i}", conn=client)
        assert status == 200
        assert json.loads(body)["path"] == f"/a{i}"
    client.close()
    # new client connections, one after the other, still use the pooled connection
    for i in range(5):
        status, _ = request(edge.http_port, path=f"/b{i}")
        assert status == 200
    assert len(upstream.requests) == 25
    assert upstream.connections == 1


def test_stale_pooled_connection_get_is_retried_once(
    edge: EdgeProcess, redis_db: RedisServer, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """The first connection answers one request, then reads the next and closes silently."""

    def serve(conn: UpConn) -> None:
        if conn.index == 0:
            assert conn.next_request() is not None
            conn.respond(200, body=b"first")  # keep-alive: no Connection: close
            assert conn.next_request() is not None
            conn.sock.close()  # FIN, no answer
            return
        keepalive_json(conn)

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    assert request(edge.http_port, path="/one") == (200, b"first")
    status, body = request(edge.http_port, path="/two")
    assert status == 200, body
    doc = json.loads(body)
    assert doc == {"conn": 1, "n": 1, "path": "/two"}
    assert up.connections == 2
    assert up.conns[0].requests == 2  # the retried request did reach the stale connection
    # the connection used for the retry went back to the pool like any other
    status, body = request(edge.http_port, path="/three")
    assert status == 200
    assert json.loads(body) == {"conn": 1, "n": 2, "path": "/three"}
    assert up.connections == 2
    assert not up.errors


def test_stale_pooled_connection_reset_get_is_retried(
    edge: EdgeProcess, redis_db: RedisServer, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """Same, but the stale connection is reset (RST) instead of closed."""

    def serve(conn: UpConn) -> None:
        if conn.index == 0:
            assert conn.next_request() is not None
            conn.respond(200, body=b"first")
            assert conn.next_request() is not None
            conn.reset()
            return
        keepalive_json(conn)

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    assert request(edge.http_port) == (200, b"first")
    status, body = request(edge.http_port, path="/again")
    assert status == 200, body
    assert json.loads(body)["conn"] == 1
    assert up.connections == 2


def test_stale_pooled_connection_post_is_not_retried(
    edge: EdgeProcess, redis_db: RedisServer, scripted: Callable[..., ScriptedUpstream]
) -> None:
    def serve(conn: UpConn) -> None:
        if conn.index == 0:
            assert conn.next_request() is not None
            conn.respond(200, body=b"first")
            got = conn.next_request()
            assert got is not None and got.body == b"payload"
            conn.sock.close()
            return
        keepalive_json(conn)

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    assert request(edge.http_port) == (200, b"first")
    status, body = request(edge.http_port, "POST", "/submit", body=b"payload")
    assert status == 502
    assert json.loads(body)["error"]["message"] == "bad gateway: upstream closed the connection"
    assert up.connections == 1  # never sent a second time
    assert up.conns[0].requests == 2


def test_close_noticed_while_idle_post_uses_new_connection(
    edge: EdgeProcess, redis_db: RedisServer, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """Upstream closes 50 ms after answering; the POST comes later: no stale reuse, no 502."""

    def serve(conn: UpConn) -> None:
        req = conn.next_request()
        assert req is not None
        conn.respond(200, body=f"conn{conn.index}".encode())
        time.sleep(0.05)
        conn.sock.close()

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    assert request(edge.http_port) == (200, b"conn0")
    wait_for(lambda: up.conns[0].closed_at is not None)
    time.sleep(0.2)  # the scenario itself: the next request comes 200 ms later
    assert request(edge.http_port, "POST", "/submit", body=b"payload") == (200, b"conn1")
    assert up.connections == 2
    assert up.conns[0].requests == 1


# ---------------------------------------------------------------------------- idle handling


def test_idle_timeout_closes_upstream_connection(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    event_loop_name: str,
) -> None:
    edge = edge_factory(EDGE_LOOP=event_loop_name, UPSTREAM_IDLE_TIMEOUT=1)
    up = scripted(keepalive_json)
    configure(redis_db, edge, up.url)
    assert request(edge.http_port)[0] == 200
    answered = time.monotonic()
    wait_for(lambda: up.conns[0].closed_at is not None, timeout=5)
    closed_at = up.conns[0].closed_at
    assert closed_at is not None
    idle = closed_at - answered
    assert 0.7 <= idle <= 3.0, idle
    # the next request opens a fresh connection
    status, body = request(edge.http_port)
    assert status == 200 and json.loads(body)["conn"] == 1


def test_idle_limit_keeps_at_most_two_connections(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    event_loop_name: str,
) -> None:
    concurrent = 5
    barrier = threading.Barrier(concurrent, timeout=10)

    def serve(conn: UpConn) -> None:
        while (req := conn.next_request()) is not None:
            if req.request.target.startswith(b"/hold"):
                barrier.wait()  # every request is in flight at once: 5 connections
            conn.respond(200, body=f"conn{conn.index}".encode())

    edge = edge_factory(EDGE_LOOP=event_loop_name, UPSTREAM_IDLE_LIMIT=2)
    up = scripted(serve)
    configure(redis_db, edge, up.url)
    with ThreadPoolExecutor(concurrent) as pool:
        results = list(pool.map(lambda i: request(edge.http_port, path=f"/hold{i}"), range(5)))
    assert [s for s, _ in results] == [200] * concurrent
    assert up.connections == concurrent
    wait_for(lambda: up.open_count == 2, timeout=5)
    # the two kept are reused: no new connection for sequential requests
    kept = {f"conn{c.index}".encode() for c in up.conns if c.closed_at is None}
    for _ in range(3):
        status, body = request(edge.http_port)
        assert status == 200
        assert body in kept
    assert up.connections == concurrent
    assert up.open_count == 2
    assert not up.errors


def test_close_noticed_after_response_to_slow_client(
    edge: EdgeProcess, redis_db: RedisServer, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """A connection pooled while the client was still behind must still watch for a close.

    A slow client makes the edge pause reading the upstream. When the read that ends the
    response is also the one that fills the client's buffer, the connection goes back to
    the pool in that state; the upstream closes it 50 ms later, and a POST 200 ms after
    that must get a new connection, not the closed one (which would be a 502). Whether
    the last read is that one depends on kernel buffer sizes, so the round is repeated.
    """
    size = 4 << 20

    def serve(conn: UpConn) -> None:
        while (req := conn.next_request()) is not None:
            if req.request.method == b"GET":
                conn.respond(200, body=b"z" * size)
                time.sleep(0.05)
                conn.sock.close()
                return
            conn.respond(200, body=b"posted")

    up = scripted(serve)
    configure(redis_db, edge, up.url)
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as s:
            s.sendall(f"GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            body = len(data.partition(b"\r\n\r\n")[2])
            while body < size:  # a slow reader: at most 16 KiB per millisecond
                chunk = s.recv(16384)
                assert chunk
                body += len(chunk)
                threading.Event().wait(0.001)
        wait_for(lambda: all(c.closed_at is not None for c in up.conns if c.requests))
        time.sleep(0.2)  # the scenario: the next request comes well after the close
        assert request(edge.http_port, "POST", "/submit", body=b"payload") == (200, b"posted")
    assert not up.errors
