"""A protected proxy: the edge checking its own tokens in process, against Caddy asking the
edge's ``/verify`` (``forward_auth``), with the unprotected proxies beside them.

Side by side in one run, each a single worker/process on CPU 1, a small GET (13 bytes from
an nginx upstream) over keep-alive, the same request from wrk to every target
(``Host: app.localhost``, ``Authorization: Bearer <token>``):

* ``edge``: the edge proxying ``app.localhost`` to the upstream, unprotected (the token is
  sent and ignored, so the request is byte for byte the one of the protected rows);
* ``edge-auth``: the same proxy with ``auth_enabled: true`` and ``resource_endpoint: /mcp``:
  every request's token verified in the worker (signature remembered, then ``exp``, ``aud``
  = ``https://app.localhost/mcp``, the revoked set, scopes, the allowlist), five
  ``X-Auth-*`` identity headers added for the upstream;
* ``caddy-fwd``: Caddy (``GOMAXPROCS=1``) with ``forward_auth`` to the edge's ``/verify``
  (``?resource=https://app.localhost/mcp``, the auth host in ``Host``, the five
  ``X-Auth-*`` fields copied), then ``reverse_proxy`` to the same upstream: the common
  architecture of a proxy asking a separate auth service. The edge answering ``/verify``
  (one worker) shares CPU 1 with Caddy, so the pair has the one core the edge has alone;
* ``caddy``: Caddy's plain ``reverse_proxy``, for reference.

The token is issued by the edge itself before the rounds: a client registered, a browser
signed in through the tests' GitHub stand-in, consent, ``POST /token`` with
``resource=https://app.localhost/mcp`` (RS256, the signing key given in
``OAUTH_JWT_PRIVATE_KEY_B64``). Before each measured run the target is checked: the token
gets ``200`` and the 13 bytes; on the protected targets no token, a token signed by another
key and a token of the right key for another audience get ``401``, and the upstream sees
``X-Auth-User-Name`` (``/whoami`` on the upstream echoes it); on the unprotected ones it sees
none.

Procedure as ``bench/run.py``: the upstream and Redis start once; per round, per target:
start it fresh, check it, warm up, measure with ``wrk -t1 -c50 --latency``, stop it. CPU per
request from ``/proc`` (the whole process tree of each process under test), medians over
rounds, and the ratios per round as well as of the medians.

* ``--gc``: a ``gc.callbacks`` probe, loaded by the edge's processes as ``sitecustomize``,
  logs every collection; the collections of the edge worker within each measured run are
  reported (per generation per second, pause time, the longest pause).
* ``--instructions``: instructions per request of the edge rows under valgrind's callgrind
  (``edge``, ``edge-auth``, and ``verify``: the ``/verify`` request Caddy sends): a worker
  started, its counters zeroed, an idle stretch counted for the background rate, then
  ``--requests`` requests counted; the background of the same wall time is subtracted.
  ``--rounds 0 --instructions`` counts only.

    python bench/forwardauth.py                       # 5 rounds x 10 s (about 6 minutes)
    python bench/forwardauth.py --quick               # smoke check: 1 round x 2 s
    python bench/forwardauth.py --only edge,edge-auth --rounds 7 --gc
    python bench/forwardauth.py --gc --instructions --write-results   # what RESULTS.md shows
    python bench/forwardauth.py --rounds 0 --instructions --keep-cg bench/out/cg
    python bench/forwardauth.py --profile bench/out   # py-spy of the edge worker instead

Needs redis-server, nginx, wrk, taskset and caddy (valgrind for ``--instructions``, py-spy
for ``--profile``); run from the repository root with the project's Python (it imports
``edge``, ``tests/github_standin.py`` and ``tests/oauth_helpers.py``). Only loopback
addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt
import oauth as oauth_bench
import run
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.github_standin import GitHubStandin, github_standin
from tests.oauth_helpers import Browser, Page, pkce_pair, query_of, register_client

SECTION_START = "<!-- bench/forwardauth.py:start -->"
SECTION_END = "<!-- bench/forwardauth.py:end -->"
APP_HOST = "app.localhost"  # the Host wrk sends to every target
AUTH_HOST = "auth.localhost"
ENDPOINT = "/mcp"
RESOURCE = f"https://{APP_HOST}{ENDPOINT}"  # the token's aud: https://{Host}{resource_endpoint}
USER = "benchuser"
SCOPE = "mcp:read"
PATH = "/small"
BODY = run.SMALL_BODY
IDENTITY = ("User-Id", "User-Name", "Email", "Scopes", "Client-Id")
TOOLS = ("redis-server", "nginx", "wrk", "taskset", "caddy")
TARGETS = ("edge", "edge-auth", "caddy-fwd", "caddy")
LABELS = {
    "edge": "edge, unprotected",
    "edge-auth": "edge, own tokens (`auth_enabled`)",
    "caddy-fwd": "Caddy `forward_auth` -> edge `/verify`",
    "caddy": "Caddy `reverse_proxy`, unprotected",
}
PROTECTED = {"edge-auth", "caddy-fwd"}
# (numerator, denominator) of the ratios reported
RATIOS = (
    ("edge-auth", "edge"),
    ("edge-auth", "caddy-fwd"),
    ("caddy-fwd", "caddy"),
    ("edge", "caddy"),
    ("edge-auth", "caddy"),
)


# -------------------------------------------------------------------------------- setup


@dataclass
class World:
    """What lives for the whole run."""

    children: run.Children
    tmp: Path
    redis_port: int
    upstream_port: int
    github: GitHubStandin
    key: rsa.RSAPrivateKey
    key_b64: str
    keep_tmp: bool = False
    gc_probe: Path | None = None  # a directory with GC_PROBE as sitecustomize.py
    # every edge of the run listens here: the issuer (http://auth.localhost:PORT), and with
    # it the tokens' iss, stays the same across restarts
    edge_port: int = field(default_factory=run.free_port)
    token: str = ""
    bad_tokens: dict[str, str] = field(default_factory=dict)  # what -> token

    def auth_header(self, token: str | None = None) -> dict[str, str]:
        value = self.token if token is None else token
        return {"Authorization": f"Bearer {value}"} if value else {}


def upstream_conf(d: Path, port: int, www: Path) -> str:
    """The upstream of ``bench/run.py`` (nginx, one worker, static ``/small``, no access
    log) plus ``/whoami``, which echoes the ``X-Auth-User-Name`` it was sent."""
    return (
        run._nginx_common(d, 1)
        + f"""http {{
{run._nginx_temp_paths(d)}
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {{
        listen {run.LOOPBACK}:{port} backlog=4096;
        root {www};
        location = /small {{ default_type text/plain; }}
        location = /whoami {{ default_type text/plain; return 200 "[$http_x_auth_user_name]"; }}
        location / {{ return 404; }}
    }}
}}
"""
    )


def start_upstream(children: run.Children, tmp: Path) -> int:
    d = tmp / "upstream"
    www = d / "www"
    www.mkdir(parents=True)
    (www / "small").write_bytes(BODY)
    port = run.free_port()
    conf = d / "nginx.conf"
    conf.write_text(upstream_conf(d, port, www))
    argv = ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
    child = children.spawn("upstream nginx", run.pin(argv, run.LOAD_CPU), cwd=d,
                           stderr=d / "stderr.log")  # fmt: skip
    run.wait_ready(child, port, PATH, len(BODY))
    return port


def proxy_doc(w: World, protected: bool) -> str:
    doc: dict[str, Any] = {
        "hostname": APP_HOST,
        "target_url": f"http://{run.LOOPBACK}:{w.upstream_port}",
    }
    if protected:
        doc.update(auth_enabled=True, resource_endpoint=ENDPOINT)
    return json.dumps(doc, separators=(",", ":"))


def get(
    port: int, host: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(run.LOOPBACK, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Edge:
    child: run.Child
    port: int

    @property
    def auth_host(self) -> str:
        return f"{AUTH_HOST}:{self.port}"


def edge_env(w: World, d: Path) -> dict[str, str]:
    """The environment of every edge of the run (one worker, plain HTTP on ``edge_port``,
    the authorization server on ``auth.localhost`` with the run's signing key)."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=run.edge_pythonpath(run.REPO_ROOT, env),
        REDIS_URL=f"redis://{run.LOOPBACK}:{w.redis_port}/0",
        SERVER_HOST=run.LOOPBACK,
        HTTP_PORT=str(w.edge_port),
        HTTPS_PORT="0",
        PROXY_PROTOCOL_PORT="0",
        PROXY_PROTOCOL_TLS_PORT="0",
        AUTO_HTTPS="false",
        API_HOST=run.LOOPBACK,
        API_PORT=str(run.free_port()),
        EDGE_WORKERS="1",
        LOG_LEVEL="WARNING",
        EDGE_STATE_DIR=str(d / "state"),
        AUTH_HOSTNAME=AUTH_HOST,
        OAUTH_ISSUER=f"http://{AUTH_HOST}:{w.edge_port}",
        OAUTH_ALLOWED_GITHUB_USERS=USER,
        OAUTH_JWT_PRIVATE_KEY_B64=w.key_b64,
        OAUTH_ACCESS_TOKEN_LIFETIME="86400",
        **w.github.settings(),
    )
    if w.gc_probe is not None:
        # after the repository: the probe is imported at start-up as sitecustomize
        env["PYTHONPATH"] += os.pathsep + str(w.gc_probe)
        env["EDGE_BENCH_GC_DIR"] = str(d)
    return env


def start_edge(w: World, d: Path, protected: bool) -> Edge:
    """One edge worker on CPU 1 serving the proxy ``app.localhost`` (protected or not) and
    the authorization server on ``auth.localhost``; returns once both answer."""
    run.redis_command(w.redis_port, "SET", f"proxy:{APP_HOST}", proxy_doc(w, protected))
    d.mkdir(parents=True, exist_ok=True)
    port = w.edge_port
    env = edge_env(w, d)
    argv = run.pin([sys.executable, "-m", "edge", "serve"], run.PROXY_CPU)
    child = w.children.spawn("edge", argv, env=env, cwd=d, stdout=d / "edge-access.log",
                             stderr=d / "edge-stderr.log")  # fmt: skip
    edge = Edge(child, port)
    deadline = time.monotonic() + run.READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise run.BenchError(f"the edge exited before answering:\n{child.stderr_tail()}")
        try:
            meta, _, _ = get(port, edge.auth_host, "/.well-known/oauth-authorization-server")
            proxied, _, body = get(port, APP_HOST, PATH, w.auth_header())
            served = proxied == 200 and body == BODY
            # before the token exists (the login), a protected proxy answers 401
            if meta == 200 and (served or (protected and not w.token and proxied == 401)):
                return edge
            last = f"metadata {meta}, {APP_HOST}{PATH} {proxied}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    w.children.stop(child)
    raise run.BenchError(f"the edge did not answer: {last}\n{child.stderr_tail()}")


def issue_token(w: World) -> None:
    """A token from the edge's own flow, for ``https://app.localhost/mcp``: register a
    public client, sign in through the GitHub stand-in, approve, redeem the code."""
    edge = start_edge(w, w.tmp / "login", protected=True)
    try:
        issuer = f"http://{edge.auth_host}"
        w.github.callback_url = f"{issuer}/callback"
        client = register_client(issuer, method="none")
        browser = Browser()
        verifier, challenge = pkce_pair()
        url = client.authorize_url(challenge, state="bench", scope=SCOPE, resources=[RESOURCE])
        got: Page | str = browser.follow(url, client.redirect_uri)
        if isinstance(got, Page) and got.status == 200 and "csrf_token" in got.text:
            form = {
                "request_id": got.hidden("request_id"),
                "csrf_token": got.hidden("csrf_token"),
                "decision": "approve",
            }
            got = browser.follow(f"{issuer}/consent", client.redirect_uri, method="POST",
                                 form=form)  # fmt: skip
        if not isinstance(got, str):
            raise run.BenchError(
                f"the login did not reach the client: {got.status} {got.text[:300]}"
            )
        page = client.token(query_of(got)["code"], verifier, resources=[RESOURCE])
        if page.status != 200:
            raise run.BenchError(f"POST /token: {page.status} {page.text[:300]}")
        w.token = page.json()["access_token"]
    finally:
        w.children.stop(edge.child)
    claims = jwt.decode(w.token, options={"verify_signature": False})
    header = jwt.get_unverified_header(w.token)
    if claims.get("aud") not in (RESOURCE, [RESOURCE]) or claims.get("login") != USER:
        raise run.BenchError(f"unexpected token claims: {claims}")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    w.bad_tokens = {
        "another key": jwt.encode(claims, other, algorithm="RS256", headers=header),
        "another audience": jwt.encode({**claims, "aud": f"https://other.localhost{ENDPOINT}"},
                                       w.key, algorithm="RS256", headers=header),
    }  # fmt: skip


# -------------------------------------------------------------------------------- Caddy


def caddyfile(d: Path, port: int, upstream: int, log: Path, verify_port: int | None) -> str:
    """``bench/run.py``'s Caddy (``admin off``, JSON access log to a file, 64 idle upstream
    connections) with, when ``verify_port`` is given, ``forward_auth`` to the edge's
    ``/verify`` before the ``reverse_proxy``, on the same kind of pooled connections."""
    transport = """transport http {
				keepalive 60s
				keepalive_idle_conns 128
				keepalive_idle_conns_per_host 64
			}"""
    auth = ""
    if verify_port is not None:
        query = urllib.parse.urlencode({"resource": RESOURCE})
        headers = " ".join(f"X-Auth-{name}" for name in IDENTITY)
        auth = f"""
		forward_auth {run.LOOPBACK}:{verify_port} {{
			uri /verify?{query}
			header_up Host {AUTH_HOST}:{verify_port}
			copy_headers {headers}
			{transport}
		}}"""
    return f"""{{
	admin off
	auto_https off
	storage file_system {d}/storage
}}

http://:{port} {{
	bind {run.LOOPBACK}
	log {{
		output file {log} {{
			roll_disabled
		}}
		format json
	}}
	route {{{auth}
		reverse_proxy {run.LOOPBACK}:{upstream} {{
			{transport}
		}}
	}}
}}
"""


def start_caddy(w: World, d: Path, verify_port: int | None) -> tuple[run.Child, int]:
    d.mkdir(parents=True, exist_ok=True)
    port = run.free_port()
    conf = d / "Caddyfile"
    conf.write_text(caddyfile(d, port, w.upstream_port, d / "caddy-access.log", verify_port))
    env = dict(os.environ, GOMAXPROCS="1", HOME=str(d), XDG_DATA_HOME=str(d / "data"),
               XDG_CONFIG_HOME=str(d / "config"))  # fmt: skip
    argv = ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]
    child = w.children.spawn("caddy", run.pin(argv, run.PROXY_CPU), env=env, cwd=d,
                             stderr=d / "caddy-stderr.log")  # fmt: skip
    deadline = time.monotonic() + run.READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise run.BenchError(f"caddy exited before answering:\n{child.stderr_tail()}")
        try:
            status, _, body = get(port, APP_HOST, PATH, w.auth_header())
            if status == 200 and body == BODY:
                return child, port
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    w.children.stop(child)
    raise run.BenchError(f"caddy did not answer: {last}\n{child.stderr_tail()}")


# -------------------------------------------------------------------------------- GC probe

# ``--gc``: every collection of the edge's processes (generation, start on the system's
# monotonic clock, duration), kept in memory and written at exit; gc.callbacks costs a
# Python call per collection, nothing per request
GC_PROBE = """\
import os

if os.environ.get("EDGE_BENCH_GC_DIR"):
    import atexit
    import gc
    import time

    _log = []
    _began = [0.0]

    def _collected(phase, info):
        if phase == "start":
            _began[0] = time.monotonic()
        else:
            _log.append((info["generation"], _began[0], time.monotonic() - _began[0]))

    def _write():
        name = f"gc-{os.getpid()}.txt"
        with open(os.path.join(os.environ["EDGE_BENCH_GC_DIR"], name), "w") as f:
            f.writelines(f"{g} {t:.6f} {d:.6f}\\n" for g, t, d in _log)

    gc.callbacks.append(_collected)
    atexit.register(_write)
"""


@dataclass
class GcWindow:
    """The collections of one process within a measured run."""

    counts: tuple[int, int, int] = (0, 0, 0)  # per generation
    ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # total pause per generation
    max_ms: float = 0.0


def gc_window(d: Path, pid: int, t0: float, t1: float) -> GcWindow | None:
    """What ``pid`` collected between ``t0`` and ``t1`` (None: it left no log)."""
    path = d / f"gc-{pid}.txt"
    if not path.exists():
        return None
    counts, ms, top = [0, 0, 0], [0.0, 0.0, 0.0], 0.0
    for line in path.read_text().splitlines():
        gen, began, took = line.split()
        if t0 <= float(began) <= t1:
            g = int(gen)
            counts[g] += 1
            ms[g] += float(took) * 1e3
            top = max(top, float(took) * 1e3)
    return GcWindow((counts[0], counts[1], counts[2]), (ms[0], ms[1], ms[2]), top)


# -------------------------------------------------------------------------------- a target


@dataclass
class Running:
    """The processes of one target: ``front`` takes wrk's requests; ``auth`` is the edge
    answering ``/verify`` behind Caddy's ``forward_auth``."""

    target: str
    port: int
    front: run.Child
    auth: run.Child | None = None
    edge_dir: Path | None = None  # where the edge (if any) keeps its logs

    @property
    def edge(self) -> run.Child | None:
        if self.auth is not None:
            return self.auth
        return self.front if self.edge_dir is not None else None

    def children(self) -> list[run.Child]:
        return [self.front] + ([self.auth] if self.auth else [])


def start_target(w: World, target: str, d: Path) -> Running:
    if target in ("edge", "edge-auth"):
        edge = start_edge(w, d, protected=target == "edge-auth")
        return Running(target, edge.port, edge.child, edge_dir=d)
    if target == "caddy":
        child, port = start_caddy(w, d, None)
        return Running(target, port, child)
    if target == "caddy-fwd":
        edge = start_edge(w, d / "verify", protected=True)
        try:
            child, port = start_caddy(w, d, edge.port)
        except BaseException:
            w.children.stop(edge.child)
            raise
        return Running(target, port, child, edge.child, d / "verify")
    raise run.BenchError(f"unknown target {target}")


def stop_target(w: World, r: Running) -> None:
    for child in reversed(r.children()):
        w.children.stop(child)


def check_target(w: World, r: Running) -> None:
    """The token passes and the upstream sees who it is when protected (nothing otherwise);
    a protected target refuses no token, another key's token and another audience's."""
    protected = r.target in PROTECTED

    def fail(what: str) -> run.BenchError:
        return run.BenchError(f"{r.target}: {what}")

    status, _, body = get(r.port, APP_HOST, PATH, w.auth_header())
    if status != 200 or body != BODY:
        raise fail(f"{PATH} with the token: {status} {body[:80]!r}")
    status, _, body = get(r.port, APP_HOST, "/whoami", w.auth_header())
    want = f"[{USER}]" if protected else "[]"
    if status != 200 or body.decode() != want:
        raise fail(f"/whoami with the token: {status} {body[:80]!r}, want {want}")
    cases = {"no token": "", **w.bad_tokens}
    for what, token in cases.items():
        status, _, _ = get(r.port, APP_HOST, PATH, w.auth_header(token))
        if protected and status != 401:
            raise fail(f"{what}: {status}, want 401")
        if not protected and status != 200:
            raise fail(f"{what} (nothing checked): {status}, want 200")


def wrk_argv(w: World, port: int, secs: int) -> list[str]:
    return run.pin(
        ["wrk", f"-t{run.WRK_THREADS}", f"-c{run.WRK_CONNECTIONS}", f"-d{secs}s", "--latency",
         "-H", f"Host: {APP_HOST}", "-H", f"Authorization: Bearer {w.token}",
         f"http://{run.LOOPBACK}:{port}{PATH}"],
        run.LOAD_CPU,
    )  # fmt: skip


def wrk(w: World, port: int, secs: int) -> run.WrkResult:
    try:
        done = subprocess.run(wrk_argv(w, port, secs), capture_output=True, text=True,
                              timeout=secs + 60)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise run.BenchError("wrk did not finish") from exc
    if done.returncode != 0:
        raise run.BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return run.parse_wrk(done.stdout)


# -------------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    round: int
    target: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    front_cpu_us: float = 0.0  # the process wrk talks to, per request
    auth_cpu_us: float = 0.0  # the edge answering /verify behind Caddy, per request
    cpu_us: float = 0.0  # both
    core: float = 0.0  # CPU seconds of everything under test per wall second
    waited: float = 0.0  # seconds per wall second its threads waited for a CPU
    gc: GcWindow | None = None  # the edge worker's collections (``--gc``)
    wall_s: float = 0.0


def measure(w: World, target: str, rnd: int, secs: int, warmup: int) -> Sample:
    d = w.tmp / f"r{rnd}-{target}"
    r = start_target(w, target, d)
    worker, t0, t1 = 0, 0.0, 0.0
    try:
        check_target(w, r)
        wrk(w, r.port, warmup)
        worker = worker_pid(r.edge) if r.edge is not None else 0
        pids = [c.pid for c in r.children()]
        before = [run.tree_cpu(p) for p in pids]
        waited0 = sum(oauth_bench.runq_wait(p) for p in pids)
        t0 = time.monotonic()
        res = wrk(w, r.port, secs)
        t1 = time.monotonic()
        wall = t1 - t0
        after = [run.tree_cpu(p) for p in pids]
        waited1 = sum(oauth_bench.runq_wait(p) for p in pids)
        for c in r.children():
            if c.proc.poll() is not None:
                raise run.BenchError(f"{c.name} exited during the run:\n{c.stderr_tail()}")
        cpu = [run.cpu_delta_seconds(b, a) for b, a in zip(before, after, strict=True)]
        n = res.requests or 1
        s = Sample(rnd, target, res.rps, res.p50_ms, res.p99_ms, res.requests,
                   res.non2xx + res.socket_errors)  # fmt: skip
        s.front_cpu_us = cpu[0] * 1e6 / n
        s.auth_cpu_us = cpu[1] * 1e6 / n if len(cpu) > 1 else 0.0
        s.cpu_us = sum(cpu) * 1e6 / n
        s.core = sum(cpu) / wall
        s.waited = (waited1 - waited0) / wall
        s.wall_s = wall
    finally:
        stop_target(w, r)  # the GC probe writes its log as the worker exits
        if worker and r.edge_dir is not None and w.gc_probe is not None:
            got = gc_window(r.edge_dir, worker, t0, t1)
            if got is None:
                print(f"warning: {target}: the edge worker left no GC log", file=sys.stderr)
        else:
            got = None
        if not w.keep_tmp:
            shutil.rmtree(d, ignore_errors=True)
    s.gc = got
    return s


# -------------------------------------------------------------------------------- profiling


def profile(w: World, targets: Sequence[str], secs: int, out: Path) -> None:
    """py-spy of the edge worker of each target (the ``/verify`` one behind Caddy) while wrk
    runs: collapsed stacks in ``out/forwardauth-<target>.txt`` and a top-functions summary."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise run.BenchError("py-spy not found on PATH")
    out.mkdir(parents=True, exist_ok=True)
    for target in targets:
        if target == "caddy":
            continue
        d = w.tmp / f"profile-{target}"
        r = start_target(w, target, d)
        try:
            check_target(w, r)
            wrk(w, r.port, run.WARMUP_SECS)
            edge = r.auth if r.auth is not None else r.front
            worker = worker_pid(edge)
            raw = out / f"forwardauth-{target}.txt"
            rec = w.children.spawn(
                "py-spy",
                run.pin([spy, "record", "--pid", str(worker), "--duration", str(secs),
                         "--rate", "250", "--format", "raw", "--output", str(raw)],
                        run.LOAD_CPU),
                stderr=d / "py-spy.log",
            )  # fmt: skip
            time.sleep(0.5)
            res = wrk(w, r.port, secs)
            with contextlib.suppress(subprocess.TimeoutExpired):
                rec.proc.wait(60)
            w.children.stop(rec)
            if not raw.exists():
                raise run.BenchError(f"py-spy wrote nothing: {rec.stderr_tail()}")
            summary = run.summarize_raw_profile(raw, top=30)
            (out / f"forwardauth-{target}-top.txt").write_text(summary)
            print(f"## {target}: {res.rps:,.0f} req/s under py-spy, worker {worker}\n")
            print(summary)
        finally:
            stop_target(w, r)


def worker_pid(edge: run.Child) -> int:
    """The one worker under the edge's supervisor."""
    tree = run.process_tree(edge.pid)
    named = [p for p in tree if p != edge.pid and "edge worker" in run.cmdline(p)]
    if len(named) != 1:
        raise run.BenchError(f"expected one edge worker under {edge.pid}, found {named}")
    return named[0]


# -------------------------------------------------------------------------------- instructions

# what each counted run sends: the proxied request of the edge rows, and the check Caddy's
# forward_auth asks of the edge (the edge's half of the caddy-fwd row)
COUNTED = ("edge", "edge-auth", "verify")


def counted_request(w: World, what: str) -> bytes:
    if what == "verify":
        query = urllib.parse.urlencode({"resource": RESOURCE})
        target, host = f"/verify?{query}", f"{AUTH_HOST}:{w.edge_port}"
    else:
        target, host = PATH, APP_HOST
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\nAccept: */*\r\n"
        f"Authorization: Bearer {w.token}\r\n\r\n"
    ).encode("latin-1")


def client(port: int, request: bytes, count: int) -> None:
    """``count`` requests one after another on one keep-alive connection, each answered 200
    (a Content-Length body)."""
    with socket.create_connection((run.LOOPBACK, port), timeout=120) as sock:
        buf = b""
        for _ in range(count):
            sock.sendall(request)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end])
                    need = end + 4 + (int(m.group(1)) if m else 0)
                    if len(buf) >= need:
                        if not buf.startswith(b"HTTP/1.1 200"):
                            raise run.BenchError(f"answered {buf[:80]!r}")
                        buf = buf[need:]
                        break
                data = sock.recv(65536)
                if not data:
                    raise run.BenchError("the edge closed the connection")
                buf += data


@dataclass
class Count:
    """One callgrind count: the worker idle for ``idle_s``, then answering ``requests``."""

    what: str
    requests: int
    idle: int  # instructions while idle
    idle_s: float
    busy: int  # instructions while the requests ran
    busy_s: float

    @property
    def background_per_s(self) -> float:
        return self.idle / self.idle_s

    @property
    def per_request(self) -> float:
        """The requests' instructions less the background work of the same wall time
        (timers, Redis polls: under valgrind, wall time and so their share grow ~50x)."""
        return (self.busy - self.background_per_s * self.busy_s) / self.requests


def _callgrind(pid: int, *args: str) -> None:
    done = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise run.BenchError(f"callgrind_control {args}: {done.stdout}{done.stderr}")


def _totals(path: Path) -> int:
    m = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
    if not m:
        raise run.BenchError(f"no totals in {path}")
    return int(m.group(1))


def callgrind_once(
    w: World, what: str, requests: int, connections: int, idle_s: float, out: Path
) -> Count:
    """One edge worker (``python -m edge worker`` under callgrind, no supervisor): once it
    has started, its counters are zeroed, it idles ``idle_s`` seconds (dump 1: the
    background rate), then answers ``requests`` on ``connections`` keep-alive connections
    (dump 2)."""
    env = edge_env(w, out.parent)
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, "-m", "edge", "worker", "--id", "0"]  # fmt: skip
    err = out.with_name(out.name + ".stderr")
    child = w.children.spawn("edge under callgrind", argv, env=env, cwd=out.parent,
                             stdout=out.with_name(out.name + ".log"), stderr=err)  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a worker starts slowly under valgrind
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((run.LOOPBACK, w.edge_port), timeout=1).close()
                break
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise run.BenchError(f"the worker did not listen:\n{child.stderr_tail()}")
            time.sleep(0.2)
        request = counted_request(w, what)
        client(w.edge_port, request, 2)  # first sight of the token: verified, remembered
        time.sleep(2)  # the start-up's background work settles
        _callgrind(child.pid, "--zero")
        t0 = time.monotonic()
        time.sleep(idle_s)
        _callgrind(child.pid, "--dump=idle")
        t1 = time.monotonic()
        per = requests // connections
        errors: list[BaseException] = []

        def one() -> None:
            try:
                client(w.edge_port, request, per)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise run.BenchError(f"{what}: {errors[0]}")
        _callgrind(child.pid, "--dump=busy")
        t2 = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        child.proc.wait(timeout=300)
    finally:
        w.children.stop(child)
    dumps = [p for p in out.parent.glob(out.name + ".*") if p.suffix[1:].isdigit()]
    dumps.sort(key=lambda p: int(p.suffix[1:]))
    if len(dumps) < 2:
        raise run.BenchError(f"expected two callgrind dumps next to {out}, found {dumps}")
    # callgrind_control returns once the worker has dumped: t0, t1 and t2 are the window
    # boundaries to within a poll of its command file
    return Count(what, per * connections, _totals(dumps[0]), t1 - t0, _totals(dumps[1]),
                 t2 - t1)  # fmt: skip


def instructions(w: World, targets: Sequence[str], requests: int, idle_s: float,
                 keep: Path | None) -> list[Count]:  # fmt: skip
    """A callgrind count of each of ``COUNTED`` whose row is among ``targets`` (``verify``
    for ``caddy-fwd``)."""
    d = w.tmp / "callgrind"
    d.mkdir()
    out: list[Count] = []
    for what in COUNTED:
        if (what if what != "verify" else "caddy-fwd") not in targets:
            continue
        # the proxy doc as the row has it (the /verify count runs with the protected one)
        run.redis_command(w.redis_port, "SET", f"proxy:{APP_HOST}",
                          proxy_doc(w, protected=what != "edge"))  # fmt: skip
        path = d / f"cg.{what}"
        c = callgrind_once(w, what, requests, 4, idle_s, path)
        out.append(c)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in d.glob(path.name + ".*"):
                shutil.copy(f, keep / f.name)
        run.progress(f"instructions per request, {what}: {c.per_request:,.0f} ({c.requests} "
                     f"requests: {c.busy:,} in {c.busy_s:.1f} s; idle {c.idle:,} in "
                     f"{c.idle_s:.1f} s, {c.background_per_s:,.0f}/s)")  # fmt: skip
    return out


# -------------------------------------------------------------------------------- report


def _med(rs: Sequence[Sample], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in rs)


def render(samples: list[Sample], counts: list[Count], args: argparse.Namespace,
           command: str, info: dict[str, str], targets: Sequence[str]) -> str:  # fmt: skip
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION_START,
        "## A protected proxy: own tokens against Caddy `forward_auth` (`bench/forwardauth.py`)",
        "",
        f"- Date: {when}",
        f"- Machine: nproc={info['nproc']}, CPU: {info['cpu']}, Linux {info['kernel']}",
        f"- Software: Caddy {info['caddy']}, {info['nginx']} (upstream), {info['redis']}, "
        f"{info['wrk']}, Python {info['python']}, PyJWT {info['pyjwt']}, cryptography "
        f"{info['cryptography']}, edge at git {info['git']}",
        f"- Command: `{command}`",
        f"- Load: `wrk -t{run.WRK_THREADS} -c{run.WRK_CONNECTIONS} -d{args.duration}s --latency "
        f"-H 'Host: {APP_HOST}' -H 'Authorization: Bearer <token>' http://127.0.0.1:PORT{PATH}` "
        f"on CPU {run.LOAD_CPU} (the same request to every target; the token about "
        f"{len(info.get('token', '')) or '?'} bytes, RS256, issued by the edge for "
        f"`{RESOURCE}`), upstream nginx (1 worker, static 13 bytes) and Redis on CPU "
        f"{run.LOAD_CPU}; everything under test on CPU {run.PROXY_CPU}: one edge worker "
        "(`EDGE_WORKERS=1`), Caddy with `GOMAXPROCS=1`, and for `forward_auth` both "
        f"(Caddy and the edge answering `/verify`). {args.rounds} interleaved round(s), "
        f"{args.warmup} s warm-up each, started fresh per run; medians over rounds. Access "
        "logs on everywhere (the edge's for the proxied and the `/verify` requests).",
        "- Checked before every run: the token gets 200 and the body; on the protected "
        "targets no token, a token of another key and one of the right key for another "
        "audience get 401, and the upstream receives `X-Auth-User-Name: benchuser`; the "
        "unprotected ones pass everything and the upstream receives no identity.",
        f"- Load average (1/5/15 min) before: {info.get('loadavg_before', '?')}, "
        f"after: {info.get('loadavg_after', '?')}",
        "",
        "| target | req/s | req/s range | p50 ms | p99 ms | CPU µs/req | of which `/verify` "
        "| core | waited | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med: dict[str, dict[str, float]] = {}
    for t in targets:
        rs = [s for s in samples if s.target == t]
        if not rs:
            continue
        m = {a: _med(rs, a) for a in ("rps", "p50_ms", "p99_ms", "cpu_us", "auth_cpu_us",
                                      "core", "waited")}  # fmt: skip
        med[t] = m
        lo, hi = min(s.rps for s in rs), max(s.rps for s in rs)
        verify = f"{m['auth_cpu_us']:.1f}" if t == "caddy-fwd" else "-"
        lines.append(
            f"| {LABELS[t]} | {m['rps']:,.0f} | {lo:,.0f}-{hi:,.0f} | {m['p50_ms']:.2f} | "
            f"{m['p99_ms']:.2f} | {m['cpu_us']:.1f} | {verify} | {m['core']:.2f} | "
            f"{m['waited']:.2f} | {sum(s.errors for s in rs)} |"
        )
    lines += [
        "",
        "`CPU µs/req`: CPU time of every process under test per request (for `forward_auth` "
        "Caddy and the edge together; the edge's share in the next column). `core`: their "
        "CPU seconds per wall second (1.00 = CPU 1 fully used). `waited`: seconds per wall "
        "second their threads were ready but waited for a CPU (`schedstat`); with two "
        "processes on one core some waiting is the design, elsewhere it is other work.",
        "",
        "| ratio | req/s (medians) | req/s per round | CPU/req (medians) |",
        "|---|---:|---:|---:|",
    ]
    for a, b in RATIOS:
        if a not in med or b not in med:
            continue
        per_round = []
        for rnd in sorted({s.round for s in samples}):
            ra = [s.rps for s in samples if s.round == rnd and s.target == a]
            rb = [s.rps for s in samples if s.round == rnd and s.target == b]
            if ra and rb and rb[0]:
                per_round.append(ra[0] / rb[0])
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}x" if per_round else "-"
        lines.append(
            f"| {a} ÷ {b} | **{med[a]['rps'] / med[b]['rps']:.2f}x** | {spread} | "
            f"{med[a]['cpu_us'] / med[b]['cpu_us']:.2f}x |"
        )
    probed = [s for s in samples if s.gc is not None]
    if probed:
        lines += [
            "",
            "Garbage collections of the edge worker during the measured runs (`--gc`: a "
            "`gc.callbacks` probe loaded as `sitecustomize`, times on the monotonic clock), "
            "medians over rounds: collections per second of each generation, pause "
            "milliseconds per second of all, the longest pause of any round.",
            "",
            "| edge worker of | gen 0 / s | gen 1 / s | gen 2 / s | GC ms / s | gen 2 ms each "
            "| longest pause ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for t in targets:
            rs = [s for s in probed if s.target == t]
            if not rs:
                continue

            def rate(s: Sample, g: int) -> float:
                assert s.gc is not None
                return s.gc.counts[g] / s.wall_s

            def pause(s: Sample) -> float:
                assert s.gc is not None
                return sum(s.gc.ms) / s.wall_s

            full = [s.gc.ms[2] / s.gc.counts[2] for s in rs if s.gc and s.gc.counts[2]]
            each = f"{statistics.median(full):.1f}" if full else "-"
            longest = max(s.gc.max_ms for s in rs if s.gc)
            lines.append(
                f"| {LABELS[t]} | {statistics.median(rate(s, 0) for s in rs):.1f} | "
                f"{statistics.median(rate(s, 1) for s in rs):.2f} | "
                f"{statistics.median(rate(s, 2) for s in rs):.2f} | "
                f"{statistics.median(pause(s) for s in rs):.1f} | {each} | {longest:.1f} |"
            )
    if counts:
        lines += [
            "",
            "Instructions per request (valgrind callgrind, user space only): one edge worker "
            "(`python -m edge worker`, no supervisor) started, its counters zeroed, "
            f"{args.idle:.0f} s idle counted (the background rate: timers, Redis polls), then "
            f"{args.requests} requests on 4 keep-alive connections counted; per request = "
            "(busy count - background rate x busy seconds) / requests. Under valgrind the "
            "wall time, and with it the background's share, grows about fifty-fold: the "
            "correction matters. A figure machine noise does not move. `verify` is the "
            "edge's half of the `forward_auth` row: `GET /verify?resource=...` with the "
            "token, as Caddy asks it.",
            "",
            "| counted | instructions / request | ÷ edge, unprotected | requests counted "
            "| background / s |",
            "|---|---:|---:|---:|---:|",
        ]
        by = {c.what: c for c in counts}
        base = by["edge"].per_request if "edge" in by else None
        for c in counts:
            ratio = f"{c.per_request / base:.3f}x" if base else "-"
            lines.append(
                f"| {c.what} | {c.per_request:,.0f} | {ratio} | {c.requests} | "
                f"{c.background_per_s:,.0f} |"
            )
        if base and "edge-auth" in by:
            lines += [
                "",
                f"The protection adds {by['edge-auth'].per_request - base:,.0f} instructions "
                "to each proxied request.",
            ]
    lines += ["", SECTION_END]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = run.side_bench_options(__doc__.split("\n")[0] if __doc__ else "")
    p.set_defaults(rounds=5, duration=10)
    p.add_argument("--warmup", type=int, default=run.WARMUP_SECS, help="seconds (2)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke check: 1 round of 2 s after 1 s of warm-up")  # fmt: skip
    p.add_argument("--json", type=Path, help="write every sample as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="instead of measuring: py-spy of the edge worker of each edge target",
    )
    p.add_argument(
        "--gc",
        action="store_true",
        help="record the edge worker's garbage collections (a gc.callbacks probe loaded as "
        "sitecustomize) and report them per measured run",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per request under callgrind (about 10 minutes)",
    )
    p.add_argument("--requests", type=int, default=1000, help="requests counted (1000)")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle count (10)")
    p.add_argument("--keep-cg", type=Path, metavar="DIR", help="keep the callgrind files")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    targets = [t.strip() for t in (args.only or ",".join(TARGETS)).split(",") if t.strip()]
    if not targets or not set(targets) <= set(TARGETS):
        p.error(f"--only takes some of {','.join(TARGETS)}")
    if args.requests < 4 or args.idle <= 0:
        p.error("want --requests >= 4 and --idle > 0")
    if min(args.duration, args.warmup) < 1 or args.rounds < (0 if args.instructions else 1):
        p.error("--duration and --warmup must be positive, --rounds too (0 with --instructions)")
    if args.write_results and (args.quick or args.profile):
        p.error("--write-results records a full run: not with --quick or --profile")
    for extra in ("/usr/sbin", "/sbin"):  # nginx lives there on Debian
        if extra not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + extra
    tools = (*TOOLS, "valgrind", "callgrind_control") if args.instructions else TOOLS
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"error: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = shlex.join(
        ["python", "bench/forwardauth.py", *(sys.argv[1:] if argv is None else argv)]
    )
    info = oauth_bench.versions()
    info["loadavg_before"] = run.loadavg()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)  # cleanup runs on them too
    os.sched_setaffinity(0, {int(run.LOAD_CPU)})  # the harness and the GitHub stand-in
    samples: list[Sample] = []
    counts: list[Count] = []
    tmp = Path(tempfile.mkdtemp(prefix="forwardauth-bench-"))
    tmp.chmod(0o755)  # readable by nginx workers running as another user
    children = run.Children()
    try:
        _, redis_port = run.start_redis(children, tmp)
        upstream_port = start_upstream(children, tmp)
        key, key_b64 = oauth_bench.signing_key()
        with github_standin() as github:
            github.add_user(USER, 1000)
            w = World(children, tmp, redis_port, upstream_port, github, key, key_b64,
                      keep_tmp=args.keep_tmp)  # fmt: skip
            if args.gc:
                w.gc_probe = tmp / "gc-probe"
                w.gc_probe.mkdir()
                (w.gc_probe / "sitecustomize.py").write_text(GC_PROBE)
            issue_token(w)
            info["token"] = w.token
            run.progress(f"token of {len(w.token)} bytes for {RESOURCE}")
            if args.profile:
                profile(w, targets, args.duration, args.profile)
                return 0
            for rnd in range(1, args.rounds + 1):
                for target in targets:
                    s = measure(w, target, rnd, args.duration, args.warmup)
                    samples.append(s)
                    run.progress(
                        f"round {rnd} {target:<10} {s.rps:9,.0f} req/s  p50 {s.p50_ms:6.2f}  "
                        f"p99 {s.p99_ms:6.2f} ms  {s.cpu_us:6.1f} µs/req "
                        f"(verify {s.auth_cpu_us:5.1f})  core {s.core:.2f}  "
                        f"waited {s.waited:.2f}  errors {s.errors}"
                    )
            if args.instructions:
                counts = instructions(w, targets, args.requests, args.idle, args.keep_cg)
    except run.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping children", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_after"] = run.loadavg()
    text = render(samples, counts, args, command, info, targets)
    if args.json:
        data = {
            "command": command,
            "machine": {k: v for k, v in info.items() if k != "token"},
            "samples": [asdict(s) for s in samples],
            "instructions": [asdict(c) for c in counts],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    run.publish(text, args.write_results, SECTION_START, SECTION_END)
    return 2 if any(s.errors for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
