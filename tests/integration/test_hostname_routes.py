"""Routes with ``target_type: hostname`` forward to the proxy configured for that hostname,
inside the edge: its target, its headers and its auth apply, and nothing is dialled by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.helpers import EdgeProcess, RedisServer, Upstream, http_request, proxy_doc

EdgeFactory = Callable[..., EdgeProcess]


def named(
    name: str,
) -> Callable[[BaseHTTPRequestHandler], tuple[int, list[tuple[str, str]], bytes]]:
    def answer(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k.lower(): v for k, v in req.headers.items()}
        doc = {"upstream": name, "path": req.path, "headers": headers}
        return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()

    return answer


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    a, b = Upstream(named("a")), Upstream(named("b"))
    yield a, b
    a.close()
    b.close()


def route(route_id: str, path: str, target: str, **extra: Any) -> str:
    return json.dumps(
        {
            "route_id": route_id,
            "path_pattern": path,
            "target_type": "hostname",
            "target_value": target,
            "priority": 95,
            **extra,
        }
    )


def get(edge: EdgeProcess, host: str, path: str) -> tuple[int, dict[str, Any]]:
    raw = http_request(edge.http_port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_hostname_route_forwards_to_that_hosts_proxy(
    edge_factory: EdgeFactory, redis_db: RedisServer, upstreams: tuple[Upstream, Upstream]
) -> None:
    a, b = upstreams
    edge = edge_factory(CONFIG_RESYNC_INTERVAL=30)
    r = redis_db.client()
    r.set("proxy:a.test", proxy_doc("a.test", a.url))
    r.set(
        "proxy:b.test",
        proxy_doc("b.test", b.url + "/base", custom_headers={"X-Seen-By": "b-proxy"}),
    )
    r.set("proxy:locked.test", proxy_doc("locked.test", b.url, auth_enabled=True))
    r.set("proxy:guarded.test", proxy_doc("guarded.test", a.url, auth_enabled=True))
    r.set("route:to-b", route("to-b", "/to-b", "b.test"))
    r.set("route:to-locked", route("to-locked", "/to-locked", "locked.test"))
    r.set("route:to-nowhere", route("to-nowhere", "/to-nowhere", "127.0.0.1:9"))
    edge.wait_generation(lambda h: h["proxies"] >= 4 and h["routes"] >= 3)

    status, doc = get(edge, "a.test", "/to-b/x?q=1")
    assert status == 200, doc
    assert doc["upstream"] == "b"
    assert doc["path"] == "/base/to-b/x?q=1"  # b's target, base path included
    assert doc["headers"]["x-seen-by"] == "b-proxy"  # b's custom headers
    assert doc["headers"]["host"] == "a.test"  # b preserves the Host it was asked for
    # the other paths of a.test stay a.test's
    assert get(edge, "a.test", "/else")[1]["upstream"] == "a"
    # the global route matches on b.test too: no loop, b's own target
    status, doc = get(edge, "b.test", "/to-b/y")
    assert (status, doc["upstream"], doc["path"]) == (200, "b", "/base/to-b/y")

    # the target host's auth applies: it fails closed while no auth check is available
    status, doc = get(edge, "a.test", "/to-locked")
    assert status == 503, doc
    # and so does the auth of the host the request came in on: a route to an open host
    # never takes a request around its own host's check
    status, doc = get(edge, "guarded.test", "/to-b")
    assert status == 503, doc
    # a hostname with no proxy is a 502 from the edge, never a connection to that name
    status, doc = get(edge, "a.test", "/to-nowhere")
    assert status == 502, doc
    assert "not registered" in doc["error"]["message"], doc
