"""A small outgoing HTTP/1.1 client for the OAuth server's few calls out.

The authorization server calls out rarely: GitHub's token and user endpoints once per
login, and a client's Client ID Metadata Document when its cache entry runs out. So one
request per connection (``Connection: close``), h11 over asyncio streams, and nothing
kept between calls: no pool, no cookies, no redirects followed (a 3xx is the answer; a
CIMD fetch must not be steered to another address by the document's host).

Every call has one named deadline, ``timeout``, over the whole exchange (connect, TLS,
request, the complete response), and a ``max_bytes`` cap on the body: a declared
``Content-Length`` above it is refused before a byte of the body is read, and a streamed
(chunked or read-to-close) body is counted as it arrives.

``connect_to=(ip, port)`` dials that address while the ``Host`` header, TLS SNI and the
certificate check keep the URL's host: the CIMD fetcher resolves the name itself, vets
the addresses (SSRF guard) and pins the one it vetted, so a second DNS answer cannot
point the connection somewhere else.

Failures are :class:`FetchError` with a ``kind``; its message names the origin
(scheme, host, port), never the path, query, headers or body, which may carry secrets.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import h11

FetchErrorKind: TypeAlias = Literal["timeout", "connect", "too_large", "protocol", "tls"]

_READ_SIZE = 65536
_MAX_HEAD = 65536  # h11's limit on an incomplete response head
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Fetched:
    """A complete response: header names lowercased (the last of a repeated one wins)."""

    status: int
    headers: dict[str, str]
    body: bytes


class FetchError(Exception):
    """A call that produced no complete response; ``str()`` is safe to log and show."""

    def __init__(self, kind: FetchErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: FetchErrorKind = kind
        self.message = message


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # without brackets
    port: int
    authority: str  # the Host header
    path: str  # path and query

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"


def _target(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("only http:// and https:// URLs can be fetched")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a URL to fetch must not carry credentials")
    host = parts.hostname
    if not host:
        raise ValueError("a URL to fetch must name a host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("the URL's port is not a number in range") from None
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == _DEFAULT_PORTS[parts.scheme] else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(parts.scheme, host, port, authority, path)


async def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float,  # noqa: ASYNC109 (the deadline is the call's own, over every step)
    max_bytes: int,
    connect_to: tuple[str, int] | None = None,
    ca_file: str | None = None,
) -> Fetched:
    """One request, one connection, one response; see the module docstring.

    ``headers`` are sent after ``Host`` (a ``Host`` among them is ignored); a body gets its
    ``Content-Length``. ``ca_file``: the CA bundle https certificates must chain to (None:
    the system's). Raises :class:`FetchError`, or ``ValueError`` for a URL it cannot fetch.
    """
    target = _target(url)
    context = ssl.create_default_context(cafile=ca_file) if target.scheme == "https" else None
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(
                target,
                method,
                headers,
                body,
                max_bytes,
                connect_to or (target.host, target.port),
                context,
            )
    except TimeoutError:
        raise FetchError(
            "timeout", f"{target.origin}: no complete answer within {timeout:g} s"
        ) from None


async def _exchange(
    target: _Target,
    method: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    max_bytes: int,
    address: tuple[str, int],
    context: ssl.SSLContext | None,
) -> Fetched:
    origin = target.origin
    try:
        reader, writer = await asyncio.open_connection(
            address[0],
            address[1],
            ssl=context,
            # SNI and the certificate check use the URL's host, whatever address is dialled
            server_hostname=target.host if context is not None else None,
        )
    except ssl.SSLError as exc:
        raise FetchError("tls", f"{origin}: TLS handshake failed ({_tls_reason(exc)})") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FetchError("connect", f"{origin}: cannot connect ({reason})") from None
    try:
        return await _talk(reader, writer, target, method, headers, body, max_bytes)
    except ssl.SSLError as exc:
        raise FetchError("tls", f"{origin}: TLS failed ({_tls_reason(exc)})") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FetchError("connect", f"{origin}: connection lost ({reason})") from None
    finally:
        # the response is complete (or abandoned): nothing more to say on this connection,
        # and waiting for a TLS close_notify would only hold the caller
        writer.transport.abort()


async def _talk(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: _Target,
    method: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    max_bytes: int,
) -> Fetched:
    origin = target.origin
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
    fields: list[tuple[str, str]] = [("Host", target.authority)]
    fields += [(k, v) for k, v in headers if k.lower() not in ("host", "content-length")]
    fields.append(("Connection", "close"))
    if body or method.upper() in ("POST", "PUT", "PATCH"):
        fields.append(("Content-Length", str(len(body))))
    try:
        out = conn.send(h11.Request(method=method, target=target.path, headers=fields))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        # our caller's header names or values; never echo them (they may hold a token)
        raise ValueError("the request cannot be sent as HTTP/1.1 (bad method or header)") from None
    writer.write(out)
    await writer.drain()

    status = 0
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []
    received = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    response_headers[name.decode("latin-1")] = value.decode("latin-1")
                declared = response_headers.get("content-length")
                # h11 has already checked it is one plain number
                if declared is not None and int(declared) > max_bytes:
                    raise FetchError(
                        "too_large",
                        f"{origin}: the answer declares {declared} bytes (limit {max_bytes})",
                    )
            elif isinstance(event, h11.Data):
                received += len(event.data)
                if received > max_bytes:
                    raise FetchError("too_large", f"{origin}: the answer exceeds {max_bytes} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Fetched(status, response_headers, b"".join(chunks))
            else:  # ConnectionClosed before the response
                raise FetchError("protocol", f"{origin}: connection closed without an answer")
    except h11.RemoteProtocolError:
        # h11's text quotes the peer's bytes: not worth logging from an arbitrary server
        raise FetchError("protocol", f"{origin}: malformed HTTP answer") from None


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or "certificate verification failed"
    return exc.reason or type(exc).__name__
