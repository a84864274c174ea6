"""Personal access tokens: authenticated requests per second, and the loop under a flood.

Run side by side in one invocation, interleaved rounds, medians:

* ``pat-cached``: ``GET /public-api/me`` with valid PATs (64 users, one PAT each, rotated by
  the wrk script), the verification cache on (``PAT_VERIFY_CACHE_TTL=30``): after the first
  request per token, no Argon2id; every request still reads the PAT records, membership,
  user and project from Redis (that is what makes revocation immediate).
* ``pat-uncached``: the same with ``PAT_VERIFY_CACHE_TTL=0``: one Argon2id verification
  (m=19456 KiB, t=2, p=1) per request, two at a time per worker.
* ``admin-token``: ``GET /api/v1/tokens/info`` with the admin token (one SHA-256 and a
  Redis lookup): the edge's cheapest authenticated API request, for scale.
* ``caddy-cached`` / ``caddy-uncached``: Caddy's ``http_basic`` authentication in front of a
  static response, the nearest job another server does out of the box: a password hash
  (bcrypt, cost ``--bcrypt-cost``, 10 by default) checked per request, with and without
  its ``hash_cache``.
* ``lag-idle`` / ``lag-flood``: a probe sends ``GET /health`` (answered inside the event
  loop's callback: its latency is the loop's lag plus a loopback round trip) one at a time,
  and a second probe ``GET /public-api/me`` with a valid (cached) PAT, first on an idle
  edge, then while wrk sends wrong PATs (well-formed, right checksum, an existing prefix,
  each one different: every one costs a full Argon2id verification) on 50 connections.

The server under test runs pinned to CPU 1 with one worker (its Argon2 threads share that
core); wrk, Redis and the probes run on CPU 0.

    python bench/pats.py [--rounds 3] [--duration 8] [--write-results]

Only loopback addresses are used. Needs redis-server, wrk and caddy.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run

from edge.auth.secrets import new_admin_token
from tests.api_client import forge_pat as forge

SECTION_START = "<!-- bench/pats.py:start -->"
SECTION_END = "<!-- bench/pats.py:end -->"
ME = "/public-api/me"
USERS = 64  # more distinct tokens than connections: no two requests share a verification
FORGED = 2000
PROBE_PAUSE = 0.005  # seconds between probe requests


@dataclass(frozen=True)
class Case:
    scenario: str
    target: str  # "edge" | "caddy"
    cache_ttl: str = "30"


CASES = [
    Case("pat-cached", "edge"),
    Case("pat-uncached", "edge", "0"),
    Case("admin-token", "edge"),
    Case("caddy-cached", "caddy"),
    Case("caddy-uncached", "caddy"),
    Case("lag-idle", "edge"),
    Case("lag-flood", "edge"),
]


@dataclass
class Result:
    case: Case
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    probes: dict[str, list[float]] = field(default_factory=dict)  # name -> latencies (ms)


# -------------------------------------------------------------------------------- helpers


def api(port: int, method: str, path: str, auth: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(run.LOOPBACK, port, timeout=10)
    try:
        headers = {"Authorization": auth}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        is_json = resp.getheader("content-type") == "application/json"
        return resp.status, json.loads(raw) if is_json else raw
    finally:
        conn.close()


def seed_people(api_port: int, admin: str) -> list[str]:
    """One project, ``USERS`` accepted members, one PAT each: the PATs."""
    bearer = f"Bearer {admin}"
    status, project = api(api_port, "POST", "/api/v1/projects/", bearer, {"name": "bench"})
    if status != 201:
        raise run.BenchError(f"project: {status} {project}")
    pid = project["id"]
    tokens = []
    for i in range(USERS):
        status, user = api(api_port, "POST", "/api/v1/users/", bearer,
                           {"name": f"user {i}", "email": f"u{i}@bench.local"})  # fmt: skip
        if status != 201:
            raise run.BenchError(f"user: {status} {user}")
        uid = user["id"]
        api(api_port, "PUT", f"/api/v1/projects/{pid}/members/{uid}", bearer,
            {"role": "owner", "accepted": True})  # fmt: skip
        status, doc = api(api_port, "POST", f"/api/v1/projects/{pid}/tokens", bearer,
                          {"user_id": uid, "name": "bench"})  # fmt: skip
        if status != 201:
            raise run.BenchError(f"pat: {status} {doc}")
        tokens.append(doc["data"]["token"])
    return tokens


def wrk_script(d: Path, path: str, authorizations: list[str]) -> Path:
    """A wrk script sending ``path`` with the ``Authorization`` values in turn."""
    values = ",\n".join(json.dumps(a) for a in authorizations)
    script = d / "auth.lua"
    script.write_text(
        f"local auths = {{\n{values}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        f'  return wrk.format("GET", "{path}", '
        '{["Authorization"] = auths[(i % #auths) + 1]})\n'
        "end\n"
        "local threads = {}\n"
        "setup = function(thread) table.insert(threads, thread) end\n"
        "response = function(status, headers, body)\n"
        '  local k = "s" .. status\n'
        "  _G[k] = (_G[k] or 0) + 1\n"
        "end\n"
        "done = function(summary, latency, requests)\n"
        "  for _, code in ipairs({200, 401, 403, 404, 429, 500, 502, 503}) do\n"
        "    local n = 0\n"
        '    for _, t in ipairs(threads) do n = n + (t:get("s" .. code) or 0) end\n'
        "    if n > 0 then io.write(string.format('status %d %d\\n', code, n)) end\n"
        "  end\n"
        "end\n"
    )
    return script


def wrk(
    port: int, script: Path, secs: int, connections: int
) -> tuple[run.WrkResult, dict[str, int]]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "20s", "--latency",
            "-s", str(script), f"http://{run.LOOPBACK}:{port}/"]  # fmt: skip
    done = subprocess.run(run.pin(argv, run.LOAD_CPU), capture_output=True, text=True,
                          timeout=secs + 60)  # fmt: skip
    if done.returncode != 0:
        raise run.BenchError(f"wrk failed: {done.stderr or done.stdout}")
    statuses = {}
    for line in done.stdout.splitlines():
        if line.startswith("status "):
            _, code, count = line.split()
            statuses[code] = int(count)
    return run.parse_wrk(done.stdout), statuses


def probe(port: int, path: str, auth: str | None, stop: threading.Event, out: list[float]) -> None:
    """One request at a time on a keep-alive connection until ``stop``: latencies in ms."""
    os.sched_setaffinity(0, {int(run.LOAD_CPU)})
    conn = http.client.HTTPConnection(run.LOOPBACK, port, timeout=30)
    headers = {"Authorization": auth} if auth else {}
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise run.BenchError(f"probe {path}: {resp.status}")
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(PROBE_PAUSE)
    conn.close()


def caddy_config(port: int, hashed: str, cached: bool) -> dict[str, Any]:
    basic: dict[str, Any] = {
        "accounts": [{"username": "bench", "password": base64.b64encode(hashed.encode()).decode()}],
        "hash": {"algorithm": "bcrypt"},
    }
    if cached:
        basic["hash_cache"] = {}
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {"http": {"servers": {"bench": {
            "listen": [f"{run.LOOPBACK}:{port}"],
            "automatic_https": {"disable": True},
            "routes": [{"handle": [
                {"handler": "authentication", "providers": {"http_basic": basic}},
                {"handler": "static_response", "status_code": 200, "body": "ok\n"},
            ]}],
        }}}},
    }  # fmt: skip


# -------------------------------------------------------------------------------- measuring


def hash_costs(bcrypt_cost: int) -> tuple[str, dict[str, float]]:
    """A bcrypt hash of "secret" for Caddy, and one verification's time of each hash on CPU 1."""
    import warnings

    from edge.auth.pat import DEFAULT_HASHER

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libxcrypt's bcrypt; the module is gone in Python 3.13

    hashed = crypt.crypt("secret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**bcrypt_cost))
    phc = DEFAULT_HASHER.hash("x" * 40)
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(run.PROXY_CPU)})
    try:
        timings = {}
        for name, check in (
            ("argon2_ms", lambda: DEFAULT_HASHER.verify(phc, "x" * 40)),
            ("bcrypt_ms", lambda: crypt.crypt("secret", hashed)),
        ):
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                check()
                samples.append((time.perf_counter() - started) * 1000)
            timings[name] = statistics.median(samples)
    finally:
        os.sched_setaffinity(0, mask)
    return hashed, {**timings, "bcrypt_cost": float(bcrypt_cost)}


@dataclass
class World:
    children: run.Children
    tmp: Path
    redis_port: int
    admin: str
    hashed: str  # caddy's bcrypt hash of "secret"
    tokens: list[str] = field(default_factory=list)


def start_edge(w: World, d: Path, cache_ttl: str) -> tuple[run.Child, int]:
    api_port = run.free_port()
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{run.REPO_ROOT}{os.pathsep}{path}" if path else str(run.REPO_ROOT),
        REDIS_URL=f"redis://{run.LOOPBACK}:{w.redis_port}/0",
        SERVER_HOST=run.LOOPBACK,
        HTTP_PORT=str(run.free_port()),
        HTTPS_PORT="0",
        PROXY_PROTOCOL_PORT="0",
        PROXY_PROTOCOL_TLS_PORT="0",
        API_HOST=run.LOOPBACK,
        API_PORT=str(api_port),
        EDGE_WORKERS="1",
        LOG_LEVEL="WARNING",
        EDGE_STATE_DIR=str(d / "state"),
        ADMIN_TOKEN=w.admin,
        PAT_VERIFY_CACHE_TTL=cache_ttl,
    )
    argv = run.pin([sys.executable, "-m", "edge", "serve"], run.PROXY_CPU)
    child = w.children.spawn("edge", argv, env=env, cwd=d, stdout=d / "access.log",
                             stderr=d / "stderr.log")  # fmt: skip
    run.wait_port(api_port)
    return child, api_port


def measure(w: World, case: Case, secs: int, rnd: int) -> Result:
    d = w.tmp / f"r{rnd}-{case.scenario}"
    d.mkdir()
    result = Result(case)
    child: run.Child | None = None
    try:
        if case.target == "caddy":
            port = run.free_port()
            conf = d / "caddy.json"
            conf.write_text(
                json.dumps(caddy_config(port, w.hashed, case.scenario == "caddy-cached"))
            )
            env = dict(os.environ, HOME=str(d), XDG_DATA_HOME=str(d / "data"),
                       XDG_CONFIG_HOME=str(d / "config"), GOMAXPROCS="1")  # fmt: skip
            argv = run.pin(["caddy", "run", "--config", str(conf)], run.PROXY_CPU)
            child = w.children.spawn("caddy", argv, env=env, cwd=d, stderr=d / "stderr.log")
            run.wait_port(port)
            basic = "Basic " + base64.b64encode(b"bench:secret").decode()
            script = wrk_script(d, "/", [basic])
            if case.scenario == "caddy-cached":  # one verification fills the cache
                api(port, "GET", "/", basic)
        else:
            child, port = start_edge(w, d, case.cache_ttl)
            if not w.tokens:
                w.tokens = seed_people(port, w.admin)
            if case.scenario == "admin-token":
                script = wrk_script(d, "/api/v1/tokens/info", [f"Bearer {w.admin}"])
            elif case.scenario.startswith("lag"):
                prefix = w.tokens[0].split("_")[1]
                script = wrk_script(d, ME, [forge(prefix) for _ in range(FORGED)])
            else:
                script = wrk_script(d, ME, w.tokens)
        if case.scenario.startswith("lag"):
            return lag(w, case, port, script, secs, child, result)
        connections = run.WRK_CONNECTIONS
        wrk(port, script, run.WARMUP_SECS, connections)
        before = run.tree_cpu(child.pid)
        res, result.statuses = wrk(port, script, secs, connections)
        after = run.tree_cpu(child.pid)
        if child.proc.poll() is not None:
            raise run.BenchError(f"{case.target} exited:\n{child.stderr_tail()}")
        result.rps, result.p50_ms, result.p99_ms = res.rps, res.p50_ms, res.p99_ms
        cpu = run.cpu_delta_seconds(before, after)
        result.cpu_us = cpu * 1e6 / res.requests if res.requests else 0.0
        return result
    finally:
        if child is not None:
            w.children.stop(child)
        shutil.rmtree(d, ignore_errors=True)


def lag(w: World, case: Case, port: int, script: Path, secs: int, child: run.Child,
        result: Result) -> Result:  # fmt: skip
    # warm the cache of the probe's PAT first, so its requests skip Argon2
    api(port, "GET", ME, w.tokens[1])
    stop = threading.Event()
    probes = {"health": [], "me": []}  # type: dict[str, list[float]]
    threads = [
        threading.Thread(target=probe, args=(port, "/health", None, stop, probes["health"])),
        threading.Thread(target=probe, args=(port, ME, w.tokens[1], stop, probes["me"])),
    ]
    for t in threads:
        t.start()
    try:
        if case.scenario == "lag-flood":
            before = run.tree_cpu(child.pid)
            res, result.statuses = wrk(port, script, secs, run.WRK_CONNECTIONS)
            after = run.tree_cpu(child.pid)
            result.rps, result.p50_ms, result.p99_ms = res.rps, res.p50_ms, res.p99_ms
            cpu = run.cpu_delta_seconds(before, after)
            result.cpu_us = cpu * 1e6 / res.requests if res.requests else 0.0
        else:
            time.sleep(secs)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=40)
    result.probes = probes
    return result


# -------------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(
    results: list[Result], rounds: int, secs: int, command: str, costs: dict[str, float]
) -> str:
    lines = [
        SECTION_START,
        "## Personal access tokens",
        "",
        "`bench/pats.py`. One edge worker (and its two Argon2id threads) on CPU 1; wrk, Redis",
        "and the probes on CPU 0. `pat-*` send `GET /public-api/me` with 64 valid PATs in",
        "turn (every request reads the PAT, membership, user and project from Redis);",
        "`pat-uncached` runs with `PAT_VERIFY_CACHE_TTL=0`, so every request is one Argon2id",
        "verification. `caddy-*` are Caddy's `http_basic` before a static response (no Redis,",
        "no upstream), with and without its `hash_cache`; its bcrypt hash has cost "
        f"{costs['bcrypt_cost']:.0f}",
        "(Go's default; `caddy hash-password` uses 14). One verification on CPU 1, measured "
        f"in-process: Argon2id {costs['argon2_ms']:.1f} ms, bcrypt {costs['bcrypt_ms']:.1f} ms: "
        "compare the uncached rows with that in mind.",
        "",
        f"Command: `{command}` ({rounds} interleaved rounds of {secs} s, medians, "
        f"{run.WRK_CONNECTIONS} connections).",
        "",
        "| scenario | req/s | p50 ms | p99 ms | CPU µs/req | answers |",
        "|---|---:|---:|---:|---:|---|",
    ]
    med: dict[str, float] = {}
    for case in CASES:
        rs = [r for r in results if r.case == case and not case.scenario.startswith("lag")]
        if not rs:
            continue
        med[case.scenario] = statistics.median(r.rps for r in rs)
        statuses: dict[str, int] = {}
        for r in rs:
            for k, v in r.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        answers = ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items()))
        lines.append(
            f"| {case.scenario} | {med[case.scenario]:,.0f} | "
            f"{statistics.median(r.p50_ms for r in rs):.2f} | "
            f"{statistics.median(r.p99_ms for r in rs):.2f} | "
            f"{statistics.median(r.cpu_us for r in rs):,.0f} | {answers} |"
        )
    pairs = [("pat-cached", "caddy-cached"), ("pat-uncached", "caddy-uncached"),
             ("pat-cached", "admin-token"), ("pat-uncached", "pat-cached")]  # fmt: skip
    lines += ["", "| compared | req/s ratio |", "|---|---:|"]
    for a, b in pairs:
        if a in med and b in med and med[b]:
            lines.append(f"| {a} ÷ {b} | {med[a] / med[b]:.2f}x |")
    lines += [
        "",
        "Event-loop lag: the probes' latency (one request at a time, 5 ms apart) on an idle",
        "edge and while wrk sends wrong PATs (each a full Argon2id verification) on",
        f"{run.WRK_CONNECTIONS} connections. `/health` is answered inside the loop's callback;",
        "`/public-api/me` uses a valid, cached PAT and reads Redis.",
        "",
        "| state | probe | requests | p50 ms | p99 ms | max ms | flood answers |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for scenario in ("lag-idle", "lag-flood"):
        rs = [r for r in results if r.case.scenario == scenario]
        if not rs:
            continue
        statuses = {}
        for r in rs:
            for k, v in r.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        flood = ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items())) or "none"
        for name in ("health", "me"):
            per_round = [r.probes.get(name, []) for r in rs]
            everything = [v for p in per_round for v in p]
            lines.append(
                f"| {scenario.removeprefix('lag-')} | {ME if name == 'me' else '/health'} | "
                f"{len(everything):,} | {statistics.median(pct(p, 0.5) for p in per_round):.2f} | "
                f"{statistics.median(pct(p, 0.99) for p in per_round):.2f} | "
                f"{max(everything):.1f} | {flood} |"
            )
    lines += ["", SECTION_END]
    return "\n".join(lines)


def main() -> int:
    p = run.side_bench_options(__doc__.split("\n")[0])
    p.add_argument("--bcrypt-cost", type=int, default=10, help="Caddy's bcrypt cost (Go default)")
    args = p.parse_args()
    command = shlex.join(["python", "bench/pats.py", *sys.argv[1:]])
    cases = [c for c in CASES if not args.only or c.scenario in args.only.split(",")]
    results: list[Result] = []
    with run.side_bench_run("pat-bench-") as (children, tmp):
        try:
            _redis, redis_port = run.start_redis(children, tmp)
            hashed, costs = hash_costs(args.bcrypt_cost)
            w = World(children, tmp, redis_port, new_admin_token(), hashed)
            for rnd in range(1, args.rounds + 1):
                for case in cases:
                    r = measure(w, case, args.duration, rnd)
                    results.append(r)
                    extra = " ".join(f"{k}:p50={pct(v, 0.5):.2f}ms,p99={pct(v, 0.99):.2f}ms"
                                     for k, v in r.probes.items())  # fmt: skip
                    run.progress(f"round {rnd} {case.scenario:<15} {r.rps:>9,.0f} req/s "
                                 f"{r.cpu_us:8.0f} µs CPU/req {r.statuses} {extra}")  # fmt: skip
        except run.BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    text = report(results, args.rounds, args.duration, command, costs)
    run.publish(text, args.write_results, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
