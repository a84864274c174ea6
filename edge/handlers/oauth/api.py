"""The JSON endpoints: ``/token``, ``/revoke`` (RFC 7009), ``/introspect`` (RFC 7662),
``/register`` (RFC 7591) and ``/register/{client_id}`` (RFC 7592).

Client authentication (RFC 6749 section 2.3): HTTP Basic (``client_secret_basic``, the
id and secret form-urlencoded first), the form's ``client_secret`` (``client_secret_post``),
or for public clients the ``client_id`` alone. Using two methods at once is refused.
"""

from __future__ import annotations

import base64
import binascii
import time
import urllib.parse
from typing import Any

import msgspec

from edge.api.http import PayloadTooLarge, read_body
from edge.handlers.oauth.forms import FORM_LIMIT, Params, content_type, form, header
from edge.http1.exchange import Exchange
from edge.http1.render import oauth_error
from edge.oauth.clients import authenticate
from edge.oauth.errors import (
    InvalidClient,
    InvalidClientMetadata,
    InvalidRequest,
    InvalidTarget,
    InvalidToken,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from edge.oauth.grants import Issued, revoke_client, revoke_family
from edge.oauth.records import ClientRecord
from edge.oauth.server import AuthorizationServer
from edge.store import keys

_json = msgspec.json.Encoder()
NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
MAX_RESOURCES = 10


def send_oauth_error(ex: Exchange, error: OAuthError | Any) -> None:
    if ex.finished:
        return
    basic = isinstance(error, InvalidClient) and error.basic
    answer = oauth_error(error, scheme="Basic" if basic else "Bearer", realm="oauth")
    ex.respond(answer.status, answer.body, answer.content_type, answer.headers)


def send_json(ex: Exchange, status: int, document: Any) -> None:
    if ex.finished:
        return
    ex.respond(status, _json.encode(document) + b"\n", b"application/json", list(NO_STORE))


class JsonEndpoints:
    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server

    # ------------------------------------------------------------------ client auth
    async def client(self, ex: Exchange, params: Params) -> ClientRecord:
        basic = _basic_credentials(ex)
        param_id = params.get("client_id")
        post_secret = params.get("client_secret")
        if basic is not None and post_secret is not None:
            raise InvalidRequest(
                "two methods", public_message="use one client authentication method, not two"
            )
        if basic is not None and param_id is not None and param_id != basic[0]:
            raise InvalidClient("client_id differs from Basic", basic=True)
        client_id = basic[0] if basic is not None else param_id
        if not client_id:
            raise InvalidClient("no client_id", basic=basic is not None)
        try:
            client = await self.server.clients.get(client_id)
        except OAuthError:
            raise InvalidClient("client metadata unusable", basic=basic is not None) from None
        if client is None:
            raise InvalidClient("unknown client", basic=basic is not None)
        authenticate(client, basic=basic, post_secret=post_secret)
        return client

    # ------------------------------------------------------------------ /token
    async def token(self, ex: Exchange) -> None:
        params = await form(ex)
        client = await self.client(ex, params)
        grant_type = params.get("grant_type")
        resources = params.all("resource")
        if len(resources) > MAX_RESOURCES:
            raise InvalidTarget("too many resources")
        grants = self.server.grants
        issued: Issued
        if grant_type == "authorization_code":
            if "authorization_code" not in client.grant_types:
                raise UnauthorizedClient("authorization_code not registered")
            issued = await grants.redeem_code(
                params.get("code") or "",
                client,
                redirect_uri=params.get("redirect_uri"),
                code_verifier=params.get("code_verifier"),
                resources=resources,
            )
        elif grant_type == "refresh_token":
            if "refresh_token" not in client.grant_types:
                raise UnauthorizedClient("refresh_token not registered")
            scope = params.get("scope")
            issued = await grants.refresh(
                params.get("refresh_token") or "",
                client,
                scope=scope.split() if scope else None,
                resources=resources,
                still_allowed=self.server.still_allowed,
            )
        elif grant_type is None:
            raise InvalidRequest("no grant_type", public_message="grant_type is required")
        else:
            raise UnsupportedGrantType(f"grant_type {grant_type[:40]!r}")
        send_json(ex, 200, issued.response())

    # ------------------------------------------------------------------ /revoke
    async def revoke(self, ex: Exchange) -> None:
        """RFC 7009: 200 whatever the token was (unknown, expired, another client's), so
        the answer tells an attacker nothing; a refresh token takes its family with it."""
        params = await form(ex)
        client = await self.client(ex, params)
        token = params.get("token")
        if not token:
            raise InvalidRequest("no token", public_message="token is required")
        server = self.server
        hint = params.get("token_type_hint")
        order = ("access", "refresh") if hint == "access_token" else ("refresh", "access")
        for kind in order:
            if kind == "refresh":
                record = await server.grants.refresh_record(token)
                if record is not None and record.client_id == client.client_id:
                    await revoke_family(server.redis, server.revoked, record.family_id)
                    break
            else:
                claims = _claims(server, token)
                if claims is not None and claims.get("client_id") == client.client_id:
                    await server.revoked.revoke(str(claims["jti"]), int(claims["exp"]))
                    await server.redis.delete(_token_key(str(claims["jti"])))
                    break
        if not ex.finished:
            ex.respond(200, b"", b"application/json", list(NO_STORE))

    # ------------------------------------------------------------------ /introspect
    async def introspect(self, ex: Exchange) -> None:
        """RFC 7662, for confidential clients (resource servers): ``{"active": false}``
        for anything not live."""
        params = await form(ex)
        client = await self.client(ex, params)
        if not client.confidential:
            raise InvalidClient("introspection needs a confidential client")
        token = params.get("token")
        if not token:
            raise InvalidRequest("no token", public_message="token is required")
        server = self.server
        claims = _claims(server, token)
        if claims is not None and not server.revoked.is_revoked(str(claims["jti"])):
            doc = {
                "active": True,
                "token_type": "Bearer",
                "scope": claims.get("scope", ""),
                "client_id": claims.get("client_id"),
                "username": claims.get("login"),
                "sub": claims.get("sub"),
                "aud": claims.get("aud"),
                "iss": claims.get("iss"),
                "exp": claims.get("exp"),
                "iat": claims.get("iat"),
                "nbf": claims.get("nbf"),
                "jti": claims.get("jti"),
            }
            send_json(ex, 200, doc)
            return
        record = await server.grants.live_refresh(token)
        if record is not None:
            send_json(
                ex,
                200,
                {
                    "active": True,
                    "token_type": "refresh_token",
                    "scope": " ".join(record.scope),
                    "client_id": record.client_id,
                    "username": record.user.login,
                    "sub": record.user.sub,
                    "exp": record.expires_at,
                    "iat": record.issued_at,
                },
            )
            return
        send_json(ex, 200, {"active": False})

    # ------------------------------------------------------------------ /register
    async def register(self, ex: Exchange) -> None:
        metadata = await _json_body(ex)
        answer = await self.server.clients.register(metadata)
        send_json(ex, 201, self._absolute(answer))

    async def registration(self, ex: Exchange) -> None:
        """RFC 7592: read, replace or delete a registration with its access token."""
        client_id = urllib.parse.unquote(ex.path[len("/register/") :])
        token = _bearer(ex)
        if token is None:
            raise InvalidToken("no registration access token")
        clients = self.server.clients
        if ex.method == b"GET":
            send_json(ex, 200, self._absolute(await clients.read(client_id, token)))
        elif ex.method == b"PUT":
            metadata = await _json_body(ex)
            answer = await clients.update(client_id, token, metadata)
            send_json(ex, 200, self._absolute(answer))
        else:
            await clients.delete(client_id, token)
            await _revoke_client(self.server, client_id)
            if not ex.finished:
                ex.start_response(204, list(NO_STORE))
                ex.end_response()

    def _absolute(self, answer: dict[str, Any]) -> dict[str, Any]:
        uri = answer.get("registration_client_uri")
        if isinstance(uri, str) and uri.startswith("/"):
            answer = {**answer, "registration_client_uri": self.server.config.issuer + uri}
        return answer


async def _revoke_client(server: AuthorizationServer, client_id: str) -> None:
    await revoke_client(server.redis, server.revoked, client_id)


def _token_key(jti: str) -> str:
    return keys.oauth_token(jti)


def _claims(server: AuthorizationServer, token: str) -> dict[str, Any] | None:
    """The claims of one of our access tokens (signature, issuer and lifetime checked),
    or None."""
    if token.count(".") != 2:
        return None
    try:
        claims = server.signing.verify(token)
    except OAuthError:
        return None
    if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("exp"), int):
        return None
    if claims["exp"] <= time.time():
        return None
    return claims


def _bearer(ex: Exchange) -> str | None:
    value = header(ex, b"authorization")
    if value is None or value[:7].lower() != b"bearer ":
        return None
    token = value[7:].strip().decode("latin-1")
    return token or None


def _basic_credentials(ex: Exchange) -> tuple[str, str] | None:
    """RFC 6749 section 2.3.1: Basic with the id and secret form-urlencoded."""
    value = header(ex, b"authorization")
    if value is None or value[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClient("malformed Basic credentials", basic=True) from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials", basic=True)
    return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)


async def _json_body(ex: Exchange) -> dict[str, Any]:
    if content_type(ex) != b"application/json":
        raise InvalidClientMetadata("not json", public_message="the body must be application/json")
    try:
        data = await read_body(ex, FORM_LIMIT)
    except PayloadTooLarge:
        raise InvalidRequest(
            "body too large",
            status=413,
            code="invalid_request",
            public_message=f"the request body is larger than {FORM_LIMIT} bytes",
        ) from None
    try:
        document = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):  # nested too deep: refused like bad JSON
        raise InvalidClientMetadata(
            "bad json", public_message="the body is not valid JSON"
        ) from None
    if not isinstance(document, dict):
        raise InvalidClientMetadata("not an object", public_message="the body must be an object")
    return document
