"""``edge logs ...`` end to end: requests through a real edge land in its request log in a
real Redis (the edge's own writer, LOG_BATCH_MS=20), and the command line finds them,
follows new ones, shows the stats and clears the log."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.api_client import call
from tests.helpers import EdgeProcess, Upstream, wait_for
from tests.integration.test_client_cli import as_json, cli, cli_env, failed, ok, url

EdgeFactory = Any


@pytest.fixture
def logged(edge_factory: EdgeFactory, admin: str, tmp_path: Path) -> EdgeProcess:
    return edge_factory(ADMIN_TOKEN=admin, LOG_BATCH_MS=20)


@pytest.fixture
def env(logged: EdgeProcess, admin: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir()
    return cli_env(tmp_path, API_URL=url(logged), TOKEN=admin)


def through(edge: EdgeProcess, host: str, path: str, method: str = "GET") -> int:
    return call(edge.http_port, method, path, host=host).status


def entries(command: str, env: dict[str, str]) -> list[dict[str, Any]]:
    doc = as_json(cli(f"logs {command} -o json", env=env))
    assert isinstance(doc, list)
    return doc


def test_requests_through_the_edge_found_by_every_filter(
    logged: EdgeProcess, env: dict[str, str], upstream: Upstream, rdb: redis.Redis
) -> None:
    ok(cli(f"proxy create app.test --target {upstream.url}", env=env))
    wait_for(lambda: through(logged, "app.test", "/ready") == 200)
    assert through(logged, "app.test", "/users/42?secret=s3cr3t") == 200
    assert through(logged, "app.test", "/orders", method="POST") == 200
    unknown = through(logged, "nowhere.test", "/x")
    assert unknown >= 400
    found = wait_for(lambda: len(entries("--host app.test", env)) >= 3, timeout=5)
    assert found
    mine = entries("--host app.test", env)
    assert [e["path"] for e in mine[:3]] == ["/orders", "/users/42", "/ready"]
    first = mine[1]
    assert first["status"] == 200 and first["method"] == "GET" and first["host"] == "app.test"
    assert first["client_ip"] == "127.0.0.1" and isinstance(first["duration_ms"], float)
    assert first["key"].startswith("req:") and first["upstream"] == upstream.url.split("://")[
        1
    ].rstrip("/")
    # no query string anywhere in the log
    assert b"s3cr3t" not in b"".join(rdb.scan_iter()) + json.dumps(mine).encode()

    assert [e["path"] for e in entries("--host app.test --method post", env)] == ["/orders"]
    assert [e["path"] for e in entries("--host app.test --path /users", env)] == ["/users/42"]
    assert [e["status"] for e in entries(f"--status {unknown}", env)] == [unknown]
    assert entries(f"--status {str(unknown)[0]}xx --host nowhere.test", env)[0]["path"] == "/x"
    assert [e["host"] for e in entries("--errors", env)][:1] == ["nowhere.test"]
    assert len(entries("--ip 127.0.0.1 --limit 2", env)) == 2
    assert entries("--ip 192.0.2.1", env) == []
    assert entries("--host app.test --min-ms 3600000", env) == []
    assert entries("--slow --hours 2", env) == []
    # the command line's own calls are logged, by the token's name
    wait_for(lambda: entries("--user token:admin --path /api/v1/logs", env), timeout=5)

    table = ok(cli("logs --host app.test", env=env)).splitlines()
    assert table[0].split() == [
        "TIME",
        "STATUS",
        "METHOD",
        "HOST",
        "PATH",
        "MS",
        "CLIENT_IP",
        "USER",
    ]
    assert "POST" in table[1] and "/orders" in table[1] and "200" in table[1]
    rows = list(csv.DictReader(io.StringIO(ok(cli("logs --host app.test -o csv", env=env)))))
    assert rows[0]["path"] == "/orders" and rows[0]["status"] == "200"
    assert "path: /orders" in ok(cli("logs --host app.test -o yaml --limit 1", env=env))

    stats = as_json(cli("logs stats --hours 2 -o json", env=env))
    assert len(stats) == 2 and stats[0]["requests"] >= 4 and stats[0]["errors"] >= 1
    assert stats[0]["unique_ips"] == 1 and stats[0]["p50_ms"] > 0
    assert stats[1]["requests"] >= 0
    assert (
        as_json(cli("logs stats --hours 1 --host app.test -o json", env=env))[0]["unique_ips"] == 1
    )
    assert "P99_MS" in ok(cli("logs stats", env=env)).splitlines()[0]

    error = failed(cli("logs --limit 5000", env=env))
    assert error.startswith("edge: invalid limit (--limit): limit must be"), error
    error = failed(cli("logs --status 99", env=env))
    assert "--status" in error, error


def test_follow_prints_a_request_made_after_it_started(
    logged: EdgeProcess, env: dict[str, str], upstream: Upstream
) -> None:
    ok(cli(f"proxy create app.test --target {upstream.url}", env=env))
    wait_for(lambda: through(logged, "app.test", "/before") == 200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "logs", "follow", "--host", "app.test", "-o", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=env["HOME"],
    )
    try:
        time.sleep(1.5)  # its first call waits from the newest entry of the moment
        started = time.monotonic()
        assert through(logged, "app.test", "/after") == 200
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "nothing followed within 10 s"
        line = json.loads(proc.stdout.readline())
        took = time.monotonic() - started
        assert line["path"] == "/after" and line["host"] == "app.test", line
        assert took < 3, took
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0  # Ctrl-C ends it: not a failure
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_clear_asks_first_then_deletes_everything(
    logged: EdgeProcess, env: dict[str, str], upstream: Upstream, rdb: redis.Redis
) -> None:
    ok(cli(f"proxy create app.test --target {upstream.url}", env=env))
    wait_for(lambda: through(logged, "app.test", "/x") == 200)
    wait_for(lambda: entries("--host app.test", env), timeout=5)
    error = failed(cli("logs clear", env=env), 2)
    assert "--yes" in error
    assert entries("--host app.test", env)  # nothing deleted
    reader = as_json(cli("token create reader -o json", env=env))["token"]
    forbidden = failed(cli("logs clear --yes", env={**env, "TOKEN": reader}))
    assert "403" in forbidden
    assert "deleted the request log" in ok(cli("logs clear --yes", env=env))
    assert entries("--host app.test", env) == []
    # what is left is what was logged since (the command line's own calls)
    assert not rdb.exists("idx:req:host:app.test")
    assert all(rdb.hget(k, "host") != b"app.test" for k in rdb.scan_iter("req:*"))


def test_status_codes_coloured_only_on_a_terminal(
    logged: EdgeProcess, env: dict[str, str], upstream: Upstream
) -> None:
    ok(cli(f"proxy create app.test --target {upstream.url}", env=env))
    wait_for(lambda: through(logged, "app.test", "/x") == 200)
    through(logged, "nowhere.test", "/y")
    wait_for(lambda: len(entries("--hours 1", env)) >= 2, timeout=5)

    def on_a_terminal(command: str, **extra: str) -> str:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge", *shlex.split(command)],
                env={**env, "TERM": "xterm", **extra},
                stdout=follower,
                stderr=subprocess.DEVNULL,
            )
            os.close(follower)
            chunks = []
            while True:
                ready, _, _ = select.select([leader], [], [], 0.5)
                if ready:
                    try:
                        data = os.read(leader, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif proc.poll() is not None:
                    break
            assert proc.wait(timeout=30) == 0
            return b"".join(chunks).decode()
        finally:
            os.close(leader)

    coloured = on_a_terminal("logs --host app.test")
    assert "\x1b[32m200" in coloured, coloured
    errors = on_a_terminal("logs --host nowhere.test")
    assert "\x1b[33m4" in errors or "\x1b[31m5" in errors, errors
    assert "\x1b[" not in on_a_terminal("logs --host app.test", NO_COLOR="1")
    assert "\x1b[" not in ok(cli("logs --host app.test", env=env))  # piped


def test_follow_goes_on_across_a_restart_of_the_edge(
    logged: EdgeProcess, env: dict[str, str], upstream: Upstream
) -> None:
    """A follow outlives a restart of the edge it talks to: it says so once on stderr,
    tries again every few seconds, and prints what is logged once the edge is back. The
    edge's drain does not wait for a follow call to end (it answers it at once)."""
    ok(cli(f"proxy create app.test --target {upstream.url}", env=env))
    wait_for(lambda: through(logged, "app.test", "/before") == 200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "logs", "follow", "--host", "app.test", "-o", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=env["HOME"],
    )
    try:
        time.sleep(1.5)  # a follow call waits in the edge
        began = time.monotonic()
        assert logged.stop() == 0
        stopped_in = time.monotonic() - began
        assert stopped_in < 15, stopped_in  # not held by the follow call's 25 s wait
        time.sleep(3)  # the follow cannot reach the edge
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        logged.start()
        assert through(logged, "app.test", "/after-restart") == 200
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready:
            proc.kill()
            assert ready, proc.stderr.read() if proc.stderr else b""
        first = proc.stdout.readline()
        assert first, proc.stderr.read() if proc.stderr else b""
        line = json.loads(first)
        assert line["path"] == "/after-restart", line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        assert "following again every" in stderr and "edge: following again" in stderr, stderr
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
