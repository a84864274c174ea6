#!/usr/bin/env python3
"""Side-by-side benchmark of reverse proxies doing the same job.

Every proxy under test (nginx, HAProxy, Caddy and the edge) forwards ``GET`` requests to one
upstream (a separate single-worker nginx serving static files) with keep-alive on both legs
and access logging enabled.  Load comes from ``wrk -t1 -c50`` pinned to CPU 0, next to the
upstream; in the single-worker scenarios the proxy is pinned to CPU 1.

Rounds are interleaved (round -> scenario -> proxy) so slow drifts of the machine hit every
proxy alike; medians over rounds are reported, together with the CPU time each proxy spent
per request (read from /proc), which is much less sensitive to machine noise than req/s.

``--edge-ref REV`` adds the edge as it was at another git revision (checked out in a temporary
``git worktree``) as a row of its own, so a change can be measured before/after in one run.

Python 3.11 standard library only.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
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
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
OUT_DIR = BENCH_DIR / "out"

LOOPBACK = "127.0.0.1"
HOST = "bench.local"
SMALL_BODY = b"hello, world\n"  # 13 bytes
BIG_SIZE = 65536
BODIES: dict[str, int] = {"/small": len(SMALL_BODY), "/64k": BIG_SIZE}

ALL_PROXIES: tuple[str, ...] = ("nginx", "haproxy", "caddy", "edge")
REFERENCES: tuple[str, ...] = ("nginx", "haproxy", "caddy")
LABELS: dict[str, str] = {"nginx": "nginx", "haproxy": "HAProxy", "caddy": "Caddy", "edge": "edge"}

LOAD_CPU = "0"  # wrk and the upstream
PROXY_CPU = "1"  # the proxy under test in the single-worker scenarios
WRK_THREADS = 1
WRK_CONNECTIONS = 50
WARMUP_SECS = 2
READY_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

SECTION_START = "<!-- bench/run.py:start -->"
SECTION_END = "<!-- bench/run.py:end -->"


class BenchError(RuntimeError):
    """A proxy or tool misbehaved; the message says how."""


def is_edge(proxy: str) -> bool:
    """``edge`` (this checkout) or ``edge@<rev>`` (another revision, see ``edge_worktree``)."""
    return proxy == "edge" or proxy.startswith("edge@")


def label(proxy: str) -> str:
    return LABELS.get(proxy, proxy)


# --------------------------------------------------------------------------------------------
# the edge at another git revision


@dataclass(frozen=True)
class EdgeSource:
    """The edge's source tree at one git revision, checked out in a temporary worktree."""

    ref: str  # as given on the command line
    commit: str  # full hash
    short: str
    path: Path

    @property
    def name(self) -> str:
        return f"edge@{self.short}"


def git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"git {shlex.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"git {shlex.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout.strip()


def _remove_worktree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except BenchError:
        # half-created or already deleted: drop the files, then git's record of them
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(BenchError):
            git("worktree", "prune")


@contextlib.contextmanager
def edge_worktree(ref: str) -> Iterator[EdgeSource]:
    """Check ``ref`` out with ``git worktree add --detach`` in a temporary directory and
    remove the worktree again when the block ends, however it ends (the caller turns
    SIGTERM/SIGHUP into KeyboardInterrupt so that this cleanup runs on them too)."""
    try:
        commit = git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    except BenchError as exc:
        raise BenchError(f"unknown git revision {ref!r}") from exc
    short = git("rev-parse", "--short", commit)
    parent = Path(tempfile.mkdtemp(prefix=f"edge-{short}-"))
    parent.chmod(0o755)
    path = parent / "src"
    try:
        git("worktree", "add", "--detach", str(path), commit)
        compile_edge(path)
        yield EdgeSource(ref, commit, short, path)
    finally:
        _remove_worktree(path)
        shutil.rmtree(parent, ignore_errors=True)


def compile_edge(src: Path, python: str = sys.executable) -> None:
    """Write the bytecode of ``src/edge`` now: a fresh worktree has none, and the first edge
    started from it would otherwise spend its start compiling every module (which shows in
    an instruction count as hundreds of millions of instructions)."""
    done = subprocess.run(
        [python, "-m", "compileall", "-q", str(src / "edge")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        # not fatal here: a module the edge never imports may not compile; one it imports
        # makes the edge itself fail to start, with the error in its stderr
        print(
            f"warning: compiling {src / 'edge'}:\n{(done.stdout + done.stderr)[-1500:]}",
            file=sys.stderr,
        )


def edge_pythonpath(src: Path, env: dict[str, str]) -> str:
    """``src`` first on PYTHONPATH: it then wins over the editable install of this checkout,
    whose import hook is consulted only after the path entries."""
    path = env.get("PYTHONPATH")
    return f"{src}{os.pathsep}{path}" if path else str(src)


def check_edge_source(src: Path, python: str = sys.executable) -> None:
    """Fail early unless ``python`` imports the edge from ``src`` with that PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=edge_pythonpath(src, dict(os.environ)))
    done = subprocess.run(
        [python, "-c", "import edge; print(edge.__file__)"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    where = Path(done.stdout.strip() or "?").resolve()
    if done.returncode != 0 or not where.is_relative_to(src.resolve()):
        raise BenchError(
            f"the edge from {src} is not what {python} imports (got {where}): "
            f"{done.stderr.strip()[-500:]}"
        )


# --------------------------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    workers: int

    @property
    def pinned(self) -> bool:
        return self.workers == 1


def all_scenarios(n_workers: int) -> list[Scenario]:
    out: list[Scenario] = []
    for suffix, workers in (("w1", 1), ("wN", n_workers)):
        out.append(Scenario(f"small-{suffix}", "/small", workers))
        out.append(Scenario(f"64k-{suffix}", "/64k", workers))
    return out


def select_scenarios(spec: str | None, n_workers: int) -> list[Scenario]:
    scenarios = all_scenarios(n_workers)
    if not spec:
        return scenarios
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen: list[Scenario] = []
    for sc in scenarios:
        body, suffix = sc.name.split("-")
        if any(w in (sc.name, body, suffix) for w in wanted):
            chosen.append(sc)
    unknown = [
        w for w in wanted if not any(w in (sc.name, *sc.name.split("-")) for sc in scenarios)
    ]
    if unknown or not chosen:
        names = ", ".join(sc.name for sc in scenarios)
        raise SystemExit(
            f"unknown scenario(s) {unknown or wanted}; known: {names}, small, 64k, w1, wN"
        )
    return chosen


# --------------------------------------------------------------------------------------------
# /proc helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return raw[raw.rfind(")") + 2 :].split()


def proc_cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(starttime, utime + stime) of a live process, in clock ticks."""
    f = _stat_fields(pid)
    if f is None:
        return None
    # fields after the name start at field 3 (state); utime=14, stime=15, starttime=22
    return int(f[19]), int(f[11]) + int(f[12])


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def process_tree(pid: int) -> list[int]:
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen or not Path(f"/proc/{p}").exists():
            continue
        seen.append(p)
        todo.extend(children_of(p))
    return seen


def tree_cpu(pid: int) -> dict[tuple[int, int], int]:
    """CPU ticks of every process in the tree rooted at pid, keyed by (pid, starttime)."""
    out: dict[tuple[int, int], int] = {}
    for p in process_tree(pid):
        info = proc_cpu_ticks(p)
        if info is not None:
            out[(p, info[0])] = info[1]
    return out


def cpu_delta_seconds(
    before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]
) -> float:
    ticks = sum(v - before.get(k, 0) for k, v in after.items())
    return ticks / CLK_TCK


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


# --------------------------------------------------------------------------------------------
# child processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path | None
    log_files: list[TextIO] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, limit: int = 2000) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-limit:]


class Children:
    """Every process the harness starts; each in its own session so it can be killed whole."""

    def __init__(self) -> None:
        self._live: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: Path | None = None,
        stderr: Path | None = None,
    ) -> Child:
        files: list[TextIO] = []
        out_f: TextIO | int = subprocess.DEVNULL
        err_f: TextIO | int = subprocess.DEVNULL
        if stdout is not None:
            out_f = open(stdout, "w")
            files.append(out_f)
        if stderr is not None:
            err_f = open(stderr, "w")
            files.append(err_f)
        try:
            proc = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                start_new_session=True,
            )
        except OSError as exc:
            for f in files:
                f.close()
            raise BenchError(f"cannot start {name}: {exc}") from exc
        child = Child(name, proc, stderr, files)
        self._live.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        if child not in self._live:
            return
        self._live.remove(child)
        tree = [(p, proc_cpu_ticks(p)) for p in process_tree(child.pid)]
        if child.proc.poll() is None:
            _killpg(child.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(child.pid, signal.SIGKILL)
                child.proc.wait(timeout)
        # descendants that left the process group (or ignored SIGTERM): kill them by pid,
        # after checking the pid still names the same process
        for pid, info in tree:
            if pid == child.pid or info is None:
                continue
            now = proc_cpu_ticks(pid)
            if now is not None and now[0] == info[0]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for f in child.log_files:
            f.close()

    def stop_all(self) -> None:
        for child in reversed(list(self._live)):
            try:
                self.stop(child)
            except Exception as exc:  # keep going: every child must be stopped
                print(f"warning: stopping {child.name}: {exc}", file=sys.stderr)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def pin(argv: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


# --------------------------------------------------------------------------------------------
# HTTP probing

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe(port: int, path: str, timeout: float = 2.0) -> tuple[int, int]:
    req = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}", headers={"Host": HOST})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return int(resp.status), len(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), 0


def wait_ready(child: Child, port: int, path: str, expect_len: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(
                f"{child.name} exited with {child.proc.returncode} before answering:\n"
                f"{child.stderr_tail()}"
            )
        try:
            status, length = probe(port, path)
            if status == 200 and length == expect_len:
                return
            last = f"status {status}, {length} body bytes (want 200, {expect_len})"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(
        f"{child.name} not ready on port {port}{path} after {READY_TIMEOUT:.0f}s: {last}\n"
        f"{child.stderr_tail()}"
    )


# --------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    raw: str


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if not m:
        raise BenchError(f"no {pct}% latency in wrk output:\n{text}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(text: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if not rps or not total:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_latency_ms(text, "50"),
        p99_ms=_latency_ms(text, "99"),
        requests=int(total.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
        raw=text,
    )


def run_wrk(port: int, path: str, secs: int) -> WrkResult:
    argv = pin(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{secs}s",
            "--latency",
            "-H",
            f"Host: {HOST}",
            f"http://{LOOPBACK}:{port}{path}",
        ],
        LOAD_CPU,
    )
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {shlex.join(argv)}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------------------------
# configurations


def _nginx_user_line() -> str:
    # as root, nginx workers would switch to "nobody"; keep them able to read the temp dir
    return "user root;" if os.geteuid() == 0 else ""


def _nginx_common(d: Path, workers: int) -> str:
    return f"""worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{_nginx_user_line()}
events {{
    worker_connections 4096;
}}
"""


def _nginx_temp_paths(d: Path) -> str:
    return "\n".join(
        f"    {kind}_temp_path {d}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def nginx_upstream_conf(d: Path, port: int, www: Path) -> str:
    return (
        _nginx_common(d, 1)
        + f"""http {{
{_nginx_temp_paths(d)}
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        root {www};
        location = /small {{ default_type text/plain; }}
        location = /64k {{ }}
        location / {{ return 404; }}
    }}
}}
"""
    )


def nginx_proxy_conf(d: Path, port: int, upstream: int, workers: int, log: Path) -> str:
    return (
        _nginx_common(d, workers)
        + f"""http {{
{_nginx_temp_paths(d)}
    access_log {log} combined buffer=64k flush=1s;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    upstream backend {{
        server {LOOPBACK}:{upstream};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""
    )


def haproxy_conf(port: int, upstream: int, workers: int) -> str:
    return f"""global
    nbthread {workers}
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind {LOOPBACK}:{port}
    default_backend upstream

backend upstream
    server up1 {LOOPBACK}:{upstream}
"""


def caddyfile(d: Path, port: int, upstream: int, log: Path) -> str:
    return f"""{{
	admin off
	auto_https off
	storage file_system {d}/storage
}}

http://:{port} {{
	bind {LOOPBACK}
	log {{
		output file {log} {{
			roll_disabled
		}}
		format json
	}}
	reverse_proxy {LOOPBACK}:{upstream} {{
		transport http {{
			keepalive 60s
			keepalive_idle_conns 128
			keepalive_idle_conns_per_host 64
		}}
	}}
}}
"""


# --------------------------------------------------------------------------------------------
# launching proxies


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdout: Path | None
    stderr: Path
    access_log: Path


@dataclass
class Settings:
    tmp: Path
    upstream_port: int
    redis_url: str
    edge_cmd: list[str]
    edge_env: dict[str, str]
    keep_tmp: bool = False
    # source tree of each edge@<rev> row; the plain edge runs from REPO_ROOT
    edge_sources: dict[str, Path] = field(default_factory=dict)


def build_launch(proxy: str, sc: Scenario, port: int, d: Path, st: Settings) -> Launch:
    cpu = PROXY_CPU if sc.pinned else None
    env = dict(os.environ)
    stderr = d / "stderr.log"
    if proxy == "nginx":
        log = d / "access.log"
        conf = d / "nginx.conf"
        conf.write_text(nginx_proxy_conf(d, port, st.upstream_port, sc.workers, log))
        argv = ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        return Launch(pin(argv, cpu), env, d, None, stderr, log)
    if proxy == "haproxy":
        log = d / "access.log"
        conf = d / "haproxy.cfg"
        conf.write_text(haproxy_conf(port, st.upstream_port, sc.workers))
        argv = ["haproxy", "-db", "-f", str(conf)]
        return Launch(pin(argv, cpu), env, d, log, stderr, log)
    if proxy == "caddy":
        log = d / "access.log"
        conf = d / "Caddyfile"
        conf.write_text(caddyfile(d, port, st.upstream_port, log))
        env.update(
            GOMAXPROCS=str(sc.workers),
            HOME=str(d),
            XDG_DATA_HOME=str(d / "data"),
            XDG_CONFIG_HOME=str(d / "config"),
        )
        argv = ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]
        return Launch(pin(argv, cpu), env, d, None, stderr, log)
    if is_edge(proxy):
        log = d / "access.log"
        env.update(
            PYTHONPATH=edge_pythonpath(st.edge_sources.get(proxy, REPO_ROOT), env),
            REDIS_URL=st.redis_url,
            SERVER_HOST=LOOPBACK,
            HTTP_PORT=str(port),
            API_HOST=LOOPBACK,
            API_PORT=str(free_port()),
            EDGE_WORKERS=str(sc.workers),
            LOG_LEVEL="WARNING",
            EDGE_STATE_DIR=str(d / "state"),
        )
        env.update(st.edge_env)
        return Launch(pin(list(st.edge_cmd), cpu), env, d, log, stderr, log)
    raise BenchError(f"unknown proxy {proxy}")


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


# --------------------------------------------------------------------------------------------
# Redis (for the edge's configuration), spoken directly over RESP


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        payload += b"$" + str(len(b)).encode() + b"\r\n" + b + b"\r\n"
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    if reply.startswith(b"-"):
        raise BenchError(f"redis error for {args[0]}: {reply.decode(errors='replace').strip()}")
    return reply


def start_redis(children: Children, tmp: Path) -> tuple[Child, int]:
    port = free_port()
    d = tmp / "redis"
    d.mkdir()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(d),
        "--daemonize",
        "no",
    ]
    child = children.spawn(
        "redis", pin(argv, LOAD_CPU), cwd=d, stdout=d / "out.log", stderr=d / "err.log"
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis_command(port, "PING").startswith(b"+PONG"):
                return child, port
        except OSError:
            pass
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"redis-server did not start: {child.stderr_tail()}")
        time.sleep(0.05)


def configure_edge(redis_port: int, upstream_port: int) -> None:
    value = json.dumps(
        {"hostname": HOST, "target_url": f"http://{LOOPBACK}:{upstream_port}"},
        separators=(",", ":"),
    )
    redis_command(redis_port, "SET", f"proxy:{HOST}", value)


# --------------------------------------------------------------------------------------------
# upstream


def start_upstream(children: Children, tmp: Path) -> tuple[Child, int]:
    d = tmp / "upstream"
    www = d / "www"
    www.mkdir(parents=True)
    (www / "small").write_bytes(SMALL_BODY)
    (www / "64k").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(nginx_upstream_conf(d, port, www))
    argv = ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
    child = children.spawn("upstream nginx", pin(argv, LOAD_CPU), cwd=d, stderr=d / "stderr.log")
    for path, length in BODIES.items():
        wait_ready(child, port, path, length)
    return child, port


# --------------------------------------------------------------------------------------------
# measuring


@dataclass
class Sample:
    round: int
    scenario: str
    proxy: str
    ok: bool
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    cpu_s: float = 0.0
    cpu_us_per_req: float = 0.0
    log_lines: int = 0
    error: str = ""


def measure(
    children: Children, st: Settings, rnd: int, sc: Scenario, proxy: str, secs: int
) -> Sample:
    d = st.tmp / f"r{rnd}-{sc.name}-{proxy.replace('@', '-')}"
    d.mkdir()
    port = free_port()
    launch = build_launch(proxy, sc, port, d, st)
    child = children.spawn(
        proxy,
        launch.argv,
        env=launch.env,
        cwd=launch.cwd,
        stdout=launch.stdout,
        stderr=launch.stderr,
    )
    sample = Sample(rnd, sc.name, proxy, ok=False)
    try:
        wait_ready(child, port, sc.path, BODIES[sc.path])
        run_wrk(port, sc.path, WARMUP_SECS)
        before = tree_cpu(child.pid)
        res = run_wrk(port, sc.path, secs)
        after = tree_cpu(child.pid)
        if child.proc.poll() is not None:
            raise BenchError(f"{proxy} exited during the run:\n{child.stderr_tail()}")
        cpu = cpu_delta_seconds(before, after)
        sample.ok = True
        sample.rps, sample.p50_ms, sample.p99_ms = res.rps, res.p50_ms, res.p99_ms
        sample.requests = res.requests
        sample.errors = res.non2xx + res.socket_errors
        sample.cpu_s = cpu
        sample.cpu_us_per_req = cpu * 1e6 / res.requests if res.requests else 0.0
    except BenchError as exc:
        sample.error = str(exc)
    finally:
        children.stop(child)
    sample.log_lines = count_lines(launch.access_log)
    if sample.ok and sample.log_lines < sample.requests:
        print(
            f"warning: {proxy} wrote {sample.log_lines} access-log lines for "
            f"{sample.requests} measured requests",
            file=sys.stderr,
        )
    if not st.keep_tmp:
        shutil.rmtree(d, ignore_errors=True)  # access logs can be large
    return sample


# --------------------------------------------------------------------------------------------
# reporting


@dataclass
class Summary:
    scenario: str
    proxy: str
    rounds_ok: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    errors: int


def summarize(
    samples: list[Sample], scenarios: list[Scenario], proxies: list[str]
) -> list[Summary]:
    out: list[Summary] = []
    for sc in scenarios:
        for proxy in proxies:
            ok = [s for s in samples if s.scenario == sc.name and s.proxy == proxy and s.ok]
            if not ok:
                out.append(Summary(sc.name, proxy, 0, 0, 0, 0, 0, 0, 0, 0))
                continue
            rps = [s.rps for s in ok]
            out.append(
                Summary(
                    scenario=sc.name,
                    proxy=proxy,
                    rounds_ok=len(ok),
                    rps=statistics.median(rps),
                    rps_min=min(rps),
                    rps_max=max(rps),
                    p50_ms=statistics.median(s.p50_ms for s in ok),
                    p99_ms=statistics.median(s.p99_ms for s in ok),
                    cpu_us_per_req=statistics.median(s.cpu_us_per_req for s in ok),
                    errors=sum(s.errors for s in ok),
                )
            )
    return out


def _table(header: list[str], rows: Iterable[list[str]], align: str) -> str:
    rows = list(rows)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
            for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def results_table(summaries: list[Summary], rounds: int) -> str:
    header = [
        "scenario",
        "proxy",
        "req/s",
        "req/s range",
        "p50 ms",
        "p99 ms",
        "CPU µs/req",
        "errors",
    ]
    rows: list[list[str]] = []
    for s in summaries:
        if s.rounds_ok == 0:
            rows.append([s.scenario, label(s.proxy), "failed", "", "", "", "", ""])
            continue
        note = "" if s.rounds_ok == rounds else f" ({s.rounds_ok}/{rounds} ok)"
        rows.append(
            [
                s.scenario,
                label(s.proxy),
                f"{s.rps:,.0f}{note}",
                f"{s.rps_min:,.0f}-{s.rps_max:,.0f}",
                _fmt_ms(s.p50_ms),
                _fmt_ms(s.p99_ms),
                f"{s.cpu_us_per_req:.1f}",
                str(s.errors),
            ]
        )
    return _table(header, rows, "llrrrrrr")


def ratios_table(summaries: list[Summary], proxies: list[str]) -> str:
    refs = [r for r in REFERENCES if r in proxies]
    if not refs:
        return ""
    by = {(s.scenario, s.proxy): s for s in summaries}
    header = ["scenario", "proxy"]
    header += [f"req/s ÷ {LABELS[r]}" for r in refs]
    header += [f"CPU/req ÷ {LABELS[r]}" for r in refs]
    rows: list[list[str]] = []
    scenarios = list(dict.fromkeys(s.scenario for s in summaries))
    for sc in scenarios:
        for proxy in proxies:
            me = by[(sc, proxy)]
            if me.rounds_ok == 0:
                continue
            row = [sc, label(proxy)]
            for attr in ("rps", "cpu_us_per_req"):
                for r in refs:
                    ref = by[(sc, r)]
                    mine, theirs = getattr(me, attr), getattr(ref, attr)
                    if r == proxy:
                        row.append("—")
                    elif ref.rounds_ok == 0 or not theirs:
                        row.append("n/a")
                    else:
                        row.append(f"{mine / theirs:.2f}x")
            rows.append(row)
    return _table(header, rows, "ll" + "r" * (2 * len(refs)))


def before_after_table(summaries: list[Summary], proxies: list[str]) -> str:
    """The first edge row (``edge``, or the first ``--edge-ref``) divided by every other."""
    edges = [p for p in proxies if is_edge(p)]
    if len(edges) < 2:
        return ""
    by = {(s.scenario, s.proxy): s for s in summaries}
    base, others = edges[0], edges[1:]
    header = ["scenario", "compared", "req/s ratio", "CPU/req ratio", "p99 ratio"]
    rows: list[list[str]] = []
    for sc in dict.fromkeys(s.scenario for s in summaries):
        me = by[(sc, base)]
        for other in others:
            them = by[(sc, other)]
            cells = [sc, f"{label(base)} ÷ {label(other)}"]
            for attr in ("rps", "cpu_us_per_req", "p99_ms"):
                mine, theirs = getattr(me, attr), getattr(them, attr)
                ok = me.rounds_ok and them.rounds_ok and theirs
                cells.append(f"{mine / theirs:.3f}x" if ok else "n/a")
            rows.append(cells)
    return _table(header, rows, "llrrr")


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine_info() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rev = tool_version(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = tool_version(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "edge"])
    if dirty not in ("", "?"):
        # the plain edge row runs the working tree, not the commit
        rev += " plus uncommitted changes under edge/"
    return {
        "nproc": str(os.cpu_count() or "?"),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": tool_version(["nginx", "-v"]).removeprefix("nginx version: "),
        "haproxy": " ".join(tool_version(["haproxy", "-v"]).split()[:3]),
        "caddy": tool_version(["caddy", "version"]) if shutil.which("caddy") else "not installed",
        "wrk": tool_version(["wrk", "--version"]).split(" Copyright")[0],
        "git": rev,
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


NOISY_SPREAD = 0.25  # (max - min) / median of req/s over rounds


def render_report(
    summaries: list[Summary],
    proxies: list[str],
    rounds: int,
    secs: int,
    n_workers: int,
    command: str,
    info: dict[str, str],
    sources: Sequence[EdgeSource] = (),
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "## Reverse-proxy comparison (`bench/run.py`)",
        "",
        f"- Date: {when}",
        f"- Machine: nproc={info['nproc']}, CPU: {info['cpu']}, Linux {info['kernel']}",
        f"- Software: {info['nginx']}, {info['haproxy']}, Caddy {info['caddy']}, "
        f"{info['wrk']}, Python {info['python']}, edge at git {info['git']}",
        *(
            f"- {src.name}: git {src.commit} (`{src.ref}`), from a temporary worktree"
            for src in sources
        ),
        f"- Command: `{command}`",
        f"- Load: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{secs}s --latency` on CPU {LOAD_CPU}, "
        f"upstream nginx (1 worker) on CPU {LOAD_CPU}; {rounds} interleaved round(s), "
        f"{WARMUP_SECS} s warm-up each; medians over rounds.",
        f"- `*-w1`: one worker/process/thread, proxy pinned to CPU {PROXY_CPU}. "
        f"`*-wN`: {n_workers} workers, proxy not pinned, so it competes with wrk and the "
        "upstream for the same cores.",
        "- Access logs on for every proxy; keep-alive on both legs.",
        f"- Load average (1/5/15 min) before: {info.get('loadavg_before', '?')}, "
        f"after: {info.get('loadavg_after', '?')}",
        "",
        "### Medians",
        "",
        results_table(summaries, rounds),
    ]
    noisy = [
        f"{s.scenario}/{label(s.proxy)}"
        for s in summaries
        if s.rounds_ok > 1 and s.rps and (s.rps_max - s.rps_min) / s.rps > NOISY_SPREAD
    ]
    if noisy:
        parts += [
            "",
            f"Note: req/s varied by more than {NOISY_SPREAD:.0%} of the median between rounds "
            f"for {len(noisy)} of {len(summaries)} rows ({', '.join(noisy)}); the machine was "
            "not quiet. CPU µs/req is the more trustworthy comparison here.",
        ]
    ratios = ratios_table(summaries, proxies)
    if ratios:
        parts += [
            "",
            "### Ratios (medians)",
            "",
            "`req/s ÷ X` above 1 means faster than X; `CPU/req ÷ X` below 1 means cheaper than X.",
            "",
            ratios,
        ]
    before_after = before_after_table(summaries, proxies)
    if before_after:
        parts += [
            "",
            "### Edge revisions compared (medians)",
            "",
            "`req/s ratio` above 1 means the first is faster; `CPU/req ratio` below 1 means "
            "it is cheaper.",
            "",
            before_after,
        ]
    return "\n".join(parts) + "\n"


def write_results(section: str) -> None:
    block = f"{SECTION_START}\n{section}{SECTION_END}\n"
    if RESULTS_MD.exists():
        text = RESULTS_MD.read_text()
    else:
        text = (
            "# Benchmark results\n\n"
            "Produced by `bench/run.py --write-results`; see `bench/README.md` for the method.\n\n"
        )
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start != -1 and end > start:
        text = text[:start] + block + text[end + len(SECTION_END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS_MD.write_text(text)


def progress(line: str) -> None:
    """One line of a benchmark's progress, on stderr at once (the report goes to stdout)."""
    print(line, file=sys.stderr, flush=True)


def side_bench_options(description: str) -> argparse.ArgumentParser:
    """The options of a side benchmark (``pats.py``, ``transports.py``), which may add more."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--only", help="comma-separated scenarios")
    p.add_argument("--write-results", action="store_true")
    return p


@contextlib.contextmanager
def side_bench_run(prefix: str) -> Iterator[tuple[Children, Path]]:
    """A side benchmark's processes and scratch folder: on leaving, every process is
    stopped and the folder removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children()
    try:
        yield children, tmp
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def publish(block: str, write: bool, start: str, end: str) -> None:
    """Print a side benchmark's report; with ``write``, also put it into RESULTS.md."""
    print(block)
    if write:
        replace_marked(block, start, end)


def replace_marked(block: str, start: str, end: str) -> None:
    """Put ``block`` (which begins with ``start`` and ends with ``end``) into RESULTS.md,
    replacing the block between the same markers or appending it."""
    md = RESULTS_MD.read_text()
    if start in md:
        head, _, rest = md.partition(start)
        _, _, tail = rest.partition(end)
        md = head + block + tail
    else:
        md = md.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS_MD.write_text(md)


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on ``port`` (BenchError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"port {port} did not open")


# --------------------------------------------------------------------------------------------
# profiling the edge


def edge_worker_pid(root: int) -> int:
    """The busiest edge worker under the supervisor (wrk must be running meanwhile)."""
    tree = process_tree(root)
    named = [
        p for p in tree if p != root and re.search(r"\bedge\.?\s*worker\b|edge worker", cmdline(p))
    ]
    candidates = named or tree
    if len(candidates) == 1:
        return candidates[0]
    first = {p: (proc_cpu_ticks(p) or (0, 0))[1] for p in candidates}
    time.sleep(1.0)
    busiest = max(candidates, key=lambda p: (proc_cpu_ticks(p) or (0, 0))[1] - first[p])
    return busiest


def summarize_raw_profile(raw: Path, top: int = 25) -> str:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + count
    if not total:
        return "no samples\n"

    def block(title: str, counts: dict[str, int]) -> list[str]:
        lines = [title, f"{'%':>6}  {'samples':>8}  function"]
        for name, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{100 * c / total:6.1f}  {c:8d}  {name}")
        return lines

    out = [f"{total} samples"]
    out += ["", *block("Top functions by own time (leaf frame):", self_counts)]
    out += ["", *block("Top functions by inclusive time:", incl_counts)]
    return "\n".join(out) + "\n"


def run_profile(children: Children, st: Settings, secs: int) -> None:
    if not shutil.which("py-spy"):
        raise BenchError("py-spy not found on PATH")
    OUT_DIR.mkdir(exist_ok=True)
    sc = Scenario("small-w1", "/small", 1)
    d = st.tmp / "profile-edge"
    d.mkdir()
    port = free_port()
    launch = build_launch("edge", sc, port, d, st)
    child = children.spawn(
        "edge",
        launch.argv,
        env=launch.env,
        cwd=launch.cwd,
        stdout=launch.stdout,
        stderr=launch.stderr,
    )
    try:
        wait_ready(child, port, sc.path, BODIES[sc.path])
        run_wrk(port, sc.path, WARMUP_SECS)
        load = children.spawn(
            "wrk",
            pin(
                [
                    "wrk",
                    "-t1",
                    f"-c{WRK_CONNECTIONS}",
                    "-d3s",
                    "-H",
                    f"Host: {HOST}",
                    f"http://{LOOPBACK}:{port}{sc.path}",
                ],
                LOAD_CPU,
            ),
        )
        worker = edge_worker_pid(child.pid)
        dump = subprocess.run(
            ["py-spy", "dump", "--pid", str(worker)], capture_output=True, text=True, timeout=30
        )
        load.proc.wait(30)
        children.stop(load)
        (OUT_DIR / "profile-dump.txt").write_text(dump.stdout + dump.stderr)
        print(f"edge worker pid {worker}: {cmdline(worker)}", file=sys.stderr)
        outputs = [("flamegraph", OUT_DIR / "profile.svg"), ("raw", OUT_DIR / "profile.txt")]
        for fmt, path in outputs:
            spy = children.spawn(
                "py-spy",
                pin(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(worker),
                        "--duration",
                        str(secs),
                        "--format",
                        fmt,
                        "--output",
                        str(path),
                    ],
                    LOAD_CPU,
                ),
                stderr=d / f"py-spy-{fmt}.log",
            )
            time.sleep(0.5)
            res = run_wrk(port, sc.path, secs)
            try:
                spy.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
            children.stop(spy)
            if not path.exists():
                raise BenchError(f"py-spy wrote no {path}: {spy.stderr_tail()}")
            print(f"{fmt}: {res.rps:,.0f} req/s under py-spy -> {path}", file=sys.stderr)
        summary = summarize_raw_profile(OUT_DIR / "profile.txt")
        (OUT_DIR / "profile-top.txt").write_text(summary)
        print(summary)
        print(f"flamegraph: {OUT_DIR / 'profile.svg'}\nstack dump: {OUT_DIR / 'profile-dump.txt'}")
    finally:
        children.stop(child)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare reverse proxies (nginx, HAProxy, Caddy, the edge) on loopback.",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(ALL_PROXIES)}")
    p.add_argument(
        "--scenarios",
        help="comma-separated: small-w1,64k-w1,small-wN,64k-wN or small, 64k, w1, wN",
    )
    p.add_argument(
        "--workers-n",
        type=int,
        default=os.cpu_count() or 2,
        help="worker count of the *-wN scenarios (default: nproc)",
    )
    p.add_argument("--json", type=Path, help="write raw samples and medians to this file")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    p.add_argument(
        "--edge-cmd",
        default=f"{shlex.quote(sys.executable)} -m edge serve",
        help="command that starts the edge (default: this python -m edge serve)",
    )
    p.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the edge (repeatable)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile one edge worker with py-spy under the small scenario instead (bench/out/)",
    )
    p.add_argument(
        "--edge-ref",
        action="append",
        default=[],
        metavar="REV",
        help="also run the edge at this git revision, as row edge@<rev> (repeatable)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir for inspection")
    args = p.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.workers_n < 1:
        p.error("--duration, --rounds and --workers-n must be positive")
    if args.profile and args.edge_ref:
        p.error("--profile runs the edge of this checkout only; drop --edge-ref")
    return args


def select_proxies(spec: str | None, edge_refs: Sequence[str] = ()) -> list[str]:
    if spec:
        wanted = [s.strip().lower() for s in spec.split(",") if s.strip()]
    else:
        # --edge-ref alone compares the revisions with each other, not with the references
        wanted = ["edge"] if edge_refs else list(ALL_PROXIES)
    unknown = [w for w in wanted if w not in ALL_PROXIES]
    if unknown:
        raise SystemExit(f"unknown proxy {unknown}; known: {', '.join(ALL_PROXIES)}")
    proxies = [p for p in ALL_PROXIES if p in wanted]
    if "caddy" in proxies and not shutil.which("caddy"):
        print("note: caddy not on PATH, skipping it", file=sys.stderr)
        proxies.remove("caddy")
    for tool in ("nginx", "wrk", "taskset", *(p for p in proxies if p in ("haproxy",))):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found on PATH")
    if (edge_refs or "edge" in proxies) and not shutil.which("redis-server"):
        raise SystemExit("redis-server not found on PATH (needed by the edge)")
    return proxies


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    proxies = ["edge"] if args.profile else select_proxies(args.only, args.edge_ref)
    scenarios = select_scenarios(args.scenarios, args.workers_n)
    if not proxies and not args.edge_ref:
        raise SystemExit("nothing to run")
    edge_env: dict[str, str] = {}
    for item in args.edge_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--edge-env wants KEY=VALUE, got {item!r}")
        edge_env[key] = value
    command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])

    info = machine_info()  # before the run: the edge checkout may change meanwhile
    info["loadavg_before"] = loadavg()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    tmp.chmod(0o755)  # readable by nginx/caddy workers running as another user
    children = Children()
    samples: list[Sample] = []
    worktrees = contextlib.ExitStack()
    sources: list[EdgeSource] = []
    try:
        for ref in args.edge_ref:
            src = worktrees.enter_context(edge_worktree(ref))
            if src.name in proxies:
                raise BenchError(f"--edge-ref {ref} names a revision already in the run")
            check_edge_source(src.path)
            sources.append(src)
            proxies.append(src.name)
        _upstream, upstream_port = start_upstream(children, tmp)
        redis_url = ""
        if any(is_edge(p) for p in proxies):
            _redis, redis_port = start_redis(children, tmp)
            configure_edge(redis_port, upstream_port)
            redis_url = f"redis://{LOOPBACK}:{redis_port}/0"
        st = Settings(
            tmp,
            upstream_port,
            redis_url,
            shlex.split(args.edge_cmd),
            edge_env,
            args.keep_tmp,
            {src.name: src.path for src in sources},
        )
        if args.profile:
            run_profile(children, st, args.duration)
            return 0
        total = args.rounds * len(scenarios) * len(proxies)
        n = 0
        for rnd in range(1, args.rounds + 1):
            for sc in scenarios:
                for proxy in proxies:
                    n += 1
                    s = measure(children, st, rnd, sc, proxy, args.duration)
                    samples.append(s)
                    if s.ok:
                        status = (
                            f"{s.rps:>10,.0f} req/s  p50 {s.p50_ms:6.2f} ms  "
                            f"p99 {s.p99_ms:7.2f} ms  {s.cpu_us_per_req:6.1f} µs CPU/req"
                            + (f"  {s.errors} errors" if s.errors else "")
                        )
                    else:
                        status = "FAILED: " + s.error.strip().splitlines()[0]
                    progress(
                        f"[{n:>3}/{total}] round {rnd} {sc.name:<9} {label(proxy):<8} {status}"
                    )
                    detail = s.error.strip().splitlines()[1:]
                    if detail:
                        print("\n".join(detail), file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; stopping children", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        worktrees.close()  # after the children: edge@<rev> runs from its worktree
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summaries = summarize(samples, scenarios, proxies)
    info["loadavg_after"] = loadavg()
    report = render_report(
        summaries, proxies, args.rounds, args.duration, args.workers_n, command, info, sources
    )
    print(report)
    if args.json:
        data: dict[str, Any] = {
            "command": command,
            "machine": info,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "samples": [asdict(s) for s in samples],
            "medians": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    if args.write_results:
        write_results(report)
        print(f"updated {RESULTS_MD}", file=sys.stderr)
    return 0 if all(s.ok for s in samples) else 2


if __name__ == "__main__":
    sys.exit(main())
