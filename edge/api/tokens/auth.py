"""Bearer authentication of API requests (RFC 6750 section 2.1).

``Authorization: Bearer <token>``, the scheme case-insensitive (RFC 9110 section 11.1). The
token is hashed (:func:`edge.auth.secrets.token_hash`) and looked up through the
``token:hash:`` index; the stored hash is compared in constant time. Every failure is the
same 401 with ``WWW-Authenticate: Bearer realm="edge"``: the client never learns whether the
header was missing, malformed, unknown or stale. The reason travels in the exception's
detail, which the app logs (a fixed :class:`~edge.auth.secrets.AuthFailure` text), never
the token.
"""

from __future__ import annotations

import re

from edge.api.http import Forbidden, Unauthorized
from edge.api.identity import Identity
from edge.api.tokens.store import ADMIN_NAME, TokenStore
from edge.auth.secrets import AuthFailure
from edge.http1.exchange import Exchange

__all__ = ["Identity", "TokenAuth", "authenticate", "bearer_token"]

MAX_TOKEN = 256
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(rb"\A[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+([A-Za-z0-9._~+/-]+=*)[ \t]*\Z")


def bearer_token(ex: Exchange) -> tuple[str | None, AuthFailure]:
    """The bearer token of the request, or None and why not (never raises)."""
    values = [value for name, value in ex.headers if name == b"authorization"]
    if not values:
        return None, AuthFailure.MISSING
    if len(values) > 1 or len(values[0]) > MAX_TOKEN + 16:
        return None, AuthFailure.MALFORMED
    m = _BEARER.match(values[0])
    if m is None or len(m.group(1)) > MAX_TOKEN:
        return None, AuthFailure.MALFORMED
    return m.group(1).decode("ascii"), AuthFailure.UNKNOWN


async def authenticate(ex: Exchange, store: TokenStore) -> Identity:
    """The caller's identity; raises :class:`Unauthorized` (401) on any failure."""
    token, reason = bearer_token(ex)
    record = None
    if token is not None:
        record = await store.authenticate(token)
    if record is None:
        raise Unauthorized(f"authentication failed: {reason.value}")
    ex.user = f"token:{record.name}"  # the logs' user: an API token goes by its name
    return Identity(record.name, record.name == ADMIN_NAME, record.hash)


class TokenAuth:
    """An endpoint's authenticator for API tokens: any valid token, or (``admin_only``)
    the admin token alone (403 for another)."""

    __slots__ = ("admin_only", "store")

    def __init__(self, store: TokenStore, *, admin_only: bool) -> None:
        self.store = store
        self.admin_only = admin_only

    async def __call__(self, ex: Exchange) -> Identity:
        identity = await authenticate(ex, self.store)
        if self.admin_only and not identity.is_admin:
            raise Forbidden(f"token {identity.name!r} is not the admin token")
        return identity
