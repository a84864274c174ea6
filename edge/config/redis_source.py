"""Reading configuration keys from Redis: full scans and batched fetches."""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from edge.config.schema import CONFIG_KEY_PATTERNS, classify_key

SCAN_COUNT = 1000
FETCH_BATCH = 1000


class WrongType(bytes):
    """Marker value for a config key that holds something other than a string."""


async def fetch(client: aioredis.Redis, keys: Iterable[str]) -> dict[str, bytes | None]:
    """Current values of ``keys`` (None = absent). Non-string keys are reported, not hidden."""
    wanted = [k for k in keys if classify_key(k) is not None]
    result: dict[str, bytes | None] = {}
    for start in range(0, len(wanted), FETCH_BATCH):
        batch = wanted[start : start + FETCH_BATCH]
        values = await client.mget(batch)
        missing = [k for k, v in zip(batch, values, strict=True) if v is None]
        types: list[bytes] = []
        if missing:
            pipe = client.pipeline(transaction=False)
            for k in missing:
                pipe.type(k)
            types = await pipe.execute()
        kinds = dict(zip(missing, types, strict=True))
        for key, value in zip(batch, values, strict=True):
            if value is not None:
                result[key] = value if isinstance(value, bytes) else str(value).encode()
            elif kinds.get(key, b"none") not in (b"none", "none"):
                kind = kinds[key]
                name = kind.decode() if isinstance(kind, bytes) else str(kind)
                result[key] = WrongType(name.encode())
            else:
                result[key] = None
    return result


async def scan_all(client: aioredis.Redis) -> dict[str, bytes]:
    """Every config key and its value, read in batches (SCAN never blocks the server)."""
    keys: set[str] = set()
    for pattern in CONFIG_KEY_PATTERNS:
        async for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
            keys.add(key.decode() if isinstance(key, bytes) else key)
    fetched = await fetch(client, keys)
    return {k: v for k, v in fetched.items() if v is not None}
