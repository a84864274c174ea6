"""ACME issuance: time to an active certificate, and what orders do to unrelated traffic.

Everything runs on loopback against a private Pebble (with pebble-challtestsrv as its DNS,
which resolves every name to 127.0.0.1), so Pebble validates HTTP-01 against the edge's
own HTTP listener:

* ``issue``: ``POST /api/v1/certificates/`` (admin token), then ``GET
  /api/v1/certificates/{name}/status`` every 50 ms until ``active``; ``--sequential``
  certificates of each key type one after another (the types alternate), after one
  unmeasured first order that also registers the ACME account.
* ``traffic``: ``wrk -t1 -c20 --latency`` on a keep-alive proxy route of the edge's HTTP
  port (upstream: a private nginx), interleaved rounds of ``baseline`` (nothing else) and
  ``loaded`` (``--concurrent`` orders POSTed at once as wrk starts, then left to finish;
  their status documents are read from Redis every 50 ms, not through the edge).

One edge worker on CPU 1; wrk, the upstream, Redis, Pebble and this script on CPU 0.

    python bench/acme.py [--rounds 3] [--duration 10] [--write-results]
    python bench/acme.py --only traffic --loaded-key-type rsa    # loaded rounds: rsa only
    python bench/acme.py --only traffic --edge-ref REV           # the edge at another revision

Needs pebble, pebble-challtestsrv, redis-server, nginx, wrk and taskset.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import run

from edge.auth.secrets import new_admin_token
from tests.pebble import Pebble

SECTION_START = "<!-- bench/acme.py:start -->"
SECTION_END = "<!-- bench/acme.py:end -->"
CERTS = "/api/v1/certificates"
DOMAIN = "example.test"
KEY_TYPES = ("rsa", "ecdsa")
POLL = 0.05  # seconds between looks at a certificate's status
ISSUE_TIMEOUT = 120.0  # seconds for one certificate (or one batch) to become active
WRK_CONNECTIONS = 20
TOOLS = ("pebble", "pebble-challtestsrv", "redis-server", "nginx", "wrk", "taskset")
STATES = ("baseline", "loaded")
LOADED_KINDS = {"mixed": "half rsa, half ecdsa", "rsa": "all rsa", "ecdsa": "all ecdsa"}


# -------------------------------------------------------------------------------- the edge


@dataclass
class Edge:
    child: run.Child
    http_port: int
    https_port: int
    api_port: int
    admin: str
    dir: Path

    def worker_pid(self) -> int:
        """The worker process under the supervisor (``edge worker``)."""
        tree = run.process_tree(self.child.pid)
        named = [p for p in tree if p != self.child.pid and "edge worker" in run.cmdline(p)]
        if len(named) != 1:
            raise run.BenchError(f"expected one edge worker under {self.child.pid}, found {named}")
        return named[0]


def start_edge(
    children: run.Children,
    tmp: Path,
    redis_port: int,
    pebble: Pebble,
    admin: str,
    source: Path = run.REPO_ROOT,
) -> Edge:
    """The edge of ``source`` (this checkout, or a worktree of ``--edge-ref``)."""
    d = tmp / "edge"
    d.mkdir()
    https_port, api_port = run.free_port(), run.free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=run.edge_pythonpath(source, env),
        REDIS_URL=f"redis://{run.LOOPBACK}:{redis_port}/0",
        SERVER_HOST=run.LOOPBACK,
        HTTP_PORT=str(pebble.http_port),  # where Pebble validates HTTP-01
        HTTPS_PORT=str(https_port),
        PROXY_PROTOCOL_PORT="0",
        PROXY_PROTOCOL_TLS_PORT="0",
        API_HOST=run.LOOPBACK,
        API_PORT=str(api_port),
        EDGE_WORKERS="1",
        LOG_LEVEL="WARNING",
        EDGE_STATE_DIR=str(d / "state"),
        ADMIN_TOKEN=admin,
        AUTO_HTTPS="false",
        ACME_DIRECTORY_URL=pebble.directory_url,
        ACME_STAGING_URL=pebble.directory_url,
        ACME_CA_BUNDLE=str(pebble.ca_bundle_path),
        ACME_POLL_INITIAL_WAIT="0.2",
        ACME_POLL_INTERVAL_SECONDS="0.3",
        ACME_RETRY_INITIAL_SECONDS="1",
        ADMIN_EMAIL="ops@example.test",
    )
    argv = run.pin([sys.executable, "-m", "edge", "serve"], run.PROXY_CPU)
    child = children.spawn("edge", argv, env=env, cwd=d, stdout=d / "access.log",
                           stderr=d / "stderr.log")  # fmt: skip
    # through the proxy route: the listener, Redis and the upstream all answer
    run.wait_ready(child, pebble.http_port, "/small", len(run.SMALL_BODY))
    run.wait_port(api_port)
    return Edge(child, pebble.http_port, https_port, api_port, admin, d)


def api(edge: Edge, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(run.LOOPBACK, edge.api_port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {edge.admin}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            return resp.status, raw
        if isinstance(doc, dict) and set(doc) == {"data", "errors"}:
            doc = doc["data"]
        return resp.status, doc
    finally:
        conn.close()


def order(edge: Edge, name: str, key_type: str) -> None:
    body = {"cert_name": name, "domain": f"{name}.{DOMAIN}", "key_type": key_type}
    status, doc = api(edge, "POST", f"{CERTS}/", body)
    if status != 202:
        raise run.BenchError(f"POST {CERTS}/ for {name}: {status} {doc}")


def forget_budgets(rdb: redis.Redis) -> None:
    """Every name here is under ``example.test``, and the edge mirrors Let's Encrypt's 50
    certificates per registered domain and week, which Pebble does not have: clear the
    counters before each batch, so that no order of the benchmark is deferred by them."""
    for key in rdb.scan_iter(match="edge:acme:budget:*", count=1000):
        rdb.delete(key)


# -------------------------------------------------------------------------------- issue


@dataclass
class Issued:
    name: str
    key_type: str
    seconds: float
    failed_seen: int  # polls that saw "failed" (a retry followed)
    states: list[str] = field(default_factory=list)  # the states seen, in order


def issue_one(edge: Edge, name: str, key_type: str) -> Issued:
    started = time.perf_counter()
    order(edge, name, key_type)
    deadline = started + ISSUE_TIMEOUT
    states: list[str] = []
    failed = 0
    while time.perf_counter() < deadline:
        status, doc = api(edge, "GET", f"{CERTS}/{name}/status")
        state = doc.get("status") if status == 200 and isinstance(doc, dict) else f"http {status}"
        if not states or states[-1] != state:
            states.append(str(state))
        if state == "active":
            return Issued(name, key_type, time.perf_counter() - started, failed, states)
        if state == "failed":
            failed += 1
        time.sleep(POLL)
    raise run.BenchError(f"{name} not active after {ISSUE_TIMEOUT:.0f} s: states {states}")


def issue_phase(edge: Edge, rdb: redis.Redis, n: int, key_types: Sequence[str]) -> list[Issued]:
    forget_budgets(rdb)
    first = issue_one(edge, "first", "ecdsa")
    first.key_type = "first"
    run.progress(f"first order (registers the account): {first.seconds:.2f} s {first.states}")
    out = [first]
    for i in range(1, n + 1):
        for kt in key_types:
            got = issue_one(edge, f"seq-{kt}-{i}", kt)
            run.progress(f"{got.name:<12} {got.seconds:6.2f} s  {' > '.join(got.states)}")
            out.append(got)
    return out


# -------------------------------------------------------------------------------- traffic


@dataclass
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int


def parse_wrk(text: str) -> Wrk:
    base = run.parse_wrk(text)
    m = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)\s", text, re.M)
    if not m:
        raise run.BenchError(f"no max latency in wrk output:\n{text}")
    max_ms = float(m.group(1)) * run._UNIT_MS[m.group(2)]
    return Wrk(base.rps, base.p50_ms, base.p99_ms, max_ms, base.requests,
               base.non2xx + base.socket_errors)  # fmt: skip


def wrk_argv(port: int, secs: int) -> list[str]:
    return run.pin(
        ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{secs}s", "--latency",
         "-H", f"Host: {run.HOST}", f"http://{run.LOOPBACK}:{port}/small"],
        run.LOAD_CPU,
    )  # fmt: skip


def thread_cpu(pid: int) -> dict[tuple[int, int], int]:
    """CPU ticks of each thread of ``pid``, keyed by (tid, starttime)."""
    out: dict[tuple[int, int], int] = {}
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rfind(")") + 2 :].split()
        out[(tid, int(f[19]))] = int(f[11]) + int(f[12])
    return out


@dataclass
class CpuMarks:
    edge: dict[tuple[int, int], int]
    threads: dict[tuple[int, int], int]
    pebble: dict[tuple[int, int], int]

    @classmethod
    def take(cls, edge: Edge, worker: int, pebble: Pebble) -> CpuMarks:
        peb: dict[tuple[int, int], int] = {}
        for proc in (pebble.proc, pebble.dns_proc):
            if proc is not None:
                peb.update(run.tree_cpu(proc.pid))
        return cls(run.tree_cpu(edge.child.pid), thread_cpu(worker), peb)


@dataclass
class TrafficRun:
    round: int
    state: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    edge_cpu_us_per_req: float = 0.0
    loop_cpu_s: float = 0.0  # the worker's main thread: the event loop
    other_threads_cpu_s: float = 0.0  # the worker's other threads (ACME orders...)
    pebble_cpu_s: float = 0.0
    orders_all_active_s: float | None = None  # loaded: from the POSTs to the last active
    orders_active_s: list[float] = field(default_factory=list)
    failed_seen: int = 0


def fire_orders(edge: Edge, names: list[str], key_types: Sequence[str] = KEY_TYPES) -> float:
    """POST every order at once (one thread each, key types in turn); the moment they
    were released."""
    barrier = threading.Barrier(len(names) + 1)
    errors: list[str] = []

    def post(name: str, kt: str) -> None:
        barrier.wait()
        try:
            order(edge, name, kt)
        except (run.BenchError, OSError) as exc:
            errors.append(str(exc))

    threads = [
        threading.Thread(target=post, args=(name, key_types[i % len(key_types)]))
        for i, name in enumerate(names)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    released = time.perf_counter()
    for t in threads:
        t.join(30)
    if errors:
        raise run.BenchError("; ".join(errors))
    return released


def wait_all_active(
    rdb: redis.Redis, names: list[str], released: float
) -> tuple[dict[str, float], int]:
    """Seconds from ``released`` to each certificate's ``active`` (its status document
    read from Redis every 50 ms), and how many looks saw one ``failed``."""
    done: dict[str, float] = {}
    failed = 0
    keys = [f"cert:status:{n}" for n in names]
    while len(done) < len(names):
        if time.perf_counter() - released > ISSUE_TIMEOUT:
            raise run.BenchError(f"orders not active after {ISSUE_TIMEOUT:.0f} s: {names}")
        now = time.perf_counter()
        for name, raw in zip(names, rdb.mget(keys), strict=True):
            if name in done or raw is None:
                continue
            state = json.loads(raw).get("status")
            if state == "active":
                done[name] = now - released
            elif state == "failed":
                failed += 1
        time.sleep(POLL)
    return done, failed


def traffic_run(
    edge: Edge, worker: int, pebble: Pebble, rdb: redis.Redis, rnd: int, state: str,
    secs: int, concurrent: int, key_types: Sequence[str],
) -> TrafficRun:  # fmt: skip
    result = TrafficRun(rnd, state)
    forget_budgets(rdb)
    before = CpuMarks.take(edge, worker, pebble)
    wrk = subprocess.Popen(wrk_argv(edge.http_port, secs), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        if state == "loaded":
            time.sleep(0.1)  # wrk's connections are open
            names = [f"load-r{rnd}-{i}" for i in range(1, concurrent + 1)]
            released = fire_orders(edge, names, key_types)
            times, result.failed_seen = wait_all_active(rdb, names, released)
            result.orders_active_s = sorted(times.values())
            result.orders_all_active_s = max(times.values())
        out, err = wrk.communicate(timeout=secs + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    after = CpuMarks.take(edge, worker, pebble)
    if wrk.returncode != 0:
        raise run.BenchError(f"wrk failed ({wrk.returncode}): {err or out}")
    res = parse_wrk(out)
    result.rps, result.p50_ms, result.p99_ms = res.rps, res.p50_ms, res.p99_ms
    result.max_ms, result.requests, result.errors = res.max_ms, res.requests, res.errors
    cpu = run.cpu_delta_seconds(before.edge, after.edge)
    result.edge_cpu_us_per_req = cpu * 1e6 / res.requests if res.requests else 0.0
    main = [k for k in after.threads if k[0] == worker]
    result.loop_cpu_s = sum(after.threads[k] - before.threads.get(k, 0) for k in main) / run.CLK_TCK
    others = run.cpu_delta_seconds(before.threads, after.threads) - result.loop_cpu_s
    result.other_threads_cpu_s = others
    result.pebble_cpu_s = run.cpu_delta_seconds(before.pebble, after.pebble)
    return result


def traffic_phase(
    edge: Edge, pebble: Pebble, rdb: redis.Redis, rounds: int, secs: int, concurrent: int,
    key_types: Sequence[str],
) -> list[TrafficRun]:  # fmt: skip
    worker = edge.worker_pid()
    subprocess.run(wrk_argv(edge.http_port, run.WARMUP_SECS), capture_output=True, check=True)
    out: list[TrafficRun] = []
    for rnd in range(1, rounds + 1):
        for state in STATES:
            r = traffic_run(edge, worker, pebble, rdb, rnd, state, secs, concurrent, key_types)
            out.append(r)
            extra = (
                f"  orders all active after {r.orders_all_active_s:.2f} s"
                if r.orders_all_active_s is not None
                else ""
            )
            run.progress(
                f"round {rnd} {state:<8} {r.rps:>7,.0f} req/s  p50 {r.p50_ms:6.2f}  "
                f"p99 {r.p99_ms:7.2f}  max {r.max_ms:7.1f} ms  {r.edge_cpu_us_per_req:6.1f} µs/req"
                f"  loop {r.loop_cpu_s:.2f} s, other threads {r.other_threads_cpu_s:.2f} s"
                f"{extra}"
            )
            time.sleep(1.0)  # let the last order's writes and the lease release settle
    return out


# -------------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    info = run.machine_info()

    def package(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    pebble = "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "pebble"],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        pebble = done.stdout.strip() or "?"
    info["pebble"] = pebble
    info["redis"] = run.tool_version(["redis-server", "--version"]).split(" sha=")[0]
    info["acme"] = package("acme")
    info["cryptography"] = package("cryptography")
    return info


def _s(v: float) -> str:
    return f"{v:.2f}"


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def render(
    issued: list[Issued],
    runs: list[TrafficRun],
    args: Any,
    command: str,
    info: dict[str, str],
    rsa_bits: int,
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION_START,
        "## ACME issuance (`bench/acme.py`)",
        "",
        f"- Date: {when}",
        f"- Machine: nproc={info['nproc']}, CPU: {info['cpu']}, Linux {info['kernel']}",
        f"- Software: Pebble {info['pebble']} (`PEBBLE_VA_NOSLEEP=1`, 5% of nonces refused as "
        f"badNonce), {info['redis']}, {info['nginx']}, {info['wrk']}, Python {info['python']}, "
        f"acme {info['acme']}, cryptography {info['cryptography']}, edge at git {info['git']}",
        f"- Command: `{command}`",
        "- One edge worker (`EDGE_WORKERS=1`, `CERT_GEN_MAX_WORKERS` default 4 order threads) "
        f"pinned to CPU {run.PROXY_CPU}; wrk, the upstream nginx, Redis, Pebble, "
        f"pebble-challtestsrv and the harness on CPU {run.LOAD_CPU}. "
        "`ACME_POLL_INITIAL_WAIT=0.2`, `ACME_POLL_INTERVAL_SECONDS=0.3`, "
        f"RSA keys of {rsa_bits} bits, ECDSA P-256.",
        f"- Load average (1/5/15 min) before: {info.get('loadavg_before', '?')}, "
        f"after: {info.get('loadavg_after', '?')}",
    ]
    if issued:
        first = [i for i in issued if i.key_type == "first"]
        lines += [
            "",
            "### Time from request to an active certificate",
            "",
            "`POST /api/v1/certificates/`, then `GET .../{name}/status` every "
            f"{POLL * 1000:.0f} ms until `active` (so figures are up to {POLL * 1000:.0f} ms "
            "late); one order at a time, key types alternating, no other load.",
            "",
            "| key type | certificates | median s | min s | max s | failed tries |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kt in KEY_TYPES:
            got = [i.seconds for i in issued if i.key_type == kt]
            if got:
                fails = sum(i.failed_seen > 0 for i in issued if i.key_type == kt)
                lines.append(
                    f"| {kt} | {len(got)} | {_s(statistics.median(got))} | {_s(min(got))} | "
                    f"{_s(max(got))} | {fails} |"
                )
        if first:
            lines += [
                "",
                f"The first order (ecdsa, which also registers the ACME account) took "
                f"{_s(first[0].seconds)} s and is not in the table.",
            ]
    if runs:
        rounds = max(r.round for r in runs)
        med: dict[str, dict[str, float]] = {}
        for state in STATES:
            rs = [r for r in runs if r.state == state]
            if not rs:
                continue
            med[state] = {
                k: statistics.median(float(getattr(r, k)) for r in rs)
                for k in ("rps", "p50_ms", "p99_ms", "max_ms", "edge_cpu_us_per_req",
                          "loop_cpu_s", "other_threads_cpu_s", "pebble_cpu_s")
            }  # fmt: skip
            med[state]["errors"] = sum(r.errors for r in rs)
        lines += [
            "",
            f"### Keep-alive traffic with and without {args.concurrent} concurrent orders",
            "",
            f"`wrk -t1 -c{WRK_CONNECTIONS} -d{args.duration}s --latency` on a proxy route of "
            "the edge's HTTP port (`GET /small`, 13 bytes from nginx over a kept-alive "
            f"connection). {rounds} interleaved rounds of `baseline` (nothing else) and "
            f"`loaded` ({args.concurrent} orders POSTed at once 0.1 s after wrk started, "
            f"{LOADED_KINDS[args.loaded_key_type]}, then left to finish); medians over rounds. "
            "CPU: the edge's processes per request, and the worker's main thread (the event "
            "loop) and other threads (the order threads, the TLS store's rebuild) in seconds "
            "over the run.",
            "",
            "| state | req/s | p50 ms | p99 ms | max ms | CPU µs/req | loop CPU s "
            "| other threads CPU s | Pebble CPU s | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for state, m in med.items():
            lines.append(
                f"| {state} | {m['rps']:,.0f} | {_ms(m['p50_ms'])} | {_ms(m['p99_ms'])} | "
                f"{_ms(m['max_ms'])} | {m['edge_cpu_us_per_req']:.1f} | {m['loop_cpu_s']:.2f} | "
                f"{m['other_threads_cpu_s']:.2f} | {m['pebble_cpu_s']:.2f} | {m['errors']:.0f} |"
            )
        if len(med) == 2:
            b, lo = med["baseline"], med["loaded"]

            def ratio(k: str) -> str:
                return f"{lo[k] / b[k]:.2f}x" if b[k] else "n/a"

            lines.append(
                f"| loaded ÷ baseline | {ratio('rps')} | {ratio('p50_ms')} | {ratio('p99_ms')} "
                f"| {ratio('max_ms')} | {ratio('edge_cpu_us_per_req')} | {ratio('loop_cpu_s')} "
                "| | | |"
            )
        lines += [
            "",
            "Each run:",
            "",
            "| round | state | req/s | p50 ms | p99 ms | max ms | CPU µs/req | loop CPU s "
            "| other threads CPU s | orders all active after s |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            active = "" if r.orders_all_active_s is None else _s(r.orders_all_active_s)
            lines.append(
                f"| {r.round} | {r.state} | {r.rps:,.0f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | "
                f"{_ms(r.max_ms)} | {r.edge_cpu_us_per_req:.1f} | {r.loop_cpu_s:.2f} | "
                f"{r.other_threads_cpu_s:.2f} | {active} |"
            )
        loaded = [r for r in runs if r.orders_all_active_s is not None]
        if loaded:
            alls = [r.orders_all_active_s or 0.0 for r in loaded]
            fails = sum(r.failed_seen > 0 for r in loaded)
            lines += [
                "",
                f"All {args.concurrent} orders of a loaded round were active after "
                f"{_s(statistics.median(alls))} s (median; {_s(min(alls))}-{_s(max(alls))} s), "
                f"measured from the POSTs; {fails} of {len(loaded)} rounds saw a failed try.",
            ]
    lines += ["", SECTION_END]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def rsa_key_size() -> int:
    """The edge's RSA_KEY_SIZE: this environment's (the edge inherits it) or the default."""
    from edge.settings import load_settings

    size = os.environ.get("RSA_KEY_SIZE")
    return load_settings({"RSA_KEY_SIZE": size} if size else {}).rsa_key_size


def main(argv: Sequence[str] | None = None) -> int:
    p = run.side_bench_options(__doc__.split("\n")[0] if __doc__ else "")
    p.set_defaults(duration=10)
    p.add_argument("--sequential", type=int, default=5, help="certificates per key type (5)")
    p.add_argument("--concurrent", type=int, default=10, help="orders per loaded round (10)")
    p.add_argument(
        "--loaded-key-type",
        choices=("mixed", *KEY_TYPES),
        default="mixed",
        help="key type of the loaded rounds' orders (mixed: half rsa, half ecdsa)",
    )
    p.add_argument(
        "--edge-ref",
        metavar="REV",
        help="run the edge as it is at git revision REV (from a temporary worktree)",
    )
    p.add_argument("--json", type=Path, help="write every measurement as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    phases = {s.strip() for s in (args.only or "issue,traffic").split(",") if s.strip()}
    if not phases <= {"issue", "traffic"}:
        p.error("--only takes issue, traffic or both")
    if args.edge_ref and args.write_results:
        p.error("--write-results records this checkout's edge; drop --edge-ref")
    if min(args.rounds, args.duration, args.sequential, args.concurrent) < 1:
        p.error("--rounds, --duration, --sequential and --concurrent must be positive")
    for extra in ("/usr/sbin", "/sbin"):  # nginx lives there on Debian
        if extra not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + extra
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print(f"error: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "bench/acme.py", *(sys.argv[1:] if argv is None else argv)])
    info = versions()
    info["loadavg_before"] = run.loadavg()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)  # cleanup runs on them too
    # this harness (and all it starts unpinned: Pebble, its DNS) on the load CPU
    os.sched_setaffinity(0, {int(run.LOAD_CPU)})
    issued: list[Issued] = []
    runs: list[TrafficRun] = []
    tmp = Path(tempfile.mkdtemp(prefix="acme-bench-"))
    tmp.chmod(0o755)  # readable by nginx workers running as another user
    children = run.Children()
    pebble = Pebble(tmp, run.free_port())
    worktree = contextlib.ExitStack()
    try:
        source = run.REPO_ROOT
        if args.edge_ref:
            src = worktree.enter_context(run.edge_worktree(args.edge_ref))
            run.check_edge_source(src.path)
            source = src.path
            named = "" if args.edge_ref == src.short else f" (`{args.edge_ref}`)"
            info["git"] = f"{src.short}{named}, from a temporary worktree"
        _redis, redis_port = run.start_redis(children, tmp)
        _upstream, upstream_port = run.start_upstream(children, tmp)
        run.configure_edge(redis_port, upstream_port)
        pebble.start()
        rdb = redis.Redis(host=run.LOOPBACK, port=redis_port)
        edge = start_edge(children, tmp, redis_port, pebble, new_admin_token(), source)
        if "issue" in phases:
            issued = issue_phase(edge, rdb, args.sequential, KEY_TYPES)
        if "traffic" in phases:
            kinds = KEY_TYPES if args.loaded_key_type == "mixed" else (args.loaded_key_type,)
            runs = traffic_phase(
                edge, pebble, rdb, args.rounds, args.duration, args.concurrent, kinds
            )
        if edge.child.proc.poll() is not None:
            raise run.BenchError(f"the edge exited:\n{edge.child.stderr_tail()}")
        log = (edge.dir / "stderr.log").read_text(errors="replace")
        info["order_failures_logged"] = str(log.count("certificate order failed"))
    except run.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping children", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        pebble.stop()
        worktree.close()  # after the edge: it runs from the worktree
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_after"] = run.loadavg()
    text = render(issued, runs, args, command, info, rsa_key_size())
    if info.get("order_failures_logged", "0") != "0":
        text = text.replace(
            SECTION_END,
            f"The edge logged {info['order_failures_logged']} `certificate order failed` "
            f"warnings (each retried after 1 s).\n\n{SECTION_END}",
        )
    if args.json:
        data = {"command": command, "machine": info, "issued": [asdict(i) for i in issued],
                "traffic": [asdict(r) for r in runs]}  # fmt: skip
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    run.publish(text, args.write_results, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
