"""OAuth server: access tokens issued per second, and ``/verify`` answers per second.

Everything runs on loopback: a private ``redis-server``, one edge worker serving the
authorization server on ``auth.localhost`` (issuer ``http://auth.localhost:PORT``, a signing
key of our own in ``OAUTH_JWT_PRIVATE_KEY_B64``), and the tests' GitHub stand-in for the one
login that makes a browser session.

* ``tokens``: after one browser login and consent, per token: ``GET /authorize`` with the
  session cookie (the client already approved: ``302`` with the code at once), then
  ``POST /token`` with the code and the PKCE verifier (``200`` with the JWT). A load driver
  in this process (asyncio, raw sockets, keep-alive) runs ``--connections`` such loops at
  once; ``authorize`` runs do the first request only, so the split of the worker's CPU
  between the two requests is measured, not guessed. Redis commands per token come from
  ``INFO commandstats`` before and after each run.
* ``verify``: ``wrk -t1 -c50 --latency -H 'Authorization: Bearer <a token issued above>'``
  on ``/verify`` of the edge and, in the same rounds, of two anchors: nginx answering the
  same path with ``return 200`` (the floor of any ForwardAuth endpoint) and HAProxy checking
  the same token in process (``jwt_verify`` RS256 against the same key, ``alg``, ``iss`` and
  ``exp``, the claims returned as headers).

One edge worker (and nginx, HAProxy: one worker, one thread) pinned to CPU 1; wrk, Redis,
the load driver and this script on CPU 0. Rounds are interleaved; medians over rounds.

    python bench/oauth.py [--rounds 3] [--duration 5] [--write-results]
    python bench/oauth.py --only tokens --connections 8,32,64
    python bench/oauth.py --only verify --duration 10

Needs redis-server, nginx, haproxy, wrk and taskset; run from the repository root with the
project's Python (it imports ``edge``, ``tests/github_standin.py`` and
``tests/oauth_helpers.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import importlib.metadata
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt
import redis
import run
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.github_standin import GitHubStandin, github_standin
from tests.oauth_helpers import Browser, OAuthClient, Page, pkce_pair, query_of, register_client

SECTION_START = "<!-- bench/oauth.py:start -->"
SECTION_END = "<!-- bench/oauth.py:end -->"
AUTH_HOST = "auth.localhost"
USER = "benchuser"
SCOPE = "mcp:read"
STATE = "bench"
TOOLS = ("redis-server", "nginx", "haproxy", "wrk", "taskset")
WRK_CONNECTIONS = 50
WARMUP_SECS = 1
SIGN_BATCH = 200  # signatures per timed batch
SIGN_BATCHES = 7
VERIFY_TARGETS = ("nginx", "haproxy", "edge")
VERIFY_LABELS = {
    "nginx": "nginx `return 200`",
    "haproxy": "HAProxy `jwt_verify`",
    "edge": "edge `/verify`",
}


# -------------------------------------------------------------------------------- setup


@dataclass
class Stack:
    """The processes of a run and what the login left behind."""

    edge: run.Child
    port: int
    issuer: str
    redis_port: int
    redis: run.Child
    dir: Path
    client: OAuthClient | None = None
    cookie: str = ""  # "name=value" of the browser session
    token: str = ""  # an access token issued by the edge, for /verify

    @property
    def host(self) -> str:
        return f"{AUTH_HOST}:{self.port}"

    def worker_pid(self) -> int:
        tree = run.process_tree(self.edge.pid)
        named = [p for p in tree if p != self.edge.pid and "edge worker" in run.cmdline(p)]
        if len(named) != 1:
            raise run.BenchError(f"expected one edge worker under {self.edge.pid}, found {named}")
        return named[0]


def signing_key() -> tuple[rsa.RSAPrivateKey, str]:
    """An RSA 2048 key and its PEM, base64-encoded as ``OAUTH_JWT_PRIVATE_KEY_B64`` wants."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key, base64.b64encode(pem).decode("ascii")


def start_edge(
    children: run.Children, tmp: Path, redis_port: int, redis_child: run.Child,
    github: GitHubStandin, key_b64: str,
) -> Stack:  # fmt: skip
    d = tmp / "edge"
    d.mkdir()
    port = run.free_port()
    issuer = f"http://{AUTH_HOST}:{port}"
    env = dict(os.environ)
    env.update(
        PYTHONPATH=run.edge_pythonpath(run.REPO_ROOT, env),
        REDIS_URL=f"redis://{run.LOOPBACK}:{redis_port}/0",
        SERVER_HOST=run.LOOPBACK,
        HTTP_PORT=str(port),
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
        OAUTH_ISSUER=issuer,
        OAUTH_ALLOWED_GITHUB_USERS=USER,
        OAUTH_JWT_PRIVATE_KEY_B64=key_b64,
        **github.settings(),
    )
    argv = run.pin([sys.executable, "-m", "edge", "serve"], run.PROXY_CPU)
    child = children.spawn("edge", argv, env=env, cwd=d, stdout=d / "access.log",
                           stderr=d / "stderr.log")  # fmt: skip
    deadline = time.monotonic() + run.READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise run.BenchError(f"the edge exited before answering:\n{child.stderr_tail()}")
        try:
            status, _, _ = get(
                port, f"{AUTH_HOST}:{port}", "/.well-known/oauth-authorization-server"
            )
            if status == 200:
                return Stack(child, port, issuer, redis_port, redis_child, d)
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise run.BenchError(f"the edge's OAuth server did not answer: {last}\n{child.stderr_tail()}")


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


def login(stack: Stack) -> None:
    """Register a public client, sign the browser in through the GitHub stand-in and approve
    the client once: from then on ``/authorize`` with the cookie answers with a code."""
    client = register_client(stack.issuer, method="none")
    browser = Browser()
    verifier, challenge = pkce_pair()
    got: Page | str = browser.follow(
        client.authorize_url(challenge, state=STATE, scope=SCOPE), client.redirect_uri
    )
    if isinstance(got, Page) and got.status == 200 and "csrf_token" in got.text:
        form = {
            "request_id": got.hidden("request_id"),
            "csrf_token": got.hidden("csrf_token"),
            "decision": "approve",
        }
        got = browser.follow(
            f"{stack.issuer}/consent", client.redirect_uri, method="POST", form=form
        )
    if not isinstance(got, str):
        raise run.BenchError(f"the login did not reach the client: {got.status} {got.text[:300]}")
    page = client.token(query_of(got)["code"], verifier)
    if page.status != 200:
        raise run.BenchError(f"POST /token after the login: {page.status} {page.text[:300]}")
    jar = browser.cookies.get(AUTH_HOST, {})
    if len(jar) != 1:
        raise run.BenchError(f"expected one session cookie, got {sorted(jar)}")
    stack.client = client
    stack.cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
    stack.token = page.json()["access_token"]
    # the shortcut every measured token takes: cookie + approved client -> 302 with a code
    _, challenge = pkce_pair()
    url = client.authorize_url(challenge, state=STATE, scope=SCOPE)
    status, headers, _ = get(stack.port, stack.host, url.removeprefix(stack.issuer),
                             {"Cookie": stack.cookie})  # fmt: skip
    location = headers.get("location", "")
    if status != 302 or "code" not in query_of(location):
        raise run.BenchError(f"/authorize with the session cookie: {status} {location[:200]}")


# -------------------------------------------------------------------------------- load driver


class ResponseError(RuntimeError):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes, bool]:
    """(status, head, body, keep-alive) of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise ResponseError("chunked responses are not handled by this driver")
        elif name == b"connection" and b"close" in value.lower():
            close = True
    body = await reader.readexactly(length) if length else b""
    return status, head, body, not close


@dataclass
class Tally:
    tokens: int = 0
    authorizes: int = 0
    auth_lat: list[float] = field(default_factory=list)
    token_lat: list[float] = field(default_factory=list)
    reconnects: int = 0


class Driver:
    """``connections`` keep-alive loops of authorize (+ token) against the edge."""

    def __init__(self, stack: Stack, connections: int, with_token: bool) -> None:
        assert stack.client is not None
        self.port = stack.port
        self.client = stack.client
        self.with_token = with_token
        self.connections = connections
        self.counting = False
        self.stopping = False
        self.tally = Tally()
        self.failures: Counter[str] = Counter()
        c = stack.client
        self._auth_prefix = (
            "GET /authorize?"
            + urllib.parse.urlencode(
                [
                    ("response_type", "code"),
                    ("client_id", c.client_id),
                    ("redirect_uri", c.redirect_uri),
                    ("state", STATE),
                    ("scope", SCOPE),
                    ("code_challenge_method", "S256"),
                ]
            )
            + "&code_challenge="
        ).encode("ascii")
        self._auth_suffix = (
            f" HTTP/1.1\r\nHost: {stack.host}\r\nCookie: {stack.cookie}\r\n"
            "Accept: text/html\r\n\r\n"
        ).encode("latin-1")
        self._token_head = (
            f"POST /token HTTP/1.1\r\nHost: {stack.host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
        ).encode("ascii")
        self._token_fixed = urllib.parse.urlencode(
            [
                ("grant_type", "authorization_code"),
                ("client_id", c.client_id),
                ("redirect_uri", c.redirect_uri),
            ]
        ).encode("ascii")

    async def _loop(self) -> None:
        reader, writer = await asyncio.open_connection(run.LOOPBACK, self.port)
        perf = time.perf_counter
        t = self.tally
        try:
            while not self.stopping:
                verifier = secrets.token_urlsafe(48)
                digest = hashlib.sha256(verifier.encode("ascii")).digest()
                challenge = base64.urlsafe_b64encode(digest).rstrip(b"=")
                counted = self.counting
                t0 = perf()
                writer.write(self._auth_prefix + challenge + self._auth_suffix)
                status, head, _, alive = await read_response(reader)
                t1 = perf()
                if status != 302:
                    raise ResponseError(f"/authorize answered {status}")
                start = head.find(b"code=")
                if start < 0:
                    raise ResponseError("/authorize: no code in the Location")
                end = start + 5
                while end < len(head) and head[end] not in b"&\r":
                    end += 1
                code = head[start + 5 : end]
                if counted:
                    t.authorizes += 1
                    t.auth_lat.append(t1 - t0)
                if self.with_token:
                    if not alive:
                        writer.close()
                        reader, writer = await asyncio.open_connection(run.LOOPBACK, self.port)
                        t.reconnects += 1
                    body = (self._token_fixed + b"&code=" + code + b"&code_verifier="
                            + verifier.encode("ascii"))  # fmt: skip
                    t0 = perf()
                    writer.write(self._token_head + str(len(body)).encode() + b"\r\n\r\n" + body)
                    status, _, payload, alive = await read_response(reader)
                    t1 = perf()
                    if status != 200 or b'"access_token"' not in payload:
                        raise ResponseError(f"/token answered {status}: {payload[:200]!r}")
                    if counted:
                        t.tokens += 1
                        t.token_lat.append(t1 - t0)
                if not alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(run.LOOPBACK, self.port)
                    t.reconnects += 1
        finally:
            writer.close()

    async def run(self, warmup: float, secs: float, marks: Callable[[], Any]) -> tuple[Any, Any]:
        """Warm up, then count for ``secs``; every loop finishes its current token before
        the end mark, so Redis and CPU deltas cover exactly the counted work (but for the
        few requests in flight at the start mark)."""
        tasks = [asyncio.create_task(self._loop()) for _ in range(self.connections)]
        try:
            await asyncio.sleep(warmup)
            self._check(tasks)
            before = marks()
            self.counting = True
            await asyncio.sleep(secs)
            self.stopping = True
            await asyncio.wait(tasks, timeout=30)
            after = marks()
            self._check(tasks)
            return before, after
        finally:
            self.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _check(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise run.BenchError(f"load driver: {task.exception()!r}")


# -------------------------------------------------------------------------------- tokens


@dataclass
class Marks:
    wall: float
    edge: dict[tuple[int, int], int]
    redis: dict[tuple[int, int], int]
    driver: float  # this process's CPU seconds (user + system, all threads)
    commands: dict[str, int]
    edge_wait: float  # seconds the edge's threads waited for a CPU, so far


def command_counts(rdb: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = rdb.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def runq_wait(pid: int) -> float:
    """Seconds the threads of the tree at ``pid`` spent ready to run but waiting for a CPU
    (``/proc/<pid>/task/<tid>/schedstat``, second field, ns): on this shared machine the
    reason a worker can be short of one core while its load waits."""
    total = 0
    for proc in run.process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class TokenRun:
    round: int
    mode: str  # "token" (authorize + token) or "authorize" (authorize only)
    connections: int
    seconds: float = 0.0
    tokens: int = 0
    authorizes: int = 0
    per_s: float = 0.0  # tokens/s (token mode) or authorizations/s
    edge_cpu_us: float = 0.0  # per token (token mode) or per authorization
    edge_busy: float = 0.0  # edge CPU seconds / wall seconds (1.0 = one core)
    edge_wait: float = 0.0  # seconds the edge waited for a CPU / wall seconds
    redis_cpu_us: float = 0.0
    driver_cpu_us: float = 0.0
    driver_busy: float = 0.0
    auth_p50_ms: float = 0.0
    token_p50_ms: float = 0.0
    auth_p99_ms: float = 0.0
    token_p99_ms: float = 0.0
    reconnects: int = 0
    commands: dict[str, float] = field(default_factory=dict)  # per unit, info excluded


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def token_run(
    stack: Stack, rdb: redis.Redis, rnd: int, mode: str, connections: int, secs: int
) -> TokenRun:
    def marks() -> Marks:
        return Marks(time.perf_counter(), run.tree_cpu(stack.edge.pid),
                     run.tree_cpu(stack.redis.pid), self_cpu(), command_counts(rdb),
                     runq_wait(stack.edge.pid))  # fmt: skip

    driver = Driver(stack, connections, with_token=mode == "token")
    before, after = asyncio.run(driver.run(WARMUP_SECS, secs, marks))
    t = driver.tally
    r = TokenRun(rnd, mode, connections, after.wall - before.wall, t.tokens, t.authorizes)
    units = t.tokens if mode == "token" else t.authorizes
    if units == 0:
        raise run.BenchError(f"no {mode} completed in {secs} s")
    r.per_s = units / r.seconds
    edge_s = run.cpu_delta_seconds(before.edge, after.edge)
    r.edge_cpu_us = edge_s * 1e6 / units
    r.edge_busy = edge_s / r.seconds
    r.edge_wait = (after.edge_wait - before.edge_wait) / r.seconds
    r.redis_cpu_us = run.cpu_delta_seconds(before.redis, after.redis) * 1e6 / units
    driver_s = after.driver - before.driver
    r.driver_cpu_us = driver_s * 1e6 / units
    r.driver_busy = driver_s / r.seconds
    r.auth_p50_ms, r.auth_p99_ms = _pct(t.auth_lat, 0.5), _pct(t.auth_lat, 0.99)
    r.token_p50_ms, r.token_p99_ms = _pct(t.token_lat, 0.5), _pct(t.token_lat, 0.99)
    r.reconnects = t.reconnects
    for name, calls in after.commands.items():
        delta = calls - before.commands.get(name, 0)
        if name != "info" and delta:
            r.commands[name] = delta / units
    return r


def tokens_phase(
    stack: Stack, rdb: redis.Redis, rounds: int, secs: int, connections: Sequence[int]
) -> list[TokenRun]:
    plan = [("token", n) for n in connections] + [("authorize", connections[0])]
    out: list[TokenRun] = []
    for rnd in range(1, rounds + 1):
        for mode, n in plan:
            r = token_run(stack, rdb, rnd, mode, n, secs)
            out.append(r)
            what = "tokens" if mode == "token" else "authorizations"
            run.progress(
                f"round {rnd} {mode:<9} c={n:<3} {r.per_s:7,.0f} {what}/s  edge "
                f"{r.edge_cpu_us:7.0f} µs ({r.edge_busy:.2f} core, waited {r.edge_wait:.2f})  "
                f"redis {r.redis_cpu_us:5.0f} µs  "
                f"driver {r.driver_cpu_us:5.0f} µs ({r.driver_busy:.2f} core)  "
                f"p50 authorize {r.auth_p50_ms:.2f} / token {r.token_p50_ms:.2f} ms"
            )
    return out


# -------------------------------------------------------------------------------- signing


@dataclass
class SignCost:
    jwt_encode_us: float  # PyJWT encode: claims -> signed compact JWT (RS256)
    rsa_sign_us: float  # cryptography alone: PKCS#1 v1.5 SHA-256 signature of the input
    jwt_decode_us: float  # PyJWT decode with signature, iss, aud and exp checks
    rsa_verify_us: float
    token_bytes: int


def signing_cost(key: rsa.RSAPrivateKey, issuer: str) -> SignCost:
    """The RS256 cost alone, in this process, on the same CPU model as the worker."""
    now = int(time.time())
    claims = {
        "iss": issuer, "sub": "github:1000", "aud": issuer, "azp": "c" * 22,
        "client_id": "c" * 22, "scope": SCOPE, "iat": now, "nbf": now, "exp": now + 1800,
        "jti": str(uuid.uuid4()), "login": USER, "email": f"{USER}@users.example",
    }  # fmt: skip
    headers = {"kid": "k" * 43, "typ": "at+jwt"}
    token = jwt.encode(claims, key, algorithm="RS256", headers=headers)
    signing_input = token.rsplit(".", 1)[0].encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    public = key.public_key()

    def timed(fn: Callable[[], object]) -> float:
        got = []
        for _ in range(SIGN_BATCHES):
            t0 = time.thread_time()  # CPU time: what other work on the machine leaves alone
            for _ in range(SIGN_BATCH):
                fn()
            got.append((time.thread_time() - t0) / SIGN_BATCH * 1e6)
        return statistics.median(got)

    return SignCost(
        jwt_encode_us=timed(lambda: jwt.encode(claims, key, algorithm="RS256", headers=headers)),
        rsa_sign_us=timed(lambda: key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())),
        jwt_decode_us=timed(
            lambda: jwt.decode(token, public, algorithms=["RS256"], audience=issuer, issuer=issuer)
        ),
        rsa_verify_us=timed(
            lambda: public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        ),
        token_bytes=len(token),
    )


# -------------------------------------------------------------------------------- verify


def nginx_conf(d: Path, port: int) -> str:
    return (
        run._nginx_common(d, 1)
        + f"""http {{
{run._nginx_temp_paths(d)}
    access_log {d}/access.log combined buffer=64k flush=1s;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    server {{
        listen {run.LOOPBACK}:{port} backlog=4096;
        location = /verify {{ return 200; }}
        location / {{ return 404; }}
    }}
}}
"""
    )


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The signing key's public half for HAProxy's ``jwt_verify``: 2.6 reads the file with
    ``PEM_read_bio_PUBKEY``, so a bare public key (a certificate is refused as "file not
    found", and the converter then answers -5, unknown certificate)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def haproxy_conf(port: int, cert: Path, issuer: str) -> str:
    """ForwardAuth in HAProxy alone: the bearer token's signature (RS256, the signing key's
    public half), ``alg``, ``iss`` and ``exp`` checked in process, ``401`` otherwise; ``200``
    with the same ``X-Auth-*`` headers as the edge's ``/verify``."""
    claim = "var(txn.bearer),jwt_payload_query"
    # inside double quotes "$" starts an environment variable: escaped in the hdr values
    hdr = {h: f'"%[{claim}(\'\\$.{c}\')]"' for h, c in (
        ("User-Id", "sub"), ("User-Name", "login"), ("Email", "email"), ("Scopes", "scope"),
        ("Client-Id", "client_id"))}  # fmt: skip
    headers = " ".join(f"hdr X-Auth-{h} {v}" for h, v in hdr.items())
    return f"""global
    nbthread 1
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend verify
    bind {run.LOOPBACK}:{port}
    http-request return status 404 unless {{ path /verify }}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request return status 401 unless {{ var(txn.bearer),jwt_header_query('$.alg') -m str RS256 }}
    http-request return status 401 unless {{ var(txn.bearer),jwt_verify("RS256","{cert}") -m int 1 }}
    http-request return status 401 unless {{ {claim}('$.iss') -m str {issuer} }}
    http-request set-var(txn.now) date
    http-request set-var(txn.exp) {claim}('$.exp','int')
    http-request return status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    http-request return status 200 {headers} hdr Cache-Control no-store
"""  # noqa: E501


@dataclass
class Anchor:
    name: str
    child: run.Child
    port: int


def start_anchors(
    children: run.Children, tmp: Path, key: rsa.RSAPrivateKey, issuer: str
) -> dict[str, Anchor]:
    out: dict[str, Anchor] = {}
    d = tmp / "nginx"
    d.mkdir()
    port = run.free_port()
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(d, port))
    argv = ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
    child = children.spawn("nginx", run.pin(argv, run.PROXY_CPU), cwd=d,
                           stderr=d / "stderr.log")  # fmt: skip
    out["nginx"] = Anchor("nginx", child, port)
    d = tmp / "haproxy"
    d.mkdir()
    port = run.free_port()
    cert = d / "signing.pub.pem"
    cert.write_bytes(public_pem(key))
    conf = d / "haproxy.cfg"
    conf.write_text(haproxy_conf(port, cert, issuer))
    done = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
    if done.returncode != 0:
        raise run.BenchError(f"haproxy -c: {done.stdout}{done.stderr}")
    argv = ["haproxy", "-db", "-f", str(conf)]
    child = children.spawn("haproxy", run.pin(argv, run.PROXY_CPU), cwd=d,
                           stdout=d / "access.log", stderr=d / "stderr.log")  # fmt: skip
    out["haproxy"] = Anchor("haproxy", child, port)
    for a in out.values():
        deadline = time.monotonic() + 10
        while True:
            if a.child.proc.poll() is not None:
                raise run.BenchError(f"{a.name} exited:\n{a.child.stderr_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection((run.LOOPBACK, a.port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise run.BenchError(f"{a.name} did not open port {a.port}")
            time.sleep(0.05)
    return out


def check_verifiers(stack: Stack, anchors: dict[str, Anchor]) -> None:
    """The token passes everywhere; a forged one (signature of another key) and an expired
    one (same key) are refused by the edge and by HAProxy, so both check what they claim."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(stack.token, options={"verify_signature": False})
    header = jwt.get_unverified_header(stack.token)
    forged = jwt.encode(claims, other, algorithm="RS256", headers=header)
    ports = {"edge": stack.port, **{n: a.port for n, a in anchors.items()}}
    for name, port in ports.items():
        status, headers, _ = get(port, stack.host, "/verify",
                                 {"Authorization": f"Bearer {stack.token}"})  # fmt: skip
        if status != 200:
            raise run.BenchError(f"{name}: /verify with a good token answered {status}")
        if name != "nginx":
            got = headers.get("x-auth-user-name")
            if got != USER:
                raise run.BenchError(f"{name}: X-Auth-User-Name {got!r}, want {USER!r}")
            status, _, _ = get(port, stack.host, "/verify", {"Authorization": f"Bearer {forged}"})
            if status != 401:
                raise run.BenchError(f"{name}: /verify with a forged token answered {status}")


@dataclass
class VerifyRun:
    round: int
    target: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    cpu_us_per_req: float = 0.0


def wrk_argv(port: int, host: str, token: str, secs: int) -> list[str]:
    return run.pin(
        ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{secs}s", "--latency",
         "-H", f"Authorization: Bearer {token}", "-H", f"Host: {host}",
         f"http://{run.LOOPBACK}:{port}/verify"],
        run.LOAD_CPU,
    )  # fmt: skip


def wrk(argv: list[str], secs: int) -> run.WrkResult:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    except subprocess.TimeoutExpired as exc:
        raise run.BenchError("wrk did not finish") from exc
    if done.returncode != 0:
        raise run.BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return run.parse_wrk(done.stdout)


def verify_phase(
    stack: Stack, anchors: dict[str, Anchor], rounds: int, secs: int
) -> list[VerifyRun]:
    targets = {
        "edge": (stack.edge, stack.port),
        **{n: (a.child, a.port) for n, a in anchors.items()},
    }
    out: list[VerifyRun] = []
    for rnd in range(1, rounds + 1):
        for name in VERIFY_TARGETS:
            child, port = targets[name]
            wrk(wrk_argv(port, stack.host, stack.token, WARMUP_SECS), WARMUP_SECS)
            before = run.tree_cpu(child.pid)
            res = wrk(wrk_argv(port, stack.host, stack.token, secs), secs)
            after = run.tree_cpu(child.pid)
            cpu = run.cpu_delta_seconds(before, after)
            r = VerifyRun(rnd, name, res.rps, res.p50_ms, res.p99_ms, res.requests,
                          res.non2xx + res.socket_errors,
                          cpu * 1e6 / res.requests if res.requests else 0.0)  # fmt: skip
            out.append(r)
            run.progress(
                f"round {rnd} verify {name:<8} {r.rps:9,.0f} req/s  p50 {r.p50_ms:6.2f}  "
                f"p99 {r.p99_ms:6.2f} ms  {r.cpu_us_per_req:6.1f} µs/req  errors {r.errors}"
            )
    return out


# -------------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    info = run.machine_info()

    def package(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    info["redis"] = run.tool_version(["redis-server", "--version"]).split(" sha=")[0]
    info["cryptography"] = package("cryptography")
    info["pyjwt"] = package("PyJWT")
    info["uvloop"] = package("uvloop")
    return info


def _med(rs: Sequence[Any], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in rs)


def _ms(v: float) -> str:
    return f"{v:.2f}"


def render(
    tokens: list[TokenRun], verifies: list[VerifyRun], sign: SignCost | None, args: Any,
    command: str, info: dict[str, str], background: dict[str, float],
) -> str:  # fmt: skip
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION_START,
        "## OAuth server: tokens and `/verify` (`bench/oauth.py`)",
        "",
        f"- Date: {when}",
        f"- Machine: nproc={info['nproc']}, CPU: {info['cpu']}, Linux {info['kernel']}",
        f"- Software: {info['redis']}, {info['nginx']}, {info['haproxy']}, {info['wrk']}, "
        f"Python {info['python']}, PyJWT {info['pyjwt']}, cryptography {info['cryptography']}, "
        f"uvloop {info['uvloop']} (load driver), edge at git {info['git']}",
        f"- Command: `{command}`",
        f"- One edge worker (`EDGE_WORKERS=1`) pinned to CPU {run.PROXY_CPU}, serving the "
        f"authorization server on `{AUTH_HOST}` over plain HTTP (issuer "
        "`http://auth.localhost:PORT`), signing key RSA 2048 from `OAUTH_JWT_PRIVATE_KEY_B64`, "
        "access log on (stdout to a file), `LOG_LEVEL=WARNING`; a private Redis (no "
        f"persistence), wrk, the load driver and the harness on CPU {run.LOAD_CPU}. "
        f"{args.rounds} interleaved rounds of {args.duration} s after {WARMUP_SECS} s of "
        "warm-up each; medians over rounds.",
        f"- Load average (1/5/15 min) before: {info.get('loadavg_before', '?')}, "
        f"after: {info.get('loadavg_after', '?')}",
    ]
    if sign is not None:
        lines += [
            "",
            "### RS256 alone",
            "",
            "CPU time of one thread in the harness (the same CPU model as the worker): median of "
            f"{SIGN_BATCHES} batches of {SIGN_BATCH}, claims like the edge's access tokens "
            f"({sign.token_bytes}-byte token).",
            "",
            "| operation | µs |",
            "|---|---:|",
            f"| `jwt.encode(claims, key, 'RS256')` (PyJWT) | {sign.jwt_encode_us:,.0f} |",
            f"| RSA-2048 PKCS#1 v1.5 SHA-256 sign (cryptography) | {sign.rsa_sign_us:,.0f} |",
            "| `jwt.decode(...)` with signature, `iss`, `aud`, `exp` | "
            f"{sign.jwt_decode_us:,.0f} |",
            f"| RSA-2048 verify (cryptography) | {sign.rsa_verify_us:,.0f} |",
        ]
    if tokens:
        lines += _render_tokens(tokens, args, background)
    if verifies:
        lines += _render_verify(verifies, args)
    lines += ["", SECTION_END]
    return "\n".join(lines)


def _render_tokens(tokens: list[TokenRun], args: Any, background: dict[str, float]) -> list[str]:
    lines = [
        "",
        "### Access tokens issued per second",
        "",
        "Per token: `GET /authorize` (session cookie, client approved before: `302` with the "
        "code) then `POST /token` (`authorization_code`, PKCE S256 verifier, public client: "
        "`200` with the JWT and a refresh token). A load driver in the harness (asyncio on "
        "uvloop, raw sockets, one keep-alive connection per loop, a fresh PKCE pair per "
        "token); `authorize` rows send the first request only. CPU µs are per token (per "
        "authorization in `authorize` rows): the edge's process tree, Redis, and the driver "
        "(the harness process); `core` is CPU seconds per wall second, 1.00 = one core busy; "
        "`edge waited` is the seconds per wall second the edge's threads were ready to run "
        "but waited for a CPU (`schedstat`): what other work on the machine took from it.",
        "",
        "| run | connections | per s | range | edge CPU µs | edge core | edge waited "
        "| Redis CPU µs "
        "| driver CPU µs | driver core | p50 ms authorize / token | p99 ms authorize / token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r.mode, r.connections) for r in tokens},
                  key=lambda k: (k[0] != "token", k[1]))  # fmt: skip
    med: dict[tuple[str, int], dict[str, float]] = {}
    for key in keys:
        rs = [r for r in tokens if (r.mode, r.connections) == key]
        m = {a: _med(rs, a) for a in ("per_s", "edge_cpu_us", "edge_busy", "edge_wait",
                                       "redis_cpu_us", "driver_cpu_us", "driver_busy",
                                       "auth_p50_ms", "token_p50_ms", "auth_p99_ms",
                                       "token_p99_ms")}  # fmt: skip
        med[key] = m
        lo, hi = min(r.per_s for r in rs), max(r.per_s for r in rs)
        what = "tokens" if key[0] == "token" else "authorize only"
        tok50 = _ms(m["token_p50_ms"]) if key[0] == "token" else "-"
        tok99 = _ms(m["token_p99_ms"]) if key[0] == "token" else "-"
        lines.append(
            f"| {what} | {key[1]} | {m['per_s']:,.0f} | {lo:,.0f}-{hi:,.0f} | "
            f"{m['edge_cpu_us']:,.0f} | {m['edge_busy']:.2f} | {m['edge_wait']:.2f} | "
            f"{m['redis_cpu_us']:,.0f} | "
            f"{m['driver_cpu_us']:,.0f} | {m['driver_busy']:.2f} | "
            f"{_ms(m['auth_p50_ms'])} / {tok50} | {_ms(m['auth_p99_ms'])} / {tok99} |"
        )
    first = args.connections[0]
    whole, auth = med.get(("token", first)), med.get(("authorize", first))
    if whole and auth:
        token_us = whole["edge_cpu_us"] - auth["edge_cpu_us"]
        lines += [
            "",
            f"Split of the edge's CPU per token at {first} connections (medians): "
            f"`/authorize` {auth['edge_cpu_us']:,.0f} µs, `/token` {token_us:,.0f} µs "
            "(the difference), together "
            f"{whole['edge_cpu_us']:,.0f} µs.",
        ]
    # Redis commands per unit: medians over rounds per command, from INFO commandstats
    lines += [
        "",
        "Redis commands per token (per authorization in the `authorize` column), from `INFO "
        "commandstats` before and after each run, medians over rounds at "
        f"{first} connections:",
        "",
        "| command | per token | per authorize |",
        "|---|---:|---:|",
    ]
    names = sorted({n for r in tokens for n in r.commands})
    total_t = total_a = 0.0
    for name in names:
        vt = [
            r.commands.get(name, 0.0) for r in tokens if (r.mode, r.connections) == ("token", first)
        ]
        va = [r.commands.get(name, 0.0) for r in tokens if r.mode == "authorize"]
        mt = statistics.median(vt) if vt else 0.0
        ma = statistics.median(va) if va else 0.0
        total_t += mt
        total_a += ma
        if mt < 0.005 and ma < 0.005:
            continue  # the edge's own refreshes, or the login before the runs
        lines.append(f"| {name.upper()} | {mt:.2f} | {ma:.2f} |")
    lines.append(f"| all | {total_t:.2f} | {total_a:.2f} |")
    if background:
        per_s = sum(background.values())
        listed = ", ".join(f"{k.upper()} {v:.1f}" for k, v in sorted(background.items()))
        lines += [
            "",
            f"With no load the edge sends {per_s:.1f} commands/s of its own ({listed}; key "
            "and revocation refreshes); they are in the counts above, a few hundredths "
            "per token at these rates.",
        ]
    return lines


def _render_verify(verifies: list[VerifyRun], args: Any) -> list[str]:
    lines = [
        "",
        "### `/verify` answers per second",
        "",
        f"`wrk -t1 -c{WRK_CONNECTIONS} -d{args.duration}s --latency -H 'Authorization: Bearer "
        "<token>' -H 'Host: auth.localhost:PORT'` on `/verify` (the token: one issued above, "
        "RS256, about 0.9 KiB), each target one worker/thread on "
        f"CPU {run.PROXY_CPU}, access log on. The anchors: nginx `location = /verify "
        "{ return 200; }` (checks nothing: the floor of any ForwardAuth endpoint), and "
        "HAProxy's own JWT check (`jwt_verify(\"RS256\", <the signing key's public PEM>)`, "
        "`alg` = RS256, `iss` exact, `exp` against `date()`, `401` otherwise; `200` with the "
        "five `X-Auth-*` headers from the claims). The edge checks more per token: `typ`, "
        "`kid`, `nbf`/`iat`, every claim it issues present, and the `jti` against the "
        "revoked set mirrored in memory. Before the rounds, each answered `200` to the token "
        "and the edge and HAProxy `401` to the same claims signed by another key.",
        "",
        "| target | req/s | req/s range | p50 ms | p99 ms | CPU µs/req | req/s ÷ nginx "
        "| CPU/req ÷ nginx | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med: dict[str, dict[str, float]] = {}
    for name in VERIFY_TARGETS:
        rs = [r for r in verifies if r.target == name]
        if rs:
            med[name] = {a: _med(rs, a) for a in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
            med[name]["lo"] = min(r.rps for r in rs)
            med[name]["hi"] = max(r.rps for r in rs)
            med[name]["errors"] = sum(r.errors for r in rs)
    base = med.get("nginx")
    for name, m in med.items():
        rr = f"{m['rps'] / base['rps']:.2f}x" if base else ""
        cr = f"{m['cpu_us_per_req'] / base['cpu_us_per_req']:.2f}x" if base else ""
        lines.append(
            f"| {VERIFY_LABELS[name]} | {m['rps']:,.0f} | {m['lo']:,.0f}-{m['hi']:,.0f} | "
            f"{_ms(m['p50_ms'])} | {_ms(m['p99_ms'])} | {m['cpu_us_per_req']:.1f} | {rr} | "
            f"{cr} | {m['errors']:.0f} |"
        )
    if "edge" in med and "haproxy" in med:
        e, h = med["edge"], med["haproxy"]
        lines += [
            "",
            f"edge ÷ HAProxy `jwt_verify`: req/s {e['rps'] / h['rps']:.2f}x, CPU/req "
            f"{e['cpu_us_per_req'] / h['cpu_us_per_req']:.2f}x.",
        ]
    return lines


# -------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = run.side_bench_options(__doc__.split("\n")[0] if __doc__ else "")
    p.set_defaults(duration=5)
    p.add_argument(
        "--connections",
        default="8,32",
        help="load driver connections of the token runs, comma-separated (8,32); the first "
        "also runs authorize-only",
    )
    p.add_argument("--json", type=Path, help="write every measurement as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    phases = {s.strip() for s in (args.only or "tokens,verify").split(",") if s.strip()}
    if not phases <= {"tokens", "verify"}:
        p.error("--only takes tokens, verify or both")
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections takes numbers, comma-separated")
    if min(args.rounds, args.duration, *args.connections) < 1:
        p.error("--rounds, --duration and --connections must be positive")
    for extra in ("/usr/sbin", "/sbin"):  # nginx and haproxy live there on Debian
        if extra not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + extra
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print(f"error: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    command = shlex.join(["python", "bench/oauth.py", *(sys.argv[1:] if argv is None else argv)])
    info = versions()
    info["loadavg_before"] = run.loadavg()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)  # cleanup runs on them too
    os.sched_setaffinity(0, {int(run.LOAD_CPU)})  # the harness and the load driver
    tokens: list[TokenRun] = []
    verifies: list[VerifyRun] = []
    sign: SignCost | None = None
    background: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="oauth-bench-"))
    tmp.chmod(0o755)  # readable by nginx workers running as another user
    children = run.Children()
    try:
        redis_child, redis_port = run.start_redis(children, tmp)
        rdb = redis.Redis(host=run.LOOPBACK, port=redis_port)
        key, key_b64 = signing_key()
        with github_standin() as github:
            github.add_user(USER, 1000)
            stack = start_edge(children, tmp, redis_port, redis_child, github, key_b64)
            github.callback_url = f"{stack.issuer}/callback"
            login(stack)
        run.progress(f"edge on {stack.port}, signed in; token of {len(stack.token)} bytes")
        sign = signing_cost(key, stack.issuer)
        run.progress(
            f"RS256: jwt.encode {sign.jwt_encode_us:.0f} µs, sign {sign.rsa_sign_us:.0f} µs, "
            f"jwt.decode {sign.jwt_decode_us:.0f} µs, verify {sign.rsa_verify_us:.0f} µs"
        )
        idle0 = command_counts(rdb)
        time.sleep(3.0)
        idle1 = command_counts(rdb)
        background = {k: (v - idle0.get(k, 0)) / 3.0 for k, v in idle1.items()
                      if k != "info" and v != idle0.get(k, 0)}  # fmt: skip
        if "tokens" in phases:
            tokens = tokens_phase(stack, rdb, args.rounds, args.duration, args.connections)
        if "verify" in phases:
            anchors = start_anchors(children, tmp, key, stack.issuer)
            check_verifiers(stack, anchors)
            verifies = verify_phase(stack, anchors, args.rounds, args.duration)
        if stack.edge.proc.poll() is not None:
            raise run.BenchError(f"the edge exited:\n{stack.edge.stderr_tail()}")
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
    text = render(tokens, verifies, sign, args, command, info, background)
    if args.json:
        data = {
            "command": command,
            "machine": info,
            "tokens": [asdict(r) for r in tokens],
            "verify": [asdict(r) for r in verifies],
            "signing": asdict(sign) if sign else None,
            "redis_background": background,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    run.publish(text, args.write_results, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
