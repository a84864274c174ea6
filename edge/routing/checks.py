"""The site checks every proxy may need, as middleware factories (``Phase.SITE``).

Each factory looks at one proxy's config and scheme once, when the table is compiled: a
proxy that needs none of them gets none, and a request to it runs nothing before its
handler. In the order ``standard_pipeline`` registers them, which is the order they
answer in: disabled proxy (404), then over HTTP the redirect to HTTPS (301 for GET and
HEAD, 308 otherwise) or over TLS HTTPS disabled (421), then the certificate that does
not cover the host (421).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from edge.config.schema import ProxyConfig
from edge.errors import EdgeError
from edge.http1.exchange import Exchange
from edge.routing.middleware import Pipeline
from edge.routing.resolution import Middleware, Resolution, Scheme, Step

# ACME HTTP-01 challenges must reach their answer over plain HTTP (RFC 8555 §8.3), so the
# redirect to HTTPS leaves them alone even before a mount answers them
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

CoverCheck = Callable[[ssl.SSLObject, str], bool]


class ProxyDisabled(EdgeError):
    status = 404
    public_message = "the proxy for this host is disabled"


class Misdirected(EdgeError):
    status = 421
    public_message = "this connection cannot serve the requested host"


class HttpsDisabled(Misdirected):
    public_message = "HTTPS is not enabled for this host"


def _disabled(ex: Exchange, res: Resolution, proceed: Step, /) -> None:
    ex.fail(ProxyDisabled())


def _redirect_to_https(ex: Exchange, res: Resolution, proceed: Step, /) -> None:
    if ex.path.startswith(ACME_CHALLENGE_PREFIX):
        proceed(ex, res)
        return
    status = 301 if ex.method in (b"GET", b"HEAD") else 308
    location = b"https://" + ex.host.encode("idna") + ex.target
    ex.respond(status, b"", headers=[(b"location", location)])


def _https_disabled(ex: Exchange, res: Resolution, proceed: Step, /) -> None:
    ex.fail(HttpsDisabled())


def proxy_disabled(proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
    """404 on every request to a proxy that is switched off."""
    return None if proxy.enabled else _disabled


def scheme_policy(proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
    """Plain HTTP to an HTTPS-only proxy is redirected; TLS to one without HTTPS is 421.

    A proxy with neither enabled is still served over plain HTTP, as it always was.
    """
    if scheme == "http":
        return _redirect_to_https if not proxy.enable_http and proxy.enable_https else None
    return None if proxy.enable_https else _https_disabled


class CertificateCover:
    """421 when the TLS connection's certificate does not cover the requested host (the
    client reused a connection opened for another name)."""

    __slots__ = ("covers",)

    def __init__(self, covers: CoverCheck) -> None:
        self.covers = covers

    def factory(self, proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
        return self if scheme == "https" else None

    def __call__(self, ex: Exchange, res: Resolution, proceed: Step, /) -> None:
        tls = ex.tls
        if tls is not None and not self.covers(tls, ex.host):
            ex.fail(Misdirected(f"certificate does not cover {ex.host!r}"))
            return
        proceed(ex, res)


def standard_pipeline(tls_covers: CoverCheck | None = None) -> Pipeline:
    """The pipeline with today's checks; ForwardAuth and the like register after them."""
    pipeline = Pipeline()
    pipeline.register("proxy-disabled", proxy_disabled)
    pipeline.register("scheme", scheme_policy)
    if tls_covers is not None:
        pipeline.register("certificate-cover", CertificateCover(tls_covers).factory)
    return pipeline
