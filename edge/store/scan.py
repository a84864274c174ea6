"""Reading many keys: SCAN for the names (never blocks the server), MGET in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import redis.asyncio as aioredis

__all__ = ["FETCH_BATCH", "SCAN_COUNT", "as_text", "mget", "scan_keys", "scan_values"]

SCAN_COUNT = 1000
FETCH_BATCH = 1000


# ``reader`` below: a Redis client, or a pipeline while it watches (its commands then run
# at once, and a transaction can watch what it read); a Pipeline is a Redis client


def as_text(value: bytes | str) -> str:
    """A key or value as text (undecodable bytes replaced, never raised)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def scan_keys(
    reader: aioredis.Redis, pattern: str, wanted: Callable[[str], bool] = lambda _: True
) -> list[str]:
    """Every key matching ``pattern`` (and ``wanted``), sorted, each once."""
    keys: set[str] = set()
    async for key in reader.scan_iter(match=pattern, count=SCAN_COUNT):
        text = as_text(key)
        if wanted(text):
            keys.add(text)
    return sorted(keys)


async def mget(reader: aioredis.Redis, keys: Iterable[str]) -> dict[str, bytes | None]:
    """Values of ``keys`` in batches; None for a key that is absent or of another type
    (MGET answers nil for those instead of failing)."""
    ordered = list(keys)
    found: dict[str, bytes | None] = {}
    for start in range(0, len(ordered), FETCH_BATCH):
        batch = ordered[start : start + FETCH_BATCH]
        values = await reader.mget(batch)
        for key, value in zip(batch, values, strict=True):
            found[key] = None if value is None else _as_bytes(value)
    return found


async def scan_values(
    reader: aioredis.Redis, pattern: str, wanted: Callable[[str], bool] = lambda _: True
) -> dict[str, bytes]:
    """Every string key matching ``pattern`` (and ``wanted``) with its value, by key.

    Keys deleted between the scan and the read, and keys of another type, are left out.
    """
    values = await mget(reader, await scan_keys(reader, pattern, wanted))
    return {key: value for key, value in values.items() if value is not None}
