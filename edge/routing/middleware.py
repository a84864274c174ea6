"""Per-proxy middleware chains, compiled from registered factories when a snapshot is
installed.

A factory is asked once per proxy and scheme, when the routing table is compiled, whether
that proxy needs its middleware (``None``: no). The answers, in registration order, are
the proxy's chains; a request only runs the tuple compiled for its proxy and scheme, and a
proxy nothing applies to runs nothing before its handler.

Two phases, because a hostname route serves a request through another proxy:

- ``SITE``: the host the request came in on (disabled proxy, HTTP->HTTPS redirect, the
  421s; protected-resource metadata later). Only the request's host runs these.
- ``ACCESS``: who may pass (ForwardAuth later). The host's proxy runs these, then, when a
  hostname route leads to another proxy, that proxy's too: a route can never take a
  request around either host's check.

Failing closed is the pipeline's rule, not a factory that could be left out: a proxy with
``auth_enabled`` that no ``authenticates`` factory took charge of answers 503, whatever
else is registered.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.config.schema import ProxyConfig
from edge.errors import ServiceUnavailable
from edge.http1.exchange import Exchange
from edge.routing.resolution import Middleware, Resolution, Scheme, Step

Chain = tuple[Middleware, ...]
SCHEMES: tuple[Scheme, ...] = ("http", "https")


class Phase(enum.Enum):
    SITE = "site"  # the request's host only, first
    ACCESS = "access"  # the host, then the proxy a hostname route leads to


class MiddlewareFactory(Protocol):
    """The middleware ``proxy`` needs over ``scheme``, or None when it needs none."""

    def __call__(self, proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None: ...


@dataclass(frozen=True, slots=True)
class Registration:
    name: str
    factory: MiddlewareFactory
    phase: Phase
    # it checks who the caller is: a proxy with auth_enabled it applies to is protected
    authenticates: bool


class AuthUnavailable(ServiceUnavailable):
    public_message = "authentication is required for this host but is not available"


def fail_closed(ex: Exchange, res: Resolution, proceed: Step, /) -> None:
    """A protected host nothing can check: never forwarded unchecked."""
    ex.fail(AuthUnavailable())


def _no_factory(proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
    return None


_FAIL_CLOSED = Registration("fail-closed", _no_factory, Phase.ACCESS, authenticates=False)


@dataclass(frozen=True, slots=True)
class ProxyChains:
    """One proxy's compiled chains, per phase and scheme."""

    proxy: ProxyConfig
    site: Mapping[Scheme, Chain]
    access: Mapping[Scheme, Chain]
    # the registered names of the same, for logs and tests ("fail-closed" for the 503)
    names: Mapping[tuple[Phase, Scheme], tuple[str, ...]]


class Pipeline:
    """The ordered middleware factories every proxy's chains are compiled from."""

    def __init__(self) -> None:
        self._registered: list[Registration] = []
        # bumped by every registration: a table compiled before it has stale chains
        self.version = 0

    @property
    def registered(self) -> tuple[Registration, ...]:
        return tuple(self._registered)

    def register(
        self,
        name: str,
        factory: MiddlewareFactory,
        *,
        phase: Phase = Phase.SITE,
        authenticates: bool = False,
    ) -> None:
        """Add ``factory`` after those already registered in its phase."""
        if name == _FAIL_CLOSED.name or any(r.name == name for r in self._registered):
            raise ValueError(f"middleware {name!r} is already registered")
        self._registered.append(Registration(name, factory, phase, authenticates))
        self.version += 1

    def compile(self, proxy: ProxyConfig) -> ProxyChains:
        chains: dict[tuple[Phase, Scheme], Chain] = {}
        names: dict[tuple[Phase, Scheme], tuple[str, ...]] = {}
        for phase in Phase:
            for scheme in SCHEMES:
                made = self._made(proxy, scheme, phase)
                if phase is Phase.ACCESS and proxy.auth_enabled:
                    if not any(r.authenticates for r, _ in made):
                        # a protected host no registered check took charge of
                        made = [(_FAIL_CLOSED, fail_closed)]
                chains[phase, scheme] = tuple(m for _, m in made)
                names[phase, scheme] = tuple(r.name for r, _ in made)
        site = {scheme: chains[Phase.SITE, scheme] for scheme in SCHEMES}
        access = {scheme: chains[Phase.ACCESS, scheme] for scheme in SCHEMES}
        return ProxyChains(proxy, site, access, names)

    def _made(
        self, proxy: ProxyConfig, scheme: Scheme, phase: Phase
    ) -> list[tuple[Registration, Middleware]]:
        made: list[tuple[Registration, Middleware]] = []
        for r in self._registered:
            if r.phase is phase:
                middleware = r.factory(proxy, scheme)
                if middleware is not None:
                    made.append((r, middleware))
        return made


class _Link:
    """A middleware bound to what follows it: a request makes no closure."""

    __slots__ = ("middleware", "proceed")

    def __init__(self, middleware: Middleware, proceed: Step) -> None:
        self.middleware = middleware
        self.proceed = proceed

    def __call__(self, ex: Exchange, res: Resolution, /) -> None:
        self.middleware(ex, res, self.proceed)


def link(chain: Sequence[Middleware], end: Step) -> Step:
    """The first step of ``chain`` followed by ``end``; ``end`` itself if the chain is empty."""
    step = end
    for middleware in reversed(chain):
        step = _Link(middleware, step)
    return step
