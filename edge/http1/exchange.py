"""One request/response on a downstream connection: what handlers see and drive.

A handler gets an ``Exchange`` from the dispatcher and answers through it. It never touches
the transport: the connection (``edge.http1.connection``) owns the socket and h11.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Protocol

import h11

from edge.errors import EdgeError
from edge.http1.h11compat import FullItems

if TYPE_CHECKING:
    from edge.http1.connection import HttpConnection

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


class Exchange:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client_ip",
        "client_port",
        "conn",
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
        self.conn = conn
        self.request = request
        self.request_id = request_id
        self.method: bytes = request.method
        # origin-form (or "*"): an absolute-form target was split into this and its
        # authority, which replaced the Host header (RFC 9112 §3.2.2)
        self.target: bytes = request.target if target is None else target
        self.headers = request.headers
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
        self.sink: BodySink | None = None
        self.producer: Producer | None = None

    # ----------------------------------------------------------------- request body
    def read_body(self, sink: BodySink) -> None:
        """Start delivering the request body to ``sink`` (sends 100 Continue if awaited)."""
        self.sink = sink
        self.conn.pull_body(self)

    # ----------------------------------------------------------------- response
    def start_response(
        self, status: int, headers: Headers, reason: bytes = b"", flush: bool = True
    ) -> None:
        """Send the head; ``flush=False`` holds it for the next ``send_data``/``flush``."""
        self.conn.send_head(self, status, headers, reason, flush)

    def start_prepared_response(
        self, status: int, full: FullItems, reason: bytes = b"", flush: bool = True
    ) -> None:
        """``start_response`` with h11 header triples already valid (forwarded responses)."""
        self.conn.send_prepared_head(self, status, full, reason, flush)

    def flush(self) -> None:
        """Write a held-back response head now."""
        self.conn.flush_head()

    def send_data(self, data: bytes) -> None:
        self.conn.send_data(self, data)

    def end_response(self) -> None:
        self.conn.end_response(self)

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: Headers | None = None,
    ) -> None:
        """A whole response at once; an unread request body ends the connection after it."""
        self.conn.respond_whole(self, status, body, content_type, headers or [])

    def fail(self, error: EdgeError) -> None:
        """Answer with ``error`` if nothing was sent yet, else abort the connection."""
        self.conn.fail(self, error)

    def switch_protocols(self, headers: Headers, tunnel: TunnelPeer) -> bytes:
        """Send 101 and hand the raw socket to ``tunnel``; returns bytes already received."""
        return self.conn.switch_protocols(self, headers, tunnel)

    @property
    def finished(self) -> bool:
        return self.conn.current is not self


class TunnelPeer(Protocol):
    """The other end of a switched connection (WebSocket pass-through, tunnels)."""

    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...
    def tunnel_lost(self) -> None: ...
    def pause_producing(self) -> None: ...
    def resume_producing(self) -> None: ...


class Handler(Protocol):
    """What the dispatcher hands an exchange to: forwarding, API, later auth/ACME/tunnels."""

    def handle(self, exchange: Exchange) -> None: ...
