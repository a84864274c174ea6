"""The PROXY preface: the stage every connection of a PROXY listener passes first.

HAProxy (``send-proxy`` / ``send-proxy-v2``) opens each connection with a PROXY header
naming the real client. Both PROXY listeners read it with the pieces here; only the way
bytes reach them differs:

* ``ProxyStage``: what all connections of one listener share: the trusted peers
  (``PROXY_TRUSTED_CIDRS``), the deadline (``PROXY_PROTOCOL_TIMEOUT``), the ``refused`` and
  ``invalid`` counters ``/health`` reports, and the connections still in the preface, so a
  drain can wait for them (``idle``) and drop them when its time is up (``abort``).
* ``Preface``: one connection's header, sans-IO. ``feed(data)`` answers how many bytes of
  ``data`` belong to the header; whatever follows is the next layer's, never re-read.
* ``PrefaceProtocol``: the plain listener's shell. It reads the header from the socket,
  then hands the transport to the HTTP connection (``set_protocol``) with the bytes that
  came after the header in the same read.
* The TLS listener (``edge.net.proxied``) peeks instead of reading, because the TLS layer
  must read the ClientHello itself, and feeds the same ``Preface``.

Refusals send nothing: an untrusted peer is closed at once; an invalid header, end of
stream or the deadline close the connection (spec 2.1: "abort the connection").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, cast

from edge.health import Report
from edge.net.proxy_protocol import ProxyHeader, ProxyProtocolError, parse_proxy_header
from edge.observe.observer import PROXY_REFUSED, TLS_FAILED, TLS_OK, ConnectionEvents

log = logging.getLogger("edge.net")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# makes the connection's next protocol once the header is known:
# (header, client address, the port the client connected to) -> protocol
ProtocolFactory = Callable[[ProxyHeader, tuple[str, int], int], asyncio.Protocol]


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


class Pending(Protocol):
    """A connection still in the preface (or handing over to the next layer)."""

    def drop(self) -> None: ...


class PendingSet:
    """Connections accepted and not handed to HTTP yet (a preface, a ClientHello being
    read, a TLS handshake), so a drain can wait for them (``idle``) and drop them when
    its time is up (``abort``)."""

    __slots__ = ("_idle", "pending")

    def __init__(self) -> None:
        self.pending: set[Pending] = set()
        self._idle: asyncio.Event | None = None

    def hold(self, item: Pending) -> None:
        self.pending.add(item)
        if self._idle is not None:
            self._idle.clear()

    def release(self, item: Pending) -> None:
        self.pending.discard(item)
        if not self.pending and self._idle is not None:
            self._idle.set()

    @property
    def busy(self) -> bool:
        """Connections accepted that are not HTTP connections yet (header, TLS handshake)."""
        return bool(self.pending)

    @property
    def idle(self) -> asyncio.Event:
        """Set while no connection is in the preface: what a drain waits on."""
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self.pending:
                self._idle.set()
        return self._idle

    def abort(self) -> None:
        """Drop the connections still in the preface (a drain that ran out of time)."""
        for item in list(self.pending):
            item.drop()


class ProxyStage(PendingSet):
    """What every connection of one PROXY listener shares: trust, deadline, counters,
    and the connections not handed to HTTP yet."""

    __slots__ = ("invalid", "on_event", "refused", "timeout", "trusted")

    def __init__(self, trusted: TrustedPeers, timeout: float) -> None:
        super().__init__()
        self.trusted = trusted
        self.timeout = timeout
        self.refused = 0  # untrusted peers
        self.invalid = 0  # bad headers, timeouts, early close
        # told of each refusal (the request log's events): the worker sets it
        self.on_event: ConnectionEvents | None = None

    def refuse_peer(self, peer: str, port: int = 0) -> None:
        """Count and log a connection from a peer not trusted to send PROXY headers."""
        self.refused += 1
        log.warning("untrusted peer on a PROXY listener", extra={"fields": {"peer": peer}})
        if self.on_event is not None:
            self.on_event(PROXY_REFUSED, peer, port, "", "untrusted peer")

    def refuse_header(self, peer: str, reason: str, port: int = 0) -> None:
        """Count and log a connection whose PROXY header was bad, late or cut short."""
        self.invalid += 1
        log.info("PROXY header refused", extra={"fields": {"peer": peer, "reason": reason}})
        if self.on_event is not None:
            self.on_event(PROXY_REFUSED, peer, port, "", reason)


class Handshake:
    """A connection handed to the loop's TLS layer, until its HTTP connection is made.

    With ``report`` (a TLS handshake: its client address), its outcome is told as a
    connection event: ``tls_handshake_ok``, or ``tls_handshake_failed`` with the reason.
    """

    __slots__ = ("client", "report", "stage", "task")

    def __init__(
        self,
        stage: PendingSet,
        task: asyncio.Task[object],
        report: ConnectionEvents | None = None,
        client: tuple[str, int] = ("", 0),
    ) -> None:
        self.stage = stage
        self.task = task
        self.report = report
        self.client = client
        stage.hold(self)
        task.add_done_callback(self._done)

    def drop(self) -> None:
        self.task.cancel()

    def _done(self, task: asyncio.Task[object]) -> None:
        self.stage.release(self)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # a failed TLS handshake or a peer gone: the transport is already closed
            log.debug("connection setup failed", extra={"fields": {"error": str(exc)}})
        report = self.report
        if report is not None:
            ip, port = self.client
            if exc is None:
                report(TLS_OK, ip, port, "", "")
            else:
                report(TLS_FAILED, ip, port, "", handshake_failure(exc))


def handshake_failure(exc: BaseException) -> str:
    """A failed handshake's reason, short and free of request data."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)[:120]
    if isinstance(exc, TimeoutError):
        return "handshake timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    return exc.__class__.__name__


def stages_report(stages: Sequence[ProxyStage]) -> Report:
    """The PROXY listeners' refusals, summed over their stages."""
    return Report(
        {
            "proxy_protocol": {
                "refused_peers": sum(stage.refused for stage in stages),
                "invalid_headers": sum(stage.invalid for stage in stages),
            }
        }
    )


def client_address(header: ProxyHeader, peer: tuple[str, int]) -> tuple[str, int]:
    """The request's client: the header's source, or the socket peer for LOCAL/UNKNOWN."""
    client = peer if header.local or header.source is None else header.source
    if client[0].startswith("::ffff:"):
        # a dual-stack HAProxy reports IPv4 clients as IPv4-mapped IPv6 addresses
        mapped = ipaddress.IPv6Address(client[0]).ipv4_mapped
        if mapped is not None:
            client = (str(mapped), client[1])
    return client


def server_port(header: ProxyHeader, local_port: int) -> int:
    """The port the client connected to: the header's destination, else our socket's."""
    if header.local or header.destination is None:
        return local_port
    return header.destination[1]


class Preface:
    """One connection's PROXY header, from bytes as they arrive (sans-IO).

    ``feed`` takes the next bytes and returns how many of them belong to the header: all
    of them while it is incomplete, then exactly its last ones, once ``header`` is set.
    The caller passes the rest on (the plain listener) or leaves it unread in the kernel
    (the TLS listener, which feeds what it peeked). A ``ProxyProtocolError`` is raised at
    the first byte that cannot start a valid header.
    """

    __slots__ = ("_buf", "header")

    def __init__(self) -> None:
        self._buf = b""
        self.header: ProxyHeader | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete header taken so far."""
        return len(self._buf)

    def feed(self, data: bytes) -> int:
        assert self.header is None, "the header is complete"
        buf = self._buf + data if self._buf else data
        header = parse_proxy_header(buf)
        if header is None:
            self._buf = buf
            return len(data)
        used = header.length - len(self._buf)
        self._buf = b""
        self.header = header
        return used


class PrefaceProtocol(asyncio.Protocol):
    """The plain PROXY listener's first protocol: the header, then ``next_protocol``.

    Once the header is complete the transport goes to the protocol ``make`` builds, which
    sees ``connection_made`` and then, in the same callback, the bytes that followed the
    header; from then on the transport reads straight into it.
    """

    __slots__ = ("_make", "_peer", "_preface", "_stage", "_timer", "_transport")

    def __init__(self, stage: ProxyStage, make: ProtocolFactory) -> None:
        self._stage = stage
        self._make = make
        self._preface = Preface()
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = (peer[0], peer[1])
        stage = self._stage
        if self._peer[0] not in stage.trusted:
            stage.refuse_peer(*self._peer)
            transport.abort()  # nothing sent
            return
        self._transport = transport
        stage.hold(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(stage.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        try:
            used = self._preface.feed(data)
        except ProxyProtocolError as exc:
            self._refuse(str(exc))
            return
        header = self._preface.header
        if header is not None:
            self._hand_over(header, data[used:])

    def eof_received(self) -> bool | None:
        self._refuse("closed before the PROXY header was complete")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        self._transport = None

    def drop(self) -> None:
        transport = self._transport
        self._done()
        if transport is not None:
            transport.abort()

    def _hand_over(self, header: ProxyHeader, rest: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._done()
        self._transport = None
        sock = transport.get_extra_info("sockname")
        local_port = sock[1] if isinstance(sock, tuple) else 0
        protocol = self._make(
            header, client_address(header, self._peer), server_port(header, local_port)
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest and not transport.is_closing():
            protocol.data_received(rest)

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse("no complete PROXY header within PROXY_PROTOCOL_TIMEOUT")

    def _refuse(self, reason: str) -> None:
        if self._transport is None:
            return
        self._stage.refuse_header(self._peer[0], reason, self._peer[1])
        self.drop()

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stage.release(self)
