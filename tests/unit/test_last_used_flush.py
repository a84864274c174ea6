"""The ``last_used_at`` flush against a real redis-server, with a revocation racing it.

The race is made to happen every time: the flusher reads ``pat:{id}``, and before it
writes, another client (standing for another node revoking the token) rewrites the record.
The flush must then start again from the revoked record, never write back the one it read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import msgspec
import pytest

from edge.api.people import auth as people_auth
from edge.api.people.auth import LastUsedFlusher
from edge.api.people.store import PatRecord, decode_pat, last_used_key, new_id, pat_key
from edge.api.redis_store import RedisHandle
from edge.settings import RedisTarget
from tests.helpers import RedisServer

USED = "2026-01-02T03:04:05Z"
REVOKED = "2026-01-02T03:04:06Z"


def record(tid: str, **fields: str | None) -> bytes:
    return msgspec.json.encode(
        PatRecord(
            id=tid,
            user_id=new_id("u"),
            project_id=new_id("p"),
            name="laptop",
            token_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            token_prefix="abcdefgh",
            created_at="2026-01-01T00:00:00Z",
            **fields,
        )
    )


@pytest.fixture
def stored(redis_db: RedisServer) -> Iterator[str]:
    tid = new_id("t")
    r = redis_db.client()
    r.set(pat_key(tid), record(tid))
    r.set(last_used_key(tid), USED, ex=300)
    yield tid


def flush_once(redis_db: RedisServer) -> int | None:
    async def run() -> int | None:
        handle = RedisHandle(RedisTarget(redis_db.url))
        try:
            return await LastUsedFlusher(handle, interval=3600).flush()
        finally:
            await handle.close()

    return asyncio.run(run())


def race_each_read(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[str, int], None]
) -> list[PatRecord | None]:
    """After the flusher's n-th read of a record, ``meanwhile(tid, n)`` writes to it (another
    node, before the flusher writes). Returns what each read saw."""
    reads: list[PatRecord | None] = []

    def read_then_race(tid: str, raw: bytes | str | None) -> PatRecord | None:
        reads.append(decode_pat(tid, raw))
        meanwhile(tid, len(reads))
        return reads[-1]

    monkeypatch.setattr(people_auth, "decode_pat", read_then_race)
    return reads


def test_a_revocation_between_read_and_write_is_kept(
    stored: str, redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = redis_db.client()

    def revoke(tid: str, n: int) -> None:
        if n == 1:  # the flusher has read; another node revokes before it writes
            r.set(pat_key(tid), record(tid, revoked_at=REVOKED))

    reads = race_each_read(monkeypatch, revoke)
    assert flush_once(redis_db) == 1
    after = decode_pat(stored, r.get(pat_key(stored)))
    assert after is not None
    assert after.revoked_at == REVOKED  # the revocation survived the flush that raced it
    assert after.last_used_at == USED  # and the flush still landed, on the revoked record
    assert [x.revoked_at if x else "gone" for x in reads] == [None, REVOKED]
    assert r.get("lock:pat_last_used") is None  # released


def test_a_record_deleted_meanwhile_is_not_recreated(
    stored: str, redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = redis_db.client()

    def delete(tid: str, n: int) -> None:
        if n == 1:
            r.delete(pat_key(tid))

    reads = race_each_read(monkeypatch, delete)
    assert flush_once(redis_db) == 0
    assert r.get(pat_key(stored)) is None
    assert len(reads) == 2


def test_a_flush_that_keeps_losing_gives_up_and_writes_nothing(
    stored: str, redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = redis_db.client()

    def rewrite(tid: str, n: int) -> None:
        r.set(pat_key(tid), record(tid, revoked_at=f"2026-01-02T03:04:{n:02d}Z"))

    reads = race_each_read(monkeypatch, rewrite)
    assert flush_once(redis_db) == 0
    assert len(reads) == 4  # a bounded number of attempts; the next flush tries again
    after = decode_pat(stored, r.get(pat_key(stored)))
    assert after is not None and after.last_used_at is None
    assert after.revoked_at == "2026-01-02T03:04:04Z"
    monkeypatch.undo()
    assert flush_once(redis_db) == 1  # the next flush, unraced, lands
    after = decode_pat(stored, r.get(pat_key(stored)))
    assert after is not None and after.last_used_at == USED
    assert after.revoked_at == "2026-01-02T03:04:04Z"


def test_a_flush_while_another_node_holds_the_lock_does_nothing(
    stored: str, redis_db: RedisServer
) -> None:
    r = redis_db.client()
    r.set("lock:pat_last_used", "another node", ex=10)
    assert flush_once(redis_db) is None
    assert r.get("lock:pat_last_used") == b"another node"  # its lock is left alone
    after = decode_pat(stored, r.get(pat_key(stored)))
    assert after is not None and after.last_used_at is None
