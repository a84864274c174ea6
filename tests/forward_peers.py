"""End-to-end tunnels: ``edge forward`` as a process, a project with its member's personal
access token and its tunnel targets made through an edge's admin API, and loopback TCP
peers that hash what crosses them.

Nothing here stands in for a part of the edge: the edges are real processes
(``edge_factory``), the client is the real ``edge forward``, and the peers are plain
sockets on 127.0.0.1 served by threads (blocking sockets release the GIL, as hashlib does
for large buffers, so a thread keeps up with a tunnel).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.api_client import Answer, call
from tests.helpers import ROOT, EdgeProcess, RedisServer, wait_for

__all__ = [
    "ForwardProcess",
    "MiB",
    "Project",
    "RssSampler",
    "StreamTarget",
    "make_project",
    "pattern",
    "read_all",
    "redis_command",
    "resp",
    "rss_kb",
    "send_all",
    "worker_pid",
]

MiB = 1024 * 1024
# the client's own variables: a test names the PAT and the URL, nothing leaks from outside
CLIENT_ENV = ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "EDGE_PAT", "XDG_CONFIG_HOME")
LISTENING = re.compile(r"forwarding (\S+):(\d+) -> ")


# ---------------------------------------------------------------------------- edge forward


class ForwardProcess:
    """``edge forward LOCAL TARGET --api-url URL`` with ``EDGE_PAT``; its stderr gathered
    line by line (off a terminal: one line per refusal, abnormal close and ended tunnel)."""

    def __init__(
        self, workdir: Path, api_url: str, target: str, token: str, local: str = "127.0.0.1:0"
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
        env.update(
            PYTHONPATH=str(ROOT), HOME=str(workdir), XDG_CONFIG_HOME=str(workdir), EDGE_PAT=token
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "forward", local, target, "--api-url", api_url],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
        )
        self.lines: list[str] = []
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
        return "\n".join(self.lines)

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in list(self.lines) if regex.search(line)]

    def wait_line(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line matching ``pattern`` (waited for)."""
        found = wait_for(lambda: self.matching(pattern), timeout, interval=0.01)
        return str(found[0])

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:  # pragma: no cover - the test fails on the status
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------- the project


@dataclass
class Project:
    """One project on an edge: a member (role ``modifier``: ``resources.port-forward`` and
    ``databases.show-secrets``) with a PAT, and the targets made for it, all through the
    admin API of ``edge``."""

    edge: EdgeProcess
    admin: str
    workdir: Path
    pid: str = ""
    uid: str = ""
    pat_id: str = ""
    pat: str = ""
    forwards: list[ForwardProcess] = field(default_factory=list)

    def api(self, method: str, path: str, body: Any = None) -> Answer:
        return call(self.edge.api_port, method, path, self.admin, body, timeout=10)

    def ok(self, method: str, path: str, body: Any = None, status: int = 201) -> Any:
        answer = self.api(method, path, body)
        assert answer.status == status, (method, path, answer.status, answer.raw)
        return answer.doc if answer.raw else None

    def database(self, host: str, port: int, engine: str = "postgres") -> str:
        """A database target (status ``created``); its id."""
        body: dict[str, Any] = {"project_id": self.pid, "name": engine, "engine": engine}
        body.update(host=host, port=port, status="created")
        return str(self.ok("POST", "/api/v1/databases", body)["id"])

    def resource(self, host: str, config_port: int, internal: tuple[int, ...] = ()) -> str:
        """An app and one resource of it at ``host:config_port``; the resource's id."""
        app = self.ok("POST", "/api/v1/apps", {"project_id": self.pid, "name": "app"})["id"]
        body = {"name": "res", "host": host, "config_port": config_port}
        if internal:
            body["config_internal_ports"] = list(internal)
        return str(self.ok("POST", f"/api/v1/apps/{app}/resources", body)["id"])

    def wait_target(self, target: str, *edges: EdgeProcess) -> None:
        """Until each edge's configuration has ``target`` (``database/ID`` or
        ``resource/ID[:PORT]``), as the member's public listing shows it: a ticket
        bought earlier would be refused with 404, and buying one takes a session slot."""
        kind, _, rest = target.partition("/")
        ident = rest.split(":")[0]
        for edge in edges or (self.edge,):
            if kind == "database":
                path = "/public-api/databases"
            else:
                app = self.ok("GET", f"/api/v1/app-resources/{ident}", status=200)["app_id"]
                path = f"/public-api/apps/{app}/resources"

            def listed(port: int = edge.api_port, path: str = path) -> bool:
                answer = call(port, "GET", path, self.pat)
                return answer.status == 200 and ident in [i["id"] for i in answer.doc["data"]]

            wait_for(listed, timeout=10)

    def forward(
        self, target: str, edge: EdgeProcess | None = None, url: str = ""
    ) -> ForwardProcess:
        """``edge forward 127.0.0.1:0 target`` through ``edge``'s API port (or ``url``)."""
        api_url = url or f"http://127.0.0.1:{(edge or self.edge).api_port}"
        forward = ForwardProcess(self.workdir, api_url, target, self.pat)
        self.forwards.append(forward)
        return forward

    def revoke(self) -> Answer:
        """The member's PAT revoked through the admin API."""
        path = f"/api/v1/projects/{self.pid}/tokens/{self.pat_id}?user_id={self.uid}"
        return self.api("DELETE", path)

    def slots(self, redis: RedisServer) -> int:
        """Session slots the project holds in Redis."""
        return int(redis.client().zcard(f"port_forward:sessions:{self.pid}"))

    def close(self) -> None:
        for forward in self.forwards:
            forward.stop(signal.SIGKILL)


def make_project(edge: EdgeProcess, admin: str, workdir: Path) -> Project:
    project = Project(edge, admin, workdir)
    project.pid = project.ok("POST", "/api/v1/projects/", {"name": "tunnels"})["id"]
    user = project.ok("POST", "/api/v1/users/", {"name": "dev", "email": "dev@example.com"})
    project.uid = user["id"]
    member = {"role": "modifier", "accepted": True}
    project.ok("PUT", f"/api/v1/projects/{project.pid}/members/{project.uid}", member)
    tokens = f"/api/v1/projects/{project.pid}/tokens"
    pat = project.ok("POST", tokens, {"user_id": project.uid, "name": "laptop"})["data"]
    project.pat_id, project.pat = pat["id"], pat["token"]
    return project


# ---------------------------------------------------------------------------- bytes


def pattern(seed: int, total: int, block: int = MiB) -> Iterator[bytes]:
    """``total`` bytes in blocks of ``block``: one random block, each copy numbered in its
    first 8 bytes (so a lost, repeated or reordered block changes the hash), made cheaply."""
    base = random.Random(seed).randbytes(block)
    index = 0
    sent = 0
    while sent < total:
        size = min(block, total - sent)
        yield (index.to_bytes(8, "big") + base[8:size])[:size]
        index += 1
        sent += size


def send_all(sock: socket.socket, blocks: Iterator[bytes], counter: list[int] | None = None) -> str:
    """Send every block, then shut the write side; the SHA-256 of what was sent."""
    digest = hashlib.sha256()
    for chunk in blocks:
        sock.sendall(chunk)
        digest.update(chunk)
        if counter is not None:
            counter[0] += len(chunk)
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def read_all(sock: socket.socket, counter: list[int] | None = None) -> tuple[int, str]:
    """Read until EOF: (byte count, SHA-256)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    while n := sock.recv_into(buffer):
        digest.update(view[:n])
        size += n
        if counter is not None:
            counter[0] = size
    return size, digest.hexdigest()


@dataclass
class Served:
    """One connection a :class:`StreamTarget` served."""

    received: int = 0
    received_sha: str = ""
    sent: list[int] = field(default_factory=lambda: [0])  # a counter the sender updates
    sent_sha: str = ""
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class StreamTarget:
    """A TCP service on loopback. Per connection, at once: it sends ``send`` bytes of
    :func:`pattern` (then shuts its write side), and reads until EOF hashing what comes;
    with ``answer``, once the client's EOF came it sends ``answer(count, sha)`` and closes
    (a server that answers a request ended by a half-close)."""

    def __init__(
        self,
        send: int = 0,
        seed: int = 1,
        answer: Callable[[int, str], bytes] | None = None,
        sndbuf: int | None = None,
    ) -> None:
        self.send = send
        self.seed = seed
        self.answer = answer
        self.sndbuf = sndbuf
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.served: list[Served] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            served = Served()
            self.served.append(served)
            threading.Thread(target=self._serve, args=(conn, served), daemon=True).start()

    def _serve(self, conn: socket.socket, served: Served) -> None:
        if self.sndbuf is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        sender: threading.Thread | None = None

        def send() -> None:
            try:
                served.sent_sha = send_all(conn, pattern(self.seed, self.send), served.sent)
            except OSError as exc:
                served.error = f"send: {exc!r}"

        try:
            with conn:
                if self.send:
                    sender = threading.Thread(target=send, daemon=True)
                    sender.start()
                served.received, served.received_sha = read_all(conn)
                if sender is not None:
                    sender.join()
                if self.answer is not None:
                    conn.sendall(self.answer(served.received, served.received_sha))
        except OSError as exc:
            served.error = served.error or repr(exc)
        finally:
            served.done.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


# ---------------------------------------------------------------------------- redis


def resp(*words: str) -> bytes:
    """One redis command in RESP."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def redis_command(sock: socket.socket, *words: str) -> bytes:
    """Send one command, return its whole reply (a simple one, or one bulk string)."""
    sock.sendall(resp(*words))
    reply = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the connection closed (after {reply!r})")
        reply += chunk
        head, crlf, rest = reply.partition(b"\r\n")
        if not crlf:
            continue
        if not head.startswith(b"$") or int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2:
            return reply


# ---------------------------------------------------------------------------- memory


def worker_pid(edge: EdgeProcess) -> int:
    """The pid of the edge's worker (one worker: the one that answers /health)."""
    assert edge.proc is not None
    pid = int(edge.health()["pid"])
    assert pid != edge.proc.pid
    return pid


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler:
    """VmRSS of ``pid`` every 50 ms in a thread; ``peak`` (kB) the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kb(pid)
        self.peak = self.start
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_kb(self.pid))
                self.samples += 1

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def elapsed(since: float) -> float:
    return time.monotonic() - since
