"""The request log end to end: a real edge writes every exchange and event to a real Redis.

What each key holds and how it expires is tested against the writer alone
(test_reqlog_writer.py); here: what reaches Redis from real requests through the edge,
what never does (secrets), what happens while Redis is away (drops counted, no request
failed), and REQUEST_LOG=off.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from edge.store import keys
from tests.helpers import EdgeProcess, RedisServer, Upstream, free_port, proxy_doc, wait_for
from tests.integration.test_reqlog_writer import everything
from tests.integration.test_websocket_sse import WsUpstream

SECRET = "s3cr3t-VALUE-never-logged"


def call(
    port: int, method: str, path: str, host: str, headers: dict[str, str] | None = None
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def entries(rdb: redis.Redis) -> list[dict[str, str]]:
    out = []
    for key in rdb.scan_iter("req:*", count=1000):
        fields = {f.decode(): v.decode() for f, v in rdb.hgetall(key).items()}
        fields["key"] = key.decode()
        out.append(fields)
    return out


def logged(rdb: redis.Redis, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
    """The request log's entries once at least ``count`` are there."""
    return wait_for(lambda: found if len(found := entries(rdb)) >= count else None, timeout)  # type: ignore[no-any-return]


def request_log_health(edge: EdgeProcess) -> dict[str, Any]:
    service = edge.health()["background"]["request-log"]
    assert isinstance(service, dict)
    return service


def test_exchanges_reach_redis_with_their_details(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    rdb: redis.Redis,
    upstream: Upstream,
    admin: str,
) -> None:
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(ADMIN_TOKEN=admin, LOG_BATCH_MS=20, LOG_SLOW_MS=1)
    edge.wait_generation(lambda h: h["proxies"] == 1)

    assert call(edge.http_port, "GET", f"/users/42?token={SECRET}", "app.test") == 200
    headers = {"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}"}
    assert call(edge.http_port, "POST", "/form", "App.Test", headers) == 200
    assert call(edge.http_port, "GET", "/nowhere", "unknown.test") == 404
    # the admin API, as the admin token: logged with the token's name as its user
    auth = {"Authorization": f"Bearer {admin}"}
    assert call(edge.api_port, "GET", "/api/v1/tokens", "localhost", auth) == 200
    # refused before routing: a malformed request line
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=5) as sock:
        sock.sendall(b"GET /x?ticket=" + SECRET.encode() + b" HTTP/1.1 extra\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")

    found = logged(rdb, 5)
    by_path = {e["path"]: e for e in found}
    assert set(by_path) >= {"/users/42", "/form", "/nowhere", "/api/v1/tokens"}, by_path

    proxied = by_path["/users/42"]
    assert proxied["method"] == "GET" and proxied["host"] == "app.test"
    assert proxied["status"] == "200" and proxied["client_ip"] == "127.0.0.1"
    assert int(proxied["client_port"]) > 0
    assert proxied["upstream"] == f"127.0.0.1:{upstream.port}"
    assert float(proxied["upstream_ms"]) >= 0
    assert float(proxied["duration_ms"]) >= float(proxied["upstream_ms"])
    assert proxied["key"].startswith("req:") and proxied["key"].endswith(":127.0.0.1")
    assert proxied["worker"] == "0" and proxied["node"] == socket.gethostname()
    assert by_path["/form"]["host"] == "app.test"  # lowercased
    missing = by_path["/nowhere"]
    assert missing["status"] == "404" and missing["error"]
    assert "upstream" not in missing
    api = by_path["/api/v1/tokens"]
    assert api["user"] == "token:admin" and api["status"] == "200"
    bad = [e for e in found if e["status"] == "400"]
    assert len(bad) == 1 and bad[0]["error"]

    # the indexes name the request keys
    def index(key: str) -> set[str]:
        return {m.decode() for m in rdb.zrange(key, 0, -1)}

    assert proxied["key"] in index(keys.req_index_host("app.test"))
    assert proxied["key"] in index(keys.req_index_ip("127.0.0.1"))
    assert proxied["key"] in index(keys.req_index_status(200))
    assert proxied["key"] in index(keys.req_index_path("GET", "/users/{id}"))
    assert missing["key"] in index(keys.REQ_INDEX_ERRORS)
    assert api["key"] in index(keys.req_index_user("token:admin"))
    assert proxied["key"] in index(keys.REQ_INDEX_SLOW) or float(proxied["duration_ms"]) <= 1
    stream = [fields[b"key"].decode() for _id, fields in rdb.xrange(keys.REQ_STREAM)]
    assert set(stream) == {e["key"] for e in found}
    written = [
        key
        for pattern in ("req:*", "idx:req:*", "stats:*", keys.REQ_STREAM)
        for key in rdb.scan_iter(pattern)
    ]
    assert len(written) > 10
    for key in written:
        assert rdb.ttl(key) > 0, key  # everything expires

    blob = everything(rdb)
    assert SECRET.encode() not in blob
    assert admin.encode() not in blob
    assert b"Bearer" not in blob and b"session=" not in blob
    health = request_log_health(edge)
    assert health["dropped"] == 0 and health["failed"] == 0 and health["written"] >= 5


def test_tls_and_proxy_failures_are_events(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis
) -> None:
    https_port, proxy_port = free_port(), free_port()
    edge = edge_factory(
        HTTPS_PORT=https_port,
        PROXY_PROTOCOL_PORT=proxy_port,
        PROXY_TRUSTED_CIDRS="127.0.0.0/8",
        LOG_BATCH_MS=20,
    )
    # plain HTTP to the TLS port: the handshake fails
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        while sock.recv(4096):
            pass
    # a TLS handshake that succeeds is no event
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="ok.test") as tls,
    ):
        tls.sendall(b"GET /fine HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 ")
    # garbage where a PROXY header should be
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        sock.sendall(b"HELLO THERE\r\n")
        sock.settimeout(5)
        while sock.recv(4096):
            pass

    def events() -> list[dict[str, str]]:
        return [e for e in entries(rdb) if "event" in e]

    found = wait_for(lambda: e if len(e := events()) >= 2 else None, timeout=10)
    kinds = sorted(e["event"] for e in found)
    assert kinds == ["proxy_header_refused", "tls_handshake_failed"], found
    for event in found:
        assert event["status"] == "0" and event["client_ip"] == "127.0.0.1"
        assert int(event["client_port"]) > 0 and event["error"]
        assert event["key"] in {m.decode() for m in rdb.zrange(keys.REQ_INDEX_EVENTS, 0, -1)}
    # the request that followed the good handshake is a request, not an event
    fine = wait_for(lambda: [e for e in entries(rdb) if e.get("path") == "/fine"], timeout=10)
    assert fine[0]["sni"] == "ok.test"
    hour = time.strftime("%Y%m%d:%H", time.gmtime())
    assert rdb.get(keys.req_stats_requests(hour)) == b"1"  # events are not requests
    assert edge.health()["status"] in ("ok", "degraded")


@pytest.mark.edge_errors()
def test_redis_away_drops_and_counts_never_fails_a_request(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    rdb: redis.Redis,
    upstream: Upstream,
) -> None:
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(LOG_BATCH_MS=20, LOG_QUEUE_SIZE=100)
    edge.wait_generation(lambda h: h["proxies"] == 1)
    assert call(edge.http_port, "GET", "/before", "app.test") == 200
    wait_for(lambda: entries(rdb) or None, timeout=10)

    redis_db.stop()
    statuses = [call(edge.http_port, "GET", f"/during/{n}", "app.test") for n in range(400)]
    assert statuses == [200] * 400  # the last good config served every one
    health = wait_for(
        lambda: (
            h
            if (h := request_log_health(edge))["dropped"] > 0
            and h["dropped"] + h["failed"] + h["queued"] >= 400
            else None
        ),
        timeout=10,
    )
    # nothing written meanwhile: each entry was dropped (the queue full: its oldest went),
    # lost with a batch that failed, or waits in the queue (the newest 100 at most)
    assert health["written"] == 1
    assert health["queued"] <= 100
    assert health["redis"] == "unavailable"

    redis_db.start()
    assert call(edge.http_port, "GET", "/after", "app.test") == 200
    client = redis_db.client()
    wait_for(lambda: any(e["path"] == "/after" for e in entries(client)) or None, timeout=15)
    assert request_log_health(edge)["redis"] == "ok"


def test_request_log_off_writes_nothing(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(REQUEST_LOG="off", LOG_BATCH_MS=20)
    edge.wait_generation(lambda h: h["proxies"] == 1)
    for _ in range(5):
        assert call(edge.http_port, "GET", "/quiet", "app.test") == 200
    time.sleep(0.5)
    assert list(rdb.scan_iter("req:*")) == []
    assert rdb.exists(keys.REQ_STREAM) == 0
    assert "request-log" not in edge.health()["background"]


async def test_websocket_open_is_an_event_and_its_close_a_request(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis
) -> None:
    async with WsUpstream().serving() as up:
        rdb.set("proxy:app.test", proxy_doc("app.test", f"http://127.0.0.1:{up.port}"))
        edge = edge_factory(LOG_BATCH_MS=20)
        edge.wait_generation(lambda h: h["proxies"] == 1)
        async with connect(
            "ws://app.test/chat/7?token=" + SECRET,
            host="127.0.0.1",
            port=edge.http_port,
            proxy=None,
            open_timeout=10,
        ) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
            # while it is open: an event says so
            opened = await asyncio.to_thread(
                wait_for, lambda: [e for e in entries(rdb) if "event" in e], 10
            )
            assert [e["event"] for e in opened] == ["tunnel_opened"]
            assert opened[0]["status"] == "101" and opened[0]["path"] == "/chat/7"
            assert opened[0]["key"] in {
                m.decode() for m in rdb.zrange(keys.req_index_host("app.test"), 0, -1)
            }
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 5) == "hello"
        done = await asyncio.to_thread(
            wait_for, lambda: [e for e in entries(rdb) if "event" not in e], 10
        )
        assert len(done) == 1 and done[0]["status"] == "101"
        assert int(done[0]["bytes_out"]) > 0 and float(done[0]["duration_ms"]) > 0
        hour = time.strftime("%Y%m%d:%H", time.gmtime())
        assert rdb.get(keys.req_stats_requests(hour)) == b"1"
        assert SECRET.encode() not in everything(rdb)
