"""The request log's API on a real edge and a real Redis: every list, search and its
filters, paging, the scan bound, stats, follow, clear, who may call what, and every limit.

The log is filled by a ``RequestLogWriter`` of the test itself (the edge's own writer is
off: REQUEST_LOG=off, so the test's own API calls add nothing), except in the end-to-end
tests at the bottom, where requests through the edge are what gets logged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import redis

from edge.api.logs.endpoints import MAX_FOLLOWERS
from edge.observe.reqlog import ReqLogEntry, RequestLogWriter, bucket_upper_ms, duration_bucket
from edge.observe.reqlog_query import SCAN_BOUND
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from tests.api_client import Answer, assert_error, call, new_token
from tests.helpers import EdgeProcess, RedisServer

EdgeFactory = Callable[..., EdgeProcess]
LOGS = "/api/v1/logs"


def stamp(unix: float) -> str:
    second, milli = divmod(int(unix * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"


def entry(
    *,
    ip: str = "203.0.113.7",
    host: str = "app.example.com",
    path: str = "/users/42",
    method: str = "GET",
    status: int = 200,
    duration: float = 2.5,
    at: float | None = None,
    user: str = "",
    client_id: str = "",
    request_id: str = "rid",
    event: str = "",
) -> ReqLogEntry:
    return ReqLogEntry(
        time=stamp(time.time() if at is None else at), node="node-a", worker=1,
        request_id=request_id, client_ip=ip, method=method, host=host, path=path,
        status=status, bytes_in=10, bytes_out=20, duration_ms=duration, user=user,
        client_id=client_id, event=event,
    )  # fmt: skip


def fill(url: str, entries: Iterable[ReqLogEntry], **options: Any) -> None:
    """Write ``entries`` into the request log as an edge's writer would."""

    async def run() -> None:
        client = redis_client(RedisTarget(url))
        try:
            writer = RequestLogWriter(client, node="node-a", worker=1, **options)
            for n, item in enumerate(entries, 1):
                writer.log(item)
                if n % 1000 == 0:  # the queue keeps 10,000 at most
                    await writer.flush()
            await writer.flush()
            assert writer.dropped == 0
            assert writer.failed == 0 and writer.command_errors == 0, writer.health()
        finally:
            await client.aclose()

    asyncio.run(run())


class Logs:
    """An edge (its own request log off) with an admin token, and its logs API."""

    def __init__(self, edge: EdgeProcess, admin: str, redis_db: RedisServer) -> None:
        self.edge = edge
        self.admin = admin
        self.url = redis_db.url

    def get(
        self, where: str, token: str | None = None, timeout: float = 5.0, **query: Any
    ) -> Answer:
        target = f"{LOGS}{where}" + (f"?{urlencode(query)}" if query else "")
        return call(self.edge.api_port, "GET", target, token or self.admin, timeout=timeout)

    def ok(self, where: str, **query: Any) -> Any:
        answer = self.get(where, **query)
        assert answer.status == 200, (where, query, answer.status, answer.raw)
        return answer.doc

    def entries(self, where: str, **query: Any) -> list[dict[str, Any]]:
        doc = self.ok(where, **query)
        assert set(doc) == {"entries", "next_cursor", "partial"}, doc
        return list(doc["entries"])

    def ids(self, where: str, **query: Any) -> list[str]:
        return [e["request_id"] for e in self.entries(where, **query)]


@pytest.fixture
def logs(edge_factory: EdgeFactory, admin: str, redis_db: RedisServer) -> Logs:
    edge = edge_factory(ADMIN_TOKEN=admin, REQUEST_LOG="off", LOG_RETENTION_HOURS=48)
    return Logs(edge, admin, redis_db)


# ---------------------------------------------------------------------------- lists


def test_every_list_answers_its_entries_newest_first(logs: Logs) -> None:
    now = time.time()
    fill(
        logs.url,
        [  # in time order, as a writer sees them
            entry(request_id="old", ip="198.51.100.1", at=now - 2 * 3600),
            entry(request_id="a", ip="198.51.100.1", at=now - 30, user="alice"),
            entry(request_id="b", ip="198.51.100.2", host="api.example.com", at=now - 20,
                  status=404, client_id="c_web"),
            entry(request_id="c", ip="198.51.100.1", at=now - 10, status=503,
                  duration=1500.0, user="token:ci"),
            entry(request_id="d", ip="2001:db8::7", host="api.example.com", at=now - 5,
                  method="POST", path="/orders/9", client_id="c_web", user="alice"),
            entry(request_id="e", ip="192.0.2.9", host="", method="", path="", status=0,
                  at=now - 1, event="tls_handshake_failed"),
        ],
    )  # fmt: skip
    assert logs.ids("/ip/198.51.100.1") == ["c", "a"]
    assert logs.ids("/ip/198.51.100.1", hours=3) == ["c", "a", "old"]
    assert logs.ids(f"/ip/{quote('2001:db8::7')}") == ["d"]
    assert logs.ids("/ip/192.0.2.9") == ["e"]
    assert logs.ids("/host/api.example.com") == ["d", "b"]
    assert logs.ids("/host/API.Example.com") == ["d", "b"]
    assert logs.ids("/client/c_web") == ["d", "b"]
    assert logs.ids("/user/alice") == ["d", "a"]
    assert logs.ids(f"/user/{quote('token:ci')}") == ["c"]
    assert logs.ids("/errors") == ["c", "b"]
    assert logs.ids("/slow") == ["c"]
    assert logs.ids("/events") == ["e"]
    assert logs.ids("/search") == ["e", "d", "c", "b", "a"]  # the stream: every entry
    assert logs.ids("/ip/198.51.100.99") == []

    [c] = logs.entries("/slow")
    assert c["status"] == 503 and c["duration_ms"] == 1500.0 and c["worker"] == 1
    assert c["bytes_in"] == 10 and c["bytes_out"] == 20
    assert c["time"] == stamp(now - 10) and c["node"] == "node-a"
    assert c["key"].startswith("req:") and c["key"].endswith(":198.51.100.1")
    assert c["path"] == "/users/42" and c["host"] == "app.example.com"
    [e] = logs.entries("/events")
    assert e["event"] == "tls_handshake_failed" and e["status"] == 0
    # the stream's entries are the hashes' fields, with the same keys
    by_stream = {x["request_id"]: x for x in logs.entries("/search")}
    assert by_stream["c"] == c


def test_search_filters_and_the_index_it_walks(logs: Logs) -> None:
    now = time.time()
    fill(
        logs.url,
        [
            entry(request_id="get-404", status=404, at=now - 9, path="/users/1"),
            entry(request_id="post-201", status=201, method="POST", at=now - 8,
                  path="/orders"),
            entry(request_id="get-500", status=500, at=now - 7, path="/users/2/avatar",
                  duration=80.0),
            entry(request_id="other-host", status=404, host="b.example.com", at=now - 6,
                  ip="198.51.100.5", user="bob"),
            entry(request_id="slow-200", duration=2500.0, at=now - 5, user="bob"),
        ],
    )  # fmt: skip
    assert logs.ids("/search", status="404") == ["other-host", "get-404"]
    assert logs.ids("/search", status="4xx") == ["other-host", "get-404"]
    assert logs.ids("/search", status="5XX") == ["get-500"]
    assert logs.ids("/search", status="2xx") == ["slow-200", "post-201"]
    assert logs.ids("/search", method="post") == ["post-201"]
    assert logs.ids("/search", path="/users/") == ["slow-200", "other-host", "get-500", "get-404"]
    assert logs.ids("/search", path="/users/2") == ["get-500"]
    assert logs.ids("/search", min_ms=50) == ["slow-200", "get-500"]
    assert logs.ids("/search", min_ms=50, status="5xx") == ["get-500"]
    assert logs.ids("/search", host="b.example.com", status="404") == ["other-host"]
    assert logs.ids("/search", host="app.example.com", status="404") == ["get-404"]
    assert logs.ids("/search", ip="198.51.100.5", user="bob") == ["other-host"]
    assert logs.ids("/search", user="bob", slow="true") == ["slow-200"]
    assert logs.ids("/search", errors="true", host="app.example.com") == ["get-500", "get-404"]
    assert logs.ids("/search", errors="1", path="/orders") == []
    # a named list takes the other filters too
    assert logs.ids("/host/app.example.com", status="4xx") == ["get-404"]
    assert logs.ids("/user/bob", min_ms=1000) == ["slow-200"]
    assert logs.ids("/errors", method="GET", path="/users/2") == ["get-500"]


def test_an_entry_whose_hash_expired_is_skipped(logs: Logs, rdb: redis.Redis) -> None:
    fill(logs.url, [entry(request_id="gone"), entry(request_id="kept")])
    [gone, _] = [e["key"] for e in reversed(logs.entries("/ip/203.0.113.7"))]
    rdb.delete(gone)  # as its TTL would: the index member stays until trimmed
    assert logs.ids("/ip/203.0.113.7") == ["kept"]
    assert logs.ids("/host/app.example.com") == ["kept"]


def test_paging_visits_every_entry_once(logs: Logs) -> None:
    now = time.time()
    # 5 entries a millisecond: equal scores, told apart by their keys
    entries = [entry(request_id=f"r{i:03d}", at=now - 60 + i // 5 / 1000) for i in range(260)]
    fill(logs.url, entries)
    for path in ("/host/app.example.com", "/search"):
        seen: list[str] = []
        query: dict[str, Any] = {"limit": 100}
        pages = 0
        while True:
            doc = logs.ok(path, **query)
            pages += 1
            assert not doc["partial"]
            seen += [e["request_id"] for e in doc["entries"]]
            if doc["next_cursor"] is None:
                break
            query["cursor"] = doc["next_cursor"]
        assert pages in (3, 4), (path, pages)  # the last may be an empty one
        assert sorted(seen) == sorted(e.request_id for e in entries), path
        assert len(seen) == len(set(seen)) == 260, path
        times = [int(s[1:]) // 5 for s in seen]
        assert times == sorted(times, reverse=True), path  # newest first


def test_the_scan_bound_stops_a_search_and_says_partial(logs: Logs) -> None:
    now = time.time()
    many = [entry(request_id=f"n{i}", at=now - 600 + i / 100) for i in range(SCAN_BOUND + 300)]
    fill(logs.url, [entry(request_id="wanted", method="DELETE", at=now - 700), *many])
    # the host's index is walked (method has none): past SCAN_BOUND members, it stops
    started = time.monotonic()
    doc = logs.ok("/host/app.example.com", method="DELETE")
    took = time.monotonic() - started
    assert doc["entries"] == [] and doc["partial"] is True and doc["next_cursor"], doc
    doc = logs.ok("/host/app.example.com", method="DELETE", cursor=doc["next_cursor"])
    assert [e["request_id"] for e in doc["entries"]] == ["wanted"]
    assert doc["partial"] is False and doc["next_cursor"] is None
    # the stream walk too
    doc = logs.ok("/search", method="PUT", hours=1)
    assert doc["entries"] == [] and doc["partial"] is True and doc["next_cursor"]
    print(f"a search examining {SCAN_BOUND} keys answered in {took * 1000:.0f} ms")


# ---------------------------------------------------------------------------- stats


def test_stats_per_hour_with_percentiles(logs: Logs) -> None:
    now = time.time()
    hour_start = now // 3600 * 3600
    at = max(hour_start, now - 60)  # within this hour
    durations = [1.0] * 50 + [10.0] * 45 + [100.0] * 4 + [1000.0]
    current = [
        entry(request_id=f"c{i}", ip=f"198.51.100.{i % 7}", duration=ms, at=at,
              status=500 if i < 3 else 200, host="a.example.com" if i % 2 else "b.example.com")
        for i, ms in enumerate(durations)
    ]  # fmt: skip
    earlier = [entry(request_id=f"e{i}", at=hour_start - 1800, status=404) for i in range(4)]
    fill(logs.url, [*earlier, *current])  # in time order, as a writer sees them
    rows = logs.ok("/stats", hours=3)["hours"]
    assert len(rows) == 3
    this, previous, before = rows
    assert this["start"] == time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour_start))
    assert this["hour"] == time.strftime("%Y%m%d:%H", time.gmtime(hour_start))
    assert this["requests"] == 100 and this["errors"] == 3 and this["unique_ips"] == 7
    assert this["p50_ms"] == round(bucket_upper_ms(duration_bucket(1.0)), 3)
    assert this["p95_ms"] == round(bucket_upper_ms(duration_bucket(10.0)), 3)
    assert this["p99_ms"] == round(bucket_upper_ms(duration_bucket(100.0)), 3)
    assert previous["requests"] == 4 and previous["errors"] == 4 and previous["unique_ips"] == 1
    assert before == {
        "hour": before["hour"], "start": before["start"], "requests": 0, "errors": 0,
        "unique_ips": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
    }  # fmt: skip
    [one] = logs.ok("/stats", hours=1, host="A.example.com")["hours"]
    assert one["host"] == "a.example.com" and one["unique_ips"] == 7
    assert one["requests"] == 100  # the counters are every host's
    assert len(logs.ok("/stats")["hours"]) == 24  # the default
    assert len(logs.ok("/stats", hours=48)["hours"]) == 48  # the retention
    assert_error(logs.get("/stats", hours=49), 400, "invalid_query", "hours")
    assert_error(logs.get("/stats", hours=1.5), 400, "invalid_query", "hours")
    assert_error(logs.get("/stats", limit=5), 400, "invalid_query", "limit")


# ---------------------------------------------------------------------------- follow


def test_follow_waits_for_an_entry_after_it_started(logs: Logs) -> None:
    fill(logs.url, [entry(request_id="before")])
    results: list[Answer] = []
    started = time.monotonic()
    poll = threading.Thread(
        target=lambda: results.append(logs.get("/follow", timeout=30, wait=20, after="$"))
    )
    poll.start()
    time.sleep(0.5)
    fill(
        logs.url, [entry(request_id="unwanted", status=200), entry(request_id="after", status=404)]
    )
    poll.join(25)
    took = time.monotonic() - started
    [answer] = results
    assert answer.status == 200, answer.raw
    doc = answer.doc
    assert [e["request_id"] for e in doc["entries"]] == ["unwanted", "after"]
    assert took < 5, took
    # from its next: nothing new, an answer after the wait, with the same next
    started = time.monotonic()
    empty = logs.ok("/follow", after=doc["next"], wait=1)
    assert empty == {"entries": [], "next": doc["next"]}
    assert 0.9 < time.monotonic() - started < 3
    # filters: a follow for 404s skips the 200s it reads
    results.clear()
    poll = threading.Thread(
        target=lambda: results.append(
            logs.get("/follow", timeout=30, wait=20, after=doc["next"], status="4xx")
        )
    )
    poll.start()
    time.sleep(0.3)
    fill(logs.url, [entry(request_id="ok-1")])
    time.sleep(0.3)
    fill(logs.url, [entry(request_id="missing", status=404)])
    poll.join(25)
    assert [e["request_id"] for e in results[0].doc["entries"]] == ["missing"]
    # from the start of the stream: what it holds, at once
    everything = logs.ok("/follow", after="0", wait=0)
    ids = [e["request_id"] for e in everything["entries"]]
    assert ids == ["before", "unwanted", "after", "ok-1", "missing"]
    assert logs.ok("/follow", after="0", wait=0, limit=2)["entries"][1]["request_id"] == "unwanted"


def test_follow_limits(logs: Logs) -> None:
    assert_error(logs.get("/follow", wait=26), 400, "invalid_query", "wait")
    assert_error(logs.get("/follow", wait=-1), 400, "invalid_query", "wait")
    assert_error(logs.get("/follow", after="yesterday"), 400, "invalid_query", "after")
    assert_error(logs.get("/follow", limit=1001), 400, "invalid_query", "limit")
    assert_error(logs.get("/follow", hours=1), 400, "invalid_query", "hours")
    # at most MAX_FOLLOWERS wait at once on a worker; the next is told to come back
    with ThreadPoolExecutor(MAX_FOLLOWERS) as pool:
        waiting = [
            pool.submit(logs.get, "/follow", timeout=30, wait=4) for _ in range(MAX_FOLLOWERS)
        ]
        time.sleep(1.5)
        refused = logs.get("/follow", wait=1)
        assert_error(refused, 503, "too_many_followers")
        assert refused.headers["retry-after"] == "1"
        answers = [w.result() for w in waiting]
    assert all(a.status == 200 and a.doc["entries"] == [] for a in answers)
    assert logs.get("/follow", wait=0).status == 200  # free again


# ---------------------------------------------------------------------------- who and limits


def test_any_token_reads_only_the_admin_clears(logs: Logs, rdb: redis.Redis) -> None:
    fill(logs.url, [entry(request_id="a", user="alice", status=500, duration=3000)])
    reader = new_token(logs.edge.api_port, logs.admin, "reader")
    for path in ("/ip/203.0.113.7", "/errors", "/search", "/stats", "/events"):
        assert logs.get(path, token=reader).status == 200, path
        unauthenticated = call(logs.edge.api_port, "GET", f"{LOGS}{path}")
        assert_error(unauthenticated, 401, "unauthorized")
    assert_error(call(logs.edge.api_port, "GET", f"{LOGS}/follow?wait=0"), 401, "unauthorized")
    assert_error(call(logs.edge.api_port, "DELETE", LOGS, reader), 403, "forbidden")
    assert logs.ids("/errors") == ["a"]

    rdb.set("proxy:keep.example.com", "{}")
    rdb.set("stats:other", "1")  # not one of the log's prefixes
    cleared = call(logs.edge.api_port, "DELETE", LOGS, logs.admin)
    assert cleared.status == 200, cleared.raw
    assert cleared.doc["complete"] is True and cleared.doc["deleted"] >= 10, cleared.doc
    left = {k.decode() for k in rdb.scan_iter()}
    assert not [k for k in left if k.startswith(keys.REQ_LOG_PREFIXES)], left
    assert {"proxy:keep.example.com", "stats:other"} <= left
    assert logs.ids("/errors") == [] and logs.ids("/search") == []
    assert logs.ok("/stats", hours=1)["hours"][0]["requests"] == 0
    assert_error(call(logs.edge.api_port, "DELETE", f"{LOGS}?all=1", logs.admin),
                 400, "invalid_query", "all")  # fmt: skip


def test_clear_works_in_bounded_passes(logs: Logs, rdb: redis.Redis) -> None:
    with rdb.pipeline(transaction=False) as pipe:
        for i in range(52_000):
            pipe.set(f"req:{i}-test:198.51.100.1", "x")
        pipe.execute()
    first = call(logs.edge.api_port, "DELETE", LOGS, logs.admin, timeout=30)
    assert first.status == 200 and first.doc["complete"] is False, first.raw
    assert 50_000 <= first.doc["deleted"] < 52_000
    second = call(logs.edge.api_port, "DELETE", LOGS, logs.admin, timeout=30).doc
    assert second["complete"] is True
    assert first.doc["deleted"] + second["deleted"] == 52_000
    assert rdb.dbsize() < 10  # the token's keys


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/search", {"limit": "0"}, "limit"),
        ("/search", {"limit": "1001"}, "limit"),
        ("/search", {"limit": "ten"}, "limit"),
        ("/errors", {"hours": "0"}, "hours"),
        ("/errors", {"hours": "49"}, "hours"),
        ("/errors", {"hours": "nan"}, "hours"),
        ("/search", {"status": "600"}, "status"),
        ("/search", {"status": "4x"}, "status"),
        ("/search", {"method": "G ET"}, "method"),
        ("/search", {"path": "users"}, "path"),
        ("/search", {"min_ms": "-1"}, "min_ms"),
        ("/search", {"ip": ""}, "ip"),
        ("/search", {"host": "h" * 300}, "host"),
        ("/search", {"errors": "maybe"}, "errors"),
        ("/search", {"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
        ("/search", {"query": "x"}, "query"),
        ("/ip/198.51.100.1", {"ip": "198.51.100.2"}, "ip"),
        ("/errors", {"errors": "true"}, "errors"),
    ],
)
def test_a_malformed_parameter_is_a_400_naming_it(
    logs: Logs, path: str, query: dict[str, str], field: str
) -> None:
    assert_error(logs.get(path, **query), 400, "invalid_query", field)


def test_repeated_and_capped_parameters(logs: Logs) -> None:
    target = f"{LOGS}/search?limit=1&limit=2"
    assert_error(call(logs.edge.api_port, "GET", target, logs.admin), 400, "invalid_query", "limit")
    fill(logs.url, [entry(request_id=f"r{i}") for i in range(1200)])
    assert len(logs.entries("/search", limit=1000)) == 1000
    assert len(logs.entries("/search")) == 100  # the default
    assert len(logs.entries("/host/app.example.com", limit=1000, hours=48)) == 1000
