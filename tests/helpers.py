"""Test harness: real redis-server, real edge processes, real upstreams on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

from edge.settings import ENV_NAMES
from tests import edge_log

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Path of a tool the test needs; missing -> fail loudly in CI, skip only locally."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if path is None:
        import pytest

        if os.environ.get("CI"):
            pytest.fail(f"{name} is required for this test but is not installed")
        pytest.skip(f"{name} not installed")
    return path


# where an edge under test finds "the CA" unless the test starts one: loopback, port 9
# (discard), where nothing answers
NO_ACME_SERVER = "https://127.0.0.1:9/directory"

_BLOCK = 1000  # ports per test process
# above the ports the edge, nginx and the test tools listen on by default (8080, 8443,
# 9000, 10001, 10443...): a test that leaves a listener at its default finds it free
_FIRST_PORT = 20000
_block_lock: socket.socket | None = None  # held for the life of the test process


def _port_block() -> Iterator[int]:
    """This test process's own ports, below the kernel's ephemeral range.

    A port the kernel hands out (bind to port 0) is free when asked, and may be handed to
    another test process, or used as an outgoing connection's local port, before the edge
    it was meant for binds it. So each test process claims a block of ports of its own
    below ``ip_local_port_range``, where the kernel never picks one: the first block whose
    lock (an abstract Unix socket, gone with the process) it can take, whatever other
    pytest runs on the machine hold. Inside it ports are taken in turn; one already bound
    (a service of the machine) is skipped.
    """
    global _block_lock
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for index in range(max(0, (low - _FIRST_PORT) // _BLOCK)):
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0edge-tests-port-block:{index}".encode())
        except OSError:
            lock.close()
            continue
        _block_lock = lock
        start = _FIRST_PORT + index * _BLOCK
        while True:
            yield from range(start, start + _BLOCK)
    # every block taken: ask the kernel, as before
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            yield int(s.getsockname()[1])


_ports: Iterator[int] | None = None
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback port nothing listens on, that no other test process will be given."""
    global _ports
    with _ports_lock:
        if _ports is None:
            _ports = _port_block()
        for port in _ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use here: a service of the machine, or still ours
            return port
    raise AssertionError("unreachable")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


class RedisServer:
    """A private redis-server on a free port that tests may stop and start again.

    With ``password`` it starts with ``requirepass`` (``client()`` logs in; ``url`` does not).
    """

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = require_tool("redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.client().ping(), timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, password=self.password
        )


class PtyCapture:
    """A pseudo-terminal to give a child process (``follower``): everything written to it
    is gathered in ``data`` by a thread, from :meth:`start` (once the child has it) on."""

    def __init__(self) -> None:
        self.leader, self.follower = pty.openpty()
        self.data = b""

    def start(self) -> None:
        os.close(self.follower)  # the child holds its own copy
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:
                break  # EIO once every writer is gone
            if not chunk:
                break
            self.data += chunk
        os.close(self.leader)


class Monitor(threading.Thread):
    """Every command Redis executes while it runs (MONITOR), until ``stop()``."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.commands: list[dict[str, Any]] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with self.server.client().monitor() as monitor:
            self.ready.set()
            for command in monitor.listen():
                self.commands.append(command)
                if command["command"] == "ECHO monitor-stop":
                    return

    def __enter__(self) -> Monitor:
        self.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.client().echo("monitor-stop")
        self.join(5)

    def transactions(self) -> list[list[str]]:
        """The commands of each MULTI ... EXEC block (by client connection)."""
        blocks: list[list[str]] = []
        open_blocks: dict[str, list[str]] = {}
        for entry in self.commands:
            client = f"{entry.get('client_address')}:{entry.get('client_port')}"
            text = entry["command"]
            name = text.split(" ", 1)[0].upper()
            if name == "MULTI":
                open_blocks[client] = []
            elif name == "EXEC" and client in open_blocks:
                blocks.append(open_blocks.pop(client))
            elif client in open_blocks:
                open_blocks[client].append(text)
        return blocks


def proxy_doc(hostname: str, target_url: str, **fields: Any) -> str:
    return json.dumps({"hostname": hostname, "target_url": target_url, **fields})


def route_doc(route_id: str, path: str, target_type: str, target_value: str, **extra: Any) -> str:
    doc = {
        "route_id": route_id,
        "path_pattern": path,
        "target_type": target_type,
        "target_value": target_value,
        **extra,
    }
    return json.dumps(doc)


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any edge variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["PYTHONPATH"] = str(ROOT)
    # never let a start-up that wrongly succeeds grab a well-known port
    env["HTTP_PORT"] = str(free_port())
    env["API_PORT"] = str(free_port())
    env["SERVER_HOST"] = "127.0.0.1"
    env["EDGE_WORKERS"] = "1"
    env["AUTO_HTTPS"] = "false"
    env["ACME_DIRECTORY_URL"] = env["ACME_STAGING_URL"] = NO_ACME_SERVER
    env.update(extra)
    return env


def edge_command(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``python -m edge <args>`` run to its end, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``proc`` if it still runs, SIGKILL it after ``timeout`` s; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class EdgeProcess:
    """``edge serve`` as a child process with its own ports and log files."""

    def __init__(self, redis_url: str | None, workdir: Path, **env: Any) -> None:
        self.http_port = free_port()
        self.api_port = free_port()
        self.workdir = workdir
        self.stdout_path = workdir / f"edge-{self.http_port}.out"
        self.stderr_path = workdir / f"edge-{self.http_port}.err"
        self.env = {
            **os.environ,
            "HTTP_PORT": str(self.http_port),
            "API_PORT": str(self.api_port),
            "SERVER_HOST": "127.0.0.1",
            "EDGE_WORKERS": "1",
            "LOG_LEVEL": "INFO",
            # the TLS and PROXY listeners are off unless a test turns them on
            "HTTPS_PORT": "0",
            # no certificate is ordered unless a test asks, and never from a CA on the
            # internet: a test that orders names its own (local) ACME server
            "AUTO_HTTPS": "false",
            "ACME_DIRECTORY_URL": NO_ACME_SERVER,
            "ACME_STAGING_URL": NO_ACME_SERVER,
            "PROXY_PROTOCOL_PORT": "0",
            "PROXY_PROTOCOL_TLS_PORT": "0",
            "PYTHONPATH": str(ROOT),
        }
        if redis_url is not None:
            self.env["REDIS_URL"] = redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_errors: list[str] = []

    def expect_errors(self, *patterns: str) -> EdgeProcess:
        """Errors this edge is meant to log (regexes searched in each log entry): the
        teardown check lets them pass."""
        self.expected_errors.extend(patterns)
        return self

    def start(self, *args: str, wait: bool = True) -> EdgeProcess:
        out = self.stdout_path.open("ab")
        err = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "serve", *args],
            env=self.env,
            stdout=out,
            stderr=err,
            cwd=str(self.workdir),
        )
        out.close()
        err.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge exited early:\n{self.stderr()}")
            return self.health().get("status") in ("ok", "degraded")

        wait_for(ready, timeout=timeout, interval=0.05)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/health", timeout=2) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def wait_generation(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> None:
        wait_for(lambda: predicate(self.health()), timeout=timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        return stop_process(self.proc, timeout)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def unexpected_errors(self, allowed: Iterable[str] = ()) -> list[str]:
        """Errors in stderr that neither ``expect_errors`` nor ``allowed`` declared."""
        return edge_log.unexpected_errors(self.stderr(), [*self.expected_errors, *allowed])

    def check_errors(self, allowed: Iterable[str] = ()) -> None:
        """Fail the test with the error entries nobody expected (call after ``stop``)."""
        found = self.unexpected_errors(allowed)
        if found:
            import pytest

            pytest.fail(
                f"edge on port {self.http_port} logged unexpected errors (declare them with "
                f"@pytest.mark.edge_errors or edge.expect_errors if the test provokes "
                f"them):\n" + "\n".join(found),
                pytrace=False,
            )

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.startswith("{")]

    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.http_port)


class Upstream:
    """A threaded HTTP/1.1 keep-alive upstream on loopback; ``handler`` answers each request.

    ``handler(req) -> (status, headers, body)`` where req is the BaseHTTPRequestHandler;
    the default echoes the request as JSON.
    """

    def __init__(
        self,
        handler: Callable[[BaseHTTPRequestHandler], tuple[int, list[tuple[str, str]], bytes]]
        | None = None,
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        outer = self
        answer = handler or echo

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are separate writes

            def setup(self) -> None:
                super().setup()
                outer.connections += 1

            def log_message(self, *_: Any) -> None:
                pass

            def _any(self) -> None:
                outer.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers)}
                )
                status, headers, body = answer(self)
                self.send_response(status)
                names = {k.lower() for k, _ in headers}
                for k, v in headers:
                    self.send_header(k, v)
                if "content-length" not in names and "transfer-encoding" not in names:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tagged(
    name: str,
) -> Callable[[BaseHTTPRequestHandler], tuple[int, list[tuple[str, str]], bytes]]:
    """An upstream's answer that names it: JSON with ``name`` as ``upstream`` and the
    request's path, Host and headers."""

    def answer(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        doc = {
            "upstream": name,
            "path": req.path,
            "host": req.headers.get("Host"),
            "headers": dict(req.headers),
        }
        return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()

    return answer


@contextlib.contextmanager
def tagged_upstreams(*names: str) -> Iterator[dict[str, Upstream]]:
    """One upstream per name, each answering with :func:`tagged`, closed afterwards."""
    servers = {name: Upstream(tagged(name)) for name in names}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()


def echo(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
    length = int(req.headers.get("Content-Length") or 0)
    body = req.rfile.read(length) if length else b""
    doc = {
        "method": req.command,
        "path": req.path,
        "headers": [[k, v] for k, v in req.headers.items()],
        "body_len": len(body),
    }
    return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()


def http_request(
    port: int, raw: bytes, timeout: float = 5.0, read_until_close: bool = False
) -> bytes:
    """Send raw bytes, return what comes back (one response, or everything until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                # read one response whose body length is known
                whole = b"".join(chunks)
                head, _, body = whole.partition(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length is not None and len(body) >= length:
                    break
        return b"".join(chunks)


def parse_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    """A response head's status and its header fields (names lowercased), in order."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers


def read_message(sock: socket.socket) -> bytes:
    """One HTTP message from ``sock``: its head and a body of Content-Length bytes (less if
    the peer closes first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def encrypted_key_pem(key_pem: str, password: bytes = b"hunter2") -> str:
    """``key_pem`` (an unencrypted PEM private key) encrypted with ``password``."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    ).decode()


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edge-test-") as d:
        yield Path(d)


@contextlib.contextmanager
def module_edge(
    redis_server: RedisServer, workdir: Path, host: str, target_url: str, **env: Any
) -> Iterator[EdgeProcess]:
    """One edge for a whole test module, routing ``host`` to ``target_url``."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.set(f"proxy:{host}", proxy_doc(host, target_url))
    edge = EdgeProcess(redis_server.url, workdir, CONFIG_RESYNC_INTERVAL=30, **env)
    edge.start()
    try:
        edge.wait_generation(lambda h: h["proxies"] == 1)
        yield edge
    finally:
        edge.stop(timeout=10)
    edge.check_errors()


def child_pids(parent: int, match: Callable[[list[bytes]], bool]) -> set[int]:
    """Live (not zombie) children of ``parent`` whose argv satisfies ``match``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the command name may contain spaces: fields after the closing parenthesis
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and match(argv):
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
