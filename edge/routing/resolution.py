"""What a request resolves to: its proxy, route and target, its kind, and what runs it.

A ``Resolution`` is made once per (proxy, route) and snapshot generation and shared by
every request that resolves to it. Besides what forwarding reads (target, headers), it
carries the request's way through the edge, already linked: ``http`` and ``https`` are
the first step for each scheme, the proxy's middleware chain (see
:mod:`edge.routing.middleware`) ending in ``handler``. The dispatcher calls one of them;
a proxy without middleware for that scheme has the handler itself there, so a plain
request costs no more than a direct call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from edge.config.schema import ProxyConfig, RouteConfig
from edge.http1.exchange import Exchange
from edge.routing.target import Target

# forward: to an upstream (every route today); tunnel: a port-forward endpoint; internal:
# answered by the edge itself (protected-resource metadata, say)
Kind: TypeAlias = Literal["forward", "tunnel", "internal"]
Scheme: TypeAlias = Literal["http", "https"]
EncodedHeaders: TypeAlias = tuple[tuple[bytes, bytes], ...]


class Step(Protocol):
    """One link of a request's way: a middleware (with what follows it) or the handler."""

    def __call__(self, ex: Exchange, res: Resolution, /) -> None: ...


class Middleware(Protocol):
    """Runs before the handler on the proxies it was compiled for.

    It answers the exchange itself (a redirect, an error) or calls ``proceed(ex, res)``,
    at once or later (a ForwardAuth subrequest's answer), exactly once. Instances are made
    per proxy when a snapshot is installed and shared by every request: keep no
    per-request state on them.
    """

    def __call__(self, ex: Exchange, res: Resolution, proceed: Step, /) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Resolution:
    proxy: ProxyConfig  # the proxy that gives the target (after a hostname route's hop)
    route: RouteConfig | None
    target: Target | None  # None: the route names a service that is not registered
    request_headers: EncodedHeaders  # the proxy's custom_headers, ready for the wire
    response_headers: EncodedHeaders  # its custom_response_headers
    # target None because the service's key holds a rejected value (and never a good one):
    # that key, for the 502 to name
    problem: str | None
    kind: Kind
    handler: Step  # what answers once the chain let the request through
    http: Step  # the first step over plain HTTP: the chain for it, then ``handler``
    https: Step  # the same over TLS
