"""Logs: one JSON access line per request on stdout, other messages as JSON on stderr."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    free_port,
    proxy_doc,
    route_doc,
    wait_for,
)

ACCESS_FIELDS = {
    "time",
    "request_id",
    "client",
    "method",
    "host",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream",
    "route",
    "client_port",
}
# present when there is something to say: the upstream's answer time, the edge's error
# code, who the request acted as and its OAuth client
OPTIONAL_FIELDS = {"upstream_ms", "error", "user", "client_id", "auth", "upstream_phase"}
SECRET = "secret123"


def call(
    port: int,
    method: str,
    path: str,
    host: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def configure(redis_db: RedisServer, upstream: Upstream, dead_port: int) -> None:
    client = redis_db.client()
    client.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    client.set("proxy:dead.test", proxy_doc("dead.test", f"http://127.0.0.1:{dead_port}"))
    client.set("route:api", route_doc("api", "/api", "port", str(upstream.port)))


def one_line(edge: EdgeProcess, path: str) -> dict[str, Any]:
    lines = wait_for(lambda: [r for r in edge.access_log() if r["path"] == path], timeout=5)
    assert len(lines) == 1, lines
    return lines[0]  # type: ignore[no-any-return]


def stderr_records(edge: EdgeProcess) -> list[dict[str, Any]]:
    records = []
    for line in edge.stderr().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # every stderr line is a JSON object
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_access_log_line_per_request(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    dead = free_port()
    configure(redis_db, upstream, dead)
    edge.wait_generation(lambda h: h["proxies"] == 2 and h["routes"] == 1)
    before = dt.datetime.now(dt.UTC)

    status, _, body_ok = call(edge.http_port, "GET", "/plain?token=abc", "app.test")
    assert status == 200
    status, _, body_api = call(edge.http_port, "POST", "/api/items", "APP.test:80", b"hello world")
    assert status == 200
    status, headers_404, body_404 = call(edge.http_port, "GET", "/missing", "unknown.test")
    assert status == 404
    status, headers_502, body_502 = call(edge.http_port, "GET", "/down", "dead.test")
    assert status == 502

    plain = one_line(edge, "/plain")
    api = one_line(edge, "/api/items")
    missing = one_line(edge, "/missing")
    down = one_line(edge, "/down")
    after = dt.datetime.now(dt.UTC)

    for record in (plain, api, missing, down):
        assert ACCESS_FIELDS <= set(record) <= ACCESS_FIELDS | OPTIONAL_FIELDS, record
        assert isinstance(record["client_port"], int) and record["client_port"] > 0
        assert record["time"].endswith("Z")
        stamp = dt.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        assert before - dt.timedelta(seconds=1) <= stamp <= after + dt.timedelta(seconds=1)
        assert record["client"] == "127.0.0.1"
        assert isinstance(record["duration_ms"], int | float) and record["duration_ms"] >= 0
        assert isinstance(record["request_id"], str) and record["request_id"]
    assert len({r["request_id"] for r in (plain, api, missing, down)}) == 4
    assert plain["upstream_ms"] >= 0 and "error" not in plain
    assert missing["error"] and down["error"] and "upstream_ms" not in down
    assert down["upstream_phase"] == "connect" and "upstream_phase" not in plain

    assert plain["method"] == "GET" and plain["host"] == "app.test"
    assert (plain["status"], plain["bytes_in"], plain["bytes_out"]) == (200, 0, len(body_ok))
    assert plain["upstream"] == f"127.0.0.1:{upstream.port}" and plain["route"] == ""

    assert api["method"] == "POST" and api["host"] == "app.test"
    assert (api["status"], api["bytes_in"], api["bytes_out"]) == (200, 11, len(body_api))
    assert api["route"] == "api" and api["upstream"] == f"127.0.0.1:{upstream.port}"

    assert (missing["status"], missing["host"]) == (404, "unknown.test")
    assert missing["upstream"] == "" and missing["bytes_out"] == len(body_404)
    assert down["status"] == 502 and down["upstream"] == f"127.0.0.1:{dead}"

    # the id a client sees in an error response is the id of its log line
    for headers, body, record in ((headers_404, body_404, missing), (headers_502, body_502, down)):
        error = json.loads(body)["error"]
        assert error["request_id"] == headers["x-request-id"] == record["request_id"]

    # stdout carries access lines only
    lines = [line for line in edge.stdout().splitlines() if line.strip()]
    assert all(set(json.loads(line)) >= ACCESS_FIELDS for line in lines)
    assert len(lines) == len(edge.access_log())


def test_other_logs_go_to_stderr_as_json(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    dead = free_port()
    configure(redis_db, upstream, dead)
    edge = edge_factory(LOG_LEVEL="INFO")
    edge.wait_generation(lambda h: h["proxies"] == 2)
    status, headers, _ = call(edge.http_port, "GET", "/down", "dead.test")
    assert status == 502
    one_line(edge, "/down")
    wait_for(lambda: any(r["message"] == "request failed" for r in stderr_records(edge)))
    records = stderr_records(edge)
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["time"].endswith("Z")
        dt.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}
        assert "duration_ms" not in record  # access lines never go to stderr
    messages = {r["message"] for r in records}
    assert {"edge started", "worker serving"} <= messages
    assert any(r["level"] == "info" for r in records)
    failed = [r for r in records if r["message"] == "request failed"]
    assert failed[0]["level"] == "warning"
    assert failed[0]["request_id"] == headers["x-request-id"]
    assert failed[0]["status"] == 502
    assert all("worker" in r for r in records if r["logger"].startswith("edge.http"))


def test_log_level_warning_suppresses_info(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    dead = free_port()
    configure(redis_db, upstream, dead)
    edge = edge_factory(LOG_LEVEL="WARNING")
    edge.wait_generation(lambda h: h["proxies"] == 2)
    assert call(edge.http_port, "GET", "/down", "dead.test")[0] == 502
    assert call(edge.http_port, "GET", "/nowhere", "unknown.test")[0] == 404
    wait_for(lambda: any(r["message"] == "request failed" for r in stderr_records(edge)))
    edge.stop()
    records = stderr_records(edge)
    assert records
    assert all(r["level"] in {"warning", "error", "critical"} for r in records), records
    # the access log is not filtered by LOG_LEVEL
    assert {r["path"] for r in edge.access_log()} >= {"/down", "/nowhere"}


def _secret_requests(edge: EdgeProcess) -> None:
    auth = {"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}"}
    assert (
        call(edge.http_port, "GET", f"/ok?access_token={SECRET}", "app.test", None, auth)[0] == 200
    )
    assert call(edge.http_port, "GET", "/x", "unknown.test", None, auth)[0] == 404
    assert call(edge.http_port, "GET", "/y", "dead.test", None, auth)[0] == 502
    status, _, _ = call(edge.http_port, "POST", "/api/z", "app.test", SECRET.encode(), auth)
    assert status == 200
    assert call(edge.api_port, "GET", "/health", "localhost", None, auth)[0] == 200
    assert call(edge.api_port, "GET", f"/nope?token={SECRET}", "localhost", None, auth)[0] == 404


def test_secrets_never_reach_the_logs(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    dead = free_port()
    configure(redis_db, upstream, dead)
    edge = edge_factory(LOG_LEVEL="DEBUG")
    edge.wait_generation(lambda h: h["proxies"] == 2 and h["routes"] == 1)
    _secret_requests(edge)
    # the upstream did get the credentials: they were forwarded, not dropped
    assert any(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in upstream.requests)
    wait_for(
        lambda: {"/ok", "/x", "/y", "/api/z", "/nope"} <= {r["path"] for r in edge.access_log()}
    )
    edge.stop()
    assert SECRET not in edge.stdout()
    assert SECRET not in edge.stderr()


def test_malformed_authorization_header_is_not_logged(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    configure(redis_db, upstream, free_port())
    edge = edge_factory(LOG_LEVEL="INFO")
    edge.wait_generation(lambda h: h["proxies"] == 2)
    raw = f"GET /bad HTTP/1.1\r\nHost: app.test\r\nAuthorization : Bearer {SECRET}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=5) as sock:
        sock.sendall(raw.encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    wait_for(lambda: any(r["status"] == 400 for r in edge.access_log()))
    wait_for(lambda: any(r["message"] == "request failed" for r in stderr_records(edge)))
    edge.stop()
    assert SECRET not in edge.stdout()
    assert SECRET not in edge.stderr()
