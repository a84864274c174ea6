"""What the OAuth server keeps in Redis, one strict document per key family.

Each record is a frozen msgspec Struct encoded as JSON. Secrets never appear in them:
client secrets, registration access tokens and refresh tokens are stored as SHA-256 hex
digests (:func:`digest`), compared in constant time; authorization codes and states are
the keys' names, consumed with GETDEL, so a stored record is useless without them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal, TypeAlias, TypeVar

import msgspec

AuthMethod: TypeAlias = Literal["none", "client_secret_basic", "client_secret_post"]
# edge: the edge itself signing browsers in to a proxy in redirect mode (never stored)
ClientSource: TypeAlias = Literal["dcr", "admin", "cimd", "edge"]


def digest(secret: str) -> str:
    """The SHA-256 hex digest a secret is stored and looked up by (the secrets are
    random, 256 bits: no salt or slow hash is needed, unlike passwords)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    """Constant-time: does ``secret`` hash to ``stored_digest``?"""
    return hmac.compare_digest(digest(secret), stored_digest)


def new_secret(nbytes: int = 32) -> str:
    """A random URL-safe secret (codes, states, tokens, session ids, CSRF tokens)."""
    return secrets.token_urlsafe(nbytes)


class _Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ClientRecord(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:client:{id}``: a client registered dynamically (RFC 7591) or by the admin,
    or (never stored) read from its Client ID Metadata Document."""

    client_id: str
    client_name: str | None = None
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    response_types: tuple[str, ...] = ("code",)
    token_endpoint_auth_method: AuthMethod = "none"
    client_secret_hash: str | None = None  # confidential clients only
    client_secret_expires_at: int = 0  # RFC 7591: 0 = never
    scope: str | None = None  # space-separated scopes it may ask for; None: the server's
    client_uri: str | None = None
    logo_uri: str | None = None
    contacts: tuple[str, ...] = ()
    software_id: str | None = None
    software_version: str | None = None
    registration_access_token_hash: str | None = None  # RFC 7592 management
    client_id_issued_at: int = 0
    expires_at: int | None = None  # OAUTH_CLIENT_LIFETIME after registration; None: never
    source: ClientSource = "dcr"

    @property
    def confidential(self) -> bool:
        return self.token_endpoint_auth_method != "none"


class GitHubUser(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who signed in: GitHub's numeric id and login, and the primary verified e-mail."""

    github_id: int
    login: str
    email: str | None = None
    name: str | None = None

    @property
    def sub(self) -> str:
        return f"github:{self.github_id}"


class AuthorizationRequest(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A validated ``/authorize`` request, carried through the GitHub round trip
    (``oauth:state:{state}``) and the consent page (``oauth:request:{id}``)."""

    client_id: str
    redirect_uri: str
    # sent by the client (else the client's only registered one): the token request must
    # then repeat it (RFC 6749 section 4.1.3), and need not otherwise
    redirect_uri_given: bool = True
    scope: tuple[str, ...]
    state: str | None = None  # the client's, echoed back
    code_challenge: str
    resources: tuple[str, ...] = ()  # RFC 8707, in the order asked
    proxy_hostname: str | None = None  # the proxy whose allowlist applies, if any
    created_at: int


class LoginState(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:state:{state}``: a login sent to GitHub (TTL ``OAUTH_SESSION_TIMEOUT``)."""

    request: AuthorizationRequest
    browser_hash: str  # digest of the login cookie of the browser that started it


class ConsentRequest(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:request:{id}``: an authorization waiting for the user's approval, with the
    digest of the CSRF token the consent form carries."""

    request: AuthorizationRequest
    user: GitHubUser
    csrf_hash: str
    session_hash: str  # the browser session it was shown to (the form is refused elsewhere)


class ProxyLogin(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:proxy_login:{state hash}``: a browser sent from a proxy in redirect mode to
    sign in, until it comes back to the proxy's callback (TTL ``LOGIN_TTL``)."""

    host: str  # the host (and port) the browser addressed
    redirect_uri: str
    resource: str
    return_to: str  # the path and query it asked for
    created_at: int


class CodeGrant(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:code:{code}``: what redeeming the code yields (TTL ``OAUTH_CODE_LIFETIME``)."""

    client_id: str
    redirect_uri: str
    redirect_uri_given: bool = True
    scope: tuple[str, ...]
    resources: tuple[str, ...]
    proxy_hostname: str | None = None  # the proxy whose allowlist applied, if named
    code_challenge: str
    user: GitHubUser
    issued_at: int


class AccessTokenRecord(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:token:{jti}``: an access token issued (TTL: its lifetime). The token itself
    (a signed JWT) is never stored."""

    jti: str
    family_id: str
    client_id: str
    sub: str
    login: str
    email: str | None = None
    scope: tuple[str, ...]
    audience: tuple[str, ...]
    issued_at: int
    expires_at: int


class RefreshRecord(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:refresh:{sha256}``, stored in the hash's ``doc`` field beside a ``uses``
    counter (``HINCRBY`` says atomically whether this is the first use). TTL: its lifetime."""

    family_id: str
    client_id: str
    user: GitHubUser
    scope: tuple[str, ...]
    resources: tuple[str, ...]
    proxy_hostname: str | None = None  # with the resources: whose allowlists apply
    issued_at: int
    expires_at: int


class BrowserSession(_Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:session:{sha256 of the cookie}``: a signed-in browser (TTL
    ``OAUTH_BROWSER_SESSION_LIFETIME``)."""

    user: GitHubUser
    created_at: int
    expires_at: int
    user_agent: str | None = None


R = TypeVar("R", bound=_Record)

_encoder = msgspec.json.Encoder()


def encode(record: _Record) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes | str, kind: type[R]) -> R:
    """Decode a stored record; raises ``msgspec.ValidationError``/``DecodeError`` when the
    stored value is damaged (callers treat it as absent and log the key)."""
    return msgspec.json.decode(data, type=kind)
