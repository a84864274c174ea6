"""Several worker processes on one port (SO_REUSEPORT), and restart of a crashed worker."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    alive,
    child_pids,
    proxy_doc,
    wait_for,
)

HOST = "app.test"


def worker_pids(supervisor: int) -> set[int]:
    """Live ``edge worker`` processes whose parent is ``supervisor``."""
    return child_pids(supervisor, lambda argv: b"worker" in argv)


def get(port: int, path: str, host: str = HOST, timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def health_on_fresh_connection(edge: EdgeProcess) -> tuple[int, int]:
    doc = edge.health()
    return int(doc["worker"]), int(doc["pid"])


def test_two_workers_share_the_port(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    redis_db.client().set(f"proxy:{HOST}", proxy_doc(HOST, upstream.url))
    edge = edge_factory(EDGE_WORKERS=2)
    assert edge.proc is not None
    pids = wait_for(lambda: len(worker_pids(edge.proc.pid)) == 2 and worker_pids(edge.proc.pid))
    seen: dict[int, int] = {}

    def both_seen() -> bool:
        doc = edge.health()
        if doc["proxies"] == 1:
            seen[int(doc["worker"])] = int(doc["pid"])
        return len(seen) == 2

    wait_for(both_seen, timeout=20, interval=0)
    assert set(seen) == {0, 1}
    # the ids answering are the supervisor's children, each a distinct process
    assert set(seen.values()) == pids
    # both workers forward proxied traffic on the shared HTTP port: request ids carry a
    # per-process prefix, so the access log shows which process served each request
    prefixes: set[str] = set()

    def both_forward() -> bool:
        for i in range(10):
            assert get(edge.http_port, f"/n{i}")[0] == 200
        lines = [r for r in edge.access_log() if r["path"].startswith("/n")]
        assert all(r["status"] == 200 for r in lines)
        prefixes.update(r["request_id"][:8] for r in lines)
        return len(prefixes) == 2

    wait_for(both_forward, timeout=20, interval=0)


def test_workers_option_overrides_environment(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer
) -> None:
    edge = edge_factory("--workers", "2", EDGE_WORKERS=1)
    assert edge.proc is not None
    wait_for(lambda: len(worker_pids(edge.proc.pid)) == 2)
    seen: set[int] = set()

    def both_seen() -> bool:
        seen.add(health_on_fresh_connection(edge)[0])
        return seen == {0, 1}

    wait_for(both_seen, timeout=20, interval=0)


@pytest.mark.edge_errors(r'"worker exited; restarting","worker":0,"status":-9,')
def test_killed_worker_is_restarted_and_serving_continues(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer, upstream: Upstream
) -> None:
    redis_db.client().set(f"proxy:{HOST}", proxy_doc(HOST, upstream.url))
    edge = edge_factory(EDGE_WORKERS=2)
    assert edge.proc is not None
    supervisor = edge.proc.pid
    before = wait_for(lambda: len(worker_pids(supervisor)) == 2 and worker_pids(supervisor))
    seen: dict[int, int] = {}

    def both_ready() -> bool:
        doc = edge.health()
        if doc["proxies"] == 1:
            seen[int(doc["worker"])] = int(doc["pid"])
        return len(seen) == 2

    wait_for(both_ready, timeout=20, interval=0)

    results: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status, _ = get(edge.http_port, f"/load/{i}", timeout=5)
                results.append((time.monotonic(), status))
            except (OSError, http.client.HTTPException) as exc:
                results.append((time.monotonic(), type(exc).__name__))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(results) >= 20, timeout=10)
        victim = seen[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not alive(victim), timeout=5)

        def replaced() -> set[int] | bool:
            now = worker_pids(supervisor)
            return len(now) == 2 and victim not in now and now

        after = wait_for(replaced, timeout=15)
        assert after != before
        new_pid = next(iter(after - before))

        def new_worker_serves() -> bool:
            doc = edge.health()
            return doc["pid"] == new_pid and doc["worker"] == 0 and doc["proxies"] == 1

        wait_for(new_worker_serves, timeout=20, interval=0)
        served_after = len([r for r in results if r[0] > killed_at])
        wait_for(lambda: len([r for r in results if r[0] > killed_at]) >= served_after + 20)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert edge.proc.poll() is None, "the supervisor must survive a worker crash"
    failures = [r for r in results if r[1] != 200]
    # a sequential client loses at most the request in flight on the killed worker and one
    # connection the kernel had already queued on that worker's listening socket (a killed
    # process's accept queue is reset, unless net.ipv4.tcp_migrate_req=1)
    assert len(failures) <= 2, failures
    assert all(at >= killed_at - 0.5 for at, _ in failures), failures
    assert len([r for r in results if r[0] > killed_at and r[1] == 200]) >= 20
    assert '"worker exited; restarting"' in edge.stderr()
    assert edge.stop() == 0


def test_workers_exit_when_the_supervisor_is_killed(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer
) -> None:
    edge = edge_factory(EDGE_WORKERS=2)
    assert edge.proc is not None
    workers = wait_for(lambda: len(worker_pids(edge.proc.pid)) == 2 and worker_pids(edge.proc.pid))
    edge.proc.kill()
    edge.proc.wait(timeout=5)
    for pid in workers:
        wait_for(lambda pid=pid: not alive(pid), timeout=10)

    def refused() -> bool:
        try:
            get(edge.api_port, "/health", timeout=1)
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, timeout=5)


def test_workers_still_starting_exit_when_the_supervisor_is_killed(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer
) -> None:
    edge = edge_factory(EDGE_WORKERS=2, wait=False)
    assert edge.proc is not None
    supervisor = edge.proc.pid
    # kill as soon as both workers exist, while they are still importing and binding
    workers = wait_for(lambda: len(worker_pids(supervisor)) == 2 and worker_pids(supervisor))
    edge.proc.kill()
    edge.proc.wait(timeout=5)
    for pid in workers:
        wait_for(lambda pid=pid: not alive(pid), timeout=10)
