"""The config watcher in-process against a real redis-server of its own.

Keys are written with an ordinary Redis client, as ``redis-cli SET`` would: the watcher
learns of them from keyspace notifications (it turns them on itself) and applies only
the changed keys. Redis is then stopped and started again: meanwhile the last snapshot
keeps serving and ``/health`` says degraded; back, the watcher resyncs the whole key space.
The loop's clock is moved by hand (``LoopClock``) past the reconnect backoff, so an outage
costs milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from edge.config.snapshot import Snapshot
from edge.config.watcher import BACKOFF_CAP, ConfigWatcher
from edge.health import Verdict
from edge.settings import RedisTarget
from edge.store import keys
from tests.component.harness import LoopClock
from tests.helpers import RedisServer


def proxy(hostname: str, port: int = 8000, **extra: Any) -> bytes:
    doc = {"hostname": hostname, "target_url": f"http://127.0.0.1:{port}", **extra}
    return json.dumps(doc).encode()


def port_of(snapshot: Snapshot, hostname: str) -> int | None:
    found = snapshot.exact.get(hostname)
    return None if found is None else int(found.target_url.rsplit(":", 1)[1])


async def until(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Wait (real time) for ``condition``, the loop running meanwhile."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s"
        await asyncio.sleep(0.002)


class Watched:
    """A redis-server, a watcher of it running in the test's loop, the snapshots it
    installed."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.watcher = ConfigWatcher(RedisTarget(server.url), resync_interval=30.0)
        self.installed: list[Snapshot] = []
        self.watcher.on_install.append(self.installed.append)
        self.task: asyncio.Task[None] | None = None

    @property
    def redis(self) -> redis.Redis:
        return self.server.client()

    @property
    def snapshot(self) -> Snapshot:
        return self.watcher.snapshot

    def report(self) -> tuple[Verdict, dict[str, Any]]:
        found = self.watcher.health_report()
        return found.verdict, dict(found.fields)

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.watcher.run())
        await asyncio.wait_for(self.watcher.synced.wait(), 5)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Watched]:
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    found = Watched(server)
    try:
        yield found
    finally:
        if found.task is not None:
            await found.stop()
        server.stop()


async def test_a_key_set_in_redis_is_served_and_a_deleted_one_forgotten(
    watched: Watched,
) -> None:
    watched.redis.set("proxy:early.test", proxy("early.test", 8001))
    await watched.start()
    assert port_of(watched.snapshot, "early.test") == 8001  # the first resync
    verdict, fields = watched.report()
    assert verdict is Verdict.OK
    assert fields["redis"]["connected"] and fields["redis"]["notifications"]
    watched.redis.set("proxy:app.test", proxy("app.test", 8002))
    await until(lambda: port_of(watched.snapshot, "app.test") == 8002)
    # only the key that changed was decoded again: the other keeps its very object
    assert watched.snapshot.exact["early.test"] is watched.installed[0].exact["early.test"]
    watched.redis.set("proxy:app.test", proxy("app.test", 8003))
    await until(lambda: port_of(watched.snapshot, "app.test") == 8003)
    watched.redis.delete("proxy:app.test")
    await until(lambda: "app.test" not in watched.snapshot.exact)
    # an expiry is a change too
    watched.redis.pexpire("proxy:early.test", 20)
    await until(lambda: watched.snapshot.proxy_count == 0)
    assert watched.installed[-1] is watched.snapshot


async def test_a_bad_value_is_rejected_while_the_last_good_one_serves(
    watched: Watched,
) -> None:
    await watched.start()
    good = proxy("app.test", 8002)
    watched.redis.set("proxy:app.test", good)
    await until(lambda: port_of(watched.snapshot, "app.test") == 8002)
    watched.redis.set("proxy:app.test", b'{"hostname": "app.test", "target_url": 8}')
    await until(lambda: "proxy:app.test" in watched.snapshot.rejected)
    assert port_of(watched.snapshot, "app.test") == 8002
    verdict, fields = watched.report()
    assert verdict is Verdict.DEGRADED
    assert "target_url" in fields["rejected"]["proxy:app.test"]
    assert fields["last_good"] == ["proxy:app.test"]
    # shared with the other workers, who may never have seen it
    assert watched.redis.hget(keys.CONFIG_LAST_GOOD, "proxy:app.test") == good
    # a key written with another type is refused likewise
    watched.redis.delete("proxy:other.test")
    watched.redis.hset("proxy:other.test", "hostname", "other.test")
    await until(lambda: "proxy:other.test" in watched.snapshot.rejected)
    assert "expected a string" in watched.snapshot.rejected["proxy:other.test"]
    # fixed: served, nothing reported
    watched.redis.delete("proxy:other.test")
    watched.redis.set("proxy:app.test", proxy("app.test", 8004))
    await until(lambda: port_of(watched.snapshot, "app.test") == 8004)
    await until(lambda: not watched.snapshot.rejected)
    assert watched.report()[0] is Verdict.OK
    assert watched.redis.hget(keys.CONFIG_LAST_GOOD, "proxy:app.test") is None


async def reconnect(watched: Watched, clock: LoopClock) -> None:
    """Move the clock past the watcher's backoff until it is connected again."""
    deadline = time.monotonic() + 5.0
    while not watched.watcher.connected:
        assert time.monotonic() < deadline, watched.watcher.last_error
        await clock.advance(BACKOFF_CAP)
        await asyncio.sleep(0.01)  # (the reconnection's own round trips, in real time)


async def test_an_outage_keeps_the_last_snapshot_and_the_return_resyncs(
    watched: Watched, tmp_path: Path
) -> None:
    await watched.start()
    for host, port in (("app.test", 8001), ("gone.test", 8002)):
        watched.redis.set(f"proxy:{host}", proxy(host, port))
    await until(lambda: watched.snapshot.proxy_count == 2)
    served = watched.snapshot
    with LoopClock() as clock:
        watched.server.stop()
        await until(lambda: not watched.watcher.connected)
        verdict, fields = watched.report()
        assert verdict is Verdict.DEGRADED
        assert not fields["redis"]["connected"] and fields["redis"]["error"]
        assert watched.snapshot is served and fields["proxies"] == 2
        # more retries change nothing
        await clock.advance(BACKOFF_CAP)
        assert watched.snapshot is served
        # Redis comes back with other contents (a restore, a failover): written before
        # the watcher could connect, so only its resync can find them
        restore = RedisServer(tmp_path / "restore")
        restore.workdir.mkdir()
        restore.start()
        writer = restore.client()
        writer.set("proxy:app.test", proxy("app.test", 9001))
        writer.set("proxy:new.test", proxy("new.test", 9002))
        writer.save()
        restore.stop()
        shutil.copy(restore.workdir / "dump.rdb", watched.server.workdir / "dump.rdb")
        back = time.time()
        watched.server.start()
        await reconnect(watched, clock)
    snap = watched.snapshot
    assert (port_of(snap, "app.test"), port_of(snap, "new.test")) == (9001, 9002)
    assert "gone.test" not in snap.exact  # deleted while disconnected
    verdict, fields = watched.report()
    assert verdict is Verdict.OK and fields["redis"]["error"] is None
    assert fields["redis"]["last_sync"] >= back
    # and it listens again
    watched.redis.set("proxy:later.test", proxy("later.test"))
    await until(lambda: "later.test" in watched.snapshot.exact)


async def test_redis_back_empty_keeps_the_last_good_configuration(watched: Watched) -> None:
    await watched.start()
    watched.redis.set("proxy:app.test", proxy("app.test", 8001))
    await until(lambda: "app.test" in watched.snapshot.exact)
    served = watched.snapshot
    with LoopClock() as clock:
        watched.server.stop()
        await until(lambda: not watched.watcher.connected)
        watched.server.start()  # without its data: never wipes a working table
        await reconnect(watched, clock)
    assert watched.snapshot is served
    assert watched.report()[0] is Verdict.OK
    # an explicit delete still applies
    watched.redis.set("proxy:app.test", proxy("app.test", 8001))
    watched.redis.delete("proxy:app.test")
    await until(lambda: "app.test" not in watched.snapshot.exact)
