"""One tunnel of ``edge forward``: a local TCP connection bridged to the edge over a
WebSocket (RFC 6455), binary messages carrying the raw bytes both ways.

:class:`TunnelCore` is sans-IO (bytes in, events and bytes out; no socket, no clock): a
wsproto client connection plus the half-close rule of the ``edge-tunnel.v1``
subprotocol. With it negotiated, an empty binary message means "no more bytes this
way": the local side's EOF is sent as one, and one from the edge becomes ``write_eof()``
on the local socket, so a tool that shuts down its write side and then reads the answer
(``pg_dump``, request/response scripts) works. Without it (an edge that does not echo
the subprotocol), the local side's EOF ends the tunnel with a Close 1000.

:class:`Tunnel` is the asyncio shell around one core: one Protocol per socket, callbacks
only (no task per direction, no stream buffers: measured, the streams version spent a
third more CPU per byte). Flow control is coupled through the transports' own signals:
while one socket's unsent bytes are above :data:`WRITE_HIGH`, the other socket is not
read, so a slow reader on either side slows the other and memory stays bounded whatever
the speeds. Messages sent are at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from edge.client.errors import one_line
from edge.client.ticket import USER_AGENT, Endpoint, explain_status, tls_context
from edge.tunnels.bridge import (
    DATABASE_NOT_READY,
    GOING_AWAY,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    NORMAL,
    PORT_MISMATCH,
    PROTOCOL_ERROR,
    SESSION_TIMEOUT,
    TARGET_UNREACHABLE,
    TICKET_INVALID,
    TRY_AGAIN_LATER,
    TUNNEL_SUBPROTOCOL,
    UNSUPPORTED_DATA,
)

__all__ = [
    "MAX_FRAME",
    "SUBPROTOCOL",
    "Accepted",
    "Closed",
    "Ending",
    "LocalEof",
    "Rejected",
    "ToLocal",
    "Tunnel",
    "TunnelCore",
    "binary_frame",
    "explain_close",
]

SUBPROTOCOL = TUNNEL_SUBPROTOCOL  # offered on every tunnel: it adds the half-close
MAX_FRAME = 64 * 1024  # the largest message sent, and the size of each read
MAX_REJECTION = 64 * 1024  # of an HTTP refusal's body, kept to explain it
WRITE_HIGH = 256 * 1024  # a socket's unsent bytes above this pause the other socket's reading
WRITE_LOW = 64 * 1024  # ... until they fall below this
CLOSE_WAIT = 3.0  # seconds for the edge's Close after ours, before the socket is shut

ABNORMAL = 1006  # no Close came: the connection dropped (never sent, RFC 6455 7.4.1)

# close code -> (short name, what it means for the user)
_CLOSES: dict[int, tuple[str, str]] = {
    GOING_AWAY: ("edge going away", "the edge is restarting or draining: connect again"),
    PROTOCOL_ERROR: (
        "protocol error",
        "the edge and this client disagree on the WebSocket protocol",
    ),
    UNSUPPORTED_DATA: ("unsupported data", "a message was not binary"),
    ABNORMAL: ("connection lost", "the connection to the edge dropped without a Close"),
    1008: ("policy violation", "the edge refused the tunnel"),
    MESSAGE_TOO_BIG: (
        "message too big",
        "a message was larger than the edge accepts (PORT_FORWARD_MAX_MESSAGE)",
    ),
    INTERNAL_ERROR: (
        "ping timeout or internal error",
        "the edge ended the tunnel: its pings went unanswered in time, the target reset "
        "the connection, or the edge failed",
    ),
    TRY_AGAIN_LATER: (
        "try again later",
        "the edge cannot check tickets right now (its Redis is unreachable)",
    ),
    PORT_MISMATCH: (
        "port mismatch",
        "the tunnel's port is not the one its ticket was bought for",
    ),
    TARGET_UNREACHABLE: (
        "target unreachable",
        "the edge could not connect to the target (connection refused or timed out)",
    ),
    DATABASE_NOT_READY: ("database not ready", "the database's status is not 'created'"),
    SESSION_TIMEOUT: (
        "session timeout",
        "the tunnel reached the maximum session length (PORT_FORWARD_MAX_SESSION_SECONDS)",
    ),
    TICKET_INVALID: (
        "ticket invalid",
        "the ticket was missing, used, expired or for another target, or the token was "
        "revoked or lost its access to the project",
    ),
}


def explain_close(code: int, reason: str = "") -> str:
    """One line for a Close from the edge: the code, its name and what it means."""
    name, meaning = _CLOSES.get(code, ("closed", "the edge closed the tunnel"))
    said = f" (the edge says: {one_line(reason)[:200]})" if reason.strip() else ""
    return f"{code} {name}: {meaning}{said}"


# ---------------------------------------------------------------------------- framing

# Data frames are built here rather than by wsproto: a whole binary message is one frame
# that changes no state of the connection (wsproto tracks only fragmented messages), and
# wsproto copies a 64 KiB payload four times on the way (its masker, the header, its
# return value), which measured a third of this client's CPU per byte sent. Everything
# else (the handshake, control frames, the empty end-of-stream message, Close) is
# wsproto's.
_XOR = tuple(bytes(a ^ b for a in range(256)) for b in range(256))  # _XOR[k][a] = a ^ k
_HEAD_7 = struct.Struct("!BB4s")
_HEAD_16 = struct.Struct("!BBH4s")
_HEAD_64 = struct.Struct("!BBQ4s")
_BINARY_FIN = 0x82  # FIN + opcode 2 (RFC 6455 section 5.2)
_MASKED = 0x80


def binary_frame(payload: bytes | memoryview) -> tuple[bytes, bytearray]:
    """One whole binary message from the client: its header and its masked payload
    (RFC 6455 section 5.2; section 5.3: a fresh unpredictable 32-bit key per frame, the
    payload XORed with it byte by byte in turn, done here four strided slices at a time
    by ``bytes.translate``)."""
    key = os.urandom(4)
    size = len(payload)
    if size <= 125:
        head = _HEAD_7.pack(_BINARY_FIN, _MASKED | size, key)
    elif size <= 0xFFFF:
        head = _HEAD_16.pack(_BINARY_FIN, _MASKED | 126, size, key)
    else:
        head = _HEAD_64.pack(_BINARY_FIN, _MASKED | 127, size, key)
    body = bytearray(payload)
    for lane in range(4):
        body[lane::4] = body[lane::4].translate(_XOR[key[lane]])
    return head, body


# ---------------------------------------------------------------------------- the core


@dataclass(frozen=True, slots=True)
class Accepted:
    """The edge answered 101: the tunnel is open (``half_close``: subprotocol agreed)."""

    half_close: bool


@dataclass(frozen=True, slots=True)
class Rejected:
    """The edge answered the upgrade with an HTTP error (the whole body, bounded)."""

    status: int
    reason: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ToLocal:
    """Bytes from the edge for the local socket."""

    data: bytes


class LocalEof(enum.Enum):
    """The edge will send no more bytes: shut the local socket's write side."""

    EOF = "eof"


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is over (``code`` from the edge, or 1006 when it just dropped); any
    reply owed to the edge is in :meth:`TunnelCore.data_to_send`. ``ours``: the close
    handshake was started by this side."""

    code: int
    reason: str
    ours: bool


Event = Accepted | Rejected | ToLocal | LocalEof | Closed


class TunnelCore:
    """The client end of one tunnel, sans-IO. Feed what the edge sends to :meth:`receive`,
    local bytes to :meth:`send` and the local EOF to :meth:`send_eof`; write
    :meth:`data_to_send` to the edge after each."""

    def __init__(self, host: str, target: str) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._out: list[bytes | bytearray] = []  # whole frames (the upgrade first), in order
        self.accepted = False
        self.half_close = False
        self.closed = False
        self._closing_ours = False
        self._empty_message = True  # no data yet in the message being received
        self._rejection: tuple[int, str] | None = None
        self._rejection_body = bytearray()
        request = Request(
            host=host,
            target=target,
            subprotocols=[SUBPROTOCOL],
            extra_headers=[(b"user-agent", USER_AGENT.encode("ascii"))],
        )
        self._out.append(self._ws.send(request))

    def chunks_to_send(self) -> list[bytes | bytearray]:
        """The bytes owed to the edge so far, as they were made (and forget them): written
        with ``writelines``, a 64 KiB message is never copied into a bigger buffer."""
        out, self._out = self._out, []
        return out

    def data_to_send(self) -> bytes:
        """The bytes owed to the edge so far, in one piece (and forget them)."""
        return b"".join(self.chunks_to_send())

    @property
    def open(self) -> bool:
        """Whether messages may still be sent (the handshake done, no Close either way)."""
        return self.accepted and self._ws.state is ConnectionState.OPEN

    @property
    def closing(self) -> bool:
        """Whether this side sent its Close and waits for the edge's."""
        return self._closing_ours and not self.closed

    def send(self, data: bytes) -> None:
        """Local bytes for the edge, as binary messages of at most :data:`MAX_FRAME`."""
        if not self.open or not data:
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_FRAME):
            self._out += binary_frame(view[start : start + MAX_FRAME])

    def send_eof(self) -> None:
        """The local side sent its last byte: an empty message with ``edge-tunnel.v1``,
        else the end of the tunnel (Close 1000)."""
        if not self.open:
            return
        if self.half_close:
            self._out.append(self._ws.send(BytesMessage(data=b"")))
        else:
            self.close(NORMAL, "client closed")

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake (nothing if it already began)."""
        if self._ws.state is ConnectionState.OPEN and self.accepted:
            self._closing_ours = True
            self._out.append(self._ws.send(CloseConnection(code=code, reason=reason)))

    def receive(self, data: bytes) -> list[Event]:
        """What ``data`` from the edge means; ``b""`` is the end of the connection."""
        if self.closed:
            return []
        if not data:
            self.closed = True
            if self._rejection is not None:  # a refusal whose body ends with the connection
                return [Rejected(*self._rejection, bytes(self._rejection_body))]
            return [Closed(ABNORMAL, "", ours=self._closing_ours)]
        events: list[Event] = []
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event, events)
                if self.closed:
                    break
        except ProtocolError:  # a 101 that is not one, say: our side fails it
            self.closed = True
            events.append(Closed(PROTOCOL_ERROR, "", ours=False))
        return events

    def _handle(self, event: object, events: list[Event]) -> None:
        if isinstance(event, BytesMessage):
            if event.data:
                self._empty_message = False
                events.append(ToLocal(bytes(event.data)))
            if event.message_finished:
                if self._empty_message and self.half_close:
                    events.append(LocalEof.EOF)
                self._empty_message = True
        elif isinstance(event, Ping):
            if self._ws.state is ConnectionState.OPEN:
                self._out.append(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.closed = True
            ours = self._closing_ours
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._out.append(self._ws.send(event.response()))  # the edge's Close echoed
            elif self._ws.state is ConnectionState.OPEN:  # wsproto found a malformed frame
                self._out.append(self._ws.send(CloseConnection(code=event.code, reason="")))
                events.append(Closed(int(event.code), "", ours=False))
                return
            events.append(Closed(int(event.code), event.reason or "", ours=ours))
        elif isinstance(event, TextMessage):
            self.close(UNSUPPORTED_DATA, "text messages are not tunnel data")
        elif isinstance(event, AcceptConnection):
            self.accepted = True
            self.half_close = event.subprotocol == SUBPROTOCOL
            events.append(Accepted(self.half_close))
        elif isinstance(event, RejectConnection):
            try:
                reason = HTTPStatus(event.status_code).phrase
            except ValueError:
                reason = ""
            self._rejection = (event.status_code, reason)
            if not event.has_body:
                self.closed = True
                events.append(Rejected(event.status_code, reason, b""))
        elif isinstance(event, RejectData) and self._rejection is not None:
            room = MAX_REJECTION - len(self._rejection_body)
            self._rejection_body += event.data[: max(room, 0)]
            if event.body_finished:
                self.closed = True
                events.append(Rejected(*self._rejection, bytes(self._rejection_body)))
        # Pong (an answer to nothing we sent): ignored


# ---------------------------------------------------------------------------- the shell


@dataclass(frozen=True, slots=True)
class Ending:
    """How a tunnel ended: ``problem`` is the line to print (None: a normal end)."""

    code: int | None
    problem: str | None
    refused: bool  # ended before any byte went either way


class Side(enum.Enum):
    LOCAL = "local"
    EDGE = "edge"


class _Peer(asyncio.Protocol):
    """One socket of a tunnel: every callback goes to the :class:`Tunnel` with its side."""

    def __init__(self, tunnel: Tunnel, side: Side) -> None:
        self.tunnel = tunnel
        self.side = side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP transport (uvloop's are not asyncio.Transport subclasses, but quack alike)
        self.tunnel._made(self.side, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.tunnel._data(self.side, data)

    def eof_received(self) -> bool:
        return self.tunnel._eof(self.side)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel._lost(self.side)

    def pause_writing(self) -> None:
        self.tunnel._write_paused(self.side, True)

    def resume_writing(self) -> None:
        self.tunnel._write_paused(self.side, False)


class Tunnel:
    """One accepted local connection and its WebSocket to the edge, bridged by callbacks.

    Made by the listener's protocol factory (:meth:`local_protocol` is the local socket's
    protocol): the local socket is not read until the edge accepted the upgrade.
    :meth:`connect` opens the edge's socket and sends the upgrade; :meth:`run` waits for
    the end. Flow control is coupled: while one socket's write buffer is above its
    high-water mark, the other socket is not read.
    """

    def __init__(self, *, timeout: float, on_local: Callable[[Tunnel], None]) -> None:
        self._timeout = timeout
        self._on_local = on_local
        self._core: TunnelCore | None = None
        self._local: asyncio.Transport | None = None
        self._edge: asyncio.Transport | None = None
        self._done: asyncio.Future[tuple[int | None, str | None]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing_armed = False
        self._local_reading = False
        self._edge_write_paused = False
        self._local_ended = False  # the local side sent its EOF, or left
        self._early: list[bytes] = []  # local bytes read before the tunnel opened
        self.local_gone = False
        self.peer: tuple[str, int] | None = None
        self.bytes_in = 0  # from the edge to the local socket
        self.bytes_out = 0  # from the local socket to the edge

    @property
    def accepted(self) -> bool:
        return self._core is not None and self._core.accepted

    def local_protocol(self) -> asyncio.Protocol:
        return _Peer(self, Side.LOCAL)

    # ------------------------------------------------------------------ driving

    async def connect(self, endpoint: Endpoint, target: str) -> None:
        """Open the connection to the edge and send the upgrade for ``target`` (the
        ticket's path); OSError or TimeoutError when the edge cannot be reached."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._core = TunnelCore(endpoint.authority, target)
        tls = tls_context() if endpoint.https else None
        opening = loop.create_connection(
            lambda: _Peer(self, Side.EDGE),
            endpoint.host,
            endpoint.port,
            ssl=tls,
            server_hostname=endpoint.host if tls else None,
        )
        await asyncio.wait_for(opening, self._timeout)

    async def run(self) -> Ending:
        """Wait for the tunnel's end (the upgrade has a deadline, the open tunnel none: the
        edge pings it); both sockets are closed when it returns, or when it is cancelled."""
        assert self._done is not None, "connect() first"
        if not self.accepted and not self._done.done():
            # (the 101 may have come already, between connect() and now: a deadline armed
            # then would end the open tunnel mid-transfer)
            self._arm(self._timeout, "no answer to the WebSocket upgrade within {:g}s")
        try:
            code, problem = await self._done
        finally:
            self._finish(None, None)
        refused = self.bytes_in == 0 and self.bytes_out == 0 and problem is not None
        return Ending(code, problem, refused)

    def stop(self, code: int = GOING_AWAY, reason: str = "client going away") -> None:
        """End the tunnel from this side (Ctrl-C): a Close to the edge; :meth:`run`
        returns once the edge answers it (or after :data:`CLOSE_WAIT`)."""
        if self._core is None or not self._core.open:
            self._finish(None, None)
            return
        self._core.close(code, reason)
        self._flush()

    def abort(self) -> None:
        """Close the local socket (the tunnel was refused before it opened)."""
        if self._local is not None:
            self._local.close()

    # ------------------------------------------------------------------ internals

    def _arm(self, delay: float, problem: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        text = problem.format(delay) if problem else None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._finish, None, text)

    def _flush(self) -> None:
        core, edge = self._core, self._edge
        if core is None:
            return
        chunks = core.chunks_to_send()
        if chunks and edge is not None and not edge.is_closing():
            edge.writelines(chunks)
        if core.closing and not self._closing_armed:
            self._closing_armed = True
            self._arm(CLOSE_WAIT, None)  # our Close may go unanswered: we leave anyway

    def _finish(self, code: int | None, problem: str | None) -> None:
        """The end: both sockets closed (what was written still goes out first)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._done is not None and not self._done.done():
            self._done.set_result((code, problem))
        for transport in (self._edge, self._local):
            if transport is not None:
                transport.close()

    def _sync_local_reading(self) -> None:
        """Read the local socket only while the tunnel is open and the edge keeps up."""
        want = (
            self.accepted
            and not self._edge_write_paused
            and not self._local_ended
            and self._core is not None
            and self._core.open
        )
        if self._local is not None and want != self._local_reading:
            self._local_reading = want
            if want:
                self._local.resume_reading()
            else:
                self._local.pause_reading()

    def _made(self, side: Side, transport: asyncio.Transport) -> None:
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        if side is Side.EDGE:
            self._edge = transport
            _no_delay(transport)
            self._flush()  # the upgrade request
            return
        self._local = transport
        transport.pause_reading()
        _no_delay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        self._on_local(self)

    def _data(self, side: Side, data: bytes) -> None:
        core = self._core
        if side is Side.LOCAL:
            if core is None or not core.open:
                # a read that beat pause_reading(): kept for the open tunnel (reading is
                # paused, so this holds one read at most)
                self._early.append(data)
                self._sync_local_reading()
                return
            self.bytes_out += len(data)
            core.send(data)
            self._flush()
        elif core is not None:
            self._events(core.receive(data))

    def _events(self, events: list[Event]) -> None:
        local = self._local
        for event in events:
            if isinstance(event, ToLocal):
                self.bytes_in += len(event.data)
                if local is not None and not local.is_closing():  # else: the client left
                    local.write(event.data)
            elif event is LocalEof.EOF:
                if local is not None and not local.is_closing() and local.can_write_eof():
                    local.write_eof()
            elif isinstance(event, Accepted):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                early, self._early = self._early, []
                for data in early:
                    self._data(Side.LOCAL, data)
                if self._local_ended:
                    self._send_eof()
                if self.local_gone:
                    self.stop(NORMAL, "client gone")
                self._sync_local_reading()
            elif isinstance(event, Closed):
                self._flush()
                if event.ours or event.code == NORMAL:
                    self._finish(event.code, None)
                else:
                    self._finish(event.code, explain_close(event.code, event.reason))
                return
            elif isinstance(event, Rejected):
                self._finish(event.status, explain_status(event.status, event.reason, event.body))
                return
        self._flush()

    def _eof(self, side: Side) -> bool:
        if side is Side.EDGE:
            if self._core is not None:
                self._events(self._core.receive(b""))
            return False
        if not self._local_ended:  # (uvloop may report one EOF twice)
            self._local_ended = True
            self._sync_local_reading()
            self._send_eof()
        return True  # keep the write side: the answer may still come

    def _send_eof(self) -> None:
        """The local EOF to the edge, once the tunnel is open (and its early bytes sent)."""
        core = self._core
        if core is not None and core.open and not self._early:
            core.send_eof()  # an empty message, or (no subprotocol) the end
            self._flush()

    def _lost(self, side: Side) -> None:
        if side is Side.EDGE:
            if self._core is not None and not self._core.closed:
                self._events(self._core.receive(b""))
            self._finish(None, None)
            return
        self.local_gone = self._local_ended = True
        if self._core is None or not self._core.accepted:
            return  # still buying a ticket or upgrading: the opener sees local_gone
        self.stop(NORMAL, "client gone")

    def _write_paused(self, side: Side, paused: bool) -> None:
        if side is Side.EDGE:
            self._edge_write_paused = paused
            self._sync_local_reading()
        elif self._edge is not None and not self._edge.is_closing():
            if paused:  # a slow local reader: stop reading the edge
                self._edge.pause_reading()
            else:
                self._edge.resume_reading()


def _no_delay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
