from __future__ import annotations

import json
import urllib.request

from tests.helpers import EdgeProcess, RedisServer, Upstream, proxy_doc, wait_for


def test_proxies_to_upstream_and_404s_unknown_host(
    edge: EdgeProcess, redis_db: RedisServer, upstream: Upstream
) -> None:
    redis_db.client().set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge.wait_generation(lambda h: h["proxies"] == 1)
    req = urllib.request.Request(
        f"http://127.0.0.1:{edge.http_port}/hello?x=1", headers={"Host": "app.test"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["path"] == "/hello?x=1"
    headers = {k.lower(): v for k, v in doc["headers"]}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == "app.test"
    req = urllib.request.Request(
        f"http://127.0.0.1:{edge.http_port}/", headers={"Host": "other.test"}
    )
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as err:
        assert err.code == 404
        body = json.loads(err.read())
        assert body["error"]["request_id"]
    wait_for(lambda: len(edge.access_log()) >= 2)
