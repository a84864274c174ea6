"""Browser sign-in to a proxy in ``redirect`` mode, with the edge's own authorization server.

The edge is the OAuth client here (``client_id`` ``edge``, see
:meth:`~edge.oauth.server.AuthorizationServer.first_party`), like oauth2-proxy in front of
an application:

1. A browser's ``GET`` (``Accept: text/html``) without a valid session is sent to the
   issuer's ``/authorize`` with PKCE, the proxy's resource URI as ``resource``, and
   ``redirect_uri`` ``{scheme}://{host}/_edge/auth/callback`` on the proxy itself. The
   PKCE verifier is a random value kept only in the browser, in the HttpOnly cookie
   ``{auth_cookie_name}_login`` (path ``/_edge/auth``): it binds the callback to the
   browser that started the sign-in, and Redis never holds it. What the callback needs
   (where to go back) waits in ``oauth:proxy_login:{sha256(state)}`` for ``LOGIN_TTL``.
2. The authorization server signs the user in (GitHub), checks the proxy's allowlist, and
   sends the browser back with a code (no consent page: the operator chose this).
3. ``/_edge/auth/callback`` takes the state (once), checks ``iss`` and the host, redeems
   the code in process with the verifier from the cookie, and sets the access token as the
   session cookie ``auth_cookie_name`` (``HttpOnly``, ``SameSite=Lax``, ``Secure`` over
   HTTPS, for the token's lifetime), then sends the browser where it first asked to go.

The session cookie is an access token like any bearer token: checked from memory, revoked
like any other. When it expires, the next page load goes through step 1 again, which the
authorization server's own session makes a pair of redirects. ``/_edge/auth/sign_out``
drops the cookie.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from redis.exceptions import RedisError

from edge.config.schema import ProxyConfig
from edge.errors import ServiceUnavailable
from edge.handlers.oauth import pages
from edge.handlers.oauth.forms import cookie, query
from edge.http1.exchange import Exchange, Headers
from edge.oauth import pkce
from edge.oauth.errors import OAuthError
from edge.oauth.records import ProxyLogin, decode, digest, encode, new_secret
from edge.oauth.server import FIRST_PARTY_CALLBACK, FIRST_PARTY_CLIENT_ID, AuthorizationServer
from edge.routing.resolution import Middleware, Resolution, Scheme, Step
from edge.store import keys

__all__ = ["CALLBACK_PATH", "LOGIN_TTL", "SIGN_OUT_PATH", "BrowserLogin", "wants_page"]

log = logging.getLogger("edge.forwardauth")

CALLBACK_PATH = FIRST_PARTY_CALLBACK
SIGN_OUT_PATH = "/_edge/auth/sign_out"
LOGIN_TTL = 600  # seconds a sign-in may take, GitHub included
MAX_RETURN_TO = 2048


class SignInUnavailable(ServiceUnavailable):
    public_message = "sign-in is unavailable for this host right now"


def wants_page(ex: Exchange) -> bool:
    """A browser loading a page: a GET or HEAD that accepts HTML."""
    if ex.method not in (b"GET", b"HEAD"):
        return False
    for name, value in ex.headers:
        if name.lower() == b"accept" and b"text/html" in value.lower():
            return True
    return False


def addressed_host(ex: Exchange, scheme: str) -> str:
    """The host (and port unless ``scheme``'s default) the client addressed, as a
    ``scheme`` URL names it."""
    host = ex.host_header.decode("latin-1").strip().lower().rstrip(".") or ex.host
    default = ":443" if scheme == "https" else ":80"
    return host[: -len(default)] if host.endswith(default) else host


def session_cookie(proxy: ProxyConfig) -> str:
    """The session cookie's name: ``auth_cookie_name`` exactly. An operator who names it
    ``__Host-...`` gets the browser's guard against a sibling subdomain setting it (cookie
    tossing); two values of it in one request are refused either way (ProxyGuard)."""
    return proxy.auth_cookie_name


def login_cookie(proxy: ProxyConfig) -> str:
    """The cookie holding the PKCE verifier while a sign-in is under way."""
    return proxy.auth_cookie_name + "_login"


def _safe_return(target: str) -> str:
    """Where to send the browser after signing in: a path on this host only (never
    ``//other.example`` or ``/\\other.example``, which browsers read as another host)."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or len(target) > MAX_RETURN_TO
        or any(c < " " or c == "\x7f" for c in target)
    ):
        return "/"
    return target


def _cookie_field(name: str, value: str, path: str, max_age: int, secure: bool) -> bytes:
    text = f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    return (text + ("; Secure" if secure else "")).encode("latin-1")


class BrowserLogin:
    """One worker's sign-ins for proxies in redirect mode: the redirect out, the callback
    (a ``SITE`` middleware on those proxies) and the tasks in flight (tracked)."""

    def __init__(
        self, server: AuthorizationServer, resource_uri: Callable[[Exchange, ProxyConfig], str]
    ) -> None:
        self.server = server
        self.resource_uri = resource_uri
        self.tasks: set[asyncio.Task[None]] = set()

    def factory(self, proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
        if proxy.auth_mode == "redirect" and self.server.protects(proxy):
            return self.answer
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ step 1
    def start(self, ex: Exchange, proxy: ProxyConfig, scopes: tuple[str, ...]) -> None:
        """Send this browser to sign in (answers the exchange)."""
        self._spawn(self._start(ex, proxy, scopes))

    async def _start(self, ex: Exchange, proxy: ProxyConfig, scopes: tuple[str, ...]) -> None:
        host = addressed_host(ex, ex.scheme)
        secure = ex.scheme == "https"
        redirect_uri = f"{ex.scheme}://{host}{CALLBACK_PATH}"
        resource = self.resource_uri(ex, proxy)
        return_to = _safe_return(ex.target.decode("latin-1"))
        # one verifier per browser (kept after a sign-in): two tabs signing in at once
        # both come back right
        verifier = cookie(ex, login_cookie(proxy))
        if verifier is None or not pkce.valid_verifier(verifier):
            verifier = new_secret()
        state = new_secret()
        record = ProxyLogin(
            host=host,
            redirect_uri=redirect_uri,
            resource=resource,
            return_to=return_to,
            created_at=int(time.time()),
        )
        try:
            await self.server.redis.set(
                keys.oauth_proxy_login(digest(state)), encode(record), ex=LOGIN_TTL
            )
        except RedisError as exc:
            if not ex.finished:
                ex.fail(SignInUnavailable(f"sign-in state not stored: {exc}"))
            return
        fields = [
            ("response_type", "code"),
            ("client_id", FIRST_PARTY_CLIENT_ID),
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("code_challenge", pkce.s256(verifier)),
            ("code_challenge_method", "S256"),
            ("resource", resource),
        ]
        if scopes:
            fields.append(("scope", " ".join(scopes)))
        location = f"{self.server.config.issuer}/authorize?{urllib.parse.urlencode(fields)}"
        login = _cookie_field(login_cookie(proxy), verifier, "/", LOGIN_TTL, secure)
        _redirect(ex, location, [(b"set-cookie", login)])

    # ------------------------------------------------------------------ step 3
    def answer(self, ex: Exchange, res: Resolution, proceed: Step, /) -> None:
        path = ex.path
        if path == CALLBACK_PATH:
            self._spawn(self._callback(ex, res.proxy))
        elif path == SIGN_OUT_PATH:
            self._sign_out(ex, res.proxy)
        else:
            proceed(ex, res)

    async def _callback(self, ex: Exchange, proxy: ProxyConfig) -> None:
        params = query(ex)
        state = params.get("state") or ""
        verifier = cookie(ex, login_cookie(proxy))
        if verifier is None or not pkce.valid_verifier(verifier):
            # not the browser that started this sign-in: refused without spending it
            _failed(ex, 400, "This sign-in was started in another browser. Start again.")
            return
        try:
            raw = await self.server.redis.getdel(keys.oauth_proxy_login(digest(state)))
        except RedisError as exc:
            if not ex.finished:
                ex.fail(SignInUnavailable(f"sign-in state not read: {exc}"))
            return
        record = None
        if raw is not None:
            try:
                record = decode(raw, ProxyLogin)
            except (msgspec.ValidationError, msgspec.DecodeError):
                log.warning("forwardauth: damaged sign-in record")
        if record is None or record.host != addressed_host(ex, ex.scheme):
            _failed(ex, 400, "This sign-in has expired or was already used. Start again.")
            return
        error = params.get("error")
        if error is not None:
            reason = params.get("error_description") or error
            _failed(ex, 403, f"The sign-in was refused: {reason[:200]}")
            return
        if params.get("iss") != self.server.config.issuer:
            # RFC 9207: the answer must come from the server this sign-in was sent to
            _failed(ex, 400, "This sign-in came back from an unexpected server.")
            return
        client = self.server.first_party(record.redirect_uri)
        if client is None:  # the proxy left redirect mode meanwhile
            _failed(ex, 400, "Sign-in is no longer offered here.")
            return
        try:
            issued = await self.server.grants.redeem_code(
                params.get("code") or "",
                client,
                redirect_uri=record.redirect_uri,
                code_verifier=verifier,
                resources=[record.resource],
            )
        except OAuthError as err:
            log.info("forwardauth: sign-in code refused: %s", err)
            _failed(ex, 400, "This sign-in could not be completed. Start again.")
            return
        except RedisError as exc:
            if not ex.finished:
                ex.fail(SignInUnavailable(f"sign-in code not redeemed: {exc}"))
            return
        secure = ex.scheme == "https"
        lifetime = max(1, issued.record.expires_at - int(time.time()))
        name = session_cookie(proxy)
        session = _cookie_field(name, issued.access_token, "/", lifetime, secure)
        _redirect(ex, _safe_return(record.return_to), [(b"set-cookie", session)])

    def _sign_out(self, ex: Exchange, proxy: ProxyConfig) -> None:
        self._spawn(self._signing_out(ex, proxy))

    async def _signing_out(self, ex: Exchange, proxy: ProxyConfig) -> None:
        """Drop the session cookie and revoke its token on every node (a copy of the
        cookie is worth nothing after)."""
        name = session_cookie(proxy)
        token = cookie(ex, name)
        if token:
            try:
                claims = self.server.signing.verify(token)
            except OAuthError:
                claims = {}
            jti, exp = claims.get("jti"), claims.get("exp")
            if isinstance(jti, str) and isinstance(exp, int):
                try:
                    await self.server.revoked.revoke(jti, exp)
                except RedisError as exc:
                    if not ex.finished:
                        ex.fail(SignInUnavailable(f"sign-out not recorded: {exc}"))
                    return
        gone = _cookie_field(name, "", "/", 0, ex.scheme == "https")
        page = "<p>You are signed out of this site.</p>"
        pages.send(ex, 200, "Signed out", page, [(b"set-cookie", gone)])


def _redirect(ex: Exchange, location: str, headers: Headers) -> None:
    if ex.finished:
        return
    fields: Headers = [(b"location", location.encode("latin-1")), *pages.PAGE_HEADERS, *headers]
    ex.respond(302, b"", b"text/plain; charset=utf-8", fields)


def _failed(ex: Exchange, status: int, message: str) -> None:
    pages.error_page(ex, status, "Sign-in failed", message)
