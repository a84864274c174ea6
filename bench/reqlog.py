"""The request log's cost: one edge worker with ``REQUEST_LOG=on`` side by side with
``REQUEST_LOG=off``, and the Redis memory one logged request takes.

**Throughput** (``--only throughput``): the same topology as ``bench/run.py``'s ``small-w1``:
``wrk -t1 -c50`` with keep-alive on CPU 0 -> the edge (``EDGE_WORKERS=1``, pinned to CPU 1)
-> the upstream nginx (CPU 0) serving the 13-byte ``/small``; a private ``redis-server``
(CPU 0) holds the route and, with the log on, the log. Both variants keep the JSON access
log on stdout (to a file), as in run.py, so the difference is the Redis request log alone.
Each round starts the edge fresh once per variant (the order alternates between rounds:
on/off, off/on, ...), waits for it to answer, runs wrk for 2 s to warm up, then the measured
run. Per variant, medians over rounds of req/s, p50/p99 latency, CPU µs per request of the
edge's process tree (supervisor and worker, all threads) and of redis-server (both from
``/proc/<pid>/stat``, before and after the measured run); the ratios on/off of the medians
and per round. The goal: the log costs at most 10% of the requests per second.

After each ``on`` run the harness waits for the worker's queue to drain and reads
``background["request-log"]`` from ``GET /health`` on the API port (health checks are not
logged): ``written + dropped + failed`` over the measured run must account for every
request wrk completed (it may exceed them by the requests in flight when wrk stopped, at
most one per connection); drops and failures are reported (they should be 0).

**Memory** (``--only memory``): for two stream caps, ``LOG_STREAM_MAX`` large enough for every
entry and the default 100,000: ``FLUSHALL``, the route set again, an edge started with the
log on, then twice ``--mem-requests`` requests (wrk with a Lua script stopping at the count,
keep-alive, 50 connections) and ``INFO memory`` ``used_memory`` read before and after each
half, once the queue has drained. Bytes per logged request = the growth of ``used_memory``
divided by the entries written (from ``/health``); the second half alone gives the cost past
the default cap (the stream no longer grows). ``MEMORY USAGE ... SAMPLES 0`` splits it by key:
the hashes (a sample of 200, from the newest stream entries), each index (sorted sets of
request keys), the stream and the hourly counters. Every request comes from ``127.0.0.1`` to
one host and one path: the per-IP index is then one key holding every request (a sorted set
in skiplist encoding, as a busy IP's is; many small per-IP sets would be listpacks, smaller
per member but with a key each).

    python bench/reqlog.py                       # 5 rounds x 10 s, then memory (~6 minutes)
    python bench/reqlog.py --quick               # smoke check: 1 round x 3 s, 5,000 requests
    python bench/reqlog.py --only throughput --rounds 7
    python bench/reqlog.py --edge-ref HEAD       # the committed edge, not the work tree
    python bench/reqlog.py --write-results       # also update its section of bench/RESULTS.md

Needs nginx, wrk, redis-server and taskset; run from the repository root with the project's
Python (it starts ``python -m edge serve`` and reads Redis with redis-py). Every process
listens on a free ``127.0.0.1`` port and is stopped when the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run

SECTION_START = "<!-- bench/reqlog.py:start -->"
SECTION_END = "<!-- bench/reqlog.py:end -->"
TOOLS = ("nginx", "wrk", "redis-server", "taskset")
VARIANTS = ("on", "off")
SCENARIO = run.Scenario("small-w1", "/small", 1)
GOAL = 0.90  # req/s with the log on at least 90% of off
DEFAULT_STREAM_MAX = 100_000  # edge/observe/reqlog.py STREAM_MAXLEN
BIG_STREAM_MAX = 100_000_000  # the largest LOG_STREAM_MAX the settings accept
HASH_SAMPLE = 200
DRAIN_TIMEOUT = 30.0

# wrk stops (every connection) once this many responses have arrived; the few requests in
# flight then are answered and logged too, which is why the count is read from /health
WRK_COUNT_LUA = """
local n = 0
local limit = tonumber(os.getenv("REQLOG_BENCH_REQUESTS"))
function response(status, headers, body)
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
"""


# -------------------------------------------------------------------------------- the edge


@dataclass
class Edge:
    child: run.Child
    port: int
    api_port: int


def start_edge(
    children: run.Children, st: run.Settings, d: Path, env: dict[str, str], proxy: str
) -> Edge:
    d.mkdir()
    port = run.free_port()
    base = st.edge_env
    st.edge_env = {**base, **env}
    try:
        launch = run.build_launch(proxy, SCENARIO, port, d, st)
    finally:
        st.edge_env = base
    child = children.spawn(
        "edge",
        launch.argv,
        env=launch.env,
        cwd=launch.cwd,
        stdout=launch.stdout,
        stderr=launch.stderr,
    )
    edge = Edge(child, port, int(launch.env["API_PORT"]))
    run.wait_ready(child, port, SCENARIO.path, run.BODIES[SCENARIO.path])
    return edge


def reqlog_health(edge: Edge) -> dict[str, Any]:
    """``background["request-log"]`` of the worker's ``/health`` (``{}`` when the log is
    off)."""
    url = f"http://{run.LOOPBACK}:{edge.api_port}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while degraded still carries the document
        doc = json.loads(exc.read())
    except OSError as exc:
        raise run.BenchError(f"GET /health on the API port: {exc}") from exc
    part = doc.get("background", {}).get("request-log", {})
    return dict(part) if isinstance(part, dict) else {}


def accounted(h: dict[str, Any]) -> int:
    return int(h.get("written", 0)) + int(h.get("dropped", 0)) + int(h.get("failed", 0))


def drained(edge: Edge) -> dict[str, Any]:
    """The request-log health once the queue is empty and the counts stopped moving."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last = reqlog_health(edge)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = reqlog_health(edge)
        if not now:
            raise run.BenchError(f"no background['request-log'] in /health: {now}")
        if int(now.get("queued", 0)) == 0 and accounted(now) == accounted(last):
            return now
        last = now
    raise run.BenchError(f"the request log did not drain in {DRAIN_TIMEOUT:.0f} s: {last}")


# -------------------------------------------------------------------------------- throughput


@dataclass
class Sample:
    round: int
    variant: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    edge_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    logged: int = 0  # written + dropped + failed over the measured run (log on)
    written: int = 0
    dropped: int = 0
    failed: int = 0
    last_error: str = ""  # the writer's, when a batch failed

    @property
    def edge_us(self) -> float:
        return self.edge_cpu_s * 1e6 / self.requests if self.requests else 0.0

    @property
    def redis_us(self) -> float:
        return self.redis_cpu_s * 1e6 / self.requests if self.requests else 0.0

    @property
    def total_us(self) -> float:
        return self.edge_us + self.redis_us


def measure(
    children: run.Children,
    st: run.Settings,
    redis_pid: int,
    proxy: str,
    rnd: int,
    variant: str,
    secs: int,
) -> Sample:
    d = st.tmp / f"r{rnd}-{variant}"
    edge = start_edge(children, st, d, {"REQUEST_LOG": variant}, proxy)
    sample = Sample(rnd, variant)
    try:
        run.run_wrk(edge.port, SCENARIO.path, run.WARMUP_SECS)
        before = drained(edge) if variant == "on" else {}
        cpu0, redis0 = run.tree_cpu(edge.child.pid), run.tree_cpu(redis_pid)
        res = run.run_wrk(edge.port, SCENARIO.path, secs)
        cpu1, redis1 = run.tree_cpu(edge.child.pid), run.tree_cpu(redis_pid)
        if edge.child.proc.poll() is not None:
            raise run.BenchError(f"the edge exited during the run:\n{edge.child.stderr_tail()}")
        sample.rps, sample.p50_ms, sample.p99_ms = res.rps, res.p50_ms, res.p99_ms
        sample.requests = res.requests
        sample.errors = res.non2xx + res.socket_errors
        sample.edge_cpu_s = run.cpu_delta_seconds(cpu0, cpu1)
        sample.redis_cpu_s = run.cpu_delta_seconds(redis0, redis1)
        if variant == "on":
            after = drained(edge)
            sample.logged = accounted(after) - accounted(before)
            for name in ("written", "dropped", "failed"):
                setattr(sample, name, int(after.get(name, 0)) - int(before.get(name, 0)))
            if sample.failed:
                sample.last_error = str(after.get("last_error") or "")
            slack = sample.logged - sample.requests
            if not 0 <= slack <= run.WRK_CONNECTIONS:
                run.progress(
                    f"warning: round {rnd}: the log accounts for {sample.logged} entries "
                    f"for {sample.requests} requests (want between {sample.requests} "
                    f"and {sample.requests + run.WRK_CONNECTIONS})"
                )
    finally:
        children.stop(edge.child)
        if not st.keep_tmp:
            shutil.rmtree(d, ignore_errors=True)
    return sample


# -------------------------------------------------------------------------------- memory


@dataclass
class Memory:
    cap: int  # LOG_STREAM_MAX
    requests: list[int] = field(default_factory=list)  # entries written, per half
    used: list[int] = field(default_factory=list)  # used_memory before, after each half
    dropped: int = 0
    failed: int = 0
    keys: int = 0
    stream_len: int = 0
    ips: int = 0
    paths: int = 0
    # MEMORY USAGE, bytes: per kind the total over its keys
    hash_mean: float = 0.0
    hash_count: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    index_members: dict[str, int] = field(default_factory=dict)

    @property
    def total_requests(self) -> int:
        return sum(self.requests)

    def per_request(self, half: int | None = None) -> float:
        if half is None:
            n, grown = self.total_requests, self.used[-1] - self.used[0]
        else:
            n, grown = self.requests[half], self.used[half + 1] - self.used[half]
        return grown / n if n else 0.0


def drive(children: run.Children, edge: Edge, tmp: Path, count: int) -> None:
    """``count`` requests (and the few in flight when wrk stops) through the edge.

    wrk's Lua ``thread:stop()`` ends its thread at the count, but wrk itself waits out
    ``-d``: the harness watches the log's counts in ``/health`` and stops wrk with SIGINT
    (it then prints its summary) once the count has arrived."""
    script = tmp / "count.lua"
    script.write_text(WRK_COUNT_LUA)
    out = tmp / "wrk-count.out"
    argv = run.pin(
        [
            "wrk",
            "-t1",
            f"-c{run.WRK_CONNECTIONS}",
            "-d600s",
            "--latency",
            "-s",
            str(script),
            "-H",
            f"Host: {run.HOST}",
            f"http://{run.LOOPBACK}:{edge.port}{SCENARIO.path}",
        ],
        run.LOAD_CPU,
    )
    h = reqlog_health(edge)
    target = accounted(h) + int(h.get("queued", 0)) + count
    env = dict(os.environ, REQLOG_BENCH_REQUESTS=str(count))
    wrk = children.spawn("wrk", argv, env=env, stdout=out, stderr=tmp / "wrk-count.err")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and wrk.proc.poll() is None:
            time.sleep(0.2)
            h = reqlog_health(edge)
            if accounted(h) + int(h.get("queued", 0)) >= target:
                break
        else:
            if wrk.proc.poll() is None:
                raise run.BenchError(f"{count} requests did not arrive in 600 s: {h}")
        if wrk.proc.poll() is None:
            wrk.proc.send_signal(signal.SIGINT)
        wrk.proc.wait(30)
    finally:
        children.stop(wrk)
    res = run.parse_wrk(out.read_text())
    if res.non2xx or res.socket_errors:
        run.progress(f"warning: {res.non2xx} non-2xx, {res.socket_errors} socket errors")


def measure_memory(
    children: run.Children,
    st: run.Settings,
    redis_port: int,
    upstream_port: int,
    proxy: str,
    cap: int | None,
    count: int,
) -> Memory:
    import redis

    r = redis.Redis(host=run.LOOPBACK, port=redis_port, decode_responses=True)
    r.flushall()
    run.configure_edge(redis_port, upstream_port)
    env = {"REQUEST_LOG": "on"}
    if cap is not None:
        env["LOG_STREAM_MAX"] = str(cap)
    d = st.tmp / f"memory-{cap or 'default'}"
    edge = start_edge(children, st, d, env, proxy)
    mem = Memory(cap or DEFAULT_STREAM_MAX)
    try:
        h = drained(edge)
        time.sleep(1.0)  # whatever the edge writes once it runs (heartbeats) lands before
        mem.used.append(int(r.info("memory")["used_memory"]))
        written = int(h["written"])
        for half in (1, 2):
            drive(children, edge, d, count)
            h = drained(edge)
            mem.used.append(int(r.info("memory")["used_memory"]))
            mem.requests.append(int(h["written"]) - written)
            written = int(h["written"])
            run.progress(
                f"memory, cap {mem.cap:,}, half {half}: {mem.requests[-1]:,} entries, "
                f"{mem.per_request(half - 1):,.0f} bytes each"
            )
        mem.dropped, mem.failed = int(h.get("dropped", 0)), int(h.get("failed", 0))
        breakdown(r, mem)
    finally:
        children.stop(edge.child)
        r.close()
        if not st.keep_tmp:
            shutil.rmtree(d, ignore_errors=True)
    return mem


def breakdown(r: Any, mem: Memory) -> None:
    """``MEMORY USAGE`` by kind of key (``SAMPLES 0``: every element counted)."""
    from edge.store import keys

    mem.keys = int(r.dbsize())
    mem.stream_len = int(r.xlen(keys.REQ_STREAM))
    newest = r.xrevrange(keys.REQ_STREAM, count=HASH_SAMPLE)
    sizes = [r.memory_usage(f["key"], samples=0) for _, f in newest if "key" in f]
    sizes = [s for s in sizes if s]
    mem.hash_count = len(sizes)
    mem.hash_mean = statistics.fmean(sizes) if sizes else 0.0
    mem.by_kind["stream"] = int(r.memory_usage(keys.REQ_STREAM, samples=0) or 0)
    ips: set[str] = set()
    paths: set[str] = set()
    for key in r.scan_iter(match=f"{keys.REQ_INDEX}*", count=1000):
        size = int(r.memory_usage(key, samples=0) or 0)
        mem.by_kind["indexes"] = mem.by_kind.get("indexes", 0) + size
        mem.index_members[key] = int(r.zcard(key))
        mem.by_kind[f"index {key}"] = size
        rest = key.removeprefix(keys.REQ_INDEX)
        if rest.startswith("ip:"):
            ips.add(rest)
        elif rest.startswith("path:"):
            paths.add(rest)
    mem.ips, mem.paths = len(ips), len(paths)
    stats = 0
    for prefix in ("stats:requests:", "stats:errors:", "stats:unique_ips:", "stats:duration:"):
        for key in r.scan_iter(match=f"{prefix}*", count=1000):
            stats += int(r.memory_usage(key, samples=0) or 0)
    mem.by_kind["counters"] = stats


# -------------------------------------------------------------------------------- report


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def render(
    samples: list[Sample],
    mems: list[Memory],
    args: argparse.Namespace,
    command: str,
    info: dict[str, str],
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION_START,
        "## Request log in Redis: on vs off, and memory per request (`bench/reqlog.py`)",
        "",
        f"- Date: {when}",
        f"- Machine: nproc={info['nproc']}, CPU: {info['cpu']}, Linux {info['kernel']}",
        f"- Software: {info['nginx']}, {info['wrk']}, {info['redis']}, Python "
        f"{info['python']}, edge at git {info['git']}",
        f"- Command: `{command}`",
        f"- Load average (1/5/15 min) before: {info['loadavg_before']}, after: "
        f"{info['loadavg_after']} (the machine is shared: medians over interleaved rounds)",
    ]
    if samples:
        lines += [
            f"- `wrk -t{run.WRK_THREADS} -c{run.WRK_CONNECTIONS} -d{args.duration}s --latency` "
            f"(keep-alive) on CPU {run.LOAD_CPU} -> edge (`EDGE_WORKERS=1`, CPU "
            f"{run.PROXY_CPU}) -> upstream nginx (CPU {run.LOAD_CPU}), `GET /small` (13 "
            f"bytes); redis-server on CPU {run.LOAD_CPU}; JSON access log to a file in both "
            f"variants. {args.rounds} round(s), the edge started fresh per run, the order "
            f"alternating on/off, off/on; {run.WARMUP_SECS} s warm-up each.",
            "",
            "### Throughput, medians over rounds",
            "",
            "CPU µs/req: CPU time (user + system) of the edge's process tree and of "
            "redis-server during the measured run, per request wrk completed. Logged: "
            "`written + dropped + failed` of the worker's `/health` over the run (may exceed "
            "the requests by those in flight when wrk stopped).",
            "",
            "| REQUEST_LOG | req/s | req/s range | p50 ms | p99 ms | edge CPU µs/req "
            "| redis CPU µs/req | errors | requests | logged | dropped | failed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for v in VARIANTS:
            ss = [s for s in samples if s.variant == v]
            if not ss:
                continue
            on = v == "on"
            lines.append(
                f"| {v} | {med([s.rps for s in ss]):,.0f} | "
                f"{min(s.rps for s in ss):,.0f}-{max(s.rps for s in ss):,.0f} | "
                f"{med([s.p50_ms for s in ss]):.2f} | {med([s.p99_ms for s in ss]):.2f} | "
                f"{med([s.edge_us for s in ss]):.1f} | {med([s.redis_us for s in ss]):.1f} | "
                f"{sum(s.errors for s in ss)} | {sum(s.requests for s in ss):,} | "
                + (
                    f"{sum(s.logged for s in ss):,} | {sum(s.dropped for s in ss)} | "
                    f"{sum(s.failed for s in ss)} |"
                    if on
                    else "- | - | - |"
                )
            )
        lines += ratio_lines(samples)
    if mems:
        lines += memory_lines(mems, args.mem_requests)
    lines += ["", SECTION_END]
    return "\n".join(lines)


def ratio_lines(samples: list[Sample]) -> list[str]:
    on = [s for s in samples if s.variant == "on"]
    off = [s for s in samples if s.variant == "off"]
    if not on or not off:
        return []

    def ratio(attr: str) -> float:
        return med([getattr(s, attr) for s in on]) / med([getattr(s, attr) for s in off])

    def rounds(attr: str) -> list[float]:
        out = []
        for a in on:
            b = [s for s in off if s.round == a.round]
            if b and getattr(b[0], attr):
                out.append(getattr(a, attr) / getattr(b[0], attr))
        return out

    def row(name: str, attr: str, bold: bool = False) -> str:
        r = ratio(attr)
        cell = f"**{r:.3f}x**" if bold else f"{r:.2f}x"
        per = rounds(attr)
        return f"| {name} | {cell} | {med(per):.2f}x | {', '.join(f'{x:.2f}' for x in per)} |"

    rps = ratio("rps")
    lines = [
        "",
        "### Ratios on ÷ off",
        "",
        "Of the medians, and per round (each round runs both variants back to back, so its "
        "ratio is a paired comparison; their median is less sensitive to a noisy round).",
        "",
        "| figure | of the medians | median per round | per round |",
        "|---|---:|---:|---|",
        row("req/s", "rps", bold=True),
        row("p99 latency", "p99_ms"),
        row("edge CPU µs/req", "edge_us"),
        row("edge + redis CPU µs/req", "total_us"),
    ]
    extra_edge = med([s.edge_us for s in on]) - med([s.edge_us for s in off])
    extra_redis = med([s.redis_us for s in on]) - med([s.redis_us for s in off])
    verdict = "met" if rps >= GOAL else "not met"
    lines += [
        "",
        f"The log costs {1 - rps:.1%} of the requests per second (goal: at most "
        f"{1 - GOAL:.0%}: **{verdict}**), {extra_edge:.1f} µs of edge CPU and "
        f"{extra_redis:.1f} µs of Redis CPU per request (differences of the medians). "
        "The worker is pinned to CPU 1 and CPU-bound here, so the edge's CPU per "
        "request also bounds what it can serve: off ÷ on of edge CPU µs/req = "
        f"{1 / ratio('edge_us'):.3f}x of the requests per second (median per round "
        f"{med([1 / x for x in rounds('edge_us')]):.3f}x), the cost with noise from other "
        "processes on the machine partly removed.",
    ]
    return lines


def memory_lines(mems: list[Memory], count: int) -> list[str]:
    lines = [
        "",
        "### Redis memory per logged request",
        "",
        f"`FLUSHALL`, the route set, an edge started with the log on, then twice {count:,} "
        "requests (keep-alive, 50 connections); `INFO memory` `used_memory` before and after "
        "each half (the queue drained), divided by the entries written (`/health`). "
        "Every request from `127.0.0.1` to one host and one path: "
        + ", ".join(f"cap {m.cap:,}: {m.ips} IP / {m.paths} path index key(s)" for m in mems)
        + "; the per-IP index is then one key holding every request.",
        "",
        "| LOG_STREAM_MAX | entries | bytes/request, all | first half | second half "
        "| stream length | keys | dropped | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in mems:
        lines.append(
            f"| {m.cap:,} | {m.total_requests:,} | **{m.per_request():,.0f}** | "
            f"{m.per_request(0):,.0f} | {m.per_request(1):,.0f} | {m.stream_len:,} | "
            f"{m.keys:,} | {m.dropped} | {m.failed} |"
        )
    lines += [
        "",
        "By `MEMORY USAGE ... SAMPLES 0` at the end (bytes per logged request = the kind's "
        f"total over the entries written; the hash from the newest {HASH_SAMPLE} "
        "requests' hashes):",
        "",
        "| LOG_STREAM_MAX | hash | indexes (all) | stream | counters | sum |"
        " index keys (members) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for m in mems:
        n = m.total_requests or 1
        idx = m.by_kind.get("indexes", 0) / n
        stream = m.by_kind.get("stream", 0) / n
        counters = m.by_kind.get("counters", 0) / n
        total = m.hash_mean + idx + stream + counters
        members = ", ".join(
            f"`{k}` ({v:,}: {m.by_kind[f'index {k}'] / max(v, 1):.0f} B each)"
            for k, v in sorted(m.index_members.items())
        )
        lines.append(
            f"| {m.cap:,} | {m.hash_mean:,.0f} | {idx:,.0f} | {stream:,.0f} | "
            f"{counters:.2f} | {total:,.0f} | {members} |"
        )
    return lines


def versions() -> dict[str, str]:
    base = run.machine_info()
    return {
        "nproc": base["nproc"],
        "cpu": base["cpu"],
        "kernel": base["kernel"],
        "python": base["python"],
        "nginx": base["nginx"],
        "wrk": base["wrk"],
        "git": base["git"],
        "redis": run.tool_version(["redis-server", "--version"]).split(" sha=")[0],
    }


# -------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run (10)")
    p.add_argument(
        "--mem-requests",
        type=int,
        default=100_000,
        help="requests in each half of a memory measurement (100,000)",
    )
    p.add_argument("--only", help="comma-separated parts: throughput,memory")
    p.add_argument(
        "--quick", action="store_true", help="a smoke check: 1 round x 3 s, 5,000 requests"
    )
    p.add_argument(
        "--write-results",
        action="store_true",
        help="replace (or append) the section in bench/RESULTS.md",
    )
    p.add_argument("--json", type=Path, help="write every sample as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    p.add_argument(
        "--edge-ref",
        metavar="REV",
        help="run the edge from a git worktree of REV instead of this checkout's working tree",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.mem_requests = 1, 3, 5_000
    args.parts = [x.strip() for x in (args.only or "throughput,memory").split(",") if x.strip()]
    if not args.parts or not set(args.parts) <= {"throughput", "memory"}:
        p.error("--only takes some of throughput,memory")
    if args.rounds < 1 or args.duration < 1 or args.mem_requests < 1:
        p.error("--rounds, --duration and --mem-requests must be positive")
    if args.write_results and args.quick:
        p.error("--write-results records a full run: not with --quick")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print(f"error: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "bench/reqlog.py", *(sys.argv[1:] if argv is None else argv)])
    info = versions()
    info["loadavg_before"] = run.loadavg()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)  # cleanup runs on them too
    os.sched_setaffinity(0, {int(run.LOAD_CPU)})  # the harness stays off the edge's CPU
    samples: list[Sample] = []
    mems: list[Memory] = []
    tmp = Path(tempfile.mkdtemp(prefix="reqlog-bench-"))
    tmp.chmod(0o755)  # readable by nginx workers running as another user
    children = run.Children()
    stack = contextlib.ExitStack()
    proxy = "edge"
    try:
        sources: dict[str, Path] = {}
        if args.edge_ref:
            source = stack.enter_context(run.edge_worktree(args.edge_ref))
            run.check_edge_source(source.path)
            proxy = source.name
            sources[proxy] = source.path
            info["git"] = f"{source.short} (a worktree of `{args.edge_ref}`)"
        _, upstream_port = run.start_upstream(children, tmp)
        redis, redis_port = run.start_redis(children, tmp)
        run.configure_edge(redis_port, upstream_port)
        st = run.Settings(
            tmp,
            upstream_port,
            f"redis://{run.LOOPBACK}:{redis_port}/0",
            [sys.executable, "-m", "edge", "serve"],
            {},
            args.keep_tmp,
            sources,
        )
        if "throughput" in args.parts:
            for rnd in range(1, args.rounds + 1):
                order = VARIANTS if rnd % 2 else VARIANTS[::-1]
                for variant in order:
                    s = measure(children, st, redis.pid, proxy, rnd, variant, args.duration)
                    samples.append(s)
                    logged = (
                        f"  logged {s.logged} (dropped {s.dropped}, failed {s.failed}"
                        f"{f': {s.last_error}' if s.last_error else ''})"
                        if variant == "on"
                        else ""
                    )
                    run.progress(
                        f"round {rnd} log {variant:<3} {s.rps:>9,.0f} req/s  p50 "
                        f"{s.p50_ms:5.2f} ms  p99 {s.p99_ms:6.2f} ms  edge {s.edge_us:5.1f} "
                        f"µs/req  redis {s.redis_us:5.1f} µs/req  {s.requests} requests"
                        f"{f', {s.errors} errors' if s.errors else ''}{logged}"
                    )
        if "memory" in args.parts:
            for cap in (BIG_STREAM_MAX, None):
                mems.append(
                    measure_memory(
                        children, st, redis_port, upstream_port, proxy, cap, args.mem_requests
                    )
                )
    except run.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping children", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        stack.close()
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_after"] = run.loadavg()
    text = render(samples, mems, args, command, info)
    if args.json:
        data = {
            "command": command,
            "machine": info,
            "samples": [
                {**asdict(s), "edge_us": s.edge_us, "redis_us": s.redis_us, "total_us": s.total_us}
                for s in samples
            ],
            "memory": [asdict(m) for m in mems],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    run.publish(text, args.write_results, SECTION_START, SECTION_END)
    bad = any(s.errors or s.dropped or s.failed for s in samples)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
