"""GET /metrics end to end: a real edge of two workers, a real Redis, real clients.

The scrape is parsed with prometheus-client's own parser and its numbers are checked
against the traffic sent; a worker killed with SIGKILL and restarted by the supervisor
leaves every counter where it was (never lower); 10,000 random Host headers add no series.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import ssl
import string
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    child_pids,
    free_port,
    proxy_doc,
    wait_for,
)

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(edge: EdgeProcess, port: int | None = None) -> Series:
    url = f"http://127.0.0.1:{port or edge.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = resp.read().decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def requests_of(series: Series, host: str) -> float:
    return sum(
        v
        for (name, labels), v in series.items()
        if name == "edge_requests_total" and ("host", host) in labels
    )


def call(port: int, method: str, host: str, path: str = "/") -> int:
    """One request on a connection of its own (so the kernel spreads them over workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def configured(edge: EdgeProcess, proxies: int) -> None:
    """Every worker serves ``proxies`` proxies (ten health answers in a row say so)."""
    wait_for(lambda: all(edge.health()["proxies"] == proxies for _ in range(10)), timeout=10)


def workers_of(edge: EdgeProcess) -> set[int]:
    assert edge.proc is not None
    return child_pids(edge.proc.pid, lambda argv: b"worker" in argv)


def test_a_scrape_counts_every_workers_traffic(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    dead = free_port()  # nothing listens there: connection refused, a 502
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    rdb.set("proxy:*.wild.test", proxy_doc("*.wild.test", upstream.url))
    rdb.set("proxy:down.test", proxy_doc("down.test", f"http://127.0.0.1:{dead}"))
    edge = edge_factory(EDGE_WORKERS=2, REQUEST_LOG="off")
    wait_for(lambda: value(scrape(edge), "edge_workers") == 2)
    configured(edge, 3)

    for _ in range(60):
        assert call(edge.http_port, "GET", "app.test") == 200
    for _ in range(5):
        assert call(edge.http_port, "POST", "App.Test", "/form") == 200
    for i in range(7):
        assert call(edge.http_port, "GET", f"n{i}.wild.test") == 200
    for _ in range(4):
        assert call(edge.http_port, "GET", "unknown.test") == 404
    for _ in range(3):
        assert call(edge.http_port, "GET", "down.test") == 502
    assert call(edge.http_port, "BREW", "app.test") == 501  # an odd method: OTHER

    # the other worker publishes within a second: wait for every share to be there
    def complete() -> Series | None:
        series = scrape(edge)
        sent = {"app.test": 66, "*.wild.test": 7, "down.test": 3}
        unknown = value(series, "edge_requests_total", host="other", method="GET", status="4xx")
        if unknown == 4 and all(requests_of(series, host) == n for host, n in sent.items()):
            return series
        return None

    series = wait_for(complete, timeout=10)
    req = "edge_requests_total"
    assert value(series, req, host="app.test", method="GET", status="2xx") == 60
    assert value(series, req, host="app.test", method="POST", status="2xx") == 5
    assert value(series, req, host="app.test", method="OTHER", status="5xx") == 1
    assert value(series, req, host="*.wild.test", method="GET", status="2xx") == 7
    assert value(series, req, host="down.test", method="GET", status="5xx") == 3
    assert value(series, req, host="other", method="GET", status="4xx") == 4
    assert not any(("host", "unknown.test") in labels for _, labels in series)
    # every exchange is in the histogram, each bucket cumulative
    hist = "edge_request_duration_seconds"
    assert value(series, hist + "_count", host="app.test") == 66
    assert value(series, hist + "_bucket", host="app.test", le="+Inf") == 66
    assert value(series, hist + "_bucket", host="app.test", le="0.001") <= value(
        series, hist + "_bucket", host="app.test", le="1.0"
    )
    assert 0 < value(series, hist + "_sum", host="app.test") < 66
    err = "edge_upstream_errors_total"
    assert value(series, err, upstream=f"127.0.0.1:{dead}", phase="connect", kind="error") == 3
    # both workers served some of the 80 connections, and their counts add up
    per_worker = [value(series, "edge_worker_requests_total", worker=w) for w in ("0", "1")]
    assert all(n > 0 for n in per_worker), per_worker
    assert value(series, "edge_workers") == 2
    assert value(series, "edge_redis_up") == 1
    assert value(series, "edge_config_rejected_keys") == 0
    assert value(series, "edge_config_applies_total") >= 1
    assert value(series, "edge_request_log_dropped_total") == 0
    assert value(series, "edge_tunnels_open") == 0
    assert ("edge_connections_open", frozenset({("listener", "plain")})) in series
    # the metrics are the API port's alone: not on a public listener
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=5)
    conn.request("GET", "/metrics", headers={"Host": "unknown.test"})
    assert conn.getresponse().status == 404
    conn.close()


def test_open_connections_by_listener(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    edge = edge_factory(EDGE_WORKERS=2, REQUEST_LOG="off")
    wait_for(lambda: value(scrape(edge), "edge_workers") == 2)
    base = value(scrape(edge), "edge_connections_open", listener="plain")
    held = [socket.create_connection(("127.0.0.1", edge.http_port)) for _ in range(6)]
    try:
        # every held connection is seen, whichever worker took it (+1: the scrape's own)
        wait_for(
            lambda: value(scrape(edge), "edge_connections_open", listener="plain") >= base + 6,
            timeout=10,
        )
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: value(scrape(edge), "edge_connections_open", listener="plain") <= base + 1,
        timeout=10,
    )


@pytest.mark.edge_errors("worker exited; restarting")
def test_counters_survive_a_worker_killed_and_restarted(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(EDGE_WORKERS=2, REQUEST_LOG="off")
    wait_for(lambda: value(scrape(edge), "edge_workers") == 2)
    configured(edge, 1)
    for _ in range(40):
        assert call(edge.http_port, "GET", "app.test") == 200
    wait_for(lambda: requests_of(scrape(edge), "app.test") == 40, timeout=10)
    before = scrape(edge)
    counters = {k: v for k, v in before.items() if k[0].endswith(("_total", "_bucket", "_count"))}

    victim = next(iter(workers_of(edge)))
    os.kill(victim, signal.SIGKILL)
    seen: list[float] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            series = scrape(edge)
        except (ConnectionError, http.client.RemoteDisconnected):
            # a connection queued on the killed worker's socket is reset with it
            continue
        seen.append(requests_of(series, "app.test"))
        # no counter ever goes back, whichever worker answers the scrape
        lower = {k: (v, series.get(k, 0.0)) for k, v in counters.items() if series.get(k, 0.0) < v}
        assert not lower, lower
        pids = workers_of(edge)
        if len(pids) == 2 and victim not in pids and value(series, "edge_workers") == 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the killed worker was not restarted")
    assert set(seen) == {40.0}
    # the restarted worker counts on top of its predecessor
    for _ in range(20):
        assert call(edge.http_port, "GET", "app.test") == 200
    wait_for(lambda: requests_of(scrape(edge), "app.test") == 60, timeout=10)


def test_random_hosts_do_not_grow_the_series(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(EDGE_WORKERS=2, REQUEST_LOG="off")
    wait_for(lambda: value(scrape(edge), "edge_workers") == 2)
    configured(edge, 1)
    rng = random.Random(17)

    def host() -> str:
        return "".join(rng.choices(string.ascii_lowercase + string.digits, k=16)) + ".test"

    # a first few unknown hosts make the "other" series exist on both workers
    for _ in range(20):
        assert call(edge.http_port, "GET", host()) == 404
    wait_for(lambda: requests_of(scrape(edge), "other") >= 20, timeout=10)
    before = scrape(edge)

    # 10,000 random Host headers over a few keep-alive connections
    sent = 0
    for _ in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
        for _ in range(1000):
            conn.request("GET", "/", headers={"Host": host()})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 404
            sent += 1
        conn.close()
    assert sent == 10_000
    after = wait_for(
        lambda: s if requests_of(s := scrape(edge), "other") >= 20 + sent else None, timeout=10
    )
    assert set(after) == set(before), set(after) ^ set(before)
    assert not any(("host", h) in labels for _, labels in after for h in ("", "unknown")), (
        "a client's Host became a label"
    )
    hosts = {dict(labels).get("host") for _, labels in after} - {None}
    assert hosts <= {"app.test", "other"}, hosts


def test_tls_handshakes_and_proxy_refusals(edge_factory: Callable[..., EdgeProcess]) -> None:
    https_port, proxy_port = free_port(), free_port()
    edge = edge_factory(
        EDGE_WORKERS=2,
        REQUEST_LOG="off",
        HTTPS_PORT=https_port,
        PROXY_PROTOCOL_PORT=proxy_port,
        PROXY_TRUSTED_CIDRS="127.0.0.0/8",
    )
    wait_for(lambda: value(scrape(edge), "edge_workers") == 2)
    for _ in range(3):  # plain HTTP to the TLS port: the handshake fails
        with socket.create_connection(("127.0.0.1", https_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            while sock.recv(4096):
                pass
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    held = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", https_port), timeout=5)
        tls = context.wrap_socket(raw, server_hostname="ok.test")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 ")
        held.append(tls)
    for _ in range(2):  # garbage where a PROXY header should be
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
            sock.sendall(b"HELLO THERE\r\n")
            sock.settimeout(5)
            while sock.recv(4096):
                pass
    try:

        def counted() -> bool:
            s = scrape(edge)
            return (
                value(s, "edge_tls_handshakes_total", result="failed") == 3
                and value(s, "edge_tls_handshakes_total", result="ok") == 2
                and value(s, "edge_proxy_header_refusals_total", reason="invalid_header") == 2
                and value(s, "edge_connections_open", listener="tls") == 2
            )

        wait_for(counted, timeout=10)
        s = scrape(edge)
        assert value(s, "edge_proxy_header_refusals_total", reason="untrusted_peer") == 0
    finally:
        for tls in held:
            tls.close()
    wait_for(lambda: value(scrape(edge), "edge_connections_open", listener="tls") == 0)


@pytest.mark.edge_errors()
def test_redis_outage_and_request_log_drops(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    rdb: redis.Redis,
    upstream: Upstream,
) -> None:
    """While Redis is away: edge_redis_up 0, the outage's length grows, the request log
    drops (counted); after: up again, the outage in the total, the counters kept."""
    rdb.set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(EDGE_WORKERS=2, LOG_BATCH_MS=20, LOG_QUEUE_SIZE=100)
    configured(edge, 1)
    wait_for(lambda: value(scrape(edge), "edge_redis_up") == 1)

    redis_db.stop()
    for _ in range(400):
        assert call(edge.http_port, "GET", "app.test") == 200

    def away() -> Series | None:
        s = scrape(edge)
        down = value(s, "edge_redis_up") == 0
        return s if down and value(s, "edge_redis_current_outage_seconds") >= 1 else None

    during = wait_for(away, timeout=15)

    def lost(s: Series) -> float:
        names = ("edge_request_log_dropped_total", "edge_request_log_failed_total")
        return sum(value(s, name) for name in names) + value(s, "edge_request_log_queue")

    # every entry of the outage dropped, lost with a failed batch or still queued
    wait_for(lambda: lost(scrape(edge)) >= 400, timeout=10)
    assert value(scrape(edge), "edge_request_log_dropped_total") > 0
    redis_db.start()
    after = wait_for(
        lambda: s if value(s := scrape(edge), "edge_redis_up") == 1 else None, timeout=20
    )
    assert value(after, "edge_redis_current_outage_seconds") == 0
    # (counted by worker 0 from its own once-a-second view: up to a second off the
    # current outage the answering worker showed)
    assert value(after, "edge_redis_outage_seconds_total") > 0
    assert requests_of(after, "app.test") == requests_of(during, "app.test") == 400
    assert value(after, "edge_request_log_dropped_total") > 0


def test_auth_outcomes_by_proxy(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis, upstream: Upstream
) -> None:
    """An external auth service lets ``Bearer good`` in, refuses ``Bearer bad`` (403) and
    challenges anything else (401); every check is counted under its proxy."""

    def decide(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        auth = req.headers.get("Authorization", "")
        if auth == "Bearer good":
            return 200, [], b""
        if auth == "Bearer bad":
            return 403, [], b"no"
        return 401, [("WWW-Authenticate", 'Bearer realm="t"')], b""

    checker = Upstream(decide)
    try:
        doc = {"auth_enabled": True, "auth_proxy": checker.url + "/check"}
        rdb.set("proxy:locked.test", proxy_doc("locked.test", upstream.url, **doc))
        rdb.set("proxy:open.test", proxy_doc("open.test", upstream.url))
        edge = edge_factory(EDGE_WORKERS=2, REQUEST_LOG="off")
        configured(edge, 2)

        def get(host: str, token: str | None) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
            headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
            conn.request("GET", "/", headers=headers)
            status = conn.getresponse().status
            conn.close()
            return status

        for token, status, n in (("good", 200, 5), ("bad", 403, 3), (None, 401, 4)):
            for _ in range(n):
                assert get("locked.test", token) == status
        assert get("open.test", None) == 200  # no check: no outcome

        def counted() -> Series | None:
            s = scrape(edge)
            total = sum(v for (name, _), v in s.items() if name == "edge_auth_requests_total")
            return s if total == 12 else None

        series = wait_for(counted, timeout=10)
        auth = "edge_auth_requests_total"
        assert value(series, auth, proxy="locked.test", outcome="allowed") == 5
        assert value(series, auth, proxy="locked.test", outcome="403") == 3
        assert value(series, auth, proxy="locked.test", outcome="401") == 4
    finally:
        checker.close()
