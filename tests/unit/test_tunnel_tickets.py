"""Tunnel tickets and the per-project session cap against a real redis-server.

Many clients here are many connections: Redis sees the commands of different clients
interleaved as it would those of different nodes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from edge.tunnels import sessions
from edge.tunnels.tickets import (
    TICKET_TTL,
    Ticket,
    issue,
    new_session_id,
    new_ticket,
    redeem,
    valid_ticket,
)
from tests.helpers import RedisServer, free_port

PROJECT = "p_AAAAAAAAAAAA"
Clients = Callable[[int], Awaitable[list[aioredis.Redis]]]


def a_ticket(**fields: object) -> Ticket:
    values: dict[str, object] = {
        "target_type": "database",
        "target_id": "db_1",
        "port": 5432,
        "project_id": PROJECT,
        "user_id": "u_BBBBBBBBBBBB",
        "pat_id": "t_CCCCCCCCCCCC",
        "session_id": new_session_id(),
        "issued_at": time.time(),
    }
    values.update(fields)
    return Ticket(**values)  # type: ignore[arg-type]


@pytest.fixture
async def clients(redis_db: RedisServer) -> AsyncIterator[Clients]:
    """``await clients(n)``: n clients of the test redis, each with its own connection."""
    opened: list[aioredis.Redis] = []

    async def make(n: int) -> list[aioredis.Redis]:
        made = [redis_client(RedisTarget(redis_db.url)) for _ in range(n)]
        opened.extend(made)
        await asyncio.gather(*(c.ping() for c in made))  # connected before the race
        return made

    yield make
    await asyncio.gather(*(c.aclose() for c in opened))


async def one(clients: Clients) -> aioredis.Redis:
    return (await clients(1))[0]


# ---------------------------------------------------------------------------- tickets


def test_ticket_text_is_64_alphanumerics_and_fresh() -> None:
    drawn = {new_ticket() for _ in range(1000)}
    assert len(drawn) == 1000
    for text in drawn:
        assert valid_ticket(text)
        assert len(text) == 64 and text.isascii() and text.isalnum()


@pytest.mark.parametrize(
    "text", ["", "a" * 63, "a" * 65, "a" * 63 + "-", "a" * 63 + "é", "a" * 63 + "\n"]
)
def test_malformed_ticket_text(text: str) -> None:
    assert not valid_ticket(text)


async def test_issue_stores_json_with_ttl_and_redeem_takes_it_once(clients: Clients) -> None:
    client = await one(clients)
    ticket = a_ticket()
    text = await issue(client, ticket)
    key = keys.port_forward_ticket(text)
    assert key == f"port_forward_ticket:{text}"
    assert TICKET_TTL - 2 <= await client.ttl(key) <= TICKET_TTL
    stored = json.loads(await client.get(key))
    assert stored == msgspec.to_builtins(ticket)
    assert await redeem(client, text) == ticket
    assert await client.exists(key) == 0
    assert await redeem(client, text) is None


async def test_redeem_of_unknown_or_malformed_ticket(clients: Clients) -> None:
    client = await one(clients)
    assert await redeem(client, new_ticket()) is None
    # a malformed text never reaches Redis: a client of a closed port does not fail
    nowhere = redis_client(RedisTarget(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        assert await redeem(nowhere, "x" * 63) is None
        assert await redeem(nowhere, "../" + "a" * 61) is None
        with pytest.raises((RedisError, OSError)):  # a well-formed one does, and fails
            await redeem(nowhere, new_ticket())
    finally:
        await nowhere.aclose()


async def test_undecodable_ticket_is_discarded(clients: Clients) -> None:
    client = await one(clients)
    text = new_ticket()
    key = keys.port_forward_ticket(text)
    await client.set(key, b'{"target_type": "database", "extra": 1}', ex=60)
    assert await redeem(client, text) is None
    assert await client.exists(key) == 0


async def test_expired_ticket_is_gone(clients: Clients) -> None:
    client = await one(clients)
    text = await issue(client, a_ticket(), ttl=1)
    await asyncio.sleep(1.3)
    assert await redeem(client, text) is None


async def test_one_ticket_redeemed_by_100_clients_at_once_opens_once(clients: Clients) -> None:
    many = await clients(100)
    for _ in range(5):
        ticket = a_ticket()
        text = await issue(many[0], ticket)
        results = await asyncio.gather(*(redeem(c, text) for c in many))
        assert [r for r in results if r is not None] == [ticket]
        assert results.count(None) == 99


# ---------------------------------------------------------------------------- the cap


async def test_reserve_up_to_the_cap_then_refuse(clients: Clients) -> None:
    client = await one(clients)
    taken = [await sessions.reserve(client, PROJECT, f"s{i}", 5, 60) for i in range(7)]
    assert taken == [True] * 5 + [False] * 2
    assert await sessions.count(client, PROJECT) == 5
    # another project has its own cap
    assert await sessions.reserve(client, "p_DDDDDDDDDDDD", "s0", 5, 60)
    # reserving a slot already held changes nothing
    assert await sessions.reserve(client, PROJECT, "s0", 5, 60)
    assert await sessions.count(client, PROJECT) == 5


async def test_concurrent_reserves_from_many_clients_never_exceed_the_cap(
    clients: Clients,
) -> None:
    many = await clients(40)
    for cap in (1, 5):
        project = f"p_cap{cap}"
        attempts = [
            sessions.reserve(many[i % len(many)], project, new_session_id(), cap, 60)
            for i in range(200)
        ]
        results = await asyncio.gather(*attempts)
        assert results.count(True) == cap
        assert await many[0].zcard(keys.port_forward_sessions(project)) == cap


async def test_run_out_slots_are_pruned(clients: Clients) -> None:
    client = await one(clients)
    for i in range(5):
        assert await sessions.reserve(client, PROJECT, f"short{i}", 5, 0.5)
    assert not await sessions.reserve(client, PROJECT, "late", 5, 60)
    await asyncio.sleep(0.7)
    assert await sessions.count(client, PROJECT) == 0
    assert await sessions.reserve(client, PROJECT, "late", 5, 60)
    members = await client.zrange(keys.port_forward_sessions(PROJECT), 0, -1)
    assert members == [b"late"]  # the run-out ones were dropped, not only skipped


async def test_release_frees_a_slot(clients: Clients) -> None:
    client = await one(clients)
    for i in range(5):
        assert await sessions.reserve(client, PROJECT, f"s{i}", 5, 60)
    await sessions.release(client, PROJECT, "s3")
    await sessions.release(client, PROJECT, "never-held")
    assert await sessions.count(client, PROJECT) == 4
    assert await sessions.reserve(client, PROJECT, "s5", 5, 60)
    assert not await sessions.reserve(client, PROJECT, "s6", 5, 60)


async def test_heartbeat_keeps_a_slot_and_never_brings_one_back(clients: Clients) -> None:
    client = await one(clients)
    other = "p_DDDDDDDDDDDD"
    assert await sessions.reserve(client, PROJECT, "kept", 5, 0.6)
    assert await sessions.reserve(client, PROJECT, "left", 5, 0.6)
    assert await sessions.reserve(client, other, "kept", 5, 0.6)
    assert await sessions.reserve(client, PROJECT, "released", 5, 60)
    await sessions.release(client, PROJECT, "released")
    for _ in range(4):  # 1.2 s: twice the reservation
        await asyncio.sleep(0.3)
        slots = [(PROJECT, "kept"), (other, "kept"), (PROJECT, "released")]
        assert await sessions.heartbeat(client, slots, seconds=1.0) == 1
    assert await sessions.count(client, PROJECT) == 1  # "left" ran out, "released" is gone
    assert await client.zscore(keys.port_forward_sessions(PROJECT), "released") is None
    assert await sessions.reserve(client, PROJECT, "next", 5, 60)  # prunes "left"
    members = await client.zrange(keys.port_forward_sessions(PROJECT), 0, -1)
    assert members == [b"kept", b"next"]
    assert await sessions.count(client, other) == 1
    assert await sessions.heartbeat(client, []) == 0


async def test_the_set_expires_after_its_last_slot(clients: Clients) -> None:
    client = await one(clients)
    key = keys.port_forward_sessions(PROJECT)
    assert await sessions.reserve(client, PROJECT, "a", 5, 30)
    assert 30_000 < await client.pttl(key) <= 31_500
    assert await sessions.reserve(client, PROJECT, "b", 5, 3)
    assert 30_000 < await client.pttl(key) <= 31_500  # the later slot decides
    assert await sessions.heartbeat(client, [(PROJECT, "a"), (PROJECT, "b")], seconds=2) == 0
    assert 2_000 < await client.pttl(key) <= 3_500  # a heartbeat may bring it nearer
    await sessions.release(client, PROJECT, "a")
    await sessions.release(client, PROJECT, "b")
    assert await client.exists(key) == 0
    assert await sessions.reserve(client, PROJECT, "c", 5, 0.3)
    await asyncio.sleep(1.6)
    assert await client.exists(key) == 0  # an idle project's set is gone on its own
