"""The TLS PROXY listener: trusted peers only, header first, ClientHello left unread.

The plain PROXY listener reads the header with ``edge.net.preface.PrefaceProtocol`` and
passes the bytes after it to HTTP. The TLS listener cannot do that, because the TLS layer
must read the ClientHello from the socket:

HAProxy (``send-proxy`` / ``send-proxy-v2``) writes the PROXY header and usually the first
bytes of the payload (an HTTP request, or a TLS ClientHello) in one segment.
``loop.start_tls()`` cannot take bytes that were already read (python/cpython#142352,
MagicStack/uvloop#707), so the header is never read past: each time the socket is
readable the bytes waiting in the kernel are *peeked* (``MSG_PEEK``) and given to the
same sans-IO ``Preface``, then exactly the header's bytes are consumed. Bytes that are
only a prefix of a header are consumed too (they cannot be anything else), so a header
trickling in byte by byte never makes the socket spin as readable. Once the header is
complete, the socket, with the payload still unread in the kernel, goes to
``loop.connect_accepted_socket`` with TLS, and the HTTP layer sees the header's client
address as the peer.

Refusals send nothing, as on the plain listener (``ProxyStage``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl

from edge.net.hello import HelloGate, PeekHello
from edge.net.listener import accept_ready
from edge.net.preface import (
    Handshake,
    Preface,
    ProtocolFactory,
    ProxyStage,
    TrustedPeers,
    client_address,
    server_port,
)
from edge.net.proxy_protocol import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    ProxyHeader,
    ProxyProtocolError,
)

log = logging.getLogger("edge.net")

# re-exported: they lived here before the preface had a module of its own
__all__ = ["ProxyListener", "ProxyStage", "TrustedPeers", "client_address"]

_PEEK = max(MAX_V1_HEADER, MAX_V2_HEADER)  # a buffer this long always decides


class ProxyListener:
    """One listening socket whose connections start with a PROXY header."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        stage: ProxyStage,
        factory: ProtocolFactory,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        gate: HelloGate | None = None,
        gate_wait: float = 0.0,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.stage = stage
        self.factory = factory
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        # on-demand TLS: the ClientHello's name is read (and perhaps waited on) first
        self.gate = gate
        self.hello_timeout = handshake_timeout + gate_wait
        self._serving = False

    def start(self) -> None:
        self._serving = True
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting. A connection still reading its header goes on (within
        PROXY_PROTOCOL_TIMEOUT): a draining worker serves its request like any other."""
        if self._serving:
            self._serving = False
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    @property
    def busy(self) -> bool:
        """Connections accepted that have no HTTP connection yet (header, TLS handshake)."""
        return self.stage.busy

    def abort(self) -> None:
        """Drop the connections not handed to HTTP yet (a drain that ran out of time)."""
        self.stage.abort()

    def _accept(self) -> None:
        trusted = self.stage.trusted
        for conn, peer in accept_ready(self.sock):
            if peer[0] not in trusted:
                self.stage.refuse_peer(peer[0], peer[1])
                conn.close()
                continue
            _PendingHeader(self, conn, peer).start()

    def handoff(self, conn: socket.socket, header: ProxyHeader, peer: tuple[str, int]) -> None:
        if self.gate is not None and self.tls is not None:
            then = functools.partial(self._connect, conn, header, peer)
            PeekHello(self.loop, conn, self.gate, self.stage, self.hello_timeout, then)
            return
        self._connect(conn, header, peer)

    def _connect(self, conn: socket.socket, header: ProxyHeader, peer: tuple[str, int]) -> None:
        port = server_port(header, int(conn.getsockname()[1]))
        client = client_address(header, peer)
        protocol = self.factory(header, client, port)
        coro = self.loop.connect_accepted_socket(
            lambda: protocol,
            conn,
            ssl=self.tls,
            ssl_handshake_timeout=self.handshake_timeout if self.tls is not None else None,
        )
        report = self.stage.on_event if self.tls is not None else None
        Handshake(self.stage, self.loop.create_task(coro), report, client)


class _PendingHeader:
    """A trusted connection whose PROXY header is not complete yet."""

    __slots__ = ("conn", "fd", "listener", "peer", "preface", "timer")

    def __init__(self, listener: ProxyListener, conn: socket.socket, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.conn = conn
        self.fd = conn.fileno()
        self.peer = peer
        self.preface = Preface()
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = self.listener.loop
        self.listener.stage.hold(self)
        self.timer = loop.call_later(self.listener.stage.timeout, self._timed_out)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        preface = self.preface
        try:
            data = self.conn.recv(_PEEK - preface.buffered, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._fail("connection error")
            return
        if not data:
            self._fail("closed before the PROXY header was complete")
            return
        try:
            # what belongs to the header: all of it while the header is incomplete
            take = preface.feed(data)
        except ProxyProtocolError as exc:
            self._fail(str(exc))
            return
        # consume exactly that: the ClientHello after it stays in the kernel for TLS
        try:
            got = self.conn.recv(take)
        except OSError:
            self._fail("connection error")
            return
        if len(got) != take:  # the kernel gave back less than it let us peek: not Linux
            self._fail("short read of a peeked PROXY header")
            return
        header = preface.header
        if header is None:
            return
        self._finish()
        self.listener.handoff(self.conn, header, self.peer)

    def _finish(self) -> None:
        self.listener.stage.release(self)
        self.listener.loop.remove_reader(self.fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self._fail("no complete PROXY header within PROXY_PROTOCOL_TIMEOUT")

    def _fail(self, reason: str) -> None:
        self.listener.stage.refuse_header(self.peer[0], reason, self.peer[1])
        self.drop()

    def drop(self) -> None:
        self._finish()
        self.conn.close()
