"""What an :class:`~edge.errors.EdgeError` looks like on the wire, one function per shape.

* :func:`edge_error`: the edge's own answers on the request path (``Exchange.fail``)::

      {"error": {"code": "...", "message": "...", "request_id": "..."}}

* :func:`api_error`: the admin API's error document, or with ``envelope`` the envelope of
  the project and PAT endpoints::

      {"error": {"code": "...", "message": "...", "field": "...", "request_id": "..."}}
      {"data": null, "errors": [{"code": "...", "message": "...", "field": null, ...}]}

  ``field`` appears in the document only when one field of the request is at fault (cut to
  100 characters: it may come from the client); the envelope always has it.

* :func:`oauth_error`: the OAuth 2.0 error response (RFC 6749 section 5.2), with the
  ``WWW-Authenticate`` challenge a 401 must carry (RFC 6750 section 3, RFC 9110 section
  15.5.2)::

      {"error": "invalid_token", "error_description": "..."}

Every shape carries the error's ``code`` and ``public_message``, never exception text, plus
the fields of :meth:`~edge.errors.EdgeError.headers`. A :class:`Rendered` is the status,
those fields, the body and its type; whoever sends it adds the common fields (``Date``,
``X-Request-Id``; ``Cache-Control`` on the API) and decides whether the connection closes.

This module imports nothing of edge but :mod:`edge.errors`, so the request path, the API
and the OAuth server can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from edge.errors import EdgeError

Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
FIELD_MAX = 100  # a field name echoed back is cut here (it may come from the client)

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Rendered:
    """An error response ready to send."""

    status: int
    headers: Headers  # the error's own fields; the sender adds Date, X-Request-Id...
    body: bytes
    content_type: bytes = JSON


def _json(document: Any) -> bytes:
    return _encode(document) + b"\n"


# ---------------------------------------------------------------------------- the edge


def edge_error(error: EdgeError, request_id: str) -> Rendered:
    """The edge's JSON answer on the request path: code, public message, request id."""
    inner = {"code": error.code, "message": error.public_message, "request_id": request_id}
    return Rendered(error.status, error.headers(), _json({"error": inner}))


# ---------------------------------------------------------------------------- the admin API


def _field(error: EdgeError) -> str | None:
    return error.field[:FIELD_MAX] if error.field is not None else None


def api_document(error: EdgeError, request_id: str) -> dict[str, Any]:
    """The admin API's error document (``field`` only when one is at fault)."""
    inner: dict[str, Any] = {"code": error.code, "message": error.public_message}
    field = _field(error)
    if field is not None:
        inner["field"] = field
    inner["request_id"] = request_id
    return {"error": inner}


def api_envelope(error: EdgeError, request_id: str) -> dict[str, Any]:
    """``error`` in the envelope of the project and PAT endpoints (``field`` always set)."""
    inner = {
        "code": error.code,
        "message": error.public_message,
        "field": _field(error),
        "request_id": request_id,
    }
    return {"data": None, "errors": [inner]}


def api_error(error: EdgeError, request_id: str, *, envelope: bool = False) -> Rendered:
    """The admin API's answer: the error document, or the envelope for envelope endpoints."""
    document = api_envelope(error, request_id) if envelope else api_document(error, request_id)
    return Rendered(error.status, error.headers(), _json(document))


# ---------------------------------------------------------------------------- OAuth 2.0


def _oauth_text(text: str) -> str:
    """``text`` within the characters RFC 6749 section 5.2 allows in ``error`` and
    ``error_description`` (%x20-21 / %x23-5B / %x5D-7E): anything else becomes ``?``.

    Without ``"`` and ``\\`` the text is also a valid quoted-string for the challenge.
    """
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def oauth_error(
    error: EdgeError,
    *,
    scheme: str = "Bearer",
    realm: str = "edge",
    credentials_sent: bool = True,
) -> Rendered:
    """The OAuth 2.0 error response of ``error`` (RFC 6749 section 5.2).

    ``error.code`` is the OAuth error code (``invalid_request``, ``invalid_client``,
    ``invalid_grant``, ``invalid_token``...), ``public_message`` its ``error_description``.
    A 401 carries a ``WWW-Authenticate`` challenge in ``scheme``: ``Bearer`` for a protected
    resource (RFC 6750 section 3), the scheme the client authenticated with on the token
    endpoint (``Basic`` for ``invalid_client``, RFC 6749 section 5.2). A Bearer challenge
    names the error only when the request carried credentials: to a request without any,
    RFC 6750 section 3 says to send no error code or other error information. The
    challenge replaces any ``WWW-Authenticate`` of ``error.headers()``; the answer is never
    cached (RFC 6749 section 5.1 asks it of token responses; an error is no different).
    """
    code = _oauth_text(error.code)
    description = _oauth_text(error.public_message)
    headers = [h for h in error.headers() if h[0] != b"www-authenticate"]
    if error.status == 401:
        params = [f'realm="{_oauth_text(realm)}"']
        if credentials_sent and scheme.lower() == "bearer":
            params += [f'error="{code}"', f'error_description="{description}"']
        challenge = f"{scheme} {', '.join(params)}".encode("ascii")
        headers.append((b"www-authenticate", challenge))
    headers += [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
    body = _json({"error": code, "error_description": description})
    return Rendered(error.status, headers, body)
