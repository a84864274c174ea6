"""HTTP plumbing of the JSON API: errors, responses, and JSON request bodies.

The API's errors are :class:`~edge.errors.EdgeError` subclasses (their ``code`` is what
clients switch on), and any ``EdgeError`` an endpoint raises renders as::

    {"error": {"code": "<snake_case>", "message": "...", "field": "...", "request_id": "..."}}

or, on envelope endpoints, ``{"data": null, "errors": [...]}``
(:func:`edge.http1.render.api_error`). ``field`` is present only when one field of the
request is at fault. ``message`` is a fixed public text (or msgspec's description of a
validation problem); exception text and request data other than a field name never reach
the client.

Request bodies are pulled through the Exchange body API (:class:`BodyReader` is the
``BodySink``) into memory, bounded by ``limit``: a declared ``Content-Length`` above it is
refused before a byte is read, a chunked body when it crosses it. The connection's body
idle deadline (``CLIENT_BODY_TIMEOUT``) applies while reading.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from edge.auth.secrets import AuthOverloaded
from edge.config.msgspec_errors import Wording, translate
from edge.errors import EdgeError, Fault, WsClose
from edge.http1.exchange import Exchange, Headers
from edge.http1.render import api_error
from edge.http1.responses import simple_headers

__all__ = [
    "BODY_LIMIT",
    "ApiError",
    "BodyReader",
    "Busy",
    "ClientGone",
    "Conflict",
    "Forbidden",
    "InvalidBody",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RedisUnavailable",
    "Response",
    "Unauthorized",
    "UnsupportedMediaType",
    "declared_length",
    "decode_json",
    "error_response",
    "is_json_type",
    "json_response",
    "read_body",
]

BODY_LIMIT = 1 << 20  # 1 MiB: far above any admin API document

_encode = msgspec.json.Encoder().encode
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


class ApiError(EdgeError):
    """An error of the admin API's own (its public messages speak of endpoints, bodies,
    tokens); raised bare, a 500 ``internal_error``."""


class InvalidBody(ApiError):
    status = 400
    code = "invalid_body"
    public_message = "the request body is not valid"


class Unauthorized(ApiError):
    """401. The message is the same whatever failed (RFC 6750 section 3)."""

    status = 401
    code = "unauthorized"
    public_message = "authentication required: send 'Authorization: Bearer <token>'"

    def headers(self) -> Headers:
        return [(b"www-authenticate", b'Bearer realm="edge"')]


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    public_message = "this endpoint requires the admin token"


class NotFound(ApiError):
    status = 404
    code = "not_found"
    public_message = "no such endpoint"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"
    public_message = "method not allowed on this endpoint"

    def __init__(self, allow: list[str]) -> None:
        super().__init__(f"allowed: {', '.join(allow)}")
        self.allow = allow

    def headers(self) -> Headers:
        return [(b"allow", ", ".join(self.allow).encode("ascii"))]


class Conflict(ApiError):
    status = 409
    code = "conflict"
    public_message = "the request conflicts with the current state"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"
    public_message = f"the request body is larger than {BODY_LIMIT} bytes"
    ws_close = WsClose.MESSAGE_TOO_BIG
    # the rest of the body is never read, so the connection closes after the answer (the
    # connection adds ``Connection: close`` itself for a body nobody reads)


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"
    public_message = "request bodies must be JSON: send 'Content-Type: application/json'"


class RedisUnavailable(ApiError):
    status = 503
    code = "redis_unavailable"
    public_message = "the token store (redis) is unavailable; retry shortly"
    peer_fault = Fault.NONE
    ws_close = WsClose.TRY_AGAIN_LATER


class Busy(ApiError):
    """503 with ``Retry-After``: too many token verifications are queued."""

    status = 503
    code = "auth_overloaded"
    public_message = AuthOverloaded.public_message
    peer_fault = Fault.NONE
    ws_close = WsClose.TRY_AGAIN_LATER

    def headers(self) -> Headers:
        return [(b"retry-after", str(AuthOverloaded.retry_after).encode("ascii"))]


class ClientGone(Exception):
    """The client went away while its body was being read: nobody to answer."""


# ---------------------------------------------------------------------------- responses


@dataclass(slots=True)
class Response:
    """What an endpoint returns: a status and a JSON-encodable document (None: no body),
    or ``text``: a ``text/plain`` body instead (a table for people to read)."""

    status: int
    document: Any = None
    headers: Headers = field(default_factory=list)
    text: str | None = None


def _common(extra: Headers) -> Headers:
    # RFC 6750 section 5.3 / RFC 9111 section 5.2.2.5: answers may carry tokens, never cache
    return [(b"cache-control", b"no-store"), *extra]


def json_response(ex: Exchange, response: Response) -> None:
    """Send ``response`` on ``ex`` as JSON, or its ``text`` as plain text (a no-op if the
    client is already gone)."""
    if ex.finished:
        return
    if response.text is not None:
        body = response.text.encode("utf-8")
        ex.respond(response.status, body, TEXT, _common(response.headers))
        return
    if response.document is None:
        # RFC 9110 section 8.6: no Content-Length (nor a body) on a 204
        headers = simple_headers(JSON, 0, ex.request_id)
        headers = [h for h in headers if h[0] not in (b"content-length", b"content-type")]
        headers.extend(_common(response.headers))
        ex.start_response(response.status, headers)
        ex.end_response()
        return
    body = _encode(response.document) + b"\n"
    ex.respond(response.status, body, JSON, _common(response.headers))


def error_response(ex: Exchange, error: EdgeError, *, envelope: bool = False) -> None:
    """Answer with ``error``'s JSON document, or abort if a response already started."""
    if ex.finished:
        return
    if ex.response_started:
        ex.abort()
        return
    answer = api_error(error, ex.request_id, envelope=envelope)
    ex.respond(answer.status, answer.body, answer.content_type, _common(answer.headers))


# ---------------------------------------------------------------------------- request bodies


def invalid_query(field: str | None, message: str) -> InvalidBody:
    """400 ``invalid_query``, naming the parameter at fault."""
    return InvalidBody("bad query", code="invalid_query", public_message=message, field=field)


def query_pairs(ex: Exchange) -> list[tuple[str, str]]:
    """The request's query parameters, in order (blank values kept); 400 ``invalid_query``
    when the query string does not decode."""
    _, _, query = ex.target.partition(b"?")
    try:
        return parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidBody(
            "undecodable query",
            code="invalid_query",
            public_message="the query string is not valid",
        ) from None


def only_query_param(ex: Exchange, name: str) -> list[str]:
    """Every value given for ``name``, the one query parameter an endpoint takes (the
    caller checks how many and what): any other parameter is 400 ``invalid_query``."""
    values: list[str] = []
    for key, value in query_pairs(ex):
        if key != name:
            raise invalid_query(key, f"unknown query parameter (only {name} is accepted)")
        values.append(value)
    return values


def declared_length(ex: Exchange) -> int | None:
    """The request's Content-Length (h11 has validated it), or None when chunked/absent."""
    for name, value in ex.headers:
        if name == b"content-length":
            return int(value)
    return None


_JSON_TYPE = re.compile(rb"\A[ \t]*application/(?:[a-z0-9.+-]+\+)?json[ \t]*(?:;|\Z)", re.I)


def is_json_type(ex: Exchange) -> bool:
    """Content-Type is ``application/json`` or ``application/*+json`` (parameters allowed)."""
    values = [value for name, value in ex.headers if name == b"content-type"]
    return len(values) == 1 and _JSON_TYPE.match(values[0]) is not None


class BodyReader:
    """``BodySink`` collecting a request body of at most ``limit`` bytes into a future."""

    __slots__ = ("_chunks", "_size", "ex", "future", "limit")

    def __init__(self, ex: Exchange, limit: int) -> None:
        self.ex = ex
        self.limit = limit
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._chunks: list[bytes] = []
        self._size = 0

    def body_data(self, data: bytes) -> None:
        if self.future.done():
            return
        self._size += len(data)
        if self._size > self.limit:
            self._chunks.clear()
            # stop reading now (the connection closes after the answer). The 413 is sent
            # from the handler's task, never from inside this callback: the connection is
            # still iterating over h11's events.
            self.ex.abandon_body()
            self.future.set_exception(PayloadTooLarge())
            return
        self._chunks.append(data)

    def body_end(self) -> None:
        if not self.future.done():
            self.future.set_result(b"".join(self._chunks))
            self._chunks.clear()

    def downstream_lost(self) -> None:
        if not self.future.done():
            self._chunks.clear()
            self.future.set_exception(ClientGone())


async def read_body(ex: Exchange, limit: int = BODY_LIMIT) -> bytes:
    """The whole request body (``b""`` when there is none), within ``limit`` bytes."""
    if not ex.has_body:
        return b""
    length = declared_length(ex)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"declared {length} bytes")
    reader = BodyReader(ex, limit)
    ex.read_body(reader)
    return await reader.future


S = TypeVar("S")

# An API client gets msgspec's own sentence ("Expected `str`, got `int`") and the whole
# path of the value as the field ("proxies[0].hostname"): a body's field is a path.
_BODY_WORDING = Wording(raw=True)


def decode_json(data: bytes, kind: type[S]) -> S:
    """Decode ``data`` into the strict Struct ``kind``; 400 naming the field at fault."""
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        field_path, message = translate(exc, _BODY_WORDING)
        raise InvalidBody(
            "validation failed", public_message=message[:200], field=field_path
        ) from None
    except msgspec.DecodeError:
        raise InvalidBody(
            "malformed JSON", code="invalid_json", public_message="the body is not valid JSON"
        ) from None
