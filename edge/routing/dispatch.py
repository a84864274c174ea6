"""From a parsed request to the handler that answers it.

Order: handlers that answer on every host before routing (ACME HTTP-01 challenges), the
API hostname, then the host router; proxies with auth enabled pass through the auth
handler before forwarding.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from edge.config.snapshot import Snapshot
from edge.errors import EdgeError, NoRoute, ServiceUnavailable
from edge.handlers.forward import Forwarder
from edge.http1.exchange import Exchange, Handler
from edge.routing.router import Resolution

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


class ProxyDisabled(EdgeError):
    status = 404
    public_message = "the proxy for this host is disabled"


class Misdirected(EdgeError):
    status = 421
    public_message = "this connection cannot serve the requested host"


class HttpsDisabled(Misdirected):
    public_message = "HTTPS is not enabled for this host"


class AuthUnavailable(ServiceUnavailable):
    public_message = "authentication is required for this host but is not available"


class AuthGate:
    """What runs before forwarding on a proxy with ``auth_enabled``.

    ``check`` calls ``allow`` once the request may pass, or answers the exchange itself.
    """

    def check(self, ex: Exchange, res: Resolution, allow: Callable[[], None]) -> None:
        raise NotImplementedError


class Dispatcher:
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        forwarder: Forwarder,
        api: Handler | None = None,
        api_hostname: str | None = None,
        tls_covers: Callable[[ssl.SSLObject, str], bool] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.forwarder = forwarder
        self.api = api
        self.api_hostname = api_hostname.lower().rstrip(".") if api_hostname else None
        # path prefix -> handler, answered on every host before routing
        self.early: list[tuple[str, Handler]] = []
        self.auth: AuthGate | None = None
        # whether a TLS connection's certificate may answer for a host (else 421)
        self.tls_covers = tls_covers

    def __call__(self, ex: Exchange) -> None:
        path = ex.path
        for prefix, handler in self.early:
            if path.startswith(prefix):
                handler.handle(ex)
                return
        if self.api is not None and ex.host == self.api_hostname:
            self.api.handle(ex)
            return
        router = self.snapshot().router
        proxy = router.find_proxy(ex.host)
        if proxy is None:
            rejected = router.rejected_proxy(ex.host)
            if rejected is not None:
                # the host's only value was refused: say so, and which key to fix
                message = f"the proxy config for this host was rejected ({rejected})"
                ex.fail(NoRoute(f"{rejected} rejected", public_message=message))
                return
            ex.fail(NoRoute(f"no proxy for host {ex.host!r}"))
            return
        if not proxy.enabled:
            ex.fail(ProxyDisabled())
            return
        if ex.scheme == "http":
            if (
                not proxy.enable_http
                and proxy.enable_https
                and not path.startswith(ACME_CHALLENGE_PREFIX)
            ):
                _redirect_to_https(ex)
                return
        else:
            if not proxy.enable_https:
                ex.fail(HttpsDisabled())
                return
            tls = ex.tls
            if (
                tls is not None
                and self.tls_covers is not None
                and not self.tls_covers(tls, ex.host)
            ):
                ex.fail(Misdirected(f"certificate does not cover {ex.host!r}"))
                return
        res = router.resolve(proxy, path, ex.method)
        # a hostname route leads to another proxy (res.proxy): the auth of both applies,
        # so that a route can never take a request around its own host's check
        if proxy.auth_enabled or res.proxy.auth_enabled:
            if self.auth is None:
                # fail closed: never forward a protected host without its check
                ex.fail(AuthUnavailable())
                return
            self.auth.check(ex, res, lambda: self.forwarder.forward(ex, res))
            return
        self.forwarder.forward(ex, res)


def _redirect_to_https(ex: Exchange) -> None:
    status = 301 if ex.method in (b"GET", b"HEAD") else 308
    location = b"https://" + ex.host.encode("idna") + ex.target
    ex.respond(status, b"", headers=[(b"location", location)])
