"""The authorization server's endpoints: one handler, routed on the path.

* metadata (every discovery form) and ``/jwks``: answered inline from memory;
* ``/verify`` with a bearer token: inline too (the token is checked against the keys and
  revocations in memory); with the session cookie it reads Redis in a task;
* ``/authorize``, ``/callback``, ``/consent``: the browser's way (:mod:`.browser`);
* ``/token``, ``/revoke``, ``/introspect``, ``/register``: JSON endpoints (:mod:`.api`).

Every task is tracked and cancelled on close. An :class:`~edge.oauth.errors.OAuthError` on a
JSON endpoint is the RFC's error document (:func:`edge.http1.render.oauth_error`); Redis
trouble is ``503 temporarily_unavailable``; anything unexpected is logged with the request
id and answered ``500 server_error``, never with a trace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable

import msgspec
from redis.exceptions import RedisError

from edge.api.http import ClientGone
from edge.errors import EdgeError
from edge.handlers.oauth import pages
from edge.handlers.oauth.api import JsonEndpoints, send_oauth_error
from edge.handlers.oauth.browser import BrowserFlow
from edge.handlers.oauth.verify import Verifier
from edge.http1.exchange import Exchange
from edge.oauth.errors import OAuthError, ServerError
from edge.oauth.metadata import is_metadata_path, server_metadata
from edge.oauth.server import AuthorizationServer

log = logging.getLogger("edge.oauth")
_json = msgspec.json.Encoder()

Run = Callable[[Exchange], Awaitable[None]]


class MethodNotAllowed(OAuthError):
    status = 405
    code = "invalid_request"
    public_message = "method not allowed on this endpoint"

    def __init__(self, allow: str) -> None:
        super().__init__(f"allowed: {allow}")
        self.allow = allow

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", self.allow.encode("ascii"))]


class PlainHttp(OAuthError):
    code = "invalid_request"
    public_message = "this authorization server answers over https only"


class NotFound(OAuthError):
    status = 404
    code = "not_found"
    public_message = "no such endpoint on the authorization server"


class OAuthEndpoints:
    """The handler (``edge.http1.exchange.Handler``) of the OAuth server."""

    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server
        config = server.config
        self.metadata = _json.encode(server_metadata(config.issuer, config.scopes)) + b"\n"
        self.browser = BrowserFlow(server)
        self.api = JsonEndpoints(server)
        self.verifier = Verifier(server)
        self.tasks: set[asyncio.Task[None]] = set()
        # an https issuer is served over HTTPS only (plain HTTP is for loopback issuers)
        self.https_only = not config.loopback_issuer
        # path -> (allowed methods, what runs it, whether its errors are pages)
        self.routes: dict[str, tuple[frozenset[bytes], Run, bool]] = {
            "/authorize": (frozenset({b"GET", b"POST"}), self.browser.authorize, True),
            "/callback": (frozenset({b"GET"}), self.browser.callback, True),
            "/consent": (frozenset({b"POST"}), self.browser.consent, True),
            "/token": (frozenset({b"POST"}), self.api.token, False),
            "/revoke": (frozenset({b"POST"}), self.api.revoke, False),
            "/introspect": (frozenset({b"POST"}), self.api.introspect, False),
            "/register": (frozenset({b"POST"}), self.api.register, False),
        }

    def handle(self, ex: Exchange) -> None:
        path = ex.path
        if ex.scheme == "http" and self.https_only and not self._plain_allowed(ex):
            if ex.method in (b"GET", b"HEAD"):
                location = (self.server.config.issuer + ex.target.decode("latin-1")).encode(
                    "latin-1"
                )
                ex.respond(308, b"", b"text/plain; charset=utf-8", [(b"location", location)])
            else:
                # never redirect a request that may carry a secret: it was sent in clear
                # already; the client must be fixed to use the https issuer
                send_oauth_error(ex, PlainHttp("plain http"))
            return
        if path == "/verify":
            if not self.verifier.inline(ex):
                self._spawn(ex, self.verifier.with_session, False)
            return
        if path == "/jwks" or is_metadata_path(path):
            if ex.method not in (b"GET", b"HEAD"):
                send_oauth_error(ex, MethodNotAllowed("GET, HEAD"))
                return
            body = self.metadata if path != "/jwks" else self._jwks()
            headers = [(b"cache-control", b"public, max-age=300")]
            headers.append((b"access-control-allow-origin", b"*"))
            ex.respond(200, body, b"application/json", headers)
            return
        route = self.routes.get(path)
        if route is None and path.startswith("/register/"):
            route = (
                frozenset({b"GET", b"PUT", b"DELETE"}),
                self.api.registration,
                False,
            )
        if route is None:
            send_oauth_error(ex, NotFound(f"no endpoint {path[:64]!r}"))
            return
        methods, run, pages_on_error = route
        if ex.method not in methods:
            allow = ", ".join(sorted(m.decode("ascii") for m in methods))
            send_oauth_error(ex, MethodNotAllowed(allow))
            return
        self._spawn(ex, run, pages_on_error)

    @staticmethod
    def _plain_allowed(ex: Exchange) -> bool:
        """``/verify`` asked over plain HTTP by a proxy on this same host (nginx
        ``auth_request`` to 127.0.0.1): the token never left the machine."""
        if ex.path != "/verify":
            return False
        try:
            return ipaddress.ip_address(ex.client_ip).is_loopback
        except ValueError:
            return False

    def _jwks(self) -> bytes:
        return _json.encode(self.server.signing.jwks()) + b"\n"

    def _spawn(self, ex: Exchange, run: Run, pages_on_error: bool) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(ex, run, pages_on_error), name=f"oauth-{ex.request_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, ex: Exchange, run: Run, pages_on_error: bool) -> None:
        rid = ex.request_id
        try:
            await run(ex)
            return
        except ClientGone:
            return
        except EdgeError as err:
            error = err
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            down = {"request_id": rid, "error": type(exc).__name__, "detail": str(exc)[:200]}
            log.warning("oauth: redis unavailable", extra={"fields": down})
            error = ServerError("redis unavailable")
        except Exception:
            log.exception("oauth endpoint failed", extra={"fields": {"request_id": rid}})
            error = OAuthError(
                "handler failed",
                status=500,
                code="server_error",
                public_message="the authorization server failed; try again",
            )
        fields = {
            "request_id": rid,
            "status": str(error.status),
            "error": error.code,
            "detail": str(error)[:200],  # fixed texts: never a token, code or secret
        }
        log.log(error.log_level, "oauth request failed", extra={"fields": fields})
        if ex.finished:
            return
        if ex.response_started:
            ex.abort()
            return
        if pages_on_error:
            pages.error_page(ex, error.status, "Sign-in failed", error.public_message)
        else:
            send_oauth_error(ex, error)

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
