"""``edge forward`` as a real process, with real sockets on loopback.

The edge side here is :class:`tests.tunnel_standin.TunnelStandIn`, a test stand-in for
the edge's port-forward endpoints written with the ``websockets`` library (so the client's
wsproto meets an independent implementation); the tests at the end run the same client
against a real edge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from edge.auth.pat import new_pat_token
from tests.api_client import call
from tests.helpers import ROOT, EdgeProcess, PtyCapture, RedisServer, free_port, wait_for
from tests.integration.test_streaming import RssSampler, rss_kb
from tests.tunnel_standin import TunnelStandIn

CLIENT_ENV = ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "EDGE_PAT", "XDG_CONFIG_HOME")
LISTENING = re.compile(r"forwarding (\S+):(\d+) -> ")


class Forward:
    """``edge forward LOCAL TARGET`` running; its stderr gathered line by line."""

    def __init__(
        self, tmp_path: Path, local: str, target: str, *extra: str, tty: bool = False, **env: str
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
        environ.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
        environ.update(env)
        self.pty = PtyCapture() if tty else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "forward", local, target, *extra],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=self.pty.follower if self.pty else subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        self.lines: list[str] = []
        if self.pty is not None:
            self.pty.start()
        else:
            threading.Thread(target=self._gather, daemon=True).start()
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        found = LISTENING.match(first)
        assert found, (first, self.stderr)
        self.host, self.port = found.group(1).strip("[]"), int(found.group(2))

    def _gather(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        if self.pty is not None:
            return self.pty.data.decode(errors="replace")
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        return str(
            wait_for(lambda: next((x for x in self.lines if regex.search(x)), None), timeout)
        )

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=10)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:  # pragma: no cover - the test fails on the status
                self.proc.kill()
                self.proc.wait()


class Target:
    """A TCP service on loopback: each connection's bytes hashed until EOF, then
    ``answer(received)`` sent back and the connection closed; or, with ``send``, those
    bytes sent while reading (both ways at once)."""

    def __init__(
        self, answer: Callable[[bytes], bytes] | None = None, send: bytes | None = None
    ) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answer = answer
        self.send = send
        self.received: list[bytes] = []
        self.connections = 0
        self.sent = 0  # by the sending threads, so far
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            sender = threading.Thread(target=self._send, args=(conn, self.send), daemon=True)
            if self.send is not None:
                sender.start()
            data = _read_all(conn)
            self.received.append(data)
            if self.answer is not None:
                conn.sendall(self.answer(data))
            if self.send is not None:
                sender.join()  # both ways done before the socket closes

    def _send(self, conn: socket.socket, data: bytes | None) -> None:
        assert data is not None
        view = memoryview(data)
        for start in range(0, len(view), 100_000):
            conn.sendall(view[start : start + 100_000])
            self.sent += len(view[start : start + 100_000])
        conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread: close() alone does not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), 100_000):
        sock.sendall(view[start : start + 100_000])
    sock.shutdown(socket.SHUT_WR)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pat() -> str:
    return new_pat_token()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target(
        answer=lambda data: b"got %d bytes, sha256 %s" % (len(data), sha(data).encode())
    )
    yield server
    server.close()


@pytest.fixture
def standin(target: Target, pat: str) -> Iterator[TunnelStandIn]:
    server = TunnelStandIn(free_port(), pat, target.port).start()
    yield server
    server.stop()


@pytest.fixture
def forward_factory(tmp_path: Path) -> Iterator[Callable[..., Forward]]:
    started: list[Forward] = []

    def start(*args: str, **kwargs: object) -> Forward:
        forward = Forward(tmp_path, *args, **kwargs)  # type: ignore[arg-type]
        started.append(forward)
        return forward

    yield start
    for forward in started:
        forward.stop(signal.SIGKILL)


def via_standin(
    forward_factory: Callable[..., Forward],
    standin: TunnelStandIn,
    pat: str,
    *extra: str,
    **env: str,
) -> Forward:
    return forward_factory(
        "127.0.0.1:0", "database/db_1", "--api-url", standin.url, *extra, EDGE_PAT=pat, **env
    )


# ---------------------------------------------------------------------------- bytes


def test_megabytes_both_ways_arrive_whole(
    forward_factory: Callable[..., Forward], pat: str
) -> None:
    """A few MB each way at once: what each side receives hashes like what the other sent."""
    down = os.urandom(3_000_000)
    up = os.urandom(4_000_000 + 7)
    target = Target(send=down)
    standin = TunnelStandIn(free_port(), pat, target.port).start()
    try:
        forward = via_standin(forward_factory, standin, pat)
        with forward.connect() as client:
            sender = threading.Thread(target=_send_all, args=(client, up))
            sender.start()
            got = _read_all(client)
            sender.join()
        assert len(got) == len(down) and sha(got) == sha(down)
        wait_for(lambda: target.received)
        assert sha(target.received[0]) == sha(up)
        assert standin.subprotocols == ["edge-tunnel.v1"]
        assert forward.stop() == 0
        summary = forward.wait_line("edge: stopped:")
        assert "1 opened, 0 refused" in summary and "in 3.0 MB" in summary, summary
    finally:
        standin.stop()
        target.close()


def test_half_close_lets_the_target_answer_after_the_client_is_done(
    forward_factory: Callable[..., Forward], standin: TunnelStandIn, pat: str, target: Target
) -> None:
    """The client shuts down its write side: the target sees EOF, then answers, and the
    client reads the answer whole."""
    forward = via_standin(forward_factory, standin, pat)
    for size in (0, 1, 65536, 200_001):  # nothing, tiny, one frame, several frames
        question = os.urandom(size)
        with forward.connect() as client:
            client.sendall(question)
            client.shutdown(socket.SHUT_WR)
            answer = _read_all(client)
        assert answer == b"got %d bytes, sha256 %s" % (size, sha(question).encode())
    assert forward.stop() == 0
    assert not [line for line in forward.lines if " refused:" in line or "closed by" in line]


def test_pings_are_answered(
    forward_factory: Callable[..., Forward], standin: TunnelStandIn, pat: str
) -> None:
    standin.ping = True
    forward = via_standin(forward_factory, standin, pat)
    with forward.connect() as client:
        wait_for(lambda: standin.pongs >= 1)
        client.shutdown(socket.SHUT_WR)
        assert _read_all(client).startswith(b"got 0 bytes")


def test_without_the_subprotocol_the_local_eof_ends_the_tunnel(
    forward_factory: Callable[..., Forward], standin: TunnelStandIn, pat: str, target: Target
) -> None:
    """An edge that does not echo edge-tunnel.v1: bytes still flow; the local EOF closes."""
    standin.half_close = False
    forward = via_standin(forward_factory, standin, pat)
    with forward.connect() as client:
        client.sendall(b"hello")
        time.sleep(0.2)
        client.shutdown(socket.SHUT_WR)
        assert _read_all(client) == b""  # the tunnel ended with the local EOF
    assert standin.subprotocols == [None]
    wait_for(lambda: target.received == [b"hello"])  # the target sees the end too


def test_https_edge_tunnels_over_wss_verified_against_ssl_cert_file(
    forward_factory: Callable[..., Forward],
    target: Target,
    pat: str,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """An https:// edge: the ticket and the WebSocket over TLS, the certificate checked
    against the CAs of SSL_CERT_FILE (as every client command checks them); an unknown
    CA is one refusal line."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    standin = TunnelStandIn(free_port(), pat, target.port, tls=tls).start()
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        forward = via_standin(forward_factory, standin, pat, SSL_CERT_FILE=str(ca_file))
        question = os.urandom(300_000)
        with forward.connect() as client:
            client.sendall(question)
            client.shutdown(socket.SHUT_WR)
            answer = _read_all(client)
        assert answer == b"got 300000 bytes, sha256 %s" % sha(question).encode()
        assert standin.subprotocols == ["edge-tunnel.v1"]
        untrusted = via_standin(forward_factory, standin, pat)
        with untrusted.connect() as client:
            assert _read_all(client) == b""
        line = untrusted.wait_line(" refused: ")
        assert (
            f"cannot reach the edge at {standin.url}: TLS certificate verification failed" in line
        )
        assert standin.ticket_requests == 1  # a certificate failure is not tried again
    finally:
        standin.stop()


# ---------------------------------------------------------------------------- refusals


def test_ticket_purchase_is_retried_until_the_edge_is_up(
    forward_factory: Callable[..., Forward], target: Target, pat: str
) -> None:
    """Connection refused, then the edge comes up: the same local connection gets through."""
    port = free_port()
    forward = forward_factory(
        "0", "resource/res_1:8080", "--api-url", f"http://127.0.0.1:{port}", "--debug",
        EDGE_PAT=pat,
    )  # fmt: skip
    assert forward.host == "127.0.0.1"
    with forward.connect() as client:
        forward.wait_line(r"connection 1 from 127\.0\.0\.1:\d+: ticket try 1 failed "
                          r"\(connection refused\), again in 0\.25s")  # fmt: skip
        standin = TunnelStandIn(port, pat, target.port).start()
        try:
            client.sendall(b"late")
            client.shutdown(socket.SHUT_WR)
            assert _read_all(client).startswith(b"got 4 bytes")
        finally:
            standin.stop()
    assert standin.ticket_requests == 1


def test_an_edge_that_stays_down_is_tried_three_times_then_one_line(
    forward_factory: Callable[..., Forward], pat: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    forward = forward_factory("0", "database/db_1", "--api-url", url, "--debug", EDGE_PAT=pat)
    started = time.monotonic()
    with forward.connect() as client:
        assert _read_all(client) == b""  # closed once refused
    took = time.monotonic() - started
    line = forward.wait_line("refused:")
    assert line == (
        f"edge: connection 1 from 127.0.0.1:{line.split(':')[2].split()[0]} refused: "
        f"cannot reach the edge at {url}: connection refused"
    ), line
    tries = [x for x in forward.lines if "ticket try" in x]
    assert len(tries) == 2 and "again in 0.5s" in tries[1], forward.lines
    assert 0.7 < took < 5, took


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (429, "429 refused_429: too many live sessions in the project"),
        (403, "403 refused_403: forbidden: the token's user is not an accepted member"),
        (404, "404 refused_404: no such target"),
        (400, "400 refused_400: the port is not allowed for this target"),
        (409, "409 refused_409: the database is not ready"),
    ],
)
def test_a_refused_ticket_is_one_line_and_not_retried(
    forward_factory: Callable[..., Forward],
    standin: TunnelStandIn,
    pat: str,
    status: int,
    words: str,
) -> None:
    standin.refuse["db_1"] = status
    forward = via_standin(forward_factory, standin, pat)
    with forward.connect() as client:
        assert _read_all(client) == b""
    line = forward.wait_line("refused")
    assert f"refused: ticket refused: {words}" in line, line
    assert f"(the edge says: the stand-in refuses ({status}))" in line
    assert standin.ticket_requests == 1 and standin.upgrades == 0
    assert forward.proc.poll() is None  # the listener stays up for the next connection


def test_a_refused_token_says_where_to_put_a_pat(
    forward_factory: Callable[..., Forward], standin: TunnelStandIn
) -> None:
    forward = forward_factory(
        "0", "database/db_1", "--api-url", standin.url, "--token", new_pat_token()
    )
    with forward.connect() as client:
        assert _read_all(client) == b""
    line = forward.wait_line("refused")
    assert "401 unauthorized: the token was refused: give a personal access token" in line


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("forget_tickets", "4010 ticket invalid: the ticket was missing, used, expired"),
        ("close_with_4005", "4005 database not ready"),
        ("close_with_4003", "4003 port mismatch"),
        ("close_with_4008", "4008 session timeout"),
        ("close_with_1001", "1001 edge going away: the edge is restarting or draining"),
        ("close_with_1011", "1011 ping timeout or internal error"),
        ("close_with_1009", "1009 message too big"),
        ("target_down", "4004 target unreachable: the edge could not connect to the target"),
    ],
)
def test_a_tunnel_closed_at_once_is_one_line_with_its_code_explained(
    forward_factory: Callable[..., Forward],
    standin: TunnelStandIn,
    target: Target,
    pat: str,
    setup: str,
    words: str,
) -> None:
    if setup == "forget_tickets":
        standin.forget_tickets = True
    elif setup == "target_down":
        target.close()
    else:
        standin.close_with = int(setup.rsplit("_", 1)[1])
    forward = via_standin(forward_factory, standin, pat)
    with forward.connect() as client:
        assert _read_all(client) == b""
    line = forward.wait_line("refused")
    assert re.fullmatch(
        r"edge: connection 1 from 127\.0\.0\.1:\d+ refused: " + re.escape(words) + r".*", line
    ), line
    assert "(the edge says: " in line or setup == "forget_tickets"
    assert len([x for x in forward.lines if "refused" in x]) == 1


# ---------------------------------------------------------------------------- exit


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_closes_listener_and_tunnels_and_exits_0(
    forward_factory: Callable[..., Forward],
    standin: TunnelStandIn,
    pat: str,
    target: Target,
    signum: int,
) -> None:
    forward = via_standin(forward_factory, standin, pat)
    client = forward.connect()
    client.sendall(b"pending")
    wait_for(lambda: target.connections == 1)
    started = time.monotonic()
    assert forward.stop(signum) == 0
    assert time.monotonic() - started < 3
    with client:
        client.settimeout(5)
        assert _read_all(client) == b""  # the tunnel was closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((forward.host, forward.port), timeout=2)
    wait_for(lambda: target.received == [b"pending"])  # the target's side ended too
    assert "Traceback" not in forward.stderr
    assert forward.wait_line("stopped: 0 live")


def test_on_a_terminal_a_status_line_counts_connections_and_bytes(
    forward_factory: Callable[..., Forward], standin: TunnelStandIn, pat: str
) -> None:
    forward = forward_factory(
        "[::1]:0" if socket.has_ipv6 else "0", "database/db_1", "--api-url", standin.url,
        tty=True, EDGE_PAT=pat,
    )  # fmt: skip
    with forward.connect() as client:
        client.sendall(b"x" * 5000)
        wait_for(lambda: "1 live, 0 opened, 0 refused, in 0 B, out 5.0 kB" in forward.stderr)
        client.shutdown(socket.SHUT_WR)
        answer = _read_all(client)
    done = f"0 live, 1 opened, 0 refused, in {len(answer)} B, out 5.0 kB"
    wait_for(lambda: done in forward.stderr)
    assert "\r\x1b[K" in forward.stderr
    assert "ended" not in forward.stderr  # per-connection lines only off a terminal
    assert forward.stop() == 0


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, pat: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    for args, words in (
        (["5433", "database/db_1:5432"], "a database has no PORT"),
        (["::1:5433", "database/db_1"], "an IPv6 address goes in brackets"),
        (["5433", "database/db_1"], "no token: pass --token, set EDGE_PAT"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "edge", "forward", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done
        assert done.stderr.startswith("edge: ") and words in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run(
            [sys.executable, "-m", "edge", "forward", str(port), "database/db_1"],
            env={**env, "EDGE_PAT": pat},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr == f"edge: cannot listen on 127.0.0.1:{port}: Address already in use\n"


# ---------------------------------------------------------------------------- the real edge


@dataclass
class RealEdge:
    """A real edge and its Redis, with one project whose owner has a PAT."""

    edge: EdgeProcess
    admin: str
    redis: RedisServer
    pid: str = ""
    uid: str = ""
    tid: str = ""
    pat: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.edge.api_port}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        answer = call(self.edge.api_port, method, path, self.admin, body)
        assert 200 <= answer.status < 300, (method, path, answer.status, answer.raw)
        return answer.doc

    def database(self, ident: str, port: int, engine: str = "postgres", **more: Any) -> None:
        """``database:{ident}`` on 127.0.0.1:port, once the edge's snapshot has it."""
        doc = {"id": ident, "project_id": self.pid, "name": ident, "engine": engine}
        doc.update(host="127.0.0.1", port=port, status="created", **more)
        self.redis.client().set(f"database:{ident}", json.dumps(doc))

        def listed() -> bool:
            answer = call(self.edge.api_port, "GET", "/public-api/databases", self.pat)
            return answer.status == 200 and ident in json.dumps(answer.doc)

        wait_for(listed)

    def forward(self, factory: Callable[..., Forward], target: str, *extra: str) -> Forward:
        return factory("127.0.0.1:0", target, "--api-url", self.url, *extra, EDGE_PAT=self.pat)

    def health_tunnels(self) -> dict[str, Any]:
        found = self.edge.health().get("tunnels")
        assert isinstance(found, dict), self.edge.health()
        return found


def start_real_edge(
    edge_factory: Callable[..., EdgeProcess], admin: str, redis_db: RedisServer, **env: Any
) -> RealEdge:
    real = RealEdge(edge_factory(ADMIN_TOKEN=admin, **env), admin, redis_db)
    real.pid = real.api("POST", "/api/v1/projects/", {"name": "shop"})["id"]
    user = real.api("POST", "/api/v1/users/", {"name": "ann", "email": "ann@x.test"})
    real.uid = user["id"]
    real.api(
        "PUT",
        f"/api/v1/projects/{real.pid}/members/{real.uid}",
        {"role": "owner", "accepted": True},
    )
    token = real.api(
        "POST", f"/api/v1/projects/{real.pid}/tokens", {"user_id": real.uid, "name": "laptop"}
    )
    real.tid, real.pat = token["data"]["id"], token["data"]["token"]
    return real


@pytest.fixture
def real(edge_factory: Callable[..., EdgeProcess], admin: str, redis_db: RedisServer) -> RealEdge:
    return start_real_edge(edge_factory, admin, redis_db)


def test_real_edge_megabytes_both_ways_and_half_close(
    real: RealEdge, forward_factory: Callable[..., Forward], target: Target
) -> None:
    down, up = os.urandom(3_000_000), os.urandom(4_000_001)
    pump = Target(send=down)
    try:
        real.database("pump", pump.port)
        real.database("asker", target.port)
        forward = real.forward(forward_factory, "database/pump")
        with forward.connect() as client:
            sender = threading.Thread(target=_send_all, args=(client, up))
            sender.start()
            got = _read_all(client)
            sender.join()
        assert sha(got) == sha(down)
        wait_for(lambda: pump.received)
        assert sha(pump.received[0]) == sha(up)
        asker = real.forward(forward_factory, "database/asker")
        question = os.urandom(100_000)
        with asker.connect() as client:
            client.sendall(question)
            client.shutdown(socket.SHUT_WR)  # the target sees EOF, then answers
            assert _read_all(client) == b"got 100000 bytes, sha256 %s" % sha(question).encode()
        assert forward.stop() == 0 and asker.stop() == 0
        wait_for(lambda: real.health_tunnels()["open"] == 0)
    finally:
        pump.close()


def test_real_edge_a_local_client_that_does_not_read_holds_the_target_back(
    real: RealEdge, forward_factory: Callable[..., Forward]
) -> None:
    """Coupled backpressure in the client: while the local client reads nothing, edge
    forward stops reading the edge (which stops reading the target); its memory stays
    flat, and every byte arrives once the client reads."""
    data = os.urandom(1_000_000) * 200  # 200 MB, far above every buffer on the way
    pump = Target(send=data)
    try:
        real.database("pump", pump.port)
        forward = real.forward(forward_factory, "database/pump")
        idle = rss_kb(forward.proc.pid)
        with forward.connect() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.shutdown(socket.SHUT_WR)
            with RssSampler(forward.proc.pid) as rss:
                time.sleep(3)  # not reading
            assert rss.peak - idle < 20_000, (idle, rss.peak)  # kB
            assert pump.sent < 50_000_000, pump.sent  # the target was held back
            got = hashlib.sha256()
            total = 0
            while chunk := client.recv(1 << 20):
                got.update(chunk)
                total += len(chunk)
        assert total == len(data) and got.hexdigest() == sha(data)
    finally:
        pump.close()


def test_real_edge_refusals_are_one_line_each(
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    redis_db: RedisServer,
    forward_factory: Callable[..., Forward],
    target: Target,
) -> None:
    real = start_real_edge(edge_factory, admin, redis_db, PORT_FORWARD_MAX_SESSIONS=1)
    real.database("db", target.port)
    closed = free_port()  # nothing listens there
    real.database("gone", closed)
    forward = real.forward(forward_factory, "database/db")
    held = forward.connect()  # the project's one session
    held.sendall(b"x")
    wait_for(lambda: real.health_tunnels()["open"] == 1)
    with forward.connect() as client:
        assert _read_all(client) == b""
    line = forward.wait_line("connection 2 .* refused")
    assert "refused: ticket refused: 429 " in line and "too many live sessions" in line, line
    held.shutdown(socket.SHUT_WR)
    assert _read_all(held).startswith(b"got 1 bytes")
    held.close()
    wait_for(lambda: real.health_tunnels()["open"] == 0)
    gone = real.forward(forward_factory, "database/gone")
    deadline = time.monotonic() + 10
    while True:  # the session slot comes back when the edge has released it
        with gone.connect() as client:
            assert _read_all(client) == b""
        line = gone.wait_line(" refused: ")
        if "429" not in line or time.monotonic() > deadline:
            break
        gone.lines.clear()
    assert "refused: 4004 target unreachable: the edge could not connect" in line, line
    missing = real.forward(forward_factory, "database/nope")
    with missing.connect() as client:
        assert _read_all(client) == b""
    assert "ticket refused: 404 " in missing.wait_line(" refused: ")
    forged = forward_factory("0", "database/db", "--api-url", real.url, "--token", new_pat_token())
    with forged.connect() as client:
        assert _read_all(client) == b""
    assert "ticket refused: 401 " in forged.wait_line(" refused: ")


def test_real_edge_revoking_the_pat_cuts_the_tunnel_with_4010(
    real: RealEdge, forward_factory: Callable[..., Forward], target: Target
) -> None:
    real.database("db", target.port)
    forward = real.forward(forward_factory, "database/db")
    with forward.connect() as client:
        client.sendall(b"before")
        wait_for(lambda: real.health_tunnels()["open"] == 1)
        real.api("DELETE", f"/api/v1/projects/{real.pid}/tokens/{real.tid}?user_id={real.uid}")
        started = time.monotonic()
        client.settimeout(10)
        assert _read_all(client) == b""
        assert time.monotonic() - started < 3
    line = forward.wait_line("closed by the edge")
    assert "4010 ticket invalid" in line and "revoked" in line, line


def test_real_edge_sigint_ends_live_tunnels_and_exits_0(
    real: RealEdge, forward_factory: Callable[..., Forward], target: Target
) -> None:
    real.database("db", target.port)
    forward = real.forward(forward_factory, "database/db")
    clients = [forward.connect() for _ in range(3)]
    for client in clients:
        client.sendall(b"live")
    wait_for(lambda: real.health_tunnels()["open"] == 3)
    # the edge counts a tunnel from its redemption, before edge forward has read the 101:
    # give edge forward a moment to have all three open too (it reports them when stopped)
    time.sleep(1.0)
    started = time.monotonic()
    assert forward.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 3
    for client in clients:
        with client:
            client.settimeout(5)
            assert _read_all(client) == b""
    wait_for(lambda: real.health_tunnels()["open"] == 0)
    wait_for(lambda: sorted(target.received) == [b"live"] * 3)
    assert forward.wait_line("stopped: 0 live, 3 opened, 0 refused")
