"""Subrequests driven in-process: a pooled ``UpstreamConnection`` over a fake transport,
a real h11 server at the other end.

On a pooled connection the whole call happens inside callbacks: the request is written
when the call starts and the answer is delivered inside ``data_received``, no task made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h11
import pytest

from edge.errors import (
    EdgeError,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamResponseTimeout,
    UpstreamResponseTooLarge,
)
from edge.routing.target import parse_target
from edge.upstream.connection import UpstreamConnection
from edge.upstream.pool import UpstreamPool
from edge.upstream.subrequest import Answer, Outcome, Subrequests
from tests.component.harness import FakeTransport, H11Peer, LoopClock

TARGET = parse_target("http://auth.test:9000")
LIMIT = 64


@pytest.fixture
async def client() -> AsyncIterator[Subrequests]:
    pool = UpstreamPool(
        asyncio.get_running_loop(), idle_limit=4, idle_timeout=30.0, connect_timeout=1.0
    )
    yield Subrequests(pool)
    pool.close_all()


def pooled(client: Subrequests) -> tuple[UpstreamConnection, FakeTransport, H11Peer]:
    """An idle keep-alive connection to TARGET, waiting in the pool."""
    conn = UpstreamConnection(client.pool, TARGET.origin)
    transport = FakeTransport()
    conn.connection_made(transport)
    client.pool.checkin(conn)
    return conn, transport, H11Peer(h11.SERVER, transport)


class Outcomes(list[Outcome]):
    """The ``done`` callback: keeps what it is given."""

    def __call__(self, outcome: Outcome) -> None:
        self.append(outcome)


def start(
    client: Subrequests,
    method: bytes = b"GET",
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    time_limit: float = 5.0,
) -> Outcomes:
    done = Outcomes()
    client.start(
        TARGET, method, b"/verify?x=1", headers, body, time_limit=time_limit, max_body=LIMIT,
        done=done,
    )  # fmt: skip
    return done


async def test_the_request_goes_out_and_the_answer_comes_back_inside_the_read(
    client: Subrequests,
) -> None:
    conn, _, peer = pooled(client)
    headers = ((b"X-Forwarded-Uri", b"/private"), (b"Content-Length", b"999"))
    done = start(client, b"POST", b"payload", headers)
    request, data, end = peer.receive()  # written at once, from the pool
    assert isinstance(request, h11.Request) and request.method == b"POST"
    assert request.target == b"/verify?x=1"
    assert list(request.headers) == [
        (b"host", b"auth.test:9000"),  # the origin's, unless the caller sets one
        (b"x-forwarded-uri", b"/private"),
        (b"content-length", b"7"),  # framed by the subrequest, not the caller
    ]
    assert isinstance(data, h11.Data) and data.data == b"payload"
    assert isinstance(end, h11.EndOfMessage)
    assert done == []
    conn.data_received(peer.respond(401, [(b"WWW-Authenticate", b"Bearer")], b"no"))
    [answer] = done  # inside data_received: no task, no loop pass
    assert isinstance(answer, Answer)
    assert (answer.status, answer.body, answer.header(b"www-authenticate")) == (
        401,
        b"no",
        b"Bearer",
    )
    assert not client.tasks
    assert client.pool.checkout(TARGET.origin) is conn  # read to the end: pooled again


async def test_a_pooled_connection_carries_the_next_subrequest(client: Subrequests) -> None:
    conn, transport, peer = pooled(client)
    for n in range(3):
        done = start(client)
        peer.receive()
        conn.data_received(peer.respond(200, body=b"%d" % n))
        assert [a.body for a in done if isinstance(a, Answer)] == [b"%d" % n]
    assert conn.requests == 3 and not transport.is_closing()


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_over_the_limit_fails_and_never_returns_to_the_pool(
    client: Subrequests, announced: bool
) -> None:
    conn, transport, peer = pooled(client)
    done = start(client)
    peer.receive()
    if announced:
        # refused on its head: not a byte of the body is waited for
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
        conn.data_received(head)
    else:
        conn.data_received(peer.send(h11.Response(status_code=200, headers=[])))
        conn.data_received(peer.send(h11.Data(data=b"x" * LIMIT)))
        assert done == []  # exactly the limit is still fine
        conn.data_received(peer.send(h11.Data(data=b"x")))
    [error] = done
    assert isinstance(error, UpstreamResponseTooLarge) and error.status == 502
    assert transport.aborted
    assert client.pool.checkout(TARGET.origin) is None


async def test_an_answer_of_exactly_the_limit_is_read(client: Subrequests) -> None:
    conn, _, peer = pooled(client)
    done = start(client)
    peer.receive()
    conn.data_received(peer.respond(200, body=b"y" * LIMIT))
    assert [a.body for a in done if isinstance(a, Answer)] == [b"y" * LIMIT]


async def test_a_head_answer_announcing_a_large_body_is_not_over_the_limit(
    client: Subrequests,
) -> None:
    conn, transport, peer = pooled(client)
    done = start(client, b"HEAD")
    peer.receive()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    [answer] = done
    assert isinstance(answer, Answer) and answer.body == b""
    # but a body may follow that announcement: the connection is not pooled again
    assert transport.closed and client.pool.checkout(TARGET.origin) is None


async def test_bytes_past_the_answer_are_never_handed_to_the_next_subrequest(
    client: Subrequests,
) -> None:
    conn, transport, peer = pooled(client)
    done = start(client)
    peer.receive()
    conn.data_received(peer.respond(200, body=b"mine") + peer.respond(200, body=b"other"))
    assert [a.body for a in done if isinstance(a, Answer)] == [b"mine"]
    assert transport.aborted and client.pool.extra_bytes_closed == 1
    assert client.pool.checkout(TARGET.origin) is None


async def test_the_deadline_covers_the_whole_answer(client: Subrequests) -> None:
    with LoopClock() as clock:
        conn, transport, peer = pooled(client)
        done = start(client, time_limit=2.0)
        peer.receive()
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await clock.advance(1.5)
        conn.data_received(b"5")  # bytes keep coming, but too slowly: not an idle wait
        assert done == []
        await clock.advance(0.6)
        [error] = done
        assert isinstance(error, UpstreamResponseTimeout) and error.status == 504
        assert transport.aborted and client.pool.checkout(TARGET.origin) is None


HALF = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf"


@pytest.mark.parametrize(
    ("sent", "error"),
    [(b"", UpstreamClosed), (HALF, UpstreamProtocolError)],
    ids=["before-the-answer", "in-the-body"],
)
async def test_a_close_fails_a_non_idempotent_subrequest(
    client: Subrequests, sent: bytes, error: type[EdgeError]
) -> None:
    conn, _, peer = pooled(client)
    start(client)
    peer.receive()
    conn.data_received(peer.respond(200))  # used once: the next close may be a stale one
    done = start(client, b"POST", b"once only")
    peer.receive()
    if sent:
        conn.data_received(sent)
    conn.eof_received()
    conn.connection_lost(None)
    assert [type(e) for e in done] == [error]
    assert not client.tasks  # a POST is not sent twice
    assert client.pool.checkout(TARGET.origin) is None


async def test_a_cancelled_subrequest_aborts_its_connection(client: Subrequests) -> None:
    conn, transport, peer = pooled(client)
    done = Outcomes()
    call = client.start(TARGET, b"GET", b"/", time_limit=5.0, max_body=LIMIT, done=done)
    peer.receive()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    call.cancel()
    assert transport.aborted and conn.user is None
    assert done == [] and client.pool.checkout(TARGET.origin) is None


async def test_fetch_awaits_the_same_call(client: Subrequests) -> None:
    conn, _, peer = pooled(client)
    fetch = asyncio.ensure_future(
        client.fetch(TARGET, b"GET", b"/", time_limit=5.0, max_body=LIMIT)
    )
    await asyncio.sleep(0)
    peer.receive()
    conn.data_received(peer.respond(204))
    answer = await fetch
    assert answer.status == 204

    fetch = asyncio.ensure_future(
        client.fetch(TARGET, b"GET", b"/", time_limit=5.0, max_body=LIMIT)
    )
    await asyncio.sleep(0)
    peer.receive()
    fetch.cancel()  # the caller goes away: the connection is not left half read
    with pytest.raises(asyncio.CancelledError):
        await fetch
    assert conn.transport is not None and conn.transport.is_closing()


async def test_an_invalid_request_is_refused_before_the_pool_is_touched(
    client: Subrequests,
) -> None:
    conn, transport, _ = pooled(client)
    with pytest.raises(EdgeError, match="invalid subrequest") as info:
        start(client, headers=((b"X-Bad", b"a\r\nInjected: 1"),))
    assert info.value.status == 500
    assert transport.written == b"" and client.pool.checkout(TARGET.origin) is conn
