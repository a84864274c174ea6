"""What ``edge serve`` writes: the console format on a terminal (a real pty), JSON
otherwise, and health checks from loopback or trusted PROXY peers kept out of the access
log (``ACCESS_LOG_SKIP_PATHS``)."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, EdgeProcess, RedisServer, Upstream, free_port, proxy_doc, wait_for

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ACCESS_LINE = re.compile(
    r"^\S+Z 200 GET app\.test/tty-(?P<n>\d) [\d.]+ms \d+B/\d+B 127\.0\.0\.1 -> \S+ id=\S+$"
)


def get(port: int, path: str, host: str = "app.test", head: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            head + f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


class TerminalEdge:
    """``edge serve`` with stdout and stderr on the terminal end of a pty."""

    def __init__(self, redis: RedisServer, workdir: Path, **env: str) -> None:
        self.edge = EdgeProcess(redis.url, workdir, **env)
        master, slave = os.openpty()
        self.master = master
        self.edge.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "serve"],
            env=self.edge.env,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            cwd=str(ROOT),
        )
        os.close(slave)
        self.output = ""

    def read_until(self, pattern: re.Pattern[str], timeout: float = 10.0) -> str:
        """Everything read so far, once a line (colours removed) matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [ANSI.sub("", line) for line in self.output.splitlines()]
            if any(pattern.search(line) for line in lines):
                return self.output
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line matching {pattern.pattern!r} in:\n{self.output}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the edge exited: no more output
                    data = b""
                if not data:
                    pytest.fail(f"edge exited; output:\n{self.output}")
                self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> None:
        self.edge.stop(timeout=10)
        os.close(self.master)


@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
def test_console_format_is_the_default_on_a_terminal(
    redis_db: RedisServer, upstream: Upstream, tmp_path: Path, no_color: bool
) -> None:
    redis_db.client().set("proxy:app.test", proxy_doc("app.test", upstream.url))
    env = {"NO_COLOR": "1"} if no_color else {}
    term = TerminalEdge(redis_db, tmp_path, TERM="xterm", **env)
    try:
        term.read_until(re.compile(r" INF worker serving .*logger=edge\.worker worker=0$"))
        assert get(term.edge.http_port, "/tty-1").startswith(b"HTTP/1.1 200")
        out = term.read_until(ACCESS_LINE)
    finally:
        term.close()
    assert "{" not in "".join(
        line for line in out.splitlines() if ACCESS_LINE.search(ANSI.sub("", line))
    )
    if no_color:
        assert "\x1b[" not in out
    else:
        assert "\x1b[32m200\x1b[0m" in out  # the status, in green
        assert "\x1b[32mINF\x1b[0m" in out


def test_log_format_json_on_a_terminal(
    redis_db: RedisServer, upstream: Upstream, tmp_path: Path
) -> None:
    redis_db.client().set("proxy:app.test", proxy_doc("app.test", upstream.url))
    term = TerminalEdge(redis_db, tmp_path, LOG_FORMAT="json")
    try:
        term.read_until(re.compile(r'"message":"worker serving"'))
        assert get(term.edge.http_port, "/tty-2").startswith(b"HTTP/1.1 200")
        out = term.read_until(re.compile(r'"path":"/tty-2"'))
    finally:
        term.close()
    for line in out.splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    assert "\x1b[" not in out


def test_health_checks_from_loopback_or_trusted_peers_are_not_logged(
    edge_factory: type[EdgeProcess], redis_db: RedisServer
) -> None:
    edge = edge_factory(API_HOSTNAME="api.test", PROXY_PROTOCOL_PORT=free_port())  # type: ignore[call-arg]
    pp = int(edge.env["PROXY_PROTOCOL_PORT"])
    outside = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n"
    trusted = b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 80\r\n"
    unknown = b"PROXY UNKNOWN\r\n"  # HAProxy's own health check: the peer is the client
    assert get(edge.api_port, "/health").startswith(b"HTTP/1.1 200")
    assert get(edge.api_port, "/health?full=1").startswith(b"HTTP/1.1 200")
    assert get(pp, "/health", "api.test", trusted).startswith(b"HTTP/1.1 200")
    assert get(pp, "/health", "api.test", unknown).startswith(b"HTTP/1.1 200")
    # logged: another path from loopback, and /health from a client outside
    assert get(edge.api_port, "/healthz").startswith(b"HTTP/1.1 404")
    assert get(pp, "/health", "api.test", outside).startswith(b"HTTP/1.1 200")
    assert get(edge.api_port, "/last").startswith(b"HTTP/1.1 404")
    # one worker: lines arrive in order, so once /last is there every line before it is
    wait_for(lambda: any(r["path"] == "/last" for r in edge.access_log()))
    seen = [(r["path"], r["client"]) for r in edge.access_log()]
    assert seen == [("/healthz", "127.0.0.1"), ("/health", "203.0.113.9"), ("/last", "127.0.0.1")]


def test_skip_paths_none_logs_every_health_check(edge_factory: type[EdgeProcess]) -> None:
    edge = edge_factory(ACCESS_LOG_SKIP_PATHS="none")  # type: ignore[call-arg]
    assert get(edge.api_port, "/health").startswith(b"HTTP/1.1 200")
    # the one above and those of the start-up wait, all from loopback
    wait_for(lambda: len(edge.access_log()) >= 2)
    assert {(r["path"], r["client"]) for r in edge.access_log()} == {("/health", "127.0.0.1")}
