"""The browser's way through an authorization: ``/authorize`` -> GitHub -> ``/callback``
-> consent (first time per user and client) -> back to the client with a code.

Until the client and its redirect URI are known good, an error is a page (never a
redirect: an open redirector would hand codes or phishing to anyone). After that, errors go
back to the client as ``error=`` with ``state`` and ``iss`` (RFC 9207), as codes do.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass

from edge.config.schema import ProxyConfig
from edge.handlers.oauth import pages
from edge.handlers.oauth.forms import Params, cookie, form, header, query
from edge.http1.exchange import Exchange, Headers
from edge.oauth import pkce
from edge.oauth.errors import (
    AccessDenied,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    UnsupportedResponseType,
)
from edge.oauth.github import GitHubError
from edge.oauth.records import (
    AuthorizationRequest,
    ClientRecord,
    GitHubUser,
    digest,
    encode,
    matches,
    new_secret,
)
from edge.oauth.redirects import redirect_allowed
from edge.oauth.server import FIRST_PARTY_CLIENT_ID, AuthorizationServer

log = logging.getLogger("edge.oauth")

MAX_RESOURCES = 10
MAX_REQUEST_BYTES = 8192  # an authorization request as stored while the user signs in
# binds a sign-in to the browser that started it (``__Host-``: Secure, this host only,
# Path=/, so no sibling host can plant or overwrite it)
LOGIN_COOKIE = "__Host-edge_oauth_login"


@dataclass(frozen=True, slots=True)
class Redirectable(Exception):
    """An error to send back to the client's redirect URI."""

    error: OAuthError
    redirect_uri: str
    state: str | None


class BrowserFlow:
    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server
        self.config = server.config

    # ------------------------------------------------------------------ /authorize
    async def authorize(self, ex: Exchange) -> None:
        if ex.host != self.config.auth_hostname:
            # reached through a proxy's hostname route: continue on the issuer's host,
            # where the sign-in's cookies live (307 keeps a POST a POST)
            _see_other(ex, self.config.issuer + ex.target.decode("latin-1"), status=307)
            return
        params = query(ex) if ex.method == b"GET" else await form(ex)
        client_id = params.get("client_id")
        if not client_id:
            pages.error_page(ex, 400, "Invalid request", "The request names no client_id.")
            return
        try:
            if client_id == FIRST_PARTY_CLIENT_ID:
                # the edge signing a browser in to a proxy in redirect mode
                client = self.server.first_party(params.get("redirect_uri") or "")
            else:
                client = await self.server.clients.get(client_id)
        except OAuthError as err:  # a client metadata document that cannot be used
            pages.error_page(ex, 400, "Unknown client", err.public_message)
            return
        if client is None:
            pages.error_page(ex, 400, "Unknown client", "This client is not registered.")
            return
        redirect_uri = params.get("redirect_uri")
        given = redirect_uri is not None
        if redirect_uri is None and len(client.redirect_uris) == 1:
            redirect_uri = client.redirect_uris[0]
        if redirect_uri is None or not redirect_allowed(client, redirect_uri):
            pages.error_page(
                ex,
                400,
                "Invalid redirect URI",
                "The redirect_uri is missing or is not registered for this client.",
            )
            return
        state = params.get("state")
        try:
            request = self._request(params, client, redirect_uri, state, given)
        except OAuthError as err:
            self._redirect(ex, redirect_uri, state, error=err)
            return
        if len(encode(request)) > MAX_REQUEST_BYTES:
            # it waits in Redis through the sign-in: bounded, whatever the form allows
            too_large = InvalidRequest(
                "request too large", public_message="the authorization request is too large"
            )
            self._redirect(ex, redirect_uri, state, error=too_large)
            return
        proxies = self._proxies(request)
        session = await self.server.sessions.get(cookie(ex, self.config.session_cookie))
        if session is not None:
            session_hash, browser = session
            if not self._allowed(browser.user, proxies):
                pages.refused_page(ex, browser.user.login, self._where(proxies))
                return
            await self._signed_in(ex, request, client, browser.user, session_hash, [])
            return
        github = self.server.github
        if github is None:
            pages.error_page(
                ex, 503, "Sign-in unavailable", "GitHub sign-in is not configured on this server."
            )
            return
        # the sign-in is bound to this browser: /callback must come with the same cookie,
        # so a /callback link made by someone else (with their GitHub code) signs nobody
        # in (login CSRF). A browser already holding one reuses it: two tabs both work.
        nonce = cookie(ex, LOGIN_COOKIE)
        if nonce is None or not 20 <= len(nonce) <= 128:
            nonce = new_secret()
        login_state = await self.server.sessions.start_login(request, digest(nonce))
        target = github.authorize_url(state=login_state, redirect_uri=self.config.callback_url)
        login_cookie = (
            f"{LOGIN_COOKIE}={nonce}; Path=/; Max-Age={self.server.sessions.login_timeout}; "
            "HttpOnly; Secure; SameSite=Lax"
        ).encode("latin-1")
        _see_other(ex, target, [(b"set-cookie", login_cookie)])

    def _request(
        self,
        params: Params,
        client: ClientRecord,
        redirect_uri: str,
        state: str | None,
        redirect_uri_given: bool,
    ) -> AuthorizationRequest:
        response_type = params.get("response_type")
        if response_type != "code":
            raise UnsupportedResponseType(f"response_type {str(response_type)[:20]!r}")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        if not challenge:
            raise InvalidRequest("no PKCE", public_message="code_challenge is required (PKCE)")
        if method != "S256":
            raise InvalidRequest("PKCE method", public_message="code_challenge_method must be S256")
        if not pkce.valid_challenge(challenge):
            raise InvalidRequest(
                "bad challenge", public_message="code_challenge is not a base64url SHA-256"
            )
        if state is not None and len(state) > 1024:
            raise InvalidRequest("state too long", public_message="state is too long")
        scope = self._scope(params.get("scope"), client)
        resources = tuple(dict.fromkeys(params.all("resource")))
        if len(resources) > MAX_RESOURCES:
            raise InvalidTarget("too many resources")
        for resource in resources:
            self._check_resource(resource)
        proxy_hostname = params.get("proxy_hostname")
        if proxy_hostname is not None:
            proxy_hostname = proxy_hostname.lower().rstrip(".")
            if self.server.find_proxy(proxy_hostname) is None:
                raise InvalidRequest(
                    "unknown proxy", public_message="proxy_hostname names no proxy"
                )
        return AuthorizationRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            redirect_uri_given=redirect_uri_given,
            scope=scope,
            state=state,
            code_challenge=challenge,
            resources=resources,
            proxy_hostname=proxy_hostname,
            created_at=int(time.time()),
        )

    def _scope(self, asked: str | None, client: ClientRecord) -> tuple[str, ...]:
        server_scopes = self.config.scopes
        allowed = tuple(client.scope.split()) if client.scope else server_scopes
        if asked is None or not asked.strip():
            return tuple(s for s in allowed if s in server_scopes)
        words = tuple(dict.fromkeys(asked.split()))
        for word in words:
            if word not in server_scopes or word not in allowed:
                raise InvalidScope(f"scope {word[:40]!r}")
        return words

    def _check_resource(self, resource: str) -> None:
        """RFC 8707 section 2: an absolute URI without fragment, and one this server
        issues tokens for: the issuer, or a host one of the edge's proxies serves."""
        if len(resource) > 2048:
            raise InvalidTarget("resource too long")
        parts = urllib.parse.urlsplit(resource)
        schemes = ("https", "http") if self.config.loopback_issuer else ("https",)
        if parts.scheme not in schemes or not parts.hostname or parts.fragment:
            raise InvalidTarget("resource not an absolute URI")
        if parts.username is not None or parts.password is not None:
            raise InvalidTarget("resource with userinfo")
        if resource.rstrip("/") == self.config.issuer:
            return
        if self.server.find_proxy(parts.hostname) is None:
            raise InvalidTarget("resource of no proxy")

    def _proxies(self, request: AuthorizationRequest) -> list[ProxyConfig]:
        return self.server.proxies_for(request.proxy_hostname, request.resources)

    def _allowed(self, user: GitHubUser, proxies: list[ProxyConfig]) -> bool:
        return self.server.allowed(user.login, proxies)

    @staticmethod
    def _where(proxies: list[ProxyConfig]) -> str:
        return ", ".join(p.hostname for p in proxies) if proxies else "this server"

    async def _signed_in(
        self,
        ex: Exchange,
        request: AuthorizationRequest,
        client: ClientRecord,
        user: GitHubUser,
        session_hash: str,
        headers: Headers,
    ) -> None:
        """A signed-in, allowed user: a code at once if this client was approved for these
        scopes before, else the consent page."""
        sessions = self.server.sessions
        # the edge's own sign-in to a proxy asks no consent: the operator chose it
        first_party = client.source == "edge"
        if first_party or await sessions.consented(user.sub, client.client_id, request.scope):
            code = await self.server.grants.issue_code(request, user)
            self._redirect(ex, request.redirect_uri, request.state, code=code, headers=headers)
            return
        request_id, csrf = await sessions.ask_consent(request, user, session_hash)
        redirect_host = urllib.parse.urlsplit(request.redirect_uri).netloc
        pages.consent_page(
            ex,
            # absolute: the page may have been reached through a proxy's hostname route,
            # and /consent is no route of the proxies
            action=f"{self.config.issuer}/consent",
            request_id=request_id,
            csrf=csrf,
            client_name=client.client_name or client.client_id,
            client_id=client.client_id,
            redirect_host=redirect_host,
            scopes=request.scope,
            login=user.login,
            headers=headers,
        )

    # ------------------------------------------------------------------ /callback
    async def callback(self, ex: Exchange) -> None:
        params = query(ex)
        login = await self.server.sessions.take_login(params.get("state") or "")
        if login is None:
            pages.error_page(
                ex,
                400,
                "Sign-in expired",
                "This sign-in has expired or was already used. Start again from the application.",
            )
            return
        nonce = cookie(ex, LOGIN_COOKIE)
        if nonce is None or not matches(nonce, login.browser_hash):
            log.info(
                "oauth: a callback from another browser than the one that started the sign-in",
                extra={"fields": {"request_id": ex.request_id}},
            )
            pages.error_page(
                ex,
                400,
                "Sign-in refused",
                "This sign-in was started in another browser. Start again from the application.",
            )
            return
        request = login.request
        if params.get("error"):
            denied = AccessDenied("denied at GitHub", public_message="the sign-in was denied")
            self._redirect(ex, request.redirect_uri, request.state, error=denied)
            return
        code = params.get("code")
        github = self.server.github
        if not code or github is None:
            pages.error_page(ex, 400, "Sign-in failed", "GitHub sent no code.")
            return
        client = await self._client(request)
        if client is None:
            pages.error_page(ex, 400, "Unknown client", "This client is no longer registered.")
            return
        try:
            github_token = await github.exchange(code, self.config.callback_url)
            user = await github.user(github_token)
        except GitHubError as err:
            log.warning(
                "oauth: GitHub sign-in failed",
                extra={"fields": {"request_id": ex.request_id, "error": str(err)[:200]}},
            )
            if err.kind == "bad_code":  # a reloaded or replayed callback
                pages.error_page(
                    ex, 400, "Sign-in failed", "GitHub refused this sign-in code; start again."
                )
            else:
                pages.error_page(ex, 502, "Sign-in failed", "GitHub could not confirm the sign-in.")
            return
        proxies = self._proxies(request)
        if not self._allowed(user, proxies):
            log.info(
                "oauth: sign-in refused by the allowlist",
                extra={"fields": {"login": user.login, "client_id": request.client_id}},
            )
            pages.refused_page(ex, user.login, self._where(proxies))
            return
        user_agent = header(ex, b"user-agent")
        session_cookie = await self.server.sessions.create(
            user, user_agent.decode("latin-1") if user_agent else None
        )
        # the login cookie stays until its Max-Age: another tab's sign-in may still need it
        headers = [(b"set-cookie", self._cookie(session_cookie))]
        await self._signed_in(ex, request, client, user, digest(session_cookie), headers)

    def _cookie(self, value: str) -> bytes:
        config = self.config
        return (
            f"{config.session_cookie}={value}; Path=/; Max-Age={config.session_lifetime}; "
            "HttpOnly; Secure; SameSite=Lax"
        ).encode("latin-1")

    # ------------------------------------------------------------------ /consent
    async def consent(self, ex: Exchange) -> None:
        params = await form(ex)
        sessions = self.server.sessions
        request_id = params.get("request_id") or ""
        pending = await sessions.peek_consent(request_id)
        if pending is None:
            pages.error_page(
                ex,
                400,
                "Request expired",
                "This approval form has expired or was already used. Start again.",
            )
            return
        session = await sessions.get(cookie(ex, self.config.session_cookie))
        csrf = params.get("csrf_token") or ""
        if (
            session is None
            or session[0] != pending.session_hash
            or not matches(csrf, pending.csrf_hash)
        ):
            pages.error_page(ex, 403, "Form refused", "This approval form could not be verified.")
            return
        # checked: now take it, so it is answered once (a double submit finds it gone)
        if await sessions.take_consent(request_id) is None:
            pages.error_page(ex, 400, "Request expired", "This approval form was already used.")
            return
        request = pending.request
        decision = params.get("decision")
        if decision == "deny":
            denied = AccessDenied("denied", public_message="the user denied the request")
            self._redirect(ex, request.redirect_uri, request.state, error=denied)
            return
        if decision != "approve":
            pages.error_page(ex, 400, "Invalid request", "Approve or deny the request.")
            return
        client = await self._client(request)
        if client is None:
            pages.error_page(ex, 400, "Unknown client", "This client is no longer registered.")
            return
        await sessions.remember_consent(pending.user.sub, client.client_id, request.scope)
        code = await self.server.grants.issue_code(request, pending.user)
        self._redirect(ex, request.redirect_uri, request.state, code=code)

    async def _client(self, request: AuthorizationRequest) -> ClientRecord | None:
        """The client of a request carried through the sign-in, looked up again."""
        if request.client_id == FIRST_PARTY_CLIENT_ID:
            return self.server.first_party(request.redirect_uri)
        return await self.server.clients.get(request.client_id)

    # ------------------------------------------------------------------ answers
    def _redirect(
        self,
        ex: Exchange,
        redirect_uri: str,
        state: str | None,
        *,
        code: str | None = None,
        error: OAuthError | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Back to the client: ``code`` or ``error``, with ``state`` and ``iss``."""
        values: list[tuple[str, str]] = []
        if code is not None:
            values.append(("code", code))
        if error is not None:
            values.append(("error", error.code))
            values.append(("error_description", error.public_message))
        if state is not None:
            values.append(("state", state))
        values.append(("iss", self.config.issuer))
        separator = "&" if "?" in redirect_uri else "?"
        target = redirect_uri + separator + urllib.parse.urlencode(values)
        _see_other(ex, target, headers or [])


def _see_other(
    ex: Exchange, location: str, headers: Headers | None = None, status: int = 302
) -> None:
    if ex.finished:
        return
    fields: Headers = [
        (b"location", location.encode("latin-1", "strict")),
        *pages.PAGE_HEADERS,
        *(headers or []),
    ]
    ex.respond(status, b"", b"text/plain; charset=utf-8", fields)
