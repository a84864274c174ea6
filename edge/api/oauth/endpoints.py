"""``/api/v1/oauth``: the authorization server's admin endpoints (admin token only).

* ``GET /clients``, ``GET|DELETE /clients/{client_id}``, ``GET /clients/{client_id}/tokens``:
  registered clients (never their secrets' digests); deleting one also revokes every grant
  family issued to it, or it would go on refreshing.
* ``GET /tokens?client_id=&user=``, ``GET|DELETE /tokens/{jti}``: live access tokens;
  deleting one revokes its whole family (its refresh tokens too, for the same reason).
* ``GET /sessions``, ``GET|DELETE /sessions/{id}``: signed-in browsers (the id is the
  digest of the cookie, never the cookie); deleting one signs that browser out.
* ``GET /status``: issuer, host, signing keys and how many of each record there are.
* ``POST /keys/rotate``: a new signing key; the old one stays published until the last
  token it signed has expired (:meth:`~edge.oauth.signing.SigningKeys.rotate`).

Without an OAuth server (no ``AUTH_HOSTNAME``, ``BASE_DOMAIN`` nor ``OAUTH_ISSUER``) every
endpoint still authenticates, then answers 404 ``oauth_disabled``: the admin learns why,
a caller without the admin token learns nothing.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from edge.api.http import Conflict, NotFound, Response, invalid_query, query_pairs
from edge.api.identity import Identity
from edge.api.oauth import inventory
from edge.api.oauth.inventory import Damaged, Listing
from edge.api.request import ApiRequest, Endpoint, Handler, Scoped
from edge.api.router import Router
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore
from edge.oauth.grants import revoke_client, revoke_family
from edge.oauth.records import AccessTokenRecord, BrowserSession, ClientRecord
from edge.oauth.revocation import RevokedTokens
from edge.oauth.signing import KeyRotationRefused, SigningKeys
from edge.store import keys

__all__ = ["PREFIX", "OAuthAdminApi", "OAuthAdminDeps", "OAuthDisabled", "OAuthScope"]

PREFIX = "/api/v1/oauth"

# what may address a record: anything else is a 404 without a Redis call, so a path
# segment such as "*" or "x:y" never reaches a key name
_CLIENT_ID = re.compile(r"\A[\x21-\x7e]{1,512}\Z")  # printable ASCII, no blank (CIMD URLs too)
_JTI = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")  # new_secret(16): URL-safe base64
_SESSION_ID = re.compile(r"\A[0-9a-f]{64}\Z")  # the SHA-256 hex digest of the cookie


class OAuthDisabled(NotFound):
    code = "oauth_disabled"
    public_message = (
        "the OAuth server is not enabled on this edge "
        "(set AUTH_HOSTNAME, BASE_DOMAIN or OAUTH_ISSUER)"
    )


class DamagedRecord(Conflict):
    code = "damaged_record"
    public_message = (
        "the stored record does not decode (its key is in the edge's log); DELETE removes it"
    )


@dataclass(frozen=True, slots=True)
class OAuthAdminDeps:
    """What the endpoints need of the worker's authorization server: its signing keys,
    its revocations (memory, and where revocations are written), and its names."""

    signing: SigningKeys
    revoked: RevokedTokens
    issuer: str
    auth_hostname: str


@dataclass(frozen=True, slots=True)
class OAuthScope:
    """What a handler acts as and through: the caller, the API's Redis client and its
    time bound, and the server (None: no OAuth server on this edge)."""

    caller: Identity
    redis: aioredis.Redis
    timeout: float
    server: OAuthAdminDeps | None

    def enabled(self) -> OAuthAdminDeps:
        if self.server is None:
            raise OAuthDisabled("no OAuth issuer configured")
        return self.server


Req = ApiRequest[OAuthScope]


def _bounded(handler: Callable[[Req], Awaitable[Response]]) -> Handler[OAuthScope]:
    """The handler, after the disabled check, within the store's time bound (all its
    round trips: a scan of many keys is one call of the API)."""

    @functools.wraps(handler)
    async def run(req: Req) -> Response:
        req.scope.enabled()
        async with asyncio.timeout(req.scope.timeout):
            return await handler(req)

    return run


# ---------------------------------------------------------------------------- views


def _iso(moment: int | None) -> str | None:
    """Unix seconds as the API's other times are written (``2024-05-01T12:00:00Z``)."""
    if not moment:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def client_summary(client: ClientRecord) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "client_name": client.client_name,
        "redirect_uris": list(client.redirect_uris),
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "scope": client.scope,
        "source": client.source,
        "client_id_issued_at": _iso(client.client_id_issued_at),
        "expires_at": _iso(client.expires_at),
        "expired": client.expires_at is not None and client.expires_at <= time.time(),
    }


def client_detail(client: ClientRecord) -> dict[str, Any]:
    """Every field but the digests (of the secret, of the registration token)."""
    return {
        **client_summary(client),
        "grant_types": list(client.grant_types),
        "response_types": list(client.response_types),
        "confidential": client.confidential,
        "client_secret_expires_at": _iso(client.client_secret_expires_at),
        "registration_managed": client.registration_access_token_hash is not None,
        "client_uri": client.client_uri,
        "logo_uri": client.logo_uri,
        "contacts": list(client.contacts),
        "software_id": client.software_id,
        "software_version": client.software_version,
    }


def token_view(record: AccessTokenRecord, revoked: RevokedTokens) -> dict[str, Any]:
    return {
        "jti": record.jti,
        "client_id": record.client_id,
        "sub": record.sub,
        "login": record.login,
        "email": record.email,
        "scope": " ".join(record.scope),
        "audience": list(record.audience),
        "family_id": record.family_id,
        "issued_at": _iso(record.issued_at),
        "expires_at": _iso(record.expires_at),
        "revoked": revoked.is_revoked(record.jti),
    }


def session_view(session_id: str, session: BrowserSession) -> dict[str, Any]:
    user = session.user
    return {
        "id": session_id,
        "login": user.login,
        "github_id": user.github_id,
        "sub": user.sub,
        "email": user.email,
        "created_at": _iso(session.created_at),
        "expires_at": _iso(session.expires_at),
        "user_agent": session.user_agent,
    }


def _listed(name: str, listing: Listing[Any], view: Callable[[str, Any], Any]) -> Response:
    items = [view(item_id, record) for item_id, record in listing.items]
    return Response(200, {name: items, "damaged": listing.damaged})


# ---------------------------------------------------------------------------- requests


def _query(req: Req, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each among ``allowed``, given once, not empty."""
    pairs = query_pairs(req.ex)
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            names = ", ".join(allowed) or "none"
            raise invalid_query(name, f"unknown query parameter (accepted: {names})")
        if name in found or not value:
            raise invalid_query(name, f"{name} must be given once, not empty")
        found[name] = value
    return found


def _client_not_found() -> NotFound:
    return NotFound(code="client_not_found", public_message="no client with this client_id")


def _token_not_found() -> NotFound:
    return NotFound(code="token_not_found", public_message="no live access token with this jti")


def _session_not_found() -> NotFound:
    return NotFound(code="session_not_found", public_message="no browser session with this id")


def _param(req: Req, name: str, rule: re.Pattern[str], missing: Callable[[], NotFound]) -> str:
    value = req.params[name]
    if not rule.match(value):
        raise missing()
    return value


# ---------------------------------------------------------------------------- clients


async def list_clients(req: Req) -> Response:
    listing = await inventory.clients(req.scope.redis)
    return _listed("clients", listing, lambda _, client: client_summary(client))


async def get_client(req: Req) -> Response:
    client_id = _param(req, "client_id", _CLIENT_ID, _client_not_found)
    try:
        client = await inventory.read_one(
            req.scope.redis, keys.oauth_client(client_id), ClientRecord
        )
    except Damaged:
        raise DamagedRecord("damaged client record") from None
    if client is None:
        raise _client_not_found()
    return Response(200, client_detail(client))


async def delete_client(req: Req) -> Response:
    """The record first (no new grant finds the client), then every family issued to it.
    A client that was never stored (a Client ID Metadata Document's URL) can have tokens
    too: they are revoked the same way."""
    scope = req.scope
    server = scope.enabled()
    client_id = _param(req, "client_id", _CLIENT_ID, _client_not_found)
    deleted = bool(await scope.redis.delete(keys.oauth_client(client_id)))
    revoked = await revoke_client(scope.redis, server.revoked, client_id)
    if not deleted and not revoked:
        raise _client_not_found()
    return Response(200, {"client_id": client_id, "deleted": deleted, "revoked": revoked})


async def client_tokens(req: Req) -> Response:
    scope = req.scope
    server = scope.enabled()
    client_id = _param(req, "client_id", _CLIENT_ID, _client_not_found)
    listing = await inventory.access_tokens(scope.redis, client_id=client_id)
    if not listing.items and not await scope.redis.exists(keys.oauth_client(client_id)):
        raise _client_not_found()
    return _listed("tokens", listing, lambda _, token: token_view(token, server.revoked))


# ---------------------------------------------------------------------------- tokens


async def list_tokens(req: Req) -> Response:
    scope = req.scope
    server = scope.enabled()
    query = _query(req, ("client_id", "user"))
    listing = await inventory.access_tokens(
        scope.redis, client_id=query.get("client_id"), user=query.get("user")
    )
    return _listed("tokens", listing, lambda _, token: token_view(token, server.revoked))


async def _live_token(req: Req) -> tuple[str, AccessTokenRecord]:
    jti = _param(req, "jti", _JTI, _token_not_found)
    record = await inventory.read_one(req.scope.redis, keys.oauth_token(jti), AccessTokenRecord)
    if record is None or record.expires_at <= time.time():
        raise _token_not_found()
    return jti, record


async def get_token(req: Req) -> Response:
    try:
        _, record = await _live_token(req)
    except Damaged:
        raise DamagedRecord("damaged access token record") from None
    return Response(200, token_view(record, req.scope.enabled().revoked))


async def delete_token(req: Req) -> Response:
    """Revoke the token's whole family: revoking the access token alone would leave its
    refresh token to the client, which would simply get another."""
    scope = req.scope
    server = scope.enabled()
    try:
        jti, record = await _live_token(req)
    except Damaged as exc:
        return await _revoke_damaged(scope, server, exc.key)
    revoked = await revoke_family(scope.redis, server.revoked, record.family_id)
    if not revoked:
        # the family record is gone (it never outlives its tokens, unless edited by hand):
        # the access token is still revoked by itself
        await server.revoked.revoke(jti, record.expires_at)
        await scope.redis.delete(keys.oauth_token(jti))
        revoked = 1
    document = {"jti": jti, "family_id": record.family_id, "revoked": revoked}
    return Response(200, document)


async def _revoke_damaged(scope: OAuthScope, server: OAuthAdminDeps, key: str) -> Response:
    """A token record that does not decode names no family: its ``jti`` (the key) is
    revoked until the key would have expired, and the record removed."""
    jti = key[len(keys.OAUTH_TOKEN) :]
    ttl = int(await scope.redis.ttl(key))
    if ttl > 0:
        await server.revoked.revoke(jti, int(time.time()) + ttl)
    await scope.redis.delete(key)
    return Response(200, {"jti": jti, "family_id": None, "revoked": 1})


# ---------------------------------------------------------------------------- sessions


async def list_sessions(req: Req) -> Response:
    return _listed("sessions", await inventory.sessions(req.scope.redis), session_view)


async def get_session(req: Req) -> Response:
    session_id = _param(req, "session_id", _SESSION_ID, _session_not_found)
    try:
        session = await inventory.read_one(
            req.scope.redis, keys.oauth_session(session_id), BrowserSession
        )
    except Damaged:
        raise DamagedRecord("damaged browser session record") from None
    if session is None or session.expires_at <= time.time():
        raise _session_not_found()
    return Response(200, session_view(session_id, session))


async def delete_session(req: Req) -> Response:
    """Sign the browser out: its next request finds no session and goes to GitHub again.
    The tokens its sign-ins issued belong to their clients and stay valid."""
    session_id = _param(req, "session_id", _SESSION_ID, _session_not_found)
    if not await req.scope.redis.delete(keys.oauth_session(session_id)):
        raise _session_not_found()
    return Response(204)


# ---------------------------------------------------------------------------- server


def _published(signing: SigningKeys) -> list[str]:
    return [str(key.get("kid")) for key in signing.jwks().get("keys", [])]


async def status(req: Req) -> Response:
    scope = req.scope
    server = scope.enabled()
    redis = scope.redis
    signing = server.signing
    published = _published(signing)
    document = {
        "issuer": server.issuer,
        "auth_hostname": server.auth_hostname,
        "key_source": signing.source,
        "active_kid": signing.active_kid,
        "published_keys": len(published),
        "published_kids": published,
        "clients": await inventory.count(redis, keys.OAUTH_CLIENT),
        "tokens": await inventory.count(redis, keys.OAUTH_TOKEN),
        "sessions": await inventory.count(redis, keys.OAUTH_SESSION),
        "revoked": await inventory.live_revocations(redis),
    }
    return Response(200, document)


async def rotate_key(req: Req) -> Response:
    signing = req.scope.enabled().signing
    try:
        kid = await signing.rotate()
    except KeyRotationRefused:
        raise Conflict(
            "rotation refused",
            code="key_from_environment",
            public_message=KeyRotationRefused.public_message,
        ) from None
    return Response(200, {"kid": kid, "published": _published(signing)})


# ---------------------------------------------------------------------------- the group


class OAuthAdminApi:
    """``/api/v1/oauth``: the admin token only. ``server`` None: no OAuth server on this
    edge (every endpoint answers 404 ``oauth_disabled`` once the caller is the admin)."""

    def __init__(self, store: TokenStore, server: OAuthAdminDeps | None) -> None:
        self.store = store
        self.server = server

    def _scope(self, caller: Identity) -> OAuthScope:
        return OAuthScope(caller, self.store.redis.client, self.store.timeout, self.server)

    def register(self, router: Router[Endpoint[Any]]) -> None:
        admin = Scoped(TokenAuth(self.store, admin_only=True), self._scope)

        def add(method: str, path: str, handler: Callable[[Req], Awaitable[Response]]) -> None:
            router.add(method, PREFIX + path, Endpoint(admin, _bounded(handler)))

        add("GET", "/clients", list_clients)
        add("GET", "/clients/{client_id}", get_client)
        add("DELETE", "/clients/{client_id}", delete_client)
        add("GET", "/clients/{client_id}/tokens", client_tokens)
        add("GET", "/tokens", list_tokens)
        add("GET", "/tokens/{jti}", get_token)
        add("DELETE", "/tokens/{jti}", delete_token)
        add("GET", "/sessions", list_sessions)
        add("GET", "/sessions/{session_id}", get_session)
        add("DELETE", "/sessions/{session_id}", delete_session)
        add("GET", "/status", status)
        add("POST", "/keys/rotate", rotate_key)

    async def close(self) -> None:
        """Nothing of its own to close (the Redis handle is the worker's, the keys and
        revocations the authorization server's)."""
