"""A small JSON client for the admin API (stdlib :mod:`http.client`, no dependency).

Every call has a timeout (``--timeout``, default 10 s) on connecting and on each read, and
the whole answer must arrive within twice that, retries included.

An idempotent call (``GET``, ``HEAD``, ``PUT``, ``DELETE``, ``OPTIONS``: RFC 9110 section
9.2.2) that got no answer at all (the connection refused, reset, or closed before a byte of
an answer) is tried again, 3 tries in all, after 0.2 s then 0.4 s. ``POST`` and ``PATCH``
are never retried: the edge may have acted on a request whose answer was lost. Nothing is
retried once an answer started, whatever its status (a ``503`` is shown, not retried: the
edge's own are answered after its Redis timeout, and retrying would only multiply the wait).

Every failure becomes a :class:`~edge.client.errors.ClientError` with one line that says
what went wrong:

* unreachable (refused, timed out, DNS, TLS): ``cannot reach the edge API at URL: reason``
* ``401``: ``the token was refused (401)``
* ``400`` naming a field: ``invalid FIELD: message`` (with the command's flag for it)
* anything else: ``STATUS CODE: message (request ID)``

Both error shapes of the API are understood: ``{"error": {...}}`` and the envelope of the
personal access token endpoints, ``{"data": null, "errors": [{...}]}``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from edge import __version__
from edge.client.errors import ClientError, one_line
from edge.client.options import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["DEFAULT_TIMEOUT", "Api", "segment"]

MAX_ANSWER = 64 << 20  # far above any admin API answer
_CHUNK = 65536
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
TRIES = 3
FIRST_PAUSE = 0.2  # seconds before the second try; doubled before each next one
# no answer at all: refused, reset, aborted, or closed before the status line
# (http.client.RemoteDisconnected is a ConnectionResetError)
_NO_ANSWER = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def segment(value: str) -> str:
    """``value`` percent-encoded as one path segment (``/`` included)."""
    return quote(value, safe="")


class AnswerTooSlow(TimeoutError):
    """The answer kept coming, but not all of it within twice the timeout."""


class NoAnswer(Exception):
    """The connection failed before any byte of an answer (``cause``): safe to try an
    idempotent request again."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, AnswerTooSlow):
        return f"the answer did not arrive whole within {2 * timeout:g}s (timed out)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__  # pragma: no cover


class _Arrival:
    """Whether a byte of the answer arrived on one connection: after one, the request was
    read and acted on, so a failure is never retried."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False


class _NotingReader(io.RawIOBase):
    """The socket's raw reader, noting in ``arrival`` the first byte that arrives."""

    def __init__(self, raw: io.RawIOBase, arrival: _Arrival) -> None:
        super().__init__()
        self._raw = raw
        self._arrival = arrival

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int | None:
        count = self._raw.readinto(buffer)
        if count:
            self._arrival.seen = True
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def _noting_response(arrival: _Arrival) -> type[http.client.HTTPResponse]:
    """An ``HTTPResponse`` class whose reads note in ``arrival`` that an answer came: a
    reset while the head is read (``getresponse`` has not returned) is after an answer."""

    class NotingResponse(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            raw = self.fp.detach()  # the socket's reader; nothing was read from it yet
            assert isinstance(raw, io.RawIOBase)
            self.fp = io.BufferedReader(_NotingReader(raw, arrival))

    return NotingResponse


class Api:
    """Calls to one edge's admin API with one token."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        debug: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.debug = debug

    # ------------------------------------------------------------------ the exchange

    def _connection(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _exchange(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        deadline: float,
    ) -> tuple[int, str, dict[str, str], bytes]:
        """One try. Raises :class:`NoAnswer` when it failed before any answer."""
        conn = self._connection()
        arrival = _Arrival()
        conn.response_class = _noting_response(arrival)
        # each socket operation waits at most the timeout; the whole call, up to
        # ``deadline``: past it the watchdog shuts the socket, which ends any read a
        # trickle keeps alive
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while chunk := resp.read1(_CHUNK):
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise ClientError(f"the answer from {self.base_url} is too large")
                chunks.append(chunk)
            if expired.is_set():  # cut short by the watchdog: not the whole answer
                raise AnswerTooSlow()
            found = {k.lower(): v for k, v in resp.getheaders()}
            return resp.status, resp.reason, found, b"".join(chunks)
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise AnswerTooSlow() from None
            if not arrival.seen and isinstance(exc, _NO_ANSWER):
                raise NoAnswer(exc) from None
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def _tries(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, dict[str, str], bytes]:
        """The exchange, tried again (idempotent methods only) while no answer comes, as
        long as the next try can start within twice the timeout of the first."""
        deadline = time.monotonic() + 2 * self.timeout
        pause = FIRST_PAUSE
        tries = TRIES if method in IDEMPOTENT else 1
        for attempt in range(1, tries + 1):
            try:
                return self._exchange(method, target, body, headers, deadline)
            except NoAnswer as failure:
                last = attempt == tries or time.monotonic() + pause >= deadline
                if last:
                    raise failure.cause from None
                if self.debug:
                    reason = _reason(failure.cause, self.timeout)
                    print(
                        f"edge: debug: {method} {self.base_url}{target[len(self.prefix) :]}: "
                        f"{reason} (try {attempt} of {tries}, again in {pause:g}s)",
                        file=sys.stderr,
                    )
                time.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        flags: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        """The decoded answer of ``method path`` (``None`` for an empty one).

        ``path`` is already percent-encoded (see :func:`segment`). ``flags`` maps API field
        names to the command's flags, to name both in a validation error. An envelope answer
        (``{"data": ..., "errors": null}``) is unwrapped to its ``data``.
        """
        target = self.prefix + path
        if query:
            target += "?" + urlencode(dict(query))
        headers = {"Accept": "application/json", "User-Agent": f"edge-cli/{__version__}"}
        if auth:
            if not self.token:
                raise ClientError(
                    "no token: pass --token, set TOKEN or ADMIN_TOKEN, or run 'edge login'", 2
                )
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            status, reason, answer_headers, raw = self._tries(method, target, data, headers)
        except ClientError:
            raise
        except ValueError:
            # http.client refuses a header value: the message would show the token
            raise ClientError(
                "cannot send the request: the token or the URL holds characters that "
                "are not allowed in a request header",
                2,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(
                f"cannot reach the edge API at {self.base_url}: {_reason(exc, self.timeout)}",
                transient=True,
            ) from None
        if self.debug:
            took = (time.monotonic() - started) * 1000
            rid = answer_headers.get("x-request-id", "-")
            print(
                f"edge: debug: {method} {self.base_url}{path} -> {status} "
                f"({took:.0f} ms, request {rid})",
                file=sys.stderr,
            )
        doc: Any = None
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
                if 200 <= status < 300:
                    raise ClientError(
                        f"{method} {path}: the answer from {self.base_url} is not JSON "
                        f"({status} {reason})"
                    ) from None
        if 200 <= status < 300:
            if isinstance(doc, dict) and set(doc) == {"data", "errors"}:
                return doc["data"]
            return doc
        error = self.failure(status, reason, answer_headers, doc, flags or {})
        error.transient = status in (502, 503, 504)
        raise error

    def failure(
        self,
        status: int,
        reason: str,
        headers: Mapping[str, str],
        doc: Any,
        flags: Mapping[str, str],
    ) -> ClientError:
        """The one-line error for an answer that is not a success."""
        error: dict[str, Any] | None = None
        if isinstance(doc, dict):
            if isinstance(doc.get("error"), dict):
                error = doc["error"]
            elif isinstance(doc.get("errors"), list) and doc["errors"]:
                first = doc["errors"][0]
                error = first if isinstance(first, dict) else None
        if status == 401:
            return ClientError(
                "the token was refused (401): check --token, TOKEN/ADMIN_TOKEN or the "
                "profile's token ('edge login')"
            )
        if error is None:
            return ClientError(
                f"{status} {reason} from {self.base_url}: not an edge API answer "
                "(is API_URL the edge's admin API?)"
            )
        code = str(error.get("code") or "error")
        message = str(error.get("message") or reason)
        field = error.get("field")
        rid = error.get("request_id") or headers.get("x-request-id")
        where = f" (request {rid})" if rid else ""
        if isinstance(field, str) and field:
            flag = flags.get(field) or flags.get(field.split(".", 1)[0])
            name = f"{field} ({flag})" if flag else field
            if status == 400:
                return ClientError(f"invalid {name}: {message}")
            return ClientError(f"{status} {code}: {message} [field {name}]{where}")
        return ClientError(f"{status} {code}: {one_line(message)}{where}")
