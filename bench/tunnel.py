"""Port-forward tunnels: throughput and added latency through ``edge forward`` and the edge,
side by side with the same bytes through two chained ``socat`` processes and directly.

Three paths to one target server, all on loopback, measured in the same run, interleaved:

* ``edge``: client -> ``edge forward 127.0.0.1:0 database/db_bench`` (each local connection
  buys a ticket with a PAT and opens its own WebSocket tunnel) -> the edge (``edge serve``,
  ``EDGE_WORKERS=1``; the tunnel endpoint on its API port) -> target;
* ``socat``: client -> ``socat TCP-LISTEN:A,fork,reuseaddr,backlog=128 TCP:127.0.0.1:B``
  -> ``socat TCP-LISTEN:B,fork,reuseaddr,backlog=128 TCP:127.0.0.1:target`` -> target: the
  same hops (a local forwarder, a middle hop); stock socat otherwise (its 8 KiB transfer
  block), the backlog raised from socat's 5 so that 100 connections can open at once;
* ``direct``: client -> target, for reference.

CPU placement (2 cores): the client (this harness), the target server and Redis on CPU 0;
the edge worker pinned to CPU 1, as in the other benchmarks; ``--forwarder-cpu`` chooses
where the local forwarder (``edge forward``, the first socat) runs: ``0`` (the default:
beside the client, as on a developer's laptop; the middle hop has CPU 1 to itself) or
``1`` (both hops of a chain share CPU 1, the load has CPU 0). The second socat is always
on CPU 1 with the edge worker's place.

* **Throughput**: one connection per measurement, one direction at a time, ``--mib`` MiB
  (1024 by default) in 64 KiB writes: ``up`` = client -> target (the client ``sendall``\\ s
  64 KiB buffers; the target counts and answers once it has everything), ``down`` = target
  -> client (the target writes 64 KiB buffers under asyncio flow control; the client
  ``recv_into`` s 64 KiB). The clock starts once the path is open (the target has
  answered the connection's first byte: for ``edge`` the ticket bought, the WebSocket
  open and the target connected) and stops when the last byte has arrived (``up``: the
  target's acknowledgement of the full count). MB/s with MB = 10^6 bytes. CPU seconds per
  GB (10^9 bytes) of the edge worker and of ``edge forward`` separately, and of both socat
  processes (their forked children included), from ``/proc/<pid>/task/*/schedstat`` (time
  on a CPU, user + system, in nanoseconds).
* **Latency**: ``--tunnels`` (100) connections opened at once through the path (for
  ``edge``: 100 tunnels, each its own ticket and WebSocket), then every connection
  repeats a round trip of 32 bytes to an echo target and its 32-byte answer, for
  ``--duration`` seconds after a 1 s warm-up. Two loads: ``closed`` (each connection sends
  its next request as soon as its answer is in: the path saturated; latency there is
  mostly queueing) and ``paced`` (each connection ``--paced`` round trips per second at
  random phases, unless the path cannot keep up). p50/p99 of each round trip, round trips
  per second, CPU µs per round trip of the path's processes; added latency = the path's
  percentile - the direct path's, in the same round. Before the first latency run of each
  path, the connections stay open and silent for ``--idle`` seconds (3): the CPU the path's
  processes spend per second on idle tunnels (for the edge: pings, the keeper's revocation
  checks and session heartbeats).

Medians over ``--rounds`` (5), and the ratios edge / socat per round and of the medians.
The product's goal: edge throughput at least 50% of socat's.

    python bench/tunnel.py                          # 5 rounds, 1 GiB per transfer (~10 min)
    python bench/tunnel.py --quick                  # smoke check: 1 round, 64 MiB, 2 s
    python bench/tunnel.py --rounds 3 --mib 512 --write-results
    python bench/tunnel.py --edge-ref HEAD          # the committed edge, not the work tree
    python bench/tunnel.py --profile bench/out      # py-spy of the edge processes instead
    python bench/tunnel.py --profile bench/out --native   # with uvloop's and libc's frames

Needs redis-server, socat and taskset (py-spy for ``--profile``); run from the repository
root with the project's Python (it starts ``python -m edge serve`` and ``python -m edge
forward`` from this checkout). Every process listens on a free ``127.0.0.1`` port and is
stopped when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run

SECTION_START = "<!-- bench/tunnel.py:start -->"
SECTION_END = "<!-- bench/tunnel.py:end -->"
TOOLS = ("redis-server", "socat", "taskset")
PATHS = ("direct", "socat", "edge")
DIRECTIONS = ("up", "down")
DIRECTION_LABELS = {"up": "client -> target", "down": "target -> client"}
LOADS = ("closed", "paced")
CHUNK = 64 * 1024
RT_SIZE = 32
DATABASE_ID = "db_bench"
MB = 1e6
GB = 1e9
OPEN_TIMEOUT = 120.0  # seconds for a path to open (100 tickets, each a PAT check)
IO_TIMEOUT = 120.0  # seconds without progress before a transfer is declared stuck
# socat listens with a backlog of 5 unless told: 100 connections opened at once overflow
# it (resets); edge forward's listener has asyncio's 100
SOCAT_BACKLOG = 128
SETTLE = 0.5  # seconds after a measurement for the forwarders to finish their connections
IDLE_SETTLE = 1.0  # seconds after the connections opened before their idle cost is measured

# The target's protocol: the client's first byte names the mode, then
#   E                 echo every byte back
#   S <8-byte count>  sink: swallow count bytes, then answer "=" + the count
#   R <8-byte count>  source: on the client's "G", write count bytes in 64 KiB writes
# and the target answers "+" as soon as it has the mode (and count): the path is open.
ECHO, SINK, SOURCE, GO, READY, DONE = b"E", b"S", b"R", b"G", b"+", b"="


# -------------------------------------------------------------------------------- target


class TargetProtocol(asyncio.Protocol):
    """One connection to the target: echo, sink or source, chosen by its first byte."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.mode = b""
        self.want = 0
        self.count = 0
        self.paused = False
        self.pumping = False
        self.chunk = memoryview(bytes(range(256)) * (CHUNK // 256))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == ECHO:
            self.transport.write(data)
            return
        if self.mode == SINK:
            self._sink(len(data))
            return
        if self.mode == SOURCE:
            if data.startswith(GO) and not self.pumping:
                self.pumping = True
                self._pump()
            return
        self.head += data
        mode = self.head[:1]
        if mode == ECHO:
            self.mode, rest = ECHO, self.head[1:]
            self.transport.write(READY + rest)
        elif mode in (SINK, SOURCE) and len(self.head) >= 9:
            self.mode, self.want = mode, int.from_bytes(self.head[1:9], "big")
            rest = self.head[9:]
            self.transport.write(READY)
            if rest:
                self.data_received(rest)
        elif mode not in (ECHO, SINK, SOURCE, b""):
            self.transport.close()

    def _sink(self, n: int) -> None:
        assert self.transport is not None
        self.count += n
        if self.count >= self.want:
            self.transport.write(DONE + self.count.to_bytes(8, "big"))
            self.want = 1 << 62  # answered once

    def _pump(self) -> None:
        assert self.transport is not None
        while not self.paused and self.count < self.want:
            n = min(CHUNK, self.want - self.count)
            self.count += n
            self.transport.write(self.chunk if n == CHUNK else self.chunk[:n])

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.pumping:
            self._pump()

    def eof_received(self) -> bool:
        return False  # close


def serve_target() -> int:
    """The target server (run as its own process): prints its port, serves until killed."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(TargetProtocol, run.LOOPBACK, 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return 0


# -------------------------------------------------------------------------------- setup


@dataclass
class World:
    """What lives for the whole run: every process, their ports and pids."""

    children: run.Children
    tmp: Path
    forwarder_cpu: str
    src: Path = run.REPO_ROOT  # the edge's source tree (a worktree with --edge-ref)
    redis_port: int = 0
    target_port: int = 0
    target: run.Child | None = None
    edge: run.Child | None = None
    api_port: int = 0
    worker_pid: int = 0
    forward: run.Child | None = None
    forward_port: int = 0
    socat_outer: run.Child | None = None
    socat_inner: run.Child | None = None
    socat_port: int = 0

    def port(self, path: str) -> int:
        return {"direct": self.target_port, "socat": self.socat_port, "edge": self.forward_port}[
            path
        ]

    def pids(self, path: str) -> dict[str, int]:
        """The processes whose CPU the path's samples record, by label."""
        if path == "edge":
            assert self.forward is not None
            return {"edge worker": self.worker_pid, "edge forward": self.forward.pid}
        if path == "socat":
            assert self.socat_outer is not None and self.socat_inner is not None
            return {"socat outer": self.socat_outer.pid, "socat inner": self.socat_inner.pid}
        return {}


def read_first_line(child: run.Child, path: Path, pattern: str, timeout: float = 30) -> str:
    """The first line of ``path`` (a child's stdout) matching ``pattern``, once written."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if regex.search(line):
                    return line
        if child.proc.poll() is not None:
            raise run.BenchError(f"{child.name} exited:\n{child.stderr_tail()}")
        time.sleep(0.05)
    raise run.BenchError(f"{child.name} printed no line like {pattern!r}:\n{child.stderr_tail()}")


def start_target(w: World) -> None:
    d = w.tmp / "target"
    d.mkdir()
    argv = run.pin([sys.executable, str(Path(__file__).resolve()), "--serve-target"], run.LOAD_CPU)
    w.target = w.children.spawn("target", argv, cwd=d, stdout=d / "out", stderr=d / "err")
    w.target_port = int(read_first_line(w.target, d / "out", r"^\d+$"))


def api(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(run.LOOPBACK, port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


def start_edge(w: World, admin: str, sessions: int) -> None:
    """``edge serve`` with one worker pinned to CPU 1 (plain HTTP only; the tunnel
    endpoints and the ticket endpoint are on its API port)."""
    d = w.tmp / "edge"
    d.mkdir()
    w.api_port = run.free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=run.edge_pythonpath(w.src, env),
        REDIS_URL=f"redis://{run.LOOPBACK}:{w.redis_port}/0",
        SERVER_HOST=run.LOOPBACK,
        HTTP_PORT=str(run.free_port()),
        HTTPS_PORT="0",
        PROXY_PROTOCOL_PORT="0",
        PROXY_PROTOCOL_TLS_PORT="0",
        AUTO_HTTPS="false",
        API_HOST=run.LOOPBACK,
        API_PORT=str(w.api_port),
        EDGE_WORKERS="1",
        LOG_LEVEL="WARNING",
        EDGE_STATE_DIR=str(d / "state"),
        ADMIN_TOKEN=admin,
        # the latency test holds --tunnels sessions of one project at once
        PORT_FORWARD_MAX_SESSIONS=str(sessions),
    )
    argv = run.pin([sys.executable, "-m", "edge", "serve"], run.PROXY_CPU)
    w.edge = w.children.spawn(
        "edge", argv, env=env, cwd=d, stdout=d / "access.log", stderr=d / "stderr.log"
    )
    run.wait_port(w.api_port)
    named = [
        p for p in run.process_tree(w.edge.pid) if re.search(r"-m edge worker\b", run.cmdline(p))
    ]
    if len(named) != 1:
        raise run.BenchError(f"expected one edge worker, found {named}")
    w.worker_pid = named[0]


def seed(w: World, admin: str) -> str:
    """A project with one accepted owner and their PAT, and the database target pointing
    at the target server (written to Redis as an admin would): the PAT."""
    status, project = api(w.api_port, "POST", "/api/v1/projects/", admin, {"name": "bench"})
    if status != 201:
        raise run.BenchError(f"project: {status} {project}")
    pid = project["id"]
    status, user = api(
        w.api_port, "POST", "/api/v1/users/", admin, {"name": "bench", "email": "bench@bench.local"}
    )
    if status != 201:
        raise run.BenchError(f"user: {status} {user}")
    status, doc = api(
        w.api_port,
        "PUT",
        f"/api/v1/projects/{pid}/members/{user['id']}",
        admin,
        {"role": "owner", "accepted": True},
    )
    if status not in (200, 201):
        raise run.BenchError(f"member: {status} {doc}")
    status, doc = api(
        w.api_port,
        "POST",
        f"/api/v1/projects/{pid}/tokens",
        admin,
        {"user_id": user["id"], "name": "bench"},
    )
    if status != 201:
        raise run.BenchError(f"pat: {status} {doc}")
    target = {
        "id": DATABASE_ID,
        "project_id": pid,
        "name": "bench",
        "engine": "postgres",
        "host": run.LOOPBACK,
        "port": w.target_port,
        "status": "created",
    }
    run.redis_command(w.redis_port, "SET", f"database:{DATABASE_ID}", json.dumps(target))
    return str(doc["data"]["token"])


def start_forward(w: World, pat: str) -> None:
    d = w.tmp / "forward"
    d.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE")
    }
    env.update(
        PYTHONPATH=run.edge_pythonpath(w.src, env),
        EDGE_PAT=pat,
        HOME=str(d),
        XDG_CONFIG_HOME=str(d),
    )
    argv = [
        sys.executable,
        "-m",
        "edge",
        "forward",
        f"{run.LOOPBACK}:0",
        f"database/{DATABASE_ID}",
        "--api-url",
        f"http://{run.LOOPBACK}:{w.api_port}",
    ]
    w.forward = w.children.spawn(
        "edge forward",
        run.pin(argv, w.forwarder_cpu),
        env=env,
        cwd=d,
        stdout=d / "out",
        stderr=d / "err",
    )
    line = read_first_line(w.forward, d / "out", r"^forwarding ")
    found = re.match(r"forwarding \S+:(\d+) -> ", line)
    if not found:
        raise run.BenchError(f"edge forward: unexpected first line {line!r}")
    w.forward_port = int(found.group(1))


def start_socat(w: World) -> None:
    d = w.tmp / "socat"
    d.mkdir()
    inner = run.free_port()
    w.socat_port = run.free_port()

    def argv(listen: int, to: int) -> list[str]:
        return [
            "socat",
            f"TCP-LISTEN:{listen},bind={run.LOOPBACK},fork,reuseaddr,backlog={SOCAT_BACKLOG}",
            f"TCP:{run.LOOPBACK}:{to}",
        ]

    w.socat_inner = w.children.spawn(
        "socat inner",
        run.pin(argv(inner, w.target_port), run.PROXY_CPU),
        cwd=d,
        stderr=d / "inner.err",
    )
    w.socat_outer = w.children.spawn(
        "socat outer",
        run.pin(argv(w.socat_port, inner), w.forwarder_cpu),
        cwd=d,
        stderr=d / "outer.err",
    )
    run.wait_port(inner)
    run.wait_port(w.socat_port)


def wait_path(w: World, path: str, timeout: float = 60) -> None:
    """Until an echo round trip through ``path`` works (for the edge: the target has reached
    the worker's configuration and a tunnel opens)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((run.LOOPBACK, w.port(path)), timeout=10) as s:
                s.sendall(ECHO + b"ping")
                if recv_exactly(s, 5) == READY + b"ping":
                    return
                last = "wrong answer"
        except (OSError, run.BenchError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise run.BenchError(f"path {path} did not open: {last}")


# -------------------------------------------------------------------------------- CPU


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU (user + system, ``/proc/<pid>/task/<tid>/schedstat``) of every
    thread of ``pid`` and of its live descendants. Every measured window lies inside the
    lifetime of its connections, so a forking server's children (socat's) are all alive at
    both ends of it; clock ticks would not do: each of 200 socat children uses less than
    one tick in a latency run."""
    total = 0
    for p in run.process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def cpu_snapshot(pids: dict[str, int]) -> dict[str, int]:
    return {label: cpu_ns(pid) for label, pid in pids.items()}


def cpu_seconds(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    return {k: (after[k] - before[k]) / 1e9 for k in before}


# -------------------------------------------------------------------------------- throughput


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            raise run.BenchError(f"connection closed after {len(out)} of {n} bytes")
        out += got
    return bytes(out)


@dataclass
class Transfer:
    round: int
    path: str
    direction: str
    nbytes: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # label -> CPU seconds

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / MB

    def cpu_per_gb(self, label: str) -> float:
        return self.cpu[label] / (self.nbytes / GB)


def transfer(w: World, rnd: int, path: str, direction: str, nbytes: int) -> Transfer:
    """One connection through ``path`` moving ``nbytes`` one way in 64 KiB writes."""
    pids = w.pids(path)
    chunk = memoryview(bytes(range(256)) * (CHUNK // 256))
    with socket.create_connection((run.LOOPBACK, w.port(path)), timeout=OPEN_TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = SINK if direction == "up" else SOURCE
        s.sendall(mode + nbytes.to_bytes(8, "big"))
        if recv_exactly(s, 1) != READY:
            raise run.BenchError(f"{path}: the target did not answer the open")
        s.settimeout(IO_TIMEOUT)
        before = cpu_snapshot(pids)
        start = time.perf_counter()
        if direction == "up":
            full, rest = divmod(nbytes, CHUNK)
            for _ in range(full):
                s.sendall(chunk)
            if rest:
                s.sendall(chunk[:rest])
            answer = recv_exactly(s, 9)
            if answer[:1] != DONE or int.from_bytes(answer[1:], "big") != nbytes:
                raise run.BenchError(f"{path} up: the target answered {answer!r}")
        else:
            s.sendall(GO)
            buf = bytearray(CHUNK)
            got = 0
            while got < nbytes:
                n = s.recv_into(buf)
                if not n:
                    raise run.BenchError(f"{path} down: closed after {got} of {nbytes} bytes")
                got += n
        seconds = time.perf_counter() - start
        after = cpu_snapshot(pids)
    # the forwarders' share of closing the connection is not the transfer's
    time.sleep(SETTLE)
    return Transfer(rnd, path, direction, nbytes, seconds, cpu_seconds(before, after))


# -------------------------------------------------------------------------------- latency


class Clock:
    """When the warm-up ends and the measured stretch ends (perf_counter seconds)."""

    def __init__(self) -> None:
        self.measure_from = float("inf")
        self.stop_at = float("inf")


class RoundTrips(asyncio.Protocol):
    """One connection doing 32-byte round trips to the echo target, closed-loop or paced."""

    def __init__(
        self, clock: Clock, samples: list[float], rate: float, opened: asyncio.Future[None]
    ) -> None:
        self.clock = clock
        self.samples = samples
        self.interval = 1 / rate if rate > 0 else 0.0
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.is_open = False
        self.ending = False
        self.pending = 0  # answer bytes still expected
        self.sent_at = 0.0
        self.next_at = 0.0
        self.payload = os.urandom(RT_SIZE)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(ECHO)

    def start(self) -> None:
        """Begin the round trips (all connections are open)."""
        self.next_at = time.perf_counter() + random.random() * self.interval
        self._schedule()

    def _schedule(self) -> None:
        now = time.perf_counter()
        if now >= self.clock.stop_at:
            if not self.done.done():
                self.done.set_result(None)
            return
        if self.interval and self.next_at > now:
            asyncio.get_running_loop().call_later(self.next_at - now, self._send)
        else:
            self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.sent_at = time.perf_counter()
        if self.interval:
            # the schedule does not drift; a late answer does not pile up requests
            self.next_at = max(self.next_at + self.interval, self.sent_at)
        self.pending = RT_SIZE
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        if not self.is_open:
            if data[:1] != READY:
                self._fail(f"unexpected open answer {data[:16]!r}")
                return
            self.is_open = True
            data = data[1:]
            if not self.opened.done():
                self.opened.set_result(None)
            if not data:
                return
        self.pending -= len(data)
        if self.pending > 0:
            return
        if self.pending < 0:
            self._fail("more bytes than sent")
            return
        now = time.perf_counter()
        if self.sent_at >= self.clock.measure_from:
            self.samples.append(now - self.sent_at)
        self._schedule()

    def _fail(self, why: str) -> None:
        for fut in (self.opened, self.done):
            if not fut.done():
                fut.set_exception(run.BenchError(why))
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> None:
        """Close at the end of the run (not a failure)."""
        self.ending = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ending:
            self._fail(f"connection lost: {exc or 'closed by the peer'}")


@dataclass
class Latency:
    round: int
    path: str
    load: str
    tunnels: int
    seconds: float
    p50_us: float
    p99_us: float
    count: int
    cpu: dict[str, float] = field(default_factory=dict)
    idle_cpu: dict[str, float] = field(default_factory=dict)  # label -> CPU s per s, idle

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def cpu_us_per_rt(self, label: str) -> float:
        return self.cpu[label] / self.count * 1e6 if self.count else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _round_trips(
    port: int,
    tunnels: int,
    rate: float,
    warmup: float,
    duration: float,
    idle: float,
    pids: dict[str, int],
) -> tuple[list[float], dict[str, float], dict[str, float]]:
    """Open ``tunnels`` connections at once; with ``idle``, measure the CPU they cost open
    and silent for that long; then the round trips. Returns the measured round trips'
    seconds, the CPU seconds of the measured stretch and the idle CPU seconds per second."""
    loop = asyncio.get_running_loop()
    clock = Clock()
    samples: list[float] = []
    conns: list[RoundTrips] = []
    opened: list[asyncio.Future[None]] = []

    async def connect() -> None:
        fut: asyncio.Future[None] = loop.create_future()
        opened.append(fut)
        _, proto = await loop.create_connection(
            lambda: RoundTrips(clock, samples, rate, fut), run.LOOPBACK, port
        )
        conns.append(proto)

    async def settle(futures: Sequence[asyncio.Future[Any]], what: str) -> None:
        """Every future's outcome (each exception retrieved); the first failure raised."""
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        failed = [x for x in outcomes if isinstance(x, BaseException)]
        if failed:
            raise run.BenchError(f"{len(failed)} of {len(futures)} connections {what}: {failed[0]}")

    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            await settle([asyncio.ensure_future(connect()) for _ in range(tunnels)], "not made")
            await settle(opened, "not opened")
        idle_cpu: dict[str, float] = {}
        if idle > 0:
            await asyncio.sleep(IDLE_SETTLE)  # the openings' own work done
            quiet = cpu_snapshot(pids)
            await asyncio.sleep(idle)
            idle_cpu = {k: v / idle for k, v in cpu_seconds(quiet, cpu_snapshot(pids)).items()}
        start = time.perf_counter()
        clock.measure_from = start + warmup
        clock.stop_at = clock.measure_from + duration
        for c in conns:
            c.start()
        await asyncio.sleep(warmup)
        before = cpu_snapshot(pids)
        await asyncio.sleep(duration)
        after = cpu_snapshot(pids)
        async with asyncio.timeout(IO_TIMEOUT):
            await settle([c.done for c in conns], "failed")
    finally:
        for c in conns:
            c.finish()
        for fut in (*opened, *(c.done for c in conns)):
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a failure is reported once, above
        await asyncio.sleep(0)
    return samples, cpu_seconds(before, after), idle_cpu


def latency(
    w: World,
    rnd: int,
    path: str,
    load: str,
    tunnels: int,
    rate: float,
    warmup: float,
    duration: float,
    idle: float = 0.0,
) -> Latency:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        samples, cpu, idle_cpu = runner.run(
            _round_trips(
                w.port(path),
                tunnels,
                rate if load == "paced" else 0.0,
                warmup,
                duration,
                idle,
                w.pids(path),
            )
        )
    time.sleep(SETTLE * 2)  # the forwarders close 100 connections (the edge: 100 tunnels)
    if not samples:
        raise run.BenchError(f"{path} {load}: no round trip completed")
    return Latency(
        rnd,
        path,
        load,
        tunnels,
        duration,
        percentile(samples, 0.5) * 1e6,
        percentile(samples, 0.99) * 1e6,
        len(samples),
        cpu,
        idle_cpu,
    )


# -------------------------------------------------------------------------------- profile


def profile(w: World, out: Path, nbytes: int, py_spy: str, native: bool) -> None:
    """py-spy of the edge worker and of ``edge forward`` during 30 s of transfers each way
    (one after another): the raw stacks per process and direction (``--format raw``, for
    flamegraph.pl or speedscope) and their top functions, printed and saved beside them."""
    out.mkdir(parents=True, exist_ok=True)
    assert w.forward is not None
    for direction in DIRECTIONS:
        estimate = 30.0
        procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        for label, pid in (("worker", w.worker_pid), ("forward", w.forward.pid)):
            raw = out / f"tunnel-{direction}-{label}.txt"
            cmd = [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--duration",
                str(int(estimate)),
                # native unwinding needs the process stopped at each sample
                *(["--native"] if native else ["--nonblocking"]),
            ]
            procs.append(
                (
                    label,
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                    raw,
                )
            )
        time.sleep(1.0)
        deadline = time.monotonic() + estimate - 2
        moved = 0
        while time.monotonic() < deadline:
            t = transfer(w, 0, "edge", direction, nbytes)
            moved += t.nbytes
            run.progress(f"profile {direction}: {t.mbps:.1f} MB/s")
        for label, proc, raw in procs:
            _, err = proc.communicate(timeout=estimate + 30)
            if proc.returncode != 0 or not raw.exists():
                raise run.BenchError(f"py-spy {label}: {err.decode(errors='replace')[-500:]}")
            summary = run.summarize_raw_profile(raw, top=30)
            (out / f"tunnel-{direction}-{label}.top.txt").write_text(summary)
            print(f"== {direction} ({DIRECTION_LABELS[direction]}), edge {label} ==")
            print(summary)


# -------------------------------------------------------------------------------- report


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def versions() -> dict[str, str]:
    import wsproto

    info = run.machine_info()
    out = {k: info[k] for k in ("nproc", "cpu", "kernel", "python", "git")}
    out["socat"] = run.tool_version(["socat", "-V"])
    for line in subprocess.run(["socat", "-V"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("socat version"):
            out["socat"] = line.split(" on ")[0].strip()
    out["redis"] = run.tool_version(["redis-server", "--version"]).split(" sha=")[0]
    out["wsproto"] = wsproto.__version__
    try:
        import uvloop

        out["uvloop"] = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        out["uvloop"] = "absent"
    return out


def render(
    transfers: list[Transfer],
    lats: list[Latency],
    args: argparse.Namespace,
    command: str,
    info: dict[str, str],
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    size = f"{args.mib} MiB" if args.mib < 1024 or args.mib % 1024 else f"{args.mib // 1024} GiB"
    fwd_where = (
        "beside the client (a developer's laptop; the middle hop has CPU 1 to itself)"
        if args.forwarder_cpu == run.LOAD_CPU
        else "on CPU 1 with the middle hop (the chain shares one core; the load has the other)"
    )
    lines = [
        SECTION_START,
        "## Port-forward tunnels (`bench/tunnel.py`)",
        "",
        f"- Date: {when}",
        f"- Machine: nproc={info['nproc']} (2 cores, shared and noisy), CPU: {info['cpu']}, "
        f"Linux {info['kernel']}; load average (1/5/15 min) before: {info['loadavg_before']}, "
        f"after: {info['loadavg_after']} (the latency runs' own 200 socat processes count in it)",
        f"- Software: Python {info['python']}, uvloop {info['uvloop']}, wsproto "
        f"{info['wsproto']}, {info['socat']}, {info['redis']}, edge at git {info['git']}",
        f"- Command: `{command}`",
        "- Paths to one target server on loopback: **edge** = client -> `edge forward` -> "
        "edge (`EDGE_WORKERS=1`, the tunnel endpoint on its API port; a WebSocket per "
        "connection, `edge-tunnel.v1`) -> target; **socat** = client -> `socat "
        "TCP-LISTEN:A,fork,reuseaddr,backlog=128 TCP:127.0.0.1:B` -> `socat "
        "TCP-LISTEN:B,fork,reuseaddr,backlog=128 TCP:127.0.0.1:target` -> target (otherwise "
        "stock: 8 KiB blocks; the backlog raised from 5 for 100 connections opened at once); "
        "**direct** = client -> target.",
        f"- CPUs: client (this harness), target and Redis on CPU {run.LOAD_CPU}; the edge "
        f"worker and the inner socat on CPU {run.PROXY_CPU}; the local forwarder (`edge "
        f"forward`, the outer socat) on CPU {args.forwarder_cpu}, {fwd_where}.",
        f"- {args.rounds} interleaved round(s), medians over rounds.",
        "",
        f"### Throughput: one connection, one direction, {size} in 64 KiB writes",
        "",
        "MB/s = 10^6 bytes per second, from the path being open (for the edge: ticket "
        "bought, WebSocket open, target connected) to the last byte received. CPU s/GB: "
        "CPU seconds (user + system, `/proc/*/task/*/schedstat`) per 10^9 bytes moved.",
        "",
        "| direction | path | MB/s | MB/s range | CPU s/GB edge worker | CPU s/GB edge forward "
        "| CPU s/GB socat (both) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    medians: dict[tuple[str, str], float] = {}
    for direction in DIRECTIONS:
        for path in PATHS:
            ts = [t for t in transfers if t.path == path and t.direction == direction]
            if not ts:
                continue
            m = med([t.mbps for t in ts])
            medians[(direction, path)] = m
            lo, hi = min(t.mbps for t in ts), max(t.mbps for t in ts)
            worker = forward = socat = "-"
            if path == "edge":
                worker = f"{med([t.cpu_per_gb('edge worker') for t in ts]):.2f}"
                forward = f"{med([t.cpu_per_gb('edge forward') for t in ts]):.2f}"
            if path == "socat":
                both = [t.cpu_per_gb("socat outer") + t.cpu_per_gb("socat inner") for t in ts]
                socat = f"{med(both):.2f}"
            lines.append(
                f"| {DIRECTION_LABELS[direction]} | {path} | {m:,.1f} | {lo:,.1f}-{hi:,.1f} | "
                f"{worker} | {forward} | {socat} |"
            )
    lines += [
        "",
        "| direction | edge ÷ socat (medians) | edge ÷ socat per round | socat ÷ direct "
        "| edge ÷ direct | goal: edge >= 50% of socat |",
        "|---|---:|---|---:|---:|---|",
    ]
    for direction in DIRECTIONS:
        if (direction, "edge") not in medians or (direction, "socat") not in medians:
            continue
        per_round = []
        for rnd in sorted({t.round for t in transfers}):
            e = [
                t.mbps
                for t in transfers
                if (t.round, t.path, t.direction) == (rnd, "edge", direction)
            ]
            s = [
                t.mbps
                for t in transfers
                if (t.round, t.path, t.direction) == (rnd, "socat", direction)
            ]
            if e and s:
                per_round.append(f"{e[0] / s[0]:.2f}")
        ratio = medians[(direction, "edge")] / medians[(direction, "socat")]
        direct = medians.get((direction, "direct"), float("nan"))
        lines.append(
            f"| {DIRECTION_LABELS[direction]} | **{ratio:.2f}x** | {', '.join(per_round)} | "
            f"{medians[(direction, 'socat')] / direct:.2f}x | "
            f"{medians[(direction, 'edge')] / direct:.2f}x | "
            f"{'met' if ratio >= 0.5 else 'not met'} |"
        )
    if lats:
        lines += [
            "",
            f"### Latency: {args.tunnels} concurrent connections (for the edge: "
            f"{args.tunnels} tunnels), {RT_SIZE}-byte request, {RT_SIZE}-byte answer (echo)",
            "",
            f"{args.duration} s measured per run after 1 s of warm-up. `closed`: each "
            "connection sends its next request as soon as its answer arrives (the path "
            f"saturated: latency is mostly queueing); `paced`: {args.paced:g} round trips per "
            f"second per connection ({args.paced * args.tunnels:,.0f}/s offered), random "
            "phases. Added = the path's percentile minus the direct path's in the same "
            "round, median over rounds. CPU µs per round trip of the path's processes.",
            "",
            "| load | path | round trips/s | p50 µs | p99 µs | added p50 µs | added p99 µs "
            "| CPU µs/rt edge worker | CPU µs/rt edge forward | CPU µs/rt socat (both) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for load in LOADS:
            for path in PATHS:
                ls = [x for x in lats if x.path == path and x.load == load]
                if not ls:
                    continue
                added50, added99 = [], []
                for x in ls:
                    d = [y for y in lats if (y.round, y.path, y.load) == (x.round, "direct", load)]
                    if d and path != "direct":
                        added50.append(x.p50_us - d[0].p50_us)
                        added99.append(x.p99_us - d[0].p99_us)
                worker = forward = socat = "-"
                if path == "edge":
                    worker = f"{med([x.cpu_us_per_rt('edge worker') for x in ls]):.1f}"
                    forward = f"{med([x.cpu_us_per_rt('edge forward') for x in ls]):.1f}"
                if path == "socat":
                    both = [
                        x.cpu_us_per_rt("socat outer") + x.cpu_us_per_rt("socat inner") for x in ls
                    ]
                    socat = f"{med(both):.1f}"
                a50 = f"{med(added50):,.0f}" if added50 else "-"
                a99 = f"{med(added99):,.0f}" if added99 else "-"
                lines.append(
                    f"| {load} | {path} | {med([x.rate for x in ls]):,.0f} | "
                    f"{med([x.p50_us for x in ls]):,.0f} | {med([x.p99_us for x in ls]):,.0f} | "
                    f"{a50} | {a99} | {worker} | {forward} | {socat} |"
                )
    idle = [x for x in lats if x.idle_cpu]
    if idle:
        lines += [
            "",
            f"### {args.tunnels} connections open and idle",
            "",
            f"CPU milliseconds per second of the path's processes with {args.tunnels} "
            f"connections open and silent ({args.idle:g} s measured, {IDLE_SETTLE:g} s after "
            "they opened), median over rounds (1000 = one core).",
            "",
            "| path | CPU ms/s edge worker | CPU ms/s edge forward | CPU ms/s socat (both) |",
            "|---|---:|---:|---:|",
        ]
        for path in ("socat", "edge"):
            xs = [x for x in idle if x.path == path]
            if not xs:
                continue
            worker = forward = socat = "-"
            if path == "edge":
                worker = f"{med([x.idle_cpu['edge worker'] for x in xs]) * 1e3:.1f}"
                forward = f"{med([x.idle_cpu['edge forward'] for x in xs]) * 1e3:.1f}"
            else:
                both = [x.idle_cpu["socat outer"] + x.idle_cpu["socat inner"] for x in xs]
                socat = f"{med(both) * 1e3:.1f}"
            lines.append(f"| {path} | {worker} | {forward} | {socat} |")
    lines += ["", SECTION_END]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mib", type=int, default=1024, help="MiB per transfer (1024)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of each latency run (5)")
    p.add_argument("--tunnels", type=int, default=100, help="concurrent connections (100)")
    p.add_argument(
        "--paced",
        type=float,
        default=10.0,
        help="round trips per second per connection of the paced load (10; 0: skip)",
    )
    p.add_argument(
        "--forwarder-cpu",
        choices=(run.LOAD_CPU, run.PROXY_CPU),
        default=run.LOAD_CPU,
        help="CPU of the local forwarder (edge forward, the outer socat)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="seconds the open connections are measured idle before the first latency run "
        "of each path (3; 0: skip)",
    )
    p.add_argument("--only", help="comma-separated parts: throughput,latency")
    p.add_argument(
        "--quick", action="store_true", help="a smoke check: 1 round, 64 MiB, 2 s of latency"
    )
    p.add_argument(
        "--write-results",
        action="store_true",
        help="replace (or append) the section in bench/RESULTS.md",
    )
    p.add_argument("--json", type=Path, help="write every sample as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="instead of measuring: py-spy of the edge worker and edge forward",
    )
    p.add_argument("--py-spy", default="py-spy", help="the py-spy executable (py-spy)")
    p.add_argument(
        "--native",
        action="store_true",
        help="with --profile: native frames too (uvloop, libc, the kernel's entry points)",
    )
    p.add_argument(
        "--edge-ref",
        metavar="REV",
        help="run the edge (serve and forward) from a git worktree of REV instead of this "
        "checkout's working tree (e.g. HEAD while others' edits are uncommitted)",
    )
    p.add_argument("--serve-target", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.mib, args.duration = 1, 64, 2.0
    args.parts = [x.strip() for x in (args.only or "throughput,latency").split(",") if x.strip()]
    if not args.parts or not set(args.parts) <= {"throughput", "latency"}:
        p.error("--only takes some of throughput,latency")
    if args.rounds < 1 or args.mib < 1 or args.duration <= 0 or args.tunnels < 1:
        p.error("--rounds, --mib, --duration and --tunnels must be positive")
    if args.idle < 0 or args.paced < 0:
        p.error("--idle and --paced must not be negative")
    if args.write_results and (args.quick or args.profile):
        p.error("--write-results records a full run: not with --quick or --profile")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_target:
        return serve_target()
    tools = (*TOOLS, args.py_spy) if args.profile else TOOLS
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"error: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "bench/tunnel.py", *(sys.argv[1:] if argv is None else argv)])
    info = versions()
    info["loadavg_before"] = run.loadavg()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)  # cleanup runs on them too
    os.sched_setaffinity(0, {int(run.LOAD_CPU)})  # the client
    transfers: list[Transfer] = []
    lats: list[Latency] = []
    tmp = Path(tempfile.mkdtemp(prefix="tunnel-bench-"))
    w = World(run.Children(), tmp, args.forwarder_cpu)
    nbytes = args.mib * 1024 * 1024
    loads = [x for x in LOADS if x != "paced" or args.paced > 0]
    stack = contextlib.ExitStack()
    try:
        if args.edge_ref:
            source = stack.enter_context(run.edge_worktree(args.edge_ref))
            run.check_edge_source(source.path)
            w.src = source.path
            info["git"] = f"{source.short} (a worktree of `{args.edge_ref}`)"
        _, w.redis_port = run.start_redis(w.children, tmp)
        start_target(w)
        from edge.auth.secrets import new_admin_token

        admin = new_admin_token()
        start_edge(w, admin, sessions=max(1000, 2 * args.tunnels))
        pat = seed(w, admin)
        start_forward(w, pat)
        start_socat(w)
        for path in PATHS:
            wait_path(w, path)
        run.progress(
            f"paths open: direct :{w.target_port}, socat :{w.socat_port}, "
            f"edge forward :{w.forward_port} (edge worker pid {w.worker_pid})"
        )
        if args.profile:
            py_spy = shutil.which(args.py_spy) or args.py_spy
            profile(w, args.profile, nbytes, py_spy, args.native)
            return 0
        for rnd in range(1, args.rounds + 1):
            if "throughput" in args.parts:
                for direction in DIRECTIONS:
                    for path in PATHS:
                        t = transfer(w, rnd, path, direction, nbytes)
                        transfers.append(t)
                        cpu = ", ".join(f"{k} {t.cpu_per_gb(k):.2f}" for k in t.cpu)
                        run.progress(
                            f"round {rnd} {direction:<4} {path:<6} {t.mbps:8.1f} MB/s "
                            f"({t.seconds:.2f} s){'  CPU s/GB: ' + cpu if cpu else ''}"
                        )
            if "latency" in args.parts:
                for load in loads:
                    for path in PATHS:
                        idle = args.idle if load == loads[0] else 0.0
                        x = latency(
                            w, rnd, path, load, args.tunnels, args.paced, 1.0, args.duration, idle
                        )
                        lats.append(x)
                        cpu = ", ".join(f"{k} {x.cpu_us_per_rt(k):.1f}" for k in x.cpu)
                        still = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in x.idle_cpu.items())
                        run.progress(
                            f"round {rnd} {load:<6} {path:<6} {x.rate:8,.0f} rt/s  "
                            f"p50 {x.p50_us:8,.0f} µs  p99 {x.p99_us:8,.0f} µs"
                            f"{'  CPU µs/rt: ' + cpu if cpu else ''}"
                            f"{'  idle CPU ms/s: ' + still if still else ''}"
                        )
    except run.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping children", file=sys.stderr)
        return 130
    finally:
        w.children.stop_all()
        stack.close()
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_after"] = run.loadavg()
    text = render(transfers, lats, args, command, info)
    if args.json:
        data = {
            "command": command,
            "machine": info,
            "transfers": [{**asdict(t), "mbps": t.mbps} for t in transfers],
            "latency": [{**asdict(x), "rate": x.rate} for x in lats],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    run.publish(text, args.write_results, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
