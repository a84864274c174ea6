"""The error renderer: the edge's JSON, the admin API's document and envelope, OAuth's shape."""

from __future__ import annotations

import json

import pytest

from edge.api.http import Busy, InvalidBody, MethodNotAllowed, NotFound, Unauthorized
from edge.auth.secrets import AuthFailed
from edge.errors import (
    ClientError,
    EdgeError,
    NoRoute,
    RequestLineTooLong,
    UpstreamConnectTimeout,
)
from edge.errors import MethodNotAllowed as ConnectRefused
from edge.http1.render import (
    JSON,
    Rendered,
    api_document,
    api_envelope,
    api_error,
    edge_error,
    oauth_error,
)

RID = "0a1b2c3d4e5f6a7b-1"


# ---------------------------------------------------------------------------- the edge


@pytest.mark.parametrize(
    ("error", "body"),
    [
        (
            NoRoute("host x"),
            b'{"error":{"code":"not_found","message":"no proxy is configured for this host",'
            b'"request_id":"0a1b2c3d4e5f6a7b-1"}}\n',
        ),
        (
            UpstreamConnectTimeout("connect to 127.0.0.1:1 timed out"),
            b'{"error":{"code":"gateway_timeout","message":"gateway timeout: upstream connect '
            b'timed out","request_id":"0a1b2c3d4e5f6a7b-1"}}\n',
        ),
        (
            ClientError("h11 said no", status=414),
            b'{"error":{"code":"uri_too_long","message":"bad request",'
            b'"request_id":"0a1b2c3d4e5f6a7b-1"}}\n',
        ),
        (
            RequestLineTooLong(),
            b'{"error":{"code":"uri_too_long","message":"request line too long",'
            b'"request_id":"0a1b2c3d4e5f6a7b-1"}}\n',
        ),
    ],
)
def test_edge_body_bytes(error: EdgeError, body: bytes) -> None:
    answer = edge_error(error, RID)
    assert answer == Rendered(error.status, [], body, JSON)


def test_edge_body_never_carries_the_detail_or_a_field() -> None:
    error = NoRoute("secret detail", public_message="disabled", field="host")
    doc = json.loads(edge_error(error, RID).body)
    assert doc == {"error": {"code": "not_found", "message": "disabled", "request_id": RID}}


def test_edge_error_headers_are_the_errors() -> None:
    answer = edge_error(ConnectRefused(), RID)
    assert answer.status == 405
    assert answer.headers == [(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]


# ---------------------------------------------------------------------------- the admin API


def test_api_document_without_and_with_field() -> None:
    assert api_document(NotFound(), RID) == {
        "error": {"code": "not_found", "message": "no such endpoint", "request_id": RID}
    }
    error = InvalidBody("bad", public_message="expected a string", field="x" * 150)
    doc = api_document(error, RID)
    assert list(doc["error"]) == ["code", "message", "field", "request_id"]
    assert doc["error"]["field"] == "x" * 100


def test_api_envelope_always_has_field() -> None:
    assert api_envelope(NotFound(code="project_not_found"), RID) == {
        "data": None,
        "errors": [
            {
                "code": "project_not_found",
                "message": "no such endpoint",
                "field": None,
                "request_id": RID,
            }
        ],
    }
    doc = api_envelope(InvalidBody(field="y" * 101), RID)
    assert doc["errors"][0]["field"] == "y" * 100


def test_api_error_bytes_and_headers() -> None:
    answer = api_error(Unauthorized(), RID)
    assert answer.status == 401
    assert answer.body == (
        b'{"error":{"code":"unauthorized","message":"authentication required: send '
        b'\'Authorization: Bearer <token>\'","request_id":"0a1b2c3d4e5f6a7b-1"}}\n'
    )
    assert answer.headers == [(b"www-authenticate", b'Bearer realm="edge"')]
    busy = api_error(Busy(), RID, envelope=True)
    assert busy.headers == [(b"retry-after", b"1")]
    assert json.loads(busy.body)["errors"][0]["code"] == "auth_overloaded"
    allow = api_error(MethodNotAllowed(["GET", "DELETE"]), RID)
    assert allow.headers == [(b"allow", b"GET, DELETE")]


def test_api_renders_any_edge_error() -> None:
    doc = json.loads(api_error(NoRoute("x"), RID).body)
    assert doc["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------- OAuth 2.0


class InvalidGrant(EdgeError):
    status = 400
    code = "invalid_grant"
    public_message = "the authorization code has expired"


class InvalidToken(EdgeError):
    status = 401
    code = "invalid_token"
    public_message = "The access token expired"


class InvalidClient(EdgeError):
    status = 401
    code = "invalid_client"
    public_message = "client authentication failed"


def _header(answer: Rendered, name: bytes) -> list[bytes]:
    return [value for key, value in answer.headers if key == name]


def test_oauth_token_endpoint_error() -> None:
    answer = oauth_error(InvalidGrant("code abc expired"))
    assert answer.status == 400
    assert answer.content_type == b"application/json"
    assert json.loads(answer.body) == {
        "error": "invalid_grant",
        "error_description": "the authorization code has expired",
    }
    assert answer.body.endswith(b"}\n")
    assert _header(answer, b"www-authenticate") == []
    assert _header(answer, b"cache-control") == [b"no-store"]
    assert _header(answer, b"pragma") == [b"no-cache"]


def test_oauth_401_bearer_challenge_names_the_error() -> None:
    answer = oauth_error(InvalidToken(), realm="example")
    assert answer.status == 401
    # RFC 6750 section 3's own example
    assert _header(answer, b"www-authenticate") == [
        b'Bearer realm="example", error="invalid_token", '
        b'error_description="The access token expired"'
    ]


def test_oauth_401_without_credentials_names_no_error() -> None:
    answer = oauth_error(InvalidToken(), credentials_sent=False)
    assert _header(answer, b"www-authenticate") == [b'Bearer realm="edge"']
    assert json.loads(answer.body)["error"] == "invalid_token"


def test_oauth_invalid_client_challenges_in_the_clients_scheme() -> None:
    answer = oauth_error(InvalidClient(), scheme="Basic")
    assert _header(answer, b"www-authenticate") == [b'Basic realm="edge"']


def test_oauth_challenge_replaces_the_errors_own() -> None:
    for error in (Unauthorized(code="invalid_token"), AuthFailed()):
        answer = oauth_error(error)
        challenges = _header(answer, b"www-authenticate")
        assert len(challenges) == 1 and challenges[0].startswith(b'Bearer realm="edge", error=')


def test_oauth_keeps_other_error_headers() -> None:
    answer = oauth_error(Busy())
    assert _header(answer, b"retry-after") == [b"1"]
    assert answer.status == 503


def test_oauth_text_stays_within_rfc6749_characters() -> None:
    error = InvalidToken(public_message='bad "quote" \\ and caf\u00e9\n')
    answer = oauth_error(error)
    description = json.loads(answer.body)["error_description"]
    assert description == "bad ?quote? ? and caf??"
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in description)
    challenge = _header(answer, b"www-authenticate")[0]
    assert challenge.endswith(b'error_description="bad ?quote? ? and caf??"')
