"""``/verify``: the ForwardAuth endpoint other proxies ask (Traefik ``forwardAuth``, Caddy
``forward_auth``, nginx ``auth_request``).

A bearer token (checked in memory: signature, issuer, lifetime, revocation) or the browser
session cookie (one Redis read) -> ``200`` with ``X-Auth-User-Id``, ``X-Auth-User-Name``,
``X-Auth-Email``, ``X-Auth-Scopes``, ``X-Auth-Client-Id``; otherwise ``401`` with a
``WWW-Authenticate`` challenge (``error="invalid_token"`` when a token was sent). Optional
``?scope=a b`` demands scopes: a token without them is ``403 insufficient_scope`` with the
scopes in the challenge (RFC 6750 section 3.1), which MCP clients use to step up.

``?resource=URI`` names what the asking proxy guards: a token must carry it in ``aud``
(else ``401 invalid_token``), a session's user must be on the allowlist of the proxy serving
that URI (else ``403``). Without it any valid token or session passes: the asking proxy is
not known to this endpoint otherwise (the edge's own proxies check the audience in process).
"""

from __future__ import annotations

import re

from edge.handlers.oauth.forms import cookie, header, header_value, query
from edge.http1.exchange import Exchange, Headers
from edge.oauth.errors import InsufficientScope, InvalidRequest, InvalidToken, OAuthError
from edge.oauth.records import GitHubUser
from edge.oauth.server import AuthorizationServer

PREFIX = b"x-auth-"
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]{1,128}\Z")


class Verifier:
    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server
        self.realm = server.config.issuer
        self.answered = 0

    def _required(self, ex: Exchange) -> tuple[str, ...]:
        """The scopes ``?scope=`` demands: RFC 6749 scope-tokens only (they go into the
        challenge header), else ``invalid_request``."""
        if b"?" not in ex.target:
            return ()
        scope = query(ex).get("scope")
        words = tuple(scope.split()) if scope else ()
        if any(_SCOPE_TOKEN.match(word) is None for word in words):
            raise InvalidRequest("bad scope", public_message="scope must be scope-tokens")
        return words

    @staticmethod
    def _resource(ex: Exchange) -> str | None:
        """``?resource=``: the protected resource the asking proxy guards (its URI); a
        token must name it in ``aud``, a browser session's user must be on its proxy's
        allowlist."""
        if b"?" not in ex.target:
            return None
        resources = query(ex).all("resource")  # repeatable elsewhere; one here
        if not resources:
            return None
        if len(resources) > 1 or len(resources[0]) > 2048:
            raise InvalidRequest("bad resource", public_message="one resource, 2048 at most")
        return resources[0]

    def inline(self, ex: Exchange) -> bool:
        """Answer from memory when the request carries a bearer token or nothing to check;
        False: a session cookie needs Redis (``with_session``)."""
        try:
            required = self._required(ex)
            resource = self._resource(ex)
        except InvalidRequest:
            self._deny(ex, InvalidRequest("bad query"), sent=True)
            return True
        value = header(ex, b"authorization")
        if value is not None and value[:7].lower() == b"bearer ":
            token = value[7:].strip().decode("latin-1")
            try:
                claims = self.server.signing.verify(token, audience=resource)
            except OAuthError:
                self._deny(ex, InvalidToken("bad token"), sent=True)
                return True
            jti = claims.get("jti")
            if not isinstance(jti, str) or self.server.revoked.is_revoked(jti):
                self._deny(ex, InvalidToken("revoked"), sent=True)
                return True
            scopes = str(claims.get("scope", "")).split()
            missing = [s for s in required if s not in scopes]
            if missing:
                self._deny(ex, InsufficientScope("missing scope"), sent=True, scope=required)
                return True
            headers = [
                (b"x-auth-user-id", header_value(str(claims.get("sub", "")))),
                (b"x-auth-user-name", header_value(str(claims.get("login", "")))),
                (b"x-auth-email", header_value(str(claims.get("email") or ""))),
                (b"x-auth-scopes", header_value(" ".join(scopes))),
                (b"x-auth-client-id", header_value(str(claims.get("client_id", "")))),
            ]
            self._allow(ex, headers)
            return True
        if cookie(ex, self.server.config.session_cookie) is None:
            self._deny(ex, InvalidToken("no credentials"), sent=False, scope=required)
            return True
        return False

    async def with_session(self, ex: Exchange) -> None:
        found = await self.server.sessions.get(cookie(ex, self.server.config.session_cookie))
        if found is None:
            self._deny(ex, InvalidToken("no session"), sent=False)
            return
        if self._required(ex):
            # a browser session carries no scopes: only tokens can satisfy a scope demand
            self._deny(ex, InsufficientScope("session"), sent=True, scope=self._required(ex))
            return
        resource = self._resource(ex)
        if resource is not None:
            user = found[1].user
            proxies = self.server.proxies_for(None, [resource])
            if not self.server.allowed(user.login, proxies):
                self.answered += 1
                if not ex.finished:
                    body = b'{"error":"access_denied"}\n'
                    ex.respond(403, body, b"application/json", [(b"cache-control", b"no-store")])
                return
        self._allow(ex, self._user_headers(found[1].user))

    @staticmethod
    def _user_headers(user: GitHubUser) -> Headers:
        return [
            (b"x-auth-user-id", header_value(user.sub)),
            (b"x-auth-user-name", header_value(user.login)),
            (b"x-auth-email", header_value(user.email or "")),
            (b"x-auth-scopes", b""),
            (b"x-auth-client-id", b""),
        ]

    def _allow(self, ex: Exchange, headers: Headers) -> None:
        self.answered += 1
        if not ex.finished:
            ex.respond(
                200, b"", b"text/plain; charset=utf-8", [*headers, (b"cache-control", b"no-store")]
            )

    def _deny(
        self, ex: Exchange, error: OAuthError, *, sent: bool, scope: tuple[str, ...] = ()
    ) -> None:
        self.answered += 1
        if ex.finished:
            return
        params = [f'realm="{self.realm}"']
        if sent:
            params.append(f'error="{error.code}"')
        if scope:
            params.append(f'scope="{" ".join(scope)}"')
        challenge = ("Bearer " + ", ".join(params)).encode("latin-1")
        body = b'{"error":"' + error.code.encode("ascii") + b'"}\n'
        headers = [(b"www-authenticate", challenge), (b"cache-control", b"no-store")]
        status = error.status if error.status in (400, 401, 403) else 401
        ex.respond(status, body, b"application/json", headers)
