"""One tunnel of ``edge forward``: a local TCP connection bridged to the edge over a
WebSocket (RFC 6455), binary messages carrying the raw bytes both ways.

:class:`TunnelCore` is sans-IO (bytes in, events and bytes out; no socket, no clock): a
wsproto client connection plus the half-close rule of the ``edge-tunnel.v1``
subprotocol. With it negotiated, an empty binary message means "no more bytes this
way": the local side's EOF is sent as one, and one from the edge becomes ``write_eof()``
on the local socket, so a tool that shuts down its write side and then reads the answer
(``pg_dump``, request/response scripts) works. Without it (an edge that does not echo
the subprotocol), the local side's EOF ends the tunnel with a Close 1000.

:class:`Tunnel` is the asyncio shell around one core: two pumps on streams, each waiting
for the other side's ``drain()`` before reading more, so a slow reader on either side
stops the reading on the other and memory stays bounded (64 KiB reads, the transports'
write buffer limits). Messages sent are at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass
from http import HTTPStatus

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
from edge.client.ticket import USER_AGENT, explain_status
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
    "explain_close",
]

SUBPROTOCOL = TUNNEL_SUBPROTOCOL  # offered on every tunnel: it adds the half-close
MAX_FRAME = 64 * 1024  # the largest message sent, and the size of each read
MAX_REJECTION = 64 * 1024  # of an HTTP refusal's body, kept to explain it
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
        self._out = bytearray()
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
        self._out += self._ws.send(request)

    def data_to_send(self) -> bytes:
        """The bytes owed to the edge so far (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

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
            self._out += self._ws.send(BytesMessage(data=bytes(view[start : start + MAX_FRAME])))

    def send_eof(self) -> None:
        """The local side sent its last byte: an empty message with ``edge-tunnel.v1``,
        else the end of the tunnel (Close 1000)."""
        if not self.open:
            return
        if self.half_close:
            self._out += self._ws.send(BytesMessage(data=b""))
        else:
            self.close(NORMAL, "client closed")

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake (nothing if it already began)."""
        if self._ws.state is ConnectionState.OPEN and self.accepted:
            self._closing_ours = True
            self._out += self._ws.send(CloseConnection(code=code, reason=reason))

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
                self._out += self._ws.send(event.response())
        elif isinstance(event, CloseConnection):
            self.closed = True
            ours = self._closing_ours
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._out += self._ws.send(event.response())  # the edge's Close echoed
            elif self._ws.state is ConnectionState.OPEN:  # wsproto found a malformed frame
                self._out += self._ws.send(CloseConnection(code=event.code, reason=""))
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


class Tunnel:
    """One accepted local connection and its WebSocket to the edge, bridged."""

    def __init__(
        self,
        local: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        edge: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        core: TunnelCore,
        *,
        timeout: float,
    ) -> None:
        self._local_reader, self._local_writer = local
        self._edge_reader, self._edge_writer = edge
        self._core = core
        self._timeout = timeout
        self._accepted = asyncio.Event()
        self._closing_since: float | None = None
        self.bytes_in = 0  # from the edge to the local socket
        self.bytes_out = 0  # from the local socket to the edge

    @property
    def accepted(self) -> bool:
        return self._accepted.is_set()

    def stop(self, code: int = GOING_AWAY, reason: str = "client going away") -> None:
        """End the tunnel from this side (Ctrl-C): a Close to the edge; :meth:`run`
        returns once the edge answers it (or after :data:`CLOSE_WAIT`)."""
        self._core.close(code, reason)
        self._flush()

    def _flush(self) -> None:
        out = self._core.data_to_send()
        if out and not self._edge_writer.is_closing():
            self._edge_writer.write(out)
        if self._closing_since is None and self._core.closing:
            self._closing_since = asyncio.get_running_loop().time()

    async def run(self) -> Ending:
        """Open the WebSocket (the upgrade request is in the core), bridge, and close
        both sockets; how it ended."""
        self._flush()
        pump = asyncio.create_task(self._to_edge())
        try:
            code, problem = await self._from_edge()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
            for writer in (self._edge_writer, self._local_writer):
                writer.close()
        refused = self.bytes_in == 0 and self.bytes_out == 0 and problem is not None
        return Ending(code, problem, refused)

    async def _read_edge(self) -> bytes:
        """The next bytes from the edge; the handshake and the wait for the edge's Close
        after ours have deadlines, the open tunnel none (the edge pings it)."""
        if not self._accepted.is_set():
            limit: float | None = self._timeout
        elif self._closing_since is not None:
            limit = CLOSE_WAIT
        else:
            return await self._edge_reader.read(MAX_FRAME)
        return await asyncio.wait_for(self._edge_reader.read(MAX_FRAME), limit)

    async def _from_edge(self) -> tuple[int | None, str | None]:
        """The edge -> local pump, and the handshake; returns (close code, problem)."""
        while True:
            try:
                data = await self._read_edge()
            except TimeoutError:
                if not self._accepted.is_set():
                    return None, f"no answer to the WebSocket upgrade within {self._timeout:g}s"
                return None, None  # our Close went unanswered: we are leaving anyway
            except OSError as exc:
                data = b""
                if not self._accepted.is_set():
                    reason = exc.strerror or type(exc).__name__
                    return None, f"the connection to the edge failed during the upgrade: {reason}"
            local = self._local_writer
            for event in self._core.receive(data):
                if isinstance(event, ToLocal):
                    self.bytes_in += len(event.data)
                    if not local.is_closing():  # else the local client left: dropped
                        local.write(event.data)
                elif event is LocalEof.EOF:
                    if not local.is_closing() and local.can_write_eof():
                        local.write_eof()
                elif isinstance(event, Accepted):
                    self._accepted.set()
                elif isinstance(event, Closed):
                    self._flush()
                    if event.ours or event.code == NORMAL:
                        return event.code, None
                    return event.code, explain_close(event.code, event.reason)
                elif isinstance(event, Rejected):
                    return event.status, explain_status(event.status, event.reason, event.body)
            self._flush()
            try:
                await local.drain()  # a slow local reader pauses the edge
            except OSError:  # the local client is gone: end the tunnel
                local.close()
                self.stop(NORMAL, "client gone")

    async def _to_edge(self) -> None:
        """The local -> edge pump, once the tunnel is open."""
        await self._accepted.wait()
        core = self._core
        while core.open:
            try:
                data = await self._local_reader.read(MAX_FRAME)
            except OSError:
                self.stop(NORMAL, "client gone")
                return
            if not data:
                core.send_eof()
                self._flush()
                return
            self.bytes_out += len(data)
            core.send(data)
            self._flush()
            await self._edge_writer.drain()  # a slow edge pauses the local reading
