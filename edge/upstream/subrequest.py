"""Subrequests: one request of the edge's own to an origin, its whole answer in memory.

ForwardAuth's external mode asks an auth service about each request (Traefik's
``forwardAuth``: a GET to the auth address carrying X-Forwarded-*; a 2xx lets the request
through, any other answer goes to the client as it is). This is the call it makes: a
request out on the same keep-alive pool and the same ``UpstreamConnection`` that forwarding
uses, and back a status, headers and a body of at most ``max_body`` bytes.

The rules are forwarding's:

* a pooled connection is taken when there is one; a pooled connection found closed before
  any byte of its answer is retried once, on a fresh connection, for idempotent methods;
* a connection goes back to the pool only from ``UpstreamConnection._release``: the answer
  was read to its end, both sides keep the connection alive, and no byte came past the end
  of the answer (a HEAD, 204 or 304 announcing a body, or bytes after Content-Length, close
  it instead), so no later caller ever reads this answer's leftovers;
* an answer too large, a deadline missed, a protocol error or a close aborts the
  connection; it never returns to the pool.

One deadline, ``time_limit`` seconds from the start, covers the whole call (connect,
request, answer), like the HTTP client's timeout in Traefik's: the connect gives up at it
(``UpstreamConnectTimeout``) and after that the connection's own timer holds it
(``UpstreamResponseTimeout``), not a timer per call.
``SubrequestCall`` is driven by callbacks like ``ProxyCall``: on a pooled connection the
answer is delivered inside the upstream's ``data_received``, and a task is made only to open
a new connection. ``Subrequests.fetch`` is the awaitable form of the same call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import h11

from edge.errors import (
    EdgeError,
    UpstreamError,
    UpstreamResponseTimeout,
    UpstreamResponseTooLarge,
)
from edge.h11compat import END_OF_MESSAGE
from edge.routing.target import Target
from edge.upstream.connection import UpstreamConnection, failure_error, retry_on_fresh
from edge.upstream.pool import UpstreamPool

# the subrequest frames its own body (RFC 9112 §6); a caller's framing fields are dropped
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# RFC 9112 §6.3: no body follows these whatever Content-Length says
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Answer:
    """An origin's final answer to a subrequest, read to its end."""

    status: int
    reason: bytes
    headers: Sequence[tuple[bytes, bytes]]  # h11's: lowercased names, in order
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of the field ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return bytes(value)
        return None


Outcome = Answer | EdgeError
Done = Callable[[Outcome], None]


def build_request(
    target: Target, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> h11.Request:
    """The request as h11 will send it: the caller's fields (validated by h11), Host from
    the target unless given, and a Content-Length for a body."""
    fields = [(name, value) for name, value in headers if name.lower() not in _FRAMING]
    if not any(name.lower() == b"host" for name, _ in fields):
        fields.append((b"Host", target.authority))
    if body or method in (b"POST", b"PUT", b"PATCH"):
        fields.append((b"Content-Length", str(len(body)).encode("ascii")))
    try:
        return h11.Request(method=method, target=path, headers=fields)
    except h11.LocalProtocolError as exc:
        # the caller built an invalid request: the edge's fault, not the client's
        raise EdgeError(f"invalid subrequest: {exc}") from None


class Subrequests:
    """A worker's subrequest client: the pool it shares with forwarding, and the tasks it
    starts to open connections (tracked, like the forwarder's)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        target: Target,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        time_limit: float,
        max_body: int,
        done: Done,
    ) -> SubrequestCall:
        """Send the request; ``done`` gets the ``Answer`` or the ``EdgeError`` exactly once
        (possibly before this returns), unless the call is cancelled first."""
        request = build_request(target, method, path, headers, body)
        call = SubrequestCall(self, target, request, body, time_limit, max_body, done)
        call.start()
        return call

    async def fetch(
        self,
        target: Target,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        time_limit: float,
        max_body: int,
    ) -> Answer:
        """``start`` as a coroutine: the answer, or the ``EdgeError`` raised. Cancelling the
        caller aborts the connection the call holds."""
        future: asyncio.Future[Outcome] = self.loop.create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        call = self.start(
            target, method, path, headers, body, time_limit=time_limit, max_body=max_body, done=done
        )
        try:
            outcome = await future
        except asyncio.CancelledError:
            call.cancel()
            raise
        if isinstance(outcome, EdgeError):
            raise outcome
        return outcome

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class SubrequestCall:
    """One subrequest on one upstream connection (at most one retry on a stale one); the
    ``UpstreamUser`` of that connection while it carries the request."""

    __slots__ = (
        "_chunks",
        "_done",
        "_response",
        "_size",
        "body",
        "client",
        "conn",
        "deadline",
        "max_body",
        "request",
        "target",
    )

    def __init__(
        self,
        client: Subrequests,
        target: Target,
        request: h11.Request,
        body: bytes,
        time_limit: float,
        max_body: int,
        done: Done,
    ) -> None:
        self.client = client
        self.target = target
        self.request = request
        self.body = body
        self.deadline = client.loop.time() + time_limit
        self.max_body = max_body
        self.conn: UpstreamConnection | None = None
        self._done: Done | None = done
        self._response: h11.Response | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    def start(self) -> None:
        conn = self.client.pool.checkout(self.target.origin)
        if conn is not None:
            self._attach(conn)
        else:
            self.client.spawn(self._connect())

    def cancel(self) -> None:
        """The caller lost interest: ``done`` is never called, the connection is aborted
        (an answer half read must not go back to the pool)."""
        self._done = None
        self._drop()

    async def _connect(self) -> None:
        try:
            conn = await self.client.pool.connect(self.target, until=self.deadline)
        except EdgeError as exc:
            self._finish(exc)
            return
        if self._done is None:
            self.client.pool.checkin(conn)  # cancelled meanwhile: an unused connection
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        remaining = self.deadline - self.client.loop.time()
        if remaining <= 0:
            self.client.pool.checkin(conn)
            self._finish(UpstreamResponseTimeout("subrequest deadline passed before sending"))
            return
        self.conn = conn
        self._response = None
        self._chunks = []
        self._size = 0
        conn.bind(self, self.request.method == b"HEAD")
        # never touched: a deadline for the whole answer, not an idle one
        conn.expect_response(remaining)
        try:
            conn.send(self.request)
            if self.body:
                conn.send(h11.Data(data=self.body))
            conn.send(END_OF_MESSAGE)
        except h11.LocalProtocolError as exc:
            self._fail(UpstreamError(str(exc)))

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn.user is self:
            conn.clear_deadline()
            conn.abort()

    def _fail(self, error: EdgeError) -> None:
        self._drop()
        self._finish(error)

    def _finish(self, outcome: Outcome) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(outcome)

    # ------------------------------------------------------------------ UpstreamUser
    def on_informational(self, response: h11.InformationalResponse) -> None:
        pass  # 100 Continue and friends: the final answer follows

    def on_response(self, response: h11.Response) -> None:
        self._response = response
        if self.request.method == b"HEAD" or response.status_code in _NO_BODY_STATUS:
            return
        for name, value in response.headers:
            # h11 has checked the value is digits; no need to read a body known too large
            if name == b"content-length" and int(value) > self.max_body:
                self._fail(UpstreamResponseTooLarge(f"announced {int(value)} bytes"))
                return

    def on_data(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_body:
            self._fail(UpstreamResponseTooLarge(f"more than {self.max_body} bytes"))
            return
        self._chunks.append(data)

    def on_end(self) -> None:
        response = self._response
        self.conn = None  # the connection decides about the pool itself, after this
        assert response is not None  # h11 ends no message before its head
        self._finish(
            Answer(response.status_code, response.reason, response.headers, b"".join(self._chunks))
        )

    def on_failure(self, exc: Exception | None, protocol_error: bool) -> None:
        conn, self.conn = self.conn, None
        if self._done is None:
            return
        if retry_on_fresh(conn, protocol_error, self.request.method):
            # a pooled connection the origin had already closed: once more, fresh
            self.client.spawn(self._connect())
            return
        self._finish(failure_error(exc, protocol_error))

    def on_response_timeout(self) -> None:
        self.conn = None  # aborted by the connection itself
        self._finish(UpstreamResponseTimeout("subrequest answer timed out"))

    def upstream_writable(self, writable: bool) -> None:
        pass  # the request is written whole; the transport buffers it

    def on_batch_end(self) -> None:
        pass
