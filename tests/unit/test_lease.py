"""The Redis lease against a real redis-server: one holder at a time, and a holder whose
lease ran out can neither extend nor end the lease of whoever holds the key now."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from edge.settings import RedisTarget
from edge.store.client import redis_client
from edge.store.lease import Lease, hold
from tests.async_redis import run
from tests.helpers import RedisServer

KEY = "lock:test"


async def expired(client: aioredis.Redis, key: str = KEY) -> None:
    """Wait (boundedly) for Redis to expire ``key`` by its TTL."""
    async with asyncio.timeout(10):
        while True:
            if not await client.exists(key):
                return
            await asyncio.sleep(0.01)


def test_one_holder_at_a_time_until_released(redis_db: RedisServer) -> None:
    async def body(client: aioredis.Redis) -> None:
        first, second = Lease(client, KEY, 30), Lease(client, KEY, 30)
        assert first.token != second.token
        assert await first.acquire()
        assert not await second.acquire()  # contended
        assert not await first.acquire()  # not re-entrant either
        assert await client.get(KEY) == first.token.encode()
        assert 0 < await client.pttl(KEY) <= 30_000
        assert await first.release()
        assert await client.get(KEY) is None
        assert await second.acquire()
        assert not await first.release()  # released once already: not the holder now
        assert await client.get(KEY) == second.token.encode()

    run(redis_db, body)


def test_a_release_after_expiry_leaves_the_next_holders_lease(redis_db: RedisServer) -> None:
    async def body(client: aioredis.Redis) -> None:
        slow, next_holder = Lease(client, KEY, 0.05), Lease(client, KEY, 30)
        assert await slow.acquire()
        await expired(client)  # the slow holder's work outlived its lease
        assert await next_holder.acquire()
        assert not await slow.release()
        assert await client.get(KEY) == next_holder.token.encode()
        assert not await Lease(client, KEY, 30).acquire()  # still held: nobody else gets in

    run(redis_db, body)


def test_renew_extends_only_a_lease_still_held(redis_db: RedisServer) -> None:
    async def body(client: aioredis.Redis) -> None:
        holder, other = Lease(client, KEY, 30), Lease(client, KEY, 30)
        assert await holder.acquire()
        await client.pexpire(KEY, 5_000)  # time has passed
        assert await holder.renew()
        assert await client.pttl(KEY) > 5_000  # back to the full 30 s
        await client.pexpire(KEY, 5_000)
        assert not await other.renew()  # not the holder: no effect
        assert 0 < await client.pttl(KEY) <= 5_000

        short = Lease(client, "lock:short", 0.05)
        assert await short.acquire()
        await expired(client, "lock:short")
        assert not await short.renew()  # expired: renewing does not bring it back
        assert await client.exists("lock:short") == 0
        taker = Lease(client, "lock:short", 30)
        assert await taker.acquire()
        await client.pexpire("lock:short", 5_000)
        assert not await short.renew()  # nor extend the lease of whoever took it since
        assert 0 < await client.pttl("lock:short") <= 5_000

    run(redis_db, body)


def test_hold_yields_whether_acquired_and_releases_on_the_way_out(redis_db: RedisServer) -> None:
    async def body(client: aioredis.Redis) -> None:
        async with hold(client, KEY, 30) as acquired:
            assert acquired
            held = await client.get(KEY)
            assert held is not None
            async with hold(client, KEY, 30) as again:
                assert not again
            assert await client.get(KEY) == held  # the loser did not release the holder
        assert await client.get(KEY) is None

        with pytest.raises(LookupError):
            async with hold(client, KEY, 30) as acquired:
                assert acquired
                raise LookupError
        assert await client.get(KEY) is None  # released after a failing body too

    run(redis_db, body)


def test_hold_never_ends_a_lease_taken_over_meanwhile(redis_db: RedisServer) -> None:
    async def body(client: aioredis.Redis) -> None:
        async with hold(client, KEY, 0.05) as acquired:
            assert acquired
            await expired(client)
            await client.set(KEY, "next holder")
        assert await client.get(KEY) == b"next holder"

    run(redis_db, body)


def test_a_release_redis_cannot_answer_leaves_the_lease_to_its_ttl(
    redis_db: RedisServer,
) -> None:
    async def body(client: aioredis.Redis) -> str:
        async with hold(client, KEY, 30) as acquired:
            assert acquired
            redis_db.stop()  # Redis goes away while the work runs
            return "done"  # the outcome of the work, not the failed release, comes out

    assert run(redis_db, body) == "done"


def test_a_ttl_must_be_positive(redis_db: RedisServer) -> None:
    client = redis_client(RedisTarget(redis_db.url))
    for ttl in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive ttl"):
            Lease(client, KEY, ttl)
    assert Lease(client, KEY, 0.0001).ttl_ms == 1  # below a millisecond: the shortest Redis has
