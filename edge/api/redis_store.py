"""What every Redis-backed store of the API shares: the client handle, the time bound,
and read-then-write transactions (:mod:`edge.store.transaction`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from edge.store.client import RedisHandle
from edge.store.transaction import TooMuchContention, Txn, transaction

__all__ = ["REDIS_TIMEOUT", "RedisHandle", "RedisStore", "TooMuchContention", "Txn"]

REDIS_TIMEOUT = 5.0  # each store operation, all its round trips included

R = TypeVar("R")


class RedisStore:
    """A store of records in Redis. Every method may raise RedisError/OSError/TimeoutError."""

    def __init__(self, redis: RedisHandle, timeout: float = REDIS_TIMEOUT) -> None:
        self.redis = redis
        self.timeout = timeout

    async def _bounded(self, work: Awaitable[R]) -> R:
        async with asyncio.timeout(self.timeout):
            return await work

    async def _transaction(self, keys: Sequence[str], body: Callable[[Txn], Awaitable[R]]) -> R:
        return await transaction(self.redis.client, keys, body)
