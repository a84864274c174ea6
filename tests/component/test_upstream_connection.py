"""``UpstreamConnection`` driven in-process: a real h11 server at the other end of a fake
transport, the connection's user a recorder standing where forwarding or a subrequest
stands.

What is checked is what keeps one client from ever reading another's answer: a connection
goes back to the pool only when its answer was read to the end and both sides keep it
alive; bytes past the end of an answer, in the same read or a later one, close it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h11
import pytest

from edge.routing.target import parse_target
from edge.upstream.connection import UpstreamConnection
from edge.upstream.pool import UpstreamPool
from tests.component.harness import FakeTransport, H11Peer, LoopClock

KEY = ("http", "127.0.0.1", 8080)
TARGET = parse_target("http://127.0.0.1:8080")
GET = h11.Request(method="GET", target="/x", headers=[("Host", "127.0.0.1:8080")])
HEAD = h11.Request(method="HEAD", target="/x", headers=[("Host", "127.0.0.1:8080")])
END = h11.EndOfMessage()


class Recorder:
    """An ``UpstreamUser`` that keeps what the connection reports, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.body = bytearray()

    def on_response(self, response: h11.Response) -> None:
        self.events.append(("response", response.status_code))

    def on_informational(self, response: h11.InformationalResponse) -> None:
        self.events.append(("informational", response.status_code))

    def on_data(self, data: bytes) -> None:
        self.body += data

    def on_end(self) -> None:
        self.events.append(("end", bytes(self.body)))

    def on_failure(self, exc: Exception | None, protocol_error: bool) -> None:
        self.events.append(("failure", protocol_error))

    def upstream_writable(self, writable: bool) -> None:
        self.events.append(("writable", writable))

    def on_response_timeout(self) -> None:
        self.events.append(("timeout", None))

    def on_batch_end(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(
        asyncio.get_running_loop(), idle_limit=4, idle_timeout=30.0, connect_timeout=1.0
    )
    yield pool
    pool.close_all()


def connected(pool: UpstreamPool) -> tuple[UpstreamConnection, FakeTransport, H11Peer]:
    conn = UpstreamConnection(pool, KEY)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport, H11Peer(h11.SERVER, transport)


def request(
    conn: UpstreamConnection, peer: H11Peer, event: h11.Request = GET
) -> tuple[Recorder, list[h11.Event]]:
    """Send ``event`` (no body) as a user would; the events the server parsed."""
    user = Recorder()
    conn.bind(user, event.method == b"HEAD")
    conn.send(event)
    conn.send(END)
    return user, peer.receive()


async def test_the_answer_is_parsed_and_the_connection_goes_back_to_the_pool(
    pool: UpstreamPool,
) -> None:
    conn, transport, peer = connected(pool)
    user, received = request(conn, peer)
    assert [type(e) for e in received] == [h11.Request, h11.EndOfMessage]
    assert received[0].target == b"/x"  # type: ignore[attr-defined]
    answer = peer.respond(200, [(b"X-A", b"1")], b"hello")
    for i in range(len(answer)):  # one byte at a time: parsing holds across reads
        conn.data_received(answer[i : i + 1])
    assert user.events == [("response", 200), ("end", b"hello")]
    assert pool.checkout(KEY) is conn
    # and it carries the next request on the same transport
    user, received = request(conn, peer)
    assert [type(e) for e in received] == [h11.Request, h11.EndOfMessage]
    conn.data_received(peer.respond(204))
    assert user.events == [("response", 204), ("end", b"")]
    assert conn.requests == 2 and not transport.is_closing()


@pytest.mark.parametrize(
    "headers",
    [[(b"Connection", b"close")], [(b"Connection", b"keep-alive, close")]],
)
async def test_an_answer_that_closes_the_connection_is_not_reused(
    pool: UpstreamPool, headers: list[tuple[bytes, bytes]]
) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer)
    conn.data_received(peer.respond(200, headers, b"bye"))
    assert user.events == [("response", 200), ("end", b"bye")]
    assert transport.closed
    assert pool.checkout(KEY) is None


async def test_an_answer_read_until_close_is_not_reused(pool: UpstreamPool) -> None:
    conn, transport, _ = connected(pool)
    user, _ = request(conn, H11Peer(h11.SERVER, transport))
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert user.kinds() == ["response"]
    conn.eof_received()
    assert user.events == [("response", 200), ("end", b"until the end")]
    assert transport.closed and pool.checkout(KEY) is None


async def test_a_close_before_any_byte_is_a_plain_failure(pool: UpstreamPool) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer)
    conn.eof_received()
    # not a protocol error: forwarding and subrequests may retry a stale pooled connection
    assert user.events == [("failure", False)]
    assert transport.closed and conn.user is None


async def test_a_close_in_the_middle_of_the_body_is_a_protocol_error(pool: UpstreamPool) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer)
    conn.data_received(peer.respond(200, body=b"0123456789")[:-4])
    conn.eof_received()
    assert user.kinds() == ["response", "failure"]
    assert user.events[-1] == ("failure", True)
    assert transport.aborted and pool.checkout(KEY) is None


async def test_a_malformed_answer_is_a_protocol_error(pool: UpstreamPool) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    assert user.events == [("failure", True)]
    assert transport.aborted


@pytest.mark.parametrize("split", [False, True], ids=["same-read", "next-read"])
async def test_bytes_past_the_end_of_an_answer_close_the_connection(
    pool: UpstreamPool, split: bool
) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer)
    answer = peer.respond(200, body=b"ok")
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
    if split:
        conn.data_received(answer)
        assert pool.checkout(KEY) is conn  # complete and clean so far: pooled
        pool.checkin(conn)
        conn.data_received(smuggled)  # an idle connection must stay silent
        assert transport.closed
    else:
        conn.data_received(answer + smuggled)
        assert transport.aborted
        assert pool.extra_bytes_closed == 1
    assert user.events == [("response", 200), ("end", b"ok")]
    assert pool.checkout(KEY) is None


@pytest.mark.parametrize(
    ("event", "head"),
    [
        (HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"),
        (GET, b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["HEAD", "304"],
)
async def test_a_bodiless_answer_announcing_a_body_is_not_reused(
    pool: UpstreamPool, event: h11.Request, head: bytes
) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer, event)
    conn.data_received(head)  # the body it announces may follow later: never pool it
    assert user.kinds() == ["response", "end"]
    assert transport.closed and pool.checkout(KEY) is None


async def test_a_bodiless_answer_announcing_nothing_is_reused(pool: UpstreamPool) -> None:
    conn, _, peer = connected(pool)
    user, _ = request(conn, peer, HEAD)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert user.kinds() == ["response", "end"]
    assert pool.checkout(KEY) is conn


async def test_the_response_deadline_aborts_and_the_idle_one_closes(pool: UpstreamPool) -> None:
    with LoopClock() as clock:
        conn, transport, peer = connected(pool)
        user, _ = request(conn, peer)
        conn.expect_response(5.0)
        await clock.advance(3.0)
        conn.data_received(b"HTTP/1.1 200 OK\r\n")  # a byte moves an idle deadline ...
        conn.touch(5.0)
        await clock.advance(3.0)
        assert user.events == [] and not transport.is_closing()
        await clock.advance(2.5)  # ... and its absence trips it
        assert user.events == [("timeout", None)]
        assert transport.aborted and conn.user is None

        conn, transport, peer = connected(pool)
        request(conn, peer)[0]
        conn.data_received(peer.respond(200))
        assert pool.checkout(KEY) is conn
        pool.checkin(conn)  # idle: UPSTREAM_IDLE_TIMEOUT (30 s) runs
        await clock.advance(29.0)
        assert not transport.is_closing()
        await clock.advance(1.5)
        assert transport.closed and pool.checkout(KEY) is None


async def test_write_backpressure_and_a_slow_client_reach_the_user(pool: UpstreamPool) -> None:
    conn, transport, peer = connected(pool)
    user, _ = request(conn, peer)
    conn.pause_writing()
    conn.resume_writing()
    assert user.events == [("writable", False), ("writable", True)]
    conn.pause_producing()  # the client reads slowly: stop reading the upstream
    assert not transport.reading
    conn.data_received(peer.respond(200, body=b"x"))
    # pooled while paused, it must read again to notice a close
    assert transport.reading and pool.checkout(KEY) is conn
