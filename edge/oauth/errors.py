"""The OAuth server's errors: RFC 6749 section 5.2 codes, raised anywhere, rendered once.

``code`` is the RFC's ``error`` member and ``public_message`` its ``error_description``;
an endpoint answers them as JSON (the token, revocation, introspection and registration
endpoints), as ``error=`` on the client's redirect URI (authorization errors that can be
redirected), or as an HTML page (a bad client or redirect URI: never a redirect).
"""

from __future__ import annotations

from edge.errors import EdgeError, Fault


class OAuthError(EdgeError):
    """An OAuth error answered with the RFC's JSON document (400 ``invalid_request``)."""

    status = 400
    code = "invalid_request"
    public_message = "the request is missing a parameter or is malformed"
    peer_fault = Fault.CLIENT


class InvalidRequest(OAuthError):
    pass


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 section 5.2): 401, with a challenge when
    the client tried HTTP Basic."""

    status = 401
    code = "invalid_client"
    public_message = "client authentication failed"

    basic = False  # the client tried HTTP Basic (the challenge then names that scheme)

    def __init__(self, detail: str = "", *, basic: bool = False, **kw: object) -> None:
        super().__init__(detail, **kw)  # type: ignore[arg-type]
        self.basic = basic

    def headers(self) -> list[tuple[bytes, bytes]]:
        # RFC 9110 section 15.5.2: a 401 carries a challenge; RFC 6749 section 5.2 names
        # Basic for a client that authenticated with it, and Basic is what this server
        # takes from confidential clients
        return [(b"www-authenticate", b'Basic realm="oauth"')]


class InvalidGrant(OAuthError):
    code = "invalid_grant"
    public_message = "the grant is invalid, expired, revoked or was issued to another client"


class UnauthorizedClient(OAuthError):
    code = "unauthorized_client"
    public_message = "this client may not use this grant type"


class UnsupportedGrantType(OAuthError):
    code = "unsupported_grant_type"
    public_message = "grant_type must be authorization_code or refresh_token"


class UnsupportedResponseType(OAuthError):
    code = "unsupported_response_type"
    public_message = "response_type must be code"


class InvalidScope(OAuthError):
    code = "invalid_scope"
    public_message = "the requested scope is invalid, unknown or not allowed for this client"


class InvalidTarget(OAuthError):
    """RFC 8707: a ``resource`` this server does not know, or one not authorized."""

    code = "invalid_target"
    public_message = "the requested resource is invalid or was not authorized"


class AccessDenied(OAuthError):
    status = 403
    code = "access_denied"
    public_message = "the resource owner or the server denied the request"


class InvalidClientMetadata(OAuthError):
    """RFC 7591 section 3.2.2."""

    code = "invalid_client_metadata"
    public_message = "the client metadata is invalid"


class InvalidRedirectUri(OAuthError):
    code = "invalid_redirect_uri"
    public_message = "a redirect URI is invalid"


class InvalidToken(OAuthError):
    """A bearer token that is missing, malformed, expired, revoked or not ours (RFC 6750)."""

    status = 401
    code = "invalid_token"
    public_message = "the access token is invalid or expired"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Bearer realm="oauth", error="invalid_token"')]


class InsufficientScope(OAuthError):
    status = 403
    code = "insufficient_scope"
    public_message = "the access token lacks a required scope"


class ServerError(OAuthError):
    """Something on our side (Redis, GitHub) failed: 503, try again."""

    status = 503
    code = "temporarily_unavailable"
    public_message = "the authorization server is temporarily unavailable; try again"
    peer_fault = Fault.NONE
