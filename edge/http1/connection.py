"""The downstream HTTP/1.1 connection: one ``asyncio.Protocol`` per client socket.

h11 is the HTTP engine; this shell moves bytes between the transport and h11, enforces
the hard limits (``HeadGuard``) and deadlines, and hands each request to the dispatcher
as an ``Exchange``. Pipelined requests are answered in order: while a response is in
progress the next request stays unparsed in h11's buffer and reading is paused.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import ssl
from collections.abc import Callable
from time import monotonic
from typing import cast

import h11

from edge.deadline import LazyTimer
from edge.errors import (
    ClientError,
    EdgeError,
    MethodNotAllowed,
    NotImplementedByEdge,
    RequestTimeout,
)
from edge.h11compat import (
    END_OF_MESSAGE,
    FullItems,
    ServerConnection,
    full_items,
    outgoing_response,
)
from edge.http1.exchange import Exchange, Headers, TunnelPeer
from edge.http1.guard import HeadGuard
from edge.http1.hub import Hub
from edge.http1.render import edge_error
from edge.http1.responses import REASONS, simple_headers, wallclock
from edge.net.proxy_protocol import ProxyHeader
from edge.observe.accesslog import AccessRecord
from edge.tls.sni import requested_server_name

log = logging.getLogger("edge.http")

Dispatch = Callable[[Exchange], None]

# reasons reading is paused; reading resumes when none is left
_PAUSE_PIPELINE = 1  # a whole request is in, its response is not out yet
_PAUSE_BODY = 2  # the body sink is not ready (upstream connecting, or its buffer is full)
_PAUSE_TUNNEL = 4  # the tunnel peer cannot take more


class Stage(enum.Enum):
    """Where a connection is in its life; ``data_received`` asks this first.

    A PROXY header is read before the connection exists (``edge.net.preface``), and a
    TLS handshake by the transport under it: both are done when ``HTTP`` begins.
    """

    HTTP = enum.auto()  # requests through h11, answered one at a time
    TUNNEL = enum.auto()  # after a 101: raw bytes between the client and a TunnelPeer
    LINGER = enum.auto()  # our last answer is out: what still arrives is dropped
    CLOSED = enum.auto()  # connection_lost: nothing more comes or goes


# data_received's one check, read as a module global (no attribute lookup on the class)
_HTTP = Stage.HTTP


class _Deadline(enum.Enum):
    NONE = enum.auto()
    FIRST_BYTE = enum.auto()  # new connection, nothing received yet: close silently
    HEAD = enum.auto()  # part of a head received: 408
    BODY = enum.auto()  # waiting for request body bytes (idle timer): 408
    KEEPALIVE = enum.auto()  # between requests: close silently
    LINGER = enum.auto()  # half-closed after the last answer: see _close


# at most this much is read and dropped while lingering: far more than a client sends
# before it notices the answer, and a bound on what one that never stops can cost
LINGER_MAX_BYTES = 64 * 1024 * 1024
# an idle connection we close owes the client nothing: its linger only has to absorb a
# request that crossed our FIN, which arrives within a round trip
IDLE_LINGER = 1.0


# no request in progress: shortened to DRAIN_IDLE_GRACE while draining
_IDLE_DEADLINES = (_Deadline.FIRST_BYTE, _Deadline.KEEPALIVE)
_EMPTY_LINE_START = (b"\r", b"\n")
_STATUS_CLOSE = {h11.MUST_CLOSE, h11.CLOSED, h11.ERROR}
# IDLE: no request was parsed (a head refused by the guard, by h11, or too slow); h11 still
# lets a server answer then, which is how those clients get their 4xx
_STATE_CAN_RESPOND = {h11.IDLE, h11.SEND_RESPONSE}


# RFC 3986 section 3.2.2/3.2.3: IP-literal, or reg-name (unreserved, pct-encoded,
# sub-delims; IPv4 is one of those), then an optional port
_HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def normalize_host(raw: bytes) -> str:
    """Lowercase, strip port and trailing dot (RFC 9110 §7.2; IPv6 literals keep brackets)."""
    host = raw.decode("latin-1").strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[: end + 1] if end > 0 else host
    else:
        colon = host.rfind(":")
        if colon >= 0:
            host = host[:colon]
    return host.rstrip(".")


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_activity",
        "_deadline",
        "_deadline_at",
        "_discarded",
        "_head",
        "_linger_unsent",
        "_paused",
        "_timer",
        "_tunnel",
        "_write_paused",
        "client_ip",
        "client_port",
        "current",
        "dispatch",
        "guard",
        "h11",
        "hub",
        "proxy_header",
        "scheme",
        "server_port",
        "stage",
        "tls",
        "transport",
    )

    def __init__(
        self,
        hub: Hub,
        dispatch: Dispatch,
        scheme: str = "http",
        proxy_header: ProxyHeader | None = None,
        client: tuple[str, int] | None = None,
        server_port: int = 0,
    ) -> None:
        self.hub = hub
        self.dispatch = dispatch
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.current: Exchange | None = None
        # behind a PROXY listener, the client and the port it connected to come from
        # the header (edge.net.preface); otherwise from the socket (connection_made)
        self.proxy_header = proxy_header
        self.client_ip, self.client_port = client if client is not None else ("", 0)
        self.server_port = server_port
        # the TLS session (SNI name in ``edge_server_name``, the certificate's context)
        self.tls: ssl.SSLObject | None = None
        self.stage = Stage.HTTP
        s = hub.settings
        self.guard = HeadGuard(s.max_request_line, s.max_header_bytes, s.max_header_count)
        self.h11: h11.Connection = ServerConnection(hub.max_incomplete)
        self._paused = 0
        self._write_paused = False
        self._timer = LazyTimer(hub.loop, self._expired)
        self._deadline_at = 0.0
        self._deadline = _Deadline.NONE
        self._activity = 0.0
        self._tunnel: TunnelPeer | None = None
        self._head = b""
        self._discarded = 0  # bytes dropped while lingering
        self._linger_unsent = 0  # our bytes still buffered when the linger last looked

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.client_ip:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple):
                self.client_ip, self.client_port = peer[0], peer[1]
        if not self.server_port:
            sock = transport.get_extra_info("sockname")
            if isinstance(sock, tuple):
                self.server_port = sock[1]
        if self.scheme == "https":
            self.tls = transport.get_extra_info("ssl_object")
        self.hub.opened(self)
        # accepted as the listeners closed, during a drain: the client may already have
        # sent its request, served like one on an idle connection (see _arm)
        self._arm(_Deadline.FIRST_BYTE, self.hub.settings.client_header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.stage is not _HTTP:
            self._off_stage_data(data)
            return
        ex = self.current
        if ex is None:
            if self.guard.fresh and data[:1] in _EMPTY_LINE_START:
                # RFC 9112 §2.2: empty lines before a request line are ignored (h11 would
                # refuse them), e.g. the stray CRLF some clients send after a POST body
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            try:
                self.guard.feed(data)
            except ClientError as exc:
                self._reject(exc)
                return
            if self._deadline is not _Deadline.HEAD and not self.guard.done:
                # a head in pieces: the header deadline runs from its first byte (a whole
                # head is parsed right away and needs none)
                self._arm(_Deadline.HEAD, self.hub.settings.client_header_timeout)
        elif self.h11.their_state is h11.SEND_BODY:
            self._activity = self.hub.loop.time()
        else:
            # the client is pipelining: keep the bytes in h11 and stop reading for now
            self._pause(_PAUSE_PIPELINE)
        self.h11.receive_data(data)
        self._drive()

    def _off_stage_data(self, data: bytes) -> None:
        if self.stage is Stage.TUNNEL:
            assert self._tunnel is not None
            ex = self.current
            if ex is not None:
                ex.bytes_in += len(data)  # the tunnel's bytes, for its log record
            self._tunnel.tunnel_data(data)
        elif self.stage is Stage.LINGER:
            self._discarded += len(data)
            self._activity = self.hub.loop.time()
            if self._discarded > LINGER_MAX_BYTES:
                self.abort()

    def eof_received(self) -> bool | None:
        stage = self.stage
        if stage is Stage.LINGER:
            return False  # the client is done too: close
        if stage is Stage.TUNNEL:
            assert self._tunnel is not None
            self._tunnel.tunnel_eof()
            return True
        if self.h11.their_state is not h11.CLOSED:
            self.h11.receive_data(b"")
            self._drive()
        # keep the write side open so an in-flight response can still be sent
        return self.current is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.stage = Stage.CLOSED
        self._disarm()
        self._timer.cancel()
        self.hub.closed(self)
        if self._tunnel is not None:
            tunnel, self._tunnel = self._tunnel, None
            tunnel.tunnel_lost()
        ex = self.current
        if ex is not None:
            self.current = None
            if ex.status == 0:
                ex.status = 499  # client closed before the response started (nginx's code)
            self._log(ex, aborted=True)
            if ex.sink is not None:
                ex.sink.downstream_lost()
            elif ex.producer is not None and hasattr(ex.producer, "downstream_lost"):
                ex.producer.downstream_lost()
        self.transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        target = self._tunnel or (self.current.producer if self.current else None)
        if target is not None:
            target.pause_producing()

    def resume_writing(self) -> None:
        self._write_paused = False
        target = self._tunnel or (self.current.producer if self.current else None)
        if target is not None:
            target.resume_producing()

    # ------------------------------------------------------------------ event loop of h11
    def _drive(self) -> None:
        conn = self.h11
        while self.transport is not None:
            ex = self.current
            if (
                ex is not None
                and conn.their_state is h11.SEND_BODY
                and (ex.sink is None or self._paused & _PAUSE_BODY)
            ):
                self._pause(_PAUSE_BODY)  # the body waits until the handler pulls it
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                hint = exc.error_status_hint
                # h11 quotes the offending bytes (a whole header line, credentials and all):
                # log only its description, never the peer's data
                detail = str(exc).split(":", 1)[0][:80]
                err: ClientError = (
                    NotImplementedByEdge(detail)
                    if hint == 501
                    else ClientError(detail, status=hint if hint in (414, 431) else None)
                )
                self._reject(err)
                return
            kind = type(event)
            if kind is h11.Data:
                if ex is None or ex.sink is None:
                    # the exchange was answered and finished from inside body_data: the
                    # rest of this body is read and dropped (the connection closes after)
                    continue
                data = cast(h11.Data, event).data
                ex.bytes_in += len(data)
                ex.sink.body_data(data)
            elif kind is h11.EndOfMessage:
                if ex is None:
                    return
                if self._deadline is _Deadline.BODY:
                    self._disarm()
                if ex.sink is not None:
                    ex.sink.body_end()
                # the next event can only be PAUSED until the response is out; _finish
                # drives again for a pipelined request
                return
            elif kind is h11.Request:
                self._on_request(cast(h11.Request, event))
                if conn is not self.h11 or conn.their_state is not h11.SEND_BODY:
                    return  # a body-less request already ended, or the exchange is done
            elif event is h11.NEED_DATA:
                if ex is not None and conn.their_state is h11.SEND_BODY:
                    if self._deadline is not _Deadline.BODY:
                        self._activity = self.hub.loop.time()
                        self._arm(_Deadline.BODY, self.hub.settings.client_body_timeout)
                return
            elif event is h11.PAUSED:
                return
            elif kind is h11.ConnectionClosed:
                if ex is None and self.transport is not None:
                    self.transport.close()
                return
            else:  # pragma: no cover - h11 emits nothing else to a server
                return

    def _on_request(self, request: h11.Request) -> None:
        self._disarm()
        host = b""
        length = b""
        has_te = False
        connection = b""
        client_rid = b""
        for _, name, value in full_items(request.headers):
            if name == b"host":
                host = value
            elif name == b"transfer-encoding":
                has_te = True
            elif name == b"content-length":
                length = value  # h11 checked: digits, and duplicates agree
            elif name == b"connection":
                connection = value if not connection else connection + b"," + value
            elif name == b"x-request-id":
                client_rid = value
        # the client's own id when it is a sane token, so one id follows the request
        # through the edge, the upstream and every log
        if client_rid and _REQUEST_ID_RE.fullmatch(client_rid):
            rid = client_rid.decode("ascii")
        else:
            rid = self.hub.next_request_id()
        target = request.target
        error: ClientError | None = None
        if request.method == b"CONNECT":
            error = MethodNotAllowed("CONNECT")  # whatever its target: never tunnelled
        elif target[:1] != b"/" and target != b"*":
            # absolute-form (RFC 9112 §3.2.2): the target's authority wins over Host
            target, authority = _absolute_form(target)
            if authority is None:
                error = ClientError(public_message="invalid absolute-form request target")
            else:
                host = authority
        if error is None and host and _HOST_RE.fullmatch(host) is None:
            # RFC 9112 section 3.2: an invalid Host is a 400. A backslash, say, would pass
            # a wildcard proxy's name check while browsers read what follows it as a path
            error = ClientError(public_message="invalid Host header")
        ex = Exchange(self, request, rid, normalize_host(host), target, host)
        ex.has_body = has_te or (bool(length) and length.strip(b"0") != b"")
        self.current = ex
        self.hub.requests += 1
        if error is None:
            error = _framing_error(request, has_te, length, connection)
        if error is not None:
            self.fail(ex, error)
            return
        try:
            self.dispatch(ex)
        except Exception:
            log.exception("handler failed", extra={"fields": {"request_id": rid}})
            if self.current is ex:
                self.fail(ex, EdgeError())

    # ------------------------------------------------------------------ request body
    def pull_body(self, ex: Exchange) -> None:
        if ex is not self.current or self.transport is None:
            return
        if self.h11.they_are_waiting_for_100_continue:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        self._resume(_PAUSE_BODY)
        self._drive()

    def pause_body(self) -> None:
        """The body sink is full (upstream write buffer): stop reading the client."""
        self._pause(_PAUSE_BODY)

    def resume_body(self) -> None:
        if self._paused & _PAUSE_BODY:
            self._resume(_PAUSE_BODY)
            self._drive()

    # ------------------------------------------------------------------ response
    def send_head(
        self, ex: Exchange, status: int, headers: Headers, reason: bytes = b"", flush: bool = True
    ) -> None:
        if self._last_response(ex):
            headers.append((b"connection", b"close"))
        response = h11.Response(status_code=status, headers=headers, reason=reason, _parsed=True)
        self._send_head_event(ex, response, flush)

    def send_prepared_head(
        self, ex: Exchange, status: int, full: FullItems, reason: bytes, flush: bool
    ) -> None:
        """``send_head`` for header triples that are valid by construction (forwarding)."""
        if self._last_response(ex):
            full.append((b"Connection", b"connection", b"close"))
        self._send_head_event(ex, outgoing_response(status, reason, full), flush)

    def _last_response(self, ex: Exchange) -> bool:
        """Draining, or the request body will never be read: no keep-alive after this."""
        return self.hub.draining or (
            self.h11.their_state is h11.SEND_BODY and ex.sink is None and ex.has_body
        )

    def _send_head_event(self, ex: Exchange, response: h11.Response, flush: bool) -> None:
        if ex is not self.current or self.transport is None:
            return
        ex.status = response.status_code
        ex.response_started = True
        try:
            data = self.h11.send(response)
        except h11.LocalProtocolError:
            log.warning("invalid response head", extra={"fields": {"request_id": ex.request_id}})
            self.abort()
            return
        if flush:
            self._write(data)
        else:
            # held back so head and first body bytes leave in one write (one syscall)
            self._head = data

    def flush_head(self) -> None:
        if self._head:
            head, self._head = self._head, b""
            self._write(head)

    def send_data(self, ex: Exchange, data: bytes) -> None:
        if ex is not self.current or self.transport is None:
            return
        ex.bytes_out += len(data)
        out = self.h11.send(h11.Data(data=data))
        if self._head:
            head, self._head = self._head, b""
            if len(out) < 65536:
                out = head + out
            else:
                self.transport.write(head)
        if out:
            self.transport.write(out)

    def end_response(self, ex: Exchange) -> None:
        if ex is not self.current or self.transport is None:
            return
        tail = self.h11.send(END_OF_MESSAGE) or b""
        if self._head:
            tail, self._head = self._head + tail, b""
        self._write(tail)
        self._finish(ex)

    def respond_whole(
        self, ex: Exchange, status: int, body: bytes, content_type: bytes, extra: Headers
    ) -> None:
        headers = simple_headers(content_type, len(body), ex.request_id)
        headers.extend(extra)
        self.send_head(ex, status, headers, REASONS.get(status, b""))
        if ex.method != b"HEAD" and body:
            self.send_data(ex, body)
        self.end_response(ex)

    def fail(self, ex: Exchange, error: EdgeError) -> None:
        if ex is not self.current:
            return
        log.log(
            error.log_level,
            "request failed",
            extra={
                "fields": {
                    "request_id": ex.request_id,
                    "status": error.status,
                    "error": type(error).__name__,
                    "detail": str(error),
                }
            },
        )
        ex.error = error.code
        if ex.response_started or self.h11.our_state not in _STATE_CAN_RESPOND:
            self.abort()
            return
        answer = edge_error(error, ex.request_id)
        extra: Headers = [(b"connection", b"close")] if error.close_connection else []
        extra.extend(answer.headers)
        self.respond_whole(ex, answer.status, answer.body, answer.content_type, extra)
        if error.close_connection:
            self._close()

    def switch_protocols(self, ex: Exchange, headers: Headers, tunnel: TunnelPeer) -> bytes:
        """Answer 101, then the socket carries raw bytes between the client and ``tunnel``."""
        assert ex is self.current and self.transport is not None
        ex.status = 101
        ex.response_started = True
        self._write(
            self.h11.send(h11.InformationalResponse(status_code=101, headers=headers, _parsed=True))
        )
        self._disarm()
        self._tunnel = tunnel
        self.stage = Stage.TUNNEL
        self.hub.tunnel_opened(self._record(ex))  # its exchange is logged when it ends
        leftover, _closed = self.h11.trailing_data
        self._resume(_PAUSE_PIPELINE | _PAUSE_BODY)
        if self._write_paused:
            tunnel.pause_producing()
        return leftover

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None:
            ex = self.current
            if ex is not None:
                ex.bytes_out += len(data)
            self.transport.write(data)

    def tunnel_close(self) -> None:
        """The tunnel peer is done: log the exchange and close the client socket.

        The close waits for the bytes still buffered to go out, but not for ever: a client
        that stopped reading would hold the socket (and its buffer) for as long as it
        likes after its tunnel ended, beyond any count of live tunnels. After
        ``LINGER_TIMEOUT`` what is left is dropped and the socket reset.
        """
        ex = self.current
        if ex is not None:
            self.current = None
            self._log(ex)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                self.hub.loop.call_later(self.hub.settings.linger_timeout, transport.abort)

    def tunnel_write_eof(self) -> None:
        """The tunnel peer sent its last byte: pass the end on to the client."""
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
            # TLS cannot half-close (its end is close_notify): close once what is
            # buffered is out, or the client waits for an end that never comes
            self.tunnel_close()

    def pause_tunnel(self) -> None:
        self._pause(_PAUSE_TUNNEL)

    def resume_tunnel(self) -> None:
        self._resume(_PAUSE_TUNNEL)

    # ------------------------------------------------------------------ lifecycle
    def _finish(self, ex: Exchange) -> None:
        self.current = None
        self._log(ex)
        conn = self.h11
        transport = self.transport
        if transport is None:
            return
        if conn.their_state is h11.SEND_BODY and ex.sink is None and not ex.has_body:
            # answered before the (empty) body's end was parsed: consume it now
            try:
                conn.next_event()
            except h11.RemoteProtocolError:
                self._close()
                return
        if conn.our_state in _STATUS_CLOSE or conn.their_state is not h11.DONE:
            # MUST_CLOSE, or the request body was never read: no keep-alive
            self._close()
            return
        # still keep-alive while draining: this answer's head left before the drain began
        # and promised the client it may send again, perhaps at once; the connection is
        # idle now and gets the drain's grace like the others (_arm)
        conn.start_next_cycle()
        self.guard.reset()
        leftover, closed = conn.trailing_data
        if leftover[:1] in _EMPTY_LINE_START:
            # empty lines after the previous message are in h11's buffer, where h11 would
            # refuse them: restart h11 (it is between messages, nothing is lost) without them
            leftover = leftover.lstrip(b"\r\n")
            conn = self.h11 = ServerConnection(self.hub.max_incomplete)
            if leftover:
                conn.receive_data(leftover)
            if closed:
                conn.receive_data(b"")
        if leftover:
            self._arm(_Deadline.HEAD, self.hub.settings.client_header_timeout)
            try:
                self.guard.feed(leftover)
            except ClientError as exc:
                self._reject(exc)
                return
        elif closed:
            transport.close()
            return
        else:
            self._arm(_Deadline.KEEPALIVE, self.hub.settings.keepalive_timeout)
        self._resume(_PAUSE_PIPELINE | _PAUSE_BODY)
        if leftover:
            self._drive()

    def drain(self) -> None:
        """The worker is draining: an idle connection closes after DRAIN_IDLE_GRACE.

        Closing an idle keep-alive connection at once resets the request a client may
        have sent on it just before (RFC 9112 §9.3.1 leaves the retry to the client, and
        one that is not idempotent cannot be retried). So, like HAProxy's
        idle-close-on-response, a request arriving within the grace is served with
        ``Connection: close`` (``_last_response``), and the connection closes after it;
        only a connection still idle then is closed, lingeringly (``_close``). A partial
        head is served the same way (a PROXY header still in progress is no connection
        yet: it keeps its own deadline, ``edge.net.preface``).
        """
        if self._deadline in _IDLE_DEADLINES:
            grace = self.hub.settings.drain_idle_grace
            if self.hub.loop.time() + grace < self._deadline_at:
                self._arm(self._deadline, grace)

    def going_away(self) -> None:
        """The worker is draining and the grace for tunnels is over: a tunnel's peer
        ends it the way its protocol says (WebSocket: close 1001 both ways)."""
        if self.stage is Stage.TUNNEL and self._tunnel is not None:
            self._tunnel.going_away()

    def withdraw(self, ex: Exchange, close_code: int) -> None:
        """``Exchange.withdraw``: cut what ``ex`` still has going."""
        if ex is not self.current or self.transport is None:
            return
        if self.stage is Stage.TUNNEL:
            if self._tunnel is not None:
                self._tunnel.withdraw(close_code)
            return
        producer, ex.producer = ex.producer, None
        if producer is not None:
            producer.abort()  # the upstream's answer stops here
        if not ex.response_started:
            self.abort()
            return
        try:
            self.end_response(ex)  # a stream (chunked) ends where it is
        except h11.LocalProtocolError:
            self.abort()  # a Content-Length not reached cannot end cleanly

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self, idle: bool = False) -> None:
        """Close after our last answer without letting a reset destroy it (RFC 9112 §9.6).

        A socket closed with unread bytes, or that receives more afterwards, makes the
        kernel send RST: a client still sending (the body of a request we refused, a
        pipelined request) fails its send, and most clients then report an error instead
        of reading our answer. So while the client may still be sending, half-close: the
        answer and a FIN go out, what still comes is dropped, and the socket closes when
        the client closes its side, after LINGER_TIMEOUT without a byte or LINGER_TIME in
        all, or after LINGER_MAX_BYTES (nginx's lingering_close). TLS cannot half-close:
        there the connection only keeps reading within the same bounds.

        ``idle``: no request in progress (keep-alive timeout, drain): the linger lasts
        IDLE_LINGER at most, so that a drain does not wait on clients that leave a closed
        pooled connection alone. Over TLS, the close_notify of a plain close tells the
        client as a FIN would, and the TLS layer keeps reading until the client's own; a
        request racing it is dropped either way.
        """
        transport = self.transport
        if transport is None or self.stage is Stage.LINGER or transport.is_closing():
            return
        if not self._client_may_send() or (idle and not transport.can_write_eof()):
            if idle:
                self.stage = Stage.LINGER  # nothing more is parsed
            transport.close()
            return
        self.stage = Stage.LINGER
        self._linger_unsent = transport.get_write_buffer_size()
        s = self.hub.settings
        now = self.hub.loop.time()
        self._activity = now
        self._arm(_Deadline.LINGER, min(s.linger_time, IDLE_LINGER) if idle else s.linger_time)
        self._timer.wake_by(now + s.linger_timeout)
        if transport.can_write_eof():
            transport.write_eof()  # once the buffered answer is out
        self._resume(_PAUSE_PIPELINE | _PAUSE_BODY | _PAUSE_TUNNEL)

    def _client_may_send(self) -> bool:
        """Is more of the client's data to be expected, or on its way, before its EOF?"""
        conn = self.h11
        pending, eof = conn.trailing_data
        if eof or conn.their_state is h11.CLOSED:
            return False
        # DONE/MUST_CLOSE: the request is complete; only a pipelining client sends on
        return conn.their_state not in (h11.DONE, h11.MUST_CLOSE) or bool(pending)

    def _reject(self, error: ClientError) -> None:
        """A malformed or oversized request: answer if we still can, then close."""
        ex = self.current
        if ex is None:
            rid = self.hub.next_request_id()
            req = h11.Request(method=b"-", target=b"/", headers=[(b"host", b"-")], _parsed=True)
            ex = Exchange(self, req, rid, "")
            ex.path = ""
            self.current = ex
        elif ex.sink is not None:
            # a malformed body: the handler (an upstream mid-request) must let go now
            sink, ex.sink = ex.sink, _Discard()
            sink.downstream_lost()
        if self.h11.our_state in _STATE_CAN_RESPOND and not ex.response_started:
            self.fail(ex, error)
            self._close()
        else:
            self.current = None
            ex.error = error.code
            self._log(ex)
            self.abort()

    # ------------------------------------------------------------------ deadlines
    # One LazyTimer per connection serves every deadline kind in turn.
    def _arm(self, kind: _Deadline, seconds: float) -> None:
        if self.hub.draining and kind in _IDLE_DEADLINES:
            seconds = min(seconds, self.hub.settings.drain_idle_grace)
        at = self.hub.loop.time() + seconds
        self._deadline = kind
        self._deadline_at = at
        self._timer.wake_by(at)

    def _disarm(self) -> None:
        self._deadline = _Deadline.NONE  # the lazy timer finds nothing to do

    def _expired(self) -> None:
        kind = self._deadline
        if kind is _Deadline.NONE or self.transport is None:
            return
        at = self._deadline_at
        if kind is _Deadline.LINGER and not self.transport.get_write_buffer_size():
            # LINGER_TIME in all, LINGER_TIMEOUT since the last byte; while our answer is
            # still going out to a client that reads it, LINGER_TIME since it last moved
            at = min(at, self._activity + self.hub.settings.linger_timeout)
        elif kind is _Deadline.BODY:
            # idle timer: the deadline moves with every body byte received
            at = self._activity + self.hub.settings.client_body_timeout
            if self._paused & _PAUSE_BODY:
                # we are the slow side (upstream backpressure), not the client
                at = self.hub.loop.time() + self.hub.settings.client_body_timeout
        if not self._timer.due(at):
            return
        self._deadline = _Deadline.NONE
        if kind is _Deadline.BODY:
            ex = self.current
            if ex is not None and not ex.response_started:
                sink = ex.sink
                ex.sink = _Discard()
                if sink is not None:
                    sink.downstream_lost()
                self.fail(ex, RequestTimeout("request body idle"))
                self._close()
            else:
                self.abort()
        elif kind is _Deadline.HEAD:
            self._reject(RequestTimeout("request head not complete in time"))
        elif kind in (_Deadline.FIRST_BYTE, _Deadline.KEEPALIVE):
            self._close(idle=True)
        elif kind is _Deadline.LINGER:
            unsent = self.transport.get_write_buffer_size()
            if unsent and unsent < self._linger_unsent:
                # the client is still reading our answer (a large one, sent before its
                # request was read): the linger starts over once the answer is out
                self._linger_unsent = unsent
                now = self.hub.loop.time()
                self._activity = now
                self._arm(_Deadline.LINGER, self.hub.settings.linger_time)
                self._timer.wake_by(now + self.hub.settings.linger_timeout)
            elif unsent:
                self.abort()  # a client that does not read either: drop the rest
            else:
                self.transport.close()

    # ------------------------------------------------------------------ helpers
    def _write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _pause(self, reason: int) -> None:
        if self._paused == 0 and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reasons: int) -> None:
        if self._paused == 0:
            return
        self._paused &= ~reasons
        if self._paused == 0 and self.transport is not None:
            self.transport.resume_reading()

    def _log(self, ex: Exchange, aborted: bool = False) -> None:
        self.hub.exchange_done(self._record(ex, aborted))  # every observer, the access log first

    def _record(self, ex: Exchange, aborted: bool = False) -> AccessRecord:
        record = AccessRecord(
            wallclock(),
            ex.request_id,
            ex.client_ip,
            ex.method.decode("latin-1"),
            ex.host,
            ex.path,
            ex.status,
            ex.bytes_in,
            ex.bytes_out,
            round((monotonic() - ex.started) * 1000, 3),
            ex.upstream,
            ex.route,
            aborted,
            None,
            None,
            ex.client_port,
            ex.upstream_ms,
            ex.user,
            ex.client_id,
            ex.error,
            ex.auth,
            ex.upstream_phase,
        )
        if self.tls is not None:
            record.sni = requested_server_name(self.tls)
        header = self.proxy_header
        if header is not None and header.unique_id is not None:
            record.proxy_unique_id = header.unique_id.decode("ascii", "backslashreplace")
        return record


# X-Request-Id values taken from the client; anything else gets the edge's own id
_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,128}")
# RFC 9110 §8.6: a Content-Length that does not fit a signed 64-bit integer is refused
# (HAProxy does the same): an upstream that wraps it would read a small length and take
# the rest of the body for a request of its own (RFC 9112 §11.2)
MAX_CONTENT_LENGTH = 2**63 - 1
# fields that frame or route the message: a Connection header naming them would make a
# hop-by-hop stripper remove them (RFC 9110 §7.6.1), so the edge refuses it
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host"})
_COMMON_CONNECTION = frozenset(
    {b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"}
)


def _framing_error(
    request: h11.Request, has_te: bool, length: bytes, connection: bytes
) -> ClientError | None:
    """What could be read two ways by the next hop (RFC 9112 §6.1, §11.2), as an error."""
    if has_te and length:
        return ClientError(public_message="both Content-Length and Transfer-Encoding")
    if has_te and request.http_version == b"1.0":
        return ClientError(public_message="Transfer-Encoding in an HTTP/1.0 request")
    if length and (len(length) > 19 or int(length) > MAX_CONTENT_LENGTH):
        return ClientError(public_message="Content-Length too large")
    if connection and connection not in _COMMON_CONNECTION:
        tokens = {t.strip().lower() for t in connection.split(b",")}
        if tokens & _FRAMING_FIELDS:
            return ClientError(public_message="Connection names a framing header")
    return None


def _absolute_form(target: bytes) -> tuple[bytes, bytes | None]:
    """absolute-form -> (origin-form, authority); authority None if the target is unusable.

    Only http and https URIs, with a host and no userinfo (RFC 9110 §4.2.4).
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target, None
    end = len(rest)
    for stop in (b"/", b"?"):
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority, tail = rest[:end], rest[end:]
    if not authority or b"@" in authority:
        return target, None
    if not tail.startswith(b"/"):
        tail = b"/" + tail
    return tail, authority


class _Discard:
    """Body sink that throws the body away (the handler answered without it)."""

    __slots__ = ()

    def body_data(self, data: bytes) -> None:
        pass

    def body_end(self) -> None:
        pass

    def downstream_lost(self) -> None:
        pass
