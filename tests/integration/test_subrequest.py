"""Subrequests against real upstreams on loopback, under uvloop and the default asyncio loop.

The upstream is ``ScriptedUpstream``: every accepted socket is served in its own thread by
the test's function, so each test decides when it answers, how much, or when it closes, and
counts the connections it accepted (keep-alive reuse is one accept for several calls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from edge.errors import (
    EdgeError,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponseTimeout,
    UpstreamResponseTooLarge,
)
from edge.routing.target import Target, parse_target
from edge.upstream.pool import UpstreamPool
from edge.upstream.subrequest import Answer, Subrequests
from tests.helpers import free_port, wait_for
from tests.integration.test_upstream_pool import ScriptedUpstream, UpConn

T = TypeVar("T")
LIMIT = 1000
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[Subrequests], Awaitable[T]]], T]:
    """``run(body)``: ``body(client)`` on a fresh loop of the parametrised kind, with a
    fresh pool; the test fails if the loop's exception handler was called."""
    factory = LOOPS[request.param]

    def runner(body: Callable[[Subrequests], Awaitable[T]]) -> T:
        errors: list[dict[str, Any]] = []

        async def main() -> T:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))
            pool = UpstreamPool(loop, idle_limit=8, idle_timeout=30.0, connect_timeout=2.0)
            client = Subrequests(pool)
            try:
                return await body(client)
            finally:
                pool.close_all()
                await asyncio.sleep(0.01)  # let the closes run

        with asyncio.Runner(loop_factory=factory) as r:
            result = r.run(main())
        assert not errors, errors
        return result

    return runner


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[UpConn], None]], ScriptedUpstream]]:
    started: list[ScriptedUpstream] = []

    def start(serve: Callable[[UpConn], None]) -> ScriptedUpstream:
        started.append(ScriptedUpstream(serve))
        return started[-1]

    yield start
    for upstream in started:
        upstream.close()
        assert not upstream.errors, upstream.errors


def answer_each(status: int = 200, body: bytes = b"ok") -> Callable[[UpConn], None]:
    """Answer every request on the connection, keep-alive."""

    def serve(conn: UpConn) -> None:
        while conn.next_request() is not None:
            conn.respond(status, [("X-Conn", str(conn.index))], body)

    return serve


async def get(client: Subrequests, target: Target, path: bytes = b"/auth", **kw: Any) -> Answer:
    kw.setdefault("time_limit", 5.0)
    kw.setdefault("max_body", LIMIT)
    method = kw.pop("method", b"GET")
    headers = kw.pop("headers", ())
    return await client.fetch(target, method, path, headers, **kw)


async def outcome(
    client: Subrequests, target: Target, path: bytes = b"/auth", **kw: Any
) -> Answer | EdgeError:
    """``get``, with its error returned instead of raised."""
    try:
        return await get(client, target, path, **kw)
    except EdgeError as exc:
        return exc


def test_the_answer_comes_back_whatever_its_status(scripted: Any, run: Any) -> None:
    seen: list[dict[str, str]] = []

    def serve(conn: UpConn) -> None:
        while (req := conn.next_request()) is not None:
            seen.append({k.decode(): v.decode() for k, v in req.request.headers})
            conn.respond(401, [("WWW-Authenticate", 'Bearer realm="x"')], b"denied")

    upstream = scripted(serve)
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> Answer:
        forwarded = ((b"X-Forwarded-Method", b"POST"), (b"X-Forwarded-Uri", b"/private?a=1"))
        return await get(client, target, headers=forwarded)

    answer = run(body)
    # a refusal is an answer like any other: the caller (ForwardAuth) passes it on
    assert (answer.status, answer.body) == (401, b"denied")
    assert answer.header(b"www-authenticate") == b'Bearer realm="x"'
    [headers] = seen
    assert headers["host"] == f"127.0.0.1:{upstream.port}"
    assert headers["x-forwarded-uri"] == "/private?a=1"


def test_sequential_subrequests_reuse_one_connection(scripted: Any, run: Any) -> None:
    upstream = scripted(answer_each())
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> list[bytes | None]:
        out = []
        for _ in range(5):
            answer = await get(client, target)
            out.append(answer.header(b"x-conn"))
        return out

    assert run(body) == [b"0"] * 5
    assert upstream.connections == 1
    assert upstream.conns[0].requests == 5


def test_concurrent_subrequests_each_take_their_own_connection(scripted: Any, run: Any) -> None:
    upstream = scripted(answer_each())
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> int:
        answers = await asyncio.gather(*(get(client, target) for _ in range(3)))
        assert {a.header(b"x-conn") for a in answers} == {b"0", b"1", b"2"}
        await asyncio.gather(*(get(client, target) for _ in range(3)))  # all three pooled
        return len(client.tasks)

    assert run(body) == 0
    assert upstream.connections == 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_answer_over_the_limit_fails_and_its_connection_is_dropped(
    scripted: Any, run: Any, framing: str
) -> None:
    def serve(conn: UpConn) -> None:
        while (req := conn.next_request()) is not None:
            size = int(req.request.target.rsplit(b"/", 1)[1])
            if framing == "chunked":
                conn.respond(200, [("Transfer-Encoding", "chunked")], b"x" * size)
            else:
                conn.respond(200, [], b"x" * size)

    upstream = scripted(serve)
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> Answer | EdgeError:
        assert len((await get(client, target, b"/%d" % LIMIT)).body) == LIMIT
        error = await outcome(client, target, b"/%d" % (LIMIT + 1))
        # the next call cannot get the rest of that body: a new connection
        assert len((await get(client, target, b"/10")).body) == 10
        return error

    error = run(body)
    assert isinstance(error, UpstreamResponseTooLarge) and error.status == 502
    assert upstream.connections == 2
    assert upstream.conns[0].requests == 2
    wait_for(lambda: upstream.conns[0].closed_at is not None)


def test_an_upstream_that_never_answers_trips_the_deadline(scripted: Any, run: Any) -> None:
    def serve(conn: UpConn) -> None:
        conn.next_request()  # and never a word back

    upstream = scripted(serve)
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> tuple[Answer | EdgeError, float]:
        started = time.monotonic()
        return await outcome(client, target, time_limit=0.3), time.monotonic() - started

    error, took = run(body)
    assert isinstance(error, UpstreamResponseTimeout) and error.status == 504
    assert 0.25 < took < 2.0
    wait_for(lambda: upstream.conns[0].closed_at is not None)  # aborted, not pooled


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"", UpstreamClosed),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", UpstreamProtocolError),
    ],
    ids=["before-the-answer", "in-the-body"],
)
def test_an_upstream_closing_early_fails_the_subrequest(
    scripted: Any, run: Any, sent: bytes, error: type[EdgeError]
) -> None:
    def serve(conn: UpConn) -> None:
        conn.next_request()
        if sent:
            conn.send_raw(sent)
        conn.sock.close()

    upstream = scripted(serve)
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> Answer | EdgeError:
        return await outcome(client, target)

    assert type(run(body)) is error
    assert upstream.connections == 1  # a first use is not retried


@pytest.mark.parametrize(("method", "tries"), [(b"GET", 2), (b"POST", 1)])
def test_a_pooled_connection_found_closed_is_retried_once_when_idempotent(
    scripted: Any, run: Any, method: bytes, tries: int
) -> None:
    def serve(conn: UpConn) -> None:
        conn.next_request()
        conn.respond(200, [], b"conn%d" % conn.index)
        if conn.index == 0:
            conn.next_request()  # the keep-alive race: closed instead of answered
            conn.sock.close()

    upstream = scripted(serve)
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> bytes | type[EdgeError]:
        assert (await get(client, target)).body == b"conn0"
        second = await outcome(client, target, method=method)
        return second.body if isinstance(second, Answer) else type(second)

    assert run(body) == (b"conn1" if tries == 2 else UpstreamClosed)
    assert upstream.connections == tries


def test_a_refused_connect_is_a_connect_error(run: Any) -> None:
    target = parse_target(f"http://127.0.0.1:{free_port()}")

    async def body(client: Subrequests) -> Answer | EdgeError:
        return await outcome(client, target)

    error = run(body)
    assert isinstance(error, UpstreamConnectError) and error.status == 502


def test_the_retry_on_a_fresh_connection_is_the_last_try(scripted: Any, run: Any) -> None:
    def serve(conn: UpConn) -> None:
        if conn.index == 0:
            conn.next_request()
            conn.respond(200, [], b"conn0")
        conn.next_request()  # the pooled one, then the fresh one: both close unanswered
        conn.sock.close()

    upstream = scripted(serve)
    target = parse_target(upstream.url)

    async def body(client: Subrequests) -> Answer | EdgeError:
        await get(client, target)
        return await outcome(client, target)

    assert type(run(body)) is UpstreamClosed
    assert upstream.connections == 2
