"""Ten thousand proxies: loaded at start, routed correctly, and still updated key by key."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from edge.config.snapshot import Snapshot, apply
from edge.routing.router import Router
from edge.routing.table import compile_table
from tests.helpers import EdgeProcess, RedisServer, Upstream, proxy_doc, tagged_upstreams, wait_for
from tests.integration.test_live_config import per_worker, propagate, served_by

COUNT = 10_000
WORKERS = 2


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    with tagged_upstreams("A", "B", "W") as servers:
        yield servers


def host(i: int) -> str:
    return f"h{i}.scale.test"


def test_ten_thousand_proxies_load_route_and_update_live(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    a, b, w = upstreams["A"], upstreams["B"], upstreams["W"]
    pipe = r.pipeline(transaction=False)
    for i in range(COUNT):
        # the first and the last go to B, the rest to A
        url = b.url if i in (0, COUNT - 1) else a.url
        pipe.set(f"proxy:{host(i)}", proxy_doc(host(i), url))
    pipe.set("proxy:*.wild.scale.test", proxy_doc("*.wild.scale.test", w.url))
    pipe.execute()
    assert r.dbsize() == COUNT + 1

    edge = edge_factory(EDGE_WORKERS=WORKERS, CONFIG_RESYNC_INTERVAL=30)
    port = edge.http_port
    wait_for(
        lambda: all(h["proxies"] == COUNT + 1 for h in per_worker(edge, WORKERS).values()),
        timeout=60,
        interval=0.2,
    )
    assert all(not h["rejected"] for h in per_worker(edge, WORKERS).values())

    for _ in range(4):
        assert served_by(port, host(0)) == "B"
        assert served_by(port, host(COUNT - 1)) == "B"
        assert served_by(port, host(COUNT // 2)) == "A"
        assert served_by(port, "deep.x.wild.scale.test") == "W"
        assert served_by(port, f"h{COUNT}.scale.test") == 404

    # one more proxy applies within a second with 10,000 loaded (incremental apply)
    extra = f"h{COUNT}.scale.test"
    propagate(
        edge,
        lambda: r.set(f"proxy:{extra}", proxy_doc(extra, w.url)),
        lambda: served_by(port, extra) == "W",
        lambda now, before: now["proxies"] == before["proxies"] + 1,
    )
    # and a change to an existing one
    propagate(
        edge,
        lambda: r.set(f"proxy:{host(1)}", proxy_doc(host(1), b.url)),
        lambda: served_by(port, host(1)) == "B",
        lambda now, before: now["generation"] > before["generation"],
    )

    # a burst of 1,000 deletions (one notification each) is applied completely
    pipe = r.pipeline(transaction=False)
    for i in range(2000, 3000):
        pipe.delete(f"proxy:{host(i)}")
    pipe.execute()
    left = COUNT + 2 - 1000  # with the wildcard and the extra one
    wait_for(
        lambda: all(h["proxies"] == left for h in per_worker(edge, WORKERS).values()),
        timeout=10,
        interval=0.1,
    )
    for i in (2000, 2500, 2999):
        assert served_by(port, host(i)) == 404
    for i in (1999, 3000):
        assert served_by(port, host(i)) == "A"
    assert served_by(port, extra) == "W"


# ---------------------------------------------------------------------------
# lookup cost, measured and printed (not asserted)
# ---------------------------------------------------------------------------


def router_with(count: int) -> Router:
    updates: dict[str, bytes | None] = {
        f"proxy:{host(i)}": proxy_doc(host(i), f"http://127.0.0.1:{1000 + i % 5000}").encode()
        for i in range(count)
    }
    updates["proxy:*.wild.scale.test"] = proxy_doc(
        "*.wild.scale.test", "http://127.0.0.1:999"
    ).encode()
    updates["route:api"] = json.dumps(
        {"route_id": "api", "path_pattern": "/api", "target_type": "port", "target_value": "7000"}
    ).encode()
    snap = apply(Snapshot(), updates)
    assert not snap.rejected
    assert snap.proxy_count == count + 1
    return compile_table(snap)


def median_lookup_ns(router: Router, hosts: list[str], rounds: int = 2000) -> float:
    samples = []
    for n in range(rounds):
        name = hosts[n % len(hosts)]
        t0 = time.perf_counter_ns()
        found = router.find_proxy(name)
        assert found is not None
        router.resolve(found, "/api/x" if n % 2 else "/page", b"GET")
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


@pytest.mark.parametrize("count", [10, COUNT])
def test_lookup_cost_with_many_proxies(count: int) -> None:
    router = router_with(count)
    last = host(count - 1)
    for name, port in ((host(0), 1000), (last, 1000 + (count - 1) % 5000)):
        found = router.find_proxy(name)
        assert found is not None and found.hostname == name
        res = router.resolve(found, "/page", b"GET")
        assert res.route is None and res.target is not None and res.target.port == port
        res = router.resolve(found, "/api/v1", b"GET")
        assert res.route is not None and res.route.route_id == "api"
        assert res.target is not None and res.target.port == 7000
    wild = router.find_proxy("a.b.wild.scale.test")
    assert wild is not None and wild.hostname == "*.wild.scale.test"
    assert router.find_proxy("unknown.scale.test") is None
    hosts = [host(0), last, host(count // 2), "a.b.wild.scale.test"]
    median = median_lookup_ns(router, hosts)
    print(f"\nfind_proxy+resolve with {count} proxies: median {median / 1000:.2f} us")
