"""HTTP-01 key authorizations in Redis, so any node answers a challenge another started.

``acme:challenge:{token}`` -> the key authorization (RFC 8555 §8.3), with a TTL. The node
running an order publishes each challenge before telling the CA to validate, and withdraws
them when the order is over: the CA fetches each challenge several times (from several
places, for a real CA), so an answer stays until then, and the TTL removes what a node that
died mid-order left behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import redis.asyncio as aioredis

from edge.store import keys

__all__ = ["CHALLENGE_TTL", "TOKEN_RE", "lookup", "publish", "withdraw"]

CHALLENGE_TTL = 3600  # seconds an unwithdrawn challenge stays answerable
# RFC 8555 §8.3: a token is base64url, at least 128 bits of entropy; bounded here
TOKEN_RE = re.compile(r"\A[A-Za-z0-9_-]{16,256}\Z")


async def publish(
    client: aioredis.Redis, answers: Iterable[tuple[str, str]], ttl: int = CHALLENGE_TTL
) -> None:
    """Store each ``(token, key_authorization)`` for every node to answer."""
    pipe = client.pipeline(transaction=False)
    for token, key_authorization in answers:
        pipe.set(keys.acme_challenge(token), key_authorization, ex=ttl)
    await pipe.execute()


async def withdraw(client: aioredis.Redis, tokens: Iterable[str]) -> None:
    names = [keys.acme_challenge(token) for token in tokens]
    if names:
        await client.delete(*names)


async def lookup(client: aioredis.Redis, token: str) -> bytes | None:
    """The key authorization to answer for ``token``, or None."""
    if TOKEN_RE.match(token) is None:
        return None
    value = await client.get(keys.acme_challenge(token))
    return value.encode() if isinstance(value, str) else value
