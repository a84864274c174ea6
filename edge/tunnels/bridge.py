"""The WebSocket end of a port-forward tunnel, sans-IO: client frames <-> target bytes.

A tunnel is a WebSocket the edge terminates itself (RFC 6455), carrying one TCP stream: each
binary message from the client is bytes for the target, each read from the target goes to
the client as one binary message. :class:`Bridge` is the protocol core: bytes in, what to
write where out, no socket, no loop, no clock (the shell in ``edge.handlers.tunnel`` owns
the transports and the timers). Frames from the client are parsed by a wsproto
``Connection(SERVER)``; the handshake itself is answered through h11 (the 101 is the
HTTP connection's), so wsproto only sees the frames after it.

What the bridge adds to wsproto:

* a cap on one message (``max_message``): wsproto has none and hands out a frame's payload
  in pieces as it arrives, so the bytes of the client's current message are counted across
  frames and pieces; one byte over is Close 1009;
* text messages are refused (Close 1003): the tunnel carries bytes;
* half-close (:data:`TUNNEL_SUBPROTOCOL` negotiated): an empty binary message means "no more
  bytes this way", both ways: the client's becomes a FIN on the target socket, the target's
  FIN becomes an empty message to the client, and once both ways ended the tunnel closes
  with 1000. Without the subprotocol an empty message is just empty, the target's FIN
  closes the tunnel (1000) and the client's Close closes the target;
* liveness: :meth:`Bridge.ping` sends a numbered Ping, and :attr:`Bridge.pong_overdue`
  says its Pong has not come (the shell then closes with 1011);
* bounded memory: a Pong owed while the client does not read (its socket's write side is
  paused) is kept as one pending answer to the latest Ping (RFC 6455 section 5.5.3 allows
  answering only the most recent), so a client that pings without reading grows nothing.

Binary frames to the client are framed here (a 2..10-byte header before the payload, one
copy) instead of by wsproto, whose ``send`` copies a payload three times on the hot path;
control frames go through wsproto.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import generate_accept_token

from edge.wsframes import GOING_AWAY

__all__ = [
    "DATABASE_NOT_READY",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "MESSAGE_TOO_BIG",
    "NORMAL",
    "PORT_MISMATCH",
    "PROTOCOL_ERROR",
    "SESSION_TIMEOUT",
    "TARGET_UNREACHABLE",
    "TICKET_INVALID",
    "TRY_AGAIN_LATER",
    "TUNNEL_SUBPROTOCOL",
    "UNSUPPORTED_DATA",
    "Actions",
    "BadHandshake",
    "Bridge",
    "Handshake",
    "Phase",
    "binary_frame",
    "parse_handshake",
]

#: The subprotocol that adds half-close (an empty binary message = "no more bytes").
TUNNEL_SUBPROTOCOL = "edge-tunnel.v1"

# Close codes (RFC 6455 section 7.4.1; 4000-4999 are the application's own)
NORMAL = 1000  # both ways ended, or the client closed
PROTOCOL_ERROR = 1002  # bytes after the client's own end (half-close), a malformed frame
UNSUPPORTED_DATA = 1003  # a text message
MESSAGE_TOO_BIG = 1009  # one message larger than max_message
INTERNAL_ERROR = 1011  # no Pong in time, the target reset, an edge failure
TRY_AGAIN_LATER = 1013  # the ticket store (Redis) cannot be asked now
PORT_MISMATCH = 4003  # the resource's port is absent or not the ticket's
TARGET_UNREACHABLE = 4004  # connect refused or timed out (or the target is gone)
DATABASE_NOT_READY = 4005  # the database's status is not "created"
SESSION_TIMEOUT = 4008  # PORT_FORWARD_MAX_SESSION_SECONDS reached
TICKET_INVALID = 4010  # missing, unknown, used, expired, for another target; or revoked

_BINARY_FIN = 0x82  # FIN + opcode 2 (RFC 6455 section 5.2); the server never masks
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def binary_frame(payload: bytes) -> bytes:
    """One whole unmasked binary frame carrying ``payload`` (server to client)."""
    size = len(payload)
    if size < 126:
        return bytes((_BINARY_FIN, size)) + payload
    if size < 65536:
        return _HEAD_16.pack(_BINARY_FIN, 126, size) + payload
    return _HEAD_64.pack(_BINARY_FIN, 127, size) + payload


# ---------------------------------------------------------------------------- handshake


class BadHandshake(Exception):
    """Not a WebSocket opening handshake this endpoint takes (RFC 6455 section 4.2.1).

    ``status`` is 400, or 426 when the request asks for no upgrade at all or for a
    WebSocket version other than 13 (section 4.4); ``headers`` go with the answer.
    """

    def __init__(
        self, message: str, status: int = 400, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


_UPGRADE_REQUIRED = [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


@dataclass(frozen=True, slots=True)
class Handshake:
    """A valid opening handshake: the client's key and the subprotocols it offered."""

    key: bytes
    offered: tuple[str, ...] = ()

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol chosen: :data:`TUNNEL_SUBPROTOCOL` when offered, else none."""
        return TUNNEL_SUBPROTOCOL if TUNNEL_SUBPROTOCOL in self.offered else None

    def accept_headers(self) -> list[tuple[bytes, bytes]]:
        """The 101's fields (section 4.2.2): no extension is ever accepted."""
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(self.key)),
        ]
        if self.subprotocol is not None:
            headers.append((b"sec-websocket-protocol", self.subprotocol.encode("ascii")))
        return headers


def parse_handshake(
    method: bytes, http_version: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> Handshake:
    """Check an upgrade request (h11's lowercased field names) as RFC 6455 section 4.2.1
    asks: GET over HTTP/1.1, ``Upgrade: websocket``, ``Connection`` naming upgrade,
    ``Sec-WebSocket-Version: 13`` and a key that is 16 bytes in base64. Raises
    :class:`BadHandshake`."""
    upgrade: list[bytes] = []
    connection: list[bytes] = []
    versions: list[bytes] = []
    keys: list[bytes] = []
    offered: list[str] = []
    for name, value in headers:
        if name == b"upgrade":
            upgrade.extend(_tokens(value))
        elif name == b"connection":
            connection.extend(_tokens(value))
        elif name == b"sec-websocket-version":
            versions.append(value.strip())
        elif name == b"sec-websocket-key":
            keys.append(value.strip())
        elif name == b"sec-websocket-protocol":
            offered.extend(t.strip().decode("latin-1") for t in value.split(b",") if t.strip())
    if not upgrade:
        # RFC 9110 section 15.5.22: a 426 names the protocol to upgrade to
        raise BadHandshake("this endpoint is a WebSocket", 426, list(_UPGRADE_REQUIRED))
    if method != b"GET" or http_version != b"1.1":
        raise BadHandshake("a WebSocket upgrade is a GET over HTTP/1.1")
    if b"websocket" not in upgrade:
        raise BadHandshake("the Upgrade field must name websocket")
    if b"upgrade" not in connection:
        raise BadHandshake("the Connection field must name upgrade")
    if versions != [b"13"]:
        # section 4.4: the versions the server speaks go with the refusal
        required = [*_UPGRADE_REQUIRED, (b"sec-websocket-version", b"13")]
        raise BadHandshake("only WebSocket version 13 is spoken here", 426, required)
    if len(keys) != 1 or not _valid_key(keys[0]):
        raise BadHandshake("Sec-WebSocket-Key must be 16 bytes in base64")
    return Handshake(keys[0], tuple(offered))


def _valid_key(key: bytes) -> bool:
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


# ---------------------------------------------------------------------------- the bridge


class Phase(enum.Enum):
    """Where the WebSocket is; bytes flow only while ``OPEN``."""

    OPEN = "open"  # bytes flow, each way until its own end
    CLOSING = "closing"  # our Close is out, the client's answer is awaited; data is dropped
    CLOSED = "closed"  # both Closes went by, or the connection failed: the sockets close


class Actions:
    """What one input asks of the shell, applied in this order: ``to_target`` written,
    then the target's write side ended (``eof_to_target``) or its socket closed after what
    is buffered (``close_target``); ``to_client`` written, then the client's socket closed
    after it (``done``). ``closed``: the close code, when this input ended the WebSocket."""

    __slots__ = ("close_target", "closed", "done", "eof_to_target", "to_client", "to_target")

    def __init__(self) -> None:
        self.to_target = b""
        self.to_client = b""
        self.eof_to_target = False
        self.close_target = False
        self.done = False
        self.closed: int | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Actions({fields})"


class Bridge:
    """One tunnel's WebSocket, server side, after the 101.

    ``max_message``: the largest message taken from the client (and sent to it: a larger
    read from the target goes out as several messages). ``half_close``: the subprotocol
    was negotiated.
    """

    __slots__ = (
        "_client_writable",
        "_message",
        "_owed_pong",
        "_ping",
        "_pings",
        "_ws",
        "client_ended",
        "code",
        "half_close",
        "max_message",
        "phase",
        "target_ended",
    )

    def __init__(self, max_message: int, half_close: bool = False) -> None:
        self._ws = Connection(ConnectionType.SERVER)
        self.max_message = max_message
        self.half_close = half_close
        self.phase = Phase.OPEN
        self.client_ended = False  # the client's empty message came: the target got a FIN
        self.target_ended = False  # the target's FIN came: the client was told
        self.code: int | None = None  # the code the WebSocket closed with, once it did
        self._message = 0  # payload bytes of the client's current message so far
        self._ping: bytes | None = None  # the payload of the Ping whose Pong is awaited
        self._pings = 0
        self._client_writable = True
        self._owed_pong: bytes | None = None

    # ------------------------------------------------------------------ from the client
    def from_client(self, data: bytes) -> Actions:
        """Bytes the client sent: what goes where."""
        out = Actions()
        if self.phase is Phase.CLOSED:
            return out  # nothing follows a closed WebSocket (section 5.5.1): dropped
        ws = self._ws
        ws.receive_data(data)
        to_target: list[bytes] = []
        to_client: list[bytes] = []
        for event in ws.events():
            if isinstance(event, BytesMessage):
                if self.phase is Phase.OPEN:
                    self._data(event, to_target, to_client, out)
            elif isinstance(event, Ping):
                if self.phase is Phase.OPEN:
                    if self._client_writable:
                        to_client.append(ws.send(event.response()))
                    else:
                        self._owed_pong = event.payload
            elif isinstance(event, Pong):
                if event.payload == self._ping:
                    self._ping = None
            elif isinstance(event, CloseConnection):
                self._client_close(event, to_client, out)
            elif isinstance(event, TextMessage) and self.phase is Phase.OPEN:
                self._close(UNSUPPORTED_DATA, "binary messages only", to_client, out)
        if to_target:
            out.to_target = to_target[0] if len(to_target) == 1 else b"".join(to_target)
        if to_client:
            out.to_client = b"".join(to_client)
        return out

    def _data(
        self, event: BytesMessage, to_target: list[bytes], to_client: list[bytes], out: Actions
    ) -> None:
        data = event.data
        size = len(data)
        self._message += size
        if self._message > self.max_message:
            self._close(MESSAGE_TOO_BIG, "message too big", to_client, out)
            return
        if size:
            if self.client_ended:
                # the client said it had no more bytes, then sent some: the target's
                # write side is already shut
                self._close(PROTOCOL_ERROR, "data after the end of the stream", to_client, out)
                return
            to_target.append(bytes(data))  # the same object: wsproto gives bytes
        if event.message_finished:
            if not self._message and self.half_close and not self.client_ended:
                self.client_ended = True
                out.eof_to_target = True
                if self.target_ended:
                    self._close(NORMAL, "", to_client, out)
            self._message = 0

    def _client_close(self, event: CloseConnection, to_client: list[bytes], out: Actions) -> None:
        ws = self._ws
        state = ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # the client began closing: answer with its code (section 5.5.1), then close
            to_client.append(ws.send(event.response()))
            self._closed(event.code, out)
        elif state is ConnectionState.CLOSED:
            self.phase = Phase.CLOSED  # its answer to our Close: the handshake is complete
            out.done = True
        else:
            # wsproto reports a frame it cannot parse as a CloseConnection and stops
            # parsing (state unchanged): fail the connection (section 7.1.7)
            if state is ConnectionState.OPEN:
                to_client.append(ws.send(CloseConnection(event.code, "invalid frame")))
            self._closed(event.code, out)

    def _closed(self, code: int, out: Actions) -> None:
        if self.code is None:
            self.code = out.closed = code
        self.phase = Phase.CLOSED
        out.close_target = True
        out.done = True

    def client_eof(self) -> Actions:
        """The client's socket ended without a Close (or after ours went unanswered)."""
        out = Actions()
        if self.phase is not Phase.CLOSED:
            self._closed(1006, out)  # section 7.1.5: closed abnormally, never sent
        return out

    # ------------------------------------------------------------------ from the target
    def from_target(self, data: bytes) -> bytes:
        """Bytes the target sent: the frames for the client (none once closing)."""
        if self.phase is not Phase.OPEN:
            return b""
        limit = self.max_message
        if len(data) <= limit:
            return binary_frame(data)
        view = memoryview(data)
        return b"".join(
            binary_frame(bytes(view[at : at + limit])) for at in range(0, len(data), limit)
        )

    def target_eof(self) -> Actions:
        """The target sent its FIN: an empty message (half-close) or Close 1000."""
        out = Actions()
        if self.phase is not Phase.OPEN or self.target_ended:
            return out
        self.target_ended = True
        to_client: list[bytes] = []
        if self.half_close:
            to_client.append(binary_frame(b""))
            if self.client_ended:
                self._close(NORMAL, "", to_client, out)
        else:
            self._close(NORMAL, "", to_client, out)
        out.to_client = b"".join(to_client)
        return out

    # ------------------------------------------------------------------ the edge's own
    def close(self, code: int, reason: str = "") -> Actions:
        """Close with ``code`` (drain 1001, revocation 4010, session 4008, ping 1011...):
        the Close for the client, and the target's socket closed; nothing if closing."""
        out = Actions()
        to_client: list[bytes] = []
        self._close(code, reason, to_client, out)
        out.to_client = b"".join(to_client)
        return out

    def _close(self, code: int, reason: str, to_client: list[bytes], out: Actions) -> None:
        if self.phase is not Phase.OPEN:
            return
        to_client.append(self._ws.send(CloseConnection(code, reason or None)))
        self.phase = Phase.CLOSING
        self.code = out.closed = code
        out.close_target = True

    @property
    def pong_overdue(self) -> bool:
        """The last :meth:`ping` has had no Pong yet."""
        return self._ping is not None

    def ping(self) -> bytes:
        """A new Ping for the client (its predecessor forgotten); nothing once closing."""
        if self.phase is not Phase.OPEN:
            return b""
        self._pings += 1
        self._ping = self._pings.to_bytes(8, "big")
        return self._ws.send(Ping(self._ping))

    def client_writable(self, writable: bool) -> bytes:
        """The client's socket stopped (False) or started again (True) taking our writes;
        when it starts again, the Pong owed to its latest Ping meanwhile."""
        self._client_writable = writable
        if not writable or self._owed_pong is None:
            return b""
        owed, self._owed_pong = self._owed_pong, None
        if self.phase is not Phase.OPEN:
            return b""
        return self._ws.send(Pong(owed))
