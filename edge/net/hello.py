"""On-demand TLS: read the ClientHello's server name before the TLS layer takes the socket.

Python's SNI callback cannot wait, so a handshake for a name with no certificate yet would
get the default certificate however soon the right one arrives. A listener with on-demand
TLS therefore peeks (``MSG_PEEK``) the first bytes of each connection, reads the server name
with the sans-IO :mod:`edge.tls.clienthello`, and asks its :class:`HelloGate` whether to
wait: the gate answers from memory (a certificate is loaded: no wait), and only for a name
it may obtain does the connection wait for it, up to the gate's own deadline. Nothing is
consumed: the TLS layer then reads the ClientHello from the kernel as usual.

A ClientHello that arrives in pieces (rare: it fits one segment) leaves the socket readable
with bytes already peeked, so the reader is taken off and put back a moment later instead
of spinning. Bytes that are not a ClientHello go straight to TLS, which refuses them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from edge.net.listener import accept_ready
from edge.net.preface import Handshake, PendingSet
from edge.observe.observer import ConnectionEvents
from edge.tls.clienthello import MAX_CLIENT_HELLO, Found, NeedMore, read_server_name

__all__ = ["HelloGate", "HelloListener", "PeekHello"]

log = logging.getLogger("edge.net")

_RETRY_PEEK = 0.005  # seconds before peeking again at a ClientHello still incomplete


class HelloGate(Protocol):
    def wanted(self, server_name: str | None) -> bool:
        """Whether a handshake for ``server_name`` should wait (memory only, no I/O)."""

    def obtain(self, server_name: str) -> Awaitable[None]:
        """Return once a certificate for ``server_name`` is loaded, or the gate gives up."""


class PeekHello:
    """One connection's ClientHello, read without consuming it; ``then()`` once decided."""

    __slots__ = ("conn", "fd", "gate", "loop", "pending", "task", "then", "timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: socket.socket,
        gate: HelloGate,
        pending: PendingSet,
        timeout: float,
        then: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.conn = conn
        self.fd = conn.fileno()
        self.gate = gate
        self.pending = pending
        self.then = then
        self.task: asyncio.Task[None] | None = None
        pending.hold(self)
        self.timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._timed_out)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self.conn.recv(MAX_CLIENT_HELLO, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop()
            return
        if not data:
            self.drop()
            return
        self.loop.remove_reader(self.fd)
        hello = read_server_name(data)
        if isinstance(hello, NeedMore):
            self.loop.call_later(_RETRY_PEEK, self._peek_again)
            return
        name = hello.server_name if isinstance(hello, Found) else None
        if name is None or not self.gate.wanted(name):
            self._go()
            return
        self.task = self.loop.create_task(self._obtain(name))

    def _peek_again(self) -> None:
        if self.timer is not None:  # not timed out or dropped meanwhile
            self.loop.add_reader(self.fd, self._readable)

    async def _obtain(self, name: str) -> None:
        try:
            await self.gate.obtain(name)
        except Exception:
            log.exception("on-demand certificate check failed", extra={"fields": {"sni": name}})
        self._go()

    def _go(self) -> None:
        if self.timer is None:
            return
        self._finish()
        self.then()

    def _finish(self) -> None:
        self.pending.release(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self.drop()

    def drop(self) -> None:
        self.loop.remove_reader(self.fd)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._finish()
        self.conn.close()


class HelloListener:
    """A TLS listener: accept, read the ClientHello's name (waiting on the gate if it says
    so; without a gate, no peek), then hand the socket to the loop's TLS layer, telling
    ``report`` how each handshake ended."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext,
        gate: HelloGate | None,
        handshake_timeout: float,
        wait: float,
        report: ConnectionEvents | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.tls = tls
        self.gate = gate
        self.report = report
        self.handshake_timeout = handshake_timeout
        # the ClientHello's deadline: the handshake's, plus what the gate may wait
        self.hello_timeout = handshake_timeout + wait
        self.pending = PendingSet()
        self._serving = False

    def start(self) -> None:
        self._serving = True
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _accept(self) -> None:
        gate = self.gate
        for conn, peer in accept_ready(self.sock):
            client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
            if gate is None:
                self._start_tls(conn, client)
                continue
            PeekHello(
                self.loop,
                conn,
                gate,
                self.pending,
                self.hello_timeout,
                functools.partial(self._start_tls, conn, client),
            )

    def _start_tls(self, conn: socket.socket, client: tuple[str, int]) -> None:
        coro = self.loop.connect_accepted_socket(
            self.factory, conn, ssl=self.tls, ssl_handshake_timeout=self.handshake_timeout
        )
        Handshake(self.pending, self.loop.create_task(coro), self.report, client)
