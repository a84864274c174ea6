"""One error hierarchy: every error knows whose fault it is and how it is answered.

Each :class:`EdgeError` carries, as class-level defaults a raise may override:

* ``status``: the HTTP status (4xx or 5xx);
* ``code``: a stable machine string clients can switch on (the edge's JSON body, the admin
  API's error document, the OAuth ``error`` member);
* ``public_message``: the only text the client sees; exception text (``str(exc)``, the
  ``detail``) is logged, never sent;
* ``peer_fault``: whose fault it is (:class:`Fault`): the client (4xx, logged at INFO), the
  upstream, the edge itself, or nobody (a temporary condition), all three 5xx and logged at
  WARNING;
* ``headers()``: fields the answer needs (``Allow``, ``WWW-Authenticate``, ``Retry-After``);
* ``ws_close``: the WebSocket close code (RFC 6455 section 7.4.1) a WebSocket or tunnel
  endpoint sends for this error once the upgrade is done;
* ``close_connection``: the connection cannot carry another request after the answer;
* ``field``: the request field at fault, when one is (the admin API names it).

A subclass that sets ``status`` and not ``code`` gets the status's standard code (its RFC 9110
reason phrase in snake_case, :func:`code_for`), and one whose inherited ``peer_fault``
contradicts its status gets the status's (CLIENT for 4xx, EDGE for 5xx) with the matching
``ws_close``: changing the status alone never leaves a 4xx blamed on the upstream or a 502
coded ``bad_request``. The same holds for a ``status=`` given to one raise.

How an error is written on the wire is :mod:`edge.http1.render`'s business, one function per
output shape.
"""

from __future__ import annotations

import enum
import logging
from http import HTTPStatus
from typing import Any


class Fault(enum.StrEnum):
    """Whose fault an error is: decides 4xx vs 5xx and the log level."""

    CLIENT = "client"  # the downstream peer sent something we refuse: 4xx, INFO
    UPSTREAM = "upstream"  # the origin failed us: 5xx, WARNING
    EDGE = "edge"  # our own failure or a feature we lack: 5xx, WARNING
    NONE = "none"  # nobody's: overload, a store briefly away, draining: 5xx, WARNING


class WsClose(enum.IntEnum):
    """The close codes (RFC 6455 section 7.4.1) an error may end a WebSocket with.

    Only codes wsproto knows: a peer running it fails the connection on any other code
    below 3000 (1014 "Bad Gateway" included), so upstream failures close with 1011.
    """

    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


_WS_CLOSE_OF = {
    Fault.CLIENT: WsClose.POLICY_VIOLATION,
    Fault.UPSTREAM: WsClose.INTERNAL_ERROR,
    Fault.EDGE: WsClose.INTERNAL_ERROR,
    Fault.NONE: WsClose.TRY_AGAIN_LATER,
}


def _snake(phrase: str) -> str:
    return phrase.lower().replace("-", "_").replace(" ", "_").replace("'", "")


# the RFC 9110 reason phrase in snake_case; a few are shorter
_CODES: dict[int, str] = {s.value: _snake(s.phrase) for s in HTTPStatus}
_CODES.update({414: "uri_too_long", 500: "internal_error"})


def code_for(status: int) -> str:
    """The standard ``code`` of ``status`` (``404`` -> ``"not_found"``)."""
    return _CODES.get(status, str(status))


def _fitting_fault(status: int, fault: Fault) -> Fault:
    """``fault`` if it agrees with ``status`` (4xx: CLIENT, 5xx: any other), else the
    status's own."""
    if (status < 500) == (fault is Fault.CLIENT):
        return fault
    return Fault.CLIENT if status < 500 else Fault.EDGE


class EdgeError(Exception):
    """Base of every error the edge maps to a response."""

    status: int = 500
    code: str = "internal_error"
    public_message: str = "internal error"
    peer_fault: Fault = Fault.EDGE
    ws_close: WsClose = WsClose.INTERNAL_ERROR
    close_connection: bool = False
    field: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "status" not in own:
            return
        if "code" not in own:
            cls.code = code_for(cls.status)
        if "peer_fault" not in own:
            fault = _fitting_fault(cls.status, cls.peer_fault)
            if fault is not cls.peer_fault:
                cls.peer_fault = fault
                if "ws_close" not in own:
                    cls.ws_close = _WS_CLOSE_OF[fault]

    def __init__(
        self,
        detail: str = "",
        *,
        public_message: str | None = None,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(detail or self.public_message)
        if public_message is not None:
            self.public_message = public_message
        if status is not None and status != self.status:
            self.status = status
            if code is None:
                code = code_for(status)
            fault = _fitting_fault(status, self.peer_fault)
            if fault is not self.peer_fault:
                self.peer_fault = fault
                self.ws_close = _WS_CLOSE_OF[fault]
        if code is not None:
            self.code = code
        if field is not None:
            self.field = field

    @property
    def log_level(self) -> int:
        """INFO for what the client got wrong, WARNING for everything else."""
        return logging.INFO if self.peer_fault is Fault.CLIENT else logging.WARNING

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Fields sent with the error response (``Allow``, ``Retry-After``...)."""
        return []


class ClientError(EdgeError):
    """The downstream peer sent something we refuse; the connection cannot go on."""

    status = 400
    code = "bad_request"
    public_message = "bad request"
    peer_fault = Fault.CLIENT
    ws_close = WsClose.PROTOCOL_ERROR
    close_connection = True


class RequestLineTooLong(ClientError):
    status = 414
    code = "uri_too_long"
    public_message = "request line too long"
    ws_close = WsClose.MESSAGE_TOO_BIG


class HeadersTooLarge(ClientError):
    status = 431
    code = "request_header_fields_too_large"
    public_message = "request header fields too large"
    ws_close = WsClose.MESSAGE_TOO_BIG


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"
    public_message = "request timeout"
    ws_close = WsClose.POLICY_VIOLATION


class NotImplementedByEdge(ClientError):
    """A request feature the edge does not implement (an unknown transfer coding, RFC 9112
    section 6.1): the request is refused like a malformed one, but the lack is ours."""

    status = 501
    code = "not_implemented"
    public_message = "not implemented"
    peer_fault = Fault.EDGE
    ws_close = WsClose.INTERNAL_ERROR


class MethodNotAllowed(ClientError):
    """CONNECT and friends: a reverse proxy tunnels nothing on request (RFC 9110 §9.3.6)."""

    status = 405
    code = "method_not_allowed"
    public_message = "method not allowed"
    ws_close = WsClose.POLICY_VIOLATION

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]


class NoRoute(EdgeError):
    status = 404
    code = "not_found"
    public_message = "no proxy is configured for this host"
    peer_fault = Fault.CLIENT
    ws_close = WsClose.POLICY_VIOLATION


class UpstreamError(EdgeError):
    """The upstream failed us; the client is not at fault."""

    status = 502
    code = "bad_gateway"
    public_message = "bad gateway"
    peer_fault = Fault.UPSTREAM
    ws_close = WsClose.INTERNAL_ERROR


class UpstreamConnectError(UpstreamError):
    public_message = "bad gateway: upstream refused or unreachable"


class UpstreamProtocolError(UpstreamError):
    public_message = "bad gateway: upstream sent an invalid response"


class UpstreamClosed(UpstreamError):
    public_message = "bad gateway: upstream closed the connection"


class UpstreamResponseTooLarge(UpstreamError):
    """A subrequest's answer is larger than the caller reads into memory."""

    public_message = "bad gateway: upstream response too large"


class UpstreamConnectTimeout(UpstreamError):
    status = 504
    code = "gateway_timeout"
    public_message = "gateway timeout: upstream connect timed out"


class UpstreamResponseTimeout(UpstreamError):
    status = 504
    code = "gateway_timeout"
    public_message = "gateway timeout: upstream did not respond in time"


class UpstreamTotalTimeout(UpstreamError):
    status = 504
    code = "gateway_timeout"
    public_message = "gateway timeout: the exchange took longer than allowed"


class ServiceUnavailable(EdgeError):
    """Temporarily unable to serve (overload, draining, a missing piece): retry later."""

    status = 503
    code = "service_unavailable"
    public_message = "service unavailable"
    peer_fault = Fault.NONE
    ws_close = WsClose.TRY_AGAIN_LATER
