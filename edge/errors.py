"""One error hierarchy: every error knows whose fault it is and how it is answered.

The client sees ``public_message`` and the request id, never exception text.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge maps to a response."""

    status: int = 500
    public_message: str = "internal error"
    close_connection: bool = False

    def __init__(self, detail: str = "", *, public_message: str | None = None) -> None:
        super().__init__(detail or self.public_message)
        if public_message is not None:
            self.public_message = public_message

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Fields sent with the error response (``Allow``, ``Retry-After``...)."""
        return []


class ClientError(EdgeError):
    """The downstream peer sent something we refuse."""

    status = 400
    public_message = "bad request"
    close_connection = True


class RequestLineTooLong(ClientError):
    status = 414
    public_message = "request line too long"


class HeadersTooLarge(ClientError):
    status = 431
    public_message = "request header fields too large"


class RequestTimeout(ClientError):
    status = 408
    public_message = "request timeout"


class NotImplementedByEdge(ClientError):
    status = 501
    public_message = "not implemented"


class MethodNotAllowed(ClientError):
    """CONNECT and friends: a reverse proxy tunnels nothing on request (RFC 9110 §9.3.6)."""

    status = 405
    public_message = "method not allowed"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]


class NoRoute(EdgeError):
    status = 404
    public_message = "no proxy is configured for this host"


class UpstreamError(EdgeError):
    """The upstream failed us; the client is not at fault."""

    status = 502
    public_message = "bad gateway"


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
    public_message = "gateway timeout: upstream connect timed out"


class UpstreamResponseTimeout(UpstreamError):
    status = 504
    public_message = "gateway timeout: upstream did not respond in time"


class UpstreamTotalTimeout(UpstreamError):
    status = 504
    public_message = "gateway timeout: the exchange took longer than allowed"


class ServiceUnavailable(EdgeError):
    status = 503
    public_message = "service unavailable"
