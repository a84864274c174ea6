"""Revoked access tokens, mirrored in every worker's memory so a check costs a dict lookup.

A revocation is written twice in one MULTI: to the sorted set ``oauth:revoked`` (``jti`` ->
the token's expiry, the truth) and to the capped stream ``oauth:revocations`` (``XADD
MAXLEN ~ 10000``), which every worker follows with ``XREAD BLOCK`` from the last entry it
saw: a revocation made on one node is in every node's memory well within a second.

The stream is only the fast path. A follower starts a session by noting the stream's last
id and *then* reading the sorted set (so a revocation lands in one or the other: both are
written atomically), and it reads the set again after any Redis error (entries may have
been trimmed, or the stream lost with a failover, while it was away) and every
``resync_interval`` seconds in any case. A token expired more than :data:`LEEWAY` seconds
ago is refused by its ``exp`` anyway: such members are pruned from memory and from the set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.oauth.signing import LEEWAY, raise_if_cancelled
from edge.store import keys

__all__ = ["RevokedTokens"]

log = logging.getLogger("edge.oauth")

STREAM_MAXLEN = 10_000  # approximate (MAXLEN ~): trimming whole nodes is cheap
BLOCK_MS = 1000  # XREAD BLOCK: how long one read waits for news
READ_COUNT = 1000  # entries per XREAD
READ_GRACE = 1.0  # seconds an XREAD may take beyond its BLOCK before it counts as lost
RESYNC_INTERVAL = 60.0  # seconds between full reads of the sorted set while connected
PRUNE_INTERVAL = 60.0  # seconds between prunes of expired members
BACKOFF_START = 0.5
BACKOFF_CAP = 5.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RevokedTokens:
    """The revoked ``jti``s (-> token expiry) of every node, followed from Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        resync_interval: float = RESYNC_INTERVAL,
        prune_interval: float = PRUNE_INTERVAL,
        block_ms: int = BLOCK_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.resync_interval = resync_interval
        self.prune_interval = prune_interval
        self.block_ms = block_ms
        self._clock = clock
        self._revoked: dict[str, int] = {}
        self.last_id: str | None = None  # the stream entry read last
        self.connected = False
        self.last_error: str | None = None
        self.last_sync: float | None = None
        self._last_prune = 0.0

    async def revoke(self, jti: str, expires_at: int) -> None:
        """Revoke ``jti`` (a token valid until ``expires_at``, Unix seconds) on every node."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.OAUTH_REVOKED, {jti: expires_at})
        pipe.xadd(
            keys.OAUTH_REVOCATIONS,
            {"jti": jti, "exp": str(expires_at)},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        await pipe.execute()
        self._revoked[jti] = max(expires_at, self._revoked.get(jti, expires_at))

    def is_revoked(self, jti: str) -> bool:
        """Memory only: safe on every request."""
        return jti in self._revoked

    def __len__(self) -> int:
        return len(self._revoked)

    def health(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "revoked": len(self._revoked),
            "last_sync": self.last_sync,
            "error": self.last_error,
        }

    # ------------------------------------------------------------------ following
    async def run(self) -> None:
        """Follow the revocations for ever (a TaskService's loop); Redis errors are retried
        with a backoff of 0.5 s doubling to 5 s, the set read whole on reconnect."""
        backoff = BACKOFF_START
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                if self.connected or error != self.last_error:
                    log.warning(
                        "revocations not followed; retrying",
                        extra={"fields": {"error": error, "retry_in": backoff}},
                    )
                self.last_error = error
            except Exception:
                log.exception("revocation follower failed; retrying")
                self.last_error = "internal error"
            raise_if_cancelled()
            if self.connected:
                backoff = BACKOFF_START  # a session was up: start the backoff over
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _session(self) -> None:
        await self.resync()
        if not self.connected:
            log.info("revocations followed", extra={"fields": {"revoked": len(self._revoked)}})
        self.connected = True
        self.last_error = None
        while True:
            raise_if_cancelled()
            now = self._clock()
            if self.last_sync is not None and now - self.last_sync >= self.resync_interval:
                await self.resync()
            elif now - self._last_prune >= self.prune_interval:
                await self.prune()
            await self._read()

    async def resync(self) -> None:
        """Read the whole (unexpired) set, replacing memory, and note where the stream is:
        the stream's id first, so a revocation written between the two reads is in the set
        or after that id (ZADD and XADD are one transaction)."""
        last: Any = await self.redis.xrevrange(keys.OAUTH_REVOCATIONS, count=1)
        last_id = _text(last[0][0]) if last else "0-0"
        now = int(self._clock())
        members: Any = await self.redis.zrangebyscore(
            keys.OAUTH_REVOKED, now - LEEWAY, "+inf", withscores=True
        )
        self._revoked = {_text(jti): int(score) for jti, score in members}
        self.last_id = last_id
        self.last_sync = self._clock()

    async def _read(self) -> None:
        last_id = self.last_id or "0-0"
        # bounded here too: a connection that stops answering must not hold the follower
        # (nor its cancellation) longer than the block plus a grace
        async with asyncio.timeout(self.block_ms / 1000 + READ_GRACE):
            reply: Any = await self.redis.xread(
                {keys.OAUTH_REVOCATIONS: last_id}, count=READ_COUNT, block=self.block_ms
            )
        for _stream, entries in reply or ():
            for entry_id, entry in entries:
                self.last_id = _text(entry_id)
                fields = {_text(k): _text(v) for k, v in entry.items()}
                jti = fields.get("jti")
                try:
                    exp = int(fields.get("exp", ""))
                except ValueError:
                    exp = None
                if not jti or exp is None:
                    log.warning(
                        "revocation entry ignored",
                        extra={"fields": {"key": keys.OAUTH_REVOCATIONS, "id": self.last_id}},
                    )
                    continue
                self._revoked[jti] = max(exp, self._revoked.get(jti, exp))

    async def prune(self) -> None:
        """Forget the revocations of tokens expired (leeway included) in memory and Redis."""
        now = int(self._clock())
        horizon = now - LEEWAY
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp >= horizon}
        self._last_prune = self._clock()
        await self.redis.zremrangebyscore(keys.OAUTH_REVOKED, "-inf", f"({horizon}")
