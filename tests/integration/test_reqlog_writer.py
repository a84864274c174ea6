"""The request-log writer against a real redis-server: keys, TTLs, trims, batches, drops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from edge.observe.accesslog import AccessRecord
from edge.observe.reqlog import (
    ReqLogEntry,
    RequestLogWriter,
    bucket_upper_ms,
    duration_bucket,
    entry_from_record,
    hour_of,
)
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from tests.helpers import RedisServer, free_port

HOUR = 3600


def stamp(unix: float) -> str:
    second, milli = divmod(int(unix * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"


def record(
    *,
    ip: str = "203.0.113.7",
    host: str = "app.example.com",
    path: str = "/users/42",
    status: int = 200,
    duration: float = 2.5,
    method: str = "GET",
    at: float | None = None,
    upstream: str = "http://127.0.0.1:3000",
    request_id: str = "rid",
) -> AccessRecord:
    return AccessRecord(
        stamp(time.time() if at is None else at), request_id, ip, method, host, path,
        status, 100, 2000, duration, upstream, "route-1",
    )  # fmt: skip


@pytest.fixture
async def aclient(redis_db: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(RedisTarget(redis_db.url))
    yield client
    await client.aclose()


def writer_for(client: aioredis.Redis, **options: Any) -> RequestLogWriter:
    return RequestLogWriter(client, node="node-a", worker=1, **options)


def members(rdb: redis.Redis, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in rdb.zrange(key, 0, -1, withscores=True)}


def everything(rdb: redis.Redis) -> bytes:
    """Every key, member, field and value in the database, as one blob to search."""
    parts: list[bytes] = []
    for key in rdb.scan_iter(count=1000):
        parts.append(key)
        kind = rdb.type(key)
        if kind == b"hash":
            for field, value in rdb.hgetall(key).items():
                parts += [field, value]
        elif kind == b"zset":
            parts += rdb.zrange(key, 0, -1)
        elif kind == b"stream":
            for _id, fields in rdb.xrange(key):
                for field, value in fields.items():
                    parts += [field, value]
        elif kind == b"string":
            parts.append(rdb.get(key) or b"")
    return b"\n".join(parts)


async def test_every_key_and_index_with_its_ttl(aclient: aioredis.Redis, rdb: redis.Redis) -> None:
    writer = writer_for(aclient, retention_hours=2, slow_ms=1000)
    now = time.time()
    writer.exchange_done(record(at=now))
    detailed = record(ip="198.51.100.9", path="/api/v1/tokens/t_8fK2mQ9xLp", status=503,
                      duration=1500.0, method="POST", at=now)  # fmt: skip
    detailed.client_port = 51000
    detailed.upstream_ms = 1499.0
    detailed.user = "alice"
    detailed.client_id = "c_client1"
    detailed.error = "upstream_timeout"
    writer.log(entry_from_record(detailed, "node-a", 1))
    await writer.flush()
    assert writer.health()["written"] == 2
    assert writer.health()["batches"] == 1
    assert writer.health()["command_errors"] == 0

    requests = sorted(k.decode() for k in rdb.scan_iter("req:*"))
    assert len(requests) == 2
    ok_key = next(k for k in requests if k.endswith(":203.0.113.7"))
    bad_key = next(k for k in requests if k.endswith(":198.51.100.9"))
    assert ok_key.startswith("req:") and ok_key.count(":") == 2
    for key in requests:
        assert 2 * HOUR - 5 <= rdb.ttl(key) <= 2 * HOUR
    bad = {f.decode(): v.decode() for f, v in rdb.hgetall(bad_key).items()}
    assert bad == {
        "time": stamp(now), "node": "node-a", "worker": "1", "request_id": "rid",
        "client_ip": "198.51.100.9", "client_port": "51000", "method": "POST",
        "host": "app.example.com", "path": "/api/v1/tokens/t_8fK2mQ9xLp", "status": "503",
        "bytes_in": "100", "bytes_out": "2000", "duration_ms": "1500.0",
        "upstream": "http://127.0.0.1:3000", "upstream_ms": "1499.0", "user": "alice",
        "client_id": "c_client1", "error": "upstream_timeout",
        "path_shape": "/api/v1/tokens/{id}",
    }  # fmt: skip

    score = int(now * 1000) / 1000
    expected = {
        keys.req_index_ip("203.0.113.7"): {ok_key},
        keys.req_index_ip("198.51.100.9"): {bad_key},
        keys.req_index_host("app.example.com"): {ok_key, bad_key},
        keys.req_index_user("alice"): {bad_key},
        keys.req_index_client("c_client1"): {bad_key},
        keys.req_index_status(200): {ok_key},
        keys.req_index_status(503): {bad_key},
        keys.REQ_INDEX_ERRORS: {bad_key},
        keys.REQ_INDEX_SLOW: {bad_key},
        keys.req_index_path("GET", "/users/{id}"): {ok_key},
        keys.req_index_path("POST", "/api/v1/tokens/{id}"): {bad_key},
        keys.REQ_INDEX_ALL: {ok_key, bad_key},
    }
    written = {k.decode() for k in rdb.scan_iter("idx:req:*")}
    assert written == set(expected)
    for index, wanted in expected.items():
        got = members(rdb, index)
        assert set(got) == wanted, index
        assert all(abs(s - score) < 0.01 for s in got.values()), index
        assert 2 * HOUR - 5 <= rdb.ttl(index) <= 2 * HOUR, index

    stream = rdb.xrange(keys.REQ_STREAM)
    assert [fields[b"key"].decode() for _id, fields in stream] == [ok_key, bad_key]
    assert stream[1][1][b"status"] == b"503"

    hour_start = int(now) // HOUR * HOUR
    hour = hour_of(now)
    until = hour_start + HOUR + 2 * HOUR
    assert rdb.get(keys.req_stats_requests(hour)) == b"2"
    assert rdb.get(keys.req_stats_errors(hour)) == b"1"
    unique = keys.req_stats_unique_ips("app.example.com", hour)
    assert rdb.pfcount(unique) == 2
    every_host = keys.req_stats_unique_ips("*", hour)
    assert rdb.pfcount(every_host) == 2
    durations = keys.req_stats_duration(hour)
    assert rdb.hgetall(durations) == {
        str(duration_bucket(2.5)).encode(): b"1",
        str(duration_bucket(1500.0)).encode(): b"1",
    }
    hourly = (keys.req_stats_requests(hour), keys.req_stats_errors(hour), unique, every_host)
    for counter in (*hourly, durations):
        assert rdb.expiretime(counter) == until, counter


def test_duration_buckets() -> None:
    assert duration_bucket(0) == 0 and duration_bucket(0.01) == 0
    for ms in (0.011, 0.5, 1.0, 2.5, 999.9, 1000.0, 1500.0, 3_600_000.0):
        i = duration_bucket(ms)
        assert bucket_upper_ms(i - 1) < ms <= bucket_upper_ms(i), ms
        assert bucket_upper_ms(i) <= ms * 2**0.25 + 1e-9, ms


async def test_events_indexed_apart_and_not_counted(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    writer = writer_for(aclient)
    now = time.time()
    writer.log(
        ReqLogEntry(
            time=stamp(now), node="node-a", worker=1, request_id="", client_ip="192.0.2.1",
            method="", host="", path="", status=0, bytes_in=517, bytes_out=7,
            duration_ms=3.0, client_port=40000, sni="app.example.com",
            error="tlsv1 alert unknown ca", event="tls_handshake_failed",
        )
    )  # fmt: skip
    await writer.flush()
    [key] = [k.decode() for k in rdb.scan_iter("req:*")]
    assert rdb.hget(key, "event") == b"tls_handshake_failed"
    assert {k.decode() for k in rdb.scan_iter("idx:req:*")} == {
        keys.REQ_INDEX_EVENTS,
        keys.req_index_ip("192.0.2.1"),
        keys.REQ_INDEX_ALL,
    }
    assert set(members(rdb, keys.REQ_INDEX_EVENTS)) == {key}
    assert rdb.get(keys.req_stats_requests(hour_of(now))) is None
    assert rdb.xlen(keys.REQ_STREAM) == 1


async def test_indexes_trimmed_by_score_and_stream_capped(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    now = time.time()
    index = keys.req_index_ip("203.0.113.7")
    rdb.zadd(index, {"req:old:203.0.113.7": now - HOUR - 60, "req:recent:203.0.113.7": now - 60})
    writer = writer_for(aclient, retention_hours=1, stream_maxlen=100, batch_size=1000)
    for n in range(1000):
        writer.exchange_done(record(at=now, request_id=f"r{n}"))
    await writer.flush()
    got = members(rdb, index)
    assert "req:old:203.0.113.7" not in got
    assert "req:recent:203.0.113.7" in got
    assert len(got) == 1001  # one key per request, though all came in one millisecond
    assert len(list(rdb.scan_iter("req:*", count=1000))) == 1000
    # MAXLEN ~ trims whole listpack nodes: about the cap, far from the 1000 written
    assert 100 <= rdb.xlen(keys.REQ_STREAM) < 300


async def test_same_ip_same_millisecond_two_writers(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    """Two workers (or nodes) logging one IP in one millisecond write two keys."""
    at = time.time()
    first, second = writer_for(aclient), writer_for(aclient)
    first.exchange_done(record(at=at, request_id="same"))
    second.exchange_done(record(at=at, request_id="same"))
    await first.flush()
    await second.flush()
    assert len(list(rdb.scan_iter("req:*"))) == 2
    assert rdb.get(keys.req_stats_requests(hour_of(at))) == b"2"


async def test_no_query_string_or_secret_anywhere(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    writer = writer_for(aclient)
    writer.exchange_done(
        record(path="/oauth/callback?code=SECRETCODE&state=SECRETSTATE",
               upstream="http://admin:SECRETPASS@127.0.0.1:3000/?api_key=SECRETKEY")
    )  # fmt: skip
    writer.exchange_done(record(path="/tunnel?ticket=SECRETTICKET#SECRETFRAG", status=401))
    writer.exchange_done(record(path="/x?access_token=SECRETTOKEN", method="GET"))
    await writer.flush()
    assert writer.written == 3
    blob = everything(rdb)
    assert b"/oauth/callback" in blob and b"/tunnel" in blob  # the paths are there
    assert b"SECRET" not in blob
    assert b"?" not in blob


async def test_a_batch_per_interval(aclient: aioredis.Redis, rdb: redis.Redis) -> None:
    writer = writer_for(aclient, batch_ms=100)
    stop = asyncio.Event()
    service = asyncio.create_task(writer.run(stop))
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # a request every 10 ms for a second
            writer.exchange_done(record())
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.25)
        health = writer.health()
        assert health["queued"] == 0
        assert health["written"] == writer.written >= 80
        # about one write per 100 ms: not one per request, not one at the end
        assert 6 <= writer.batches <= 14, writer.batches
        assert int(rdb.get(keys.req_stats_requests(hour_of(time.time()))) or 0) >= 80
    finally:
        stop.set()
        await asyncio.wait_for(service, 5)


async def test_a_full_batch_is_written_before_the_interval(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    writer = writer_for(aclient, batch_ms=60_000, batch_size=10)
    stop = asyncio.Event()
    service = asyncio.create_task(writer.run(stop))
    try:
        await asyncio.sleep(0.05)
        for _ in range(9):
            writer.exchange_done(record())
        await asyncio.sleep(0.3)
        assert writer.written == 0  # nine wait for the interval
        writer.exchange_done(record())
        for _ in range(50):
            if writer.written:
                break
            await asyncio.sleep(0.01)
        assert writer.written == 10
        assert writer.batches == 1
    finally:
        stop.set()
        await asyncio.wait_for(service, 5)
    writer.exchange_done(record())
    assert writer.health()["queued"] == 1


async def test_stop_writes_what_is_left(aclient: aioredis.Redis, rdb: redis.Redis) -> None:
    writer = writer_for(aclient, batch_ms=60_000)
    stop = asyncio.Event()
    service = asyncio.create_task(writer.run(stop))
    await asyncio.sleep(0.05)
    for _ in range(25):
        writer.exchange_done(record())
    stop.set()
    await asyncio.wait_for(service, 5)
    assert writer.written == 25
    assert len(list(rdb.scan_iter("req:*"))) == 25


def timed_calls(call: Callable[[AccessRecord], None], count: int) -> tuple[float, float]:
    """(slowest call, mean call) in seconds, for ``count`` calls."""
    rec = record()
    slowest = 0.0
    began = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        call(rec)
        slowest = max(slowest, time.perf_counter() - t0)
    return slowest, (time.perf_counter() - began) / count


async def test_nothing_listening_drops_oldest_and_counts() -> None:
    client = redis_client(RedisTarget(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        writer = writer_for(client, queue_size=100, batch_ms=20, retry_pause=0.05)
        stop = asyncio.Event()
        service = asyncio.create_task(writer.run(stop))
        slowest, mean = timed_calls(writer.exchange_done, 10_000)
        assert writer.dropped == 10_000 - 100
        assert len(writer._queue) == 100
        # nothing waits for the absent Redis: a connection attempt per call would take
        # hundreds of microseconds (the slowest call is not asserted: a busy machine can
        # preempt any one of them)
        assert mean < 50e-6, (slowest, mean)
        await asyncio.sleep(0.5)
        health = writer.health()
        assert health["written"] == 0
        assert health["failed"] == 100  # the queued batch tried once, dropped, not retried
        assert health["redis"] == "unavailable"
        assert "Connection" in str(health["last_error"])
        stop.set()
        await asyncio.wait_for(service, 5)
    finally:
        await client.aclose()


async def test_redis_stopped_and_back(
    redis_db: RedisServer, aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    """Traffic flows while Redis is down: the oldest go, counted; once it is back, what was
    queued last and everything after is written."""
    writer = writer_for(aclient, queue_size=50, batch_ms=20, retry_pause=0.2, write_timeout=1.0)
    stop = asyncio.Event()
    service = asyncio.create_task(writer.run(stop))
    try:
        writer.exchange_done(record(request_id="before"))
        await asyncio.sleep(0.2)
        assert writer.written == 1
        redis_db.stop()
        failed_at_start = writer.failed
        for n in range(200):
            writer.exchange_done(record(request_id=f"down{n}"))
            await asyncio.sleep(0.002)
        for _ in range(200):
            if writer.failed > failed_at_start:
                break
            await asyncio.sleep(0.01)
        assert writer.failed > failed_at_start
        assert writer.dropped + writer.failed + len(writer._queue) == 200
        assert writer.dropped > 0
        assert writer.health()["redis"] == "unavailable"
        redis_db.start()
        rdb = redis_db.client()
        writer.exchange_done(record(request_id="after"))
        for _ in range(300):
            if writer.health()["redis"] == "ok" and not writer._queue:
                break
            await asyncio.sleep(0.01)
        assert writer.health()["redis"] == "ok"
        ids = {rdb.hget(k, "request_id") for k in rdb.scan_iter("req:*")}
        assert b"after" in ids
        assert writer.written == 1 + len(ids)  # redis-server restarted empty
    finally:
        stop.set()
        await asyncio.wait_for(service, 5)


async def test_memory_per_entry(aclient: aioredis.Redis, rdb: redis.Redis) -> None:
    """Bytes of Redis memory per logged request: 10,000 requests from 2,000 IPs to 5 hosts
    over 50 route shapes, about 5% errors; everything (hashes, indexes, stream, counters)."""
    writer = writer_for(aclient, batch_size=500, queue_size=20_000)
    now = time.time()
    for n in range(10_000):
        writer.exchange_done(
            record(
                ip=f"10.0.{n % 2000 // 250}.{n % 250}",
                host=f"app{n % 5}.example.com",
                path=f"/api/v1/thing{n % 50}/{n}",
                status=500 if n % 20 == 0 else 200,
                duration=float(n % 1300),
                at=now,
                request_id=f"{n:016x}",
            )
        )
    rdb.execute_command("MEMORY", "PURGE")
    before = int(rdb.info("memory")["used_memory"])
    began = time.perf_counter()
    await writer.flush()
    spent = time.perf_counter() - began
    after = int(rdb.info("memory")["used_memory"])
    assert writer.written == 10_000
    per_entry = (after - before) / 10_000
    usage = sum(int(rdb.memory_usage(k) or 0) for k in rdb.scan_iter(count=1000)) / 10_000
    print(
        f"\nrequest log: {per_entry:.0f} B per request (used_memory), {usage:.0f} B "
        f"(MEMORY USAGE of every key); writer {10_000 / spent:.0f} entries/s"
    )
    assert 100 < per_entry < 2000


async def test_a_bad_key_costs_its_own_write_only(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    """A key of the wrong type (a hand edit) fails its command, not the batch."""
    rdb.set(keys.REQ_INDEX_ERRORS, "not a sorted set")
    writer = writer_for(aclient)
    writer.exchange_done(record(status=500))
    writer.exchange_done(record(status=200))
    await writer.flush()
    health = writer.health()
    assert health["written"] == 2 and health["failed"] == 0
    assert health["command_errors"] == 2  # its ZADD and its trim
    assert "WRONGTYPE" in str(health["last_error"])
    assert len(list(rdb.scan_iter("req:*"))) == 2
    assert rdb.zcard(keys.req_index_status(500)) == 1


async def test_at_most_max_entries_whatever_the_traffic(
    aclient: aioredis.Redis, rdb: redis.Redis
) -> None:
    """A flood of distinct IPs, hosts and paths: past ``max_entries`` the oldest entries
    go with their index members, so keys stay bounded; unknown hosts share one counter."""
    writer = writer_for(
        aclient, max_entries=50, batch_size=40, known_host=lambda host: host == "app.test"
    )
    now = time.time() // HOUR * HOUR + 10  # every entry in one hour
    for n in range(400):
        writer.exchange_done(
            record(ip=f"10.0.{n // 250}.{n % 250}", host=f"h{n}.scan.test", path=f"/w{n}/x",
                   status=404 if n % 2 else 200, at=now + n / 1000, request_id=f"r{n}")
        )  # fmt: skip
    writer.exchange_done(record(host="app.test", at=now + 1))
    await writer.flush()
    assert writer.command_errors == 0, writer.last_error
    hashes = {k.decode() for k in rdb.scan_iter("req:*", count=1000)}
    assert len(hashes) == 50
    assert set(members(rdb, keys.REQ_INDEX_ALL)) == hashes
    # the newest were kept
    kept = {rdb.hget(k, "request_id") for k in hashes}
    assert b"rid" in kept and b"r399" in kept and b"r300" not in kept
    # no index holds an evicted entry; an index emptied by eviction is gone
    indexes = [k.decode() for k in rdb.scan_iter("idx:req:*", count=1000)]
    for index in indexes:
        assert set(members(rdb, index)) <= hashes, index
    assert len(indexes) <= 50 * 3 + 5  # ip, host, path per entry; status, errors, all
    hour = hour_of(now)
    unique = {k.decode() for k in rdb.scan_iter("stats:unique_ips:*", count=1000)}
    assert unique == {
        keys.req_stats_unique_ips("app.test", hour),
        keys.req_stats_unique_ips("{other}", hour),
        keys.req_stats_unique_ips("*", hour),
    }
    assert rdb.pfcount(keys.req_stats_unique_ips("{other}", hour)) == pytest.approx(400, rel=0.05)
