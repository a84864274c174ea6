"""config/haproxy.cfg, the HAProxy recipe of the docs, run unmodified against a real HAProxy.

Two real edges (PROXY listeners on free ports, 127.0.0.1 trusted, ``API_HOSTNAME`` the
health checks' Host) and real loopback upstreams; HAProxy runs the recipe file itself,
its variables pointing at them. HAProxy connects from 127.0.0.1, the test client from
127.0.0.2: an edge that reports 127.0.0.2 took it from the PROXY v2 header. What is
proven: HTTP, TLS (SNI, the certificate from Redis) and WebSockets (plain and over TLS)
pass through with the client's address; HAProxy's own ``/health`` checks (PROXY header
first, TLS on the TLS backend) mark every server UP, read from its stats socket; its log
names the client and the unique id the edge logs too; and when an edge stops, requests
keep succeeding on the other (``retry-on`` and ``redispatch``) while HAProxy marks the
stopped one DOWN. HAProxy missing fails the test, it never skips.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import grp
import io
import json
import os
import pwd
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

from tests.haproxy import required_tool
from tests.helpers import (
    ROOT,
    EdgeProcess,
    RedisServer,
    Upstream,
    free_port,
    proxy_doc,
    stop_process,
    wait_for,
)
from tests.integration.test_proxy_listener import Response, ResponseReader, connect, request

RECIPE = ROOT / "config" / "haproxy.cfg"
HOST = "app.test"  # plain HTTP -> the echo upstream
TLS_HOST = "a.example.com"  # a certificate of its own in Redis -> the echo upstream
WS_HOST = "ws.test"  # -> the WebSocket upstream, over HTTP and TLS
HEALTH_HOST = "edge-health.test"  # API_HOSTNAME: HAProxy's checks ask it for /health
CLIENT = "127.0.0.2"  # the client's address; HAProxy's own is 127.0.0.1
BACKENDS = ("edge_http", "edge_https")
SERVERS = ("edge1", "edge2")


# ---------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    leaf_der: bytes
    record: str  # the cert:{name} JSON value


class WsEcho:
    """A WebSocket upstream: first sends what it saw of the handshake (X-Forwarded-For,
    X-Forwarded-Proto), then echoes every message."""

    def __init__(self) -> None:
        self.server: Server = ws_serve(self.handler, "127.0.0.1", 0)
        self.port = int(self.server.socket.getsockname()[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = ws.request.headers
        seen = {
            "x-forwarded-for": headers.get_all("X-Forwarded-For"),
            "x-forwarded-proto": headers.get_all("X-Forwarded-Proto"),
        }
        ws.send(json.dumps(seen))
        for message in ws:
            ws.send(message)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


class RecipeHAProxy:
    """``haproxy -f config/haproxy.cfg -db`` with the recipe's variables in its environment."""

    def __init__(self, workdir: Path, edges: tuple[EdgeProcess, EdgeProcess]) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.https_port = free_port()
        self.stats_socket = workdir / "admin.sock"
        self.log_path = workdir / "haproxy.log"
        self.env = {
            **os.environ,
            "FRONT_HTTP_BIND": f"127.0.0.1:{self.http_port}",
            "FRONT_HTTPS_BIND": f"127.0.0.1:{self.https_port}",
            "STATS_SOCKET": str(self.stats_socket),
            "EDGE_HEALTH_HOST": HEALTH_HOST,
            # the recipe drops root for the haproxy user: here, stay who we are
            "RUN_USER": pwd.getpwuid(os.getuid()).pw_name,
            "RUN_GROUP": grp.getgrgid(os.getgid()).gr_name,
        }
        for name, edge in zip(SERVERS, edges, strict=True):
            self.env[f"{name.upper()}_HTTP"] = f"127.0.0.1:{edge.env['PROXY_PROTOCOL_PORT']}"
            self.env[f"{name.upper()}_TLS"] = f"127.0.0.1:{edge.env['PROXY_PROTOCOL_TLS_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RecipeHAProxy:
        binary = required_tool("haproxy")
        check = subprocess.run(
            [binary, "-c", "-f", str(RECIPE)], env=self.env, capture_output=True, timeout=20
        )
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-f", str(RECIPE), "-db"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
            )
        deadline = time.monotonic() + timeout
        while not (self._listening(self.http_port) and self._listening(self.https_port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy not listening:\n{self.log()}")
            time.sleep(0.02)
        return self

    @staticmethod
    def _listening(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5.0)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self, line: str) -> str:
        """One command on the stats socket, its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat``: (backend, server) -> its row (status, check_status, check_code...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            (row["pxname"], row["svname"]): row
            for row in rows
            if row["pxname"] in BACKENDS and row["svname"] in SERVERS
        }


@dataclasses.dataclass
class Stack:
    edges: tuple[EdgeProcess, EdgeProcess]
    haproxy: RecipeHAProxy
    certs: Certs

    def access_entry(self, path: str) -> dict[str, Any]:
        """The access-log entry of ``path``, on whichever edge served it."""

        def find() -> dict[str, Any] | None:
            for edge in self.edges:
                for entry in edge.access_log():
                    if entry.get("path") == path:
                        return entry
            return None

        entry: dict[str, Any] = wait_for(find, timeout=5)
        return entry

    def haproxy_line(self, client_port: int) -> str:
        """HAProxy's log line of the connection from CLIENT:client_port (written when it
        closes)."""
        prefix = f"{CLIENT}:{client_port} "

        def find() -> str | None:
            return next((x for x in self.haproxy.log().splitlines() if x.startswith(prefix)), None)

        line: str = wait_for(find, timeout=5)
        return line

    def http_get(self, path: str) -> tuple[Response, int]:
        """GET ``path`` on HOST through HAProxy's HTTP frontend from CLIENT; the response
        and the client's port."""
        with connect(self.haproxy.http_port, source=CLIENT) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(request(path, host=HOST))
            return ResponseReader(lambda: sock.recv(65536)).read(), client_port

    def https_get(self, path: str) -> tuple[Response, int]:
        with (
            connect(self.haproxy.https_port, source=CLIENT) as raw,
            self.tls_context().wrap_socket(raw, server_hostname=TLS_HOST) as sock,
        ):
            assert sock.getpeercert(binary_form=True) == self.certs.leaf_der
            client_port = sock.getsockname()[1]
            sock.sendall(request(path, host=TLS_HOST))
            return ResponseReader(lambda: sock.recv(65536)).read(), client_port

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.certs.ca.configure_trust(ctx)
        return ctx

    def server_states(self) -> dict[tuple[str, str], tuple[str, str, str]]:
        """(backend, server) -> (status, last check's status, its HTTP code)."""
        return {
            key: (row["status"], row["check_status"].removeprefix("* "), row["check_code"])
            for key, row in self.haproxy.servers().items()
        }


def new_path(prefix: str = "t") -> str:
    return f"/{prefix}/{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def running_stack(
    redis_server: RedisServer, certs: Certs, workdir: Path, upstream: Upstream, ws: WsEcho
) -> Iterator[Stack]:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    # the session's Redis: empty it of what earlier tests of this process left (a
    # wildcard proxy, a certificate), as the redis_db fixture does for each test
    client.flushall()
    client.set(f"proxy:{HOST}", proxy_doc(HOST, upstream.url))
    client.set(f"proxy:{TLS_HOST}", proxy_doc(TLS_HOST, upstream.url))
    client.set(f"proxy:{WS_HOST}", proxy_doc(WS_HOST, f"http://127.0.0.1:{ws.port}"))
    client.set("cert:a", certs.record)
    edges = tuple(
        EdgeProcess(
            redis_server.url,
            workdir,
            CONFIG_RESYNC_INTERVAL=30,
            PROXY_PROTOCOL_PORT=free_port(),
            PROXY_PROTOCOL_TLS_PORT=free_port(),
            PROXY_TRUSTED_CIDRS="127.0.0.1/32",
            API_HOSTNAME=HEALTH_HOST,
        )
        for _ in SERVERS
    )
    assert len(edges) == 2
    haproxy: RecipeHAProxy | None = None
    try:
        for edge in edges:
            edge.start(wait=False)
        for edge in edges:
            edge.wait_ready()
            edge.wait_generation(
                lambda h: h["proxies"] == 3 and h["tls"]["certificates"] == 1, timeout=10
            )
        haproxy_dir = workdir / "haproxy"
        haproxy_dir.mkdir(exist_ok=True)
        haproxy = RecipeHAProxy(haproxy_dir, edges).start()
        yield Stack(edges, haproxy, certs)
    finally:
        if haproxy is not None:
            haproxy.stop()
        for edge in edges:
            edge.stop(timeout=10)
    for edge in edges:
        edge.check_errors()


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = trustme.CA()
    leaf = ca.issue_cert(TLS_HOST, WS_HOST)
    record = json.dumps(
        {
            "cert_name": "a",
            "domains": [TLS_HOST, WS_HOST],
            "fullchain_pem": "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems),
            "private_key_pem": leaf.private_key_pem.bytes().decode(),
        }
    )
    leaf_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return Certs(ca, leaf_der, record)


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[WsEcho]:
    server = WsEcho()
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer,
    certs: Certs,
    echo_upstream: Upstream,
    ws_upstream: WsEcho,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("haproxy-recipe")
    with running_stack(redis_server, certs, workdir, echo_upstream, ws_upstream) as running:
        yield running


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_recipe_is_valid_and_needs_its_variables() -> None:
    """``haproxy -c`` refuses the recipe when the edge addresses or the health host are
    missing, instead of starting with empty servers."""
    binary = required_tool("haproxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE", "FRONT_", "RUN_"))}
    result = subprocess.run(
        [binary, "-c", "-f", str(RECIPE)], env=env, capture_output=True, timeout=20
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0, output
    assert "'server' expects <name> and <addr>" in output, output


def test_health_checks_mark_every_server_up(stack: Stack) -> None:
    """Both backends' checks get 200 from /health through the PROXY listeners (the TLS
    backend's through TLS), and none of them is in the edges' access logs."""
    expected = {(b, s): ("UP", "L7OK", "200") for b in BACKENDS for s in SERVERS}
    wait_for(lambda: stack.server_states() == expected, timeout=15, interval=0.2)
    assert not [
        entry for edge in stack.edges for entry in edge.access_log() if entry["path"] == "/health"
    ]


def test_http_through_haproxy_carries_the_client_address(stack: Stack) -> None:
    path = new_path()
    resp, client_port = stack.http_get(path)
    seen = resp.upstream_saw()
    assert resp.upstream_path() == path
    assert seen["x-forwarded-for"] == [CLIENT]
    assert seen["x-real-ip"] == [CLIENT]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-port"] == [str(stack.haproxy.http_port)]
    entry = stack.access_entry(path)
    assert entry["client"] == CLIENT
    # HAProxy logs the connection with the unique id it sent the edge in the PROXY header
    line = stack.haproxy_line(client_port)
    assert " http edge_http/edge" in line, line
    assert line.endswith(" " + entry["proxy_unique_id"]), (line, entry)


def test_tls_through_haproxy_is_terminated_by_the_edge(stack: Stack) -> None:
    path = new_path()
    resp, client_port = stack.https_get(path)
    seen = resp.upstream_saw()
    assert resp.upstream_path() == path
    assert seen["x-forwarded-for"] == [CLIENT]
    assert seen["x-real-ip"] == [CLIENT]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-port"] == [str(stack.haproxy.https_port)]
    entry = stack.access_entry(path)
    assert entry["client"] == CLIENT
    line = stack.haproxy_line(client_port)
    assert " https edge_https/edge" in line, line
    assert line.endswith(" " + entry["proxy_unique_id"]), (line, entry)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_through_haproxy(stack: Stack, scheme: str) -> None:
    port = stack.haproxy.http_port if scheme == "ws" else stack.haproxy.https_port
    path = new_path("ws")
    with (
        connect(port, source=CLIENT) as sock,
        ws_connect(
            f"{scheme}://{WS_HOST}{path}",
            sock=sock,
            ssl=stack.tls_context() if scheme == "wss" else None,
            open_timeout=10,
            # the close handshake ends when the edge closes the client's side after the
            # upstream closed its own (over TLS too, where that end cannot be a half-close)
            close_timeout=10,
        ) as ws,
    ):
        seen = json.loads(ws.recv(timeout=5))
        assert seen == {
            "x-forwarded-for": [CLIENT],
            "x-forwarded-proto": ["https" if scheme == "wss" else "http"],
        }
        messages: list[str | bytes] = ["hello", "héllo ✓", b"\x00\xff" * 40000]
        for message in messages:
            ws.send(message)
            assert ws.recv(timeout=5) == message
        closing = time.monotonic()
    # leaving the block closed the WebSocket: at once, not after close_timeout
    assert time.monotonic() - closing < 3
    entry = stack.access_entry(path)
    assert entry["status"] == 101
    assert entry["client"] == CLIENT


def test_a_stopped_edge_is_marked_down_and_traffic_goes_to_the_other(
    redis_server: RedisServer,
    certs: Certs,
    echo_upstream: Upstream,
    ws_upstream: WsEcho,
    tmp_path: Path,
) -> None:
    """Its own stack: edge2 stops. Requests sent right after, before any check noticed,
    all succeed (a refused connection is retried on edge1); then HAProxy's checks mark
    edge2 DOWN in both backends, edge1 stays UP, and the change is in HAProxy's log."""
    with running_stack(redis_server, certs, tmp_path, echo_upstream, ws_upstream) as stack:
        up = {(b, s): ("UP", "L7OK", "200") for b in BACKENDS for s in SERVERS}
        wait_for(lambda: stack.server_states() == up, timeout=15, interval=0.2)
        edge1, edge2 = stack.edges
        assert edge2.stop(timeout=10) == 0
        stopped_at = time.monotonic()
        paths = [new_path("after") for _ in range(10)]
        for path in paths:
            resp, _ = stack.http_get(path)
            assert resp.upstream_path() == path
            resp, _ = stack.https_get(path + "/tls")
            assert resp.upstream_path() == path + "/tls"
        # every one was served by edge1
        for path in paths:
            assert stack.access_entry(path) in edge1.access_log()
            assert stack.access_entry(path + "/tls") in edge1.access_log()
        down = {
            **{(b, "edge1"): ("UP", "L7OK", "200") for b in BACKENDS},
            **{(b, "edge2"): ("DOWN", "L4CON", "") for b in BACKENDS},
        }
        wait_for(lambda: stack.server_states() == down, timeout=15, interval=0.2)
        # DOWN within about fall x fastinter after the first failed check (inter 2 s)
        assert time.monotonic() - stopped_at < 10
        log = stack.haproxy.log()
        for backend in BACKENDS:
            assert f"Server {backend}/edge2 is DOWN" in log, log
