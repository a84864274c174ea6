"""Signing keys and revocations shared by every node through a real redis-server.

Each "node" is a :class:`SigningKeys` or :class:`RevokedTokens` with its own Redis client.
Time past a key's retirement is reached with a clock handed to the instance (the retire
time is the access token lifetime plus a minute), never by sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import jwt
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from edge.oauth.errors import InvalidToken
from edge.oauth.revocation import STREAM_MAXLEN, RevokedTokens
from edge.oauth.signing import ACTIVATION_DELAY, LEEWAY, RETIRE_MARGIN, SigningKeys, StoredKey
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from tests.helpers import RedisServer

ISSUER = "https://auth.example.test"
LIFETIME = 10  # the access token lifetime of these tests


class Clock:
    """Wall time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


Clients = Callable[[], aioredis.Redis]


@pytest.fixture
async def clients(redis_db: RedisServer) -> AsyncIterator[Clients]:
    """``clients()``: a new client of the test's Redis (one per node); all closed after."""
    made: list[aioredis.Redis] = []

    def make() -> aioredis.Redis:
        client = redis_client(RedisTarget(redis_db.url))
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
async def background() -> AsyncIterator[Callable[[Coroutine[Any, Any, None]], None]]:
    """``background(node.run())``: run a loop for the test; cancelled (and checked not to
    have crashed, and to end within 3 s of the cancel) after it."""
    tasks: list[asyncio.Task[None]] = []

    def start(job: Coroutine[Any, Any, None]) -> None:
        tasks.append(asyncio.create_task(job))

    yield start
    for task in tasks:
        assert not task.done(), task  # a follower never ends on its own
        task.cancel()
    # a service is cancelled when the worker stops: it must end promptly
    async with asyncio.timeout(3):
        await asyncio.gather(*tasks, return_exceptions=True)


def node(client: aioredis.Redis, clock: Callable[[], float] = time.time, **kw: Any) -> SigningKeys:
    return SigningKeys(client, issuer=ISSUER, env_key_b64=None, access_token_lifetime=LIFETIME,
                       clock=clock, **kw)  # fmt: skip


def claims(*, jti: str = "jti-1", lifetime: int = LIFETIME) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "sub": "github:1", "aud": ISSUER, "client_id": "c", "iat": now,
            "nbf": now, "exp": now + lifetime, "jti": jti}  # fmt: skip


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float) -> float:
    """Seconds until ``check()`` holds; fails after ``within`` seconds."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.01)


def stored(rdb: redis.Redis) -> dict[str, StoredKey]:
    raw: dict[bytes, bytes] = rdb.hgetall(keys.OAUTH_KEYS)  # type: ignore[assignment]
    return {k.decode(): msgspec.json.decode(v, type=StoredKey) for k, v in raw.items()}


# ------------------------------------------------------------------ signing keys
async def test_nodes_starting_together_share_one_generated_key(
    clients: Clients, rdb: redis.Redis
) -> None:
    nodes = [node(clients()) for _ in range(8)]
    await asyncio.gather(*(n.load() for n in nodes))
    kids = {n.active_kid for n in nodes}
    assert len(kids) == 1 and None not in kids
    (doc,) = stored(rdb).values()
    assert doc.kid in kids and doc.retire_at is None
    assert "PRIVATE KEY" in doc.private_pem
    assert not rdb.exists(keys.OAUTH_KEYS_LEASE)  # released
    # each signs what the others verify
    for signer in nodes:
        token = signer.sign(claims())
        for verifier in nodes:
            assert verifier.verify(token)["jti"] == "jti-1"
    # a node started later reads that key; nothing is generated or written
    late = node(clients())
    await late.load()
    assert late.active_kid in kids
    assert len(stored(rdb)) == 1


async def test_a_node_waits_for_the_key_of_the_lease_holder(
    clients: Clients, rdb: redis.Redis
) -> None:
    """Another node holds the lease (generating): this one writes nothing and ends with
    the key the holder writes."""
    rdb.set(keys.OAUTH_KEYS_LEASE, "someone", px=5000)
    waiting = asyncio.create_task(node(clients()).load())
    await asyncio.sleep(0.3)
    assert not waiting.done() and not rdb.exists(keys.OAUTH_KEYS)
    holder = node(clients())
    rdb.delete(keys.OAUTH_KEYS_LEASE)  # the holder's own lease, as it were
    await holder.load()
    await asyncio.wait_for(waiting, 5)
    assert len(stored(rdb)) == 1


async def test_rotation_keeps_old_tokens_until_retired(
    clients: Clients, rdb: redis.Redis, background: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    clock = Clock()
    a, b = node(clients(), clock), node(clients(), clock, refresh_interval=0.1)
    await a.load()
    await b.load()
    background(b.run())
    old_kid = a.active_kid
    old_token = a.sign(claims(jti="old", lifetime=3600))

    new_kid = await a.rotate()
    assert new_kid != old_kid and a.active_kid == new_kid
    # for ACTIVATION_DELAY the previous key still signs (another node may not know the
    # new one yet), then the new one
    assert jwt.get_unverified_header(a.sign(claims()))["kid"] == old_kid
    clock.offset = ACTIVATION_DELAY + 1
    assert jwt.get_unverified_header(a.sign(claims()))["kid"] == new_kid
    clock.offset = 0
    docs = stored(rdb)
    assert docs[new_kid].retire_at is None
    retire_at = docs[str(old_kid)].retire_at
    assert retire_at is not None
    assert abs(retire_at - (time.time() + LIFETIME + RETIRE_MARGIN)) <= 2
    assert RETIRE_MARGIN > LEEWAY

    # the other node signs with the new key within its refresh interval
    await eventually(lambda: b.active_kid == new_kid, within=3)
    for n in (a, b):
        assert n.verify(old_token)["jti"] == "old"
        assert [k["kid"] for k in n.jwks()["keys"]] == [new_kid, old_kid]
        assert n.health()["published"] == 2

    # one second before the retire time: still good; at it: refused everywhere
    clock.offset = retire_at - time.time() - 1
    for n in (a, b):
        assert n.verify(old_token)["jti"] == "old"
    clock.offset = retire_at - time.time()
    for n in (a, b):
        with pytest.raises(InvalidToken, match="kid"):
            n.verify(old_token)
        assert [k["kid"] for k in n.jwks()["keys"]] == [new_kid]
    # ... and dropped from the hash by the next refresh
    await eventually(lambda: set(stored(rdb)) == {new_kid}, within=3)
    assert b.verify(b.sign(claims(lifetime=3600)))["jti"] == "jti-1"
    assert b.health()["error"] is None


async def test_rotations_on_two_nodes_leave_one_active_key(
    clients: Clients, rdb: redis.Redis
) -> None:
    a, b = node(clients()), node(clients())
    await a.load()
    await b.load()
    first = a.active_kid
    kids = await asyncio.gather(a.rotate(), b.rotate())
    await a.refresh()
    await b.refresh()
    docs = stored(rdb)
    assert set(docs) == {first, *kids}
    active = [d.kid for d in docs.values() if d.retire_at is None]
    assert len(active) == 1 and a.active_kid == b.active_kid == active[0]


async def test_a_rotation_drops_keys_already_retired(clients: Clients, rdb: redis.Redis) -> None:
    clock = Clock()
    a = node(clients(), clock)
    await a.load()
    first = a.active_kid
    second = await a.rotate()
    clock.offset = LIFETIME + RETIRE_MARGIN + 1
    third = await a.rotate()
    assert set(stored(rdb)) == {second, third} and first not in stored(rdb)


async def test_unchanged_keys_are_not_parsed_again(clients: Clients, rdb: redis.Redis) -> None:
    """A refresh that finds the hash as it was keeps the very key objects in memory."""
    a = node(clients())
    await a.load()
    before = a._set.active
    await a.refresh()
    assert a._set.active is before
    await a.rotate()
    kept = a._set.keys[str(before.kid if before else "")]
    assert before is not None and kept.private is before.private  # only retire_at changed


async def test_the_environment_key_writes_nothing_to_redis(
    clients: Clients, rdb: redis.Redis
) -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    env = SigningKeys(clients(), issuer=ISSUER, env_key_b64=base64.b64encode(pem).decode(),
                      access_token_lifetime=LIFETIME)  # fmt: skip
    await env.load()
    await env.refresh()
    assert env.verify(env.sign(claims()))["jti"] == "jti-1"
    assert rdb.keys("*") == []


async def test_a_damaged_document_is_reported_and_skipped(
    clients: Clients, rdb: redis.Redis
) -> None:
    a = node(clients())
    await a.load()
    rdb.hset(keys.OAUTH_KEYS, "broken", b'{"kid": "broken", "extra": 1}')
    rdb.hset(keys.OAUTH_KEYS, "bad-pem", msgspec.json.encode(
        StoredKey(kid="bad-pem", private_pem="-----BEGIN PRIVATE KEY-----\nAA==\n", created_at=1)
    ))  # fmt: skip
    await a.refresh()
    rejected = a.health()["rejected"]
    assert set(rejected) == {"broken", "bad-pem"}
    assert a.health()["published"] == 1
    assert a.verify(a.sign(claims()))["jti"] == "jti-1"
    late = node(clients())
    await late.load()  # the damaged ones do not stop a node from starting
    assert late.active_kid == a.active_kid


async def test_an_emptied_hash_gets_the_keys_back(clients: Clients, rdb: redis.Redis) -> None:
    """A Redis that lost its data: the nodes keep their key and write it back, so a node
    started afterwards signs with the same one instead of generating another."""
    a = node(clients())
    await a.load()
    rdb.flushall()
    await a.refresh()
    assert set(stored(rdb)) == {a.active_kid}
    late = node(clients())
    await late.load()
    assert late.active_kid == a.active_kid


async def test_refresh_errors_are_reported_and_the_keys_keep_serving(
    clients: Clients,
    redis_db: RedisServer,
    background: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    a = node(clients(), refresh_interval=0.05)
    await a.load()
    background(a.run())
    redis_db.stop()
    await eventually(lambda: a.health()["error"] is not None, within=5)
    assert a.verify(a.sign(claims()))["jti"] == "jti-1"
    redis_db.start()
    await eventually(lambda: a.health()["error"] is None, within=10)


# ------------------------------------------------------------------ revocations
async def test_a_revocation_reaches_another_node_within_a_second(
    clients: Clients, rdb: redis.Redis, background: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    here, there = RevokedTokens(clients()), RevokedTokens(clients())
    background(here.run())
    background(there.run())
    await eventually(lambda: here.connected and there.connected, within=5)
    exp = int(time.time()) + 600
    for i in range(5):
        started = time.monotonic()
        await here.revoke(f"jti-{i}", exp)
        assert here.is_revoked(f"jti-{i}")  # at once on the revoking node
        await eventually(functools.partial(there.is_revoked, f"jti-{i}"), within=1.0)
        assert time.monotonic() - started < 1.0
    assert not there.is_revoked("jti-other")
    assert rdb.zscore(keys.OAUTH_REVOKED, "jti-0") == exp
    assert rdb.xlen(keys.OAUTH_REVOCATIONS) == 5


async def test_a_starting_node_reads_the_revocations_made_before(
    clients: Clients, background: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    now = int(time.time())
    await RevokedTokens(clients()).revoke("early", now + 600)
    await RevokedTokens(clients()).revoke("long-expired", now - LEEWAY - 10)
    late = RevokedTokens(clients())
    background(late.run())
    await eventually(lambda: late.connected, within=5)
    assert late.is_revoked("early") and not late.is_revoked("long-expired")


async def test_revocations_lost_from_the_stream_are_found_on_reconnect(
    clients: Clients,
    redis_db: RedisServer,
    background: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    """The follower is cut off; meanwhile the revocation reaches the sorted set only (its
    stream entry trimmed or lost): the reload on reconnect finds it."""
    follower = RevokedTokens(clients())
    background(follower.run())
    await eventually(lambda: follower.connected, within=5)
    redis_db.stop()
    await eventually(lambda: not follower.connected, within=5)
    assert follower.health()["error"]
    redis_db.start()
    direct = redis_db.client()
    direct.zadd(keys.OAUTH_REVOKED, {"while-away": int(time.time()) + 600})
    assert not direct.exists(keys.OAUTH_REVOCATIONS)
    # the backoff is at most 5 s
    await eventually(lambda: follower.is_revoked("while-away"), within=8)
    assert follower.connected and follower.health()["error"] is None


async def test_a_periodic_reload_finds_revocations_missing_from_the_stream(
    clients: Clients, rdb: redis.Redis, background: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    follower = RevokedTokens(clients(), resync_interval=0.3)
    background(follower.run())
    await eventually(lambda: follower.connected, within=5)
    rdb.zadd(keys.OAUTH_REVOKED, {"trimmed": int(time.time()) + 600})
    await eventually(lambda: follower.is_revoked("trimmed"), within=3)


async def test_expired_revocations_are_pruned(
    clients: Clients, rdb: redis.Redis, background: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    clock = Clock()
    follower = RevokedTokens(clients(), prune_interval=0.1, clock=clock)
    background(follower.run())
    await eventually(lambda: follower.connected, within=5)
    now = int(time.time())
    await follower.revoke("short", now + 5)
    await follower.revoke("long", now + 3600)
    clock.offset = 5 + LEEWAY - 1  # within the leeway a token still verifies: keep it
    await asyncio.sleep(0.3)
    assert follower.is_revoked("short")
    clock.offset = 5 + LEEWAY + 1
    await eventually(lambda: not follower.is_revoked("short"), within=3)
    assert follower.is_revoked("long")
    await eventually(lambda: rdb.zrange(keys.OAUTH_REVOKED, 0, -1) == [b"long"], within=3)


async def test_the_stream_is_capped_and_bad_entries_skipped(
    clients: Clients, rdb: redis.Redis, background: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    follower = RevokedTokens(clients())
    background(follower.run())
    await eventually(lambda: follower.connected, within=5)
    rdb.xadd(keys.OAUTH_REVOCATIONS, {"jti": "no-exp"})
    rdb.xadd(keys.OAUTH_REVOCATIONS, {"jti": "bad-exp", "exp": "soon"})
    writer = RevokedTokens(clients())
    exp = int(time.time()) + 600
    for start in range(0, STREAM_MAXLEN + 2000, 50):
        await asyncio.gather(*(writer.revoke(f"j{i}", exp) for i in range(start, start + 50)))
    total = STREAM_MAXLEN + 2000
    assert rdb.zcard(keys.OAUTH_REVOKED) == total
    # MAXLEN ~ trims whole macro nodes (100 entries by default): close to the cap
    assert STREAM_MAXLEN <= rdb.xlen(keys.OAUTH_REVOCATIONS) < STREAM_MAXLEN + 200
    await eventually(lambda: len(follower) == total, within=5)
    assert not follower.is_revoked("no-exp") and not follower.is_revoked("bad-exp")
    assert follower.connected
