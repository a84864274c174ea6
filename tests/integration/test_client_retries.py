"""The CLI retries idempotent calls that got no answer at all, and nothing else.

A real server on loopback plays a script, one step per accepted connection: close it or
reset it after reading the request (no answer), send an answer's head and then reset, or
answer. The CLI runs as a subprocess (``python -m edge``), as a user runs it.
"""

from __future__ import annotations

import json
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.auth.secrets import new_admin_token
from tests.helpers import read_message
from tests.integration.test_client_cli import cli, cli_env, closed_url

Step = str | int  # "close", "reset", "head-reset", or the status of an answer

_BODIES = {
    200: b'{"tokens": []}',
    204: b"",
    503: json.dumps(
        {"error": {"code": "redis_unavailable", "message": "retry", "request_id": "r1"}}
    ).encode(),
}


def _reset(conn: socket.socket) -> None:
    # SO_LINGER on with a zero timeout: close() sends RST instead of FIN
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _answer(status: int) -> bytes:
    body = _BODIES[status]
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


class ScriptedServer:
    """Plays ``script`` (its last step repeats) and counts the connections it accepted."""

    def __init__(self, *script: Step) -> None:
        self.script = script
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)  # a close from another thread does not wake accept()
        self.port: int = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            step = self.script[min(self.connections, len(self.script) - 1)]
            self.connections += 1
            conn.settimeout(5)
            try:
                read_message(conn)  # all of it: a close is then a clean FIN, not a reset
                if step == "close":
                    conn.close()
                elif step == "reset":
                    _reset(conn)
                elif step == "head-reset":
                    conn.sendall(_answer(200)[:40])  # the status line and part of the head
                    time.sleep(0.05)
                    _reset(conn)
                else:
                    assert isinstance(step, int)
                    conn.sendall(_answer(step))
                    conn.close()
            except OSError:
                conn.close()

    def close(self) -> int:
        """Stop, and the number of connections the client made (a connection still in the
        listen backlog, never accepted, is counted too)."""
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.listener.setblocking(False)
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                break
            self.connections += 1
            conn.close()
        self.listener.close()
        return self.connections


def debug_cli(command: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """``edge {command} --debug``: its exit status and stderr lines (``cli`` wants a failure
    on one line; ``--debug`` adds its own lines before it)."""
    done = subprocess.run(
        [sys.executable, "-m", "edge", *shlex.split(command), "--debug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=env["HOME"],
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr.splitlines()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def servers() -> Iterator[list[ScriptedServer]]:
    started: list[ScriptedServer] = []
    yield started
    for server in started:
        if not server.stop.is_set():
            server.close()


def run(
    home: Path, servers: list[ScriptedServer], command: str, *script: Step
) -> tuple[str, str, int, int]:
    """``command`` against a new scripted server: its stdout, stderr, exit status, and the
    number of connections it made."""
    server = ScriptedServer(*script)
    servers.append(server)
    env = cli_env(home, API_URL=server.url, TOKEN=new_admin_token())
    done = cli(command, env=env)
    return done.stdout, done.stderr, done.returncode, server.close()


@pytest.mark.parametrize("failure", ["close", "reset"])
def test_a_get_is_tried_three_times_when_no_answer_came(
    home: Path, servers: list[ScriptedServer], failure: str
) -> None:
    out, err, status, connections = run(home, servers, "token list -o json", failure, failure, 200)
    assert (status, json.loads(out), connections) == (0, [], 3), err
    # three tries in all: the third failure is the error, with no fourth try
    out, err, status, connections = run(home, servers, "token list", failure)
    assert (status, out, connections) == (1, "", 3)
    assert err.startswith("edge: cannot reach the edge API at "), err
    reason = "the connection closed without an answer" if failure == "close" else "reset"
    assert reason in err.lower(), err


def test_put_and_delete_are_retried_too(home: Path, servers: list[ScriptedServer]) -> None:
    out, err, status, connections = run(home, servers, "proxy delete app.test", "reset", 204)
    assert (status, connections) == (0, 2), err
    assert "deleted proxy app.test" in out
    command = "token email ops@example.com -o json"  # PUT /api/v1/tokens/email
    out, err, status, connections = run(home, servers, command, "close", 200)
    assert (status, connections) == (0, 2), err


@pytest.mark.parametrize(
    "command",
    [
        "token create ci",  # POST
        "proxy set app.test --disable",  # PATCH
    ],
)
def test_post_and_patch_are_never_retried(
    home: Path, servers: list[ScriptedServer], command: str
) -> None:
    for failure in ("close", "reset"):
        out, err, status, connections = run(home, servers, command, failure, 200)
        assert (status, out, connections) == (1, "", 1), (failure, err)
        assert err.startswith("edge: cannot reach the edge API at "), err


def test_nothing_is_retried_once_an_answer_came(home: Path, servers: list[ScriptedServer]) -> None:
    # a 503 is an answer: shown, not retried
    out, err, status, connections = run(home, servers, "token list", 503, 200)
    assert (status, connections) == (1, 1)
    assert err.startswith("edge: 503 redis_unavailable: retry (request r1)"), err
    # the head came, then the connection was reset: an answer was received
    out, err, status, connections = run(home, servers, "token list", "head-reset", 200)
    assert (status, out, connections) == (1, "", 1), err


def test_refused_connections_are_retried_with_growing_pauses(home: Path) -> None:
    where = closed_url()
    env = cli_env(home, API_URL=where, TOKEN=new_admin_token())
    started = time.monotonic()
    status, lines = debug_cli("token list", env)
    took = time.monotonic() - started
    assert status == 1
    assert lines[-1] == f"edge: cannot reach the edge API at {where}: connection refused"
    # two retries announced, then the third try fails
    assert lines[:-1] == [
        f"edge: debug: GET {where}/api/v1/tokens/: connection refused "
        f"(try {n} of 3, again in {pause}s)"
        for n, pause in ((1, "0.2"), (2, "0.4"))
    ]
    assert took >= 0.6  # the pauses were taken (a lower bound: never flaky)
    # a POST: one try
    status, lines = debug_cli("token create ci", env)
    assert status == 1 and len(lines) == 1 and "connection refused" in lines[0]


def test_retries_stay_within_twice_the_timeout(home: Path) -> None:
    # --timeout 0.25: the whole call within 0.5 s, so the 0.4 s pause (after 0.2 s) does
    # not fit and the second failure is the last
    env = cli_env(home, API_URL=closed_url(), TOKEN=new_admin_token())
    status, lines = debug_cli("token list --timeout 0.25", env)
    assert status == 1 and len(lines) == 2, lines
    assert "(try 1 of 3, again in 0.2s)" in lines[0] and "connection refused" in lines[1]


def test_one_call_one_connection_when_all_goes_well(
    home: Path, servers: list[ScriptedServer]
) -> None:
    out, err, status, connections = run(home, servers, "token list -o json", 200)
    assert (status, json.loads(out), connections) == (0, [], 1), err
