"""PAT authentication (``Authorization: [Bearer ]edge_{prefix}_{secret}``) and ``last_used_at``.

Per request (:meth:`PatAuthenticator.authenticate`):

1. :func:`~edge.auth.pat.parse_pat`: shape and 32-bit checksum, no I/O. A mistyped token is
   a 401 before any Redis command or hashing.
2. ``SMEMBERS pat:prefix:{prefix}`` and ``MGET pat:{id}...``: the records, read fresh on
   every request. A revoked or expired record is refused here, before any hashing, so a
   revocation takes effect on every worker with the next request whatever any cache holds.
3. :meth:`PatVerifier.verify <edge.auth.pat.PatVerifier.verify>` (one per worker): Argon2id
   in a dedicated two-thread pool, bounded, with a short success cache that only ever skips
   the Argon2 computation. Too many verifications queued: 503 (``Retry-After: 1``).
4. ``MGET`` of the membership, the user and the project: an accepted member with a known
   role, or 401.
5. ``SET pat_last_used:{id} <now> EX 300``.

Every failure is the same 401; the reason (a fixed text) and, once the token parsed, its
prefix (not secret) are logged, never the token.

:class:`LastUsedFlusher` runs in every worker: every ``interval`` seconds it takes a short
Redis lock (``SET lock:pat_last_used <random> NX EX``) so that one node at a time copies
``pat_last_used:*`` into ``pat:{id}.last_used_at`` (each record in its own WATCH/MULTI/EXEC,
only when newer), then releases the lock if it still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import msgspec

from edge.api.http import Unauthorized
from edge.api.identity import PatIdentity
from edge.api.people.store import (
    LAST_USED_PREFIX,
    PatRecord,
    PeopleStore,
    decode_pat,
    pat_key,
    valid_id,
)
from edge.api.redis_store import RedisHandle, TooMuchContention
from edge.api.tokens.store import now_iso
from edge.auth.pat import PatVerifier, parse_pat
from edge.auth.secrets import AuthFailure
from edge.http1.exchange import Exchange
from edge.store import keys
from edge.store.lease import hold
from edge.store.scan import as_text, scan_values
from edge.store.transaction import Txn, transaction

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "LastUsedFlusher",
    "PatAuthenticator",
    "PatIdentity",
    "PeopleContext",
]

log = logging.getLogger("edge.api")

ARGON2_THREADS = 2  # per worker: Argon2 computations at once (and the pool's size)
ARGON2_NICE = 10  # the Argon2 threads' nice value: the event loop's thread keeps 0
MAX_CANDIDATES = 4  # PATs checked under one prefix (58**8 prefixes: collisions are rare)
DEFAULT_FLUSH_INTERVAL = 30.0
LOCK_KEY = keys.PAT_LAST_USED_LEASE
PAT_UNAUTHORIZED = "authentication required: send 'Authorization: Bearer <personal access token>'"


def _unauthorized(reason: AuthFailure, prefix: str | None = None) -> Unauthorized:
    detail = f"authentication failed: {reason.value}"
    if prefix is not None:
        detail += f" (token prefix {prefix})"
    return Unauthorized(detail, public_message=PAT_UNAUTHORIZED)


class PatAuthenticator:
    def __init__(self, store: PeopleStore, verifier: PatVerifier) -> None:
        self.store = store
        self.verifier = verifier

    async def authenticate(self, ex: Exchange) -> PatIdentity:
        """The caller; raises ``Unauthorized`` (401) or ``AuthOverloaded`` (503)."""
        values = [value for name, value in ex.headers if name == b"authorization"]
        if not values:
            raise _unauthorized(AuthFailure.MISSING)
        parsed = parse_pat(values[0].decode("latin-1")) if len(values) == 1 else None
        if parsed is None:  # no Redis, no hashing
            raise _unauthorized(AuthFailure.MALFORMED)
        prefix = parsed.prefix
        records = await self.store.pat_candidates(prefix, MAX_CANDIDATES)
        now = datetime.now(UTC)
        reason = AuthFailure.UNKNOWN
        matched: PatRecord | None = None
        for record in records:
            if record.revoked_at is not None:
                reason = AuthFailure.REVOKED
                continue
            if record.expired(now):
                reason = AuthFailure.EXPIRED
                continue
            if await self.verifier.verify(record.token_hash, parsed.token):
                matched = record
                break
            reason = AuthFailure.MISMATCH
        if matched is None:
            raise _unauthorized(reason, prefix)
        project, user, member = await self.store.lookup(matched.project_id, matched.user_id)
        if project is None or user is None or member is None or not member.active:
            raise _unauthorized(AuthFailure.FORBIDDEN_SCOPE, prefix)
        await self.store.touch_pat(matched.id, now_iso())
        ex.user = user.name  # the logs' user
        return PatIdentity(user, project, member.role, matched)


def lower_priority() -> None:
    """Give the calling thread ``ARGON2_NICE`` (Linux schedules threads by their own nice)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), ARGON2_NICE))


class PeopleContext:
    """What the people endpoints share in one worker: the store and the PAT verifier."""

    def __init__(self, redis: RedisHandle, timeout: float, *, cache_ttl: float = 30.0) -> None:
        self.store = PeopleStore(redis, timeout)
        # Argon2 never runs on the loop, nor in the loop's default executor (where it could
        # delay DNS lookups): a pool of its own, as large as the verifier's bound, whose
        # threads yield the core to the loop (a flood of wrong tokens must not slow traffic)
        self.executor = ThreadPoolExecutor(
            ARGON2_THREADS, thread_name_prefix="pat-argon2", initializer=lower_priority
        )
        self.verifier = PatVerifier(
            max_concurrency=ARGON2_THREADS, cache_ttl=cache_ttl, executor=self.executor
        )
        self.auth = PatAuthenticator(self.store, self.verifier)

    def close(self) -> None:
        """Stop the Argon2 pool (a computation under way finishes in its thread)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------- last_used_at


class LastUsedFlusher:
    """Copies ``pat_last_used:{id}`` into ``pat:{id}.last_used_at``, one node at a time."""

    def __init__(
        self,
        redis: RedisHandle,
        interval: float = DEFAULT_FLUSH_INTERVAL,
        lock_ttl: float = 10.0,
        timeout: float = 8.0,
    ) -> None:
        self.redis = redis
        self.interval = interval
        self.lock_ttl = max(1, round(lock_ttl))
        self.timeout = min(timeout, self.lock_ttl * 0.8)  # done before the lock expires
        self.flushed = 0
        self._failing = False

    async def run(self) -> None:
        while True:
            # jitter: the workers of a node started together; spread their attempts
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._failing:  # once per outage, not once per interval
                    log.warning(
                        "PAT last_used flush failed; retrying",
                        extra={"fields": {"error": type(exc).__name__, "detail": str(exc)[:200]}},
                    )
                self._failing = True
            else:
                if self._failing:
                    log.info("PAT last_used flush recovered")
                self._failing = False

    async def flush(self) -> int | None:
        """One flush: records updated, or None if another node holds the lock."""
        async with hold(self.redis.client, LOCK_KEY, self.lock_ttl) as acquired:
            if not acquired:
                return None
            async with asyncio.timeout(self.timeout):
                return await self._flush_all()

    async def _flush_all(self) -> int:
        client = self.redis.client
        updated = 0
        for key, value in (await scan_values(client, LAST_USED_PREFIX + "*")).items():
            tid = key[len(LAST_USED_PREFIX) :]
            if not valid_id("t", tid):
                continue
            if await self._flush_one(tid, as_text(value)):
                updated += 1
        self.flushed += updated
        return updated

    async def _flush_one(self, tid: str, used: str) -> bool:
        key = pat_key(tid)

        async def write(txn: Txn) -> bool:
            record = decode_pat(tid, await txn.get(key))
            if record is None or (record.last_used_at is not None and record.last_used_at >= used):
                return False
            pipe = txn.writes()
            pipe.set(key, msgspec.json.encode(msgspec.structs.replace(record, last_used_at=used)))
            return True

        try:
            return await transaction(self.redis.client, [key], write, attempts=4)
        except TooMuchContention:
            return False  # revoked or rewritten four times meanwhile: the next flush retries
