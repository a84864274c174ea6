"""Keep-alive connection pools to upstream origins, one set per worker.

Idle connections wait LIFO (the warmest first) up to ``UPSTREAM_IDLE_LIMIT`` per origin and
close after ``UPSTREAM_IDLE_TIMEOUT``. A pooled connection that the server closed is
dropped as soon as the close is seen; the race that remains (a close in flight while we
reuse it) is handled by the caller retrying idempotent requests once.
"""

from __future__ import annotations

import asyncio
import ssl

from edge.errors import UpstreamConnectError, UpstreamConnectTimeout
from edge.health import Report
from edge.routing.target import Target
from edge.upstream.connection import UpstreamConnection

CONNECT_ATTEMPTS = 3
CONNECT_BACKOFF = 0.1  # seconds before the 2nd attempt; doubles after


def upstream_tls_context() -> ssl.SSLContext:
    """Client TLS for https:// upstreams: verification on, TLS 1.2+, ALPN http/1.1."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class UpstreamPool:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_limit: int,
        idle_timeout: float,
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.idle_limit = idle_limit
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.tls = tls or upstream_tls_context()
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        self.closing = False
        # connections closed because the upstream sent bytes past the end of a response
        self.extra_bytes_closed = 0

    def checkout(self, key: tuple[str, str, int]) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
        return None

    def checkin(self, conn: UpstreamConnection) -> None:
        if self.closing or not conn.usable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.idle_limit:
            conn.close()
            return
        idle.append(conn)
        conn.arm_idle(self.idle_timeout)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def connect(self, target: Target, until: float | None = None) -> UpstreamConnection:
        """A new connection, with up to 3 attempts and backoff, within the connect timeout
        (and before loop time ``until``, a caller's own deadline, when given)."""
        deadline = self.loop.time() + self.connect_timeout
        if until is not None and until < deadline:
            deadline = until
        delay = CONNECT_BACKOFF
        last: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    _, proto = await self.loop.create_connection(
                        lambda: UpstreamConnection(self, target.origin),
                        target.host,
                        target.port,
                        ssl=self.tls if target.scheme == "https" else None,
                        server_hostname=target.host if target.scheme == "https" else None,
                    )
                return proto
            except TimeoutError:
                raise UpstreamConnectTimeout(
                    f"connect to {target.host}:{target.port} timed out"
                ) from None
            except ssl.SSLError as exc:
                # a certificate or handshake failure will not fix itself on retry
                raise UpstreamConnectError(f"TLS to {target.host}:{target.port}: {exc}") from exc
            except OSError as exc:
                last = exc
            if attempt + 1 < CONNECT_ATTEMPTS:
                await asyncio.sleep(min(delay, max(0.0, deadline - self.loop.time())))
                delay *= 2
        if last is None:
            raise UpstreamConnectTimeout(f"connect to {target.host}:{target.port} timed out")
        raise UpstreamConnectError(f"connect to {target.host}:{target.port}: {last}") from last

    def health_report(self) -> Report:
        return Report({"upstream": {"closed_with_extra_bytes": self.extra_bytes_closed}})

    def close_all(self) -> None:
        self.closing = True
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()
