"""Buying a port-forward ticket: ``POST /port-forward/ticket`` with a personal access token.

Written on asyncio streams and h11 (both already needed by the edge) rather than on
:mod:`edge.client.http`: ``edge forward`` buys one ticket per local connection inside an
event loop, where a blocking call would stall every other tunnel, and Ctrl-C must be able
to cancel a purchase at once.

Retries: a purchase that got no answer at all (the connection refused, reset or closed
before a byte of an answer; the edge restarting, say) or a gateway's ``502``/``503``/``504``
(HAProxy with no edge behind it) is tried again after 0.25 s, then 0.5 s: 3 tries in all.
A ``4xx`` is never retried: the edge has decided. A purchase that timed out after the
request went out is not retried either (the edge may have reserved a session slot; it
frees itself when the ticket expires).

Every failure is a :class:`Refused` whose text is the one line ``edge forward`` prints;
neither the token nor a ticket ever appears in it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from edge import __version__
from edge.client.errors import one_line

__all__ = [
    "FIRST_PAUSE",
    "TICKET_PATH",
    "TRIES",
    "Endpoint",
    "Refused",
    "Ticket",
    "Unreachable",
    "buy_ticket",
    "explain_status",
    "tls_context",
]

TICKET_PATH = "/port-forward/ticket"
TRIES = 3
FIRST_PAUSE = 0.25  # seconds before the second try; doubled before each next one
RETRY_STATUSES = frozenset({502, 503, 504})  # a gateway in front found no edge
MAX_ANSWER = 64 * 1024  # a ticket answer or an error document is far smaller
USER_AGENT = f"edge-forward/{__version__}"

# what each refusal of the ticket endpoint means for the user (the edge's own message,
# which may name a field or a limit, follows it)
_STATUS_MEANING = {
    400: "the port is not allowed for this target (or the request was refused as invalid)",
    401: "the token was refused: give a personal access token with --token, EDGE_PAT or "
    "'edge login --token'",
    403: "forbidden: the token's user is not an accepted member of the target's project, "
    "or the role lacks the permission (resources.port-forward for a resource, "
    "databases.show-secrets for a database)",
    404: "no such target (or no port-forward endpoint at this URL)",
    409: "the database is not ready (its status is not 'created')",
    429: "too many live sessions in the project (PORT_FORWARD_MAX_SESSIONS): "
    "close a tunnel and connect again",
    502: "the edge is unreachable behind its gateway",
    503: "the edge is unavailable (restarting, or its Redis is down)",
    504: "the edge did not answer its gateway in time",
}


class Refused(Exception):
    """The edge refused (or could not be asked for) one connection's tunnel; ``str()`` is
    the line to print."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class Unreachable(Refused):
    """No answer from the edge at all (after the retries)."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """A bought ticket: ``websocket_path`` carries it in its query, so it is never shown."""

    ticket: str
    websocket_path: str
    expires_in: float

    def __repr__(self) -> str:  # never the ticket, in a traceback or a debug line
        return f"Ticket(expires_in={self.expires_in:g})"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying context for every connection, as the other client commands check
    ``https://`` URLs: the system's CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``."""
    return ssl.create_default_context()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The edge's public URL, taken apart once: both the ticket purchase and the
    WebSocket go to this host and port (under its path prefix, if any)."""

    url: str
    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``url`` is an http(s) URL already checked by :func:`edge.client.config.resolve`."""
        parts = urlsplit(url)
        https = parts.scheme == "https"
        return cls(
            url=url.rstrip("/"),
            https=https,
            host=parts.hostname or "",
            port=parts.port or (443 if https else 80),
            prefix=parts.path.rstrip("/"),
        )

    @property
    def authority(self) -> str:
        """The ``Host`` field: the host (IPv6 in brackets) and a port other than the
        scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.https else 80) else f"{host}:{self.port}"

    async def connect(
        self,
        timeout: float,  # noqa: ASYNC109 (the connect's own deadline, TLS handshake included)
        limit: int = 2**16,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the edge (TLS for ``https``), within ``timeout`` seconds."""
        tls = tls_context() if self.https else None
        opening = asyncio.open_connection(
            self.host, self.port, ssl=tls, server_hostname=self.host if tls else None, limit=limit
        )
        reader, writer = await asyncio.wait_for(opening, timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer


def failure_reason(exc: BaseException, timeout: float) -> str:
    """Why a connection to the edge failed, in a few words."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class _NoAnswer(Exception):
    """Not a byte of an answer came: the purchase may be tried again."""


def error_of(doc: Any) -> tuple[str | None, str | None, str | None]:
    """``(code, message, request_id)`` of an error document of the API, in any of its
    shapes: ``{"error": {...}}``, the envelope ``{"data": null, "errors": [{...}]}``, or
    a flat ``{"error": "code", "message": "..."}``."""
    if not isinstance(doc, dict):
        return None, None, None
    error: Any = doc
    if isinstance(doc.get("error"), dict):
        error = doc["error"]
    elif isinstance(doc.get("errors"), list) and doc["errors"]:
        error = doc["errors"][0]
    if not isinstance(error, dict):
        return None, None, None
    code = error.get("code", doc.get("error"))
    message, rid = error.get("message"), error.get("request_id")
    return (
        one_line(code) if isinstance(code, str) else None,
        one_line(message)[:300] if isinstance(message, str) else None,
        one_line(rid)[:64] if isinstance(rid, str) else None,
    )


def explain_status(status: int, reason: str, body: bytes) -> str:
    """One line for an HTTP refusal: the status, what it means here, the edge's message."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    code, message, rid = error_of(doc)
    head = f"{status} {code or one_line(reason) or 'error'}"
    meaning = _STATUS_MEANING.get(status, "refused by the edge")
    said = f" (the edge says: {message})" if message else ""
    where = f" [request {rid}]" if rid else ""
    return f"{head}: {meaning}{said}{where}"


def _ticket_of(doc: Any) -> Ticket | None:
    """The ticket of a success answer (plain or in the envelope); None if malformed."""
    if isinstance(doc, dict) and set(doc) == {"data", "errors"}:
        doc = doc["data"]
    if not isinstance(doc, dict):
        return None
    ticket, path, expires = doc.get("ticket"), doc.get("websocket_path"), doc.get("expires_in")
    if not (isinstance(ticket, str) and ticket and isinstance(path, str)):
        return None
    # a path on the edge's own host: never "//other-host/..." nor anything h11 would refuse
    if not path.startswith("/") or path.startswith("//") or not path.isascii():
        return None
    if any(c.isspace() or not c.isprintable() for c in path):
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        expires = math.nan
    return Ticket(ticket, path, float(expires))


async def _post(
    endpoint: Endpoint,
    token: str,
    body: bytes,
    timeout: float,  # noqa: ASYNC109 (per step: the connect, then each read)
) -> tuple[int, str, bytes]:
    """One try: ``(status, reason, body)``; :class:`_NoAnswer` when no byte of an answer
    came, :class:`Refused` for any other failure."""
    try:
        reader, writer = await endpoint.connect(timeout)
    except ssl.SSLCertVerificationError as exc:  # trying again cannot help
        raise Unreachable(
            f"cannot reach the edge at {endpoint.url}: {failure_reason(exc, timeout)}"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise _NoAnswer(failure_reason(exc, timeout)) from None
    try:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", endpoint.authority),
            ("User-Agent", USER_AGENT),
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Authorization", f"Bearer {token}"),
            ("Connection", "close"),
        ]
        request = h11.Request(method="POST", target=endpoint.prefix + TICKET_PATH, headers=headers)
        writer.write(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        answered = False
        status, reason, chunks, size = 0, "", [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    raise Refused(
                        f"no answer from the edge at {endpoint.url} within {timeout:g}s"
                    ) from None
                except OSError as exc:
                    if not answered:
                        raise _NoAnswer(failure_reason(exc, timeout)) from None
                    raise Refused(
                        f"the edge at {endpoint.url} broke off its answer: "
                        f"{failure_reason(exc, timeout)}"
                    ) from None
                if not data and not answered:
                    raise _NoAnswer("the connection closed without an answer")
                answered = True
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status, reason = event.status_code, event.reason.decode("latin-1")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_ANSWER:
                    raise Refused(f"the answer of the edge at {endpoint.url} is too large")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, reason, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover - h11 raises first
                raise Refused(f"the edge at {endpoint.url} closed the connection mid-answer")
    except h11.ProtocolError:
        raise Refused(f"the answer of {endpoint.url} was not HTTP/1.1, or was cut short") from None
    finally:
        writer.close()


async def buy_ticket(
    endpoint: Endpoint,
    token: str,
    request: dict[str, object],
    *,
    timeout: float,  # noqa: ASYNC109 (per step of each try, as --timeout says)
    tries: int = TRIES,
    first_pause: float = FIRST_PAUSE,
    on_retry: Callable[[int, float, str], None] | None = None,
) -> Ticket:
    """A ticket for ``request`` (``target_type``, ``target_id``, ``port``), tried again as
    the module says; ``on_retry(try, pause, why)`` before each wait."""
    body = json.dumps(request).encode("utf-8")
    pause = first_pause
    for attempt in range(1, tries + 1):
        try:
            status, reason, raw = await _post(endpoint, token, body, timeout)
        except _NoAnswer as exc:
            if attempt == tries:
                raise Unreachable(f"cannot reach the edge at {endpoint.url}: {exc}") from None
            why = str(exc)
        else:
            if 200 <= status < 300:
                try:
                    ticket = _ticket_of(json.loads(raw))
                except ValueError:
                    ticket = None
                if ticket is None:
                    raise Refused(
                        f"{status} from {endpoint.url}: not a ticket (is it the edge's public URL?)"
                    )
                return ticket
            if status not in RETRY_STATUSES or attempt == tries:
                raise Refused(f"ticket refused: {explain_status(status, reason, raw)}")
            why = f"{status} {one_line(reason)}"
        if on_retry is not None:
            on_retry(attempt, pause, why)
        await asyncio.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover
