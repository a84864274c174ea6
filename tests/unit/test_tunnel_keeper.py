"""The tunnel keeper against a real redis-server: revocations close live tunnels (4010),
heartbeats keep their slots, a Redis outage keeps them running.

The people records are written by the edge's own store (:class:`PeopleStore`); the live
tunnels are a small stand-in for the registry's (an object with a ticket and ``close``,
the whole interface the keeper uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from edge.api.people.store import PatRecord, PeopleStore, iso_utc, new_id
from edge.api.tokens.store import now_iso
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import RedisHandle
from edge.tunnels import sessions
from edge.tunnels.keeper import REVOKED, UNCHECKED, SessionKeeper
from edge.tunnels.tickets import TargetType, Ticket, new_session_id
from tests.helpers import RedisServer, free_port

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


@dataclass
class FakeLive:
    """A live tunnel as the registry holds it: its ticket, and the closes it was asked."""

    ticket: Ticket
    closes: list[tuple[int, str]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self, code: int, reason: str = "") -> None:
        self.closes.append((code, reason))
        self.closed.set()


@dataclass
class People:
    store: PeopleStore
    pid: str
    uid: str
    tid: str

    def ticket(self, target_type: TargetType = "resource", tid: str | None = None) -> Ticket:
        return Ticket(
            target_type=target_type,
            target_id="res_1" if target_type == "resource" else "db_1",
            port=5432,
            project_id=self.pid,
            user_id=self.uid,
            pat_id=tid or self.tid,
            session_id=new_session_id(),
            issued_at=time.time(),
        )

    async def pat(self, expires_at: str | None = None) -> str:
        record = PatRecord(
            id=new_id("t"),
            user_id=self.uid,
            project_id=self.pid,
            name="laptop",
            token_hash=HASH,
            token_prefix="abcdefgh",
            expires_at=expires_at,
            created_at=now_iso(),
        )
        await self.store.create_pat(record)
        return record.id


@pytest.fixture
async def handle(redis_db: RedisServer) -> AsyncIterator[RedisHandle]:
    handle = RedisHandle(RedisTarget(redis_db.url))
    yield handle
    await handle.close()


@pytest.fixture
async def people(handle: RedisHandle) -> People:
    store = PeopleStore(handle)
    owner = await store.create_user("Owner", "owner@example.com")
    user = await store.create_user("Dev", "dev@example.com")
    project = await store.create_project("shop")
    await store.put_member(project.id, owner.id, "owner", True)
    await store.put_member(project.id, user.id, "modifier", True)
    found = People(store, project.id, user.id, "")
    found.tid = await found.pat()
    return found


def keeper_of(handle: RedisHandle, tunnels: list[FakeLive], **options: float) -> SessionKeeper:
    return SessionKeeper(handle.client, lambda: tunnels, **options)


async def test_nothing_closed_while_access_stands(handle: RedisHandle, people: People) -> None:
    tunnels = [FakeLive(people.ticket("resource")), FakeLive(people.ticket("database"))]
    keeper = keeper_of(handle, tunnels)
    for _ in range(3):
        await keeper.sweep()
    assert [t.closes for t in tunnels] == [[], []]
    assert keeper.health()["tunnels"] == 2
    assert keeper.health()["revoked"] == 0


async def test_a_revoked_pat_closes_its_tunnels_only(handle: RedisHandle, people: People) -> None:
    other_pat = await people.pat()
    doomed = [FakeLive(people.ticket("resource")), FakeLive(people.ticket("database"))]
    spared = FakeLive(people.ticket("database", tid=other_pat))
    tunnels = [*doomed, spared]
    keeper = keeper_of(handle, tunnels)
    await keeper.sweep()
    await people.store.revoke_pat(people.tid)
    await keeper.sweep()
    assert [t.closes for t in doomed] == [[(REVOKED, "access revoked")]] * 2
    assert spared.closes == []
    # closed once: the registry drops them soon, the keeper does not close them again
    await keeper.sweep()
    assert [len(t.closes) for t in doomed] == [1, 1]
    assert keeper.health()["revoked"] == 2


async def test_removed_member_closes(handle: RedisHandle, people: People) -> None:
    tunnel = FakeLive(people.ticket("database"))
    keeper = keeper_of(handle, [tunnel])
    await keeper.sweep()
    await people.store.delete_member(people.pid, people.uid)
    await keeper.sweep()
    assert tunnel.closes == [(REVOKED, "access revoked")]


@pytest.mark.parametrize(
    ("role", "accepted", "target", "closed"),
    [
        ("viewer", True, "resource", True),  # resources.port-forward: modifier and up
        ("viewer", True, "database", True),  # databases.show-secrets: modifier and up
        ("maintainer", True, "database", False),
        ("modifier", False, "resource", True),  # back to an invitation: grants nothing
    ],
)
async def test_membership_change(
    handle: RedisHandle,
    people: People,
    role: str,
    accepted: bool,
    target: TargetType,
    closed: bool,
) -> None:
    tunnel = FakeLive(people.ticket(target))
    keeper = keeper_of(handle, [tunnel])
    await people.store.put_member(people.pid, people.uid, role, accepted)
    await keeper.sweep()
    assert tunnel.closes == ([(REVOKED, "access revoked")] if closed else [])


async def test_expired_or_missing_pat_or_corrupt_member_closes(
    handle: RedisHandle, people: People
) -> None:
    soon = iso_utc(datetime.now(UTC) + timedelta(seconds=1))
    expiring = FakeLive(people.ticket(tid=await people.pat(expires_at=soon)))
    missing = FakeLive(people.ticket(tid=new_id("t")))
    kept = FakeLive(people.ticket())
    keeper = keeper_of(handle, [expiring, missing, kept])
    await keeper.sweep()
    assert (expiring.closes, missing.closes, kept.closes) == ([], [(REVOKED, "access revoked")], [])
    await asyncio.sleep(1.1)
    await keeper.sweep()
    assert expiring.closes == [(REVOKED, "access revoked")]
    assert kept.closes == []
    await handle.client.set(keys.project_member(people.pid, people.uid), b"{not json")
    await keeper.sweep()
    assert kept.closes == [(REVOKED, "access revoked")]


async def test_a_pat_of_another_user_or_project_does_not_hold(
    handle: RedisHandle, people: People
) -> None:
    # a ticket naming a PAT that is not its user's (never issued so; fail closed)
    other = await people.store.create_user("Eve", "eve@example.com")
    await people.store.put_member(people.pid, other.id, "owner", True)
    forged = FakeLive(
        Ticket(**{**_fields(people.ticket()), "user_id": other.id})  # type: ignore[arg-type]
    )
    keeper = keeper_of(handle, [forged])
    await keeper.sweep()
    assert forged.closes == [(REVOKED, "access revoked")]


def _fields(ticket: Ticket) -> dict[str, object]:
    return {name: getattr(ticket, name) for name in ticket.__struct_fields__}


async def test_heartbeats_keep_the_slots(handle: RedisHandle, people: People) -> None:
    client = handle.client
    tickets = [people.ticket() for _ in range(2)]
    for t in tickets:  # reserved at purchase, for a short while here
        assert await sessions.reserve(client, t.project_id, t.session_id, 5, 1.0)
    tunnels = [FakeLive(t) for t in tickets]
    keeper = keeper_of(handle, tunnels, heartbeat_every=3600)
    await keeper.sweep()  # new tunnels: heartbeated at once (SLOT_SECONDS ahead)
    assert keeper.heartbeats == 1
    key = keys.port_forward_sessions(people.pid)
    now = float((await client.time())[0])
    for t in tickets:
        score = await client.zscore(key, t.session_id)
        assert score is not None and score > now + sessions.SLOT_SECONDS - 5
    await keeper.sweep()  # nothing new, the next round not due
    assert keeper.heartbeats == 1
    third = FakeLive(people.ticket())
    assert await sessions.reserve(client, people.pid, third.ticket.session_id, 5, 1.0)
    tunnels.append(third)
    await keeper.sweep()
    assert keeper.heartbeats == 2
    await asyncio.sleep(1.2)  # past the reservations: the heartbeated slots stand
    assert await sessions.count(client, people.pid) == 3


async def test_due_heartbeats_cover_every_tunnel(handle: RedisHandle, people: People) -> None:
    client = handle.client
    tunnels = [FakeLive(people.ticket()) for _ in range(3)]
    for t in tunnels:
        assert await sessions.reserve(client, people.pid, t.ticket.session_id, 5, 60)
    keeper = keeper_of(handle, tunnels, heartbeat_every=0.2)
    await keeper.sweep()
    key = keys.port_forward_sessions(people.pid)
    first = [await client.zscore(key, t.ticket.session_id) for t in tunnels]
    await asyncio.sleep(0.3)
    await keeper.sweep()
    again = [await client.zscore(key, t.ticket.session_id) for t in tunnels]
    assert all(b > a for a, b in zip(first, again, strict=True))  # type: ignore[operator]
    assert keeper.heartbeats == 2


async def test_released_gives_the_slot_back(handle: RedisHandle, people: People) -> None:
    client = handle.client
    ticket = people.ticket()
    assert await sessions.reserve(client, people.pid, ticket.session_id, 5, 60)
    keeper = keeper_of(handle, [])
    keeper.released(ticket)  # a plain call, from a callback: never blocks
    await keeper.close()
    assert await sessions.count(client, people.pid) == 0
    assert keeper.health()["releases_pending"] == 0


async def test_run_closes_within_two_seconds_of_a_revocation(
    handle: RedisHandle, people: People
) -> None:
    tunnel = FakeLive(people.ticket())
    keeper = keeper_of(handle, [tunnel])  # the real interval
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(1.2)
        assert tunnel.closes == []
        await people.store.revoke_pat(people.tid)
        revoked_at = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tunnel.closed.wait(), 3)
        assert tunnel.closes == [(REVOKED, "access revoked")]
        assert time.monotonic() - revoked_at < 2.0
    finally:
        keeper.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unreachable_redis_keeps_tunnels_and_is_logged_once(
    people: People, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.tunnels")
    nowhere = RedisHandle(RedisTarget(f"redis://127.0.0.1:{free_port()}/0"))
    tunnel = FakeLive(people.ticket())
    keeper = SessionKeeper(nowhere.client, lambda: [tunnel], interval=0.05, timeout=0.5)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.6)
        assert tunnel.closes == []
        assert keeper.health()["redis"] == "unavailable"
        warnings = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        keeper.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nowhere.close()


async def test_stalled_redis_keeps_tunnels_and_its_return_is_logged(
    redis_db: RedisServer, handle: RedisHandle, people: People, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.tunnels")
    tunnel = FakeLive(people.ticket())
    keeper = SessionKeeper(handle.client, lambda: [tunnel], interval=0.05, timeout=0.2)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.2)
        assert keeper.health()["redis"] == "ok"
        redis_db.client().execute_command("CLIENT", "PAUSE", "1000", "ALL")  # every client
        await asyncio.sleep(0.6)
        assert keeper.health()["redis"] == "unavailable"
        await asyncio.sleep(1.0)
        assert keeper.health()["redis"] == "ok"
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("tunnel keeper: redis unavailable; live tunnels kept for now") == 1
        assert messages.count("tunnel keeper: redis reachable again") == 1
        assert tunnel.closes == []
    finally:
        keeper.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_access_unchecked_too_long_closes_tunnels_with_1013(
    redis_db: RedisServer, handle: RedisHandle, people: People, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: once Redis could not be read for the life of a slot, the slots have
    run out and revocations cannot be seen; the tunnels close (1013), once each. A shorter
    outage keeps them (the test above)."""
    caplog.set_level(logging.INFO, logger="edge.tunnels")
    tunnel = FakeLive(people.ticket())
    keeper = SessionKeeper(
        handle.client, lambda: [tunnel], interval=0.05, timeout=0.2, unchecked_limit=0.8
    )
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.2)
        redis_db.client().execute_command("CLIENT", "PAUSE", "1500", "ALL")
        await asyncio.sleep(0.5)
        assert tunnel.closes == []  # not yet: a short outage keeps tunnels
        await asyncio.sleep(0.8)
        assert [code for code, _ in tunnel.closes] == [UNCHECKED]
        assert keeper.health()["closed_unchecked"] == 1
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("tunnel keeper: access unchecked too long; live tunnels closed") == 1
    finally:
        keeper.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
