"""A lease on a Redis key: one holder at a time, for a bounded time, across every node.

A holder takes the key with ``SET key <token> NX PX ttl``, where ``token`` is random and
its own. The lease ends when the holder releases it or when ``ttl`` runs out, whichever
comes first; a holder whose work took longer than its lease must not end the lease of
whoever took the key next, so renewing and releasing compare the stored token with the
holder's own inside Redis (a Lua script runs atomically) before touching the key.

This is the single-instance pattern of https://redis.io/docs/latest/develop/use/patterns/distributed-locks/
(not Redlock): it guards against doing the same work twice, which is all our users need;
it is not a fence for a resource that must never see two writers.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Lease", "hold"]

# compare-and-act in one script: between a GET and a separate PEXPIRE/DEL the lease could
# expire and be taken by another holder, whose lease the second command would then touch
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _millis(ttl: float) -> int:
    if not 0 < ttl < math.inf:
        raise ValueError(f"a lease needs a positive ttl, not {ttl!r}")
    return max(1, round(ttl * 1000))


class Lease:
    """One holder's claim on ``key``: ``acquire``, then ``renew`` while working, ``release``."""

    def __init__(self, client: aioredis.Redis, key: str, ttl: float) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = _millis(ttl)
        self.token = secrets.token_hex(16)

    async def acquire(self) -> bool:
        """Take the key if nobody holds it; False if someone (this holder included) does."""
        return bool(await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """Restart the lease's ``ttl`` if this holder still holds it; False if it was lost."""
        return bool(await self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> bool:
        """End the lease if this holder still holds it; False if it had expired (and perhaps
        been taken by another holder, whose lease stays)."""
        return bool(await self.client.eval(_RELEASE, 1, self.key, self.token))


@asynccontextmanager
async def hold(client: aioredis.Redis, key: str, ttl: float) -> AsyncIterator[bool]:
    """``async with hold(client, key, ttl) as acquired:`` run the body either way; when
    ``acquired``, the lease is released on the way out if still held."""
    lease = Lease(client, key, ttl)
    acquired = await lease.acquire()
    try:
        yield acquired
    finally:
        if acquired:
            # a release Redis cannot answer must not replace the body's outcome (or its
            # exception): the lease then ends by its ttl, which is what the ttl is for
            with contextlib.suppress(RedisError, OSError):
                await lease.release()
