"""The shared default certificate's generation lock, against a real redis-server.

A worker whose generation outlived the lock's lease (a loaded machine, a 4096-bit key)
must not end the lease of the worker that took the lock after it expired.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from edge.settings import RedisTarget, Settings
from edge.store.client import redis_client
from edge.tls import store
from edge.tls.store import DEFAULT_CERT_KEY, TlsStore
from tests.helpers import RedisServer

LOCK = "edge:tls:default:lock"


def load_default(redis_db: RedisServer) -> TlsStore:
    async def main() -> TlsStore:
        tls = TlsStore(Settings())
        client = redis_client(RedisTarget(redis_db.url))
        try:
            await tls.load_default(client)
        finally:
            await client.aclose()
        return tls

    return asyncio.run(main())


def test_the_default_certificate_is_generated_once_and_the_lock_released(
    redis_db: RedisServer,
) -> None:
    tls = load_default(redis_db)
    r = redis_db.client()
    stored = r.get(DEFAULT_CERT_KEY)
    assert stored is not None and json.loads(stored)["cn"] == "localhost"
    assert tls.default is not None and tls.default_info["cn"] == "localhost"
    assert r.get(LOCK) is None  # released
    again = load_default(redis_db)  # a second worker reuses it
    assert again.default_info["serial"] == tls.default_info["serial"]


def test_a_generation_that_outlived_its_lock_leaves_the_next_holders_lock(
    redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = redis_db.client()
    generate = store.generate_self_signed

    def slow_generate(cn: str, days: int, size: int) -> tuple[str, str]:
        # while this worker generates, its lease runs out and another worker takes the lock
        assert r.get(LOCK) is not None
        r.set(LOCK, "another worker", px=30_000)
        return generate(cn, days, size)

    monkeypatch.setattr(store, "generate_self_signed", slow_generate)
    tls = load_default(redis_db)
    assert tls.default is not None
    assert r.get(LOCK) == b"another worker"  # its lease is intact
