"""One request/response on a downstream connection: what handlers see and drive.

A handler gets an ``Exchange`` from the dispatcher and answers through it. It never touches
the transport, nor the connection (``edge.http1.connection``) that owns the socket and h11:
everything a handler may do to the downstream side is a method here, most of them one-line
delegations, so the connection can change without any handler noticing.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

import h11

from edge.errors import EdgeError
from edge.h11compat import FullItems

if TYPE_CHECKING:
    import ssl

    from edge.config.schema import ProxyConfig
    from edge.http1.connection import HttpConnection
    from edge.net.proxy_protocol import ProxyHeader

Headers = list[tuple[bytes, bytes]]


class BodySink(Protocol):
    """Receives the request body, pulled by the connection when the sink is ready."""

    def body_data(self, data: bytes) -> None: ...
    def body_end(self) -> None: ...
    def downstream_lost(self) -> None: ...


class Producer(Protocol):
    """Whatever feeds the response; paused while the client reads slowly."""

    def pause_producing(self) -> None: ...
    def resume_producing(self) -> None: ...

    def abort(self) -> None:
        """Stop feeding for good, without another word to whoever the producer serves."""


class Exchange:
    __slots__ = (
        "_conn",
        "access",
        "auth",
        "bytes_in",
        "bytes_out",
        "client_id",
        "client_ip",
        "client_port",
        "error",
        "has_body",
        "headers",
        "host",
        "host_header",
        "method",
        "path",
        "producer",
        "request",
        "request_id",
        "response_started",
        "route",
        "scheme",
        "server_port",
        "sink",
        "started",
        "status",
        "target",
        "upstream",
        "upstream_ms",
        "upstream_phase",
        "user",
    )

    def __init__(
        self,
        conn: HttpConnection,
        request: h11.Request,
        request_id: str,
        host: str,
        target: bytes | None = None,
        host_header: bytes = b"",
    ) -> None:
        # private: handlers go through the methods below, never to the connection itself
        self._conn = conn
        self.request = request
        self.request_id = request_id
        self.method: bytes = request.method
        # origin-form (or "*"): an absolute-form target was split into this and its
        # authority, which replaced the Host header (RFC 9112 §3.2.2)
        self.target: bytes = request.target if target is None else target
        # h11's parsed headers; an access check may replace them with a plain list (the
        # fields it removes or adds on their way to the upstream)
        self.headers: Sequence[tuple[bytes, bytes]] = request.headers
        self.host = host
        self.host_header = host_header  # the Host value as received (for the upstream)
        raw_path = self.target.split(b"?", 1)[0]
        self.path = raw_path.decode("latin-1")
        self.client_ip = conn.client_ip
        self.client_port = conn.client_port
        self.server_port = conn.server_port
        self.scheme = conn.scheme
        self.started = monotonic()
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.response_started = False
        self.has_body = False
        self.route = ""
        self.upstream = ""
        # for the logs: ms from the request sent upstream to its answer's head; who the
        # request acted as (a username, ``token:{name}``), the OAuth client of its token,
        # and the edge's error code when it answered with one
        self.upstream_ms: float | None = None
        # when the upstream failed us: "connect" (no connection to send the request on)
        # or "response" (after it was sent)
        self.upstream_phase = ""
        self.user = ""
        self.client_id = ""
        self.error = ""
        # the access check's outcome, for the metrics: "allowed", "401" (not authenticated:
        # challenged, or sent to sign in), "403", "error" (the check could not be made);
        # empty when no check ran
        self.auth = ""
        self.sink: BodySink | None = None
        self.producer: Producer | None = None
        # (claims, proxy) of the token that let this exchange in, re-checked while it
        # lives (edge.handlers.live_access)
        self.access: tuple[dict[str, Any], ProxyConfig] | None = None

    # ----------------------------------------------------------------- request body
    def read_body(self, sink: BodySink) -> None:
        """Start delivering the request body to ``sink`` (sends 100 Continue if awaited)."""
        self.sink = sink
        self._conn.pull_body(self)

    def pause_body(self) -> None:
        """Stop reading the request body (the sink's destination is full)."""
        self._conn.pause_body()

    def resume_body(self) -> None:
        """Read the request body again after ``pause_body``."""
        self._conn.resume_body()

    def abandon_body(self) -> None:
        """Never read the rest of the body (e.g. too large): stop reading it now.

        Without a sink the connection knows the body is abandoned: the response carries
        ``Connection: close`` and the connection closes after it.
        """
        self.sink = None
        self._conn.pause_body()

    # ----------------------------------------------------------------- response
    def start_response(
        self, status: int, headers: Headers, reason: bytes = b"", flush: bool = True
    ) -> None:
        """Send the head; ``flush=False`` holds it for the next ``send_data``/``flush``."""
        self._conn.send_head(self, status, headers, reason, flush)

    def start_prepared_response(
        self, status: int, full: FullItems, reason: bytes = b"", flush: bool = True
    ) -> None:
        """``start_response`` with h11 header triples already valid (forwarded responses)."""
        self._conn.send_prepared_head(self, status, full, reason, flush)

    def flush(self) -> None:
        """Write a held-back response head now."""
        self._conn.flush_head()

    def send_data(self, data: bytes) -> None:
        self._conn.send_data(self, data)

    def end_response(self) -> None:
        self._conn.end_response(self)

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: Headers | None = None,
    ) -> None:
        """A whole response at once; an unread request body ends the connection after it."""
        self._conn.respond_whole(self, status, body, content_type, headers or [])

    def fail(self, error: EdgeError) -> None:
        """Answer with ``error`` if nothing was sent yet, else abort the connection.

        The answer is :func:`edge.http1.render.edge_error`'s; the error's ``log_level``
        (whose fault it is) decides how its detail is logged.
        """
        self._conn.fail(self, error)

    def switch_protocols(self, headers: Headers, tunnel: TunnelPeer) -> bytes:
        """Send 101 and hand the raw socket to ``tunnel``; returns bytes already received."""
        return self._conn.switch_protocols(self, headers, tunnel)

    @property
    def pipe(self) -> DownstreamPipe:
        """The client's end of a switched connection, for the tunnel peer to write to."""
        return self._conn

    def tunnel_write(self, data: bytes) -> None:
        """Raw bytes to the client after ``switch_protocols``."""
        self._conn.tunnel_write(data)

    def abort(self) -> None:
        """Reset the client connection: a response already started cannot be finished."""
        self._conn.abort()

    def withdraw(self, close_code: int) -> None:
        """The access that let this exchange in is withdrawn (its token revoked, its user
        taken off the allowlist): a WebSocket closes with ``close_code``, a response in
        progress ends, one not started yet is never given."""
        self._conn.withdraw(self, close_code)

    @property
    def finished(self) -> bool:
        return self._conn.current is not self

    # ----------------------------------------------------------------- the client's side
    # Read-only and off the hot path (the forwarding path copies what it needs per request
    # into the plain attributes above): properties, so nothing is copied for requests that
    # never ask.
    @property
    def tls(self) -> ssl.SSLObject | None:
        """The TLS session of an https connection (None for plain http).

        ``edge.tls.sni.requested_server_name(ex.tls)`` is the SNI name the client asked for.
        """
        return self._conn.tls

    @property
    def proxy_header(self) -> ProxyHeader | None:
        """The PROXY protocol header the connection arrived with, if any."""
        return self._conn.proxy_header


class TunnelPeer(Protocol):
    """The other end of a switched connection (WebSocket pass-through, tunnels)."""

    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...
    def tunnel_lost(self) -> None: ...
    def pause_producing(self) -> None: ...
    def resume_producing(self) -> None: ...

    def going_away(self) -> None:
        """The worker is draining and the tunnels' grace is over: end the tunnel the way
        its protocol says (a WebSocket: Close 1001 to both ends, at frame boundaries), or
        do nothing and be aborted when the drain's time is up."""

    def withdraw(self, code: int) -> None:
        """The client's access was withdrawn: end the tunnel now (a WebSocket: Close
        ``code`` to both ends, at frame boundaries)."""


class DownstreamPipe(Protocol):
    """The client's end of a switched connection, as the upstream side drives it."""

    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_write_eof(self) -> None: ...
    def tunnel_close(self) -> None: ...
    def pause_tunnel(self) -> None: ...
    def resume_tunnel(self) -> None: ...


class Handler(Protocol):
    """What the dispatcher hands an exchange to: forwarding, API, later auth/ACME/tunnels."""

    def handle(self, exchange: Exchange) -> None: ...
