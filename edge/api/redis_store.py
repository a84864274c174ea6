"""What every Redis-backed store shares: the client handle, the time bound, and transactions.

A write that reads before it writes runs as ``WATCH``/``MULTI``/``EXEC``: the body reads
the watched keys (and may watch more), calls ``pipe.multi()`` and queues its writes. If
another client changed a watched key before ``EXEC``, Redis refuses the whole transaction
and it runs again from the start after a short random pause, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from edge.config.watcher import redis_client
from edge.settings import RedisTarget

__all__ = [
    "REDIS_TIMEOUT",
    "TXN_ATTEMPTS",
    "RedisHandle",
    "RedisStore",
    "TooMuchContention",
    "watched_transaction",
]

REDIS_TIMEOUT = 5.0  # each store operation, all its round trips included
TXN_ATTEMPTS = 8
_BACKOFF = 0.002  # seconds: the longest pause after the first lost race, doubling after each
_BACKOFF_MAX = 0.05

R = TypeVar("R")


class TooMuchContention(RedisError):
    """A transaction kept losing its WATCH race; treated like an unavailable Redis."""


class RedisHandle:
    """One lazily created asyncio Redis client per worker (``decode_responses=False``)."""

    def __init__(self, redis: RedisTarget) -> None:
        self.redis = redis
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = redis_client(self.redis)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def watched_transaction(
    client: aioredis.Redis,
    keys: Sequence[str],
    body: Callable[[Pipeline], Awaitable[R]],
    attempts: int = TXN_ATTEMPTS,
) -> R:
    """Run ``body`` with ``keys`` watched; EXEC what it queued after ``pipe.multi()``.

    A body that never calls ``multi()`` writes nothing (its reads are just released). An
    exception from ``body`` abandons the attempt, and nothing is written. Raises
    :class:`TooMuchContention` when every attempt lost its race.
    """
    async with client.pipeline(transaction=True) as pipe:
        for attempt in range(attempts):
            try:
                await pipe.watch(*keys)
                result = await body(pipe)
                if pipe.explicit_transaction:
                    await pipe.execute()
                else:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                return result
            except WatchError:
                await pipe.reset()  # type: ignore[no-untyped-call]
                # a random pause before the next try: writers that lost together to the
                # same winner would otherwise collide again on their very next attempt
                await asyncio.sleep(random.uniform(0, min(_BACKOFF * 2**attempt, _BACKOFF_MAX)))
    raise TooMuchContention(f"{keys[0]}: transaction kept conflicting")


class RedisStore:
    """A store of records in Redis. Every method may raise RedisError/OSError/TimeoutError."""

    def __init__(self, redis: RedisHandle, timeout: float = REDIS_TIMEOUT) -> None:
        self.redis = redis
        self.timeout = timeout

    async def _bounded(self, work: Awaitable[R]) -> R:
        async with asyncio.timeout(self.timeout):
            return await work

    async def _transaction(
        self, keys: Sequence[str], body: Callable[[Pipeline], Awaitable[R]]
    ) -> R:
        return await watched_transaction(self.redis.client, keys, body)
