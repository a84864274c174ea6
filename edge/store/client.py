"""The asyncio Redis client every part of the edge opens, with the same options."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from edge.settings import RedisTarget

__all__ = ["RedisHandle", "redis_client"]


def redis_client(redis: RedisTarget) -> aioredis.Redis:
    """A client for ``redis`` (bytes in and out, a 2 s connect timeout, TCP keepalive)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "retry_on_timeout": False}
    if not redis.url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only; unix sockets refuse the option
    options.update(redis.client_kwargs())
    return aioredis.Redis.from_url(redis.url, **options)


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
