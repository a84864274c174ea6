"""The request log under hostile or unusual input: secrets in odd request targets, a scan
of random long Host headers, a search while the log grows, keys of the wrong type written
by hand, a search over more entries than the stream holds. Each of these failed before its
fix (the docstrings say what went wrong)."""

from __future__ import annotations

import asyncio
import random
import socket
import string
import time
from collections.abc import Callable

import redis

from edge.observe import reqlog_query as query
from edge.observe.reqlog import ReqLogEntry, RequestLogWriter
from edge.observe.reqlog_query import Filters
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from tests.api_client import call as api_call
from tests.helpers import EdgeProcess, RedisServer, Upstream, proxy_doc, wait_for
from tests.integration.test_request_log import entries, everything, request_log_health

SECRET = "pa55-NEVER-in-redis"


def raw_exchange(port: int, head: bytes) -> bytes:
    """Send one request head on a fresh connection; the answer's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        data = b""
        while b"\r\n" not in data:
            more = sock.recv(4096)
            if not more:
                break
            data += more
    return data.split(b"\r\n", 1)[0]


def test_userinfo_and_path_parameters_reach_redis(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    """Credentials in a request target never reach the request log.

    An absolute-form target with userinfo (``http://user:pass@host/``) is refused (400)
    and was logged whole as the path; a CONNECT target's userinfo likewise; a
    ``;jsessionid=`` path parameter (a session id in the path) was kept. Now a target that
    is no path is logged as ``{other}`` and ``;`` parameters are cut.
    """
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(LOG_BATCH_MS=20)
    edge.wait_generation(lambda h: h["proxies"] == 1)
    port = edge.http_port
    line = raw_exchange(
        port, f"GET http://alice:{SECRET}-1@app.test/x HTTP/1.1\r\nHost: app.test\r\n\r\n".encode()
    )
    assert line.startswith(b"HTTP/1.1 400"), line
    line = raw_exchange(
        port, f"CONNECT alice:{SECRET}-2@app.test:443 HTTP/1.1\r\nHost: app.test\r\n\r\n".encode()
    )
    assert line.startswith(b"HTTP/1.1 405"), line
    line = raw_exchange(
        port, f"GET /login;jsessionid={SECRET}-3 HTTP/1.1\r\nHost: app.test\r\n\r\n".encode()
    )
    assert line.startswith(b"HTTP/1.1 200"), line

    found = wait_for(lambda: e if len(e := entries(rdb)) >= 3 else None, timeout=10)
    stored = everything(rdb)
    assert SECRET.encode() not in stored  # nowhere: hashes, indexes, the stream
    assert sorted(e["path"] for e in found) == ["/login", "{other}", "{other}"]


def _word(n: int) -> str:
    return "".join(random.choices(string.ascii_lowercase, k=n))


def test_random_hosts_and_paths_cost_keys_and_memory_per_request(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis
) -> None:
    """A scan of random, long Host headers and random word paths makes no key per host or
    path, and costs about what a plain request costs.

    Before: every unknown Host got its own ``idx:req:host:{host}`` (the host not cut: up
    to 16 KiB in the key's name, the hash and the stream entry) and every random word
    path its own ``idx:req:path:GET:{path}``: 36,912 B of Redis per request measured with
    10 KB hosts, so a cap counted in entries did not bound bytes. Now hosts are cut to 253
    characters and the ones the edge does not serve share one host index, one unique-IP
    counter and no path index: about 2,800 B a request.
    """
    edge = edge_factory(LOG_BATCH_MS=20)
    n = 200
    rdb.config_resetstat()
    before = int(rdb.info("memory")["used_memory"])
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.settimeout(10)
        for _ in range(n):
            host = f"{_word(10_000)}.test"
            path = f"/{_word(8)}/{_word(8)}/{_word(8)}"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404"), head[:100]
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
    wait_for(lambda: request_log_health(edge)["written"] >= n or None, timeout=20)
    after = int(rdb.info("memory")["used_memory"])
    per_request = (after - before) / n
    host_keys = sum(1 for _ in rdb.scan_iter(f"{keys.REQ_INDEX}host:*", count=1000))
    unique_keys = sum(1 for _ in rdb.scan_iter("stats:unique_ips:*", count=1000))
    path_keys = sum(1 for _ in rdb.scan_iter(f"{keys.REQ_INDEX}path:*", count=1000))
    slowest = max(
        (int(e["duration"]) for e in rdb.slowlog_get(128) if b"EVALSHA" in e["command"][:8]),
        default=0,
    )
    usage: dict[str, int] = {}
    for key in rdb.scan_iter(count=1000):
        kind = key.decode().split(":")[0] if not key.startswith(b"idx:") else "idx"
        usage[kind] = usage.get(kind, 0) + int(rdb.memory_usage(key, samples=0) or 0)
    by_keys = sum(usage.values()) / n
    print({kind: size // n for kind, size in usage.items()}, f"{by_keys:.0f} B by MEMORY USAGE")
    print(
        f"\n{per_request:.0f} B of Redis per request; {host_keys} host indexes, "
        f"{unique_keys} unique-IP HLLs, {path_keys} path indexes; slowest EVALSHA {slowest} us"
    )
    assert host_keys == 1 and unique_keys == 2 and path_keys == 1  # {other}, and * for IPs
    # a plain request costs about 1,400 B by MEMORY USAGE; the 253-character host is in the
    # hash (which a value over 64 bytes turns from a listpack into a hash table, about
    # 1,900 B) and in the stream entry. (used_memory, printed, moves by whole allocator
    # pages and other clients' buffers over so few requests: MEMORY USAGE is asserted)
    assert by_keys < 4000


def test_a_first_page_walked_while_the_index_grows_repeats_entries(redis_db: RedisServer) -> None:
    """A search whose first page takes several script calls (CHUNK members each) lists
    each entry once while entries are being logged. It read them with
    ``ZREVRANGEBYSCORE +inf ... LIMIT offset``: entries logged between two calls pushed the
    members down and the next call read again members already examined (18 of 318 listed
    twice, measured). Now each call goes on below the last member examined.
    """
    ip = "198.51.100.9"
    now = time.time()

    def item(n: int, method: str, at: float) -> ReqLogEntry:
        second, milli = divmod(int(at * 1000), 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"
        return ReqLogEntry(
            time=stamp, node="n", worker=0, request_id=f"r{n}", client_ip=ip,
            method=method, host="app.test", path="/p", status=200, bytes_in=0,
            bytes_out=0, duration_ms=1.0,
        )  # fmt: skip

    async def run() -> tuple[int, int]:
        client = redis_client(RedisTarget(redis_db.url))
        other = redis_client(RedisTarget(redis_db.url))
        try:
            writer = RequestLogWriter(client, node="n", worker=0)
            for n in range(3000):  # one POST in ten, over the last ten minutes
                writer.log(item(n, "POST" if n % 10 == 0 else "GET", now - 600 + n * 0.2))
                if n % 1000 == 999:
                    await writer.flush()
            live = RequestLogWriter(other, node="n", worker=1)
            stop = asyncio.Event()

            async def keep_logging() -> None:
                n = 10_000
                while not stop.is_set():
                    for _ in range(20):
                        live.log(item(n, "GET", time.time()))
                        n += 1
                    await live.write_batch()

            task = asyncio.create_task(keep_logging())
            await asyncio.sleep(0.05)
            page = await query.search(client, Filters(ip=ip, method="POST"), hours=1, limit=1000)
            stop.set()
            await task
            got = [e["key"] for e in page.entries]
            return len(got), len(got) - len(set(got))
        finally:
            await client.aclose()
            await other.aclose()

    listed, duplicated = asyncio.run(run())
    print(f"\n{listed} listed, {duplicated} listed twice")
    assert listed == 300 and duplicated == 0


def test_hand_written_wrong_types_fail_whole_answers(
    edge_factory: Callable[..., EdgeProcess], admin: str, rdb: redis.Redis
) -> None:
    """One key of the wrong type (written by hand, or by another program sharing the
    Redis) costs only itself: a request key in an index that is not a hash is skipped (it
    made every list walking that index fail with a 503 naming the token store), and a
    counter that is not a number counts 0 (it made ``/stats`` fail for every hour).
    """
    edge = edge_factory(ADMIN_TOKEN=admin, REQUEST_LOG="off")
    ip = "198.51.100.7"
    rdb.zadd(keys.req_index_ip(ip), {"req:bogus": time.time()})
    rdb.set("req:bogus", "not a hash")
    hour = time.strftime("%Y%m%d:%H", time.gmtime())
    rdb.set(keys.req_stats_requests(hour), "not a number")
    by_ip = api_call(edge.api_port, "GET", f"/api/v1/logs/ip/{ip}", admin)
    stats = api_call(edge.api_port, "GET", "/api/v1/logs/stats", admin)
    print(f"\n/ip: {by_ip.status} {by_ip.raw[:200]!r}\n/stats: {stats.status} {stats.raw[:200]!r}")
    assert by_ip.status == 200 and by_ip.doc["entries"] == []
    assert stats.status == 200 and stats.doc["hours"][0]["requests"] == 0


def test_a_search_without_an_indexed_filter_misses_what_the_stream_no_longer_holds(
    redis_db: RedisServer,
) -> None:
    """A search with only unindexed filters (``method``, ``path``, ``min_ms``, a
    ``2xx``/``3xx`` class) finds every entry of its window. It walked ``stream:requests``,
    capped at LOG_STREAM_MAX entries: 3,000 POSTs of the last hour with a stream capped
    near 1,000 listed about a third of them, as if complete. Now it walks ``idx:req:all``.
    """
    now = time.time()

    async def run() -> tuple[int, bool, str | None, int]:
        client = redis_client(RedisTarget(redis_db.url))
        try:
            writer = RequestLogWriter(client, node="n", worker=0, stream_maxlen=1000)
            for n in range(3000):
                second, milli = divmod(int((now - 1800 + n * 0.5) * 1000), 1000)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                writer.log(
                    ReqLogEntry(
                        time=f"{stamp}.{milli:03d}Z",
                        node="n",
                        worker=0,
                        request_id=f"r{n}",
                        client_ip=f"192.0.2.{n % 200}",
                        method="POST",
                        host="app.test",
                        path="/p",
                        status=200,
                        bytes_in=0,
                        bytes_out=0,
                        duration_ms=1.0,
                    )
                )
                if n % 1000 == 999:
                    await writer.flush()
            page = await query.search(client, Filters(method="POST"), hours=1, limit=1000)
            listed = len(page.entries)
            while page.next_cursor is not None and not page.partial:
                page = await query.search(
                    client,
                    Filters(method="POST"),
                    hours=1,
                    limit=1000,
                    cursor=query.Cursor.decode(page.next_cursor),
                )
                listed += len(page.entries)
            hashes = sum([1 async for _ in client.scan_iter("req:*", count=1000)])
            return listed, page.partial, page.next_cursor, hashes
        finally:
            await client.aclose()

    listed, partial, cursor, hashes = asyncio.run(run())
    print(f"\n{listed} of {hashes} listed, partial={partial}, cursor={cursor}")
    assert hashes == 3000
    assert listed == 3000 and not partial and cursor is None
