"""The port-forward tunnel endpoints: a WebSocket from the client, a TCP socket to the target.

``GET /port-forward/resources/{id}?ticket=...&port=...`` and
``GET /port-forward/databases/{id}?ticket=...``, served by the API app
(:class:`PortForwardSockets` is its endpoint group). A request that is not a WebSocket
opening handshake is answered with the API's error document (400, or 426). Otherwise, in a
tracked task: the ticket is redeemed (``GETDEL``, once on every node), checked against the
path's target (and the resource's port), the target looked up in the worker's configuration
snapshot, and its host:port (the admin's, never the user's) connected to. Only then is the
101 sent and the bridge started; any refusal is a 101 followed at once by a Close with its
code (4010, 4003, 4005, 4004, 1013), so that WebSocket clients, which cannot read an HTTP
refusal's body, see why.

Once bridged, :class:`Tunnel` is the client side's ``TunnelPeer`` and :class:`TargetSide`
the target socket's ``asyncio.Protocol``; :class:`~edge.tunnels.bridge.Bridge` does the
WebSocket. Backpressure is coupled both ways with the transports' own signals: the client's
socket full (``pause_producing``) pauses reading the target; the target's full
(``pause_writing``) pauses reading the client (``pipe.pause_tunnel``). So a tunnel holds at
most about a write buffer and one read per direction, whatever the two speeds.

Timers: the session ends after ``PORT_FORWARD_MAX_SESSION_SECONDS`` (4008); a Ping every
``PORT_FORWARD_PING_INTERVAL``, and 1011 when the previous one got no Pong (unless either
direction was held up by backpressure meanwhile: the Pong may be queued behind the data,
and a slow peer is not a dead one); after the edge's Close, the client has
``CLOSE_TIMEOUT`` to answer before its socket closes anyway.

The ticket is a credential: it is never logged (the access log shows ``ex.path``, without
the query) and never put in an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic
from typing import Any
from urllib.parse import parse_qs

from redis.asyncio import Redis
from redis.exceptions import RedisError

from edge.api.http import ApiError, error_response
from edge.api.redis_store import REDIS_TIMEOUT
from edge.api.request import Endpoint
from edge.api.router import Router
from edge.config.snapshot import Snapshot
from edge.http1.exchange import DownstreamPipe, Exchange, Headers
from edge.settings import Settings
from edge.tunnels.bridge import (
    DATABASE_NOT_READY,
    GOING_AWAY,
    INTERNAL_ERROR,
    NORMAL,
    PORT_MISMATCH,
    SESSION_TIMEOUT,
    TARGET_UNREACHABLE,
    TICKET_INVALID,
    TRY_AGAIN_LATER,
    Actions,
    BadHandshake,
    Bridge,
    Handshake,
    Phase,
    parse_handshake,
)
from edge.tunnels.registry import TunnelRegistry
from edge.tunnels.tickets import Ticket, redeem

__all__ = [
    "CLOSE_TIMEOUT",
    "DATABASE_PATH",
    "RESOURCE_PATH",
    "NotAWebSocket",
    "PortForwardSockets",
    "TargetSide",
    "Tunnel",
]

log = logging.getLogger("edge.tunnels")

RESOURCE_PATH = "/port-forward/resources/{id}"
DATABASE_PATH = "/port-forward/databases/{id}"
CLOSE_TIMEOUT = 5.0  # seconds the client has to answer the edge's Close

_REASONS = {
    TICKET_INVALID: "invalid ticket",
    PORT_MISMATCH: "port mismatch",
    TARGET_UNREACHABLE: "target unreachable",
    DATABASE_NOT_READY: "database not ready",
    TRY_AGAIN_LATER: "ticket store unavailable",
}


class NotAWebSocket(ApiError):
    """A request to a tunnel endpoint that is no WebSocket opening handshake (426 when it
    asks for no upgrade at all, or for another WebSocket version)."""

    status = 400
    public_message = "this endpoint takes a WebSocket upgrade only"

    def __init__(self, problem: BadHandshake) -> None:
        super().__init__(str(problem), public_message=str(problem), status=problem.status)
        self._headers = problem.headers

    def headers(self) -> Headers:
        return list(getattr(self, "_headers", []))


# ---------------------------------------------------------------------------- the sockets


class TargetSide(asyncio.Protocol):
    """The target's socket.

    A target may speak first (SMTP, SSH, MySQL greet their clients), before the 101 is
    out: until :meth:`begin`, what it sends is kept (one read: reading pauses at once)
    and so is its FIN, then handed on in order.
    """

    __slots__ = ("_early", "_early_eof", "_ended", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self._ended = False  # our FIN is sent (or the socket closing): nothing more goes
        self._early: list[bytes] | None = []  # None once the bridge runs
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pause_reading()

    def data_received(self, data: bytes) -> None:
        early = self._early
        if early is None:
            self.tunnel.target_data(data)
        else:
            early.append(data)
            self.pause_reading()

    def eof_received(self) -> bool:
        if self._early is not None:
            self._early_eof = True
            return True  # our side stays open until the bridge decides
        return self.tunnel.target_eof()

    def begin(self, reading: bool) -> None:
        """The bridge runs: what came before it goes on, then reading starts if
        ``reading`` (the client's socket may be full already)."""
        early, self._early = self._early or [], None
        for data in early:
            self.tunnel.target_data(data)
        if self._early_eof:
            if not self.tunnel.target_eof():
                self.close()
        elif reading:
            self.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tunnel.target_lost(exc)

    def pause_writing(self) -> None:
        self.tunnel.target_writable(False)

    def resume_writing(self) -> None:
        self.tunnel.target_writable(True)

    # what the tunnel does to it
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._ended:
            self.transport.write(data)

    def write_eof(self) -> None:
        transport = self.transport
        if transport is not None and not self._ended and transport.can_write_eof():
            self._ended = True
            transport.write_eof()

    def close(self) -> None:
        """Close once what is buffered is out; a target that does not read it in
        ``CLOSE_TIMEOUT`` is aborted (so a closed tunnel never lingers)."""
        transport = self.transport
        self._ended = True
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # the transport's own state, not a flag of ours: it is the truth whatever the loop
    def pause_reading(self) -> None:
        transport = self.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and self._early is None and not transport.is_closing():
            if not transport.is_reading():
                transport.resume_reading()


class ClientEnd:
    """The client's side of a switched connection, after the 101: the WebSocket
    (:class:`~edge.tunnels.bridge.Bridge`), the closing handshake and its timer. Without a
    target it is a refusal: 101, Close, wait for the client's Close, done."""

    def __init__(self, ex: Exchange, max_message: int) -> None:
        self.ex = ex
        self.loop = asyncio.get_running_loop()
        self.max_message = max_message
        self.bridge: Bridge | None = None
        self.pipe: DownstreamPipe | None = None
        self.target: TargetSide | None = None
        self.bytes_in = 0  # client -> target
        self.bytes_out = 0  # target -> client
        self.finished = False
        self._close_timer: asyncio.TimerHandle | None = None

    def switch(self, handshake: Handshake) -> bytes:
        """Send the 101 and take the socket: the bytes that came after the request head."""
        self.bridge = Bridge(self.max_message, half_close=handshake.subprotocol is not None)
        leftover = self.ex.switch_protocols(handshake.accept_headers(), self)
        self.pipe = self.ex.pipe
        return leftover

    def refuse(self, handshake: Handshake, code: int) -> None:
        """101 then Close ``code`` at once: how a WebSocket client learns the reason (or
        nothing, when the client is gone already)."""
        if self.ex.finished:
            self.finish()
            return
        leftover = self.switch(handshake)
        assert self.bridge is not None
        self.apply(self.bridge.close(code, _REASONS.get(code, "")))
        if leftover:
            self.tunnel_data(leftover)

    def apply(self, out: Actions) -> None:
        """Carry out what the bridge asked, in its order."""
        target = self.target
        if target is not None:
            if out.to_target:
                self.bytes_in += len(out.to_target)
                target.write(out.to_target)
            if out.eof_to_target:
                target.write_eof()
            if out.close_target:
                target.close()
        if out.to_client and self.pipe is not None:
            self.pipe.tunnel_write(out.to_client)
        if out.closed is not None:
            self.closing(out.closed)
        if out.done:
            self.finish()

    def closing(self, code: int) -> None:
        """The WebSocket began closing with ``code``: the client's answer is awaited for
        CLOSE_TIMEOUT at most."""
        if self._close_timer is None and not self.finished:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.finish)

    def finish(self) -> None:
        """Both sockets close (the client's once our last bytes are out)."""
        if self.finished:
            return
        self.finished = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.target is not None:
            self.target.close()
        if self.pipe is not None:
            self.pipe.tunnel_close()  # logs the exchange (101, path without query)

    # ------------------------------------------------------------------ TunnelPeer
    def tunnel_data(self, data: bytes) -> None:
        if self.bridge is not None:
            self.apply(self.bridge.from_client(data))

    def tunnel_eof(self) -> None:
        if self.bridge is not None:
            self.apply(self.bridge.client_eof())
        self.finish()

    def tunnel_lost(self) -> None:
        self.pipe = None  # the connection is gone: nothing more to write or close there
        if self.bridge is not None and self.bridge.phase is not Phase.CLOSED:
            self.apply(self.bridge.client_eof())
        self.finish()

    def pause_producing(self) -> None:
        pass

    def resume_producing(self) -> None:
        pass

    def going_away(self) -> None:
        pass  # a refusal is closing already

    def withdraw(self, code: int) -> None:
        pass


class Tunnel(ClientEnd):
    """One live tunnel (``LiveTunnel`` in the registry from its redemption on)."""

    def __init__(
        self, ex: Exchange, ticket: Ticket, registry: TunnelRegistry, settings: Settings
    ) -> None:
        super().__init__(ex, settings.port_forward_max_message)
        self.ticket = ticket
        self.started = monotonic()
        self.registry = registry
        self.settings = settings
        self._pending: tuple[int, str] | None = None  # closed before the bridge ran
        self._client_full = False
        self._target_full = False
        self._stalled = False  # backpressure since the last ping: its Pong may be late
        self._ping_timer: asyncio.TimerHandle | None = None
        self._session_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ opening
    def start(self, handshake: Handshake, side: TargetSide) -> None:
        """The target is connected: 101 and bridge, unless the tunnel was closed (revoked,
        drained) or the client left meanwhile."""
        if self.ex.finished:  # the client went away while we connected
            side.abort()
            self.finish()
            return
        if side.transport is None:  # the target closed at once
            self.refuse(handshake, TARGET_UNREACHABLE)
            return
        if self._pending is not None:
            side.abort()
            self.refuse(handshake, self._pending[0])
            return
        self.target = side
        leftover = self.switch(handshake)
        s = self.settings
        loop = self.loop
        self._session_timer = loop.call_later(
            s.port_forward_max_session_seconds, self.close, SESSION_TIMEOUT, "session time is up"
        )
        self._ping_timer = loop.call_later(s.port_forward_ping_interval, self._tick)
        fields = self._fields()
        fields["subprotocol"] = handshake.subprotocol or ""
        log.info("tunnel opened", extra={"fields": fields})
        side.begin(reading=not self._client_full)  # switch() may have found the client full
        if leftover:
            self.tunnel_data(leftover)

    def refuse(self, handshake: Handshake, code: int) -> None:
        fields = self._fields()
        fields["code"] = code
        log.info("tunnel refused", extra={"fields": fields})
        super().refuse(handshake, code)

    def abandon(self) -> None:
        """The opening was cancelled (the worker is stopping): end without a word."""
        self.ex.abort()
        self.finish()

    # ------------------------------------------------------------------ LiveTunnel
    def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``: the keeper's revocation (4010), the drain (1001), the
        session's end (4008)."""
        if self.bridge is None:
            if self._pending is None:
                self._pending = (code, reason)
            return
        self.apply(self.bridge.close(code, reason))

    def going_away(self) -> None:
        self.close(GOING_AWAY, "edge going away")

    def withdraw(self, code: int) -> None:
        self.close(code)

    # ------------------------------------------------------------------ the client's side
    def pause_producing(self) -> None:
        """The client's socket is full: stop reading the target; Pongs wait too."""
        self._client_full = self._stalled = True
        if self.target is not None:
            self.target.pause_reading()
        if self.bridge is not None:
            self.bridge.client_writable(False)

    def resume_producing(self) -> None:
        self._client_full = False
        if self.target is not None:
            self.target.resume_reading()
        if self.bridge is not None:
            owed = self.bridge.client_writable(True)
            if owed and self.pipe is not None:
                self.pipe.tunnel_write(owed)

    # ------------------------------------------------------------------ the target's side
    def target_data(self, data: bytes) -> None:
        bridge = self.bridge
        if bridge is None or self.pipe is None:
            return
        frames = bridge.from_target(data)
        if frames:
            self.bytes_out += len(data)
            self.pipe.tunnel_write(frames)

    def target_eof(self) -> bool:
        """The target's FIN: keep its socket open for our writes while the client still
        sends (half-close), else let it close."""
        if self.bridge is None:
            return False
        out = self.bridge.target_eof()
        self.apply(out)
        return self.bridge.phase is Phase.OPEN

    def target_lost(self, exc: Exception | None) -> None:
        side, self.target = self.target, None
        if side is None or self.bridge is None:
            return  # before the bridge: start() sees the transport gone
        if self.bridge.phase is Phase.OPEN:
            # reset, or closed after a half-close while the client still had bytes to send
            code = INTERNAL_ERROR if exc is not None else NORMAL
            self.apply(self.bridge.close(code, "target closed" if exc is None else "target reset"))

    def target_writable(self, writable: bool) -> None:
        """The target's socket filled (False) or drained (True): reading the client
        follows."""
        self._target_full = not writable
        if not writable:
            self._stalled = True
        if self.pipe is not None:
            if writable:
                self.pipe.resume_tunnel()
            else:
                self.pipe.pause_tunnel()

    # ------------------------------------------------------------------ timers and the end
    def _tick(self) -> None:
        self._ping_timer = None
        bridge = self.bridge
        if bridge is None or bridge.phase is not Phase.OPEN or self.pipe is None:
            return
        if bridge.pong_overdue and not self._stalled:
            self.close(INTERNAL_ERROR, "no pong")
            return
        self._stalled = self._client_full or self._target_full
        self.pipe.tunnel_write(bridge.ping())
        self._ping_timer = self.loop.call_later(
            self.settings.port_forward_ping_interval, self._tick
        )

    def closing(self, code: int) -> None:
        self._stop_timers()
        super().closing(code)

    def _stop_timers(self) -> None:
        for timer in (self._ping_timer, self._session_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._session_timer = None

    def finish(self) -> None:
        if self.finished:
            return
        self._stop_timers()
        super().finish()
        self.registry.remove(self)
        if self.bridge is not None:
            fields = self._fields()
            fields.update(
                code=self.bridge.code,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                seconds=round(monotonic() - self.started, 3),
            )
            log.info("tunnel closed", extra={"fields": fields})

    def _fields(self) -> dict[str, Any]:
        t = self.ticket
        return {
            "request_id": self.ex.request_id,
            "target_type": t.target_type,
            "target_id": t.target_id,
            "project_id": t.project_id,
            "user_id": t.user_id,
            "session_id": t.session_id,
        }


# ---------------------------------------------------------------------------- endpoints


def _query(target: bytes) -> dict[str, list[str]]:
    _, _, query = target.partition(b"?")
    return parse_qs(query.decode("latin-1"), keep_blank_values=True)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name, [])
    return values[0] if len(values) == 1 else None


class PortForwardSockets:
    """The tunnel endpoints (an ``EndpointGroup``).

    ``redis``: the worker's Redis client, asked when a ticket is redeemed; ``snapshot``:
    the configuration of the moment (its ``app_resources`` and ``databases``);
    ``registry``: where live tunnels are kept (revocation, drain, slots, ``/health``).
    """

    def __init__(
        self,
        redis: Callable[[], Redis],
        snapshot: Callable[[], Snapshot],
        settings: Settings,
        registry: TunnelRegistry,
    ) -> None:
        self.redis = redis
        self.snapshot = snapshot
        self.settings = settings
        self.registry = registry
        self.tasks: set[asyncio.Task[None]] = set()

    def register(self, router: Router[Endpoint[Any]]) -> None:
        router.add("GET", RESOURCE_PATH, Endpoint(None, upgrade=self.resource))
        router.add("GET", DATABASE_PATH, Endpoint(None, upgrade=self.database))

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def resource(self, ex: Exchange, params: dict[str, str]) -> None:
        self._upgrade(ex, "resource", params["id"])

    def database(self, ex: Exchange, params: dict[str, str]) -> None:
        self._upgrade(ex, "database", params["id"])

    def _upgrade(self, ex: Exchange, kind: str, target_id: str) -> None:
        try:
            handshake = parse_handshake(ex.method, ex.request.http_version, ex.headers)
        except BadHandshake as problem:
            err = NotAWebSocket(problem)
            fields = {"request_id": ex.request_id, "status": err.status, "detail": str(err)}
            log.info("tunnel: not a websocket", extra={"fields": fields})
            error_response(ex, err)
            return
        task = asyncio.get_running_loop().create_task(
            self._open(ex, handshake, kind, target_id), name=f"tunnel-{ex.request_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, ex: Exchange, handshake: Handshake, kind: str, target_id: str) -> None:
        try:
            await self._opening(ex, handshake, kind, target_id)
        except Exception:
            # a bug of ours: logged with the request id, the client gets 1011 (or a reset)
            log.exception("tunnel failed", extra={"fields": {"request_id": ex.request_id}})
            if not ex.response_started:
                self._refuse(ex, handshake, INTERNAL_ERROR)
            elif not ex.finished:
                ex.abort()

    async def _opening(self, ex: Exchange, handshake: Handshake, kind: str, target_id: str) -> None:
        query = _query(ex.target)
        s = self.settings
        if self.registry.draining:
            # going away already: the ticket is left unused for another node
            self._refuse(ex, handshake, GOING_AWAY)
            return
        try:
            ticket = await self._redeem(ex, _one(query, "ticket"))
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            fields = {"request_id": ex.request_id, "error": type(exc).__name__}
            log.warning("tunnel: ticket store unavailable", extra={"fields": fields})
            self._refuse(ex, handshake, TRY_AGAIN_LATER)
            return
        if ticket is None or ticket.target_type != kind or ticket.target_id != target_id:
            if ticket is not None:
                self.registry.discard(ticket)  # used up for nothing: its slot is free again
            self._refuse(ex, handshake, TICKET_INVALID)
            return
        ex.user = ticket.user_id  # the logs' user (the ticket carries the id, not the name)
        tunnel = Tunnel(ex, ticket, self.registry, s)
        self.registry.add(tunnel)
        try:
            found = self._address(ticket, _one(query, "port"))
            if isinstance(found, int):
                tunnel.refuse(handshake, found)
                return
            host, port = found
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(s.port_forward_connect_timeout):
                    _, side = await loop.create_connection(lambda: TargetSide(tunnel), host, port)
            except OSError as exc:  # refused, unreachable, timed out
                fields = tunnel._fields()
                fields.update(error=type(exc).__name__, detail=str(exc)[:200])
                log.info("tunnel: target not reached", extra={"fields": fields})
                tunnel.refuse(handshake, TARGET_UNREACHABLE)
                return
            tunnel.start(handshake, side)
        except BaseException as exc:
            if tunnel.bridge is None:
                if isinstance(exc, Exception):
                    tunnel.finish()  # the slot is given back; _open answers 1011
                else:
                    tunnel.abandon()  # cancelled (the worker stops): no word to the client
            raise

    async def _redeem(self, ex: Exchange, text: str | None) -> Ticket | None:
        if text is None:
            return None
        async with asyncio.timeout(REDIS_TIMEOUT):
            return await redeem(self.redis(), text)

    def _address(self, ticket: Ticket, port: str | None) -> tuple[str, int] | int:
        """Where the ticket's tunnel goes, or the close code saying why it goes nowhere."""
        snapshot = self.snapshot()
        if ticket.target_type == "resource":
            if port is None or not (port.isascii() and port.isdigit()) or int(port) != ticket.port:
                return PORT_MISMATCH
            resource = snapshot.app_resources.get(ticket.target_id)
            if resource is None:
                return TARGET_UNREACHABLE  # deleted since the ticket was bought
            if resource.project_id != ticket.project_id:
                return TICKET_INVALID
            if not resource.allows(ticket.port):
                return PORT_MISMATCH  # no longer one of the resource's ports
            return resource.host, ticket.port
        database = snapshot.databases.get(ticket.target_id)
        if database is None:
            return TARGET_UNREACHABLE
        if database.project_id != ticket.project_id:
            return TICKET_INVALID
        if not database.ready:
            return DATABASE_NOT_READY
        return database.host, database.port

    def _refuse(self, ex: Exchange, handshake: Handshake, code: int) -> None:
        """A refusal without a live tunnel (no ticket taken): 101, Close ``code``."""
        log.info("tunnel refused", extra={"fields": {"request_id": ex.request_id, "code": code}})
        ClientEnd(ex, self.settings.port_forward_max_message).refuse(handshake, code)
