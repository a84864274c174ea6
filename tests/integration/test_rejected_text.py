"""The 404 and 502 of a host or service whose only value was rejected name the key."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable

from tests.helpers import EdgeProcess, RedisServer, Upstream, proxy_doc, wait_for


def answer(port: int, host: str, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_errors_name_the_rejected_key(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    r = redis_db.client()
    r.set("proxy:ok.test", proxy_doc("ok.test", upstream.url))
    r.set("proxy:web.test", json.dumps({"hostname": "web.test", "target": upstream.url}))
    r.set("proxy:*.wild.test", "{")
    route = {"route_id": "svc", "path_pattern": "/svc", "target_type": "service",
             "target_value": "billing"}  # fmt: skip
    r.set("route:svc", json.dumps(route))
    r.set("service:url:billing", "ftp://x")
    edge = edge_factory(EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=30)
    wait_for(lambda: len(edge.health()["rejected"]) == 3, timeout=5)
    status, body = answer(edge.http_port, "web.test")
    assert status == 404 and "rejected" in body and "proxy:web.test" in body, body
    status, body = answer(edge.http_port, "a.wild.test")
    assert status == 404 and "proxy:*.wild.test" in body, body
    status, body = answer(edge.http_port, "nothing.test")
    assert status == 404 and "no proxy is configured" in body, body
    status, body = answer(edge.http_port, "ok.test", "/svc")
    assert status == 502 and "service:url:billing" in body, body
