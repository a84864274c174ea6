"""PROXY-protocol listeners: trusted peers only, header first, nothing lost.

The plain listener needs none of the machinery below: its ``HttpConnection`` reads the
header itself (``ProxyStage``) and hands the bytes after it to HTTP. The TLS listener
cannot do that, because the TLS layer must read the ClientHello from the socket:

HAProxy (``send-proxy`` / ``send-proxy-v2``) writes the PROXY header and usually the first
bytes of the payload (an HTTP request, or a TLS ClientHello) in one segment.
``loop.start_tls()`` cannot take bytes that were already read (python/cpython#142352,
MagicStack/uvloop#707), so the header is never read past: each time the socket is
readable the bytes waiting in the kernel are *peeked* (``MSG_PEEK``) and given to the
sans-IO parser (``edge.net.proxy_protocol``), then exactly the header's bytes are
consumed. Bytes that are only a prefix of a header are consumed too (they cannot be
anything else), so a header trickling in byte by byte never makes the socket spin as
readable. Once the header is complete, the socket, with the payload still unread in the
kernel, goes to ``loop.connect_accepted_socket`` (with TLS on the TLS listener), and the
HTTP layer sees the header's client address as the peer.

Refusals send nothing: an untrusted peer is closed at accept, an invalid header, end of
stream or the ``PROXY_PROTOCOL_TIMEOUT`` deadline close the socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable

from edge.net.proxy_protocol import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)

log = logging.getLogger("edge.net")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# makes the connection's protocol once the header is known
ProtocolFactory = Callable[[ProxyHeader, tuple[str, int], int], asyncio.Protocol]

_PEEK = max(MAX_V1_HEADER, MAX_V2_HEADER)  # a buffer this long always decides
_ACCEPTS_PER_WAKEUP = 64


class TrustedPeers:
    """``PROXY_TRUSTED_CIDRS``: the peers allowed to speak to a PROXY listener."""

    __slots__ = ("_cache", "_networks")

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        known = self._cache.get(host)
        if known is None:
            try:
                addr = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                return False
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped  # a dual-stack listener sees ::ffff:a.b.c.d
            known = any(addr in net for net in self._networks)
            if len(self._cache) < 4096:
                self._cache[host] = known
        return known


class ProxyStage:
    """What every connection of one PROXY listener shares: trust, deadline, counters."""

    __slots__ = ("invalid", "refused", "timeout", "trusted")

    def __init__(self, trusted: TrustedPeers, timeout: float) -> None:
        self.trusted = trusted
        self.timeout = timeout
        self.refused = 0  # untrusted peers
        self.invalid = 0  # bad headers, timeouts, early close

    def refuse_peer(self, peer: str) -> None:
        """Count and log a connection from a peer not trusted to send PROXY headers."""
        self.refused += 1
        log.warning("untrusted peer on a PROXY listener", extra={"fields": {"peer": peer}})

    def refuse_header(self, peer: str, reason: str) -> None:
        """Count and log a connection whose PROXY header was bad, late or cut short."""
        self.invalid += 1
        log.info("PROXY header refused", extra={"fields": {"peer": peer, "reason": reason}})


def client_address(header: ProxyHeader, peer: tuple[str, int]) -> tuple[str, int]:
    """The request's client: the header's source, or the socket peer for LOCAL/UNKNOWN."""
    client = peer if header.local or header.source is None else header.source
    if client[0].startswith("::ffff:"):
        # a dual-stack HAProxy reports IPv4 clients as IPv4-mapped IPv6 addresses
        mapped = ipaddress.IPv6Address(client[0]).ipv4_mapped
        if mapped is not None:
            client = (str(mapped), client[1])
    return client


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
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.stage = stage
        self.trusted = stage.trusted
        self.header_timeout = stage.timeout
        self.factory = factory
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.pending: set[_PendingHeader] = set()
        self.tasks: set[asyncio.Task[object]] = set()
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
        return bool(self.pending or self.tasks)

    def abort(self) -> None:
        """Drop the connections still reading their header (a drain that ran out of time)."""
        for pending in list(self.pending):
            pending.drop()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the next wakeup retries
                log.warning("accept failed", extra={"fields": {"error": exc.strerror}})
                return
            if addr[0] not in self.trusted:
                self.stage.refuse_peer(addr[0])
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _PendingHeader(self, conn, (addr[0], addr[1])).start()

    def handoff(self, conn: socket.socket, header: ProxyHeader, peer: tuple[str, int]) -> None:
        client = client_address(header, peer)
        if header.local or header.destination is None:
            server_port = int(conn.getsockname()[1])
        else:
            server_port = header.destination[1]
        protocol = self.factory(header, client, server_port)
        coro = self.loop.connect_accepted_socket(
            lambda: protocol,
            conn,
            ssl=self.tls,
            ssl_handshake_timeout=self.handshake_timeout if self.tls is not None else None,
        )
        task: asyncio.Task[object] = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._handed_off)

    def _handed_off(self, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # a failed TLS handshake or a peer gone: the transport is already closed
            log.debug("connection setup failed", extra={"fields": {"error": str(task.exception())}})


class _PendingHeader:
    """A trusted connection whose PROXY header is not complete yet."""

    __slots__ = ("buf", "conn", "fd", "listener", "peer", "timer")

    def __init__(self, listener: ProxyListener, conn: socket.socket, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.conn = conn
        self.fd = conn.fileno()
        self.peer = peer
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = self.listener.loop
        self.listener.pending.add(self)
        self.timer = loop.call_later(self.listener.header_timeout, self._timed_out)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self.conn.recv(_PEEK - len(self.buf), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._fail("connection error")
            return
        if not data:
            self._fail("closed before the PROXY header was complete")
            return
        buf = self.buf + data
        try:
            header = parse_proxy_header(buf)
        except ProxyProtocolError as exc:
            self._fail(str(exc))
            return
        # consume exactly what belongs to the header: all of it while it is incomplete
        take = len(data) if header is None else header.length - len(self.buf)
        try:
            got = self.conn.recv(take)
        except OSError:
            self._fail("connection error")
            return
        if len(got) != take:  # the kernel gave back less than it let us peek: not Linux
            self._fail("short read of a peeked PROXY header")
            return
        if header is None:
            self.buf = buf
            return
        self._finish()
        self.listener.handoff(self.conn, header, self.peer)

    def _finish(self) -> None:
        self.listener.pending.discard(self)
        self.listener.loop.remove_reader(self.fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self._fail("no complete PROXY header within PROXY_PROTOCOL_TIMEOUT")

    def _fail(self, reason: str) -> None:
        self.listener.stage.refuse_header(self.peer[0], reason)
        self.drop()

    def drop(self) -> None:
        self._finish()
        self.conn.close()
