"""Redis going away and coming back: the last good configuration keeps serving."""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from edge.store import keys
from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    free_port,
    proxy_doc,
    require_tool,
    route_doc,
    tagged_upstreams,
    wait_for,
)
from tests.integration.test_live_config import (
    per_worker,
    propagate,
    served_by,
    stderr_records,
)

WORKERS = 2
RECONNECT_LIMIT = 7.0  # reconnect backoff is capped at 5 s


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    with tagged_upstreams("A", "B") as servers:
        yield servers


def keys_besides_the_log(r: redis.Redis) -> int:
    """The keys in Redis but the request log's (which the edge writes for every request,
    the ones queued during an outage included, once Redis is back)."""
    return sum(
        1 for k in r.scan_iter(count=1000) if not k.decode().startswith(keys.REQ_LOG_PREFIXES)
    )


def messages(edge: EdgeProcess, text: str) -> list[dict[str, object]]:
    return [rec for rec in stderr_records(edge) if text in str(rec.get("message"))]


def logged_by_every_worker(edge: EdgeProcess, text: str) -> bool:
    return {rec.get("worker") for rec in messages(edge, text)} >= set(range(WORKERS))


def all_workers(edge: EdgeProcess, pred: Callable[[dict[str, Any]], bool]) -> bool:
    return all(pred(h) for h in per_worker(edge, WORKERS).values())


def test_outage_keeps_serving_and_restart_empty_does_not_wipe(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:live.test", proxy_doc("live.test", upstreams["A"].url))
    r.set("route:b", route_doc("b", "/b", "port", str(upstreams["B"].port)))
    edge = edge_factory(EDGE_WORKERS=WORKERS, CONFIG_RESYNC_INTERVAL=30)
    port = edge.http_port
    assert all_workers(edge, lambda h: h["status"] == "ok" and h["proxies"] == 1)
    keep = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    keep.request("GET", "/", headers={"Host": "live.test"})
    assert keep.getresponse().read()

    redis_db.stop()
    wait_for(
        lambda: all_workers(edge, lambda h: h["redis"]["connected"] is False),
        timeout=5,
    )
    for h in per_worker(edge).values():
        assert h["status"] == "degraded"
        assert h["redis"]["error"]
        assert h["proxies"] == 1 and h["routes"] == 1
    answers = [served_by(port, "live.test", "/x") for _ in range(100)]
    answers += [served_by(port, "live.test", "/b/1") for _ in range(20)]
    assert answers == ["A"] * 100 + ["B"] * 20
    assert served_by(port, "nope.test") == 404
    for _ in range(10):  # the keep-alive connection opened before the outage still works
        keep.request("GET", "/", headers={"Host": "live.test"})
        resp = keep.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["upstream"] == "A"
    wait_for(lambda: logged_by_every_worker(edge, "redis unavailable"), timeout=5)

    # Redis comes back empty (no persistence): the routing table must survive
    redis_db.start()
    wait_for(
        lambda: all_workers(edge, lambda h: h["redis"]["connected"] is True),
        timeout=RECONNECT_LIMIT,
        interval=0.1,
    )
    assert keys_besides_the_log(r) == 0  # nothing rewritten (the request log aside)
    for h in per_worker(edge).values():
        assert h["proxies"] == 1 and h["routes"] == 1
        assert h["status"] == "ok"
    assert [served_by(port, "live.test", "/x") for _ in range(50)] == ["A"] * 50
    assert [served_by(port, "live.test", "/b") for _ in range(10)] == ["B"] * 10
    wait_for(lambda: logged_by_every_worker(edge, "keeping the last good configuration"), 5)
    kept = messages(edge, "keeping the last good configuration")
    assert all(rec.get("keys_served") == 2 for rec in kept)

    # notifications work again on the restarted server: a new key applies within 1 s
    propagate(
        edge,
        lambda: r.set("proxy:new.test", proxy_doc("new.test", upstreams["B"].url)),
        lambda: served_by(port, "new.test") == "B",
        lambda now, before: now["proxies"] == before["proxies"] + 1,
    )
    assert [served_by(port, "new.test") for _ in range(16)] == ["B"] * 16
    # an explicit DEL still applies
    propagate(
        edge,
        lambda: r.delete("proxy:new.test"),
        lambda: served_by(port, "new.test") == 404,
        lambda now, before: now["proxies"] == before["proxies"] - 1,
    )
    keep.close()


def write_dump(workdir: Path, values: dict[str, str]) -> Path:
    """Write ``values`` into ``workdir/dump.rdb`` with a separate, short-lived redis-server."""
    binary = require_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--dbfilename", "dump.rdb"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, socket_timeout=5)
        wait_for(client.ping, timeout=10)
        client.mset(values)
        client.save()
    finally:
        proc.kill()
        proc.wait()
    return workdir / "dump.rdb"


def test_config_changed_while_disconnected_is_caught_up_on_reconnect(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:old.test", proxy_doc("old.test", upstreams["A"].url))
    r.set("proxy:gone.test", proxy_doc("gone.test", upstreams["A"].url))
    edge = edge_factory(EDGE_WORKERS=WORKERS, CONFIG_RESYNC_INTERVAL=30)
    port = edge.http_port
    assert served_by(port, "old.test") == "A"
    assert served_by(port, "gone.test") == "A"

    redis_db.stop()
    wait_for(
        lambda: all_workers(edge, lambda h: h["redis"]["connected"] is False),
        timeout=5,
    )
    # Redis comes back with other content (restored from elsewhere) before any worker can
    # see it: the reconnect resync must apply the difference, deletions included.
    dump = write_dump(
        redis_db.workdir,
        {
            "proxy:old.test": proxy_doc("old.test", upstreams["B"].url),
            "proxy:back.test": proxy_doc("back.test", upstreams["B"].url),
        },
    )
    try:
        redis_db.start()
    finally:
        dump.unlink()  # later restarts of the shared server must come back empty
    assert keys_besides_the_log(r) == 2

    wait_for(
        lambda: all_workers(
            edge,
            lambda h: h["redis"]["connected"] is True and h["proxies"] == 2,
        ),
        timeout=RECONNECT_LIMIT,
        interval=0.1,
    )
    assert [served_by(port, "back.test") for _ in range(16)] == ["B"] * 16
    assert [served_by(port, "old.test") for _ in range(16)] == ["B"] * 16
    assert [served_by(port, "gone.test") for _ in range(16)] == [404] * 16
    # and it is subscribed again: a live SET applies within a second
    propagate(
        edge,
        lambda: r.set("proxy:more.test", proxy_doc("more.test", upstreams["A"].url)),
        lambda: served_by(port, "more.test") == "A",
        lambda now, before: now["proxies"] == before["proxies"] + 1,
    )


def test_edge_started_while_redis_is_down_picks_up_config_later(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    redis_db.stop()
    edge = edge_factory(EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=30)
    h = edge.health()
    assert h["status"] == "degraded"
    assert h["redis"]["connected"] is False
    assert h["proxies"] == 0
    assert served_by(edge.http_port, "late.test") == 404
    assert messages(edge, "starting without configuration")

    redis_db.start()
    redis_db.client().set("proxy:late.test", proxy_doc("late.test", upstreams["A"].url))
    wait_for(
        lambda: served_by(edge.http_port, "late.test") == "A",
        timeout=RECONNECT_LIMIT,
        interval=0.05,
    )
    wait_for(lambda: edge.health()["status"] == "ok", timeout=2)
