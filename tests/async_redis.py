"""Run a coroutine against the test redis-server with the edge's own async client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis

from edge.settings import RedisTarget
from edge.store.client import redis_client
from tests.helpers import RedisServer

R = TypeVar("R")


def run(redis_db: RedisServer, body: Callable[[aioredis.Redis], Awaitable[R]]) -> R:
    """``body(client)`` in a fresh event loop; the client is closed afterwards."""

    async def main() -> R:
        client = redis_client(RedisTarget(redis_db.url))
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())
