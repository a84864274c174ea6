"""One upstream socket: an h11 client in an ``asyncio.Protocol`` shell.

The connection serves one ``UpstreamUser`` (forwarding or a subrequest) at a time, then goes back
to its pool if both sides ended the exchange cleanly. After a 101 it becomes a raw byte
pipe to the downstream connection; a WebSocket's frames are followed on the way
(``edge.wsframes``), so that a drain can end it with close 1001 (``going_away``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, cast

import h11

from edge.deadline import LazyTimer
from edge.errors import UpstreamClosed, UpstreamConnectError, UpstreamError, UpstreamProtocolError
from edge.h11compat import ClientConnection
from edge.wsframes import GOING_AWAY, WebSocketTunnel

if TYPE_CHECKING:
    from edge.upstream.pool import UpstreamPool


_NONE, _IDLE, _RESPONSE, _GOING_AWAY = 0, 1, 2, 3  # deadline kinds

# after a WebSocket was told to go away: how long both peers have to answer our Close
# before both sockets close anyway (the drain's own deadline bounds it too)
GOING_AWAY_TIMEOUT = 5.0


# RFC 9112 §6.3: these answers end with their head, whatever their fields say
_NO_BODY_STATUS = frozenset({204, 304})


def _announces_body(response: h11.Response) -> bool:
    """A head that ends its message but announces a body (Content-Length above 0, or
    Transfer-Encoding): legal for HEAD and 304, but from an upstream that then sends the
    body, bytes that arrive after the connection went back to the pool would be read as
    the next client's response. Such a connection is closed, not reused."""
    for name, value in response.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0")):
            return True
    return False


# RFC 9110 §9.2.2: requests that may be sent again when a pooled connection turns out closed
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def retry_on_fresh(conn: UpstreamConnection | None, protocol_error: bool, method: bytes) -> bool:
    """Whether a failure reported to ``on_failure`` may be retried once on a fresh
    connection: a connection reused from the pool closed before any byte of the answer
    (the origin's keep-alive close crossed our request), and the method is idempotent. A
    fresh connection's first use is never retried, so a retry happens once at most."""
    return (
        not protocol_error
        and conn is not None
        and conn.requests > 1
        and not conn.received_any
        and method in IDEMPOTENT
    )


def failure_error(exc: Exception | None, protocol_error: bool) -> UpstreamError:
    """The error an ``on_failure(exc, protocol_error)`` report stands for."""
    if protocol_error:
        return UpstreamProtocolError(str(exc))
    if exc is not None:
        return UpstreamConnectError(str(exc))
    return UpstreamClosed("upstream closed the connection")


class UpstreamUser(Protocol):
    """What a connection reports to while it carries a request."""

    def on_response(self, response: h11.Response) -> None: ...
    def on_informational(self, response: h11.InformationalResponse) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_failure(self, exc: Exception | None, protocol_error: bool) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...
    def on_response_timeout(self) -> None: ...
    def on_batch_end(self) -> None: ...


class RawPipe(Protocol):
    """Downstream end of a switched connection."""

    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_write_eof(self) -> None: ...
    def tunnel_close(self) -> None: ...
    def pause_tunnel(self) -> None: ...
    def resume_tunnel(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_deadline",
        "_deadline_at",
        "_eof_in",
        "_eof_out",
        "_head_request",
        "_reading_paused",
        "_timer",
        "h11",
        "key",
        "pipe",
        "pool",
        "received_any",
        "requests",
        "reusable",
        "transport",
        "user",
        "websocket",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.h11: h11.Connection = ClientConnection()
        self.transport: asyncio.Transport | None = None
        self.user: UpstreamUser | None = None
        self.pipe: RawPipe | None = None
        self.received_any = False
        self.requests = 0
        self.reusable = True  # see _bodiless
        self._head_request = False
        # one lazily moved timer: response deadline while a request is out, idle
        # deadline while pooled (see _set_deadline)
        self._timer = LazyTimer(pool.loop, self._expired)
        self._deadline = _NONE
        self._deadline_at = 0.0
        self._reading_paused = False
        self._eof_in = False  # pipe mode: the upstream sent its FIN
        self._eof_out = False  # pipe mode: we sent ours (the client's)
        self.websocket: WebSocketTunnel | None = None  # pipe mode, for a WebSocket

    # ------------------------------------------------------------------ asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            if self.websocket is not None:
                self._from_upstream(self.pipe, self.websocket, data)
            else:
                self.pipe.tunnel_write(data)
            return
        user = self.user
        if user is None:
            # an idle connection must stay silent; anything else makes it unusable
            self.close()
            return
        self.received_any = True
        self.h11.receive_data(data)
        self._drive(user)

    def eof_received(self) -> bool | None:
        if self.pipe is not None:
            self.pipe.tunnel_write_eof()
            self._eof_in = True
            # both directions ended: close, so that the tunnel is released and logged
            return not self._eof_out
        user = self.user
        if user is not None:
            if not self.received_any:
                # closed before any byte of an answer (typically a stale keep-alive
                # connection): a close, not a malformed response, so it may be retried
                self.user = None
                self.close()
                user.on_failure(None, False)
                return False
            self.h11.receive_data(b"")
            self._drive(user)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._deadline = _NONE
        self._timer.cancel()
        self.pool.forget(self)
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            pipe.tunnel_close()
            return
        user, self.user = self.user, None
        if user is not None:
            user.on_failure(exc, False)

    def pause_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_writable(False)
        elif self.pipe is not None:
            self.pipe.pause_tunnel()

    def resume_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_writable(True)
        elif self.pipe is not None:
            self.pipe.resume_tunnel()

    # ------------------------------------------------------------------ h11 events
    def _drive(self, user: UpstreamUser) -> None:
        conn = self.h11
        while self.user is user:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.user = None
                self.abort()
                user.on_failure(exc, True)
                return
            kind = type(event)
            if kind is h11.Data:
                user.on_data(cast(h11.Data, event).data)
            elif kind is h11.Response:
                response = cast(h11.Response, event)
                if self._head_request or response.status_code in _NO_BODY_STATUS:
                    self.reusable = not _announces_body(response)
                user.on_response(response)
            elif kind is h11.EndOfMessage:
                self._release(user)
                return
            elif kind is h11.InformationalResponse:
                user.on_informational(cast(h11.InformationalResponse, event))
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                user.on_batch_end()
                return
            elif kind is h11.ConnectionClosed:
                self.user = None
                self.close()
                user.on_failure(None, False)
                return

    def _release(self, user: UpstreamUser) -> None:
        """Response complete: hand back to the user, then maybe to the pool."""
        self.user = None
        self._deadline = _NONE
        user.on_end()
        conn = self.h11
        if conn.trailing_data[0]:
            # bytes past the end of the message (a HEAD, 204 or 304 answer with a body, a
            # Content-Length shorter than what was sent, RFC 9112 §6.3): reused, they would
            # be read as the next client's response. Never reuse such a connection.
            self.pool.extra_bytes_closed += 1
            self.abort()
        elif self.reusable and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            if self._reading_paused:
                # paused for a slow client: idle in the pool, it must read to see a close
                self.resume_producing()
            self.pool.checkin(self)
        else:
            self.close()

    # ------------------------------------------------------------------ used by callers
    def bind(self, user: UpstreamUser, head_request: bool = False) -> None:
        self._deadline = _NONE
        self.user = user
        self._head_request = head_request
        self.reusable = True
        self.received_any = False
        self.requests += 1
        if self._reading_paused:
            self.resume_producing()

    def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def switch_to_pipe(self, pipe: RawPipe, websocket: bool = False) -> bytes:
        """After a 101: raw bytes from now on. Returns bytes already read past the head
        (the caller sends them to the client). ``websocket``: the 101 switched to
        WebSocket, whose frames are followed from here on (see ``going_away``)."""
        self.user = None
        self.pipe = pipe
        self._deadline = _NONE  # a tunnel lives as long as both ends want it
        leftover, _ = self.h11.trailing_data
        if websocket:
            self.websocket = WebSocketTunnel()
            self.websocket.from_upstream(leftover)  # not closing yet: followed, unchanged
        return leftover

    def pipe_write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def pipe_write_eof(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self._eof_out = True
        if self._eof_in or not transport.can_write_eof():
            # nothing more can flow either way (or TLS, which cannot half-close)
            transport.close()
        else:
            transport.write_eof()

    @property
    def usable(self) -> bool:
        t = self.transport
        return t is not None and not t.is_closing()

    # Deadlines, on one LazyTimer: the response deadline while a request is out, the
    # idle deadline while pooled.
    def arm_idle(self, seconds: float) -> None:
        self._set_deadline(_IDLE, seconds)

    def expect_response(self, seconds: float) -> None:
        """The request is out: the user's ``on_response_timeout`` fires after ``seconds``
        without a byte from the upstream (``touch`` restarts the wait)."""
        self._set_deadline(_RESPONSE, seconds)

    def clear_deadline(self) -> None:
        self._deadline = _NONE

    def touch(self, seconds: float) -> None:
        self._deadline_at = self.pool.loop.time() + seconds

    def _set_deadline(self, kind: int, seconds: float) -> None:
        at = self.pool.loop.time() + seconds
        self._deadline = kind
        self._deadline_at = at
        self._timer.wake_by(at)

    def _expired(self) -> None:
        kind = self._deadline
        if kind == _NONE or self.transport is None or not self._timer.due(self._deadline_at):
            return
        self._deadline = _NONE
        if kind == _IDLE:
            self.close()
            return
        if kind == _GOING_AWAY:
            self.abort()  # a peer did not answer our Close in time: both sides end now
            return
        user, self.user = self.user, None
        self.abort()
        if user is not None:
            user.on_response_timeout()

    # Producer (downstream backpressure pauses our reads)
    def pause_producing(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_producing(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # TunnelPeer (downstream side of a switched connection talks to us)
    def tunnel_data(self, data: bytes) -> None:
        ws = self.websocket
        if ws is None:
            self.pipe_write(data)
            return
        self.pipe_write(ws.from_client(data))
        if ws.finished:
            self._tunnel_done()

    def going_away(self, code: int = GOING_AWAY) -> None:
        """The worker is draining: a WebSocket gets a Close 1001 both ways, each at a
        frame boundary; both sockets close once both peers answered it, or after
        GOING_AWAY_TIMEOUT. Other tunnels are left alone (the drain's end aborts them)."""
        ws, pipe = self.websocket, self.pipe
        if ws is None or pipe is None or ws.closing:
            return
        to_client, to_upstream = ws.going_away(code)
        if to_client:
            pipe.tunnel_write(to_client)
        self.pipe_write(to_upstream)
        self._set_deadline(_GOING_AWAY, GOING_AWAY_TIMEOUT)

    def withdraw(self, code: int) -> None:
        """The client's access was withdrawn: a WebSocket closes with ``code`` like a
        drain's 1001; any other tunnel is closed at once (both sockets)."""
        if self.websocket is not None:
            self.going_away(code)
        else:
            self.close()  # connection_lost closes the client's side

    def _from_upstream(self, pipe: RawPipe, ws: WebSocketTunnel, data: bytes) -> None:
        out = ws.from_upstream(data)
        if out:
            pipe.tunnel_write(out)
        if ws.finished:
            self._tunnel_done()

    def _tunnel_done(self) -> None:
        """Both closing handshakes are complete: close the upstream; its connection_lost
        closes the client's side (``tunnel_close``)."""
        self._deadline = _NONE
        self.close()

    def tunnel_eof(self) -> None:
        self.pipe_write_eof()

    def tunnel_lost(self) -> None:
        self.pipe = None
        self.close()

    def close(self) -> None:
        self.user = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.user = None
        if self.transport is not None:
            self.transport.abort()
