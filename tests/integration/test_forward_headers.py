"""Request and response headers across the proxy hop."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    http_request,
    parse_head,
    proxy_doc,
    wait_for,
)

HOST = "app.test"


def configure(redis_db: RedisServer, edge: EdgeProcess, target_url: str, **fields: object) -> None:
    redis_db.client().set(f"proxy:{HOST}", proxy_doc(HOST, target_url, **fields))
    edge.wait_generation(lambda h: h["proxies"] >= 1)


def parse(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    return status, headers, body


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def forwarded(edge: EdgeProcess, extra: str, path: str = "/h") -> list[tuple[str, str]]:
    """Send a GET with ``extra`` header lines; the echo upstream's view of the headers."""
    raw = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()
    status, _, body = parse(http_request(edge.http_port, raw))
    assert status == 200, body
    return [(k.lower(), v) for k, v in json.loads(body)["headers"]]


def test_hop_by_hop_request_headers_removed(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    configure(redis_db, edge, upstream.url)
    seen = forwarded(
        edge,
        "Connection: keep-alive, X-Foo\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "TE: trailers\r\n"
        "Trailer: X-Checksum\r\n"
        "Upgrade: websocket\r\n"
        "X-Foo: secret\r\n"
        "X-Kept: yes\r\n",
    )
    names = {k for k, _ in seen}
    for gone in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-foo"):
        assert gone not in names, (gone, seen)
    # whatever Connection header reaches the upstream is the edge's own, not the client's
    assert all("x-foo" not in v.lower() for v in values(seen, "connection"))
    assert values(seen, "x-kept") == ["yes"]


def test_forwarding_headers(edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream) -> None:
    configure(redis_db, edge, upstream.url)
    seen = forwarded(
        edge,
        "X-Forwarded-For: 1.2.3.4\r\n"
        "X-Real-IP: 6.6.6.6\r\n"
        "X-Forwarded-Proto: https\r\n"
        "X-Forwarded-Host: evil.test\r\n"
        "X-Forwarded-Port: 1\r\n",
    )
    assert values(seen, "x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
    assert values(seen, "x-real-ip") == ["127.0.0.1"]
    assert values(seen, "x-forwarded-proto") == ["http"]
    assert values(seen, "x-forwarded-host") == [HOST]
    assert values(seen, "x-forwarded-port") == [str(edge.http_port)]
    assert any("1.1 edge" in v for v in values(seen, "via"))
    assert values(seen, "host") == [HOST]


def test_x_forwarded_for_without_incoming_value(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    configure(redis_db, edge, upstream.url)
    seen = forwarded(edge, "")
    assert values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert values(seen, "x-real-ip") == ["127.0.0.1"]


def test_preserve_host_header_false_sends_target_authority(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    configure(redis_db, edge, upstream.url, preserve_host_header=False)
    seen = forwarded(edge, "")
    assert values(seen, "host") == [f"127.0.0.1:{upstream.port}"]
    assert values(seen, "x-forwarded-host") == [HOST]


def test_custom_request_headers_set_and_override(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    configure(
        redis_db,
        edge,
        upstream.url,
        custom_headers={"X-Env": "prod", "User-Agent": "edge-fixed", "X-Tenant": "acme"},
    )
    seen = forwarded(edge, "User-Agent: client/1.0\r\nX-Tenant: other\r\nX-Other: 1\r\n")
    assert values(seen, "x-env") == ["prod"]
    assert values(seen, "user-agent") == ["edge-fixed"]
    assert values(seen, "x-tenant") == ["acme"]
    assert values(seen, "x-other") == ["1"]


def _answer_with(
    headers: list[tuple[str, str]],
) -> Callable[[BaseHTTPRequestHandler], tuple[int, list[tuple[str, str]], bytes]]:
    def answer(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        return 200, headers, b"ok"

    return answer


def test_custom_response_headers_and_hop_by_hop_response_headers(
    edge: EdgeProcess, redis_db: RedisServer
) -> None:
    up = Upstream(
        _answer_with(
            [
                ("Connection", "x-secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("X-Frame-Options", "SAMEORIGIN"),
                ("X-App", "kept"),
            ]
        )
    )
    try:
        configure(
            redis_db,
            edge,
            up.url,
            custom_response_headers={"X-Frame-Options": "DENY", "X-Served-By": "edge-test"},
        )
        raw = http_request(edge.http_port, f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        status, headers, body = parse(raw)
        assert status == 200 and body == b"ok"
        names = {k for k, _ in headers}
        for gone in ("x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade"):
            assert gone not in names, (gone, headers)
        assert all("x-secret" not in v.lower() for v in values(headers, "connection"))
        assert values(headers, "x-frame-options") == ["DENY"]
        assert values(headers, "x-served-by") == ["edge-test"]
        assert values(headers, "x-app") == ["kept"]
        assert any("1.1 edge" in v for v in values(headers, "via"))
        assert len(up.requests) == 1
    finally:
        up.close()


def test_one_request_id_follows_the_request_across_edge_upstream_and_logs(
    edge: EdgeProcess, redis_db: RedisServer
) -> None:
    def answer(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        seen = [v for k, v in req.headers.items() if k.lower() == "x-request-id"]
        # an upstream that sets its own id does not get to replace the edge's
        return 200, [("X-Request-Id", "upstream-own")], json.dumps(seen).encode()

    up = Upstream(answer)
    try:
        configure(redis_db, edge, up.url)

        def exchange(extra: str, path: str) -> tuple[list[str], list[str], str]:
            raw = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()
            status, headers, body = parse(http_request(edge.http_port, raw))
            assert status == 200
            logged = wait_for(lambda: [r for r in edge.access_log() if r["path"] == path])
            return json.loads(body), values(headers, "x-request-id"), logged[0]["request_id"]

        # the client's id, when it is a sane token, is the one everybody sees
        upstream_saw, returned, logged = exchange("X-Request-Id: trace-42.a:b/c=\r\n", "/mine")
        assert upstream_saw == returned == [logged] == ["trace-42.a:b/c="]
        # none, or one that is not a sane token: the edge's own id, the same everywhere
        for extra, path in (
            ("", "/none"),
            ("X-Request-Id: has spaces in it\r\n", "/spaces"),
            (f"X-Request-Id: {'x' * 129}\r\n", "/long"),
            ("X-Request-Id: \r\n", "/empty"),
        ):
            upstream_saw, returned, logged = exchange(extra, path)
            assert upstream_saw == returned == [logged], (path, upstream_saw, returned, logged)
            assert logged not in ("has spaces in it", "x" * 129, "")
    finally:
        up.close()
