"""Revocation reaches connections already admitted.

A bearer token or session cookie is checked when a request arrives; a WebSocket, an SSE
stream or a long download admitted with it may then live for hours. This worker keeps
every request its guards let in with a token (``Exchange.access``, set on the request path)
and, every ``SWEEP_INTERVAL``, checks those still running on its connections again, from
memory: the token's ``jti`` against the revocations (which reach every
node within a second, :mod:`edge.oauth.revocation`), and the user against the allowlists
of the proxy as it is configured now (a configuration change reaches every node within a
second too). One that no longer passes is cut (:meth:`Exchange.withdraw`): a WebSocket
gets Close ``4401`` both ways at frame boundaries, a stream is ended, a response not begun
is never given. So a revocation cuts live connections on every node within two seconds.

A proxy that no longer exists, or is no longer protected by the edge's own tokens, cuts
nothing: that is a configuration change, not a withdrawal of this user's access.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from edge.config.schema import ProxyConfig
from edge.handlers.forwardauth import admits
from edge.http1.exchange import Exchange
from edge.oauth.server import AuthorizationServer

__all__ = ["CLOSE_CODE", "SWEEP_INTERVAL", "LiveAccess"]

SWEEP_INTERVAL = 0.5  # seconds between re-checks of the admitted exchanges
# a WebSocket whose access was withdrawn: 4401, the 4000-4999 private range (RFC 6455
# section 7.4.2) read as HTTP's 401, as GraphQL-over-WebSocket and others use it
CLOSE_CODE = 4401


class LiveAccess:
    """One worker's exchanges admitted with a token, re-checked in the background (a
    tracked service). The guard marks an exchange (``Exchange.access``); this walks the
    worker's connections, so the request path keeps no list and makes no garbage."""

    def __init__(
        self,
        server: AuthorizationServer,
        exchanges: Callable[[], Iterable[Exchange | None]],
        interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.server = server
        self.exchanges = exchanges
        self.interval = interval
        self.watched = 0  # exchanges with a token at the last sweep
        self.withdrawn = 0  # exchanges cut since start

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sweep()

    def sweep(self) -> None:
        """Cut what is no longer allowed."""
        watched = 0
        for ex in list(self.exchanges()):
            if ex is None or ex.access is None or ex.finished:
                continue
            watched += 1
            claims, proxy = ex.access
            if not self._allowed(ex, claims, proxy):
                ex.access = None
                self.withdrawn += 1
                ex.withdraw(CLOSE_CODE)
        self.watched = watched

    def _allowed(self, ex: Exchange, claims: dict[str, Any], proxy: ProxyConfig) -> bool:
        jti = claims.get("jti")
        if not isinstance(jti, str) or self.server.revoked.is_revoked(jti):
            return False
        current = self.server.find_proxy(proxy.hostname)
        if current is None and proxy.hostname.startswith("*."):
            current = self.server.find_proxy(ex.host)
        if current is None or not self.server.protects(current):
            return True
        return admits(self.server, current, claims)
