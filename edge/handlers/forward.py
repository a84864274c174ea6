"""Forwarding: the reverse proxy handler.

A ``ProxyCall`` carries one exchange to an upstream connection and back. It is driven by
callbacks only (no task per request) unless a new upstream connection must be opened.
Backpressure is coupled across the two hops: a full upstream write buffer pauses reading
the client, a full client write buffer pauses reading the upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from time import monotonic
from typing import Any

import h11

from edge.errors import (
    EdgeError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponseTimeout,
    UpstreamTotalTimeout,
)
from edge.h11compat import END_OF_MESSAGE, FullItems, full_items, outgoing_request
from edge.http1.exchange import Exchange
from edge.routing.router import Resolution
from edge.routing.target import Target
from edge.upstream.connection import UpstreamConnection, failure_error, retry_on_fresh
from edge.upstream.pool import UpstreamPool

log = logging.getLogger("edge.forward")

# RFC 9110 §7.6.1; Proxy-Connection is a de facto one
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# set by us, never trusted from the client; Expect is answered by the edge itself (it sends
# 100 Continue when it starts reading the body), so the upstream never sees it
REPLACED = frozenset(
    {
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"host",
        b"expect",
        b"x-request-id",
    }
)
VIA = b"1.1 edge"


def _connection_tokens(value: bytes, into: set[bytes]) -> None:
    if value in _COMMON_CONNECTION:
        into.add(_COMMON_CONNECTION[value])  # "keep-alive", "close", "Upgrade": no split
    else:
        into.update(t.strip().lower() for t in value.split(b","))


_COMMON_CONNECTION = {
    v: v.lower() for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade")
}


# tokens of a Connection header that name nothing to remove beyond the hop-by-hop set
_PLAIN_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})


def upstream_request_headers(
    ex: Exchange, target: Target, preserve_host: bool, custom: tuple[tuple[bytes, bytes], ...]
) -> tuple[FullItems, bool]:
    """Request headers for the upstream, and whether this is a protocol upgrade.

    One pass over h11's parsed headers (original name case kept); a second, rare pass only
    when the Connection header names extra hop-by-hop fields (RFC 9110 §7.6.1). The result
    is h11's (raw name, lowercased name, value) form, every field already valid: parsed by
    h11, set by the edge from parsed values, or validated config (``custom``).
    """
    out: FullItems = []
    tokens: set[bytes] = set()
    xff = b""
    host = ex.host_header
    upgrade_value = b""
    chunked = False
    custom_names = {n for n, _ in custom} if custom else ()
    for item in full_items(ex.headers):
        name = item[1]
        if name in HOP_BY_HOP:
            if name == b"connection":
                _connection_tokens(item[2], tokens)
            elif name == b"upgrade":
                upgrade_value = item[2]
            elif name == b"transfer-encoding":
                chunked = True
            continue
        if name in REPLACED:
            continue
        if name == b"x-forwarded-for":
            xff = item[2] if not xff else xff + b", " + item[2]
            continue
        if name in custom_names:
            continue
        out.append(item)
    if tokens - _PLAIN_TOKENS:
        out = [item for item in out if item[1] not in tokens]
    client = ex.client_ip.encode("latin-1")
    out.append((b"Host", b"host", host if preserve_host and host else target.authority))
    out.append((b"X-Forwarded-For", b"x-forwarded-for", xff + b", " + client if xff else client))
    out.append((b"X-Forwarded-Proto", b"x-forwarded-proto", ex.scheme.encode("ascii")))
    if host:
        out.append((b"X-Forwarded-Host", b"x-forwarded-host", host))
    out.append((b"X-Forwarded-Port", b"x-forwarded-port", str(ex.server_port).encode("ascii")))
    out.append((b"X-Real-IP", b"x-real-ip", client))
    out.append((b"Via", b"via", VIA))
    out.append((b"X-Request-Id", b"x-request-id", ex.request_id.encode("ascii")))
    out.extend((name, name, value) for name, value in custom)
    if chunked:
        out.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
    # only WebSocket is tunnelled (RFC 6455); any other upgrade token is dropped, so that
    # e.g. h2c (deprecated by RFC 9113 §3.1) never turns the connection into an unrouted
    # raw pipe to the upstream
    upgrade = b"upgrade" in tokens and _is_websocket(upgrade_value)
    if upgrade:
        out.append((b"Connection", b"connection", b"upgrade"))
        out.append((b"Upgrade", b"upgrade", b"websocket"))
    return out, upgrade


def _is_websocket(upgrade: bytes) -> bool:
    if not upgrade:
        return False
    if upgrade == b"websocket":
        return True
    return any(t.strip().lower() == b"websocket" for t in upgrade.split(b","))


def downstream_response_headers(
    headers: Sequence[tuple[bytes, bytes]],
    custom: tuple[tuple[bytes, bytes], ...],
    switching: bool,
    request_id: bytes,
) -> FullItems:
    """Response headers for the client, in h11's triple form (see upstream_request_headers)."""
    out: FullItems = []
    tokens: set[bytes] = set()
    custom_names = {n for n, _ in custom} if custom else ()
    for item in full_items(headers):
        name = item[1]
        if name in HOP_BY_HOP:
            if name == b"connection":
                _connection_tokens(item[2], tokens)
            if switching and name in (b"upgrade", b"connection"):
                out.append(item)
            continue
        if name in custom_names or name == b"x-request-id":
            continue
        out.append(item)
    if tokens - _PLAIN_TOKENS:
        # Content-Length frames this very response: an upstream naming it in Connection
        # does not get to unframe it
        tokens.discard(b"content-length")
        out = [item for item in out if item[1] not in tokens]
    out.append((b"Via", b"via", VIA))
    out.append((b"X-Request-Id", b"x-request-id", request_id))
    out.extend((name, name, value) for name, value in custom)
    return out


class ProxyCall:
    """One request forwarded to one upstream (with at most one retry on a stale connection)."""

    __slots__ = (
        "_body_done",
        "_cap",
        "_response_custom",
        "_started",
        "conn",
        "ex",
        "forwarder",
        "head",
        "retried",
        "target",
        "upgrade",
    )

    def __init__(self, forwarder: Forwarder, ex: Exchange, target: Target, res: Resolution) -> None:
        self.forwarder = forwarder
        self.ex = ex
        self.target = target
        proxy = res.proxy
        headers, self.upgrade = upstream_request_headers(
            ex, target, proxy.preserve_host_header, res.request_headers
        )
        path = ex.target  # origin-form, or "*" for OPTIONS (kept as is)
        if target.base_path and path != b"*":
            path = target.base_path.encode() + path
        self.head = outgoing_request(ex.method, path, headers)
        self._response_custom = res.response_headers
        self.conn: UpstreamConnection | None = None
        self.retried = False
        self._started = 0.0  # when the request went to the pool (upstream_ms counts from it)
        self._body_done = False
        self._cap: asyncio.TimerHandle | None = None
        if forwarder.total_timeout:
            self._cap = forwarder.loop.call_later(forwarder.total_timeout, self._total_expired)
        ex.upstream = f"{target.host}:{target.port}"
        ex.route = res.route.route_id if res.route is not None else ""

    def start(self) -> None:
        self._started = monotonic()
        conn = self.forwarder.pool.checkout(self.target.origin)
        if conn is not None:
            self._attach(conn)
        else:
            self.forwarder.spawn(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.forwarder.pool.connect(self.target)
        except EdgeError as exc:
            self.ex.upstream_phase = "connect"
            self._fail(exc)
            return
        if self.ex.finished:
            self._cancel_cap()
            self.forwarder.pool.checkin(conn)  # the client went away meanwhile
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.bind(self, self.ex.method == b"HEAD")
        try:
            conn.send(self.head)
        except h11.LocalProtocolError as exc:
            conn.abort()
            self._fail(UpstreamError(str(exc)))
            return
        self.ex.producer = conn
        if self._body_done:
            # a retry: the client's (empty) body already ended on the first attempt
            conn.send(END_OF_MESSAGE)
            self._arm()
            return
        self.ex.read_body(self)

    # ------------------------------------------------------------------ BodySink
    def body_data(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None and conn.user is self:
            conn.send(h11.Data(data=data))

    def body_end(self) -> None:
        self._body_done = True
        conn = self.conn
        if conn is not None and conn.user is self:
            try:
                conn.send(END_OF_MESSAGE)
            except h11.LocalProtocolError as exc:
                # e.g. fewer bytes than the Content-Length the client announced
                conn.abort()
                self._fail(UpstreamError(str(exc)))
                return
            self._arm()  # the whole request is out: the wait for the answer starts

    def downstream_lost(self) -> None:
        self._disarm()
        self._cancel_cap()
        conn, self.conn = self.conn, None
        if conn is not None and conn.user is self:
            conn.abort()

    # ------------------------------------------------------------------ UpstreamUser
    def upstream_writable(self, writable: bool) -> None:
        if writable:
            if not self._body_done:
                self._disarm()  # taking the body again: the client sets the pace
            self.ex.resume_body()
        else:
            if not self._body_done:
                self._arm()  # the upstream stopped taking the body: its idle time counts
            self.ex.pause_body()

    def on_informational(self, response: h11.InformationalResponse) -> None:
        if response.status_code != 101 or not self.upgrade:
            return  # 100 Continue and friends: the edge answered Expect itself
        conn = self.conn
        assert conn is not None
        self._disarm()
        self._cancel_cap()  # a tunnel lives as long as both ends want it
        ex = self.ex
        ex.upstream_ms = round((monotonic() - self._started) * 1000, 3)
        full = downstream_response_headers(
            response.headers, self._response_custom, True, self.ex.request_id.encode("ascii")
        )
        # a WebSocket's frames are followed, so that a drain can close it with 1001
        websocket = any(n == b"upgrade" and _is_websocket(v) for n, v in response.headers)
        leftover_up = conn.switch_to_pipe(ex.pipe, websocket)
        leftover_down = ex.switch_protocols([(raw, value) for raw, _, value in full], conn)
        if leftover_down:
            conn.tunnel_data(leftover_down)
        if leftover_up:
            ex.tunnel_write(leftover_up)

    def on_response(self, response: h11.Response) -> None:
        self._touch()
        self.ex.upstream_ms = round((monotonic() - self._started) * 1000, 3)
        full = downstream_response_headers(
            response.headers, self._response_custom, False, self.ex.request_id.encode("ascii")
        )
        self.ex.start_prepared_response(response.status_code, full, response.reason, flush=False)

    def on_batch_end(self) -> None:
        """All events of one upstream read are handled: let a held-back head go."""
        self.ex.flush()

    def on_data(self, data: bytes) -> None:
        self._touch()
        self.ex.send_data(data)

    def on_end(self) -> None:
        self._disarm()
        self._cancel_cap()
        self.ex.producer = None
        self.ex.end_response()

    def on_failure(self, exc: Exception | None, protocol_error: bool) -> None:
        self._disarm()
        conn = self.conn
        self.conn = None
        ex = self.ex
        if ex.finished:
            self._cancel_cap()
            return
        if not self.retried and not ex.has_body and retry_on_fresh(conn, protocol_error, ex.method):
            # a pooled connection the server had already closed: once more, fresh
            self.retried = True
            self.forwarder.spawn(self._connect())
            return
        self._fail(failure_error(exc, protocol_error))

    # ------------------------------------------------------------------ deadline
    # PROXY_REQUEST_TIMEOUT is an idle deadline kept by the upstream connection's timer,
    # one per direction as nginx and HAProxy do: while the request body flows it runs only
    # when the upstream stops taking it (the client's own pace is CLIENT_BODY_TIMEOUT's);
    # from the end of the request it is armed and pushed back by every byte of the
    # response. PROXY_TOTAL_TIMEOUT, when set, caps the whole exchange on its own timer.
    def _arm(self) -> None:
        if self.conn is not None:
            self.conn.expect_response(self.forwarder.response_timeout)

    def _touch(self) -> None:
        if self.conn is not None:
            self.conn.touch(self.forwarder.response_timeout)

    def _disarm(self) -> None:
        conn = self.conn
        if conn is not None and conn.user is self:
            conn.clear_deadline()

    def on_response_timeout(self) -> None:
        self.conn = None  # aborted by the connection itself
        self._fail(UpstreamResponseTimeout("upstream response timed out"))

    def _total_expired(self) -> None:
        self._cap = None
        if self.ex.finished:
            return
        conn, self.conn = self.conn, None
        if conn is not None and conn.user is self:
            conn.clear_deadline()
            conn.abort()
        self._fail(UpstreamTotalTimeout("exchange exceeded PROXY_TOTAL_TIMEOUT"))

    def _cancel_cap(self) -> None:
        if self._cap is not None:
            self._cap.cancel()
            self._cap = None

    def _fail(self, error: EdgeError) -> None:
        self._disarm()
        self._cancel_cap()
        ex = self.ex
        if not ex.finished:
            if not ex.upstream_phase:
                ex.upstream_phase = "response"
            ex.fail(error)


class Forwarder:
    """The forwarding handler of one worker: owns the pool and the tasks it starts."""

    def __init__(
        self, pool: UpstreamPool, response_timeout: float, total_timeout: float = 0.0
    ) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.response_timeout = response_timeout
        self.total_timeout = total_timeout  # 0: no cap
        self.tasks: set[asyncio.Task[None]] = set()

    def forward(self, ex: Exchange, res: Resolution) -> None:
        target = res.target
        if target is None:
            if res.problem is not None:
                message = f"bad gateway: the route's service config was rejected ({res.problem})"
            else:
                message = "bad gateway: route target not registered"
            ex.fail(UpstreamConnectError(public_message=message))
            return
        ProxyCall(self, ex, target, res).start()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
