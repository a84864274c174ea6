"""Reading configuration keys from Redis: full scans and batched fetches."""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from edge.config.schema import CONFIG_KEY_PATTERNS, WrongType, classify_key
from edge.store.scan import mget, scan_keys

__all__ = ["WrongType", "fetch", "scan_all"]


async def fetch(client: aioredis.Redis, keys: Iterable[str]) -> dict[str, bytes | None]:
    """Current values of ``keys`` (None = absent). Non-string keys are reported, not hidden."""
    result = await mget(client, (k for k in keys if classify_key(k) is not None))
    missing = [k for k, v in result.items() if v is None]
    if missing:
        # MGET answers nil for another type too: TYPE tells those from absent keys
        pipe = client.pipeline(transaction=False)
        for key in missing:
            pipe.type(key)
        for key, kind in zip(missing, await pipe.execute(), strict=True):
            name = kind.decode() if isinstance(kind, bytes) else str(kind)
            if name != "none":
                result[key] = WrongType(name.encode())
    return result


async def scan_all(client: aioredis.Redis) -> dict[str, bytes]:
    """Every config key and its value, read in batches (SCAN never blocks the server)."""
    keys: set[str] = set()
    for pattern in CONFIG_KEY_PATTERNS:
        keys.update(await scan_keys(client, pattern))
    fetched = await fetch(client, keys)
    return {k: v for k, v in fetched.items() if v is not None}
