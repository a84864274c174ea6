"""Live configuration: raw Redis edits reach every worker within a second, bad keys are reported."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import (
    ROOT,
    EdgeProcess,
    RedisServer,
    Upstream,
    child_pids,
    free_port,
    proxy_doc,
    require_tool,
    route_doc,
    tagged_upstreams,
    wait_for,
)

WORKERS = 2
PROPAGATION_LIMIT = 1.0  # seconds from the redis write to the change being served
POLL = 0.02


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    with tagged_upstreams("A", "B", "C") as servers:
        yield servers


def fetch(port: int, host: str, path: str = "/", method: str = "GET") -> tuple[int, bytes]:
    """One request on a fresh connection (so SO_REUSEPORT spreads them over workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def served_by(port: int, host: str, path: str = "/") -> str | int:
    """The upstream tag that answered, or the edge's status code when no upstream did."""
    status, body = fetch(port, host, path)
    if status == 200:
        tag = json.loads(body).get("upstream")
        if isinstance(tag, str):
            return tag
    return status


def health(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        return json.loads(resp.read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def per_worker(edge: EdgeProcess, workers: int = WORKERS, timeout: float = 10.0) -> dict[int, Any]:
    """The latest /health of every worker (fresh connections until each one has answered)."""
    seen: dict[int, Any] = {}

    def all_seen() -> bool:
        h = health(edge.api_port)
        seen[h["worker"]] = h
        return len(seen) == workers

    wait_for(all_seen, timeout=timeout, interval=0.005)
    return seen


def propagate(
    edge: EdgeProcess,
    write: Callable[[], object],
    sees: Callable[[], bool],
    worker_ok: Callable[[dict[str, Any], dict[str, Any]], bool],
    workers: int = WORKERS,
) -> float:
    """Run ``write``; require a request and every worker to show the change within 1 s.

    ``worker_ok(health_now, health_before)`` tells whether one worker has applied it.
    Returns the time to the first request that saw the change.
    """
    before = per_worker(edge, workers)
    t0 = time.monotonic()
    write()
    first_request: float | None = None
    applied: dict[int, float] = {}
    deadline = t0 + 5 * PROPAGATION_LIMIT
    while time.monotonic() < deadline:
        if first_request is None and sees():
            first_request = time.monotonic() - t0
        h = health(edge.api_port)
        if h["worker"] not in applied and worker_ok(h, before[h["worker"]]):
            applied[h["worker"]] = time.monotonic() - t0
        if first_request is not None and len(applied) == workers:
            break
        time.sleep(POLL)
    assert first_request is not None, "the change was never served"
    assert first_request <= PROPAGATION_LIMIT, f"first request saw it after {first_request:.3f}s"
    assert len(applied) == workers, f"only workers {sorted(applied)} applied it"
    slowest = max(applied.values())
    assert slowest <= PROPAGATION_LIMIT, f"a worker applied it after {slowest:.3f}s: {applied}"
    return first_request


def newer(now: dict[str, Any], before: dict[str, Any]) -> bool:
    return bool(now["generation"] > before["generation"])


def all_fresh(port: int, host: str, expected: str | int, path: str = "/", n: int = 16) -> None:
    """``n`` requests on fresh connections (spread over the workers) all answered as expected."""
    got = [served_by(port, host, path) for _ in range(n)]
    assert got == [expected] * n


def stderr_records(edge: EdgeProcess) -> list[dict[str, Any]]:
    records = []
    for line in edge.stderr().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def start_edge(factory: Callable[..., EdgeProcess], **env: Any) -> EdgeProcess:
    edge = factory(EDGE_WORKERS=WORKERS, CONFIG_RESYNC_INTERVAL=30, **env)
    per_worker(edge)  # both workers are up and answering
    return edge


# ---------------------------------------------------------------------------
# SET / DEL / replace, on every worker, without dropping keep-alive connections
# ---------------------------------------------------------------------------


def test_set_replace_and_delete_reach_every_worker(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:keep.test", proxy_doc("keep.test", upstreams["C"].url))
    edge = start_edge(edge_factory)
    port = edge.http_port
    all_fresh(port, "keep.test", "C")
    assert served_by(port, "a.test") == 404

    # a keep-alive connection opened before any change
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Host": "keep.test"})
    first = conn.getresponse()
    assert json.loads(first.read())["upstream"] == "C"
    assert not first.will_close
    sock = conn.sock

    def on_kept(host: str) -> str | int:
        conn.request("GET", "/k", headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        assert not resp.will_close, "the edge closed a keep-alive connection"
        assert conn.sock is sock, "the keep-alive connection was replaced"
        return json.loads(body)["upstream"] if resp.status == 200 else resp.status

    # SET: a new proxy becomes routable
    propagate(
        edge,
        lambda: r.set("proxy:a.test", proxy_doc("a.test", upstreams["A"].url)),
        lambda: served_by(port, "a.test") == "A",
        lambda now, before: now["proxies"] == before["proxies"] + 1,
    )
    all_fresh(port, "a.test", "A")
    assert wait_for(lambda: on_kept("a.test") == "A", timeout=1.0, interval=POLL)

    # SET replacing target_url
    propagate(
        edge,
        lambda: r.set("proxy:a.test", proxy_doc("a.test", upstreams["B"].url)),
        lambda: served_by(port, "a.test") == "B",
        newer,
    )
    all_fresh(port, "a.test", "B")
    assert wait_for(lambda: on_kept("a.test") == "B", timeout=1.0, interval=POLL)

    # DEL: 404 within a second
    propagate(
        edge,
        lambda: r.delete("proxy:a.test"),
        lambda: served_by(port, "a.test") == 404,
        lambda now, before: now["proxies"] == before["proxies"] - 1,
    )
    all_fresh(port, "a.test", 404)
    assert wait_for(lambda: on_kept("a.test") == 404, timeout=1.0, interval=POLL)

    # the untouched proxy kept serving, on fresh and on the old connection
    all_fresh(port, "keep.test", "C")
    assert on_kept("keep.test") == "C"
    conn.close()
    assert edge.proc is not None and edge.proc.poll() is None


def test_keep_alive_connection_sees_changes_of_its_own_host(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:ka.test", proxy_doc("ka.test", upstreams["A"].url))
    edge = start_edge(edge_factory)
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=5)
    answers: list[str] = []

    def ask() -> str:
        conn.request("GET", "/", headers={"Host": "ka.test"})
        resp = conn.getresponse()
        tag = json.loads(resp.read())["upstream"]
        assert resp.status == 200 and not resp.will_close
        answers.append(tag)
        return str(tag)

    assert ask() == "A"
    sock = conn.sock
    for name in ("B", "C", "A"):
        r.set("proxy:ka.test", proxy_doc("ka.test", upstreams[name].url))

        def switched(name: str = name) -> bool:
            return ask() == name

        wait_for(switched, timeout=PROPAGATION_LIMIT, interval=POLL)
        assert conn.sock is sock
    # every answer came from a configured upstream, in the order they were configured
    order = [a for i, a in enumerate(answers) if i == 0 or answers[i - 1] != a]
    assert order == ["A", "B", "C", "A"]
    conn.close()


# ---------------------------------------------------------------------------
# EXPIRE, PEXPIRE, RENAME
# ---------------------------------------------------------------------------


def test_expiry_and_rename(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:exp.test", proxy_doc("exp.test", upstreams["A"].url))
    r.set("proxy:pexp.test", proxy_doc("pexp.test", upstreams["B"].url))
    r.set("proxy:stay.test", proxy_doc("stay.test", upstreams["C"].url))
    edge = start_edge(edge_factory)
    port = edge.http_port
    all_fresh(port, "exp.test", "A")
    all_fresh(port, "pexp.test", "B")

    # EXPIRE: serves until the key expires, then 404
    assert r.expire("proxy:exp.test", 1)
    assert served_by(port, "exp.test") == "A"
    wait_for(lambda: r.exists("proxy:exp.test") == 0, timeout=5)
    gone = time.monotonic()
    wait_for(lambda: served_by(port, "exp.test") == 404, timeout=PROPAGATION_LIMIT)
    assert time.monotonic() - gone <= PROPAGATION_LIMIT + 0.1
    wait_for(lambda: all(h["proxies"] == 2 for h in per_worker(edge).values()), timeout=1.0)

    # PEXPIRE: expiry noticed by Redis itself (nobody reads the key)
    assert r.pexpire("proxy:pexp.test", 200)
    t0 = time.monotonic()
    wait_for(lambda: served_by(port, "pexp.test") == 404, timeout=0.2 + 1.0)
    assert time.monotonic() - t0 >= 0.15  # it did serve until the key expired
    # one worker answered 404; each worker hears the expiry on its own subscription
    wait_for(lambda: all(h["proxies"] == 1 for h in per_worker(edge).values()), timeout=1.0)
    all_fresh(port, "pexp.test", 404)

    # SET ... PX: a key written with a TTL appears, then disappears
    r.set("proxy:ttl.test", proxy_doc("ttl.test", upstreams["A"].url), px=700)
    wait_for(lambda: served_by(port, "ttl.test") == "A", timeout=PROPAGATION_LIMIT)
    wait_for(lambda: served_by(port, "ttl.test") == 404, timeout=0.7 + 1.0)

    # RENAME of a temporary key holding a valid document onto a proxy key
    r.set("tmp:x", proxy_doc("x.test", upstreams["B"].url))
    propagate(
        edge,
        lambda: r.rename("tmp:x", "proxy:x.test"),
        lambda: served_by(port, "x.test") == "B",
        lambda now, before: now["proxies"] == before["proxies"] + 1,
    )
    all_fresh(port, "x.test", "B")

    # RENAME of a proxy key to another host: the old host goes, the new key is rejected
    # (its hostname field names the old host)
    propagate(
        edge,
        lambda: r.rename("proxy:x.test", "proxy:y.test"),
        lambda: served_by(port, "x.test") == 404,
        lambda now, before: (
            now["proxies"] == before["proxies"] - 1 and "proxy:y.test" in now["rejected"]
        ),
    )
    assert served_by(port, "y.test") == 404
    message = per_worker(edge)[0]["rejected"]["proxy:y.test"]
    assert "hostname" in message

    # RENAME of a route key: the route stops matching at once
    r.set("route:old", route_doc("old", "/r", "port", str(upstreams["A"].port)))
    wait_for(lambda: served_by(port, "stay.test", "/r/1") == "A", timeout=PROPAGATION_LIMIT)
    propagate(
        edge,
        lambda: r.rename("route:old", "route:new"),
        lambda: served_by(port, "stay.test", "/r/1") == "C",
        lambda now, before: (
            now["routes"] == before["routes"] - 1 and "route:new" in now["rejected"]
        ),
    )
    assert "route_id" in per_worker(edge)[1]["rejected"]["route:new"]
    # RENAME of a valid route document onto its key
    r.set("tmp:route", route_doc("fresh", "/f", "port", str(upstreams["B"].port)))
    propagate(
        edge,
        lambda: r.rename("tmp:route", "route:fresh"),
        lambda: served_by(port, "stay.test", "/f") == "B",
        lambda now, before: now["routes"] == before["routes"] + 1,
    )
    all_fresh(port, "stay.test", "B", path="/f")
    all_fresh(port, "stay.test", "C", path="/r/1")


# ---------------------------------------------------------------------------
# routes and services
# ---------------------------------------------------------------------------


def test_routes_and_services_change_live(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    a, b, c = upstreams["A"], upstreams["B"], upstreams["C"]
    r.set("proxy:app.test", proxy_doc("app.test", a.url))
    r.set("proxy:other.test", proxy_doc("other.test", a.url))
    edge = start_edge(edge_factory)
    port = edge.http_port
    all_fresh(port, "app.test", "A", path="/api/x")

    # a global route added live
    propagate(
        edge,
        lambda: r.set("route:api", route_doc("api", "/api", "port", str(b.port))),
        lambda: served_by(port, "app.test", "/api/x") == "B",
        lambda now, before: now["routes"] == before["routes"] + 1,
    )
    all_fresh(port, "other.test", "B", path="/api/x")
    all_fresh(port, "app.test", "A", path="/web")

    # a higher-priority route scoped to one proxy
    propagate(
        edge,
        lambda: r.set(
            "route:api-app",
            route_doc(
                "api-app",
                "/api",
                "url",
                c.url,
                priority=90,
                scope="proxy",
                proxy_hostnames=["app.test"],
            ),
        ),
        lambda: served_by(port, "app.test", "/api/x") == "C",
        lambda now, before: now["routes"] == before["routes"] + 1,
    )
    all_fresh(port, "other.test", "B", path="/api/x")

    # the scoped route disabled by a SET, then the global route deleted
    disabled = route_doc(
        "api-app", "/api", "url", c.url, priority=90, scope="proxy",
        proxy_hostnames=["app.test"], enabled=False,
    )  # fmt: skip
    propagate(
        edge,
        lambda: r.set("route:api-app", disabled),
        lambda: served_by(port, "app.test", "/api/x") == "B",
        newer,
    )
    propagate(
        edge,
        lambda: r.delete("route:api"),
        lambda: served_by(port, "app.test", "/api/x") == "A",
        lambda now, before: now["routes"] == before["routes"] - 1,
    )
    all_fresh(port, "other.test", "A", path="/api/x")

    # a service route: unregistered (502), then service:url, retargeted, then external
    r.set("route:svc", route_doc("svc", "/svc", "service", "billing"))
    wait_for(lambda: served_by(port, "app.test", "/svc") == 502, timeout=PROPAGATION_LIMIT)
    propagate(
        edge,
        lambda: r.set("service:url:billing", b.url),
        lambda: served_by(port, "app.test", "/svc") == "B",
        lambda now, before: now["services"] == before["services"] + 1,
    )
    all_fresh(port, "app.test", "B", path="/svc")
    propagate(
        edge,
        lambda: r.set("service:url:billing", f" {c.url}/base \n"),
        lambda: served_by(port, "app.test", "/svc") == "C",
        newer,
    )
    status, body = fetch(port, "app.test", "/svc/item")
    assert status == 200 and json.loads(body)["path"] == "/base/svc/item"
    external = json.dumps({"service_name": "billing", "target_url": a.url})
    r.set("service:external:billing", external)
    wait_for(
        lambda: all(h["services"] == 2 for h in per_worker(edge).values()),
        timeout=PROPAGATION_LIMIT,
    )
    all_fresh(port, "app.test", "C", path="/svc")  # service:url wins over external
    propagate(
        edge,
        lambda: r.delete("service:url:billing"),
        lambda: served_by(port, "app.test", "/svc") == "A",
        lambda now, before: now["services"] == before["services"] - 1,
    )
    all_fresh(port, "app.test", "A", path="/svc")

    # route_mode changed on the proxy: none turns every route off
    r.set("route:api", route_doc("api", "/api", "port", str(b.port)))
    wait_for(lambda: served_by(port, "app.test", "/api") == "B", timeout=PROPAGATION_LIMIT)
    propagate(
        edge,
        lambda: r.set("proxy:app.test", proxy_doc("app.test", c.url, route_mode="none")),
        lambda: served_by(port, "app.test", "/api") == "C",
        newer,
    )
    all_fresh(port, "app.test", "C", path="/svc")
    all_fresh(port, "other.test", "B", path="/api")


# ---------------------------------------------------------------------------
# a regex route cannot stall the worker
# ---------------------------------------------------------------------------

# Python's re tries about 2**n ways to split n 'a's over this pattern's groups before it
# gives up on the '!' (a 26-byte path took 2.4 s; this one would take minutes). A
# linear-time engine answers at once.
EVIL_PATTERN = "^/(a+)+$"
EVIL_PATH = "/" + "a" * 28 + "!"
STALL_LIMIT = 1.0  # seconds for the evil request and another host's request together


def test_a_backtracking_regex_route_does_not_stall_other_hosts(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:evil.test", proxy_doc("evil.test", upstreams["A"].url))
    r.set("proxy:calm.test", proxy_doc("calm.test", upstreams["B"].url))
    edge = edge_factory(EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=30)  # one worker to stall
    port = edge.http_port
    r.set(
        "route:evil",
        route_doc(
            "evil", EVIL_PATTERN, "url", upstreams["C"].url,
            is_regex=True, scope="proxy", proxy_hostnames=["evil.test"],
        ),
    )  # fmt: skip
    wait_for(lambda: served_by(port, "evil.test", "/aaa") == "C", timeout=PROPAGATION_LIMIT)

    def ask(host: str, path: str, answers: dict[str, object]) -> None:
        # a bounded wait: on a stalled worker this times out instead of hanging the test
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3 * STALL_LIMIT)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            answers[host] = json.loads(resp.read())["upstream"]
        except OSError as exc:
            answers[host] = exc
        finally:
            conn.close()

    answers: dict[str, object] = {}
    t0 = time.monotonic()
    evil = threading.Thread(target=ask, args=("evil.test", EVIL_PATH, answers))
    evil.start()
    time.sleep(0.1)  # the evil request reaches the worker first
    ask("calm.test", "/", answers)
    evil.join()
    elapsed = time.monotonic() - t0
    assert answers == {"calm.test": "B", "evil.test": "A"}, answers
    assert elapsed <= STALL_LIMIT, f"both answered after {elapsed:.2f}s"


# ---------------------------------------------------------------------------
# invalid values
# ---------------------------------------------------------------------------


def run_check(redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edge", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        check=False,
    )


def test_bad_values_are_reported_and_skipped(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    a, b = upstreams["A"], upstreams["B"]
    r.set("proxy:good.test", proxy_doc("good.test", a.url))
    r.set("proxy:fixme.test", proxy_doc("fixme.test", a.url))
    # a hash where a document belongs, present when the edge starts
    r.hset("proxy:hash0.test", mapping={"hostname": "hash0.test", "target_url": a.url})
    edge = start_edge(edge_factory)
    port = edge.http_port
    for h in per_worker(edge).values():
        assert h["status"] == "degraded"
        assert set(h["rejected"]) == {"proxy:hash0.test"}
        assert "holds a hash" in h["rejected"]["proxy:hash0.test"]
        assert h["proxies"] == 2
    all_fresh(port, "hash0.test", 404)
    first = run_check(redis_db.url)
    assert first.returncode != 0
    assert "1 problem(s)" in first.stdout, first.stdout
    r.delete("proxy:hash0.test")
    wait_for(
        lambda: all(h["status"] == "ok" for h in per_worker(edge).values()),
        timeout=PROPAGATION_LIMIT,
    )
    assert run_check(redis_db.url).returncode == 0

    bad_field = proxy_doc("bad.test", b.url, colour="blue")
    wrong_type = json.dumps({"hostname": "fixme.test", "target_url": a.url, "enabled": "yes"})
    r.hset("tmp:hash", mapping={"hostname": "hash.test", "target_url": a.url})

    def write_bad() -> None:
        pipe = r.pipeline(transaction=True)
        pipe.set("proxy:bad.test", bad_field)
        pipe.set("proxy:fixme.test", wrong_type)
        # a hash renamed onto a config key (HSET on one is covered by the test above)
        pipe.rename("tmp:hash", "proxy:hash.test")
        pipe.execute()

    propagate(
        edge,
        write_bad,
        lambda: "proxy:fixme.test" in health(edge.api_port)["rejected"],
        lambda now, before: len(now["rejected"]) == 3,
    )
    for h in per_worker(edge).values():
        assert h["status"] == "degraded"
        rejected = h["rejected"]
        assert set(rejected) == {"proxy:bad.test", "proxy:fixme.test", "proxy:hash.test"}
        assert "colour" in rejected["proxy:bad.test"]
        assert "enabled" in rejected["proxy:fixme.test"]
        assert "holds a hash" in rejected["proxy:hash.test"]
        assert h["proxies"] == 2
    # the good proxy keeps serving, and so does the last good value of fixme.test; the
    # keys that never held a good value are not served
    all_fresh(port, "good.test", "A")
    all_fresh(port, "fixme.test", "A")
    all_fresh(port, "bad.test", 404)
    all_fresh(port, "hash.test", 404)

    # each worker logged each rejected key
    def logged() -> bool:
        seen = {
            (rec.get("worker"), rec.get("key"))
            for rec in stderr_records(edge)
            if rec.get("message") == "config key rejected"
        }
        keys = ("proxy:bad.test", "proxy:fixme.test", "proxy:hash.test")
        return all((w, k) in seen for w in range(WORKERS) for k in keys)

    wait_for(logged, timeout=5)
    errors = {
        rec["key"]: rec["error"]
        for rec in stderr_records(edge)
        if rec.get("message") == "config key rejected"
    }
    assert "colour" in errors["proxy:bad.test"]
    assert "enabled" in errors["proxy:fixme.test"]

    # edge check lists every problem and fails
    result = run_check(redis_db.url)
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 3, result.stdout
    by_key = {line.split()[1].rstrip(":"): line for line in lines}
    assert "'colour'" in by_key["proxy:bad.test"]
    assert "'enabled'" in by_key["proxy:fixme.test"]
    assert "hash" in by_key["proxy:hash.test"]
    assert "3 problem(s)" in result.stdout

    # fixing, deleting and re-typing clear the rejections
    def repair() -> None:
        pipe = r.pipeline(transaction=True)
        pipe.set("proxy:fixme.test", proxy_doc("fixme.test", b.url))
        pipe.delete("proxy:bad.test")
        pipe.delete("proxy:hash.test")
        pipe.set("proxy:hash.test", proxy_doc("hash.test", b.url))
        pipe.execute()

    propagate(
        edge,
        repair,
        lambda: served_by(port, "fixme.test") == "B",
        lambda now, before: not now["rejected"] and now["status"] == "ok",
    )
    all_fresh(port, "hash.test", "B")
    all_fresh(port, "good.test", "A")
    assert run_check(redis_db.url).returncode == 0


def test_a_bad_write_keeps_the_last_good_value_serving(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    a, b, c = upstreams["A"], upstreams["B"], upstreams["C"]
    good = {
        "proxy:web.test": proxy_doc("web.test", a.url),
        "proxy:*.wild.test": proxy_doc("*.wild.test", a.url),
        "route:api": route_doc("api", "/api", "port", str(b.port)),
        "route:svc": route_doc("svc", "/svc", "service", "billing"),
        "route:ext": route_doc("ext", "/ext", "service", "partner"),
        "service:url:billing": c.url,
        "service:external:partner": json.dumps({"service_name": "partner", "target_url": b.url}),
    }
    r.mset(good)
    edge = start_edge(edge_factory)
    port = edge.http_port
    served = {("web.test", "/"): "A", ("x.wild.test", "/"): "A", ("web.test", "/api"): "B",
              ("web.test", "/svc"): "C", ("web.test", "/ext"): "B"}  # fmt: skip

    def all_served() -> None:
        for (host, path), tag in served.items():
            all_fresh(port, host, tag, path, n=6)

    all_served()
    bad = {
        # two unknown fields (a typo among them) and a bad URL: three problems
        "proxy:web.test": json.dumps(
            {"hostname": "web.test", "tagret_url": a.url, "target_url": "ftp://x", "colour": 1}
        ),
        "proxy:*.wild.test": proxy_doc("*.wild.test", a.url)[:-1] + ",}",  # trailing comma
        "route:api": route_doc("api", "/api", "port", str(b.port), priority="high"),
        "route:svc": route_doc("svc", "/svc", "service", "billing", methods="GET"),
        "service:url:billing": "ftp://billing",
        "service:external:partner": json.dumps({"service_name": "partner", "target_url": 5}),
    }
    propagate(
        edge,
        lambda: r.mset(bad),
        lambda: set(bad) <= set(health(edge.api_port)["rejected"]),
        lambda now, before: set(bad) <= set(now["rejected"]),
    )
    all_served()  # every worker keeps serving every last good value
    for h in per_worker(edge).values():
        assert h["status"] == "degraded"
        assert (h["proxies"], h["routes"], h["services"]) == (2, 3, 2)
        message = h["rejected"]["proxy:web.test"]
        for words in ("'tagret_url'", "'colour'", "'target_url': must be an http"):
            assert words in message, message
    logged = [
        rec for rec in stderr_records(edge)
        if rec.get("message") == "config key rejected" and rec.get("key") == "route:api"
    ]  # fmt: skip
    assert logged and all(rec["action"] == "last good value kept" for rec in logged), logged

    result = run_check(redis_db.url)
    assert result.returncode != 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    web = [line for line in lines if line.startswith("error: proxy:web.test: ")]
    assert len(web) == 3, result.stdout  # every problem of the document, one a line
    assert f"{len(lines)} problem(s)" in result.stdout
    assert {line.split()[1].rstrip(":") for line in lines} == set(bad)

    # a key whose value never was good is not served
    r.set("proxy:new.test", json.dumps({"hostname": "new.test", "target": a.url}))
    wait_for(lambda: "proxy:new.test" in health(edge.api_port)["rejected"], timeout=1.0)
    all_fresh(port, "new.test", 404, n=4)

    # DEL forgets both the rejected value and the last good one
    propagate(
        edge,
        lambda: r.delete("proxy:web.test", "route:api", "proxy:new.test"),
        lambda: served_by(port, "web.test") == 404,
        lambda now, before: not {"proxy:web.test", "route:api"} & set(now["rejected"]),
    )
    all_fresh(port, "web.test", 404, n=4)
    all_fresh(port, "x.wild.test", "A", "/api", n=4)  # route:api gone: the proxy's target
    # a good value replaces the kept one
    propagate(
        edge,
        lambda: r.set("service:url:billing", b.url),
        lambda: served_by(port, "x.wild.test", "/svc") == "B",
        lambda now, before: "service:url:billing" not in now["rejected"],
    )


LAST_GOOD_KEY = "edge:config:last-good"


def test_a_worker_started_after_a_bad_write_serves_the_last_good_value(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:web.test", proxy_doc("web.test", upstreams["A"].url))
    r.set("proxy:other.test", proxy_doc("other.test", upstreams["A"].url))
    r.set("service:url:billing", upstreams["B"].url)
    r.set("route:svc", route_doc("svc", "/svc", "service", "billing"))
    first = edge_factory(EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=30)
    all_fresh(first.http_port, "web.test", "A", n=4)
    r.set("proxy:web.test", proxy_doc("web.test", upstreams["C"].url, colour="red"))
    r.set("service:url:billing", "ftp://nope")
    wait_for(lambda: len(first.health()["last_good"]) == 2, timeout=PROPAGATION_LIMIT)
    # another node (or a restarted worker) never saw the good values: it is told them
    second = edge_factory(EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=30)
    for edge in (first, second):
        all_fresh(edge.http_port, "web.test", "A", n=4)
        all_fresh(edge.http_port, "web.test", "B", "/svc", n=4)
        h = edge.health()
        assert h["last_good"] == ["proxy:web.test", "service:url:billing"], h
        assert set(h["rejected"]) == {"proxy:web.test", "service:url:billing"}
    # a DEL forgets the rejected value and the last good one, for every node
    r.delete("proxy:web.test")
    for edge in (first, second):
        wait_for(lambda edge=edge: served_by(edge.http_port, "web.test") == 404, timeout=1.0)
    wait_for(lambda: r.hkeys(LAST_GOOD_KEY) == [b"service:url:billing"], timeout=1.0)
    r.set("proxy:web.test", proxy_doc("web.test", upstreams["C"].url, colour="red"))
    third = edge_factory(EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=30)
    for edge in (first, second, third):
        all_fresh(edge.http_port, "web.test", 404, n=4)
    # a good value replaces the shared one
    r.set("service:url:billing", upstreams["C"].url)
    for edge in (first, second, third):
        wait_for(lambda edge=edge: served_by(edge.http_port, "other.test", "/svc") == "C", 1.0)
    wait_for(lambda: r.hkeys(LAST_GOOD_KEY) == [], timeout=1.0)


def test_without_notifications_a_bad_value_keeps_the_last_good_one(
    edge_factory: Callable[..., EdgeProcess],
    redis_without_config: int,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis.Redis(port=redis_without_config, socket_timeout=5)
    r.set("proxy:web.test", proxy_doc("web.test", upstreams["A"].url))
    # (a resync finding no config key at all is not applied)
    r.set("proxy:other.test", proxy_doc("other.test", upstreams["B"].url))
    edge = edge_factory(
        redis_url=f"redis://127.0.0.1:{redis_without_config}/0",
        EDGE_WORKERS=WORKERS,
        CONFIG_RESYNC_INTERVAL=1,
    )
    port = edge.http_port
    wait_for(lambda: all(h["proxies"] == 2 for h in per_worker(edge).values()), timeout=5.0)
    all_fresh(port, "web.test", "A", n=6)
    r.set("proxy:web.test", '{"hostname": "web.test", "target_url": 8080}')
    # applied by the full resync, every second
    wait_for(
        lambda: all(h["last_good"] == ["proxy:web.test"] for h in per_worker(edge).values()),
        timeout=3.0,
    )
    all_fresh(port, "web.test", "A", n=6)
    r.delete("proxy:web.test")
    wait_for(lambda: all(h["rejected"] == {} for h in per_worker(edge).values()), timeout=3.0)
    all_fresh(port, "web.test", 404, n=6)


def test_a_key_of_another_type_is_reported_at_once(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    upstreams: dict[str, Upstream],
) -> None:
    r = redis_db.client()
    r.set("proxy:good.test", proxy_doc("good.test", upstreams["A"].url))
    edge = start_edge(edge_factory)
    port = edge.http_port
    wrong = {
        "proxy:h.test": ("hash", lambda: r.hset("proxy:h.test", "a", "b")),
        "route:y": ("list", lambda: r.rpush("route:y", "x", "z")),
        "service:url:s": ("set", lambda: r.sadd("service:url:s", "http://127.0.0.1:1")),
        "service:external:z": ("zset", lambda: r.zadd("service:external:z", {"m": 1})),
        "cert:c": ("stream", lambda: r.xadd("cert:c", {"f": "v"})),
    }
    for key, (kind, write) in wrong.items():
        # well before the next full resync (30 s): on the keyspace notification
        propagate(
            edge,
            write,
            lambda: served_by(port, "good.test") == "A",
            lambda now, before, key=key: key in now["rejected"],  # type: ignore[misc]
        )
        for h in per_worker(edge).values():
            assert f"holds a {kind}" in h["rejected"][key], h["rejected"]
            assert h["status"] == "degraded"
    # index keys next to the routes are not config documents, whatever their type
    r.zadd("route:priority:50", {"y": 1})
    r.hset("route:unique:/x", "a", "b")
    result = run_check(redis_db.url)
    assert result.returncode != 0
    for key, (kind, _) in wrong.items():
        assert f"error: {key}: holds a {kind}, expected a string" in result.stdout, result.stdout
    assert f"{len(wrong)} problem(s)" in result.stdout, result.stdout
    # deleted: the reports go, on the notification too
    propagate(
        edge,
        lambda: r.delete(*wrong),
        lambda: served_by(port, "good.test") == "A",
        lambda now, before: not now["rejected"] and now["status"] == "ok",
    )
    assert all(h["rejected"] == {} for h in per_worker(edge).values())


# ---------------------------------------------------------------------------
# keyspace notifications unavailable
# ---------------------------------------------------------------------------


@pytest.fixture
def redis_without_config(tmp_path: Path) -> Iterator[int]:
    """A redis-server on which CONFIG is disabled and notify-keyspace-events stays off."""
    binary = require_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--rename-command", "CONFIG", '""'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: redis.Redis(port=port, socket_timeout=5).ping(), timeout=10)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_without_notifications_changes_apply_at_resync(
    edge_factory: Callable[..., EdgeProcess],
    redis_without_config: int,
    upstreams: dict[str, Upstream],
) -> None:
    port_r = redis_without_config
    r = redis.Redis(port=port_r, socket_timeout=5)
    with pytest.raises(redis.ResponseError):
        r.config_get("notify-keyspace-events")
    r.set("proxy:first.test", proxy_doc("first.test", upstreams["A"].url))
    edge = edge_factory(
        redis_url=f"redis://127.0.0.1:{port_r}/0", EDGE_WORKERS=1, CONFIG_RESYNC_INTERVAL=1
    )
    port = edge.http_port
    all_fresh(port, "first.test", "A", n=4)
    h = edge.health()
    assert h["redis"]["connected"] is True
    assert h["redis"]["notifications"] is False

    t0 = time.monotonic()
    r.set("proxy:late.test", proxy_doc("late.test", upstreams["B"].url))
    wait_for(lambda: served_by(port, "late.test") == "B", timeout=2.5)
    assert time.monotonic() - t0 <= 2.5
    r.delete("proxy:first.test")
    wait_for(lambda: served_by(port, "first.test") == 404, timeout=2.5)

    warnings = [
        rec
        for rec in stderr_records(edge)
        if "notifications could not be enabled" in str(rec.get("message"))
    ]
    assert warnings, edge.stderr()
    assert "CONFIG" in warnings[0]["error"].upper()
    assert "unknown command" in warnings[0]["error"].lower()


def _workers(supervisor: int) -> set[int]:
    return child_pids(supervisor, lambda argv: b"worker" in argv)


def test_a_reload_reads_every_key_again_in_every_worker(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstreams: dict[str, Upstream]
) -> None:
    """SIGHUP (systemctl reload): keys changed while keyspace notifications were off are
    served at once, not at the next periodic resync; no worker restarts."""
    edge = edge_factory(EDGE_WORKERS=WORKERS, CONFIG_RESYNC_INTERVAL=300)
    r = redis_db.client()
    r.set("proxy:before.test", proxy_doc("before.test", upstreams["A"].url))
    wait_for(lambda: served_by(edge.http_port, "before.test") == "A", timeout=5)
    assert edge.proc is not None
    pid = edge.proc.pid
    wait_for(lambda: len(_workers(pid)) == WORKERS)
    workers = _workers(pid)
    # every worker has made its first full read (it says so before it serves)
    wait_for(lambda: edge.stderr().count('"message":"worker serving"') == WORKERS, timeout=10)
    r.config_set("notify-keyspace-events", "")  # a managed Redis that drops them
    r.set("proxy:quiet.test", proxy_doc("quiet.test", upstreams["B"].url))
    time.sleep(1.5)
    assert served_by(edge.http_port, "quiet.test") == 404  # nothing told the workers
    edge.signal(signal.SIGHUP)
    # every worker: several fresh connections, spread by SO_REUSEPORT
    wait_for(
        lambda: all(served_by(edge.http_port, "quiet.test") == "B" for _ in range(8)),
        timeout=10,  # well under the 300 s of the periodic resync, even on a loaded machine
    )
    assert _workers(pid) == workers
    assert "reload: every worker resyncs" in edge.stderr()
